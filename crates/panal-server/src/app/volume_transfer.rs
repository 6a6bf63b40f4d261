//! Volume bytes that cross the control plane: export of a volume as a disk image, and moving a
//! detached volume to another host.
//!
//! Both are host tasks (see `host_tasks`), and the bytes travel over the agent's own link: an
//! agent uploads to `PUT /agent/v1/tasks/{task}/upload` and downloads from
//! `GET /agent/v1/tasks/{task}/volume`, each answered only for a task queued for the caller's
//! host (the in-process agent of `panal up` calls the same methods directly).
//!
//! - **Export**: one task on the volume's host: `qemu-img convert` to a standalone file (no
//!   backing chain), then upload; the upload is written into the image store, inspected like
//!   an imported disk and registered under the image id chosen at request time, so a repeated
//!   upload (a lost report) is recognised and answered with the same digest.
//! - **Move to another host**: three tasks, one operation. `send` (source host): the file as it
//!   is goes to the staging area `IMAGES/transfers/{operation}`; its report carries the size
//!   and SHA-256 the source read, and queues `receive` (target host) in the same transaction:
//!   fetch, verify against that digest, check the header, rename into place under a new file
//!   name. Its report switches the volume's host, pool and file and queues `discard` (source
//!   host), which removes the original and ends the operation. A failed send or receive leaves
//!   the volume where it was, usable; the staging file goes after the receive step either way.
//!   The new file name means a stale step can never touch a later copy of the same volume.

use super::App;
use super::snapshots::in_use;
use super::volumes::{idle, ready_and_alone, retrying, volume_operation};
use crate::codec::encode;
use crate::images::{ImageStore, check_disk, inspect};
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::image::{DiskFormat, Image, ImageKind};
use panal_types::operation::{OperationKind, Progress};
use panal_types::volume::{
    ExportImage, FileDigest, HostTask, HostTaskReport, MoveSource, MoveTarget, Volume,
    VolumeAccepted, VolumeAction, VolumeExport,
};
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, ImageId, Name, OperationId};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Slack over a volume's virtual size that its file may take (qcow2 metadata).
const FILE_SLACK: u64 = 256 << 20;

impl App {
    /// Exports a volume's current contents as a disk image of its project (an operation: its
    /// host converts and uploads the file).
    pub async fn export_volume(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeExport,
    ) -> Result<VolumeAccepted, ApiError> {
        retrying(|| self.try_export_volume(project, name, req)).await
    }

