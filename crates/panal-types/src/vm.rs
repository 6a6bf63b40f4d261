//! Virtual machines: the desired state a user writes (spec) and the state the platform observes
//! (status). Controllers converge the second to the first; `generation` counts spec changes and
//! `status.observed_generation` says which one the status reflects.

use crate::{Name, OperationId, VmId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which hypervisor driver runs a VM.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HypervisorKind {
    /// QEMU over QMP (KVM where it works, TCG otherwise).
    #[default]
    Qemu,
    /// A simulated hypervisor for control-plane tests at scale.
    Fake,
}

impl HypervisorKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::Fake => "fake",
        }
    }
}

impl std::str::FromStr for HypervisorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(HypervisorKind::Qemu),
            "fake" => Ok(HypervisorKind::Fake),
            _ => Err(format!("unknown hypervisor {s:?} (expected qemu or fake)")),
        }
    }
}

/// Hardware profile of a VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineProfile {
    /// PCI machine with hot-plug and firmware boot of disk images.
    #[default]
    Q35,
    /// Minimal machine with direct kernel boot: the fastest start.
    Microvm,
}

/// What the platform does when a VM stops without being asked to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// Restart whenever it stops unasked.
    Always,
    /// Restart when it crashed or its hypervisor failed.
    #[default]
    OnFailure,
    /// Leave it stopped or failed.
    Never,
}

/// The power state a user asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Running.
    #[default]
    Running,
    /// Stopped (no hypervisor process).
    Stopped,
    /// Running but with its vCPUs paused.
    Paused,
}

/// Where a VM's lifecycle is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmPhase {
    /// Accepted, waiting for a host.
    Pending,
    /// A host is chosen; the agent has not started it yet.
    Scheduled,
    /// The hypervisor is starting it.
    Starting,
    /// Running.
    Running,
    /// vCPUs paused.
    Paused,
    /// Shutting down.
    Stopping,
    /// Not running.
    Stopped,
    /// Moving to another host.
    Migrating,
    /// Could not start, or crashed; see `reason`.
    Failed,
    /// Being removed.
    Deleting,
}

impl VmPhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            VmPhase::Pending => "pending",
            VmPhase::Scheduled => "scheduled",
            VmPhase::Starting => "starting",
            VmPhase::Running => "running",
            VmPhase::Paused => "paused",
            VmPhase::Stopping => "stopping",
            VmPhase::Stopped => "stopped",
            VmPhase::Migrating => "migrating",
            VmPhase::Failed => "failed",
            VmPhase::Deleting => "deleting",
        }
    }
}

/// The desired state of a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmSpec {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in bytes (a whole number of MiB).
    pub memory_bytes: u64,
    /// Image to boot from, by name in the VM's project or the global images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Name>,
    /// Hypervisor driver.
    pub hypervisor: HypervisorKind,
    /// Hardware profile.
    #[serde(default)]
    pub machine: MachineProfile,
    /// Free-form labels (used by selectors and affinity later).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What to do when it stops unasked.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Desired power state.
    pub power_state: PowerState,
    /// Seconds a graceful stop waits for the guest before forcing it off.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u32,
    /// Bumped by every restart request so the agent reboots exactly once per request.
    #[serde(default)]
    pub restart_nonce: u64,
    /// The pending stop should power off at once rather than ask the guest.
    #[serde(default)]
    pub force_stop: bool,
    /// Deletion was requested: the agent stops the VM and cleans up, then the record goes.
    #[serde(default)]
    pub deleted: bool,
    /// Placement constraints the scheduler honours (fixed at creation).
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
    /// Volumes attached as extra disks, in the order the guest sees them (`vdb`, `vdc`, ...).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::slots::volumes_with_legacy_slots"
    )]
    pub volumes: Vec<crate::volume::DiskAttachment>,
    /// Network interfaces, in the order the guest sees them (`eth0`, `eth1`, ...).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::slots::nics_with_legacy_slots"
    )]
    pub nics: Vec<crate::network::Nic>,
    /// Slots for volumes and NICs (PCIe root ports of a q35 VM): each attached volume or NIC
    /// takes one. Set at creation; changed only while the VM is stopped.
    #[serde(default = "crate::slots::legacy_hotplug_slots")]
    pub hotplug_slots: u32,
}

