//! The assignment hub: one watch of the VM prefix per control plane, fanned out to the
//! assignment streams of every host. It keeps an index host → placed VMs, so a host's stream
//! costs O(its VMs) to open and each VM change is decoded once and routed to the one host it
//! concerns, instead of every stream listing and watching every VM (O(hosts × VMs)).
//!
//! Protocol (all index and subscriber changes happen under one mutex, never across an await):
//! - A VM concerns the host it is placed on and, while it live-migrates, the target host too.
//! - The feed is started by the first subscriber: list the VMs at revision R, build the index,
//!   watch from R+1. Each event updates the index and is pushed to the affected host's
//!   subscribers in the same critical section, so a subscriber registered under that mutex gets
//!   exactly the index as of the last applied event, then every later change: snapshot,
//!   `Synced`, changes; `Removed` when a VM moves off the host or is deleted.
//! - Subscriber queues are bounded (snapshot + [`SLACK`]) and never waited on: a subscriber
//!   whose queue is full is dropped, its stream ends, and its agent reconnects and starts from a
//!   fresh snapshot, as Kubernetes' watch cache does with slow watchers. One slow host never
//!   stalls the others.
//! - A watch failure ends every stream (with the error) and stops the feed; the next subscriber
//!   starts a new one. The feed also stops, freeing the index and its store watch, within
//!   [`IDLE_CHECK`] of its last subscriber leaving. `epoch` tells a stopped feed that a newer
//!   one owns the state, so it touches nothing.

use crate::codec::decode;
use crate::keys;
use futures::StreamExt;
use panal_agent::link::{AssignmentStream, LinkError};
use panal_store::{DynStore, WatchEvent, WatchStream};
use panal_types::agent::Assignment;
use panal_types::vm::Vm;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Room in a subscriber's queue beyond its snapshot.
pub const SLACK: usize = 1024;
/// How often an idle feed checks whether anyone still listens.
pub const IDLE_CHECK: Duration = Duration::from_millis(200);

type Sub = mpsc::Sender<Result<Assignment, LinkError>>;

#[derive(Default)]
struct HubState {
    /// Which feed owns the state; bumped by every start.
    epoch: u64,
    running: bool,
    /// Host → VM key → the VM's latest record (with `revision` set).
    by_host: HashMap<String, HashMap<String, Arc<Vm>>>,
    /// VM key → hosts it concerns (see [`hosts_of`]).
    host_of: HashMap<String, Vec<String>>,
    /// Host → open streams.
    subs: HashMap<String, Vec<Sub>>,
}

impl HubState {
    fn stop(&mut self) {
        self.running = false;
        self.by_host.clear();
        self.host_of.clear();
        self.subs.clear();
    }

    fn insert(&mut self, key: String, vm: Vm) -> Option<Arc<Vm>> {
        let hosts = hosts_of(&vm);
        if hosts.is_empty() {
            return None;
        }
        let vm = Arc::new(vm);
        for host in &hosts {
            self.by_host
                .entry(host.clone())
                .or_default()
                .insert(key.clone(), vm.clone());
        }
        self.host_of.insert(key, hosts);
        Some(vm)
    }

    /// Forgets a VM; returns the hosts it was on and its last record.
    fn remove(&mut self, key: &str) -> Option<(Vec<String>, Arc<Vm>)> {
        let hosts = self.host_of.remove(key)?;
        let mut last = None;
        for host in &hosts {
            if let Some(vms) = self.by_host.get_mut(host) {
                last = vms.remove(key).or(last);
                if vms.is_empty() {
                    self.by_host.remove(host);
                }
            }
        }
        Some((hosts, last?))
    }

    /// Pushes a message to a host's streams, dropping those that are gone or too far behind.
    fn send(&mut self, host: &str, msg: impl Fn() -> Assignment) {
        let Some(subs) = self.subs.get_mut(host) else {
            return;
        };
        subs.retain(|tx| match tx.try_send(Ok(msg())) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                tracing::warn!(host, "assignment stream fell behind; the agent will resync");
                false
            }
        });
        if subs.is_empty() {
            self.subs.remove(host);
        }
    }

    fn apply(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                // A VM that is on no host and was on none concerns no stream (at scale, every
                // create): read only its host before decoding the whole record.
                if !self.host_of.contains_key(&kv.key)
                    && decode::<Placed>(&kv.key, &kv.value).is_ok_and(|p| p.status.host.is_none())
                {
                    return;
                }
                let Ok(mut vm) = decode::<Vm>(&kv.key, &kv.value) else {
                    return;
                };
                vm.revision = kv.mod_revision;
                let targets = hosts_of(&vm);
                if let Some((old, gone)) = self.remove(&kv.key) {
                    for h in old.iter().filter(|h| !targets.contains(h)) {
                        self.send(h, || Assignment::Removed { id: gone.id });
                    }
                }
                if let Some(vm) = self.insert(kv.key, vm) {
                    for h in &targets {
                        self.send(h, || Assignment::Upsert {
                            vm: Box::new((*vm).clone()),
                        });
                    }
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some((hosts, gone)) = self.remove(&key) {
                    for h in &hosts {
                        self.send(h, || Assignment::Removed { id: gone.id });
                    }
                }
            }
        }
    }
}

