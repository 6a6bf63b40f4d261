//! Reading the server-sent change stream: splits the body into events and decodes each
//! `change` event's JSON.

use futures::StreamExt;
use panal_types::event::ChangeEvent;

/// An open change stream.
pub struct EventReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    /// Bytes received but not yet split into events; kept as bytes so a character split
    /// across two chunks is decoded whole.
    buf: Vec<u8>,
}

impl EventReader {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        let body = resp
            .bytes_stream()
            .map(|r| r.map(|chunk| chunk.to_vec()))
            .boxed();
        Self {
            body,
            buf: Vec::new(),
        }
    }

    /// The next change, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Result<ChangeEvent, String>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&raw);
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
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}
