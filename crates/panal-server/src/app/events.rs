//! The change feed behind `GET /api/v1/events`: store watch events on Panal's keys, turned into
//! typed [`ChangeEvent`]s. Secrets (tokens) and internal keys (format, leases) never appear.

use super::App;
use crate::keys;
use crate::repo::store_error;
use futures::StreamExt;
use futures::stream::BoxStream;
use panal_store::WatchEvent;
use panal_types::ApiError;
use panal_types::event::{ChangeEvent, EventAction};

/// A stream of change events.
pub type EventStream = BoxStream<'static, Result<ChangeEvent, ApiError>>;

impl App {
    /// Changes after revision `since` (or from now on), optionally of some kinds only.
    pub async fn events(
        &self,
        since: Option<u64>,
        kinds: Option<Vec<String>>,
    ) -> Result<EventStream, ApiError> {
        let store = self.repo.store();
        let from = match since {
            Some(rev) => rev + 1,
            None => store.current_revision().await.map_err(store_error)? + 1,
        };
        let watch = store.watch(keys::ROOT, from).await.map_err(store_error)?;
        Ok(watch
            .filter_map(move |ev| {
                let out = match ev {
                    Err(e) => Some(Err(store_error(e))),
                    Ok(ev) => to_change(&ev)
                        .filter(|c| kinds.as_ref().is_none_or(|k| k.contains(&c.kind)))
                        .map(Ok),
                };
                futures::future::ready(out)
            })
            .boxed())
    }
}

/// Maps a store key to (kind, project, name); `None` for keys clients must not see.
fn classify(key: &str) -> Option<(&'static str, Option<String>, String)> {
    let rest = key.strip_prefix(keys::ROOT)?;
    let (kind, rest) = rest.split_once('/')?;
    let kind = match kind {
        "projects" => "project",
        "vms" => "vm",
        "hosts" => "host",
        "ops" => "operation",
        "images" => "image",
        _ => return None,
    };
    match rest.split_once('/') {
        Some((project, name)) => Some((kind, Some(project.to_owned()), name.to_owned())),
        None => Some((kind, None, rest.to_owned())),
    }
}

fn to_change(ev: &WatchEvent) -> Option<ChangeEvent> {
    let (kind, project, name) = classify(ev.key())?;
    let (action, object) = match ev {
        WatchEvent::Put(kv) => {
            let value: serde_json::Value = serde_json::from_slice(&kv.value).ok()?;
            let mut data = value.get("data").cloned()?;
            if kind == "vm"
                && let Some(obj) = data.as_object_mut()
            {
                obj.insert("revision".into(), kv.mod_revision.into());
            }
            (EventAction::Put, Some(data))
        }
        WatchEvent::Delete { .. } => (EventAction::Delete, None),
    };
    Some(ChangeEvent {
        revision: ev.revision(),
        kind: kind.into(),
        action,
        project,
        name,
        object,
    })
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn hides_internal_keys() {
        assert_eq!(
            classify("/panal/vms/default/a"),
            Some(("vm", Some("default".into()), "a".into()))
        );
        assert_eq!(
            classify("/panal/hosts/h1"),
            Some(("host", None, "h1".into()))
        );
        assert_eq!(classify("/panal/tokens/abc"), None);
        assert_eq!(classify("/panal/host-leases/h1"), None);
        assert_eq!(classify("/panal/meta/format"), None);
    }
}
