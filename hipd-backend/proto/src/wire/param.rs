//! Typed HIP parameters (TLVs) and their codecs.

use std::net::Ipv6Addr;

use super::consts::{
    CandidateKind, DhGroupId, EspSuiteId, HiAlgorithm, HipCipherId, HitSuiteId, NatMode,
    NotifyType, RegFailureType, RegType, TrafficType, locator_type, param_type as pt,
};
use super::cursor::{Reader, Writer};
use super::error::{Result, WireError};

/// Length of the TLV header (Type and Length).
pub const TLV_HEADER_LEN: usize = 4;

/// Total on-wire size of a TLV whose Contents are `contents_len` bytes:
/// `11 + Length - (Length + 3) % 8` (RFC 7401 §5.2.1), a multiple of 8.
pub const fn tlv_total_len(contents_len: usize) -> usize {
    (TLV_HEADER_LEN + contents_len + 7) & !7
}

/// ESP_INFO (type 65, RFC 7402 §5.1.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EspInfo {
    /// Byte offset in KEYMAT where the ESP keys start.
    pub keymat_index: u16,
    /// The SPI being replaced (0 at setup).
    pub old_spi: u32,
    /// The SPI the sender wants to receive on (0 deprecates).
    pub new_spi: u32,
}

/// R1_COUNTER (type 129).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct R1Counter {
    /// Reserved field, echoed verbatim from R1 into I2.
    pub reserved: u32,
    /// R1 generation counter.
    pub counter: u64,
}

/// One entry of a LOCATOR_SET (RFC 8046 §4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Locator {
    /// Traffic type the locator applies to.
    pub traffic_type: TrafficType,
    /// The P (preferred) bit.
    pub preferred: bool,
    /// Lifetime in seconds (0xFFFF_FFFF never expires).
    pub lifetime: u32,
    /// Locator type and value.
    pub kind: LocatorKind,
}

/// A Type-2 (NAT / ICE) locator of RFC 5770/9028.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatLocator {
    /// Transport port.
    pub port: u16,
    /// Transport protocol (17 = UDP).
    pub protocol: u8,
    /// Candidate kind.
    pub kind: CandidateKind,
    /// ICE priority.
    pub priority: u32,
    /// ESP SPI.
    pub spi: u32,
    /// IPv6 or IPv4-mapped address.
    pub addr: Ipv6Addr,
}

/// The value of a locator, by locator type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocatorKind {
    /// Type 0: an IPv6 or IPv4-mapped address (Locator Length 4).
    Address(Ipv6Addr),
    /// Type 1: ESP SPI and address (Locator Length 5).
    EspSpi {
        /// SPI.
        spi: u32,
        /// Address.
        addr: Ipv6Addr,
    },
    /// Type 2: NAT/ICE transport locator (Locator Length 7).
    Nat(NatLocator),
    /// Any other locator type, kept verbatim (length a multiple of 4, at
    /// most 1020 bytes). Types 0, 1 and 2 cannot be carried here.
    Unknown {
        /// Locator Type.
        locator_type: u8,
        /// Locator bytes.
        data: Vec<u8>,
    },
}

impl LocatorKind {
    /// The Locator Type number.
    pub fn locator_type(&self) -> u8 {
        match self {
            LocatorKind::Address(_) => locator_type::ADDRESS,
            LocatorKind::EspSpi { .. } => locator_type::ESP_SPI,
            LocatorKind::Nat(_) => locator_type::NAT,
            LocatorKind::Unknown { locator_type, .. } => *locator_type,
        }
    }

    /// The address carried, if the type has one.
    pub fn addr(&self) -> Option<Ipv6Addr> {
        match self {
            LocatorKind::Address(a) | LocatorKind::EspSpi { addr: a, .. } => Some(*a),
            LocatorKind::Nat(n) => Some(n.addr),
            LocatorKind::Unknown { .. } => None,
        }
    }

    fn data_len(&self) -> usize {
        match self {
            LocatorKind::Address(_) => 16,
            LocatorKind::EspSpi { .. } => 20,
            LocatorKind::Nat(_) => 28,
            LocatorKind::Unknown { data, .. } => data.len(),
        }
    }
}

impl Locator {
    fn wire_len(&self) -> usize {
        8 + self.kind.data_len()
    }
}

/// PUZZLE (type 257).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Puzzle {
    /// Difficulty #K.
    pub k: u8,
    /// Lifetime exponent: the puzzle lives 2^(lifetime - 32) seconds.
    pub lifetime: u8,
    /// Opaque data, copied into the SOLUTION.
    pub opaque: u16,
    /// Random #I (RHASH_len / 8 bytes).
    pub random_i: Vec<u8>,
}

impl Puzzle {
    /// Puzzle lifetime in seconds, 2^(Lifetime − 32).
    pub fn lifetime_secs(&self) -> f64 {
        2f64.powi(i32::from(self.lifetime) - 32)
    }
}

/// SOLUTION (type 321).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Solution {
    /// Difficulty #K.
    pub k: u8,
    /// Opaque data copied from the PUZZLE.
    pub opaque: u16,
    /// Random #I copied from the PUZZLE.
    pub random_i: Vec<u8>,
    /// Solution #J; same length as #I.
    pub solution_j: Vec<u8>,
}

