//! Hosts: the physical machines whose agents run VMs. A host reports its inventory; the control
//! plane tracks its state and what is allocated on it.

use crate::vm::HypervisorKind;
use crate::{HostId, Name};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Whether a host takes new VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Alive and schedulable.
    Ready,
    /// Its lease expired: the agent is gone or cut off.
    NotReady,
    /// Alive but takes no new VMs.
    Cordoned,
    /// Its VMs are being moved away.
    Draining,
    /// Empty and out of service.
    Maintenance,
}

impl HostState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Ready => "ready",
            HostState::NotReady => "not_ready",
            HostState::Cordoned => "cordoned",
            HostState::Draining => "draining",
            HostState::Maintenance => "maintenance",
        }
    }
}

/// What an administrator asked of a host, kept apart from its liveness: a host that loses its
/// lease and comes back, or whose agent registers again, keeps its mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// Takes new VMs.
    #[default]
    Schedulable,
    /// Takes no new VMs; its VMs stay.
    Cordoned,
    /// Takes no new VMs and its VMs are being moved away.
    Draining,
    /// Drained: empty and out of service until uncordoned.
    Maintenance,
}

impl HostMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostMode::Schedulable => "schedulable",
            HostMode::Cordoned => "cordoned",
            HostMode::Draining => "draining",
            HostMode::Maintenance => "maintenance",
        }
    }

    /// The state a live host in this mode shows.
    pub fn live_state(self) -> HostState {
        match self {
            HostMode::Schedulable => HostState::Ready,
            HostMode::Cordoned => HostState::Cordoned,
            HostMode::Draining => HostState::Draining,
            HostMode::Maintenance => HostState::Maintenance,
        }
    }
}

/// A drain in progress on a host (kept in the host record so a control-plane restart or a
/// change of leader resumes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostDrain {
    /// The operation that reports it.
    pub operation: crate::OperationId,
    /// VMs on the host when the drain checked they all fit elsewhere (`None` before that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Running VMs that cannot move live are stopped and started elsewhere (otherwise the drain
    /// fails on them, stopping nothing).
    #[serde(default)]
    pub cold: bool,
}

/// How a hypervisor accelerates guests on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
    /// Nothing runs guests (simulated driver).
    None,
}

/// One hypervisor driver as probed on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HypervisorInfo {
    /// Driver kind.
    pub kind: HypervisorKind,
    /// Whether the probe found it usable.
    pub available: bool,
    /// Version string, or why it is unavailable.
    pub detail: String,
    /// Accelerator it would use.
    pub accelerator: Accelerator,
    /// Capability flags (`live_resize_memory`, `pause`, `migrate`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// What an agent reports about its machine when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostInventory {
    /// Logical CPUs.
    pub cpus: u32,
    /// CPU model name.
    #[serde(default)]
    pub cpu_model: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Hypervisors found.
    pub hypervisors: Vec<HypervisorInfo>,
    /// Agent version.
    pub agent_version: String,
    /// CPU feature flags as the kernel lists them (`/proc/cpuinfo`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
    /// Storage pools and their capacity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<StoragePoolInfo>,
    /// The address other hosts reach this host's VXLAN tunnels at; absent when the host does
    /// not carry virtual networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// The address other hosts' agents send live migrations to (absent: the host takes none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub migration_address: Option<std::net::IpAddr>,
}

/// One storage pool of a host, as its agent measured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoragePoolInfo {
    /// Pool name, unique on the host.
    pub name: String,
    /// Directory on the host.
    pub path: String,
    /// Mounted on several hosts (NFS and the like): its files are reachable from each.
    #[serde(default)]
    pub shared: bool,
    /// Size of the file system holding it.
    pub total_bytes: u64,
    /// Bytes free on that file system.
    pub free_bytes: u64,
}

/// Resources the scheduler has promised to VMs on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostAllocation {
    /// vCPUs promised.
    pub vcpus: u64,
    /// Memory promised, in bytes.
    pub memory_bytes: u64,
    /// VMs placed here.
    pub vms: u64,
}

/// A host as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Host {
    /// Stable identifier.
    pub id: HostId,
    /// Unique name.
    pub name: Name,
    /// Schedulability: `not_ready` while its lease is lost, otherwise what `mode` says.
    pub state: HostState,
    /// What an administrator asked (cordon, drain, maintenance), whatever its liveness.
    #[serde(default)]
    pub mode: HostMode,
    /// The drain in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<HostDrain>,
    /// Inventory reported by its agent.
    pub inventory: HostInventory,
    /// What is allocated on it.
    pub allocation: HostAllocation,
    /// Labels for selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Failure-domain zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// When it joined.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last heartbeat.
    pub last_seen: chrono::DateTime<chrono::Utc>,
}

impl Host {
    /// Whether its lease is held.
    pub fn alive(&self) -> bool {
        self.state != HostState::NotReady
    }

    /// Sets the mode and recomputes the state from it and the liveness.
    pub fn set_mode(&mut self, mode: HostMode) {
        self.mode = mode;
        self.set_alive(self.alive());
    }

    /// Recomputes the state after the lease came or went.
    pub fn set_alive(&mut self, alive: bool) {
        self.state = if alive {
            self.mode.live_state()
        } else {
            HostState::NotReady
        };
    }
}

/// The answer to a move-back request: the live migrations started, and the VMs that stayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostMoveBack {
    /// One operation per VM on its way back.
    pub migrations: Vec<crate::operation::Operation>,
    /// VMs that stay where they are, and why (`project/name: reason`).
    pub skipped: Vec<String>,
}

/// The answer to a drain request: the host as it now is and the operation to follow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostDrainAccepted {
    /// The host (now `draining`).
    pub host: Host,
    /// The drain's operation.
    pub operation: crate::operation::Operation,
}
