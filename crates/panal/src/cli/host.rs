//! `panal host ...`.

use super::api_err;
use super::output::{Format, print, print_fields};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::host::Host;
use panal_types::size::format_size;
use std::time::Duration;

fn state_line(format: Format, h: &Host) -> Result<()> {
    print(format, h, || {
        vec![
            vec!["NAME".into(), "STATE".into(), "VMS".into()],
            vec![
                h.name.to_string(),
                h.state.as_str().to_owned(),
                h.allocation.vms.to_string(),
            ],
        ]
    })
}

/// Host commands.
#[derive(Subcommand, Debug)]
pub enum HostCommand {
    /// List hosts.
    List,
    /// Show a host with its inventory and allocation.
    Show(NameArg),
    /// Manage the join tokens with which new hosts join.
    #[command(subcommand)]
    Token(super::host_token::TokenCommand),
    /// Stop placing new VMs on a host (its VMs stay).
    Cordon(NameArg),
    /// Make a host schedulable again (cancels a drain in progress); --move-back live-migrates
    /// back the VMs a drain moved off it.
    Uncordon(UncordonArgs),
    /// Move every VM off a host, then put it in maintenance: running VMs live-migrate (a few at
    /// a time), stopped ones are placed elsewhere. Fails, moving nothing more, if a VM fits on
    /// no other host, or (without --cold) if a running VM cannot move live.
    Drain(DrainArgs),
}

/// Arguments of `host drain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// Host name.
    pub name: String,
    /// Stop the running VMs that cannot move live and start them on another host.
    #[arg(long)]
    pub cold: bool,
    /// Start the drain and return at once (follow it with `panal operation show ID`).
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the drain goes on).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub timeout: u64,
}

/// Arguments of `host uncordon`.
#[derive(Args, Debug)]
pub struct UncordonArgs {
    /// Host name.
    pub name: String,
    /// Live-migrate back the running VMs a drain moved off this host, and wait for them.
    #[arg(long)]
    pub move_back: bool,
    /// Give up waiting after this many seconds (the migrations go on).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub timeout: u64,
}

/// A host name.
#[derive(Args, Debug)]
pub struct NameArg {
    /// Host name.
    pub name: String,
}

/// Runs a host command.
pub async fn run(client: &Client, format: Format, cmd: &HostCommand) -> Result<()> {
    match cmd {
        HostCommand::List => {
            let all =
                panal_client::all_pages(|t| async move { client.list_hosts(t.as_deref()).await })
                    .await
                    .map_err(api_err)?;
            print(format, &all, || {
                let mut rows = vec![
                    [
                        "NAME",
                        "STATE",
                        "CPUS",
                        "MEMORY",
                        "VMS",
                        "ALLOCATED",
                        "HYPERVISORS",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(all.iter().map(|h| {
                    let hv: Vec<String> = h
                        .inventory
                        .hypervisors
                        .iter()
                        .filter(|d| d.available)
                        .map(|d| format!("{}({:?})", d.kind.as_str(), d.accelerator).to_lowercase())
                        .collect();
                    vec![
                        h.name.to_string(),
                        h.state.as_str().to_owned(),
                        h.inventory.cpus.to_string(),
                        format_size(h.inventory.memory_bytes),
                        h.allocation.vms.to_string(),
                        format!(
                            "{} vCPU, {}",
                            h.allocation.vcpus,
                            format_size(h.allocation.memory_bytes)
                        ),
                        hv.join(","),
                    ]
                }));
                rows
            })
        }
        HostCommand::Token(c) => super::host_token::run(client, format, c).await,
        HostCommand::Show(n) => {
            let h = client.host(&n.name).await.map_err(api_err)?;
            print(format, &h, Vec::new)?;
            if format == Format::Table {
                print_fields(&[
                    ("Name", h.name.to_string()),
                    ("State", h.state.as_str().to_owned()),
                    ("Mode", h.mode.as_str().to_owned()),
                    (
                        "CPUs",
                        format!("{} ({})", h.inventory.cpus, h.inventory.cpu_model),
                    ),
                    ("Memory", format_size(h.inventory.memory_bytes)),
                    (
                        "Allocated",
                        format!(
                            "{} VMs, {} vCPU, {}",
                            h.allocation.vms,
                            h.allocation.vcpus,
                            format_size(h.allocation.memory_bytes)
                        ),
                    ),
                    ("Last seen", h.last_seen.to_rfc3339()),
                ]);
                println!("Storage pools:");
                for p in &h.inventory.storage {
                    println!(
                        "  {:<10} {}  {} free of {}{}",
                        p.name,
                        p.path,
                        format_size(p.free_bytes),
                        format_size(p.total_bytes),
                        if p.shared { "  (shared)" } else { "" }
                    );
                }
                println!("CPU flags: {}", h.inventory.cpu_flags.len());
                println!("Hypervisors:");
                for d in &h.inventory.hypervisors {
                    println!(
                        "  {:<6} {:<9} {:<5} {}  [{}]",
                        d.kind.as_str(),
                        if d.available { "available" } else { "missing" },
                        format!("{:?}", d.accelerator).to_lowercase(),
                        d.detail,
                        d.capabilities.join(",")
                    );
                }
            }
            Ok(())
        }
        HostCommand::Cordon(n) => {
            let h = client.cordon_host(&n.name).await.map_err(api_err)?;
            state_line(format, &h)
        }
        HostCommand::Uncordon(n) => {
            let h = client.uncordon_host(&n.name).await.map_err(api_err)?;
            if n.move_back {
                let back = client.move_back(&n.name).await.map_err(api_err)?;
                for s in &back.skipped {
                    eprintln!("stays: {s}");
                }
                let mut failed = 0;
                for op in &back.migrations {
                    eprintln!("moving {} back to {}", op.target.name, n.name);
                    match super::wait::follow(client, op, Duration::from_secs(n.timeout)).await {
                        Ok(done) => eprintln!("{}: {}", op.target.name, done.progress.message),
                        Err(e) => {
                            failed += 1;
                            eprintln!("{}: {e}", op.target.name);
                        }
                    }
                }
                if failed > 0 {
                    anyhow::bail!("{failed} VM(s) could not move back to {}", n.name);
                }
            }
            state_line(format, &h)
        }
        HostCommand::Drain(d) => {
            let a = client.drain_host(&d.name, d.cold).await.map_err(api_err)?;
            if d.no_wait {
                eprintln!("host_drain {}: operation {}", a.host.name, a.operation.id);
                return state_line(format, &a.host);
            }
            let op =
                super::wait::follow(client, &a.operation, Duration::from_secs(d.timeout)).await?;
            eprintln!("{}", op.progress.message);
            let h = client.host(&d.name).await.map_err(api_err)?;
            state_line(format, &h)
        }
    }
}
