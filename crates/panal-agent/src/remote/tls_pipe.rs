//! Carrying one migration tunnel connection once its TLS handshake is done: two threads, one
//! each way, on blocking sockets, sharing the TLS session under a lock.
//!
//! Why threads and not the agent's async runtime: `perf` of a migration put the relays'
//! wake-ups (epoll, task scheduling) at ~40% of their CPU, more than the copies (~36%) or the
//! cipher (~18%). A thread blocked in `read` is woken by the kernel directly and reads again
//! without a round through a reactor.
//!
//! Locking: the session is locked only around CPU work (sealing, opening), never across I/O,
//! so neither direction waits on the other's socket. TLS records must reach the socket in the
//! order the session sealed them (their sequence numbers), so sealing and writing happen under
//! the socket's write lock, always taken before the session's.
//!
//! Ending: an end of stream on either side is passed on as a half-close (close_notify and a
//! shutdown of the TCP write side one way, a shutdown of the Unix write side the other). An
//! error either way shuts both sockets down, which wakes the other thread; so does dropping
//! the future of [`carry`] (the relay went away), even when a write is stuck on a dead link.

use parking_lot::Mutex;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// What the two threads share.
struct Shared {
    session: Mutex<rustls::Connection>,
    /// The TCP socket's write side: held while sealing records and writing them.
    tcp_writer: Mutex<TcpStream>,
    /// Handles for shutting both sockets down from anywhere.
    tcp: TcpStream,
    plain: UnixStream,
}

impl Shared {
    fn shut_down(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
        let _ = self.plain.shutdown(Shutdown::Both);
    }

    /// Seals `plain` (may be empty: then only what the session has queued, such as session
    /// tickets or an alert) and writes the records, in the order they were sealed.
    fn seal_and_send(&self, plain: &[u8], sealed: &mut Vec<u8>) -> std::io::Result<()> {
        let mut tcp = self.tcp_writer.lock();
        sealed.clear();
        {
            let mut session = self.session.lock();
            if !plain.is_empty() {
                session.writer().write_all(plain)?;
            }
            while session.wants_write() {
                session.write_tls(sealed)?;
            }
        }
        tcp.write_all(sealed)
    }
}

/// Shuts both sockets down when the carrying future is dropped (or done).
struct ShutDownOnDrop(Arc<Shared>);

impl Drop for ShutDownOnDrop {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

/// Carries `plain` (the hypervisor's socket) over `session` on `tcp` until both directions
/// have ended or one failed. `early`: bytes already read from `tcp` past the handshake.
pub async fn carry(
    mut session: rustls::Connection,
    tcp: TcpStream,
    plain: UnixStream,
    early: Vec<u8>,
    buffer: usize,
) -> std::io::Result<()> {
    // tokio left them non-blocking.
    tcp.set_nonblocking(false)?;
    plain.set_nonblocking(false)?;
    // Large writes are sealed at once (bounded by `buffer` per call).
    session.set_buffer_limit(None);
    let shared = Arc::new(Shared {
        session: Mutex::new(session),
        tcp_writer: Mutex::new(tcp.try_clone()?),
        tcp: tcp.try_clone()?,
        plain: plain.try_clone()?,
    });
    let guard = ShutDownOnDrop(shared.clone());
    let (up_done, up) = tokio::sync::oneshot::channel();
    let (down_done, down) = tokio::sync::oneshot::channel();
    let (s, from) = (shared.clone(), plain.try_clone()?);
    spawn("mig-seal", move || {
        let r = seal_up(&s, from, buffer);
        if r.is_err() {
            s.shut_down();
        }
        let _ = up_done.send(r);
    })?;
    let s = shared.clone();
    spawn("mig-open", move || {
        let r = open_down(&s, tcp, plain, early, buffer);
        if r.is_err() {
            s.shut_down();
        }
        let _ = down_done.send(r);
    })?;
    let (up, down) = tokio::join!(up, down);
    drop(guard);
    let lost = || std::io::Error::other("a tunnel thread ended without a word");
    up.map_err(|_| lost())??;
    down.map_err(|_| lost())?
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
}

/// The hypervisor's bytes, sealed, to the peer; its end of stream as close_notify.
fn seal_up(shared: &Shared, mut plain: UnixStream, buffer: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; buffer];
    let mut sealed = Vec::with_capacity(buffer + buffer / 8);
    // What the handshake left queued (a server's session tickets) goes first.
    shared.seal_and_send(&[], &mut sealed)?;
    loop {
        let n = match plain.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            shared.session.lock().send_close_notify();
            shared.seal_and_send(&[], &mut sealed)?;
            return shared.tcp.shutdown(Shutdown::Write);
        }
        shared.seal_and_send(&buf[..n], &mut sealed)?;
    }
}

/// The peer's records, opened, to the hypervisor; close_notify (or the TCP end) as a
/// half-close of the Unix socket.
fn open_down(
    shared: &Shared,
    mut tcp: TcpStream,
    mut plain: UnixStream,
    early: Vec<u8>,
    buffer: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; buffer.max(early.len())];
    // The first round opens what the handshake left: bytes read past it, and records the
    // session already opened (their plaintext waits in it).
    let mut n = early.len();
    buf[..n].copy_from_slice(&early);
    let mut opened = Vec::with_capacity(buffer);
    let mut sealed = Vec::new();
    loop {
        let (closed, reply) = {
            let mut session = shared.session.lock();
            let mut records = &buf[..n];
            let mut closed = false;
            loop {
                if !records.is_empty() {
                    session.read_tls(&mut records)?;
                    session
                        .process_new_packets()
                        .map_err(std::io::Error::other)?;
                }
                match session.reader().read_to_end(&mut opened) {
                    Ok(_) => closed = true,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if records.is_empty() {
                    break;
                }
            }
            (closed, session.wants_write())
        };
        plain.write_all(&opened)?;
        opened.clear();
        if reply {
            // A key update's answer, or an alert.
            shared.seal_and_send(&[], &mut sealed)?;
        }
        if closed {
            return plain.shutdown(Shutdown::Write);
        }
        n = loop {
            match tcp.read(&mut buf) {
                Ok(0) => return plain.shutdown(Shutdown::Write),
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
    }
}
