//! Live migration of a running VM to another host: the request, the state a VM carries while it
//! moves (`VmStatus.migration`), what the two agents report, and the progress an operation shows.
//!
//! The protocol (see `docs/architecture.md`, "Live migration"): the control plane checks and
//! reserves room on the target and records the migration on the VM (`preparing`); the target
//! agent launches an incoming hypervisor and reports where it listens (`transferring`); the
//! source agent sends the VM there and reports progress, then the switch-over or the abort. The
//! control plane's record decides where the VM runs: it moves the VM to the target only on
//! evidence that the guest runs there (the source's "completed" or the target's "arrived"), and
//! unwinds the target only on the source's word that the guest still runs at home.

use crate::volume::VolumeFormat;
use crate::{Name, OperationId, VmId, VolumeId};
use serde::{Deserialize, Serialize};

/// The default downtime limit (QEMU's own).
pub const DEFAULT_DOWNTIME_LIMIT_MS: u64 = 300;
/// The longest downtime limit accepted: anything longer is a mistake, not a wish.
pub const MAX_DOWNTIME_LIMIT_MS: u64 = 60_000;
/// The smallest bandwidth limit accepted (1 MiB/s): below it a guest of any size never moves.
pub const MIN_BANDWIDTH: u64 = 1 << 20;

/// Body of `POST /api/v1/vms/{name}/migrate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmMigrate {
    /// The host to move to (default: the scheduler picks one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The longest the guest may be paused for the switch-over, in ms (default 300, 1–60000).
    /// A ceiling: the migration first aims at 30 ms (or this, if lower) and doubles its aim
    /// every two passes over memory that do not converge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_limit_ms: Option<i64>,
    /// Bytes per second the migration may use (default: unlimited; at least 1 MiB/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<i64>,
    /// Slow the guest's vCPUs down when pre-copy does not converge (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Switch to post-copy when pre-copy does not converge. The guest then runs on the target
    /// while its memory is still on the source: if either host fails, the VM is lost. Needs
    /// `accept_post_copy_risk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_copy: Option<bool>,
    /// The explicit opt-in to post-copy's risk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_post_copy_risk: Option<bool>,
    /// Check and plan only: nothing moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// The knobs of one migration, as validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationSettings {
    /// Downtime limit in ms.
    pub downtime_limit_ms: u64,
    /// Bytes per second, `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Auto-converge.
    pub auto_converge: bool,
    /// Switch to post-copy after the first pass (opted in, with its risk).
    #[serde(default)]
    pub post_copy: bool,
}

/// What the pre-flight check found and what would move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationPlan {
    /// The VM.
    pub vm: Name,
    /// Its project.
    pub project: Name,
    /// The host it runs on.
    pub from: Name,
    /// The host it would move to.
    pub to: Name,
    /// Why that host (the scheduler's explanation, or "asked for").
    pub reason: String,
    /// Guest memory to copy.
    pub memory_bytes: u64,
    /// The knobs.
    pub settings: MigrationSettings,
    /// Volumes the target opens where they are (shared pools).
    #[serde(default)]
    pub shared_volumes: Vec<Name>,
    /// Local disks copied to the target first (`root`: the overlay of a disk image).
    #[serde(default)]
    pub local_disks: Vec<String>,
    /// Networks the target carries the VM's NICs on.
    #[serde(default)]
    pub networks: Vec<Name>,
    /// What the check verified, for people.
    pub checks: Vec<String>,
}

/// Answer of `POST /api/v1/vms/{name}/migrate`: the plan, and unless it was a dry run, the VM
/// and the operation that moves it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationAccepted {
    /// The plan.
    pub plan: MigrationPlan,
    /// The VM as recorded with its migration (absent for a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<crate::vm::Vm>,
    /// The migration's operation (absent for a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<crate::operation::Operation>,
}

/// Where a migration is, as the control plane records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStep {
    /// The target's agent is launching the incoming hypervisor.
    Preparing,
    /// The source's agent is sending the VM to the target.
    Transferring,
    /// A cancel was asked for; the source's agent stops the transfer.
    Cancelling,
}

/// A migration in flight, on the VM's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmMigration {
    /// The operation that moves it.
    pub operation: OperationId,
    /// Where it runs.
    pub from: Name,
    /// Where it goes (its room there is reserved).
    pub to: Name,
    /// The step.
    pub step: MigrationStep,
    /// The knobs.
    pub settings: MigrationSettings,
    /// Where the target's hypervisor listens (`ip:port`), once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Local disks copied to the target before the memory (`root`: the overlay of a disk
    /// image); empty when every disk is on shared storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<String>,
    /// Volumes on the source's local pools: the target creates an empty file for each (a new
    /// name, so nothing left of an earlier stay there is reused), the copy fills it, and at the
    /// switch-over the volume lives there; the source's file is discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<MigratingVolume>,
    /// Where the target serves those disks for the copy (`ip:port`), once it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_destination: Option<String>,
    /// Why it is being cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The host drain that asked for it (the VM then remembers its home, for
    /// `uncordon --move-back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<OperationId>,
    /// When it was asked for.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// A volume on the source's local storage that moves with the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigratingVolume {
    /// The volume (its id names the disk in the copy).
    pub id: VolumeId,
    /// Its name.
    pub volume: Name,
    /// Its pool (a pool of that name on the target receives it).
    pub pool: String,
    /// Its file on the source.
    pub file: String,
    /// Its file on the target.
    pub target_file: String,
    /// Format.
    pub format: VolumeFormat,
    /// Virtual size.
    pub size_bytes: u64,
}

