//! The bare-QEMU baseline of the migration benchmark: the same guest launched with
//! `panal_driver::qemu::QemuDriver` straight in the two host namespaces and migrated back and
//! forth by the benchmark itself, no control plane, no agents, no tunnel.

use super::{GUEST, MIGRATION, RUNNING, Runs, Sample, Shape, load_command, ms};
use crate::common_e2e::READY_LINE;
use crate::common_e2e::console::Console;
use crate::common_netns::NetLab;
use crate::common_netns::ns::{join, netns_path, open_ns};
use panal_driver::qemu::{AccelMode, GuestImage, QemuConfig, QemuDriver};
use panal_driver::{
    BootSource, Driver, DynVmHandle, Incoming, MigrationParams, MigrationPhase, MigrationTarget,
    ROOT_DISK, VmLaunch,
};
use panal_types::VmId;
use panal_types::vm::MachineProfile;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the bare-QEMU baseline polls QEMU.
const BARE_POLL: Duration = Duration::from_millis(10);

/// A QEMU driver per host namespace, each with a runtime whose threads live in that namespace
/// (QEMU is spawned, and so binds and connects, in the namespace of the thread that launches
/// it). Dropping it kills every QEMU of its directory and removes their cgroups.
pub(super) struct BareHosts {
    drivers: Vec<Arc<QemuDriver>>,
    runtimes: Vec<tokio::runtime::Runtime>,
    ips: Vec<std::net::IpAddr>,
    prefixes: Vec<String>,
    dir: PathBuf,
    guest: GuestImage,
}

impl BareHosts {
    pub(super) fn new(lab: &NetLab, dir: &Path, guest: &GuestImage) -> BareHosts {
        let mut b = BareHosts {
            drivers: Vec::new(),
            runtimes: Vec::new(),
            ips: Vec::new(),
            prefixes: Vec::new(),
            dir: dir.to_path_buf(),
            guest: guest.clone(),
        };
        for i in 0..2 {
            // The same limits as an agent's VMs: a cgroup each, with a prefix per host as the
            // lab's agents have (a migrating VM runs on both).
            let prefix = format!("{}-b{i}-", lab.tag());
            let mut c = QemuConfig::new(dir.join(format!("host-{i}")));
            c.accel = AccelMode::Tcg;
            c.cgroup_prefix = prefix.clone();
            c.disk_boot_kernel = Some(guest.direct_kernel(MachineProfile::Microvm));
            let ns = Arc::new(open_ns(&netns_path(&lab.netns_name(i))));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .on_thread_start(move || join(&ns))
                .build()
                .expect("runtime");
            b.drivers.push(Arc::new(QemuDriver::new(c)));
            b.runtimes.push(rt);
            b.ips.push(lab.host_ip(i).into());
            b.prefixes.push(prefix);
        }
        b
    }

    fn spec(&self, shape: Shape) -> VmLaunch {
        VmLaunch {
            id: VmId::new(),
            display_name: "bench/bare".into(),
            vcpus: 1,
            memory_bytes: shape.mib << 20,
            machine: if shape.disk {
                MachineProfile::Q35
            } else {
                MachineProfile::Microvm
            },
            boot: if shape.disk {
                BootSource::Disk {
                    base: self.guest.rootfs_qcow2(),
                    format: "qcow2".into(),
                }
            } else {
                self.guest.boot_initramfs(MachineProfile::Microvm, "")
            },
            disks: vec![],
            nics: vec![],
            hotplug_slots: 4,
            incoming: None,
            post_copy: false,
        }
    }

    /// Launches on host `i`, from a thread in its namespace.
    async fn launch(&self, i: usize, spec: &VmLaunch) -> DynVmHandle {
        let (driver, spec) = (self.drivers[i].clone(), spec.clone());
        self.runtimes[i]
            .spawn(async move { driver.launch(&spec).await })
            .await
            .expect("launch task")
            .unwrap_or_else(|e| panic!("bare launch on host-{i}: {e}"))
    }

