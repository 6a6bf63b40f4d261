//! A small asynchronous QMP client over a Unix socket.
//!
//! Protocol: connect, read the greeting, negotiate with `qmp_capabilities`, then one reader task
//! owns the read half. Each command carries a numeric `id`; the reader routes the matching
//! `return`/`error` to the waiting caller through a oneshot and forwards every asynchronous
//! event to the event channel given at connect time. When the socket closes (QEMU exited) the
//! reader fails every pending command and drops the event sender, so the event receiver sees
//! the end: that is one of the driver's liveness signals. Dropping the [`Qmp`] aborts the reader
//! (the socket closes, QEMU keeps running and accepts the next client).

use crate::DriverError;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// An asynchronous QMP event: its name and data.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`, `GUEST_PANICKED`, `STOP`.
    pub name: String,
    /// The event's `data` object (`Null` when absent).
    pub data: Value,
}

type Pending = Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A connected, negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: std::sync::Arc<Pending>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    timeout: Duration,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn hv(e: impl std::fmt::Display) -> DriverError {
    DriverError::Hypervisor(format!("QMP: {e}"))
}

impl Qmp {
    /// Connects to `path` and negotiates capabilities, all within `timeout`. QEMU serves one
    /// QMP client at a time, so this times out while another client holds the socket.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
        events: mpsc::UnboundedSender<QmpEvent>,
    ) -> Result<Qmp, DriverError> {
        tokio::time::timeout(timeout, Self::connect_inner(path, timeout, events))
            .await
            .map_err(|_| {
                hv(format!(
                    "no greeting from {} within {timeout:?} (another client connected?)",
                    path.display()
                ))
            })?
    }

    async fn connect_inner(
        path: &Path,
        timeout: Duration,
        events: mpsc::UnboundedSender<QmpEvent>,
    ) -> Result<Qmp, DriverError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| hv(format!("connect {}: {e}", path.display())))?;
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        let greeting = lines
            .next_line()
            .await
            .map_err(hv)?
            .ok_or_else(|| hv("closed before greeting"))?;
        let g: Value = serde_json::from_str(&greeting).map_err(hv)?;
        if g.get("QMP").is_none() {
            return Err(hv(format!("unexpected greeting {greeting}")));
        }
        wr.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .await
            .map_err(hv)?;
        loop {
            let line = lines
                .next_line()
                .await
                .map_err(hv)?
                .ok_or_else(|| hv("closed during negotiation"))?;
            let v: Value = serde_json::from_str(&line).map_err(hv)?;
            if v.get("return").is_some() {
                break;
            }
            if let Some(err) = v.get("error") {
                return Err(hv(format!("qmp_capabilities failed: {err}")));
            }
        }
        let pending: std::sync::Arc<Pending> =
            std::sync::Arc::new(Mutex::new(Some(HashMap::new())));
        let p2 = pending.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    let data = v.get("data").cloned().unwrap_or(Value::Null);
                    let _ = events.send(QmpEvent {
                        name: name.to_string(),
                        data,
                    });
                    continue;
                }
                let Some(id) = v.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let reply = match (v.get("return"), v.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (_, Some(e)) => Err(e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_string()),
                    _ => continue,
                };
                if let Some(tx) = p2.lock().as_mut().and_then(|m| m.remove(&id)) {
                    let _ = tx.send(reply);
                }
            }
            // Closed: fail waiting callers (dropping their senders) and refuse new ones.
            p2.lock().take();
        });
        Ok(Qmp {
            writer: tokio::sync::Mutex::new(wr),
            pending,
            next_id: AtomicU64::new(1),
            reader,
            timeout,
        })
    }

    /// Whether the connection has closed (QEMU gone, or it dropped us).
    pub fn is_closed(&self) -> bool {
        self.pending.lock().is_none()
    }

    /// Runs one command and returns its `return` value; a QMP `error` becomes
    /// [`DriverError::Hypervisor`] with QEMU's description.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, DriverError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match self.pending.lock().as_mut() {
            Some(m) => m.insert(id, tx),
            None => return Err(hv("connection closed")),
        };
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = w.write_all(line.as_bytes()).await {
                self.forget(id);
                return Err(hv(format!("{command}: {e}")));
            }
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(desc))) => Err(DriverError::Hypervisor(format!("{command}: {desc}"))),
            Ok(Err(_)) => Err(hv(format!("{command}: connection closed"))),
            Err(_) => {
                self.forget(id);
                Err(hv(format!("{command}: no reply within {:?}", self.timeout)))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Some(m) = self.pending.lock().as_mut() {
            m.remove(&id);
        }
    }
}
