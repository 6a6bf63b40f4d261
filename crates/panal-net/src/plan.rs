//! The desired state of one host's virtual networks (`HostPlan`), as the control plane computes
//! it, and its validation. Plain data: no I/O here.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::mac::MacAddr;
use crate::names::{IFNAMSIZ_MAX, bridge_name, vxlan_name};

/// Every network this host should carry now. Networks not listed are removed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostPlan {
    pub networks: Vec<NetworkPlan>,
}

/// One project network on this host: a bridge, its VXLAN device and the local ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// 1..=16_777_215; names the bridge `{prefix}b{vni}` and the VXLAN device `{prefix}x{vni}`.
    pub vni: u32,
    /// Applied to the bridge, the VXLAN device and the ports.
    pub mtu: u32,
    /// Underlay addresses of the other hosts that have this network now (flooding targets).
    pub peers: Vec<Ipv4Addr>,
    /// MACs of NICs on other hosts and the underlay address of their host.
    pub remote_macs: Vec<(MacAddr, Ipv4Addr)>,
    pub ports: Vec<PortPlan>,
    /// Outbound NAT through this host's uplink (see `router.rs`); `None`: an isolated network.
    #[serde(default)]
    pub router: Option<RouterPlan>,
    /// The network's IPv6 /64, advertised to the local guests (`ra.rs`) for SLAAC; `None`: an
    /// IPv4-only network, whose ports may not send IPv6 at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Net>,
}

/// The gateway of a routed network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPlan {
    /// The network's subnet.
    pub subnet: Ipv4Net,
    /// Its gateway address (inside the subnet), present on this host's bridge.
    pub gateway: Ipv4Addr,
}

/// One guest NIC on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPlan {
    pub ifname: String,
    /// true: a persistent tap is created (QEMU opens it by name); false: the interface exists
    /// already (e.g. a veth end) and is only enslaved and configured.
    pub create_tap: bool,
    /// The guest's MAC: the only source MAC accepted from this port.
    pub mac: MacAddr,
    /// The guest's address: the only source IPv4 accepted from this port.
    pub ipv4: Ipv4Addr,
    /// The guest's SLAAC address in the network's /64 (`MacAddr::slaac`): with the MAC's
    /// link-local address, the only IPv6 sources accepted from this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// None: no DHCP answers for this port.
    pub dhcp: Option<DhcpLease>,
    /// Allowed NEW inbound flows (replies to allowed flows always pass).
    pub ingress: Vec<RulePlan>,
    /// Allowed NEW outbound flows.
    pub egress: Vec<RulePlan>,
    /// A floating address mapped to this port (routed networks only, see `floating.rs`):
    /// traffic to it is DNATed to `ipv4`, the guest's new outbound flows leave from it.
    #[serde(default)]
    pub floating: Option<Ipv4Addr>,
}

/// One security-group rule: a protocol, an optional destination port range (the guest's port for
/// ingress, the remote's for egress) and the other side's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulePlan {
    pub protocol: Protocol,
    /// Inclusive range; only for protocols that have ports (TCP, UDP, SCTP, DCCP, UDP-Lite).
    pub ports: Option<(u16, u16)>,
    /// IPv4 or IPv6: the rule applies to that family only (`0.0.0.0/0` is any IPv4 peer).
    pub remote: IpNet,
}

/// The IP protocol a rule matches. `Icmp` is the ICMP of the rule's family (ICMPv6 for an IPv6
/// remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
    Number(u8),
}

impl Protocol {
    /// The IP protocol number, None for Any.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmp => Some(1),
            Protocol::Number(n) => Some(n),
        }
    }

    /// Whether the protocol's header starts with 16-bit source and destination ports, so that a
    /// port range can be matched (`th dport`).
    pub fn has_ports(self) -> bool {
        matches!(self.number(), Some(6 | 17 | 33 | 132 | 136))
    }
}

/// What the built-in DHCP responder hands to the guest of one port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpLease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: u32,
    pub hostname: Option<String>,
    /// The address the responder answers from (option 54 and the IPv4 source).
    pub server_id: Ipv4Addr,
    pub lease_secs: u32,
}

pub(crate) const MAX_VNI: u32 = 16_777_215;
/// Port ids live in 16 bits of the packet mark (see `nft.rs`); 0 means "not a port".
pub(crate) const MAX_PORTS: usize = 65_535;