    /// A free port on host `i`'s address (bound, then released for QEMU to bind).
    async fn free_addr(&self, i: usize) -> SocketAddr {
        let ip = self.ips[i];
        self.runtimes[i]
            .spawn(async move { TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()) })
            .await
            .expect("bind task")
            .expect("bind")
    }

    /// Idle then loaded migrations of one bare guest.
    pub(super) fn runs(&self, shape: Shape, count: usize) -> Runs {
        // Driven from this thread; the launches run on the hosts' runtimes.
        self.runtimes[0].block_on(async {
            let spec = self.spec(shape);
            let mut on = 0;
            let mut vm = self.launch(on, &spec).await;
            let log = vm.console_log().expect("console log");
            let deadline = Instant::now() + RUNNING;
            while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(READY_LINE)) {
                assert!(
                    Instant::now() < deadline,
                    "the bare guest never became ready"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut out = [Vec::new(), Vec::new()];
            let mut failures = [0; 2];
            for (load, samples) in out.iter_mut().enumerate() {
                if load == 1 {
                    let sock = vm.console_socket().expect("console socket");
                    let mut con = Console::open_socket(&sock, "bare").await;
                    let said = con.run(&load_command(shape), GUEST).await;
                    assert!(said.contains("LOAD-STARTED"), "load: {said:?}");
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                let what = if load == 0 { "idle" } else { "dirtying" };
                let mut i = 0;
                while samples.len() < count && i < 3 * count {
                    i += 1;
                    let (s, moved) = match self.migrate(&spec, &vm, on, shape.disk).await {
                        Ok(r) => r,
                        Err(why) => {
                            println!("bare  {what} {i:2}: FAILED: {why}");
                            failures[load] += 1;
                            continue;
                        }
                    };
                    println!("bare  {what} {i:2}: {}", s.line());
                    samples.push(s);
                    vm = moved;
                    on = 1 - on;
                }
            }
            let _ = vm.kill().await;
            let _ = self.drivers[on].cleanup(spec.id).await;
            (out, failures)
        })
    }

    /// One migration of `vm` from host `from` to the other; returns the moved guest's handle
    /// once the source is gone.
    async fn migrate(
        &self,
        spec: &VmLaunch,
        vm: &DynVmHandle,
        from: usize,
        disk: bool,
    ) -> Result<(Sample, DynVmHandle), String> {
        let to = 1 - from;
        let t0 = Instant::now();
        let addr = self.free_addr(to).await;
        let mut dspec = spec.clone();
        dspec.incoming = Some(Incoming::Tcp(addr));
        let dvm = self.launch(to, &dspec).await;
        let disks = vec![ROOT_DISK.to_string()];
        let mut disk_bytes = 0;
        if disk {
            let nbd = self.free_addr(to).await;
            dvm.export_disks(&Incoming::Tcp(nbd), &disks)
                .await
                .expect("export");
            vm.mirror_disks(&MigrationTarget::Tcp(nbd), &disks, None)
                .await
                .expect("mirror");
            loop {
                let copies = vm.disk_mirror_status().await.expect("mirror status");
                assert!(
                    copies.iter().all(|c| c.error.is_none()),
                    "disk copy: {copies:?}"
                );
                disk_bytes = copies.iter().map(|c| c.done_bytes).sum();
                if !copies.is_empty() && copies.iter().all(|c| c.ready) {
                    break;
                }
                assert!(t0.elapsed() < MIGRATION, "the disk copy takes too long");
                tokio::time::sleep(BARE_POLL).await;
            }
        }
        let params = MigrationParams {
            auto_converge: true,
            ..MigrationParams::default()
        };
        vm.migrate(&MigrationTarget::Tcp(addr), &params)
            .await
            .expect("migrate");
        let status = loop {
            let s = vm.migration_status().await.expect("status");
            if s.phase.is_finished() {
                break s;
            }
            assert!(t0.elapsed() < MIGRATION, "the migration takes too long");
            tokio::time::sleep(BARE_POLL).await;
        };
        let total = t0.elapsed();
        if status.phase != MigrationPhase::Completed {
            // As an agent unwinds: the source runs on, the destination goes.
            if disk {
                let _ = vm.cancel_disk_mirror().await;
            }
            let _ = dvm.kill().await;
            let _ = self.drivers[to].cleanup(spec.id).await;
            return Err(format!("{:?}", status.phase));
        }
        // Untimed: what the agents do after the switch-over.
        if disk {
            let _ = dvm.unexport_disks().await;
        }
        let _ = vm.kill().await;
        self.drivers[from]
            .cleanup(spec.id)
            .await
            .expect("cleanup source");
        let sample = Sample {
            figures: true,
            downtime_ms: status.downtime.map(ms).expect("downtime"),
            total,
            qemu_total_ms: status.total_time.map(ms).unwrap_or(0.0),
            memory_bytes: status.transferred_bytes.unwrap_or(0),
            disk_bytes,
            dirty_rate: status.dirty_rate.unwrap_or(0),
        };
        Ok((sample, dvm))
    }
}

impl Drop for BareHosts {
    fn drop(&mut self) {
        crate::common_e2e::kill_mentioning(&self.dir);
        for root in ["/sys/fs/cgroup/cpu/panal", "/sys/fs/cgroup/memory/panal"] {
            for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if self.prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                    // The kernel refuses until the last task is reaped.
                    for _ in 0..250 {
                        if std::fs::remove_dir(e.path()).is_ok() || !e.path().exists() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
        for rt in self.runtimes.drain(..) {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
