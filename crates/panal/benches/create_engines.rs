//! VM-create throughput and latency through the real HTTP API on the embedded store and on a
//! three-member etcd on loopback, side by side in one run, with the fake driver: a control plane
//! (API + controllers) and one simulated host per engine in this process, and 64 concurrent
//! clients creating VMs for a fixed time. Goal on etcd: ≥ 2,000 creates/s and p99 ≤ 50 ms.
//!
//! `cargo bench -p panal --bench create_engines` (PANAL_BENCH_SECS, PANAL_BENCH_CLIENTS).

use panal_agent::{Agent, AgentConfig};
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_server::controllers::Controllers;
use panal_server::link::InProcessLink;
use panal_server::scheduler::Policy;
use panal_server::{App, AppConfig};
use panal_store::DynStore;
use panal_store::embedded::EmbeddedStore;
use panal_store::etcd::testing::EtcdCluster;
use panal_types::Name;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run_engine(
    label: &str,
    store: DynStore,
    secs: u64,
    clients: u64,
) -> (f64, Duration, Duration) {
    let app = App::new(store, AppConfig::default());
    app.bootstrap().await.unwrap();
    let token =
        panal_server::auth::create_token(app.repo(), "bench", panal_server::auth::Role::Admin)
            .await
            .unwrap();
    let _controllers = Controllers::start(&app, Policy::default());
    let mut cfg = AgentConfig::new(Name::parse("sim-1").unwrap());
    cfg.capacity_override = Some((4096, 64 << 40));
    let agent = Agent::new(
        cfg,
        vec![Arc::new(FakeDriver::new(
            FakeWorld::new(),
            FakeConfig::default(),
        ))],
        Arc::new(InProcessLink::new(app.clone())),
        Arc::new(panal_agent::boot::NoImages),
    );
    let agent = tokio::spawn(agent.run());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, panal_server::api::router(app))
            .await
            .ok()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let auth = Arc::new(format!("Bearer {token}"));
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, base, auth, counter) =
            (http.clone(), base.clone(), auth.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::json!({"name": format!("vm-{i}"), "hypervisor": "fake", "memory_bytes": 1 << 20, "start": false});
                let t = Instant::now();
                let r = http.post(format!("{base}/api/v1/vms")).header("authorization", auth.as_str()).json(&body).send().await;
                lat.push(t.elapsed());
                if !matches!(r, Ok(r) if r.status() == 202) {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    let rate = lat.len() as f64 / elapsed;
    println!(
        "{label:<22} {clients} clients: {:>7.0} creates/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {errors}",
        rate,
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );
    agent.abort();
    server.abort();
    (rate, p(0.5), p(0.99))
}

fn main() {
    let secs = env_or("PANAL_BENCH_SECS", 5);
    let clients = env_or("PANAL_BENCH_CLIENTS", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        println!("VM-create throughput through the API, fake driver, this machine (2 cores):");
        let dir = tempfile::tempdir().unwrap();
        let embedded: DynStore = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        let (e_rate, _, e_p99) = run_engine("embedded", embedded, secs, clients).await;
        let etcd = EtcdCluster::start(3).await.expect("etcd cluster (run scripts/install-etcd.sh)");
        let store: DynStore = etcd.connect().await.unwrap();
        let (rate, _, p99) = run_engine("etcd (3 members)", store, secs, clients).await;
        println!(
            "etcd vs embedded: {:.2}x throughput, p99 {:.1} vs {:.1} ms; goal on etcd >= 2000/s and p99 <= 50 ms: {}",
            rate / e_rate,
            p99.as_secs_f64() * 1e3,
            e_p99.as_secs_f64() * 1e3,
            if rate >= 2000.0 && p99 <= Duration::from_millis(50) { "PASS" } else { "FAIL" }
        );
        drop(etcd);
    });
}