impl HostPlan {
    /// Refuses plans that would render to broken devices or rules: bad VNIs or names, duplicate
    /// names, port ranges on protocols without ports, DHCP leases that anti-spoofing would block.
    pub fn validate(&self, prefix: &str) -> Result<(), NetError> {
        let mut vnis = HashSet::new();
        let mut ifnames = HashSet::new();
        let mut nports = 0usize;
        let mut floating = HashSet::new();
        for net in &self.networks {
            if net.vni == 0 || net.vni > MAX_VNI {
                return Err(NetError::bad_plan(format!(
                    "VNI {} not in 1..=16777215",
                    net.vni
                )));
            }
            if !vnis.insert(net.vni) {
                return Err(NetError::bad_plan(format!("VNI {} appears twice", net.vni)));
            }
            check_mtu(net.mtu, &format!("network {}", net.vni))?;
            if let Some(p) = net.ipv6
                && (p.prefix_len() != 64 || p.network() != p.addr())
            {
                return Err(NetError::bad_plan(format!(
                    "network {}: IPv6 prefix {p} is not a /64 network (SLAAC needs one)",
                    net.vni
                )));
            }
            for name in [bridge_name(prefix, net.vni), vxlan_name(prefix, net.vni)] {
                check_ifname(&name)?;
                ifnames.insert(name);
            }
            for (mac, _) in &net.remote_macs {
                if mac.is_multicast() || *mac == MacAddr::ZERO {
                    return Err(NetError::bad_plan(format!(
                        "remote MAC {mac} is not unicast"
                    )));
                }
            }
            for port in &net.ports {
                nports += 1;
                check_ifname(&port.ifname)?;
                if !ifnames.insert(port.ifname.clone()) {
                    return Err(NetError::bad_plan(format!(
                        "interface {} appears twice",
                        port.ifname
                    )));
                }
                check_port(port)?;
                match (port.ipv6, net.ipv6) {
                    (None, _) => {}
                    (Some(a), Some(p)) if p.contains(&a) => {}
                    (Some(a), _) => {
                        return Err(NetError::bad_plan(format!(
                            "{}: IPv6 address {a} outside the network's prefix {:?}",
                            port.ifname, net.ipv6
                        )));
                    }
                }
                if let Some(f) = port.floating {
                    if net.router.is_none() {
                        return Err(NetError::bad_plan(format!(
                            "{}: floating address {f} on network {} without a router",
                            port.ifname, net.vni
                        )));
                    }
                    if f.is_unspecified() || f.is_broadcast() || f.is_multicast() {
                        return Err(NetError::bad_plan(format!(
                            "{}: floating address {f} is not unicast",
                            port.ifname
                        )));
                    }
                    if !floating.insert(f) {
                        return Err(NetError::bad_plan(format!(
                            "floating address {f} appears twice"
                        )));
                    }
                }
            }
        }
        if nports > MAX_PORTS {
            return Err(NetError::bad_plan(format!(
                "{nports} ports; at most {MAX_PORTS}"
            )));
        }
        Ok(())
    }
}

fn check_port(port: &PortPlan) -> Result<(), NetError> {
    let who = &port.ifname;
    if port.mac.is_multicast() || port.mac == MacAddr::ZERO {
        return Err(NetError::bad_plan(format!(
            "{who}: MAC {} is not unicast",
            port.mac
        )));
    }
    if port.ipv4.is_unspecified() || port.ipv4.is_broadcast() || port.ipv4.is_multicast() {
        return Err(NetError::bad_plan(format!(
            "{who}: address {} is not unicast",
            port.ipv4
        )));
    }
    for rule in port.ingress.iter().chain(&port.egress) {
        if let Some((lo, hi)) = rule.ports {
            if !rule.protocol.has_ports() {
                return Err(NetError::bad_plan(format!(
                    "{who}: {:?} has no ports, but the rule names {lo}-{hi}",
                    rule.protocol
                )));
            }
            if lo > hi {
                return Err(NetError::bad_plan(format!(
                    "{who}: port range {lo}-{hi} is empty"
                )));
            }
        }
    }
    if let Some(lease) = &port.dhcp {
        // Anti-spoofing accepts only `ipv4` from the guest: a lease for another address would
        // configure a guest that can never send.
        if lease.address != port.ipv4 {
            return Err(NetError::bad_plan(format!(
                "{who}: DHCP address {} differs from the port's address {}",
                lease.address, port.ipv4
            )));
        }
        if lease.prefix_len > 32 {
            return Err(NetError::bad_plan(format!(
                "{who}: prefix length {}",
                lease.prefix_len
            )));
        }
        check_mtu(lease.mtu, who)?;
        if let Some(h) = &lease.hostname {
            // Option 12 is at most 255 bytes; keep it to what resolvers and guests accept.
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(NetError::bad_plan(format!("{who}: hostname {h:?}")));
            }
        }
    }
    Ok(())
}

