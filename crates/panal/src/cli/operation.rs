//! `panal operation ...`.

use super::output::{Format, print, print_fields};
use super::{api_err, wait};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::operation::Operation;
use std::time::Duration;

/// Operation commands.
#[derive(Subcommand, Debug)]
pub enum OperationCommand {
    /// List operations.
    List,
    /// Show an operation (optionally waiting for it to end).
    Show(ShowArgs),
}

/// Arguments of `operation show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Operation id.
    pub id: String,
    /// Wait until it ends, showing progress.
    #[arg(long)]
    pub wait: bool,
}

/// Runs an operation command.
pub async fn run(client: &Client, format: Format, cmd: &OperationCommand) -> Result<()> {
    match cmd {
        OperationCommand::List => {
            let mut all =
                panal_client::all_pages(
                    |t| async move { client.list_operations(t.as_deref()).await },
                )
                .await
                .map_err(api_err)?;
            all.sort_by_key(|o| o.created_at);
            print(format, &all, || {
                let mut rows = vec![
                    ["ID", "KIND", "TARGET", "STATE", "PROGRESS", "CREATED"]
                        .map(String::from)
                        .to_vec(),
                ];
                rows.extend(all.iter().map(|o| {
                    vec![
                        o.id.to_string(),
                        o.kind.as_str().to_owned(),
                        format!("{}/{}", o.target.project, o.target.name),
                        o.state.as_str().to_owned(),
                        format!(
                            "{}% {}",
                            o.progress.percent.unwrap_or(0),
                            o.progress.message
                        ),
                        o.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                }));
                rows
            })
        }
        OperationCommand::Show(a) => {
            let mut op = client.operation(&a.id).await.map_err(api_err)?;
            if a.wait {
                op = wait::follow(client, &op, Duration::from_secs(3600)).await?;
            }
            show(format, &op)
        }
    }
}

fn show(format: Format, o: &Operation) -> Result<()> {
    print(format, o, Vec::new)?;
    if format == Format::Table {
        let mut f = vec![
            ("ID", o.id.to_string()),
            ("Kind", o.kind.as_str().to_owned()),
            (
                "Target",
                format!("{} {}/{}", o.target.kind, o.target.project, o.target.name),
            ),
            ("State", o.state.as_str().to_owned()),
            (
                "Progress",
                format!(
                    "{}% {}",
                    o.progress.percent.unwrap_or(0),
                    o.progress.message
                ),
            ),
            ("Created", o.created_at.to_rfc3339()),
            ("Updated", o.updated_at.to_rfc3339()),
        ];
        if let Some(e) = &o.error {
            f.push(("Error", e.to_string()));
        }
        print_fields(&f);
    }
    Ok(())
}