/// The hosts whose agents act on a VM: the one it is placed on, and the target of a live
/// migration in flight (which launches the incoming hypervisor and, once the VM is placed there,
/// keeps it; if the migration is unwound the VM leaves its stream and it cleans up).
fn hosts_of(vm: &Vm) -> Vec<String> {
    let mut hosts: Vec<String> = vm.status.host.iter().map(|h| h.to_string()).collect();
    if let Some(m) = &vm.status.migration
        && !hosts.iter().any(|h| h == m.to.as_str())
    {
        hosts.push(m.to.to_string());
    }
    hosts
}

/// The part of a VM record that says whether it is on a host.
#[derive(serde::Deserialize)]
struct Placed {
    status: PlacedStatus,
}

#[derive(serde::Deserialize)]
struct PlacedStatus {
    #[serde(default)]
    host: Option<serde::de::IgnoredAny>,
}

/// Fans one VM watch out to every host's assignment stream. Shared by all clones of an `App`.
pub struct AssignmentHub {
    store: DynStore,
    state: Arc<Mutex<HubState>>,
    /// Serializes feed starts so concurrent first subscribers start one feed.
    starting: tokio::sync::Mutex<()>,
}

fn unavailable(e: impl std::fmt::Display) -> LinkError {
    LinkError::Unavailable(e.to_string())
}

impl AssignmentHub {
    /// A hub over `store`; the feed starts with the first subscriber.
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            state: Arc::default(),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    /// Every VM placed on `host`, `Synced`, then each change.
    pub async fn subscribe(&self, host: &str) -> Result<AssignmentStream, LinkError> {
        loop {
            self.ensure_running().await?;
            let mut st = self.state.lock();
            if !st.running {
                // The feed failed between the start and now: start another.
                continue;
            }
            let snapshot: Vec<Arc<Vm>> = st
                .by_host
                .get(host)
                .map(|vms| vms.values().cloned().collect())
                .unwrap_or_default();
            let (tx, rx) = mpsc::channel(snapshot.len() + SLACK);
            for vm in snapshot {
                // Cannot fail: the queue was sized for the snapshot.
                let _ = tx.try_send(Ok(Assignment::Upsert {
                    vm: Box::new((*vm).clone()),
                }));
            }
            let _ = tx.try_send(Ok(Assignment::Synced));
            st.subs.entry(host.to_owned()).or_default().push(tx);
            return Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed());
        }
    }

    async fn ensure_running(&self) -> Result<(), LinkError> {
        let _one = self.starting.lock().await;
        if self.state.lock().running {
            return Ok(());
        }
        let snapshot = self
            .store
            .range(keys::VMS, None, 0)
            .await
            .map_err(unavailable)?;
        let watch = self
            .store
            .watch(keys::VMS, snapshot.revision + 1)
            .await
            .map_err(unavailable)?;
        let epoch = {
            let mut st = self.state.lock();
            st.stop();
            for kv in snapshot.kvs {
                if let Ok(mut vm) = decode::<Vm>(&kv.key, &kv.value) {
                    vm.revision = kv.mod_revision;
                    st.insert(kv.key, vm);
                }
            }
            st.epoch += 1;
            st.running = true;
            st.epoch
        };
        tokio::spawn(feed(self.state.clone(), watch, epoch));
        Ok(())
    }
}

async fn feed(state: Arc<Mutex<HubState>>, mut watch: WatchStream, epoch: u64) {
    // Not at once: the subscriber that started the feed registers just after.
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_CHECK, IDLE_CHECK);
    loop {
        let ev = tokio::select! {
            ev = watch.next() => ev,
            _ = idle.tick() => {
                let mut st = state.lock();
                if st.epoch != epoch {
                    return;
                }
                st.subs.retain(|_, subs| {
                    subs.retain(|tx| !tx.is_closed());
                    !subs.is_empty()
                });
                if st.subs.is_empty() {
                    st.stop();
                    return;
                }
                continue;
            }
        };
        let mut st = state.lock();
        if st.epoch != epoch {
            return;
        }
        match ev {
            Some(Ok(ev)) => st.apply(ev),
            Some(Err(e)) => {
                for subs in st.subs.values() {
                    for tx in subs {
                        let _ = tx.try_send(Err(unavailable(&e)));
                    }
                }
                st.stop();
                return;
            }
            None => {
                st.stop();
                return;
            }
        }
    }
}
