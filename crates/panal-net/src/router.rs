//! Outbound NAT of a network: its gateway, present on every host that carries the network (a
//! distributed gateway, as Neutron's DVR and OVN do it), routes the guests' traffic out of the
//! host's uplink with masquerade.
//!
//! What this module sets up per routed network (the nftables part is in `nft.rs`):
//! - the bridge gets the network's fixed gateway MAC (the same on every host, so a guest that
//!   moves keeps a valid ARP entry) and the gateway address without a prefix route;
//! - a routing table of its own (`ROUTE_TABLE_BASE + vni`) holding only the subnet's route, looked
//!   up for packets from the bridge (`iif`) and for replies marked with the network's fwmark
//!   (the conntrack mark set on the way out): two networks with the same CIDR on one host never
//!   share a route;
//! - `net.ipv4.ip_forward = 1` in the host's namespace.
//!
//! Frames from the gateway never cross the tunnel and ARP for it from the tunnel is dropped, so
//! each host's gateway serves only its local guests.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::cmd;
use crate::error::NetError;
use crate::mac::MacAddr;
use crate::names::bridge_name;
use crate::plan::HostPlan;

/// Routing tables of routed networks are `ROUTE_TABLE_BASE + vni`.
pub(crate) const ROUTE_TABLE_BASE: u32 = 0x5000_0000;
/// Priority of the policy rules.
const RULE_PREF: u32 = 1100;

/// The fwmark (and conntrack mark) of a routed network's flows.
pub(crate) fn fwmark(vni: u32) -> u32 {
    0x5a00_0000 | (vni & 0x00ff_ffff)
}

/// The gateway MAC of a network: locally administered, the same on every host.
pub(crate) fn gateway_mac(vni: u32) -> MacAddr {
    let v = vni.to_be_bytes();
    MacAddr([0x02, 0x50, 0xff, v[1], v[2], v[3]])
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    table: Option<serde_json::Value>,
    #[serde(default)]
    iif: Option<String>,
    #[serde(default)]
    fwmark: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    addr_info: Vec<Addr>,
}

#[derive(Debug, Deserialize)]
struct Addr {
    family: String,
    local: String,
    prefixlen: u8,
}

/// Converges addresses, MACs, policy rules, routes and forwarding to the plan's routed
/// networks. Returns how many things it changed.
pub(crate) async fn apply(prefix: &str, plan: &HostPlan) -> Result<usize, NetError> {
    let routed: Vec<_> = plan
        .networks
        .iter()
        .filter_map(|n| n.router.as_ref().map(|r| (n.vni, r)))
        .collect();
    let mut batch: Vec<String> = Vec::new();
    let mut changes = 0;

    // Rules: what we want, what is there (ours are recognised by table range and priority).
    let want: BTreeSet<String> = routed
        .iter()
        .flat_map(|(vni, _)| {
            let table = ROUTE_TABLE_BASE + vni;
            [
                format!("iif {} lookup {table}", bridge_name(prefix, *vni)),
                format!("fwmark {:#x} lookup {table}", fwmark(*vni)),
            ]
        })
        .collect();
    let rules: Vec<Rule> = cmd::run_json("ip", &["-j", "rule", "show"]).await?;
    let mut have = BTreeSet::new();
    for r in rules.iter().filter(|r| r.priority == RULE_PREF) {
        let Some(table) = r.table.as_ref().and_then(|t| match t {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }) else {
            continue;
        };
        let t = table as u32;
        if t < ROUTE_TABLE_BASE {
            continue;
        }
        let line = match (&r.iif, &r.fwmark) {
            (Some(i), _) => format!("iif {i} lookup {t}"),
            (None, Some(m)) => format!(
                "fwmark {:#x} lookup {t}",
                u32::from_str_radix(m.trim_start_matches("0x"), 16).unwrap_or(0)
            ),
            _ => continue,
        };
        if !want.contains(&line) {
            batch.push(format!("rule del pref {RULE_PREF} {line}"));
            changes += 1;
        }
        have.insert(line);
    }
    for line in want.difference(&have) {
        batch.push(format!("rule add pref {RULE_PREF} {line}"));
        changes += 1;
    }

    // Bridge MAC and gateway address; routes are replaced every time (idempotent, cheap).
    if !routed.is_empty() {
        let addrs: Vec<AddrInfo> = cmd::run_json("ip", &["-j", "addr", "show"]).await?;
        for (vni, r) in &routed {
            let br = bridge_name(prefix, *vni);
            let mac = gateway_mac(*vni).to_string();
            let cur = addrs.iter().find(|a| a.ifname == br);
            if cur.and_then(|a| a.address.as_deref()) != Some(mac.as_str()) {
                batch.push(format!("link set dev {br} address {mac}"));
                changes += 1;
            }
            let gw = r.gateway.to_string();
            let has_gw = cur.is_some_and(|a| {
                a.addr_info.iter().any(|x| {
                    x.family == "inet" && x.local == gw && x.prefixlen == r.subnet.prefix_len()
                })
            });
            if !has_gw {
                batch.push(format!(
                    "addr replace {gw}/{} dev {br} noprefixroute",
                    r.subnet.prefix_len()
                ));
                changes += 1;
            }
            batch.push(format!(
                "route replace {} dev {br} src {gw} table {}",
                r.subnet,
                ROUTE_TABLE_BASE + vni
            ));
        }
        set_ip_forward()?;
    }
    if !batch.is_empty() {
        crate::links::run_batch(&batch).await?;
    }
    Ok(changes)
}

/// Turns on IPv4 forwarding in this namespace (only ever on: other users may need it too).
fn set_ip_forward() -> Result<(), NetError> {
    let knob = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(knob).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(knob, "1").map_err(|e| NetError::io(knob, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_macs_derive_from_the_vni() {
        assert_eq!(fwmark(0x0012_3456), 0x5a12_3456);
        assert_eq!(gateway_mac(0x0012_3456).to_string(), "02:50:ff:12:34:56");
    }
}
