//! Host network plans: what one host must have for the NICs of its VMs, derived from the
//! store (VMs and where they run, networks, security groups, hosts' tunnel addresses) and
//! streamed to the host's agent whenever it changes. The agent converges bridges, VXLAN
//! devices and their forwarding entries, taps, nftables rules and DHCP answers to it.
//!
//! Nothing here is stored: a plan is a pure function of the records, recomputed after a change
//! to any of them (debounced), so it cannot drift from the state it is computed from.

use super::App;
use crate::keys;
use futures::StreamExt;
use ipnet::Ipv4Net;
use panal_agent::link::{LinkError, NetworkPlanStream};
use panal_store::WatchEvent;
use panal_types::host::Host;
use panal_types::network::{
    Direction, FloatingIp, HostNetworkPlan, Network, NetworkPlan, PortPlan, RulePlan, SecurityGroup,
};
use panal_types::vm::{PowerState, Vm, VmPhase};
use panal_types::{ApiError, NetworkId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Every peer, of either address family.
const ANYWHERE: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// How long changes are gathered before a plan is recomputed: a burst of VM starts costs one
/// computation, not one per VM.
const SETTLE: Duration = Duration::from_millis(30);

/// The longest a burst is gathered before the plan is recomputed anyway.
const MAX_GATHER: Duration = Duration::from_millis(200);

/// How often a plan is recomputed without a change seen: a safety net, not the mechanism.
const RESYNC: Duration = Duration::from_secs(15);

/// Whether a VM's NICs need their host's plumbing now: it runs, or is about to start, or is
/// still stopping.
fn needs_ports(vm: &Vm) -> bool {
    if vm.status.host.is_none() || vm.spec.nics.is_empty() {
        return false;
    }
    match vm.status.phase {
        VmPhase::Starting
        | VmPhase::Running
        | VmPhase::Paused
        | VmPhase::Stopping
        | VmPhase::Migrating => true,
        VmPhase::Pending | VmPhase::Scheduled | VmPhase::Stopped | VmPhase::Failed => {
            vm.spec.power_state != PowerState::Stopped && !vm.spec.deleted
        }
        VmPhase::Deleting => false,
    }
}

/// Everything a plan is computed from.
pub(super) struct NetworkState {
    pub vms: Vec<Vm>,
    pub networks: Vec<Network>,
    pub groups: Vec<SecurityGroup>,
    pub hosts: Vec<Host>,
    pub floating: Vec<FloatingIp>,
}

/// The plan of `host` given `state`.
pub(super) fn plan_for(host: &str, state: &NetworkState) -> HostNetworkPlan {
    let networks: HashMap<NetworkId, &Network> = state.networks.iter().map(|n| (n.id, n)).collect();
    let tunnels: HashMap<&str, Ipv4Addr> = state
        .hosts
        .iter()
        .filter_map(|h| h.inventory.tunnel_address.map(|a| (h.name.as_str(), a)))
        .collect();
    let groups: HashMap<(&str, &str), &SecurityGroup> = state
        .groups
        .iter()
        .map(|g| ((g.project.as_str(), g.name.as_str()), g))
        .collect();
    // Members of each group, for rules naming a remote group: every address of every NIC in
    // it, running or not (an address held by a stopped VM is still that VM's).
    let mut members: HashMap<(&str, &str), BTreeSet<IpAddr>> = HashMap::new();
    for vm in &state.vms {
        for nic in &vm.spec.nics {
            for g in &nic.security_groups {
                let m = members
                    .entry((vm.project.as_str(), g.as_str()))
                    .or_default();
                m.insert(nic.ip.into());
                m.extend(nic.ipv6.map(IpAddr::from));
            }
        }
    }
    // Floating addresses by the NIC they map to.
    let floating: HashMap<(&str, &str, &str), Ipv4Addr> = state
        .floating
        .iter()
        .filter_map(|f| {
            Some((
                (
                    f.project.as_str(),
                    f.vm.as_ref()?.as_str(),
                    f.nic.as_deref()?,
                ),
                f.address,
            ))
        })
        .collect();
    let mut local: BTreeMap<u32, Vec<PortPlan>> = BTreeMap::new();
    let mut mtus: HashMap<u32, u32> = HashMap::new();
    let mut routers: HashMap<u32, (String, Ipv4Addr)> = HashMap::new();
    let mut prefixes: HashMap<u32, String> = HashMap::new();
    let mut remote: HashMap<u32, Vec<(String, Ipv4Addr)>> = HashMap::new();
    for vm in state.vms.iter().filter(|v| needs_ports(v)) {
        let on = vm.status.host.as_ref().map(|h| h.as_str()).unwrap_or("");
        // The target of a live migration plugs the VM's ports before its incoming hypervisor
        // starts; everyone else keeps sending to the source until the switch-over.
        let incoming = vm
            .status
            .migration
            .as_ref()
            .is_some_and(|m| m.to.as_str() == host);
        for nic in &vm.spec.nics {
            let Some(net) = networks.get(&nic.network_id) else {
                continue;
            };
            mtus.insert(net.vni, net.mtu);
            if let Some(p) = &net.ipv6_cidr {
                prefixes.insert(net.vni, p.clone());
            }
            if let (true, Some(gw)) = (net.outbound_nat, net.gateway) {
                routers.insert(net.vni, (net.cidr.clone(), gw));
            }
            if on != host && !incoming {
                if let Some(t) = tunnels.get(on) {
                    remote
                        .entry(net.vni)
                        .or_default()
                        .push((nic.mac.clone(), *t));
                }
                continue;
            }
            let prefix_len = net
                .cidr
                .parse::<Ipv4Net>()
                .map(|n| n.prefix_len())
                .unwrap_or(24);
            let (ingress, egress) = rules_of(vm, nic, &groups, &members);
            local.entry(net.vni).or_default().push(PortPlan {
                vm: format!("{}/{}", vm.project, vm.name),
                nic: nic.id.clone(),
                mac: nic.mac.clone(),
                ip: nic.ip,
                // Only while the network still has the prefix the address was formed in.
                ipv6: nic.ipv6.filter(|_| net.ipv6_cidr.is_some()),
                prefix_len,
                gateway: net.gateway,
                dns: net.dns.clone(),
                hostname: vm.name.to_string(),
                ingress,
                egress,
                // Only where the VM runs now: the target of a live migration takes it over
                // when the VM's host changes, so it follows the VM.
                floating: (net.outbound_nat && on == host)
                    .then(|| {
                        floating
                            .get(&(vm.project.as_str(), vm.name.as_str(), nic.id.as_str()))
                            .copied()
                    })
                    .flatten(),
            });
        }
    }
    let mine = tunnels.get(host).copied();
    let networks = local
        .into_iter()
        .map(|(vni, mut ports)| {
            ports.sort_by(|a, b| a.nic.cmp(&b.nic));
            let mut remote_macs = remote.remove(&vni).unwrap_or_default();
            remote_macs.retain(|(_, t)| Some(*t) != mine);
            remote_macs.sort();
            remote_macs.dedup();
            let peers: BTreeSet<Ipv4Addr> = remote_macs.iter().map(|(_, t)| *t).collect();
            NetworkPlan {
                vni,
                mtu: mtus.get(&vni).copied().unwrap_or(1450),
                peers: peers.into_iter().collect(),
                remote_macs,
                ports,
                router: routers.get(&vni).cloned(),
                ipv6: prefixes.remove(&vni),
            }
        })
        .collect();
    HostNetworkPlan { networks }
}

/// A NIC's allowed flows: the union of its groups' rules, remote groups expanded to their
/// members' addresses (of both families). No group: nothing in, everything out. A rule without
/// a remote covers both address families; one with a CIDR, that CIDR's family.
fn rules_of(
    vm: &Vm,
    nic: &panal_types::network::Nic,
    groups: &HashMap<(&str, &str), &SecurityGroup>,
    members: &HashMap<(&str, &str), BTreeSet<IpAddr>>,
) -> (Vec<RulePlan>, Vec<RulePlan>) {
    if nic.security_groups.is_empty() {
        return (
            vec![],
            ANYWHERE
                .iter()
                .map(|remote| RulePlan {
                    protocol: None,
                    ports: None,
                    remote: (*remote).into(),
                })
                .collect(),
        );
    }
    let mut ingress = BTreeSet::new();
    let mut egress = BTreeSet::new();
    for gname in &nic.security_groups {
        let Some(g) = groups.get(&(vm.project.as_str(), gname.as_str())) else {
            continue;
        };
        for r in &g.rules {
            let protocol = super::security_groups::protocol_number(&r.protocol);
            let ports = match (r.port_min, r.port_max) {
                (Some(a), Some(b)) => Some((a, b)),
                (Some(a), None) => Some((a, a)),
                _ => None,
            };
            let remotes: Vec<String> = match (&r.remote_cidr, &r.remote_group) {
                (Some(c), _) => vec![c.clone()],
                (None, Some(rg)) => members
                    .get(&(vm.project.as_str(), rg.as_str()))
                    .map(|m| {
                        m.iter()
                            .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
                            .collect()
                    })
                    .unwrap_or_default(),
                (None, None) => ANYWHERE.iter().map(|r| (*r).into()).collect(),
            };
            for remote in remotes {
                let rule = RulePlan {
                    protocol,
                    ports,
                    remote,
                };
                match r.direction {
                    Direction::Ingress => ingress.insert(rule),
                    Direction::Egress => egress.insert(rule),
                };
            }
        }
    }
    (ingress.into_iter().collect(), egress.into_iter().collect())
}

impl App {
    /// Reads what plans are computed from.
    pub(super) async fn network_state(&self) -> Result<NetworkState, ApiError> {
        let (vms, _, _) = self.repo.list::<Vm>(keys::VMS, None, usize::MAX).await?;
        let (networks, _, _) = self
            .repo
            .list::<Network>(keys::NETWORKS, None, usize::MAX)
            .await?;
        let (groups, _, _) = self
            .repo
            .list::<SecurityGroup>(keys::SECURITY_GROUPS, None, usize::MAX)
            .await?;
        let (hosts, _, _) = self
            .repo
            .list::<Host>(keys::HOSTS, None, usize::MAX)
            .await?;
        let (floating, _, _) = self
            .repo
            .list::<FloatingIp>(keys::FLOATING_IPS, None, usize::MAX)
            .await?;
        Ok(NetworkState {
            floating: floating.into_iter().map(|v| v.value).collect(),
            vms: vms.into_iter().map(|v| v.value).collect(),
            networks: networks.into_iter().map(|v| v.value).collect(),
            groups: groups.into_iter().map(|v| v.value).collect(),
            hosts: hosts.into_iter().map(|v| v.value).collect(),
        })
    }

    /// The current network plan of `host`.
    pub async fn host_network_plan(&self, host: &str) -> Result<HostNetworkPlan, ApiError> {
        Ok(plan_for(host, &self.network_state().await?))
    }

    /// The network plan of `host`, then each change of it.
    pub async fn network_plans(&self, host: &str) -> Result<NetworkPlanStream, LinkError> {
        let unavailable = |e: panal_store::StoreError| LinkError::Unavailable(e.to_string());
        let store = self.repo.store().clone();
        // Watch from the revision of a fresh read, so no change between the first plan and the
        // watch is missed.
        let head = store
            .range(keys::HOSTS, None, 1)
            .await
            .map_err(unavailable)?;
        let mut watches = Vec::new();
        for prefix in [
            keys::VMS,
            keys::NETWORKS,
            keys::SECURITY_GROUPS,
            keys::HOSTS,
            keys::FLOATING_IPS,
        ] {
            watches.push(
                store
                    .watch(prefix, head.revision + 1)
                    .await
                    .map_err(unavailable)?,
            );
        }
        let changes = futures::stream::select_all(watches).filter(|ev| {
            // Only VMs with NICs (or gone ones) and hosts' tunnel addresses matter; other VM
            // and host updates (heartbeats, allocation) are skipped cheaply.
            let relevant = match ev {
                Ok(WatchEvent::Put(kv)) if kv.key.starts_with(keys::VMS) => {
                    contains(&kv.value, b"\"nics\"")
                }
                Ok(WatchEvent::Put(kv)) if kv.key.starts_with(keys::HOSTS) => {
                    contains(&kv.value, b"\"tunnel_address\"")
                }
                _ => true,
            };
            futures::future::ready(relevant)
        });
        let app = self.clone();
        let host = host.to_owned();
        let first = plan_for(
            &host,
            &app.network_state()
                .await
                .map_err(|e| LinkError::Unavailable(e.message))?,
        );
        let state = (app, host, Box::pin(changes), Some(first.clone()), first);
        let stream = futures::stream::unfold(
            state,
            |(app, host, mut changes, pending, last)| async move {
                if let Some(p) = pending {
                    return Some((Ok(p), (app, host, changes, None, last)));
                }
                loop {
                    if let Err(e) = next_change(&mut changes).await? {
                        return Some((Err(e), (app, host, changes, None, last)));
                    }
                    let plan = match app.network_state().await {
                        Ok(s) => plan_for(&host, &s),
                        Err(e) => {
                            return Some((
                                Err(LinkError::Unavailable(e.message)),
                                (app, host, changes, None, last),
                            ));
                        }
                    };
                    if plan != last {
                        tracing::debug!(%host, networks = plan.networks.len(), "network plan changed");
                        return Some((Ok(plan.clone()), (app, host, changes, None, plan)));
                    }
                }
            },
        );
        Ok(stream.boxed())
    }
}

/// Waits for a change worth a new plan: a relevant event (and the rest of its burst, for a
/// bounded time, so a steady trickle of changes cannot hold the plan back), or the periodic
/// look that corrects whatever a missed event would have left. `None` when the watch ended.
async fn next_change<S>(changes: &mut S) -> Option<Result<(), LinkError>>
where
    S: futures::Stream<Item = Result<WatchEvent, panal_store::StoreError>> + Unpin,
{
    tokio::select! {
        ev = changes.next() => {
            if let Err(e) = ev? {
                return Some(Err(LinkError::Unavailable(e.to_string())));
            }
        }
        () = tokio::time::sleep(RESYNC) => return Some(Ok(())),
    }
    let until = tokio::time::Instant::now() + MAX_GATHER;
    loop {
        let next = (tokio::time::Instant::now() + SETTLE).min(until);
        match tokio::time::timeout_at(next, changes.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Some(Err(LinkError::Unavailable(e.to_string()))),
            Ok(None) => return None,
            Err(_) => return Some(Ok(())),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
