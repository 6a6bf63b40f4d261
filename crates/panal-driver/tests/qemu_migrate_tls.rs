//! Real-QEMU (TCG) tests of the migration channel's TLS: a guest and its local data disk move
//! with both QEMUs holding credentials from one CA (memory stream and NBD disk copy); a
//! destination that cannot prove itself (another CA, another host's name) is refused by the
//! source, a source with another CA's certificate by the destination, and a host without usable
//! credentials takes no migration: the guest keeps running on the source throughout.
//! Certificates are made here with `rcgen` as Panal's CA makes agents' (`pki.rs`): server and
//! client authentication, the host name as DNS SAN. Each side is its own "host" (one `Env` each).

mod common;

use common::{BOOT, Env, free_addr, wait_finished, wait_state};
use panal_driver::qemu::{MigrationTls, QemuDriver, QemuVm, READY_LINE};
use panal_driver::{
    DataDisk, Driver, DriverError, DynVmHandle, Incoming, MigrationParams, MigrationPhase,
    MigrationTarget, RuntimeState, VmLaunch,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const VOL: &str = "7a1d2c3b-4e5f-4a6b-8c7d-0123456789ab";

/// A certificate authority of the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A host's certificate and key (PEM), issued by `ca` for `host`.
fn leaf(ca: &Ca, host: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![host.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, host);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A QEMU credentials directory under `env`: trusting `trust`, proving itself with `pair`.
fn creds(env: &Env, name: &str, trust: &Ca, pair: &(String, String)) -> MigrationTls {
    let dir = env.dir.path().join(name);
    write_creds(&dir, &trust.cert.pem(), pair);
    MigrationTls::X509(dir)
}

/// Writes the five files of a credentials directory (`trust`: one or more CA certificates).
fn write_creds(dir: &Path, trust: &str, pair: &(String, String)) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("ca-cert.pem", trust),
        ("server-cert.pem", &pair.0),
        ("server-key.pem", &pair.1),
        ("client-cert.pem", &pair.0),
        ("client-key.pem", &pair.1),
    ];
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
}

fn driver(env: &Env, tls: MigrationTls, cgroups: bool) -> QemuDriver {
    let mut c = env.config();
    c.cgroups = cgroups;
    c.migration_tls = tls;
    QemuDriver::new(c)
}

fn to(addr: std::net::SocketAddr, host: &str) -> MigrationTarget {
    MigrationTarget::Host {
        addr,
        host: host.into(),
    }
}

/// `tls-creds` and `tls-hostname` as QEMU reports them.
async fn tls_params(vm: &QemuVm) -> (String, String) {
    let p = vm.qmp("query-migrate-parameters", None).await.unwrap();
    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
    (s("tls-creds"), s("tls-hostname"))
}

/// An empty raw disk file of 64 MiB.
fn raw_disk(env: &Env, name: &str) -> PathBuf {
    let p = env.dir.path().join(name);
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(64 * MIB))
        .unwrap();
    p
}

