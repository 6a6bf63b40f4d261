//! Virtual networks: per-project IPv4 networks carried between hosts by unicast VXLAN, the NICs
//! that put VMs on them (address and MAC managed by the control plane), and security groups,
//! the stateful firewall rules applied to each NIC.
//!
//! The control plane turns all of it into one [`HostNetworkPlan`] per host, which the host's
//! agent converges its bridges, VXLAN devices, taps, nftables rules and DHCP answers to.

use crate::{Name, NetworkId, SecurityGroupId};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = 16_777_215;
/// NICs one VM may have.
pub const MAX_NICS: usize = 8;
/// Rules one security group may have.
pub const MAX_RULES: usize = 1000;
/// The MTU a network gets when none is asked for: a 1500-byte underlay less VXLAN's 50 bytes.
pub const DEFAULT_MTU: u32 = 1450;

/// A virtual network of a project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Network {
    /// Stable identity.
    pub id: NetworkId,
    /// Unique within the project.
    pub name: Name,
    /// The owning project.
    pub project: Name,
    /// The IPv4 subnet, canonical (`10.0.0.0/24`).
    pub cidr: String,
    /// The IPv6 /64 of the network, if it has IPv6: guests configure `prefix + EUI-64(MAC)` by
    /// SLAAC from the hosts' router advertisements. On-link only (no IPv6 gateway or NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<String>,
    /// The gateway address handed out by DHCP (inside the subnet, never given to a NIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers handed out by DHCP.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub dns: Vec<Ipv4Addr>,
    /// The MTU of the network's interfaces (guests learn it by DHCP).
    pub mtu: u32,
    /// The VXLAN network identifier carrying it between hosts.
    pub vni: u32,
    /// Guests reach beyond the network through their host's uplink (masqueraded), with the
    /// gateway present on every host that runs one of its VMs.
    #[serde(default)]
    pub outbound_nat: bool,
    /// An external network: no VXLAN and no NICs; its addresses are reachable on the hosts'
    /// uplinks and handed out as floating addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// Deletion has begun: no new NIC may join.
    #[serde(default)]
    pub deleting: bool,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A request to create a network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    /// Name, unique within the project.
    pub name: String,
    /// Project (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// IPv4 subnet in CIDR notation, /8 to /29, not overlapping another network of the project.
    pub cidr: String,
    /// IPv6 as well: a /64 (`fd12:3456:789a:1::/64`), or `auto` for a random unique local one
    /// (RFC 4193). Guests get `prefix + EUI-64(MAC)` by SLAAC; IPv6 stays on the network (no
    /// gateway, no NAT). Not on external networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr: Option<String>,
    /// Gateway address (default: the subnet's first address; `none` for no gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers handed out by DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// MTU, 576 to 9000 (default 1450).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Let guests reach beyond the network through their host's uplink, masqueraded (needs a
    /// gateway). Default false: an isolated network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_nat: Option<bool>,
    /// An external network (a pool of floating addresses on the hosts' uplink segment): no
    /// VXLAN, no NICs, no outbound NAT. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<bool>,
}

/// A floating address: an address of an external network mapped to one NIC (of a network with
/// outbound NAT); the host running the VM carries it, so it follows the VM when it moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FloatingIp {
    /// The address (unique within its external network).
    #[schema(value_type = String)]
    pub address: Ipv4Addr,
    /// The owning project.
    pub project: Name,
    /// The external network it comes from.
    pub network: Name,
    /// That network's identity.
    pub network_id: NetworkId,
    /// The VM it is associated with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<Name>,
    /// The NIC of that VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
    /// When it was allocated.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A request to allocate a floating address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpCreate {
    /// The external network, by name in the project (else in project `default`).
    pub network: String,
    /// Project (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// A given address of the network (default: the lowest free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A request to map a floating address to a VM's NIC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FloatingIpAssociate {
    /// The VM, in the floating address's project.
    pub vm: String,
    /// The NIC (default: the VM's first NIC on a network with outbound NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<String>,
}

/// A NIC asked for when a VM is created or one is plugged in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NicRequest {
    /// The network, by name in the VM's project.
    pub network: String,
    /// A static address (default: the lowest free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// A MAC address (default: generated, `52:54:00:..`); unicast, not all-zero, unique in
    /// the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Security groups of the VM's project. None: all inbound refused, all outbound allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// A VM's NIC as the platform keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Nic {
    /// Stable identity within the VM (names the host's tap device).
    pub id: String,
    /// The network, by name.
    pub network: Name,
    /// The network's identity (survives a network of the same name being re-created).
    pub network_id: NetworkId,
    /// The network's VXLAN identifier.
    pub vni: u32,
    /// The network's MTU.
    pub mtu: u32,
    /// The guest's MAC address.
    pub mac: String,
    /// The guest's IPv4 address (served by DHCP, enforced by anti-spoofing).
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// The guest's IPv6 address on a network with IPv6: its SLAAC address (the network's /64 and
    /// the EUI-64 of the MAC), enforced by anti-spoofing with the MAC's link-local address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ipv6: Option<Ipv6Addr>,
    /// Security groups applied to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<Name>,
    /// The VM's slot it sits in (its PCIe root port on q35), chosen when plugged and kept
    /// while it stays, so a migration's destination builds the same layout.
    #[serde(default = "crate::slots::unset")]
    pub slot: u32,
}

