//! Panal's control plane: the REST API, authentication, the application layer, the controllers
//! (scheduler, host liveness) and the in-process agent link used by `panal up`.

pub mod agent_api;
pub mod api;
pub mod app;
pub mod auth;
pub mod codec;
pub mod console;
pub mod controllers;
pub mod format;
pub mod images;
pub mod keys;
pub mod leader;
pub mod link;
pub mod pki;
pub mod repo;
pub mod scheduler;

pub use app::{App, AppConfig};
