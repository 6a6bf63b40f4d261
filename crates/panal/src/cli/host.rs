//! `panal host ...`.

use super::api_err;
use super::output::{Format, print, print_fields};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::size::format_size;

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
    }
}
