//! Wire format of the IPv6 destination options header and the PREFIX_SYN /
//! PREFIX_ACK options (Hansen 1999, section 4.3.2, Table 4.2).
//!
//! Everything here is a pure codec: parsing takes untrusted bytes, checks every
//! length and never panics; emitting produces a header whose length is a whole
//! number of 8-octet units.
//!
//! See the crate documentation for the byte layout.

use std::net::Ipv6Addr;

use thiserror::Error;

/// IP protocol number of the IPv6 destination options header (`IPPROTO_DSTOPTS`).
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of the IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IP protocol number of the IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IP protocol number of the IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;

/// Option type of the one-octet Pad1 option (RFC 8200 section 4.2).
pub const OPT_PAD1: u8 = 0x00;
/// Option type of the PadN option (RFC 8200 section 4.2).
pub const OPT_PADN: u8 = 0x01;
/// Option type of PREFIX_SYN: action bits `00` (skip if unknown), change bit
/// `0` (does not change en route), rest `01011` (Table 4.2).
pub const OPT_PREFIX_SYN: u8 = 0x0B;
/// Option type of PREFIX_ACK: action bits `00`, change bit `0`, rest `01100`
/// (Table 4.2).
pub const OPT_PREFIX_ACK: u8 = 0x0C;

/// Largest option data length an option can carry (the length field is one octet).
pub const MAX_OPTION_DATA: usize = 255;
/// Largest destination options header: (255 + 1) * 8 octets.
pub const MAX_HEADER_LEN: usize = 2048;
/// Longest prefix, in bits, that the length octet may announce.
pub const MAX_PREFIX_BITS: u8 = 128;
/// Most options other than padding a Linux receiver accepts in one
/// destination options header (`net.ipv6.max_dst_opts_number`, default 8);
/// see [`DestOptsHeader::deliverable`].
pub const LINUX_MAX_DST_OPTS: usize = 8;
/// Longest run of consecutive padding octets (Pad1 and PadN) a Linux
/// receiver accepts (RFC 4942 2.1.9.5: padding only aligns to 8 octets).
pub const MAX_PADDING_RUN: usize = 7;

/// Errors of the destination options / prefix option codec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The input ended before the structure it announces.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were available.
        available: usize,
    },
    /// An option's TLV runs past the end of the header.
    #[error("option at offset {offset} runs past the end of the header")]
    OptionOverrun {
        /// Offset of the option type octet inside the header.
        offset: usize,
    },
    /// A PadN option carries non-zero bytes (RFC 8200: its data are zero octets).
    #[error("PadN option at offset {offset} carries non-zero padding")]
    NonZeroPadding {
        /// Offset of the option type octet inside the header.
        offset: usize,
    },
    /// A prefix length octet announces more than 128 bits.
    #[error("prefix length {0} exceeds 128 bits")]
    PrefixTooLong(u8),
    /// A prefix's bytes run past the end of the option data.
    #[error("prefix with {len_bits} bits runs past the end of the option data")]
    PrefixOverrun {
        /// The announced bit length.
        len_bits: u8,
    },
    /// The prefixes do not fit into the 255 bytes of option data.
    #[error("prefix option data would be {0} bytes, more than 255")]
    OptionTooLong(usize),
    /// The options do not fit into a 2048-byte destination options header.
    #[error("destination options header would be {0} bytes, more than 2048")]
    HeaderTooLong(usize),
    /// An `Unknown` option was given a type that has its own variant
    /// (Pad1, PadN, PREFIX_SYN, PREFIX_ACK), which would not parse back as given.
    #[error("option type {0:#04x} must use its own variant, not Unknown")]
    ReservedUnknownType(u8),
    /// A Pad1 or PadN option was passed to a constructor that adds padding itself.
    #[error("explicit padding is not accepted here, it is added automatically")]
    ExplicitPadding,
    /// A [`DestOption::Ignored`] option was passed to a constructor: those
    /// only come from parsing received headers.
    #[error("ignored options only come from parsing, they cannot be sent")]
    ExplicitIgnored,
}

/// Number of whole bytes that carry `len_bits` bits.
fn bytes_for_bits(len_bits: u8) -> usize {
    usize::from(len_bits).div_ceil(8)
}

/// One alternative prefix as carried in a PREFIX_SYN/PREFIX_ACK option.
///
/// `len_bits` is the true prefix length; the wire carries
/// `ceil(len_bits / 8)` bytes, and the low bits of the last byte beyond
/// `len_bits` are *padding taken from the sender's interface identifier*
/// (thesis 4.3.2). Those padding bits are kept verbatim so that an echo
/// (PREFIX_ACK) reproduces the received bytes exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    len_bits: u8,
    /// Wire bytes in the first `bytes_for_bits(len_bits)` positions, zero after.
    bytes: [u8; 16],
}

impl Prefix {
    /// Builds a prefix from its bit length and its wire bytes
    /// (`ceil(len_bits/8)` bytes, the last one possibly carrying padding bits).
    pub fn new(len_bits: u8, wire_bytes: &[u8]) -> Result<Self, WireError> {
        if len_bits > MAX_PREFIX_BITS {
            return Err(WireError::PrefixTooLong(len_bits));
        }
        let n = bytes_for_bits(len_bits);
        let src = wire_bytes.get(..n).ok_or(WireError::Truncated {
            needed: n,
            available: wire_bytes.len(),
        })?;
        let mut bytes = [0u8; 16];
        if let Some(dst) = bytes.get_mut(..n) {
            dst.copy_from_slice(src);
        }
        Ok(Self { len_bits, bytes })
    }

