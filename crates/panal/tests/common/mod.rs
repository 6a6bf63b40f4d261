//! Shared test scaffolding: a whole platform on a temporary data directory with the fake driver,
//! plus a raw HTTP helper for requests the typed client would refuse to build.

#![allow(dead_code)]

pub mod networks;

use panal::platform::{Platform, PlatformConfig};
use panal_client::Client;
use panal_types::operation::{Operation, OperationState};
use std::time::Duration;

/// A platform and the directory it lives in (removed on drop).
pub struct TestPlatform {
    pub platform: Platform,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

/// Starts a platform on a fresh directory and a free port.
pub async fn start() -> TestPlatform {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir).await
}

/// Starts a platform on an existing directory (to test recovery).
pub async fn start_in(dir: tempfile::TempDir) -> TestPlatform {
    start_with(dir, |_| {}).await
}

/// Starts a platform with adjusted settings.
pub async fn start_with(
    dir: tempfile::TempDir,
    adjust: impl FnOnce(&mut PlatformConfig),
) -> TestPlatform {
    let mut cfg = PlatformConfig::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    // Control-plane tests: the fake driver only (the real-QEMU tests are the e2e_* files).
    cfg.qemu = false;
    cfg.guest_dir = None;
    adjust(&mut cfg);
    let platform = Platform::start(cfg).await.expect("platform starts");
    let client = Client::new(&platform.url(), &platform.token);
    TestPlatform {
        platform,
        client,
        dir,
    }
}

/// A request with the admin token: (status, JSON body).
pub async fn call(
    tp: &TestPlatform,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string());
    raw(tp, method, path, Some(&tp.platform.token), body.as_deref()).await
}

/// A refusal: its HTTP status, stable code, field, and a message.
#[track_caller]
pub fn assert_err(got: &(u16, serde_json::Value), status: u16, code: &str, field: Option<&str>) {
    assert_eq!(got.0, status, "status for {got:?}");
    assert_eq!(got.1["code"], code, "code for {got:?}");
    assert_eq!(got.1["field"].as_str(), field, "field for {got:?}");
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message for {got:?}"
    );
}

/// Waits for an operation to end and returns it.
pub async fn wait_op(client: &Client, op: &Operation) -> Operation {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let cur = client
            .wait_operation(&op.id.to_string(), Duration::from_secs(5))
            .await
            .expect("wait");
        if cur.state != OperationState::Running {
            return cur;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "operation {} did not finish: {:?}",
            op.id,
            cur.progress
        );
    }
}

/// A raw request: (status, JSON body).
pub async fn raw(
    tp: &TestPlatform,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, format!("{}{path}", tp.platform.url()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `check` until it is true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
