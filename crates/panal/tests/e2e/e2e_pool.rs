//! Three hosts, one pool, real QEMU: a `panal server` in the lab's gateway namespace and three
//! `panal agent`s, each in its own network namespace with its own address, joined with tokens
//! over mutual TLS. Shows placement by spread and by pack (the server restarted in between, the
//! agents reconnecting with their VMs untouched), a hard anti-affinity group kept apart, a cut
//! link turning its host not-ready within the lease TTL and, restored, ready again with no VM
//! duplicated, and a drain moving a VM off a host (stopped there, started on another, once)
//! with its volume in a shared pool opened in place on the new host (the same file, no copy).
//! Every QEMU process is checked to run in the network namespace of the host the control plane
//! placed its VM on.

use crate::common_e2e;
use crate::common_netns;

use common_e2e::{Scratch, guest_dir, tiny, wait_vm};
use common_netns::{NetLab, NsChild};
use panal_client::Client;
use panal_types::host::{Accelerator, Host, HostState};
use panal_types::join::JoinTokenCreate;
use panal_types::vm::{GroupPolicy, HypervisorKind, PlacementGroupRequest, Vm, VmPhase};
use panal_types::volume::VolumeCreate;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const API: &str = "127.0.0.1:7180";
const AGENT_PORT: u16 = 7181;
/// Host lease TTL given to the server; the cut host must be not-ready within it (plus the
/// liveness controller's reaction, well under a second).
const LEASE_TTL: u64 = 6;
const RUNNING: Duration = Duration::from_secs(90);

struct Pool<'a> {
    lab: &'a NetLab,
    bin: &'static str,
    root: PathBuf,
    server: Option<NsChild>,
    agents: Vec<NsChild>,
    /// Kills what mentions each host's directory and removes its VMs' cgroups, also on panic.
    _cleanups: Vec<common_e2e::Cleanup>,
}

impl Pool<'_> {
    fn cp_dir(&self) -> PathBuf {
        self.root.join("cp")
    }

    /// The shared storage pool's directory (one for all hosts).
    fn shared_dir(&self) -> PathBuf {
        self.root.join("shared-pool")
    }

    fn host_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("host-{i}"))
    }

    fn log(&self, name: &str) -> Stdio {
        Stdio::from(std::fs::File::create(self.root.join(format!("{name}.log"))).unwrap())
    }

    /// Starts (or restarts) the control plane with a placement strategy.
    fn start_server(&mut self, placement: &str) {
        if let Some(mut old) = self.server.take() {
            old.kill();
        }
        let gw = self.lab.gateway_ip();
        let child = self.lab.spawn_gateway(
            Command::new(self.bin)
                .args(["server", "--data-dir"])
                .arg(self.cp_dir())
                .args(["--listen", API])
                .args(["--agent-listen", &format!("{gw}:{AGENT_PORT}")])
                .args(["--host-lease-ttl", &LEASE_TTL.to_string()])
                .args(["--placement", placement])
                .arg("--guest-dir")
                .arg(guest_dir())
                .env("PANAL_LOG", "info")
                .stdout(self.log(&format!("server-{placement}")))
                .stderr(self.log(&format!("server-{placement}.err"))),
        );
        self.server = Some(child);
    }

    fn start_agent(&mut self, i: usize, token: &str) {
        let url = format!("https://{}:{AGENT_PORT}", self.lab.gateway_ip());
        let child = self.lab.spawn(
            i,
            Command::new(self.bin)
                .args(["agent", "--join", &url, "--token", token])
                .args(["--name", &host(i)])
                .arg("--data-dir")
                .arg(self.host_dir(i))
                .args(["--heartbeat", "2"])
                // The same directory on every host stands in for an NFS mount.
                .arg("--pool")
                .arg(format!("shared={},shared", self.shared_dir().display()))
                .env("PANAL_LOG", "info")
                .stdout(self.log(&format!("agent-{i}")))
                .stderr(self.log(&format!("agent-{i}.err"))),
        );
        self.agents.push(child);
    }

    /// The admin client of the running server (inside the gateway namespace).
    async fn client(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.cp_dir().join("client.toml"))
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
            assert!(
                Instant::now() < deadline,
                "the server did not come up; see {}",
                self.root.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Which host's data directory holds the live QEMU of `vm`, checked against the control
    /// plane's placement and the process's network namespace. Panics on two QEMUs for one VM.
    fn qemu_host(&self, vm: &Vm) -> (usize, u32) {
        let found: Vec<(usize, u32)> = (0..3)
            .filter_map(|i| common_e2e::qemu_pid(&self.host_dir(i), vm.id).map(|p| (i, p)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{} must run exactly once, found {found:?}",
            vm.name
        );
        let (i, pid) = found[0];
        assert_eq!(
            vm.status.host.as_ref().map(|h| h.to_string()),
            Some(host(i)),
            "{} runs on host {i} but is placed on {:?}",
            vm.name,
            vm.status.host
        );
        let ns_of = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).unwrap();
        assert_eq!(
            ns_of(Path::new(&format!("/proc/{pid}/ns/net"))),
            ns_of(&Path::new("/run/netns").join(self.lab.netns_name(i))),
            "{}'s QEMU is not in host {i}'s network namespace",
            vm.name
        );
        (i, pid)
    }
}

