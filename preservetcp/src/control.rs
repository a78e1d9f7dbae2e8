//! The daemon's control protocol and the per-socket opt-in.
//!
//! `preservetcpd` listens on a Unix stream socket (default
//! [`DEFAULT_CONTROL_PATH`]). Each request is one JSON object on one line;
//! each answer is one JSON object on one line:
//!
//! ```text
//! -> {"cmd":"list"}
//! <- {"ok":true,"connections":[{"id":1,"original":{...},"current":{...},...}]}
//! -> {"cmd":"move","id":1,"local":"2001:db8::1","peer":"2001:db8::2"}
//! <- {"ok":true}
//! -> {"cmd":"opt_in","local":"2001:db8::1","local_port":40000,"peer":"2001:db8::2","peer_port":5001}
//! <- {"ok":true}
//! -> {"cmd":"stats"}
//! <- {"ok":true,"stats":{...}}
//! ```
//!
//! `opt_in` covers one 4-tuple that will be connected later (the local port
//! must therefore be bound already). Without BPF each is an ip6tables rule:
//! at most `--max-opt-ins` (256 by default) are kept at once, a request
//! beyond that fails, and a tuple's rule goes once its connection is gone
//! (or when no socket with the tuple appeared within 30 s). A program can
//! instead mark its socket with [`OPT_IN_MARK`] before `connect`
//! ([`opt_in`]); the daemon's rules catch marked SYNs in addition to the
//! configured ports. A socket marked with [`OPT_OUT_MARK`] ([`opt_out`])
//! is left alone even on a configured port.
//!
//! # Who may ask what
//!
//! The daemon creates the socket with mode 0666, so every local user can
//! connect, and checks each request against the uid of the sender
//! (`SO_PEERCRED`):
//!
//! - `list` and `stats` ([`Request::is_read_only`]): everyone;
//! - `move`: root, or the uid owning the socket of that connection;
//! - everything else (`opt_in`): root only.
//!
//! A refused request is answered with an error starting with
//! [`PERMISSION_DENIED`]:
//!
//! ```text
//! -> {"cmd":"move","id":1,"local":"2001:db8::1","peer":"2001:db8::2"}
//! <- {"ok":false,"error":"permission denied: uid 1000 may not move connection 1: ..."}
//! ```
//!
//! The daemon serves up to 16 clients at once, each on its own thread; a
//! client must send each complete request line within 10 s (of connecting
//! or of the previous answer) or it is disconnected.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Default path of the control socket.
pub const DEFAULT_CONTROL_PATH: &str = "/run/preservetcpd.sock";

/// The start of the error text of a request refused because of the
/// sender's uid (see the [module documentation](self)).
pub const PERMISSION_DENIED: &str = "permission denied";

/// The socket mark (`SO_MARK`) that opts a socket in; the daemon's rules
/// match `mark & OPT_IN_MASK == OPT_IN_MARK`.
pub const OPT_IN_MARK: u32 = 0x5054_0000;
/// The mark bits the daemon's rules look at.
pub const OPT_IN_MASK: u32 = 0xffff_0000;
/// The socket mark (`SO_MARK`) that opts a socket *out*: the daemon's rules
/// match `mark & OPT_IN_MASK == OPT_OUT_MARK` and leave such a socket's
/// handshake plain even if one of its ports is in `--ports` or its tuple
/// was opted in — no PREFIX_SYN on its SYN, no answer to an offer on the
/// SYN+ACK of a listener carrying it (the SYN+ACK carries the listener's
/// mark), so the connection is never tracked nor moved. The opt-out wins
/// over every opt-in. (The shim API's `SHIM_DONTSHIM` sets it.)
pub const OPT_OUT_MARK: u32 = 0x5055_0000;

/// Opts a not yet connected socket in by setting its mark to
/// [`OPT_IN_MARK`] (needs `CAP_NET_ADMIN` or `CAP_NET_RAW`). Call it between
/// `socket()` and `connect()`; the daemon then offers the prefixes on this
/// connection's SYN even if its port is not configured.
pub fn opt_in(socket: &impl AsFd) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::Mark, &OPT_IN_MARK)
        .map_err(std::io::Error::from)
}