/// DIFFIE_HELLMAN (type 513). HIPv2 carries exactly one group and public
/// value; the HIPv1 two-value form is rejected as malformed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiffieHellman {
    /// Group of the public value.
    pub group: DhGroupId,
    /// Public value (for ECDH groups x‖y without a 0x04 prefix).
    pub public_value: Vec<u8>,
}

/// ENCRYPTED (type 641). The IV length depends on the negotiated cipher,
/// so the codec keeps IV and ciphertext together; see
/// [`Encrypted::split_iv`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Encrypted {
    /// Reserved field.
    pub reserved: u32,
    /// IV followed by the ciphertext (which includes cipher padding).
    pub iv_and_ciphertext: Vec<u8>,
}

impl Encrypted {
    /// Splits the data into (IV, ciphertext) for an IV of `iv_len` bytes
    /// (16 for AES-CBC, 0 for NULL-ENCRYPT). `None` if too short.
    pub fn split_iv(&self, iv_len: usize) -> Option<(&[u8], &[u8])> {
        (iv_len <= self.iv_and_ciphertext.len()).then(|| self.iv_and_ciphertext.split_at(iv_len))
    }
}

/// HOST_ID (type 705).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostId {
    /// HI algorithm.
    pub algorithm: HiAlgorithm,
    /// Host Identity field (for ECDSA/EdDSA it starts with the curve label).
    pub host_identity: Vec<u8>,
    /// DI-Type (4 bits): 0 none, 1 FQDN, 2 NAI.
    pub di_type: u8,
    /// Domain Identifier (at most 4095 bytes).
    pub domain_identifier: Vec<u8>,
}

impl HostId {
    /// The leading u16 curve label of an ECDSA, ECDSA_LOW or EdDSA HI.
    pub fn curve_label(&self) -> Option<u16> {
        match self.algorithm {
            HiAlgorithm::Ecdsa | HiAlgorithm::EcdsaLow | HiAlgorithm::EdDsa => {
                let b = self.host_identity.get(..2)?;
                Some(u16::from_be_bytes([b[0], b[1]]))
            }
            _ => None,
        }
    }
}

/// CERT (type 768), in the RFC 8002 layout. The certificate is opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cert {
    /// CERT group.
    pub group: u8,
    /// Number of CERT parameters in the group.
    pub count: u8,
    /// Sequence number of this CERT within the group.
    pub id: u8,
    /// Certificate type.
    pub cert_type: u8,
    /// Certificate bytes.
    pub data: Vec<u8>,
}

/// NOTIFICATION (type 832).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    /// Notify Message Type.
    pub msg_type: NotifyType,
    /// Notification data.
    pub data: Vec<u8>,
}

/// REG_INFO (type 930, RFC 8003).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegInfo {
    /// Minimum lifetime (encoded, see [`reg_lifetime_secs`]).
    pub min_lifetime: u8,
    /// Maximum lifetime (encoded).
    pub max_lifetime: u8,
    /// Offered registration types.
    pub types: Vec<RegType>,
}

/// REG_REQUEST (932) and REG_RESPONSE (934), RFC 8003.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegLifetimeTypes {
    /// Lifetime (encoded; 0 cancels).
    pub lifetime: u8,
    /// Registration types.
    pub types: Vec<RegType>,
}

/// REG_FAILED (type 936, RFC 8003).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegFailed {
    /// Failure type.
    pub failure: RegFailureType,
    /// Registration types that failed.
    pub types: Vec<RegType>,
}

/// Registration lifetime in seconds: `2^((L − 64)/8)`; `None` for 0 (cancel).
pub fn reg_lifetime_secs(encoded: u8) -> Option<f64> {
    (encoded != 0).then(|| 2f64.powf((f64::from(encoded) - 64.0) / 8.0))
}

/// Smallest encoded registration lifetime covering at least `secs` seconds
/// (saturating at 255; 1 for non-positive input).
pub fn reg_lifetime_encode(secs: f64) -> u8 {
    if secs.is_nan() || secs <= 0.0 {
        return 1;
    }
    let l = (8.0 * secs.log2() + 64.0).ceil();
    l.clamp(1.0, 255.0) as u8
}

/// The 20-byte transport address of REG_FROM, RELAY_FROM, RELAY_TO,
/// RELAYED_ADDRESS and MAPPED_ADDRESS (RFC 5770/9028).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransportAddress {
    /// Port.
    pub port: u16,
    /// Protocol (17 = UDP, 0 = plain IP).
    pub protocol: u8,
    /// IPv6 or IPv4-mapped address.
    pub addr: Ipv6Addr,
}

/// PEER_PERMISSION (type 4680, RFC 9028).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerPermission {
    /// Relayed port.
    pub rport: u16,
    /// Peer port.
    pub pport: u16,
    /// Protocol.
    pub protocol: u8,
    /// Relayed address.
    pub raddr: Ipv6Addr,
    /// Peer address.
    pub paddr: Ipv6Addr,
    /// Outbound SPI.
    pub ospi: u32,
    /// Inbound SPI.
    pub ispi: u32,
}

/// HIP_SIGNATURE (61697) and HIP_SIGNATURE_2 (61633).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    /// Signature algorithm (= HI algorithm id).
    pub algorithm: HiAlgorithm,
    /// Signature bytes.
    pub signature: Vec<u8>,
}

