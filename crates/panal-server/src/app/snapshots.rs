//! Snapshots of volumes and of whole VMs (every volume of the VM at one instant): take, revert,
//! delete. Snapshots live inside the volumes' qcow2 files. The work is a host task for the host
//! that has the files open: the VM's host when the VM runs (its agent pauses the guest for the
//! instant the snapshot takes), else the volume's host. Reverting needs the disks out of use.
//!
//! A VM's boot disk is not part of a VM snapshot: it is the image's copy-on-write overlay,
//! which the VM owns; data that matters goes on volumes.

use super::App;
use super::volumes::{busy, idle, retrying, volume_operation};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::operation::{Operation, OperationKind, OperationTarget};
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::volume::{
    HostTask, SnapshotDisk, SnapshotStep, Volume, VolumeAccepted, VolumeAction, VolumeFormat,
};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name, OperationId};

/// Most snapshots one volume keeps.
pub const MAX_SNAPSHOTS: usize = 32;

/// A snapshot request resolved: the volumes, the VM using them, the host that does it.
struct Plan {
    volumes: Vec<Versioned<Volume>>,
    vm: Option<Versioned<Vm>>,
}

impl App {
    /// Takes, reverts or deletes a snapshot of one volume.
    pub async fn volume_snapshot(
        &self,
        project: Option<&str>,
        volume: &str,
        snapshot: &str,
        step: SnapshotStep,
    ) -> Result<VolumeAccepted, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        retrying(|| async {
            let v = self.volume_versioned(project, volume, "name").await?;
            let vm = match &v.value.attached_to {
                Some(n) => self.repo.get::<Vm>(&keys::vm(project, n.as_str())).await?,
                None => None,
            };
            let plan = Plan {
                volumes: vec![v],
                vm,
            };
            Ok(self
                .snapshot_step(project, plan, snapshot, step)
                .await?
                .map(|(op, mut vols)| VolumeAccepted {
                    volume: vols.remove(0),
                    operation: op,
                }))
        })
        .await
    }

    /// Takes, reverts or deletes a snapshot of every volume attached to a VM, at one instant.
    pub async fn vm_snapshot(
        &self,
        project: Option<&str>,
        vm_name: &str,
        snapshot: &str,
        step: SnapshotStep,
    ) -> Result<Operation, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        retrying(|| async {
            let vm = self.vm_versioned(Some(project), vm_name).await?;
            if vm.value.spec.volumes.is_empty() {
                return Err(ApiError::conflict(format!(
                    "VM \"{vm_name}\" has no volumes; a VM snapshot covers its volumes (its boot \
                     disk is the image's overlay)"
                )));
            }
            let mut volumes = Vec::new();
            for d in &vm.value.spec.volumes {
                volumes.push(
                    self.volume_versioned(project, d.volume.as_str(), "name")
                        .await?,
                );
            }
            let plan = Plan {
                volumes,
                vm: Some(vm),
            };
            Ok(self
                .snapshot_step(project, plan, snapshot, step)
                .await?
                .map(|(op, _)| op))
        })
        .await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn snapshot_step(
        &self,
        project: &str,
        plan: Plan,
        snapshot: &str,
        step: SnapshotStep,
    ) -> Result<Option<(Operation, Vec<Volume>)>, ApiError> {
        let name = check_name("snapshot", snapshot)?;
        let running = plan.vm.as_ref().is_some_and(|vm| in_use(&vm.value));
        if let Some(vm) = &plan.vm {
            busy(&vm.value).map_err(|e| e.with_field("name"))?;
        }
        for v in &plan.volumes {
            let v = &v.value;
            idle(v)?;
            if v.format != VolumeFormat::Qcow2 {
                return Err(ApiError::conflict(format!(
                    "volume \"{}\" is raw; snapshots live in qcow2 files",
                    v.name
                )));
            }
            let exists = v.snapshots.iter().any(|s| s.name == name);
            match step {
                SnapshotStep::Create if exists => {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("volume \"{}\" already has a snapshot \"{name}\"", v.name),
                    )
                    .with_field("name"));
                }
                SnapshotStep::Create if v.snapshots.len() >= MAX_SNAPSHOTS => {
                    return Err(ApiError::conflict(format!(
                        "volume \"{}\" has {MAX_SNAPSHOTS} snapshots, the most it keeps; delete one",
                        v.name
                    )));
                }
                SnapshotStep::Revert | SnapshotStep::Delete if !exists => {
                    return Err(ApiError::not_found(
                        "snapshot",
                        format!("{name} of volume {}", v.name),
                    )
                    .with_field("snapshot"));
                }
                _ => {}
            }
            if step == SnapshotStep::Revert
                && let Some(snap) = v.snapshots.iter().find(|s| s.name == name)
                && snap.size_bytes != v.size_bytes
            {
                return Err(ApiError::conflict(format!(
                    "volume \"{}\" grew since snapshot \"{name}\" was taken; reverting would \
                     shrink it",
                    v.name
                )));
            }
            if step == SnapshotStep::Revert && !v.children.is_empty() {
                return Err(ApiError::conflict(format!(
                    "volume \"{}\" is the base of linked clones; it cannot change",
                    v.name
                )));
            }
        }
        if step == SnapshotStep::Revert && running {
            return Err(ApiError::conflict(
                "a VM uses these volumes; stop it before reverting (its guest would see its disks change under it)",
            ));
        }
        // The host that has the files open does the work.
        let host: Name = match &plan.vm {
            Some(vm) if running => vm
                .value
                .status
                .host
                .clone()
                .ok_or_else(|| ApiError::unavailable("the VM has no host"))?,
            _ => plan.volumes[0].value.host.clone(),
        };
        let op_id = OperationId::new();
        let verb = match step {
            SnapshotStep::Create => "taking",
            SnapshotStep::Revert => "reverting to",
            SnapshotStep::Delete => "deleting",
        };
        let kind = match step {
            SnapshotStep::Create => OperationKind::SnapshotCreate,
            SnapshotStep::Revert => OperationKind::SnapshotRevert,
            SnapshotStep::Delete => OperationKind::SnapshotDelete,
        };
        let op = match &plan.vm {
            Some(vm) if plan.volumes.len() > 1 || vm.value.spec.volumes.len() > 1 => {
                super::vms::started_operation(
                    op_id,
                    kind,
                    OperationTarget {
                        kind: "vm".into(),
                        project: vm.value.project.clone(),
                        name: vm.value.name.clone(),
                    },
                    0,
                    &format!("{verb} snapshot {name}"),
                )
            }
            _ => volume_operation(
                op_id,
                kind,
                &plan.volumes[0].value,
                &format!("{verb} snapshot {name}"),
            ),
        };
        let task = HostTask {
            id: op_id,
            host: host.clone(),
            project: plan.volumes[0].value.project.clone(),
            volumes: plan.volumes.iter().map(|v| v.value.name.clone()).collect(),
            action: VolumeAction::Snapshot {
                step,
                name: name.to_string(),
                disks: plan
                    .volumes
                    .iter()
                    .map(|v| SnapshotDisk {
                        id: v.value.id,
                        pool: v.value.pool.clone(),
                        file: v.value.file.clone(),
                    })
                    .collect(),
            },
            operation: None,
        };
        let mut txn = Txn::new()
            .and_then(Op::put(&keys::op(&op_id), encode(&op)))
            .and_then(Op::put(
                &keys::host_task(host.as_str(), &op_id),
                encode(&task),
            ));
        if let Some(vm) = &plan.vm {
            // The VM must not start, stop or move while its disks are snapshotted.
            let vkey = keys::vm(project, vm.value.name.as_str());
            txn = txn.when(Compare::unchanged(&vkey, vm.mod_revision));
        }
        let mut out = Vec::new();
        for v in &plan.volumes {
            let key = keys::volume(project, v.value.name.as_str());
            let mut next = v.value.clone();
            next.operation = Some(op_id);
            txn = txn
                .when(Compare::unchanged(&key, v.mod_revision))
                .and_then(Op::put(&key, encode(&next)));
            out.push(next);
        }
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            return Ok(None);
        }
        for v in &mut out {
            v.revision = r.revision;
        }
        Ok(Some((op, out)))
    }
}

/// Whether a VM has (or is about to have) a hypervisor process that holds its disks open.
pub(super) fn in_use(vm: &Vm) -> bool {
    vm.spec.power_state != PowerState::Stopped
        || !matches!(
            vm.status.phase,
            VmPhase::Stopped | VmPhase::Failed | VmPhase::Pending
        )
}
