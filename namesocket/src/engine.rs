//! The sans-IO namesocket v2 session engine.
//!
//! A [`Session`] is one end (client or server) of a namesocket session. It
//! does no IO and reads no clock or RNG of its own: the driver feeds it bytes
//! read from the current transport ([`Session::handle_input`]), the current
//! time, and an RNG where fresh nonces are needed; it takes bytes to write
//! from [`Session::poll_transmit`] / [`Session::advance`], events from
//! [`Session::poll_event`] and the next deadline from
//! [`Session::poll_timeout`].
//!
//! # Driver loop
//!
//! ```text
//! client: s = Session::client(cfg, keys); connect TCP; s.transport_up(now, rng)
//! server: accept TCP; read until wire::accept_first(bytes) is Some:
//!           New(n)    -> s = Session::accept_new(now, cfg, keys, &n, rng)
//!           Resume(r) -> look up sessions[r.session_id]; s.attach_resume(now, &r, rng)
//!                        (Err(reason) -> write wire::encode_reject(reason), close TCP;
//!                         unknown id -> RejectReason::UnknownSession)
//!         then feed the bytes after the first message to s.handle_input.
//! loop:
//!   write: n = s.write(app_bytes)        (Ok(0) = buffer full: block / EAGAIN)
//!   send:  while let Some(t) = s.poll_transmit(now) { n = writev(t.parts()); s.advance(n) }
//!   recv:  bytes from TCP -> s.handle_input(now, bytes); app reads with s.read(buf)
//!          (after read(), poll_transmit again: it may owe an ACK)
//!   time:  sleep until s.poll_timeout(); s.handle_timeout(now)
//!   TCP error/EOF -> s.transport_down(now)
//!   events: PathDead -> client: connect another address pair, transport_up;
//!                       server: keep the session parked, keyed by session_id
//!           ResumeWindowExpired / Error -> report to the application, drop
//!           Closed -> flush poll_transmit, close TCP, drop
//! ```
//!
//! # Protocol choices (stable; the standards leave them open)
//!
//! * **No loss.** Every byte written stays in the retained send buffer until
//!   the peer acknowledges it with an `ACK` frame. An ACK carries the
//!   cumulative count of bytes *delivered to the peer application* (read), so
//!   the retained buffer doubles as flow control: the sender's limit
//!   ([`Config::send_buffer_limit`], announced in NEW/NEW_ACK and at most
//!   the receiver's [`Config::recv_buffer_limit`]) bounds both its memory
//!   and the receiver's unread data. [`Session::write`] accepts 0
//!   bytes when the buffer is full. ACKs go out when the unacknowledged
//!   delivered count reaches `min(ack_every_bytes, peer_limit / 4)`, or
//!   [`Config::ack_delay`] after data arrived, and are coalesced.
//! * **Resume.** After a transport failure the client opens a new transport
//!   and sends RESUME (session id, generation, fresh nonce, bytes received,
//!   HMAC proof). The server answers RESUME_ACK with its own received count,
//!   fresh nonce and proof, then each side retransmits from the other's
//!   counter out of its retained buffer. Sessions are found by id, never by
//!   address. Counters are 64-bit stream offsets.
//! * **Authentication.** NEW carries the client's X25519 public key and nonce,
//!   NEW_ACK the server's. No public-key operation happens at NEW: the
//!   resume key `K = HKDF-SHA256(salt = session_id, ikm = X25519(a, B),
//!   info = "namesocket v2 resume key" || client_nonce || server_nonce ||
//!   client_public || server_public)` is computed lazily at the first
//!   RESUME and cached. RESUME's proof is
//!   `HMAC-SHA256(K, "namesocket v2 resume" || sid || generation ||
//!   client_nonce' || bytes_received)`; RESUME_ACK's is
//!   `HMAC-SHA256(K, "namesocket v2 resume ack" || sid || generation ||
//!   client_nonce' || server_nonce' || bytes_received)`, so the client also
//!   authenticates the server and knows the answer is fresh. The generation
//!   must be strictly greater than the last accepted one (replays are
//!   rejected). A key pair may be shared by many sessions ([`KeyPair`] is
//!   passed in behind an `Arc`; the driver rotates it). Peers whose public key
//!   is a low-order point make the DH non-contributory; such sessions cannot
//!   be resumed (the resume is rejected as `BadProof`). Like TCP itself, the
//!   data stream is not encrypted: an on-path active attacker is out of scope;
//!   knowing the 4-tuple or having seen NEW is not enough to resume.
//! * **Dead paths.** While a transport is up, each side sends a `PING` when it
//!   has transmitted nothing for the effective heartbeat interval
//!   `min(own heartbeat_interval, peer dead_timeout / 3)`; any received byte
//!   proves liveness. No byte for [`Config::dead_timeout`] -> `PathDead`.
//!   Defaults 200 ms / 600 ms give failover detection within 0.6 s; 50 ms /
//!   150 ms is a valid faster setting. A waiting client counts RESUME_ACK /
//!   NEW_ACK silence the same way.
//! * **Parking.** A session whose transport is down (server: parked) waits
//!   for the effective resume window, the smaller of
//!   [`Config::resume_window`] (default 30 s) and the peer's announced
//!   `resume_window_ms`, then reports [`Event::ResumeWindowExpired`] and
//!   fails. Both ends so give up together: a client does not keep
//!   reconnecting to a server that already dropped the session (it would be
//!   refused as an unknown session, `ECONNRESET`); it reports the expiry
//!   (`ETIMEDOUT`) instead. The window runs from the loss of the last
//!   established transport: a transport that connects but never completes
//!   the RESUME does not restart it.
//! * **Peer parameters.** The parameters a peer announces in NEW / NEW_ACK
//!   are checked before they are used:
//!   - `send_buffer_limit` (how much unread data the peer may make us
//!     buffer) must be within `1..=`[`Config::recv_buffer_limit`] (ours,
//!     default 16 MiB, a hard cap whatever the peer says). It cannot be
//!     clamped: the peer sends up to its own limit, so a lower receive limit
//!     would turn its correct flow control into violations.
//!   - `dead_timeout_ms` must be at least [`MIN_DEAD_TIMEOUT`] (30 ms, the
//!     smallest this implementation lets anyone configure): it sets how
//!     often we PING (a third of it), so a tiny value would make us ping
//!     every millisecond. Larger values cost nothing (we ping at the smaller
//!     of our own interval and a third of the peer's dead timeout).
//!   - `resume_window_ms` is accepted whatever its value and combined with
//!     ours by `min` (see Parking); `heartbeat_ms` is informational (the
//!     peer adapts its PINGs to our dead timeout, so we rely on nothing it
//!     says about its own interval) and accepted whatever its value.
//!
//!   A server refuses a NEW outside these bounds with
//!   `REJECT(`[`RejectReason::BadParams`]`)` ([`Session::accept_new`] returns
//!   [`AcceptError::Refused`]); the client reports
//!   [`SessionError::Rejected`] (`ECONNREFUSED`). A client that receives a
//!   NEW_ACK outside them fails the session with [`SessionError::PeerParams`]
//!   (`ECONNREFUSED`) and sends `ERROR(`[`ERROR_BAD_PARAMS`]`)` so that the
//!   server drops its side at once (it reports [`SessionError::PeerError`]).
//! * **Pipelined NEW.** The client may send data frames right after NEW,
//!   before NEW_ACK arrives, if [`Config::pipeline_data`] is set (default:
//!   data written before NEW_ACK is held back until it arrives). After RESUME it waits for RESUME_ACK (it needs
//!   the server's counter). If the first transport fails before NEW_ACK, the
//!   next `transport_up` starts over with a fresh session id.
//! * **Closing.** `shutdown_write` sends `SHUTDOWN(final count)` after the last
//!   data byte; the peer's reads then end ([`Session::read_eof`]). `close`
//!   also shuts writing and, once all written data is acknowledged, sends
//!   `CLOSE`; the peer answers `CLOSE_ACK` and both report [`Event::Closed`].
//!   A peer that receives CLOSE can no longer write (its unacknowledged data
//!   is discarded, like data sent to a closed TCP socket). SHUTDOWN/CLOSE are
//!   repeated after a resume.
//! * **Bad input.** A malformed frame, an impossible counter or a flow-control
//!   violation on an established session is treated as a transport failure:
//!   counters and buffers stay consistent, the error is returned from
//!   `handle_input`, [`Stats::malformed_frames`] counts it and `PathDead` is
//!   raised so the client resumes on a new transport. A peer that is not a
//!   namesocket peer (bad magic, unknown version) or that rejects the session
//!   fails the session with a typed [`SessionError`].

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::CryptoRng;
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::v2::{self, Handshake, Params, RejectReason, SessionId};
use crate::wire::{self, Control, FrameDecoder, FrameItem, WireError};

