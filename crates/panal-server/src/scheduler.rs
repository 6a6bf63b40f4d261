//! The scheduler's planner: a pure function from (VM request, hosts) to a placement or to the
//! reasons nothing fits. It reads no store and writes nothing; the scheduling controller carries
//! its plans out. Filters first (state, hypervisor, size, overcommit-limited capacity), then a
//! score (spread: least loaded; pack: most loaded that still fits).

use panal_types::host::{Host, HostAllocation, HostState};
use panal_types::vm::HypervisorKind;
use std::collections::BTreeMap;

/// How hosts are chosen among those that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Least loaded first: spreads VMs for headroom and failure isolation.
    #[default]
    Spread,
    /// Most loaded first: fills hosts so others stay empty.
    Pack,
}

/// Scheduling policy.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// vCPUs promised per host CPU.
    pub cpu_overcommit: f64,
    /// Memory promised per byte of host memory.
    pub memory_overcommit: f64,
    /// Spread or pack.
    pub strategy: Strategy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            strategy: Strategy::Spread,
        }
    }
}

/// What a VM needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Hypervisor.
    pub hypervisor: HypervisorKind,
}

/// A chosen host.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Index into the hosts given to [`place`].
    pub host: usize,
    /// Why, for `panal vm show`.
    pub explanation: String,
}

/// Why nothing fits: how many hosts were refused for each reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoFit {
    /// Hosts considered.
    pub total: usize,
    /// Reason → number of hosts.
    pub reasons: BTreeMap<&'static str, usize>,
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0/{} hosts fit", self.total)?;
        let parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Why one host cannot take the request; `None` when it can.
pub fn refusal(
    req: &Request,
    host: &Host,
    alloc: &HostAllocation,
    policy: &Policy,
) -> Option<&'static str> {
    match host.state {
        HostState::Ready => {}
        HostState::NotReady => return Some("not ready"),
        HostState::Cordoned => return Some("cordoned"),
        HostState::Draining => return Some("draining"),
        HostState::Maintenance => return Some("in maintenance"),
    }
    if !host
        .inventory
        .hypervisors
        .iter()
        .any(|h| h.kind == req.hypervisor && h.available)
    {
        return Some("without the hypervisor");
    }
    if req.vcpus > host.inventory.cpus {
        return Some("with too few CPUs");
    }
    let cpu_cap = (f64::from(host.inventory.cpus) * policy.cpu_overcommit) as u64;
    if alloc.vcpus + u64::from(req.vcpus) > cpu_cap {
        return Some("insufficient CPU");
    }
    let mem_cap = (host.inventory.memory_bytes as f64 * policy.memory_overcommit) as u64;
    if alloc.memory_bytes + req.memory_bytes > mem_cap {
        return Some("insufficient memory");
    }
    None
}

/// Load of a host after taking the request: the larger of its CPU and memory fractions.
fn load_after(req: &Request, host: &Host, alloc: &HostAllocation, policy: &Policy) -> f64 {
    let cpu_cap = (f64::from(host.inventory.cpus) * policy.cpu_overcommit).max(1.0);
    let mem_cap = (host.inventory.memory_bytes as f64 * policy.memory_overcommit).max(1.0);
    let cpu = (alloc.vcpus + u64::from(req.vcpus)) as f64 / cpu_cap;
    let mem = (alloc.memory_bytes + req.memory_bytes) as f64 / mem_cap;
    cpu.max(mem)
}

/// Chooses a host. `allocs[i]` is what is already promised on `hosts[i]` (including earlier
/// placements of the same batch).
pub fn place(
    req: &Request,
    hosts: &[Host],
    allocs: &[HostAllocation],
    policy: &Policy,
) -> Result<Placement, NoFit> {
    let mut best: Option<(usize, f64)> = None;
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fitting = 0usize;
    for (i, host) in hosts.iter().enumerate() {
        if let Some(r) = refusal(req, host, &allocs[i], policy) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        fitting += 1;
        let load = load_after(req, host, &allocs[i], policy);
        let better = match (best, policy.strategy) {
            (None, _) => true,
            (Some((_, b)), Strategy::Spread) => load < b,
            (Some((_, b)), Strategy::Pack) => load > b,
        };
        if better {
            best = Some((i, load));
        }
    }
    match best {
        Some((i, load)) => Ok(Placement {
            host: i,
            explanation: format!(
                "{}/{} hosts fit; {} chose {} (load {:.0}% after placement)",
                fitting,
                hosts.len(),
                match policy.strategy {
                    Strategy::Spread => "spread",
                    Strategy::Pack => "pack",
                },
                hosts[i].name,
                load * 100.0
            ),
        }),
        None => Err(NoFit {
            total: hosts.len(),
            reasons,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use panal_types::host::*;
    use panal_types::*;

    fn host(name: &str, cpus: u32, mem_gib: u64, state: HostState) -> Host {
        Host {
            id: HostId::new(),
            name: Name::parse(name).unwrap(),
            state,
            inventory: HostInventory {
                cpus,
                cpu_model: String::new(),
                memory_bytes: mem_gib << 30,
                hypervisors: vec![HypervisorInfo {
                    kind: HypervisorKind::Fake,
                    available: true,
                    detail: String::new(),
                    accelerator: Accelerator::None,
                    capabilities: vec![],
                }],
                agent_version: String::new(),
            },
            allocation: HostAllocation::default(),
            labels: Default::default(),
            zone: None,
            created_at: chrono::Utc::now(),
            last_seen: chrono::Utc::now(),
        }
    }

    fn req(vcpus: u32, mem_gib: u64) -> Request {
        Request {
            vcpus,
            memory_bytes: mem_gib << 30,
            hypervisor: HypervisorKind::Fake,
        }
    }

    #[test]
    fn spread_picks_least_loaded_and_pack_the_fullest() {
        let hosts = vec![
            host("a", 8, 16, HostState::Ready),
            host("b", 8, 16, HostState::Ready),
        ];
        let allocs = vec![
            HostAllocation {
                vcpus: 4,
                memory_bytes: 8 << 30,
                vms: 2,
            },
            HostAllocation::default(),
        ];
        let spread = Policy::default();
        assert_eq!(place(&req(1, 1), &hosts, &allocs, &spread).unwrap().host, 1);
        let pack = Policy {
            strategy: Strategy::Pack,
            ..Policy::default()
        };
        assert_eq!(place(&req(1, 1), &hosts, &allocs, &pack).unwrap().host, 0);
    }

    #[test]
    fn counts_reasons_when_nothing_fits() {
        let hosts = vec![
            host("a", 8, 4, HostState::Ready),
            host("b", 8, 4, HostState::Ready),
            host("c", 8, 64, HostState::Cordoned),
        ];
        let allocs = vec![HostAllocation::default(); 3];
        let err = place(&req(1, 8), &hosts, &allocs, &Policy::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 hosts fit: 1 cordoned, 2 insufficient memory"
        );
    }

    #[test]
    fn overcommit_limits_cpu() {
        let hosts = vec![host("a", 2, 64, HostState::Ready)];
        let allocs = vec![HostAllocation {
            vcpus: 8,
            memory_bytes: 0,
            vms: 4,
        }];
        let err = place(&req(1, 1), &hosts, &allocs, &Policy::default()).unwrap_err();
        assert_eq!(err.reasons.get("insufficient CPU"), Some(&1));
        assert!(
            place(&req(3, 1), &hosts, &allocs, &Policy::default()).is_err(),
            "3 vCPUs > 2 CPUs"
        );
    }
}
