//! Conformance cases for reads, writes, revisions, versions, transactions and ranges.

use super::ok;
use crate::{Compare, DynStore, Op, OpResponse, StoreExt, Txn};
use std::collections::HashSet;

/// Put, get and delete one key, with its revisions.
pub async fn get_put_delete(store: DynStore) {
    assert_eq!(ok(store.get("conf/a").await, "get"), None);
    let rev = ok(store.put("conf/a", b"one".to_vec()).await, "put");
    let kv = ok(store.get("conf/a").await, "get").expect("key after put");
    assert_eq!(kv.key, "conf/a");
    assert_eq!(kv.value, b"one");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (rev, rev, 1)
    );
    assert_eq!(kv.lease, None);
    assert!(
        ok(store.delete("conf/a").await, "delete"),
        "delete of a present key"
    );
    assert_eq!(ok(store.get("conf/a").await, "get"), None);
    assert!(
        !ok(store.delete("conf/a").await, "delete"),
        "delete of an absent key"
    );
}

/// Several keys read at once come back in the order asked, absent ones as `None`, each as a
/// single `get` sees it; more keys than one transaction may hold are read as well.
pub async fn get_many_in_order(store: DynStore) {
    ok(store.put("conf/m/b", b"bee".to_vec()).await, "put");
    ok(store.put("conf/m/a", b"ay".to_vec()).await, "put");
    let asked: Vec<String> = ["conf/m/b", "conf/m/none", "conf/m/a", "conf/m/b"]
        .map(String::from)
        .to_vec();
    let got = ok(store.get_many(&asked).await, "get_many");
    assert_eq!(got.len(), 4);
    for (key, kv) in asked.iter().zip(&got) {
        assert_eq!(*kv, ok(store.get(key).await, "get"), "{key}");
    }
    assert_eq!(got[1], None);
    assert_eq!(
        got[0].as_ref().map(|kv| kv.value.as_slice()),
        Some(&b"bee"[..])
    );
    assert!(ok(store.get_many(&[]).await, "get_many of nothing").is_empty());
    let many: Vec<String> = (0..store.max_txn_ops() + 3)
        .map(|i| format!("conf/m/{i}"))
        .collect();
    ok(store.put("conf/m/2", b"two".to_vec()).await, "put");
    let got = ok(store.get_many(&many).await, "get_many past one transaction");
    assert_eq!(got.len(), many.len());
    assert_eq!(got.iter().filter(|kv| kv.is_some()).count(), 1);
    assert_eq!(got[2].as_ref().map(|kv| kv.key.as_str()), Some("conf/m/2"));
}

/// One revision per writing transaction; create/mod revisions and versions as in etcd.
pub async fn revisions_and_versions(store: DynStore) {
    let r0 = ok(store.current_revision().await, "current_revision");
    let r1 = ok(store.put("conf/a", b"1".to_vec()).await, "put");
    assert_eq!(r1, r0 + 1, "a write bumps the revision by one");
    let r2 = ok(store.put("conf/a", b"2".to_vec()).await, "put");
    assert_eq!(r2, r1 + 1);
    let kv = ok(store.get("conf/a").await, "get").expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );

    let r3 = ok(store.put("conf/b", b"x".to_vec()).await, "put");
    assert!(ok(store.delete("conf/a").await, "delete"));
    let r4 = ok(store.current_revision().await, "current_revision");
    assert_eq!(r4, r3 + 1, "a delete is a write");
    let r5 = ok(store.put("conf/a", b"3".to_vec()).await, "put");
    let kv = ok(store.get("conf/a").await, "get").expect("present");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r5, r5, 1),
        "re-creating after a delete starts a new life"
    );

    let t = Txn::new()
        .and_then(Op::put("conf/c", b"c".to_vec()))
        .and_then(Op::put("conf/d", b"d".to_vec()));
    let r6 = ok(store.txn(t).await, "txn").revision;
    assert_eq!(r6, r5 + 1, "one transaction is one revision");
    for k in ["conf/c", "conf/d"] {
        assert_eq!(
            ok(store.get(k).await, "get").expect("present").mod_revision,
            r6
        );
    }
    assert_eq!(ok(store.current_revision().await, "current_revision"), r6);
}

