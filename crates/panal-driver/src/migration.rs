//! Live migration types shared by every backend: where a destination listens, where a source
//! sends, the knobs of one migration and its progress, and the progress of copying a VM's local
//! disks along with it. Only the driver-level primitive: which host and the persisted multi-step
//! operation live above the driver; the channel's security is the caller's (a local socket that
//! the caller carries to the other host over its own authenticated channel) or the backend's
//! configuration (QEMU: `QemuConfig::migration_tls` on TCP).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a destination VM receives the migration stream, or (for
/// [`crate::VmHandle::export_disks`]) serves its disks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Listen on this TCP address (QEMU's TLS if configured, else plain TCP).
    Tcp(SocketAddr),
    /// Listen on this Unix socket: the caller carries each connection to the source's host
    /// (and secures it), so the hypervisor does no cryptography of its own.
    Unix(PathBuf),
}

/// Where a source VM sends the migration stream (or, for [`crate::VmHandle::mirror_disks`], its
/// disks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationTarget {
    /// The TCP address a destination launched with [`Incoming::Tcp`] listens on, its host not
    /// named: only usable without migration TLS (nothing to check the peer's certificate against).
    Tcp(SocketAddr),
    /// The same on the host named `host`: with migration TLS, the destination must present a
    /// certificate for this name from the same CA, or the migration fails before any guest
    /// state leaves.
    Host {
        /// Where the destination listens.
        addr: SocketAddr,
        /// The destination host's name, as its certificate carries it.
        host: String,
    },
    /// A Unix socket on this host whose listener carries each connection to the destination
    /// (the caller's tunnel; see [`Incoming::Unix`]).
    Unix(PathBuf),
}

/// A socket address either side of a migration uses, as one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(&'a Path),
}

impl Incoming {
    /// Where it listens.
    pub fn endpoint(&self) -> Endpoint<'_> {
        match self {
            Incoming::Tcp(a) => Endpoint::Tcp(*a),
            Incoming::Unix(p) => Endpoint::Unix(p),
        }
    }
}

impl MigrationTarget {
    /// Where the stream goes.
    pub fn endpoint(&self) -> Endpoint<'_> {
        match self {
            MigrationTarget::Tcp(a) | MigrationTarget::Host { addr: a, .. } => Endpoint::Tcp(*a),
            MigrationTarget::Unix(p) => Endpoint::Unix(p),
        }
    }

    /// The destination host's name, if given.
    pub fn host(&self) -> Option<&str> {
        match self {
            MigrationTarget::Tcp(_) | MigrationTarget::Unix(_) => None,
            MigrationTarget::Host { host, .. } => Some(host),
        }
    }
}

/// The knobs of one migration. Every call sets all of them, so a value from an earlier attempt
/// (e.g. a tiny bandwidth limit) never carries over to the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationParams {
    /// The longest the guest may be paused for the final switch-over.
    pub downtime_limit: Duration,
    /// Bytes per second the stream may use; `None`: unthrottled.
    pub max_bandwidth: Option<u64>,
    /// Slow the guest's vCPUs down when pre-copy does not converge.
    pub auto_converge: bool,
    /// Allow a switch to post-copy ([`crate::VmHandle::start_post_copy`]); the destination
    /// must have been launched with [`crate::VmLaunch::post_copy`].
    pub post_copy: bool,
}

impl MigrationParams {
    /// The longest downtime limit accepted (QEMU's own ceiling is 2000 s; anything near it is a
    /// mistake, not a wish).
    pub const MAX_DOWNTIME_LIMIT: Duration = Duration::from_secs(60);
}

impl Default for MigrationParams {
    /// QEMU's own default downtime limit (300 ms), unthrottled, no auto-converge.
    fn default() -> Self {
        MigrationParams {
            downtime_limit: Duration::from_millis(300),
            max_bandwidth: None,
            auto_converge: false,
            post_copy: false,
        }
    }
}

/// The phase of a migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationPhase {
    /// No migration has been started (or is incoming) on this VM.
    None,
    /// Connecting and setting up.
    Setup,
    /// Copying memory while the guest runs.
    Active,
    /// The guest is paused for the final copy of state.
    Device,
    /// Done: the destination has the guest.
    Completed,
    /// Failed; the guest still runs here. The text is the hypervisor's reason.
    Failed(String),
    /// A cancel is in progress.
    Cancelling,
    /// Cancelled; the guest still runs here.
    Cancelled,
    /// Another hypervisor-specific phase (e.g. post-copy), by its name.
    Other(String),
}

impl MigrationPhase {
    /// Whether the migration has ended, one way or another.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            MigrationPhase::None
                | MigrationPhase::Completed
                | MigrationPhase::Failed(_)
                | MigrationPhase::Cancelled
        )
    }
}

/// Progress of a migration, as the hypervisor reports it. Byte counts are of guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationStatus {
    /// The phase.
    pub phase: MigrationPhase,
    /// Guest memory to move.
    pub total_bytes: Option<u64>,
    /// Bytes sent so far (pages re-sent after being dirtied count again).
    pub transferred_bytes: Option<u64>,
    /// Bytes still to send in this pass.
    pub remaining_bytes: Option<u64>,
    /// How fast the guest dirties memory, in bytes per second (once pre-copy has measured it).
    pub dirty_rate: Option<u64>,
    /// The downtime the hypervisor expects if it switched over now.
    pub expected_downtime: Option<Duration>,
    /// The measured downtime of a completed migration.
    pub downtime: Option<Duration>,
    /// Time since the migration started (its whole duration once completed).
    pub total_time: Option<Duration>,
    /// How much auto-converge slows the guest's vCPUs now, in percent (once it has started).
    pub cpu_throttle_percent: Option<u64>,
}

/// The id that names a VM's boot-image overlay ([`crate::BootSource::Disk`]) among its disks
/// in a disk migration; data disks go by their own ids ([`crate::DataDisk::id`]).
pub const ROOT_DISK: &str = "root";

/// Progress of copying one local disk to a migration destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskMirrorStatus {
    /// The disk: [`ROOT_DISK`] or a data disk's id.
    pub disk: String,
    /// Bytes copied so far.
    pub done_bytes: u64,
    /// Bytes to copy in all; grows while the guest writes, so `done_bytes / total_bytes` is the
    /// progress to show.
    pub total_bytes: u64,
    /// The destination holds the whole disk and every new guest write is copied too. The memory
    /// migration may start only once every disk is ready (`migrate` refuses before).
    pub ready: bool,
    /// The copy failed (the hypervisor's reason); the disk cannot move in this attempt.
    pub error: Option<String>,
}
