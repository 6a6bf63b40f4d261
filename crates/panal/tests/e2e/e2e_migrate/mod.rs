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

#[test]
fn a_running_guest_moves_between_hosts() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        let (vm, mut con) = counting_guest(&pool, &client, "mover").await;
        let from = NsPool::host_of(&vm);
        let to = other(from);

        // Refused before anything moves.
        let ask = |r: VmMigrate| {
            let client = client.clone();
            async move { client.migrate_vm(None, "mover", &r).await }
        };
        refused(
            ask(VmMigrate {
                to: Some(host(from)),
                ..VmMigrate::default()
            })
            .await,
            400,
            "to",
        );
        refused(
            ask(VmMigrate {
                to: Some("host-9".into()),
                ..VmMigrate::default()
            })
            .await,
            404,
            "to",
        );
        refused(
            ask(VmMigrate {
                downtime_limit_ms: Some(0),
                ..VmMigrate::default()
            })
            .await,
            400,
            "downtime_limit_ms",
        );
        refused(
            ask(VmMigrate {
                downtime_limit_ms: Some(86_400_000),
                ..VmMigrate::default()
            })
            .await,
            400,
            "downtime_limit_ms",
        );
        refused(
            ask(VmMigrate {
                max_bandwidth: Some(-1),
                ..VmMigrate::default()
            })
            .await,
            400,
            "max_bandwidth",
        );
        refused(
            ask(VmMigrate {
                post_copy: Some(true),
                ..VmMigrate::default()
            })
            .await,
            400,
            "accept_post_copy_risk",
        );
        client.cordon_host(&host(to)).await.expect("cordon");
        let why = refused(
            ask(VmMigrate {
                to: Some(host(to)),
                ..VmMigrate::default()
            })
            .await,
            409,
            "to",
        );
        assert!(why.contains("cordoned"), "{why}");
        refused(ask(VmMigrate::default()).await, 507, "to");
        client.uncordon_host(&host(to)).await.expect("uncordon");

        // A dry run plans and moves nothing.
        let plan = ask(VmMigrate {
            dry_run: Some(true),
            ..VmMigrate::default()
        })
        .await
        .expect("dry run");
        assert!(plan.operation.is_none() && plan.vm.is_none());
        assert_eq!(plan.plan.to.as_str(), host(to));
        assert_eq!(plan.plan.from.as_str(), host(from));
        let still = client.vm(None, "mover").await.expect("vm");
        assert!(still.status.migration.is_none() && still.status.operation.is_none());

        // The migration: the scheduler picks the other host.
        let started = ask(VmMigrate::default()).await.expect("migrate");
        let op = started.operation.expect("operation");
        let done = wait_op(&client, &op, Duration::from_secs(120)).await;
        assert_eq!(
            done.state,
            OperationState::Succeeded,
            "{}",
            done.progress.message
        );
        let figures = done.migration.clone().expect("figures");
        let downtime = figures.downtime_ms.expect("measured downtime");
        eprintln!(
            "migrated: {} (downtime {downtime} ms)",
            done.progress.message
        );
        let moved = runs_only_on(&pool, &client, "mover", to).await;
        assert!(moved.status.events.iter().any(|e| e.reason == "Migrated"));
        assert_sent_over_tls(&pool, from, to);
        // The guest went on counting on the target: no tick missing, no gap over 1 s.
        let before = ticks(&con.text());
        let last_before = before.last().expect("ticks before").0;
        let mut after_con = pool.console(&moved).await;
        after_con
            .wait_for(&format!("TICK-{} ", last_before + 8), GUEST)
            .await;
        let log = std::fs::read_to_string(
            pool.host_dir(to)
                .join("qemu/vms")
                .join(moved.id.to_string())
                .join("console.log"),
        )
        .expect("console history on the target");
        let mut all = before.clone();
        all.extend(ticks(&log));
        all.sort_by_key(|t| t.0);
        all.dedup_by_key(|t| t.0);
        assert!(
            all.last().unwrap().0 > last_before + 5,
            "the counter did not go on"
        );
        for w in all.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "tick {} is missing", w[0].0 + 1);
            assert!(
                w[1].1 - w[0].1 < 1.0,
                "the guest stalled {:.2} s between ticks {} and {}",
                w[1].1 - w[0].1,
                w[0].0,
                w[1].0
            );
        }
        drop(con);
        con = after_con;

        // A slow migration back: a second one and a delete are refused while it runs; a cancel
        // leaves the guest where it is and nothing on the target.
        let slow = ask(VmMigrate {
            max_bandwidth: Some(SLOW),
            ..VmMigrate::default()
        })
        .await
        .expect("migrate back");
        let op = slow.operation.expect("operation");
        wait_sending(&client, &op).await;
        let err = ask(VmMigrate::default()).await;
        refused(err, 409, "vm");
        match client.delete_vm(None, "mover").await {
            Err(e) if e.status() == Some(409) => {}
            other => panic!("a delete during a migration must be refused, got {other:?}"),
        }
        let shown = client.operation(&op.id.to_string()).await.expect("op");
        let p = shown.migration.expect("progress");
        assert!(
            p.total_bytes.is_some() && p.remaining_bytes.is_some(),
            "{p:?}"
        );
        client
            .cancel_migration(None, "mover")
            .await
            .expect("cancel");
        let end = wait_op(&client, &op, Duration::from_secs(60)).await;
        assert_eq!(
            end.state,
            OperationState::Cancelled,
            "{}",
            end.progress.message
        );
        runs_only_on(&pool, &client, "mover", to).await;
        let n = ticks(&con.text()).last().map(|t| t.0).unwrap_or(0);
        con.wait_for(&format!("TICK-{} ", n + 3), GUEST).await;
        // Room on the old host was given back: the VM can go there now.
        let again = ask(VmMigrate {
            to: Some(host(from)),
            ..VmMigrate::default()
        })
        .await
        .expect("migrate again");
        let end = wait_op(
            &client,
            &again.operation.expect("op"),
            Duration::from_secs(120),
        )
        .await;
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        runs_only_on(&pool, &client, "mover", from).await;
    });
}

