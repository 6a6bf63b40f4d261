//! Helpers of the network API tests (`api_networks.rs`, `api_security_groups.rs`): requests
//! with the admin token, refusals with their status, code and field, networks, projects, VMs
//! with NICs on the fake platform (whose host carries no networks, so their creates fail for
//! want of a host while their NICs keep their addresses), and the addresses a network hands out.

use super::{TestPlatform, call, eventually, wait_op};
use panal_types::ErrorCode;
use panal_types::network::{Network, NetworkPort, NicRequest};
use panal_types::operation::{Operation, OperationState};
use panal_types::vm::{HypervisorKind, Vm, VmCreate};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// Creates a network from a JSON body that must be accepted.
pub async fn network(tp: &TestPlatform, body: Value) -> Network {
    let (status, body) = call(tp, Method::POST, "/api/v1/networks", Some(body)).await;
    assert_eq!(status, 201, "{body}");
    serde_json::from_value(body).unwrap()
}

/// Creates a project through the API.
pub async fn project(tp: &TestPlatform, name: &str) {
    let got = call(
        tp,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(got.0, 201, "{got:?}");
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn nic(network: &str) -> NicRequest {
    NicRequest {
        network: network.into(),
        ..NicRequest::default()
    }
}

pub fn fake_vm(name: &str, nics: Vec<NicRequest>) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        nics,
        ..VmCreate::default()
    }
}

/// A raw VM create in the default project (for refusals the typed client would not build).
pub async fn post_vm(tp: &TestPlatform, name: &str, nics: Value) -> (u16, Value) {
    let body = json!({"name": name, "hypervisor": "fake", "nics": nics});
    call(tp, Method::POST, "/api/v1/vms", Some(body)).await
}

/// Creates a VM with NICs and waits for its create operation to end, so that it may be
/// deleted at once (a delete is refused while the create holds the VM).
pub async fn vm_with(tp: &TestPlatform, req: VmCreate) -> Vm {
    let a = tp.client.create_vm(&req).await.unwrap();
    settle(tp, &a.operation).await;
    a.vm
}

/// Waits for a create to end. Here it fails for want of a host carrying networks: the NICs
/// are still the VM's until it is deleted.
pub async fn settle(tp: &TestPlatform, op: &Operation) {
    let done = wait_op(&tp.client, op).await;
    assert_eq!(done.state, OperationState::Failed, "{done:?}");
    let e = done.error.expect("a failed operation says why");
    assert_eq!(e.code, ErrorCode::InsufficientCapacity, "{e:?}");
    assert!(e.message.contains("without virtual networks"), "{e:?}");
}

/// Deletes VMs and waits until they are gone (with them, their addresses).
pub async fn delete_vms(tp: &TestPlatform, project: Option<&str>, names: &[String]) {
    for n in names {
        tp.client.delete_vm(project, n).await.unwrap();
    }
    let gone = eventually(20, || async {
        tp.client
            .all_vms(project)
            .await
            .unwrap()
            .iter()
            .all(|v| !names.contains(&v.name.to_string()))
    })
    .await;
    assert!(gone, "VMs still listed after their delete");
}

pub async fn ports(tp: &TestPlatform, project: Option<&str>, net: &str) -> Vec<NetworkPort> {
    tp.client.network_ports(project, net).await.unwrap()
}

/// The addresses a network hands out.
pub async fn addresses(tp: &TestPlatform, net: &str) -> BTreeSet<Ipv4Addr> {
    ports(tp, None, net).await.iter().map(|p| p.ip).collect()
}
