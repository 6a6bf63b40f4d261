//! Networks: create, list, show, delete. A network gets a VXLAN identifier of its own at
//! creation; its subnet may not overlap another network of the same project (two projects may
//! use the same one: their traffic never meets). A network with NICs cannot be deleted.

use super::{App, next_token, page_bounds};
use crate::keys;
use crate::repo::Versioned;
use ipnet::Ipv4Net;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::network::{DEFAULT_MTU, MAX_VNI, Network, NetworkCreate};
use panal_types::page::Page;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, NetworkId};
use rand::Rng;
use std::net::Ipv4Addr;

/// Parses a subnet: canonical IPv4 CIDR, /8 to /29.
pub(super) fn parse_subnet(field: &str, s: &str) -> Result<Ipv4Net, ApiError> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("{s:?} is not an IPv4 CIDR such as 10.0.0.0/24"),
        )
    })?;
    if net.network() != net.addr() {
        return Err(ApiError::invalid(
            field,
            format!("{s} has host bits set; the network is {}", net.trunc()),
        ));
    }
    if !(8..=29).contains(&net.prefix_len()) {
        return Err(ApiError::invalid(
            field,
            format!(
                "a network is /8 to /29, not /{} (room for NICs, a gateway and broadcast)",
                net.prefix_len()
            ),
        ));
    }
    Ok(net)
}

/// Parses a network's IPv6 prefix: a /64 of unicast space (SLAAC forms addresses in a /64
/// only), or `auto` for a random unique local one (RFC 4193: `fd` and a 40-bit random global
/// id, subnet 0).
pub(super) fn parse_ipv6_prefix(field: &str, s: &str) -> Result<ipnet::Ipv6Net, ApiError> {
    let s = s.trim();
    if s == "auto" {
        let id: [u8; 5] = rand::thread_rng().r#gen();
        let mut o = [0u8; 16];
        o[0] = 0xfd;
        o[1..6].copy_from_slice(&id);
        return ipnet::Ipv6Net::new(o.into(), 64).map_err(|_| ApiError::internal());
    }
    let net: ipnet::Ipv6Net = s.parse().map_err(|_| {
        ApiError::invalid(
            field,
            format!("{s:?} is not an IPv6 CIDR such as fd12:3456:789a:1::/64 (or \"auto\")"),
        )
    })?;
    if net.prefix_len() != 64 {
        return Err(ApiError::invalid(
            field,
            format!(
                "an IPv6 network is a /64 (guests form their addresses by SLAAC), not /{}",
                net.prefix_len()
            ),
        ));
    }
    if net.network() != net.addr() {
        return Err(ApiError::invalid(
            field,
            format!("{s} has host bits set; the network is {}", net.trunc()),
        ));
    }
    let first = net.addr().segments()[0];
    if net.addr().is_unspecified()
        || net.addr().is_loopback()
        || first & 0xff00 == 0xff00
        || first & 0xffc0 == 0xfe80
    {
        return Err(ApiError::invalid(
            field,
            format!("{net} is not unicast space (multicast, link-local and loopback are not)"),
        ));
    }
    Ok(net)
}

/// Parses an IPv4 address.
pub(super) fn parse_ipv4(field: &str, s: &str) -> Result<Ipv4Addr, ApiError> {
    s.trim()
        .parse()
        .map_err(|_| ApiError::invalid(field, format!("{s:?} is not an IPv4 address")))
}

