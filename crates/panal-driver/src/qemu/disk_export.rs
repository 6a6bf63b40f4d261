//! Migrating a VM's local disks on QEMU, the destination side: QEMU's own NBD server
//! (`nbd-server-start`) serving each disk's format node as a writable export
//! (`block-export-add`) named by the disk id, for the source's mirror jobs to write into, and
//! taking it all down again. The whole protocol is in `disk_mirror.rs`'s header.
//!
//! Exporting activates the node early (QEMU keeps an incoming VM's disks inactive until the
//! migration ends, for shared storage), which is what lets the mirror write while the memory
//! migration is still to come. Export ids are `exp-<disk id>`; only ours are ever removed. With
//! migration TLS (`tls.rs`) an NBD server on TCP speaks only TLS, with the destination's
//! credentials; one on a Unix socket is the caller's to secure.

use super::disk_mirror::{check_disk_ids, source_node};
use super::handle::QemuVm;
use crate::{DriverError, Endpoint, Incoming};
use serde_json::json;

const EXPORT_PREFIX: &str = "exp-";

fn export_id(disk: &str) -> String {
    format!("{EXPORT_PREFIX}{disk}")
}

impl QemuVm {
    pub(super) async fn export(&self, at: &Incoming, disks: &[String]) -> Result<(), DriverError> {
        check_disk_ids(disks)?;
        let status = self.run_status().await?;
        if status != "inmigrate" {
            // Serving a running guest's disks writable to another host would corrupt them.
            return Err(DriverError::Invalid(format!(
                "only a VM waiting for an incoming migration serves its disks (QEMU state {status})"
            )));
        }
        let r = self.add_exports(at.endpoint(), disks).await;
        if r.is_err() {
            let _ = self.unexport().await;
        }
        r
    }

    async fn add_exports(&self, at: Endpoint<'_>, disks: &[String]) -> Result<(), DriverError> {
        // `nbd-server-start` takes the older, nested form of a socket address.
        let mut addr = super::migrate::socket_address(at);
        let kind = addr.as_object_mut().and_then(|o| o.remove("type"));
        let mut server = json!({ "addr": { "type": kind, "data": addr } });
        if let Endpoint::Tcp(_) = at
            && let Some(creds) = self.server_tls().await?
        {
            // Only a source with a certificate from the same CA may connect.
            server["tls-creds"] = creds.into();
        }
        match self.qmp("nbd-server-start", Some(server)).await {
            Ok(_) => {}
            // A retried call.
            Err(DriverError::Hypervisor(m)) if m.contains("already running") => {}
            Err(e) => return Err(e),
        }
        let existing = self.our_exports().await?;
        for disk in disks {
            if existing.contains(&export_id(disk)) {
                continue;
            }
            self.qmp(
                "block-export-add",
                Some(json!({
                    "type": "nbd",
                    "id": export_id(disk),
                    "node-name": source_node(disk),
                    "name": disk,
                    "writable": true,
                })),
            )
            .await
            .map_err(|e| DriverError::Hypervisor(format!("disk {disk}: {e}")))?;
        }
        Ok(())
    }

    async fn our_exports(&self) -> Result<Vec<String>, DriverError> {
        let q = self.qmp("query-block-exports", None).await?;
        Ok(q.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "nbd")
            .filter_map(|e| e["id"].as_str())
            .filter(|id| id.starts_with(EXPORT_PREFIX))
            .map(str::to_string)
            .collect())
    }

    pub(super) async fn unexport(&self) -> Result<(), DriverError> {
        for id in self.our_exports().await? {
            // `hard`: a source still connected is cut off rather than waited for.
            match self
                .qmp(
                    "block-export-del",
                    Some(json!({ "id": id, "mode": "hard" })),
                )
                .await
            {
                Ok(_) => {}
                // Already on its way out.
                Err(DriverError::Hypervisor(m)) if m.contains("already shutting down") => {}
                Err(e) => return Err(e),
            }
        }
        match self.qmp("nbd-server-stop", None).await {
            Ok(_) => Ok(()),
            Err(DriverError::Hypervisor(m)) if m.contains("not running") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
