//! The server-side request forgery guard for image URLs: which destinations the control plane
//! may fetch from.
//!
//! A URL is judged by where it really goes: its host is resolved first and every address it
//! resolves to is checked; the fetch then connects to that very address (see `fetch.rs`), so a
//! name cannot resolve to a harmless address for the check and to an internal one for the
//! connection (DNS rebinding). Refused unless an administrator's allow-list CIDR covers them:
//! loopback, link-local (169.254.0.0/16 with the cloud metadata service, fe80::/10), private
//! (10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10), shared address space 100.64/10,
//! unspecified, multicast, reserved and broadcast, the same ranges written as IPv4-mapped,
//! IPv4-compatible, NAT64 or 6to4 IPv6 addresses, and the addresses of this machine. The
//! control plane's own listening endpoints are refused even when allowed: nothing legitimate
//! imports an image from the API itself.

use panal_types::{ApiError, ErrorCode};
use reqwest::Url;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// An address range, `ADDR/PREFIX` (a bare address is a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in the range. An IPv4 range also covers the IPv4-mapped form.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)) << 96,
                u128::from(u32::from(ip)) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(prefix));
    a & mask == b & mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address range (like 192.168.10.0/24)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why an address is special (never fetched from unless allowed), or `None` for an ordinary
/// public address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            for v4 in embedded_v4(v6) {
                if let Some(why) = special_v4(v4) {
                    return Some(why);
                }
            }
            special_v6(v6)
        }
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "an unspecified (\"this network\") address",
        [127, ..] => "a loopback address",
        [169, 254, ..] => "a link-local address (the cloud metadata service lives there)",
        [10, ..] => "a private address",
        [172, b, ..] if (16..32).contains(&b) => "a private address",
        [192, 168, ..] => "a private address",
        [100, b, ..] if (64..128).contains(&b) => "a shared (carrier-grade NAT) address",
        [192, 0, 0, _] => "an IETF protocol address",
        [198, b, ..] if b == 18 || b == 19 => "a benchmarking address",
        [a, ..] if (224..240).contains(&a) => "a multicast address",
        [a, ..] if a >= 240 => "a reserved or broadcast address",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "an unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "a link-local address"
    } else if s[0] & 0xffc0 == 0xfec0 || s[0] & 0xfe00 == 0xfc00 {
        "a private (unique local) address"
    } else if s[0] & 0xff00 == 0xff00 {
        "a multicast address"
    } else {
        return None;
    })
}

/// IPv4 addresses an IPv6 address carries and that traffic to it may reach: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`).
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let mut out = Vec::new();
    if let Some(v4) = ip.to_ipv4_mapped() {
        out.push(v4);
    }
    // `::` and `::1` are judged as IPv6; anything else in ::/96 is IPv4-compatible.
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        out.push(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(low);
    }
    if s[0] == 0x2002 {
        out.push(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    out
}

/// Which destinations image URLs may have.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// Ranges an administrator allowed although they are special (`--image-fetch-allow`).
    pub allow: Vec<Cidr>,
    /// The control plane's own listening endpoints (API, agent endpoint): always refused.
    pub own_endpoints: Vec<SocketAddr>,
    /// The addresses of this machine's interfaces: refused unless allowed.
    pub local_ips: Vec<IpAddr>,
}

impl UrlPolicy {
    /// A policy with these allowed ranges and own endpoints, and this machine's interface
    /// addresses read now.
    pub fn new(allow: Vec<Cidr>, own_endpoints: Vec<SocketAddr>) -> Self {
        Self {
            allow,
            own_endpoints,
            local_ips: local_addresses(),
        }
    }

    /// Whether the control plane may connect to `addr`; the error says why not.
    pub fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let ip = canonical(addr.ip());
        let is_local = |ip: IpAddr| {
            ip.is_loopback()
                || ip.is_unspecified()
                || self.local_ips.iter().any(|l| canonical(*l) == ip)
        };
        for own in &self.own_endpoints {
            let own_ip = canonical(own.ip());
            if own.port() == addr.port()
                && (own_ip == ip || (own_ip.is_unspecified() && is_local(ip)))
            {
                return Err(format!("{addr} is the control plane's own endpoint"));
            }
        }
        if self
            .allow
            .iter()
            .any(|c| c.contains(addr.ip()) || c.contains(ip))
        {
            return Ok(());
        }
        if let Some(why) = special_range(addr.ip()) {
            return Err(format!("{} is {why}", addr.ip()));
        }
        if is_local(ip) {
            return Err(format!(
                "{} is an address of the control plane's machine",
                addr.ip()
            ));
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// This machine's interface addresses (empty if they cannot be read).
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        if let Some(v4) = sa.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A URL whose destination passed the guard, with the address the fetch must connect to.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL.
    pub url: Url,
    /// The host name to pin to `addr` (`None` when the URL holds an address).
    pub domain: Option<String>,
    /// The checked address.
    pub addr: SocketAddr,
}

/// Parses an image URL: `http` or `https`, a host, no credentials.
pub fn parse_url(field: &str, s: &str) -> Result<Url, ApiError> {
    if s.len() > 2048 {
        return Err(ApiError::invalid(field, "a URL of at most 2048 characters"));
    }
    let url = Url::parse(s).map_err(|e| ApiError::invalid(field, format!("not a URL: {e}")))?;
    check_url_shape(field, &url)?;
    Ok(url)
}

fn check_url_shape(field: &str, url: &Url) -> Result<(), ApiError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            field,
            format!("scheme {:?} is not supported (http or https)", url.scheme()),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::invalid(
            field,
            "credentials in the URL are not supported",
        ));
    }
    if url.host().is_none() {
        return Err(ApiError::invalid(field, "the URL has no host"));
    }
    Ok(())
}

