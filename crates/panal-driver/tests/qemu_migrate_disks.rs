//! Real-QEMU (TCG) tests of live migration with local disks: the destination serves its disks
//! over NBD, the source mirrors its disks there and then migrates memory; the guest keeps
//! running on the destination with the same disk contents, also for writes made during the copy
//! and right up to the switch-over. A throttled copy is cancelled with the source untouched.
//! Each side is its own "host" (one `Env` each, killing its QEMUs on drop, also on failure).

mod common;

use common::{BOOT, Console, Env, destination_driver, free_addr, wait_finished, wait_state};
use panal_driver::qemu::READY_LINE;
use panal_driver::{
    BootSource, DataDisk, DiskMirrorStatus, Driver, DriverError, DynVmHandle, Incoming,
    MigrationParams, MigrationPhase, MigrationTarget, ROOT_DISK, RuntimeState,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const DISK_BYTES: u64 = 64 * MIB;
const VOL: &str = "4f0c6a8e-1b2c-4d5e-8f90-0123456789ab";

/// An empty raw disk file, as the caller would create it on each host.
fn raw_disk(env: &Env, name: &str) -> PathBuf {
    let p = env.dir.path().join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("disk file");
    p
}

fn data_disk(path: &Path) -> DataDisk {
    DataDisk {
        id: VOL.into(),
        path: path.to_path_buf(),
        format: "raw".into(),
        slot: 0,
    }
}

/// Sets `$D` in the guest's shell to the device of the data disk (found by its serial).
async fn find_data_disk(con: &mut Console) {
    let serial: String = VOL
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(20)
        .collect();
    let out = con
        .run(
            &format!(
                "D=; for b in /sys/block/vd*; do [ \"$(cat $b/serial)\" = {serial} ] && D=/dev/${{b##*/}}; done; echo dev=$D"
            ),
            Duration::from_secs(20),
        )
        .await;
    assert!(out.contains("dev=/dev/vd"), "data disk not found: {out}");
}

/// The md5 the guest reads from the first `mib` MiB of `$D`, past its page cache.
async fn guest_md5(con: &mut Console, mib: u64) -> String {
    let out = con
        .run(
            &format!(
                "sync; echo 3 > /proc/sys/vm/drop_caches; dd if=$D bs=1M count={mib} 2>/dev/null | md5sum"
            ),
            Duration::from_secs(60),
        )
        .await;
    md5_of(&out)
}

fn md5_of(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no md5 in {out:?}"))
        .to_string()
}

/// Polls the disk copies until every one is ready; prints the progress as a caller would show it.
async fn wait_mirrors_ready(vm: &DynVmHandle, timeout: Duration) -> Vec<DiskMirrorStatus> {
    let deadline = Instant::now() + timeout;
    let mut shown = Instant::now();
    loop {
        let s = vm.disk_mirror_status().await.expect("disk status");
        assert!(!s.is_empty(), "no disk copies");
        assert!(s.iter().all(|d| d.error.is_none()), "{s:?}");
        if s.iter().all(|d| d.ready) {
            return s;
        }
        if shown.elapsed() > Duration::from_secs(1) {
            for d in &s {
                eprintln!(
                    "  copying {}: {} / {} bytes",
                    d.disk, d.done_bytes, d.total_bytes
                );
            }
            shown = Instant::now();
        }
        assert!(Instant::now() < deadline, "disk copies not ready: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source side of a disk migration: mirror, wait for ready, migrate memory, wait for the end.
/// Returns the time the whole move took.
async fn move_vm(vm: &DynVmHandle, disks: &[String], nbd: SocketAddr, mig: SocketAddr) -> Duration {
    let t = Instant::now();
    vm.mirror_disks(&MigrationTarget::Tcp(nbd), disks, None)
        .await
        .expect("mirror");
    let ready = wait_mirrors_ready(vm, Duration::from_secs(120)).await;
    let copied = t.elapsed();
    vm.migrate(&MigrationTarget::Tcp(mig), &MigrationParams::default())
        .await
        .expect("migrate");
    let done = wait_finished(vm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    eprintln!(
        "disks {ready:?} in sync after {copied:?}; moved in {:?} (downtime {:?})",
        t.elapsed(),
        done.downtime
    );
    // Finished at the switch-over: nothing left running on the source.
    assert!(vm.disk_mirror_status().await.expect("status").is_empty());
    t.elapsed()
}

/// Where the guest's counter writes one 512-byte block each (40 MiB into the disk).
const COUNTER_SECTOR: u64 = 81920;

/// Writes `BLOCK-<i>` into consecutive sectors, each synced, until `/tmp/stop` exists.
const WRITER: &str = "i=0; while [ ! -e /tmp/stop ]; do echo BLOCK-$i | dd of=$D bs=512 seek=$((81920+i)) conv=fsync 2>/dev/null; i=$((i+1)); done &";

/// Every sector of the source's disk is on the destination's, except sectors the counter wrote
/// on the destination after the switch-over. Returns the counter sectors on each side.
fn compare_disks(src: &[u8], dst: &[u8]) -> (usize, usize) {
    assert_eq!(src.len(), dst.len());
    let mut counted = (0, 0);
    for (i, (s, d)) in src.chunks(512).zip(dst.chunks(512)).enumerate() {
        let counter = i as u64 >= COUNTER_SECTOR;
        if counter && s.starts_with(b"BLOCK-") {
            counted.0 += 1;
        }
        if counter && d.starts_with(b"BLOCK-") {
            counted.1 += 1;
        }
        if s != d {
            assert!(
                counter && s.iter().all(|&b| b == 0) && d.starts_with(b"BLOCK-"),
                "sector {i} differs and is not a later write on the destination: src {:?} dst {:?}",
                String::from_utf8_lossy(&s[..16]),
                String::from_utf8_lossy(&d[..16])
            );
        }
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_moves_with_its_local_data_disk_and_writes_made_during_the_copy() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let src = src_env.driver();
    let dst = destination_driver(&dst_env);
    let src_file = raw_disk(&src_env, "vol.raw");
    let dst_file = raw_disk(&dst_env, "vol.raw");
    let mut spec = src_env.microvm(256);
    spec.disks = vec![data_disk(&src_file)];
    let vm = src.launch(&spec).await.expect("launch source");
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    find_data_disk(&mut con).await;
    // A known text pattern at 8 MiB (checked on the host) and random data at 20 MiB.
    con.run(
        "yes PANALDISK | head -c 4194304 | dd of=$D bs=1M seek=8 conv=fsync 2>/dev/null; \
         dd if=/dev/urandom of=$D bs=1M seek=20 count=4 conv=fsync 2>/dev/null",
        Duration::from_secs(60),
    )
    .await;
    let md5 = guest_md5(&mut con, 40).await;

    let (nbd, mig) = (free_addr(), free_addr());
    let mut dspec = spec.clone();
    dspec.disks = vec![data_disk(&dst_file)];
    dspec.incoming = Some(Incoming::Tcp(mig));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    let disks = vec![VOL.to_string()];
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");
    // Serving a running guest's disks is refused.
    assert!(matches!(
        vm.export_disks(&Incoming::Tcp(free_addr()), &disks).await,
        Err(DriverError::Invalid(_))
    ));

    // The guest writes all through the copy and the switch-over.
    con.send(WRITER).await;
    move_vm(&vm, &disks, nbd, mig).await;
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    dvm.unexport_disks().await.expect("unexport");
    dvm.unexport_disks().await.expect("unexport twice");

    // The same guest, reading its disk from the destination's file now.
    let mut dcon = dst_env.console(spec.id);
    dcon.connect().await;
    let out = dcon
        .run(
            "touch /tmp/stop; sleep 1; echo D=$D",
            Duration::from_secs(30),
        )
        .await;
    assert!(out.contains("D=/dev/vd"), "{out}");
    assert_eq!(guest_md5(&mut dcon, 40).await, md5);

    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("stop source");
    src.cleanup(spec.id).await.expect("cleanup source");
    dvm.kill().await.expect("stop destination");
    let s = std::fs::read(&src_file).unwrap();
    let d = std::fs::read(&dst_file).unwrap();
    let pattern = &d[(8 * MIB) as usize..(12 * MIB) as usize];
    assert!(
        pattern.chunks(10).all(|c| c == &b"PANALDISK\n"[..c.len()]),
        "the pattern is not in the destination's file"
    );
    let (on_src, on_dst) = compare_disks(&s, &d);
    eprintln!("counter sectors: {on_src} written on the source, {on_dst} in all");
    assert!(on_src > 0, "the guest wrote nothing during the copy");
    assert!(on_dst > on_src, "the guest wrote nothing after the move");
    dst.cleanup(spec.id).await.expect("cleanup destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_booted_from_a_disk_image_moves_with_its_overlay_only() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let src = src_env.driver();
    let dst = destination_driver(&dst_env);
    let mut spec = src_env.microvm(256);
    spec.boot = BootSource::Disk {
        base: src_env.guest.rootfs_qcow2(),
        format: "qcow2".into(),
    };
    let vm = src.launch(&spec).await.expect("launch source");
    let mut con = src_env.console(spec.id);
    let line = con.wait_for(READY_LINE, BOOT).await;
    assert!(line.contains("root=/dev/vda"), "{line}");
    let sum = |f: &str| format!("sync; echo 3 > /proc/sys/vm/drop_caches; md5sum {f}");
    con.run(
        "dd if=/dev/urandom of=/root/blob bs=1M count=8 2>/dev/null; sync",
        Duration::from_secs(60),
    )
    .await;
    let md5 = md5_of(&con.run(&sum("/root/blob"), Duration::from_secs(30)).await);

    // A stale overlay on the destination (an earlier attempt) must not leak into the disk.
    let (nbd, mig) = (free_addr(), free_addr());
    let run = dst_env.run_dir(spec.id);
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("disk0.qcow2"), b"stale").unwrap();
    let mut dspec = spec.clone();
    dspec.boot = BootSource::Disk {
        base: dst_env.guest.rootfs_qcow2(),
        format: "qcow2".into(),
    };
    dspec.incoming = Some(Incoming::Tcp(mig));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    let disks = vec![ROOT_DISK.to_string()];
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export twice");
    // Moving memory alone would leave the guest's writes behind in the local overlay.
    let refused = vm
        .migrate(&MigrationTarget::Tcp(mig), &MigrationParams::default())
        .await;
    assert!(
        matches!(refused, Err(DriverError::Invalid(_))),
        "{refused:?}"
    );

    vm.mirror_disks(&MigrationTarget::Tcp(nbd), &disks, None)
        .await
        .expect("mirror");
    let ready = wait_mirrors_ready(&vm, Duration::from_secs(120)).await;
    // `sync: top`: the guest's own writes (the 8 MiB file and file system metadata), not the
    // 64 MiB disk.
    assert!(
        ready[0].total_bytes >= 8 * MIB && ready[0].total_bytes < 32 * MIB,
        "{ready:?}"
    );
    // A write while the copy is in sync reaches the destination too.
    con.run(
        "echo after-ready > /root/mark; sync",
        Duration::from_secs(30),
    )
    .await;
    let t = Instant::now();
    vm.migrate(&MigrationTarget::Tcp(mig), &MigrationParams::default())
        .await
        .expect("migrate");
    let done = wait_finished(&vm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    eprintln!(
        "overlay {:?} copied; memory moved in {:?} (downtime {:?})",
        ready[0],
        t.elapsed(),
        done.downtime
    );
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    dvm.unexport_disks().await.expect("unexport");
    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("stop source");

    let mut dcon = dst_env.console(spec.id);
    dcon.connect().await;
    let out = dcon.run(&sum("/root/blob"), Duration::from_secs(30)).await;
    assert_eq!(md5_of(&out), md5);
    let out = dcon
        .run(
            "cat /root/mark; echo 3 > /proc/sys/vm/drop_caches; ls /bin/busybox",
            Duration::from_secs(30),
        )
        .await;
    assert!(
        out.contains("after-ready") && out.contains("/bin/busybox"),
        "{out}"
    );
    dvm.kill().await.expect("stop destination");
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(run.join("disk0.qcow2"))
        .output()
        .expect("qemu-img");
    assert!(check.status.success(), "{check:?}");
    dst.cleanup(spec.id).await.expect("cleanup destination");
    src.cleanup(spec.id).await.expect("cleanup source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_disk_copy_is_cancelled_and_the_source_keeps_running_on_its_disk() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let src = src_env.driver();
    let dst = destination_driver(&dst_env);
    let src_file = raw_disk(&src_env, "vol.raw");
    let dst_file = raw_disk(&dst_env, "vol.raw");
    let mut spec = src_env.microvm(256);
    spec.disks = vec![data_disk(&src_file)];
    let (qvm, _) = src.launch_qemu(&spec).await.expect("launch source");
    let vm: DynVmHandle = qvm.clone();
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    find_data_disk(&mut con).await;
    con.run(
        "dd if=/dev/urandom of=$D bs=1M count=48 conv=fsync 2>/dev/null",
        Duration::from_secs(60),
    )
    .await;
    let md5 = guest_md5(&mut con, 64).await;

    let (nbd, mig) = (free_addr(), free_addr());
    let mut dspec = spec.clone();
    dspec.disks = vec![data_disk(&dst_file)];
    dspec.incoming = Some(Incoming::Tcp(mig));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    let disks = vec![VOL.to_string()];
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");

    // 512 KiB/s: QEMU copies a first burst of 16 MiB (its mirror buffer), then waits 32 s
    // before the next; the 48 MiB of data (zeros cost nothing) are far from done at the cancel.
    vm.mirror_disks(&MigrationTarget::Tcp(nbd), &disks, Some(512 << 10))
        .await
        .expect("mirror");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = vm.disk_mirror_status().await.expect("status");
        assert!(!s[0].ready, "ready before the cancel: {s:?}");
        if s[0].done_bytes > 0 {
            eprintln!("copying: {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Memory must not move before the disk is in sync.
    let refused = vm
        .migrate(&MigrationTarget::Tcp(mig), &MigrationParams::default())
        .await;
    assert!(
        matches!(refused, Err(DriverError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(
        vm.migration_status().await.unwrap().phase,
        MigrationPhase::None
    );

    vm.cancel_disk_mirror().await.expect("cancel");
    vm.cancel_disk_mirror().await.expect("cancel twice");
    assert!(vm.disk_mirror_status().await.unwrap().is_empty());
    let jobs = qvm.qmp("query-block-jobs", None).await.unwrap();
    assert_eq!(jobs, serde_json::json!([]));
    let nodes = qvm
        .qmp(
            "query-named-block-nodes",
            Some(serde_json::json!({ "flat": true })),
        )
        .await
        .unwrap();
    assert!(
        !nodes.as_array().unwrap().iter().any(|n| n["drv"] == "nbd"),
        "an NBD node is left: {nodes}"
    );
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    let out = con
        .run("echo still-$((6*7))", Duration::from_secs(20))
        .await;
    assert!(out.contains("still-42"), "{out}");
    assert_eq!(guest_md5(&mut con, 64).await, md5);

    dvm.kill().await.expect("kill destination");
    dst.cleanup(spec.id).await.expect("cleanup destination");
    assert!(dst.list_running().await.unwrap().is_empty());
    assert!(!dst_env.run_dir(spec.id).exists());

    // Nothing carried over: an unthrottled retry to a fresh destination moves the guest.
    let (nbd, mig) = (free_addr(), free_addr());
    std::fs::File::create(&dst_file)
        .and_then(|f| f.set_len(DISK_BYTES))
        .unwrap();
    dspec.incoming = Some(Incoming::Tcp(mig));
    let dvm = dst.launch(&dspec).await.expect("relaunch destination");
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");
    move_vm(&vm, &disks, nbd, mig).await;
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    dvm.unexport_disks().await.expect("unexport");
    let mut dcon = dst_env.console(spec.id);
    dcon.connect().await;
    assert_eq!(guest_md5(&mut dcon, 64).await, md5);
    vm.kill().await.unwrap();
    dvm.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_copy_that_breaks_before_the_switch_over_keeps_the_guest_here() {
    let src_env = Env::new();
    let dst_env = Env::new();
    let src = src_env.driver();
    let dst = destination_driver(&dst_env);
    let src_file = raw_disk(&src_env, "vol.raw");
    let dst_file = raw_disk(&dst_env, "vol.raw");
    let mut spec = src_env.microvm(256);
    spec.disks = vec![data_disk(&src_file)];
    let vm = src.launch(&spec).await.expect("launch source");
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    find_data_disk(&mut con).await;

    let (nbd, mig) = (free_addr(), free_addr());
    let mut dspec = spec.clone();
    dspec.disks = vec![data_disk(&dst_file)];
    dspec.incoming = Some(Incoming::Tcp(mig));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    let disks = vec![VOL.to_string()];
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");
    vm.mirror_disks(&MigrationTarget::Tcp(nbd), &disks, None)
        .await
        .expect("mirror");
    wait_mirrors_ready(&vm, Duration::from_secs(120)).await;
    con.send(WRITER).await;

    // Memory moves slowly (4 MiB/s) while the destination drops the disk copy's connection and
    // the guest keeps writing: the copy fails long before memory converges.
    let params = MigrationParams {
        max_bandwidth: Some(4 << 20),
        ..MigrationParams::default()
    };
    vm.migrate(&MigrationTarget::Tcp(mig), &params)
        .await
        .expect("migrate");
    dvm.unexport_disks().await.expect("unexport");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = vm.disk_mirror_status().await.expect("status");
        if s[0].error.is_some() {
            eprintln!("the copy broke: {s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the copy did not notice: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The guest must not move without its disk: QEMU fails the migration when it cannot flush
    // the broken copy as it stops the vCPUs (the driver's switch-over step would cancel it
    // otherwise); either way the reason names the disk.
    let done = wait_finished(&vm, Duration::from_secs(180)).await;
    match &done.phase {
        MigrationPhase::Failed(why) => {
            assert!(
                why.contains("disk copy failed") && why.contains(VOL),
                "{why}"
            );
            eprintln!("{why}");
        }
        other => panic!("the migration was not refused: {other:?}"),
    }
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    let out = con
        .run(
            "touch /tmp/stop; echo here-$((6*7))",
            Duration::from_secs(30),
        )
        .await;
    assert!(out.contains("here-42"), "{out}");
    vm.cancel_disk_mirror()
        .await
        .expect("clear the failed copy");
    assert!(vm.disk_mirror_status().await.unwrap().is_empty());
    dvm.kill().await.expect("kill destination");
    vm.kill().await.unwrap();
}
