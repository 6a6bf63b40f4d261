//! The in-process agent link: how the agent inside `panal up` reaches the control plane. It calls
//! the same application-layer methods the HTTPS agent endpoints call for remote agents.

use crate::app::{App, link_error};
use async_trait::async_trait;
use panal_agent::link::{
    AssignmentStream, ControlPlaneLink, HostTaskStream, LinkError, NetworkPlanStream,
};
use panal_types::Name;
use panal_types::agent::{HostRegistration, VmStatusReport};
use panal_types::host::Host;
use panal_types::migration::MigrationReport;
use panal_types::volume::HostTaskReport;

/// A link that calls the application layer directly.
pub struct InProcessLink {
    app: App,
}

impl InProcessLink {
    /// A link into `app`.
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[async_trait]
impl ControlPlaneLink for InProcessLink {
    async fn register(&self, registration: HostRegistration) -> Result<Host, LinkError> {
        self.app
            .register_host(registration)
            .await
            .map_err(link_error)
    }

    async fn heartbeat(&self, host: &Name) -> Result<(), LinkError> {
        self.app.heartbeat(host.as_str()).await.map_err(link_error)
    }

    async fn assignments(&self, host: &Name) -> Result<AssignmentStream, LinkError> {
        self.app.assignments(host.as_str()).await
    }

    async fn report(&self, host: &Name, report: VmStatusReport) -> Result<(), LinkError> {
        self.app
            .report_vm(host.as_str(), report)
            .await
            .map_err(link_error)
    }

    async fn host_tasks(&self, host: &Name) -> Result<HostTaskStream, LinkError> {
        self.app.host_tasks(host.as_str()).await
    }

    async fn report_task(&self, host: &Name, report: HostTaskReport) -> Result<(), LinkError> {
        self.app
            .report_host_task(host.as_str(), report)
            .await
            .map_err(link_error)
    }

    async fn report_migration(
        &self,
        host: &Name,
        report: MigrationReport,
    ) -> Result<(), LinkError> {
        self.app
            .report_migration(host.as_str(), report)
            .await
            .map_err(link_error)
    }

    async fn network_plans(&self, host: &Name) -> Result<NetworkPlanStream, LinkError> {
        self.app.network_plans(host.as_str()).await
    }
}