/// Compare-and-swap: success and failure branches for each kind of compare.
pub async fn txn_compare_branches(store: DynStore) {
    let r1 = ok(store.put("conf/k", b"v1".to_vec()).await, "put");
    let cas = |rev| {
        Txn::new()
            .when(Compare::unchanged("conf/k", rev))
            .and_then(Op::put("conf/k", b"v2".to_vec()))
            .or_else(Op::get("conf/k"))
    };
    let res = ok(store.txn(cas(r1)).await, "cas");
    assert!(res.succeeded);
    assert_eq!(
        res.responses,
        vec![OpResponse::Put {
            prev_mod_revision: r1
        }]
    );
    let r2 = res.revision;
    assert_eq!(r2, r1 + 1);

    let res = ok(store.txn(cas(r1)).await, "stale cas");
    assert!(!res.succeeded, "a stale mod_revision must fail");
    assert_eq!(
        res.revision, r2,
        "a read-only failure branch does not write"
    );
    match &res.responses[..] {
        [OpResponse::Get { kv: Some(kv) }] => assert_eq!(kv.value, b"v2"),
        other => panic!("expected the failure branch's get, got {other:?}"),
    }

    let holds = |c: Compare| {
        let store = store.clone();
        async move { ok(store.txn(Txn::new().when(c)).await, "compare").succeeded }
    };
    assert!(holds(Compare::Version("conf/k".into(), 2)).await);
    assert!(!holds(Compare::Version("conf/k".into(), 1)).await);
    assert!(holds(Compare::Value("conf/k".into(), b"v2".to_vec())).await);
    assert!(!holds(Compare::Value("conf/k".into(), b"v1".to_vec())).await);
    assert!(!holds(Compare::Value("conf/none".into(), Vec::new())).await);
    assert!(holds(Compare::ModRevision("conf/none".into(), 0)).await);
    assert!(holds(Compare::absent("conf/none")).await);
    assert!(!holds(Compare::absent("conf/k")).await);

    // All compares must hold; the failure branch may write.
    let t = Txn::new()
        .when(Compare::Version("conf/k".into(), 2))
        .when(Compare::absent("conf/k"))
        .and_then(Op::put("conf/yes", Vec::new()))
        .or_else(Op::put("conf/no", b"n".to_vec()));
    let res = ok(store.txn(t).await, "txn");
    assert!(!res.succeeded);
    assert_eq!(
        res.revision,
        r2 + 1,
        "failure-branch writes take a revision"
    );
    assert_eq!(ok(store.get("conf/yes").await, "get"), None);
    assert_eq!(
        ok(store.get("conf/no").await, "get")
            .expect("present")
            .value,
        b"n"
    );
}

/// Transactions that change nothing leave the revision alone.
pub async fn txn_without_writes_keeps_revision(store: DynStore) {
    let rev = ok(store.put("conf/k", b"v".to_vec()).await, "put");
    let res = ok(
        store.txn(Txn::new().and_then(Op::get("conf/k"))).await,
        "get txn",
    );
    assert_eq!(res.revision, rev);
    match &res.responses[..] {
        [OpResponse::Get { kv: Some(kv) }] => assert_eq!(kv.mod_revision, rev),
        other => panic!("expected one get response, got {other:?}"),
    }
    let res = ok(
        store
            .txn(
                Txn::new()
                    .when(Compare::absent("conf/k"))
                    .and_then(Op::delete("conf/k")),
            )
            .await,
        "failed compare",
    );
    assert!(!res.succeeded);
    assert!(res.responses.is_empty());
    assert_eq!(res.revision, rev);
    let res = ok(
        store
            .txn(Txn::new().and_then(Op::delete("conf/none")))
            .await,
        "delete",
    );
    assert_eq!(res.responses, vec![OpResponse::Delete { deleted: 0 }]);
    assert_eq!(res.revision, rev, "deleting an absent key changes nothing");
    assert_eq!(ok(store.current_revision().await, "current_revision"), rev);
    assert!(ok(store.get("conf/k").await, "get").is_some());
}

