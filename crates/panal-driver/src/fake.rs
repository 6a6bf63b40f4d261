//! The `fake` driver: simulated VMs with configurable latencies and injectable failures, so the
//! control plane can be tested at scale (thousands of hosts, tens of thousands of VMs) in one
//! process. Never a stand-in for a real hypervisor in an end-to-end test.
//!
//! Simulated VMs live in a [`FakeWorld`], which plays the role of the host's process table: it
//! outlives a driver instance, so an agent that restarts on the same world re-attaches to its VMs
//! exactly as it would to QEMU processes. With a state file the world also survives a restart of
//! the whole process.

use crate::{
    Driver, DriverError, DynVmHandle, ResizeOutcome, ResizeRequest, RuntimeState, VmExit, VmHandle,
    VmLaunch, caps,
};
use async_trait::async_trait;
use panal_types::VmId;
use panal_types::host::{Accelerator, HypervisorInfo};
use panal_types::vm::HypervisorKind;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Latencies and failures of the simulation.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// Time a launch takes.
    pub launch_latency: Duration,
    /// Time a shutdown or kill takes.
    pub stop_latency: Duration,
}

/// A failure to inject into the next matching call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeFailure {
    /// The next launch of any VM fails with this reason.
    NextLaunch(String),
    /// The next launch of this VM fails.
    LaunchOf(VmId, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum SimState {
    Running,
    Paused,
}

struct SimVm {
    state: SimState,
    vcpus: u32,
    memory_bytes: u64,
    exit_tx: watch::Sender<Option<VmExit>>,
}

/// The simulated host: which fake VMs are "running". Shared by every driver on the host.
#[derive(Default)]
pub struct FakeWorld {
    vms: Mutex<HashMap<VmId, SimVm>>,
    failures: Mutex<Vec<FakeFailure>>,
    state_file: Option<PathBuf>,
}

impl FakeWorld {
    /// A world kept only in memory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A world persisted to `path`, so simulated VMs survive a restart of the process.
    pub fn persistent(path: PathBuf) -> Arc<Self> {
        let world = Self {
            state_file: Some(path.clone()),
            ..Self::default()
        };
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(saved) = serde_json::from_slice::<Vec<(VmId, SimState, u32, u64)>>(&bytes)
        {
            let mut vms = world.vms.lock();
            for (id, state, vcpus, memory_bytes) in saved {
                vms.insert(
                    id,
                    SimVm {
                        state,
                        vcpus,
                        memory_bytes,
                        exit_tx: watch::channel(None).0,
                    },
                );
            }
        }
        Arc::new(world)
    }

    /// Queues a failure for a later call.
    pub fn inject(&self, failure: FakeFailure) {
        self.failures.lock().push(failure);
    }

    /// Simulates the hypervisor process of `id` dying (like `kill -9` of QEMU).
    pub fn crash(&self, id: VmId, why: &str) -> bool {
        let vm = self.vms.lock().remove(&id);
        self.save();
        match vm {
            Some(vm) => {
                let _ = vm.exit_tx.send(Some(VmExit::Crashed(why.to_owned())));
                true
            }
            None => false,
        }
    }

    /// Simulates the guest powering itself off.
    pub fn guest_poweroff(&self, id: VmId) -> bool {
        self.end(id, VmExit::Shutdown)
    }

    /// Number of simulated VMs running.
    pub fn running_count(&self) -> usize {
        self.vms.lock().len()
    }

    /// vCPUs and memory of a running simulated VM.
    pub fn resources(&self, id: VmId) -> Option<(u32, u64)> {
        self.vms.lock().get(&id).map(|v| (v.vcpus, v.memory_bytes))
    }

    fn end(&self, id: VmId, exit: VmExit) -> bool {
        let vm = self.vms.lock().remove(&id);
        self.save();
        match vm {
            Some(vm) => {
                let _ = vm.exit_tx.send(Some(exit));
                true
            }
            None => false,
        }
    }

    fn take_failure(&self, id: VmId) -> Option<String> {
        let mut failures = self.failures.lock();
        let pos = failures.iter().position(|f| match f {
            FakeFailure::NextLaunch(_) => true,
            FakeFailure::LaunchOf(v, _) => *v == id,
        })?;
        match failures.remove(pos) {
            FakeFailure::NextLaunch(r) | FakeFailure::LaunchOf(_, r) => Some(r),
        }
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let saved: Vec<(VmId, SimState, u32, u64)> = self
            .vms
            .lock()
            .iter()
            .map(|(id, v)| (*id, v.state, v.vcpus, v.memory_bytes))
            .collect();
        // Write-then-rename so a crash never leaves a torn file.
        let tmp = path.with_extension("tmp");
        if let Ok(bytes) = serde_json::to_vec(&saved)
            && std::fs::write(&tmp, bytes).is_ok()
        {
            let _ = std::fs::rename(&tmp, path);
        }
    }
}

/// The fake driver.
pub struct FakeDriver {
    world: Arc<FakeWorld>,
    config: FakeConfig,
}

impl FakeDriver {
    /// A driver over `world`.
    pub fn new(world: Arc<FakeWorld>, config: FakeConfig) -> Self {
        Self { world, config }
    }

    fn handle(&self, id: VmId, exit_rx: watch::Receiver<Option<VmExit>>) -> DynVmHandle {
        Arc::new(FakeVm {
            id,
            world: self.world.clone(),
            exit_rx,
            stop_latency: self.config.stop_latency,
        })
    }
}

async fn pause_for(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Fake
    }

    async fn probe(&self) -> HypervisorInfo {
        HypervisorInfo {
            kind: HypervisorKind::Fake,
            available: true,
            detail: "simulated".into(),
            accelerator: Accelerator::None,
            capabilities: [
                caps::PAUSE,
                caps::LIVE_RESIZE_MEMORY,
                caps::LIVE_RESIZE_VCPUS,
                caps::REATTACH,
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    async fn launch(&self, spec: &VmLaunch) -> Result<DynVmHandle, DriverError> {
        pause_for(self.config.launch_latency).await;
        if let Some(reason) = self.world.take_failure(spec.id) {
            return Err(DriverError::Launch(reason));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        {
            let mut vms = self.world.vms.lock();
            if let Some(existing) = vms.get(&spec.id) {
                // Idempotent: launching a running VM hands back the running one.
                let rx = existing.exit_tx.subscribe();
                drop(vms);
                return Ok(self.handle(spec.id, rx));
            }
            vms.insert(
                spec.id,
                SimVm {
                    state: SimState::Running,
                    vcpus: spec.vcpus,
                    memory_bytes: spec.memory_bytes,
                    exit_tx,
                },
            );
        }
        self.world.save();
        Ok(self.handle(spec.id, exit_rx))
    }

    async fn attach(&self, id: VmId) -> Result<Option<DynVmHandle>, DriverError> {
        let rx = self
            .world
            .vms
            .lock()
            .get(&id)
            .map(|v| v.exit_tx.subscribe());
        Ok(rx.map(|rx| self.handle(id, rx)))
    }

    async fn list_running(&self) -> Result<Vec<VmId>, DriverError> {
        Ok(self.world.vms.lock().keys().copied().collect())
    }

    async fn cleanup(&self, _id: VmId) -> Result<(), DriverError> {
        Ok(())
    }
}

struct FakeVm {
    id: VmId,
    world: Arc<FakeWorld>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    stop_latency: Duration,
}

impl FakeVm {
    fn set_state(&self, state: SimState) -> Result<(), DriverError> {
        let mut vms = self.world.vms.lock();
        let vm = vms
            .get_mut(&self.id)
            .ok_or(DriverError::NotRunning(self.id))?;
        vm.state = state;
        drop(vms);
        self.world.save();
        Ok(())
    }
}

#[async_trait]
impl VmHandle for FakeVm {
    fn id(&self) -> VmId {
        self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit_rx.clone()
    }

    async fn state(&self) -> Result<RuntimeState, DriverError> {
        if let Some(exit) = self.exit_rx.borrow().clone() {
            return Ok(RuntimeState::Exited(exit));
        }
        match self.world.vms.lock().get(&self.id).map(|v| v.state) {
            Some(SimState::Running) => Ok(RuntimeState::Running),
            Some(SimState::Paused) => Ok(RuntimeState::Paused),
            None => Ok(RuntimeState::Exited(VmExit::Shutdown)),
        }
    }

    async fn shutdown(&self, _timeout: Duration) -> Result<(), DriverError> {
        pause_for(self.stop_latency).await;
        self.world.end(self.id, VmExit::Shutdown);
        Ok(())
    }

    async fn kill(&self) -> Result<(), DriverError> {
        pause_for(self.stop_latency).await;
        self.world.end(self.id, VmExit::Shutdown);
        Ok(())
    }

    async fn pause(&self) -> Result<(), DriverError> {
        self.set_state(SimState::Paused)
    }

    async fn resume(&self) -> Result<(), DriverError> {
        self.set_state(SimState::Running)
    }

    async fn reboot(&self) -> Result<(), DriverError> {
        self.set_state(SimState::Running)
    }

    async fn resize(&self, req: &ResizeRequest) -> Result<ResizeOutcome, DriverError> {
        let mut vms = self.world.vms.lock();
        let vm = vms
            .get_mut(&self.id)
            .ok_or(DriverError::NotRunning(self.id))?;
        if req.vcpus == Some(0) || req.memory_bytes == Some(0) {
            return Err(DriverError::Invalid("cannot resize to zero".into()));
        }
        if let Some(v) = req.vcpus {
            vm.vcpus = v;
        }
        if let Some(m) = req.memory_bytes {
            vm.memory_bytes = m;
        }
        drop(vms);
        self.world.save();
        Ok(ResizeOutcome {
            applied_live: true,
            pending_reboot: vec![],
        })
    }

    // Simulated disks need no device model: hot-plug succeeds while the VM exists.
    async fn attach_disk(&self, _disk: &crate::DataDisk) -> Result<(), DriverError> {
        self.alive()
    }

    async fn detach_disk(&self, _id: &str) -> Result<(), DriverError> {
        self.alive()
    }

    async fn grow_disk(&self, _id: &str, _size_bytes: u64) -> Result<(), DriverError> {
        self.alive()
    }

    async fn snapshot_disks(
        &self,
        _ids: &[String],
        _name: &str,
        _step: panal_types::volume::SnapshotStep,
    ) -> Result<Duration, DriverError> {
        self.alive().map(|()| Duration::ZERO)
    }
}

impl FakeVm {
    fn alive(&self) -> Result<(), DriverError> {
        if self.world.vms.lock().contains_key(&self.id) {
            Ok(())
        } else {
            Err(DriverError::NotRunning(self.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BootSource;
    use panal_types::vm::MachineProfile;

    fn launch_spec(id: VmId) -> VmLaunch {
        VmLaunch {
            id,
            display_name: "default/t".into(),
            vcpus: 1,
            memory_bytes: 1 << 28,
            machine: MachineProfile::Q35,
            boot: BootSource::None,
            disks: vec![],
            nics: vec![],
            hotplug_slots: 4,
            incoming: None,
            post_copy: false,
        }
    }

    #[tokio::test]
    async fn lifecycle_and_reattach() {
        let world = FakeWorld::new();
        let d = FakeDriver::new(world.clone(), FakeConfig::default());
        let id = VmId::new();
        let h = d.launch(&launch_spec(id)).await.unwrap();
        assert_eq!(h.state().await.unwrap(), RuntimeState::Running);
        h.pause().await.unwrap();
        // A second driver on the same world (an agent restart) sees the paused VM.
        let d2 = FakeDriver::new(world.clone(), FakeConfig::default());
        let h2 = d2.attach(id).await.unwrap().expect("still running");
        assert_eq!(h2.state().await.unwrap(), RuntimeState::Paused);
        h2.shutdown(Duration::from_secs(1)).await.unwrap();
        assert_eq!(*h.exit_watch().borrow(), Some(VmExit::Shutdown));
        assert!(d2.attach(id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn injected_failures_and_crashes() {
        let world = FakeWorld::new();
        let d = FakeDriver::new(world.clone(), FakeConfig::default());
        let id = VmId::new();
        world.inject(FakeFailure::LaunchOf(id, "no room".into()));
        assert!(
            matches!(d.launch(&launch_spec(id)).await, Err(DriverError::Launch(r)) if r == "no room")
        );
        let h = d.launch(&launch_spec(id)).await.unwrap();
        let mut exit = h.exit_watch();
        assert!(world.crash(id, "killed"));
        exit.changed().await.unwrap();
        assert!(matches!(&*exit.borrow(), Some(VmExit::Crashed(r)) if r == "killed"));
    }

    #[tokio::test]
    async fn persistent_world_survives_a_new_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fake.json");
        let id = VmId::new();
        {
            let d = FakeDriver::new(FakeWorld::persistent(path.clone()), FakeConfig::default());
            d.launch(&launch_spec(id)).await.unwrap();
        }
        let d = FakeDriver::new(FakeWorld::persistent(path), FakeConfig::default());
        assert_eq!(d.list_running().await.unwrap(), vec![id]);
    }
}
