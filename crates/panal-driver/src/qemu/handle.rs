//! [`QemuVm`]: the handle on one running QEMU, implementing [`VmHandle`] over QMP.
//!
//! Concurrency protocol: the handle owns the QMP session; a watcher task owns the QMP event
//! stream and the process liveness check. It records `SHUTDOWN` reasons and `GUEST_PANICKED`,
//! and once the process is dead (QMP closed and `/proc` says gone or zombie, or the periodic
//! liveness check fails) it classifies the exit once into the exit watch: panic > a stop we
//! asked for > the guest's own power-off > anything else is a crash. A QEMU that shut down by
//! itself (not killed) also clears the run directory's `disk.in-use` marker. Dropping the handle closes
//! QMP and ends the watcher without publishing an exit: the VM keeps running for a later attach.

use super::VmMeta;
use super::cgroup::VmCgroup;
use super::cmdline::RunPaths;
use super::process::{self, ProcState};
use super::qmp::{Qmp, QmpEvent};
use crate::{DriverError, ResizeOutcome, ResizeRequest, RuntimeState, VmExit, VmHandle};
use async_trait::async_trait;
use panal_types::VmId;
use panal_types::vm::MachineProfile;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// What the watcher and the command side share.
struct Shared {
    exit_tx: watch::Sender<Option<VmExit>>,
    /// Set before we stop the VM ourselves, so its end is a `Shutdown`, not a crash.
    requested_stop: AtomicBool,
    /// Set before we SIGKILL QEMU: its disk was not closed cleanly, whatever the exit says.
    killed: AtomicBool,
}

/// A running QEMU VM.
pub struct QemuVm {
    id: VmId,
    pid: u32,
    paths: RunPaths,
    qmp: Arc<Qmp>,
    shared: Arc<Shared>,
    meta: Mutex<VmMeta>,
    cgroup: Option<VmCgroup>,
    /// Serialises the disk-migration switch-over step with itself and with starting or
    /// abandoning disk copies, and remembers why a switch-over was refused (`disk_mirror.rs`).
    switch_lock: super::disk_mirror::SwitchLock,
    /// How its migrations are protected (the driver's configuration).
    migration_tls: super::MigrationTls,
    /// Bumped by the watcher at each migration or job event of QEMU's: what the paused
    /// switch-over (`disk_mirror.rs`) and the downtime limit's steps (`downtime_ramp.rs`) wait
    /// on instead of a polling interval.
    migration_events: watch::Receiver<u64>,
}

