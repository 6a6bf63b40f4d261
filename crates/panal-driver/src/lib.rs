//! The hypervisor driver trait: the few things the agent needs from any backend, and nothing
//! more. A [`Driver`] launches VMs and re-attaches to ones that outlived the agent; each running
//! VM is a [`VmHandle`] that exactly one agent task owns. Optional abilities are capability flags
//! reported by [`Driver::probe`], not extra required methods.
//!
//! Backends: [`fake`] (simulated, for control-plane tests at scale) and `qemu` (the reference).

pub mod fake;
mod migration;
pub mod qemu;

pub use migration::{
    DiskMirrorStatus, Endpoint, Incoming, MigrationParams, MigrationPhase, MigrationStatus,
    MigrationTarget, ROOT_DISK,
};

use async_trait::async_trait;
use panal_types::VmId;
use panal_types::host::HypervisorInfo;
use panal_types::vm::{HypervisorKind, MachineProfile};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Capability flags a driver may report.
pub mod caps {
    /// Can pause and resume vCPUs.
    pub const PAUSE: &str = "pause";
    /// Can change memory of a running VM.
    pub const LIVE_RESIZE_MEMORY: &str = "live_resize_memory";
    /// Can add vCPUs to a running VM.
    pub const LIVE_RESIZE_VCPUS: &str = "live_resize_vcpus";
    /// Has a serial console.
    pub const CONSOLE: &str = "console";
    /// Can live-migrate.
    pub const MIGRATE: &str = "migrate";
    /// VMs outlive the agent and are re-attached.
    pub const REATTACH: &str = "reattach";
    /// Can hot-plug and unplug disks and grow them live.
    pub const DISK_HOTPLUG: &str = "disk_hotplug";
}

/// What a VM boots from, resolved to files on this host by the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootSource {
    /// Nothing: the fake driver, or a VM that boots from the network later.
    None,
    /// Direct kernel boot.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initramfs.
        initrd: Option<PathBuf>,
        /// Extra kernel arguments.
        cmdline: String,
    },
    /// The first of the VM's data disks (a volume it boots from, used in place).
    FirstDisk,
    /// A disk image used as the base of a per-VM copy-on-write overlay.
    Disk {
        /// Base image file.
        base: PathBuf,
        /// Its format (`qcow2` or `raw`).
        format: String,
    },
}

/// Everything needed to launch one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmLaunch {
    /// The VM's id (names its run directory).
    pub id: VmId,
    /// `project/name`, for logs and process titles.
    pub display_name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Hardware profile.
    pub machine: MachineProfile,
    /// Boot source.
    pub boot: BootSource,
    /// Volumes attached as extra virtio disks, in order.
    pub disks: Vec<DataDisk>,
    /// Network interfaces, in order (`eth0`, `eth1`, ...).
    pub nics: Vec<NetNic>,
    /// Slots for volumes and NICs (q35: that many PCIe root ports, `hp0`, `hp1`, ...); each
    /// disk and NIC names its own, so that a migration's destination has the source's layout.
    pub hotplug_slots: u32,
    /// `Some`: start as the destination of a live migration instead of booting. The VM waits,
    /// paused ([`RuntimeState::Incoming`]), for the source's state and runs once it has arrived.
    pub incoming: Option<Incoming>,
    /// With `incoming`: accept a switch to post-copy (the guest then runs here while its
    /// memory still comes from the source, page by page).
    pub post_copy: bool,
}

/// A virtio network interface backed by a tap device the agent created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNic {
    /// Stable id (the NIC's): names the QEMU netdev and device.
    pub id: String,
    /// The host's tap device.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: String,
    /// The network's MTU (told to the guest through virtio's `host_mtu`).
    pub mtu: u32,
    /// The VM's slot it sits in (chosen by the control plane).
    pub slot: u32,
}

/// A volume attached to a VM as an extra virtio disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDisk {
    /// Stable id (the volume's): names the disk's block node and device, and is the serial
    /// the guest sees (`/dev/disk/by-id/virtio-<first 20 characters>`).
    pub id: String,
    /// Its file.
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The VM's slot it sits in (chosen by the control plane).
    pub slot: u32,
}

/// What a running VM is doing, as the hypervisor sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeState {
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
    /// Guest panicked; the process may still exist.
    GuestPanicked,
    /// Launched as a migration destination and waiting for the source's state (vCPUs paused;
    /// there is no guest yet to pause, resume or reboot).
    Incoming,
    /// The hypervisor process is gone.
    Exited(VmExit),
}

/// Why a hypervisor process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off, or a stop we asked for completed.
    Shutdown,
    /// The guest panicked.
    GuestPanic,
    /// The hypervisor process died (killed, crashed, failed to start); the text says how.
    Crashed(String),
}

impl VmExit {
    /// Whether the restart policy `on_failure` applies.
    pub fn is_failure(&self) -> bool {
        !matches!(self, VmExit::Shutdown)
    }
}

