//! Conformance cases for watches: replay from the past, live events, no gaps under concurrent
//! writers, per-transaction op order, and compaction.

use super::{assert_no_event, next_event, next_events, ok};
use crate::{DynStore, Op, StoreError, StoreExt, Txn, WatchEvent};
use futures::StreamExt;
use std::time::Duration;

fn put_of(ev: &WatchEvent) -> (&str, &[u8], u64) {
    match ev {
        WatchEvent::Put(kv) => (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
        other => panic!("expected a put event, got {other:?}"),
    }
}

fn delete_of(ev: &WatchEvent) -> (&str, u64) {
    match ev {
        WatchEvent::Delete { key, revision } => (key.as_str(), *revision),
        other => panic!("expected a delete event, got {other:?}"),
    }
}

/// A watch from an older revision replays what happened since, then continues live.
pub async fn watch_from_past_revision(store: DynStore) {
    let r1 = ok(store.put("conf/w/a", b"1".to_vec()).await, "put");
    let r2 = ok(store.put("conf/w/b", b"2".to_vec()).await, "put");
    ok(store.put("conf/other", b"x".to_vec()).await, "put");
    assert!(ok(store.delete("conf/w/a").await, "delete"));
    let r4 = ok(store.current_revision().await, "current_revision");

    let mut s = ok(store.watch("conf/w/", r1).await, "watch");
    let evs = next_events(&mut s, 3).await;
    assert_eq!(put_of(&evs[0]), ("conf/w/a", &b"1"[..], r1));
    assert_eq!(put_of(&evs[1]), ("conf/w/b", &b"2"[..], r2));
    assert_eq!(delete_of(&evs[2]), ("conf/w/a", r4));
    let r5 = ok(store.put("conf/w/c", b"3".to_vec()).await, "put");
    assert_eq!(
        put_of(&next_event(&mut s).await),
        ("conf/w/c", &b"3"[..], r5)
    );

    let mut s = ok(store.watch("conf/w/", r2).await, "watch from r2");
    assert_eq!(
        put_of(&next_event(&mut s).await).2,
        r2,
        "starts at the asked revision"
    );
}

/// A watch from the next revision sees new changes under its prefix only, with full key-values.
pub async fn watch_live(store: DynStore) {
    ok(store.put("conf/l/a", b"old".to_vec()).await, "put");
    let from = ok(store.current_revision().await, "current_revision") + 1;
    let mut s = ok(store.watch("conf/l/", from).await, "watch");
    let r1 = ok(store.put("conf/l/a", b"new".to_vec()).await, "put");
    ok(store.put("conf/x/ignored", Vec::new()).await, "put");
    let r2 = ok(store.put("conf/l/b", b"b".to_vec()).await, "put");
    assert!(ok(store.delete("conf/l/a").await, "delete"));
    let r3 = r2 + 1;
    match next_event(&mut s).await {
        WatchEvent::Put(kv) => {
            assert_eq!(
                (kv.key.as_str(), kv.value.as_slice()),
                ("conf/l/a", &b"new"[..])
            );
            assert_eq!((kv.mod_revision, kv.version), (r1, 2));
            assert!(kv.create_revision < r1);
        }
        other => panic!("expected put, got {other:?}"),
    }
    assert_eq!(
        put_of(&next_event(&mut s).await),
        ("conf/l/b", &b"b"[..], r2)
    );
    assert_eq!(delete_of(&next_event(&mut s).await), ("conf/l/a", r3));
    assert_no_event(&mut s, Duration::from_millis(300)).await;
}

/// Concurrent writers while watchers start at various points: every watcher sees every write
/// exactly once, in revision order.
pub async fn watch_many_writes_no_gaps(store: DynStore) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    const TOTAL: usize = WRITERS * PER_WRITER;
    let from = ok(store.current_revision().await, "current_revision") + 1;
    let early = ok(store.watch("conf/g/", from).await, "early watch");

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_WRITER {
                let key = format!("conf/g/{w}/{i}");
                acked.push((
                    ok(store.put(&key, key.as_bytes().to_vec()).await, "put"),
                    key,
                ));
            }
            acked
        }));
    }
    // Started while writes are in flight: exercises the switch from replay to live.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = ok(store.watch("conf/g/", from).await, "late watch");

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer task"));
    }
    acked.sort();
    for (name, mut s) in [("early", early), ("late", late)] {
        let seen: Vec<(u64, String)> = next_events(&mut s, TOTAL)
            .await
            .iter()
            .map(|ev| {
                let (key, value, rev) = put_of(ev);
                assert_eq!(value, key.as_bytes());
                (rev, key.to_owned())
            })
            .collect();
        assert!(
            seen.windows(2).all(|p| p[0].0 < p[1].0),
            "{name} watcher: revisions must strictly increase"
        );
        assert_eq!(
            seen, acked,
            "{name} watcher saw exactly the acknowledged writes"
        );
        assert_no_event(&mut s, Duration::from_millis(200)).await;
    }
}

/// The events of one transaction share its revision and come in op order.
pub async fn watch_txn_events_in_op_order(store: DynStore) {
    ok(store.put("conf/t/x", b"x".to_vec()).await, "put");
    let from = ok(store.current_revision().await, "current_revision") + 1;
    let mut s = ok(store.watch("conf/t/", from).await, "watch");
    let t = Txn::new()
        .and_then(Op::put("conf/t/b", b"b".to_vec()))
        .and_then(Op::delete("conf/t/x"))
        .and_then(Op::get("conf/t/b"))
        .and_then(Op::put("conf/t/a", b"a".to_vec()));
    let rev = ok(store.txn(t).await, "txn").revision;
    let evs = next_events(&mut s, 3).await;
    assert_eq!(put_of(&evs[0]), ("conf/t/b", &b"b"[..], rev));
    assert_eq!(delete_of(&evs[1]), ("conf/t/x", rev));
    assert_eq!(put_of(&evs[2]), ("conf/t/a", &b"a"[..], rev));
}

/// After compaction, watching from before the compacted revision fails with `Compacted`
/// (from `watch` or as the stream's first item); from the compaction point it works.
pub async fn watch_compacted_revision(store: DynStore) {
    let r1 = ok(store.put("conf/c/a", b"1".to_vec()).await, "put");
    ok(store.put("conf/c/a", b"2".to_vec()).await, "put");
    let r3 = ok(store.put("conf/c/a", b"3".to_vec()).await, "put");
    ok(store.compact(r3).await, "compact");
    match store.watch("conf/c/", r1).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(mut s) => match tokio::time::timeout(super::EVENT_TIMEOUT, s.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => panic!("expected a Compacted item, got {other:?}"),
        },
    }
    let mut s = ok(
        store.watch("conf/c/", r3).await,
        "watch at the compaction point",
    );
    assert_eq!(
        put_of(&next_event(&mut s).await),
        ("conf/c/a", &b"3"[..], r3)
    );
    assert!(
        store.compact(r3 + 100).await.is_err(),
        "compacting a future revision must fail"
    );
}
