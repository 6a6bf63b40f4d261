//! `panal network ...` and `panal security-group ...`: virtual networks of a project and the
//! stateful firewall rules of NICs; and the `--nic` syntax of `vm create`.

use super::api_err;
use super::output::{Format, print, print_fields};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::network::{
    Network, NetworkCreate, NicRequest, SecurityGroup, SecurityGroupCreate, SecurityRule,
    SecurityRuleCreate,
};

/// Network commands.
#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network (a VXLAN overlay spanning the hosts that run its VMs).
    #[command(
        after_help = "Examples:\n  panal network create lan --cidr 10.0.0.0/24\n  panal network create dual --cidr 10.2.0.0/24 --ipv6-cidr auto\n  panal network create db --cidr 10.1.0.0/24 --gateway none --dns 10.1.0.2 --mtu 1400"
    )]
    Create(NetworkCreateArgs),
    /// List networks.
    List(ProjectArg),
    /// Show a network.
    Show(Target),
    /// Show the addresses in use and their VMs.
    Ports(Target),
    /// Delete a network without NICs.
    Delete(Target),
}

/// Security-group commands.
#[derive(Subcommand, Debug)]
pub enum SecurityGroupCommand {
    /// Create a group (allowing all outbound traffic unless --no-rules).
    Create(GroupCreateArgs),
    /// List groups.
    List(ProjectArg),
    /// Show a group and its rules.
    Show(Target),
    /// Delete a group that no NIC uses.
    Delete(Target),
    /// Add or remove rules.
    #[command(subcommand)]
    Rule(RuleCommand),
}

/// Rule commands.
#[derive(Subcommand, Debug)]
pub enum RuleCommand {
    /// Allow new flows (replies are always allowed).
    #[command(
        after_help = "Examples:\n  panal security-group rule add web --direction ingress --protocol tcp --port 80\n  panal security-group rule add web --direction ingress --protocol tcp --port 8000-8100 --remote-cidr 10.0.0.0/8\n  panal security-group rule add db --direction ingress --protocol tcp --port 5432 --remote-group web"
    )]
    Add(RuleAddArgs),
    /// Remove a rule by its id.
    Delete(RuleDeleteArgs),
}

/// NIC commands of a VM.
#[derive(Subcommand, Debug)]
pub enum NicCommand {
    /// Plug a NIC into a VM.
    #[command(
        after_help = "Examples:\n  panal vm nic add web --nic network=lan,sg=web\n  panal vm nic add db --nic network=back,ip=10.1.0.10"
    )]
    Add(NicAddArgs),
    /// Unplug a NIC (by its id, see `vm show`); its address is released.
    Remove(NicRemoveArgs),
}