    /// One attempt; `None` when a concurrent change won the race.
    async fn try_export_volume(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeExport,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let cur = self.volume_versioned(project, name, "name").await?;
        let image_name = check_name("image", &req.image)?;
        let format = req.format.unwrap_or(DiskFormat::Qcow2);
        let store = self.transfer_store()?;
        if self
            .repo
            .get::<Image>(&keys::image(project, image_name.as_str()))
            .await?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("an image named \"{image_name}\" already exists in project \"{project}\""),
            )
            .with_field("image"));
        }
        let mut volume = cur.value.clone();
        if volume.size_bytes > store.max_virtual_size {
            return Err(ApiError::invalid(
                "name",
                format!(
                    "the volume is {} bytes; images may be at most {}",
                    volume.size_bytes, store.max_virtual_size
                ),
            ));
        }
        // Reading a parent of linked clones is fine: it is read-only anyway.
        idle(&volume)?;
        let mut txn = Txn::new();
        if let Some(vm_name) = &volume.attached_to {
            let vm = self.attached_vm(project, vm_name.as_str()).await?;
            if in_use(&vm.value) {
                return Err(ApiError::conflict(format!(
                    "volume \"{name}\" is in use by VM \"{vm_name}\"; stop the VM (or detach \
                     the volume) to export a consistent copy"
                )));
            }
            let vkey = keys::vm(project, vm_name.as_str());
            txn = txn.when(Compare::unchanged(&vkey, vm.mod_revision));
        }
        let op_id = OperationId::new();
        volume.operation = Some(op_id);
        volume.reason = None;
        let task = HostTask {
            id: op_id,
            host: volume.host.clone(),
            project: volume.project.clone(),
            volumes: vec![volume.name.clone()],
            action: VolumeAction::Export {
                pool: volume.pool.clone(),
                file: volume.file.clone(),
                format: volume.format,
                image: ExportImage {
                    project: volume.project.clone(),
                    name: image_name.clone(),
                    id: ImageId::new(),
                    format,
                },
            },
            operation: None,
        };
        let op = volume_operation(
            op_id,
            OperationKind::VolumeExport,
            &volume,
            &format!("exporting as image {image_name}"),
        );
        let key = keys::volume(project, volume.name.as_str());
        let txn = txn
            .when(Compare::unchanged(&key, cur.mod_revision))
            .and_then(Op::put(&key, encode(&volume)))
            .and_then(Op::put(&keys::op(&op_id), encode(&op)))
            .and_then(Op::put(
                &keys::host_task(volume.host.as_str(), &op_id),
                encode(&task),
            ));
        self.commit_volume_change(txn, volume, op).await
    }

    /// One attempt at moving a detached volume to another host's pool.
    pub(super) async fn try_move_to_host(
        &self,
        cur: Versioned<Volume>,
        target: &str,
        pool: Option<&str>,
    ) -> Result<Option<VolumeAccepted>, ApiError> {
        let mut volume = cur.value.clone();
        let name = volume.name.clone();
        let pool = pool.unwrap_or(&volume.pool).to_owned();
        // Validates the host and pool names and that the pool is there.
        let host = self.host_for_volume(&pool, Some(target)).await?;
        if !host.alive() {
            return Err(
                ApiError::conflict(format!("host \"{}\" is not ready", host.name))
                    .with_field("host"),
            );
        }
        let target_pool = host
            .inventory
            .storage
            .iter()
            .find(|p| p.name == pool)
            .cloned()
            .ok_or_else(|| ApiError::not_found("pool", &pool).with_field("pool"))?;
        if volume.shared && target_pool.shared && target_pool.name == volume.pool {
            return Err(ApiError::conflict(format!(
                "volume \"{name}\" is in shared pool \"{pool}\", which host \"{}\" opens too: \
                 no move is needed",
                host.name
            ))
            .with_field("host"));
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
        if volume.size_bytes > target_pool.free_bytes {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!(
                    "pool \"{pool}\" on host \"{}\" has {} bytes free, the volume may need {}",
                    host.name, target_pool.free_bytes, volume.size_bytes
                ),
            )
            .with_field("pool"));
        }
        let source_alive = self
            .all_hosts_cached()
            .await?
            .iter()
            .any(|h| h.name == volume.host && h.alive());
        if !source_alive {
            return Err(ApiError::conflict(format!(
                "host \"{}\", which keeps volume \"{name}\", is not ready",
                volume.host
            )));
        }
        self.transfer_store()?;
        let op_id = OperationId::new();
        let to = MoveTarget {
            host: host.name.clone(),
            pool: pool.clone(),
            shared: target_pool.shared,
            file: format!(
                "{}-{}.{}",
                volume.id,
                &op_id.to_string()[..8],
                volume.format.as_str()
            ),
        };
        let task = HostTask {
            id: op_id,
            host: volume.host.clone(),
            project: volume.project.clone(),
            volumes: vec![volume.name.clone()],
            action: VolumeAction::Send {
                pool: volume.pool.clone(),
                file: volume.file.clone(),
                format: volume.format,
                to,
            },
            operation: None,
        };
        volume.operation = Some(op_id);
        volume.reason = None;
        let op = volume_operation(
            op_id,
            OperationKind::VolumeMove,
            &volume,
            &format!("moving to pool {pool} of host {}", host.name),
        );
        let key = keys::volume(volume.project.as_str(), volume.name.as_str());
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

    fn transfer_store(&self) -> Result<&ImageStore, ApiError> {
        self.images
            .as_deref()
            .ok_or_else(|| ApiError::unavailable("this control plane has no image store"))
    }

    /// A task queued for `host`, or 404 (also for other hosts' tasks).
    async fn own_task(&self, host: &Name, task: &str) -> Result<HostTask, ApiError> {
        let id: OperationId = task
            .parse()
            .map_err(|_| ApiError::invalid("task", "task ids are UUIDs"))?;
        Ok(self
            .repo
            .get::<HostTask>(&keys::host_task(host.as_str(), &id))
            .await?
            .ok_or_else(|| ApiError::not_found("task", id))?
            .value)
    }

    /// Takes the file a task of `host` uploads (`declared` bytes when the sender said): an
    /// export becomes an image of the volume's project, a move's file goes to the staging
    /// area. Answers with the length and SHA-256 of what arrived.
    pub async fn receive_task_file<R: AsyncRead + Unpin + Send>(
        &self,
        host: &Name,
        task: &str,
        declared: Option<u64>,
        body: R,
    ) -> Result<FileDigest, ApiError> {
        let task = self.own_task(host, task).await?;
        let store = self.transfer_store()?;
        match &task.action {
            VolumeAction::Export { image, .. } => {
                self.receive_export(store, image, declared, body).await
            }
            VolumeAction::Send { .. } => {
                let cap = match task.volumes.first() {
                    Some(v) => self
                        .repo
                        .get::<Volume>(&keys::volume(task.project.as_str(), v.as_str()))
                        .await?
                        .map(|v| {
                            v.value
                                .size_bytes
                                .saturating_mul(1 + v.value.snapshots.len() as u64)
                                .saturating_add(FILE_SLACK)
                        })
                        .unwrap_or(0),
                    None => 0,
                };
                let path = staging(store, task.operation_id());
                let part = path.with_extension("part");
                let (size_bytes, sha256) = write_capped(body, &part, cap, declared, false).await?;
                tokio::fs::rename(&part, &path)
                    .await
                    .map_err(|e| io_error("cannot stage the volume", e))?;
                Ok(FileDigest { size_bytes, sha256 })
            }
            _ => Err(ApiError::not_found("upload of task", task.id)),
        }
    }

    async fn receive_export<R: AsyncRead + Unpin + Send>(
        &self,
        store: &ImageStore,
        image: &ExportImage,
        declared: Option<u64>,
        body: R,
    ) -> Result<FileDigest, ApiError> {
        let key = keys::image(image.project.as_str(), image.name.as_str());
        if let Some(have) = self.repo.get::<Image>(&key).await? {
            if have.value.id == image.id {
                // Uploaded before; the agent's report was lost.
                return Ok(FileDigest {
                    size_bytes: have.value.size_bytes,
                    sha256: have.value.sha256,
                });
            }
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("an image named \"{}\" was created meanwhile", image.name),
            )
            .with_field("image"));
        }
        let dir = store.image_dir(image.id);
        let partial = dir.with_extension("partial");
        let result = async {
            tokio::fs::create_dir_all(&partial)
                .await
                .map_err(|e| io_error("cannot create the image directory", e))?;
            let disk = partial.join("disk");
            let cap = store.max_virtual_size.saturating_add(FILE_SLACK);
            let (size_bytes, sha256) = write_capped(body, &disk, cap, declared, true).await?;
            let info = inspect(&store.qemu_img, &disk, "image").await?;
            check_disk(&info, image.format, store.max_virtual_size, "image")?;
            Ok::<_, ApiError>((size_bytes, sha256, info.virtual_size))
        }
        .await;
        let (size_bytes, sha256, virtual_size) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&partial).await;
                return Err(e);
            }
        };
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::rename(&partial, &dir)
            .await
            .map_err(|e| io_error("cannot place the image", e))?;
        let record = Image {
            id: image.id,
            name: image.name.clone(),
            project: image.project.clone(),
            kind: ImageKind::Disk,
            format: Some(image.format),
            size_bytes,
            virtual_size_bytes: Some(virtual_size),
            sha256: sha256.clone(),
            cmdline: None,
            created_at: chrono::Utc::now(),
        };
        if self.repo.create(&key, &record).await?.is_none() {
            store.remove(image.id).await;
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("an image named \"{}\" was created meanwhile", image.name),
            )
            .with_field("image"));
        }
        tracing::info!(image = %image.name, project = %image.project, bytes = size_bytes, "volume exported as an image");
        Ok(FileDigest { size_bytes, sha256 })
    }

    /// The staged file a `receive` task of `host` fetches.
    pub async fn task_transfer_file(&self, host: &Name, task: &str) -> Result<PathBuf, ApiError> {
        let task = self.own_task(host, task).await?;
        if !matches!(task.action, VolumeAction::Receive { .. }) {
            return Err(ApiError::not_found("download of task", task.id));
        }
        let path = staging(self.transfer_store()?, task.operation_id());
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Err(ApiError::not_found("staged volume of task", task.id));
        }
        Ok(path)
    }

    /// Cleans up after a step's report was recorded: the staging file goes once the target
    /// host has it (or the move failed).
    pub(super) async fn after_transfer_step(&self, task: &HostTask, failed: bool) {
        let done_with_staging = match task.action {
            VolumeAction::Send { .. } => failed,
            VolumeAction::Receive { .. } => true,
            _ => false,
        };
        if done_with_staging && let Some(store) = &self.images {
            let path = staging(store, task.operation_id());
            let _ = tokio::fs::remove_file(path.with_extension("part")).await;
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
}

/// Where a move's file waits between its two hosts.
fn staging(store: &ImageStore, op: OperationId) -> PathBuf {
    store.dir.join("transfers").join(op.to_string())
}

/// Writes `body` to `dst` with its SHA-256, refusing more than `cap` bytes or a length other
/// than `declared`; synced to disk when `durable` (a staged file is not: if it is lost or torn
/// in a crash, the target's checksum refuses it and the move fails, leaving the volume where
/// it was).
async fn write_capped<R: AsyncRead + Unpin>(
    mut body: R,
    dst: &Path,
    cap: u64,
    declared: Option<u64>,
    durable: bool,
) -> Result<(u64, String), ApiError> {
    if declared.is_some_and(|d| d > cap) {
        return Err(ApiError::new(
            ErrorCode::TooLarge,
            format!("the upload is over the limit of {cap} bytes"),
        ));
    }
    if let Some(dir) = dst.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error("cannot create the staging directory", e))?;
    }
    let mut out = tokio::fs::File::create(dst)
        .await
        .map_err(|e| io_error("cannot write an upload", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let result = async {
        loop {
            let n = body.read(&mut buf).await.map_err(|e| {
                tracing::warn!(error = %e, "an upload broke off");
                ApiError::invalid("body", "the upload broke off")
            })?;
            if n == 0 {
                break;
            }
            done += n as u64;
            if done > cap {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!("the upload is over the limit of {cap} bytes"),
                ));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(|e| io_error("cannot write an upload", e))?;
        }
        if declared.is_some_and(|d| d != done) {
            return Err(ApiError::invalid(
                "body",
                format!("the upload broke off after {done} bytes"),
            ));
        }
        if durable {
            out.sync_all()
                .await
                .map_err(|e| io_error("cannot write an upload", e))?;
        }
        out.flush()
            .await
            .map_err(|e| io_error("cannot write an upload", e))
    }
    .await;
    if let Err(e) = result {
        drop(out);
        let _ = tokio::fs::remove_file(dst).await;
        return Err(e);
    }
    Ok((done, hex::encode(hasher.finalize())))
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(ErrorCode::Internal, format!("{what}; see the server log"))
}