/// Runs one qemu-io command on a qcow2 file, failing on any error or pattern mismatch.
fn qemu_io(file: &Path, cmd: &str) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(file)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed"),
        "qemu-io {cmd}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn host(i: usize) -> String {
    format!("host-{i}")
}

async fn wait_hosts(client: &Client, what: &str, cond: impl Fn(&[Host]) -> bool) -> Vec<Host> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(page) = client.list_hosts(None).await
            && cond(&page.items)
        {
            return page.items;
        }
        assert!(Instant::now() < deadline, "hosts never became {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_ready(hosts: &[Host]) -> bool {
    hosts.len() == 3 && hosts.iter().all(|h| h.state == HostState::Ready)
}

async fn create_running(client: &Client, req: panal_types::vm::VmCreate) -> Vm {
    let name = req.name.clone();
    client.create_vm(&req).await.expect("create accepted");
    wait_vm(client, &name, "running", RUNNING, |v| {
        v.status.phase == VmPhase::Running
    })
    .await
}

async fn delete_all(client: &Client, names: &[&str]) {
    for n in names {
        client.delete_vm(None, n).await.expect("delete accepted");
    }
    let deadline = Instant::now() + RUNNING;
    for n in names {
        while client.vm(None, n).await.is_ok() {
            assert!(Instant::now() < deadline, "{n} was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn three_namespace_hosts_form_one_pool() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(&scratch.data).unwrap();
    let lab = NetLab::new(3);
    let mut pool = Pool {
        lab: &lab,
        bin: env!("CARGO_BIN_EXE_panal"),
        root: scratch.data.clone(),
        server: None,
        agents: Vec::new(),
        _cleanups: (0..3)
            .map(|i| common_e2e::Cleanup {
                dir: scratch.data.join(format!("host-{i}")),
            })
            .collect(),
    };
    pool.start_server("spread");
    lab.block_on_in_gateway(async {
        let client = pool.client().await;

        // Join: one single-use token per host, each agent in its own namespace.
        for i in 0..3 {
            let t = client
                .create_join_token(&JoinTokenCreate::default())
                .await
                .expect("token");
            pool.start_agent(i, &t.token);
        }
        let hosts = wait_hosts(&client, "ready", all_ready).await;
        for h in &hosts {
            let qemu = h
                .inventory
                .hypervisors
                .iter()
                .find(|d| d.kind == HypervisorKind::Qemu)
                .expect("qemu probed");
            assert!(qemu.available, "{}: {}", h.name, qemu.detail);
            assert!(matches!(
                qemu.accelerator,
                Accelerator::Tcg | Accelerator::Kvm
            ));
            assert!(h.inventory.cpus > 0 && h.inventory.memory_bytes > 0);
            assert!(
                !h.inventory.cpu_flags.is_empty(),
                "{}: no CPU flags",
                h.name
            );
            let pool = h.inventory.storage.iter().find(|p| p.name == "default");
            assert!(
                pool.is_some_and(|p| p.total_bytes > 0 && p.free_bytes <= p.total_bytes),
                "{}: storage {:?}",
                h.name,
                h.inventory.storage
            );
        }

        // Spread: three VMs, three hosts.
        let mut spread = Vec::new();
        for n in ["spread-0", "spread-1", "spread-2"] {
            spread.push(create_running(&client, tiny(n, 128)).await);
        }
        let placed: BTreeSet<usize> = spread.iter().map(|v| pool.qemu_host(v).0).collect();
        assert_eq!(placed.len(), 3, "spread put the VMs on {placed:?}");
        let pids: HashMap<String, u32> = spread
            .iter()
            .map(|v| (v.name.to_string(), pool.qemu_host(v).1))
            .collect();
        // A real guest booted there: its console history (on the agent's disk) has the ready line.
        let log = pool
            .host_dir(pool.qemu_host(&spread[0]).0)
            .join("qemu/vms")
            .join(spread[0].id.to_string())
            .join("console.log");
        let deadline = Instant::now() + common_e2e::BOOT;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(common_e2e::READY_LINE)
        {
            assert!(
                Instant::now() < deadline,
                "the guest on a remote host did not boot"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The control plane restarts with the pack strategy; the agents reconnect and their VMs
        // are the same processes, once each.
        pool.start_server("pack");
        let client = pool.client().await;
        wait_hosts(&client, "ready after the restart", all_ready).await;
        for v in &spread {
            let now = wait_vm(&client, v.name.as_str(), "running", RUNNING, |x| {
                x.status.phase == VmPhase::Running
            })
            .await;
            assert_eq!(
                pool.qemu_host(&now).1,
                pids[v.name.as_str()],
                "{} was restarted",
                v.name
            );
        }

        // Pack: two more VMs land together.
        let a = create_running(&client, tiny("pack-a", 128)).await;
        let b = create_running(&client, tiny("pack-b", 128)).await;
        assert_eq!(
            pool.qemu_host(&a).0,
            pool.qemu_host(&b).0,
            "pack split the VMs"
        );
        delete_all(&client, &["pack-a", "pack-b"]).await;

        // Hard anti-affinity beats pack: the group's members go to three different hosts.
        let mut apart = BTreeSet::new();
        for n in ["apart-0", "apart-1", "apart-2"] {
            let mut req = tiny(n, 128);
            req.placement_group = Some(PlacementGroupRequest {
                name: "apart".into(),
                policy: GroupPolicy::AntiAffinity,
                soft: false,
            });
            let v = create_running(&client, req).await;
            apart.insert(pool.qemu_host(&v).0);
        }
        assert_eq!(apart.len(), 3, "anti-affinity put the group on {apart:?}");
        delete_all(&client, &["apart-0", "apart-1", "apart-2"]).await;

        // Cut host 2's link: not-ready within the TTL, its VM keeps running there.
        let victim = spread
            .iter()
            .find(|v| pool.qemu_host(v).0 == 2)
            .unwrap()
            .clone();
        let cut_at = Instant::now();
        lab.cut(2);
        wait_hosts(&client, "host-2 not-ready", |hs| {
            hs.iter()
                .any(|h| h.name.as_str() == "host-2" && h.state == HostState::NotReady)
        })
        .await;
        let took = cut_at.elapsed();
        println!("host-2 turned not-ready {took:?} after its link was cut (TTL {LEASE_TTL} s)");
        assert!(
            took <= Duration::from_secs(LEASE_TTL + 2),
            "not-ready took {took:?}, TTL is {LEASE_TTL} s"
        );
        assert_eq!(pool.qemu_host(&victim).1, pids[victim.name.as_str()]);

        // Restored: ready again, nothing duplicated, nothing restarted.
        lab.restore(2);
        wait_hosts(&client, "ready after the link came back", all_ready).await;
        for v in &spread {
            let now = client.vm(None, v.name.as_str()).await.unwrap();
            assert_eq!(now.status.phase, VmPhase::Running, "{}", v.name);
            assert_eq!(
                pool.qemu_host(&now).1,
                pids[v.name.as_str()],
                "{} was restarted",
                v.name
            );
        }

        // A volume in the shared pool, attached to host 2's VM while it is stopped (known
        // bytes written into it first); the VM starts again on host 2 with it.
        let name = victim.name.as_str();
        let stop = client.stop_vm(None, name, true).await.expect("stop");
        common_e2e::operation_ok(&client, &stop.operation, RUNNING).await;
        let vol = client
            .create_volume(&VolumeCreate {
                name: "shared-data".into(),
                project: None,
                size_bytes: Some(16 << 20),
                format: None,
                pool: Some("shared".into()),
                host: Some("host-2".into()),
                source: None,
            })
            .await
            .expect("create shared volume");
        common_e2e::operation_ok(&client, &vol.operation, RUNNING).await;
        assert!(vol.volume.shared);
        let vfile = pool.shared_dir().join(&vol.volume.file);
        let inode = std::fs::metadata(&vfile).expect("volume file").ino();
        qemu_io(&vfile, "write -P 0x42 0 4096");
        let att = client
            .attach_volume(None, "shared-data", name)
            .await
            .expect("attach");
        common_e2e::operation_ok(&client, &att.operation, RUNNING).await;
        let start = client.start_vm(None, name).await.expect("start");
        common_e2e::operation_ok(&client, &start.operation, RUNNING).await;
        let before = client.vm(None, name).await.unwrap();
        assert_eq!(pool.qemu_host(&before).0, 2, "restarted where it was");

        // Drain host 2: its VM is stopped there and started on another host, once; the host
        // ends in maintenance with no QEMU left. Its shared volume goes with it, opened in
        // place on the new host: the same file, not a copy.
        let accepted = client
            .drain_host("host-2", true)
            .await
            .expect("drain accepted");
        let op = client
            .wait_operation(&accepted.operation.id.to_string(), RUNNING)
            .await
            .expect("drain finished");
        assert_eq!(
            op.state,
            panal_types::operation::OperationState::Succeeded,
            "{op:?}"
        );
        let moved = wait_vm(
            &client,
            victim.name.as_str(),
            "running elsewhere",
            RUNNING,
            |v| {
                v.status.phase == VmPhase::Running
                    && v.status.host.as_ref().map(|h| h.as_str()) != Some("host-2")
            },
        )
        .await;
        let (_, new_pid) = pool.qemu_host(&moved);
        assert_ne!(pool.qemu_host(&moved).0, 2);
        let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(&vol.volume.file),
            "the moved VM opens its shared volume"
        );
        assert_eq!(std::fs::metadata(&vfile).unwrap().ino(), inode, "same file");
        let files: Vec<_> = std::fs::read_dir(pool.shared_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(files.len(), 1, "no copy in the shared pool: {files:?}");
        let drained = client.host("host-2").await.unwrap();
        assert_eq!(drained.state, HostState::Maintenance);
        assert_eq!(drained.allocation.vms, 0);
        delete_all(&client, &["spread-0", "spread-1", "spread-2"]).await;
        // The bytes written before the move are in the file; the volume is free to delete.
        qemu_io(&vfile, "read -P 0x42 0 4096");
        let del = client
            .delete_volume(None, "shared-data")
            .await
            .expect("delete volume");
        common_e2e::operation_ok(&client, &del.operation, RUNNING).await;
        assert!(!vfile.exists());
    });
    drop(pool);
}
