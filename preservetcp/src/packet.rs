//! IPv6 packets carrying TCP: finding the TCP segment behind the extension
//! header chain, inserting and stripping the destination options header that
//! carries PREFIX_SYN/PREFIX_ACK, and rewriting addresses with an incremental
//! checksum update.
//!
//! Supported chains: the fixed IPv6 header followed by any number of
//! hop-by-hop (0), routing (43) and destination options (60) headers, then
//! TCP. A fragment header (44) or any other next header is an error: the
//! daemon passes such packets through untouched. The destination options
//! header that this crate reads, inserts and strips is the one *directly
//! before TCP* (the one addressed to the final destination). Bytes after the
//! IPv6 payload length are ignored and dropped from rebuilt packets.
//! Jumbograms (payload length 0) are not supported.

use std::net::Ipv6Addr;

use thiserror::Error;

use crate::checksum::{TCP_CHECKSUM_OFFSET, load_u16, store_u16, update_tcp_checksum_v6};
use crate::wire::{
    DestOptsHeader, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ROUTING,
    IPPROTO_TCP, WireError,
};

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Offset of the Next Header octet in the fixed IPv6 header.
const NEXT_HEADER_OFFSET: usize = 6;
/// Most extension headers walked before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// Errors of the packet helpers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Shorter than the structure it announces.
    #[error("packet truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Version field is not 6.
    #[error("not an IPv6 packet (version {0})")]
    NotIpv6(u8),
    /// Payload length 0 (jumbogram) is not supported.
    #[error("jumbograms are not supported")]
    Jumbogram,
    /// The chain ends in something other than TCP.
    #[error("upper-layer protocol {0} is not TCP")]
    NotTcp(u8),
    /// The packet is a fragment.
    #[error("fragmented packets are not handled")]
    Fragmented,
    /// More extension headers than [`MAX_EXTENSION_HEADERS`].
    #[error("too many extension headers")]
    TooManyHeaders,
    /// Inserting would put a second destination options header before TCP.
    #[error("a destination options header already precedes TCP")]
    AlreadyHasDestOpts,
    /// The result would exceed the 65535-byte payload length.
    #[error("payload would be {0} bytes, more than 65535")]
    TooLong(usize),
    /// The TCP header is malformed (shorter than 20 bytes or a bad data offset).
    #[error("malformed TCP header")]
    BadTcp,
    /// The destination options header does not parse.
    #[error("destination options header: {0}")]
    Wire(#[from] WireError),
}

/// TCP control flags of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    /// FIN.
    pub fin: bool,
    /// SYN.
    pub syn: bool,
    /// RST.
    pub rst: bool,
    /// ACK.
    pub ack: bool,
}

/// The fields of a TCP header the daemon needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpHeader {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with the ACK flag).
    pub ack: u32,
    /// Control flags.
    pub flags: TcpFlags,
    /// Header length in bytes (data offset * 4).
    pub header_len: usize,
}

impl TcpHeader {
    /// Parses the fixed part of a TCP header, checking the data offset.
    pub fn parse(segment: &[u8]) -> Result<Self, PacketError> {
        let (src_port, dst_port) = match (load_u16(segment, 0), load_u16(segment, 2)) {
            (Some(s), Some(d)) => (s, d),
            _ => return Err(PacketError::BadTcp),
        };
        let (&off_byte, &flag_byte) = match (segment.get(12), segment.get(13)) {
            (Some(o), Some(f)) if segment.len() >= 20 => (o, f),
            _ => return Err(PacketError::BadTcp),
        };
        let header_len = usize::from(off_byte >> 4) * 4;
        if header_len < 20 || header_len > segment.len() {
            return Err(PacketError::BadTcp);
        }
        let word = |at: usize| {
            segment
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, u32::from_be_bytes)
        };
        Ok(Self {
            src_port,
            dst_port,
            seq: word(4),
            ack: word(8),
            flags: TcpFlags {
                fin: flag_byte & 0x01 != 0,
                syn: flag_byte & 0x02 != 0,
                rst: flag_byte & 0x04 != 0,
                ack: flag_byte & 0x10 != 0,
            },
            header_len,
        })
    }
}

