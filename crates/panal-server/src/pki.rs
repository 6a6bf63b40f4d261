//! The control plane's certificate authority. Agents prove who they are with certificates it
//! issues, and trust the control plane because its serving certificate chains to it. The CA
//! lives in the store (created once, compare-and-swap, so every replica shares it); its
//! SHA-256 travels inside join tokens so a joining agent can check it before trusting it.

use crate::keys;
use crate::repo::Repo;
use panal_store::{Compare, Op, Txn};
use panal_types::{ApiError, ErrorCode, Name};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long agent and server certificates are valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// The certificate authority of one Panal installation.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("sha256", &self.sha256())
            .finish_non_exhaustive()
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// SHA-256 of a DER certificate, hex: how agents are recognised and how the CA is pinned.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::internal()
}

fn validity(params: &mut CertificateParams, length: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree by a few minutes between hosts.
    params.not_before = now - time::Duration::minutes(10);
    params.not_after = now + length;
}

impl Ca {
    /// Reads the installation's CA, creating it on first use. Concurrent replicas race with
    /// compare-and-swap; the loser reads the winner's.
    pub async fn load_or_create(repo: &Repo) -> Result<Ca, ApiError> {
        if let Some(stored) = repo.get::<StoredCa>(keys::CA).await? {
            return Ca::from_stored(stored.value);
        }
        let fresh = Ca::generate()?;
        let stored = StoredCa {
            cert_pem: fresh.cert_pem.clone(),
            key_pem: fresh.key_pem.clone(),
        };
        let txn = Txn::new()
            .when(Compare::absent(keys::CA))
            .and_then(Op::put(keys::CA, crate::codec::encode(&stored)));
        if repo.txn(txn).await?.succeeded {
            return Ok(fresh);
        }
        let stored = repo
            .get::<StoredCa>(keys::CA)
            .await?
            .ok_or_else(|| ApiError::unavailable("the CA vanished while being created"))?;
        Ca::from_stored(stored.value)
    }

    fn generate() -> Result<Ca, ApiError> {
        let key = KeyPair::generate().map_err(|e| internal("CA key", e))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Panal cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| internal("CA certificate", e))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    fn from_stored(stored: StoredCa) -> Result<Ca, ApiError> {
        let der = pem_to_der(&stored.cert_pem).map_err(|e| internal("stored CA", e))?;
        Ok(Ca {
            cert_pem: stored.cert_pem,
            key_pem: stored.key_pem,
            cert_der: der,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate, hex: what join tokens pin.
    pub fn sha256(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// The CA as an issuer: its key and a certificate with its subject and key.
    fn issuer(&self) -> Result<(rcgen::Certificate, KeyPair), ApiError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| internal("CA key", e))?;
        let params = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(|e| internal("CA certificate", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| internal("CA certificate", e))?;
        Ok((cert, key))
    }

    /// A serving certificate for a control-plane replica, valid for `names` (IP addresses or
    /// DNS names).
    pub fn issue_server(&self, names: &[String]) -> Result<IssuedPair, ApiError> {
        let (ca_cert, ca_key) = self.issuer()?;
        let key = KeyPair::generate().map_err(|e| internal("server key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| internal("server certificate", e))?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| internal("server name", e)),
            })
            .collect::<Result<_, _>>()?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Panal control plane");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, LEAF_VALIDITY);
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| internal("server certificate", e))?;
        Ok(IssuedPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's certificate request for `host`. Whatever the request asks for, the
    /// certificate names only the host (common name and DNS SAN) and allows client and server
    /// authentication: the agent's private key never leaves its machine, and the control plane
    /// decides the identity. Client: towards the control plane and, as a migration source,
    /// towards another agent's QEMU; server: as a migration destination, where the source checks
    /// the host's name against the SAN. Key encipherment besides digital signature because
    /// QEMU's GnuTLS sanity check insists on both.
    pub fn sign_agent(&self, csr_pem: &str, host: &Name) -> Result<String, ApiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidValue,
                format!("not a valid certificate request: {e}"),
            )
            .with_field("csr_pem")
        })?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        params.subject_alt_names = vec![SanType::DnsName(
            host.as_str()
                .try_into()
                .map_err(|e| internal("agent host name", e))?,
        )];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, LEAF_VALIDITY);
        csr.params = params;
        let (ca_cert, ca_key) = self.issuer()?;
        let cert = csr
            .signed_by(&ca_cert, &ca_key)
            .map_err(|e| internal("agent certificate", e))?;
        Ok(cert.pem())
    }
}

/// The DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_name_the_host_and_serve_both_ends_of_a_migration() {
        let ca = Ca::generate().unwrap();
        let key = KeyPair::generate().unwrap();
        // Whatever the request asks for is replaced by what the control plane decides.
        let mut asked = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        asked.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let host = Name::parse("host-7").unwrap();
        let pem = ca.sign_agent(&csr, &host).unwrap();
        let got = CertificateParams::from_ca_cert_pem(&pem).unwrap();
        assert_eq!(
            got.subject_alt_names,
            vec![SanType::DnsName("host-7".try_into().unwrap())]
        );
        for eku in [
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ] {
            assert!(got.extended_key_usages.contains(&eku), "{eku:?}");
        }
        assert!(
            !got.extended_key_usages
                .contains(&ExtendedKeyUsagePurpose::CodeSigning)
        );
        assert!(got.key_usages.contains(&KeyUsagePurpose::KeyEncipherment));
    }
}
