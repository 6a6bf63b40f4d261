//! The lab's wiring: creating the bridge, the namespaces and their veth pairs with addresses,
//! waiting until the bridge forwards, and tearing it all down again.

use super::names::Names;
use super::ns::{in_ns, ip_batch, kill_inside, open_existing};
use super::sweep::remaining;
use std::fmt::Write;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The interface of every lab namespace, the inner end of its veth pair.
pub const IFACE: &str = "eth0";

/// Creates the bridge, the namespaces and the veth pairs, then numbers the namespaces.
pub fn build(root_ns: &File, names: &Names, namespaces: &[(String, Ipv4Addr)]) {
    let br = names.bridge();
    let mut root = String::new();
    // addrgenmode none: not even an IPv6 link-local address appears in the root namespace.
    let _ = writeln!(root, "link add name {br} type bridge");
    let _ = writeln!(root, "link set dev {br} addrgenmode none");
    for (ns, _) in namespaces {
        // The outer veth end takes the namespace's name; the inner end is born inside it.
        let _ = writeln!(root, "netns add {ns}");
        let _ = writeln!(
            root,
            "link add name {ns} type veth peer name {IFACE} netns {ns}"
        );
        let _ = writeln!(root, "link set dev {ns} addrgenmode none master {br} up");
    }
    // With STP off (the default) a port forwards once it has a carrier (`wait_forwarding`).
    let _ = writeln!(root, "link set dev {br} up");
    ip_batch(root_ns, None, false, &root).unwrap_or_else(|e| panic!("{e}"));
    std::thread::scope(|s| {
        let jobs: Vec<_> = namespaces
            .iter()
            .map(|(ns, ip)| {
                // No IPv6 address on eth0 means no duplicate address detection to wait
                // for; IPv4 has none, so the address works as soon as the link is up.
                let script = format!(
                    "link set dev lo up\nlink set dev {IFACE} addrgenmode none\n\
                     addr add {ip}/24 dev {IFACE}\nlink set dev {IFACE} up\n"
                );
                s.spawn(move || ip_batch(root_ns, Some(ns), false, &script))
            })
            .collect();
        for job in jobs {
            job.join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let ports: Vec<String> = namespaces.iter().map(|(ns, _)| ns.clone()).collect();
    wait_forwarding(root_ns, &br, &ports);
}

/// Kills every process in the lab's namespaces, then deletes the bridge, the veth pairs and the
/// namespaces; complains on stderr if any of them is still there (a `Drop` must not panic).
pub fn teardown(root: &File, names: &Names, namespaces: &[(String, Ipv4Addr)]) {
    let held = open_existing(
        &namespaces
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
    );
    kill_inside(&held);
    let mut script = format!("link del dev {}\n", names.bridge());
    for (ns, _) in namespaces {
        // Deleting the outer veth end deletes the inner one with it.
        let _ = writeln!(script, "link del dev {ns}\nnetns del {ns}");
    }
    // Forced past failures: after a half-built lab some of these do not exist.
    let _ = ip_batch(root, None, true, &script);
    // A process that entered while the names were still there dies too.
    kill_inside(&held);
    let left = remaining(root, &names.tag);
    if !left.is_empty() {
        eprintln!("netns lab {}: could not remove {left:?}", names.tag);
    }
}

/// Waits until the bridge forwards to and from each of `ports` (outer veth ends).
///
/// When a veth's inner end comes up, its outer end gets its carrier at once, but only the
/// kernel's link-watch work then starts its transmit queue and moves its bridge port to
/// forwarding. That work takes the RTNL lock, which namespace teardown in parallel tests
/// holds for a long time, so without this wait a first SYN is sometimes dropped and the
/// connect stalls for TCP's 1 s retransmission.
pub fn wait_forwarding(root: &File, br: &str, ports: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = in_ns(root, || {
            Command::new("ip")
                .args(["-d", "-o", "link", "show", "master", br])
                .output()
        })
        .unwrap_or_else(|e| panic!("run `ip`: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let ready: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(" state UP ") && l.contains("bridge_slave state forwarding"))
            .filter_map(|l| l.split(": ").nth(1)?.split('@').next())
            .collect();
        if ports.iter().all(|p| ready.contains(&p.as_str())) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bridge {br}: ports {ports:?} not forwarding after 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
