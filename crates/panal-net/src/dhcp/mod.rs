//! The built-in DHCP responder: one listener per port that has a lease, answering only that
//! port's MAC with that port's fixed address. No pool, no lease database: the control plane's
//! IP address management already decided the address.

mod frame;
mod listener;
mod reply;
pub(crate) mod socket;

pub(crate) use listener::{Listener, spawn};
