//! A real VM's whole lifecycle through the API, on one platform with the QEMU driver (TCG
//! here): boot the tiny microvm guest and read its readiness line from the console log; a guest
//! counter typed over the websocket console stops while paused and continues after resume; a
//! reboot runs the guest's init again in the same QEMU; stop and start give a new QEMU and keep
//! the console history; SIGKILL of QEMU makes the VM failed with a reason and the `on_failure`
//! restart policy brings it back in a new QEMU; delete leaves no process behind.

use crate::common_e2e;

use common_e2e::console::Console;
use common_e2e::{BOOT, E2e, READY_LINE, alive, op_ok, qemu_pid, sigkill, tiny, wait_log};
use common_e2e::{wait_phase, wait_vm};
use panal_types::vm::{RestartPolicy, VmPhase};
use std::time::Duration;

const OP: Duration = Duration::from_secs(90);

fn ticks(s: &str) -> usize {
    s.matches("TICK-").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_vm_boots_pauses_reboots_stops_crashes_and_comes_back() {
    let e = E2e::start().await;
    let c = &e.client;
    let mut req = tiny("life", 128);
    req.restart_policy = Some(RestartPolicy::OnFailure);
    let a = c.create_vm(&req).await.expect("create");
    op_ok(c, &a, OP).await;
    let id = a.vm.id;
    wait_phase(c, "life", VmPhase::Running, BOOT).await;
    let log = wait_log(c, "life", READY_LINE, 1, BOOT).await;
    assert!(log.contains(READY_LINE), "{log}");
    let pid = qemu_pid(&e.data, id).expect("a live QEMU process");

    // Pause and resume: a counter typed into the guest's shell stops, then continues.
    let mut con = Console::open(c, "life").await;
    con.send("i=0; while true; do echo TICK-$i; i=$((i+1)); sleep 0.2; done &");
    con.wait_for("TICK-3", Duration::from_secs(30)).await;
    op_ok(c, &c.pause_vm(None, "life").await.expect("pause"), OP).await;
    wait_phase(c, "life", VmPhase::Paused, Duration::from_secs(10)).await;
    // A tick already on its way when the vCPUs stopped may still arrive: let it land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ticks(&con.since_offset());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ticks(&con.since_offset());
    assert_eq!(before, after, "the guest kept counting while paused");
    op_ok(c, &c.resume_vm(None, "life").await.expect("resume"), OP).await;
    wait_phase(c, "life", VmPhase::Running, Duration::from_secs(10)).await;
    let resumed_at = con.offset;
    for _ in 0..4 {
        con.wait_for("TICK-", Duration::from_secs(20)).await;
    }
    assert!(
        ticks(&con.text()[resumed_at..]) >= 4,
        "the guest did not continue counting after resume"
    );

    // Reboot: the guest's init runs again, in the same QEMU process.
    op_ok(c, &c.restart_vm(None, "life").await.expect("restart"), OP).await;
    wait_log(c, "life", READY_LINE, 2, BOOT).await;
    let vm = wait_phase(c, "life", VmPhase::Running, BOOT).await;
    assert!(
        vm.status.events.iter().any(|ev| ev.reason == "Restarted"),
        "{:?}",
        vm.status.events
    );
    assert_eq!(
        qemu_pid(&e.data, id),
        Some(pid),
        "a reboot keeps the process"
    );
    drop(con);

    // Stop (graceful) and start: a new QEMU; the console history is kept.
    op_ok(c, &c.stop_vm(None, "life", false).await.expect("stop"), OP).await;
    let vm = wait_phase(c, "life", VmPhase::Stopped, OP).await;
    assert!(
        !alive(pid),
        "QEMU {pid} still runs after stop: {:?}",
        vm.status
    );
    op_ok(c, &c.start_vm(None, "life").await.expect("start"), OP).await;
    wait_phase(c, "life", VmPhase::Running, BOOT).await;
    wait_log(c, "life", READY_LINE, 3, BOOT).await;
    let pid2 = qemu_pid(&e.data, id).expect("QEMU after start");
    assert_ne!(pid2, pid, "start runs a new QEMU");

    // SIGKILL of QEMU: failed with a reason, then the restart policy brings it back.
    sigkill(pid2);
    let vm = wait_vm(
        c,
        "life",
        "failed with a reason",
        Duration::from_secs(15),
        |v| v.status.phase == VmPhase::Failed && v.status.reason.is_some(),
    )
    .await;
    let why = vm.status.reason.unwrap_or_default();
    assert!(why.contains("hypervisor process ended"), "{why}");
    let vm = wait_vm(c, "life", "running again after a restart", BOOT, |v| {
        v.status.phase == VmPhase::Running && v.status.restarts == 1
    })
    .await;
    assert!(
        vm.status.events.iter().any(|ev| ev.reason == "Restarting"),
        "{:?}",
        vm.status.events
    );
    wait_log(c, "life", READY_LINE, 4, BOOT).await;
    let pid3 = qemu_pid(&e.data, id).expect("QEMU after the policy restart");
    assert_ne!(pid3, pid2, "the restart policy runs a new QEMU");

    // Delete: no process and no run directory left.
    op_ok(c, &c.delete_vm(None, "life").await.expect("delete"), OP).await;
    assert!(!alive(pid3), "QEMU {pid3} survived delete");
    assert!(
        !e.data.join("qemu/vms").join(id.to_string()).exists(),
        "run directory left after delete"
    );
}
