//! Byte layouts of what the embedded engine stores in redb: a key's record (revisions, lease,
//! value) and one committed batch's watch events in the history log.
//!
//! Hand-rolled little-endian layouts rather than serde: they sit on the hot write path and are
//! trivially versioned by the store's `format` meta entry. Decoding never panics on short or
//! damaged input; it reports [`StoreError::Corrupt`].

use super::watch::RevisionEvents;
use crate::{KeyValue, LeaseId, StoreError, WatchEvent};

/// What the `kv` table holds for one key (the key itself is the table key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<LeaseId>,
    pub value: Vec<u8>,
}

impl Record {
    pub fn into_kv(self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// Lease 0 is never granted (etcd's convention), so it encodes "no lease".
fn lease_to_raw(lease: Option<LeaseId>) -> i64 {
    lease.map_or(0, |l| l.0)
}

fn lease_from_raw(raw: i64) -> Option<LeaseId> {
    (raw != 0).then_some(LeaseId(raw))
}

/// Layout: create u64 | mod u64 | version u64 | lease i64 | value bytes (rest).
pub(super) fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + r.value.len());
    out.extend_from_slice(&r.create_revision.to_le_bytes());
    out.extend_from_slice(&r.mod_revision.to_le_bytes());
    out.extend_from_slice(&r.version.to_le_bytes());
    out.extend_from_slice(&lease_to_raw(r.lease).to_le_bytes());
    out.extend_from_slice(&r.value);
    out
}

/// A record's revisions and lease without its value: what a put needs to know about the key it
/// replaces, read without copying the old value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordHead {
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: Option<LeaseId>,
}

pub(super) fn decode_head(bytes: &[u8]) -> Result<RecordHead, StoreError> {
    let mut r = Reader(bytes);
    Ok(RecordHead {
        create_revision: r.u64()?,
        mod_revision: r.u64()?,
        version: r.u64()?,
        lease: lease_from_raw(r.u64()? as i64),
    })
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<Record, StoreError> {
    let mut r = Reader(bytes);
    Ok(Record {
        create_revision: r.u64()?,
        mod_revision: r.u64()?,
        version: r.u64()?,
        lease: lease_from_raw(r.u64()? as i64),
        value: r.0.to_vec(),
    })
}

/// One history row holds a whole committed batch. Layout: revision count u32, then per
/// revision: revision u64 | event count u32 | events, where an event is kind u8 (0 put,
/// 1 delete) | key len u32 | key and, for a put: create u64 | version u64 | lease i64 |
/// value len u32 | value. One row per batch rather than per revision keeps a group commit's
/// history to one B-tree insert (one dirty page) whatever the batch size.
pub(super) fn encode_history(revisions: &[RevisionEvents]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(revisions.len() as u32).to_le_bytes());
    for r in revisions {
        out.extend_from_slice(&r.revision.to_le_bytes());
        out.extend_from_slice(&(r.events.len() as u32).to_le_bytes());
        for ev in &r.events {
            match ev {
                WatchEvent::Put(kv) => {
                    out.push(0);
                    put_bytes(&mut out, kv.key.as_bytes());
                    out.extend_from_slice(&kv.create_revision.to_le_bytes());
                    out.extend_from_slice(&kv.version.to_le_bytes());
                    out.extend_from_slice(&lease_to_raw(kv.lease).to_le_bytes());
                    put_bytes(&mut out, &kv.value);
                }
                WatchEvent::Delete { key, .. } => {
                    out.push(1);
                    put_bytes(&mut out, key.as_bytes());
                }
            }
        }
    }
    out
}

/// Decodes one history row, keeping events of revisions in `revisions` on keys under `prefix`.
pub(super) fn decode_history(
    bytes: &[u8],
    prefix: &str,
    revisions: std::ops::RangeInclusive<u64>,
) -> Result<Vec<WatchEvent>, StoreError> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    for _ in 0..r.u32()? {
        let revision = r.u64()?;
        let wanted = revisions.contains(&revision);
        for _ in 0..r.u32()? {
            let kind = r.u8()?;
            let key = r.bytes()?;
            // Only the events handed out are turned into owned strings and values.
            let keep = wanted && key.starts_with(prefix.as_bytes());
            match kind {
                0 => {
                    let create_revision = r.u64()?;
                    let version = r.u64()?;
                    let lease = lease_from_raw(r.u64()? as i64);
                    let value = r.bytes()?;
                    if keep {
                        out.push(WatchEvent::Put(KeyValue {
                            key: utf8(key)?,
                            value: value.to_vec(),
                            create_revision,
                            mod_revision: revision,
                            version,
                            lease,
                        }));
                    }
                }
                1 if keep => out.push(WatchEvent::Delete {
                    key: utf8(key)?,
                    revision,
                }),
                1 => {}
                other => return Err(corrupt(&format!("unknown event kind {other}"))),
            }
        }
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(b.to_vec()).map_err(|_| corrupt("key is not UTF-8"))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("bad stored entry: {what}"))
}

/// A cursor over stored bytes that fails instead of panicking when they run short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_truncation() {
        let r = Record {
            create_revision: 3,
            mod_revision: 9,
            version: 4,
            lease: Some(LeaseId(77)),
            value: b"hello".to_vec(),
        };
        let bytes = encode_record(&r);
        assert_eq!(decode_record(&bytes).expect("decode"), r);
        assert!(matches!(
            decode_record(&bytes[..20]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn history_round_trips_with_revision_and_prefix_filters() {
        let put = WatchEvent::Put(KeyValue {
            key: "a/1".into(),
            value: vec![1, 2],
            create_revision: 5,
            mod_revision: 7,
            version: 2,
            lease: None,
        });
        let del = WatchEvent::Delete {
            key: "b/1".into(),
            revision: 8,
        };
        let bytes = encode_history(&[
            RevisionEvents {
                revision: 7,
                events: vec![put.clone()],
            },
            RevisionEvents {
                revision: 8,
                events: vec![del.clone()],
            },
        ]);
        let all = decode_history(&bytes, "", 0..=u64::MAX).expect("decode");
        assert_eq!(all, vec![put.clone(), del.clone()]);
        assert_eq!(
            decode_history(&bytes, "a/", 0..=u64::MAX).expect("decode"),
            vec![put]
        );
        assert_eq!(
            decode_history(&bytes, "", 8..=9).expect("decode"),
            vec![del]
        );
        assert!(decode_history(&bytes[..bytes.len() - 1], "", 0..=u64::MAX).is_err());
    }
}
