//! The control plane's side of host tasks: the stream of volume work queued for one host, and
//! the agent's reports, which complete the task's volume change and operation in one
//! transaction and dequeue the task.
//!
//! A task stays queued until its agent reports it finished, so an agent that restarts or
//! reconnects receives it again: agents make every task idempotent. A move to another host is
//! several tasks of one operation (`HostTask.operation`): the report of one step queues the
//! next in its transaction (see `volume_transfer`).

use super::App;
use super::volume_transfer as transfer;
use crate::codec::{decode, encode};
use crate::keys;
use futures::StreamExt;
use panal_agent::link::{HostTaskStream, LinkError};
use panal_store::{Compare, Op, Txn, WatchEvent};
use panal_types::operation::{Operation, OperationState, Progress};
use panal_types::volume::{
    HostTask, HostTaskReport, SnapshotStep, Volume, VolumeAction, VolumePhase, VolumeSnapshot,
};
use panal_types::{ApiError, ErrorCode, Name};

impl App {
    /// Every task queued for `host`, then each new one.
    pub async fn host_tasks(&self, host: &str) -> Result<HostTaskStream, LinkError> {
        let unavailable = |e: panal_store::StoreError| LinkError::Unavailable(e.to_string());
        let prefix = keys::host_tasks_of(host);
        let store = self.repo.store();
        let snapshot = store.range(&prefix, None, 0).await.map_err(unavailable)?;
        let watch = store
            .watch(&prefix, snapshot.revision + 1)
            .await
            .map_err(unavailable)?;
        let queued: Vec<Result<HostTask, LinkError>> = snapshot
            .kvs
            .into_iter()
            .filter_map(|kv| decode::<HostTask>(&kv.key, &kv.value).ok())
            .map(Ok)
            .collect();
        let new = watch.filter_map(|ev| async move {
            match ev {
                Ok(WatchEvent::Put(kv)) if kv.create_revision == kv.mod_revision => {
                    decode::<HostTask>(&kv.key, &kv.value).ok().map(Ok)
                }
                Ok(_) => None,
                Err(e) => Some(Err(LinkError::Unavailable(e.to_string()))),
            }
        });
        Ok(futures::stream::iter(queued).chain(new).boxed())
    }

