//! Operations: long-running work (create, start, stop, delete, import, migrate) with progress and
//! a result. A request that starts work answers at once with the operation; clients follow it.

use crate::{ApiError, Name, OperationId};
use serde::{Deserialize, Serialize};

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// Create (and maybe start) a VM.
    VmCreate,
    /// Start a VM.
    VmStart,
    /// Stop a VM.
    VmStop,
    /// Restart a VM.
    VmRestart,
    /// Delete a VM.
    VmDelete,
    /// Pause a VM's vCPUs.
    VmPause,
    /// Resume a paused VM.
    VmResume,
    /// Import an image.
    ImageImport,
    /// Move every VM off a host.
    HostDrain,
    /// Create (or clone) a volume.
    VolumeCreate,
    /// Grow a volume.
    VolumeResize,
    /// Delete a volume.
    VolumeDelete,
    /// Attach a volume to a VM.
    VolumeAttach,
    /// Detach a volume from a VM.
    VolumeDetach,
    /// Move a volume to another pool.
    VolumeMove,
    /// Plug a NIC into a VM.
    NicAdd,
    /// Unplug a NIC from a VM.
    NicRemove,
    /// Export a volume as an image.
    VolumeExport,
    /// Take a snapshot of a volume or of a VM's volumes.
    SnapshotCreate,
    /// Revert volumes to a snapshot.
    SnapshotRevert,
    /// Delete a snapshot.
    SnapshotDelete,
    /// Live-migrate a running VM to another host.
    VmMigrate,
}

impl OperationKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::VmCreate => "vm_create",
            OperationKind::VmStart => "vm_start",
            OperationKind::VmStop => "vm_stop",
            OperationKind::VmRestart => "vm_restart",
            OperationKind::VmDelete => "vm_delete",
            OperationKind::VmPause => "vm_pause",
            OperationKind::VmResume => "vm_resume",
            OperationKind::ImageImport => "image_import",
            OperationKind::HostDrain => "host_drain",
            OperationKind::VolumeCreate => "volume_create",
            OperationKind::VolumeResize => "volume_resize",
            OperationKind::VolumeDelete => "volume_delete",
            OperationKind::VolumeAttach => "volume_attach",
            OperationKind::VolumeDetach => "volume_detach",
            OperationKind::VolumeMove => "volume_move",
            OperationKind::NicAdd => "nic_add",
            OperationKind::NicRemove => "nic_remove",
            OperationKind::VolumeExport => "volume_export",
            OperationKind::SnapshotCreate => "snapshot_create",
            OperationKind::SnapshotRevert => "snapshot_revert",
            OperationKind::SnapshotDelete => "snapshot_delete",
            OperationKind::VmMigrate => "vm_migrate",
        }
    }
}

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Still working.
    Running,
    /// Done.
    Succeeded,
    /// Gave up; see `error`.
    Failed,
    /// Replaced by a later request before it finished.
    Cancelled,
}

impl OperationState {
    /// Whether the operation has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, OperationState::Running)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::Cancelled => "cancelled",
        }
    }
}

/// How far an operation has come.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// Percent done, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// The current step, for people.
    #[serde(default)]
    pub message: String,
}

/// The resource an operation acts on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OperationTarget {
    /// Resource kind (`vm`, `image`, ...).
    pub kind: String,
    /// Its project.
    pub project: Name,
    /// Its name.
    pub name: Name,
}

/// An operation as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Operation {
    /// Stable identifier.
    pub id: OperationId,
    /// What it does.
    pub kind: OperationKind,
    /// What it acts on.
    pub target: OperationTarget,
    /// Where it is.
    pub state: OperationState,
    /// How far it has come.
    pub progress: Progress,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// When it started.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The VM generation it waits for (VM operations).
    #[serde(default)]
    pub target_generation: u64,
    /// A live migration's figures (phase, bytes, dirty rate, downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::MigrationProgress>,
}