impl QemuVm {
    /// Wraps a connected QMP session (and its event stream) and starts the watcher.
    pub(super) fn start(
        id: VmId,
        pid: u32,
        paths: RunPaths,
        (qmp, events): (Qmp, mpsc::UnboundedReceiver<QmpEvent>),
        meta: VmMeta,
        cgroup: Option<VmCgroup>,
        migration_tls: super::MigrationTls,
    ) -> Arc<QemuVm> {
        let (exit_tx, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            exit_tx,
            requested_stop: AtomicBool::new(false),
            killed: AtomicBool::new(false),
        });
        let qmp = Arc::new(qmp);
        let (events_tx, migration_events) = watch::channel(0);
        tokio::spawn(watch_exit(
            Arc::downgrade(&qmp),
            (events, events_tx),
            pid,
            shared.clone(),
            cgroup.clone(),
            paths.disk_in_use(),
        ));
        Arc::new(QemuVm {
            id,
            pid,
            paths,
            qmp,
            shared,
            meta: Mutex::new(meta),
            cgroup,
            switch_lock: Arc::default(),
            migration_tls,
            migration_events,
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.paths.dir.clone()
    }

    /// Runs a raw QMP command (for tests and diagnostics).
    pub async fn qmp(&self, command: &str, args: Option<Value>) -> Result<Value, DriverError> {
        self.live()?;
        self.qmp.execute(command, args).await
    }

    /// QEMU's run state (`query-status`), e.g. `running`, `paused`, `inmigrate`, `postmigrate`.
    pub(super) async fn run_status(&self) -> Result<String, DriverError> {
        let s = self.qmp.execute("query-status", None).await?;
        Ok(s.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    }

    /// The QMP session itself (for tasks that must not keep the handle alive).
    pub(super) fn qmp_session(&self) -> &Arc<Qmp> {
        &self.qmp
    }

    pub(super) fn switch_lock(&self) -> &super::disk_mirror::SwitchLock {
        &self.switch_lock
    }

    /// QEMU's migration and job events from now on (see [`next_event`]).
    pub(super) fn migration_events(&self) -> watch::Receiver<u64> {
        let mut rx = self.migration_events.clone();
        rx.mark_unchanged();
        rx
    }

    pub(super) fn migration_tls(&self) -> &super::MigrationTls {
        &self.migration_tls
    }

    pub(super) fn live(&self) -> Result<(), DriverError> {
        if self.shared.exit_tx.borrow().is_some() {
            return Err(DriverError::NotRunning(self.id));
        }
        Ok(())
    }

    async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.shared.exit_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
            .await
            .is_ok()
    }

    fn save_meta(&self, meta: &VmMeta) {
        if let Ok(bytes) = serde_json::to_vec_pretty(meta) {
            let _ = std::fs::write(self.paths.meta(), bytes);
        }
    }

    async fn resize_memory(&self, bytes: u64, out: &mut ResizeOutcome) -> Result<(), DriverError> {
        let boot = self.meta.lock().memory_bytes;
        if bytes > boot {
            out.pending_reboot.push(format!(
                "memory {} MiB is above the boot size {} MiB: takes effect at the next start",
                bytes >> 20,
                boot >> 20
            ));
            return Ok(());
        }
        self.qmp
            .execute("balloon", Some(json!({ "value": bytes })))
            .await?;
        // The guest's balloon driver gives memory back asynchronously; wait briefly to report.
        let mut actual = 0;
        for _ in 0..30 {
            let q = self.qmp.execute("query-balloon", None).await?;
            actual = q.get("actual").and_then(Value::as_u64).unwrap_or(0);
            if actual.abs_diff(bytes) < (4 << 20) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if actual.abs_diff(bytes) >= (4 << 20) {
            out.pending_reboot.push(format!(
                "balloon target {} MiB set; the guest has reached {} MiB so far",
                bytes >> 20,
                actual >> 20
            ));
        }
        self.meta.lock().balloon_bytes = bytes;
        Ok(())
    }

    async fn resize_vcpus(&self, want: u32, out: &mut ResizeOutcome) -> Result<(), DriverError> {
        let (machine, current, max) = {
            let m = self.meta.lock();
            (m.machine, m.vcpus, m.max_vcpus)
        };
        if want == current {
            return Ok(());
        }
        if machine != MachineProfile::Q35 || want < current || want > max {
            out.pending_reboot.push(format!(
                "vcpus {current} -> {want}: takes effect at the next start (live only grows on q35, up to {max})"
            ));
            return Ok(());
        }
        let slots = self.qmp.execute("query-hotpluggable-cpus", None).await?;
        let free: Vec<&Value> = slots
            .as_array()
            .map(|a| a.iter().filter(|s| s.get("qom-path").is_none()).collect())
            .unwrap_or_default();
        // QEMU lists free slots from the highest index down; plug in ascending order.
        let mut free = free;
        free.reverse();
        let mut added = current;
        for slot in free.into_iter().take((want - current) as usize) {
            let mut args = slot.get("props").cloned().unwrap_or_else(|| json!({}));
            args["driver"] = slot.get("type").cloned().unwrap_or(Value::Null);
            args["id"] = json!(format!("vcpu{added}"));
            self.qmp.execute("device_add", Some(args)).await?;
            added += 1;
        }
        if added < want {
            out.pending_reboot
                .push(format!("only {added} of {want} vcpus could be hot-plugged"));
        }
        if let Some(cg) = &self.cgroup {
            cg.set_cpus(added)?;
        }
        self.meta.lock().vcpus = added;
        Ok(())
    }
}

#[async_trait]
impl VmHandle for QemuVm {
    fn id(&self) -> VmId {
        self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>> {
        self.shared.exit_tx.subscribe()
    }

    async fn state(&self) -> Result<RuntimeState, DriverError> {
        if let Some(exit) = self.shared.exit_tx.borrow().clone() {
            return Ok(RuntimeState::Exited(exit));
        }
        Ok(match self.run_status().await?.as_str() {
            "running" | "debug" => RuntimeState::Running,
            "guest-panicked" => RuntimeState::GuestPanicked,
            "inmigrate" => RuntimeState::Incoming,
            // Includes `postmigrate`: a source whose guest now runs elsewhere.
            _ => RuntimeState::Paused,
        })
    }

    async fn shutdown(&self, timeout: Duration) -> Result<(), DriverError> {
        if self.shared.exit_tx.borrow().is_some() {
            return Ok(());
        }
        self.shared.requested_stop.store(true, Ordering::SeqCst);
        if matches!(
            self.run_status().await.as_deref(),
            Ok("postmigrate" | "inmigrate")
        ) {
            // No guest to power off here: it moved away (resuming it would run it twice, on
            // shared disks) or never arrived. QEMU closes its files and exits.
            let _ = self.qmp.execute("quit", None).await;
            if self.wait_exit(timeout.min(Duration::from_secs(10))).await {
                return Ok(());
            }
            return self.kill().await;
        }
        // A paused guest cannot see the power button.
        let _ = self.qmp.execute("cont", None).await;
        // Press the power button again every few seconds: a guest still booting (or one whose
        // button handler was not yet listening) misses a single press.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let _ = self.qmp.execute("system_powerdown", None).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.wait_exit(left.min(Duration::from_secs(5))).await {
                return Ok(());
            }
            if left <= Duration::from_secs(5) {
                return self.kill().await;
            }
        }
    }

    async fn kill(&self) -> Result<(), DriverError> {
        if self.shared.exit_tx.borrow().is_some() {
            return Ok(());
        }
        self.shared.requested_stop.store(true, Ordering::SeqCst);
        self.shared.killed.store(true, Ordering::SeqCst);
        process::signal(self.pid, nix::sys::signal::Signal::SIGKILL)?;
        if self.wait_exit(Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(DriverError::Hypervisor(format!(
                "QEMU pid {} did not die after SIGKILL",
                self.pid
            )))
        }
    }

    async fn pause(&self) -> Result<(), DriverError> {
        self.live()?;
        self.qmp.execute("stop", None).await.map(drop)
    }

    async fn resume(&self) -> Result<(), DriverError> {
        self.live()?;
        if self.run_status().await? == "postmigrate" {
            // QEMU would run it, while the destination runs the same guest on the same disks.
            return Err(DriverError::Invalid(
                "the VM has migrated to another host; it cannot be resumed here".into(),
            ));
        }
        self.qmp.execute("cont", None).await.map(drop)
    }

    async fn reboot(&self) -> Result<(), DriverError> {
        self.live()?;
        self.qmp.execute("system_reset", None).await.map(drop)
    }

    async fn resize(&self, req: &ResizeRequest) -> Result<ResizeOutcome, DriverError> {
        if req.vcpus == Some(0) {
            return Err(DriverError::Invalid("vcpus must be at least 1".into()));
        }
        if let Some(m) = req.memory_bytes
            && m < super::MIN_MEMORY_BYTES
        {
            return Err(DriverError::Invalid(format!(
                "memory must be at least {} MiB",
                super::MIN_MEMORY_BYTES >> 20
            )));
        }
        self.live()?;
        let mut out = ResizeOutcome::default();
        if let Some(m) = req.memory_bytes {
            self.resize_memory(m, &mut out).await?;
        }
        if let Some(v) = req.vcpus {
            self.resize_vcpus(v, &mut out).await?;
        }
        out.applied_live = out.pending_reboot.is_empty();
        let meta = self.meta.lock().clone();
        self.save_meta(&meta);
        Ok(out)
    }

    async fn attach_disk(&self, disk: &crate::DataDisk) -> Result<(), DriverError> {
        self.live()?;
        if self.meta.lock().machine == MachineProfile::Microvm {
            return Err(DriverError::Unsupported(
                "microvm has no hot-plug bus; attach while stopped".into(),
            ));
        }
        self.hotplug_disk(disk).await
    }

    async fn detach_disk(&self, id: &str) -> Result<(), DriverError> {
        self.live()?;
        if self.meta.lock().machine == MachineProfile::Microvm {
            return Err(DriverError::Unsupported(
                "microvm has no hot-plug bus; detach while stopped".into(),
            ));
        }
        self.unplug_disk(id).await
    }

    async fn attach_nic(&self, nic: &crate::NetNic) -> Result<(), DriverError> {
        self.live()?;
        if self.meta.lock().machine == MachineProfile::Microvm {
            return Err(DriverError::Unsupported(
                "microvm has no hot-plug bus; add NICs while stopped".into(),
            ));
        }
        self.hotplug_nic(nic).await
    }

    async fn detach_nic(&self, id: &str) -> Result<(), DriverError> {
        self.live()?;
        if self.meta.lock().machine == MachineProfile::Microvm {
            return Err(DriverError::Unsupported(
                "microvm has no hot-plug bus; remove NICs while stopped".into(),
            ));
        }
        self.unplug_nic(id).await
    }

    async fn grow_disk(&self, id: &str, size_bytes: u64) -> Result<(), DriverError> {
        self.live()?;
        self.grow(id, size_bytes).await
    }

    async fn snapshot_disks(
        &self,
        ids: &[String],
        name: &str,
        step: panal_types::volume::SnapshotStep,
    ) -> Result<Duration, DriverError> {
        self.live()?;
        self.snapshot(ids, name, step).await
    }

    async fn migrate(
        &self,
        to: &crate::MigrationTarget,
        params: &crate::MigrationParams,
    ) -> Result<(), DriverError> {
        self.live()?;
        self.start_migration(to, params).await
    }

    async fn migration_status(&self) -> Result<crate::MigrationStatus, DriverError> {
        self.live()?;
        let mut s = self.query_migration().await?;
        if let crate::MigrationPhase::Failed(why) = &s.phase
            && why == "no reason given"
            && let Some(said) = log_tail(&self.paths.qemu_log())
        {
            s.phase = crate::MigrationPhase::Failed(format!("QEMU said: {said}"));
        }
        if s.phase == crate::MigrationPhase::Completed
            && !matches!(
                self.run_status().await?.as_str(),
                "postmigrate" | "finish-migrate"
            )
        {
            // QEMU keeps reporting the incoming migration that brought the guest here: for a
            // caller asking whether the guest has left, nothing has.
            return Ok(crate::MigrationStatus {
                phase: crate::MigrationPhase::None,
                total_bytes: None,
                transferred_bytes: None,
                remaining_bytes: None,
                dirty_rate: None,
                expected_downtime: None,
                downtime: None,
                total_time: None,
                cpu_throttle_percent: None,
            });
        }
        Ok(s)
    }

    async fn cancel_migration(&self) -> Result<(), DriverError> {
        self.live()?;
        self.cancel().await
    }

    async fn start_post_copy(&self) -> Result<(), DriverError> {
        self.live()?;
        self.post_copy().await
    }

    async fn export_disks(
        &self,
        at: &crate::Incoming,
        disks: &[String],
    ) -> Result<(), DriverError> {
        self.live()?;
        self.export(at, disks).await
    }

    async fn unexport_disks(&self) -> Result<(), DriverError> {
        self.live()?;
        self.unexport().await
    }

    async fn mirror_disks(
        &self,
        to: &crate::MigrationTarget,
        disks: &[String],
        max_bandwidth: Option<u64>,
    ) -> Result<(), DriverError> {
        self.live()?;
        self.start_mirrors(to, disks, max_bandwidth).await
    }

    async fn disk_mirror_status(&self) -> Result<Vec<crate::DiskMirrorStatus>, DriverError> {
        self.live()?;
        self.mirror_status().await
    }

    async fn cancel_disk_mirror(&self) -> Result<(), DriverError> {
        self.live()?;
        self.abandon_mirrors().await
    }

    fn console_log(&self) -> Option<PathBuf> {
        Some(self.paths.console_log())
    }

    fn console_socket(&self) -> Option<PathBuf> {
        Some(self.paths.console_sock())
    }
}

/// Waits for QEMU's next migration or job event (`events` from
/// [`QemuVm::migration_events`]), at most `poll`: the events make the paused switch-over and
/// the downtime limit's steps react at once, the poll is the fallback.
pub(super) async fn next_event(events: &mut watch::Receiver<u64>, poll: Duration) {
    if let Ok(Err(_)) = tokio::time::timeout(poll, events.changed()).await {
        // The watcher has gone (QEMU exited): no event will come.
        tokio::time::sleep(poll).await;
    }
}

/// The last lines QEMU wrote to its log (`-D`), for a failure's reason.
pub(super) fn log_tail(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(2)..].join(" / ");
    (!tail.is_empty()).then(|| tail.chars().take(400).collect())
}

