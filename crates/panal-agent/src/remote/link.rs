//! [`ControlPlaneLink`] over mutual-TLS HTTPS: the calls the in-process link makes, as requests to
//! the control plane's agent endpoint. The host is never sent as a parameter the control plane
//! would trust: it reads it from the certificate.

use super::{AgentIdentity, http};
use crate::link::{
    AssignmentStream, ControlPlaneLink, HostTaskStream, LinkError, NetworkPlanStream,
};
use async_trait::async_trait;
use futures::StreamExt;
use panal_types::Name;
use panal_types::agent::{Assignment, HostRegistration, VmStatusReport};
use panal_types::host::Host;
use panal_types::migration::MigrationReport;
use panal_types::network::HostNetworkPlan;
use panal_types::volume::{HostTask, HostTaskReport};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a plain request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// An assignment stream silent for this long is dead (the server sends a keep-alive line every
/// five seconds): the agent reconnects instead of waiting on a connection a cut link killed.
const STREAM_IDLE: Duration = Duration::from_secs(15);

/// The link of a joined agent. It talks to one control-plane replica at a time and moves to
/// the next one it knows when that one cannot be reached; every replica serves agents (the CA
/// and the records they check are in the shared store), so any of them will do.
pub struct RemoteLink {
    http: reqwest::Client,
    bases: Vec<String>,
    current: AtomicUsize,
}

impl RemoteLink {
    /// A link with the agent's identity.
    pub fn new(identity: &AgentIdentity) -> Result<Self, String> {
        Ok(Self {
            http: http::mutual(identity)?,
            bases: identity
                .endpoints()
                .iter()
                .map(|u| format!("{u}/agent/v1"))
                .collect(),
            current: AtomicUsize::new(0),
        })
    }

    /// The replica in use: its index and base URL.
    fn base(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        (i, &self.bases[i])
    }

    /// The replica at `used` could not be reached: move on to the next one (unless another call
    /// already did).
    fn unreachable(&self, used: usize, e: reqwest::Error) -> LinkError {
        let next = (used + 1) % self.bases.len();
        if self
            .current
            .compare_exchange(used, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && next != used
        {
            tracing::warn!(from = %self.bases[used], to = %self.bases[next], "control-plane replica unreachable; switching");
        }
        http::transport(e)
    }

    /// The underlying client and the base URL in use (for image fetches).
    pub(super) fn parts(&self) -> (&reqwest::Client, &str) {
        (&self.http, self.base().1)
    }

    async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, LinkError> {
        let (used, base) = self.base();
        let resp = self
            .http
            .post(format!("{base}{path}"))
            .timeout(REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(used, e))?;
        http::check(resp).await
    }
}

impl RemoteLink {
    /// A stream of newline-delimited JSON messages from `path` (blank keep-alive lines skipped).
    async fn ndjson<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<T, LinkError>>, LinkError> {
        let (used, base) = self.base();
        let resp = self
            .http
            .get(format!("{base}{path}"))
            .send()
            .await
            .map_err(|e| self.unreachable(used, e))?;
        let resp = http::check(resp).await?;
        let stream = lines(Box::pin(resp.bytes_stream())).filter_map(|line| async move {
            match line {
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => None,
                Ok(l) => Some(
                    serde_json::from_slice::<T>(&l)
                        .map_err(|e| LinkError::Unavailable(format!("unreadable message: {e}"))),
                ),
                Err(e) => Some(Err(e)),
            }
        });
        Ok(Box::pin(stream))
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
                        let e = LinkError::Unavailable(
                            "the stream from the control plane went silent".into(),
                        );
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
        self.ndjson::<Assignment>("/assignments").await
    }

    async fn report(&self, _host: &Name, report: VmStatusReport) -> Result<(), LinkError> {
        self.post("/reports", &report).await.map(|_| ())
    }

    async fn host_tasks(&self, _host: &Name) -> Result<HostTaskStream, LinkError> {
        self.ndjson::<HostTask>("/tasks").await
    }

    async fn report_task(&self, _host: &Name, report: HostTaskReport) -> Result<(), LinkError> {
        self.post("/task-reports", &report).await.map(|_| ())
    }

    async fn report_migration(
        &self,
        _host: &Name,
        report: MigrationReport,
    ) -> Result<(), LinkError> {
        self.post("/migration-reports", &report).await.map(|_| ())
    }

    async fn network_plans(&self, _host: &Name) -> Result<NetworkPlanStream, LinkError> {
        self.ndjson::<HostNetworkPlan>("/network-plans").await
    }
}