/// A parsed view of an IPv6 packet carrying TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Tcp<'a> {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The destination options header directly before TCP, if any.
    pub dest_opts: Option<DestOptsHeader>,
    /// The TCP header fields.
    pub tcp_header: TcpHeader,
    /// The TCP segment (header and data).
    pub tcp: &'a [u8],
    /// Offset of the TCP segment in the packet.
    pub tcp_offset: usize,
    /// Offset of the destination options header directly before TCP.
    dest_opts_offset: Option<usize>,
    /// Offset of the Next Header octet that names the header directly
    /// before TCP's header (or TCP itself when there is no such header).
    prev_nh_offset: usize,
    /// Offset of the Next Header octet that names TCP.
    tcp_nh_offset: usize,
}

impl Ipv6Tcp<'_> {
    /// The connection's tuple as seen by the sending host (local = source).
    pub fn sender_tuple(&self) -> crate::FourTuple {
        crate::FourTuple {
            local: self.src,
            local_port: self.tcp_header.src_port,
            peer: self.dst,
            peer_port: self.tcp_header.dst_port,
        }
    }

    /// The connection's tuple as seen by the receiving host (local =
    /// destination).
    pub fn receiver_tuple(&self) -> crate::FourTuple {
        crate::FourTuple {
            local: self.dst,
            local_port: self.tcp_header.dst_port,
            peer: self.src,
            peer_port: self.tcp_header.src_port,
        }
    }
}

fn addr_at(buf: &[u8], off: usize) -> Option<Ipv6Addr> {
    let b: [u8; 16] = buf.get(off..off + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(b))
}

/// Parses an IPv6 packet, walks its extension headers and returns a view of
/// the TCP segment.
pub fn parse_ipv6_tcp(packet: &[u8]) -> Result<Ipv6Tcp<'_>, PacketError> {
    let fixed = packet
        .get(..IPV6_HEADER_LEN)
        .ok_or(PacketError::Truncated {
            needed: IPV6_HEADER_LEN,
            available: packet.len(),
        })?;
    let version = fixed.first().map_or(0, |b| b >> 4);
    if version != 6 {
        return Err(PacketError::NotIpv6(version));
    }
    let payload_len = usize::from(load_u16(fixed, 4).unwrap_or(0));
    if payload_len == 0 {
        return Err(PacketError::Jumbogram);
    }
    let total = IPV6_HEADER_LEN + payload_len;
    let packet = packet.get(..total).ok_or(PacketError::Truncated {
        needed: total,
        available: packet.len(),
    })?;
    let (src, dst) = match (addr_at(fixed, 8), addr_at(fixed, 24)) {
        (Some(s), Some(d)) => (s, d),
        _ => return Err(PacketError::BadTcp),
    };
    let mut nh_offset = NEXT_HEADER_OFFSET;
    let mut prev_nh_offset = NEXT_HEADER_OFFSET;
    let mut nh = fixed.get(NEXT_HEADER_OFFSET).copied().unwrap_or(0);
    let mut off = IPV6_HEADER_LEN;
    let mut last_dstopts: Option<usize> = None;
    let mut count = 0usize;
    loop {
        match nh {
            IPPROTO_TCP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                count += 1;
                if count > MAX_EXTENSION_HEADERS {
                    return Err(PacketError::TooManyHeaders);
                }
                let (next, len_units) = match (packet.get(off), packet.get(off + 1)) {
                    (Some(n), Some(l)) => (*n, *l),
                    _ => {
                        return Err(PacketError::Truncated {
                            needed: off + 2,
                            available: packet.len(),
                        });
                    }
                };
                let len = (usize::from(len_units) + 1) * 8;
                if off + len > packet.len() {
                    return Err(PacketError::Truncated {
                        needed: off + len,
                        available: packet.len(),
                    });
                }
                last_dstopts = (nh == IPPROTO_DSTOPTS).then_some(off);
                prev_nh_offset = nh_offset;
                nh_offset = off;
                nh = next;
                off += len;
            }
            IPPROTO_FRAGMENT => return Err(PacketError::Fragmented),
            other => return Err(PacketError::NotTcp(other)),
        }
    }
    let tcp = packet.get(off..).unwrap_or(&[]);
    let tcp_header = TcpHeader::parse(tcp)?;
    let dest_opts = match last_dstopts {
        Some(o) => Some(DestOptsHeader::parse(packet.get(o..).unwrap_or(&[]))?.0),
        None => None,
    };
    Ok(Ipv6Tcp {
        src,
        dst,
        dest_opts,
        tcp_header,
        tcp,
        tcp_offset: off,
        dest_opts_offset: last_dstopts,
        prev_nh_offset: if last_dstopts.is_some() {
            prev_nh_offset
        } else {
            nh_offset
        },
        tcp_nh_offset: nh_offset,
    })
}

