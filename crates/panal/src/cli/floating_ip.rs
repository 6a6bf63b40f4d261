//! `panal floating-ip ...`: addresses of an external network mapped to a VM's NIC.

use super::api_err;
use super::network::ProjectArg;
use super::output::{Format, print};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::network::{FloatingIp, FloatingIpAssociate, FloatingIpCreate};

/// Floating-address commands.
#[derive(Subcommand, Debug)]
pub enum FloatingIpCommand {
    /// Allocate an address from an external network.
    #[command(
        after_help = "Examples:\n  panal network create ext --external --cidr 192.0.2.0/24\n  panal floating-ip create --network ext\n  panal floating-ip create --network ext --address 192.0.2.10"
    )]
    Create(CreateArgs),
    /// List floating addresses.
    List(ProjectArg),
    /// Show a floating address.
    Show(Address),
    /// Map an address to a VM's NIC (its network needs outbound NAT).
    #[command(after_help = "Examples:\n  panal floating-ip associate 192.0.2.10 --vm web")]
    Associate(AssociateArgs),
    /// Unmap an address.
    Disassociate(Address),
    /// Release an address.
    Delete(Address),
}

/// Arguments of `floating-ip create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The external network.
    #[arg(long)]
    network: String,
    /// A given address (default: the lowest free one).
    #[arg(long)]
    address: Option<String>,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
}

/// Names a floating address.
#[derive(Args, Debug)]
pub struct Address {
    /// The address.
    address: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    project: Option<String>,
}

/// Arguments of `floating-ip associate`.
#[derive(Args, Debug)]
pub struct AssociateArgs {
    #[command(flatten)]
    target: Address,
    /// The VM.
    #[arg(long)]
    vm: String,
    /// The NIC (default: the VM's first NIC on a network with outbound NAT).
    #[arg(long)]
    nic: Option<String>,
}

fn header() -> Vec<String> {
    ["ADDRESS", "NETWORK", "VM", "NIC"]
        .map(String::from)
        .to_vec()
}

fn row(f: &FloatingIp) -> Vec<String> {
    vec![
        f.address.to_string(),
        f.network.to_string(),
        f.vm.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        f.nic.clone().unwrap_or_default(),
    ]
}

/// Runs a floating-address command.
pub async fn run(client: &Client, format: Format, cmd: &FloatingIpCommand) -> Result<()> {
    let show = |f: &FloatingIp| print(format, f, || vec![header(), row(f)]);
    match cmd {
        FloatingIpCommand::Create(a) => {
            let f = client
                .create_floating_ip(&FloatingIpCreate {
                    network: a.network.clone(),
                    project: a.project.clone(),
                    address: a.address.clone(),
                })
                .await
                .map_err(api_err)?;
            show(&f)
        }
        FloatingIpCommand::List(a) => {
            let all = panal_client::all_pages(|t| async move {
                client
                    .list_floating_ips(a.project.as_deref(), t.as_deref())
                    .await
            })
            .await
            .map_err(api_err)?;
            print(format, &all, || {
                std::iter::once(header())
                    .chain(all.iter().map(row))
                    .collect()
            })
        }
        FloatingIpCommand::Show(t) => {
            let f = client
                .floating_ip(t.project.as_deref(), &t.address)
                .await
                .map_err(api_err)?;
            show(&f)
        }
        FloatingIpCommand::Associate(a) => {
            let f = client
                .associate_floating_ip(
                    a.target.project.as_deref(),
                    &a.target.address,
                    &FloatingIpAssociate {
                        vm: a.vm.clone(),
                        nic: a.nic.clone(),
                    },
                )
                .await
                .map_err(api_err)?;
            show(&f)
        }
        FloatingIpCommand::Disassociate(t) => {
            let f = client
                .disassociate_floating_ip(t.project.as_deref(), &t.address)
                .await
                .map_err(api_err)?;
            show(&f)
        }
        FloatingIpCommand::Delete(t) => {
            client
                .delete_floating_ip(t.project.as_deref(), &t.address)
                .await
                .map_err(api_err)?;
            println!("floating address {} released", t.address);
            Ok(())
        }
    }
}
