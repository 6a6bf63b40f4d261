//! Runs the iproute2 and nftables tools: a program, optional standard input (a batch or an nft
//! transaction), output captured. Children inherit the network namespace of the calling thread,
//! which is how tests drive several "hosts" from one process; so nothing here may hop to another
//! thread before the fork (no `spawn_blocking`).

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::NetError;

/// Runs `program args`, feeding `stdin` if given, and returns its standard output.
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, NetError> {
    let shown = || format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| NetError::io(format!("spawn {}", shown()), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // The child may exit early on a syntax error; its stderr says why, so a broken pipe
        // here is not the error to report.
        let _ = pipe.write_all(input.as_bytes()).await;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetError::io(format!("wait for {}", shown()), e))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.len() > 4000 {
            stderr.truncate(4000);
            stderr.push_str(" ...");
        }
        return Err(NetError::Command {
            command: shown(),
            status: out.status.to_string(),
            stderr,
        });
    }
    String::from_utf8(out.stdout).map_err(|e| NetError::Parse {
        command: shown(),
        reason: e.to_string(),
    })
}

/// Runs a command that prints JSON and parses it.
pub(crate) async fn run_json<T: serde::de::DeserializeOwned>(
    program: &str,
    args: &[&str],
) -> Result<T, NetError> {
    let out = run(program, args, None).await?;
    // `bridge -j fdb show` prints nothing at all for a device without entries on some versions.
    let text = if out.trim().is_empty() {
        "[]"
    } else {
        out.as_str()
    };
    serde_json::from_str(text).map_err(|e| NetError::Parse {
        command: format!("{program} {}", args.join(" ")),
        reason: e.to_string(),
    })
}
