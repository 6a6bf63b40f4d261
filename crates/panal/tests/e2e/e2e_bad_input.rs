//! Bad input around real VMs, refused with a 4xx, a stable code and the offending field: an
//! unknown machine profile, vCPUs or memory no host can give, a disk image whose header
//! contradicts its declared format, a qcow2 whose backing file points at `/etc/shadow`, kernel
//! paths that are relative or symbolic links, resizes to zero. And a VM whose QEMU refuses to
//! start (a corrupt kernel) is `failed` with QEMU's own reason in its status.

use crate::common_e2e;

use common_e2e::{E2e, guest_dir, tiny, wait_vm};
use panal_types::image::{DiskFormat, ImageImport};
use panal_types::operation::OperationState;
use panal_types::vm::VmPhase;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

async fn raw(e: &E2e, method: Method, path: &str, body: Value) -> (u16, Value) {
    let token = &e.platform.as_ref().unwrap().token;
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", e.client.base()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[track_caller]
fn refused(got: &(u16, Value), code: &str, field: &str) {
    assert_eq!(got.0, 400, "{got:?}");
    assert_eq!(got.1["code"], code, "{got:?}");
    assert_eq!(got.1["field"], field, "{got:?}");
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{got:?}"
    );
}

fn qemu_img(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

fn disk(name: &str, path: &Path, format: DiskFormat) -> Value {
    serde_json::to_value(ImageImport {
        name: name.into(),
        disk_path: Some(path.to_string_lossy().into_owned()),
        format: Some(format),
        ..ImageImport::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_and_a_qemu_failure_is_reported() {
    let e = E2e::start().await;
    let c = &e.client;
    let files = tempfile::tempdir().unwrap();
    let host = c.list_hosts(None).await.unwrap().items.remove(0);
    let vms = "/api/v1/vms";
    let images = "/api/v1/images";

    let got = raw(
        &e,
        Method::POST,
        vms,
        json!({"name": "a", "image": "tiny", "machine": "pdp11"}),
    )
    .await;
    refused(&got, "invalid_value", "machine");
    let too_many = host.inventory.cpus + 1;
    let got = raw(
        &e,
        Method::POST,
        vms,
        json!({"name": "a", "image": "tiny", "vcpus": too_many}),
    )
    .await;
    refused(&got, "invalid_value", "vcpus");
    let too_much = host.inventory.memory_bytes + (1 << 30);
    let got = raw(
        &e,
        Method::POST,
        vms,
        json!({"name": "a", "image": "tiny", "memory_bytes": too_much}),
    )
    .await;
    refused(&got, "invalid_value", "memory_bytes");

    // A qcow2 declared as raw: the header wins and the request is refused.
    qemu_img(
        &["create", "-q", "-f", "qcow2", "real.qcow2", "64M"],
        files.path(),
    );
    let got = raw(
        &e,
        Method::POST,
        images,
        disk("liar", &files.path().join("real.qcow2"), DiskFormat::Raw),
    )
    .await;
    refused(&got, "invalid_value", "format");
    // A qcow2 whose backing file is /etc/shadow (`-u`: qemu-img must not open it to make one).
    qemu_img(
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
            "64M",
        ],
        files.path(),
    );
    let got = raw(
        &e,
        Method::POST,
        images,
        disk("evil", &files.path().join("evil.qcow2"), DiskFormat::Qcow2),
    )
    .await;
    refused(&got, "invalid_value", "disk_path");
    // Kernel paths: relative, and a symbolic link to a real kernel.
    let got = raw(
        &e,
        Method::POST,
        images,
        json!({"name": "rel", "kernel_path": "vmlinux"}),
    )
    .await;
    refused(&got, "invalid_value", "kernel_path");
    let link = files.path().join("vmlinux");
    std::os::unix::fs::symlink(guest_dir().join("vmlinux"), &link).unwrap();
    let got = raw(
        &e,
        Method::POST,
        images,
        json!({"name": "link", "kernel_path": link}),
    )
    .await;
    refused(&got, "invalid_value", "kernel_path");
    let names: Vec<String> = c
        .list_images(None, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(
        names,
        ["tiny", "tiny-disk"],
        "a refused import left an image"
    );

    // Resizes to zero, on a real (created, not started) VM.
    let mut req = tiny("idle", 128);
    req.start = Some(false);
    c.create_vm(&req).await.expect("create");
    let got = raw(
        &e,
        Method::PATCH,
        "/api/v1/vms/idle",
        json!({"memory_bytes": 0}),
    )
    .await;
    refused(&got, "invalid_value", "memory_bytes");
    let got = raw(&e, Method::PATCH, "/api/v1/vms/idle", json!({"vcpus": 0})).await;
    refused(&got, "invalid_value", "vcpus");
    let vm = c.vm(None, "idle").await.unwrap();
    assert_eq!(
        (vm.spec.vcpus, vm.spec.memory_bytes),
        (1, 128 << 20),
        "a refused resize changed the VM"
    );

    // A kernel QEMU cannot load: the VM is failed with QEMU's own words as the reason.
    let junk = files.path().join("junk-kernel");
    // Shorter than the setup size its (zero) header claims: QEMU refuses it before booting.
    // (A longer garbage file can pass QEMU's checks and hang the guest instead.)
    std::fs::write(&junk, vec![0u8; 1024]).unwrap();
    let accepted = c
        .import_image(&ImageImport {
            name: "broken".into(),
            kernel_path: Some(junk.to_string_lossy().into_owned()),
            ..ImageImport::default()
        })
        .await
        .expect("a kernel file is accepted: only QEMU can judge it");
    let op = c
        .wait_operation(&accepted.operation.id.to_string(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    let mut req = tiny("broken", 128);
    req.image = Some("broken".into());
    c.create_vm(&req).await.expect("create");
    let vm = wait_vm(c, "broken", "failed", Duration::from_secs(60), |v| {
        v.status.phase == VmPhase::Failed
    })
    .await;
    let why = vm.status.reason.clone().unwrap_or_default();
    assert!(
        why.contains("invalid kernel header"),
        "QEMU's reason is not in the status: {why:?}"
    );
    assert!(
        vm.status
            .events
            .iter()
            .any(|ev| ev.reason == "FailedToStart"),
        "{:?}",
        vm.status.events
    );
    assert!(
        common_e2e::qemu_pid(&e.data, vm.id).is_none(),
        "a QEMU runs for the failed VM"
    );
}
