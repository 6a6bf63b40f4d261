//! The agent endpoint: what remote host agents talk to, over HTTPS with mutual TLS, on its own
//! listener. Joining (trading a join token for a certificate) needs no client certificate;
//! everything else needs a certificate this control plane's CA issued, and acts only on the
//! host that certificate names. Users' tokens mean nothing here, and agent certificates mean
//! nothing on the user API.

mod identity;
mod routes;
mod tls;

pub use routes::router;
pub use tls::{AgentListener, serve};

/// Path prefix of the agent endpoint.
pub const PREFIX: &str = "/agent/v1";
/// How often an idle assignment stream carries a keep-alive line, so that an agent notices a
/// dead connection (a cut link drops packets silently) and reconnects.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(5);
