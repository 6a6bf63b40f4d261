//! One task per VM: it owns the VM's hypervisor handle, receives the VM's latest record as typed
//! commands, and converges the hypervisor to it step by step, reporting each observed state.
//!
//! Protocol: the agent sends `Converge(vm)` whenever the record changes and `Release` when the VM
//! leaves this host. Between commands the task also wakes when the hypervisor process exits, and
//! when a restart back-off ends. Every step is idempotent, so converging twice is harmless.

mod migration;

use crate::boot::BootResolver;
use crate::link::DynLink;
use crate::vm_migration::Reporter;
use migration::MigrationWork;
use panal_driver::{
    BootSource, DataDisk, DriverError, DynDriver, DynVmHandle, ResizeRequest, RuntimeState, VmExit,
    VmLaunch,
};
use panal_types::Name;
use panal_types::agent::VmStatusReport;
use panal_types::vm::{PowerState, RestartPolicy, Vm, VmPhase};
use panal_types::volume::DiskAttachment;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A command to a VM task.
#[derive(Debug)]
pub enum VmCommand {
    /// Converge to this record.
    Converge(Box<Vm>),
    /// The VM left this host: stop it and clean up without reporting.
    Release,
}

/// What a VM task needs from the agent.
pub struct VmTaskContext {
    /// This host.
    pub host: Name,
    /// The VM's driver.
    pub driver: DynDriver,
    /// The control plane.
    pub link: DynLink,
    /// Resolves boot sources.
    pub boot: Arc<dyn BootResolver>,
    /// This host's storage pools (where attached volumes live).
    pub pools: crate::volumes::Pools,
    /// Which VM has which volume open, for snapshot work.
    pub open_disks: crate::volumes::OpenDisks,
    /// The host's virtual networks (`None`: VMs with NICs cannot start here).
    pub network: Option<crate::network::HostNetwork>,
    /// Whether and how this host takes part in live migrations.
    pub migrations: crate::remote::migration_tunnel::Migrations,
    /// How long a pre-copy that does not converge is given before it is abandoned.
    pub migration_patience: Duration,
}

/// A launch that takes longer than this is reported as `Starting` while it goes on; a faster one
/// (the fake driver, a cached microvm) is reported once, as `Running` or `Failed`. One report
/// is one store transaction on the control plane, so at scale this halves the writes per start.
const STARTING_REPORT_AFTER: Duration = Duration::from_millis(100);

/// How long a launch waits for the host's network plumbing of its NICs.
const NIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest restart back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The state of one VM task.
pub struct VmTask {
    ctx: VmTaskContext,
    vm: Option<Box<Vm>>,
    handle: Option<DynVmHandle>,
    /// Size the running hypervisor was given (to notice resizes).
    applied: Option<(u32, u64)>,
    /// Volumes the running hypervisor has (to notice attach, detach and growth).
    disks: Vec<DiskAttachment>,
    /// NICs the running hypervisor has (to notice plugs and unplugs).
    nics: Vec<panal_types::network::Nic>,
    /// The hypervisor last ended uncleanly, or this agent never saw it end: check the volumes
    /// (`qemu-img check`) before they are opened again.
    check_disks: bool,
    restarts: u32,
    restart_at: Option<Instant>,
    /// Restart nonce acted on.
    restart_nonce: u64,
    last_report: Option<VmStatusReport>,
    /// Revision of the record being converged when `last_report` was sent: a report equal to it
    /// while converging that same record says nothing new, though the record does not show it yet.
    last_report_for: u64,
    failure: Option<String>,
    /// The generation whose launch failed: not retried until the spec changes.
    failed_generation: Option<u64>,
    /// A live migration this host takes part in.
    migration: Option<MigrationWork>,
}

