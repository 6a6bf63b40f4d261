//! Scale benchmark of placement, in one process on the fake driver: N simulated hosts (real
//! agents, each with its own fake machine, linked in-process) and M VMs created in batches
//! through the real HTTP API (`POST /api/v1/vms:batch`) and the embedded store. A watch of the VM prefix timestamps each
//! first placement, so the figures are what a user would see: placements per second sustained,
//! and per 10% of fill (flat means the scheduler does not slow down as hosts fill). Then the
//! planner alone: decision time per VM over a 10,000-host pool (p50/p99/max).
//!
//! `cargo bench -p panal --bench scale_placement`. Sizes: PANAL_BENCH_HOSTS (5000),
//! PANAL_BENCH_VMS (100000), PANAL_BENCH_BATCH (VMs per create request, 500),
//! PANAL_BENCH_PARALLEL (requests in flight, 4), PANAL_BENCH_DECISION_HOSTS (10000). Hosts are sized so that the
//! VMs fill the pool to 90% of its memory.

#[path = "../tests/scale_sim/mod.rs"]
mod scale_sim;

use futures::StreamExt;
use panal_server::scheduler::{Candidate, Members, Policy, Request, place};
use panal_store::WatchEvent;
use panal_types::host::{Host, HostAllocation};
use panal_types::vm::{HypervisorKind, Placement};
use scale_sim::{Sim, SimConfig, fake_vm};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Watches the VM prefix and records when each VM was first seen placed.
async fn placements(sim: &Sim, expect: usize) -> tokio::task::JoinHandle<Vec<Instant>> {
    let rev = sim.store.current_revision().await.unwrap();
    let mut watch = sim
        .store
        .watch(panal_server::keys::VMS, rev + 1)
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut seen: HashSet<String> = HashSet::with_capacity(expect);
        let mut at = Vec::with_capacity(expect);
        while at.len() < expect {
            let kv = match watch.next().await {
                Some(Ok(WatchEvent::Put(kv))) => kv,
                Some(Ok(WatchEvent::Delete { .. })) => continue,
                Some(Err(e)) => panic!("placement watch failed after {} placements: {e}", at.len()),
                None => panic!("placement watch ended after {} placements", at.len()),
            };
            if seen.contains(&kv.key) {
                continue;
            }
            // `"host":"…"` appears only once the VM is placed (no `host` key while pending); a byte
            // search keeps the measuring watcher from competing with the platform for CPU.
            if kv.value.windows(8).any(|w| w == b"\"host\":\"") {
                seen.insert(kv.key);
                at.push(Instant::now());
                if at.len() % (expect / 10).max(1) == 0 {
                    eprintln!("  {} placed", at.len());
                }
            }
        }
        at
    })
}

