//! Joining hosts: single-use, expiring join tokens that an administrator hands to a new host,
//! and the exchange in which the host's agent trades one for a certificate.

use crate::Name;
use serde::{Deserialize, Serialize};

/// Shortest join-token lifetime accepted, in seconds.
pub const MIN_TOKEN_TTL: u64 = 60;
/// Longest join-token lifetime accepted, in seconds (one week).
pub const MAX_TOKEN_TTL: u64 = 7 * 24 * 3600;
/// Lifetime of a join token when none is asked for, in seconds.
pub const DEFAULT_TOKEN_TTL: u64 = 3600;

/// Body of `POST /api/v1/join-tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenCreate {
    /// Seconds until the token expires (60 to 604800; default 3600).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Only a host of this name may join with it. Needed to re-join a host that already has a
    /// certificate (the new certificate replaces the old one).
    #[serde(default)]
    pub host: Option<String>,
    /// Free text, at most 200 characters.
    #[serde(default)]
    pub description: Option<String>,
}

/// Where a join token is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinTokenState {
    /// Usable.
    Valid,
    /// A host joined with it.
    Used,
    /// Past its expiry.
    Expired,
    /// Revoked by an administrator.
    Revoked,
}

/// A join token as the API shows it (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinToken {
    /// Public identifier (the part of the token before the first dot).
    pub id: String,
    /// Where it is in its life.
    pub state: JoinTokenState,
    /// The only host name it admits, if bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Name>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// When it was made.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// When a host joined with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The host that joined with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<Name>,
}

/// Answer to `POST /api/v1/join-tokens`: the token, shown this once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JoinTokenCreated {
    /// The token's record.
    #[serde(flatten)]
    pub record: JoinToken,
    /// The secret to give `panal agent --token`: `ID.SECRET.CA-SHA256`. The last part pins the
    /// control plane's CA, so the agent can trust the control plane before it has a
    /// certificate of its own.
    pub token: String,
}

/// Body of `POST /agent/v1/join` (agent listener, no client certificate yet).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentJoin {
    /// The join token (`ID.SECRET.CA-SHA256`).
    pub token: String,
    /// The name the host wants.
    pub host: String,
    /// A PKCS#10 certificate request (PEM) for the agent's own key.
    pub csr_pem: String,
}

/// Answer to a successful join.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentJoined {
    /// The host's name.
    pub host: Name,
    /// The agent's certificate (PEM).
    pub certificate_pem: String,
    /// The control plane's CA certificate (PEM).
    pub ca_pem: String,
}

/// The parts of a join token string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenParts {
    /// Public identifier.
    pub id: String,
    /// Secret.
    pub secret: String,
    /// SHA-256 of the control plane's CA certificate, hex.
    pub ca_sha256: String,
}

impl JoinTokenParts {
    /// Splits a token string; `None` when it is not shaped like one.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.trim().split('.');
        let (id, secret, ca) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !hex(id, 12) || !hex(secret, 32) || !hex(ca, 64) {
            return None;
        }
        Some(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }

    /// The token string.
    pub fn render(&self) -> String {
        format!("{}.{}.{}", self.id, self.secret, self.ca_sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::JoinTokenParts;

    #[test]
    fn parses_what_it_renders_and_nothing_malformed() {
        let t = JoinTokenParts {
            id: "0123456789ab".into(),
            secret: "00112233445566778899aabbccddeeff".into(),
            ca_sha256: "ab".repeat(32),
        };
        assert_eq!(JoinTokenParts::parse(&t.render()), Some(t.clone()));
        for bad in [
            "",
            "x.y.z",
            "0123456789ab.00112233445566778899aabbccddeeff",
            &format!("{}.extra", t.render()),
            &t.render().replace('a', "g"),
        ] {
            assert_eq!(JoinTokenParts::parse(bad), None, "{bad}");
        }
    }
}
