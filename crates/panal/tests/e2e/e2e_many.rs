//! Five real VMs created at once through the API all boot: each reaches `running`, prints its
//! readiness line, runs in its own QEMU process, and the host's allocation counts all five.

use crate::common_e2e;

use common_e2e::{E2e, READY_LINE, op_ok, qemu_pid, tiny, wait_log, wait_phase};
use panal_types::vm::VmPhase;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Five TCG guests booting together on two cores take several times one boot.
const ALL_BOOT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_vms_at_once_all_boot() {
    let e = E2e::start().await;
    let c = &e.client;
    let names: Vec<String> = (1..=5).map(|i| format!("many-{i}")).collect();
    let t0 = Instant::now();
    let accepted = futures::future::join_all(names.iter().map(|n| {
        let c = c.clone();
        let req = tiny(n, 128);
        async move { c.create_vm(&req).await.expect("create") }
    }))
    .await;
    for a in &accepted {
        op_ok(c, a, ALL_BOOT).await;
    }
    for n in &names {
        wait_phase(c, n, VmPhase::Running, ALL_BOOT).await;
        wait_log(c, n, READY_LINE, 1, ALL_BOOT).await;
    }
    println!("5 VMs created at once: all ready after {:?}", t0.elapsed());
    let pids: BTreeSet<u32> = accepted
        .iter()
        .map(|a| qemu_pid(&e.data, a.vm.id).expect("QEMU runs"))
        .collect();
    assert_eq!(pids.len(), 5, "one QEMU process per VM: {pids:?}");
    let host = c.list_hosts(None).await.unwrap().items.remove(0);
    assert_eq!(host.allocation.vms, 5, "{:?}", host.allocation);
    for n in &names {
        let a = c.delete_vm(None, n).await.expect("delete");
        op_ok(c, &a, Duration::from_secs(60)).await;
    }
    assert!(
        pids.iter().all(|p| !common_e2e::alive(*p)),
        "QEMU left after delete"
    );
}
