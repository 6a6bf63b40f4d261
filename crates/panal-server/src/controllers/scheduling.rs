//! The scheduling controller: carries out the planner's placements. It collects pending VMs from
//! the watch, plans a whole batch against the hosts' allocations in memory, and commits the batch
//! in one transaction that compares every VM and host it touches, so two replicas (or a racing
//! delete) can never overbook a host: a lost race re-reads and plans again.
//!
//! A VM that fits nowhere stays pending with the reasons in `status.placement`, its operation
//! fails with `insufficient_capacity`, and it is retried whenever hosts change (or every few
//! seconds), as Kubernetes does with unschedulable pods.

use super::RESTART_DELAY;
use crate::app::App;
use crate::codec::{decode, encode};
use crate::keys;
use crate::scheduler::{Policy, Request, place};
use futures::{FutureExt, StreamExt};
use panal_store::{Compare, Op, Txn, WatchEvent};
use panal_types::host::Host;
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::vm::{Vm, VmPhase};
use panal_types::{ApiError, ErrorCode, Name};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// VMs per transaction: etcd refuses transactions of more than 128 operations by default.
const BATCH: usize = 40;
/// How often parked (unplaceable) VMs are retried without any host change.
const RETRY_PARKED: Duration = Duration::from_secs(3);

fn needs_placement(vm: &Vm) -> bool {
    vm.status.host.is_none() && vm.status.phase == VmPhase::Pending && !vm.spec.deleted
}

