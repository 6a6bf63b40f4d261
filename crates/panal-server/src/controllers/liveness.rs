//! Host liveness: a host whose liveness key vanished (its agent stopped renewing the lease) turns
//! not ready; one whose key came back turns ready again.

use super::RESTART_DELAY;
use crate::app::App;
use crate::keys;
use futures::StreamExt;
use panal_store::WatchEvent;
use panal_types::host::Host;
use std::collections::HashSet;

/// Runs until aborted.
pub async fn run(app: App) {
    loop {
        if let Err(e) = watch_once(&app).await {
            tracing::warn!(error = %e, "liveness controller restarting");
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

async fn watch_once(app: &App) -> Result<(), String> {
    let store = app.repo().store().clone();
    let leases = store
        .range(keys::HOST_LEASES, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    let alive: HashSet<String> = leases
        .kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(keys::HOST_LEASES).map(str::to_owned))
        .collect();
    let (hosts, _, _) = app
        .repo()
        .list::<Host>(keys::HOSTS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    for h in hosts {
        let is_alive = alive.contains(h.value.name.as_str());
        // Whatever its mode: a cordoned or draining host loses its lease too.
        if h.value.alive() != is_alive {
            app.set_host_liveness(h.value.name.as_str(), is_alive)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let mut watch = store
        .watch(keys::HOST_LEASES, leases.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(ev) = watch.next().await {
        let ev = ev.map_err(|e| e.to_string())?;
        let Some(name) = ev.key().strip_prefix(keys::HOST_LEASES) else {
            continue;
        };
        let alive = matches!(ev, WatchEvent::Put(_));
        if let Err(e) = app.set_host_liveness(name, alive).await {
            tracing::warn!(host = name, error = %e, "could not update host liveness");
        } else if !alive {
            tracing::warn!(host = name, "host lease expired: host is not ready");
        }
    }
    Ok(())
}
