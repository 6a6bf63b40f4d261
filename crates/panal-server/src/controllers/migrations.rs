//! The migration watchdog: ends live migrations that their agents cannot end by themselves.
//! Driven from stored state only (each VM's `status.migration` and its hosts' liveness), so a
//! new leader takes over every migration in flight where it was.
//!
//! Once a second, for each migrating VM:
//! - its target lost its lease: the migration is cancelled (before the transfer began it is
//!   unwound at once; during it, the source stops it and reports);
//! - its source lost its lease before the transfer began: unwound (nothing has moved);
//! - the target did not get ready within [`PREPARE_TIMEOUT`]: unwound.
//!
//! A source that dies during the transfer is waited for: the guest may already run on the target
//! (whose "arrived" then switches the VM over), or still on the source, whose agent reports when
//! it is back. Deciding without either would risk running the VM twice or losing it.

use super::RESTART_DELAY;
use crate::app::App;
use crate::keys;
use futures::StreamExt;
use panal_store::WatchEvent;
use panal_types::host::{Host, HostState};
use panal_types::migration::MigrationStep;
use panal_types::vm::Vm;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// How often migrations in flight are checked.
const PASS_EVERY: Duration = Duration::from_secs(1);
/// The longest a target may take to launch its incoming hypervisor.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs until aborted.
pub async fn run(app: App) {
    loop {
        if let Err(e) = watch_once(&app).await {
            tracing::warn!(error = %e, "migration controller restarting");
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

/// The one field of a VM record this controller's watch looks at.
#[derive(serde::Deserialize)]
struct MigratingView {
    status: MigratingStatus,
}

#[derive(serde::Deserialize)]
struct MigratingStatus {
    #[serde(default)]
    migration: Option<serde::de::IgnoredAny>,
}

fn migrating(key: &str, value: &[u8]) -> bool {
    crate::codec::decode::<MigratingView>(key, value).is_ok_and(|v| v.status.migration.is_some())
}

async fn watch_once(app: &App) -> Result<(), String> {
    let store = app.repo().store().clone();
    let vms = store
        .range(keys::VMS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    let mut keys: BTreeSet<String> = vms
        .kvs
        .iter()
        .filter(|kv| migrating(&kv.key, &kv.value))
        .map(|kv| kv.key.clone())
        .collect();
    let mut watch = store
        .watch(keys::VMS, vms.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(PASS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = watch.next() => {
                match ev.ok_or("VM watch ended")?.map_err(|e| e.to_string())? {
                    WatchEvent::Put(kv) => {
                        if migrating(&kv.key, &kv.value) {
                            keys.insert(kv.key);
                        } else {
                            keys.remove(&kv.key);
                        }
                    }
                    WatchEvent::Delete { key, .. } => {
                        keys.remove(&key);
                    }
                }
            }
            _ = tick.tick() => {
                if !keys.is_empty() {
                    pass(app, &keys).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

async fn pass(app: &App, keys: &BTreeSet<String>) -> Result<(), panal_types::ApiError> {
    let repo = app.repo();
    let (hosts, _, _) = repo.list::<Host>(keys::HOSTS, None, 0).await?;
    let state: HashMap<&str, HostState> = hosts
        .iter()
        .map(|h| (h.value.name.as_str(), h.value.state))
        .collect();
    let dead = |name: &str| state.get(name).is_none_or(|s| *s == HostState::NotReady);
    for key in keys {
        let Some(cur) = repo.get::<Vm>(key).await? else {
            continue;
        };
        let Some(m) = cur.value.status.migration.clone() else {
            continue;
        };
        if dead(m.to.as_str()) && m.step != MigrationStep::Cancelling {
            let why = format!("host {} stopped answering", m.to);
            tracing::warn!(vm = %key, "{why}: cancelling its migration");
            app.request_cancel(&cur, why).await?;
            continue;
        }
        if m.step != MigrationStep::Preparing {
            continue;
        }
        let waited = (chrono::Utc::now() - m.started_at)
            .to_std()
            .unwrap_or_default();
        let why = if dead(m.from.as_str()) {
            Some(format!("host {} stopped answering", m.from))
        } else if waited > PREPARE_TIMEOUT {
            Some(format!(
                "host {} did not get ready to receive within {} s",
                m.to,
                PREPARE_TIMEOUT.as_secs()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(vm = %key, "{why}: unwinding its migration");
            app.abort_migration(&cur, &why, false).await?;
        }
    }
    Ok(())
}
