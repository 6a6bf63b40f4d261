//! Creating VMs, one (`POST /api/v1/vms`) or many (`POST /api/v1/vms:batch`). Both go through
//! [`App::plan_create`], which validates one request and builds the VM and its operation
//! without writing; single and batch create differ only in how they write.
//!
//! A batch is validated whole before anything is written (an error names the item, as
//! `vms[3].name`), then written in as few transactions as the store takes
//! ([`panal_store::Store::max_txn_ops`]): one on the embedded engine, chunks of 64 VMs on etcd.
//! Each transaction creates its VMs only if none exists and the project is unchanged. When a
//! later chunk loses (a name taken meanwhile, the project deleted), the chunks already written
//! are taken back, so a batch is all or none as far as any caller of this API can observe after
//! the answer.

use super::{App, validate};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::host::Host;
use panal_types::operation::{Operation, OperationKind};
use panal_types::project::Project;
use panal_types::vm::{
    HypervisorKind, MAX_BATCH_CREATE, PowerState, Vm, VmAccepted, VmBatchAccepted, VmBatchItem,
    VmCreate, VmPhase, VmSpec, VmStatus,
};
use panal_types::volume::Volume;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, OperationId, VmId};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::vms::{DEFAULT_MEMORY_BYTES, new_operation};

/// Times a single create plans its NICs again after losing their addresses to concurrent
/// creates: this many creates racing on one network all succeed.
const NIC_ROUNDS: usize = 64;

/// What validating a create reads from the store, read once per request or per batch.
#[derive(Default)]
pub(super) struct CreateContext {
    hosts: Option<Arc<Vec<Host>>>,
    projects: HashMap<String, Versioned<Project>>,
    limits: HashMap<HypervisorKind, Option<(u32, u64)>>,
    nics: super::ipam::NicContext,
}

/// A validated create: the VM and its operation, not yet written.
pub(super) struct PlannedCreate {
    /// The VM's key.
    pub key: String,
    /// The project's key and the revision validation read it at.
    pub project_key: String,
    pub project_rev: u64,
    pub vm: Vm,
    pub op: Operation,
    /// The volume it boots from, as validation read it (taken in the same transaction).
    pub boot: Option<Versioned<Volume>>,
    /// Its NICs' address-management records (compared absent and written with the VM).
    pub nics: super::ipam::PlannedNics,
}

