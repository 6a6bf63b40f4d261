//! A typed client of Panal's REST API (`/api/v1`), used by the CLI and the tests. It speaks the
//! wire types of `panal-types`, so it cannot drift from the server's document without failing to
//! compile or failing the OpenAPI drift test.

mod console;
mod events;
mod floating_ips;
mod join_tokens;
mod migrations;
mod networks;
mod snapshots;
mod volumes;

pub use console::ConsoleConnection;

pub use events::EventReader;

use panal_types::ApiError;
use panal_types::host::Host;
use panal_types::image::{Image, ImageAccepted, ImageImport};
use panal_types::operation::Operation;
use panal_types::page::Page;
use panal_types::project::{Project, ProjectCreate};
use panal_types::vm::{
    Vm, VmAccepted, VmBatchAccepted, VmBatchCreate, VmCreate, VmStopRequest, VmUpdate,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// the server refused the request
    #[error("{0}")]
    Api(ApiError),
    /// the server could not be reached or answered garbage
    #[error("cannot reach the Panal API at {url}: {reason}")]
    Transport {
        /// Base URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api(e) => Some(e.code.http_status()),
            ClientError::Transport { .. } => None,
        }
    }

    /// The stable error code of a refusal.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ClientError::Api(e) => Some(e.code.as_str()),
            ClientError::Transport { .. } => None,
        }
    }

    /// The input field a refusal names.
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api(e) => e.field.as_deref(),
            ClientError::Transport { .. } => None,
        }
    }
}

