//! A guest booted from a disk image with a volume on its host's local pool: cancelled during
//! the disk copy, drained live with its disks (the volume on its second slot, the first one
//! empty), and moved back with `move-back`, every file intact.

use super::*;

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
