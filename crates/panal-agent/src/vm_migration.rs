//! The agent's two roles in a live migration, each a background job beside its VM task (which
//! keeps owning the handle and its commands):
//! - source: copy the VM's local disks to where the target serves them (until every copy is
//!   ready, the guest's new writes following), then send the memory to where the target listens,
//!   report progress, and report how it ended:
//!   `completed` (the guest is paused here for good) or `aborted` (it still runs here). A cancel
//!   request, or a transfer that makes no progress for [`STALL`] (the link to the target is cut,
//!   or the target is gone), stops it. Taken up again after an agent restart: the job first asks
//!   the hypervisor where the migration is.
//! - target: once the incoming hypervisor runs, wait for the guest to arrive and say so (the
//!   control plane's evidence when the source cannot report any more).
//!
//! Every report is retried until the control plane takes it: the control plane's record, not
//! this job, decides where the VM runs.

use crate::link::DynLink;
use crate::remote::migration_tunnel::{Relay, Tunnel};
use panal_driver::{
    DynVmHandle, Incoming, MigrationParams, MigrationPhase, MigrationStatus, MigrationTarget,
    RuntimeState,
};
use panal_types::migration::{
    MigrationEvent, MigrationProgress, MigrationReport, MigrationSettings, VmMigration,
};
use panal_types::vm::Vm;
use panal_types::{Name, OperationId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the source asks the hypervisor how far the transfer is, and the target whether the
/// guest has arrived: every poll a sub-second migration waits for is part of its total time
/// (a `query-migrate` costs well under a millisecond).
const POLL: Duration = Duration::from_millis(20);
/// How often progress is reported (one store write each).
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How long the target waits, once the guest runs there, before reporting it (see `receive`).
const ARRIVED_GRACE: Duration = Duration::from_secs(2);
/// A transfer that sends nothing for this long is given up.
pub const STALL: Duration = Duration::from_secs(10);
/// By default, a pre-copy whose memory left to send has not fallen by a tenth for this long does
/// not converge (the guest dirties memory faster than the link sends it): it is given up, the
/// guest staying where it runs, rather than kept going for ever (agent `--migration-patience`).
pub const NO_CONVERGENCE: Duration = Duration::from_secs(60);

/// Who and what a job reports about.
#[derive(Clone)]
pub struct Reporter {
    /// This host.
    pub host: Name,
    /// The control plane.
    pub link: DynLink,
    /// The VM's identity.
    pub vm: (panal_types::VmId, Name, Name),
    /// The migration's operation.
    pub operation: OperationId,
}

impl Reporter {
    /// A reporter for `vm`'s migration `m`.
    pub fn new(host: Name, link: DynLink, vm: &Vm, m: &VmMigration) -> Self {
        Self {
            host,
            link,
            vm: (vm.id, vm.project.clone(), vm.name.clone()),
            operation: m.operation,
        }
    }

    /// Sends an event once; `false` if the control plane did not take it.
    pub async fn try_send(&self, event: MigrationEvent) -> bool {
        let r = MigrationReport {
            vm: self.vm.0,
            project: self.vm.1.clone(),
            name: self.vm.2.clone(),
            operation: self.operation,
            event,
        };
        match self.link.report_migration(&self.host, r).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(vm = %self.vm.0, error = %e, "migration report failed");
                false
            }
        }
    }

    /// Sends an event until the control plane takes it (a refusal is final: it is logged).
    pub async fn send(&self, event: MigrationEvent) {
        let mut delay = Duration::from_millis(100);
        loop {
            let r = MigrationReport {
                vm: self.vm.0,
                project: self.vm.1.clone(),
                name: self.vm.2.clone(),
                operation: self.operation,
                event: event.clone(),
            };
            match self.link.report_migration(&self.host, r).await {
                Ok(()) => return,
                Err(crate::link::LinkError::Rejected(e)) => {
                    tracing::warn!(vm = %self.vm.0, error = %e, "migration report refused");
                    return;
                }
                Err(e) => {
                    tracing::warn!(vm = %self.vm.0, error = %e, "migration report failed; retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// The driver's knobs for the recorded settings.
pub fn params(s: &MigrationSettings) -> MigrationParams {
    MigrationParams {
        downtime_limit: Duration::from_millis(s.downtime_limit_ms),
        max_bandwidth: s.max_bandwidth,
        auto_converge: s.auto_converge,
        post_copy: s.post_copy,
    }
}

/// The wire figures of a hypervisor status.
pub fn progress(s: &MigrationStatus) -> MigrationProgress {
    let ms = |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    MigrationProgress {
        phase: phase_name(&s.phase),
        total_bytes: s.total_bytes,
        transferred_bytes: s.transferred_bytes,
        remaining_bytes: s.remaining_bytes,
        dirty_rate: s.dirty_rate,
        expected_downtime_ms: ms(s.expected_downtime),
        downtime_ms: ms(s.downtime),
        total_ms: ms(s.total_time),
        disk_total_bytes: None,
        disk_done_bytes: None,
    }
}

fn phase_name(p: &MigrationPhase) -> String {
    match p {
        MigrationPhase::None => "none".into(),
        MigrationPhase::Setup => "setup".into(),
        MigrationPhase::Active => "active".into(),
        MigrationPhase::Device => "device".into(),
        MigrationPhase::Completed => "completed".into(),
        MigrationPhase::Failed(_) => "failed".into(),
        MigrationPhase::Cancelling => "cancelling".into(),
        MigrationPhase::Cancelled => "cancelled".into(),
        MigrationPhase::Other(o) => o.clone(),
    }
}

/// Whether a hypervisor phase means a transfer is under way.
fn in_flight(p: &MigrationPhase) -> bool {
    matches!(
        p,
        MigrationPhase::Setup
            | MigrationPhase::Active
            | MigrationPhase::Device
            | MigrationPhase::Cancelling
            | MigrationPhase::Other(_)
    )
}

/// What the source sends where.
pub struct Transfer {
    /// The VM.
    pub vm: panal_types::VmId,
    /// Where the target's relay takes the memory stream.
    pub to: SocketAddr,
    /// Where the target's relay takes the local disks, and which: copied before the memory.
    pub disks: Option<(SocketAddr, Vec<String>)>,
    /// The knobs.
    pub settings: MigrationSettings,
    /// How long a pre-copy that does not converge is given.
    pub patience: Duration,
    /// The target host, whose certificate must name it.
    pub target_host: Name,
    /// This host's end of the agents' tunnel.
    pub tunnel: Arc<Tunnel>,
}

impl Transfer {
    /// A relay from a Unix socket of this host (named `what`) to the target's relay at `addr`,
    /// and that socket as the hypervisor's target.
    async fn relay(
        &self,
        what: &str,
        addr: SocketAddr,
    ) -> Result<(MigrationTarget, Relay), String> {
        let socket = self
            .tunnel
            .socket(self.vm, what)
            .map_err(|e| e.to_string())?;
        let relay = self
            .tunnel
            .forward(socket.clone(), addr, self.target_host.clone())
            .await
            .map_err(|e| format!("cannot open the migration tunnel: {e}"))?;
        Ok((MigrationTarget::Unix(socket), relay))
    }
}

/// Target: serves the incoming hypervisor's sockets (`memory`, and `disks` for the local disks'
/// export when some are copied) to the source host through this host's relays. Returns where,
/// as the event to report, and the relays to keep while the migration lasts.
pub async fn serve(
    tunnel: &Tunnel,
    handle: &DynVmHandle,
    m: &VmMigration,
    (memory, disks): (PathBuf, PathBuf),
) -> Result<(MigrationEvent, Vec<Relay>), String> {
    let listen = |e: std::io::Error| format!("cannot listen for the migration: {e}");
    let (address, relay) = tunnel.serve(m.from.clone(), memory).await.map_err(listen)?;
    let mut relays = vec![relay];
    let mut disk_address = None;
    if !m.disks.is_empty() {
        handle
            .export_disks(&Incoming::Unix(disks.clone()), &m.disks)
            .await
            .map_err(|e| format!("cannot serve the disks for the copy: {e}"))?;
        let (a, relay) = tunnel.serve(m.from.clone(), disks).await.map_err(listen)?;
        disk_address = Some(a.to_string());
        relays.push(relay);
    }
    let listening = MigrationEvent::Listening {
        address: address.to_string(),
        disk_address,
    };
    Ok((listening, relays))
}

/// How a watch of the transfer ended.
enum Ended {
    /// Go on to the next phase.
    Next,
    /// Reported (completed or aborted): the job is over.
    Reported,
}

/// Follows one phase: the cancel channel, the stall clock and progress reports, until `step`
/// says the phase is over.
struct Follow<'a> {
    handle: &'a DynVmHandle,
    reporter: &'a Reporter,
    cancel: &'a mut watch::Receiver<Option<String>>,
    cancelled: Option<String>,
    /// The cancel was this agent's own decision (stalled, not converging), not a request.
    gave_up: bool,
    listening: bool,
    disks: bool,
    auto_converge: bool,
    /// Switch to post-copy after the first pass.
    post_copy: bool,
    /// The switch happened: from then on nothing can be cancelled.
    in_post_copy: bool,
    /// How long a non-converging pre-copy is given.
    patience: Duration,
}

impl Follow<'_> {
    /// Stops whatever is in flight: the disk copies (and with them the memory stream), or the
    /// memory stream alone.
    async fn stop(&self) {
        if self.in_post_copy {
            // The guest runs on the target already; its memory is split between the hosts.
            tracing::warn!(vm = %self.reporter.vm.0, "in post-copy: the migration cannot stop");
            return;
        }
        let r = if self.disks {
            self.handle.cancel_disk_mirror().await
        } else {
            self.handle.cancel_migration().await
        };
        if let Err(e) = r {
            tracing::warn!(vm = %self.reporter.vm.0, error = %e, "cancel failed");
        }
    }

    /// Waits one poll or a cancel request.
    async fn tick(&mut self) {
        tokio::select! {
            changed = self.cancel.changed(), if self.cancelled.is_none() && self.listening => {
                self.listening = changed.is_ok();
                let asked = if changed.is_ok() {
                    self.cancel.borrow_and_update().clone()
                } else {
                    None
                };
                if let Some(why) = asked {
                    self.cancelled = Some(why);
                    self.stop().await;
                }
            }
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    async fn abort(&self, why: String) {
        let why = self.cancelled.clone().unwrap_or(why);
        self.reporter
            .send(MigrationEvent::Aborted {
                reason: why,
                gave_up: self.gave_up,
            })
            .await;
    }

    /// Copies the local disks until every one is ready.
    async fn disks(&mut self, sent: &mut MigrationProgress) -> Ended {
        let mut moved = (0u64, Instant::now());
        let mut last_report = Instant::now() - REPORT_EVERY;
        loop {
            self.tick().await;
            let copies = match self.handle.disk_mirror_status().await {
                Ok(c) => c,
                Err(e) => {
                    self.abort(format!("the source hypervisor went away: {e}"))
                        .await;
                    return Ended::Reported;
                }
            };
            if let Some(why) = self.cancelled.clone() {
                self.abort(why).await;
                return Ended::Reported;
            }
            if let Some(c) = copies.iter().find(|c| c.error.is_some()) {
                self.stop().await;
                self.abort(format!(
                    "copying disk {} failed: {}",
                    c.disk,
                    c.error.clone().unwrap_or_default()
                ))
                .await;
                return Ended::Reported;
            }
            let done: u64 = copies.iter().map(|c| c.done_bytes).sum();
            sent.disk_done_bytes = Some(done);
            sent.disk_total_bytes = Some(copies.iter().map(|c| c.total_bytes).sum());
            sent.phase = "disks".into();
            if !copies.is_empty() && copies.iter().all(|c| c.ready) {
                return Ended::Next;
            }
            if done > moved.0 {
                moved = (done, Instant::now());
            } else if moved.1.elapsed() > STALL {
                self.stop().await;
                self.abort(stalled()).await;
                return Ended::Reported;
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                self.reporter
                    .try_send(MigrationEvent::Progress {
                        progress: sent.clone(),
                    })
                    .await;
            }
        }
    }

    /// Follows the memory stream to its end and reports it.
    async fn memory(&mut self, disks: &MigrationProgress) {
        let mut last_report = Instant::now() - REPORT_EVERY;
        let mut moved = (0u64, Instant::now());
        let mut least_left = (u64::MAX, Instant::now());
        let mut last_phase = MigrationPhase::Setup;
        loop {
            self.tick().await;
            let status = match self.handle.migration_status().await {
                Ok(s) => s,
                Err(e) => {
                    if self.handle.exit_watch().borrow().is_none() {
                        // QEMU runs: a passing error of its monitor. The transfer goes on.
                        tracing::warn!(vm = %self.reporter.vm.0, error = %e, "migration status");
                        continue;
                    }
                    // The source QEMU is gone. Before the final copy of state the target cannot
                    // hold the guest: the migration failed. After it (or in post-copy) only the
                    // target knows whether the guest runs there: its "arrived" decides.
                    if matches!(last_phase, MigrationPhase::Setup | MigrationPhase::Active)
                        && !self.in_post_copy
                    {
                        self.abort(format!("the source hypervisor ended: {e}"))
                            .await;
                    } else {
                        tracing::warn!(
                            vm = %self.reporter.vm.0,
                            "the source hypervisor ended at the switch-over; the target decides"
                        );
                    }
                    return;
                }
            };
            last_phase = status.phase.clone();
            let mut p = progress(&status);
            p.disk_done_bytes = disks.disk_done_bytes;
            p.disk_total_bytes = disks.disk_total_bytes;
            match &status.phase {
                MigrationPhase::Completed => {
                    self.reporter
                        .send(MigrationEvent::Completed { progress: p })
                        .await;
                    return;
                }
                MigrationPhase::Failed(why) => {
                    self.abort(format!("the transfer failed: {why}")).await;
                    return;
                }
                MigrationPhase::Cancelled | MigrationPhase::None => {
                    self.abort("the transfer was cancelled".into()).await;
                    return;
                }
                _ => {}
            }
            let sent = status.transferred_bytes.unwrap_or(0);
            if sent > moved.0 {
                moved = (sent, Instant::now());
            } else if self.cancelled.is_none() && !self.in_post_copy && moved.1.elapsed() > STALL {
                tracing::warn!(vm = %self.reporter.vm.0, "{}; cancelling", stalled());
                self.cancelled = Some(stalled());
                self.gave_up = true;
                self.stop().await;
                continue;
            }
            if self.post_copy
                && !self.in_post_copy
                && status.phase == MigrationPhase::Active
                && self.cancelled.is_none()
                && status.total_bytes.is_some_and(|t| sent >= t)
            {
                // The first pass is done: the rest follows the guest on demand.
                match self.handle.start_post_copy().await {
                    Ok(()) => {
                        self.in_post_copy = true;
                        tracing::info!(vm = %self.reporter.vm.0, "switched to post-copy");
                    }
                    Err(e) => {
                        tracing::warn!(vm = %self.reporter.vm.0, error = %e, "post-copy refused")
                    }
                }
            }
            if let (MigrationPhase::Active, Some(left)) = (&status.phase, status.remaining_bytes) {
                // While auto-converge can still slow the guest down further, QEMU is working on
                // it: the clock only runs once the throttle is at its top (99%).
                let throttling =
                    self.auto_converge && status.cpu_throttle_percent.unwrap_or(0) < 99;
                if left < least_left.0.saturating_sub(least_left.0 / 10) || throttling {
                    least_left = (left.min(least_left.0), Instant::now());
                } else if self.cancelled.is_none() && least_left.1.elapsed() > self.patience {
                    let why = not_converging(&p, self.auto_converge, self.patience);
                    tracing::warn!(vm = %self.reporter.vm.0, "{why}; cancelling");
                    self.cancelled = Some(why);
                    self.gave_up = true;
                    self.stop().await;
                    continue;
                }
            }
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                self.reporter
                    .try_send(MigrationEvent::Progress { progress: p })
                    .await;
            }
        }
    }
}

fn not_converging(p: &MigrationProgress, auto_converge: bool, patience: Duration) -> String {
    let mib = |b: Option<u64>| b.unwrap_or(0) as f64 / f64::from(1 << 20);
    let rate = p
        .transferred_bytes
        .zip(p.total_ms)
        .map(|(b, ms)| b as f64 / f64::from(1 << 20) / (ms.max(1) as f64 / 1000.0))
        .unwrap_or(0.0);
    format!(
        "pre-copy does not converge: the guest dirties {:.1} MiB/s while {rate:.1} MiB/s are \
         sent, and what is left ({:.1} MiB) has not fallen for {} s; {}",
        mib(p.dirty_rate),
        mib(p.remaining_bytes),
        patience.as_secs(),
        if auto_converge {
            "raise the bandwidth or the downtime limit"
        } else {
            "migrate with auto-converge, or raise the bandwidth or the downtime limit"
        }
    )
}

fn stalled() -> String {
    format!(
        "nothing was sent for {} s (is the link to the target down?)",
        STALL.as_secs()
    )
}

/// The source's job: copies the local disks (if any), then sends the memory, unless `cancel`
/// already holds a reason, and reports until the migration has ended one way or the other.
pub async fn send(
    handle: DynVmHandle,
    reporter: Reporter,
    plan: Transfer,
    mut cancel: watch::Receiver<Option<String>>,
) {
    // Where the hypervisor is: a restarted agent takes a transfer up where it is.
    let status = match handle.migration_status().await {
        Ok(s) => s,
        Err(e) => {
            reporter
                .send(MigrationEvent::Aborted {
                    reason: format!("the source hypervisor cannot be asked: {e}"),
                    gave_up: false,
                })
                .await;
            return;
        }
    };
    if status.phase == MigrationPhase::Completed {
        reporter
            .send(MigrationEvent::Completed {
                progress: progress(&status),
            })
            .await;
        return;
    }
    let asked = cancel.borrow_and_update().clone();
    let mut f = Follow {
        handle: &handle,
        reporter: &reporter,
        cancel: &mut cancel,
        cancelled: None,
        gave_up: false,
        listening: true,
        disks: plan.disks.is_some(),
        auto_converge: plan.settings.auto_converge,
        post_copy: plan.settings.post_copy,
        in_post_copy: false,
        patience: plan.patience,
    };
    let mut sent = MigrationProgress::default();
    if in_flight(&status.phase) {
        if let Some(why) = asked {
            f.cancelled = Some(why);
            f.stop().await;
        }
        f.memory(&sent).await;
        return;
    }
    if let Some(why) = asked {
        f.stop().await;
        f.abort(why).await;
        return;
    }
    // Held until the migration has ended: they carry its streams.
    let mut relays = Vec::new();
    if let Some((addr, ids)) = &plan.disks {
        let target = match plan.relay("nbd-out", *addr).await {
            Ok((target, relay)) => {
                relays.push(relay);
                target
            }
            Err(e) => {
                f.abort(format!("the disk copy could not start: {e}")).await;
                return;
            }
        };
        if let Err(e) = handle
            .mirror_disks(&target, ids, plan.settings.max_bandwidth)
            .await
        {
            f.stop().await;
            f.abort(format!("the disk copy could not start: {e}")).await;
            return;
        }
        if let Ended::Reported = f.disks(&mut sent).await {
            return;
        }
    }
    let target = match plan.relay("out", plan.to).await {
        Ok((target, relay)) => {
            relays.push(relay);
            target
        }
        Err(e) => {
            f.stop().await;
            f.abort(format!("the transfer could not start: {e}")).await;
            return;
        }
    };
    if let Err(e) = handle.migrate(&target, &params(&plan.settings)).await {
        f.stop().await;
        f.abort(format!("the transfer could not start: {e}")).await;
        return;
    }
    f.memory(&sent).await;
    drop(relays);
}

/// The target's job: waits for the guest to run in the incoming hypervisor and reports it.
pub async fn receive(handle: DynVmHandle, reporter: Reporter) {
    loop {
        match handle.state().await {
            // In post-copy the guest runs here while its memory still arrives: not yet.
            Ok(RuntimeState::Running | RuntimeState::Paused)
                if !handle
                    .migration_status()
                    .await
                    .is_ok_and(|s| !s.phase.is_finished()) =>
            {
                // The disks were served for the copy only; the guest owns them now.
                let _ = handle.unexport_disks().await;
                // The source's "completed" (with the downtime it measured) normally ends the
                // migration within a poll; this report is the fallback for a source that
                // cannot say it any more, so it waits that long first.
                tokio::time::sleep(ARRIVED_GRACE).await;
                reporter.send(MigrationEvent::Arrived).await;
                return;
            }
            Ok(RuntimeState::Exited(_)) | Err(_) => return, // the VM task reports the exit
            _ => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A background job of a VM task, aborted when dropped.
pub struct Job(pub tokio::task::JoinHandle<()>);

impl Drop for Job {
    fn drop(&mut self) {
        self.0.abort();
    }
}
