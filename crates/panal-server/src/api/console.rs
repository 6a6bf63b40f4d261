//! Serial consoles: `GET /api/v1/vms/{name}/console` upgrades to a websocket that carries the
//! console's bytes both ways (binary messages); `GET /api/v1/vms/{name}/console/log` returns the
//! history as text and, with `follow=true`, keeps streaming what the guest prints.
//!
//! QEMU stops the guest's serial output while a connected client does not read, so the proxy
//! reads the socket continuously and drops output a slow websocket cannot take.

use super::error::{ApiResult, Failure};
use super::extract::ApiQuery;
use super::vms::ProjectParam;
use crate::app::App;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use panal_types::{ApiError, ErrorCode};
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Options of the console history.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Project (default `default`).
    pub project: Option<String>,
    /// Keep streaming new output.
    pub follow: Option<bool>,
    /// Only the last N bytes of the history (default: all, at most 1 MiB).
    pub tail_bytes: Option<u64>,
}

const MAX_HISTORY: u64 = 1 << 20;

fn no_console() -> Failure {
    Failure(ApiError::new(
        ErrorCode::Conflict,
        "the VM has no console right now (is it running on a hypervisor with one?)",
    ))
}

/// Attach to the serial console (websocket; binary messages both ways).
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", tag = "vms", params(("name" = String, Path), ProjectParam),
    responses((status = 101, description = "websocket upgrade"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn console(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<ProjectParam>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let vm = app.vm(q.project.as_deref(), &name).await?;
    let access = app.consoles().ok_or_else(no_console)?;
    let path = access.socket(&vm).await.ok_or_else(no_console)?;
    let sock = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|_| no_console())?;
    Ok(ws.on_upgrade(move |socket| pump(socket, sock)))
}

async fn pump(ws: WebSocket, sock: tokio::net::UnixStream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = sock.into_split();
    let to_guest = async move {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    let from_guest = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    tokio::select! {
        _ = to_guest => {}
        _ = from_guest => {}
    }
}

/// The console history (text), optionally followed.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console/log", tag = "vms", params(("name" = String, Path), LogParams),
    responses((status = 200, description = "console output", content_type = "text/plain"), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub async fn console_log(
    State(app): State<App>,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogParams>,
) -> ApiResult<Response> {
    let vm = app.vm(q.project.as_deref(), &name).await?;
    let access = app.consoles().ok_or_else(no_console)?;
    let path = access.log(&vm).await.ok_or_else(no_console)?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| no_console())?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let tail = q.tail_bytes.unwrap_or(MAX_HISTORY).min(MAX_HISTORY);
    let start = len.saturating_sub(tail);
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|_| no_console())?;
    let follow = q.follow.unwrap_or(false);
    let stream = futures::stream::unfold((file, follow), |(mut file, follow)| async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) if follow => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok::<_, std::io::Error>(buf), (file, follow)));
                }
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}
