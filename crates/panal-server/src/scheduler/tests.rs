//! Unit tests of the planner as plain functions: filters, scores, ratios, groups, sampling and
//! the explanations users read.

use super::*;
use panal_types::host::*;
use panal_types::vm::{Placement, PlacementGroup};
use panal_types::*;

fn host(name: &str, cpus: u32, mem_gib: u64, state: HostState) -> Host {
    Host {
        id: HostId::new(),
        name: Name::parse(name).unwrap(),
        state,
        mode: HostMode::Schedulable,
        drain: None,
        inventory: HostInventory {
            cpus,
            cpu_model: String::new(),
            memory_bytes: mem_gib << 30,
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
        labels: Default::default(),
        zone: None,
        created_at: chrono::Utc::now(),
        last_seen: chrono::Utc::now(),
    }
}

fn cands(hosts: &[Host], policy: &Policy) -> Vec<Candidate> {
    hosts.iter().map(|h| Candidate::new(h, policy)).collect()
}

fn req(vcpus: u32, mem_gib: u64, placement: &Placement) -> Request<'_> {
    Request {
        vcpus,
        memory_bytes: mem_gib << 30,
        hypervisor: HypervisorKind::Fake,
        placement,
        volumes: &[],
        networked: false,
    }
}

fn alloc(vcpus: u64, mem_gib: u64) -> HostAllocation {
    HostAllocation {
        vcpus,
        memory_bytes: mem_gib << 30,
        vms: 1,
    }
}

fn place_simple(
    r: &Request<'_>,
    hosts: &[Host],
    allocs: &[HostAllocation],
    policy: &Policy,
) -> Result<Choice, NoFit> {
    place(r, &cands(hosts, policy), allocs, &Members::new(), policy, 0)
}

const NONE: &Placement = &Placement {
    host_selector: std::collections::BTreeMap::new(),
    zone: None,
    capabilities: vec![],
    group: None,
};

#[test]
fn spread_picks_least_loaded_and_pack_the_fullest() {
    let hosts = vec![
        host("a", 8, 16, HostState::Ready),
        host("b", 8, 16, HostState::Ready),
    ];
    let allocs = vec![alloc(4, 8), HostAllocation::default()];
    let spread = Policy::default();
    let c = place_simple(&req(1, 1, NONE), &hosts, &allocs, &spread).unwrap();
    assert_eq!(c.host, 1);
    assert!(
        c.explanation.starts_with("2/2 hosts fit; spread chose b"),
        "{}",
        c.explanation
    );
    let pack = Policy {
        strategy: Strategy::Pack,
        ..Policy::default()
    };
    assert_eq!(
        place_simple(&req(1, 1, NONE), &hosts, &allocs, &pack)
            .unwrap()
            .host,
        0
    );
}

#[test]
fn counts_reasons_when_nothing_fits() {
    let hosts = vec![
        host("a", 8, 4, HostState::Ready),
        host("b", 8, 4, HostState::Ready),
        host("c", 8, 64, HostState::Cordoned),
        host("d", 8, 64, HostState::NotReady),
        host("e", 8, 4, HostState::Ready),
    ];
    let allocs = vec![HostAllocation::default(); 5];
    let err = place_simple(&req(1, 8, NONE), &hosts, &allocs, &Policy::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/5 hosts fit: 1 cordoned, 3 insufficient memory, 1 not ready"
    );
}

#[test]
fn overcommit_limits_cpu() {
    let hosts = vec![host("a", 2, 64, HostState::Ready)];
    let allocs = vec![alloc(8, 0)];
    let p = Policy::default();
    let err = place_simple(&req(1, 1, NONE), &hosts, &allocs, &p).unwrap_err();
    assert_eq!(err.reasons.get("insufficient CPU"), Some(&1));
    let err = place_simple(&req(3, 1, NONE), &hosts, &[HostAllocation::default()], &p);
    assert_eq!(err.unwrap_err().reasons.get("with too few CPUs"), Some(&1));
}

