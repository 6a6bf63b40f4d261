//! Volume use cases: create (empty, cloned or copied from an image), read, list, grow, move,
//! delete. Attaching and detaching are in `volume_attach.rs`.
//!
//! Work on a volume's file is a host task queued in the store for the volume's host, written in
//! the same transaction as the volume record and its operation; the agent does it and reports
//! back (see `host_tasks`). Attaching, detaching and growing an attached volume change the VM's
//! spec instead: the VM's agent applies them (live on a running VM) and the operation completes
//! when the VM reports that generation, as other VM changes do.

use super::vms::WithOperationOpt;
use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::host::Host;
use panal_types::image::{DiskFormat, ImageKind};
use panal_types::operation::{OperationKind, OperationTarget};
use panal_types::page::Page;
use panal_types::size::MIB;
use panal_types::vm::Vm;
use panal_types::volume::{
    CloneFrom, DiskAttachment, HostTask, ImageCopy, Volume, VolumeAccepted, VolumeAction,
    VolumeCreate, VolumeFormat, VolumeMove, VolumePhase, VolumeSource,
};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name, OperationId, VolumeId};

/// The largest volume: 64 TiB.
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;
/// Most volumes one VM can have attached (each hot-pluggable slot is a PCIe root port).
pub const MAX_VOLUMES_PER_VM: usize = 8;
/// The pool a volume goes to when the request names none.
pub const DEFAULT_POOL: &str = "default";

