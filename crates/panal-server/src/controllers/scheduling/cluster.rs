//! The scheduling controller's in-memory picture of the pool: every host digested for the
//! planner with its allocation and store revision, and where each placement group's members
//! run. Fed by the controller's watches, and by its own commits at once (so the next batch need
//! not wait for the echo). Events at or below the revision already held are ignored, so neither
//! a commit's echo nor an event that was queued before the commit can roll the picture back.
//! Owned by the one controller task: no locking.

use crate::scheduler::{Candidate, Members, Policy};
use panal_types::Name;
use panal_types::host::{Host, HostAllocation};
use panal_types::vm::Vm;
use std::collections::HashMap;

/// A placement group: (project, group name).
pub type GroupKey = (Name, Name);

/// The pool as the planner sees it.
pub struct Cluster {
    policy: Policy,
    /// Hosts digested for the planner.
    pub candidates: Vec<Candidate>,
    /// Host records as last read or written (written back with new allocations).
    pub records: Vec<Host>,
    /// Store revision of each record.
    pub revs: Vec<u64>,
    /// Allocations, including tentative placements of the batch being planned.
    pub allocs: Vec<HostAllocation>,
    index: HashMap<Name, usize>,
    /// Group → host → members placed there.
    groups: HashMap<GroupKey, HashMap<Name, u32>>,
    /// VM key → (revision seen, its group and host if placed): only VMs in groups.
    grouped_vms: HashMap<String, (u64, Option<(GroupKey, Name)>)>,
    /// Where the planner's next walk starts (rotates so sampling covers the whole pool).
    pub start: usize,
}

impl Cluster {
    /// An empty pool under a policy.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            candidates: Vec::new(),
            records: Vec::new(),
            revs: Vec::new(),
            allocs: Vec::new(),
            index: HashMap::new(),
            groups: HashMap::new(),
            grouped_vms: HashMap::new(),
            start: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes in a host as read at `rev`. Returns whether anything that could let a parked VM
    /// fit changed (a new host, freed capacity, a new state, labels or inventory).
    pub fn upsert_host(&mut self, host: Host, rev: u64) -> bool {
        let cand = Candidate::new(&host, &self.policy);
        match self.index.get(&host.name).copied() {
            Some(i) if self.revs[i] >= rev => false,
            Some(i) => {
                let old = &self.records[i];
                let freed = host.allocation.vcpus < old.allocation.vcpus
                    || host.allocation.memory_bytes < old.allocation.memory_bytes;
                let changed = freed
                    || host.state != old.state
                    || host.labels != old.labels
                    || host.zone != old.zone
                    || host.inventory != old.inventory;
                self.allocs[i] = host.allocation.clone();
                self.candidates[i] = cand;
                self.records[i] = host;
                self.revs[i] = rev;
                changed
            }
            None => {
                self.index.insert(host.name.clone(), self.records.len());
                self.allocs.push(host.allocation.clone());
                self.candidates.push(cand);
                self.records.push(host);
                self.revs.push(rev);
                true
            }
        }
    }

    /// The store revision held for a host, by name.
    pub fn rev_of(&self, name: &str) -> Option<u64> {
        let name = Name::parse(name).ok()?;
        self.index.get(&name).map(|&i| self.revs[i])
    }

    /// Forgets a deleted host.
    pub fn remove_host(&mut self, name: &str) {
        let Some(i) = self.records.iter().position(|h| h.name.as_str() == name) else {
            return;
        };
        self.candidates.swap_remove(i);
        self.records.swap_remove(i);
        self.revs.swap_remove(i);
        self.allocs.swap_remove(i);
        self.index = self
            .records
            .iter()
            .enumerate()
            .map(|(i, h)| (h.name.clone(), i))
            .collect();
    }

    /// Index of a host by name.
    pub fn host_index(&self, name: &Name) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// Records a VM's group membership as of `rev` (`None`: the VM is gone).
    pub fn observe_vm(&mut self, key: &str, rev: u64, vm: Option<&Vm>) {
        let now = vm.and_then(|vm| {
            let g = vm.spec.placement.group.as_ref()?;
            let host = vm.status.host.clone()?;
            Some(((vm.project.clone(), g.name.clone()), host))
        });
        let grouped = vm.is_some_and(|v| v.spec.placement.group.is_some());
        if !grouped && !self.grouped_vms.contains_key(key) {
            return;
        }
        let before = match self.grouped_vms.get(key) {
            Some((seen, _)) if *seen > rev => return,
            Some((_, before)) => before.clone(),
            None => None,
        };
        if before == now {
            self.grouped_vms.insert(key.to_owned(), (rev, now));
            return;
        }
        if let Some((g, h)) = &before
            && let Some(hosts) = self.groups.get_mut(g)
        {
            if let Some(n) = hosts.get_mut(h) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    hosts.remove(h);
                }
            }
            if hosts.is_empty() {
                self.groups.remove(g);
            }
        }
        if let Some((g, h)) = &now {
            *self
                .groups
                .entry(g.clone())
                .or_default()
                .entry(h.clone())
                .or_default() += 1;
        }
        if vm.is_some() {
            self.grouped_vms.insert(key.to_owned(), (rev, now));
        } else {
            self.grouped_vms.remove(key);
        }
    }

    /// Where the members of `vm`'s group run (empty for VMs in no group).
    pub fn members(&self, vm: &Vm) -> Members {
        let Some(g) = &vm.spec.placement.group else {
            return Members::new();
        };
        let key = (vm.project.clone(), g.name.clone());
        self.groups
            .get(&key)
            .map(|hosts| {
                hosts
                    .iter()
                    .filter_map(|(h, n)| self.host_index(h).map(|i| (i, *n)))
                    .collect()
            })
            .unwrap_or_default()
    }
}
