//! `/api/v1/projects` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::page::{Page, PageParams};
use panal_types::project::{Project, ProjectCreate};

/// List projects.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(PageParams),
    responses((status = 200, body = Page<Project>), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn list_projects(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<Project>>> {
    Ok(Json(
        app.list_projects(q.limit, q.page_token.as_deref()).await?,
    ))
}

/// Create a project.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_project(
    State(app): State<App>,
    ApiJson(req): ApiJson<ProjectCreate>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    Ok((StatusCode::CREATED, Json(app.create_project(req).await?)))
}

/// Show a project.
#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "projects", params(("name" = String, Path)),
    responses((status = 200, body = Project), (status = 404, body = ApiError)))]
pub async fn get_project(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(app.project(&name, "name").await?.value))
}

/// Delete an empty project (not `default`).
#[utoipa::path(delete, path = "/api/v1/projects/{name}", tag = "projects", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_project(
    State(app): State<App>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    app.delete_project(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