/// The file name a volume gets on a migration's target: the source's, marked with the
/// migration (an earlier mark replaced), the extension (which says the format) kept.
pub fn migrated_file(file: &str, op: &OperationId) -> String {
    let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
    let stem = match stem.rsplit_once("-m") {
        Some((base, mark)) if mark.len() == 8 && mark.chars().all(|c| c.is_ascii_hexdigit()) => {
            base
        }
        _ => stem,
    };
    let mark: String = op
        .to_string()
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect();
    if ext.is_empty() {
        format!("{stem}-m{mark}")
    } else {
        format!("{stem}-m{mark}.{ext}")
    }
}

/// How far a transfer has come, as the source's hypervisor reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MigrationProgress {
    /// The hypervisor's phase (`setup`, `active`, `device`, `completed`, ...).
    pub phase: String,
    /// Guest memory to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Bytes sent so far (pages sent again after the guest wrote them count again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    /// Bytes still to send in this pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_bytes: Option<u64>,
    /// How fast the guest dirties memory, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate: Option<u64>,
    /// The downtime expected if it switched over now, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_downtime_ms: Option<u64>,
    /// The measured downtime, once completed, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Time since the transfer started (its whole length once completed), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Local disk bytes to copy (grows while the guest writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
    /// Local disk bytes copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_done_bytes: Option<u64>,
}

impl MigrationProgress {
    /// Percent done, where known (a guest that dirties pages can make it go back): local disks
    /// first (the first half when there are any), then memory.
    pub fn percent(&self) -> Option<u8> {
        let disks = match (self.disk_done_bytes, self.disk_total_bytes) {
            (Some(d), Some(t)) if t > 0 => Some((d.min(t) * 100 / t) as u8),
            _ => None,
        };
        let memory = self.memory_percent();
        match (disks, memory) {
            (Some(d), None) => Some((d / 2).min(49)),
            (Some(_), Some(m)) => Some(50 + m / 2),
            (None, m) => m,
        }
    }

    fn memory_percent(&self) -> Option<u8> {
        let (total, remaining) = (self.total_bytes?, self.remaining_bytes?);
        if total == 0 {
            return None;
        }
        let done = total.saturating_sub(remaining);
        Some(((done.saturating_mul(100)) / total).min(99) as u8)
    }
}

/// What an agent tells the control plane about a migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MigrationEvent {
    /// Target: the incoming hypervisor listens here.
    Listening {
        /// `ip:port`.
        address: String,
        /// Where it serves the VM's local disks for the copy (`ip:port`), if it has any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disk_address: Option<String>,
    },
    /// Target: the incoming hypervisor could not be launched, or ended before the guest
    /// arrived.
    DestinationFailed {
        /// Why.
        reason: String,
    },
    /// Source: how far the transfer has come.
    Progress {
        /// The figures.
        progress: MigrationProgress,
    },
    /// Source: the hypervisor completed the transfer; the guest is paused here for good.
    Completed {
        /// The last figures (downtime, total time).
        progress: MigrationProgress,
    },
    /// Target: the guest runs here.
    Arrived,
    /// Source: the transfer failed or was cancelled, and the guest still runs here.
    Aborted {
        /// Why.
        reason: String,
        /// The source stopped the transfer of its own accord (it stalled, or pre-copy did not
        /// converge): the target's failure that follows is a consequence, not the cause.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        gave_up: bool,
    },
}

/// One migration report of an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationReport {
    /// The VM.
    pub vm: VmId,
    /// Its project.
    pub project: Name,
    /// Its name.
    pub name: Name,
    /// The migration's operation (a report about an older migration is ignored).
    pub operation: OperationId,
    /// What happened.
    pub event: MigrationEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrated_files_keep_their_extension_and_one_mark() {
        let op = OperationId::new();
        let once = migrated_file("vol-1234.qcow2", &op);
        assert!(
            once.starts_with("vol-1234-m") && once.ends_with(".qcow2"),
            "{once}"
        );
        let other = OperationId::new();
        let twice = migrated_file(&once, &other);
        assert!(
            twice.starts_with("vol-1234-m") && twice.ends_with(".qcow2"),
            "{twice}"
        );
        assert_eq!(twice.len(), once.len());
        assert!(migrated_file("disk.raw", &op).ends_with(".raw"));
    }

    #[test]
    fn percent_is_sent_share_of_memory_and_never_claims_done() {
        let p = MigrationProgress {
            total_bytes: Some(1000),
            remaining_bytes: Some(250),
            ..Default::default()
        };
        assert_eq!(p.percent(), Some(75));
        let done = MigrationProgress {
            total_bytes: Some(1000),
            remaining_bytes: Some(0),
            ..Default::default()
        };
        assert_eq!(done.percent(), Some(99));
        assert_eq!(MigrationProgress::default().percent(), None);
    }
}
