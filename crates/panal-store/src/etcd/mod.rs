//! The etcd engine: the [`crate::Store`] interface on an etcd v3 cluster, for several Panal
//! replicas sharing one state (cargo feature `etcd`).
//!
//! Mapping is one to one: etcd's cluster revision is the store revision; transactions become
//! etcd `Txn`s (compares on mod revision, version or value; puts with leases, deletes, gets);
//! watches are etcd watches; leases are etcd leases (expiry and revoke delete the keys in one
//! revision, seen as watch `Delete` events); compaction is etcd compaction. Every key is stored
//! under [`EtcdOptions::key_prefix`].
//!
//! Failure behaviour: every request is bounded by [`EtcdOptions::request_timeout`]; requests
//! carry etcd's `require_leader` flag, so a member cut off from the quorum answers "no leader"
//! at once instead of holding requests (and watches) open. An unreachable or quorum-less
//! cluster is [`StoreError::Unavailable`]; refused credentials are [`StoreError::AccessDenied`].
//!
//! The client is cheap to clone (a balanced gRPC channel over all endpoints); each call clones
//! it, so calls run concurrently without locking.

mod convert;
mod options;
#[cfg(feature = "etcd-testing")]
pub mod testing;
mod watch;

pub use options::{EtcdOptions, EtcdTls};

use crate::{
    KeyValue, LeaseId, MIN_LEASE_TTL, RangeResult, Store, StoreError, Txn, TxnResult, WatchStream,
};
use async_trait::async_trait;
use convert::{Failure, Keys, classify, first_lease, rev, store_err, wire_rev};
use etcd_client as ec;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The etcd store engine. Create it with [`EtcdStore::connect`]; use it as a
/// [`crate::DynStore`].
pub struct EtcdStore {
    client: ec::Client,
    keys: Keys,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.options.endpoints)
            .field("key_prefix", &self.options.key_prefix)
            .finish()
    }
}

impl Failure {
    fn into_store(self) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::LeaseNotFound => {
                StoreError::Internal("etcd: unexpected lease not found".into())
            }
            Failure::Compacted => {
                StoreError::Internal("etcd: unexpected compacted revision".into())
            }
        }
    }
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers (authenticating first when
    /// credentials are given). Fails within about [`EtcdOptions::connect_timeout`]:
    /// [`StoreError::Unavailable`] when no endpoint answers, [`StoreError::AccessDenied`] for
    /// refused credentials, [`StoreError::Invalid`] for bad options.
    pub async fn connect(options: EtcdOptions) -> Result<Arc<Self>, StoreError> {
        let connect = connect_options(&options)?;
        let place = options.endpoints.join(", ");
        let late = || {
            StoreError::Unavailable(format!(
                "no answer from etcd at {place} within {:?}",
                options.connect_timeout
            ))
        };
        let in_context = |e: StoreError| match e {
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("cannot reach etcd at {place}: {m}"))
            }
            StoreError::AccessDenied(m) => {
                StoreError::AccessDenied(format!("etcd at {place} refused the credentials: {m}"))
            }
            other => other,
        };
        let client = tokio::time::timeout(
            options.connect_timeout,
            ec::Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| late())?
        .map_err(|e| in_context(store_err(e)))?;
        let store = Self {
            client,
            keys: Keys::new(&options.key_prefix),
            options: options.clone(),
        };
        // Without credentials the channel connects lazily: one read proves the cluster answers.
        tokio::time::timeout(options.connect_timeout, store.current_revision())
            .await
            .map_err(|_| late())?
            .map_err(in_context)?;
        Ok(Arc::new(store))
    }

    /// The underlying etcd client, for what the store interface does not cover (elections,
    /// member management). Keys written through it bypass the key prefix.
    pub fn client(&self) -> ec::Client {
        self.client.clone()
    }

    /// The options this store was connected with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// Runs one etcd call (made by `f` on a fresh client handle) within the request timeout,
    /// plus a margin for the client's own deadline to fire first with etcd's answer. The
    /// balanced channel may pick a member that is down; a request that never reached a member
    /// (connection refused) is safe to send again, even a write, so it is retried on another
    /// pick until the deadline. Anything else is answered as is.
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(ec::Client) -> Fut,
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let limit = self.options.request_timeout + Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        loop {
            match tokio::time::timeout_at(deadline, f(self.client.clone())).await {
                // A member that has lost its leader refuses before proposing anything, so the
                // request is safe to send again; losing one member of three costs an election
                // (about a second), which callers should not see as a failure.
                Ok(Err(e))
                    if convert::no_leader(&e)
                        && started.elapsed() + RETRY_PAUSE < ELECTION_GRACE.min(limit) =>
                {
                    tokio::time::sleep(RETRY_PAUSE * 4).await;
                }
                Ok(Err(e)) if convert::never_sent(&e) => {
                    let retry_at = tokio::time::Instant::now() + RETRY_PAUSE;
                    if retry_at >= deadline {
                        return Err(classify(e));
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
                Ok(r) => return r.map_err(classify),
                Err(_) => {
                    return Err(Failure::Store(StoreError::Unavailable(format!(
                        "etcd did not answer within {limit:?}"
                    ))));
                }
            }
        }
    }
}

/// Pause before resending a request that found its member down.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long a request waits out a leader election before it reports the store unavailable.
const ELECTION_GRACE: Duration = Duration::from_secs(3);

