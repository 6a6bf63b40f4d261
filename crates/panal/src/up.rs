//! `panal up`: the single-machine platform in the foreground. Writes a ready client
//! configuration, prints where the API and token are, stops cleanly on Ctrl-C or SIGTERM, and
//! recovers everything from its data directory when started again.

use crate::config::{self, ClientConfig};
use anyhow::Result;
use clap::Args;
use panal::platform::{Platform, PlatformConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Arguments of `panal up`.
#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Where all state lives (created if missing).
    #[arg(long, value_name = "DIR", env = "PANAL_DATA_DIR", default_value_os_t = default_data_dir())]
    pub data_dir: PathBuf,
    /// Address the API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7180")]
    pub listen: SocketAddr,
    /// Do not make this platform the user's default CLI configuration.
    #[arg(long)]
    pub no_default_config: bool,
    /// A label of the local host, `KEY=VALUE` (repeatable), e.g.
    /// `panal.io/cpu-overcommit=16` to promise more vCPUs than the host's cores allow by default.
    #[arg(long = "host-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub host_labels: Vec<(String, String)>,
    /// Another storage pool besides DATA_DIR/pools/default: NAME=PATH, or NAME=PATH,shared for
    /// a directory other hosts mount too (repeatable).
    #[arg(long = "pool", value_name = "NAME=PATH[,shared]", value_parser = crate::agent_cmd::parse_pool)]
    pub pools: Vec<panal_agent::inventory::PoolDir>,
    #[command(flatten)]
    pub image_fetch: ImageFetchArgs,
}

/// How the control plane downloads images from URLs (shared by `panal up` and `panal server`).
#[derive(Args, Debug, Clone)]
pub struct ImageFetchArgs {
    /// Allow image URLs into this address range although it is loopback, link-local, private or
    /// this machine's (repeatable), e.g. `10.20.0.0/16` for an internal mirror. The control
    /// plane's own endpoints stay refused.
    #[arg(long = "image-fetch-allow", value_name = "CIDR")]
    pub allow: Vec<panal_server::images::guard::Cidr>,
    /// Largest file an image URL may bring, e.g. `20G`.
    #[arg(long = "image-fetch-max-size", value_name = "SIZE", default_value = "64G", value_parser = panal_types::size::parse_size)]
    pub max_size: u64,
    /// Seconds a whole image download may take.
    #[arg(
        long = "image-fetch-timeout",
        value_name = "SECS",
        default_value_t = 3600
    )]
    pub timeout_secs: u64,
}

impl ImageFetchArgs {
    /// The download policy (own endpoints and local addresses are added where the listeners are
    /// known).
    pub fn policy(&self) -> panal_server::images::fetch::FetchPolicy {
        let mut p = panal_server::images::fetch::FetchPolicy {
            max_bytes: self.max_size,
            deadline: std::time::Duration::from_secs(self.timeout_secs.max(1)),
            ..Default::default()
        };
        p.urls.allow = self.allow.clone();
        p
    }
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn default_data_dir() -> PathBuf {
    if nix_is_root() {
        PathBuf::from("/var/lib/panal")
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/panal")
    }
}

fn nix_is_root() -> bool {
    // SAFETY-free check: root's home and uid are what the platform's defaults care about.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs the platform until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> Result<()> {
    init_logging();
    let mut cfg = PlatformConfig::new(args.data_dir.clone());
    cfg.listen = args.listen;
    cfg.host_labels = args.host_labels.iter().cloned().collect();
    cfg.pools = args.pools.clone();
    cfg.image_fetch = args.image_fetch.policy();
    let platform = Platform::start(cfg).await?;
    let client_cfg = ClientConfig {
        api_url: platform.url(),
        token: platform.token.clone(),
    };
    let cfg_path = args.data_dir.join("client.toml");
    config::save(&cfg_path, &client_cfg)?;
    if !args.no_default_config
        && let Some(p) = config::default_path()
    {
        config::save(&p, &client_cfg)?;
    }
    println!("Panal is up.");
    println!(
        "  API:           {}/api/v1  (OpenAPI: {}/api/v1/openapi.json)",
        platform.url(),
        platform.url()
    );
    println!(
        "  admin token:   {}",
        args.data_dir.join("admin.token").display()
    );
    println!("  client config: {}", cfg_path.display());
    println!("  data:          {}", args.data_dir.display());
    println!("Try: panal vm create demo --hypervisor fake --wait && panal vm list");
    println!("Ctrl-C stops the platform; VMs keep running and are re-attached on the next start.");
    wait_for_signal().await;
    println!("Stopping.");
    platform.shutdown().await;
    Ok(())
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PANAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
