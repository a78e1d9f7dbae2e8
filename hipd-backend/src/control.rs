//! The hipd control protocol (version 1) and a small blocking client.
//!
//! This module is always compiled (it needs only `serde`/`serde_json`), so
//! the shim API, the endpoint API and other tools can depend on
//! `hipd-backend` with `default-features = false` and talk to a running
//! daemon without linking it.
//!
//! # Wire format
//! A Unix stream socket (default [`DEFAULT_SOCKET`], `hipd --control-socket`
//! to change). Each message is **one line of JSON** terminated by `\n`.
//! The client sends an [`Envelope`] `{"v":1,"req":{...}}`; the daemon answers
//! each request, in order, with one [`Reply`] line `{"v":1,"ok":true,
//! "data":{...}}` or `{"v":1,"ok":false,"error":{"code":"...","message":
//! "..."}}`. A request with another `v` is answered with
//! [`ErrorCode::Version`]. Several requests may be sent on one connection.
//! Lines longer than [`MAX_LINE`] bytes close the connection.
//!
//! # Authorization
//! The daemon reads the peer credentials (`SO_PEERCRED`) of every
//! connection. Read-only queries ([`Request::is_read_only`]) are open to
//! every user; requests changing identities, mappings or global settings
//! need uid 0 ([`ErrorCode::PermissionDenied`] otherwise). Requests that act
//! on one peer on behalf of an application ([`Request::Connect`],
//! [`Request::Opportunistic`]) are open to every user, like sending a packet
//! to a HIT is. Per-socket requests (`Shim*`, used by the `shimapi`
//! crate) are accepted only from the uid that owns the socket (the uid of
//! the kernel socket with that local port, asked of the kernel with a
//! sock_diag query)
//! or from root; per-socket state lives as long as the control connection
//! that registered it, or until [`Request::ShimRelease`].
//!
//! # Versioning
//! [`PROTOCOL_VERSION`] is bumped on any incompatible change. New request
//! variants and new optional fields (`#[serde(default)]`) are compatible
//! additions.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Version of the protocol spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/hipd/hipd.sock";

/// Longest accepted request line (bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Which host identities to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HiSelector {
    /// Only the default identity.
    Default,
    /// All identities.
    All,
}

/// Log verbosity (`hipconf daemon debug …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebugLevel {
    /// Errors only.
    None,
    /// Warnings and info.
    Low,
    /// Debug.
    Medium,
    /// Trace.
    All,
}

impl std::str::FromStr for DebugLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(DebugLevel::None),
            "low" => Ok(DebugLevel::Low),
            "medium" => Ok(DebugLevel::Medium),
            "all" | "high" => Ok(DebugLevel::All),
            o => Err(format!("unknown debug level '{o}' (none|low|medium|all)")),
        }
    }
}

/// Underlay used for new exchanges with peers without a per-peer setting
/// (`hipconf daemon nat …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatMode {
    /// Native: HIP as IP protocol 139, ESP as protocol 50.
    None,
    /// UDP encapsulation on port 10500 (RFC 5770/9028 framing).
    PlainUdp,
}

