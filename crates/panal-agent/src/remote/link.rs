//! [`ControlPlaneLink`] over mutual-TLS HTTPS: the calls the in-process link makes, as requests to
//! the control plane's agent endpoint. The host is never sent as a parameter the control plane
//! would trust: it reads it from the certificate.

use super::{AgentIdentity, http};
use crate::link::{AssignmentStream, ControlPlaneLink, LinkError};
use async_trait::async_trait;
use futures::StreamExt;
use panal_types::Name;
use panal_types::agent::{Assignment, HostRegistration, VmStatusReport};
use panal_types::host::Host;
use std::time::Duration;

/// How long a plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// An assignment stream silent for this long is dead (the server sends a keep-alive line every
/// five seconds): the agent reconnects instead of waiting on a connection a cut link killed.
const STREAM_IDLE: Duration = Duration::from_secs(15);

/// The link of a joined agent.
pub struct RemoteLink {
    http: reqwest::Client,
    base: String,
}

impl RemoteLink {
    /// A link with the agent's identity.
    pub fn new(identity: &AgentIdentity) -> Result<Self, String> {
        Ok(Self {
            http: http::mutual(identity)?,
            base: format!("{}/agent/v1", identity.url),
        })
    }

    /// The underlying client and base URL (for image fetches).
    pub(super) fn parts(&self) -> (&reqwest::Client, &str) {
        (&self.http, &self.base)
    }

    async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, LinkError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(http::transport)?;
        http::check(resp).await
    }
}

/// Splits a byte stream into lines; `Err` when the stream breaks or idles too long.
fn lines(
    body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + Unpin + 'static,
) -> impl futures::Stream<Item = Result<Vec<u8>, LinkError>> + Send {
    futures::stream::unfold(
        (body, Vec::<u8>::new(), false),
        |(mut body, mut buf, done)| async move {
            if done {
                return None;
            }
            loop {
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).take(pos).collect();
                    return Some((Ok(line), (body, buf, false)));
                }
                match tokio::time::timeout(STREAM_IDLE, body.next()).await {
                    Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
                    Ok(Some(Err(e))) => return Some((Err(http::transport(e)), (body, buf, true))),
                    Ok(None) => return None,
                    Err(_) => {
                        let e = LinkError::Unavailable("the assignment stream went silent".into());
                        return Some((Err(e), (body, buf, true)));
                    }
                }
            }
        },
    )
}

#[async_trait]
impl ControlPlaneLink for RemoteLink {
    async fn register(&self, registration: HostRegistration) -> Result<Host, LinkError> {
        self.post("/register", &registration)
            .await?
            .json()
            .await
            .map_err(http::transport)
    }

    async fn heartbeat(&self, _host: &Name) -> Result<(), LinkError> {
        self.post("/heartbeat", &serde_json::json!({}))
            .await
            .map(|_| ())
    }

    async fn assignments(&self, _host: &Name) -> Result<AssignmentStream, LinkError> {
        let resp = self
            .http
            .get(format!("{}/assignments", self.base))
            .send()
            .await
            .map_err(http::transport)?;
        let resp = http::check(resp).await?;
        let stream = lines(Box::pin(resp.bytes_stream())).filter_map(|line| async move {
            match line {
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
                Ok(l) => Some(
                    serde_json::from_slice::<Assignment>(&l)
                        .map_err(|e| LinkError::Unavailable(format!("unreadable assignment: {e}"))),
                ),
                Err(e) => Some(Err(e)),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn report(&self, _host: &Name, report: VmStatusReport) -> Result<(), LinkError> {
        self.post("/reports", &report).await.map(|_| ())
    }
}
