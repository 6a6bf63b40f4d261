//! Migrating a VM's local disks on QEMU, the source side: one `blockdev-mirror` job per disk
//! into an NBD client node (`blockdev-add` driver `nbd`) connected to the destination's export
//! (`disk_export.rs`), their progress (`query-block-jobs`), abandoning them, and the step that
//! finishes them at the switch-over.
//!
//! The protocol, and which side does what:
//! 1. Destination: launched incoming (its root overlay fresh, over the same base image), then
//!    `export_disks`: an NBD server and one writable export per disk, named by the disk id.
//! 2. Source: `mirror_disks`: the root overlay with `sync: top` (only what the guest changed: the
//!    base image is on both hosts), data disks with `sync: full`. A job is `ready` once the
//!    destination holds the whole disk; from then on it keeps copying new guest writes.
//! 3. Source: `migrate`, refused until every job is ready. With mirrors running it turns on
//!    QEMU's `pause-before-switchover`: once memory has converged QEMU stops the vCPUs and waits
//!    in `pre-switchover` with the disks still active. The driver then finishes every job
//!    (`block-job-cancel` of a ready mirror is QEMU's "complete without pivot": it copies what is
//!    still dirty first, so the destination is exact), deletes the NBD client nodes and lets the
//!    migration go on (`migrate-continue`). Only then does the destination get the device state
//!    and run the guest, so it never runs on a disk that misses a write. If a job has failed by
//!    then, the driver cancels the migration instead and the guest runs on here.
//!    Two callers run that step, serialised by the handle's switch-over lock: a task woken by
//!    QEMU's `MIGRATION` event (the `events` capability; with a 100 ms poll behind it), so the
//!    paused guest waits neither for the caller's next poll nor for a polling interval, and
//!    `migration_status` when it sees `pre-switchover` (so a re-attached handle, whose task died
//!    with the old agent, still gets there).
//! 4. Destination: `unexport_disks` once its migration has completed. (QEMU logs a harmless
//!    permission conflict when the guest starts while the exports still exist: the device then
//!    keeps sharing write access until the process ends.)
//!
//! Abandoning: the source's `cancel_disk_mirror` cancels the memory migration first (a
//! switch-over must never happen without the disks), then the jobs, then the NBD client nodes;
//! the caller kills the destination. Jobs are named `mirror-<disk id>` and created with
//! `auto-dismiss: false`, so a failed job stays listed with its error until it is cleared.
//!
//! With migration TLS (`tls.rs`) the NBD client nodes connect over TLS with the source's
//! credentials and check that the destination's certificate names the destination host.

use super::cmdline::{self, ROOT_NODE};
use super::handle::{QemuVm, next_event};
use super::qmp::Qmp;
use super::tls::ClientTls;
use crate::{DiskMirrorStatus, DriverError, MigrationTarget, ROOT_DISK};
use serde_json::{Value, json};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;

const JOB_PREFIX: &str = "mirror-";

/// How long jobs may take to wind down after a cancel (a ready job first copies what is dirty).
const JOB_END_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the switch-over task looks for `pre-switchover` when no event of QEMU's comes
/// first (the `MIGRATION` event normally wakes it at once).
const SWITCHOVER_POLL: Duration = Duration::from_millis(100);

/// The step for the jobs' end at the switch-over when no event comes first (the guest is
/// paused meanwhile).
const JOB_END_POLL: Duration = Duration::from_millis(20);

/// The mirror job of a disk.
fn job_id(disk: &str) -> String {
    format!("{JOB_PREFIX}{disk}")
}

/// The block node that holds a disk on both sides (the format node the guest's device uses).
pub(super) fn source_node(disk: &str) -> String {
    if disk == ROOT_DISK {
        ROOT_NODE.to_string()
    } else {
        cmdline::disk_node(disk)
    }
}

