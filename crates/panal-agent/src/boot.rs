//! Turning a VM's image reference into files on this host that the driver can boot.

use async_trait::async_trait;
use panal_driver::BootSource;
use panal_types::OperationId;
use panal_types::vm::Vm;
use panal_types::volume::ImageCopy;
use std::path::PathBuf;

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
