//! Scale tests of the control plane on the fake driver, in one process: a thousand simulated
//! hosts (real agents, each with its own fake machine) placing thousands of VMs through the
//! real API and store; spread balance, zones, anti-affinity groups, host failure by lease
//! expiry; and hundreds of concurrent creates at a nearly full pool that must never overbook.

use crate::scale_sim;

use panal_server::scheduler::{MEMORY_OVERCOMMIT_LABEL, Policy};
use panal_types::host::HostState;
use panal_types::vm::{GroupPolicy, PlacementGroupRequest, Vm, VmPhase};
use scale_sim::{Sim, SimConfig, fake_vm, host_name};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

/// Every VM of the default project.
async fn all_vms(sim: &Sim) -> Vec<Vm> {
    sim.client.all_vms(None).await.expect("list VMs")
}

/// Creates `reqs` through the API, `parallel` at a time.
async fn create_all(sim: &Sim, reqs: Vec<panal_types::vm::VmCreate>, parallel: usize) {
    let client = Arc::new(sim.client.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for req in reqs {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.create_vm(&req).await;
            drop(permit);
            r.unwrap_or_else(|e| panic!("create {}: {e}", req.name));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn eventually<T>(limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met in {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_hosts_place_thousands_of_vms() {
    let mut cfg = SimConfig::new(1000);
    cfg.lease_ttl = Duration::from_secs(3);
    cfg.placement = |i| (BTreeMap::new(), Some(format!("z{}", i % 4)));
    let t = Instant::now();
    let sim = Sim::start(cfg).await;
    eprintln!("1000 hosts registered in {:?}", t.elapsed());

    // 3,000 plain VMs, 100 in zone z1, 50 kept apart by a hard anti-affinity group.
    let mut reqs: Vec<_> = (0..3000)
        .map(|i| fake_vm(format!("vm-{i}"), 1, GIB))
        .collect();
    for i in 0..100 {
        let mut r = fake_vm(format!("zoned-{i}"), 1, GIB);
        r.zone = Some("z1".into());
        reqs.push(r);
    }
    for i in 0..50 {
        let mut r = fake_vm(format!("db-{i}"), 2, 2 * GIB);
        r.placement_group = Some(PlacementGroupRequest {
            name: "db".into(),
            policy: GroupPolicy::AntiAffinity,
            soft: false,
        });
        reqs.push(r);
    }
    let total = reqs.len();
    let t = Instant::now();
    create_all(&sim, reqs, 64).await;
    eprintln!("{total} creates answered in {:?}", t.elapsed());
    let vms = eventually(Duration::from_secs(40), async || {
        let vms = all_vms(&sim).await;
        (vms.iter().all(|v| v.status.phase == VmPhase::Running) && sim.running() == total)
            .then_some(vms)
    })
    .await;
    eprintln!("{total} VMs running in {:?}", t.elapsed());

    // Every host runs exactly the VMs placed on it: the assignment streams route correctly.
    let mut per_host: HashMap<String, usize> = HashMap::new();
    for v in &vms {
        *per_host
            .entry(v.status.host.as_ref().unwrap().to_string())
            .or_default() += 1;
    }
    for (i, w) in sim.worlds.iter().enumerate() {
        let placed = per_host.get(host_name(i).as_str()).copied().unwrap_or(0);
        assert_eq!(w.running_count(), placed, "host {i}");
    }
    // Spread balances: 3,150 VMs over 1,000 hosts, none far from the mean.
    let hosts = sim.hosts().await;
    let counts: Vec<u64> = hosts.iter().map(|h| h.allocation.vms).collect();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    eprintln!("VMs per host: min {min} max {max}");
    assert!(max <= 6 && min >= 1, "unbalanced: min {min} max {max}");
    assert_eq!(counts.iter().sum::<u64>(), total as u64);
    let zone_of: HashMap<String, Option<String>> = hosts
        .iter()
        .map(|h| (h.name.to_string(), h.zone.clone()))
        .collect();
    let mut db_hosts = std::collections::HashSet::new();
    for v in &vms {
        let host = v.status.host.as_ref().unwrap().to_string();
        if v.name.as_str().starts_with("zoned-") {
            assert_eq!(zone_of[&host].as_deref(), Some("z1"), "{}", v.name);
        }
        if v.name.as_str().starts_with("db-") {
            assert!(db_hosts.insert(host), "two db members on one host");
            let why = v.status.placement.as_deref().unwrap();
            assert!(why.contains("anti-affinity group db: met"), "{why}");
        }
    }
    assert_eq!(db_hosts.len(), 50);

    // Ten hosts die: their leases expire and they turn not ready within the TTL (plus the
    // controller's reaction); the others stay ready.
    let t = Instant::now();
    for i in 0..10 {
        sim.kill_host(i * 97);
    }
    let hosts = sim
        .wait_for(Duration::from_secs(8), |hosts| {
            hosts
                .iter()
                .filter(|h| h.state == HostState::NotReady)
                .count()
                == 10
        })
        .await;
    eprintln!("10 dead hosts not ready after {:?}", t.elapsed());
    for h in &hosts {
        let dead = (0..10).any(|i| h.name == host_name(i * 97));
        assert_eq!(h.state == HostState::NotReady, dead, "{}", h.name);
    }
    // New VMs avoid them.
    create_all(
        &sim,
        (0..200)
            .map(|i| fake_vm(format!("late-{i}"), 1, GIB))
            .collect(),
        64,
    )
    .await;
    let vms = eventually(Duration::from_secs(20), async || {
        let vms = all_vms(&sim).await;
        vms.iter()
            .filter(|v| v.name.as_str().starts_with("late-"))
            .all(|v| v.status.host.is_some())
            .then_some(vms)
    })
    .await;
    for v in vms.iter().filter(|v| v.name.as_str().starts_with("late-")) {
        let h = v.status.host.as_ref().unwrap();
        assert!(
            (0..10).all(|i| *h != host_name(i * 97)),
            "placed on dead {h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_overbook_a_nearly_full_pool() {
    // 100 hosts of 4 GiB (memory ratio 1), every tenth with a 1.5 ratio label: room for
    // 90 × 4 + 10 × 6 = 420 VMs of 1 GiB. 500 concurrent creates: exactly 420 placed.
    let mut cfg = SimConfig::new(100);
    cfg.cpus = 64;
    cfg.memory_bytes = 4 * GIB;
    cfg.policy = Policy::default();
    cfg.placement = |i| {
        let mut labels = BTreeMap::new();
        if i % 10 == 0 {
            labels.insert(MEMORY_OVERCOMMIT_LABEL.to_string(), "1.5".to_string());
        }
        (labels, None)
    };
    let sim = Sim::start(cfg).await;
    let reqs: Vec<_> = (0..500)
        .map(|i| fake_vm(format!("vm-{i}"), 1, GIB))
        .collect();
    create_all(&sim, reqs, 500).await;
    let vms = eventually(Duration::from_secs(30), async || {
        let vms = all_vms(&sim).await;
        let settled = vms.iter().all(|v| match &v.status.host {
            Some(_) => v.status.phase == VmPhase::Running,
            None => v.status.placement.is_some(),
        });
        (settled && vms.len() == 500).then_some(vms)
    })
    .await;
    let mut mem: HashMap<String, u64> = HashMap::new();
    let mut pending = 0;
    for v in &vms {
        match &v.status.host {
            Some(h) => *mem.entry(h.to_string()).or_default() += v.spec.memory_bytes,
            None => {
                pending += 1;
                assert_eq!(v.status.phase, VmPhase::Pending);
                assert_eq!(
                    v.status.placement.as_deref(),
                    Some("0/100 hosts fit: 100 insufficient memory")
                );
            }
        }
    }
    assert_eq!(pending, 80);
    for h in sim.hosts().await {
        let cap = if h.labels.contains_key(MEMORY_OVERCOMMIT_LABEL) {
            6 * GIB
        } else {
            4 * GIB
        };
        let placed = mem.get(h.name.as_str()).copied().unwrap_or(0);
        assert!(placed <= cap, "{} holds {placed} > {cap}", h.name);
        assert_eq!(h.allocation.memory_bytes, placed, "{}", h.name);
    }
    assert_eq!(sim.running(), 420);
}
