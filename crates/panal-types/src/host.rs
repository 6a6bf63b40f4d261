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
    /// Schedulability.
    pub state: HostState,
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
