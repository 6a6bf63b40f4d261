//! The agent's identity as the credentials of its live migrations: the QEMU x509 directory
//! (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`)
//! that both ends of a migration load, so that only hosts holding a certificate from this
//! installation's CA take part, and a source sends only to the host it means (the destination's
//! certificate names it). Rewritten at every agent start from the identity, which stays the one
//! source of truth.
//!
//! Certificates issued before migrations were encrypted (client authentication only, no host
//! name) still serve the link to the control plane, but cannot authenticate a migration: such
//! a host refuses every migration in and out, with the reason and the way out (join again),
//! rather than sending guest memory in the clear.

use super::AgentIdentity;
use panal_driver::qemu::MigrationTls;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};
use std::path::Path;

/// The directory's name under the agent's data directory.
pub const DIR: &str = "migration-tls";

/// The ffdhe2048 group of RFC 7919 (public, standard parameters), as QEMU's `dh-params.pem`.
/// Without the file QEMU generates 2048-bit DH parameters every time it loads server
/// credentials, which took 60-500 ms here on each migration's destination (and again for its
/// disk export); with it, 2-4 ms.
const DH_PARAMS_PEM: &str = "-----BEGIN DH PARAMETERS-----\nMIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\nYdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\nssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n-----END DH PARAMETERS-----\n";

/// Writes `id` as the credentials directory `dir` and says how the driver is to protect
/// migrations: with it, or not at all (and why).
pub fn materialise(id: &AgentIdentity, dir: &Path) -> MigrationTls {
    if let Err(missing) = usable(id) {
        return MigrationTls::Unavailable(format!(
            "host \"{}\" holds a certificate from before live migrations were encrypted (it \
             lacks {missing}); to take part in migrations it must join again with a token made \
             for it (`panal host token create --host {}`)",
            id.host, id.host
        ));
    }
    match write(id, dir) {
        Ok(()) => MigrationTls::X509(dir.to_path_buf()),
        Err(e) => MigrationTls::Unavailable(format!("the migration credentials: {e}")),
    }
}

/// What QEMU needs of the certificate on both ends: server and client authentication, key
/// encipherment allowed (GnuTLS's sanity check), the host's name as a DNS SAN. `Err`: what
/// is missing.
fn usable(id: &AgentIdentity) -> Result<(), String> {
    let p = CertificateParams::from_ca_cert_pem(&id.cert_pem)
        .map_err(|e| format!("a readable certificate ({e})"))?;
    let mut missing = Vec::new();
    if !p
        .extended_key_usages
        .contains(&ExtendedKeyUsagePurpose::ServerAuth)
    {
        missing.push("server authentication".to_string());
    }
    if !p.key_usages.is_empty() && !p.key_usages.contains(&KeyUsagePurpose::KeyEncipherment) {
        missing.push("key encipherment".to_string());
    }
    let named = p
        .subject_alt_names
        .iter()
        .any(|s| matches!(s, SanType::DnsName(n) if n.as_str() == id.host.as_str()));
    if !named {
        missing.push(format!("the name {} as a DNS SAN", id.host));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(", "))
    }
}

/// Writes the five files (keys readable by their owner only, the directory private), each
/// replaced atomically so a QEMU reading them never sees half a file.
fn write(id: &AgentIdentity, dir: &Path) -> Result<(), String> {
    super::private_files::private_dir(dir)?;
    let files = [
        ("ca-cert.pem", id.ca_pem.as_str(), 0o644),
        ("server-cert.pem", id.cert_pem.as_str(), 0o644),
        ("server-key.pem", id.key_pem.as_str(), 0o600),
        ("client-cert.pem", id.cert_pem.as_str(), 0o644),
        ("client-key.pem", id.key_pem.as_str(), 0o600),
        ("dh-params.pem", DH_PARAMS_PEM, 0o644),
    ];
    for (name, text, mode) in files {
        super::private_files::replace(dir, name, text.as_bytes(), mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use std::os::unix::fs::PermissionsExt;

    fn identity(san: bool, server: bool) -> AgentIdentity {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = if san { vec!["h1".to_string()] } else { vec![] };
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, "h1");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        AgentIdentity {
            url: "https://cp:7181".into(),
            alternates: vec![],
            host: panal_types::Name::parse("h1").unwrap(),
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            ca_pem: ca.pem(),
        }
    }

    #[test]
    fn a_current_identity_becomes_a_private_credentials_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(DIR);
        let id = identity(true, true);
        assert_eq!(materialise(&id, &dir), MigrationTls::X509(dir.clone()));
        let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("server-key.pem"), 0o600);
        assert_eq!(mode("client-key.pem"), 0o600);
        assert_eq!(mode("ca-cert.pem"), 0o644);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("client-cert.pem")).unwrap(),
            id.cert_pem
        );
        let dh = std::fs::read_to_string(dir.join("dh-params.pem")).unwrap();
        assert!(dh.starts_with("-----BEGIN DH PARAMETERS-----\n"), "{dh}");
        // A second start rewrites it in place.
        assert_eq!(materialise(&id, &dir), MigrationTls::X509(dir.clone()));
    }

    #[test]
    fn an_old_certificate_refuses_migrations_and_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().unwrap();
        for (san, server, lacks) in [
            (false, false, "server authentication"),
            (true, false, "server authentication"),
            (false, true, "the name h1 as a DNS SAN"),
        ] {
            let MigrationTls::Unavailable(why) = materialise(&identity(san, server), tmp.path())
            else {
                panic!("an old certificate was taken");
            };
            assert!(why.contains(lacks), "{why}");
            assert!(why.contains("panal host token create --host h1"), "{why}");
        }
    }
}
