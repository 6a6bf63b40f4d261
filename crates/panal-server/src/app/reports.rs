//! Agents' status reports, written together. Every VM start, stop or crash ends in a report,
//! and each report was its own read-read-transaction; at thousands of VMs per second those
//! transactions, not the creates, filled the store (on etcd, several times over).
//!
//! Protocol: a caller queues its report and waits for its own answer. One worker task per
//! `App` (started by the first report, gone after [`IDLE`] without any) takes every report
//! queued, reads the VMs and their operations concurrently, merges each report
//! ([`super::agents::plan_report`]) and writes them all in one transaction that compares every
//! record it read, split by [`panal_store::Store::max_txn_ops`]. When such a transaction loses
//! (one VM changed meanwhile), its reports are written one by one, as before, so a busy VM never
//! holds back the others' answers for more than one retry. A second report on the same VM in one
//! batch, and reports that end a delete, also go one by one. Reports of one agent about one VM
//! are sent in order and each waits for its answer, so batching never reorders them.

use super::App;
use super::agents::{ReportPlan, plan_report};
use crate::repo::Versioned;
use panal_store::Txn;
use panal_types::agent::VmStatusReport;
use panal_types::operation::Operation;
use panal_types::{ApiError, ErrorCode};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the worker waits for a report before it stops.
const IDLE: Duration = Duration::from_secs(2);

struct Pending {
    host: String,
    report: VmStatusReport,
    answer: oneshot::Sender<Result<(), ApiError>>,
}

/// The queue of reports waiting for the worker. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct ReportQueue {
    /// The running worker's queue, if one runs.
    worker: Arc<Mutex<Option<mpsc::UnboundedSender<Pending>>>>,
}

impl ReportQueue {
    /// Queues a report and waits for it to be written.
    pub async fn submit(
        &self,
        app: &App,
        host: &str,
        report: VmStatusReport,
    ) -> Result<(), ApiError> {
        let (answer, rx) = oneshot::channel();
        let pending = Pending {
            host: host.to_owned(),
            report,
            answer,
        };
        {
            // Under the lock the worker also takes to stop, so a report is never queued to a
            // worker that has decided to stop.
            let mut slot = self.worker.lock();
            let unsent = match slot.as_ref() {
                Some(tx) => tx.send(pending).err().map(|e| e.0),
                None => Some(pending),
            };
            if let Some(pending) = unsent {
                let (tx, rx) = mpsc::unbounded_channel();
                let _ = tx.send(pending);
                *slot = Some(tx);
                tokio::spawn(work(app.clone(), self.worker.clone(), rx));
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "the control plane stopped while writing the report; report again",
            ))
        })
    }
}

async fn work(
    app: App,
    slot: Arc<Mutex<Option<mpsc::UnboundedSender<Pending>>>>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    loop {
        let first = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(_) => {
                let mut slot = slot.lock();
                if rx.is_empty() {
                    *slot = None;
                    return;
                }
                continue;
            }
        };
        // Per report: two compares and two puts at most (the VM and its operation).
        let max = (app.repo.store().max_txn_ops() / 2).max(1);
        let mut batch = vec![first];
        while batch.len() < max
            && let Ok(p) = rx.try_recv()
        {
            batch.push(p);
        }
        write_batch(&app, batch).await;
    }
}

/// Each report's VM key, VM and operation, or `Err` when the batch could not be read (then each
/// report goes alone).
async fn read_batch(app: &App, batch: &[Pending]) -> Vec<Result<Read, ApiError>> {
    let keys: Vec<String> = batch
        .iter()
        .map(|p| crate::keys::vm(p.report.project.as_str(), p.report.name.as_str()))
        .collect();
    let vms = match app.repo.get_many::<panal_types::vm::Vm>(&keys).await {
        Ok(v) => v,
        Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
    };
    let op_keys: Vec<String> = vms
        .iter()
        .filter_map(|v| v.as_ref()?.value.status.operation)
        .map(|id| crate::keys::op(&id))
        .collect();
    let mut ops = match app.repo.get_many::<Operation>(&op_keys).await {
        Ok(o) => o.into_iter(),
        Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
    };
    keys.into_iter()
        .zip(vms)
        .map(|(key, vm)| {
            let has_op = vm
                .as_ref()
                .is_some_and(|v| v.value.status.operation.is_some());
            let op = if has_op { ops.next().flatten() } else { None };
            Ok((key, vm, op))
        })
        .collect()
}

/// What one report's plan is made from.
type Read = (
    String,
    Option<Versioned<panal_types::vm::Vm>>,
    Option<Versioned<Operation>>,
);

async fn write_batch(app: &App, batch: Vec<Pending>) {
    if batch.len() == 1 {
        let p = batch.into_iter().next().expect("one report");
        let r = app.report_vm_one(&p.host, &p.report).await;
        let _ = p.answer.send(r);
        return;
    }
    // Two reads for the whole batch (its VMs, then their operations): on etcd each is one
    // round trip, where one read per report cost the cluster as much as the writes.
    let reads = read_batch(app, &batch).await;
    let mut txn = Txn::new();
    let mut together = Vec::new();
    let mut alone = Vec::new();
    let mut keys = HashSet::new();
    for (p, read) in batch.into_iter().zip(reads) {
        let (key, vm, op) = match read {
            Ok(r) => r,
            Err(_) => {
                alone.push(p);
                continue;
            }
        };
        if !keys.insert(key) {
            alone.push(p);
            continue;
        }
        match plan_report(&p.host, &p.report, vm, op) {
            Err(e) => drop(p.answer.send(Err(e))),
            Ok(ReportPlan::Nothing) => drop(p.answer.send(Ok(()))),
            Ok(ReportPlan::FinishDelete(_)) => alone.push(p),
            Ok(ReportPlan::Write(t)) => {
                txn.compares.extend(t.compares);
                txn.success.extend(t.success);
                together.push(p);
            }
        }
    }
    if !together.is_empty() {
        match app.repo.txn(txn).await {
            Ok(r) if r.succeeded => {
                for p in together {
                    let _ = p.answer.send(Ok(()));
                }
            }
            _ => alone.extend(together),
        }
    }
    futures::future::join_all(alone.into_iter().map(|p| async move {
        let r = app.report_vm_one(&p.host, &p.report).await;
        let _ = p.answer.send(r);
    }))
    .await;
}
