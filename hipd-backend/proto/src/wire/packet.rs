//! Zero-copy view of a HIP packet with checked accessors.

use super::checksum::{ChecksumMode, checksum};
use super::consts::{
    CONTROL_ANONYMOUS, HEADER_LEN, HIP_VERSION, MAX_PACKET_LEN, PacketType, param_type as pt,
};
use super::error::{Result, WireError};
use super::hit::Hit;
use super::param::{TLV_HEADER_LEN, tlv_total_len};

/// Byte offsets of the fixed header fields.
mod field {
    pub const NEXT_HEADER: usize = 0;
    pub const HEADER_LEN: usize = 1;
    pub const PACKET_TYPE: usize = 2;
    pub const VERSION: usize = 3;
    pub const CHECKSUM: usize = 4;
    pub const CONTROLS: usize = 6;
    pub const SENDER_HIT: usize = 8;
    pub const RECEIVER_HIT: usize = 24;
}

/// A parameter TLV seen in place inside a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawParam<'a> {
    /// Parameter type.
    pub ty: u16,
    /// Critical bit (least significant bit of the type).
    pub critical: bool,
    /// Contents (Length bytes, without padding).
    pub contents: &'a [u8],
    /// The whole TLV including header and padding, exactly as received.
    pub tlv: &'a [u8],
    /// Offset of the TLV from the start of the HIP packet (or of the
    /// parameter area when iterating a bare TLV sequence).
    pub offset: usize,
}

/// Iterator over the TLVs of a parameter area. It checks TLV lengths and
/// the ascending-type rule; after the first error it yields nothing more.
/// It does not judge whether types are known (see
/// [`Param::parse`](crate::wire::Param::parse)).
#[derive(Debug, Clone)]
pub struct RawParamIter<'a> {
    area: &'a [u8],
    pos: usize,
    base: usize,
    prev: Option<u16>,
    done: bool,
}

impl<'a> RawParamIter<'a> {
    /// Iterates over `area`; reported offsets are `base + position`.
    pub fn new(area: &'a [u8], base: usize) -> Self {
        RawParamIter {
            area,
            pos: 0,
            base,
            prev: None,
            done: false,
        }
    }

    fn next_inner(&mut self) -> Option<Result<RawParam<'a>>> {
        let rest = self.area.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let offset = self.base.saturating_add(self.pos);
        let truncated = WireError::ParamTruncated { offset };
        let Some(&[t0, t1, l0, l1]) = rest.get(..TLV_HEADER_LEN) else {
            return Some(Err(truncated));
        };
        let ty = u16::from_be_bytes([t0, t1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let total = tlv_total_len(len);
        let (Some(tlv), Some(contents)) = (
            rest.get(..total),
            rest.get(TLV_HEADER_LEN..TLV_HEADER_LEN + len),
        ) else {
            return Some(Err(truncated));
        };
        if let Some(prev) = self.prev
            && ty < prev
        {
            return Some(Err(WireError::ParamOrder { prev, ty }));
        }
        self.prev = Some(ty);
        self.pos += total;
        Some(Ok(RawParam {
            ty,
            critical: pt::is_critical(ty),
            contents,
            tlv,
            offset,
        }))
    }
}

impl<'a> Iterator for RawParamIter<'a> {
    type Item = Result<RawParam<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_inner();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// A read/write view of a HIP packet in a byte buffer, in the style of
/// smoltcp's `wire` packets.
///
/// [`Packet::new_checked`] validates the header; every accessor is also
/// bounds-checked on its own, so even a view made with
/// [`Packet::new_unchecked`] never panics (missing bytes read as zero and
/// writes past the end are dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without validation.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer and validates it with [`Packet::check`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Packet { buffer };
        p.check()?;
        Ok(p)
    }

