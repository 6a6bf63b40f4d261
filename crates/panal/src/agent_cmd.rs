//! `panal agent`: the host agent of a machine that joins a control plane elsewhere. The first
//! run joins with a token (`--join URL --token TOKEN`) and keeps the resulting identity in the
//! data directory; later runs start from that identity. VMs keep running when the agent stops
//! or the control plane is unreachable; the agent reconnects with back-off. Live migrations
//! between hosts are authenticated and encrypted with the identity's certificate
//! (`panal_agent::remote::migration_tunnel`).

use anyhow::{Context, Result, bail};
use clap::Args;
use panal_agent::inventory::PoolDir;
use panal_agent::remote::migration_tunnel::Migrations;
use panal_agent::remote::{AgentIdentity, RemoteImages, RemoteLink};
use panal_agent::{Agent, AgentConfig};
use panal_driver::DynDriver;
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_driver::qemu::{GuestImage, QemuConfig, QemuDriver};
use panal_types::Name;
use panal_types::vm::MachineProfile;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `panal agent`.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The control plane's agent endpoint to join, `https://HOST:PORT` (first run only).
    #[arg(long, value_name = "URL", requires = "token")]
    pub join: Option<String>,
    /// The join token from `panal host token create` (first run only).
    #[arg(
        long,
        env = "PANAL_JOIN_TOKEN",
        hide_env_values = true,
        requires = "join"
    )]
    pub token: Option<String>,
    /// Another control-plane replica's agent endpoint, `https://HOST:PORT` (repeatable): the
    /// agent moves to the next one when the one it uses is unreachable. Remembered; giving the
    /// flag again replaces the list.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// This host's name (default: the machine's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the agent keeps its identity, image cache and VM run directories.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// A label of this host, `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::up::parse_label)]
    pub labels: Vec<(String, String)>,
    /// This host's failure-domain zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// A storage pool besides `default` (`DIR/pools/default`): `NAME=PATH`, or
    /// `NAME=PATH,shared` for a directory mounted on several hosts (repeatable).
    #[arg(long = "pool", value_name = "NAME=PATH[,shared]", value_parser = parse_pool)]
    pub pools: Vec<PoolDir>,
    /// The address other hosts reach this host's VXLAN tunnels at (default: the address this
    /// host uses to reach the control plane).
    #[arg(long, value_name = "IPV4")]
    pub tunnel_address: Option<std::net::Ipv4Addr>,
    /// The address other hosts' agents send live migrations of VMs to this host to (default:
    /// the address this host uses to reach the control plane).
    #[arg(long, value_name = "IP")]
    pub migration_address: Option<std::net::IpAddr>,
    /// Seconds a live migration's pre-copy may go on without what is left to send falling by a
    /// tenth before it is given up (the VM stays where it runs).
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub migration_patience: u64,
    /// Prefix of the cgroup names of this agent's VMs: needed only when several agents share
    /// one machine (a VM migrating between two of them runs under both at once).
    #[arg(long, default_value = "", value_parser = parse_cgroup_prefix)]
    pub cgroup_prefix: String,
    /// Prefix of the network devices the agent owns (bridges, VXLAN devices, taps).
    #[arg(long, default_value = "pn", value_parser = parse_net_prefix)]
    pub net_prefix: String,
    /// Do not carry virtual networks here (VMs with NICs then cannot run on this host).
    #[arg(long)]
    pub no_networks: bool,
    /// Seconds between liveness heartbeats (keep it under a third of the control plane's host
    /// lease TTL).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub heartbeat: u64,
    /// Where the built-in guest was built; lets disk images boot with its kernel.
    #[arg(long, value_name = "DIR")]
    pub guest_dir: Option<PathBuf>,
    /// Offer only the simulated hypervisor, reporting this many CPUs and GiB of memory
    /// (`CPUS,GIB`), for control-plane tests.
    #[arg(long, value_name = "CPUS,GIB", value_parser = parse_fake)]
    pub fake: Option<(u32, u64)>,
}

