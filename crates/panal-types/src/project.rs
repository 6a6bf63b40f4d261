//! Projects: the tenant boundary. Every VM, image, and later volume and network belongs to one.

use crate::{Name, ProjectId};
use serde::{Deserialize, Serialize};

/// A project as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Project {
    /// Stable identifier.
    pub id: ProjectId,
    /// Unique name.
    pub name: Name,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// When it was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// A delete is checking that the project is empty: nothing new may be created in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

/// Body of `POST /api/v1/projects`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// Unique name (lowercase letters, digits, `-`; at most 63 characters).
    pub name: String,
    /// Free text, at most 1024 characters.
    #[serde(default)]
    pub description: Option<String>,
}

/// The longest project description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
