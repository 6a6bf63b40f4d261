//! Side-by-side benchmark of the two engines: committed transaction throughput and p99
//! latency with 1 and with 64 concurrent writers, on the embedded engine and on a 3-member
//! etcd cluster on loopback (started and torn down by the test harness).
//!
//! `cargo bench -p panal-store --features etcd-testing --bench store_engines`. Environment:
//! - `PANAL_BENCH_SECS` (default 3): seconds per measurement;
//! - `PANAL_BENCH_DIR` (default the system temp dir): where the embedded store file goes (a
//!   real disk; etcd's data dirs are in the system temp dir).
//!
//! Each transaction is a create-if-absent of a distinct key (one compare, one put), the
//! typical control-plane write.

use panal_store::embedded::EmbeddedStore;
use panal_store::etcd::testing::ClusterStore;
use panal_store::{Compare, DynStore, Op, Txn};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `writers` tasks committing transactions for `dur`; collects every latency.
async fn measure(store: &DynStore, tag: &str, writers: usize, dur: Duration) -> Figures {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("bench/{tag}/{writers}/{w}/{i}");
                let txn = Txn::new()
                    .when(Compare::absent(&key))
                    .and_then(Op::put(&key, vec![0u8; 100]));
                let t0 = Instant::now();
                let r = store.txn(txn).await.expect("txn");
                assert!(r.succeeded);
                lat.push(t0.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        per_sec: all.len() as f64 / secs,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn row(engine: &str, writers: usize, f: &Figures) {
    println!(
        "{engine:<18} {writers:>7} {:>12.0} {:>10.2} {:>10.2}",
        f.per_sec,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

fn main() {
    let under_test = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = env_or("PANAL_BENCH_SECS", if under_test { 0.3 } else { 3.0 });
    let dur = Duration::from_secs_f64(secs);
    let base = std::env::var_os("PANAL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let embedded: DynStore =
            EmbeddedStore::open(&dir.path().join("bench.redb")).expect("open embedded store");
        let etcd = ClusterStore::start(3)
            .await
            .unwrap_or_else(|e| panic!("starting a 3-member etcd cluster: {e}"));
        let etcd: DynStore = std::sync::Arc::new(etcd);
        println!(
            "{:<18} {:>7} {:>12} {:>10} {:>10}",
            "engine", "writers", "txns/s", "p50 ms", "p99 ms"
        );
        for writers in [1, 64] {
            for (name, store) in [("embedded", &embedded), ("etcd (3 members)", &etcd)] {
                let f = measure(store, name, writers, dur).await;
                row(name, writers, &f);
            }
        }
    });
}
