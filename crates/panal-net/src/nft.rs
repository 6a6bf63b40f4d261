//! Renders anti-spoofing and security groups as one nftables transaction (pure; applied by
//! `hostnet.rs` with one `nft -f -`).
//!
//! The bridge family has no conntrack on hosts without `nf_conntrack_bridge`, so the work is split:
//! - `table bridge T`, stateless, per frame:
//!   - `prerouting` (priority -300, before br_netfilter at 0): `iifname vmap @guard` jumps to the
//!     port's guard chain: source MAC, ARP sender (MAC and address, or 0.0.0.0 probes), IPv4
//!     source, no DHCP server packets; on a network with IPv6, the IPv6 source (the MAC's
//!     link-local address, its SLAAC address, or `::` for duplicate-address probes), no router
//!     advertisements or redirects, no DHCPv6 server packets, neighbour advertisements only for
//!     its own addresses; other ethertypes (and IPv6 on IPv4-only networks) dropped. DHCP client
//!     packets and router solicitations are dropped too: the local responder and advertiser
//!     already have their copy (AF_PACKET sees a frame before the bridge does), so they never
//!     flood to other ports or over VXLAN.
//!   - `classify` (forward, priority -250, before br_netfilter's forward hook at -1): writes the
//!     out port's id into the low 16 bits of `meta mark` (`oifname map`, VXLAN devices map to 0),
//!     then ORs the in port's id into the high 16 bits (`iifname vmap` to a one-rule chain: nft
//!     cannot OR a looked-up value).
//! - `table inet T`, stateful: with `nf_call_iptables` and `nf_call_ip6tables` on our bridges,
//!   br_netfilter passes bridged IPv4 and IPv6 through the inet hooks with the same skb (so the
//!   mark), where `ct` works.
//!   - `prerouting` (priority -300, before conntrack): `ct zone set iifname map @zone`, one
//!     conntrack zone per network, so two networks with the same CIDR never share a connection.
//!   - `forward`: traffic of our bridges only; `ct state established,related accept`, invalid
//!     dropped; neighbour discovery and multicast listener messages pass (the guard chains
//!     already vetted them; they are how IPv6 finds its neighbours at all); then
//!     `meta mark and 0xffff0000 vmap @egress` (the sender port's egress chain
//!     returns on a match, drops otherwise) and `meta mark and 0xffff vmap @ingress` (the receiver
//!     port's ingress chain accepts on a match, drops otherwise). Vmap dispatch keeps the cost per
//!     NEW packet to the rules of the two ports involved, however many ports the host has.
//!
//! A chain `fp_<hash>` in each table carries a fingerprint of the rendered text, so a re-apply of
//! the same plan is recognised without touching the kernel's ruleset.

use std::fmt::Write as _;

use crate::names::{bridge_name, fnv1a64, vxlan_name};
use crate::plan::{HostPlan, PortPlan, Protocol, RulePlan};
use crate::router::{fwmark, gateway_mac};

/// One rendered transaction.
#[derive(Debug, Clone)]
pub(crate) struct Ruleset {
    /// The whole `nft -f` input: deletes both tables, then recreates them (or only deletes them
    /// when the plan is empty). nft applies it as one atomic transaction.
    pub script: String,
    /// Name of the marker chain in both tables; empty for an empty plan.
    pub fingerprint: String,
    /// Security-group rules rendered (ingress + egress of all ports).
    pub sg_rules: usize,
}

/// Port ids (1-based, by interface name) for the packet mark.
fn ports_by_id(plan: &HostPlan) -> Vec<&PortPlan> {
    let mut ports: Vec<&PortPlan> = plan.networks.iter().flat_map(|n| &n.ports).collect();
    ports.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    ports
}

/// The conntrack zone of a network: derived from the VNI so that it stays the same while other
/// networks come and go (a changed zone would make every open connection look new). VNIs that
/// differ by a multiple of 65,535 share a zone; that only matters if they also share a CIDR.
pub(crate) fn ct_zone(vni: u32) -> u32 {
    vni % 65_535 + 1
}

