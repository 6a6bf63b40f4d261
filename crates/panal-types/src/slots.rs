//! Device slots: where a VM's volumes and NICs sit in its virtual hardware.
//!
//! A q35 VM gets a number of PCIe root ports when it is created, and each volume or NIC takes
//! one of them for as long as it is attached. The port is chosen here, by the control plane
//! (the lowest free one), and stored with the device, rather than by the host when it plugs
//! the device: a live migration's destination has to build exactly the PCI layout the source
//! has, and the source's layout after a few hot-plugs and unplugs is not something the
//! destination could work out from the list of devices alone.
//!
//! Why the number is fixed while the VM runs (a stopped VM's can change, down to one past the
//! highest slot a device holds) and kept small: QEMU cannot add root ports to a running q35
//! machine, and
//! every empty one costs downtime on each live migration (about 2.5 ms each under TCG,
//! `scripts/measure-q35-downtime.py`). OpenStack (`num_pcie_ports`) and libvirt make the same
//! trade.

use crate::network::Nic;
use crate::vm::VmSpec;
use crate::volume::DiskAttachment;
use serde::{Deserialize, Deserializer};

/// The most slots a VM can have: as many as it can have volumes and NICs together.
pub const MAX_HOTPLUG_SLOTS: u32 = 16;

/// Slots a VM gets at creation beyond the devices it starts with, when it does not say.
pub const SPARE_HOTPLUG_SLOTS: u32 = 2;

/// The fewest slots a VM gets when it does not say.
pub const MIN_DEFAULT_HOTPLUG_SLOTS: u32 = 4;

/// The number of slots of a VM created with `devices` volumes and NICs that asked for none:
/// room for two more devices, and at least four slots.
pub fn default_hotplug_slots(devices: usize) -> u32 {
    let devices = u32::try_from(devices).unwrap_or(u32::MAX);
    devices
        .saturating_add(SPARE_HOTPLUG_SLOTS)
        .clamp(MIN_DEFAULT_HOTPLUG_SLOTS, MAX_HOTPLUG_SLOTS)
}

/// What a record written before slots existed reads as: the 16 ports every q35 VM had then.
pub(crate) fn legacy_hotplug_slots() -> u32 {
    MAX_HOTPLUG_SLOTS
}

/// A device's slot as read from a record written before slots existed; replaced as the VM's
/// spec is read (`volumes_with_legacy_slots`, `nics_with_legacy_slots`).
const UNSET: u32 = u32::MAX;

pub(crate) fn unset() -> u32 {
    UNSET
}

/// The first port NICs had before slots: volumes had ports 0-7 (`hp<i>`), NICs 8-15 (`np<i>`).
const LEGACY_FIRST_NIC_SLOT: u32 = 8;

/// Reads a VM's volumes; those of an older record get the port they booted on then (the
/// `i`-th volume on port `i`), so the VM keeps its layout.
pub(crate) fn volumes_with_legacy_slots<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<DiskAttachment>, D::Error> {
    let mut volumes = Vec::<DiskAttachment>::deserialize(d)?;
    fill_unset(volumes.iter_mut().map(|v| &mut v.slot), 0);
    Ok(volumes)
}

/// Reads a VM's NICs; those of an older record get the port they booted on then.
pub(crate) fn nics_with_legacy_slots<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Nic>, D::Error> {
    let mut nics = Vec::<Nic>::deserialize(d)?;
    fill_unset(nics.iter_mut().map(|n| &mut n.slot), LEGACY_FIRST_NIC_SLOT);
    Ok(nics)
}

fn fill_unset<'a>(slots: impl Iterator<Item = &'a mut u32>, first: u32) {
    for (i, slot) in (first..).zip(slots) {
        if *slot == UNSET {
            *slot = i;
        }
    }
}

impl VmSpec {
    /// The slots its volumes and NICs sit in.
    pub fn used_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.volumes
            .iter()
            .map(|v| v.slot)
            .chain(self.nics.iter().map(|n| n.slot))
    }

    /// The lowest slot no volume or NIC of the VM takes; `None` when all are taken.
    pub fn free_slot(&self) -> Option<u32> {
        (0..self.hotplug_slots).find(|s| !self.used_slots().any(|u| u == *s))
    }

    /// Gives a new VM's devices their slots: volumes first (the boot volume is the first
    /// disk), then NICs, in order.
    pub fn number_slots(&mut self) {
        let volumes = self.volumes.iter_mut().map(|v| &mut v.slot);
        let nics = self.nics.iter_mut().map(|n| &mut n.slot);
        for (i, slot) in volumes.chain(nics).enumerate() {
            *slot = u32::try_from(i).unwrap_or(u32::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_two_spare_slots_and_at_least_four() {
        assert_eq!(default_hotplug_slots(0), 4);
        assert_eq!(default_hotplug_slots(2), 4);
        assert_eq!(default_hotplug_slots(3), 5);
        assert_eq!(default_hotplug_slots(15), MAX_HOTPLUG_SLOTS);
        assert_eq!(default_hotplug_slots(usize::MAX), MAX_HOTPLUG_SLOTS);
    }

    /// A VM as stored before slots existed: two volumes and two NICs without a slot, and no
    /// number of slots.
    #[test]
    fn an_older_record_keeps_the_layout_it_booted_with() {
        let volume = |name: &str| {
            serde_json::json!({
                "volume": name, "id": crate::VolumeId::new(), "pool": "default",
                "host": "h", "shared": false, "file": format!("{name}.qcow2"),
                "format": "qcow2", "size_bytes": 1 << 20,
            })
        };
        let nic = |id: &str| {
            serde_json::json!({
                "id": id, "network": "lan", "network_id": crate::NetworkId::new(), "vni": 1,
                "mtu": 1450, "mac": "52:54:00:00:00:01", "ip": "10.0.0.2",
            })
        };
        let spec: VmSpec = serde_json::from_value(serde_json::json!({
            "vcpus": 1, "memory_bytes": 1 << 28, "hypervisor": "qemu", "machine": "q35",
            "power_state": "running",
            "volumes": [volume("a"), volume("b")],
            "nics": [nic("n0"), nic("n1")],
        }))
        .unwrap();
        assert_eq!(spec.hotplug_slots, 16);
        assert_eq!(spec.used_slots().collect::<Vec<_>>(), [0, 1, 8, 9]);
        assert_eq!(spec.free_slot(), Some(2));
        // Written again, the slots are stored and read back as they are.
        let again: VmSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }
}
