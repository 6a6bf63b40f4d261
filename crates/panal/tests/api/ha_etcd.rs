//! A highly available control plane on real etcd: two `panal server` replicas on a three-member
//! etcd cluster (started and stopped by the test), simulated hosts linked in-process to the same
//! store. `kill -9` of the leader moves the controllers to the other replica within the lease
//! TTL while the API keeps serving and nothing acknowledged is lost; losing one etcd member is
//! harmless; losing two makes writes fail with a clear 503 while VMs keep running; bringing the
//! members back converges.

use panal_agent::{Agent, AgentConfig};
use panal_client::Client;
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_server::link::InProcessLink;
use panal_server::{App, AppConfig};
use panal_store::DynStore;
use panal_store::etcd::testing::EtcdCluster;
use panal_types::operation::OperationState;
use panal_types::vm::{HypervisorKind, VmCreate, VmPhase};
use panal_types::{ErrorCode, Name};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_panal");

struct Replica {
    child: Child,
    client: Client,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn replica(endpoints: &[String], name: &str) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let store = format!(
        "etcd://{}",
        endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--leader-ttl",
            "3",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &store,
            "--data-dir",
        ])
        .arg(dir.path())
        .env("PANAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn panal server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap_or_default().starts_with("Panal server") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
    let client = Client::new(&format!("http://127.0.0.1:{port}"), token.trim());
    Replica {
        child,
        client,
        _dir: dir,
    }
}

async fn leader_of(c: &Client) -> Option<String> {
    c.cluster()
        .await
        .ok()
        .and_then(|s| s.leader)
        .map(|l| l.replica)
}

async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn fake_vm(name: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        memory_bytes: Some(64 << 20),
        ..VmCreate::default()
    }
}

