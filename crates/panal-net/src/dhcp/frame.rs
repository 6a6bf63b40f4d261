//! Ethernet/IPv4/UDP framing of DHCP messages, by hand: the responder reads whole frames from an
//! AF_PACKET socket and writes whole frames back (the guest has no address yet, so no IP stack
//! of ours is involved).

use std::net::Ipv4Addr;

use crate::mac::MacAddr;

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const UDP_HDR: usize = 8;
pub(crate) const ETHERTYPE_IPV4: u16 = 0x0800;
pub(crate) const DHCP_SERVER_PORT: u16 = 67;
pub(crate) const DHCP_CLIENT_PORT: u16 = 68;

/// A DHCP client packet as it arrived on the port.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inbound<'a> {
    pub src_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub payload: &'a [u8],
}

/// Accepts only unfragmented IPv4/UDP from port 68 to port 67 with consistent lengths.
pub(crate) fn parse(frame: &[u8]) -> Option<Inbound<'_>> {
    let eth = frame.get(..ETH_HDR)?;
    if u16::from_be_bytes([eth[12], eth[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[ETH_HDR..];
    let (&vihl, rest) = ip.split_first()?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < IP_HDR || ip.len() < ihl + UDP_HDR || rest.len() < 19 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    // MF set or a non-zero offset: a fragment, which a DHCP client never sends.
    if ip[9] != 17 || frag & 0x3fff != 0 || total < ihl + UDP_HDR || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if sport != DHCP_CLIENT_PORT || dport != DHCP_SERVER_PORT || ulen < UDP_HDR || ulen > udp.len()
    {
        return None;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&eth[6..12]);
    Some(Inbound {
        src_mac: MacAddr(src_mac),
        src_ip: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        payload: &udp[UDP_HDR..ulen],
    })
}

/// A UDP 67 -> 68 frame carrying `payload`, with IPv4 and UDP checksums.
pub(crate) fn build(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HDR + payload.len();
    let total = IP_HDR + udp_len;
    let mut f = Vec::with_capacity(ETH_HDR + total);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let mut ip = [0u8; IP_HDR];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[6] = 0x40; // DF: never fragmented, so no id is needed
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&src_ip.octets());
    ip[16..20].copy_from_slice(&dst_ip.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);

    let mut udp = [0u8; UDP_HDR];
    udp[0..2].copy_from_slice(&DHCP_SERVER_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&DHCP_CLIENT_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src_ip.octets());
    pseudo[4..8].copy_from_slice(&dst_ip.octets());
    pseudo[9] = 17;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut usum = checksum(&[&pseudo, &udp, payload]);
    if usum == 0 {
        usum = 0xffff; // 0 would mean "no checksum"
    }
    udp[6..8].copy_from_slice(&usum.to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub(crate) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The responder's source MAC: locally administered, derived from the server address so that
/// it is the same on every host and across restarts.
pub(crate) fn responder_mac(server_id: Ipv4Addr) -> MacAddr {
    let o = server_id.octets();
    MacAddr([0x02, 0x50, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2, the checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
        // Split parts give the same result as one slice, even at odd boundaries.
        assert_eq!(checksum(&[&data[..3], &data[3..]]), !0xddf2);
    }

    #[test]
    fn built_frames_verify_and_parse_back_when_turned_around() {
        let payload = b"hello dhcp";
        let f = build(
            responder_mac(Ipv4Addr::new(10, 0, 0, 1)),
            MacAddr::BROADCAST,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            payload,
        );
        assert_eq!(f.len(), 14 + 20 + 8 + payload.len());
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[0x02, 0x50, 10, 0, 0, 1]);
        // A correct header checksums to zero.
        assert_eq!(checksum(&[&f[14..34]]), 0);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&f[38..40]);
        assert_eq!(checksum(&[&pseudo, &f[34..]]), 0);
        // The server frame is not a client frame...
        assert_eq!(parse(&f), None);
        // ...but with the ports swapped (as a client would send) it parses.
        let mut c = f.clone();
        c[34..36].copy_from_slice(&68u16.to_be_bytes());
        c[36..38].copy_from_slice(&67u16.to_be_bytes());
        let got = parse(&c).unwrap();
        assert_eq!(got.payload, payload);
        assert_eq!(got.src_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(got.src_mac, responder_mac(Ipv4Addr::new(10, 0, 0, 1)));
        // Fragments, short frames and other protocols are refused.
        let mut frag = c.clone();
        frag[20] = 0x20; // MF
        assert_eq!(parse(&frag), None);
        assert_eq!(parse(&c[..40]), None);
        let mut tcp = c.clone();
        tcp[23] = 6;
        assert_eq!(parse(&tcp), None);
    }
}
