//! Disk hot-plug on a running QEMU: add a block node and a virtio-blk device on the PCIe root
//! port of the disk's slot (`slots.rs`), remove them again once the guest has let go, and grow
//! a disk live.

use super::cmdline;
use super::handle::QemuVm;
use crate::{DataDisk, DriverError};
use panal_types::volume::SnapshotStep;
use serde_json::json;
use std::time::Duration;

/// How long the guest may take to release an unplugged disk (Linux waits five seconds after
/// the attention button before it powers the slot off; under TCG everything is slower).
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

impl QemuVm {
    pub(super) async fn hotplug_disk(&self, d: &DataDisk) -> Result<(), DriverError> {
        let node = cmdline::disk_node(&d.id);
        let device = cmdline::disk_device(&d.id);
        if self.device_present(&device).await? {
            return Ok(());
        }
        if !self.node_present(&node).await? {
            let cache = super::disk_safety::choose_cache(&[&d.path]);
            self.qmp("blockdev-add", Some(cmdline::data_disk_node(d, cache)))
                .await?;
        }
        let r = match self.empty_port(d.slot).await {
            Err(e) => Err(e),
            Ok(port) => self
                .qmp(
                    "device_add",
                    Some(json!({
                        "driver": "virtio-blk-pci",
                        "drive": node,
                        "id": device,
                        "serial": cmdline::disk_serial(&d.id),
                        "bus": port,
                    })),
                )
                .await
                .map(drop),
        };
        if r.is_err() {
            // Leave nothing half-added behind.
            let _ = self
                .qmp("blockdev-del", Some(json!({ "node-name": node })))
                .await;
        }
        r
    }

    pub(super) async fn unplug_disk(&self, id: &str) -> Result<(), DriverError> {
        let node = cmdline::disk_node(id);
        let device = cmdline::disk_device(id);
        if self.device_present(&device).await? {
            self.qmp("device_del", Some(json!({ "id": device })))
                .await?;
            let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
            while self.device_present(&device).await? {
                if tokio::time::Instant::now() > deadline {
                    return Err(DriverError::Hypervisor(format!(
                        "the guest did not release the disk within {} s",
                        UNPLUG_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if self.node_present(&node).await? {
            self.qmp("blockdev-del", Some(json!({ "node-name": node })))
                .await?;
        }
        Ok(())
    }

    pub(super) async fn grow(&self, id: &str, size_bytes: u64) -> Result<(), DriverError> {
        self.qmp(
            "block_resize",
            Some(json!({ "node-name": cmdline::disk_node(id), "size": size_bytes })),
        )
        .await
        .map(drop)
    }

    pub(super) async fn snapshot(
        &self,
        ids: &[String],
        name: &str,
        step: SnapshotStep,
    ) -> Result<Duration, DriverError> {
        match step {
            SnapshotStep::Create => {
                let actions: Vec<serde_json::Value> = ids
                    .iter()
                    .map(|id| {
                        json!({
                            "type": "blockdev-snapshot-internal-sync",
                            "data": { "device": cmdline::disk_node(id), "name": name },
                        })
                    })
                    .collect();
                // One transaction takes every disk at the same instant: QEMU drains and
                // holds their I/O for it, so the set is crash-consistent without stopping the
                // vCPUs. What the guest notices is its I/O held for this long (an upper
                // bound: it includes the QMP round trip).
                let frozen = std::time::Instant::now();
                let taken = self
                    .qmp("transaction", Some(json!({ "actions": actions })))
                    .await;
                let frozen = frozen.elapsed();
                match taken {
                    Ok(_) => {}
                    // Taken before; the report of it was lost.
                    Err(DriverError::Hypervisor(m)) if m.contains("already exists") => {}
                    Err(e) => return Err(e),
                }
                Ok(frozen)
            }
            SnapshotStep::Delete => {
                for id in ids {
                    let r = self
                        .qmp(
                            "blockdev-snapshot-delete-internal-sync",
                            Some(json!({ "device": cmdline::disk_node(id), "name": name })),
                        )
                        .await;
                    match r {
                        Ok(_) => {}
                        Err(DriverError::Hypervisor(m))
                            if m.contains("not found") || m.contains("Can't find") => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Duration::ZERO)
            }
            SnapshotStep::Revert => Err(DriverError::Invalid(
                "a running VM's disks cannot be reverted; stop it first".into(),
            )),
        }
    }

    /// Whether a device with this id exists (found by its QOM path).
    pub(super) async fn device_present(&self, device: &str) -> Result<bool, DriverError> {
        match self
            .qmp(
                "qom-get",
                Some(
                    json!({ "path": format!("/machine/peripheral/{device}"), "property": "type" }),
                ),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(DriverError::Hypervisor(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a block node with this name exists.
    async fn node_present(&self, node: &str) -> Result<bool, DriverError> {
        let nodes = self
            .qmp("query-named-block-nodes", Some(json!({ "flat": true })))
            .await?;
        Ok(nodes
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["node-name"] == node)))
    }
}
