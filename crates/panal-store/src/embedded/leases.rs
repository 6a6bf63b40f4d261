//! In-memory lease deadlines. The lease set itself is persisted (table `leases`); deadlines are
//! not, so after a restart every lease gets a fresh full TTL, as etcd does on a leader change.
//!
//! Protocol: `keep_alive` (any task) only moves deadlines of leases present here. The writer
//! thread is the only one that adds leases (after the grant commits) and removes them (when it
//! decides to expire or revoke one, before that batch commits), so once a lease is taken out
//! here, later renewals fail with `LeaseNotFound`.

use crate::{LeaseId, StoreError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Entry {
    ttl: Duration,
    deadline: Instant,
}

#[derive(Default)]
pub(super) struct LeaseClock {
    inner: Mutex<HashMap<LeaseId, Entry>>,
}

impl LeaseClock {
    /// Starts (or restarts) a lease's full TTL from now.
    pub fn insert(&self, id: LeaseId, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.inner.lock().insert(id, Entry { ttl, deadline });
    }

    /// Renews a live lease for another full TTL.
    pub fn keep_alive(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut map = self.inner.lock();
        let entry = map.get_mut(&id).ok_or(StoreError::LeaseNotFound(id))?;
        let now = Instant::now();
        if entry.deadline <= now {
            // Already past its deadline: the writer is about to expire it; renewing now would
            // resurrect a lease whose keys other parties may already consider gone.
            return Err(StoreError::LeaseNotFound(id));
        }
        entry.deadline = now + entry.ttl;
        Ok(())
    }

    /// Takes a lease out (revoke); returns its TTL if it was there.
    pub fn remove(&self, id: LeaseId) -> Option<Duration> {
        self.inner.lock().remove(&id).map(|e| e.ttl)
    }

    /// Takes out every lease whose deadline has passed.
    pub fn take_expired(&self, now: Instant) -> Vec<(LeaseId, Duration)> {
        let mut map = self.inner.lock();
        let expired: Vec<LeaseId> = map
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| map.remove(&id).map(|e| (id, e.ttl)))
            .collect()
    }
}