async fn running(c: &Client, name: &str) -> bool {
    matches!(c.vm(None, name).await, Ok(vm) if vm.status.phase == VmPhase::Running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_and_etcd_member_loss() {
    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let endpoints = etcd.endpoints();
    let a = replica(&endpoints, "replica-a");
    // A simulated host on the same store, linked in-process like `panal up`'s agent.
    // The prefix `panal server` uses, so both see the same keys.
    let store: DynStore =
        panal_store::etcd::EtcdStore::connect(etcd.options().key_prefix("/panal/"))
            .await
            .expect("connect");
    let host_app = App::new(
        store.clone(),
        AppConfig {
            host_lease_ttl: Duration::from_secs(5),
            ..AppConfig::default()
        },
    );
    let probe_app = host_app.clone();
    let world = FakeWorld::new();
    let mut cfg = AgentConfig::new(Name::parse("sim-1").unwrap());
    cfg.heartbeat = Duration::from_secs(1);
    cfg.capacity_override = Some((64, 256 << 30));
    let agent = Agent::new(
        cfg,
        vec![Arc::new(FakeDriver::new(
            world.clone(),
            FakeConfig::default(),
        ))],
        Arc::new(InProcessLink::new(host_app)),
        Arc::new(panal_agent::boot::NoImages),
    );
    let agent = tokio::spawn(agent.run());
    wait_for(15, "the simulated host to register", || {
        let app = probe_app.clone();
        async move { app.host("sim-1").await.is_ok() }
    })
    .await;
    wait_for(15, "replica-a to lead", || async {
        leader_of(&a.client).await.as_deref() == Some("replica-a")
    })
    .await;
    let b = replica(&endpoints, "replica-b");
    assert_eq!(
        leader_of(&b.client).await.as_deref(),
        Some("replica-a"),
        "one leader"
    );

    // Writes acknowledged through either replica, converged by the leader's controllers.
    let mut acked = Vec::new();
    for i in 0..6 {
        let c = if i % 2 == 0 { &a.client } else { &b.client };
        let name = format!("vm-{i}");
        c.create_vm(&fake_vm(&name)).await.expect("create");
        acked.push(name);
    }
    for n in &acked {
        if tokio::time::timeout(Duration::from_secs(20), async {
            while !running(&b.client, n).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_err()
        {
            let vm = b.client.vm(None, n).await;
            let hosts = b.client.list_hosts(None).await;
            panic!("{n} not running: {vm:?}\nhosts: {hosts:?}");
        }
    }

    // kill -9 of the leader: the other replica takes over within the TTL; reads never stop.
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let mut read_failures = 0;
    loop {
        if b.client.vm(None, "vm-0").await.is_err() {
            read_failures += 1;
        }
        if leader_of(&b.client).await.as_deref() == Some("replica-b") {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no takeover after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    println!("takeover after {:.2} s", takeover.as_secs_f64());
    assert!(
        takeover <= Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    assert_eq!(read_failures, 0, "the surviving replica kept serving");
    for n in &acked {
        assert!(running(&b.client, n).await, "{n} survived the failover");
    }
    // The controllers now run on replica-b: a new VM is scheduled and started.
    b.client
        .create_vm(&fake_vm("after-failover"))
        .await
        .unwrap();
    wait_for(15, "a VM created after the failover to run", || {
        running(&b.client, "after-failover")
    })
    .await;

    // One etcd member down: everything goes on. If the killed member led etcd's Raft group, the
    // survivors elect a new leader first (about a second); the store waits that out, and a
    // client retrying a 503 `unavailable` within a few seconds is the documented contract.
    etcd.kill(0);
    let killed = Instant::now();
    loop {
        match b.client.create_vm(&fake_vm("one-member-down")).await {
            Ok(_) => break,
            Err(panal_client::ClientError::Api(e)) if e.code == ErrorCode::Unavailable => {
                assert!(
                    killed.elapsed() < Duration::from_secs(10),
                    "writes did not resume with 2 of 3 members"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("writes with 2 of 3 members: {e}"),
        }
    }
    println!(
        "first write with one member down after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    wait_for(20, "VM with one member down", || {
        running(&b.client, "one-member-down")
    })
    .await;

    // Two members down: writes fail with a clear 503; VMs keep running on their host.
    etcd.kill(1);
    let started = Instant::now();
    let err = b
        .client
        .create_vm(&fake_vm("no-quorum"))
        .await
        .expect_err("no quorum, no write");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the refusal is bounded in time"
    );
    match err {
        panal_client::ClientError::Api(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e}"),
        other => panic!("expected a 503, got {other}"),
    }
    assert_eq!(world.running_count(), 8, "VMs keep running without quorum");

    // Members back: the system converges and accepts writes again.
    etcd.restart(0).await.unwrap();
    etcd.restart(1).await.unwrap();
    wait_for(30, "writes to work again", || async {
        b.client.create_vm(&fake_vm("healed")).await.is_ok()
    })
    .await;
    wait_for(30, "the healed VM to run", || running(&b.client, "healed")).await;
    let ops = b.client.list_operations(None).await.unwrap();
    assert!(
        ops.items.iter().all(|o| o.state != OperationState::Failed),
        "no operation failed"
    );
    agent.abort();
}

/// One acknowledged update: (VM, generation it produced, labels it wrote).
type Ack = (String, u64, std::collections::BTreeMap<String, String>);

/// A generation of a VM with the labels it carried.
type Version = (u64, std::collections::BTreeMap<String, String>);

/// Many clients update VM specs with compare-and-swap (`if_generation`) through both replicas
/// while an etcd member and the leader replica are killed; afterwards every acknowledged update
/// is present (no two acknowledgements share a generation, the final record is at least the
/// newest acknowledged one and carries its labels when nothing newer landed) and generations
/// only increased.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_history_survives_member_and_replica_kills() {
    use panal_types::vm::VmUpdate;
    use std::collections::{BTreeMap, HashMap};

    let mut etcd = EtcdCluster::start(3).await.expect("etcd cluster");
    let endpoints = etcd.endpoints();
    let a = replica(&endpoints, "replica-a");
    wait_for(15, "replica-a to lead", || async {
        leader_of(&a.client).await.is_some()
    })
    .await;
    let b = replica(&endpoints, "replica-b");
    let names: Vec<String> = (0..4).map(|i| format!("h-{i}")).collect();
    for n in &names {
        let mut req = fake_vm(n);
        req.start = Some(false);
        a.client.create_vm(&req).await.unwrap();
    }
    let clients = [a.client.clone(), b.client.clone()];
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let clients = clients.clone();
        let names = names.clone();
        writers.push(tokio::spawn(async move {
            let mut acks: Vec<Ack> = Vec::new();
            let mut seq = 0u32;
            while Instant::now() < deadline {
                seq += 1;
                let c = &clients[(w + seq) as usize % 2];
                let name = &names[(w as usize + seq as usize) % names.len()];
                let Ok(vm) = c.vm(None, name).await else {
                    continue;
                };
                let labels: BTreeMap<String, String> = [
                    ("writer".to_string(), w.to_string()),
                    ("seq".to_string(), seq.to_string()),
                ]
                .into();
                let req = VmUpdate {
                    labels: Some(labels.clone()),
                    if_generation: Some(vm.generation),
                    ..VmUpdate::default()
                };
                if let Ok(updated) = c.update_vm(None, name, &req).await {
                    assert!(
                        updated.generation > vm.generation,
                        "generations only increase"
                    );
                    acks.push((name.clone(), updated.generation, labels));
                }
            }
            acks
        }));
    }
    let mut a = a;
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.child.kill().unwrap(); // the replica that was asked first; it may or may not lead now
    a.child.wait().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart(0).await.unwrap();
    let mut acks = Vec::new();
    for w in writers {
        acks.extend(w.await.unwrap());
    }
    assert!(
        acks.len() > 20,
        "the writers made progress: {} acknowledged updates",
        acks.len()
    );
    let mut by_vm: HashMap<String, Vec<Version>> = HashMap::new();
    for (n, g, l) in acks {
        by_vm.entry(n).or_default().push((g, l));
    }
    for (name, mut list) in by_vm {
        list.sort_by_key(|x| x.0);
        for pair in list.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{name}: two acknowledged updates share generation {}",
                pair[0].0
            );
        }
        let (max_gen, max_labels) = list.last().unwrap().clone();
        let fin = b.client.vm(None, &name).await.unwrap();
        assert!(
            fin.generation >= max_gen,
            "{name}: acknowledged generation {max_gen} lost (now {})",
            fin.generation
        );
        if fin.generation == max_gen {
            assert_eq!(
                fin.spec.labels, max_labels,
                "{name}: the newest acknowledged update is what is stored"
            );
        }
    }
}
