//! Security groups and host network plans through the REST API on the fake driver: rules and
//! every refusal of one (status, code, field), what a group in use protects, and the plan a host
//! is given: its ports with their groups' rules, remote groups expanded to members' addresses.
//! The plan test registers a simulated host that reports a tunnel address, so that VMs with
//! NICs are placed somewhere (the fake platform's own host carries no networks).

use crate::common;

use common::networks::*;
use common::{assert_err, call};
use common::{eventually, start};
use panal_types::Name;
use panal_types::agent::HostRegistration;
use panal_types::network::{NicRequest, RulePlan};
use panal_types::vm::Vm;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

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
