//! Real-QEMU (TCG) live migration tests of the `qemu` driver: a guest moves between two QEMU
//! processes over loopback TCP and keeps running on the destination, it moves between Unix
//! sockets that the caller relays, a throttled migration is cancelled with the guest still
//! running on the source, and a guest that does not converge sees its downtime limit start low
//! and climb to the caller's, no further. Each side is its own "host": its
//! own driver and state directory (one `Env` each), so both can hold the same VM id, and each
//! `Env` kills its QEMUs on drop, also when an assertion fails.

mod common;

use common::{BOOT, Env, destination_driver, free_addr, wait_finished, wait_state};
use panal_driver::qemu::{QemuVm, READY_LINE};
use panal_driver::{
    Driver, DriverError, Incoming, MigrationParams, MigrationPhase, MigrationTarget, RuntimeState,
    VmExit,
};
use std::time::{Duration, Instant};

/// The highest `TICK-n` in a console text.
fn last_tick(text: &str) -> Option<u64> {
    text.split("TICK-")
        .skip(1)
        .filter_map(|t| {
            let n: String = t.chars().take_while(char::is_ascii_digit).collect();
            n.parse().ok()
        })
        .max()
}

const COUNTER: &str = "i=0; while true; do echo TICK-$i; i=$((i+1)); sleep 0.2; done &";

/// A 256 MiB microvm guest launched by `driver` of `env`, booted and counting.
async fn counting_guest(
    env: &Env,
    driver: &panal_driver::qemu::QemuDriver,
) -> (
    panal_driver::VmLaunch,
    panal_driver::DynVmHandle,
    common::Console,
) {
    let spec = env.microvm(256);
    let vm = driver.launch(&spec).await.expect("launch source");
    let mut con = env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    con.send(COUNTER).await;
    con.wait_for("TICK-3", Duration::from_secs(20)).await;
    (spec, vm, con)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_migrates_and_keeps_running_on_the_destination() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let (src, dst) = (src_env.driver(), destination_driver(&dst_env));
    let (spec, vm, _con) = counting_guest(&src_env, &src).await;

    let addr = free_addr();
    let mut dspec = spec.clone();
    dspec.incoming = Some(Incoming::Tcp(addr));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    assert_eq!(dvm.state().await.unwrap(), RuntimeState::Incoming);

    let params = MigrationParams {
        downtime_limit: Duration::from_millis(300),
        ..MigrationParams::default()
    };
    let t = Instant::now();
    vm.migrate(&MigrationTarget::Tcp(addr), &params)
        .await
        .expect("migrate");
    let done = wait_finished(&vm, Duration::from_secs(120)).await;
    let took = t.elapsed();
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    let downtime = done.downtime.expect("measured downtime reported");
    assert!(downtime < Duration::from_secs(1), "downtime {downtime:?}");
    assert!(done.total_bytes.unwrap_or(0) >= 200 << 20, "{done:?}");
    eprintln!(
        "migrated in {took:?} (QEMU: {:?}), downtime {downtime:?}",
        done.total_time
    );

    // The destination runs the guest by itself; the source holds it paused and will not resume.
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Paused);
    assert!(matches!(vm.resume().await, Err(DriverError::Invalid(_))));
    let before = last_tick(&std::fs::read_to_string(vm.console_log().unwrap()).unwrap())
        .expect("ticks on the source");

    // The same guest, still counting from where it was (not booted afresh), and answering.
    let mut dcon = dst_env.console(spec.id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = last_tick(&dcon.since_offset()).unwrap_or(0);
        if after > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the destination's guest did not continue counting past {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dcon.since_offset().contains(READY_LINE),
        "the guest rebooted"
    );
    dcon.connect().await;
    dcon.send("echo moved-$((6*7))").await;
    dcon.wait_for("moved-42", Duration::from_secs(20)).await;

    // Stopping the source quits it without running the guest there again.
    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("stop source");
    assert_eq!(
        vm.exit_watch().borrow().clone(),
        Some(VmExit::Shutdown),
        "source"
    );
    src.cleanup(spec.id).await.expect("cleanup source");
    assert_eq!(dvm.state().await.unwrap(), RuntimeState::Running);
    dvm.kill().await.expect("kill destination");
    dst.cleanup(spec.id).await.expect("cleanup destination");
}

