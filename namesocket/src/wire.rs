//! Wire formats of the namesocket protocol: the thesis's version 1 packets
//! (kept decodable) and version 2 (handshake messages plus framed traffic).
//!
//! Every decoder in this module takes untrusted bytes and never panics: all
//! reads are length-checked, lengths are validated before use, and every
//! failure is a typed [`WireError`]. Incomplete input is not an error: the
//! parse functions return `Ok(None)` ("need more bytes") so a message split at
//! any byte boundary decodes the same once it is complete.
//!
//! # Common header
//!
//! Both versions start every handshake message with the thesis header
//! (Hansen 1999, section 4.2.3): a 16-bit *magic cookie*, an 8-bit *version*
//! and an 8-bit *type*, all big endian. The cookie value is not legible in
//! our copy of the thesis's Figure 4.3, so this crate fixes it to
//! [`MAGIC`] = `0x4E53` (ASCII "NS") and keeps it stable. A peer whose first
//! byte already differs from the cookie is reported as
//! [`WireError::BadMagic`] as soon as that byte arrives (e.g. an HTTP server
//! answering `"HTTP/1.1 200 OK"`).
//!
//! # Version 1 (thesis, decodable only)
//!
//! Type values (not given in the thesis text; fixed here): `NEW = 1`,
//! `RESUME = 2` (IPv6), `RESUME_ACK = 3`, and `RESUME4 = 4`, the IPv4 RESUME
//! the thesis suggests (same layout with 32-bit address fields). Layouts,
//! 32 bits across, big endian:
//!
//! ```text
//! NEW (4 bytes):         | magic:16 | version:8 | type:8 |
//! RESUME_ACK (8 bytes):  | magic:16 | version:8 | type:8 | data_rcvd:32 |
//! RESUME (44 bytes):     | magic:16 | version:8 | type:8 | data_rcvd:32 |
//!                        | client address:128 | server address:128 |
//!                        | client port:16 | server port:16 |
//! RESUME4 (20 bytes):    same as RESUME with 32-bit addresses
//! ```
//!
//! The two 16-bit ports share one 32-bit word after the addresses, as the
//! thesis describes, so the 128-bit fields stay 32-bit aligned.
//!
//! # Version 2 handshake messages
//!
//! `| magic:16 | version=2:8 | type:8 | body_len:16 | body |`. The body
//! length makes the handshake extensible: a body longer than the fields this
//! version knows is accepted and the extra bytes are ignored; a shorter one
//! is [`WireError::BadLength`]; bodies over [`MAX_HANDSHAKE_BODY`] are
//! rejected. Types: `NEW = 1`, `RESUME = 2`, `RESUME_ACK = 3`,
//! `NEW_ACK = 4`, `REJECT = 5`. Bodies (big endian):
//!
//! ```text
//! NEW:        session_id:128 client_nonce:128 client_x25519_public:256 params
//! NEW_ACK:    server_nonce:128 server_x25519_public:256 params
//! RESUME:     session_id:128 generation:64 client_nonce:128 bytes_received:64 proof:256
//! RESUME_ACK: generation:64 server_nonce:128 bytes_received:64 proof:256
//! REJECT:     reason:8
//! params:     heartbeat_ms:32 dead_timeout_ms:32 resume_window_ms:32 send_buffer_limit:32
//! ```
//!
//! REJECT reasons ([`v2::RejectReason`]): unknown session (1), bad proof
//! (2), stale generation (3), expired (4), duplicate session (5), invalid
//! counter (6), unacceptable parameters in NEW (7); other codes decode as
//! `Other(code)`.
//!
//! # Version 2 frames
//!
//! After the handshake the byte stream is a sequence of frames
//! `| type:8 | length:16 | payload |`. `DATA` (1) carries 0..=65535 bytes of
//! application data. Control frames have fixed payload lengths: `ACK` (2),
//! `PING` (3), `PONG` (4), `SHUTDOWN` (5) and `CLOSE` (6) carry one u64;
//! `CLOSE_ACK` (7) is empty; `ERROR` (8) carries a u16 code. A wrong length
//! for a control frame or an unknown type is an error detected as soon as
//! the 3-byte header is complete. [`FrameDecoder`] decodes incrementally and
//! hands DATA payload out in pieces without buffering it.