impl std::str::FromStr for NatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(NatMode::None),
            "plain-udp" => Ok(NatMode::PlainUdp),
            o => Err(format!("unknown nat mode '{o}' (none|plain-udp)")),
        }
    }
}

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Daemon version, pid and protocol version.
    Ping,
    /// List host identities.
    GetHi {
        /// Which.
        which: HiSelector,
    },
    /// Add a static HIT → locator mapping (and optionally the peer LSI).
    AddMap {
        /// Peer HIT.
        hit: Ipv6Addr,
        /// Peer locator.
        ip: IpAddr,
        /// Peer LSI (allocated by the daemon when absent).
        #[serde(default)]
        lsi: Option<Ipv4Addr>,
        /// Per-peer underlay (the global `nat` setting when absent).
        #[serde(default)]
        transport: Option<NatMode>,
    },
    /// Remove a static mapping (one locator, or all of the HIT).
    DelMap {
        /// Peer HIT.
        hit: Ipv6Addr,
        /// One locator; all when absent.
        #[serde(default)]
        ip: Option<IpAddr>,
    },
    /// List host associations (all, or the one with this peer HIT).
    GetHa {
        /// Peer HIT filter.
        #[serde(default)]
        hit: Option<Ipv6Addr>,
    },
    /// Reset (close) associations: all, or the one with this peer HIT.
    Rst {
        /// Peer HIT; all when absent.
        #[serde(default)]
        hit: Option<Ipv6Addr>,
    },
    /// Change the log level at run time.
    Debug {
        /// New level.
        level: DebugLevel,
    },
    /// Global underlay for new exchanges.
    Nat {
        /// Mode.
        mode: NatMode,
    },
    /// Puzzle difficulty #K for R1s built from now on.
    SetPuzzle {
        /// Difficulty (0..=28).
        k: u8,
    },
    /// Re-read local locators now and announce them (UPDATE with
    /// LOCATOR_SET) to every established association, changed or not.
    ManualUpdate,
    /// Shotgun mode: the first I1 goes to up to three local × peer locator
    /// pairs (the RFC 7401 limit), retransmissions to the first one.
    Shotgun {
        /// On or off.
        on: bool,
    },
    /// Start a base exchange with a peer HIT (mapping must be known).
    Connect {
        /// Peer HIT.
        hit: Ipv6Addr,
        /// Wait up to this many milliseconds for the result (0: don't wait).
        #[serde(default)]
        wait_ms: u64,
    },
    /// Opportunistic base exchange with an IP address (HIT learned from R1).
    Opportunistic {
        /// Peer locator.
        ip: IpAddr,
        /// Wait up to this many milliseconds (default 5000).
        #[serde(default)]
        wait_ms: u64,
    },
    /// Daemon counters.
    Stats,
    /// Daemon-wide failure-detection default (`set reap …`; the per-context
    /// SOL_SHIM options override it).
    SetReap {
        /// Which parameter.
        param: ReapParam,
        /// Value (milliseconds, or a count for `probes`).
        value: u32,
    },
    /// SOL_SHIM: the shim context of a socket (owner only).
    ShimGet {
        /// The socket.
        flow: FlowId,
    },
    /// SOL_SHIM: change a socket's or its context's setting (owner only).
    ShimSet {
        /// The socket.
        flow: FlowId,
        /// What to change.
        set: ShimSetting,
    },
    /// SOL_SHIM: register the locators of a per-datagram
    /// `SHIM_LOC_*_SEND` control message; the answer is the marker the
    /// library puts into the datagram's traffic class (owner only).
    ShimSendToken {
        /// The socket (a datagram socket).
        flow: FlowId,
        /// Source locator for the marked datagrams (`None`: the context's).
        #[serde(default)]
        local: Option<IpAddr>,
        /// Destination locator (`None`: the context's).
        #[serde(default)]
        peer: Option<IpAddr>,
        /// The socket's own traffic class, restored in marked datagrams.
        #[serde(default)]
        base_tclass: u8,
    },
    /// SOL_SHIM: forget a socket's per-socket state (owner only). Also
    /// happens when the control connection that registered it closes.
    ShimRelease {
        /// The socket.
        flow: FlowId,
    },
    /// The shim contexts (associations with their locators, path and
    /// failure-detection state) for `hipconf daemon get shim`.
    ShimList {
        /// Peer HIT filter.
        #[serde(default)]
        hit: Option<Ipv6Addr>,
    },
}

/// Failure-detection defaults settable with [`Request::SetReap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReapParam {
    /// Send Timeout (ms): no inbound traffic this long after we sent
    /// payload starts path exploration.
    SendTimeout,
    /// Keepalive Timeout (ms): how long after inbound payload we keep
    /// sending keepalives when we have nothing to send.
    KeepaliveTimeout,
    /// Keepalive Interval (ms).
    KeepaliveInterval,
    /// Initial Probe Timeout (ms).
    ProbeTimeout,
    /// Number of initial probes (count).
    Probes,
}

impl std::str::FromStr for ReapParam {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "send-timeout" => Ok(ReapParam::SendTimeout),
            "keepalive-timeout" => Ok(ReapParam::KeepaliveTimeout),
            "keepalive-interval" => Ok(ReapParam::KeepaliveInterval),
            "probe-timeout" => Ok(ReapParam::ProbeTimeout),
            "probes" => Ok(ReapParam::Probes),
            o => Err(format!(
                "unknown reap parameter '{o}' (send-timeout|keepalive-timeout|keepalive-interval|probe-timeout|probes)"
            )),
        }
    }
}

/// A transport-layer flow (one connected socket) as the kernel sees it
/// above the shim: identifiers (HITs or LSIs) and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowId {
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// Local identifier (HIT or LSI) = `getsockname` address.
    pub local: IpAddr,
    /// Local port.
    pub local_port: u16,
    /// Peer identifier (HIT or LSI) = `getpeername` address.
    pub peer: IpAddr,
    /// Peer port.
    pub peer_port: u16,
}

/// A locator with an application preference (RFC 6316 `shim_locator`
/// semantics: lower `prio` = more preferred; among equal `prio`, higher
/// `weight` wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocPref {
    /// Address (IPv4 or IPv6).
    pub addr: IpAddr,
    /// Priority.
    pub prio: u16,
    /// Weight.
    pub weight: u16,
}

