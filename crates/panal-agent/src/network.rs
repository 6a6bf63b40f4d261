//! The host's virtual networks: follows the control plane's network plan for this host and
//! converges bridges, VXLAN devices, taps, nftables rules and DHCP answers to it (through
//! `panal-net`). VM tasks wait here until their NICs' taps exist before they launch QEMU.
//!
//! The agent touches the host's network only once a plan has something for it (or devices of
//! its prefix exist from an earlier run): an agent whose VMs have no NICs changes nothing.

use crate::link::DynLink;
use futures::StreamExt;
use panal_net::{DhcpLease, HostNet, HostNetConfig, HostPlan, PortPlan, Protocol, RulePlan};
use panal_types::Name;
use panal_types::network::HostNetworkPlan;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;
use tokio::sync::watch;

/// How this host carries virtual networks.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The address other hosts reach this host's VXLAN tunnels at.
    pub tunnel_address: Ipv4Addr,
    /// Prefix of the network devices this agent owns (bridges, VXLAN devices, taps).
    pub prefix: String,
}

/// A DHCP lease lasts a day: addresses are fixed by the control plane, so renewals only
/// confirm them.
const LEASE_SECS: u32 = 86_400;

/// The host's networks, shared by the agent's tasks.
#[derive(Clone)]
pub struct HostNetwork {
    cfg: NetworkConfig,
    net: HostNet,
    /// NICs whose taps exist now, as of the last applied plan.
    ready: watch::Sender<HashSet<String>>,
}

impl HostNetwork {
    /// The host's networks, nothing applied yet.
    pub fn new(cfg: NetworkConfig) -> Self {
        let net = HostNet::new(HostNetConfig {
            underlay: cfg.tunnel_address,
            vxlan_port: 4789,
            prefix: cfg.prefix.clone(),
            nft_table: format!("panal_{}", cfg.prefix),
        });
        Self {
            cfg,
            net,
            ready: watch::channel(HashSet::new()).0,
        }
    }

    /// The tap device of a NIC.
    pub fn tap(&self, nic: &str) -> String {
        panal_net::tap_name(&self.cfg.prefix, nic)
    }

    /// Waits until the taps of these NICs exist (the plan that has them is applied).
    pub async fn wait_ports(&self, nics: &[String], timeout: Duration) -> Result<(), String> {
        let mut rx = self.ready.subscribe();
        let all = |s: &HashSet<String>| nics.iter().all(|n| s.contains(n));
        match tokio::time::timeout(timeout, rx.wait_for(all)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "the host's network plumbing for NICs {} is not ready after {} s",
                nics.join(", "),
                timeout.as_secs()
            )),
        }
    }

    /// Follows the plan of `host` until the future is dropped, re-subscribing when the
    /// control plane goes away.
    pub async fn run(self, link: DynLink, host: Name) {
        let mut touched = has_own_links(&self.cfg.prefix);
        let mut delay = Duration::from_millis(100);
        loop {
            let mut plans = match link.network_plans(&host).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the network plan; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            while let Some(next) = plans.next().await {
                let plan = match next {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "network plan stream broke");
                        break;
                    }
                };
                tracing::debug!(networks = plan.networks.len(), "network plan received");
                if plan.networks.is_empty() && !touched {
                    continue;
                }
                touched = true;
                self.apply(&plan).await;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Applies one plan, retrying a failed apply a few times (a device busy for a moment).
    async fn apply(&self, plan: &HostNetworkPlan) {
        let converted = self.convert(plan);
        for attempt in 0..5 {
            match self.net.apply(&converted).await {
                Ok(report) => {
                    if report.changes() > 0 {
                        tracing::info!(
                            networks = plan.networks.len(),
                            changes = report.changes(),
                            ?report,
                            "network plan applied"
                        );
                    }
                    let nics: HashSet<String> = plan
                        .networks
                        .iter()
                        .flat_map(|n| n.ports.iter().map(|p| p.nic.clone()))
                        .collect();
                    self.ready.send_replace(nics);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "applying the network plan failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    /// The control plane's plan in `panal-net`'s terms.
    fn convert(&self, plan: &HostNetworkPlan) -> HostPlan {
        HostPlan {
            networks: plan
                .networks
                .iter()
                .map(|n| panal_net::NetworkPlan {
                    vni: n.vni,
                    mtu: n.mtu,
                    peers: n.peers.clone(),
                    remote_macs: n
                        .remote_macs
                        .iter()
                        .filter_map(|(m, t)| m.parse().ok().map(|m| (m, *t)))
                        .collect(),
                    ports: n.ports.iter().filter_map(|p| self.port(p, n.mtu)).collect(),
                    router: n.router.as_ref().and_then(|(subnet, gateway)| {
                        Some(panal_net::RouterPlan {
                            subnet: subnet.parse().ok()?,
                            gateway: *gateway,
                        })
                    }),
                    ipv6: n.ipv6.as_deref().and_then(|p| p.parse().ok()),
                })
                .collect(),
        }
    }

    fn port(&self, p: &panal_types::network::PortPlan, mtu: u32) -> Option<PortPlan> {
        let mac = match p.mac.parse() {
            Ok(m) => m,
            Err(_) => {
                tracing::warn!(vm = %p.vm, mac = %p.mac, "unusable MAC in the plan; NIC skipped");
                return None;
            }
        };
        let server_id = p.gateway.unwrap_or(p.ip);
        Some(PortPlan {
            ifname: self.tap(&p.nic),
            create_tap: true,
            mac,
            ipv4: p.ip,
            ipv6: p.ipv6,
            dhcp: Some(DhcpLease {
                address: p.ip,
                prefix_len: p.prefix_len,
                router: p.gateway,
                dns: p.dns.clone(),
                mtu,
                hostname: Some(p.hostname.clone()),
                server_id,
                lease_secs: LEASE_SECS,
            }),
            ingress: p.ingress.iter().filter_map(rule).collect(),
            egress: p.egress.iter().filter_map(rule).collect(),
            floating: p.floating,
        })
    }
}

fn rule(r: &panal_types::network::RulePlan) -> Option<RulePlan> {
    Some(RulePlan {
        protocol: match r.protocol {
            None => Protocol::Any,
            Some(6) => Protocol::Tcp,
            Some(17) => Protocol::Udp,
            Some(1) => Protocol::Icmp,
            Some(n) => Protocol::Number(n),
        },
        ports: r.ports,
        remote: r.remote.parse().ok()?,
    })
}

/// Whether devices of this prefix exist (left by an earlier run of this agent).
fn has_own_links(prefix: &str) -> bool {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
        .unwrap_or(false)
}
