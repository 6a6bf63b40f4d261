//! A network lab for the root tests: "hosts" and "VMs" are network namespaces named after the
//! test and the process id (so tests run in parallel with each other and with other worktrees),
//! all deleted by `Drop` even when an assertion fails. A host runs its `HostNet` on a dedicated
//! thread that has entered the host's namespace and runs a current-thread tokio runtime, so
//! every command and socket of `HostNet` acts inside that namespace.

#![allow(dead_code)] // each test uses a different part of the lab

pub mod probe;

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use panal_net::{ApplyReport, HostNet, HostNetConfig, HostPlan, MacAddr, NetError};
use tokio::sync::mpsc;

/// false (with a printed reason) when the lab cannot run here.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped {test}: needs root (network namespaces, nftables)");
        false
    }
}

/// Runs a command, returns its output; never panics on a non-zero exit.
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn must(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Enters the network namespace `ns` on the calling thread.
pub fn enter(ns: &str) {
    let f =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Owns the namespaces of one test.
pub struct Lab {
    tag: String,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new(test: &str) -> Lab {
        Lab {
            // Not `pnl`: that is the platform tests' lab (`crates/panal/tests/common_netns`),
            // whose sweep deletes the `pnl` namespaces of pids it finds dead.
            tag: format!("pnn{}{test}", std::process::id()),
            namespaces: Vec::new(),
        }
    }

    /// Creates namespace `<tag>-<short>` with its loopback up.
    pub fn netns(&mut self, short: &str) -> String {
        let name = format!("{}-{short}", self.tag);
        must(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Two host namespaces joined by a veth underlay `10.250.<net>.1/24` - `.2/24`.
    pub fn hosts(&mut self, net: u8) -> (Host, Host) {
        let (a, b) = (self.netns("h1"), self.netns("h2"));
        must(&[
            "ip", "link", "add", "ula", "netns", &a, "type", "veth", "peer", "name", "ulb",
            "netns", &b,
        ]);
        let ua = Ipv4Addr::new(10, 250, net, 1);
        let ub = Ipv4Addr::new(10, 250, net, 2);
        for (ns, dev, ip) in [(&a, "ula", ua), (&b, "ulb", ub)] {
            must(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        (Host::start(&a, ua), Host::start(&b, ub))
    }

    /// One host namespace without an underlay (single-host tests).
    pub fn host(&mut self, underlay: Ipv4Addr) -> Host {
        let ns = self.netns("h1");
        Host::start(&ns, underlay)
    }

    /// A "VM": namespace `<tag>-<short>` whose `eth0` (MAC `mac`, optional address) is the peer of
    /// interface `port` in the host namespace (the plan's port, `create_tap: false`).
    pub fn vm(
        &mut self,
        short: &str,
        host: &Host,
        port: &str,
        mac: MacAddr,
        cidr: Option<&str>,
    ) -> Vm {
        let ns = self.netns(short);
        must(&[
            "ip", "link", "add", port, "netns", &host.ns, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        must(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "eth0",
            "address",
            &mac.to_string(),
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        if let Some(c) = cidr {
            must(&["ip", "-n", &ns, "addr", "add", c, "dev", "eth0"]);
        }
        Vm { ns, mac }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Kill what the test left running inside (udhcpc, nc), then the namespace: its
            // links and nft tables go with it.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub struct Vm {
    pub ns: String,
    pub mac: MacAddr,
}

impl Vm {
    /// Runs `args` inside the VM's namespace.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run(&all)
    }

    pub fn must(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        must(&all)
    }

    /// Whether one of up to three pings gets an answer (the first may wait for ARP).
    pub fn pings(&self, ip: impl Into<std::net::IpAddr>) -> bool {
        let ip = ip.into();
        self.run(&[
            "busybox",
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-w",
            "4",
            &ip.to_string(),
        ])
        .status
        .success()
    }
}

enum Job {
    Apply(HostPlan, std_mpsc::Sender<Result<ApplyReport, NetError>>),
    Teardown(std_mpsc::Sender<Result<(), NetError>>),
}

/// A host: its namespace and the thread that runs its `HostNet` in it.
pub struct Host {
    pub ns: String,
    pub underlay: Ipv4Addr,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

pub const PREFIX: &str = "lt";
pub const TABLE: &str = "labnet";

impl Host {
    fn start(ns: &str, underlay: Ipv4Addr) -> Host {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let ns_owned = ns.to_string();
        let thread = std::thread::spawn(move || {
            enter(&ns_owned);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut cfg = HostNetConfig::new(underlay);
                cfg.prefix = PREFIX.into();
                cfg.nft_table = TABLE.into();
                let net = HostNet::new(cfg);
                while let Some(job) = rx.recv().await {
                    match job {
                        Job::Apply(plan, reply) => drop(reply.send(net.apply(&plan).await)),
                        Job::Teardown(reply) => drop(reply.send(net.teardown().await)),
                    }
                }
            });
        });
        Host {
            ns: ns.to_string(),
            underlay,
            jobs: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn try_apply(&self, plan: &HostPlan) -> Result<ApplyReport, NetError> {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Job::Apply(plan.clone(), tx))
            .expect("host thread");
        rx.recv().expect("host thread answers")
    }

    pub fn apply(&self, plan: &HostPlan) -> ApplyReport {
        self.try_apply(plan)
            .unwrap_or_else(|e| panic!("apply on {}: {e}", self.ns))
    }

    pub fn teardown(&self) {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Job::Teardown(tx))
            .expect("host thread");
        rx.recv().expect("host thread answers").expect("teardown");
    }

    /// Runs `args` inside the host's namespace.
    pub fn must(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.ns];
        all.extend_from_slice(args);
        must(&all)
    }

    /// Names of links with the test prefix.
    pub fn prefixed_links(&self) -> Vec<String> {
        let out = self.must(&["ip", "-j", "link", "show"]);
        let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with(PREFIX))
            .map(String::from)
            .collect()
    }

    pub fn ifindex(&self, name: &str) -> u64 {
        let out = self.must(&["ip", "-j", "link", "show", "dev", name]);
        let links: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        links[0]["ifindex"].as_u64().unwrap()
    }

    /// Our nft tables in this host.
    pub fn tables(&self) -> Vec<String> {
        let out = self.must(&["nft", "-j", "list", "tables"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("table"))
            .filter(|t| t["name"] == TABLE)
            .map(|t| format!("{} {}", t["family"].as_str().unwrap(), TABLE))
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Closing the queue ends the runtime (and with it the DHCP listeners) and the thread.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
