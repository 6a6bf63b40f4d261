//! Snapshot handlers: of one volume (`/api/v1/volumes/{name}/snapshots`) and of every volume of
//! a VM at one instant (`/api/v1/vms/{name}/snapshots`).

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::operation::Operation;
use panal_types::volume::{SnapshotCreate, SnapshotStep, VolumeAccepted};

/// Take a snapshot of a volume (the guest is paused for the instant it takes if a VM runs on it).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshots", tag = "volumes",
    params(("name" = String, Path), ProjectParam), request_body = SnapshotCreate,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_volume_snapshot(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<SnapshotCreate>,
) -> ApiResult<(StatusCode, Json<VolumeAccepted>)> {
    let a = app
        .volume_snapshot(q.project.as_deref(), &name, &req.name, SnapshotStep::Create)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(a)))
}

/// Revert a volume to a snapshot (no VM may be using it).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/snapshots/{snapshot}/revert", tag = "volumes",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectParam),
    responses((status = 202, body = VolumeAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn revert_volume_snapshot(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VolumeAccepted>)> {
    let a = app
        .volume_snapshot(q.project.as_deref(), &name, &snapshot, SnapshotStep::Revert)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(a)))
}

/// Delete a snapshot of a volume.
#[utoipa::path(delete, path = "/api/v1/volumes/{name}/snapshots/{snapshot}", tag = "volumes",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectParam),
    responses((status = 202, body = VolumeAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_volume_snapshot(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VolumeAccepted>)> {
    let a = app
        .volume_snapshot(q.project.as_deref(), &name, &snapshot, SnapshotStep::Delete)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(a)))
}

/// Take a snapshot of every volume of a VM at one instant.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", tag = "vms",
    params(("name" = String, Path), ProjectParam), request_body = SnapshotCreate,
    responses((status = 202, body = Operation), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_vm_snapshot(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<SnapshotCreate>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let op = app
        .vm_snapshot(q.project.as_deref(), &name, &req.name, SnapshotStep::Create)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Revert every volume of a stopped VM to a snapshot.
#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert", tag = "vms",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectParam),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn revert_vm_snapshot(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let op = app
        .vm_snapshot(q.project.as_deref(), &name, &snapshot, SnapshotStep::Revert)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Delete a snapshot from every volume of a VM.
#[utoipa::path(delete, path = "/api/v1/vms/{name}/snapshots/{snapshot}", tag = "vms",
    params(("name" = String, Path), ("snapshot" = String, Path), ProjectParam),
    responses((status = 202, body = Operation), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_vm_snapshot(
    State(app): State<App>,
    Path((name, snapshot)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<Operation>)> {
    let op = app
        .vm_snapshot(q.project.as_deref(), &name, &snapshot, SnapshotStep::Delete)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}
