//! The host side of Panal's per-project virtual networks.
//!
//! For each network a host carries: a Linux bridge `{prefix}b{vni}` (no STP, no address) and a
//! unicast VXLAN device `{prefix}x{vni}` enslaved to it, whose forwarding entries come from the
//! control plane (an all-zero MAC entry per peer host for flooding, one entry per remote MAC;
//! no multicast, no learning). Guest NICs are taps (or, in tests, veth ends) on the bridge.
//! nftables enforces anti-spoofing and stateful security groups on every port (`nft.rs` tells
//! the design), and a built-in DHCP responder answers each guest with its planned address
//! (`dhcp/`).
//!
//! `HostNet::apply(plan)` converges the host to a `HostPlan` and is idempotent: devices that
//! match are never recreated, so a running QEMU keeps its tap across agent restarts.

mod cmd;
mod dhcp;
mod error;
mod fdb;
mod floating;
mod hostnet;
mod links;
mod mac;
mod names;
mod nft;
mod plan;
mod report;
mod router;

pub use error::NetError;
pub use hostnet::{HostNet, HostNetConfig};
pub use mac::{MacAddr, ParseMacError};
pub use names::{bridge_name, tap_name, vxlan_name};
pub use plan::{DhcpLease, HostPlan, NetworkPlan, PortPlan, Protocol, RouterPlan, RulePlan};
pub use report::ApplyReport;
