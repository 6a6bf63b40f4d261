//! Runs the store conformance suite, unchanged, against the etcd engine: each case on a fresh
//! 3-member etcd cluster on loopback (so cluster-wide revisions belong to the case alone).
//! Needs the etcd binary (scripts/install-etcd.sh); fails, rather than skips, without it.

use panal_store::DynStore;
use panal_store::etcd::testing::ClusterStore;
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

/// At most two clusters (six etcd processes) at once: more would starve each other of CPU on
/// small machines and turn elections and lease timing into noise.
static CLUSTERS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(2)));

/// A case's store holds its cluster slot until the case drops it.
struct Slot {
    store: ClusterStore,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

async fn fresh() -> DynStore {
    let permit = CLUSTERS.clone().acquire_owned().await.expect("semaphore");
    let store = ClusterStore::start(3)
        .await
        .unwrap_or_else(|e| panic!("starting a 3-member etcd cluster: {e}"));
    Arc::new(Slot {
        store,
        _permit: permit,
    })
}

mod slot {
    use super::Slot;
    use async_trait::async_trait;
    use panal_store::{
        KeyValue, LeaseId, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream,
    };
    use std::time::Duration;

    #[async_trait]
    impl Store for Slot {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.store.get(key).await
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StoreError> {
            self.store.get_many(keys).await
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
        async fn watch(&self, prefix: &str, from: u64) -> Result<WatchStream, StoreError> {
            self.store.watch(prefix, from).await
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
}

panal_store::conformance_tests!(fresh);
