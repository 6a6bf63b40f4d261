//! The `qemu` driver: one detached QEMU process per VM, driven over QMP.
//!
//! Each VM has a run directory `<state_dir>/vms/<vm-id>/` holding QEMU's pid file, QMP socket,
//! serial console socket and history, the per-VM disk overlay and `vm.json` (what the driver
//! needs to re-attach). QEMU runs in its own session and outlives the agent; [`Driver::attach`]
//! finds it again from the pid file and QMP socket. See `process.rs` for liveness, `handle.rs`
//! for the per-VM protocol, `cmdline.rs` for argument safety rules, `probe.rs` for how the
//! accelerator is chosen, `disk_safety.rs` for the disk cache mode and the check after a crash,
//! `migrate.rs` and `disk_mirror.rs` for live migration (memory, and local disks over NBD),
//! `downtime_ramp.rs` for the downtime limit it aims for,
//! `tls.rs` for its channel's TLS.

mod cgroup;
mod cmdline;
mod disk_export;
mod disk_mirror;
mod disk_safety;
mod disks;
mod downtime_ramp;
mod guest;
mod handle;
mod launch;
mod migrate;
mod nics;
mod probe;
mod process;
mod qmp;
mod slots;
mod tls;

pub use cgroup::CgroupMode;
pub use disk_safety::{DiskCache, Verdict};
pub use guest::{GuestImage, READY_LINE};
pub use handle::QemuVm;
pub use launch::LaunchTimings;
pub use probe::AccelProbe;
pub use qmp::{Qmp, QmpEvent};
pub use tls::MigrationTls;

use crate::{Driver, DriverError, DynVmHandle, VmLaunch, caps};
use async_trait::async_trait;
use panal_types::VmId;
use panal_types::host::{Accelerator, HypervisorInfo};
use panal_types::vm::{HypervisorKind, MachineProfile};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The smallest memory a VM may have.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;

/// Which accelerator to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccelMode {
    /// KVM if a probe guest really boots under it, else TCG.
    #[default]
    Auto,
    /// KVM, unconditionally.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// An accelerator in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// A kernel to boot directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectKernel {
    /// Kernel image (an uncompressed `vmlinux` boots on both microvm and q35).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments.
    pub cmdline: String,
}

/// Driver configuration.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// Where run directories live (`<state_dir>/vms/<vm-id>/`).
    pub state_dir: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu_binary: PathBuf,
    /// `qemu-img`.
    pub qemu_img_binary: PathBuf,
    /// Accelerator choice.
    pub accel: AccelMode,
    /// Drop QEMU to this user after setup (`-runas`) when running as root. Off by default.
    pub run_as_user: Option<String>,
    /// Kernel arguments put before the VM's own on every direct kernel boot.
    pub kernel_args: String,
    /// Added on microvm (no HPET/PM timer: skip calibration). `tsc_early_khz` is added too.
    pub microvm_kernel_args: String,
    /// Kernel used to boot disk images that have no boot loader (with `root=/dev/vda`);
    /// `None`: disk images boot through the firmware (q35 only).
    pub disk_boot_kernel: Option<DirectKernel>,
    /// Guest booted under KVM to verify that KVM works (see `probe.rs`).
    pub probe_guest: Option<DirectKernel>,
    /// vCPU ceiling for hot-plug on q35 (at least the boot count).
    pub max_vcpus: u32,
    /// Run QEMU with `-sandbox on`.
    pub sandbox: bool,
    /// Put each VM in its own cgroup with CPU and memory limits.
    pub cgroups: bool,
    /// Prefix of the VMs' cgroup names (`<prefix><vm id>`): empty on a host with one agent;
    /// agents sharing one machine (test labs) each need their own, as a VM migrating between
    /// them runs on both at once.
    pub cgroup_prefix: String,
    /// Memory QEMU may use beyond guest RAM before the cgroup limit bites.
    pub memory_overhead_bytes: u64,
    /// TCG translation cache size (MiB): bounds QEMU's own memory under TCG.
    pub tcg_tb_size_mib: u32,
    /// How long QEMU may take to set a VM up.
    pub launch_timeout: Duration,
    /// Timeout of one QMP command.
    pub qmp_timeout: Duration,
    /// How live migrations in and out are protected (`tls.rs`); off by default.
    pub migration_tls: MigrationTls,
}

impl QemuConfig {
    /// Defaults for a state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            state_dir: state_dir.into(),
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img_binary: "qemu-img".into(),
            accel: AccelMode::Auto,
            run_as_user: None,
            kernel_args: "console=ttyS0 quiet".into(),
            microvm_kernel_args: "lpj=1000000 tsc=reliable no_timer_check".into(),
            disk_boot_kernel: None,
            probe_guest: None,
            max_vcpus: 8,
            sandbox: true,
            cgroups: true,
            cgroup_prefix: String::new(),
            memory_overhead_bytes: 512 << 20,
            tcg_tb_size_mib: 64,
            launch_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(10),
            migration_tls: MigrationTls::Off,
        }
    }
}

/// What the driver remembers about a VM in its run directory.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmMeta {
    /// VM id.
    pub id: VmId,
    /// `project/name` (kept for humans; never passed to QEMU).
    pub display_name: String,
    /// Machine profile.
    pub machine: MachineProfile,
    /// Accelerator.
    pub accel: Accel,
    /// Current vCPUs.
    pub vcpus: u32,
    /// vCPU ceiling.
    pub max_vcpus: u32,
    /// Boot memory in bytes.
    pub memory_bytes: u64,
    /// Current balloon target in bytes.
    pub balloon_bytes: u64,
}

