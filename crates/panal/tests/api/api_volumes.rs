//! Volumes through the REST API on the fake driver (files are real, made by `qemu-img` in the
//! platform's default pool): create, attach, grow attached and detached, detach, linked and
//! full clones, delete; and every refusal of the storage issue's bad-input list that concerns
//! volumes, each with its status, error code and field.

use crate::common;

use common::{TestPlatform, raw, start, wait_op};
use panal_types::operation::OperationState;
use panal_types::vm::{HypervisorKind, VmCreate};
use panal_types::volume::{VolumeCreate, VolumeFormat, VolumePhase, VolumeSource};
use reqwest::Method;
use std::path::PathBuf;

fn empty(name: &str, mib: u64) -> VolumeCreate {
    VolumeCreate {
        name: name.into(),
        project: None,
        size_bytes: Some(mib << 20),
        format: None,
        pool: None,
        host: None,
        source: None,
    }
}

fn clone_of(name: &str, parent: &str, linked: bool) -> VolumeCreate {
    VolumeCreate {
        source: Some(VolumeSource::Volume {
            volume: parent.into(),
            linked,
        }),
        size_bytes: None,
        ..empty(name, 1)
    }
}

fn pool_file(tp: &TestPlatform, file: &str) -> PathBuf {
    tp.dir.path().join("pools/default").join(file)
}