/// REAP parameters of `SHIM_PATHEXPLORE` (RFC 6316 §6.13, RFC 5534).
/// Zero fields mean "the daemon default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathExplore {
    /// Number of initial probes.
    pub probenum: u16,
    /// Keepalive timeout, seconds.
    pub keepaliveto: u16,
    /// Keepalive interval, seconds.
    pub keepaliveint: u16,
    /// Initial probe timeout, milliseconds.
    pub initprobeto: u16,
}

/// One change requested through `setsockopt(SOL_SHIM, …)` or a
/// `SHIM_FEEDBACK` control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "opt", rename_all = "snake_case")]
pub enum ShimSetting {
    /// `SHIM_LOC_LOCAL_PREF` (context).
    LocalPref {
        /// Locator and preference.
        loc: LocPref,
    },
    /// `SHIM_LOC_PEER_PREF` (context).
    PeerPref {
        /// Locator and preference.
        loc: LocPref,
    },
    /// `SHIM_LOC_LOCAL_SEND` sticky (socket); `None` cancels.
    LocalSend {
        /// Source locator.
        #[serde(default)]
        addr: Option<IpAddr>,
    },
    /// `SHIM_LOC_PEER_SEND` sticky (socket); `None` cancels.
    PeerSend {
        /// Destination locator.
        #[serde(default)]
        addr: Option<IpAddr>,
    },
    /// `SHIM_LOC_LOCAL_RECV` (socket).
    LocalRecv {
        /// On or off.
        on: bool,
    },
    /// `SHIM_LOC_PEER_RECV` (socket).
    PeerRecv {
        /// On or off.
        on: bool,
    },
    /// `SHIM_LOCLIST_LOCAL` set (context): restrict and order Ls(local).
    LoclistLocal {
        /// The list (at most [`SHIM_MAX_LOCATORS`]).
        locs: Vec<LocPref>,
    },
    /// `SHIM_LOCLIST_PEER` set (context): restrict and order Ls(peer).
    LoclistPeer {
        /// The list (at most [`SHIM_MAX_LOCATORS`]).
        locs: Vec<LocPref>,
    },
    /// `SHIM_HOT_STANDBY` (context).
    HotStandby {
        /// On or off.
        on: bool,
    },
    /// `SHIM_APP_TIMEOUT` (context): REAP Send Timeout in seconds,
    /// 0 = daemon default.
    AppTimeout {
        /// Seconds.
        secs: u32,
    },
    /// Project extension `SHIM_APP_TIMEOUT_MS` (context): the Send
    /// Timeout in milliseconds, 0 = daemon default.
    AppTimeoutMs {
        /// Milliseconds.
        ms: u32,
    },
    /// `SHIM_PATHEXPLORE` (context); `None` = daemon defaults.
    PathExplore {
        /// Parameters.
        #[serde(default)]
        pe: Option<PathExplore>,
    },
    /// `SHIM_FEEDBACK` (context): `indicator` 1 = unable to connect and
    /// 2 = unsatisfactory (both start path exploration at once),
    /// 3 = satisfactory (evidence that the current pair works), 0 = ignore.
    Feedback {
        /// 0 = outbound, 1 = inbound.
        direction: u8,
        /// Indicator (0..=3).
        indicator: u8,
    },
}

/// The most locators a `SHIM_LOCLIST_*` set may carry (RFC 6316 §13).
pub const SHIM_MAX_LOCATORS: usize = 32;

/// Verification state of a locator as the shim API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocState {
    /// A local address (always usable as a source).
    Local,
    /// Peer locator verified reachable (HIP ACTIVE).
    Verified,
    /// Peer locator announced but not verified yet.
    Unverified,
    /// Found unreachable by failure detection / probing.
    Unreachable,
    /// Lifetime expired.
    Deprecated,
}

/// One locator of a context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimLocInfo {
    /// Address.
    pub addr: IpAddr,
    /// Application priority (lower = preferred; 65535, the lowest, when
    /// the application never set one).
    pub prio: u16,
    /// Application weight (0 when never set).
    pub weight: u16,
    /// Interface index (local locators; 0 for peer locators).
    pub ifindex: u32,
    /// `lc_flags` (HIP: 0; HBA = 0x01, CGA = 0x02 are Shim6's).
    pub flags: u16,
    /// `lc_proto` (RFC 6316 §8.1): 17 (`IPPROTO_UDP`) when the association
    /// runs over hipd's UDP encapsulation, else 0 (absent from older
    /// daemons' answers: 0).
    #[serde(default)]
    pub proto: u8,
    /// `lc_port`: the UDP encapsulation port (host order) with `proto` 17
    /// (hipd's UDP underlay port, 10500 by default), else 0.
    #[serde(default)]
    pub port: u16,
    /// State.
    pub state: LocState,
    /// Part of the pair in use now.
    pub in_use: bool,
    /// Allowed by the context's `SHIM_LOCLIST_*` restriction (true when
    /// no restriction is set).
    pub allowed: bool,
    /// Preferred by the HIP association (P bit / engine preference).
    pub preferred: bool,
}