    /// Validates the fixed header: at least 40 bytes; Header Length ≥ 4 and
    /// not past the buffer; Version 2. The fixed bits (P in byte 2, S in
    /// byte 3) and RES are ignored, as RFC 7401 §5.1 says for receivers.
    ///
    /// Bytes after `(Header Length + 1) · 8` are allowed (e.g. data after a
    /// non-`IPPROTO_NONE` Next Header) and are not part of the HIP packet.
    pub fn check(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::TooShort { len: b.len() });
        }
        let hl = self.header_len();
        if hl < 4 {
            return Err(WireError::HeaderLengthTooSmall { header_len: hl });
        }
        if self.total_len() > b.len() {
            return Err(WireError::HeaderLengthMismatch {
                declared: self.total_len(),
                available: b.len(),
            });
        }
        if self.version() != HIP_VERSION {
            return Err(WireError::BadVersion(self.version()));
        }
        Ok(())
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }

    fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.byte(i), self.byte(i + 1)])
    }

    fn hit_at(&self, i: usize) -> Hit {
        self.buffer
            .as_ref()
            .get(i..i + 16)
            .and_then(Hit::from_slice)
            .unwrap_or(Hit::ZERO)
    }

    /// Next Header field.
    pub fn next_header(&self) -> u8 {
        self.byte(field::NEXT_HEADER)
    }

    /// Raw Header Length field (8-byte units, not counting the first 8).
    pub fn header_len(&self) -> u8 {
        self.byte(field::HEADER_LEN)
    }

    /// Length of the HIP packet in bytes: `(Header Length + 1) · 8`.
    pub fn total_len(&self) -> usize {
        (usize::from(self.header_len()) + 1) * 8
    }

    /// Packet Type (7 bits).
    pub fn packet_type(&self) -> PacketType {
        PacketType::from(self.byte(field::PACKET_TYPE) & 0x7F)
    }

    /// Version (high 4 bits of byte 3).
    pub fn version(&self) -> u8 {
        self.byte(field::VERSION) >> 4
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Controls field.
    pub fn controls(&self) -> u16 {
        self.u16_at(field::CONTROLS)
    }

    /// The A (anonymous) control bit.
    pub fn anonymous(&self) -> bool {
        self.controls() & CONTROL_ANONYMOUS != 0
    }

    /// Sender's HIT.
    pub fn sender_hit(&self) -> Hit {
        self.hit_at(field::SENDER_HIT)
    }

    /// Receiver's HIT.
    pub fn receiver_hit(&self) -> Hit {
        self.hit_at(field::RECEIVER_HIT)
    }

    /// The HIP packet bytes, `0..total_len` (clamped to the buffer).
    pub fn packet_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(..self.total_len()).unwrap_or(b)
    }

    /// The parameter area (`40..total_len`).
    pub fn params_bytes(&self) -> &[u8] {
        self.packet_bytes().get(HEADER_LEN..).unwrap_or(&[])
    }

    /// Bytes after the HIP packet (ignored by HIP).
    pub fn trailing_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.total_len()..).unwrap_or(&[])
    }

    /// Iterates over the parameters as [`RawParam`] views.
    pub fn params(&self) -> RawParamIter<'_> {
        RawParamIter::new(self.params_bytes(), HEADER_LEN)
    }

    /// The first parameter of type `ty`, if present (structural errors
    /// before it are returned).
    pub fn find_param(&self, ty: u16) -> Result<Option<RawParam<'_>>> {
        for p in self.params() {
            let p = p?;
            if p.ty == ty {
                return Ok(Some(p));
            }
            if p.ty > ty {
                break;
            }
        }
        Ok(None)
    }

    /// Whether the checksum is correct for `mode` (always true for
    /// [`ChecksumMode::Udp`] when the field is zero, false otherwise).
    pub fn verify_checksum(&self, mode: ChecksumMode) -> bool {
        match mode {
            ChecksumMode::Udp => self.checksum() == 0,
            _ => checksum(mode, self.packet_bytes()) == 0,
        }
    }

    /// Offset of the first parameter whose type is ≥ `upto_type`, or the
    /// end of the packet if there is none.
    fn cut_offset(&self, upto_type: u16) -> Result<usize> {
        for p in self.params() {
            let p = p?;
            if p.ty >= upto_type {
                return Ok(p.offset);
            }
        }
        Ok(self.packet_bytes().len())
    }

    /// Bytes covered by a HIP_MAC or HIP_SIGNATURE of type `upto_type`
    /// (RFC 7401 §6.4.1 / §6.4.2): the header and every parameter with a
    /// type below `upto_type`, with Header Length rewritten to end there
    /// and the Checksum zeroed. The MAC/signature parameter itself need not
    /// be present yet (sender side). Use [`pt::HIP_MAC`] or
    /// [`pt::HIP_SIGNATURE`]; for HIP_MAC_2 and HIP_SIGNATURE_2 use
    /// [`Packet::mac2_input`] and [`Packet::signature2_input`].
    pub fn mac_input(&self, upto_type: u16) -> Result<Vec<u8>> {
        self.check()?;
        let cut = self.cut_offset(upto_type)?;
        let mut v = self.packet_bytes().get(..cut).unwrap_or_default().to_vec();
        set_len_and_zero_checksum(&mut v)?;
        Ok(v)
    }

    /// Bytes covered by HIP_MAC_2 in an R2 (RFC 7401 §6.4.1): the header and
    /// parameters with type < HIP_MAC_2, followed by the Responder's HOST_ID
    /// TLV exactly as it was sent in R1 (`host_id_tlv`, including padding;
    /// see [`RawParam::tlv`]), with Header Length covering it and the
    /// Checksum zeroed.
    pub fn mac2_input(&self, host_id_tlv: &[u8]) -> Result<Vec<u8>> {
        self.check()?;
        if !host_id_tlv.len().is_multiple_of(8) || host_id_tlv.len() < 8 {
            return Err(WireError::MalformedParam {
                ty: pt::HOST_ID,
                reason: "HOST_ID TLV is not a padded TLV",
            });
        }
        let cut = self.cut_offset(pt::HIP_MAC_2)?;
        let mut v = self.packet_bytes().get(..cut).unwrap_or_default().to_vec();
        v.extend_from_slice(host_id_tlv);
        set_len_and_zero_checksum(&mut v)?;
        Ok(v)
    }

    /// Bytes covered by HIP_SIGNATURE_2 in an R1 (RFC 7401 §5.2.15): the
    /// header and parameters with type < HIP_SIGNATURE_2, with Header Length
    /// rewritten, Checksum zeroed, the Receiver's HIT zeroed and, in the
    /// PUZZLE, Opaque and #I zeroed.
    pub fn signature2_input(&self) -> Result<Vec<u8>> {
        self.check()?;
        let cut = self.cut_offset(pt::HIP_SIGNATURE_2)?;
        let puzzle = self
            .find_param(pt::PUZZLE)?
            .map(|p| (p.offset, p.contents.len()));
        let mut v = self.packet_bytes().get(..cut).unwrap_or_default().to_vec();
        set_len_and_zero_checksum(&mut v)?;
        if let Some(hit) = v.get_mut(field::RECEIVER_HIT..field::RECEIVER_HIT + 16) {
            hit.fill(0);
        }
        if let Some((off, len)) = puzzle {
            // Contents: #K(1) Lifetime(1) Opaque(2) #I(...): zero from Opaque on.
            let start = off + TLV_HEADER_LEN + 2;
            let end = off + TLV_HEADER_LEN + len;
            if let Some(z) = v.get_mut(start..end) {
                z.fill(0);
            }
        }
        Ok(v)
    }
}

