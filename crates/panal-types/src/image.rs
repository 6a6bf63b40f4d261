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
