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

/// Body of `POST /api/v1/images`: import an image from files on the control plane's machine.
/// Give either `kernel_path` (with an optional `initrd_path`) or `disk_path` with its `format`.
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
    /// Absolute path of an initramfs to go with the kernel.
    #[serde(default)]
    pub initrd_path: Option<String>,
    /// Kernel arguments added for this image.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Absolute path of a disk image.
    #[serde(default)]
    pub disk_path: Option<String>,
    /// The disk image's declared format; the file's header must agree.
    #[serde(default)]
    pub format: Option<DiskFormat>,
}

/// The answer to an import: the operation that tracks the copy.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageAccepted {
    /// The operation tracking the import; its target names the image.
    pub operation: crate::operation::Operation,
}