use std::net::{Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// The namesocket magic cookie that starts every handshake message.
pub const MAGIC: u16 = 0x4E53;
/// Thesis protocol version.
pub const VERSION_1: u8 = 1;
/// This crate's protocol version.
pub const VERSION_2: u8 = 2;
/// Largest accepted v2 handshake body.
pub const MAX_HANDSHAKE_BODY: usize = 1024;
/// Largest DATA frame payload.
pub const MAX_DATA_PAYLOAD: usize = u16::MAX as usize;
/// Size of a v2 frame header.
pub const FRAME_HEADER_LEN: usize = 3;

/// Errors from decoding namesocket bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The bytes do not start with the namesocket magic cookie: the peer does
    /// not speak namesocket (or the stream is out of sync).
    #[error("peer is not a namesocket peer: bad magic cookie (got {found:#06x})")]
    BadMagic {
        /// The cookie found (when only one byte is available, that byte in the
        /// high half and zero in the low half).
        found: u16,
    },
    /// The version field holds a version this implementation does not speak.
    #[error("unsupported namesocket protocol version {0}")]
    UnsupportedVersion(u8),
    /// The type field is not defined for the version.
    #[error("unknown namesocket v{version} message type {ty}")]
    UnknownType {
        /// Protocol version of the message.
        version: u8,
        /// The type byte found.
        ty: u8,
    },
    /// A message of a known type arrived where it is not allowed.
    #[error("unexpected namesocket message type {ty} here")]
    UnexpectedType {
        /// The type byte found.
        ty: u8,
    },
    /// A length field is out of range for the message.
    #[error("bad length {len} for {what}")]
    BadLength {
        /// Which message or frame.
        what: &'static str,
        /// The length found.
        len: usize,
    },
    /// A frame type byte that is not defined.
    #[error("unknown namesocket frame type {0:#04x}")]
    UnknownFrame(u8),
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(s))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_be_bytes(s))
}

fn arr<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Checks the common header as far as it is present.
///
/// Returns `Ok(None)` when fewer than 4 bytes are available and nothing seen
/// so far is wrong, `Ok(Some((version, type)))` when the header is complete
/// and the magic cookie matches. The version is not checked here.
pub fn check_header(b: &[u8]) -> Result<Option<(u8, u8)>, WireError> {
    let magic = MAGIC.to_be_bytes();
    match b {
        [] => Ok(None),
        [x] => {
            if *x == magic[0] {
                Ok(None)
            } else {
                Err(WireError::BadMagic {
                    found: u16::from(*x) << 8,
                })
            }
        }
        [x, y, rest @ ..] => {
            let found = u16::from_be_bytes([*x, *y]);
            if found != MAGIC {
                return Err(WireError::BadMagic { found });
            }
            match rest {
                [v, t, ..] => Ok(Some((*v, *t))),
                _ => Ok(None),
            }
        }
    }
}

fn put_header(out: &mut Vec<u8>, version: u8, ty: u8) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(version);
    out.push(ty);
}

/// The thesis's version 1 packets (Figure 4.3), decodable and encodable.
pub mod v1 {
    use super::*;

    /// `NEW` type value.
    pub const TYPE_NEW: u8 = 1;
    /// `RESUME` (IPv6) type value.
    pub const TYPE_RESUME: u8 = 2;
    /// `RESUME_ACK` type value.
    pub const TYPE_RESUME_ACK: u8 = 3;
    /// IPv4 `RESUME` type value (defined by this crate, as the thesis suggests).
    pub const TYPE_RESUME4: u8 = 4;

    /// Encoded length of `NEW`.
    pub const NEW_LEN: usize = 4;
    /// Encoded length of `RESUME_ACK`.
    pub const RESUME_ACK_LEN: usize = 8;
    /// Encoded length of the IPv6 `RESUME`.
    pub const RESUME6_LEN: usize = 44;
    /// Encoded length of the IPv4 `RESUME`.
    pub const RESUME4_LEN: usize = 20;

