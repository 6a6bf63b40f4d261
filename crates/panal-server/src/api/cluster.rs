//! `GET /api/v1/cluster`: which replica leads the control plane.

use super::error::ApiResult;
use crate::app::App;
use crate::leader::Election;
use crate::repo::store_error;
use axum::Json;
use axum::extract::State;
use panal_types::ApiError;
use panal_types::cluster::ClusterStatus;

/// Show the leader replica.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster",
    responses((status = 200, body = ClusterStatus), (status = 503, body = ApiError)))]
pub async fn cluster(State(app): State<App>) -> ApiResult<Json<ClusterStatus>> {
    let store = app.repo().store();
    let leader = Election::leader(store).await.map_err(store_error)?;
    let revision = store.current_revision().await.map_err(store_error)?;
    Ok(Json(ClusterStatus { leader, revision }))
}