/// Disk ids become QEMU job and export ids: letters, digits, `-`, `_`, `.` only, no repeats,
/// and distinct QEMU node names (those keep 24 characters of the id).
pub(super) fn check_disk_ids(disks: &[String]) -> Result<(), DriverError> {
    if disks.is_empty() {
        return Err(DriverError::Invalid("no disks given".into()));
    }
    for (i, d) in disks.iter().enumerate() {
        let ok = !d.is_empty()
            && d.len() <= 64
            && d.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(DriverError::Invalid(format!(
                "bad disk id {d:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if disks[..i]
            .iter()
            .any(|e| cmdline::mirror_target_node(e) == cmdline::mirror_target_node(d))
        {
            return Err(DriverError::Invalid(format!(
                "disk {d} is given twice (or its id is too close to another's)"
            )));
        }
    }
    Ok(())
}

/// One of our mirror jobs as `query-block-jobs` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Job {
    /// QEMU's job status: `running`, `ready`, `standby`, `concluded`, ...
    status: String,
    public: DiskMirrorStatus,
}

impl Job {
    /// Ended without an error: a ready job finished by `block-job-cancel`.
    fn completed(&self) -> bool {
        self.status == "concluded" && self.public.error.is_none()
    }

    /// Still copying or in sync (`standby`: paused by QEMU while the vCPUs stop).
    fn ready(&self) -> bool {
        self.public.ready && self.public.error.is_none()
    }
}

/// Our mirror jobs in a `query-block-jobs` reply: the root disk first, then by disk id.
fn parse_jobs(q: &Value) -> Vec<Job> {
    let mut jobs: Vec<Job> = q
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["type"] == "mirror")
        .filter_map(|j| {
            let disk = j["device"].as_str()?.strip_prefix(JOB_PREFIX)?;
            Some(Job {
                status: j["status"].as_str().unwrap_or("").to_string(),
                public: DiskMirrorStatus {
                    disk: disk.to_string(),
                    done_bytes: j["offset"].as_u64().unwrap_or(0),
                    total_bytes: j["len"].as_u64().unwrap_or(0),
                    ready: j["ready"].as_bool().unwrap_or(false),
                    error: j["error"].as_str().map(str::to_string),
                },
            })
        })
        .collect();
    jobs.sort_by(|a, b| {
        (a.public.disk != ROOT_DISK, &a.public.disk)
            .cmp(&(b.public.disk != ROOT_DISK, &b.public.disk))
    });
    jobs
}

async fn jobs(qmp: &Qmp) -> Result<Vec<Job>, DriverError> {
    Ok(parse_jobs(&qmp.execute("query-block-jobs", None).await?))
}

/// Names of the NBD client nodes a disk migration added.
async fn target_nodes(qmp: &Qmp) -> Result<Vec<String>, DriverError> {
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["drv"] == "nbd")
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("mig-"))
        .map(str::to_string)
        .collect())
}

/// Waits until none of our jobs is still running, then dismisses them all. Returns the errors
/// of those that failed.
async fn end_jobs(
    qmp: &Qmp,
    events: &mut watch::Receiver<u64>,
) -> Result<Vec<String>, DriverError> {
    let deadline = tokio::time::Instant::now() + JOB_END_TIMEOUT;
    loop {
        events.mark_unchanged();
        let js = jobs(qmp).await?;
        if js.iter().all(|j| j.status == "concluded") {
            let mut failed = Vec::new();
            for j in js {
                if let Some(e) = &j.public.error {
                    failed.push(format!("disk {}: {e}", j.public.disk));
                }
                qmp.execute("job-dismiss", Some(json!({ "id": job_id(&j.public.disk) })))
                    .await?;
            }
            return Ok(failed);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DriverError::Hypervisor(format!(
                "disk copies did not end within {} s: {js:?}",
                JOB_END_TIMEOUT.as_secs()
            )));
        }
        next_event(events, JOB_END_POLL).await;
    }
}

async fn delete_target_nodes(qmp: &Qmp) -> Result<(), DriverError> {
    for node in target_nodes(qmp).await? {
        qmp.execute("blockdev-del", Some(json!({ "node-name": node })))
            .await?;
    }
    Ok(())
}

/// The lock around the switch-over step, holding why the driver refused the latest switch-over
/// (QEMU itself reports such a migration as failed, without a reason).
pub(super) type SwitchLock = Arc<tokio::sync::Mutex<Option<String>>>;

