//! The application layer: every use case of the control plane as a plain async method, called by
//! the HTTP handlers, the in-process agent link and the tests alike. Handlers never touch the
//! store; this layer validates input, enforces state rules and writes through the data layer.

mod agent_boot;
mod agents;
mod events;
mod floating_ips;
mod host_tasks;
mod hosts;
mod hub;
mod images;
mod ipam;
mod join;
mod migration_preflight;
mod migration_reports;
mod network_plans;
mod networks;
mod operations;
mod projects;
mod reports;
mod security_groups;
mod snapshots;
mod validate;
mod vm_create;
mod vm_migrate;
mod vm_nics;
mod vms;
mod volume_attach;
mod volume_transfer;
mod volumes;

pub use agents::link_error;
pub use events::EventStream;
pub use images::ImageFiles;
pub use operations::{settle, settle_into};
pub use volumes::{MAX_VOLUME_BYTES, MAX_VOLUMES_PER_VM};

use crate::repo::Repo;
use panal_store::DynStore;
use panal_store::LeaseId;
use panal_types::host::Host;
use panal_types::page::{DEFAULT_LIMIT, MAX_LIMIT};
use panal_types::{ApiError, ErrorCode};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings of the control plane that shape behaviour.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// How long a host may miss heartbeats before it is not ready.
    pub host_lease_ttl: Duration,
    /// The scheduling policy (the controllers' too): requests that check placement by
    /// themselves (a live migration's pre-flight) apply the same overcommit ratios.
    pub policy: crate::scheduler::Policy,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            host_lease_ttl: Duration::from_secs(10),
            policy: crate::scheduler::Policy::default(),
        }
    }
}

/// All hosts and when they were read.
type HostCache = Arc<Mutex<Option<(Instant, Arc<Vec<Host>>)>>>;

/// The control plane's application layer. Cheap to clone.
#[derive(Clone)]
pub struct App {
    repo: Repo,
    config: AppConfig,
    /// Liveness leases of the hosts registered through this replica.
    leases: Arc<Mutex<HashMap<String, LeaseId>>>,
    /// All hosts, briefly cached for input validation.
    host_cache: HostCache,
    /// Held by the one request refreshing `host_cache`.
    host_refresh: Arc<tokio::sync::Mutex<()>>,
    /// Agents' status reports waiting to be written together.
    reports: reports::ReportQueue,
    /// Where imported images are kept, on control planes that keep them.
    images: Option<Arc<crate::images::ImageStore>>,
    /// How to reach VM consoles from here.
    consoles: Option<Arc<dyn crate::console::ConsoleAccess>>,
    /// The per-host assignment streams of this control plane, fed by one watch.
    assignments: Arc<hub::AssignmentHub>,
    /// The installation's certificate authority, read from the store on first use.
    ca: Arc<tokio::sync::OnceCell<crate::pki::Ca>>,
    /// Agent certificates recently recognised: fingerprint → host and when it was checked.
    agent_ids: join::IdentityCache,
}

impl App {
    /// An application over `store`. Call [`App::bootstrap`] once before serving.
    pub fn new(store: DynStore, config: AppConfig) -> Self {
        Self {
            assignments: Arc::new(hub::AssignmentHub::new(store.clone())),
            repo: Repo::new(store),
            config,
            leases: Arc::default(),
            host_cache: Arc::default(),
            host_refresh: Arc::default(),
            reports: reports::ReportQueue::default(),
            images: None,
            consoles: None,
            ca: Arc::default(),
            agent_ids: Arc::default(),
        }
    }

    /// The same application with an image store.
    pub fn with_images(mut self, store: crate::images::ImageStore) -> Self {
        self.images = Some(Arc::new(store));
        self
    }

    /// The same application with console access.
    pub fn with_consoles(mut self, consoles: Arc<dyn crate::console::ConsoleAccess>) -> Self {
        self.consoles = Some(consoles);
        self
    }

    /// Console access, where this control plane has it.
    pub fn consoles(&self) -> Option<&Arc<dyn crate::console::ConsoleAccess>> {
        self.consoles.as_ref()
    }

    /// The data layer (for controllers).
    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Drops the cached host list (after a controller changed a host's mode).
    pub(crate) fn forget_host_cache(&self) {
        *self.host_cache.lock() = None;
    }

    /// The settings.
    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Makes sure the store is in a state this binary can serve: the format version is known
    /// (refusing data written by a newer binary) and the `default` project exists.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        crate::format::check_or_init(&self.repo).await?;
        self.ensure_default_project().await
    }
}

/// Clamps a client's page size and turns its page token into a key to start after.
pub(crate) fn page_bounds(
    limit: Option<usize>,
    token: Option<&str>,
    prefix: &str,
) -> Result<(usize, Option<String>), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            ErrorCode::InvalidQuery,
            format!("limit must be 1 to {MAX_LIMIT}"),
        )
        .with_field("limit"));
    }
    let start_after = match token {
        None | Some("") => None,
        Some(t) => {
            // The token is the last name of the previous page; it must itself be a valid name
            // (or an id), which keeps it from escaping the listed prefix.
            if !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(
                    ApiError::new(ErrorCode::InvalidQuery, "malformed page_token")
                        .with_field("page_token"),
                );
            }
            Some(format!("{prefix}{t}"))
        }
    };
    Ok((limit, start_after))
}

/// The page token for the item after which the next page starts.
pub(crate) fn next_token(more: bool, last: Option<String>) -> Option<String> {
    if more { last } else { None }
}
