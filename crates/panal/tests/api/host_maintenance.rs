//! Host maintenance on a simulated pool in one process (real agents on the fake driver, the real
//! API, store and controllers): cordon keeps new VMs off a host and survives a lease loss; drain
//! moves every VM to another host (stopped, placed again, started), reports progress and ends in
//! maintenance; a drain with nowhere to go fails and stops nothing; uncordon cancels a drain;
//! unknown hosts and absurd overcommit labels are refused.

use crate::scale_sim;

use panal_client::ClientError;
use panal_driver::fake::FakeConfig;
use panal_server::scheduler::{CPU_OVERCOMMIT_LABEL, MEMORY_OVERCOMMIT_LABEL};
use panal_types::agent::HostRegistration;
use panal_types::host::{HostMode, HostState};
use panal_types::operation::{Operation, OperationState};
use panal_types::vm::{Vm, VmCreate, VmPhase};
use panal_types::{ApiError, ErrorCode};
use scale_sim::{Sim, SimConfig, fake_vm, host_name};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;

fn api_err(r: Result<impl std::fmt::Debug, ClientError>) -> ApiError {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected an API refusal, got {other:?}"),
    }
}

async fn eventually<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not met in {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn vm(sim: &Sim, name: &str) -> Vm {
    sim.client.vm(None, name).await.expect("read VM")
}

async fn host_state(sim: &Sim, i: usize) -> HostState {
    sim.client
        .host(host_name(i).as_str())
        .await
        .expect("read host")
        .state
}

/// Creates a VM and waits until it runs (or is stopped, when created with `start: false`).
async fn create_settled(sim: &Sim, req: VmCreate) -> Vm {
    let want = if req.start == Some(false) {
        VmPhase::Stopped
    } else {
        VmPhase::Running
    };
    let name = req.name.clone();
    sim.client.create_vm(&req).await.expect("create VM");
    eventually(
        &format!("{name} {want:?}"),
        Duration::from_secs(20),
        async || {
            let v = vm(sim, &name).await;
            (v.status.phase == want).then_some(v)
        },
    )
    .await
}

fn index_of(v: &Vm) -> usize {
    let h = v.status.host.as_ref().expect("placed");
    (0..64).find(|&i| host_name(i) == *h).expect("a sim host")
}

async fn sim(hosts: usize, cpus: u32, memory_bytes: u64) -> Sim {
    let mut cfg = SimConfig::new(hosts);
    cfg.cpus = cpus;
    cfg.memory_bytes = memory_bytes;
    cfg.lease_ttl = Duration::from_millis(1500);
    Sim::start(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_keeps_new_vms_off_and_survives_a_lease_loss() {
    let mut sim = sim(3, 4, 4 * GIB).await;
    let h0 = host_name(0);
    let h1 = host_name(1);
    let cordoned = sim.client.cordon_host(h0.as_str()).await.expect("cordon");
    assert_eq!(cordoned.state, HostState::Cordoned);
    assert_eq!(cordoned.mode, HostMode::Cordoned);
    // Idempotent.
    sim.client
        .cordon_host(h0.as_str())
        .await
        .expect("cordon again");

    for i in 0..6 {
        let v = create_settled(&sim, fake_vm(format!("small-{i}"), 1, GIB / 2)).await;
        assert_ne!(
            v.status.host.as_ref(),
            Some(&h0),
            "{} was placed on a cordoned host",
            v.name
        );
    }

    // With two hosts cordoned and the third full, the refusal counts them by reason.
    sim.client.cordon_host(h1.as_str()).await.expect("cordon");
    let used = sim
        .client
        .host(host_name(2).as_str())
        .await
        .unwrap()
        .allocation
        .memory_bytes;
    let filler = create_settled(&sim, fake_vm("filler".into(), 1, 4 * GIB - used - GIB / 2)).await;
    assert_eq!(index_of(&filler), 2);
    sim.client
        .create_vm(&fake_vm("homeless".into(), 1, GIB))
        .await
        .expect("create");
    let why = eventually("refusal", Duration::from_secs(10), async || {
        vm(&sim, "homeless").await.status.placement
    })
    .await;
    assert_eq!(why, "0/3 hosts fit: 2 cordoned, 1 insufficient memory");

    // Losing the lease shows not_ready; coming back keeps the cordon.
    sim.kill_host(0);
    eventually("h0 not ready", Duration::from_secs(10), async || {
        (host_state(&sim, 0).await == HostState::NotReady).then_some(())
    })
    .await;
    let h = sim.client.host(h0.as_str()).await.unwrap();
    assert_eq!(h.mode, HostMode::Cordoned, "the mode outlives the lease");
    sim.revive_host(0);
    eventually("h0 back", Duration::from_secs(10), async || {
        (host_state(&sim, 0).await != HostState::NotReady).then_some(())
    })
    .await;
    // Give a liveness flap or re-registration time to (wrongly) un-cordon it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(host_state(&sim, 0).await, HostState::Cordoned);

    // Uncordoned, the host is ready and the parked VM finds room on one of the two.
    for i in [0, 1] {
        let h = sim
            .client
            .uncordon_host(host_name(i).as_str())
            .await
            .expect("uncordon");
        assert_eq!(h.state, HostState::Ready);
        assert_eq!(h.mode, HostMode::Schedulable);
    }
    let placed = eventually("homeless placed", Duration::from_secs(15), async || {
        let v = vm(&sim, "homeless").await;
        (v.status.phase == VmPhase::Running).then_some(v)
    })
    .await;
    assert!(index_of(&placed) < 2);
}

/// Polls an operation until it ends, collecting each progress message seen, while checking
/// that no VM ever runs on two hosts.
async fn follow(
    sim: &Sim,
    op: &Operation,
    vms: &[Vm],
    limit: Duration,
) -> (Operation, Vec<String>) {
    let deadline = Instant::now() + limit;
    let mut seen: Vec<String> = Vec::new();
    loop {
        for v in vms {
            let on = sim.hosts_running(v.id);
            assert!(on.len() <= 1, "{} runs on hosts {on:?} at once", v.name);
        }
        let cur = sim
            .client
            .operation(&op.id.to_string())
            .await
            .expect("read operation");
        if seen.last() != Some(&cur.progress.message) {
            seen.push(cur.progress.message.clone());
        }
        if cur.state.is_final() {
            return (cur, seen);
        }
        assert!(
            Instant::now() < deadline,
            "drain not over in {limit:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_vm_elsewhere_and_ends_in_maintenance() {
    let mut cfg = SimConfig::new(3);
    cfg.cpus = 8;
    cfg.memory_bytes = 16 * GIB;
    // Stops take a moment, so moves are seen in flight.
    cfg.fake = FakeConfig {
        launch_latency: Duration::from_millis(20),
        stop_latency: Duration::from_millis(300),
    };
    let sim = Sim::start(cfg).await;
    let h0 = host_name(0);
    // Everything lands on host 0.
    for i in [1, 2] {
        sim.client.cordon_host(host_name(i).as_str()).await.unwrap();
    }
    let mut vms = Vec::new();
    for i in 0..6 {
        vms.push(create_settled(&sim, fake_vm(format!("vm-{i}"), 1, GIB)).await);
    }
    let mut off = fake_vm("parked".into(), 2, 2 * GIB);
    off.start = Some(false);
    vms.push(create_settled(&sim, off).await);
    assert!(vms.iter().all(|v| index_of(v) == 0));
    assert_eq!(sim.worlds[0].running_count(), 6);
    for i in [1, 2] {
        sim.client
            .uncordon_host(host_name(i).as_str())
            .await
            .unwrap();
    }

    let accepted = sim
        .client
        .drain_host(h0.as_str(), true)
        .await
        .expect("drain");
    assert_eq!(accepted.host.state, HostState::Draining);
    assert_eq!(accepted.operation.kind.as_str(), "host_drain");
    // A second request follows the same drain.
    let again = sim
        .client
        .drain_host(h0.as_str(), true)
        .await
        .expect("drain again");
    assert_eq!(again.operation.id, accepted.operation.id);
    // A VM moved by the drain is held by it.
    let busy = eventually(
        "a VM held by the drain",
        Duration::from_secs(10),
        async || {
            let all = sim.client.all_vms(None).await.unwrap();
            all.into_iter()
                .find(|v| v.status.moving.is_some() && v.status.host.as_ref() == Some(&h0))
        },
    )
    .await;
    let e = api_err(sim.client.start_vm(None, busy.name.as_str()).await);
    assert_eq!(e.code, ErrorCode::Conflict, "{e:?}");
    assert_eq!(e.operation, Some(accepted.operation.id));

    let (op, seen) = follow(&sim, &accepted.operation, &vms, Duration::from_secs(60)).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert_eq!(op.progress.percent, Some(100));
    assert_eq!(
        op.progress.message,
        format!("moved 7/7 VMs; {h0} is in maintenance")
    );
    assert!(
        seen.iter()
            .any(|m| m.starts_with("moved ") && m.ends_with("/7 VMs") && m != "moved 7/7 VMs"),
        "no intermediate progress in {seen:?}"
    );

    let host = sim.client.host(h0.as_str()).await.unwrap();
    assert_eq!(host.state, HostState::Maintenance);
    assert_eq!(host.allocation.vms, 0);
    assert_eq!(host.allocation.vcpus, 0);
    assert!(host.drain.is_none());
    assert_eq!(sim.worlds[0].running_count(), 0);
    for v in &vms {
        let cur = vm(&sim, v.name.as_str()).await;
        assert_ne!(index_of(&cur), 0, "{} is still on the drained host", v.name);
        assert!(cur.status.moving.is_none() && cur.status.operation.is_none());
        if v.name.as_str() == "parked" {
            assert_eq!(cur.status.phase, VmPhase::Stopped);
            assert!(sim.hosts_running(v.id).is_empty());
        } else {
            assert_eq!(cur.status.phase, VmPhase::Running, "{}", v.name);
            assert_eq!(sim.hosts_running(v.id), vec![index_of(&cur)]);
        }
    }
    // The other hosts hold exactly what they run.
    let hosts = sim.hosts().await;
    let total: u64 = hosts.iter().map(|h| h.allocation.vms).sum();
    assert_eq!(total, 7);

    // Maintenance keeps new VMs off; uncordon brings the host back.
    let v = create_settled(&sim, fake_vm("after".into(), 1, GIB)).await;
    assert_ne!(index_of(&v), 0);
    let h = sim.client.uncordon_host(h0.as_str()).await.unwrap();
    assert_eq!(h.state, HostState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_nowhere_to_go_fails_and_stops_nothing() {
    let sim = sim(2, 4, 4 * GIB).await;
    let (h0, h1) = (host_name(0), host_name(1));
    sim.client.cordon_host(h1.as_str()).await.unwrap();
    let a = create_settled(&sim, fake_vm("big-a".into(), 1, 3 * GIB)).await;
    assert_eq!(index_of(&a), 0);
    sim.client.uncordon_host(h1.as_str()).await.unwrap();
    let b = create_settled(&sim, fake_vm("big-b".into(), 1, 3 * GIB)).await;
    assert_eq!(index_of(&b), 1);

    let accepted = sim
        .client
        .drain_host(h0.as_str(), true)
        .await
        .expect("drain");
    let (op, _) = follow(
        &sim,
        &accepted.operation,
        &[a.clone(), b],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(op.state, OperationState::Failed);
    let err = op.error.expect("an error");
    assert_eq!(err.code, ErrorCode::InsufficientCapacity);
    assert_eq!(
        err.message,
        format!(
            "cannot drain {h0}: VM default/big-a fits nowhere: 0/2 hosts fit: 1 draining, 1 insufficient memory"
        )
    );
    // Nothing was stopped: the VM still runs where it was, and the host stays cordoned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cur = vm(&sim, "big-a").await;
    assert_eq!(cur.status.phase, VmPhase::Running);
    assert_eq!(cur.generation, a.generation, "its spec was never touched");
    assert_eq!(index_of(&cur), 0);
    assert_eq!(sim.hosts_running(a.id), vec![0]);
    assert_eq!(host_state(&sim, 0).await, HostState::Cordoned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_drain_stops_nothing_that_cannot_move_live() {
    // The simulated hypervisor cannot migrate: without --cold the drain fails on the running
    // VM, naming it and the way out, and stops nothing; a stopped VM would have moved.
    let sim = sim(2, 4, 4 * GIB).await;
    let h0 = host_name(0);
    sim.client.cordon_host(host_name(1).as_str()).await.unwrap();
    let a = create_settled(&sim, fake_vm("web".into(), 1, GIB)).await;
    sim.client
        .uncordon_host(host_name(1).as_str())
        .await
        .unwrap();
    let accepted = sim
        .client
        .drain_host(h0.as_str(), false)
        .await
        .expect("drain");
    let (op, _) = follow(
        &sim,
        &accepted.operation,
        std::slice::from_ref(&a),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(op.state, OperationState::Failed);
    let err = op.error.expect("an error");
    assert_eq!(err.code, ErrorCode::Conflict);
    assert!(
        err.message.contains("VM default/web cannot move live") && err.message.contains("--cold"),
        "{}",
        err.message
    );
    let cur = vm(&sim, "web").await;
    assert_eq!(cur.status.phase, VmPhase::Running);
    assert_eq!(cur.generation, a.generation, "its spec was never touched");
    assert!(cur.status.migration.is_none());
    assert_eq!(sim.hosts_running(a.id), vec![0]);
    assert_eq!(host_state(&sim, 0).await, HostState::Cordoned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncordon_cancels_a_drain_and_no_vm_is_lost() {
    let mut cfg = SimConfig::new(2);
    cfg.cpus = 8;
    cfg.memory_bytes = 16 * GIB;
    // Slow stops, so the uncordon lands while VMs are being moved.
    cfg.fake = FakeConfig {
        launch_latency: Duration::from_millis(50),
        stop_latency: Duration::from_millis(600),
    };
    let sim = Sim::start(cfg).await;
    let h0 = host_name(0);
    sim.client.cordon_host(host_name(1).as_str()).await.unwrap();
    let mut vms = Vec::new();
    for i in 0..8 {
        vms.push(create_settled(&sim, fake_vm(format!("vm-{i}"), 1, GIB)).await);
    }
    sim.client
        .uncordon_host(host_name(1).as_str())
        .await
        .unwrap();
    let accepted = sim.client.drain_host(h0.as_str(), true).await.unwrap();
    eventually("a move under way", Duration::from_secs(10), async || {
        let all = sim.client.all_vms(None).await.unwrap();
        all.iter().any(|v| v.status.moving.is_some()).then_some(())
    })
    .await;
    // Cordon is refused while draining; uncordon cancels.
    let e = api_err(sim.client.cordon_host(h0.as_str()).await);
    assert_eq!(e.code, ErrorCode::Conflict);
    let h = sim.client.uncordon_host(h0.as_str()).await.unwrap();
    assert_eq!(h.state, HostState::Ready);
    let op = sim
        .client
        .operation(&accepted.operation.id.to_string())
        .await
        .unwrap();
    assert_eq!(op.state, OperationState::Cancelled);
    // Every VM ends running on exactly one host, none left half moved.
    eventually("all settled", Duration::from_secs(30), async || {
        for v in &vms {
            let cur = vm(&sim, v.name.as_str()).await;
            let on = sim.hosts_running(v.id);
            assert!(on.len() <= 1, "{} runs on {on:?}", v.name);
            if cur.status.phase != VmPhase::Running
                || cur.status.moving.is_some()
                || cur.status.host.is_none()
                || on != vec![index_of(&cur)]
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(host_state(&sim, 0).await, HostState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_and_absurd_ratios_are_refused() {
    let sim = sim(1, 4, 4 * GIB).await;
    for r in [
        api_err(sim.client.cordon_host("nope").await),
        api_err(sim.client.uncordon_host("nope").await),
        api_err(
            sim.client
                .drain_host("nope", true)
                .await
                .map(|a| a.operation.id),
        ),
    ] {
        assert_eq!(r.code, ErrorCode::NotFound, "{r:?}");
        assert_eq!(r.field.as_deref(), Some("name"));
        assert_eq!(r.message, "host \"nope\" not found");
    }

    let inventory = sim.hosts().await[0].inventory.clone();
    let register = |key: &str, value: &str| {
        let mut labels = BTreeMap::new();
        labels.insert(key.to_owned(), value.to_owned());
        HostRegistration {
            name: host_name(7),
            inventory: inventory.clone(),
            labels,
            zone: None,
        }
    };
    for (key, value) in [
        (CPU_OVERCOMMIT_LABEL, "0.5"),
        (CPU_OVERCOMMIT_LABEL, "65"),
        (CPU_OVERCOMMIT_LABEL, "lots"),
        (CPU_OVERCOMMIT_LABEL, "NaN"),
        (MEMORY_OVERCOMMIT_LABEL, "9"),
        (MEMORY_OVERCOMMIT_LABEL, "0"),
    ] {
        let e = sim
            .app
            .register_host(register(key, value))
            .await
            .expect_err(&format!("{key}={value} accepted"));
        assert_eq!(e.code, ErrorCode::InvalidValue, "{key}={value}");
        assert_eq!(e.field.as_deref(), Some(format!("labels.{key}").as_str()));
        assert!(
            e.message.contains("must be a number from 1 to"),
            "{}",
            e.message
        );
    }
    // Sane ratios are taken, and nothing was registered by the refusals.
    assert_eq!(sim.hosts().await.len(), 1);
    sim.app
        .register_host(register(CPU_OVERCOMMIT_LABEL, "16"))
        .await
        .expect("a sane ratio");
    sim.app
        .register_host(register(MEMORY_OVERCOMMIT_LABEL, "1.5"))
        .await
        .expect("a sane ratio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_a_restart_of_the_controllers() {
    let mut cfg = SimConfig::new(2);
    cfg.cpus = 8;
    cfg.memory_bytes = 16 * GIB;
    cfg.fake = FakeConfig {
        launch_latency: Duration::from_millis(20),
        stop_latency: Duration::from_millis(400),
    };
    let mut sim = Sim::start(cfg).await;
    let h0 = host_name(0);
    sim.client.cordon_host(host_name(1).as_str()).await.unwrap();
    let mut vms = Vec::new();
    for i in 0..6 {
        vms.push(create_settled(&sim, fake_vm(format!("vm-{i}"), 1, GIB)).await);
    }
    sim.client
        .uncordon_host(host_name(1).as_str())
        .await
        .unwrap();
    let accepted = sim.client.drain_host(h0.as_str(), true).await.unwrap();
    eventually("a move under way", Duration::from_secs(10), async || {
        let all = sim.client.all_vms(None).await.unwrap();
        all.iter().any(|v| v.status.moving.is_some()).then_some(())
    })
    .await;
    // The leader goes away mid-drain; a new one picks the drain up from the store.
    sim.restart_controllers().await;
    let (op, _) = follow(&sim, &accepted.operation, &vms, Duration::from_secs(60)).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:?}");
    assert_eq!(host_state(&sim, 0).await, HostState::Maintenance);
    for v in &vms {
        let cur = vm(&sim, v.name.as_str()).await;
        assert_eq!(cur.status.phase, VmPhase::Running);
        assert_eq!(sim.hosts_running(v.id), vec![1], "{}", v.name);
    }
}
