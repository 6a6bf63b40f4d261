//! The scheduling controller: carries out the planner's placements. It keeps the pool in memory
//! ([`cluster::Cluster`], fed by watches of hosts and VMs), collects pending VMs from the VM
//! watch, plans a batch against the in-memory allocations, and commits the batch in one
//! transaction that compares every VM and host it touches. So two replicas, a racing delete or
//! a host that re-registered can never make it overbook a host: a lost race puts the batch's
//! allocations back, re-reads the hosts and VMs it touched, and plans again.
//!
//! A VM that fits nowhere stays pending with the reasons in `status.placement`, its operation
//! fails with `insufficient_capacity`, and it is retried whenever a host changes in a way that
//! could make it fit (or every few seconds), as Kubernetes does with unschedulable pods.

pub(crate) mod cluster;

use super::RESTART_DELAY;
use crate::app::App;
use crate::codec::{decode, encode};
use crate::keys;
use crate::scheduler::{Policy, Request, place};
use cluster::{Cluster, GroupKey};
use futures::{FutureExt, StreamExt};
use panal_store::{Compare, Op, Txn, WatchEvent, WatchStream};
use panal_types::host::{Host, HostAllocation};
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::{ApiError, ErrorCode, Name};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// The most VMs one commit places. A commit is one store transaction, so it is also bounded by
/// what the engine takes ([`batch_size`]); this cap keeps one commit (and the planning before
/// it) to a few milliseconds, so new VMs wait little for the next one.
const MAX_BATCH: usize = 500;

/// VMs per commit on this store: each VM may put three keys (the VM, its host, a failed
/// operation) and compare two, and etcd counts each part of a transaction against its
/// `--max-txn-ops` (128 by default: 42 VMs).
fn batch_size(store: &dyn panal_store::Store) -> usize {
    (store.max_txn_ops() / 3).clamp(1, MAX_BATCH)
}
/// How often parked (unplaceable) VMs are retried without any host change.
const RETRY_PARKED: Duration = Duration::from_secs(3);

/// VM key → (VM, its mod revision).
type Queue = BTreeMap<String, (Vm, u64)>;

fn needs_placement(vm: &Vm) -> bool {
    vm.status.host.is_none() && vm.status.phase == VmPhase::Pending && !vm.spec.deleted
}

/// Runs until aborted.
pub async fn run(app: App, policy: Policy) {
    loop {
        if let Err(e) = watch_once(&app, policy.clone()).await {
            tracing::warn!(error = %e, "scheduling controller restarting");
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

struct State {
    cluster: Cluster,
    /// VMs to plan now.
    queue: Queue,
    /// VMs that fit nowhere, waiting for a host change.
    parked: Queue,
    /// VM key → revision of this controller's own write, not yet echoed by the watch. The echo
    /// says nothing new (the commit already updated the queues and the cluster), so it is
    /// dropped without decoding: at scale, decoding our own writes was a large share of the
    /// controller's time.
    own: HashMap<String, u64>,
}

impl State {
    fn host_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                // Our own commit's echo (or anything older than what we hold): skip decoding.
                if let Some(name) = kv.key.strip_prefix(keys::HOSTS)
                    && self.cluster.rev_of(name) >= Some(kv.mod_revision)
                {
                    return;
                }
                if let Ok(h) = decode::<Host>(&kv.key, &kv.value)
                    && self.cluster.upsert_host(h, kv.mod_revision)
                {
                    self.queue.append(&mut self.parked);
                }
            }
            WatchEvent::Delete { key, .. } => {
                if let Some(name) = key.strip_prefix(keys::HOSTS) {
                    self.cluster.remove_host(name);
                }
            }
        }
    }

    fn vm_event(&mut self, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                if self.own.get(&kv.key) == Some(&kv.mod_revision) {
                    self.own.remove(&kv.key);
                    return;
                }
                let Ok(vm) = decode::<Vm>(&kv.key, &kv.value) else {
                    return;
                };
                let rev = kv.mod_revision;
                self.cluster.observe_vm(&kv.key, rev, Some(&vm));
                if !needs_placement(&vm) {
                    self.queue.remove(&kv.key);
                    self.parked.remove(&kv.key);
                } else if vm.status.placement.is_none() {
                    self.parked.remove(&kv.key);
                    self.queue.insert(kv.key, (vm, rev));
                } else if !self.queue.contains_key(&kv.key) {
                    // Already tried and refused (our own write echoing back): wait for a host.
                    self.parked.insert(kv.key, (vm, rev));
                }
            }
            WatchEvent::Delete { key, revision } => {
                self.own.remove(&key);
                self.cluster.observe_vm(&key, revision, None);
                self.queue.remove(&key);
                self.parked.remove(&key);
            }
        }
    }
}

/// The next event already waiting on a watch, if any.
fn ready(watch: &mut WatchStream) -> Result<Option<WatchEvent>, String> {
    match watch.next().now_or_never() {
        None => Ok(None),
        Some(None) => Err("watch ended".into()),
        Some(Some(ev)) => ev.map(Some).map_err(|e| e.to_string()),
    }
}

