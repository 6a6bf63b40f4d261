//! NIC hot-plug on a running QEMU: a tap netdev and a virtio-net device on the port of the
//! NIC's slot (`slots.rs`), removed again once the guest has let go.

use super::cmdline;
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
        let port = match self.empty_port(n.slot).await {
            Ok(port) => port,
            Err(e) => {
                let _ = self.qmp("netdev_del", Some(json!({ "id": netdev }))).await;
                return Err(e);
            }
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
