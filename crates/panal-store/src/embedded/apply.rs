//! Applying requests inside one redb write transaction: compare evaluation, puts and deletes
//! with etcd's revision/version rules, lease grant/revoke/expiry, and history compaction.
//!
//! Runs on the writer thread only. Every change of a request shares one revision, taken only if
//! the request really changed something (etcd: a txn of gets, a failed compare without failure
//! writes, or a delete of an absent key leaves the revision alone). Later requests of a batch see
//! the writes of earlier ones because they all share the same redb write transaction. The
//! batch's revisions are consecutive and its events go into ONE history row, written last.

use super::codec::{Record, RecordHead, decode_head, decode_record, encode_history, encode_record};
use super::schema::{
    HISTORY, KV, LEASE_KEYS, LEASES, META, META_NEXT_LEASE, META_OLDEST, META_REVISION, db_err,
};
use super::watch::RevisionEvents;
use crate::{Compare, LeaseId, Op, OpResponse, StoreError, Txn, TxnResult, WatchEvent};
use redb::{ReadableTable, Table, WriteTransaction};
use std::time::Duration;

/// Why a request could not be applied.
pub(super) enum Failure {
    /// This request is wrong (unknown lease, bad key); the rest of the batch goes on.
    Request(StoreError),
    /// The engine failed; the whole batch is abandoned.
    Fatal(StoreError),
}

impl From<redb::StorageError> for Failure {
    fn from(e: redb::StorageError) -> Self {
        Failure::Fatal(db_err(e))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

/// The tables of one batch's write transaction, plus what the batch has staged so far.
pub(super) struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, u64, &'static [u8]>,
    leases: Table<'t, i64, u64>,
    lease_keys: Table<'t, (i64, &'static str), ()>,
    meta: Table<'t, &'static str, u64>,
    /// Newest revision including this batch's staged changes.
    pub revision: u64,
    /// Oldest revision whose history is kept, including this batch's compactions.
    pub oldest: u64,
    /// Events of this batch, one entry per revision, to publish after the commit.
    pub events: Vec<RevisionEvents>,
}

impl<'t> Tables<'t> {
    pub fn open(wtx: &'t WriteTransaction, revision: u64, oldest: u64) -> Result<Self, StoreError> {
        Ok(Self {
            kv: wtx.open_table(KV).map_err(db_err)?,
            history: wtx.open_table(HISTORY).map_err(db_err)?,
            leases: wtx.open_table(LEASES).map_err(db_err)?,
            lease_keys: wtx.open_table(LEASE_KEYS).map_err(db_err)?,
            meta: wtx.open_table(META).map_err(db_err)?,
            revision,
            oldest,
            events: Vec::new(),
        })
    }

    fn load(&self, key: &str) -> Result<Option<Record>, Failure> {
        match self.kv.get(key)? {
            None => Ok(None),
            Some(g) => Ok(Some(decode_record(g.value())?)),
        }
    }

    fn load_head(&self, key: &str) -> Result<Option<RecordHead>, Failure> {
        match self.kv.get(key)? {
            None => Ok(None),
            Some(g) => Ok(Some(decode_head(g.value())?)),
        }
    }

    fn compare(&self, c: &Compare) -> Result<bool, Failure> {
        Ok(match c {
            Compare::ModRevision(k, rev) => {
                self.load_head(k)?.map_or(0, |r| r.mod_revision) == *rev
            }
            Compare::Version(k, ver) => self.load_head(k)?.map_or(0, |r| r.version) == *ver,
            Compare::Value(k, v) => self.load(k)?.is_some_and(|r| r.value == *v),
        })
    }

    /// Checks the ops of the chosen branch before touching anything, so a rejected request
    /// leaves no partial writes in the shared batch transaction.
    fn validate(&self, ops: &[Op]) -> Result<(), Failure> {
        for op in ops {
            let (Op::Put { key, .. } | Op::Delete { key } | Op::Get { key }) = op;
            if key.is_empty() {
                return Err(Failure::Request(StoreError::Invalid("empty key".into())));
            }
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && self.leases.get(lease.0)?.is_none()
            {
                return Err(Failure::Request(StoreError::LeaseNotFound(*lease)));
            }
        }
        Ok(())
    }