async fn end_to_end(hosts: usize, vms: usize, batch: usize, parallel: usize) {
    // Memory is the binding resource: 2 GiB VMs, hosts sized for 90% fill at the end.
    let per_host = (vms as f64 / hosts as f64 / 0.9).ceil() as u64;
    let mut cfg = SimConfig::new(hosts);
    cfg.memory_bytes = per_host * 2 * GIB;
    cfg.cpus = per_host as u32;
    let t = Instant::now();
    let sim = Sim::start(cfg).await;
    println!(
        "pool: {hosts} hosts ({} GiB, {} CPUs each) registered in {:.1} s",
        per_host * 2,
        per_host,
        t.elapsed().as_secs_f64()
    );
    let watcher = placements(&sim, vms).await;
    let client = Arc::new(sim.client.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(vms / batch + 1);
    for first in (0..vms).step_by(batch) {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let reqs: Vec<_> = (first..(first + batch).min(vms))
            .map(|i| fake_vm(format!("vm-{i}"), 1, 2 * GIB))
            .collect();
        tasks.push(tokio::spawn(async move {
            let r = client.create_vms(&reqs).await;
            drop(permit);
            r.expect("batch create");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let creates = start.elapsed();
    let at = watcher.await.unwrap();
    let total = at.last().unwrap().duration_since(start);
    println!(
        "{vms} VMs: creates answered in {:.1} s ({:.0}/s); all placed after {:.1} s: {:.0} placements/s sustained (goal >= 10000/s: {})",
        creates.as_secs_f64(),
        vms as f64 / creates.as_secs_f64(),
        total.as_secs_f64(),
        vms as f64 / total.as_secs_f64(),
        if vms as f64 / total.as_secs_f64() >= 10_000.0 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    let mut line = String::from("placements/s per 10% of VMs placed:");
    let mut prev = start;
    for d in 1..=10 {
        let idx = (vms * d / 10).max(1) - 1;
        let span = at[idx].duration_since(prev).as_secs_f64();
        line.push_str(&format!(" {:.0}", (vms / 10) as f64 / span.max(1e-9)));
        prev = at[idx];
    }
    println!("{line}");
    let hosts_now = sim.hosts().await;
    let counts: Vec<u64> = hosts_now.iter().map(|h| h.allocation.vms).collect();
    println!(
        "spread: VMs per host min {} max {} (mean {:.1})",
        counts.iter().min().unwrap(),
        counts.iter().max().unwrap(),
        vms as f64 / hosts as f64
    );
}

fn decisions(hosts: usize) {
    let policy = Policy::default();
    let template: Host = serde_json::from_value(serde_json::json!({
        "id": panal_types::HostId::new(), "name": "h", "state": "ready",
        "inventory": {"cpus": 32, "memory_bytes": 128 * GIB, "agent_version": "",
            "hypervisors": [{"kind": "fake", "available": true, "detail": "", "accelerator": "none"}]},
        "allocation": {"vcpus": 0, "memory_bytes": 0, "vms": 0},
        "created_at": chrono_now(), "last_seen": chrono_now()
    }))
    .expect("host");
    let cands: Vec<Candidate> = (0..hosts)
        .map(|i| {
            let mut h = template.clone();
            h.name = panal_types::Name::parse(&format!("h{i}")).unwrap();
            Candidate::new(&h, &policy)
        })
        .collect();
    // Pseudo-random fill from 0 to ~95%, a few hosts full.
    let mut allocs: Vec<HostAllocation> = (0..hosts)
        .map(|i| {
            let f = (i * 7919 % 100) as u64;
            HostAllocation {
                vcpus: 32 * 4 * f / 105,
                memory_bytes: 128 * GIB * f / 105,
                vms: f,
            }
        })
        .collect();
    let none = Placement::default();
    // Sampled (the default), then every host (what a VM in a placement group costs).
    for (label, sample, n) in [
        ("sampled", 0, 20_000.min(hosts)),
        ("every host", usize::MAX, 2_000.min(hosts / 10)),
    ] {
        let policy = Policy {
            sample,
            ..Policy::default()
        };
        let req = Request {
            vcpus: 1,
            memory_bytes: GIB,
            hypervisor: HypervisorKind::Fake,
            placement: &none,
            volumes: &[],
            networked: false,
        };
        let mut lat = Vec::with_capacity(n);
        let mut start = 0;
        for _ in 0..n {
            let t = Instant::now();
            let c = place(&req, &cands, &allocs, &Members::new(), &policy, start).expect("fits");
            lat.push(t.elapsed());
            start = (start + c.examined) % hosts;
            allocs[c.host].vcpus += 1;
            allocs[c.host].memory_bytes += GIB;
        }
        lat.sort();
        let p99 = pct(&lat, 0.99);
        println!(
            "decision over {hosts} hosts ({label}): p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (goal p99 <= 5 ms: {})",
            pct(&lat, 0.5).as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            if p99 <= Duration::from_millis(5) {
                "PASS"
            } else {
                "FAIL"
            }
        );
    }
}

fn chrono_now() -> String {
    "2025-01-01T00:00:00Z".into()
}

fn main() {
    let hosts = env_or("PANAL_BENCH_HOSTS", 5000);
    let vms = env_or("PANAL_BENCH_VMS", 100_000);
    let batch = env_or("PANAL_BENCH_BATCH", 500).clamp(1, 1000);
    let parallel = env_or("PANAL_BENCH_PARALLEL", 4);
    let decision_hosts = env_or("PANAL_BENCH_DECISION_HOSTS", 10_000);
    decisions(decision_hosts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(end_to_end(hosts, vms, batch, parallel));
}
