//! Sans-IO ESP (RFC 4303 / RFC 7402) in BEET mode.
//!
//! # What `seal` takes and produces
//! [`SecurityAssociation::seal`] takes one complete **inner IP packet** as the
//! local stack emitted it on the HIT (or LSI) interface:
//! * IPv6 with source = local HIT and destination = peer HIT, whose TCP/UDP
//!   checksum is already computed over the HITs (the HIP rule: transport
//!   checksums always use an IPv6 pseudo-header with the HITs). The payload is
//!   carried unchanged. Extension headers, if any, travel inside ESP as payload
//!   (next header = the fixed header's Next Header).
//! * IPv4 with source = local LSI and destination = peer LSI (only when the SA
//!   has LSIs configured), no IP options, not fragmented. The TCP/UDP checksum
//!   is rewritten from the LSI IPv4 pseudo-header to the HIT IPv6
//!   pseudo-header (RFC 1624 incremental update; a zero UDP checksum is
//!   computed in full), so the wire format does not depend on the family.
//!   Other protocols are carried unchanged.
//!
//! It writes `SPI ‖ Seq ‖ IV ‖ encrypted(payload ‖ padding ‖ pad len ‖ next
//! header) ‖ ICV` — the ESP header and everything after it. The caller puts
//! the outer IP header (protocol 50, outer addresses, TTL/traffic class copied
//! from the inner header) or UDP encapsulation in front.
//!
//! # What `open` returns
//! [`SecurityAssociation::open`] takes the ESP bytes (starting at the SPI; the
//! outer header was already stripped, unchecked, as BEET prescribes) and the
//! outer TTL / hop limit. After ICV verification and the anti-replay check it
//! writes a **rebuilt inner packet** into the caller's buffer: an IPv6 header
//! peer HIT → local HIT (or, when the SA delivers as IPv4, an IPv4 header peer
//! LSI → local LSI with a valid header checksum and the TCP/UDP checksum
//! rewritten to the LSI pseudo-header), followed by the payload. Traffic class
//! and flow label are 0; the hop limit is the outer one.
//!
//! # Choices (kept stable)
//! * 64-bit extended sequence numbers always (RFC 7402 makes ESN a MUST);
//!   only the low 32 bits travel; the high half is inferred (RFC 4303 App. A)
//!   and covered by the ICV. The first sequence number is 1; sealing stops
//!   with [`EspError::SeqExhausted`] at 2^64 − 1 (rekey before).
//! * Anti-replay window: configurable, rounded up to a multiple of 64 (64 ..=
//!   65536), default 1024 packets; updated only after the ICV verified. With
//!   ESN a low half left of the window is tried as the next 2^32 subspace
//!   (RFC 4303 App. A2.2); when that ICV fails the packet is reported as
//!   [`EspError::OutOfWindow`] (the likely cause: a late packet) rather than
//!   [`EspError::AuthFailed`]. Either way it is dropped and no state changes.
//! * Padding: 1, 2, 3, … (RFC 4303 default), to the cipher block (16 for
//!   AES-CBC) or 4 bytes; checked on receive.
//! * IVs: see the module docs of [`super`] (AES-ECB counter generator for CBC,
//!   sequence number for GCM).
//! * Buffers: `seal` needs [`SecurityAssociation::seal_buffer_len`] bytes
//!   (sealed length + 16 bytes of scratch), `open` needs
//!   [`open_buffer_len`]`(esp.len())`. No per-packet heap allocation.

use std::fmt;

use super::{CryptoBackend, CryptoError, EspSuite, EspTransform, Hit, Lsi};