/// A resize request; fields left out stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResizeRequest {
    /// New vCPU count.
    pub vcpus: Option<u32>,
    /// New memory in bytes.
    pub memory_bytes: Option<u64>,
}

/// What a resize achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResizeOutcome {
    /// Whether every change is already in effect.
    pub applied_live: bool,
    /// Changes that take effect only at the next boot, for the status.
    pub pending_reboot: Vec<String>,
}

/// Why a driver call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DriverError {
    /// the VM is not known to this driver on this host
    #[error("vm {0} is not running on this host")]
    NotRunning(VmId),
    /// the driver cannot do this (missing capability)
    #[error("not supported by this driver: {0}")]
    Unsupported(String),
    /// the request is invalid for this VM (e.g. shrink below what the guest uses)
    #[error("invalid request: {0}")]
    Invalid(String),
    /// the hypervisor failed to start the VM; the text is its reason
    #[error("hypervisor failed to start the VM: {0}")]
    Launch(String),
    /// the hypervisor refused or failed a command
    #[error("hypervisor error: {0}")]
    Hypervisor(String),
    /// a host-side I/O failure
    #[error("I/O error: {0}")]
    Io(String),
}

impl From<std::io::Error> for DriverError {
    fn from(e: std::io::Error) -> Self {
        DriverError::Io(e.to_string())
    }
}

/// A running VM. Exactly one agent task owns it and sends it commands; methods take `&self` so
/// the task can await the exit watch while a command is in flight.
#[async_trait]
pub trait VmHandle: Send + Sync + 'static {
    /// The VM's id.
    fn id(&self) -> VmId;

    /// The hypervisor process id, where there is one.
    fn pid(&self) -> Option<u32>;

    /// Becomes `Some` once the hypervisor process has exited. Cancel-safe to await.
    fn exit_watch(&self) -> watch::Receiver<Option<VmExit>>;

    /// Current state as reported by the hypervisor.
    async fn state(&self) -> Result<RuntimeState, DriverError>;

    /// Asks the guest to power off; forces it off after `timeout`. Returns once the process is gone.
    async fn shutdown(&self, timeout: Duration) -> Result<(), DriverError>;

    /// Forces the VM off now. Returns once the process is gone.
    async fn kill(&self) -> Result<(), DriverError>;

    /// Pauses vCPUs.
    async fn pause(&self) -> Result<(), DriverError>;

    /// Resumes vCPUs.
    async fn resume(&self) -> Result<(), DriverError>;

    /// Resets the guest (a reboot without a new process).
    async fn reboot(&self) -> Result<(), DriverError>;

    /// Changes vCPUs and memory, live where possible.
    async fn resize(&self, req: &ResizeRequest) -> Result<ResizeOutcome, DriverError>;

    /// Hot-plugs a disk into the running VM.
    async fn attach_disk(&self, disk: &DataDisk) -> Result<(), DriverError> {
        let _ = disk;
        Err(DriverError::Unsupported("disk hot-plug".into()))
    }

    /// Hot-unplugs a disk (the guest lets go of it first). Returns once it is gone.
    async fn detach_disk(&self, id: &str) -> Result<(), DriverError> {
        let _ = id;
        Err(DriverError::Unsupported("disk hot-unplug".into()))
    }

    /// Hot-plugs a network interface into the running VM.
    async fn attach_nic(&self, nic: &NetNic) -> Result<(), DriverError> {
        let _ = nic;
        Err(DriverError::Unsupported("NIC hot-plug".into()))
    }

    /// Hot-unplugs a network interface. Returns once it is gone.
    async fn detach_nic(&self, id: &str) -> Result<(), DriverError> {
        let _ = id;
        Err(DriverError::Unsupported("NIC hot-unplug".into()))
    }

    /// Grows a disk of the running VM; the guest sees the new size at once.
    async fn grow_disk(&self, id: &str, size_bytes: u64) -> Result<(), DriverError> {
        let _ = (id, size_bytes);
        Err(DriverError::Unsupported("live disk resize".into()))
    }

    /// Takes (or deletes) an internal snapshot of these disks of the running VM at one instant,
    /// holding their I/O for the moment it takes. Returns how long the I/O was held.
    async fn snapshot_disks(
        &self,
        ids: &[String],
        name: &str,
        step: panal_types::volume::SnapshotStep,
    ) -> Result<Duration, DriverError> {
        let _ = (ids, name, step);
        Err(DriverError::Unsupported("live disk snapshots".into()))
    }

    /// Starts a live migration of this VM to a destination launched with
    /// [`VmLaunch::incoming`], after applying `params`. Returns once the migration has started;
    /// follow it with [`VmHandle::migration_status`]. When it completes, this VM is left paused
    /// (it can no longer be resumed here) for the caller to stop. With disk copies running
    /// ([`VmHandle::mirror_disks`]) it refuses until every disk is ready, and the switch-over
    /// waits (guest paused) for the driver to finish the copies.
    async fn migrate(
        &self,
        to: &MigrationTarget,
        params: &MigrationParams,
    ) -> Result<(), DriverError> {
        let _ = (to, params);
        Err(DriverError::Unsupported("live migration".into()))
    }

    /// Switches a migration started with [`MigrationParams::post_copy`] to post-copy: the guest
    /// runs on the destination from now on and its remaining memory follows on demand. From
    /// then on the migration cannot be cancelled, and if either host fails the VM is lost.
    async fn start_post_copy(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("post-copy migration".into()))
    }

    /// Progress of the latest outgoing migration (on a destination still waiting, of the
    /// incoming one; once a guest has arrived here, `None`: nothing has left).
    async fn migration_status(&self) -> Result<MigrationStatus, DriverError> {
        Err(DriverError::Unsupported("live migration".into()))
    }

    /// Cancels the outgoing migration; returns once it has stopped and the VM runs (or stays
    /// paused, if it was) here. Nothing to cancel is not an error.
    async fn cancel_migration(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("live migration".into()))
    }

    /// Destination of a migration with local disks: serves these disks ([`ROOT_DISK`] for the
    /// boot-image overlay, data disk ids) writable over NBD at `at`, each as an export named
    /// by its disk id, for the source's [`VmHandle::mirror_disks`]. Only on a VM launched with
    /// [`VmLaunch::incoming`]. Already serving is not an error.
    async fn export_disks(&self, at: &Incoming, disks: &[String]) -> Result<(), DriverError> {
        let _ = (at, disks);
        Err(DriverError::Unsupported("disk migration".into()))
    }

    /// Destination: stops serving the disks (once the migration completed, or to give up).
    /// Nothing served is not an error.
    async fn unexport_disks(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("disk migration".into()))
    }

    /// Source of a migration with local disks: starts copying these disks to the destination's
    /// [`VmHandle::export_disks`] at `to` (the address the disks are served on, not the memory
    /// stream's; the host named as for [`VmHandle::migrate`]). The boot-image overlay moves only
    /// with what the guest changed, since the base image is on both hosts; data disks whole;
    /// each throttled to `max_bandwidth` bytes per second. Returns once the copies have started;
    /// follow them with [`VmHandle::disk_mirror_status`] and call [`VmHandle::migrate`] once
    /// every disk is ready. New guest writes keep being copied until the migration switches
    /// over, when the driver finishes the copies while the guest is paused.
    async fn mirror_disks(
        &self,
        to: &MigrationTarget,
        disks: &[String],
        max_bandwidth: Option<u64>,
    ) -> Result<(), DriverError> {
        let _ = (to, disks, max_bandwidth);
        Err(DriverError::Unsupported("disk migration".into()))
    }

    /// Source: progress of each disk copy started by [`VmHandle::mirror_disks`] ([`ROOT_DISK`]
    /// first, then by disk id); a failed copy stays listed with its error until cancelled.
    async fn disk_mirror_status(&self) -> Result<Vec<DiskMirrorStatus>, DriverError> {
        Err(DriverError::Unsupported("disk migration".into()))
    }

    /// Source: abandons the disk copies (and the memory migration, if one runs) and lets go of
    /// the destination; the VM runs on here on its own disks. Nothing to cancel is not an error.
    async fn cancel_disk_mirror(&self) -> Result<(), DriverError> {
        Err(DriverError::Unsupported("disk migration".into()))
    }

    /// Path of the serial console's history file, where the driver keeps one.
    fn console_log(&self) -> Option<PathBuf> {
        None
    }

    /// Path of a Unix socket that carries the interactive serial console, where there is one.
    fn console_socket(&self) -> Option<PathBuf> {
        None
    }
}

