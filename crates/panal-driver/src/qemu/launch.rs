//! Launching a VM and re-attaching to one: validation, the run directory, the disk overlay,
//! the cgroup, starting QEMU and connecting QMP.
//!
//! Order matters for cleanup: everything launch creates before QEMU runs (cgroup, fresh
//! sockets) is undone if QEMU fails to start; the run directory and an existing disk overlay
//! stay (the overlay is the VM's disk: it survives stop/start until `cleanup`).

use super::cgroup::VmCgroup;
use super::cmdline::{self, Disk, Plan, RunPaths};
use super::disk_safety;
use super::handle::QemuVm;
use super::process::{self, Spawn};
use super::qmp::Qmp;
use super::{MIN_MEMORY_BYTES, QemuDriver, VmMeta};
use crate::{BootSource, DriverError, VmLaunch};
use panal_types::VmId;
use panal_types::vm::MachineProfile;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where launch time went (for the benchmark).
#[derive(Clone, Copy, Debug, Default)]
pub struct LaunchTimings {
    /// From the call to the moment QEMU was spawned: the driver's own overhead.
    pub to_spawn: Duration,
    /// QEMU setting the VM up until its daemonizing parent returned.
    pub qemu_setup: Duration,
    /// The whole `launch` call.
    pub total: Duration,
}

fn validate(spec: &VmLaunch) -> Result<(), DriverError> {
    if spec.vcpus == 0 {
        return Err(DriverError::Invalid("vcpus must be at least 1".into()));
    }
    if spec.memory_bytes < MIN_MEMORY_BYTES {
        return Err(DriverError::Invalid(format!(
            "memory must be at least {} MiB",
            MIN_MEMORY_BYTES >> 20
        )));
    }
    if let BootSource::Kernel { cmdline, .. } = &spec.boot
        && cmdline.chars().any(char::is_control)
    {
        return Err(DriverError::Invalid(
            "kernel command line contains control characters".into(),
        ));
    }
    if let BootSource::Disk { format, .. } = &spec.boot
        && !matches!(format.as_str(), "qcow2" | "raw")
    {
        return Err(DriverError::Invalid(format!(
            "unsupported disk format {format:?} (qcow2 or raw)"
        )));
    }
    if spec.machine == MachineProfile::Q35 {
        check_slots(spec)?;
    }
    Ok(())
}

/// Each disk and NIC of a q35 VM on its own port, and on one the VM has.
fn check_slots(spec: &VmLaunch) -> Result<(), DriverError> {
    let devices = spec
        .disks
        .iter()
        .map(|d| (d.slot, &d.id))
        .chain(spec.nics.iter().map(|n| (n.slot, &n.id)));
    let mut taken = std::collections::BTreeMap::new();
    for (slot, id) in devices {
        if slot >= spec.hotplug_slots {
            return Err(DriverError::Invalid(format!(
                "device {id} is on slot {slot}, but the VM has {} slots",
                spec.hotplug_slots
            )));
        }
        if let Some(other) = taken.insert(slot, id) {
            return Err(DriverError::Invalid(format!(
                "devices {other} and {id} are both on slot {slot}"
            )));
        }
    }
    Ok(())
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 32
        && u.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !u.starts_with('-')
}

impl QemuDriver {
    /// The pid of the VM's QEMU if it is running (pid file + live process whose command line
    /// names this run directory).
    pub(super) fn running_pid(&self, id: VmId) -> Option<u32> {
        let paths = self.run_paths(id);
        let pid = process::read_pid_file(&paths.pid())?;
        process::is_our_process(pid, &paths.qmp()).then_some(pid)
    }

