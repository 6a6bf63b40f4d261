//! Floating addresses.

use crate::{Client, ClientError, page_query, project_query, seg};
use panal_types::network::{FloatingIp, FloatingIpAssociate, FloatingIpCreate};
use panal_types::page::Page;
use reqwest::Method;

impl Client {
    /// Lists the floating addresses of a project (one page).
    pub async fn list_floating_ips(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<FloatingIp>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            "/api/v1/floating-ips",
            &page_query(project, page_token),
            None,
        )
        .await
    }

    /// Allocates a floating address.
    pub async fn create_floating_ip(
        &self,
        req: &FloatingIpCreate,
    ) -> Result<FloatingIp, ClientError> {
        self.call(Method::POST, "/api/v1/floating-ips", &[], Some(req))
            .await
    }

    /// Shows a floating address.
    pub async fn floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<FloatingIp, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/floating-ips/{}", seg(address)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Maps a floating address to a VM's NIC.
    pub async fn associate_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
        req: &FloatingIpAssociate,
    ) -> Result<FloatingIp, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/floating-ips/{}/associate", seg(address)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Unmaps a floating address.
    pub async fn disassociate_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<FloatingIp, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/api/v1/floating-ips/{}/disassociate", seg(address)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Releases a floating address.
    pub async fn delete_floating_ip(
        &self,
        project: Option<&str>,
        address: &str,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/floating-ips/{}", seg(address)),
            &project_query(project),
            None,
        )
        .await
        .map(|_| ())
    }
}