    /// The prefix of `addr` of length `len_bits`, padded with the remaining
    /// bits of `addr` (its interface identifier), exactly as a sender puts it
    /// on the wire.
    pub fn from_addr(addr: Ipv6Addr, len_bits: u8) -> Result<Self, WireError> {
        Self::new(len_bits, &addr.octets())
    }

    /// The true prefix length in bits.
    pub fn len_bits(&self) -> u8 {
        self.len_bits
    }

    /// The bytes as carried on the wire (`ceil(len_bits/8)` of them).
    pub fn wire_bytes(&self) -> &[u8] {
        let n = bytes_for_bits(self.len_bits);
        self.bytes.get(..n).unwrap_or(&[])
    }

    /// Number of bytes this prefix occupies in option data (length octet included).
    pub fn encoded_len(&self) -> usize {
        1 + bytes_for_bits(self.len_bits)
    }

    /// The prefix as `(network address with host bits cleared, length)`.
    pub fn to_network(&self) -> (Ipv6Addr, u8) {
        let addr = u128::from_be_bytes(self.bytes) & mask(self.len_bits);
        (Ipv6Addr::from(addr), self.len_bits)
    }

    /// The alternative address formed from this prefix and the interface
    /// identifier of `iid_source` (the peer's address for the connection):
    /// the first `len_bits` bits come from the prefix, the rest from
    /// `iid_source`. Padding bits received on the wire are ignored in favour
    /// of the identifier the peer is known to use.
    pub fn combine(&self, iid_source: Ipv6Addr) -> Ipv6Addr {
        let m = mask(self.len_bits);
        let p = u128::from_be_bytes(self.bytes) & m;
        Ipv6Addr::from(p | (u128::from(iid_source) & !m))
    }

    /// Whether `addr` lies inside this prefix (the first `len_bits` bits match).
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        let m = mask(self.len_bits);
        u128::from_be_bytes(self.bytes) & m == u128::from(addr) & m
    }

    /// Whether two prefixes denote the same network (same length, same bits
    /// up to that length; padding bits are not compared).
    pub fn same_network(&self, other: &Prefix) -> bool {
        self.to_network() == other.to_network()
    }
}

/// Netmask with the top `len_bits` bits set (`len_bits` saturates at 128).
pub(crate) fn mask(len_bits: u8) -> u128 {
    match len_bits {
        0 => 0,
        n if n >= 128 => u128::MAX,
        n => u128::MAX << (128 - u32::from(n)),
    }
}

/// The option data of a PREFIX_SYN or PREFIX_ACK option: a list of prefixes,
/// each preceded by its bit length, packed without alignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PrefixOption {
    prefixes: Vec<Prefix>,
}

impl PrefixOption {
    /// A prefix list; fails if it would not fit in 255 bytes of option data.
    pub fn new(prefixes: Vec<Prefix>) -> Result<Self, WireError> {
        let len: usize = prefixes.iter().map(Prefix::encoded_len).sum();
        if len > MAX_OPTION_DATA {
            return Err(WireError::OptionTooLong(len));
        }
        Ok(Self { prefixes })
    }

    /// The prefixes in the order the sender listed them (its preference order).
    pub fn prefixes(&self) -> &[Prefix] {
        &self.prefixes
    }

    /// Length of the option data in bytes (at most 255).
    pub fn data_len(&self) -> usize {
        self.prefixes.iter().map(Prefix::encoded_len).sum()
    }

    /// Parses option data (the bytes after the type and length octets).
    pub fn parse(data: &[u8]) -> Result<Self, WireError> {
        if data.len() > MAX_OPTION_DATA {
            return Err(WireError::OptionTooLong(data.len()));
        }
        let mut prefixes = Vec::new();
        let mut rest = data;
        while let Some((&len_bits, tail)) = rest.split_first() {
            if len_bits > MAX_PREFIX_BITS {
                return Err(WireError::PrefixTooLong(len_bits));
            }
            let n = bytes_for_bits(len_bits);
            if tail.len() < n {
                return Err(WireError::PrefixOverrun { len_bits });
            }
            let (bytes, after) = tail.split_at(n);
            prefixes.push(Prefix::new(len_bits, bytes)?);
            rest = after;
        }
        Ok(Self { prefixes })
    }

    /// Appends the option data (not the type/length octets) to `out`.
    pub fn emit_data(&self, out: &mut Vec<u8>) {
        for p in &self.prefixes {
            out.push(p.len_bits);
            out.extend_from_slice(p.wire_bytes());
        }
    }
}