    /// [`crate::Driver::launch`], returning the concrete handle and timings.
    pub async fn launch_qemu(
        &self,
        spec: &VmLaunch,
    ) -> Result<(Arc<QemuVm>, LaunchTimings), DriverError> {
        let t0 = Instant::now();
        validate(spec)?;
        let cfg = &self.config;
        if let Some(u) = &cfg.run_as_user
            && !valid_user(u)
        {
            return Err(DriverError::Invalid(format!("bad run_as_user {u:?}")));
        }
        let facts = self.facts().await.clone();
        if let Err(why) = &facts.version {
            return Err(DriverError::Launch(why.clone()));
        }
        let accel = self.accel().await.accel;
        let paths = self.run_paths(spec.id);
        if let Some(pid) = self.running_pid(spec.id) {
            return Err(DriverError::Invalid(format!(
                "vm {} already runs (QEMU pid {pid})",
                spec.id
            )));
        }
        tokio::fs::create_dir_all(&paths.dir).await?;
        for stale in [paths.pid(), paths.qmp(), paths.console_sock()] {
            let _ = tokio::fs::remove_file(stale).await;
        }

        let micro = spec.machine == MachineProfile::Microvm;
        let mut args = cfg.kernel_args.clone();
        if micro {
            args.push(' ');
            args.push_str(&cfg.microvm_kernel_args);
            if let Some(k) = facts.tsc_khz {
                args.push_str(&format!(" tsc_early_khz={k}"));
            }
        }
        let (kernel, disk) = match &spec.boot {
            BootSource::None => {
                return Err(DriverError::Invalid(
                    "the qemu driver needs a boot source".into(),
                ));
            }
            BootSource::Kernel {
                kernel,
                initrd,
                cmdline,
            } => (
                Some((
                    kernel.clone(),
                    initrd.clone(),
                    format!("{args} {cmdline}").trim().to_string(),
                )),
                None,
            ),
            BootSource::Disk { base, format } => {
                if spec.incoming.is_some() {
                    // The guest's disk arrives from the source (disk_mirror.rs: only what the
                    // overlay holds there is copied), so it must land on an empty overlay: one
                    // left here by an earlier stay or attempt would add stale blocks.
                    for stale in [paths.overlay(), paths.disk_in_use()] {
                        match tokio::fs::remove_file(&stale).await {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                                return Err(e.into());
                            }
                            _ => {}
                        }
                    }
                }
                let disk = self.overlay(&paths, base, format).await?;
                (disk_kernel(cfg, &args, micro)?, Some(disk))
            }
            BootSource::FirstDisk => {
                if spec.disks.is_empty() {
                    return Err(DriverError::Invalid(
                        "booting from a volume needs the volume attached".into(),
                    ));
                }
                (disk_kernel(cfg, &args, micro)?, None)
            }
        };
        let max_vcpus = if micro {
            spec.vcpus
        } else {
            cfg.max_vcpus.max(spec.vcpus)
        };
        let plan = Plan {
            name: format!("panal-{}", spec.id),
            machine: spec.machine,
            accel,
            vcpus: spec.vcpus,
            max_vcpus,
            memory_mib: spec.memory_bytes.div_ceil(1 << 20),
            kernel,
            disk,
            data_disks: spec
                .disks
                .iter()
                .map(|d| (d.clone(), disk_safety::choose_cache(&[&d.path])))
                .collect(),
            nics: spec.nics.clone(),
            hotplug_slots: spec.hotplug_slots,
            paths: paths.clone(),
            sandbox: cfg.sandbox,
            run_as: cfg.run_as_user.clone(),
            tcg_tb_size_mib: cfg.tcg_tb_size_mib,
            incoming: spec.incoming.is_some(),
        };
        let meta = VmMeta {
            id: spec.id,
            display_name: spec.display_name.clone(),
            machine: spec.machine,
            accel,
            vcpus: spec.vcpus,
            max_vcpus,
            memory_bytes: spec.memory_bytes,
            balloon_bytes: spec.memory_bytes,
        };
        tokio::fs::write(
            paths.meta(),
            serde_json::to_vec_pretty(&meta).map_err(|e| DriverError::Io(e.to_string()))?,
        )
        .await?;