/// Opts a not yet connected (or listening) socket out by setting the
/// [`OPT_IN_MASK`] bits of its mark to [`OPT_OUT_MARK`], keeping the other
/// bits (needs `CAP_NET_ADMIN` or `CAP_NET_RAW`). Call it before `connect()`
/// or `listen()`; sockets a listener accepts inherit its mark.
pub fn opt_out(socket: &impl AsFd) -> std::io::Result<()> {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt::Mark};
    let old = getsockopt(socket, Mark).map_err(std::io::Error::from)?;
    setsockopt(socket, Mark, &((old & !OPT_IN_MASK) | OPT_OUT_MARK)).map_err(std::io::Error::from)
}

/// A TCP 4-tuple in control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleInfo {
    /// Local address.
    pub local: Ipv6Addr,
    /// Local port.
    pub local_port: u16,
    /// Peer address.
    pub peer: Ipv6Addr,
    /// Peer port.
    pub peer_port: u16,
}

/// An address pair in control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairInfo {
    /// Local address.
    pub local: Ipv6Addr,
    /// Peer address.
    pub peer: Ipv6Addr,
}

/// One connection as listed by the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// The daemon's id for the connection.
    pub id: u64,
    /// The tuple the kernel's TCP uses.
    pub original: TupleInfo,
    /// The pair used on the wire now.
    pub current: PairInfo,
    /// Local addresses (original first).
    pub locals: Vec<Ipv6Addr>,
    /// Peer addresses (original first).
    pub peers: Vec<Ipv6Addr>,
    /// Address changes so far.
    pub switches: u64,
    /// Why the last change happened, if any.
    pub last_reason: Option<String>,
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// List connections.
    List,
    /// Move a connection to a pair.
    Move {
        /// Connection id.
        id: u64,
        /// New local address.
        local: Ipv6Addr,
        /// New peer address.
        peer: Ipv6Addr,
    },
    /// Opt a 4-tuple in (before it connects).
    OptIn(TupleInfo),
    /// Daemon counters.
    Stats,
}

impl Request {
    /// Whether the request only reads the daemon's state (`list`,
    /// `stats`): the daemon answers those for every user; the others
    /// change state and need root (a `move` also the socket's owner).
    pub fn is_read_only(&self) -> bool {
        match self {
            Request::List | Request::Stats => true,
            Request::Move { .. } | Request::OptIn(_) => false,
        }
    }

    /// The request's `cmd` (as on the wire).
    pub fn name(&self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Move { .. } => "move",
            Request::OptIn(_) => "opt_in",
            Request::Stats => "stats",
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Error text when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<ConnInfo>>,
    /// For `stats`: counter name → value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<std::collections::BTreeMap<String, u64>>,
}

impl Response {
    /// A success without data.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// A failure.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}

/// Sends one request to the daemon at `path` and reads the answer.
pub fn request(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(path)?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut answer = String::new();
    r.read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shapes() {
        let r: Request = serde_json::from_str(r#"{"cmd":"list"}"#).unwrap();
        assert_eq!(r, Request::List);
        let r: Request = serde_json::from_str(
            r#"{"cmd":"move","id":3,"local":"2001:db8::1","peer":"2001:db8::2"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Move {
                id: 3,
                local: "2001:db8::1".parse().unwrap(),
                peer: "2001:db8::2".parse().unwrap()
            }
        );
        let s = serde_json::to_string(&Request::OptIn(TupleInfo {
            local: "2001:db8::1".parse().unwrap(),
            local_port: 1,
            peer: "2001:db8::2".parse().unwrap(),
            peer_port: 2,
        }))
        .unwrap();
        assert!(s.contains(r#""cmd":"opt_in""#), "{s}");
        let e = serde_json::to_string(&Response::error("x")).unwrap();
        assert_eq!(e, r#"{"ok":false,"error":"x"}"#);
    }

    #[test]
    fn only_list_and_stats_are_read_only_and_names_match_the_wire() {
        let t = TupleInfo {
            local: "2001:db8::1".parse().unwrap(),
            local_port: 1,
            peer: "2001:db8::2".parse().unwrap(),
            peer_port: 2,
        };
        let all = [
            (Request::List, true),
            (Request::Stats, true),
            (
                Request::Move {
                    id: 1,
                    local: t.local,
                    peer: t.peer,
                },
                false,
            ),
            (Request::OptIn(t), false),
        ];
        for (r, read_only) in all {
            assert_eq!(r.is_read_only(), read_only, "{r:?}");
            let json = serde_json::to_value(&r).unwrap();
            assert_eq!(json["cmd"], r.name(), "{r:?}");
        }
    }
}
