//! Builds QEMU's argument vector for one VM: a pure function of a [`Plan`], unit-tested.
//!
//! Safety rules: no user-supplied string is ever parsed by QEMU's option syntax. Paths inside
//! `key=value,...` options have their commas doubled ([`opt_escape`]); disks are `-blockdev`
//! JSON (serde escapes them); the kernel command line is its own argv entry (`-append`), which
//! QEMU passes through untouched; the VM's display name never reaches QEMU. Every disk names
//! its `format` and the cache mode `disk_safety.rs` chose (`cache=none` or `writeback`, flushes
//! always honoured, never `unsafe`).

use super::Accel;
use super::disk_safety::DiskCache;
use panal_types::vm::MachineProfile;
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Files of one VM's run directory.
#[derive(Clone, Debug)]
pub struct RunPaths {
    /// The run directory itself.
    pub dir: PathBuf,
}

impl RunPaths {
    /// The QMP socket.
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// The interactive serial console socket.
    pub fn console_sock(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// The serial console history.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// QEMU's own messages once it runs (`-D`: a daemonized QEMU otherwise sends its error
    /// reports to /dev/null), read back to say why a VM or a migration failed.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// QEMU's pid file.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// Present while QEMU may have the disk open; left behind by an unclean end.
    pub fn disk_in_use(&self) -> PathBuf {
        self.dir.join("disk.in-use")
    }
    /// What the checks after unclean ends found.
    pub fn disk_check_log(&self) -> PathBuf {
        self.dir.join("disk-check.log")
    }
    /// The per-VM copy-on-write disk overlay.
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("disk0.qcow2")
    }
    /// What the driver remembers about the VM (for re-attach).
    pub fn meta(&self) -> PathBuf {
        self.dir.join("vm.json")
    }
}

/// A disk attached as virtio-blk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// Image file.
    pub path: PathBuf,
    /// `qcow2` or `raw`.
    pub format: String,
    /// How the host caches it.
    pub cache: DiskCache,
}

/// Everything the argument vector depends on.
#[derive(Clone, Debug)]
pub struct Plan {
    /// VM name used for `-name` (the id, never a user string).
    pub name: String,
    /// Machine profile.
    pub machine: MachineProfile,
    /// Accelerator.
    pub accel: Accel,
    /// Boot vCPUs.
    pub vcpus: u32,
    /// vCPU ceiling for hot-plug (q35 only).
    pub max_vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Direct kernel boot: kernel, initrd and the full kernel command line.
    pub kernel: Option<(PathBuf, Option<PathBuf>, String)>,
    /// The root disk, if any.
    pub disk: Option<Disk>,
    /// Volumes attached at boot, each on its slot's hot-plug port (q35) so it can be unplugged.
    pub data_disks: Vec<(crate::DataDisk, DiskCache)>,
    /// Network interfaces, each on its slot's hot-plug port (q35) so it can be unplugged.
    pub nics: Vec<crate::NetNic>,
    /// Hot-plug ports (q35).
    pub hotplug_slots: u32,
    /// Run directory files.
    pub paths: RunPaths,
    /// Enable QEMU's seccomp sandbox.
    pub sandbox: bool,
    /// Drop to this user after setup.
    pub run_as: Option<String>,
    /// TCG translation cache size in MiB (bounds QEMU's memory under TCG).
    pub tcg_tb_size_mib: u32,
    /// Start as a migration destination: `-incoming defer`, the listening address given later
    /// over QMP (`migrate-incoming`), so capabilities can be set before the stream arrives.
    pub incoming: bool,
}

/// The id of the hot-plug port of slot `i` (a PCIe root port; volumes and NICs alike).
pub fn port(slot: u32) -> String {
    format!("hp{slot}")
}

/// The netdev (host side) of a NIC.
pub fn nic_netdev(id: &str) -> String {
    format!("n{}", short(id, 24))
}

/// The device id of a NIC.
pub fn nic_device(id: &str) -> String {
    format!("e{}", short(id, 24))
}

/// The `netdev_add` arguments of a NIC: the agent's tap, no scripts.
pub fn nic_netdev_args(n: &crate::NetNic) -> serde_json::Value {
    json!({
        "type": "tap",
        "id": nic_netdev(&n.id),
        "ifname": n.tap,
        "script": "no",
        "downscript": "no",
    })
}

/// The block node of the boot-image overlay (the root disk).
pub const ROOT_NODE: &str = "disk0";

