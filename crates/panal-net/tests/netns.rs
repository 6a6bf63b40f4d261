//! Root tests of `HostNet` in network namespaces: two "hosts" joined by a veth underlay, "VMs"
//! as namespaces whose veth peer is the port. Each test builds its own lab (names carry the
//! test and the pid) and the lab deletes everything on drop, also after a failed assertion.
//! Skipped, with a printed reason, when not root.

mod lab;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use lab::{Host, Lab, PREFIX, root_or_skip};
use panal_net::{
    DhcpLease, HostPlan, MacAddr, NetworkPlan, PortPlan, Protocol, RulePlan, tap_name, vxlan_name,
};

fn mac(last: u8) -> MacAddr {
    MacAddr([0x52, 0x54, 0x00, 0x10, 0x00, last])
}

fn rule(protocol: Protocol, ports: Option<(u16, u16)>, remote: &str) -> RulePlan {
    RulePlan {
        protocol,
        ports,
        remote: remote.parse().unwrap(),
    }
}

fn any() -> RulePlan {
    rule(Protocol::Any, None, "0.0.0.0/0")
}

/// A veth port with open egress and ICMP in from anywhere.
fn port(ifname: &str, mac: MacAddr, ip: Ipv4Addr) -> PortPlan {
    PortPlan {
        ifname: ifname.into(),
        create_tap: false,
        mac,
        ipv4: ip,
        dhcp: None,
        ingress: vec![rule(Protocol::Icmp, None, "0.0.0.0/0")],
        egress: vec![any()],
        floating: None,
        ipv6: None,
    }
}

fn network(
    vni: u32,
    peers: &[&Host],
    remote_macs: Vec<(MacAddr, Ipv4Addr)>,
    ports: Vec<PortPlan>,
) -> NetworkPlan {
    NetworkPlan {
        vni,
        mtu: 1450,
        peers: peers.iter().map(|h| h.underlay).collect(),
        remote_macs,
        ports,
        router: None,
        ipv6: None,
    }
}

fn plan(networks: Vec<NetworkPlan>) -> HostPlan {
    HostPlan { networks }
}

fn lease(ip: Ipv4Addr, hostname: &str) -> DhcpLease {
    let o = ip.octets();
    DhcpLease {
        address: ip,
        prefix_len: 24,
        router: Some(Ipv4Addr::new(o[0], o[1], o[2], 1)),
        dns: vec![Ipv4Addr::new(o[0], o[1], o[2], 53)],
        mtu: 1450,
        hostname: Some(hostname.into()),
        server_id: Ipv4Addr::new(o[0], o[1], o[2], 254),
        lease_secs: 3600,
    }
}

