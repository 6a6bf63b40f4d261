//! Every kind of bad input the API must refuse with a 4xx, a stable code and the offending field,
//! and the proof that a refused request changed nothing.

use crate::common;

use common::{TestPlatform, assert_err, raw, start, start_with, wait_op};
use panal_types::vm::{HypervisorKind, VmCreate};
use reqwest::Method;
use serde_json::{Value, json};

async fn post_vm(tp: &TestPlatform, body: Value) -> (u16, Value) {
    raw(
        tp,
        Method::POST,
        "/api/v1/vms",
        Some(&tp.platform.token),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused() {
    let tp = start().await;
    let long = "a".repeat(64);
    for bad in [
        "",
        long.as_str(),
        "../x",
        "a,b",
        "-x",
        "x-",
        "a\u{0}b",
        "a b",
        "Web",
        "ä",
    ] {
        let got = post_vm(&tp, json!({"name": bad, "hypervisor": "fake"})).await;
        assert_err(&got, 400, "invalid_name", Some("name"));
        let got = raw(
            &tp,
            Method::POST,
            "/api/v1/projects",
            Some(&tp.platform.token),
            Some(&json!({"name": bad}).to_string()),
        )
        .await;
        assert_err(&got, 400, "invalid_name", Some("name"));
    }
    assert!(
        tp.client.all_vms(None).await.unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sizes_fields_and_references_are_refused() {
    let tp = start().await;
    let host = tp.client.list_hosts(None).await.unwrap().items.remove(0);
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"name": "a", "hypervisor": "fake", "vcpus": 0}),
            400,
            "invalid_value",
            Some("vcpus"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "vcpus": host.inventory.cpus + 1}),
            400,
            "invalid_value",
            Some("vcpus"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "vcpus": -1}),
            400,
            "invalid_value",
            Some("vcpus"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "vcpus": "two"}),
            400,
            "invalid_value",
            Some("vcpus"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "memory_bytes": 0}),
            400,
            "invalid_value",
            Some("memory_bytes"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "memory_bytes": (1u64 << 20) + 1}),
            400,
            "invalid_value",
            Some("memory_bytes"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "memory_bytes": host.inventory.memory_bytes + (1 << 30)}),
            400,
            "invalid_value",
            Some("memory_bytes"),
        ),
        (
            json!({"name": "a", "hypervisor": "vmware"}),
            400,
            "invalid_value",
            Some("hypervisor"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "machine": "pdp11"}),
            400,
            "invalid_value",
            Some("machine"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "colour": "blue"}),
            400,
            "unknown_field",
            Some("colour"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "project": "nope"}),
            404,
            "not_found",
            Some("project"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "image": "nope"}),
            404,
            "not_found",
            Some("image"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "labels": {"bad key": "x"}}),
            400,
            "invalid_value",
            Some("labels.bad key"),
        ),
        (
            json!({"name": "a", "hypervisor": "fake", "stop_timeout_secs": 0}),
            400,
            "invalid_value",
            Some("stop_timeout_secs"),
        ),
        (json!({"hypervisor": "fake"}), 400, "invalid_value", None),
    ];
    for (body, status, code, field) in cases {
        let got = post_vm(&tp, body.clone()).await;
        assert_eq!(got.0, status, "{body} -> {got:?}");
        assert_eq!(got.1["code"], code, "{body} -> {got:?}");
        if field.is_some() {
            assert_eq!(got.1["field"].as_str(), field, "{body} -> {got:?}");
        }
    }
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/vms",
        Some(&tp.platform.token),
        Some("{\"name\": "),
    )
    .await;
    assert_err(&got, 400, "malformed_body", None);
    let got = raw(
        &tp,
        Method::GET,
        "/api/v1/vms?colour=blue",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 400, "invalid_query", Some("colour"));
    let got = raw(
        &tp,
        Method::GET,
        "/api/v1/vms?limit=0",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 400, "invalid_query", Some("limit"));
    let got = raw(
        &tp,
        Method::GET,
        "/api/v1/vms?page_token=../x",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 400, "invalid_query", Some("page_token"));
    let got = raw(
        &tp,
        Method::GET,
        "/api/v1/operations/not-a-uuid",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 400, "invalid_value", Some("id"));
    let got = raw(
        &tp,
        Method::GET,
        &format!("/api/v1/operations/{}", uuid_like()),
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 404, "not_found", None);
    let got = raw(
        &tp,
        Method::GET,
        "/api/v1/vms/ghost",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 404, "not_found", None);
    assert!(
        tp.client.all_vms(None).await.unwrap().is_empty(),
        "nothing was created"
    );
}

