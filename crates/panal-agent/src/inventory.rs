//! What this machine has: CPUs, memory, CPU model and flags (from `/proc`), and the capacity of
//! its storage pools (from `statvfs`).

/// CPUs, CPU model and memory of this machine.
pub fn probe() -> (u32, String, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    (cpus, model, memory)
}

/// The CPU feature flags of this machine (those of its first CPU).
pub fn cpu_flags() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split(':').nth(1)))
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A storage pool an agent offers: a directory, shared between hosts or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDir {
    /// Pool name.
    pub name: String,
    /// Directory.
    pub path: std::path::PathBuf,
    /// Mounted on several hosts.
    pub shared: bool,
}

/// Measures each pool's file system (a pool whose directory cannot be read reports zero).
pub fn storage(pools: &[PoolDir]) -> Vec<panal_types::host::StoragePoolInfo> {
    pools
        .iter()
        .map(|p| {
            let (total, free) = nix::sys::statvfs::statvfs(&p.path)
                .map(|s| {
                    // The field widths differ between targets; u64 holds them all.
                    #[allow(clippy::unnecessary_cast)]
                    let (frag, blocks, avail) = (
                        s.fragment_size() as u64,
                        s.blocks() as u64,
                        s.blocks_available() as u64,
                    );
                    (blocks * frag, avail * frag)
                })
                .unwrap_or((0, 0));
            panal_types::host::StoragePoolInfo {
                name: p.name.clone(),
                path: p.path.display().to_string(),
                shared: p.shared,
                total_bytes: total,
                free_bytes: free,
            }
        })
        .collect()
}
