//! Boot-time benchmark of the `qemu` driver on this host (TCG here): time from `launch()` to the
//! guest's readiness line for the microvm Panal guest, against the same guest started by a bare
//! `qemu-system-x86_64` command line, in alternating rounds. Prints both medians and their ratio
//! (goal <= 1.10), the driver's own overhead (launch call -> QEMU spawned, p50) and QEMU's
//! resident memory per tiny VM. Run: `cargo bench -p panal-driver --bench qemu_boot`.

use panal_driver::qemu::{AccelMode, GuestImage, QemuConfig, QemuDriver, READY_LINE};
use panal_driver::{Driver, VmLaunch};
use panal_types::VmId;
use panal_types::vm::MachineProfile;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const MEMORY_MIB: u64 = 128;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn wait_ready(log: &Path, t0: Instant) -> Result<Duration, String> {
    loop {
        if std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).contains(READY_LINE))
            .unwrap_or(false)
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(format!("no readiness line in {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn bare_round(g: &GuestImage, dir: &Path, cmdline: &str) -> Result<(Duration, u64), String> {
    let log = dir.join("bare.log");
    let _ = std::fs::remove_file(&log);
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "microvm",
            "-accel",
            "tcg",
            "-m",
            &MEMORY_MIB.to_string(),
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-display",
            "none",
            "-nic",
            "none",
            "-kernel",
        ])
        .arg(g.kernel(MachineProfile::Microvm))
        .arg("-initrd")
        .arg(g.initramfs())
        .arg("-append")
        .arg(cmdline)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let r = wait_ready(&log, t0).await;
    let rss = child.id().map(rss_kib).unwrap_or(0);
    let _ = child.kill().await;
    r.map(|d| (d, rss))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let g = match GuestImage::locate() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("{why}");
            std::process::exit(1);
        }
    };
    let dir = tempfile::Builder::new()
        .prefix("panal-qemu-bench-")
        .tempdir()
        .expect("tempdir");
    let mut cfg = QemuConfig::new(dir.path());
    cfg.accel = AccelMode::Tcg;
    let d = QemuDriver::new(cfg.clone());
    d.probe().await; // host facts are probed once, as an agent does at start-up
    // The bare command line gets exactly the kernel arguments the driver uses.
    let mut driver_t = Vec::new();
    let mut bare_t = Vec::new();
    let mut overhead = Vec::new();
    let mut rss_driver = Vec::new();
    let mut rss_bare = Vec::new();
    for round in 0..ROUNDS {
        let spec = VmLaunch {
            id: VmId::new(),
            display_name: "bench/vm".into(),
            vcpus: 1,
            memory_bytes: MEMORY_MIB << 20,
            machine: MachineProfile::Microvm,
            boot: g.boot_initramfs(MachineProfile::Microvm, ""),
            disks: vec![],
            nics: vec![],
            hotplug_slots: 4,
            incoming: None,
            post_copy: false,
        };
        let t0 = Instant::now();
        let (vm, timings) = match d.launch_qemu(&spec).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("launch failed: {e}");
                std::process::exit(1);
            }
        };
        let log = dir
            .path()
            .join("vms")
            .join(spec.id.to_string())
            .join("console.log");
        let ready = wait_ready(&log, t0).await;
        let rss = panal_driver::VmHandle::pid(vm.as_ref())
            .map(rss_kib)
            .unwrap_or(0);
        // The exact kernel command line the driver used, for the bare run.
        let cmdline = std::fs::read(format!(
            "/proc/{}/cmdline",
            panal_driver::VmHandle::pid(vm.as_ref()).unwrap_or(0)
        ))
        .ok()
        .and_then(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter()
                .position(|a| a == "-append")
                .and_then(|i| args.get(i + 1).cloned())
        })
        .unwrap_or_default();
        let _ = panal_driver::VmHandle::kill(vm.as_ref()).await;
        let _ = d.cleanup(spec.id).await;
        let bare = bare_round(&g, dir.path(), &cmdline).await;
        match (ready, bare) {
            (Ok(r), Ok((b, brss))) => {
                println!(
                    "round {round}: driver {:>6.0} ms  bare {:>6.0} ms",
                    r.as_secs_f64() * 1e3,
                    b.as_secs_f64() * 1e3
                );
                driver_t.push(r);
                bare_t.push(b);
                overhead.push(timings.to_spawn);
                rss_driver.push(rss);
                rss_bare.push(brss);
            }
            (r, b) => {
                eprintln!(
                    "round {round} failed: driver {r:?} bare {:?}",
                    b.map(|x| x.0)
                );
                std::process::exit(1);
            }
        }
    }
    let md = median(&mut driver_t);
    let mb = median(&mut bare_t);
    let ov = median(&mut overhead);
    rss_driver.sort();
    rss_bare.sort();
    println!(
        "microvm TCG boot to {READY_LINE}, {ROUNDS} alternating rounds, {MEMORY_MIB} MiB guest:"
    );
    println!(
        "  driver launch() -> ready  median {:.0} ms",
        md.as_secs_f64() * 1e3
    );
    println!(
        "  bare qemu       -> ready  median {:.0} ms",
        mb.as_secs_f64() * 1e3
    );
    println!(
        "  ratio driver/bare         {:.3} (goal <= 1.10)",
        md.as_secs_f64() / mb.as_secs_f64()
    );
    println!(
        "  driver overhead launch() -> QEMU spawned, p50 {:.2} ms",
        ov.as_secs_f64() * 1e3
    );
    println!(
        "  QEMU RSS per tiny VM at readiness: driver {} MiB, bare {} MiB (median)",
        rss_driver[rss_driver.len() / 2] / 1024,
        rss_bare[rss_bare.len() / 2] / 1024
    );
}
