//! Volume files in this host's pools: the host tasks the control plane queues (create, clone,
//! grow, delete, snapshot, export, the steps of a move to another host), done with `qemu-img`
//! (or through the hypervisor of the VM that has the volume open), and the paths VMs open.
//!
//! Every task is idempotent, because a task whose report was lost is sent again: a new file is
//! written under a temporary name and renamed into place only when complete, growing to a size
//! the file already has does nothing, deleting a missing file succeeds, and an upload the
//! control plane already took is answered with the same digest.

use crate::boot::BootResolver;
use crate::link::{DynLink, LinkError};
use futures::StreamExt;
use panal_driver::DynVmHandle;
use panal_types::image::DiskFormat;
use panal_types::volume::{
    CloneFrom, DiskAttachment, FileDigest, HostTask, HostTaskReport, SnapshotDisk, SnapshotStep,
    VolumeAction, VolumeFormat,
};
use panal_types::{Name, OperationId};
use panal_types::{VmId, VolumeId};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// This host's pools by name.
#[derive(Clone, Debug, Default)]
pub struct Pools {
    dirs: Arc<HashMap<String, PathBuf>>,
}

impl Pools {
    /// Pools from the agent's configuration.
    pub fn new(pools: &[crate::inventory::PoolDir]) -> Self {
        Self {
            dirs: Arc::new(
                pools
                    .iter()
                    .map(|p| (p.name.clone(), p.path.clone()))
                    .collect(),
            ),
        }
    }

    /// Whether this host has any pool.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// The path of `file` in `pool`. File names come from the control plane, which makes them
    /// from ids; anything that could leave the pool directory is refused all the same.
    pub fn path(&self, pool: &str, file: &str) -> Result<PathBuf, String> {
        let dir = self
            .dirs
            .get(pool)
            .ok_or_else(|| format!("this host has no pool \"{pool}\""))?;
        let safe = !file.is_empty()
            && !file.starts_with('.')
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !safe {
            return Err(format!("refusing volume file name {file:?}"));
        }
        Ok(dir.join(file))
    }
}

/// Which running VM has each volume open, kept up to date by the VM tasks: snapshot work on a
/// volume in use goes through its VM's hypervisor instead of the file.
#[derive(Clone, Default)]
pub struct OpenDisks(Arc<Mutex<HashMap<VolumeId, (VmId, DynVmHandle)>>>);

impl OpenDisks {
    /// Records the disks a VM's hypervisor has open now (none when it has no hypervisor).
    pub fn publish(&self, vm: VmId, handle: Option<&DynVmHandle>, disks: &[DiskAttachment]) {
        let mut m = self.0.lock();
        m.retain(|_, (owner, _)| *owner != vm);
        if let Some(h) = handle {
            for d in disks {
                m.insert(d.id, (vm, h.clone()));
            }
        }
    }

    fn get(&self, id: VolumeId) -> Option<(VmId, DynVmHandle)> {
        self.0.lock().get(&id).cloned()
    }
}

