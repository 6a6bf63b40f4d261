//! The redb tables of the embedded engine, its meta entries, opening/initialising a database
//! file, and the mapping of redb errors onto [`StoreError`].
//!
//! Tables:
//! - `kv`: key → [`super::codec::Record`] (live keys only; no MVCC versions are kept);
//! - `history`: first revision of a committed batch → the watch events of the batch's
//!   revisions, pruned to the newest N revisions;
//! - `leases`: lease id → TTL in milliseconds (deadlines live in memory only);
//! - `lease_keys`: (lease id, key) → () so expiry finds a lease's keys without a scan;
//! - `meta`: `format`, `revision` (newest committed), `oldest` (oldest revision whose history is
//!   kept), `next_lease`.

use crate::{LeaseId, StoreError};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::time::Duration;

pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(super) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(super) const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
pub(super) const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const META_FORMAT: &str = "format";
pub(super) const META_REVISION: &str = "revision";
pub(super) const META_OLDEST: &str = "oldest";
pub(super) const META_NEXT_LEASE: &str = "next_lease";

/// Bumped whenever a stored layout changes incompatibly (2: one history row per batch).
const FORMAT: u64 = 2;

/// What a freshly opened database already holds.
pub(super) struct Loaded {
    pub db: Database,
    pub revision: u64,
    pub oldest: u64,
    pub leases: Vec<(LeaseId, Duration)>,
}

/// Opens (creating if needed) the database file, creates missing tables and reads the state the
/// engine keeps in memory.
pub(super) fn open(path: &Path) -> Result<Loaded, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Internal(format!("creating {}: {e}", parent.display())))?;
    }
    let db = Database::create(path).map_err(db_err)?;
    let mut wtx = db.begin_write().map_err(db_err)?;
    wtx.set_durability(redb::Durability::Immediate);
    let (revision, oldest, leases) = {
        let mut meta = wtx.open_table(META).map_err(db_err)?;
        wtx.open_table(KV).map_err(db_err)?;
        wtx.open_table(HISTORY).map_err(db_err)?;
        wtx.open_table(LEASE_KEYS).map_err(db_err)?;
        let lease_table = wtx.open_table(LEASES).map_err(db_err)?;
        let get = |k: &str| -> Result<Option<u64>, StoreError> {
            Ok(meta.get(k).map_err(db_err)?.map(|g| g.value()))
        };
        match get(META_FORMAT)? {
            None => {}
            Some(FORMAT) => {}
            Some(other) => {
                return Err(StoreError::Corrupt(format!(
                    "store format {other} is not supported (expected {FORMAT})"
                )));
            }
        }
        let revision = get(META_REVISION)?.unwrap_or(0);
        let oldest = get(META_OLDEST)?.unwrap_or(1);
        let next_lease = get(META_NEXT_LEASE)?.unwrap_or(1);
        meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
        meta.insert(META_REVISION, revision).map_err(db_err)?;
        meta.insert(META_OLDEST, oldest).map_err(db_err)?;
        meta.insert(META_NEXT_LEASE, next_lease).map_err(db_err)?;
        let mut leases = Vec::new();
        for entry in lease_table.iter().map_err(db_err)? {
            let (id, ttl_ms) = entry.map_err(db_err)?;
            leases.push((LeaseId(id.value()), Duration::from_millis(ttl_ms.value())));
        }
        (revision, oldest, leases)
    };
    wtx.commit().map_err(db_err)?;
    Ok(Loaded {
        db,
        revision,
        oldest,
        leases,
    })
}

/// Maps any redb failure onto the store's error type, keeping the cause text.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::Unavailable(
            "the store file is already open (in this or another process)".into(),
        ),
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }) => StoreError::Corrupt(e.to_string()),
        e @ redb::Error::ValueTooLarge(_) => StoreError::Invalid(e.to_string()),
        e => StoreError::Internal(e.to_string()),
    }
}
