//! VM-create throughput and latency through the real HTTP API on the embedded store and on a
//! three-member etcd on loopback, side by side in one run, with the fake driver: a control plane
//! (API + controllers) and one simulated host per engine in this process, and 64 concurrent
//! clients creating VMs for a fixed time. Goal on etcd: ≥ 2,000 creates/s and p99 ≤ 50 ms.
//! Each engine runs twice: one VM per request (`POST /api/v1/vms`), then batches
//! (`POST /api/v1/vms:batch`), where the rate counts VMs and the latency is per request.
//!
//! `cargo bench -p panal --bench create_engines` (PANAL_BENCH_SECS, PANAL_BENCH_CLIENTS,
//! PANAL_BENCH_BATCH_CLIENTS (8), PANAL_BENCH_BATCH_SIZE (VMs per batch request, 64: one etcd
//! transaction), PANAL_BENCH_NO_CONTROLLERS (set: no controllers, so the creates' own cost)).

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

/// How the clients create.
#[derive(Clone, Copy)]
enum Mode {
    /// One VM per request.
    Single,
    /// This many VMs per request.
    Batch(u64),
}

async fn run_engine(
    label: &str,
    store: DynStore,
    secs: u64,
    clients: u64,
    mode: Mode,
) -> (f64, Duration, Duration) {
    let app = App::new(store, AppConfig::default());
    app.bootstrap().await.unwrap();
    let token =
        panal_server::auth::create_token(app.repo(), "bench", panal_server::auth::Role::Admin)
            .await
            .unwrap();
    // PANAL_BENCH_NO_CONTROLLERS=1 measures the API and the store alone (created VMs are
    // never placed): the difference is what the controllers' writes cost the creates.
    let _controllers = std::env::var("PANAL_BENCH_NO_CONTROLLERS")
        .is_err()
        .then(|| Controllers::start(&app, Policy::default()));
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
            let mut vms = 0u64;
            let item = |i: u64| serde_json::json!({"name": format!("vm-{i}"), "hypervisor": "fake", "memory_bytes": 1 << 20, "start": false});
            while Instant::now() < deadline {
                let (path, body, n) = match mode {
                    Mode::Single => {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        ("vms", item(i), 1)
                    }
                    Mode::Batch(n) => {
                        let first = counter.fetch_add(n, Ordering::Relaxed);
                        let items: Vec<_> = (first..first + n).map(item).collect();
                        ("vms:batch", serde_json::json!({"vms": items}), n)
                    }
                };
                let t = Instant::now();
                let r = http.post(format!("{base}/api/v1/{path}")).header("authorization", auth.as_str()).json(&body).send().await;
                lat.push(t.elapsed());
                if matches!(r, Ok(r) if r.status() == 202) {
                    vms += n;
                } else {
                    errors += 1;
                }
            }
            (lat, errors, vms)
        }));
    }
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut vms = 0;
    for t in tasks {
        let (l, e, n) = t.await.unwrap();
        lat.extend(l);
        errors += e;
        vms += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    let rate = vms as f64 / elapsed;
    let how = match mode {
        Mode::Single => "1 VM/request".to_string(),
        Mode::Batch(n) => format!("{n} VMs/request"),
    };
    println!(
        "{label:<18} {how:<15} {clients:>2} clients: {:>7.0} creates/s  request p50 {:>6.2} ms  p99 {:>6.2} ms  errors {errors}",
        rate,
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );
    agent.abort();
    server.abort();
    (rate, p(0.5), p(0.99))
}

fn verdict(rate: f64, p99: Duration) -> &'static str {
    if rate >= 2000.0 && p99 <= Duration::from_millis(50) {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let secs = env_or("PANAL_BENCH_SECS", 5);
    let clients = env_or("PANAL_BENCH_CLIENTS", 64);
    let batch_clients = env_or("PANAL_BENCH_BATCH_CLIENTS", 8);
    let batch = Mode::Batch(env_or("PANAL_BENCH_BATCH_SIZE", 64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        println!("VM-create throughput through the API, fake driver, this machine (2 cores):");
        let dir = tempfile::tempdir().unwrap();
        let embedded: DynStore = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
        let (e_rate, _, e_p99) = run_engine("embedded", embedded, secs, clients, Mode::Single).await;
        let dir_b = tempfile::tempdir().unwrap();
        let embedded: DynStore = EmbeddedStore::open(&dir_b.path().join("state.redb")).unwrap();
        let (eb_rate, _, eb_p99) = run_engine("embedded", embedded, secs, batch_clients, batch).await;
        let etcd = EtcdCluster::start(3).await.expect("etcd cluster (run scripts/install-etcd.sh)");
        let store: DynStore = etcd.connect().await.unwrap();
        let (rate, _, p99) = run_engine("etcd (3 members)", store, secs, clients, Mode::Single).await;
        drop(etcd);
        let etcd = EtcdCluster::start(3).await.expect("etcd cluster");
        let store: DynStore = etcd.connect().await.unwrap();
        let (b_rate, _, b_p99) = run_engine("etcd (3 members)", store, secs, batch_clients, batch).await;
        drop(etcd);
        println!(
            "one VM per request: etcd vs embedded {:.2}x throughput, p99 {:.1} vs {:.1} ms; goal on etcd >= 2000/s and p99 <= 50 ms: {}",
            rate / e_rate,
            p99.as_secs_f64() * 1e3,
            e_p99.as_secs_f64() * 1e3,
            verdict(rate, p99)
        );
        println!(
            "batch requests:     etcd vs embedded {:.2}x throughput, p99 {:.1} vs {:.1} ms; goal on etcd >= 2000/s and p99 <= 50 ms: {}",
            b_rate / eb_rate,
            b_p99.as_secs_f64() * 1e3,
            eb_p99.as_secs_f64() * 1e3,
            verdict(b_rate, b_p99)
        );
    });
}
