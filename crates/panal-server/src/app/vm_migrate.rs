//! Asking for a live migration: the one transaction that reserves room on the target (after the
//! pre-flight check of `migration_preflight`), records the migration on the VM and creates its
//! operation; moving VMs back home; and a cancel, a flag on that record. What the agents report
//! is in `migration_reports`.

use super::App;
use super::migration_preflight::{ROOT_DISK, movable, preflight, settings, unmovable};
use super::migration_reports::USER_CANCEL;
use super::vms::new_operation;
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::host::{Host, HostMoveBack, HostState};
use panal_types::image::{Image, ImageKind};
use panal_types::migration::{
    MigratingVolume, MigrationAccepted, MigrationPlan, MigrationStep, VmMigrate, VmMigration,
    migrated_file,
};
use panal_types::operation::OperationKind;
use panal_types::vm::{Vm, VmAccepted};
use panal_types::volume::Volume;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, OperationId};

impl App {
    /// Checks a live migration and, unless it is a dry run, starts it.
    pub async fn migrate_vm(
        &self,
        project: Option<&str>,
        name: &str,
        req: VmMigrate,
    ) -> Result<MigrationAccepted, ApiError> {
        self.migrate_vm_for(project, name, req, None).await
    }

    /// [`App::migrate_vm`], on behalf of a host drain when `drain` is given.
    pub(crate) async fn migrate_vm_for(
        &self,
        project: Option<&str>,
        name: &str,
        req: VmMigrate,
        drain: Option<OperationId>,
    ) -> Result<MigrationAccepted, ApiError> {
        let settings = settings(&req)?;
        let to = match &req.to {
            Some(t) => Some(check_name("to", t)?),
            None => None,
        };
        let project = project.unwrap_or(DEFAULT_PROJECT);
        for _ in 0..8 {
            let cur = self.vm_versioned(Some(project), name).await?;
            let vm = &cur.value;
            let from_name = movable(vm)?;
            let (hosts, _, _) = self.repo.list::<Host>(keys::HOSTS, None, 0).await?;
            let Some(from) = hosts.iter().position(|h| h.value.name == from_name) else {
                return Err(ApiError::conflict(format!(
                    "host {from_name} of VM \"{name}\" is gone"
                )));
            };
            let others: Vec<Vm> = if vm.spec.placement.group.is_some() {
                let (vms, _, _) = self
                    .repo
                    .list::<Vm>(&keys::vms_of(project), None, 0)
                    .await?;
                vms.into_iter().map(|v| v.value).collect()
            } else {
                Vec::new()
            };
            let local_root = self.boots_from_disk_image(vm).await?;
            for d in vm.spec.volumes.iter().filter(|d| !d.shared) {
                if let Some(v) = self
                    .repo
                    .get::<Volume>(&keys::volume(project, d.volume.as_str()))
                    .await?
                    && let Some(why) = unmovable(&v.value)
                {
                    return Err(ApiError::conflict(format!(
                        "VM \"{name}\" cannot move live: {why}"
                    ))
                    .with_field("vm"));
                }
            }
            if settings.post_copy && (local_root || vm.spec.volumes.iter().any(|d| !d.shared)) {
                return Err(ApiError::invalid(
                    "post_copy",
                    format!(
                        "VM \"{name}\" has local disks, which move before the memory: post-copy \
                         is for VMs whose disks are all on shared storage"
                    ),
                ));
            }
            let plain: Vec<Host> = hosts.iter().map(|h| h.value.clone()).collect();
            let pf = preflight(
                &self.config().policy,
                vm,
                from,
                &plain,
                &others,
                to.as_ref(),
                local_root,
            )?;
            let target = &hosts[pf.target];
            let plan = MigrationPlan {
                vm: vm.name.clone(),
                project: vm.project.clone(),
                from: from_name.clone(),
                to: target.value.name.clone(),
                reason: pf.reason,
                memory_bytes: vm.spec.memory_bytes,
                settings: settings.clone(),
                shared_volumes: vm
                    .spec
                    .volumes
                    .iter()
                    .filter(|d| d.shared)
                    .map(|d| d.volume.clone())
                    .collect(),
                local_disks: local_root
                    .then(|| ROOT_DISK.to_string())
                    .into_iter()
                    .chain(
                        vm.spec
                            .volumes
                            .iter()
                            .filter(|d| !d.shared)
                            .map(|d| d.volume.to_string()),
                    )
                    .collect(),
                networks: vm.spec.nics.iter().map(|n| n.network.clone()).collect(),
                checks: pf.checks,
            };
            if req.dry_run == Some(true) {
                return Ok(MigrationAccepted {
                    plan,
                    vm: None,
                    operation: None,
                });
            }
            if let Some(accepted) = self
                .start_migration(&cur, target, plan.clone(), drain)
                .await?
            {
                return Ok(MigrationAccepted {
                    plan,
                    vm: Some(accepted.vm),
                    operation: Some(accepted.operation),
                });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM or the target host kept changing; retry",
        ))
    }

