//! The scheduler's planner: a pure function from (VM request, hosts, what they hold) to a
//! placement or to the reasons nothing fits. It reads no store and writes nothing; the
//! scheduling controller carries its plans out.
//!
//! Filters, in order: host state (and broken ratio labels), hypervisor, capabilities, zone, host
//! selector, size, overcommit-limited CPU and memory, hard group rules. Then a score: soft group
//! preference first, then load (spread: least loaded after placement; pack: most loaded).
//!
//! Image availability is not a filter: images live on the control plane and any host fetches
//! one on first use, so every host can boot every image.
//!
//! Large pools are sampled: the walk starts at `start` (the executor rotates it) and stops once
//! [`Policy::enough`] hosts fit, as kube-scheduler does. A VM in a placement group is planned
//! against every host, since its preference may sit on any of them. When nothing fits the walk
//! has seen every host, so the refusal counts are complete.

mod policy;
#[cfg(test)]
mod tests;

pub use policy::{
    CPU_OVERCOMMIT_LABEL, Candidate, MAX_MEMORY_RATIO, MAX_RATIO, MEMORY_OVERCOMMIT_LABEL,
    Overcommit, Policy, RatioError, Strategy, validate_host_labels,
};

use panal_types::host::HostAllocation;
use panal_types::vm::{GroupPolicy, HypervisorKind, Placement};
use panal_types::volume::DiskAttachment;
use std::collections::{BTreeMap, HashMap};

/// What a VM needs.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Hypervisor.
    pub hypervisor: HypervisorKind,
    /// Selectors, zone, capabilities, group.
    pub placement: &'a Placement,
    /// Its volumes: a host must be able to open each (its own pool, or a shared pool it has).
    pub volumes: &'a [DiskAttachment],
    /// It has NICs: a host must carry virtual networks.
    pub networked: bool,
}

/// Members of the request's placement group already placed: host index → how many.
pub type Members = HashMap<usize, u32>;

/// A chosen host.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Index into the hosts given to [`place`].
    pub host: usize,
    /// Hosts looked at (the executor starts the next walk after them).
    pub examined: usize,
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

/// Why one host cannot take the request; `None` when it can. `here` is how many members of the
/// request's group the host runs, `anywhere` how many are placed in all.
pub fn refusal(
    req: &Request<'_>,
    host: &Candidate,
    alloc: &HostAllocation,
    here: u32,
    anywhere: u32,
) -> Option<&'static str> {
    if let Some(r) = host.unschedulable {
        return Some(r);
    }
    let reachable = |d: &DiskAttachment| {
        if d.shared {
            host.shared_pools.contains(&d.pool)
        } else {
            host.name == d.host
        }
    };
    if !req.volumes.iter().all(reachable) {
        return Some("without the VM's volumes");
    }
    if req.networked && !host.networks {
        return Some("without virtual networks");
    }
    let p = req.placement;
    if host.available & policy::hypervisor_bit(req.hypervisor) == 0 {
        return Some("without the hypervisor");
    }
    if !p.capabilities.is_empty() {
        let hv = host
            .hypervisors
            .iter()
            .find(|h| h.kind == req.hypervisor && h.available);
        if !hv.is_some_and(|hv| p.capabilities.iter().all(|c| hv.capabilities.contains(c))) {
            return Some("without the capabilities");
        }
    }
    if p.zone.is_some() && host.zone != p.zone {
        return Some("outside the zone");
    }
    if !p
        .host_selector
        .iter()
        .all(|(k, v)| host.labels.get(k) == Some(v))
    {
        return Some("not matching the host selector");
    }
    if req.vcpus > host.cpus {
        return Some("with too few CPUs");
    }
    if alloc.vcpus + u64::from(req.vcpus) > host.cpu_cap {
        return Some("insufficient CPU");
    }
    if alloc.memory_bytes + req.memory_bytes > host.memory_cap {
        return Some("insufficient memory");
    }
    match &p.group {
        Some(g) if !g.soft && g.policy == GroupPolicy::AntiAffinity && here > 0 => {
            Some("running a member of the anti-affinity group")
        }
        Some(g) if !g.soft && g.policy == GroupPolicy::Affinity && anywhere > 0 && here == 0 => {
            Some("running no member of the affinity group")
        }
        _ => None,
    }
}

