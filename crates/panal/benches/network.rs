//! Virtual-network benchmark (issue 7) with real QEMU guests on two network-namespace hosts: a
//! `panal server` in the lab's gateway namespace and a `panal agent` in each host namespace
//! (the harness of `tests/e2e/e2e_network.rs`), guests on one overlay network.
//!
//! 1. Guest-to-guest TCP throughput across hosts (over VXLAN) as a ratio of the same on one
//!    host. Receiver `a` on host 0, senders `b` on host 1 (cross-host) and `c` on host 0
//!    (same host), pinned with `host_selector` on the agents' `lab-host` labels. The receiver
//!    runs busybox `nc -l -p 5001 > /dev/null`; the sender
//!    `dd if=/dev/zero bs=64k count=N | nc -w 5 ADDR 5001` (`-w`: connect timeout), timed
//!    inside the sender guest from `/proc/uptime` (10 ms resolution) until its `nc` exits,
//!    which is after the receiver has read everything and closed. The receiver's `eth0` byte
//!    counter checks that the payload arrived. Cross-host and same-host runs alternate, so a change of the machine's load hits
//!    both alike. Under TCG the guests are CPU-bound: the absolute MB/s are the emulator's,
//!    the ratio is the figure.
//! 2. Time from the create call of a VM on host 1 to the first ping reply it gives a running
//!    guest on host 0, minus that VM's boot time (create call -> `PANAL-GUEST-READY` in its
//!    QEMU's `console.log`, polled every 10 ms) in the same run; the difference is what the
//!    network adds after boot: DHCP, the hosts' VXLAN forwarding entries and the security
//!    groups. The peer pings every 0.2 s from the moment of the create call (`ping -i 0.2`,
//!    not a `ping -c 1 -W 1` loop, whose resolution would be about a second) with its ARP
//!    retransmit time lowered to 100 ms for the same reason; each round uses a new address and
//!    flushes the peer's neighbour cache, so no stale entry of the previous round is used.
//!
//! Needs root, QEMU and the built guest, like the end-to-end tests. Run:
//! `cargo bench -p panal --bench network`.

#[path = "../tests/common_e2e/mod.rs"]
mod common_e2e;
#[path = "../tests/common_netns/mod.rs"]
mod common_netns;
#[path = "../tests/common_pool/mod.rs"]
mod common_pool;

use common_e2e::console::Console;
use common_e2e::{READY_LINE, Scratch, op_ok, tiny};
use common_netns::NetLab;
use common_pool::NsPool;
use panal_client::Client;
use panal_types::network::{NetworkCreate, NicRequest, SecurityGroupCreate, SecurityRuleCreate};
use panal_types::vm::{Vm, VmAccepted, VmPhase};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Throughput runs per pair.
const TRANSFER_ROUNDS: usize = 5;
/// Create-to-ping rounds.
const PING_ROUNDS: usize = 5;
/// Target length of one transfer (the size is calibrated to it).
const TRANSFER_TARGET: Duration = Duration::from_secs(4);
const BLOCK: u64 = 64 << 10;
const PORT: u16 = 5001;
const LABEL: &str = "lab-host";
const CIDR: &str = "10.88.0.0/24";
const RUNNING: Duration = Duration::from_secs(120);
const GUEST: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(10);

fn main() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.label_host(0, LABEL, "0");
    pool.label_host(1, LABEL, "1");
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        setup_network(&client).await;
        println!(
            "virtual networks (issue 7): 2 namespace hosts, TCG microvm guests (1 vCPU, 128 MiB), \
             network {CIDR}"
        );
        let mut a = throughput(&pool, &client).await;
        create_to_ping(&pool, &client, &mut a).await;
    });
}

/// One network, one security group letting in ICMP and the benchmark's TCP port and
/// everything out (given rules replace a new group's default allow-all-outbound rule).
async fn setup_network(client: &Client) {
    client
        .create_network(&NetworkCreate {
            name: "bench".into(),
            cidr: CIDR.into(),
            ..NetworkCreate::default()
        })
        .await
        .expect("network");
    let rule = |direction: &str, protocol: Option<&str>, port: Option<u32>| SecurityRuleCreate {
        direction: direction.into(),
        protocol: protocol.map(str::to_owned),
        port_min: port,
        ..SecurityRuleCreate::default()
    };
    client
        .create_security_group(&SecurityGroupCreate {
            name: "bench".into(),
            project: None,
            rules: Some(vec![
                rule("ingress", Some("icmp"), None),
                rule("ingress", Some("tcp"), Some(u32::from(PORT))),
                rule("egress", None, None),
            ]),
        })
        .await
        .expect("security group");
}