/// A shared VM handle.
pub type DynVmHandle = Arc<dyn VmHandle>;

/// A hypervisor backend on one host.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// Which backend this is.
    fn kind(&self) -> HypervisorKind;

    /// Probes the host: whether the backend works, its version, accelerator and capabilities.
    /// A missing hypervisor is reported here, never a panic.
    async fn probe(&self) -> HypervisorInfo;

    /// Launches a VM and returns once the hypervisor runs it (not once the guest has booted).
    async fn launch(&self, spec: &VmLaunch) -> Result<DynVmHandle, DriverError>;

    /// Re-attaches to a VM whose hypervisor process outlived the agent; `None` if it is not running.
    async fn attach(&self, id: VmId) -> Result<Option<DynVmHandle>, DriverError>;

    /// VMs whose hypervisor processes are running on this host (for re-attach and orphan checks).
    async fn list_running(&self) -> Result<Vec<VmId>, DriverError>;

    /// VMs that left anything on this host, running or not (run directories, overlays): what
    /// [`Driver::cleanup`] would remove.
    async fn list_present(&self) -> Result<Vec<VmId>, DriverError> {
        self.list_running().await
    }

    /// Removes what a stopped VM left on the host (run directory, overlays). Idempotent.
    async fn cleanup(&self, id: VmId) -> Result<(), DriverError>;
}

/// A shared driver.
pub type DynDriver = Arc<dyn Driver>;
