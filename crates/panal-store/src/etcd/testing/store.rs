//! A store that owns the etcd cluster it runs on, so a test (or a conformance case) gets a
//! [`crate::DynStore`] whose last drop also tears the cluster down.

use super::{ClusterError, EtcdCluster};
use crate::etcd::EtcdStore;
use crate::{KeyValue, LeaseId, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// An [`EtcdStore`] together with its own [`EtcdCluster`]. Field order matters: the client
/// goes before the cluster's processes do.
#[derive(Debug)]
pub struct ClusterStore {
    /// The connected store.
    pub store: Arc<EtcdStore>,
    /// The cluster it runs on.
    pub cluster: EtcdCluster,
}

impl ClusterStore {
    /// Starts a fresh cluster of `members` and connects to it.
    pub async fn start(members: usize) -> Result<Self, ClusterError> {
        let cluster = EtcdCluster::start(members).await?;
        let store = cluster
            .connect()
            .await
            .map_err(|e| ClusterError::Io(format!("connecting to the test cluster: {e}")))?;
        Ok(Self { store, cluster })
    }
}

#[async_trait]
impl Store for ClusterStore {
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
    fn max_txn_ops(&self) -> usize {
        self.store.max_txn_ops()
    }
}
