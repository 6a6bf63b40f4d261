//! The control plane's side of the agent protocol: the stream of VMs assigned to a host (served
//! by the shared assignment hub), the status reports agents send back (merged into VM status with compare-and-swap, completing the
//! operation that waited for them), and the final removal of deleted VMs.

use super::App;
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_agent::link::{AssignmentStream, LinkError};
use panal_store::{Compare, Op, Txn};
use panal_types::agent::VmStatusReport;
use panal_types::host::Host;
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::volume::Volume;
use panal_types::{ApiError, ErrorCode};

impl App {
    /// Merges an agent's report into the VM's status. The agent may only report on VMs placed on
    /// its own host. Concurrent reports are written together (see [`super::reports`]).
    pub async fn report_vm(&self, host: &str, r: VmStatusReport) -> Result<(), ApiError> {
        self.reports.submit(self, host, r).await
    }

    /// One report on its own: read, merge, compare-and-swap, retried while the VM changes.
    pub(super) async fn report_vm_one(
        &self,
        host: &str,
        r: &VmStatusReport,
    ) -> Result<(), ApiError> {
        let key = keys::vm(r.project.as_str(), r.name.as_str());
        for _ in 0..64 {
            let cur = self.repo.get::<Vm>(&key).await?;
            let op = self.report_operation(cur.as_ref()).await?;
            match plan_report(host, r, cur, op)? {
                ReportPlan::Nothing => return Ok(()),
                ReportPlan::FinishDelete(vm) => return self.finish_delete(&vm).await,
                ReportPlan::Write(txn) => {
                    if self.repo.txn(txn).await?.succeeded {
                        return Ok(());
                    }
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; report again",
        ))
    }

    /// The operation a report may settle: the one the VM's status names.
    pub(super) async fn report_operation(
        &self,
        vm: Option<&Versioned<Vm>>,
    ) -> Result<Option<Versioned<Operation>>, ApiError> {
        match vm.and_then(|v| v.value.status.operation) {
            Some(op_id) => self.repo.get::<Operation>(&keys::op(&op_id)).await,
            None => Ok(None),
        }
    }

    /// Removes a deleted VM's record, gives its resources back to its host, detaches its
    /// volumes and completes the delete operation, all in one transaction.
    pub(super) async fn finish_delete(&self, vm: &Vm) -> Result<(), ApiError> {
        let key = keys::vm(vm.project.as_str(), vm.name.as_str());
        for _ in 0..64 {
            let Some(cur) = self.repo.get::<Vm>(&key).await? else {
                return Ok(());
            };
            if cur.value.id != vm.id {
                return Ok(());
            }
            let mut txn = Txn::new()
                .when(Compare::unchanged(&key, cur.mod_revision))
                .and_then(Op::delete(&key));
            if let Some(host_name) = &cur.value.status.host {
                let host_key = keys::host(host_name.as_str());
                if let Some(h) = self.repo.get::<Host>(&host_key).await? {
                    let mut host = h.value;
                    let a = &mut host.allocation;
                    a.vcpus = a.vcpus.saturating_sub(u64::from(cur.value.spec.vcpus));
                    a.memory_bytes = a.memory_bytes.saturating_sub(cur.value.spec.memory_bytes);
                    a.vms = a.vms.saturating_sub(1);
                    txn = txn
                        .when(Compare::unchanged(&host_key, h.mod_revision))
                        .and_then(Op::put(&host_key, encode(&host)));
                }
            }
            // Its addresses and MACs go with it, and its floating addresses are unmapped.
            for op in super::ipam::release_ops(&cur.value) {
                txn = txn.and_then(op);
            }
            txn = self
                .unmap_floating(
                    txn,
                    cur.value.project.as_str(),
                    cur.value.name.as_str(),
                    &cur.value.spec.nics,
                )
                .await?;
            // Its volumes outlive it, detached (as a cloud's instance delete leaves volumes).
            for d in &cur.value.spec.volumes {
                let vkey = keys::volume(cur.value.project.as_str(), d.volume.as_str());
                if let Some(v) = self.repo.get::<Volume>(&vkey).await?
                    && v.value.attached_to.as_ref() == Some(&cur.value.name)
                {
                    let mut free = v.value;
                    free.attached_to = None;
                    txn = txn
                        .when(Compare::unchanged(&vkey, v.mod_revision))
                        .and_then(Op::put(&vkey, encode(&free)));
                }
            }
            if let Some(op_id) = cur.value.status.operation
                && let Some(op) = self.repo.get::<Operation>(&keys::op(&op_id)).await?
                && !op.value.state.is_final()
            {
                let mut done = op.value;
                done.state = OperationState::Succeeded;
                done.progress = Progress {
                    percent: Some(100),
                    message: "deleted".into(),
                };
                done.updated_at = chrono::Utc::now();
                txn = txn.and_then(Op::put(&keys::op(&op_id), encode(&done)));
            }
            if self.repo.txn(txn).await?.succeeded {
                return Ok(());
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; retry the delete",
        ))
    }

    /// Every VM placed on `host`, `Synced`, then each change, as a stream the agent converges
    /// from. Served by the control plane's one [`super::hub::AssignmentHub`].
    pub async fn assignments(&self, host: &str) -> Result<AssignmentStream, LinkError> {
        self.assignments.subscribe(host).await
    }
}

/// What a report comes to, given the VM and its operation as read.
pub(super) enum ReportPlan {
    /// Nothing to write (the VM is gone).
    Nothing,
    /// The agent cleaned up a deleted VM: remove its record.
    FinishDelete(Box<Vm>),
    /// This transaction (comparing what was read) merges the report.
    Write(Txn),
}

/// Merges a report into the VM read at `cur` (and settles the operation read at `op`), without
/// touching the store.
pub(super) fn plan_report(
    host: &str,
    r: &VmStatusReport,
    cur: Option<Versioned<Vm>>,
    op: Option<Versioned<Operation>>,
) -> Result<ReportPlan, ApiError> {
    let Some(cur) = cur else {
        return Ok(ReportPlan::Nothing);
    };
    let key = keys::vm(r.project.as_str(), r.name.as_str());
    let mut vm = cur.value;
    if vm.id != r.id {
        return Err(ApiError::not_found("VM", r.id));
    }
    if vm.status.host.as_ref().map(|h| h.as_str()) != Some(host) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the VM is not placed on this host",
        ));
    }
    if r.cleaned_up && vm.spec.deleted {
        return Ok(ReportPlan::FinishDelete(Box::new(vm)));
    }
    // While it migrates the VM shows `migrating` (the source reports nothing then, but a
    // report sent just before the migration began may land after).
    vm.status.phase = if vm.status.migration.is_some() && r.phase == VmPhase::Running {
        VmPhase::Migrating
    } else {
        r.phase
    };
    vm.status.reason = r.reason.clone();
    vm.status.observed_generation = r.observed_generation;
    vm.status.observed_restart_nonce = r.observed_restart_nonce;
    vm.status.restarts = r.restarts;
    if let Some((reason, message)) = &r.event {
        vm.status.push_event(reason, message.clone());
    }
    if r.stopped_by_guest
        && vm.spec.power_state == PowerState::Running
        && r.observed_generation == vm.generation
    {
        // The guest powered off and the policy keeps it off: the user's desired state
        // follows, as when the guest is shut down from inside on any hypervisor.
        vm.spec.power_state = PowerState::Stopped;
        vm.generation += 1;
        vm.status.observed_generation = vm.generation;
    }
    let mut txn = Txn::new().when(Compare::unchanged(&key, cur.mod_revision));
    if let Some(op_id) = vm.status.operation
        && let Some(op) = op.filter(|o| o.value.id == op_id)
    {
        txn = super::settle_into(txn, &mut vm, op);
    }
    Ok(ReportPlan::Write(txn.and_then(Op::put(&key, encode(&vm)))))
}

/// Maps an application error to what the agent sees.
pub fn link_error(e: ApiError) -> LinkError {
    match e.code {
        ErrorCode::Unavailable => LinkError::Unavailable(e.message),
        _ => LinkError::Rejected(e),
    }
}
