//! The pre-flight check of a live migration, a pure function of the VM, the hosts and the other
//! VMs: the request's knobs, whether the VM can move at all, and whether a target can take it
//! (capacity, CPU model and hypervisor compatibility, the storage and networks it needs).

use crate::scheduler::{Candidate, Members, Policy, Request, place, refusal};
use panal_types::host::{Accelerator, Host, HostState};
use panal_types::migration::{
    DEFAULT_DOWNTIME_LIMIT_MS, MAX_DOWNTIME_LIMIT_MS, MIN_BANDWIDTH, MigrationSettings, VmMigrate,
};
use panal_types::vm::{HypervisorKind, PowerState, Vm, VmPhase};
use panal_types::volume::{DiskAttachment, Volume};
use panal_types::{ApiError, ErrorCode, Name};

/// How the agents name the root disk overlay of an image-booted VM in a disk copy.
pub(super) const ROOT_DISK: &str = "root";

/// The driver capability a host needs to send or take a live migration.
const MIGRATE_CAP: &str = "migrate";

/// Validates the knobs of a request.
pub(super) fn settings(req: &VmMigrate) -> Result<MigrationSettings, ApiError> {
    let downtime = req
        .downtime_limit_ms
        .unwrap_or(DEFAULT_DOWNTIME_LIMIT_MS as i64);
    if downtime < 1 || downtime as u64 > MAX_DOWNTIME_LIMIT_MS {
        return Err(ApiError::invalid(
            "downtime_limit_ms",
            format!(
                "the downtime limit must be 1 to {MAX_DOWNTIME_LIMIT_MS} ms (got {downtime}); \
                 the default is {DEFAULT_DOWNTIME_LIMIT_MS}"
            ),
        ));
    }
    let max_bandwidth = match req.max_bandwidth {
        None => None,
        Some(b) if b < 0 => {
            return Err(ApiError::invalid(
                "max_bandwidth",
                format!("a bandwidth limit cannot be negative (got {b})"),
            ));
        }
        Some(b) if (b as u64) < MIN_BANDWIDTH => {
            return Err(ApiError::invalid(
                "max_bandwidth",
                format!(
                    "a bandwidth limit must be at least {MIN_BANDWIDTH} bytes/s (1 MiB/s), got {b}"
                ),
            ));
        }
        Some(b) => Some(b as u64),
    };
    match (req.post_copy, req.accept_post_copy_risk) {
        (Some(true), Some(true)) => {}
        (Some(true), _) => {
            return Err(ApiError::invalid(
                "accept_post_copy_risk",
                "post-copy needs accept_post_copy_risk: true (while it runs the guest's memory \
                 is split between the hosts, and the VM is lost if either fails)",
            ));
        }
        (_, Some(true)) => {
            return Err(ApiError::invalid(
                "accept_post_copy_risk",
                "accept_post_copy_risk goes with post_copy: true",
            ));
        }
        _ => {}
    }
    Ok(MigrationSettings {
        downtime_limit_ms: downtime as u64,
        max_bandwidth,
        auto_converge: req.auto_converge.unwrap_or(true),
        post_copy: req.post_copy == Some(true),
    })
}

/// The host a VM can leave from now, or why it cannot move live.
pub(super) fn movable(vm: &Vm) -> Result<Name, ApiError> {
    if let Some(m) = &vm.status.migration {
        return Err(ApiError::conflict(format!(
            "VM \"{}\" is already migrating to host {}",
            vm.name, m.to
        ))
        .with_field("vm")
        .with_operation(m.operation));
    }
    // Being deleted, or held by another operation.
    super::volumes::busy(vm)?;
    let running = matches!(vm.status.phase, VmPhase::Running | VmPhase::Paused)
        && vm.spec.power_state != PowerState::Stopped;
    let host = vm.status.host.clone();
    match (running, host) {
        (true, Some(h)) => Ok(h),
        _ => Err(ApiError::conflict(format!(
            "VM \"{}\" is {}, not running: only a running VM migrates live; move a stopped VM \
             by starting it elsewhere (`panal host drain` of its host, or delete and recreate it)",
            vm.name,
            vm.status.phase.as_str()
        ))
        .with_field("vm")),
    }
}

/// `major.minor.patch` of a QEMU version line (`QEMU emulator version 7.2.5 (...)`).
fn qemu_version(detail: &str) -> Option<(u32, u32, u32)> {
    let v = detail
        .split_whitespace()
        .find(|w| w.split('.').count() == 3 && w.split('.').all(|p| p.parse::<u32>().is_ok()))?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Some((it.next()?, it.next()?, it.next()?))
}