/// One TLV option of a destination options header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestOption {
    /// One octet of padding (type 0, no length octet).
    Pad1,
    /// PadN carrying this many zero data octets (the option is `2 + n` bytes).
    PadN(u8),
    /// PREFIX_SYN (type 0x0B): the sender's alternative prefixes.
    PrefixSyn(PrefixOption),
    /// PREFIX_ACK (type 0x0C): echo of the PREFIX_SYN received from the peer.
    PrefixAck(PrefixOption),
    /// Any other option, kept verbatim.
    Unknown {
        /// Option type octet.
        ty: u8,
        /// Option data.
        data: Vec<u8>,
    },
    /// A PREFIX_SYN or PREFIX_ACK option *after the first one of its kind*
    /// whose data is not a well-formed prefix list, kept verbatim. Only the
    /// first option of each kind counts (thesis 4.3.2), so a later one is
    /// ignored whatever it holds rather than making the header an error.
    /// Only [`DestOptsHeader::parse`] produces it.
    Ignored {
        /// Option type octet ([`OPT_PREFIX_SYN`] or [`OPT_PREFIX_ACK`]).
        ty: u8,
        /// Option data as received.
        data: Vec<u8>,
    },
}

impl DestOption {
    /// Encoded length of the option in bytes (type and length octets included).
    pub fn encoded_len(&self) -> usize {
        match self {
            DestOption::Pad1 => 1,
            DestOption::PadN(n) => 2 + usize::from(*n),
            DestOption::PrefixSyn(p) | DestOption::PrefixAck(p) => 2 + p.data_len(),
            DestOption::Unknown { data, .. } | DestOption::Ignored { data, .. } => 2 + data.len(),
        }
    }

    /// The option type octet.
    pub fn option_type(&self) -> u8 {
        match self {
            DestOption::Pad1 => OPT_PAD1,
            DestOption::PadN(_) => OPT_PADN,
            DestOption::PrefixSyn(_) => OPT_PREFIX_SYN,
            DestOption::PrefixAck(_) => OPT_PREFIX_ACK,
            DestOption::Unknown { ty, .. } | DestOption::Ignored { ty, .. } => *ty,
        }
    }

    fn is_padding(&self) -> bool {
        matches!(self, DestOption::Pad1 | DestOption::PadN(_))
    }

    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            DestOption::Pad1 => out.push(OPT_PAD1),
            DestOption::PadN(n) => {
                out.push(OPT_PADN);
                out.push(*n);
                out.extend(std::iter::repeat_n(0u8, usize::from(*n)));
            }
            DestOption::PrefixSyn(p) | DestOption::PrefixAck(p) => {
                out.push(self.option_type());
                // `PrefixOption` guarantees data_len() <= 255.
                out.push(u8::try_from(p.data_len()).unwrap_or(u8::MAX));
                p.emit_data(out);
            }
            DestOption::Unknown { ty, data } | DestOption::Ignored { ty, data } => {
                out.push(*ty);
                out.push(u8::try_from(data.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(data);
            }
        }
    }
}

/// The two high-order "action" bits of an option type (RFC 8200 4.2):
/// `0` skip, `1` discard, `2` discard + ICMP, `3` discard + ICMP unless multicast.
pub fn option_action(ty: u8) -> u8 {
    ty >> 6
}

/// The third-highest "change en route" bit of an option type.
pub fn option_may_change(ty: u8) -> bool {
    ty & 0x20 != 0
}

/// An IPv6 destination options extension header.
///
/// Invariant: the options encode to a whole number of 8-octet units including
/// the two header octets, and to at most 2048 bytes, so
/// [`DestOptsHeader::hdr_ext_len`] is always exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DestOptsHeader {
    next_header: u8,
    options: Vec<DestOption>,
}

impl DestOptsHeader {
    /// Builds a header carrying `options` (which must not contain padding;
    /// unknown options are kept), followed by the Pad1/PadN needed to reach a
    /// multiple of 8 bytes. Options must also individually fit (an
    /// `Unknown` option's data at most 255 bytes).
    pub fn new(next_header: u8, options: Vec<DestOption>) -> Result<Self, WireError> {
        let mut len = 2usize;
        for o in &options {
            if o.is_padding() {
                return Err(WireError::ExplicitPadding);
            }
            if matches!(o, DestOption::Ignored { .. }) {
                return Err(WireError::ExplicitIgnored);
            }
            if let DestOption::Unknown { ty, data } = o {
                if matches!(*ty, OPT_PAD1 | OPT_PADN | OPT_PREFIX_SYN | OPT_PREFIX_ACK) {
                    return Err(WireError::ReservedUnknownType(*ty));
                }
                if data.len() > MAX_OPTION_DATA {
                    return Err(WireError::OptionTooLong(data.len()));
                }
            }
            len += o.encoded_len();
        }
        let pad = (8 - len % 8) % 8;
        let total = len + pad;
        if total > MAX_HEADER_LEN {
            return Err(WireError::HeaderTooLong(total));
        }
        let mut options = options;
        match pad {
            0 => {}
            1 => options.push(DestOption::Pad1),
            // pad in 2..=7 -> PadN with pad - 2 data octets
            n => options.push(DestOption::PadN(u8::try_from(n - 2).unwrap_or(0))),
        }
        Ok(Self {
            next_header,
            options,
        })
    }

