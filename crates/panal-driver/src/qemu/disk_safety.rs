//! Keeping a VM's disk safe across crashes: the cache mode its disk is opened with, and the
//! `qemu-img check` of its qcow2 overlay after QEMU ended uncleanly.
//!
//! Cache policy: `cache=none` (O_DIRECT, flushes honoured) with Linux native AIO wherever the
//! filesystem takes O_DIRECT; where it does not (tmpfs before Linux 6.6 refuses it at open),
//! `cache=writeback` with flushes still honoured and thread-pool AIO. Never `unsafe` (flushes ignored). Probed by
//! opening the very files (overlay and its base) with O_DIRECT.
//!
//! Unclean ends: launch writes a marker (`disk.in-use`) into the run directory before QEMU
//! starts; the exit watcher removes it only when QEMU shut down by itself (a `SHUTDOWN` event
//! and no SIGKILL from us). A marker found at the next launch means the last QEMU was killed,
//! crashed or the host went down while the disk was open (or the agent was away when it ended:
//! then the check is merely redundant). Then the overlay is checked before QEMU may open it: leaks
//! (clusters allocated but unused, harmless but wasted) are repaired with `-r leaks`; corruption
//! refuses the start with a clear error, since repairing it may lose data and is an
//! administrator's decision. The result is kept in `disk-check.log` in the run directory.

use crate::DriverError;
use serde_json::Value;
use std::path::Path;

/// How a disk is cached on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCache {
    /// `cache=none`: O_DIRECT, guest flushes honoured, native AIO.
    Direct,
    /// `cache=writeback`: the host page cache, guest flushes honoured (for filesystems without
    /// O_DIRECT, e.g. tmpfs).
    Writeback,
}

impl DiskCache {
    /// The `-blockdev` `cache` object: `no-flush` is always false, so flushes are never
    /// ignored (that is what `cache=unsafe` would do).
    pub fn cache_json(self) -> Value {
        serde_json::json!({ "direct": self == DiskCache::Direct, "no-flush": false })
    }

    /// The file driver's `aio` mode: native AIO needs O_DIRECT.
    pub fn aio(self) -> &'static str {
        match self {
            DiskCache::Direct => "native",
            DiskCache::Writeback => "threads",
        }
    }
}

/// Whether `path` can be opened with O_DIRECT (tmpfs says no).
pub fn supports_direct(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .is_ok()
}

/// The cache mode for a disk made of these files (an overlay and its base): direct only when
/// every one of them takes O_DIRECT, since the cache mode is inherited down the chain.
pub fn choose_cache(files: &[&Path]) -> DiskCache {
    if files.iter().all(|f| supports_direct(f)) {
        DiskCache::Direct
    } else {
        DiskCache::Writeback
    }
}

/// What `qemu-img check` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Consistent.
    Clean,
    /// Only leaked clusters: safe to repair with `-r leaks`.
    Leaks(u64),
    /// Corrupt: refuse.
    Corrupt(u64),
    /// The check itself failed.
    Failed(String),
}

/// Judges `qemu-img check --output=json` by its exit status (0 clean, 1 check failed,
/// 2 corruptions, 3 leaks only) and its report.
pub fn judge(status: Option<i32>, stdout: &str, stderr: &str) -> Verdict {
    let report: Value = serde_json::from_str(stdout).unwrap_or(Value::Null);
    let count = |k: &str| report.get(k).and_then(Value::as_u64).unwrap_or(0);
    match status {
        Some(0) => Verdict::Clean,
        Some(2) => Verdict::Corrupt(count("corruptions").max(1)),
        Some(3) if count("corruptions") == 0 => Verdict::Leaks(count("leaks")),
        Some(3) => Verdict::Corrupt(count("corruptions")),
        _ => Verdict::Failed(if stderr.trim().is_empty() {
            format!("qemu-img check exited with {status:?}")
        } else {
            stderr.trim().to_owned()
        }),
    }
}

async fn run_check(qemu_img: &Path, disk: &Path, repair: bool) -> Result<Verdict, DriverError> {
    let mut cmd = tokio::process::Command::new(qemu_img);
    cmd.args(["check", "--output=json", "-f", "qcow2"]);
    if repair {
        cmd.args(["-r", "leaks"]);
    }
    let out = cmd
        .arg(disk)
        .output()
        .await
        .map_err(|e| DriverError::Launch(format!("cannot run qemu-img check: {e}")))?;
    Ok(judge(
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    ))
}

