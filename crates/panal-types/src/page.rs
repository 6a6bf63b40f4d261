//! Pagination for every list endpoint: `?limit=N&page_token=T`. The token is opaque to clients
//! (it is the last key of the previous page) and a page with no `next_page_token` is the last.

use serde::{Deserialize, Serialize};

/// The default page size.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page a client may ask for.
pub const MAX_LIMIT: usize = 1000;

/// Query parameters of a list request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (1 to 1000, default 100).
    pub limit: Option<usize>,
    /// The `next_page_token` of the previous page.
    pub page_token: Option<String>,
    /// Restrict to one project (default: `default`). Ignored for global resources.
    pub project: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items of this page, in name order.
    pub items: Vec<T>,
    /// Pass as `page_token` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}
