//! `panal vm console` and `panal vm logs`: the serial console interactively (raw terminal,
//! detach with Ctrl-]) and its history (optionally followed).

use super::api_err;
use anyhow::Result;
use futures::StreamExt;
use panal_client::Client;
use std::io::{IsTerminal, Write};
use tokio::io::AsyncReadExt;

/// Ctrl-] detaches, as in telnet and virsh.
const DETACH: u8 = 0x1d;

/// Puts the terminal in raw mode while it lives.
struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    fn enter() -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Self { saved: None };
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Self { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                s,
            );
        }
    }
}

/// Attaches to a VM's console until Ctrl-] or the console closes.
pub async fn attach(client: &Client, project: Option<&str>, name: &str) -> Result<()> {
    let mut conn = client.console(project, name).await.map_err(api_err)?;
    eprintln!("Connected to the console of {name}. Detach with Ctrl-].\r");
    let raw = RawMode::enter();
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    let mut stdout = std::io::stdout();
    // Nudge the guest so a prompt shows up.
    let _ = conn.send(b"\n").await;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                if let Some(pos) = buf[..n].iter().position(|b| *b == DETACH) {
                    if pos > 0 {
                        let _ = conn.send(&buf[..pos]).await;
                    }
                    break;
                }
                if conn.send(&buf[..n]).await.is_err() {
                    break;
                }
            }
            out = conn.recv() => match out {
                Some(bytes) => {
                    let _ = stdout.write_all(&bytes);
                    let _ = stdout.flush();
                }
                None => break,
            },
        }
    }
    drop(raw);
    conn.close().await;
    eprintln!("\nDetached.");
    Ok(())
}

/// Prints the console history, then keeps following it with `follow`.
pub async fn logs(client: &Client, project: Option<&str>, name: &str, follow: bool) -> Result<()> {
    let resp = client
        .console_log(project, name, follow)
        .await
        .map_err(api_err)?;
    let mut body = resp.bytes_stream();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(())
}
