//! Per-VM cgroups with CPU and memory limits, on cgroup v2 (unified) or v1 (separate `cpu` and
//! `memory` hierarchies, as on our build hosts). Layout: `<root>/panal/<vm-id>` in each
//! hierarchy. QEMU enters the groups before it execs (see `process.rs`), so everything it
//! allocates is charged. Removal only succeeds once the process is dead; it is idempotent.
//!
//! A VM's groups outlive its QEMU by a moment: the exit watcher removes them after publishing
//! the exit, retrying while the dead QEMU waits to be reaped. A launch of the same VM in that
//! moment must not lose its fresh groups to the old watcher, so each launch takes a new
//! generation in [`Owners`], and a removal only happens while its generation is the latest.

use crate::DriverError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ROOT: &str = "/sys/fs/cgroup";
const PERIOD_US: u64 = 100_000;

/// Which cgroup layout the host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// Unified hierarchy at this path.
    V2(PathBuf),
    /// Legacy: the `cpu` and `memory` hierarchies.
    V1 {
        /// Mount of the cpu controller.
        cpu: PathBuf,
        /// Mount of the memory controller.
        memory: PathBuf,
    },
    /// Neither is usable (not root, or no controllers).
    Unavailable(String),
}

impl CgroupMode {
    /// Detects the host's layout. A v2 mount with no controllers next to v1 hierarchies
    /// (systemd's "hybrid" mode) counts as v1.
    pub fn detect() -> CgroupMode {
        let root = Path::new(ROOT);
        if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
            if c.contains("memory") && c.contains("cpu") {
                return CgroupMode::V2(root.to_path_buf());
            }
            return CgroupMode::Unavailable("cgroup v2 without cpu and memory controllers".into());
        }
        let cpu = root.join("cpu");
        let memory = root.join("memory");
        if cpu.join("cpu.cfs_quota_us").exists() && memory.join("memory.limit_in_bytes").exists() {
            return CgroupMode::V1 { cpu, memory };
        }
        CgroupMode::Unavailable("no cgroup v2 controllers and no v1 cpu/memory hierarchies".into())
    }

    /// A short name for reports.
    pub fn describe(&self) -> String {
        match self {
            CgroupMode::V2(_) => "cgroup v2".into(),
            CgroupMode::V1 { .. } => "cgroup v1".into(),
            CgroupMode::Unavailable(why) => format!("no cgroups ({why})"),
        }
    }

    fn dirs(&self, vm: &str) -> Vec<PathBuf> {
        match self {
            CgroupMode::V2(root) => vec![root.join("panal").join(vm)],
            CgroupMode::V1 { cpu, memory } => {
                vec![cpu.join("panal").join(vm), memory.join("panal").join(vm)]
            }
            CgroupMode::Unavailable(_) => vec![],
        }
    }
}

/// Which launch of each VM owns its groups (one per driver; see the module header).
/// Generations are unique across VMs and never reused, so a VM's entry can go with its groups.
#[derive(Debug, Default)]
pub struct Owners(Mutex<OwnersInner>);

#[derive(Debug, Default)]
struct OwnersInner {
    last_generation: u64,
    /// VM group name -> the generation that owns its groups; absent = 0 (no launch owns them).
    owner: HashMap<String, u64>,
}

/// One VM's cgroup(s), as one launch (generation) sees them.
#[derive(Clone, Debug)]
pub struct VmCgroup {
    mode: CgroupMode,
    vm: String,
    owners: Arc<Owners>,
    generation: u64,
}

fn io(what: &Path, e: std::io::Error) -> DriverError {
    DriverError::Io(format!("cgroup {}: {e}", what.display()))
}

fn write(path: PathBuf, value: &str) -> Result<(), DriverError> {
    std::fs::write(&path, value).map_err(|e| io(&path, e))
}

impl VmCgroup {
    /// Creates the groups for `vm` with `vcpus` CPUs worth of time and `memory_limit` bytes.
    pub fn create(
        mode: &CgroupMode,
        owners: &Arc<Owners>,
        vm: &str,
        vcpus: u32,
        memory_limit: u64,
    ) -> Result<VmCgroup, DriverError> {
        if let CgroupMode::V2(root) = mode {
            // Controllers must be enabled for the children of every ancestor.
            let panal = root.join("panal");
            std::fs::create_dir_all(&panal).map_err(|e| io(&panal, e))?;
            for dir in [root.as_path(), panal.as_path()] {
                write(dir.join("cgroup.subtree_control"), "+cpu +memory")?;
            }
        }
        let cg = {
            // Taking the generation and making the directories under one lock: an earlier
            // launch's watcher removes either before (then these are new) or not at all.
            let mut owners_now = owners.0.lock();
            owners_now.last_generation += 1;
            let generation = owners_now.last_generation;
            owners_now.owner.insert(vm.to_string(), generation);
            for dir in mode.dirs(vm) {
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            }
            VmCgroup {
                mode: mode.clone(),
                vm: vm.to_string(),
                owners: owners.clone(),
                generation,
            }
        };
        cg.set_cpus(vcpus)?;
        match mode {
            CgroupMode::V2(_) => write(cg.dirs()[0].join("memory.max"), &memory_limit.to_string())?,
            CgroupMode::V1 { .. } => write(
                cg.dirs()[1].join("memory.limit_in_bytes"),
                &memory_limit.to_string(),
            )?,
            CgroupMode::Unavailable(_) => {}
        }
        Ok(cg)
    }