fn default_stop_timeout() -> u32 {
    30
}

/// A recent thing that happened to a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmEvent {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Short machine-friendly reason (`Scheduled`, `Started`, `Crashed`, ...).
    pub reason: String,
    /// Human text.
    pub message: String,
}

/// How many events a VM keeps.
pub const MAX_VM_EVENTS: usize = 20;

/// The observed state of a VM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmStatus {
    /// Lifecycle phase.
    pub phase: VmPhase,
    /// Host it is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// Why it is in this phase (for `failed`: the cause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the scheduler put it where it is, or why nothing fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// The spec generation this status reflects.
    pub observed_generation: u64,
    /// The restart nonce last acted on.
    #[serde(default)]
    pub observed_restart_nonce: u64,
    /// The operation in flight on this VM, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationId>,
    /// How many times the restart policy has restarted it since it last ran cleanly.
    #[serde(default)]
    pub restarts: u32,
    /// Recent events, oldest first.
    #[serde(default)]
    pub events: Vec<VmEvent>,
    /// Set while a host drain moves the VM (cold: stopped on `from`, placed again, started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<VmMove>,
    /// Set while the VM is live-migrated to another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::migration::VmMigration>,
    /// The host a drain moved it off: `panal host uncordon --move-back` returns it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<Name>,
}

/// A VM being moved off a draining host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmMove {
    /// The host it leaves.
    pub from: Name,
    /// The drain operation moving it.
    pub operation: OperationId,
    /// The power state to give back once it lands (the move stops it on `from`).
    pub power_state: PowerState,
}

impl VmStatus {
    /// Appends an event, keeping only the most recent ones.
    pub fn push_event(&mut self, reason: &str, message: impl Into<String>) {
        self.events.push(VmEvent {
            at: chrono::Utc::now(),
            reason: reason.into(),
            message: message.into(),
        });
        let extra = self.events.len().saturating_sub(MAX_VM_EVENTS);
        self.events.drain(..extra);
    }
}

/// A VM as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Vm {
    /// Stable identifier.
    pub id: VmId,
    /// Name, unique in its project.
    pub name: Name,
    /// Owning project.
    pub project: Name,
    /// Counts spec changes.
    pub generation: u64,
    /// Desired state.
    pub spec: VmSpec,
    /// Observed state.
    pub status: VmStatus,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Store revision of this view (for compare-and-swap updates and event resumption).
    #[serde(default)]
    pub revision: u64,
}

/// Body of `POST /api/v1/vms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    /// Name, unique in the project.
    pub name: String,
    /// Project (default `default`).
    #[serde(default)]
    pub project: Option<String>,
    /// Virtual CPUs (default 1).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Memory in bytes, a whole number of MiB (default 512 MiB).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Image to boot from.
    #[serde(default)]
    pub image: Option<String>,
    /// A volume of the project to boot from instead of an image (its root file system on the
    /// first disk, `/dev/vda`); attached to the VM for its whole life.
    #[serde(default)]
    pub boot_volume: Option<String>,
    /// Network interfaces on the project's networks (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<crate::network::NicRequest>,
    /// Slots for volumes and NICs: each attached volume or NIC takes one, the boot volume
    /// included (at most 16; default: the devices it is created with plus two, at least four).
    /// Fixed while the VM runs; a stopped VM's can be changed (`PATCH`, `hotplug_slots`). Each empty slot of a q35 VM adds a little to a live migration's
    /// downtime (about 2.5 ms under TCG), so ask for what the VM will need.
    #[serde(default)]
    pub hotplug_slots: Option<u32>,
    /// Hypervisor (default `qemu`).
    #[serde(default)]
    pub hypervisor: Option<HypervisorKind>,
    /// Hardware profile (default `q35`).
    #[serde(default)]
    pub machine: Option<MachineProfile>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Restart policy (default `on_failure`).
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// Start it once created (default true).
    #[serde(default)]
    pub start: Option<bool>,
    /// Seconds a graceful stop waits before forcing (default 30, at most 3600).
    #[serde(default)]
    pub stop_timeout_secs: Option<u32>,
    /// Only hosts carrying every one of these labels (`key: value`) may run it.
    #[serde(default)]
    pub host_selector: BTreeMap<String, String>,
    /// Only hosts of this failure-domain zone may run it.
    #[serde(default)]
    pub zone: Option<String>,
    /// Hypervisor capabilities the host must offer (`pause`, `migrate`, ...).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Affinity or anti-affinity with the other VMs of a group in the same project.
    #[serde(default)]
    pub placement_group: Option<PlacementGroupRequest>,
}

