//! `panal vm migrate`: live migration from the command line, with the pre-flight plan
//! (`--dry-run`), a progress bar while it runs, and `--cancel`.

use super::output::{Format, print};
use super::{api_err, wait};
use anyhow::{Result, anyhow};
use clap::Args;
use panal_client::Client;
use panal_types::migration::{MigrationPlan, VmMigrate};
use panal_types::size::{format_size, parse_size};
use std::time::Duration;

/// Arguments of `vm migrate`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  panal vm migrate web-1                 (the scheduler picks the host)\n  panal vm migrate web-1 --to host-2 --dry-run\n  panal vm migrate web-1 --bandwidth 200M --downtime-limit 100\n  panal vm migrate web-1 --cancel"
)]
pub struct MigrateArgs {
    /// VM name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// The host to move to (default: the scheduler picks one).
    #[arg(long)]
    pub to: Option<String>,
    /// The longest the guest may be paused at the switch-over, in ms (default 300). A ceiling:
    /// the migration aims at 30 ms first and doubles its aim while memory does not converge.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub downtime_limit: Option<i64>,
    /// Bytes per second the transfer may use (`200M` = 200 MiB/s; default: unlimited).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub bandwidth: Option<String>,
    /// Do not slow the guest down when pre-copy does not converge.
    #[arg(long)]
    pub no_auto_converge: bool,
    /// Switch to post-copy when pre-copy does not converge (needs --accept-post-copy-risk).
    #[arg(long)]
    pub post_copy: bool,
    /// Accept that a VM in post-copy is lost if either host fails.
    #[arg(long)]
    pub accept_post_copy_risk: bool,
    /// Check and show the plan only; nothing moves.
    #[arg(long)]
    pub dry_run: bool,
    /// Cancel the migration in flight instead (the VM stays where it runs).
    #[arg(long, conflicts_with_all = ["to", "dry_run", "bandwidth", "downtime_limit"])]
    pub cancel: bool,
    /// Start it and return at once (follow it with `panal operation show ID`).
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the migration goes on).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

/// A bandwidth as the API takes it: a size per second, or a bare (possibly negative, which
/// the server refuses with its reason) number of bytes.
fn bandwidth(s: &str) -> Result<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let bytes = parse_size(s.trim_end_matches("/s")).map_err(|e| anyhow!("--bandwidth: {e}"))?;
    i64::try_from(bytes).map_err(|_| anyhow!("--bandwidth: {s} is too large"))
}

fn show_plan(p: &MigrationPlan) {
    println!(
        "VM {}/{} can move live from host {} to host {} ({})",
        p.project, p.vm, p.from, p.to, p.reason
    );
    println!(
        "  memory to copy: {}; downtime limit {} ms; bandwidth {}; auto-converge {}",
        format_size(p.memory_bytes),
        p.settings.downtime_limit_ms,
        p.settings
            .max_bandwidth
            .map_or_else(|| "unlimited".into(), |b| format!("{}/s", format_size(b))),
        if p.settings.auto_converge {
            "on"
        } else {
            "off"
        },
    );
    if !p.local_disks.is_empty() {
        println!(
            "  copied first (local storage): {}",
            p.local_disks.join(", ")
        );
    }
    for c in &p.checks {
        println!("  ok: {c}");
    }
}

/// Runs `vm migrate`.
pub async fn run(client: &Client, format: Format, a: &MigrateArgs) -> Result<()> {
    let project = a.project.as_deref();
    if a.cancel {
        let r = client
            .cancel_migration(project, &a.name)
            .await
            .map_err(api_err)?;
        if a.no_wait {
            eprintln!(
                "cancelling the migration of VM {} (operation {})",
                a.name, r.operation.id
            );
            return Ok(());
        }
        let end = wait::follow_to_end(client, &r.operation, Duration::from_secs(a.timeout)).await?;
        eprintln!("{}", end.progress.message);
        return Ok(());
    }
    let req = VmMigrate {
        to: a.to.clone(),
        downtime_limit_ms: a.downtime_limit,
        max_bandwidth: a.bandwidth.as_deref().map(bandwidth).transpose()?,
        auto_converge: a.no_auto_converge.then_some(false),
        post_copy: a.post_copy.then_some(true),
        accept_post_copy_risk: a.accept_post_copy_risk.then_some(true),
        dry_run: a.dry_run.then_some(true),
    };
    let r = client
        .migrate_vm(project, &a.name, &req)
        .await
        .map_err(api_err)?;
    let Some(op) = r.operation else {
        if format == Format::Table {
            show_plan(&r.plan);
            return Ok(());
        }
        return print(format, &r.plan, Vec::new);
    };
    if a.no_wait {
        eprintln!(
            "migrating VM {} from host {} to host {} (operation {})",
            a.name, r.plan.from, r.plan.to, op.id
        );
        return Ok(());
    }
    let done = wait::follow(client, &op, Duration::from_secs(a.timeout)).await?;
    eprintln!("VM {}: {}", a.name, done.progress.message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_takes_sizes_and_passes_numbers_through() {
        assert_eq!(bandwidth("200M").unwrap(), 200 << 20);
        assert_eq!(bandwidth("1G/s").unwrap(), 1 << 30);
        assert_eq!(bandwidth("-5").unwrap(), -5);
        assert!(bandwidth("fast").is_err());
    }
}