impl App {
    /// Validates one create request and builds what it writes.
    pub(super) async fn plan_create(
        &self,
        ctx: &mut CreateContext,
        req: VmCreate,
    ) -> Result<PlannedCreate, ApiError> {
        let name = check_name("name", &req.name)?;
        let project_name = req.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let project = match ctx.projects.get(project_name) {
            Some(p) => p.clone(),
            None => {
                let p = self.project(project_name, "project").await?;
                ctx.projects.insert(project_name.to_owned(), p.clone());
                p
            }
        };
        if project.value.deleting {
            return Err(
                ApiError::conflict(format!("project \"{project_name}\" is being deleted"))
                    .with_field("project"),
            );
        }
        let hosts = match &ctx.hosts {
            Some(h) => h.clone(),
            None => {
                let h = self.all_hosts_cached().await?;
                ctx.hosts = Some(h.clone());
                h
            }
        };
        let hypervisor = req.hypervisor.unwrap_or_default();
        let limits = *ctx
            .limits
            .entry(hypervisor)
            .or_insert_with(|| validate::pool_limits(&hosts, hypervisor));
        let vcpus = req.vcpus.unwrap_or(1);
        validate::vcpus(vcpus, limits)?;
        let memory_bytes = req.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES);
        validate::memory(memory_bytes, limits)?;
        validate::labels(&req.labels)?;
        let stop_timeout_secs = req.stop_timeout_secs.unwrap_or(30);
        validate::stop_timeout(stop_timeout_secs)?;
        let placement = validate::placement(
            &hosts,
            hypervisor,
            &req.host_selector,
            req.zone.as_deref(),
            &req.capabilities,
            req.placement_group.as_ref(),
        )?;
        if req.image.is_some() && req.boot_volume.is_some() {
            return Err(ApiError::invalid(
                "boot_volume",
                "a VM boots from an image or from a volume, not both",
            ));
        }
        let image = match &req.image {
            None => None,
            Some(i) => Some(self.image_ref(project_name, i).await?),
        };
        let boot_volume = match &req.boot_volume {
            Some(v) => Some(self.boot_volume(project_name, v).await?),
            None => None,
        };
        let hotplug_slots = validate::hotplug_slots(
            req.hotplug_slots,
            usize::from(req.boot_volume.is_some()) + req.nics.len(),
        )?;
        let nics = self
            .plan_nics(&mut ctx.nics, project_name, &name, &req.nics)
            .await?;
        let start = req.start.unwrap_or(true);
        let op_id = OperationId::new();
        let mut vm = Vm {
            id: VmId::new(),
            name: name.clone(),
            project: project.value.name.clone(),
            generation: 1,
            spec: VmSpec {
                vcpus,
                memory_bytes,
                image,
                hypervisor,
                machine: req.machine.unwrap_or_default(),
                labels: req.labels,
                restart_policy: req.restart_policy.unwrap_or_default(),
                power_state: if start {
                    PowerState::Running
                } else {
                    PowerState::Stopped
                },
                stop_timeout_secs,
                restart_nonce: 0,
                force_stop: false,
                deleted: false,
                placement,
                volumes: boot_volume.iter().map(|(_, d)| d.clone()).collect(),
                nics: nics.nics.clone(),
                hotplug_slots,
            },
            status: VmStatus {
                phase: VmPhase::Pending,
                host: None,
                reason: None,
                placement: None,
                observed_generation: 0,
                observed_restart_nonce: 0,
                operation: Some(op_id),
                restarts: 0,
                events: vec![],
                moving: None,
                migration: None,
                home: None,
            },
            created_at: chrono::Utc::now(),
            revision: 0,
        };
        vm.spec.number_slots();
        let op = new_operation(op_id, OperationKind::VmCreate, &vm, "waiting for a host");
        Ok(PlannedCreate {
            key: keys::vm(project_name, name.as_str()),
            project_key: keys::project(project_name),
            project_rev: project.mod_revision,
            vm,
            op,
            boot: boot_volume.map(|(v, _)| v),
            nics,
        })
    }

    /// Creates a VM (and starts it unless `start: false`).
    pub async fn create_vm(&self, req: VmCreate) -> Result<VmAccepted, ApiError> {
        // A NIC's address can be taken by a concurrent create between planning and writing:
        // plan again (the lost address is then seen as taken). Concurrent creates on one
        // network all plan the same lowest free address and one wins each round, so the last
        // of N needs N rounds.
        for _ in 0..NIC_ROUNDS {
            match self.create_vm_once(req.clone()).await {
                Err(e) if e.code == ErrorCode::Internal && !req.nics.is_empty() => continue,
                r => return r,
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "concurrent creates kept taking the addresses planned for the NICs; retry",
        )
        .with_field("nics"))
    }

    async fn create_vm_once(&self, req: VmCreate) -> Result<VmAccepted, ApiError> {
        let p = self.plan_create(&mut CreateContext::default(), req).await?;
        let mut txn = Txn::new()
            .when(Compare::absent(&p.key))
            .when(Compare::unchanged(&p.project_key, p.project_rev))
            .and_then(Op::put(&p.key, encode(&p.vm)))
            .and_then(Op::put(&keys::op(&p.op.id), encode(&p.op)));
        txn = with_nics(txn, &p.nics);
        if let Some(v) = &p.boot {
            // The volume is the VM's from the same instant; a concurrent attach loses.
            let vkey = keys::volume(p.vm.project.as_str(), v.value.name.as_str());
            let mut taken = v.value.clone();
            taken.attached_to = Some(p.vm.name.clone());
            txn = txn
                .when(Compare::unchanged(&vkey, v.mod_revision))
                .and_then(Op::put(&vkey, encode(&taken)));
        }
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            let e = self.why_create_lost(&p).await;
            if p.boot.is_some() && e.code == ErrorCode::Internal {
                return Err(ApiError::new(
                    ErrorCode::PreconditionFailed,
                    "the boot volume changed meanwhile; retry",
                )
                .with_field("boot_volume"));
            }
            return Err(e);
        }
        let mut vm = p.vm;
        vm.revision = r.revision;
        Ok(VmAccepted {
            vm,
            operation: p.op,
        })
    }

    /// Creates 1 to [`MAX_BATCH_CREATE`] VMs, all or none.
    pub async fn create_vms(&self, reqs: Vec<VmCreate>) -> Result<VmBatchAccepted, ApiError> {
        if reqs.is_empty() || reqs.len() > MAX_BATCH_CREATE {
            return Err(ApiError::invalid(
                "vms",
                format!(
                    "a batch creates 1 to {MAX_BATCH_CREATE} VMs, not {}",
                    reqs.len()
                ),
            ));
        }
        let mut seen = HashSet::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            if r.boot_volume.is_some() {
                return Err(ApiError::invalid(
                    "boot_volume",
                    "VMs that boot from volumes are created one at a time",
                )
                .in_item(i));
            }
            let project = r.project.as_deref().unwrap_or(DEFAULT_PROJECT);
            if !seen.insert((project, r.name.as_str())) {
                return Err(ApiError::invalid(
                    "name",
                    format!("VM name \"{}\" appears more than once in the batch", r.name),
                )
                .in_item(i));
            }
        }
        let mut ctx = CreateContext::default();
        let mut planned = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.into_iter().enumerate() {
            planned.push(
                self.plan_create(&mut ctx, r)
                    .await
                    .map_err(|e| e.in_item(i))?,
            );
        }
        // Per VM: one compare and two puts, and per NIC two compares and two puts (networks
        // are compared once per VM at most); per project: one compare.
        let max = self.repo.store().max_txn_ops();
        let per_vm = planned
            .iter()
            .map(|p| 2 + p.nics.ops.len())
            .max()
            .unwrap_or(2);
        let chunk = ((max - ctx.projects.len().min(max / 2)) / per_vm).max(1);
        let mut written: Vec<(usize, u64)> = Vec::new();
        for (c, part) in planned.chunks(chunk).enumerate() {
            let mut txn = Txn::new();
            let mut projects = HashSet::new();
            for p in part {
                if projects.insert(p.project_key.as_str()) {
                    txn = txn.when(Compare::unchanged(&p.project_key, p.project_rev));
                }
                txn = txn
                    .when(Compare::absent(&p.key))
                    .and_then(Op::put(&p.key, encode(&p.vm)))
                    .and_then(Op::put(&keys::op(&p.op.id), encode(&p.op)));
                txn = with_nics(txn, &p.nics);
            }
            let r = match self.repo.txn(txn).await {
                Ok(r) if r.succeeded => r,
                lost => {
                    self.take_back(&planned, &written).await;
                    lost?;
                    for (j, p) in part.iter().enumerate() {
                        let e = self.why_create_lost(p).await;
                        if e.code != ErrorCode::Internal {
                            return Err(e.in_item(c * chunk + j));
                        }
                    }
                    return Err(ApiError::new(
                        ErrorCode::PreconditionFailed,
                        "the project changed while the batch was written; retry",
                    ));
                }
            };
            written.extend((0..part.len()).map(|j| (c * chunk + j, r.revision)));
        }
        Ok(VmBatchAccepted {
            vms: planned
                .into_iter()
                .map(|p| VmBatchItem {
                    id: p.vm.id,
                    name: p.vm.name,
                    project: p.vm.project,
                    operation: p.op.id,
                })
                .collect(),
        })
    }

    /// Why a create transaction did not succeed: the name is taken, or the project is gone.
    async fn why_create_lost(&self, p: &PlannedCreate) -> ApiError {
        let project = p.vm.project.as_str();
        match self.repo.get::<Vm>(&p.key).await {
            Err(e) => e,
            Ok(Some(_)) => ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "a VM named \"{}\" already exists in project \"{project}\"",
                    p.vm.name
                ),
            )
            .with_field("name"),
            Ok(None) => match self.project(project, "project").await {
                Err(e) => e,
                Ok(v) if v.value.deleting => {
                    ApiError::conflict(format!("project \"{project}\" is being deleted"))
                        .with_field("project")
                }
                Ok(v) if v.mod_revision != p.project_rev => ApiError::new(
                    ErrorCode::PreconditionFailed,
                    format!("project \"{project}\" changed meanwhile; retry"),
                )
                .with_field("project"),
                // Nothing about this item: it was refused with the rest of its transaction.
                Ok(_) => ApiError::internal(),
            },
        }
    }

    /// Undoes the chunks of a batch already written when a later one lost: each VM record
    /// still as written is removed with its operation; one that a controller already moved on
    /// (placed) goes through the ordinary delete, which releases what it holds.
    async fn take_back(&self, planned: &[PlannedCreate], written: &[(usize, u64)]) {
        for &(i, rev) in written {
            let p = &planned[i];
            let mut txn = Txn::new()
                .when(Compare::unchanged(&p.key, rev))
                .and_then(Op::delete(&p.key))
                .and_then(Op::delete(&keys::op(&p.op.id)));
            for op in super::ipam::release_ops(&p.vm) {
                txn = txn.and_then(op);
            }
            match self.repo.txn(txn).await {
                Ok(r) if r.succeeded => {}
                _ => {
                    if let Err(e) = self
                        .delete_vm(Some(p.vm.project.as_str()), p.vm.name.as_str())
                        .await
                    {
                        tracing::warn!(vm = %p.key, error = %e.message, "could not take back a VM of a failed batch");
                    }
                }
            }
        }
    }
}

/// Errors of one item of a batch name it: `vms[3].name`.
trait InItem {
    fn in_item(self, i: usize) -> Self;
}

impl InItem for ApiError {
    fn in_item(mut self, i: usize) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) => format!("vms[{i}].{f}"),
            None => format!("vms[{i}]"),
        });
        self.message = format!("vms[{i}]: {}", self.message);
        self
    }
}

/// Adds what a VM's NICs take to its create transaction.
fn with_nics(mut txn: Txn, nics: &super::ipam::PlannedNics) -> Txn {
    for c in &nics.compares {
        txn = txn.when(c.clone());
    }
    for op in &nics.ops {
        txn = txn.and_then(op.clone());
    }
    txn
}
