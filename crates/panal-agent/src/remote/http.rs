//! HTTPS clients for the agent endpoint, and how its answers become link errors.

use super::AgentIdentity;
use crate::link::LinkError;
use panal_types::{ApiError, ErrorCode};
use std::time::Duration;

/// How long connecting may take before the control plane counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn base(ca_pem: &str) -> Result<reqwest::ClientBuilder, String> {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|e| format!("the CA certificate is not valid PEM: {e}"))?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(10)))
}

/// A client that trusts only the control plane's CA and has no certificate of its own (joining).
pub(super) fn pinned(ca_pem: &str) -> Result<reqwest::Client, String> {
    base(ca_pem)?.build().map_err(|e| e.to_string())
}

/// A client that trusts only the control plane's CA and proves the host's identity.
pub(super) fn mutual(id: &AgentIdentity) -> Result<reqwest::Client, String> {
    let pem = format!("{}\n{}", id.cert_pem, id.key_pem);
    let identity = reqwest::Identity::from_pem(pem.as_bytes())
        .map_err(|e| format!("the agent's certificate or key is unusable: {e}"))?;
    base(&id.ca_pem)?
        .identity(identity)
        .build()
        .map_err(|e| e.to_string())
}

/// The error a refused request carries (the API's error body, or one made from the status).
pub(super) async fn refusal(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    serde_json::from_slice::<ApiError>(&body).unwrap_or_else(|_| {
        let code = match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            503 => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, format!("the control plane answered {status}"))
    })
}

/// A failed exchange as the agent sees it: transport failures and 5xx are worth retrying.
pub(super) fn transport(e: reqwest::Error) -> LinkError {
    LinkError::Unavailable(format!("{e:#}"))
}

/// Checks an answer, turning refusals into link errors.
pub(super) async fn check(resp: reqwest::Response) -> Result<reqwest::Response, LinkError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let e = refusal(resp).await;
    Err(match e.code {
        ErrorCode::Unavailable | ErrorCode::Internal => LinkError::Unavailable(e.message),
        _ => LinkError::Rejected(e),
    })
}