/// Why `to` cannot run what `from` runs now (CPU and hypervisor), or `None`.
fn incompatible(kind: HypervisorKind, from: &Host, to: &Host) -> Option<String> {
    let hv = |h: &Host| {
        h.inventory
            .hypervisors
            .iter()
            .find(|x| x.kind == kind && x.available)
            .cloned()
    };
    let (Some(src), Some(dst)) = (hv(from), hv(to)) else {
        return Some(format!(
            "host {} has no usable {} hypervisor",
            to.name,
            kind.as_str()
        ));
    };
    if !src.capabilities.iter().any(|c| c == MIGRATE_CAP) {
        return Some(format!("host {} cannot send live migrations", from.name));
    }
    if !dst.capabilities.iter().any(|c| c == MIGRATE_CAP) {
        return Some(format!("host {} cannot take live migrations", to.name));
    }
    if to.inventory.migration_address.is_none() {
        return Some(format!(
            "host {} has no migration address (its agent takes no migrations)",
            to.name
        ));
    }
    if src.accelerator != dst.accelerator {
        return Some(format!(
            "the VM runs under {:?} on {} but {} would use {:?}",
            src.accelerator, from.name, to.name, dst.accelerator
        ));
    }
    if let (Some(a), Some(b)) = (qemu_version(&src.detail), qemu_version(&dst.detail))
        && b < a
    {
        return Some(format!(
            "host {} runs an older QEMU ({}.{}.{}) than {} ({}.{}.{})",
            to.name, b.0, b.1, b.2, from.name, a.0, a.1, a.2
        ));
    }
    // With hardware virtualisation the guest sees the host's CPU (`-cpu host`): every feature
    // it may use must exist on the target. Under emulation QEMU's model is the same everywhere.
    if src.accelerator == Accelerator::Kvm {
        let missing: Vec<&String> = from
            .inventory
            .cpu_flags
            .iter()
            .filter(|f| !to.inventory.cpu_flags.contains(f))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(8).map(|s| s.as_str()).collect();
            return Some(format!(
                "host {}'s CPU lacks features the guest may use: {}",
                to.name,
                shown.join(", ")
            ));
        }
    }
    None
}

