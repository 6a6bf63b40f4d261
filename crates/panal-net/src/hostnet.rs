//! `HostNet`: converges this host's bridges, VXLAN devices, taps, forwarding entries, nftables
//! rules and DHCP listeners (which also advertise IPv6 prefixes) to a `HostPlan`. One `apply()` at a time (a mutex); each step reads
//! the current state, changes only the difference and is safe to repeat, so an agent that
//! restarts and applies the same plan disturbs nothing. Commands and sockets act in the network
//! namespace of the calling thread.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::dhcp::{self, Advert, Listener, PortService, advertiser_mac};
use crate::error::NetError;
use crate::fdb;
use crate::links::{self, Link, Underlay};
use crate::nft;
use crate::plan::HostPlan;
use crate::report::ApplyReport;

/// How this host takes part in the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNetConfig {
    /// This host's VXLAN tunnel endpoint (local) address.
    pub underlay: Ipv4Addr,
    /// UDP port of VXLAN, 4789 by default.
    pub vxlan_port: u16,
    /// Short device-name prefix ("pn"); at most 6 characters, so that `{prefix}b16777215` fits.
    pub prefix: String,
    /// Name of the nftables tables (one `bridge`, one `inet`), "panal" by default.
    pub nft_table: String,
}

impl HostNetConfig {
    /// The defaults for a host whose tunnel endpoint is `underlay`.
    pub fn new(underlay: Ipv4Addr) -> Self {
        Self {
            underlay,
            vxlan_port: 4789,
            prefix: "pn".into(),
            nft_table: "panal".into(),
        }
    }
}

