//! The built-in DHCP responder and IPv6 router advertiser: one listener per port that has a
//! lease or an IPv6 prefix, answering only that port's MAC with that port's fixed address (and
//! telling it the /64 its SLAAC address is formed in). No pool, no lease database: the control
//! plane's IP address management already decided the addresses.

mod frame;
mod listener;
mod ra;
mod reply;
pub(crate) mod socket;

pub(crate) use listener::{Listener, PortService, spawn};
pub(crate) use ra::{Advert, advertiser_mac};
