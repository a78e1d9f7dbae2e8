//! In-band locator tags between hipd and the `shimapi` library.
//!
//! Two small, stable encodings let the shim API be exact per datagram
//! without a control round trip per packet:
//!
//! * **Receive tags** (`SHIM_LOC_LOCAL_RECV` / `SHIM_LOC_PEER_RECV`). For a
//!   socket that enabled them, the daemon adds to every packet it writes
//!   to the TUN device an option that names the locator pair the packet
//!   actually arrived on: an IPv6 Destination Options header (for HIT
//!   flows) or an IPv4 option (for LSI flows). The library enables
//!   `IPV6_RECVDSTOPTS` / `IP_RECVOPTS` on the socket, finds the tag in the
//!   control message and turns it into the RFC 6316 cmsgs. The tag never
//!   leaves the host (the TUN device delivers to the local stack), and its
//!   option type is an RFC 4727 experimental value whose high bits mean
//!   "skip if unknown", so other sockets ignore it.
//! * **Send markers** (per-datagram `SHIM_LOC_*_SEND` control messages).
//!   The library registers the wanted locators once per (socket, pair)
//!   with [`Request::ShimSendToken`](crate::control::Request::ShimSendToken)
//!   and marks each datagram by sending it with traffic class
//!   `token << 2` (an `IPV6_TCLASS` / `IP_TOS` control message, which needs
//!   no privilege). The daemon looks the marker up in the socket's table,
//!   sends that datagram on the registered pair and restores the socket's
//!   own traffic class before sealing, so the peer never sees the marker.
//!
//! Option data (both families), 34 bytes: magic `"SH"`, then the local
//! and the peer locator as 16-byte addresses (IPv4 as IPv4-mapped IPv6).

use std::net::{IpAddr, Ipv6Addr};

/// IPv6 destination option type of a receive tag (RFC 4727 experimental
/// 0x1E: action 00 = skip if unknown, not changed en route).
pub const DSTOPT_TYPE: u8 = 0x1E;
/// IPv4 option type of a receive tag (RFC 4727 experimental 0x5E: not
/// copied, class 2, number 30).
pub const IPV4_OPT_TYPE: u8 = 0x5E;
/// Magic at the start of the option data.
pub const MAGIC: [u8; 2] = *b"SH";
/// Length of the option data.
pub const DATA_LEN: usize = 34;
/// Length of the Destination Options header / IPv4 options block the
/// daemon inserts.
pub const TAG_LEN: usize = 40;
/// Largest send marker.
pub const MAX_TOKEN: u8 = 63;

