//! API latency under a steady load: a real `panal up` process (fake driver, embedded store),
//! and an open-loop client that sends requests at a fixed rate whatever the answers' speed (so
//! slow answers cannot hide by slowing the load down). Prints p50/p99/max for `GET` of one VM and
//! for VM creates, each at the target rate, against the goals of the core issue.
//!
//! `cargo bench -p panal --bench api_latency` (PANAL_BENCH_RATE, PANAL_BENCH_SECS to change the
//! load; defaults 500 requests/s for 5 s each).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_panal");

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Sends `rate` requests per second for `secs` seconds; each request is made by `make(i)`.
async fn open_loop<F, Fut>(rate: u64, secs: u64, make: F) -> (Vec<Duration>, usize)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = rate * secs;
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        let fut = make(i);
        handles.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = fut.await;
            (t.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut errors = 0;
    for h in handles {
        let (d, ok) = h.await.expect("request task");
        if !ok {
            errors += 1;
        }
        lat.push(d);
    }
    lat.sort();
    (lat, errors)
}

fn report(what: &str, rate: u64, lat: &[Duration], errors: usize, goal_p99: Duration) {
    let p50 = percentile(lat, 0.50);
    let p99 = percentile(lat, 0.99);
    let max = lat.last().copied().unwrap_or_default();
    println!(
        "{what:<14} {rate} req/s x {} requests: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  errors {errors}  goal p99 <= {} ms: {}",
        lat.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        goal_p99.as_millis(),
        if p99 <= goal_p99 && errors == 0 {
            "PASS"
        } else {
            "FAIL"
        }
    );
}

fn main() {
    let rate = env_or("PANAL_BENCH_RATE", 500);
    let secs = env_or("PANAL_BENCH_SECS", 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--no-default-config",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("PANAL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn panal up");
    let stdout = child.stdout.take().unwrap();
    let up = Up(child);
    let mut lines = BufReader::new(stdout).lines();
    for l in lines.by_ref() {
        if l.unwrap_or_default().starts_with("Panal is up") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let token = std::fs::read_to_string(dir.path().join("admin.token")).expect("token");
    let base = format!("http://127.0.0.1:{port}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
        let auth = Arc::new(format!("Bearer {}", token.trim()));
        // One VM to read.
        let r = http
            .post(format!("{base}/api/v1/vms"))
            .header("authorization", auth.as_str())
            .json(&serde_json::json!({"name": "target", "hypervisor": "fake"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        // Warm the connection pool.
        for _ in 0..50 {
            let _ = http.get(format!("{base}/api/v1/vms/target")).header("authorization", auth.as_str()).send().await;
        }
        println!("API latency benchmark: panal up (fake driver, embedded store) on this machine");
        let (lat, errors) = {
            let http = http.clone();
            let base = base.clone();
            let auth = auth.clone();
            open_loop(rate, secs, move |_| {
                let req = http.get(format!("{base}/api/v1/vms/target")).header("authorization", auth.as_str());
                async move { matches!(req.send().await, Ok(r) if r.status() == 200) }
            })
            .await
        };
        report("GET vm", rate, &lat, errors, Duration::from_millis(5));
        let (lat, errors) = {
            let http = http.clone();
            let base = base.clone();
            let auth = auth.clone();
            open_loop(rate, secs, move |i| {
                let body = serde_json::json!({"name": format!("vm-{i}"), "hypervisor": "fake", "memory_bytes": 1 << 20, "start": false});
                let req = http.post(format!("{base}/api/v1/vms")).header("authorization", auth.as_str()).json(&body);
                async move { matches!(req.send().await, Ok(r) if r.status() == 202) }
            })
            .await
        };
        report("POST vm", rate, &lat, errors, Duration::from_millis(20));
    });
    drop(up);
}