fn check_mtu(mtu: u32, who: &str) -> Result<(), NetError> {
    if (68..=65_535).contains(&mtu) {
        Ok(())
    } else {
        Err(NetError::bad_plan(format!(
            "{who}: MTU {mtu} not in 68..=65535"
        )))
    }
}

/// Linux interface names: 1..=15 bytes, no '/', ':', whitespace; we also keep them to the
/// characters that need no quoting in `ip -batch` and nft.
fn check_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NetError::bad_plan(format!(
            "interface name {name:?} is not 1-15 of [A-Za-z0-9._-]"
        )))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn port(ifname: &str, last: u8) -> PortPlan {
        PortPlan {
            ifname: ifname.into(),
            create_tap: true,
            mac: MacAddr([0x52, 0x54, 0, 0, 0, last]),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            ipv6: None,
            dhcp: None,
            ingress: vec![],
            egress: vec![],
            floating: None,
        }
    }

    fn plan(ports: Vec<PortPlan>) -> HostPlan {
        HostPlan {
            networks: vec![NetworkPlan {
                vni: 42,
                mtu: 1450,
                peers: vec![],
                remote_macs: vec![],
                ports,
                router: None,
                ipv6: None,
            }],
        }
    }

    #[test]
    fn accepts_a_plain_plan_and_refuses_mistakes() {
        assert!(
            plan(vec![port("pnt1", 2), port("pnt2", 3)])
                .validate("pn")
                .is_ok()
        );
        assert!(
            plan(vec![port("pnt1", 2), port("pnt1", 3)])
                .validate("pn")
                .is_err()
        );
        assert!(
            plan(vec![port("a-name-too-long-x", 2)])
                .validate("pn")
                .is_err()
        );
        assert!(plan(vec![port("bad name", 2)]).validate("pn").is_err());

        let mut p = port("pnt1", 2);
        p.ingress.push(RulePlan {
            protocol: Protocol::Icmp,
            ports: Some((1, 2)),
            remote: "0.0.0.0/0".parse().unwrap(),
        });
        assert!(plan(vec![p]).validate("pn").is_err());

        let mut bad_vni = plan(vec![]);
        bad_vni.networks[0].vni = MAX_VNI + 1;
        assert!(bad_vni.validate("pn").is_err());
        // A 7-character prefix leaves too little room for "b16777215".
        let mut long = plan(vec![]);
        long.networks[0].vni = MAX_VNI;
        assert!(long.validate("pn").is_ok());
        assert!(long.validate("panalxy").is_err());
    }

    #[test]
    fn floating_addresses_need_a_router_and_are_unique() {
        let mut a = port("pnt1", 2);
        a.floating = Some(Ipv4Addr::new(192, 0, 2, 10));
        let mut b = port("pnt2", 3);
        b.floating = a.floating;
        assert!(plan(vec![a.clone()]).validate("pn").is_err(), "no router");
        let mut p = plan(vec![a.clone(), b]);
        p.networks[0].router = Some(RouterPlan {
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
        });
        assert!(p.validate("pn").is_err(), "twice");
        p.networks[0].ports.pop();
        assert!(p.validate("pn").is_ok());
    }

    #[test]
    fn ipv6_addresses_live_in_the_networks_64() {
        let mut p = port("pnt1", 2);
        p.ipv6 = Some(p.mac.slaac("fd00:9::".parse().unwrap()));
        let mut with = plan(vec![p.clone()]);
        assert!(with.validate("pn").is_err(), "an address without a prefix");
        with.networks[0].ipv6 = Some("fd00:9::/64".parse().unwrap());
        assert!(with.validate("pn").is_ok());
        with.networks[0].ipv6 = Some("fd00:8::/64".parse().unwrap());
        assert!(with.validate("pn").is_err(), "another prefix");
        with.networks[0].ipv6 = Some("fd00:9::/48".parse().unwrap());
        assert!(with.validate("pn").is_err(), "not a /64");
    }

    #[test]
    fn dhcp_lease_must_match_the_port_address() {
        let mut p = port("pnt1", 2);
        p.dhcp = Some(DhcpLease {
            address: Ipv4Addr::new(10, 0, 0, 9),
            prefix_len: 24,
            router: None,
            dns: vec![],
            mtu: 1450,
            hostname: None,
            server_id: Ipv4Addr::new(10, 0, 0, 1),
            lease_secs: 3600,
        });
        assert!(plan(vec![p]).validate("pn").is_err());
    }

    #[test]
    fn serde_round_trip() {
        let p = plan(vec![port("pnt1", 2)]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<HostPlan>(&json).unwrap(), p);
    }
}
