//! Boot images on a remote host: fetched from the control plane the first time a VM needs them,
//! checked against the SHA-256 the control plane gives, and kept in a cache directory by image
//! id, so an image imported once is usable on every host and crosses the network once per host.

use super::RemoteLink;
use crate::boot::BootResolver;
use async_trait::async_trait;
use futures::StreamExt;
use panal_driver::BootSource;
use panal_types::ImageId;
use panal_types::OperationId;
use panal_types::agent::{BootFile, BootManifest};
use panal_types::image::ImageKind;
use panal_types::vm::Vm;
use panal_types::volume::ImageCopy;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// Resolves VMs' images by fetching them from the control plane into a local cache.
pub struct RemoteImages {
    link: Arc<RemoteLink>,
    dir: PathBuf,
    /// One fetch per image at a time: two VMs starting from one image share the download.
    fetching: Mutex<HashMap<ImageId, Arc<tokio::sync::Mutex<()>>>>,
}

impl RemoteImages {
    /// A resolver caching into `dir`.
    pub fn new(link: Arc<RemoteLink>, dir: PathBuf) -> Self {
        Self {
            link,
            dir,
            fetching: Mutex::default(),
        }
    }

    fn lock(&self, id: ImageId) -> Arc<tokio::sync::Mutex<()>> {
        self.fetching.lock().entry(id).or_default().clone()
    }

    /// The manifest at `prefix` (a VM's boot image, or the image a volume task copies).
    async fn manifest(&self, prefix: &str) -> Result<BootManifest, String> {
        let (http, base) = self.link.parts();
        let resp = http
            .get(format!("{base}{prefix}"))
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| format!("cannot reach the control plane: {e:#}"))?;
        if !resp.status().is_success() {
            let e = super::http::refusal(resp).await;
            return Err(format!(
                "the control plane refused the image: {}",
                e.message
            ));
        }
        resp.json()
            .await
            .map_err(|e| format!("unreadable boot manifest: {e}"))
    }

    /// The cached file, fetching it first if it is missing or is not what the manifest says.
    async fn file(&self, prefix: &str, image: ImageId, f: &BootFile) -> Result<PathBuf, String> {
        let dir = self.dir.join(image.to_string());
        let path = dir.join(&f.role);
        let mark = dir.join(format!("{}.sha256", f.role));
        if cached(&path, &mark, f).await {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let (http, base) = self.link.parts();
        let resp = http
            .get(format!("{base}{prefix}/{}", f.role))
            .send()
            .await
            .map_err(|e| format!("cannot fetch the image's {}: {e:#}", f.role))?;
        if !resp.status().is_success() {
            let e = super::http::refusal(resp).await;
            return Err(format!(
                "the control plane refused the image's {}: {}",
                f.role, e.message
            ));
        }
        let tmp = dir.join(format!(".{}.part", f.role));
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the image download broke off: {e:#}"))?;
            len += chunk.len() as u64;
            if len > f.size_bytes {
                break;
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        }
        out.sync_all().await.map_err(|e| e.to_string())?;
        drop(out);
        let got = hex::encode(hasher.finalize());
        if len != f.size_bytes || got != f.sha256 {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(format!(
                "the image's {} does not match its checksum (got {len} bytes, sha256 {got}; expected {} bytes, {})",
                f.role, f.size_bytes, f.sha256
            ));
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        tokio::fs::write(&mark, &f.sha256)
            .await
            .map_err(|e| format!("cannot write {}: {e}", mark.display()))?;
        tracing::info!(image = %image, role = %f.role, bytes = len, "fetched and verified an image file");
        Ok(path)
    }
}

/// Whether the cache holds this file already: same length, and its checksum mark (written only
/// after the download was verified) names the same hash.
async fn cached(path: &Path, mark: &Path, f: &BootFile) -> bool {
    let Ok(meta) = tokio::fs::metadata(path).await else {
        return false;
    };
    let Ok(recorded) = tokio::fs::read_to_string(mark).await else {
        return false;
    };
    meta.len() == f.size_bytes && recorded.trim() == f.sha256
}

#[async_trait]
impl BootResolver for RemoteImages {
    async fn resolve(&self, vm: &Vm) -> Result<BootSource, String> {
        if vm.spec.image.is_none() {
            return Ok(BootSource::None);
        }
        let prefix = format!("/vms/{}/{}/boot", vm.project, vm.name);
        let manifest = self.manifest(&prefix).await?;
        let lock = self.lock(manifest.image);
        let _guard = lock.lock().await;
        let mut paths: HashMap<String, PathBuf> = HashMap::new();
        for f in &manifest.files {
            paths.insert(f.role.clone(), self.file(&prefix, manifest.image, f).await?);
        }
        match manifest.kind {
            ImageKind::KernelInitrd => Ok(BootSource::Kernel {
                kernel: paths.remove("kernel").ok_or("the image has no kernel")?,
                initrd: paths.remove("initrd"),
                cmdline: manifest.cmdline.unwrap_or_default(),
            }),
            ImageKind::Disk => Ok(BootSource::Disk {
                base: paths.remove("disk").ok_or("the image has no disk")?,
                format: manifest
                    .format
                    .map(|f| f.as_str())
                    .unwrap_or("raw")
                    .to_owned(),
            }),
        }
    }

    async fn image_disk(&self, task: OperationId, copy: &ImageCopy) -> Result<PathBuf, String> {
        let prefix = format!("/tasks/{task}/image");
        let manifest = self.manifest(&prefix).await?;
        let f = manifest
            .files
            .iter()
            .find(|f| f.role == "disk")
            .ok_or_else(|| format!("image \"{}\" has no disk", copy.name))?;
        let lock = self.lock(manifest.image);
        let _guard = lock.lock().await;
        self.file(&prefix, manifest.image, f).await
    }

    async fn upload(
        &self,
        _host: &panal_types::Name,
        task: OperationId,
        file: &Path,
        done: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<panal_types::volume::FileDigest, String> {
        super::transfer::upload(&self.link, task, file, done).await
    }

    async fn download(
        &self,
        _host: &panal_types::Name,
        task: OperationId,
        dst: &Path,
        limit: u64,
        done: &Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<panal_types::volume::FileDigest, String> {
        super::transfer::download(&self.link, task, dst, limit, done).await
    }
}
