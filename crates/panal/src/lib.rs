//! The pieces of the `panal` binary that tests use too: assembling a whole single-machine
//! platform (store, control plane, controllers, local agent, HTTP server) in one process.

pub mod local;
pub mod platform;
