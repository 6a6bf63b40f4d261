//! The store interface every piece of control-plane state sits behind, with the semantics
//! controllers need (modelled on etcd v3, so the etcd engine maps one to one):
//!
//! - every key carries revisions: a single store-wide counter bumped by each committed write
//!   transaction, recorded per key as `create_revision` and `mod_revision`;
//! - transactions compare keys' revisions and then apply puts and deletes atomically;
//! - watches deliver every change under a prefix from a given revision on, in order;
//! - leases are keys that vanish when their owner stops renewing them.
//!
//! Engines: [`embedded`] (a crash-safe `redb` file, the single-machine default) and `etcd`
//! (cargo feature `etcd`: etcd v3, for several replicas). Both pass the [`conformance`] suite
//! unchanged.

pub mod conformance;
pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
mod types;

pub use types::*;

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// etcd's default `--max-txn-ops`, and the [`Store::max_txn_ops`] of engines that do not say.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// A shared handle to any engine.
pub type DynStore = Arc<dyn Store>;

/// The store interface. All methods are cancel-safe from the caller's side: a dropped future
/// either committed or did not, and a committed write is durable once `txn` returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads several keys, in the order given (`None` for an absent one), each as `get` would.
    /// Engines where a read is a network round trip override it with one round trip (etcd: a
    /// read-only transaction, which etcd serves without a raft proposal).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StoreError> {
        futures::future::try_join_all(keys.iter().map(|k| self.get(k))).await
    }

    /// Reads keys starting with `prefix`, in key order, after `start_after` (exclusive) if given,
    /// at most `limit` of them (0 means no limit). Also returns the store revision of the read.
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError>;

    /// Applies `txn` atomically: if every compare holds, the `success` ops run, otherwise the
    /// `failure` ops. Durable (fsync'd) when it returns.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// Streams every change to keys under `prefix` with revision ≥ `from_revision`, in revision
    /// order, then new ones as they commit. Fails with [`StoreError::Compacted`] when that history
    /// is gone (the caller re-lists and watches from the list's revision).
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError>;

    /// Grants a lease that expires `ttl` after its last renewal.
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease. [`StoreError::LeaseNotFound`] once it has expired.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends a lease now, deleting the keys attached to it.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// The newest committed revision.
    async fn current_revision(&self) -> Result<u64, StoreError>;

    /// The most operations one transaction may hold in each of its parts (compares, success
    /// ops, failure ops: etcd counts them apart) on this engine. Callers that write many objects at once split their batches by
    /// it instead of guessing: etcd refuses more than its `--max-txn-ops` (128 by default),
    /// the embedded engine takes far more. The default is etcd's.
    fn max_txn_ops(&self) -> usize {
        DEFAULT_MAX_TXN_OPS
    }

    /// Drops watch history before `revision` (etcd's compaction): watching from an older
    /// revision then fails with [`StoreError::Compacted`]. Keys are not affected. Fails with
    /// [`StoreError::Invalid`] for a revision newer than the current one. Engines also compact
    /// on their own; the default says the engine offers no explicit compaction.
    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _ = revision;
        Err(StoreError::Invalid(
            "this engine does not support explicit compaction".into(),
        ))
    }
}

/// Convenience helpers on top of the core interface.
#[async_trait]
pub trait StoreExt: Store {
    /// Unconditional put; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        Ok(self
            .txn(Txn::new().and_then(Op::put(key, value)))
            .await?
            .revision)
    }

    /// Unconditional delete; returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let r = self.txn(Txn::new().and_then(Op::delete(key))).await?;
        Ok(matches!(
            r.responses.first(),
            Some(OpResponse::Delete { deleted: 1 })
        ))
    }

    /// Creates `key` only if it does not exist; returns `Ok(None)` when it already did.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Option<u64>, StoreError> {
        let r = self
            .txn(
                Txn::new()
                    .when(Compare::absent(key))
                    .and_then(Op::put(key, value)),
            )
            .await?;
        Ok(r.succeeded.then_some(r.revision))
    }
}

impl<T: Store + ?Sized> StoreExt for T {}