/// A HIP parameter: one typed variant per parameter this codec knows, plus
/// `Unknown` for everything else (kept verbatim so it can be re-emitted).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Param {
    /// 65
    EspInfo(EspInfo),
    /// 129
    R1Counter(R1Counter),
    /// 193; zero entries deprecate every address.
    LocatorSet(Vec<Locator>),
    /// 257
    Puzzle(Puzzle),
    /// 321
    Solution(Solution),
    /// 385, Update ID.
    Seq(u32),
    /// 449, peer Update IDs (at least one).
    Ack(Vec<u32>),
    /// 511
    DhGroupList(Vec<DhGroupId>),
    /// 513
    DiffieHellman(DiffieHellman),
    /// 579
    HipCipher(Vec<HipCipherId>),
    /// 608
    NatTraversalMode(Vec<NatMode>),
    /// 610, Min Ta in milliseconds.
    TransactionPacing(u32),
    /// 641
    Encrypted(Encrypted),
    /// 705
    HostId(HostId),
    /// 715, raw bytes (suite id in the high nibble); see
    /// [`Param::hit_suites`].
    HitSuiteList(Vec<u8>),
    /// 768
    Cert(Cert),
    /// 832
    Notification(Notification),
    /// 897
    EchoRequestSigned(Vec<u8>),
    /// 930
    RegInfo(RegInfo),
    /// 932
    RegRequest(RegLifetimeTypes),
    /// 934
    RegResponse(RegLifetimeTypes),
    /// 936
    RegFailed(RegFailed),
    /// 950
    RegFrom(TransportAddress),
    /// 961
    EchoResponseSigned(Vec<u8>),
    /// 2049, transport format types (parameter type numbers).
    TransportFormatList(Vec<u16>),
    /// 4095
    EspTransform(Vec<EspSuiteId>),
    /// 4650
    RelayedAddress(TransportAddress),
    /// 4660
    MappedAddress(TransportAddress),
    /// 4680
    PeerPermission(PeerPermission),
    /// 4700
    CandidatePriority(u32),
    /// 4710; the 32-bit field is kept verbatim (reserved).
    Nominate(u32),
    /// 61505
    HipMac(Vec<u8>),
    /// 61569
    HipMac2(Vec<u8>),
    /// 61633
    HipSignature2(Signature),
    /// 61697
    HipSignature(Signature),
    /// 63425
    EchoResponseUnsigned(Vec<u8>),
    /// 63661
    EchoRequestUnsigned(Vec<u8>),
    /// 63998
    RelayFrom(TransportAddress),
    /// 64002
    RelayTo(TransportAddress),
    /// 65498, original source address of a relayed I1.
    From(Ipv6Addr),
    /// 65500
    RvsHmac(Vec<u8>),
    /// 65502
    ViaRvs(Vec<Ipv6Addr>),
    /// 65520
    RelayHmac(Vec<u8>),
    /// A parameter type this codec does not decode. On parse only
    /// non-critical types land here (unknown critical ones are an error).
    Unknown {
        /// Parameter type.
        ty: u16,
        /// Contents, without padding.
        contents: Vec<u8>,
    },
}

fn malformed(ty: u16, reason: &'static str) -> WireError {
    WireError::MalformedParam { ty, reason }
}

fn list_u16<T: From<u16>>(ty: u16, b: &[u8]) -> Result<Vec<T>> {
    if !b.len().is_multiple_of(2) {
        return Err(malformed(ty, "length is not a multiple of 2"));
    }
    Ok(b.chunks_exact(2)
        .map(|c| T::from(u16::from_be_bytes([c[0], c[1]])))
        .collect())
}

fn addr(r: &mut Reader<'_>, what: &'static str) -> Result<Ipv6Addr> {
    Ok(Ipv6Addr::from(r.array::<16>(what)?))
}

fn transport_address(ty: u16, b: &[u8]) -> Result<TransportAddress> {
    let mut r = Reader::new(b, ty);
    let port = r.u16("truncated port")?;
    let protocol = r.u8("truncated protocol")?;
    let _reserved = r.u8("truncated reserved byte")?;
    let a = addr(&mut r, "truncated address")?;
    r.finish("length is not 20")?;
    Ok(TransportAddress {
        port,
        protocol,
        addr: a,
    })
}

fn locators(ty: u16, b: &[u8]) -> Result<Vec<Locator>> {
    let mut r = Reader::new(b, ty);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let traffic_type = TrafficType::from(r.u8("truncated locator header")?);
        let lt = r.u8("truncated locator header")?;
        let words = r.u8("truncated locator header")?;
        let flags = r.u8("truncated locator header")?;
        let lifetime = r.u32("truncated locator lifetime")?;
        let data = r.bytes(usize::from(words) * 4, "locator runs past the parameter")?;
        let mut d = Reader::new(data, ty);
        let kind = match lt {
            locator_type::ADDRESS => {
                let a = addr(&mut d, "type-0 locator length is not 4")?;
                d.finish("type-0 locator length is not 4")?;
                LocatorKind::Address(a)
            }
            locator_type::ESP_SPI => {
                let spi = d.u32("type-1 locator length is not 5")?;
                let a = addr(&mut d, "type-1 locator length is not 5")?;
                d.finish("type-1 locator length is not 5")?;
                LocatorKind::EspSpi { spi, addr: a }
            }
            locator_type::NAT => {
                const W: &str = "type-2 locator length is not 7";
                let port = d.u16(W)?;
                let protocol = d.u8(W)?;
                let kind = CandidateKind::from(d.u8(W)?);
                let priority = d.u32(W)?;
                let spi = d.u32(W)?;
                let a = addr(&mut d, W)?;
                d.finish(W)?;
                LocatorKind::Nat(NatLocator {
                    port,
                    protocol,
                    kind,
                    priority,
                    spi,
                    addr: a,
                })
            }
            other => LocatorKind::Unknown {
                locator_type: other,
                data: data.to_vec(),
            },
        };
        out.push(Locator {
            traffic_type,
            preferred: flags & 1 == 1,
            lifetime,
            kind,
        });
    }
    Ok(out)
}

