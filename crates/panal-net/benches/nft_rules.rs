//! Security-group rules at scale (issue 7): in a network namespace of its own, a plan of 50
//! ports x 20 rules (1,000 rules, 5 networks, each port with a tap and a DHCP listener) is
//! applied from empty, then re-applied with one rule changed, then once more unchanged, over
//! several runs. Prints p50 and
//! max of both and PASS/FAIL against the goal "1,000 rules in <= 1 s".
//!
//! `cargo bench -p panal-net --bench nft_rules` (as root).

use std::net::Ipv4Addr;
use std::time::Duration;

use panal_net::{
    DhcpLease, HostNet, HostNetConfig, HostPlan, MacAddr, NetworkPlan, PortPlan, Protocol,
    RulePlan, tap_name,
};

const RUNS: usize = 7;
const NETWORKS: u32 = 5;
const PORTS_PER_NETWORK: u32 = 10;
const RULES_PER_DIRECTION: u32 = 10;
const GOAL: Duration = Duration::from_secs(1);

/// Deletes the namespace however the benchmark ends.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

fn rule(n: u32, dir: u32) -> RulePlan {
    let protocol = match n % 3 {
        0 => Protocol::Tcp,
        1 => Protocol::Udp,
        _ => Protocol::Icmp,
    };
    RulePlan {
        protocol,
        ports: (protocol != Protocol::Icmp).then(|| {
            let p = 1000 + (n * 7 + dir) as u16;
            (p, p + (n % 4) as u16)
        }),
        remote: format!("10.{}.{}.0/24", 100 + dir, n).parse().unwrap(),
    }
}

fn plan() -> HostPlan {
    let networks = (0..NETWORKS)
        .map(|net| NetworkPlan {
            vni: 7000 + net,
            mtu: 1450,
            peers: vec![Ipv4Addr::new(10, 251, 0, 2), Ipv4Addr::new(10, 251, 0, 3)],
            remote_macs: vec![],
            router: None,
            ipv6: None,
            ports: (0..PORTS_PER_NETWORK)
                .map(|i| {
                    let ip = Ipv4Addr::new(10, 60 + net as u8, 0, 10 + i as u8);
                    PortPlan {
                        ifname: tap_name("bn", &format!("vm-{net}-{i}")),
                        create_tap: true,
                        mac: MacAddr([0x52, 0x54, 0, 0x20, net as u8, i as u8]),
                        ipv4: ip,
                        ipv6: None,
                        dhcp: Some(DhcpLease {
                            address: ip,
                            prefix_len: 24,
                            router: None,
                            dns: vec![],
                            mtu: 1450,
                            hostname: None,
                            server_id: Ipv4Addr::new(10, 60 + net as u8, 0, 1),
                            lease_secs: 3600,
                        }),
                        ingress: (0..RULES_PER_DIRECTION).map(|n| rule(n + i, 0)).collect(),
                        egress: (0..RULES_PER_DIRECTION).map(|n| rule(n + i, 1)).collect(),
                        floating: None,
                    }
                })
                .collect(),
        })
        .collect();
    HostPlan { networks }
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("nft_rules: skipped, needs root (a network namespace and nftables)");
        return;
    }
    let ns = Netns(format!("pnbench{}", std::process::id()));
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "ip netns add");
    let name = ns.0.clone();
    // HostNet acts in the calling thread's namespace: a thread of its own enters the bench's.
    let (cold, warm, same, rules) = std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cfg = HostNetConfig::new(Ipv4Addr::new(10, 251, 0, 1));
            cfg.prefix = "bn".into();
            cfg.nft_table = "bench".into();
            let net = HostNet::new(cfg);
            let base = plan();
            let (mut cold, mut warm, mut same) = (Vec::new(), Vec::new(), Vec::new());
            let mut rules = 0;
            for run in 0..RUNS {
                net.teardown().await.unwrap();
                let r = net.apply(&base).await.unwrap();
                rules = r.nft_rules;
                cold.push(r.elapsed);
                let mut changed = base.clone();
                changed.networks[0].ports[0].ingress[0].remote =
                    format!("10.200.{run}.0/24").parse().unwrap();
                let r = net.apply(&changed).await.unwrap();
                assert!(r.nft_applied && r.devices_created == 0, "{r:?}");
                warm.push(r.elapsed);
                let r = net.apply(&changed).await.unwrap();
                assert_eq!(r.changes(), 0, "{r:?}");
                same.push(r.elapsed);
            }
            net.teardown().await.unwrap();
            (cold, warm, same, rules)
        })
    })
    .join()
    .unwrap();

    let (c50, cmax) = stats(cold);
    let (w50, wmax) = stats(warm);
    let (s50, smax) = stats(same);
    println!(
        "security-group rules: {rules} rules on {} ports in {NETWORKS} networks, {RUNS} runs",
        NETWORKS * PORTS_PER_NETWORK
    );
    println!(
        "  apply from empty (devices + FDB + nft + DHCP listeners): p50 {c50:.1?}  max {cmax:.1?}"
    );
    println!(
        "  re-apply, one rule changed (one nft transaction):         p50 {w50:.1?}  max {wmax:.1?}"
    );
    println!(
        "  re-apply, nothing changed (state read back, nothing written): p50 {s50:.1?}  max {smax:.1?}"
    );
    let pass = cmax <= GOAL && wmax <= GOAL;
    println!(
        "goal: {rules} rules applied in <= {GOAL:?}: {}",
        if pass { "PASS" } else { "FAIL" }
    );
}