type HmacSha256 = Hmac<Sha256>;

/// An X25519 key pair that may be shared by many sessions.
pub struct KeyPair {
    secret: StaticSecret,
    public: [u8; 32],
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// From 32 secret bytes (clamped by X25519).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret).to_bytes();
        KeyPair { secret, public }
    }

    /// A fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self::from_secret_bytes(b)
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

/// Longest timer a [`Config`] accepts (heartbeat interval, dead timeout,
/// resume window, ACK delay): 24 hours. It keeps every deadline the engine
/// computes (`now + timer`, `2 × heartbeat`, `4 × dead timeout` in the
/// drivers) far from overflowing and every timer exactly representable in
/// the 32-bit milliseconds of the wire parameters.
pub const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

/// Shortest dead timeout, our own ([`Config::validate`]) and the one a peer
/// announces (see "Peer parameters" in the module docs): 30 ms. We PING
/// every third of the peer's dead timeout, so this bounds the PING rate a
/// peer can ask for to one per 10 ms.
pub const MIN_DEAD_TIMEOUT: Duration = Duration::from_millis(30);

/// Code of the ERROR frame a client sends when it refuses the parameters of
/// the server's NEW_ACK (the same value as [`RejectReason::BadParams`]).
pub const ERROR_BAD_PARAMS: u16 = 7;

/// Errors in a [`Config`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("invalid namesocket config: {0}")]
    Invalid(&'static str),
}

/// Per-session tunables. See the module docs for what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Send a PING after this much transmit silence (default 200 ms).
    pub heartbeat_interval: Duration,
    /// Declare the path dead after this much receive silence (default 600 ms).
    pub dead_timeout: Duration,
    /// How long a session with no transport waits for a resume (default 30 s).
    pub resume_window: Duration,
    /// Most written-but-unacknowledged bytes retained (default 4 MiB).
    pub send_buffer_limit: usize,
    /// Most received-but-unread bytes we agree to buffer (default 16 MiB):
    /// a peer announcing a larger `send_buffer_limit` (its bound on our
    /// unread data) is refused (see "Peer parameters" in the module docs).
    pub recv_buffer_limit: usize,
    /// Send an ACK at least every this many delivered bytes (default
    /// 256 KiB: the sender reads ACKs only when its retained buffer is half
    /// full, so finer ACKs cost the receiver a write each for nothing;
    /// measured on loopback, 64 KiB cost ~0.2 of the throughput ratio with
    /// 2048 and 8192-byte writes).
    pub ack_every_bytes: usize,
    /// Longest delay before acknowledging delivered bytes (default 10 ms).
    pub ack_delay: Duration,
    /// Largest DATA frame payload produced (default and maximum 65535).
    pub max_frame_payload: usize,
    /// Client: send DATA (and SHUTDOWN) right after NEW, before NEW_ACK
    /// (default `false`: held back until NEW_ACK, then sent at once). If the
    /// first transport fails after the server delivered pipelined data but
    /// before NEW_ACK reached the client, the client cannot resume (it lacks
    /// the server's half of the resume key) and sends the data again in a
    /// fresh session, so the server application would receive it twice, in
    /// two sessions (like TCP Fast Open data). Holding it back keeps every
    /// byte delivered exactly once at the cost of one round trip before the
    /// first byte.
    pub pipeline_data: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_millis(200),
            dead_timeout: Duration::from_millis(600),
            resume_window: Duration::from_secs(30),
            send_buffer_limit: 4 << 20,
            recv_buffer_limit: 16 << 20,
            ack_every_bytes: 256 << 10,
            ack_delay: Duration::from_millis(10),
            max_frame_payload: wire::MAX_DATA_PAYLOAD,
            pipeline_data: false,
        }
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Config {
    /// Checks the values for consistency and range: every timer at most
    /// [`MAX_TIMER`], heartbeat at least 1 ms, dead timeout at least
    /// [`MIN_DEAD_TIMEOUT`] and twice the heartbeat, buffer limits
    /// `1..=u32::MAX`, frame payload `1..=65535`, `ack_every_bytes > 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let timers = [
            self.heartbeat_interval,
            self.dead_timeout,
            self.resume_window,
            self.ack_delay,
        ];
        if timers.iter().any(|t| *t > MAX_TIMER) {
            return Err(ConfigError::Invalid(
                "heartbeat_interval, dead_timeout, resume_window and ack_delay must be <= 24 h",
            ));
        }
        if self.heartbeat_interval.is_zero() || ms(self.heartbeat_interval) == 0 {
            return Err(ConfigError::Invalid("heartbeat_interval must be >= 1 ms"));
        }
        if self.dead_timeout < MIN_DEAD_TIMEOUT {
            return Err(ConfigError::Invalid("dead_timeout must be >= 30 ms"));
        }
        if self.dead_timeout < self.heartbeat_interval.saturating_mul(2) {
            return Err(ConfigError::Invalid(
                "dead_timeout must be at least twice heartbeat_interval",
            ));
        }
        if self.send_buffer_limit == 0 || self.send_buffer_limit > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "send_buffer_limit must be 1..=u32::MAX",
            ));
        }
        if self.recv_buffer_limit == 0 || self.recv_buffer_limit > u32::MAX as usize {
            return Err(ConfigError::Invalid(
                "recv_buffer_limit must be 1..=u32::MAX",
            ));
        }
        if self.ack_every_bytes == 0 {
            return Err(ConfigError::Invalid("ack_every_bytes must be > 0"));
        }
        if self.max_frame_payload == 0 || self.max_frame_payload > wire::MAX_DATA_PAYLOAD {
            return Err(ConfigError::Invalid("max_frame_payload must be 1..=65535"));
        }
        Ok(())
    }

    /// Checks the parameters a peer announced in NEW / NEW_ACK against this
    /// configuration (see "Peer parameters" in the module docs); the error
    /// says which bound was broken.
    pub fn check_peer_params(&self, p: &Params) -> Result<(), &'static str> {
        if p.send_buffer_limit == 0 {
            return Err("send_buffer_limit is 0");
        }
        if p.send_buffer_limit as usize > self.recv_buffer_limit {
            return Err("send_buffer_limit exceeds our recv_buffer_limit");
        }
        if u128::from(p.dead_timeout_ms) < MIN_DEAD_TIMEOUT.as_millis() {
            return Err("dead_timeout_ms is below 30 ms");
        }
        Ok(())
    }

    fn params(&self) -> Params {
        Params {
            heartbeat_ms: ms(self.heartbeat_interval),
            dead_timeout_ms: ms(self.dead_timeout),
            resume_window_ms: ms(self.resume_window),
            send_buffer_limit: u32::try_from(self.send_buffer_limit).unwrap_or(u32::MAX),
        }
    }
}