    /// IPv6 `RESUME`: identifies the old connection by its address pair.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Resume6 {
        /// Bytes received so far (32 bits, wraps).
        pub data_rcvd: u32,
        /// Client address of the old connection.
        pub client_addr: Ipv6Addr,
        /// Server address of the old connection.
        pub server_addr: Ipv6Addr,
        /// Client port of the old connection.
        pub client_port: u16,
        /// Server port of the old connection.
        pub server_port: u16,
    }

    /// IPv4 `RESUME` with 32-bit address fields.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Resume4 {
        /// Bytes received so far (32 bits, wraps).
        pub data_rcvd: u32,
        /// Client address of the old connection.
        pub client_addr: Ipv4Addr,
        /// Server address of the old connection.
        pub server_addr: Ipv4Addr,
        /// Client port of the old connection.
        pub client_port: u16,
        /// Server port of the old connection.
        pub server_port: u16,
    }

    /// `RESUME_ACK`: the server's received counter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ResumeAck {
        /// Bytes received so far (32 bits, wraps).
        pub data_rcvd: u32,
    }

    /// Any version 1 packet.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Packet {
        /// `NEW`.
        New,
        /// IPv6 `RESUME`.
        Resume6(Resume6),
        /// IPv4 `RESUME`.
        Resume4(Resume4),
        /// `RESUME_ACK`.
        ResumeAck(ResumeAck),
    }

    impl Packet {
        /// Encoded length in bytes.
        pub fn encoded_len(&self) -> usize {
            match self {
                Packet::New => NEW_LEN,
                Packet::Resume6(_) => RESUME6_LEN,
                Packet::Resume4(_) => RESUME4_LEN,
                Packet::ResumeAck(_) => RESUME_ACK_LEN,
            }
        }

        /// Appends the encoding to `out`.
        pub fn emit(&self, out: &mut Vec<u8>) {
            match self {
                Packet::New => put_header(out, VERSION_1, TYPE_NEW),
                Packet::ResumeAck(a) => {
                    put_header(out, VERSION_1, TYPE_RESUME_ACK);
                    out.extend_from_slice(&a.data_rcvd.to_be_bytes());
                }
                Packet::Resume6(r) => {
                    put_header(out, VERSION_1, TYPE_RESUME);
                    out.extend_from_slice(&r.data_rcvd.to_be_bytes());
                    out.extend_from_slice(&r.client_addr.octets());
                    out.extend_from_slice(&r.server_addr.octets());
                    out.extend_from_slice(&r.client_port.to_be_bytes());
                    out.extend_from_slice(&r.server_port.to_be_bytes());
                }
                Packet::Resume4(r) => {
                    put_header(out, VERSION_1, TYPE_RESUME4);
                    out.extend_from_slice(&r.data_rcvd.to_be_bytes());
                    out.extend_from_slice(&r.client_addr.octets());
                    out.extend_from_slice(&r.server_addr.octets());
                    out.extend_from_slice(&r.client_port.to_be_bytes());
                    out.extend_from_slice(&r.server_port.to_be_bytes());
                }
            }
        }

        /// Parses one v1 packet from the start of `b`.
        ///
        /// `Ok(None)`: more bytes are needed. `Ok(Some((packet, used)))`:
        /// `used` bytes were consumed.
        pub fn parse(b: &[u8]) -> Result<Option<(Packet, usize)>, WireError> {
            let Some((version, ty)) = check_header(b)? else {
                return Ok(None);
            };
            if version != VERSION_1 {
                return Err(WireError::UnsupportedVersion(version));
            }
            let need = match ty {
                TYPE_NEW => NEW_LEN,
                TYPE_RESUME => RESUME6_LEN,
                TYPE_RESUME4 => RESUME4_LEN,
                TYPE_RESUME_ACK => RESUME_ACK_LEN,
                _ => return Err(WireError::UnknownType { version, ty }),
            };
            if b.len() < need {
                return Ok(None);
            }
            let short = WireError::BadLength {
                what: "v1 packet",
                len: b.len(),
            };
            let p = match ty {
                TYPE_NEW => Packet::New,
                TYPE_RESUME_ACK => Packet::ResumeAck(ResumeAck {
                    data_rcvd: be_u32(b, 4).ok_or(short)?,
                }),
                TYPE_RESUME => Packet::Resume6(Resume6 {
                    data_rcvd: be_u32(b, 4).ok_or_else(|| short.clone())?,
                    client_addr: Ipv6Addr::from(arr::<16>(b, 8).ok_or_else(|| short.clone())?),
                    server_addr: Ipv6Addr::from(arr::<16>(b, 24).ok_or_else(|| short.clone())?),
                    client_port: be_u16(b, 40).ok_or_else(|| short.clone())?,
                    server_port: be_u16(b, 42).ok_or(short)?,
                }),
                _ => Packet::Resume4(Resume4 {
                    data_rcvd: be_u32(b, 4).ok_or_else(|| short.clone())?,
                    client_addr: Ipv4Addr::from(arr::<4>(b, 8).ok_or_else(|| short.clone())?),
                    server_addr: Ipv4Addr::from(arr::<4>(b, 12).ok_or_else(|| short.clone())?),
                    client_port: be_u16(b, 16).ok_or_else(|| short.clone())?,
                    server_port: be_u16(b, 18).ok_or(short)?,
                }),
            };
            Ok(Some((p, need)))
        }
    }
}

/// Version 2 handshake messages.
pub mod v2 {
    use super::*;

    /// `NEW` type value.
    pub const TYPE_NEW: u8 = 1;
    /// `RESUME` type value.
    pub const TYPE_RESUME: u8 = 2;
    /// `RESUME_ACK` type value.
    pub const TYPE_RESUME_ACK: u8 = 3;
    /// `NEW_ACK` type value.
    pub const TYPE_NEW_ACK: u8 = 4;
    /// `REJECT` type value.
    pub const TYPE_REJECT: u8 = 5;
    /// Length of the v2 handshake header (magic, version, type, body length).
    pub const HEADER_LEN: usize = 6;