/// Per-socket shim state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSocketInfo {
    /// Sticky `SHIM_LOC_LOCAL_SEND`.
    pub local_send: Option<IpAddr>,
    /// Sticky `SHIM_LOC_PEER_SEND`.
    pub peer_send: Option<IpAddr>,
    /// `SHIM_LOC_LOCAL_RECV`.
    pub local_recv: bool,
    /// `SHIM_LOC_PEER_RECV`.
    pub peer_recv: bool,
    /// The locator pair (local, peer) the socket's latest datagram or
    /// segment arrived on (RECV for stream sockets).
    pub last_rx: Option<(IpAddr, IpAddr)>,
}

/// A shim context (one HIP association) as the shim API sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimContextInfo {
    /// Our HIT.
    pub local_hit: Ipv6Addr,
    /// Peer HIT.
    pub peer_hit: Ipv6Addr,
    /// HIP state name.
    pub state: String,
    /// Ls(local).
    pub local: Vec<ShimLocInfo>,
    /// Ls(peer).
    pub peer: Vec<ShimLocInfo>,
    /// The pair (local, peer) in use now.
    pub path: Option<(IpAddr, IpAddr)>,
    /// The verified standby pair kept with `SHIM_HOT_STANDBY`.
    pub standby: Option<(IpAddr, IpAddr)>,
    /// Whether the (local, peer) loclists were restricted.
    pub loclist_local_set: bool,
    /// See `loclist_local_set`.
    pub loclist_peer_set: bool,
    /// `SHIM_HOT_STANDBY`.
    pub hot_standby: bool,
    /// `SHIM_APP_TIMEOUT` as set (0 = default).
    pub app_timeout_secs: u32,
    /// The Send Timeout in effect, milliseconds.
    pub send_timeout_ms: u32,
    /// `SHIM_PATHEXPLORE` as set (`None` = defaults).
    pub path_explore: Option<PathExplore>,
    /// The parameters in effect (keepalive fields in whole seconds, as
    /// RFC 6316 defines them; see the `_ms` fields for the exact values).
    pub effective_explore: PathExplore,
    /// The keepalive timeout in effect, milliseconds.
    #[serde(default)]
    pub keepalive_timeout_ms: u32,
    /// The keepalive interval in effect, milliseconds.
    #[serde(default)]
    pub keepalive_interval_ms: u32,
    /// Failure-detection state: "operational", "exploring", "inbound_ok".
    pub reap_state: String,
    /// Path switches made by failure detection / preferences.
    pub switches: u64,
    /// The socket's own state (for `ShimGet`/`ShimSet`; empty in
    /// `ShimList`).
    pub socket: ShimSocketInfo,
}

impl Request {
    /// Whether every user may send this request.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Ping
                | Request::GetHi { .. }
                | Request::GetHa { .. }
                | Request::Stats
                | Request::ShimList { .. }
                | Request::Connect { .. }
                | Request::Opportunistic { .. }
        )
    }
}

/// What the client sends: a request with the protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u32,
    /// The request.
    pub req: Request,
}

/// One host identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HiInfo {
    /// HIT.
    pub hit: Ipv6Addr,
    /// LSI.
    pub lsi: Ipv4Addr,
    /// Algorithm ("RSA", "ECDSA", …).
    pub algorithm: String,
    /// Whether this is the default identity.
    pub default: bool,
    /// PEM file it was loaded from.
    pub file: PathBuf,
}

/// One host association.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaInfo {
    /// Engine state (e.g. "ESTABLISHED", "I1-SENT").
    pub state: String,
    /// Our HIT.
    pub local_hit: Ipv6Addr,
    /// Peer HIT (unknown during an opportunistic I1-SENT).
    pub peer_hit: Option<Ipv6Addr>,
    /// Our LSI.
    pub local_lsi: Option<Ipv4Addr>,
    /// Peer LSI.
    pub peer_lsi: Option<Ipv4Addr>,
    /// Current local locator.
    pub local_locator: Option<IpAddr>,
    /// Current peer locator.
    pub peer_locator: Option<IpAddr>,
    /// All peer locators known to the association.
    pub peer_locators: Vec<IpAddr>,
    /// The state of each of `peer_locators`, in the same order:
    /// "active" (verified), "unverified", or "deprecated" (withdrawn by
    /// the peer's last LOCATOR_SET or expired; kept as RFC 8046 allows).
    #[serde(default)]
    pub peer_locator_states: Vec<String>,
    /// Inbound SPI.
    pub spi_in: u32,
    /// Outbound SPI.
    pub spi_out: u32,
    /// "native" or "udp".
    pub transport: String,
    /// ESP packets sent / received on this association.
    pub esp_out: u64,
    /// ESP packets received.
    pub esp_in: u64,
}