impl Param {
    /// Decodes the Contents of a parameter of type `ty`.
    ///
    /// Unknown critical types yield [`WireError::UnsupportedCriticalParam`];
    /// unknown non-critical types become [`Param::Unknown`].
    pub fn parse(ty: u16, contents: &[u8]) -> Result<Param> {
        let mut r = Reader::new(contents, ty);
        let p = match ty {
            pt::ESP_INFO => {
                let _reserved = r.u16("length is not 12")?;
                let keymat_index = r.u16("length is not 12")?;
                let old_spi = r.u32("length is not 12")?;
                let new_spi = r.u32("length is not 12")?;
                r.finish("length is not 12")?;
                Param::EspInfo(EspInfo {
                    keymat_index,
                    old_spi,
                    new_spi,
                })
            }
            pt::R1_COUNTER => {
                let reserved = r.u32("length is not 12")?;
                let counter = r.u64("length is not 12")?;
                r.finish("length is not 12")?;
                Param::R1Counter(R1Counter { reserved, counter })
            }
            pt::LOCATOR_SET => Param::LocatorSet(locators(ty, contents)?),
            pt::PUZZLE => {
                let k = r.u8("shorter than 4 bytes")?;
                let lifetime = r.u8("shorter than 4 bytes")?;
                let opaque = r.u16("shorter than 4 bytes")?;
                Param::Puzzle(Puzzle {
                    k,
                    lifetime,
                    opaque,
                    random_i: r.rest().to_vec(),
                })
            }
            pt::SOLUTION => {
                let k = r.u8("shorter than 4 bytes")?;
                let _reserved = r.u8("shorter than 4 bytes")?;
                let opaque = r.u16("shorter than 4 bytes")?;
                let rest = r.rest();
                if !rest.len().is_multiple_of(2) {
                    return Err(malformed(ty, "#I and #J differ in length"));
                }
                let (i, j) = rest.split_at(rest.len() / 2);
                Param::Solution(Solution {
                    k,
                    opaque,
                    random_i: i.to_vec(),
                    solution_j: j.to_vec(),
                })
            }
            pt::SEQ => {
                let v = r.u32("length is not 4")?;
                r.finish("length is not 4")?;
                Param::Seq(v)
            }
            pt::ACK => {
                if contents.is_empty() || !contents.len().is_multiple_of(4) {
                    return Err(malformed(ty, "length is not a positive multiple of 4"));
                }
                Param::Ack(
                    contents
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            pt::DH_GROUP_LIST => {
                Param::DhGroupList(contents.iter().map(|&g| DhGroupId::from(g)).collect())
            }
            pt::DIFFIE_HELLMAN => {
                let group = DhGroupId::from(r.u8("truncated group id")?);
                let n = r.u16("truncated public value length")?;
                let pv = r.bytes(usize::from(n), "public value runs past the parameter")?;
                r.finish("bytes after the public value (one DH value per packet in v2)")?;
                Param::DiffieHellman(DiffieHellman {
                    group,
                    public_value: pv.to_vec(),
                })
            }
            pt::HIP_CIPHER => Param::HipCipher(list_u16(ty, contents)?),
            pt::NAT_TRAVERSAL_MODE => {
                let _reserved = r.u16("shorter than 2 bytes")?;
                Param::NatTraversalMode(list_u16(ty, r.rest())?)
            }
            pt::TRANSACTION_PACING => {
                let v = r.u32("length is not 4")?;
                r.finish("length is not 4")?;
                Param::TransactionPacing(v)
            }
            pt::ENCRYPTED => {
                let reserved = r.u32("shorter than 4 bytes")?;
                Param::Encrypted(Encrypted {
                    reserved,
                    iv_and_ciphertext: r.rest().to_vec(),
                })
            }
            pt::HOST_ID => {
                let hi_len = r.u16("truncated HI length")?;
                let di = r.u16("truncated DI type/length")?;
                let algorithm = HiAlgorithm::from(r.u16("truncated algorithm")?);
                let hi = r.bytes(usize::from(hi_len), "HI runs past the parameter")?;
                let dil = usize::from(di & 0x0FFF);
                let dom = r.bytes(dil, "domain identifier runs past the parameter")?;
                r.finish("length is not 6 + HI length + DI length")?;
                Param::HostId(HostId {
                    algorithm,
                    host_identity: hi.to_vec(),
                    di_type: (di >> 12) as u8,
                    domain_identifier: dom.to_vec(),
                })
            }
            pt::HIT_SUITE_LIST => Param::HitSuiteList(contents.to_vec()),
            pt::CERT => {
                let group = r.u8("shorter than 4 bytes")?;
                let count = r.u8("shorter than 4 bytes")?;
                let id = r.u8("shorter than 4 bytes")?;
                let cert_type = r.u8("shorter than 4 bytes")?;
                Param::Cert(Cert {
                    group,
                    count,
                    id,
                    cert_type,
                    data: r.rest().to_vec(),
                })
            }
            pt::NOTIFICATION => {
                let _reserved = r.u16("shorter than 4 bytes")?;
                let msg_type = NotifyType::from(r.u16("shorter than 4 bytes")?);
                Param::Notification(Notification {
                    msg_type,
                    data: r.rest().to_vec(),
                })
            }
            pt::ECHO_REQUEST_SIGNED => Param::EchoRequestSigned(contents.to_vec()),
            pt::REG_INFO => {
                let min_lifetime = r.u8("shorter than 2 bytes")?;
                let max_lifetime = r.u8("shorter than 2 bytes")?;
                Param::RegInfo(RegInfo {
                    min_lifetime,
                    max_lifetime,
                    types: r.rest().iter().map(|&t| RegType::from(t)).collect(),
                })
            }
            pt::REG_REQUEST | pt::REG_RESPONSE => {
                let lifetime = r.u8("empty")?;
                let v = RegLifetimeTypes {
                    lifetime,
                    types: r.rest().iter().map(|&t| RegType::from(t)).collect(),
                };
                if ty == pt::REG_REQUEST {
                    Param::RegRequest(v)
                } else {
                    Param::RegResponse(v)
                }
            }
            pt::REG_FAILED => {
                let failure = RegFailureType::from(r.u8("empty")?);
                Param::RegFailed(RegFailed {
                    failure,
                    types: r.rest().iter().map(|&t| RegType::from(t)).collect(),
                })
            }
            pt::REG_FROM => Param::RegFrom(transport_address(ty, contents)?),
            pt::ECHO_RESPONSE_SIGNED => Param::EchoResponseSigned(contents.to_vec()),
            pt::TRANSPORT_FORMAT_LIST => Param::TransportFormatList(list_u16(ty, contents)?),
            pt::ESP_TRANSFORM => {
                let _reserved = r.u16("shorter than 2 bytes")?;
                Param::EspTransform(list_u16(ty, r.rest())?)
            }
            pt::RELAYED_ADDRESS => Param::RelayedAddress(transport_address(ty, contents)?),
            pt::MAPPED_ADDRESS => Param::MappedAddress(transport_address(ty, contents)?),
            pt::PEER_PERMISSION => {
                const W: &str = "length is not 48";
                let rport = r.u16(W)?;
                let pport = r.u16(W)?;
                let protocol = r.u8(W)?;
                let _reserved = r.bytes(3, W)?;
                let raddr = addr(&mut r, W)?;
                let paddr = addr(&mut r, W)?;
                let ospi = r.u32(W)?;
                let ispi = r.u32(W)?;
                r.finish(W)?;
                Param::PeerPermission(PeerPermission {
                    rport,
                    pport,
                    protocol,
                    raddr,
                    paddr,
                    ospi,
                    ispi,
                })
            }
            pt::CANDIDATE_PRIORITY | pt::NOMINATE => {
                let v = r.u32("length is not 4")?;
                r.finish("length is not 4")?;
                if ty == pt::NOMINATE {
                    Param::Nominate(v)
                } else {
                    Param::CandidatePriority(v)
                }
            }
            pt::HIP_MAC => Param::HipMac(contents.to_vec()),
            pt::HIP_MAC_2 => Param::HipMac2(contents.to_vec()),
            pt::HIP_SIGNATURE | pt::HIP_SIGNATURE_2 => {
                let algorithm = HiAlgorithm::from(r.u16("shorter than 2 bytes")?);
                let s = Signature {
                    algorithm,
                    signature: r.rest().to_vec(),
                };
                if ty == pt::HIP_SIGNATURE {
                    Param::HipSignature(s)
                } else {
                    Param::HipSignature2(s)
                }
            }
            pt::ECHO_RESPONSE_UNSIGNED => Param::EchoResponseUnsigned(contents.to_vec()),
            pt::ECHO_REQUEST_UNSIGNED => Param::EchoRequestUnsigned(contents.to_vec()),
            pt::RELAY_FROM => Param::RelayFrom(transport_address(ty, contents)?),
            pt::RELAY_TO => Param::RelayTo(transport_address(ty, contents)?),
            pt::FROM => {
                let a = addr(&mut r, "length is not 16")?;
                r.finish("length is not 16")?;
                Param::From(a)
            }
            pt::RVS_HMAC => Param::RvsHmac(contents.to_vec()),
            pt::VIA_RVS => {
                if !contents.len().is_multiple_of(16) {
                    return Err(malformed(ty, "length is not a multiple of 16"));
                }
                Param::ViaRvs(
                    contents
                        .chunks_exact(16)
                        .filter_map(|c| <[u8; 16]>::try_from(c).ok().map(Ipv6Addr::from))
                        .collect(),
                )
            }
            pt::RELAY_HMAC => Param::RelayHmac(contents.to_vec()),
            other if pt::is_critical(other) => {
                return Err(WireError::UnsupportedCriticalParam(other));
            }
            other => Param::Unknown {
                ty: other,
                contents: contents.to_vec(),
            },
        };
        Ok(p)
    }

    /// The parameter type number.
    pub fn param_type(&self) -> u16 {
        match self {
            Param::EspInfo(_) => pt::ESP_INFO,
            Param::R1Counter(_) => pt::R1_COUNTER,
            Param::LocatorSet(_) => pt::LOCATOR_SET,
            Param::Puzzle(_) => pt::PUZZLE,
            Param::Solution(_) => pt::SOLUTION,
            Param::Seq(_) => pt::SEQ,
            Param::Ack(_) => pt::ACK,
            Param::DhGroupList(_) => pt::DH_GROUP_LIST,
            Param::DiffieHellman(_) => pt::DIFFIE_HELLMAN,
            Param::HipCipher(_) => pt::HIP_CIPHER,
            Param::NatTraversalMode(_) => pt::NAT_TRAVERSAL_MODE,
            Param::TransactionPacing(_) => pt::TRANSACTION_PACING,
            Param::Encrypted(_) => pt::ENCRYPTED,
            Param::HostId(_) => pt::HOST_ID,
            Param::HitSuiteList(_) => pt::HIT_SUITE_LIST,
            Param::Cert(_) => pt::CERT,
            Param::Notification(_) => pt::NOTIFICATION,
            Param::EchoRequestSigned(_) => pt::ECHO_REQUEST_SIGNED,
            Param::RegInfo(_) => pt::REG_INFO,
            Param::RegRequest(_) => pt::REG_REQUEST,
            Param::RegResponse(_) => pt::REG_RESPONSE,
            Param::RegFailed(_) => pt::REG_FAILED,
            Param::RegFrom(_) => pt::REG_FROM,
            Param::EchoResponseSigned(_) => pt::ECHO_RESPONSE_SIGNED,
            Param::TransportFormatList(_) => pt::TRANSPORT_FORMAT_LIST,
            Param::EspTransform(_) => pt::ESP_TRANSFORM,
            Param::RelayedAddress(_) => pt::RELAYED_ADDRESS,
            Param::MappedAddress(_) => pt::MAPPED_ADDRESS,
            Param::PeerPermission(_) => pt::PEER_PERMISSION,
            Param::CandidatePriority(_) => pt::CANDIDATE_PRIORITY,
            Param::Nominate(_) => pt::NOMINATE,
            Param::HipMac(_) => pt::HIP_MAC,
            Param::HipMac2(_) => pt::HIP_MAC_2,
            Param::HipSignature2(_) => pt::HIP_SIGNATURE_2,
            Param::HipSignature(_) => pt::HIP_SIGNATURE,
            Param::EchoResponseUnsigned(_) => pt::ECHO_RESPONSE_UNSIGNED,
            Param::EchoRequestUnsigned(_) => pt::ECHO_REQUEST_UNSIGNED,
            Param::RelayFrom(_) => pt::RELAY_FROM,
            Param::RelayTo(_) => pt::RELAY_TO,
            Param::From(_) => pt::FROM,
            Param::RvsHmac(_) => pt::RVS_HMAC,
            Param::ViaRvs(_) => pt::VIA_RVS,
            Param::RelayHmac(_) => pt::RELAY_HMAC,
            Param::Unknown { ty, .. } => *ty,
        }
    }

    /// Whether the parameter is critical (odd type number).
    pub fn is_critical(&self) -> bool {
        pt::is_critical(self.param_type())
    }

    /// Length of the Contents (the TLV Length field).
    pub fn contents_len(&self) -> usize {
        match self {
            Param::EspInfo(_) | Param::R1Counter(_) => 12,
            Param::LocatorSet(l) => l.iter().map(Locator::wire_len).sum(),
            Param::Puzzle(p) => 4 + p.random_i.len(),
            Param::Solution(s) => 4 + s.random_i.len() + s.solution_j.len(),
            Param::Seq(_)
            | Param::TransactionPacing(_)
            | Param::CandidatePriority(_)
            | Param::Nominate(_) => 4,
            Param::Ack(v) => 4 * v.len(),
            Param::DhGroupList(v) => v.len(),
            Param::DiffieHellman(d) => 3 + d.public_value.len(),
            Param::HipCipher(v) => 2 * v.len(),
            Param::NatTraversalMode(v) => 2 + 2 * v.len(),
            Param::Encrypted(e) => 4 + e.iv_and_ciphertext.len(),
            Param::HostId(h) => 6 + h.host_identity.len() + h.domain_identifier.len(),
            Param::Cert(c) => 4 + c.data.len(),
            Param::Notification(n) => 4 + n.data.len(),
            Param::RegInfo(r) => 2 + r.types.len(),
            Param::RegRequest(r) | Param::RegResponse(r) => 1 + r.types.len(),
            Param::RegFailed(r) => 1 + r.types.len(),
            Param::RegFrom(_)
            | Param::RelayedAddress(_)
            | Param::MappedAddress(_)
            | Param::RelayFrom(_)
            | Param::RelayTo(_) => 20,
            Param::TransportFormatList(v) => 2 * v.len(),
            Param::EspTransform(v) => 2 + 2 * v.len(),
            Param::PeerPermission(_) => 48,
            Param::HipSignature(s) | Param::HipSignature2(s) => 2 + s.signature.len(),
            Param::From(_) => 16,
            Param::ViaRvs(v) => 16 * v.len(),
            Param::HitSuiteList(b)
            | Param::EchoRequestSigned(b)
            | Param::EchoResponseSigned(b)
            | Param::HipMac(b)
            | Param::HipMac2(b)
            | Param::EchoResponseUnsigned(b)
            | Param::EchoRequestUnsigned(b)
            | Param::RvsHmac(b)
            | Param::RelayHmac(b)
            | Param::Unknown { contents: b, .. } => b.len(),
        }
    }

    /// Total TLV size on the wire, including the header and padding.
    pub fn buffer_len(&self) -> usize {
        tlv_total_len(self.contents_len())
    }

    /// Checks that the value can be represented on the wire and that
    /// parsing the emitted bytes gives an equal value back.
    pub fn validate(&self) -> Result<()> {
        let ty = self.param_type();
        let bad = |reason| Err(WireError::Unrepresentable { ty, reason });
        if self.contents_len() > usize::from(u16::MAX) {
            return bad("contents longer than 65535 bytes");
        }
        match self {
            Param::Unknown { ty, .. } if pt::is_known(*ty) => {
                return bad("Unknown variant used for a type with a typed variant");
            }
            Param::LocatorSet(ls) => {
                for l in ls {
                    if let LocatorKind::Unknown { locator_type, data } = &l.kind {
                        if *locator_type <= locator_type::NAT {
                            return bad("Unknown locator kind used for locator type 0, 1 or 2");
                        }
                        if !data.len().is_multiple_of(4) || data.len() > 4 * 255 {
                            return bad("locator data is not a multiple of 4 up to 1020 bytes");
                        }
                    }
                }
            }
            Param::Solution(s) if s.random_i.len() != s.solution_j.len() => {
                return bad("#I and #J differ in length");
            }
            Param::DiffieHellman(d) if d.public_value.len() > usize::from(u16::MAX) => {
                return bad("public value longer than 65535 bytes");
            }
            Param::HostId(h) => {
                if h.di_type > 0x0F {
                    return bad("DI-Type does not fit in 4 bits");
                }
                if h.domain_identifier.len() > 0x0FFF {
                    return bad("domain identifier longer than 4095 bytes");
                }
                if h.host_identity.len() > usize::from(u16::MAX) {
                    return bad("host identity longer than 65535 bytes");
                }
            }
            Param::Ack(v) if v.is_empty() => return bad("ACK needs at least one Update ID"),
            _ => {}
        }
        Ok(())
    }

    /// Writes the whole TLV (header, contents, zero padding) to the start of
    /// `buf` and returns the number of bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        self.validate()?;
        let len = self.contents_len();
        let total = tlv_total_len(len);
        if buf.len() < total {
            return Err(WireError::BufferTooSmall {
                needed: total,
                available: buf.len(),
            });
        }
        let mut w = Writer::new(buf);
        w.u16(self.param_type())?;
        w.u16(len as u16)?;
        self.emit_contents(&mut w)?;
        let written = w.pos() - TLV_HEADER_LEN;
        if written != len {
            return Err(WireError::Unrepresentable {
                ty: self.param_type(),
                reason: "internal length mismatch",
            });
        }
        w.zeros(total - TLV_HEADER_LEN - len)?;
        Ok(total)
    }

    /// The whole TLV as a new vector.
    pub fn to_tlv_bytes(&self) -> Result<Vec<u8>> {
        let mut v = vec![0; self.buffer_len()];
        self.emit(&mut v)?;
        Ok(v)
    }

    fn emit_contents(&self, w: &mut Writer<'_>) -> Result<()> {
        fn ta(w: &mut Writer<'_>, t: &TransportAddress) -> Result<()> {
            w.u16(t.port)?;
            w.u8(t.protocol)?;
            w.u8(0)?;
            w.put(&t.addr.octets())
        }
        match self {
            Param::EspInfo(e) => {
                w.u16(0)?;
                w.u16(e.keymat_index)?;
                w.u32(e.old_spi)?;
                w.u32(e.new_spi)
            }
            Param::R1Counter(c) => {
                w.u32(c.reserved)?;
                w.u64(c.counter)
            }
            Param::LocatorSet(ls) => {
                for l in ls {
                    w.u8(l.traffic_type.value())?;
                    w.u8(l.kind.locator_type())?;
                    w.u8((l.kind.data_len() / 4) as u8)?;
                    w.u8(u8::from(l.preferred))?;
                    w.u32(l.lifetime)?;
                    match &l.kind {
                        LocatorKind::Address(a) => w.put(&a.octets())?,
                        LocatorKind::EspSpi { spi, addr } => {
                            w.u32(*spi)?;
                            w.put(&addr.octets())?;
                        }
                        LocatorKind::Nat(n) => {
                            w.u16(n.port)?;
                            w.u8(n.protocol)?;
                            w.u8(n.kind.value())?;
                            w.u32(n.priority)?;
                            w.u32(n.spi)?;
                            w.put(&n.addr.octets())?;
                        }
                        LocatorKind::Unknown { data, .. } => w.put(data)?,
                    }
                }
                Ok(())
            }
            Param::Puzzle(p) => {
                w.u8(p.k)?;
                w.u8(p.lifetime)?;
                w.u16(p.opaque)?;
                w.put(&p.random_i)
            }
            Param::Solution(s) => {
                w.u8(s.k)?;
                w.u8(0)?;
                w.u16(s.opaque)?;
                w.put(&s.random_i)?;
                w.put(&s.solution_j)
            }
            Param::Seq(v)
            | Param::TransactionPacing(v)
            | Param::CandidatePriority(v)
            | Param::Nominate(v) => w.u32(*v),
            Param::Ack(v) => v.iter().try_for_each(|x| w.u32(*x)),
            Param::DhGroupList(v) => v.iter().try_for_each(|g| w.u8(g.value())),
            Param::DiffieHellman(d) => {
                w.u8(d.group.value())?;
                w.u16(d.public_value.len() as u16)?;
                w.put(&d.public_value)
            }
            Param::HipCipher(v) => v.iter().try_for_each(|c| w.u16(c.value())),
            Param::NatTraversalMode(v) => {
                w.u16(0)?;
                v.iter().try_for_each(|m| w.u16(m.value()))
            }
            Param::Encrypted(e) => {
                w.u32(e.reserved)?;
                w.put(&e.iv_and_ciphertext)
            }
            Param::HostId(h) => {
                w.u16(h.host_identity.len() as u16)?;
                w.u16((u16::from(h.di_type) << 12) | (h.domain_identifier.len() as u16))?;
                w.u16(h.algorithm.value())?;
                w.put(&h.host_identity)?;
                w.put(&h.domain_identifier)
            }
            Param::Cert(c) => {
                w.put(&[c.group, c.count, c.id, c.cert_type])?;
                w.put(&c.data)
            }
            Param::Notification(n) => {
                w.u16(0)?;
                w.u16(n.msg_type.value())?;
                w.put(&n.data)
            }
            Param::RegInfo(r) => {
                w.u8(r.min_lifetime)?;
                w.u8(r.max_lifetime)?;
                r.types.iter().try_for_each(|t| w.u8(t.value()))
            }
            Param::RegRequest(r) | Param::RegResponse(r) => {
                w.u8(r.lifetime)?;
                r.types.iter().try_for_each(|t| w.u8(t.value()))
            }
            Param::RegFailed(r) => {
                w.u8(r.failure.value())?;
                r.types.iter().try_for_each(|t| w.u8(t.value()))
            }
            Param::RegFrom(t)
            | Param::RelayedAddress(t)
            | Param::MappedAddress(t)
            | Param::RelayFrom(t)
            | Param::RelayTo(t) => ta(w, t),
            Param::TransportFormatList(v) => v.iter().try_for_each(|x| w.u16(*x)),
            Param::EspTransform(v) => {
                w.u16(0)?;
                v.iter().try_for_each(|s| w.u16(s.value()))
            }
            Param::PeerPermission(p) => {
                w.u16(p.rport)?;
                w.u16(p.pport)?;
                w.u8(p.protocol)?;
                w.zeros(3)?;
                w.put(&p.raddr.octets())?;
                w.put(&p.paddr.octets())?;
                w.u32(p.ospi)?;
                w.u32(p.ispi)
            }
            Param::HipSignature(s) | Param::HipSignature2(s) => {
                w.u16(s.algorithm.value())?;
                w.put(&s.signature)
            }
            Param::From(a) => w.put(&a.octets()),
            Param::ViaRvs(v) => v.iter().try_for_each(|a| w.put(&a.octets())),
            Param::HitSuiteList(b)
            | Param::EchoRequestSigned(b)
            | Param::EchoResponseSigned(b)
            | Param::HipMac(b)
            | Param::HipMac2(b)
            | Param::EchoResponseUnsigned(b)
            | Param::EchoRequestUnsigned(b)
            | Param::RvsHmac(b)
            | Param::RelayHmac(b)
            | Param::Unknown { contents: b, .. } => w.put(b),
        }
    }

    /// For HIT_SUITE_LIST: the suite ids (high nibbles). Entries with a
    /// non-zero low nibble (which RFC 7401 says SHOULD be treated as an
    /// error) are returned as `Err(raw byte)`. `None` for other parameters.
    pub fn hit_suites(&self) -> Option<Vec<core::result::Result<HitSuiteId, u8>>> {
        match self {
            Param::HitSuiteList(b) => Some(
                b.iter()
                    .map(|&x| {
                        if x & 0x0F == 0 {
                            Ok(HitSuiteId::from(x >> 4))
                        } else {
                            Err(x)
                        }
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// Encodes a HIT suite id as a HIT_SUITE_LIST byte (id in the high nibble).
pub const fn hit_suite_list_byte(id: HitSuiteId) -> u8 {
    id.value() << 4
}

/// Parses a sequence of TLVs that is not inside a HIP header, e.g. the
/// decrypted plaintext of ENCRYPTED (after the caller removed the cipher
/// padding). Applies the same ordering and critical-parameter rules as a
/// packet.
pub fn parse_params(bytes: &[u8]) -> Result<Vec<Param>> {
    super::packet::RawParamIter::new(bytes, 0)
        .map(|raw| raw.and_then(|r| Param::parse(r.ty, r.contents)))
        .collect()
}

/// Encodes parameters as consecutive TLVs in ascending type order (stable
/// for repeats), e.g. the plaintext of ENCRYPTED before cipher padding.
pub fn emit_params(params: &[Param]) -> Result<Vec<u8>> {
    let mut order: Vec<&Param> = params.iter().collect();
    order.sort_by_key(|p| p.param_type());
    let total: usize = order.iter().map(|p| p.buffer_len()).sum();
    let mut out = vec![0; total];
    let mut off = 0;
    for p in order {
        let dst = out.get_mut(off..).unwrap_or_default();
        off += p.emit(dst)?;
    }
    Ok(out)
}
