//! Live migration across two namespace hosts with real QEMU guests: a `panal server` in the
//! lab's gateway namespace, two `panal agent`s each in its own namespace, a guest printing a
//! counter every 100 ms.
//!
//! Shows: the pre-flight check refuses bad requests before anything moves (and `dry_run` plans
//! without moving); a migration keeps the guest counting with no gap over 1 s and reports its
//! downtime; while one is in flight a second one and a delete are refused, and a cancel leaves
//! the guest running on the source with nothing left on the target. Then the failures: the
//! target's agent killed, the link between the hosts cut, the control plane killed and
//! restarted, each in the middle of a transfer: the VM ends up running on exactly one host and
//! the other holds no QEMU of it. Last, a guest booted from a disk image (its root disk local
//! to its host) with a volume on its host's local pool leaves with a drain, live, disks and all,
//! and comes back with `move-back`.
//!
//! One module per theme: `moves` (the counting guest, refusals, cancel, failures of either
//! side), `disks` (a guest with local disks drained and moved back), `dirtying` (a guest
//! dirtying memory faster than the link: auto-converge, post-copy). The helpers are here.

use crate::common_e2e;
use crate::common_netns;
use crate::common_pool;

use common_e2e::console::Console;
use common_e2e::{Scratch, tiny, wait_vm};
use common_netns::NetLab;
use common_pool::NsPool;
use panal_client::{Client, ClientError};
use panal_driver::qemu::READY_LINE;
use panal_types::Name;
use panal_types::migration::VmMigrate;
use panal_types::operation::{Operation, OperationState};
use panal_types::vm::{Vm, VmPhase};
use std::time::{Duration, Instant};

mod dirtying;
mod disks;
mod moves;

const RUNNING: Duration = Duration::from_secs(120);
const GUEST: Duration = Duration::from_secs(60);
/// A bandwidth that keeps a 128 MiB guest in flight for a good while.
const SLOW: i64 = 1 << 20;

/// Prints `TICK-n <guest uptime>` every 100 ms.
const COUNTER: &str =
    "i=0; while true; do echo TICK-$i $(cut -d' ' -f1 /proc/uptime); i=$((i+1)); sleep 0.1; done &";

/// Every `(n, uptime)` tick in a console text.
fn ticks(text: &str) -> Vec<(u64, f64)> {
    text.split("TICK-")
        .skip(1)
        .filter_map(|t| {
            let line = t.lines().next()?;
            let mut it = line.split_whitespace();
            let n = it.next()?.parse().ok()?;
            let up = it.next()?.parse().ok()?;
            Some((n, up))
        })
        .collect()
}

/// Creates the counting guest and waits until it runs and counts.
async fn counting_guest(pool: &NsPool<'_>, client: &Client, name: &str) -> (Vm, Console) {
    client.create_vm(&tiny(name, 128)).await.expect("create");
    let vm = wait_vm(client, name, "running", RUNNING, |v| {
        v.status.phase == VmPhase::Running
    })
    .await;
    // Typed once the guest's shell is up.
    wait_ready_line(pool, &vm, GUEST).await;
    let mut con = pool.console(&vm).await;
    con.send(COUNTER);
    con.wait_for("TICK-5 ", GUEST).await;
    (vm, con)
}

async fn wait_op(client: &Client, op: &Operation, timeout: Duration) -> Operation {
    let deadline = Instant::now() + timeout;
    loop {
        let cur = client
            .wait_operation(&op.id.to_string(), Duration::from_secs(2))
            .await
            .expect("operation");
        if cur.state.is_final() {
            return cur;
        }
        assert!(
            Instant::now() < deadline,
            "operation still {:?}: {}",
            cur.state,
            cur.progress.message
        );
    }
}

