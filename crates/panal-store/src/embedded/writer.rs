//! The single writer thread and its group commit.
//!
//! Protocol: every write (txn, lease grant/revoke, compaction) is a [`Request`] sent over one
//! channel to this thread. The thread blocks for one request, then drains whatever else is already
//! queued (up to `max_batch`): those are the requests that arrived while the previous commit was
//! fsyncing. It also takes out leases whose deadline passed. All of that is applied, in order, in
//! ONE redb write transaction committed with `Durability::Immediate` (one fsync). Only after the
//! commit returns does it publish the new revision, update lease deadlines, answer each caller and
//! broadcast the batch's events to watchers, so nobody observes an unsynced write. If the commit
//! fails, every request of the batch gets the error and nothing is published.
//!
//! A plain OS thread rather than a tokio task: redb and fsync block, and the store must outlive
//! whichever runtime opened it (tests open stores from many short-lived runtimes).

use super::Shared;
use super::apply::{Failure, Tables};
use crate::{LeaseId, StoreError, Txn, TxnResult};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long the writer may wait for callers of the previous batch to send their next request.
/// Small next to an fsync (hundreds of microseconds to milliseconds).
const GATHER_WINDOW: Duration = Duration::from_micros(200);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write for the writer thread.
pub(super) enum Request {
    Txn(Txn, Reply<TxnResult>),
    Grant(Duration, Reply<LeaseId>),
    Revoke(LeaseId, Reply<()>),
    Compact(u64, Reply<()>),
    /// Sent by the store's `Drop`: finish what is queued before it, then exit.
    Shutdown,
}

/// An answer held back until the batch is durable.
enum Pending {
    Txn(Reply<TxnResult>, Result<TxnResult, StoreError>),
    Grant(Reply<LeaseId>, Result<(LeaseId, Duration), StoreError>),
    Revoke(Reply<()>, Result<LeaseId, StoreError>),
    Compact(Reply<()>, Result<(), StoreError>),
}

impl Pending {
    /// Delivers the answer; a caller that gave up (dropped its future) is simply skipped.
    fn send(self, shared: &Shared) {
        match self {
            Pending::Txn(tx, r) => drop(tx.send(r)),
            Pending::Grant(tx, r) => {
                let r = r.map(|(id, ttl)| {
                    shared.leases.insert(id, ttl);
                    id
                });
                drop(tx.send(r));
            }
            Pending::Revoke(tx, r) => {
                let r = r.map(|id| {
                    shared.leases.remove(id);
                });
                drop(tx.send(r));
            }
            Pending::Compact(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Pending::Txn(tx, _) => drop(tx.send(Err(e))),
            Pending::Grant(tx, _) => drop(tx.send(Err(e))),
            Pending::Revoke(tx, _) => drop(tx.send(Err(e))),
            Pending::Compact(tx, _) => drop(tx.send(Err(e))),
        }
    }
}

/// The writer thread's main loop; returns when the store is dropped.
pub(super) fn run(shared: Arc<Shared>, rx: Receiver<Request>) {
    let opts = shared.options.clone();
    let mut shutdown = false;
    let mut last_batch = 0;
    while !shutdown {
        let mut batch = Vec::new();
        match rx.recv_timeout(opts.lease_check_interval) {
            Ok(Request::Shutdown) => shutdown = true,
            Ok(req) => batch.push(req),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => shutdown = true,
        }
        // The callers answered by the last commit tend to come straight back; waiting a few
        // microseconds for them (up to the last batch's size) saves a whole fsync per straggler.
        // A lone writer (last batch of 1) never waits.
        let gather_until = Instant::now() + GATHER_WINDOW;
        while !shutdown && !batch.is_empty() && batch.len() < opts.max_batch {
            match rx.try_recv() {
                Ok(Request::Shutdown) => shutdown = true,
                Ok(req) => batch.push(req),
                Err(_) if batch.len() < last_batch && Instant::now() < gather_until => {
                    std::thread::yield_now();
                }
                Err(_) => break,
            }
        }
        last_batch = batch.len();
        let expired = shared.leases.take_expired(Instant::now());
        if !batch.is_empty() || !expired.is_empty() {
            commit_batch(&shared, batch, expired);
        }
    }
    tracing::debug!("embedded store writer stopped");
}

fn commit_batch(shared: &Shared, batch: Vec<Request>, expired: Vec<(LeaseId, Duration)>) {
    let mut pending = Vec::with_capacity(batch.len());
    let outcome = apply_batch(shared, batch, &expired, &mut pending);
    match outcome {
        Ok((revision, oldest, events)) => {
            // Order matters for watchers: the revision is visible before the broadcast, so a
            // watcher that subscribes and then reads the revision can never miss a batch.
            shared.oldest.store(oldest, Ordering::SeqCst);
            shared.revision.store(revision, Ordering::SeqCst);
            for p in pending {
                p.send(shared);
            }
            if !events.is_empty() {
                // No receivers is fine: nobody is watching.
                let _ = shared.events.send(Arc::new(events));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "embedded store commit failed");
            for p in pending {
                p.fail(e.clone());
            }
            // Expired leases are not gone on disk: put them back so expiry is retried.
            for (id, ttl) in expired {
                shared.leases.insert(id, ttl);
            }
        }
    }
}

type Applied = (u64, u64, Vec<super::watch::RevisionEvents>);

/// Applies a whole batch in one write transaction and commits it. Per-request failures go into
/// `pending`; an `Err` means the batch did not commit.
fn apply_batch(
    shared: &Shared,
    batch: Vec<Request>,
    expired: &[(LeaseId, Duration)],
    pending: &mut Vec<Pending>,
) -> Result<Applied, StoreError> {
    use super::schema::db_err;
    let mut wtx = shared.db.begin_write().map_err(db_err)?;
    wtx.set_durability(redb::Durability::Immediate);
    let applied = {
        let revision = shared.revision.load(Ordering::SeqCst);
        let oldest = shared.oldest.load(Ordering::SeqCst);
        let mut t = Tables::open(&wtx, revision, oldest)?;
        for (id, _) in expired {
            fatal(t.end_lease(*id))?;
            tracing::debug!(lease = id.0, "lease expired");
        }
        for req in batch {
            let p = match req {
                Request::Txn(txn, tx) => Pending::Txn(tx, fatal_only(t.apply_txn(txn))?),
                Request::Grant(ttl, tx) => {
                    Pending::Grant(tx, fatal_only(t.grant_lease(ttl))?.map(|id| (id, ttl)))
                }
                Request::Revoke(id, tx) => {
                    let r = fatal_only(t.end_lease(id))?
                        .and_then(|found| found.then_some(id).ok_or(StoreError::LeaseNotFound(id)));
                    Pending::Revoke(tx, r)
                }
                Request::Compact(rev, tx) => Pending::Compact(tx, fatal_only(t.compact(rev))?),
                Request::Shutdown => continue,
            };
            pending.push(p);
        }
        fatal(t.finish(shared.options.history_revisions))?;
        (t.revision, t.oldest, std::mem::take(&mut t.events))
    };
    wtx.commit().map_err(db_err)?;
    Ok(applied)
}

/// Splits a request's outcome: its own failure becomes its answer, an engine failure aborts.
fn fatal_only<T>(r: Result<T, Failure>) -> Result<Result<T, StoreError>, StoreError> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Failure::Request(e)) => Ok(Err(e)),
        Err(Failure::Fatal(e)) => Err(e),
    }
}

/// For batch-level steps, where any failure aborts the batch.
fn fatal<T>(r: Result<T, Failure>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(Failure::Request(e) | Failure::Fatal(e)) => Err(e),
    }
}