    /// Header for an outgoing segment: PREFIX_SYN if `syn` is given, then
    /// PREFIX_ACK if `ack` is given (a SYN+ACK carries both, thesis 5.2.3),
    /// then padding.
    pub fn with_prefixes(
        next_header: u8,
        syn: Option<PrefixOption>,
        ack: Option<PrefixOption>,
    ) -> Result<Self, WireError> {
        let mut v = Vec::with_capacity(2);
        if let Some(s) = syn {
            v.push(DestOption::PrefixSyn(s));
        }
        if let Some(a) = ack {
            v.push(DestOption::PrefixAck(a));
        }
        Self::new(next_header, v)
    }

    /// The Next Header field.
    pub fn next_header(&self) -> u8 {
        self.next_header
    }

    /// Replaces the Next Header field.
    pub fn set_next_header(&mut self, nh: u8) {
        self.next_header = nh;
    }

    /// All options in wire order, padding included.
    pub fn options(&self) -> &[DestOption] {
        &self.options
    }

    /// Encoded length in bytes (a multiple of 8, at most 2048).
    pub fn len(&self) -> usize {
        2 + self
            .options
            .iter()
            .map(DestOption::encoded_len)
            .sum::<usize>()
    }

    /// Always false: a header is at least 8 bytes long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The Hdr Ext Len field: length in 8-octet units, not counting the first 8.
    pub fn hdr_ext_len(&self) -> u8 {
        u8::try_from((self.len() / 8).saturating_sub(1)).unwrap_or(u8::MAX)
    }

    /// The first PREFIX_SYN option; later PREFIX_SYN options are ignored
    /// (thesis 4.3.2), whatever they hold (a malformed one is parsed as
    /// [`DestOption::Ignored`]).
    pub fn prefix_syn(&self) -> Option<&PrefixOption> {
        self.options.iter().find_map(|o| match o {
            DestOption::PrefixSyn(p) => Some(p),
            _ => None,
        })
    }

    /// The first PREFIX_ACK option; later PREFIX_ACK options are ignored,
    /// whatever they hold.
    pub fn prefix_ack(&self) -> Option<&PrefixOption> {
        self.options.iter().find_map(|o| match o {
            DestOption::PrefixAck(p) => Some(p),
            _ => None,
        })
    }

    /// Whether a Linux receiver processes a packet carrying this header
    /// rather than dropping it (`ip6_parse_tlv`): no run of padding longer
    /// than [`MAX_PADDING_RUN`] octets, at most [`LINUX_MAX_DST_OPTS`]
    /// options other than padding, and every such option has the action
    /// bits `00` (skip if unknown; PREFIX_SYN and PREFIX_ACK do). Framing
    /// and non-zero PadN data, which Linux drops too, are already
    /// [`DestOptsHeader::parse`] errors. A packet that fails this never
    /// reaches the receiver's TCP, so nothing may be learned from it: the
    /// engine and the tc BPF programs ignore its options (counted as
    /// malformed).
    pub fn deliverable(&self) -> bool {
        let mut run = 0usize;
        let mut tlvs = 0usize;
        for o in &self.options {
            match o {
                DestOption::Pad1 => run += 1,
                DestOption::PadN(n) => run += 2 + usize::from(*n),
                other => {
                    tlvs += 1;
                    if tlvs > LINUX_MAX_DST_OPTS || option_action(other.option_type()) != 0 {
                        return false;
                    }
                    run = 0;
                }
            }
            if run > MAX_PADDING_RUN {
                return false;
            }
        }
        true
    }

