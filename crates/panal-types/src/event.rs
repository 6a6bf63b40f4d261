//! Change events streamed to clients by `GET /api/v1/events`. Each carries the store revision it
//! happened at, so a client that reconnects resumes from the last revision it saw.

use serde::{Deserialize, Serialize};

/// What happened to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// Created or changed.
    Put,
    /// Removed.
    Delete,
}

/// One change to one resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeEvent {
    /// Store revision of the change; resume after it with `?since=`.
    pub revision: u64,
    /// Resource kind: `project`, `vm`, `host`, `image`, `operation`.
    pub kind: String,
    /// Created/changed or removed.
    pub action: EventAction,
    /// Project of the resource, for project-scoped kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Resource name (or id for operations).
    pub name: String,
    /// The resource after the change (absent on delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
}