        let cgroup = match &facts.cgroups {
            super::CgroupMode::Unavailable(_) => None,
            mode => {
                let limit = spec.memory_bytes + cfg.memory_overhead_bytes;
                Some(VmCgroup::create(
                    mode,
                    &self.cgroup_owners,
                    &self.cgroup_name(spec.id),
                    spec.vcpus,
                    limit,
                )?)
            }
        };
        // This start's messages only: an earlier run's would explain the wrong failure.
        let _ = tokio::fs::remove_file(paths.qemu_log()).await;
        let spawn = Spawn {
            binary: cfg.qemu_binary.clone(),
            args: cmdline::build(&plan),
            cgroup_procs: cgroup
                .as_ref()
                .map(VmCgroup::procs_files)
                .unwrap_or_default(),
            timeout: cfg.launch_timeout,
            log: paths.qemu_log(),
        };
        if plan.disk.is_some() {
            // Removed by the exit watcher when QEMU shuts down by itself (disk_safety.rs).
            tokio::fs::write(paths.disk_in_use(), b"").await?;
        }
        let to_spawn = t0.elapsed();
        let started = process::spawn_daemonized(&spawn).await;
        let qemu_setup = t0.elapsed() - to_spawn;
        if let Err(e) = started {
            if let Some(cg) = &cgroup {
                let _ = cg.remove();
            }
            let _ = tokio::fs::remove_file(paths.disk_in_use()).await;
            return Err(e);
        }
        let pid = process::read_pid_file(&paths.pid())
            .ok_or_else(|| DriverError::Launch("QEMU started but wrote no pid file".into()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let qmp = match Qmp::connect(&paths.qmp(), cfg.qmp_timeout, tx).await {
            Ok(q) => q,
            Err(e) => {
                let _ = process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                return Err(DriverError::Launch(format!(
                    "QEMU started but QMP failed: {e}"
                )));
            }
        };
        let vm = QemuVm::start(
            spec.id,
            pid,
            paths,
            (qmp, rx),
            meta,
            cgroup,
            cfg.migration_tls.clone(),
        );
        if let Some(incoming) = &spec.incoming
            && let Err(e) = async {
                if spec.post_copy {
                    vm.accept_post_copy().await?;
                }
                vm.listen_incoming(incoming).await
            }
            .await
        {
            let _ = crate::VmHandle::kill(&*vm).await;
            return Err(DriverError::Launch(format!(
                "cannot wait for the incoming migration: {e}"
            )));
        }
        Ok((
            vm,
            LaunchTimings {
                to_spawn,
                qemu_setup,
                total: t0.elapsed(),
            },
        ))
    }

    /// Creates the VM's copy-on-write overlay on `base` unless one exists already.
    async fn overlay(
        &self,
        paths: &RunPaths,
        base: &std::path::Path,
        format: &str,
    ) -> Result<Disk, DriverError> {
        let overlay = paths.overlay();
        // An absolute base: qemu-img resolves relative backing paths against the overlay.
        let base = tokio::fs::canonicalize(base)
            .await
            .map_err(|e| DriverError::Launch(format!("disk image {}: {e}", base.display())))?;
        if tokio::fs::try_exists(&overlay).await.unwrap_or(false) {
            if tokio::fs::try_exists(paths.disk_in_use())
                .await
                .unwrap_or(false)
            {
                disk_safety::check_after_unclean_end(
                    &self.config.qemu_img_binary,
                    &overlay,
                    &paths.disk_check_log(),
                )
                .await?;
            }
        } else {
            let out = tokio::process::Command::new(&self.config.qemu_img_binary)
                .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
                .arg(&base)
                .arg(&overlay)
                .output()
                .await
                .map_err(|e| DriverError::Launch(format!("cannot run qemu-img: {e}")))?;
            if !out.status.success() {
                return Err(DriverError::Launch(format!(
                    "qemu-img create failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let cache = disk_safety::choose_cache(&[&overlay, &base]);
        Ok(Disk {
            path: overlay,
            format: "qcow2".into(),
            cache,
        })
    }

    /// [`crate::Driver::attach`], returning the concrete handle.
    pub async fn attach_qemu(&self, id: VmId) -> Result<Option<Arc<QemuVm>>, DriverError> {
        let Some(pid) = self.running_pid(id) else {
            return Ok(None);
        };
        let paths = self.run_paths(id);
        let meta: VmMeta = match tokio::fs::read(paths.meta())
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(m) => m,
            None => {
                return Err(DriverError::Hypervisor(format!(
                    "vm {id} runs but its vm.json is missing or unreadable"
                )));
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let qmp = Qmp::connect(&paths.qmp(), self.config.qmp_timeout, tx).await?;
        let facts = self.facts().await;
        let cgroup = match &facts.cgroups {
            super::CgroupMode::Unavailable(_) => None,
            mode => Some(VmCgroup::existing(
                mode,
                &self.cgroup_owners,
                &self.cgroup_name(id),
            )),
        };
        Ok(Some(QemuVm::start(
            id,
            pid,
            paths,
            (qmp, rx),
            meta,
            cgroup,
            self.config.migration_tls.clone(),
        )))
    }
}

/// The kernel that boots a root disk at `/dev/vda` (`None`: firmware boot, q35 only).
fn disk_kernel(
    cfg: &super::QemuConfig,
    args: &str,
    micro: bool,
) -> Result<Option<(std::path::PathBuf, Option<std::path::PathBuf>, String)>, DriverError> {
    match &cfg.disk_boot_kernel {
        Some(k) => Ok(Some((
            k.kernel.clone(),
            k.initrd.clone(),
            format!("{args} root=/dev/vda {}", k.cmdline)
                .trim()
                .to_string(),
        ))),
        None if micro => Err(DriverError::Invalid(
            "microvm cannot firmware-boot a disk: configure disk_boot_kernel".into(),
        )),
        None => Ok(None),
    }
}