    /// Parses a destination options header from the start of `buf`. Returns
    /// the header and the number of bytes it occupies; bytes after it are not
    /// looked at.
    ///
    /// Errors: the header or an option's TLV runs past the end, a PadN
    /// carries non-zero data, or the *first* PREFIX_SYN or the *first*
    /// PREFIX_ACK option is not a well-formed prefix list. A later PREFIX
    /// option of a kind already seen is ignored (thesis 4.3.2): kept as
    /// [`DestOption::PrefixSyn`]/[`DestOption::PrefixAck`] if it parses,
    /// as [`DestOption::Ignored`] if not.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), WireError> {
        let (&next_header, rest) = buf.split_first().ok_or(WireError::Truncated {
            needed: 2,
            available: buf.len(),
        })?;
        let &ext_len = rest.first().ok_or(WireError::Truncated {
            needed: 2,
            available: buf.len(),
        })?;
        let total = (usize::from(ext_len) + 1) * 8;
        let hdr = buf.get(..total).ok_or(WireError::Truncated {
            needed: total,
            available: buf.len(),
        })?;
        let mut options = Vec::new();
        let mut off = 2usize;
        let (mut seen_syn, mut seen_ack) = (false, false);
        while let Some(&ty) = hdr.get(off) {
            if ty == OPT_PAD1 {
                options.push(DestOption::Pad1);
                off += 1;
                continue;
            }
            let &len = hdr
                .get(off + 1)
                .ok_or(WireError::OptionOverrun { offset: off })?;
            let start = off + 2;
            let end = start + usize::from(len);
            let data = hdr
                .get(start..end)
                .ok_or(WireError::OptionOverrun { offset: off })?;
            let opt = match ty {
                OPT_PADN => {
                    if data.iter().any(|&b| b != 0) {
                        return Err(WireError::NonZeroPadding { offset: off });
                    }
                    DestOption::PadN(len)
                }
                OPT_PREFIX_SYN | OPT_PREFIX_ACK => {
                    let seen = if ty == OPT_PREFIX_SYN {
                        &mut seen_syn
                    } else {
                        &mut seen_ack
                    };
                    let first = !std::mem::replace(seen, true);
                    match PrefixOption::parse(data) {
                        Ok(p) if ty == OPT_PREFIX_SYN => DestOption::PrefixSyn(p),
                        Ok(p) => DestOption::PrefixAck(p),
                        Err(e) if first => return Err(e),
                        Err(_) => DestOption::Ignored {
                            ty,
                            data: data.to_vec(),
                        },
                    }
                }
                _ => DestOption::Unknown {
                    ty,
                    data: data.to_vec(),
                },
            };
            options.push(opt);
            off = end;
        }
        Ok((
            Self {
                next_header,
                options,
            },
            total,
        ))
    }

    /// Appends the encoded header to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.next_header);
        out.push(self.hdr_ext_len());
        for o in &self.options {
            o.emit(out);
        }
    }

    /// The encoded header as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        self.emit(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Figure 4.5 of the thesis: a destination options header carrying one
    /// PREFIX_SYN with two 64-bit prefixes, followed by a PadN filling the
    /// last two bytes, three 8-octet units in all. The prefixes are the two
    /// networks of the thesis's demonstration (section 6.3).
    #[test]
    fn thesis_figure_4_5_bytes() {
        let p1 = Prefix::from_addr(a("3ffe:2a00:100:3100::f00d:cafe"), 64).unwrap();
        let p2 = Prefix::from_addr(a("3ffe:2a00:100:3200::f00d:cafe"), 64).unwrap();
        let opt = PrefixOption::new(vec![p1, p2]).unwrap();
        let hdr = DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(opt), None).unwrap();
        let expected: [u8; 24] = [
            0x06, 0x02, // Next Header = TCP, Hdr Ext Len = 2 (3 units)
            0x0B, 0x12, // PREFIX_SYN, option data length 18
            0x40, 0x3f, 0xfe, 0x2a, 0x00, 0x01, 0x00, 0x31, 0x00, // /64 3ffe:2a00:100:3100
            0x40, 0x3f, 0xfe, 0x2a, 0x00, 0x01, 0x00, 0x32, 0x00, // /64 3ffe:2a00:100:3200
            0x01, 0x00, // PadN with no data: fills the last two bytes
        ];
        assert_eq!(hdr.to_bytes(), expected);
        assert_eq!(hdr.hdr_ext_len(), 2);
        assert_eq!(hdr.len(), 24);
        let (parsed, used) = DestOptsHeader::parse(&expected).unwrap();
        assert_eq!(used, 24);
        assert_eq!(parsed, hdr);
        assert_eq!(parsed.prefix_syn().unwrap().prefixes().len(), 2);
        assert!(parsed.prefix_ack().is_none());
    }

    #[test]
    fn option_types_match_table_4_2() {
        for ty in [OPT_PREFIX_SYN, OPT_PREFIX_ACK] {
            assert_eq!(option_action(ty), 0, "skip if unknown");
            assert!(!option_may_change(ty), "does not change en route");
        }
        assert_eq!(OPT_PREFIX_SYN & 0x1f, 0b01011);
        assert_eq!(OPT_PREFIX_ACK & 0x1f, 0b01100);
    }

    #[test]
    fn odd_prefix_is_padded_with_host_identifier_bits() {
        // 30-bit prefix: 4 bytes, the last 2 bits from the address itself.
        let addr = a("2001:db8:ffff:ffff::1");
        let p = Prefix::from_addr(addr, 30).unwrap();
        assert_eq!(p.wire_bytes(), &[0x20, 0x01, 0x0d, 0xb8]);
        let addr2 = a("2001:dbb:ffff::1");
        let p2 = Prefix::from_addr(addr2, 30).unwrap();
        // 0x0dbb: low two bits 11 belong to the host part and are carried.
        assert_eq!(p2.wire_bytes(), &[0x20, 0x01, 0x0d, 0xbb]);
        assert_eq!(p2.to_network(), (a("2001:db8::"), 30));
        assert!(p.same_network(&p2));
        let mut data = Vec::new();
        PrefixOption::new(vec![p2]).unwrap().emit_data(&mut data);
        assert_eq!(data, [30, 0x20, 0x01, 0x0d, 0xbb]);
        // Combining takes the bits after the true length from the peer address.
        assert_eq!(p2.combine(a("::1:2:3:4")), a("2001:db8::1:2:3:4"));
        assert!(p2.contains(a("2001:dba::7")));
        assert!(!p2.contains(a("2001:dbc::7")));
    }

    #[test]
    fn padding_choice() {
        let p = Prefix::from_addr(a("2001:db8::1"), 64).unwrap();
        // 2 + (2 + 9) = 13 -> PadN with 1 data byte (3 bytes) -> 16.
        let h = DestOptsHeader::with_prefixes(6, Some(PrefixOption::new(vec![p]).unwrap()), None)
            .unwrap();
        assert_eq!(h.len(), 16);
        assert_eq!(h.options().last(), Some(&DestOption::PadN(1)));
        // 2 + (2 + 3) = 7 -> Pad1.
        let p = Prefix::from_addr(a("2001:db8::1"), 16).unwrap();
        let h = DestOptsHeader::with_prefixes(6, Some(PrefixOption::new(vec![p]).unwrap()), None)
            .unwrap();
        assert_eq!(h.len(), 8);
        assert_eq!(h.options().last(), Some(&DestOption::Pad1));
        // Empty PREFIX_SYN: 2 + 2 = 4 -> PadN(2).
        let h = DestOptsHeader::with_prefixes(6, Some(PrefixOption::default()), None).unwrap();
        assert_eq!(h.to_bytes(), [6, 0, 0x0B, 0, 1, 2, 0, 0]);
    }

    #[test]
    fn syn_ack_carries_both_and_later_duplicates_ignored() {
        let p1 = Prefix::from_addr(a("2001:db8:1::1"), 48).unwrap();
        let p2 = Prefix::from_addr(a("2001:db8:2::1"), 48).unwrap();
        let o1 = PrefixOption::new(vec![p1]).unwrap();
        let o2 = PrefixOption::new(vec![p2]).unwrap();
        let h = DestOptsHeader::new(
            6,
            vec![
                DestOption::PrefixSyn(o1.clone()),
                DestOption::PrefixAck(o2.clone()),
                DestOption::PrefixSyn(o2.clone()),
                DestOption::PrefixAck(o1.clone()),
            ],
        )
        .unwrap();
        let (p, _) = DestOptsHeader::parse(&h.to_bytes()).unwrap();
        assert_eq!(p.prefix_syn(), Some(&o1));
        assert_eq!(p.prefix_ack(), Some(&o2));
    }

    #[test]
    fn limits_and_errors() {
        // 28 /64 prefixes fit (28 * 9 = 252), 29 do not.
        let p = Prefix::from_addr(a("2001:db8::1"), 64).unwrap();
        assert!(PrefixOption::new(vec![p; 28]).is_ok());
        assert_eq!(
            PrefixOption::new(vec![p; 29]),
            Err(WireError::OptionTooLong(261))
        );
        assert_eq!(
            Prefix::new(129, &[0; 17]),
            Err(WireError::PrefixTooLong(129))
        );
        assert_eq!(
            PrefixOption::parse(&[64, 1, 2]),
            Err(WireError::PrefixOverrun { len_bits: 64 })
        );
        assert_eq!(
            PrefixOption::parse(&[200]),
            Err(WireError::PrefixTooLong(200))
        );
        assert!(matches!(
            DestOptsHeader::parse(&[6, 1, 0, 0, 0, 0, 0, 0]),
            Err(WireError::Truncated { needed: 16, .. })
        ));
        assert_eq!(
            DestOptsHeader::parse(&[6, 0, 1, 5, 0, 0, 0, 0]),
            Err(WireError::OptionOverrun { offset: 2 })
        );
        assert_eq!(
            DestOptsHeader::parse(&[6, 0, 0, 0, 0, 0, 0, 0x0B]),
            Err(WireError::OptionOverrun { offset: 7 })
        );
        assert_eq!(
            DestOptsHeader::parse(&[6, 0, 1, 4, 0, 0, 1, 0]),
            Err(WireError::NonZeroPadding { offset: 2 })
        );
        assert_eq!(
            DestOptsHeader::new(6, vec![DestOption::Pad1]),
            Err(WireError::ExplicitPadding)
        );
        assert_eq!(
            DestOptsHeader::new(
                6,
                vec![DestOption::Unknown {
                    ty: OPT_PREFIX_SYN,
                    data: vec![]
                }]
            ),
            Err(WireError::ReservedUnknownType(OPT_PREFIX_SYN))
        );
        assert_eq!(
            DestOptsHeader::new(
                6,
                vec![DestOption::Unknown {
                    ty: 0x3e,
                    data: vec![0; 256]
                }]
            ),
            Err(WireError::OptionTooLong(256))
        );
        // 8 options of 255 data bytes do not fit into 2048 bytes.
        let big = DestOption::Unknown {
            ty: 0x3e,
            data: vec![0; 255],
        };
        assert_eq!(
            DestOptsHeader::new(6, vec![big; 8]),
            Err(WireError::HeaderTooLong(2064))
        );
        // Unknown options survive verbatim.
        let bytes = [59, 0, 0x3e, 2, 0xaa, 0xbb, 0, 0];
        let (h, _) = DestOptsHeader::parse(&bytes).unwrap();
        assert_eq!(
            h.options().first(),
            Some(&DestOption::Unknown {
                ty: 0x3e,
                data: vec![0xaa, 0xbb]
            })
        );
        assert_eq!(h.to_bytes(), bytes);
    }

    /// Only the first option of each kind counts: a later PREFIX_SYN or
    /// PREFIX_ACK is ignored even when its data is malformed, while a
    /// malformed first one makes the header an error.
    #[test]
    fn later_malformed_prefix_options_are_ignored() {
        let p = Prefix::from_addr(a("2001:db8:1::1"), 64).unwrap();
        let mut first = vec![OPT_PREFIX_SYN, 9, 64];
        first.extend_from_slice(&p.wire_bytes()[..8]);
        // PREFIX_SYN, then a PREFIX_SYN with a 200-bit prefix, then a
        // PREFIX_ACK, then a PREFIX_ACK whose prefix overruns its data.
        let mut b = vec![6, 0];
        b.extend_from_slice(&first);
        b.extend_from_slice(&[OPT_PREFIX_SYN, 2, 200, 1]);
        b.extend_from_slice(&[OPT_PREFIX_ACK, 0]);
        b.extend_from_slice(&[OPT_PREFIX_ACK, 3, 64, 1, 2]);
        assert_eq!(b.len(), 24);
        b[1] = 2;
        let (h, used) = DestOptsHeader::parse(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(h.prefix_syn().unwrap().prefixes(), &[p]);
        assert_eq!(h.prefix_ack(), Some(&PrefixOption::default()));
        assert_eq!(
            h.options()[1],
            DestOption::Ignored {
                ty: OPT_PREFIX_SYN,
                data: vec![200, 1]
            }
        );
        assert_eq!(
            h.options()[3],
            DestOption::Ignored {
                ty: OPT_PREFIX_ACK,
                data: vec![64, 1, 2]
            }
        );
        assert_eq!(h.to_bytes(), b, "ignored options are kept verbatim");
        assert!(h.deliverable());
        // The same malformed options first: errors.
        assert_eq!(
            DestOptsHeader::parse(&[6, 0, OPT_PREFIX_SYN, 2, 200, 1, 1, 0]),
            Err(WireError::PrefixTooLong(200))
        );
        assert_eq!(
            DestOptsHeader::parse(&[6, 0, OPT_PREFIX_ACK, 2, 64, 1, 1, 0]),
            Err(WireError::PrefixOverrun { len_bits: 64 })
        );
        // Ignored options cannot be built for sending.
        assert_eq!(
            DestOptsHeader::new(
                6,
                vec![DestOption::Ignored {
                    ty: OPT_PREFIX_SYN,
                    data: vec![200]
                }]
            ),
            Err(WireError::ExplicitIgnored)
        );
    }
    /// The tc BPF program checks received headers with the same limits.
    #[test]
    fn bpf_program_uses_the_same_receiver_limits() {
        let src = include_str!("../bpf/ptcp.bpf.c");
        assert!(src.contains(&format!("#define MAX_DST_OPTS {LINUX_MAX_DST_OPTS}\n")));
        assert!(src.contains(&format!("#define MAX_PAD_RUN {MAX_PADDING_RUN}\n")));
    }

    /// The Linux receiver's rules (`ip6_parse_tlv`): padding runs of at
    /// most 7 octets, at most 8 other options, all of them "skip if
    /// unknown".
    #[test]
    fn deliverable_follows_the_linux_receiver() {
        let ok = |b: &[u8]| DestOptsHeader::parse(b).unwrap().0.deliverable();
        // The engine's own headers are deliverable.
        let p = Prefix::from_addr(a("2001:db8:1::1"), 64).unwrap();
        let h = DestOptsHeader::with_prefixes(
            6,
            Some(PrefixOption::new(vec![p]).unwrap()),
            Some(PrefixOption::new(vec![p; 3]).unwrap()),
        )
        .unwrap();
        assert!(h.deliverable());
        // Seven padding octets pass, eight do not (Pad1s, or Pad1 + PadN).
        assert!(ok(&[6, 1, 0x3e, 5, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!ok(&[6, 1, 0x3e, 4, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!ok(&[6, 1, 0x3e, 4, 1, 2, 3, 4, 0, 0, 1, 4, 0, 0, 0, 0]));
        // Padding between options starts a new run.
        assert!(ok(&[6, 1, 1, 1, 0, 0x3e, 0, 1, 1, 0, 0x0B, 0, 1, 2, 0, 0]));
        // An unknown option with action bits other than 00 is dropped.
        assert!(!ok(&[6, 0, 0x7e, 0, 1, 2, 0, 0]));
        assert!(!ok(&[6, 0, 0xc9, 0, 1, 2, 0, 0]));
        // Nine options (empty PREFIX_ACKs after the first count too).
        let mut b = vec![6, 2];
        for _ in 0..9 {
            b.extend_from_slice(&[OPT_PREFIX_ACK, 0]);
        }
        b.extend_from_slice(&[1, 2, 0, 0]);
        assert!(!ok(&b));
        b[2..4].copy_from_slice(&[1, 0]);
        assert!(ok(&b), "eight options and padding");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn prefix() -> impl Strategy<Value = Prefix> {
            (0u8..=128, any::<u128>())
                .prop_map(|(l, a)| Prefix::from_addr(Ipv6Addr::from(a), l).unwrap())
        }

        fn prefix_option() -> impl Strategy<Value = PrefixOption> {
            proptest::collection::vec(prefix(), 0..16).prop_map(|mut v| {
                while v.iter().map(Prefix::encoded_len).sum::<usize>() > MAX_OPTION_DATA {
                    v.pop();
                }
                PrefixOption::new(v).unwrap()
            })
        }

        fn option() -> impl Strategy<Value = DestOption> {
            prop_oneof![
                prefix_option().prop_map(DestOption::PrefixSyn),
                prefix_option().prop_map(DestOption::PrefixAck),
                (2u8..=255, proptest::collection::vec(any::<u8>(), 0..40)).prop_map(
                    |(ty, data)| DestOption::Unknown {
                        // Types 0, 1, 0x0B and 0x0C have their own variants.
                        ty: if matches!(ty, 0x0B | 0x0C) {
                            ty + 0x40
                        } else {
                            ty
                        },
                        data,
                    }
                ),
            ]
        }

        proptest! {
            #[test]
            fn header_roundtrip(
                nh in any::<u8>(),
                opts in proptest::collection::vec(option(), 0..6),
            ) {
                let h = DestOptsHeader::new(nh, opts.clone()).unwrap();
                let bytes = h.to_bytes();
                prop_assert_eq!(bytes.len() % 8, 0);
                prop_assert_eq!(bytes.len(), h.len());
                prop_assert_eq!(usize::from(bytes[1]), bytes.len() / 8 - 1);
                let (p, used) = DestOptsHeader::parse(&bytes).unwrap();
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(&p, &h);
                prop_assert_eq!(&p.options()[..opts.len()], &opts[..]);
            }

            /// Any options followed by further PREFIX options with arbitrary
            /// data: the first PREFIX_SYN and PREFIX_ACK are those of the
            /// leading options, the rest are kept verbatim and the header
            /// re-emits to the same bytes.
            #[test]
            fn options_after_the_first_prefix_option_are_ignored(
                lead in proptest::collection::vec(option(), 1..4),
                trailing in proptest::collection::vec(
                    (prop_oneof![Just(OPT_PREFIX_SYN), Just(OPT_PREFIX_ACK)],
                     proptest::collection::vec(any::<u8>(), 0..30)),
                    0..4,
                ),
            ) {
                let mut lead = lead;
                lead.push(DestOption::PrefixSyn(PrefixOption::default()));
                lead.push(DestOption::PrefixAck(PrefixOption::default()));
                let base = DestOptsHeader::new(IPPROTO_TCP, lead).unwrap();
                let mut body = Vec::new();
                for o in base.options().iter().filter(|o| !o.is_padding()) {
                    o.emit(&mut body);
                }
                for (ty, data) in &trailing {
                    body.push(*ty);
                    body.push(data.len() as u8);
                    body.extend_from_slice(data);
                }
                let mut b = vec![IPPROTO_TCP, 0];
                b.extend_from_slice(&body);
                match (8 - b.len() % 8) % 8 {
                    0 => {}
                    1 => b.push(0),
                    n => {
                        b.extend_from_slice(&[1, (n - 2) as u8]);
                        b.resize(b.len() + n - 2, 0);
                    }
                }
                b[1] = (b.len() / 8 - 1) as u8;
                let (h, used) = DestOptsHeader::parse(&b).unwrap();
                prop_assert_eq!(used, b.len());
                prop_assert_eq!(h.prefix_syn(), base.prefix_syn());
                prop_assert_eq!(h.prefix_ack(), base.prefix_ack());
                prop_assert_eq!(h.to_bytes(), b);
                let (again, _) = DestOptsHeader::parse(&h.to_bytes()).unwrap();
                prop_assert_eq!(again, h);
            }

            #[test]
            fn prefix_conversions(addr in any::<u128>(), len in 0u8..=128, other in any::<u128>()) {
                let addr = Ipv6Addr::from(addr);
                let p = Prefix::from_addr(addr, len).unwrap();
                prop_assert_eq!(p.wire_bytes().len(), usize::from(len).div_ceil(8));
                prop_assert_eq!(p.wire_bytes(), &addr.octets()[..p.wire_bytes().len()]);
                // Combining the prefix with the same address gives it back.
                prop_assert_eq!(p.combine(addr), addr);
                prop_assert!(p.contains(addr));
                let (net, l) = p.to_network();
                prop_assert_eq!(l, len);
                prop_assert!(p.contains(net));
                let c = p.combine(Ipv6Addr::from(other));
                prop_assert!(p.contains(c));
                let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                prop_assert_eq!(u128::from(c) & host, other & host);
            }

            #[test]
            fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Ok((h, used)) = DestOptsHeader::parse(&bytes) {
                    prop_assert_eq!(h.to_bytes(), &bytes[..used]);
                }
                if let Ok(o) = PrefixOption::parse(&bytes) {
                    let mut out = Vec::new();
                    o.emit_data(&mut out);
                    prop_assert_eq!(out, bytes);
                }
            }

            #[test]
            fn parse_structured_noise(
                ext in 0u8..4,
                body in proptest::collection::vec(
                    prop_oneof![Just(0u8), Just(1), Just(0x0B), Just(0x0C), Just(64), any::<u8>()],
                    0..40,
                ),
            ) {
                // Headers whose length field is consistent, filled with option-ish bytes.
                let total = (usize::from(ext) + 1) * 8;
                let mut b = vec![6, ext];
                b.extend(body.iter().copied().cycle().take(total - 2));
                b.resize(total, 0);
                if let Ok((h, used)) = DestOptsHeader::parse(&b) {
                    prop_assert_eq!(used, total);
                    prop_assert_eq!(h.to_bytes(), b);
                }
            }
        }
    }
}
