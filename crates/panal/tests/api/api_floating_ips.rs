//! Floating addresses through the REST API on the fake driver: external networks, allocation
//! (lowest free, a given address, never twice), association with a NIC of a network with
//! outbound NAT, every refusal with its status, code and field, and the host plans: only the
//! host running the VM carries the address, and it follows the VM to another host.
//!
//! As in `api_networks.rs`, a simulated host that reports a tunnel address takes the VMs.

use crate::common;

use common::{TestPlatform, assert_err, call, eventually, start};
use panal_types::Name;
use panal_types::agent::HostRegistration;
use panal_types::network::{FloatingIp, NicRequest};
use panal_types::vm::{HypervisorKind, VmCreate};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::time::Duration;

#[track_caller]
fn ok(got: &(u16, Value), status: u16) -> FloatingIp {
    assert_eq!(got.0, status, "{got:?}");
    serde_json::from_value(got.1.clone()).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Registers a simulated host with a tunnel address, kept alive.
async fn sim_host(tp: &TestPlatform, name: &str, tunnel: &str) -> tokio::task::JoinHandle<()> {
    let app = tp.platform.app.clone();
    let local = tp.client.list_hosts(None).await.unwrap().items.remove(0);
    let mut inventory = local.inventory.clone();
    inventory.tunnel_address = Some(ip(tunnel));
    app.register_host(HostRegistration {
        name: Name::parse(name).unwrap(),
        inventory,
        labels: Default::default(),
        zone: None,
    })
    .await
    .unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let _ = app.heartbeat(&name).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floating_addresses_are_allocated_associated_and_follow_the_vm() {
    let tp = start().await;
    let c = &tp.client;
    let app = tp.platform.app.clone();
    let beat = sim_host(&tp, "sim-a", "192.0.2.7").await;

    // An external network: no VXLAN; no NIC may join it.
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/networks",
        Some(json!({"name": "ext", "cidr": "198.51.100.0/29", "external": true})),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
    assert_eq!(
        (got.1["external"].as_bool(), got.1["vni"].as_u64()),
        (Some(true), Some(0))
    );
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/networks",
        Some(json!({"name": "bad", "cidr": "198.51.101.0/29", "external": true, "outbound_nat": true})),
    )
    .await;
    assert_err(&got, 400, "invalid_value", Some("outbound_nat"));
    for (name, cidr, nat) in [("lan", "10.8.0.0/24", true), ("iso", "10.7.0.0/24", false)] {
        let got = call(
            &tp,
            Method::POST,
            "/api/v1/networks",
            Some(json!({"name": name, "cidr": cidr, "outbound_nat": nat})),
        )
        .await;
        assert_eq!(got.0, 201, "{got:?}");
    }
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/vms",
        Some(json!({"name": "x", "hypervisor": "fake", "nics": [{"network": "ext"}]})),
    )
    .await;
    assert_err(&got, 400, "invalid_value", Some("nics[0].network"));

    // Allocation: lowest free (the gateway .1 is not given), a given one, never twice.
    let fip = |body: Value| {
        let tp = &tp;
        async move { call(tp, Method::POST, "/api/v1/floating-ips", Some(body)).await }
    };
    let a = ok(&fip(json!({"network": "ext"})).await, 201);
    assert_eq!(a.address, ip("198.51.100.2"));
    assert!(a.vm.is_none());
    let b = ok(
        &fip(json!({"network": "ext", "address": "198.51.100.5"})).await,
        201,
    );
    assert_eq!(b.address, ip("198.51.100.5"));
    assert_err(
        &fip(json!({"network": "ext", "address": "198.51.100.5"})).await,
        409,
        "conflict",
        Some("address"),
    );
    for bad in [
        "198.51.100.1",
        "198.51.100.7",
        "198.51.100.0",
        "10.0.0.9",
        "x",
    ] {
        assert_err(
            &fip(json!({"network": "ext", "address": bad})).await,
            400,
            "invalid_value",
            Some("address"),
        );
    }
    assert_err(
        &fip(json!({"network": "lan"})).await,
        400,
        "invalid_value",
        Some("network"),
    );
    assert_err(
        &fip(json!({"network": "nope"})).await,
        404,
        "not_found",
        Some("network"),
    );
    assert_err(
        &fip(json!({"network": "ext", "project": "nope"})).await,
        404,
        "not_found",
        Some("project"),
    );
    let got = fip(json!({"network": "ext", "extra": 1})).await;
    assert_eq!(got.0, 400, "{got:?}");
    // The pool runs dry: .3, .4, .6 left.
    for _ in 0..3 {
        ok(&fip(json!({"network": "ext"})).await, 201);
    }
    assert_err(
        &fip(json!({"network": "ext"})).await,
        409,
        "conflict",
        Some("network"),
    );
    let list = c.list_floating_ips(None, None).await.unwrap();
    assert_eq!(list.items.len(), 5);
    // An external network holding floating addresses cannot be deleted.
    let got = call(&tp, Method::DELETE, "/api/v1/networks/ext", None).await;
    assert_eq!(got.0, 409, "{got:?}");

    // A VM with a NIC on the routed network and one on the isolated one.
    let nic = |n: &str| NicRequest {
        network: n.into(),
        ..NicRequest::default()
    };
    c.create_vm(&VmCreate {
        name: "web".into(),
        hypervisor: Some(HypervisorKind::Fake),
        nics: vec![nic("iso"), nic("lan")],
        ..VmCreate::default()
    })
    .await
    .unwrap();
    let sim_a = Name::parse("sim-a").unwrap();
    let placed = eventually(20, || async {
        let v = c.vm(None, "web").await.unwrap();
        v.status.host.as_ref() == Some(&sim_a)
    })
    .await;
    assert!(placed);
    let vm = c.vm(None, "web").await.unwrap();
    let (iso_nic, lan_nic) = (vm.spec.nics[0].id.clone(), vm.spec.nics[1].id.clone());

    let assoc = |addr: &str, body: Value| {
        let tp = &tp;
        let path = format!("/api/v1/floating-ips/{addr}/associate");
        async move { call(tp, Method::POST, &path, Some(body)).await }
    };
    assert_err(
        &assoc("198.51.100.2", json!({"vm": "nope"})).await,
        404,
        "not_found",
        Some("vm"),
    );
    assert_err(
        &assoc("198.51.100.2", json!({"vm": "web", "nic": iso_nic})).await,
        400,
        "invalid_value",
        Some("nic"),
    );
    assert_err(
        &assoc("198.51.100.2", json!({"vm": "web", "nic": "nic9"})).await,
        400,
        "invalid_value",
        Some("nic"),
    );
    assert_err(
        &assoc("198.51.100.9", json!({"vm": "web"})).await,
        404,
        "not_found",
        Some("address"),
    );
    assert_err(
        &assoc("nope", json!({"vm": "web"})).await,
        400,
        "invalid_value",
        Some("address"),
    );
    // Without a NIC named: the first on a network with a router.
    let got = ok(&assoc("198.51.100.2", json!({"vm": "web"})).await, 200);
    assert_eq!(
        (got.vm.as_ref().map(|v| v.as_str()), got.nic.as_deref()),
        (Some("web"), Some(lan_nic.as_str()))
    );
    // Again: nothing changes. The NIC already has one: another address is refused.
    ok(&assoc("198.51.100.2", json!({"vm": "web"})).await, 200);
    assert_err(
        &assoc("198.51.100.5", json!({"vm": "web"})).await,
        409,
        "conflict",
        Some("nic"),
    );

    // The plan of the VM's host carries it on the routed NIC's port, nobody else's does.
    let plan = app.host_network_plan("sim-a").await.unwrap();
    let floating: Vec<_> = plan
        .networks
        .iter()
        .flat_map(|n| {
            n.ports
                .iter()
                .filter_map(|p| p.floating.map(|f| (p.nic.clone(), f)))
        })
        .collect();
    assert_eq!(floating, vec![(lan_nic.clone(), ip("198.51.100.2"))]);

    // The VM moves (as a live migration's switch-over does): the address goes with it.
    let _beat_b = sim_host(&tp, "sim-b", "192.0.2.8").await;
    let sim_b = Name::parse("sim-b").unwrap();
    tp.platform
        .app
        .repo()
        .update::<panal_types::vm::Vm, _>("/panal/vms/default/web", |v| {
            v.status.host = Some(sim_b.clone());
            Ok(true)
        })
        .await
        .unwrap();
    let on = |host: &'static str| {
        let app = app.clone();
        async move {
            app.host_network_plan(host)
                .await
                .unwrap()
                .networks
                .iter()
                .flat_map(|n| n.ports.iter().filter_map(|p| p.floating))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(on("sim-b").await, vec![ip("198.51.100.2")]);
    assert!(on("sim-a").await.is_empty());

    // Disassociate: gone from the plan; the NIC may take another.
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/floating-ips/198.51.100.2/disassociate",
        None,
    )
    .await;
    let got = ok(&got, 200);
    assert!(got.vm.is_none() && got.nic.is_none());
    assert!(on("sim-b").await.is_empty());
    ok(&assoc("198.51.100.5", json!({"vm": "web"})).await, 200);
    assert_eq!(on("sim-b").await, vec![ip("198.51.100.5")]);

    // Delete releases the address (an associated one too): it can be allocated again.
    let got = call(
        &tp,
        Method::DELETE,
        "/api/v1/floating-ips/198.51.100.5",
        None,
    )
    .await;
    assert_eq!(got.0, 204, "{got:?}");
    assert!(on("sim-b").await.is_empty());
    let again = ok(
        &fip(json!({"network": "ext", "address": "198.51.100.5"})).await,
        201,
    );
    assert_eq!(again.address, ip("198.51.100.5"));
    let got = call(&tp, Method::GET, "/api/v1/floating-ips/198.51.100.5", None).await;
    assert!(ok(&got, 200).vm.is_none());
    beat.abort();
}