/// Follows the host's task queue until the future is dropped, reconnecting with back-off.
pub async fn run(
    host: Name,
    link: DynLink,
    pools: Pools,
    open: OpenDisks,
    images: Arc<dyn BootResolver>,
) {
    let running: Arc<Mutex<HashSet<OperationId>>> = Arc::default();
    let mut delay = Duration::from_millis(100);
    loop {
        match follow(&host, &link, &pools, &open, &images, &running).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "host task stream failed; reconnecting"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn follow(
    host: &Name,
    link: &DynLink,
    pools: &Pools,
    open: &OpenDisks,
    images: &Arc<dyn BootResolver>,
    running: &Arc<Mutex<HashSet<OperationId>>>,
) -> Result<(), LinkError> {
    let mut stream = link.host_tasks(host).await?;
    while let Some(task) = stream.next().await {
        let task = task?;
        // A task sent again after a reconnect while it still runs here is not started twice.
        if !running.lock().insert(task.id) {
            continue;
        }
        let (host, link, pools, open, images, running) = (
            host.clone(),
            link.clone(),
            pools.clone(),
            open.clone(),
            images.clone(),
            running.clone(),
        );
        tokio::spawn(async move {
            let id = task.id;
            let progress = Progress {
                host: host.clone(),
                link: link.clone(),
                id,
                range: (0, 100),
            };
            let outcome = execute(&pools, &open, &*images, &task, &progress).await;
            if let Err(e) = &outcome {
                tracing::warn!(task = %id, volumes = ?task.volumes, error = %e, "volume task failed");
            }
            let (done, error) = match outcome {
                Ok(d) => (d, None),
                Err(e) => (Done::default(), Some(e)),
            };
            let report = HostTaskReport {
                id,
                finished: true,
                error,
                percent: Some(100),
                message: done.message,
                file: done.file,
            };
            // Retried a few times; if the control plane stays away the task comes again
            // with the next stream and is redone (idempotently).
            for attempt in 0..5u32 {
                match link.report_task(&host, report.clone()).await {
                    Ok(()) | Err(LinkError::Rejected(_)) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
                }
            }
            running.lock().remove(&id);
        });
    }
    Ok(())
}

/// Sends progress of one task (best effort), its percentages mapped into `range` (the part
/// of the operation this step is).
struct Progress {
    host: Name,
    link: DynLink,
    id: OperationId,
    range: (u8, u8),
}

impl Progress {
    /// The same task, reporting its percentages within `lo..hi` of this one's.
    fn part(&self, lo: u8, hi: u8) -> Progress {
        let (a, b) = self.range;
        let at = |p: u8| a + ((b - a) as u16 * p as u16 / 100) as u8;
        Progress {
            host: self.host.clone(),
            link: self.link.clone(),
            id: self.id,
            range: (at(lo), at(hi)),
        }
    }

    async fn send(&self, percent: u8, message: String) {
        let (lo, hi) = self.range;
        let r = HostTaskReport {
            id: self.id,
            finished: false,
            error: None,
            percent: Some(lo + ((hi - lo) as u16 * percent.min(100) as u16 / 100) as u8),
            message,
            file: None,
        };
        if let Err(e) = self.link.report_task(&self.host, r).await {
            tracing::debug!(error = %e, "progress report failed");
        }
    }
}

/// What a finished task tells the control plane.
#[derive(Default)]
struct Done {
    /// How it went, where that matters (how long a guest was paused).
    message: String,
    /// The file a `send` step sent.
    file: Option<FileDigest>,
}

impl Done {
    fn said(message: String) -> Self {
        Done {
            message,
            file: None,
        }
    }
}

/// Does one task.
async fn execute(
    pools: &Pools,
    open: &OpenDisks,
    images: &dyn BootResolver,
    task: &HostTask,
    progress: &Progress,
) -> Result<Done, String> {
    match &task.action {
        VolumeAction::Snapshot { step, name, disks } => snapshot(pools, open, *step, name, disks)
            .await
            .map(Done::said),
        VolumeAction::Export {
            pool,
            file,
            format,
            image,
        } => {
            let src = pools.path(pool, file)?;
            let tmp = pools.path(pool, &format!("{}.export", task.id))?;
            let to = match image.format {
                DiskFormat::Qcow2 => VolumeFormat::Qcow2,
                DiskFormat::Raw => VolumeFormat::Raw,
            };
            let _ = tokio::fs::remove_file(&tmp).await;
            let sent = async {
                full_copy(&src, *format, &tmp, to, &progress.part(0, 50)).await?;
                upload(images, task, &tmp, &progress.part(50, 100)).await
            }
            .await;
            let _ = tokio::fs::remove_file(&tmp).await;
            let d = sent?;
            Ok(Done::said(format!(
                "exported as image {} ({} bytes, sha256 {})",
                image.name, d.size_bytes, d.sha256
            )))
        }
        VolumeAction::Send { pool, file, .. } => {
            let path = pools.path(pool, file)?;
            let d = upload(images, task, &path, &progress.part(0, 50)).await?;
            Ok(Done {
                message: format!("sent {} bytes", d.size_bytes),
                file: Some(d),
            })
        }
        VolumeAction::Receive {
            to, format, digest, ..
        } => receive(pools, images, task, to, *format, digest, progress)
            .await
            .map(Done::said),
        other => file_task(pools, images, other, progress)
            .await
            .map(|()| Done::default()),
    }
}

/// Sends a file to the control plane for `task`, with progress.
async fn upload(
    images: &dyn BootResolver,
    task: &HostTask,
    file: &Path,
    progress: &Progress,
) -> Result<FileDigest, String> {
    let total = tokio::fs::metadata(file)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    let done = Arc::new(AtomicU64::new(0));
    with_progress(
        images.upload(&task.host, task.id, file, &done),
        &done,
        total,
        "sent",
        progress,
    )
    .await
}

/// Step two of a move to another host: fetch the file, check it is what the source read and
/// a self-contained disk of the volume's format, then put it in place.
async fn receive(
    pools: &Pools,
    images: &dyn BootResolver,
    task: &HostTask,
    to: &panal_types::volume::MoveTarget,
    format: VolumeFormat,
    want: &FileDigest,
    progress: &Progress,
) -> Result<String, String> {
    let dst = pools.path(&to.pool, &to.file)?;
    if tokio::fs::try_exists(&dst).await.unwrap_or(false) {
        // Received before (the file is renamed into place only when verified); the report
        // was lost.
        return Ok("received".into());
    }
    let tmp = dst.with_extension("part");
    let done = Arc::new(AtomicU64::new(0));
    let got = with_progress(
        images.download(&task.host, task.id, &tmp, want.size_bytes, &done),
        &done,
        want.size_bytes,
        "received",
        &progress.part(50, 100),
    )
    .await;
    let checked = match got {
        Ok(got) if got != *want => Err(format!(
            "the copy does not match the original (got {} bytes, sha256 {}; the source read {}              bytes, sha256 {})",
            got.size_bytes, got.sha256, want.size_bytes, want.sha256
        )),
        Ok(_) => check_self_contained(&tmp, format).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &dst)
        .await
        .map_err(|e| format!("cannot move the copy into place: {e}"))?;
    Ok(format!(
        "received {} bytes, sha256 verified",
        want.size_bytes
    ))
}

/// Refuses a received file whose header is not `format` or that references other files.
async fn check_self_contained(path: &Path, format: VolumeFormat) -> Result<(), String> {
    let v = image_info_as(path, format).await?;
    if v["format"].as_str() != Some(format.as_str()) {
        return Err(format!(
            "the received file is {}, not {}",
            v["format"],
            format.as_str()
        ));
    }
    if v.get("backing-filename").is_some() || v["format-specific"]["data"]["data-file"].is_string()
    {
        return Err("the received file references other files".into());
    }
    Ok(())
}

/// Runs `work` while reporting `done` of `total` bytes every half second.
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    done: &AtomicU64,
    total: u64,
    verb: &str,
    progress: &Progress,
) -> T {
    tokio::pin!(work);
    let mut last = None;
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                let n = done.load(Ordering::Relaxed);
                let pct = (n.saturating_mul(100) / total.max(1)).min(100) as u8;
                if last != Some(pct) {
                    last = Some(pct);
                    progress
                        .send(pct, format!("{verb} {} of {} MiB", n >> 20, total >> 20))
                        .await;
                }
            }
        }
    }
}

