//! Internet checksums (RFC 1071) for TCP over IPv6 and IPv4 and for the IPv4
//! header, with incremental updates (RFC 1624, equation 3) for address
//! rewrites.
//!
//! The functions that take a TCP segment compute the checksum with the
//! segment's own checksum field (bytes 16..18) treated as zero, so they can be
//! called on a segment whatever its current checksum. Segments shorter than
//! a TCP header are summed as they are (the caller validates TCP framing).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Offset of the checksum field in a TCP header.
pub const TCP_CHECKSUM_OFFSET: usize = 16;
/// Offset of the header checksum field in an IPv4 header.
pub const IPV4_CHECKSUM_OFFSET: usize = 10;

/// Adds `data` as big-endian 16-bit words (an odd final byte is padded with
/// zero) to the 32-bit accumulator `acc`, folding carries so it never overflows.
pub fn sum_words(data: &[u8], acc: u32) -> u32 {
    let mut acc = u64::from(acc);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        if let [hi, lo] = c {
            acc += u64::from(u16::from_be_bytes([*hi, *lo]));
        }
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    fold64(acc)
}

fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff_ffff {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    // Fits now.
    u32::try_from(acc).unwrap_or(u32::MAX)
}

/// Folds a 32-bit one's-complement accumulator to 16 bits (end-around carry).
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    u16::try_from(acc).unwrap_or(u16::MAX)
}

/// One's-complement checksum of `data`: `!fold(sum)`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data, 0))
}

fn sum_segment_without_checksum(segment: &[u8], acc: u32) -> u32 {
    let head = segment.get(..TCP_CHECKSUM_OFFSET).unwrap_or(segment);
    let tail = segment.get(TCP_CHECKSUM_OFFSET + 2..).unwrap_or(&[]);
    // TCP_CHECKSUM_OFFSET is even, so the split keeps word alignment.
    sum_words(tail, sum_words(head, acc))
}

/// Sum of the IPv6 pseudo-header (RFC 8200 8.1) for an upper-layer packet.
pub fn pseudo_header_sum_v6(src: Ipv6Addr, dst: Ipv6Addr, upper_len: u32, next_header: u8) -> u32 {
    let mut acc = sum_words(&src.octets(), 0);
    acc = sum_words(&dst.octets(), acc);
    acc = sum_words(&upper_len.to_be_bytes(), acc);
    sum_words(&[0, 0, 0, next_header], acc)
}

/// Sum of the IPv4 pseudo-header (RFC 793) for an upper-layer packet.
pub fn pseudo_header_sum_v4(src: Ipv4Addr, dst: Ipv4Addr, upper_len: u16, protocol: u8) -> u32 {
    let mut acc = sum_words(&src.octets(), 0);
    acc = sum_words(&dst.octets(), acc);
    acc = sum_words(&[0, protocol], acc);
    sum_words(&upper_len.to_be_bytes(), acc)
}

/// Full TCP checksum of `segment` over IPv6, ignoring the segment's current
/// checksum field. The upper-layer length is the segment length (extension
/// headers are not part of the pseudo-header).
pub fn tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> u16 {
    let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
    let acc = pseudo_header_sum_v6(src, dst, len, crate::wire::IPPROTO_TCP);
    !fold(sum_segment_without_checksum(segment, acc))
}

/// Whether the checksum carried in `segment` is valid for IPv6 `src`/`dst`.
pub fn verify_tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &[u8]) -> bool {
    let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
    let acc = pseudo_header_sum_v6(src, dst, len, crate::wire::IPPROTO_TCP);
    segment.len() >= TCP_CHECKSUM_OFFSET + 2 && fold(sum_words(segment, acc)) == 0xffff
}

/// Recomputes and stores the TCP checksum of `segment` for IPv6. Returns
/// false (and changes nothing) if the segment is too short to hold the field.
pub fn set_tcp_checksum_v6(src: Ipv6Addr, dst: Ipv6Addr, segment: &mut [u8]) -> bool {
    let c = tcp_checksum_v6(src, dst, segment);
    store_u16(segment, TCP_CHECKSUM_OFFSET, c)
}

