//! Join tokens and agent identities. An administrator makes a single-use, expiring token; a new
//! host's agent presents it once with a certificate request and gets a certificate naming its
//! host. From then on the certificate's fingerprint is the agent's identity: every agent call is
//! checked against the host it names, and replacing or deleting the fingerprint's record
//! revokes it.

use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::keys;
use crate::pki::{Ca, fingerprint, pem_to_der};
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::join::{
    AgentJoin, AgentJoined, DEFAULT_TOKEN_TTL, JoinToken, JoinTokenCreate, JoinTokenCreated,
    JoinTokenParts, JoinTokenState, MAX_TOKEN_TTL, MIN_TOKEN_TTL,
};
use panal_types::page::Page;
use panal_types::{ApiError, ErrorCode, Name};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fingerprint → (host, when checked).
pub(super) type IdentityCache = Arc<Mutex<HashMap<String, (Name, Instant)>>>;

/// How long a recognised agent certificate is trusted without reading the store again; a
/// revoked certificate stops working within this time.
const IDENTITY_TTL: Duration = Duration::from_secs(5);
/// Longest join-token description.
const MAX_TOKEN_DESCRIPTION: usize = 200;

/// A join token as stored: the secret only as its SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JoinTokenRecord {
    id: String,
    secret_sha256: String,
    host: Option<Name>,
    description: String,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    used_at: Option<chrono::DateTime<chrono::Utc>>,
    used_by: Option<Name>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl JoinTokenRecord {
    fn state(&self, now: chrono::DateTime<chrono::Utc>) -> JoinTokenState {
        if self.revoked_at.is_some() {
            JoinTokenState::Revoked
        } else if self.used_at.is_some() {
            JoinTokenState::Used
        } else if now >= self.expires_at {
            JoinTokenState::Expired
        } else {
            JoinTokenState::Valid
        }
    }

    fn view(&self) -> JoinToken {
        JoinToken {
            id: self.id.clone(),
            state: self.state(chrono::Utc::now()),
            host: self.host.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            used_at: self.used_at,
            used_by: self.used_by.clone(),
        }
    }
}

/// Which host a certificate belongs to.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AgentIdentity {
    host: Name,
    fingerprint: String,
    issued_at: chrono::DateTime<chrono::Utc>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Equal without an early exit, so the time taken says nothing about how much matched.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn refused(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message).with_field("token")
}

impl App {
    /// The installation's CA (created on first use).
    pub async fn ca(&self) -> Result<Ca, ApiError> {
        self.ca
            .get_or_try_init(|| Ca::load_or_create(&self.repo))
            .await
            .cloned()
    }

