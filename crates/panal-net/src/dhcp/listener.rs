//! One port's DHCP listener and router advertiser: a tokio task that owns the port's packet
//! socket, reads client frames (DHCP requests, router solicitations), and writes the replies
//! back out of the same interface; it also advertises the IPv6 prefix unasked every minute.
//! Its MAC, lease and prefix can change under it (a `watch` channel, so no frame is missed by a
//! restart); it ends when its `Listener` handle is dropped.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::{Decodable, Decoder, Encodable, v4::Message};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::frame::{self, responder_mac};
use super::ra::{self, Advert};
use super::reply;
use super::socket::{PACKET_OUTGOING, PacketSocket};
use crate::mac::MacAddr;
use crate::plan::DhcpLease;

/// BOOTP's minimum message size; some clients drop shorter replies.
const BOOTP_MIN_LEN: usize = 300;

/// How often the prefix is advertised unasked (the guest asks at boot; this covers a guest
/// that asked before the listener ran, and refreshes the prefix's lifetimes).
const ADVERT_EVERY: Duration = Duration::from_secs(60);

/// What one port's guest is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortService {
    /// The guest's MAC: frames from any other are ignored.
    pub mac: MacAddr,
    /// Its DHCP lease (IPv4), if it gets one.
    pub lease: Option<DhcpLease>,
    /// Its network's IPv6 prefix, if the network has one.
    pub advert: Option<Advert>,
}

/// The running listener of one port. Dropping it stops the task and closes the socket.
pub(crate) struct Listener {
    /// The interface index the socket is bound to: a port recreated under the same name gets a
    /// new index, and then a new listener.
    pub ifindex: u32,
    config: watch::Sender<PortService>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Points the listener at a new MAC, lease or prefix; returns whether anything changed.
    pub(crate) fn update(&self, service: &PortService) -> bool {
        self.config.send_if_modified(|cur| {
            if cur == service {
                false
            } else {
                *cur = service.clone();
                true
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Opens the socket now (in the calling thread's network namespace) and starts the task.
pub(crate) fn spawn(ifname: &str, ifindex: u32, service: PortService) -> io::Result<Listener> {
    let sock = PacketSocket::bind(ifindex)?;
    let (tx, rx) = watch::channel(service);
    let name = ifname.to_string();
    let task = tokio::spawn(async move { serve(name, sock, rx).await });
    Ok(Listener {
        ifindex,
        config: tx,
        task,
    })
}

async fn serve(ifname: String, sock: PacketSocket, mut config: watch::Receiver<PortService>) {
    let mut buf = vec![0u8; 2048];
    let mut advertise = tokio::time::interval(ADVERT_EVERY);
    loop {
        let received = tokio::select! {
            r = sock.recv(&mut buf) => r,
            _ = advertise.tick() => {
                let service = config.borrow().clone();
                advertise_to(&ifname, &sock, &service).await;
                continue;
            }
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new prefix or MAC: tell the guest now, not in a minute.
                advertise.reset_immediately();
                continue;
            }
        };
        let (n, pkttype) = match received {
            Ok(r) => r,
            Err(e) => {
                // ENETDOWN and the like while the interface is reconfigured: wait, do not spin.
                tracing::debug!(%ifname, error = %e, "DHCP socket receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if pkttype == PACKET_OUTGOING {
            continue;
        }
        let service = config.borrow().clone();
        if ra::is_solicitation(&buf[..n], service.mac) {
            advertise_to(&ifname, &sock, &service).await;
            continue;
        }
        let Some(lease) = &service.lease else {
            continue;
        };
        let Some(out) = answer(&buf[..n], service.mac, lease) else {
            continue;
        };
        if let Err(e) = sock.send(&out).await {
            tracing::warn!(%ifname, error = %e, "DHCP reply not sent");
        }
    }
}

/// Sends the port's router advertisement, if its network has IPv6.
async fn advertise_to(ifname: &str, sock: &PacketSocket, service: &PortService) {
    let Some(advert) = &service.advert else {
        return;
    };
    if let Err(e) = sock.send(&ra::build(advert, service.mac)).await {
        // A tap whose QEMU has not opened it yet refuses frames; the guest asks once it runs.
        tracing::debug!(%ifname, error = %e, "router advertisement not sent");
    }
}

/// The reply frame to one received frame, if one is due (pure, so it is tested without sockets).
pub(crate) fn answer(frame_in: &[u8], mac: MacAddr, lease: &DhcpLease) -> Option<Vec<u8>> {
    let inbound = frame::parse(frame_in)?;
    if inbound.src_mac != mac {
        return None;
    }
    let req = Message::decode(&mut Decoder::new(inbound.payload)).ok()?;
    let rep = reply::reply(&req, mac, lease)?;
    let (dst_mac, dst_ip) = if reply::broadcast_reply(&req, &rep) {
        (MacAddr::BROADCAST, Ipv4Addr::BROADCAST)
    } else if !req.ciaddr().is_unspecified() {
        (mac, req.ciaddr())
    } else {
        (mac, rep.yiaddr())
    };
    let mut payload = rep.to_vec().ok()?;
    if payload.len() < BOOTP_MIN_LEN {
        payload.resize(BOOTP_MIN_LEN, 0); // pad octets after the end option
    }
    tracing::debug!(%mac, kind = ?rep.opts().msg_type(), "DHCP reply");
    Some(frame::build(
        responder_mac(lease.server_id),
        dst_mac,
        lease.server_id,
        dst_ip,
        &payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, MessageType};

    #[test]
    fn answers_a_discover_frame_with_an_offer_frame() {
        let mac = MacAddr([0x52, 0x54, 0, 1, 2, 3]);
        let lease = DhcpLease {
            address: Ipv4Addr::new(10, 1, 0, 5),
            prefix_len: 24,
            router: None,
            dns: vec![],
            mtu: 1500,
            hostname: None,
            server_id: Ipv4Addr::new(10, 1, 0, 2),
            lease_secs: 600,
        };
        let z = Ipv4Addr::UNSPECIFIED;
        let mut d = Message::new_with_id(7, z, z, z, z, &mac.0);
        d.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        // The client's frame: built like a server frame, then turned into 0.0.0.0:68 -> :67.
        let mut f = frame::build(
            mac,
            MacAddr::BROADCAST,
            z,
            Ipv4Addr::BROADCAST,
            &d.to_vec().unwrap(),
        );
        f[34..36].copy_from_slice(&68u16.to_be_bytes());
        f[36..38].copy_from_slice(&67u16.to_be_bytes());

        let out = answer(&f, mac, &lease).expect("an offer");
        assert_eq!(
            &out[0..6],
            &mac.0,
            "unicast to the client's MAC (no broadcast flag)"
        );
        assert_eq!(&out[30..34], &[10, 1, 0, 5], "to the offered address");
        let payload = &out[42..];
        assert!(payload.len() >= BOOTP_MIN_LEN);
        let offer = Message::decode(&mut Decoder::new(payload)).unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.xid(), 7);

        // The same frame from another MAC gets nothing.
        let mut spoofed = f.clone();
        spoofed[6..12].copy_from_slice(&[0x52, 0x54, 0, 9, 9, 9]);
        assert!(answer(&spoofed, mac, &lease).is_none());
    }
}
