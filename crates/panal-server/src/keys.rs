//! The store's key layout. Every key Panal writes is built here, so the layout is one page to
//! read (and one place to change with a format upgrade).
//!
//! ```text
//! /panal/meta/format               stored-data format version
//! /panal/projects/{name}           Project
//! /panal/vms/{project}/{name}      Vm
//! /panal/hosts/{name}              Host
//! /panal/host-leases/{name}        liveness key, attached to the agent's lease
//! /panal/ops/{id}                  Operation
//! /panal/images/{project}/{name}   Image
//! /panal/tokens/{sha256 of token}  TokenRecord
//! /panal/leader                    LeaderInfo of the replica running the controllers (leased)
//! ```

/// Prefix of everything Panal stores.
pub const ROOT: &str = "/panal/";
/// The format-version key.
pub const FORMAT: &str = "/panal/meta/format";
/// Prefix of projects.
pub const PROJECTS: &str = "/panal/projects/";
/// Prefix of VMs.
pub const VMS: &str = "/panal/vms/";
/// Prefix of hosts.
pub const HOSTS: &str = "/panal/hosts/";
/// Prefix of host liveness keys.
pub const HOST_LEASES: &str = "/panal/host-leases/";
/// Prefix of operations.
pub const OPS: &str = "/panal/ops/";
/// Prefix of images.
pub const IMAGES: &str = "/panal/images/";
/// The control-plane leadership key.
pub const LEADER: &str = "/panal/leader";
/// Prefix of API tokens.
pub const TOKENS: &str = "/panal/tokens/";

/// Key of a project.
pub fn project(name: &str) -> String {
    format!("{PROJECTS}{name}")
}

/// Prefix of one project's VMs.
pub fn vms_of(project: &str) -> String {
    format!("{VMS}{project}/")
}

/// Key of a VM.
pub fn vm(project: &str, name: &str) -> String {
    format!("{VMS}{project}/{name}")
}

/// Key of a host.
pub fn host(name: &str) -> String {
    format!("{HOSTS}{name}")
}

/// Liveness key of a host.
pub fn host_lease(name: &str) -> String {
    format!("{HOST_LEASES}{name}")
}

/// Key of an operation.
pub fn op(id: &panal_types::OperationId) -> String {
    format!("{OPS}{id}")
}

/// Prefix of one project's images.
pub fn images_of(project: &str) -> String {
    format!("{IMAGES}{project}/")
}

/// Key of an image.
pub fn image(project: &str, name: &str) -> String {
    format!("{IMAGES}{project}/{name}")
}

/// Key of a token record.
pub fn token(hash_hex: &str) -> String {
    format!("{TOKENS}{hash_hex}")
}
