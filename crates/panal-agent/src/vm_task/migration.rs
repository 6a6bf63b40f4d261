//! A VM task's part in live migrations: on the source, starting (or taking up again, or
//! cancelling) the transfer the record asks for; on the target, making room for the local
//! volumes, launching the incoming hypervisor behind the migration tunnel's relays and saying
//! where they listen. The transfers themselves are background jobs (`vm_migration.rs`).

use super::VmTask;
use crate::vm_migration::{self, Reporter};
use panal_types::vm::Vm;

/// This task's part in a live migration: the background job and, on the source, how to ask it
/// to stop.
pub(super) struct MigrationWork {
    pub(super) operation: panal_types::OperationId,
    /// Target: volume files created for the copy, removed if the VM never becomes ours.
    pub(super) created: Vec<std::path::PathBuf>,
    pub(super) cancel: Option<tokio::sync::watch::Sender<Option<String>>>,
    _job: Option<vm_migration::Job>,
    /// Target: the tunnel's relays into the incoming hypervisor, closed with the migration.
    _relays: Vec<crate::remote::migration_tunnel::Relay>,
}

impl MigrationWork {
    /// Work on `operation` with nothing running for it (yet).
    fn idle(operation: panal_types::OperationId) -> Self {
        MigrationWork {
            operation,
            created: Vec::new(),
            cancel: None,
            _job: None,
            _relays: Vec::new(),
        }
    }
}

impl VmTask {
    /// The migration bringing the VM to this host, while it is not placed here yet.
    pub(super) fn incoming_migration(
        &self,
        vm: &Vm,
    ) -> Option<panal_types::migration::VmMigration> {
        vm.status
            .migration
            .clone()
            .filter(|m| m.to == self.ctx.host && vm.status.host.as_ref() != Some(&self.ctx.host))
    }

