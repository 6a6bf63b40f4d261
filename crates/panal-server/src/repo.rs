//! The data layer: typed reads and writes of Panal objects on top of the store interface.
//! Updates are read-modify-write loops guarded by compare-and-swap on the key's mod revision,
//! so concurrent writers (API handlers, controllers, agent reports) never lose each other's work.

use crate::codec::{decode, encode};
use panal_store::{Compare, DynStore, Op, StoreError, Txn};
use panal_types::{ApiError, ErrorCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A decoded object with the store revision it was last written at.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The object.
    pub value: T,
    /// Its key's mod revision (for compare-and-swap).
    pub mod_revision: u64,
}

/// Maps a store failure to the public error, logging the cause (clients never see it).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(msg) => {
            tracing::warn!(error = %msg, "store unavailable");
            ApiError::unavailable("the state store is unavailable; retry later")
        }
        StoreError::AccessDenied(msg) => {
            tracing::error!(error = %msg, "the store refused our credentials");
            ApiError::unavailable("the state store refused the control plane's credentials")
        }
        StoreError::Compacted { requested, oldest } => ApiError::new(
            ErrorCode::Gone,
            format!("revision {requested} is no longer available (oldest {oldest}); re-list"),
        ),
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::internal()
        }
    }
}

/// How many times an update retries after losing a compare-and-swap race.
const MAX_CAS_RETRIES: usize = 64;

/// Typed access to the store.
#[derive(Clone)]
pub struct Repo {
    store: DynStore,
}

impl Repo {
    /// Wraps a store.
    pub fn new(store: DynStore) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// Reads and decodes one object.
    pub async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, ApiError> {
        let Some(kv) = self.store.get(key).await.map_err(store_error)? else {
            return Ok(None);
        };
        let value = decode(key, &kv.value).map_err(store_error)?;
        Ok(Some(Versioned {
            value,
            mod_revision: kv.mod_revision,
        }))
    }

    /// Reads several objects, in the order of `keys` (one round trip on etcd).
    pub async fn get_many<T: DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned<T>>>, ApiError> {
        let kvs = self.store.get_many(keys).await.map_err(store_error)?;
        kvs.into_iter()
            .zip(keys)
            .map(|(kv, key)| {
                kv.map(|kv| {
                    Ok(Versioned {
                        value: decode(key, &kv.value).map_err(store_error)?,
                        mod_revision: kv.mod_revision,
                    })
                })
                .transpose()
            })
            .collect()
    }

    /// Lists objects under `prefix` after `start_after`; returns them, whether more exist, and
    /// the store revision of the read.
    pub async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Versioned<T>>, bool, u64), ApiError> {
        let r = self
            .store
            .range(prefix, start_after, limit)
            .await
            .map_err(store_error)?;
        let mut out = Vec::with_capacity(r.kvs.len());
        for kv in r.kvs {
            let value = decode(&kv.key, &kv.value).map_err(store_error)?;
            out.push(Versioned {
                value,
                mod_revision: kv.mod_revision,
            });
        }
        Ok((out, r.more, r.revision))
    }

    /// Creates an object only if its key is free; `Ok(None)` when it already exists.
    pub async fn create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Option<u64>, ApiError> {
        let txn = Txn::new()
            .when(Compare::absent(key))
            .and_then(Op::put(key, encode(value)));
        let r = self.store.txn(txn).await.map_err(store_error)?;
        Ok(r.succeeded.then_some(r.revision))
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<panal_store::TxnResult, ApiError> {
        self.store.txn(txn).await.map_err(store_error)
    }

    /// Read-modify-write of one object. `change` sees the latest value and either edits it
    /// (return `Ok(true)`), leaves it (return `Ok(false)`, nothing written) or refuses.
    /// Returns the object as stored afterwards, or `None` if it does not exist.
    pub async fn update<T, F>(
        &self,
        key: &str,
        mut change: F,
    ) -> Result<Option<Versioned<T>>, ApiError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(&mut T) -> Result<bool, ApiError>,
    {
        for _ in 0..MAX_CAS_RETRIES {
            let Some(mut cur) = self.get::<T>(key).await? else {
                return Ok(None);
            };
            if !change(&mut cur.value)? {
                return Ok(Some(cur));
            }
            let txn = Txn::new()
                .when(Compare::unchanged(key, cur.mod_revision))
                .and_then(Op::put(key, encode(&cur.value)));
            let r = self.txn(txn).await?;
            if r.succeeded {
                return Ok(Some(Versioned {
                    value: cur.value,
                    mod_revision: r.revision,
                }));
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "too much contention on this object; retry",
        ))
    }
}
