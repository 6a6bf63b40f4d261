//! Image import by URL against a small HTTP(S) server the test runs on loopback. The platform's
//! download policy allows only `127.0.0.2/32`, where the test server listens, so everything else
//! on loopback stays refused. Checked: the happy path with streamed progress and a verified
//! checksum (over http and https with a certificate made here), a redirect inside the allowed
//! range, a checksum mismatch, the size cap (announced and streamed), every refused destination
//! (127.0.0.1, [::1], 169.254.169.254, 10.0.0.1, `localhost`, the API's own endpoint, each at
//! request time with `url_refused` and the field), redirects to refused addresses (the operation
//! fails with `url_refused`), a raw declared file whose header is qcow2, and qcow2 files with a
//! backing file or an external data file. Refused imports leave no image and no file.

use crate::common;

use common::{TestPlatform, raw, start_with, wait_op};
use panal_types::image::{DiskFormat, ImageImport};
use panal_types::operation::OperationState;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One canned answer of the test server.
#[derive(Clone)]
enum Reply {
    /// 200 with the body, sent in `chunks` pieces `pause` apart; `length`: announce it.
    Body {
        bytes: Arc<Vec<u8>>,
        chunks: usize,
        pause: Duration,
        length: bool,
    },
    /// 302 to a location.
    Redirect(String),
}

fn body(bytes: Vec<u8>) -> Reply {
    Reply::Body {
        bytes: Arc::new(bytes),
        chunks: 1,
        pause: Duration::ZERO,
        length: true,
    }
}

type Routes = Arc<HashMap<String, Reply>>;

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, routes: Routes) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match routes.get(&path) {
        None => {
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
        Some(Reply::Redirect(to)) => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = s.write_all(head.as_bytes()).await;
        }
        Some(Reply::Body {
            bytes,
            chunks,
            pause,
            length,
        }) => {
            let mut head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n".to_owned();
            if *length {
                head.push_str(&format!("content-length: {}\r\n", bytes.len()));
            }
            head.push_str("\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let size = bytes.len().div_ceil((*chunks).max(1)).max(1);
            for piece in bytes.chunks(size) {
                if s.write_all(piece).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(*pause).await;
            }
        }
    }
    let _ = s.shutdown().await;
}

