//! Virtual networks across two namespace hosts with real QEMU guests: a `panal server` in the
//! lab's gateway namespace, two `panal agent`s each in its own namespace, VMs on a VXLAN
//! overlay between them.
//!
//! Shows: guests get their planned addresses by DHCP and ping each other across hosts, and
//! over IPv6 with the SLAAC addresses the platform recorded (a forged IPv6 source unheard); a
//! project using the same CIDR cannot reach them; a security-group rule opens a TCP port of a
//! running guest and its removal closes it again; a guest forging its source address is not
//! heard; after a VM moves host (a drain live-migrates it) its peer reaches it again;
//! deleting everything leaves no bridge, VXLAN device, tap or nftables table on either host.

use crate::common_e2e;
use crate::common_netns;
use crate::common_pool;

use common_e2e::console::Console;
use common_e2e::{Scratch, tiny, wait_vm};
use common_netns::NetLab;
use common_pool::NsPool;
use panal_client::Client;
use panal_types::network::{NetworkCreate, NicRequest, SecurityGroupCreate, SecurityRuleCreate};
use panal_types::project::ProjectCreate;
use panal_types::vm::{Vm, VmCreate, VmPhase};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNNING: Duration = Duration::from_secs(120);
const GUEST: Duration = Duration::from_secs(60);

/// A tiny guest with one NIC (the server spreads them over the two hosts).
fn guest(name: &str, project: Option<&str>, nic: NicRequest) -> VmCreate {
    let mut req = tiny(name, 128);
    req.project = project.map(str::to_owned);
    req.nics = vec![nic];
    req
}

fn nic(network: &str, groups: &[&str]) -> NicRequest {
    NicRequest {
        network: network.into(),
        security_groups: groups.iter().map(|g| g.to_string()).collect(),
        ..NicRequest::default()
    }
}