/// A running guest with its address and console.
struct Guest {
    vm: Vm,
    ip: String,
    console: Console,
}

/// Creates a tiny guest pinned to lab host `host`, optionally with a static address.
async fn create_on(client: &Client, name: &str, host: usize, ip: Option<String>) -> VmAccepted {
    let mut req = tiny(name, 128);
    req.host_selector.insert(LABEL.into(), host.to_string());
    req.nics = vec![NicRequest {
        network: "bench".into(),
        ip,
        security_groups: vec!["bench".into()],
        ..NicRequest::default()
    }];
    client.create_vm(&req).await.expect("create accepted")
}

/// Waits until an accepted VM runs and its guest has applied its address.
async fn running(pool: &NsPool<'_>, client: &Client, accepted: &VmAccepted) -> Guest {
    let name = accepted.vm.name.as_str();
    let deadline = Instant::now() + RUNNING;
    let vm = loop {
        let v = client.vm(None, name).await.ok();
        if let Some(v) = v.filter(|v| v.status.phase == VmPhase::Running) {
            break v;
        }
        assert!(Instant::now() < deadline, "{name} did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ip = vm.spec.nics[0].ip.to_string();
    // The console log file, not the console: the line may be out before the console is open.
    let log = console_log_path(pool, NsPool::host_of(&vm), &vm);
    let line = format!("PANAL-GUEST-DHCP eth0 {ip}/");
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&line)
    {
        assert!(
            Instant::now() < deadline,
            "{name}: no {line:?} on its console"
        );
        tokio::time::sleep(POLL).await;
    }
    let console = pool.console(&vm).await;
    Guest { vm, ip, console }
}

/// Deletes a VM and waits until it is gone.
async fn delete(client: &Client, name: &str) {
    let del = client.delete_vm(None, name).await.expect("delete");
    op_ok(client, &del, RUNNING).await;
    let deadline = Instant::now() + RUNNING;
    while client.vm(None, name).await.is_ok() {
        assert!(Instant::now() < deadline, "{name} was not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One transfer of `blocks` x 64 KiB from `sender` to `receiver`: seconds measured in the
/// sender guest.
async fn transfer(receiver: &mut Guest, sender: &mut Guest, blocks: u64) -> f64 {
    let rx = "cat /sys/class/net/eth0/statistics/rx_bytes";
    // In the foreground: a background job reading the terminal would be stopped, and with
    // `< /dev/null` busybox `nc` half-closes at once, so the sender's `nc` would quit early.
    let listen = format!("{rx}; nc -l -p {PORT} > /dev/null; {rx}");
    let send = format!(
        "t0=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/dev/zero bs=64k count={blocks} 2>/dev/null | nc -w 5 {} {PORT}; rc=$?; \
         t1=$(cut -d' ' -f1 /proc/uptime); echo \"XFER rc=$rc $t0 $t1\"",
        receiver.ip
    );
    let receiver_name = receiver.vm.name.to_string();
    let sending = async {
        // The listener starts after its console echoed the command; a refused connect (nothing
        // sent yet) is tried again.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut out = String::new();
        for _ in 0..10 {
            out = sender.console.run(&send, GUEST).await;
            let line = out
                .lines()
                .find_map(|l| l.trim().strip_prefix("XFER "))
                .unwrap_or_else(|| panic!("no timing from the sender: {out:?}"))
                .to_owned();
            let f: Vec<&str> = line.split_whitespace().collect();
            if f[0] == "rc=0" {
                let (t0, t1): (f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                return t1 - t0;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!(
            "{} never got through to {}: {out:?}",
            sender.vm.name, receiver_name
        );
    };
    let (out, secs) = tokio::join!(receiver.console.run(&listen, GUEST), sending);
    let counters: Vec<u64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let [before, after] = counters[..] else {
        panic!("receiver counters: {out:?}");
    };
    assert!(
        after - before >= blocks * BLOCK,
        "the receiver got {} bytes of {}",
        after - before,
        blocks * BLOCK
    );
    secs
}

fn mb_per_s(blocks: u64, secs: f64) -> f64 {
    (blocks * BLOCK) as f64 / secs.max(0.01) / 1e6
}

/// Goal 1: TCP throughput cross-host / same-host. Returns the receiver, kept for goal 2.
async fn throughput(pool: &NsPool<'_>, client: &Client) -> Guest {
    println!();
    println!("== [issue 7] 1. guest-to-guest TCP throughput, cross-host (VXLAN) vs same host ==");
    let accepted = [
        create_on(client, "a", 0, None).await,
        create_on(client, "b", 1, None).await,
        create_on(client, "c", 0, None).await,
    ];
    let mut a = running(pool, client, &accepted[0]).await;
    let mut b = running(pool, client, &accepted[1]).await;
    let mut c = running(pool, client, &accepted[2]).await;
    for (g, host) in [(&a, 0), (&b, 1), (&c, 0)] {
        assert_eq!(
            NsPool::host_of(&g.vm),
            host,
            "{} on the wrong host",
            g.vm.name
        );
    }
    println!(
        "receiver a {} on host-0; sender b {} on host-1 (cross-host); sender c {} on host-0 (same host)",
        a.ip, b.ip, c.ip
    );

    // Warm-up (ARP, TCP paths, caches) on both pairs; sizes the transfers.
    transfer(&mut a, &mut b, 32).await;
    let probe = 64;
    let secs = transfer(&mut a, &mut c, probe).await;
    let rate = (probe * BLOCK) as f64 / secs.max(0.01);
    let blocks = ((rate * TRANSFER_TARGET.as_secs_f64()) as u64 / BLOCK).clamp(64, 4096);
    println!(
        "transfer size {} MiB (64 KiB x {blocks}), calibrated to about {} s on the same host",
        (blocks * BLOCK) >> 20,
        TRANSFER_TARGET.as_secs()
    );

    let (mut cross, mut same) = (Vec::new(), Vec::new());
    for round in 1..=TRANSFER_ROUNDS {
        let tc = transfer(&mut a, &mut b, blocks).await;
        let ts = transfer(&mut a, &mut c, blocks).await;
        let (x, s) = (mb_per_s(blocks, tc), mb_per_s(blocks, ts));
        println!(
            "run {round}: cross-host {x:6.2} MB/s ({tc:.2} s)   same host {s:6.2} MB/s ({ts:.2} s)   ratio {:.2}",
            x / s
        );
        cross.push(x);
        same.push(s);
    }
    let (x, s) = (median_f(&cross), median_f(&same));
    println!(
        "cross-host:  p50 {x:.2} MB/s  (min {:.2}, max {:.2})",
        min_f(&cross),
        max_f(&cross)
    );
    println!(
        "same host:   p50 {s:.2} MB/s  (min {:.2}, max {:.2})",
        min_f(&same),
        max_f(&same)
    );
    println!(
        "note: TCG guests are CPU-bound (1 emulated vCPU each; 2 host cores shared by the \
         guests, both hosts' kernels and the machine's other work): the MB/s are the \
         emulator's, the ratio is the figure"
    );
    println!(
        "SUMMARY [issue 7] throughput: cross-host {x:.2} MB/s / same host {s:.2} MB/s = \
         ratio {:.2} (p50 of {TRANSFER_ROUNDS} runs each, 1 MB = 10^6 bytes)",
        x / s
    );

    drop(b);
    drop(c);
    delete(client, "b").await;
    delete(client, "c").await;
    a
}

/// Goal 2: create call -> first ping reply across hosts, minus the guest's boot time.
async fn create_to_ping(pool: &NsPool<'_>, client: &Client, peer: &mut Guest) {
    println!();
    println!("== [issue 7] 2. VM create -> first ping reply across hosts, minus boot time ==");
    println!(
        "peer a {} on host-0 pings the new VM on host-1 every 0.2 s from the create call on",
        peer.ip
    );
    peer.console
        .run(
            "echo 100 > /proc/sys/net/ipv4/neigh/eth0/retrans_time_ms",
            GUEST,
        )
        .await;
    let mut rows = Vec::new();
    for round in 1..=PING_ROUNDS {
        let name = format!("t{round}");
        let ip = format!("10.88.0.{}", 100 + round);
        let t0 = Instant::now();
        let accepted = create_on(client, &name, 1, Some(ip.clone())).await;
        let created = t0.elapsed();
        let ip = accepted.vm.spec.nics[0].ip.to_string();
        peer.console.send(&format!(
            "ip neigh flush dev eth0 2>/dev/null; \
             until ping -i 0.2 -w 120 {ip} 2>/dev/null | grep -m 1 'bytes f''rom'; \
             do sleep 0.2; done; echo PING''DONE{round}"
        ));
        let log = console_log_path(pool, 1, &accepted.vm);
        let (mut ready, mut dhcp, mut reply) = (None, None, None);
        let deadline = t0 + GUEST;
        while ready.is_none() || dhcp.is_none() || reply.is_none() {
            let now = t0.elapsed();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if ready.is_none() && text.contains(READY_LINE) {
                ready = Some(now);
            }
            if dhcp.is_none() && text.contains(&format!("PANAL-GUEST-DHCP eth0 {ip}/")) {
                dhcp = Some(now);
            }
            if reply.is_none()
                && peer
                    .console
                    .since_offset()
                    .contains(&format!("bytes from {ip}"))
            {
                reply = Some(now);
            }
            assert!(
                Instant::now() < deadline,
                "{name}: ready {ready:?}, DHCP {dhcp:?}, reply {reply:?} within {GUEST:?}; \
                 peer console: {:?}",
                peer.console.since_offset()
            );
            tokio::time::sleep(POLL).await;
        }
        peer.console
            .wait_for(&format!("PINGDONE{round}"), GUEST)
            .await;
        let (ready, dhcp, reply) = (ready.unwrap(), dhcp.unwrap(), reply.unwrap());
        let extra = reply.saturating_sub(ready);
        println!(
            "round {round}: create call {:5.0} ms   boot (create -> ready) {:6.2} s   \
             create -> DHCP {:6.2} s   create -> first reply {:6.2} s   minus boot {:5.2} s",
            ms(created),
            ready.as_secs_f64(),
            dhcp.as_secs_f64(),
            reply.as_secs_f64(),
            extra.as_secs_f64()
        );
        rows.push((ready, dhcp, reply, extra));
        delete(client, &name).await;
    }
    let col = |f: fn(&(Duration, Duration, Duration, Duration)) -> Duration| {
        let mut v: Vec<Duration> = rows.iter().map(f).collect();
        v.sort();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (boot, boot_max) = col(|r| r.0);
    let (dhcp, dhcp_max) = col(|r| r.1);
    let (reply, reply_max) = col(|r| r.2);
    let (extra, extra_max) = col(|r| r.3);
    for (what, p50, max) in [
        ("create -> first reply", reply, reply_max),
        ("boot (create -> ready)", boot, boot_max),
        ("create -> DHCP applied", dhcp, dhcp_max),
        ("reply minus boot", extra, extra_max),
    ] {
        println!(
            "{what:<24} p50 {:5.2} s   max {:5.2} s",
            p50.as_secs_f64(),
            max.as_secs_f64()
        );
    }
    println!(
        "SUMMARY [issue 7] create -> first cross-host ping reply: p50 {:.2} s (max {:.2} s), \
         boot p50 {:.2} s (max {:.2} s), difference p50 {:.2} s (max {:.2} s) over {PING_ROUNDS} \
         VMs (0.2 s ping interval)",
        reply.as_secs_f64(),
        reply_max.as_secs_f64(),
        boot.as_secs_f64(),
        boot_max.as_secs_f64(),
        extra.as_secs_f64(),
        extra_max.as_secs_f64()
    );
}

/// The QEMU console log of a VM pinned to lab host `host` (it may not be there yet: the file
/// appears once the driver starts its QEMU).
fn console_log_path(pool: &NsPool<'_>, host: usize, vm: &Vm) -> PathBuf {
    pool.host_dir(host)
        .join("qemu/vms")
        .join(vm.id.to_string())
        .join("console.log")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min_f(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max_f(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
