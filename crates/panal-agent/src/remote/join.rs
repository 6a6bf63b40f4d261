//! Joining: the agent makes its own key, checks that the control plane's CA is the one its
//! token pins (so a man in the middle cannot hand it another), and trades the token and a
//! certificate request for a certificate naming its host.

use super::{AgentIdentity, http};
use panal_types::Name;
use panal_types::join::{AgentJoin, AgentJoined, JoinTokenParts};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

/// `https://host:port` without a trailing slash, or why not.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("the control plane URL must start with https:// (got \"{url}\")"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "the control plane URL must be https://HOST:PORT (got \"{url}\")"
        ));
    }
    Ok(url.to_owned())
}

/// Fetches the CA without trusting anyone yet, and accepts it only if it is the pinned one.
async fn pinned_ca(url: &str, pin: &str) -> Result<String, String> {
    let probe = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = probe
        .get(format!("{url}/agent/v1/ca"))
        .send()
        .await
        .map_err(|e| format!("cannot reach the control plane at {url}: {e:#}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "{url} does not look like a Panal agent endpoint (answered {})",
            resp.status()
        ));
    }
    let pem = resp.text().await.map_err(|e| e.to_string())?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the control plane sent no CA certificate: {e}"))?;
    let got = hex::encode(Sha256::digest(der.as_ref()));
    if got != pin {
        return Err(format!(
            "the control plane's CA ({got}) is not the one the token names ({pin}): wrong control plane, or someone in between"
        ));
    }
    Ok(pem)
}

/// Joins the control plane at `url` as `host` with a join token.
pub async fn join(url: &str, token: &str, host: &Name) -> Result<AgentIdentity, String> {
    let url = normalize_url(url)?;
    let parts = JoinTokenParts::parse(token)
        .ok_or("malformed join token (expected ID.SECRET.CA-SHA256, as `panal host token create` prints it)")?;
    let ca_pem = pinned_ca(&url, &parts.ca_sha256).await?;
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host.as_str());
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())?;
    let client = http::pinned(&ca_pem)?;
    let resp = client
        .post(format!("{url}/agent/v1/join"))
        .json(&AgentJoin {
            token: token.trim().to_owned(),
            host: host.to_string(),
            csr_pem: csr,
        })
        .send()
        .await
        .map_err(|e| format!("cannot reach the control plane at {url}: {e:#}"))?;
    if !resp.status().is_success() {
        let e = http::refusal(resp).await;
        return Err(format!(
            "the control plane refused to join: {} ({})",
            e.message,
            e.code.as_str()
        ));
    }
    let joined: AgentJoined = resp
        .json()
        .await
        .map_err(|e| format!("unreadable join answer: {e}"))?;
    Ok(AgentIdentity {
        url,
        alternates: Vec::new(),
        host: joined.host,
        key_pem: key.serialize_pem(),
        cert_pem: joined.certificate_pem,
        ca_pem,
    })
}
