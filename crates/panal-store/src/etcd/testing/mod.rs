//! Test harness (cargo feature `etcd-testing`): real etcd clusters of 1 or more members on
//! loopback, each member on free ports with its data in a temporary directory, that tests can
//! kill and restart member by member.
//!
//! Lifecycle: [`EtcdCluster::start`] spawns every member and returns once each reports healthy
//! (has a leader). Dropping the cluster, including while a test panics and unwinds, kills every
//! member process (SIGKILL), reaps it and removes the directory. Only a test process killed
//! with SIGKILL itself leaves members behind (they hold only loopback ports and temp files).
//!
//! The etcd binary is `etcd` on `PATH` (Debian's `etcd-server`, installed by
//! `scripts/install-etcd.sh`), or the path in `PANAL_ETCD_BIN`.

mod store;

pub use store::ClusterStore;

use super::{EtcdOptions, EtcdStore};
use crate::StoreError;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long members get to elect a leader and report healthy.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);

/// Why the harness could not provide a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// the etcd binary cannot be run
    #[error("cannot run etcd ({bin}): {cause}; install it with scripts/install-etcd.sh")]
    NotInstalled {
        /// Binary tried.
        bin: String,
        /// Why it failed.
        cause: String,
    },
    /// a file-system or process failure
    #[error("etcd test cluster: {0}")]
    Io(String),
    /// members did not come up healthy
    #[error("etcd member {member} not healthy within {within:?}; its log ends with:\n{log}")]
    NotHealthy {
        /// Member index.
        member: usize,
        /// How long it was given.
        within: Duration,
        /// Last lines of its log.
        log: String,
    },
}

struct Member {
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster owned by a test. See the module docs for its lifecycle.
pub struct EtcdCluster {
    members: Vec<Member>,
    token: String,
    bin: String,
    // Dropped after the members are killed (Drop impl runs first).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("endpoints", &self.endpoints())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every member is healthy.
    pub async fn start(size: usize) -> Result<Self, ClusterError> {
        let bin = std::env::var("PANAL_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        if let Err(e) = Command::new(&bin).arg("--version").output() {
            return Err(ClusterError::NotInstalled {
                bin,
                cause: e.to_string(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("panal-etcd-")
            .tempdir()
            .map_err(|e| ClusterError::Io(format!("temp dir: {e}")))?;
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let token = format!(
            "panal-test-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let ports = free_ports(2 * size.max(1))?;
        let members = ports
            .chunks(2)
            .map(|p| Member {
                client_port: p[0],
                peer_port: p[1],
                child: None,
            })
            .collect();
        let mut cluster = Self {
            members,
            token,
            bin,
            dir,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.members.len() {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Client URLs of all members (running or not).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Store options for this cluster: all endpoints, key prefix `/panal-test/`, short
    /// timeouts so failures show quickly in tests.
    pub fn options(&self) -> EtcdOptions {
        EtcdOptions::new(self.endpoints())
            .key_prefix("/panal-test/")
            .connect_timeout(Duration::from_secs(5))
            .request_timeout(Duration::from_secs(5))
    }

    /// Connects a store with [`Self::options`].
    pub async fn connect(&self) -> Result<std::sync::Arc<EtcdStore>, StoreError> {
        EtcdStore::connect(self.options()).await
    }

    /// Kills member `i` (SIGKILL, no graceful shutdown) and reaps it. No-op if not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and ports, and waits until it is healthy
    /// (which needs a quorum of members running).
    pub async fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i).await
    }

    /// Whether member `i`'s process is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        matches!(
            self.members[i].child.as_mut().map(Child::try_wait),
            Some(Ok(None))
        )
    }

    /// Turns on etcd authentication with a `root` user (role `root`) having `password`.
    /// Afterwards clients must connect with credentials.
    pub async fn enable_auth(&self, password: &str) -> Result<(), StoreError> {
        let store = EtcdStore::connect(self.options()).await?;
        let mut c = store.client();
        let map = |what: &str, e: etcd_client::Error| StoreError::Internal(format!("{what}: {e}"));
        // etcd 3.4 keeps a built-in `root` role; adding it again is refused and harmless.
        let _ = c.role_add("root").await;
        c.user_add("root", password, None)
            .await
            .map_err(|e| map("user add", e))?;
        c.user_grant_role("root", "root")
            .await
            .map_err(|e| map("grant role", e))?;
        c.auth_enable().await.map_err(|e| map("auth enable", e))?;
        Ok(())
    }

    /// The last `lines` lines of member `i`'s log (for failure messages).
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{i}.log"))
    }

    fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let peers: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| format!("m{j}=http://127.0.0.1:{}", m.peer_port))
            .collect();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = open_log(&self.log_path(i))?;
        let err_log = log
            .try_clone()
            .map_err(|e| ClusterError::Io(format!("log file: {e}")))?;
        let data = self.dir.path().join(format!("m{i}"));
        let child = Command::new(&self.bin)
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| ClusterError::NotInstalled {
                bin: self.bin.clone(),
                cause: e.to_string(),
            })?;
        self.members[i].child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self, i: usize) -> Result<(), ClusterError> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        let port = self.members[i].client_port;
        loop {
            if health(port).await {
                return Ok(());
            }
            if !self.is_running(i) || Instant::now() > deadline {
                return Err(ClusterError::NotHealthy {
                    member: i,
                    within: HEALTHY_WITHIN,
                    log: self.log_tail(i, 20),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        // The TempDir field then removes the data directories and logs.
    }
}

/// Asks a member's `/health` endpoint (plain HTTP on the client port) whether it has a leader.
async fn health(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

/// Distinct free loopback ports: all listeners are held until every port is chosen.
fn free_ports(n: usize) -> Result<Vec<u16>, ClusterError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClusterError::Io(format!("finding free ports: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| ClusterError::Io(format!("finding free ports: {e}")))
}

fn open_log(path: &Path) -> Result<File, ClusterError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ClusterError::Io(format!("{}: {e}", path.display())))
}
