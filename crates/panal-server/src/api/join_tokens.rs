//! `/api/v1/join-tokens` handlers: the single-use tokens with which new hosts join.

use super::error::ApiResult;
use super::extract::{ApiJson, ApiQuery};
use crate::app::App;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use panal_types::ApiError;
use panal_types::join::{JoinToken, JoinTokenCreate, JoinTokenCreated};
use panal_types::page::{Page, PageParams};

/// Make a join token (its secret is shown only in this answer).
#[utoipa::path(post, path = "/api/v1/join-tokens", tag = "hosts", request_body = JoinTokenCreate,
    responses((status = 201, body = JoinTokenCreated), (status = 400, body = ApiError)))]
pub async fn create_join_token(
    State(app): State<App>,
    ApiJson(req): ApiJson<JoinTokenCreate>,
) -> ApiResult<(StatusCode, Json<JoinTokenCreated>)> {
    Ok((StatusCode::CREATED, Json(app.create_join_token(req).await?)))
}

/// List join tokens in every state (valid, used, expired, revoked).
#[utoipa::path(get, path = "/api/v1/join-tokens", tag = "hosts", params(PageParams),
    responses((status = 200, body = Page<JoinToken>), (status = 400, body = ApiError)))]
pub async fn list_join_tokens(
    State(app): State<App>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Page<JoinToken>>> {
    Ok(Json(
        app.list_join_tokens(q.limit, q.page_token.as_deref())
            .await?,
    ))
}

/// Revoke a join token so that no host can join with it.
#[utoipa::path(delete, path = "/api/v1/join-tokens/{id}", tag = "hosts", params(("id" = String, Path)),
    responses((status = 200, body = JoinToken), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn revoke_join_token(
    State(app): State<App>,
    Path(id): Path<String>,
) -> ApiResult<Json<JoinToken>> {
    Ok(Json(app.revoke_join_token(&id).await?))
}
