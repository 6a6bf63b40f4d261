//! Volumes: block devices kept in a host's storage pool (a qcow2 or raw file), attached to VMs as
//! extra disks. A volume lives in one pool; in a local pool it belongs to one host, in a shared
//! pool (the same directory mounted on several hosts) any host of the pool can open it.

use crate::{Name, OperationId, VolumeId};
use serde::{Deserialize, Serialize};

/// How a volume's bytes are kept.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum VolumeFormat {
    /// Thin, with copy-on-write clones and snapshots.
    #[default]
    Qcow2,
    /// Plain bytes (sparse where the file system allows).
    Raw,
}

impl VolumeFormat {
    /// The wire name, also QEMU's driver name.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeFormat::Qcow2 => "qcow2",
            VolumeFormat::Raw => "raw",
        }
    }
}

/// Where a volume is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumePhase {
    /// Its host is creating the file.
    Creating,
    /// Usable.
    Ready,
    /// Its host is growing the file.
    Resizing,
    /// Its host is removing the file.
    Deleting,
    /// The last host task failed; see `reason`. A failed create can only be deleted.
    Failed,
}

impl VolumePhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumePhase::Creating => "creating",
            VolumePhase::Ready => "ready",
            VolumePhase::Resizing => "resizing",
            VolumePhase::Deleting => "deleting",
            VolumePhase::Failed => "failed",
        }
    }
}

/// What a new volume starts as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum VolumeSource {
    /// All zeroes.
    Empty,
    /// A clone of another volume of the same project (which must not be attached while a
    /// full copy is taken). `linked` makes a copy-on-write child whose parent then cannot be
    /// deleted or written while it has children.
    Volume {
        /// The parent volume.
        volume: String,
        /// Copy-on-write child (default) or full copy.
        #[serde(default = "yes")]
        linked: bool,
    },
    /// A copy of a disk image (the project's own or a shared one of `default`), converted
    /// into the volume's pool and format: the image can be deleted afterwards.
    Image {
        /// The image.
        image: String,
    },
}

fn yes() -> bool {
    true
}

/// A request to create a volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    /// Name, unique among the project's volumes.
    pub name: String,
    /// Project (default `default`).
    #[serde(default)]
    pub project: Option<String>,
    /// Virtual size in bytes (a whole number of MiB). Required for empty volumes; a clone
    /// takes its parent's size unless a larger one is given.
    #[serde(default)]
    pub size_bytes: Option<u64>,
    /// File format (default qcow2; clones keep their parent's).
    #[serde(default)]
    pub format: Option<VolumeFormat>,
    /// Storage pool (default `default`).
    #[serde(default)]
    pub pool: Option<String>,
    /// Host whose pool keeps it (default: the host of `vm` when given, else the host with the
    /// most free space in the pool).
    #[serde(default)]
    pub host: Option<String>,
    /// What it starts as (default empty).
    #[serde(default)]
    pub source: Option<VolumeSource>,
}

/// A volume as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Volume {
    /// Stable identifier (names its file).
    pub id: VolumeId,
    /// Name.
    pub name: Name,
    /// Project.
    pub project: Name,
    /// Virtual size in bytes.
    pub size_bytes: u64,
    /// File format.
    pub format: VolumeFormat,
    /// Storage pool.
    pub pool: String,
    /// Host whose pool keeps the file; any host of a shared pool can open it.
    pub host: Name,
    /// The pool is shared between hosts.
    #[serde(default)]
    pub shared: bool,
    /// The file's name inside the pool directory.
    pub file: String,
    /// The volume this one is a copy-on-write child of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Name>,
    /// Copy-on-write children of this volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Name>,
    /// Lifecycle phase.
    pub phase: VolumePhase,
    /// Why the last host task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The VM it is attached to (at most one: volumes are writable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_to: Option<Name>,
    /// The operation working on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationId>,
    /// Its snapshots, oldest first (qcow2 only: kept inside the file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<VolumeSnapshot>,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Store revision of this record.
    #[serde(default)]
    pub revision: u64,
}

