//! The agents' own channel for live migrations: the hypervisors on both ends talk to Unix
//! sockets of their agents, and the agents carry each connection between the hosts over TLS
//! with their identities from the installation's CA (the certificates they join with), each
//! side checking that the other is the host the migration record names.
//!
//! Why not the hypervisor's own TLS: QEMU 7.2 encrypts each 4 KiB page as its own TLS record
//! and decrypts in the destination's main loop, inside the VM's CPU quota: its stream ran at
//! 100-140 MiB/s here against ~1 GiB/s in the clear. rustls in the agent writes 16 KiB records
//! from large buffers, outside the guest's cgroup, and the credentials never have to be copied
//! into files for the hypervisor to load.
//!
//! - Source: [`Tunnel::forward`] listens on a Unix socket (the hypervisor's migration target);
//!   each connection becomes a TLS connection to the target host's relay.
//! - Target: [`Tunnel::serve`] listens on a new port of this host's migration address; each TLS
//!   connection from the source host is joined to a Unix socket the incoming hypervisor
//!   listens on (its memory stream, or its disk export).
//!
//! A [`Relay`] owns its listener and every connection it carries: dropping it (the migration
//! has ended, one way or the other) closes them all, so nothing outlives the migration even
//! when the link between the hosts is cut and a write would wait for ever. The relays live in
//! the agent: an agent that dies takes its side of every migration in flight down with it,
//! and the hypervisors fail the migration (the guest keeps running on the source).

use super::AgentIdentity;
use panal_types::{Name, VmId};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A peer that has not finished the handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The copy buffer each way (large reads let rustls fill whole 16 KiB records, and take one
/// system call per 256 KiB of guest memory rather than per record), and the read buffer under
/// the handshake (rustls reads at most 4 KiB from its transport per call).
const BUFFER: usize = 256 << 10;
/// The kernel's buffer of each tunnel connection, each way (Linux doubles it for its own
/// bookkeeping). Left to autotuning, `ss` showed up to 3.7 MB waiting in the source's send
/// queue and 5.7 MB in the target's receive queue during the migration benchmark, because the
/// target (decryption, then the incoming hypervisor) is the slower end. All that is queued when
/// the guest stops has to cross before it runs again, so a deep queue is downtime: about 30 ms
/// here, where the tunnel carries ~300 MB/s. 1 MiB still fills a 10 Gb/s link up to a round
/// trip of about 0.8 ms; 512 KiB slowed the stream by a fifth on this machine (benchmarks.md).
const SOCKET_BUFFER: u32 = 1 << 20;
/// The longest path a Unix socket address holds (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Whether and how this host takes part in live migrations.
#[derive(Clone)]
pub enum Migrations {
    /// Not at all (no migration address: a single-machine or simulated host).
    Off,
    /// Refused, for this reason (e.g. a certificate from before migrations were encrypted); the
    /// host still names its migration address, so that a migration to it is refused with the
    /// reason rather than with "takes no migrations".
    Refused {
        /// The address it would listen on.
        address: IpAddr,
        /// Why it does not.
        why: String,
    },
    /// Over the agents' tunnel.
    Tunnel(Arc<Tunnel>),
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Migrations::Off => f.write_str("Off"),
            Migrations::Refused { address, why } => f
                .debug_struct("Refused")
                .field("address", address)
                .field("why", why)
                .finish(),
            Migrations::Tunnel(t) => f.debug_tuple("Tunnel").field(&t.ip).finish(),
        }
    }
}