#[test]
fn host_labels_and_zones_set_ratios() {
    let mut a = host("a", 2, 4, HostState::Ready);
    a.labels.insert(MEMORY_OVERCOMMIT_LABEL.into(), "2".into());
    let mut b = host("b", 2, 4, HostState::Ready);
    b.zone = Some("z1".into());
    let mut p = Policy::default();
    p.zone_overcommit
        .insert("z1".into(), Overcommit::new(1.0, 1.5).unwrap());
    let c = cands(&[a, b], &p);
    assert_eq!(c[0].memory_cap, 8 << 30);
    assert_eq!(c[0].cpu_cap, 8, "the default CPU ratio is kept");
    assert_eq!(c[1].memory_cap, 6 << 30);
    assert_eq!(c[1].cpu_cap, 2);
    // 6 GiB fits on a (8 GiB promised), not on b (6 GiB promised, 1 already there).
    let allocs = vec![alloc(0, 1), alloc(0, 1)];
    let ch = place(&req(1, 6, NONE), &c, &allocs, &Members::new(), &p, 0).unwrap();
    assert_eq!(ch.host, 0);
}

#[test]
fn absurd_ratios_are_refused() {
    assert!(Overcommit::new(0.5, 1.0).is_err());
    assert!(Overcommit::new(1.0, 65.0).is_err());
    assert!(Overcommit::new(64.0, 8.0).is_ok());
    assert!(Overcommit::new(1.0, 9.0).is_err(), "memory is capped at 8");
    assert!(Overcommit::new(f64::NAN, 1.0).is_err());
    let e = Overcommit::new(100.0, 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cpu overcommit ratio 100 is invalid: it must be a number from 1 to 64"
    );
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(CPU_OVERCOMMIT_LABEL.to_string(), "lots".to_string());
    let err = validate_host_labels(&labels).unwrap_err();
    assert_eq!(err.field.as_deref(), Some("labels.panal.io/cpu-overcommit"));
    // A host with a broken label takes nothing rather than being overbooked by a guess.
    let mut h = host("a", 8, 8, HostState::Ready);
    h.labels = labels;
    let err = place_simple(
        &req(1, 1, NONE),
        &[h],
        &[HostAllocation::default()],
        &Policy::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/1 hosts fit: 1 with an invalid overcommit label"
    );
}

#[test]
fn selectors_zone_and_capabilities_filter() {
    let mut a = host("a", 8, 8, HostState::Ready);
    a.labels.insert("disk".into(), "ssd".into());
    a.zone = Some("east".into());
    let mut b = host("b", 8, 8, HostState::Ready);
    b.zone = Some("west".into());
    let c = host("c", 8, 8, HostState::Ready);
    let hosts = vec![a, b, c];
    let allocs = vec![HostAllocation::default(); 3];
    let p = Policy::default();
    let mut sel = Placement::default();
    sel.host_selector.insert("disk".into(), "ssd".into());
    assert_eq!(
        place_simple(&req(1, 1, &sel), &hosts, &allocs, &p)
            .unwrap()
            .host,
        0
    );
    let west = Placement {
        zone: Some("west".into()),
        ..Placement::default()
    };
    assert_eq!(
        place_simple(&req(1, 1, &west), &hosts, &allocs, &p)
            .unwrap()
            .host,
        1
    );
    let both = Placement {
        zone: Some("west".into()),
        ..sel.clone()
    };
    let err = place_simple(&req(1, 1, &both), &hosts, &allocs, &p).unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/3 hosts fit: 1 not matching the host selector, 2 outside the zone"
    );
    let migrate = Placement {
        capabilities: vec!["migrate".into()],
        ..Placement::default()
    };
    let err = place_simple(&req(1, 1, &migrate), &hosts, &allocs, &p).unwrap_err();
    assert_eq!(err.to_string(), "0/3 hosts fit: 3 without the capabilities");
    let pause = Placement {
        capabilities: vec!["pause".into()],
        ..Placement::default()
    };
    assert!(place_simple(&req(1, 1, &pause), &hosts, &allocs, &p).is_ok());
    let mut qemu = req(1, 1, NONE);
    qemu.hypervisor = HypervisorKind::Qemu;
    let err = place_simple(&qemu, &hosts, &allocs, &p).unwrap_err();
    assert_eq!(err.reasons.get("without the hypervisor"), Some(&3));
}