/// A point-in-time state of a volume, kept inside its qcow2 file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeSnapshot {
    /// Name, unique among the volume's snapshots.
    pub name: Name,
    /// When it was taken.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The volume's virtual size then (a revert restores it).
    pub size_bytes: u64,
}

/// A request to take a snapshot (of a volume, or of every volume of a VM at one instant).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// The snapshot's name.
    pub name: String,
}

/// What a snapshot task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStep {
    /// Take it (pausing the guest for the instant it takes when the disks are in use).
    Create,
    /// Bring the disks back to it (never while a VM uses them).
    Revert,
    /// Drop it.
    Delete,
}

/// One disk of a snapshot task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotDisk {
    /// The volume.
    pub id: VolumeId,
    /// Its pool.
    pub pool: String,
    /// Its file in the pool.
    pub file: String,
}

/// A request to grow a volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    /// The new virtual size in bytes: larger than now, a whole number of MiB.
    pub size_bytes: u64,
}

/// A request to move a detached volume to another pool of its host, or to another host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMove {
    /// The pool to move it to (default: a pool of the same name on the target host).
    #[serde(default)]
    pub pool: Option<String>,
    /// The host to move it to (default: its own). The file is copied through the control
    /// plane and verified; the volume switches host only once the copy is complete.
    #[serde(default)]
    pub host: Option<String>,
}

/// A request to export a volume's current contents as a disk image of its project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeExport {
    /// The new image's name, unique among the project's images.
    pub image: String,
    /// The image's format (default qcow2): a standalone file without a backing chain.
    #[serde(default)]
    pub format: Option<crate::image::DiskFormat>,
}

/// A request to attach a volume to a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeAttach {
    /// The VM, in the volume's project.
    pub vm: String,
}

/// A request that started work on a volume: the volume as it is now, and the operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeAccepted {
    /// The volume.
    pub volume: Volume,
    /// The operation to follow.
    pub operation: crate::operation::Operation,
}

/// A volume as a VM's spec carries it: everything the VM's host needs to open the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskAttachment {
    /// The volume's name.
    pub volume: Name,
    /// The volume's id.
    pub id: VolumeId,
    /// Its pool.
    pub pool: String,
    /// The host whose pool keeps it.
    pub host: Name,
    /// The pool is shared: every host of the pool can open it.
    pub shared: bool,
    /// Its file inside the pool.
    pub file: String,
    /// Its format.
    pub format: VolumeFormat,
    /// Its virtual size: the host grows the disk (live when running) to match.
    pub size_bytes: u64,
    /// The VM boots from it (always the first volume; it cannot be detached).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot: bool,
    /// The VM's slot it sits in (its PCIe root port on q35), chosen when attached and kept
    /// while it stays attached, so a migration's destination builds the same layout.
    #[serde(default = "crate::slots::unset")]
    pub slot: u32,
}

