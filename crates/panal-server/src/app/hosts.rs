//! Hosts: the inventory agents register, their liveness leases, and the pool limits that VM
//! requests are checked against.

use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::keys;
use crate::repo::store_error;
use panal_store::{Op, StoreError, Txn};
use panal_types::agent::HostRegistration;
use panal_types::error::check_name;
use panal_types::host::{Host, HostAllocation, HostDrain, HostDrainAccepted, HostMode, HostState};
use panal_types::operation::{Operation, OperationKind, OperationState, OperationTarget};
use panal_types::page::Page;
use panal_types::vm::HypervisorKind;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, HostId, Name, OperationId};
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
            .ok_or_else(|| ApiError::not_found("host", &name).with_field("name"))
    }

    /// Every host, read through a short-lived cache (validation runs on every create). One
    /// request at a time refreshes it; while it does, the others use the expired copy (if there
    /// is one: a host change empties the cache) instead of each listing every host, which at
    /// thousands of hosts cost more than the creates themselves.
    pub(super) async fn all_hosts_cached(&self) -> Result<Arc<Vec<Host>>, ApiError> {
        let cached = self.host_cache.lock().clone();
        if let Some((at, hosts)) = &cached
            && at.elapsed() < LIMITS_CACHE_TTL
        {
            return Ok(hosts.clone());
        }
        let _refreshing = match (self.host_refresh.try_lock(), cached) {
            (Ok(guard), _) => guard,
            (Err(_), Some((_, stale))) => return Ok(stale),
            (Err(_), None) => {
                let guard = self.host_refresh.lock().await;
                if let Some((_, hosts)) = &*self.host_cache.lock() {
                    return Ok(hosts.clone());
                }
                guard
            }
        };
        if let Some((at, hosts)) = &*self.host_cache.lock()
            && at.elapsed() < LIMITS_CACHE_TTL
        {
            return Ok(hosts.clone());
        }
        self.all_hosts_fresh().await
    }

    /// Every host as the store has it now; refreshes the cache.
    pub(super) async fn all_hosts_fresh(&self) -> Result<Arc<Vec<Host>>, ApiError> {
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
        crate::scheduler::validate_host_labels(&reg.labels)?;
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
                    // Alive again, in whatever mode an administrator left it.
                    host.set_alive(true);
                    host
                }
                None => Host {
                    id: HostId::new(),
                    name: reg.name.clone(),
                    state: HostState::Ready,
                    mode: HostMode::Schedulable,
                    drain: None,
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
                if h.alive() == alive {
                    return Ok(false);
                }
                h.set_alive(alive);
                Ok(true)
            })
            .await?;
        *self.host_cache.lock() = None;
        Ok(())
    }

    /// Cordons a host: it takes no new VMs; those it runs stay. Idempotent. A draining host is
    /// refused (uncordon cancels a drain).
    pub async fn cordon_host(&self, name: &str) -> Result<Host, ApiError> {
        self.change_mode(name, |h| match h.mode {
            HostMode::Cordoned => Ok(false),
            HostMode::Draining => Err(draining_conflict(h)),
            HostMode::Schedulable | HostMode::Maintenance => {
                h.set_mode(HostMode::Cordoned);
                Ok(true)
            }
        })
        .await
    }

    /// Makes a host schedulable again. Uncordoning a draining host cancels the drain: VMs
    /// already moved stay where they went, a VM caught mid-move is put back as it was.
    pub async fn uncordon_host(&self, name: &str) -> Result<Host, ApiError> {
        let name = check_name("name", name)?;
        let key = keys::host(name.as_str());
        for _ in 0..16 {
            let cur = self
                .repo
                .get::<Host>(&key)
                .await?
                .ok_or_else(|| ApiError::not_found("host", &name).with_field("name"))?;
            let mut host = cur.value;
            if host.mode == HostMode::Schedulable && host.drain.is_none() {
                return Ok(host);
            }
            let mut txn = Txn::new().when(panal_store::Compare::unchanged(&key, cur.mod_revision));
            // Cancel the drain in the same transaction, so the drain controller never sees a
            // cancelled drain on a host still draining (it would cordon it).
            if let Some(d) = host.drain.take() {
                let op_key = keys::op(&d.operation);
                if let Some(op) = self.repo.get::<Operation>(&op_key).await?
                    && !op.value.state.is_final()
                {
                    let mut op_v = op.value;
                    op_v.state = OperationState::Cancelled;
                    op_v.progress.message =
                        format!("cancelled by uncordon; {}", op_v.progress.message);
                    op_v.updated_at = chrono::Utc::now();
                    txn = txn
                        .when(panal_store::Compare::unchanged(&op_key, op.mod_revision))
                        .and_then(Op::put(&op_key, encode(&op_v)));
                }
            }
            host.set_mode(HostMode::Schedulable);
            txn = txn.and_then(Op::put(&key, encode(&host)));
            if self.repo.txn(txn).await?.succeeded {
                *self.host_cache.lock() = None;
                return Ok(host);
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the host kept changing; retry",
        ))
    }

    /// Starts draining a host: it takes no new VMs, and the drain controller moves each of its
    /// VMs to another host (after checking that all of them fit somewhere), then puts it in
    /// `maintenance`. Answers with the operation that reports the progress; a host already
    /// draining answers with its drain in progress.
    /// `cold`: running VMs that cannot move live are stopped and started elsewhere (otherwise
    /// the drain fails on the first of them).
    pub async fn drain_host(&self, name: &str, cold: bool) -> Result<HostDrainAccepted, ApiError> {
        let name = check_name("name", name)?;
        let key = keys::host(name.as_str());
        for _ in 0..16 {
            let cur = self
                .repo
                .get::<Host>(&key)
                .await?
                .ok_or_else(|| ApiError::not_found("host", &name).with_field("name"))?;
            let mut host = cur.value;
            if let Some(d) = &host.drain {
                let operation = self.operation(&d.operation.to_string()).await?;
                return Ok(HostDrainAccepted { host, operation });
            }
            let op = host_operation(
                OperationKind::HostDrain,
                &host.name,
                "checking where the VMs can go",
            );
            host.drain = Some(HostDrain {
                operation: op.id,
                total: None,
                cold,
            });
            host.set_mode(HostMode::Draining);
            let txn = Txn::new()
                .when(panal_store::Compare::unchanged(&key, cur.mod_revision))
                .and_then(Op::put(&key, encode(&host)))
                .and_then(Op::put(&keys::op(&op.id), encode(&op)));
            if self.repo.txn(txn).await?.succeeded {
                *self.host_cache.lock() = None;
                return Ok(HostDrainAccepted {
                    host,
                    operation: op,
                });
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the host kept changing; retry",
        ))
    }

    /// Applies a mode change with compare-and-swap (404 with field `name` for unknown hosts).
    async fn change_mode<F>(&self, name: &str, change: F) -> Result<Host, ApiError>
    where
        F: Fn(&mut Host) -> Result<bool, ApiError>,
    {
        let name = check_name("name", name)?;
        let updated = self
            .repo
            .update::<Host, _>(&keys::host(name.as_str()), change)
            .await?
            .ok_or_else(|| ApiError::not_found("host", &name).with_field("name"))?;
        *self.host_cache.lock() = None;
        Ok(updated.value)
    }
}

fn draining_conflict(h: &Host) -> ApiError {
    let e = ApiError::conflict(format!(
        "host \"{}\" is being drained; uncordon it to cancel the drain",
        h.name
    ));
    match &h.drain {
        Some(d) => e.with_operation(d.operation),
        None => e,
    }
}

/// A fresh running operation on a host. Hosts belong to no project; operations name one, so host
/// operations name the default project.
fn host_operation(kind: OperationKind, host: &Name, message: &str) -> Operation {
    let target = OperationTarget {
        kind: "host".into(),
        project: Name::parse(DEFAULT_PROJECT).expect("valid project name"),
        name: host.clone(),
    };
    super::vms::started_operation(OperationId::new(), kind, target, 0, message)
}
