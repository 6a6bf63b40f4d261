//! The embedded engine: a crash-safe `redb` file with group-committed, fsync'd writes,
//! in-process watches and leases. The single-machine default (`panal up`).
//!
//! Concurrency: reads (`get`, `range`) run on redb read snapshots from any task. All writes go
//! through one writer thread ([`writer`]) that batches concurrent requests into one fsync'd
//! commit. Watches replay the history log and then follow the writer's broadcast ([`watch`]).
//! Lease deadlines live in memory ([`leases`]); the writer expires them.

mod apply;
mod codec;
mod leases;
mod options;
mod read;
mod schema;
mod watch;
mod writer;

pub use options::EmbeddedOptions;

use crate::{
    KeyValue, LeaseId, MIN_LEASE_TTL, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use writer::Request;

/// State shared by the store handle, the writer thread and watchers.
struct Shared {
    db: redb::Database,
    /// Newest committed revision; written only by the writer, after each commit.
    revision: AtomicU64,
    /// Oldest revision whose history is kept; written only by the writer.
    oldest: AtomicU64,
    leases: leases::LeaseClock,
    events: broadcast::Sender<watch::Published>,
    options: EmbeddedOptions,
}

/// The embedded store engine. Open it with [`EmbeddedStore::open`]; use it as a
/// [`crate::DynStore`]. Dropping the last handle finishes queued writes and closes the file
/// (watch streams then end).
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("revision", &self.shared.revision.load(Ordering::SeqCst))
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path` with default options.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(path, EmbeddedOptions::default())
    }

    /// Opens (or creates) the store file at `path`. Leases found in the file get a fresh full
    /// TTL. Fails with [`StoreError::Unavailable`] if another process has the file open.
    pub fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Arc<Self>, StoreError> {
        let options = options.sanitized();
        let loaded = schema::open(path)?;
        let leases = leases::LeaseClock::default();
        for (id, ttl) in loaded.leases {
            leases.insert(id, ttl);
        }
        let (events, _) = broadcast::channel(options.watch_buffer);
        let shared = Arc::new(Shared {
            db: loaded.db,
            revision: AtomicU64::new(loaded.revision),
            oldest: AtomicU64::new(loaded.oldest),
            leases,
            events,
            options,
        });
        let (requests, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("panal-store-writer".into())
            .spawn(move || writer::run(writer_shared, rx))
            .map_err(|e| StoreError::Internal(format!("starting the writer thread: {e}")))?;
        Ok(Arc::new(Self {
            shared,
            requests,
            writer: Mutex::new(Some(writer)),
            path: path.to_owned(),
        }))
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Oldest revision a watch can still start from.
    pub fn oldest_revision(&self) -> u64 {
        self.shared.oldest.load(Ordering::SeqCst)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        // A dropped reply means the writer abandoned the batch (commit failure, logged) or
        // stopped: the write did not commit.
        rx.await.map_err(|_| {
            StoreError::Unavailable("the store writer failed; the write was not committed".into())
        })?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Let queued writes finish and release the file lock before returning, so the same
        // path can be reopened right away (restart, tests).
        let _ = self.requests.send(Request::Shutdown);
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        // A point read on a redb snapshot is a short B-tree walk over cached pages; running it
        // inline is cheaper than a hop to the blocking pool.
        read::get(&self.shared.db, key)
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let shared = self.shared.clone();
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            read::range(&shared.db, &prefix, start_after.as_deref(), limit)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("range task failed: {e}")))?
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.request(|tx| Request::Txn(txn, tx)).await
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        watch::start(&self.shared, prefix, from_revision)
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl = ttl.max(MIN_LEASE_TTL);
        self.request(|tx| Request::Grant(ttl, tx)).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.shared.leases.keep_alive(lease)
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.request(|tx| Request::Revoke(lease, tx)).await
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.shared.revision.load(Ordering::SeqCst))
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.request(|tx| Request::Compact(revision, tx)).await
    }

    fn max_txn_ops(&self) -> usize {
        // No engine limit: a transaction is one redb write, bounded by memory. This keeps one
        // transaction (and its history row) to a size that commits in a few milliseconds.
        MAX_TXN_OPS
    }
}

/// What [`Store::max_txn_ops`] reports for the embedded engine.
pub const MAX_TXN_OPS: usize = 4096;
