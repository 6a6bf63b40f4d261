//! Plugging NICs into a VM and unplugging them: spec changes (a new generation) that the VM's
//! host applies live on a running `q35` VM (and at the next start otherwise). The address and
//! MAC are taken (or released) in the same transaction as the spec change.

use super::App;
use super::ipam::{NicContext, release_ops};
use super::vms::new_operation;
use super::volumes::{busy, no_free_slot};
use crate::codec::encode;
use crate::keys;
use panal_store::{Compare, Op, Txn};
use panal_types::network::{MAX_NICS, NicRequest};
use panal_types::operation::OperationKind;
use panal_types::vm::{MachineProfile, PowerState, Vm, VmAccepted, VmPhase};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, OperationId};

/// A running microvm has no bus to plug into.
fn hot_pluggable(vm: &Vm) -> Result<(), ApiError> {
    let running = vm.spec.power_state != PowerState::Stopped
        || !matches!(vm.status.phase, VmPhase::Stopped | VmPhase::Failed);
    if running && vm.spec.machine == MachineProfile::Microvm {
        return Err(
            ApiError::conflict("microvm VMs cannot hot-plug NICs; stop the VM first")
                .with_field("vm"),
        );
    }
    Ok(())
}

impl App {
    /// Plugs a NIC into a VM.
    pub async fn add_nic(
        &self,
        project: Option<&str>,
        vm_name: &str,
        req: NicRequest,
    ) -> Result<VmAccepted, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        for _ in 0..8 {
            let cur = self.attached_vm(project, vm_name).await?;
            let mut next = cur.value.clone();
            busy(&next)?;
            hot_pluggable(&next)?;
            if next.spec.nics.len() >= MAX_NICS {
                return Err(ApiError::conflict(format!(
                    "VM \"{vm_name}\" already has {MAX_NICS} NICs, the most it can take"
                ))
                .with_field("vm"));
            }
            let mut planned = self
                .plan_nics(
                    &mut NicContext::default(),
                    project,
                    &next.name,
                    std::slice::from_ref(&req),
                )
                .await
                .map_err(|e| {
                    let field = e.field.clone().map(|f| f.replacen("nics[0].", "", 1));
                    ApiError { field, ..e }
                })?;
            let Some(slot) = next.spec.free_slot() else {
                return Err(no_free_slot(vm_name, &next));
            };
            let op_id = OperationId::new();
            let mut nic = planned.nics.remove(0);
            nic.slot = slot;
            next.spec.nics.push(nic.clone());
            next.generation += 1;
            next.status.operation = Some(op_id);
            let mut op = new_operation(
                op_id,
                OperationKind::NicAdd,
                &next,
                &format!("plugging NIC {} on {}", nic.id, nic.network),
            );
            op.target_generation = next.generation;
            let vkey = keys::vm(project, next.name.as_str());
            let mut txn = Txn::new()
                .when(Compare::unchanged(&vkey, cur.mod_revision))
                .and_then(Op::put(&vkey, encode(&next)))
                .and_then(Op::put(&keys::op(&op_id), encode(&op)));
            for c in planned.compares {
                txn = txn.when(c);
            }
            for o in planned.ops {
                txn = txn.and_then(o);
            }
            let r = self.repo.txn(txn).await?;
            if r.succeeded {
                next.revision = r.revision;
                return Ok(VmAccepted {
                    vm: next,
                    operation: op,
                });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM or the network kept changing; retry",
        ))
    }

    /// Unplugs a NIC from a VM and releases its address.
    pub async fn remove_nic(
        &self,
        project: Option<&str>,
        vm_name: &str,
        nic_id: &str,
    ) -> Result<VmAccepted, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        for _ in 0..8 {
            let cur = self.attached_vm(project, vm_name).await?;
            let mut next = cur.value.clone();
            let Some(nic) = next.spec.nics.iter().find(|n| n.id == nic_id).cloned() else {
                return Err(ApiError::not_found("NIC", nic_id).with_field("nic"));
            };
            busy(&next)?;
            hot_pluggable(&next)?;
            let op_id = OperationId::new();
            next.spec.nics.retain(|n| n.id != nic_id);
            next.generation += 1;
            next.status.operation = Some(op_id);
            let mut op = new_operation(
                op_id,
                OperationKind::NicRemove,
                &next,
                &format!("unplugging NIC {} from {}", nic.id, nic.network),
            );
            op.target_generation = next.generation;
            let vkey = keys::vm(project, next.name.as_str());
            let mut gone = cur.value.clone();
            gone.spec.nics = vec![nic];
            let mut txn = Txn::new()
                .when(Compare::unchanged(&vkey, cur.mod_revision))
                .and_then(Op::put(&vkey, encode(&next)))
                .and_then(Op::put(&keys::op(&op_id), encode(&op)));
            for o in release_ops(&gone) {
                txn = txn.and_then(o);
            }
            txn = self
                .unmap_floating(txn, project, next.name.as_str(), &gone.spec.nics)
                .await?;
            let r = self.repo.txn(txn).await?;
            if r.succeeded {
                next.revision = r.revision;
                return Ok(VmAccepted {
                    vm: next,
                    operation: op,
                });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; retry",
        ))
    }
}
