//! The cgroups that agents started in a lab leave behind: the pool names each agent's VM cgroups
//! `<lab tag>-h<i>-<vm id>` (see `common_pool`), and a QEMU killed by the lab's teardown never
//! got its driver's cleanup. Removing a cgroup only succeeds once it is empty, so this never
//! touches one that still holds a process.

use std::path::Path;
use std::time::{Duration, Instant};

/// Where Panal's VM cgroups live, on cgroup v2 and v1.
const BASES: [&str; 3] = [
    "/sys/fs/cgroup/panal",
    "/sys/fs/cgroup/cpu/panal",
    "/sys/fs/cgroup/memory/panal",
];

/// Removes the cgroups whose names start with `prefix`, waiting a moment for the processes
/// just killed to leave them.
pub fn remove(prefix: &str) {
    remove_if(|name| name.starts_with(prefix));
}

/// Removes the empty cgroups of labs whose owner process is gone (a lab killed before its
/// teardown ran); a live lab's are left alone, even empty, as one may be about to be entered.
pub fn sweep() {
    remove_if(|name| {
        super::names::owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    });
}

fn remove_if(matches: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut left = 0;
        for base in BASES {
            for entry in std::fs::read_dir(Path::new(base))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if matches(&name) && std::fs::remove_dir(entry.path()).is_err() {
                    left += 1;
                }
            }
        }
        if left == 0 || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
