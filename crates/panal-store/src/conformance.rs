//! The conformance suite every store engine must pass, unchanged.
//!
//! Each case is a `pub async fn case(store: DynStore)` that expects a fresh, empty store of its
//! own (nobody else writing to it) and panics on a violation. Run them all with [`run_all`], or
//! get one `#[tokio::test]` per case with [`crate::conformance_tests!`]:
//!
//! ```ignore
//! panal_store::conformance_tests!(|| async { make_fresh_store().await });
//! ```
//!
//! Cases only assume what the [`crate::Store`] docs promise: revisions are relative (an engine
//! may start anywhere), lease TTLs are short but not tight (timing checks allow seconds of slack
//! for loaded machines), and `Compacted` may come from `watch` itself or as the stream's first
//! item.

mod kv;
mod lease;
mod watch;

pub use kv::*;
pub use lease::*;
pub use watch::*;

use crate::{DynStore, StoreError, WatchEvent, WatchStream};
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;

/// How long a case waits for an event that must come before declaring it lost.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Declares one `#[tokio::test]` per conformance case, each on a fresh store from `$factory`
/// (an expression callable as `$factory()` returning a future of [`crate::DynStore`]). The
/// calling crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            get_put_delete,
            get_many_in_order,
            revisions_and_versions,
            txn_compare_branches,
            txn_without_writes_keeps_revision,
            txn_of_max_ops_commits,
            create_race_has_one_winner,
            range_prefix_and_pagination,
            watch_from_past_revision,
            watch_live,
            watch_many_writes_no_gaps,
            watch_txn_events_in_op_order,
            watch_compacted_revision,
            lease_expiry_deletes_keys,
            lease_keep_alive_extends,
            lease_revoke_deletes_keys,
            lease_not_found,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: $crate::DynStore = ($factory)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

/// Runs every case, each on a fresh store from `new_store`. Keep this list in step with
/// [`crate::conformance_tests!`].
pub async fn run_all<F, Fut>(new_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = DynStore>,
{
    get_put_delete(new_store().await).await;
    get_many_in_order(new_store().await).await;
    revisions_and_versions(new_store().await).await;
    txn_compare_branches(new_store().await).await;
    txn_without_writes_keeps_revision(new_store().await).await;
    txn_of_max_ops_commits(new_store().await).await;
    create_race_has_one_winner(new_store().await).await;
    range_prefix_and_pagination(new_store().await).await;
    watch_from_past_revision(new_store().await).await;
    watch_live(new_store().await).await;
    watch_many_writes_no_gaps(new_store().await).await;
    watch_txn_events_in_op_order(new_store().await).await;
    watch_compacted_revision(new_store().await).await;
    lease_expiry_deletes_keys(new_store().await).await;
    lease_keep_alive_extends(new_store().await).await;
    lease_revoke_deletes_keys(new_store().await).await;
    lease_not_found(new_store().await).await;
}

/// The next event of a watch; panics if the stream fails, ends or stays silent too long.
pub async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, stream.next()).await {
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
        Ok(None) => panic!("watch stream ended unexpectedly"),
        Ok(Some(Err(e))) => panic!("watch stream failed: {e}"),
        Ok(Some(Ok(ev))) => ev,
    }
}

/// The next `n` events of a watch.
pub async fn next_events(stream: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(stream).await);
    }
    out
}

/// Asserts that a watch delivers nothing more within `quiet` (used after the expected events).
pub async fn assert_no_event(stream: &mut WatchStream, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

/// Unwraps a store call, naming the step that failed.
pub(crate) fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {e}"),
    }
}
