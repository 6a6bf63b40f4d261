//! The glue that only a single machine has: the local agent boots images straight from the
//! control plane's image store, and the control plane reaches consoles through the QEMU run
//! directories on the same disk. Remote agents replace both with fetches over HTTPS.

use async_trait::async_trait;
use panal_agent::boot::BootResolver;
use panal_driver::BootSource;
use panal_server::App;
use panal_server::console::ConsoleAccess;
use panal_types::image::ImageKind;
use panal_types::vm::Vm;
use panal_types::volume::ImageCopy;
use std::path::PathBuf;

/// Resolves a VM's image to files in the local image store.
pub struct LocalImages {
    /// The control plane's application layer.
    pub app: App,
}

#[async_trait]
impl BootResolver for LocalImages {
    async fn resolve(&self, vm: &Vm) -> Result<BootSource, String> {
        let Some(name) = &vm.spec.image else {
            return Ok(BootSource::None);
        };
        let image = self
            .app
            .image(Some(vm.project.as_str()), name.as_str())
            .await
            .map_err(|e| e.message)?;
        let files = self.app.image_files(&image)?;
        let initrd = files.initrd;
        match (image.kind, files.kernel, files.disk) {
            (ImageKind::KernelInitrd, Some(kernel), _) => Ok(BootSource::Kernel {
                kernel,
                initrd,
                cmdline: image.cmdline.clone().unwrap_or_default(),
            }),
            (ImageKind::Disk, _, Some(base)) => Ok(BootSource::Disk {
                base,
                format: image.format.map(|f| f.as_str()).unwrap_or("raw").to_owned(),
            }),
            _ => Err(format!("image \"{name}\" has no bootable files")),
        }
    }

    async fn image_disk(
        &self,
        _task: panal_types::OperationId,
        copy: &ImageCopy,
    ) -> Result<PathBuf, String> {
        let image = self
            .app
            .image(Some(copy.project.as_str()), copy.name.as_str())
            .await
            .map_err(|e| e.message)?;
        self.app
            .image_files(&image)?
            .disk
            .ok_or_else(|| format!("image \"{}\" has no disk", copy.name))
    }
}

/// Finds consoles in the QEMU driver's run directories.
pub struct QemuConsoles {
    /// The QEMU driver's state directory.
    pub state_dir: PathBuf,
}

impl QemuConsoles {
    fn file(&self, vm: &Vm, name: &str) -> Option<PathBuf> {
        let p = self
            .state_dir
            .join("vms")
            .join(vm.id.to_string())
            .join(name);
        p.exists().then_some(p)
    }
}

#[async_trait]
impl ConsoleAccess for QemuConsoles {
    async fn socket(&self, vm: &Vm) -> Option<PathBuf> {
        self.file(vm, "console.sock")
    }

    async fn log(&self, vm: &Vm) -> Option<PathBuf> {
        self.file(vm, "console.log")
    }
}
