//! Per-VM cgroups with CPU and memory limits, on cgroup v2 (unified) or v1 (separate `cpu` and
//! `memory` hierarchies, as on our build hosts). Layout: `<root>/panal/<vm-id>` in each
//! hierarchy. QEMU enters the groups before it execs (see `process.rs`), so everything it
//! allocates is charged. Removal only succeeds once the process is dead; it is idempotent.

use crate::DriverError;
use std::path::{Path, PathBuf};

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

/// One VM's cgroup(s).
#[derive(Clone, Debug)]
pub struct VmCgroup {
    mode: CgroupMode,
    vm: String,
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
        vm: &str,
        vcpus: u32,
        memory_limit: u64,
    ) -> Result<VmCgroup, DriverError> {
        let cg = VmCgroup {
            mode: mode.clone(),
            vm: vm.to_string(),
        };
        if let CgroupMode::V2(root) = mode {
            // Controllers must be enabled for the children of every ancestor.
            let panal = root.join("panal");
            std::fs::create_dir_all(&panal).map_err(|e| io(&panal, e))?;
            for dir in [root.as_path(), panal.as_path()] {
                write(dir.join("cgroup.subtree_control"), "+cpu +memory")?;
            }
        }
        for dir in mode.dirs(vm) {
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
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

    /// A handle on existing groups (after re-attach).
    pub fn existing(mode: &CgroupMode, vm: &str) -> VmCgroup {
        VmCgroup {
            mode: mode.clone(),
            vm: vm.to_string(),
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

    /// Removes the groups; missing ones are fine. Fails while a process is still inside.
    pub fn remove(&self) -> Result<(), DriverError> {
        for dir in self.dirs() {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&dir, e)),
            }
        }
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
