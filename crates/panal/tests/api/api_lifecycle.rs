//! The VM lifecycle through the REST API on the fake driver: create, stop, start, restart,
//! resize, delete; operations that complete; the restart policy after a crash; a guest power-off;
//! state recovered after a restart of the platform; the event stream resumed from a revision.

use crate::common;

use common::{eventually, start, start_in, wait_op};
use panal_types::operation::{OperationKind, OperationState};
use panal_types::vm::{HypervisorKind, PowerState, RestartPolicy, VmCreate, VmPhase, VmUpdate};

fn fake(name: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        ..VmCreate::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_completes_every_operation() {
    let tp = start().await;
    let c = &tp.client;
    let a = c.create_vm(&fake("web-1")).await.unwrap();
    assert_eq!(a.operation.kind, OperationKind::VmCreate);
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let vm = c.vm(None, "web-1").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Running);
    assert!(vm.status.host.is_some());
    assert!(
        vm.status
            .placement
            .as_deref()
            .unwrap_or("")
            .contains("1/1 hosts fit")
    );
    assert_eq!(tp.platform.fake_world.running_count(), 1);

    let a = c.stop_vm(None, "web-1", false).await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    assert_eq!(
        c.vm(None, "web-1").await.unwrap().status.phase,
        VmPhase::Stopped
    );
    assert_eq!(tp.platform.fake_world.running_count(), 0);

    let a = c.start_vm(None, "web-1").await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let a = c.restart_vm(None, "web-1").await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let vm = c.vm(None, "web-1").await.unwrap();
    assert!(
        vm.status.events.iter().any(|e| e.reason == "Restarted"),
        "{:?}",
        vm.status.events
    );

    let vm = c
        .update_vm(
            None,
            "web-1",
            &VmUpdate {
                vcpus: Some(2),
                memory_bytes: Some(1 << 30),
                ..VmUpdate::default()
            },
        )
        .await
        .unwrap();
    let world = tp.platform.fake_world.clone();
    let id = vm.id;
    assert!(
        eventually(5, || {
            let w = world.clone();
            async move { w.resources(id) == Some((2, 1 << 30)) }
        })
        .await,
        "resize reached the hypervisor"
    );

    let a = c.delete_vm(None, "web-1").await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let err = c.vm(None, "web-1").await.unwrap_err().to_string();
    assert!(err.contains("not_found"), "{err}");
    assert_eq!(tp.platform.fake_world.running_count(), 0);
    let host = c.list_hosts(None).await.unwrap().items.remove(0);
    assert_eq!(host.allocation.vms, 0, "resources given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_brings_a_crashed_vm_back_and_guest_poweroff_stops_it() {
    let tp = start().await;
    let c = &tp.client;
    let mut req = fake("crashy");
    req.restart_policy = Some(RestartPolicy::OnFailure);
    let a = c.create_vm(&req).await.unwrap();
    wait_op(c, &a.operation).await;
    let id = a.vm.id;
    assert!(tp.platform.fake_world.crash(id, "killed by test"));
    let c2 = c.clone();
    assert!(
        eventually(10, || {
            let c = c2.clone();
            async move {
                let vm = c.vm(None, "crashy").await.unwrap();
                vm.status.phase == VmPhase::Running && vm.status.restarts == 1
            }
        })
        .await,
        "restarted after the crash"
    );
    let vm = c.vm(None, "crashy").await.unwrap();
    assert!(
        vm.status.events.iter().any(|e| e.reason == "Restarting"),
        "{:?}",
        vm.status.events
    );

    // The guest powers itself off: on-failure does not restart it, and the desired state follows.
    assert!(tp.platform.fake_world.guest_poweroff(id));
    assert!(
        eventually(10, || {
            let c = c2.clone();
            async move {
                let vm = c.vm(None, "crashy").await.unwrap();
                vm.status.phase == VmPhase::Stopped && vm.spec.power_state == PowerState::Stopped
            }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_without_restarting_vms() {
    let tp = start().await;
    let a = tp.client.create_vm(&fake("keep")).await.unwrap();
    wait_op(&tp.client, &a.operation).await;
    let before = tp.client.vm(None, "keep").await.unwrap();
    let dir = tp.dir;
    tp.platform.shutdown().await;
    let tp = start_in(dir).await;
    let after = tp.client.vm(None, "keep").await.unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.status.phase, VmPhase::Running);
    // Give the agent time to converge, then check nothing was restarted.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = tp.client.vm(None, "keep").await.unwrap();
    assert!(
        !after
            .status
            .events
            .iter()
            .skip(before.status.events.len())
            .any(|e| e.reason == "Started"),
        "{:?}",
        after.status.events
    );
    assert_eq!(tp.platform.fake_world.running_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_from_a_revision() {
    let tp = start().await;
    let c = &tp.client;
    let rev = tp.platform.store.current_revision().await.unwrap();
    let a = c.create_vm(&fake("ev-1")).await.unwrap();
    wait_op(c, &a.operation).await;
    // A client that saw `rev` resumes and gets the VM's creation and its way to running.
    let mut events = c.events(Some(rev), Some("vm")).await.unwrap();
    let mut phases = Vec::new();
    let mut last_rev = rev;
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_secs(3), events.next()).await
    {
        let ev = ev.unwrap();
        assert!(ev.revision > last_rev, "revisions increase");
        last_rev = ev.revision;
        assert_eq!(ev.kind, "vm");
        let phase = ev
            .object
            .as_ref()
            .and_then(|o| o["status"]["phase"].as_str())
            .unwrap_or("")
            .to_owned();
        phases.push(phase.clone());
        if phase == "running" {
            break;
        }
    }
    assert_eq!(
        phases.first().map(String::as_str),
        Some("pending"),
        "{phases:?}"
    );
    assert_eq!(
        phases.last().map(String::as_str),
        Some("running"),
        "{phases:?}"
    );
}

/// A VM created stopped needs nothing from its host: the placement records it stopped and
/// settles its create, and its agent, finding the record already right, writes nothing. Two
/// writes in all (the create, the placement) instead of three, which on etcd is a third of a
/// burst of creates' writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_created_stopped_is_settled_by_its_placement_alone() {
    let tp = start().await;
    let c = &tp.client;
    let rev = tp.platform.store.current_revision().await.unwrap();
    let mut req = fake("cold-1");
    req.start = Some(false);
    let a = c.create_vm(&req).await.unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let vm = c.vm(None, "cold-1").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Stopped);
    assert!(vm.status.host.is_some());
    assert_eq!(vm.status.observed_generation, vm.generation);
    assert_eq!(vm.status.operation, None);
    // Long enough for the agent's converge and report, had it sent one.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut events = c.events(Some(rev), Some("vm")).await.unwrap();
    let mut phases = Vec::new();
    while let Ok(Some(ev)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), events.next()).await
    {
        let ev = ev.unwrap();
        phases.push(
            ev.object
                .as_ref()
                .and_then(|o| o["status"]["phase"].as_str())
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert_eq!(phases, ["pending", "stopped"], "the VM's writes");
    assert_eq!(tp.platform.fake_world.running_count(), 0);
    // And it starts like any other.
    let s = c.start_vm(None, "cold-1").await.unwrap();
    assert_eq!(
        wait_op(c, &s.operation).await.state,
        OperationState::Succeeded
    );
    assert_eq!(
        c.vm(None, "cold-1").await.unwrap().status.phase,
        VmPhase::Running
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_that_fits_nowhere_stays_pending_with_reasons() {
    let tp = start().await;
    let c = &tp.client;
    let host = c.list_hosts(None).await.unwrap().items.remove(0);
    // Each VM takes more than half of the host's memory: the second cannot fit.
    let half = (host.inventory.memory_bytes / 2 / (1 << 20) + 1) << 20;
    let mut req = fake("big-1");
    req.memory_bytes = Some(half);
    wait_op(c, &c.create_vm(&req).await.unwrap().operation).await;
    req.name = "big-2".into();
    let op = wait_op(c, &c.create_vm(&req).await.unwrap().operation).await;
    assert_eq!(op.state, OperationState::Failed);
    let vm = c.vm(None, "big-2").await.unwrap();
    assert_eq!(vm.status.phase, VmPhase::Pending);
    assert_eq!(
        vm.status.placement.as_deref(),
        Some("0/1 hosts fit: 1 insufficient memory")
    );
    // Freeing room lets it run without another request.
    wait_op(c, &c.delete_vm(None, "big-1").await.unwrap().operation).await;
    let c2 = c.clone();
    assert!(
        eventually(10, || {
            let c = c2.clone();
            async move { c.vm(None, "big-2").await.unwrap().status.phase == VmPhase::Running }
        })
        .await
    );
}
