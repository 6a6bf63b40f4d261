//! Input rules for VMs, checked before anything is written. Limits that depend on the pool
//! (vCPUs and memory no host can give; selectors, zones and capabilities no host has) are
//! checked against the registered hosts.

use panal_types::ApiError;
use panal_types::error::check_name;
use panal_types::host::Host;
use panal_types::size::{MIB, format_size};
use panal_types::slots::{MAX_HOTPLUG_SLOTS, default_hotplug_slots};
use panal_types::vm::{
    HypervisorKind, MAX_LABELS, MAX_PLACEMENT_TERMS, MAX_STOP_TIMEOUT_SECS, Placement,
    PlacementGroup, PlacementGroupRequest,
};
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

/// The slots a new VM gets for its volumes and NICs: what it asks (at most
/// [`MAX_HOTPLUG_SLOTS`], and room for the `devices` it is created with), or the default.
pub fn hotplug_slots(asked: Option<u32>, devices: usize) -> Result<u32, ApiError> {
    let Some(n) = asked else {
        return Ok(default_hotplug_slots(devices));
    };
    if n > MAX_HOTPLUG_SLOTS {
        return Err(ApiError::invalid(
            "hotplug_slots",
            format!("a VM has at most {MAX_HOTPLUG_SLOTS} slots, not {n}"),
        ));
    }
    if devices > n as usize {
        return Err(ApiError::invalid(
            "hotplug_slots",
            format!(
                "{n} slots cannot hold the {devices} volumes and NICs the VM is created with \
                 (each takes one)"
            ),
        ));
    }
    Ok(n)
}

/// The placement constraints of a create request, each checked to name something the pool
/// has: a selector no host matches, a zone no host is in or a capability no host offers would
/// leave the VM pending for good, so they are refused up front.
pub fn placement(
    hosts: &[Host],
    kind: HypervisorKind,
    host_selector: &BTreeMap<String, String>,
    zone: Option<&str>,
    capabilities: &[String],
    group: Option<&PlacementGroupRequest>,
) -> Result<Placement, ApiError> {
    if host_selector.len() > MAX_PLACEMENT_TERMS {
        return Err(ApiError::invalid(
            "host_selector",
            format!("at most {MAX_PLACEMENT_TERMS} selector entries"),
        ));
    }
    labels(host_selector).map_err(|mut e| {
        e.field = e.field.map(|f| f.replacen("labels", "host_selector", 1));
        e
    })?;
    for (k, v) in host_selector {
        if !hosts.iter().any(|h| h.labels.get(k) == Some(v)) {
            return Err(ApiError::invalid(
                &format!("host_selector.{k}"),
                format!("no host has the label {k}={v}"),
            ));
        }
    }
    if let Some(z) = zone
        && !hosts.iter().any(|h| h.zone.as_deref() == Some(z))
    {
        return Err(ApiError::invalid(
            "zone",
            format!("no host is in zone {z:?}"),
        ));
    }
    if capabilities.len() > MAX_PLACEMENT_TERMS {
        return Err(ApiError::invalid(
            "capabilities",
            format!("at most {MAX_PLACEMENT_TERMS} capabilities"),
        ));
    }
    for c in capabilities {
        let offered = hosts.iter().any(|h| {
            h.inventory
                .hypervisors
                .iter()
                .any(|d| d.kind == kind && d.capabilities.contains(c))
        });
        if !offered {
            return Err(ApiError::invalid(
                "capabilities",
                format!(
                    "no host offers the capability {c:?} with the {} hypervisor",
                    kind.as_str()
                ),
            ));
        }
    }
    let group = match group {
        None => None,
        Some(g) => Some(PlacementGroup {
            name: check_name("placement_group.name", &g.name)?,
            policy: g.policy,
            soft: g.soft,
        }),
    };
    let mut capabilities = capabilities.to_vec();
    capabilities.sort();
    capabilities.dedup();
    Ok(Placement {
        host_selector: host_selector.clone(),
        zone: zone.map(str::to_owned),
        capabilities,
        group,
    })
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
    fn placement_must_name_what_the_pool_has() {
        use panal_types::host::*;
        use panal_types::vm::GroupPolicy;
        let mut labels = BTreeMap::new();
        labels.insert("disk".to_string(), "ssd".to_string());
        let host = Host {
            id: panal_types::HostId::new(),
            name: panal_types::Name::parse("a").unwrap(),
            state: HostState::Ready,
            mode: HostMode::Schedulable,
            drain: None,
            inventory: HostInventory {
                cpus: 4,
                cpu_model: String::new(),
                memory_bytes: 8 << 30,
                hypervisors: vec![HypervisorInfo {
                    kind: HypervisorKind::Fake,
                    available: true,
                    detail: String::new(),
                    accelerator: Accelerator::None,
                    capabilities: vec!["pause".into()],
                }],
                agent_version: String::new(),
                cpu_flags: Vec::new(),
                storage: Vec::new(),
                tunnel_address: None,
                migration_address: None,
            },
            allocation: HostAllocation::default(),
            labels: labels.clone(),
            zone: Some("east".into()),
            created_at: chrono::Utc::now(),
            last_seen: chrono::Utc::now(),
        };
        let hosts = [host];
        let fake = HypervisorKind::Fake;
        let group = PlacementGroupRequest {
            name: "web".into(),
            policy: GroupPolicy::AntiAffinity,
            soft: false,
        };
        let caps = ["pause".to_string()];
        let p = placement(&hosts, fake, &labels, Some("east"), &caps, Some(&group)).unwrap();
        assert_eq!(p.group.unwrap().name.as_str(), "web");
        let field = |r: Result<Placement, ApiError>| r.unwrap_err().field.unwrap();
        let mut other = BTreeMap::new();
        other.insert("disk".to_string(), "hdd".to_string());
        assert_eq!(
            field(placement(&hosts, fake, &other, None, &[], None)),
            "host_selector.disk"
        );
        assert_eq!(
            field(placement(
                &hosts,
                fake,
                &BTreeMap::new(),
                Some("west"),
                &[],
                None
            )),
            "zone"
        );
        let migrate = ["migrate".to_string()];
        assert_eq!(
            field(placement(
                &hosts,
                fake,
                &BTreeMap::new(),
                None,
                &migrate,
                None
            )),
            "capabilities"
        );
        let bad = PlacementGroupRequest {
            name: "Web!".into(),
            ..group
        };
        assert_eq!(
            field(placement(
                &hosts,
                fake,
                &BTreeMap::new(),
                None,
                &[],
                Some(&bad)
            )),
            "placement_group.name"
        );
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