/// Why [`Session::accept_new`] created no session.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AcceptError {
    /// Our own configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client's NEW is refused: write [`encode_reject`] of `reason` on
    /// the transport and close it.
    #[error("NEW refused ({reason}): {detail}")]
    Refused {
        /// The reason to send in REJECT.
        reason: RejectReason,
        /// What was wrong, for logs.
        detail: &'static str,
    },
}

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Initiates with NEW and drives resumes.
    Client,
    /// Accepts NEW / RESUME.
    Server,
}

/// Session-level errors (reported by methods and in [`Event::Error`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// Undecodable input (bad magic, unknown version, malformed frame...).
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    /// The peer broke a protocol rule.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
    /// The server refused NEW or RESUME.
    #[error("session rejected by peer: {0}")]
    Rejected(RejectReason),
    /// The RESUME_ACK proof did not verify.
    #[error("resume acknowledgement failed authentication")]
    BadResumeAck,
    /// The peer sent an ERROR frame.
    #[error("peer reported error code {0}")]
    PeerError(u16),
    /// The server's NEW_ACK announced parameters outside the accepted range
    /// (see "Peer parameters" in the module docs).
    #[error("peer announced unacceptable session parameters: {0}")]
    PeerParams(&'static str),
    /// The operation is not valid in the current state.
    #[error("invalid in the current session state: {0}")]
    InvalidState(&'static str),
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WriteError {
    /// `shutdown_write` or `close` was called.
    #[error("session is shut down for writing")]
    Shutdown,
    /// The session is closed, failed or expired.
    #[error("session is closed")]
    Closed,
}

/// Something the driver must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed (client: NEW_ACK received; server: session
    /// created from NEW).
    Connected,
    /// The current transport is dead or failed. Client: connect another
    /// address pair and call `transport_up`. Server: keep the session parked.
    PathDead,
    /// A new transport is attached and the session continues.
    Resumed {
        /// Bytes this side will send again because the peer never got them.
        retransmitted_bytes: u64,
    },
    /// The peer will send no more data (SHUTDOWN or CLOSE received).
    PeerClosed,
    /// The session ended gracefully. Flush `poll_transmit`, then close.
    Closed,
    /// No resume arrived within the resume window; the session is over.
    ResumeWindowExpired,
    /// The session failed.
    Error(SessionError),
}

/// Counters for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes accepted from the application by `write`.
    pub bytes_written: u64,
    /// DATA payload bytes handed to transports (including retransmissions).
    pub bytes_sent: u64,
    /// Bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Bytes sent again after a resume.
    pub bytes_retransmitted: u64,
    /// DATA payload bytes received.
    pub bytes_received: u64,
    /// Bytes delivered to the application by `read`.
    pub bytes_read: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Malformed frames or protocol violations seen on transports.
    pub malformed_frames: u64,
    /// PINGs sent.
    pub pings_sent: u64,
    /// Transports declared dead by the heartbeat timeout.
    pub dead_paths: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Client before its first transport.
    Idle,
    /// Client: NEW sent, waiting for NEW_ACK (data may be pipelined).
    AwaitNewAck,
    /// Client: RESUME sent, waiting for RESUME_ACK.
    AwaitResumeAck,
    /// Transport up, handshake done.
    Established,
    /// No transport (client: reconnecting; server: parked).
    Disconnected { since: Instant },
    /// Ended gracefully.
    Closed,
    /// Ended with an error or expiry.
    Failed,
}

/// One chunk of bytes to write to the transport, as up to four slices
/// (control frames and a DATA frame header, the payload, which may wrap
/// around the ring buffer, then trailing control frames such as SHUTDOWN). Write them in order (e.g. with `writev`) and report the
/// count with [`Session::advance`].
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    parts: [&'a [u8]; 4],
}

impl<'a> Transmit<'a> {
    /// The non-empty slices, in order.
    pub fn parts(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.parts.iter().copied().filter(|p| !p.is_empty())
    }

    /// The slices as `IoSlice`s for vectored writes (empty ones included).
    pub fn io_slices(&self) -> [IoSlice<'a>; 4] {
        [
            IoSlice::new(self.parts[0]),
            IoSlice::new(self.parts[1]),
            IoSlice::new(self.parts[2]),
            IoSlice::new(self.parts[3]),
        ]
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// True when there is nothing to write (never returned by `poll_transmit`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends all bytes to `out`.
    pub fn copy_to(&self, out: &mut Vec<u8>) {
        for p in self.parts {
            out.extend_from_slice(p);
        }
    }
}

/// Key-derivation inputs recorded at NEW / NEW_ACK.
#[derive(Clone)]
struct Handshakes {
    client_nonce: [u8; 16],
    server_nonce: [u8; 16],
    client_public: [u8; 32],
    server_public: [u8; 32],
}

const INFO_KEY: &[u8] = b"namesocket v2 resume key";
const LABEL_RESUME: &[u8] = b"namesocket v2 resume";
const LABEL_RESUME_ACK: &[u8] = b"namesocket v2 resume ack";

/// One end of a namesocket v2 session. See the module docs.
pub struct Session {
    role: Role,
    config: Config,
    keys: Arc<KeyPair>,
    phase: Phase,
    sid: SessionId,
    hs: Option<Handshakes>,
    resume_key: Option<[u8; 32]>,
    peer: Option<Params>,
    established_once: bool,
    /// Client: last generation sent; server: last generation accepted.
    generation: u64,
    /// When the last established transport was lost (the resume window
    /// runs from then); `None` while established.
    lost_at: Option<Instant>,
    resume_nonce: [u8; 16],

    // send side
    send_buf: VecDeque<u8>,
    snd_acked: u64,
    snd_next: u64,
    snd_high: u64,
    write_shutdown: bool,
    close_requested: bool,
    shutdown_sent: bool,
    close_sent: bool,

    // receive side
    recv_buf: VecDeque<u8>,
    rcv_total: u64,
    rcv_acked_sent: u64,
    unacked_since: Option<Instant>,
    peer_shutdown: bool,

    // transport
    expect_handshake: bool,
    hs_buf: Vec<u8>,
    decoder: FrameDecoder,
    ctrl_pending: Vec<u8>,
    ack_needed: bool,
    ping_needed: bool,
    pong_pending: Option<u64>,
    ping_seq: u64,
    ping_outstanding: Option<(u64, Instant)>,
    rtt: Option<Duration>,
    last_rx: Option<Instant>,
    last_tx: Option<Instant>,

    // staged transmit
    stage_ctrl: Vec<u8>,
    stage_ctrl_pos: usize,
    stage_data_start: u64,
    stage_data_len: usize,
    stage_data_pos: usize,
    stage_tail: Vec<u8>,
    stage_tail_pos: usize,

