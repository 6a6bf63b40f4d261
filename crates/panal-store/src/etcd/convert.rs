//! Translation between the store interface and etcd's wire types: key prefixing, ranges,
//! transactions, key-values and errors. Pure functions, no I/O.

use crate::{Compare, KeyValue, LeaseId, Op, OpResponse, StoreError, Txn, TxnResult};
use etcd_client as ec;

/// Maps interface keys to wire keys under the deployment's prefix, and back.
#[derive(Clone, Debug)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn wire(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The interface key of a wire key; keys outside the prefix or not UTF-8 are corrupt for us.
    pub fn local(&self, wire: &[u8]) -> Result<String, StoreError> {
        let rest = wire
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| StoreError::Corrupt("etcd returned a key outside the prefix".into()))?;
        String::from_utf8(rest.to_vec())
            .map_err(|_| StoreError::Corrupt("etcd returned a key that is not UTF-8".into()))
    }

    pub fn kv(&self, kv: &ec::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.local(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: rev(kv.create_revision()),
            mod_revision: rev(kv.mod_revision()),
            version: rev(kv.version()),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }

    /// The `[start, end)` wire range of keys under `prefix` after `start_after`.
    pub fn range(&self, prefix: &str, start_after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let wire_prefix = self.wire(prefix);
        let end = prefix_end(&wire_prefix);
        let start = match start_after {
            Some(after) if after >= prefix => {
                let mut k = self.wire(after);
                k.push(0); // the smallest key after `after`
                k
            }
            _ => wire_prefix,
        };
        (start, end)
    }
}

/// The first key after every key starting with `prefix` (etcd's range_end for a prefix);
/// `\0` (etcd: "to the end of the keyspace") for an empty or all-0xff prefix.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// etcd revisions and versions are non-negative i64s.
pub(super) fn rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

pub(super) fn wire_rev(r: u64) -> Result<i64, StoreError> {
    i64::try_from(r).map_err(|_| StoreError::Invalid(format!("revision {r} is out of range")))
}

/// Builds the etcd transaction. Empty keys are refused here: with a key prefix etcd would
/// accept them (as the prefix itself), unlike the embedded engine.
pub(super) fn txn(keys: &Keys, t: &Txn) -> Result<ec::Txn, StoreError> {
    let mut compares = Vec::with_capacity(t.compares.len());
    for c in &t.compares {
        compares.push(match c {
            Compare::ModRevision(k, r) => {
                ec::Compare::mod_revision(keys.wire(k), ec::CompareOp::Equal, wire_rev(*r)?)
            }
            Compare::Version(k, v) => {
                ec::Compare::version(keys.wire(k), ec::CompareOp::Equal, wire_rev(*v)?)
            }
            Compare::Value(k, v) => {
                ec::Compare::value(keys.wire(k), ec::CompareOp::Equal, v.clone())
            }
        });
    }
    Ok(ec::Txn::new()
        .when(compares)
        .and_then(ops(keys, &t.success)?)
        .or_else(ops(keys, &t.failure)?))
}

fn ops(keys: &Keys, ops: &[Op]) -> Result<Vec<ec::TxnOp>, StoreError> {
    ops.iter()
        .map(|op| {
            let (Op::Put { key, .. } | Op::Delete { key } | Op::Get { key }) = op;
            if key.is_empty() {
                return Err(StoreError::Invalid("empty key".into()));
            }
            Ok(match op {
                Op::Put { key, value, lease } => {
                    // prev_kv gives the replaced key's mod revision (OpResponse::Put).
                    let mut opts = ec::PutOptions::new().with_prev_key();
                    if let Some(l) = lease {
                        opts = opts.with_lease(l.0);
                    }
                    ec::TxnOp::put(keys.wire(key), value.clone(), Some(opts))
                }
                Op::Delete { key } => ec::TxnOp::delete(keys.wire(key), None),
                Op::Get { key } => ec::TxnOp::get(keys.wire(key), None),
            })
        })
        .collect()
}

