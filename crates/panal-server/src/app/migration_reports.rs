//! The control plane's side of a live migration in flight: the two agents' reports, and the
//! three ways a migration ends, each one compare-and-swap transaction over the VM, the host
//! whose reservation it releases, and the operation:
//! - switch-over, on evidence that the guest runs on the target (the source's "completed" or the
//!   target's "arrived"): the VM is placed on the target, the source's room is released;
//! - abort, on the source's word that the guest still runs there (or before the source was ever
//!   told where to send it): the migration is cleared, the target's room is released, and the
//!   target agent, no longer assigned the VM, removes its incoming hypervisor;
//! - cancel request: the migration is marked `cancelling` and the source agent stops it, then
//!   reports the abort.
//!
//! Nothing else decides where the VM runs, so it runs on exactly one host whatever dies when.

use super::App;
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::host::Host;
use panal_types::migration::{MigrationEvent, MigrationProgress, MigrationReport, MigrationStep};
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::volume::{HostTask, Volume, VolumeAction};
use panal_types::{ApiError, ErrorCode, Name, OperationId};

/// How a migration's operation ends.
struct End {
    state: OperationState,
    error: Option<ApiError>,
    message: String,
    /// The source's final figures, when it gave them.
    figures: Option<MigrationProgress>,
}

/// Which side of a migration a report must come from.
fn sender_of(event: &MigrationEvent) -> Side {
    match event {
        MigrationEvent::Listening { .. }
        | MigrationEvent::DestinationFailed { .. }
        | MigrationEvent::Arrived => Side::Target,
        MigrationEvent::Progress { .. }
        | MigrationEvent::Completed { .. }
        | MigrationEvent::Aborted { .. } => Side::Source,
    }
}

#[derive(PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

/// The phase a VM shows once a migration ended and it runs where it is.
fn settled_phase(vm: &Vm) -> VmPhase {
    if vm.spec.power_state == PowerState::Paused {
        VmPhase::Paused
    } else {
        VmPhase::Running
    }
}

/// The cancel reason of a user's request (other cancels end the operation as failed).
pub(crate) const USER_CANCEL: &str = "cancelled by request";

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

