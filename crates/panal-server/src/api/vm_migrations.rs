//! `/api/v1/vms/{name}/migrate` handlers: start (or plan) a live migration, and cancel one.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::migration::{MigrationAccepted, VmMigrate};
use panal_types::vm::VmAccepted;

/// Live-migrate a running VM to another host (`to`, or one the scheduler picks). The pre-flight
/// check runs first: a refusal says why and nothing moves. `dry_run` answers 200 with the plan
/// only; otherwise 202 with the plan, the VM and the operation to follow (its `migration`
/// carries the phase, bytes sent and remaining, dirty rate, expected and measured downtime).
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate", tag = "vms", params(("name" = String, Path), ProjectParam),
    request_body = VmMigrate,
    responses((status = 202, body = MigrationAccepted), (status = 200, body = MigrationAccepted, description = "dry run"),
        (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn migrate_vm(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<VmMigrate>,
) -> ApiResult<(StatusCode, Json<MigrationAccepted>)> {
    let accepted = app.migrate_vm(q.project.as_deref(), &name, req).await?;
    let status = if accepted.operation.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)))
}

/// Cancel a live migration in flight: the VM keeps running where it was and the target is
/// cleaned up. Answers with the migration's operation, which ends `cancelled`.
#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate/cancel", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 202, body = VmAccepted), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn cancel_migration(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<(StatusCode, Json<VmAccepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.cancel_migration(q.project.as_deref(), &name).await?),
    ))
}
