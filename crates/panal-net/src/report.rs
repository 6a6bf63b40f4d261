//! What one `apply()` did: counts per kind of change, so a caller (and a test) can tell a
//! converged host (all zero) from one that was changed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Bridges, VXLAN devices and taps created (a recreated device counts once here and once in
    /// `devices_removed`).
    pub devices_created: usize,
    /// Devices whose MTU, master or up state were set.
    pub devices_changed: usize,
    /// Devices deleted, and foreign interfaces released from our bridges.
    pub devices_removed: usize,
    pub fdb_added: usize,
    pub fdb_removed: usize,
    /// Whether the nftables transaction ran (false: the kernel already had this exact ruleset).
    pub nft_applied: bool,
    /// Security-group rules in the plan (ingress + egress of all ports).
    pub nft_rules: usize,
    pub listeners_started: usize,
    pub listeners_stopped: usize,
    /// Listeners given a new MAC or lease in place.
    pub listeners_updated: usize,
    pub elapsed: Duration,
}

impl ApplyReport {
    /// Everything that changed on the host; 0 for a re-apply of the same plan.
    pub fn changes(&self) -> usize {
        self.devices_created
            + self.devices_changed
            + self.devices_removed
            + self.fdb_added
            + self.fdb_removed
            + usize::from(self.nft_applied)
            + self.listeners_started
            + self.listeners_stopped
            + self.listeners_updated
    }
}