async fn file_task(
    pools: &Pools,
    images: &dyn BootResolver,
    action: &VolumeAction,
    progress: &Progress,
) -> Result<(), String> {
    match action {
        VolumeAction::Snapshot { .. }
        | VolumeAction::Export { .. }
        | VolumeAction::Send { .. }
        | VolumeAction::Receive { .. } => Err("not a file task".into()),
        VolumeAction::Create {
            pool,
            file,
            format,
            size_bytes,
            from,
            from_image,
        } => {
            let path = pools.path(pool, file)?;
            if tokio::fs::try_exists(&path).await.unwrap_or(false) {
                // Done before; the report was lost.
                return Ok(());
            }
            let tmp = path.with_extension("part");
            let _ = tokio::fs::remove_file(&tmp).await;
            let made = match (from, from_image) {
                (None, Some(image)) => {
                    let src: PathBuf = images.image_disk(progress.id, image).await?;
                    full_copy(&src, image.format, &tmp, *format, progress).await?;
                    grow_file(&tmp, *format, *size_bytes).await
                }
                (None, None) => create_empty(&tmp, *format, *size_bytes).await,
                (
                    Some(CloneFrom {
                        file: parent,
                        format: pformat,
                        linked: true,
                        ..
                    }),
                    _,
                ) => {
                    let ppath = pools.path(pool, parent)?;
                    create_linked(&tmp, &ppath, *pformat, *size_bytes).await
                }
                (
                    Some(CloneFrom {
                        file: parent,
                        format: pformat,
                        linked: false,
                        pool: from_pool,
                    }),
                    _,
                ) => {
                    let ppath = pools.path(from_pool.as_deref().unwrap_or(pool), parent)?;
                    full_copy(&ppath, *pformat, &tmp, *format, progress).await?;
                    grow_file(&tmp, *format, *size_bytes).await
                }
            };
            if let Err(e) = made {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(|e| format!("cannot move the new volume into place: {e}"))
        }
        VolumeAction::Resize {
            pool,
            file,
            size_bytes,
        } => {
            let path = pools.path(pool, file)?;
            let format = format_of(file);
            grow_file(&path, format, *size_bytes).await
        }
        VolumeAction::Move {
            from_pool,
            to_pool,
            file,
            format,
            ..
        } => {
            let src = pools.path(from_pool, file)?;
            let dst = pools.path(to_pool, file)?;
            if !tokio::fs::try_exists(&src).await.unwrap_or(false)
                && tokio::fs::try_exists(&dst).await.unwrap_or(false)
            {
                // Moved before; the report was lost.
                return Ok(());
            }
            // Pools on one file system: a rename moves the file at once, whatever its size.
            if same_file_system(&src, &dst).await {
                return tokio::fs::rename(&src, &dst)
                    .await
                    .map_err(|e| format!("cannot move {}: {e}", src.display()));
            }
            let tmp = dst.with_extension("part");
            let _ = tokio::fs::remove_file(&tmp).await;
            if let Err(e) = full_copy(&src, *format, &tmp, *format, progress).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            tokio::fs::rename(&tmp, &dst)
                .await
                .map_err(|e| format!("cannot move the copy into place: {e}"))?;
            tokio::fs::remove_file(&src)
                .await
                .map_err(|e| format!("copied, but cannot remove {}: {e}", src.display()))
        }
        VolumeAction::Delete { pool, file } | VolumeAction::Discard { pool, file } => {
            let path = pools.path(pool, file)?;
            let _ = tokio::fs::remove_file(path.with_extension("part")).await;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
            }
        }
    }
}

