//! Address management: the addresses and MACs of NICs. Each one taken is a key of its network
//! (`/panal/ipam/{network}/ip/{addr}`, `.../mac/{mac}`) created in the same transaction as the
//! VM that holds it (compare "absent"), and deleted in the same transaction as the VM record,
//! so an address is never given twice and never outlives its NIC.

use super::App;
use super::networks::{is_host_address, parse_ipv4};
use crate::codec::encode;
use crate::keys;
use crate::repo::Versioned;
use ipnet::Ipv4Net;
use panal_store::{Compare, Op};
use panal_types::network::{MAX_NICS, Network, Nic, NicRequest, PortOwner, SecurityGroup};
use panal_types::vm::Vm;
use panal_types::{ApiError, ErrorCode, Name, NetworkId};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// What NIC planning has read and reserved, kept across the VMs of one batch so that two VMs
/// of a batch never get the same address.
#[derive(Default)]
pub(super) struct NicContext {
    networks: HashMap<(String, String), Versioned<Network>>,
    taken: HashMap<NetworkId, HashSet<Ipv4Addr>>,
    macs: HashMap<NetworkId, HashSet<String>>,
    groups: HashSet<(String, String)>,
}

/// NICs planned for a VM: the NICs, and what its create transaction must compare and write.
#[derive(Default)]
pub(super) struct PlannedNics {
    pub nics: Vec<Nic>,
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

/// Normalises and checks a MAC address: six hex octets, unicast, not all-zero.
pub(super) fn parse_mac(field: &str, s: &str) -> Result<String, ApiError> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    let octets: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|p| {
                    // Hex digits only: `from_str_radix` would also take a sign (`+1`).
                    (p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u8::from_str_radix(p, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    let Some(o) = octets else {
        return Err(ApiError::invalid(
            field,
            format!("{s:?} is not a MAC address such as 52:54:00:12:34:56"),
        ));
    };
    if o.iter().all(|b| *b == 0) {
        return Err(ApiError::invalid(
            field,
            "the all-zero MAC is not an address",
        ));
    }
    if o[0] & 1 == 1 {
        return Err(ApiError::invalid(
            field,
            format!("{s} is a multicast (or broadcast) MAC; a NIC needs a unicast one"),
        ));
    }
    Ok(format_mac(&o))
}

fn format_mac(o: &[u8]) -> String {
    o.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address-management records a VM's NICs hold, to delete with the VM.
pub(super) fn release_ops(vm: &Vm) -> Vec<Op> {
    vm.spec
        .nics
        .iter()
        .flat_map(|n| {
            [
                Op::delete(&keys::ipam_address(&n.network_id, n.ip)),
                Op::delete(&keys::ipam_mac(&n.network_id, &n.mac)),
            ]
        })
        .collect()
}

impl App {
    /// Validates a VM's NIC requests and takes their addresses and MACs (in `ctx` now, in the
    /// store with the VM's create transaction).
    pub(super) async fn plan_nics(
        &self,
        ctx: &mut NicContext,
        project: &str,
        vm: &Name,
        reqs: &[NicRequest],
    ) -> Result<PlannedNics, ApiError> {
        if reqs.len() > MAX_NICS {
            return Err(ApiError::invalid(
                "nics",
                format!("a VM has at most {MAX_NICS} NICs, not {}", reqs.len()),
            ));
        }
        let mut out = PlannedNics::default();
        for (i, r) in reqs.iter().enumerate() {
            let field = |f: &str| format!("nics[{i}].{f}");
            let key = (project.to_owned(), r.network.clone());
            let net = match ctx.networks.get(&key) {
                Some(n) => n.clone(),
                None => {
                    let n = self.network(project, &r.network, &field("network")).await?;
                    out.compares.push(Compare::unchanged(
                        &keys::network(project, n.value.name.as_str()),
                        n.mod_revision,
                    ));
                    ctx.networks.insert(key, n.clone());
                    n
                }
            };
            if net.value.deleting {
                return Err(ApiError::conflict(format!(
                    "network \"{}\" is being deleted",
                    net.value.name
                ))
                .with_field(field("network")));
            }
            if net.value.external {
                return Err(ApiError::invalid(
                    &field("network"),
                    format!(
                        "\"{}\" is an external network: its addresses are floating addresses, not NICs",
                        net.value.name
                    ),
                ));
            }
            let subnet: Ipv4Net = net.value.cidr.parse().map_err(|_| ApiError::internal())?;
            let id = net.value.id;
            if let std::collections::hash_map::Entry::Vacant(slot) = ctx.taken.entry(id) {
                let (ips, macs) = self.taken_in(&id).await?;
                slot.insert(ips);
                ctx.macs.insert(id, macs);
            }
            let taken = ctx.taken.get_mut(&id).ok_or_else(ApiError::internal)?;
            let ip = match &r.ip {
                Some(s) => {
                    let ip = parse_ipv4(&field("ip"), s)?;
                    if !is_host_address(&subnet, ip) {
                        return Err(ApiError::invalid(
                            &field("ip"),
                            format!("{ip} is not a host address of {subnet}"),
                        ));
                    }
                    if Some(ip) == net.value.gateway {
                        return Err(ApiError::invalid(
                            &field("ip"),
                            format!("{ip} is the gateway of network \"{}\"", net.value.name),
                        ));
                    }
                    if taken.contains(&ip) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!("{ip} is already taken in network \"{}\"", net.value.name),
                        )
                        .with_field(field("ip")));
                    }
                    ip
                }
                None => subnet
                    .hosts()
                    .find(|ip| Some(*ip) != net.value.gateway && !taken.contains(ip))
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "network \"{}\" has no free address left",
                            net.value.name
                        ))
                        .with_field(field("network"))
                    })?,
            };
            taken.insert(ip);
            let macs = ctx.macs.get_mut(&id).ok_or_else(ApiError::internal)?;
            let mac = match &r.mac {
                Some(s) => {
                    let mac = parse_mac(&field("mac"), s)?;
                    if macs.contains(&mac) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!(
                                "MAC {mac} is already used in network \"{}\"",
                                net.value.name
                            ),
                        )
                        .with_field(field("mac")));
                    }
                    mac
                }
                None => loop {
                    // QEMU's locally administered prefix, as libvirt and Proxmox use.
                    let tail: [u8; 3] = rand::thread_rng().r#gen();
                    let mac = format_mac(&[0x52, 0x54, 0x00, tail[0], tail[1], tail[2]]);
                    if !macs.contains(&mac) {
                        break mac;
                    }
                },
            };
            macs.insert(mac.clone());
            let mut groups = Vec::with_capacity(r.security_groups.len());
            for g in &r.security_groups {
                let gname = panal_types::error::check_name(&field("security_groups"), g)?;
                let gkey = (project.to_owned(), g.clone());
                if !ctx.groups.contains(&gkey) {
                    self.repo
                        .get::<SecurityGroup>(&keys::security_group(project, g))
                        .await?
                        .ok_or_else(|| {
                            ApiError::not_found("security group", g)
                                .with_field(field("security_groups"))
                        })?;
                    ctx.groups.insert(gkey);
                }
                if !groups.contains(&gname) {
                    groups.push(gname);
                }
            }
            // IPv6 by SLAAC: the address follows from the MAC, which is unique in the network,
            // so it needs no record of its own.
            let ipv6 = net
                .value
                .ipv6_cidr
                .as_deref()
                .and_then(|c| c.parse::<ipnet::Ipv6Net>().ok())
                .zip(mac.parse::<panal_net::MacAddr>().ok())
                .map(|(prefix, m)| m.slaac(prefix.network()));
            let nic = Nic {
                id: format!("{:08x}", rand::thread_rng().r#gen::<u32>()),
                network: net.value.name.clone(),
                network_id: id,
                vni: net.value.vni,
                mtu: net.value.mtu,
                mac: mac.clone(),
                ip,
                ipv6,
                security_groups: groups,
                // Given by the caller, which knows the VM's other devices.
                slot: 0,
            };
            let owner = encode(&PortOwner {
                project: Name::parse(project).map_err(|_| ApiError::internal())?,
                vm: vm.clone(),
                nic: nic.id.clone(),
            });
            let ip_key = keys::ipam_address(&id, ip);
            let mac_key = keys::ipam_mac(&id, &mac);
            out.compares.push(Compare::absent(&ip_key));
            out.compares.push(Compare::absent(&mac_key));
            out.ops.push(Op::put(&ip_key, owner.clone()));
            out.ops.push(Op::put(&mac_key, owner));
            out.nics.push(nic);
        }
        Ok(out)
    }

    /// The addresses and MACs taken in a network.
    pub(super) async fn taken_in(
        &self,
        network: &NetworkId,
    ) -> Result<(HashSet<Ipv4Addr>, HashSet<String>), ApiError> {
        let r = self
            .repo
            .store()
            .range(&keys::ipam_of(network), None, usize::MAX)
            .await
            .map_err(crate::repo::store_error)?;
        let mut ips = HashSet::new();
        let mut macs = HashSet::new();
        for kv in r.kvs {
            let rest = &kv.key[keys::ipam_of(network).len()..];
            if let Some(a) = rest.strip_prefix("ip/") {
                let o: Vec<u8> = a.split('.').filter_map(|p| p.parse().ok()).collect();
                if let [a, b, c, d] = o[..] {
                    ips.insert(Ipv4Addr::new(a, b, c, d));
                }
            } else if let Some(m) = rest.strip_prefix("mac/") {
                macs.insert(m.to_owned());
            }
        }
        Ok((ips, macs))
    }

    /// Every address taken in a network, with its owner (for `network show` and the tests that
    /// check nothing leaks).
    pub async fn network_ports(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Vec<(Ipv4Addr, PortOwner)>, ApiError> {
        let net = self.get_network(project, name).await?;
        let prefix = format!("{}ip/", keys::ipam_of(&net.id));
        let r = self
            .repo
            .store()
            .range(&prefix, None, usize::MAX)
            .await
            .map_err(crate::repo::store_error)?;
        let mut out = Vec::with_capacity(r.kvs.len());
        for kv in r.kvs {
            let o: Vec<u8> = kv.key[prefix.len()..]
                .split('.')
                .filter_map(|p| p.parse().ok())
                .collect();
            let owner: PortOwner =
                crate::codec::decode(&kv.key, &kv.value).map_err(crate::repo::store_error)?;
            if let [a, b, c, d] = o[..] {
                out.push((Ipv4Addr::new(a, b, c, d), owner));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_unicast_non_zero_and_normalised() {
        assert_eq!(
            parse_mac("mac", "52-54-00-AB-cd-01").unwrap(),
            "52:54:00:ab:cd:01"
        );
        for bad in [
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "52:54:00:00:00",
            "52:54:00:00:00:0g",
            "52:54:00:+1:00:01",
            "525400000001",
        ] {
            assert_eq!(
                parse_mac("nics[0].mac", bad).unwrap_err().field.as_deref(),
                Some("nics[0].mac"),
                "{bad}"
            );
        }
    }
}
