//! The end-to-end tests: real QEMU guests under the platform, on this machine and on hosts
//! in network namespaces (`netns_lab` checks the namespace lab itself). One test binary, so the
//! platform is linked once for all of them; nextest runs the `e2e_*` modules in the `real-vms`
//! group (`.config/nextest.toml`).

#[path = "../common_e2e/mod.rs"]
mod common_e2e;
#[path = "../common_netns/mod.rs"]
mod common_netns;
#[path = "../common_pool/mod.rs"]
mod common_pool;

mod e2e_bad_input;
mod e2e_floating_ip;
mod e2e_lifecycle;
mod e2e_many;
mod e2e_migrate;
mod e2e_network;
mod e2e_pool;
mod e2e_recovery;
mod e2e_resize;
mod e2e_volumes;
mod netns_lab;
