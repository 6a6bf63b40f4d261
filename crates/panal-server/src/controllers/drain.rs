//! The drain controller: empties draining hosts by cold moves, driven from stored state only
//! (the host's `drain` record and each moving VM's `status.moving`), so a restart or a change
//! of leader resumes every drain where it was.
//!
//! One pass (every [`PASS_EVERY`] while anything drains or moves):
//! 1. Each moving VM advances one step, each step one compare-and-swap:
//!    - on the source, stopped by its agent (the report for the stop's generation says so):
//!      its allocation on the source is released and it is unplaced (`pending`, desired power
//!      state given back), in one transaction. The source agent then sees it removed and
//!      cleans up; the scheduling controller places it (draining hosts are filtered) and the
//!      target agent starts it. The target only gets it after the source reported it stopped,
//!      so it never runs on two hosts.
//!    - on another host and settled there: the move is done (`moving` cleared).
//!    - its drain ended (cancelled by uncordon, or failed) while it is still on the source: it
//!      is put back as it was (started again if it was running).
//! 2. Each draining host: first a dry run of the planner for every VM on it (all at once, each
//!    taking its room); if one fits nowhere the drain fails with the planner's explanation, the
//!    host stays cordoned and nothing was stopped. Before each new batch of moves the dry run is
//!    repeated for everything still to move. At most [`PARALLEL`] moves run at once. When the
//!    host holds no VM and none is in flight it turns `maintenance` and the operation succeeds.

use super::RESTART_DELAY;
use super::scheduling::cluster::Cluster;
use crate::app::App;
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use crate::scheduler::{Policy, Request, place};
use futures::StreamExt;
use panal_store::{Compare, Op, Txn, WatchEvent};
use panal_types::host::{Host, HostMode};
use panal_types::migration::VmMigrate;
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::vm::{PowerState, Vm, VmMove, VmPhase};
use panal_types::{ApiError, ErrorCode, OperationId};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// How often a pass runs while a drain or a move is in progress.
const PASS_EVERY: Duration = Duration::from_millis(200);
/// Moves in flight per draining host.
const PARALLEL: usize = 4;

