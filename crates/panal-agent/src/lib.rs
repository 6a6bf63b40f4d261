//! Panal's host agent. It registers its host, keeps its liveness lease, re-attaches to VMs whose
//! hypervisor processes outlived it, and converges every VM assigned to its host: one task per VM
//! owns that VM's hypervisor handle and takes typed commands, so no two actions on one VM race.

mod agent;
pub mod boot;
pub mod inventory;
pub mod link;
pub mod network;
pub mod remote;
pub mod transfer;
mod vm_migration;
mod vm_task;
pub mod volumes;

pub use agent::{Agent, AgentConfig};
