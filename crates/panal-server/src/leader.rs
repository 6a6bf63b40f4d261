//! Leadership among control-plane replicas, on any store engine: the leader is whoever holds the
//! key `/panal/leader`, written with a lease. A replica campaigns by creating the key if absent;
//! the winner renews its lease every third of the TTL; everyone else watches the key and
//! campaigns again when it disappears (leader stopped, crashed, or was cut off and its lease
//! expired). Singleton controllers run only while a replica holds leadership, so at most one
//! replica runs them after the old leader's lease has lapsed.

use futures::StreamExt;
use panal_store::{Compare, DynStore, LeaseId, Op, StoreError, Txn, WatchEvent};
use std::time::Duration;

/// The leadership key.
pub const LEADER_KEY: &str = crate::keys::LEADER;

pub use panal_types::cluster::LeaderInfo;

/// One replica's view of the election.
#[derive(Clone)]
pub struct Election {
    store: DynStore,
    me: LeaderInfo,
    ttl: Duration,
}

impl Election {
    /// An election for replica `replica` (reachable at `api_url`) with lease `ttl`.
    pub fn new(store: DynStore, replica: &str, api_url: &str, ttl: Duration) -> Self {
        let me = LeaderInfo {
            replica: replica.to_owned(),
            api_url: api_url.to_owned(),
            since: chrono::Utc::now(),
        };
        Self { store, me, ttl }
    }

    /// The current leader, if any.
    pub async fn leader(store: &DynStore) -> Result<Option<LeaderInfo>, StoreError> {
        Ok(store
            .get(LEADER_KEY)
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Blocks until this replica is the leader; returns the lease that holds leadership.
    pub async fn campaign(&self) -> LeaseId {
        loop {
            match self.try_acquire().await {
                Ok(Some(lease)) => return lease,
                Ok(None) => self.wait_for_vacancy().await,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: store error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn try_acquire(&self) -> Result<Option<LeaseId>, StoreError> {
        let lease = self.store.lease_grant(self.ttl).await?;
        let mut me = self.me.clone();
        me.since = chrono::Utc::now();
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let r = self
            .store
            .txn(
                Txn::new()
                    .when(Compare::absent(LEADER_KEY))
                    .and_then(Op::put_with_lease(LEADER_KEY, value, lease)),
            )
            .await?;
        if r.succeeded {
            tracing::info!(replica = %self.me.replica, "became the leader");
            Ok(Some(lease))
        } else {
            let _ = self.store.lease_revoke(lease).await;
            Ok(None)
        }
    }

    /// Returns once the leader key is gone (or after a while, to re-check).
    async fn wait_for_vacancy(&self) {
        let Ok(rev) = self.store.current_revision().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        };
        if !matches!(self.store.get(LEADER_KEY).await, Ok(Some(_))) {
            return;
        }
        let Ok(mut watch) = self.store.watch(LEADER_KEY, rev + 1).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        };
        let deadline = tokio::time::sleep(self.ttl * 2);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                ev = watch.next() => match ev {
                    Some(Ok(WatchEvent::Delete { .. })) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Keeps leadership until it is lost: returns when the lease could not be renewed for a
    /// whole TTL (then another replica may already lead) or was found expired.
    pub async fn hold(&self, lease: LeaseId) {
        let every = self.ttl / 3;
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            match self.store.lease_keep_alive(lease).await {
                Ok(()) => last_ok = tokio::time::Instant::now(),
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(replica = %self.me.replica, "leadership lease expired");
                    return;
                }
                Err(e) => {
                    // Stop acting before the lease can have lapsed: a little under one TTL.
                    if last_ok.elapsed() + every >= self.ttl {
                        tracing::warn!(error = %e, "cannot renew leadership; stepping down");
                        return;
                    }
                }
            }
        }
    }

    /// Gives leadership up at once (a clean stop hands over without waiting for the TTL).
    pub async fn resign(&self, lease: LeaseId) {
        let _ = self.store.lease_revoke(lease).await;
    }
}
