//! VXLAN forwarding entries, programmed from the plan (no multicast, no learning): one all-zero
//! MAC entry per peer (head-end replication of broadcast and unknown unicast) and one entry per
//! remote MAC. Reads the current entries back (`bridge -j fdb show`) and writes only the
//! difference in one `bridge -batch -`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cmd;
use crate::error::NetError;
use crate::mac::MacAddr;
use crate::names::vxlan_name;
use crate::plan::HostPlan;

#[derive(Debug, Deserialize)]
struct FdbEntry {
    mac: String,
    ifname: Option<String>,
    dst: Option<String>,
}

/// (device, MAC, remote underlay address)
pub(crate) type Fdb = BTreeSet<(String, MacAddr, Ipv4Addr)>;

/// The remote entries of every device (those with a `dst`; the bridge's own entries have none).
pub(crate) async fn read_fdb() -> Result<Fdb, NetError> {
    let entries: Vec<FdbEntry> = cmd::run_json("bridge", &["-j", "fdb", "show"]).await?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let dev = e.ifname?;
            let dst = e.dst?.parse().ok()?;
            let mac = e.mac.parse().ok()?;
            Some((dev, mac, dst))
        })
        .collect())
}

pub(crate) fn wanted_fdb(prefix: &str, plan: &HostPlan) -> Fdb {
    let mut want = Fdb::new();
    for net in &plan.networks {
        let dev = vxlan_name(prefix, net.vni);
        for peer in &net.peers {
            want.insert((dev.clone(), MacAddr::ZERO, *peer));
        }
        for (mac, host) in &net.remote_macs {
            want.insert((dev.clone(), *mac, *host));
        }
    }
    want
}

/// Batch lines for `bridge -batch -` and the number of entries removed and added. Only devices of
/// the plan are looked at: a VXLAN device that leaves takes its entries with it.
pub(crate) fn diff_fdb(
    prefix: &str,
    plan: &HostPlan,
    current: &Fdb,
) -> (Vec<String>, usize, usize) {
    let want = wanted_fdb(prefix, plan);
    let devs: BTreeSet<String> = plan
        .networks
        .iter()
        .map(|n| vxlan_name(prefix, n.vni))
        .collect();
    let mut lines = Vec::new();
    let mut removed = 0;
    for (dev, mac, dst) in current.iter().filter(|e| devs.contains(&e.0)) {
        if !want.contains(&(dev.clone(), *mac, *dst)) {
            lines.push(format!("fdb del {mac} dev {dev} dst {dst}"));
            removed += 1;
        }
    }
    let mut added = 0;
    for e @ (dev, mac, dst) in &want {
        if !current.contains(e) {
            // append, not add: the all-zero MAC has one entry per peer.
            lines.push(format!("fdb append {mac} dev {dev} dst {dst}"));
            added += 1;
        }
    }
    (lines, removed, added)
}

pub(crate) async fn run_batch(lines: &[String]) -> Result<(), NetError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut input = lines.join("\n");
    input.push('\n');
    cmd::run("bridge", &["-batch", "-"], Some(&input))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::NetworkPlan;

    #[test]
    fn adds_missing_and_removes_stale_entries() {
        let peer_a = Ipv4Addr::new(10, 250, 0, 2);
        let peer_b = Ipv4Addr::new(10, 250, 0, 3);
        let vm: MacAddr = "52:54:00:00:00:09".parse().unwrap();
        let plan = HostPlan {
            networks: vec![NetworkPlan {
                vni: 5,
                mtu: 1450,
                peers: vec![peer_a, peer_b],
                remote_macs: vec![(vm, peer_b)],
                ports: vec![],
                router: None,
                ipv6: None,
            }],
        };
        let mut current = Fdb::new();
        current.insert(("pnx5".into(), MacAddr::ZERO, peer_a));
        current.insert(("pnx5".into(), vm, peer_a)); // the VM moved to peer_b
        current.insert(("other0".into(), vm, peer_a)); // not ours: untouched
        let (lines, removed, added) = diff_fdb("pn", &plan, &current);
        assert_eq!(
            lines,
            vec![
                "fdb del 52:54:00:00:00:09 dev pnx5 dst 10.250.0.2",
                "fdb append 00:00:00:00:00:00 dev pnx5 dst 10.250.0.3",
                "fdb append 52:54:00:00:00:09 dev pnx5 dst 10.250.0.3",
            ]
        );
        assert_eq!((removed, added), (1, 2));

        let converged = wanted_fdb("pn", &plan);
        assert_eq!(diff_fdb("pn", &plan, &converged), (vec![], 0, 0));
    }
}