fn info(path: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn fake_vm(tp: &TestPlatform, name: &str) {
    let a = tp
        .client
        .create_vm(&VmCreate {
            name: name.into(),
            hypervisor: Some(HypervisorKind::Fake),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    assert_eq!(
        wait_op(&tp.client, &a.operation).await.state,
        OperationState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_lifecycle_with_attach_growth_and_clones() {
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_volume(&empty("data", 64)).await.unwrap();
    assert_eq!(a.volume.phase, VolumePhase::Creating);
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "data").await.unwrap();
    assert_eq!(v.phase, VolumePhase::Ready);
    assert_eq!(v.format, VolumeFormat::Qcow2);
    let file = pool_file(&tp, &v.file);
    assert_eq!(info(&file)["virtual-size"], 64u64 << 20);
    assert_eq!(info(&file)["format"], "qcow2");

    // Attached to a running VM: in its spec, and exclusive.
    fake_vm(&tp, "vm-a").await;
    fake_vm(&tp, "vm-b").await;
    let at = c.attach_volume(None, "data", "vm-a").await.unwrap();
    assert_eq!(
        wait_op(c, &at.operation).await.state,
        OperationState::Succeeded
    );
    let vm = c.vm(None, "vm-a").await.unwrap();
    assert_eq!(vm.spec.volumes.len(), 1);
    assert_eq!(vm.spec.volumes[0].id, v.id);
    assert!(vm.status.events.iter().any(|e| e.reason == "DiskAttached"));
    let e = c.attach_volume(None, "data", "vm-b").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("conflict")), "{e}");
    let e = c.delete_volume(None, "data").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");

    // Growth while attached goes through the VM (live on its host).
    let g = c.resize_volume(None, "data", 96 << 20).await.unwrap();
    assert_eq!(
        wait_op(c, &g.operation).await.state,
        OperationState::Succeeded
    );
    let vm = c.vm(None, "vm-a").await.unwrap();
    assert_eq!(vm.spec.volumes[0].size_bytes, 96 << 20);
    assert!(vm.status.events.iter().any(|e| e.reason == "DiskResized"));

    let d = c.detach_volume(None, "data").await.unwrap();
    assert_eq!(
        wait_op(c, &d.operation).await.state,
        OperationState::Succeeded
    );
    assert!(c.vm(None, "vm-a").await.unwrap().spec.volumes.is_empty());
    assert_eq!(c.volume(None, "data").await.unwrap().attached_to, None);

    // Growth while detached: the host grows the file.
    let g = c.resize_volume(None, "data", 128 << 20).await.unwrap();
    assert_eq!(
        wait_op(c, &g.operation).await.state,
        OperationState::Succeeded
    );
    assert_eq!(info(&file)["virtual-size"], 128u64 << 20);
    assert_eq!(c.volume(None, "data").await.unwrap().size_bytes, 128 << 20);

    // A linked clone is a qcow2 child of the parent's file; the parent is then read-only.
    let l = c
        .create_volume(&clone_of("linked", "data", true))
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &l.operation).await.state,
        OperationState::Succeeded
    );
    let linked = c.volume(None, "linked").await.unwrap();
    assert_eq!(linked.parent.as_ref().map(|p| p.as_str()), Some("data"));
    assert_eq!(linked.size_bytes, 128 << 20);
    let li = info(&pool_file(&tp, &linked.file));
    assert_eq!(li["backing-filename"], v.file.as_str());
    let parent = c.volume(None, "data").await.unwrap();
    assert_eq!(parent.children.len(), 1);
    for e in [
        c.delete_volume(None, "data").await.unwrap_err(),
        c.attach_volume(None, "data", "vm-a").await.unwrap_err(),
        c.resize_volume(None, "data", 256 << 20).await.unwrap_err(),
    ] {
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(e.to_string().contains("linked"), "{e}");
    }

    // A full copy (to raw) is independent of its parent.
    let mut full = clone_of("copy", "data", false);
    full.format = Some(VolumeFormat::Raw);
    let f = c.create_volume(&full).await.unwrap();
    assert_eq!(
        wait_op(c, &f.operation).await.state,
        OperationState::Succeeded
    );
    let copy = c.volume(None, "copy").await.unwrap();
    let ci = info(&pool_file(&tp, &copy.file));
    assert_eq!(ci["format"], "raw");
    assert!(ci.get("backing-filename").is_none());
    assert_eq!(copy.parent, None);

    // Deleting the child frees the parent; deletes remove the files.
    for name in ["linked", "copy", "data"] {
        let file = pool_file(&tp, &c.volume(None, name).await.unwrap().file);
        let del = c.delete_volume(None, name).await.unwrap();
        assert_eq!(
            wait_op(c, &del.operation).await.state,
            OperationState::Succeeded,
            "{name}"
        );
        assert!(!file.exists(), "{name}: {}", file.display());
        assert_eq!(c.volume(None, name).await.unwrap_err().status(), Some(404));
    }
    assert!(c.list_volumes(None, None).await.unwrap().items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_volume_requests_are_refused_with_the_field() {
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_volume(&empty("data", 16)).await.unwrap();
    wait_op(c, &a.operation).await;

    let check = |body: &str, status: u16, code: &str, field: &str| {
        let (tp, body) = (&tp, body.to_owned());
        let (code, field) = (code.to_owned(), field.to_owned());
        async move {
            let (s, v) = raw(
                tp,
                Method::POST,
                "/api/v1/volumes",
                Some(&tp.platform.token),
                Some(&body),
            )
            .await;
            assert_eq!(s, status, "{body}: {v}");
            assert_eq!(v["code"], code.as_str(), "{body}: {v}");
            if !field.is_empty() {
                assert_eq!(v["field"], field.as_str(), "{body}: {v}");
            }
        }
    };
    check(r#"{"name":"x"}"#, 400, "invalid_value", "size_bytes").await;
    check(
        r#"{"name":"x","size_bytes":1000}"#,
        400,
        "invalid_value",
        "size_bytes",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":0}"#,
        400,
        "invalid_value",
        "size_bytes",
    )
    .await;
    // Over the pool's file system (thin volumes may not promise more than it holds).
    check(
        r#"{"name":"x","size_bytes":70368744177664}"#,
        507,
        "insufficient_capacity",
        "size_bytes",
    )
    .await;
    check(
        r#"{"name":"Bad Name","size_bytes":1048576}"#,
        400,
        "invalid_name",
        "name",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":1048576,"pool":"nope"}"#,
        404,
        "not_found",
        "pool",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":1048576,"pool":"../etc"}"#,
        400,
        "invalid_value",
        "pool",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":1048576,"host":"nohost"}"#,
        404,
        "not_found",
        "host",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":1048576,"colour":"red"}"#,
        400,
        "unknown_field",
        "",
    )
    .await;
    check(
        r#"{"name":"data","size_bytes":1048576}"#,
        409,
        "already_exists",
        "name",
    )
    .await;
    check(
        r#"{"name":"x","source":{"type":"volume","volume":"nope"}}"#,
        404,
        "not_found",
        "source.volume",
    )
    .await;
    check(
        r#"{"name":"x","format":"raw","source":{"type":"volume","volume":"data"}}"#,
        400,
        "invalid_value",
        "format",
    )
    .await;
    check(
        r#"{"name":"x","size_bytes":1048576,"source":{"type":"volume","volume":"data"}}"#,
        400,
        "invalid_value",
        "size_bytes",
    )
    .await;

    // Shrinking is refused; so is a resize to the same size.
    let e = c.resize_volume(None, "data", 8 << 20).await.unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(400), Some("size_bytes")),
        "{e}"
    );
    let e = c.resize_volume(None, "data", 16 << 20).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    // Detaching a detached volume, attaching to an unknown VM.
    assert_eq!(
        c.detach_volume(None, "data").await.unwrap_err().status(),
        Some(409)
    );
    let e = c.attach_volume(None, "data", "ghost").await.unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(404), Some("vm")), "{e}");

    // Another project sees none of it, and cannot attach its VMs to it.
    c.create_project(&panal_types::project::ProjectCreate {
        name: "other".into(),
        description: None,
    })
    .await
    .unwrap();
    assert_eq!(
        c.volume(Some("other"), "data").await.unwrap_err().status(),
        Some(404)
    );
    assert_eq!(
        c.delete_volume(Some("other"), "data")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        c.attach_volume(Some("other"), "data", "x")
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    let other_vm = c
        .create_vm(&VmCreate {
            name: "theirs".into(),
            project: Some("other".into()),
            hypervisor: Some(HypervisorKind::Fake),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    wait_op(c, &other_vm.operation).await;
    let e = c.attach_volume(None, "data", "theirs").await.unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(404), Some("vm")), "{e}");
    assert!(
        c.list_volumes(Some("other"), None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// Writes one byte pattern over the first sector of a detached volume file.
fn write_sector(path: &std::path::Path, byte: u8) {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("write -P {byte} 0 512")])
        .arg(path)
        .output()
        .expect("qemu-io");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the first sector is all `byte`.
fn sector_is(path: &std::path::Path, byte: u8) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-r", "-c", &format!("read -P {byte} 0 512")])
        .arg(path)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_of_a_detached_volume_take_revert_and_delete() {
    let tp = start().await;
    let c = &tp.client;
    use panal_types::volume::SnapshotStep::{Create, Delete, Revert};
    let a = c.create_volume(&empty("data", 16)).await.unwrap();
    wait_op(c, &a.operation).await;
    let file = pool_file(&tp, &a.volume.file);
    write_sector(&file, 0xab);

    let s = c
        .volume_snapshot(None, "data", "before", Create)
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &s.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "data").await.unwrap();
    assert_eq!(v.snapshots.len(), 1);
    assert_eq!(v.snapshots[0].name.as_str(), "before");
    assert_eq!(info(&file)["snapshots"][0]["name"], "before");

    write_sector(&file, 0xcd);
    assert!(sector_is(&file, 0xcd));
    let r = c
        .volume_snapshot(None, "data", "before", Revert)
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &r.operation).await.state,
        OperationState::Succeeded
    );
    assert!(
        sector_is(&file, 0xab),
        "the revert brought the old bytes back"
    );

    // Refusals: a taken name, an unknown snapshot, a bad name, a raw volume, a VM without
    // volumes, a revert under a running VM.
    let e = c
        .volume_snapshot(None, "data", "before", Create)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (Some(409), Some("already_exists"), Some("name")),
        "{e}"
    );
    let e = c
        .volume_snapshot(None, "data", "nope", Revert)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(404), Some("snapshot")),
        "{e}"
    );
    let e = c
        .volume_snapshot(None, "data", "Bad Name", Create)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(400), Some("snapshot")),
        "{e}"
    );
    let mut rawv = empty("rawvol", 16);
    rawv.format = Some(VolumeFormat::Raw);
    let ra = c.create_volume(&rawv).await.unwrap();
    wait_op(c, &ra.operation).await;
    let e = c
        .volume_snapshot(None, "rawvol", "s", Create)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    fake_vm(&tp, "vm-a").await;
    let e = c.vm_snapshot(None, "vm-a", "s", Create).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    let at = c.attach_volume(None, "data", "vm-a").await.unwrap();
    wait_op(c, &at.operation).await;
    let e = c
        .volume_snapshot(None, "data", "before", Revert)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("stop"), "{e}");

    // Detached again: the snapshot is dropped from the file and the record.
    let d = c.detach_volume(None, "data").await.unwrap();
    wait_op(c, &d.operation).await;
    let del = c
        .volume_snapshot(None, "data", "before", Delete)
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &del.operation).await.state,
        OperationState::Succeeded
    );
    assert!(c.volume(None, "data").await.unwrap().snapshots.is_empty());
    assert!(
        info(&file)
            .get("snapshots")
            .is_none_or(|s| s.as_array().is_none_or(|a| a.is_empty()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vm_detaches_its_volumes() {
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_volume(&empty("keep", 16)).await.unwrap();
    wait_op(c, &a.operation).await;
    fake_vm(&tp, "gone").await;
    let at = c.attach_volume(None, "keep", "gone").await.unwrap();
    wait_op(c, &at.operation).await;
    let d = c.delete_vm(None, "gone").await.unwrap();
    assert_eq!(
        wait_op(c, &d.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "keep").await.unwrap();
    assert_eq!(v.attached_to, None, "the volume outlives its VM, detached");
    assert!(pool_file(&tp, &v.file).exists());
    let del = c.delete_volume(None, "keep").await.unwrap();
    assert_eq!(
        wait_op(c, &del.operation).await.state,
        OperationState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_volume_moves_between_pools_of_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let fast = dir.path().join("fast-pool");
    let fast2 = fast.clone();
    let tp = common::start_with(dir, move |cfg| {
        cfg.pools = vec![panal_agent::inventory::PoolDir {
            name: "fast".into(),
            path: fast2,
            shared: false,
        }];
    })
    .await;
    let c = &tp.client;
    let a = c.create_volume(&empty("data", 16)).await.unwrap();
    wait_op(c, &a.operation).await;
    let old = pool_file(&tp, &a.volume.file);
    write_sector(&old, 0x33);
    let m = c.move_volume(None, "data", "fast").await.unwrap();
    assert_eq!(
        wait_op(c, &m.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "data").await.unwrap();
    assert_eq!(v.pool, "fast");
    let new = fast.join(&v.file);
    assert!(!old.exists(), "the original is gone");
    assert!(sector_is(&new, 0x33), "the data moved");
    // Refusals: same pool, unknown pool, attached, with snapshots.
    let e = c.move_volume(None, "data", "fast").await.unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(409), Some("pool")), "{e}");
    let e = c.move_volume(None, "data", "nope").await.unwrap_err();
    assert_eq!((e.status(), e.field()), (Some(404), Some("pool")), "{e}");
    let s = c
        .volume_snapshot(None, "data", "s", panal_types::volume::SnapshotStep::Create)
        .await
        .unwrap();
    wait_op(c, &s.operation).await;
    let e = c.move_volume(None, "data", "default").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    // Attached volumes stay where their VM opens them.
    fake_vm(&tp, "vm").await;
    let at = c.attach_volume(None, "data", "vm").await.unwrap();
    wait_op(c, &at.operation).await;
    let e = c.move_volume(None, "data", "default").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_copied_from_a_disk_image() {
    use panal_types::image::{DiskFormat, ImageImport};
    let tp = start().await;
    let c = &tp.client;
    let src = tp.dir.path().join("base.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("24M")
        .output()
        .unwrap();
    assert!(out.status.success());
    write_sector(&src, 0x77);
    let imp = c
        .import_image(&ImageImport {
            name: "base".into(),
            disk_path: Some(src.to_string_lossy().into_owned()),
            format: Some(DiskFormat::Qcow2),
            ..ImageImport::default()
        })
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &imp.operation).await.state,
        OperationState::Succeeded
    );

    let mut req = empty("from-image", 1);
    req.size_bytes = None;
    req.source = Some(VolumeSource::Image {
        image: "base".into(),
    });
    let a = c.create_volume(&req).await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "from-image").await.unwrap();
    assert_eq!(v.size_bytes, 24 << 20, "the image's virtual size");
    let file = pool_file(&tp, &v.file);
    assert!(sector_is(&file, 0x77), "the image's bytes");
    assert!(
        info(&file).get("backing-filename").is_none(),
        "a copy, not a child"
    );
    let mut small = req.clone();
    small.name = "small".into();
    small.size_bytes = Some(8 << 20);
    let mut unknown = req.clone();
    unknown.name = "unknown".into();
    unknown.source = Some(VolumeSource::Image {
        image: "nope".into(),
    });
    for (r, field) in [(small, "size_bytes"), (unknown, "source.image")] {
        let e = c.create_volume(&r).await.unwrap_err();
        assert_eq!(e.field(), Some(field), "{e}");
    }
    // The image can go; the volume stays.
    c.delete_image(None, "base").await.unwrap();
    assert!(sector_is(&file, 0x77));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_volume_is_the_vms_for_its_whole_life() {
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_volume(&empty("root", 16)).await.unwrap();
    wait_op(c, &a.operation).await;
    let vm = |name: &str, boot: &str, image: Option<&str>| VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        boot_volume: Some(boot.into()),
        image: image.map(str::to_owned),
        ..VmCreate::default()
    };
    let e = c
        .create_vm(&vm("x", "root", Some("tiny")))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(400), Some("boot_volume")),
        "{e}"
    );
    let e = c.create_vm(&vm("x", "nope", None)).await.unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(404), Some("boot_volume")),
        "{e}"
    );
    let ok = c.create_vm(&vm("booted", "root", None)).await.unwrap();
    assert_eq!(
        wait_op(c, &ok.operation).await.state,
        OperationState::Succeeded
    );
    let v = c.volume(None, "root").await.unwrap();
    assert_eq!(v.attached_to.as_ref().map(|n| n.as_str()), Some("booted"));
    assert!(c.vm(None, "booted").await.unwrap().spec.volumes[0].boot);
    // Taken: another VM cannot boot from it, and it cannot be detached.
    let e = c.create_vm(&vm("other", "root", None)).await.unwrap_err();
    assert_eq!(
        (e.status(), e.field()),
        (Some(409), Some("boot_volume")),
        "{e}"
    );
    let e = c.detach_volume(None, "root").await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    // The VM goes; the volume stays, free.
    let d = c.delete_vm(None, "booted").await.unwrap();
    wait_op(c, &d.operation).await;
    assert_eq!(c.volume(None, "root").await.unwrap().attached_to, None);
}