    events: VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("phase", &self.phase)
            .field("sid", &self.sid)
            .field("snd_acked", &self.snd_acked)
            .field("snd_next", &self.snd_next)
            .field("written", &self.written())
            .field("rcv_total", &self.rcv_total)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(role: Role, config: Config, keys: Arc<KeyPair>) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Session {
            role,
            config,
            keys,
            phase: Phase::Idle,
            sid: SessionId([0; 16]),
            hs: None,
            resume_key: None,
            peer: None,
            established_once: false,
            generation: 0,
            lost_at: None,
            resume_nonce: [0; 16],
            send_buf: VecDeque::new(),
            snd_acked: 0,
            snd_next: 0,
            snd_high: 0,
            write_shutdown: false,
            close_requested: false,
            shutdown_sent: false,
            close_sent: false,
            recv_buf: VecDeque::new(),
            rcv_total: 0,
            rcv_acked_sent: 0,
            unacked_since: None,
            peer_shutdown: false,
            expect_handshake: false,
            hs_buf: Vec::new(),
            decoder: FrameDecoder::new(),
            ctrl_pending: Vec::new(),
            ack_needed: false,
            ping_needed: false,
            pong_pending: None,
            ping_seq: 0,
            ping_outstanding: None,
            rtt: None,
            last_rx: None,
            last_tx: None,
            stage_ctrl: Vec::new(),
            stage_ctrl_pos: 0,
            stage_data_start: 0,
            stage_data_len: 0,
            stage_data_pos: 0,
            stage_tail: Vec::new(),
            stage_tail_pos: 0,
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// A client session; call [`Session::transport_up`] once the first
    /// transport is connected. The application may `write` before that.
    pub fn client(config: Config, keys: Arc<KeyPair>) -> Result<Self, ConfigError> {
        Self::new(Role::Client, config, keys)
    }

    /// A server session from a NEW read by [`wire::accept_first`] on a fresh
    /// transport. NEW_ACK is queued for transmission and
    /// [`Event::Connected`] is raised. Feed the bytes that followed NEW to
    /// [`Session::handle_input`].
    ///
    /// A NEW whose parameters are out of range (see "Peer parameters" in
    /// the module docs) is refused with [`AcceptError::Refused`]: write
    /// [`encode_reject`] of its reason and close the transport.
    pub fn accept_new<R: CryptoRng + ?Sized>(
        now: Instant,
        config: Config,
        keys: Arc<KeyPair>,
        new: &v2::New,
        rng: &mut R,
    ) -> Result<Self, AcceptError> {
        let mut s = Self::new(Role::Server, config, keys)?;
        if let Err(detail) = s.config.check_peer_params(&new.params) {
            return Err(AcceptError::Refused {
                reason: RejectReason::BadParams,
                detail,
            });
        }
        let mut server_nonce = [0u8; 16];
        rng.fill_bytes(&mut server_nonce);
        s.sid = new.session_id;
        s.peer = Some(new.params);
        s.hs = Some(Handshakes {
            client_nonce: new.client_nonce,
            server_nonce,
            client_public: new.client_public,
            server_public: s.keys.public,
        });
        let ack = Handshake::NewAck(v2::NewAck {
            server_nonce,
            server_public: s.keys.public,
            params: s.config.params(),
        });
        ack.emit(&mut s.ctrl_pending);
        s.phase = Phase::Established;
        s.established_once = true;
        s.last_rx = Some(now);
        s.last_tx = Some(now);
        s.events.push_back(Event::Connected);
        Ok(s)
    }

    /// The role of this end.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The session id (all zero for a client before its first transport).
    pub fn session_id(&self) -> SessionId {
        self.sid
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Latest heartbeat round-trip sample.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// True while a transport is attached and the handshake is done.
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// CLOSE has been queued on the current transport (it is fully written
    /// once [`Session::poll_transmit`] returns `None`).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Client: no NEW_ACK has been received yet (the session id may still
    /// change: a transport lost now is replaced by a fresh session).
    pub fn new_ack_pending(&self) -> bool {
        self.role == Role::Client && !self.established_once && !self.is_finished()
    }

    /// True when a transport is attached (handshake may be in progress).
    pub fn is_transport_up(&self) -> bool {
        matches!(
            self.phase,
            Phase::AwaitNewAck | Phase::AwaitResumeAck | Phase::Established
        )
    }

    /// True when the session has no transport and waits for one (client:
    /// should reconnect; server: parked).
    pub fn is_disconnected(&self) -> bool {
        matches!(self.phase, Phase::Disconnected { .. })
    }

    /// True once the session is over (closed, failed or expired).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed)
    }

    /// True once closed gracefully.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    fn written(&self) -> u64 {
        self.snd_acked + self.send_buf.len() as u64
    }

    /// Bytes `write` would accept now.
    pub fn send_capacity(&self) -> usize {
        if self.write_shutdown || self.is_finished() {
            return 0;
        }
        self.config
            .send_buffer_limit
            .saturating_sub(self.send_buf.len())
    }

    /// Written bytes not yet acknowledged by the peer.
    pub fn unacked_bytes(&self) -> usize {
        self.send_buf.len()
    }

    /// True when everything the application wrote, and the SHUTDOWN or
    /// CLOSE it asked for, has been handed to the current transport
    /// (consumed by [`Session::advance`]): no written byte awaits its first
    /// transmission, or its retransmission after a resume. False while no
    /// transport is attached or the handshake is not done (data is then
    /// held back). This is what a driver's `flush` waits for; it says
    /// nothing about the peer having received the bytes (see
    /// [`Session::unacked_bytes`]).
    pub fn output_flushed(&self) -> bool {
        let data_done = self.snd_next == self.written()
            && self.stage_data_pos >= self.stage_data_len
            && self.data_allowed();
        let end_done = !self.write_shutdown
            || (self.shutdown_sent && self.stage_tail_pos >= self.stage_tail.len());
        data_done && end_done
    }

    /// **Testing only** (hidden from the docs; not part of the stable API):
    /// starts the stream counters of a fresh session at `sent` (the offset
    /// of the first byte this side will write) and `received` (the offset
    /// of the first byte it will receive) instead of 0, so that tests can
    /// run the 64-bit counters across 2^32 and beyond without moving
    /// gigabytes. Both ends of a session must agree (one side's `sent` is
    /// the other's `received`); otherwise the peer sees impossible counters
    /// and the session fails or resumes, exactly as with a misbehaving
    /// peer. Only valid before any byte was written, sent or received
    /// (client: before or right after [`Session::transport_up`]; server:
    /// right after [`Session::accept_new`]); errors otherwise.
    #[doc(hidden)]
    pub fn set_stream_offsets_for_testing(
        &mut self,
        sent: u64,
        received: u64,
    ) -> Result<(), SessionError> {
        let fresh = self.snd_acked == 0
            && self.snd_next == 0
            && self.snd_high == 0
            && self.send_buf.is_empty()
            && self.rcv_total == 0
            && self.recv_buf.is_empty()
            && self.stage_data_len == 0
            && !self.is_finished();
        if !fresh {
            return Err(SessionError::InvalidState(
                "stream offsets can only be set on a fresh session",
            ));
        }
        // Keep `sent + buffered` and `received + buffered` far from u64
        // overflow (buffers are at most u32::MAX bytes).
        if sent > u64::MAX / 2 || received > u64::MAX / 2 {
            return Err(SessionError::InvalidState("stream offset too large"));
        }
        self.snd_acked = sent;
        self.snd_next = sent;
        self.snd_high = sent;
        self.rcv_total = received;
        self.rcv_acked_sent = received;
        Ok(())
    }

    /// Received bytes waiting for `read`.
    pub fn readable_bytes(&self) -> usize {
        self.recv_buf.len()
    }

    /// True when the peer will send nothing more and everything was read
    /// (a `read` would return end-of-stream).
    pub fn read_eof(&self) -> bool {
        self.recv_buf.is_empty() && (self.peer_shutdown || self.phase == Phase::Failed)
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Copies up to `data.len()` bytes into the retained send buffer and
    /// returns how many were taken (`Ok(0)` when the buffer is full: block
    /// or return EAGAIN until ACKs free space).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, WriteError> {
        if self.is_finished() {
            return Err(WriteError::Closed);
        }
        if self.write_shutdown {
            return Err(WriteError::Shutdown);
        }
        let n = data.len().min(self.send_capacity());
        if let Some(part) = data.get(..n) {
            self.send_buf.extend(part);
        }
        self.stats.bytes_written += n as u64;
        Ok(n)
    }