/// Full TCP checksum of `segment` over IPv4, ignoring the current checksum field.
pub fn tcp_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let acc = pseudo_header_sum_v4(src, dst, len, crate::wire::IPPROTO_TCP);
    !fold(sum_segment_without_checksum(segment, acc))
}

/// Whether the checksum carried in `segment` is valid for IPv4 `src`/`dst`.
pub fn verify_tcp_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> bool {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let acc = pseudo_header_sum_v4(src, dst, len, crate::wire::IPPROTO_TCP);
    segment.len() >= TCP_CHECKSUM_OFFSET + 2 && fold(sum_words(segment, acc)) == 0xffff
}

/// Recomputes and stores the TCP checksum of `segment` for IPv4.
pub fn set_tcp_checksum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &mut [u8]) -> bool {
    let c = tcp_checksum_v4(src, dst, segment);
    store_u16(segment, TCP_CHECKSUM_OFFSET, c)
}

/// Checksum of an IPv4 header (its IHL*4 bytes), ignoring its checksum field.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let head = header.get(..IPV4_CHECKSUM_OFFSET).unwrap_or(header);
    let tail = header.get(IPV4_CHECKSUM_OFFSET + 2..).unwrap_or(&[]);
    !fold(sum_words(tail, sum_words(head, 0)))
}

/// Whether an IPv4 header's checksum field is valid.
pub fn verify_ipv4_header_checksum(header: &[u8]) -> bool {
    header.len() >= 20 && fold(sum_words(header, 0)) == 0xffff
}

/// Recomputes and stores the checksum of an IPv4 header.
pub fn set_ipv4_header_checksum(header: &mut [u8]) -> bool {
    let c = ipv4_header_checksum(header);
    store_u16(header, IPV4_CHECKSUM_OFFSET, c)
}

/// RFC 1624 equation 3: the checksum after the covered data changed from
/// `old` to `new` (byte strings of equal, even length, e.g. addresses).
/// `HC' = ~(~HC + ~m + m')`, applied word by word.
///
/// Returns `None` if the lengths differ or are odd.
pub fn incremental_update(checksum: u16, old: &[u8], new: &[u8]) -> Option<u16> {
    if old.len() != new.len() || !old.len().is_multiple_of(2) {
        return None;
    }
    let mut acc = u32::from(!checksum);
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        if let ([o0, o1], [n0, n1]) = (o, n) {
            acc += u32::from(!u16::from_be_bytes([*o0, *o1]));
            acc += u32::from(u16::from_be_bytes([*n0, *n1]));
            acc = (acc & 0xffff) + (acc >> 16);
        }
    }
    Some(!fold(acc))
}

/// Incremental TCP checksum update for an IPv6 address rewrite
/// (`old_src/old_dst` → `new_src/new_dst`).
pub fn update_tcp_checksum_v6(
    checksum: u16,
    old_src: Ipv6Addr,
    old_dst: Ipv6Addr,
    new_src: Ipv6Addr,
    new_dst: Ipv6Addr,
) -> u16 {
    let mut old = [0u8; 32];
    let mut new = [0u8; 32];
    let (os, od) = old.split_at_mut(16);
    os.copy_from_slice(&old_src.octets());
    od.copy_from_slice(&old_dst.octets());
    let (ns, nd) = new.split_at_mut(16);
    ns.copy_from_slice(&new_src.octets());
    nd.copy_from_slice(&new_dst.octets());
    // Equal even lengths: always Some.
    incremental_update(checksum, &old, &new).unwrap_or(checksum)
}

/// Incremental checksum update for an IPv4 address rewrite; use it for both
/// the IPv4 header checksum and the TCP checksum (the pseudo-header holds the
/// same addresses).
pub fn update_checksum_v4(
    checksum: u16,
    old_src: Ipv4Addr,
    old_dst: Ipv4Addr,
    new_src: Ipv4Addr,
    new_dst: Ipv4Addr,
) -> u16 {
    let mut old = [0u8; 8];
    let mut new = [0u8; 8];
    let (os, od) = old.split_at_mut(4);
    os.copy_from_slice(&old_src.octets());
    od.copy_from_slice(&old_dst.octets());
    let (ns, nd) = new.split_at_mut(4);
    ns.copy_from_slice(&new_src.octets());
    nd.copy_from_slice(&new_dst.octets());
    incremental_update(checksum, &old, &new).unwrap_or(checksum)
}

