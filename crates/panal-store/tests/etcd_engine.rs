//! etcd-engine behaviour beyond the conformance suite, on real etcd clusters on loopback:
//! clear and quick errors for an unreachable cluster and for bad credentials, writes going on
//! with one member of three down, bounded failure without a quorum, and recovery.

use panal_store::etcd::testing::{ClusterStore, EtcdCluster};
use panal_store::etcd::{EtcdOptions, EtcdStore};
use panal_store::{Store, StoreError, StoreExt};
use std::time::{Duration, Instant};

/// Retries `put` until it succeeds or `within` passes; returns how long it took.
async fn put_eventually(store: &EtcdStore, key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match store.put(key, b"v".to_vec()).await {
            Ok(_) => return start.elapsed(),
            Err(e) if start.elapsed() < within => {
                eprintln!("put {key} not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put {key} still failing after {within:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_fast_and_clearly() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let opts = EtcdOptions::new([endpoint.clone()]).connect_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let res = EtcdStore::connect(opts).await;
    let took = start.elapsed();
    match res {
        Err(StoreError::Unavailable(msg)) => {
            assert!(msg.contains(&endpoint), "message names the endpoint: {msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_are_invalid() {
    let none: Vec<String> = Vec::new();
    assert!(matches!(
        EtcdStore::connect(EtcdOptions::new(none)).await,
        Err(StoreError::Invalid(_))
    ));
    let mut half = EtcdOptions::new(["http://127.0.0.1:1"]);
    half.user = Some("root".into());
    assert!(matches!(
        EtcdStore::connect(half).await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked() {
    let cluster = EtcdCluster::start(1).await.expect("cluster");
    cluster.enable_auth("s3cret").await.expect("enable auth");

    let start = Instant::now();
    match EtcdStore::connect(cluster.options().credentials("root", "wrong")).await {
        Err(StoreError::AccessDenied(msg)) => {
            assert!(msg.contains("refused the credentials"), "{msg}")
        }
        other => panic!("wrong password: expected AccessDenied, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    match EtcdStore::connect(cluster.options()).await {
        Err(StoreError::AccessDenied(_)) => {}
        other => panic!("no credentials: expected AccessDenied, got {other:?}"),
    }

    let store = EtcdStore::connect(cluster.options().credentials("root", "s3cret"))
        .await
        .expect("right password");
    let rev = store.put("auth/k", b"v".to_vec()).await.expect("put");
    let kv = store.get("auth/k").await.expect("get").expect("present");
    assert_eq!((kv.value, kv.mod_revision), (b"v".to_vec(), rev));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_down_reads_and_writes_go_on() {
    let mut cs = ClusterStore::start(3).await.expect("cluster");
    cs.store.put("ha/before", b"v".to_vec()).await.expect("put");
    for victim in [0, 1] {
        // Each round kills one member (leader or follower, whichever it is) and brings it back
        // afterwards: the client must route around the dead endpoint meanwhile.
        cs.cluster.kill(victim);
        let took = put_eventually(&cs.store, "ha/first", Duration::from_secs(15)).await;
        eprintln!("member {victim} killed: first write after {took:?}");
        for i in 0..20 {
            let key = format!("ha/{victim}/{i}");
            let rev = cs.store.put(&key, b"x".to_vec()).await.expect("write");
            let kv = cs.store.get(&key).await.expect("read").expect("present");
            assert_eq!(kv.mod_revision, rev);
        }
        assert!(cs.store.get("ha/before").await.expect("read").is_some());
        cs.cluster.restart(victim).await.expect("restart member");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_loss_fails_in_bounded_time_then_recovers() {
    let mut cs = ClusterStore::start(3).await.expect("cluster");
    cs.store.put("q/before", b"v".to_vec()).await.expect("put");
    cs.cluster.kill(1);
    cs.cluster.kill(2);
    // Request timeout is 5 s (testing options); allow the client's margin and a loaded machine.
    let bound = Duration::from_secs(15);
    for attempt in 0..3 {
        let start = Instant::now();
        let res = tokio::time::timeout(Duration::from_secs(60), cs.store.put("q/k", vec![attempt]))
            .await
            .expect("a write without quorum must not hang");
        let took = start.elapsed();
        match res {
            Err(StoreError::Unavailable(msg)) => eprintln!("no quorum after {took:?}: {msg}"),
            other => panic!("without quorum a write must fail with Unavailable, got {other:?}"),
        }
        assert!(took < bound, "failure took {took:?}");
    }
    assert!(matches!(
        cs.store.get("q/before").await,
        Err(StoreError::Unavailable(_))
    ));

    cs.cluster.restart(1).await.expect("restart member 1");
    cs.cluster.restart(2).await.expect("restart member 2");
    put_eventually(&cs.store, "q/after", Duration::from_secs(30)).await;
    assert!(cs.store.get("q/before").await.expect("read").is_some());
}
