//! Devices: reads the host's links (`ip -j -d link show`) and computes the `ip -batch` lines that
//! converge them to the plan. Pure apart from `read_links`, so the diff is unit-tested. A device
//! that already matches is never touched: a running QEMU holds its tap.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::cmd;
use crate::error::NetError;
use crate::names::{OurName, bridge_name, classify, vxlan_name};
use crate::plan::HostPlan;

/// One link as `ip -j -d link show` prints it (only what we compare).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Link {
    pub ifindex: u32,
    pub ifname: String,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub mtu: u32,
    pub master: Option<String>,
    pub linkinfo: Option<LinkInfo>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct LinkInfo {
    pub info_kind: Option<String>,
    #[serde(default)]
    pub info_data: serde_json::Value,
    #[serde(default)]
    pub info_slave_data: serde_json::Value,
}

impl Link {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }

    fn data(&self, key: &str) -> Option<&serde_json::Value> {
        self.linkinfo.as_ref()?.info_data.get(key)
    }

    /// Whether the bridge learns source MACs on this port (true when unknown).
    fn learns(&self) -> bool {
        self.linkinfo
            .as_ref()
            .and_then(|i| i.info_slave_data.get("learning"))
            .and_then(|v| v.as_bool())
            .unwrap_or(true)
    }

    fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

pub(crate) async fn read_links() -> Result<Vec<Link>, NetError> {
    cmd::run_json("ip", &["-j", "-d", "link", "show"]).await
}

/// The underlay parameters every VXLAN device of this host shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Underlay {
    pub local: Ipv4Addr,
    pub port: u16,
}

/// The `ip -batch` lines to run, in order, and what they amount to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LinkChanges {
    pub batch: Vec<String>,
    pub created: usize,
    pub changed: usize,
    pub removed: usize,
}