    /// Moves received bytes into `buf`; returns the count (0 = nothing
    /// available now; see [`Session::read_eof`]).
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.recv_buf.len());
        if n == 0 {
            return 0;
        }
        let (a, b) = self.recv_buf.as_slices();
        let from_a = n.min(a.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..from_a), a.get(..from_a)) {
            d.copy_from_slice(s);
        }
        let from_b = n - from_a;
        if let (Some(d), Some(s)) = (buf.get_mut(from_a..n), b.get(..from_b)) {
            d.copy_from_slice(s);
        }
        self.recv_buf.drain(..n);
        self.stats.bytes_read += n as u64;
        if self.delivered() - self.rcv_acked_sent >= self.ack_threshold() as u64 {
            self.ack_needed = true;
        }
        n
    }

    fn delivered(&self) -> u64 {
        self.rcv_total - self.recv_buf.len() as u64
    }

    fn ack_threshold(&self) -> usize {
        let peer_limit = self
            .peer
            .map(|p| p.send_buffer_limit as usize)
            .unwrap_or(self.config.send_buffer_limit);
        self.config.ack_every_bytes.min(peer_limit / 4).max(1)
    }

    /// Most unread bytes the peer may make us buffer: its announced send
    /// buffer limit, never more than our [`Config::recv_buffer_limit`].
    fn recv_limit(&self) -> usize {
        self.peer
            .map_or(self.config.recv_buffer_limit, |p| {
                p.send_buffer_limit as usize
            })
            .min(self.config.recv_buffer_limit)
    }

    /// The effective resume window: the smaller of ours and the one the
    /// peer announced (ours until the peer's parameters are known).
    pub fn resume_window(&self) -> Duration {
        let own = self.config.resume_window;
        match self.peer {
            Some(p) => own.min(Duration::from_millis(u64::from(p.resume_window_ms))),
            None => own,
        }
    }

    /// Stops writing: after the last written byte, SHUTDOWN is sent and the
    /// peer's reads end. Reading continues.
    pub fn shutdown_write(&mut self) {
        self.write_shutdown = true;
    }

    /// Graceful close: shuts writing, and once all written data is
    /// acknowledged sends CLOSE; [`Event::Closed`] follows CLOSE_ACK.
    pub fn close(&mut self) {
        self.write_shutdown = true;
        self.close_requested = true;
    }

    /// Abandons the session at once, queueing an ERROR frame with `code` if a
    /// transport is up. The session fails.
    pub fn abort(&mut self, code: u16) {
        if self.is_transport_up() {
            Control::Error(code).emit(&mut self.ctrl_pending);
        }
        self.phase = Phase::Failed;
    }

    fn reset_transport_state(&mut self) {
        self.decoder.reset();
        self.hs_buf.clear();
        self.ctrl_pending.clear();
        self.stage_ctrl.clear();
        self.stage_ctrl_pos = 0;
        self.stage_data_len = 0;
        self.stage_data_pos = 0;
        self.stage_tail.clear();
        self.stage_tail_pos = 0;
        self.ack_needed = false;
        self.ping_needed = false;
        self.pong_pending = None;
        self.ping_outstanding = None;
        self.shutdown_sent = false;
        self.close_sent = false;
        self.expect_handshake = false;
    }

    /// Client: a new transport is connected. Queues NEW (first transport, or
    /// no NEW_ACK was ever received: a fresh session id is drawn) or RESUME
    /// (afterwards). Errors for a server session or a finished session.
    pub fn transport_up<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
    ) -> Result<(), SessionError> {
        if self.role != Role::Client {
            return Err(SessionError::InvalidState(
                "server sessions attach transports with attach_resume",
            ));
        }
        match self.phase {
            Phase::Closed | Phase::Failed => {
                return Err(SessionError::InvalidState("session is finished"));
            }
            Phase::AwaitNewAck | Phase::AwaitResumeAck | Phase::Established => {
                // The driver replaced the transport without reporting the
                // old one down: treat it as down first.
                self.transport_lost(now, false);
            }
            Phase::Idle | Phase::Disconnected { .. } => {}
        }
        self.reset_transport_state();
        self.last_rx = Some(now);
        self.last_tx = Some(now);
        self.expect_handshake = true;
        if !self.established_once {
            let mut sid = [0u8; 16];
            rng.fill_bytes(&mut sid);
            let mut client_nonce = [0u8; 16];
            rng.fill_bytes(&mut client_nonce);
            self.sid = SessionId(sid);
            self.hs = Some(Handshakes {
                client_nonce,
                server_nonce: [0; 16],
                client_public: self.keys.public,
                server_public: [0; 32],
            });
            self.resume_key = None;
            self.snd_next = self.snd_acked;
            Handshake::New(v2::New {
                session_id: self.sid,
                client_nonce,
                client_public: self.keys.public,
                params: self.config.params(),
            })
            .emit(&mut self.ctrl_pending);
            self.phase = Phase::AwaitNewAck;
        } else {
            let key = self.resume_key()?;
            self.generation += 1;
            rng.fill_bytes(&mut self.resume_nonce);
            let proof = resume_proof(
                &key,
                &self.sid,
                self.generation,
                &self.resume_nonce,
                self.rcv_total,
            );
            Handshake::Resume(v2::Resume {
                session_id: self.sid,
                generation: self.generation,
                nonce: self.resume_nonce,
                bytes_received: self.rcv_total,
                proof,
            })
            .emit(&mut self.ctrl_pending);
            self.phase = Phase::AwaitResumeAck;
        }
        Ok(())
    }

    /// The driver reports the current transport failed or ended. Raises
    /// [`Event::PathDead`] if a transport was attached.
    pub fn transport_down(&mut self, now: Instant) {
        self.transport_lost(now, false);
    }

    fn transport_lost(&mut self, now: Instant, by_timeout: bool) {
        if self.is_transport_up() {
            self.reset_transport_state();
            // Everything not acknowledged may need sending again.
            self.snd_next = self.snd_acked;
            // A transport that never completed its RESUME does not restart
            // the resume window.
            let since = *self.lost_at.get_or_insert(now);
            self.phase = Phase::Disconnected { since };
            if by_timeout {
                self.stats.dead_paths += 1;
            }
            self.events.push_back(Event::PathDead);
        }
    }

    fn fail(&mut self, e: SessionError) {
        if !self.is_finished() {
            self.reset_transport_state();
            self.phase = Phase::Failed;
            self.events.push_back(Event::Error(e));
        }
    }

    fn resume_key(&mut self) -> Result<[u8; 32], SessionError> {
        if let Some(k) = self.resume_key {
            return Ok(k);
        }
        let hs = self
            .hs
            .as_ref()
            .ok_or(SessionError::InvalidState("no handshake recorded"))?;
        let peer_public = match self.role {
            Role::Client => hs.server_public,
            Role::Server => hs.client_public,
        };
        let shared = self
            .keys
            .secret
            .diffie_hellman(&PublicKey::from(peer_public));
        if !shared.was_contributory() {
            return Err(SessionError::Rejected(RejectReason::BadProof));
        }
        let mut info = Vec::with_capacity(INFO_KEY.len() + 96);
        info.extend_from_slice(INFO_KEY);
        info.extend_from_slice(&hs.client_nonce);
        info.extend_from_slice(&hs.server_nonce);
        info.extend_from_slice(&hs.client_public);
        info.extend_from_slice(&hs.server_public);
        let hk = Hkdf::<Sha256>::new(Some(&self.sid.0), shared.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand(&info, &mut okm)
            .map_err(|_| SessionError::InvalidState("hkdf output length"))?;
        self.resume_key = Some(okm);
        Ok(okm)
    }

    /// Server: attach a new transport on which `resume` arrived. On success
    /// RESUME_ACK and the retransmission are queued for the new transport
    /// (the driver drops the old one) and [`Event::Resumed`] is raised. On
    /// error the session is unaffected and the driver writes
    /// [`encode_reject`] of the reason on the new transport and closes it.
    pub fn attach_resume<R: CryptoRng + ?Sized>(
        &mut self,
        now: Instant,
        resume: &v2::Resume,
        rng: &mut R,
    ) -> Result<(), RejectReason> {
        if self.role != Role::Server || resume.session_id != self.sid {
            return Err(RejectReason::UnknownSession);
        }
        if self.is_finished() {
            return Err(RejectReason::Expired);
        }
        let key = self.resume_key().map_err(|_| RejectReason::BadProof)?;
        if !verify_resume_proof(
            &key,
            &self.sid,
            resume.generation,
            &resume.nonce,
            resume.bytes_received,
            &resume.proof,
        ) {
            return Err(RejectReason::BadProof);
        }
        if resume.generation <= self.generation {
            return Err(RejectReason::StaleGeneration);
        }
        let r = resume.bytes_received;
        if r < self.snd_acked || r > self.snd_high {
            return Err(RejectReason::InvalidCounter);
        }
        self.generation = resume.generation;
        // Also covers a client that moved before we noticed the old path die.
        self.reset_transport_state();
        self.snd_next = r;
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let proof = resume_ack_proof(
            &key,
            &self.sid,
            resume.generation,
            &resume.nonce,
            &nonce,
            self.rcv_total,
        );
        Handshake::ResumeAck(v2::ResumeAck {
            generation: resume.generation,
            nonce,
            bytes_received: self.rcv_total,
            proof,
        })
        .emit(&mut self.ctrl_pending);
        self.on_resumed(now);
        Ok(())
    }

    fn on_resumed(&mut self, now: Instant) {
        self.phase = Phase::Established;
        self.lost_at = None;
        self.last_rx = Some(now);
        self.last_tx = Some(now);
        self.stats.resumes += 1;
        // The last ACK may have been lost with the old transport: announce
        // what was delivered again on the new one.
        self.ack_needed = self.delivered() > 0;
        let retransmitted_bytes = self.snd_high - self.snd_next;
        self.events.push_back(Event::Resumed {
            retransmitted_bytes,
        });
    }

    /// The peer delivered all bytes below `upto`: free them.
    fn release_acked(&mut self, upto: u64) {
        if upto > self.snd_acked {
            let n = (upto - self.snd_acked).min(self.send_buf.len() as u64) as usize;
            self.send_buf.drain(..n);
            self.snd_acked += n as u64;
            self.stats.bytes_acked = self.snd_acked;
        }
    }

    /// Feeds bytes read from the current transport.
    ///
    /// On error the transport is considered broken (see the module docs):
    /// the session raises `PathDead` (recoverable by resuming) or fails with
    /// [`Event::Error`] (not a namesocket peer, rejected).
    pub fn handle_input(&mut self, now: Instant, input: &[u8]) -> Result<(), SessionError> {
        match self.phase {
            Phase::Closed | Phase::Failed => return Ok(()),
            Phase::Idle | Phase::Disconnected { .. } => {
                return Err(SessionError::InvalidState("no transport attached"));
            }
            _ => {}
        }
        if input.is_empty() {
            return Ok(());
        }
        self.last_rx = Some(now);
        let owned: Vec<u8>;
        let mut input: &[u8] = input;
        if self.expect_handshake {
            self.hs_buf.extend_from_slice(input);
            let parsed = match Handshake::parse(&self.hs_buf) {
                Ok(p) => p,
                Err(e) => {
                    self.stats.malformed_frames += 1;
                    let e = SessionError::Wire(e);
                    self.fail(e.clone());
                    return Err(e);
                }
            };
            let Some((msg, used)) = parsed else {
                return Ok(());
            };
            owned = self.hs_buf.split_off(used.min(self.hs_buf.len()));
            self.hs_buf.clear();
            self.expect_handshake = false;
            self.on_handshake(now, msg)?;
            input = &owned;
        }
        while !input.is_empty() && self.is_transport_up() {
            let (used, item) = match self.decoder.next(input) {
                Ok(x) => x,
                Err(e) => return Err(self.transport_error(now, SessionError::Wire(e))),
            };
            input = input.get(used..).unwrap_or(&[]);
            match item {
                None => {}
                Some(FrameItem::Data(d)) => {
                    if let Err(e) = self.on_data(now, d) {
                        return Err(self.transport_error(now, e));
                    }
                }
                Some(FrameItem::Control(c)) => {
                    if let Err(e) = self.on_control(now, c) {
                        return Err(self.transport_error(now, e));
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Session::handle_input`] for input that the driver read straight
    /// into the application's receive buffer: `buf[..len]` holds the bytes
    /// read from the transport. DATA payload is delivered to the application
    /// at once — moved to the front of `buf` — instead of being copied into
    /// the engine's receive buffer and out again; control frames are
    /// handled as usual. Returns how many payload bytes now start `buf`
    /// (they count as read, like bytes returned by [`Session::read`]) and
    /// the result `handle_input` would have returned (payload before an
    /// error is still delivered).
    ///
    /// Zero-copy delivery needs an empty receive buffer (the order of the
    /// stream) and a completed handshake; otherwise the input is handled
    /// through the receive buffer and as much as fits is read into `buf`,
    /// with the same result. `len` is clamped to `buf.len()`.
    pub fn handle_input_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> (usize, Result<(), SessionError>) {
        let len = len.min(buf.len());
        if !self.recv_buf.is_empty() || self.expect_handshake || !self.is_transport_up() {
            let input = buf.get(..len).unwrap_or(&[]).to_vec();
            let r = self.handle_input(now, &input);
            let n = self.read(buf);
            return (n, r);
        }
        if len == 0 {
            return (0, Ok(()));
        }
        self.last_rx = Some(now);
        let mut out = 0usize;
        let mut pos = 0usize;
        let mut result = Ok(());
        while pos < len && self.is_transport_up() {
            let input = buf.get(pos..len).unwrap_or(&[]);
            let base = input.as_ptr() as usize;
            let (used, item) = match self.decoder.next(input) {
                Ok(x) => x,
                Err(e) => {
                    result = Err(self.transport_error(now, SessionError::Wire(e)));
                    break;
                }
            };
            // Where the payload piece lies in `buf` (the decoder hands out
            // sub-slices of its input).
            let data = match item {
                Some(FrameItem::Data(d)) => Some((
                    pos.saturating_add((d.as_ptr() as usize).wrapping_sub(base)),
                    d.len(),
                )),
                _ => None,
            };
            let control = match item {
                Some(FrameItem::Control(c)) => Some(c),
                _ => None,
            };
            pos += used;
            if let Some((start, dl)) = data {
                if let Err(e) = self.check_data(dl) {
                    result = Err(self.transport_error(now, e));
                    break;
                }
                // Payload never outgrows the input it came in: `out <= start`.
                let end = start.saturating_add(dl);
                if end > len || out > start {
                    result = Err(self.transport_error(
                        now,
                        SessionError::Violation("payload outside the input"),
                    ));
                    break;
                }
                if start != out {
                    buf.copy_within(start..end, out);
                }
                out += dl;
                self.rcv_total += dl as u64;
                self.stats.bytes_received += dl as u64;
                self.stats.bytes_read += dl as u64;
                if self.unacked_since.is_none() {
                    self.unacked_since = Some(now);
                }
            }
            if let Some(c) = control
                && let Err(e) = self.on_control(now, c)
            {
                result = Err(self.transport_error(now, e));
                break;
            }
        }
        if out > 0 && self.delivered() - self.rcv_acked_sent >= self.ack_threshold() as u64 {
            self.ack_needed = true;
        }
        (out, result)
    }

    fn check_data(&self, len: usize) -> Result<(), SessionError> {
        if self.peer_shutdown {
            return Err(SessionError::Violation("DATA after SHUTDOWN"));
        }
        if self.recv_buf.len() + len > self.recv_limit() {
            return Err(SessionError::Violation(
                "peer exceeded its send buffer limit",
            ));
        }
        Ok(())
    }

    fn transport_error(&mut self, now: Instant, e: SessionError) -> SessionError {
        self.stats.malformed_frames += 1;
        self.transport_lost(now, false);
        e
    }

    fn on_handshake(&mut self, now: Instant, msg: Handshake) -> Result<(), SessionError> {
        match (self.phase, msg) {
            (_, Handshake::Reject(reason)) => {
                let e = SessionError::Rejected(reason);
                self.fail(e.clone());
                Err(e)
            }
            (Phase::AwaitNewAck, Handshake::NewAck(ack)) => {
                if let Err(detail) = self.config.check_peer_params(&ack.params) {
                    let e = SessionError::PeerParams(detail);
                    self.fail(e.clone());
                    // Tell the server, which created the session at NEW, so
                    // that it drops it at once instead of parking it.
                    Control::Error(ERROR_BAD_PARAMS).emit(&mut self.ctrl_pending);
                    return Err(e);
                }
                if let Some(hs) = self.hs.as_mut() {
                    hs.server_nonce = ack.server_nonce;
                    hs.server_public = ack.server_public;
                }
                self.peer = Some(ack.params);
                self.phase = Phase::Established;
                self.lost_at = None;
                self.established_once = true;
                self.events.push_back(Event::Connected);
                Ok(())
            }
            (Phase::AwaitResumeAck, Handshake::ResumeAck(ack)) => {
                let key = self.resume_key()?;
                if ack.generation != self.generation
                    || !verify_resume_ack_proof(
                        &key,
                        &self.sid,
                        ack.generation,
                        &self.resume_nonce,
                        &ack.nonce,
                        ack.bytes_received,
                        &ack.proof,
                    )
                {
                    self.stats.malformed_frames += 1;
                    self.transport_lost(now, false);
                    return Err(SessionError::BadResumeAck);
                }
                let r = ack.bytes_received;
                if r < self.snd_acked || r > self.snd_high {
                    let e = SessionError::Violation("RESUME_ACK counter out of range");
                    self.fail(e.clone());
                    return Err(e);
                }
                self.snd_next = r;
                self.on_resumed(now);
                Ok(())
            }
            (_, other) => {
                let ty = match other {
                    Handshake::New(_) => v2::TYPE_NEW,
                    Handshake::NewAck(_) => v2::TYPE_NEW_ACK,
                    Handshake::Resume(_) => v2::TYPE_RESUME,
                    Handshake::ResumeAck(_) => v2::TYPE_RESUME_ACK,
                    Handshake::Reject(_) => v2::TYPE_REJECT,
                };
                let e = SessionError::Wire(WireError::UnexpectedType { ty });
                self.stats.malformed_frames += 1;
                self.fail(e.clone());
                Err(e)
            }
        }
    }

    fn on_data(&mut self, now: Instant, d: &[u8]) -> Result<(), SessionError> {
        self.check_data(d.len())?;
        self.recv_buf.extend(d);
        self.rcv_total += d.len() as u64;
        self.stats.bytes_received += d.len() as u64;
        if self.unacked_since.is_none() {
            self.unacked_since = Some(now);
        }
        Ok(())
    }

    fn on_control(&mut self, now: Instant, c: Control) -> Result<(), SessionError> {
        match c {
            Control::Ack(v) => {
                if v > self.snd_high {
                    return Err(SessionError::Violation("ACK beyond data sent"));
                }
                self.release_acked(v);
            }
            Control::Ping(n) => self.pong_pending = Some(n),
            Control::Pong(n) => {
                if let Some((want, at)) = self.ping_outstanding
                    && want == n
                {
                    self.rtt = Some(now.saturating_duration_since(at));
                    self.ping_outstanding = None;
                }
            }
            Control::Shutdown(fin) => {
                if fin != self.rcv_total {
                    return Err(SessionError::Violation("SHUTDOWN count mismatch"));
                }
                if !self.peer_shutdown {
                    self.peer_shutdown = true;
                    self.events.push_back(Event::PeerClosed);
                }
            }
            Control::Close(fin) => {
                if fin != self.rcv_total {
                    return Err(SessionError::Violation("CLOSE count mismatch"));
                }
                if !self.peer_shutdown {
                    self.peer_shutdown = true;
                    self.events.push_back(Event::PeerClosed);
                }
                Control::CloseAck.emit(&mut self.ctrl_pending);
                self.write_shutdown = true;
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed);
            }
            Control::CloseAck => {
                if !self.close_sent {
                    return Err(SessionError::Violation("CLOSE_ACK without CLOSE"));
                }
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed);
            }
            Control::Error(code) => {
                self.fail(SessionError::PeerError(code));
            }
        }
        Ok(())
    }

    /// `min(own heartbeat, peer dead timeout / 3)`; the peer's share is
    /// never below a third of [`MIN_DEAD_TIMEOUT`] (also checked at NEW /
    /// NEW_ACK).
    fn effective_heartbeat(&self) -> Duration {
        let own = self.config.heartbeat_interval;
        match self.peer {
            Some(p) => {
                let dead = Duration::from_millis(u64::from(p.dead_timeout_ms));
                own.min(dead.max(MIN_DEAD_TIMEOUT) / 3)
            }
            None => own,
        }
    }

    fn frames_allowed(&self) -> bool {
        matches!(self.phase, Phase::Established | Phase::AwaitNewAck)
    }

    /// True when written data may be transmitted now (established, or
    /// awaiting NEW_ACK with [`Config::pipeline_data`]).
    pub fn data_allowed(&self) -> bool {
        self.phase == Phase::Established
            || (self.phase == Phase::AwaitNewAck && self.config.pipeline_data)
    }

    /// The next instant at which [`Session::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Disconnected { since } => Some(since + self.resume_window()),
            Phase::AwaitNewAck | Phase::AwaitResumeAck | Phase::Established => {
                let mut t = self.last_rx.map(|r| r + self.config.dead_timeout);
                let mut min = |x: Option<Instant>| {
                    if let Some(x) = x {
                        t = Some(t.map_or(x, |t| t.min(x)));
                    }
                };
                if self.frames_allowed() {
                    min(self.last_tx.map(|x| x + self.effective_heartbeat()));
                    if self.delivered() > self.rcv_acked_sent {
                        min(self.unacked_since.map(|x| x + self.config.ack_delay));
                    }
                }
                t
            }
            _ => None,
        }
    }

    /// Runs timers: heartbeats, delayed ACKs, dead-path detection and the
    /// resume window.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Disconnected { since } if now >= since + self.resume_window() => {
                self.phase = Phase::Failed;
                self.events.push_back(Event::ResumeWindowExpired);
            }
            Phase::AwaitNewAck | Phase::AwaitResumeAck | Phase::Established => {
                if let Some(r) = self.last_rx
                    && now >= r + self.config.dead_timeout
                {
                    self.transport_lost(now, true);
                    return;
                }
                if self.frames_allowed() {
                    if let Some(t) = self.last_tx
                        && now >= t + self.effective_heartbeat()
                    {
                        self.ping_needed = true;
                    }
                    if self.delivered() > self.rcv_acked_sent
                        && let Some(u) = self.unacked_since
                        && now >= u + self.config.ack_delay
                    {
                        self.ack_needed = true;
                    }
                }
            }
            _ => {}
        }
    }

    fn stage_empty(&self) -> bool {
        self.stage_ctrl_pos >= self.stage_ctrl.len()
            && self.stage_data_pos >= self.stage_data_len
            && self.stage_tail_pos >= self.stage_tail.len()
    }

    fn build_stage(&mut self, now: Instant) {
        self.stage_ctrl.clear();
        self.stage_ctrl_pos = 0;
        self.stage_data_len = 0;
        self.stage_data_pos = 0;
        self.stage_tail.clear();
        self.stage_tail_pos = 0;
        self.stage_ctrl.append(&mut self.ctrl_pending);
        if self.frames_allowed() {
            if let Some(n) = self.pong_pending.take() {
                Control::Pong(n).emit(&mut self.stage_ctrl);
            }
            // A CLOSE must follow the final ACK: the peer discards what is
            // unacknowledged when CLOSE arrives, so tell it first that
            // everything delivered here was received.
            if self.close_requested && !self.close_sent && self.delivered() > self.rcv_acked_sent {
                self.ack_needed = true;
            }
            if self.ack_needed {
                let d = self.delivered();
                Control::Ack(d).emit(&mut self.stage_ctrl);
                self.rcv_acked_sent = d;
                self.ack_needed = false;
                self.unacked_since = if self.recv_buf.is_empty() {
                    None
                } else {
                    Some(now)
                };
            }
            if self.ping_needed {
                self.ping_needed = false;
                self.ping_seq = self.ping_seq.wrapping_add(1);
                Control::Ping(self.ping_seq).emit(&mut self.stage_ctrl);
                self.ping_outstanding = Some((self.ping_seq, now));
                self.stats.pings_sent += 1;
            }
            let written = self.written();
            let avail = if self.data_allowed() {
                written - self.snd_next
            } else {
                0
            };
            if avail > 0 {
                let len = (avail.min(self.config.max_frame_payload as u64)) as usize;
                self.stage_ctrl.extend_from_slice(&wire::data_header(len));
                self.stage_data_start = self.snd_next;
                self.stage_data_len = len;
            }
            let staged_end = self.snd_next + self.stage_data_len as u64;
            if self.write_shutdown && staged_end == written && self.data_allowed() {
                if self.close_requested {
                    if self.snd_acked == written && !self.close_sent {
                        Control::Close(written).emit(&mut self.stage_tail);
                        self.close_sent = true;
                        self.shutdown_sent = true;
                    }
                } else if !self.shutdown_sent {
                    Control::Shutdown(written).emit(&mut self.stage_tail);
                    self.shutdown_sent = true;
                }
            }
        }
        if !self.stage_empty() {
            self.last_tx = Some(now);
        }
    }

    /// Bytes to write to the current transport, or `None`. Returns the same
    /// bytes again until [`Session::advance`] consumes them.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit<'_>> {
        if matches!(self.phase, Phase::Idle | Phase::Disconnected { .. }) {
            return None;
        }
        if self.stage_empty() {
            self.build_stage(now);
            if self.stage_empty() {
                return None;
            }
        }
        let ctrl = self.stage_ctrl.get(self.stage_ctrl_pos..).unwrap_or(&[]);
        let len = self.stage_data_len - self.stage_data_pos;
        let (a, b) = if len == 0 {
            (&[][..], &[][..])
        } else {
            // ACKs only cover advanced bytes, so the unsent rest of the
            // staged frame is still in the ring.
            let pos = self.stage_data_start + self.stage_data_pos as u64;
            let off = pos.saturating_sub(self.snd_acked) as usize;
            ring_range(&self.send_buf, off, len)
        };
        let tail = self.stage_tail.get(self.stage_tail_pos..).unwrap_or(&[]);
        Some(Transmit {
            parts: [ctrl, a, b, tail],
        })
    }

    /// Reports that the driver wrote `n` bytes of the last
    /// [`Session::poll_transmit`] result.
    pub fn advance(&mut self, mut n: usize) {
        let c = n.min(self.stage_ctrl.len() - self.stage_ctrl_pos.min(self.stage_ctrl.len()));
        self.stage_ctrl_pos += c;
        n -= c;
        let d = n.min(self.stage_data_len - self.stage_data_pos);
        if d > 0 {
            self.stage_data_pos += d;
            let start = self.stage_data_start + (self.stage_data_pos - d) as u64;
            let end = start + d as u64;
            if end > self.snd_high {
                let retrans = self.snd_high.saturating_sub(start);
                self.stats.bytes_retransmitted += retrans;
                self.snd_high = end;
            } else {
                self.stats.bytes_retransmitted += d as u64;
            }
            self.stats.bytes_sent += d as u64;
            self.snd_next = end;
        }
        n -= d;
        let t = n.min(self.stage_tail.len() - self.stage_tail_pos.min(self.stage_tail.len()));
        self.stage_tail_pos += t;
    }
}