/// ESP processing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    /// Packet shorter than its headers.
    #[error("ESP packet too short")]
    TooShort,
    /// The SPI does not belong to this SA.
    #[error("SPI {got:#010x} does not match SA {expected:#010x}")]
    WrongSpi {
        /// This SA's SPI.
        expected: u32,
        /// The packet's SPI.
        got: u32,
    },
    /// seal on an inbound SA or open on an outbound SA.
    #[error("operation not valid for this SA direction")]
    WrongDirection,
    /// Sequence number already received.
    #[error("replayed sequence number {0}")]
    Replay(u64),
    /// Sequence number left of the window (or zero).
    #[error("sequence number {0} outside the replay window")]
    OutOfWindow(u64),
    /// ICV / AEAD tag verification failed.
    #[error("ESP integrity check failed")]
    AuthFailed,
    /// Trailer padding invalid.
    #[error("ESP padding invalid")]
    BadPadding,
    /// The inner packet handed to seal is not acceptable.
    #[error("inner packet rejected: {0}")]
    BadInner(&'static str),
    /// The inner addresses do not match the SA's HITs/LSIs.
    #[error("inner addresses do not match the SA")]
    AddressMismatch,
    /// IPv4/LSI packets need LSIs configured on the SA.
    #[error("SA has no LSIs configured")]
    NoLsi,
    /// The 64-bit sequence number space is used up.
    #[error("sequence numbers exhausted; rekey")]
    SeqExhausted,
    /// The output buffer is too small.
    #[error("output buffer too small, need {needed} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// Crypto backend error.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Direction of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaDirection {
    /// Packets we receive (open).
    Inbound,
    /// Packets we send (seal).
    Outbound,
}

/// Inner packet family delivered by `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerFamily {
    /// IPv6 with HITs.
    V6,
    /// IPv4 with LSIs.
    V4,
}

/// The BEET inner addresses of an SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeetAddrs {
    /// Our HIT.
    pub local_hit: Hit,
    /// The peer's HIT.
    pub peer_hit: Hit,
    /// (local, peer) LSIs, if the daemon assigned them.
    pub lsis: Option<(Lsi, Lsi)>,
    /// Family of packets `open` delivers (V4 requires `lsis`).
    pub deliver_as: InnerFamily,
}

/// Parameters for [`SecurityAssociation::new`].
pub struct SaParams<'a> {
    /// SPI (the receiver's choice).
    pub spi: u32,
    /// Suite.
    pub suite: EspSuite,
    /// Encryption key (GCM: key ‖ 4-byte salt).
    pub enc_key: &'a [u8],
    /// Authentication key.
    pub auth_key: &'a [u8],
    /// Direction.
    pub direction: SaDirection,
    /// Inner addresses.
    pub beet: BeetAddrs,
    /// Anti-replay window in packets (inbound SAs).
    pub replay_window: usize,
    /// 32 bytes from the caller's CSPRNG, keying the IV generator.
    pub iv_seed: [u8; 32],
}

impl fmt::Debug for SaParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaParams")
            .field("spi", &self.spi)
            .field("suite", &self.suite)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// Default anti-replay window (packets).
pub const DEFAULT_REPLAY_WINDOW: usize = 1024;

/// RFC 4303 anti-replay window over 64-bit ESNs.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u64,
    bits: Vec<u64>,
    top: u64,
}

impl ReplayWindow {
    /// Window of `size` packets, rounded up to a multiple of 64 and clamped to
    /// 64..=65536.
    pub fn new(size: usize) -> ReplayWindow {
        let size = size.clamp(64, 65536).div_ceil(64) * 64;
        ReplayWindow {
            size: size as u64,
            bits: vec![0; size / 64],
            top: 0,
        }
    }

    /// Window size in packets.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Highest authenticated sequence number (0 before the first packet).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Reconstruct the 64-bit sequence number from its low half (RFC 4303
    /// App. A2.2) and check it against the window without updating it.
    ///
    /// With ESN a low half that falls left of the window is read as the next
    /// 2^32 subspace (so it is "new" here and its ICV decides); see
    /// [`SecurityAssociation::open`] for how such failures are reported.
    pub fn check(&self, seq_lo: u32) -> Result<u64, EspError> {
        self.infer(seq_lo).map(|(seq, _)| seq)
    }

