//! A VM's interactive serial console through the API's websocket, as a test types into it: a
//! background task keeps reading (QEMU stalls the guest's serial output while a connected
//! client does not read) and collects everything into a buffer the waits search.

use panal_client::Client;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// An open console.
pub struct Console {
    name: String,
    out: Arc<Mutex<Vec<u8>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Where the next wait starts searching the output.
    pub offset: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Console {
    /// Opens the console and waits for a shell prompt (typing before the shell runs is lost,
    /// so the caller waits for the readiness line first).
    pub async fn open(client: &Client, name: &str) -> Console {
        Self::open_in(client, None, name).await
    }

    /// Opens the console of a VM of `project`.
    pub async fn open_in(client: &Client, project: Option<&str>, name: &str) -> Console {
        let mut conn = client.console(project, name).await.expect("console opens");
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let out = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o, c) = (out.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(b) => if conn.send(&b).await.is_err() { break },
                        None => break,
                    },
                    got = conn.recv() => match got {
                        Some(b) => o.lock().unwrap().extend_from_slice(&b),
                        None => break,
                    },
                }
            }
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Self::with_prompt(Console {
            name: name.into(),
            out,
            closed,
            tx,
            offset: 0,
            task,
        })
        .await
    }

    /// Opens a VM's console straight on its QEMU's socket (a file: reachable from any network
    /// namespace), for VMs on remote hosts whose consoles the API does not carry.
    pub async fn open_socket(path: &std::path::Path, name: &str) -> Console {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::UnixStream::connect(path)
            .await
            .unwrap_or_else(|e| panic!("console socket {}: {e}", path.display()));
        let (mut rd, mut wr) = sock.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let out = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (o, c) = (out.clone(), closed.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(b) => if wr.write_all(&b).await.is_err() { break },
                        None => break,
                    },
                    got = rd.read(&mut buf) => match got {
                        Ok(n) if n > 0 => o.lock().unwrap().extend_from_slice(&buf[..n]),
                        _ => break,
                    },
                }
            }
            c.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        Self::with_prompt(Console {
            name: name.into(),
            out,
            closed,
            tx,
            offset: 0,
            task,
        })
        .await
    }

    /// Waits for a shell prompt on a freshly opened console.
    async fn with_prompt(mut con: Console) -> Console {
        let name = con.name.clone();
        // An empty line makes the shell print a fresh prompt for this connection.
        for _ in 0..10 {
            con.send_raw(b"\n");
            if con
                .try_wait_for("panal# ", Duration::from_secs(3))
                .await
                .is_some()
            {
                return con;
            }
        }
        panic!(
            "vm {name}: no shell prompt on the console: {:?}",
            con.text()
        );
    }

    fn send_raw(&self, b: &[u8]) {
        self.tx.send(b.to_vec()).expect("console task alive");
    }

    /// Types a line.
    pub fn send(&self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    /// All output received so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Output after `offset`, without moving it.
    pub fn since_offset(&self) -> String {
        self.text().get(self.offset..).unwrap_or("").to_string()
    }

    async fn try_wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(rest) = text.get(self.offset..)
                && let Some(i) = rest.find(needle)
            {
                let end = rest[i..]
                    .find('\n')
                    .map(|n| i + n + 1)
                    .unwrap_or(i + needle.len());
                let seen = rest[..end].to_string();
                self.offset += end;
                return Some(seen);
            }
            if Instant::now() > deadline || self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `needle` appears after `offset`; moves `offset` past its line.
    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        match self.try_wait_for(needle, timeout).await {
            Some(s) => s,
            None => {
                let text = self.text();
                let tail = text.get(text.len().saturating_sub(1500)..).unwrap_or(&text);
                panic!(
                    "vm {}: {needle:?} not seen on the console within {timeout:?} (closed: {}); tail:\n{tail}",
                    self.name,
                    self.closed.load(std::sync::atomic::Ordering::SeqCst)
                );
            }
        }
    }

    /// Runs a shell command in the guest and returns its output, framed by unique markers.
    pub async fn run(&mut self, cmd: &str, timeout: Duration) -> String {
        let tag = format!("M{}", unique());
        // Quotes split the markers in the echoed input line, so only the output matches.
        self.send(&format!("echo {tag}-BE''GIN; {cmd}; echo {tag}-E''ND"));
        let begin = format!("{tag}-BEGIN");
        self.wait_for(&begin, timeout).await;
        let start = self.offset;
        let end_marker = format!("{tag}-END");
        self.wait_for(&end_marker, timeout).await;
        let text = self.text();
        let body = &text[start..self.offset];
        body.rsplit_once(&end_marker)
            .map(|(b, _)| b)
            .unwrap_or(body)
            .trim()
            .to_string()
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(t) * 1000 + N.fetch_add(1, Ordering::Relaxed)
}