pub(super) fn txn_result(keys: &Keys, r: &ec::TxnResponse) -> Result<TxnResult, StoreError> {
    let mut responses = Vec::new();
    for op in r.op_responses() {
        responses.push(match op {
            ec::TxnOpResponse::Put(p) => OpResponse::Put {
                prev_mod_revision: p.prev_key().map_or(0, |kv| rev(kv.mod_revision())),
            },
            ec::TxnOpResponse::Delete(d) => OpResponse::Delete {
                deleted: rev(d.deleted()),
            },
            ec::TxnOpResponse::Get(g) => OpResponse::Get {
                kv: g.kvs().first().map(|kv| keys.kv(kv)).transpose()?,
            },
            ec::TxnOpResponse::Txn(_) => {
                return Err(StoreError::Internal(
                    "unexpected nested txn response".into(),
                ));
            }
        });
    }
    Ok(TxnResult {
        succeeded: r.succeeded(),
        revision: r.header().map_or(0, |h| rev(h.revision())),
        responses,
    })
}

/// The first lease a transaction's ops attach keys to (to name it in `LeaseNotFound`).
pub(super) fn first_lease(t: &Txn) -> Option<LeaseId> {
    t.success.iter().chain(&t.failure).find_map(|op| match op {
        Op::Put { lease, .. } => *lease,
        _ => None,
    })
}

/// Whether a failure happened before the request reached any member (connection refused), so
/// sending it again cannot apply it twice.
pub(super) fn never_sent(e: &ec::Error) -> bool {
    let msg = match e {
        ec::Error::GRpcStatus(s) => s.message().to_owned(),
        ec::Error::TransportError(e) => e.to_string(),
        _ => return false,
    };
    msg.contains("tcp connect error") || msg.contains("Connection refused")
}

/// Whether etcd refused because the member has no leader (an election is under way, or quorum
/// is lost); such a request was never proposed.
pub(super) fn no_leader(e: &ec::Error) -> bool {
    matches!(e, ec::Error::GRpcStatus(s) if s.message().contains("no leader"))
}

/// What an etcd failure means for the caller.
pub(super) enum Failure {
    /// A mapped error, final.
    Store(StoreError),
    /// etcd said "requested lease not found": the caller knows which lease.
    LeaseNotFound,
    /// etcd said the revision asked for is compacted.
    Compacted,
}

pub(super) fn classify(e: ec::Error) -> Failure {
    use tonic::Code;
    let status = match e {
        ec::Error::GRpcStatus(s) => s,
        ec::Error::TransportError(e) => {
            return Failure::Store(StoreError::Unavailable(format!("etcd unreachable: {e}")));
        }
        ec::Error::IoError(e) => {
            return Failure::Store(StoreError::Unavailable(format!("etcd I/O error: {e}")));
        }
        ec::Error::InvalidArgs(m) | ec::Error::EndpointError(m) => {
            return Failure::Store(StoreError::Invalid(format!("etcd client: {m}")));
        }
        // etcd-client turns etcd's TTL-0 answer to a renewal into this error.
        ec::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            return Failure::LeaseNotFound;
        }
        ec::Error::InvalidUri(e) => {
            return Failure::Store(StoreError::Invalid(format!("bad etcd endpoint: {e}")));
        }
        e => return Failure::Store(StoreError::Internal(format!("etcd client: {e}"))),
    };
    let msg = status.message();
    let text = format!("etcd: {msg}");
    if msg.contains("lease not found") {
        return Failure::LeaseNotFound;
    }
    if msg.contains("required revision has been compacted") {
        return Failure::Compacted;
    }
    if msg.contains("authentication failed") || msg.contains("user name is empty") {
        return Failure::Store(StoreError::AccessDenied(text));
    }
    Failure::Store(match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown => StoreError::Unavailable(text),
        Code::Unauthenticated | Code::PermissionDenied => StoreError::AccessDenied(text),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StoreError::Invalid(text)
        }
        _ => StoreError::Internal(text),
    })
}

/// Maps a failure where neither a lease nor a compacted revision is expected.
pub(super) fn store_err(e: ec::Error) -> StoreError {
    classify(e).into_store()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn ranges_start_after_inside_the_prefix_only() {
        let k = Keys::new("/p/");
        assert_eq!(k.range("r/", None), (b"/p/r/".to_vec(), b"/p/r0".to_vec()));
        assert_eq!(k.range("r/", Some("r/b")).0, b"/p/r/b\0".to_vec());
        assert_eq!(k.range("r/", Some("a")).0, b"/p/r/".to_vec());
        assert_eq!(k.local(b"/p/r/x").expect("local"), "r/x");
        assert!(k.local(b"/q/x").is_err());
    }
}
