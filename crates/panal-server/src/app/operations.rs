//! Operations: reading them, waiting for them, and deciding from a VM's observed state whether
//! the operation that holds it has succeeded, failed or is still going (a pure function).

use super::{App, next_token, page_bounds};
use crate::keys;
use crate::repo::{Versioned, store_error};
use futures::StreamExt;
use panal_store::{Compare, Op, Txn, WatchEvent};
use panal_types::operation::{Operation, OperationKind, OperationState, Progress};
use panal_types::page::Page;
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::{ApiError, ErrorCode, OperationId};
use std::time::Duration;

/// The longest a client may block in one wait call.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

impl App {
    /// Reads an operation.
    pub async fn operation(&self, id: &str) -> Result<Operation, ApiError> {
        let op_id: OperationId = id
            .parse()
            .map_err(|_| ApiError::invalid("id", "operation ids are UUIDs"))?;
        self.repo
            .get::<Operation>(&keys::op(&op_id))
            .await?
            .map(|v| v.value)
            .ok_or_else(|| ApiError::not_found("operation", op_id))
    }

    /// Lists operations (in id order).
    pub async fn list_operations(
        &self,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Operation>, ApiError> {
        let (limit, start) = page_bounds(limit, token, keys::OPS)?;
        let (items, more, _) = self
            .repo
            .list::<Operation>(keys::OPS, start.as_deref(), limit)
            .await?;
        let items: Vec<Operation> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|o| o.id.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Waits until the operation ends or `timeout` passes, then returns it as it is.
    pub async fn wait_operation(&self, id: &str, timeout: Duration) -> Result<Operation, ApiError> {
        if timeout > MAX_WAIT {
            return Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("timeout is at most {} s", MAX_WAIT.as_secs()),
            )
            .with_field("timeout_secs"));
        }
        let op = self.operation(id).await?;
        if op.state.is_final() {
            return Ok(op);
        }
        let key = keys::op(&op.id);
        let Some(cur) = self.repo.get::<Operation>(&key).await? else {
            return Ok(op);
        };
        let mut watch = self
            .repo
            .store()
            .watch(&key, cur.mod_revision + 1)
            .await
            .map_err(store_error)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut latest = cur.value;
        while !latest.state.is_final() {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Err(e))) => return Err(store_error(e)),
                Ok(Some(Ok(WatchEvent::Put(kv)))) if kv.key == key => {
                    latest = crate::codec::decode(&key, &kv.value).map_err(store_error)?;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
        Ok(latest)
    }
}

/// Adds to `txn` what `vm`'s operation `op` (as read) comes to given the VM: its settled state
/// (compared with what was read), or nothing while it goes on; the VM lets go of an operation
/// that has ended.
pub fn settle_into(txn: Txn, vm: &mut Vm, op: Versioned<Operation>) -> Txn {
    if op.value.state.is_final() {
        vm.status.operation = None;
        return txn;
    }
    let Some((state, error, progress)) = settle(&op.value, vm) else {
        return txn;
    };
    let op_key = keys::op(&op.value.id);
    let mut next = op.value;
    next.state = state;
    next.error = error;
    next.progress = progress;
    next.updated_at = chrono::Utc::now();
    if state.is_final() {
        vm.status.operation = None;
    }
    txn.when(Compare::unchanged(&op_key, op.mod_revision))
        .and_then(Op::put(&op_key, crate::codec::encode(&next)))
}

