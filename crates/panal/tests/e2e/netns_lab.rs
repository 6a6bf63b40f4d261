//! Self-tests of the network lab (`common_netns`) that the multi-host end-to-end tests stand on:
//! every host and the gateway have their own address and reach each other, nothing reaches out
//! of the lab or into it from the root namespace, a cut host is off at once and back at once
//! after restore while its processes keep running, and dropping a lab, also in a panicking test
//! or thread, leaves no namespace, link or process behind; leftovers of dead runs are swept.

use crate::common_e2e;
use crate::common_netns;

use common_e2e::alive;
use common_netns::NetLab;
use common_netns::names::{Names, owner};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a connect may take inside the lab before the test calls the peer unreachable.
const CONNECT: Duration = Duration::from_secs(1);

/// A TCP connect from host `from` (or the gateway for `None`) to `to`.
fn connect(lab: &NetLab, from: Option<usize>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let go = || TcpStream::connect_timeout(&to, CONNECT);
    match from {
        Some(i) => lab.in_host(i, go),
        None => lab.in_gateway(go),
    }
}

/// A listener on the gateway's address (the handshake completes without `accept`).
fn gateway_listener(lab: &NetLab) -> (TcpListener, SocketAddr) {
    let l = lab.in_gateway(|| TcpListener::bind((lab.gateway_ip(), 0)).expect("bind gateway"));
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Whether a process spawned in host `i` connects to `to` (bash's `/dev/tcp`; the listener
/// sees one connection).
fn bash_connects(lab: &NetLab, i: usize, to: SocketAddr) -> bool {
    let script = format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port());
    let mut child = lab.spawn(
        i,
        Command::new("timeout")
            .args(["2", "bash", "-c", &script])
            .stderr(Stdio::null()),
    );
    child.wait().expect("wait bash").success()
}

/// Lab namespaces and links with `tag`, as `ip netns list` and `ip link show` see them
/// (`netns <name>`, `link <name>`).
fn leftovers(tag: &str) -> Vec<String> {
    let prefix = format!("{tag}-");
    // A veth's line names its bridge too (`master ...`): count each name once.
    let mut left = std::collections::BTreeSet::new();
    for (kind, args) in [
        ("netns", &["netns", "list"][..]),
        ("link", &["-o", "link", "show"]),
    ] {
        let out = Command::new("ip").args(args).output().expect("run ip");
        let text = String::from_utf8_lossy(&out.stdout);
        left.extend(
            text.split(|c: char| c.is_whitespace() || c == '@' || c == ':')
                .filter(|w| w.starts_with(&prefix))
                .map(|w| format!("{kind} {w}")),
        );
    }
    left.into_iter().collect()
}

/// Live processes whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(marker)
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// Waits until a process with `marker` in its command line runs.
fn wait_started(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids_with(marker).is_empty() {
        assert!(Instant::now() < deadline, "{marker} did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts in host `i` a `sleep` named `marker` in a session of its own, as a detached QEMU
/// would be, and waits until it runs. The marker travels in the environment so that only the
/// `sleep` has it in its command line.
fn detached_sleep(lab: &NetLab, i: usize, marker: &str) {
    let script = r#"setsid bash -c 'exec -a "$M" sleep 1000' </dev/null >/dev/null 2>&1 &"#;
    let mut bash = lab.spawn(
        i,
        Command::new("bash").args(["-c", script]).env("M", marker),
    );
    bash.wait().expect("wait bash");
    wait_started(marker);
}

#[test]
fn names_fit_ifnamsiz_and_name_their_owner() {
    // The largest pid Linux hands out and a process's 1296th lab still fit.
    let n = Names::new(4_194_304, 1295);
    for name in [n.bridge(), n.gateway(), n.host(98)] {
        assert!(name.len() <= 15, "{name} is too long for an interface");
        assert_eq!(owner(&name), Some(4_194_304), "{name}");
    }
    assert_eq!(owner("eth0"), None);
    assert_eq!(owner("pnl"), None);
    assert_eq!(owner("pnl!x-0-br"), None);
    // Names that are not this lab's, such as panal-net's own test namespaces, are never swept.
    assert_eq!(owner("pnl13462sg-b"), None);
    assert_eq!(owner("pnl3cf-0-veth"), None);
    assert_eq!(owner("pnl3cf-0-h"), None);
    assert_eq!(owner("pnl3cf-0-h1x"), None);
    let subnets: HashSet<[u8; 2]> = (0..1000).map(|c| Names::new(4321, c).subnet).collect();
    assert_eq!(subnets.len(), 1000, "labs of one process share a subnet");
}

#[test]
fn hosts_and_gateway_have_their_own_addresses_and_reach_each_other() {
    let lab = NetLab::new(3);
    let (gw, gw_addr) = gateway_listener(&lab);
    for i in 0..3 {
        // Right after `new`: no address detection or bridge learning to wait for.
        connect(&lab, Some(i), gw_addr)
            .unwrap_or_else(|e| panic!("host {i} -> gateway {gw_addr}: {e}"));
        let (_, peer) = gw.accept().expect("accept");
        assert_eq!(
            peer.ip(),
            lab.host_ip(i),
            "host {i} connects from its own address"
        );
        assert!(
            bash_connects(&lab, i, gw_addr),
            "a process spawned in host {i} reaches the gateway"
        );
        let (_, peer) = gw.accept().expect("accept");
        assert_eq!(
            peer.ip(),
            lab.host_ip(i),
            "a process spawned in host {i} runs there"
        );
    }
    for j in 0..3 {
        let l = lab.in_host(j, || TcpListener::bind((lab.host_ip(j), 0)).unwrap());
        let to = l.local_addr().unwrap();
        for i in (0..3).filter(|&i| i != j) {
            connect(&lab, Some(i), to).unwrap_or_else(|e| panic!("host {i} -> host {j}: {e}"));
        }
        connect(&lab, None, to).unwrap_or_else(|e| panic!("gateway -> host {j}: {e}"));
    }
}

#[test]
fn the_lab_is_sealed_off_from_the_root_namespace_and_the_world() {
    let lab = NetLab::new(1);
    let (_gw, gw_addr) = gateway_listener(&lab);
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    let root_addrs = String::from_utf8_lossy(&out.stdout);
    let subnet = format!(
        "10.{}.{}.",
        lab.gateway_ip().octets()[1],
        lab.gateway_ip().octets()[2]
    );
    assert!(
        !root_addrs.contains(&subnet),
        "root has a lab address:\n{root_addrs}"
    );
    assert!(
        TcpStream::connect_timeout(&gw_addr, CONNECT).is_err(),
        "the root namespace reached the gateway"
    );
    let outside: SocketAddr = (Ipv4Addr::new(192, 0, 2, 1), 80).into();
    let t0 = Instant::now();
    assert!(
        connect(&lab, Some(0), outside).is_err(),
        "a host has a route out"
    );
    assert!(
        connect(&lab, None, outside).is_err(),
        "the gateway has a route out"
    );
    assert!(t0.elapsed() < CONNECT, "no route out fails at once");
}

#[test]
fn cut_takes_one_host_off_at_once_and_restore_brings_it_back() {
    let lab = NetLab::new(3);
    let (gw, gw_addr) = gateway_listener(&lab);
    let h1 = lab.in_host(1, || TcpListener::bind((lab.host_ip(1), 0)).unwrap());
    let h1_addr = h1.local_addr().unwrap();
    // An established connection from host 1 and a process in it, both kept across the cut.
    let mut client = connect(&lab, Some(1), gw_addr).expect("connect before the cut");
    let (mut server, _) = gw.accept().unwrap();
    let mut sleeper = lab.spawn(1, Command::new("sleep").arg("1000"));

    lab.cut(1);
    let t0 = Instant::now();
    let err = connect(&lab, Some(1), gw_addr).expect_err("a cut host reached the gateway");
    assert!(
        t0.elapsed() < CONNECT,
        "a cut host's connect fails at once, not by timeout"
    );
    assert!(
        !bash_connects(&lab, 1, gw_addr),
        "a process in a cut host reached out"
    );
    assert!(
        connect(&lab, None, h1_addr).is_err(),
        "the gateway reached a cut host"
    );
    assert!(
        connect(&lab, Some(0), h1_addr).is_err(),
        "a host reached a cut host"
    );
    for i in [0, 2] {
        connect(&lab, Some(i), gw_addr).unwrap_or_else(|e| panic!("host {i} cut too: {e}"));
    }
    server.write_all(b"x").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let silent = client.read(&mut byte).expect_err("data crossed a cut link");
    assert!(
        matches!(
            silent.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "an established connection falls silent rather than breaking: {silent} (connect: {err})"
    );
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "the cut killed a process of the host"
    );

    lab.restore(1);
    connect(&lab, Some(1), gw_addr).expect("a restored host reaches the gateway at once");
    connect(&lab, Some(0), h1_addr).expect("a restored host is reached at once");
    // TCP retransmits what the partition held back: the old connection just resumes.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .read_exact(&mut byte)
        .expect("the held-back byte arrives after restore");
    assert_eq!(&byte, b"x");
}

#[test]
fn an_in_process_server_and_clients_run_in_the_gateway() {
    let lab = NetLab::new(2);
    let lab = &lab;
    lab.block_on_in_gateway(async move {
        let listener = tokio::net::TcpListener::bind((lab.gateway_ip(), 0))
            .await
            .expect("bind the gateway address on the runtime");
        let addr = listener.local_addr().unwrap();
        // A task on a worker thread connects: the workers live in the gateway too.
        let task = tokio::spawn(async move { tokio::net::TcpStream::connect(addr).await });
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip(), lab.gateway_ip());
        task.await
            .unwrap()
            .expect("a worker connects to the gateway");
        for i in 0..2 {
            let _c = connect(lab, Some(i), addr).expect("a host reaches the runtime's listener");
            let (_, peer) = listener.accept().await.unwrap();
            assert_eq!(peer.ip(), lab.host_ip(i));
        }
    });
}

#[test]
fn dropping_the_handle_kills_its_process_group() {
    let lab = NetLab::new(1);
    let marker = format!("{}-group", lab.tag());
    let mut bash = lab.spawn(
        0,
        Command::new("bash")
            .args(["-c", r#"(exec -a "$M" sleep 1000) & wait"#])
            .env("M", &marker),
    );
    wait_started(&marker);
    assert!(bash.try_wait().unwrap().is_none());
    drop(bash);
    assert!(
        pids_with(&marker).is_empty(),
        "the child's child outlived the handle"
    );
}

#[test]
fn dropping_the_lab_removes_everything_and_kills_every_process_inside() {
    let lab = NetLab::new(2);
    let tag = lab.tag().to_string();
    assert_eq!(
        leftovers(&tag).len(),
        2 * 3 + 1,
        "3 namespaces, 3 veths, 1 bridge"
    );
    let marker = format!("{tag}-detached");
    detached_sleep(&lab, 1, &marker);
    // A handle that outlives the lab: its process dies with the lab all the same.
    let mut kept = lab.spawn(0, Command::new("sleep").arg("1000"));
    drop(lab);
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    assert!(
        pids_with(&marker).is_empty(),
        "a detached process outlived the lab"
    );
    let status = kept
        .try_wait()
        .unwrap()
        .expect("the kept handle's process is dead");
    assert!(!status.success());
}

/// Makes a lab, starts a detached process in it, reports its tag and panics.
fn panicking_test_body(tag: &std::sync::Mutex<String>) {
    let lab = NetLab::new(2);
    *tag.lock().unwrap() = lab.tag().to_string();
    detached_sleep(&lab, 0, &format!("{}-panic", lab.tag()));
    panic!("the test body fails with a lab up");
}

#[test]
fn a_panicking_test_body_still_cleans_up() {
    let tag = std::sync::Mutex::new(String::new());
    let caught = std::panic::catch_unwind(|| panicking_test_body(&tag));
    assert!(caught.is_err());
    let tag = tag.into_inner().unwrap();
    assert!(!tag.is_empty(), "the lab was made");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    assert!(pids_with(&format!("{tag}-panic")).is_empty());
}

#[test]
fn a_panicking_thread_still_cleans_up() {
    let tag = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let t = {
        let tag = tag.clone();
        std::thread::spawn(move || panicking_test_body(&tag))
    };
    assert!(t.join().is_err());
    let tag = tag.lock().unwrap().clone();
    assert!(!tag.is_empty(), "the lab was made");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    assert!(pids_with(&format!("{tag}-panic")).is_empty());
}

#[test]
fn a_sweep_never_kills_in_the_root_namespace() {
    // Only the filter is exercised: a failure of a real kill here would kill the machine.
    let own = std::fs::File::open("/proc/self/ns/net").unwrap();
    let mut protected = vec![own];
    // PID 1's namespace is unreadable on some machines, even for root.
    protected.extend(std::fs::File::open("/proc/1/ns/net"));
    assert!(common_netns::ns::kill_targets(&protected).is_empty());
    let lab = NetLab::new(1);
    let host = std::fs::File::open(format!("/run/netns/{}", lab.netns_name(0))).unwrap();
    assert_eq!(common_netns::ns::kill_targets(&[host]).len(), 1);
}

/// The fake orphan of a dead run: on drop sweeps and kills it, so that the fake leftovers go
/// even when the sweep test fails half-way.
struct Orphan(std::process::Child);

impl Drop for Orphan {
    fn drop(&mut self) {
        NetLab::sweep_stale();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sweep_removes_leftovers_of_dead_owners_only() {
    let live = NetLab::new(1);
    // A pid that just died stands for a SIGKILLed test run.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let stale = Names::new(dead, 0);
    let (br, ns) = (stale.bridge(), stale.host(0));
    // The orphan runs in its namespace before the namespace has a name, so that a parallel
    // test's sweep never sees the name without the process.
    let marker = format!("{}-stale", stale.tag);
    let orphan = Orphan(
        Command::new("unshare")
            .args(["--net", "bash", "-c"])
            .arg(format!("exec -a {marker} sleep 1000"))
            .spawn()
            .unwrap(),
    );
    // Attach only once it has left the root namespace: attached before, the stale name would
    // stand for the root namespace itself.
    let root_ns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let orphan_ns = format!("/proc/{}/ns/net", orphan.0.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::metadata(&orphan_ns).map(|m| m.ino()).ok() == Some(root_ns) {
        assert!(
            Instant::now() < deadline,
            "the orphan did not leave the root namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let script = format!(
        "netns attach {ns} {}\nlink add name {br} type bridge\n\
         link add name {ns} type veth peer name eth0 netns {ns}\nlink set dev {ns} master {br}\n",
        orphan.0.id()
    );
    let mut ip = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ip.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(ip.wait().unwrap().success(), "make the leftovers");
    assert_eq!(leftovers(&stale.tag).len(), 3);

    NetLab::sweep_stale();
    assert_eq!(leftovers(&stale.tag), Vec::<String>::new());
    assert!(
        pids_with(&marker).is_empty(),
        "a process of a stale namespace survived"
    );
    drop(orphan);
    assert_eq!(
        leftovers(live.tag()).len(),
        2 * 2 + 1,
        "a live owner's lab was swept"
    );
}
