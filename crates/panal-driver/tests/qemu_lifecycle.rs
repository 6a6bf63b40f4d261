//! Real-QEMU (TCG) lifecycle tests of the `qemu` driver on the Panal test guest: boot and
//! readiness, shutdown and relaunch, pause/resume, reboot, crash detection, re-attach after an
//! agent restart, several VMs at once, memory resize seen from inside, and bad inputs.
//! They need `scripts/build-guest-image.sh` to have run and fail (not skip) otherwise.

mod common;

use common::{BOOT, Env};
use panal_driver::qemu::{QemuDriver, READY_LINE};
use panal_driver::{BootSource, Driver, DriverError, ResizeRequest, RuntimeState, VmExit};
use std::time::Duration;

async fn exit_of(vm: &panal_driver::DynVmHandle, timeout: Duration) -> VmExit {
    let mut rx = vm.exit_watch();
    let got = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
    got.expect("exit watch timed out")
        .expect("watch closed")
        .clone()
        .expect("exit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_shuts_down_and_launches_again() {
    let env = Env::new();
    let d = env.driver();
    let spec = env.microvm(128);
    let vm = d.launch(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    let line = con.wait_for(READY_LINE, BOOT).await;
    assert!(line.contains("root=initramfs"), "{line}");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    assert_eq!(d.list_running().await.unwrap(), vec![spec.id]);

    // Graceful: the guest sees the ACPI power button and powers off by itself.
    let t = std::time::Instant::now();
    vm.shutdown(Duration::from_secs(30))
        .await
        .expect("shutdown");
    assert_eq!(exit_of(&vm, Duration::from_secs(1)).await, VmExit::Shutdown);
    assert!(
        t.elapsed() < Duration::from_secs(25),
        "ACPI power-off did not work, was forced"
    );
    assert!(matches!(
        vm.state().await.unwrap(),
        RuntimeState::Exited(VmExit::Shutdown)
    ));
    assert!(d.list_running().await.unwrap().is_empty());

    let vm = d.launch(&spec).await.expect("relaunch");
    con.wait_for(READY_LINE, BOOT).await;
    vm.kill().await.expect("kill");
    assert_eq!(exit_of(&vm, Duration::from_secs(1)).await, VmExit::Shutdown);
    d.cleanup(spec.id).await.expect("cleanup");
    assert!(!env.run_dir(spec.id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_the_guest_and_resume_continues_it() {
    let env = Env::new();
    let d = env.driver();
    let spec = env.microvm(128);
    let vm = d.launch(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    con.send("i=0; while true; do echo TICK-$i; i=$((i+1)); sleep 0.2; done &")
        .await;
    con.wait_for("TICK-3", Duration::from_secs(20)).await;

    vm.pause().await.expect("pause");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Paused);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = con.since_offset().matches("TICK-").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = con.since_offset().matches("TICK-").count();
    assert_eq!(before, after, "the guest kept counting while paused");

    vm.resume().await.expect("resume");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    let mut later = String::new();
    for _ in 0..4 {
        later = con.wait_for("TICK-", Duration::from_secs(20)).await;
    }
    assert!(later.contains("TICK-"), "{later}");
    vm.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_runs_init_again() {
    let env = Env::new();
    let d = env.driver();
    let spec = env.microvm(128);
    let vm = d.launch(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    let pid = vm.pid();
    vm.reboot().await.expect("reboot");
    con.wait_for(READY_LINE, BOOT).await;
    assert_eq!(vm.pid(), pid, "a reboot keeps the process");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    vm.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_qemu_is_reported_as_a_crash() {
    let env = Env::new();
    let d = env.driver();
    let spec = env.microvm(128);
    let vm = d.launch(&spec).await.expect("launch");
    env.console(spec.id).wait_for(READY_LINE, BOOT).await;
    let pid = vm.pid().expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = exit_of(&vm, Duration::from_secs(10)).await;
    assert!(matches!(exit, VmExit::Crashed(_)), "{exit:?}");
    assert!(exit.is_failure());
    assert!(matches!(vm.pause().await, Err(DriverError::NotRunning(_))));
    assert!(d.list_running().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_reattaches_to_a_running_vm() {
    let env = Env::new();
    let spec = env.microvm(128);
    let pid;
    {
        let d = env.driver();
        let vm = d.launch(&spec).await.expect("launch");
        env.console(spec.id).wait_for(READY_LINE, BOOT).await;
        pid = vm.pid();
        // The agent "restarts": its driver and handle go away, QEMU stays.
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d2 = QemuDriver::new(env.config());
    assert_eq!(d2.list_running().await.unwrap(), vec![spec.id]);
    let vm = d2
        .attach(spec.id)
        .await
        .expect("attach")
        .expect("still running");
    assert_eq!(vm.pid(), pid);
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    vm.pause().await.unwrap();
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Paused);
    vm.resume().await.unwrap();
    let mut con = env.console(spec.id);
    let out = con
        .run("echo alive-$((6*7))", Duration::from_secs(20))
        .await;
    assert!(out.contains("alive-42"), "{out}");
    vm.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(exit_of(&vm, Duration::from_secs(1)).await, VmExit::Shutdown);
    assert!(d2.attach(spec.id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_vms_at_once() {
    let env = Env::new();
    let d = env.driver();
    let specs: Vec<_> = (0..5).map(|_| env.microvm(96)).collect();
    let mut vms = Vec::new();
    for s in &specs {
        vms.push(d.launch(s).await.expect("launch"));
    }
    for s in &specs {
        env.console(s.id)
            .wait_for(READY_LINE, Duration::from_secs(120))
            .await;
    }
    let mut running = d.list_running().await.unwrap();
    running.sort_by_key(|i| i.to_string());
    let mut want: Vec<_> = specs.iter().map(|s| s.id).collect();
    want.sort_by_key(|i| i.to_string());
    assert_eq!(running, want);
    for vm in &vms {
        vm.kill().await.unwrap();
    }
}

fn meminfo_total_kib(text: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_resize_through_the_balloon_is_seen_by_the_guest() {
    let env = Env::new();
    let d = env.driver();
    let spec = env.microvm(256);
    let vm = d.launch(&spec).await.expect("launch");
    let mut con = env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    let before = meminfo_total_kib(
        &con.run("grep MemTotal /proc/meminfo", Duration::from_secs(30))
            .await,
    );

    let out = vm
        .resize(&ResizeRequest {
            memory_bytes: Some(160 << 20),
            vcpus: None,
        })
        .await
        .expect("resize");
    assert!(out.applied_live, "{out:?}");
    let after = meminfo_total_kib(
        &con.run("grep MemTotal /proc/meminfo", Duration::from_secs(30))
            .await,
    );
    assert!(
        before - after > 80 * 1024,
        "MemTotal {before} -> {after} KiB"
    );

    // Growing above the boot size is not live on this machine: reported, not faked.
    let out = vm
        .resize(&ResizeRequest {
            memory_bytes: Some(512 << 20),
            vcpus: None,
        })
        .await
        .unwrap();
    assert!(
        !out.applied_live && !out.pending_reboot.is_empty(),
        "{out:?}"
    );
    // microvm cannot hot-plug vCPUs.
    let out = vm
        .resize(&ResizeRequest {
            memory_bytes: None,
            vcpus: Some(2),
        })
        .await
        .unwrap();
    assert!(!out.applied_live, "{out:?}");
    assert!(matches!(
        vm.resize(&ResizeRequest {
            vcpus: Some(0),
            memory_bytes: None
        })
        .await,
        Err(DriverError::Invalid(_))
    ));
    assert!(matches!(
        vm.resize(&ResizeRequest {
            vcpus: None,
            memory_bytes: Some(0)
        })
        .await,
        Err(DriverError::Invalid(_))
    ));
    vm.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_refused_with_reasons() {
    let env = Env::new();
    let d = env.driver();
    let mut spec = env.microvm(128);
    spec.boot = BootSource::Kernel {
        kernel: "/nonexistent/vmlinux".into(),
        initrd: None,
        cmdline: String::new(),
    };
    match d.launch(&spec).await {
        Err(DriverError::Launch(why)) => assert!(why.contains("/nonexistent/vmlinux"), "{why}"),
        other => panic!("expected a launch error, got {:?}", other.map(|v| v.pid())),
    }
    assert!(d.list_running().await.unwrap().is_empty());
    let mut zero = env.microvm(128);
    zero.vcpus = 0;
    assert!(matches!(
        d.launch(&zero).await,
        Err(DriverError::Invalid(_))
    ));
    let mut evil = env.microvm(128);
    evil.boot = BootSource::Kernel {
        kernel: env.guest.kernel(evil.machine),
        initrd: None,
        cmdline: "a\n-b".into(),
    };
    assert!(matches!(
        d.launch(&evil).await,
        Err(DriverError::Invalid(_))
    ));
    let mut disk = env.microvm(128);
    disk.boot = BootSource::Disk {
        base: "/nonexistent.qcow2".into(),
        format: "qcow2".into(),
    };
    assert!(matches!(d.launch(&disk).await, Err(DriverError::Launch(_))));
    disk.boot = BootSource::Disk {
        base: env.guest.rootfs_qcow2(),
        format: "vmdk".into(),
    };
    assert!(matches!(
        d.launch(&disk).await,
        Err(DriverError::Invalid(_))
    ));
    assert!(d.attach(spec.id).await.unwrap().is_none());
}