impl App {
    /// Creates a volume: empty, or cloned from another volume (linked or full copy).
    pub async fn create_volume(&self, req: VolumeCreate) -> Result<VolumeAccepted, ApiError> {
        let name = check_name("name", &req.name)?;
        let project_name = req.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let project = self.project(project_name, "project").await?;
        if project.value.deleting {
            return Err(
                ApiError::conflict(format!("project \"{project_name}\" is being deleted"))
                    .with_field("project"),
            );
        }
        if let Some(s) = req.size_bytes {
            check_size(s, "size_bytes")?;
        }
        let source = req.source.clone().unwrap_or(VolumeSource::Empty);
        let image = match &source {
            VolumeSource::Image { image } => Some(self.disk_image(project_name, image).await?),
            _ => None,
        };
        let parent = match &source {
            VolumeSource::Empty | VolumeSource::Image { .. } => None,
            VolumeSource::Volume { volume, linked } => {
                let p = self
                    .volume_versioned(project_name, volume, "source.volume")
                    .await?;
                idle(&p.value).map_err(|e| e.with_field("source.volume"))?;
                if let Some(vm) = &p.value.attached_to {
                    // A copy of a disk a guest is writing would be torn; a linked child would
                    // see its parent change under it.
                    return Err(ApiError::conflict(format!(
                        "volume \"{volume}\" is attached to VM \"{vm}\"; detach it (or stop and \
                         detach) before cloning"
                    ))
                    .with_field("source.volume"));
                }
                if *linked && req.format == Some(VolumeFormat::Raw) {
                    return Err(ApiError::invalid(
                        "format",
                        "a linked clone is a qcow2 overlay; ask for a full copy to get raw",
                    ));
                }
                Some((p, *linked))
            }
        };
        let size_bytes = match (&parent, req.size_bytes) {
            (None, Some(s)) if image.as_ref().is_some_and(|(_, v)| s < *v) => {
                return Err(ApiError::invalid(
                    "size_bytes",
                    format!(
                        "the image's disk is {} bytes; a copy cannot be smaller",
                        image.as_ref().map_or(0, |(_, v)| *v)
                    ),
                ));
            }
            (None, Some(s)) => s,
            (None, None) if image.is_some() => image.as_ref().map_or(0, |(_, v)| *v),
            (None, None) => {
                return Err(ApiError::invalid(
                    "size_bytes",
                    "an empty volume needs a size",
                ));
            }
            (Some((p, _)), Some(s)) if s < p.value.size_bytes => {
                return Err(ApiError::invalid(
                    "size_bytes",
                    format!(
                        "a clone cannot be smaller than its parent ({} bytes)",
                        p.value.size_bytes
                    ),
                ));
            }
            (Some(_), Some(s)) => s,
            (Some((p, _)), None) => p.value.size_bytes,
        };
        let format = match (&parent, req.format) {
            (Some((_, true)), _) => VolumeFormat::Qcow2,
            (_, Some(f)) => f,
            (Some((p, false)), None) => p.value.format,
            (None, None) => VolumeFormat::Qcow2,
        };
        let (host, pool) = match &parent {
            // A clone lives beside its parent: the copy is local and a linked child needs
            // its backing file in reach.
            // A clone is made on its parent's host: the copy is local and a linked child
            // needs its backing file in reach, in the same pool; a full copy may go to
            // another pool of that host.
            Some((p, linked)) => {
                if req
                    .host
                    .as_deref()
                    .is_some_and(|x| x != p.value.host.as_str())
                {
                    return Err(ApiError::invalid(
                        "host",
                        "a clone is made on its parent's host; move it afterwards",
                    ));
                }
                let pool = match req.pool.as_deref() {
                    Some(x) if x != p.value.pool && *linked => {
                        return Err(ApiError::invalid(
                            "pool",
                            "a linked clone lives in its parent's pool; ask for a full copy \
                             to put it elsewhere",
                        ));
                    }
                    Some(x) => x.to_owned(),
                    None => p.value.pool.clone(),
                };
                let host = self
                    .host_for_volume(&pool, Some(p.value.host.as_str()))
                    .await?;
                (host, pool)
            }
            None => {
                let pool = req.pool.clone().unwrap_or_else(|| DEFAULT_POOL.into());
                let host = self.host_for_volume(&pool, req.host.as_deref()).await?;
                (host, pool)
            }
        };
        let pool_info = host
            .inventory
            .storage
            .iter()
            .find(|p| p.name == pool)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found("pool", &pool).with_field(if req.pool.is_some() {
                    "pool"
                } else {
                    "host"
                })
            })?;
        // Thin volumes may promise more than is free, never more than the pool holds; a full
        // copy or a raw file may need it all now.
        let thin = format == VolumeFormat::Qcow2;
        let room = if thin {
            pool_info.total_bytes
        } else {
            pool_info.free_bytes
        };
        if size_bytes > room {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "{size_bytes} bytes do not fit in pool \"{pool}\" on host \"{}\" ({} of {} bytes free)",
                    host.name, pool_info.free_bytes, pool_info.total_bytes
                ),
            )
            .with_field("size_bytes"));
        }
        let id = VolumeId::new();
        let op_id = OperationId::new();
        let file = format!("{id}.{}", format.as_str());
        let volume = Volume {
            id,
            name: name.clone(),
            project: project.value.name.clone(),
            size_bytes,
            format,
            pool: pool.clone(),
            host: host.name.clone(),
            shared: pool_info.shared,
            file: file.clone(),
            parent: parent
                .as_ref()
                .filter(|(_, linked)| *linked)
                .map(|(p, _)| p.value.name.clone()),
            children: vec![],
            phase: VolumePhase::Creating,
            reason: None,
            attached_to: None,
            operation: Some(op_id),
            snapshots: vec![],
            created_at: chrono::Utc::now(),
            revision: 0,
        };
        let from = parent.as_ref().map(|(p, linked)| CloneFrom {
            file: p.value.file.clone(),
            format: p.value.format,
            linked: *linked,
            pool: (p.value.pool != pool).then(|| p.value.pool.clone()),
        });
        let task = file_task(
            &volume,
            op_id,
            VolumeAction::Create {
                pool,
                file,
                format,
                size_bytes,
                from,
                from_image: image.as_ref().map(|(copy, _)| copy.clone()),
            },
        );
        let message = match &parent {
            None if image.is_some() => "copying the image".to_string(),
            None => "creating".to_string(),
            Some((p, true)) => format!("linking to {}", p.value.name),
            Some((p, false)) => format!("copying {}", p.value.name),
        };
        let op = volume_operation(op_id, OperationKind::VolumeCreate, &volume, &message);
        let key = keys::volume(project_name, name.as_str());
        let mut txn = Txn::new()
            .when(Compare::absent(&key))
            .when(Compare::unchanged(
                &keys::project(project_name),
                project.mod_revision,
            ))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)))
            .and_then(Op::put(
                &keys::host_task(host.name.as_str(), &op_id),
                encode(&task),
            ));
        if let Some((p, true)) = &parent {
            // The parent learns of its child in the same step, so it cannot be deleted or
            // attached under it.
            let mut parent = p.value.clone();
            parent.children.push(name.clone());
            let pkey = keys::volume(project_name, parent.name.as_str());
            txn = txn
                .when(Compare::unchanged(&pkey, p.mod_revision))
                .and_then(Op::put(&pkey, encode(&parent)));
        }
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            if self.repo.get::<Volume>(&key).await?.is_some() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "a volume named \"{name}\" already exists in project \"{project_name}\""
                    ),
                )
                .with_field("name"));
            }
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the project or the parent volume changed meanwhile; retry",
            ));
        }
        let mut volume = volume;
        volume.revision = r.revision;
        Ok(VolumeAccepted {
            volume,
            operation: op,
        })
    }

    /// A disk image a volume can be copied from, and its virtual size rounded up to a MiB.
    async fn disk_image(&self, project: &str, name: &str) -> Result<(ImageCopy, u64), ApiError> {
        let image = self
            .image(Some(project), name)
            .await
            .map_err(|e| e.with_field("source.image"))?;
        let format = match (image.kind, image.format) {
            (ImageKind::Disk, Some(DiskFormat::Raw)) => VolumeFormat::Raw,
            (ImageKind::Disk, _) => VolumeFormat::Qcow2,
            _ => {
                return Err(ApiError::invalid(
                    "source.image",
                    format!("image \"{name}\" is a kernel, not a disk"),
                ));
            }
        };
        let size = image
            .virtual_size_bytes
            .unwrap_or(image.size_bytes)
            .div_ceil(MIB)
            * MIB;
        Ok((
            ImageCopy {
                project: image.project.clone(),
                name: image.name.clone(),
                format,
            },
            size.max(MIB),
        ))
    }

    /// The ready host that keeps a new volume in `pool`: the one asked for, else the one with
    /// the most free space there.
    pub(super) async fn host_for_volume(
        &self,
        pool: &str,
        host: Option<&str>,
    ) -> Result<Host, ApiError> {
        if pool.is_empty()
            || pool.len() > 63
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ApiError::invalid(
                "pool",
                "pool names are 1-63 letters, digits, '-' or '_'",
            ));
        }
        let cached = self.all_hosts_cached().await?;
        // The cache may predate a host that just registered (or reported its pools): a miss
        // is checked against the store before it is an error.
        let has_pool = |hs: &[Host]| {
            hs.iter().any(|h| {
                (host.is_none_or(|n| h.name.as_str() == n.trim()))
                    && h.inventory.storage.iter().any(|p| p.name == pool)
            })
        };
        let hosts = if has_pool(&cached) {
            cached
        } else {
            self.all_hosts_fresh().await?
        };
        if let Some(h) = host {
            let name = check_name("host", h)?;
            let found = hosts
                .iter()
                .find(|x| x.name == name)
                .ok_or_else(|| ApiError::not_found("host", &name).with_field("host"))?;
            if !found.inventory.storage.iter().any(|p| p.name == pool) {
                return Err(
                    ApiError::not_found("pool", format!("{pool} on host {name}"))
                        .with_field("pool"),
                );
            }
            return Ok(found.clone());
        }
        hosts
            .iter()
            .filter(|h| h.alive())
            .filter_map(|h| {
                h.inventory
                    .storage
                    .iter()
                    .find(|p| p.name == pool)
                    .map(|p| (p.free_bytes, h))
            })
            .max_by_key(|(free, _)| *free)
            .map(|(_, h)| h.clone())
            .ok_or_else(|| {
                ApiError::not_found("pool", format!("{pool} on any ready host")).with_field("pool")
            })
    }

    /// Reads a volume.
    pub async fn volume(&self, project: Option<&str>, name: &str) -> Result<Volume, ApiError> {
        let v = self
            .volume_versioned(project.unwrap_or(DEFAULT_PROJECT), name, "name")
            .await?;
        let mut vol = v.value;
        vol.revision = v.mod_revision;
        Ok(vol)
    }

    pub(super) async fn volume_versioned(
        &self,
        project: &str,
        name: &str,
        field: &str,
    ) -> Result<Versioned<Volume>, ApiError> {
        let pname = check_name("project", project)?;
        let vname = check_name(field, name)?;
        match self
            .repo
            .get::<Volume>(&keys::volume(pname.as_str(), vname.as_str()))
            .await?
        {
            Some(v) => Ok(v),
            None => {
                self.project(project, "project").await?;
                Err(ApiError::not_found("volume", &vname).with_field(field))
            }
        }
    }

    /// Lists a project's volumes (in name order).
    pub async fn list_volumes(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Volume>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::volumes_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<Volume>(&prefix, start.as_deref(), limit)
            .await?;
        let items: Vec<Volume> = items
            .into_iter()
            .map(|v| {
                let mut vol = v.value;
                vol.revision = v.mod_revision;
                vol
            })
            .collect();
        let last = items.last().map(|v| v.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Grows a volume: by its host when detached, by the VM's host (live when it runs) when
    /// attached.
    pub async fn resize_volume(
        &self,
        project: Option<&str>,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_resize_volume(project, name, size_bytes)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_resize_volume(
        &self,
        project: Option<&str>,
        name: &str,
        size_bytes: u64,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        check_size(size_bytes, "size_bytes")?;
        let mut volume = cur.value.clone();
        if size_bytes < volume.size_bytes {
            return Err(ApiError::invalid(
                "size_bytes",
                format!(
                    "volumes only grow: {size_bytes} is below the current {} bytes",
                    volume.size_bytes
                ),
            ));
        }
        if size_bytes == volume.size_bytes {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is already {size_bytes} bytes"
            ))
            .with_field("size_bytes"));
        }
        ready_and_alone(&volume)?;
        let key = keys::volume(project, volume.name.as_str());
        let op_id = OperationId::new();
        let op;
        let mut txn = Txn::new().when(Compare::unchanged(&key, cur.mod_revision));
        if let Some(vm_name) = volume.attached_to.clone() {
            let vm = self.attached_vm(project, vm_name.as_str()).await?;
            let mut next = vm.value.clone();
            busy(&next)?;
            for d in next.spec.volumes.iter_mut().filter(|d| d.id == volume.id) {
                d.size_bytes = size_bytes;
            }
            next.generation += 1;
            next.status.operation = Some(op_id);
            volume.size_bytes = size_bytes;
            let mut o = volume_operation(op_id, OperationKind::VolumeResize, &volume, "growing");
            o.target_generation = next.generation;
            op = o;
            let vkey = keys::vm(project, next.name.as_str());
            txn = txn
                .when(Compare::unchanged(&vkey, vm.mod_revision))
                .and_then(Op::put(&vkey, encode(&next)));
        } else {
            volume.phase = VolumePhase::Resizing;
            volume.operation = Some(op_id);
            volume.reason = None;
            op = volume_operation(op_id, OperationKind::VolumeResize, &volume, "growing");
            let task = file_task(
                &volume,
                op_id,
                VolumeAction::Resize {
                    pool: volume.pool.clone(),
                    file: volume.file.clone(),
                    size_bytes,
                },
            );
            txn = txn.and_then(Op::put(
                &keys::host_task(volume.host.as_str(), &op_id),
                encode(&task),
            ));
        }
        txn = txn
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)));
        self.commit_volume_change(txn, volume, op).await
    }

    /// Moves a detached volume to another pool of its host (a copy, then the original goes),
    /// or to another host (see `volume_transfer`).
    pub async fn move_volume(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeMove,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_move_volume(project, name, req)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_move_volume(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeMove,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        if let Some(h) = req.host.as_deref() {
            let h = check_name("host", h)?;
            if h != cur.value.host {
                return self
                    .try_move_to_host(cur, h.as_str(), req.pool.as_deref())
                    .await;
            }
        }
        let Some(pool) = req.pool.as_deref() else {
            return Err(ApiError::invalid(
                "pool",
                "give the pool to move to (and host, to move to another host)",
            ));
        };
        let mut volume = cur.value.clone();
        // The target host check also validates the pool name.
        let host = self
            .host_for_volume(pool, Some(volume.host.as_str()))
            .await?;
        if volume.pool == pool {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is already in pool \"{pool}\""
            ))
            .with_field("pool"));
        }
        if let Some(vm) = &volume.attached_to {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is attached to VM \"{vm}\"; detach it before moving it"
            )));
        }
        ready_and_alone(&volume)?;
        if volume.parent.is_some() {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is a linked clone; make a full copy to move it"
            )));
        }
        if !volume.snapshots.is_empty() {
            // The copy keeps the current state only.
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" has snapshots; delete them before moving it"
            )));
        }
        let target = host
            .inventory
            .storage
            .iter()
            .find(|p| p.name == pool)
            .cloned()
            .ok_or_else(|| ApiError::not_found("pool", pool).with_field("pool"))?;
        if volume.size_bytes > target.free_bytes {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "pool \"{pool}\" has {} bytes free, the volume may need {}",
                    target.free_bytes, volume.size_bytes
                ),
            )
            .with_field("pool"));
        }
        let op_id = OperationId::new();
        let task = file_task(
            &volume,
            op_id,
            VolumeAction::Move {
                from_pool: volume.pool.clone(),
                to_pool: pool.to_owned(),
                file: volume.file.clone(),
                format: volume.format,
                to_shared: target.shared,
            },
        );
        volume.operation = Some(op_id);
        let op = volume_operation(
            op_id,
            OperationKind::VolumeMove,
            &volume,
            &format!("moving to pool {pool}"),
        );
        let key = keys::volume(project, volume.name.as_str());
        let txn = Txn::new()
            .when(Compare::unchanged(&key, cur.mod_revision))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)))
            .and_then(Op::put(
                &keys::host_task(volume.host.as_str(), &op_id),
                encode(&task),
            ));
        self.commit_volume_change(txn, volume, op).await
    }

    /// Deletes a detached volume without children.
    pub async fn delete_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_delete_volume(project, name)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_delete_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        let mut volume = cur.value.clone();
        if let Some(vm) = &volume.attached_to {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is attached to VM \"{vm}\"; detach it first"
            )));
        }
        if !volume.children.is_empty() {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" has linked clones ({}); delete them first",
                join_names(&volume.children)
            )));
        }
        if !matches!(volume.phase, VolumePhase::Ready | VolumePhase::Failed)
            || volume.operation.is_some()
        {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is {}; wait for that to finish",
                volume.phase.as_str()
            ))
            .with_operation_opt(volume.operation));
        }
        let op_id = OperationId::new();
        volume.phase = VolumePhase::Deleting;
        volume.operation = Some(op_id);
        let op = volume_operation(op_id, OperationKind::VolumeDelete, &volume, "deleting");
        let task = file_task(
            &volume,
            op_id,
            VolumeAction::Delete {
                pool: volume.pool.clone(),
                file: volume.file.clone(),
            },
        );
        let key = keys::volume(project, volume.name.as_str());
        let txn = Txn::new()
            .when(Compare::unchanged(&key, cur.mod_revision))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)))
            .and_then(Op::put(
                &keys::host_task(volume.host.as_str(), &op_id),
                encode(&task),
            ));
        self.commit_volume_change(txn, volume, op).await
    }

    pub(super) async fn commit_volume_change(
        &self,
        txn: Txn,
        mut volume: Volume,
        op: panal_types::operation::Operation,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            return Ok(None);
        }
        volume.revision = r.revision;
        Ok(Some(VolumeAccepted {
            volume,
            operation: op,
        }))
    }
}

