//! Who is calling: the host named by the caller's verified client certificate. Every
//! authenticated agent route gets an [`AgentHost`] and acts on that host only.

use crate::api::error::Failure;
use crate::app::App;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use panal_types::{ApiError, ErrorCode, Name};
use std::sync::Arc;

/// The client certificate of a connection (DER), verified against the CA by the handshake.
#[derive(Clone)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// The host whose agent is calling.
#[derive(Clone, Debug)]
pub struct AgentHost(pub Name);

/// Refuses requests without a certificate that names a joined host.
pub async fn require_agent(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    let Some(cert) = cert else {
        return Failure(ApiError::new(
            ErrorCode::Unauthorized,
            "a client certificate from this control plane is required (join first)",
        ))
        .into_response();
    };
    match app.agent_host(&cert).await {
        Ok(Some(host)) => {
            req.extensions_mut().insert(AgentHost(host));
            next.run(req).await
        }
        Ok(None) => Failure(ApiError::new(
            ErrorCode::Unauthorized,
            "this certificate was replaced or revoked; join again",
        ))
        .into_response(),
        Err(e) => Failure(e).into_response(),
    }
}