#[test]
fn a_migration_survives_the_failure_of_either_side() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.start_server();
    let client = lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        client
    });
    let (vm, _con) = lab.block_on_in_gateway(counting_guest(&pool, &client, "victim"));
    let from = NsPool::host_of(&vm);
    let to = other(from);
    let slow = VmMigrate {
        to: Some(host(to)),
        max_bandwidth: Some(SLOW),
        ..VmMigrate::default()
    };

    let start = |req: VmMigrate| {
        lab.block_on_in_gateway(async {
            let a = client
                .migrate_vm(None, "victim", &req)
                .await
                .expect("migrate");
            let op = a.operation.expect("op");
            wait_sending(&client, &op).await;
            op
        })
    };

    // The target's agent dies mid-transfer: its lease lapses, the migration is cancelled, the
    // guest stays on the source; the restarted agent removes the incoming QEMU.
    let op = start(slow.clone());
    pool.kill_agent(to);
    lab.block_on_in_gateway(async {
        let end = wait_op(&client, &op, Duration::from_secs(60)).await;
        assert_eq!(
            end.state,
            OperationState::Failed,
            "{}",
            end.progress.message
        );
        eprintln!("target agent killed: {}", end.progress.message);
    });
    pool.start_agent(to, None);
    lab.block_on_in_gateway(async {
        runs_only_on(&pool, &client, "victim", from).await;
        wait_ready(&client, &host(to)).await;
    });

    // The link between the hosts is cut mid-transfer: the source gives up (or the target's
    // lease lapses first); the guest stays on the source; once the link is back the target
    // holds nothing.
    let op = start(slow.clone());
    lab.cut(to);
    lab.block_on_in_gateway(async {
        let end = wait_op(&client, &op, Duration::from_secs(90)).await;
        assert_eq!(
            end.state,
            OperationState::Failed,
            "{}",
            end.progress.message
        );
        eprintln!("link cut: {}", end.progress.message);
    });
    lab.restore(to);
    lab.block_on_in_gateway(async {
        runs_only_on(&pool, &client, "victim", from).await;
        wait_ready(&client, &host(to)).await;
    });

    // The control plane dies mid-transfer and comes back: the migration finishes.
    let op = start(VmMigrate {
        to: Some(host(to)),
        max_bandwidth: Some(4 << 20),
        ..VmMigrate::default()
    });
    pool.kill_server();
    std::thread::sleep(Duration::from_secs(3));
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        let end = wait_op(&client, &op, Duration::from_secs(120)).await;
        eprintln!(
            "control plane restarted: {:?} {}",
            end.state, end.progress.message
        );
        let on = if end.state == OperationState::Succeeded {
            to
        } else {
            from
        };
        runs_only_on(&pool, &client, "victim", on).await;
    });
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

