//! `POST /api/v1/vms:batch`: many VMs in one request, all or none. The happy path (every VM
//! placed and running, operations that complete), and each way a batch is refused whole: a bad
//! item (named as `vms[3].name`), too many or no items, a name twice in the batch, a name that
//! already exists. Then a batch larger than one etcd transaction, refused by its last chunk,
//! leaves nothing behind.

use crate::common;

use common::{raw, start, wait_op};
use panal_client::ClientError;
use panal_server::{App, AppConfig};
use panal_store::DynStore;
use panal_store::etcd::testing::ClusterStore;
use panal_types::operation::OperationState;
use panal_types::vm::{HypervisorKind, MAX_BATCH_CREATE, VmCreate, VmPhase};
use panal_types::{ApiError, ErrorCode};
use std::sync::Arc;

fn fake(name: &str) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        ..VmCreate::default()
    }
}

fn batch(prefix: &str, n: usize) -> Vec<VmCreate> {
    (1..=n).map(|i| fake(&format!("{prefix}-{i}"))).collect()
}

fn api(e: ClientError) -> ApiError {
    match e {
        ClientError::Api(e) => e,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_creates_every_vm_and_they_run() {
    let tp = start().await;
    let c = &tp.client;
    // The one local host admits 8 one-vCPU VMs (2 cores, 4 vCPUs per core by default).
    let accepted = c.create_vms(&batch("web", 6)).await.unwrap();
    assert_eq!(accepted.vms.len(), 6);
    for (i, item) in accepted.vms.iter().enumerate() {
        assert_eq!(
            item.name.as_str(),
            format!("web-{}", i + 1),
            "request order"
        );
        assert_eq!(item.project.as_str(), "default");
    }
    for item in &accepted.vms {
        let op = c.operation(&item.operation.to_string()).await.unwrap();
        assert_eq!(wait_op(c, &op).await.state, OperationState::Succeeded);
        let vm = c.vm(None, item.name.as_str()).await.unwrap();
        assert_eq!(vm.id, item.id);
        assert_eq!(vm.status.phase, VmPhase::Running);
    }
    assert_eq!(tp.platform.fake_world.running_count(), 6);
    // The operations list is oldest first (operation ids are time-ordered).
    let ops = c.list_operations(None).await.unwrap().items;
    let listed: Vec<_> = ops.iter().map(|o| o.id).collect();
    let made: Vec<_> = accepted.vms.iter().map(|v| v.operation).collect();
    assert_eq!(listed, made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_item_refuses_the_whole_batch_and_names_itself() {
    let tp = start().await;
    let c = &tp.client;
    let mut vms = batch("db", 6);
    vms[3].name = "Not A Name".into();
    let e = api(c.create_vms(&vms).await.unwrap_err());
    assert_eq!(e.field.as_deref(), Some("vms[3].name"), "{e:?}");
    assert!(e.message.starts_with("vms[3]: "), "{}", e.message);

    let mut vms = batch("db", 6);
    vms[4].vcpus = Some(0);
    let e = api(c.create_vms(&vms).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::InvalidValue);
    assert_eq!(e.field.as_deref(), Some("vms[4].vcpus"));

    let mut vms = batch("db", 6);
    vms[2].project = Some("nope".into());
    let e = api(c.create_vms(&vms).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(e.field.as_deref(), Some("vms[2].project"));

    assert!(c.all_vms(None).await.unwrap().is_empty(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_over_limit_and_unknown_fields_are_refused() {
    let tp = start().await;
    let c = &tp.client;
    let e = api(c.create_vms(&[]).await.unwrap_err());
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidValue, Some("vms"))
    );
    let e = api(c
        .create_vms(&batch("big", MAX_BATCH_CREATE + 1))
        .await
        .unwrap_err());
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidValue, Some("vms"))
    );
    assert!(e.message.contains("1001"), "{}", e.message);
    let (status, body) = raw(
        &tp,
        reqwest::Method::POST,
        "/api/v1/vms:batch",
        Some(&tp.platform.token),
        Some(r#"{"vms": [{"name": "a", "hypervisor": "fake"}], "extra": 1}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(c.all_vms(None).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_in_a_batch_are_refused() {
    let tp = start().await;
    let c = &tp.client;
    let mut vms = batch("app", 5);
    vms[4].name = "app-2".into();
    let e = api(c.create_vms(&vms).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::InvalidValue);
    assert_eq!(e.field.as_deref(), Some("vms[4].name"));
    assert!(c.all_vms(None).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_name_is_a_conflict_and_nothing_is_written() {
    let tp = start().await;
    let c = &tp.client;
    c.create_vm(&fake("svc-3")).await.unwrap();
    let e = api(c.create_vms(&batch("svc", 5)).await.unwrap_err());
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    assert_eq!(e.field.as_deref(), Some("vms[2].name"));
    let (status, _) = raw(
        &tp,
        reqwest::Method::POST,
        "/api/v1/vms:batch",
        Some(&tp.platform.token),
        Some(r#"{"vms": [{"name": "svc-3", "hypervisor": "fake"}]}"#),
    )
    .await;
    assert_eq!(status, 409);
    let names: Vec<String> = c
        .all_vms(None)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name.to_string())
        .collect();
    assert_eq!(names, vec!["svc-3"]);
}

/// etcd takes 64 VMs per transaction: a batch of 200 is four, and when the last one loses (a
/// name taken), the three written before are taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_a_batch_of_several_transactions_is_still_all_or_none() {
    let store: DynStore = Arc::new(
        ClusterStore::start(1)
            .await
            .expect("etcd (scripts/install-etcd.sh)"),
    );
    assert_eq!(store.max_txn_ops(), 128);
    let app = App::new(store.clone(), AppConfig::default());
    app.bootstrap().await.unwrap();
    app.create_vm(fake("n-190")).await.unwrap();
    let e = app.create_vms(batch("n", 200)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AlreadyExists);
    assert_eq!(e.field.as_deref(), Some("vms[189].name"));
    let vms = app.list_vms(None, Some(1000), None).await.unwrap().items;
    assert_eq!(vms.len(), 1, "only the VM created before the batch");
    let ops = app.list_operations(Some(1000), None).await.unwrap().items;
    assert_eq!(ops.len(), 1, "the batch's operations are gone too");

    let ok = app.create_vms(batch("m", 200)).await.unwrap();
    assert_eq!(ok.vms.len(), 200);
    assert_eq!(
        app.list_vms(None, Some(1000), None)
            .await
            .unwrap()
            .items
            .len(),
        201
    );
}