/// This host's end of the migration tunnel.
pub struct Tunnel {
    ip: IpAddr,
    sockets: PathBuf,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl Migrations {
    /// The address migrations to this host are received on.
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            Migrations::Off => None,
            Migrations::Refused { address, .. } => Some(*address),
            Migrations::Tunnel(t) => Some(t.ip),
        }
    }

    /// The tunnel, or why this host takes no part in migrations.
    pub fn tunnel_or_refusal(&self) -> Result<&Arc<Tunnel>, String> {
        match self {
            Migrations::Off => Err("this host takes no live migrations".into()),
            Migrations::Refused { why, .. } => {
                Err(format!("live migration is unavailable on this host: {why}"))
            }
            Migrations::Tunnel(t) => Ok(t),
        }
    }

    /// Migrations over the tunnel on `ip`, with sockets under `sockets` (made private), or the
    /// reason this identity cannot carry them.
    pub fn tunnel(ip: IpAddr, sockets: &Path, id: &AgentIdentity) -> Migrations {
        if let Err(missing) = usable(id) {
            let why = format!(
                "host \"{}\" holds a certificate from before live migrations were encrypted (it \
                 lacks {missing}); to take part in migrations it must join again with a token \
                 made for it (`panal host token create --host {}`)",
                id.host, id.host
            );
            return Migrations::Refused { address: ip, why };
        }
        match Tunnel::new(ip, sockets, id) {
            Ok(t) => Migrations::Tunnel(Arc::new(t)),
            Err(e) => Migrations::Refused {
                address: ip,
                why: format!("the migration tunnel: {e}"),
            },
        }
    }
}

/// What both ends check of a certificate: server and client authentication, this host's name
/// as a DNS SAN. `Err`: what is missing.
fn usable(id: &AgentIdentity) -> Result<(), String> {
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
    let p = CertificateParams::from_ca_cert_pem(&id.cert_pem)
        .map_err(|e| format!("a readable certificate ({e})"))?;
    let mut missing = Vec::new();
    for (usage, what) in [
        (ExtendedKeyUsagePurpose::ServerAuth, "server authentication"),
        (ExtendedKeyUsagePurpose::ClientAuth, "client authentication"),
    ] {
        if !p.extended_key_usages.contains(&usage) {
            missing.push(what.to_string());
        }
    }
    if !names(&p.subject_alt_names).any(|n| n == id.host.as_str()) {
        missing.push(format!("the name {} as a DNS SAN", id.host));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

fn names(sans: &[rcgen::SanType]) -> impl Iterator<Item = &str> {
    sans.iter().filter_map(|s| match s {
        rcgen::SanType::DnsName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Whether the peer of `conn` presented a certificate naming `host`. The handshake has already
/// checked that it comes from the installation's CA.
fn peer_is(conn: &rustls::CommonState, host: &Name) -> bool {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|der| rcgen::CertificateParams::from_ca_cert_der(der).ok())
        .is_some_and(|p| names(&p.subject_alt_names).any(|n| n == host.as_str()))
}

fn describe(conn: &rustls::CommonState) -> String {
    format!(
        "{:?}, {:?}",
        conn.protocol_version()
            .map_or("no TLS version".into(), |v| format!("{v:?}")),
        conn.negotiated_cipher_suite().map(|s| s.suite())
    )
}

impl Tunnel {
    fn new(ip: IpAddr, sockets: &Path, id: &AgentIdentity) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = CertificateDer::from_pem_slice(id.ca_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| e.to_string())?;
        let roots = Arc::new(roots);
        let cert = || {
            CertificateDer::from_pem_slice(id.cert_pem.as_bytes())
                .map(|c| vec![c])
                .map_err(|e| e.to_string())
        };
        let key =
            || PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|e| e.to_string());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert()?, key()?)
            .map_err(|e| e.to_string())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(cert()?, key()?)
            .map_err(|e| e.to_string())?;
        super::private_files::private_dir(sockets)?;
        Ok(Tunnel {
            ip,
            sockets: sockets.to_path_buf(),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The Unix socket for `vm`'s stream `what` on this host (one migration per VM at a time
    /// has the name to itself). Refused if the path would not fit a socket address.
    pub fn socket(&self, vm: VmId, what: &str) -> std::io::Result<PathBuf> {
        let path = self.sockets.join(format!("{vm}.{what}"));
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(std::io::Error::other(format!(
                "the socket path {} is longer than a Unix socket address holds; use a shorter \
                 agent data directory",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Target: listens on a new port of this host's migration address and joins each TLS
    /// connection from host `peer` (its certificate must name it) to the Unix socket `to`.
    pub async fn serve(&self, peer: Name, to: PathBuf) -> std::io::Result<(SocketAddr, Relay)> {
        let socket = tcp_socket(self.ip)?;
        socket.bind(SocketAddr::new(self.ip, 0))?;
        let listener = socket.listen(16)?;
        let addr = listener.local_addr()?;
        let to_removed = to.clone();
        let acceptor = self.acceptor.clone();
        let task = tokio::spawn(async move {
            let mut carried = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (tcp, from) = match accepted {
                            Ok(c) => c,
                            Err(e) => {
                                accept_failed(e).await;
                                continue;
                            }
                        };
                        carried.spawn(carry_in(acceptor.clone(), tcp, from, peer.clone(), to.clone()));
                    }
                    Some(_) = carried.join_next() => {}
                }
            }
        });
        // The hypervisor's socket goes with the relay: nothing reaches it any more.
        Ok((
            addr,
            Relay {
                socket: to_removed,
                task,
            },
        ))
    }

    /// Source: listens on the Unix socket `at` and carries each connection over TLS to `target`
    /// on host `host` (its certificate must name it).
    pub async fn forward(
        &self,
        at: PathBuf,
        target: SocketAddr,
        host: Name,
    ) -> std::io::Result<Relay> {
        let _ = tokio::fs::remove_file(&at).await;
        let listener = UnixListener::bind(&at)?;
        let connector = self.connector.clone();
        let name = ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
        let task = tokio::spawn(async move {
            let mut carried = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let local = match accepted {
                            Ok((s, _)) => s,
                            Err(e) => {
                                accept_failed(e).await;
                                continue;
                            }
                        };
                        carried.spawn(carry_out(
                            connector.clone(),
                            local,
                            target,
                            name.clone(),
                            host.clone(),
                        ));
                    }
                    Some(_) = carried.join_next() => {}
                }
            }
        });
        Ok(Relay { socket: at, task })
    }
}

/// One side's listener and the connections it carries; all closed when dropped.
pub struct Relay {
    /// The Unix socket removed with it.
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Aborting the listener's task drops its set of connections, which aborts them.
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Target: one TLS connection from the source host, joined to the hypervisor's socket.
async fn carry_in(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    from: SocketAddr,
    peer: Name,
    to: PathBuf,
) {
    let _ = tcp.set_nodelay(true);
    let tcp = BufReader::with_capacity(BUFFER, tcp);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(%from, error = %e, "migration tunnel: TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%from, "migration tunnel: no TLS handshake in time");
            return;
        }
    };
    if !peer_is(tls.get_ref().1, &peer) {
        tracing::warn!(%from, expected = %peer, "migration tunnel: the peer is not the source host");
        let _ = tls.shutdown().await;
        return;
    }
    let local = match UnixStream::connect(&to).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %to.display(), error = %e, "migration tunnel: the hypervisor does not listen");
            return;
        }
    };
    tracing::info!(
        "incoming migration channel: TLS from host {peer} ({from}, {}) to {}",
        describe(tls.get_ref().1),
        to.display()
    );
    let (reader, session) = tls.into_inner();
    relay(session.into(), reader, local).await;
}