/// Two slices covering `len` bytes from logical offset `off` of `ring`.
fn ring_range(ring: &VecDeque<u8>, off: usize, len: usize) -> (&[u8], &[u8]) {
    let (a, b) = ring.as_slices();
    if off >= a.len() {
        let s = off - a.len();
        (b.get(s..s + len).unwrap_or(&[]), &[])
    } else {
        let first = len.min(a.len() - off);
        (
            a.get(off..off + first).unwrap_or(&[]),
            b.get(..len - first).unwrap_or(&[]),
        )
    }
}

/// Encoded REJECT for the driver to write on a refused transport.
pub fn encode_reject(reason: RejectReason) -> Vec<u8> {
    Handshake::Reject(reason).to_vec()
}

fn mac_with(key: &[u8; 32], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC zero-pads keys shorter than the hash block (64 bytes), so the
    // fixed-size constructor with a zero-padded key is the same MAC as the
    // 32-byte key, without a fallible path.
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mut m = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
    for p in parts {
        m.update(p);
    }
    m
}

fn resume_proof(
    key: &[u8; 32],
    sid: &SessionId,
    generation: u64,
    nonce: &[u8; 16],
    received: u64,
) -> [u8; 32] {
    mac_with(
        key,
        &[
            LABEL_RESUME,
            &sid.0,
            &generation.to_be_bytes(),
            nonce,
            &received.to_be_bytes(),
        ],
    )
    .finalize()
    .into_bytes()
    .into()
}

