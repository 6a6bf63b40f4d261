//! Images for remote agents: an agent asks what a VM placed on its host boots from and fetches
//! the files it does not have yet, checking each against the SHA-256 given here. An agent may
//! only ask about VMs placed on its own host, so a certificate does not open other tenants'
//! images.

use super::App;
use panal_types::agent::{BootFile, BootManifest};
use panal_types::vm::Vm;
use panal_types::volume::{HostTask, VolumeAction};
use panal_types::{ApiError, ErrorCode, Name};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The roles a boot file can have.
const ROLES: [&str; 3] = ["kernel", "initrd", "disk"];

/// SHA-256 of image files, by path, length and modification time: hashing a disk image on
/// every VM start would cost seconds.
type HashCache = Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>;

fn hash_cache() -> &'static HashCache {
    static CACHE: OnceLock<HashCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let meta = std::fs::metadata(path)?;
    let modified = meta.modified()?;
    if let Some((len, at, hash)) = hash_cache().lock().get(path)
        && *len == meta.len()
        && *at == modified
    {
        return Ok((*len, hash.clone()));
    }
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash = hex::encode(hasher.finalize());
    hash_cache()
        .lock()
        .insert(path.to_owned(), (meta.len(), modified, hash.clone()));
    Ok((meta.len(), hash))
}

impl App {
    /// A VM placed on `host`, or 404 (also for VMs placed elsewhere: an agent learns nothing
    /// about other hosts' VMs, not even that they exist).
    async fn vm_on_host(&self, host: &Name, project: &str, name: &str) -> Result<Vm, ApiError> {
        let vm = self.vm(Some(project), name).await?;
        // The target of a live migration boots nothing, but its incoming hypervisor is
        // launched with the same kernel (or disk image base) as the source.
        let incoming = vm.status.migration.as_ref().is_some_and(|m| &m.to == host);
        if vm.status.host.as_ref() != Some(host) && !incoming {
            return Err(ApiError::not_found("VM", name));
        }
        Ok(vm)
    }

    /// The image files of a VM on this control plane's disk, by role.
    async fn boot_paths(
        &self,
        vm: &Vm,
    ) -> Result<(BootManifestBase, Vec<(String, PathBuf)>), ApiError> {
        let Some(image_name) = &vm.spec.image else {
            return Err(ApiError::new(ErrorCode::NotFound, "the VM boots no image"));
        };
        self.image_paths(vm.project.as_str(), image_name.as_str())
            .await
    }

    /// The image a volume task on `host` copies from (404 for tasks of other hosts and tasks
    /// that copy no image).
    async fn task_image_paths(
        &self,
        host: &Name,
        task: &str,
    ) -> Result<(BootManifestBase, Vec<(String, PathBuf)>), ApiError> {
        let id: panal_types::OperationId = task
            .parse()
            .map_err(|_| ApiError::invalid("task", "task ids are UUIDs"))?;
        let task = self
            .repo
            .get::<HostTask>(&crate::keys::host_task(host.as_str(), &id))
            .await?
            .ok_or_else(|| ApiError::not_found("task", id))?
            .value;
        match task.action {
            VolumeAction::Create {
                from_image: Some(copy),
                ..
            } => {
                self.image_paths(copy.project.as_str(), copy.name.as_str())
                    .await
            }
            _ => Err(ApiError::not_found("task image", id)),
        }
    }

    /// An image's files on this control plane's disk, by role.
    async fn image_paths(
        &self,
        project: &str,
        image_name: &str,
    ) -> Result<(BootManifestBase, Vec<(String, PathBuf)>), ApiError> {
        let image = self.image(Some(project), image_name).await?;
        let files = self.image_files(&image).map_err(|e| {
            tracing::warn!(image = %image.name, error = %e, "image files unavailable");
            ApiError::unavailable("the image's files are not on this control plane")
        })?;
        let paths = [files.kernel, files.initrd, files.disk]
            .into_iter()
            .zip(ROLES)
            .filter_map(|(p, role)| p.map(|p| (role.to_owned(), p)))
            .collect();
        Ok((
            BootManifestBase {
                image: image.id,
                kind: image.kind,
                format: image.format,
                cmdline: image.cmdline.clone(),
            },
            paths,
        ))
    }

    /// What a VM on `host` boots from.
    pub async fn boot_manifest(
        &self,
        host: &Name,
        project: &str,
        name: &str,
    ) -> Result<BootManifest, ApiError> {
        let vm = self.vm_on_host(host, project, name).await?;
        let (base, paths) = self.boot_paths(&vm).await?;
        manifest(base, paths).await
    }

    /// The image a volume task of `host` copies from.
    pub async fn task_image_manifest(
        &self,
        host: &Name,
        task: &str,
    ) -> Result<BootManifest, ApiError> {
        let (base, paths) = self.task_image_paths(host, task).await?;
        manifest(base, paths).await
    }

    /// Where one file of the image a volume task of `host` copies from is.
    pub async fn task_image_file(
        &self,
        host: &Name,
        task: &str,
        role: &str,
    ) -> Result<PathBuf, ApiError> {
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid("role", "one of kernel, initrd, disk"));
        }
        let (_, paths) = self.task_image_paths(host, task).await?;
        paths
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| p)
            .ok_or_else(|| ApiError::not_found("image file", role))
    }
}

/// A manifest of image files, each with its size and SHA-256.
async fn manifest(
    base: BootManifestBase,
    paths: Vec<(String, PathBuf)>,
) -> Result<BootManifest, ApiError> {
    let files = tokio::task::spawn_blocking(move || {
        paths
            .into_iter()
            .map(|(role, path)| {
                let (size_bytes, sha256) = file_sha256(&path)?;
                Ok(BootFile {
                    role,
                    size_bytes,
                    sha256,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "cannot hash image files");
        ApiError::internal()
    })?;
    Ok(BootManifest {
        image: base.image,
        kind: base.kind,
        format: base.format,
        cmdline: base.cmdline,
        files,
    })
}

impl App {
    /// Where one boot file of a VM on `host` is, to be streamed to its agent.
    pub async fn boot_file(
        &self,
        host: &Name,
        project: &str,
        name: &str,
        role: &str,
    ) -> Result<PathBuf, ApiError> {
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid("role", "one of kernel, initrd, disk"));
        }
        let vm = self.vm_on_host(host, project, name).await?;
        let (_, paths) = self.boot_paths(&vm).await?;
        paths
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, p)| p)
            .ok_or_else(|| ApiError::not_found("boot file", role))
    }
}

/// The manifest without its files.
struct BootManifestBase {
    image: panal_types::ImageId,
    kind: panal_types::image::ImageKind,
    format: Option<panal_types::image::DiskFormat>,
    cmdline: Option<String>,
}