fn set_payload_len(packet: &mut [u8]) -> Result<(), PacketError> {
    let pl = packet.len().saturating_sub(IPV6_HEADER_LEN);
    let v = u16::try_from(pl).map_err(|_| PacketError::TooLong(pl))?;
    store_u16(packet, 4, v);
    Ok(())
}

/// Inserts `opts` directly before the TCP segment of `packet`: the header
/// that named TCP now names DSTOPTS, `opts`'s Next Header is set to TCP and
/// the payload length grows by `opts.len()`. The TCP segment is copied
/// unchanged; its checksum stays valid because the IPv6 pseudo-header does
/// not cover extension headers.
pub fn insert_dest_opts(packet: &[u8], opts: &DestOptsHeader) -> Result<Vec<u8>, PacketError> {
    let view = parse_ipv6_tcp(packet)?;
    if view.dest_opts_offset.is_some() {
        return Err(PacketError::AlreadyHasDestOpts);
    }
    let head = packet.get(..view.tcp_offset).unwrap_or(&[]);
    let new_len = view.tcp_offset + opts.len() + view.tcp.len();
    if new_len - IPV6_HEADER_LEN > usize::from(u16::MAX) {
        return Err(PacketError::TooLong(new_len - IPV6_HEADER_LEN));
    }
    let mut out = Vec::with_capacity(new_len);
    out.extend_from_slice(head);
    if let Some(b) = out.get_mut(view.tcp_nh_offset) {
        *b = IPPROTO_DSTOPTS;
    }
    let mut opts = opts.clone();
    opts.set_next_header(IPPROTO_TCP);
    opts.emit(&mut out);
    out.extend_from_slice(view.tcp);
    set_payload_len(&mut out)?;
    Ok(out)
}

/// Removes the destination options header directly before TCP, if any, and
/// returns the rebuilt packet (TCP segment unchanged) and the parsed header.
/// Without such a header the packet is returned as it is (trimmed to its
/// payload length) with `None`.
pub fn strip_dest_opts(packet: &[u8]) -> Result<(Vec<u8>, Option<DestOptsHeader>), PacketError> {
    let view = parse_ipv6_tcp(packet)?;
    let end = view.tcp_offset + view.tcp.len();
    let (Some(dst_off), Some(opts)) = (view.dest_opts_offset, view.dest_opts.clone()) else {
        return Ok((packet.get(..end).unwrap_or(&[]).to_vec(), None));
    };
    let mut out = Vec::with_capacity(end);
    out.extend_from_slice(packet.get(..dst_off).unwrap_or(&[]));
    if let Some(b) = out.get_mut(view.prev_nh_offset) {
        *b = IPPROTO_TCP;
    }
    out.extend_from_slice(view.tcp);
    set_payload_len(&mut out)?;
    Ok((out, Some(opts)))
}

/// Removes the destination options header directly before TCP using only
/// the extension header framing (Next Header and Hdr Ext Len), without
/// parsing the options. For packets whose options are malformed (which
/// [`parse_ipv6_tcp`] rejects): the daemon drops such a header and passes
/// the segment on as plain TCP. Returns `None` when the chain itself is
/// broken, there is no such header, or the TCP header is invalid.
pub fn strip_dest_opts_framing(packet: &[u8]) -> Option<Vec<u8>> {
    let payload_len = usize::from(load_u16(packet, 4)?);
    if packet.first().map(|b| b >> 4) != Some(6) || payload_len == 0 {
        return None;
    }
    let packet = packet.get(..IPV6_HEADER_LEN + payload_len)?;
    let mut nh_offset = NEXT_HEADER_OFFSET;
    let mut nh = *packet.get(NEXT_HEADER_OFFSET)?;
    let mut off = IPV6_HEADER_LEN;
    // (offset of the Next Header octet naming it, offset, length) of the
    // last destination options header.
    let mut last: Option<(usize, usize, usize)> = None;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match nh {
            IPPROTO_TCP => {
                let (named_at, start, len) = last.filter(|l| l.1 + l.2 == off)?;
                let tcp = packet.get(off..)?;
                TcpHeader::parse(tcp).ok()?;
                let mut out = Vec::with_capacity(packet.len() - len);
                out.extend_from_slice(packet.get(..start)?);
                *out.get_mut(named_at)? = IPPROTO_TCP;
                out.extend_from_slice(tcp);
                set_payload_len(&mut out).ok()?;
                return Some(out);
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let next = *packet.get(off)?;
                let len = (usize::from(*packet.get(off + 1)?) + 1) * 8;
                if off + len > packet.len() {
                    return None;
                }
                if nh == IPPROTO_DSTOPTS {
                    last = Some((nh_offset, off, len));
                }
                nh_offset = off;
                nh = next;
                off += len;
            }
            _ => return None,
        }
    }
    None
}