fn wire(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn unwire(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The option data for (local, peer).
pub fn encode_data(local: IpAddr, peer: IpAddr) -> [u8; DATA_LEN] {
    let mut d = [0u8; DATA_LEN];
    d[..2].copy_from_slice(&MAGIC);
    d[2..18].copy_from_slice(&wire(local));
    d[18..34].copy_from_slice(&wire(peer));
    d
}

/// Parses option data; `None` unless it is a tag.
pub fn decode_data(d: &[u8]) -> Option<(IpAddr, IpAddr)> {
    if d.len() != DATA_LEN || d.get(..2)? != MAGIC {
        return None;
    }
    let l: [u8; 16] = d.get(2..18)?.try_into().ok()?;
    let p: [u8; 16] = d.get(18..34)?.try_into().ok()?;
    Some((unwire(l), unwire(p)))
}

/// A 40-byte Destination Options header carrying the tag, whose Next
/// Header is `next_header`.
pub fn dstopts_header(next_header: u8, local: IpAddr, peer: IpAddr) -> [u8; TAG_LEN] {
    let mut h = [0u8; TAG_LEN];
    h[0] = next_header;
    h[1] = (TAG_LEN / 8 - 1) as u8;
    h[2] = DSTOPT_TYPE;
    h[3] = DATA_LEN as u8;
    h[4..4 + DATA_LEN].copy_from_slice(&encode_data(local, peer));
    // PadN with zero data bytes fills the last two bytes.
    h[38] = 1;
    h[39] = 0;
    h
}

/// Finds a tag in a Destination Options header (as in an `IPV6_DSTOPTS`
/// control message: Next Header, Hdr Ext Len, options).
pub fn find_in_dstopts(hdr: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let len = (usize::from(*hdr.get(1)?) + 1) * 8;
    let opts = hdr.get(2..len.min(hdr.len()))?;
    find_tlv(opts, DSTOPT_TYPE, |t| t == 0, |_| false)
}

/// A 40-byte IPv4 options block carrying the tag (padded with End of
/// Options List).
pub fn ipv4_options(local: IpAddr, peer: IpAddr) -> [u8; TAG_LEN] {
    let mut o = [0u8; TAG_LEN];
    o[0] = IPV4_OPT_TYPE;
    o[1] = (DATA_LEN + 2) as u8;
    o[2..2 + DATA_LEN].copy_from_slice(&encode_data(local, peer));
    o
}

/// Finds a tag in IPv4 options (as in an `IP_OPTIONS` control message).
pub fn find_in_ipv4_options(opts: &[u8]) -> Option<(IpAddr, IpAddr)> {
    // IPv4: type 0 = End of Options List, 1 = No Operation; the length
    // byte counts type and length.
    let mut i = 0usize;
    while i < opts.len() {
        let t = *opts.get(i)?;
        match t {
            0 => return None,
            1 => i += 1,
            _ => {
                let l = usize::from(*opts.get(i + 1)?);
                if l < 2 {
                    return None;
                }
                let body = opts.get(i + 2..i + l)?;
                if t == IPV4_OPT_TYPE
                    && let Some(x) = decode_data(body)
                {
                    return Some(x);
                }
                i += l;
            }
        }
    }
    None
}

/// IPv6 TLV options: type 0 = Pad1, others have a length byte that counts
/// the data only.
fn find_tlv(
    opts: &[u8],
    want: u8,
    is_pad1: impl Fn(u8) -> bool,
    stop: impl Fn(u8) -> bool,
) -> Option<(IpAddr, IpAddr)> {
    let mut i = 0usize;
    while i < opts.len() {
        let t = *opts.get(i)?;
        if is_pad1(t) {
            i += 1;
            continue;
        }
        if stop(t) {
            return None;
        }
        let l = usize::from(*opts.get(i + 1)?);
        let body = opts.get(i + 2..i + 2 + l)?;
        if t == want
            && let Some(x) = decode_data(body)
        {
            return Some(x);
        }
        i += 2 + l;
    }
    None
}

/// The send marker for a token: the traffic class / TOS byte to send with.
pub fn token_tclass(token: u8) -> u8 {
    (token & MAX_TOKEN) << 2
}

/// The token of a traffic class byte (0: none).
pub fn tclass_token(tclass: u8) -> u8 {
    tclass >> 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let l6: IpAddr = "2001:db8:1::1".parse().unwrap();
        let p4: IpAddr = "192.0.2.2".parse().unwrap();
        let h = dstopts_header(17, l6, p4);
        assert_eq!(h.len() % 8, 0);
        assert_eq!(h[0], 17);
        assert_eq!(find_in_dstopts(&h), Some((l6, p4)));
        let o = ipv4_options(p4, l6);
        assert_eq!(find_in_ipv4_options(&o), Some((p4, l6)));
    }

    #[test]
    fn other_options_are_skipped_and_garbage_is_rejected() {
        let l: IpAddr = "2001:db8:1::1".parse().unwrap();
        let p: IpAddr = "2001:db8:2::2".parse().unwrap();
        // A foreign option first, then Pad1, then ours.
        let mut opts = vec![0x3e, 2, 9, 9, 0];
        opts.push(DSTOPT_TYPE);
        opts.push(DATA_LEN as u8);
        opts.extend_from_slice(&encode_data(l, p));
        let mut hdr = vec![6, 0];
        hdr.extend_from_slice(&opts);
        while hdr.len() % 8 != 0 {
            hdr.push(0);
        }
        hdr[1] = (hdr.len() / 8 - 1) as u8;
        assert_eq!(find_in_dstopts(&hdr), Some((l, p)));
        for cut in 0..hdr.len() {
            let _ = find_in_dstopts(&hdr[..cut]);
            let _ = find_in_ipv4_options(&hdr[..cut]);
        }
        let mut bad = encode_data(l, p);
        bad[0] = b'X';
        assert_eq!(decode_data(&bad), None);
        assert_eq!(find_in_ipv4_options(&[IPV4_OPT_TYPE, 1]), None);
    }

    #[test]
    fn tokens_live_in_the_dscp_bits() {
        for t in 1..=MAX_TOKEN {
            assert_eq!(tclass_token(token_tclass(t)), t);
            assert_eq!(token_tclass(t) & 3, 0);
        }
    }
}