/// The watcher task (see the module header for its protocol).
async fn watch_exit(
    qmp: Weak<Qmp>,
    (mut events, migration_events): (mpsc::UnboundedReceiver<QmpEvent>, watch::Sender<u64>),
    pid: u32,
    shared: Arc<Shared>,
    cgroup: Option<VmCgroup>,
    disk_in_use: PathBuf,
) {
    let mut panicked = false;
    let mut shutdown_reason: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => match ev.name.as_str() {
                    "GUEST_PANICKED" => panicked = true,
                    "SHUTDOWN" => {
                        shutdown_reason = ev.data.get("reason").and_then(Value::as_str).map(str::to_string);
                    }
                    "MIGRATION" | "MIGRATION_PASS" | "JOB_STATUS_CHANGE" => {
                        migration_events.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    _ => {}
                },
                None => break,
            },
            _ = tick.tick() => {
                if qmp.strong_count() == 0 {
                    return;
                }
                if !process::proc_state(pid).is_alive() {
                    break;
                }
            }
        }
    }
    // QMP closed: either QEMU is exiting, or our handle was dropped (then QEMU lives on).
    loop {
        if process::proc_state(pid) != ProcState::Alive {
            break;
        }
        if qmp.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = if panicked || shutdown_reason.as_deref() == Some("guest-panic") {
        VmExit::GuestPanic
    } else if shared.requested_stop.load(Ordering::SeqCst) {
        VmExit::Shutdown
    } else {
        match shutdown_reason.as_deref() {
            Some("guest-shutdown") => VmExit::Shutdown,
            Some(other) => VmExit::Crashed(format!("QEMU stopped ({other})")),
            None => {
                let last = disk_in_use
                    .parent()
                    .and_then(|d| log_tail(&d.join("qemu.log")))
                    .map(|l| format!("; QEMU said: {l}"))
                    .unwrap_or_default();
                VmExit::Crashed(format!(
                    "QEMU process died without a shutdown (killed or crashed){last}"
                ))
            }
        }
    };
    // QEMU closed its disks only if it shut down by itself; otherwise the marker stays and the
    // next launch checks the disk (disk_safety.rs).
    if shutdown_reason.is_some() && !shared.killed.load(Ordering::SeqCst) {
        let _ = std::fs::remove_file(&disk_in_use);
    }
    shared.exit_tx.send_replace(Some(exit));
    if let Some(cg) = cgroup {
        // Best effort; `cleanup` removes it too.
        let _ = cg.remove_patiently(Duration::from_secs(10)).await;
    }
}
