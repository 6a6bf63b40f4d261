//! `/api/v1/security-groups` handlers.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use super::vms::ProjectParam;
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::network::{SecurityGroup, SecurityGroupCreate, SecurityRule, SecurityRuleCreate};
use panal_types::page::{Page, PageParams};

/// List the security groups of a project.
#[utoipa::path(get, path = "/api/v1/security-groups", tag = "security-groups", params(PageParams),
    responses((status = 200, body = Page<SecurityGroup>), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn list_security_groups(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<SecurityGroup>>> {
    Ok(Json(
        app.list_security_groups(q.project.as_deref(), q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Create a security group (without `rules`, it allows all outbound traffic).
#[utoipa::path(post, path = "/api/v1/security-groups", tag = "security-groups", request_body = SecurityGroupCreate,
    responses((status = 201, body = SecurityGroup), (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)))]
pub async fn create_security_group(
    State(app): State<App>,
    ApiJson(req): ApiJson<SecurityGroupCreate>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_security_group(req).await?),
    ))
}

/// Show a security group.
#[utoipa::path(get, path = "/api/v1/security-groups/{name}", tag = "security-groups", params(("name" = String, Path), ProjectParam),
    responses((status = 200, body = SecurityGroup), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_security_group(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(
        app.get_security_group(q.project.as_deref(), &name).await?,
    ))
}

/// Delete a security group that no NIC uses and no rule names.
#[utoipa::path(delete, path = "/api/v1/security-groups/{name}", tag = "security-groups", params(("name" = String, Path), ProjectParam),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn delete_security_group(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<StatusCode> {
    app.delete_security_group(q.project.as_deref(), &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add a rule to a security group (applied to running VMs at once).
#[utoipa::path(post, path = "/api/v1/security-groups/{name}/rules", tag = "security-groups", params(("name" = String, Path), ProjectParam),
    request_body = SecurityRuleCreate,
    responses((status = 201, body = SecurityRule), (status = 400, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn add_security_rule(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ApiJson(req): ApiJson<SecurityRuleCreate>,
) -> ApiResult<(StatusCode, Json<SecurityRule>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            app.add_security_rule(q.project.as_deref(), &name, req)
                .await?,
        ),
    ))
}

/// Remove a rule from a security group (applied to running VMs at once).
#[utoipa::path(delete, path = "/api/v1/security-groups/{name}/rules/{rule}", tag = "security-groups",
    params(("name" = String, Path), ("rule" = String, Path), ProjectParam),
    responses((status = 204), (status = 404, body = ApiError)))]
pub async fn delete_security_rule(
    State(app): State<App>,
    Path((name, rule)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectParam>,
) -> ApiResult<StatusCode> {
    app.delete_security_rule(q.project.as_deref(), &name, &rule)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
