//! Volumes across hosts: a platform's in-process host (`local`) and a remote agent (`far`)
//! joined over mutual TLS, each with its own `default` pool (files are real, made by
//! `qemu-img`; VMs are simulated). A detached volume moves from one host to the other and back,
//! its file arriving byte-identical (SHA-256) with its snapshot, the original removed; a move
//! that fails on the target leaves the volume on its source, usable, and no staging file; a
//! remote host exports a volume as an image over its link; and the move's refusals.

use crate::common;

use common::{TestPlatform, eventually, raw, start_with, wait_op};
use panal_agent::remote::{RemoteImages, RemoteLink, join};
use panal_agent::{Agent, AgentConfig};
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_types::join::JoinTokenCreate;
use panal_types::operation::OperationState;
use panal_types::vm::{HypervisorKind, VmCreate};
use panal_types::volume::{
    SnapshotStep, VolumeCreate, VolumeExport, VolumeMove, VolumePhase, VolumeSource,
};
use panal_types::{Name, image::DiskFormat};
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The platform, its agent endpoint and a remote host `far` with its pool.
struct Lab {
    tp: TestPlatform,
    far_pool: PathBuf,
    _listener: panal_server::agent_api::AgentListener,
    agent: tokio::task::JoinHandle<()>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let tp = start_with(dir, |cfg| {
        cfg.host_name = Name::parse("local").unwrap();
        cfg.host_labels = [("slot".to_owned(), "local".to_owned())].into();
    })
    .await;
    let app = tp.platform.app.clone();
    let listener =
        panal_server::agent_api::serve(app.clone(), "127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
    let token = app
        .create_join_token(JoinTokenCreate::default())
        .await
        .unwrap()
        .token;
    let id = join(
        &format!("https://{}", listener.addr),
        &token,
        &Name::parse("far").unwrap(),
    )
    .await
    .unwrap();
    let link = Arc::new(RemoteLink::new(&id).unwrap());
    let mut cfg = AgentConfig::new(id.host.clone());
    cfg.heartbeat = Duration::from_secs(1);
    cfg.capacity_override = Some((8, 16 << 30));
    let far_pool = tp.dir.path().join("far-pool");
    cfg.pools = vec![panal_agent::inventory::PoolDir {
        name: "default".into(),
        path: far_pool.clone(),
        shared: false,
    }];
    let agent = Agent::new(
        cfg,
        vec![Arc::new(FakeDriver::new(
            FakeWorld::new(),
            FakeConfig::default(),
        ))],
        link.clone(),
        Arc::new(RemoteImages::new(link, tp.dir.path().join("far-cache"))),
    );
    let agent = tokio::spawn(agent.run());
    assert!(
        eventually(20, || async {
            app.host("far").await.is_ok_and(|h| h.alive())
                && app
                    .host("far")
                    .await
                    .is_ok_and(|h| !h.inventory.storage.is_empty())
        })
        .await,
        "far did not join"
    );
    Lab {
        tp,
        far_pool,
        _listener: listener,
        agent,
    }
}

impl Lab {
    fn pool_of(&self, host: &str) -> PathBuf {
        match host {
            "far" => self.far_pool.clone(),
            _ => self.tp.dir.path().join("pools/default"),
        }
    }

    fn staged(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tp.dir.path().join("images/transfers"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Writes `byte` over `len` bytes at `offset` of a qcow2 file.
fn write_at(path: &Path, byte: u8, offset: u64, len: u64) {
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {byte} {offset} {len}"),
        ])
        .arg(path)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn reads(path: &Path, byte: u8, offset: u64, len: u64) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-r",
            "-c",
            &format!("read -P {byte} {offset} {len}"),
        ])
        .arg(path)
        .output()
        .expect("qemu-io");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed")
}

fn volume_on(name: &str, host: &str, mib: u64) -> VolumeCreate {
    VolumeCreate {
        name: name.into(),
        project: None,
        size_bytes: Some(mib << 20),
        format: None,
        pool: None,
        host: Some(host.into()),
        source: None,
    }
}