/// Whether the first sector of a file read as `format` is all `byte`.
fn sector_of_is(path: &std::path::Path, format: &str, byte: u8) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", format, "-r", "-c", &format!("read -P {byte} 0 512")])
        .arg(path)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_is_exported_as_an_image_and_copied_back() {
    use panal_types::image::DiskFormat;
    use panal_types::volume::VolumeExport;
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_volume(&empty("data", 16)).await.unwrap();
    wait_op(c, &a.operation).await;
    write_sector(&pool_file(&tp, &a.volume.file), 0x5a);
    // A linked clone: its export must be standalone, its parent's bytes flattened in.
    let l = c
        .create_volume(&clone_of("child", "data", true))
        .await
        .unwrap();
    wait_op(c, &l.operation).await;

    let export = |volume: &'static str, image: &'static str, format: Option<DiskFormat>| async move {
        let e = c
            .export_volume(
                None,
                volume,
                &VolumeExport {
                    image: image.into(),
                    format,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            e.operation.kind,
            panal_types::operation::OperationKind::VolumeExport
        );
        assert_eq!(e.volume.operation, Some(e.operation.id), "busy meanwhile");
        let op = wait_op(c, &e.operation).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
        op
    };
    let op = export("child", "golden", None).await;
    assert!(op.progress.message.contains("golden"), "{op:?}");
    let image = c.image(None, "golden").await.unwrap();
    assert_eq!(image.format, Some(DiskFormat::Qcow2));
    assert_eq!(image.virtual_size_bytes, Some(16 << 20));
    assert_eq!(image.project.as_str(), "default");
    let child = c.volume(None, "child").await.unwrap();
    assert_eq!(child.operation, None, "free again");
    let stored = tp
        .dir
        .path()
        .join("images")
        .join(image.id.to_string())
        .join("disk");
    assert!(
        info(&stored).get("backing-filename").is_none(),
        "no backing chain"
    );
    assert!(sector_of_is(&stored, "qcow2", 0x5a));

    // A new volume from the exported image holds the same bytes.
    let mut req = empty("restored", 1);
    req.size_bytes = None;
    req.source = Some(VolumeSource::Image {
        image: "golden".into(),
    });
    let r = c.create_volume(&req).await.unwrap();
    assert_eq!(
        wait_op(c, &r.operation).await.state,
        OperationState::Succeeded
    );
    let restored = c.volume(None, "restored").await.unwrap();
    assert_eq!(restored.size_bytes, 16 << 20);
    assert!(sector_is(&pool_file(&tp, &restored.file), 0x5a));

    // Raw on request.
    export("data", "golden-raw", Some(DiskFormat::Raw)).await;
    let raw_image = c.image(None, "golden-raw").await.unwrap();
    assert_eq!(raw_image.format, Some(DiskFormat::Raw));
    assert_eq!(raw_image.virtual_size_bytes, Some(16 << 20));
    let stored = tp
        .dir
        .path()
        .join("images")
        .join(raw_image.id.to_string())
        .join("disk");
    assert!(sector_of_is(&stored, "raw", 0x5a));

    // Refusals, each with its status, code and field; none leaves anything behind.
    c.create_project(&panal_types::project::ProjectCreate {
        name: "other".into(),
        description: None,
    })
    .await
    .unwrap();
    let busy = c.create_volume(&empty("busy", 16)).await.unwrap();
    wait_op(c, &busy.operation).await;
    fake_vm(&tp, "vm-a").await;
    let at = c.attach_volume(None, "busy", "vm-a").await.unwrap();
    wait_op(c, &at.operation).await;
    let token = tp.platform.token.clone();
    for (path, body, status, code, field) in [
        ("nope/export", r#"{"image":"x"}"#, 404, "not_found", "name"),
        (
            "data/export?project=other",
            r#"{"image":"x"}"#,
            404,
            "not_found",
            "name",
        ),
        (
            "data/export?project=ghost",
            r#"{"image":"x"}"#,
            404,
            "not_found",
            "project",
        ),
        (
            "data/export",
            r#"{"image":"golden"}"#,
            409,
            "already_exists",
            "image",
        ),
        (
            "data/export",
            r#"{"image":"x","format":"vmdk"}"#,
            400,
            "invalid_value",
            "format",
        ),
        (
            "data/export",
            r#"{"image":"Bad Name"}"#,
            400,
            "invalid_name",
            "image",
        ),
        ("data/export", r#"{}"#, 400, "invalid_value", ""),
        (
            "data/export",
            r#"{"image":"x","colour":"red"}"#,
            400,
            "unknown_field",
            "",
        ),
        ("busy/export", r#"{"image":"x"}"#, 409, "conflict", ""),
    ] {
        let (s, v) = raw(
            &tp,
            Method::POST,
            &format!("/api/v1/volumes/{path}"),
            Some(&token),
            Some(body),
        )
        .await;
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(v["code"], code, "{path} {body}: {v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{path} {body}: {v}");
        }
    }
    let images: Vec<String> = c
        .list_images(None, None)
        .await
        .unwrap()
        .items
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert!(!images.contains(&"x".to_string()), "{images:?}");
    assert_eq!(c.volume(None, "busy").await.unwrap().operation, None);
}