/// Checks a qcow2 overlay after an unclean end, repairing leaks only; `Err` refuses the start.
/// Appends what it did to `log`.
pub async fn check_after_unclean_end(
    qemu_img: &Path,
    disk: &Path,
    log: &Path,
) -> Result<Verdict, DriverError> {
    let mut first = run_check(qemu_img, disk, false).await?;
    // The image lock of a QEMU that just ended may outlive it by a moment: wait for it briefly,
    // so that a truly busy disk is still refused but a just-killed QEMU is not.
    for _ in 0..25 {
        match &first {
            Verdict::Failed(m) if m.contains("lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                first = run_check(qemu_img, disk, false).await?;
            }
            _ => break,
        }
    }
    let outcome = match &first {
        Verdict::Clean => Ok(first.clone()),
        Verdict::Leaks(n) => match run_check(qemu_img, disk, true).await? {
            Verdict::Clean | Verdict::Leaks(0) => Ok(Verdict::Leaks(*n)),
            other => Err(other),
        },
        other => Err(other.clone()),
    };
    let line = format!(
        "{} unclean end: qemu-img check {}: {}\n",
        chrono_free_now(),
        disk.display(),
        match &outcome {
            Ok(Verdict::Clean) => "clean".to_string(),
            Ok(Verdict::Leaks(n)) => format!("{n} leaked clusters repaired (-r leaks)"),
            Ok(v) | Err(v) => format!("{v:?}; start refused"),
        }
    );
    append(log, &line).await;
    match outcome {
        Ok(v) => {
            tracing::info!(disk = %disk.display(), verdict = ?v, "disk checked after an unclean QEMU end");
            Ok(v)
        }
        Err(Verdict::Corrupt(n)) => Err(DriverError::Launch(format!(
            "the VM's disk has {n} corruption(s) after its QEMU ended uncleanly; refusing to start it. \
             Inspect it with `qemu-img check {}`; `qemu-img check -r all` may repair it but can lose data",
            disk.display()
        ))),
        Err(v) => Err(DriverError::Launch(format!(
            "the VM's disk could not be checked after its QEMU ended uncleanly ({v:?}); refusing to start it"
        ))),
    }
}

async fn append(log: &Path, line: &str) {
    use tokio::io::AsyncWriteExt;
    if let Ok(mut f) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
    {
        // tokio finishes a write in the background unless flushed: readers must see it now.
        let _ = f.write_all(line.as_bytes()).await;
        let _ = f.flush().await;
    }
}

/// Seconds since the epoch (the driver has no calendar dependency).
fn chrono_free_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("t={t}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_qemu_img_exit_codes() {
        assert_eq!(judge(Some(0), "{}", ""), Verdict::Clean);
        assert_eq!(
            judge(Some(3), r#"{"leaks": 7, "corruptions": 0}"#, ""),
            Verdict::Leaks(7)
        );
        assert_eq!(
            judge(Some(2), r#"{"corruptions": 2}"#, ""),
            Verdict::Corrupt(2)
        );
        assert!(matches!(judge(Some(1), "", "boom"), Verdict::Failed(m) if m == "boom"));
        assert!(matches!(judge(None, "", ""), Verdict::Failed(_)));
    }

    #[test]
    fn flushes_are_never_ignored() {
        for c in [DiskCache::Direct, DiskCache::Writeback] {
            assert_eq!(c.cache_json()["no-flush"], false);
        }
        assert_eq!(DiskCache::Direct.cache_json()["direct"], true);
        assert_eq!(DiskCache::Direct.aio(), "native");
        assert_eq!(DiskCache::Writeback.aio(), "threads");
    }

    #[test]
    fn direct_only_when_every_file_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, [0u8; 4096]).unwrap();
        let missing = dir.path().join("missing");
        assert!(!supports_direct(&missing));
        assert_eq!(choose_cache(&[&f, &missing]), DiskCache::Writeback);
        // tmpfs refuses O_DIRECT before Linux 6.6 and takes it since: whatever it says decides.
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            let g = shm.path().join("y");
            std::fs::write(&g, [0u8; 4096]).unwrap();
            let want = if supports_direct(&f) && supports_direct(&g) {
                DiskCache::Direct
            } else {
                DiskCache::Writeback
            };
            assert_eq!(choose_cache(&[&f, &g]), want);
        }
    }
}