/// The error a finished step's report amounts to: its own, or a `send` that did not say what
/// it sent.
pub(super) fn check_report(task: &HostTask, r: &HostTaskReport) -> Option<String> {
    match (&r.error, &task.action, &r.file) {
        (Some(e), _, _) => Some(e.clone()),
        (None, VolumeAction::Send { .. }, None) => {
            Some("the source host did not say what it sent".into())
        }
        _ => None,
    }
}

/// The task that follows a finished step of a move to another host.
pub(super) fn next_step(task: &HostTask, r: &HostTaskReport, failed: bool) -> Option<HostTask> {
    if failed {
        return None;
    }
    let action = match (&task.action, &r.file) {
        (
            VolumeAction::Send {
                pool,
                file,
                format,
                to,
            },
            Some(digest),
        ) => VolumeAction::Receive {
            to: to.clone(),
            format: *format,
            digest: digest.clone(),
            from: MoveSource {
                host: task.host.clone(),
                pool: pool.clone(),
                file: file.clone(),
            },
        },
        (VolumeAction::Receive { from, .. }, _) => VolumeAction::Discard {
            pool: from.pool.clone(),
            file: from.file.clone(),
        },
        _ => return None,
    };
    let host = match &action {
        VolumeAction::Receive { to, .. } => to.host.clone(),
        _ => match &task.action {
            VolumeAction::Receive { from, .. } => from.host.clone(),
            _ => task.host.clone(),
        },
    };
    Some(HostTask {
        id: OperationId::new(),
        host,
        project: task.project.clone(),
        volumes: task.volumes.clone(),
        action,
        operation: Some(task.operation_id()),
    })
}

/// The operation's progress when `next` is queued.
pub(super) fn step_progress(next: &HostTask) -> Progress {
    match &next.action {
        VolumeAction::Receive { digest, .. } => Progress {
            percent: Some(50),
            message: format!(
                "sent {} bytes; host {} is receiving",
                digest.size_bytes, next.host
            ),
        },
        _ => Progress {
            percent: Some(99),
            message: format!(
                "copied and verified; removing the original on host {}",
                next.host
            ),
        },
    }
}
