//! Security groups: named sets of stateful allow rules, applied to NICs. A NIC's allowed flows
//! are the union of its groups' rules; a NIC with no group accepts no new inbound flow and
//! starts any outbound one. Changing a group's rules changes every NIC in it at once (the
//! hosts' nftables rules follow through their network plans).

use super::{App, next_token, page_bounds};
use crate::keys;
use crate::repo::Versioned;
use ipnet::IpNet;
use panal_types::error::check_name;
use panal_types::network::{
    Direction, MAX_RULES, SecurityGroup, SecurityGroupCreate, SecurityRule, SecurityRuleCreate,
};
use panal_types::page::Page;
use panal_types::vm::Vm;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name, SecurityGroupId};
use rand::Rng;

/// The IP protocol number a rule's `protocol` names; `None` for any.
pub(super) fn protocol_number(p: &str) -> Option<u8> {
    match p {
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        "any" => None,
        n => n.parse().ok(),
    }
}

fn new_rule_id() -> String {
    format!("{:08x}", rand::thread_rng().r#gen::<u32>())
}

/// Allow every new outbound flow: what a group gets when it is created without rules.
fn allow_all_outbound() -> SecurityRule {
    SecurityRule {
        id: new_rule_id(),
        direction: Direction::Egress,
        protocol: "any".into(),
        port_min: None,
        port_max: None,
        remote_cidr: None,
        remote_group: None,
    }
}

impl App {
    /// Validates one rule of a group of `project` (the field names are prefixed by `at`).
    async fn check_rule(
        &self,
        project: &str,
        own_group: &str,
        at: &str,
        r: &SecurityRuleCreate,
    ) -> Result<SecurityRule, ApiError> {
        let field = |f: &str| format!("{at}{f}");
        let direction = match r.direction.as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            d => {
                return Err(ApiError::invalid(
                    &field("direction"),
                    format!("direction is ingress or egress, not {d:?}"),
                ));
            }
        };
        let protocol = r.protocol.as_deref().unwrap_or("any").to_ascii_lowercase();
        let number = match protocol.as_str() {
            "any" | "tcp" | "udp" | "icmp" => protocol_number(&protocol),
            n => match n.parse::<u32>() {
                Ok(v) if v <= 255 => Some(v as u8),
                _ => {
                    return Err(ApiError::invalid(
                        &field("protocol"),
                        format!("protocol is any, tcp, udp, icmp or a number 0 to 255, not {n:?}"),
                    ));
                }
            },
        };
        let ported = matches!(number, Some(6) | Some(17));
        let (port_min, port_max) = match (r.port_min, r.port_max) {
            (None, None) => (None, None),
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    &field("port_min"),
                    "a port range needs its first port",
                ));
            }
            (Some(min), max) => {
                if !ported {
                    return Err(ApiError::invalid(
                        &field("port_min"),
                        "ports apply to tcp and udp rules only",
                    ));
                }
                let max = max.unwrap_or(min);
                if !(1..=65535).contains(&min) {
                    return Err(ApiError::invalid(
                        &field("port_min"),
                        format!("a port is 1 to 65535, not {min}"),
                    ));
                }
                if max > 65535 {
                    return Err(ApiError::invalid(
                        &field("port_max"),
                        format!("a port is 1 to 65535, not {max}"),
                    ));
                }
                if max < min {
                    return Err(ApiError::invalid(
                        &field("port_max"),
                        format!("the range {min}-{max} ends before it starts"),
                    ));
                }
                (Some(min as u16), Some(max as u16))
            }
        };
        let remote_group = match &r.remote_group {
            None => None,
            Some(g) => {
                let name = check_name(&field("remote_group"), g)?;
                if name.as_str() != own_group {
                    self.security_group(project, g, &field("remote_group"))
                        .await?;
                }
                Some(name)
            }
        };
        let remote_cidr = match (&r.remote_cidr, &remote_group) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    &field("remote_cidr"),
                    "a rule names its other side by CIDR or by group, not both",
                ));
            }
            (Some(c), None) => {
                let net: IpNet = c.trim().parse().map_err(|_| {
                    ApiError::invalid(
                        &field("remote_cidr"),
                        format!("{c:?} is not a CIDR such as 192.0.2.0/24 or 2001:db8::/32"),
                    )
                })?;
                if net.network() != net.addr() {
                    return Err(ApiError::invalid(
                        &field("remote_cidr"),
                        format!("{c} has host bits set; the network is {}", net.trunc()),
                    ));
                }
                Some(net.to_string())
            }
            // Anywhere, of either address family.
            (None, None) | (None, Some(_)) => None,
        };
        Ok(SecurityRule {
            id: new_rule_id(),
            direction,
            protocol,
            port_min,
            port_max,
            remote_cidr,
            remote_group,
        })
    }

    /// Reads a security group of a project.
    pub async fn security_group(
        &self,
        project: &str,
        name: &str,
        field: &str,
    ) -> Result<Versioned<SecurityGroup>, ApiError> {
        let name = check_name(field, name)?;
        self.repo
            .get(&keys::security_group(project, name.as_str()))
            .await?
            .ok_or_else(|| ApiError::not_found("security group", &name).with_field(field))
    }

    /// Creates a security group.
    pub async fn create_security_group(
        &self,
        req: SecurityGroupCreate,
    ) -> Result<SecurityGroup, ApiError> {
        let name = check_name("name", &req.name)?;
        let project = req.project.as_deref().unwrap_or(DEFAULT_PROJECT);
        let p = self.project(project, "project").await?;
        if p.value.deleting {
            return Err(
                ApiError::conflict(format!("project \"{project}\" is being deleted"))
                    .with_field("project"),
            );
        }
        let rules = match &req.rules {
            None => vec![allow_all_outbound()],
            Some(rs) => {
                if rs.len() > MAX_RULES {
                    return Err(ApiError::invalid(
                        "rules",
                        format!("a group has at most {MAX_RULES} rules"),
                    ));
                }
                let mut out = Vec::with_capacity(rs.len());
                for (i, r) in rs.iter().enumerate() {
                    out.push(
                        self.check_rule(project, name.as_str(), &format!("rules[{i}]."), r)
                            .await?,
                    );
                }
                out
            }
        };
        let group = SecurityGroup {
            id: SecurityGroupId::new(),
            name: name.clone(),
            project: p.value.name.clone(),
            rules,
            created_at: chrono::Utc::now(),
        };
        match self
            .repo
            .create(&keys::security_group(project, name.as_str()), &group)
            .await?
        {
            Some(_) => Ok(group),
            None => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!(
                    "a security group named \"{name}\" already exists in project \"{project}\""
                ),
            )
            .with_field("name")),
        }
    }

    /// Shows a security group.
    pub async fn get_security_group(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<SecurityGroup, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        Ok(self.security_group(project, name, "name").await?.value)
    }

    /// Lists a project's security groups.
    pub async fn list_security_groups(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<SecurityGroup>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::security_groups_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<SecurityGroup>(&prefix, start.as_deref(), limit)
            .await?;
        let items: Vec<SecurityGroup> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|g| g.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Adds a rule to a group.
    pub async fn add_security_rule(
        &self,
        project: Option<&str>,
        group: &str,
        req: SecurityRuleCreate,
    ) -> Result<SecurityRule, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        self.security_group(project, group, "name").await?;
        let rule = self.check_rule(project, group, "", &req).await?;
        let added = rule.clone();
        self.repo
            .update::<SecurityGroup, _>(&keys::security_group(project, group), |g| {
                if g.rules.len() >= MAX_RULES {
                    return Err(ApiError::conflict(format!(
                        "security group \"{group}\" already has {MAX_RULES} rules"
                    )));
                }
                if g.rules.iter().any(|r| same_rule(r, &added)) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        "the group already has this rule",
                    ));
                }
                g.rules.push(added.clone());
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("security group", group).with_field("name"))?;
        Ok(rule)
    }

    /// Removes a rule from a group.
    pub async fn delete_security_rule(
        &self,
        project: Option<&str>,
        group: &str,
        rule: &str,
    ) -> Result<(), ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        self.security_group(project, group, "name").await?;
        self.repo
            .update::<SecurityGroup, _>(&keys::security_group(project, group), |g| {
                let before = g.rules.len();
                g.rules.retain(|r| r.id != rule);
                if g.rules.len() == before {
                    return Err(ApiError::not_found("rule", rule).with_field("rule"));
                }
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("security group", group).with_field("name"))?;
        Ok(())
    }

    /// Deletes a group no NIC uses and no other group's rule names.
    pub async fn delete_security_group(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let g = self.security_group(project, name, "name").await?;
        let (vms, _, _) = self
            .repo
            .list::<Vm>(&keys::vms_of(project), None, usize::MAX)
            .await?;
        if let Some(vm) = vms.iter().find(|v| {
            v.value
                .spec
                .nics
                .iter()
                .any(|n| n.security_groups.contains(&g.value.name))
        }) {
            return Err(ApiError::conflict(format!(
                "security group \"{name}\" is used by VM \"{}\"",
                vm.value.name
            ))
            .with_field("name"));
        }
        let (groups, _, _) = self
            .repo
            .list::<SecurityGroup>(&keys::security_groups_of(project), None, usize::MAX)
            .await?;
        let gname: Name = g.value.name.clone();
        if let Some(other) = groups.iter().find(|o| {
            o.value.name != gname
                && o.value
                    .rules
                    .iter()
                    .any(|r| r.remote_group.as_ref() == Some(&gname))
        }) {
            return Err(ApiError::conflict(format!(
                "security group \"{name}\" is named by a rule of \"{}\"",
                other.value.name
            ))
            .with_field("name"));
        }
        let r = self
            .repo
            .txn(
                panal_store::Txn::new()
                    .when(panal_store::Compare::unchanged(
                        &keys::security_group(project, name),
                        g.mod_revision,
                    ))
                    .and_then(panal_store::Op::delete(&keys::security_group(
                        project, name,
                    ))),
            )
            .await?;
        if !r.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the security group changed meanwhile; retry",
            ));
        }
        Ok(())
    }
}

/// Two rules that allow the same flows (ids aside).
fn same_rule(a: &SecurityRule, b: &SecurityRule) -> bool {
    a.direction == b.direction
        && a.protocol == b.protocol
        && a.port_min == b.port_min
        && a.port_max == b.port_max
        && a.remote_cidr == b.remote_cidr
        && a.remote_group == b.remote_group
}