fn uuid_like() -> &'static str {
    "7b6a3c1e-1111-4222-8333-444455556666"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_state_and_duplicates_conflict_naming_the_operation() {
    let dir = tempfile::tempdir().unwrap();
    let tp = start_with(dir, |c| {
        c.fake.stop_latency = std::time::Duration::from_millis(1500)
    })
    .await;
    let c = &tp.client;
    let create = VmCreate {
        name: "dup".into(),
        hypervisor: Some(HypervisorKind::Fake),
        ..VmCreate::default()
    };
    wait_op(c, &c.create_vm(&create).await.unwrap().operation).await;
    let got = post_vm(&tp, json!({"name": "dup", "hypervisor": "fake"})).await;
    assert_err(&got, 409, "already_exists", Some("name"));
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/vms/dup/start",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    assert!(
        got.1["message"]
            .as_str()
            .unwrap()
            .contains("already running")
    );

    // The first delete is slow (the fake stop takes 1.5 s); a second one names the first.
    let first = c.delete_vm(None, "dup").await.unwrap();
    let got = raw(
        &tp,
        Method::DELETE,
        "/api/v1/vms/dup",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    assert_eq!(
        got.1["operation"].as_str(),
        Some(first.operation.id.to_string().as_str())
    );
    assert!(got.1["message"].as_str().unwrap().contains("vm_delete"));
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/vms/dup/start",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    wait_op(c, &first.operation).await;
    let got = raw(
        &tp,
        Method::DELETE,
        "/api/v1/vms/dup",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 404, "not_found", None);

    // Stopping a stopped VM conflicts; so does restarting it.
    let stopped = VmCreate {
        name: "cold".into(),
        hypervisor: Some(HypervisorKind::Fake),
        start: Some(false),
        ..VmCreate::default()
    };
    wait_op(c, &c.create_vm(&stopped).await.unwrap().operation).await;
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/vms/cold/stop",
        Some(&tp.platform.token),
        Some("{}"),
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/vms/cold/restart",
        Some(&tp.platform.token),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_default_and_nonempty_cannot_be_deleted() {
    let tp = start().await;
    let t = tp.platform.token.clone();
    let got = raw(
        &tp,
        Method::DELETE,
        "/api/v1/projects/default",
        Some(&t),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/projects",
        Some(&t),
        Some(r#"{"name":"team-a"}"#),
    )
    .await;
    assert_eq!(got.0, 201);
    let got = raw(
        &tp,
        Method::POST,
        "/api/v1/projects",
        Some(&t),
        Some(r#"{"name":"team-a"}"#),
    )
    .await;
    assert_err(&got, 409, "already_exists", Some("name"));
    let got = post_vm(
        &tp,
        json!({"name": "w", "hypervisor": "fake", "project": "team-a"}),
    )
    .await;
    assert_eq!(got.0, 202, "{got:?}");
    let got = raw(
        &tp,
        Method::DELETE,
        "/api/v1/projects/team-a",
        Some(&t),
        None,
    )
    .await;
    assert_err(&got, 409, "conflict", None);
    // The same VM name is free in another project.
    let got = post_vm(&tp, json!({"name": "w", "hypervisor": "fake"})).await;
    assert_eq!(got.0, 202, "{got:?}");
    // The refused delete left the project usable.
    let got = post_vm(
        &tp,
        json!({"name": "w2", "hypervisor": "fake", "project": "team-a"}),
    )
    .await;
    assert_eq!(got.0, 202, "{got:?}");
    // While a delete holds the project (its mark is set), nothing new is created in it: this is
    // what closes the race between a delete's emptiness check and a concurrent create.
    tp.platform
        .app
        .repo()
        .update::<panal_types::project::Project, _>("/panal/projects/team-a", |p| {
            p.deleting = true;
            Ok(true)
        })
        .await
        .unwrap();
    let got = post_vm(
        &tp,
        json!({"name": "w3", "hypervisor": "fake", "project": "team-a"}),
    )
    .await;
    assert_err(&got, 409, "conflict", Some("project"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_get_401_without_detail() {
    let tp = start().await;
    for token in [None, Some("wrong"), Some(""), Some("panal_0000")] {
        let got = raw(&tp, Method::GET, "/api/v1/vms", token, None).await;
        assert_eq!(got.0, 401);
        assert_eq!(
            got.1,
            json!({"code": "unauthorized", "message": "unauthorized"})
        );
        let got = post_vm_with(&tp, token).await;
        assert_eq!(got.0, 401);
    }
    assert!(tp.client.all_vms(None).await.unwrap().is_empty());
    let got = raw(&tp, Method::GET, "/healthz", None, None).await;
    assert_eq!(got.0, 200);
}

async fn post_vm_with(tp: &TestPlatform, token: Option<&str>) -> (u16, Value) {
    raw(
        tp,
        Method::POST,
        "/api/v1/vms",
        token,
        Some(r#"{"name":"x","hypervisor":"fake"}"#),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_paginate() {
    let tp = start().await;
    for i in 0..7 {
        let got = post_vm(
            &tp,
            json!({"name": format!("p-{i}"), "hypervisor": "fake", "start": false}),
        )
        .await;
        assert_eq!(got.0, 202);
    }
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &token {
            Some(t) => format!("/api/v1/vms?limit=3&page_token={t}"),
            None => "/api/v1/vms?limit=3".to_string(),
        };
        let (status, body) = raw(&tp, Method::GET, &q, Some(&tp.platform.token), None).await;
        assert_eq!(status, 200);
        pages += 1;
        for item in body["items"].as_array().unwrap() {
            names.push(item["name"].as_str().unwrap().to_owned());
        }
        match body["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("p-{i}")).collect::<Vec<_>>());
}
