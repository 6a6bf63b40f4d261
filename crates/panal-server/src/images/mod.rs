//! The image store on the control plane's disk: one directory per image id holding `kernel`,
//! `initrd` or `disk`. Files are copied in (never referenced where they lie), disk images are
//! inspected with `qemu-img` and refused when their header contradicts the declared format, when
//! they reference any file outside themselves (backing file, external data file), or when their
//! virtual size is over the limit. Files may also come from `http`/`https` URLs: `guard.rs`
//! decides which destinations are allowed, `fetch.rs` downloads.

pub mod fetch;
pub mod guard;

use panal_types::image::DiskFormat;
use panal_types::{ApiError, ErrorCode, ImageId};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where images live and what they may be.
#[derive(Clone, Debug)]
pub struct ImageStore {
    /// Root directory.
    pub dir: PathBuf,
    /// Largest virtual size of a disk image.
    pub max_virtual_size: u64,
    /// Largest kernel or initramfs file.
    pub max_boot_file: u64,
    /// `qemu-img` binary.
    pub qemu_img: String,
    /// How files are downloaded from URLs.
    pub fetch: fetch::FetchPolicy,
}

impl ImageStore {
    /// A store rooted at `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            max_virtual_size: 256 << 30,
            max_boot_file: 512 << 20,
            qemu_img: "qemu-img".into(),
            fetch: fetch::FetchPolicy::default(),
        }
    }

    /// The same store with this download policy.
    pub fn with_fetch(mut self, fetch: fetch::FetchPolicy) -> Self {
        self.fetch = fetch;
        self
    }

    /// The directory of one image.
    pub fn image_dir(&self, id: ImageId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// A file of one image (`kernel`, `initrd` or `disk`), checked to lie inside the store.
    pub fn file(&self, id: ImageId, which: &str) -> Result<PathBuf, String> {
        let p = self.image_dir(id).join(which);
        let canon = p
            .canonicalize()
            .map_err(|e| format!("image file {which} of {id} is missing: {e}"))?;
        let root = self
            .dir
            .canonicalize()
            .map_err(|e| format!("image store missing: {e}"))?;
        if !canon.starts_with(&root) {
            return Err(format!(
                "image file {which} of {id} points outside the image store"
            ));
        }
        Ok(canon)
    }

    /// Removes an image's files.
    pub async fn remove(&self, id: ImageId) {
        let _ = tokio::fs::remove_dir_all(self.image_dir(id)).await;
    }
}

/// What `qemu-img info` says about a disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Detected format.
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// A backing file, if any.
    pub backing_file: Option<String>,
    /// An external data file, if any.
    pub data_file: Option<String>,
}

/// Checks that `path` is an absolute path to a readable regular file (not a link).
pub fn check_source(field: &str, path: &str) -> Result<PathBuf, ApiError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(ApiError::invalid(field, "must be an absolute path"));
    }
    let meta = std::fs::symlink_metadata(&p)
        .map_err(|_| ApiError::invalid(field, format!("{path} does not exist or is unreadable")))?;
    if !meta.file_type().is_file() {
        return Err(ApiError::invalid(
            field,
            format!("{path} is not a regular file"),
        ));
    }
    Ok(p)
}

/// Runs `qemu-img info` on a file, letting it detect the format (so a lie about the format is
/// caught), in JSON. Errors name `field` (where the file came from).
pub async fn inspect(qemu_img: &str, path: &Path, field: &str) -> Result<DiskInfo, ApiError> {
    let out = tokio::process::Command::new(qemu_img)
        .args(["info", "--output=json", "--force-share"])
        .arg(path)
        .output()
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot run qemu-img");
            ApiError::new(
                ErrorCode::Unavailable,
                "qemu-img is not available on the control plane",
            )
        })?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(ApiError::invalid(
            field,
            format!("not a readable disk image: {why}"),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| ApiError::invalid(field, "qemu-img gave unreadable output"))?;
    Ok(DiskInfo {
        format: v["format"].as_str().unwrap_or("").to_owned(),
        virtual_size: v["virtual-size"].as_u64().unwrap_or(0),
        backing_file: v["backing-filename"]
            .as_str()
            .or(v["full-backing-filename"].as_str())
            .map(str::to_owned),
        data_file: v["format-specific"]["data"]["data-file"]
            .as_str()
            .map(str::to_owned),
    })
}

/// Refuses a disk image that is not safe to take in; errors name `field` (where the file came
/// from) or `format`.
pub fn check_disk(
    info: &DiskInfo,
    declared: DiskFormat,
    max_virtual_size: u64,
    field: &str,
) -> Result<(), ApiError> {
    if info.format != declared.as_str() {
        return Err(ApiError::invalid(
            "format",
            format!(
                "the file's header says {} but the request declares {}",
                info.format,
                declared.as_str()
            ),
        ));
    }
    if let Some(b) = &info.backing_file {
        return Err(ApiError::invalid(
            field,
            format!("the image references a backing file ({b}); images must be self-contained"),
        ));
    }
    if let Some(d) = &info.data_file {
        return Err(ApiError::invalid(
            field,
            format!(
                "the image references an external data file ({d}); images must be self-contained"
            ),
        ));
    }
    if info.virtual_size > max_virtual_size {
        return Err(ApiError::invalid(
            field,
            format!(
                "virtual size {} exceeds the limit of {}",
                info.virtual_size, max_virtual_size
            ),
        ));
    }
    Ok(())
}

/// Copies `src` to `dst`, hashing as it goes and calling `progress(bytes_done)` now and then.
/// Returns (bytes, sha256 hex).
pub async fn copy_hashed(
    src: &Path,
    dst: &Path,
    mut progress: impl FnMut(u64),
) -> std::io::Result<(u64, String)> {
    let mut input = tokio::fs::File::open(src).await?;
    let mut output = tokio::fs::File::create(dst).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = input.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).await?;
        done += n as u64;
        progress(done);
    }
    output.sync_all().await?;
    Ok((done, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(format: &str) -> DiskInfo {
        DiskInfo {
            format: format.into(),
            virtual_size: 1 << 30,
            backing_file: None,
            data_file: None,
        }
    }

    #[test]
    fn refuses_unsafe_disks() {
        assert!(check_disk(&info("qcow2"), DiskFormat::Qcow2, 2 << 30, "disk_path").is_ok());
        let e = check_disk(&info("qcow2"), DiskFormat::Raw, 2 << 30, "disk_path").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("format"));
        let mut i = info("qcow2");
        i.backing_file = Some("/etc/shadow".into());
        assert!(
            check_disk(&i, DiskFormat::Qcow2, 2 << 30, "disk_url")
                .unwrap_err()
                .message
                .contains("/etc/shadow")
        );
        let mut i = info("qcow2");
        i.data_file = Some("/dev/sda".into());
        assert!(check_disk(&i, DiskFormat::Qcow2, 2 << 30, "disk_url").is_err());
        assert!(check_disk(&info("raw"), DiskFormat::Raw, 1 << 20, "disk_path").is_err());
    }
}