/// How a VM relates to the other members of its placement group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupPolicy {
    /// On a host that already runs a member (the first member picks freely).
    Affinity,
    /// On a host that runs no other member.
    AntiAffinity,
}

/// Placement-group membership as a create request states it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementGroupRequest {
    /// Group name (a resource name); groups exist through their members, per project.
    pub name: String,
    /// Together or apart.
    pub policy: GroupPolicy,
    /// A preference rather than a rule: when it cannot be met the VM is placed anyway
    /// (default false: hard, the VM stays pending instead).
    #[serde(default)]
    pub soft: bool,
}

/// Placement-group membership of a VM. The rule binds the VM that states it: each member is
/// placed against the members already placed, so members with different rules do not conflict.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlacementGroup {
    /// Group name, unique per project.
    pub name: Name,
    /// Together or apart.
    pub policy: GroupPolicy,
    /// A preference, not a rule.
    #[serde(default)]
    pub soft: bool,
}

/// Placement constraints of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placement {
    /// Labels a host must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub host_selector: BTreeMap<String, String>,
    /// Zone a host must be in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Hypervisor capabilities a host must offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Placement group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<PlacementGroup>,
}

impl Placement {
    /// No constraint at all.
    pub fn is_empty(&self) -> bool {
        self.host_selector.is_empty()
            && self.zone.is_none()
            && self.capabilities.is_empty()
            && self.group.is_none()
    }
}

/// Body of `PATCH /api/v1/vms/{name}`: fields left out stay as they are.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmUpdate {
    /// New vCPU count (applied live where the hypervisor can, else at next boot).
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// New memory size in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Replaces all labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// New restart policy.
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// New graceful-stop timeout.
    #[serde(default)]
    pub stop_timeout_secs: Option<u32>,
    /// New number of slots for volumes and NICs (at most 16, and more than the highest slot a
    /// device holds). Only while the VM is stopped: a q35 machine's PCIe root ports are laid
    /// out when it boots; the new number applies from its next start.
    #[serde(default)]
    pub hotplug_slots: Option<u32>,
    /// Only apply if the VM's generation is still this (optimistic concurrency).
    #[serde(default)]
    pub if_generation: Option<u64>,
}

/// Body of `POST /api/v1/vms/{name}/stop`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct VmStopRequest {
    /// Power off at once instead of asking the guest.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a request that starts work: the resource and the operation that tracks it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmAccepted {
    /// The VM as it is now.
    pub vm: Vm,
    /// The operation tracking the change.
    pub operation: crate::operation::Operation,
}

/// The most VMs one `POST /api/v1/vms:batch` may create.
pub const MAX_BATCH_CREATE: usize = 1000;

/// Body of `POST /api/v1/vms:batch`: several VMs created together, all or none.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmBatchCreate {
    /// The VMs, 1 to 1000, each as `POST /api/v1/vms` takes it. Names must differ.
    pub vms: Vec<VmCreate>,
}

/// One VM of a batch create's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmBatchItem {
    /// The new VM's id.
    pub id: VmId,
    /// Its name.
    pub name: Name,
    /// Its project.
    pub project: Name,
    /// The operation tracking its creation.
    pub operation: OperationId,
}

/// The answer to a batch create: one item per requested VM, in request order (read the VMs
/// or their operations for the rest).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmBatchAccepted {
    /// The created VMs.
    pub vms: Vec<VmBatchItem>,
}

/// Limits a create or update is checked against.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3600;
/// The most labels a VM may carry.
pub const MAX_LABELS: usize = 64;
/// The most host-selector entries and required capabilities a VM may state.
pub const MAX_PLACEMENT_TERMS: usize = 16;
