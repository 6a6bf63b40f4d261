//! Boot benchmark through the platform: API call (`POST /api/v1/vms`, `start: true`) to the
//! tiny microvm guest's readiness line in the console history (`GET .../console/log`, polled
//! every 10 ms), side by side with the same guest started by a bare `qemu-system-x86_64` command
//! (same kernel, initramfs, memory and kernel arguments; readiness polled in its serial file
//! every 10 ms), in alternating rounds. Goal: median Panal / median bare <= 1.10.
//!
//! The agent's own overhead (request received -> QEMU started), goal p50 <= 10 ms, is measured
//! from just before the request is sent to the instant the VM's `vm.json` appears in its run
//! directory: the QEMU driver writes it as its last step before it execs QEMU (after placement,
//! the agent's boot resolution and the driver's checks). A watcher thread polls the run
//! directories every 100 us, so the figure is precise to about 0.2 ms; file times were not
//! used (a new file's mtime comes from the kernel's coarse clock, a jiffy behind), nor
//! `/proc/PID/stat` start times (10 ms ticks). The figure includes the HTTP round trip and the
//! scheduler, so it bounds the agent's share from above. For context the time to QEMU's pid
//! file (QEMU set up and daemonized) is printed too.
//!
//! Runs the real `panal up` binary (release build) as a child process. Run:
//! `cargo bench -p panal --bench vm_boot`.

#[path = "../tests/common_e2e/mod.rs"]
mod common_e2e;

use common_e2e::up::Up;
use common_e2e::{READY_LINE, Scratch, console_log, guest_dir, op_ok, tiny, watch_launch};
use panal_client::Client;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 7;
const MEMORY_MIB: u64 = 128;
const POLL: Duration = Duration::from_millis(10);
const TIMEOUT: Duration = Duration::from_secs(60);

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One Panal round: (API call -> ready, request -> vm.json, request -> QEMU pid file, cmdline).
async fn panal_round(
    c: &Client,
    data: &Path,
    name: &str,
) -> Result<(Duration, Duration, Duration, String), String> {
    let vms = data.join("qemu/vms");
    let _ = std::fs::create_dir_all(&vms);
    let watch = watch_launch(vms);
    let t0 = Instant::now();
    let a = c
        .create_vm(&tiny(name, MEMORY_MIB))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        if console_log(c, name).await.contains(READY_LINE) {
            break;
        }
        if t0.elapsed() > TIMEOUT {
            return Err(format!("{name}: no readiness line"));
        }
        tokio::time::sleep(POLL).await;
    }
    let ready = t0.elapsed();
    let (meta, pidfile) = watch
        .join()
        .ok()
        .flatten()
        .ok_or(format!("{name}: its run directory was not seen"))?;
    let (meta, pidfile) = (
        meta.saturating_duration_since(t0),
        pidfile.saturating_duration_since(t0),
    );
    let pid = common_e2e::qemu_pid(data, a.vm.id).ok_or("no QEMU")?;
    let cmdline = append_arg(pid);
    let del = c.delete_vm(None, name).await.map_err(|e| e.to_string())?;
    op_ok(c, &del, TIMEOUT).await;
    Ok((ready, meta, pidfile, cmdline))
}

/// The `-append` argument of a running QEMU: the bare command gets the same kernel arguments.
fn append_arg(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    args.iter()
        .position(|a| a == "-append")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_default()
}

async fn bare_round(dir: &Path, cmdline: &str) -> Result<Duration, String> {
    let g = guest_dir();
    let log = dir.join("bare-serial.log");
    let _ = std::fs::remove_file(&log);
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-machine", "microvm", "-accel", "tcg", "-m"])
        .arg(MEMORY_MIB.to_string())
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-nic", "none", "-kernel"])
        .arg(g.join("vmlinux"))
        .arg("-initrd")
        .arg(g.join("initramfs.cpio.gz"))
        .arg("-append")
        .arg(cmdline)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let r = loop {
        if std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(READY_LINE)) {
            break Ok(t0.elapsed());
        }
        if t0.elapsed() > TIMEOUT {
            break Err("bare: no readiness line".to_string());
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = child.kill().await;
    r
}

// Failures panic rather than `process::exit`: unwinding `main` lets the scratch directory's
// guard kill `panal up` and every QEMU it started.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let s = Scratch::new();
    let up = Up::start(env!("CARGO_BIN_EXE_panal"), &s.data);
    up.wait_host().await;
    let c = up.client.clone();
    // Warm-up: the first launch probes the host (accelerator, QEMU version, TSC).
    let (_, _, _, cmdline) = panal_round(&c, &s.data, "warm-up")
        .await
        .unwrap_or_else(|e| panic!("warm-up failed: {e}"));
    let (mut panal, mut bare, mut agent, mut to_pid) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        // Alternate which goes first, so drift on the machine hits both alike.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for panal_first in order {
            if panal_first {
                match panal_round(&c, &s.data, &format!("boot-{round}")).await {
                    Ok((r, m, p, _)) => {
                        panal.push(r);
                        agent.push(m);
                        to_pid.push(p);
                    }
                    Err(e) => {
                        panic!("round {round}: {e}")
                    }
                }
            } else {
                match bare_round(&s.data, &cmdline).await {
                    Ok(b) => bare.push(b),
                    Err(e) => {
                        panic!("round {round}: {e}")
                    }
                }
            }
        }
        println!(
            "round {round}: panal {:>6.0} ms   bare {:>6.0} ms   agent overhead {:>6.2} ms",
            ms(panal[round]),
            ms(bare[round]),
            ms(agent[round])
        );
    }
    let (mp, mb) = (median(&panal), median(&bare));
    let ratio = mp.as_secs_f64() / mb.as_secs_f64();
    let p50 = median(&agent);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!("tiny microvm guest (TCG), {MEMORY_MIB} MiB, {ROUNDS} alternating rounds, medians:");
    println!("  API call -> readiness line      {:>7.0} ms", ms(mp));
    println!("  bare qemu -> readiness line     {:>7.0} ms", ms(mb));
    println!(
        "  ratio panal/bare                {ratio:>7.3}   goal <= 1.10   {}",
        verdict(ratio <= 1.10)
    );
    println!(
        "  agent overhead (request -> QEMU exec) p50 {:.2} ms   goal <= 10 ms   {}",
        ms(p50),
        verdict(p50 <= Duration::from_millis(10))
    );
    println!(
        "  request -> QEMU pid file (QEMU set up) p50 {:.2} ms",
        ms(median(&to_pid))
    );
}
