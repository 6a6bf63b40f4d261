//! IPv6 router advertisements for SLAAC, framed by hand like the DHCP replies: sent out of one
//! port to its guest only (never over the bridge, so each host speaks to its own guests), as
//! an answer to the guest's router solicitation and periodically.
//!
//! What they say: the network's /64 with the on-link and autonomous flags (the guest forms
//! `prefix + EUI-64(MAC)`, the address the control plane recorded and anti-spoofing allows), the
//! network's MTU, and a router lifetime of 0: Panal is not an IPv6 router (no IPv6 gateway or
//! NAT yet), so guests add no default route through it. The source is the link-local address of
//! a MAC derived from the network's VNI, the same on every host.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::frame::checksum;
use crate::mac::MacAddr;

const ETH_HDR: usize = 14;
const IP6_HDR: usize = 40;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ICMPV6: u8 = 58;
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// How long the guest may keep using the prefix without hearing from us again (RFC 4861's
/// defaults for an advertised prefix).
const VALID_LIFETIME: u32 = 86_400;
const PREFERRED_LIFETIME: u32 = 14_400;

/// What one port's guest is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advert {
    pub prefix: Ipv6Net,
    pub mtu: u32,
    /// The advertiser's MAC (`advertiser_mac`).
    pub source: MacAddr,
}

/// The advertiser's MAC on network `vni`: locally administered, `02:50:fe:` + the VNI (the
/// gateway's is `02:50:ff:`, the DHCP responder's `02:50:` + its IPv4 address).
pub(crate) fn advertiser_mac(vni: u32) -> MacAddr {
    let v = vni.to_be_bytes();
    MacAddr([0x02, 0x50, 0xfe, v[1], v[2], v[3]])
}

/// Whether `frame` is a router solicitation sent by `mac` (hop limit 255, as RFC 4861 requires
/// of every neighbour-discovery message).
pub(crate) fn is_solicitation(frame: &[u8], mac: MacAddr) -> bool {
    frame.len() >= ETH_HDR + IP6_HDR + 8
        && frame[6..12] == mac.0
        && u16::from_be_bytes([frame[12], frame[13]]) == ETHERTYPE_IPV6
        && frame[ETH_HDR] >> 4 == 6
        && frame[ETH_HDR + 6] == ICMPV6
        && frame[ETH_HDR + 7] == 255
        && frame[ETH_HDR + IP6_HDR] == ROUTER_SOLICITATION
}

/// The advertisement frame for the guest at `dst_mac` (IPv6 destination all-nodes, Ethernet
/// destination the guest itself).
pub(crate) fn build(advert: &Advert, dst_mac: MacAddr) -> Vec<u8> {
    let src_ip = advert.source.link_local();
    let dst_ip = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut icmp = Vec::with_capacity(64);
    icmp.push(ROUTER_ADVERTISEMENT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled in below
    icmp.push(64); // current hop limit for the guest's packets
    icmp.push(0); // no managed/other configuration: SLAAC only
    icmp.extend_from_slice(&0u16.to_be_bytes()); // router lifetime 0: not a default router
    icmp.extend_from_slice(&0u32.to_be_bytes()); // reachable time: unspecified
    icmp.extend_from_slice(&0u32.to_be_bytes()); // retransmission timer: unspecified
    // Source link-layer address option (type 1, 8 bytes).
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&advert.source.0);
    // MTU option (type 5, 8 bytes).
    icmp.extend_from_slice(&[5, 1, 0, 0]);
    icmp.extend_from_slice(&advert.mtu.to_be_bytes());
    // Prefix information option (type 3, 32 bytes): on-link (L) and autonomous (A).
    icmp.extend_from_slice(&[3, 4, advert.prefix.prefix_len(), 0xc0]);
    icmp.extend_from_slice(&VALID_LIFETIME.to_be_bytes());
    icmp.extend_from_slice(&PREFERRED_LIFETIME.to_be_bytes());
    icmp.extend_from_slice(&[0; 4]);
    icmp.extend_from_slice(&advert.prefix.network().octets());

    let len = icmp.len() as u32;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src_ip.octets());
    pseudo.extend_from_slice(&dst_ip.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
    let sum = checksum(&[&pseudo, &icmp]);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH_HDR + IP6_HDR + icmp.len());
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&advert.source.0);
    f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, no traffic class or flow label
    f.extend_from_slice(&(len as u16).to_be_bytes());
    f.push(ICMPV6);
    f.push(255); // hop limit: receivers drop neighbour discovery that crossed a router
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&dst_ip.octets());
    f.extend_from_slice(&icmp);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> Advert {
        Advert {
            prefix: "fd00:1:2:3::/64".parse().unwrap(),
            mtu: 1450,
            source: advertiser_mac(7),
        }
    }

    #[test]
    fn the_advertisement_carries_prefix_mtu_and_a_valid_checksum() {
        let guest = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let f = build(&advert(), guest);
        assert_eq!(&f[0..6], &guest.0);
        assert_eq!(&f[6..12], &[0x02, 0x50, 0xfe, 0, 0, 7]);
        let ip = &f[ETH_HDR..];
        assert_eq!(ip[6], ICMPV6);
        assert_eq!(ip[7], 255);
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap()),
            "fe80::50:feff:fe00:7".parse::<Ipv6Addr>().unwrap()
        );
        let icmp = &ip[IP6_HDR..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), icmp.len());
        assert_eq!(icmp[0], ROUTER_ADVERTISEMENT);
        assert_eq!(&icmp[6..8], &[0, 0], "router lifetime 0");
        // The checksum over the pseudo-header and the message comes out as zero.
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, ICMPV6]);
        assert_eq!(checksum(&[&pseudo, icmp]), 0);
        // MTU option, then the prefix option with L and A set.
        assert_eq!(&icmp[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xaa]);
        assert_eq!(&icmp[32..36], &[3, 4, 64, 0xc0]);
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[48..64]).unwrap()),
            "fd00:1:2:3::".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn only_the_ports_own_solicitations_are_answered() {
        let guest = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        // A solicitation looks like an advertisement with type 133 and the guest as source.
        let mut rs = build(&advert(), MacAddr::BROADCAST);
        rs[6..12].copy_from_slice(&guest.0);
        rs[ETH_HDR + IP6_HDR] = ROUTER_SOLICITATION;
        assert!(is_solicitation(&rs, guest));
        assert!(!is_solicitation(&rs, MacAddr([0x52, 0x54, 0, 9, 9, 9])));
        let mut forwarded = rs.clone();
        forwarded[ETH_HDR + 7] = 64;
        assert!(!is_solicitation(&forwarded, guest), "hop limit below 255");
        assert!(!is_solicitation(&build(&advert(), guest), guest));
    }
}
