//! `GET /api/v1/events`: server-sent events, one per change, with the store revision as the
//! event id so a reconnecting client resumes with `Last-Event-ID` (or `?since=`).

use super::error::ApiResult;
use super::extract::ApiQuery;
use crate::app::App;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use panal_types::event::ChangeEvent;
use panal_types::{ApiError, ErrorCode};
use serde::Deserialize;
use std::convert::Infallible;

/// Where to start and what to see.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Deliver changes after this revision (default: only new ones).
    pub since: Option<u64>,
    /// Comma-separated kinds to deliver (`vm,host,project,operation,image`).
    pub kinds: Option<String>,
}

const KINDS: [&str; 5] = ["vm", "host", "project", "operation", "image"];

/// Stream changes as server-sent events (`event: change`, JSON `ChangeEvent` data).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventParams),
    responses((status = 200, description = "text/event-stream of ChangeEvent", body = ChangeEvent), (status = 400, body = ApiError), (status = 410, body = ApiError)))]
pub async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let kinds = match q.kinds {
        None => None,
        Some(k) => {
            let list: Vec<String> = k
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            if let Some(bad) = list.iter().find(|s| !KINDS.contains(&s.as_str())) {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("unknown kind {bad:?}"),
                )
                .with_field("kinds")
                .into());
            }
            Some(list)
        }
    };
    let stream = app.events(last_id.or(q.since), kinds).await?;
    let sse = stream.map(|item| {
        Ok(match item {
            Ok(change) => Event::default()
                .event("change")
                .id(change.revision.to_string())
                .json_data(&change)
                .unwrap_or_else(|_| Event::default().event("error")),
            Err(e) => Event::default()
                .event("error")
                .json_data(&e)
                .unwrap_or_default(),
        })
    });
    Ok(Sse::new(sse).keep_alive(KeepAlive::default()))
}
