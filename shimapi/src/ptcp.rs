//! preservetcp connections as shim contexts (the preservetcp issue's
//! "the context is visible through the shim API").
//!
//! A TCP socket whose peer is not a HIT or LSI can be a preservetcp
//! connection: `preservetcpd` offered and learned alternative addresses in
//! its handshake and may move it to another address pair while the kernel's
//! TCP keeps its original tuple. This module asks the daemon over its
//! control socket (JSON lines, the `preservetcp::control` protocol:
//! `{"cmd":"list"}`, `{"cmd":"move","id":N,"local":A,"peer":B}`) for the
//! connection whose original tuple is the socket's. The socket path is
//! `PRESERVETCP_CONTROL_SOCKET`, else `/run/preservetcpd.sock`; no daemon
//! (no socket file) means no context.
//!
//! What a preservetcp context supports (others: `EOPNOTSUPP`):
//! * `SHIM_ASSOCIATED` (get): 1.
//! * `SHIM_LOCLIST_PEER` / `SHIM_LOCLIST_LOCAL` (get): the peer's / our
//!   addresses exchanged in the handshake, the original one first.
//! * `SHIM_LOC_PEER_PREF` / `SHIM_LOC_LOCAL_PREF` (get): the pair in use;
//!   (set): moves the connection to that peer (keeping the local address,
//!   the thesis's rule) or that local address (keeping the peer) at once.
//!   An address not exchanged in the handshake is `EINVALIDLOCATOR`; the
//!   daemon's refusal for another user's connection is `EPERM`.
//!
//! The crate does not link preservetcp (whose build needs clang for its
//! BPF programs); the few message fields used here are mirrored, unknown
//! fields are ignored.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::consts::EINVALIDLOCATOR;

/// The daemon's control socket when `PRESERVETCP_CONTROL_SOCKET` is unset
/// (`preservetcp::control::DEFAULT_CONTROL_PATH`).
pub const DEFAULT_PRESERVETCP_SOCKET: &str = "/run/preservetcpd.sock";

/// The control socket path from the environment or the default.
pub(crate) fn default_socket() -> PathBuf {
    std::env::var_os("PRESERVETCP_CONTROL_SOCKET")
        .map_or_else(|| PathBuf::from(DEFAULT_PRESERVETCP_SOCKET), PathBuf::from)
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct Tuple {
    local: Ipv6Addr,
    local_port: u16,
    peer: Ipv6Addr,
    peer_port: u16,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) struct Pair {
    pub local: Ipv6Addr,
    pub peer: Ipv6Addr,
}

/// One connection as the daemon lists it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Conn {
    id: u64,
    original: Tuple,
    pub current: Pair,
    pub locals: Vec<Ipv6Addr>,
    pub peers: Vec<Ipv6Addr>,
}

#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    connections: Option<Vec<Conn>>,
}

fn call(path: &PathBuf, line: &str) -> io::Result<Answer> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|_| io::Error::from_raw_os_error(libc::EPROTO))
}

/// Whether a preservetcpd answers on `path` (its control socket accepts a
/// connection).
pub(crate) fn running(path: &PathBuf) -> bool {
    UnixStream::connect(path).is_ok()
}

/// The preservetcp connection of a TCP socket with this local and peer
/// address, if the daemon runs and tracks it.
pub(crate) fn find(
    path: &PathBuf,
    local: SocketAddr,
    peer: SocketAddr,
) -> io::Result<Option<Conn>> {
    let (IpAddr::V6(l), IpAddr::V6(p)) = (local.ip(), peer.ip()) else {
        return Ok(None); // preservetcp handles IPv6 connections only
    };
    let a = match call(path, r#"{"cmd":"list"}"#) {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None); // no daemon
        }
        Err(e) => return Err(e),
    };
    Ok(a.connections.unwrap_or_default().into_iter().find(|c| {
        (
            c.original.local,
            c.original.local_port,
            c.original.peer,
            c.original.peer_port,
        ) == (l, local.port(), p, peer.port())
    }))
}

/// Moves `conn` to (`local`, `peer`); both must be addresses of its
/// handshake.
pub(crate) fn move_to(path: &PathBuf, conn: &Conn, local: IpAddr, peer: IpAddr) -> io::Result<()> {
    let (IpAddr::V6(l), IpAddr::V6(p)) = (local, peer) else {
        return Err(io::Error::from_raw_os_error(EINVALIDLOCATOR));
    };
    if !conn.locals.contains(&l) || !conn.peers.contains(&p) {
        return Err(io::Error::from_raw_os_error(EINVALIDLOCATOR));
    }
    let line = serde_json::json!({"cmd": "move", "id": conn.id, "local": l, "peer": p}).to_string();
    let a = call(path, &line)?;
    if a.ok {
        return Ok(());
    }
    let msg = a.error.unwrap_or_default();
    let errno = if msg.starts_with("permission denied") {
        libc::EPERM
    } else if msg.contains("no such connection") {
        libc::ENOENT
    } else {
        EINVALIDLOCATOR
    };
    Err(io::Error::from_raw_os_error(errno))
}
