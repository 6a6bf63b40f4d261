//! A pool of namespace hosts running the real binaries: a `panal server` in the lab's gateway
//! namespace and one `panal agent` per host namespace, joined with tokens over mutual TLS, each
//! with its own data directory under one scratch root. Used by the multi-host network tests and
//! benchmarks; declare `mod common_e2e; mod common_netns; mod common_pool;` to use it.

#![allow(dead_code)]

use crate::common_e2e::console::Console;
use crate::common_e2e::{self, guest_dir};
use crate::common_netns::{NetLab, NsChild};
use panal_client::Client;
use panal_types::host::HostState;
use panal_types::join::JoinTokenCreate;
use panal_types::vm::Vm;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The API inside the gateway namespace.
pub const API: &str = "127.0.0.1:7180";
/// The agent endpoint's port on the gateway's lab address.
pub const AGENT_PORT: u16 = 7181;

/// The server, the agents and their directories. Dropping it kills them all.
pub struct NsPool<'a> {
    pub lab: &'a NetLab,
    pub root: PathBuf,
    server: Option<NsChild>,
    agents: Vec<Option<NsChild>>,
    /// Labels each host's agent registers with (`--label KEY=VALUE`), see [`NsPool::label_host`].
    labels: Vec<Vec<(String, String)>>,
    _cleanups: Vec<common_e2e::Cleanup>,
}

impl Drop for NsPool<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The scratch directory goes with the test: what the processes said is printed.
            for entry in std::fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log" || e == "err") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    eprintln!("--- {} (last 40 lines)\n{tail}", path.display());
                }
            }
        }
        for a in self.agents.iter_mut().flatten() {
            a.kill();
        }
        if let Some(s) = &mut self.server {
            s.kill();
        }
    }
}