/// Rewrites the source and destination addresses of an IPv6 TCP packet in
/// place and updates the TCP checksum incrementally (RFC 1624).
pub fn rewrite_addresses_v6(
    packet: &mut [u8],
    new_src: Ipv6Addr,
    new_dst: Ipv6Addr,
) -> Result<(), PacketError> {
    let (old_src, old_dst, csum_off) = {
        let v = parse_ipv6_tcp(packet)?;
        (v.src, v.dst, v.tcp_offset + TCP_CHECKSUM_OFFSET)
    };
    let old = load_u16(packet, csum_off).ok_or(PacketError::BadTcp)?;
    let new = update_tcp_checksum_v6(old, old_src, old_dst, new_src, new_dst);
    if let Some(s) = packet.get_mut(8..24) {
        s.copy_from_slice(&new_src.octets());
    }
    if let Some(d) = packet.get_mut(24..40) {
        d.copy_from_slice(&new_dst.octets());
    }
    store_u16(packet, csum_off, new);
    Ok(())
}

/// IPv6 next-header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a Packet Too Big message (RFC 4443 3.2).
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// Offset of the quoted packet in an ICMPv6 error message (after the
/// IPv6 header and the 8-octet ICMPv6 header).
const QUOTE_OFFSET: usize = IPV6_HEADER_LEN + 8;

/// The TCP segment an ICMPv6 Packet Too Big message quotes, as the tuple
/// of the host that sent it (local = the quoted source). `None` unless
/// `packet` is an IPv6 packet whose next header is ICMPv6 (no extension
/// headers before it), of type Packet Too Big with code 0, quoting an IPv6
/// packet whose next header is TCP with at least the two ports present.
pub fn too_big_quote(packet: &[u8]) -> Option<crate::FourTuple> {
    if packet.first()? >> 4 != 6 || *packet.get(6)? != IPPROTO_ICMPV6 {
        return None;
    }
    if *packet.get(IPV6_HEADER_LEN)? != ICMPV6_PACKET_TOO_BIG
        || *packet.get(IPV6_HEADER_LEN + 1)? != 0
    {
        return None;
    }
    let q = packet.get(QUOTE_OFFSET..)?;
    if q.first()? >> 4 != 6 || *q.get(6)? != IPPROTO_TCP {
        return None;
    }
    let port = |off: usize| Some(u16::from_be_bytes(q.get(off..off + 2)?.try_into().ok()?));
    Some(crate::FourTuple {
        local: addr_at(q, 8)?,
        local_port: port(IPV6_HEADER_LEN)?,
        peer: addr_at(q, 24)?,
        peer_port: port(IPV6_HEADER_LEN + 2)?,
    })
}