fn grouped(policy: GroupPolicy, soft: bool) -> Placement {
    Placement {
        group: Some(PlacementGroup {
            name: Name::parse("web").unwrap(),
            policy,
            soft,
        }),
        ..Placement::default()
    }
}

#[test]
fn hard_anti_affinity_keeps_members_apart_or_pending() {
    let hosts = vec![
        host("a", 8, 8, HostState::Ready),
        host("b", 8, 8, HostState::Ready),
    ];
    let p = Policy::default();
    let c = cands(&hosts, &p);
    let allocs = vec![HostAllocation::default(); 2];
    let g = grouped(GroupPolicy::AntiAffinity, false);
    // b is emptier but runs a member: a is chosen.
    let allocs_b_empty = vec![alloc(4, 4), HostAllocation::default()];
    let members: Members = [(1, 1)].into();
    let ch = place(&req(1, 1, &g), &c, &allocs_b_empty, &members, &p, 0).unwrap();
    assert_eq!(ch.host, 0);
    assert!(
        ch.explanation
            .contains("anti-affinity group web: met (0 of 1"),
        "{}",
        ch.explanation
    );
    let members: Members = [(0, 1), (1, 2)].into();
    let err = place(&req(1, 1, &g), &c, &allocs, &members, &p, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/2 hosts fit: 2 running a member of the anti-affinity group"
    );
    // Soft: placed anyway, on the host with the fewest members, and the explanation says so.
    let soft = grouped(GroupPolicy::AntiAffinity, true);
    let ch = place(&req(1, 1, &soft), &c, &allocs, &members, &p, 0).unwrap();
    assert_eq!(ch.host, 0);
    assert!(
        ch.explanation
            .contains("soft anti-affinity group web: not met"),
        "{}",
        ch.explanation
    );
}

#[test]
fn affinity_follows_the_first_member() {
    let hosts = vec![
        host("a", 8, 8, HostState::Ready),
        host("b", 8, 8, HostState::Ready),
        host("c", 8, 8, HostState::Ready),
    ];
    let p = Policy::default();
    let c = cands(&hosts, &p);
    let allocs = vec![
        alloc(6, 6),
        HostAllocation::default(),
        HostAllocation::default(),
    ];
    let hard = grouped(GroupPolicy::Affinity, false);
    // No member yet: free choice (spread picks an empty host).
    assert_ne!(
        place(&req(1, 1, &hard), &c, &allocs, &Members::new(), &p, 0)
            .unwrap()
            .host,
        0
    );
    // A member on the busy host a: hard affinity goes there despite the load.
    let members: Members = [(0, 1)].into();
    assert_eq!(
        place(&req(1, 1, &hard), &c, &allocs, &members, &p, 0)
            .unwrap()
            .host,
        0
    );
    // When a is full, hard affinity waits; soft affinity goes elsewhere.
    let err = place(&req(4, 4, &hard), &c, &allocs, &members, &p, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/3 hosts fit: 1 insufficient memory, 2 running no member of the affinity group"
    );
    let soft = grouped(GroupPolicy::Affinity, true);
    assert_ne!(
        place(&req(4, 4, &soft), &c, &allocs, &members, &p, 0)
            .unwrap()
            .host,
        0
    );
    assert_eq!(
        place(&req(1, 1, &soft), &c, &allocs, &members, &p, 0)
            .unwrap()
            .host,
        0
    );
}

