//! Benchmark of committed, fsync'd writes per second on the embedded engine: one writer, then
//! many concurrent writers (group commit should batch them into shared fsyncs).
//!
//! `cargo bench -p panal-store --bench store_write`. Environment:
//! - `PANAL_BENCH_SECS` (default 3): seconds per measurement;
//! - `PANAL_BENCH_WRITERS` (default 64): concurrent writers in the second measurement;
//! - `PANAL_BENCH_DIR` (default the system temp dir): where the store file goes. It must be on
//!   a real disk: on tmpfs fsync is free and the figures mean nothing.

use panal_store::embedded::EmbeddedStore;
use panal_store::{DynStore, StoreExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes this process has sent to storage so far (Linux `/proc/self/io`), if known.
fn disk_bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs `writers` tasks putting distinct keys for `dur`; returns committed writes per second.
/// Also prints the disk bytes written per write: unlike the rate, that does not depend on how
/// busy the machine's disk is, so it shows what group commit saves even on a noisy machine.
async fn measure(store: &DynStore, writers: usize, dur: Duration) -> f64 {
    let bytes_before = disk_bytes_written();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("bench/{writers}/{w}/{i}");
                store.put(&key, vec![0u8; 100]).await.expect("put");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    let writes = done.load(Ordering::Relaxed);
    if let (Some(a), Some(b)) = (bytes_before, disk_bytes_written()) {
        let per_write = b.saturating_sub(a) / writes.max(1);
        println!("{writers} writer(s): {per_write} disk bytes written per write");
    }
    writes as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either way
    // run once, briefly under test.
    let under_test = !std::env::args().any(|a| a == "--bench");
    let secs: f64 = env_or("PANAL_BENCH_SECS", if under_test { 0.3 } else { 3.0 });
    let writers: usize = env_or("PANAL_BENCH_WRITERS", 64);
    let base = std::env::var_os("PANAL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let dur = Duration::from_secs_f64(secs);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store: DynStore =
            EmbeddedStore::open(&dir.path().join("bench.redb")).expect("open store");
        let one = measure(&store, 1, dur).await;
        println!("1 writer:   {one:>10.0} committed writes/s");
        let many = measure(&store, writers, dur).await;
        println!("{writers} writers: {many:>10.0} committed writes/s");
        let ratio = many / one;
        println!("ratio:      {ratio:>10.1}x");
        let verdict = if ratio >= 10.0 { "PASS" } else { "FAIL" };
        println!("goal ratio >= 10: {verdict}");
    });
}
