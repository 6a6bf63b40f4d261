//! Floating addresses: an address of an external network, mapped to one guest NIC of a routed
//! network, present on the host that runs the guest.
//!
//! What this module sets up (the nftables part, DNAT in and SNAT out, is in `nft.rs`):
//! - each floating address of the plan's ports on the uplink (the interface holding the tunnel
//!   address) as a /32 labelled `{prefix}fip`, so the host answers ARP for it; addresses with
//!   that label that the plan no longer has (disassociated, or the guest moved away) are removed;
//! - a gratuitous ARP out of the uplink when an address appears, so neighbours (and the external
//!   gateway) forget the host that had it before.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cmd;
use crate::error::NetError;
use crate::mac::MacAddr;
use crate::plan::HostPlan;

#[derive(Debug, Deserialize)]
struct AddrInfo {
    ifindex: u32,
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
    #[serde(default)]
    label: Option<String>,
}

/// The label marking the addresses this module owns.
pub(crate) fn label(prefix: &str) -> String {
    format!("{prefix}fip")
}

/// The floating addresses of a plan (only on routed networks: `validate` refuses the others).
pub(crate) fn wanted(plan: &HostPlan) -> BTreeSet<Ipv4Addr> {
    plan.networks
        .iter()
        .filter(|n| n.router.is_some())
        .flat_map(|n| n.ports.iter().filter_map(|p| p.floating))
        .collect()
}

/// Converges the uplink's floating addresses to the plan. Returns how many it changed.
pub(crate) async fn apply(
    prefix: &str,
    underlay: Ipv4Addr,
    plan: &HostPlan,
) -> Result<usize, NetError> {
    let want = wanted(plan);
    let label = label(prefix);
    let addrs: Vec<AddrInfo> = cmd::run_json("ip", &["-j", "addr", "show"]).await?;
    let mut batch = Vec::new();
    let mut have = BTreeSet::new();
    let underlay_s = underlay.to_string();
    let uplink = addrs.iter().find(|a| {
        a.addr_info
            .iter()
            .any(|x| x.family == "inet" && x.local == underlay_s)
    });
    for a in &addrs {
        for x in &a.addr_info {
            if x.family != "inet" || x.label.as_deref() != Some(label.as_str()) {
                continue;
            }
            let Ok(ip) = x.local.parse::<Ipv4Addr>() else {
                continue;
            };
            let on_uplink = uplink.is_some_and(|u| u.ifname == a.ifname);
            if want.contains(&ip) && on_uplink {
                have.insert(ip);
            } else {
                batch.push(format!("addr del {ip}/32 dev {}", a.ifname));
            }
        }
    }
    let missing: Vec<Ipv4Addr> = want.difference(&have).copied().collect();
    if !missing.is_empty() {
        let Some(up) = uplink else {
            return Err(NetError::bad_plan(format!(
                "floating addresses need the uplink, the interface holding {underlay}; none has it"
            )));
        };
        for ip in &missing {
            batch.push(format!("addr add {ip}/32 dev {} label {label}", up.ifname));
        }
    }
    let changes = batch.len();
    crate::links::run_batch(&batch).await?;
    if let Some(up) = uplink {
        let mac = up
            .address
            .as_deref()
            .and_then(|m| m.parse::<MacAddr>().ok());
        for ip in &missing {
            // Best effort: a neighbour that missed it learns the address again by ARP.
            if let Some(mac) = mac
                && let Err(e) = gratuitous_arp(up.ifindex, mac, *ip).await
            {
                tracing::warn!(address = %ip, uplink = %up.ifname, error = %e, "gratuitous ARP failed");
            }
        }
    }
    Ok(changes)
}

/// A gratuitous ARP request (sender and target both `ip`), broadcast.
pub(crate) fn garp_frame(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(60, 0);
    f
}

async fn gratuitous_arp(ifindex: u32, mac: MacAddr, ip: Ipv4Addr) -> std::io::Result<()> {
    let sock = crate::dhcp::socket::PacketSocket::bind(ifindex)?;
    sock.send(&garp_frame(mac, ip)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gratuitous_arp_announces_the_address_as_sender_and_target() {
        let f = garp_frame(MacAddr([2, 0, 0, 0, 0, 1]), Ipv4Addr::new(192, 0, 2, 7));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[28..32], &[192, 0, 2, 7]);
        assert_eq!(&f[38..42], &[192, 0, 2, 7]);
    }
}