#[test]
fn large_pools_are_sampled_from_a_rotating_start() {
    let hosts: Vec<Host> = (0..1000)
        .map(|i| host(&format!("h{i}"), 8, 8, HostState::Ready))
        .collect();
    let p = Policy::default();
    let c = cands(&hosts, &p);
    let allocs = vec![HostAllocation::default(); 1000];
    let ch = place(&req(1, 1, NONE), &c, &allocs, &Members::new(), &p, 950).unwrap();
    assert_eq!(ch.examined, 100, "5% of 1000 is under the floor of 100");
    assert_eq!(ch.host, 950, "ties keep the first host of the walk");
    assert!(
        ch.explanation
            .starts_with("100/100 sampled hosts fit (of 1000)"),
        "{}",
        ch.explanation
    );
    // Only host 3 fits: the walk goes round and the counts cover every host.
    let mut allocs = vec![alloc(32, 0); 1000];
    allocs[3] = HostAllocation::default();
    let ch = place(&req(1, 1, NONE), &c, &allocs, &Members::new(), &p, 10).unwrap();
    assert_eq!((ch.host, ch.examined), (3, 1000));
    allocs[3] = alloc(32, 0);
    let err = place(&req(1, 1, NONE), &c, &allocs, &Members::new(), &p, 10).unwrap_err();
    assert_eq!(err.to_string(), "0/1000 hosts fit: 1000 insufficient CPU");
}

#[test]
fn volumes_keep_a_vm_where_they_can_be_opened() {
    use panal_types::host::StoragePoolInfo;
    use panal_types::volume::{DiskAttachment, VolumeFormat};
    let pool = |name: &str, shared: bool| StoragePoolInfo {
        name: name.into(),
        path: format!("/pools/{name}"),
        shared,
        total_bytes: 1 << 40,
        free_bytes: 1 << 40,
    };
    let mut hosts = vec![
        host("a", 8, 16, HostState::Ready),
        host("b", 8, 16, HostState::Ready),
        host("c", 8, 16, HostState::Ready),
    ];
    for h in &mut hosts[..2] {
        h.inventory.storage = vec![pool("default", false), pool("nfs", true)];
    }
    hosts[2].inventory.storage = vec![pool("default", false)];
    let allocs = vec![HostAllocation::default(); 3];
    let disk = |pool: &str, host: &str, shared: bool| DiskAttachment {
        volume: Name::parse("data").unwrap(),
        id: panal_types::VolumeId::new(),
        pool: pool.into(),
        host: Name::parse(host).unwrap(),
        shared,
        file: "x.qcow2".into(),
        format: VolumeFormat::Qcow2,
        size_bytes: 1 << 30,
        boot: false,
        slot: 0,
    };
    let placement = Placement::default();
    // A local volume of host c: only c.
    let local = [disk("default", "c", false)];
    let mut r = req(1, 1, NONE);
    r.placement = &placement;
    r.volumes = &local;
    let c = place_simple(&r, &hosts, &allocs, &Policy::default()).unwrap();
    assert_eq!(c.host, 2);
    // A shared-pool volume: any host with that shared pool (a or b), never c.
    let shared = [disk("nfs", "a", true)];
    r.volumes = &shared;
    let cands = cands(&hosts, &Policy::default());
    for (i, cand) in cands.iter().enumerate() {
        let refused = refusal(&r, cand, &allocs[i], 0, 0);
        assert_eq!(refused.is_none(), i < 2, "host {i}: {refused:?}");
    }
    // Both: nothing fits, and the reason says why.
    let both = [disk("default", "c", false), disk("nfs", "a", true)];
    r.volumes = &both;
    let err = place_simple(&r, &hosts, &allocs, &Policy::default()).unwrap_err();
    assert_eq!(err.to_string(), "0/3 hosts fit: 3 without the VM's volumes");
}
