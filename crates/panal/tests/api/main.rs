//! The platform's API, CLI, store and scale tests: everything that needs no real guest. One
//! test binary, so the platform is linked once for all of them (each module was its own binary
//! before, and linking them was a large share of a CI build).

#[path = "../common/mod.rs"]
mod common;
#[path = "../scale_sim/mod.rs"]
mod scale_sim;

mod admin_move;
mod agent_join;
mod agent_volumes;
mod api_bad_input;
mod api_batch_create;
mod api_floating_ips;
mod api_image_url;
mod api_lifecycle;
mod api_networks;
mod api_security_groups;
mod api_slots;
mod api_volumes;
mod cli_agent;
mod cli_up;
mod ha_etcd;
mod host_maintenance;
mod openapi_drift;
mod scale_pool;
