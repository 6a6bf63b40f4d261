//! `panal server`: a control-plane replica. Serves the API from any replica; runs the singleton
//! controllers only on the replica that holds leadership (an etcd-lease-backed key), so several
//! replicas on one etcd cluster survive the loss of any of them.

use crate::config::{self, ClientConfig};
use crate::store_url::{self, StoreArgs};
use anyhow::{Context, Result};
use clap::Args;
use panal_server::leader::Election;
use panal_server::scheduler::{Overcommit, Policy, Strategy};
use panal_server::{App, AppConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `panal server`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// This replica's own files: admin token, client configuration.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The state store (default: an embedded store in DIR).
    #[arg(long, env = "PANAL_STORE", value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub store_auth: StoreAuth,
    /// Address the API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7180")]
    pub listen: SocketAddr,
    /// This replica's name (default: derived from the listen address).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a leader may be silent before another replica takes over.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub leader_ttl: u64,
    /// Seconds to wait for an unreachable store at start-up.
    #[arg(long, default_value_t = 60)]
    pub store_wait: u64,
    /// Address of the agent endpoint (HTTPS, mutual TLS) that hosts join and report to, e.g.
    /// `0.0.0.0:7181`; without it no remote agent can join this replica.
    #[arg(long, value_name = "ADDR")]
    pub agent_listen: Option<SocketAddr>,
    /// A name or address agents use to reach this replica, put into its serving certificate
    /// (repeatable; the agent-listen address is always included when it is a specific one).
    #[arg(long = "agent-san", value_name = "NAME")]
    pub agent_sans: Vec<String>,
    /// Seconds a host may miss heartbeats before it turns not-ready.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub host_lease_ttl: u64,
    /// How the scheduler chooses among hosts that fit: `spread` (least loaded first) or `pack`
    /// (most loaded first).
    #[arg(long, value_enum, default_value_t = Placement::Spread)]
    pub placement: Placement,
    /// vCPUs that may be promised per host CPU where no zone or host label says otherwise
    /// (1 to 64).
    #[arg(long, default_value_t = 4.0)]
    pub cpu_overcommit: f64,
    /// Memory that may be promised per byte of host memory (1 to 64).
    #[arg(long, default_value_t = 1.0)]
    pub memory_overcommit: f64,
    /// Where the built-in guest was built: imported as images `tiny` and `tiny-disk` once.
    #[arg(long, value_name = "DIR")]
    pub guest_dir: Option<PathBuf>,
    #[command(flatten)]
    pub image_fetch: crate::up::ImageFetchArgs,
}

/// The scheduler's strategy, as a flag.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Least loaded host first.
    Spread,
    /// Most loaded host first.
    Pack,
}

/// The scheduling policy the flags describe.
fn policy(args: &ServerArgs) -> Result<Policy> {
    let overcommit = Overcommit::new(args.cpu_overcommit, args.memory_overcommit)
        .map_err(|e| anyhow::anyhow!("--cpu-overcommit/--memory-overcommit: {e}"))?;
    Ok(Policy {
        overcommit,
        strategy: match args.placement {
            Placement::Spread => Strategy::Spread,
            Placement::Pack => Strategy::Pack,
        },
        ..Policy::default()
    })
}

/// etcd credentials and TLS (see `StoreArgs`).
#[derive(Args, Debug, Clone, Default)]
pub struct StoreAuth {
    /// etcd user name.
    #[arg(long, env = "PANAL_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(long, env = "PANAL_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) for etcd over TLS.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
}

/// Runs a replica until Ctrl-C or SIGTERM.
pub async fn run(args: ServerArgs) -> Result<()> {
    crate::up::init_logging();
    let policy = policy(&args)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let store_args = StoreArgs {
        store: args
            .store
            .clone()
            .unwrap_or_else(|| format!("embedded:{}", args.data_dir.join("state.redb").display())),
        etcd_user: args.store_auth.etcd_user.clone(),
        etcd_password: args.store_auth.etcd_password.clone(),
        etcd_ca: args.store_auth.etcd_ca.clone(),
        etcd_client_cert: None,
    };
    let store = store_url::open(&store_args, Duration::from_secs(args.store_wait)).await?;
    // Bound first: the image download guard must know this replica's own endpoints.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut fetch = args.image_fetch.policy();
    let own: Vec<SocketAddr> = std::iter::once(addr).chain(args.agent_listen).collect();
    fetch.urls = panal_server::images::guard::UrlPolicy::new(fetch.urls.allow.clone(), own);
    let app = App::new(
        store.clone(),
        AppConfig {
            host_lease_ttl: Duration::from_secs(args.host_lease_ttl),
            policy: policy.clone(),
        },
    )
    .with_images(
        panal_server::images::ImageStore::new(args.data_dir.join("images")).with_fetch(fetch),
    );
    app.bootstrap().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = panal::platform::admin_token(&app, &args.data_dir).await?;

    let url = format!("http://{addr}");
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("replica-{}", addr.port()));
    let election = Election::new(
        store.clone(),
        &name,
        &url,
        Duration::from_secs(args.leader_ttl),
    );
    let controllers = panal_server::controllers::run_elected(app.clone(), policy, election.clone());
    let router = panal_server::api::router(app.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "API server stopped");
        }
    });
    let agent_listener = match args.agent_listen {
        Some(listen) => {
            let l = panal_server::agent_api::serve(app.clone(), listen, args.agent_sans.clone())
                .await
                .map_err(|e| anyhow::anyhow!("agent endpoint: {e}"))?;
            println!(
                "Agent endpoint: https://{} (hosts join with `panal agent --join`)",
                l.addr
            );
            Some(l)
        }
        None => None,
    };
    if let Some(dir) = &args.guest_dir {
        match panal_driver::qemu::GuestImage::open(dir) {
            Ok(g) => panal::platform::import_builtin_images(&app, &g).await,
            Err(e) => tracing::warn!(error = %e, "no built-in guest to import"),
        }
    }
    config::save(
        &args.data_dir.join("client.toml"),
        &ClientConfig {
            api_url: url.clone(),
            token,
        },
    )?;
    println!(
        "Panal server {name} is up: API {url}/api/v1, store {}",
        store_args.store
    );
    crate::up::wait_for_signal().await;
    println!("Stopping.");
    controllers.abort();
    if let Ok(Some(info)) = Election::leader(&store).await
        && info.replica == name
    {
        // Hand over at once instead of letting the lease run out.
        let _ = store.delete_leader_key().await;
    }
    server.abort();
    drop(agent_listener);
    Ok(())
}

/// Deleting the leader key on a clean stop.
trait ResignExt {
    async fn delete_leader_key(&self) -> Result<(), panal_store::StoreError>;
}

impl ResignExt for panal_store::DynStore {
    async fn delete_leader_key(&self) -> Result<(), panal_store::StoreError> {
        use panal_store::StoreExt;
        self.delete(panal_server::leader::LEADER_KEY)
            .await
            .map(|_| ())
    }
}
