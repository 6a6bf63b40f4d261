//! Downloading an image file from an `http`/`https` URL into the image store, safely.
//!
//! Each hop connects to the address the guard checked (the host name is pinned to it, so DNS
//! cannot rebind between check and connect), never through a proxy. Redirects are followed by
//! hand, at most [`FetchPolicy::max_redirects`], each target resolved and checked again. The
//! body streams to a file with its SHA-256 computed on the way; a body larger than the cap is cut
//! off (`too_large`), the whole download has a deadline, and the partial file is removed on any
//! failure. Progress is reported as `(bytes so far, total if announced)`.

use super::guard::{self, Target, UrlPolicy};
use panal_types::{ApiError, ErrorCode};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How image downloads behave.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    /// Which destinations are allowed.
    pub urls: UrlPolicy,
    /// Largest file a download may bring (the cap for disks; boot files have a lower one).
    pub max_bytes: u64,
    /// The whole download, redirects included, must finish within this.
    pub deadline: Duration,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Establishing a connection may take this long.
    pub connect_timeout: Duration,
    /// Extra trusted root certificates (PEM), beyond the built-in web roots.
    pub extra_roots_pem: Vec<Vec<u8>>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            urls: UrlPolicy::default(),
            max_bytes: 64 << 30,
            deadline: Duration::from_secs(3600),
            max_redirects: 5,
            connect_timeout: Duration::from_secs(10),
            extra_roots_pem: Vec::new(),
        }
    }
}

/// What a download brought.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// Bytes written.
    pub bytes: u64,
    /// Their SHA-256, hex.
    pub sha256: String,
}

/// Downloads `first` (already checked by [`guard::resolve`]) into `dst`, at most `max_bytes`.
/// Errors name `field`; `dst` is removed on failure.
pub async fn download(
    policy: &FetchPolicy,
    field: &str,
    first: Target,
    dst: &Path,
    max_bytes: u64,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<Downloaded, ApiError> {
    let origin = guard::origin(&first.url);
    let result = match tokio::time::timeout(
        policy.deadline,
        download_inner(policy, field, first, dst, max_bytes, progress),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "the download from {origin} did not finish within {} s",
                policy.deadline.as_secs()
            ),
        )
        .with_field(field)),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(dst).await;
    }
    result
}

async fn download_inner(
    policy: &FetchPolicy,
    field: &str,
    first: Target,
    dst: &Path,
    max_bytes: u64,
    progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
) -> Result<Downloaded, ApiError> {
    let mut target = first;
    let mut hops = 0;
    let mut resp = loop {
        let client = client_for(policy, &target, field)?;
        let resp = client
            .get(target.url.clone())
            .send()
            .await
            .map_err(|e| transport_error(field, &target, &e))?;
        let status = resp.status();
        if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
            break resp;
        }
        hops += 1;
        if hops > policy.max_redirects {
            return Err(ApiError::invalid(
                field,
                format!("more than {} redirects", policy.max_redirects),
            ));
        }
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::invalid(
                    field,
                    format!(
                        "{} answered {status} without a location",
                        guard::origin(&target.url)
                    ),
                )
            })?;
        let next = target
            .url
            .join(location)
            .map_err(|_| ApiError::invalid(field, "a redirect to an unreadable location"))?;
        target = guard::resolve(&policy.urls, field, &next)
            .await
            .map_err(|mut e| {
                e.message = format!(
                    "redirect from {}: {}",
                    guard::origin(&target.url),
                    e.message
                );
                e
            })?;
    };
    let status = resp.status();
    if !status.is_success() {
        return Err(ApiError::invalid(
            field,
            format!("{} answered {status}", guard::origin(&target.url)),
        ));
    }
    let total = resp.content_length();
    if let Some(t) = total
        && t > max_bytes
    {
        return Err(too_large(field, max_bytes));
    }
    let mut out = tokio::fs::File::create(dst)
        .await
        .map_err(|e| io_error("cannot create the download file", e))?;
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    progress(0, total);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(field, &target, &e))?
    {
        done += chunk.len() as u64;
        if done > max_bytes {
            return Err(too_large(field, max_bytes));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| io_error("cannot write the download file", e))?;
        progress(done, total);
    }
    if let Some(t) = total
        && done != t
    {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("the download ended after {done} of {t} bytes"),
        )
        .with_field(field));
    }
    out.sync_all()
        .await
        .map_err(|e| io_error("cannot write the download file", e))?;
    Ok(Downloaded {
        bytes: done,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// A client for one hop: no automatic redirects, no proxy, the host pinned to the checked
/// address.
fn client_for(policy: &FetchPolicy, t: &Target, field: &str) -> Result<reqwest::Client, ApiError> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(policy.connect_timeout)
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("panal/", env!("CARGO_PKG_VERSION")));
    if let Some(d) = &t.domain {
        b = b.resolve(d, t.addr);
    }
    for pem in &policy.extra_roots_pem {
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
            tracing::error!(error = %e, "bad extra root certificate");
            ApiError::internal().with_field(field)
        })?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| {
        tracing::error!(error = %e, "cannot build the HTTP client");
        ApiError::internal()
    })
}

fn too_large(field: &str, max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("the file is larger than the limit of {max} bytes"),
    )
    .with_field(field)
}

fn transport_error(field: &str, t: &Target, e: &reqwest::Error) -> ApiError {
    // The innermost cause says what happened (refused, reset, certificate); the URL itself may
    // carry secrets in its query, so only its origin is named.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!(
            "cannot download from {} ({}): {cause}",
            guard::origin(&t.url),
            t.addr.ip()
        ),
    )
    .with_field(field)
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(ErrorCode::Internal, format!("{what}; see the server log"))
}