/// Serves `routes` on 127.0.0.2 (plain HTTP, or TLS with `tls`); returns the address.
async fn serve(routes: Routes, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let routes = routes.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_conn(s, routes).await,
                    Some(acc) => {
                        if let Ok(t) = acc.accept(s).await {
                            serve_conn(t, routes).await;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A certificate for 127.0.0.2: (acceptor, certificate PEM for the client's trust).
fn tls_for_127_0_0_2() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.2".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key_der)
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
        cert.pem().into_bytes(),
    )
}

fn qemu_img(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    std::fs::read(dir.join(args.iter().rev().nth(1).unwrap())).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn disk_url(name: &str, url: &str, format: &str) -> serde_json::Value {
    json!({"name": name, "disk_url": url, "format": format})
}

#[track_caller]
fn refused(got: &(u16, serde_json::Value), status: u16, code: &str, field: &str) {
    assert_eq!(got.0, status, "{got:?}");
    assert_eq!(got.1["code"], code, "{got:?}");
    assert_eq!(got.1["field"], field, "{got:?}");
}

/// Starts an import that is accepted and waits for its operation to end.
async fn import(tp: &TestPlatform, req: serde_json::Value) -> panal_types::operation::Operation {
    let token = tp.platform.token.clone();
    let got = raw(
        tp,
        Method::POST,
        "/api/v1/images",
        Some(&token),
        Some(&req.to_string()),
    )
    .await;
    assert_eq!(got.0, 202, "{got:?}");
    let op: panal_types::operation::Operation =
        serde_json::from_value(got.1["operation"].clone()).unwrap();
    wait_op(&tp.client, &op).await
}

#[track_caller]
fn failed(op: &panal_types::operation::Operation, code: &str, field: &str) {
    assert_eq!(op.state, OperationState::Failed, "{op:?}");
    let e = op.error.as_ref().expect("a failed operation has an error");
    assert_eq!(e.code.as_str(), code, "{e:?}");
    assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_are_fetched_safely() {
    let files = tempfile::tempdir().unwrap();
    // A 2 MiB raw disk that is not all zeros.
    let disk: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
    let qcow = qemu_img(
        &["create", "-q", "-f", "qcow2", "real.qcow2", "8M"],
        files.path(),
    );
    let backing = qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            "raw",
            "-b",
            "/etc/shadow",
            "evil.qcow2",
            "8M",
        ],
        files.path(),
    );
    let data_file = {
        let df = files.path().join("data.raw");
        let opt = format!("data_file={}", df.display());
        qemu_img(
            &["create", "-q", "-f", "qcow2", "-o", &opt, "ext.qcow2", "8M"],
            files.path(),
        )
    };
    let (tls, cert_pem) = tls_for_127_0_0_2();

    // The test server's port is needed in a redirect, so bind first and fill routes after:
    // a second server holds the redirects.
    let mut r: HashMap<String, Reply> = HashMap::new();
    r.insert(
        "/disk.raw".into(),
        Reply::Body {
            bytes: Arc::new(disk.clone()),
            chunks: 8,
            pause: Duration::from_millis(150),
            length: true,
        },
    );
    r.insert("/quick.raw".into(), body(disk.clone()));
    r.insert(
        "/unannounced.raw".into(),
        Reply::Body {
            bytes: Arc::new(vec![7u8; 3 << 20]),
            chunks: 12,
            pause: Duration::ZERO,
            length: false,
        },
    );
    r.insert("/big.raw".into(), body(vec![1u8; 3 << 20]));
    r.insert("/empty".into(), body(Vec::new()));
    r.insert("/real.qcow2".into(), body(qcow));
    r.insert("/evil.qcow2".into(), body(backing));
    r.insert("/ext.qcow2".into(), body(data_file));
    let routes: Routes = Arc::new(r);
    let srv = serve(routes.clone(), None).await;
    let tls_srv = serve(routes, Some(tls)).await;
    let mut redirects: HashMap<String, Reply> = HashMap::new();
    redirects.insert(
        "/ok".into(),
        Reply::Redirect(format!("http://{srv}/quick.raw")),
    );
    for (path, to) in [
        ("/to-metadata", "http://169.254.169.254/latest/meta-data/"),
        ("/to-loopback", "http://127.0.0.1:9/x"),
        ("/to-private", "http://10.0.0.1/x"),
        ("/to-localhost", "http://localhost/x"),
        ("/to-v6-loopback", "http://[::1]/x"),
        ("/to-file", "file:///etc/passwd"),
    ] {
        redirects.insert(path.into(), Reply::Redirect(to.into()));
    }
    redirects.insert("/loop".into(), Reply::Redirect("/loop".into()));
    let redir = serve(Arc::new(redirects), None).await;

    let dir = tempfile::tempdir().unwrap();
    let tp = start_with(dir, |cfg| {
        // The API on 127.0.0.2 too, to check that its own endpoint stays refused when allowed.
        cfg.listen = "127.0.0.2:0".parse().unwrap();
        cfg.image_fetch.urls.allow = vec!["127.0.0.2/32".parse().unwrap()];
        cfg.image_fetch.max_bytes = 2 << 20;
        cfg.image_fetch.extra_roots_pem = vec![cert_pem];
    })
    .await;
    let token = tp.platform.token.clone();
    let post = |req: serde_json::Value| {
        let tp = &tp;
        let token = token.clone();
        async move {
            raw(
                tp,
                Method::POST,
                "/api/v1/images",
                Some(&token),
                Some(&req.to_string()),
            )
            .await
        }
    };

    // Happy path: streamed with progress, checksum verified.
    let accepted = tp
        .client
        .import_image(&ImageImport {
            name: "web".into(),
            disk_url: Some(format!("http://{srv}/disk.raw")),
            disk_sha256: Some(sha(&disk).to_uppercase()),
            format: Some(DiskFormat::Raw),
            ..ImageImport::default()
        })
        .await
        .expect("import accepted");
    let mut seen = Vec::new();
    loop {
        let op = tp
            .client
            .operation(&accepted.operation.id.to_string())
            .await
            .unwrap();
        if !seen.contains(&op.progress.message) {
            seen.push(op.progress.message.clone());
        }
        if op.state.is_final() {
            assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(
        seen.iter().any(|m| m.starts_with("disk: downloaded ")
            && m.ends_with(" of 2.0 MiB")
            && !m.contains("downloaded 0 B")),
        "no download progress seen: {seen:?}"
    );
    let img = tp.client.image(None, "web").await.unwrap();
    assert_eq!(img.sha256, sha(&disk));
    assert_eq!(img.size_bytes, 2 << 20);
    assert_eq!(img.virtual_size_bytes, Some(2 << 20));
    let stored = tp
        .dir
        .path()
        .join("images")
        .join(img.id.to_string())
        .join("disk");
    assert_eq!(std::fs::read(&stored).unwrap(), disk);

    // Over https, with the certificate the platform was told to trust, through a redirect too.
    let op = import(
        &tp,
        json!({"name": "secure", "disk_url": format!("https://{tls_srv}/quick.raw"),
               "disk_sha256": sha(&disk), "format": "raw"}),
    )
    .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let op = import(&tp, disk_url("moved", &format!("http://{redir}/ok"), "raw")).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");

    // A kernel by URL, and a mix of path and URL for the same part.
    let op = import(
        &tp,
        json!({"name": "kern", "kernel_url": format!("http://{srv}/quick.raw")}),
    )
    .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let got = post(json!({"name": "both", "disk_path": "/etc/hostname",
                          "disk_url": format!("http://{srv}/quick.raw"), "format": "raw"}))
    .await;
    refused(&got, 400, "invalid_value", "disk_url");
    let got = post(
        json!({"name": "badsum", "disk_url": format!("http://{srv}/quick.raw"),
                          "disk_sha256": "abc", "format": "raw"}),
    )
    .await;
    refused(&got, 400, "invalid_value", "disk_sha256");
    let got = post(disk_url("ftp", "ftp://127.0.0.2/x", "raw")).await;
    refused(&got, 400, "invalid_value", "disk_url");

    // Checksum mismatch.
    let op = import(
        &tp,
        json!({"name": "wrongsum", "disk_url": format!("http://{srv}/quick.raw"),
               "disk_sha256": "0".repeat(64), "format": "raw"}),
    )
    .await;
    failed(&op, "checksum_mismatch", "disk_sha256");

    // The size cap, announced by content-length and found while streaming.
    let op = import(
        &tp,
        disk_url("big", &format!("http://{srv}/big.raw"), "raw"),
    )
    .await;
    failed(&op, "too_large", "disk_url");
    let op = import(
        &tp,
        disk_url("sneaky", &format!("http://{srv}/unannounced.raw"), "raw"),
    )
    .await;
    failed(&op, "too_large", "disk_url");

    // An empty kernel is no kernel.
    let op = import(
        &tp,
        json!({"name": "empty", "kernel_url": format!("http://{srv}/empty")}),
    )
    .await;
    failed(&op, "invalid_value", "kernel_url");

    // Refused destinations, at request time.
    let own = tp.platform.addr;
    for url in [
        "http://127.0.0.1/x".to_owned(),
        "http://[::1]/x".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/x".to_owned(),
        "http://localhost:8080/x".to_owned(),
        "http://[::ffff:127.0.0.1]/x".to_owned(),
        format!("http://{own}/api/v1/openapi.json"),
    ] {
        let got = post(disk_url("nope", &url, "raw")).await;
        refused(&got, 403, "url_refused", "disk_url");
        let got = post(json!({"name": "nope", "kernel_url": url})).await;
        refused(&got, 403, "url_refused", "kernel_url");
    }

    // Redirects to refused destinations, caught hop by hop.
    for path in [
        "/to-metadata",
        "/to-loopback",
        "/to-private",
        "/to-localhost",
        "/to-v6-loopback",
    ] {
        let op = import(
            &tp,
            disk_url("redir", &format!("http://{redir}{path}"), "raw"),
        )
        .await;
        failed(&op, "url_refused", "disk_url");
    }
    let op = import(
        &tp,
        disk_url("redir", &format!("http://{redir}/to-file"), "raw"),
    )
    .await;
    failed(&op, "invalid_value", "disk_url");
    let op = import(
        &tp,
        disk_url("redir", &format!("http://{redir}/loop"), "raw"),
    )
    .await;
    failed(&op, "invalid_value", "disk_url");

    // Headers win over declarations; images must be self-contained.
    let op = import(
        &tp,
        disk_url("liar", &format!("http://{srv}/real.qcow2"), "raw"),
    )
    .await;
    failed(&op, "invalid_value", "format");
    let op = import(
        &tp,
        disk_url("evil", &format!("http://{srv}/evil.qcow2"), "qcow2"),
    )
    .await;
    failed(&op, "invalid_value", "disk_url");
    assert!(
        op.error.unwrap().message.contains("backing file"),
        "the reason names the backing file"
    );
    let op = import(
        &tp,
        disk_url("ext", &format!("http://{srv}/ext.qcow2"), "qcow2"),
    )
    .await;
    failed(&op, "invalid_value", "disk_url");
    let op = import(
        &tp,
        disk_url("fine", &format!("http://{srv}/real.qcow2"), "qcow2"),
    )
    .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");

    // Only the successful imports exist, and nothing else is on disk.
    let mut names: Vec<String> = tp
        .client
        .list_images(None, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["fine", "kern", "moved", "secure", "web"]);
    let on_disk = std::fs::read_dir(tp.dir.path().join("images"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 5, "a failed import left files behind");
}