/// A snapshot step: through the hypervisor of the one VM that has every disk open, else on the
/// files with `qemu-img` (each idempotent).
async fn snapshot(
    pools: &Pools,
    open: &OpenDisks,
    step: SnapshotStep,
    name: &str,
    disks: &[SnapshotDisk],
) -> Result<String, String> {
    let users: Vec<Option<(VmId, DynVmHandle)>> = disks.iter().map(|d| open.get(d.id)).collect();
    if let Some(Some((vm, handle))) = users.first() {
        if users
            .iter()
            .any(|u| u.as_ref().is_none_or(|(other, _)| other != vm))
        {
            return Err("the volumes are not all open in the same VM".into());
        }
        let ids: Vec<String> = disks.iter().map(|d| d.id.to_string()).collect();
        let paused = handle
            .snapshot_disks(&ids, name, step)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(match step {
            SnapshotStep::Create => format!("taken; guest I/O held {} ms", paused.as_millis()),
            _ => "done".into(),
        });
    }
    if users.iter().any(Option::is_some) {
        return Err("some of the volumes are in use by a VM and some are not".into());
    }
    for d in disks {
        let path = pools.path(&d.pool, &d.file)?;
        let file = path.to_string_lossy();
        let has = snapshot_names(&path).await?.iter().any(|n| n == name);
        match step {
            SnapshotStep::Create if !has => {
                qemu_img(&["snapshot", "-c", name, &file]).await?;
            }
            SnapshotStep::Revert if has => {
                qemu_img(&["snapshot", "-a", name, &file]).await?;
            }
            SnapshotStep::Revert => return Err(format!("{file} has no snapshot {name:?}")),
            SnapshotStep::Delete if has => {
                qemu_img(&["snapshot", "-d", name, &file]).await?;
            }
            _ => {}
        }
    }
    Ok("done".into())
}

