//! The agent's side of the network protocol, for hosts other than the control plane's: joining
//! with a token, keeping the resulting identity on disk, the [`ControlPlaneLink`] over
//! mutual-TLS HTTPS, boot images fetched from the control plane and cached by checksum, and the
//! identity as the credentials live migrations are authenticated and encrypted with.
//!
//! [`ControlPlaneLink`]: crate::link::ControlPlaneLink

mod http;
mod identity;
mod images;
mod join;
mod link;
pub mod migration_tunnel;
mod private_files;
mod tls_pipe;
mod transfer;

pub use identity::AgentIdentity;
pub use images::RemoteImages;
pub use join::{join, normalize_url};
pub use link::RemoteLink;