    /// Source: starts (or takes up again, or cancels) the transfer the record asks for.
    pub(super) async fn converge_outgoing(
        &mut self,
        vm: &Vm,
        m: &panal_types::migration::VmMigration,
    ) {
        use panal_types::migration::{MigrationEvent, MigrationStep};
        let reason = (m.step == MigrationStep::Cancelling).then(|| {
            m.cancel_reason
                .clone()
                .unwrap_or_else(|| "cancelled".into())
        });
        if let Some(w) = &self.migration
            && w.operation == m.operation
        {
            if let (Some(why), Some(tx)) = (reason, &w.cancel) {
                tx.send_if_modified(|cur| {
                    let changed = cur.is_none();
                    if changed {
                        *cur = Some(why);
                    }
                    changed
                });
            }
            return;
        }
        if m.step == MigrationStep::Preparing {
            return;
        }
        let reporter = Reporter::new(self.ctx.host.clone(), self.ctx.link.clone(), vm, m);
        let tunnel = self.ctx.migrations.tunnel_or_refusal().cloned();
        let (Some(h), Some(to), Ok(tunnel)) = (
            self.handle.clone(),
            m.destination.as_deref().and_then(|d| d.parse().ok()),
            tunnel.clone(),
        ) else {
            let why = if self.handle.is_none() {
                "the VM is not running on the source".to_string()
            } else if let Err(why) = tunnel {
                why
            } else {
                format!("the target's address {:?} is not usable", m.destination)
            };
            self.migration = Some(MigrationWork::idle(m.operation));
            reporter
                .send(MigrationEvent::Aborted {
                    reason: why,
                    gave_up: false,
                })
                .await;
            return;
        };
        let disks = match (&m.disks[..], m.disk_destination.as_deref().map(str::parse)) {
            ([], _) => None,
            (ids, Some(Ok(addr))) => Some((addr, ids.to_vec())),
            (_, _) => {
                self.migration = Some(MigrationWork::idle(m.operation));
                let why = format!(
                    "the target serves no usable disk address ({:?})",
                    m.disk_destination
                );
                reporter
                    .send(MigrationEvent::Aborted {
                        reason: why,
                        gave_up: false,
                    })
                    .await;
                return;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(reason);
        let plan = vm_migration::Transfer {
            vm: vm.id,
            tunnel,
            to,
            disks,
            settings: m.settings.clone(),
            target_host: m.to.clone(),
            patience: self.ctx.migration_patience,
        };
        let job = tokio::spawn(vm_migration::send(h, reporter, plan, rx));
        self.migration = Some(MigrationWork {
            cancel: Some(tx),
            _job: Some(vm_migration::Job(job)),
            ..MigrationWork::idle(m.operation)
        });
    }

    /// Target: launches the incoming hypervisor, says where it listens, and watches for the
    /// guest to arrive.
    pub(super) async fn converge_incoming(
        &mut self,
        vm: &Vm,
        m: &panal_types::migration::VmMigration,
    ) {
        use panal_driver::Incoming;
        use panal_types::migration::{MigrationEvent, MigrationStep};
        if self
            .migration
            .as_ref()
            .is_some_and(|w| w.operation == m.operation)
        {
            return;
        }
        let reporter = Reporter::new(self.ctx.host.clone(), self.ctx.link.clone(), vm, m);
        if let Some(h) = self.handle.clone() {
            if m.destination.is_some() {
                // Re-attached after an agent restart, its address already recorded.
                // Its relays died with the agent, and with them the stream: the source fails
                // the migration, or it had completed already.
                self.migration = Some(MigrationWork {
                    _job: Some(vm_migration::Job(tokio::spawn(vm_migration::receive(
                        h, reporter,
                    )))),
                    ..MigrationWork::idle(m.operation)
                });
                return;
            }
            // Launched, but where it listens was never recorded: start over.
            let _ = h.kill().await;
            self.handle = None;
        }
        self.migration = Some(MigrationWork::idle(m.operation));
        let failed = |reason: String| MigrationEvent::DestinationFailed { reason };
        if m.step != MigrationStep::Preparing {
            reporter
                .send(failed("the incoming hypervisor is gone".into()))
                .await;
            return;
        }
        let tunnel = match self.ctx.migrations.tunnel_or_refusal() {
            Ok(t) => t.clone(),
            Err(why) => {
                reporter.send(failed(why)).await;
                return;
            }
        };
        // The incoming hypervisor listens on Unix sockets of this agent's; the source's agent
        // reaches them through this agent's relays.
        let (memory_socket, disk_socket) =
            match (tunnel.socket(vm.id, "in"), tunnel.socket(vm.id, "nbd")) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    reporter.send(failed(e.to_string())).await;
                    return;
                }
            };
        for s in [&memory_socket, &disk_socket] {
            let _ = tokio::fs::remove_file(s).await;
        }
        // Local volumes arrive in new, empty files (the copy fills them); the incoming
        // hypervisor opens those.
        let mut here = vm.clone();
        for mv in &m.volumes {
            let made = match self.ctx.pools.path(&mv.pool, &mv.target_file) {
                Ok(path) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    if let Some(w) = self.migration.as_mut() {
                        w.created.push(path.clone());
                    }
                    crate::volumes::create_empty(&path, mv.format, mv.size_bytes).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = made {
                reporter
                    .send(failed(format!(
                        "cannot make room for volume {}: {e}",
                        mv.volume
                    )))
                    .await;
                return;
            }
            if let Some(d) = here.spec.volumes.iter_mut().find(|d| d.id == mv.id) {
                d.host = self.ctx.host.clone();
                d.file = mv.target_file.clone();
            }
        }
        let vm = &here;
        match self
            .launch(
                vm,
                Some(Incoming::Unix(memory_socket.clone())),
                m.settings.post_copy,
            )
            .await
        {
            Ok(h) => {
                self.handle = Some(h.clone());
                self.applied = Some((vm.spec.vcpus, vm.spec.memory_bytes));
                self.disks = vm.spec.volumes.clone();
                self.nics = vm.spec.nics.clone();
                self.check_disks = false;
                let sockets = (memory_socket, disk_socket);
                let (listening, relays) = match vm_migration::serve(&tunnel, &h, m, sockets).await {
                    Ok(r) => r,
                    Err(e) => {
                        reporter.send(failed(e)).await;
                        return;
                    }
                };
                reporter.send(listening).await;
                let created = self.migration.take().map(|w| w.created).unwrap_or_default();
                self.migration = Some(MigrationWork {
                    created,
                    _job: Some(vm_migration::Job(tokio::spawn(vm_migration::receive(
                        h, reporter,
                    )))),
                    _relays: relays,
                    ..MigrationWork::idle(m.operation)
                });
            }
            Err(e) => {
                reporter.send(failed(e.to_string())).await;
            }
        }
    }
}