fn to_host(host: &str) -> VolumeMove {
    VolumeMove {
        pool: None,
        host: Some(host.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_moves_to_another_host_and_back_byte_for_byte() {
    let lab = lab().await;
    let c = &lab.tp.client;
    let a = c
        .create_volume(&volume_on("data", "local", 64))
        .await
        .unwrap();
    wait_op(c, &a.operation).await;
    let first = lab.pool_of("local").join(&a.volume.file);
    write_at(&first, 0x42, 0, 8 << 20);
    write_at(&first, 0x17, 40 << 20, 1 << 20);
    let s = c
        .volume_snapshot(None, "data", "before", SnapshotStep::Create)
        .await
        .unwrap();
    wait_op(c, &s.operation).await;
    let sum = sha256(&first);

    let mut at = first.clone();
    for (to, from) in [("far", "local"), ("local", "far")] {
        let m = c.move_volume_to(None, "data", &to_host(to)).await.unwrap();
        assert_eq!(m.volume.host.as_str(), from, "not switched before the copy");
        let op = wait_op(c, &m.operation).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
        let v = c.volume(None, "data").await.unwrap();
        assert_eq!(
            (v.host.as_str(), v.pool.as_str(), v.phase, v.operation),
            (to, "default", VolumePhase::Ready, None)
        );
        let now = lab.pool_of(to).join(&v.file);
        assert_eq!(sha256(&now), sum, "{to}: the same bytes arrived");
        assert!(!at.exists(), "the original on {from} is gone");
        assert!(reads(&now, 0x42, 0, 8 << 20) && reads(&now, 0x17, 40 << 20, 1 << 20));
        assert_eq!(v.snapshots.len(), 1, "the snapshot travels inside the file");
        assert!(
            lab.staged().is_empty(),
            "staging cleaned: {:?}",
            lab.staged()
        );
        at = now;
    }

    // The moved volume is usable where it is: it grows there.
    let g = c.resize_volume(None, "data", 96 << 20).await.unwrap();
    assert_eq!(
        wait_op(c, &g.operation).await.state,
        OperationState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_move_leaves_the_volume_on_its_source() {
    let lab = lab().await;
    let c = &lab.tp.client;
    let a = c
        .create_volume(&volume_on("data", "local", 64))
        .await
        .unwrap();
    wait_op(c, &a.operation).await;
    let file = lab.pool_of("local").join(&a.volume.file);
    write_at(&file, 0x42, 0, 16 << 20);
    let sum = sha256(&file);

    // The target's pool directory turns into a file: the copy cannot be written there.
    let m = c
        .move_volume_to(None, "data", &to_host("far"))
        .await
        .unwrap();
    std::fs::remove_dir_all(&lab.far_pool).unwrap();
    std::fs::write(&lab.far_pool, b"not a directory").unwrap();
    let op = wait_op(c, &m.operation).await;
    assert_eq!(op.state, OperationState::Failed, "{op:?}");
    let why = op.error.map(|e| e.message).unwrap_or_default();
    assert!(
        why.contains("cannot write"),
        "the target's step failed: {why}"
    );
    let v = c.volume(None, "data").await.unwrap();
    assert_eq!(
        (v.host.as_str(), v.phase, v.operation),
        ("local", VolumePhase::Ready, None)
    );
    assert!(v.reason.is_some());
    assert_eq!(sha256(&file), sum, "the source is untouched");
    assert!(
        lab.staged().is_empty(),
        "staging cleaned: {:?}",
        lab.staged()
    );

    // Usable, and movable once the target is fixed.
    std::fs::remove_file(&lab.far_pool).unwrap();
    std::fs::create_dir(&lab.far_pool).unwrap();
    let m = c
        .move_volume_to(None, "data", &to_host("far"))
        .await
        .unwrap();
    let op = wait_op(c, &m.operation).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let v = c.volume(None, "data").await.unwrap();
    assert_eq!(sha256(&lab.far_pool.join(&v.file)), sum);
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_host_exports_a_volume_over_its_link() {
    let lab = lab().await;
    let c = &lab.tp.client;
    let a = c
        .create_volume(&volume_on("remote", "far", 16))
        .await
        .unwrap();
    wait_op(c, &a.operation).await;
    write_at(&lab.far_pool.join(&a.volume.file), 0x66, 0, 1 << 20);
    let e = c
        .export_volume(
            None,
            "remote",
            &VolumeExport {
                image: "from-far".into(),
                format: Some(DiskFormat::Qcow2),
            },
        )
        .await
        .unwrap();
    let op = wait_op(c, &e.operation).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    // Copied back onto the other host from the image.
    let mut req = volume_on("back", "local", 1);
    req.size_bytes = None;
    req.source = Some(VolumeSource::Image {
        image: "from-far".into(),
    });
    let b = c.create_volume(&req).await.unwrap();
    assert_eq!(
        wait_op(c, &b.operation).await.state,
        OperationState::Succeeded
    );
    let back = c.volume(None, "back").await.unwrap();
    assert!(reads(
        &lab.pool_of("local").join(&back.file),
        0x66,
        0,
        1 << 20
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_across_hosts_are_refused_with_the_field() {
    let lab = lab().await;
    let c = &lab.tp.client;
    for name in ["data", "busy"] {
        let a = c
            .create_volume(&volume_on(name, "local", 16))
            .await
            .unwrap();
        wait_op(c, &a.operation).await;
    }
    let l = c
        .create_volume(&VolumeCreate {
            name: "child".into(),
            size_bytes: None,
            host: None,
            source: Some(VolumeSource::Volume {
                volume: "busy".into(),
                linked: true,
            }),
            ..volume_on("child", "local", 1)
        })
        .await
        .unwrap();
    wait_op(c, &l.operation).await;
    let vm = c
        .create_vm(&VmCreate {
            name: "vm".into(),
            hypervisor: Some(HypervisorKind::Fake),
            host_selector: [("slot".to_owned(), "local".to_owned())].into(),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    let token = lab.tp.platform.token.clone();
    let check = |path: &'static str, body: &'static str| {
        let (tp, token) = (&lab.tp, token.clone());
        async move {
            raw(
                tp,
                Method::POST,
                &format!("/api/v1/volumes/{path}"),
                Some(&token),
                Some(body),
            )
            .await
        }
    };
    for (path, body, status, code, field) in [
        ("data/move", r#"{"host":"ghost"}"#, 404, "not_found", "host"),
        (
            "data/move",
            r#"{"host":"Bad Host"}"#,
            400,
            "invalid_name",
            "host",
        ),
        (
            "data/move",
            r#"{"host":"far","pool":"nope"}"#,
            404,
            "not_found",
            "pool",
        ),
        (
            "data/move",
            r#"{"host":"far","pool":"../x"}"#,
            400,
            "invalid_value",
            "pool",
        ),
        ("data/move", r#"{}"#, 400, "invalid_value", "pool"),
        (
            "data/move",
            r#"{"host":"local"}"#,
            400,
            "invalid_value",
            "pool",
        ),
        (
            "data/move",
            r#"{"host":"far","colour":"red"}"#,
            400,
            "unknown_field",
            "",
        ),
        ("child/move", r#"{"host":"far"}"#, 409, "conflict", ""),
        ("busy/move", r#"{"host":"far"}"#, 409, "conflict", ""),
        ("ghost/move", r#"{"host":"far"}"#, 404, "not_found", "name"),
        (
            "data/move?project=ghost",
            r#"{"host":"far"}"#,
            404,
            "not_found",
            "project",
        ),
    ] {
        let (s, v) = check(path, body).await;
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(v["code"], code, "{path} {body}: {v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{path} {body}: {v}");
        }
    }
    // Attached volumes stay with their VM.
    wait_op(c, &vm.operation).await;
    let at = c.attach_volume(None, "data", "vm").await.unwrap();
    assert_eq!(
        wait_op(c, &at.operation).await.state,
        OperationState::Succeeded
    );
    let (s, v) = check("data/move", r#"{"host":"far"}"#).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("conflict")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("attached"), "{v}");
    // Nothing was queued or moved.
    for name in ["data", "busy", "child"] {
        let v = c.volume(None, name).await.unwrap();
        assert_eq!(v.host.as_str(), "local", "{name}");
    }
    assert!(lab.staged().is_empty());
}

/// Throughput of a move to another host (in-process host to a remote agent over mutual TLS on
/// loopback) against `qemu-img convert` of the same file in the same run. A measurement, not a
/// check: `cargo test -p panal --test api agent_volumes::move_throughput -- --ignored --nocapture`
/// (`PANAL_MOVE_MIB`, default 512, bytes written all over the volume).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn move_throughput_against_qemu_img_convert() {
    let mib: u64 = std::env::var("PANAL_MOVE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let lab = lab().await;
    let c = &lab.tp.client;
    let a = c
        .create_volume(&volume_on("big", "local", mib))
        .await
        .unwrap();
    wait_op(c, &a.operation).await;
    let src = lab.pool_of("local").join(&a.volume.file);
    // Non-zero data everywhere (qemu-io's pattern write), so neither side can skip holes.
    write_at(&src, 0x5c, 0, mib << 20);
    let bytes = std::fs::metadata(&src).unwrap().len();
    let out = lab.tp.dir.path().join("convert.qcow2");
    let t0 = std::time::Instant::now();
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "qcow2"])
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let convert = t0.elapsed();
    std::fs::remove_file(&out).unwrap();
    let t0 = std::time::Instant::now();
    let m = c
        .move_volume_to(None, "big", &to_host("far"))
        .await
        .unwrap();
    let op = wait_op(c, &m.operation).await;
    let moved = t0.elapsed();
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let rate = |d: Duration| (bytes as f64 / (1 << 20) as f64) / d.as_secs_f64();
    println!(
        "{} MiB file: qemu-img convert {:.0} MiB/s ({:.2} s); move to another host {:.0} MiB/s \
         ({:.2} s); ratio {:.2}",
        bytes >> 20,
        rate(convert),
        convert.as_secs_f64(),
        rate(moved),
        moved.as_secs_f64(),
        convert.as_secs_f64() / moved.as_secs_f64()
    );
}
