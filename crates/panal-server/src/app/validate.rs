//! Input rules for VMs, checked before anything is written. Limits that depend on the pool
//! (vCPUs and memory no host can give) are checked against the registered hosts.

use panal_types::ApiError;
use panal_types::host::Host;
use panal_types::size::{MIB, format_size};
use panal_types::vm::{HypervisorKind, MAX_LABELS, MAX_STOP_TIMEOUT_SECS};
use std::collections::BTreeMap;

/// Hard ceiling on vCPUs, whatever the hosts.
pub const MAX_VCPUS: u32 = 512;
/// Hard ceiling on memory, whatever the hosts (16 TiB).
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// The largest VM the pool could hold for a hypervisor: (vCPUs, memory) of the biggest host.
/// `None` when no host offers that hypervisor yet.
pub fn pool_limits(hosts: &[Host], kind: HypervisorKind) -> Option<(u32, u64)> {
    hosts
        .iter()
        .filter(|h| {
            h.inventory
                .hypervisors
                .iter()
                .any(|d| d.kind == kind && d.available)
        })
        .fold(None, |acc, h| {
            let (c, m) = acc.unwrap_or((0, 0));
            Some((c.max(h.inventory.cpus), m.max(h.inventory.memory_bytes)))
        })
}

/// vCPUs: at least 1, at most what one host has.
pub fn vcpus(v: u32, limits: Option<(u32, u64)>) -> Result<(), ApiError> {
    if v == 0 {
        return Err(ApiError::invalid("vcpus", "vcpus must be at least 1"));
    }
    let max = limits.map(|l| l.0).unwrap_or(MAX_VCPUS).min(MAX_VCPUS);
    if v > max {
        return Err(ApiError::invalid(
            "vcpus",
            format!("vcpus {v} is more than any host can give (at most {max})"),
        ));
    }
    Ok(())
}

/// Memory: a whole number of MiB, at least 1 MiB, at most what one host has.
pub fn memory(bytes: u64, limits: Option<(u32, u64)>) -> Result<(), ApiError> {
    if bytes == 0 {
        return Err(ApiError::invalid(
            "memory_bytes",
            "memory must be more than zero",
        ));
    }
    if !bytes.is_multiple_of(MIB) {
        return Err(ApiError::invalid(
            "memory_bytes",
            format!("memory must be a whole number of MiB (got {bytes} bytes)"),
        ));
    }
    let max = limits
        .map(|l| l.1)
        .unwrap_or(MAX_MEMORY_BYTES)
        .min(MAX_MEMORY_BYTES);
    if bytes > max {
        return Err(ApiError::invalid(
            "memory_bytes",
            format!(
                "memory {} is more than any host can give (at most {})",
                format_size(bytes),
                format_size(max)
            ),
        ));
    }
    Ok(())
}

/// Labels: bounded count, keys like `a.b/c-d`, values up to 256 bytes without control chars.
pub fn labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !key_ok {
            return Err(ApiError::invalid(
                &format!("labels.{k}"),
                "label keys are 1-63 of [A-Za-z0-9._/-]",
            ));
        }
        if v.len() > 256 || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                &format!("labels.{k}"),
                "label values are at most 256 printable bytes",
            ));
        }
    }
    Ok(())
}

/// Graceful-stop timeout: 1 s to an hour.
pub fn stop_timeout(secs: u32) -> Result<(), ApiError> {
    if secs == 0 || secs > MAX_STOP_TIMEOUT_SECS {
        return Err(ApiError::invalid(
            "stop_timeout_secs",
            format!("must be 1 to {MAX_STOP_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpus_and_memory_bounds() {
        let lim = Some((4, 8 << 30));
        assert_eq!(vcpus(0, lim).unwrap_err().field.as_deref(), Some("vcpus"));
        assert!(vcpus(5, lim).is_err());
        assert!(vcpus(4, lim).is_ok());
        assert!(memory(0, lim).is_err());
        assert!(memory(MIB + 1, lim).is_err());
        assert!(memory(9 << 30, lim).is_err());
        assert!(memory(512 * MIB, lim).is_ok());
    }

    #[test]
    fn label_rules() {
        let mut l = BTreeMap::new();
        l.insert("tier".to_string(), "web".to_string());
        assert!(labels(&l).is_ok());
        l.insert("bad key".to_string(), "x".to_string());
        assert_eq!(
            labels(&l).unwrap_err().field.as_deref(),
            Some("labels.bad key")
        );
    }
}