fn verify_resume_proof(
    key: &[u8; 32],
    sid: &SessionId,
    generation: u64,
    nonce: &[u8; 16],
    received: u64,
    proof: &[u8; 32],
) -> bool {
    mac_with(
        key,
        &[
            LABEL_RESUME,
            &sid.0,
            &generation.to_be_bytes(),
            nonce,
            &received.to_be_bytes(),
        ],
    )
    .verify_slice(proof)
    .is_ok()
}

fn resume_ack_parts<'a>(
    sid: &'a SessionId,
    generation: &'a [u8; 8],
    client_nonce: &'a [u8; 16],
    server_nonce: &'a [u8; 16],
    received: &'a [u8; 8],
) -> [&'a [u8]; 6] {
    [
        LABEL_RESUME_ACK,
        &sid.0,
        generation,
        client_nonce,
        server_nonce,
        received,
    ]
}

fn resume_ack_proof(
    key: &[u8; 32],
    sid: &SessionId,
    generation: u64,
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
    received: u64,
) -> [u8; 32] {
    let g = generation.to_be_bytes();
    let r = received.to_be_bytes();
    mac_with(
        key,
        &resume_ack_parts(sid, &g, client_nonce, server_nonce, &r),
    )
    .finalize()
    .into_bytes()
    .into()
}

fn verify_resume_ack_proof(
    key: &[u8; 32],
    sid: &SessionId,
    generation: u64,
    client_nonce: &[u8; 16],
    server_nonce: &[u8; 16],
    received: u64,
    proof: &[u8; 32],
) -> bool {
    let g = generation.to_be_bytes();
    let r = received.to_be_bytes();
    mac_with(
        key,
        &resume_ack_parts(sid, &g, client_nonce, server_nonce, &r),
    )
    .verify_slice(proof)
    .is_ok()
}
