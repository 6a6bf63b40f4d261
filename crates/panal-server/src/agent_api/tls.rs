//! The agent listener's TLS: a serving certificate from the installation's CA, client
//! certificates verified against the same CA (optional at the handshake so that a joining agent,
//! which has none yet, can connect), and the verified client certificate handed to the
//! handlers with each request.

use super::identity::PeerCertificate;
use crate::app::App;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A client that has not finished the handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running agent listener. Dropping it stops accepting and closes every open connection,
/// as the replica's death would: agents notice at once and move to another replica.
pub struct AgentListener {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Drop for AgentListener {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn tls_config(app_ca: &crate::pki::Ca, names: &[String]) -> Result<rustls::ServerConfig, String> {
    let pair = app_ca.issue_server(names).map_err(|e| e.message)?;
    let certs = vec![
        CertificateDer::from_pem_slice(pair.cert_pem.as_bytes()).map_err(|e| e.to_string())?,
        CertificateDer::from(app_ca.cert_der().to_vec()),
    ];
    let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(app_ca.cert_der().to_vec()))
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Starts the agent listener on `listen`. `names` are the addresses and DNS names agents use to
/// reach this replica; the listen address is added when it is a specific one.
pub async fn serve(
    app: App,
    listen: SocketAddr,
    mut names: Vec<String>,
) -> Result<AgentListener, String> {
    let ca = app.ca().await.map_err(|e| e.message)?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    names.sort();
    names.dedup();
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&ca, &names)?));
    let router = super::router(app);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "agent listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "agent TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Arc::new(c.to_vec()));
                let service = router.layer(axum::Extension(PeerCertificate(cert)));
                let service = TowerToHyperService::new(service);
                let builder = Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "agent connection ended");
                    },
                    () = stopped.cancelled() => {}
                }
            });
        }
    });
    Ok(AgentListener { addr, task, stop })
}