    pub fn apply_txn(&mut self, txn: Txn) -> Result<TxnResult, Failure> {
        let mut succeeded = true;
        for c in &txn.compares {
            if !self.compare(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { txn.success } else { txn.failure };
        self.validate(&ops)?;
        let rev = self.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(self.apply_op(op, rev, &mut events)?);
        }
        self.stage(rev, events)?;
        Ok(TxnResult {
            succeeded,
            revision: self.revision,
            responses,
        })
    }

    fn apply_op(
        &mut self,
        op: Op,
        rev: u64,
        events: &mut Vec<WatchEvent>,
    ) -> Result<OpResponse, Failure> {
        match op {
            Op::Get { key } => Ok(OpResponse::Get {
                kv: self.load(&key)?.map(|r| r.into_kv(&key)),
            }),
            Op::Put { key, value, lease } => {
                let old = self.load_head(&key)?;
                let old_lease = old.and_then(|o| o.lease);
                if let Some(l) = old_lease.filter(|l| Some(*l) != lease) {
                    self.lease_keys.remove((l.0, key.as_str()))?;
                }
                if let Some(l) = lease {
                    self.lease_keys.insert((l.0, key.as_str()), ())?;
                }
                let record = Record {
                    create_revision: old.map_or(rev, |o| o.create_revision),
                    mod_revision: rev,
                    version: old.map_or(1, |o| o.version + 1),
                    lease,
                    value,
                };
                self.kv
                    .insert(key.as_str(), encode_record(&record).as_slice())?;
                events.push(WatchEvent::Put(record.into_kv(&key)));
                Ok(OpResponse::Put {
                    prev_mod_revision: old.map_or(0, |o| o.mod_revision),
                })
            }
            Op::Delete { key } => Ok(OpResponse::Delete {
                deleted: u64::from(self.delete_key(&key, rev, events)?),
            }),
        }
    }

    /// Removes a key (and its lease link); records a Delete event if it existed.
    fn delete_key(
        &mut self,
        key: &str,
        rev: u64,
        events: &mut Vec<WatchEvent>,
    ) -> Result<bool, Failure> {
        let old = match self.kv.remove(key)? {
            None => return Ok(false),
            Some(g) => decode_head(g.value())?,
        };
        if let Some(l) = old.lease {
            self.lease_keys.remove((l.0, key))?;
        }
        events.push(WatchEvent::Delete {
            key: key.to_owned(),
            revision: rev,
        });
        Ok(true)
    }

    /// Takes a request's revision if it changed anything, and keeps its events for the batch's
    /// history row (written by [`Self::finish`]) and for the watchers.
    fn stage(&mut self, rev: u64, events: Vec<WatchEvent>) -> Result<(), Failure> {
        if events.is_empty() {
            return Ok(());
        }
        self.revision = rev;
        self.events.push(RevisionEvents {
            revision: rev,
            events,
        });
        Ok(())
    }

    pub fn grant_lease(&mut self, ttl: Duration) -> Result<LeaseId, Failure> {
        let id = self.meta.get(META_NEXT_LEASE)?.map_or(1, |g| g.value());
        let next = id
            .checked_add(1)
            .filter(|n| *n <= i64::MAX as u64)
            .ok_or_else(|| Failure::Request(StoreError::Internal("lease ids exhausted".into())))?;
        self.meta.insert(META_NEXT_LEASE, next)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.leases.insert(id as i64, ttl_ms)?;
        Ok(LeaseId(id as i64))
    }

    /// Ends a lease and deletes its keys at one new revision. Returns whether it existed.
    pub fn end_lease(&mut self, id: LeaseId) -> Result<bool, Failure> {
        if self.leases.remove(id.0)?.is_none() {
            return Ok(false);
        }
        let mut keys = Vec::new();
        for entry in self.lease_keys.range((id.0, "")..)? {
            let (k, _) = entry?;
            let (lease, key) = k.value();
            if lease != id.0 {
                break;
            }
            keys.push(key.to_owned());
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for key in keys {
            // The link is removed by delete_key; a stale link (key re-put without the lease)
            // is dropped without deleting the key.
            match self.load_head(&key)? {
                Some(r) if r.lease == Some(id) => {
                    self.delete_key(&key, rev, &mut events)?;
                }
                _ => {
                    self.lease_keys.remove((id.0, key.as_str()))?;
                }
            }
        }
        self.stage(rev, events)?;
        Ok(true)
    }

    /// Explicit compaction: drops history before `rev`.
    pub fn compact(&mut self, rev: u64) -> Result<(), Failure> {
        if rev > self.revision {
            return Err(Failure::Request(StoreError::Invalid(format!(
                "cannot compact to future revision {rev} (current {})",
                self.revision
            ))));
        }
        self.compact_to(rev)
    }

    /// History rows are keyed by their batch's first revision, so the row holding `rev` may
    /// start before it: rows keyed below that row's key hold only older revisions and go; that
    /// row stays (its older revisions are hidden by `oldest`, which replay checks).
    fn compact_to(&mut self, rev: u64) -> Result<(), Failure> {
        if rev <= self.oldest {
            return Ok(());
        }
        let cut = match self.history.range(..=rev)?.next_back() {
            Some(row) => row?.0.value(),
            None => rev,
        };
        self.history.retain_in(..cut, |_, _| false)?;
        self.oldest = rev;
        self.meta.insert(META_OLDEST, rev)?;
        Ok(())
    }

    /// Writes the batch's history row (keyed by its first revision), persists the batch's
    /// revision and prunes history to the newest `keep` revisions.
    pub fn finish(&mut self, keep: u64) -> Result<(), Failure> {
        if let Some(first) = self.events.first() {
            self.history
                .insert(first.revision, encode_history(&self.events).as_slice())?;
        }
        self.meta.insert(META_REVISION, self.revision)?;
        if self.revision >= keep {
            self.compact_to(self.revision - keep + 1)?;
        }
        Ok(())
    }
}