/// The block node of a data disk (QEMU node names are at most 31 characters).
pub fn disk_node(id: &str) -> String {
    format!("v{}", short(id, 24))
}

/// The NBD client node through which a disk migration writes a disk to the destination (on
/// the source; `mig-root` for the root disk).
pub fn mirror_target_node(id: &str) -> String {
    format!("mig-{}", short(id, 24))
}

/// The device id of a data disk.
pub fn disk_device(id: &str) -> String {
    format!("d{}", short(id, 24))
}

/// The serial number the guest sees (virtio-blk keeps 20 characters).
pub fn disk_serial(id: &str) -> String {
    short(id, 20)
}

/// The first `n` letters and digits of an id (ids are UUIDs: never a QEMU option separator).
fn short(id: &str, n: usize) -> String {
    id.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(n)
        .collect()
}

/// The `-blockdev` / `blockdev-add` description of a data disk, with the same cache policy as
/// the boot disk.
pub fn data_disk_node(d: &crate::DataDisk, cache: DiskCache) -> serde_json::Value {
    json!({
        "driver": d.format,
        "node-name": disk_node(&d.id),
        "cache": cache.cache_json(),
        "file": {
            "driver": "file",
            "filename": d.path.to_string_lossy(),
            "aio": cache.aio(),
        },
    })
}

