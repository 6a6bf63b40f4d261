//! The command line: argument definitions and dispatch. Each resource has its own file; all of
//! them talk to the REST API through `panal-client`.

mod console;
mod floating_ip;
mod host;
mod host_token;
mod image;
pub(crate) mod network;
mod operation;
mod output;
mod project;
mod vm;
mod vm_migrate;
pub(crate) mod volume;
mod wait;

use crate::config;
use anyhow::{Result, anyhow};
use clap::{Args, CommandFactory, Parser, Subcommand};
use panal_client::Client;
use std::path::PathBuf;

pub use output::Format;

const EXAMPLES: &str = "\
Examples:
  panal up --data-dir /var/lib/panal          run the platform on this machine
  panal vm create web-1 --vcpus 2 --memory 1G --wait
  panal vm list -o json
  panal vm stop web-1 --wait
  panal completions bash > /etc/bash_completion.d/panal";

/// Panal: a distributed virtualization platform.
#[derive(Parser, Debug)]
#[command(name = "panal", version, about, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// Client configuration file (default: $PANAL_CONFIG, then ~/.config/panal/client.toml).
    #[arg(long, global = true, env = "PANAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API URL (overrides the configuration file).
    #[arg(long, global = true, env = "PANAL_API", value_name = "URL")]
    pub api: Option<String>,
    /// API token (overrides the configuration file).
    #[arg(
        long,
        global = true,
        env = "PANAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Output format of reads.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the whole platform on this machine (control plane, agent, store) in the foreground.
    Up(crate::up::UpArgs),
    /// Run a control-plane replica (API + controllers while leading) on a shared store.
    Server(crate::server_cmd::ServerArgs),
    /// Run the host agent of a machine that joins a control plane elsewhere.
    Agent(crate::agent_cmd::AgentArgs),
    /// Administer the state store directly (export, import).
    #[command(subcommand)]
    Admin(crate::admin::AdminCommand),
    /// Show the control plane's replicas and leader.
    Cluster,
    /// Manage virtual machines.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Manage images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage volumes (disks in storage pools).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Manage virtual networks.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Manage security groups (stateful firewall rules of NICs).
    #[command(subcommand)]
    SecurityGroup(network::SecurityGroupCommand),
    /// Manage floating addresses (external addresses mapped to NICs).
    #[command(subcommand)]
    FloatingIp(floating_ip::FloatingIpCommand),
    /// Inspect hosts.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// Manage projects.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Inspect long-running operations.
    #[command(subcommand, alias = "op")]
    Operation(operation::OperationCommand),
    /// Print shell completions.
    Completions(CompletionArgs),
    /// Print the OpenAPI document this binary serves.
    Openapi,
}

/// Arguments of `completions`.
#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// Shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Up(args) => crate::up::run(args.clone()).await,
        Command::Server(args) => crate::server_cmd::run(args.clone()).await,
        Command::Agent(args) => crate::agent_cmd::run(args.clone()).await,
        Command::Admin(c) => crate::admin::run(c).await,
        Command::Cluster => {
            let status = client(&cli)?.cluster().await.map_err(api_err)?;
            output::print(cli.output, &status, || {
                vec![
                    vec!["LEADER".into(), "API".into(), "SINCE".into()],
                    match &status.leader {
                        Some(l) => vec![l.replica.clone(), l.api_url.clone(), l.since.to_rfc3339()],
                        None => vec!["(none)".into(), "-".into(), "-".into()],
                    },
                ]
            })
        }
        Command::Completions(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "panal",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", panal_server::api::openapi().to_pretty_json()?);
            Ok(())
        }
        Command::Vm(c) => vm::run(&client(&cli)?, cli.output, c).await,
        Command::Image(c) => image::run(&client(&cli)?, cli.output, c).await,
        Command::Volume(c) => volume::run(&client(&cli)?, cli.output, c).await,
        Command::Network(c) => network::run(&client(&cli)?, cli.output, c).await,
        Command::SecurityGroup(c) => network::run_groups(&client(&cli)?, cli.output, c).await,
        Command::FloatingIp(c) => floating_ip::run(&client(&cli)?, cli.output, c).await,
        Command::Host(c) => host::run(&client(&cli)?, cli.output, c).await,
        Command::Project(c) => project::run(&client(&cli)?, cli.output, c).await,
        Command::Operation(c) => operation::run(&client(&cli)?, cli.output, c).await,
    }
}

fn client(cli: &Cli) -> Result<Client> {
    let file = match &cli.config {
        Some(p) => Some(config::load(p)?),
        None => match config::default_path() {
            Some(p) if p.exists() => Some(config::load(&p)?),
            _ => None,
        },
    };
    let api = cli
        .api
        .clone()
        .or_else(|| file.as_ref().map(|f| f.api_url.clone()));
    let token = cli
        .token
        .clone()
        .or_else(|| file.as_ref().map(|f| f.token.clone()));
    match (api, token) {
        (Some(api), Some(token)) => Ok(Client::new(&api, &token)),
        _ => Err(anyhow!(
            "no Panal API configured: run `panal up`, or pass --config FILE (or set PANAL_CONFIG), or --api and --token"
        )),
    }
}

/// Turns a client error into a CLI error with the API's message, field and code.
pub fn api_err(e: panal_client::ClientError) -> anyhow::Error {
    anyhow!("{e}")
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
