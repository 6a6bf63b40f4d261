//! Scale and memory benchmark through the platform: 20 tiny microvm VMs created one after
//! another through the API on the real `panal up` binary (release build, a child process). Each
//! create waits for the VM's phase `running` (API call -> QEMU set up and the agent's report),
//! then for its readiness line, before the next starts, so every VM meets the same number of
//! already-running, idle guests. Prints the per-VM series, the total, and a first-5 vs last-5
//! comparison; "does not grow" means median(last 5) <= 1.5 x median(first 5) + 25 ms. It is
//! judged on the platform's own per-VM work (API call -> QEMU exec) and, separately, on the time
//! to `running`, which also holds QEMU's set-up and so competes for the cores with every guest
//! already running (under TCG idle guests are not free).
//!
//! `panal up` runs with `--host-label panal.io/cpu-overcommit=16`: 20 one-vCPU VMs exceed the
//! default overcommit on a 2-core host.
//!
//! Memory: `panal up`'s resident memory (VmRSS) after a warm-up VM, and again with the 20 VMs
//! running; the growth per VM has the goal <= 1 MiB. QEMU's resident memory per tiny VM (median
//! over the 20) is reported. Run: `cargo bench -p panal --bench vm_scale`.

#[path = "../tests/common_e2e/mod.rs"]
mod common_e2e;

use common_e2e::up::Up;
use common_e2e::{READY_LINE, Scratch, console_log, op_ok, qemu_pid, rss_kib, tiny, watch_launch};
use panal_client::Client;
use panal_types::vm::VmPhase;
use std::time::{Duration, Instant};

const VMS: usize = 20;
const MEMORY_MIB: u64 = 128;
const POLL: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_secs(90);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// Fails the run. A panic (not `process::exit`) unwinds `main`, so the scratch directory's
/// guard still kills `panal up` and every QEMU it started.
fn fail(why: impl std::fmt::Display) -> ! {
    panic!("{why}")
}

/// Creates a VM and returns (API call -> QEMU exec, API call -> running, API call -> readiness
/// line). The first is the platform's own per-VM work (API, scheduler, agent, driver up to the
/// moment QEMU is exec'd), measured as in `vm_boot` by watching for the run directory's
/// `vm.json`; the other two include QEMU and the guest, which compete for the cores with every
/// guest already running.
async fn create(
    c: &Client,
    vms_dir: &std::path::Path,
    name: &str,
) -> (Duration, Duration, Duration) {
    let watch = watch_launch(vms_dir.to_path_buf());
    let t0 = Instant::now();
    c.create_vm(&tiny(name, MEMORY_MIB))
        .await
        .unwrap_or_else(|e| fail(e));
    loop {
        match c.vm(None, name).await {
            Ok(v) if v.status.phase == VmPhase::Running => break,
            Ok(v) if v.status.phase == VmPhase::Failed => fail(format!("{name}: {:?}", v.status)),
            Ok(v) if t0.elapsed() > TIMEOUT => fail(format!("{name}: not running: {:?}", v.status)),
            _ if t0.elapsed() > TIMEOUT => fail(format!("{name}: not running")),
            _ => tokio::time::sleep(POLL).await,
        }
    }
    let running = t0.elapsed();
    while !console_log(c, name).await.contains(READY_LINE) {
        if t0.elapsed() > TIMEOUT {
            fail(format!("{name}: no readiness line"));
        }
        tokio::time::sleep(POLL).await;
    }
    let ready = t0.elapsed();
    let exec = match watch.join().ok().flatten() {
        Some((meta, _pid)) => meta.saturating_duration_since(t0),
        None => fail(format!("{name}: never saw its run directory")),
    };
    (exec, running, ready)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Scratch::new();
    // The default CPU overcommit (4 vCPUs per core) fits 8 one-vCPU VMs on this 2-core host.
    let up = Up::start_with(
        env!("CARGO_BIN_EXE_panal"),
        &s.data,
        &["--host-label", "panal.io/cpu-overcommit=16"],
    );
    up.wait_host().await;
    let c = up.client.clone();
    // Warm-up: the first launch probes the host; its memory is not per-VM growth.
    let vms_dir = s.data.join("qemu").join("vms");
    create(&c, &vms_dir, "warm-up").await;
    op_ok(&c, &c.delete_vm(None, "warm-up").await.unwrap(), TIMEOUT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = rss_kib(up.pid());

    let t_all = Instant::now();
    let mut execs = Vec::new();
    let mut running = Vec::new();
    let mut ready = Vec::new();
    let mut ids = Vec::new();
    for i in 0..VMS {
        let name = format!("vm-{i:02}");
        let (x, r, b) = create(&c, &vms_dir, &name).await;
        println!(
            "{name} ({i:>2} already running): QEMU exec {:>5.1} ms   running {:>6.0} ms   ready {:>6.0} ms",
            ms(x),
            ms(r),
            ms(b)
        );
        execs.push(x);
        running.push(r);
        ready.push(b);
        ids.push(c.vm(None, &name).await.unwrap().id);
    }
    let total = t_all.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss20 = rss_kib(up.pid());
    let mut qemu: Vec<u64> = ids
        .iter()
        .filter_map(|id| qemu_pid(&s.data, *id))
        .map(rss_kib)
        .collect();
    qemu.sort();
    if qemu.len() != VMS {
        fail(format!("only {} of {VMS} QEMU processes run", qemu.len()));
    }

    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let (f5, l5) = (median(&running[..5]), median(&running[VMS - 5..]));
    let (rf5, rl5) = (median(&ready[..5]), median(&ready[VMS - 5..]));
    let (xf5, xl5) = (median(&execs[..5]), median(&execs[VMS - 5..]));
    let flat_platform = xl5.as_secs_f64() <= 1.5 * xf5.as_secs_f64() + 0.025;
    let flat = l5.as_secs_f64() <= 1.5 * f5.as_secs_f64() + 0.025;
    println!("{VMS} tiny microvm VMs ({MEMORY_MIB} MiB, TCG) created one after another:");
    println!(
        "  total {:.1} s, per VM {:.0} ms (to ready)",
        total.as_secs_f64(),
        ms(total) / VMS as f64
    );
    println!(
        "  platform per VM (API call -> QEMU exec): first-5 median {:.1} ms, last-5 median {:.1} ms   {}",
        ms(xf5),
        ms(xl5),
        verdict(flat_platform)
    );
    println!(
        "  API call -> running: first-5 median {:.0} ms, last-5 median {:.0} ms   {}",
        ms(f5),
        ms(l5),
        verdict(flat)
    );
    println!(
        "  API call -> ready:   first-5 median {:.0} ms, last-5 median {:.0} ms",
        ms(rf5),
        ms(rl5)
    );
    let growth = rss20.saturating_sub(rss0) as f64 / VMS as f64;
    println!(
        "  panal up RSS {} KiB -> {} KiB with {VMS} VMs: {growth:.0} KiB per VM   goal <= 1024 KiB   {}",
        rss0,
        rss20,
        verdict(growth <= 1024.0)
    );
    println!(
        "  QEMU RSS per tiny VM: median {} MiB (min {}, max {})",
        qemu[VMS / 2] / 1024,
        qemu[0] / 1024,
        qemu[VMS - 1] / 1024
    );
    // Stop them all at once; the scratch directory's guard kills anything left.
    let dels = futures::future::join_all(ids.iter().enumerate().map(|(i, _)| {
        let c = c.clone();
        async move { c.delete_vm(None, &format!("vm-{i:02}")).await }
    }))
    .await;
    for d in dels.into_iter().flatten() {
        op_ok(&c, &d, TIMEOUT).await;
    }
}
