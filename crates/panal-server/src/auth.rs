//! API tokens. A token is 32 random bytes shown once (hex, prefixed `panal_`); the store keeps
//! only its SHA-256, so reading the store does not reveal working credentials.

use crate::codec::encode;
use crate::keys;
use crate::repo::Repo;
use panal_types::ApiError;
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
}

/// The stored record of a token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Who or what it is for.
    pub name: String,
    /// What it grants.
    pub role: Role,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Who made a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Role.
    pub role: Role,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token and returns its secret (the only time it is visible).
pub async fn create_token(repo: &Repo, name: &str, role: Role) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("panal_{}", hex::encode(bytes));
    let record = TokenRecord {
        name: name.to_owned(),
        role,
        created_at: chrono::Utc::now(),
    };
    repo.store()
        .txn(panal_store::Txn::new().and_then(panal_store::Op::put(
            &keys::token(&hash(&secret)),
            encode(&record),
        )))
        .await
        .map_err(crate::repo::store_error)?;
    Ok(secret)
}

/// How long a verified token is trusted without asking the store again: every request would
/// otherwise cost a store read (a network round trip on etcd). Revocation takes this long.
const VERIFIED_TTL: Duration = Duration::from_secs(5);

type VerifiedCache = Mutex<HashMap<String, (Caller, Instant)>>;

fn verified() -> &'static VerifiedCache {
    static CACHE: OnceLock<VerifiedCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Looks a presented token up; `None` if it is unknown.
pub async fn verify(repo: &Repo, presented: &str) -> Result<Option<Caller>, ApiError> {
    if presented.is_empty() || presented.len() > 256 {
        return Ok(None);
    }
    // Keyed by the store too, so platforms sharing a process never vouch for each other.
    let key = format!("{:p}/{}", Arc::as_ptr(repo.store()), hash(presented));
    if let Some((caller, at)) = verified().lock().get(&key)
        && at.elapsed() < VERIFIED_TTL
    {
        return Ok(Some(caller.clone()));
    }
    let caller = repo
        .get::<TokenRecord>(&keys::token(&hash(presented)))
        .await?
        .map(|r| Caller {
            name: r.value.name,
            role: r.value.role,
        });
    if let Some(c) = &caller {
        let mut cache = verified().lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, (c.clone(), Instant::now()));
    }
    Ok(caller)
}
