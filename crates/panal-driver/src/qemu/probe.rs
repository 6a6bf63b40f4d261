//! Host probing: QEMU's version, the accelerator that really runs guests, and the host's TSC
//! frequency for microvm guests.
//!
//! The accelerator is chosen by booting, not by looking: some hosts expose a `/dev/kvm` that
//! cannot run ordinary guests (e.g. a paravirtual `kvm_pvm`). With a probe guest configured, the
//! probe boots it under KVM with `panal.probe` on its command line (the Panal guest prints its
//! readiness line and powers off) within a short timeout; KVM is used only if that succeeds.
//! Without a probe guest KVM cannot be verified and TCG is used. Results are cached per process
//! and in `<state_dir>/accel-probe.json`, keyed by the host's boot id and the QEMU binary.

use super::{Accel, DirectKernel};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a KVM probe boot may take before KVM is declared unusable.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accelerator decision and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccelProbe {
    /// What to use.
    pub accel: Accel,
    /// Why.
    pub reason: String,
}

/// `qemu-system-x86_64 --version`'s first line, or why it cannot run.
pub async fn qemu_version(binary: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!("{} --version failed", binary.display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The host TSC frequency in kHz: the kernel's calibration from the kernel log where readable
/// ("tsc: Refined TSC clocksource calibration" or "tsc: Detected ... MHz"), else /proc/cpuinfo.
pub async fn host_tsc_khz() -> Option<u64> {
    if let Ok(out) = tokio::process::Command::new("dmesg")
        .stdin(Stdio::null())
        .output()
        .await
    {
        let text = String::from_utf8_lossy(&out.stdout);
        let mut best = None;
        for line in text.lines() {
            for key in ["Refined TSC clocksource calibration: ", "tsc: Detected "] {
                if let Some(i) = line.find(key)
                    && let Some(mhz) = line[i + key.len()..].split_whitespace().next()
                    && let Some(khz) = mhz_to_khz(mhz)
                {
                    // The refined value comes later in the log and wins.
                    best = Some(khz);
                }
            }
        }
        if best.is_some() {
            return best;
        }
    }
    let cpuinfo = tokio::fs::read_to_string("/proc/cpuinfo").await.ok()?;
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| mhz_to_khz(v.trim()))
}

/// "2445.402" → 2445402.
fn mhz_to_khz(mhz: &str) -> Option<u64> {
    let (int, frac) = mhz.split_once('.').unwrap_or((mhz, ""));
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
    let khz = int.parse::<u64>().ok()? * 1000 + frac.parse::<u64>().ok()?;
    (khz > 0).then_some(khz)
}

fn cache_key(binary: &Path) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!("{}|{}", boot.trim(), binary.display())
}

/// Decides the accelerator for `auto`, using the on-disk cache in `state_dir` when valid.
pub async fn probe_accel(
    binary: &Path,
    state_dir: &Path,
    guest: Option<&DirectKernel>,
    tsc_khz: Option<u64>,
) -> AccelProbe {
    let cache = state_dir.join("accel-probe.json");
    let key = cache_key(binary);
    if let Ok(bytes) = tokio::fs::read(&cache).await
        && let Ok((k, p)) = serde_json::from_slice::<(String, AccelProbe)>(&bytes)
        && k == key
    {
        return p;
    }
    let result = probe_uncached(binary, state_dir, guest, tsc_khz).await;
    if let Ok(bytes) = serde_json::to_vec(&(key, &result)) {
        let _ = tokio::fs::create_dir_all(state_dir).await;
        let _ = tokio::fs::write(&cache, bytes).await;
    }
    result
}

async fn probe_uncached(
    binary: &Path,
    state_dir: &Path,
    guest: Option<&DirectKernel>,
    tsc_khz: Option<u64>,
) -> AccelProbe {
    let tcg = |reason: String| AccelProbe {
        accel: Accel::Tcg,
        reason,
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return tcg("/dev/kvm is missing or not accessible".into());
    }
    let Some(guest) = guest else {
        return tcg("KVM not verified: no probe guest configured".into());
    };
    let log: PathBuf = state_dir.join("accel-probe.log");
    let _ = tokio::fs::create_dir_all(state_dir).await;
    let _ = tokio::fs::remove_file(&log).await;
    let mut append = format!("console=ttyS0 quiet panal.probe {}", guest.cmdline);
    if let Some(k) = tsc_khz {
        append.push_str(&format!(" tsc_early_khz={k}"));
    }
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args([
        "-machine",
        "microvm",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-nodefaults",
    ])
    .args([
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
    ])
    .arg(&guest.kernel)
    .arg("-append")
    .arg(&append)
    .arg("-serial")
    .arg(format!("file:{}", super::cmdline::opt_escape(&log)))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    if let Some(i) = &guest.initrd {
        cmd.arg("-initrd").arg(i);
    }
    let Ok(child) = cmd.spawn() else {
        return tcg("could not start the KVM probe".into());
    };
    match tokio::time::timeout(KVM_PROBE_TIMEOUT, child.wait_with_output()).await {
        Err(_) => tcg(format!(
            "a KVM guest did not boot within {KVM_PROBE_TIMEOUT:?}"
        )),
        Ok(Err(e)) => tcg(format!("KVM probe failed: {e}")),
        Ok(Ok(out)) => {
            let console = std::fs::read_to_string(&log).unwrap_or_default();
            if out.status.success() && console.contains(super::READY_LINE) {
                AccelProbe {
                    accel: Accel::Kvm,
                    reason: "a KVM probe guest booted".into(),
                }
            } else {
                let err = String::from_utf8_lossy(&out.stderr);
                tcg(format!(
                    "KVM probe guest failed: {}",
                    err.lines().last().unwrap_or("no output")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mhz_parses() {
        assert_eq!(super::mhz_to_khz("2445.402"), Some(2_445_402));
        assert_eq!(super::mhz_to_khz("2596.1"), Some(2_596_100));
        assert_eq!(super::mhz_to_khz("3000"), Some(3_000_000));
        assert_eq!(super::mhz_to_khz("x"), None);
    }
}
