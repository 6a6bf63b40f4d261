//! The stored-data format check at start-up: an empty store is stamped with this binary's
//! format; a store written by a newer binary is refused with both versions named.

use crate::codec::FORMAT_VERSION;
use crate::keys;
use crate::repo::{Repo, store_error};
use panal_store::StoreExt;
use panal_types::ApiError;

/// Stamps or checks the format version.
pub async fn check_or_init(repo: &Repo) -> Result<(), ApiError> {
    let store = repo.store();
    match store.get(keys::FORMAT).await.map_err(store_error)? {
        None => {
            store
                .create(keys::FORMAT, FORMAT_VERSION.to_string().into_bytes())
                .await
                .map_err(store_error)?;
            Ok(())
        }
        Some(kv) => {
            let found: u32 = std::str::from_utf8(&kv.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| ApiError::unavailable("the store's format marker is unreadable"))?;
            if found > FORMAT_VERSION {
                return Err(ApiError::unavailable(format!(
                    "the store holds data of format {found}; this binary understands formats up to {FORMAT_VERSION}; upgrade Panal"
                )));
            }
            Ok(())
        }
    }
}
