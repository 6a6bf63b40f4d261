//! How to reach an etcd cluster: endpoints, TLS, credentials, the key prefix Panal's keys live
//! under, and the timeouts that turn an unreachable cluster into an error instead of a hang.

use std::time::Duration;

/// Options for [`super::EtcdStore::connect`]. Build with [`EtcdOptions::new`] and the setters
/// (the struct may grow, so it cannot be built with a literal).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// Client URLs of the cluster's members, e.g. `http://127.0.0.1:2379` (`https://` with TLS).
    /// Requests are balanced over the reachable ones.
    pub endpoints: Vec<String>,
    /// TLS settings; `None` for plain-text endpoints.
    pub tls: Option<EtcdTls>,
    /// User name for etcd's authentication (with [`Self::password`]).
    pub user: Option<String>,
    /// Password of [`Self::user`].
    pub password: Option<String>,
    /// Prepended to every key on the wire, so several deployments (or test cases) can share one
    /// cluster. Keys and prefixes seen through the [`crate::Store`] interface never include it.
    /// Revisions are cluster-wide, so they are shared by everything on the cluster.
    pub key_prefix: String,
    /// How long [`super::EtcdStore::connect`] may take to reach the cluster (TCP/TLS, auth and a
    /// first read) before it fails with [`crate::StoreError::Unavailable`].
    pub connect_timeout: Duration,
    /// How long any single request may take. etcd answers within its own election timeouts
    /// when it lacks a quorum; this bounds the wait when a member hangs or the network drops
    /// packets. A timed-out write may still have committed (as with any remote store).
    pub request_timeout: Duration,
    /// The cluster's `--max-txn-ops` (operations per transaction; etcd's default is 128), which
    /// [`crate::Store::max_txn_ops`] reports so callers size their batches to it.
    pub max_txn_ops: usize,
}

/// TLS material, all PEM-encoded.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EtcdTls {
    /// CA certificate(s) that signed the servers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate for mutual TLS (with [`Self::client_key_pem`]).
    pub client_cert_pem: Option<Vec<u8>>,
    /// Client private key for mutual TLS.
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to check the servers' certificates against, when it differs from the endpoints'
    /// host names.
    pub domain: Option<String>,
}

impl EtcdTls {
    /// TLS trusting the given CA.
    pub fn with_ca(ca_pem: Vec<u8>) -> Self {
        Self {
            ca_pem: Some(ca_pem),
            ..Self::default()
        }
    }

    /// Adds a client certificate and key (mutual TLS).
    pub fn client_identity(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.client_cert_pem = Some(cert_pem);
        self.client_key_pem = Some(key_pem);
        self
    }

    /// Sets the server name to verify.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }
}

impl EtcdOptions {
    /// Options for these endpoints, key prefix `/panal/`, 5 s to connect, 10 s per request.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            user: None,
            password: None,
            key_prefix: "/panal/".into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_txn_ops: crate::DEFAULT_MAX_TXN_OPS,
        }
    }

    /// Sets [`Self::key_prefix`].
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`Self::user`] and [`Self::password`].
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Sets [`Self::tls`].
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`Self::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`Self::max_txn_ops`] (for a cluster started with a larger `--max-txn-ops`).
    pub fn max_txn_ops(mut self, n: usize) -> Self {
        self.max_txn_ops = n.max(2);
        self
    }

    /// Sets [`Self::request_timeout`].
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }
}
