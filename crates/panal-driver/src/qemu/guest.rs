//! The Panal test guest built by `scripts/build-guest-image.sh`: where it lives and how to boot
//! it. Used by the tests, the benchmark and by agents that want a tiny real guest (and the KVM
//! probe guest).
//!
//! Layout of the guest directory (`$PANAL_GUEST_DIR`, default `~/.cache/panal/guest`):
//! `vmlinux` (uncompressed, PVH entry, for microvm), `vmlinuz` (for q35), `initramfs.cpio.gz`,
//! `rootfs.ext4`, `rootfs.qcow2`, `manifest.json`. The guest prints [`READY_LINE`] on ttyS0 and
//! then keeps a root shell there.

use super::DirectKernel;
use crate::BootSource;
use panal_types::vm::MachineProfile;
use std::path::{Path, PathBuf};

/// The line the Panal guest prints on its serial console once its init has run.
pub const READY_LINE: &str = "PANAL-GUEST-READY";

/// A built Panal guest directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestImage {
    /// The directory.
    pub dir: PathBuf,
}

impl GuestImage {
    /// The default directory: `$PANAL_GUEST_DIR`, else `$HOME/.cache/panal/guest`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("PANAL_GUEST_DIR") {
            return PathBuf::from(d);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/root".into());
        home.join(".cache/panal/guest")
    }

    /// Opens the guest in `dir`, checking that every file is there; the error says how to build it.
    pub fn open(dir: &Path) -> Result<GuestImage, String> {
        let g = GuestImage {
            dir: dir.to_path_buf(),
        };
        for f in [
            "vmlinux",
            "vmlinuz",
            "initramfs.cpio.gz",
            "rootfs.ext4",
            "rootfs.qcow2",
            "manifest.json",
        ] {
            if !g.dir.join(f).is_file() {
                return Err(format!(
                    "the Panal test guest is missing {} in {}: run scripts/build-guest-image.sh {}",
                    f,
                    g.dir.display(),
                    g.dir.display()
                ));
            }
        }
        Ok(g)
    }

    /// Opens the guest in the default directory.
    pub fn locate() -> Result<GuestImage, String> {
        Self::open(&Self::default_dir())
    }

    /// The kernel suited to a machine: `vmlinux` for microvm, `vmlinuz` for q35.
    pub fn kernel(&self, machine: MachineProfile) -> PathBuf {
        match machine {
            MachineProfile::Microvm => self.dir.join("vmlinux"),
            MachineProfile::Q35 => self.dir.join("vmlinuz"),
        }
    }

    /// The initramfs.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }

    /// The ext4 root disk as qcow2.
    pub fn rootfs_qcow2(&self) -> PathBuf {
        self.dir.join("rootfs.qcow2")
    }

    /// The raw ext4 root disk.
    pub fn rootfs_raw(&self) -> PathBuf {
        self.dir.join("rootfs.ext4")
    }

    /// Direct kernel boot into the initramfs shell, with extra kernel arguments.
    pub fn boot_initramfs(&self, machine: MachineProfile, cmdline: &str) -> BootSource {
        BootSource::Kernel {
            kernel: self.kernel(machine),
            initrd: Some(self.initramfs()),
            cmdline: cmdline.to_string(),
        }
    }

    /// The kernel the driver uses for disk images without a boot loader (root on `/dev/vda`),
    /// and for the KVM probe. Pass it as [`super::QemuConfig::disk_boot_kernel`].
    pub fn direct_kernel(&self, machine: MachineProfile) -> DirectKernel {
        DirectKernel {
            kernel: self.kernel(machine),
            initrd: Some(self.initramfs()),
            cmdline: String::new(),
        }
    }
}