pub(crate) fn render(table: &str, plan: &HostPlan, prefix: &str) -> Ruleset {
    let mut script = format!(
        "add table bridge {table}\ndelete table bridge {table}\nadd table inet {table}\ndelete table inet {table}\n"
    );
    if plan.networks.is_empty() {
        return Ruleset {
            script,
            fingerprint: String::new(),
            sg_rules: 0,
        };
    }
    let ports = ports_by_id(plan);
    let bridge = render_bridge(&ports, plan, prefix);
    let (inet, sg_rules) = render_inet(&ports, plan, prefix);
    let fingerprint = format!(
        "fp_{:016x}",
        fnv1a64(format!("{bridge}\n{inet}").as_bytes())
    );
    let marker = format!("\tchain {fingerprint} {{\n\t}}\n");
    let _ = write!(script, "table bridge {table} {{\n{marker}{bridge}}}\n");
    let _ = write!(script, "table inet {table} {{\n{marker}{inet}}}\n");
    Ruleset {
        script,
        fingerprint,
        sg_rules,
    }
}

/// `name { typeof KEY : VALUE; elements = { ... } }`, leaving out an empty element list (nft
/// refuses `elements = { }`).
fn map(out: &mut String, kind: &str, name: &str, typeof_: &str, elements: &[String]) {
    let _ = writeln!(out, "\t{kind} {name} {{\n\t\ttypeof {typeof_}");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    out.push_str("\t}\n");
}

fn render_bridge(ports: &[&PortPlan], plan: &HostPlan, prefix: &str) -> String {
    let mut s = String::new();
    let guard: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{}\" : jump port{}_guard", p.ifname, i + 1))
        .collect();
    let mut out_ids: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{}\" : {:#010x}", p.ifname, i + 1))
        .collect();
    // A frame leaving through the tunnel has no local receiver: id 0, no ingress chain. Listing
    // the VXLAN devices keeps a stale mark from surviving.
    out_ids.extend(
        plan.networks
            .iter()
            .map(|n| format!("\"{}\" : 0x00000000", vxlan_name(prefix, n.vni))),
    );
    let in_ids: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{}\" : jump port{}_mark", p.ifname, i + 1))
        .collect();
    map(&mut s, "map", "guard", "iifname : verdict", &guard);
    map(&mut s, "map", "port_out", "oifname : meta mark", &out_ids);
    map(&mut s, "map", "port_in", "iifname : verdict", &in_ids);
    // A routed network's gateway is each host's own: its frames never cross the tunnel and
    // ARP for it from the tunnel is not answered here.
    let mut tunnel = String::new();
    let mut out = String::new();
    for n in &plan.networks {
        if let Some(r) = &n.router {
            let (vx, gmac, gw) = (vxlan_name(prefix, n.vni), gateway_mac(n.vni), r.gateway);
            let _ = write!(
                tunnel,
                "\t\tiifname \"{vx}\" ether saddr {gmac} drop\n\
                 \t\tiifname \"{vx}\" arp daddr ip {gw} drop\n"
            );
            let _ = writeln!(out, "\t\toifname \"{vx}\" ether saddr {gmac} drop");
        }
    }
    let _ = write!(
        s,
        "\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
         {tunnel}\t\tiifname vmap @guard\n\t}}\n"
    );
    if !out.is_empty() {
        let _ = write!(
            s,
            "\tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n{out}\t}}\n"
        );
    }
    s.push_str(
        "\tchain classify {\n\t\ttype filter hook forward priority -250; policy accept;\n\
         \t\tmeta mark set oifname map @port_out\n\t\tiifname vmap @port_in\n\t}\n",
    );
    for (i, p) in ports.iter().enumerate() {
        let id = i + 1;
        let (mac, ip, mark) = (p.mac, p.ipv4, id << 16);
        let _ = write!(
            s,
            "\tchain port{id}_guard {{\n\
             \t\tether saddr != {mac} drop\n\
             \t\tarp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {{ {ip}, 0.0.0.0 }} accept\n\
             \t\tether type ip udp sport 67 drop\n\
             \t\tether type ip udp sport 68 udp dport 67 drop\n\
             \t\tip saddr {ip} meta mark set {mark:#010x} accept\n\
             {}\t\tdrop\n\t}}\n",
            guard_ipv6(p, mark)
        );
        let _ = write!(
            s,
            "\tchain port{id}_mark {{\n\t\tmeta mark set meta mark or {:#010x}\n\t}}\n",
            id << 16
        );
    }
    s
}

