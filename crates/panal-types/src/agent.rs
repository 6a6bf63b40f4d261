//! The agent protocol: what a host agent tells the control plane and what it is told. The same
//! messages travel in-process (in `panal up`) and over mutual-TLS HTTPS (remote agents).

use crate::host::HostInventory;
use crate::vm::{Vm, VmPhase};
use crate::{Name, VmId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Sent once when an agent starts (and again after it reconnects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostRegistration {
    /// The host's name.
    pub name: Name,
    /// What the host has.
    pub inventory: HostInventory,
    /// Labels for selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Failure-domain zone.
    #[serde(default)]
    pub zone: Option<String>,
}

/// A change to the set of VMs assigned to a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Assignment {
    /// The VM is assigned here, or its spec changed: converge to it.
    Upsert {
        /// The VM's current record.
        vm: Box<Vm>,
    },
    /// The VM is no longer assigned here: stop it and clean up.
    Removed {
        /// The VM.
        id: VmId,
    },
    /// Every assigned VM has been sent once; VMs running here but not sent are orphans.
    Synced,
}

/// What an agent observed about one VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmStatusReport {
    /// The VM.
    pub id: VmId,
    /// Its project.
    pub project: Name,
    /// Its name.
    pub name: Name,
    /// Observed phase.
    pub phase: VmPhase,
    /// Why, where it matters (failure cause).
    #[serde(default)]
    pub reason: Option<String>,
    /// The spec generation acted on.
    pub observed_generation: u64,
    /// The restart nonce acted on.
    pub observed_restart_nonce: u64,
    /// Restarts by the restart policy since it last ran cleanly.
    pub restarts: u32,
    /// An event to record: (reason, message).
    #[serde(default)]
    pub event: Option<(String, String)>,
    /// The guest powered itself off and the policy will not restart it: the desired state
    /// becomes stopped.
    #[serde(default)]
    pub stopped_by_guest: bool,
    /// The VM was deleted on the host and everything it left is gone.
    #[serde(default)]
    pub cleaned_up: bool,
}

/// One file of a VM's boot image, as an agent fetches it from the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootFile {
    /// `kernel`, `initrd` or `disk`.
    pub role: String,
    /// Its length.
    pub size_bytes: u64,
    /// SHA-256 of its bytes, hex: the agent checks what it downloaded against this.
    pub sha256: String,
}

/// What a VM boots from, for an agent that keeps its own copy of images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootManifest {
    /// The image (cache key on the host).
    pub image: crate::ImageId,
    /// How it boots.
    pub kind: crate::image::ImageKind,
    /// Disk format (disk images).
    #[serde(default)]
    pub format: Option<crate::image::DiskFormat>,
    /// Kernel command line to add.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Its files.
    pub files: Vec<BootFile>,
}
