//! The lab's addressing plan.
//!
//! * **IPv6**: link `k` (0-based, in creation order) gets the prefix
//!   `2001:db8:<net>:<k>::/64`, where `<net>` is a 16-bit number derived from the process id
//!   and a per-process lab counter ([`crate::Lab::v6_net`]). Host `h` (1-based, in creation
//!   order, [`crate::Host::id`]) gets the interface identifier `::<h>` on **every** link, so a
//!   host's addresses on different links differ only in the prefix (preservetcp relies on it).
//! * **IPv4**: link `k` gets the `k`-th /28 carved out of the three documentation /24s, in the
//!   order 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (16 subnets each, so at most
//!   [`MAX_LINKS`] = 48 links); host `h` gets `<subnet> + h`, so the last nibble of a host's
//!   IPv4 address is its id on every link (hence at most [`MAX_HOSTS`] = 14 hosts).
//!
//! Only documentation ranges are used and no default route is installed, so nothing can leak
//! out of the lab. Different labs (in parallel tests) reuse the same IPv4 subnets and possibly
//! the same IPv6 `<net>`: that is harmless because every lab lives in its own network
//! namespaces, which share nothing; only the namespace *names* must be unique, and they are.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Most hosts a lab can hold (the IPv4 host id must fit in a /28).
pub const MAX_HOSTS: usize = 14;
/// Most links a lab can hold (three /24s cut into /28s).
pub const MAX_LINKS: usize = 48;
/// Prefix length of every link's IPv6 prefix.
pub const V6_PREFIX_LEN: u8 = 64;
/// Prefix length of every link's IPv4 subnet.
pub const V4_PREFIX_LEN: u8 = 28;

const V4_BLOCKS: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];

/// The IPv6 prefix (network address) of link `k` in lab network `net`.
pub fn link_v6_prefix(net: u16, k: usize) -> Ipv6Addr {
    // k < MAX_LINKS, so it fits in 16 bits.
    let k = u16::try_from(k).unwrap_or(u16::MAX);
    Ipv6Addr::new(0x2001, 0x0db8, net, k, 0, 0, 0, 0)
}

/// The IPv6 address of host `h` on link `k`.
pub fn host_v6(net: u16, k: usize, h: u8) -> Ipv6Addr {
    let mut seg = link_v6_prefix(net, k).segments();
    seg[7] = u16::from(h);
    Ipv6Addr::from(seg)
}

/// The IPv4 subnet (network address) of link `k`, or `None` when `k >= MAX_LINKS`.
pub fn link_v4_subnet(k: usize) -> Option<Ipv4Addr> {
    let block = V4_BLOCKS.get(k / 16)?;
    let last = u8::try_from((k % 16) * 16).ok()?;
    Some(Ipv4Addr::new(block[0], block[1], block[2], last))
}

/// The IPv4 address of host `h` (1..=14) on link `k`.
pub fn host_v4(k: usize, h: u8) -> Option<Ipv4Addr> {
    if h == 0 || usize::from(h) > MAX_HOSTS {
        return None;
    }
    let o = link_v4_subnet(k)?.octets();
    Some(Ipv4Addr::new(o[0], o[1], o[2], o[3] + h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_shares_interface_id_across_links() {
        let a0 = host_v6(7, 0, 3);
        let a1 = host_v6(7, 1, 3);
        assert_eq!(a0, "2001:db8:7:0::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a1, "2001:db8:7:1::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(a0.segments()[4..], a1.segments()[4..]);
    }

    #[test]
    fn v4_subnets_are_disjoint_documentation_ranges() {
        let mut seen = std::collections::HashSet::new();
        for k in 0..MAX_LINKS {
            let s = link_v4_subnet(k).unwrap();
            let o = s.octets();
            assert!(V4_BLOCKS.contains(&[o[0], o[1], o[2]]), "{s}");
            assert_eq!(o[3] % 16, 0);
            assert!(seen.insert(s));
            assert_eq!(host_v4(k, 14).unwrap().octets()[3], o[3] + 14);
        }
        assert_eq!(link_v4_subnet(MAX_LINKS), None);
        assert_eq!(host_v4(0, 15), None);
        assert_eq!(host_v4(0, 0), None);
        assert_eq!(host_v4(17, 2), Some(Ipv4Addr::new(198, 51, 100, 18)));
    }
}
