//! Shared scaffolding of the real-QEMU end-to-end tests (`e2e_*.rs`) and the VM benchmarks: a
//! platform with the QEMU driver on a temporary data directory; a guard that, even when a test
//! panics, kills every process whose command line names that directory (QEMU, a spawned
//! `panal up`) and removes the VMs' cgroups; bounded waits on a VM's phase and on its console
//! history (API `console/log`); and an interactive console over the API's websocket.

#![allow(dead_code)]

pub mod console;
pub mod up;

use panal::platform::{Platform, PlatformConfig};
use panal_client::Client;
use panal_driver::qemu::GuestImage;
use panal_types::VmId;
use panal_types::operation::OperationState;
use panal_types::vm::{MachineProfile, Vm, VmAccepted, VmCreate, VmPhase};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The line the Panal guest prints on its serial console once its init has run.
pub const READY_LINE: &str = panal_driver::qemu::READY_LINE;

/// Boot timeout of one TCG guest on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(60);

/// The built guest directory, or a panic that says how to build it (never a silent skip).
pub fn guest_dir() -> PathBuf {
    let dir = GuestImage::default_dir();
    if let Err(why) = GuestImage::open(&dir) {
        panic!("{why}");
    }
    dir
}

/// Kills, on drop, every process whose command line mentions the directory, then removes the
/// cgroups of the VMs whose run directories are in it.
pub struct Cleanup {
    pub dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        kill_mentioning(&self.dir);
        let vms = self.dir.join("qemu").join("vms");
        let Ok(rd) = std::fs::read_dir(&vms) else {
            return;
        };
        for e in rd.flatten() {
            for root in [
                "/sys/fs/cgroup/cpu/panal",
                "/sys/fs/cgroup/memory/panal",
                "/sys/fs/cgroup/panal",
            ] {
                let d = Path::new(root).join(e.file_name());
                // The kernel refuses to remove a cgroup until its last task is reaped.
                for _ in 0..250 {
                    if !d.exists() || std::fs::remove_dir(&d).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// SIGKILLs every other process whose command line contains `marker`; waits until they are dead.
pub fn kill_mentioning(marker: &Path) -> Vec<u32> {
    let needle = marker.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    let mut killed = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
            sigkill(pid);
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    killed
}

/// Sends SIGKILL (a process already gone is fine).
pub fn sigkill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether `pid` runs: a zombie counts as dead (PID 1 here reaps slowly; see DESIGN.md).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    !matches!(
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next()),
        Some("Z") | Some("X") | None
    )
}

/// Resident memory of a process in KiB (0 if gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The live QEMU process of a VM, from the driver's pid file in the data directory.
pub fn qemu_pid(data: &Path, id: VmId) -> Option<u32> {
    let f = data
        .join("qemu")
        .join("vms")
        .join(id.to_string())
        .join("qemu.pid");
    let pid: u32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

/// A temporary data directory whose processes are killed and cgroups removed on drop (for
/// tests that run `panal up` as a child process).
pub struct Scratch {
    pub data: PathBuf,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl Scratch {
    /// A fresh directory.
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("panal-e2e-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        Scratch {
            data: data.clone(),
            _cleanup: Cleanup { dir: data },
            _dir: dir,
        }
    }
}

/// An in-process platform with the QEMU driver on a temporary data directory. Field order is
/// drop order: the platform stops, then every process of the directory dies, then it is removed.
pub struct E2e {
    pub client: Client,
    pub platform: Option<Platform>,
    pub data: PathBuf,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl E2e {
    /// Starts a platform on a fresh directory and a free port.
    pub async fn start() -> E2e {
        Self::start_with(|_| {}).await
    }

    /// Starts a platform with adjusted settings (`data_dir` is already set).
    pub async fn start_with(adjust: impl FnOnce(&mut PlatformConfig)) -> E2e {
        let guest = guest_dir();
        let dir = tempfile::Builder::new()
            .prefix("panal-e2e-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let mut cfg = PlatformConfig::new(data.clone());
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.guest_dir = Some(guest);
        cfg.qemu = true;
        adjust(&mut cfg);
        let platform = Platform::start(cfg).await.expect("platform starts");
        let client = Client::new(&platform.url(), &platform.token);
        assert!(
            client.image(None, "tiny").await.is_ok(),
            "the built-in image \"tiny\" was not imported"
        );
        E2e {
            client,
            platform: Some(platform),
            data: data.clone(),
            _cleanup: Cleanup { dir: data },
            _dir: dir,
        }
    }

    /// Creates a VM and returns it as accepted.
    pub async fn create(&self, req: &VmCreate) -> Vm {
        self.client
            .create_vm(req)
            .await
            .expect("create accepted")
            .vm
    }
}

/// A create request for the built-in `tiny` guest (kernel + initramfs) on microvm.
pub fn tiny(name: &str, memory_mib: u64) -> VmCreate {
    VmCreate {
        name: name.into(),
        image: Some("tiny".into()),
        machine: Some(MachineProfile::Microvm),
        vcpus: Some(1),
        memory_bytes: Some(memory_mib << 20),
        ..VmCreate::default()
    }
}

/// Waits until `check` holds for the VM record; panics with the last record otherwise.
pub async fn wait_vm(
    client: &Client,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Vm) -> bool,
) -> Vm {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(vm) = client.vm(None, name).await {
            if check(&vm) {
                return vm;
            }
            last = Some(vm);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = last.map(|v| format!("{:#?}", v.status));
    panic!("vm {name}: {what} not reached within {timeout:?}; last status: {status:?}");
}

/// Waits until the VM is in `phase`.
pub async fn wait_phase(client: &Client, name: &str, phase: VmPhase, timeout: Duration) -> Vm {
    wait_vm(client, name, phase.as_str(), timeout, |v| {
        v.status.phase == phase
    })
    .await
}

/// The console history through the API (empty if there is none yet).
pub async fn console_log(client: &Client, name: &str) -> String {
    match client.console_log(None, name, false).await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the console history through the API holds `needle` at least `count` times;
/// returns the history.
pub async fn wait_log(
    client: &Client,
    name: &str,
    needle: &str,
    count: usize,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = console_log(client, name).await;
        if text.matches(needle).count() >= count {
            return text;
        }
        if Instant::now() > deadline {
            let tail: String = text
                .chars()
                .rev()
                .take(1500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "vm {name}: {needle:?} x{count} not in the console log within {timeout:?}; tail:\n{tail}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for an accepted request's operation to end; panics unless it succeeded.
pub async fn op_ok(client: &Client, accepted: &VmAccepted, timeout: Duration) {
    operation_ok(client, &accepted.operation, timeout).await;
}

/// Waits for an operation to end; panics unless it succeeded.
pub async fn operation_ok(
    client: &Client,
    op: &panal_types::operation::Operation,
    timeout: Duration,
) {
    let id = op.id.to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let op = client
            .wait_operation(&id, Duration::from_secs(5))
            .await
            .expect("wait operation");
        match op.state {
            OperationState::Running if Instant::now() < deadline => continue,
            OperationState::Succeeded => return,
            _ => panic!(
                "operation {:?} on {} did not succeed within {timeout:?}: {op:#?}",
                op.kind, op.target.name
            ),
        }
    }
}

/// Watches the driver's run directories for a new VM: returns when its `vm.json` and its
/// `qemu.pid` first appeared (polled every 100 us on a thread of its own).
pub fn watch_launch(vms: PathBuf) -> std::thread::JoinHandle<Option<(Instant, Instant)>> {
    let known: HashSet<_> = std::fs::read_dir(&vms)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut meta = None;
        while t0.elapsed() < BOOT {
            let fresh = std::fs::read_dir(&vms)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| !known.contains(&e.file_name()));
            if let Some(dir) = fresh.map(|e| e.path()) {
                if meta.is_none() && dir.join("vm.json").exists() {
                    meta = Some(Instant::now());
                }
                if let Some(m) = meta
                    && dir.join("qemu.pid").exists()
                {
                    return Some((m, Instant::now()));
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        None
    })
}
