//! Observation points inside a VM: nftables counters on `eth0` ingress (the netdev family sees
//! every frame that reaches the guest, ARP and IPv6 included), TCP listeners and connects, UDP
//! senders, all run on threads that entered the VM's namespace.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Vm, enter};

impl Vm {
    /// Adds a counter `name` of frames arriving at the guest that match `expr` (nft syntax).
    pub fn count(&self, name: &str, expr: &str) {
        let script = format!(
            "table netdev lab {{\n counter {name} {{ }}\n chain in {{ type filter hook ingress device eth0 priority -500; policy accept; }}\n}}\nadd rule netdev lab in {expr} counter name {name}\n"
        );
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .expect("nft");
        assert!(
            out.status.success(),
            "counter {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Packets counted so far by counter `name`.
    pub fn counted(&self, name: &str) -> u64 {
        let out = self.must(&["nft", "-j", "list", "counter", "netdev", "lab", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|i| i.get("counter"))
            .and_then(|c| c["packets"].as_u64())
            .expect("counter in output")
    }

    /// Whether a TCP connection to `addr` opens within 2 s, tried from inside the VM.
    pub fn connects(&self, addr: SocketAddr) -> bool {
        connects_from(&self.ns, addr)
    }

    /// A TCP listener on `port` inside the VM, accepting until dropped.
    pub fn listen(&self, port: u16) -> TcpServer {
        listen_in(&self.ns, port)
    }

    /// Sends one UDP datagram from `sport` to `dst:dport` (broadcast allowed) from inside the VM.
    pub fn send_udp(&self, sport: u16, dst: Ipv4Addr, dport: u16) {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter(&ns);
            let s = UdpSocket::bind(("0.0.0.0", sport)).expect("bind udp");
            s.set_broadcast(true).unwrap();
            for _ in 0..3 {
                s.send_to(b"offer-ish", (dst, dport)).expect("send udp");
            }
        })
        .join()
        .unwrap();
    }
}

impl super::Host {
    /// Whether a TCP connection to `addr` opens within 2 s, tried from the host's namespace.
    pub fn connects(&self, addr: SocketAddr) -> bool {
        connects_from(&self.ns, addr)
    }

    /// A TCP listener on `port` in the host's namespace, accepting until dropped.
    pub fn listen(&self, port: u16) -> TcpServer {
        listen_in(&self.ns, port)
    }
}

fn connects_from(ns: &str, addr: SocketAddr) -> bool {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
    .join()
    .unwrap()
}

fn listen_in(ns: &str, port: u16) -> TcpServer {
    let ns = ns.to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let (flag, seen) = (stop.clone(), peers.clone());
    let thread = std::thread::spawn(move || {
        enter(&ns);
        // Dual-stack: IPv4 peers arrive as IPv4-mapped IPv6 addresses.
        let l = TcpListener::bind(("::", port)).expect("bind");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !flag.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((_, SocketAddr::V4(peer))) => seen.lock().unwrap().push(*peer.ip()),
                Ok((_, SocketAddr::V6(peer))) => {
                    if let Some(v4) = peer.ip().to_ipv4_mapped() {
                        seen.lock().unwrap().push(v4);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    rx.recv().expect("listener up");
    TcpServer {
        stop,
        peers,
        thread: Some(thread),
    }
}

pub struct TcpServer {
    stop: Arc<AtomicBool>,
    peers: Arc<std::sync::Mutex<Vec<Ipv4Addr>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpServer {
    /// The source addresses of the connections accepted so far.
    pub fn peers(&self) -> Vec<Ipv4Addr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
