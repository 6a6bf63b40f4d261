//! Scheduling policy: spread or pack, overcommit ratios (a default, per zone, and per host through
//! host labels) and how many hosts a decision samples. Also [`Candidate`]: a host digested once
//! for the planner (capacities with their ratios applied), so a decision costs a few comparisons
//! per host rather than label look-ups and float arithmetic.

use panal_types::host::{Host, HostState, HypervisorInfo};
use panal_types::vm::HypervisorKind;
use panal_types::{ApiError, Name};
use std::collections::BTreeMap;

/// Host label overriding the CPU overcommit ratio of that host (e.g. `"8"`).
pub const CPU_OVERCOMMIT_LABEL: &str = "panal.io/cpu-overcommit";
/// Host label overriding the memory overcommit ratio of that host (e.g. `"1.5"`).
pub const MEMORY_OVERCOMMIT_LABEL: &str = "panal.io/memory-overcommit";
/// The largest CPU overcommit ratio accepted: 64 vCPUs per core is already a host of idle
/// VMs; beyond it a promise means nothing (and is surely a typo).
pub const MAX_RATIO: f64 = 64.0;
/// The largest memory overcommit ratio accepted: memory cannot be time-sliced, so promising more
/// than 8 bytes per byte can only end in the host swapping or killing guests.
pub const MAX_MEMORY_RATIO: f64 = 8.0;

/// How hosts are chosen among those that fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Least loaded first: spreads VMs for headroom and failure isolation.
    #[default]
    Spread,
    /// Most loaded first: fills hosts so others stay empty.
    Pack,
}

impl Strategy {
    /// The name used in explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Pack => "pack",
        }
    }
}

/// A ratio below 1, above its cap ([`MAX_RATIO`] for CPU, [`MAX_MEMORY_RATIO`] for memory),
/// or not a number.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "{what} overcommit ratio {value} is invalid: it must be a number from 1 to {}",
    max_for(what)
)]
pub struct RatioError {
    /// `cpu` or `memory`.
    pub what: &'static str,
    /// The refused value as given.
    pub value: String,
}

fn max_for(what: &str) -> f64 {
    if what == "memory" {
        MAX_MEMORY_RATIO
    } else {
        MAX_RATIO
    }
}

/// How much of a host's CPU and memory may be promised: vCPUs per CPU, bytes per byte.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overcommit {
    cpu: f64,
    memory: f64,
}

fn check(what: &'static str, v: f64) -> Result<f64, RatioError> {
    if v.is_finite() && (1.0..=max_for(what)).contains(&v) {
        Ok(v)
    } else {
        Err(RatioError {
            what,
            value: v.to_string(),
        })
    }
}

impl Overcommit {
    /// Ratios checked to be within `1..=64` (CPU) and `1..=8` (memory): below 1 would waste what
    /// a host has, above the cap is surely a typo.
    pub fn new(cpu: f64, memory: f64) -> Result<Self, RatioError> {
        Ok(Self {
            cpu: check("cpu", cpu)?,
            memory: check("memory", memory)?,
        })
    }

    /// vCPUs per host CPU.
    pub fn cpu(&self) -> f64 {
        self.cpu
    }

    /// Bytes promised per byte of host memory.
    pub fn memory(&self) -> f64 {
        self.memory
    }

    /// These ratios overridden by a host's labels, if it carries any.
    pub fn with_host_labels(self, labels: &BTreeMap<String, String>) -> Result<Self, RatioError> {
        let parse = |what: &'static str, key: &str, default: f64| match labels.get(key) {
            None => Ok(default),
            Some(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| RatioError {
                    what,
                    value: s.clone(),
                })
                .and_then(|v| check(what, v)),
        };
        Ok(Self {
            cpu: parse("cpu", CPU_OVERCOMMIT_LABEL, self.cpu)?,
            memory: parse("memory", MEMORY_OVERCOMMIT_LABEL, self.memory)?,
        })
    }
}

impl Default for Overcommit {
    fn default() -> Self {
        Self {
            cpu: 4.0,
            memory: 1.0,
        }
    }
}

