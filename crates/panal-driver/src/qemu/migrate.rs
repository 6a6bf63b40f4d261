//! Live migration on QEMU, over QMP: the destination is launched with `-incoming defer` and
//! told where to listen (`migrate-incoming`); the source gets its capabilities and parameters
//! and then `migrate`; progress is `query-migrate`; cancel is `migrate_cancel`.
//!
//! What each side is left as: a completed source sits in QEMU's `postmigrate` state (paused; it
//! refuses to resume, see `handle.rs`, and `shutdown` makes QEMU quit without running the guest);
//! the destination runs the guest by itself once the state has arrived (no `-S`), unless the source
//! guest was paused, which QEMU carries over. A failed or cancelled migration leaves the source
//! running as before, and the destination QEMU exits by itself (QEMU ends an incoming migration
//! that fails), which its exit watch reports as a crash: the caller cleans it up either way.
//!
//! With local disks being copied (`disk_mirror.rs`), `migrate` refuses until every copy is
//! ready and turns on `pause-before-switchover`, so that the copies are finished while the guest
//! is paused and before the destination may run it; without, that capability is turned off, so
//! nothing carries over from an earlier attempt.
//!
//! Over TCP with migration TLS configured (`tls.rs`), both sides set `tls-creds` before they
//! listen or send, and the source `tls-hostname` (the destination host's name); without (plain
//! TCP, or a Unix socket whose listener is the caller's tunnel) the source sets both empty,
//! again so that nothing carries over.

