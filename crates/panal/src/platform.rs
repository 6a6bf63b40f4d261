//! The single-machine platform of `panal up`: the embedded store, the control plane with its
//! controllers, a local agent linked in-process (through the same trait remote agents use), and
//! the HTTP API, all in one process. Everything lives in one data directory and is recovered
//! from it on restart.

use crate::local::{LocalImages, QemuConsoles};
use anyhow::{Context, Result};
use panal_agent::boot::BootResolver;
use panal_agent::{Agent, AgentConfig};
use panal_driver::DynDriver;
use panal_driver::fake::{FakeConfig, FakeDriver, FakeWorld};
use panal_driver::qemu::{GuestImage, QemuConfig, QemuDriver};
use panal_server::auth::{Role, create_token, verify};
use panal_server::controllers::Controllers;
use panal_server::images::ImageStore;
use panal_server::images::fetch::FetchPolicy;
use panal_server::images::guard::UrlPolicy;
use panal_server::link::InProcessLink;
use panal_server::scheduler::Policy;
use panal_server::{App, AppConfig};
use panal_store::DynStore;
use panal_store::embedded::EmbeddedStore;
use panal_types::Name;
use panal_types::image::{DiskFormat, ImageImport};
use panal_types::vm::MachineProfile;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How to run a platform.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where all state lives.
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// This host's name.
    pub host_name: Name,
    /// Host lease time-to-live.
    pub host_lease_ttl: Duration,
    /// Latency of the fake driver's simulated actions.
    pub fake: FakeConfig,
    /// Where the built-in guest was built (imported as images `tiny` and `tiny-disk`);
    /// `None` to skip.
    pub guest_dir: Option<PathBuf>,
    /// Run the QEMU driver (off in control-plane-only tests).
    pub qemu: bool,
    /// Labels of the local host (e.g. `panal.io/cpu-overcommit` to fit more VMs on a small
    /// machine).
    pub host_labels: std::collections::BTreeMap<String, String>,
    /// Storage pools beside `DIR/pools/default`.
    pub pools: Vec<panal_agent::inventory::PoolDir>,
    /// Carry virtual networks on the local host (bridges, VXLAN, nftables; needs root).
    pub networks: bool,
    /// How images are downloaded from URLs (allowed ranges, size cap, deadline); the API's own
    /// endpoint and this machine's addresses are added at start.
    pub image_fetch: FetchPolicy,
}

impl PlatformConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 7180)),
            host_name: local_host_name(),
            host_lease_ttl: Duration::from_secs(10),
            fake: FakeConfig::default(),
            guest_dir: Some(GuestImage::default_dir()),
            qemu: true,
            host_labels: Default::default(),
            pools: Vec::new(),
            networks: nix::unistd::geteuid().is_root(),
            image_fetch: FetchPolicy::default(),
        }
    }
}

/// The storage pool every host has: `DIR/pools/default`, created if missing.
pub fn default_pool(data_dir: &Path) -> Result<panal_agent::inventory::PoolDir> {
    let path = data_dir.join("pools").join("default");
    std::fs::create_dir_all(&path)
        .with_context(|| format!("cannot create the storage pool {}", path.display()))?;
    Ok(panal_agent::inventory::PoolDir {
        name: "default".into(),
        path,
        shared: false,
    })
}

/// This machine's name as a valid host name (`local` if it has none usable).
pub fn local_host_name() -> Name {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cleaned: String = raw
        .trim()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    Name::parse(cleaned.trim_matches('-'))
        .or_else(|_| Name::parse("local"))
        .expect("\"local\" is a valid name")
}

/// A running platform. Dropping it stops the API, the controllers and the agent; VMs keep
/// running (their hypervisor processes outlive the platform and are re-attached next time).
pub struct Platform {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The admin token.
    pub token: String,
    /// The application layer (for in-process tests).
    pub app: App,
    /// The store.
    pub store: DynStore,
    /// The fake driver's simulated host.
    pub fake_world: Arc<FakeWorld>,
    server: JoinHandle<()>,
    agent: JoinHandle<()>,
    controllers: Option<Controllers>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.server.abort();
        self.agent.abort();
    }
}