/// Runs busybox udhcpc in the VM; its script records the lease's variables and configures the
/// address. Returns the variables.
fn udhcpc(vm: &lab::Vm) -> std::collections::BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    let out = dir.path().join("lease");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > \"$LEASE_OUT\"\nip addr add \"$ip/$mask\" dev \"$interface\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = format!("LEASE_OUT={}", out.display());
    let res = vm.run(&[
        "env",
        &env,
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        script.to_str().unwrap(),
    ]);
    assert!(
        res.status.success(),
        "udhcpc in {} got no lease: {}{}",
        vm.ns,
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Remote entries of a VXLAN device: (MAC, dst).
fn fdb(host: &Host, dev: &str) -> BTreeSet<(String, String)> {
    let out = host.must(&["bridge", "-j", "fdb", "show", "dev", dev]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.iter()
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e["dst"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn dhcp_then_ping_across_hosts_over_vxlan() {
    if !root_or_skip("dhcp_then_ping_across_hosts_over_vxlan") {
        return;
    }
    let mut lab = Lab::new("dhcp");
    let (h1, h2) = lab.hosts(1);
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 10, 1, 2), Ipv4Addr::new(10, 10, 1, 3));
    let a = lab.vm("a", &h1, "vpa", mac(0x0a), None);
    let b = lab.vm("b", &h2, "vpb", mac(0x0b), None);
    let mut pa = port("vpa", a.mac, ip_a);
    pa.dhcp = Some(lease(ip_a, "vm-a"));
    let mut pb = port("vpb", b.mac, ip_b);
    pb.dhcp = Some(lease(ip_b, "vm-b"));
    let r1 = h1.apply(&plan(vec![network(
        1001,
        &[&h2],
        vec![(b.mac, h2.underlay)],
        vec![pa],
    )]));
    let r2 = h2.apply(&plan(vec![network(
        1001,
        &[&h1],
        vec![(a.mac, h1.underlay)],
        vec![pb],
    )]));
    for r in [&r1, &r2] {
        assert_eq!(
            (r.devices_created, r.devices_changed),
            (2, 1),
            "bridge + vxlan created, veth enslaved: {r:?}"
        );
        assert_eq!((r.fdb_added, r.listeners_started), (2, 1), "{r:?}");
        assert!(r.nft_applied);
    }

    let got = udhcpc(&a);
    assert_eq!(
        got.get("ip").map(String::as_str),
        Some("10.10.1.2"),
        "{got:?}"
    );
    assert_eq!(got.get("mask").map(String::as_str), Some("24"));
    assert_eq!(got.get("router").map(String::as_str), Some("10.10.1.1"));
    assert_eq!(got.get("dns").map(|s| s.trim()), Some("10.10.1.53"));
    assert_eq!(got.get("mtu").map(String::as_str), Some("1450"));
    assert_eq!(got.get("hostname").map(String::as_str), Some("vm-a"));
    assert_eq!(got.get("lease").map(String::as_str), Some("3600"));
    assert_eq!(got.get("serverid").map(String::as_str), Some("10.10.1.254"));
    let got_b = udhcpc(&b);
    assert_eq!(
        got_b.get("ip").map(String::as_str),
        Some("10.10.1.3"),
        "{got_b:?}"
    );
    assert_eq!(got_b.get("hostname").map(String::as_str), Some("vm-b"));

    assert!(a.pings(ip_b), "A reaches B over VXLAN");
    assert!(b.pings(ip_a), "B reaches A over VXLAN");

    let want = |peer: Ipv4Addr, m: MacAddr| {
        BTreeSet::from([
            ("00:00:00:00:00:00".to_string(), peer.to_string()),
            (m.to_string(), peer.to_string()),
        ])
    };
    let dev = vxlan_name(PREFIX, 1001);
    assert_eq!(fdb(&h1, &dev), want(h2.underlay, b.mac));
    assert_eq!(fdb(&h2, &dev), want(h1.underlay, a.mac));
}

#[test]
fn same_cidr_networks_do_not_reach_each_other() {
    if !root_or_skip("same_cidr_networks_do_not_reach_each_other") {
        return;
    }
    let mut lab = Lab::new("iso");
    let (h1, h2) = lab.hosts(2);
    let (lo, hi) = (Ipv4Addr::new(10, 20, 0, 2), Ipv4Addr::new(10, 20, 0, 3));
    // Network 1: A (h1, .2) and B (h2, .3); network 2: C (h1, .2) and D (h2, .3).
    let a = lab.vm("a", &h1, "vpa", mac(0x1a), Some("10.20.0.2/24"));
    let c = lab.vm("c", &h1, "vpc", mac(0x1c), Some("10.20.0.2/24"));
    let b = lab.vm("b", &h2, "vpb", mac(0x1b), Some("10.20.0.3/24"));
    let d = lab.vm("d", &h2, "vpd", mac(0x1d), Some("10.20.0.3/24"));
    h1.apply(&plan(vec![
        network(
            2001,
            &[&h2],
            vec![(b.mac, h2.underlay)],
            vec![port("vpa", a.mac, lo)],
        ),
        network(
            2002,
            &[&h2],
            vec![(d.mac, h2.underlay)],
            vec![port("vpc", c.mac, lo)],
        ),
    ]));
    h2.apply(&plan(vec![
        network(
            2001,
            &[&h1],
            vec![(a.mac, h1.underlay)],
            vec![port("vpb", b.mac, hi)],
        ),
        network(
            2002,
            &[&h1],
            vec![(c.mac, h1.underlay)],
            vec![port("vpd", d.mac, hi)],
        ),
    ]));
    b.count("echo", "ip saddr 10.20.0.2 icmp type echo-request");
    d.count("echo", "ip saddr 10.20.0.2 icmp type echo-request");

    assert!(a.pings(hi), "A reaches B in its own network");
    let (at_b, at_d) = (b.counted("echo"), d.counted("echo"));
    assert!(at_b > 0, "B saw A's pings");
    assert_eq!(at_d, 0, "D (other network, same address) saw nothing");

    assert!(c.pings(hi), "C reaches D in its own network");
    assert!(d.counted("echo") > 0, "D saw C's pings");
    assert_eq!(b.counted("echo"), at_b, "B saw none of C's pings");

    // Even knowing B's MAC, C's frames stay in network 2.
    let before = b.counted("echo");
    c.must(&[
        "ip",
        "neigh",
        "replace",
        "10.20.0.3",
        "lladdr",
        &b.mac.to_string(),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let _ = c.pings(hi);
    assert_eq!(
        b.counted("echo"),
        before,
        "frames to B's MAC from network 2 never reach B"
    );
}

#[test]
fn security_group_opens_and_closes_a_tcp_port() {
    if !root_or_skip("security_group_opens_and_closes_a_tcp_port") {
        return;
    }
    let mut lab = Lab::new("sg");
    let (h1, h2) = lab.hosts(3);
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 30, 0, 2), Ipv4Addr::new(10, 30, 0, 3));
    let a = lab.vm("a", &h1, "vpa", mac(0x2a), Some("10.30.0.2/24"));
    let b = lab.vm("b", &h2, "vpb", mac(0x2b), Some("10.30.0.3/24"));
    // C shares A's host: its flows to A never leave the bridge, so A's ingress chain is
    // checked on the local path too.
    let c = lab.vm("c", &h1, "vpc", mac(0x2c), Some("10.30.0.4/24"));
    // A: open egress; ingress TCP 9090 from B only. B: open egress; ingress ICMP only, for now.
    let mut pa = port("vpa", a.mac, ip_a);
    pa.ingress
        .push(rule(Protocol::Tcp, Some((9090, 9090)), "10.30.0.3/32"));
    let pc = port("vpc", c.mac, Ipv4Addr::new(10, 30, 0, 4));
    let plan_a = plan(vec![network(
        3001,
        &[&h2],
        vec![(b.mac, h2.underlay)],
        vec![pa, pc],
    )]);
    let plan_b = |ingress_tcp: bool| {
        let mut pb = port("vpb", b.mac, ip_b);
        if ingress_tcp {
            pb.ingress
                .push(rule(Protocol::Tcp, Some((8000, 8100)), "10.30.0.2/32"));
        }
        plan(vec![network(
            3001,
            &[&h1],
            vec![(a.mac, h1.underlay)],
            vec![pb],
        )])
    };
    h1.apply(&plan_a);
    h2.apply(&plan_b(false));
    let _server_b = b.listen(8080);
    let _server_a = a.listen(9090);
    let to_b = SocketAddr::from((ip_b, 8080));

    assert!(a.pings(ip_b), "ICMP is allowed, so the path works");
    assert!(!a.connects(to_b), "no ingress rule on B: TCP 8080 closed");
    assert!(
        b.connects(SocketAddr::from((ip_a, 9090))),
        "B's outbound flow: its replies pass B's closed ingress"
    );
    assert!(
        c.pings(ip_a),
        "C reaches A on the local bridge (ICMP allowed)"
    );
    assert!(
        !c.connects(SocketAddr::from((ip_a, 9090))),
        "A's TCP 9090 is open to B only, also locally"
    );

    let r = h2.apply(&plan_b(true));
    assert!(
        r.nft_applied && r.devices_created == 0 && r.devices_changed == 0,
        "{r:?}"
    );
    assert!(a.connects(to_b), "ingress rule added: TCP 8080 open");
    assert!(!c.connects(to_b), "the rule names A's address; C stays out");

    h2.apply(&plan_b(false));
    assert!(!a.connects(to_b), "ingress rule removed: closed again");
    assert!(
        b.connects(SocketAddr::from((ip_a, 9090))),
        "outbound still fine"
    );
}

#[test]
fn spoofed_frames_and_rogue_dhcp_are_not_heard() {
    if !root_or_skip("spoofed_frames_and_rogue_dhcp_are_not_heard") {
        return;
    }
    let mut lab = Lab::new("spoof");
    let h = lab.host(Ipv4Addr::new(10, 250, 4, 1));
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 40, 0, 2), Ipv4Addr::new(10, 40, 0, 3));
    let a = lab.vm("a", &h, "vpa", mac(0x3a), Some("10.40.0.2/24"));
    let b = lab.vm("b", &h, "vpb", mac(0x3b), Some("10.40.0.3/24"));
    let mut pa = port("vpa", a.mac, ip_a);
    let mut pb = port("vpb", b.mac, ip_b);
    pa.ingress = vec![any()];
    pb.ingress = vec![any()];
    pa.dhcp = Some(lease(ip_a, "vm-a")); // the host's own responder runs next to the rogue
    h.apply(&plan(vec![network(4001, &[], vec![], vec![pa, pb])]));

    a.count("genuine", "ip saddr 10.40.0.3 icmp type echo-request");
    a.count("forged_ip", "ip saddr 10.40.0.99 icmp type echo-request");
    a.count("forged_mac", "ether saddr 52:54:00:66:66:66");
    a.count("forged_arp", "arp saddr ip 10.40.0.99");
    a.count("rogue_dhcp", "ip saddr 10.40.0.3 udp sport 67");
    a.count("plain_udp", "ip saddr 10.40.0.3 udp sport 6767");
    a.count("ipv6", "ether saddr 52:54:00:10:00:3b ether type ip6");

    // Control: B's genuine traffic is heard.
    assert!(b.pings(ip_a));
    assert!(a.counted("genuine") > 0);

    // Forged source address (B knows A's MAC statically, so the forged packet itself goes out).
    b.must(&["ip", "addr", "add", "10.40.0.99/24", "dev", "eth0"]);
    b.must(&[
        "ip",
        "neigh",
        "replace",
        "10.40.0.2",
        "lladdr",
        &a.mac.to_string(),
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let _ = b.run(&[
        "busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        "10.40.0.99",
        "10.40.0.2",
    ]);
    assert_eq!(
        a.counted("forged_ip"),
        0,
        "a forged source address is dropped"
    );

    // B answers ARP for 10.40.0.99, which is not its address: A never hears the answer.
    assert!(
        !a.pings(Ipv4Addr::new(10, 40, 0, 99)),
        "A cannot reach B's unplanned address"
    );
    assert_eq!(
        a.counted("forged_arp"),
        0,
        "ARP with a foreign sender address is dropped"
    );

    // Forged MAC.
    b.must(&["ip", "link", "set", "eth0", "address", "52:54:00:66:66:66"]);
    let _ = b.run(&["busybox", "ping", "-c", "2", "-W", "1", "10.40.0.2"]);
    assert_eq!(a.counted("forged_mac"), 0, "a forged source MAC is dropped");
    b.must(&["ip", "link", "set", "eth0", "address", &b.mac.to_string()]);

    // A rogue DHCP server in B: its offers (UDP from port 67) never reach A; the same datagram
    // from another port does, so the path itself is open.
    b.send_udp(67, Ipv4Addr::new(10, 40, 0, 255), 68);
    b.send_udp(6767, Ipv4Addr::new(10, 40, 0, 255), 68);
    assert!(a.counted("plain_udp") > 0, "control datagram arrives");
    assert_eq!(a.counted("rogue_dhcp"), 0, "rogue DHCP is dropped");

    // IPv6 from a guest is dropped for now (B's kernel sends neighbour discovery by itself).
    let _ = b.run(&[
        "busybox", "ping", "-6", "-c", "2", "-W", "1", "-I", "eth0", "ff02::1",
    ]);
    assert_eq!(a.counted("ipv6"), 0, "IPv6 from a guest is dropped");

    // And A's DHCP still works next to all this.
    a.must(&["ip", "addr", "flush", "dev", "eth0"]);
    assert_eq!(udhcpc(&a).get("ip").map(String::as_str), Some("10.40.0.2"));
}

#[test]
fn reapply_of_the_same_plan_changes_nothing() {
    if !root_or_skip("reapply_of_the_same_plan_changes_nothing") {
        return;
    }
    let mut lab = Lab::new("idem");
    let h = lab.host(Ipv4Addr::new(10, 250, 5, 1));
    let ip_a = Ipv4Addr::new(10, 50, 0, 2);
    let a = lab.vm("a", &h, "vpa", mac(0x4a), Some("10.50.0.2/24"));
    let tap = tap_name(PREFIX, "vm-7/nic-0");
    let mut pa = port("vpa", a.mac, ip_a);
    pa.dhcp = Some(lease(ip_a, "vm-a"));
    let mut pt = port(&tap, mac(0x4b), Ipv4Addr::new(10, 50, 0, 3));
    pt.create_tap = true;
    pt.dhcp = Some(lease(Ipv4Addr::new(10, 50, 0, 3), "vm-7"));
    let peer = Ipv4Addr::new(10, 250, 5, 2);
    let mut p = plan(vec![network(
        5001,
        &[],
        vec![(mac(0x4c), peer)],
        vec![pa, pt],
    )]);
    p.networks[0].peers.push(peer);

    let first = h.apply(&p);
    assert_eq!(first.devices_created, 3, "bridge, vxlan, tap: {first:?}");
    let before = (h.ifindex(&tap), h.ifindex("vpa"));

    let again = h.apply(&p);
    assert_eq!(again.changes(), 0, "same plan, no change: {again:?}");
    assert_eq!(
        (h.ifindex(&tap), h.ifindex("vpa")),
        before,
        "the tap and veth were not recreated"
    );

    // A rule change touches nft only; an MTU change sets the MTU in place.
    p.networks[0].ports[1]
        .ingress
        .push(rule(Protocol::Udp, Some((53, 53)), "10.0.0.0/8"));
    let r = h.apply(&p);
    assert!(r.nft_applied, "{r:?}");
    assert_eq!(r.changes(), 1, "{r:?}");
    p.networks[0].mtu = 1400;
    let r = h.apply(&p);
    assert_eq!((r.devices_created, r.devices_removed), (0, 0), "{r:?}");
    assert_eq!(r.devices_changed, 4, "bridge, vxlan, tap, veth: {r:?}");
    assert_eq!((h.ifindex(&tap), h.ifindex("vpa")), before);
    assert_eq!(h.apply(&p).changes(), 0);
    assert!(
        a.pings(Ipv4Addr::new(10, 50, 0, 2)),
        "A still has its own address (sanity)"
    );
}

#[test]
fn empty_plan_and_teardown_leave_nothing() {
    if !root_or_skip("empty_plan_and_teardown_leave_nothing") {
        return;
    }
    let mut lab = Lab::new("clean");
    let h = lab.host(Ipv4Addr::new(10, 250, 6, 1));
    let a = lab.vm("a", &h, "vpa", mac(0x5a), None);
    let ip = Ipv4Addr::new(10, 60, 0, 2);
    let mut pa = port("vpa", a.mac, ip);
    pa.dhcp = Some(lease(ip, "vm-a"));
    let mut pt = port(
        &tap_name(PREFIX, "k"),
        mac(0x5b),
        Ipv4Addr::new(10, 60, 0, 3),
    );
    pt.create_tap = true;
    let p = plan(vec![
        network(6001, &[], vec![], vec![pa, pt]),
        network(6002, &[], vec![], vec![]),
    ]);

    h.apply(&p);
    assert_eq!(h.prefixed_links().len(), 5, "2 bridges, 2 vxlan, 1 tap");
    assert_eq!(h.tables().len(), 2);
    let r = h.apply(&HostPlan::default());
    assert_eq!(r.devices_removed, 5, "{r:?}");
    assert_eq!(r.listeners_stopped, 1, "{r:?}");
    assert!(h.prefixed_links().is_empty(), "{:?}", h.prefixed_links());
    assert!(h.tables().is_empty(), "{:?}", h.tables());
    // The released veth is still there, on no bridge.
    let vpa = h.must(&["ip", "-j", "link", "show", "dev", "vpa"]);
    assert!(!vpa.contains("\"master\""), "{vpa}");
    // After an empty plan the DHCP listener is gone: no lease any more.
    let res = a.run(&[
        "busybox",
        "udhcpc",
        "-i",
        "eth0",
        "-f",
        "-q",
        "-n",
        "-t",
        "2",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]);
    assert!(!res.status.success(), "no DHCP answer after the empty plan");

    h.apply(&p);
    h.teardown();
    assert!(h.prefixed_links().is_empty());
    assert!(h.tables().is_empty());
}

/// Outbound NAT: a guest of a routed network reaches an address outside (the other host's
/// underlay address stands in for the world), masqueraded behind its host; a guest of the same
/// CIDR in an isolated network does not; the outside cannot open a connection to the guest;
/// and the gateway's frames never cross the tunnel.
#[test]
fn routed_network_reaches_outside_through_nat() {
    if !root_or_skip("routed_network_reaches_outside_through_nat") {
        return;
    }
    let mut lab = Lab::new("nat");
    let (h1, h2) = lab.hosts(3);
    let ip = Ipv4Addr::new(10, 30, 0, 2);
    let a = lab.vm("a", &h1, "vna", mac(0x2a), Some("10.30.0.2/24"));
    let c = lab.vm("c", &h1, "vnc", mac(0x2c), Some("10.30.0.2/24"));
    for vm in [&a, &c] {
        vm.must(&["ip", "route", "add", "default", "via", "10.30.0.1"]);
    }
    let mut routed = network(3001, &[], vec![], vec![port("vna", a.mac, ip)]);
    routed.router = Some(panal_net::RouterPlan {
        subnet: "10.30.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 30, 0, 1),
    });
    let isolated = network(3002, &[], vec![], vec![port("vnc", c.mac, ip)]);
    h1.apply(&plan(vec![routed.clone(), isolated.clone()]));

    // The outside: h2's underlay address; it sees the host's address, not the guest's.
    let outside = h2.underlay;
    let server = h2.listen(7001);
    assert!(
        a.connects(std::net::SocketAddr::from((outside, 7001))),
        "the routed guest cannot reach the outside"
    );
    for _ in 0..50 {
        if !server.peers().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        server.peers(),
        vec![h1.underlay],
        "the connection was not masqueraded behind the host"
    );
    assert!(
        !c.connects(std::net::SocketAddr::from((outside, 7001))),
        "the isolated guest reached the outside"
    );
    // The guest cannot reach the host's own services through its gateway.
    let local = h1.listen(7002);
    assert!(
        !a.connects(std::net::SocketAddr::from((
            Ipv4Addr::new(10, 30, 0, 1),
            7002
        ))),
        "the guest reached a service of its host"
    );
    drop(local);
    // Nothing from outside opens a connection to the guest (there is no route, and no rule).
    h2.must(&[
        "ip",
        "route",
        "add",
        "10.30.0.0/24",
        "via",
        &h1.underlay.to_string(),
    ]);
    let guest_server = a.listen(7003);
    assert!(
        !h2.connects(std::net::SocketAddr::from((ip, 7003))),
        "the outside opened a connection to the guest"
    );
    drop(guest_server);

    // Re-applying changes nothing; an empty plan removes the gateway's rules and address.
    let again = h1.apply(&plan(vec![routed, isolated]));
    assert_eq!(again.changes(), 0, "{again:?}");
    let table = format!("lookup {}", 0x5000_0000u32 + 3001);
    let rules = h1.must(&["ip", "rule", "show"]);
    assert_eq!(rules.matches(&table).count(), 2, "{rules}");
    h1.apply(&plan(vec![]));
    let rules = h1.must(&["ip", "rule", "show"]);
    assert!(!rules.contains(&table), "{rules}");
}

/// Floating address: the outside (h2, on the uplink's segment) opens a connection to a guest of
/// h1's routed network through an address of that segment, the guest sees the true source; the
/// guest's own new flows leave from the floating address instead of the host's; when the plan
/// drops it (disassociated, or the guest moved away) the address, the DNAT and the SNAT go.
#[test]
fn floating_address_reaches_a_guest_and_is_its_source_outside() {
    if !root_or_skip("floating_address_reaches_a_guest_and_is_its_source_outside") {
        return;
    }
    let mut lab = Lab::new("fip");
    let (h1, h2) = lab.hosts(4);
    let ip = Ipv4Addr::new(10, 31, 0, 2);
    let floating = Ipv4Addr::new(10, 250, 4, 100);
    let a = lab.vm("a", &h1, "vfa", mac(0x3a), Some("10.31.0.2/24"));
    a.must(&["ip", "route", "add", "default", "via", "10.31.0.1"]);
    let mut p = port("vfa", a.mac, ip);
    p.ingress
        .push(rule(Protocol::Tcp, Some((7010, 7010)), "0.0.0.0/0"));
    p.floating = Some(floating);
    let mut routed = network(3101, &[], vec![], vec![p]);
    routed.router = Some(panal_net::RouterPlan {
        subnet: "10.31.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 31, 0, 1),
    });
    h1.apply(&plan(vec![routed.clone()]));
    let addrs = h1.must(&["ip", "-4", "addr", "show", "dev", "ula"]);
    assert!(addrs.contains(&format!("{floating}/32")), "{addrs}");

    // Inbound: h2 knows nothing of the guest's subnet; it reaches the floating address by ARP.
    let guest_server = a.listen(7010);
    assert!(
        h2.connects(SocketAddr::from((floating, 7010))),
        "the outside cannot reach the guest through its floating address"
    );
    wait_for(|| !guest_server.peers().is_empty());
    assert_eq!(
        guest_server.peers(),
        vec![h2.underlay],
        "DNAT kept the source"
    );
    // A port the guest's security groups do not open stays closed.
    let closed = a.listen(7011);
    assert!(!h2.connects(SocketAddr::from((floating, 7011))));
    drop(closed);

    // Outbound: the guest's new flows leave from the floating address.
    let server = h2.listen(7012);
    assert!(a.connects(SocketAddr::from((h2.underlay, 7012))));
    wait_for(|| !server.peers().is_empty());
    assert_eq!(
        server.peers(),
        vec![floating],
        "not SNATed to the floating address"
    );
    drop(server);

    // Idempotent.
    let again = h1.apply(&plan(vec![routed.clone()]));
    assert_eq!(again.changes(), 0, "{again:?}");

    // Dropped from the plan: gone from the uplink; the guest is masqueraded again.
    routed.ports[0].floating = None;
    h1.apply(&plan(vec![routed]));
    let addrs = h1.must(&["ip", "-4", "addr", "show", "dev", "ula"]);
    assert!(!addrs.contains(&format!("{floating}/32")), "{addrs}");
    h2.must(&["ip", "neigh", "flush", "all"]);
    assert!(!h2.connects(SocketAddr::from((floating, 7010))));
    let server = h2.listen(7013);
    assert!(a.connects(SocketAddr::from((h2.underlay, 7013))));
    wait_for(|| !server.peers().is_empty());
    assert_eq!(server.peers(), vec![h1.underlay]);
    drop(guest_server);
}

/// The VM's global IPv6 addresses that finished duplicate-address detection.
fn global_ipv6(vm: &lab::Vm) -> Vec<String> {
    let out = vm.must(&[
        "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.iter()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a.get("tentative").is_none())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn ipv6_by_slaac_across_hosts_with_anti_spoofing_and_security_groups() {
    if !root_or_skip("ipv6_by_slaac_across_hosts_with_anti_spoofing_and_security_groups") {
        return;
    }
    let mut lab = Lab::new("six");
    let (h1, h2) = lab.hosts(7);
    let prefix: ipnet::Ipv6Net = "fd00:77:0:1::/64".parse().unwrap();
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 70, 0, 2), Ipv4Addr::new(10, 70, 0, 3));
    let a = lab.vm("a", &h1, "vpa", mac(0x6a), None);
    let b = lab.vm("b", &h2, "vpb", mac(0x6b), None);
    let (a6, b6) = (a.mac.slaac(prefix.addr()), b.mac.slaac(prefix.addr()));
    // Both: ICMP of either family in, everything out; no DHCP lease (the listener runs for the
    // prefix alone).
    let v6 = |p: &mut PortPlan, addr| {
        p.ipv6 = Some(addr);
        p.ingress.push(rule(Protocol::Icmp, None, "::/0"));
        p.egress.push(rule(Protocol::Any, None, "::/0"));
    };
    let mut pa = port("vpa", a.mac, ip_a);
    v6(&mut pa, a6);
    let mut pb = port("vpb", b.mac, ip_b);
    v6(&mut pb, b6);
    let net = |peer: &Host, remote: (MacAddr, Ipv4Addr), p: PortPlan| {
        let mut n = network(1007, &[peer], vec![remote], vec![p]);
        n.ipv6 = Some(prefix);
        plan(vec![n])
    };
    let r1 = h1.apply(&net(&h2, (b.mac, h2.underlay), pa.clone()));
    h2.apply(&net(&h1, (a.mac, h1.underlay), pb.clone()));
    assert_eq!(
        r1.listeners_started, 1,
        "an advertiser without a lease: {r1:?}"
    );

    // The namespaces' kernels solicit a router when their link comes up (a flap now, so that
    // they ask after the advertisers run) and form prefix + EUI-64: the addresses the plan
    // allows. Duplicate-address detection takes a second of its own.
    for vm in [&a, &b] {
        vm.must(&["ip", "link", "set", "eth0", "down"]);
        vm.must(&["ip", "link", "set", "eth0", "up"]);
    }
    let mut got = (vec![], vec![]);
    for _ in 0..75 {
        got = (global_ipv6(&a), global_ipv6(&b));
        if !got.0.is_empty() && !got.1.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(got, (vec![a6.to_string()], vec![b6.to_string()]));
    // Router lifetime 0: no default route through the advertiser.
    let routes = a.must(&["ip", "-6", "route", "show", "default"]);
    assert!(routes.trim().is_empty(), "{routes}");
    let mtu = a.must(&["cat", "/proc/sys/net/ipv6/conf/eth0/mtu"]);
    assert_eq!(mtu.trim(), "1450");

    assert!(a.pings(b6), "A reaches B over IPv6 across hosts");
    assert!(b.pings(a6), "B reaches A over IPv6 across hosts");

    // TCP over IPv6 is closed until a rule for it exists; an IPv4-only rule does not open it.
    let server = b.listen(9096);
    let to_b = SocketAddr::from((b6, 9096));
    assert!(!a.connects(to_b), "default deny inbound over IPv6");
    pb.ingress
        .push(rule(Protocol::Tcp, Some((9096, 9096)), "0.0.0.0/0"));
    h2.apply(&net(&h1, (a.mac, h1.underlay), pb.clone()));
    assert!(!a.connects(to_b), "an IPv4 rule opens nothing over IPv6");
    pb.ingress.push(rule(
        Protocol::Tcp,
        Some((9096, 9096)),
        &format!("{a6}/128"),
    ));
    h2.apply(&net(&h1, (a.mac, h1.underlay), pb.clone()));
    assert!(a.connects(to_b), "an IPv6 rule for A opens the port");
    drop(server);

    // B forges a source address in the prefix: A never hears it, nor B's neighbour
    // advertisement for it.
    a.count("forged6", "ip6 saddr fd00:77:0:1::99");
    a.count(
        "forged_na",
        "icmpv6 type nd-neighbor-advert @th,64,128 0xfd000077000000010000000000000099",
    );
    a.count(
        "genuine6",
        &format!("ip6 saddr {b6} icmpv6 type echo-request"),
    );
    b.must(&[
        "ip",
        "addr",
        "add",
        "fd00:77:0:1::99/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let _ = b.run(&[
        "busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        "fd00:77:0:1::99",
        &a6.to_string(),
    ]);
    assert!(!a.pings("fd00:77:0:1::99".parse::<std::net::Ipv6Addr>().unwrap()));
    assert_eq!(a.counted("forged6"), 0, "a forged IPv6 source is dropped");
    assert_eq!(
        a.counted("forged_na"),
        0,
        "advertising a foreign address is dropped"
    );
    // Control: from its own address (source selection may now pick the forged one), B is
    // heard.
    let _ = b.run(&[
        "busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        &b6.to_string(),
        &a6.to_string(),
    ]);
    assert!(
        a.counted("genuine6") > 0,
        "control: B's own address is heard"
    );
}

fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..50 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