    /// Like [`Self::check`]; also returns whether the high half was advanced
    /// because the low half lay left of the window.
    fn infer(&self, seq_lo: u32) -> Result<(u64, bool), EspError> {
        let w = self.size;
        let tl = self.top & 0xFFFF_FFFF;
        let th = self.top >> 32;
        let sl = u64::from(seq_lo);
        let (seq_hi, advanced) = if tl >= w - 1 {
            if sl + w > tl {
                (th, false)
            } else {
                (th + 1, true)
            }
        } else {
            let lower = (tl + (1 << 32) - (w - 1)) & 0xFFFF_FFFF;
            if sl >= lower && th > 0 {
                (th - 1, false)
            } else {
                (th, false)
            }
        };
        let seq = (seq_hi << 32) | sl;
        if seq == 0 {
            return Err(EspError::OutOfWindow(0));
        }
        if seq > self.top {
            return Ok((seq, advanced));
        }
        if self.top - seq >= w {
            return Err(EspError::OutOfWindow(seq));
        }
        let pos = seq % w;
        if self.bits[(pos / 64) as usize] & (1 << (pos % 64)) != 0 {
            return Err(EspError::Replay(seq));
        }
        Ok((seq, false))
    }

    /// Record an authenticated sequence number.
    pub fn accept(&mut self, seq: u64) {
        let w = self.size;
        if seq > self.top {
            let d = seq - self.top;
            if d >= w {
                self.bits.fill(0);
            } else {
                for s in self.top + 1..=seq {
                    let pos = s % w;
                    self.bits[(pos / 64) as usize] &= !(1 << (pos % 64));
                }
            }
            self.top = seq;
        } else if self.top - seq >= w {
            return;
        }
        let pos = seq % w;
        self.bits[(pos / 64) as usize] |= 1 << (pos % 64);
    }
}

/// ESP Next Header of a dummy packet (RFC 4303 §2.6: IPv6 No Next Header).
pub const DUMMY_NEXT_HEADER: u8 = 59;

/// Result of a successful open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Length of the rebuilt inner packet in the output buffer.
    pub len: usize,
    /// The 64-bit sequence number.
    pub seq: u64,
    /// Inner protocol (ESP Next Header).
    pub next_header: u8,
    /// Family of the rebuilt packet.
    pub family: InnerFamily,
    /// A dummy packet (Next Header 59, RFC 4303 §2.6), e.g. a REAP
    /// keepalive from [`SecurityAssociation::seal_dummy`]: authenticated and
    /// replay-checked like any packet, so count it as inbound traffic, but
    /// do not deliver it (RFC 4303: the receiver discards dummy packets).
    /// The rebuilt packet (an IPv6/IPv4 header with protocol 59 and the
    /// payload, empty for ours) is still written, so callers that ignore
    /// this flag see an ordinary packet.
    pub dummy: bool,
}

/// Output buffer size `open` needs for an ESP packet of `esp_len` bytes.
pub const fn open_buffer_len(esp_len: usize) -> usize {
    esp_len + 40
}

