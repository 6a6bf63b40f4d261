//! Request extractors that turn malformed input into the typed public error: unknown fields,
//! wrong types and bad JSON name the offending field (`spec.vcpus`) instead of axum's plain-text
//! rejections.

use super::error::Failure;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use bytes_body::read_body;
use panal_types::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

/// The largest JSON body accepted.
const MAX_BODY: usize = 1 << 20;

/// A JSON body, decoded strictly.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, MAX_BODY).await?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        decode_json(bytes).map(ApiJson).map_err(Failure)
    }
}

/// Decodes JSON, mapping errors to the public error with the field path.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `")
            && let Some(name) = rest.split('`').next()
        {
            // The path already ends at the unknown key when serde saw it as a map entry.
            let field = if path == "." || path.is_empty() {
                name.to_owned()
            } else if path == name || path.ends_with(&format!(".{name}")) {
                path.clone()
            } else {
                format!("{path}.{name}")
            };
            return ApiError::new(ErrorCode::UnknownField, format!("unknown field `{field}`"))
                .with_field(field);
        }
        if inner.is_data() {
            let mut err = ApiError::new(ErrorCode::InvalidValue, format!("invalid value: {msg}"));
            if path != "." && !path.is_empty() {
                err = err.with_field(path);
            }
            return err;
        }
        ApiError::new(
            ErrorCode::MalformedBody,
            format!("the body is not valid JSON: {msg}"),
        )
    })
}

/// Query parameters, decoded strictly.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(q).map(ApiQuery).map_err(|e| {
            let msg = e.to_string();
            let mut err = ApiError::new(ErrorCode::InvalidQuery, format!("invalid query: {msg}"));
            if let Some(rest) = msg.strip_prefix("unknown field `")
                && let Some(name) = rest.split('`').next()
            {
                err = err.with_field(name);
            }
            Failure(err)
        })
    }
}

mod bytes_body {
    //! Reads a request body up to a limit.
    use super::Failure;
    use axum::body::Bytes;
    use axum::extract::Request;
    use panal_types::{ApiError, ErrorCode};

    pub async fn read_body(req: Request, limit: usize) -> Result<Bytes, Failure> {
        axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                Failure(ApiError::new(
                    ErrorCode::MalformedBody,
                    format!("the body is unreadable or larger than {limit} bytes"),
                ))
            })
    }
}
