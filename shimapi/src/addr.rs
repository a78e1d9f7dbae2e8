//! Socket addresses as bytes (no `unsafe`), and the HIT/LSI tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
pub const SOCKADDR_IN6_LEN: usize = 28;

/// The kind of identifier a socket address is, for the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// A HIT (ORCHIDv2, 2001:20::/28): the flow carries IPv6.
    Hit,
    /// An LSI (1.0.0.0/8): the flow carries IPv4.
    Lsi,
}

/// Whether the address is a HIT (2001:20::/28, RFC 7343).
pub fn is_hit(a: &Ipv6Addr) -> bool {
    let s = a.segments();
    s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020
}

/// Whether the address is an LSI (1.0.0.0/8).
pub fn is_lsi(a: &Ipv4Addr) -> bool {
    a.octets()[0] == 1
}

/// IPv4-mapped IPv6 addresses as IPv4, everything else unchanged.
pub fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The identifier kind of an address (after [`canonical`]), if any.
pub fn id_kind(a: IpAddr) -> Option<IdKind> {
    match canonical(a) {
        IpAddr::V6(v6) if is_hit(&v6) => Some(IdKind::Hit),
        IpAddr::V4(v4) if is_lsi(&v4) => Some(IdKind::Lsi),
        _ => None,
    }
}

fn family_of(b: &[u8]) -> Option<i32> {
    let f: [u8; 2] = b.get(0..2)?.try_into().ok()?;
    Some(i32::from(u16::from_ne_bytes(f)))
}

/// Parses a `sockaddr_in` / `sockaddr_in6`; `None` for other families,
/// short buffers or garbage.
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    match family_of(b)? {
        libc::AF_INET => {
            if b.len() < SOCKADDR_IN_LEN {
                return None;
            }
            let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            if b.len() < SOCKADDR_IN6_LEN {
                return None;
            }
            let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// Encodes a `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes).
pub fn encode_sockaddr(a: &SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(v4) => {
            let mut b = vec![0u8; SOCKADDR_IN_LEN];
            b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v4.port().to_be_bytes());
            b[4..8].copy_from_slice(&v4.ip().octets());
            b
        }
        SocketAddr::V6(v6) => {
            let mut b = vec![0u8; SOCKADDR_IN6_LEN];
            b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&v6.port().to_be_bytes());
            b[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            b[8..24].copy_from_slice(&v6.ip().octets());
            b[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            b
        }
    }
}

/// Encodes a locator as the `sockaddr` of a `SHIM_LOC_*` control message
/// (port 0).
pub fn locator_sockaddr(a: IpAddr) -> Vec<u8> {
    encode_sockaddr(&SocketAddr::new(a, 0))
}

/// Parses the `sockaddr` payload of a `SHIM_LOC_*_SEND` control message:
/// exactly one `sockaddr_in` or `sockaddr_in6`, optionally followed by
/// padding (at most up to the next `sockaddr_in6` size). IPv4-mapped IPv6
/// is taken as IPv4.
pub fn parse_locator_sockaddr(b: &[u8]) -> Option<IpAddr> {
    let want = match family_of(b)? {
        libc::AF_INET => SOCKADDR_IN_LEN,
        libc::AF_INET6 => SOCKADDR_IN6_LEN,
        _ => return None,
    };
    // Allow alignment padding (cmsg data lengths are often rounded up).
    if b.len() < want || b.len() > want + 8 {
        return None;
    }
    let a = parse_sockaddr(b)?.ip();
    if a.is_unspecified() {
        return None;
    }
    Some(canonical(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_and_lsi_prefixes() {
        assert!(is_hit(&"2001:20::1".parse().unwrap()));
        assert!(is_hit(&"2001:2f:ffff::1".parse().unwrap()));
        assert!(!is_hit(&"2001:30::1".parse().unwrap()));
        assert!(!is_hit(&"2001:10::1".parse().unwrap()));
        assert!(!is_hit(&"2001:db8::1".parse().unwrap()));
        assert!(is_lsi(&"1.0.0.5".parse().unwrap()));
        assert!(!is_lsi(&"10.0.0.5".parse().unwrap()));
        assert_eq!(
            id_kind("::ffff:1.2.3.4".parse().unwrap()),
            Some(IdKind::Lsi)
        );
        assert_eq!(id_kind("::1".parse().unwrap()), None);
        assert_eq!(id_kind("2001:2a::9".parse().unwrap()), Some(IdKind::Hit));
    }

    #[test]
    fn sockaddr_round_trips() {
        for s in [
            "1.0.0.9:4000",
            "[2001:2a::1]:5000",
            "[::ffff:1.0.0.1]:7",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = s.parse().unwrap();
            let b = encode_sockaddr(&a);
            assert_eq!(parse_sockaddr(&b), Some(a));
            for cut in 0..b.len() {
                assert_eq!(parse_sockaddr(&b[..cut]), None);
            }
        }
        assert_eq!(parse_sockaddr(&[0xff; 28]), None);
        assert_eq!(
            parse_locator_sockaddr(&locator_sockaddr("192.0.2.1".parse().unwrap())),
            Some("192.0.2.1".parse().unwrap())
        );
        // Padding up to 8 bytes is accepted, more is not.
        let mut p = locator_sockaddr("2001:db8::1".parse().unwrap());
        p.extend_from_slice(&[0; 4]);
        assert!(parse_locator_sockaddr(&p).is_some());
        p.extend_from_slice(&[0; 8]);
        assert!(parse_locator_sockaddr(&p).is_none());
        assert!(parse_locator_sockaddr(&locator_sockaddr("::".parse().unwrap())).is_none());
    }
}
