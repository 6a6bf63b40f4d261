//! The agent's main loop: register, heartbeat, re-attach, and dispatch assignment changes to
//! per-VM tasks. When the control plane goes away the VMs keep running and the agent reconnects
//! with back-off; when it comes back the same stream of assignments resumes convergence.

use crate::boot::BootResolver;
use crate::inventory;
use crate::link::{DynLink, LinkError};
use crate::vm_task::{VmCommand, VmTask, VmTaskContext};
use futures::StreamExt;
use panal_driver::{DynDriver, DynVmHandle};
use panal_types::agent::{Assignment, HostRegistration};
use panal_types::host::HostInventory;
use panal_types::vm::HypervisorKind;
use panal_types::{Name, VmId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This host's name.
    pub host: Name,
    /// How often the liveness lease is renewed.
    pub heartbeat: Duration,
    /// Labels for selectors.
    pub labels: BTreeMap<String, String>,
    /// Failure-domain zone.
    pub zone: Option<String>,
    /// Report these CPUs and memory instead of the machine's (simulated hosts).
    pub capacity_override: Option<(u32, u64)>,
    /// Storage pools to report (created if missing).
    pub pools: Vec<inventory::PoolDir>,
    /// Virtual networks on this host (none: VMs with NICs cannot run here).
    pub network: Option<crate::network::NetworkConfig>,
    /// Whether and how this host takes part in live migrations.
    pub migrations: crate::remote::migration_tunnel::Migrations,
    /// How long a pre-copy that does not converge is given before it is abandoned.
    pub migration_patience: Duration,
}

impl AgentConfig {
    /// Defaults for a host name.
    pub fn new(host: Name) -> Self {
        Self {
            host,
            heartbeat: Duration::from_secs(3),
            labels: BTreeMap::new(),
            zone: None,
            capacity_override: None,
            pools: Vec::new(),
            network: None,
            migrations: crate::remote::migration_tunnel::Migrations::Off,
            migration_patience: crate::vm_migration::NO_CONVERGENCE,
        }
    }
}

/// A host agent.
pub struct Agent {
    config: AgentConfig,
    drivers: HashMap<HypervisorKind, DynDriver>,
    link: DynLink,
    boot: Arc<dyn BootResolver>,
    pools: crate::volumes::Pools,
    open_disks: crate::volumes::OpenDisks,
    network: Option<crate::network::HostNetwork>,
}

struct TaskEntry {
    tx: mpsc::UnboundedSender<VmCommand>,
}

impl Agent {
    /// An agent with its drivers and its link to the control plane.
    pub fn new(
        config: AgentConfig,
        drivers: Vec<DynDriver>,
        link: DynLink,
        boot: Arc<dyn BootResolver>,
    ) -> Self {
        let drivers = drivers.into_iter().map(|d| (d.kind(), d)).collect();
        Self {
            pools: crate::volumes::Pools::new(&config.pools),
            open_disks: Default::default(),
            network: config.network.clone().map(crate::network::HostNetwork::new),
            config,
            drivers,
            link,
            boot,
        }
    }

    async fn inventory(&self) -> HostInventory {
        let (cpus, cpu_model, memory_bytes) = inventory::probe();
        let (cpus, memory_bytes) = self
            .config
            .capacity_override
            .unwrap_or((cpus, memory_bytes));
        let mut hypervisors = Vec::new();
        for d in self.drivers.values() {
            hypervisors.push(d.probe().await);
        }
        hypervisors.sort_by_key(|h| h.kind);
        HostInventory {
            cpus,
            cpu_model,
            memory_bytes,
            hypervisors,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            cpu_flags: inventory::cpu_flags(),
            storage: inventory::storage(&self.config.pools),
            tunnel_address: self.config.network.as_ref().map(|n| n.tunnel_address),
            migration_address: self.config.migrations.address(),
        }
    }

