//! The interactive serial console over a websocket: bytes typed go to the guest, bytes the
//! guest prints come back.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open console.
pub struct ConsoleConnection {
    ws: Ws,
}

pub(crate) async fn connect(
    base: &str,
    token: &str,
    path: &str,
    project: Option<&str>,
) -> Result<ConsoleConnection, String> {
    let ws_base = base
        .replacen("http://", "ws://", 1)
        .replacen("https://", "wss://", 1);
    let mut url = format!("{ws_base}{path}");
    if let Some(p) = project {
        url.push_str(&format!("?project={p}"));
    }
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let auth = format!("Bearer {token}")
        .parse()
        .map_err(|_| "bad token".to_string())?;
    req.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ConsoleConnection { ws })
}

impl ConsoleConnection {
    /// Sends keystrokes to the guest.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next bytes the guest printed; `None` when the console closed.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Binary(b)) => return Some(b.to_vec()),
                Ok(Message::Text(t)) => return Some(t.as_bytes().to_vec()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Closes the console.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