/// The agents' tunnel, reduced to what the driver sees: the destination listens on a Unix
/// socket, the source sends to another, and the caller carries each connection between them
/// (here a plain copy; in Panal, TLS between the hosts' agents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_migrates_between_unix_sockets_the_caller_relays() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let (src, dst) = (src_env.driver(), destination_driver(&dst_env));
    let (spec, vm, _con) = counting_guest(&src_env, &src).await;

    let sockets = tempfile::tempdir().expect("tempdir");
    let (incoming, outgoing) = (sockets.path().join("in"), sockets.path().join("out"));
    let mut dspec = spec.clone();
    dspec.incoming = Some(Incoming::Unix(incoming.clone()));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    assert!(
        incoming.exists(),
        "the destination does not listen on its socket"
    );
    let relay = tokio::net::UnixListener::bind(&outgoing).expect("bind");
    let carried = tokio::spawn(async move {
        let (mut from, _) = relay.accept().await.expect("the source connects");
        let mut to = tokio::net::UnixStream::connect(&incoming)
            .await
            .expect("connect to the destination");
        tokio::io::copy_bidirectional(&mut from, &mut to)
            .await
            .map(|(sent, _)| sent)
    });

    vm.migrate(
        &MigrationTarget::Unix(outgoing),
        &MigrationParams::default(),
    )
    .await
    .expect("migrate");
    let done = wait_finished(&vm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    // With the return path, "completed" means the destination has the guest.
    assert_eq!(dvm.state().await.unwrap(), RuntimeState::Running);
    let sent = tokio::time::timeout(Duration::from_secs(10), carried)
        .await
        .expect("the relay ends with the migration")
        .expect("relay task")
        .unwrap_or(0);
    assert!(
        sent >= done.transferred_bytes.unwrap_or(u64::MAX),
        "the relay carried {sent} bytes, QEMU sent {done:?}"
    );
    let mut dcon = dst_env.console(spec.id);
    dcon.connect().await;
    dcon.send("echo relayed-$((6*7))").await;
    dcon.wait_for("relayed-42", Duration::from_secs(20)).await;
    vm.kill().await.expect("kill source");
    src.cleanup(spec.id).await.expect("cleanup source");
    dvm.kill().await.expect("kill destination");
    dst.cleanup(spec.id).await.expect("cleanup destination");
}

