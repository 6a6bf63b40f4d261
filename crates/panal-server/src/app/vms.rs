//! VM use cases: create, read, list, update, start, stop, restart, delete. Each change writes the
//! new desired state and an operation in one transaction; the scheduler and the host agent then
//! converge, and the operation completes when the agent reports the state it asked for.

use super::{App, next_token, page_bounds, validate};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::operation::{Operation, OperationKind, OperationState, OperationTarget, Progress};
use panal_types::page::Page;
use panal_types::size::MIB;
use panal_types::vm::{PowerState, Vm, VmAccepted, VmPhase, VmUpdate};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name, OperationId};

/// Memory a VM gets when the request does not say.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 * MIB;

impl App {
    /// Reads a VM.
    pub async fn vm(&self, project: Option<&str>, name: &str) -> Result<Vm, ApiError> {
        Ok(self.vm_versioned(project, name).await?.value)
    }

    pub(super) async fn vm_versioned(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Versioned<Vm>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let pname = check_name("project", project)?;
        let vname = check_name("name", name)?;
        let key = keys::vm(pname.as_str(), vname.as_str());
        match self.repo.get::<Vm>(&key).await? {
            Some(mut v) => {
                v.value.revision = v.mod_revision;
                Ok(v)
            }
            None => {
                // Say which of the two is missing.
                self.project(project, "project").await?;
                Err(ApiError::not_found("VM", vname))
            }
        }
    }

    /// Lists the VMs of a project.
    pub async fn list_vms(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Vm>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::vms_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<Vm>(&prefix, start.as_deref(), limit)
            .await?;
        let items: Vec<Vm> = items
            .into_iter()
            .map(|v| {
                let mut vm = v.value;
                vm.revision = v.mod_revision;
                vm
            })
            .collect();
        let last = items.last().map(|v| v.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Changes size, labels or policies. Size changes are applied live by the agent where the
    /// hypervisor can, otherwise at the next boot (the VM's events say which).
    pub async fn update_vm(
        &self,
        project: Option<&str>,
        name: &str,
        req: VmUpdate,
    ) -> Result<Vm, ApiError> {
        let current = self.vm_versioned(project, name).await?;
        let hypervisor = current.value.spec.hypervisor;
        let limits = self.pool_limits(hypervisor).await?;
        if let Some(v) = req.vcpus {
            validate::vcpus(v, limits)?;
        }
        if let Some(m) = req.memory_bytes {
            validate::memory(m, limits)?;
        }
        if let Some(l) = &req.labels {
            validate::labels(l)?;
        }
        if let Some(t) = req.stop_timeout_secs {
            validate::stop_timeout(t)?;
        }
        if let Some(n) = req.hotplug_slots {
            validate::hotplug_slots(Some(n), 0)?;
        }
        let key = keys::vm(current.value.project.as_str(), current.value.name.as_str());
        let updated = self
            .repo
            .update::<Vm, _>(&key, |vm| {
                if vm.spec.deleted {
                    return Err(ApiError::conflict("the VM is being deleted")
                        .with_operation_opt(vm.status.operation));
                }
                if let Some(g) = req.if_generation
                    && g != vm.generation
                {
                    return Err(ApiError::new(
                        ErrorCode::PreconditionFailed,
                        format!("the VM is at generation {}, not {g}", vm.generation),
                    )
                    .with_field("if_generation"));
                }
                let before = vm.spec.clone();
                if let Some(v) = req.vcpus {
                    vm.spec.vcpus = v;
                }
                if let Some(m) = req.memory_bytes {
                    vm.spec.memory_bytes = m;
                }
                if let Some(l) = &req.labels {
                    vm.spec.labels = l.clone();
                }
                if let Some(p) = req.restart_policy {
                    vm.spec.restart_policy = p;
                }
                if let Some(t) = req.stop_timeout_secs {
                    vm.spec.stop_timeout_secs = t;
                }
                if let Some(n) = req.hotplug_slots
                    && n != vm.spec.hotplug_slots
                {
                    slots_can_become(vm, n)?;
                    vm.spec.hotplug_slots = n;
                }
                if vm.spec == before {
                    return Ok(false);
                }
                vm.generation += 1;
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("VM", name))?;
        let mut vm = updated.value;
        vm.revision = updated.mod_revision;
        Ok(vm)
    }

    /// Starts a stopped or failed VM (or resumes a paused one).
    pub async fn start_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        self.power_change(project, name, OperationKind::VmStart, |vm| {
            if vm.spec.power_state == PowerState::Running && vm.status.phase == VmPhase::Running {
                return Err(ApiError::conflict(format!(
                    "VM \"{}\" is already running",
                    vm.name
                )));
            }
            vm.spec.power_state = PowerState::Running;
            vm.spec.force_stop = false;
            Ok(())
        })
        .await
    }

    /// Stops a VM: asks the guest, then forces it off after its stop timeout (or at once with `force`).
    pub async fn stop_vm(
        &self,
        project: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<VmAccepted, ApiError> {
        self.power_change(project, name, OperationKind::VmStop, |vm| {
            if vm.spec.power_state == PowerState::Stopped
                && matches!(
                    vm.status.phase,
                    VmPhase::Stopped | VmPhase::Failed | VmPhase::Pending
                )
            {
                return Err(ApiError::conflict(format!(
                    "VM \"{}\" is already stopped",
                    vm.name
                )));
            }
            vm.spec.power_state = PowerState::Stopped;
            vm.spec.force_stop = force;
            Ok(())
        })
        .await
    }

    /// Restarts a running VM.
    pub async fn restart_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        self.power_change(project, name, OperationKind::VmRestart, |vm| {
            if vm.spec.power_state != PowerState::Running || vm.status.phase != VmPhase::Running {
                return Err(ApiError::conflict(format!(
                    "VM \"{}\" is not running; start it instead",
                    vm.name
                )));
            }
            vm.spec.restart_nonce += 1;
            Ok(())
        })
        .await
    }

    /// Pauses a running VM's vCPUs (its memory stays).
    pub async fn pause_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        self.power_change(project, name, OperationKind::VmPause, |vm| {
            if vm.spec.power_state != PowerState::Running || vm.status.phase != VmPhase::Running {
                return Err(ApiError::conflict(format!(
                    "VM \"{}\" is not running",
                    vm.name
                )));
            }
            vm.spec.power_state = PowerState::Paused;
            Ok(())
        })
        .await
    }

    /// Resumes a paused VM.
    pub async fn resume_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        self.power_change(project, name, OperationKind::VmResume, |vm| {
            if vm.spec.power_state != PowerState::Paused {
                return Err(ApiError::conflict(format!(
                    "VM \"{}\" is not paused",
                    vm.name
                )));
            }
            vm.spec.power_state = PowerState::Running;
            Ok(())
        })
        .await
    }

