//! `kill -9` of the real `panal up` binary while three real VMs run: the QEMU processes outlive
//! it, and after `panal up` starts again on the same data directory the same processes (same
//! pids) are re-attached, every VM's status is `running`, and the re-attached VMs obey the API
//! (a console command answers, a stop ends that very process).

use crate::common_e2e;

use common_e2e::console::Console;
use common_e2e::up::Up;
use common_e2e::{BOOT, READY_LINE, Scratch, alive, op_ok, qemu_pid, tiny, wait_log, wait_phase};
use panal_types::vm::VmPhase;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_panal");
const NAMES: [&str; 3] = ["keep-1", "keep-2", "keep-3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_panal_up_keeps_vms_running_and_reattaches_them() {
    let s = Scratch::new();
    let up = Up::start(BIN, &s.data);
    up.wait_host().await;
    let c = up.client.clone();
    let mut ids = Vec::new();
    for name in NAMES {
        ids.push(c.create_vm(&tiny(name, 128)).await.expect("create").vm.id);
    }
    for name in NAMES {
        wait_phase(&c, name, VmPhase::Running, BOOT).await;
        wait_log(&c, name, READY_LINE, 1, BOOT).await;
    }
    let pids: Vec<u32> = ids
        .iter()
        .map(|id| qemu_pid(&s.data, *id).expect("QEMU runs"))
        .collect();

    let old = up.pid();
    up.kill9();
    assert!(!alive(old), "panal up survived kill -9");
    for (name, pid) in NAMES.iter().zip(&pids) {
        assert!(alive(*pid), "{name}: QEMU {pid} died with panal up");
    }

    let up = Up::start(BIN, &s.data);
    let c = up.client.clone();
    for ((name, id), pid) in NAMES.iter().zip(&ids).zip(&pids) {
        let vm = wait_phase(&c, name, VmPhase::Running, Duration::from_secs(30)).await;
        assert_eq!(vm.status.restarts, 0, "{name}: {:?}", vm.status);
        assert_eq!(
            qemu_pid(&s.data, *id),
            Some(*pid),
            "{name}: not the same QEMU process after the restart of panal up"
        );
    }
    // The guest is the same one, still at its shell: it answers a command over the console.
    let mut con = Console::open(&c, NAMES[0]).await;
    let out = con
        .run("echo still-$((40+2))", Duration::from_secs(20))
        .await;
    assert!(out.contains("still-42"), "{out}");
    drop(con);
    // Only one boot happened in each guest (no silent restart behind the same status).
    for name in NAMES {
        let log = common_e2e::console_log(&c, name).await;
        assert_eq!(log.matches(READY_LINE).count(), 1, "{name} booted again");
    }
    // The re-attached handle drives the very process: a stop ends it.
    op_ok(
        &c,
        &c.stop_vm(None, NAMES[1], true).await.expect("stop"),
        Duration::from_secs(60),
    )
    .await;
    assert!(!alive(pids[1]), "the stop did not end QEMU {}", pids[1]);
    for (i, name) in NAMES.iter().enumerate() {
        let phase = c.vm(None, name).await.expect("vm").status.phase;
        let want = if i == 1 {
            VmPhase::Stopped
        } else {
            VmPhase::Running
        };
        assert_eq!(phase, want, "{name}");
    }
    for name in NAMES {
        op_ok(
            &c,
            &c.delete_vm(None, name).await.expect("delete"),
            Duration::from_secs(60),
        )
        .await;
    }
    assert!(pids.iter().all(|p| !alive(*p)), "QEMU left after delete");
}