/// Host facts probed once per driver.
#[derive(Clone, Debug)]
struct HostFacts {
    version: Result<String, String>,
    tsc_khz: Option<u64>,
    cgroups: CgroupMode,
}

/// The QEMU driver.
pub struct QemuDriver {
    config: QemuConfig,
    facts: OnceCell<HostFacts>,
    accel: OnceCell<AccelProbe>,
    /// Which launch of each VM owns its cgroups (see `cgroup.rs`).
    cgroup_owners: std::sync::Arc<cgroup::Owners>,
}

impl QemuDriver {
    /// The name of a VM's cgroup.
    fn cgroup_name(&self, id: VmId) -> String {
        format!("{}{id}", self.config.cgroup_prefix)
    }

    /// A driver with this configuration. Probing happens lazily, at the first call.
    pub fn new(config: QemuConfig) -> QemuDriver {
        QemuDriver {
            config,
            facts: OnceCell::new(),
            accel: OnceCell::new(),
            cgroup_owners: Default::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    async fn facts(&self) -> &HostFacts {
        self.facts
            .get_or_init(|| async {
                HostFacts {
                    version: probe::qemu_version(&self.config.qemu_binary).await,
                    tsc_khz: probe::host_tsc_khz().await,
                    cgroups: if self.config.cgroups {
                        CgroupMode::detect()
                    } else {
                        CgroupMode::Unavailable("disabled in the configuration".into())
                    },
                }
            })
            .await
    }

    /// The accelerator decision (probing once for `auto`).
    pub async fn accel(&self) -> AccelProbe {
        self.accel
            .get_or_init(|| async {
                match self.config.accel {
                    AccelMode::Kvm => AccelProbe {
                        accel: Accel::Kvm,
                        reason: "configured".into(),
                    },
                    AccelMode::Tcg => AccelProbe {
                        accel: Accel::Tcg,
                        reason: "configured".into(),
                    },
                    AccelMode::Auto => {
                        let tsc = self.facts().await.tsc_khz;
                        probe::probe_accel(
                            &self.config.qemu_binary,
                            &self.config.state_dir,
                            self.config.probe_guest.as_ref(),
                            tsc,
                        )
                        .await
                    }
                }
            })
            .await
            .clone()
    }

    fn run_paths(&self, id: VmId) -> cmdline::RunPaths {
        cmdline::RunPaths {
            dir: self.config.state_dir.join("vms").join(id.to_string()),
        }
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn kind(&self) -> HypervisorKind {
        HypervisorKind::Qemu
    }

    async fn probe(&self) -> HypervisorInfo {
        let facts = self.facts().await.clone();
        let version = match facts.version {
            Ok(v) => v,
            Err(why) => {
                return HypervisorInfo {
                    kind: HypervisorKind::Qemu,
                    available: false,
                    detail: why,
                    accelerator: Accelerator::None,
                    capabilities: vec![],
                };
            }
        };
        let accel = self.accel().await;
        let capabilities = [
            caps::PAUSE,
            caps::LIVE_RESIZE_MEMORY,
            caps::LIVE_RESIZE_VCPUS,
            caps::CONSOLE,
            caps::REATTACH,
            caps::DISK_HOTPLUG,
            caps::MIGRATE,
        ];
        HypervisorInfo {
            kind: HypervisorKind::Qemu,
            available: true,
            detail: format!(
                "{version}; {:?} ({}); sandbox {}; {}; live vCPU hot-plug on q35 only",
                accel.accel,
                accel.reason,
                if self.config.sandbox { "on" } else { "off" },
                facts.cgroups.describe()
            ),
            accelerator: match accel.accel {
                Accel::Kvm => Accelerator::Kvm,
                Accel::Tcg => Accelerator::Tcg,
            },
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        }
    }

    async fn launch(&self, spec: &VmLaunch) -> Result<DynVmHandle, DriverError> {
        let vm: Arc<QemuVm> = self.launch_qemu(spec).await?.0;
        Ok(vm)
    }

    async fn attach(&self, id: VmId) -> Result<Option<DynVmHandle>, DriverError> {
        Ok(self.attach_qemu(id).await?.map(|v| v as DynVmHandle))
    }

    async fn list_running(&self) -> Result<Vec<VmId>, DriverError> {
        let mut out = self.list_present().await?;
        out.retain(|id| self.running_pid(*id).is_some());
        Ok(out)
    }

    async fn list_present(&self) -> Result<Vec<VmId>, DriverError> {
        let dir = self.config.state_dir.join("vms");
        let mut out = Vec::new();
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = rd.next_entry().await? {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<VmId>().ok())
            else {
                continue;
            };
            out.push(id);
        }
        Ok(out)
    }

    async fn cleanup(&self, id: VmId) -> Result<(), DriverError> {
        if let Some(pid) = self.running_pid(id) {
            return Err(DriverError::Invalid(format!(
                "vm {id} is still running (QEMU pid {pid})"
            )));
        }
        let facts = self.facts().await;
        cgroup::VmCgroup::existing(&facts.cgroups, &self.cgroup_owners, &self.cgroup_name(id))
            .remove_patiently(Duration::from_secs(5))
            .await?;
        match tokio::fs::remove_dir_all(self.run_paths(id).dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