/// The host side of the virtual networks. Cheap to clone; clones share the listeners.
#[derive(Clone)]
pub struct HostNet {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: HostNetConfig,
    /// Port name -> its running DHCP listener. Dropped with the last clone: the tasks stop.
    listeners: Mutex<HashMap<String, Listener>>,
    apply_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for HostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostNet")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl HostNet {
    pub fn new(cfg: HostNetConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                listeners: Mutex::new(HashMap::new()),
                apply_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &HostNetConfig {
        &self.inner.cfg
    }

    /// Converges the host to `plan` (see the crate documentation for what that means).
    pub async fn apply(&self, plan: &HostPlan) -> Result<ApplyReport, NetError> {
        let _one_at_a_time = self.inner.apply_lock.lock().await;
        let start = Instant::now();
        let cfg = &self.inner.cfg;
        plan.validate(&cfg.prefix)?;
        if !plan.networks.is_empty() {
            ensure_br_netfilter().await?;
        }
        let mut report = ApplyReport::default();

        let current = links::read_links().await?;
        let underlay = Underlay {
            local: cfg.underlay,
            port: cfg.vxlan_port,
        };
        let ch = links::diff_links(&cfg.prefix, underlay, plan, &current)?;
        links::run_batch(&ch.batch).await?;
        report.devices_created = ch.created;
        report.devices_changed = ch.changed;
        report.devices_removed = ch.removed;
        let current = if ch.batch.is_empty() {
            current
        } else {
            links::read_links().await?
        };

        report.devices_changed += crate::router::apply(&cfg.prefix, plan).await?;
        report.devices_changed += crate::floating::apply(&cfg.prefix, cfg.underlay, plan).await?;

        if !plan.networks.is_empty() {
            let have = fdb::read_fdb().await?;
            let (lines, removed, added) = fdb::diff_fdb(&cfg.prefix, plan, &have);
            fdb::run_batch(&lines).await?;
            report.fdb_added = added;
            report.fdb_removed = removed;
        }

        let rules = nft::render(&cfg.nft_table, plan, &cfg.prefix);
        report.nft_rules = rules.sg_rules;
        if !nft_up_to_date(&cfg.nft_table, &rules.fingerprint).await? {
            cmd::run("nft", &["-f", "-"], Some(&rules.script)).await?;
            report.nft_applied = true;
        }

        self.sync_listeners(plan, &current, &mut report)?;
        report.elapsed = start.elapsed();
        tracing::debug!(?report, "host network applied");
        Ok(report)
    }

    /// Removes every device with this prefix, both nft tables and all listeners.
    pub async fn teardown(&self) -> Result<(), NetError> {
        self.apply(&HostPlan::default()).await?;
        // Also when the tables hold no chain (so `nft_up_to_date` could not see them).
        let rules = nft::render(&self.inner.cfg.nft_table, &HostPlan::default(), "");
        cmd::run("nft", &["-f", "-"], Some(&rules.script)).await?;
        Ok(())
    }

    fn sync_listeners(
        &self,
        plan: &HostPlan,
        links: &[Link],
        report: &mut ApplyReport,
    ) -> Result<(), NetError> {
        let index: HashMap<&str, u32> = links
            .iter()
            .map(|l| (l.ifname.as_str(), l.ifindex))
            .collect();
        let mut listeners = self
            .inner
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut wanted = BTreeSet::new();
        for (net, port) in plan
            .networks
            .iter()
            .flat_map(|n| n.ports.iter().map(move |p| (n, p)))
        {
            let service = PortService {
                mac: port.mac,
                lease: port.dhcp.clone(),
                advert: net.ipv6.map(|prefix| Advert {
                    prefix,
                    mtu: net.mtu,
                    source: advertiser_mac(net.vni),
                }),
            };
            if service.lease.is_none() && service.advert.is_none() {
                continue;
            }
            let Some(&ifindex) = index.get(port.ifname.as_str()) else {
                return Err(NetError::bad_plan(format!("port {} vanished", port.ifname)));
            };
            wanted.insert(port.ifname.as_str());
            match listeners.get(&port.ifname) {
                Some(l) if l.ifindex == ifindex => {
                    report.listeners_updated += usize::from(l.update(&service));
                }
                old => {
                    if old.is_some() {
                        report.listeners_stopped += 1;
                    }
                    let l = dhcp::spawn(&port.ifname, ifindex, service)
                        .map_err(|e| NetError::io(format!("DHCP socket on {}", port.ifname), e))?;
                    listeners.insert(port.ifname.clone(), l);
                    report.listeners_started += 1;
                }
            }
        }
        let before = listeners.len();
        listeners.retain(|name, _| wanted.contains(name.as_str()));
        report.listeners_stopped += before - listeners.len();
        Ok(())
    }
}

/// Whether both tables exist and carry `fingerprint` (empty: whether neither exists).
async fn nft_up_to_date(table: &str, fingerprint: &str) -> Result<bool, NetError> {
    #[derive(Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Value>,
    }
    let listing: Listing = cmd::run_json("nft", &["-j", "list", "chains"]).await?;
    let mut tables = BTreeSet::new();
    let mut marked = BTreeSet::new();
    for item in &listing.nftables {
        let Some(chain) = item.get("chain") else {
            continue;
        };
        if chain.get("table").and_then(|t| t.as_str()) != Some(table) {
            continue;
        }
        let family = chain
            .get("family")
            .and_then(|f| f.as_str())
            .unwrap_or_default();
        if !matches!(family, "bridge" | "inet") {
            continue;
        }
        tables.insert(family.to_string());
        if !fingerprint.is_empty()
            && chain.get("name").and_then(|n| n.as_str()) == Some(fingerprint)
        {
            marked.insert(family.to_string());
        }
    }
    Ok(if fingerprint.is_empty() {
        tables.is_empty()
    } else {
        marked.len() == 2
    })
}

/// br_netfilter carries bridged IPv4 into the inet hooks, where the security groups' conntrack
/// lives. Built in on some kernels, a module on others (Debian's).
async fn ensure_br_netfilter() -> Result<(), NetError> {
    // /proc/sys/net follows the calling thread's network namespace.
    let knob = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if knob.exists() {
        return Ok(());
    }
    let _ = cmd::run("modprobe", &["br_netfilter"], None).await;
    if knob.exists() {
        Ok(())
    } else {
        Err(NetError::Unsupported(
            "br_netfilter (security groups need conntrack on bridged traffic)".into(),
        ))
    }
}
