//! Device names derived from the prefix: `{prefix}b{vni}` bridges, `{prefix}x{vni}` VXLAN devices,
//! `{prefix}t{8 hex}` taps. The tap name must not change between releases (a running QEMU holds
//! the tap), so it uses FNV-1a, a hash fixed by its definition, not Rust's `DefaultHasher`.

/// Longest interface name Linux accepts (IFNAMSIZ 16 with the terminating NUL).
pub(crate) const IFNAMSIZ_MAX: usize = 15;

/// The tap of one guest NIC: `prefix` + "t" + 8 hex digits of a hash of `nic_key`.
pub fn tap_name(prefix: &str, nic_key: &str) -> String {
    format!("{prefix}t{:08x}", fnv1a32(nic_key.as_bytes()))
}

/// The bridge of network `vni`.
pub fn bridge_name(prefix: &str, vni: u32) -> String {
    format!("{prefix}b{vni}")
}

/// The VXLAN device of network `vni`.
pub fn vxlan_name(prefix: &str, vni: u32) -> String {
    format!("{prefix}x{vni}")
}

/// What a device name with our prefix is, if it has one of our shapes. Only such names are ever
/// deleted by name alone, so that a shorter prefix ("pn") never claims another's ("pnx...") taps
/// by accident beyond these exact shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OurName {
    Bridge(u32),
    Vxlan(u32),
    Tap,
}

pub(crate) fn classify(prefix: &str, name: &str) -> Option<OurName> {
    let rest = name.strip_prefix(prefix)?;
    let (kind, tail) = rest.split_at_checked(1)?;
    let vni = || {
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) && !tail.starts_with('0'))
            .then(|| tail.parse::<u32>().ok())
            .flatten()
    };
    match kind {
        "b" => vni().map(OurName::Bridge),
        "x" => vni().map(OurName::Vxlan),
        "t" if tail.len() == 8 && tail.bytes().all(|b| b.is_ascii_hexdigit()) => Some(OurName::Tap),
        _ => None,
    }
}

/// 32-bit FNV-1a.
pub(crate) fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// 64-bit FNV-1a (fingerprints of rendered rulesets).
pub(crate) fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_stable_short_and_distinct() {
        // Fixed values: a change here renames every tap of running guests.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        let t = tap_name("pn", "vm-1/nic-0");
        assert_eq!(t, format!("pnt{:08x}", fnv1a32(b"vm-1/nic-0")));
        assert!(t.len() <= IFNAMSIZ_MAX);
        assert_eq!(tap_name("pn", "vm-1/nic-0"), t);
        assert_ne!(tap_name("pn", "vm-1/nic-1"), t);
        assert!(tap_name("abcdef", "x").len() <= IFNAMSIZ_MAX);
    }

    #[test]
    fn classifies_only_our_shapes() {
        assert_eq!(classify("pn", "pnb42"), Some(OurName::Bridge(42)));
        assert_eq!(
            classify("pn", "pnx16777215"),
            Some(OurName::Vxlan(16_777_215))
        );
        assert_eq!(classify("pn", &tap_name("pn", "k")), Some(OurName::Tap));
        for other in [
            "pnb", "pnb04", "pnbx", "eth0", "pnt123", "pnq1", "pn", "pnxb1",
        ] {
            assert_eq!(classify("pn", other), None, "{other}");
        }
        assert_eq!(bridge_name("pn", 7), "pnb7");
        assert_eq!(vxlan_name("pn", 7), "pnx7");
    }
}
