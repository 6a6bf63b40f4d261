//! Floating addresses: allocate one from an external network, map it to a NIC (of a network
//! with outbound NAT), unmap, release. The address is an IPAM key of the external network
//! (`/panal/ipam/{network}/ip/{addr}`) created with compare-absent in the same transaction as
//! the record (`/panal/floating-ips/{project}/{addr}`), so it is never given twice; a NIC holds
//! at most one (`/panal/floating-nics/{project}/{vm}/{nic}`, compare-absent on associate). The
//! host plans (`network_plans.rs`) put it on the host running the VM, so it follows the VM.

use super::networks::{is_host_address, parse_ipv4};
use super::{App, next_token, page_bounds};
use crate::keys;
use crate::repo::Versioned;
use ipnet::Ipv4Net;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::network::{FloatingIp, FloatingIpAssociate, FloatingIpCreate, Network, PortOwner};
use panal_types::page::Page;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name};

/// What the IPAM record of an external address says: the floating address of a project.
fn owner(project: &Name) -> Result<PortOwner, ApiError> {
    Ok(PortOwner {
        project: project.clone(),
        vm: Name::parse("floating-ip").map_err(|_| ApiError::internal())?,
        nic: "floating-ip".into(),
    })
}

impl App {
    /// Adds to `txn` the unmapping of the floating addresses of these NICs of a VM (deleted, or
    /// the NICs unplugged), so no address stays mapped to a NIC that is gone.
    pub(super) async fn unmap_floating(
        &self,
        mut txn: Txn,
        project: &str,
        vm: &str,
        nics: &[panal_types::network::Nic],
    ) -> Result<Txn, ApiError> {
        for nic in nics {
            let guard = keys::floating_nic(project, vm, &nic.id);
            let Some(held) = self
                .repo
                .store()
                .get(&guard)
                .await
                .map_err(crate::repo::store_error)?
            else {
                continue;
            };
            txn = txn.and_then(Op::delete(&guard));
            let Ok(address) = String::from_utf8_lossy(&held.value).parse() else {
                continue;
            };
            let key = keys::floating_ip(project, address);
            if let Some(f) = self.repo.get::<FloatingIp>(&key).await? {
                let mut free = f.value;
                free.vm = None;
                free.nic = None;
                txn = txn
                    .when(Compare::unchanged(&key, f.mod_revision))
                    .and_then(Op::put(&key, crate::codec::encode(&free)));
            }
        }
        Ok(txn)
    }

