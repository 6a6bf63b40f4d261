//! The path from one machine to a cluster: `panal admin export` from the embedded store and
//! `panal admin import` into a real etcd (and the refusals around it), then a `panal server` on
//! etcd serving the moved state. Also the start-up refusals: an unreachable etcd and a store
//! holding data of a newer format than the binary understands.

use panal_client::Client;
use panal_server::{App, AppConfig};
use panal_store::embedded::EmbeddedStore;
use panal_store::etcd::testing::EtcdCluster;
use panal_store::{DynStore, StoreExt};
use panal_types::vm::{HypervisorKind, VmCreate};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_panal");

fn panal(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("PANAL_LOG", "error")
        .output()
        .expect("run panal")
}

fn etcd_url(cluster: &EtcdCluster) -> String {
    format!(
        "etcd://{}",
        cluster
            .endpoints()
            .iter()
            .map(|e| e.trim_start_matches("http://").to_owned())
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_embedded_import_into_etcd_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    let mut ids = Vec::new();
    {
        let store: DynStore = EmbeddedStore::open(&db).unwrap();
        let app = App::new(store, AppConfig::default());
        app.bootstrap().await.unwrap();
        for i in 0..5 {
            let req = VmCreate {
                name: format!("moved-{i}"),
                hypervisor: Some(HypervisorKind::Fake),
                start: Some(false),
                ..VmCreate::default()
            };
            ids.push(app.create_vm(req).await.unwrap().vm.id);
        }
    }
    let export = dir.path().join("export.jsonl");
    let out = panal(&[
        "admin",
        "export",
        "--store",
        &format!("embedded:{}", db.display()),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let etcd = EtcdCluster::start(1).await.unwrap();
    let url = etcd_url(&etcd);
    let out = panal(&[
        "admin",
        "import",
        "--store",
        &url,
        "--in",
        export.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second import into the now non-empty store is refused without --force...
    let out = panal(&[
        "admin",
        "import",
        "--store",
        &url,
        "--in",
        export.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and accepted with it.
    let out = panal(&[
        "admin",
        "import",
        "--store",
        &url,
        "--in",
        export.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A truncated export is refused.
    let text = std::fs::read_to_string(&export).unwrap();
    let truncated = dir.path().join("truncated.jsonl");
    std::fs::write(
        &truncated,
        text.lines().take(3).collect::<Vec<_>>().join("\n"),
    )
    .unwrap();
    let out = panal(&[
        "admin",
        "import",
        "--store",
        &url,
        "--in",
        truncated.to_str().unwrap(),
        "--force",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));

    // A server on etcd serves the moved VMs with their identities.
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &url,
            "--data-dir",
        ])
        .arg(data.path())
        .env("PANAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_default()
            .starts_with("Panal server")
    );
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), token.trim());
    let vms = client.all_vms(None).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let got: Vec<_> = vms.iter().map(|v| v.id).collect();
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_unreachable_etcd_and_newer_data() {
    let data = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args([
            "server",
            "--store",
            "etcd://127.0.0.1:9",
            "--store-wait",
            "2",
            "--data-dir",
        ])
        .arg(data.path())
        .env("PANAL_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:9"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // A store stamped by a newer binary: refuse to start, naming both versions.
    let db = data.path().join("state.redb");
    {
        let store: DynStore = EmbeddedStore::open(&db).unwrap();
        store
            .put("/panal/meta/format", b"99".to_vec())
            .await
            .unwrap();
    }
    let out = Command::new(BIN)
        .args([
            "server",
            "--store",
            &format!("embedded:{}", db.display()),
            "--data-dir",
        ])
        .arg(data.path())
        .env("PANAL_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("format 99") && err.contains("up to 1"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_wrong_etcd_credentials() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    etcd.enable_auth("s3cret").await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--store",
            &etcd_url(&etcd),
            "--etcd-user",
            "root",
            "--etcd-password",
            "wrong",
            "--store-wait",
            "5",
            "--data-dir",
        ])
        .arg(data.path())
        .env("PANAL_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd refused Panal's credentials"), "{err}");
}
