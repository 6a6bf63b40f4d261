//! What a joined agent keeps: the control plane's address, its host name, its private key (never
//! sent anywhere), its certificate and the CA it trusts. Written once at join, read at every
//! start, so `panal agent --data-dir DIR` needs no token the second time.

use panal_types::Name;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A joined agent's credentials.
#[derive(Clone)]
pub struct AgentIdentity {
    /// Base URL of the control plane's agent endpoint (`https://host:port`) it joined through.
    pub url: String,
    /// Other replicas' agent endpoints, tried in turn when the current one is unreachable.
    pub alternates: Vec<String>,
    /// This host's name, as its certificate says.
    pub host: Name,
    /// The agent's private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The agent's certificate (PEM).
    pub cert_pem: String,
    /// The control plane's CA (PEM).
    pub ca_pem: String,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("url", &self.url)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Saved {
    url: String,
    #[serde(default)]
    alternates: Vec<String>,
    host: Name,
}

const META: &str = "agent.json";
const KEY: &str = "agent.key";
const CERT: &str = "agent.crt";
const CA: &str = "ca.crt";

fn read(dir: &Path, name: &str) -> Result<String, String> {
    std::fs::read_to_string(dir.join(name))
        .map_err(|e| format!("cannot read {}: {e}", dir.join(name).display()))
}

impl AgentIdentity {
    /// Every agent endpoint, the one it joined through first.
    pub fn endpoints(&self) -> Vec<String> {
        let mut all = vec![self.url.clone()];
        for a in &self.alternates {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The identity saved in `dir`, or `None` if this host never joined.
    pub fn load(dir: &Path) -> Result<Option<Self>, String> {
        if !dir.join(META).exists() {
            return Ok(None);
        }
        let saved: Saved = serde_json::from_str(&read(dir, META)?)
            .map_err(|e| format!("{} is damaged: {e}", dir.join(META).display()))?;
        Ok(Some(Self {
            url: saved.url,
            alternates: saved.alternates,
            host: saved.host,
            key_pem: read(dir, KEY)?,
            cert_pem: read(dir, CERT)?,
            ca_pem: read(dir, CA)?,
        }))
    }

    /// Saves the identity in `dir` (created private), the key readable by its owner only. The
    /// metadata file is written last, so a crash half-way leaves a directory `load` ignores.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        use super::private_files::{private_dir, replace as write};
        private_dir(dir)?;
        write(dir, KEY, self.key_pem.as_bytes(), 0o600)?;
        write(dir, CERT, self.cert_pem.as_bytes(), 0o644)?;
        write(dir, CA, self.ca_pem.as_bytes(), 0o644)?;
        let meta = serde_json::to_vec_pretty(&Saved {
            url: self.url.clone(),
            alternates: self.alternates.clone(),
            host: self.host.clone(),
        })
        .map_err(|e| e.to_string())?;
        write(dir, META, &meta, 0o644)
    }
}