/// Waits until the transfer has really begun (the operation reports bytes sent).
async fn wait_sending(client: &Client, op: &Operation) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cur = client.operation(&op.id.to_string()).await.expect("op");
        if cur
            .migration
            .as_ref()
            .and_then(|m| m.transferred_bytes)
            .is_some_and(|b| b > 0)
        {
            return;
        }
        assert!(
            !cur.state.is_final() && Instant::now() < deadline,
            "the transfer never started: {:?} {}",
            cur.state,
            cur.progress.message
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>, status: u16, field: &str) -> String {
    match r {
        Err(e @ ClientError::Api(_)) => {
            let s = e.status();
            let ClientError::Api(error) = e else {
                unreachable!()
            };
            assert_eq!(s, Some(status), "status of {error:?}");
            assert_eq!(error.field.as_deref(), Some(field), "field of {error:?}");
            error.message
        }
        other => panic!("expected a {status} on {field}, got {other:?}"),
    }
}

fn other(i: usize) -> usize {
    1 - i
}

fn host(i: usize) -> String {
    format!("host-{i}")
}

/// The VM runs on host `on` only: its record says so, a QEMU of it runs there, none on the other.
async fn runs_only_on(pool: &NsPool<'_>, client: &Client, name: &str, on: usize) -> Vm {
    let vm = wait_vm(client, name, "settled", RUNNING, |v| {
        v.status.migration.is_none() && v.status.phase == VmPhase::Running
    })
    .await;
    assert_eq!(
        vm.status.host.as_ref().map(Name::as_str),
        Some(host(on).as_str())
    );
    let id = vm.id.to_string();
    assert!(pool.qemu_running(on, &id), "no QEMU of {name} on host-{on}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.qemu_running(other(on), &id)
        || pool.host_dir(other(on)).join("qemu/vms").join(&id).exists()
    {
        assert!(
            Instant::now() < deadline,
            "host-{} still holds {name}: QEMU running {}, run directory {}",
            other(on),
            pool.qemu_running(other(on), &id),
            pool.host_dir(other(on)).join("qemu/vms").join(&id).exists()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    vm
}

async fn wait_ready(client: &Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client
            .host(name)
            .await
            .is_ok_and(|h| h.state == panal_types::host::HostState::Ready)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the guest's shell is up (its console history, on its host, shows the ready line).
async fn wait_ready_line(pool: &NsPool<'_>, vm: &Vm, timeout: Duration) {
    let log = pool
        .host_dir(NsPool::host_of(vm))
        .join("qemu/vms")
        .join(vm.id.to_string())
        .join("console.log");
    let deadline = Instant::now() + timeout;
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains(READY_LINE)) {
        assert!(Instant::now() < deadline, "{} never became ready", vm.name);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn uptime(out: &str) -> f64 {
    out.split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {out:?}"))
}

/// Makes the guest rewrite 16 MiB of random data in a loop (zeros would not do: QEMU sends
/// zero pages as markers).
const DIRTY: &str = "dd if=/dev/urandom of=/root/seed bs=1M count=16 2>/dev/null; \
                     while true; do cp /root/seed /root/f; done &";

/// The move from host `from` to host `to` ran through the agents' TLS tunnel, each side
/// checking that the other is the host the migration names (each agent logs every connection it
/// carries, with the TLS version and cipher suite), the hypervisors talking only to their own
/// agent's private Unix sockets; and no copy of the keys was left for QEMU.
fn assert_sent_over_tls(pool: &NsPool<'_>, from: usize, to: usize) {
    use std::os::unix::fs::PermissionsExt;
    let log = |i: usize| {
        std::fs::read_to_string(pool.root.join(format!("agent-{i}.err.log"))).unwrap_or_default()
    };
    let sent = format!("outgoing migration channel: TLS to host {} (", host(to));
    let line = log(from)
        .lines()
        .find(|l| l.contains(&sent))
        .map(str::to_string);
    let line = line.expect("the source did not send through the tunnel");
    assert!(line.contains("TLSv1_3"), "{line}");
    let heard = format!("incoming migration channel: TLS from host {} (", host(from));
    assert!(
        log(to).contains(&heard),
        "the target did not receive through the tunnel"
    );
    assert!(
        log(from).contains("outgoing migration channel: Unix socket"),
        "the source's QEMU did not send to its agent's socket"
    );
    for i in [from, to] {
        let dir = pool.host_dir(i).join("migrations");
        let mode = std::fs::metadata(&dir)
            .expect("migrations dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{} on {}", dir.display(), host(i));
        assert!(!pool.host_dir(i).join("migration-tls").exists());
    }
}
