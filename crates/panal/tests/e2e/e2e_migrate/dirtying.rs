//! A guest dirtying memory faster than the link: pre-copy gives up cleanly without
//! auto-converge, moves with it, and moves with post-copy.

use super::*;

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

        // Without auto-converge and with a 1 ms downtime limit (what is left must fit in 4 KiB
        // at 4 MiB/s), pre-copy never converges while the guest copies its file: given up,
        // cleanly. The link is slow enough for a guest starved of CPU by a busy host to still
        // dirty faster than it (at 16 MiB/s a loaded CI machine once let pre-copy converge), and
        // fast enough for the first pass over the guest's non-zero pages to take seconds, so the
        // test waits mostly for the agent's patience (20 s here).
        let a = client
            .migrate_vm(
                None,
                "busy",
                &VmMigrate {
                    to: Some(host(to)),
                    max_bandwidth: Some(4 << 20),
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
        // The source's decision is the cause given, not the target's failure to read the
        // stream the source then broke (whichever report arrived first).
        assert!(
            end.progress.message.contains(&format!(
                "stays on host {}: pre-copy does not converge",
                host(from)
            )),
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
