//! Shared helpers for the real-QEMU tests: a guard that kills every QEMU it started and removes
//! its state directory even when a test fails (Drop), and a serial console driver that types
//! into the console socket and waits for text in the console history.

#![allow(dead_code)]

use panal_driver::qemu::{AccelMode, GuestImage, QemuConfig, QemuDriver};
use panal_driver::{DynVmHandle, MigrationStatus, RuntimeState, VmLaunch};
use panal_types::VmId;
use panal_types::vm::MachineProfile;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// The built guest, or a panic that says how to build it (never a silent skip).
pub fn guest() -> GuestImage {
    match GuestImage::locate() {
        Ok(g) => g,
        Err(why) => panic!("{why}"),
    }
}

/// Owns a state directory; on drop kills every QEMU whose pid file is in it, then removes it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub guest: GuestImage,
}

impl Env {
    pub fn new() -> Env {
        let guest = guest();
        let dir = tempfile::Builder::new()
            .prefix("panal-qemu-test-")
            .tempdir()
            .expect("tempdir");
        Env { dir, guest }
    }

    pub fn config(&self) -> QemuConfig {
        let mut c = QemuConfig::new(self.dir.path());
        c.accel = AccelMode::Tcg;
        c.disk_boot_kernel = Some(self.guest.direct_kernel(MachineProfile::Microvm));
        c
    }

    pub fn driver(&self) -> QemuDriver {
        QemuDriver::new(self.config())
    }

    pub fn microvm(&self, memory_mib: u64) -> VmLaunch {
        VmLaunch {
            id: VmId::new(),
            display_name: "test/vm".into(),
            vcpus: 1,
            memory_bytes: memory_mib << 20,
            machine: MachineProfile::Microvm,
            boot: self.guest.boot_initramfs(MachineProfile::Microvm, ""),
            disks: vec![],
            nics: vec![],
            hotplug_slots: 4,
            incoming: None,
            post_copy: false,
        }
    }

    pub fn run_dir(&self, id: VmId) -> PathBuf {
        self.dir.path().join("vms").join(id.to_string())
    }

    pub fn console(&self, id: VmId) -> Console {
        Console {
            log: self.run_dir(id).join("console.log"),
            sock: self.run_dir(id).join("console.sock"),
            offset: 0,
            stream: None,
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let vms = self.dir.path().join("vms");
        if let Ok(rd) = std::fs::read_dir(&vms) {
            for e in rd.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
                    && let Ok(pid) = pid.trim().parse::<i32>()
                {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let marker = e.path().to_string_lossy().into_owned();
                    if String::from_utf8_lossy(&cmd).contains(&marker) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                // Remove the VM's cgroups (v1 layout here; v2 path too), once QEMU is gone.
                let name = e.file_name();
                for root in [
                    "/sys/fs/cgroup/cpu/panal",
                    "/sys/fs/cgroup/memory/panal",
                    "/sys/fs/cgroup/panal",
                ] {
                    let d = Path::new(root).join(&name);
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
}

/// The serial console of one VM: types into the socket, reads the history file.
pub struct Console {
    pub log: PathBuf,
    pub sock: PathBuf,
    /// Where the next wait starts reading the history.
    pub offset: usize,
    stream: Option<tokio::net::unix::OwnedWriteHalf>,
}

impl Console {
    /// Waits until `needle` appears in the history after `offset`; moves `offset` past it and
    /// returns the text up to and including the needle's line.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(&text).into_owned();
            if let Some(rest) = text.get(self.offset..)
                && let Some(i) = rest.find(needle)
            {
                let end = rest[i..]
                    .find('\n')
                    .map(|n| i + n + 1)
                    .unwrap_or(rest.len());
                let seen = rest[..end].to_string();
                self.offset += end;
                return seen;
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
                    "{needle:?} not seen on the console within {timeout:?}; console tail:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All history text after `offset`, without moving it.
    pub fn since_offset(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .get(self.offset..)
            .unwrap_or("")
            .to_string()
    }

    /// Forgets the connection (after the VM's QEMU was replaced by a new one).
    pub fn reset(&mut self) {
        self.stream = None;
    }

    /// Types a line into the console.
    pub async fn send(&mut self, line: &str) {
        if self.stream.is_none() {
            // Typing before the shell has started loses the input: wait for its first prompt.
            self.wait_for("panal# ", Duration::from_secs(30)).await;
            self.connect().await;
        }
        let s = self.stream.as_mut().expect("stream");
        s.write_all(format!("{line}\n").as_bytes())
            .await
            .expect("console write");
    }

    /// Connects to the console socket now, without waiting for a prompt in this QEMU's history
    /// (a migrated guest's shell started on another QEMU, whose history this is not).
    pub async fn connect(&mut self) {
        let stream = UnixStream::connect(&self.sock)
            .await
            .expect("console socket");
        // QEMU stalls the guest's serial output while a connected client does not read:
        // drain it (the history file has everything).
        let (mut rd, wr) = stream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rd, &mut tokio::io::sink()).await;
        });
        self.stream = Some(wr);
    }

    /// Runs a command and returns its output, framed by unique markers.
    pub async fn run(&mut self, cmd: &str, timeout: Duration) -> String {
        let tag = format!("M{}", rand_tag());
        // Quotes split the markers in the typed (echoed) line, so only the output matches.
        self.send(&format!("echo {tag}-BE''GIN; {cmd}; echo {tag}-E''ND"))
            .await;
        let out = self.wait_for(&format!("{tag}-END"), timeout).await;
        let begin = format!("{tag}-BEGIN");
        let start = out.rfind(&begin).map(|i| i + begin.len()).unwrap_or(0);
        let body = &out[start..];
        body.rsplit_once(&format!("{tag}-END"))
            .map(|(b, _)| b)
            .unwrap_or(body)
            .trim()
            .to_string()
    }
}

fn rand_tag() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(t) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}

/// Boot timeout for one TCG guest on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(60);

/// A free loopback port (bound then released: the destination binds it right after).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The destination host's driver in a migration test. No cgroups: the two "hosts" share this
/// machine's cgroup tree, where a VM's cgroup is named by its id, which both sides share.
pub fn destination_driver(env: &Env) -> QemuDriver {
    let mut c = env.config();
    c.cgroups = false;
    QemuDriver::new(c)
}

/// Polls a migration until it has ended one way or another.
pub async fn wait_finished(vm: &DynVmHandle, timeout: Duration) -> MigrationStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let s = vm.migration_status().await.expect("status");
        if s.phase.is_finished() {
            return s;
        }
        assert!(Instant::now() < deadline, "migration still {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a VM's state until it is `want`.
pub async fn wait_state(vm: &DynVmHandle, want: RuntimeState, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = vm.state().await.expect("state");
        if s == want {
            return;
        }
        assert!(Instant::now() < deadline, "state {s:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