    const PARAMS_LEN: usize = 16;
    const NEW_BODY: usize = 16 + 16 + 32 + PARAMS_LEN;
    const NEW_ACK_BODY: usize = 16 + 32 + PARAMS_LEN;
    const RESUME_BODY: usize = 16 + 8 + 16 + 8 + 32;
    const RESUME_ACK_BODY: usize = 8 + 16 + 8 + 32;
    const REJECT_BODY: usize = 1;

    /// A 128-bit session identifier chosen at random by the client.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct SessionId(pub [u8; 16]);

    impl std::fmt::Debug for SessionId {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SessionId(")?;
            for b in self.0 {
                write!(f, "{b:02x}")?;
            }
            write!(f, ")")
        }
    }

    /// Session parameters each side announces in NEW / NEW_ACK.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Params {
        /// Sender's heartbeat interval in milliseconds.
        pub heartbeat_ms: u32,
        /// Sender's dead-path timeout in milliseconds.
        pub dead_timeout_ms: u32,
        /// Sender's resume window in milliseconds.
        pub resume_window_ms: u32,
        /// Most unacknowledged bytes the sender will ever have outstanding.
        pub send_buffer_limit: u32,
    }

    /// Client -> server: start a new session.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct New {
        /// Client-chosen random session id.
        pub session_id: SessionId,
        /// Client nonce for key derivation.
        pub client_nonce: [u8; 16],
        /// Client X25519 public key.
        pub client_public: [u8; 32],
        /// Client parameters.
        pub params: Params,
    }

    /// Server -> client: the session is accepted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct NewAck {
        /// Server nonce for key derivation.
        pub server_nonce: [u8; 16],
        /// Server X25519 public key.
        pub server_public: [u8; 32],
        /// Server parameters.
        pub params: Params,
    }

    /// Client -> server on a new transport: continue a session.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Resume {
        /// The session to resume.
        pub session_id: SessionId,
        /// Strictly increasing per session.
        pub generation: u64,
        /// Fresh client nonce.
        pub nonce: [u8; 16],
        /// Bytes of server data the client has received.
        pub bytes_received: u64,
        /// HMAC-SHA256 proof of the resume key.
        pub proof: [u8; 32],
    }

    /// Server -> client: the resume is accepted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ResumeAck {
        /// Echo of the RESUME generation.
        pub generation: u64,
        /// Fresh server nonce.
        pub nonce: [u8; 16],
        /// Bytes of client data the server has received.
        pub bytes_received: u64,
        /// HMAC-SHA256 proof of the resume key, bound to the client nonce.
        pub proof: [u8; 32],
    }

    /// Why a NEW or RESUME was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RejectReason {
        /// No session with this id.
        UnknownSession,
        /// The HMAC proof did not verify.
        BadProof,
        /// The generation is not newer than the last accepted one (replay).
        StaleGeneration,
        /// The session is closed or its resume window expired.
        Expired,
        /// A NEW reused an existing session id.
        DuplicateSession,
        /// The byte counter is outside what the session could have sent.
        InvalidCounter,
        /// NEW announced session parameters outside the range the server
        /// accepts (see "Peer parameters" in the engine docs).
        BadParams,
        /// A reason code this version does not know.
        Other(u8),
    }

    impl RejectReason {
        /// Wire code.
        pub fn code(self) -> u8 {
            match self {
                RejectReason::UnknownSession => 1,
                RejectReason::BadProof => 2,
                RejectReason::StaleGeneration => 3,
                RejectReason::Expired => 4,
                RejectReason::DuplicateSession => 5,
                RejectReason::InvalidCounter => 6,
                RejectReason::BadParams => 7,
                RejectReason::Other(c) => c,
            }
        }

        /// From a wire code (unknown codes map to [`RejectReason::Other`]).
        pub fn from_code(c: u8) -> Self {
            match c {
                1 => RejectReason::UnknownSession,
                2 => RejectReason::BadProof,
                3 => RejectReason::StaleGeneration,
                4 => RejectReason::Expired,
                5 => RejectReason::DuplicateSession,
                6 => RejectReason::InvalidCounter,
                7 => RejectReason::BadParams,
                c => RejectReason::Other(c),
            }
        }
    }

    impl std::fmt::Display for RejectReason {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                RejectReason::UnknownSession => f.write_str("unknown session"),
                RejectReason::BadProof => f.write_str("bad resume proof"),
                RejectReason::StaleGeneration => f.write_str("stale resume generation (replay)"),
                RejectReason::Expired => f.write_str("session closed or expired"),
                RejectReason::DuplicateSession => f.write_str("duplicate session id"),
                RejectReason::InvalidCounter => f.write_str("invalid byte counter"),
                RejectReason::BadParams => f.write_str("unacceptable session parameters"),
                RejectReason::Other(c) => write!(f, "reject reason {c}"),
            }
        }
    }

    /// Any v2 handshake message.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Handshake {
        /// NEW.
        New(New),
        /// NEW_ACK.
        NewAck(NewAck),
        /// RESUME.
        Resume(Resume),
        /// RESUME_ACK.
        ResumeAck(ResumeAck),
        /// REJECT.
        Reject(RejectReason),
    }

    fn put_params(out: &mut Vec<u8>, p: &Params) {
        out.extend_from_slice(&p.heartbeat_ms.to_be_bytes());
        out.extend_from_slice(&p.dead_timeout_ms.to_be_bytes());
        out.extend_from_slice(&p.resume_window_ms.to_be_bytes());
        out.extend_from_slice(&p.send_buffer_limit.to_be_bytes());
    }

    fn get_params(b: &[u8], at: usize) -> Option<Params> {
        Some(Params {
            heartbeat_ms: be_u32(b, at)?,
            dead_timeout_ms: be_u32(b, at.checked_add(4)?)?,
            resume_window_ms: be_u32(b, at.checked_add(8)?)?,
            send_buffer_limit: be_u32(b, at.checked_add(12)?)?,
        })
    }

    impl Handshake {
        fn type_and_body_len(&self) -> (u8, usize) {
            match self {
                Handshake::New(_) => (TYPE_NEW, NEW_BODY),
                Handshake::NewAck(_) => (TYPE_NEW_ACK, NEW_ACK_BODY),
                Handshake::Resume(_) => (TYPE_RESUME, RESUME_BODY),
                Handshake::ResumeAck(_) => (TYPE_RESUME_ACK, RESUME_ACK_BODY),
                Handshake::Reject(_) => (TYPE_REJECT, REJECT_BODY),
            }
        }

        /// Encoded length in bytes.
        pub fn encoded_len(&self) -> usize {
            HEADER_LEN + self.type_and_body_len().1
        }

        /// Appends the encoding to `out`.
        pub fn emit(&self, out: &mut Vec<u8>) {
            let (ty, body) = self.type_and_body_len();
            put_header(out, VERSION_2, ty);
            // Bodies are small compile-time constants.
            out.extend_from_slice(&(body as u16).to_be_bytes());
            match self {
                Handshake::New(n) => {
                    out.extend_from_slice(&n.session_id.0);
                    out.extend_from_slice(&n.client_nonce);
                    out.extend_from_slice(&n.client_public);
                    put_params(out, &n.params);
                }
                Handshake::NewAck(a) => {
                    out.extend_from_slice(&a.server_nonce);
                    out.extend_from_slice(&a.server_public);
                    put_params(out, &a.params);
                }
                Handshake::Resume(r) => {
                    out.extend_from_slice(&r.session_id.0);
                    out.extend_from_slice(&r.generation.to_be_bytes());
                    out.extend_from_slice(&r.nonce);
                    out.extend_from_slice(&r.bytes_received.to_be_bytes());
                    out.extend_from_slice(&r.proof);
                }
                Handshake::ResumeAck(a) => {
                    out.extend_from_slice(&a.generation.to_be_bytes());
                    out.extend_from_slice(&a.nonce);
                    out.extend_from_slice(&a.bytes_received.to_be_bytes());
                    out.extend_from_slice(&a.proof);
                }
                Handshake::Reject(r) => out.push(r.code()),
            }
        }

        /// Encodes into a new vector.
        pub fn to_vec(&self) -> Vec<u8> {
            let mut v = Vec::with_capacity(self.encoded_len());
            self.emit(&mut v);
            v
        }

        /// Parses one v2 handshake message from the start of `b`.
        ///
        /// `Ok(None)`: more bytes are needed; `Ok(Some((msg, used)))`.
        pub fn parse(b: &[u8]) -> Result<Option<(Handshake, usize)>, WireError> {
            let Some((version, ty)) = check_header(b)? else {
                return Ok(None);
            };
            if version != VERSION_2 {
                return Err(WireError::UnsupportedVersion(version));
            }
            let min = match ty {
                TYPE_NEW => NEW_BODY,
                TYPE_NEW_ACK => NEW_ACK_BODY,
                TYPE_RESUME => RESUME_BODY,
                TYPE_RESUME_ACK => RESUME_ACK_BODY,
                TYPE_REJECT => REJECT_BODY,
                _ => return Err(WireError::UnknownType { version, ty }),
            };
            let Some(body_len) = be_u16(b, 4) else {
                return Ok(None);
            };
            let body_len = usize::from(body_len);
            if body_len < min || body_len > MAX_HANDSHAKE_BODY {
                return Err(WireError::BadLength {
                    what: "v2 handshake body",
                    len: body_len,
                });
            }
            let total = HEADER_LEN + body_len;
            let Some(body) = b.get(HEADER_LEN..total) else {
                return Ok(None);
            };
            let bad = || WireError::BadLength {
                what: "v2 handshake body",
                len: body_len,
            };
            let msg = match ty {
                TYPE_NEW => Handshake::New(New {
                    session_id: SessionId(arr(body, 0).ok_or_else(bad)?),
                    client_nonce: arr(body, 16).ok_or_else(bad)?,
                    client_public: arr(body, 32).ok_or_else(bad)?,
                    params: get_params(body, 64).ok_or_else(bad)?,
                }),
                TYPE_NEW_ACK => Handshake::NewAck(NewAck {
                    server_nonce: arr(body, 0).ok_or_else(bad)?,
                    server_public: arr(body, 16).ok_or_else(bad)?,
                    params: get_params(body, 48).ok_or_else(bad)?,
                }),
                TYPE_RESUME => Handshake::Resume(Resume {
                    session_id: SessionId(arr(body, 0).ok_or_else(bad)?),
                    generation: be_u64(body, 16).ok_or_else(bad)?,
                    nonce: arr(body, 24).ok_or_else(bad)?,
                    bytes_received: be_u64(body, 40).ok_or_else(bad)?,
                    proof: arr(body, 48).ok_or_else(bad)?,
                }),
                TYPE_RESUME_ACK => Handshake::ResumeAck(ResumeAck {
                    generation: be_u64(body, 0).ok_or_else(bad)?,
                    nonce: arr(body, 8).ok_or_else(bad)?,
                    bytes_received: be_u64(body, 24).ok_or_else(bad)?,
                    proof: arr(body, 32).ok_or_else(bad)?,
                }),
                _ => Handshake::Reject(RejectReason::from_code(*body.first().ok_or_else(bad)?)),
            };
            Ok(Some((msg, total)))
        }
    }
}