/// Why `to` cannot receive the VM's local volumes (a pool of the same name with room for them
/// all), or `None`.
fn no_room_for_volumes(vm: &Vm, to: &Host) -> Option<String> {
    let mut need: std::collections::BTreeMap<&str, u64> = Default::default();
    for d in vm.spec.volumes.iter().filter(|d| !d.shared) {
        *need.entry(d.pool.as_str()).or_default() += d.size_bytes;
    }
    for (pool, bytes) in need {
        match to
            .inventory
            .storage
            .iter()
            .find(|p| p.name == pool && !p.shared)
        {
            None => {
                return Some(format!(
                    "host {} has no local pool \"{pool}\" to receive the VM's volumes",
                    to.name
                ));
            }
            Some(p) if p.free_bytes < bytes => {
                return Some(format!(
                    "pool \"{pool}\" of host {} has {} MiB free, the VM's volumes need {} MiB",
                    to.name,
                    p.free_bytes >> 20,
                    bytes >> 20
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// Why a local volume cannot move with a live migration, or `None`.
pub(super) fn unmovable(v: &Volume) -> Option<String> {
    if v.parent.is_some() || !v.children.is_empty() {
        return Some(format!(
            "volume {} is part of a linked clone (its copy-on-write chain would be split)",
            v.name
        ));
    }
    if !v.snapshots.is_empty() {
        return Some(format!(
            "volume {} has snapshots, which a live copy does not carry; delete them first",
            v.name
        ));
    }
    if v.operation.is_some() {
        return Some(format!("volume {} has an operation in progress", v.name));
    }
    None
}

/// What the pre-flight check decided.
#[derive(Debug)]
pub(super) struct Preflight {
    /// Index of the target in the hosts given.
    pub target: usize,
    /// Why that host.
    pub reason: String,
    /// What was checked, for people.
    pub checks: Vec<String>,
}

/// Checks that `vm` (running on `hosts[from]`) can move to `to` (or to a host the scheduler
/// picks): room, hypervisor and CPU, storage, networks, placement rules. Reads nothing.
pub(super) fn preflight(
    policy: &Policy,
    vm: &Vm,
    from: usize,
    hosts: &[Host],
    others: &[Vm],
    to: Option<&Name>,
    local_root: bool,
) -> Result<Preflight, ApiError> {
    let src = &hosts[from];
    // Volumes on shared pools are opened where they are; local ones are copied.
    let shared: Vec<DiskAttachment> = vm
        .spec
        .volumes
        .iter()
        .filter(|d| d.shared)
        .cloned()
        .collect();
    // Members of its placement group per host, itself left out (it leaves its host).
    let mut members = Members::new();
    if let Some(g) = &vm.spec.placement.group {
        for o in others {
            if o.id == vm.id || o.project != vm.project {
                continue;
            }
            if o.spec.placement.group.as_ref().map(|x| &x.name) != Some(&g.name) {
                continue;
            }
            if let Some(i) = o
                .status
                .host
                .as_ref()
                .and_then(|h| hosts.iter().position(|x| &x.name == h))
            {
                *members.entry(i).or_default() += 1;
            }
        }
    }
    let req = Request {
        vcpus: vm.spec.vcpus,
        memory_bytes: vm.spec.memory_bytes,
        hypervisor: vm.spec.hypervisor,
        placement: &vm.spec.placement,
        volumes: &shared,
        networked: !vm.spec.nics.is_empty(),
    };
    let anywhere: u32 = members.values().sum();
    let mut checks = vec![format!(
        "{} vCPUs and {} MiB fit",
        vm.spec.vcpus,
        vm.spec.memory_bytes >> 20
    )];
    if !vm.spec.volumes.is_empty() {
        checks.push("every volume is on a shared pool the target has".into());
    }
    if !vm.spec.nics.is_empty() {
        checks.push("the target carries virtual networks".into());
    }
    if local_root {
        checks.push("its root disk (local) is copied to the target first".into());
    }
    if vm.spec.volumes.iter().any(|d| !d.shared) {
        checks.push(
            "its local volumes are copied to a pool of the same name on the target first".into(),
        );
    }
    checks.push("same accelerator, a QEMU at least as new, the guest's CPU features".into());
    if let Some(name) = to {
        let Some(i) = hosts.iter().position(|h| &h.name == name) else {
            return Err(ApiError::not_found("host", name).with_field("to"));
        };
        if i == from {
            return Err(ApiError::invalid(
                "to",
                format!("VM \"{}\" already runs on host {name}", vm.name),
            ));
        }
        let host = &hosts[i];
        if host.state != HostState::Ready {
            return Err(ApiError::conflict(format!(
                "host {name} is {} and takes no VMs",
                host.state.as_str()
            ))
            .with_field("to"));
        }
        let cand = Candidate::new(host, policy);
        let here = members.get(&i).copied().unwrap_or(0);
        if let Some(r) = refusal(&req, &cand, &host.allocation, here, anywhere) {
            return Err(ApiError::new(
                ErrorCode::InsufficientCapacity,
                format!("host {name} cannot take VM \"{}\": {r}", vm.name),
            )
            .with_field("to"));
        }
        if let Some(why) = incompatible(vm.spec.hypervisor, src, host) {
            return Err(ApiError::conflict(why).with_field("to"));
        }
        if let Some(why) = no_room_for_volumes(vm, host) {
            return Err(ApiError::new(ErrorCode::InsufficientCapacity, why).with_field("to"));
        }
        return Ok(Preflight {
            target: i,
            reason: "asked for".into(),
            checks,
        });
    }
    // The scheduler's choice among the hosts that can take a migration from this one.
    let mut eligible = Vec::new();
    let mut refused = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        if i == from {
            continue;
        }
        match incompatible(vm.spec.hypervisor, src, h).or_else(|| no_room_for_volumes(vm, h)) {
            None => eligible.push(i),
            Some(why) => refused.push(why),
        }
    }
    if eligible.is_empty() {
        let why = if refused.is_empty() {
            "there is no other host".to_string()
        } else {
            refused.join("; ")
        };
        return Err(ApiError::new(
            ErrorCode::InsufficientCapacity,
            format!(
                "no other host can take a live migration of VM \"{}\" from host {}: {why}",
                vm.name, src.name
            ),
        )
        .with_field("to"));
    }
    let cands: Vec<Candidate> = eligible
        .iter()
        .map(|&i| Candidate::new(&hosts[i], policy))
        .collect();
    let allocs: Vec<_> = eligible
        .iter()
        .map(|&i| hosts[i].allocation.clone())
        .collect();
    let sub_members: Members = eligible
        .iter()
        .enumerate()
        .filter_map(|(k, i)| members.get(i).map(|n| (k, *n)))
        .collect();
    match place(&req, &cands, &allocs, &sub_members, policy, 0) {
        Ok(choice) => Ok(Preflight {
            target: eligible[choice.host],
            reason: choice.explanation,
            checks,
        }),
        Err(nofit) => Err(ApiError::new(
            ErrorCode::InsufficientCapacity,
            format!("no host can take VM \"{}\": {nofit}", vm.name),
        )
        .with_field("to")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use panal_types::host::{HostAllocation, HostInventory, HostMode, HypervisorInfo};
    use panal_types::{HostId, OperationId};

    fn host(name: &str, accel: Accelerator, version: &str, flags: &[&str]) -> Host {
        Host {
            id: HostId::new(),
            name: Name::parse(name).unwrap(),
            state: HostState::Ready,
            mode: HostMode::Schedulable,
            drain: None,
            inventory: HostInventory {
                cpus: 4,
                cpu_model: String::new(),
                memory_bytes: 4 << 30,
                hypervisors: vec![HypervisorInfo {
                    kind: HypervisorKind::Qemu,
                    available: true,
                    detail: format!("QEMU emulator version {version} (Debian)"),
                    accelerator: accel,
                    capabilities: vec![MIGRATE_CAP.into()],
                }],
                agent_version: String::new(),
                cpu_flags: flags.iter().map(|f| f.to_string()).collect(),
                storage: Vec::new(),
                tunnel_address: None,
                migration_address: Some("10.0.0.1".parse().unwrap()),
            },
            allocation: HostAllocation::default(),
            labels: Default::default(),
            zone: None,
            created_at: chrono::Utc::now(),
            last_seen: chrono::Utc::now(),
        }
    }

    fn vm(on: &str, mem_gib: u64) -> Vm {
        serde_json::from_value(serde_json::json!({
            "id": panal_types::VmId::new(),
            "name": "web", "project": "default", "generation": 1,
            "created_at": chrono::Utc::now(),
            "spec": { "vcpus": 1, "memory_bytes": mem_gib << 30, "hypervisor": "qemu",
                      "power_state": "running" },
            "status": { "phase": "running", "host": on, "observed_generation": 1 },
        }))
        .unwrap()
    }

    fn pool() -> Vec<Host> {
        vec![
            host("a", Accelerator::Tcg, "7.2.5", &[]),
            host("b", Accelerator::Tcg, "7.2.5", &[]),
            host("c", Accelerator::Tcg, "7.2.5", &[]),
        ]
    }

    fn check(hosts: &[Host], v: &Vm, to: Option<&str>) -> Result<Preflight, ApiError> {
        let to = to.map(|t| Name::parse(t).unwrap());
        preflight(&Policy::default(), v, 0, hosts, &[], to.as_ref(), false)
    }

    #[test]
    fn knobs_are_validated_with_their_field() {
        let ok = settings(&VmMigrate::default()).unwrap();
        assert_eq!(ok.downtime_limit_ms, DEFAULT_DOWNTIME_LIMIT_MS);
        assert!(ok.auto_converge && ok.max_bandwidth.is_none());
        let field = |r: VmMigrate| settings(&r).unwrap_err().field.unwrap();
        for d in [0, -5, 60_001] {
            let r = VmMigrate {
                downtime_limit_ms: Some(d),
                ..VmMigrate::default()
            };
            assert_eq!(field(r), "downtime_limit_ms");
        }
        for b in [-1, 0, 1000] {
            let r = VmMigrate {
                max_bandwidth: Some(b),
                ..VmMigrate::default()
            };
            assert_eq!(field(r), "max_bandwidth");
        }
        let pc = VmMigrate {
            post_copy: Some(true),
            ..VmMigrate::default()
        };
        assert_eq!(field(pc), "accept_post_copy_risk");
        let risk_only = VmMigrate {
            accept_post_copy_risk: Some(true),
            ..VmMigrate::default()
        };
        assert_eq!(field(risk_only), "accept_post_copy_risk");
    }

    #[test]
    fn only_a_running_vm_without_a_migration_or_operation_moves() {
        let mut v = vm("a", 1);
        assert_eq!(movable(&v).unwrap().as_str(), "a");
        v.status.phase = VmPhase::Stopped;
        v.spec.power_state = PowerState::Stopped;
        let e = movable(&v).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("not running"), "{}", e.message);
        let mut busy = vm("a", 1);
        busy.status.operation = Some(OperationId::new());
        assert_eq!(movable(&busy).unwrap_err().code, ErrorCode::Conflict);
    }

    #[test]
    fn the_target_is_checked_before_anything_moves() {
        let hosts = pool();
        let v = vm("a", 1);
        assert_eq!(check(&hosts, &v, Some("b")).unwrap().target, 1);
        let same = check(&hosts, &v, Some("a")).unwrap_err();
        assert_eq!(
            (same.code, same.field.as_deref()),
            (ErrorCode::InvalidValue, Some("to"))
        );
        let unknown = check(&hosts, &v, Some("zz")).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::NotFound);
        let mut cordoned = pool();
        cordoned[1].state = HostState::Cordoned;
        let e = check(&cordoned, &v, Some("b")).unwrap_err();
        assert!(e.message.contains("cordoned"), "{}", e.message);
        // No room: 8 GiB on a 4 GiB host.
        let big = vm("a", 8);
        let e = check(&hosts, &big, Some("b")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientCapacity);
        assert!(e.message.contains("memory"), "{}", e.message);
        // Older QEMU, other accelerator, missing CPU features under KVM.
        let mut older = pool();
        older[1] = host("b", Accelerator::Tcg, "7.1.0", &[]);
        assert!(
            check(&older, &v, Some("b"))
                .unwrap_err()
                .message
                .contains("older QEMU")
        );
        let mut accel = pool();
        accel[1] = host("b", Accelerator::Kvm, "7.2.5", &[]);
        assert!(check(&accel, &v, Some("b")).is_err());
        let kvm = vec![
            host("a", Accelerator::Kvm, "7.2.5", &["avx2", "sse4_2"]),
            host("b", Accelerator::Kvm, "7.2.5", &["sse4_2"]),
        ];
        assert!(
            check(&kvm, &v, Some("b"))
                .unwrap_err()
                .message
                .contains("avx2")
        );
    }

    #[test]
    fn without_a_target_the_scheduler_picks_another_host_that_can_take_it() {
        let mut hosts = pool();
        hosts[1].inventory.migration_address = None;
        let v = vm("a", 1);
        assert_eq!(check(&hosts, &v, None).unwrap().target, 2);
        hosts[2].state = HostState::Cordoned;
        let e = check(&hosts, &v, None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("to"));
    }

    #[test]
    fn local_disks_move_to_a_pool_of_the_same_name_with_room() {
        let hosts = pool();
        let v = vm("a", 1);
        let ok = preflight(&Policy::default(), &v, 0, &hosts, &[], None, true).unwrap();
        assert!(
            ok.checks.iter().any(|c| c.contains("root disk")),
            "{:?}",
            ok.checks
        );
        let mut with_volume: Vm = v.clone();
        with_volume.spec.volumes = vec![
            serde_json::from_value(serde_json::json!({
                "id": panal_types::VolumeId::new(), "volume": "data", "pool": "default",
                "host": "a", "file": "data.qcow2", "format": "qcow2", "size_bytes": 1 << 20,
                "shared": false, "boot": false,
            }))
            .unwrap(),
        ];
        let e = preflight(
            &Policy::default(),
            &with_volume,
            0,
            &hosts,
            &[],
            None,
            false,
        )
        .unwrap_err();
        assert!(e.message.contains("no local pool"), "{}", e.message);
        // A pool of that name with room on the target takes it.
        let mut with_pool = pool();
        with_pool[1].inventory.storage = vec![panal_types::host::StoragePoolInfo {
            name: "default".into(),
            path: "/p".into(),
            shared: false,
            total_bytes: 1 << 30,
            free_bytes: 1 << 30,
        }];
        let check_pool = |hosts: &[Host], to: Option<&Name>| {
            preflight(&Policy::default(), &with_volume, 0, hosts, &[], to, false)
        };
        assert_eq!(check_pool(&with_pool, None).unwrap().target, 1);
        with_pool[1].inventory.storage[0].free_bytes = 1000;
        let b = Name::parse("b").unwrap();
        let e = check_pool(&with_pool, Some(&b)).unwrap_err();
        assert!(e.message.contains("free"), "{}", e.message);
    }

    #[test]
    fn qemu_versions_are_read_from_the_version_line() {
        assert_eq!(
            qemu_version("QEMU emulator version 7.2.5 (Debian 1:7.2+dfsg-7)"),
            Some((7, 2, 5))
        );
        assert_eq!(qemu_version("not installed"), None);
    }
}
