//! Projects: create, list, show, delete. The `default` project always exists and a project that
//! still owns resources cannot be deleted.

use super::{App, next_token, page_bounds};
use crate::keys;
use crate::repo::Versioned;
use panal_store::{Compare, Op, Txn};
use panal_types::error::check_name;
use panal_types::page::Page;
use panal_types::project::{MAX_DESCRIPTION_LEN, Project, ProjectCreate};
use panal_types::vm::Vm;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, Name, ProjectId};

impl App {
    pub(super) async fn ensure_default_project(&self) -> Result<(), ApiError> {
        let project = Project {
            id: ProjectId::new(),
            name: Name::parse(DEFAULT_PROJECT).map_err(|_| ApiError::internal())?,
            description: "The default project".into(),
            created_at: chrono::Utc::now(),
            deleting: false,
        };
        self.repo
            .create(&keys::project(DEFAULT_PROJECT), &project)
            .await?;
        Ok(())
    }

    /// Creates a project.
    pub async fn create_project(&self, req: ProjectCreate) -> Result<Project, ApiError> {
        let name = check_name("name", &req.name)?;
        let description = req.description.unwrap_or_default();
        if description.len() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::invalid(
                "description",
                format!("at most {MAX_DESCRIPTION_LEN} bytes"),
            ));
        }
        let project = Project {
            id: ProjectId::new(),
            name,
            description,
            created_at: chrono::Utc::now(),
            deleting: false,
        };
        match self
            .repo
            .create(&keys::project(project.name.as_str()), &project)
            .await?
        {
            Some(_) => Ok(project),
            None => Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("project \"{}\" already exists", project.name),
            )
            .with_field("name")),
        }
    }

    /// Reads a project (`field` names the input that referred to it, for the error).
    pub async fn project(&self, name: &str, field: &str) -> Result<Versioned<Project>, ApiError> {
        let name = check_name(field, name)?;
        self.repo
            .get(&keys::project(name.as_str()))
            .await?
            .ok_or_else(|| ApiError::not_found("project", &name).with_field(field))
    }

    /// Lists projects.
    pub async fn list_projects(
        &self,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Project>, ApiError> {
        let (limit, start) = page_bounds(limit, token, keys::PROJECTS)?;
        let (items, more, _) = self
            .repo
            .list::<Project>(keys::PROJECTS, start.as_deref(), limit)
            .await?;
        let items: Vec<Project> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|p| p.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Deletes an empty project other than `default`.
    pub async fn delete_project(&self, name: &str) -> Result<(), ApiError> {
        let project = self.project(name, "name").await?;
        if project.value.name.as_str() == DEFAULT_PROJECT {
            return Err(ApiError::conflict("the default project cannot be deleted"));
        }
        // Mark it first: a create that read the project before the mark fails its compare on
        // the project's revision, and one that reads it after sees the mark. Only then is the
        // emptiness check final.
        let key = keys::project(name);
        let marked = self
            .repo
            .update::<Project, _>(&key, |p| {
                p.deleting = true;
                Ok(true)
            })
            .await?
            .ok_or_else(|| ApiError::not_found("project", name))?;
        let (vms, _, _) = self.repo.list::<Vm>(&keys::vms_of(name), None, 1).await?;
        let (images, _, _) = self
            .repo
            .list::<serde_json::Value>(&keys::images_of(name), None, 1)
            .await?;
        let (networks, _, _) = self
            .repo
            .list::<serde_json::Value>(&keys::networks_of(name), None, 1)
            .await?;
        let (groups, _, _) = self
            .repo
            .list::<serde_json::Value>(&keys::security_groups_of(name), None, 1)
            .await?;
        if !vms.is_empty() || !images.is_empty() || !networks.is_empty() || !groups.is_empty() {
            self.repo
                .update::<Project, _>(&key, |p| {
                    p.deleting = false;
                    Ok(true)
                })
                .await?;
            return Err(ApiError::conflict(format!(
                "project \"{name}\" still owns VMs, images, networks or security groups; delete them first"
            )));
        }
        let project = marked;
        let r = self
            .repo
            .txn(
                Txn::new()
                    .when(Compare::unchanged(&key, project.mod_revision))
                    .and_then(Op::delete(&key)),
            )
            .await?;
        if !r.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the project changed meanwhile; retry",
            ));
        }
        Ok(())
    }
}
