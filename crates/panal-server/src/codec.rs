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

/// Decodes an object read from the store.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let env: EnvelopeIn<serde_json::Value> = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{key}: not a Panal record: {e}")))?;
    if env.v > FORMAT_VERSION {
        return Err(StoreError::Corrupt(format!(
            "{key}: stored with format {} but this binary understands up to {FORMAT_VERSION}",
            env.v
        )));
    }
    serde_json::from_value(env.data).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}