    /// A handle on existing groups (after re-attach, or to clean up), as the latest launch.
    pub fn existing(mode: &CgroupMode, owners: &Arc<Owners>, vm: &str) -> VmCgroup {
        let generation = owners.0.lock().owner.get(vm).copied().unwrap_or_default();
        VmCgroup {
            mode: mode.clone(),
            vm: vm.to_string(),
            owners: owners.clone(),
            generation,
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.mode.dirs(&self.vm)
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Sets the CPU limit to `vcpus` CPUs worth of time per period.
    pub fn set_cpus(&self, vcpus: u32) -> Result<(), DriverError> {
        let quota = PERIOD_US * u64::from(vcpus.max(1));
        match &self.mode {
            CgroupMode::V2(_) => write(
                self.dirs()[0].join("cpu.max"),
                &format!("{quota} {PERIOD_US}"),
            ),
            CgroupMode::V1 { .. } => {
                let d = &self.dirs()[0];
                write(d.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(d.join("cpu.cfs_quota_us"), &quota.to_string())
            }
            CgroupMode::Unavailable(_) => Ok(()),
        }
    }

    /// Removes the groups; missing ones are fine. Fails while a process is still inside. Does
    /// nothing once a later launch of the VM owns them.
    pub fn remove(&self) -> Result<(), DriverError> {
        let mut owners_now = self.owners.0.lock();
        let owner = owners_now.owner.get(&self.vm).copied().unwrap_or_default();
        if owner != self.generation {
            return Ok(());
        }
        for dir in self.dirs() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dir, e)),
            }
        }
        owners_now.owner.remove(&self.vm);
        Ok(())
    }

    /// [`Self::remove`], retrying while a dead QEMU lingers as a zombie inside (until PID 1
    /// reaps it: a second or two on some hosts).
    pub async fn remove_patiently(&self, timeout: std::time::Duration) -> Result<(), DriverError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.remove() {
                Ok(()) => return Ok(()),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test's groups even when an assertion fails.
    struct RemoveOnDrop(Vec<PathBuf>);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            for dir in &self.0 {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    /// The race CI hit: a VM shut down and launched again at once, and the first QEMU's exit
    /// watcher removed the groups the second launch had just made, before the second QEMU
    /// entered them. Uses the host's real cgroups (CI runs as root).
    #[test]
    fn an_exited_launchs_removal_leaves_a_later_launchs_groups_alone() {
        let mode = CgroupMode::detect();
        if let CgroupMode::Unavailable(why) = &mode {
            eprintln!("skipped: {why}");
            return;
        }
        let owners = Arc::new(Owners::default());
        let vm = format!("unit-test-{}", std::process::id());
        let _cleanup = RemoveOnDrop(mode.dirs(&vm));
        let mib = 1 << 20;
        let first = VmCgroup::create(&mode, &owners, &vm, 1, 64 * mib).expect("first launch");
        let second = VmCgroup::create(&mode, &owners, &vm, 2, 64 * mib).expect("relaunch");
        first.remove().expect("the first launch's late removal");
        for dir in mode.dirs(&vm) {
            assert!(
                dir.is_dir(),
                "{} was removed under the relaunch",
                dir.display()
            );
        }

        // The latest launch (and a clean-up acting as it) still removes them.
        VmCgroup::existing(&mode, &owners, &vm)
            .remove()
            .expect("clean-up");
        for dir in mode.dirs(&vm) {
            assert!(!dir.exists(), "{} was left behind", dir.display());
        }
        second.remove().expect("removing again is fine");

        // A launch after the clean-up gets a generation no earlier handle holds.
        let third = VmCgroup::create(&mode, &owners, &vm, 1, 64 * mib).expect("third launch");
        first.remove().expect("a stale removal");
        assert!(mode.dirs(&vm).iter().all(|d| d.is_dir()));
        third.remove().expect("removal");
        assert!(mode.dirs(&vm).iter().all(|d| !d.exists()));
    }
}