pub(crate) fn parse_pool(s: &str) -> Result<PoolDir, String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=PATH[,shared]")?;
    let (path, shared) = match rest.strip_suffix(",shared") {
        Some(p) => (p, true),
        None => (rest, false),
    };
    Name::parse(name).map_err(|e| format!("pool name {name:?}: {e}"))?;
    if !path.starts_with('/') {
        return Err(format!("pool path {path:?} must be absolute"));
    }
    Ok(PoolDir {
        name: name.to_owned(),
        path: PathBuf::from(path),
        shared,
    })
}

fn parse_fake(s: &str) -> Result<(u32, u64), String> {
    let (c, m) = s.split_once(',').ok_or("expected CPUS,GIB, e.g. 16,64")?;
    let cpus: u32 = c.parse().map_err(|_| format!("{c:?} is not a CPU count"))?;
    let gib: u64 = m
        .parse()
        .map_err(|_| format!("{m:?} is not a number of GiB"))?;
    if cpus == 0 || gib == 0 {
        return Err("CPUs and memory must be above zero".into());
    }
    Ok((cpus, gib << 30))
}

/// The agent's identity: joined now with the token, or the one saved by an earlier join.
async fn identity(args: &AgentArgs) -> Result<AgentIdentity> {
    let dir = args.data_dir.join("identity");
    let saved = AgentIdentity::load(&dir).map_err(anyhow::Error::msg)?;
    match (saved, &args.join, &args.token) {
        (Some(id), None, _) => Ok(id),
        (Some(id), Some(_), _) => bail!(
            "this host already joined {} as \"{}\" (identity in {}); start it without --join, or remove that directory to join again",
            id.url,
            id.host,
            dir.display()
        ),
        (None, Some(url), Some(token)) => {
            let name = match &args.name {
                Some(n) => Name::parse(n).map_err(|e| anyhow::anyhow!("--name {n:?}: {e}"))?,
                None => panal::platform::local_host_name(),
            };
            let id = panal_agent::remote::join(url, token, &name)
                .await
                .map_err(anyhow::Error::msg)?;
            id.save(&dir).map_err(anyhow::Error::msg)?;
            println!("Joined {} as host \"{}\".", id.url, id.host);
            Ok(id)
        }
        (None, _, _) => bail!(
            "this host has not joined a control plane yet: run `panal agent --join https://HOST:PORT --token TOKEN --data-dir {}` (make a token with `panal host token create`)",
            args.data_dir.display()
        ),
    }
}

