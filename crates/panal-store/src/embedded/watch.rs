//! Watch streams: replay from the history log, then live events from the writer's broadcast.
//!
//! Protocol (no loss, no duplicates): a watcher first subscribes to the broadcast, then reads the
//! published revision `cur`. The writer publishes a batch's revision before broadcasting it, so
//! every revision > `cur` reaches this subscription, and every revision ≤ `cur` is committed and
//! readable from history. The watcher replays history up to `cur` in pages, then takes live
//! batches, skipping any revision below the next one it owes. If it lags behind the broadcast
//! buffer, it re-subscribes and replays the gap from history the same way; only when history has
//! been compacted past the gap does it yield [`StoreError::Compacted`] and end (the caller then
//! re-lists). The stream holds only a weak handle to the engine, and ends when the store closes.

use super::Shared;
use super::codec::decode_history;
use super::schema::{HISTORY, META, META_OLDEST, db_err};
use crate::{StoreError, WatchEvent, WatchStream};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use tokio::sync::broadcast::{self, error::RecvError};

/// One revision's events as broadcast to watchers.
#[derive(Debug)]
pub(super) struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<WatchEvent>,
}

/// What the writer broadcasts per committed batch.
pub(super) type Published = Arc<Vec<RevisionEvents>>;

/// Revisions read from history per step, bounding memory for a watcher far behind.
const REPLAY_PAGE: u64 = 512;

struct Watcher {
    shared: Weak<Shared>,
    prefix: String,
    /// The next revision this watcher owes its caller.
    next: u64,
    /// Replay history until this revision (inclusive) before going live.
    replay_to: u64,
    rx: broadcast::Receiver<Published>,
    buf: VecDeque<WatchEvent>,
    done: bool,
}

/// Starts a watch; fails now if `from_revision` is already compacted.
pub(super) fn start(
    shared: &Arc<Shared>,
    prefix: &str,
    from_revision: u64,
) -> Result<WatchStream, StoreError> {
    let rx = shared.events.subscribe();
    let cur = shared.revision.load(Ordering::SeqCst);
    let oldest = shared.oldest.load(Ordering::SeqCst);
    // 0 means "from now on", as in etcd.
    let next = if from_revision == 0 {
        cur + 1
    } else {
        from_revision
    };
    if next < oldest {
        return Err(StoreError::Compacted {
            requested: from_revision,
            oldest,
        });
    }
    let w = Watcher {
        shared: Arc::downgrade(shared),
        prefix: prefix.to_owned(),
        next,
        replay_to: cur,
        rx,
        buf: VecDeque::new(),
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(w, |mut w| async move {
        let item = w.step().await?;
        Some((item, w))
    })))
}

impl Watcher {
    async fn step(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.buf.pop_front() {
                return Some(Ok(ev));
            }
            if self.next <= self.replay_to {
                let shared = self.shared.upgrade()?;
                let end = self.replay_to.min(self.next + REPLAY_PAGE - 1);
                let (from, prefix) = (self.next, self.prefix.clone());
                let page =
                    tokio::task::spawn_blocking(move || read_history(&shared, &prefix, from, end))
                        .await
                        .unwrap_or_else(|e| Err(StoreError::Internal(e.to_string())));
                match page {
                    Ok(events) => {
                        self.buf.extend(events);
                        self.next = end + 1;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    for r in batch.iter() {
                        if r.revision < self.next {
                            continue; // already delivered by the history replay
                        }
                        let prefix = &self.prefix;
                        let matching = r.events.iter().filter(|e| e.key().starts_with(prefix));
                        self.buf.extend(matching.cloned());
                        self.next = r.revision + 1;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "watcher lagged; catching up from history");
                    let shared = self.shared.upgrade()?;
                    self.rx = shared.events.subscribe();
                    self.replay_to = shared.revision.load(Ordering::SeqCst);
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Reads revisions `from..=to` of the history log, keeping keys under `prefix`.
fn read_history(
    shared: &Shared,
    prefix: &str,
    from: u64,
    to: u64,
) -> Result<Vec<WatchEvent>, StoreError> {
    let rtx = shared.db.begin_read().map_err(db_err)?;
    let meta = rtx.open_table(META).map_err(db_err)?;
    let oldest = meta
        .get(META_OLDEST)
        .map_err(db_err)?
        .map_or(1, |g| g.value());
    if from < oldest {
        return Err(StoreError::Compacted {
            requested: from,
            oldest,
        });
    }
    let history = rtx.open_table(HISTORY).map_err(db_err)?;
    // Rows are keyed by their batch's first revision: the row holding `from` is the last one
    // keyed at or below it, followed by every row keyed up to `to`.
    let first = match history.range(..=from).map_err(db_err)?.next_back() {
        Some(row) => row.map_err(db_err)?.0.value(),
        None => from,
    };
    let mut out = Vec::new();
    for entry in history.range(first..=to).map_err(db_err)? {
        let (_, bytes) = entry.map_err(db_err)?;
        out.extend(decode_history(bytes.value(), prefix, from..=to)?);
    }
    Ok(out)
}
