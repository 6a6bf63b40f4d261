//! The glue that only a single machine has: the local agent boots images straight from the
//! control plane's image store, hands the files of its volume tasks (exports, moves to other
//! hosts) to the control plane by a direct call, and the control plane reaches consoles through
//! the QEMU run directories on the same disk. Remote agents replace these with HTTPS.

use async_trait::async_trait;
use panal_agent::boot::BootResolver;
use panal_agent::transfer::{Counted, file_chunks, write_chunks};
use panal_driver::BootSource;
use panal_server::App;
use panal_server::console::ConsoleAccess;
use panal_types::image::ImageKind;
use panal_types::vm::Vm;
use panal_types::volume::{FileDigest, ImageCopy};
use panal_types::{Name, OperationId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

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

    async fn upload(
        &self,
        host: &Name,
        task: OperationId,
        file: &Path,
        done: &Arc<AtomicU64>,
    ) -> Result<FileDigest, String> {
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let len = f.metadata().await.map_err(|e| e.to_string())?.len();
        self.app
            .receive_task_file(
                host,
                &task.to_string(),
                Some(len),
                Counted::new(f, done.clone()),
            )
            .await
            .map_err(|e| format!("the control plane refused the upload: {}", e.message))
    }

    async fn download(
        &self,
        host: &Name,
        task: OperationId,
        dst: &Path,
        limit: u64,
        done: &Arc<AtomicU64>,
    ) -> Result<FileDigest, String> {
        let src = self
            .app
            .task_transfer_file(host, &task.to_string())
            .await
            .map_err(|e| format!("the control plane refused the volume: {}", e.message))?;
        let f = tokio::fs::File::open(&src)
            .await
            .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        let chunks = file_chunks(f, None, Arc::new(AtomicU64::new(0)));
        let chunks = futures::StreamExt::map(chunks, |c| c.map_err(|e| e.to_string()));
        write_chunks(Box::pin(chunks), dst, limit, done).await
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