/// A static mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapInfo {
    /// Peer HIT.
    pub hit: Ipv6Addr,
    /// Locators.
    pub ips: Vec<IpAddr>,
    /// Peer LSI.
    pub lsi: Ipv4Addr,
}

/// Daemon counters (monotonic since start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsInfo {
    /// HIP control packets received (all sockets).
    pub hip_rx: u64,
    /// HIP control packets sent.
    pub hip_tx: u64,
    /// ESP packets sealed and sent.
    pub esp_tx: u64,
    /// ESP packets opened and delivered to the TUN device.
    pub esp_rx: u64,
    /// Malformed or truncated packets dropped before the engine (bad IP
    /// header, UDP marker, too short, non-ESP garbage).
    pub malformed: u64,
    /// ESP packets with an unknown SPI.
    pub esp_unknown_spi: u64,
    /// ESP packets failing authentication, replay or padding checks.
    pub esp_bad: u64,
    /// Packets the engine dropped (sum of its error counters).
    pub engine_dropped: u64,
    /// Outgoing packets queued while waiting for a base exchange.
    pub queued: u64,
    /// Queued packets dropped (queue full or exchange failed).
    pub queue_dropped: u64,
    /// Packets from the TUN device without a route (no mapping).
    pub no_mapping: u64,
    /// ESP keepalives (failure detection) sent.
    #[serde(default)]
    pub keepalives_tx: u64,
    /// ESP keepalives received.
    #[serde(default)]
    pub keepalives_rx: u64,
    /// Path switches made by failure detection and shim preferences.
    #[serde(default)]
    pub failover_switches: u64,
    /// ICMP errors about our HIP/ESP packets (each one makes the
    /// association using that destination explore at once).
    #[serde(default)]
    pub icmp_errors: u64,
    /// Packet Too Big / Fragmentation Needed about our HIP/ESP packets
    /// (`EMSGSIZE` in the error queue): a path MTU, not a failure (the
    /// kernel fragments what follows; no exploration).
    #[serde(default)]
    pub icmp_too_big: u64,
    /// Time Exceeded in fragment reassembly about our packets: a fragment
    /// was lost, not the path (no exploration).
    #[serde(default)]
    pub icmp_fragment_lost: u64,
    /// ICMPv6 Packet Too Big (ICMPv4 Fragmentation Needed for LSI
    /// traffic) written into hip0: an inner packet's ESP packet exceeded a
    /// learned path MTU, the application's TCP is told the inner size that
    /// fits.
    #[serde(default)]
    pub ptb_to_tun: u64,
    /// ESP packets re-sent on the new pair after a failover.
    #[serde(default)]
    pub repaired: u64,
    /// Associations currently stored in the engine.
    pub associations: u64,
    /// The engine's raw counters, `name=value`.
    pub engine: Vec<(String, u64)>,
}

/// Successful response payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Generic success.
    Done {
        /// Human-readable summary.
        message: String,
    },
    /// Answer to [`Request::Ping`].
    Pong {
        /// Daemon pid.
        pid: u32,
        /// Crate version.
        version: String,
        /// Protocol version.
        protocol: u32,
    },
    /// Host identities.
    His {
        /// Identities.
        his: Vec<HiInfo>,
    },
    /// Host associations.
    Has {
        /// Associations.
        has: Vec<HaInfo>,
    },
    /// An association was established (or already was).
    Connected {
        /// The association.
        ha: HaInfo,
    },
    /// Counters.
    Stats {
        /// Counters.
        stats: StatsInfo,
    },
    /// A shim context and the socket's state.
    ShimContext {
        /// The context.
        ctx: ShimContextInfo,
    },
    /// Shim contexts.
    ShimContexts {
        /// Contexts.
        ctxs: Vec<ShimContextInfo>,
    },
    /// The marker for a per-datagram `SHIM_LOC_*_SEND`: put
    /// `token << 2` into the datagram's traffic class (IPV6_TCLASS /
    /// IP_TOS control message).
    ShimToken {
        /// Marker (1..=63).
        token: u8,
    },
}