/// Reads the big-endian u16 at `off`.
pub(crate) fn load_u16(buf: &[u8], off: usize) -> Option<u16> {
    match buf.get(off..off.checked_add(2)?) {
        Some([a, b]) => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

/// Stores `v` big-endian at `off`; false if out of bounds.
pub(crate) fn store_u16(buf: &mut [u8], off: usize, v: u16) -> bool {
    match off.checked_add(2).and_then(|end| buf.get_mut(off..end)) {
        Some(dst) => {
            dst.copy_from_slice(&v.to_be_bytes());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn ipv4_header_known_value() {
        // A classic example header with checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        assert!(!verify_ipv4_header_checksum(&h));
        assert!(set_ipv4_header_checksum(&mut h));
        assert!(verify_ipv4_header_checksum(&h));
    }

    fn v6() -> impl Strategy<Value = Ipv6Addr> {
        any::<u128>().prop_map(Ipv6Addr::from)
    }
    fn v4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        #[test]
        fn incremental_v6_matches_full(
            a in v6(), b in v6(), c in v6(), d in v6(),
            seg in proptest::collection::vec(any::<u8>(), 20..200),
        ) {
            let mut seg = seg;
            prop_assert!(set_tcp_checksum_v6(a, b, &mut seg));
            prop_assert!(verify_tcp_checksum_v6(a, b, &seg));
            let old = load_u16(&seg, TCP_CHECKSUM_OFFSET).unwrap();
            let inc = update_tcp_checksum_v6(old, a, b, c, d);
            let full = tcp_checksum_v6(c, d, &seg);
            prop_assert_eq!(inc, full);
            store_u16(&mut seg, TCP_CHECKSUM_OFFSET, inc);
            prop_assert!(verify_tcp_checksum_v6(c, d, &seg));
            // A wrong address pair does not verify (unless the sums collide).
            if fold(sum_words(&[a.octets(), b.octets()].concat(), 0))
                != fold(sum_words(&[c.octets(), d.octets()].concat(), 0))
            {
                prop_assert!(!verify_tcp_checksum_v6(a, b, &seg));
            }
        }

        #[test]
        fn incremental_v4_matches_full(
            a in v4(), b in v4(), c in v4(), d in v4(),
            seg in proptest::collection::vec(any::<u8>(), 20..200),
        ) {
            let mut seg = seg;
            prop_assert!(set_tcp_checksum_v4(a, b, &mut seg));
            prop_assert!(verify_tcp_checksum_v4(a, b, &seg));
            let old = load_u16(&seg, TCP_CHECKSUM_OFFSET).unwrap();
            let inc = update_checksum_v4(old, a, b, c, d);
            prop_assert_eq!(inc, tcp_checksum_v4(c, d, &seg));
        }

        #[test]
        fn incremental_v4_header(
            hdr in proptest::collection::vec(any::<u8>(), 20..=20),
            c in v4(), d in v4(),
        ) {
            let mut h = hdr;
            set_ipv4_header_checksum(&mut h);
            let a = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let b = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            let old = load_u16(&h, IPV4_CHECKSUM_OFFSET).unwrap();
            h[12..16].copy_from_slice(&c.octets());
            h[16..20].copy_from_slice(&d.octets());
            let inc = update_checksum_v4(old, a, b, c, d);
            prop_assert_eq!(inc, ipv4_header_checksum(&h));
        }

        #[test]
        fn sums_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (l6, l4) = (Ipv6Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
            let mut d = data.clone();
            let ok = set_tcp_checksum_v6(l6, l6, &mut d);
            prop_assert_eq!(ok, data.len() >= 18);
            prop_assert_eq!(verify_tcp_checksum_v6(l6, l6, &d), ok);
            let mut d = data.clone();
            let ok = set_tcp_checksum_v4(l4, l4, &mut d);
            prop_assert_eq!(verify_tcp_checksum_v4(l4, l4, &d), ok);
            let mut h = data.clone();
            let ok = set_ipv4_header_checksum(&mut h);
            prop_assert_eq!(ok, data.len() >= 12);
            if data.len() >= 20 {
                prop_assert!(verify_ipv4_header_checksum(&h));
            }
        }
    }
}
