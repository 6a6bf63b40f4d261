//! A process started inside a lab namespace, as the leader of its own process group, so that
//! dropping the handle kills it together with everything it started that stayed in the group,
//! and returns only once they are all dead.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::ops::{Deref, DerefMut};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The process groups of a lab's live children, which the lab kills when it drops first.
pub type Groups = Arc<Mutex<Vec<u32>>>;

/// A child process in a lab namespace; SIGKILLs its whole process group and reaps it on drop.
/// Dereferences to [`Child`] for its pid, pipes and `wait`.
pub struct NsChild {
    child: Child,
    groups: Groups,
}

impl NsChild {
    /// Wraps a child that was spawned with `process_group(0)` and registers its group.
    pub(super) fn new(child: Child, groups: Groups) -> NsChild {
        lock(&groups).push(child.id());
        NsChild { child, groups }
    }

    /// SIGKILLs the process group and reaps the leader (shadows [`Child::kill`], which would
    /// kill only the leader).
    pub fn kill(&mut self) {
        // The group outlives a reaped leader while any member lives, and the kernel hands out
        // no pid equal to a live group's id, so this reaches stragglers of a leader the test
        // already waited for; only a pid wrap-around after the whole group died could reuse it.
        let id = self.child.id();
        let _ = killpg(Pid::from_raw(id as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        wait_group_gone(id);
        // Dead now: the lab must not signal this group id again once it may be reused.
        lock(&self.groups).retain(|g| *g != id);
    }
}

impl Deref for NsChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for NsChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (up to 5 s) until no live process is left in group `pgid`: SIGKILL is delivered at
/// once but a process takes a moment to die, and callers count on it being gone.
fn wait_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && in_group(pgid) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a live (not zombie) process is in group `pgid`.
fn in_group(pgid: u32) -> bool {
    let group = pgid.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .any(|stat| {
            // After the command name: state, ppid, pgrp, ...
            let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1);
            pgrp == Some(group.as_str()) && !matches!(state, Some("Z") | Some("X") | None)
        })
}

/// The groups, even if a panicking thread poisoned the lock (cleanup must still run).
pub fn lock(groups: &Groups) -> std::sync::MutexGuard<'_, Vec<u32>> {
    groups.lock().unwrap_or_else(|p| p.into_inner())
}
