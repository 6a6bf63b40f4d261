//! `panal host token ...`: join tokens for new hosts.

use super::api_err;
use super::output::{Format, print};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::join::JoinTokenCreate;

/// Join-token commands.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a single-use join token and print the command that joins a host with it.
    Create(CreateArgs),
    /// List join tokens (valid, used, expired, revoked).
    List,
    /// Revoke a join token.
    Revoke(IdArg),
}

/// Arguments of `panal host token create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Lifetime: seconds, or with a unit (`30m`, `2h`, `1d`; 1 minute to 7 days).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: u64,
    /// Admit only this host name (needed to re-join a host that has joined before).
    #[arg(long)]
    pub host: Option<String>,
    /// Free text.
    #[arg(long)]
    pub description: Option<String>,
}

/// A join-token id.
#[derive(Args, Debug)]
pub struct IdArg {
    /// Token id (the part before the first dot).
    pub id: String,
}

fn parse_ttl(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 3600, 30m, 2h, 1d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Runs a join-token command.
pub async fn run(client: &Client, format: Format, cmd: &TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let created = client
                .create_join_token(&JoinTokenCreate {
                    ttl_seconds: Some(a.ttl),
                    host: a.host.clone(),
                    description: a.description.clone(),
                })
                .await
                .map_err(api_err)?;
            print(format, &created, Vec::new)?;
            if format == Format::Table {
                println!(
                    "Token {} (expires {}):",
                    created.record.id,
                    created.record.expires_at.to_rfc3339()
                );
                println!("  {}", created.token);
                println!("Join a host with:");
                println!(
                    "  panal agent --data-dir /var/lib/panal-agent --join https://CONTROL-PLANE:7181 --token {}",
                    created.token
                );
            }
            Ok(())
        }
        TokenCommand::List => {
            let all =
                panal_client::all_pages(
                    |t| async move { client.list_join_tokens(t.as_deref()).await },
                )
                .await
                .map_err(api_err)?;
            print(format, &all, || {
                let mut rows = vec![
                    ["ID", "STATE", "HOST", "EXPIRES", "USED BY", "DESCRIPTION"]
                        .map(String::from)
                        .to_vec(),
                ];
                rows.extend(all.iter().map(|t| {
                    vec![
                        t.id.clone(),
                        format!("{:?}", t.state).to_lowercase(),
                        t.host.as_ref().map(|h| h.to_string()).unwrap_or_default(),
                        t.expires_at.to_rfc3339(),
                        t.used_by
                            .as_ref()
                            .map(|h| h.to_string())
                            .unwrap_or_default(),
                        t.description.clone(),
                    ]
                }));
                rows
            })
        }
        TokenCommand::Revoke(i) => {
            let t = client.revoke_join_token(&i.id).await.map_err(api_err)?;
            print(format, &t, Vec::new)?;
            if format == Format::Table {
                println!(
                    "Join token {} is {}.",
                    t.id,
                    format!("{:?}", t.state).to_lowercase()
                );
            }
            Ok(())
        }
    }
}