/// A client for one API endpoint and token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of `base` (e.g. `http://127.0.0.1:7180`) with a bearer token.
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            url: self.base.clone(),
            reason: e.to_string(),
        }
    }

    /// Sends a request and decodes the answer (or the error body).
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes)
                .map_err(|e| self.transport(format!("unexpected answer: {e}")));
        }
        Err(self.refusal(status, &bytes))
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, query, None).await
    }

    // --- projects ---

    /// Lists projects (one page).
    pub async fn list_projects(
        &self,
        page_token: Option<&str>,
    ) -> Result<Page<Project>, ClientError> {
        self.get("/api/v1/projects", &page_query(None, page_token))
            .await
    }

    /// Creates a project.
    pub async fn create_project(&self, req: &ProjectCreate) -> Result<Project, ClientError> {
        self.call(Method::POST, "/api/v1/projects", &[], Some(req))
            .await
    }

    /// Shows a project.
    pub async fn project(&self, name: &str) -> Result<Project, ClientError> {
        self.get(&format!("/api/v1/projects/{}", seg(name)), &[])
            .await
    }

    /// Deletes a project.
    pub async fn delete_project(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/projects/{}", seg(name)),
            &[],
            None,
        )
        .await
        .map(|_| ())
    }

    // --- VMs ---

    /// Lists the VMs of a project (one page).
    pub async fn list_vms(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<Vm>, ClientError> {
        self.get("/api/v1/vms", &page_query(project, page_token))
            .await
    }

    /// Every VM of a project, following pages.
    pub async fn all_vms(&self, project: Option<&str>) -> Result<Vec<Vm>, ClientError> {
        all_pages(|t| async move { self.list_vms(project, t.as_deref()).await }).await
    }

    /// Creates a VM.
    pub async fn create_vm(&self, req: &VmCreate) -> Result<VmAccepted, ClientError> {
        self.call(Method::POST, "/api/v1/vms", &[], Some(req)).await
    }

    /// Creates 1 to 1000 VMs in one request, all or none (`POST /api/v1/vms:batch`).
    pub async fn create_vms(&self, vms: &[VmCreate]) -> Result<VmBatchAccepted, ClientError> {
        let body = VmBatchCreate { vms: vms.to_vec() };
        self.call(Method::POST, "/api/v1/vms:batch", &[], Some(&body))
            .await
    }

    /// Shows a VM.
    pub async fn vm(&self, project: Option<&str>, name: &str) -> Result<Vm, ClientError> {
        self.get(
            &format!("/api/v1/vms/{}", seg(name)),
            &project_query(project),
        )
        .await
    }

    /// Updates a VM.
    pub async fn update_vm(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VmUpdate,
    ) -> Result<Vm, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/api/v1/vms/{}", seg(name)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Starts a VM.
    pub async fn start_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/vms/{}/start", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Stops a VM.
    pub async fn stop_vm(
        &self,
        project: Option<&str>,
        name: &str,
        force: bool,
    ) -> Result<VmAccepted, ClientError> {
        let body = VmStopRequest { force };
        self.call(
            Method::POST,
            &format!("/api/v1/vms/{}/stop", seg(name)),
            &project_query(project),
            Some(&body),
        )
        .await
    }

    /// Restarts a VM.
    pub async fn restart_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/vms/{}/restart", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Deletes a VM.
    pub async fn delete_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/vms/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Pauses a VM.
    pub async fn pause_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/vms/{}/pause", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Resumes a VM.
    pub async fn resume_vm(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/vms/{}/resume", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// The console history of a VM; with `follow`, a response whose body keeps streaming.
    pub async fn console_log(
        &self,
        project: Option<&str>,
        name: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let mut q = project_query(project);
        if follow {
            q.push(("follow", "true".into()));
        }
        let resp = self
            .http
            .get(format!(
                "{}/api/v1/vms/{}/console/log",
                self.base,
                seg(name)
            ))
            .bearer_auth(&self.token)
            .query(&q)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.streaming(resp).await
    }

    /// Opens the interactive serial console of a VM.
    pub async fn console(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<ConsoleConnection, ClientError> {
        // Ask over plain HTTP first so refusals come back as typed errors, not a failed upgrade.
        self.vm(project, name).await?;
        console::connect(
            &self.base,
            &self.token,
            &format!("/api/v1/vms/{}/console", seg(name)),
            project,
        )
        .await
        .map_err(|e| self.transport(e))
    }

    // --- images ---

    /// Lists images (one page).
    pub async fn list_images(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<Image>, ClientError> {
        self.get("/api/v1/images", &page_query(project, page_token))
            .await
    }

    /// Shows an image.
    pub async fn image(&self, project: Option<&str>, name: &str) -> Result<Image, ClientError> {
        self.get(
            &format!("/api/v1/images/{}", seg(name)),
            &project_query(project),
        )
        .await
    }

    /// Starts an image import.
    pub async fn import_image(&self, req: &ImageImport) -> Result<ImageAccepted, ClientError> {
        self.call(Method::POST, "/api/v1/images", &[], Some(req))
            .await
    }

    /// Deletes an image.
    pub async fn delete_image(&self, project: Option<&str>, name: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/images/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
        .map(|_| ())
    }

    /// The control plane's leader and revision.
    pub async fn cluster(&self) -> Result<panal_types::cluster::ClusterStatus, ClientError> {
        self.get("/api/v1/cluster", &[]).await
    }

    // --- hosts ---

    /// Lists hosts (one page).
    pub async fn list_hosts(&self, page_token: Option<&str>) -> Result<Page<Host>, ClientError> {
        self.get("/api/v1/hosts", &page_query(None, page_token))
            .await
    }

    /// Shows a host.
    pub async fn host(&self, name: &str) -> Result<Host, ClientError> {
        self.get(&format!("/api/v1/hosts/{}", seg(name)), &[]).await
    }

    /// Cordons a host: it takes no new VMs.
    pub async fn cordon_host(&self, name: &str) -> Result<Host, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/hosts/{}/cordon", seg(name)),
            &[],
            None,
        )
        .await
    }

    /// Makes a host schedulable again (cancelling a drain in progress).
    pub async fn uncordon_host(&self, name: &str) -> Result<Host, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/hosts/{}/uncordon", seg(name)),
            &[],
            None,
        )
        .await
    }

    /// Starts draining a host; follow the returned operation. `cold`: running VMs that cannot
    /// move live are stopped and started elsewhere (otherwise the drain fails on them).
    pub async fn drain_host(
        &self,
        name: &str,
        cold: bool,
    ) -> Result<panal_types::host::HostDrainAccepted, ClientError> {
        let query: Vec<(&str, String)> = if cold {
            vec![("cold", "true".into())]
        } else {
            vec![]
        };
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/hosts/{}/drain", seg(name)),
            &query,
            None,
        )
        .await
    }

    /// Live-migrates back to a host the running VMs a drain moved off it.
    pub async fn move_back(
        &self,
        name: &str,
    ) -> Result<panal_types::host::HostMoveBack, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/hosts/{}/move-back", seg(name)),
            &[],
            None,
        )
        .await
    }

    // --- operations ---

    /// Lists operations (one page).
    pub async fn list_operations(
        &self,
        page_token: Option<&str>,
    ) -> Result<Page<Operation>, ClientError> {
        self.get("/api/v1/operations", &page_query(None, page_token))
            .await
    }

    /// Shows an operation.
    pub async fn operation(&self, id: &str) -> Result<Operation, ClientError> {
        self.get(&format!("/api/v1/operations/{}", seg(id)), &[])
            .await
    }

    /// Waits up to `timeout` for an operation to end.
    pub async fn wait_operation(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Operation, ClientError> {
        let q = [("timeout_secs", timeout.as_secs().max(1).to_string())];
        self.get(&format!("/api/v1/operations/{}/wait", seg(id)), &q)
            .await
    }

    /// Opens the change stream after revision `since`.
    pub async fn events(
        &self,
        since: Option<u64>,
        kinds: Option<&str>,
    ) -> Result<EventReader, ClientError> {
        let mut req = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(&self.token);
        if let Some(s) = since {
            req = req.query(&[("since", s.to_string())]);
        }
        if let Some(k) = kinds {
            req = req.query(&[("kinds", k)]);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        Ok(EventReader::new(self.streaming(resp).await?))
    }

    /// Hands back a response whose body streams, or turns a refusal into the typed error.
    async fn streaming(&self, resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        Err(self.refusal(status, &bytes))
    }

    /// The typed error of a non-success answer (the API's error body, or the bare status).
    fn refusal(&self, status: reqwest::StatusCode, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ApiError>(body) {
            Ok(e) => ClientError::Api(e),
            Err(_) => self.transport(format!("HTTP {status}")),
        }
    }
}

/// Follows a list's pages to the end: `page(token)` fetches the page after `token`.
pub async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, ClientError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, ClientError>>,
{
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let p = page(token.take()).await?;
        out.extend(p.items);
        match p.next_page_token {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Percent-encodes a path segment (names are validated server-side; this keeps odd input from
/// changing the path).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn project_query(project: Option<&str>) -> Vec<(&'static str, String)> {
    project
        .map(|p| vec![("project", p.to_owned())])
        .unwrap_or_default()
}

fn page_query(project: Option<&str>, token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut q = project_query(project);
    if let Some(t) = token {
        q.push(("page_token", t.to_owned()));
    }
    q
}