use super::handle::QemuVm;
use super::tls::Side;
use super::{disk_mirror, downtime_ramp};
use crate::{
    DriverError, Endpoint, Incoming, MigrationParams, MigrationPhase, MigrationStatus,
    MigrationTarget,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// What "unthrottled" is sent as: QEMU has no "no limit" value for `max-bandwidth`, and its
/// default (128 MiB/s) is slower than loopback or a datacentre link.
const UNTHROTTLED: u64 = 1 << 40;

/// How long a cancel may take to wind the migration down.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(30);

/// The failure reason when QEMU gives none.
const NO_REASON: &str = "no reason given";

fn uri(at: Endpoint<'_>) -> String {
    match at {
        // `SocketAddr` prints IPv6 in brackets, which is what QEMU's `tcp:` URI expects.
        Endpoint::Tcp(addr) => format!("tcp:{addr}"),
        Endpoint::Unix(path) => format!("unix:{}", path.display()),
    }
}

/// QMP's (flat) `SocketAddress` for `at`.
pub(super) fn socket_address(at: Endpoint<'_>) -> Value {
    match at {
        Endpoint::Tcp(addr) => json!({
            "type": "inet",
            "host": addr.ip().to_string(),
            "port": addr.port().to_string(),
        }),
        Endpoint::Unix(path) => json!({ "type": "unix", "path": path }),
    }
}

fn validate(p: &MigrationParams) -> Result<(), DriverError> {
    if p.downtime_limit < Duration::from_millis(1) {
        return Err(DriverError::Invalid(
            "the downtime limit must be at least 1 ms".into(),
        ));
    }
    if p.downtime_limit > MigrationParams::MAX_DOWNTIME_LIMIT {
        return Err(DriverError::Invalid(format!(
            "the downtime limit must be at most {} s",
            MigrationParams::MAX_DOWNTIME_LIMIT.as_secs()
        )));
    }
    if p.max_bandwidth == Some(0) {
        return Err(DriverError::Invalid(
            "a bandwidth limit of 0 would never finish".into(),
        ));
    }
    Ok(())
}

fn ms(v: &Value, key: &str) -> Option<Duration> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

/// Maps a `query-migrate` reply.
fn parse_status(q: &Value) -> MigrationStatus {
    let status = q.get("status").and_then(Value::as_str).unwrap_or("none");
    let phase = match status {
        "none" => MigrationPhase::None,
        "setup" => MigrationPhase::Setup,
        "active" => MigrationPhase::Active,
        // QEMU's `device` and `pre-switchover` are both the paused final copy.
        "device" | "pre-switchover" => MigrationPhase::Device,
        "completed" => MigrationPhase::Completed,
        "failed" => MigrationPhase::Failed(
            q.get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or(NO_REASON)
                .to_string(),
        ),
        "cancelling" => MigrationPhase::Cancelling,
        "cancelled" => MigrationPhase::Cancelled,
        other => MigrationPhase::Other(other.to_string()),
    };
    let ram = q.get("ram").cloned().unwrap_or(Value::Null);
    let field = |k: &str| ram.get(k).and_then(Value::as_u64);
    // QEMU reports the dirty rate in pages per second.
    let dirty_rate = field("dirty-pages-rate")
        .zip(field("page-size"))
        .map(|(pages, size)| pages.saturating_mul(size));
    MigrationStatus {
        phase,
        total_bytes: field("total"),
        transferred_bytes: field("transferred"),
        remaining_bytes: field("remaining"),
        dirty_rate,
        expected_downtime: ms(q, "expected-downtime"),
        downtime: ms(q, "downtime"),
        total_time: ms(q, "total-time"),
        cpu_throttle_percent: q.get("cpu-throttle-percentage").and_then(Value::as_u64),
    }
}

impl QemuVm {
    /// On a QEMU started with `-incoming defer`: starts listening for the migration stream.
    pub(super) async fn listen_incoming(&self, incoming: &Incoming) -> Result<(), DriverError> {
        // Before `migrate-incoming`: QEMU takes the channel's parameters when it starts to listen.
        // A Unix socket is the caller's tunnel, which carries its own TLS.
        let creds = match incoming {
            Incoming::Tcp(_) => self.server_tls().await?,
            Incoming::Unix(_) => None,
        };
        if let Some(creds) = creds {
            self.qmp(
                "migrate-set-parameters",
                Some(json!({ "tls-creds": creds })),
            )
            .await?;
        }
        self.confirm_tls(Side::Destination, creds, None, incoming.endpoint())
            .await?;
        self.qmp(
            "migrate-incoming",
            Some(json!({ "uri": uri(incoming.endpoint()) })),
        )
        .await
        .map(drop)
    }

    pub(super) async fn start_migration(
        &self,
        to: &MigrationTarget,
        p: &MigrationParams,
    ) -> Result<(), DriverError> {
        validate(p)?;
        let status = self.run_status().await?;
        if status == "inmigrate" || status == "postmigrate" {
            return Err(DriverError::Invalid(format!(
                "the VM cannot migrate from here (QEMU state {status})"
            )));
        }
        let tls = match to {
            MigrationTarget::Unix(_) => None,
            _ => self.client_tls(to).await?,
        };
        let disks = self.mirrors_ready().await?;
        let first_limit = downtime_ramp::first_limit(p.downtime_limit);
        // A new attempt: an earlier refusal no longer explains anything.
        *self.switch_lock().lock().await = None;
        self.qmp(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [
                { "capability": "auto-converge", "state": p.auto_converge },
                { "capability": "pause-before-switchover", "state": !disks.is_empty() },
                { "capability": "postcopy-ram", "state": p.post_copy },
                // The destination acknowledges that it has loaded the state (and runs the
                // guest) before the source counts the migration completed: a stream cut after
                // the last byte left (a relay dying with data in its buffers) fails the
                // migration and resumes the guest here, instead of leaving it nowhere.
                { "capability": "return-path", "state": true },
                // `MIGRATION` and `MIGRATION_PASS` events: the switch-over starts the moment
                // QEMU pauses for it, and the downtime limit is raised after each pass without
                // polling (`downtime_ramp.rs`).
                { "capability": "events", "state": true },
            ]})),
        )
        .await?;
        self.qmp(
            "migrate-set-parameters",
            Some(json!({
                // Low first, raised while memory does not converge (`downtime_ramp.rs`).
                "downtime-limit": downtime_ramp::millis(first_limit),
                "max-bandwidth": p.max_bandwidth.unwrap_or(UNTHROTTLED),
                // Empty strings: plain TCP, so no TLS setting carries over from an earlier call.
                "tls-creds": tls.as_ref().map_or("", |t| t.creds),
                "tls-hostname": tls.as_ref().map_or("", |t| t.hostname.as_str()),
            })),
        )
        .await?;
        self.confirm_tls(
            Side::Source,
            tls.as_ref().map(|t| t.creds),
            tls.as_ref().map(|t| t.hostname.as_str()),
            to.endpoint(),
        )
        .await?;
        self.qmp("migrate", Some(json!({ "uri": uri(to.endpoint()) })))
            .await?;
        downtime_ramp::spawn(
            Arc::downgrade(self.qmp_session()),
            self.migration_events(),
            first_limit,
            p.downtime_limit,
        );
        if !disks.is_empty() {
            disk_mirror::spawn_switchover_task(
                Arc::downgrade(self.qmp_session()),
                self.switch_lock().clone(),
                self.migration_events(),
            );
        }
        Ok(())
    }

    /// On the destination, before `migrate-incoming`: let the source switch to post-copy.
    pub(super) async fn accept_post_copy(&self) -> Result<(), DriverError> {
        self.qmp(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [
                { "capability": "postcopy-ram", "state": true },
            ]})),
        )
        .await
        .map(drop)
    }

    pub(super) async fn post_copy(&self) -> Result<(), DriverError> {
        self.qmp("migrate-start-postcopy", None).await.map(drop)
    }

    pub(super) async fn query_migration(&self) -> Result<MigrationStatus, DriverError> {
        let q = self.qmp("query-migrate", None).await?;
        let mut q = parse_status(&q);
        if q.phase == MigrationPhase::Device || q.phase.is_finished() {
            let mut refused = self.switch_lock().lock().await;
            if q.phase == MigrationPhase::Device {
                // At `pre-switchover` the switch-over task is normally at it already; after a
                // re-attach it is gone. Either way nothing is left to do once this returns.
                disk_mirror::switch_over(
                    self.qmp_session(),
                    &mut self.migration_events(),
                    &mut refused,
                )
                .await?;
                q = parse_status(&self.qmp("query-migrate", None).await?);
            }
            if let (MigrationPhase::Failed(_) | MigrationPhase::Cancelled, Some(why)) =
                (&q.phase, refused.as_ref())
            {
                q.phase = MigrationPhase::Failed(why.clone());
            } else if q.phase == MigrationPhase::Failed(NO_REASON.into()) {
                // QEMU fails a migration without a word when it cannot flush a broken disk
                // copy's target as it stops the vCPUs: say so.
                let broken = self.mirror_failures().await?;
                if !broken.is_empty() {
                    q.phase = MigrationPhase::Failed(format!(
                        "the disk copy failed ({})",
                        broken.join("; ")
                    ));
                }
            }
        }
        Ok(q)
    }

    pub(super) async fn cancel(&self) -> Result<(), DriverError> {
        self.qmp("migrate_cancel", None).await?;
        // The cancel is asynchronous in QEMU; the caller wants to know the source runs again.
        let deadline = tokio::time::Instant::now() + CANCEL_TIMEOUT;
        loop {
            let s = self.query_migration().await?;
            if s.phase.is_finished() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DriverError::Hypervisor(format!(
                    "the migration did not stop within {} s of the cancel (phase {:?})",
                    CANCEL_TIMEOUT.as_secs(),
                    s.phase
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_migrate_is_mapped_with_dirty_rate_in_bytes() {
        let q = json!({
            "status": "active",
            "expected-downtime": 12,
            "total-time": 350,
            "ram": {
                "total": 268_435_456u64, "transferred": 1000, "remaining": 2000,
                "dirty-pages-rate": 10, "page-size": 4096,
            },
        });
        let s = parse_status(&q);
        assert_eq!(s.phase, MigrationPhase::Active);
        assert_eq!(s.total_bytes, Some(268_435_456));
        assert_eq!(s.remaining_bytes, Some(2000));
        assert_eq!(s.dirty_rate, Some(40960));
        assert_eq!(s.expected_downtime, Some(Duration::from_millis(12)));
        assert_eq!(s.downtime, None);
        let f = parse_status(&json!({ "status": "failed", "error-desc": "Connection refused" }));
        assert_eq!(f.phase, MigrationPhase::Failed("Connection refused".into()));
        assert!(f.phase.is_finished());
        assert_eq!(parse_status(&json!({})).phase, MigrationPhase::None);
    }

    #[test]
    fn absurd_parameters_are_refused() {
        let ok = MigrationParams::default();
        assert!(validate(&ok).is_ok());
        for bad in [
            MigrationParams {
                downtime_limit: Duration::ZERO,
                ..ok.clone()
            },
            MigrationParams {
                downtime_limit: Duration::from_secs(3600),
                ..ok.clone()
            },
            MigrationParams {
                max_bandwidth: Some(0),
                ..ok.clone()
            },
        ] {
            assert!(matches!(validate(&bad), Err(DriverError::Invalid(_))));
        }
    }
}