fn render_inet(ports: &[&PortPlan], plan: &HostPlan, prefix: &str) -> (String, usize) {
    let mut s = String::new();
    let zones: Vec<String> = plan
        .networks
        .iter()
        .filter(|n| n.router.is_none())
        .map(|n| format!("\"{}\" : {}", bridge_name(prefix, n.vni), ct_zone(n.vni)))
        .collect();
    // Routed networks: flows inside the network keep their zone both ways; flows leaving it
    // have it in the original direction only, so their NATed replies (which arrive from the
    // uplink, zone-less) find them. Masquerade keeps reply tuples unique across networks.
    let mut routed_zones = String::new();
    let mut routed_marks = String::new();
    let mut masquerade = String::new();
    let mut dnat = String::new();
    let mut dnat_in = String::new();
    for n in &plan.networks {
        if let Some(r) = &n.router {
            let (br, z, fw) = (bridge_name(prefix, n.vni), ct_zone(n.vni), fwmark(n.vni));
            let _ = write!(
                routed_zones,
                "\t\tiifname \"{br}\" ip daddr {} ct zone set {z}\n\
                 \t\tiifname \"{br}\" ct original zone set {z}\n",
                r.subnet
            );
            let _ = writeln!(
                routed_marks,
                "\t\tiifname \"{br}\" oifname != @bridges ct mark set {fw:#010x}"
            );
            // Floating addresses: new flows to one are DNATed to its port and marked as the
            // network's (so they route through its table); the port's new flows leave from it.
            for p in &n.ports {
                let Some(f) = p.floating else { continue };
                let v = p.ipv4;
                let _ = writeln!(
                    dnat,
                    "\t\tip daddr {f} meta mark set {fw:#010x} ct mark set {fw:#010x} dnat ip to {v}"
                );
                let _ = writeln!(
                    dnat_in,
                    "\t\toifname \"{br}\" ip daddr {v} ct status dnat ct state new jump {}_ingress",
                    port_chain(ports, p)
                );
                let _ = writeln!(
                    masquerade,
                    "\t\tiifname \"{br}\" ip saddr {v} oifname != \"{br}\" snat ip to {f}"
                );
            }
            let _ = writeln!(
                masquerade,
                "\t\tiifname \"{br}\" oifname != \"{br}\" masquerade"
            );
        }
    }
    let bridges: Vec<String> = plan
        .networks
        .iter()
        .map(|n| format!("\"{}\"", bridge_name(prefix, n.vni)))
        .collect();
    let egress: Vec<String> = (1..=ports.len())
        .map(|id| format!("{:#010x} : jump port{id}_egress", id << 16))
        .collect();
    let ingress: Vec<String> = (1..=ports.len())
        .map(|id| format!("{id:#010x} : jump port{id}_ingress"))
        .collect();
    map(&mut s, "map", "zone", "iifname : ct zone", &zones);
    map(&mut s, "set", "bridges", "iifname", &bridges);
    map(&mut s, "map", "egress", "meta mark : verdict", &egress);
    map(&mut s, "map", "ingress", "meta mark : verdict", &ingress);
    let _ = write!(
        s,
        "\tchain prerouting {{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\
         {routed_zones}\t\tct zone set iifname map @zone\n\t}}\n"
    );
    let _ = write!(
        s,
        "\tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n\
         \t\toifname @bridges iifname != @bridges ct state established,related accept\n\
         {dnat_in}\t\toifname @bridges iifname != @bridges drop\n\
         \t\tiifname != @bridges return\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\ticmpv6 type {{ {NEIGHBOUR_DISCOVERY} }} accept\n\
         \t\tmeta mark and 0xffff0000 vmap @egress\n\
         \t\tmeta mark and 0x0000ffff vmap @ingress\n\
         {routed_marks}\t}}\n"
    );
    // Guests reach the host only as their gateway to elsewhere, never its own services.
    s.push_str(
        "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiifname @bridges ct state established,related accept\n\
         \t\tiifname @bridges drop\n\t}\n",
    );
    if !masquerade.is_empty() {
        // Replies carry the network's conntrack mark back into its routing table.
        s.push_str(
            "\tchain mark_replies {\n\t\ttype filter hook prerouting priority -150; policy accept;\n\
             \t\tct mark and 0xff000000 == 0x5a000000 meta mark set ct mark\n\t}\n",
        );
        if !dnat.is_empty() {
            let _ = write!(
                s,
                "\tchain nat_in {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{dnat}\t}}\n"
            );
        }
        let _ = write!(
            s,
            "\tchain nat_out {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{masquerade}\t}}\n"
        );
    }
    let mut count = 0;
    for (i, p) in ports.iter().enumerate() {
        let id = i + 1;
        let _ = writeln!(s, "\tchain port{id}_egress {{");
        for r in &p.egress {
            let _ = writeln!(s, "\t\t{}", rule(r, Direction::Egress));
        }
        let _ = writeln!(s, "\t\tdrop\n\t}}\n\tchain port{id}_ingress {{");
        for r in &p.ingress {
            let _ = writeln!(s, "\t\t{}", rule(r, Direction::Ingress));
        }
        s.push_str("\t\tdrop\n\t}\n");
        count += p.egress.len() + p.ingress.len();
    }
    (s, count)
}