fn connect_options(o: &EtcdOptions) -> Result<ec::ConnectOptions, StoreError> {
    if o.endpoints.is_empty() {
        return Err(StoreError::Invalid("no etcd endpoints given".into()));
    }
    let mut c = ec::ConnectOptions::new()
        .with_connect_timeout(o.connect_timeout)
        .with_timeout(o.request_timeout)
        // HTTP/2 pings notice a dead member under a long-lived watch.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_require_leader(true);
    match (&o.user, &o.password) {
        (Some(u), Some(p)) => c = c.with_user(u, p).with_auto_token_refresh(true),
        (None, None) => {}
        _ => {
            return Err(StoreError::Invalid(
                "etcd user and password must be given together".into(),
            ));
        }
    }
    if let Some(t) = &o.tls {
        let mut tls = ec::TlsOptions::new();
        if let Some(ca) = &t.ca_pem {
            tls = tls.ca_certificate(ec::Certificate::from_pem(ca));
        }
        match (&t.client_cert_pem, &t.client_key_pem) {
            (Some(cert), Some(key)) => tls = tls.identity(ec::Identity::from_pem(cert, key)),
            (None, None) => {}
            _ => {
                return Err(StoreError::Invalid(
                    "etcd client certificate and key must be given together".into(),
                ));
            }
        }
        if let Some(d) = &t.domain {
            tls = tls.domain_name(d);
        }
        c = c.with_tls(tls);
    }
    Ok(c)
}

/// etcd leases have whole-second TTLs; round up so a lease never lives shorter than asked.
fn ttl_secs(ttl: Duration) -> i64 {
    let ttl = ttl.max(MIN_LEASE_TTL);
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for EtcdStore {
    fn max_txn_ops(&self) -> usize {
        self.options.max_txn_ops
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = self.keys.wire(key);
        let r = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await
            .map_err(Failure::into_store)?;
        r.kvs().first().map(|kv| self.keys.kv(kv)).transpose()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        // etcd counts a read-only transaction's gets against --max-txn-ops too.
        for chunk in keys.chunks(self.max_txn_ops().max(1)) {
            let txn = chunk
                .iter()
                .fold(crate::Txn::new(), |t, k| t.and_then(crate::Op::get(k)));
            for r in self.txn(txn).await?.responses {
                match r {
                    crate::OpResponse::Get { kv } => out.push(kv),
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "a read-only transaction answered {other:?}"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn range(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let (start, end) = self.keys.range(prefix, start_after);
        let mut opts = ec::GetOptions::new().with_range(end);
        if let Ok(limit @ 1..) = i64::try_from(limit) {
            opts = opts.with_limit(limit);
        }
        let r = self
            .call(|mut c| {
                let (start, opts) = (start.clone(), opts.clone());
                async move { c.get(start, Some(opts)).await }
            })
            .await
            .map_err(Failure::into_store)?;
        Ok(RangeResult {
            kvs: r
                .kvs()
                .iter()
                .map(|kv| self.keys.kv(kv))
                .collect::<Result<_, _>>()?,
            more: r.more(),
            revision: r.header().map_or(0, |h| rev(h.revision())),
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let wire = convert::txn(&self.keys, &txn)?;
        match self
            .call(|mut c| {
                let wire = wire.clone();
                async move { c.txn(wire).await }
            })
            .await
        {
            Ok(r) => convert::txn_result(&self.keys, &r),
            Err(Failure::LeaseNotFound) => Err(StoreError::LeaseNotFound(
                first_lease(&txn).unwrap_or(LeaseId(0)),
            )),
            Err(f) => Err(f.into_store()),
        }
    }

    async fn watch(&self, prefix: &str, from_revision: u64) -> Result<WatchStream, StoreError> {
        watch::start(self, prefix, from_revision).await
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let r = self
            .call(|mut c| async move { c.lease_grant(ttl_secs(ttl), None).await })
            .await
            .map_err(Failure::into_store)?;
        Ok(LeaseId(r.id()))
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One request on a fresh keep-alive stream: the interface renews once per call.
        let renewed = self
            .call(|mut c| async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
        match renewed {
            // etcd answers a renewal of an unknown or expired lease with TTL 0.
            Ok(Some(r)) if r.ttl() > 0 => Ok(()),
            Ok(Some(_)) | Err(Failure::LeaseNotFound) => Err(StoreError::LeaseNotFound(lease)),
            Ok(None) => Err(StoreError::Unavailable(
                "etcd closed the lease keep-alive stream".into(),
            )),
            Err(f) => Err(f.into_store()),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .call(|mut c| async move { c.lease_revoke(lease.0).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::LeaseNotFound) => Err(StoreError::LeaseNotFound(lease)),
            Err(f) => Err(f.into_store()),
        }
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        // A linearizable read of one (absent) key: its header carries the cluster revision.
        let mut probe = self.keys.wire("");
        probe.push(0);
        let r = self
            .call(|mut c| {
                let probe = probe.clone();
                async move {
                    c.get(probe, Some(ec::GetOptions::new().with_count_only()))
                        .await
                }
            })
            .await
            .map_err(Failure::into_store)?;
        Ok(r.header().map_or(0, |h| rev(h.revision())))
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let revision = wire_rev(revision)?;
        match self
            .call(|mut c| async move {
                let opts = ec::CompactionOptions::new().with_physical();
                c.compact(revision, Some(opts)).await
            })
            .await
        {
            Ok(_) => Ok(()),
            // Already compacted past it: nothing to do (as on the embedded engine).
            Err(Failure::Compacted) => Ok(()),
            Err(f) => Err(f.into_store()),
        }
    }
}