/// Creates a VM and waits until it runs and its guest has applied the planned address.
async fn running_with_address(lab: &NsPool<'_>, client: &Client, req: VmCreate) -> (Vm, Console) {
    let name = req.name.clone();
    let project = req.project.clone();
    client.create_vm(&req).await.expect("create accepted");
    let deadline = Instant::now() + RUNNING;
    let vm = loop {
        let v = client.vm(project.as_deref(), &name).await.ok();
        if let Some(v) = v.filter(|v| v.status.phase == VmPhase::Running) {
            break v;
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ip = vm.spec.nics[0].ip;
    wait_lease(lab, &vm, &ip.to_string()).await;
    let console = lab.console(&vm).await;
    (vm, console)
}

/// Waits for the guest's DHCP line in its console history on its host (a live console opened
/// later would miss a line printed before it connected).
async fn wait_lease(lab: &NsPool<'_>, vm: &Vm, ip: &str) {
    let log = lab
        .host_dir(NsPool::host_of(vm))
        .join("qemu/vms")
        .join(vm.id.to_string())
        .join("console.log");
    let line = format!("PANAL-GUEST-DHCP eth0 {ip}/");
    let deadline = Instant::now() + GUEST;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&line)
    {
        assert!(
            Instant::now() < deadline,
            "{}: no {line:?} in {}",
            vm.name,
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the guest has `addr` on eth0, past duplicate-address detection.
async fn wait_ipv6(console: &mut Console, addr: &str) {
    let deadline = Instant::now() + GUEST;
    loop {
        let out = console
            .run("ip -6 addr show dev eth0 scope global 2>&1", GUEST)
            .await;
        if out.contains(&format!("{addr}/64")) && !out.contains("tentative") {
            return;
        }
        assert!(Instant::now() < deadline, "no {addr} on the guest: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether `ping` from the console's guest gets an answer from `to` (optionally from `from`).
async fn pings(console: &mut Console, to: &str, from: Option<&str>) -> bool {
    let src = from.map(|f| format!("-I {f} ")).unwrap_or_default();
    let out = console
        .run(&format!("ping -c 2 -W 2 {src}{to} 2>&1 | tail -2"), GUEST)
        .await;
    out.contains(" 0% packet loss") || out.contains("2 packets received")
}

/// Whether the guest's HTTP GET of `url` (`ADDR PORT`) answers `hello` (busybox `nc`: its
/// `wget` crashes in a static build).
async fn http_ok(console: &mut Console, url: &str) -> bool {
    let out = console
        .run(
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {url} 2>&1"),
            GUEST,
        )
        .await;
    out.contains("hello")
}

#[test]
fn two_hosts_one_overlay() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut l = NsPool::new(&lab, scratch.data.clone());
    l.start_server();
    lab.block_on_in_gateway(async {
        let client = l.client().await;
        l.join_all(&client).await;

        // One network in the default project, the same CIDR in another project.
        let lan = |project: Option<&str>| NetworkCreate {
            name: "lan".into(),
            project: project.map(str::to_owned),
            cidr: "10.77.0.0/24".into(),
            ..NetworkCreate::default()
        };
        // The default project's network lets guests out (NAT) and has IPv6 too; the other
        // project's is isolated.
        client
            .create_network(&NetworkCreate {
                outbound_nat: Some(true),
                ipv6_cidr: Some("fd00:77:0:1::/64".into()),
                ..lan(None)
            })
            .await
            .expect("network");
        client
            .create_project(&ProjectCreate {
                name: "other".into(),
                description: None,
            })
            .await
            .expect("project");
        client
            .create_network(&lan(Some("other")))
            .await
            .expect("network");
        // Pings in, everything out; TCP 8080 comes later.
        let icmp_in = SecurityRuleCreate {
            direction: "ingress".into(),
            protocol: Some("icmp".into()),
            ..SecurityRuleCreate::default()
        };
        let group = |project: Option<&str>| SecurityGroupCreate {
            name: "base".into(),
            project: project.map(str::to_owned),
            rules: None,
        };
        client
            .create_security_group(&group(None))
            .await
            .expect("group");
        client
            .add_security_rule(None, "base", &icmp_in)
            .await
            .expect("rule");
        client
            .create_security_group(&group(Some("other")))
            .await
            .expect("group");
        client
            .add_security_rule(Some("other"), "base", &icmp_in)
            .await
            .expect("rule");

        // Two guests on two hosts: DHCP gives each its planned address; they ping each other.
        let (a, mut ca) =
            running_with_address(&l, &client, guest("a", None, nic("lan", &["base"]))).await;
        let (b, mut cb) =
            running_with_address(&l, &client, guest("b", None, nic("lan", &["base"]))).await;
        let (a_ip, b_ip) = (a.spec.nics[0].ip.to_string(), b.spec.nics[0].ip.to_string());
        assert_ne!(a_ip, b_ip);
        assert_ne!(
            a.status.host, b.status.host,
            "a and b must run on different hosts"
        );
        assert!(
            pings(&mut ca, &b_ip, None).await,
            "a cannot reach b across hosts"
        );
        assert!(
            pings(&mut cb, &a_ip, None).await,
            "b cannot reach a across hosts"
        );

        // IPv6 by SLAAC from the hosts' router advertisements: each guest forms the address
        // the platform recorded (prefix + EUI-64 of its MAC); they reach each other across
        // hosts; a source outside what the platform planned is not heard.
        let v6 = |vm: &Vm| {
            vm.spec.nics[0]
                .ipv6
                .expect("a NIC of an IPv6 network")
                .to_string()
        };
        let (a6, b6) = (v6(&a), v6(&b));
        assert!(a6.starts_with("fd00:77:0:1:"), "{a6}");
        wait_ipv6(&mut ca, &a6).await;
        wait_ipv6(&mut cb, &b6).await;
        assert!(
            pings(&mut ca, &b6, None).await,
            "a cannot reach b over IPv6"
        );
        assert!(
            pings(&mut cb, &a6, None).await,
            "b cannot reach a over IPv6"
        );
        cb.run("ip addr add fd00:77:0:1::99/64 dev eth0 nodad", GUEST)
            .await;
        assert!(
            !pings(&mut cb, &a6, Some("fd00:77:0:1::99")).await,
            "a forged IPv6 source was heard"
        );
        cb.run("ip addr del fd00:77:0:1::99/64 dev eth0", GUEST)
            .await;

        // Another project's guest on the same CIDR (it even gets a's address) reaches nobody of
        // the default project.
        let (c, mut cc) = running_with_address(
            &l,
            &client,
            guest("c", Some("other"), nic("lan", &["base"])),
        )
        .await;
        assert_eq!(
            c.spec.nics[0].ip.to_string(),
            a_ip,
            "the same CIDR, the same first address"
        );
        assert!(
            !pings(&mut cc, &b_ip, None).await,
            "project other reached b"
        );

        // Outbound NAT: a reaches a service outside the overlay (the control plane's agent
        // endpoint in the lab's gateway namespace); c, on an isolated network, does not.
        let outside = format!("{} {}", lab.gateway_ip(), common_pool::AGENT_PORT);
        let reach = |out: String| out.contains("rc=0");
        let probe = format!("nc -w 3 {outside} </dev/null >/dev/null 2>&1; echo rc=$?");
        assert!(
            reach(ca.run(&probe, GUEST).await),
            "a cannot get out through NAT"
        );
        assert!(
            !reach(cc.run(&probe, GUEST).await),
            "c got out of an isolated network"
        );

        // A security group opens TCP 8080 of the running b, and closes it again.
        cb.run(
            "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
            GUEST,
        )
        .await;
        let url = format!("{b_ip} 8080");
        assert!(!http_ok(&mut ca, &url).await, "8080 open before any rule");
        let rule = client
            .add_security_rule(
                None,
                "base",
                &SecurityRuleCreate {
                    direction: "ingress".into(),
                    protocol: Some("tcp".into()),
                    port_min: Some(8080),
                    ..SecurityRuleCreate::default()
                },
            )
            .await
            .expect("rule");
        let opened = Instant::now() + Duration::from_secs(20);
        while !http_ok(&mut ca, &url).await {
            assert!(Instant::now() < opened, "the new rule never opened 8080");
        }
        client
            .delete_security_rule(None, "base", &rule.id)
            .await
            .expect("rule removed");
        let closed = Instant::now() + Duration::from_secs(20);
        while http_ok(&mut ca, &url).await {
            assert!(
                Instant::now() < closed,
                "removing the rule never closed 8080"
            );
        }

        // A forged source address is not heard (the genuine one still is).
        ca.run("ip addr add 10.77.0.99/24 dev eth0", GUEST).await;
        assert!(
            !pings(&mut ca, &b_ip, Some("10.77.0.99")).await,
            "a forged source was answered"
        );
        assert!(
            pings(&mut ca, &b_ip, None).await,
            "the genuine source no longer works"
        );

        // The agent of a's host restarts: it converges to the same plan without touching the
        // running guest's plumbing (same tap, same QEMU), and a still reaches b.
        let ha = NsPool::host_of(&a);
        let taps_before = taps(&lab, ha);
        assert!(!taps_before.is_empty(), "no tap on a's host");
        let qemu_before = common_e2e::qemu_pid(&l.host_dir(ha), a.id);
        l.start_agent(ha, None);
        // The old agent is dead: a later sign of life is the new one's.
        let seen = client
            .host(&format!("host-{ha}"))
            .await
            .expect("host")
            .last_seen;
        let back = Instant::now() + Duration::from_secs(30);
        loop {
            let h = client.host(&format!("host-{ha}")).await.expect("host");
            if h.state == panal_types::host::HostState::Ready && h.last_seen > seen {
                break;
            }
            assert!(Instant::now() < back, "the restarted agent never came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(taps(&lab, ha), taps_before, "the restart recreated a tap");
        assert_eq!(common_e2e::qemu_pid(&l.host_dir(ha), a.id), qemu_before);
        assert!(
            pings(&mut ca, &b_ip, None).await,
            "a lost b after its agent restarted"
        );

        // b moves host (a drain live-migrates it from host-1 to host-0, where a runs): a reaches
        // it again at the same address, which the guest kept (it did not reboot).
        drop(cb);
        drop(cc);
        let (from, to) = (
            b.status.host.clone().unwrap(),
            a.status.host.clone().unwrap(),
        );
        client
            .drain_host(from.as_str(), false)
            .await
            .expect("drain");
        let moved = wait_vm(&client, "b", "running on a's host", RUNNING, |v| {
            v.status.phase == VmPhase::Running && v.status.host.as_ref() == Some(&to)
        })
        .await;
        assert_eq!(
            moved.spec.nics[0].ip.to_string(),
            b_ip,
            "the address follows the VM"
        );
        assert!(
            moved.status.events.iter().any(|e| e.reason == "Migrated"),
            "b was not live-migrated: {:?}",
            moved.status.events
        );
        let cb = l.console(&moved).await;
        let back = Instant::now() + Duration::from_secs(30);
        while !pings(&mut ca, &b_ip, None).await {
            assert!(Instant::now() < back, "a never reached b after it moved");
        }
        drop(cb);
        drop(ca);

        // Everything deleted: nothing of the networks is left on either host.
        for (project, name) in [(None, "a"), (None, "b"), (Some("other"), "c")] {
            client.delete_vm(project, name).await.expect("delete");
        }
        let gone = Instant::now() + RUNNING;
        for (project, name) in [(None, "a"), (None, "b"), (Some("other"), "c")] {
            while client.vm(project, name).await.is_ok() {
                assert!(Instant::now() < gone, "{name} was not deleted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for project in [None, Some("other")] {
            client
                .delete_network(project, "lan")
                .await
                .expect("network delete");
            client
                .delete_security_group(project, "base")
                .await
                .expect("group delete");
        }
        let clean = Instant::now() + Duration::from_secs(30);
        loop {
            let left: Vec<String> = (0..2).flat_map(|i| l.leftovers(i)).collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < clean, "left behind on the hosts: {left:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// The taps on host `i` with their interface indexes (a recreated tap gets a new index).
fn taps(lab: &NetLab, i: usize) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", &lab.netns_name(i), "-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(": pnt"))
        .map(|l| {
            l.split('@')
                .next()
                .unwrap_or(l)
                .split(" mtu")
                .next()
                .unwrap_or(l)
                .to_owned()
        })
        .collect()
}

/// A NIC plugged into a running q35 guest appears as `eth1`, gets its address by DHCP and
/// reaches a peer on that network; unplugged, it disappears from the guest and its address is
/// released.
#[test]
fn a_nic_is_hot_plugged_and_unplugged() {
    let scratch = Scratch::new();
    let lab = NetLab::new(1);
    let mut l = NsPool::new(&lab, scratch.data.clone());
    l.start_server();
    lab.block_on_in_gateway(async {
        let client = l.client().await;
        l.join_all(&client).await;
        for (name, cidr) in [("front", "10.78.0.0/24"), ("back", "10.79.0.0/24")] {
            client
                .create_network(&NetworkCreate {
                    name: name.into(),
                    cidr: cidr.into(),
                    ..NetworkCreate::default()
                })
                .await
                .expect("network");
        }
        let mut req = guest("q", None, nic("front", &[]));
        req.machine = Some(panal_types::vm::MachineProfile::Q35);
        let (_, mut cq) = running_with_address(&l, &client, req).await;
        // The peer accepts pings (a group with an inbound ICMP rule).
        client
            .create_security_group(&SecurityGroupCreate {
                name: "ping".into(),
                project: None,
                rules: Some(vec![SecurityRuleCreate {
                    direction: "ingress".into(),
                    protocol: Some("icmp".into()),
                    ..SecurityRuleCreate::default()
                }]),
            })
            .await
            .expect("group");
        let (peer, _cp) =
            running_with_address(&l, &client, guest("peer", None, nic("back", &["ping"]))).await;
        let peer_ip = peer.spec.nics[0].ip.to_string();

        let added = client
            .add_nic(None, "q", &nic("back", &[]))
            .await
            .expect("plug accepted");
        common_e2e::operation_ok(&client, &added.operation, GUEST).await;
        let plugged = added.vm.spec.nics[1].clone();
        let seen = Instant::now() + GUEST;
        while !cq.run("ls /sys/class/net", GUEST).await.contains("eth1") {
            if Instant::now() > seen {
                let why = cq.run("ls /sys/class/net; ls /sys/bus/pci/devices; dmesg | grep -i -E \"pcie|hp|virtio|eth|slot\" | tail -30", GUEST).await;
                let vm = client.vm(None, "q").await.expect("vm");
                panic!("the guest never saw eth1: {why}\nevents: {:?}", vm.status.events);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let lease = cq
            .run(
                "ip link set eth1 up; udhcpc -i eth1 -s /etc/panal/udhcpc.script -q -n -t 5 -T 1 2>&1; ip -4 -o addr show eth1",
                GUEST,
            )
            .await;
        assert!(
            lease.contains(&format!("{}/24", plugged.ip)),
            "eth1 did not get {}: {lease}",
            plugged.ip
        );
        assert!(
            pings(&mut cq, &peer_ip, None).await,
            "no reply over the plugged NIC"
        );

        let removed = client
            .remove_nic(None, "q", &plugged.id)
            .await
            .expect("unplug accepted");
        common_e2e::operation_ok(&client, &removed.operation, GUEST).await;
        let gone = Instant::now() + GUEST;
        while cq.run("ls /sys/class/net", GUEST).await.contains("eth1") {
            assert!(Instant::now() < gone, "eth1 stayed in the guest");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ports = client.network_ports(None, "back").await.expect("ports");
        assert!(
            ports.iter().all(|p| p.ip != plugged.ip),
            "the unplugged NIC's address is still taken: {ports:?}"
        );
    });
}
