//! Reading the server-sent change stream: splits the body into events and decodes each
//! `change` event's JSON.

use futures::StreamExt;
use panal_types::event::ChangeEvent;

/// An open change stream.
pub struct EventReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes_compat::Bytes>>,
    buf: String,
}

mod bytes_compat {
    pub type Bytes = reqwest::Body;
}

impl EventReader {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        let body = resp
            .bytes_stream()
            .map(|r| r.map(reqwest::Body::from))
            .boxed();
        Self {
            body,
            buf: String::new(),
        }
    }

    /// The next change, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Result<ChangeEvent, String>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = if v.trim() == "change" {
                            "change"
                        } else if v.trim() == "error" {
                            "error"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                match event {
                    "change" => {
                        return Some(serde_json::from_str(&data).map_err(|e| e.to_string()));
                    }
                    "error" => return Some(Err(data)),
                    _ => continue,
                }
            }
            match self.body.next().await? {
                Ok(chunk) => {
                    let bytes = chunk.as_bytes().map(|b| b.to_vec()).unwrap_or_default();
                    self.buf.push_str(&String::from_utf8_lossy(&bytes));
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}