async fn watch_once(app: &App, policy: Policy) -> Result<(), String> {
    let store = app.repo().store().clone();
    let mut st = State {
        cluster: Cluster::new(policy),
        queue: Queue::new(),
        parked: Queue::new(),
        own: HashMap::new(),
    };
    let hosts = store
        .range(keys::HOSTS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    for kv in hosts.kvs {
        if let Ok(h) = decode::<Host>(&kv.key, &kv.value) {
            st.cluster.upsert_host(h, kv.mod_revision);
        }
    }
    let snapshot = store
        .range(keys::VMS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    for kv in snapshot.kvs {
        if let Ok(vm) = decode::<Vm>(&kv.key, &kv.value) {
            st.cluster.observe_vm(&kv.key, kv.mod_revision, Some(&vm));
            if needs_placement(&vm) {
                st.queue.insert(kv.key, (vm, kv.mod_revision));
            }
        }
    }
    let mut host_watch = store
        .watch(keys::HOSTS, hosts.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut vm_watch = store
        .watch(keys::VMS, snapshot.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut retry = tokio::time::interval(RETRY_PARKED);
    loop {
        // Take in everything already waiting, so each batch is planned on fresh state and one
        // commit places a whole burst.
        while let Some(ev) = ready(&mut host_watch)? {
            st.host_event(ev);
        }
        while let Some(ev) = ready(&mut vm_watch)? {
            st.vm_event(ev);
        }
        if !st.queue.is_empty() {
            schedule(app, &mut st).await?;
            continue;
        }
        tokio::select! {
            ev = vm_watch.next() => {
                st.vm_event(ev.ok_or("vm watch ended")?.map_err(|e| e.to_string())?);
            }
            ev = host_watch.next() => {
                st.host_event(ev.ok_or("host watch ended")?.map_err(|e| e.to_string())?);
            }
            _ = retry.tick() => st.queue.append(&mut st.parked),
        }
    }
}

/// The operation put that fails a VM's pending create with the reasons nothing fits.
async fn fail_operation(app: &App, vm: &mut Vm, why: &str) -> Option<Op> {
    let op_id = vm.status.operation.take()?;
    let op_key = keys::op(&op_id);
    let op = app.repo().get::<Operation>(&op_key).await.ok()??;
    if op.value.state.is_final() {
        return None;
    }
    let mut failed = op.value;
    failed.state = OperationState::Failed;
    failed.error = Some(ApiError::new(ErrorCode::InsufficientCapacity, why));
    failed.progress = Progress {
        percent: Some(100),
        message: why.to_owned(),
    };
    failed.updated_at = chrono::Utc::now();
    Some(Op::put(&op_key, encode(&failed)))
}

/// VMs placed with a stopped spec need nothing from their host until they start: they are what
/// their spec asks for once placed. Recording them stopped (and settling their create) in the
/// placement spares each a second rewrite by its agent's report, a third of the writes of a
/// burst of creates on etcd. Their operations are read in one go; if that fails they stay
/// `Scheduled` and the agent's report settles them, as for any other VM.
async fn settle_stopped(app: &App, mut txn: Txn, placed: &mut [(String, Vm)]) -> Txn {
    let stopped: Vec<usize> = (0..placed.len())
        .filter(|&i| placed[i].1.spec.power_state == PowerState::Stopped)
        .collect();
    let op_keys: Vec<String> = stopped
        .iter()
        .filter_map(|&i| placed[i].1.status.operation.map(|o| keys::op(&o)))
        .collect();
    let Ok(ops) = app.repo().get_many::<Operation>(&op_keys).await else {
        return txn;
    };
    let mut ops = ops.into_iter();
    for i in stopped {
        let vm = &mut placed[i].1;
        vm.status.phase = VmPhase::Stopped;
        vm.status.observed_generation = vm.generation;
        vm.status.observed_restart_nonce = vm.spec.restart_nonce;
        if vm.status.operation.is_none() {
            continue;
        }
        match ops.next() {
            Some(Some(op)) => txn = crate::app::settle_into(txn, vm, op),
            _ => vm.status.operation = None,
        }
    }
    txn
}

async fn schedule(app: &App, st: &mut State) -> Result<(), String> {
    let batch = batch_size(app.repo().store().as_ref());
    let keys_batch: Vec<String> = st.queue.keys().take(batch).cloned().collect();
    let n = st.cluster.candidates.len();
    let mut txn = Txn::new();
    let mut writes = 0usize;
    // Allocations before this batch, to put back if the commit fails.
    let mut saved: HashMap<usize, HostAllocation> = HashMap::new();
    // Group members placed by this batch, on top of the committed ones.
    let mut batch_members: HashMap<GroupKey, HashMap<usize, u32>> = HashMap::new();
    let mut placed: Vec<(String, Vm)> = Vec::new();
    let mut unplaced: Vec<(String, Vm)> = Vec::new();
    for key in &keys_batch {
        let Some((mut vm, rev)) = st.queue.remove(key) else {
            continue;
        };
        let group = vm
            .spec
            .placement
            .group
            .as_ref()
            .map(|g| (vm.project.clone(), g.name.clone()));
        let mut members = st.cluster.members(&vm);
        if let Some(extra) = group.as_ref().and_then(|g| batch_members.get(g)) {
            for (i, k) in extra {
                *members.entry(*i).or_default() += k;
            }
        }
        let req = Request {
            vcpus: vm.spec.vcpus,
            memory_bytes: vm.spec.memory_bytes,
            hypervisor: vm.spec.hypervisor,
            placement: &vm.spec.placement,
            volumes: &vm.spec.volumes,
            networked: !vm.spec.nics.is_empty(),
        };
        let c = &st.cluster;
        let plan = place(
            &req,
            &c.candidates,
            &c.allocs,
            &members,
            c.policy(),
            c.start,
        );
        if let Err(nofit) = &plan
            && vm.status.placement.as_deref() == Some(nofit.to_string().as_str())
            && vm.status.operation.is_none()
        {
            // Still refused for the same reasons: nothing new to write.
            st.parked.insert(key.clone(), (vm, rev));
            continue;
        }
        txn = txn.when(Compare::unchanged(key, rev));
        writes += 1;
        match plan {
            Ok(choice) => {
                let i = choice.host;
                st.cluster.start = (st.cluster.start + choice.examined) % n.max(1);
                saved
                    .entry(i)
                    .or_insert_with(|| st.cluster.allocs[i].clone());
                let a = &mut st.cluster.allocs[i];
                a.vcpus += u64::from(vm.spec.vcpus);
                a.memory_bytes += vm.spec.memory_bytes;
                a.vms += 1;
                if let Some(g) = group {
                    *batch_members.entry(g).or_default().entry(i).or_default() += 1;
                }
                let host_name: Name = st.cluster.records[i].name.clone();
                vm.status.phase = VmPhase::Scheduled;
                vm.status.host = Some(host_name.clone());
                vm.status.placement = Some(choice.explanation.clone());
                vm.status.push_event(
                    "Scheduled",
                    format!("placed on {host_name}: {}", choice.explanation),
                );
                placed.push((key.clone(), vm));
            }
            Err(nofit) => {
                let why = nofit.to_string();
                vm.status.placement = Some(why.clone());
                vm.status.push_event("FailedScheduling", why.clone());
                if let Some(op) = fail_operation(app, &mut vm, &why).await {
                    txn = txn.and_then(op);
                }
                txn = txn.and_then(Op::put(key, encode(&vm)));
                unplaced.push((key.clone(), vm));
            }
        }
    }
    if writes == 0 {
        return Ok(());
    }
    txn = settle_stopped(app, txn, &mut placed).await;
    for (key, vm) in &placed {
        txn = txn.and_then(Op::put(key, encode(vm)));
    }
    for &i in saved.keys() {
        // Encode the record with its new allocation in place: cloning whole host records
        // (inventories with every CPU flag) was most of a commit's allocations.
        let rec = &mut st.cluster.records[i];
        let key = keys::host(rec.name.as_str());
        let committed = std::mem::replace(&mut rec.allocation, st.cluster.allocs[i].clone());
        txn = txn
            .when(Compare::unchanged(&key, st.cluster.revs[i]))
            .and_then(Op::put(&key, encode(&*rec)));
        rec.allocation = committed;
    }
    let touched: Vec<usize> = saved.keys().copied().collect();
    let r = match app.repo().txn(txn).await {
        Ok(r) if r.succeeded => r,
        other => {
            for (i, a) in saved {
                st.cluster.allocs[i] = a;
            }
            other.map_err(|e| e.to_string())?;
            return retry_batch(app, st, &touched, keys_batch).await;
        }
    };
    for &i in &touched {
        st.cluster.records[i].allocation = st.cluster.allocs[i].clone();
        st.cluster.revs[i] = r.revision;
    }
    for (key, vm) in placed {
        st.cluster.observe_vm(&key, r.revision, Some(&vm));
        st.own.insert(key, r.revision);
    }
    for (key, vm) in unplaced {
        st.own.insert(key.clone(), r.revision);
        st.parked.insert(key, (vm, r.revision));
    }
    Ok(())
}

/// After a lost race (a VM or host changed): re-reads what the batch touched to plan it again.
async fn retry_batch(
    app: &App,
    st: &mut State,
    touched: &[usize],
    keys_batch: Vec<String>,
) -> Result<(), String> {
    for &i in touched {
        let key = keys::host(st.cluster.records[i].name.as_str());
        if let Ok(Some(h)) = app.repo().get::<Host>(&key).await {
            st.cluster.upsert_host(h.value, h.mod_revision);
        }
    }
    for key in keys_batch {
        if let Ok(Some(v)) = app.repo().get::<Vm>(&key).await
            && needs_placement(&v.value)
        {
            st.queue.insert(key, (v.value, v.mod_revision));
        }
    }
    Ok(())
}