/// Computes the changes that take `current` to `plan`. Deletions come first (so a name can be
/// reused), then bridges, VXLAN devices and ports, each enslaved after its bridge exists.
pub(crate) fn diff_links(
    prefix: &str,
    underlay: Underlay,
    plan: &HostPlan,
    current: &[Link],
) -> Result<LinkChanges, NetError> {
    let by_name: HashMap<&str, &Link> = current.iter().map(|l| (l.ifname.as_str(), l)).collect();
    let mut wanted_bridges = BTreeSet::new();
    let mut wanted_vxlans = BTreeSet::new();
    // port name -> the bridge it belongs on
    let mut wanted_ports: HashMap<&str, String> = HashMap::new();
    for net in &plan.networks {
        wanted_bridges.insert(bridge_name(prefix, net.vni));
        wanted_vxlans.insert(vxlan_name(prefix, net.vni));
        for p in &net.ports {
            wanted_ports.insert(p.ifname.as_str(), bridge_name(prefix, net.vni));
        }
    }

    let mut ch = LinkChanges::default();
    let is_our_bridge = |name: &str| matches!(classify(prefix, name), Some(OurName::Bridge(_)));

    // 1. Ports that leave: taps of ours are deleted, other interfaces only released.
    for link in current {
        let name = link.ifname.as_str();
        if wanted_ports.contains_key(name) || wanted_vxlans.contains(name) {
            continue;
        }
        let ours_by_name = classify(prefix, name) == Some(OurName::Tap);
        let on_our_bridge = link.master.as_deref().is_some_and(is_our_bridge);
        let is_vxlan_of_ours = matches!(classify(prefix, name), Some(OurName::Vxlan(_)));
        if ours_by_name || (on_our_bridge && link.kind() == Some("tun")) {
            ch.batch.push(format!("link del dev {name}"));
            ch.removed += 1;
        } else if on_our_bridge && !is_vxlan_of_ours {
            // Its bridge stays; a bridge that goes releases its ports by itself.
            if link
                .master
                .as_deref()
                .is_some_and(|m| wanted_bridges.contains(m))
            {
                ch.batch.push(format!("link set dev {name} nomaster"));
                ch.changed += 1;
            }
        }
    }
    // 2. VXLAN devices and bridges that leave.
    for link in current {
        let name = link.ifname.as_str();
        match classify(prefix, name) {
            Some(OurName::Vxlan(_)) if !wanted_vxlans.contains(name) => {}
            Some(OurName::Bridge(_)) if !wanted_bridges.contains(name) => {}
            _ => continue,
        }
        ch.batch.push(format!("link del dev {name}"));
        ch.removed += 1;
    }

    // 3. What the plan has.
    for net in &plan.networks {
        let br = bridge_name(prefix, net.vni);
        let mtu = net.mtu;
        match by_name.get(br.as_str()) {
            Some(l) if l.kind() == Some("bridge") => {
                let ok = l.mtu == mtu
                    && l.is_up()
                    && num(l.data("stp_state")) == Some(0)
                    && num(l.data("nf_call_iptables")) == Some(1)
                    && num(l.data("nf_call_ip6tables")) == Some(1);
                if !ok {
                    ch.batch.push(format!(
                        "link set dev {br} mtu {mtu} up type bridge stp_state 0 nf_call_iptables 1 nf_call_ip6tables 1"
                    ));
                    ch.changed += 1;
                }
            }
            other => {
                if other.is_some() {
                    ch.batch.push(format!("link del dev {br}"));
                    ch.removed += 1;
                }
                // nf_call_ip(6)tables: bridged IPv4 and IPv6 go through the inet hooks, where
                // conntrack gives the security groups their state (see nft.rs). Per bridge, so
                // other bridges on the host keep the host's sysctl. addrgenmode none: the host
                // takes no IPv6 link-local address on a tenant's segment (it would send router
                // solicitations and listener reports into it), and is no neighbour there.
                ch.batch.push(format!(
                    "link add name {br} mtu {mtu} type bridge stp_state 0 nf_call_iptables 1 nf_call_ip6tables 1"
                ));
                ch.batch.push(format!("link set dev {br} addrgenmode none"));
                ch.batch.push(format!("link set dev {br} up"));
                ch.created += 1;
            }
        }

        let vx = vxlan_name(prefix, net.vni);
        let cur = by_name.get(vx.as_str());
        let same_tunnel = cur.is_some_and(|l| {
            l.kind() == Some("vxlan")
                && num(l.data("id")) == Some(u64::from(net.vni))
                && l.data("local").and_then(|v| v.as_str()) == Some(&underlay.local.to_string())
                && num(l.data("port")) == Some(u64::from(underlay.port))
                && l.data("learning").and_then(|v| v.as_bool()) == Some(false)
        });
        if same_tunnel {
            let l = cur.expect("checked above");
            if l.mtu != mtu || l.master.as_deref() != Some(br.as_str()) || !l.is_up() {
                ch.batch
                    .push(format!("link set dev {vx} mtu {mtu} master {br} up"));
                ch.batch.push(no_learning(&vx));
                ch.changed += 1;
            } else if l.learns() {
                ch.batch.push(no_learning(&vx));
                ch.changed += 1;
            }
        } else {
            if cur.is_some() {
                ch.batch.push(format!("link del dev {vx}"));
                ch.removed += 1;
            }
            ch.batch.push(format!(
                "link add name {vx} mtu {mtu} type vxlan id {} local {} dstport {} nolearning",
                net.vni, underlay.local, underlay.port
            ));
            ch.batch.push(format!("link set dev {vx} master {br} up"));
            ch.batch.push(no_learning(&vx));
            ch.created += 1;
        }

        for p in &net.ports {
            let name = p.ifname.as_str();
            match by_name.get(name) {
                Some(l) => {
                    if l.mtu != mtu || l.master.as_deref() != Some(br.as_str()) || !l.is_up() {
                        ch.batch
                            .push(format!("link set dev {name} mtu {mtu} master {br} up"));
                        ch.changed += 1;
                    }
                }
                None if p.create_tap => {
                    ch.batch.push(format!("tuntap add dev {name} mode tap"));
                    // As for the bridge: no host address on the guest's wire.
                    ch.batch
                        .push(format!("link set dev {name} addrgenmode none"));
                    ch.batch
                        .push(format!("link set dev {name} mtu {mtu} master {br} up"));
                    ch.created += 1;
                }
                None => {
                    return Err(NetError::bad_plan(format!(
                        "port {name} (create_tap: false) does not exist"
                    )));
                }
            }
        }
    }
    Ok(ch)
}

fn num(v: Option<&serde_json::Value>) -> Option<u64> {
    v?.as_u64()
}

/// The bridge must not learn MACs behind the VXLAN port: where remote NICs are is the control
/// plane's to say (the tunnel's forwarding entries). A learned entry would outlive a VM that
/// moved onto this host and silently send its traffic to the old one until it aged out.
fn no_learning(vx: &str) -> String {
    format!("link set dev {vx} type bridge_slave learning off")
}