/// Whom an address of a network belongs to (the address-management record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortOwner {
    /// The VM's project.
    pub project: Name,
    /// The VM.
    pub vm: Name,
    /// The NIC.
    pub nic: String,
}

/// Which way a security rule lets new flows through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Towards the VM.
    Ingress,
    /// From the VM.
    Egress,
}

/// One rule of a security group: new flows it matches are allowed (replies always are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityRule {
    /// Stable identity within the group.
    pub id: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// `any`, `tcp`, `udp`, `icmp` or an IP protocol number 0 to 255.
    pub protocol: String,
    /// First port (tcp and udp only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_min: Option<u16>,
    /// Last port (tcp and udp only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max: Option<u16>,
    /// The other side, as a CIDR (IPv4 or IPv6: the rule covers that family only). Neither
    /// this nor `remote_group`: anywhere, IPv4 and IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cidr: Option<String>,
    /// The other side, as the NICs of a security group of the same project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group: Option<Name>,
}

/// A request to add a rule to a security group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityRuleCreate {
    /// `ingress` or `egress`.
    pub direction: String,
    /// `any` (default), `tcp`, `udp`, `icmp` or an IP protocol number 0 to 255.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// First port, 1 to 65535 (tcp and udp only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_min: Option<u32>,
    /// Last port, `port_min` to 65535 (default `port_min`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_max: Option<u32>,
    /// The other side as a CIDR, IPv4 or IPv6 (`0.0.0.0/0` is every IPv4 peer, `::/0` every
    /// IPv6 one). Neither this nor `remote_group`: anywhere, of both families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_cidr: Option<String>,
    /// The other side as the members of a security group of the same project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group: Option<String>,
}

/// A security group: a named set of rules applied to NICs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecurityGroup {
    /// Stable identity.
    pub id: SecurityGroupId,
    /// Unique within the project.
    pub name: Name,
    /// The owning project.
    pub project: Name,
    /// Its rules.
    pub rules: Vec<SecurityRule>,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// A request to create a security group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    /// Name, unique within the project.
    pub name: String,
    /// Project (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Initial rules. Absent: one rule allowing all outbound traffic (as OpenStack does);
    /// an empty list: no rule at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<SecurityRuleCreate>>,
}

/// What one host must have for its VMs' NICs: computed by the control plane, converged by the
/// host's agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetworkPlan {
    /// The networks with at least one of the host's VMs on them.
    pub networks: Vec<NetworkPlan>,
}

/// One network on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// VXLAN identifier.
    pub vni: u32,
    /// MTU of the bridge, VXLAN device and taps.
    pub mtu: u32,
    /// Tunnel addresses of the other hosts with VMs on this network.
    pub peers: Vec<Ipv4Addr>,
    /// MACs of NICs on other hosts and the tunnel address of their host.
    pub remote_macs: Vec<(String, Ipv4Addr)>,
    /// This host's NICs on the network.
    pub ports: Vec<PortPlan>,
    /// For outbound NAT: the subnet and the gateway this host carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<(String, Ipv4Addr)>,
    /// The network's IPv6 /64, advertised to the local guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
}

/// One NIC on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    /// The VM's project and name, for logs.
    pub vm: String,
    /// The NIC's identity (the tap name derives from it).
    pub nic: String,
    /// The guest's MAC.
    pub mac: String,
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The guest's IPv6 (SLAAC) address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The subnet's prefix length.
    pub prefix_len: u8,
    /// Gateway handed out by DHCP.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers handed out by DHCP.
    pub dns: Vec<Ipv4Addr>,
    /// The guest's host name (the VM's name).
    pub hostname: String,
    /// Allowed new inbound flows.
    pub ingress: Vec<RulePlan>,
    /// Allowed new outbound flows.
    pub egress: Vec<RulePlan>,
    /// The floating address mapped to this NIC (its network has a router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating: Option<Ipv4Addr>,
}

/// One resolved rule: the remote side is a CIDR (a remote group's members are expanded).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RulePlan {
    /// IP protocol number; `None` for any.
    pub protocol: Option<u8>,
    /// Port range (tcp and udp).
    pub ports: Option<(u16, u16)>,
    /// The other side.
    pub remote: String,
}

/// An address of a network and the NIC holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkPort {
    /// The address.
    #[schema(value_type = String)]
    pub ip: Ipv4Addr,
    /// The VM holding it.
    pub vm: Name,
    /// The NIC of that VM.
    pub nic: String,
}
