//! Panal's domain model as it crosses the wire and sits in the store.
//!
//! Each resource has separate create, update and view types: inputs reject unknown fields,
//! views are what the API returns. Validation lives next to the types so that every front end
//! (REST, CLI, tests) applies the same rules.

pub mod agent;
pub mod cluster;
pub mod error;
pub mod event;
pub mod host;
pub mod ids;
pub mod image;
pub mod join;
pub mod migration;
pub mod name;
pub mod network;
pub mod operation;
pub mod page;
pub mod project;
pub mod size;
pub mod slots;
pub mod vm;
pub mod volume;

pub use error::{ApiError, ErrorCode};
pub use ids::{
    HostId, ImageId, NetworkId, OperationId, ProjectId, SecurityGroupId, VmId, VolumeId,
};
pub use name::{Name, NameError};

/// The project every installation has and that cannot be deleted.
pub const DEFAULT_PROJECT: &str = "default";

/// Timestamps on the wire: RFC 3339 in UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
