//! Conformance cases for leases: expiry deleting keys (with watch events), keep-alive,
//! revoke, and unknown leases. TTLs are 1-2 s; waits allow generous slack for loaded machines.

use super::{EVENT_TIMEOUT, next_events, ok};
use crate::{DynStore, LeaseId, Op, StoreError, StoreExt, Txn, WatchEvent};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn deleted_keys(evs: &[WatchEvent]) -> (BTreeSet<String>, BTreeSet<u64>) {
    let mut keys = BTreeSet::new();
    let mut revs = BTreeSet::new();
    for ev in evs {
        match ev {
            WatchEvent::Delete { key, revision } => {
                keys.insert(key.clone());
                revs.insert(*revision);
            }
            other => panic!("expected a delete event, got {other:?}"),
        }
    }
    (keys, revs)
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

async fn put_leased(store: &DynStore, key: &str, lease: LeaseId) -> u64 {
    let t = Txn::new().and_then(Op::put_with_lease(key, key.as_bytes().to_vec(), lease));
    ok(store.txn(t).await, "put with lease").revision
}

async fn wait_gone(store: &DynStore, key: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while ok(store.get(key).await, "get").is_some() {
        assert!(Instant::now() < deadline, "{key} outlived its lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An unrenewed lease expires and takes its keys with it, as watch Delete events.
pub async fn lease_expiry_deletes_keys(store: DynStore) {
    let lease = ok(store.lease_grant(Duration::from_secs(1)).await, "grant");
    put_leased(&store, "conf/e/1", lease).await;
    put_leased(&store, "conf/e/2", lease).await;
    ok(store.put("conf/e/free", Vec::new()).await, "put");
    let kv = ok(store.get("conf/e/1").await, "get").expect("present");
    assert_eq!(kv.lease, Some(lease));
    let from = ok(store.current_revision().await, "current_revision") + 1;
    let mut s = ok(store.watch("conf/e/", from).await, "watch");

    let (keys, revs) = deleted_keys(&next_events(&mut s, 2).await);
    assert_eq!(keys, set(&["conf/e/1", "conf/e/2"]));
    assert_eq!(revs.len(), 1, "one expiry is one revision");
    assert_eq!(ok(store.get("conf/e/1").await, "get"), None);
    assert!(
        ok(store.get("conf/e/free").await, "get").is_some(),
        "unleased key survives"
    );
    assert!(matches!(
        store.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Renewing a lease keeps its keys past the TTL; once renewals stop, they go.
pub async fn lease_keep_alive_extends(store: DynStore) {
    let lease = ok(store.lease_grant(Duration::from_secs(2)).await, "grant");
    put_leased(&store, "conf/k/1", lease).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ok(store.lease_keep_alive(lease).await, "keep_alive");
    }
    assert!(
        ok(store.get("conf/k/1").await, "get").is_some(),
        "a renewed lease must keep its key past its TTL"
    );
    wait_gone(&store, "conf/k/1").await;
}

/// Revoking ends the lease now and deletes its keys; a key re-put without the lease is detached.
pub async fn lease_revoke_deletes_keys(store: DynStore) {
    let lease = ok(store.lease_grant(Duration::from_secs(60)).await, "grant");
    put_leased(&store, "conf/v/1", lease).await;
    put_leased(&store, "conf/v/2", lease).await;
    put_leased(&store, "conf/v/detached", lease).await;
    ok(
        store.put("conf/v/detached", b"mine".to_vec()).await,
        "re-put without lease",
    );
    assert_eq!(
        ok(store.get("conf/v/detached").await, "get")
            .expect("present")
            .lease,
        None
    );
    let from = ok(store.current_revision().await, "current_revision") + 1;
    let mut s = ok(store.watch("conf/v/", from).await, "watch");

    ok(store.lease_revoke(lease).await, "revoke");
    let (keys, revs) = deleted_keys(&next_events(&mut s, 2).await);
    assert_eq!(keys, set(&["conf/v/1", "conf/v/2"]));
    assert_eq!(revs.len(), 1);
    assert_eq!(ok(store.get("conf/v/1").await, "get"), None);
    assert!(ok(store.get("conf/v/detached").await, "get").is_some());
    assert!(matches!(
        store.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Unknown leases are refused everywhere, and a refused put writes nothing.
pub async fn lease_not_found(store: DynStore) {
    let bogus = LeaseId(0x5eed_0000_1234);
    let rev = ok(store.put("conf/n/x", Vec::new()).await, "put");
    assert!(matches!(
        store.lease_keep_alive(bogus).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.lease_revoke(bogus).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    let t = Txn::new()
        .and_then(Op::put("conf/n/y", Vec::new()))
        .and_then(Op::put_with_lease("conf/n/z", Vec::new(), bogus));
    match store.txn(t).await {
        Err(StoreError::LeaseNotFound(_)) => {}
        other => panic!("put with an unknown lease must fail with LeaseNotFound, got {other:?}"),
    }
    assert_eq!(
        ok(store.get("conf/n/y").await, "get"),
        None,
        "the txn is all or nothing"
    );
    assert_eq!(ok(store.get("conf/n/z").await, "get"), None);
    assert_eq!(ok(store.current_revision().await, "current_revision"), rev);
}