/// Whether `ip` may be given to a host of `net`: inside it, and neither its network nor its
/// broadcast address.
pub(super) fn is_host_address(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

impl App {
    /// Creates a network.
    pub async fn create_network(&self, req: NetworkCreate) -> Result<Network, ApiError> {
        let name = check_name("name", &req.name)?;
        let project_name = req.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let project = self.project(project_name, "project").await?;
        if project.value.deleting {
            return Err(
                ApiError::conflict(format!("project \"{project_name}\" is being deleted"))
                    .with_field("project"),
            );
        }
        let subnet = parse_subnet("cidr", &req.cidr)?;
        let gateway = match req.gateway.as_deref().map(str::trim) {
            Some("none") => None,
            None => Some(subnet.hosts().next().ok_or_else(ApiError::internal)?),
            Some(g) => {
                let ip = parse_ipv4("gateway", g)?;
                if !is_host_address(&subnet, ip) {
                    return Err(ApiError::invalid(
                        "gateway",
                        format!("{ip} is not a host address of {subnet}"),
                    ));
                }
                Some(ip)
            }
        };
        if req.dns.len() > 4 {
            return Err(ApiError::invalid("dns", "at most 4 DNS servers"));
        }
        let dns = req
            .dns
            .iter()
            .map(|d| parse_ipv4("dns", d))
            .collect::<Result<Vec<_>, _>>()?;
        let mtu = req.mtu.unwrap_or(DEFAULT_MTU);
        if !(576..=9000).contains(&mtu) {
            return Err(ApiError::invalid(
                "mtu",
                format!("an MTU is 576 to 9000, not {mtu}"),
            ));
        }
        let outbound_nat = req.outbound_nat.unwrap_or(false);
        if outbound_nat && gateway.is_none() {
            return Err(ApiError::invalid(
                "outbound_nat",
                "outbound NAT routes through the gateway; the network needs one",
            ));
        }
        let external = req.external.unwrap_or(false);
        if external && outbound_nat {
            return Err(ApiError::invalid(
                "outbound_nat",
                "an external network has no guests to route; outbound NAT is for the networks of VMs",
            ));
        }
        let ipv6 = match req.ipv6_cidr.as_deref() {
            None => None,
            Some(_) if external => {
                return Err(ApiError::invalid(
                    "ipv6_cidr",
                    "an external network holds IPv4 floating addresses only",
                ));
            }
            Some(c) => Some(parse_ipv6_prefix("ipv6_cidr", c)?),
        };
        let key = keys::network(project_name, name.as_str());
        let guard = keys::network_guard(project_name);
        for _ in 0..16 {
            let (others, _, _) = self
                .repo
                .list::<Network>(&keys::networks_of(project_name), None, usize::MAX)
                .await?;
            if others.iter().any(|n| n.value.name == name) {
                return Err(already_exists(&name, project_name));
            }
            for other in &others {
                if let Ok(o) = other.value.cidr.parse::<Ipv4Net>()
                    && (o.contains(&subnet) || subnet.contains(&o))
                {
                    return Err(ApiError::conflict(format!(
                        "{subnet} overlaps network \"{}\" ({o}) of project \"{project_name}\"",
                        other.value.name
                    ))
                    .with_field("cidr"));
                }
                let theirs = other.value.ipv6_cidr.as_deref();
                if let (Some(mine), Some(o)) = (ipv6, theirs.and_then(|c| c.parse().ok()))
                    && mine == o
                {
                    return Err(ApiError::conflict(format!(
                        "{mine} is the IPv6 prefix of network \"{}\" of project \"{project_name}\"",
                        other.value.name
                    ))
                    .with_field("ipv6_cidr"));
                }
            }
            let guard_rev = self
                .repo
                .store()
                .get(&guard)
                .await
                .map_err(crate::repo::store_error)?
                .map(|kv| kv.mod_revision);
            // An external network carries no VXLAN: VNI 0, none reserved.
            let vni = if external {
                0
            } else {
                rand::thread_rng().gen_range(1..=MAX_VNI)
            };
            let network = Network {
                id: NetworkId::new(),
                name: name.clone(),
                project: project.value.name.clone(),
                cidr: subnet.to_string(),
                ipv6_cidr: ipv6.map(|p| p.to_string()),
                gateway,
                dns: dns.clone(),
                mtu,
                vni,
                outbound_nat,
                external,
                deleting: false,
                created_at: chrono::Utc::now(),
            };
            let txn = Txn::new()
                .when(match guard_rev {
                    Some(rev) => Compare::unchanged(&guard, rev),
                    None => Compare::absent(&guard),
                })
                .when(Compare::unchanged(
                    &keys::project(project_name),
                    project.mod_revision,
                ))
                .when(Compare::absent(&key))
                .and_then(Op::put(&key, crate::codec::encode(&network)))
                .and_then(Op::put(&guard, network.id.to_string().into_bytes()));
            let txn = if external {
                txn
            } else {
                txn.when(Compare::absent(&keys::vni(vni))).and_then(Op::put(
                    &keys::vni(vni),
                    network.id.to_string().into_bytes(),
                ))
            };
            if self.repo.txn(txn).await?.succeeded {
                return Ok(network);
            }
            // Lost to a concurrent create, a taken VNI or a project change: look again.
            let p = self.project(project_name, "project").await?;
            if p.value.deleting {
                return Err(ApiError::conflict(format!(
                    "project \"{project_name}\" is being deleted"
                ))
                .with_field("project"));
            }
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "too many concurrent network changes in this project; retry",
        ))
    }

    /// Reads a network of a project (`field` names the input that referred to it).
    pub async fn network(
        &self,
        project: &str,
        name: &str,
        field: &str,
    ) -> Result<Versioned<Network>, ApiError> {
        let name = check_name(field, name)?;
        self.repo
            .get(&keys::network(project, name.as_str()))
            .await?
            .ok_or_else(|| ApiError::not_found("network", &name).with_field(field))
    }

    /// Shows a network.
    pub async fn get_network(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Network, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        Ok(self.network(project, name, "name").await?.value)
    }

    /// Lists a project's networks.
    pub async fn list_networks(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Network>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::networks_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<Network>(&prefix, start.as_deref(), limit)
            .await?;
        let items: Vec<Network> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|n| n.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Deletes a network without NICs.
    pub async fn delete_network(&self, project: Option<&str>, name: &str) -> Result<(), ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let net = self.network(project, name, "name").await?;
        let key = keys::network(project, name);
        // Mark first, as a project delete does: a NIC allocation that read the network before
        // the mark fails its compare, one after it sees the mark. Then emptiness is final.
        let marked = self
            .repo
            .update::<Network, _>(&key, |n| {
                if n.id != net.value.id {
                    return Err(ApiError::not_found("network", name).with_field("name"));
                }
                n.deleting = true;
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("network", name).with_field("name"))?;
        let used = self
            .repo
            .store()
            .range(&keys::ipam_of(&net.value.id), None, 1)
            .await
            .map_err(crate::repo::store_error)?;
        if !used.kvs.is_empty() {
            self.repo
                .update::<Network, _>(&key, |n| {
                    n.deleting = false;
                    Ok(true)
                })
                .await?;
            return Err(ApiError::conflict(format!(
                "network \"{name}\" still has NICs; remove them (or their VMs) first"
            ))
            .with_field("name"));
        }
        let mut txn = Txn::new()
            .when(Compare::unchanged(&key, marked.mod_revision))
            .and_then(Op::delete(&key));
        if !marked.value.external {
            txn = txn.and_then(Op::delete(&keys::vni(marked.value.vni)));
        }
        let r = self.repo.txn(txn).await?;
        if !r.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the network changed meanwhile; retry",
            ));
        }
        Ok(())
    }
}

fn already_exists(name: &panal_types::Name, project: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AlreadyExists,
        format!("a network named \"{name}\" already exists in project \"{project}\""),
    )
    .with_field("name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_canonical_and_sized() {
        assert!(parse_subnet("cidr", "10.0.0.0/24").is_ok());
        for bad in [
            "10.0.0.1/24",
            "10.0.0.0/30",
            "10.0.0.0/7",
            "10.0.0/24",
            "x",
            "::/64",
        ] {
            let e = parse_subnet("cidr", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("cidr"), "{bad}");
        }
    }

    #[test]
    fn host_addresses_exclude_network_and_broadcast() {
        let n: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert!(is_host_address(&n, "10.0.0.1".parse().unwrap()));
        assert!(!is_host_address(&n, "10.0.0.0".parse().unwrap()));
        assert!(!is_host_address(&n, "10.0.0.255".parse().unwrap()));
        assert!(!is_host_address(&n, "10.0.1.1".parse().unwrap()));
    }
}