/// Runs `ip -batch -`: one process for all the changes; it stops at the first failing line and
/// names it.
pub(crate) async fn run_batch(lines: &[String]) -> Result<(), NetError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut input = lines.join("\n");
    input.push('\n');
    cmd::run("ip", &["-batch", "-"], Some(&input))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::NetworkPlan;
    use crate::plan::tests::port;

    fn link(
        name: &str,
        kind: &str,
        mtu: u32,
        master: Option<&str>,
        data: serde_json::Value,
    ) -> Link {
        Link {
            ifindex: 1,
            ifname: name.into(),
            flags: vec!["UP".into()],
            mtu,
            master: master.map(Into::into),
            linkinfo: Some(LinkInfo {
                info_kind: Some(kind.into()),
                info_data: data,
                info_slave_data: serde_json::json!({ "learning": false }),
            }),
        }
    }

    fn underlay() -> Underlay {
        Underlay {
            local: Ipv4Addr::new(10, 250, 0, 1),
            port: 4789,
        }
    }

    fn plan() -> HostPlan {
        HostPlan {
            networks: vec![NetworkPlan {
                vni: 7,
                mtu: 1450,
                peers: vec![],
                remote_macs: vec![],
                ports: vec![port("pnt00000001", 2)],
                router: None,
                ipv6: None,
            }],
        }
    }

    fn converged() -> Vec<Link> {
        vec![
            link(
                "pnb7",
                "bridge",
                1450,
                None,
                serde_json::json!({"stp_state": 0, "nf_call_iptables": 1, "nf_call_ip6tables": 1}),
            ),
            link(
                "pnx7",
                "vxlan",
                1450,
                Some("pnb7"),
                serde_json::json!({"id": 7, "local": "10.250.0.1", "port": 4789, "learning": false}),
            ),
            link(
                "pnt00000001",
                "tun",
                1450,
                Some("pnb7"),
                serde_json::json!({"type": "tap"}),
            ),
        ]
    }

    #[test]
    fn creates_everything_from_nothing_in_order() {
        let ch = diff_links("pn", underlay(), &plan(), &[]).unwrap();
        assert_eq!((ch.created, ch.changed, ch.removed), (3, 0, 0));
        assert_eq!(
            ch.batch,
            vec![
                "link add name pnb7 mtu 1450 type bridge stp_state 0 nf_call_iptables 1 nf_call_ip6tables 1",
                "link set dev pnb7 addrgenmode none",
                "link set dev pnb7 up",
                "link add name pnx7 mtu 1450 type vxlan id 7 local 10.250.0.1 dstport 4789 nolearning",
                "link set dev pnx7 master pnb7 up",
                "link set dev pnx7 type bridge_slave learning off",
                "tuntap add dev pnt00000001 mode tap",
                "link set dev pnt00000001 addrgenmode none",
                "link set dev pnt00000001 mtu 1450 master pnb7 up",
            ]
        );
    }

    #[test]
    fn converged_host_needs_nothing() {
        let ch = diff_links("pn", underlay(), &plan(), &converged()).unwrap();
        assert_eq!(ch, LinkChanges::default());
    }

    #[test]
    fn changes_only_what_differs_and_removes_leftovers() {
        let mut cur = converged();
        cur[2].mtu = 1500; // tap mtu drifted
        cur.push(link("pnb9", "bridge", 1500, None, serde_json::json!({})));
        cur.push(link(
            "pnx9",
            "vxlan",
            1500,
            Some("pnb9"),
            serde_json::json!({}),
        ));
        cur.push(link(
            "pntdeadbeef",
            "tun",
            1500,
            Some("pnb9"),
            serde_json::json!({}),
        ));
        cur.push(link(
            "veth-x",
            "veth",
            1500,
            Some("pnb7"),
            serde_json::json!({}),
        ));
        cur.push(link("eth0", "veth", 1500, None, serde_json::json!({})));
        let ch = diff_links("pn", underlay(), &plan(), &cur).unwrap();
        assert_eq!(
            ch.batch,
            vec![
                "link del dev pntdeadbeef",
                "link set dev veth-x nomaster",
                "link del dev pnb9",
                "link del dev pnx9",
                "link set dev pnt00000001 mtu 1450 master pnb7 up",
            ]
        );
        assert_eq!((ch.created, ch.changed, ch.removed), (0, 2, 3));
    }

    #[test]
    fn a_changed_tunnel_is_recreated_and_a_missing_veth_is_an_error() {
        let mut cur = converged();
        cur[1].linkinfo.as_mut().unwrap().info_data["local"] = "10.9.9.9".into();
        let ch = diff_links("pn", underlay(), &plan(), &cur).unwrap();
        assert_eq!(ch.batch[0], "link del dev pnx7");
        assert_eq!((ch.created, ch.removed), (1, 1));

        let mut p = plan();
        p.networks[0].ports[0].create_tap = false;
        assert!(diff_links("pn", underlay(), &p, &[]).is_err());
    }
}