/// The first message a server reads on an accepted transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMessage {
    /// A version 2 NEW: create a session.
    New(v2::New),
    /// A version 2 RESUME: attach the transport to a parked session.
    Resume(v2::Resume),
    /// A thesis (version 1) packet. Version 1 sessions cannot be made
    /// lossless or authenticated; drivers report them as unsupported.
    V1(v1::Packet),
}

/// Classifies the first bytes received on an accepted transport (stateless).
///
/// `Ok(None)`: need more bytes. `Ok(Some((msg, used)))`: `used` bytes form
/// the message; bytes after them belong to the frame stream of the session.
/// Any v2 message other than NEW or RESUME is
/// [`WireError::UnexpectedType`].
pub fn accept_first(b: &[u8]) -> Result<Option<(FirstMessage, usize)>, WireError> {
    let Some((version, ty)) = check_header(b)? else {
        return Ok(None);
    };
    match version {
        VERSION_1 => Ok(v1::Packet::parse(b)?.map(|(p, n)| (FirstMessage::V1(p), n))),
        VERSION_2 => match v2::Handshake::parse(b)? {
            None => Ok(None),
            Some((v2::Handshake::New(n), used)) => Ok(Some((FirstMessage::New(n), used))),
            Some((v2::Handshake::Resume(r), used)) => Ok(Some((FirstMessage::Resume(r), used))),
            Some(_) => Err(WireError::UnexpectedType { ty }),
        },
        v => Err(WireError::UnsupportedVersion(v)),
    }
}

