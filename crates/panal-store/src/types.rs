//! The values that cross the store interface: key-values, transactions, watch events, leases
//! and errors. Shaped after etcd v3 so both engines speak the same language.

use futures::stream::BoxStream;
use std::time::Duration;

/// A lease identifier (etcd's are non-zero 64-bit integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

/// A stored key with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Revision of the transaction that last wrote it.
    pub mod_revision: u64,
    /// Number of writes since creation (1 after the first put).
    pub version: u64,
    /// The lease it is attached to.
    pub lease: Option<LeaseId>,
}

/// The answer to a range read.
#[derive(Clone, Debug, Default)]
pub struct RangeResult {
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys match beyond `limit`.
    pub more: bool,
    /// The store revision the read saw.
    pub revision: u64,
}

/// A condition on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals this (0 means the key is absent).
    ModRevision(String, u64),
    /// The key's `version` equals this (0 means the key is absent).
    Version(String, u64),
    /// The key's value equals these bytes (false when absent).
    Value(String, Vec<u8>),
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: &str) -> Self {
        Compare::Version(key.to_owned(), 0)
    }

    /// The key was last written at `rev` (unchanged since it was read).
    pub fn unchanged(key: &str, rev: u64) -> Self {
        Compare::ModRevision(key.to_owned(), rev)
    }
}

/// One write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set a key, optionally attached to a lease.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease to attach to.
        lease: Option<LeaseId>,
    },
    /// Remove a key (no error if absent).
    Delete {
        /// Key.
        key: String,
    },
    /// Read a key inside the transaction.
    Get {
        /// Key.
        key: String,
    },
}

impl Op {
    /// A put without a lease.
    pub fn put(key: &str, value: Vec<u8>) -> Self {
        Op::Put {
            key: key.to_owned(),
            value,
            lease: None,
        }
    }

    /// A put attached to a lease.
    pub fn put_with_lease(key: &str, value: Vec<u8>, lease: LeaseId) -> Self {
        Op::Put {
            key: key.to_owned(),
            value,
            lease: Some(lease),
        }
    }

    /// A delete.
    pub fn delete(key: &str) -> Self {
        Op::Delete {
            key: key.to_owned(),
        }
    }

    /// A read.
    pub fn get(key: &str) -> Self {
        Op::Get {
            key: key.to_owned(),
        }
    }
}

/// A compare-then-write transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions; all must hold for `success` to run.
    pub compares: Vec<Compare>,
    /// Ops applied when every compare holds.
    pub success: Vec<Op>,
    /// Ops applied otherwise.
    pub failure: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition.
    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }

    /// Adds an op to the success branch.
    pub fn and_then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds an op to the failure branch.
    pub fn or_else(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }
}

/// What one op of a committed transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// A put (with the previous value's mod revision, 0 if it was new).
    Put {
        /// Previous mod revision.
        prev_mod_revision: u64,
    },
    /// A delete and how many keys it removed (0 or 1).
    Delete {
        /// Keys removed.
        deleted: u64,
    },
    /// A read.
    Get {
        /// The key, if present.
        kv: Option<KeyValue>,
    },
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held.
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged if it wrote nothing).
    pub revision: u64,
    /// One response per op of the branch that ran.
    pub responses: Vec<OpResponse>,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or changed; `kv.mod_revision` is the change's revision.
    Put(KeyValue),
    /// A key was removed (by a delete or an expired lease) at `revision`.
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete.
        revision: u64,
    },
}

impl WatchEvent {
    /// The revision the change happened at.
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// A stream of changes; ends with an error item if the engine fails or the watcher falls too far
/// behind (then the caller re-lists).
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// the requested history has been compacted
    #[error("revision {requested} has been compacted (oldest kept: {oldest})")]
    Compacted {
        /// Revision asked for.
        requested: u64,
        /// Oldest revision still available.
        oldest: u64,
    },
    /// the lease does not exist or has expired
    #[error("lease {0:?} not found or expired")]
    LeaseNotFound(LeaseId),
    /// the store cannot be reached or refused the request for now
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// the store refused our credentials or permissions (retrying will not help)
    #[error("store access denied: {0}")]
    AccessDenied(String),
    /// the store's data is damaged or of an unknown format
    #[error("store data error: {0}")]
    Corrupt(String),
    /// a request the engine cannot express (too large, bad key)
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// an I/O or engine failure
    #[error("store failure: {0}")]
    Internal(String),
}

/// Minimum lease TTL an engine honours.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
