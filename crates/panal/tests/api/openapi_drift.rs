//! The committed OpenAPI document (`openapi/panal.json`) must be exactly what the code declares.
//! When the API changes on purpose, regenerate it with
//! `cargo run -p panal -- openapi > openapi/panal.json` (or run this test with
//! `PANAL_UPDATE_OPENAPI=1`) and commit the result.

use std::path::PathBuf;

#[test]
fn committed_openapi_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../openapi/panal.json");
    let generated = panal_server::api::openapi()
        .to_pretty_json()
        .expect("serializable")
        + "\n";
    if std::env::var_os("PANAL_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/panal.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_diff = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "openapi/panal.json has drifted from the code (first difference at line {}). \
             Regenerate: PANAL_UPDATE_OPENAPI=1 cargo test -p panal --test api openapi_drift",
            first_diff + 1
        );
    }
}

#[test]
fn document_covers_every_endpoint() {
    let doc = panal_server::api::openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/api/v1/projects",
        "/api/v1/projects/{name}",
        "/api/v1/vms",
        "/api/v1/vms/{name}",
        "/api/v1/vms/{name}/start",
        "/api/v1/vms/{name}/stop",
        "/api/v1/vms/{name}/restart",
        "/api/v1/hosts",
        "/api/v1/hosts/{name}",
        "/api/v1/operations",
        "/api/v1/operations/{id}",
        "/api/v1/operations/{id}/wait",
        "/api/v1/events",
    ] {
        assert!(
            paths.iter().any(|k| k.as_str() == p),
            "{p} missing from {paths:?}"
        );
    }
}
