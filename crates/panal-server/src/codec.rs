//! How objects are stored: JSON inside a small envelope that carries the format version, so a
//! newer binary can convert old records and an older binary refuses data it does not understand
//! instead of misreading it. The rules for changing the format are in `docs/store-format.md`.

use panal_store::StoreError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The stored-data format this binary writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    v: u32,
    data: &'a T,
}

#[derive(Deserialize)]
struct EnvelopeIn<T> {
    v: u32,
    data: T,
}

/// Encodes an object for the store.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain-data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(&EnvelopeOut {
        v: FORMAT_VERSION,
        data: value,
    })
    .unwrap_or_default()
}

/// Decodes an object read from the store, in one pass over the bytes: the envelope and the
/// object are parsed together. Only when that fails is the envelope alone read again, to tell
/// a record from a newer format apart from a damaged one.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match serde_json::from_slice::<EnvelopeIn<T>>(bytes) {
        Ok(env) if env.v <= FORMAT_VERSION => Ok(env.data),
        Ok(env) => Err(newer(key, env.v)),
        Err(e) => match serde_json::from_slice::<EnvelopeIn<serde::de::IgnoredAny>>(bytes) {
            Ok(env) if env.v > FORMAT_VERSION => Err(newer(key, env.v)),
            Ok(_) => Err(StoreError::Corrupt(format!("{key}: {e}"))),
            Err(e) => Err(StoreError::Corrupt(format!(
                "{key}: not a Panal record: {e}"
            ))),
        },
    }
}

fn newer(key: &str, v: u32) -> StoreError {
    StoreError::Corrupt(format!(
        "{key}: stored with format {v} but this binary understands up to {FORMAT_VERSION}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        n: u32,
    }

    #[test]
    fn round_trip_and_errors() {
        let bytes = encode(&Thing { n: 7 });
        assert_eq!(decode::<Thing>("k", &bytes).unwrap(), Thing { n: 7 });
        let newer = br#"{"v":99,"data":{"n":"no longer a number"}}"#;
        let e = decode::<Thing>("k", newer).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
        let damaged = br#"{"v":1,"data":{"n":"x"}}"#;
        let e = decode::<Thing>("k", damaged).unwrap_err().to_string();
        assert!(
            e.contains("k: ") && !e.contains("not a Panal record"),
            "{e}"
        );
        let e = decode::<Thing>("k", b"garbage").unwrap_err().to_string();
        assert!(e.contains("not a Panal record"), "{e}");
    }
}