impl<'a> NsPool<'a> {
    /// A pool over the lab's hosts, nothing started yet.
    pub fn new(lab: &'a NetLab, root: PathBuf) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        Self {
            _cleanups: (0..lab.hosts())
                .map(|i| common_e2e::Cleanup {
                    dir: root.join(format!("host-{i}")),
                })
                .collect(),
            agents: (0..lab.hosts()).map(|_| None).collect(),
            labels: (0..lab.hosts()).map(|_| Vec::new()).collect(),
            lab,
            root,
            server: None,
        }
    }

    fn log(&self, name: &str) -> Stdio {
        Stdio::from(std::fs::File::create(self.root.join(format!("{name}.log"))).unwrap())
    }

    /// Host `i`'s data directory.
    pub fn host_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("host-{i}"))
    }

    /// Starts the control plane.
    pub fn start_server(&mut self) {
        let gw = self.lab.gateway_ip();
        let child = self.lab.spawn_gateway(
            Command::new(env!("CARGO_BIN_EXE_panal"))
                .args(["server", "--data-dir"])
                .arg(self.root.join("cp"))
                .args(["--listen", API])
                .args(["--agent-listen", &format!("{gw}:{AGENT_PORT}")])
                .args(["--host-lease-ttl", "6"])
                .arg("--guest-dir")
                .arg(guest_dir())
                .env("PANAL_LOG", "info,panal_server::app::network_plans=debug")
                .stdout(self.log("server"))
                .stderr(self.log("server.err")),
        );
        self.server = Some(child);
    }

    /// Kills the control plane (`kill -9` of its process group); [`NsPool::start_server`]
    /// brings it back on the same data directory.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill();
        }
    }

    /// Kills host `i`'s agent (`kill -9`); its VMs' hypervisors live on, as after a crash.
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill();
        }
    }

    /// Whether a QEMU process of VM `id` runs from host `i`'s data directory.
    pub fn qemu_running(&self, i: usize, id: &str) -> bool {
        let dir = self.host_dir(i).join("qemu/vms").join(id);
        let needle = dir.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .chars()
                    .all(|c| c.is_ascii_digit())
            })
            .any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
    }

    /// Gives host `i` a label its agent registers with from its next start on (so that a VM's
    /// `host_selector` can pin it to that host).
    pub fn label_host(&mut self, i: usize, key: &str, value: &str) {
        self.labels[i].push((key.to_owned(), value.to_owned()));
    }

    /// Starts (or restarts) host `i`'s agent; `token` joins it the first time.
    pub fn start_agent(&mut self, i: usize, token: Option<&str>) {
        if let Some(mut old) = self.agents[i].take() {
            old.kill();
        }
        let url = format!("https://{}:{AGENT_PORT}", self.lab.gateway_ip());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_panal"));
        cmd.arg("agent");
        if let Some(t) = token {
            cmd.args(["--join", &url, "--token", t]);
        }
        for (k, v) in &self.labels[i] {
            cmd.args(["--label", &format!("{k}={v}")]);
        }
        let child = self.lab.spawn(
            i,
            cmd.args(["--name", &format!("host-{i}")])
                // The hosts share this machine's cgroup tree: a migrating VM runs on both.
                .args(["--cgroup-prefix", &format!("{}-h{i}-", self.lab.tag())])
                // Tests of a pre-copy that never converges need not wait a minute.
                .args(["--migration-patience", "20"])
                .arg("--data-dir")
                .arg(self.host_dir(i))
                // Disk images boot with the built-in guest's kernel (as on a real host).
                .arg("--guest-dir")
                .arg(guest_dir())
                .args(["--heartbeat", "2"])
                .env("PANAL_LOG", "info,panal_agent::network=debug")
                .stdout(self.log(&format!("agent-{i}")))
                .stderr(self.log(&format!("agent-{i}.err"))),
        );
        self.agents[i] = Some(child);
    }

    /// The admin client of the running server (call inside the gateway namespace).
    pub async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.root.join("cp/client.toml"))
                && let Some(token) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("token = "))
                    .map(|t| t.trim_matches('"').to_owned())
            {
                let c = Client::new(&format!("http://{API}"), &token);
                if c.image(None, "tiny").await.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Joins an agent on every host and waits until all are ready and carry networks.
    pub async fn join_all(&mut self, client: &Client) {
        for i in 0..self.lab.hosts() {
            let t = client
                .create_join_token(&JoinTokenCreate::default())
                .await
                .expect("token");
            self.start_agent(i, Some(&t.token));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let hosts = client.list_hosts(None).await.expect("hosts").items;
            if hosts.len() == self.lab.hosts()
                && hosts
                    .iter()
                    .all(|h| h.state == HostState::Ready && h.inventory.tunnel_address.is_some())
            {
                return;
            }
            assert!(Instant::now() < deadline, "hosts never became ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Which lab host a VM is placed on.
    pub fn host_of(vm: &Vm) -> usize {
        vm.status
            .host
            .as_ref()
            .and_then(|h| h.as_str().strip_prefix("host-"))
            .and_then(|i| i.parse().ok())
            .expect("placed on a lab host")
    }

    /// The serial console of a VM, on the socket its QEMU has in its host's data directory
    /// (a file, so reachable from any namespace; the API carries only local consoles).
    pub async fn console(&self, vm: &Vm) -> Console {
        let sock = self
            .host_dir(Self::host_of(vm))
            .join("qemu/vms")
            .join(vm.id.to_string())
            .join("console.sock");
        Console::open_socket(&sock, vm.name.as_str()).await
    }

    /// What of the virtual networks is on host `i`: links with the `pn` prefix and Panal's
    /// nftables tables.
    pub fn leftovers(&self, i: usize) -> Vec<String> {
        let ns = self.lab.netns_name(i);
        let links = Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show"])
            .output()
            .expect("ip link");
        let mut left: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
            .filter(|n| n.starts_with("pn"))
            .collect();
        let tables = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "list", "tables"])
            .output()
            .expect("nft");
        left.extend(
            String::from_utf8_lossy(&tables.stdout)
                .lines()
                .filter(|l| l.contains("panal"))
                .map(str::to_owned),
        );
        left
    }
}
