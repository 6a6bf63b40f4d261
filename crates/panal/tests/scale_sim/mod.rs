//! A simulated pool in one process, shared by the scale tests and the scale benchmark: the
//! embedded store, the control plane (application layer, controllers, HTTP API on loopback)
//! and N hosts, each a real `panal_agent::Agent` with a `FakeDriver` over its own `FakeWorld`,
//! linked in-process through the same trait remote agents use.

#![allow(dead_code)]

use panal_agent::boot::NoImages;
use panal_agent::{Agent, AgentConfig};
use panal_client::Client;
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_server::auth::{Role, create_token};
use panal_server::controllers::Controllers;
use panal_server::link::InProcessLink;
use panal_server::scheduler::Policy;
use panal_server::{App, AppConfig};
use panal_store::DynStore;
use panal_store::embedded::EmbeddedStore;
use panal_types::Name;
use panal_types::host::{Host, HostState};
use panal_types::vm::{HypervisorKind, VmCreate};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Labels and zone of host `i`.
pub type HostPlacement = fn(usize) -> (BTreeMap<String, String>, Option<String>);

/// What to simulate.
pub struct SimConfig {
    /// Number of hosts.
    pub hosts: usize,
    /// CPUs of each host.
    pub cpus: u32,
    /// Memory of each host.
    pub memory_bytes: u64,
    /// Host lease time-to-live.
    pub lease_ttl: Duration,
    /// Scheduling policy.
    pub policy: Policy,
    /// Labels and zone of host `i`.
    pub placement: HostPlacement,
    /// Latencies of every host's fake driver.
    pub fake: FakeConfig,
}

impl SimConfig {
    /// `hosts` hosts of 16 CPUs and 64 GiB, 10 s leases, default policy, no labels.
    pub fn new(hosts: usize) -> Self {
        Self {
            hosts,
            cpus: 16,
            memory_bytes: 64 << 30,
            lease_ttl: Duration::from_secs(10),
            policy: Policy::default(),
            placement: |_| (BTreeMap::new(), None),
            fake: FakeConfig::default(),
        }
    }
}

/// A running simulated pool. Dropping it stops everything.
pub struct Sim {
    pub app: App,
    pub store: DynStore,
    pub client: Client,
    pub url: String,
    pub token: String,
    /// The simulated machine of each host.
    pub worlds: Vec<Arc<FakeWorld>>,
    agents: Vec<JoinHandle<()>>,
    /// Each host's agent configuration and driver latencies (to start it again).
    agent_cfgs: Vec<(AgentConfig, FakeConfig)>,
    server: JoinHandle<()>,
    controllers: Option<Controllers>,
    policy: Policy,
    _dir: tempfile::TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.server.abort();
        for a in &self.agents {
            a.abort();
        }
    }
}

/// The name of host `i`.
pub fn host_name(i: usize) -> Name {
    Name::parse(&format!("sim-{i:05}")).expect("valid host name")
}

/// A fake VM request.
pub fn fake_vm(name: String, vcpus: u32, memory_bytes: u64) -> VmCreate {
    VmCreate {
        name,
        hypervisor: Some(HypervisorKind::Fake),
        vcpus: Some(vcpus),
        memory_bytes: Some(memory_bytes),
        ..VmCreate::default()
    }
}

