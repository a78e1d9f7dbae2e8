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
//! to a HIT is. Version 1 has no per-socket or per-endpoint-descriptor
//! requests yet; when they are added they will be accepted only from the
//! uid that created the socket/descriptor.
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
    /// Re-read local locators now and tell the engine.
    ManualUpdate,
    /// Shotgun mode: send I1s to every known peer locator.
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
/// `del map HIT [IP]`, `get ha all|HIT`, `rst all|HIT`,
/// `debug none|low|medium|all`, `nat none|plain-udp`,
/// `set puzzle [all] K`, `manual-update`, `shotgun on|off`,
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
        ["get", ..] => usage("get hi default|all | get ha all|HIT"),
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
        ["set", ..] => usage("set puzzle [all] K"),
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