/// Attempts at a change whose compare-and-swap lost to a concurrent one (an agent's status
/// report on the VM, most often) before giving up.
const MAX_RETRIES: usize = 16;

/// Runs `attempt` until it is not outrun by a concurrent change (`Ok(None)`), at most
/// [`MAX_RETRIES`] times.
pub(super) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ApiError>>,
{
    for _ in 0..MAX_RETRIES {
        if let Some(done) = attempt().await? {
            return Ok(done);
        }
    }
    Err(ApiError::new(
        ErrorCode::PreconditionFailed,
        "the volume or its VM kept changing; retry",
    ))
}

/// The host task that does `action` on a volume's file, completing operation `id`.
fn file_task(v: &Volume, id: OperationId, action: VolumeAction) -> HostTask {
    HostTask {
        id,
        host: v.host.clone(),
        project: v.project.clone(),
        volumes: vec![v.name.clone()],
        action,
        operation: None,
    }
}

/// A volume as a VM's spec carries it.
pub(super) fn attachment(v: &Volume, boot: bool, slot: u32) -> DiskAttachment {
    DiskAttachment {
        volume: v.name.clone(),
        id: v.id,
        pool: v.pool.clone(),
        host: v.host.clone(),
        shared: v.shared,
        file: v.file.clone(),
        format: v.format,
        size_bytes: v.size_bytes,
        boot,
        slot,
    }
}

