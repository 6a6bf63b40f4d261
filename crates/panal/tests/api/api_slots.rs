//! Device slots through the REST API on the fake driver: a VM's number of slots is fixed at
//! creation (asked for, or its devices plus two and at least four), each volume and NIC gets
//! the lowest free slot and keeps it while attached (a detached one's slot is reused, the
//! others do not move), a VM with every slot taken refuses another device with 409, bad
//! slot counts are refused with the field, and a stopped VM's slots can change (never below a
//! slot a device holds; a running VM's cannot).

use crate::common;

use common::networks::{fake_vm as nic_vm, network, nic, vm_with};
use common::{assert_err, call, start, wait_op};
use panal_types::operation::OperationState;
use panal_types::vm::{HypervisorKind, VmCreate};
use panal_types::volume::VolumeCreate;
use reqwest::Method;
use serde_json::json;

async fn volume(tp: &common::TestPlatform, name: &str) {
    let a = tp
        .client
        .create_volume(&VolumeCreate {
            name: name.into(),
            project: None,
            size_bytes: Some(1 << 20),
            format: None,
            pool: None,
            host: None,
            source: None,
        })
        .await
        .unwrap();
    assert_eq!(
        wait_op(&tp.client, &a.operation).await.state,
        OperationState::Succeeded
    );
}

async fn attach(tp: &common::TestPlatform, volume: &str, vm: &str) {
    let a = tp.client.attach_volume(None, volume, vm).await.unwrap();
    let end = wait_op(&tp.client, &a.operation).await;
    assert_eq!(end.state, OperationState::Succeeded, "{end:?}");
}