/// Frame type: application data.
pub const FRAME_DATA: u8 = 1;
/// Frame type: cumulative acknowledgement.
pub const FRAME_ACK: u8 = 2;
/// Frame type: heartbeat request.
pub const FRAME_PING: u8 = 3;
/// Frame type: heartbeat reply.
pub const FRAME_PONG: u8 = 4;
/// Frame type: write shutdown (half close).
pub const FRAME_SHUTDOWN: u8 = 5;
/// Frame type: graceful close.
pub const FRAME_CLOSE: u8 = 6;
/// Frame type: close acknowledgement.
pub const FRAME_CLOSE_ACK: u8 = 7;
/// Frame type: fatal error.
pub const FRAME_ERROR: u8 = 8;

/// A v2 control frame (every frame except DATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Cumulative count of the peer's bytes delivered to the application.
    Ack(u64),
    /// Heartbeat request carrying a nonce.
    Ping(u64),
    /// Heartbeat reply echoing a PING nonce.
    Pong(u64),
    /// The sender will write no more; carries its final byte count.
    Shutdown(u64),
    /// The sender closes the session; carries its final byte count.
    Close(u64),
    /// Acknowledges a CLOSE.
    CloseAck,
    /// Fatal error with a code.
    Error(u16),
}

impl Control {
    fn ty(&self) -> u8 {
        match self {
            Control::Ack(_) => FRAME_ACK,
            Control::Ping(_) => FRAME_PING,
            Control::Pong(_) => FRAME_PONG,
            Control::Shutdown(_) => FRAME_SHUTDOWN,
            Control::Close(_) => FRAME_CLOSE,
            Control::CloseAck => FRAME_CLOSE_ACK,
            Control::Error(_) => FRAME_ERROR,
        }
    }

