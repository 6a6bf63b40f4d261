//! The hot-plug port a device is to be plugged into: the one of its slot, which the control
//! plane chose and stored, so the VM's layout is the same on every host it runs on.
//!
//! QEMU is asked (`query-pci`) whether that port is there and empty before anything is
//! plugged: a `device_add` into an occupied port is refused, but it still signals the port's
//! slot to the guest, which then drops the device already there.

use super::cmdline;
use super::handle::QemuVm;
use crate::DriverError;
use serde_json::Value;

/// What sits behind a hot-plug port, as `query-pci` describes the VM.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PortState {
    /// The VM has no such port (it was created with fewer slots), or it is not a port.
    Missing,
    /// Nothing is plugged in.
    Empty,
    /// These devices (by id) are.
    Holds(Vec<String>),
}

/// The state of port `id` in a `query-pci` answer.
pub(super) fn port_state(query_pci: &Value, id: &str) -> PortState {
    for bus in query_pci.as_array().into_iter().flatten() {
        for dev in bus["devices"].as_array().into_iter().flatten() {
            // Only a bridge (a root port) has devices behind it.
            if dev["qdev_id"].as_str() != Some(id) || dev["pci_bridge"].is_null() {
                continue;
            }
            let behind: Vec<String> = dev["pci_bridge"]["devices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["qdev_id"].as_str().unwrap_or("?").to_owned())
                .collect();
            return if behind.is_empty() {
                PortState::Empty
            } else {
                PortState::Holds(behind)
            };
        }
    }
    PortState::Missing
}

impl QemuVm {
    /// The id of slot `slot`'s port once QEMU says it is there and empty.
    pub(super) async fn empty_port(&self, slot: u32) -> Result<String, DriverError> {
        let port = cmdline::port(slot);
        match port_state(&self.qmp("query-pci", None).await?, &port) {
            PortState::Empty => Ok(port),
            PortState::Missing => Err(DriverError::Invalid(format!(
                "the VM has no slot {slot} (its ports are laid out when it boots)"
            ))),
            PortState::Holds(devices) => Err(DriverError::Hypervisor(format!(
                "slot {slot} already holds {}",
                devices.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Trimmed from QEMU 7.2's answer for a q35 VM with a disk on hp1.
    fn answer() -> Value {
        json!([{
            "bus": 0,
            "devices": [
                { "qdev_id": "", "class_info": { "desc": "Host bridge" } },
                { "qdev_id": "hp0", "pci_bridge": { "bus": { "number": 1 }, "devices": [] } },
                { "qdev_id": "hp1", "pci_bridge": { "bus": { "number": 2 }, "devices": [
                    { "qdev_id": "dv0b5e7c1e", "class_info": { "desc": "SCSI controller" } }
                ] } },
                { "qdev_id": "rng0" }
            ]
        }])
    }

    #[test]
    fn a_port_is_empty_holds_devices_or_is_missing() {
        let a = answer();
        assert_eq!(port_state(&a, "hp0"), PortState::Empty);
        assert_eq!(
            port_state(&a, "hp1"),
            PortState::Holds(vec!["dv0b5e7c1e".into()])
        );
        assert_eq!(port_state(&a, "hp2"), PortState::Missing);
        // Not a port at all: nothing can be plugged behind it.
        assert_eq!(port_state(&a, "rng0"), PortState::Missing);
    }
}