    /// Deletes a VM: the agent stops it and cleans up, then the record goes.
    pub async fn delete_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        let accepted = self
            .power_change(project, name, OperationKind::VmDelete, |vm| {
                vm.spec.deleted = true;
                vm.spec.power_state = PowerState::Stopped;
                vm.spec.force_stop = true;
                vm.status.phase = VmPhase::Deleting;
                Ok(())
            })
            .await?;
        // A VM that never reached a host has nothing to clean up: remove it now.
        if accepted.vm.status.host.is_none() {
            self.finish_delete(&accepted.vm).await?;
        }
        Ok(accepted)
    }

    /// Writes a desired-state change and its operation in one transaction, refusing while another
    /// operation holds the VM (a forced stop takes over from a start that is still booting).
    async fn power_change<F>(
        &self,
        project: Option<&str>,
        name: &str,
        kind: OperationKind,
        change: F,
    ) -> Result<VmAccepted, ApiError>
    where
        F: Fn(&mut Vm) -> Result<(), ApiError>,
    {
        for _ in 0..16 {
            let cur = self.vm_versioned(project, name).await?;
            let mut vm = cur.value;
            let mut txn = Txn::new();
            if let Some(held_by) = vm.status.operation {
                let held = self.repo.get::<Operation>(&keys::op(&held_by)).await?;
                match held {
                    Some(h) if h.value.state == OperationState::Running => {
                        let force_takes_over = kind == OperationKind::VmStop
                            && matches!(
                                h.value.kind,
                                OperationKind::VmStart
                                    | OperationKind::VmCreate
                                    | OperationKind::VmRestart
                            );
                        if vm.spec.deleted || !force_takes_over {
                            return Err(ApiError::conflict(format!(
                                "VM \"{}\" is busy with operation {} ({})",
                                vm.name,
                                held_by,
                                h.value.kind.as_str()
                            ))
                            .with_operation(held_by));
                        }
                        let mut cancelled = h.value;
                        cancelled.state = OperationState::Cancelled;
                        cancelled.progress.message =
                            format!("superseded by a {} request", kind.as_str());
                        cancelled.updated_at = chrono::Utc::now();
                        let op_key = keys::op(&held_by);
                        txn = txn
                            .when(Compare::unchanged(&op_key, h.mod_revision))
                            .and_then(Op::put(&op_key, encode(&cancelled)));
                    }
                    _ => {}
                }
            }
            change(&mut vm)?;
            vm.generation += 1;
            let op_id = OperationId::new();
            vm.status.operation = Some(op_id);
            let op = new_operation(op_id, kind, &vm, "waiting for the host");
            let key = keys::vm(vm.project.as_str(), vm.name.as_str());
            txn = txn
                .when(Compare::unchanged(&key, cur.mod_revision))
                .and_then(Op::put(&key, encode(&vm)))
                .and_then(Op::put(&keys::op(&op_id), encode(&op)));
            let r = self.repo.txn(txn).await?;
            if r.succeeded {
                vm.revision = r.revision;
                return Ok(VmAccepted { vm, operation: op });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; retry",
        ))
    }

    pub(super) async fn image_ref(&self, project: &str, image: &str) -> Result<Name, ApiError> {
        let name = check_name("image", image)?;
        let found = self
            .repo
            .get::<serde_json::Value>(&keys::image(project, name.as_str()))
            .await?
            .is_some()
            || self
                .repo
                .get::<serde_json::Value>(&keys::image(DEFAULT_PROJECT, name.as_str()))
                .await?
                .is_some();
        if !found {
            return Err(ApiError::not_found("image", &name).with_field("image"));
        }
        Ok(name)
    }
}

