//! The `panal` binary as a user runs it: `panal up` in the foreground, the CLI driving the VM
//! lifecycle with `--wait`, JSON/YAML output, readable errors with non-zero exits, a clean stop
//! on SIGINT, recovery of everything after `kill -9` of the platform, and image import by URL
//! with progress, a checksum and the `--image-fetch-allow` range.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_panal");

/// A running `panal up`, killed on drop.
struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn up(dir: &Path, port: u16) -> Up {
    up_with(dir, port, &[])
}

fn up_with(dir: &Path, port: u16, extra: &[&str]) -> Up {
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--no-default-config",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("PANAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn panal up");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "panal up did not come up");
        match lines.next() {
            Some(Ok(l)) if l.starts_with("Panal is up") => break,
            Some(_) => continue,
            None => panic!("panal up exited early"),
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Up { child }
}

fn panal(cfg: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .expect("run panal")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn vm_json(cfg: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&panal(cfg, &["vm", "show", name, "-o", "json"]))).unwrap()
}

#[test]
fn cli_drives_the_lifecycle_and_state_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let port = free_port();
    let mut platform = up(&data, port);
    let cfg = data.join("client.toml");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the admin token is private");

    let out = ok(&panal(
        &cfg,
        &[
            "vm",
            "create",
            "web-1",
            "--hypervisor",
            "fake",
            "--vcpus",
            "1",
            "--memory",
            "256M",
            "--wait",
        ],
    ));
    assert!(out.contains("running"), "{out}");
    ok(&panal(
        &cfg,
        &[
            "vm",
            "create",
            "web-2",
            "--hypervisor",
            "fake",
            "--no-start",
            "--wait",
        ],
    ));
    ok(&panal(
        &cfg,
        &["vm", "create", "web-3", "--hypervisor", "fake", "--wait"],
    ));
    let list = ok(&panal(&cfg, &["vm", "list"]));
    assert!(list.starts_with("NAME"), "{list}");
    assert_eq!(list.lines().count(), 4, "{list}");
    let yaml = ok(&panal(&cfg, &["vm", "list", "-o", "yaml"]));
    assert!(yaml.contains("name: web-2"), "{yaml}");
    // Slots: refused while it runs (with the reason and a non-zero exit), taken once stopped.
    let bad = panal(&cfg, &["vm", "resize", "web-3", "--hotplug-slots", "6"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("stop it first") && err.contains("`hotplug_slots`"),
        "{err}"
    );
    ok(&panal(&cfg, &["vm", "stop", "web-3", "--wait"]));
    assert_eq!(vm_json(&cfg, "web-3")["status"]["phase"], "stopped");
    ok(&panal(
        &cfg,
        &["vm", "resize", "web-3", "--hotplug-slots", "6"],
    ));
    assert_eq!(vm_json(&cfg, "web-3")["spec"]["hotplug_slots"], 6);
    ok(&panal(&cfg, &["vm", "start", "web-3", "--wait"]));
    ok(&panal(&cfg, &["vm", "restart", "web-3", "--wait"]));
    let hosts = ok(&panal(&cfg, &["host", "list", "-o", "json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&hosts)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ok(&panal(&cfg, &["project", "create", "team-a"]));
    assert!(ok(&panal(&cfg, &["project", "list"])).contains("team-a"));
    assert!(ok(&panal(&cfg, &["operation", "list"])).contains("vm_restart"));

    // Bad input: a readable message, the field, and a non-zero exit.
    let bad = panal(&cfg, &["vm", "create", "../x", "--hypervisor", "fake"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid name") && err.contains("`name`"),
        "{err}"
    );
    let bad = panal(&cfg, &["vm", "create", "x", "--memory", "lots"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a size"));
    let bad = panal(&cfg, &["vm", "start", "web-1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("already running"));
    let bad = Command::new(BIN)
        .args([
            "--api",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            "nope",
            "vm",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unauthorized"));

    // kill -9 in the middle of nothing in particular: everything acknowledged must be back.
    let before: Vec<serde_json::Value> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|n| vm_json(&cfg, n))
        .collect();
    kill9(&mut platform);
    let platform = up(&data, port);
    for b in &before {
        let name = b["name"].as_str().unwrap();
        let a = vm_json(&cfg, name);
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["spec"], b["spec"]);
        assert_eq!(a["status"]["phase"], b["status"]["phase"], "{name}");
    }
    // Running VMs were re-attached, not restarted.
    std::thread::sleep(Duration::from_millis(500));
    let web1 = vm_json(&cfg, "web-1");
    let starts = web1["status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Started")
        .count();
    assert_eq!(starts, 1, "{web1}");
    ok(&panal(&cfg, &["vm", "delete", "web-1", "--wait"]));
    assert!(!panal(&cfg, &["vm", "show", "web-1"]).status.success());

    // Ctrl-C stops it cleanly.
    stop_with_sigint(platform);
}

fn kill9(up: &mut Up) {
    up.child.kill().unwrap(); // SIGKILL
    up.child.wait().unwrap();
}

fn stop_with_sigint(mut up: Up) {
    let pid = up.child.id() as i32;
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = up.child.try_wait().unwrap() {
            assert!(st.success(), "panal up exits 0 on Ctrl-C, got {st}");
            return;
        }
        assert!(Instant::now() < deadline, "panal up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn help_and_completions_work() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
    let out = Command::new(BIN)
        .args(["vm", "create", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--memory"));
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("_panal"));
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/client.toml", "vm", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/client.toml"));
}

#[test]
fn host_maintenance_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let _platform = up(&data, free_port());
    let cfg = data.join("client.toml");
    let hosts: serde_json::Value =
        serde_json::from_str(&ok(&panal(&cfg, &["host", "list", "-o", "json"]))).unwrap();
    let host = hosts[0]["name"].as_str().unwrap().to_owned();
    ok(&panal(
        &cfg,
        &["vm", "create", "solo", "--hypervisor", "fake", "--wait"],
    ));

    let out = ok(&panal(&cfg, &["host", "cordon", &host]));
    assert!(out.contains("cordoned"), "{out}");
    let out = ok(&panal(&cfg, &["host", "show", &host]));
    assert!(out.contains("cordoned"), "{out}");
    let out = ok(&panal(&cfg, &["host", "uncordon", &host]));
    assert!(out.contains("ready"), "{out}");

    // One host: the VM has nowhere to go, so the drain fails and the VM keeps running.
    let bad = panal(&cfg, &["host", "drain", &host]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("fits nowhere") && err.contains("1 draining"),
        "{err}"
    );
    assert_eq!(vm_json(&cfg, "solo")["status"]["phase"], "running");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&panal(&cfg, &["host", "show", &host, "-o", "json"]))).unwrap();
    assert_eq!(shown["state"], "cordoned");
    let out = ok(&panal(&cfg, &["host", "uncordon", &host, "--move-back"]));
    assert!(out.contains("ready"), "{out}");

    // Live migration from the CLI: every bad request is refused with its reason, nothing moves.
    for (args, says) in [
        (vec!["--downtime-limit", "0"], "downtime"),
        (vec!["--bandwidth", "-5"], "negative"),
        (vec!["--post-copy"], "accept_post_copy_risk"),
        (vec!["--to", host.as_str()], "already runs"),
        (vec!["--to", "nope"], "not found"),
        (vec!["--dry-run"], "no other host"),
        (vec!["--cancel"], "not migrating"),
    ] {
        let mut all = vec!["vm", "migrate", "solo"];
        all.extend(args.iter().copied());
        let bad = panal(&cfg, &all);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success(), "{all:?} succeeded");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    assert_eq!(vm_json(&cfg, "solo")["status"]["phase"], "running");

    let bad = panal(&cfg, &["host", "cordon", "nope"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("host \"nope\" not found"), "{err}");

    // An absurd overcommit label stops `panal up` before it starts anything.
    let out = Command::new(BIN)
        .args([
            "up",
            "--no-default-config",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--host-label",
            "panal.io/memory-overcommit=20",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .output()
        .expect("run panal up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("panal.io/memory-overcommit") && err.contains("from 1 to 8"),
        "{err}"
    );
}

/// Serves `body` at `/d.raw` on 127.0.0.2 in `pieces` pieces `pause` apart (404 elsewhere).
fn slow_http_server(body: Vec<u8>, pieces: usize, pause: Duration) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if !String::from_utf8_lossy(&req).starts_with("GET /d.raw ") {
                    let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes());
                for piece in body.chunks(body.len().div_ceil(pieces)) {
                    if s.write_all(piece).is_err() {
                        return;
                    }
                    std::thread::sleep(pause);
                }
            });
        }
    });
    addr
}

#[test]
fn image_import_by_url_from_the_cli() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8).collect();
    let sum = hex::encode(sha2::Sha256::digest(&body));
    let srv = slow_http_server(body, 8, Duration::from_millis(500));
    let _platform = up_with(&data, free_port(), &["--image-fetch-allow", "127.0.0.2/32"]);
    let cfg = data.join("client.toml");
    let url = format!("http://{srv}/d.raw");

    let out = panal(
        &cfg,
        &[
            "image",
            "import",
            "web",
            "--disk-url",
            &url,
            "--format",
            "raw",
            "--disk-sha256",
            &sum,
            "-o",
            "json",
        ],
    );
    let shown: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(shown["sha256"], sum.as_str());
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("image_import: disk: downloaded ") && progress.contains(" of 1.0 MiB"),
        "no download progress on stderr: {progress}"
    );

    // Refused at once: loopback outside the allowed range, with the field and the code.
    let out = panal(
        &cfg,
        &[
            "image",
            "import",
            "nope",
            "--disk-url",
            &url.replace("127.0.0.2", "127.0.0.1"),
            "--format",
            "raw",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[url_refused]") && err.contains("disk_url"),
        "{err}"
    );

    // A wrong checksum fails the operation, and the command with it.
    let out = panal(
        &cfg,
        &[
            "image",
            "import",
            "wrong",
            "--disk-url",
            &url,
            "--format",
            "raw",
            "--disk-sha256",
            &"0".repeat(64),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[checksum_mismatch]"), "{err}");
    let list = ok(&panal(&cfg, &["image", "list", "-o", "json"]));
    assert!(
        list.contains("\"web\"") && !list.contains("\"wrong\""),
        "{list}"
    );
}

#[test]
fn volumes_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let fast = dir.path().join("fast");
    let _platform = up_with(
        &data,
        free_port(),
        &["--pool", &format!("fast={}", fast.display())],
    );
    let cfg = data.join("client.toml");
    let out = ok(&panal(&cfg, &["volume", "create", "data", "--size", "16M"]));
    assert!(out.contains("ready") && out.contains("16"), "{out}");
    ok(&panal(
        &cfg,
        &["vm", "create", "box", "--hypervisor", "fake", "--wait"],
    ));
    let out = ok(&panal(&cfg, &["volume", "attach", "data", "--vm", "box"]));
    assert!(out.contains("box"), "{out}");
    let shown = ok(&panal(&cfg, &["vm", "show", "box"]));
    assert!(
        shown.contains("Volumes") && shown.contains("data"),
        "{shown}"
    );
    ok(&panal(&cfg, &["vm", "snapshot", "create", "box", "s1"]));
    let list: serde_json::Value =
        serde_json::from_str(&ok(&panal(&cfg, &["volume", "list", "-o", "json"]))).unwrap();
    assert_eq!(list[0]["attached_to"], "box");
    assert_eq!(list[0]["snapshots"][0]["name"], "s1");

    // Readable refusals with a non-zero exit.
    let bad = panal(&cfg, &["volume", "resize", "data", "--size", "8M"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("only grow") && err.contains("size_bytes"),
        "{err}"
    );
    let bad = panal(&cfg, &["volume", "delete", "data"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("attached to VM \"box\""),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = panal(&cfg, &["volume", "create", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--size"));

    ok(&panal(&cfg, &["volume", "detach", "data"]));
    ok(&panal(
        &cfg,
        &["volume", "snapshot", "delete", "data", "s1"],
    ));
    let out = ok(&panal(&cfg, &["volume", "move", "data", "--pool", "fast"]));
    assert!(out.contains("fast"), "{out}");
    let bad = panal(&cfg, &["volume", "move", "data", "--host", "ghost"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("ghost") && err.contains("host"), "{err}");

    // Clones: linked by default, full on request (into another pool too).
    let out = ok(&panal(&cfg, &["volume", "clone", "data", "child"]));
    assert!(
        out.contains("Linked clone of") && out.contains("data"),
        "{out}"
    );
    let out = ok(&panal(
        &cfg,
        &[
            "volume", "clone", "data", "copy", "--full", "--pool", "default", "-o", "json",
        ],
    ));
    let copy: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(copy["pool"], "default", "{out}");
    assert!(copy.get("parent").is_none(), "{out}");
    let bad = panal(&cfg, &["volume", "clone", "data", "x", "--pool", "default"]);
    assert!(!bad.status.success(), "--pool goes with --full");

    // Export as an image, then a volume from it.
    let out = ok(&panal(
        &cfg,
        &["volume", "export", "copy", "copy-image", "--wait"],
    ));
    assert!(out.contains("copy-image") && out.contains("qcow2"), "{out}");
    let bad = panal(&cfg, &["volume", "export", "copy", "copy-image"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let images = ok(&panal(&cfg, &["image", "list", "-o", "json"]));
    assert!(images.contains("copy-image"), "{images}");
    for v in ["child", "copy"] {
        ok(&panal(&cfg, &["volume", "delete", v]));
    }
    ok(&panal(&cfg, &["volume", "delete", "data"]));
    let list = ok(&panal(&cfg, &["volume", "list", "-o", "json"]));
    assert_eq!(list.trim(), "[]");
}

/// Networks and security groups from the CLI: create, list, show, a VM with a NIC (not started:
/// no host plumbing in this test's namespace), the address it took, readable refusals with a
/// non-zero exit, and the cleanup order (VM, then network and group).
#[test]
fn networks_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let _platform = up_with(&data, free_port(), &[]);
    let cfg = data.join("client.toml");
    let out = ok(&panal(
        &cfg,
        &[
            "network",
            "create",
            "lan",
            "--cidr",
            "10.60.0.0/24",
            "--outbound-nat",
        ],
    ));
    assert!(
        out.contains("10.60.0.0/24") && out.contains("10.60.0.1"),
        "{out}"
    );
    let shown = ok(&panal(&cfg, &["network", "show", "lan"]));
    assert!(shown.contains("outbound NAT  true"), "{shown}");
    let out = ok(&panal(&cfg, &["security-group", "create", "web"]));
    assert!(out.contains("egress") && out.contains("anywhere"), "{out}");
    let out = ok(&panal(
        &cfg,
        &[
            "security-group",
            "rule",
            "add",
            "web",
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--port",
            "8000-8100",
        ],
    ));
    assert!(out.contains("8000-8100"), "{out}");
    ok(&panal(
        &cfg,
        &[
            "vm",
            "create",
            "box",
            "--hypervisor",
            "fake",
            "--no-start",
            "--nic",
            "network=lan,sg=web",
        ],
    ));
    let shown = ok(&panal(&cfg, &["vm", "show", "box"]));
    assert!(
        shown.contains("NICs") && shown.contains("10.60.0.2"),
        "{shown}"
    );
    let ports = ok(&panal(&cfg, &["network", "ports", "lan"]));
    assert!(
        ports.contains("10.60.0.2") && ports.contains("box"),
        "{ports}"
    );

    // Readable refusals with a non-zero exit.
    let refused = |args: &[&str], needles: &[&str]| {
        let out = panal(&cfg, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err}");
        }
    };
    refused(
        &["network", "create", "dup", "--cidr", "10.60.0.0/25"],
        &["overlaps", "cidr"],
    );
    refused(
        &["network", "create", "bad", "--cidr", "10.61.0.1/24"],
        &["host bits"],
    );
    refused(&["network", "delete", "lan"], &["still has NICs"]);
    refused(
        &["security-group", "delete", "web"],
        &["used by VM \"box\""],
    );
    refused(
        &[
            "security-group",
            "rule",
            "add",
            "web",
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--port",
            "90-80",
        ],
        &["port_max"],
    );
    refused(
        &[
            "vm",
            "create",
            "b2",
            "--hypervisor",
            "fake",
            "--no-start",
            "--nic",
            "network=lan,ip=10.60.0.2",
        ],
        &["already taken", "nics[0].ip"],
    );
    refused(
        &["vm", "create", "b3", "--nic", "ip=10.60.0.9"],
        &["network=NAME"],
    );

    ok(&panal(&cfg, &["vm", "delete", "box", "--wait"]));
    ok(&panal(&cfg, &["network", "delete", "lan"]));
    ok(&panal(&cfg, &["security-group", "delete", "web"]));
    let list = ok(&panal(&cfg, &["network", "list", "-o", "json"]));
    assert_eq!(list.trim(), "[]");
}
