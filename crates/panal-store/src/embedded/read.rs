//! Reads on redb snapshots: single keys and prefix ranges with pagination.

use super::codec::decode_record;
use super::schema::{KV, META, META_REVISION, db_err};
use crate::{KeyValue, RangeResult, StoreError};
use redb::Database;
use std::ops::Bound;

pub(super) fn get(db: &Database, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let rtx = db.begin_read().map_err(db_err)?;
    let kv = rtx.open_table(KV).map_err(db_err)?;
    match kv.get(key).map_err(db_err)? {
        None => Ok(None),
        Some(g) => Ok(Some(decode_record(g.value())?.into_kv(key))),
    }
}

/// Keys under `prefix` after `start_after`, at most `limit` (0 = all), all from one snapshot
/// whose revision is reported with them.
pub(super) fn range(
    db: &Database,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
) -> Result<RangeResult, StoreError> {
    let rtx = db.begin_read().map_err(db_err)?;
    let meta = rtx.open_table(META).map_err(db_err)?;
    let revision = meta
        .get(META_REVISION)
        .map_err(db_err)?
        .map_or(0, |g| g.value());
    let kv = rtx.open_table(KV).map_err(db_err)?;
    let lower = match start_after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    let mut out = RangeResult {
        revision,
        ..RangeResult::default()
    };
    for entry in kv
        .range::<&str>((lower, Bound::Unbounded))
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        if limit != 0 && out.kvs.len() == limit {
            out.more = true;
            break;
        }
        out.kvs.push(decode_record(v.value())?.into_kv(key));
    }
    Ok(out)
}
