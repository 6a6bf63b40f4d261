//! Working inside network namespaces from a test process: run code on a thread that has joined
//! one (a network namespace belongs to a thread, and sockets and child processes keep the one
//! they were made in), run `ip` batches, and kill every process inside some namespaces.
//!
//! Children are started from a joined thread rather than with `ip netns exec`, which also gives
//! the child a private mount namespace with a fresh `/sys`: that would hide the cgroup
//! hierarchies under `/sys/fs/cgroup` from an agent and its QEMU processes.

use crate::common_e2e::{alive, sigkill};
use nix::sched::{CloneFlags, setns};
use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `ip netns add` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Opens a namespace file, or panics naming it.
pub fn open_ns(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open network namespace {}: {e}", path.display()))
}

/// Moves the calling thread into the network namespace `ns`.
pub fn join(ns: &File) {
    setns(ns, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into a network namespace: {e}"));
}

/// Runs `f` on a fresh thread that has joined `ns`; a panic in `f` is the caller's panic.
pub fn in_ns<R: Send>(ns: &File, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            join(ns);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs `ip [-n netns] [-force] -batch -` in namespace `ns` with `script` on stdin; returns
/// `ip`'s complaints, or `Ok` when every line succeeded. With `force` it goes on past failures.
pub fn ip_batch(ns: &File, netns: Option<&str>, force: bool, script: &str) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(name) = netns {
        cmd.args(["-n", name]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child =
        in_ns(ns, || cmd.spawn()).unwrap_or_else(|e| panic!("run `ip` (install iproute2): {e}"));
    let fed = child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes());
    let out = child.wait_with_output().expect("wait for `ip`");
    match (fed, out.status.success()) {
        (Ok(()), true) => Ok(()),
        (fed, _) => Err(format!(
            "ip -batch failed ({}, stdin: {fed:?}): {}\nscript:\n{script}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Opens the named namespaces that exist. Holding them keeps their identity (the inode that
/// `/proc/PID/ns/net` of their processes points to) valid after `ip netns del`.
pub fn open_existing(names: &[String]) -> Vec<File> {
    names
        .iter()
        .filter_map(|n| File::open(netns_path(n)).ok())
        .collect()
}

/// SIGKILLs every other process that lives in one of the namespaces and waits (up to 5 s)
/// until none is left. This catches what a process group kill misses: processes that started
/// their own session, such as a detached QEMU. Never kills in a protected namespace.
pub fn kill_inside(namespaces: &[File]) {
    let ids = kill_targets(namespaces);
    if ids.is_empty() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = pids_inside(&ids);
        if found.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("netns lab: processes {found:?} outlived SIGKILL for 5 s");
            return;
        }
        found.into_iter().for_each(sigkill);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The identities of the namespaces whose processes may be killed: all of `namespaces` but
/// this process's (the root of its labs) and PID 1's. A lab name bound to one of those (say,
/// by `ip netns attach` to a process that had not left the root namespace yet) must not make a
/// sweep kill every process on the machine, which is what happened once before this check
/// existed. PID 1's namespace is unreadable on some machines (ours: EACCES even for root); if
/// this process's is, nothing is killed.
pub fn kill_targets(namespaces: &[File]) -> HashSet<(u64, u64)> {
    let id = |p: &str| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let Some(own) = id("/proc/self/ns/net") else {
        eprintln!("netns lab: cannot read this process's namespace; killing nothing");
        return HashSet::new();
    };
    let protected: Vec<(u64, u64)> = [Some(own), id("/proc/1/ns/net")]
        .into_iter()
        .flatten()
        .collect();
    namespaces
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| (m.dev(), m.ino()))
        .filter(|id| {
            let own = protected.contains(id);
            if own {
                eprintln!("netns lab: a lab namespace is the root namespace; not killing in it");
            }
            !own
        })
        .collect()
}

/// Live processes (not this one) whose network namespace is one of `ids` (device, inode).
fn pids_inside(ids: &HashSet<(u64, u64)>) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            // A process that is gone or a zombie has no namespace link to follow.
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
        })
        .filter(|&pid| alive(pid))
        .collect()
}
