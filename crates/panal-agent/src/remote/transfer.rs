//! Volume files over the agent's mutual-TLS link: uploads (`PUT /tasks/{task}/upload`, an
//! export or the first step of a move) and downloads (`GET /tasks/{task}/volume`, the second
//! step of a move). The control plane answers only for tasks queued for this host.

use super::RemoteLink;
use crate::transfer::{SharedHash, file_chunks, finish, write_chunks};
use futures::StreamExt;
use panal_types::OperationId;
use panal_types::volume::FileDigest;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Streams `file` to the control plane and checks that what arrived is what was read.
pub(super) async fn upload(
    link: &RemoteLink,
    task: OperationId,
    file: &Path,
    done: &Arc<AtomicU64>,
) -> Result<FileDigest, String> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let len = f
        .metadata()
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    let hash: SharedHash = Arc::default();
    let body = reqwest::Body::wrap_stream(file_chunks(f, Some(hash.clone()), done.clone()));
    let (http, base) = link.parts();
    let resp = http
        .put(format!("{base}/tasks/{task}/upload"))
        .header(reqwest::header::CONTENT_LENGTH, len)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("the upload to the control plane broke off: {e:#}"))?;
    if !resp.status().is_success() {
        let e = super::http::refusal(resp).await;
        return Err(format!(
            "the control plane refused the upload: {}",
            e.message
        ));
    }
    let got: FileDigest = resp
        .json()
        .await
        .map_err(|e| format!("unreadable answer to the upload: {e}"))?;
    let sent = FileDigest {
        size_bytes: len,
        sha256: finish(&hash),
    };
    if got != sent {
        return Err(format!(
            "the control plane received {} bytes with sha256 {}, but {} bytes with sha256 {} \
             were sent",
            got.size_bytes, got.sha256, sent.size_bytes, sent.sha256
        ));
    }
    Ok(sent)
}

/// Fetches the staged file of a `receive` task into `dst`.
pub(super) async fn download(
    link: &RemoteLink,
    task: OperationId,
    dst: &Path,
    limit: u64,
    done: &AtomicU64,
) -> Result<FileDigest, String> {
    let (http, base) = link.parts();
    let resp = http
        .get(format!("{base}/tasks/{task}/volume"))
        .send()
        .await
        .map_err(|e| format!("cannot fetch the volume: {e:#}"))?;
    if !resp.status().is_success() {
        let e = super::http::refusal(resp).await;
        return Err(format!(
            "the control plane refused the volume: {}",
            e.message
        ));
    }
    let body = resp
        .bytes_stream()
        .map(|c| c.map_err(|e| format!("the download broke off: {e:#}")));
    write_chunks(Box::pin(body), dst, limit, done).await
}
