//! Hosts: the inventory agents register, their liveness leases, and the pool limits that VM
//! requests are checked against.

use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::keys;
use crate::repo::store_error;
use panal_store::{Op, StoreError, Txn};
use panal_types::agent::HostRegistration;
use panal_types::error::check_name;
use panal_types::host::{Host, HostAllocation, HostState};
use panal_types::page::Page;
use panal_types::vm::HypervisorKind;
use panal_types::{ApiError, HostId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the pool limits used by validation may be stale.
const LIMITS_CACHE_TTL: Duration = Duration::from_millis(500);

impl App {
    /// Lists hosts.
    pub async fn list_hosts(
        &self,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Host>, ApiError> {
        let (limit, start) = page_bounds(limit, token, keys::HOSTS)?;
        let (items, more, _) = self
            .repo
            .list::<Host>(keys::HOSTS, start.as_deref(), limit)
            .await?;
        let items: Vec<Host> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|h| h.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Reads a host.
    pub async fn host(&self, name: &str) -> Result<Host, ApiError> {
        let name = check_name("name", name)?;
        self.repo
            .get::<Host>(&keys::host(name.as_str()))
            .await?
            .map(|v| v.value)
            .ok_or_else(|| ApiError::not_found("host", &name))
    }

    /// Every host, read through a short-lived cache (validation runs on every create).
    pub(super) async fn all_hosts_cached(&self) -> Result<Arc<Vec<Host>>, ApiError> {
        if let Some((at, hosts)) = &*self.host_cache.lock()
            && at.elapsed() < LIMITS_CACHE_TTL
        {
            return Ok(hosts.clone());
        }
        let (hosts, _, _) = self.repo.list::<Host>(keys::HOSTS, None, 0).await?;
        let hosts = Arc::new(hosts.into_iter().map(|v| v.value).collect::<Vec<_>>());
        *self.host_cache.lock() = Some((Instant::now(), hosts.clone()));
        Ok(hosts)
    }

    /// The biggest VM the pool could hold for a hypervisor.
    pub(super) async fn pool_limits(
        &self,
        kind: HypervisorKind,
    ) -> Result<Option<(u32, u64)>, ApiError> {
        let hosts = self.all_hosts_cached().await?;
        Ok(super::validate::pool_limits(&hosts, kind))
    }

    /// Registers or re-registers a host and (re)creates its liveness lease.
    pub async fn register_host(&self, reg: HostRegistration) -> Result<Host, ApiError> {
        let key = keys::host(reg.name.as_str());
        let lease = self
            .repo
            .store()
            .lease_grant(self.config.host_lease_ttl)
            .await
            .map_err(store_error)?;
        let now = chrono::Utc::now();
        loop {
            let existing = self.repo.get::<Host>(&key).await?;
            let host = match &existing {
                Some(h) => {
                    let mut host = h.value.clone();
                    host.inventory = reg.inventory.clone();
                    host.labels = reg.labels.clone();
                    host.zone = reg.zone.clone();
                    host.last_seen = now;
                    if host.state == HostState::NotReady {
                        host.state = HostState::Ready;
                    }
                    host
                }
                None => Host {
                    id: HostId::new(),
                    name: reg.name.clone(),
                    state: HostState::Ready,
                    inventory: reg.inventory.clone(),
                    allocation: HostAllocation::default(),
                    labels: reg.labels.clone(),
                    zone: reg.zone.clone(),
                    created_at: now,
                    last_seen: now,
                },
            };
            let cmp = panal_store::Compare::ModRevision(
                key.clone(),
                existing.as_ref().map_or(0, |h| h.mod_revision),
            );
            let txn = Txn::new()
                .when(cmp)
                .and_then(Op::put(&key, encode(&host)))
                .and_then(Op::put_with_lease(
                    &keys::host_lease(reg.name.as_str()),
                    b"alive".to_vec(),
                    lease,
                ));
            if self.repo.txn(txn).await?.succeeded {
                self.leases.lock().insert(reg.name.to_string(), lease);
                *self.host_cache.lock() = None;
                return Ok(host);
            }
        }
    }

    /// Renews a host's lease; if it had expired, takes a new one and marks the host alive again.
    pub async fn heartbeat(&self, name: &str) -> Result<(), ApiError> {
        let lease = self.leases.lock().get(name).copied();
        let Some(lease) = lease else {
            return Err(ApiError::not_found("host registration", name));
        };
        match self.repo.store().lease_keep_alive(lease).await {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseNotFound(_)) => {
                let host = self.host(name).await?;
                self.register_host(HostRegistration {
                    name: host.name,
                    inventory: host.inventory,
                    labels: host.labels,
                    zone: host.zone,
                })
                .await
                .map(|_| ())
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// Marks a host ready or not ready after its liveness key came or went.
    pub async fn set_host_liveness(&self, name: &str, alive: bool) -> Result<(), ApiError> {
        self.repo
            .update::<Host, _>(&keys::host(name), |h| {
                let next = match (h.state, alive) {
                    (HostState::NotReady, true) => HostState::Ready,
                    (HostState::Ready, false) => HostState::NotReady,
                    _ => return Ok(false),
                };
                h.state = next;
                Ok(true)
            })
            .await?;
        *self.host_cache.lock() = None;
        Ok(())
    }
}