impl Platform {
    /// Opens (or creates) the data directory and starts everything.
    pub async fn start(cfg: PlatformConfig) -> Result<Platform> {
        panal_server::scheduler::validate_host_labels(&cfg.host_labels).map_err(|e| {
            anyhow::anyhow!(
                "--host-label {}: {}",
                e.field
                    .as_deref()
                    .and_then(|f| f.strip_prefix("labels."))
                    .unwrap_or("?"),
                e.message
            )
        })?;
        create_private_dir(&cfg.data_dir)?;
        let store: DynStore =
            EmbeddedStore::open(&cfg.data_dir.join("state.redb")).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the state store in {}: {e}",
                    cfg.data_dir.display()
                )
            })?;
        // Bound first: the image download guard must know the API's own address.
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let mut fetch = cfg.image_fetch.clone();
        fetch.urls = UrlPolicy::new(fetch.urls.allow.clone(), vec![addr]);
        let qemu_dir = cfg.data_dir.join("qemu");
        let mut app = App::new(
            store.clone(),
            AppConfig {
                host_lease_ttl: cfg.host_lease_ttl,
                ..AppConfig::default()
            },
        )
        .with_images(ImageStore::new(cfg.data_dir.join("images")).with_fetch(fetch));
        if cfg.qemu {
            app = app.with_consoles(Arc::new(QemuConsoles {
                state_dir: qemu_dir.clone(),
            }));
        }
        app.bootstrap().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let token = admin_token(&app, &cfg.data_dir).await?;
        let controllers = Controllers::start(&app, Policy::default());

        let fake_world = FakeWorld::persistent(cfg.data_dir.join("fake-vms.json"));
        let mut drivers: Vec<DynDriver> = vec![Arc::new(FakeDriver::new(
            fake_world.clone(),
            cfg.fake.clone(),
        ))];
        let guest = cfg
            .guest_dir
            .as_deref()
            .and_then(|d| GuestImage::open(d).ok());
        if cfg.qemu {
            let mut qcfg = QemuConfig::new(qemu_dir);
            if let Some(g) = &guest {
                qcfg.probe_guest = Some(g.direct_kernel(MachineProfile::Microvm));
                qcfg.disk_boot_kernel = Some(g.direct_kernel(MachineProfile::Microvm));
            }
            drivers.push(Arc::new(QemuDriver::new(qcfg)));
        }
        let boot: Arc<dyn BootResolver> = Arc::new(LocalImages { app: app.clone() });
        let mut agent_cfg = AgentConfig::new(cfg.host_name.clone());
        agent_cfg.heartbeat = cfg.host_lease_ttl / 3;
        agent_cfg.labels = cfg.host_labels.clone();
        agent_cfg.pools = vec![default_pool(&cfg.data_dir)?];
        agent_cfg.pools.extend(cfg.pools.iter().cloned());
        if cfg.networks && cfg.qemu {
            // One host: no tunnel peers, so the loopback address serves as the local end.
            agent_cfg.network = Some(panal_agent::network::NetworkConfig {
                tunnel_address: std::net::Ipv4Addr::LOCALHOST,
                prefix: "pn".into(),
            });
        }
        let agent = Agent::new(
            agent_cfg,
            drivers,
            Arc::new(InProcessLink::new(app.clone())),
            boot,
        );
        let agent = tokio::spawn(agent.run());

        let router = panal_server::api::router(app.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "API server stopped");
            }
        });
        if let Some(g) = &guest {
            import_builtin_images(&app, g).await;
        }
        // Wait until the local host is registered and ready so the first request can be placed
        // (and find its pools); a loaded machine may take seconds.
        for _ in 0..1000 {
            if app
                .host(cfg.host_name.as_str())
                .await
                .is_ok_and(|h| h.alive())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Platform {
            addr,
            token,
            app,
            store,
            fake_world,
            server,
            agent,
            controllers: Some(controllers),
        })
    }

    /// Stops the API, the controllers and the agent, and waits until the store is closed, so the
    /// same data directory can be opened again at once. VMs keep running.
    pub async fn shutdown(mut self) {
        self.server.abort();
        self.agent.abort();
        let _ = (&mut self.server).await;
        let _ = (&mut self.agent).await;
        if let Some(c) = self.controllers.take() {
            c.stop().await;
        }
        let store = self.store.clone();
        drop(self);
        // Tasks that held the store (streams, VM tasks) end within moments of their peers going.
        for _ in 0..500 {
            if Arc::strong_count(&store) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    Ok(())
}

/// Reuses the admin token in `DIR/admin.token` if the store knows it, else makes a new one.
pub async fn admin_token(app: &App, dir: &Path) -> Result<String> {
    let path = dir.join("admin.token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if verify(app.repo(), &existing)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .is_some()
        {
            return Ok(existing);
        }
    }
    let token = create_token(app.repo(), "admin", Role::Admin)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Imports the built-in tiny guest as images `tiny` (kernel + initramfs) and `tiny-disk` (ext4
/// root disk), once.
pub async fn import_builtin_images(app: &App, guest: &GuestImage) {
    let s = |p: PathBuf| Some(p.to_string_lossy().into_owned());
    let wanted = [
        ImageImport {
            name: "tiny".into(),
            kernel_path: s(guest.kernel(MachineProfile::Microvm)),
            initrd_path: s(guest.initramfs()),
            ..ImageImport::default()
        },
        ImageImport {
            name: "tiny-disk".into(),
            disk_path: s(guest.rootfs_qcow2()),
            format: Some(DiskFormat::Qcow2),
            ..ImageImport::default()
        },
    ];
    for req in wanted {
        if app.image(None, &req.name).await.is_ok() {
            continue;
        }
        let name = req.name.clone();
        match app.import_image(req).await {
            Ok(accepted) => {
                let id = accepted.operation.id.to_string();
                match app.wait_operation(&id, Duration::from_secs(120)).await {
                    Ok(op) if op.state == panal_types::operation::OperationState::Succeeded => {
                        tracing::info!(image = %name, "imported the built-in image");
                    }
                    Ok(op) => {
                        tracing::warn!(image = %name, state = op.state.as_str(), "built-in image import did not succeed")
                    }
                    Err(e) => {
                        tracing::warn!(image = %name, error = %e, "built-in image import failed")
                    }
                }
            }
            Err(e) => tracing::warn!(image = %name, error = %e, "cannot import the built-in image"),
        }
    }
}
