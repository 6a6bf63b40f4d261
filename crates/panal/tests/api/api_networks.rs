//! Virtual networks through the REST API on the fake driver: the network lifecycle (defaults,
//! VXLAN ids, the same subnet in two projects), every refusal of a network or a NIC with its
//! status, error code and field, address management (lowest free address, static addresses and
//! MACs, IPv6 by SLAAC, nothing leaked after VMs are deleted, one address per NIC across a batch
//! and concurrent creates), and what a network in use protects. Security groups and host plans:
//! `api_security_groups.rs`.
//!
//! The fake platform's host carries no virtual networks, so VMs with NICs are never placed on
//! it: their create operation fails for want of a host, but their NICs (addresses and MACs) are
//! taken at create and released at delete exactly as for a placed VM.

use crate::common;

use common::networks::*;
use common::start;
use common::{assert_err, call};
use panal_types::network::NicRequest;
use panal_types::vm::VmCreate;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_lifecycle_defaults_vnis_and_projects() {
    let tp = start().await;
    let c = &tp.client;
    let front = network(&tp, json!({"name": "front", "cidr": "10.1.0.0/24"})).await;
    assert_eq!(front.project.as_str(), "default");
    assert_eq!(front.cidr, "10.1.0.0/24");
    assert_eq!(front.gateway, Some(ip("10.1.0.1")), "the first address");
    assert_eq!(front.mtu, 1450);
    assert!((1..=16_777_215).contains(&front.vni), "{}", front.vni);
    assert!(front.dns.is_empty() && !front.deleting);

    let back = network(
        &tp,
        json!({"name": "back", "cidr": "10.2.0.0/16", "gateway": "10.2.255.254",
               "dns": ["192.0.2.53", "192.0.2.54"], "mtu": 9000}),
    )
    .await;
    assert_eq!(back.gateway, Some(ip("10.2.255.254")));
    assert_eq!(back.dns, vec![ip("192.0.2.53"), ip("192.0.2.54")]);
    assert_eq!(back.mtu, 9000);
    assert_ne!(front.vni, back.vni, "each network has its own VXLAN id");
    let bare = network(
        &tp,
        json!({"name": "bare", "cidr": "10.3.0.0/29", "gateway": "none"}),
    )
    .await;
    assert_eq!(bare.gateway, None);
    assert_eq!(bare.mtu, 1450);

    let listed = c.list_networks(None, None).await.unwrap().items;
    let names: Vec<&str> = listed.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["back", "bare", "front"]);
    assert_eq!(c.network(None, "front").await.unwrap(), front);
    let vnis: BTreeSet<u32> = listed.iter().map(|n| n.vni).collect();
    assert_eq!(vnis.len(), 3);

    // Another project may use the same subnet (and name): its traffic never meets ours.
    project(&tp, "team").await;
    let theirs = network(
        &tp,
        json!({"name": "front", "project": "team", "cidr": "10.1.0.0/24"}),
    )
    .await;
    assert_eq!(theirs.project.as_str(), "team");
    assert_ne!(theirs.id, front.id);
    assert!(
        !vnis.contains(&theirs.vni),
        "VXLAN ids are unique pool-wide"
    );
    assert_eq!(
        c.list_networks(Some("team"), None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(c.list_networks(None, None).await.unwrap().items.len(), 3);

    // A project that still has a network cannot be deleted.
    let got = call(&tp, Method::DELETE, "/api/v1/projects/team", None).await;
    assert_err(&got, 409, "conflict", None);

    // Delete: gone, then not found; the project may go once it is empty.
    let got = call(&tp, Method::DELETE, "/api/v1/networks/front", None).await;
    assert_eq!(got.0, 204, "{got:?}");
    let got = call(&tp, Method::GET, "/api/v1/networks/front", None).await;
    assert_err(&got, 404, "not_found", Some("name"));
    let got = call(&tp, Method::DELETE, "/api/v1/networks/front", None).await;
    assert_err(&got, 404, "not_found", Some("name"));
    assert_eq!(c.network(Some("team"), "front").await.unwrap(), theirs);
    c.delete_network(Some("team"), "front").await.unwrap();
    let got = call(&tp, Method::DELETE, "/api/v1/projects/team", None).await;
    assert_eq!(got.0, 204, "{got:?}");

    // The name and subnet are free again.
    let again = network(&tp, json!({"name": "front", "cidr": "10.1.0.0/24"})).await;
    assert_ne!(again.id, front.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_networks_are_refused_and_change_nothing() {
    let tp = start().await;
    network(
        &tp,
        json!({"name": "big", "cidr": "10.0.0.0/16", "ipv6_cidr": "fd00:aa:bb:1::/64"}),
    )
    .await;
    let net = |cidr: &str| json!({"name": "n", "cidr": cidr});
    let with = |field: &str, v: Value| {
        let mut b = json!({"name": "n", "cidr": "192.168.0.0/24"});
        b[field] = v;
        b
    };
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (net("10.0.0/24"), 400, "invalid_value", Some("cidr")),
        (net("x"), 400, "invalid_value", Some("cidr")),
        (net("fd00::/64"), 400, "invalid_value", Some("cidr")),
        (net("10.9.0.1/24"), 400, "invalid_value", Some("cidr")),
        (net("10.9.0.0/30"), 400, "invalid_value", Some("cidr")),
        (net("10.0.0.0/7"), 400, "invalid_value", Some("cidr")),
        // Inside `big`, and around it.
        (net("10.0.1.0/24"), 409, "conflict", Some("cidr")),
        (net("10.0.0.0/8"), 409, "conflict", Some("cidr")),
        (
            with("gateway", json!("192.168.1.1")),
            400,
            "invalid_value",
            Some("gateway"),
        ),
        (
            with("gateway", json!("192.168.0.0")),
            400,
            "invalid_value",
            Some("gateway"),
        ),
        (
            with("gateway", json!("192.168.0.255")),
            400,
            "invalid_value",
            Some("gateway"),
        ),
        (
            with("gateway", json!("gw")),
            400,
            "invalid_value",
            Some("gateway"),
        ),
        (
            json!({"name": "n", "cidr": "192.168.0.0/24", "gateway": "none", "outbound_nat": true}),
            400,
            "invalid_value",
            Some("outbound_nat"),
        ),
        (
            with("outbound_nat", json!("yes")),
            400,
            "invalid_value",
            Some("outbound_nat"),
        ),
        // IPv6: a /64 of unicast space, written canonically, once per project.
        (
            with("ipv6_cidr", json!("fd00::/48")),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (
            with("ipv6_cidr", json!("fd00::1/64")),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (
            with("ipv6_cidr", json!("fe80::/64")),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (
            with("ipv6_cidr", json!("ff02::/64")),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (
            with("ipv6_cidr", json!("10.0.0.0/24")),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (
            with("ipv6_cidr", json!("fd00:aa:bb:1::/64")),
            409,
            "conflict",
            Some("ipv6_cidr"),
        ),
        (
            json!({"name": "n", "cidr": "192.168.0.0/24", "external": true, "ipv6_cidr": "auto"}),
            400,
            "invalid_value",
            Some("ipv6_cidr"),
        ),
        (with("mtu", json!(100)), 400, "invalid_value", Some("mtu")),
        (with("mtu", json!(10000)), 400, "invalid_value", Some("mtu")),
        (with("mtu", json!(-1)), 400, "invalid_value", Some("mtu")),
        (
            with("dns", json!(["192.0.2.300"])),
            400,
            "invalid_value",
            Some("dns"),
        ),
        (
            with(
                "dns",
                json!([
                    "192.0.2.1",
                    "192.0.2.2",
                    "192.0.2.3",
                    "192.0.2.4",
                    "192.0.2.5"
                ]),
            ),
            400,
            "invalid_value",
            Some("dns"),
        ),
        (
            with("colour", json!("blue")),
            400,
            "unknown_field",
            Some("colour"),
        ),
        (
            with("project", json!("nope")),
            404,
            "not_found",
            Some("project"),
        ),
        (
            json!({"name": "Not A Name", "cidr": "192.168.0.0/24"}),
            400,
            "invalid_name",
            Some("name"),
        ),
        // The name is checked before the subnet: a second `big` is a duplicate, not an overlap.
        (
            json!({"name": "big", "cidr": "10.0.0.0/16"}),
            409,
            "already_exists",
            Some("name"),
        ),
    ];
    for (body, status, code, field) in cases {
        let got = call(&tp, Method::POST, "/api/v1/networks", Some(body.clone())).await;
        assert_err(&got, status, code, field);
    }
    let names: Vec<String> = tp
        .client
        .list_networks(None, None)
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["big"], "no refused network was written");
    // The refused names are free: the first valid request takes one.
    network(&tp, net("192.168.0.0/24")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_get_the_lowest_free_address_and_bad_ones_are_refused() {
    let tp = start().await;
    let lan = network(&tp, json!({"name": "lan", "cidr": "10.5.0.0/24"})).await;
    network(&tp, json!({"name": "lan2", "cidr": "10.6.0.0/24"})).await;
    network(
        &tp,
        json!({"name": "nogw", "cidr": "10.8.0.0/29", "gateway": "none"}),
    )
    .await;
    project(&tp, "other").await;
    network(
        &tp,
        json!({"name": "private", "project": "other", "cidr": "10.5.0.0/24"}),
    )
    .await;

    // Dynamic addresses: lowest first, the gateway (.1) skipped, a static one stepped over.
    let a = vm_with(&tp, fake_vm("a", vec![nic("lan")])).await;
    let n = &a.spec.nics[0];
    assert_eq!(n.ip, ip("10.5.0.2"));
    assert_eq!((n.network.as_str(), n.network_id), ("lan", lan.id));
    assert_eq!((n.vni, n.mtu), (lan.vni, lan.mtu));
    assert!(n.mac.starts_with("52:54:00:"), "{}", n.mac);
    let fixed = NicRequest {
        ip: Some("10.5.0.3".into()),
        mac: Some("52-54-00-AB-cd-01".into()),
        ..nic("lan")
    };
    let b = vm_with(&tp, fake_vm("b", vec![fixed])).await;
    assert_eq!(b.spec.nics[0].ip, ip("10.5.0.3"));
    assert_eq!(b.spec.nics[0].mac, "52:54:00:ab:cd:01", "normalised");
    let c = vm_with(&tp, fake_vm("c", vec![nic("lan"), nic("lan2")])).await;
    assert_eq!(c.spec.nics[0].ip, ip("10.5.0.4"));
    assert_eq!(c.spec.nics[1].ip, ip("10.6.0.2"));
    assert_ne!(c.spec.nics[0].id, c.spec.nics[1].id);
    // Without a gateway the first address is a host's.
    let d = vm_with(&tp, fake_vm("d", vec![nic("nogw")])).await;
    assert_eq!(d.spec.nics[0].ip, ip("10.8.0.1"));
    // A MAC is unique per network: the same one on another network is fine.
    let same_mac = NicRequest {
        mac: Some("52:54:00:ab:cd:01".into()),
        ..nic("lan2")
    };
    vm_with(&tp, fake_vm("e", vec![same_mac])).await;
    let before = addresses(&tp, "lan").await;
    assert_eq!(
        before,
        [ip("10.5.0.2"), ip("10.5.0.3"), ip("10.5.0.4")].into()
    );

    let n_ip = |v: &str| json!([{"network": "lan", "ip": v}]);
    let n_mac = |v: &str| json!([{"network": "lan", "mac": v}]);
    let nine: Vec<Value> = (0..9).map(|_| json!({"network": "lan"})).collect();
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (n_ip("10.5.1.5"), 400, "invalid_value", Some("nics[0].ip")),
        (n_ip("10.5.0.0"), 400, "invalid_value", Some("nics[0].ip")),
        (n_ip("10.5.0.255"), 400, "invalid_value", Some("nics[0].ip")),
        (n_ip("10.5.0.1"), 400, "invalid_value", Some("nics[0].ip")),
        (n_ip("ten"), 400, "invalid_value", Some("nics[0].ip")),
        (n_ip("10.5.0.3"), 409, "already_exists", Some("nics[0].ip")),
        // Two NICs of one request asking for the same address: the second is refused.
        (
            json!([{"network": "lan", "ip": "10.5.0.20"}, {"network": "lan", "ip": "10.5.0.20"}]),
            409,
            "already_exists",
            Some("nics[1].ip"),
        ),
        (
            n_mac("01:00:5e:00:00:01"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("ff:ff:ff:ff:ff:ff"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("00:00:00:00:00:00"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("52:54:00:00:00"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("52:54:00:00:00:0g"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("525400000001"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        // Hex digits only: a sign is not part of an octet.
        (
            n_mac("52:54:00:+1:00:01"),
            400,
            "invalid_value",
            Some("nics[0].mac"),
        ),
        (
            n_mac("52:54:00:AB:CD:01"),
            409,
            "already_exists",
            Some("nics[0].mac"),
        ),
        (
            json!([{"network": "private"}]),
            404,
            "not_found",
            Some("nics[0].network"),
        ),
        (
            json!([{"network": "lan"}, {"network": "nope"}]),
            404,
            "not_found",
            Some("nics[1].network"),
        ),
        (
            json!([{"network": "lan", "security_groups": ["ghost"]}]),
            404,
            "not_found",
            Some("nics[0].security_groups"),
        ),
        (Value::Array(nine), 400, "invalid_value", Some("nics")),
        (
            json!([{"network": "lan", "vlan": 3}]),
            400,
            "unknown_field",
            Some("nics[0].vlan"),
        ),
    ];
    for (nics, status, code, field) in cases {
        let got = post_vm(&tp, "refused", nics.clone()).await;
        assert_err(&got, status, code, field);
    }

    // A batch is refused whole, its item named; two items may not share an address either.
    let body = json!({"vms": [
        {"name": "b1", "hypervisor": "fake", "nics": [{"network": "lan"}]},
        {"name": "b2", "hypervisor": "fake", "nics": [{"network": "lan", "ip": "10.5.0.2"}]},
    ]});
    let got = call(&tp, Method::POST, "/api/v1/vms:batch", Some(body)).await;
    assert_err(&got, 409, "already_exists", Some("vms[1].nics[0].ip"));
    let body = json!({"vms": [
        {"name": "b1", "hypervisor": "fake", "nics": [{"network": "lan", "ip": "10.5.0.30"}]},
        {"name": "b2", "hypervisor": "fake", "nics": [{"network": "lan", "ip": "10.5.0.30"}]},
    ]});
    let got = call(&tp, Method::POST, "/api/v1/vms:batch", Some(body)).await;
    assert_err(&got, 409, "already_exists", Some("vms[1].nics[0].ip"));

    // Nothing refused took an address or a VM name.
    assert_eq!(addresses(&tp, "lan").await, before);
    assert_eq!(tp.client.all_vms(None).await.unwrap().len(), 5);
    let next = vm_with(&tp, fake_vm("f", vec![nic("lan")])).await;
    assert_eq!(next.spec.nics[0].ip, ip("10.5.0.5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_with_nics_cannot_be_deleted_until_its_vms_are() {
    let tp = start().await;
    network(&tp, json!({"name": "db", "cidr": "10.4.0.0/24"})).await;
    vm_with(&tp, fake_vm("x", vec![nic("db")])).await;
    let got = call(&tp, Method::DELETE, "/api/v1/networks/db", None).await;
    assert_err(&got, 409, "conflict", Some("name"));
    // The refused delete left the network usable: NICs may still join.
    let net = tp.client.network(None, "db").await.unwrap();
    assert!(!net.deleting);
    let y = vm_with(&tp, fake_vm("y", vec![nic("db")])).await;
    assert_eq!(y.spec.nics[0].ip, ip("10.4.0.3"));

    delete_vms(&tp, None, &["x".into()]).await;
    let got = call(&tp, Method::DELETE, "/api/v1/networks/db", None).await;
    assert_err(&got, 409, "conflict", Some("name"));
    delete_vms(&tp, None, &["y".into()]).await;
    assert!(ports(&tp, None, "db").await.is_empty());
    let got = call(&tp, Method::DELETE, "/api/v1/networks/db", None).await;
    assert_eq!(got.0, 204, "{got:?}");
    let got = post_vm(&tp, "z", json!([{"network": "db"}])).await;
    assert_err(&got, 404, "not_found", Some("nics[0].network"));
}

/// IPv6: `auto` picks a unique local /64; a NIC's address is its MAC's SLAAC address in the
/// network's prefix (what the guest will configure), computed here independently; an
/// IPv4-only network's NICs have none; security rules take IPv6 CIDRs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_networks_give_nics_their_slaac_address() {
    let tp = start().await;
    let auto = network(
        &tp,
        json!({"name": "auto6", "cidr": "10.61.0.0/24", "ipv6_cidr": "auto"}),
    )
    .await;
    let (addr, len) = auto.ipv6_cidr.as_deref().unwrap().split_once('/').unwrap();
    let addr: std::net::Ipv6Addr = addr.parse().unwrap();
    assert_eq!(len, "64");
    assert_eq!(addr.segments()[0] >> 8, 0xfd, "unique local: {addr}");
    assert_eq!(&addr.segments()[4..], &[0; 4], "a network address: {addr}");
    let again = network(
        &tp,
        json!({"name": "auto6b", "cidr": "10.62.0.0/24", "ipv6_cidr": "auto"}),
    )
    .await;
    assert_ne!(
        again.ipv6_cidr, auto.ipv6_cidr,
        "a random prefix per network"
    );
    network(
        &tp,
        json!({"name": "dual", "cidr": "10.63.0.0/24", "ipv6_cidr": "2001:db8:63:0::/64"}),
    )
    .await;
    network(&tp, json!({"name": "v4", "cidr": "10.64.0.0/24"})).await;

    let fixed = NicRequest {
        mac: Some("52:54:00:12:34:56".into()),
        ..nic("dual")
    };
    let vm = vm_with(&tp, fake_vm("six", vec![fixed, nic("dual"), nic("v4")])).await;
    let nics = &vm.spec.nics;
    assert_eq!(
        nics[0].ipv6,
        Some("2001:db8:63:0:5054:ff:fe12:3456".parse().unwrap()),
        "u/l bit flipped, ff:fe in the middle"
    );
    let second = nics[1].ipv6.expect("every NIC of the network");
    let mac: Vec<u8> = nics[1]
        .mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let mut want = [0u8; 16];
    want[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x63, 0, 0]);
    want[8..].copy_from_slice(&[
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    assert_eq!(second, std::net::Ipv6Addr::from(want));
    assert_eq!(nics[2].ipv6, None, "an IPv4-only network");

    let rule = |cidr: &str| {
        json!({"name": format!("g{}", cidr.len()), "rules": [
            {"direction": "ingress", "protocol": "tcp", "port_min": 22, "remote_cidr": cidr}]})
    };
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/security-groups",
        Some(rule("2001:db8::/32")),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/security-groups",
        Some(rule("2001:db8::1/32")),
    )
    .await;
    assert_err(&got, 400, "invalid_value", Some("rules[0].remote_cidr"));
    delete_vms(&tp, None, &["six".into()]).await;
}

/// 40 VMs on one network, half in one batch and half as concurrent single creates: every NIC
/// has its own address and MAC, the addresses are the 40 lowest, and once the VMs are deleted
/// none is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_distinct_and_none_leaks() {
    const HALF: usize = 20;
    let tp = start().await;
    let c = &tp.client;
    network(&tp, json!({"name": "pool", "cidr": "10.7.0.0/24"})).await;

    let batch: Vec<VmCreate> = (0..HALF)
        .map(|i| fake_vm(&format!("b-{i}"), vec![nic("pool")]))
        .collect();
    let accepted = c.create_vms(&batch).await.unwrap();
    // Concurrent singles race for the same lowest free address; the losers plan again.
    let mut singles = tokio::task::JoinSet::new();
    for i in 0..HALF {
        let client = c.clone();
        singles.spawn(async move {
            client
                .create_vm(&fake_vm(&format!("s-{i}"), vec![nic("pool")]))
                .await
        });
    }
    let mut ops = Vec::new();
    while let Some(r) = singles.join_next().await {
        ops.push(r.unwrap().expect("a concurrent create succeeds").operation);
    }
    for item in &accepted.vms {
        ops.push(c.operation(&item.operation.to_string()).await.unwrap());
    }
    for op in &ops {
        settle(&tp, op).await;
    }

    let vms = c.all_vms(None).await.unwrap();
    assert_eq!(vms.len(), 2 * HALF);
    let held = ports(&tp, None, "pool").await;
    assert_eq!(held.len(), 2 * HALF, "{held:?}");
    let got: BTreeSet<Ipv4Addr> = held.iter().map(|p| p.ip).collect();
    let want: BTreeSet<Ipv4Addr> = (2..2 + 2 * HALF as u8)
        .map(|d| Ipv4Addr::new(10, 7, 0, d))
        .collect();
    assert_eq!(got, want, "distinct, and the lowest ones");
    // Each address is held by the NIC that has it.
    let by_vm: BTreeMap<String, (Ipv4Addr, String)> = vms
        .iter()
        .map(|v| {
            let n = &v.spec.nics[0];
            (v.name.to_string(), (n.ip, n.id.clone()))
        })
        .collect();
    for p in &held {
        assert_eq!(by_vm[p.vm.as_str()], (p.ip, p.nic.clone()), "{p:?}");
    }
    let macs: BTreeSet<&str> = vms.iter().map(|v| v.spec.nics[0].mac.as_str()).collect();
    assert_eq!(macs.len(), 2 * HALF);

    let names: Vec<String> = vms.iter().map(|v| v.name.to_string()).collect();
    delete_vms(&tp, None, &names).await;
    assert!(
        ports(&tp, None, "pool").await.is_empty(),
        "no address leaked"
    );
    let fresh = vm_with(&tp, fake_vm("fresh", vec![nic("pool")])).await;
    assert_eq!(fresh.spec.nics[0].ip, ip("10.7.0.2"));
}