impl App {
    /// Takes an agent's report on a migration its host takes part in.
    pub async fn report_migration(&self, host: &str, r: MigrationReport) -> Result<(), ApiError> {
        let key = keys::vm(r.project.as_str(), r.name.as_str());
        for _ in 0..32 {
            let Some(cur) = self.repo.get::<Vm>(&key).await? else {
                return Ok(());
            };
            if cur.value.id != r.vm {
                return Err(ApiError::not_found("VM", r.vm));
            }
            let m = match cur.value.status.migration.clone() {
                Some(m) if m.operation == r.operation => m,
                _ => {
                    // Already over (a repeated report, or the target's "arrived" came first):
                    // the source's figures still belong on the operation.
                    match &r.event {
                        MigrationEvent::Completed { progress } => {
                            self.late_figures(&r.operation, progress).await?;
                        }
                        MigrationEvent::DestinationFailed { reason } => {
                            self.late_cause(&r.operation, host, reason).await?;
                        }
                        _ => {}
                    }
                    return Ok(());
                }
            };
            let side = sender_of(&r.event);
            let expected = if side == Side::Source { &m.from } else { &m.to };
            if expected.as_str() != host {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this host does not take that part in the VM's migration",
                ));
            }
            let done = match &r.event {
                MigrationEvent::Listening {
                    address,
                    disk_address,
                } => {
                    if m.step != MigrationStep::Preparing {
                        return Ok(());
                    }
                    let mut vm = cur.value.clone();
                    if let Some(mm) = vm.status.migration.as_mut() {
                        mm.step = MigrationStep::Transferring;
                        mm.destination = Some(address.clone());
                        mm.disk_destination = disk_address.clone();
                    }
                    let msg = format!("sending the VM to host {} ({address})", m.to);
                    self.put_vm_and_progress(&cur, vm, &m.operation, &msg)
                        .await?
                }
                MigrationEvent::DestinationFailed { reason } => {
                    let why = format!("host {} could not receive the VM: {reason}", m.to);
                    if m.step == MigrationStep::Preparing {
                        self.abort_migration(&cur, &why, false).await?
                    } else {
                        self.request_cancel(&cur, why).await?.is_some()
                    }
                }
                MigrationEvent::Progress { progress } => {
                    self.migration_progress(&m.operation, progress, &m.to)
                        .await?;
                    true
                }
                MigrationEvent::Completed { progress } => {
                    self.switch_over(&cur, Some(progress)).await?
                }
                MigrationEvent::Arrived => self.switch_over(&cur, None).await?,
                MigrationEvent::Aborted { reason, gave_up } => {
                    let asked = m.step == MigrationStep::Cancelling
                        && m.cancel_reason.as_deref() == Some(USER_CANCEL);
                    let why = abort_reason(reason, *gave_up, m.cancel_reason.as_deref());
                    self.abort_migration(&cur, &why, asked).await?
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; report again",
        ))
    }

    /// Puts the source's final figures on a migration that already ended by the target's word.
    async fn late_figures(
        &self,
        op_id: &OperationId,
        p: &MigrationProgress,
    ) -> Result<(), ApiError> {
        self.repo
            .update::<Operation, _>(&keys::op(op_id), |op| {
                let has = op
                    .migration
                    .as_ref()
                    .is_some_and(|m| m.downtime_ms.is_some());
                if op.state != OperationState::Succeeded || has {
                    return Ok(false);
                }
                op.migration = Some(p.clone());
                if let Some(d) = p.downtime_ms {
                    op.progress.message = format!("{}; downtime {d} ms", op.progress.message);
                }
                Ok(true)
            })
            .await?;
        Ok(())
    }

    /// Adds the target's reason to a migration that already failed by the source's word: the
    /// source only saw its transfer end (QEMU's source often gives no reason when the
    /// destination refused the guest's state), the target knows why.
    async fn late_cause(
        &self,
        op_id: &OperationId,
        host: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        self.repo
            .update::<Operation, _>(&keys::op(op_id), |op| {
                Ok(add_target_cause(op, host, reason))
            })
            .await?;
        Ok(())
    }

    /// Writes the VM and the operation's progress message. `false`: the VM changed meanwhile.
    async fn put_vm_and_progress(
        &self,
        cur: &Versioned<Vm>,
        vm: Vm,
        op_id: &panal_types::OperationId,
        message: &str,
    ) -> Result<bool, ApiError> {
        let vkey = keys::vm(vm.project.as_str(), vm.name.as_str());
        let mut txn = Txn::new()
            .when(Compare::unchanged(&vkey, cur.mod_revision))
            .and_then(Op::put(&vkey, encode(&vm)));
        let okey = keys::op(op_id);
        if let Some(op) = self.repo.get::<Operation>(&okey).await?
            && !op.value.state.is_final()
        {
            let mut next = op.value;
            next.progress.message = message.to_owned();
            next.updated_at = chrono::Utc::now();
            txn = txn
                .when(Compare::unchanged(&okey, op.mod_revision))
                .and_then(Op::put(&okey, encode(&next)));
        }
        Ok(self.repo.txn(txn).await?.succeeded)
    }

    /// Records the source's figures on the operation (the VM record is not touched).
    async fn migration_progress(
        &self,
        op_id: &panal_types::OperationId,
        p: &MigrationProgress,
        to: &Name,
    ) -> Result<(), ApiError> {
        self.repo
            .update::<Operation, _>(&keys::op(op_id), |op| {
                if op.state.is_final() {
                    return Ok(false);
                }
                op.progress = Progress {
                    percent: p.percent(),
                    message: format!(
                        "{} to host {to}: {} of {} MiB sent, {} MiB remaining, dirty rate {} \
                         MiB/s, expected downtime {} ms",
                        p.phase,
                        p.transferred_bytes.unwrap_or(0) >> 20,
                        p.total_bytes.unwrap_or(0) >> 20,
                        p.remaining_bytes.unwrap_or(0) >> 20,
                        p.dirty_rate.unwrap_or(0) >> 20,
                        ms(p.expected_downtime_ms),
                    ),
                };
                op.migration = Some(p.clone());
                op.updated_at = chrono::Utc::now();
                Ok(true)
            })
            .await?;
        Ok(())
    }

    /// Gives `host` back the room `vm` took there.
    async fn release_room(&self, txn: Txn, host: &Name, vm: &Vm) -> Result<Txn, ApiError> {
        let hkey = keys::host(host.as_str());
        let Some(h) = self.repo.get::<Host>(&hkey).await? else {
            return Ok(txn);
        };
        let mut next = h.value;
        let a = &mut next.allocation;
        a.vcpus = a.vcpus.saturating_sub(u64::from(vm.spec.vcpus));
        a.memory_bytes = a.memory_bytes.saturating_sub(vm.spec.memory_bytes);
        a.vms = a.vms.saturating_sub(1);
        Ok(txn
            .when(Compare::unchanged(&hkey, h.mod_revision))
            .and_then(Op::put(&hkey, encode(&next))))
    }

    /// Ends the migration with the VM on the target. `false`: something changed meanwhile.
    async fn switch_over(
        &self,
        cur: &Versioned<Vm>,
        progress: Option<&MigrationProgress>,
    ) -> Result<bool, ApiError> {
        let mut vm = cur.value.clone();
        let Some(m) = vm.status.migration.take() else {
            return Ok(true);
        };
        let took = chrono::Utc::now() - m.started_at;
        let how = match progress {
            Some(p) => format!(
                "in {:.1} s, downtime {} ms",
                took.num_milliseconds() as f64 / 1000.0,
                ms(p.downtime_ms)
            ),
            None => format!(
                "in {:.1} s (the target reported the guest running)",
                took.num_milliseconds() as f64 / 1000.0
            ),
        };
        vm.status.host = Some(m.to.clone());
        vm.status.phase = settled_phase(&vm);
        if vm.status.home.as_ref() == Some(&m.to) {
            // Back home.
            vm.status.home = None;
        } else if m.drain.is_some() && vm.status.home.is_none() {
            vm.status.home = Some(m.from.clone());
        }
        if vm.status.operation == Some(m.operation) {
            vm.status.operation = None;
        }
        vm.status.placement = Some(format!("live-migrated from host {}", m.from));
        vm.status.push_event(
            "Migrated",
            format!("from host {} to {} {how}", m.from, m.to),
        );
        let vkey = keys::vm(vm.project.as_str(), vm.name.as_str());
        let mut txn = Txn::new().when(Compare::unchanged(&vkey, cur.mod_revision));
        // Local volumes live on the target now: their records and the VM's attachments say so,
        // and the source's files are discarded by its agent.
        for mv in &m.volumes {
            if let Some(d) = vm.spec.volumes.iter_mut().find(|d| d.id == mv.id) {
                d.host = m.to.clone();
                d.file = mv.target_file.clone();
            }
            let key = keys::volume(vm.project.as_str(), mv.volume.as_str());
            if let Some(v) = self.repo.get::<Volume>(&key).await? {
                let mut next = v.value;
                next.host = m.to.clone();
                next.file = mv.target_file.clone();
                txn = txn
                    .when(Compare::unchanged(&key, v.mod_revision))
                    .and_then(Op::put(&key, encode(&next)));
            }
            let task = HostTask {
                id: OperationId::new(),
                host: m.from.clone(),
                project: vm.project.clone(),
                volumes: Vec::new(),
                action: VolumeAction::Discard {
                    pool: mv.pool.clone(),
                    file: mv.file.clone(),
                },
                operation: Some(m.operation),
            };
            txn = txn.and_then(Op::put(
                &keys::host_task(m.from.as_str(), &task.id),
                encode(&task),
            ));
        }
        txn = txn.and_then(Op::put(&vkey, encode(&vm)));
        txn = self.release_room(txn, &m.from, &vm).await?;
        let end = End {
            state: OperationState::Succeeded,
            error: None,
            message: format!("migrated to host {} {how}", m.to),
            figures: progress.cloned(),
        };
        self.end_migration(txn, &m.operation, end).await
    }

    /// Ends the migration with the VM where it was. `false`: something changed meanwhile.
    pub(crate) async fn abort_migration(
        &self,
        cur: &Versioned<Vm>,
        reason: &str,
        cancelled: bool,
    ) -> Result<bool, ApiError> {
        let mut vm = cur.value.clone();
        let Some(m) = vm.status.migration.take() else {
            return Ok(true);
        };
        vm.status.phase = settled_phase(&vm);
        if vm.status.operation == Some(m.operation) {
            vm.status.operation = None;
        }
        let (event, state) = if cancelled {
            ("MigrationCancelled", OperationState::Cancelled)
        } else {
            ("MigrationFailed", OperationState::Failed)
        };
        vm.status
            .push_event(event, format!("stays on host {}: {reason}", m.from));
        let vkey = keys::vm(vm.project.as_str(), vm.name.as_str());
        let mut txn = Txn::new()
            .when(Compare::unchanged(&vkey, cur.mod_revision))
            .and_then(Op::put(&vkey, encode(&vm)));
        txn = self.release_room(txn, &m.to, &vm).await?;
        let end = End {
            state,
            error: (!cancelled).then(|| ApiError::new(ErrorCode::Conflict, reason)),
            message: format!("the VM stays on host {}: {reason}", m.from),
            figures: None,
        };
        self.end_migration(txn, &m.operation, end).await
    }

    /// Commits a migration's end: `txn` (the VM and the room) with the operation's final form.
    async fn end_migration(
        &self,
        mut txn: Txn,
        op_id: &OperationId,
        end: End,
    ) -> Result<bool, ApiError> {
        let okey = keys::op(op_id);
        if let Some(op) = self.repo.get::<Operation>(&okey).await?
            && !op.value.state.is_final()
        {
            let mut next = op.value;
            next.state = end.state;
            next.error = end.error;
            next.progress = Progress {
                percent: Some(100),
                message: end.message,
            };
            if end.figures.is_some() {
                next.migration = end.figures;
            }
            next.updated_at = chrono::Utc::now();
            txn = txn
                .when(Compare::unchanged(&okey, op.mod_revision))
                .and_then(Op::put(&okey, encode(&next)));
        }
        let ok = self.repo.txn(txn).await?.succeeded;
        if ok {
            self.forget_host_cache();
        }
        Ok(ok)
    }

    /// Asks the migration to stop. Before the source was told where to send the VM nothing has
    /// moved, so it is unwound at once; after, the source agent stops the transfer and reports.
    /// Returns the VM as written, `None` when it changed meanwhile.
    pub(crate) async fn request_cancel(
        &self,
        cur: &Versioned<Vm>,
        reason: String,
    ) -> Result<Option<Vm>, ApiError> {
        let Some(m) = cur.value.status.migration.clone() else {
            return Ok(Some(cur.value.clone()));
        };
        match m.step {
            MigrationStep::Cancelling => Ok(Some(cur.value.clone())),
            MigrationStep::Preparing => {
                let asked = reason == USER_CANCEL;
                if self.abort_migration(cur, &reason, asked).await? {
                    Ok(self
                        .repo
                        .get::<Vm>(&keys::vm(
                            cur.value.project.as_str(),
                            cur.value.name.as_str(),
                        ))
                        .await?
                        .map(|v| v.value))
                } else {
                    Ok(None)
                }
            }
            MigrationStep::Transferring => {
                let mut vm = cur.value.clone();
                if let Some(mm) = vm.status.migration.as_mut() {
                    mm.step = MigrationStep::Cancelling;
                    mm.cancel_reason = Some(reason.clone());
                }
                let msg = format!("cancelling: {reason}");
                if self
                    .put_vm_and_progress(cur, vm.clone(), &m.operation, &msg)
                    .await?
                {
                    Ok(Some(vm))
                } else {
                    Ok(None)
                }
            }
        }
    }
}