/// Launches `spec`'s incoming destination with `dst` and starts migrating `vm` there at
/// `bandwidth` bytes/s (caller's limit 300 ms, no auto-converge). Returns the destination.
async fn migrate_throttled(
    vm: &panal_driver::DynVmHandle,
    dst: &panal_driver::qemu::QemuDriver,
    spec: &panal_driver::VmLaunch,
    bandwidth: u64,
) -> (panal_driver::VmLaunch, panal_driver::DynVmHandle) {
    let addr = free_addr();
    let mut dspec = spec.clone();
    dspec.incoming = Some(Incoming::Tcp(addr));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    let params = MigrationParams {
        downtime_limit: Duration::from_millis(300),
        max_bandwidth: Some(bandwidth),
        auto_converge: false,
        post_copy: false,
    };
    vm.migrate(&MigrationTarget::Tcp(addr), &params)
        .await
        .expect("migrate");
    (dspec, dvm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_migration_is_cancelled_and_the_source_keeps_running() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let (src, dst) = (src_env.driver(), destination_driver(&dst_env));
    let (spec, vm, mut con) = counting_guest(&src_env, &src).await;
    // 1 MiB/s: the guest's non-zero memory alone takes far longer than this test waits.
    let (mut dspec, dvm) = migrate_throttled(&vm, &dst, &spec, 1 << 20).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = vm.migration_status().await.expect("status");
        assert!(!s.phase.is_finished(), "finished before the cancel: {s:?}");
        if s.phase == MigrationPhase::Active && s.transferred_bytes.unwrap_or(0) > 0 {
            assert!(s.remaining_bytes.unwrap_or(0) > 0, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never became active: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    vm.cancel_migration().await.expect("cancel");
    let s = vm.migration_status().await.expect("status");
    assert_eq!(s.phase, MigrationPhase::Cancelled, "{s:?}");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    let before = last_tick(&con.since_offset()).unwrap_or(0);
    con.wait_for(&format!("TICK-{}", before + 5), Duration::from_secs(20))
        .await;
    let out = con
        .run("echo still-$((6*7))", Duration::from_secs(20))
        .await;
    assert!(out.contains("still-42"), "{out}");

    // The destination (QEMU ends a failed incoming migration by itself) is stopped and gone.
    dvm.kill().await.expect("kill destination");
    assert!(dvm.exit_watch().borrow().is_some());
    dst.cleanup(spec.id).await.expect("cleanup destination");
    assert!(dst.list_running().await.unwrap().is_empty());
    assert!(!dst_env.run_dir(spec.id).exists());

    // Nothing carried over: an unthrottled retry to a fresh destination completes.
    let addr = free_addr();
    dspec.incoming = Some(Incoming::Tcp(addr));
    let dvm = dst.launch(&dspec).await.expect("relaunch destination");
    vm.migrate(&MigrationTarget::Tcp(addr), &MigrationParams::default())
        .await
        .expect("migrate again");
    let done = wait_finished(&vm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    vm.kill().await.unwrap();
    dvm.kill().await.unwrap();
}

/// QEMU's current `downtime-limit`, in ms.
async fn downtime_limit(vm: &QemuVm) -> u64 {
    let p = vm.qmp("query-migrate-parameters", None).await.unwrap();
    p["downtime-limit"].as_u64().expect("downtime-limit")
}

/// A guest rewriting 16 MiB of random data in a loop, over a link too slow to send that in
/// 30 ms: the driver starts at 30 ms and doubles the limit every two passes over memory, up to
/// the caller's 300 ms and never beyond, whether or not the migration then converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_does_not_converge_raises_its_downtime_limit_to_the_callers() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let (src, dst) = (src_env.driver(), destination_driver(&dst_env));
    let spec = src_env.microvm(256);
    let (qvm, _) = src.launch_qemu(&spec).await.expect("launch source");
    let vm: panal_driver::DynVmHandle = qvm.clone();
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    con.send(
        "dd if=/dev/urandom of=/root/seed bs=1M count=16 2>/dev/null; \
         while true; do cp /root/seed /root/f; done &",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 32 MiB/s: 30 ms hold 1 MiB, 300 ms under 10 MiB, the guest rewrites 16 MiB all the time.
    let (_, dvm) = migrate_throttled(&vm, &dst, &spec, 32 << 20).await;
    let mut seen = vec![downtime_limit(&qvm).await];
    assert_eq!(seen, [30], "a migration starts at 30 ms");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = vm.migration_status().await.expect("status");
        let limit = downtime_limit(&qvm).await;
        if seen.last() != Some(&limit) {
            seen.push(limit);
        }
        if limit == 300 || s.phase.is_finished() {
            break;
        }
        assert!(Instant::now() < deadline, "limits {seen:?}, {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen,
        [30, 60, 120, 240, 300],
        "each step doubles, up to the caller's"
    );
    // And no further, however long it goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(downtime_limit(&qvm).await, 300);

    let s = vm.migration_status().await.expect("status");
    if !s.phase.is_finished() {
        vm.cancel_migration().await.expect("cancel");
    }
    let _ = dvm.kill().await;
    vm.kill().await.unwrap();
}
