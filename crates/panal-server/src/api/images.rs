//! `/api/v1/images` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::image::{Image, ImageAccepted, ImageImport};
use panal_types::page::{Page, PageParams};

/// List the images of a project.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(PageParams),
    responses((status = 200, body = Page<Image>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_images(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Image>>> {
    Ok(Json(
        app.list_images(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Import an image from files on the control plane's machine or from http/https URLs (an
/// operation with progress). A URL whose destination is refused answers `403 url_refused`; a
/// download that is too large, fails its checksum or is refused on a redirect fails the operation.
#[utoipa::path(post, path = "/api/v1/images", tag = "images", request_body = ImageImport,
    responses((status = 202, body = ImageAccepted), (status = 400, body = ApiError), (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn import_image(
    State(app): State<App>,
    ApiJson(req): ApiJson<ImageImport>,
) -> ApiResult<(StatusCode, Json<ImageAccepted>)> {
    Ok((StatusCode::ACCEPTED, Json(app.import_image(req).await?)))
}

/// Show an image (a project's own, else a shared one of `default`).
#[utoipa::path(get, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
pub async fn get_image(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<Image>> {
    Ok(Json(app.image(q.project.as_deref(), &name).await?))
}

/// Delete an image no VM boots from.
#[utoipa::path(delete, path = "/api/v1/images/{name}", tag = "images", params(("name" = String, Path), ProjectParam),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_image(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<StatusCode> {
    app.delete_image(q.project.as_deref(), &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
