//! Networks and security groups.

use crate::{Client, ClientError, page_query, project_query, seg};
use panal_types::network::{
    Network, NetworkCreate, NetworkPort, SecurityGroup, SecurityGroupCreate, SecurityRule,
    SecurityRuleCreate,
};
use panal_types::page::Page;
use reqwest::Method;

impl Client {
    /// Lists the networks of a project (one page).
    pub async fn list_networks(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<Network>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            "/api/v1/networks",
            &page_query(project, page_token),
            None,
        )
        .await
    }

    /// Creates a network.
    pub async fn create_network(&self, req: &NetworkCreate) -> Result<Network, ClientError> {
        self.call(Method::POST, "/api/v1/networks", &[], Some(req))
            .await
    }

    /// Shows a network.
    pub async fn network(&self, project: Option<&str>, name: &str) -> Result<Network, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/networks/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// The addresses of a network in use.
    pub async fn network_ports(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<Vec<NetworkPort>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/networks/{}/ports", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Deletes a network without NICs.
    pub async fn delete_network(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/networks/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Lists the security groups of a project (one page).
    pub async fn list_security_groups(
        &self,
        project: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Page<SecurityGroup>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            "/api/v1/security-groups",
            &page_query(project, page_token),
            None,
        )
        .await
    }

    /// Creates a security group.
    pub async fn create_security_group(
        &self,
        req: &SecurityGroupCreate,
    ) -> Result<SecurityGroup, ClientError> {
        self.call(Method::POST, "/api/v1/security-groups", &[], Some(req))
            .await
    }

    /// Shows a security group.
    pub async fn security_group(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<SecurityGroup, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/api/v1/security-groups/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
    }

    /// Deletes a security group.
    pub async fn delete_security_group(
        &self,
        project: Option<&str>,
        name: &str,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/security-groups/{}", seg(name)),
            &project_query(project),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Adds a rule to a security group.
    pub async fn add_security_rule(
        &self,
        project: Option<&str>,
        group: &str,
        req: &SecurityRuleCreate,
    ) -> Result<SecurityRule, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/security-groups/{}/rules", seg(group)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Removes a rule from a security group.
    pub async fn delete_security_rule(
        &self,
        project: Option<&str>,
        group: &str,
        rule: &str,
    ) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/api/v1/security-groups/{}/rules/{}", seg(group), seg(rule)),
            &project_query(project),
            None,
        )
        .await
        .map(|_| ())
    }
}

impl Client {
    /// Plugs a NIC into a VM.
    pub async fn add_nic(
        &self,
        project: Option<&str>,
        vm: &str,
        req: &panal_types::network::NicRequest,
    ) -> Result<panal_types::vm::VmAccepted, ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/vms/{}/nics", seg(vm)),
            &project_query(project),
            Some(req),
        )
        .await
    }

    /// Unplugs a NIC from a VM.
    pub async fn remove_nic(
        &self,
        project: Option<&str>,
        vm: &str,
        nic: &str,
    ) -> Result<panal_types::vm::VmAccepted, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/vms/{}/nics/{}", seg(vm), seg(nic)),
            &project_query(project),
            None,
        )
        .await
    }
}