/// Error classes (stable strings on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Unsupported protocol version.
    Version,
    /// The request line is not valid JSON / not a known request.
    BadRequest,
    /// The caller lacks the rights (not root / not the owner).
    PermissionDenied,
    /// No association / mapping with that HIT.
    UnknownHit,
    /// The request is valid but cannot be done now.
    Unavailable,
    /// The operation did not complete in time.
    Timeout,
    /// The operation failed.
    Failed,
    /// SOL_SHIM: no shim context for the socket (`ENOENT`).
    NoContext,
    /// SOL_SHIM: the locator is not valid for the context
    /// (`EINVALIDLOCATOR`).
    InvalidLocator,
    /// SOL_SHIM: the peer locator is not verified yet
    /// (`EUNVERIFIEDLOCATOR`).
    UnverifiedLocator,
    /// SOL_SHIM: the peer locator is unreachable (`EUNREACHABLELOCATOR`).
    UnreachableLocator,
    /// SOL_SHIM: more than [`SHIM_MAX_LOCATORS`] (`ETOOMANYLOCATORS`).
    TooManyLocators,
    /// SOL_SHIM: a bad value (`EINVAL`).
    InvalidArgument,
    /// SOL_SHIM: not supported in this state (`EOPNOTSUPP`).
    NotSupported,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorBody {
    /// Class.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
}

/// What the daemon sends back for each request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version.
    pub v: u32,
    /// Success flag.
    pub ok: bool,
    /// Payload when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Response>,
    /// Error when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A success reply.
    pub fn ok(data: Response) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: true,
            data: Some(data),
            error: None,
        }
    }
    /// An error reply.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            ok: false,
            data: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
            }),
        }
    }
    /// Converts into a `Result`.
    pub fn into_result(self) -> Result<Response, ClientError> {
        match (self.ok, self.data, self.error) {
            (true, Some(d), _) => Ok(d),
            (false, _, Some(e)) => Err(ClientError::Daemon(e)),
            _ => Err(ClientError::Protocol("reply without data or error".into())),
        }
    }
}

/// Client-side errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon is not running (socket missing or refusing).
    #[error("hipd is not running (cannot connect to {path}: {source})")]
    NotRunning {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// IO error on an open connection.
    #[error("control socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's answer was not understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The daemon refused or failed the request.
    #[error("{}", .0.message)]
    Daemon(ErrorBody),
}

impl ClientError {
    /// The daemon's error code, if the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Daemon(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Encodes a request as one line (with the trailing newline).
pub fn encode_request(req: &Request) -> String {
    let env = Envelope {
        v: PROTOCOL_VERSION,
        req: req.clone(),
    };
    // Serializing these plain types cannot fail.
    let mut s = serde_json::to_string(&env).unwrap_or_default();
    s.push('\n');
    s
}

/// Decodes one request line; the error is what to answer
/// ([`Reply::from`] it).
pub fn decode_request(line: &str) -> Result<Request, ErrorBody> {
    let e = |code, message: String| ErrorBody { code, message };
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|x| e(ErrorCode::BadRequest, format!("invalid JSON: {x}")))?;
    match v.get("v").and_then(serde_json::Value::as_u64) {
        Some(x) if x == u64::from(PROTOCOL_VERSION) => {}
        Some(x) => {
            return Err(e(
                ErrorCode::Version,
                format!("protocol version {x} not supported (daemon speaks {PROTOCOL_VERSION})"),
            ));
        }
        None => {
            return Err(e(ErrorCode::BadRequest, "missing version field v".into()));
        }
    }
    serde_json::from_value::<Envelope>(v)
        .map(|x| x.req)
        .map_err(|x| e(ErrorCode::BadRequest, format!("unknown request: {x}")))
}

impl From<ErrorBody> for Reply {
    fn from(e: ErrorBody) -> Reply {
        Reply::err(e.code, e.message)
    }
}

/// A blocking control-socket client.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let s = UnixStream::connect(path).map_err(|source| ClientError::NotRunning {
            path: path.to_path_buf(),
            source,
        })?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let writer = s.try_clone()?;
        Ok(Client {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Connects to [`DEFAULT_SOCKET`].
    pub fn connect_default() -> Result<Client, ClientError> {
        Client::connect(DEFAULT_SOCKET)
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.writer.write_all(encode_request(req).as_bytes())?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(ClientError::Protocol("daemon closed the connection".into()));
        }
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if reply.v != PROTOCOL_VERSION {
            return Err(ClientError::Protocol(format!(
                "daemon speaks protocol {}",
                reply.v
            )));
        }
        reply.into_result()
    }
}