    /// Encoded length including the frame header.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + control_body_len(self.ty()).unwrap_or(0)
    }

    /// Appends the encoded frame to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let ty = self.ty();
        let len = control_body_len(ty).unwrap_or(0) as u16;
        out.push(ty);
        out.extend_from_slice(&len.to_be_bytes());
        match self {
            Control::Ack(v)
            | Control::Ping(v)
            | Control::Pong(v)
            | Control::Shutdown(v)
            | Control::Close(v) => out.extend_from_slice(&v.to_be_bytes()),
            Control::CloseAck => {}
            Control::Error(c) => out.extend_from_slice(&c.to_be_bytes()),
        }
    }

    fn from_body(ty: u8, body: &[u8]) -> Option<Control> {
        Some(match ty {
            FRAME_ACK => Control::Ack(be_u64(body, 0)?),
            FRAME_PING => Control::Ping(be_u64(body, 0)?),
            FRAME_PONG => Control::Pong(be_u64(body, 0)?),
            FRAME_SHUTDOWN => Control::Shutdown(be_u64(body, 0)?),
            FRAME_CLOSE => Control::Close(be_u64(body, 0)?),
            FRAME_CLOSE_ACK => Control::CloseAck,
            FRAME_ERROR => Control::Error(be_u16(body, 0)?),
            _ => return None,
        })
    }
}

/// Payload length of a control frame type, `None` for DATA/unknown.
fn control_body_len(ty: u8) -> Option<usize> {
    match ty {
        FRAME_ACK | FRAME_PING | FRAME_PONG | FRAME_SHUTDOWN | FRAME_CLOSE => Some(8),
        FRAME_CLOSE_ACK => Some(0),
        FRAME_ERROR => Some(2),
        _ => None,
    }
}

/// Writes a DATA frame header for `len` payload bytes.
///
/// `len` must be at most [`MAX_DATA_PAYLOAD`]; larger values are clamped
/// (callers split data into frames of at most that size).
pub fn data_header(len: usize) -> [u8; FRAME_HEADER_LEN] {
    let l = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [FRAME_DATA, l[0], l[1]]
}

/// A complete v2 frame (for non-streaming use: tests, tools, fuzzing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// DATA with its whole payload.
    Data(&'a [u8]),
    /// A control frame.
    Control(Control),
}

impl<'a> Frame<'a> {
    /// Appends the encoded frame. DATA payloads over [`MAX_DATA_PAYLOAD`]
    /// are split into several frames.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Data(d) => {
                if d.is_empty() {
                    out.extend_from_slice(&data_header(0));
                }
                for chunk in d.chunks(MAX_DATA_PAYLOAD) {
                    out.extend_from_slice(&data_header(chunk.len()));
                    out.extend_from_slice(chunk);
                }
            }
            Frame::Control(c) => c.emit(out),
        }
    }

    /// Parses one complete frame from the start of `b`.
    pub fn parse(b: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, WireError> {
        let Some(&ty) = b.first() else {
            return Ok(None);
        };
        validate_frame_type(ty)?;
        let Some(len) = be_u16(b, 1) else {
            return Ok(None);
        };
        let len = usize::from(len);
        check_frame_len(ty, len)?;
        let end = FRAME_HEADER_LEN + len;
        let Some(body) = b.get(FRAME_HEADER_LEN..end) else {
            return Ok(None);
        };
        if ty == FRAME_DATA {
            return Ok(Some((Frame::Data(body), end)));
        }
        let c = Control::from_body(ty, body).ok_or(WireError::BadLength {
            what: "control frame",
            len,
        })?;
        Ok(Some((Frame::Control(c), end)))
    }
}

fn validate_frame_type(ty: u8) -> Result<(), WireError> {
    if ty == FRAME_DATA || control_body_len(ty).is_some() {
        Ok(())
    } else {
        Err(WireError::UnknownFrame(ty))
    }
}

fn check_frame_len(ty: u8, len: usize) -> Result<(), WireError> {
    match control_body_len(ty) {
        Some(want) if want != len => Err(WireError::BadLength {
            what: "control frame",
            len,
        }),
        _ => Ok(()),
    }
}

/// One decoded item of the frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameItem<'a> {
    /// A piece of DATA payload (a frame's payload may arrive in pieces).
    Data(&'a [u8]),
    /// A complete control frame.
    Control(Control),
}

