//! The real `panal up` binary as a child process on a data directory and a free port, for the
//! tests and benchmarks that kill it (`kill -9`) or measure its own memory.

use panal_client::Client;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `panal up`, killed on drop.
pub struct Up {
    child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// A client with the admin token.
    pub client: Client,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Up {
    /// Starts `panal up` (the binary `bin`) and waits until it says it is up.
    pub fn start(bin: &str, data: &Path) -> Up {
        Up::start_with(bin, data, &[])
    }

    /// [`Up::start`] with more arguments of `panal up`.
    pub fn start_with(bin: &str, data: &Path, extra: &[&str]) -> Up {
        let port = free_port();
        let mut child = Command::new(bin)
            .args(["up", "--no-default-config", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("PANAL_GUEST_DIR", super::guest_dir())
            .env("PANAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn panal up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Panal is up") {
                    let _ = tx.send(());
                }
            }
        });
        let up = rx.recv_timeout(Duration::from_secs(60));
        let mut me = Up {
            child,
            data: data.to_path_buf(),
            client: Client::new("http://invalid", ""),
        };
        if up.is_err() {
            panic!(
                "panal up did not come up within 60 s (exit: {:?})",
                me.child.try_wait()
            );
        }
        let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
        me.client = Client::new(&format!("http://127.0.0.1:{port}"), token.trim());
        me
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the local host is registered, so VMs can be placed.
    pub async fn wait_host(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .client
                .list_hosts(None)
                .await
                .is_ok_and(|p| !p.items.is_empty())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("panal up registered no host within 30 s");
    }
}
