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
//! /panal/pki/ca                    the installation's CA (certificate and key)
//! /panal/join-tokens/{id}          JoinTokenRecord
//! /panal/agent-certs/{sha256}      AgentIdentity: which host a certificate belongs to
//! /panal/agent-hosts/{host}        AgentIdentity: the current certificate of a host
//! /panal/volumes/{project}/{name}  Volume
//! /panal/host-tasks/{host}/{op}    HostTask: volume work queued for a host's agent
//! /panal/networks/{project}/{name} Network
//! /panal/vnis/{vni}                the network id holding a VXLAN identifier
//! /panal/ipam/{network}/ip/{addr}  PortOwner: an address taken by a NIC
//! /panal/ipam/{network}/mac/{mac}  PortOwner: a MAC taken by a NIC
//! /panal/security-groups/{p}/{n}   SecurityGroup
//! /panal/network-guards/{project}  bumped by each network create of the project
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
/// The installation's certificate authority.
pub const CA: &str = "/panal/pki/ca";
/// Prefix of join tokens.
pub const JOIN_TOKENS: &str = "/panal/join-tokens/";
/// Prefix of agent certificates by fingerprint.
pub const AGENT_CERTS: &str = "/panal/agent-certs/";
/// Prefix of agent certificates by host.
pub const AGENT_HOSTS: &str = "/panal/agent-hosts/";

/// Key of a join token.
pub fn join_token(id: &str) -> String {
    format!("{JOIN_TOKENS}{id}")
}

/// Key of an agent certificate by its SHA-256.
pub fn agent_cert(fingerprint: &str) -> String {
    format!("{AGENT_CERTS}{fingerprint}")
}

/// Key of a host's current agent certificate.
pub fn agent_host(host: &str) -> String {
    format!("{AGENT_HOSTS}{host}")
}

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

/// Prefix of volumes.
pub const VOLUMES: &str = "/panal/volumes/";
/// Prefix of host tasks.
pub const HOST_TASKS: &str = "/panal/host-tasks/";

/// Prefix of one project's volumes.
pub fn volumes_of(project: &str) -> String {
    format!("{VOLUMES}{project}/")
}

/// Key of a volume.
pub fn volume(project: &str, name: &str) -> String {
    format!("{VOLUMES}{project}/{name}")
}

/// Prefix of one host's tasks.
pub fn host_tasks_of(host: &str) -> String {
    format!("{HOST_TASKS}{host}/")
}

/// Key of a host task.
pub fn host_task(host: &str, id: &panal_types::OperationId) -> String {
    format!("{HOST_TASKS}{host}/{id}")
}

/// Prefix of all networks.
pub const NETWORKS: &str = "/panal/networks/";
/// Prefix of VXLAN identifier reservations.
pub const VNIS: &str = "/panal/vnis/";
/// Prefix of address-management records.
pub const IPAM: &str = "/panal/ipam/";
/// Prefix of all security groups.
pub const SECURITY_GROUPS: &str = "/panal/security-groups/";

/// Prefix of one project's networks.
pub fn networks_of(project: &str) -> String {
    format!("{NETWORKS}{project}/")
}

/// A network.
pub fn network(project: &str, name: &str) -> String {
    format!("{NETWORKS}{project}/{name}")
}

/// A VXLAN identifier taken by a network.
pub fn vni(vni: u32) -> String {
    format!("{VNIS}{vni:08}")
}

/// Prefix of one network's address-management records (addresses and MACs).
pub fn ipam_of(network: &panal_types::NetworkId) -> String {
    format!("{IPAM}{network}/")
}

/// An address of a network, taken by a NIC. Zero-padded octets keep the keys in address order.
pub fn ipam_address(network: &panal_types::NetworkId, ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "{IPAM}{network}/ip/{:03}.{:03}.{:03}.{:03}",
        o[0], o[1], o[2], o[3]
    )
}

/// A MAC address of a network, taken by a NIC.
pub fn ipam_mac(network: &panal_types::NetworkId, mac: &str) -> String {
    format!("{IPAM}{network}/mac/{mac}")
}

/// Prefix of all floating addresses.
pub const FLOATING_IPS: &str = "/panal/floating-ips/";

/// Prefix of one project's floating addresses.
pub fn floating_ips_of(project: &str) -> String {
    format!("{FLOATING_IPS}{project}/")
}

/// A floating address of a project (zero-padded octets, as IPAM keys).
pub fn floating_ip(project: &str, ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!(
        "{FLOATING_IPS}{project}/{:03}.{:03}.{:03}.{:03}",
        o[0], o[1], o[2], o[3]
    )
}

/// The floating address mapped to a NIC (its address as text): one per NIC, created with
/// compare-absent when associating.
pub fn floating_nic(project: &str, vm: &str, nic: &str) -> String {
    format!("/panal/floating-nics/{project}/{vm}/{nic}")
}

/// Prefix of one project's security groups.
pub fn security_groups_of(project: &str) -> String {
    format!("{SECURITY_GROUPS}{project}/")
}

/// A security group.
pub fn security_group(project: &str, name: &str) -> String {
    format!("{SECURITY_GROUPS}{project}/{name}")
}

/// Where a project's network creates serialise: each create compares and bumps it, so two
/// overlapping subnets cannot both pass the overlap check.
pub fn network_guard(project: &str) -> String {
    format!("/panal/network-guards/{project}")
}
