//! The control plane's replicas as clients see them.

use serde::{Deserialize, Serialize};

/// Who leads, as written in the leadership key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaderInfo {
    /// The replica's name.
    pub replica: String,
    /// The replica's API address.
    pub api_url: String,
    /// When it took over.
    pub since: chrono::DateTime<chrono::Utc>,
}

/// The control plane's state.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// The replica running the controllers, if one leads now.
    pub leader: Option<LeaderInfo>,
    /// The store's newest revision.
    pub revision: u64,
}