impl VmTask {
    /// A task, possibly re-attached to a running hypervisor.
    pub fn new(ctx: VmTaskContext, handle: Option<DynVmHandle>) -> Self {
        // With a running hypervisor the flag is cleared at the next clean launch anyway.
        Self {
            ctx,
            vm: None,
            handle,
            applied: None,
            disks: Vec::new(),
            nics: Vec::new(),
            check_disks: true,
            restarts: 0,
            restart_at: None,
            restart_nonce: 0,
            last_report: None,
            last_report_for: 0,
            failure: None,
            failed_generation: None,
            migration: None,
        }
    }

    /// Runs until the VM is deleted or released.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<VmCommand>) {
        let mut first = true;
        loop {
            let exit_watch = self.handle.as_ref().map(|h| h.exit_watch());
            let restart_at = self.restart_at;
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(VmCommand::Converge(vm)) => {
                        if first {
                            // Adopt the record's restart nonce and size for a re-attached VM.
                            self.restart_nonce = vm.status.observed_restart_nonce;
                            self.restarts = vm.status.restarts;
                            if self.handle.is_some() {
                                self.applied = Some((vm.spec.vcpus, vm.spec.memory_bytes));
                                self.disks = vm.spec.volumes.clone();
                            }
                            first = false;
                        }
                        self.vm = Some(vm);
                    }
                    Some(VmCommand::Release) => {
                        self.release().await;
                        self.disks.clear();
                        self.nics.clear();
                        self.publish_disks();
                        return;
                    }
                    // The agent itself is going away: leave the VM running for the next agent.
                    None => return,
                },
                exit = wait_exit(exit_watch) => self.on_exit(exit).await,
                _ = sleep_until(restart_at) => self.restart_at = None,
            }
            let finished = self.converge().await;
            self.publish_disks();
            if finished {
                return;
            }
        }
    }

    /// Tells the volume worker which volumes this VM's hypervisor has open now.
    fn publish_disks(&self) {
        if let Some(vm) = &self.vm {
            let handle = if self.disks.is_empty() {
                None
            } else {
                self.handle.as_ref()
            };
            self.ctx.open_disks.publish(vm.id, handle, &self.disks);
        }
    }

    async fn release(&mut self) {
        tracing::info!(vm = ?self.vm.as_ref().map(|v| v.id), "no longer on this host: stopping and cleaning up");
        if let Some(w) = self.migration.take() {
            // The target of a migration that was unwound: the copies it received are garbage.
            for f in &w.created {
                let _ = tokio::fs::remove_file(f).await;
            }
        }
        if let Some(h) = self.handle.take() {
            let _ = h.kill().await;
        }
        if let Some(vm) = &self.vm {
            let _ = self.ctx.driver.cleanup(vm.id).await;
        }
    }

    /// The hypervisor process ended: apply the restart policy or report the stop.
    async fn on_exit(&mut self, exit: VmExit) {
        self.handle = None;
        self.applied = None;
        self.disks.clear();
        self.nics.clear();
        if exit.is_failure() {
            self.check_disks = true;
        }
        let Some(vm) = self.vm.clone() else { return };
        if let Some(m) = self.incoming_migration(&vm) {
            // An incoming hypervisor ended before the VM was placed here: the migration failed
            // (the control plane unwinds it, and this task is released).
            let reporter = Reporter::new(self.ctx.host.clone(), self.ctx.link.clone(), &vm, &m);
            reporter
                .send(panal_types::migration::MigrationEvent::DestinationFailed {
                    reason: describe(&exit),
                })
                .await;
            return;
        }
        // No driver cleanup here: the run directory holds the VM's disk overlay and console
        // history, which outlive a stop; only delete and release remove them.
        let wanted_running = vm.spec.power_state != PowerState::Stopped && !vm.spec.deleted;
        if !wanted_running {
            return;
        }
        let restart = match vm.spec.restart_policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit.is_failure(),
            RestartPolicy::Never => false,
        };
        let why = describe(&exit);
        if restart {
            self.restarts += 1;
            let backoff = Duration::from_secs(1u64 << self.restarts.min(5).saturating_sub(1))
                .min(MAX_BACKOFF);
            self.restart_at = Some(Instant::now() + backoff);
            self.failure = Some(format!("{why}; restarting in {}s", backoff.as_secs()));
            self.report(
                &vm,
                VmPhase::Failed,
                Some((
                    "Restarting",
                    format!("{why}; restart {} in {}s", self.restarts, backoff.as_secs()),
                )),
                false,
            )
            .await;
        } else if exit.is_failure() {
            self.failure = Some(why.clone());
            self.report(&vm, VmPhase::Failed, Some(("Failed", why)), false)
                .await;
        } else {
            // The guest powered itself off and the policy keeps it off.
            self.report(&vm, VmPhase::Stopped, Some(("GuestShutdown", why)), true)
                .await;
        }
    }

    /// One convergence pass. Returns true when the task is finished (VM deleted).
    async fn converge(&mut self) -> bool {
        let Some(vm) = self.vm.clone() else {
            return false;
        };
        if vm.spec.deleted {
            if let Some(h) = self.handle.take() {
                let _ = h.kill().await;
            }
            let _ = self.ctx.driver.cleanup(vm.id).await;
            let mut r = self.base_report(&vm, VmPhase::Stopped);
            r.cleaned_up = true;
            r.event = Some(("Deleted".into(), format!("removed from {}", self.ctx.host)));
            if let Err(e) = self.ctx.link.report(&self.ctx.host, r).await {
                tracing::warn!(vm = %vm.id, error = %e, "could not report deletion");
                return false;
            }
            return true;
        }
        if let Some(m) = self.incoming_migration(&vm) {
            self.converge_incoming(&vm, &m).await;
            return false;
        }
        match vm.status.migration.clone() {
            Some(m) if vm.status.host.as_ref() == Some(&self.ctx.host) => {
                // The VM leaves: nothing but the transfer touches it until it has ended.
                self.converge_outgoing(&vm, &m).await;
                return false;
            }
            _ => {
                if self.migration.as_ref().is_some_and(|w| {
                    vm.status.migration.as_ref().map(|m| m.operation) != Some(w.operation)
                }) {
                    // The migration ended. Here as its target, the guest is ours: the disks
                    // served for the copy must be let go whether or not the watching job got
                    // to it (exports left behind would keep this VM from ever migrating again).
                    if let Some(h) = &self.handle
                        && vm.status.host.as_ref() == Some(&self.ctx.host)
                        && let Err(e) = h.unexport_disks().await
                    {
                        tracing::warn!(vm = %vm.id, error = %e, "could not stop serving the disks");
                    }
                    self.migration = None;
                }
            }
        }
        match vm.spec.power_state {
            PowerState::Running | PowerState::Paused => self.converge_running(&vm).await,
            PowerState::Stopped => self.converge_stopped(&vm).await,
        }
        false
    }

    async fn converge_running(&mut self, vm: &Vm) {
        if self.handle.is_none() {
            // A pending restart back-off, or a launch that failed for this generation, waits.
            if self.restart_at.is_some() {
                return;
            }
            if self.failed_generation == Some(vm.generation) {
                return;
            }
            let launch = self.launch(vm, None, false);
            tokio::pin!(launch);
            let launched = match tokio::time::timeout(STARTING_REPORT_AFTER, &mut launch).await {
                Ok(r) => r,
                Err(_) => {
                    self.send_starting(vm).await;
                    launch.await
                }
            };
            match launched {
                Ok(h) => {
                    self.handle = Some(h);
                    self.applied = Some((vm.spec.vcpus, vm.spec.memory_bytes));
                    self.disks = vm.spec.volumes.clone();
                    self.nics = vm.spec.nics.clone();
                    self.check_disks = false;
                    self.restart_nonce = vm.spec.restart_nonce;
                    self.failure = None;
                    self.failed_generation = None;
                    self.report(
                        vm,
                        VmPhase::Running,
                        Some(("Started", format!("started on {}", self.ctx.host))),
                        false,
                    )
                    .await;
                }
                Err(e) => {
                    let why = e.to_string();
                    self.failure = Some(why.clone());
                    self.failed_generation = Some(vm.generation);
                    self.report(vm, VmPhase::Failed, Some(("FailedToStart", why)), false)
                        .await;
                }
            }
            if vm.spec.power_state != PowerState::Paused {
                return;
            }
        }
        let Some(h) = self.handle.clone() else { return };
        // Disk changes first: every later report carries this generation, which completes the
        // operation that asked for them.
        self.apply_disks(vm, &h).await;
        self.apply_nics(vm, &h).await;
        if vm.spec.restart_nonce > self.restart_nonce {
            let r = h.reboot().await;
            self.restart_nonce = vm.spec.restart_nonce;
            let event = match r {
                Ok(()) => ("Restarted", "guest reset".to_string()),
                Err(e) => ("RestartFailed", e.to_string()),
            };
            self.report(vm, VmPhase::Running, Some((event.0, event.1)), false)
                .await;
        }
        if let Some((vcpus, mem)) = self.applied
            && (vcpus != vm.spec.vcpus || mem != vm.spec.memory_bytes)
        {
            let req = ResizeRequest {
                vcpus: (vcpus != vm.spec.vcpus).then_some(vm.spec.vcpus),
                memory_bytes: (mem != vm.spec.memory_bytes).then_some(vm.spec.memory_bytes),
            };
            self.applied = Some((vm.spec.vcpus, vm.spec.memory_bytes));
            let event = match h.resize(&req).await {
                Ok(o) if o.pending_reboot.is_empty() => ("Resized", "applied live".to_string()),
                Ok(o) => (
                    "ResizePending",
                    format!("applied at next boot: {}", o.pending_reboot.join(", ")),
                ),
                Err(e) => ("ResizeFailed", e.to_string()),
            };
            let phase = self.observed_phase(&h).await;
            self.report(vm, phase, Some((event.0, event.1)), false)
                .await;
        }
        let state = h.state().await;
        let phase = match (vm.spec.power_state, state) {
            (PowerState::Paused, Ok(RuntimeState::Running)) => match h.pause().await {
                Ok(()) => VmPhase::Paused,
                Err(e) => {
                    self.report(
                        vm,
                        VmPhase::Running,
                        Some(("PauseFailed", e.to_string())),
                        false,
                    )
                    .await;
                    return;
                }
            },
            (PowerState::Running, Ok(RuntimeState::Paused)) => match h.resume().await {
                Ok(()) => VmPhase::Running,
                Err(e) => {
                    self.report(
                        vm,
                        VmPhase::Paused,
                        Some(("ResumeFailed", e.to_string())),
                        false,
                    )
                    .await;
                    return;
                }
            },
            (_, Ok(RuntimeState::Paused)) => VmPhase::Paused,
            (_, Ok(RuntimeState::Exited(_))) => return, // the exit watch fires next
            _ => VmPhase::Running,
        };
        self.report(vm, phase, None, false).await;
    }

    async fn converge_stopped(&mut self, vm: &Vm) {
        self.restart_at = None;
        self.restarts = 0;
        self.failure = None;
        self.failed_generation = None;
        if let Some(h) = self.handle.take() {
            self.report(vm, VmPhase::Stopping, None, false).await;
            let result = if vm.spec.force_stop {
                h.kill().await
            } else {
                h.shutdown(Duration::from_secs(u64::from(vm.spec.stop_timeout_secs)))
                    .await
            };
            if let Err(e) = result {
                tracing::warn!(vm = %vm.id, error = %e, "stop failed; forcing");
                let _ = h.kill().await;
            }
            self.applied = None;
            self.disks.clear();
            self.nics.clear();
            let how = if vm.spec.force_stop {
                "powered off"
            } else {
                "shut down"
            };
            self.report(
                vm,
                VmPhase::Stopped,
                Some(("Stopped", how.to_string())),
                false,
            )
            .await;
            return;
        }
        self.report(vm, VmPhase::Stopped, None, false).await;
    }

    async fn observed_phase(&self, h: &DynVmHandle) -> VmPhase {
        match h.state().await {
            Ok(RuntimeState::Paused) => VmPhase::Paused,
            _ => VmPhase::Running,
        }
    }

    /// Launches the hypervisor. The future owns what it needs, so the task can report while
    /// a slow launch goes on. Volumes are checked first after an unclean end.
    fn launch(
        &self,
        vm: &Vm,
        incoming: Option<panal_driver::Incoming>,
        post_copy: bool,
    ) -> impl Future<Output = Result<DynVmHandle, DriverError>> + use<> {
        let (boot, driver, vm) = (self.ctx.boot.clone(), self.ctx.driver.clone(), vm.clone());
        let (pools, check_disks) = (self.ctx.pools.clone(), self.check_disks);
        let network = self.ctx.network.clone();
        async move {
            let mut nics = Vec::with_capacity(vm.spec.nics.len());
            for n in &vm.spec.nics {
                nics.push(nic_for_driver(network.as_ref(), n).await?);
            }
            let boot = if vm.spec.volumes.first().is_some_and(|d| d.boot) {
                BootSource::FirstDisk
            } else {
                boot.resolve(&vm).await.map_err(DriverError::Launch)?
            };
            let mut disks = Vec::with_capacity(vm.spec.volumes.len());
            for d in &vm.spec.volumes {
                let disk = prepare_disk(&pools, d).await.map_err(DriverError::Launch)?;
                if check_disks {
                    let repaired = crate::volumes::check_and_repair(&disk.path, d.format)
                        .await
                        .map_err(|e| DriverError::Launch(format!("volume {}: {e}", d.volume)))?;
                    if let Some(what) = repaired {
                        tracing::warn!(vm = %vm.id, volume = %d.volume, "{what}");
                    }
                }
                disks.push(disk);
            }
            let spec = VmLaunch {
                id: vm.id,
                display_name: format!("{}/{}", vm.project, vm.name),
                vcpus: vm.spec.vcpus,
                memory_bytes: vm.spec.memory_bytes,
                machine: vm.spec.machine,
                boot,
                disks,
                nics,
                hotplug_slots: vm.spec.hotplug_slots,
                post_copy: incoming.is_some() && post_copy,
                incoming,
            };
            driver.launch(&spec).await
        }
    }

    /// Reports `Starting` for a launch that is taking a while (see [`STARTING_REPORT_AFTER`]).
    /// Not remembered as the last report: the launch's outcome follows at once.
    async fn send_starting(&self, vm: &Vm) {
        let r = self.base_report(vm, VmPhase::Starting);
        if let Err(e) = self.ctx.link.report(&self.ctx.host, r).await {
            tracing::warn!(vm = %vm.id, error = %e, "status report failed");
        }
    }

    /// Brings the running VM's disks to the spec: unplug what left, plug what came, grow what
    /// grew. Each change is an event; a failed one is an event ending in `Failed`, which fails
    /// the operation that asked for it.
    async fn apply_disks(&mut self, vm: &Vm, h: &DynVmHandle) {
        if self.disks == vm.spec.volumes {
            return;
        }
        let gone: Vec<DiskAttachment> = self
            .disks
            .iter()
            .filter(|d| !vm.spec.volumes.iter().any(|w| w.id == d.id))
            .cloned()
            .collect();
        for d in gone {
            let event = match h.detach_disk(&d.id.to_string()).await {
                Ok(()) => {
                    self.disks.retain(|x| x.id != d.id);
                    ("DiskDetached", format!("volume {} detached", d.volume))
                }
                Err(e) => (
                    "DetachFailed",
                    format!("detaching volume {}: {e}", d.volume),
                ),
            };
            self.report(vm, VmPhase::Running, Some(event), false).await;
        }
        for w in &vm.spec.volumes {
            let event = match self.disks.iter().position(|d| d.id == w.id) {
                None => {
                    let plugged = match prepare_disk(&self.ctx.pools, w).await {
                        Ok(disk) => h.attach_disk(&disk).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    match plugged {
                        Ok(()) => {
                            self.disks.push(w.clone());
                            ("DiskAttached", format!("volume {} attached", w.volume))
                        }
                        Err(e) => (
                            "AttachFailed",
                            format!("attaching volume {}: {e}", w.volume),
                        ),
                    }
                }
                Some(i) if self.disks[i].size_bytes < w.size_bytes => {
                    match h.grow_disk(&w.id.to_string(), w.size_bytes).await {
                        Ok(()) => {
                            self.disks[i].size_bytes = w.size_bytes;
                            (
                                "DiskResized",
                                format!("volume {} grown to {} bytes", w.volume, w.size_bytes),
                            )
                        }
                        Err(e) => (
                            "DiskResizeFailed",
                            format!("growing volume {}: {e}", w.volume),
                        ),
                    }
                }
                Some(_) => continue,
            };
            self.report(vm, VmPhase::Running, Some(event), false).await;
        }
    }

    /// Brings the running VM's NICs to the spec: unplug what left, plug what came (once the
    /// host's network has its tap). Each change is an event; a failed one fails the operation.
    async fn apply_nics(&mut self, vm: &Vm, h: &DynVmHandle) {
        if self.nics == vm.spec.nics {
            return;
        }
        let gone: Vec<panal_types::network::Nic> = self
            .nics
            .iter()
            .filter(|n| !vm.spec.nics.iter().any(|w| w.id == n.id))
            .cloned()
            .collect();
        for n in gone {
            let event = match h.detach_nic(&n.id).await {
                Ok(()) => {
                    self.nics.retain(|x| x.id != n.id);
                    (
                        "NicRemoved",
                        format!("NIC {} on {} unplugged", n.id, n.network),
                    )
                }
                Err(e) => ("NicRemoveFailed", format!("unplugging NIC {}: {e}", n.id)),
            };
            self.report(vm, VmPhase::Running, Some(event), false).await;
        }
        for w in &vm.spec.nics {
            if self.nics.iter().any(|n| n.id == w.id) {
                continue;
            }
            let plugged = match nic_for_driver(self.ctx.network.as_ref(), w).await {
                Ok(nic) => h.attach_nic(&nic).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let event = match plugged {
                Ok(()) => {
                    self.nics.push(w.clone());
                    ("NicAdded", format!("NIC {} on {} plugged", w.id, w.network))
                }
                Err(e) => ("NicAddFailed", format!("plugging NIC {}: {e}", w.id)),
            };
            self.report(vm, VmPhase::Running, Some(event), false).await;
        }
    }

    fn base_report(&self, vm: &Vm, phase: VmPhase) -> VmStatusReport {
        VmStatusReport {
            id: vm.id,
            project: vm.project.clone(),
            name: vm.name.clone(),
            phase,
            reason: if phase == VmPhase::Failed {
                self.failure.clone()
            } else {
                None
            },
            observed_generation: vm.generation,
            observed_restart_nonce: self.restart_nonce.max(if phase == VmPhase::Running {
                0
            } else {
                vm.status.observed_restart_nonce
            }),
            restarts: self.restarts,
            event: None,
            stopped_by_guest: false,
            cleaned_up: false,
        }
    }

    /// Sends a report unless it says nothing new.
    async fn report(
        &mut self,
        vm: &Vm,
        phase: VmPhase,
        event: Option<(&str, String)>,
        stopped_by_guest: bool,
    ) {
        // The volume worker must know which disks are open before the control plane hears
        // of the change (and lets the next volume operation through).
        self.publish_disks();
        let mut r = self.base_report(vm, phase);
        r.stopped_by_guest = stopped_by_guest;
        r.event = event.map(|(a, b)| (a.to_owned(), b));
        if r.event.is_none()
            && self.last_report.as_ref() == Some(&r)
            && (self.last_report_for == vm.revision
                || (vm.status.phase == phase && vm.status.observed_generation == vm.generation))
        {
            return;
        }
        if already_recorded(vm, &r) {
            // E.g. a VM created stopped, which the scheduler recorded as stopped when it
            // placed it: the report would rewrite the record unchanged.
            self.last_report = Some(r);
            self.last_report_for = vm.revision;
            return;
        }
        match self.ctx.link.report(&self.ctx.host, r.clone()).await {
            Ok(()) => {
                r.event = None;
                self.last_report = Some(r);
                self.last_report_for = vm.revision;
            }
            Err(e) => tracing::warn!(vm = %vm.id, error = %e, "status report failed"),
        }
    }
}

/// Whether the record already says all that `r` would write, with no operation or migration
/// waiting on a report.
fn already_recorded(vm: &Vm, r: &VmStatusReport) -> bool {
    let s = &vm.status;
    r.event.is_none()
        && !r.stopped_by_guest
        && !r.cleaned_up
        && s.operation.is_none()
        && s.migration.is_none()
        && s.phase == r.phase
        && s.reason == r.reason
        && s.observed_generation == r.observed_generation
        && s.observed_restart_nonce == r.observed_restart_nonce
        && s.restarts == r.restarts
}

/// A volume's file, grown to the size the spec asks (it may have been resized while the VM was
/// stopped), as the driver opens it.
/// A NIC as the driver takes it, once the host's network has its tap.
async fn nic_for_driver(
    network: Option<&crate::network::HostNetwork>,
    n: &panal_types::network::Nic,
) -> Result<panal_driver::NetNic, DriverError> {
    let Some(net) = network else {
        return Err(DriverError::Launch(
            "this host carries no virtual networks (agent started without them)".into(),
        ));
    };
    net.wait_ports(std::slice::from_ref(&n.id), NIC_READY_TIMEOUT)
        .await
        .map_err(DriverError::Launch)?;
    Ok(panal_driver::NetNic {
        id: n.id.clone(),
        tap: net.tap(&n.id),
        mac: n.mac.clone(),
        mtu: n.mtu,
        slot: n.slot,
    })
}

async fn prepare_disk(
    pools: &crate::volumes::Pools,
    d: &DiskAttachment,
) -> Result<DataDisk, String> {
    let path = pools.path(&d.pool, &d.file)?;
    if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
        return Err(format!(
            "volume \"{}\" has no file on this host ({})",
            d.volume,
            path.display()
        ));
    }
    crate::volumes::grow_file(&path, d.format, d.size_bytes).await?;
    Ok(DataDisk {
        id: d.id.to_string(),
        path,
        format: d.format.as_str().to_owned(),
        slot: d.slot,
    })
}

fn describe(exit: &VmExit) -> String {
    match exit {
        VmExit::Shutdown => "the guest powered off".into(),
        VmExit::GuestPanic => "the guest kernel panicked".into(),
        VmExit::Crashed(why) => format!("the hypervisor process ended: {why}"),
    }
}

async fn wait_exit(watch: Option<tokio::sync::watch::Receiver<Option<VmExit>>>) -> VmExit {
    let Some(mut w) = watch else {
        return std::future::pending().await;
    };
    loop {
        if let Some(exit) = w.borrow_and_update().clone() {
            return exit;
        }
        if w.changed().await.is_err() {
            // The handle went away without saying why: treat as a crash.
            return w
                .borrow()
                .clone()
                .unwrap_or(VmExit::Crashed("the hypervisor handle closed".into()));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