/// Rewrites Header Length to match `v.len()` and zeroes the checksum.
fn set_len_and_zero_checksum(v: &mut [u8]) -> Result<()> {
    if !v.len().is_multiple_of(8) || v.len() < HEADER_LEN || v.len() > MAX_PACKET_LEN {
        return Err(WireError::PacketTooLong { len: v.len() });
    }
    let hl = v.len() / 8 - 1;
    if let Some(b) = v.get_mut(field::HEADER_LEN) {
        *b = hl as u8;
    }
    if let Some(c) = v.get_mut(field::CHECKSUM..field::CHECKSUM + 2) {
        c.fill(0);
    }
    Ok(())
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_byte(&mut self, i: usize, v: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(i) {
            *b = v;
        }
    }

    fn set_u16_at(&mut self, i: usize, v: u16) {
        let [a, b] = v.to_be_bytes();
        self.set_byte(i, a);
        self.set_byte(i + 1, b);
    }

    /// Sets Next Header.
    pub fn set_next_header(&mut self, v: u8) {
        self.set_byte(field::NEXT_HEADER, v);
    }

    /// Sets the raw Header Length field.
    pub fn set_header_len(&mut self, v: u8) {
        self.set_byte(field::HEADER_LEN, v);
    }

    /// Sets the Packet Type (and the fixed P bit to 0).
    pub fn set_packet_type(&mut self, t: PacketType) {
        self.set_byte(field::PACKET_TYPE, t.value() & 0x7F);
    }

    /// Sets Version to `v`, RES to 0 and the fixed S bit to 1.
    pub fn set_version(&mut self, v: u8) {
        self.set_byte(field::VERSION, (v << 4) | 0x01);
    }

    /// Sets the Checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v);
    }

    /// Sets the Controls field.
    pub fn set_controls(&mut self, v: u16) {
        self.set_u16_at(field::CONTROLS, v);
    }

    /// Sets the sender's HIT.
    pub fn set_sender_hit(&mut self, h: Hit) {
        if let Some(d) = self
            .buffer
            .as_mut()
            .get_mut(field::SENDER_HIT..field::SENDER_HIT + 16)
        {
            d.copy_from_slice(h.as_bytes());
        }
    }

    /// Sets the receiver's HIT.
    pub fn set_receiver_hit(&mut self, h: Hit) {
        if let Some(d) = self
            .buffer
            .as_mut()
            .get_mut(field::RECEIVER_HIT..field::RECEIVER_HIT + 16)
        {
            d.copy_from_slice(h.as_bytes());
        }
    }

    /// Computes and stores the checksum for `mode` (zero for UDP).
    pub fn fill_checksum(&mut self, mode: ChecksumMode) {
        self.set_checksum(0);
        let c = checksum(mode, self.packet_bytes());
        self.set_checksum(c);
    }
}

/// Checks that `len` bytes form a valid HIP packet size.
pub(crate) fn check_packet_len(len: usize) -> Result<()> {
    if len > MAX_PACKET_LEN {
        Err(WireError::PacketTooLong { len })
    } else {
        Ok(())
    }
}