/// A fresh running operation on a VM.
pub(crate) fn new_operation(
    id: OperationId,
    kind: OperationKind,
    vm: &Vm,
    message: &str,
) -> Operation {
    let target = OperationTarget {
        kind: "vm".into(),
        project: vm.project.clone(),
        name: vm.name.clone(),
    };
    started_operation(id, kind, target, vm.generation, message)
}

/// A fresh running operation on any target.
pub(crate) fn started_operation(
    id: OperationId,
    kind: OperationKind,
    target: OperationTarget,
    target_generation: u64,
    message: &str,
) -> Operation {
    let now = chrono::Utc::now();
    Operation {
        id,
        kind,
        target,
        state: OperationState::Running,
        progress: Progress {
            percent: Some(0),
            message: message.into(),
        },
        error: None,
        created_at: now,
        updated_at: now,
        target_generation,
        migration: None,
    }
}

pub(super) trait WithOperationOpt {
    fn with_operation_opt(self, op: Option<OperationId>) -> Self;
}

impl WithOperationOpt for ApiError {
    fn with_operation_opt(self, op: Option<OperationId>) -> Self {
        match op {
            Some(op) => self.with_operation(op),
            None => self,
        }
    }
}

/// Whether `vm`'s slots can become `n`: only while it is stopped (a running q35 machine cannot
/// gain or lose PCIe root ports, and its layout must match any migration's destination), and
/// never below a slot a device holds (devices keep their slot while attached).
fn slots_can_become(vm: &Vm, n: u32) -> Result<(), ApiError> {
    let stopped = vm.spec.power_state == PowerState::Stopped
        && matches!(
            vm.status.phase,
            VmPhase::Stopped | VmPhase::Pending | VmPhase::Failed
        );
    if !stopped {
        return Err(ApiError::conflict(format!(
            "VM \"{}\" is {}: its slots can change only while it is stopped (a VM's PCIe \
             ports are laid out when it boots); stop it first",
            vm.name,
            vm.status.phase.as_str()
        ))
        .with_field("hotplug_slots"));
    }
    let held = vm
        .spec
        .volumes
        .iter()
        .map(|v| (v.slot, format!("volume \"{}\"", v.volume)))
        .chain(
            vm.spec
                .nics
                .iter()
                .map(|n| (n.slot, format!("NIC {} on network \"{}\"", n.id, n.network))),
        )
        .max_by_key(|(slot, _)| *slot);
    if let Some((slot, device)) = held
        && slot >= n
    {
        return Err(ApiError::conflict(format!(
            "{device} holds slot {slot} of VM \"{}\": it needs at least {} slots while that \
             device is attached (devices keep their slot; detach it first)",
            vm.name,
            slot + 1
        ))
        .with_field("hotplug_slots"));
    }
    Ok(())
}
