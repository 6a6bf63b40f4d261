//! Volumes: disks in storage pools, attached to VMs.

use crate::{Client, ClientError, page_query, project_query, seg};
use panal_types::page::Page;
use panal_types::volume::{
    Volume, VolumeAccepted, VolumeAttach, VolumeCreate, VolumeExport, VolumeMove, VolumeResize,
};
use reqwest::Method;

impl Client {
    /// Lists the volumes of a project (one page).
    pub async fn list_volumes(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<Volume>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            "/api/v1/volumes",
            &page_query(project, page_token),
            None,
        )
        .await
    }

    /// Creates (or clones) a volume.
    pub async fn create_volume(&self, req: &VolumeCreate) -> Result<VolumeAccepted, ClientError> {
        self.call(Method::POST, "/api/v1/volumes", &[], Some(req))
            .await
    }

    /// Shows a volume.
    pub async fn volume(&self, project: Option<&str>, name: &str) -> Result<Volume, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/volumes/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Deletes a volume.
    pub async fn delete_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/volumes/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Grows a volume.
    pub async fn resize_volume(
        &self,
        project: Option<&str>,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/volumes/{}/resize", seg(name)),
            &project_query(project),
            Some(&VolumeResize { size_bytes }),
        )
        .await
    }

    /// Moves a detached volume to another pool of its host.
    pub async fn move_volume(
        &self,
        project: Option<&str>,
        name: &str,
        pool: &str,
    ) -> Result<VolumeAccepted, ClientError> {
        let req = VolumeMove {
            pool: Some(pool.into()),
            host: None,
        };
        self.move_volume_to(project, name, &req).await
    }

    /// Moves a detached volume to another pool, of its host or of another host.
    pub async fn move_volume_to(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeMove,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/volumes/{}/move", seg(name)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Exports a volume as a disk image of its project.
    pub async fn export_volume(
        &self,
        project: Option<&str>,
        name: &str,
        req: &VolumeExport,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/volumes/{}/export", seg(name)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Attaches a volume to a VM.
    pub async fn attach_volume(
        &self,
        project: Option<&str>,
        name: &str,
        vm: &str,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/volumes/{}/attach", seg(name)),
            &project_query(project),
            Some(&VolumeAttach { vm: vm.into() }),
        )
        .await
    }

    /// Detaches a volume from its VM.
    pub async fn detach_volume(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<VolumeAccepted, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/volumes/{}/detach", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }
}