/// A size must be a positive whole number of MiB, at most [`MAX_VOLUME_BYTES`].
fn check_size(size: u64, field: &str) -> Result<(), ApiError> {
    if size == 0 || !size.is_multiple_of(MIB) || size > MAX_VOLUME_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("a volume size is a whole number of MiB from 1 MiB to 64 TiB, not {size}"),
        ));
    }
    Ok(())
}

/// Why a volume or NIC cannot be added to `vm`: every one of its slots is taken.
pub(super) fn no_free_slot(vm_name: &str, vm: &Vm) -> ApiError {
    ApiError::conflict(format!(
        "VM \"{vm_name}\" has no free slot: its {} slots hold {} volumes and {} NICs \
         (a stopped VM can be given more: `panal vm resize {vm_name} --hotplug-slots N`, \
         PATCH hotplug_slots; at most 16)",
        vm.spec.hotplug_slots,
        vm.spec.volumes.len(),
        vm.spec.nics.len()
    ))
    .with_field("vm")
}

/// Refuses work on a volume that is busy or that linked clones read from.
pub(super) fn ready_and_alone(v: &Volume) -> Result<(), ApiError> {
    idle(v)?;
    if !v.children.is_empty() {
        return Err(ApiError::conflict(format!(
            "volume \"{}\" is the base of linked clones ({}) and stays read-only",
            v.name,
            join_names(&v.children)
        )));
    }
    Ok(())
}

