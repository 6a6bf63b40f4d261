//! Spawning QEMU detached and judging whether a QEMU process is alive.
//!
//! QEMU starts with `-daemonize`: it forks, starts a new session, writes its pid file and only
//! then lets the parent exit, with status 0 once the VM is set up or non-zero with the reason on
//! stderr. So the parent's exit status and stderr are exactly "did it start, and if not why",
//! and the VM process is never our child: it outlives the agent. Because it is not our child we
//! cannot wait for it; a dead QEMU may linger as a zombie until PID 1 reaps it, so liveness comes
//! from `/proc/PID/stat` (zombie = dead), never from `kill(pid, 0)`.

use crate::DriverError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Whether a process exists and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcState {
    /// Running or sleeping.
    Alive,
    /// Exited, not yet reaped: as good as dead.
    Zombie,
    /// No such process.
    Gone,
}

impl ProcState {
    /// Zombies count as dead.
    pub fn is_alive(self) -> bool {
        self == ProcState::Alive
    }
}

/// The state of `pid` from `/proc/PID/stat`.
///
/// A process whose main thread is a zombie while other threads still run is still exiting, and
/// still holds its files (a SIGKILLed QEMU's I/O or vCPU threads can outlive the main thread by
/// a moment, keeping the image locks): it counts as alive until every thread is gone, so that
/// "dead" means its disks are free for `qemu-img check` or another QEMU.
pub fn proc_state(pid: u32) -> ProcState {
    let Some(state) = stat_state(&format!("/proc/{pid}/stat")) else {
        return ProcState::Gone;
    };
    if !matches!(state.as_str(), "Z" | "X" | "x") {
        return ProcState::Alive;
    }
    let still_running = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            stat_state(&t.path().join("stat").to_string_lossy())
                .is_some_and(|s| !matches!(s.as_str(), "Z" | "X" | "x"))
        });
    if still_running {
        ProcState::Alive
    } else {
        ProcState::Zombie
    }
}

/// The state letter of a `/proc/.../stat` file; `None` when it is gone.
fn stat_state(path: &str) -> Option<String> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: the state follows the last ')'.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .map(str::to_owned)
}

/// Whether `pid` is a live process whose command line mentions `marker` (its run directory):
/// guards against a recycled pid after a host reboot or a long downtime.
pub fn is_our_process(pid: u32, marker: &Path) -> bool {
    if !proc_state(pid).is_alive() {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    cmdline.windows(marker.len().max(1)).any(|w| w == marker)
}

/// Reads a pid file.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sends `signal` to `pid`; a process already gone is not an error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<(), DriverError> {
    let pid = i32::try_from(pid).map_err(|_| DriverError::Invalid(format!("bad pid {pid}")))?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(DriverError::Io(format!("kill {pid}: {e}"))),
    }
}

/// How to start one QEMU.
#[derive(Debug)]
pub struct Spawn {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// Its arguments (including `-daemonize` and `-pidfile`).
    pub args: Vec<OsString>,
    /// `cgroup.procs` files to enter before exec'ing QEMU, so every allocation is charged.
    pub cgroup_procs: Vec<PathBuf>,
    /// How long QEMU may take to set the VM up.
    pub timeout: Duration,
    /// Its `-D` log, where it writes its errors instead of stderr once it has opened it.
    pub log: PathBuf,
}

/// Runs QEMU and waits for its daemonizing parent. Returns QEMU's stderr text as the
/// [`DriverError::Launch`] reason when it fails.
pub async fn spawn_daemonized(spawn: &Spawn) -> Result<(), DriverError> {
    let mut cmd = if spawn.cgroup_procs.is_empty() {
        tokio::process::Command::new(&spawn.binary)
    } else {
        // A tiny shell moves itself into the cgroups and execs QEMU: no unsafe pre_exec needed,
        // and the paths and arguments travel as separate argv entries, never as shell text.
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(r#"for p in "$@"; do shift; [ "$p" = -- ] && break; echo $$ > "$p" || exit 125; done; exec "$@""#)
            .arg("panal-qemu-launch");
        c.args(&spawn.cgroup_procs).arg("--").arg(&spawn.binary);
        c
    };
    cmd.args(&spawn.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| DriverError::Launch(format!("cannot run {}: {e}", spawn.binary.display())))?;
    let out = tokio::time::timeout(spawn.timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            DriverError::Launch(format!(
                "QEMU did not finish starting within {:?}",
                spawn.timeout
            ))
        })?
        .map_err(|e| DriverError::Launch(format!("waiting for QEMU: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        // With `-D`, QEMU reports startup errors in its log rather than on stderr.
        stderr = std::fs::read_to_string(&spawn.log)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    let reason = if out.status.code() == Some(125) {
        format!("cannot enter the VM's cgroup: {stderr}")
    } else if stderr.is_empty() {
        format!("QEMU exited with {}", out.status)
    } else {
        stderr
    };
    Err(DriverError::Launch(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_process_an_unreaped_one_and_a_missing_one() {
        assert_eq!(proc_state(std::process::id()), ProcState::Alive);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie whose only thread is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proc_state(pid) == ProcState::Alive && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(proc_state(pid), ProcState::Zombie);
        child.wait().unwrap();
        assert_eq!(proc_state(pid), ProcState::Gone);
    }
}