impl Sim {
    /// Starts the control plane and every host, and waits until all hosts are registered.
    pub async fn start(cfg: SimConfig) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore = EmbeddedStore::open(&dir.path().join("state.redb")).expect("store");
        let app = App::new(
            store.clone(),
            AppConfig {
                host_lease_ttl: cfg.lease_ttl,
                ..AppConfig::default()
            },
        );
        app.bootstrap().await.expect("bootstrap");
        let token = create_token(app.repo(), "admin", Role::Admin)
            .await
            .expect("token");
        let controllers = Controllers::start(&app, cfg.policy.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = panal_server::api::router(app.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let mut worlds = Vec::with_capacity(cfg.hosts);
        let mut agents = Vec::with_capacity(cfg.hosts);
        let mut agent_cfgs = Vec::with_capacity(cfg.hosts);
        for i in 0..cfg.hosts {
            let world = FakeWorld::new();
            let mut acfg = AgentConfig::new(host_name(i));
            acfg.heartbeat = cfg.lease_ttl / 3;
            acfg.capacity_override = Some((cfg.cpus, cfg.memory_bytes));
            (acfg.labels, acfg.zone) = (cfg.placement)(i);
            agents.push(spawn_agent(&app, &world, acfg.clone(), cfg.fake.clone()));
            agent_cfgs.push((acfg, cfg.fake.clone()));
            worlds.push(world);
        }
        let sim = Sim {
            client: Client::new(&url, &token),
            app,
            store,
            url,
            token,
            worlds,
            agents,
            agent_cfgs,
            server,
            controllers: Some(controllers),
            policy: cfg.policy.clone(),
            _dir: dir,
        };
        sim.wait_for(Duration::from_secs(60), |hosts| {
            hosts.len() == cfg.hosts && hosts.iter().all(|h| h.state == HostState::Ready)
        })
        .await;
        sim
    }

    /// Every host, as the store has them.
    pub async fn hosts(&self) -> Vec<Host> {
        let (hosts, _, _) = self
            .app
            .repo()
            .list::<Host>(panal_server::keys::HOSTS, None, 0)
            .await
            .expect("list hosts");
        hosts.into_iter().map(|v| v.value).collect()
    }

    /// Waits until `cond` holds for the hosts, or panics after `limit`.
    pub async fn wait_for(&self, limit: Duration, cond: impl Fn(&[Host]) -> bool) -> Vec<Host> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let hosts = self.hosts().await;
            if cond(&hosts) {
                return hosts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hosts did not reach the expected state in {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops host `i`'s agent as if its machine died: no more heartbeats, so its lease expires.
    /// Its simulated VMs stay in its world.
    pub fn kill_host(&self, i: usize) {
        self.agents[i].abort();
    }

    /// Starts host `i`'s agent again (after [`Sim::kill_host`]), on the same simulated machine:
    /// it re-attaches to the VMs still running there and registers again.
    pub fn revive_host(&mut self, i: usize) {
        self.agents[i].abort();
        let (acfg, fake) = self.agent_cfgs[i].clone();
        self.agents[i] = spawn_agent(&self.app, &self.worlds[i], acfg, fake);
    }

    /// The hosts whose simulated machine runs VM `id`.
    pub fn hosts_running(&self, id: panal_types::VmId) -> Vec<usize> {
        (0..self.worlds.len())
            .filter(|&i| self.worlds[i].resources(id).is_some())
            .collect()
    }

    /// Total running simulated VMs over all hosts.
    pub fn running(&self) -> usize {
        self.worlds.iter().map(|w| w.running_count()).sum()
    }

    /// Stops the controllers and starts them afresh, as a new leader would.
    pub async fn restart_controllers(&mut self) {
        self.stop_controllers().await;
        self.controllers = Some(Controllers::start(&self.app, self.policy.clone()));
    }

    /// Stops the controllers and waits until they are gone.
    pub async fn stop_controllers(&mut self) {
        if let Some(c) = self.controllers.take() {
            c.stop().await;
        }
    }
}

fn spawn_agent(
    app: &App,
    world: &Arc<FakeWorld>,
    acfg: AgentConfig,
    fake: FakeConfig,
) -> JoinHandle<()> {
    let driver = Arc::new(FakeDriver::new(world.clone(), fake));
    let agent = Agent::new(
        acfg,
        vec![driver],
        Arc::new(InProcessLink::new(app.clone())),
        Arc::new(NoImages),
    );
    tokio::spawn(agent.run())
}