/// The URL without path and query, for messages (signed URLs carry secrets in their query).
pub fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Resolves the URL's host and checks every address it resolves to; refuses with
/// `url_refused` naming `field` if any is not allowed.
pub async fn resolve(policy: &UrlPolicy, field: &str, url: &Url) -> Result<Target, ApiError> {
    check_url_shape(field, url)?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ApiError::invalid(field, "the URL has no port"))?;
    let host = url
        .host_str()
        .ok_or_else(|| ApiError::invalid(field, "the URL has no host"))?;
    // The URL parser has already normalised odd address spellings (`2130706433`, `0x7f.1`).
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse::<IpAddr>();
    let (domain, addrs) = match literal {
        Ok(ip) => (None, vec![SocketAddr::new(ip, port)]),
        Err(_) => {
            let d = host.to_owned();
            let found = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::lookup_host((d.as_str(), port)),
            )
            .await
            .map_err(|_| {
                ApiError::new(ErrorCode::Unavailable, format!("resolving {d} timed out"))
                    .with_field(field)
            })?
            .map_err(|_| ApiError::invalid(field, format!("{d} does not resolve")))?;
            let mut addrs: Vec<SocketAddr> = found.collect();
            addrs.dedup();
            (Some(d), addrs)
        }
    };
    let Some(first) = addrs.first().copied() else {
        return Err(ApiError::invalid(field, "the URL's host has no address"));
    };
    for a in &addrs {
        if let Err(why) = policy.check(*a) {
            let via = match &domain {
                Some(d) => format!("{d} resolves to {}: ", a.ip()),
                None => String::new(),
            };
            return Err(ApiError::new(
                ErrorCode::UrlRefused,
                format!(
                    "{} refused: {via}{why}; an administrator can allow a range with --image-fetch-allow",
                    origin(url)
                ),
            )
            .with_field(field));
        }
    }
    Ok(Target {
        url: url.clone(),
        domain,
        addr: first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn bare() -> UrlPolicy {
        UrlPolicy::default()
    }

    #[test]
    fn special_ranges_are_refused() {
        let p = bare();
        for a in [
            "127.0.0.1:80",
            "127.9.9.9:80",
            "[::1]:80",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "10.0.0.1:80",
            "172.16.0.1:80",
            "172.31.255.255:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "100.127.255.255:80",
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[fc00::1]:80",
            "[fd12:3456::1]:80",
            "[ff02::1]:80",
            // IPv4 in IPv6 clothing.
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::ffff:10.0.0.1]:80",
            "[::127.0.0.1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:7f00:1::]:80",
        ] {
            assert!(p.check(sa(a)).is_err(), "{a} was let through");
        }
        for a in [
            "93.184.216.34:443",
            "172.32.0.1:80",
            "100.128.0.1:80",
            "[2606:4700::1111]:443",
            "[::ffff:93.184.216.34]:80",
        ] {
            assert!(p.check(sa(a)).is_ok(), "{a} was refused");
        }
    }

    #[test]
    fn the_allow_list_opens_a_range_but_never_the_control_plane() {
        let p = UrlPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            own_endpoints: vec![sa("127.0.0.1:7180"), sa("0.0.0.0:7181")],
            local_ips: vec!["192.0.2.7".parse().unwrap()],
        };
        assert!(p.check(sa("127.0.0.1:8080")).is_ok());
        assert!(p.check(sa("[::ffff:127.0.0.1]:8080")).is_ok());
        assert!(p.check(sa("[fd00::5]:80")).is_ok());
        assert!(p.check(sa("10.0.0.1:80")).is_err());
        assert!(p.check(sa("127.0.0.1:7180")).unwrap_err().contains("own"));
        assert!(p.check(sa("[::ffff:127.0.0.1]:7180")).is_err());
        // The agent endpoint listens on every address: any local address with its port.
        assert!(p.check(sa("127.0.0.2:7181")).is_err());
        assert!(p.check(sa("192.0.2.7:7181")).is_err());
        assert!(p.check(sa("192.0.2.7:80")).unwrap_err().contains("machine"));
        assert!(p.check(sa("198.51.100.1:7181")).is_ok());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert_eq!(c.to_string(), "10.1.0.0/16");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_must_be_plain_http() {
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/x",
            "http://user:pw@example.com/x",
            "gopher://x",
            "not a url",
        ] {
            let e = parse_url("disk_url", bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("disk_url"), "{bad}");
        }
        assert!(parse_url("disk_url", "https://example.com/a.qcow2?sig=1").is_ok());
    }

    #[tokio::test]
    async fn names_are_resolved_before_judging() {
        let p = bare();
        for u in [
            "http://127.0.0.1/x",
            "http://[::1]/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/x",
            "http://localhost:8080/x",
            "http://2130706433/x",
            "http://0x7f.1/x",
        ] {
            let url = parse_url("disk_url", u).unwrap();
            let e = resolve(&p, "disk_url", &url).await.unwrap_err();
            assert_eq!(e.code, ErrorCode::UrlRefused, "{u}: {e}");
            assert_eq!(e.field.as_deref(), Some("disk_url"));
        }
        let url = parse_url("disk_url", "http://localhost:8080/x").unwrap();
        let allowed = UrlPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
            ..bare()
        };
        let t = resolve(&allowed, "disk_url", &url).await.unwrap();
        assert_eq!(t.domain.as_deref(), Some("localhost"));
        assert!(t.addr.ip().is_loopback());
        assert_eq!(t.addr.port(), 8080);
    }
}