/// Refuses work on a volume that is not ready or that an operation is working on.
pub(super) fn idle(v: &Volume) -> Result<(), ApiError> {
    if v.phase != VolumePhase::Ready {
        return Err(ApiError::conflict(format!(
            "volume \"{}\" is {}, not ready",
            v.name,
            v.phase.as_str()
        ))
        .with_operation_opt(v.operation));
    }
    if let Some(op) = v.operation {
        return Err(ApiError::conflict(format!(
            "volume \"{}\" has an operation in progress; retry when it ends",
            v.name
        ))
        .with_operation(op));
    }
    Ok(())
}

/// Refuses to change a VM's disks while another of its operations is going or it is deleted.
pub(super) fn busy(vm: &Vm) -> Result<(), ApiError> {
    if vm.spec.deleted {
        return Err(
            ApiError::conflict(format!("VM \"{}\" is being deleted", vm.name)).with_field("vm"),
        );
    }
    if let Some(op) = vm.status.operation {
        return Err(ApiError::conflict(format!(
            "VM \"{}\" has an operation in progress; retry when it ends",
            vm.name
        ))
        .with_field("vm")
        .with_operation(op));
    }
    Ok(())
}

fn join_names(names: &[Name]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn volume_operation(
    id: OperationId,
    kind: OperationKind,
    v: &Volume,
    message: &str,
) -> panal_types::operation::Operation {
    super::vms::started_operation(
        id,
        kind,
        OperationTarget {
            kind: "volume".into(),
            project: v.project.clone(),
            name: v.name.clone(),
        },
        0,
        message,
    )
}
