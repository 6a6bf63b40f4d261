//! Virtual networks through the REST API on the fake driver: the network lifecycle (defaults,
//! VXLAN ids, the same subnet in two projects), every refusal of a network, a NIC or a security
//! rule with its status, error code and field, address management (lowest free address, static
//! addresses and MACs, nothing leaked after VMs are deleted, one address per NIC across a batch
//! and concurrent creates), what a network or a group in use protects, and the network plan a
//! host is given.
//!
//! The fake platform's host carries no virtual networks, so VMs with NICs are never placed on
//! it: their create operation fails for want of a host, but their NICs (addresses and MACs) are
//! taken at create and released at delete exactly as for a placed VM. The plan test registers a
//! second, simulated host that reports a tunnel address, so that VMs are placed somewhere.

mod common;

use common::{TestPlatform, eventually, raw, start, wait_op};
use panal_types::agent::HostRegistration;
use panal_types::network::{Network, NetworkPort, NicRequest, RulePlan};
use panal_types::operation::{Operation, OperationState};
use panal_types::vm::{HypervisorKind, Vm, VmCreate};
use panal_types::{ErrorCode, Name};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// A request with the admin token: (status, JSON body).
async fn call(tp: &TestPlatform, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    raw(tp, method, path, Some(&tp.platform.token), body.as_deref()).await
}

/// A refusal: its HTTP status, stable code, field, and a message.
#[track_caller]
fn assert_err(got: &(u16, Value), status: u16, code: &str, field: Option<&str>) {
    assert_eq!(got.0, status, "status for {got:?}");
    assert_eq!(got.1["code"], code, "code for {got:?}");
    assert_eq!(got.1["field"].as_str(), field, "field for {got:?}");
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message for {got:?}"
    );
}

