//! The agent endpoint's routes: the calls the in-process link makes (register, heartbeat,
//! assignments, reports, migration reports, host tasks and their reports) plus boot-image fetches and the volume
//! files of host tasks (uploads of exports and moves, downloads of moves), each bound to the
//! caller's host.

use super::identity::{AgentHost, require_agent};
use super::{KEEPALIVE, PREFIX};
use crate::api::error::{ApiResult, Failure};
use crate::api::extract::ApiJson;
use crate::app::App;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use panal_types::agent::{BootManifest, HostRegistration, VmStatusReport};
use panal_types::host::Host;
use panal_types::join::{AgentJoin, AgentJoined};
use panal_types::migration::MigrationReport;
use panal_types::volume::HostTaskReport;
use panal_types::{ApiError, ErrorCode};

/// The agent endpoint's router.
pub fn router(app: App) -> Router {
    let protected = Router::new()
        .route("/register", post(register))
        .route("/heartbeat", post(heartbeat))
        .route("/assignments", get(assignments))
        .route("/reports", post(report))
        .route("/tasks", get(tasks))
        .route("/task-reports", post(task_report))
        .route("/migration-reports", post(migration_report))
        .route("/network-plans", get(network_plans))
        .route("/vms/{project}/{name}/boot", get(boot_manifest))
        .route("/vms/{project}/{name}/boot/{role}", get(boot_file))
        .route("/tasks/{task}/image", get(task_image_manifest))
        .route("/tasks/{task}/image/{role}", get(task_image_file))
        .route("/tasks/{task}/upload", axum::routing::put(task_upload))
        .route("/tasks/{task}/volume", get(task_volume))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            require_agent,
        ));
    let open = Router::new()
        .route("/ca", get(ca))
        .route("/join", post(join));
    Router::new()
        .nest(PREFIX, open.merge(protected))
        .fallback(|| async { Failure(ApiError::new(ErrorCode::NotFound, "no such endpoint")) })
        .with_state(app)
}

/// The CA certificate (PEM). Public: a joining agent checks it against the hash in its token.
async fn ca(State(app): State<App>) -> ApiResult<Response> {
    let ca = app.ca().await?;
    Ok((
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        ca.cert_pem().to_owned(),
    )
        .into_response())
}

async fn join(
    State(app): State<App>,
    ApiJson(req): ApiJson<AgentJoin>,
) -> ApiResult<Json<AgentJoined>> {
    Ok(Json(app.join_host(req).await?))
}

async fn register(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    ApiJson(reg): ApiJson<HostRegistration>,
) -> ApiResult<Json<Host>> {
    if reg.name != host {
        return Err(Failure(
            ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "this certificate belongs to host \"{host}\", not \"{}\"",
                    reg.name
                ),
            )
            .with_field("name"),
        ));
    }
    Ok(Json(app.register_host(reg).await?))
}

async fn heartbeat(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
) -> ApiResult<StatusCode> {
    app.heartbeat(host.as_str()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every VM assigned to the caller's host, then each change, as JSON lines; an empty line every
/// [`KEEPALIVE`] while nothing happens.
async fn assignments(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
) -> ApiResult<Response> {
    let stream = app
        .assignments(host.as_str())
        .await
        .map_err(|e| Failure(ApiError::unavailable(e.to_string())))?;
    Ok(ndjson(stream))
}

/// The volume work queued for the caller's host, then each new task, as JSON lines.
async fn tasks(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
) -> ApiResult<Response> {
    let stream = app
        .host_tasks(host.as_str())
        .await
        .map_err(|e| Failure(ApiError::unavailable(e.to_string())))?;
    Ok(ndjson(stream))
}

/// The caller's host network plan, then each change of it, as JSON lines.
async fn network_plans(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
) -> ApiResult<Response> {
    let stream = app
        .network_plans(host.as_str())
        .await
        .map_err(|e| Failure(ApiError::unavailable(e.to_string())))?;
    Ok(ndjson(stream))
}

/// A stream of messages as JSON lines, with an empty line every [`KEEPALIVE`] so the agent can
/// tell a quiet stream from a dead one. It ends at the first error.
fn ndjson<T: serde::Serialize + Send + 'static, E: Send + 'static>(
    stream: futures::stream::BoxStream<'static, Result<T, E>>,
) -> Response {
    let lines = stream
        .take_while(|item| futures::future::ready(item.is_ok()))
        .filter_map(|item| futures::future::ready(item.ok()))
        .map(|a| {
            let mut line = serde_json::to_vec(&a).unwrap_or_default();
            line.push(b'\n');
            line
        });
    let ticks = futures::stream::unfold((), |()| async {
        tokio::time::sleep(KEEPALIVE).await;
        Some((b"\n".to_vec(), ()))
    });
    // The response ends when the message stream does, not when the ticks would.
    let body = futures::stream::select(
        lines.map(Some).chain(futures::stream::once(async { None })),
        ticks.map(Some),
    )
    .take_while(|x| futures::future::ready(x.is_some()))
    .map(|x| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(x.unwrap_or_default())));
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn task_report(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    ApiJson(report): ApiJson<HostTaskReport>,
) -> ApiResult<StatusCode> {
    app.report_host_task(host.as_str(), report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn migration_report(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    ApiJson(report): ApiJson<MigrationReport>,
) -> ApiResult<StatusCode> {
    app.report_migration(host.as_str(), report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn report(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    ApiJson(report): ApiJson<VmStatusReport>,
) -> ApiResult<StatusCode> {
    app.report_vm(host.as_str(), report).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn boot_manifest(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<BootManifest>> {
    Ok(Json(app.boot_manifest(&host, &project, &name).await?))
}

async fn boot_file(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path((project, name, role)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    stream_file(app.boot_file(&host, &project, &name, &role).await?).await
}

async fn task_image_manifest(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path(task): Path<String>,
) -> ApiResult<Json<BootManifest>> {
    Ok(Json(app.task_image_manifest(&host, &task).await?))
}

async fn task_image_file(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path((task, role)): Path<(String, String)>,
) -> ApiResult<Response> {
    stream_file(app.task_image_file(&host, &task, &role).await?).await
}

/// Takes the file a task of the caller's host sends (an export, or a volume moving away), and
/// answers with the length and SHA-256 that arrived.
async fn task_upload(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path(task): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Json<panal_types::volume::FileDigest>> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let reader = tokio_util::io::StreamReader::new(
        body.into_data_stream()
            .map(|c| c.map_err(std::io::Error::other)),
    );
    Ok(Json(
        app.receive_task_file(&host, &task, declared, reader)
            .await?,
    ))
}

/// The staged volume file a `receive` task of the caller's host fetches.
async fn task_volume(
    State(app): State<App>,
    Extension(AgentHost(host)): Extension<AgentHost>,
    Path(task): Path<String>,
) -> ApiResult<Response> {
    stream_file(app.task_transfer_file(&host, &task).await?).await
}

/// Streams an image file with its length.
async fn stream_file(path: std::path::PathBuf) -> ApiResult<Response> {
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "cannot open image file");
        Failure(ApiError::internal())
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}