    async fn register(&self) {
        let registration = HostRegistration {
            name: self.config.host.clone(),
            inventory: self.inventory().await,
            labels: self.config.labels.clone(),
            zone: self.config.zone.clone(),
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match self.link.register(registration.clone()).await {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Runs until the future is dropped. VMs keep running when it is.
    pub async fn run(self) {
        for p in &self.config.pools {
            if let Err(e) = std::fs::create_dir_all(&p.path) {
                tracing::warn!(pool = %p.name, path = %p.path.display(), error = %e, "cannot create the pool directory");
            }
        }
        self.register().await;
        let heartbeat = {
            let link = self.link.clone();
            let host = self.config.host.clone();
            let every = self.config.heartbeat;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = link.heartbeat(&host).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
            })
        };
        let _heartbeat = AbortOnDrop(heartbeat);
        // Volume work runs beside the VMs; hosts without pools (simulated ones) get none.
        let _volumes = (!self.pools.is_empty()).then(|| {
            AbortOnDrop(tokio::spawn(crate::volumes::run(
                self.config.host.clone(),
                self.link.clone(),
                self.pools.clone(),
                self.open_disks.clone(),
                self.boot.clone(),
            )))
        });
        let _network = self.network.clone().map(|n| {
            AbortOnDrop(tokio::spawn(
                n.run(self.link.clone(), self.config.host.clone()),
            ))
        });
        // VMs whose hypervisor processes outlived a previous agent: handed to their tasks.
        let mut survivors: HashMap<VmId, DynVmHandle> = HashMap::new();
        for d in self.drivers.values() {
            for id in d.list_running().await.unwrap_or_default() {
                match d.attach(id).await {
                    Ok(Some(h)) => {
                        survivors.insert(id, h);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(vm = %id, error = %e, "could not re-attach"),
                }
            }
        }
        if !survivors.is_empty() {
            tracing::info!(count = survivors.len(), "re-attached to running VMs");
        }
        let mut tasks: HashMap<VmId, TaskEntry> = HashMap::new();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.follow_assignments(&mut tasks, &mut survivors).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(e) => tracing::warn!(error = %e, "assignment stream failed; reconnecting"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            self.register().await;
        }
    }

    async fn follow_assignments(
        &self,
        tasks: &mut HashMap<VmId, TaskEntry>,
        survivors: &mut HashMap<VmId, DynVmHandle>,
    ) -> Result<(), LinkError> {
        let mut stream = self.link.assignments(&self.config.host).await?;
        let mut seen: Vec<VmId> = Vec::new();
        let mut synced = false;
        while let Some(item) = stream.next().await {
            match item? {
                Assignment::Upsert { vm } => {
                    if !synced {
                        seen.push(vm.id);
                    }
                    tasks.retain(|_, t| !t.tx.is_closed());
                    if let Some(t) = tasks.get(&vm.id)
                        && t.tx.send(VmCommand::Converge(vm.clone())).is_ok()
                    {
                        continue;
                    }
                    let Some(driver) = self.drivers.get(&vm.spec.hypervisor).cloned() else {
                        tracing::warn!(vm = %vm.id, kind = vm.spec.hypervisor.as_str(), "no such driver on this host");
                        continue;
                    };
                    let ctx = VmTaskContext {
                        host: self.config.host.clone(),
                        driver,
                        link: self.link.clone(),
                        boot: self.boot.clone(),
                        pools: self.pools.clone(),
                        open_disks: self.open_disks.clone(),
                        network: self.network.clone(),
                        migrations: self.config.migrations.clone(),
                        migration_patience: self.config.migration_patience,
                    };
                    let handle = survivors.remove(&vm.id);
                    let (tx, rx) = mpsc::unbounded_channel();
                    let _ = tx.send(VmCommand::Converge(vm.clone()));
                    tokio::spawn(VmTask::new(ctx, handle).run(rx));
                    tasks.insert(vm.id, TaskEntry { tx });
                }
                Assignment::Removed { id } => {
                    if let Some(t) = tasks.remove(&id) {
                        let _ = t.tx.send(VmCommand::Release);
                    }
                }
                Assignment::Synced => {
                    synced = true;
                    // Tasks of VMs that left this host while the stream was down (a migration
                    // unwound, a VM moved or deleted): the control plane no longer sends them.
                    let gone: Vec<VmId> = tasks
                        .keys()
                        .filter(|id| !seen.contains(id))
                        .copied()
                        .collect();
                    for id in gone {
                        if let Some(t) = tasks.remove(&id) {
                            tracing::info!(vm = %id, "no longer assigned here; releasing it");
                            let _ = t.tx.send(VmCommand::Release);
                        }
                    }
                    self.fence_orphans(&seen, survivors).await;
                }
            }
        }
        Ok(())
    }

    /// Stops VMs running here that the control plane does not assign to this host: a VM must
    /// never run on two hosts, and the control plane's word decides where it runs. Then removes
    /// what VMs no longer assigned here left behind while this agent was away (the target of a
    /// migration unwound then, a VM moved or deleted meanwhile).
    async fn fence_orphans(&self, assigned: &[VmId], survivors: &mut HashMap<VmId, DynVmHandle>) {
        let orphans: Vec<VmId> = survivors
            .keys()
            .filter(|id| !assigned.contains(id))
            .copied()
            .collect();
        for id in orphans {
            if let Some(h) = survivors.remove(&id) {
                tracing::warn!(vm = %id, "stopping a VM not assigned to this host");
                let _ = h.kill().await;
                for d in self.drivers.values() {
                    let _ = d.cleanup(id).await;
                }
            }
        }
        for d in self.drivers.values() {
            for id in d.list_present().await.unwrap_or_default() {
                if assigned.contains(&id) || survivors.contains_key(&id) {
                    continue;
                }
                tracing::info!(vm = %id, "removing what a VM no longer assigned here left");
                if let Err(e) = d.cleanup(id).await {
                    tracing::warn!(vm = %id, error = %e, "could not clean up");
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
