//! Watch streams on etcd: one etcd watch per stream, on the wire range of the prefix, started
//! at the asked revision (0: from now, as in etcd).
//!
//! Protocol: etcd answers a watch request first with a "created" response, or with a
//! "canceled" one carrying `compact_revision` when the start revision is compacted; that first
//! answer is awaited (with the request timeout) so `watch` itself can fail with
//! [`StoreError::Compacted`]. Later responses carry events in revision order; a later cancel
//! (compaction overtaking a slow watcher, lost leader with `require_leader`) or a broken
//! connection becomes the stream's last item, an error, as the [`crate::Store`] contract says:
//! the caller re-lists and watches again.

use super::EtcdStore;
use super::convert::{Keys, rev, store_err, wire_rev};
use crate::{StoreError, WatchEvent, WatchStream};
use etcd_client as ec;
use std::collections::VecDeque;

struct Watcher {
    stream: ec::WatchStream,
    keys: Keys,
    buf: VecDeque<WatchEvent>,
    /// The next revision owed to the caller (to name it in a late `Compacted`).
    next: u64,
    done: bool,
}

pub(super) async fn start(
    store: &EtcdStore,
    prefix: &str,
    from_revision: u64,
) -> Result<WatchStream, StoreError> {
    let (start, end) = store.keys.range(prefix, None);
    let mut opts = ec::WatchOptions::new().with_range(end);
    if from_revision > 0 {
        opts = opts.with_start_revision(wire_rev(from_revision)?);
    }
    let stream = store
        .call(|mut c| {
            let (start, opts) = (start.clone(), opts.clone());
            async move { c.watch(start, Some(opts)).await }
        })
        .await
        .map_err(|f| f.into_store())?;
    let mut w = Watcher {
        stream,
        keys: store.keys.clone(),
        buf: VecDeque::new(),
        next: from_revision,
        done: false,
    };
    let first = tokio::time::timeout(store.options.request_timeout, w.stream.message())
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "etcd did not confirm the watch within {:?}",
                store.options.request_timeout
            ))
        })?;
    match first {
        Ok(Some(resp)) => {
            if let Some(Err(e)) = w.absorb(&resp) {
                return Err(e);
            }
        }
        Ok(None) => return Err(StoreError::Unavailable("etcd closed the watch".into())),
        Err(e) => return Err(store_err(e)),
    }
    Ok(Box::pin(futures::stream::unfold(w, |mut w| async move {
        let item = w.step().await?;
        Some((item, w))
    })))
}

impl Watcher {
    async fn step(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(ev) = self.buf.pop_front() {
                return Some(Ok(ev));
            }
            if self.done {
                return None;
            }
            match self.stream.message().await {
                Ok(Some(resp)) => {
                    if let Some(err) = self.absorb(&resp) {
                        return Some(err);
                    }
                }
                Ok(None) => {
                    self.done = true;
                    return Some(Err(StoreError::Unavailable("etcd closed the watch".into())));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(store_err(e)));
                }
            }
        }
    }

    /// Queues a response's events; returns the terminal error if etcd canceled the watch.
    fn absorb(&mut self, resp: &ec::WatchResponse) -> Option<Result<WatchEvent, StoreError>> {
        if resp.canceled() {
            self.done = true;
            let err = if resp.compact_revision() > 0 {
                StoreError::Compacted {
                    requested: self.next,
                    oldest: rev(resp.compact_revision()),
                }
            } else {
                StoreError::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    resp.cancel_reason()
                ))
            };
            return Some(Err(err));
        }
        for ev in resp.events() {
            match self.event(ev) {
                Ok(e) => {
                    self.next = e.revision() + 1;
                    self.buf.push_back(e);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn event(&self, ev: &ec::Event) -> Result<WatchEvent, StoreError> {
        let kv = ev
            .kv()
            .ok_or_else(|| StoreError::Corrupt("etcd watch event without a key".into()))?;
        Ok(match ev.event_type() {
            ec::EventType::Put => WatchEvent::Put(self.keys.kv(kv)?),
            ec::EventType::Delete => WatchEvent::Delete {
                key: self.keys.local(kv.key())?,
                revision: rev(kv.mod_revision()),
            },
        })
    }
}