/// ICMPv6 messages every IPv6 link needs between its members: neighbour and router discovery
/// and multicast listener discovery (MLD, which switches use to forward multicast).
const NEIGHBOUR_DISCOVERY: &str = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, \
     nd-router-advert, mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report";

/// The IPv6 part of a port's guard chain (empty for a port without IPv6: its IPv6 is dropped).
/// nft 1.0 has no `icmpv6 taddr`: the target of a neighbour advertisement is read raw, 128 bits
/// at bit 64 of the ICMPv6 header.
fn guard_ipv6(p: &PortPlan, mark: usize) -> String {
    let Some(global) = p.ipv6 else {
        return String::new();
    };
    let local = p.mac.link_local();
    let hex = |a: std::net::Ipv6Addr| format!("{:#034x}", u128::from(a));
    format!(
        "\t\ticmpv6 type {{ nd-router-advert, nd-redirect, nd-router-solicit }} drop\n\
         \t\tether type ip6 udp sport 547 drop\n\
         \t\ticmpv6 type nd-neighbor-advert @th,64,128 != {{ {}, {} }} drop\n\
         \t\tip6 saddr {{ ::, {local}, {global} }} meta mark set {mark:#010x} accept\n",
        hex(local),
        hex(global)
    )
}

/// The chain-name stem (`port{id}`) of a port, by its place in `ports` (see `ports_by_id`).
fn port_chain(ports: &[&PortPlan], p: &PortPlan) -> String {
    let id = ports.iter().position(|q| q.ifname == p.ifname).unwrap_or(0) + 1;
    format!("port{id}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Egress,
    Ingress,
}

/// One security-group rule. Egress rules `return` (the receiver's ingress check still follows);
/// ingress rules `accept`. The remote is the other side: destination for egress, source for
/// ingress; ports are always the destination port of the NEW packet.
pub(crate) fn rule(r: &RulePlan, dir: Direction) -> String {
    let mut s = String::new();
    let (family, nfproto, icmp) = match r.remote {
        ipnet::IpNet::V4(_) => ("ip", "ipv4", "icmp"),
        ipnet::IpNet::V6(_) => ("ip6", "ipv6", "ipv6-icmp"),
    };
    if r.remote.prefix_len() > 0 {
        let side = if dir == Direction::Egress {
            "daddr"
        } else {
            "saddr"
        };
        let _ = write!(s, "{family} {side} {} ", r.remote.trunc());
    } else {
        let _ = write!(s, "meta nfproto {nfproto} ");
    }
    match r.protocol {
        Protocol::Any => {}
        Protocol::Tcp => s.push_str("meta l4proto tcp "),
        Protocol::Udp => s.push_str("meta l4proto udp "),
        Protocol::Icmp => {
            let _ = write!(s, "meta l4proto {icmp} ");
        }
        Protocol::Number(n) => {
            let _ = write!(s, "meta l4proto {n} ");
        }
    }
    match r.ports {
        Some((lo, hi)) if lo == hi => {
            let _ = write!(s, "th dport {lo} ");
        }
        Some((lo, hi)) => {
            let _ = write!(s, "th dport {lo}-{hi} ");
        }
        None => {}
    }
    s.push_str(if dir == Direction::Egress {
        "return"
    } else {
        "accept"
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::NetworkPlan;
    use crate::plan::tests::port;

    fn r(protocol: Protocol, ports: Option<(u16, u16)>, remote: &str) -> RulePlan {
        RulePlan {
            protocol,
            ports,
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn renders_rules() {
        use Direction::*;
        assert_eq!(
            rule(&r(Protocol::Any, None, "0.0.0.0/0"), Egress),
            "meta nfproto ipv4 return"
        );
        assert_eq!(
            rule(&r(Protocol::Any, None, "::/0"), Egress),
            "meta nfproto ipv6 return"
        );
        assert_eq!(
            rule(&r(Protocol::Icmp, None, "fd00:1::/64"), Ingress),
            "ip6 saddr fd00:1::/64 meta l4proto ipv6-icmp accept"
        );
        assert_eq!(
            rule(&r(Protocol::Tcp, Some((80, 80)), "::/0"), Ingress),
            "meta nfproto ipv6 meta l4proto tcp th dport 80 accept"
        );
        assert_eq!(
            rule(&r(Protocol::Tcp, Some((22, 22)), "10.0.0.0/8"), Ingress),
            "ip saddr 10.0.0.0/8 meta l4proto tcp th dport 22 accept"
        );
        assert_eq!(
            rule(
                &r(Protocol::Udp, Some((1000, 2000)), "192.168.1.7/32"),
                Egress
            ),
            "ip daddr 192.168.1.7/32 meta l4proto udp th dport 1000-2000 return"
        );
        // Host bits of the remote are cleared: nft refuses 10.0.0.1/8.
        assert_eq!(
            rule(&r(Protocol::Icmp, None, "10.0.0.1/8"), Ingress),
            "ip saddr 10.0.0.0/8 meta l4proto icmp accept"
        );
        assert_eq!(
            rule(&r(Protocol::Number(47), None, "0.0.0.0/0"), Ingress),
            "meta nfproto ipv4 meta l4proto 47 accept"
        );
    }

    #[test]
    fn renders_tables_with_dispatch_maps_and_a_stable_fingerprint() {
        let mut a = port("tapa", 2);
        a.egress.push(r(Protocol::Any, None, "0.0.0.0/0"));
        let mut b = port("tapb", 3);
        b.ingress
            .push(r(Protocol::Tcp, Some((80, 80)), "10.0.0.0/24"));
        let plan = HostPlan {
            networks: vec![NetworkPlan {
                vni: 9,
                mtu: 1450,
                peers: vec![],
                remote_macs: vec![],
                ports: vec![b, a],
                router: None,
                ipv6: None,
            }],
        };
        let rs = render("pt", &plan, "pn");
        assert_eq!(rs.sg_rules, 2);
        let s = &rs.script;
        assert!(
            s.starts_with("add table bridge pt\ndelete table bridge pt\n"),
            "{s}"
        );
        // Ids follow interface names: tapa is 1, tapb is 2.
        assert!(
            s.contains("\"tapa\" : jump port1_guard, \"tapb\" : jump port2_guard"),
            "{s}"
        );
        assert!(s.contains("\"tapa\" : 0x00000001, \"tapb\" : 0x00000002, \"pnx9\" : 0x00000000"));
        assert!(s.contains("chain port2_mark {\n\t\tmeta mark set meta mark or 0x00020000\n"));
        assert!(s.contains("ether saddr != 52:54:00:00:00:03 drop"));
        assert!(s.contains("arp saddr ip { 10.0.0.3, 0.0.0.0 } accept"));
        assert!(s.contains("ip saddr 10.0.0.2 meta mark set 0x00010000 accept"));
        assert!(s.contains("\"pnb9\" : 10"), "zone of VNI 9: {s}");
        assert!(s.contains("0x00010000 : jump port1_egress, 0x00020000 : jump port2_egress"));
        assert!(s.contains("chain port1_egress {\n\t\tmeta nfproto ipv4 return\n\t\tdrop\n\t}"));
        assert!(
            !s.contains("ip6 saddr"),
            "no IPv6 on an IPv4-only network: {s}"
        );
        assert!(s.contains(
            "chain port2_ingress {\n\t\tip saddr 10.0.0.0/24 meta l4proto tcp th dport 80 accept\n\t\tdrop\n\t}"
        ));
        assert_eq!(s.matches(&rs.fingerprint).count(), 2);
        // Same plan, same text and fingerprint; another rule, another fingerprint.
        assert_eq!(render("pt", &plan, "pn").script, rs.script);
        let mut changed = plan.clone();
        changed.networks[0].ports[0].ingress[0].ports = Some((81, 81));
        assert_ne!(render("pt", &changed, "pn").fingerprint, rs.fingerprint);
    }

    #[test]
    fn empty_plan_only_deletes() {
        let rs = render("pt", &HostPlan::default(), "pn");
        assert_eq!(
            rs.script,
            "add table bridge pt\ndelete table bridge pt\nadd table inet pt\ndelete table inet pt\n"
        );
        assert!(rs.fingerprint.is_empty());
    }
}