/// Runs until aborted.
pub async fn run(app: App, policy: Policy) {
    loop {
        if let Err(e) = watch_once(&app, &policy).await {
            tracing::warn!(error = %e, "drain controller restarting");
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

fn is_draining(h: &DrainView) -> bool {
    h.drain.is_some()
}

/// The one field of a host record this controller's watch looks at. Every placement rewrites
/// its host, so at scale decoding whole records here cost more than the check itself.
#[derive(serde::Deserialize)]
struct DrainView {
    #[serde(default)]
    drain: Option<serde::de::IgnoredAny>,
}

async fn watch_once(app: &App, policy: &Policy) -> Result<(), String> {
    let store = app.repo().store().clone();
    let hosts = store
        .range(keys::HOSTS, None, 0)
        .await
        .map_err(|e| e.to_string())?;
    let mut draining: BTreeSet<String> = BTreeSet::new();
    for kv in &hosts.kvs {
        if let Ok(h) = crate::codec::decode::<DrainView>(&kv.key, &kv.value)
            && is_draining(&h)
        {
            draining.insert(kv.key.clone());
        }
    }
    let mut watch = store
        .watch(keys::HOSTS, hosts.revision + 1)
        .await
        .map_err(|e| e.to_string())?;
    let mut tick = tokio::time::interval(PASS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first pass also finishes moves a previous leader left half done.
    let mut moving = true;
    loop {
        tokio::select! {
            ev = watch.next() => {
                match ev.ok_or("host watch ended")?.map_err(|e| e.to_string())? {
                    WatchEvent::Put(kv) => {
                        match crate::codec::decode::<DrainView>(&kv.key, &kv.value) {
                            Ok(h) if is_draining(&h) => {
                                draining.insert(kv.key);
                                moving = true;
                            }
                            _ => {
                                // A drain that ended may leave moves to finish or undo.
                                moving |= draining.remove(&kv.key);
                            }
                        }
                    }
                    WatchEvent::Delete { key, .. } => {
                        draining.remove(&key);
                    }
                }
            }
            _ = tick.tick() => {
                if !draining.is_empty() || moving {
                    moving = pass(app, policy).await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}

/// One pass over every drain and move. Returns whether a VM is still moving.
async fn pass(app: &App, policy: &Policy) -> Result<bool, ApiError> {
    let repo = app.repo();
    let (hosts, _, _) = repo.list::<Host>(keys::HOSTS, None, 0).await?;
    let (vms, _, _) = repo.list::<Vm>(keys::VMS, None, 0).await?;
    let mut ops = OpCache::default();
    let mut any_moving = false;
    let mut wrote = false;
    for v in &vms {
        if v.value.status.moving.is_some() {
            any_moving = true;
            wrote |= advance_move(app, v, &hosts, &mut ops).await?;
        }
    }
    if wrote {
        // Plan drains on fresh state next pass.
        return Ok(true);
    }
    for h in &hosts {
        if h.value.drain.is_some() {
            // Moves it starts are seen by the next pass.
            any_moving = true;
            drive_drain(app, policy, h, &hosts, &vms, &mut ops).await?;
        }
    }
    Ok(any_moving)
}

/// Operations read during one pass.
#[derive(Default)]
struct OpCache(HashMap<OperationId, Option<Versioned<Operation>>>);

impl OpCache {
    async fn get(
        &mut self,
        app: &App,
        id: &OperationId,
    ) -> Result<Option<Versioned<Operation>>, ApiError> {
        if let Some(op) = self.0.get(id) {
            return Ok(op.clone());
        }
        let op = app.repo().get::<Operation>(&keys::op(id)).await?;
        self.0.insert(*id, op.clone());
        Ok(op)
    }

    /// Whether the operation is over (or gone).
    async fn over(&mut self, app: &App, id: &OperationId) -> Result<bool, ApiError> {
        Ok(self
            .get(app, id)
            .await?
            .is_none_or(|o| o.value.state.is_final()))
    }
}

fn vm_key(vm: &Vm) -> String {
    keys::vm(vm.project.as_str(), vm.name.as_str())
}

/// Whether the agent has reported the VM in the state its spec asks for.
fn settled(vm: &Vm) -> bool {
    if vm.status.observed_generation < vm.generation {
        return false;
    }
    match vm.spec.power_state {
        PowerState::Running => matches!(vm.status.phase, VmPhase::Running | VmPhase::Failed),
        PowerState::Paused => matches!(vm.status.phase, VmPhase::Paused | VmPhase::Failed),
        PowerState::Stopped => matches!(vm.status.phase, VmPhase::Stopped | VmPhase::Failed),
    }
}

/// Clears a finished move from a VM record.
fn clear_move(vm: &mut Vm, m: &VmMove) {
    vm.status.moving = None;
    if vm.status.operation == Some(m.operation) {
        vm.status.operation = None;
    }
}

/// Advances one moving VM by a step. Returns whether it wrote.
async fn advance_move(
    app: &App,
    cur: &Versioned<Vm>,
    hosts: &[Versioned<Host>],
    ops: &mut OpCache,
) -> Result<bool, ApiError> {
    let mut vm = cur.value.clone();
    let Some(m) = vm.status.moving.clone() else {
        return Ok(false);
    };
    let key = vm_key(&vm);
    let over = ops.over(app, &m.operation).await?;
    let mut txn = Txn::new().when(Compare::unchanged(&key, cur.mod_revision));
    match vm.status.host.clone() {
        Some(h) if h == m.from => {
            if over || vm.spec.deleted {
                // The drain ended before the VM left: put it back as it was.
                if vm.spec.power_state != m.power_state && !vm.spec.deleted {
                    vm.spec.power_state = m.power_state;
                    vm.generation += 1;
                }
                clear_move(&mut vm, &m);
                vm.status.push_event(
                    "MoveCancelled",
                    format!("the drain of {h} ended; it stays here"),
                );
            } else if vm.spec.power_state == PowerState::Stopped && settled(&vm) {
                // Stopped on the source, as its agent reported: release it there and let the
                // scheduler place it elsewhere.
                let Some(src) = hosts.iter().find(|x| x.value.name == h) else {
                    return Ok(false);
                };
                let mut host = src.value.clone();
                let a = &mut host.allocation;
                a.vcpus = a.vcpus.saturating_sub(u64::from(vm.spec.vcpus));
                a.memory_bytes = a.memory_bytes.saturating_sub(vm.spec.memory_bytes);
                a.vms = a.vms.saturating_sub(1);
                let host_key = keys::host(h.as_str());
                txn = txn
                    .when(Compare::unchanged(&host_key, src.mod_revision))
                    .and_then(Op::put(&host_key, encode(&host)));
                vm.status.host = None;
                vm.status.phase = VmPhase::Pending;
                vm.status.placement = None;
                vm.status.reason = None;
                if vm.spec.power_state != m.power_state {
                    vm.spec.power_state = m.power_state;
                    vm.generation += 1;
                }
                vm.status.push_event(
                    "Moving",
                    format!("stopped on {h}; placing it on another host"),
                );
            } else {
                return Ok(false);
            }
        }
        None => {
            if !over {
                return Ok(false);
            }
            // The drain failed while the VM waited for a host (the scheduler said why in its
            // events); it stays pending with its desired power state and is placed when room
            // appears, like any pending VM.
            clear_move(&mut vm, &m);
        }
        Some(h) => {
            if !over && !settled(&vm) {
                return Ok(false);
            }
            clear_move(&mut vm, &m);
            vm.status
                .push_event("Moved", format!("moved from {} to {h}", m.from));
        }
    }
    txn = txn.and_then(Op::put(&key, encode(&vm)));
    Ok(app.repo().txn(txn).await?.succeeded)
}

/// The planner's verdict on moving `vms` off the pool as it is: `Err` names the first VM that
/// fits nowhere and why.
fn dry_run(
    policy: &Policy,
    hosts: &[Versioned<Host>],
    all_vms: &[Versioned<Vm>],
    vms: &[&Vm],
) -> Result<(), String> {
    let mut cluster = Cluster::new(policy.clone());
    for h in hosts {
        cluster.upsert_host(h.value.clone(), h.mod_revision);
    }
    for v in all_vms {
        cluster.observe_vm(&vm_key(&v.value), v.mod_revision, Some(&v.value));
    }
    let n = cluster.candidates.len();
    for (k, vm) in vms.iter().enumerate() {
        let members = cluster.members(vm);
        // A running VM moves live, its local volumes with it (the migration's own check makes
        // sure the target has a pool for them); a stopped one stays bound to them.
        let live = vm.spec.power_state != PowerState::Stopped
            && vm.spec.hypervisor == panal_types::vm::HypervisorKind::Qemu;
        let movable: Vec<_> = vm
            .spec
            .volumes
            .iter()
            .filter(|d| !live || d.shared)
            .cloned()
            .collect();
        let req = Request {
            vcpus: vm.spec.vcpus,
            memory_bytes: vm.spec.memory_bytes,
            hypervisor: vm.spec.hypervisor,
            placement: &vm.spec.placement,
            volumes: &movable,
            networked: !vm.spec.nics.is_empty(),
        };
        let choice = place(
            &req,
            &cluster.candidates,
            &cluster.allocs,
            &members,
            cluster.policy(),
            k % n.max(1),
        )
        .map_err(|nofit| format!("VM {}/{} fits nowhere: {nofit}", vm.project, vm.name))?;
        let a = &mut cluster.allocs[choice.host];
        a.vcpus += u64::from(vm.spec.vcpus);
        a.memory_bytes += vm.spec.memory_bytes;
        a.vms += 1;
        // Count it where it would go, so group rules see the moves planned before it.
        let mut placed = (*vm).clone();
        placed.status.host = Some(cluster.records[choice.host].name.clone());
        cluster.observe_vm(&vm_key(vm), u64::MAX, Some(&placed));
    }
    Ok(())
}

/// Drives one draining host a step.
async fn drive_drain(
    app: &App,
    policy: &Policy,
    h: &Versioned<Host>,
    hosts: &[Versioned<Host>],
    vms: &[Versioned<Vm>],
    ops: &mut OpCache,
) -> Result<(), ApiError> {
    let Some(drain) = h.value.drain.clone() else {
        return Ok(());
    };
    let host_key = keys::host(h.value.name.as_str());
    let op_key = keys::op(&drain.operation);
    let Some(op) = ops.get(app, &drain.operation).await? else {
        // The operation is gone: nothing can report the drain; stop it, cordoned.
        return end_drain(app, h, HostMode::Cordoned, None).await;
    };
    if op.value.state.is_final() || h.value.mode != HostMode::Draining {
        // Failed elsewhere (the scheduler could not place a moved VM): stays cordoned.
        return end_drain(app, h, HostMode::Cordoned, None).await;
    }
    let name = &h.value.name;
    let on_host: Vec<&Vm> = vms
        .iter()
        .map(|v| &v.value)
        .filter(|v| v.status.host.as_ref() == Some(name))
        .collect();
    let in_flight: Vec<&Vm> = vms
        .iter()
        .map(|v| &v.value)
        .filter(|v| {
            v.status.host.as_ref() != Some(name)
                && v.status
                    .moving
                    .as_ref()
                    .is_some_and(|m| m.operation == drain.operation)
        })
        .collect();
    // Still to go: on the host and not yet being moved, cold or live (deleted ones leave by
    // themselves).
    let to_move: Vec<&Vm> = on_host
        .iter()
        .copied()
        .filter(|v| v.status.moving.is_none() && v.status.migration.is_none() && !v.spec.deleted)
        .collect();
    let live = on_host
        .iter()
        .filter(|v| v.status.migration.is_some())
        .count();
    let unplaced: Vec<&Vm> = in_flight
        .iter()
        .copied()
        .filter(|v| v.status.host.is_none())
        .collect();

    let total = match drain.total {
        Some(t) => t,
        None => on_host.len() as u64 + in_flight.len() as u64,
    };
    let moved = total.saturating_sub(on_host.len() as u64 + in_flight.len() as u64);

    if on_host.is_empty() && in_flight.is_empty() {
        let mut done = op.value.clone();
        done.state = OperationState::Succeeded;
        done.progress = Progress {
            percent: Some(100),
            message: format!("moved {total}/{total} VMs; {name} is in maintenance"),
        };
        done.updated_at = chrono::Utc::now();
        return end_drain(app, h, HostMode::Maintenance, Some((&op, done))).await;
    }

    if !to_move.is_empty() {
        // Before stopping anything, everything still to go (and what waits for a host) must
        // fit somewhere.
        let mut check: Vec<&Vm> = unplaced.clone();
        check.extend(to_move.iter().copied());
        if let Err(why) = dry_run(policy, hosts, vms, &check) {
            let message = format!("cannot drain {name}: {why}");
            let mut failed = op.value.clone();
            failed.state = OperationState::Failed;
            failed.error = Some(ApiError::new(
                ErrorCode::InsufficientCapacity,
                message.clone(),
            ));
            failed.progress = Progress {
                percent: Some(percent(moved, total)),
                message,
            };
            failed.updated_at = chrono::Utc::now();
            return end_drain(app, h, HostMode::Cordoned, Some((&op, failed))).await;
        }
    }

    if drain.total.is_none() {
        let mut host = h.value.clone();
        host.drain = Some(panal_types::host::HostDrain {
            operation: drain.operation,
            total: Some(total),
            cold: drain.cold,
        });
        let mut next = op.value.clone();
        next.progress = Progress {
            percent: Some(0),
            message: format!("moved 0/{total} VMs"),
        };
        next.updated_at = chrono::Utc::now();
        let txn = Txn::new()
            .when(Compare::unchanged(&host_key, h.mod_revision))
            .when(Compare::unchanged(&op_key, op.mod_revision))
            .and_then(Op::put(&host_key, encode(&host)))
            .and_then(Op::put(&op_key, encode(&next)));
        app.repo().txn(txn).await?;
        // Start moving on the next pass, against the recorded total.
        return Ok(());
    }

    let message = if live > 0 {
        format!("moved {moved}/{total} VMs ({live} migrating live)")
    } else {
        format!("moved {moved}/{total} VMs")
    };
    if op.value.progress.message != message {
        app.repo()
            .update::<Operation, _>(&op_key, |o| {
                if o.state.is_final() {
                    return Ok(false);
                }
                o.progress = Progress {
                    percent: Some(percent(moved, total)),
                    message: message.clone(),
                };
                o.updated_at = chrono::Utc::now();
                Ok(true)
            })
            .await?;
    }

    // Start new moves, up to PARALLEL in flight.
    let busy = on_host.len() - to_move.len() + in_flight.len();
    for vm in to_move.into_iter().take(PARALLEL.saturating_sub(busy)) {
        if let Some(why) = start_move(app, vm, vms, &drain, op.value.created_at, ops).await? {
            let message = format!(
                "cannot drain {name}: VM {}/{} cannot move live: {why}; `panal host drain \
                 --cold` stops such VMs and starts them on another host",
                vm.project, vm.name
            );
            let mut failed = op.value.clone();
            failed.state = OperationState::Failed;
            failed.error = Some(ApiError::new(ErrorCode::Conflict, message.clone()));
            failed.progress = Progress {
                percent: Some(percent(moved, total)),
                message,
            };
            failed.updated_at = chrono::Utc::now();
            return end_drain(app, h, HostMode::Cordoned, Some((&op, failed))).await;
        }
    }
    Ok(())
}

/// Why a VM's live migration for this drain failed, if it did (it is not tried again).
fn failed_live(vm: &Vm, since: chrono::DateTime<chrono::Utc>) -> Option<String> {
    vm.status
        .events
        .iter()
        .rev()
        .take_while(|e| e.at >= since)
        .find(|e| e.reason == "MigrationFailed" || e.reason == "MigrationCancelled")
        .map(|e| e.message.clone())
}

fn percent(moved: u64, total: u64) -> u8 {
    if total == 0 {
        return 100;
    }
    (moved * 100 / total).min(99) as u8
}

/// Moves a VM off the host: a running VM live-migrates (the scheduler picks the target); one
/// that cannot, on a cold drain, and a stopped one are marked as moving and stopped by their
/// agent (already stopped VMs move at once). Returns why a running VM cannot move live on a
/// drain that is not cold.
async fn start_move(
    app: &App,
    vm: &Vm,
    vms: &[Versioned<Vm>],
    drain: &panal_types::host::HostDrain,
    since: chrono::DateTime<chrono::Utc>,
    ops: &mut OpCache,
) -> Result<Option<String>, ApiError> {
    let drain_op = &drain.operation;
    let Some(cur) = vms.iter().find(|v| v.value.id == vm.id) else {
        return Ok(None);
    };
    // Another operation on the VM goes first (a start, a stop...): wait for it.
    if let Some(held) = &vm.status.operation
        && held != drain_op
        && !ops.over(app, held).await?
    {
        return Ok(None);
    }
    let Some(from) = vm.status.host.clone() else {
        return Ok(None);
    };
    let running = vm.spec.power_state != PowerState::Stopped
        && matches!(vm.status.phase, VmPhase::Running | VmPhase::Paused);
    if running {
        let why = match failed_live(vm, since) {
            Some(why) => why,
            None => match app
                .migrate_vm_for(
                    Some(vm.project.as_str()),
                    vm.name.as_str(),
                    VmMigrate::default(),
                    Some(*drain_op),
                )
                .await
            {
                Ok(_) => return Ok(None),
                // Changed meanwhile (an operation started): the next pass sees it.
                Err(e) if e.operation.is_some() || e.code == ErrorCode::PreconditionFailed => {
                    return Ok(None);
                }
                Err(e) => e.message,
            },
        };
        if !drain.cold {
            return Ok(Some(why));
        }
        tracing::info!(vm = %vm.name, "cannot move live ({why}); moving it cold");
    }
    let mut next = vm.clone();
    next.status.moving = Some(VmMove {
        from: from.clone(),
        operation: *drain_op,
        power_state: vm.spec.power_state,
    });
    next.status.operation = Some(*drain_op);
    if next.spec.power_state != PowerState::Stopped {
        // A paused guest cannot answer a shutdown request: power it off.
        next.spec.force_stop = next.spec.power_state == PowerState::Paused;
        next.spec.power_state = PowerState::Stopped;
        next.generation += 1;
        next.status.push_event(
            "Draining",
            format!("stopping on {from} to move it to another host"),
        );
    } else {
        next.status
            .push_event("Draining", format!("moving off {from} (stopped)"));
    }
    let key = vm_key(vm);
    let txn = Txn::new()
        .when(Compare::unchanged(&key, cur.mod_revision))
        .and_then(Op::put(&key, encode(&next)));
    app.repo().txn(txn).await?;
    Ok(None)
}

/// Ends a drain: the host takes `mode` and forgets the drain, and the operation (if given)
/// takes its final form, in one transaction.
async fn end_drain(
    app: &App,
    h: &Versioned<Host>,
    mode: HostMode,
    op: Option<(&Versioned<Operation>, Operation)>,
) -> Result<(), ApiError> {
    let host_key = keys::host(h.value.name.as_str());
    let mut host = h.value.clone();
    host.drain = None;
    host.set_mode(mode);
    let mut txn = Txn::new()
        .when(Compare::unchanged(&host_key, h.mod_revision))
        .and_then(Op::put(&host_key, encode(&host)));
    if let Some((cur, next)) = op {
        let op_key = keys::op(&next.id);
        txn = txn
            .when(Compare::unchanged(&op_key, cur.mod_revision))
            .and_then(Op::put(&op_key, encode(&next)));
    }
    if app.repo().txn(txn).await?.succeeded {
        app.forget_host_cache();
    }
    Ok(())
}