/// What an operation's state should become given the VM it acts on; `None` while it goes on.
pub fn settle(op: &Operation, vm: &Vm) -> Option<(OperationState, Option<ApiError>, Progress)> {
    if matches!(op.kind, OperationKind::HostDrain | OperationKind::VmMigrate) {
        // A drain holds each VM it moves, and its controller reports its progress; a
        // migration ends by its agents' migration reports.
        return None;
    }
    let caught_up = vm.status.observed_generation >= op.target_generation;
    if is_disk_change(op.kind) {
        return settle_disk_change(op, vm, caught_up);
    }
    if caught_up && vm.status.phase == VmPhase::Failed && op.kind != OperationKind::VmStop {
        let reason = vm
            .status
            .reason
            .clone()
            .unwrap_or_else(|| "the VM failed".into());
        return Some((
            OperationState::Failed,
            Some(ApiError::new(ErrorCode::Conflict, reason.clone())),
            Progress {
                percent: Some(100),
                message: reason,
            },
        ));
    }
    let done = caught_up
        && match op.kind {
            OperationKind::VmCreate => match vm.spec.power_state {
                PowerState::Running => vm.status.phase == VmPhase::Running,
                PowerState::Stopped => vm.status.phase == VmPhase::Stopped,
                PowerState::Paused => vm.status.phase == VmPhase::Paused,
            },
            OperationKind::VmStart | OperationKind::VmResume => vm.status.phase == VmPhase::Running,
            OperationKind::VmPause => vm.status.phase == VmPhase::Paused,
            OperationKind::VmStop => matches!(vm.status.phase, VmPhase::Stopped | VmPhase::Failed),
            OperationKind::VmRestart => {
                vm.status.phase == VmPhase::Running
                    && vm.status.observed_restart_nonce >= vm.spec.restart_nonce
            }
            // Deletes finish when the record goes (see `finish_delete`); the others are settled
            // by their own controllers or host tasks.
            _ => false,
        };
    if done {
        return Some((
            OperationState::Succeeded,
            None,
            Progress {
                percent: Some(100),
                message: "done".into(),
            },
        ));
    }
    let (percent, message) = match vm.status.phase {
        VmPhase::Pending => (10, "waiting for a host".to_string()),
        VmPhase::Scheduled => (
            30,
            format!(
                "placed on {}",
                vm.status.host.as_ref().map_or("?", |h| h.as_str())
            ),
        ),
        VmPhase::Starting => (60, "starting".to_string()),
        VmPhase::Stopping => (60, "stopping".to_string()),
        VmPhase::Deleting => (50, "deleting".to_string()),
        other => (50, other.as_str().to_string()),
    };
    if op.progress.percent == Some(percent) && op.progress.message == message {
        return None;
    }
    Some((
        OperationState::Running,
        None,
        Progress {
            percent: Some(percent),
            message,
        },
    ))
}

fn is_disk_change(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::VolumeAttach
            | OperationKind::VolumeDetach
            | OperationKind::VolumeResize
            | OperationKind::NicAdd
            | OperationKind::NicRemove
    )
}

/// A volume attach, detach or growth of an attached volume ends when the VM's host has applied
/// the generation that carries it, or fails when that host said it could not (an event whose
/// reason ends in `Failed`, recorded since the operation began).
fn settle_disk_change(
    op: &Operation,
    vm: &Vm,
    caught_up: bool,
) -> Option<(OperationState, Option<ApiError>, Progress)> {
    if let Some(ev) = vm.status.events.last()
        && ev.at >= op.created_at
        && matches!(
            ev.reason.as_str(),
            "AttachFailed"
                | "DetachFailed"
                | "DiskResizeFailed"
                | "NicAddFailed"
                | "NicRemoveFailed"
        )
    {
        return Some((
            OperationState::Failed,
            Some(ApiError::new(ErrorCode::Conflict, ev.message.clone())),
            Progress {
                percent: Some(100),
                message: ev.message.clone(),
            },
        ));
    }
    caught_up.then(|| {
        (
            OperationState::Succeeded,
            None,
            Progress {
                percent: Some(100),
                message: "done".into(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::vms::new_operation;
    use panal_types::vm::*;
    use panal_types::*;

    fn vm(phase: VmPhase, observed: u64) -> Vm {
        Vm {
            id: VmId::new(),
            name: Name::parse("a").unwrap(),
            project: Name::parse("default").unwrap(),
            generation: 2,
            spec: VmSpec {
                vcpus: 1,
                memory_bytes: 1 << 28,
                image: None,
                hypervisor: HypervisorKind::Fake,
                machine: MachineProfile::Q35,
                labels: Default::default(),
                restart_policy: RestartPolicy::Never,
                power_state: PowerState::Running,
                stop_timeout_secs: 30,
                restart_nonce: 0,
                force_stop: false,
                deleted: false,
                placement: Default::default(),
                volumes: vec![],
                nics: vec![],
                hotplug_slots: 4,
            },
            status: VmStatus {
                phase,
                host: None,
                reason: Some("boom".into()),
                placement: None,
                observed_generation: observed,
                observed_restart_nonce: 0,
                operation: None,
                restarts: 0,
                events: vec![],
                moving: None,
                migration: None,
                home: None,
            },
            created_at: chrono::Utc::now(),
            revision: 0,
        }
    }

    #[test]
    fn start_succeeds_only_when_caught_up_and_running() {
        let v = vm(VmPhase::Running, 1);
        let op = new_operation(OperationId::new(), OperationKind::VmStart, &v, "");
        assert_eq!(
            settle(&op, &v).map(|s| s.0),
            Some(OperationState::Running),
            "stale status must not finish it"
        );
        let v = vm(VmPhase::Running, 2);
        assert_eq!(
            settle(&op, &v).map(|s| s.0),
            Some(OperationState::Succeeded)
        );
    }

    #[test]
    fn failure_carries_the_reason() {
        let v = vm(VmPhase::Failed, 2);
        let op = new_operation(OperationId::new(), OperationKind::VmCreate, &v, "");
        let (state, err, _) = settle(&op, &v).unwrap();
        assert_eq!(state, OperationState::Failed);
        assert_eq!(err.unwrap().message, "boom");
    }
}
