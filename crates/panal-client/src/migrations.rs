//! Live migration of VMs.

use crate::{Client, ClientError, project_query, seg};
use panal_types::migration::{MigrationAccepted, VmMigrate};
use panal_types::vm::VmAccepted;
use reqwest::Method;

impl Client {
    /// Starts a live migration (or, with `dry_run`, only plans it).
    pub async fn migrate_vm(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VmMigrate,
    ) -> Result<MigrationAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/vms/{}/migrate", seg(name)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Cancels the live migration of a VM.
    pub async fn cancel_migration(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/vms/{}/migrate/cancel", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }
}