/// The SPI of an ESP packet (for SA lookup), if it is long enough.
pub fn peek_spi(esp: &[u8]) -> Option<u32> {
    esp.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

/// An ESP security association in BEET mode.
#[derive(Debug)]
pub struct SecurityAssociation {
    spi: u32,
    suite: EspSuite,
    direction: SaDirection,
    transform: Box<dyn EspTransform>,
    last_seq: u64,
    replay: ReplayWindow,
    beet: BeetAddrs,
}

// ---------------------------------------------------------------- checksums

use crate::wire::checksum::{fold, sum_bytes as sum_words};

/// RFC 1624 eqn. 3: replace the words `old` by `new` under checksum `csum`.
fn csum_replace(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u32::from(!csum);
    for c in old.chunks_exact(2) {
        acc = acc.wrapping_add(u32::from(!u16::from_be_bytes([c[0], c[1]])));
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc = sum_words(acc, new);
    !fold(acc)
}

/// Offset of the checksum field for protocols whose checksum covers a
/// pseudo-header with the addresses (TCP, UDP, UDP-Lite excluded).
fn l4_csum_offset(proto: u8, payload_len: usize) -> Option<usize> {
    match proto {
        6 if payload_len >= 20 => Some(16),
        17 if payload_len >= 8 => Some(6),
        _ => None,
    }
}

/// Full transport checksum with an IPv6 pseudo-header (used for UDP-over-IPv4
/// packets that carry no checksum).
fn full_v6_checksum(src: &[u8; 16], dst: &[u8; 16], proto: u8, parts: &[&[u8]]) -> u16 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut acc = sum_words(0, src);
    acc = sum_words(acc, dst);
    acc = sum_words(acc, &(len as u32).to_be_bytes());
    acc = sum_words(acc, &[0, 0, 0, proto]);
    let mut odd: Option<u8> = None;
    for p in parts {
        let mut p: &[u8] = p;
        if let Some(b) = odd.take() {
            if let Some((&f, rest)) = p.split_first() {
                acc = sum_words(acc, &[b, f]);
                p = rest;
            } else {
                odd = Some(b);
                continue;
            }
        }
        let even = p.len() & !1;
        acc = sum_words(acc, &p[..even]);
        if even < p.len() {
            odd = Some(p[even]);
        }
    }
    if let Some(b) = odd {
        acc = sum_words(acc, &[b, 0]);
    }
    let c = !fold(acc);
    if c == 0 { 0xFFFF } else { c }
}

fn ipv4_header_checksum(h: &[u8]) -> u16 {
    !fold(sum_words(0, h))
}

impl SecurityAssociation {
    /// Create an SA; builds the backend transform (keys expanded once).
    pub fn new(backend: &dyn CryptoBackend, p: SaParams<'_>) -> Result<Self, EspError> {
        if p.beet.deliver_as == InnerFamily::V4 && p.beet.lsis.is_none() {
            return Err(EspError::NoLsi);
        }
        let transform = backend.esp_transform(p.suite, p.enc_key, p.auth_key, &p.iv_seed)?;
        Ok(SecurityAssociation {
            spi: p.spi,
            suite: p.suite,
            direction: p.direction,
            transform,
            last_seq: 0,
            replay: ReplayWindow::new(p.replay_window),
            beet: p.beet,
        })
    }

    /// SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }
    /// Suite.
    pub fn suite(&self) -> EspSuite {
        self.suite
    }
    /// Direction.
    pub fn direction(&self) -> SaDirection {
        self.direction
    }
    /// Inner addresses.
    pub fn beet(&self) -> &BeetAddrs {
        &self.beet
    }
    /// Change the family `open` delivers.
    pub fn set_deliver_as(&mut self, family: InnerFamily) -> Result<(), EspError> {
        if family == InnerFamily::V4 && self.beet.lsis.is_none() {
            return Err(EspError::NoLsi);
        }
        self.beet.deliver_as = family;
        Ok(())
    }
    /// Last sequence number sent (outbound); 0 before the first packet.
    pub fn last_seq_sent(&self) -> u64 {
        self.last_seq
    }
    /// Continue an outbound SA after `last_seq` (restoring saved SA state).
    /// Never move it backwards on a live SA: the peer would drop the replays.
    pub fn set_last_seq_sent(&mut self, last_seq: u64) {
        self.last_seq = last_seq;
    }
    /// The anti-replay window (inbound).
    pub fn replay_window(&self) -> &ReplayWindow {
        &self.replay
    }

    fn trailer_pad(&self, payload_len: usize) -> usize {
        let b = self.suite.block_len();
        (b - (payload_len + 2) % b) % b
    }

    /// Exact ESP length for a transport payload of `payload_len` bytes.
    pub fn sealed_len_for_payload(&self, payload_len: usize) -> usize {
        8 + self.suite.iv_len()
            + payload_len
            + self.trailer_pad(payload_len)
            + 2
            + self.suite.icv_len()
    }

    /// Buffer size `seal` needs for an inner packet of `inner_len` bytes
    /// (an upper bound: sealed length + 16 bytes of scratch).
    pub fn seal_buffer_len(&self, inner_len: usize) -> usize {
        self.sealed_len_for_payload(inner_len) + 16
    }

    /// Encrypt one inner packet (see the module docs) into `out`; returns the
    /// ESP length.
    pub fn seal(&mut self, inner: &[u8], out: &mut [u8]) -> Result<usize, EspError> {
        if self.direction != SaDirection::Outbound {
            return Err(EspError::WrongDirection);
        }
        let (proto, payload, v4) = self.parse_inner(inner)?;
        let seq = self.last_seq.checked_add(1).ok_or(EspError::SeqExhausted)?;
        if seq == u64::MAX {
            return Err(EspError::SeqExhausted);
        }
        let pad = self.trailer_pad(payload.len());
        let mut trailer = [0u8; 18];
        for (i, b) in trailer[..pad].iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        trailer[pad] = pad as u8;
        trailer[pad + 1] = proto;
        let trailer = &trailer[..pad + 2];
        let need = self.sealed_len_for_payload(payload.len()) + 16;
        if out.len() < need {
            return Err(EspError::BufferTooSmall { needed: need });
        }
        out[..4].copy_from_slice(&self.spi.to_be_bytes());
        out[4..8].copy_from_slice(&(seq as u32).to_be_bytes());

        let n = match (v4, l4_csum_offset(proto, payload.len())) {
            (Some((src4, dst4)), Some(off)) => {
                // LSI → HIT pseudo-header rewrite on a stack copy of the
                // transport header prefix.
                let mut head = [0u8; 20];
                let hl = off + 2;
                head[..hl].copy_from_slice(&payload[..hl]);
                let old = u16::from_be_bytes([head[off], head[off + 1]]);
                let mut addrs4 = [0u8; 8];
                addrs4[..4].copy_from_slice(&src4);
                addrs4[4..].copy_from_slice(&dst4);
                let mut addrs6 = [0u8; 32];
                addrs6[..16].copy_from_slice(self.beet.local_hit.as_bytes());
                addrs6[16..].copy_from_slice(self.beet.peer_hit.as_bytes());
                let new = if proto == 17 && old == 0 {
                    full_v6_checksum(
                        self.beet.local_hit.as_bytes(),
                        self.beet.peer_hit.as_bytes(),
                        proto,
                        &[&head[..hl], &payload[hl..]],
                    )
                } else {
                    let c = csum_replace(old, &addrs4, &addrs6);
                    if proto == 17 && c == 0 { 0xFFFF } else { c }
                };
                head[off..off + 2].copy_from_slice(&new.to_be_bytes());
                self.transform
                    .seal(seq, &[&head[..hl], &payload[hl..], trailer], out)?
            }
            _ => self.transform.seal(seq, &[payload, trailer], out)?,
        };
        self.last_seq = seq;
        Ok(n)
    }

    /// Seals a dummy packet (RFC 4303 §2.6): no payload, Next Header 59,
    /// the minimum padding. It uses the next sequence number like any
    /// packet; the receiver's [`SecurityAssociation::open`] reports it with
    /// [`Opened::dummy`]. Used as the REAP keepalive ([`crate::reap`]).
    /// `out` needs [`SecurityAssociation::seal_buffer_len`]`(0)` bytes.
    pub fn seal_dummy(&mut self, out: &mut [u8]) -> Result<usize, EspError> {
        if self.direction != SaDirection::Outbound {
            return Err(EspError::WrongDirection);
        }
        let seq = self.last_seq.checked_add(1).ok_or(EspError::SeqExhausted)?;
        if seq == u64::MAX {
            return Err(EspError::SeqExhausted);
        }
        let pad = self.trailer_pad(0);
        let mut trailer = [0u8; 18];
        for (i, b) in trailer[..pad].iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        trailer[pad] = pad as u8;
        trailer[pad + 1] = DUMMY_NEXT_HEADER;
        let need = self.seal_buffer_len(0);
        if out.len() < need {
            return Err(EspError::BufferTooSmall { needed: need });
        }
        out[..4].copy_from_slice(&self.spi.to_be_bytes());
        out[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        let n = self.transform.seal(seq, &[&trailer[..pad + 2]], out)?;
        self.last_seq = seq;
        Ok(n)
    }

    /// Returns (protocol, transport payload, Some((src, dst)) for IPv4).
    #[allow(clippy::type_complexity)]
    fn parse_inner<'p>(
        &self,
        inner: &'p [u8],
    ) -> Result<(u8, &'p [u8], Option<([u8; 4], [u8; 4])>), EspError> {
        let first = *inner.first().ok_or(EspError::BadInner("empty"))?;
        match first >> 4 {
            6 => {
                if inner.len() < 40 {
                    return Err(EspError::BadInner("short IPv6 header"));
                }
                let pl = usize::from(u16::from_be_bytes([inner[4], inner[5]]));
                let payload = inner
                    .get(40..40 + pl)
                    .ok_or(EspError::BadInner("IPv6 payload length"))?;
                if inner[8..24] != *self.beet.local_hit.as_bytes()
                    || inner[24..40] != *self.beet.peer_hit.as_bytes()
                {
                    return Err(EspError::AddressMismatch);
                }
                Ok((inner[6], payload, None))
            }
            4 => {
                let (local, peer) = self.beet.lsis.ok_or(EspError::NoLsi)?;
                if inner.len() < 20 {
                    return Err(EspError::BadInner("short IPv4 header"));
                }
                if first & 0x0F != 5 {
                    return Err(EspError::BadInner("IPv4 options not supported"));
                }
                let tot = usize::from(u16::from_be_bytes([inner[2], inner[3]]));
                let payload = inner
                    .get(20..tot)
                    .ok_or(EspError::BadInner("IPv4 total length"))?;
                if u16::from_be_bytes([inner[6], inner[7]]) & 0x3FFF != 0 {
                    return Err(EspError::BadInner("IPv4 fragment"));
                }
                let src: [u8; 4] = [inner[12], inner[13], inner[14], inner[15]];
                let dst: [u8; 4] = [inner[16], inner[17], inner[18], inner[19]];
                if src != local.addr().octets() || dst != peer.addr().octets() {
                    return Err(EspError::AddressMismatch);
                }
                Ok((inner[9], payload, Some((src, dst))))
            }
            _ => Err(EspError::BadInner("not IPv4/IPv6")),
        }
    }

    /// Verify, replay-check and decrypt one ESP packet and rebuild the inner
    /// packet into `out` (see the module docs). `hop_limit` is the outer TTL /
    /// hop limit to copy into the inner header.
    pub fn open(&mut self, esp: &[u8], hop_limit: u8, out: &mut [u8]) -> Result<Opened, EspError> {
        if self.direction != SaDirection::Inbound {
            return Err(EspError::WrongDirection);
        }
        let min = 8 + self.suite.iv_len() + self.suite.icv_len() + 4;
        if esp.len() < min {
            return Err(EspError::TooShort);
        }
        let spi = u32::from_be_bytes([esp[0], esp[1], esp[2], esp[3]]);
        if spi != self.spi {
            return Err(EspError::WrongSpi {
                expected: self.spi,
                got: spi,
            });
        }
        let seq_lo = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
        let (seq, advanced) = self.replay.infer(seq_lo)?;
        let need = open_buffer_len(esp.len());
        if out.len() < need {
            return Err(EspError::BufferTooSmall { needed: need });
        }
        let family = self.beet.deliver_as;
        let hl = match family {
            InnerFamily::V6 => 40,
            InnerFamily::V4 => 20,
        };
        let pt_len = self
            .transform
            .open((seq >> 32) as u32, esp, &mut out[hl..])
            .map_err(|e| match e {
                // A low half left of the window was read as the next
                // subspace (RFC 4303 App. A2.2) and did not authenticate: by
                // far the likeliest cause is a late packet from the current
                // subspace, so report it as out of window.
                CryptoError::IntegrityCheckFailed if advanced => {
                    EspError::OutOfWindow(seq - (1 << 32))
                }
                CryptoError::IntegrityCheckFailed => EspError::AuthFailed,
                CryptoError::Malformed { .. } => EspError::TooShort,
                other => EspError::Crypto(other),
            })?;
        self.replay.accept(seq);

        let pt = &out[hl..hl + pt_len];
        let (&next_header, rest) = pt.split_last().ok_or(EspError::BadPadding)?;
        let (&pad, rest) = rest.split_last().ok_or(EspError::BadPadding)?;
        let payload_len = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or(EspError::BadPadding)?;
        if rest[payload_len..]
            .iter()
            .enumerate()
            .any(|(i, &b)| usize::from(b) != i + 1)
        {
            return Err(EspError::BadPadding);
        }
        match family {
            InnerFamily::V6 => {
                let pl = u16::try_from(payload_len).map_err(|_| EspError::BadInner("too long"))?;
                let h = &mut out[..40];
                h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
                h[4..6].copy_from_slice(&pl.to_be_bytes());
                h[6] = next_header;
                h[7] = hop_limit;
                h[8..24].copy_from_slice(self.beet.peer_hit.as_bytes());
                h[24..40].copy_from_slice(self.beet.local_hit.as_bytes());
            }
            InnerFamily::V4 => {
                let (local, peer) = self.beet.lsis.ok_or(EspError::NoLsi)?;
                let tot =
                    u16::try_from(payload_len + 20).map_err(|_| EspError::BadInner("too long"))?;
                if let Some(off) = l4_csum_offset(next_header, payload_len) {
                    let p = &mut out[20..20 + payload_len];
                    let old = u16::from_be_bytes([p[off], p[off + 1]]);
                    let mut addrs6 = [0u8; 32];
                    addrs6[..16].copy_from_slice(self.beet.peer_hit.as_bytes());
                    addrs6[16..].copy_from_slice(self.beet.local_hit.as_bytes());
                    let mut addrs4 = [0u8; 8];
                    addrs4[..4].copy_from_slice(&peer.addr().octets());
                    addrs4[4..].copy_from_slice(&local.addr().octets());
                    let mut new = csum_replace(old, &addrs6, &addrs4);
                    if next_header == 17 && new == 0 {
                        new = 0xFFFF;
                    }
                    p[off..off + 2].copy_from_slice(&new.to_be_bytes());
                }
                let h = &mut out[..20];
                h[0] = 0x45;
                h[1] = 0;
                h[2..4].copy_from_slice(&tot.to_be_bytes());
                h[4..8].copy_from_slice(&[0, 0, 0, 0]);
                h[8] = hop_limit;
                h[9] = next_header;
                h[10..12].copy_from_slice(&[0, 0]);
                h[12..16].copy_from_slice(&peer.addr().octets());
                h[16..20].copy_from_slice(&local.addr().octets());
                let c = ipv4_header_checksum(h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }
        Ok(Opened {
            len: hl + payload_len,
            seq,
            next_header,
            family,
            dummy: next_header == DUMMY_NEXT_HEADER,
        })
    }

    /// Seal many packets, reusing the SA's contexts: `inners[i]` is sealed
    /// into `outs[i]`, its result stored in `results[i]`. Processes
    /// `min(inners, outs, results)` packets and returns that count.
    pub fn seal_batch(
        &mut self,
        inners: &[&[u8]],
        outs: &mut [&mut [u8]],
        results: &mut [Result<usize, EspError>],
    ) -> usize {
        let n = inners.len().min(outs.len()).min(results.len());
        for ((inner, out), res) in inners.iter().zip(outs.iter_mut()).zip(results.iter_mut()) {
            *res = self.seal(inner, out);
        }
        n
    }

    /// Open many packets (see [`Self::open`]), one result per packet.
    pub fn open_batch(
        &mut self,
        packets: &[&[u8]],
        hop_limit: u8,
        outs: &mut [&mut [u8]],
        results: &mut [Result<Opened, EspError>],
    ) -> usize {
        let n = packets.len().min(outs.len()).min(results.len());
        for ((pkt, out), res) in packets.iter().zip(outs.iter_mut()).zip(results.iter_mut()) {
            *res = self.open(pkt, hop_limit, out);
        }
        n
    }
}
