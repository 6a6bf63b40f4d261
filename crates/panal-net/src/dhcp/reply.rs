//! What the responder says to one DHCP message (pure): OFFER to DISCOVER, ACK or NAK to
//! REQUEST, ACK to INFORM; nothing to anyone but the port's own MAC, nothing to DECLINE/RELEASE
//! (the address is fixed by the plan, there is no pool to return it to).

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};

use crate::mac::MacAddr;
use crate::plan::DhcpLease;

/// Builds the reply to `req`, if one is due.
pub(crate) fn reply(req: &Message, mac: MacAddr, lease: &DhcpLease) -> Option<Message> {
    if req.opcode() != Opcode::BootRequest || req.htype() != HType::Eth || req.hlen() != 6 {
        return None;
    }
    if req.chaddr().get(..6) != Some(&mac.0[..]) {
        return None;
    }
    let kind = match req.opts().msg_type()? {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            // A client that chose another server (option 54) is not ours to answer.
            let chosen = match req.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(id)) => Some(*id),
                _ => None,
            };
            if chosen.is_some_and(|id| id != lease.server_id) {
                return None;
            }
            // SELECTING/INIT-REBOOT name the address in option 50; RENEWING/REBINDING in ciaddr.
            let wanted = match req.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => req.ciaddr(),
            };
            if wanted == lease.address {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return None,
    };
    let inform = req.opts().msg_type() == Some(MessageType::Inform);
    let yiaddr = if kind == MessageType::Nak || inform {
        Ipv4Addr::UNSPECIFIED
    } else {
        lease.address
    };
    let mut msg = Message::new_with_id(
        req.xid(),
        if kind == MessageType::Nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            req.ciaddr()
        },
        yiaddr,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        &mac.0,
    );
    msg.set_opcode(Opcode::BootReply).set_flags(req.flags());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(lease.server_id));
    if kind == MessageType::Nak {
        return Some(msg);
    }
    if !inform {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
        // T1 and T2 at the RFC 2131 defaults (50% and 87.5%), stated so clients do not guess.
        opts.insert(DhcpOption::Renewal(lease.lease_secs / 2));
        opts.insert(DhcpOption::Rebinding(
            (u64::from(lease.lease_secs) * 7 / 8) as u32,
        ));
    }
    opts.insert(DhcpOption::SubnetMask(prefix_mask(lease.prefix_len)));
    if let Some(router) = lease.router {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    opts.insert(DhcpOption::InterfaceMtu(
        u16::try_from(lease.mtu).unwrap_or(u16::MAX),
    ));
    if let Some(h) = &lease.hostname {
        opts.insert(DhcpOption::Hostname(h.clone()));
    }
    Some(msg)
}

/// Whether the reply must go to the broadcast addresses (RFC 2131 4.1): NAKs always, and any
/// reply to a client that has no address yet and asked for broadcast.
pub(crate) fn broadcast_reply(req: &Message, reply: &Message) -> bool {
    reply.opts().msg_type() == Some(MessageType::Nak)
        || (req.ciaddr().is_unspecified() && req.flags().broadcast())
}

pub(crate) fn prefix_mask(len: u8) -> Ipv4Addr {
    let len = u32::from(len.min(32));
    Ipv4Addr::from(if len == 0 { 0 } else { u32::MAX << (32 - len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> DhcpLease {
        DhcpLease {
            address: Ipv4Addr::new(10, 1, 0, 5),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 1, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 1, 0, 53)],
            mtu: 1450,
            hostname: Some("vm-5".into()),
            server_id: Ipv4Addr::new(10, 1, 0, 2),
            lease_secs: 3600,
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 1, 2, 3]);

    fn client(kind: MessageType, mac: MacAddr) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(0x1234, z, z, z, z, &mac.0);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    #[test]
    fn offers_with_every_option() {
        let offer = reply(&client(MessageType::Discover, MAC), MAC, &lease()).unwrap();
        assert_eq!(offer.opcode(), Opcode::BootReply);
        assert_eq!(offer.xid(), 0x1234);
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 1, 0, 5));
        let o = offer.opts();
        assert_eq!(o.msg_type(), Some(MessageType::Offer));
        assert_eq!(
            o.get(OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
        );
        assert_eq!(
            o.get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![[10, 1, 0, 1].into()]))
        );
        assert_eq!(
            o.get(OptionCode::DomainNameServer),
            Some(&DhcpOption::DomainNameServer(vec![[10, 1, 0, 53].into()]))
        );
        assert_eq!(
            o.get(OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            o.get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm-5".into()))
        );
        assert_eq!(
            o.get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(
            o.get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier([10, 1, 0, 2].into()))
        );
    }

    #[test]
    fn acks_the_right_address_and_naks_a_wrong_one() {
        let mut req = client(MessageType::Request, MAC);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 1, 0, 5].into()));
        let ack = reply(&req, MAC, &lease()).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert!(!broadcast_reply(&req, &ack));

        let mut wrong = client(MessageType::Request, MAC);
        wrong
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress([10, 1, 0, 6].into()));
        let nak = reply(&wrong, MAC, &lease()).unwrap();
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(!nak.opts().contains(OptionCode::AddressLeaseTime));
        assert!(broadcast_reply(&wrong, &nak));

        // Renewing: the address is in ciaddr.
        let mut renew = client(MessageType::Request, MAC);
        renew.set_ciaddr(Ipv4Addr::new(10, 1, 0, 5));
        assert_eq!(
            reply(&renew, MAC, &lease()).unwrap().opts().msg_type(),
            Some(MessageType::Ack)
        );

        // Another server was chosen: silence.
        let mut other = req.clone();
        other
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier([10, 9, 9, 9].into()));
        assert!(reply(&other, MAC, &lease()).is_none());
    }

    #[test]
    fn ignores_other_macs_and_other_messages() {
        let stranger = MacAddr([0x52, 0x54, 0, 9, 9, 9]);
        assert!(reply(&client(MessageType::Discover, stranger), MAC, &lease()).is_none());
        assert!(reply(&client(MessageType::Release, MAC), MAC, &lease()).is_none());
        let mut server_msg = client(MessageType::Offer, MAC);
        server_msg.set_opcode(Opcode::BootReply);
        assert!(reply(&server_msg, MAC, &lease()).is_none());
    }

    #[test]
    fn broadcast_flag_is_honoured() {
        let mut d = client(MessageType::Discover, MAC);
        d.set_flags(dhcproto::v4::Flags::default().set_broadcast());
        let offer = reply(&d, MAC, &lease()).unwrap();
        assert!(broadcast_reply(&d, &offer));
        assert!(offer.flags().broadcast());
        assert_eq!(prefix_mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(prefix_mask(32), Ipv4Addr::BROADCAST);
        assert_eq!(prefix_mask(20), Ipv4Addr::new(255, 255, 240, 0));
    }
}
