//! Attaching volumes to VMs and detaching them, and the boot volume a new VM takes. These change
//! the VM's spec (its `volumes`) and the volume's `attached_to` in one transaction; the VM's agent
//! applies the change (hot-plug on a running q35 VM) and the operation completes when the VM
//! reports that generation.

use super::App;
use super::volumes::{
    MAX_VOLUMES_PER_VM, attachment, busy, no_free_slot, ready_and_alone, retrying, volume_operation,
};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::operation::OperationKind;
use panal_types::vm::{MachineProfile, PowerState, Vm, VmPhase};
use panal_types::volume::{DiskAttachment, Volume, VolumeAccepted};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, OperationId};

impl App {
    /// Attaches a volume to a VM of its project: at once when the VM is stopped, hot-plugged
    /// when it runs (q35 only).
    pub async fn attach_volume(
        &self,
        project: Option<&str>,
        name: &str,
        vm_name: &str,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_attach_volume(project, name, vm_name)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_attach_volume(
        &self,
        project: Option<&str>,
        name: &str,
        vm_name: &str,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        let mut volume = cur.value.clone();
        let vm = self.attached_vm(project, vm_name).await.map_err(|e| {
            if e.code == ErrorCode::NotFound {
                e.with_field("vm")
            } else {
                e
            }
        })?;
        if let Some(other) = &volume.attached_to {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is already attached to VM \"{other}\""
            ))
            .with_field("vm"));
        }
        ready_and_alone(&volume)?;
        let mut next = vm.value.clone();
        busy(&next)?;
        let running = next.spec.power_state != PowerState::Stopped
            || !matches!(next.status.phase, VmPhase::Stopped | VmPhase::Failed);
        if running && next.spec.machine == MachineProfile::Microvm {
            return Err(
                ApiError::conflict("microvm VMs cannot hot-plug disks; stop the VM first")
                    .with_field("vm"),
            );
        }
        match &next.status.host {
            Some(h) if *h != volume.host && !volume.shared => {
                return Err(ApiError::conflict(format!(
                    "volume \"{name}\" is in a local pool of host \"{}\" but VM \"{vm_name}\" is \
                     on host \"{h}\"; move one of them first",
                    volume.host
                ))
                .with_field("vm"));
            }
            Some(h) if volume.shared => {
                let hosts = self.all_hosts_cached().await?;
                let has_pool = hosts.iter().any(|x| {
                    x.name == *h
                        && x.inventory
                            .storage
                            .iter()
                            .any(|p| p.shared && p.name == volume.pool)
                });
                if !has_pool {
                    return Err(ApiError::conflict(format!(
                        "VM \"{vm_name}\" is on host \"{h}\", which does not mount the shared pool \"{}\"",
                        volume.pool
                    ))
                    .with_field("vm"));
                }
            }
            Some(_) => {}
            None => {
                return Err(ApiError::conflict(format!(
                    "VM \"{vm_name}\" has no host yet; attach once it is placed"
                ))
                .with_field("vm"));
            }
        }
        if next.spec.volumes.len() >= MAX_VOLUMES_PER_VM {
            return Err(ApiError::conflict(format!(
                "VM \"{vm_name}\" already has {MAX_VOLUMES_PER_VM} volumes, the most it can take"
            ))
            .with_field("vm"));
        }
        let Some(slot) = next.spec.free_slot() else {
            return Err(no_free_slot(vm_name, &next));
        };
        let op_id = OperationId::new();
        next.spec.volumes.push(attachment(&volume, false, slot));
        next.generation += 1;
        next.status.operation = Some(op_id);
        volume.attached_to = Some(next.name.clone());
        let mut op = volume_operation(
            op_id,
            OperationKind::VolumeAttach,
            &volume,
            &format!("attaching to {vm_name}"),
        );
        op.target_generation = next.generation;
        let key = keys::volume(project, volume.name.as_str());
        let vkey = keys::vm(project, next.name.as_str());
        let txn = Txn::new()
            .when(Compare::unchanged(&key, cur.mod_revision))
            .when(Compare::unchanged(&vkey, vm.mod_revision))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&vkey, encode(&next)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)));
        self.commit_volume_change(txn, volume, op).await
    }

    /// Detaches a volume from its VM (hot-unplugged when the VM runs).
    pub async fn detach_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_detach_volume(project, name)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_detach_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        let mut volume = cur.value.clone();
        let Some(vm_name) = volume.attached_to.clone() else {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is not attached"
            )));
        };
        let vm = self.attached_vm(project, vm_name.as_str()).await?;
        let mut next = vm.value.clone();
        busy(&next)?;
        if next
            .spec
            .volumes
            .iter()
            .any(|d| d.id == volume.id && d.boot)
        {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is the boot disk of VM \"{vm_name}\"; it goes with the VM"
            )));
        }
        let op_id = OperationId::new();
        next.spec.volumes.retain(|d| d.id != volume.id);
        next.generation += 1;
        next.status.operation = Some(op_id);
        volume.attached_to = None;
        let mut op = volume_operation(
            op_id,
            OperationKind::VolumeDetach,
            &volume,
            &format!("detaching from {vm_name}"),
        );
        op.target_generation = next.generation;
        let key = keys::volume(project, volume.name.as_str());
        let vkey = keys::vm(project, next.name.as_str());
        let txn = Txn::new()
            .when(Compare::unchanged(&key, cur.mod_revision))
            .when(Compare::unchanged(&vkey, vm.mod_revision))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&vkey, encode(&next)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)));
        self.commit_volume_change(txn, volume, op).await
    }

    /// The boot volume a new VM asks for: ready, free, and what the VM's spec will carry.
    pub(super) async fn boot_volume(
        &self,
        project: &str,
        name: &str,
    ) -> Result<(Versioned<Volume>, DiskAttachment), ApiError> {
        let v = self.volume_versioned(project, name, "boot_volume").await?;
        if let Some(vm) = &v.value.attached_to {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is already attached to VM \"{vm}\""
            ))
            .with_field("boot_volume"));
        }
        ready_and_alone(&v.value).map_err(|e| e.with_field("boot_volume"))?;
        // Slot 0: a new VM's devices are numbered once all are known (`number_slots`).
        let d = attachment(&v.value, true, 0);
        Ok((v, d))
    }

    /// The VM a volume is (or is to be) attached to.
    pub(super) async fn attached_vm(
        &self,
        project: &str,
        vm: &str,
    ) -> Result<Versioned<Vm>, ApiError> {
        let name = check_name("vm", vm)?;
        self.repo
            .get::<Vm>(&keys::vm(project, name.as_str()))
            .await?
            .ok_or_else(|| ApiError::not_found("VM", &name))
    }
}