/// The switch-over step (see the module header): on a source paused in `pre-switchover`,
/// finishes the disk copies and continues the migration, or cancels it if a copy failed (and
/// says why in `refused`). Anything else: nothing to do. Idempotent; the caller holds the
/// switch-over lock, whose content `refused` is.
pub(super) async fn switch_over(
    qmp: &Qmp,
    events: &mut watch::Receiver<u64>,
    refused: &mut Option<String>,
) -> Result<(), DriverError> {
    let m = qmp.execute("query-migrate", None).await?;
    if m["status"] != "pre-switchover" {
        return Ok(());
    }
    let js = jobs(qmp).await?;
    // `completed`: a step that was cut short after finishing this one (an agent restart).
    let broken: Vec<String> = js
        .iter()
        .filter(|j| !j.ready() && !j.completed())
        .map(|j| {
            format!(
                "disk {}: {}",
                j.public.disk,
                j.public.error.as_deref().unwrap_or(&j.status)
            )
        })
        .collect();
    if !broken.is_empty() {
        return refuse(qmp, refused, broken).await;
    }
    for j in js.iter().filter(|j| j.ready()) {
        qmp.execute(
            "block-job-cancel",
            Some(json!({ "device": job_id(&j.public.disk), "force": false })),
        )
        .await?;
    }
    let failed = end_jobs(qmp, events).await?;
    if !failed.is_empty() {
        return refuse(qmp, refused, failed).await;
    }
    delete_target_nodes(qmp).await?;
    match qmp
        .execute(
            "migrate-continue",
            Some(json!({ "state": "pre-switchover" })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => {
            // `migrate-continue` returns before QEMU leaves `pre-switchover`: a second caller
            // (the switch-over task and a status poll) may see that state once more and get
            // here after the first one's continue took effect. Only a migration still waiting
            // is an error.
            let now = qmp.execute("query-migrate", None).await?;
            if now["status"] == "pre-switchover" {
                Err(e)
            } else {
                Ok(())
            }
        }
    }
}

/// Cancels a migration whose disks cannot follow (the guest runs on here), remembering why.
async fn refuse(
    qmp: &Qmp,
    refused: &mut Option<String>,
    broken: Vec<String>,
) -> Result<(), DriverError> {
    let why = format!(
        "cancelled at the switch-over: the disk copy failed ({})",
        broken.join("; ")
    );
    tracing::warn!(reason = %why, "disk migration");
    *refused = Some(why);
    qmp.execute("migrate_cancel", None).await.map(drop)
}

/// The task that runs [`switch_over`] as soon as the migration reaches `pre-switchover`. Ends
/// with the migration, or when the handle (and so the QMP session) is dropped.
pub(super) fn spawn_switchover_task(
    qmp: Weak<Qmp>,
    lock: SwitchLock,
    mut events: watch::Receiver<u64>,
) {
    tokio::spawn(async move {
        loop {
            next_event(&mut events, SWITCHOVER_POLL).await;
            events.mark_unchanged();
            let Some(qmp) = qmp.upgrade() else { return };
            let status = match qmp.execute("query-migrate", None).await {
                Ok(m) => m["status"].as_str().unwrap_or("none").to_string(),
                Err(_) => return,
            };
            match status.as_str() {
                "pre-switchover" => {
                    let mut refused = lock.lock().await;
                    if let Err(e) = switch_over(&qmp, &mut events, &mut refused).await {
                        tracing::warn!(error = %e, "disk migration switch-over step failed");
                    }
                }
                "completed" | "failed" | "cancelled" | "none" => return,
                _ => {}
            }
        }
    });
}

impl QemuVm {
    pub(super) async fn start_mirrors(
        &self,
        to: &MigrationTarget,
        disks: &[String],
        max_bandwidth: Option<u64>,
    ) -> Result<(), DriverError> {
        check_disk_ids(disks)?;
        let tls = match to {
            MigrationTarget::Unix(_) => None,
            _ => self.client_tls(to).await?,
        };
        if max_bandwidth == Some(0) {
            return Err(DriverError::Invalid(
                "a bandwidth limit of 0 would never finish".into(),
            ));
        }
        let status = self.run_status().await?;
        if status == "inmigrate" || status == "postmigrate" {
            return Err(DriverError::Invalid(format!(
                "the VM cannot copy its disks away from here (QEMU state {status})"
            )));
        }
        let _held = self.switch_lock().lock().await;
        let qmp = self.qmp_session();
        let existing = jobs(qmp).await?;
        for disk in disks {
            match existing.iter().find(|j| &j.public.disk == disk) {
                // Already copying (a retried call): leave it.
                Some(j) if j.status != "concluded" => continue,
                Some(_) => {
                    qmp.execute("job-dismiss", Some(json!({ "id": job_id(disk) })))
                        .await?;
                }
                None => {}
            }
            if let Err(e) = self
                .start_mirror(qmp, to.endpoint(), tls.as_ref(), disk, max_bandwidth)
                .await
            {
                // All or nothing: a partial set would make `migrate` move some disks only.
                drop(_held);
                let _ = self.abandon_mirrors().await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn start_mirror(
        &self,
        qmp: &Qmp,
        to: crate::Endpoint<'_>,
        tls: Option<&ClientTls>,
        disk: &str,
        max_bandwidth: Option<u64>,
    ) -> Result<(), DriverError> {
        let target = cmdline::mirror_target_node(disk);
        if target_nodes(qmp).await?.contains(&target) {
            // Left by an earlier attempt, perhaps to another destination.
            qmp.execute("blockdev-del", Some(json!({ "node-name": target })))
                .await?;
        }
        let mut node = json!({
            "driver": "nbd",
            "node-name": target,
            "server": super::migrate::socket_address(to),
            "export": disk,
        });
        if let Some(t) = tls {
            node["tls-creds"] = t.creds.into();
            node["tls-hostname"] = t.hostname.clone().into();
        }
        qmp.execute("blockdev-add", Some(node)).await.map_err(|e| {
            DriverError::Hypervisor(format!("disk {disk}: cannot reach the destination: {e}"))
        })?;
        let r = qmp
            .execute(
                "blockdev-mirror",
                Some(json!({
                    "job-id": job_id(disk),
                    "device": source_node(disk),
                    "target": target,
                    // The base image is on both hosts: only the overlay's own data moves.
                    "sync": if disk == ROOT_DISK { "top" } else { "full" },
                    "speed": max_bandwidth.unwrap_or(0),
                    "auto-dismiss": false,
                })),
            )
            .await;
        if let Err(e) = r {
            let _ = qmp
                .execute("blockdev-del", Some(json!({ "node-name": target })))
                .await;
            return Err(DriverError::Hypervisor(format!("disk {disk}: {e}")));
        }
        Ok(())
    }

    pub(super) async fn mirror_status(&self) -> Result<Vec<DiskMirrorStatus>, DriverError> {
        Ok(jobs(self.qmp_session())
            .await?
            .into_iter()
            .map(|j| j.public)
            .collect())
    }

    /// The disks whose copies run, once every one of them is ready; an error naming the first
    /// that is not. Empty: a migration without disk copies. A root overlay is always local (it
    /// lives in the run directory), so a migration that does not copy it is refused: the
    /// destination's fresh overlay would show the guest its base image without its writes.
    /// Whether data disks are local or shared is the caller's knowledge, not the driver's.
    pub(super) async fn mirrors_ready(&self) -> Result<Vec<String>, DriverError> {
        let qmp = self.qmp_session();
        let js = jobs(qmp).await?;
        if !js.iter().any(|j| j.public.disk == ROOT_DISK) {
            let nodes = qmp
                .execute("query-named-block-nodes", Some(json!({ "flat": true })))
                .await?;
            if nodes
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n["node-name"] == ROOT_NODE))
            {
                return Err(DriverError::Invalid(
                    "the VM's disk overlay is local to this host: copy it with the disk \
                     migration (mirror_disks) first"
                        .into(),
                ));
            }
        }
        if let Some(j) = js.iter().find(|j| !j.ready()) {
            return Err(DriverError::Invalid(format!(
                "disk {} is not in sync with the destination yet ({}, {} of {} bytes): \
                 the memory migration starts once every disk copy is ready",
                j.public.disk,
                j.public.error.as_deref().unwrap_or(&j.status),
                j.public.done_bytes,
                j.public.total_bytes
            )));
        }
        Ok(js.into_iter().map(|j| j.public.disk).collect())
    }

    /// The disk copies that failed, with QEMU's reasons.
    pub(super) async fn mirror_failures(&self) -> Result<Vec<String>, DriverError> {
        Ok(jobs(self.qmp_session())
            .await?
            .into_iter()
            .filter_map(|j| Some(format!("disk {}: {}", j.public.disk, j.public.error?)))
            .collect())
    }

    pub(super) async fn abandon_mirrors(&self) -> Result<(), DriverError> {
        let qmp = self.qmp_session();
        let m = qmp.execute("query-migrate", None).await?;
        if matches!(
            m["status"].as_str(),
            Some("setup" | "active" | "pre-switchover" | "device" | "cancelling")
        ) {
            self.cancel().await?;
        }
        let _held = self.switch_lock().lock().await;
        for j in jobs(qmp).await? {
            if j.status != "concluded" {
                // `force`: a ready mirror would otherwise finish its copy first.
                qmp.execute(
                    "block-job-cancel",
                    Some(json!({ "device": job_id(&j.public.disk), "force": true })),
                )
                .await?;
            }
        }
        end_jobs(qmp, &mut self.migration_events()).await?;
        delete_target_nodes(qmp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_ours_only_root_first_with_progress_and_errors() {
        let q = json!([
            { "type": "mirror", "device": "mirror-vol-b", "status": "running", "ready": false,
              "offset": 10, "len": 100, "io-status": "ok" },
            { "type": "backup", "device": "mirror-other", "status": "running" },
            { "type": "mirror", "device": "someone-elses", "status": "ready", "ready": true },
            { "type": "mirror", "device": "mirror-root", "status": "ready", "ready": true,
              "offset": 5, "len": 5 },
            { "type": "mirror", "device": "mirror-vol-a", "status": "concluded", "ready": false,
              "offset": 1, "len": 100, "error": "Connection reset by peer" },
        ]);
        let js = parse_jobs(&q);
        let disks: Vec<&str> = js.iter().map(|j| j.public.disk.as_str()).collect();
        assert_eq!(disks, ["root", "vol-a", "vol-b"]);
        assert!(js[0].ready() && !js[0].completed());
        assert_eq!((js[0].public.done_bytes, js[0].public.total_bytes), (5, 5));
        assert!(!js[1].ready() && !js[1].completed());
        assert_eq!(
            js[1].public.error.as_deref(),
            Some("Connection reset by peer")
        );
        assert!(!js[2].ready());
        assert_eq!(
            (js[2].public.done_bytes, js[2].public.total_bytes),
            (10, 100)
        );
        let done = parse_jobs(&json!([
            { "type": "mirror", "device": "mirror-root", "status": "concluded", "ready": false },
        ]));
        assert!(done[0].completed());
        assert!(parse_jobs(&json!({})).is_empty());
    }

    #[test]
    fn disk_ids_must_be_safe_distinct_and_present() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_disk_ids(&ids(&["root", "4f0c6a8e-1b2c-4d5e-8f90-123456789abc"])).is_ok());
        assert!(check_disk_ids(&[]).is_err());
        for bad in [&["a b"][..], &["x,y"], &[""], &["a", "a"], &["a\"b"]] {
            assert!(
                matches!(check_disk_ids(&ids(bad)), Err(DriverError::Invalid(_))),
                "{bad:?}"
            );
        }
        // Equal in the 24 characters a QEMU node name keeps.
        let long_a = format!("{}a", "x".repeat(30));
        let long_b = format!("{}b", "x".repeat(30));
        assert!(check_disk_ids(&[long_a, long_b]).is_err());
        assert_eq!(source_node(ROOT_DISK), ROOT_NODE);
        assert_eq!(source_node("vol-1"), cmdline::disk_node("vol-1"));
    }
}
