//! An AF_PACKET socket bound to one interface that sees only DHCP client packets and IPv6 router
//! solicitations (a classic BPF
//! filter in the kernel, so a busy guest does not wake us per frame), and sends whole frames out
//! of that interface. On a tap, a frame sent here goes straight to the guest; on a veth, to its
//! peer. The only `unsafe` of the crate lives here: plain libc socket calls on a descriptor this
//! module owns.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// All protocols: a socket bound to one protocol is served after the bridge's rx handler, which
/// has consumed the frame by then; only "all protocol" taps see a bridge port's frames first.
const ETH_P_ALL: u16 = 0x0003;

/// `sll_pkttype` of frames this host sends: our own replies, seen again; skipped.
pub(crate) const PACKET_OUTGOING: u8 = libc::PACKET_OUTGOING;

/// Accept IPv4, UDP, unfragmented, destination port 67, and IPv6 ICMPv6 type 133 (a router
/// solicitation, which carries no extension header); drop everything else in the kernel.
fn dhcp_filter() -> [libc::sock_filter; 16] {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    [
        op(0x28, 0, 0, 12),          // 0  ldh [12]            ethertype
        op(0x15, 0, 7, 0x0800),      // 1  jeq IPv4 else 9
        op(0x30, 0, 0, 23),          // 2  ldb [23]            IP protocol
        op(0x15, 0, 11, 17),         // 3  jeq UDP else drop
        op(0x28, 0, 0, 20),          // 4  ldh [20]            flags + fragment offset
        op(0x45, 9, 0, 0x3fff),      // 5  jset MF|offset -> drop
        op(0xb1, 0, 0, 14),          // 6  ldxb 4*([14]&0xf)   IP header length
        op(0x48, 0, 0, 16),          // 7  ldh [x+16]          UDP destination port
        op(0x15, 5, 6, 67),          // 8  jeq 67 -> accept else drop
        op(0x15, 0, 5, 0x86dd),      // 9  jeq IPv6 (A: ethertype) else drop
        op(0x30, 0, 0, 20),          // 10 ldb [20]            next header
        op(0x15, 0, 3, 58),          // 11 jeq ICMPv6 else drop
        op(0x30, 0, 0, 54),          // 12 ldb [54]            ICMPv6 type
        op(0x15, 0, 1, 133),         // 13 jeq router solicitation else drop
        op(0x06, 0, 0, 0x0004_0000), // 14 accept (whole frame)
        op(0x06, 0, 0, 0),           // 15 drop
    ]
}

pub(crate) struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
}

impl PacketSocket {
    /// Opens the socket on interface `ifindex`. The filter is attached before the bind gives the
    /// socket a protocol, so no unfiltered frame is ever queued.
    pub(crate) fn bind(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut prog = dhcp_filter();
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points to `prog`, both alive for the call; the kernel copies them.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }

        // SAFETY: an all-zero sockaddr_ll is a valid value of this plain C struct.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length says so.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is an open descriptor owned by the AsyncFd from here on, so it stays open
        // and the same for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// Receives one frame; returns its length and `sll_pkttype`.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, u8)> {
        self.fd
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: as above, a zeroed sockaddr_ll is valid.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: `buf` and `sll` are valid for writes of the lengths passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut sll as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, sll.sll_pkttype))
                }
            })
            .await
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub(crate) async fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // SAFETY: `frame` is valid for reads of its length.
                let n =
                    unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
            .await
    }
}
