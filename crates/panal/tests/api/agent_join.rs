//! Remote agents over mutual TLS, in one process: a control plane with its agent endpoint on
//! loopback, agents that join with tokens and then run VMs through the HTTPS link (simulated
//! hypervisor; the three-namespace test with real QEMU is `e2e_pool`). Covers the join-token
//! rules (single use, expiry, revocation, CA pinning), certificate identity (another CA, another
//! host's name, another host's VMs and images, the user API) and image fetch with checksum.

use panal_agent::link::{ControlPlaneLink, LinkError};
use panal_agent::remote::{AgentIdentity, RemoteImages, RemoteLink, join};
use panal_agent::{Agent, AgentConfig};
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_server::controllers::Controllers;
use panal_server::images::ImageStore;
use panal_server::scheduler::Policy;
use panal_server::{App, AppConfig};
use panal_store::embedded::EmbeddedStore;
use panal_store::{DynStore, StoreExt};
use panal_types::agent::{HostRegistration, VmStatusReport};
use panal_types::image::ImageImport;
use panal_types::join::JoinTokenCreate;
use panal_types::vm::{HypervisorKind, Vm, VmCreate, VmPhase};
use panal_types::{ErrorCode, Name};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A control plane with its agent endpoint.
struct ControlPlane {
    app: App,
    store: DynStore,
    url: String,
    _listener: panal_server::agent_api::AgentListener,
    _controllers: Controllers,
    dir: tempfile::TempDir,
}

async fn control_plane() -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = EmbeddedStore::open(&dir.path().join("state.redb")).unwrap();
    let app = App::new(
        store.clone(),
        AppConfig {
            host_lease_ttl: Duration::from_secs(3),
            ..AppConfig::default()
        },
    )
    .with_images(ImageStore::new(dir.path().join("images")));
    app.bootstrap().await.unwrap();
    let controllers = Controllers::start(&app, Policy::default());
    let listener =
        panal_server::agent_api::serve(app.clone(), "127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
    ControlPlane {
        url: format!("https://{}", listener.addr),
        app,
        store,
        _listener: listener,
        _controllers: controllers,
        dir,
    }
}

impl ControlPlane {
    async fn token(&self, host: Option<&str>) -> String {
        self.app
            .create_join_token(JoinTokenCreate {
                host: host.map(str::to_owned),
                ..JoinTokenCreate::default()
            })
            .await
            .unwrap()
            .token
    }

