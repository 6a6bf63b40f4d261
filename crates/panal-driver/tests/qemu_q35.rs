//! Real-QEMU (TCG) tests of the q35 profile: a disk image booted through a per-VM qcow2
//! overlay (writes persist across stop/start, the base is untouched), vCPU hot-plug, disk
//! hot-plug on the port of the disk's slot, guest panic reporting through pvpanic, the per-VM
//! cgroup, and the host probe.

mod common;

use common::{BOOT, Env};
use panal_driver::qemu::{AccelMode, QemuDriver, READY_LINE};
use panal_driver::{BootSource, DataDisk, Driver, ResizeRequest, VmExit, VmHandle, VmLaunch, caps};
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
        nics: vec![],
        hotplug_slots: 4,
        incoming: None,
        post_copy: false,
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

    // A disk goes on its slot's port, which has to be there and empty: plugging into an
    // occupied port would make the guest drop the disk already there.
    let disk = |n: u8, slot: u32| {
        let path = env.dir.path().join(format!("data{n}.raw"));
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(1 << 20))
            .expect("disk file");
        DataDisk {
            id: format!("{n}b5e7c1e-2f4a-4c1b-9d6e-000000000001"),
            path,
            format: "raw".into(),
            slot,
        }
    };
    vm.attach_disk(&disk(1, 3)).await.expect("attach on slot 3");
    let taken = vm.attach_disk(&disk(2, 3)).await.unwrap_err();
    assert!(
        taken.to_string().contains("slot 3 already holds"),
        "{taken}"
    );
    let missing = vm.attach_disk(&disk(2, 4)).await.unwrap_err();
    assert!(missing.to_string().contains("no slot 4"), "{missing}");
    // Neither refusal left the second disk's block node behind: it plugs in a free slot.
    vm.attach_disk(&disk(2, 0)).await.expect("attach on slot 0");

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

/// Data safety: the disk is opened with O_DIRECT (`cache=none`) where the filesystem allows,
/// flushes are honoured; after `kill -9` of QEMU the overlay is checked (`qemu-img check`)
/// before the next start, which then boots with the data written before the crash; after a clean
/// shutdown no check is needed; a corrupt overlay after an unclean end refuses the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_gets_the_disk_checked_before_restart() {
    let env = Env::new();
    let d = env.driver();
    let spec = q35_disk(&env);
    let run = env.run_dir(spec.id);
    let (vm, _) = d.launch_qemu(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    let blocks = vm.qmp("query-block", None).await.expect("query-block");
    let cache = &blocks[0]["inserted"]["cache"];
    assert_eq!(cache["no-flush"], false, "flushes ignored: {blocks}");
    assert_eq!(cache["writeback"], true, "{blocks}");
    assert_eq!(
        cache["direct"], true,
        "the test directory is on ext4: O_DIRECT expected ({blocks})"
    );
    let out = con
        .run(
            "echo survived > /root/crash; sync; cat /root/crash",
            Duration::from_secs(30),
        )
        .await;
    assert!(out.contains("survived"), "{out}");
    assert!(run.join("disk.in-use").exists(), "no in-use marker");

    // A crash from outside: SIGKILL, not a stop we asked for.
    let pid = nix::unistd::Pid::from_raw(vm.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut rx = vm.exit_watch();
    let exit = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(Option::is_some))
        .await
        .expect("exit seen")
        .expect("watch")
        .clone();
    assert!(matches!(exit, Some(VmExit::Crashed(_))), "{exit:?}");
    assert!(
        run.join("disk.in-use").exists(),
        "the marker must survive a crash"
    );
    assert!(!run.join("disk-check.log").exists());
    drop(vm);

    // The next start checks the overlay first, then boots with the data.
    let (vm, _) = d
        .launch_qemu(&spec)
        .await
        .expect("relaunch after the crash");
    let log = std::fs::read_to_string(run.join("disk-check.log")).expect("a disk check ran");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("unclean end: qemu-img check") && !log.contains("refused"),
        "{log}"
    );
    con.reset();
    con.wait_for(READY_LINE, BOOT).await;
    let out = con.run("cat /root/crash", Duration::from_secs(30)).await;
    assert!(out.contains("survived"), "{out}");

    // A clean shutdown clears the marker: no check at the next start.
    vm.shutdown(Duration::from_secs(60))
        .await
        .expect("shutdown");
    assert_eq!(vm.exit_watch().borrow().clone(), Some(VmExit::Shutdown));
    assert!(
        !run.join("disk.in-use").exists(),
        "marker left after a clean end"
    );
    drop(vm);

    // An unclean end with a corrupt overlay: the start is refused, QEMU never runs.
    std::fs::write(run.join("disk.in-use"), b"").unwrap();
    let overlay = run.join("disk0.qcow2");
    let mut bytes = std::fs::read(&overlay).unwrap();
    bytes[48..56].copy_from_slice(&0x0123_4567_89ab_0000u64.to_be_bytes());
    std::fs::write(&overlay, &bytes).unwrap();
    let err = match d.launch(&spec).await {
        Ok(_) => panic!("a corrupt disk was started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("refusing to start"), "{err}");
    let log = std::fs::read_to_string(run.join("disk-check.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}\n{err}");
    assert!(!run.join("qemu.pid").exists(), "QEMU started anyway");
    d.cleanup(spec.id).await.unwrap();
}
