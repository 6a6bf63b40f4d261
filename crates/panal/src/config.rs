//! The client configuration file (`client.toml`): where the API is and the token to use.
//! `panal up` writes one into its data directory and makes it the user's default, so the CLI
//! works right after `up` with no flags.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the CLI needs to reach the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Base URL of the API, e.g. `http://127.0.0.1:7180`.
    pub api_url: String,
    /// Bearer token.
    pub token: String,
}

/// The per-user default configuration path (`~/.config/panal/client.toml`).
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("panal").join("client.toml"))
}

/// Reads a configuration file.
pub fn load(path: &Path) -> Result<ClientConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid Panal client configuration",
            path.display()
        )
    })
}

/// Writes a configuration file readable only by its owner.
pub fn save(path: &Path, cfg: &ClientConfig) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(cfg)?;
    write_private(path, text.as_bytes())
}

/// Writes a file with mode 0600 (created that way, never world-readable for an instant).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    panal::platform::write_private(path, bytes)
}