fn data_disk(path: &Path) -> DataDisk {
    DataDisk {
        id: VOL.into(),
        path: path.to_path_buf(),
        format: "raw".into(),
        slot: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_and_its_local_disk_move_over_mutually_authenticated_tls() {
    let (src_env, dst_env) = (Env::new(), Env::new());
    let cluster = ca("test cluster CA");
    let src = driver(
        &src_env,
        creds(&src_env, "tls", &cluster, &leaf(&cluster, "host-a")),
        true,
    );
    let dst = driver(
        &dst_env,
        creds(&dst_env, "tls", &cluster, &leaf(&cluster, "host-b")),
        false,
    );
    let (src_file, dst_file) = (raw_disk(&src_env, "vol.raw"), raw_disk(&dst_env, "vol.raw"));
    let mut spec = src_env.microvm(256);
    spec.disks = vec![data_disk(&src_file)];
    let (qvm, _) = src.launch_qemu(&spec).await.expect("launch source");
    let vm: DynVmHandle = qvm.clone();
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;
    // The data disk's device, found by its serial (the disk id's first 20 alphanumerics).
    let serial: String = VOL
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(20)
        .collect();
    let out = con
        .run(
            &format!(
                "D=; for b in /sys/block/vd*; do [ \"$(cat $b/serial)\" = {serial} ] && D=/dev/${{b##*/}}; done; \
                 dd if=/dev/urandom of=$D bs=1M seek=4 count=4 conv=fsync 2>/dev/null && echo wrote-$D"
            ),
            Duration::from_secs(60),
        )
        .await;
    assert!(out.contains("wrote-/dev/vd"), "{out}");

    let (nbd, mig) = (free_addr(), free_addr());
    let mut dspec = spec.clone();
    dspec.disks = vec![data_disk(&dst_file)];
    dspec.incoming = Some(Incoming::Tcp(mig));
    let (dqvm, _) = dst.launch_qemu(&dspec).await.expect("launch destination");
    let dvm: DynVmHandle = dqvm.clone();
    let disks = vec![VOL.to_string()];
    dvm.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export");
    assert_eq!(
        tls_params(&dqvm).await.0,
        "mig-tls-server",
        "the destination listens with TLS"
    );

    // Without the destination's name there is nothing to check its certificate against.
    let unnamed = vm
        .mirror_disks(&MigrationTarget::Tcp(nbd), &disks, None)
        .await;
    assert!(
        matches!(unnamed, Err(DriverError::Invalid(_))),
        "{unnamed:?}"
    );

    vm.mirror_disks(&to(nbd, "host-b"), &disks, None)
        .await
        .expect("mirror over TLS");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = vm.disk_mirror_status().await.unwrap();
        assert!(s.iter().all(|d| d.error.is_none()), "{s:?}");
        if s.iter().all(|d| d.ready) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    vm.migrate(&to(mig, "host-b"), &MigrationParams::default())
        .await
        .expect("migrate over TLS");
    assert_eq!(
        tls_params(&qvm).await,
        ("mig-tls-client".into(), "host-b".into())
    );
    let done = wait_finished(&vm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    dvm.unexport_disks().await.expect("unexport");
    vm.shutdown(Duration::from_secs(10))
        .await
        .expect("stop source");
    src.cleanup(spec.id).await.unwrap();

    // And back: the QEMU that received the guest (its destination credentials already loaded)
    // is now a source, to a fresh destination on the first host.
    let (nbd, mig) = (free_addr(), free_addr());
    let mut back = spec.clone();
    back.incoming = Some(Incoming::Tcp(mig));
    let home = src.launch(&back).await.expect("launch the way back");
    home.export_disks(&Incoming::Tcp(nbd), &disks)
        .await
        .expect("export back");
    dvm.mirror_disks(&to(nbd, "host-a"), &disks, None)
        .await
        .expect("mirror back");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = dvm.disk_mirror_status().await.unwrap();
        assert!(s.iter().all(|d| d.error.is_none()), "{s:?}");
        if s.iter().all(|d| d.ready) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dvm.migrate(&to(mig, "host-a"), &MigrationParams::default())
        .await
        .expect("migrate back");
    let done = wait_finished(&dvm, Duration::from_secs(120)).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "back: {done:?}");
    wait_state(&home, RuntimeState::Running, Duration::from_secs(10)).await;
    home.unexport_disks().await.expect("unexport back");

    dvm.shutdown(Duration::from_secs(10))
        .await
        .expect("stop the way-back source");
    home.kill().await.expect("stop");
    assert!(
        std::fs::read(&src_file).unwrap() == std::fs::read(&dst_file).unwrap(),
        "the disk did not arrive whole"
    );
    src.cleanup(spec.id).await.unwrap();
    dst.cleanup(spec.id).await.unwrap();
}

/// Launches a destination for `spec` and sends the source's guest to it; returns how the
/// migration ended.
async fn try_move(
    vm: &DynVmHandle,
    dst: &QemuDriver,
    spec: &VmLaunch,
    host: &str,
) -> MigrationPhase {
    let addr = free_addr();
    let mut dspec = spec.clone();
    dspec.incoming = Some(Incoming::Tcp(addr));
    let dvm = dst.launch(&dspec).await.expect("launch destination");
    vm.migrate(&to(addr, host), &MigrationParams::default())
        .await
        .expect("migration started");
    let end = wait_finished(vm, Duration::from_secs(60)).await.phase;
    if end != MigrationPhase::Completed {
        // QEMU ends a failed incoming migration by itself; the kill only makes sure.
        let _ = dvm.kill().await;
        dst.cleanup(spec.id).await.unwrap();
    }
    end
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_of_the_same_ca_is_refused_and_the_guest_stays() {
    let (src_env, dst_env) = (Env::new(), Env::new());
    let (cluster, other) = (ca("test cluster CA"), ca("another CA"));
    let src = driver(
        &src_env,
        creds(&src_env, "tls", &cluster, &leaf(&cluster, "host-a")),
        true,
    );
    let spec = src_env.microvm(128);
    let (qvm, _) = src.launch_qemu(&spec).await.expect("launch source");
    let vm: DynVmHandle = qvm.clone();
    let mut con = src_env.console(spec.id);
    con.wait_for(READY_LINE, BOOT).await;

    let cases = [
        // A destination whose certificate another CA issued.
        (
            "another CA's destination",
            creds(&dst_env, "other-ca", &other, &leaf(&other, "host-b")),
        ),
        // The right CA, but another host's certificate.
        (
            "another host's certificate",
            creds(&dst_env, "other-host", &cluster, &leaf(&cluster, "host-c")),
        ),
    ];
    for (what, tls) in cases {
        let dst = driver(&dst_env, tls, false);
        let end = try_move(&vm, &dst, &spec, "host-b").await;
        assert!(matches!(end, MigrationPhase::Failed(_)), "{what}: {end:?}");
        eprintln!("{what}: refused ({end:?})");
        assert_eq!(
            vm.state().await.unwrap(),
            RuntimeState::Running,
            "{what}: the guest left the source"
        );
    }
    // A source whose certificate another CA issued (trusting the destination's CA too, or QEMU
    // would not even load it), refused by the destination: its files are rewritten and its
    // credentials object dropped, so that QEMU reads them again at the next migration.
    let src_dir = src_env.dir.path().join("tls");
    let both = format!("{}{}", other.cert.pem(), cluster.cert.pem());
    write_creds(&src_dir, &both, &leaf(&other, "host-a"));
    qvm.qmp(
        "object-del",
        Some(serde_json::json!({ "id": "mig-tls-client" })),
    )
    .await
    .unwrap();
    let good = driver(
        &dst_env,
        creds(&dst_env, "good", &cluster, &leaf(&cluster, "host-b")),
        false,
    );
    let end = try_move(&vm, &good, &spec, "host-b").await;
    assert!(
        matches!(end, MigrationPhase::Failed(_)),
        "a source of another CA: {end:?}"
    );
    eprintln!("a source of another CA: refused ({end:?})");
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Running);
    write_creds(&src_dir, &cluster.cert.pem(), &leaf(&cluster, "host-a"));
    qvm.qmp(
        "object-del",
        Some(serde_json::json!({ "id": "mig-tls-client" })),
    )
    .await
    .unwrap();

    // A host whose credentials are unusable takes no migration at all (none in the clear).
    let unavailable = driver(
        &dst_env,
        MigrationTls::Unavailable("this host's certificate predates migration TLS".into()),
        false,
    );
    let mut dspec = spec.clone();
    dspec.incoming = Some(Incoming::Tcp(free_addr()));
    let refused = unavailable.launch(&dspec).await.err().expect("refused");
    assert!(refused.to_string().contains("predates"), "{refused}");
    unavailable.cleanup(spec.id).await.unwrap();

    // The guest still answers on the source, and moves to a destination that proves itself.
    let out = con.run("echo here-$((6*7))", Duration::from_secs(20)).await;
    assert!(out.contains("here-42"), "{out}");
    let end = try_move(&vm, &good, &spec, "host-b").await;
    assert_eq!(end, MigrationPhase::Completed);
    assert_eq!(vm.state().await.unwrap(), RuntimeState::Paused);
    vm.kill().await.unwrap();
    let dvm = good
        .attach(spec.id)
        .await
        .unwrap()
        .expect("destination runs");
    wait_state(&dvm, RuntimeState::Running, Duration::from_secs(10)).await;
    dvm.kill().await.unwrap();
}