/// Parses HIPL-style verbs (the words after `hipconf daemon`, also the
/// lines of `hipd.conf`) into a request.
///
/// Accepted: `get hi default|all`, `add map HIT IP [LSI] [udp|native]`,
/// `del map HIT [IP]`, `get ha all|HIT`, `get shim all|HIT`, `rst all|HIT`,
/// `debug none|low|medium|all`, `nat none|plain-udp`,
/// `set puzzle [all] K`, `set reap send-timeout|keepalive-timeout|
/// keepalive-interval|probe-timeout MS`, `set reap probes N`, `manual-update`, `shotgun on|off`,
/// `connect HIT`, `opp IP`, `stats`, `ping`.
pub fn parse_verbs(words: &[&str]) -> Result<Request, String> {
    fn hit(s: &str) -> Result<Ipv6Addr, String> {
        s.parse().map_err(|_| format!("'{s}' is not a HIT"))
    }
    fn ip(s: &str) -> Result<IpAddr, String> {
        s.parse().map_err(|_| format!("'{s}' is not an IP address"))
    }
    fn onoff(s: &str) -> Result<bool, String> {
        match s {
            "on" => Ok(true),
            "off" => Ok(false),
            o => Err(format!("expected on|off, got '{o}'")),
        }
    }
    let usage = |w: &str| Err(format!("usage: {w}"));
    match words {
        ["ping"] => Ok(Request::Ping),
        ["stats"] => Ok(Request::Stats),
        ["get", "hi", "default"] => Ok(Request::GetHi {
            which: HiSelector::Default,
        }),
        ["get", "hi", "all"] => Ok(Request::GetHi {
            which: HiSelector::All,
        }),
        ["get", "hi", ..] => usage("get hi default|all"),
        ["get", "ha", "all"] => Ok(Request::GetHa { hit: None }),
        ["get", "ha", h] => Ok(Request::GetHa { hit: Some(hit(h)?) }),
        ["get", "shim", "all"] => Ok(Request::ShimList { hit: None }),
        ["get", "shim", h] => Ok(Request::ShimList { hit: Some(hit(h)?) }),
        ["get", ..] => usage("get hi default|all | get ha all|HIT | get shim all|HIT"),
        ["add", "map", h, i, rest @ ..] if rest.len() <= 2 => {
            let mut lsi = None;
            let mut transport = None;
            for w in rest {
                match *w {
                    "udp" | "plain-udp" => transport = Some(NatMode::PlainUdp),
                    "native" | "none" => transport = Some(NatMode::None),
                    l => {
                        lsi = Some(
                            l.parse::<Ipv4Addr>()
                                .map_err(|_| format!("'{l}' is not an LSI"))?,
                        )
                    }
                }
            }
            Ok(Request::AddMap {
                hit: hit(h)?,
                ip: ip(i)?,
                lsi,
                transport,
            })
        }
        ["add", ..] => usage("add map HIT IP [LSI] [udp|native]"),
        ["del", "map", h] => Ok(Request::DelMap {
            hit: hit(h)?,
            ip: None,
        }),
        ["del", "map", h, i] => Ok(Request::DelMap {
            hit: hit(h)?,
            ip: Some(ip(i)?),
        }),
        ["del", ..] => usage("del map HIT [IP]"),
        ["rst", "all"] => Ok(Request::Rst { hit: None }),
        ["rst", h] => Ok(Request::Rst { hit: Some(hit(h)?) }),
        ["rst", ..] => usage("rst all|HIT"),
        ["debug", l] => Ok(Request::Debug { level: l.parse()? }),
        ["debug", ..] => usage("debug none|low|medium|all"),
        ["nat", m] => Ok(Request::Nat { mode: m.parse()? }),
        ["nat", ..] => usage("nat none|plain-udp"),
        ["set", "puzzle", "all", k] | ["set", "puzzle", k] => Ok(Request::SetPuzzle {
            k: k.parse::<u8>()
                .ok()
                .filter(|k| *k <= 28)
                .ok_or_else(|| format!("'{k}' is not a puzzle difficulty (0..=28)"))?,
        }),
        ["set", "reap", p, v] => Ok(Request::SetReap {
            param: p.parse()?,
            value: v
                .parse::<u32>()
                .map_err(|_| format!("'{v}' is not a number"))?,
        }),
        ["set", ..] => usage("set puzzle [all] K | set reap PARAM VALUE"),
        ["manual-update"] => Ok(Request::ManualUpdate),
        ["shotgun", o] => Ok(Request::Shotgun { on: onoff(o)? }),
        ["shotgun", ..] => usage("shotgun on|off"),
        ["connect", h] => Ok(Request::Connect {
            hit: hit(h)?,
            wait_ms: 5000,
        }),
        ["opp", i] => Ok(Request::Opportunistic {
            ip: ip(i)?,
            wait_ms: 5000,
        }),
        [] => Err("no command given".into()),
        [w, ..] => Err(format!("unknown command '{w}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let reqs = vec![
            Request::Ping,
            Request::GetHi {
                which: HiSelector::All,
            },
            Request::AddMap {
                hit: "2001:2a::1".parse().unwrap(),
                ip: "192.0.2.1".parse().unwrap(),
                lsi: Some(Ipv4Addr::new(1, 0, 0, 9)),
                transport: Some(NatMode::PlainUdp),
            },
            Request::Debug {
                level: DebugLevel::Medium,
            },
            Request::Rst { hit: None },
        ];
        for r in reqs {
            let line = encode_request(&r);
            assert!(line.ends_with('\n'));
            assert_eq!(decode_request(line.trim_end()).unwrap(), r);
        }
    }

    #[test]
    fn shim_requests_round_trip() {
        let flow = FlowId {
            proto: 17,
            local: "2001:2a::1".parse().unwrap(),
            local_port: 4000,
            peer: "2001:2a::2".parse().unwrap(),
            peer_port: 5000,
        };
        let reqs = vec![
            Request::ShimGet { flow },
            Request::ShimSet {
                flow,
                set: ShimSetting::PeerPref {
                    loc: LocPref {
                        addr: "2001:db8:2::2".parse().unwrap(),
                        prio: 1,
                        weight: 10,
                    },
                },
            },
            Request::ShimSet {
                flow,
                set: ShimSetting::PathExplore {
                    pe: Some(PathExplore {
                        probenum: 4,
                        keepaliveto: 10,
                        keepaliveint: 3,
                        initprobeto: 500,
                    }),
                },
            },
            Request::ShimSendToken {
                flow,
                local: None,
                peer: Some("192.0.2.2".parse().unwrap()),
                base_tclass: 0,
            },
            Request::ShimRelease { flow },
            Request::ShimList { hit: None },
        ];
        for r in reqs {
            let line = encode_request(&r);
            assert_eq!(decode_request(line.trim_end()).unwrap(), r);
        }
        assert!(Request::ShimList { hit: None }.is_read_only());
        assert!(!Request::ShimGet { flow }.is_read_only());
        assert_eq!(
            parse_verbs(&["get", "shim", "all"]).unwrap(),
            Request::ShimList { hit: None }
        );
    }

    #[test]
    fn wire_shape_is_stable() {
        let line = encode_request(&Request::Nat {
            mode: NatMode::PlainUdp,
        });
        assert_eq!(
            line,
            "{\"v\":1,\"req\":{\"op\":\"nat\",\"mode\":\"plain-udp\"}}\n"
        );
    }

    #[test]
    fn version_and_garbage_are_typed_errors() {
        let e = decode_request("{\"v\":2,\"req\":{\"op\":\"ping\"}}").unwrap_err();
        assert_eq!(e.code, ErrorCode::Version);
        let e = decode_request("{nonsense").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = decode_request("{\"v\":1,\"req\":{\"op\":\"fly\"}}").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let r = Reply::from(e);
        assert!(!r.ok);
    }

    #[test]
    fn read_only_classification() {
        assert!(Request::GetHa { hit: None }.is_read_only());
        assert!(!Request::Rst { hit: None }.is_read_only());
        assert!(
            !Request::Debug {
                level: DebugLevel::All
            }
            .is_read_only()
        );
    }

    #[test]
    fn reply_into_result() {
        let r = Reply::err(ErrorCode::UnknownHit, "no such HIT");
        let line = serde_json::to_string(&r).unwrap();
        let back: Reply = serde_json::from_str(&line).unwrap();
        match back.into_result() {
            Err(ClientError::Daemon(e)) => assert_eq!(e.code, ErrorCode::UnknownHit),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn verbs_parse() {
        let r = parse_verbs(&["add", "map", "2001:2a::1", "10.0.0.1", "1.0.0.7", "udp"]).unwrap();
        assert_eq!(
            r,
            Request::AddMap {
                hit: "2001:2a::1".parse().unwrap(),
                ip: "10.0.0.1".parse().unwrap(),
                lsi: Some(Ipv4Addr::new(1, 0, 0, 7)),
                transport: Some(NatMode::PlainUdp),
            }
        );
        assert_eq!(
            parse_verbs(&["get", "ha", "all"]).unwrap(),
            Request::GetHa { hit: None }
        );
        assert_eq!(
            parse_verbs(&["set", "puzzle", "all", "12"]).unwrap(),
            Request::SetPuzzle { k: 12 }
        );
        assert!(parse_verbs(&["set", "puzzle", "99"]).is_err());
        assert!(parse_verbs(&["get", "ha", "nonsense"]).is_err());
        assert!(
            parse_verbs(&["fly"])
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(parse_verbs(&["debug", "loud"]).is_err());
    }
}