/// Doubles commas so a value cannot end a `key=value,...` QEMU option.
pub fn opt_escape(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// The arguments, without the binary.
pub fn build(plan: &Plan) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    let micro = plan.machine == MachineProfile::Microvm;
    let p = &plan.paths;

    push("-name");
    push(&format!(
        "{},debug-threads=on",
        plan.name.replace(',', ",,")
    ));
    push("-nodefaults");
    push("-no-user-config");
    push("-display");
    push("none");
    push("-machine");
    push(if micro { "microvm" } else { "q35" });
    match plan.accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        // Under TCG QEMU picks its default CPU model; `-cpu host` does not exist there.
        Accel::Tcg => {
            push("-accel");
            push(&format!("tcg,tb-size={}", plan.tcg_tb_size_mib));
        }
    }
    push("-m");
    push(&plan.memory_mib.to_string());
    push("-smp");
    if micro {
        push(&plan.vcpus.to_string());
    } else {
        push(&format!(
            "{},maxcpus={}",
            plan.vcpus,
            plan.max_vcpus.max(plan.vcpus)
        ));
    }
    if let Some((kernel, initrd, cmdline)) = &plan.kernel {
        a.push("-kernel".into());
        a.push(kernel.into());
        if let Some(i) = initrd {
            a.push("-initrd".into());
            a.push(i.into());
        }
        a.push("-append".into());
        a.push(cmdline.into());
    }
    let mut push = |s: &str| a.push(s.into());
    let dev = |name: &str| {
        if micro {
            format!("{name}-device")
        } else {
            format!("{name}-pci")
        }
    };
    if let Some(d) = &plan.disk {
        // The cache object is inherited by the file node and the backing chain.
        let node = json!({
            "driver": d.format,
            "node-name": ROOT_NODE,
            "cache": d.cache.cache_json(),
            "file": {
                "driver": "file",
                "filename": d.path.to_string_lossy(),
                "aio": d.cache.aio(),
            },
        });
        push("-blockdev");
        push(&node.to_string());
        push("-device");
        push(&format!("{},drive={ROOT_NODE},id=vda", dev("virtio-blk")));
    }
    if !micro {
        // One PCIe root port per slot, where volumes and NICs sit and are hot-plugged (one
        // device per port); as many as the VM was created with, since each costs downtime.
        for i in 0..plan.hotplug_slots {
            push("-device");
            push(&format!("pcie-root-port,id={},chassis={}", port(i), i + 1));
        }
    }
    for n in &plan.nics {
        // Tap names and MACs were checked by the control plane and the agent (letters, digits,
        // colons), so they never carry an option separator; escaped all the same.
        push("-netdev");
        push(&format!(
            "tap,id={},ifname={},script=no,downscript=no",
            nic_netdev(&n.id),
            opt_escape(std::path::Path::new(&n.tap))
        ));
        push("-device");
        let common = format!(
            "netdev={},id={},mac={},host_mtu={}",
            nic_netdev(&n.id),
            nic_device(&n.id),
            opt_escape(std::path::Path::new(&n.mac)),
            n.mtu
        );
        if micro {
            push(&format!("virtio-net-device,{common}"));
        } else {
            push(&format!("virtio-net-pci,{common},bus={}", port(n.slot)));
        }
    }
    for (d, cache) in &plan.data_disks {
        push("-blockdev");
        push(&data_disk_node(d, *cache).to_string());
        push("-device");
        if micro {
            push(&format!(
                "virtio-blk-device,drive={},id={},serial={}",
                disk_node(&d.id),
                disk_device(&d.id),
                disk_serial(&d.id)
            ));
        } else {
            push(&format!(
                "virtio-blk-pci,drive={},id={},serial={},bus={}",
                disk_node(&d.id),
                disk_device(&d.id),
                disk_serial(&d.id),
                port(d.slot)
            ));
        }
    }
    push("-device");
    push(&format!("{},id=rng0", dev("virtio-rng")));
    push("-device");
    push(&format!("{},id=balloon0", dev("virtio-balloon")));
    push("-nic");
    push("none");
    if !micro {
        // pvpanic lets the guest report a panic (GUEST_PANICKED), distinct from a crash.
        push("-device");
        push("pvpanic-pci");
    }
    push("-action");
    push("panic=shutdown");
    // Serial console: an interactive socket, with everything also appended to a history file.
    push("-chardev");
    push(&format!(
        "socket,id=con0,path={},server=on,wait=off,logfile={},logappend=on",
        opt_escape(&p.console_sock()),
        opt_escape(&p.console_log())
    ));
    push("-serial");
    push("chardev:con0");
    push("-chardev");
    push(&format!(
        "socket,id=qmp0,path={},server=on,wait=off",
        opt_escape(&p.qmp())
    ));
    push("-mon");
    push("chardev=qmp0,mode=control");
    if plan.sandbox {
        push("-sandbox");
        // Measured with QEMU 7.2: `-daemonize` forks and calls setsid() after the filter is in
        // place, so `spawn=deny` and `elevateprivileges=deny` kill it with SIGSYS, and
        // `resourcecontrol=deny` makes it fail too. What stays: the default filter (no module
        // loading, reboot, swap, ...) plus obsolete system calls denied.
        push("on,obsolete=deny");
    }
    if let Some(user) = &plan.run_as {
        push("-runas");
        push(user);
    }
    if plan.incoming {
        // No `-S`: QEMU runs the guest as soon as its state has arrived, which keeps the
        // switch-over (the downtime) free of a QMP round trip through the agent.
        push("-incoming");
        push("defer");
    }
    push("-pidfile");
    a.push(p.pid().into());
    a.push("-D".into());
    a.push(p.qemu_log().into());
    a.push("-daemonize".into());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(machine: MachineProfile) -> Plan {
        Plan {
            name: "panal-x".into(),
            machine,
            accel: Accel::Tcg,
            vcpus: 1,
            max_vcpus: 4,
            memory_mib: 256,
            kernel: Some(("/k".into(), None, "console=ttyS0".into())),
            disk: Some(Disk {
                path: "/run/a,b/d\"x.qcow2".into(),
                format: "qcow2".into(),
                cache: DiskCache::Direct,
            }),
            data_disks: vec![(
                crate::DataDisk {
                    id: "0b5e7c1e-2f4a-4c1b-9d6e-000000000001".into(),
                    path: "/pool/v,1.qcow2".into(),
                    format: "qcow2".into(),
                    slot: 3,
                },
                DiskCache::Direct,
            )],
            nics: vec![crate::NetNic {
                id: "1a2b3c4d".into(),
                tap: "pnt1a2b3c4d".into(),
                mac: "52:54:00:12:34:56".into(),
                mtu: 1450,
                slot: 1,
            }],
            hotplug_slots: 4,
            paths: RunPaths {
                dir: "/run/a,b".into(),
            },
            sandbox: true,
            run_as: None,
            tcg_tb_size_mib: 64,
            incoming: false,
        }
    }

    #[test]
    fn incoming_defers_the_address_to_qmp() {
        let mut p = plan(MachineProfile::Microvm);
        assert!(!joined(&p).iter().any(|a| a == "-incoming"));
        p.incoming = true;
        let a = joined(&p);
        let i = a.iter().position(|x| x == "-incoming").expect("-incoming");
        assert_eq!(a[i + 1], "defer");
        // Paused at start would need a `cont` through QMP at switch-over.
        assert!(!a.iter().any(|x| x == "-S"));
    }

    fn joined(p: &Plan) -> Vec<String> {
        build(p)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commas_in_paths_are_escaped_and_disks_are_json() {
        let a = joined(&plan(MachineProfile::Q35));
        assert!(
            a.iter()
                .any(|s| s.contains("path=/run/a,,b/qmp.sock,server=on"))
        );
        let bd = a.iter().position(|s| s == "-blockdev").unwrap();
        let v: serde_json::Value = serde_json::from_str(&a[bd + 1]).unwrap();
        assert_eq!(v["driver"], "qcow2");
        assert_eq!(v["file"]["filename"], "/run/a,b/d\"x.qcow2");
        assert!(!a.iter().any(|s| s.contains("cache=unsafe")));
        assert_eq!(v["cache"]["direct"], true);
        assert_eq!(v["cache"]["no-flush"], false);
        assert_eq!(v["file"]["aio"], "native");
    }

    #[test]
    fn without_direct_io_the_disk_is_writeback_with_flushes() {
        let mut p = plan(MachineProfile::Q35);
        if let Some(d) = &mut p.disk {
            d.cache = DiskCache::Writeback;
        }
        let a = joined(&p);
        let bd = a.iter().position(|s| s == "-blockdev").unwrap();
        let v: serde_json::Value = serde_json::from_str(&a[bd + 1]).unwrap();
        assert_eq!(v["cache"]["direct"], false);
        assert_eq!(v["cache"]["no-flush"], false);
        assert_eq!(v["file"]["aio"], "threads");
    }

    #[test]
    fn data_disks_sit_on_hotplug_ports_with_short_ids() {
        let a = joined(&plan(MachineProfile::Q35));
        assert_eq!(
            a.iter()
                .filter(|s| s.starts_with("pcie-root-port,"))
                .count(),
            4
        );
        let dev = a
            .iter()
            .find(|s| s.starts_with("virtio-blk-pci,drive=v0b5e"))
            .expect("data disk device");
        // Its slot's port, whatever its place in the list (the control plane chose it).
        assert!(dev.ends_with(",bus=hp3"), "{dev}");
        assert!(
            a.iter()
                .any(|s| s.starts_with("pcie-root-port,id=hp3,chassis=4"))
        );
        assert!(dev.contains("serial=0b5e7c1e2f4a4c1b9d6e,"), "{dev}");
        let node = disk_node("0b5e7c1e-2f4a-4c1b-9d6e-000000000001");
        assert!(node.len() <= 31);
        let bd: Vec<serde_json::Value> = a
            .iter()
            .enumerate()
            .filter(|(_, s)| *s == "-blockdev")
            .map(|(i, _)| serde_json::from_str(&a[i + 1]).unwrap())
            .collect();
        assert!(
            bd.iter()
                .any(|v| v["file"]["filename"] == "/pool/v,1.qcow2")
        );
        let m = joined(&plan(MachineProfile::Microvm));
        assert!(!m.iter().any(|s| s.starts_with("pcie-root-port")));
        assert!(
            m.iter()
                .any(|s| s.starts_with("virtio-blk-device,drive=v0b5e"))
        );
    }

    #[test]
    fn tcg_never_uses_cpu_host_and_microvm_uses_mmio_devices() {
        let a = joined(&plan(MachineProfile::Microvm));
        assert!(!a.iter().any(|s| s == "host"));
        assert!(a.iter().any(|s| s.starts_with("virtio-balloon-device")));
        assert!(a.iter().any(|s| s == "1"), "microvm has no maxcpus");
        let q = joined(&plan(MachineProfile::Q35));
        assert!(q.iter().any(|s| s == "1,maxcpus=4"));
        assert!(q.iter().any(|s| s.starts_with("virtio-balloon-pci")));
    }

    #[test]
    fn nics_are_taps_on_their_slots_hotplug_ports() {
        let a = joined(&plan(MachineProfile::Q35));
        let netdev = a.iter().position(|s| s == "-netdev").expect("a netdev");
        assert_eq!(
            a[netdev + 1],
            "tap,id=n1a2b3c4d,ifname=pnt1a2b3c4d,script=no,downscript=no"
        );
        assert!(a.iter().any(|s| s
            == "virtio-net-pci,netdev=n1a2b3c4d,id=e1a2b3c4d,mac=52:54:00:12:34:56,host_mtu=1450,bus=hp1"));
    }
}