#[derive(Debug, Clone, Copy)]
enum DecState {
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Data {
        remaining: usize,
    },
    Body {
        ty: u8,
        len: usize,
        buf: [u8; 8],
        have: usize,
    },
}

/// Incremental v2 frame decoder.
///
/// Feed it any slicing of the stream; it keeps at most a frame header and a
/// control body (8 bytes) between calls and passes DATA payload through as
/// borrowed pieces. After an error the decoder stays failed (every further
/// call returns the same error) until [`FrameDecoder::reset`].
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    state: DecState,
    failed: Option<WireError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        FrameDecoder {
            state: DecState::Header {
                buf: [0; FRAME_HEADER_LEN],
                have: 0,
            },
            failed: None,
        }
    }

    /// Forgets partial state (use on a new transport).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// True when no partial frame is buffered.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, DecState::Header { have: 0, .. }) && self.failed.is_none()
    }

    /// Decodes from `input`, returning how many bytes were consumed and the
    /// item completed by them, if any. Call repeatedly with the unconsumed
    /// rest; `(n, None)` with `n == input.len()` means all input was
    /// absorbed into a partial frame.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<FrameItem<'a>>), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<FrameItem<'a>>), WireError> {
        match &mut self.state {
            DecState::Header { buf, have } => {
                let mut used = 0;
                while *have < FRAME_HEADER_LEN {
                    let Some(&b) = input.get(used) else {
                        return Ok((used, None));
                    };
                    if *have == 0 {
                        validate_frame_type(b)?;
                    }
                    buf[*have] = b;
                    *have += 1;
                    used += 1;
                }
                let ty = buf[0];
                let len = usize::from(u16::from_be_bytes([buf[1], buf[2]]));
                check_frame_len(ty, len)?;
                if ty == FRAME_DATA {
                    self.state = DecState::Data { remaining: len };
                    if len == 0 {
                        self.state = DecState::Header {
                            buf: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                    return Ok((used, None));
                }
                if len == 0 {
                    self.state = DecState::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                    let c = Control::from_body(ty, &[]).ok_or(WireError::UnknownFrame(ty))?;
                    return Ok((used, Some(FrameItem::Control(c))));
                }
                self.state = DecState::Body {
                    ty,
                    len,
                    buf: [0; 8],
                    have: 0,
                };
                Ok((used, None))
            }
            DecState::Data { remaining } => {
                let take = (*remaining).min(input.len());
                let chunk = input.get(..take).unwrap_or(&[]);
                *remaining -= take;
                if *remaining == 0 {
                    self.state = DecState::Header {
                        buf: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                }
                if take == 0 {
                    Ok((0, None))
                } else {
                    Ok((take, Some(FrameItem::Data(chunk))))
                }
            }
            DecState::Body { ty, len, buf, have } => {
                let want = (*len).min(buf.len());
                let take = want.saturating_sub(*have).min(input.len());
                if let (Some(dst), Some(src)) =
                    (buf.get_mut(*have..*have + take), input.get(..take))
                {
                    dst.copy_from_slice(src);
                }
                *have += take;
                if *have < want {
                    return Ok((take, None));
                }
                let body = buf.get(..want).unwrap_or(&[]);
                let c = Control::from_body(*ty, body).ok_or(WireError::BadLength {
                    what: "control frame",
                    len: *len,
                })?;
                self.state = DecState::Header {
                    buf: [0; FRAME_HEADER_LEN],
                    have: 0,
                };
                Ok((take, Some(FrameItem::Control(c))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_response_is_bad_magic() {
        let e = accept_first(b"HTTP/1.1 200 OK\r\n").unwrap_err();
        assert!(matches!(e, WireError::BadMagic { found: 0x4854 }));
        // Detected on the very first byte.
        assert!(matches!(
            check_header(b"H"),
            Err(WireError::BadMagic { found: 0x4800 })
        ));
    }

    #[test]
    fn unknown_version() {
        assert_eq!(
            accept_first(&[0x4E, 0x53, 9, 1]),
            Err(WireError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn decoder_rejects_bad_control_len_at_header() {
        let mut d = FrameDecoder::new();
        let e = d.next(&[FRAME_ACK, 0, 7]).unwrap_err();
        assert!(matches!(e, WireError::BadLength { len: 7, .. }));
        // Stays failed.
        assert!(d.next(&[0]).is_err());
    }

    #[test]
    fn v1_new_is_four_bytes() {
        let mut v = Vec::new();
        v1::Packet::New.emit(&mut v);
        assert_eq!(v, [0x4E, 0x53, 1, 1]);
        assert_eq!(v1::Packet::parse(&v), Ok(Some((v1::Packet::New, 4))));
    }
}
