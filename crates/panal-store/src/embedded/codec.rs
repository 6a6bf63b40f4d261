//! Byte layouts of what the embedded engine stores in redb: a key's record (revisions, lease,
//! value) and one revision's watch events in the history log.
//!
//! Hand-rolled little-endian layouts rather than serde: they sit on the hot write path and are
//! trivially versioned by the store's `format` meta entry. Decoding never panics on short or
//! damaged input; it reports [`StoreError::Corrupt`].

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

/// Layout: count u32, then per event: kind u8 (0 put, 1 delete) | key len u32 | key, and for a
/// put: create u64 | version u64 | lease i64 | value len u32 | value. The revision is the history
/// table's key, so it is not repeated per event.
pub(super) fn encode_events(events: &[WatchEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for ev in events {
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
    out
}

/// Decodes one revision's events, keeping only keys under `prefix`.
pub(super) fn decode_events(
    revision: u64,
    bytes: &[u8],
    prefix: &str,
) -> Result<Vec<WatchEvent>, StoreError> {
    let mut r = Reader(bytes);
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let kind = r.u8()?;
        let key = r.string()?;
        match kind {
            0 => {
                let create_revision = r.u64()?;
                let version = r.u64()?;
                let lease = lease_from_raw(r.u64()? as i64);
                let value = r.bytes()?.to_vec();
                if key.starts_with(prefix) {
                    out.push(WatchEvent::Put(KeyValue {
                        key,
                        value,
                        create_revision,
                        mod_revision: revision,
                        version,
                        lease,
                    }));
                }
            }
            1 => {
                if key.starts_with(prefix) {
                    out.push(WatchEvent::Delete { key, revision });
                }
            }
            other => return Err(corrupt(&format!("unknown event kind {other}"))),
        }
    }
    Ok(out)
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

    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("key is not UTF-8"))
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
    fn events_round_trip_with_prefix_filter() {
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
            revision: 7,
        };
        let bytes = encode_events(&[put.clone(), del.clone()]);
        assert_eq!(
            decode_events(7, &bytes, "").expect("decode"),
            vec![put.clone(), del]
        );
        assert_eq!(decode_events(7, &bytes, "a/").expect("decode"), vec![put]);
        assert!(decode_events(7, &bytes[..bytes.len() - 1], "").is_err());
    }
}