#[test]
fn a_disk_guest_drains_live_and_moves_back_with_its_disk() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        // A q35 guest booted from a disk image: its root disk is an overlay on its host.
        let req = panal_types::vm::VmCreate {
            name: "disky".into(),
            image: Some("tiny-disk".into()),
            machine: Some(panal_types::vm::MachineProfile::Q35),
            vcpus: Some(1),
            memory_bytes: Some(256 << 20),
            ..panal_types::vm::VmCreate::default()
        };
        client.create_vm(&req).await.expect("create");
        let vm = wait_vm(&client, "disky", "running", RUNNING, |v| {
            v.status.phase == VmPhase::Running
        })
        .await;
        let from = NsPool::host_of(&vm);
        let to = other(from);
        // Firmware-less q35 from a disk under TCG boots slower than a microvm.
        wait_ready_line(&pool, &vm, Duration::from_secs(240)).await;
        let mut con = pool.console(&vm).await;
        let out = con
            .run(
                "echo before-the-move > /root/mark; sync; cat /root/mark",
                GUEST,
            )
            .await;
        assert!(out.contains("before-the-move"), "{out}");
        let up_before = uptime(&con.run("cat /proc/uptime", GUEST).await);
        // A data volume on its host's local pool, hot-plugged, with a pattern on it. A scratch
        // volume is plugged before it and unplugged after, so the data volume sits on the
        // second slot with the first one empty: the destination has to build that layout,
        // not one from the list of volumes (QEMU refuses device state for another layout).
        for name in ["scratch", "data"] {
            let created = client
                .create_volume(&panal_types::volume::VolumeCreate {
                    name: name.into(),
                    project: None,
                    size_bytes: Some(32 << 20),
                    format: None,
                    pool: None,
                    host: Some(host(from)),
                    source: None,
                })
                .await
                .expect("volume");
            let end = wait_op(&client, &created.operation, Duration::from_secs(120)).await;
            assert_eq!(
                end.state,
                OperationState::Succeeded,
                "{}",
                end.progress.message
            );
            let attached = client
                .attach_volume(None, name, "disky")
                .await
                .expect("attach");
            let end = wait_op(&client, &attached.operation, Duration::from_secs(120)).await;
            assert_eq!(
                end.state,
                OperationState::Succeeded,
                "{}",
                end.progress.message
            );
        }
        let detached = client.detach_volume(None, "scratch").await.expect("detach");
        let end = wait_op(&client, &detached.operation, Duration::from_secs(120)).await;
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        let slot_of_data = |vm: &Vm| vm.spec.volumes.iter().map(|v| v.slot).collect::<Vec<_>>();
        let vm = client.vm(None, "disky").await.expect("vm");
        assert_eq!(slot_of_data(&vm), [1], "the data volume keeps its slot");
        let source_file = client.volume(None, "data").await.expect("volume").file;
        let write = "dd if=/dev/urandom of=/root/pattern bs=1M count=8 2>/dev/null; \
                     dd if=/root/pattern of=/dev/vdc bs=1M conv=fsync 2>/dev/null; \
                     md5sum /root/pattern";
        let sum = con.run(write, GUEST).await;
        let sum = sum.split_whitespace().next().expect("md5").to_string();
        // vdc: the guest named the scratch volume vdb and keeps its names.
        let read_back = "dd if=/dev/vdc bs=1M count=8 2>/dev/null | md5sum";

        // The plan says the root disk and the volume are copied.
        let plan = client
            .migrate_vm(
                None,
                "disky",
                &VmMigrate {
                    dry_run: Some(true),
                    ..VmMigrate::default()
                },
            )
            .await
            .expect("dry run");
        assert_eq!(
            plan.plan.local_disks,
            vec!["root".to_string(), "data".to_string()]
        );

        // Cancelled during the disk copy (throttled): it stays, nothing is left on the target.
        let slow = client
            .migrate_vm(
                None,
                "disky",
                &VmMigrate {
                    max_bandwidth: Some(SLOW),
                    ..VmMigrate::default()
                },
            )
            .await
            .expect("migrate");
        let op = slow.operation.expect("op");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let cur = client.operation(&op.id.to_string()).await.expect("op");
            let p = cur.migration.clone().unwrap_or_default();
            if p.phase == "disks" && p.disk_done_bytes.is_some_and(|b| b > 0) {
                break;
            }
            assert!(
                !cur.state.is_final() && Instant::now() < deadline,
                "the disk copy was never seen under way: {:?} {} {p:?}",
                cur.state,
                cur.progress.message
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client
            .cancel_migration(None, "disky")
            .await
            .expect("cancel");
        let end = wait_op(&client, &op, Duration::from_secs(60)).await;
        assert_eq!(
            end.state,
            OperationState::Cancelled,
            "{}",
            end.progress.message
        );
        runs_only_on(&pool, &client, "disky", from).await;
        let target_pool = pool.host_dir(to).join("pools/default");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(&target_pool).is_ok_and(|mut d| d.next().is_some()) {
            assert!(
                Instant::now() < deadline,
                "the copy's volume file stayed on the target"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = con.run("cat /root/mark", GUEST).await;
        assert!(out.contains("before-the-move"), "{out}");

        // A drain moves it live, disk and all.
        let drain = client.drain_host(&host(from), false).await.expect("drain");
        let end = wait_op(&client, &drain.operation, Duration::from_secs(300)).await;
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        let moved = runs_only_on(&pool, &client, "disky", to).await;
        assert!(moved.status.events.iter().any(|e| e.reason == "Migrated"));
        assert_eq!(slot_of_data(&moved), [1]);
        assert_eq!(
            moved.status.home.as_ref().map(Name::as_str),
            Some(host(from).as_str())
        );
        drop(con);
        let mut con = pool.console(&moved).await;
        let out = con
            .run(
                "cat /root/mark; echo after-the-move >> /root/mark; sync",
                GUEST,
            )
            .await;
        assert!(
            out.contains("before-the-move"),
            "the file did not move: {out}"
        );
        let up_after = uptime(&con.run("cat /proc/uptime", GUEST).await);
        assert!(
            up_after > up_before,
            "the guest rebooted: {up_before} -> {up_after}"
        );
        // The volume moved: same data in the guest, its record on the target under a new file,
        // the source's file gone.
        let there = con
            .run(
                &format!("echo 3 > /proc/sys/vm/drop_caches; {read_back}"),
                GUEST,
            )
            .await;
        assert!(
            there.contains(&sum),
            "the volume's data did not move: {there} vs {sum}"
        );
        let v = client.volume(None, "data").await.expect("volume");
        assert_eq!(v.host.as_str(), host(to));
        assert_ne!(v.file, source_file);
        assert!(
            pool.host_dir(to)
                .join("pools/default")
                .join(&v.file)
                .exists()
        );
        let old = pool.host_dir(from).join("pools/default").join(&source_file);
        let deadline = Instant::now() + Duration::from_secs(30);
        while old.exists() {
            assert!(
                Instant::now() < deadline,
                "the source's copy {} stayed",
                old.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // Back home: uncordon, then move back.
        client.uncordon_host(&host(from)).await.expect("uncordon");
        let back = client.move_back(&host(from)).await.expect("move back");
        assert!(back.skipped.is_empty(), "{:?}", back.skipped);
        assert_eq!(back.migrations.len(), 1);
        let end = wait_op(&client, &back.migrations[0], Duration::from_secs(300)).await;
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        let home = runs_only_on(&pool, &client, "disky", from).await;
        assert!(home.status.home.is_none());
        drop(con);
        let mut con = pool.console(&home).await;
        let out = con.run("cat /root/mark", GUEST).await;
        assert!(
            out.contains("before-the-move") && out.contains("after-the-move"),
            "the disk lost a write: {out}"
        );
        let back_home = con
            .run(
                &format!("echo 3 > /proc/sys/vm/drop_caches; {read_back}"),
                GUEST,
            )
            .await;
        assert!(
            back_home.contains(&sum),
            "the volume's data did not come back: {back_home}"
        );
        assert_eq!(
            client.volume(None, "data").await.unwrap().host.as_str(),
            host(from)
        );
    });
}

/// Makes the guest rewrite 16 MiB of random data in a loop (zeros would not do: QEMU sends
/// zero pages as markers).
const DIRTY: &str = "dd if=/dev/urandom of=/root/seed bs=1M count=16 2>/dev/null; \
                     while true; do cp /root/seed /root/f; done &";

#[test]
fn a_guest_dirtying_memory_faster_than_the_link() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        let (vm, mut con) = counting_guest(&pool, &client, "busy").await;
        con.send(DIRTY);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let from = NsPool::host_of(&vm);
        let to = other(from);

        // Without auto-converge and with a 1 ms downtime limit (what is left must fit in 16 KiB
        // at 16 MiB/s), pre-copy never converges while the guest copies its file: given up,
        // cleanly. The link is fast enough for the first pass over all 128 MiB to take seconds,
        // so the test waits mostly for the agent's patience (20 s here).
        let a = client
            .migrate_vm(
                None,
                "busy",
                &VmMigrate {
                    to: Some(host(to)),
                    max_bandwidth: Some(16 << 20),
                    downtime_limit_ms: Some(1),
                    auto_converge: Some(false),
                    ..VmMigrate::default()
                },
            )
            .await
            .expect("migrate");
        let end = wait_op(&client, &a.operation.expect("op"), Duration::from_secs(240)).await;
        eprintln!(
            "without auto-converge: {:?} {}",
            end.state, end.progress.message
        );
        assert_eq!(
            end.state,
            OperationState::Failed,
            "{}",
            end.progress.message
        );
        assert!(
            end.progress.message.contains("converge"),
            "{}",
            end.progress.message
        );
        runs_only_on(&pool, &client, "busy", from).await;
        let n = ticks(&con.text()).last().map(|t| t.0).unwrap_or(0);
        con.wait_for(&format!("TICK-{} ", n + 3), GUEST).await;

        // With auto-converge the guest is slowed until it does.
        let a = client
            .migrate_vm(
                None,
                "busy",
                &VmMigrate {
                    to: Some(host(to)),
                    max_bandwidth: Some(16 << 20),
                    ..VmMigrate::default()
                },
            )
            .await
            .expect("migrate");
        let end = wait_op(&client, &a.operation.expect("op"), Duration::from_secs(300)).await;
        eprintln!(
            "with auto-converge: {:?} {}",
            end.state, end.progress.message
        );
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        runs_only_on(&pool, &client, "busy", to).await;
    });
}

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

