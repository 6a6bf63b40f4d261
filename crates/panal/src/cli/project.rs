//! `panal project ...`.

use super::api_err;
use super::output::{Format, print, print_fields};
use anyhow::Result;
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::project::{Project, ProjectCreate};

/// Project commands.
#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project.
    Create(CreateArgs),
    /// List projects.
    List,
    /// Show a project.
    Show(NameArg),
    /// Delete an empty project.
    Delete(NameArg),
}

/// Arguments of `project create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Project name.
    pub name: String,
    /// Free text.
    #[arg(long)]
    pub description: Option<String>,
}

/// A project name.
#[derive(Args, Debug)]
pub struct NameArg {
    /// Project name.
    pub name: String,
}

/// Runs a project command.
pub async fn run(client: &Client, format: Format, cmd: &ProjectCommand) -> Result<()> {
    match cmd {
        ProjectCommand::Create(a) => {
            let p = client
                .create_project(&ProjectCreate {
                    name: a.name.clone(),
                    description: a.description.clone(),
                })
                .await
                .map_err(api_err)?;
            show(format, &p)
        }
        ProjectCommand::List => {
            let all =
                panal_client::all_pages(
                    |t| async move { client.list_projects(t.as_deref()).await },
                )
                .await
                .map_err(api_err)?;
            print(format, &all, || {
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "DESCRIPTION".into(),
                    "CREATED".into(),
                ]];
                rows.extend(all.iter().map(|p| {
                    vec![
                        p.name.to_string(),
                        p.description.clone(),
                        p.created_at.to_rfc3339(),
                    ]
                }));
                rows
            })
        }
        ProjectCommand::Show(n) => show(format, &client.project(&n.name).await.map_err(api_err)?),
        ProjectCommand::Delete(n) => {
            client.delete_project(&n.name).await.map_err(api_err)?;
            eprintln!("deleted project {}", n.name);
            Ok(())
        }
    }
}

fn show(format: Format, p: &Project) -> Result<()> {
    print(format, p, Vec::new)?;
    if format == Format::Table {
        print_fields(&[
            ("Name", p.name.to_string()),
            ("ID", p.id.to_string()),
            ("Description", p.description.clone()),
            ("Created", p.created_at.to_rfc3339()),
        ]);
    }
    Ok(())
}
