//! The counting guest moves between hosts with no gap over 1 s; bad requests, a second
//! migration and a delete are refused; cancel during pre-copy; the target agent killed, the link
//! cut and the control plane restarted mid-transfer each leave the VM on exactly one host.

use super::*;

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