/// Runs the agent until Ctrl-C or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<()> {
    crate::up::init_logging();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let mut id = identity(&args).await?;
    if !args.servers.is_empty() {
        id.alternates = args
            .servers
            .iter()
            .map(|u| panal_agent::remote::normalize_url(u))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
        id.save(&args.data_dir.join("identity"))
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(n) = &args.name
        && n != id.host.as_str()
    {
        bail!(
            "--name {n} differs from the name this host joined with ({})",
            id.host
        );
    }
    let link = Arc::new(RemoteLink::new(&id).map_err(anyhow::Error::msg)?);
    let mut drivers: Vec<DynDriver> = Vec::new();
    let mut cfg = AgentConfig::new(id.host.clone());
    cfg.heartbeat = Duration::from_secs(args.heartbeat);
    cfg.labels = args.labels.iter().cloned().collect();
    cfg.zone = args.zone.clone();
    cfg.pools = vec![panal::platform::default_pool(&args.data_dir)?];
    for p in &args.pools {
        if cfg.pools.iter().any(|q| q.name == p.name) {
            bail!("storage pool {} is given twice", p.name);
        }
        std::fs::create_dir_all(&p.path)
            .with_context(|| format!("cannot create the storage pool {}", p.path.display()))?;
        cfg.pools.push(p.clone());
    }
    cfg.migration_patience = Duration::from_secs(args.migration_patience);
    if args.fake.is_none() {
        let address = match args.migration_address {
            Some(a) => a,
            None => local_address_towards(&id.endpoints())
                .context("pass --migration-address")?
                .into(),
        };
        // Migrations between hosts travel only through the agents' TLS tunnel, with this
        // host's certificate.
        cfg.migrations = Migrations::tunnel(address, &args.data_dir.join("migrations"), &id);
        match &cfg.migrations {
            Migrations::Refused { why, .. } => {
                tracing::warn!("live migrations to and from this host are refused: {why}");
            }
            m => tracing::info!(channel = ?m, "live migrations use the agents' TLS tunnel"),
        }
        // QEMU's own TLS credentials, which agents before the tunnel wrote: a copy of the
        // private key that nothing reads any more.
        let _ = std::fs::remove_dir_all(args.data_dir.join("migration-tls"));
    }
    if !args.no_networks && args.fake.is_none() {
        let tunnel_address = match args.tunnel_address {
            Some(a) => a,
            None => local_address_towards(&id.endpoints()).context("pass --tunnel-address")?,
        };
        cfg.network = Some(panal_agent::network::NetworkConfig {
            tunnel_address,
            prefix: args.net_prefix.clone(),
        });
    }
    if let Some((cpus, memory)) = args.fake {
        let world = FakeWorld::persistent(args.data_dir.join("fake-vms.json"));
        drivers.push(Arc::new(FakeDriver::new(world, FakeConfig::default())));
        cfg.capacity_override = Some((cpus, memory));
    } else {
        let mut qcfg = QemuConfig::new(args.data_dir.join("qemu"));
        qcfg.cgroup_prefix = args.cgroup_prefix.clone();
        if let Some(g) = args
            .guest_dir
            .as_deref()
            .and_then(|d| GuestImage::open(d).ok())
        {
            qcfg.probe_guest = Some(g.direct_kernel(MachineProfile::Microvm));
            qcfg.disk_boot_kernel = Some(g.direct_kernel(MachineProfile::Microvm));
        }
        drivers.push(Arc::new(QemuDriver::new(qcfg)));
    }
    let images = Arc::new(RemoteImages::new(
        link.clone(),
        args.data_dir.join("images"),
    ));
    let agent = Agent::new(cfg, drivers, link, images);
    println!(
        "Panal agent for host \"{}\" is running; control plane {}",
        id.host,
        id.endpoints().join(", ")
    );
    tokio::select! {
        () = agent.run() => {}
        () = crate::up::wait_for_signal() => println!("Stopping (VMs keep running)."),
    }
    Ok(())
}

fn parse_cgroup_prefix(s: &str) -> Result<String, String> {
    if s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: a cgroup prefix is at most 32 letters, digits, '-' or '_'"
        ))
    }
}

fn parse_net_prefix(s: &str) -> Result<String, String> {
    if (1..=4).contains(&s.len()) && s.chars().all(|c| c.is_ascii_lowercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?}: a device prefix is 1 to 4 lowercase letters (names are at most 15 characters)"
        ))
    }
}

/// The local IPv4 address this host uses to reach the first control-plane endpoint: the
/// natural tunnel and migration address (a UDP "connect" picks the route without sending
/// anything).
fn local_address_towards(endpoints: &[String]) -> Result<std::net::Ipv4Addr> {
    for e in endpoints {
        // `https://HOST:PORT[/...]`: the authority is all the routing needs.
        let rest = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:443")
        };
        let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(authority.as_str()) else {
            continue;
        };
        let Some(addr) = addrs.find(|a| a.is_ipv4()) else {
            continue;
        };
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        if sock.connect(addr).is_ok()
            && let Ok(std::net::SocketAddr::V4(local)) = sock.local_addr()
        {
            return Ok(*local.ip());
        }
    }
    bail!("cannot tell this host's address from the control plane's")
}