    /// Waits until the hosts are registered and ready.
    async fn wait_hosts(&self, names: &[&str]) {
        for _ in 0..200 {
            let mut ready = 0;
            for n in names {
                if let Ok(h) = self.app.host(n).await
                    && h.state == panal_types::host::HostState::Ready
                {
                    ready += 1;
                }
            }
            if ready == names.len() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hosts {names:?} did not register");
    }

    async fn vm(&self, name: &str) -> Vm {
        self.app.vm(None, name).await.unwrap()
    }

    async fn wait_running(&self, name: &str) -> Vm {
        for _ in 0..200 {
            let vm = self.vm(name).await;
            if vm.status.phase == VmPhase::Running {
                return vm;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{name} did not reach running: {:?}",
            self.vm(name).await.status
        );
    }
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// Runs an agent with the identity, offering the simulated hypervisor, labelled `slot=<slot>`.
fn run_agent(
    id: &AgentIdentity,
    slot: &str,
    cache: std::path::PathBuf,
) -> (Arc<FakeWorld>, JoinHandle<()>) {
    let world = FakeWorld::new();
    let link = Arc::new(RemoteLink::new(id).unwrap());
    let mut cfg = AgentConfig::new(id.host.clone());
    cfg.heartbeat = Duration::from_secs(1);
    cfg.capacity_override = Some((8, 16 << 30));
    cfg.labels = BTreeMap::from([("slot".to_owned(), slot.to_owned())]);
    let agent = Agent::new(
        cfg,
        vec![Arc::new(FakeDriver::new(
            world.clone(),
            FakeConfig::default(),
        ))],
        link.clone(),
        Arc::new(RemoteImages::new(link, cache)),
    );
    (world, tokio::spawn(agent.run()))
}

fn vm_on(name: &str, slot: &str, image: Option<&str>) -> VmCreate {
    VmCreate {
        name: name.into(),
        hypervisor: Some(HypervisorKind::Fake),
        vcpus: Some(1),
        memory_bytes: Some(256 << 20),
        image: image.map(str::to_owned),
        host_selector: BTreeMap::from([("slot".to_owned(), slot.to_owned())]),
        ..VmCreate::default()
    }
}

/// Rewrites a stored join token's expiry into the past (the shortest TTL is a minute).
async fn expire(cp: &ControlPlane, token: &str) {
    let id = token.split('.').next().unwrap();
    let key = panal_server::keys::join_token(id);
    let kv = cp.store.get(&key).await.unwrap().unwrap();
    let mut env: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    env["data"]["expires_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    cp.store
        .put(&key, serde_json::to_vec(&env).unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_tokens_are_single_use_expire_and_can_be_revoked() {
    let cp = control_plane().await;

    let token = cp.token(None).await;
    let id = join(&cp.url, &token, &name("h1"))
        .await
        .expect("first join");
    assert_eq!(id.host.as_str(), "h1");
    let reused = join(&cp.url, &token, &name("h2")).await.unwrap_err();
    assert!(reused.contains("already used"), "{reused}");

    let expired = cp.token(None).await;
    expire(&cp, &expired).await;
    let err = join(&cp.url, &expired, &name("h3")).await.unwrap_err();
    assert!(err.contains("expired"), "{err}");

    let revoked = cp.token(None).await;
    let listed = cp
        .app
        .revoke_join_token(revoked.split('.').next().unwrap())
        .await
        .unwrap();
    assert_eq!(listed.state, panal_types::join::JoinTokenState::Revoked);
    let err = join(&cp.url, &revoked, &name("h4")).await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");

    let err = join(&cp.url, "not-a-token", &name("h5")).await.unwrap_err();
    assert!(err.contains("malformed"), "{err}");

    // A token whose CA pin is not this control plane's: the agent refuses before sending it.
    let good = cp.token(None).await;
    let (head, _) = good.rsplit_once('.').unwrap();
    let pinned_elsewhere = format!("{head}.{}", "0".repeat(64));
    let err = join(&cp.url, &pinned_elsewhere, &name("h6"))
        .await
        .unwrap_err();
    assert!(err.contains("not the one the token names"), "{err}");
    // ...and the token was not spent by that attempt.
    join(&cp.url, &good, &name("h6"))
        .await
        .expect("the untouched token still works");

    let states: Vec<_> = cp
        .app
        .list_join_tokens(None, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|t| (t.used_by.map(|h| h.to_string()), t.state))
        .collect();
    use panal_types::join::JoinTokenState::*;
    for want in [
        (Some("h1".to_owned()), Used),
        (None, Expired),
        (None, Revoked),
        (Some("h6".to_owned()), Used),
    ] {
        assert!(states.contains(&want), "{want:?} missing from {states:?}");
    }

    // Bad input to the token API itself.
    for (req, field) in [
        (
            JoinTokenCreate {
                ttl_seconds: Some(5),
                ..Default::default()
            },
            "ttl_seconds",
        ),
        (
            JoinTokenCreate {
                ttl_seconds: Some(30 * 86_400),
                ..Default::default()
            },
            "ttl_seconds",
        ),
        (
            JoinTokenCreate {
                host: Some("Bad_Name".into()),
                ..Default::default()
            },
            "host",
        ),
    ] {
        let e = cp.app.create_join_token(req).await.unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
    }
    let e = cp.app.revoke_join_token("../../etc").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidValue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_certificate_opens_its_own_host_only() {
    let cp = control_plane().await;
    let h1 = join(&cp.url, &cp.token(None).await, &name("h1"))
        .await
        .unwrap();
    let h2 = join(&cp.url, &cp.token(None).await, &name("h2"))
        .await
        .unwrap();

    // Another host's name, with a fresh token: refused; with a token bound to that name it
    // replaces the old identity (re-join after a reinstall), and the old certificate dies.
    let err = join(&cp.url, &cp.token(None).await, &name("h1"))
        .await
        .unwrap_err();
    assert!(err.contains("already joined"), "{err}");

    let (w1, a1) = run_agent(&h1, "a", cp.dir.path().join("cache1"));
    let (w2, a2) = run_agent(&h2, "b", cp.dir.path().join("cache2"));
    cp.wait_hosts(&["h1", "h2"]).await;
    cp.app.create_vm(vm_on("on-a", "a", None)).await.unwrap();
    cp.app.create_vm(vm_on("on-b", "b", None)).await.unwrap();
    let on_a = cp.wait_running("on-a").await;
    let on_b = cp.wait_running("on-b").await;
    assert_eq!(on_a.status.host.as_ref().map(Name::as_str), Some("h1"));
    assert_eq!(on_b.status.host.as_ref().map(Name::as_str), Some("h2"));
    assert_eq!((w1.running_count(), w2.running_count()), (1, 1));

    let link1 = RemoteLink::new(&h1).unwrap();
    // Registering under another host's name.
    let reg = HostRegistration {
        name: name("h2"),
        inventory: cp.app.host("h2").await.unwrap().inventory,
        labels: BTreeMap::new(),
        zone: None,
    };
    match link1.register(reg).await {
        Err(LinkError::Rejected(e)) => assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::Forbidden, Some("name"))
        ),
        other => panic!("registering as another host: {other:?}"),
    }
    // Reporting on another host's VM (the host argument is ignored: the certificate decides).
    let report = VmStatusReport {
        id: on_b.id,
        project: on_b.project.clone(),
        name: on_b.name.clone(),
        phase: VmPhase::Stopped,
        reason: None,
        observed_generation: on_b.generation,
        observed_restart_nonce: 0,
        restarts: 0,
        event: None,
        stopped_by_guest: false,
        cleaned_up: false,
    };
    match link1.report(&name("h2"), report).await {
        Err(LinkError::Rejected(e)) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("reporting on another host's VM: {other:?}"),
    }
    assert_eq!(
        cp.vm("on-b").await.status.phase,
        VmPhase::Running,
        "the forged report changed nothing"
    );

    // Another host's boot image, the user API and anything else on the agent endpoint.
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(h1.ca_pem.as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(format!("{}\n{}", h1.cert_pem, h1.key_pem).as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap();
    for path in [
        "/agent/v1/vms/default/on-b/boot",
        "/api/v1/vms",
        "/api/v1/join-tokens",
        "/agent/v1/hosts/h2",
    ] {
        let status = http
            .get(format!("{}{path}", cp.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
    // Without a certificate only the CA and join are open.
    let anonymous = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(h1.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let s = anonymous
        .post(format!("{}/agent/v1/heartbeat", cp.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 401);
    let s = anonymous
        .get(format!("{}/agent/v1/ca", cp.url))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 200);

    // A certificate from another installation's CA fails the TLS handshake.
    let other = control_plane().await;
    let foreign = join(&other.url, &other.token(None).await, &name("h1"))
        .await
        .unwrap();
    let forged = AgentIdentity {
        url: cp.url.clone(),
        ca_pem: h1.ca_pem.clone(),
        ..foreign
    };
    match RemoteLink::new(&forged)
        .unwrap()
        .heartbeat(&name("h1"))
        .await
    {
        Err(LinkError::Unavailable(_)) => {}
        other => panic!("a foreign certificate was accepted: {other:?}"),
    }

    // Re-joining h1 with a token bound to it revokes the old certificate at once.
    let rejoined = join(&cp.url, &cp.token(Some("h1")).await, &name("h1"))
        .await
        .unwrap();
    match link1.heartbeat(&name("h1")).await {
        Err(LinkError::Rejected(e)) => assert_eq!(e.code, ErrorCode::Unauthorized),
        other => panic!("a replaced certificate still works: {other:?}"),
    }
    RemoteLink::new(&rejoined)
        .unwrap()
        .heartbeat(&name("h1"))
        .await
        .expect("the new certificate works");
    a1.abort();
    a2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_fetch_images_once_and_verify_them() {
    let cp = control_plane().await;
    let kernel = cp.dir.path().join("vmlinux");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&kernel, &bytes).unwrap();
    let accepted = cp
        .app
        .import_image(ImageImport {
            name: "k".into(),
            kernel_path: Some(kernel.to_string_lossy().into_owned()),
            ..ImageImport::default()
        })
        .await
        .unwrap();
    let op = cp
        .app
        .wait_operation(&accepted.operation.id.to_string(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        op.state,
        panal_types::operation::OperationState::Succeeded,
        "{op:?}"
    );
    let image = cp.app.image(None, "k").await.unwrap();

    let h1 = join(&cp.url, &cp.token(None).await, &name("h1"))
        .await
        .unwrap();
    let cache = cp.dir.path().join("cache1");
    let (_w1, a1) = run_agent(&h1, "a", cache.clone());
    cp.wait_hosts(&["h1"]).await;
    cp.app
        .create_vm(vm_on("boots-k", "a", Some("k")))
        .await
        .unwrap();
    cp.wait_running("boots-k").await;
    let cached = cache.join(image.id.to_string()).join("kernel");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "the cached kernel is the imported one"
    );
    let first_fetch = std::fs::metadata(&cached).unwrap().modified().unwrap();

    // A second VM from the same image uses the cache: the file is not fetched again.
    cp.app
        .create_vm(vm_on("boots-k-2", "a", Some("k")))
        .await
        .unwrap();
    cp.wait_running("boots-k-2").await;
    assert_eq!(
        std::fs::metadata(&cached).unwrap().modified().unwrap(),
        first_fetch
    );

    // A damaged cache entry (wrong length) is fetched again and verified.
    std::fs::write(&cached, b"truncated").unwrap();
    cp.app
        .create_vm(vm_on("boots-k-3", "a", Some("k")))
        .await
        .unwrap();
    cp.wait_running("boots-k-3").await;
    assert_eq!(std::fs::read(&cached).unwrap(), bytes);
    a1.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_fails_over_between_replicas() {
    let mut cp = control_plane().await;
    // A second replica on the same store: its own application layer and agent endpoint, the
    // controllers staying with the first (as leadership would have it).
    let replica = App::new(
        cp.store.clone(),
        AppConfig {
            host_lease_ttl: Duration::from_secs(3),
            ..AppConfig::default()
        },
    );
    let second =
        panal_server::agent_api::serve(replica.clone(), "127.0.0.1:0".parse().unwrap(), Vec::new())
            .await
            .unwrap();
    let mut id = join(&cp.url, &cp.token(None).await, &name("h1"))
        .await
        .unwrap();
    id.alternates = vec![format!("https://{}", second.addr)];
    let (world, agent) = run_agent(&id, "a", cp.dir.path().join("cache"));
    cp.wait_hosts(&["h1"]).await;
    cp.app.create_vm(vm_on("before", "a", None)).await.unwrap();
    cp.wait_running("before").await;

    // The first replica's agent endpoint dies (listener and open connections).
    drop(std::mem::replace(&mut cp._listener, second));
    // The agent goes on through the second replica: a new VM is assigned, started and
    // reported, and the host stays alive well past its lease TTL.
    cp.app.create_vm(vm_on("after", "a", None)).await.unwrap();
    cp.wait_running("after").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cp.wait_hosts(&["h1"]).await;
    assert_eq!(world.running_count(), 2, "no VM was lost or started twice");
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_agent_copies_an_image_into_a_volume() {
    use panal_types::volume::{VolumeCreate, VolumePhase, VolumeSource};
    let cp = control_plane().await;
    let disk = cp.dir.path().join("base.raw");
    let bytes: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
    std::fs::write(&disk, &bytes).unwrap();
    let accepted = cp
        .app
        .import_image(ImageImport {
            name: "base".into(),
            disk_path: Some(disk.to_string_lossy().into_owned()),
            format: Some(panal_types::image::DiskFormat::Raw),
            ..ImageImport::default()
        })
        .await
        .unwrap();
    cp.app
        .wait_operation(&accepted.operation.id.to_string(), Duration::from_secs(30))
        .await
        .unwrap();

    // An agent with a storage pool, joined over mutual TLS.
    let id = join(&cp.url, &cp.token(None).await, &name("h1"))
        .await
        .unwrap();
    let link = Arc::new(RemoteLink::new(&id).unwrap());
    let mut cfg = AgentConfig::new(id.host.clone());
    cfg.heartbeat = Duration::from_secs(1);
    cfg.capacity_override = Some((8, 16 << 30));
    let pool = cp.dir.path().join("h1-pool");
    cfg.pools = vec![panal_agent::inventory::PoolDir {
        name: "default".into(),
        path: pool.clone(),
        shared: false,
    }];
    let agent = Agent::new(
        cfg,
        vec![Arc::new(FakeDriver::new(
            FakeWorld::new(),
            FakeConfig::default(),
        ))],
        link.clone(),
        Arc::new(RemoteImages::new(link, cp.dir.path().join("h1-cache"))),
    );
    let task = tokio::spawn(agent.run());
    cp.wait_hosts(&["h1"]).await;

    let a = cp
        .app
        .create_volume(VolumeCreate {
            name: "copy".into(),
            project: None,
            size_bytes: None,
            format: Some(panal_types::volume::VolumeFormat::Raw),
            pool: None,
            host: Some("h1".into()),
            source: Some(VolumeSource::Image {
                image: "base".into(),
            }),
        })
        .await
        .unwrap();
    let op = cp
        .app
        .wait_operation(&a.operation.id.to_string(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        op.state,
        panal_types::operation::OperationState::Succeeded,
        "{op:?}"
    );
    let v = cp.app.volume(None, "copy").await.unwrap();
    assert_eq!(v.phase, VolumePhase::Ready);
    assert_eq!(
        std::fs::read(pool.join(&v.file)).unwrap(),
        bytes,
        "the volume holds the image's bytes, fetched over the agent link"
    );
    task.abort();
}