    /// Makes a join token. Its secret is returned this once and stored only hashed.
    pub async fn create_join_token(
        &self,
        req: JoinTokenCreate,
    ) -> Result<JoinTokenCreated, ApiError> {
        let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL);
        if !(MIN_TOKEN_TTL..=MAX_TOKEN_TTL).contains(&ttl) {
            return Err(ApiError::invalid(
                "ttl_seconds",
                format!("must be {MIN_TOKEN_TTL} to {MAX_TOKEN_TTL} seconds"),
            ));
        }
        let host = req
            .host
            .as_deref()
            .map(|h| check_name("host", h))
            .transpose()?;
        let description = req.description.unwrap_or_default();
        if description.chars().count() > MAX_TOKEN_DESCRIPTION {
            return Err(ApiError::invalid(
                "description",
                format!("at most {MAX_TOKEN_DESCRIPTION} characters"),
            ));
        }
        let ca = self.ca().await?;
        let parts = JoinTokenParts {
            id: random_hex(6),
            secret: random_hex(16),
            ca_sha256: ca.sha256(),
        };
        let now = chrono::Utc::now();
        let record = JoinTokenRecord {
            id: parts.id.clone(),
            secret_sha256: sha256_hex(&parts.secret),
            host,
            description,
            created_at: now,
            expires_at: now + chrono::Duration::seconds(ttl as i64),
            used_at: None,
            used_by: None,
            revoked_at: None,
        };
        if self
            .repo
            .create(&keys::join_token(&record.id), &record)
            .await?
            .is_none()
        {
            return Err(ApiError::conflict("token id collision; try again"));
        }
        Ok(JoinTokenCreated {
            record: record.view(),
            token: parts.render(),
        })
    }

    /// Lists join tokens, in every state.
    pub async fn list_join_tokens(
        &self,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<JoinToken>, ApiError> {
        let (limit, start) = page_bounds(limit, token, keys::JOIN_TOKENS)?;
        let (items, more, _) = self
            .repo
            .list::<JoinTokenRecord>(keys::JOIN_TOKENS, start.as_deref(), limit)
            .await?;
        let items: Vec<JoinToken> = items.into_iter().map(|v| v.value.view()).collect();
        let last = items.last().map(|t| t.id.clone());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Revokes a join token; a used or expired one stays as it is (there is nothing left to
    /// revoke), a revoked one is answered as it stands.
    pub async fn revoke_join_token(&self, id: &str) -> Result<JoinToken, ApiError> {
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::invalid("id", "a join-token id is 12 hex digits"));
        }
        let record = self
            .repo
            .update::<JoinTokenRecord, _>(&keys::join_token(id), |r| {
                if r.state(chrono::Utc::now()) != JoinTokenState::Valid {
                    return Ok(false);
                }
                r.revoked_at = Some(chrono::Utc::now());
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("join token", id).with_field("id"))?;
        Ok(record.value.view())
    }

    /// Trades a join token for an agent certificate. The token is consumed and the host's
    /// identity recorded in one transaction, so a token admits exactly one host even when two
    /// agents race with it.
    pub async fn join_host(&self, req: AgentJoin) -> Result<AgentJoined, ApiError> {
        let host = check_name("host", &req.host)?;
        let parts = JoinTokenParts::parse(&req.token)
            .ok_or_else(|| refused("malformed join token (expected ID.SECRET.CA-SHA256)"))?;
        let ca = self.ca().await?;
        if parts.ca_sha256 != ca.sha256() {
            return Err(refused("the token was made by another control plane"));
        }
        let key = keys::join_token(&parts.id);
        let Some(current) = self.repo.get::<JoinTokenRecord>(&key).await? else {
            return Err(refused("unknown join token"));
        };
        let mut record = current.value;
        if !same_secret(&record.secret_sha256, &sha256_hex(&parts.secret)) {
            return Err(refused("unknown join token"));
        }
        match record.state(chrono::Utc::now()) {
            JoinTokenState::Valid => {}
            JoinTokenState::Used => return Err(refused("the join token was already used")),
            JoinTokenState::Expired => return Err(refused("the join token has expired")),
            JoinTokenState::Revoked => return Err(refused("the join token was revoked")),
        }
        if let Some(bound) = &record.host
            && bound != &host
        {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this join token admits only host \"{bound}\""),
            )
            .with_field("host"));
        }
        let host_key = keys::agent_host(host.as_str());
        let previous = self.repo.get::<AgentIdentity>(&host_key).await?;
        if previous.is_some() && record.host.is_none() {
            // Someone else's name: only a token made for that host may replace its identity.
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "host \"{host}\" has already joined; re-joining it needs a token made with --host {host}"
                ),
            )
            .with_field("host"));
        }
        let certificate_pem = ca.sign_agent(&req.csr_pem, &host)?;
        let der = pem_to_der(&certificate_pem).map_err(|e| {
            tracing::error!(error = %e, "issued certificate does not parse");
            ApiError::internal()
        })?;
        let identity = AgentIdentity {
            host: host.clone(),
            fingerprint: fingerprint(&der),
            issued_at: chrono::Utc::now(),
        };
        record.used_at = Some(identity.issued_at);
        record.used_by = Some(host.clone());
        let mut txn = Txn::new()
            .when(Compare::unchanged(&key, current.mod_revision))
            .when(Compare::unchanged(
                &host_key,
                previous.as_ref().map_or(0, |p| p.mod_revision),
            ))
            .and_then(Op::put(&key, encode(&record)))
            .and_then(Op::put(&host_key, encode(&identity)))
            .and_then(Op::put(
                &keys::agent_cert(&identity.fingerprint),
                encode(&identity),
            ));
        if let Some(p) = &previous {
            txn = txn.and_then(Op::delete(&keys::agent_cert(&p.value.fingerprint)));
        }
        if !self.repo.txn(txn).await?.succeeded {
            return Err(refused(
                "the join token was used concurrently (or the host joined meanwhile)",
            ));
        }
        if let Some(p) = previous {
            self.agent_ids.lock().remove(&p.value.fingerprint);
        }
        tracing::info!(host = %host, token = %parts.id, "host joined");
        Ok(AgentJoined {
            host,
            certificate_pem,
            ca_pem: ca.cert_pem().to_owned(),
        })
    }

    /// The host an agent certificate (DER, already verified against the CA by TLS) belongs
    /// to, or `None` when it was never issued or has been replaced.
    pub async fn agent_host(&self, cert_der: &[u8]) -> Result<Option<Name>, ApiError> {
        let fp = fingerprint(cert_der);
        if let Some((host, at)) = self.agent_ids.lock().get(&fp)
            && at.elapsed() < IDENTITY_TTL
        {
            return Ok(Some(host.clone()));
        }
        let found = self
            .repo
            .get::<AgentIdentity>(&keys::agent_cert(&fp))
            .await?
            .map(|v| v.value.host);
        let mut cache = self.agent_ids.lock();
        match &found {
            Some(host) => {
                cache.insert(fp, (host.clone(), Instant::now()));
            }
            None => {
                cache.remove(&fp);
            }
        }
        Ok(found)
    }
}
