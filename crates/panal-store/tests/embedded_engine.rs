//! Embedded-engine behaviour beyond the shared conformance suite: automatic history
//! compaction, watchers that lag behind the live buffer, group commit, bad requests.

use futures::StreamExt;
use panal_store::conformance::next_events;
use panal_store::embedded::{EmbeddedOptions, EmbeddedStore};
use panal_store::{Op, Store, StoreError, StoreExt, Txn, WatchEvent};
use std::sync::Arc;
use std::time::Duration;

fn open(dir: &tempfile::TempDir, opts: EmbeddedOptions) -> Arc<EmbeddedStore> {
    EmbeddedStore::open_with(&dir.path().join("s.redb"), opts).expect("open")
}

#[tokio::test]
async fn history_is_pruned_to_the_newest_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default().history_revisions(10));
    for i in 0..25u8 {
        store.put("h/k", vec![i]).await.expect("put");
    }
    assert_eq!(store.oldest_revision(), 16, "keeps revisions 16..=25");
    match store.watch("h/", 15).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (15, 16))
        }
        other => panic!("expected Compacted, got {:?}", other.map(|_| ())),
    }
    let mut s = store
        .watch("h/", 16)
        .await
        .expect("watch at the oldest kept revision");
    let evs = next_events(&mut s, 10).await;
    let revs: Vec<u64> = evs.iter().map(WatchEvent::revision).collect();
    assert_eq!(revs, (16..=25).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_catches_up_from_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default().watch_buffer(2));
    let mut s = store.watch("lag/", 1).await.expect("watch");
    // Not polled while 50 batches commit: the 2-slot live buffer overflows.
    for i in 0..50u32 {
        store
            .put(&format!("lag/{i:03}"), Vec::new())
            .await
            .expect("put");
    }
    let evs = next_events(&mut s, 50).await;
    let keys: Vec<String> = evs.iter().map(|e| e.key().to_owned()).collect();
    let want: Vec<String> = (0..50u32).map(|i| format!("lag/{i:03}")).collect();
    assert_eq!(keys, want, "no gap and no duplicate after catching up");
    store.put("lag/live", Vec::new()).await.expect("put");
    assert_eq!(next_events(&mut s, 1).await[0].key(), "lag/live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_lagging_past_compaction_gets_an_error_item() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = EmbeddedOptions::default()
        .watch_buffer(2)
        .history_revisions(5);
    let store = open(&dir, opts);
    let mut s = store.watch("c/", 1).await.expect("watch");
    for i in 0..40u32 {
        store.put(&format!("c/{i}"), Vec::new()).await.expect("put");
    }
    let item = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("an item");
    assert!(
        matches!(item, Some(Err(StoreError::Compacted { .. }))),
        "expected a Compacted error item, got {item:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), s.next()).await;
    assert!(matches!(end, Ok(None)), "the stream ends after its error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_txns_get_distinct_consecutive_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default());
    let mut tasks = Vec::new();
    for w in 0..32u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..10u32 {
                let t = Txn::new()
                    .and_then(Op::put(&format!("g/{w}/{i}"), Vec::new()))
                    .and_then(Op::put(&format!("g/{w}/last"), i.to_le_bytes().to_vec()));
                revs.push(store.txn(t).await.expect("txn").revision);
            }
            revs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=320).collect::<Vec<u64>>(),
        "one revision per txn, no gaps"
    );
    let kv = store.get("g/7/last").await.expect("get").expect("present");
    assert_eq!(kv.version, 10);
}

#[tokio::test]
async fn bad_requests_are_refused_without_side_effects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default());
    let rev = store.put("b/ok", Vec::new()).await.expect("put");
    let t = Txn::new()
        .and_then(Op::put("b/x", Vec::new()))
        .and_then(Op::put("", Vec::new()));
    assert!(matches!(store.txn(t).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.get("b/x").await.expect("get"), None);
    assert!(matches!(
        store.compact(rev + 1).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.current_revision().await.expect("rev"), rev);
}

#[tokio::test]
async fn watch_from_zero_means_from_now() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default());
    store.put("z/old", Vec::new()).await.expect("put");
    let mut s = store.watch("z/", 0).await.expect("watch");
    store.put("z/new", Vec::new()).await.expect("put");
    assert_eq!(next_events(&mut s, 1).await[0].key(), "z/new");
}

#[tokio::test]
async fn watch_ends_when_the_store_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default());
    let mut s = store.watch("e/", 0).await.expect("watch");
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
    assert!(matches!(end, Ok(None)), "got {end:?}");
}

/// History rows hold whole batches: compacting into the middle of a batch must keep that
/// batch's later revisions replayable, and hide its earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_inside_a_batch_keeps_its_later_revisions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(&dir, EmbeddedOptions::default());
    let first = store.current_revision().await.expect("revision") + 1;
    // Concurrent writers make multi-revision batches.
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..8 {
                store
                    .put(&format!("b/{w}/{i}"), vec![w])
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let last = store.current_revision().await.expect("revision");
    assert_eq!(last - first + 1, 16 * 8);
    for cut in [first + 1, first + 37, last - 1, last] {
        store.compact(cut).await.expect("compact");
        assert!(matches!(
            store.watch("b/", cut - 1).await,
            Err(StoreError::Compacted { .. })
        ));
        let mut s = store.watch("b/", cut).await.expect("watch");
        let n = (last - cut + 1) as usize;
        let revs: Vec<u64> = next_events(&mut s, n)
            .await
            .iter()
            .map(WatchEvent::revision)
            .collect();
        assert_eq!(revs, (cut..=last).collect::<Vec<_>>(), "compacted to {cut}");
    }
}
