//! Snapshots of volumes and of VMs (all their volumes at one instant).

use crate::{Client, ClientError, project_query, seg};
use panal_types::operation::Operation;
use panal_types::volume::{SnapshotCreate, SnapshotStep, VolumeAccepted};
use reqwest::Method;

/// The method and path suffix of a snapshot step.
fn route(step: SnapshotStep, snapshot: &str) -> (Method, String) {
    match step {
        SnapshotStep::Create => (Method::POST, "/snapshots".into()),
        SnapshotStep::Revert => (Method::POST, format!("/snapshots/{}/revert", seg(snapshot))),
        SnapshotStep::Delete => (Method::DELETE, format!("/snapshots/{}", seg(snapshot))),
    }
}

impl Client {
    /// Takes, reverts to or deletes a snapshot of a volume.
    pub async fn volume_snapshot(
        &self,
        project: Option<&str>,
        volume: &str,
        snapshot: &str,
        step: SnapshotStep,
    ) -> Result<VolumeAccepted, ClientError> {
        let (method, tail) = route(step, snapshot);
        let body = SnapshotCreate {
            name: snapshot.into(),
        };
        self.call(
            method,
            &format!("/api/v1/volumes/{}{tail}", seg(volume)),
            &project_query(project),
            (step == SnapshotStep::Create).then_some(&body),
        )
        .await
    }

    /// Takes, reverts to or deletes a snapshot of every volume of a VM.
    pub async fn vm_snapshot(
        &self,
        project: Option<&str>,
        vm: &str,
        snapshot: &str,
        step: SnapshotStep,
    ) -> Result<Operation, ClientError> {
        let (method, tail) = route(step, snapshot);
        let body = SnapshotCreate {
            name: snapshot.into(),
        };
        self.call(
            method,
            &format!("/api/v1/vms/{}{tail}", seg(vm)),
            &project_query(project),
            (step == SnapshotStep::Create).then_some(&body),
        )
        .await
    }
}
