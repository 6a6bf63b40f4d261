//! A network lab for multi-host end-to-end tests: `hosts` Linux network namespaces, each with its
//! own address (`10.A.B.<i+1>/24` on its `eth0`), and one more namespace, the gateway, for the
//! control plane (`10.A.B.254`), all joined by veth pairs to one bridge in the root namespace.
//!
//! The root namespace gets no address and no namespace a route out (DESIGN.md, "test hosts"),
//! so the test process reaches the lab only from threads that joined a lab namespace:
//! [`NetLab::in_gateway`], [`NetLab::in_host`], [`NetLab::block_on_in_gateway`]. Processes run
//! in a host with [`NetLab::spawn`]. [`NetLab::cut`] takes a host's link down, [`NetLab::restore`]
//! brings it back. Dropping the lab, also while a test panics, kills every process inside its
//! namespaces and deletes its namespaces, veths and bridge; [`NetLab::new`] first sweeps what
//! SIGKILLed earlier runs left (see `sweep.rs`).
//!
//! Needs root (CI runs as root) and iproute2, and fails without them, like the tests that need
//! QEMU. A test binary includes it next to the process helpers it reuses:
//! `mod common_e2e; mod common_netns;`.

#![allow(dead_code)]

mod cgroups;
mod child;
pub mod names;
pub mod ns;
mod sweep;
mod topology;

pub use child::NsChild;

use child::{Groups, lock};

use names::{MAX_HOSTS, Names};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use ns::{in_ns, ip_batch, join, netns_path, open_ns};
use std::fs::File;
use std::future::Future;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use topology::IFACE;

/// Numbers the labs of this process, for unique names and subnets.
static LABS: AtomicU32 = AtomicU32::new(0);

/// Hosts and a gateway in network namespaces on one bridge; everything is removed on drop.
pub struct NetLab {
    names: Names,
    hosts: usize,
    /// The namespace the bridge and the outer veth ends live in: this process's.
    root: File,
    /// Process groups of the live children spawned in the lab.
    groups: Groups,
}

impl NetLab {
    /// Makes a lab of `hosts` hosts (1 to 99); returns once every address is usable.
    pub fn new(hosts: usize) -> NetLab {
        assert!(
            (1..=MAX_HOSTS).contains(&hosts),
            "a lab has 1 to {MAX_HOSTS} hosts, not {hosts}"
        );
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network lab needs root (network namespaces, veth pairs, a bridge): run this test \
             as root, as CI does"
        );
        let root = open_ns(Path::new("/proc/self/ns/net"));
        sweep::sweep(&root);
        let lab = NetLab {
            names: Names::new(std::process::id(), LABS.fetch_add(1, Ordering::Relaxed)),
            hosts,
            root,
            groups: Groups::default(),
        };
        // A failure panics here with `lab` in scope, so its `Drop` removes what was made.
        topology::build(&lab.root, &lab.names, &lab.namespaces());
        lab
    }

    /// Removes the namespaces and links of labs whose owner process is dead (`new` does this
    /// first anyway).
    pub fn sweep_stale() {
        sweep::sweep(&open_ns(Path::new("/proc/self/ns/net")));
        // VM cgroups of earlier labs that died before their teardown.
        cgroups::sweep();
    }

    /// How many hosts the lab has.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        self.names.host_ip(i)
    }

    /// The gateway's address, where the control plane listens.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.names.gateway_ip()
    }

    /// Host `i`'s namespace (for `ip netns exec`, `ip -n`): `/run/netns/<name>`.
    pub fn netns_name(&self, i: usize) -> String {
        self.check(i);
        self.names.host(i)
    }

    /// The gateway's namespace.
    pub fn gateway_netns_name(&self) -> String {
        self.names.gateway()
    }

    /// The part every name of this lab starts with, followed by `-`.
    pub fn tag(&self) -> &str {
        &self.names.tag
    }

    /// Starts `cmd` in host `i`'s namespace, in a process group of its own.
    pub fn spawn(&self, i: usize, cmd: &mut Command) -> NsChild {
        self.spawn_in(&self.netns_name(i), cmd)
    }

    /// Starts `cmd` in the gateway's namespace, in a process group of its own.
    pub fn spawn_gateway(&self, cmd: &mut Command) -> NsChild {
        self.spawn_in(&self.gateway_netns_name(), cmd)
    }

    /// Runs `f` on a thread in host `i`'s namespace: sockets it makes stay there.
    pub fn in_host<R: Send>(&self, i: usize, f: impl FnOnce() -> R + Send) -> R {
        in_ns(&open_ns(&netns_path(&self.netns_name(i))), f)
    }

    /// Runs `f` on a thread in the gateway's namespace: sockets it makes stay there.
    pub fn in_gateway<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_ns(&open_ns(&netns_path(&self.gateway_netns_name())), f)
    }

    /// Runs `fut` to completion on a tokio runtime whose threads all live in the gateway's
    /// namespace, so an in-process control plane and its clients bind and connect there.
    pub fn block_on_in_gateway<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let ns = Arc::new(open_ns(&netns_path(&self.gateway_netns_name())));
        let joined = ns.clone();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || join(&joined))
            .build()
            .expect("tokio runtime");
        // `block_on` polls `fut` on the calling thread, so that thread joins the gateway too.
        let out = in_ns(&ns, || rt.block_on(fut));
        rt.shutdown_timeout(Duration::from_secs(5));
        out
    }

    /// Cuts host `i` off: its `eth0` goes down, so its connects fail at once ("network
    /// unreachable"), established connections fall silent both ways like in a real partition,
    /// and its processes (agent, QEMU) keep running.
    pub fn cut(&self, i: usize) {
        self.set_link(i, "down");
    }

    /// Reconnects host `i` after [`NetLab::cut`]; returns once its bridge port forwards again.
    pub fn restore(&self, i: usize) {
        self.set_link(i, "up");
        topology::wait_forwarding(&self.root, &self.names.bridge(), &[self.names.host(i)]);
    }

    fn set_link(&self, i: usize, state: &str) {
        let ns = self.netns_name(i);
        ip_batch(
            &self.root,
            Some(&ns),
            false,
            &format!("link set dev {IFACE} {state}\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    fn check(&self, i: usize) {
        assert!(i < self.hosts, "host {i} of a {}-host lab", self.hosts);
    }

    fn spawn_in(&self, netns: &str, cmd: &mut Command) -> NsChild {
        cmd.process_group(0);
        let ns = open_ns(&netns_path(netns));
        let child = in_ns(&ns, || cmd.spawn())
            .unwrap_or_else(|e| panic!("spawn {:?} in {netns}: {e}", cmd.get_program()));
        NsChild::new(child, self.groups.clone())
    }

    /// Every namespace of the lab with its address: the gateway, then the hosts.
    fn namespaces(&self) -> Vec<(String, Ipv4Addr)> {
        let mut all = vec![(self.names.gateway(), self.names.gateway_ip())];
        all.extend((0..self.hosts).map(|i| (self.names.host(i), self.names.host_ip(i))));
        all
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for g in std::mem::take(&mut *lock(&self.groups)) {
            let _ = killpg(Pid::from_raw(g as i32), Signal::SIGKILL);
        }
        topology::teardown(&self.root, &self.names, &self.namespaces());
        cgroups::remove(&format!("{}-", self.names.tag));
    }
}