/// Checks the overcommit labels of a host (for registration and label edits): 400 with the
/// label as the field when a ratio is not a number from 1 to its cap.
pub fn validate_host_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    Overcommit::default()
        .with_host_labels(labels)
        .map(|_| ())
        .map_err(|e| {
            let key = if e.what == "cpu" {
                CPU_OVERCOMMIT_LABEL
            } else {
                MEMORY_OVERCOMMIT_LABEL
            };
            ApiError::invalid(&format!("labels.{key}"), e.to_string())
        })
}

/// Scheduling policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Ratios of hosts that neither their zone nor their labels say otherwise for.
    pub overcommit: Overcommit,
    /// Ratios per zone (host labels still win).
    pub zone_overcommit: BTreeMap<String, Overcommit>,
    /// Spread or pack.
    pub strategy: Strategy,
    /// Stop a decision after this many fitting hosts (0: adaptive, see [`Policy::enough`]).
    pub sample: usize,
}

impl Policy {
    /// The ratios that apply to a host.
    pub fn overcommit_for(&self, host: &Host) -> Result<Overcommit, RatioError> {
        let base = host
            .zone
            .as_ref()
            .and_then(|z| self.zone_overcommit.get(z))
            .copied()
            .unwrap_or(self.overcommit);
        base.with_host_labels(&host.labels)
    }

    /// How many fitting hosts a decision looks at before choosing among them: all of a small
    /// pool, and 5% (at least 100) of a large one, as kube-scheduler does. Scores are relative
    /// loads, so the best of a few hundred random fits balances nearly as well as the best of
    /// all, at a fraction of the cost.
    pub fn enough(&self, hosts: usize) -> usize {
        if self.sample > 0 {
            self.sample
        } else {
            (hosts / 20).max(100)
        }
    }
}

/// A host as the planner sees it: capacities with ratios applied, and why it is unschedulable
/// whatever the request (its state, a broken ratio label).
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Host name.
    pub name: Name,
    /// Set when the host takes no VM at all.
    pub unschedulable: Option<&'static str>,
    /// Physical CPUs (no VM may have more vCPUs than this).
    pub cpus: u32,
    /// vCPUs it may be promised.
    pub cpu_cap: u64,
    /// Memory it may be promised.
    pub memory_cap: u64,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its zone.
    pub zone: Option<String>,
    /// Its hypervisors.
    pub hypervisors: Vec<HypervisorInfo>,
    /// Its shared storage pools (their volumes can be opened here).
    pub shared_pools: Vec<String>,
    /// It carries virtual networks (has a tunnel address).
    pub networks: bool,
    /// One bit per available hypervisor kind ([`hypervisor_bit`]): the filter every request
    /// runs, answered without following `hypervisors` to the heap (the walk over a large pool
    /// is bound by memory reads, not arithmetic).
    pub available: u32,
}

/// The bit of a hypervisor kind in [`Candidate::available`].
pub fn hypervisor_bit(kind: HypervisorKind) -> u32 {
    1 << (kind as u32)
}

impl Candidate {
    /// Digests a host under a policy.
    pub fn new(host: &Host, policy: &Policy) -> Self {
        let (ratios, bad_label) = match policy.overcommit_for(host) {
            Ok(r) => (r, false),
            Err(_) => (Overcommit::default(), true),
        };
        let unschedulable = match host.state {
            HostState::Ready if bad_label => Some("with an invalid overcommit label"),
            HostState::Ready => None,
            HostState::NotReady => Some("not ready"),
            HostState::Cordoned => Some("cordoned"),
            HostState::Draining => Some("draining"),
            HostState::Maintenance => Some("in maintenance"),
        };
        Self {
            name: host.name.clone(),
            unschedulable,
            cpus: host.inventory.cpus,
            cpu_cap: (f64::from(host.inventory.cpus) * ratios.cpu()) as u64,
            memory_cap: (host.inventory.memory_bytes as f64 * ratios.memory()) as u64,
            labels: host.labels.clone(),
            zone: host.zone.clone(),
            hypervisors: host.inventory.hypervisors.clone(),
            networks: host.inventory.tunnel_address.is_some(),
            shared_pools: host
                .inventory
                .storage
                .iter()
                .filter(|p| p.shared)
                .map(|p| p.name.clone())
                .collect(),
            available: host
                .inventory
                .hypervisors
                .iter()
                .filter(|h| h.available)
                .fold(0, |m, h| m | hypervisor_bit(h.kind)),
        }
    }
}
