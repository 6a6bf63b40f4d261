//! `/api/v1/volumes` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::page::{Page, PageParams};
use panal_types::volume::{
    Volume, VolumeAccepted, VolumeAttach, VolumeCreate, VolumeExport, VolumeMove, VolumeResize,
};

type Accepted = ApiResult<(StatusCode, Json<VolumeAccepted>)>;

fn accepted(v: VolumeAccepted) -> (StatusCode, Json<VolumeAccepted>) {
    (StatusCode::ACCEPTED, Json(v))
}

/// List the volumes of a project.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", params(PageParams),
    responses((status = 200, body = Page<Volume>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_volumes(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Volume>>> {
    Ok(Json(
        app.list_volumes(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Create a volume, empty or cloned from another (an operation: the host creates the file).
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = VolumeCreate,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError), (status = 507, body = ApiError)))]
pub async fn create_volume(
    State(app): State<App>,
    ApiJson(req): ApiJson<VolumeCreate>,
) -> Accepted {
    Ok(accepted(app.create_volume(req).await?))
}

/// Show a volume.
#[utoipa::path(get, path = "/api/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = Volume), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(app.volume(q.project.as_deref(), &name).await?))
}

/// Delete a detached volume without linked clones (an operation: the host removes the file).
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VolumeAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> Accepted {
    Ok(accepted(
        app.delete_volume(q.project.as_deref(), &name).await?,
    ))
}

/// Grow a volume (live when its VM runs; shrinking is refused).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/resize", tag = "volumes", params(("name" = String, Path), ProjectParam),
    request_body = VolumeResize,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn resize_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VolumeResize>,
) -> Accepted {
    Ok(accepted(
        app.resize_volume(q.project.as_deref(), &name, req.size_bytes)
            .await?,
    ))
}

/// Move a detached volume to another pool of its host, or to another host (an operation with
/// progress; across hosts the file is copied through the control plane and verified, and the
/// volume switches host only once the copy is complete).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/move", tag = "volumes", params(("name" = String, Path), ProjectParam),
    request_body = VolumeMove,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError), (status = 507, body = ApiError)))]
pub async fn move_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VolumeMove>,
) -> Accepted {
    Ok(accepted(
        app.move_volume(q.project.as_deref(), &name, &req).await?,
    ))
}

/// Export a volume's current contents as a disk image of its project (an operation: its host
/// converts the file to a standalone image and uploads it; refused while a running VM uses it).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/export", tag = "volumes", params(("name" = String, Path), ProjectParam),
    request_body = VolumeExport,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError), (status = 503, body = ApiError)))]
pub async fn export_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VolumeExport>,
) -> Accepted {
    Ok(accepted(
        app.export_volume(q.project.as_deref(), &name, &req).await?,
    ))
}

/// Attach a volume to a VM of its project (hot-plugged when the VM runs).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/attach", tag = "volumes", params(("name" = String, Path), ProjectParam),
    request_body = VolumeAttach,
    responses((status = 202, body = VolumeAccepted), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn attach_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VolumeAttach>,
) -> Accepted {
    Ok(accepted(
        app.attach_volume(q.project.as_deref(), &name, &req.vm)
            .await?,
    ))
}

/// Detach a volume from its VM (hot-unplugged when the VM runs).
#[utoipa::path(post, path = "/api/v1/volumes/{name}/detach", tag = "volumes", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VolumeAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn detach_volume(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> Accepted {
    Ok(accepted(
        app.detach_volume(q.project.as_deref(), &name).await?,
    ))
}