/// The host-side work a volume change needs, carried to the volume's host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum VolumeAction {
    /// Create the file.
    Create {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
        /// Its format.
        format: VolumeFormat,
        /// Virtual size.
        size_bytes: u64,
        /// Copy from, or back onto, this file of the same pool.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<CloneFrom>,
        /// Copy this disk image's file (fetched as VMs' boot images are).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_image: Option<ImageCopy>,
    },
    /// Grow the file (of a detached volume).
    Resize {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
        /// New virtual size.
        size_bytes: u64,
    },
    /// Take, revert to or drop a snapshot of one or more volumes, all at one instant.
    Snapshot {
        /// What to do.
        step: SnapshotStep,
        /// The snapshot's name.
        name: String,
        /// The volumes.
        disks: Vec<SnapshotDisk>,
    },
    /// Copy the file to another pool of the host (with progress), then remove the original.
    Move {
        /// Where it is.
        from_pool: String,
        /// Where it goes.
        to_pool: String,
        /// The file (same name in both pools).
        file: String,
        /// Its format.
        format: VolumeFormat,
        /// The target pool is shared.
        to_shared: bool,
    },
    /// Remove the file.
    Delete {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
    },
    /// Convert the file into a standalone disk image (no backing chain) and hand it to the
    /// control plane's image store, which registers it.
    Export {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
        /// Its format.
        format: VolumeFormat,
        /// The image it becomes.
        image: ExportImage,
    },
    /// First step of a move to another host: send the file as it is to the control plane,
    /// which keeps it until the target host has fetched it.
    Send {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
        /// Its format.
        format: VolumeFormat,
        /// Where it goes.
        to: MoveTarget,
    },
    /// Second step of a move to another host: fetch the file the source host sent, verify it
    /// against the source's size and SHA-256, and put it into the pool.
    Receive {
        /// Where it goes on this host.
        to: MoveTarget,
        /// Its format.
        format: VolumeFormat,
        /// What the source host read.
        digest: FileDigest,
        /// Where it was.
        from: MoveSource,
    },
    /// Last step of a move to another host: remove the original, which the volume no longer
    /// uses.
    Discard {
        /// The file's pool.
        pool: String,
        /// The file inside the pool.
        file: String,
    },
}

/// The image a volume export makes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportImage {
    /// The image's project (the volume's).
    pub project: Name,
    /// The image's name.
    pub name: Name,
    /// Its id, chosen when the export was asked for (a repeated upload is recognised by it).
    pub id: crate::ImageId,
    /// Its format.
    pub format: crate::image::DiskFormat,
}

/// Where a volume moving to another host goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MoveTarget {
    /// The host.
    pub host: Name,
    /// Its pool.
    pub pool: String,
    /// The pool is shared.
    pub shared: bool,
    /// The file's name there (new, so that a stale step can never touch it).
    pub file: String,
}

/// Where a volume moving to another host was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MoveSource {
    /// The host.
    pub host: Name,
    /// Its pool.
    pub pool: String,
    /// The file.
    pub file: String,
}

/// A file's length and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileDigest {
    /// Bytes.
    pub size_bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// The image a volume is copied from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageCopy {
    /// The image's project.
    pub project: Name,
    /// The image's name.
    pub name: Name,
    /// Its disk format.
    pub format: VolumeFormat,
}

/// The parent of a clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloneFrom {
    /// The parent's file in the same pool.
    pub file: String,
    /// The parent's format.
    pub format: VolumeFormat,
    /// Copy-on-write child (a qcow2 backed by the parent) or a full copy.
    pub linked: bool,
    /// The parent's pool, when a full copy goes to another pool of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// One piece of host-side work, queued for a host in the store until its agent reports it done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostTask {
    /// Identifies the task (the operation it completes).
    pub id: OperationId,
    /// The host that does it.
    pub host: Name,
    /// The volumes' project.
    pub project: Name,
    /// The volumes it changes (several for a snapshot of a whole VM).
    pub volumes: Vec<Name>,
    /// What to do.
    pub action: VolumeAction,
    /// The operation it is one step of, when that is not `id` (the later steps of a move to
    /// another host, each a task of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationId>,
}

impl HostTask {
    /// The operation this task completes or advances.
    pub fn operation_id(&self) -> OperationId {
        self.operation.unwrap_or(self.id)
    }
}

/// What an agent says about a host task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostTaskReport {
    /// The task.
    pub id: OperationId,
    /// The task has ended (successfully unless `error` says why not).
    #[serde(default)]
    pub finished: bool,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Progress in percent, while it goes.
    #[serde(default)]
    pub percent: Option<u8>,
    /// What it is doing, for people.
    #[serde(default)]
    pub message: String,
    /// The file a `send` step sent, as the host read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileDigest>,
}