/// Replaces the addresses of the segment an ICMPv6 Packet Too Big quotes
/// (see [`too_big_quote`]) by `src` and `dst` and updates the ICMPv6
/// checksum incrementally (RFC 1624): the checksum covers the quote, so it
/// changes by the same amount as for any 32-byte address rewrite, and a
/// wrong checksum stays wrong. The outer header is left as it is.
pub fn rewrite_too_big_quote(
    packet: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Result<(), PacketError> {
    let old = too_big_quote(packet).ok_or(PacketError::Truncated {
        needed: QUOTE_OFFSET + IPV6_HEADER_LEN + 4,
        available: packet.len(),
    })?;
    let csum_off = IPV6_HEADER_LEN + 2;
    let sum = load_u16(packet, csum_off).ok_or(PacketError::Truncated {
        needed: csum_off + 2,
        available: packet.len(),
    })?;
    let new = update_tcp_checksum_v6(sum, old.local, old.peer, src, dst);
    let (s, d) = (QUOTE_OFFSET + 8, QUOTE_OFFSET + 24);
    if let Some(b) = packet.get_mut(s..s + 16) {
        b.copy_from_slice(&src.octets());
    }
    if let Some(b) = packet.get_mut(d..d + 16) {
        b.copy_from_slice(&dst.octets());
    }
    store_u16(packet, csum_off, new);
    Ok(())
}

/// Builds an IPv6 packet (no extension headers) around `tcp` with the given
/// addresses and hop limit. The TCP checksum is left as it is in `tcp`.
pub fn build_ipv6_tcp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    tcp: &[u8],
) -> Result<Vec<u8>, PacketError> {
    let pl = u16::try_from(tcp.len()).map_err(|_| PacketError::TooLong(tcp.len()))?;
    let mut out = Vec::with_capacity(IPV6_HEADER_LEN + tcp.len());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&pl.to_be_bytes());
    out.push(IPPROTO_TCP);
    out.push(hop_limit);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(tcp);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checksum::{set_tcp_checksum_v6, verify_tcp_checksum_v6};
    use crate::wire::{DestOption, Prefix, PrefixOption};
    use proptest::prelude::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn tcp_segment(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![
            0x04, 0x0f, 0x00, 0x15, // ports 1039 -> 21
            0, 0, 0, 1, 0, 0, 0, 0, // seq, ack
            0x50, flags, 0xff, 0xff, // data offset 5, flags, window
            0, 0, 0, 0, // checksum, urgent
        ];
        t.extend_from_slice(payload);
        t
    }

    fn syn_opts() -> DestOptsHeader {
        let p = Prefix::from_addr(a("3ffe:2a00:100:3200::f00d:cafe"), 64).unwrap();
        DestOptsHeader::with_prefixes(0, Some(PrefixOption::new(vec![p]).unwrap()), None).unwrap()
    }

    #[test]
    fn insert_then_strip_roundtrip() {
        let (s, d) = (
            a("3ffe:2a00:100:3100::f00d:cafe"),
            a("3ffe:2a00:100:3100::dead:beef"),
        );
        let mut tcp = tcp_segment(0x02, b"hello");
        assert!(set_tcp_checksum_v6(s, d, &mut tcp));
        let pkt = build_ipv6_tcp(s, d, 64, &tcp).unwrap();
        let with = insert_dest_opts(&pkt, &syn_opts()).unwrap();
        assert_eq!(with.len(), pkt.len() + 16);
        assert_eq!(with[6], IPPROTO_DSTOPTS);
        assert_eq!(
            u16::from_be_bytes([with[4], with[5]]) as usize,
            with.len() - 40
        );
        let v = parse_ipv6_tcp(&with).unwrap();
        assert_eq!(v.tcp, &tcp[..]);
        assert!(v.tcp_header.flags.syn && !v.tcp_header.flags.ack);
        assert!(verify_tcp_checksum_v6(v.src, v.dst, v.tcp));
        let opts = v.dest_opts.unwrap();
        assert_eq!(opts.next_header(), IPPROTO_TCP);
        assert_eq!(opts.prefix_syn(), syn_opts().prefix_syn());
        assert_eq!(
            insert_dest_opts(&with, &syn_opts()),
            Err(PacketError::AlreadyHasDestOpts)
        );
        let (back, got) = strip_dest_opts(&with).unwrap();
        assert_eq!(back, pkt);
        assert!(got.is_some());
        let (same, none) = strip_dest_opts(&pkt).unwrap();
        assert_eq!(same, pkt);
        assert!(none.is_none());
    }

    #[test]
    fn insert_after_hop_by_hop_and_strip_keeps_it() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8::2"));
        let mut tcp = tcp_segment(0x12, b"");
        set_tcp_checksum_v6(s, d, &mut tcp);
        let mut pkt = build_ipv6_tcp(s, d, 64, &tcp).unwrap();
        // Insert a hop-by-hop header (PadN only) by hand.
        let hbh = [IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0];
        pkt[6] = IPPROTO_HOPOPTS;
        let mut p2 = pkt[..40].to_vec();
        p2.extend_from_slice(&hbh);
        p2.extend_from_slice(&tcp);
        let pl = (p2.len() - 40) as u16;
        p2[4..6].copy_from_slice(&pl.to_be_bytes());
        let with = insert_dest_opts(&p2, &syn_opts()).unwrap();
        assert_eq!(with[6], IPPROTO_HOPOPTS);
        assert_eq!(with[40], IPPROTO_DSTOPTS);
        assert_eq!(with[48], IPPROTO_TCP);
        let v = parse_ipv6_tcp(&with).unwrap();
        assert_eq!(v.tcp, &tcp[..]);
        assert!(v.dest_opts.is_some());
        let (back, _) = strip_dest_opts(&with).unwrap();
        assert_eq!(back, p2);
    }

    #[test]
    fn rejects_non_tcp_and_fragments() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8::2"));
        let mut pkt = build_ipv6_tcp(s, d, 64, &tcp_segment(2, b"")).unwrap();
        pkt[6] = 17;
        assert_eq!(parse_ipv6_tcp(&pkt), Err(PacketError::NotTcp(17)));
        pkt[6] = IPPROTO_FRAGMENT;
        assert_eq!(parse_ipv6_tcp(&pkt), Err(PacketError::Fragmented));
        pkt[0] = 0x45;
        assert_eq!(parse_ipv6_tcp(&pkt), Err(PacketError::NotIpv6(4)));
        assert!(matches!(
            parse_ipv6_tcp(&pkt[..30]),
            Err(PacketError::Truncated { .. })
        ));
    }

    #[test]
    fn rewrite_keeps_checksum_valid() {
        let (s, d) = (a("2001:db8:1::1"), a("2001:db8:1::2"));
        let (s2, d2) = (a("2001:db8:2::1"), a("2001:db8:3::2"));
        let mut tcp = tcp_segment(0x10, b"data!");
        set_tcp_checksum_v6(s, d, &mut tcp);
        let pkt = build_ipv6_tcp(s, d, 64, &tcp).unwrap();
        let mut with = insert_dest_opts(&pkt, &syn_opts()).unwrap();
        rewrite_addresses_v6(&mut with, s2, d2).unwrap();
        let v = parse_ipv6_tcp(&with).unwrap();
        assert_eq!((v.src, v.dst), (s2, d2));
        assert!(verify_tcp_checksum_v6(s2, d2, v.tcp));
        assert!(!verify_tcp_checksum_v6(s, d, v.tcp));
    }

    proptest! {
        #[test]
        fn insert_strip_preserves_segment(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            flags in any::<u8>(),
            s in any::<u128>(), d in any::<u128>(),
            lens in proptest::collection::vec(0u8..=128, 0..10),
            with_ack in any::<bool>(),
        ) {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let mut tcp = tcp_segment(flags, &payload);
            set_tcp_checksum_v6(s, d, &mut tcp);
            let pkt = build_ipv6_tcp(s, d, 64, &tcp).unwrap();
            let prefixes: Vec<Prefix> =
                lens.iter().map(|&l| Prefix::from_addr(s, l).unwrap()).collect();
            let opt = PrefixOption::new(prefixes).unwrap();
            let ack = with_ack.then(|| opt.clone());
            let hdr = DestOptsHeader::with_prefixes(0, Some(opt), ack).unwrap();
            let with = insert_dest_opts(&pkt, &hdr).unwrap();
            let v = parse_ipv6_tcp(&with).unwrap();
            prop_assert_eq!(v.tcp, &tcp[..]);
            prop_assert!(verify_tcp_checksum_v6(s, d, v.tcp));
            let (back, got) = strip_dest_opts(&with).unwrap();
            prop_assert_eq!(back, pkt);
            let got = got.unwrap();
            prop_assert_eq!(got.options(), hdr.options());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Make most inputs look like IPv6 so the chain walk is exercised.
            let mut b = bytes;
            if b.len() >= 40 {
                b[0] = 0x60 | (b[0] & 0x0f);
                let pl = (b.len() - 40) as u16;
                b[4..6].copy_from_slice(&pl.to_be_bytes());
            }
            if let Ok(v) = parse_ipv6_tcp(&b) {
                prop_assert!(v.tcp.len() >= 20);
                prop_assert_eq!(v.tcp_offset + v.tcp.len(), b.len());
            }
            if let Ok((stripped, hdr)) = strip_dest_opts(&b) {
                let before = parse_ipv6_tcp(&b).unwrap();
                match parse_ipv6_tcp(&stripped) {
                    Ok(v) => prop_assert_eq!(v.tcp, before.tcp),
                    // An earlier, never-parsed destination options header is
                    // now the one before TCP and is malformed.
                    Err(PacketError::Wire(_)) => prop_assert!(hdr.is_some()),
                    Err(e) => prop_assert!(false, "stripped packet fails: {}", e),
                }
                let removed = hdr.map_or(0, |h| h.len());
                prop_assert_eq!(stripped.len() + removed, b.len());
            }
        }
    }

    #[test]
    fn only_the_header_before_tcp_is_parsed() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8::2"));
        let tcp = tcp_segment(2, b"");
        let mut pkt = build_ipv6_tcp(s, d, 64, &tcp).unwrap();
        pkt[6] = IPPROTO_DSTOPTS;
        pkt.truncate(40);
        // A malformed destination options header (non-zero PadN) first...
        pkt.extend_from_slice(&[IPPROTO_DSTOPTS, 0, 1, 4, 0, 0, 9, 0]);
        // ...then a valid one before TCP.
        pkt.extend_from_slice(&[IPPROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
        pkt.extend_from_slice(&tcp);
        let pl = (pkt.len() - 40) as u16;
        pkt[4..6].copy_from_slice(&pl.to_be_bytes());
        let v = parse_ipv6_tcp(&pkt).unwrap();
        assert_eq!(v.tcp, &tcp[..]);
        assert_eq!(v.dest_opts.unwrap().options(), &[DestOption::PadN(4)]);
        let (stripped, _) = strip_dest_opts(&pkt).unwrap();
        assert_eq!(stripped.len(), pkt.len() - 8);
        assert_eq!(
            parse_ipv6_tcp(&stripped),
            Err(PacketError::Wire(WireError::NonZeroPadding { offset: 2 }))
        );
    }

    #[test]
    fn unknown_option_kept_through_insert() {
        let (s, d) = (a("2001:db8::1"), a("2001:db8::2"));
        let pkt = build_ipv6_tcp(s, d, 64, &tcp_segment(2, b"")).unwrap();
        let hdr = DestOptsHeader::new(
            0,
            vec![DestOption::Unknown {
                ty: 0x1e,
                data: vec![1, 2, 3],
            }],
        )
        .unwrap();
        let with = insert_dest_opts(&pkt, &hdr).unwrap();
        let v = parse_ipv6_tcp(&with).unwrap();
        assert_eq!(v.dest_opts.unwrap().options()[0], hdr.options()[0]);
    }

    /// An ICMPv6 Packet Too Big from `router` to `to` quoting `quoted`,
    /// with a valid checksum.
    pub(crate) fn too_big(router: Ipv6Addr, to: Ipv6Addr, quoted: &[u8]) -> Vec<u8> {
        let mut icmp = vec![ICMPV6_PACKET_TOO_BIG, 0, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(quoted);
        let len = u32::try_from(icmp.len()).unwrap();
        let acc = crate::checksum::pseudo_header_sum_v6(router, to, len, IPPROTO_ICMPV6);
        let c = !crate::checksum::fold(crate::checksum::sum_words(&icmp, acc));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p = build_ipv6_tcp(router, to, 64, &icmp).unwrap();
        p[6] = IPPROTO_ICMPV6;
        p
    }

    /// Whether an ICMPv6 packet's checksum is valid.
    pub(crate) fn icmp_ok(p: &[u8]) -> bool {
        let (src, dst) = (addr_at(p, 8).unwrap(), addr_at(p, 24).unwrap());
        let icmp = &p[IPV6_HEADER_LEN..];
        let len = u32::try_from(icmp.len()).unwrap();
        let acc = crate::checksum::pseudo_header_sum_v6(src, dst, len, IPPROTO_ICMPV6);
        crate::checksum::fold(crate::checksum::sum_words(icmp, acc)) == 0xffff
    }

    #[test]
    fn too_big_quote_is_put_back_to_the_original_tuple() {
        let (r, c1, s1) = (a("2001:db8:9::1"), a("2001:db8:1::1"), a("2001:db8:2::2"));
        let (c0, s0) = (a("2001:db8:0::1"), a("2001:db8:0::2"));
        let mut seg = tcp_segment(0x10, &[7u8; 1200]);
        assert!(set_tcp_checksum_v6(c1, s1, &mut seg));
        let sent = build_ipv6_tcp(c1, s1, 64, &seg).unwrap();
        // Routers quote as much as fits in the minimum MTU.
        let mut p = too_big(r, c1, &sent[..1232]);
        assert!(icmp_ok(&p));
        let q = too_big_quote(&p).unwrap();
        assert_eq!(
            (q.local, q.peer, q.local_port, q.peer_port),
            (c1, s1, 1039, 21)
        );
        rewrite_too_big_quote(&mut p, c0, s0).unwrap();
        assert!(icmp_ok(&p), "checksum updated");
        let q = too_big_quote(&p).unwrap();
        assert_eq!(
            (q.local, q.peer, q.local_port, q.peer_port),
            (c0, s0, 1039, 21)
        );
        assert_eq!(
            (addr_at(&p, 8), addr_at(&p, 24)),
            (Some(r), Some(c1)),
            "outer kept"
        );
        assert_eq!(
            &p[QUOTE_OFFSET + 40..],
            &sent[40..1232],
            "quoted segment kept"
        );
    }

    #[test]
    fn a_wrong_icmp_checksum_stays_wrong() {
        let (r, c1, s1) = (a("2001:db8:9::1"), a("2001:db8:1::1"), a("2001:db8:2::2"));
        let sent = build_ipv6_tcp(c1, s1, 64, &tcp_segment(0x10, b"x")).unwrap();
        let mut p = too_big(r, c1, &sent);
        p[IPV6_HEADER_LEN + 2] ^= 0x40;
        rewrite_too_big_quote(&mut p, a("2001:db8::1"), a("2001:db8::2")).unwrap();
        assert!(!icmp_ok(&p));
    }

    #[test]
    fn only_a_too_big_quoting_tcp_with_its_ports_is_taken() {
        let (r, c1, s1) = (a("2001:db8:9::1"), a("2001:db8:1::1"), a("2001:db8:2::2"));
        let sent = build_ipv6_tcp(c1, s1, 64, &tcp_segment(0x10, b"x")).unwrap();
        let p = too_big(r, c1, &sent);
        // Every truncation: no quote unless the ports are in, no panic.
        for n in 0..p.len() {
            let got = too_big_quote(&p[..n]);
            assert_eq!(
                got.is_some(),
                n >= QUOTE_OFFSET + IPV6_HEADER_LEN + 4,
                "{n}"
            );
            let mut cut = p[..n].to_vec();
            assert_eq!(
                rewrite_too_big_quote(&mut cut, c1, s1).is_ok(),
                got.is_some()
            );
        }
        // Destination Unreachable (type 1), a nonzero code, a quoted UDP
        // datagram, a TCP packet: not a Packet Too Big quoting TCP.
        let mut other = p.clone();
        other[IPV6_HEADER_LEN] = 1;
        assert!(too_big_quote(&other).is_none());
        let mut other = p.clone();
        other[IPV6_HEADER_LEN + 1] = 1;
        assert!(too_big_quote(&other).is_none());
        let mut other = p.clone();
        other[QUOTE_OFFSET + 6] = 17;
        assert!(too_big_quote(&other).is_none());
        assert!(too_big_quote(&sent).is_none());
    }

    proptest! {
        #[test]
        fn too_big_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = bytes;
            if b.len() > 6 {
                b[0] = 0x60;
                b[6] = IPPROTO_ICMPV6;
            }
            if b.len() > IPV6_HEADER_LEN + 1 {
                b[IPV6_HEADER_LEN] = ICMPV6_PACKET_TOO_BIG;
                b[IPV6_HEADER_LEN + 1] = 0;
            }
            let q = too_big_quote(&b);
            let r = rewrite_too_big_quote(&mut b, Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST);
            prop_assert_eq!(q.is_some(), r.is_ok());
        }
    }
}