/// The slots of a VM's volumes, by volume name.
async fn volume_slots(tp: &common::TestPlatform, vm: &str) -> Vec<(String, u32)> {
    let vm = tp.client.vm(None, vm).await.unwrap();
    vm.spec
        .volumes
        .iter()
        .map(|v| (v.volume.to_string(), v.slot))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_keep_their_slot_and_a_full_vm_refuses_more() {
    let tp = start().await;
    let c = &tp.client;
    let a = c
        .create_vm(&VmCreate {
            name: "two".into(),
            hypervisor: Some(HypervisorKind::Fake),
            hotplug_slots: Some(2),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    assert_eq!(a.vm.spec.hotplug_slots, 2);
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    for v in ["a", "b", "c"] {
        volume(&tp, v).await;
    }
    attach(&tp, "a", "two").await;
    attach(&tp, "b", "two").await;
    assert_eq!(
        volume_slots(&tp, "two").await,
        [("a".to_string(), 0), ("b".to_string(), 1)]
    );

    // Both slots taken: refused before anything changes.
    let e = c.attach_volume(None, "c", "two").await.unwrap_err();
    assert_eq!(
        (e.status(), e.code(), e.field()),
        (Some(409), Some("conflict"), Some("vm"))
    );
    assert!(e.to_string().contains("no free slot"), "{e}");
    assert_eq!(c.volume(None, "c").await.unwrap().attached_to, None);

    // Detaching a frees slot 0 only: b stays where the guest (and any migration's
    // destination) has it, and c takes the freed slot.
    let d = c.detach_volume(None, "a").await.unwrap();
    assert_eq!(
        wait_op(c, &d.operation).await.state,
        OperationState::Succeeded
    );
    assert_eq!(volume_slots(&tp, "two").await, [("b".to_string(), 1)]);
    attach(&tp, "c", "two").await;
    assert_eq!(
        volume_slots(&tp, "two").await,
        [("b".to_string(), 1), ("c".to_string(), 0)]
    );

    // Without a number: four slots for a VM created with nothing attached.
    let a = c
        .create_vm(&VmCreate {
            name: "plain".into(),
            hypervisor: Some(HypervisorKind::Fake),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    assert_eq!(a.vm.spec.hotplug_slots, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nics_are_numbered_after_the_boot_volume_and_a_full_vm_refuses_a_nic() {
    let tp = start().await;
    network(&tp, json!({"name": "lan", "cidr": "10.5.0.0/24"})).await;
    // Three NICs: slots 0..3, and two spare.
    let vm = vm_with(
        &tp,
        nic_vm("three", vec![nic("lan"), nic("lan"), nic("lan")]),
    )
    .await;
    assert_eq!(vm.spec.hotplug_slots, 5);
    let slots: Vec<u32> = vm.spec.nics.iter().map(|n| n.slot).collect();
    assert_eq!(slots, [0, 1, 2]);

    // A boot volume comes first.
    volume(&tp, "root").await;
    let req = VmCreate {
        boot_volume: Some("root".into()),
        hotplug_slots: Some(2),
        start: Some(false),
        ..nic_vm("booted", vec![nic("lan")])
    };
    let a = tp.client.create_vm(&req).await.unwrap();
    assert_eq!(a.vm.spec.volumes[0].slot, 0);
    assert_eq!(a.vm.spec.nics[0].slot, 1);
    wait_op(&tp.client, &a.operation).await;
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/vms/booted/nics",
        Some(json!({"network": "lan"})),
    )
    .await;
    assert_err(&got, 409, "conflict", Some("vm"));
    assert!(
        got.1["message"].as_str().unwrap().contains("no free slot"),
        "{got:?}"
    );
    let vm = tp.client.vm(None, "booted").await.unwrap();
    assert_eq!(vm.spec.nics.len(), 1, "the refused NIC was not added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_vms_slots_change_and_a_running_ones_do_not() {
    let tp = start().await;
    let c = &tp.client;
    let a = c
        .create_vm(&VmCreate {
            name: "grow".into(),
            hypervisor: Some(HypervisorKind::Fake),
            hotplug_slots: Some(2),
            ..VmCreate::default()
        })
        .await
        .unwrap();
    assert_eq!(
        wait_op(c, &a.operation).await.state,
        OperationState::Succeeded
    );
    let patch = |body: serde_json::Value| call(&tp, Method::PATCH, "/api/v1/vms/grow", Some(body));

    // Running: refused, nothing changes.
    let got = patch(json!({"hotplug_slots": 4})).await;
    assert_err(&got, 409, "conflict", Some("hotplug_slots"));
    assert!(
        got.1["message"].as_str().unwrap().contains("stop it first"),
        "{got:?}"
    );
    assert_eq!(c.vm(None, "grow").await.unwrap().spec.hotplug_slots, 2);

    let s = c.stop_vm(None, "grow", false).await.unwrap();
    assert_eq!(
        wait_op(c, &s.operation).await.state,
        OperationState::Succeeded
    );
    for v in ["a", "b", "c", "d"] {
        volume(&tp, v).await;
    }
    attach(&tp, "a", "grow").await;
    attach(&tp, "b", "grow").await;
    let d = c.detach_volume(None, "a").await.unwrap();
    wait_op(c, &d.operation).await;
    // b keeps slot 1: one slot would take it away.
    let got = patch(json!({"hotplug_slots": 1})).await;
    assert_err(&got, 409, "conflict", Some("hotplug_slots"));
    let msg = got.1["message"].as_str().unwrap();
    assert!(msg.contains("volume \"b\" holds slot 1"), "{msg}");
    assert!(msg.contains("at least 2 slots"), "{msg}");
    // Bad numbers are refused before the VM is looked at.
    for bad in [json!(17), json!(-1), json!("four")] {
        let got = patch(json!({ "hotplug_slots": bad })).await;
        assert_eq!(got.0, 400, "{bad}: {got:?}");
        assert_eq!(got.1["field"], "hotplug_slots", "{bad}: {got:?}");
    }
    let before = c.vm(None, "grow").await.unwrap();
    assert_eq!(before.spec.hotplug_slots, 2, "nothing refused changed it");

    // Stopped, and above every slot held: taken, and the new slots are used.
    let got = patch(json!({"hotplug_slots": 3})).await;
    assert_eq!(got.0, 200, "{got:?}");
    let vm = c.vm(None, "grow").await.unwrap();
    assert_eq!(vm.spec.hotplug_slots, 3);
    assert_eq!(vm.generation, before.generation + 1);
    attach(&tp, "a", "grow").await;
    attach(&tp, "c", "grow").await;
    assert_eq!(
        volume_slots(&tp, "grow").await,
        [
            ("b".to_string(), 1),
            ("a".to_string(), 0),
            ("c".to_string(), 2)
        ]
    );
    // Full again: the refusal says how to make room.
    let e = c.attach_volume(None, "d", "grow").await.unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains("--hotplug-slots"), "{e}");

    // And it starts with them.
    let s = c.start_vm(None, "grow").await.unwrap();
    assert_eq!(
        wait_op(c, &s.operation).await.state,
        OperationState::Succeeded
    );
    assert_eq!(c.vm(None, "grow").await.unwrap().spec.hotplug_slots, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_slot_counts_are_refused_with_the_field() {
    let tp = start().await;
    network(&tp, json!({"name": "lan", "cidr": "10.5.0.0/24"})).await;
    let cases = [
        json!({"name": "x", "hypervisor": "fake", "hotplug_slots": 17}),
        json!({"name": "x", "hypervisor": "fake", "hotplug_slots": 1,
               "nics": [{"network": "lan"}, {"network": "lan"}]}),
        json!({"name": "x", "hypervisor": "fake", "hotplug_slots": -1}),
        json!({"name": "x", "hypervisor": "fake", "hotplug_slots": "four"}),
    ];
    for body in cases {
        let got = call(&tp, Method::POST, "/api/v1/vms", Some(body.clone())).await;
        assert_eq!(got.0, 400, "{body}: {got:?}");
        assert_eq!(got.1["field"], "hotplug_slots", "{body}: {got:?}");
    }
    assert!(
        tp.client
            .list_vms(None, None)
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was created"
    );
    // No slot at all is fine for a VM with no devices.
    let got = call(
        &tp,
        Method::POST,
        "/api/v1/vms",
        Some(json!({"name": "bare", "hypervisor": "fake", "hotplug_slots": 0})),
    )
    .await;
    assert_eq!(got.0, 202, "{got:?}");
}
