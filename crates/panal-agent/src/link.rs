//! The agent's view of the control plane. In `panal up` it is an in-process call into the
//! control plane's application layer; for remote agents the same trait is carried over mutual-TLS
//! HTTPS. The agent knows nothing else about the control plane.

use async_trait::async_trait;
use futures::stream::BoxStream;
use panal_types::agent::{Assignment, HostRegistration, VmStatusReport};
use panal_types::host::Host;
use panal_types::migration::MigrationReport;
use panal_types::network::HostNetworkPlan;
use panal_types::volume::{HostTask, HostTaskReport};
use panal_types::{ApiError, Name};
use std::sync::Arc;

/// Why a call to the control plane failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// the control plane cannot be reached now; retry with back-off
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// the control plane refused the request
    #[error("control plane refused: {0}")]
    Rejected(ApiError),
}

/// A stream of the volume work queued for one host.
pub type HostTaskStream = BoxStream<'static, Result<HostTask, LinkError>>;

/// A stream of one host's network plans: the current one, then each change.
pub type NetworkPlanStream = BoxStream<'static, Result<HostNetworkPlan, LinkError>>;

/// A stream of assignment changes for one host.
pub type AssignmentStream = BoxStream<'static, Result<Assignment, LinkError>>;

/// What an agent may ask of the control plane. Every call concerns the agent's own host only.
#[async_trait]
pub trait ControlPlaneLink: Send + Sync + 'static {
    /// Registers (or re-registers) the host with its inventory.
    async fn register(&self, registration: HostRegistration) -> Result<Host, LinkError>;

    /// Renews the host's liveness lease.
    async fn heartbeat(&self, host: &Name) -> Result<(), LinkError>;

    /// Every VM assigned to the host, then changes as they happen. Ends (or yields an error)
    /// when the control plane goes away; the agent then re-subscribes.
    async fn assignments(&self, host: &Name) -> Result<AssignmentStream, LinkError>;

    /// Reports what the agent observed about one VM.
    async fn report(&self, host: &Name, report: VmStatusReport) -> Result<(), LinkError>;

    /// Every task queued for the host, then each new one. Ends (or yields an error) when the
    /// control plane goes away; the agent then re-subscribes and gets unfinished tasks again.
    async fn host_tasks(&self, host: &Name) -> Result<HostTaskStream, LinkError>;

    /// Reports progress on, or the end of, one of the host's tasks.
    async fn report_task(&self, host: &Name, report: HostTaskReport) -> Result<(), LinkError>;

    /// Reports a step of a live migration this host takes part in (as source or target).
    async fn report_migration(&self, host: &Name, report: MigrationReport)
    -> Result<(), LinkError>;

    /// The host's network plan, then each change of it. Ends (or yields an error) when the
    /// control plane goes away; the agent then re-subscribes.
    async fn network_plans(&self, host: &Name) -> Result<NetworkPlanStream, LinkError>;
}

/// A shared link.
pub type DynLink = Arc<dyn ControlPlaneLink>;
