//! Runs the store conformance suite against the embedded engine, one test per case, each on a
//! fresh store file in its own temporary directory.

use async_trait::async_trait;
use panal_store::embedded::EmbeddedStore;
use panal_store::{
    DynStore, KeyValue, LeaseId, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream,
};
use std::sync::Arc;
use std::time::Duration;

/// An embedded store that owns its temporary directory. Field order matters: the store closes
/// (releasing the file) before the directory is removed.
struct TempStore {
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

async fn fresh() -> DynStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).expect("open store");
    Arc::new(TempStore { store, _dir: dir })
}

#[async_trait]
impl Store for TempStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        self.store.range(prefix, start_after, limit).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        self.store.watch(prefix, from_revision).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.store.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.lease_revoke(lease).await
    }
    async fn current_revision(&self) -> Result<u64, StoreError> {
        self.store.current_revision().await
    }
    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.store.compact(revision).await
    }
}

panal_store::conformance_tests!(fresh);

/// The all-in-one runner works too (and keeps its case list honest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_cases() {
    panal_store::conformance::run_all(fresh).await;
}
