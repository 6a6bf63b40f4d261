//! Names and numbers of one network lab. Every namespace and root-namespace link of a lab is
//! called `pnl<owner pid>-<lab counter>-<role>` (both numbers in base 36, role `br`, `gw` or
//! `h<i>`), so that names fit in IFNAMSIZ, two labs of one process or of parallel test processes
//! never clash, and a later run can tell from the name alone whether its owner is dead.

use std::net::Ipv4Addr;

/// Common prefix of every lab name: what `NetLab::sweep_stale` looks at.
pub const PREFIX: &str = "pnl";

/// Longest interface name the kernel accepts (IFNAMSIZ minus its NUL).
const IFNAME_MAX: usize = 15;

/// Most hosts in one lab: the last octet numbers hosts 1..=99 and the gateway 254, and a host
/// index of two decimal digits keeps the longest name within IFNAMSIZ.
pub const MAX_HOSTS: usize = 99;

/// The names and subnet of one lab.
#[derive(Clone, Debug)]
pub struct Names {
    /// `pnl<pid>-<counter>`: the part every name of this lab starts with.
    pub tag: String,
    /// `A.B` of the lab's `10.A.B.0/24`.
    pub subnet: [u8; 2],
}

impl Names {
    /// The names of lab number `counter` of process `pid`.
    pub fn new(pid: u32, counter: u32) -> Names {
        let tag = format!("{PREFIX}{}-{}", base36(pid), base36(counter));
        let names = Names {
            tag,
            subnet: subnet(pid, counter),
        };
        let longest = names.host(MAX_HOSTS - 1);
        assert!(
            longest.len() <= IFNAME_MAX,
            "lab name {longest:?} is longer than IFNAMSIZ allows"
        );
        names
    }

    /// The bridge in the root namespace.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.tag)
    }

    /// The gateway's namespace, and the root-namespace end of its veth pair.
    pub fn gateway(&self) -> String {
        format!("{}-gw", self.tag)
    }

    /// Host `i`'s namespace, and the root-namespace end of its veth pair.
    pub fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    /// Host `i`'s address (`i` counts from 0; addresses from .1).
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < MAX_HOSTS, "host index {i} out of range");
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], i as u8 + 1)
    }

    /// The gateway's address.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 254)
    }
}

/// The pid that owns a lab name, or `None` if the name is not a lab name. Strict (`pnl`, two
/// base-36 numbers, a role), because the sweep deletes what this names as a dead pid's: a
/// laxer reading once took another suite's live namespace `pnl13462sg-b` for one of pid
/// "13462sg" (base 36) and deleted it under that test.
pub fn owner(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix(PREFIX)?.splitn(3, '-');
    let (pid, counter, role) = (parts.next()?, parts.next()?, parts.next()?);
    let host = role
        .strip_prefix('h')
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    if !(role == "br" || role == "gw" || host) {
        return None;
    }
    u32::from_str_radix(counter, 36).ok()?;
    u32::from_str_radix(pid, 36).ok()
}

/// `A.B` of a lab's `10.A.B.0/24`. Different for every lab of one process (counters below
/// 65536). Two processes may land on one subnet, which is harmless: each lab's addresses live
/// only inside its own namespaces and bridge, so no routing table ever sees both.
fn subnet(pid: u32, counter: u32) -> [u8; 2] {
    let v = (pid.wrapping_mul(97).wrapping_add(counter) & 0xffff) as u16;
    v.to_be_bytes()
}

fn base36(mut n: u32) -> String {
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit(n % 36, 36).expect("digit below 36"));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.iter().rev().collect()
}
