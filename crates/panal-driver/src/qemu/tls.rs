//! The migration channel's TLS on QEMU: one `tls-creds-x509` object per side, made over QMP
//! (`object-add`) from the credentials directory in [`MigrationTls::X509`] the first time a
//! migration needs it, and what QEMU says it uses.
//!
//! Both ends verify each other (`verify-peer`): the destination (endpoint `server`) accepts only
//! a source whose client certificate chains to the directory's CA, and the source (endpoint
//! `client`) accepts only a destination whose server certificate chains to it *and* names the
//! destination host (`tls-hostname`). The same objects serve the memory stream
//! (`migrate-set-parameters tls-creds`) and the disk copy over NBD (`nbd-server-start` /
//! `blockdev-add` `tls-creds`). QEMU reads the files when the object is made and keeps them for
//! the life of the process: renewed files reach a QEMU launched after the renewal, or one that
//! had not migrated yet.

use super::handle::QemuVm;
use crate::{DriverError, MigrationTarget};
use serde_json::{Value, json};
use std::path::PathBuf;

/// The credentials object of a destination.
const SERVER_CREDS: &str = "mig-tls-server";
/// The credentials object of a source.
const CLIENT_CREDS: &str = "mig-tls-client";

/// How migrations in and out of this host's VMs are protected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MigrationTls {
    /// Plain TCP: the channel's security is the caller's (one machine that never migrates,
    /// tests).
    #[default]
    Off,
    /// Mutually authenticated TLS with the QEMU x509 credentials directory at this path:
    /// `ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`.
    X509(PathBuf),
    /// This host should encrypt migrations but has no usable credentials: every migration in or
    /// out is refused with this reason (never sent in the clear instead).
    Unavailable(String),
}

/// Which side of a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// The destination: serves the memory stream and the disks.
    Destination,
    /// The source: connects to them.
    Source,
}

/// The TLS a source uses towards one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ClientTls {
    /// The credentials object.
    pub creds: &'static str,
    /// The name the destination's certificate must carry.
    pub hostname: String,
}

impl QemuVm {
    /// The destination's credentials object, made if missing; `None`: plain TCP.
    pub(super) async fn server_tls(&self) -> Result<Option<&'static str>, DriverError> {
        self.tls_object(Side::Destination).await
    }

    /// The source's credentials and the name to verify for `to`; `None`: plain TCP.
    pub(super) async fn client_tls(
        &self,
        to: &MigrationTarget,
    ) -> Result<Option<ClientTls>, DriverError> {
        let Some(creds) = self.tls_object(Side::Source).await? else {
            return Ok(None);
        };
        let hostname = to.host().ok_or_else(|| {
            DriverError::Invalid(
                "migrations from this host are authenticated with TLS: the destination's host \
                 name is needed to check its certificate"
                    .into(),
            )
        })?;
        Ok(Some(ClientTls {
            creds,
            hostname: hostname.to_string(),
        }))
    }

    async fn tls_object(&self, side: Side) -> Result<Option<&'static str>, DriverError> {
        let dir = match self.migration_tls() {
            MigrationTls::Off => return Ok(None),
            MigrationTls::Unavailable(why) => {
                return Err(DriverError::Invalid(format!(
                    "live migration is unavailable on this host: {why}"
                )));
            }
            MigrationTls::X509(dir) => dir,
        };
        let (id, endpoint) = match side {
            Side::Destination => (SERVER_CREDS, "server"),
            Side::Source => (CLIENT_CREDS, "client"),
        };
        if self.has_object(id).await? {
            return Ok(Some(id));
        }
        self.qmp_session()
            .execute(
                "object-add",
                Some(json!({
                    "qom-type": "tls-creds-x509",
                    "id": id,
                    "dir": dir,
                    "endpoint": endpoint,
                    "verify-peer": true,
                })),
            )
            .await
            .map_err(|e| {
                DriverError::Hypervisor(format!(
                    "cannot load the migration TLS credentials in {}: {e}",
                    dir.display()
                ))
            })?;
        Ok(Some(id))
    }

    async fn has_object(&self, id: &str) -> Result<bool, DriverError> {
        let objects = self
            .qmp_session()
            .execute("qom-list", Some(json!({ "path": "/objects" })))
            .await?;
        Ok(objects
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["name"] == id))
    }

    /// What QEMU's migration parameters say about TLS, checked against what was set and logged:
    /// the evidence (for people and tests) that a migration is encrypted.
    pub(super) async fn confirm_tls(
        &self,
        side: Side,
        creds: Option<&str>,
        hostname: Option<&str>,
        at: crate::Endpoint<'_>,
    ) -> Result<(), DriverError> {
        let p = self
            .qmp_session()
            .execute("query-migrate-parameters", None)
            .await?;
        let got = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (got_creds, got_host) = (got("tls-creds"), got("tls-hostname"));
        if got_creds != creds.unwrap_or("")
            || (side == Side::Source && got_host != hostname.unwrap_or(""))
        {
            return Err(DriverError::Hypervisor(format!(
                "QEMU did not take the migration TLS parameters (tls-creds {got_creds:?}, \
                 tls-hostname {got_host:?})"
            )));
        }
        let way = match side {
            Side::Destination => "incoming",
            Side::Source => "outgoing",
        };
        if creds.is_some() {
            // Only a source checks a name: the destination checks the CA alone.
            let checks = match side {
                Side::Destination => String::new(),
                Side::Source => format!(", tls-hostname {got_host:?}"),
            };
            tracing::info!(
                vm = %crate::VmHandle::id(self),
                "{way} migration channel: TLS (QEMU tls-creds {got_creds}{checks})"
            );
        } else if let crate::Endpoint::Unix(path) = at {
            tracing::info!(
                vm = %crate::VmHandle::id(self),
                "{way} migration channel: Unix socket {} (the caller's tunnel)",
                path.display()
            );
        } else {
            tracing::info!(vm = %crate::VmHandle::id(self), "{way} migration channel: plain TCP");
        }
        Ok(())
    }
}