/// Creates a network from a JSON body that must be accepted.
async fn network(tp: &TestPlatform, body: Value) -> Network {
    let (status, body) = call(tp, Method::POST, "/api/v1/networks", Some(body)).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Creates a project through the API.
async fn project(tp: &TestPlatform, name: &str) {
    let got = call(
        tp,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nic(network: &str) -> NicRequest {
    NicRequest {
        network: network.into(),
        ..NicRequest::default()
    }
}

fn fake_vm(name: &str, nics: Vec<NicRequest>) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        nics,
        ..VmCreate::default()
    }
}

/// A raw VM create in the default project (for refusals the typed client would not build).
async fn post_vm(tp: &TestPlatform, name: &str, nics: Value) -> (u16, Value) {
    let body = json!({"name": name, "hypervisor": "fake", "nics": nics});
    call(tp, Method::POST, "/api/v1/vms", Some(body)).await
}

/// Creates a VM with NICs and waits for its create operation to end, so that it may be
/// deleted at once (a delete is refused while the create holds the VM).
async fn vm_with(tp: &TestPlatform, req: VmCreate) -> Vm {
    let a = tp.client.create_vm(&req).await.unwrap();
    settle(tp, &a.operation).await;
    a.vm
}

/// Waits for a create to end. Here it fails for want of a host carrying networks: the NICs
/// are still the VM's until it is deleted.
async fn settle(tp: &TestPlatform, op: &Operation) {
    let done = wait_op(&tp.client, op).await;
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let e = done.error.expect("a failed operation says why");
    assert_eq!(e.code, ErrorCode::InsufficientCapacity, "{e:?}");
    assert!(e.message.contains("without virtual networks"), "{e:?}");
}

/// Deletes VMs and waits until they are gone (with them, their addresses).
async fn delete_vms(tp: &TestPlatform, project: Option<&str>, names: &[String]) {
    for n in names {
        tp.client.delete_vm(project, n).await.unwrap();
    }
    let gone = eventually(20, || async {
        tp.client
            .all_vms(project)
            .await
            .unwrap()
            .iter()
            .all(|v| !names.contains(&v.name.to_string()))
    })
    .await;
    assert!(gone, "VMs still listed after their delete");
}

async fn ports(tp: &TestPlatform, project: Option<&str>, net: &str) -> Vec<NetworkPort> {
    tp.client.network_ports(project, net).await.unwrap()
}

/// The addresses a network hands out.
async fn addresses(tp: &TestPlatform, net: &str) -> BTreeSet<Ipv4Addr> {
    ports(tp, None, net).await.iter().map(|p| p.ip).collect()
}

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

/// 40 VMs on one network, half in one batch and half as concurrent single creates: every NIC
/// has its own address and MAC, the addresses are the 40 lowest, and once the VMs are deleted
/// none is left behind.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_rules_and_what_protects_them() {
    let tp = start().await;
    let c = &tp.client;
    let sg = |body: Value| call(&tp, Method::POST, "/api/v1/security-groups", Some(body));

    // No rules given: one allowing all outbound traffic. An empty list: none at all.
    let got = sg(json!({"name": "out"})).await;
    assert_eq!(got.0, 201, "{got:?}");
    let out = c.security_group(None, "out").await.unwrap();
    assert_eq!(out.rules.len(), 1);
    let r = &out.rules[0];
    assert_eq!(r.direction, panal_types::network::Direction::Egress);
    assert_eq!(r.protocol, "any");
    assert_eq!(r.remote_cidr, None, "anywhere, IPv4 and IPv6");
    assert_eq!(
        (r.port_min, r.port_max, &r.remote_group),
        (None, None, &None)
    );
    let got = sg(json!({"name": "closed", "rules": []})).await;
    assert_eq!(got.0, 201, "{got:?}");
    assert!(
        c.security_group(None, "closed")
            .await
            .unwrap()
            .rules
            .is_empty()
    );

    let got = sg(json!({"name": "web", "rules": [
        {"direction": "ingress", "protocol": "tcp", "port_min": 80},
        {"direction": "ingress", "protocol": "TCP", "port_min": 8000, "port_max": 8080,
         "remote_cidr": "192.0.2.0/24"},
        {"direction": "ingress", "protocol": "icmp", "remote_group": "web"},
    ]}))
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let web = c.security_group(None, "web").await.unwrap();
    let r = &web.rules;
    assert_eq!(r.len(), 3);
    assert_eq!((r[0].port_min, r[0].port_max), (Some(80), Some(80)));
    assert_eq!(r[0].remote_cidr, None);
    assert_eq!(r[1].protocol, "tcp", "protocols are lower-cased");
    assert_eq!((r[1].port_min, r[1].port_max), (Some(8000), Some(8080)));
    assert_eq!(r[2].remote_group.as_ref().map(|g| g.as_str()), Some("web"));
    assert_eq!(r[2].remote_cidr, None);

    // Group refusals.
    let got = sg(json!({"name": "web"})).await;
    assert_err(&got, 409, "already_exists", Some("name"));
    let got = sg(json!({"name": "Web Servers"})).await;
    assert_err(&got, 400, "invalid_name", Some("name"));
    let got = sg(json!({"name": "x", "policy": "drop"})).await;
    assert_err(&got, 400, "unknown_field", Some("policy"));
    let got = sg(json!({"name": "x", "project": "nope"})).await;
    assert_err(&got, 404, "not_found", Some("project"));
    // A bad rule in a create names its index.
    let got = sg(json!({"name": "x", "rules": [
        {"direction": "egress"}, {"direction": "ingress", "protocol": "tcpx"},
    ]}))
    .await;
    assert_err(&got, 400, "invalid_value", Some("rules[1].protocol"));
    let e = c.security_group(None, "x").await.unwrap_err();
    assert_eq!(
        e.code(),
        Some("not_found"),
        "the refused group was not written"
    );

    // Rule refusals, one at a time.
    let rule = |extra: Value| {
        let mut b = json!({"direction": "ingress"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"direction": "sideways"}),
            400,
            "invalid_value",
            Some("direction"),
        ),
        (
            rule(json!({"protocol": "300"})),
            400,
            "invalid_value",
            Some("protocol"),
        ),
        (
            rule(json!({"protocol": "tcpx"})),
            400,
            "invalid_value",
            Some("protocol"),
        ),
        (
            rule(json!({"protocol": "tcp", "port_min": 90, "port_max": 80})),
            400,
            "invalid_value",
            Some("port_max"),
        ),
        (
            rule(json!({"protocol": "tcp", "port_min": 70000})),
            400,
            "invalid_value",
            Some("port_min"),
        ),
        (
            rule(json!({"protocol": "udp", "port_min": 53, "port_max": 70000})),
            400,
            "invalid_value",
            Some("port_max"),
        ),
        (
            rule(json!({"protocol": "tcp", "port_min": 0})),
            400,
            "invalid_value",
            Some("port_min"),
        ),
        (
            rule(json!({"protocol": "tcp", "port_max": 80})),
            400,
            "invalid_value",
            Some("port_min"),
        ),
        (
            rule(json!({"protocol": "icmp", "port_min": 8})),
            400,
            "invalid_value",
            Some("port_min"),
        ),
        (
            rule(json!({"port_min": 22})),
            400,
            "invalid_value",
            Some("port_min"),
        ),
        (
            rule(json!({"remote_cidr": "10.0.0/8"})),
            400,
            "invalid_value",
            Some("remote_cidr"),
        ),
        (
            rule(json!({"remote_cidr": "10.0.0.1/8"})),
            400,
            "invalid_value",
            Some("remote_cidr"),
        ),
        (
            rule(json!({"remote_cidr": "10.0.0.0/8", "remote_group": "out"})),
            400,
            "invalid_value",
            Some("remote_cidr"),
        ),
        (
            rule(json!({"remote_group": "ghost"})),
            404,
            "not_found",
            Some("remote_group"),
        ),
        (
            rule(json!({"action": "drop"})),
            400,
            "unknown_field",
            Some("action"),
        ),
        // The same flows as an existing rule.
        (
            rule(json!({"protocol": "tcp", "port_min": 80, "port_max": 80})),
            409,
            "already_exists",
            None,
        ),
    ];
    let rules_of_web = "/api/v1/security-groups/web/rules";
    for (body, status, code, field) in cases {
        let got = call(&tp, Method::POST, rules_of_web, Some(body.clone())).await;
        assert_err(&got, status, code, field);
    }
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/security-groups/ghost/rules",
        Some(json!({"direction": "ingress"})),
    )
    .await;
    assert_err(&got, 404, "not_found", Some("name"));
    assert_eq!(
        c.security_group(None, "web").await.unwrap(),
        web,
        "unchanged"
    );

    // Add a rule, then delete it by its id.
    let got = call(
        &tp,
        Method::POST,
        rules_of_web,
        Some(
            json!({"direction": "egress", "protocol": "UDP", "port_min": 53,
                    "remote_cidr": "192.0.2.53/32"}),
        ),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let added: panal_types::network::SecurityRule = serde_json::from_value(got.1).unwrap();
    assert_eq!(
        (added.protocol.as_str(), added.port_min, added.port_max),
        ("udp", Some(53), Some(53))
    );
    let now = c.security_group(None, "web").await.unwrap().rules;
    assert_eq!(now.len(), 4);
    assert_eq!(now[3], added);
    let path = format!("{rules_of_web}/{}", added.id);
    let got = call(&tp, Method::DELETE, &path, None).await;
    assert_eq!(got.0, 204, "{got:?}");
    assert_eq!(c.security_group(None, "web").await.unwrap(), web);
    let got = call(&tp, Method::DELETE, &path, None).await;
    assert_err(&got, 404, "not_found", Some("rule"));

    // A group another group's rule names cannot go.
    let got = sg(json!({"name": "app", "rules": [
        {"direction": "ingress", "protocol": "tcp", "port_min": 5432, "remote_group": "web"},
    ]}))
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let got = call(&tp, Method::DELETE, "/api/v1/security-groups/web", None).await;
    assert_err(&got, 409, "conflict", Some("name"));
    c.delete_security_group(None, "app").await.unwrap();

    // Nor one a NIC uses, until its VM is gone.
    network(&tp, json!({"name": "sgnet", "cidr": "10.10.0.0/24"})).await;
    let guarded = NicRequest {
        security_groups: vec!["web".into(), "out".into(), "web".into()],
        ..nic("sgnet")
    };
    let v = vm_with(&tp, fake_vm("guarded", vec![guarded])).await;
    let groups: Vec<&str> = v.spec.nics[0]
        .security_groups
        .iter()
        .map(|g| g.as_str())
        .collect();
    assert_eq!(groups, ["web", "out"], "each group once, in order");
    let got = call(&tp, Method::DELETE, "/api/v1/security-groups/web", None).await;
    assert_err(&got, 409, "conflict", Some("name"));
    // Groups are per project: another project's `web` is not ours to use.
    project(&tp, "other").await;
    network(
        &tp,
        json!({"name": "sgnet", "project": "other", "cidr": "10.10.0.0/24"}),
    )
    .await;
    let body = json!({"name": "intruder", "project": "other", "hypervisor": "fake",
                      "nics": [{"network": "sgnet", "security_groups": ["web"]}]});
    let got = call(&tp, Method::POST, "/api/v1/vms", Some(body)).await;
    assert_err(&got, 404, "not_found", Some("nics[0].security_groups"));
    // A project with a group (or a network) cannot be deleted.
    c.delete_network(Some("other"), "sgnet").await.unwrap();
    let got = sg(json!({"name": "lonely", "project": "other"})).await;
    assert_eq!(got.0, 201, "{got:?}");
    let got = call(&tp, Method::DELETE, "/api/v1/projects/other", None).await;
    assert_err(&got, 409, "conflict", None);
    c.delete_security_group(Some("other"), "lonely")
        .await
        .unwrap();
    let got = call(&tp, Method::DELETE, "/api/v1/projects/other", None).await;
    assert_eq!(got.0, 204, "{got:?}");

    delete_vms(&tp, None, &["guarded".into()]).await;
    let got = call(&tp, Method::DELETE, "/api/v1/security-groups/web", None).await;
    assert_eq!(got.0, 204, "{got:?}");
    let got = call(&tp, Method::GET, "/api/v1/security-groups/web", None).await;
    assert_err(&got, 404, "not_found", Some("name"));
}

