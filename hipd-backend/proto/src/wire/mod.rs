//! # HIPv2 wire codec
//!
//! Parses untrusted bytes into typed values and emits them again, for the
//! packets of RFC 7401 (I1, R1, I2, R2, UPDATE, NOTIFY, CLOSE, CLOSE_ACK) and
//! the parameters of RFC 7402 (ESP), 8046/8047 (LOCATOR_SET), 8003/8004
//! (registration, rendezvous) and 5770/9028 (NAT traversal). Nothing here
//! panics on any input: every read is bounds-checked and every length is
//! validated before use.
//!
//! Layers, in the style of smoltcp:
//! * [`Packet`] — a zero-copy view over a buffer with checked header
//!   accessors and a parameter iterator yielding [`RawParam`] views;
//! * [`Param`] — one typed value per known parameter, `Param::Unknown`
//!   for unknown non-critical types (kept verbatim for re-emission);
//! * [`PacketRepr`] — the owned, typed packet with `parse`, `emit` and
//!   `buffer_len`;
//! * [`checksum`] and [`ChecksumMode`] — the pseudo-header checksum;
//! * [`classify_udp`] — UDP-encapsulation demultiplexing.
//!
//! ## Example
//!
//! ```
//! use hip_proto::wire::{ChecksumMode, DhGroupId, Packet, PacketRepr, PacketType, Param};
//!
//! let i1 = PacketRepr::new(
//!     PacketType::I1,
//!     "2001:20::1".parse().unwrap(),
//!     "2001:20::2".parse().unwrap(),
//! )
//! .with(Param::DhGroupList(vec![DhGroupId::Modp1536, DhGroupId::NistP384]));
//! let mode = ChecksumMode::Ipv6 {
//!     src: "2001:db8::1".parse().unwrap(),
//!     dst: "2001:db8::2".parse().unwrap(),
//! };
//! let bytes = i1.to_bytes(mode).unwrap();
//! let packet = Packet::new_checked(&bytes[..]).unwrap();
//! assert!(packet.verify_checksum(mode));
//! assert_eq!(PacketRepr::parse(&packet).unwrap(), i1);
//! ```
//!
//! ## Decisions on points the standards leave open (kept stable)
//!
//! * **Fixed header bits.** RFC 7401 §5.1: the fixed bits (P = 0 in byte
//!   2, S = 1 in byte 3) are ignored on receive. [`Packet::check`] accepts
//!   any value of them (and of RES); the Packet Type is the low 7 bits of
//!   byte 2. Emitted packets always carry P = 0, S = 1, RES = 0.
//! * **Version.** Only version 2 is accepted ([`WireError::BadVersion`]).
//! * **Header Length.** Must be ≥ 4 and `(HL + 1)·8` must fit the buffer;
//!   bytes after the HIP packet are allowed and exposed by
//!   [`Packet::trailing_bytes`] (data after a Next Header other than 59).
//!   Emitted packets always use Next Header 59.
//! * **Controls.** Only the A bit is kept ([`PacketRepr::anonymous`]);
//!   other bits are ignored on receive and zero on send. The codec accepts
//!   the A bit on every packet type (digest §22 item 12: RFC 7401 §10
//!   allows it beyond R1/I2); policy belongs to the engine.
//! * **Ordering.** Parameters must be in ascending type order; a repeated
//!   type is allowed (for every type) only immediately after itself, which
//!   the ascending rule already implies. The packet listings in RFC 7401
//!   §5.3 and RFC 7402 that are out of numeric order (digest §22 item 5)
//!   are ignored: the emitter sorts by type (stably), so for example an R1
//!   carries DH_GROUP_LIST (511) before DIFFIE_HELLMAN (513) and a NOTIFY
//!   carries HOST_ID (705) before NOTIFICATION (832). How many of a type
//!   may appear (one DIFFIE_HELLMAN, one REG_REQUEST, …) is the engine's
//!   rule, not the codec's.
//! * **Unknown parameters.** Unknown critical types stop parsing with
//!   [`WireError::UnsupportedCriticalParam`] carrying the type (the engine
//!   answers NOTIFY UNSUPPORTED_CRITICAL_PARAMETER_TYPE); unknown
//!   non-critical ones are kept as [`Param::Unknown`]. The raw iterator
//!   ([`Packet::params`]) yields every TLV without judging types.
//! * **Padding** is written as zeros and not checked on receive.
//! * **Lists.** HIP_CIPHER, ESP_TRANSFORM and NAT_TRAVERSAL_MODE keep every
//!   entry received (the "receiver keeps the first 6" rule is the engine's).
//!   HIT_SUITE_LIST is kept as raw bytes; [`Param::hit_suites`] reports
//!   entries with a non-zero low nibble as errors for the engine to act on.
//! * **PUZZLE / SOLUTION lengths** (digest §22 item 7): the per-parameter
//!   definitions win: PUZZLE is 4 + |#I|, SOLUTION 4 + |#I| + |#J| with #I
//!   and #J of equal length. The codec does not tie |#I| to a HIT suite.
//! * **DIFFIE_HELLMAN** carries exactly one group and public value (v2);
//!   bytes after the public value are malformed (the v1 two-value form).
//! * **HOST_ID** Length must equal 6 + HI Length + DI Length exactly. The
//!   HI bytes are opaque here (ECDSA point format, digest §22 item 3, is
//!   the crypto module's business); [`HostId::curve_label`] reads the
//!   leading curve label.
//! * **ENCRYPTED** keeps IV and ciphertext together because the IV length
//!   depends on the negotiated cipher ([`Encrypted::split_iv`]); the
//!   decrypted TLVs are parsed with [`parse_params`] after the caller has
//!   removed the cipher padding.
//! * **LOCATOR_SET** (digest §22 item 11): the per-type Locator Length wins
//!   over the RFC 8046 figure: type 0 is 4 words (16 bytes), type 1 is 5
//!   words (SPI + address), type 2 is 7 words (RFC 5770/9028); other types
//!   are kept verbatim. A wrong length for a known type is malformed. The
//!   7 reserved bits next to P are ignored on receive and sent as zero.
//! * **NOMINATE** (RFC 9028) is kept as its 32-bit field; CERT uses the RFC
//!   8002 layout (group, count, id, type, certificate) with an opaque
//!   certificate.
//! * **MAC / signature inputs** (RFC 7401 §6.4, digest §11):
//!   [`Packet::mac_input`] cuts the packet before the first parameter whose
//!   type is ≥ the MAC/signature type (it need not be present yet, so the
//!   sender can use it too), rewrites Header Length to the cut length and
//!   zeroes the Checksum. [`Packet::mac2_input`] appends the Responder's
//!   HOST_ID TLV exactly as sent in R1 (padding included).
//!   [`Packet::signature2_input`] additionally zeroes the Receiver's HIT
//!   and the PUZZLE's Opaque and #I.
//! * **Checksum** over IPv6 or IPv4 pseudo-headers with the real IP
//!   addresses; zero under UDP encapsulation ([`ChecksumMode::Udp`]).
//!   [`PacketRepr::parse`] does not verify it; the caller does, with
//!   [`Packet::verify_checksum`], because only it knows the addresses.
//! * **UDP demultiplexing**: see [`udp`]. HIP-level keepalives (RFC 9028
//!   NOTIFY NAT_KEEPALIVE, the RECOMMENDED form; digest §22 item 9) are HIP
//!   packets; the single 0xFF byte of RFC 3948 is classified as a
//!   keepalive, and STUN (RFC 5770 legacy mode) by its magic cookie.
//! * **Identifier enums** are open (`Unknown(v)`) and compare by raw value.

pub(crate) mod checksum;
pub mod consts;
mod cursor;
mod error;
mod hit;
mod packet;
mod param;
mod repr;
pub mod udp;

pub use checksum::{ChecksumMode, checksum};
pub use consts::{
    CandidateKind, DhGroupId, EcCurve, EdDsaCurve, EspSuiteId, HiAlgorithm, HipCipherId,
    HitSuiteId, NatMode, NotifyType, PacketType, RegFailureType, RegType, TrafficType, param_type,
};
pub use error::{Result, WireError};
pub use hit::{Hit, Lsi};
pub use packet::{Packet, RawParam, RawParamIter};
pub use param::{
    Cert, DiffieHellman, Encrypted, EspInfo, HostId, Locator, LocatorKind, NatLocator,
    Notification, Param, PeerPermission, Puzzle, R1Counter, RegFailed, RegInfo, RegLifetimeTypes,
    Signature, Solution, TLV_HEADER_LEN, TransportAddress, emit_params, hit_suite_list_byte,
    parse_params, reg_lifetime_encode, reg_lifetime_secs, tlv_total_len,
};
pub use repr::PacketRepr;
pub use udp::{UdpPayload, classify_udp};