    /// The external network a floating address is asked from: the project's own, else the
    /// `default` project's (where an administrator declares shared pools).
    async fn external_network(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Versioned<Network>, ApiError> {
        let net = match self.network(project, name, "network").await {
            Err(e) if e.code == ErrorCode::NotFound && project != DEFAULT_PROJECT => {
                self.network(DEFAULT_PROJECT, name, "network").await?
            }
            r => r?,
        };
        if !net.value.external {
            return Err(ApiError::invalid(
                "network",
                format!("\"{name}\" is not an external network (create one with `--external`)"),
            ));
        }
        if net.value.deleting {
            return Err(
                ApiError::conflict(format!("network \"{name}\" is being deleted"))
                    .with_field("network"),
            );
        }
        Ok(net)
    }

    /// Allocates a floating address.
    pub async fn create_floating_ip(&self, req: FloatingIpCreate) -> Result<FloatingIp, ApiError> {
        let project_name = req.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let project = self.project(project_name, "project").await?;
        if project.value.deleting {
            return Err(
                ApiError::conflict(format!("project \"{project_name}\" is being deleted"))
                    .with_field("project"),
            );
        }
        let net = self.external_network(project_name, &req.network).await?;
        let subnet: Ipv4Net = net.value.cidr.parse().map_err(|_| ApiError::internal())?;
        let given = match req.address.as_deref() {
            None => None,
            Some(a) => {
                let ip = parse_ipv4("address", a)?;
                if !is_host_address(&subnet, ip) || Some(ip) == net.value.gateway {
                    return Err(ApiError::invalid(
                        "address",
                        format!(
                            "{ip} is not an address of {subnet} that can be given out (network, broadcast and gateway cannot)"
                        ),
                    ));
                }
                Some(ip)
            }
        };
        for _ in 0..16 {
            let (taken, _) = self.taken_in(&net.value.id).await?;
            let ip = match given {
                Some(ip) if taken.contains(&ip) => {
                    return Err(ApiError::conflict(format!("{ip} is already allocated"))
                        .with_field("address"));
                }
                Some(ip) => ip,
                None => subnet
                    .hosts()
                    .find(|ip| !taken.contains(ip) && Some(*ip) != net.value.gateway)
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "no free address left in external network \"{}\"",
                            net.value.name
                        ))
                        .with_field("network")
                    })?,
            };
            let fip = FloatingIp {
                address: ip,
                project: project.value.name.clone(),
                network: net.value.name.clone(),
                network_id: net.value.id,
                vm: None,
                nic: None,
                created_at: chrono::Utc::now(),
            };
            let ipam = keys::ipam_address(&net.value.id, ip);
            let key = keys::floating_ip(project_name, ip);
            let txn = Txn::new()
                .when(Compare::unchanged(
                    &keys::network(net.value.project.as_str(), net.value.name.as_str()),
                    net.mod_revision,
                ))
                .when(Compare::unchanged(
                    &keys::project(project_name),
                    project.mod_revision,
                ))
                .when(Compare::absent(&ipam))
                .when(Compare::absent(&key))
                .and_then(Op::put(&ipam, crate::codec::encode(&owner(&fip.project)?)))
                .and_then(Op::put(&key, crate::codec::encode(&fip)));
            if self.repo.txn(txn).await?.succeeded {
                return Ok(fip);
            }
            // Lost the address to a concurrent allocation, or the network or project changed.
            self.external_network(project_name, &req.network).await?;
        }
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            "too many concurrent allocations; retry",
        ))
    }

    async fn floating_ip_versioned(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<Versioned<FloatingIp>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        check_name("project", project)?;
        let ip = parse_ipv4("address", address)?;
        match self.repo.get(&keys::floating_ip(project, ip)).await? {
            Some(f) => Ok(f),
            None => {
                self.project(project, "project").await?;
                Err(ApiError::not_found("floating address", ip).with_field("address"))
            }
        }
    }

    /// Shows a floating address.
    pub async fn get_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<FloatingIp, ApiError> {
        Ok(self.floating_ip_versioned(project, address).await?.value)
    }

    /// Lists a project's floating addresses.
    pub async fn list_floating_ips(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<FloatingIp>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::floating_ips_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<FloatingIp>(&prefix, start.as_deref(), limit)
            .await?;
        let last = items.last().map(|v| {
            let o = v.value.address.octets();
            format!("{:03}.{:03}.{:03}.{:03}", o[0], o[1], o[2], o[3])
        });
        Ok(Page {
            items: items.into_iter().map(|v| v.value).collect(),
            next_page_token: next_token(more, last),
        })
    }

    /// Maps a floating address to a NIC of a VM of its project.
    pub async fn associate_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
        req: FloatingIpAssociate,
    ) -> Result<FloatingIp, ApiError> {
        let fip = self.floating_ip_versioned(project, address).await?;
        let project = fip.value.project.to_string();
        let vm_name = check_name("vm", &req.vm)?;
        let vm = match self.vm_versioned(Some(&project), vm_name.as_str()).await {
            Err(e) if e.code == ErrorCode::NotFound => return Err(e.with_field("vm")),
            r => r?,
        };
        // The NIC: the one named, or the first on a network with a router.
        let mut routed = Vec::new();
        for nic in &vm.value.spec.nics {
            let net = self
                .repo
                .get::<Network>(&keys::network(&project, nic.network.as_str()))
                .await?;
            let ok = net.is_some_and(|n| n.value.id == nic.network_id && n.value.outbound_nat);
            routed.push((nic, ok));
        }
        let nic = match req.nic.as_deref() {
            Some(id) => {
                let Some((nic, ok)) = routed.iter().find(|(n, _)| n.id == id) else {
                    return Err(ApiError::invalid(
                        "nic",
                        format!("VM \"{vm_name}\" has no NIC \"{id}\""),
                    ));
                };
                if !ok {
                    return Err(ApiError::invalid(
                        "nic",
                        format!(
                            "NIC \"{id}\" is on network \"{}\", which has no router: a floating address needs outbound NAT (`--outbound-nat`)",
                            nic.network
                        ),
                    ));
                }
                *nic
            }
            None => routed.iter().find(|(_, ok)| *ok).map(|(n, _)| *n).ok_or_else(|| {
                ApiError::invalid(
                    "vm",
                    format!(
                        "VM \"{vm_name}\" has no NIC on a network with outbound NAT; a floating address needs one"
                    ),
                )
            })?,
        };
        match (&fip.value.vm, &fip.value.nic) {
            (Some(v), Some(n)) if *v == vm_name && *n == nic.id => return Ok(fip.value),
            (Some(v), Some(n)) => {
                return Err(ApiError::conflict(format!(
                    "{} is associated with NIC \"{n}\" of VM \"{v}\"; disassociate it first",
                    fip.value.address
                ))
                .with_field("address"));
            }
            _ => {}
        }
        let guard = keys::floating_nic(&project, vm_name.as_str(), &nic.id);
        let mut updated = fip.value.clone();
        updated.vm = Some(vm_name.clone());
        updated.nic = Some(nic.id.clone());
        let key = keys::floating_ip(&project, fip.value.address);
        let txn = Txn::new()
            .when(Compare::unchanged(&key, fip.mod_revision))
            .when(Compare::absent(&guard))
            .and_then(Op::put(&key, crate::codec::encode(&updated)))
            .and_then(Op::put(&guard, fip.value.address.to_string().into_bytes()));
        if self.repo.txn(txn).await?.succeeded {
            return Ok(updated);
        }
        let holder = self
            .repo
            .store()
            .get(&guard)
            .await
            .map_err(crate::repo::store_error)?;
        match holder {
            Some(kv) => Err(ApiError::conflict(format!(
                "NIC \"{}\" of VM \"{vm_name}\" already has floating address {}",
                nic.id,
                String::from_utf8_lossy(&kv.value)
            ))
            .with_field("nic")),
            None => Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the floating address changed meanwhile; retry",
            )),
        }
    }

    /// Unmaps a floating address (nothing to do when it is not mapped).
    pub async fn disassociate_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<FloatingIp, ApiError> {
        let fip = self.floating_ip_versioned(project, address).await?;
        let (Some(vm), Some(nic)) = (&fip.value.vm, &fip.value.nic) else {
            return Ok(fip.value);
        };
        let project = fip.value.project.to_string();
        let key = keys::floating_ip(&project, fip.value.address);
        let mut updated = fip.value.clone();
        updated.vm = None;
        updated.nic = None;
        let txn = Txn::new()
            .when(Compare::unchanged(&key, fip.mod_revision))
            .and_then(Op::put(&key, crate::codec::encode(&updated)))
            .and_then(Op::delete(&keys::floating_nic(&project, vm.as_str(), nic)));
        if !self.repo.txn(txn).await?.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the floating address changed meanwhile; retry",
            ));
        }
        Ok(updated)
    }

    /// Releases a floating address (unmapping it first if needed).
    pub async fn delete_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<(), ApiError> {
        let fip = self.floating_ip_versioned(project, address).await?;
        let project = fip.value.project.to_string();
        let key = keys::floating_ip(&project, fip.value.address);
        let mut txn = Txn::new()
            .when(Compare::unchanged(&key, fip.mod_revision))
            .and_then(Op::delete(&key))
            .and_then(Op::delete(&keys::ipam_address(
                &fip.value.network_id,
                fip.value.address,
            )));
        if let (Some(vm), Some(nic)) = (&fip.value.vm, &fip.value.nic) {
            txn = txn.and_then(Op::delete(&keys::floating_nic(&project, vm.as_str(), nic)));
        }
        if !self.repo.txn(txn).await?.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the floating address changed meanwhile; retry",
            ));
        }
        Ok(())
    }
}