/// A transaction as large as [`crate::Store::max_txn_ops`] says (that many compares and that
/// many puts) commits, as one revision.
pub async fn txn_of_max_ops_commits(store: DynStore) {
    let n = store.max_txn_ops();
    assert!(
        n >= 2,
        "an engine must take at least a compare-and-put pair"
    );
    let mut txn = Txn::new();
    for i in 0..n {
        let key = format!("conf/max/{i:05}");
        txn = txn
            .when(Compare::absent(&key))
            .and_then(Op::put(&key, b"v".to_vec()));
    }
    let res = ok(store.txn(txn).await, "txn of max_txn_ops ops");
    assert!(res.succeeded);
    let got = ok(store.range("conf/max/", None, 0).await, "range");
    assert_eq!(got.kvs.len(), n);
    assert!(got.kvs.iter().all(|kv| kv.mod_revision == res.revision));
}

/// Concurrent create-if-absent: exactly one creator wins, and its value is stored.
pub async fn create_race_has_one_winner(store: DynStore) {
    const CREATORS: usize = 16;
    for round in 0..3 {
        let key = format!("conf/race/{round}");
        let mut tasks = Vec::new();
        for i in 0..CREATORS {
            let (store, key) = (store.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let won = ok(store.create(&key, vec![i as u8]).await, "create");
                (i, won)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (i, won) = t.await.expect("creator task");
            if let Some(rev) = won {
                winners.push((i, rev));
            }
        }
        assert_eq!(winners.len(), 1, "exactly one creator wins: {winners:?}");
        let (i, rev) = winners[0];
        let kv = ok(store.get(&key).await, "get").expect("created");
        assert_eq!(
            (kv.value, kv.mod_revision, kv.version),
            (vec![i as u8], rev, 1)
        );
    }
}

/// Prefix ranges in key order, paginated with `start_after` and `limit`.
pub async fn range_prefix_and_pagination(store: DynStore) {
    for k in [
        "conf/r/c", "conf/r/a", "conf/r/e", "conf/r/b", "conf/r/d", "conf/rx", "conf/q",
    ] {
        ok(store.put(k, k.as_bytes().to_vec()).await, "put");
    }
    let keys = |r: &crate::RangeResult| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
    let all = ok(store.range("conf/r/", None, 0).await, "range");
    assert_eq!(
        keys(&all),
        ["conf/r/a", "conf/r/b", "conf/r/c", "conf/r/d", "conf/r/e"]
    );
    assert!(!all.more);
    assert_eq!(
        all.revision,
        ok(store.current_revision().await, "current_revision")
    );
    assert!(all.kvs.iter().all(|kv| kv.value == kv.key.as_bytes()));

    let p1 = ok(store.range("conf/r/", None, 2).await, "page 1");
    assert_eq!(
        (keys(&p1), p1.more),
        (vec!["conf/r/a".into(), "conf/r/b".into()], true)
    );
    let p2 = ok(store.range("conf/r/", Some("conf/r/b"), 2).await, "page 2");
    assert_eq!(
        (keys(&p2), p2.more),
        (vec!["conf/r/c".into(), "conf/r/d".into()], true)
    );
    let p3 = ok(store.range("conf/r/", Some("conf/r/d"), 2).await, "page 3");
    assert_eq!((keys(&p3), p3.more), (vec!["conf/r/e".into()], false));
    let exact = ok(
        store.range("conf/r/", Some("conf/r/c"), 2).await,
        "exact page",
    );
    assert_eq!(
        (keys(&exact), exact.more),
        (vec!["conf/r/d".into(), "conf/r/e".into()], false)
    );
    let after_end = ok(
        store.range("conf/r/", Some("conf/r/e"), 2).await,
        "past the end",
    );
    assert!(after_end.kvs.is_empty() && !after_end.more);
    let before = ok(
        store.range("conf/r/", Some("conf/a"), 1).await,
        "start before prefix",
    );
    assert_eq!(keys(&before), ["conf/r/a"]);
    let none = ok(store.range("conf/zz/", None, 0).await, "empty prefix");
    assert!(none.kvs.is_empty() && !none.more);

    let seen: HashSet<String> = keys(&ok(store.range("conf/", None, 0).await, "range"))
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 7);
}