    /// Whether the VM's root disk is a per-host overlay of a disk image.
    async fn boots_from_disk_image(&self, vm: &Vm) -> Result<bool, ApiError> {
        if vm.spec.volumes.first().is_some_and(|d| d.boot) {
            return Ok(false);
        }
        let Some(image) = &vm.spec.image else {
            return Ok(false);
        };
        for p in [vm.project.as_str(), DEFAULT_PROJECT] {
            if let Some(i) = self
                .repo
                .get::<Image>(&keys::image(p, image.as_str()))
                .await?
            {
                return Ok(i.value.kind == ImageKind::Disk);
            }
        }
        Ok(false)
    }

    /// Reserves room on the target and records the migration, in one transaction. `None`: the
    /// VM or the target changed meanwhile (check again).
    async fn start_migration(
        &self,
        cur: &Versioned<Vm>,
        target: &Versioned<Host>,
        plan: MigrationPlan,
        drain: Option<OperationId>,
    ) -> Result<Option<VmAccepted>, ApiError> {
        let mut vm = cur.value.clone();
        let op_id = OperationId::new();
        let local: Vec<MigratingVolume> = vm
            .spec
            .volumes
            .iter()
            .filter(|d| !d.shared)
            .map(|d| MigratingVolume {
                id: d.id,
                volume: d.volume.clone(),
                pool: d.pool.clone(),
                file: d.file.clone(),
                target_file: migrated_file(&d.file, &op_id),
                format: d.format,
                size_bytes: d.size_bytes,
            })
            .collect();
        vm.status.migration = Some(VmMigration {
            operation: op_id,
            from: plan.from.clone(),
            to: plan.to.clone(),
            step: MigrationStep::Preparing,
            settings: plan.settings,
            destination: None,
            // The copy names disks by id: the root overlay's, and each volume's.
            disks: plan
                .local_disks
                .iter()
                .filter(|d| d.as_str() == ROOT_DISK)
                .cloned()
                .chain(local.iter().map(|v| v.id.to_string()))
                .collect(),
            volumes: local,
            disk_destination: None,
            cancel_reason: None,
            drain,
            started_at: chrono::Utc::now(),
        });
        vm.status.operation = Some(op_id);
        vm.status.push_event(
            "MigrationStarted",
            format!("live migration to host {} ({})", plan.to, plan.reason),
        );
        let op = new_operation(
            op_id,
            OperationKind::VmMigrate,
            &vm,
            &format!("preparing host {} to receive the VM", plan.to),
        );
        let mut host = target.value.clone();
        host.allocation.vcpus += u64::from(vm.spec.vcpus);
        host.allocation.memory_bytes += vm.spec.memory_bytes;
        host.allocation.vms += 1;
        let vkey = keys::vm(vm.project.as_str(), vm.name.as_str());
        let hkey = keys::host(host.name.as_str());
        let txn = Txn::new()
            .when(Compare::unchanged(&vkey, cur.mod_revision))
            .when(Compare::unchanged(&hkey, target.mod_revision))
            .and_then(Op::put(&vkey, encode(&vm)))
            .and_then(Op::put(&hkey, encode(&host)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)));
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            return Ok(None);
        }
        self.forget_host_cache();
        vm.revision = r.revision;
        Ok(Some(VmAccepted { vm, operation: op }))
    }

    /// Live-migrates back to `host` the running VMs a drain moved off it.
    pub async fn move_back(&self, host: &str) -> Result<HostMoveBack, ApiError> {
        let name = check_name("name", host)?;
        let h = self.host(name.as_str()).await?;
        if h.state != HostState::Ready {
            return Err(ApiError::conflict(format!(
                "host {name} is {} and takes no VMs; uncordon it first",
                h.state.as_str()
            ))
            .with_field("name"));
        }
        let (vms, _, _) = self.repo.list::<Vm>(keys::VMS, None, 0).await?;
        let mut out = HostMoveBack {
            migrations: Vec::new(),
            skipped: Vec::new(),
        };
        for v in vms.iter().map(|v| &v.value) {
            if v.status.home.as_ref() != Some(&name) {
                continue;
            }
            let req = VmMigrate {
                to: Some(name.to_string()),
                ..VmMigrate::default()
            };
            match self
                .migrate_vm(Some(v.project.as_str()), v.name.as_str(), req)
                .await
            {
                Ok(MigrationAccepted {
                    operation: Some(op),
                    ..
                }) => out.migrations.push(op),
                Ok(_) => {}
                Err(e) => out
                    .skipped
                    .push(format!("{}/{}: {}", v.project, v.name, e.message)),
            }
        }
        Ok(out)
    }

    /// Asks for a migration in flight to stop: the VM stays where it runs.
    pub async fn cancel_migration(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        for _ in 0..8 {
            let cur = self.vm_versioned(Some(project), name).await?;
            let Some(m) = cur.value.status.migration.clone() else {
                return Err(
                    ApiError::conflict(format!("VM \"{name}\" is not migrating")).with_field("vm"),
                );
            };
            let Some(op) = self.repo.get(&keys::op(&m.operation)).await? else {
                return Err(ApiError::not_found("operation", m.operation));
            };
            if m.step == MigrationStep::Cancelling {
                return Ok(VmAccepted {
                    vm: cur.value,
                    operation: op.value,
                });
            }
            if let Some(done) = self.request_cancel(&cur, USER_CANCEL.into()).await? {
                return Ok(VmAccepted {
                    vm: done,
                    operation: op.value,
                });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the VM kept changing; retry",
        ))
    }
}
