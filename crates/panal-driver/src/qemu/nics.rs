//! NIC hot-plug on a running QEMU: a tap netdev and a virtio-net device on a free NIC port,
//! removed again once the guest has let go. As with disks, QEMU is asked which port is free,
//! so nothing needs remembering across agent restarts.

use super::cmdline::{self, NIC_PORTS};
use super::handle::QemuVm;
use crate::{DriverError, NetNic};
use serde_json::json;
use std::time::Duration;

/// How long the guest may take to release an unplugged NIC.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(60);

impl QemuVm {
    pub(super) async fn hotplug_nic(&self, n: &NetNic) -> Result<(), DriverError> {
        let netdev = cmdline::nic_netdev(&n.id);
        let device = cmdline::nic_device(&n.id);
        if self.device_present(&device).await? {
            return Ok(());
        }
        match self
            .qmp("netdev_add", Some(cmdline::nic_netdev_args(n)))
            .await
        {
            Ok(_) => {}
            // Added before a lost reply or an agent restart.
            Err(DriverError::Hypervisor(m)) if m.contains("Duplicate") => {}
            Err(e) => return Err(e),
        }
        // A port is picked from what QEMU says is empty, not by trying `device_add` on each:
        // a refused plug into an occupied port still signals that port's slot to the guest,
        // which then loses the NIC already there.
        let Some(port) = self.free_port("np", NIC_PORTS).await? else {
            let _ = self.qmp("netdev_del", Some(json!({ "id": netdev }))).await;
            return Err(DriverError::Hypervisor("no free NIC port".into()));
        };
        let r = self
            .qmp(
                "device_add",
                Some(json!({
                    "driver": "virtio-net-pci",
                    "netdev": netdev,
                    "id": device,
                    "mac": n.mac,
                    "host_mtu": n.mtu,
                    "bus": port,
                })),
            )
            .await;
        if let Err(e) = r {
            let _ = self.qmp("netdev_del", Some(json!({ "id": netdev }))).await;
            return Err(e);
        }
        Ok(())
    }

    /// The first of the root ports `{prefix}0..{prefix}{count}` with no device behind it.
    pub(super) async fn free_port(
        &self,
        prefix: &str,
        count: u32,
    ) -> Result<Option<String>, DriverError> {
        let buses = self.qmp("query-pci", None).await?;
        let mut occupied = std::collections::HashSet::new();
        for bus in buses.as_array().into_iter().flatten() {
            for dev in bus["devices"].as_array().into_iter().flatten() {
                let Some(id) = dev["qdev_id"].as_str() else {
                    continue;
                };
                let behind = dev["pci_bridge"]["devices"]
                    .as_array()
                    .is_some_and(|d| !d.is_empty());
                if behind {
                    occupied.insert(id.to_owned());
                }
            }
        }
        Ok((0..count)
            .map(|i| format!("{prefix}{i}"))
            .find(|p| !occupied.contains(p)))
    }

    pub(super) async fn unplug_nic(&self, id: &str) -> Result<(), DriverError> {
        let netdev = cmdline::nic_netdev(id);
        let device = cmdline::nic_device(id);
        if self.device_present(&device).await? {
            self.qmp("device_del", Some(json!({ "id": device })))
                .await?;
            let deadline = tokio::time::Instant::now() + UNPLUG_TIMEOUT;
            while self.device_present(&device).await? {
                if tokio::time::Instant::now() > deadline {
                    return Err(DriverError::Hypervisor(format!(
                        "the guest did not release the NIC within {} s",
                        UNPLUG_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        match self.qmp("netdev_del", Some(json!({ "id": netdev }))).await {
            Ok(_) => Ok(()),
            // Already gone.
            Err(DriverError::Hypervisor(m)) if m.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