/// Arguments of `vm nic add`.
#[derive(Args, Debug)]
pub struct NicAddArgs {
    /// The VM.
    vm: String,
    /// The NIC: network=NAME[,ip=ADDR][,mac=MAC][,sg=GROUP+GROUP].
    #[arg(long, value_parser = parse_nic)]
    nic: NicRequest,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
    /// Return at once instead of waiting for the plug.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `vm nic remove`.
#[derive(Args, Debug)]
pub struct NicRemoveArgs {
    /// The VM.
    vm: String,
    /// The NIC's id.
    nic: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
    /// Return at once instead of waiting for the unplug.
    #[arg(long)]
    no_wait: bool,
}

/// Runs a NIC command.
pub async fn run_nic(client: &Client, cmd: &NicCommand) -> Result<()> {
    let (accepted, no_wait) = match cmd {
        NicCommand::Add(a) => (
            client
                .add_nic(a.project.as_deref(), &a.vm, &a.nic)
                .await
                .map_err(api_err)?,
            a.no_wait,
        ),
        NicCommand::Remove(a) => (
            client
                .remove_nic(a.project.as_deref(), &a.vm, &a.nic)
                .await
                .map_err(api_err)?,
            a.no_wait,
        ),
    };
    if let NicCommand::Add(_) = cmd
        && let Some(n) = accepted.vm.spec.nics.last()
    {
        let v6 = n.ipv6.map(|a| format!(" {a}")).unwrap_or_default();
        println!("NIC {} on {}: {}{v6} {}", n.id, n.network, n.ip, n.mac);
    }
    if no_wait {
        eprintln!("operation {}", accepted.operation.id);
        return Ok(());
    }
    let done = super::wait::follow(
        client,
        &accepted.operation,
        std::time::Duration::from_secs(300),
    )
    .await?;
    eprintln!("{}: {}", done.kind.as_str(), done.progress.message);
    Ok(())
}

/// Selects a project.
#[derive(Args, Debug)]
pub struct ProjectArg {
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Names a network or group.
#[derive(Args, Debug)]
pub struct Target {
    /// Name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Arguments of `network create`.
#[derive(Args, Debug)]
pub struct NetworkCreateArgs {
    #[command(flatten)]
    target: Target,
    /// IPv4 subnet, e.g. 10.0.0.0/24.
    #[arg(long)]
    cidr: String,
    /// IPv6 as well: a /64 such as fd12:3456:789a:1::/64, or `auto` for a random unique local
    /// one. Guests configure their address by SLAAC; IPv6 stays inside the network.
    #[arg(long)]
    ipv6_cidr: Option<String>,
    /// Gateway address handed out by DHCP (default: the first address; `none` for none).
    #[arg(long)]
    gateway: Option<String>,
    /// DNS server handed out by DHCP (repeatable).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// MTU (default 1450).
    #[arg(long)]
    mtu: Option<u32>,
    /// Let guests reach beyond the network through their host's uplink (masqueraded).
    #[arg(long)]
    outbound_nat: bool,
    /// An external network: a pool of floating addresses on the hosts' uplink segment (no
    /// VXLAN, no NICs).
    #[arg(long)]
    external: bool,
}

/// Arguments of `security-group create`.
#[derive(Args, Debug)]
pub struct GroupCreateArgs {
    #[command(flatten)]
    target: Target,
    /// Start without any rule (not even outbound).
    #[arg(long)]
    no_rules: bool,
}

/// Arguments of `security-group rule add`.
#[derive(Args, Debug)]
pub struct RuleAddArgs {
    /// The group.
    group: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
    /// ingress (towards the VM) or egress.
    #[arg(long)]
    direction: String,
    /// any, tcp, udp, icmp or a protocol number.
    #[arg(long)]
    protocol: Option<String>,
    /// A port or a range (tcp and udp), e.g. 80 or 8000-8100.
    #[arg(long, value_parser = parse_ports)]
    port: Option<(u32, u32)>,
    /// The other side as a CIDR, IPv4 or IPv6 (default: anywhere, both families).
    #[arg(long, conflicts_with = "remote_group")]
    remote_cidr: Option<String>,
    /// The other side as the NICs of a group.
    #[arg(long)]
    remote_group: Option<String>,
}

/// Arguments of `security-group rule delete`.
#[derive(Args, Debug)]
pub struct RuleDeleteArgs {
    /// The group.
    group: String,
    /// The rule's id (see `security-group show`).
    rule: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
}

fn parse_ports(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a port or a range such as 8000-8100");
    match s.split_once('-') {
        Some((a, b)) => Ok((
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        )),
        None => {
            let p = s.trim().parse().map_err(|_| bad())?;
            Ok((p, p))
        }
    }
}

/// Parses `--nic network=NAME[,ip=ADDR][,mac=MAC][,sg=GROUP+GROUP]` (a bare `NAME` is the
/// network).
pub fn parse_nic(s: &str) -> Result<NicRequest, String> {
    let mut nic = NicRequest::default();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some(("network", v)) => nic.network = v.into(),
            Some(("ip", v)) => nic.ip = Some(v.into()),
            Some(("mac", v)) => nic.mac = Some(v.into()),
            Some(("sg" | "security-groups", v)) => {
                nic.security_groups = v.split('+').map(str::to_owned).collect()
            }
            None if i == 0 => nic.network = part.into(),
            _ => {
                return Err(format!(
                    "{part:?}: expected network=NAME, ip=ADDR, mac=MAC or sg=GROUP[+GROUP]"
                ));
            }
        }
    }
    if nic.network.is_empty() {
        return Err("a NIC needs network=NAME".into());
    }
    Ok(nic)
}

fn network_row(n: &Network) -> Vec<String> {
    vec![
        n.name.to_string(),
        n.cidr.clone(),
        n.gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into()),
        n.mtu.to_string(),
        n.vni.to_string(),
    ]
}

fn rule_row(r: &SecurityRule) -> Vec<String> {
    let ports = match (r.port_min, r.port_max) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}-{b}"),
        _ => "any".into(),
    };
    let remote = r
        .remote_cidr
        .clone()
        .or(r.remote_group.as_ref().map(|g| format!("group {g}")))
        .unwrap_or_else(|| "anywhere".into());
    vec![
        r.id.clone(),
        format!("{:?}", r.direction).to_lowercase(),
        r.protocol.clone(),
        ports,
        remote,
    ]
}