/// Load of a host after taking the request: the larger of its CPU and memory fractions.
fn load_after(req: &Request<'_>, host: &Candidate, alloc: &HostAllocation) -> f64 {
    let cpu = (alloc.vcpus + u64::from(req.vcpus)) as f64 / host.cpu_cap.max(1) as f64;
    let mem = (alloc.memory_bytes + req.memory_bytes) as f64 / host.memory_cap.max(1) as f64;
    cpu.max(mem)
}

/// Soft group preference of a host: lower is better (0 for requests without a soft rule).
fn preference(req: &Request<'_>, here: u32) -> u32 {
    match &req.placement.group {
        Some(g) if g.soft && g.policy == GroupPolicy::Affinity => u32::from(here == 0),
        Some(g) if g.soft && g.policy == GroupPolicy::AntiAffinity => here,
        _ => 0,
    }
}

/// Chooses a host. `allocs[i]` is what is already promised on `hosts[i]` (including earlier
/// placements of the same batch); `members` says where the request's group already runs; the
/// walk starts at host `start` (modulo the pool size).
pub fn place(
    req: &Request<'_>,
    hosts: &[Candidate],
    allocs: &[HostAllocation],
    members: &Members,
    policy: &Policy,
    start: usize,
) -> Result<Choice, NoFit> {
    let n = hosts.len();
    let enough = if req.placement.group.is_some() {
        usize::MAX
    } else {
        policy.enough(n)
    };
    let anywhere: u32 = members.values().sum();
    let mut best: Option<(usize, u32, f64)> = None;
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut fitting = 0usize;
    let mut examined = 0usize;
    for k in 0..n {
        let i = (start + k) % n;
        examined += 1;
        let here = members.get(&i).copied().unwrap_or(0);
        if let Some(r) = refusal(req, &hosts[i], &allocs[i], here, anywhere) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        fitting += 1;
        let rank = preference(req, here);
        let load = load_after(req, &hosts[i], &allocs[i]);
        let better = match best {
            None => true,
            Some((_, r, _)) if rank != r => rank < r,
            Some((_, _, b)) => match policy.strategy {
                Strategy::Spread => load < b,
                Strategy::Pack => load > b,
            },
        };
        if better {
            best = Some((i, rank, load));
        }
        if fitting >= enough {
            break;
        }
    }
    let Some((i, _, load)) = best else {
        return Err(NoFit { total: n, reasons });
    };
    let seen = if examined == n {
        format!("{fitting}/{n} hosts fit")
    } else {
        format!("{fitting}/{examined} sampled hosts fit (of {n})")
    };
    let mut explanation = format!(
        "{seen}; {} chose {} (load {:.0}% after placement)",
        policy.strategy.as_str(),
        hosts[i].name,
        load * 100.0
    );
    if let Some(g) = &req.placement.group {
        let here = members.get(&i).copied().unwrap_or(0);
        let kind = match g.policy {
            GroupPolicy::Affinity => "affinity",
            GroupPolicy::AntiAffinity => "anti-affinity",
        };
        let strength = if g.soft { "soft " } else { "" };
        let met = match g.policy {
            GroupPolicy::Affinity => anywhere == 0 || here > 0,
            GroupPolicy::AntiAffinity => here == 0,
        };
        explanation.push_str(&format!(
            "; {strength}{kind} group {}: {} ({here} of {anywhere} placed members on this host)",
            g.name,
            if met { "met" } else { "not met" }
        ));
    }
    Ok(Choice {
        host: i,
        examined,
        explanation,
    })
}
