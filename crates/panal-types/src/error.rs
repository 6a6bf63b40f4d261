//! The one public error body of the API. Every failure a client sees is an [`ApiError`] with a
//! stable machine-readable [`ErrorCode`], a human message, and the offending input field where
//! there is one. Internal causes go to the logs, never into this body.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable error codes. Clients match on these; messages may change, codes may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A field holds a value outside its rules (range, format, unit).
    InvalidValue,
    /// A name breaks the naming rule.
    InvalidName,
    /// The body names a field the resource does not have.
    UnknownField,
    /// The body is not valid JSON for this request.
    MalformedBody,
    /// A query parameter is malformed.
    InvalidQuery,
    /// No credentials, or wrong ones.
    Unauthorized,
    /// The caller is known but may not do this.
    Forbidden,
    /// The resource (or a resource the request names) does not exist.
    NotFound,
    /// A resource with that name already exists.
    AlreadyExists,
    /// The resource is in the wrong state for this request, or another operation holds it.
    Conflict,
    /// A compare-and-swap lost against a concurrent writer; retry with fresh state.
    PreconditionFailed,
    /// The requested history is gone (events resumed from a compacted revision); re-list.
    Gone,
    /// No host can satisfy the request.
    InsufficientCapacity,
    /// The store or another dependency is unreachable; retry later.
    Unavailable,
    /// A bug or an unexpected condition on the server; details are in its log.
    Internal,
    /// A URL's destination (or a redirect's) is not allowed: loopback, link-local, private,
    /// the control plane itself, or a name resolving to one of these.
    UrlRefused,
    /// A download or upload is larger than the configured cap.
    TooLarge,
    /// A file's SHA-256 is not the one the request declared.
    ChecksumMismatch,
}

impl ErrorCode {
    /// The HTTP status this code maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidValue
            | ErrorCode::InvalidName
            | ErrorCode::UnknownField
            | ErrorCode::MalformedBody
            | ErrorCode::InvalidQuery => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::Gone => 410,
            ErrorCode::InsufficientCapacity => 507,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::UrlRefused => 403,
            ErrorCode::TooLarge => 413,
            ErrorCode::ChecksumMismatch => 422,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::MalformedBody => "malformed_body",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::Gone => "gone",
            ErrorCode::InsufficientCapacity => "insufficient_capacity",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::UrlRefused => "url_refused",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error body returned with every 4xx and 5xx response.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, thiserror::Error,
)]
pub struct ApiError {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// The input field at fault, as a dotted path (`spec.vcpus`), where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The operation that holds the resource, for conflicts caused by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<crate::OperationId>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field `{field}`)")?;
        }
        write!(f, " [{}]", self.code)
    }
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            operation: None,
        }
    }

    /// The same error, naming the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error, naming the operation that holds the resource.
    pub fn with_operation(mut self, op: crate::OperationId) -> Self {
        self.operation = Some(op);
        self
    }

    /// `invalid_value` for `field`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, message).with_field(field)
    }

    /// `not_found` for a kind of resource and its name.
    pub fn not_found(kind: &str, name: impl fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} \"{name}\" not found"))
    }

    /// `conflict` with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// `internal` with a generic message; the cause belongs in the log.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error; see the server log")
    }

    /// `unavailable` with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
}

/// Validates a name field, mapping a bad name to `invalid_name` on `field`.
pub fn check_name(field: &str, value: &str) -> Result<crate::Name, ApiError> {
    crate::Name::parse(value).map_err(|e| {
        ApiError::new(ErrorCode::InvalidName, format!("invalid {field}: {e}")).with_field(field)
    })
}