/// Runs a network command.
pub async fn run(client: &Client, format: Format, cmd: &NetworkCommand) -> Result<()> {
    let header = || {
        ["NAME", "CIDR", "GATEWAY", "MTU", "VNI"]
            .map(String::from)
            .to_vec()
    };
    match cmd {
        NetworkCommand::Create(a) => {
            let n = client
                .create_network(&NetworkCreate {
                    name: a.target.name.clone(),
                    project: a.target.project.clone(),
                    cidr: a.cidr.clone(),
                    ipv6_cidr: a.ipv6_cidr.clone(),
                    gateway: a.gateway.clone(),
                    dns: a.dns.clone(),
                    mtu: a.mtu,
                    outbound_nat: a.outbound_nat.then_some(true),
                    external: a.external.then_some(true),
                })
                .await
                .map_err(api_err)?;
            print(format, &n, || vec![header(), network_row(&n)])
        }
        NetworkCommand::List(a) => {
            let all = panal_client::all_pages(|t| async move {
                client
                    .list_networks(a.project.as_deref(), t.as_deref())
                    .await
            })
            .await
            .map_err(api_err)?;
            print(format, &all, || {
                std::iter::once(header())
                    .chain(all.iter().map(network_row))
                    .collect()
            })
        }
        NetworkCommand::Show(t) => {
            let n = client
                .network(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            if format != Format::Table {
                return print(format, &n, Vec::new);
            }
            let dns: Vec<String> = n.dns.iter().map(|d| d.to_string()).collect();
            print_fields(&[
                ("name", n.name.to_string()),
                ("project", n.project.to_string()),
                ("cidr", n.cidr.clone()),
                (
                    "ipv6 cidr",
                    n.ipv6_cidr.clone().unwrap_or_else(|| "-".into()),
                ),
                (
                    "gateway",
                    n.gateway
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                ),
                ("dns", dns.join(", ")),
                ("mtu", n.mtu.to_string()),
                ("vni", n.vni.to_string()),
                ("outbound NAT", n.outbound_nat.to_string()),
                ("created", n.created_at.to_rfc3339()),
            ]);
            Ok(())
        }
        NetworkCommand::Ports(t) => {
            let ports = client
                .network_ports(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            print(format, &ports, || {
                std::iter::once(["IP", "VM", "NIC"].map(String::from).to_vec())
                    .chain(
                        ports
                            .iter()
                            .map(|p| vec![p.ip.to_string(), p.vm.to_string(), p.nic.clone()]),
                    )
                    .collect()
            })
        }
        NetworkCommand::Delete(t) => {
            client
                .delete_network(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            println!("network {} deleted", t.name);
            Ok(())
        }
    }
}

/// Runs a security-group command.
pub async fn run_groups(client: &Client, format: Format, cmd: &SecurityGroupCommand) -> Result<()> {
    let rule_header = || {
        ["ID", "DIRECTION", "PROTOCOL", "PORTS", "REMOTE"]
            .map(String::from)
            .to_vec()
    };
    let show = |g: &SecurityGroup| -> Result<()> {
        print(format, g, || {
            std::iter::once(rule_header())
                .chain(g.rules.iter().map(rule_row))
                .collect()
        })
    };
    match cmd {
        SecurityGroupCommand::Create(a) => {
            let g = client
                .create_security_group(&SecurityGroupCreate {
                    name: a.target.name.clone(),
                    project: a.target.project.clone(),
                    rules: a.no_rules.then(Vec::new),
                })
                .await
                .map_err(api_err)?;
            show(&g)
        }
        SecurityGroupCommand::List(a) => {
            let all = panal_client::all_pages(|t| async move {
                client
                    .list_security_groups(a.project.as_deref(), t.as_deref())
                    .await
            })
            .await
            .map_err(api_err)?;
            print(format, &all, || {
                std::iter::once(vec!["NAME".into(), "RULES".into()])
                    .chain(
                        all.iter()
                            .map(|g| vec![g.name.to_string(), g.rules.len().to_string()]),
                    )
                    .collect()
            })
        }
        SecurityGroupCommand::Show(t) => {
            let g = client
                .security_group(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            show(&g)
        }
        SecurityGroupCommand::Delete(t) => {
            client
                .delete_security_group(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            println!("security group {} deleted", t.name);
            Ok(())
        }
        SecurityGroupCommand::Rule(RuleCommand::Add(a)) => {
            let r = client
                .add_security_rule(
                    a.project.as_deref(),
                    &a.group,
                    &SecurityRuleCreate {
                        direction: a.direction.clone(),
                        protocol: a.protocol.clone(),
                        port_min: a.port.map(|p| p.0),
                        port_max: a.port.map(|p| p.1),
                        remote_cidr: a.remote_cidr.clone(),
                        remote_group: a.remote_group.clone(),
                    },
                )
                .await
                .map_err(api_err)?;
            print(format, &r, || vec![rule_header(), rule_row(&r)])
        }
        SecurityGroupCommand::Rule(RuleCommand::Delete(a)) => {
            client
                .delete_security_rule(a.project.as_deref(), &a.group, &a.rule)
                .await
                .map_err(api_err)?;
            println!("rule {} removed from {}", a.rule, a.group);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_syntax() {
        let n = parse_nic("network=lan,ip=10.0.0.5,sg=web+ssh").unwrap();
        assert_eq!(n.network, "lan");
        assert_eq!(n.ip.as_deref(), Some("10.0.0.5"));
        assert_eq!(n.security_groups, vec!["web", "ssh"]);
        assert_eq!(parse_nic("lan").unwrap().network, "lan");
        assert!(parse_nic("ip=10.0.0.5").is_err());
        assert!(parse_nic("network=lan,colour=red").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_ports("80").unwrap(), (80, 80));
        assert_eq!(parse_ports("8000-8100").unwrap(), (8000, 8100));
        assert!(parse_ports("http").is_err());
    }
}
