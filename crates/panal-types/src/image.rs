//! Images: bootable sources that VMs start from, kept in the control plane's image store.

use crate::{ImageId, Name};
use serde::{Deserialize, Serialize};

/// How an image boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A Linux kernel and an initramfs, booted directly.
    KernelInitrd,
    /// A whole disk (qcow2 or raw), booted by firmware or with a kernel.
    Disk,
}

/// On-disk format of a disk image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// QEMU copy-on-write format.
    Qcow2,
    /// Plain bytes.
    Raw,
}

impl DiskFormat {
    /// The name QEMU uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// An image as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Image {
    /// Stable identifier.
    pub id: ImageId,
    /// Name, unique in its project.
    pub name: Name,
    /// Owning project.
    pub project: Name,
    /// How it boots.
    pub kind: ImageKind,
    /// Disk format (disk images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DiskFormat>,
    /// Total bytes stored.
    pub size_bytes: u64,
    /// Virtual size of a disk image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_size_bytes: Option<u64>,
    /// SHA-256 of the stored files, hex.
    pub sha256: String,
    /// Kernel command line to add for kernel boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// When it was imported.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Body of `POST /api/v1/images`: import an image from files on the control plane's machine or
/// from `http`/`https` URLs. Give either a kernel (`kernel_path` or `kernel_url`, with an optional
/// initramfs `initrd_path` or `initrd_url`) or a disk (`disk_path` or `disk_url`) with its
/// `format`: one source per part. Each part may carry its expected SHA-256 (`*_sha256`, hex).
/// URLs whose destination is loopback, link-local, private or the control plane itself are
/// refused (`url_refused`) unless an administrator allowed the range.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageImport {
    /// Name, unique in the project.
    pub name: String,
    /// Project (default `default`; images of `default` are visible to every project).
    #[serde(default)]
    pub project: Option<String>,
    /// Absolute path of a Linux kernel (uncompressed `vmlinux` with a PVH note boots on both
    /// machine profiles).
    #[serde(default)]
    pub kernel_path: Option<String>,
    /// `http` or `https` URL of the kernel (instead of `kernel_path`).
    #[serde(default)]
    pub kernel_url: Option<String>,
    /// Expected SHA-256 of the kernel, hex.
    #[serde(default)]
    pub kernel_sha256: Option<String>,
    /// Absolute path of an initramfs to go with the kernel.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// `http` or `https` URL of the initramfs (instead of `initrd_path`).
    #[serde(default)]
    pub initrd_url: Option<String>,
    /// Expected SHA-256 of the initramfs, hex.
    #[serde(default)]
    pub initrd_sha256: Option<String>,
    /// Kernel arguments added for this image.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Absolute path of a disk image.
    #[serde(default)]
    pub disk_path: Option<String>,
    /// `http` or `https` URL of a disk image (instead of `disk_path`).
    #[serde(default)]
    pub disk_url: Option<String>,
    /// Expected SHA-256 of the disk image file, hex.
    #[serde(default)]
    pub disk_sha256: Option<String>,
    /// The disk image's declared format; the file's header must agree.
    #[serde(default)]
    pub format: Option<DiskFormat>,
}

/// The answer to an import: the operation that tracks the copy or download.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageAccepted {
    /// The operation tracking the import; its target names the image.
    pub operation: crate::operation::Operation,
}