#[test]
fn post_copy_moves_a_guest_that_dirties_memory() {
    let scratch = Scratch::new();
    let lab = NetLab::new(2);
    let mut pool = NsPool::new(&lab, scratch.data.clone());
    pool.start_server();
    lab.block_on_in_gateway(async {
        let client = pool.client().await;
        pool.join_all(&client).await;
        let (vm, con) = counting_guest(&pool, &client, "busy").await;
        con.send(DIRTY);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let from = NsPool::host_of(&vm);
        // Opted in: after the first pass the guest runs on the other host and its memory
        // follows on demand; without auto-converge it still gets there.
        let a = client
            .migrate_vm(
                None,
                "busy",
                &VmMigrate {
                    to: Some(host(other(from))),
                    max_bandwidth: Some(4 << 20),
                    auto_converge: Some(false),
                    post_copy: Some(true),
                    accept_post_copy_risk: Some(true),
                    ..VmMigrate::default()
                },
            )
            .await
            .expect("migrate");
        let end = wait_op(&client, &a.operation.expect("op"), Duration::from_secs(240)).await;
        eprintln!("post-copy: {:?} {}", end.state, end.progress.message);
        assert_eq!(
            end.state,
            OperationState::Succeeded,
            "{}",
            end.progress.message
        );
        let moved = runs_only_on(&pool, &client, "busy", other(from)).await;
        let mut con = pool.console(&moved).await;
        let out = con.run("echo alive-$((6*7))", GUEST).await;
        assert!(out.contains("alive-42"), "{out}");
    });
}