/// The plan a host is given for its NICs: a simulated host that reports a tunnel address (and
/// runs no agent) gets the VMs; their ports appear in its plan with their groups' rules, a
/// remote group expanded to its members' addresses, and a rule added later shows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_network_plan_has_its_ports_and_their_rules() {
    let tp = start().await;
    let c = &tp.client;
    let app = tp.platform.app.clone();
    let local = c.list_hosts(None).await.unwrap().items.remove(0);
    let mut inventory = local.inventory.clone();
    inventory.tunnel_address = Some(ip("192.0.2.7"));
    let sim = Name::parse("sim-net").unwrap();
    app.register_host(HostRegistration {
        name: sim.clone(),
        inventory,
        labels: Default::default(),
        zone: None,
    })
    .await
    .unwrap();
    // Keep its lease alive, as its agent would.
    let beat = {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                let _ = app.heartbeat("sim-net").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let net = network(
        &tp,
        json!({"name": "plan", "cidr": "10.9.0.0/24", "dns": ["192.0.2.53"]}),
    )
    .await;
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/security-groups",
        Some(json!({"name": "web", "rules": [
            {"direction": "ingress", "protocol": "tcp", "port_min": 22,
             "remote_cidr": "192.0.2.0/24"},
            {"direction": "ingress", "protocol": "icmp", "remote_group": "web"},
            {"direction": "egress", "protocol": "udp", "port_min": 53},
        ]})),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let in_web = NicRequest {
        security_groups: vec!["web".into()],
        ..nic("plan")
    };
    for (name, n) in [("a", in_web.clone()), ("b", in_web), ("c", nic("plan"))] {
        c.create_vm(&fake_vm(name, vec![n])).await.unwrap();
    }
    // No agent runs there, so the VMs stay scheduled: about to start, they need their ports.
    let placed = eventually(20, || async {
        let vms = c.all_vms(None).await.unwrap();
        vms.len() == 3 && vms.iter().all(|v| v.status.host.as_ref() == Some(&sim))
    })
    .await;
    assert!(placed, "{:?}", c.all_vms(None).await.unwrap());
    let vms: BTreeMap<String, Vm> = c
        .all_vms(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.name.to_string(), v))
        .collect();
    let addr = |n: &str| vms[n].spec.nics[0].ip;
    assert_eq!(
        [addr("a"), addr("b"), addr("c")],
        [ip("10.9.0.2"), ip("10.9.0.3"), ip("10.9.0.4")]
    );

    let plan = app.host_network_plan("sim-net").await.unwrap();
    assert_eq!(plan.networks.len(), 1, "{plan:?}");
    let p = &plan.networks[0];
    assert_eq!((p.vni, p.mtu), (net.vni, net.mtu));
    assert!(
        p.peers.is_empty() && p.remote_macs.is_empty(),
        "no other host"
    );
    assert_eq!(p.ports.len(), 3);
    let port = |n: &str| {
        let id = &vms[n].spec.nics[0].id;
        p.ports.iter().find(|x| &x.nic == id).expect("its port")
    };
    let a = port("a");
    assert_eq!((a.vm.as_str(), a.hostname.as_str()), ("default/a", "a"));
    assert_eq!(
        (a.ip, a.mac.as_str()),
        (addr("a"), vms["a"].spec.nics[0].mac.as_str())
    );
    assert_eq!((a.prefix_len, a.gateway), (24, Some(ip("10.9.0.1"))));
    assert_eq!(a.dns, [ip("192.0.2.53")]);
    let rule = |protocol: u8, ports: Option<(u16, u16)>, remote: &str| RulePlan {
        protocol: Some(protocol),
        ports,
        remote: remote.into(),
    };
    let mut ingress = vec![
        rule(6, Some((22, 22)), "192.0.2.0/24"),
        // The group's members: a and b, not c.
        rule(1, None, "10.9.0.2/32"),
        rule(1, None, "10.9.0.3/32"),
    ];
    ingress.sort();
    assert_eq!(a.ingress, ingress);
    // No remote: anywhere, of both families.
    assert_eq!(
        a.egress,
        [
            rule(17, Some((53, 53)), "0.0.0.0/0"),
            rule(17, Some((53, 53)), "::/0")
        ]
    );
    assert_eq!(port("b").ingress, ingress);
    // No group: nothing in, everything out.
    let none = port("c");
    assert!(none.ingress.is_empty());
    let any_out = |remote: &str| RulePlan {
        protocol: None,
        ports: None,
        remote: remote.into(),
    };
    assert_eq!(none.egress, [any_out("0.0.0.0/0"), any_out("::/0")]);
    // The local host runs none of them.
    let here = app.host_network_plan(local.name.as_str()).await.unwrap();
    assert!(here.networks.is_empty(), "{here:?}");

    // A rule added to the group reaches every member's port.
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/security-groups/web/rules",
        Some(json!({"direction": "ingress", "protocol": "tcp", "port_min": 443})),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    let plan = app.host_network_plan("sim-net").await.unwrap();
    let https = rule(6, Some((443, 443)), "0.0.0.0/0");
    for p in &plan.networks[0].ports {
        assert_eq!(p.ingress.contains(&https), p.ip != addr("c"), "{p:?}");
    }
    beat.abort();
}