/// Source: one connection of the hypervisor's, carried to the target host over TLS.
async fn carry_out(
    connector: TlsConnector,
    local: UnixStream,
    target: SocketAddr,
    name: ServerName<'static>,
    host: Name,
) {
    let connected = match tcp_socket(target.ip()) {
        Ok(socket) => socket.connect(target).await,
        Err(e) => Err(e),
    };
    let tcp = match connected {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%target, error = %e, "migration tunnel: cannot reach the target");
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let handshake = connector.connect(name, BufReader::with_capacity(BUFFER, tcp));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Also a target whose certificate does not name `host`: nothing leaves.
            tracing::warn!(%target, %host, error = %e, "migration tunnel: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%target, "migration tunnel: no TLS handshake in time");
            return;
        }
    };
    tracing::info!(
        "outgoing migration channel: TLS to host {host} ({target}, {})",
        describe(tls.get_ref().1)
    );
    let (reader, session) = tls.into_inner();
    relay(session.into(), reader, local).await;
}

/// A TCP socket for the tunnel, with bounded buffers (see [`SOCKET_BUFFER`]); a listener's
/// connections inherit them.
fn tcp_socket(ip: IpAddr) -> std::io::Result<TcpSocket> {
    let socket = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    Ok(socket)
}

/// A failed accept (out of file descriptors, typically) is retried after a pause, not at once:
/// an immediate retry would fail again and spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "migration tunnel: accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Carries one connection after its handshake (on threads of its own: see `tls_pipe.rs`).
async fn relay(session: rustls::Connection, tcp: BufReader<TcpStream>, local: UnixStream) {
    // Bytes read past the handshake wait in the reader's buffer.
    let early = tcp.buffer().to_vec();
    let carried = match (tcp.into_inner().into_std(), local.into_std()) {
        (Ok(tcp), Ok(local)) => super::tls_pipe::carry(session, tcp, local, early, BUFFER).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    if let Err(e) = carried {
        tracing::debug!(error = %e, "migration tunnel: a connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Ca(rcgen::Certificate, KeyPair);

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Ca(p.self_signed(&key).unwrap(), key)
    }

    fn identity(ca: &Ca, host: &str, san: bool, server: bool) -> AgentIdentity {
        let key = KeyPair::generate().unwrap();
        let names = if san { vec![host.to_string()] } else { vec![] };
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, host);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
        AgentIdentity {
            url: "https://cp:7181".into(),
            alternates: vec![],
            host: Name::parse(host).unwrap(),
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            ca_pem: ca.0.pem(),
        }
    }

    fn tunnel(id: &AgentIdentity, dir: &Path) -> Arc<Tunnel> {
        match Migrations::tunnel("127.0.0.1".parse().unwrap(), dir, id) {
            Migrations::Tunnel(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    /// A "hypervisor" listening on a Unix socket that echoes back the SHA-256 of all it read.
    async fn digest_server(path: PathBuf) -> JoinHandle<()> {
        use sha2::Digest;
        let l = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut h = sha2::Sha256::new();
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    let _ = s.write_all(&h.finalize()).await;
                    let _ = s.shutdown().await;
                });
            }
        })
    }

    /// Sends `data` into the source's socket and returns what came back (the digest).
    async fn send_through(socket: &Path, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(socket).await?;
        s.write_all(data).await?;
        s.shutdown().await?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn a_stream_crosses_between_the_named_hosts_intact() {
        use sha2::Digest;
        let tmp = tempfile::tempdir().unwrap();
        let ca = ca();
        let (src, dst) = (
            identity(&ca, "h1", true, true),
            identity(&ca, "h2", true, true),
        );
        let (t1, t2) = (
            tunnel(&src, &tmp.path().join("a")),
            tunnel(&dst, &tmp.path().join("b")),
        );
        let vm = VmId::new();
        let hv = t2.socket(vm, "in").unwrap();
        let _hypervisor = digest_server(hv.clone()).await;
        let (to, _relay_in) = t2.serve(name("h1"), hv).await.unwrap();
        let out = t1.socket(vm, "out").unwrap();
        let relay_out = t1.forward(out.clone(), to, name("h2")).await.unwrap();
        // 64 MiB of not-quite-constant bytes, twice at once (a memory stream and a disk).
        let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        let (a, b) = tokio::join!(
            send_through(&out, &data),
            send_through(&out, &data[..1 << 20])
        );
        let took = started.elapsed();
        assert_eq!(a.unwrap(), sha2::Sha256::digest(&data).to_vec());
        assert_eq!(b.unwrap(), sha2::Sha256::digest(&data[..1 << 20]).to_vec());
        eprintln!(
            "65 MiB through the tunnel in {took:?}: {:.0} MiB/s",
            65.0 / took.as_secs_f64()
        );
        // The source's socket goes with its relay.
        drop(relay_out);
        assert!(!out.exists());
        assert!(send_through(&out, b"x").await.is_err());
    }

    /// Threads of this process carrying tunnel connections.
    fn tunnel_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("mig-"))
            .count()
    }

    /// A link that stops moving (here: a hypervisor that stops reading) must not keep a
    /// connection, or the threads carrying it, once the migration drops its relays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_relays_ends_a_stuck_connection_and_its_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ca();
        let (t1, t2) = (
            tunnel(&identity(&ca, "h1", true, true), &tmp.path().join("a")),
            tunnel(&identity(&ca, "h2", true, true), &tmp.path().join("b")),
        );
        let vm = VmId::new();
        let hv = t2.socket(vm, "in").unwrap();
        let listener = UnixListener::bind(&hv).unwrap();
        let (to, relay_in) = t2.serve(name("h1"), hv).await.unwrap();
        let out = t1.socket(vm, "out").unwrap();
        let relay_out = t1.forward(out.clone(), to, name("h2")).await.unwrap();
        let mut sender = UnixStream::connect(&out).await.unwrap();
        // The "hypervisor" takes the connection and never reads from it.
        let (_stuck, _) = listener.accept().await.unwrap();
        let sending = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 20];
            loop {
                sender.write_all(&chunk).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
        // Both relays carry the connection (two threads each), then every buffer on the way
        // fills up and their writes block.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tunnel_threads() < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} tunnel threads",
                tunnel_threads()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!sending.is_finished(), "the stream ended by itself");
        drop((relay_out, relay_in));
        let ended = tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .expect("the sender still writes into a dropped relay");
        assert!(ended.unwrap().is_err());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tunnel_threads() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "tunnel threads outlived their relays"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn nothing_crosses_to_or_from_the_wrong_host() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ca();
        let other_ca = self::ca();
        let h1 = identity(&ca, "h1", true, true);
        let h2 = identity(&ca, "h2", true, true);
        let h3 = identity(&ca, "h3", true, true);
        let stranger = identity(&other_ca, "h1", true, true);
        let t2 = tunnel(&h2, &tmp.path().join("h2"));
        let vm = VmId::new();
        let hv = t2.socket(vm, "in").unwrap();
        let _hypervisor = digest_server(hv.clone()).await;
        let (to, _relay_in) = t2.serve(name("h1"), hv).await.unwrap();
        for (i, (from, target_named)) in [
            (&h3, "h2"),       // a host of ours, but not the migration's source
            (&stranger, "h2"), // the right name from another CA
            (&h1, "h3"),       // the right source, expecting another target
        ]
        .into_iter()
        .enumerate()
        {
            let t = tunnel(from, &tmp.path().join(format!("s{i}")));
            let out = t.socket(vm, "out").unwrap();
            let _relay = t
                .forward(out.clone(), to, name(target_named))
                .await
                .unwrap();
            let back = send_through(&out, b"guest memory")
                .await
                .unwrap_or_default();
            assert!(
                back.is_empty(),
                "case {i}: the stream reached the hypervisor"
            );
        }
        // And the right pair does get through.
        let t1 = tunnel(&h1, &tmp.path().join("h1"));
        let out = t1.socket(vm, "out").unwrap();
        let _relay = t1.forward(out.clone(), to, name("h2")).await.unwrap();
        assert_eq!(send_through(&out, b"guest memory").await.unwrap().len(), 32);
    }

    #[test]
    fn an_old_certificate_refuses_migrations_and_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = ca();
        for (san, server, lacks) in [
            (false, false, "server authentication"),
            (true, false, "server authentication"),
            (false, true, "the name h1 as a DNS SAN"),
        ] {
            let id = identity(&ca, "h1", san, server);
            let Migrations::Refused { why, .. } =
                Migrations::tunnel("127.0.0.1".parse().unwrap(), tmp.path(), &id)
            else {
                panic!("an old certificate was taken");
            };
            assert!(why.contains(lacks), "{why}");
            assert!(why.contains("panal host token create --host h1"), "{why}");
        }
    }

    /// The kernel's queues of a tunnel connection stay short (no autotuning to megabytes).
    #[tokio::test]
    async fn tunnel_sockets_have_bounded_buffers() {
        let limit = |f: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{f}"))
                .ok()
                .and_then(|v| v.trim().parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        };
        let socket = tcp_socket("127.0.0.1".parse().unwrap()).unwrap();
        // Linux doubles what is asked, up to its ceiling (`wmem_max`, `rmem_max`).
        assert_eq!(
            socket.send_buffer_size().unwrap(),
            2 * SOCKET_BUFFER.min(limit("wmem_max"))
        );
        assert_eq!(
            socket.recv_buffer_size().unwrap(),
            2 * SOCKET_BUFFER.min(limit("rmem_max"))
        );
    }

    #[test]
    fn the_sockets_directory_is_private_and_paths_fit_a_socket_address() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("migrations");
        let t = tunnel(&identity(&ca(), "h1", true, true), &dir);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(t.socket(VmId::new(), "out").is_ok());
        let deep = tmp.path().join("x".repeat(100));
        let t = tunnel(&identity(&ca(), "h1", true, true), &deep);
        let e = t.socket(VmId::new(), "out").unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
    }
}
