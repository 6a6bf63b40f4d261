//! Real-QEMU (TCG) tests of the q35 profile: a disk image booted through a per-VM qcow2
//! overlay (writes persist across stop/start, the base is untouched), vCPU hot-plug, guest
//! panic reporting through pvpanic, the per-VM cgroup, and the host probe.

mod common;

use common::{BOOT, Env};
use panal_driver::qemu::{AccelMode, QemuDriver, READY_LINE};
use panal_driver::{BootSource, Driver, ResizeRequest, VmExit, VmLaunch, caps};
use panal_types::VmId;
use panal_types::host::Accelerator;
use panal_types::vm::MachineProfile;
use std::time::Duration;

fn q35_disk(env: &Env) -> VmLaunch {
    VmLaunch {
        id: VmId::new(),
        display_name: "test/q35".into(),
        vcpus: 1,
        memory_bytes: 256 << 20,
        machine: MachineProfile::Q35,
        boot: BootSource::Disk {
            base: env.guest.rootfs_qcow2(),
            format: "qcow2".into(),
        },
        disks: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_disk_overlay_hotplug_cgroup_and_panic() {
    let env = Env::new();
    let d = env.driver();
    let spec = q35_disk(&env);
    let base_sum = std::fs::read(env.guest.rootfs_qcow2())
        .map(|b| b.len())
        .unwrap();
    let vm = d.launch(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    let line = con.wait_for(READY_LINE, BOOT).await;
    assert!(
        line.contains("root=/dev/vda"),
        "booted from the disk: {line}"
    );
    assert!(env.run_dir(spec.id).join("disk0.qcow2").is_file());

    // The per-VM cgroup holds QEMU, with limits (v1 on our build hosts, v2 elsewhere).
    let pid = vm.pid().unwrap().to_string();
    let id = spec.id.to_string();
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu/panal").join(&id);
    let v2 = std::path::Path::new("/sys/fs/cgroup/panal").join(&id);
    let procs = std::fs::read_to_string(v1.join("cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(v2.join("cgroup.procs")));
    assert!(procs.expect("per-VM cgroup").lines().any(|l| l == pid));

    let out = con
        .run(
            "echo persisted > /root/mark; sync; cat /root/mark",
            Duration::from_secs(30),
        )
        .await;
    assert!(out.contains("persisted"), "{out}");

    // vCPU hot-plug: 1 -> 2, seen by the guest kernel.
    let r = vm
        .resize(&ResizeRequest {
            vcpus: Some(2),
            memory_bytes: None,
        })
        .await
        .expect("resize");
    assert!(r.applied_live, "{r:?}");
    let mut seen = String::new();
    for _ in 0..20 {
        seen = con
            .run(
                "ls -d /sys/devices/system/cpu/cpu[0-9]*",
                Duration::from_secs(20),
            )
            .await;
        if seen.contains("cpu1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        seen.contains("cpu1"),
        "guest does not see the new vCPU: {seen}"
    );

    vm.shutdown(Duration::from_secs(60))
        .await
        .expect("shutdown");
    assert_eq!(vm.exit_watch().borrow().clone(), Some(VmExit::Shutdown));
    let t = std::time::Instant::now();
    while (v1.exists() || v2.exists()) && t.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !v1.exists() && !v2.exists(),
        "cgroup not removed after exit"
    );

    // Same overlay on the next start: the write is still there; the base is unchanged.
    let vm = d.launch(&spec).await.expect("relaunch");
    con.wait_for(READY_LINE, BOOT).await;
    con.reset();
    let out = con.run("cat /root/mark", Duration::from_secs(30)).await;
    assert!(out.contains("persisted"), "{out}");
    assert_eq!(
        std::fs::read(env.guest.rootfs_qcow2())
            .map(|b| b.len())
            .unwrap(),
        base_sum
    );

    // A guest panic is reported as such (pvpanic), not as a crash.
    con.send("echo c > /proc/sysrq-trigger").await;
    let mut rx = vm.exit_watch();
    let exit = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(Option::is_some)).await;
    assert_eq!(
        exit.expect("exit").expect("watch").clone(),
        Some(VmExit::GuestPanic)
    );
    d.cleanup(spec.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_tcg_here_and_capabilities() {
    let env = Env::new();
    let mut cfg = env.config();
    cfg.accel = AccelMode::Auto;
    cfg.probe_guest = Some(env.guest.direct_kernel(MachineProfile::Microvm));
    let d = QemuDriver::new(cfg);
    let info = d.probe().await;
    assert!(info.available, "{info:?}");
    assert!(
        info.detail.contains("QEMU emulator version"),
        "{}",
        info.detail
    );
    for c in [
        caps::PAUSE,
        caps::CONSOLE,
        caps::REATTACH,
        caps::LIVE_RESIZE_MEMORY,
    ] {
        assert!(info.capabilities.iter().any(|x| x == c), "{c}");
    }
    // This host's /dev/kvm (kvm_pvm) cannot run ordinary guests: the boot probe must see that.
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(info.accelerator, Accelerator::Tcg, "{}", info.detail);
    }
    let accel = d.accel().await;
    // The decision is cached for the next driver on the same state directory.
    let d2 = QemuDriver::new({
        let mut c = env.config();
        c.accel = AccelMode::Auto;
        c
    });
    let t = std::time::Instant::now();
    assert_eq!(d2.accel().await, accel);
    assert!(t.elapsed() < Duration::from_secs(1));
    let bad = QemuDriver::new({
        let mut c = env.config();
        c.qemu_binary = "/nonexistent/qemu".into();
        c
    });
    let info = bad.probe().await;
    assert!(
        !info.available && info.detail.contains("/nonexistent/qemu"),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_can_drop_to_an_unprivileged_user() {
    let env = Env::new();
    let mut cfg = env.config();
    cfg.run_as_user = Some("nobody".into());
    let d = QemuDriver::new(cfg);
    let spec = env.microvm(128);
    let vm = d.launch(&spec).await.expect("launch as nobody");
    env.console(spec.id).wait_for(READY_LINE, BOOT).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid().unwrap())).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );
    vm.pause().await.expect("QMP still works");
    vm.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(vm.exit_watch().borrow().clone(), Some(VmExit::Shutdown));
    let mut bad = env.config();
    bad.run_as_user = Some("x,y".into());
    assert!(
        QemuDriver::new(bad)
            .launch(&env.microvm(128))
            .await
            .is_err()
    );
}
