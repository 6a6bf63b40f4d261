//! Bearer-token authentication. A missing or wrong token gets 401 with no detail: the response
//! does not say whether the token exists, expired or was malformed.

use super::error::Failure;
use crate::app::App;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use panal_types::{ApiError, ErrorCode};
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Adds the bearer scheme to the OpenAPI document.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn unauthorized() -> Failure {
    Failure(ApiError::new(ErrorCode::Unauthorized, "unauthorized"))
}

/// Lets the request through only with a known token.
pub async fn require_token(
    State(app): State<App>,
    mut req: Request,
    next: Next,
) -> Result<Response, Failure> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let caller = crate::auth::verify(app.repo(), presented.trim())
        .await?
        .ok_or_else(unauthorized)?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}
