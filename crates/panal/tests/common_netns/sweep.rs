//! Removal of what earlier, killed test runs left behind: every namespace and root-namespace
//! link named like a lab (`pnl<pid>-...`) whose owner pid is dead, with the processes inside.
//! A test process that was SIGKILLed never ran its labs' `Drop`; the next lab made on the
//! machine cleans up after it.

use super::names::{PREFIX, owner};
use super::ns::{NETNS_DIR, in_ns, ip_batch, kill_inside, open_existing};
use crate::common_e2e::alive;
use std::fs::File;
use std::process::Command;

/// Deletes stale lab namespaces (killing their processes first) and stale lab links of the
/// namespace `root`. Leftovers of live owners, such as labs of parallel tests, stay.
pub fn sweep(root: &File) {
    let stale = |name: &String| owner(name).is_some_and(|pid| !alive(pid));
    let namespaces: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(stale)
        .collect();
    let mut links: Vec<String> = root_links(root).into_iter().filter(stale).collect();
    if namespaces.is_empty() && links.is_empty() {
        return;
    }
    let held = open_existing(&namespaces);
    kill_inside(&held);
    let mut script = String::new();
    // Bridges first, so that no veth is still enslaved when it goes; deleting one end of a
    // veth pair deletes the end inside the namespace too.
    links.sort_by_key(|l| !l.ends_with("-br"));
    for l in &links {
        script.push_str(&format!("link del dev {l}\n"));
    }
    for n in &namespaces {
        script.push_str(&format!("netns del {n}\n"));
    }
    // Another test process may sweep the same leftovers at the same time: what it deleted
    // first fails here, which is fine.
    let _ = ip_batch(root, None, true, &script);
    // A process that entered while the names were still there dies too.
    kill_inside(&held);
}

/// Names of the lab links in the namespace `root`.
fn root_links(root: &File) -> Vec<String> {
    let out = in_ns(root, || {
        Command::new("ip").args(["-o", "link", "show"]).output()
    })
    .unwrap_or_else(|e| panic!("run `ip` (install iproute2): {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "7: pnl3cf-0-h1@if2: <BROADCAST,..." (the peer's index after `@`).
            let name = l.split(": ").nth(1)?;
            let name = name.split('@').next()?;
            name.starts_with(PREFIX).then(|| name.to_string())
        })
        .collect()
}

/// The namespaces and links of the namespace `root` whose names start with `tag` and `-`.
pub fn remaining(root: &File, tag: &str) -> Vec<String> {
    let prefix = format!("{tag}-");
    let namespaces = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok());
    namespaces
        .chain(root_links(root))
        .filter(|n| n.starts_with(&prefix))
        .collect()
}