    /// Takes an agent's report on one of its host's tasks.
    pub async fn report_host_task(&self, host: &str, r: HostTaskReport) -> Result<(), ApiError> {
        let task_key = keys::host_task(host, &r.id);
        if !r.finished {
            // A later step of a move reports under its own id; its operation is the move's.
            let op_id = match self.repo.get::<HostTask>(&task_key).await? {
                Some(t) => t.value.operation_id(),
                None => return Ok(()),
            };
            let progress = Progress {
                percent: r.percent.map(|p| p.min(99)),
                message: r.message.clone(),
            };
            self.repo
                .update::<Operation, _>(&keys::op(&op_id), |op| {
                    if op.state.is_final() || op.progress == progress {
                        return Ok(false);
                    }
                    op.progress = progress.clone();
                    op.updated_at = chrono::Utc::now();
                    Ok(true)
                })
                .await?;
            return Ok(());
        }
        for _ in 0..64 {
            let Some(task) = self.repo.get::<HostTask>(&task_key).await? else {
                // Already taken: a repeated report after a reconnect.
                return Ok(());
            };
            let task_rev = task.mod_revision;
            let task = task.value;
            let op_id = task.operation_id();
            let op_key = keys::op(&op_id);
            let error = transfer::check_report(&task, &r);
            let mut txn = Txn::new()
                .when(Compare::unchanged(&task_key, task_rev))
                .and_then(Op::delete(&task_key));
            for name in &task.volumes {
                let vkey = keys::volume(task.project.as_str(), name.as_str());
                let Some(cur) = self.repo.get::<Volume>(&vkey).await? else {
                    continue;
                };
                if cur.value.operation != Some(op_id) {
                    continue;
                }
                txn = txn.when(Compare::unchanged(&vkey, cur.mod_revision));
                let mut v = cur.value;
                if let (VolumeAction::Send { .. }, None) = (&task.action, &error) {
                    // Still moving: the target host fetches it next.
                    continue;
                }
                v.operation = None;
                v.reason = error.clone();
                match (&task.action, &error) {
                    (VolumeAction::Delete { .. }, None) => {
                        txn = txn.and_then(Op::delete(&vkey));
                        if let Some(parent) = &v.parent {
                            let pkey = keys::volume(task.project.as_str(), parent.as_str());
                            if let Some(p) = self.repo.get::<Volume>(&pkey).await? {
                                let mut pv = p.value;
                                pv.children.retain(|c| *c != v.name);
                                txn = txn
                                    .when(Compare::unchanged(&pkey, p.mod_revision))
                                    .and_then(Op::put(&pkey, encode(&pv)));
                            }
                        }
                        continue;
                    }
                    (VolumeAction::Create { .. } | VolumeAction::Delete { .. }, Some(_)) => {
                        v.phase = VolumePhase::Failed;
                    }
                    (VolumeAction::Resize { size_bytes, .. }, None) => {
                        v.phase = VolumePhase::Ready;
                        v.size_bytes = *size_bytes;
                    }
                    (
                        VolumeAction::Move {
                            to_pool, to_shared, ..
                        },
                        None,
                    ) => {
                        v.phase = VolumePhase::Ready;
                        v.pool = to_pool.clone();
                        v.shared = *to_shared;
                    }
                    (VolumeAction::Receive { to, .. }, None) => {
                        // The copy is complete and verified: the volume lives there now.
                        v.phase = VolumePhase::Ready;
                        v.host = to.host.clone();
                        v.pool = to.pool.clone();
                        v.shared = to.shared;
                        v.file = to.file.clone();
                    }
                    (VolumeAction::Snapshot { step, name, .. }, None) => {
                        apply_snapshot(&mut v, *step, name);
                    }
                    // A failed move, export or growth leaves the volume as it was.
                    _ => v.phase = VolumePhase::Ready,
                }
                txn = txn.and_then(Op::put(&vkey, encode(&v)));
            }
            // The next step of a move to another host, queued in the same transaction.
            let next = transfer::next_step(&task, &r, error.is_some());
            if let Some(next) = &next {
                txn = txn.and_then(Op::put(
                    &keys::host_task(next.host.as_str(), &next.id),
                    encode(next),
                ));
            }
            if let Some(op) = self.repo.get::<Operation>(&op_key).await?
                && !op.value.state.is_final()
            {
                let mut done = op.value;
                done.updated_at = chrono::Utc::now();
                match (&next, &error) {
                    (Some(next), _) => {
                        done.progress = transfer::step_progress(next);
                    }
                    (None, None) => {
                        done.state = OperationState::Succeeded;
                        done.progress = Progress {
                            percent: Some(100),
                            message: if r.message.is_empty() {
                                "done".into()
                            } else {
                                r.message.clone()
                            },
                        };
                    }
                    (None, Some(why)) if matches!(task.action, VolumeAction::Discard { .. }) => {
                        // The volume moved; only the original could not be removed.
                        done.state = OperationState::Succeeded;
                        done.progress = Progress {
                            percent: Some(100),
                            message: format!(
                                "moved; the original on host {} stays behind: {why}",
                                task.host
                            ),
                        };
                    }
                    (None, Some(why)) => {
                        done.state = OperationState::Failed;
                        done.error = Some(ApiError::new(ErrorCode::Conflict, why.clone()));
                        done.progress = Progress {
                            percent: Some(100),
                            message: why.clone(),
                        };
                    }
                }
                txn = txn
                    .when(Compare::unchanged(&op_key, op.mod_revision))
                    .and_then(Op::put(&op_key, encode(&done)));
            }
            if self.repo.txn(txn).await?.succeeded {
                self.after_transfer_step(&task, error.is_some()).await;
                return Ok(());
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "the volume kept changing; report again",
        ))
    }
}

/// Records a finished snapshot step on a volume.
fn apply_snapshot(v: &mut Volume, step: SnapshotStep, name: &str) {
    v.phase = VolumePhase::Ready;
    let Ok(name) = Name::parse(name) else { return };
    match step {
        SnapshotStep::Create => {
            if !v.snapshots.iter().any(|s| s.name == name) {
                v.snapshots.push(VolumeSnapshot {
                    name,
                    created_at: chrono::Utc::now(),
                    size_bytes: v.size_bytes,
                });
            }
        }
        SnapshotStep::Revert => {}
        SnapshotStep::Delete => v.snapshots.retain(|s| s.name != name),
    }
}
