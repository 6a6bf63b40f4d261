//! Turning a VM's image reference into files on this host that the driver can boot, and the
//! other files a host exchanges with the control plane for its volume tasks (an exported
//! volume going up as an image, a volume moving to another host going up and coming down).

use async_trait::async_trait;
use panal_driver::BootSource;
use panal_types::Name;
use panal_types::OperationId;
use panal_types::vm::Vm;
use panal_types::volume::{FileDigest, ImageCopy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Resolves what a VM boots from.
#[async_trait]
pub trait BootResolver: Send + Sync + 'static {
    /// The boot source of `vm` on this host, or why there is none.
    async fn resolve(&self, vm: &Vm) -> Result<BootSource, String>;

    /// The disk file of the image volume task `task` copies from, on this host.
    async fn image_disk(&self, task: OperationId, image: &ImageCopy) -> Result<PathBuf, String> {
        let _ = task;
        Err(format!(
            "this host cannot fetch image \"{}\" for a volume",
            image.name
        ))
    }

    /// Hands `file`, which task `task` of `host` produced (an export, or a volume moving to
    /// another host), to the control plane; answers with the length and SHA-256 that arrived,
    /// checked against what was read. `done` counts the bytes sent.
    async fn upload(
        &self,
        host: &Name,
        task: OperationId,
        file: &Path,
        done: &Arc<AtomicU64>,
    ) -> Result<FileDigest, String> {
        let _ = (host, task, file, done);
        Err("this host cannot send files to the control plane".into())
    }

    /// Fetches the file that `receive` task `task` of `host` takes into the new file `dst`
    /// (at most `limit` bytes); answers with the length and SHA-256 written. `done` counts
    /// the bytes received.
    async fn download(
        &self,
        host: &Name,
        task: OperationId,
        dst: &Path,
        limit: u64,
        done: &Arc<AtomicU64>,
    ) -> Result<FileDigest, String> {
        let _ = (host, task, dst, limit, done);
        Err("this host cannot fetch files from the control plane".into())
    }
}

/// Boots nothing: for the fake driver, and for VMs without an image.
pub struct NoImages;

#[async_trait]
impl BootResolver for NoImages {
    async fn resolve(&self, vm: &Vm) -> Result<BootSource, String> {
        match &vm.spec.image {
            None => Ok(BootSource::None),
            Some(i) => Err(format!("image \"{i}\" is not available on this host")),
        }
    }
}
