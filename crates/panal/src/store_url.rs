//! Choosing and opening the state store from a `--store` argument: `embedded:PATH` (a redb file)
//! or `etcd://host:port,host:port` (with credentials and TLS from flags). An unreachable etcd at
//! start-up is waited for with back-off and a clear log line, not a panic.

use anyhow::{Context, Result, bail};
use clap::Args;
use panal_store::embedded::EmbeddedStore;
use panal_store::etcd::{EtcdOptions, EtcdStore, EtcdTls};
use panal_store::{DynStore, StoreError};
use std::path::PathBuf;
use std::time::Duration;

/// Store selection flags shared by `server` and `admin`.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The state store: `etcd://h1:2379,h2:2379,...` or `embedded:/path/state.redb`.
    #[arg(long, env = "PANAL_STORE", value_name = "URL")]
    pub store: String,
    /// etcd user name.
    #[arg(long, env = "PANAL_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(long, env = "PANAL_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) to verify etcd's TLS certificate; switches to https.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's mutual TLS.
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    pub etcd_client_cert: Option<Vec<PathBuf>>,
}

/// A parsed store location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A redb file.
    Embedded(PathBuf),
    /// etcd endpoints (`host:port`).
    Etcd(Vec<String>),
}

/// Parses `--store`.
pub fn parse(url: &str) -> Result<StoreUrl> {
    if let Some(path) = url.strip_prefix("embedded:") {
        if path.is_empty() {
            bail!("--store embedded: needs a file path, e.g. embedded:/var/lib/panal/state.redb");
        }
        return Ok(StoreUrl::Embedded(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("etcd://") {
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            bail!("--store etcd:// needs at least one host:port");
        }
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                bail!("--store: {e:?} is not host:port");
            }
        }
        return Ok(StoreUrl::Etcd(endpoints));
    }
    bail!("--store must be etcd://host:port[,host:port...] or embedded:PATH (got {url:?})")
}

/// Opens the store, waiting for an unreachable etcd up to `wait` (0: try once).
pub async fn open(args: &StoreArgs, wait: Duration) -> Result<DynStore> {
    match parse(&args.store)? {
        StoreUrl::Embedded(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let s = EmbeddedStore::open(&path)
                .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
            Ok(s)
        }
        StoreUrl::Etcd(endpoints) => {
            let scheme = if args.etcd_ca.is_some() {
                "https"
            } else {
                "http"
            };
            let urls: Vec<String> = endpoints
                .iter()
                .map(|e| format!("{scheme}://{e}"))
                .collect();
            let mut opts = EtcdOptions::new(urls.clone());
            if let (Some(u), Some(p)) = (&args.etcd_user, &args.etcd_password) {
                opts = opts.credentials(u.clone(), p.clone());
            }
            if let Some(ca) = &args.etcd_ca {
                let mut tls = EtcdTls::with_ca(
                    std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?,
                );
                if let Some(pair) = &args.etcd_client_cert {
                    let cert = std::fs::read(&pair[0])
                        .with_context(|| format!("cannot read {}", pair[0].display()))?;
                    let key = std::fs::read(&pair[1])
                        .with_context(|| format!("cannot read {}", pair[1].display()))?;
                    tls = tls.client_identity(cert, key);
                }
                opts = opts.tls(tls);
            }
            let deadline = tokio::time::Instant::now() + wait;
            let mut delay = Duration::from_millis(250);
            loop {
                match EtcdStore::connect(opts.clone()).await {
                    Ok(s) => return Ok(s),
                    Err(StoreError::AccessDenied(why)) => {
                        bail!("etcd refused Panal's credentials: {why}")
                    }
                    Err(StoreError::Invalid(why)) => bail!("bad etcd settings: {why}"),
                    Err(e) => {
                        if tokio::time::Instant::now() >= deadline {
                            bail!("cannot reach etcd at {}: {e}", urls.join(","));
                        }
                        tracing::warn!(endpoints = %urls.join(","), error = %e, "waiting for etcd");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            parse("etcd://a:2379,b:2379").unwrap(),
            StoreUrl::Etcd(vec!["a:2379".into(), "b:2379".into()])
        );
        assert_eq!(
            parse("embedded:/x/s.redb").unwrap(),
            StoreUrl::Embedded("/x/s.redb".into())
        );
        assert!(parse("etcd://").is_err());
        assert!(parse("etcd://a").is_err());
        assert!(parse("etcd://a:99999").is_err());
        assert!(parse("mysql://x").is_err());
        assert!(parse("embedded:").is_err());
    }
}
