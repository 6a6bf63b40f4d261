//! Turning a VM's image reference into files on this host that the driver can boot.

use async_trait::async_trait;
use panal_driver::BootSource;
use panal_types::vm::Vm;

/// Resolves what a VM boots from.
#[async_trait]
pub trait BootResolver: Send + Sync + 'static {
    /// The boot source of `vm` on this host, or why there is none.
    async fn resolve(&self, vm: &Vm) -> Result<BootSource, String>;
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