/// Why a migration stopped, from the source's report and the cancel the platform asked for,
/// if any: that cancel's reason (the target failed, a host went away) is the cause, which the
/// source, having seen only its transfer end, may not know.
fn abort_reason(source: &str, gave_up: bool, cancel: Option<&str>) -> String {
    match cancel {
        // A source that gave up on its own broke the stream the target was reading: the
        // target's failure (which may reach the control plane first) is its consequence.
        Some(cause) if !gave_up && cause != USER_CANCEL && !source.contains(cause) => {
            format!("{cause} (the source: {source})")
        }
        _ => source.to_owned(),
    }
}

/// Adds a target's failure to a failed migration's operation; `false` when there is nothing
/// to add (not failed, or already said).
fn add_target_cause(op: &mut Operation, host: &str, reason: &str) -> bool {
    if op.state != OperationState::Failed || op.progress.message.contains(reason) {
        return false;
    }
    let cause = format!("; host {host} could not receive the VM: {reason}");
    op.progress.message.push_str(&cause);
    if let Some(e) = op.error.as_mut() {
        e.message.push_str(&cause);
    }
    op.updated_at = chrono::Utc::now();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use panal_types::operation::OperationKind;

    #[test]
    fn the_platforms_cause_comes_first_and_a_users_cancel_stays_plain() {
        let source = "the transfer failed: no reason given";
        let cause = "host b could not receive the VM: load of migration failed";
        assert_eq!(
            abort_reason(source, false, Some(cause)),
            format!("{cause} (the source: {source})")
        );
        assert_eq!(abort_reason(source, false, None), source);
        assert_eq!(
            abort_reason("cancelled by request", false, Some(USER_CANCEL)),
            "cancelled by request"
        );
        // The source already passed the cause on (it saw the cancel first).
        assert_eq!(abort_reason(cause, false, Some(cause)), cause);
    }

    #[test]
    fn a_source_that_gave_up_is_the_cause_even_when_the_target_reported_first() {
        // Seen end to end: the source cancelled a pre-copy that did not converge, the target's
        // QEMU then failed to load the broken stream and its report came in first.
        let source = "pre-copy does not converge: the guest dirties 4.0 MiB/s";
        let target = "host b could not receive the VM: load of migration failed";
        assert_eq!(abort_reason(source, true, Some(target)), source);
    }

    #[test]
    fn a_late_target_failure_is_added_once_to_a_failed_migration() {
        let mut op: Operation = serde_json::from_value(serde_json::json!({
            "id": OperationId::new(),
            "kind": OperationKind::VmMigrate,
            "target": { "kind": "vm", "project": "default", "name": "a" },
            "state": "failed",
            "progress": { "message": "the VM stays on host a: the transfer failed: no reason given" },
            "error": { "code": "conflict", "message": "the transfer failed: no reason given" },
            "created_at": chrono::Utc::now(),
            "updated_at": chrono::Utc::now(),
        }))
        .unwrap();
        let why = "the hypervisor process ended: load of migration failed: Invalid argument";
        assert!(add_target_cause(&mut op, "b", why));
        assert!(
            op.progress
                .message
                .ends_with(&format!("; host b could not receive the VM: {why}"))
        );
        assert!(op.error.as_ref().unwrap().message.contains(why));
        assert!(!add_target_cause(&mut op, "b", why), "said once");
        op.state = OperationState::Succeeded;
        assert!(
            !add_target_cause(&mut op, "b", "other"),
            "only a failed one"
        );
    }
}
