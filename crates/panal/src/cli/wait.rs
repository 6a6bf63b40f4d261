//! `--wait`: follows an operation to its end with a progress bar on a terminal (plain lines
//! otherwise), and turns a failed operation into a failed command.

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use panal_client::Client;
use panal_types::operation::{Operation, OperationState};
use std::io::IsTerminal;
use std::time::Duration;

/// Waits for `op` to end, showing progress, within `timeout`.
pub async fn follow(client: &Client, op: &Operation, timeout: Duration) -> Result<Operation> {
    let cur = follow_to_end(client, op, timeout).await?;
    match cur.state {
        OperationState::Succeeded => Ok(cur),
        OperationState::Cancelled => bail!(
            "operation {} was cancelled: {}",
            cur.id,
            cur.progress.message
        ),
        _ => {
            let why = cur
                .error
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| cur.progress.message.clone());
            bail!("operation {} ({}) failed: {why}", cur.id, cur.kind.as_str())
        }
    }
}

/// Waits for `op` to end however it ends, showing progress, within `timeout`.
pub async fn follow_to_end(
    client: &Client,
    op: &Operation,
    timeout: Duration,
) -> Result<Operation> {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(100);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        Some(b)
    } else {
        None
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut cur = op.clone();
    let mut last_msg = String::new();
    loop {
        if let Some(b) = &bar {
            b.set_position(u64::from(cur.progress.percent.unwrap_or(0)));
            b.set_message(cur.progress.message.clone());
        } else if cur.progress.message != last_msg {
            eprintln!("{}: {}", cur.kind.as_str(), cur.progress.message);
            last_msg = cur.progress.message.clone();
        }
        if cur.state.is_final() {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            if let Some(b) = &bar {
                b.abandon();
            }
            bail!(
                "timed out waiting for operation {} (still {}); follow it with `panal operation show {}`",
                cur.id,
                cur.progress.message,
                cur.id
            );
        }
        // Short polls keep the bar moving while the server long-polls for the end.
        cur = client
            .wait_operation(&cur.id.to_string(), left.min(Duration::from_secs(2)))
            .await
            .map_err(super::api_err)?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(cur)
}