/// The internal snapshots of a qcow2 file.
async fn snapshot_names(path: &Path) -> Result<Vec<String>, String> {
    // Without -U: a file a hypervisor holds open is refused here, not snapshotted under it.
    let v = image_info(path, false).await?;
    Ok(v["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// `qemu-img info` of a file read as `format` (not probed), as JSON.
async fn image_info_as(path: &Path, format: VolumeFormat) -> Result<serde_json::Value, String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-f", format.as_str()])
        .arg(path)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the received file is not a readable {} image: {}",
            format.as_str(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// `qemu-img info` of a file as JSON; `shared` reads it even while another process holds it.
async fn image_info(path: &Path, shared: bool) -> Result<serde_json::Value, String> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"]);
    if shared {
        cmd.arg("-U");
    }
    let out = cmd
        .arg(path)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "qemu-img info {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Checks a qcow2 volume after its VM ended uncleanly (or the agent does not know how it
/// ended) and frees leaked clusters, which an interrupted write may leave and which are
/// harmless. Returns what was repaired; refuses a corrupt file.
pub async fn check_and_repair(path: &Path, format: VolumeFormat) -> Result<Option<String>, String> {
    if format != VolumeFormat::Qcow2 {
        return Ok(None);
    }
    let out = Command::new("qemu-img")
        .args(["check", "-q", "-r", "leaks", "-f", "qcow2", "--output=json"])
        .arg(path)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let fixed = report["leaks-fixed"].as_u64().unwrap_or(0);
    match out.status.code() {
        // 0: clean (or its leaks repaired); 3: leaks left (harmless).
        Some(0) | Some(3) => Ok((fixed > 0).then(|| format!("{fixed} leaked clusters freed"))),
        Some(2) => Err(format!(
            "{} is corrupt ({} errors); repair it (qemu-img check -r all) or revert a snapshot",
            path.display(),
            report["corruptions"].as_u64().unwrap_or(0)
        )),
        _ => Err(format!(
            "qemu-img check {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Whether `file` and the directory `dest` would go in are on one file system.
async fn same_file_system(file: &Path, dest: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = dest.parent().unwrap_or(dest);
    match (
        tokio::fs::metadata(file).await,
        tokio::fs::metadata(dir).await,
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// The format a volume file has, from the extension the control plane gave it.
pub fn format_of(file: &str) -> VolumeFormat {
    if file.ends_with(".raw") {
        VolumeFormat::Raw
    } else {
        VolumeFormat::Qcow2
    }
}

pub(crate) async fn create_empty(
    path: &Path,
    format: VolumeFormat,
    size: u64,
) -> Result<(), String> {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        format.as_str(),
        &path.to_string_lossy(),
        &size.to_string(),
    ])
    .await
}

/// A qcow2 child backed by `parent`, named relative to the pool so the pair stays valid
/// wherever a shared pool is mounted.
async fn create_linked(
    path: &Path,
    parent: &Path,
    pformat: VolumeFormat,
    size: u64,
) -> Result<(), String> {
    let parent_name = parent
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or("the parent has no file name")?;
    if !tokio::fs::try_exists(parent).await.unwrap_or(false) {
        return Err(format!("the parent file {} is missing", parent.display()));
    }
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &parent_name,
        "-F",
        pformat.as_str(),
        &path.to_string_lossy(),
        &size.to_string(),
    ])
    .await
}

/// Copies every allocated block of `src` into a new file, reporting progress.
async fn full_copy(
    src: &Path,
    sformat: VolumeFormat,
    dst: &Path,
    dformat: VolumeFormat,
    progress: &Progress,
) -> Result<(), String> {
    let mut child = Command::new("qemu-img")
        .args([
            "convert",
            "-p",
            "-f",
            sformat.as_str(),
            "-O",
            dformat.as_str(),
        ])
        .arg(src)
        .arg(dst)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    // `-p` prints "    (12.34/100%)" with carriage returns as it goes.
    let mut out = child.stdout.take().ok_or("no qemu-img output")?;
    let mut buf = [0u8; 256];
    let mut last = 0u8;
    let mut line = String::new();
    loop {
        let n = out.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        line.push_str(&String::from_utf8_lossy(&buf[..n]));
        if let Some(pct) = last_percent(&line)
            && pct >= last.saturating_add(5)
        {
            last = pct;
            progress.send(pct, format!("copied {pct}%")).await;
        }
        if line.len() > 4096 {
            line.drain(..line.len() - 64);
        }
    }
    let done = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if !done.status.success() {
        return Err(format!(
            "qemu-img convert failed: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        ));
    }
    Ok(())
}

/// The last "(NN.NN/100%)" in qemu-img's progress output.
fn last_percent(s: &str) -> Option<u8> {
    let end = s.rfind("/100%)")?;
    let start = s[..end].rfind('(')? + 1;
    s[start..end]
        .trim()
        .parse::<f64>()
        .ok()
        .map(|p| p.clamp(0.0, 100.0) as u8)
}

/// Grows a file's virtual size to `size` (never shrinks).
pub async fn grow_file(path: &Path, format: VolumeFormat, size: u64) -> Result<(), String> {
    if virtual_size(path).await? >= size {
        return Ok(());
    }
    qemu_img(&[
        "resize",
        "-q",
        "-f",
        format.as_str(),
        &path.to_string_lossy(),
        &size.to_string(),
    ])
    .await
}

async fn virtual_size(path: &Path) -> Result<u64, String> {
    image_info(path, true).await?["virtual-size"]
        .as_u64()
        .ok_or_else(|| "qemu-img info gave no virtual size".into())
}

async fn qemu_img(args: &[&str]) -> Result<(), String> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_leave_the_pool() {
        let pools = Pools::new(&[crate::inventory::PoolDir {
            name: "default".into(),
            path: "/pool".into(),
            shared: false,
        }]);
        assert_eq!(
            pools.path("default", "ab-1.qcow2").unwrap(),
            PathBuf::from("/pool/ab-1.qcow2")
        );
        for bad in ["../x", "/etc/passwd", "a/b", "", ".hidden", "..", "a b"] {
            assert!(pools.path("default", bad).is_err(), "{bad:?}");
        }
        assert!(pools.path("other", "a.qcow2").is_err());
    }

    #[test]
    fn progress_is_read_from_qemu_img_output() {
        assert_eq!(
            last_percent("    (0.00/100%)\r    (12.50/100%)\r"),
            Some(12)
        );
        assert_eq!(last_percent("nothing"), None);
    }
}