/// Runs until aborted.
pub async fn run(app: App, policy: Policy) {
    loop {
        if let Err(e) = watch_once(&app, &policy).await {
            tracing::warn!(error = %e, "scheduling controller restarting");
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

async fn watch_once(app: &App, policy: &Policy) -> Result<(), String> {
    let store = app.repo().store().clone();
    let snapshot = store
        .range(keys::VMS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    let mut queue: BTreeMap<String, (Vm, u64)> = BTreeMap::new();
    for kv in snapshot.kvs {
        if let Ok(vm) = decode::<Vm>(&kv.key, &kv.value)
            && needs_placement(&vm)
        {
            queue.insert(kv.key, (vm, kv.mod_revision));
        }
    }
    let mut parked: BTreeMap<String, (Vm, u64)> = BTreeMap::new();
    let mut vm_watch = store
        .watch(keys::VMS, snapshot.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut host_watch = store
        .watch(keys::HOSTS, snapshot.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut retry = tokio::time::interval(RETRY_PARKED);
    loop {
        if !queue.is_empty() {
            schedule(app, policy, &mut queue, &mut parked).await?;
            continue;
        }
        tokio::select! {
            ev = vm_watch.next() => {
                let ev = ev.ok_or("vm watch ended")?.map_err(|e| e.to_string())?;
                absorb(ev, &mut queue, &mut parked);
                // Take everything already waiting so one commit places the whole burst.
                while let Some(Some(ev)) = vm_watch.next().now_or_never() {
                    absorb(ev.map_err(|e| e.to_string())?, &mut queue, &mut parked);
                }
            }
            ev = host_watch.next() => {
                ev.ok_or("host watch ended")?.map_err(|e| e.to_string())?;
                queue.append(&mut parked);
            }
            _ = retry.tick() => queue.append(&mut parked),
        }
    }
}

fn absorb(
    ev: WatchEvent,
    queue: &mut BTreeMap<String, (Vm, u64)>,
    parked: &mut BTreeMap<String, (Vm, u64)>,
) {
    match ev {
        WatchEvent::Put(kv) => {
            let Ok(vm) = decode::<Vm>(&kv.key, &kv.value) else {
                return;
            };
            let rev = kv.mod_revision;
            if !needs_placement(&vm) {
                queue.remove(&kv.key);
                parked.remove(&kv.key);
            } else if vm.status.placement.is_none() {
                parked.remove(&kv.key);
                queue.insert(kv.key, (vm, rev));
            } else if !queue.contains_key(&kv.key) {
                // Already tried and refused (our own write echoing back): wait for a host change.
                parked.insert(kv.key, (vm, rev));
            }
        }
        WatchEvent::Delete { key, .. } => {
            queue.remove(&key);
            parked.remove(&key);
        }
    }
}

async fn schedule(
    app: &App,
    policy: &Policy,
    queue: &mut BTreeMap<String, (Vm, u64)>,
    parked: &mut BTreeMap<String, (Vm, u64)>,
) -> Result<(), String> {
    let (hosts, _, _) = app
        .repo()
        .list::<Host>(keys::HOSTS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    let host_revs: Vec<u64> = hosts.iter().map(|h| h.mod_revision).collect();
    let mut hosts: Vec<Host> = hosts.into_iter().map(|h| h.value).collect();
    let mut allocs: Vec<_> = hosts.iter().map(|h| h.allocation.clone()).collect();
    let keys_batch: Vec<String> = queue.keys().take(BATCH).cloned().collect();
    let mut txn = Txn::new();
    let mut touched: BTreeSet<usize> = BTreeSet::new();
    let mut unplaced = Vec::new();
    for key in &keys_batch {
        let Some((mut vm, rev)) = queue.remove(key) else {
            continue;
        };
        let req = Request {
            vcpus: vm.spec.vcpus,
            memory_bytes: vm.spec.memory_bytes,
            hypervisor: vm.spec.hypervisor,
        };
        let plan = place(&req, &hosts, &allocs, policy);
        if let Err(nofit) = &plan
            && vm.status.placement.as_deref() == Some(nofit.to_string().as_str())
            && vm.status.operation.is_none()
        {
            // Still refused for the same reasons: nothing new to write.
            parked.insert(key.clone(), (vm, rev));
            continue;
        }
        txn = txn.when(Compare::unchanged(key, rev));
        match plan {
            Ok(p) => {
                let a = &mut allocs[p.host];
                a.vcpus += u64::from(vm.spec.vcpus);
                a.memory_bytes += vm.spec.memory_bytes;
                a.vms += 1;
                touched.insert(p.host);
                let host_name: Name = hosts[p.host].name.clone();
                vm.status.phase = VmPhase::Scheduled;
                vm.status.host = Some(host_name.clone());
                vm.status.placement = Some(p.explanation.clone());
                vm.status.push_event(
                    "Scheduled",
                    format!("placed on {host_name}: {}", p.explanation),
                );
                txn = txn.and_then(Op::put(key, encode(&vm)));
            }
            Err(nofit) => {
                let why = nofit.to_string();
                vm.status.placement = Some(why.clone());
                vm.status.push_event("FailedScheduling", why.clone());
                if let Some(op_id) = vm.status.operation.take() {
                    let op_key = keys::op(&op_id);
                    if let Ok(Some(op)) = app.repo().get::<Operation>(&op_key).await
                        && !op.value.state.is_final()
                    {
                        let mut failed = op.value;
                        failed.state = OperationState::Failed;
                        failed.error =
                            Some(ApiError::new(ErrorCode::InsufficientCapacity, why.clone()));
                        failed.progress = Progress {
                            percent: Some(100),
                            message: why.clone(),
                        };
                        failed.updated_at = chrono::Utc::now();
                        txn = txn.and_then(Op::put(&op_key, encode(&failed)));
                    }
                }
                txn = txn.and_then(Op::put(key, encode(&vm)));
                unplaced.push((key.clone(), vm));
            }
        }
    }
    for &i in &touched {
        let key = keys::host(hosts[i].name.as_str());
        hosts[i].allocation = allocs[i].clone();
        txn = txn
            .when(Compare::unchanged(&key, host_revs[i]))
            .and_then(Op::put(&key, encode(&hosts[i])));
    }
    let r = app.repo().txn(txn).await.map_err(|e| e.to_string())?;
    if r.succeeded {
        for (key, vm) in unplaced {
            parked.insert(key, (vm, r.revision));
        }
        return Ok(());
    }
    // Lost a race (a VM or host changed): re-read the batch's VMs and plan again.
    for key in keys_batch {
        if let Ok(Some(v)) = app.repo().get::<Vm>(&key).await
            && needs_placement(&v.value)
        {
            queue.insert(key, (v.value, v.mod_revision));
        }
    }
    Ok(())
}
