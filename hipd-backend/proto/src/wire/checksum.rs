//! The HIP header checksum (RFC 7401 §5.1.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::consts::IPPROTO_HIP;

/// Which pseudo-header the checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// UDP encapsulation (RFC 5770/9028): the checksum field is zero.
    Udp,
    /// Raw HIP over IPv6: pseudo-header with source and destination.
    Ipv6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
    /// Raw HIP over IPv4: the UDP-style pseudo-header.
    Ipv4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
}

impl ChecksumMode {
    /// The mode for a pair of IP addresses of one family; `None` when the
    /// families differ.
    pub fn from_addrs(src: IpAddr, dst: IpAddr) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(ChecksumMode::Ipv6 { src, dst }),
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(ChecksumMode::Ipv4 { src, dst }),
            _ => None,
        }
    }
}

/// Adds `data` to a running 32-bit one's-complement accumulator (also used by
/// the ESP code for the inner TCP/UDP checksums).
pub(crate) fn sum_bytes(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc = acc.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so that the accumulator never wraps even for huge input.
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    if let [last] = chunks.remainder() {
        acc = acc.wrapping_add(u32::from(*last) << 8);
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc
}

/// Folds an accumulator from [`sum_bytes`] to 16 bits (not complemented).
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

fn finish(acc: u32) -> u16 {
    !fold(acc)
}

/// Internet checksum of `packet` under the given pseudo-header. The caller
/// must have zeroed the checksum field (bytes 4..6) or be verifying, in which
/// case a correct packet yields 0. Returns 0 for [`ChecksumMode::Udp`].
pub fn checksum(mode: ChecksumMode, packet: &[u8]) -> u16 {
    let len = packet.len();
    let acc = match mode {
        ChecksumMode::Udp => return 0,
        ChecksumMode::Ipv6 { src, dst } => {
            let mut acc = sum_bytes(0, &src.octets());
            acc = sum_bytes(acc, &dst.octets());
            acc = sum_bytes(acc, &(len as u32).to_be_bytes());
            sum_bytes(acc, &[0, 0, 0, IPPROTO_HIP])
        }
        ChecksumMode::Ipv4 { src, dst } => {
            let mut acc = sum_bytes(0, &src.octets());
            acc = sum_bytes(acc, &dst.octets());
            acc = sum_bytes(acc, &[0, IPPROTO_HIP]);
            sum_bytes(acc, &(len as u16).to_be_bytes())
        }
    };
    finish(sum_bytes(acc, packet))
}
