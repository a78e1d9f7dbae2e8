//! UDP encapsulation framing (RFC 5770 / RFC 9028).
//!
//! On the HIP UDP port (10500 by default) three kinds of payload share one
//! socket: HIP control packets behind a 32-bit zero marker (with the HIP
//! checksum set to zero), ESP packets directly in UDP as in RFC 3948 (the
//! first four bytes are a non-zero SPI), and — in legacy RFC 5770
//! ICE-STUN-UDP mode only — STUN messages, recognised by the STUN magic
//! cookie. A single 0xFF byte is the RFC 3948 NAT-keepalive used with
//! ESP-in-UDP. HIP-level keepalives (RFC 9028 NOTIFY NAT_KEEPALIVE, RFC
//! 5770 parameterless NOTIFY) arrive as [`UdpPayload::Hip`]; see
//! [`PacketRepr::is_nat_keepalive`](crate::wire::PacketRepr::is_nat_keepalive).

/// Length of the zero marker in front of a HIP control packet.
pub const ZERO_MARKER_LEN: usize = 4;
/// STUN magic cookie (RFC 5389).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
/// Minimum ESP packet: SPI and sequence number.
pub const ESP_MIN_LEN: usize = 8;

/// What a UDP payload received on the HIP port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPayload<'a> {
    /// A HIP control packet (the bytes after the zero marker).
    Hip(&'a [u8]),
    /// An ESP packet (starting with the SPI).
    Esp(&'a [u8]),
    /// A STUN message (legacy RFC 5770 ICE-STUN-UDP mode).
    Stun(&'a [u8]),
    /// The one-byte 0xFF NAT-keepalive of RFC 3948.
    Keepalive,
    /// Anything else (too short, a zero marker with a truncated header, …).
    Invalid,
}

/// Classifies a UDP payload received on a HIP/ESP UDP port.
pub fn classify_udp(payload: &[u8]) -> UdpPayload<'_> {
    if payload == [0xFF] {
        return UdpPayload::Keepalive;
    }
    let Some((&[a, b, c, d], rest)) = payload.split_first_chunk::<4>() else {
        return UdpPayload::Invalid;
    };
    let first = u32::from_be_bytes([a, b, c, d]);
    if first == 0 {
        // A HIP header needs at least 40 bytes.
        if rest.len() >= super::consts::HEADER_LEN {
            return UdpPayload::Hip(rest);
        }
        return UdpPayload::Invalid;
    }
    if is_stun(payload) {
        return UdpPayload::Stun(payload);
    }
    if payload.len() >= ESP_MIN_LEN {
        return UdpPayload::Esp(payload);
    }
    UdpPayload::Invalid
}

/// STUN message: first two bits zero, magic cookie at offset 4, and a
/// message length (a multiple of 4) matching the payload after the 20-byte
/// header.
fn is_stun(p: &[u8]) -> bool {
    let (Some(&[t0, _, l0, l1]), Some(&[c0, c1, c2, c3])) = (p.get(0..4), p.get(4..8)) else {
        return false;
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    t0 & 0xC0 == 0
        && u32::from_be_bytes([c0, c1, c2, c3]) == STUN_MAGIC_COOKIE
        && len.is_multiple_of(4)
        && p.len() == 20 + len
}

/// Writes the zero marker followed by `hip_packet` into `out`; returns the
/// number of bytes written, or `None` if `out` is too small. The caller is
/// responsible for the HIP checksum being zero (see
/// [`ChecksumMode::Udp`](crate::wire::ChecksumMode::Udp)).
pub fn encapsulate_hip(hip_packet: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = hip_packet.len().checked_add(ZERO_MARKER_LEN)?;
    let dst = out.get_mut(..total)?;
    let (marker, body) = dst.split_at_mut(ZERO_MARKER_LEN);
    marker.fill(0);
    body.copy_from_slice(hip_packet);
    Some(total)
}

/// The zero marker followed by `hip_packet`, as a new vector.
pub fn encapsulate_hip_vec(hip_packet: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(hip_packet.len() + ZERO_MARKER_LEN);
    v.extend_from_slice(&[0; ZERO_MARKER_LEN]);
    v.extend_from_slice(hip_packet);
    v
}
