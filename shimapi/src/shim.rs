//! The shim handle: `SOL_SHIM` options, control messages and the
//! per-socket state kept in this process.

use std::collections::HashMap;
use std::ffi::c_int;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use hipd_backend::control::{
    self, FlowId, LocPref, Request, Response, ShimContextInfo, ShimLocInfo, ShimSetting,
};
use hipd_backend::shimtag;

use crate::addr::{self, IdKind};
use crate::cmsg::{self, CmsgBuf, CmsgWriter};
use crate::consts::*;
use crate::link::{Link, errno_of};
use crate::sys;
use crate::types::{
    Locator, PathExplore, StructError, draft_feedback_indicator, shim_feedback, shim_locator,
    shim_pathexplore,
};

fn err(errno: c_int) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn einval<T>() -> io::Result<T> {
    Err(err(libc::EINVAL))
}

impl From<StructError> for io::Error {
    fn from(_: StructError) -> io::Error {
        err(libc::EINVAL)
    }
}

/// Identifies a socket while it is open (device, inode of the socket
/// file), so a reused descriptor number never inherits old state.
type SockKey = (u64, u64);

/// What this process remembers about one socket.
#[derive(Debug, Default)]
struct SockState {
    fd: RawFd,
    dontshim: bool,
    local_recv: bool,
    peer_recv: bool,
    /// The application enabled IPV6_RECVDSTOPTS / IP_RECVOPTS itself.
    app_rxopt: bool,
    /// This library switched the receive option on (kind of flow).
    lib_rxopt: Option<IdKind>,
    /// Control-connection generation the daemon state belongs to.
    generation: u64,
    /// Send markers: (flow, local, peer, base traffic class) → token and
    /// when the daemon granted it (re-checked after [`TOKEN_RECHECK`]).
    tokens: HashMap<MarkerKey, (u8, Instant)>,
}

/// A send marker's key: flow, `SHIM_LOC_LOCAL_SEND`, `SHIM_LOC_PEER_SEND`,
/// the socket's own traffic class.
type MarkerKey = (FlowId, Option<IpAddr>, Option<IpAddr>, u8);

/// How long a per-datagram send marker is used without asking the daemon
/// again: its locator checks (`EINVALIDLOCATOR`, `EUNVERIFIEDLOCATOR`,
/// `EUNREACHABLELOCATOR`) run when the marker is granted, so a locator
/// that failure detection finds unreachable, or the peer withdraws, is
/// reported by the first `sendmsg` at most this long after the change
/// (until then the daemon itself no longer sends marked datagrams there:
/// it forgets the marker when the locator goes). Costs one control-socket
/// round trip per socket, locator pair and 50 ms of sending.
pub const TOKEN_RECHECK: Duration = Duration::from_millis(50);

#[derive(Debug)]
struct Inner {
    link: Link,
    socks: HashMap<SockKey, SockState>,
}

/// Prune closed sockets' state when the table grows past this.
const PRUNE_AT: usize = 1024;

/// A shim API instance: one control connection to the daemon and the
/// per-socket state of this process.
///
/// The crate-level functions ([`crate::getsockopt`], …) use
/// [`Shim::global`]; a separate instance is useful to talk to another
/// daemon (tests, tools).
#[derive(Debug)]
pub struct Shim {
    inner: Mutex<Inner>,
    /// preservetcpd's control socket (see [`crate::ptcp`]).
    ptcp_socket: PathBuf,
}

/// What `recvmsg` returned besides the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes received.
    pub bytes: usize,
    /// Length of the source address written to the name buffer.
    pub name_len: usize,
    /// Bytes of control data written (`msg_controllen`).
    pub control_len: usize,
    /// `msg_flags` (`MSG_CTRUNC`, `MSG_TRUNC`, …).
    pub flags: c_int,
}

/// A socket as the shim sees it.
#[derive(Debug, Clone, Copy)]
struct SockInfo {
    fd: RawFd,
    key: SockKey,
    ty: c_int,
    proto: c_int,
    domain: c_int,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
}

fn sock_info(fd: RawFd) -> io::Result<SockInfo> {
    // SO_TYPE first: EBADF / ENOTSOCK come from the kernel here.
    let ty = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
    let proto = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let domain = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let key = sys::file_id(fd)?;
    let local = addr::parse_sockaddr(&sys::getsockname(fd)?);
    let peer = sys::getpeername(fd)?.and_then(|b| addr::parse_sockaddr(&b));
    Ok(SockInfo {
        fd,
        key,
        ty,
        proto,
        domain,
        local,
        peer,
    })
}

/// The flow of a socket towards `peer`, if the shim can map it.
fn flow_of(info: &SockInfo, peer: SocketAddr) -> Option<(FlowId, IdKind)> {
    let proto = match info.proto {
        libc::IPPROTO_TCP => 6,
        libc::IPPROTO_UDP => 17,
        _ => return None,
    };
    let kind = addr::id_kind(peer.ip())?;
    let local = info.local?;
    Some((
        FlowId {
            proto,
            local: addr::canonical(local.ip()),
            local_port: local.port(),
            peer: addr::canonical(peer.ip()),
            peer_port: peer.port(),
        },
        kind,
    ))
}

fn int_of(buf: &[u8]) -> io::Result<c_int> {
    let b: [u8; 4] = buf.try_into().map_err(|_| err(libc::EINVAL))?;
    Ok(c_int::from_ne_bytes(b))
}

fn bool_of(buf: &[u8]) -> io::Result<bool> {
    match int_of(buf)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => einval(),
    }
}

fn put(buf: &mut [u8], bytes: &[u8]) -> io::Result<usize> {
    let dst = buf
        .get_mut(..bytes.len())
        .ok_or_else(|| err(libc::EINVAL))?;
    dst.copy_from_slice(bytes);
    Ok(bytes.len())
}

fn put_int(buf: &mut [u8], v: c_int) -> io::Result<usize> {
    put(buf, &v.to_ne_bytes())
}

fn clamp_int(v: u32) -> c_int {
    c_int::try_from(v).unwrap_or(c_int::MAX)
}

fn loc_of(i: &ShimLocInfo) -> Locator {
    Locator {
        addr: i.addr,
        proto: i.proto,
        port: i.port,
        prio: i.prio,
        weight: i.weight,
        ifindex: i.ifindex,
        flags: i.flags,
    }
}

/// The highest-preference locator of a list (RFC 6316 §6.5): allowed
/// before disallowed, not unreachable before unreachable, lowest `prio`,
/// then highest `weight`, then the one in use, then the one the
/// association prefers, then list order.
pub(crate) fn best_locator(list: &[ShimLocInfo]) -> Option<&ShimLocInfo> {
    list.iter()
        .enumerate()
        .min_by_key(|(i, l)| {
            (
                !l.allowed,
                matches!(
                    l.state,
                    control::LocState::Unreachable | control::LocState::Deprecated
                ),
                l.prio,
                std::cmp::Reverse(l.weight),
                !l.in_use,
                !l.preferred,
                *i,
            )
        })
        .map(|(_, l)| l)
}

fn pref_of(buf: &[u8]) -> io::Result<LocPref> {
    let l = Locator::try_from(shim_locator::from_bytes(buf)?)?;
    Ok(LocPref {
        addr: l.addr,
        prio: l.prio,
        weight: l.weight,
    })
}

/// Option kinds for length checks.
enum Shape {
    Int,
    Locator,
    LocList,
    PathExplore,
}

fn shape(name: c_int) -> Option<Shape> {
    Some(match name {
        SHIM_ASSOCIATED
        | SHIM_DONTSHIM
        | SHIM_HOT_STANDBY
        | SHIM_LOC_LOCAL_RECV
        | SHIM_LOC_PEER_RECV
        | SHIM_APP_TIMEOUT
        | SHIM_DEFERRED_CONTEXT_SETUP
        | SHIM_APP_TIMEOUT_MS
        | SHIM_PRESERVETCP => Shape::Int,
        SHIM_LOC_LOCAL_PREF | SHIM_LOC_PEER_PREF | SHIM_LOC_LOCAL_SEND | SHIM_LOC_PEER_SEND => {
            Shape::Locator
        }
        SHIM_LOCLIST_LOCAL | SHIM_LOCLIST_PEER => Shape::LocList,
        SHIM_PATHEXPLORE => Shape::PathExplore,
        _ => return None,
    })
}

fn rxopt(kind: IdKind) -> (c_int, c_int) {
    match kind {
        IdKind::Hit => (libc::IPPROTO_IPV6, libc::IPV6_RECVDSTOPTS),
        IdKind::Lsi => (libc::IPPROTO_IP, libc::IP_RECVOPTS),
    }
}

impl Shim {
    /// An instance talking to the daemon at `control_socket`.
    pub fn new(control_socket: impl Into<PathBuf>) -> Shim {
        Shim {
            inner: Mutex::new(Inner {
                link: Link::new(control_socket.into()),
                socks: HashMap::new(),
            }),
            ptcp_socket: crate::ptcp::default_socket(),
        }
    }

    /// The same instance asking preservetcpd at `path` about TCP sockets
    /// whose peer is not a HIT or LSI (default: `PRESERVETCP_CONTROL_SOCKET`,
    /// else [`crate::ptcp::DEFAULT_PRESERVETCP_SOCKET`]).
    pub fn with_preservetcp(mut self, path: impl Into<PathBuf>) -> Shim {
        self.ptcp_socket = path.into();
        self
    }

    /// The preservetcp connection of a connected TCP socket that the HIP
    /// shim does not map (peer not a HIT or LSI), if preservetcpd tracks it.
    fn ptcp_conn(&self, info: &SockInfo) -> io::Result<Option<crate::ptcp::Conn>> {
        match (info.proto, info.local, info.peer) {
            (libc::IPPROTO_TCP, Some(l), Some(p)) if addr::id_kind(p.ip()).is_none() => {
                crate::ptcp::find(&self.ptcp_socket, l, p)
            }
            _ => Ok(None),
        }
    }

    /// `getsockopt` on a preservetcp context (see [`crate::ptcp`]).
    fn ptcp_get(conn: &crate::ptcp::Conn, name: c_int, buf: &mut [u8]) -> io::Result<usize> {
        let loc =
            |a: std::net::Ipv6Addr| shim_locator::from(Locator::new(IpAddr::V6(a))).to_bytes();
        match name {
            SHIM_ASSOCIATED => put_int(buf, 1),
            SHIM_LOC_LOCAL_PREF => put(buf, &loc(conn.current.local)),
            SHIM_LOC_PEER_PREF => put(buf, &loc(conn.current.peer)),
            SHIM_LOCLIST_LOCAL | SHIM_LOCLIST_PEER => {
                let list = if name == SHIM_LOCLIST_LOCAL {
                    &conn.locals
                } else {
                    &conn.peers
                };
                let need = list.len() * shim_locator::SIZE;
                if need > buf.len() {
                    return Err(err(ETOOMANYLOCATORS));
                }
                for (i, a) in list.iter().enumerate() {
                    put(&mut buf[i * shim_locator::SIZE..], &loc(*a))?;
                }
                Ok(need)
            }
            _ => Err(err(libc::EOPNOTSUPP)),
        }
    }

    /// The process-wide instance: control socket from the environment
    /// variable `HIPD_CONTROL_SOCKET`, else
    /// [`control::DEFAULT_SOCKET`] (read once, at first use).
    pub fn global() -> &'static Shim {
        static G: OnceLock<Shim> = OnceLock::new();
        G.get_or_init(|| {
            let p = std::env::var_os("HIPD_CONTROL_SOCKET")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(control::DEFAULT_SOCKET));
            Shim::new(p)
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps in a state
        // worse than stale; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `getsockopt`: `SOL_SHIM` is handled here, every other level goes
    /// to the kernel unchanged. Returns the number of bytes written.
    pub fn getsockopt(
        &self,
        fd: BorrowedFd<'_>,
        level: c_int,
        name: c_int,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let fd = fd.as_raw_fd();
        if level != SOL_SHIM {
            return sys::getsockopt(fd, level, name, buf);
        }
        let info = sock_info(fd)?;
        let want = match shape(name) {
            Some(Shape::Int) => 4,
            Some(Shape::Locator) | Some(Shape::LocList) => shim_locator::SIZE,
            Some(Shape::PathExplore) => shim_pathexplore::SIZE,
            None => return Err(err(libc::ENOPROTOOPT)),
        };
        if buf.len() < want {
            return einval();
        }
        if name == SHIM_PRESERVETCP {
            let mark = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_MARK)? as u32;
            return put_int(
                buf,
                c_int::from(mark & PRESERVETCP_MARK_MASK == PRESERVETCP_MARK),
            );
        }
        let mut g = self.lock();
        let dontshim = g.socks.get(&info.key).is_some_and(|s| s.dontshim);
        match name {
            SHIM_DONTSHIM => {
                drop(g);
                // A socket a DONTSHIM listener accepted inherits its mark.
                let marked = Self::ptcp_markable(&info)
                    && sys::get_int(fd, libc::SOL_SOCKET, libc::SO_MARK)? as u32
                        & PRESERVETCP_MARK_MASK
                        == PRESERVETCP_OPT_OUT_MARK;
                return put_int(buf, c_int::from(dontshim || marked));
            }
            SHIM_ASSOCIATED => {
                let Some(peer) = info.peer else {
                    return put_int(buf, if dontshim { 0 } else { 2 });
                };
                // Connected: the truth, DONTSHIM or not (a HIT/LSI peer is
                // reached through HIP only; an IP peer of a DONTSHIM socket
                // is not tracked by preservetcpd, so the answer is 0).
                let Some((flow, _)) = flow_of(&info, peer) else {
                    drop(g);
                    let ptcp = self.ptcp_conn(&info)?;
                    return put_int(buf, c_int::from(ptcp.is_some()));
                };
                return match g.link.call(&Request::ShimGet { flow }) {
                    Ok(Response::ShimContext { .. }) => put_int(buf, 1),
                    Ok(_) => Err(err(libc::EPROTO)),
                    Err(e) if errno_of(&e) == libc::ENOENT => put_int(buf, 0),
                    Err(e) => Err(err(errno_of(&e))),
                };
            }
            SHIM_DEFERRED_CONTEXT_SETUP => {
                if info.peer.is_none() {
                    return Err(err(libc::EOPNOTSUPP));
                }
                return put_int(buf, 0);
            }
            _ => {}
        }
        if info.peer.is_some_and(|p| flow_of(&info, p).is_none())
            && let Some(conn) = self.ptcp_conn(&info)?
        {
            drop(g);
            return Self::ptcp_get(&conn, name, buf);
        }
        let (flow, _) = Self::require_flow(&info)?;
        let ctx = Self::context(&mut g, flow)?;
        drop(g);
        match name {
            SHIM_HOT_STANDBY => put_int(buf, c_int::from(ctx.hot_standby)),
            SHIM_LOC_LOCAL_RECV => put_int(buf, c_int::from(ctx.socket.local_recv)),
            SHIM_LOC_PEER_RECV => put_int(buf, c_int::from(ctx.socket.peer_recv)),
            SHIM_APP_TIMEOUT => put_int(buf, clamp_int(ctx.app_timeout_secs)),
            SHIM_APP_TIMEOUT_MS => put_int(buf, clamp_int(ctx.send_timeout_ms)),
            SHIM_PATHEXPLORE => put(
                buf,
                &shim_pathexplore::from(ctx.effective_explore).to_bytes(),
            ),
            SHIM_LOC_LOCAL_PREF | SHIM_LOC_PEER_PREF => {
                let list = if name == SHIM_LOC_LOCAL_PREF {
                    &ctx.local
                } else {
                    &ctx.peer
                };
                let l = best_locator(list)
                    .map(|l| shim_locator::from(loc_of(l)))
                    .unwrap_or_default();
                put(buf, &l.to_bytes())
            }
            SHIM_LOC_LOCAL_SEND | SHIM_LOC_PEER_SEND => {
                let (a, list) = if name == SHIM_LOC_LOCAL_SEND {
                    (ctx.socket.local_send, &ctx.local)
                } else {
                    (ctx.socket.peer_send, &ctx.peer)
                };
                let l = match a {
                    None => shim_locator::default(),
                    Some(a) => {
                        let a = addr::canonical(a);
                        let loc = list
                            .iter()
                            .find(|l| addr::canonical(l.addr) == a)
                            .map(loc_of)
                            .unwrap_or_else(|| Locator::new(a));
                        shim_locator::from(loc)
                    }
                };
                put(buf, &l.to_bytes())
            }
            SHIM_LOCLIST_LOCAL | SHIM_LOCLIST_PEER => {
                let list = if name == SHIM_LOCLIST_LOCAL {
                    &ctx.local
                } else {
                    &ctx.peer
                };
                let locs: Vec<&ShimLocInfo> = list.iter().filter(|l| l.allowed).collect();
                let need = locs.len() * shim_locator::SIZE;
                if need > buf.len() {
                    return Err(err(ETOOMANYLOCATORS));
                }
                for (i, l) in locs.iter().enumerate() {
                    let b = shim_locator::from(loc_of(l)).to_bytes();
                    put(&mut buf[i * shim_locator::SIZE..], &b)?;
                }
                Ok(need)
            }
            _ => Err(err(libc::ENOPROTOOPT)),
        }
    }

    /// `setsockopt`: `SOL_SHIM` is handled here, every other level goes
    /// to the kernel (`IPV6_RECVDSTOPTS` / `IP_RECVOPTS` are remembered
    /// so the shim's own use of them does not disturb the application).
    pub fn setsockopt(
        &self,
        fd: BorrowedFd<'_>,
        level: c_int,
        name: c_int,
        buf: &[u8],
    ) -> io::Result<()> {
        let fd = fd.as_raw_fd();
        if level != SOL_SHIM {
            return self.setsockopt_passthrough(fd, level, name, buf);
        }
        let info = sock_info(fd)?;
        let want = match (name, shape(name)) {
            (SHIM_ASSOCIATED | SHIM_DEFERRED_CONTEXT_SETUP, _) | (_, None) => {
                return Err(err(libc::ENOPROTOOPT));
            }
            (_, Some(Shape::Int)) => Some(4),
            (_, Some(Shape::Locator)) => Some(shim_locator::SIZE),
            (_, Some(Shape::PathExplore)) => Some(shim_pathexplore::SIZE),
            (_, Some(Shape::LocList)) => None,
        };
        if want.is_some_and(|w| w != buf.len()) {
            return einval();
        }
        // Parse and validate the value before looking at the socket state.
        let set = match name {
            SHIM_PRESERVETCP => {
                let on = bool_of(buf)?;
                if info.proto != libc::IPPROTO_TCP || info.domain != libc::AF_INET6 {
                    return Err(err(libc::EOPNOTSUPP)); // IPv6 TCP only
                }
                if info.peer.is_some() {
                    return Err(err(libc::EISCONN)); // the handshake is over
                }
                let old = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_MARK)? as u32;
                let rest = old & !PRESERVETCP_MARK_MASK;
                let mark = match (on, old & PRESERVETCP_MARK_MASK) {
                    // Opting in and out at once contradicts itself.
                    (true, PRESERVETCP_OPT_OUT_MARK) => return einval(),
                    (true, _) => rest | PRESERVETCP_MARK,
                    (false, PRESERVETCP_MARK) => rest,
                    (false, _) => return Ok(()), // not opted in: unchanged
                };
                return sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &mark.to_ne_bytes());
            }
            SHIM_DONTSHIM => {
                let on = bool_of(buf)?;
                if info.peer.is_some() {
                    return Err(err(libc::EOPNOTSUPP));
                }
                if Self::ptcp_markable(&info) {
                    self.set_opt_out_mark(fd, on)?;
                }
                let mut g = self.lock();
                Self::state(&mut g, &info).dontshim = on;
                return Ok(());
            }
            SHIM_HOT_STANDBY => ShimSetting::HotStandby {
                on: int_of(buf)? != 0,
            },
            SHIM_LOC_LOCAL_RECV => ShimSetting::LocalRecv { on: bool_of(buf)? },
            SHIM_LOC_PEER_RECV => ShimSetting::PeerRecv { on: bool_of(buf)? },
            SHIM_APP_TIMEOUT => ShimSetting::AppTimeout {
                secs: u32::try_from(int_of(buf)?).map_err(|_| err(libc::EINVAL))?,
            },
            SHIM_APP_TIMEOUT_MS => ShimSetting::AppTimeoutMs {
                ms: u32::try_from(int_of(buf)?).map_err(|_| err(libc::EINVAL))?,
            },
            SHIM_PATHEXPLORE => {
                let pe = PathExplore::try_from(shim_pathexplore::from_bytes(buf)?)?;
                ShimSetting::PathExplore {
                    pe: (pe != PathExplore::default()).then_some(pe),
                }
            }
            SHIM_LOC_LOCAL_PREF => ShimSetting::LocalPref { loc: pref_of(buf)? },
            SHIM_LOC_PEER_PREF => ShimSetting::PeerPref { loc: pref_of(buf)? },
            SHIM_LOC_LOCAL_SEND | SHIM_LOC_PEER_SEND => {
                let l = shim_locator::from_bytes(buf)?;
                let addr = if l.is_zero() {
                    None
                } else {
                    Some(Locator::try_from(l)?.addr)
                };
                if name == SHIM_LOC_LOCAL_SEND {
                    ShimSetting::LocalSend { addr }
                } else {
                    ShimSetting::PeerSend { addr }
                }
            }
            SHIM_LOCLIST_LOCAL | SHIM_LOCLIST_PEER => {
                if !buf.len().is_multiple_of(shim_locator::SIZE) {
                    return einval();
                }
                if buf.len() / shim_locator::SIZE > SHIM_MAX_LOCATORS {
                    return Err(err(ETOOMANYLOCATORS));
                }
                let locs = buf
                    .chunks_exact(shim_locator::SIZE)
                    .map(pref_of)
                    .collect::<io::Result<Vec<_>>>()?;
                if name == SHIM_LOCLIST_LOCAL {
                    ShimSetting::LoclistLocal { locs }
                } else {
                    ShimSetting::LoclistPeer { locs }
                }
            }
            _ => return Err(err(libc::ENOPROTOOPT)),
        };
        let mut g = self.lock();
        if info.peer.is_some_and(|p| flow_of(&info, p).is_none())
            && let Some(conn) = self.ptcp_conn(&info)?
        {
            drop(g);
            // Preferences move a preservetcp connection at once; nothing
            // else applies to one.
            let (local, peer) = (
                IpAddr::V6(conn.current.local),
                IpAddr::V6(conn.current.peer),
            );
            return match set {
                ShimSetting::PeerPref { loc } => {
                    crate::ptcp::move_to(&self.ptcp_socket, &conn, local, loc.addr)
                }
                ShimSetting::LocalPref { loc } => {
                    crate::ptcp::move_to(&self.ptcp_socket, &conn, loc.addr, peer)
                }
                _ => Err(err(libc::EOPNOTSUPP)),
            };
        }
        let (flow, kind) = Self::require_flow(&info)?;
        let recv = match &set {
            ShimSetting::LocalRecv { on } => Some((true, *on)),
            ShimSetting::PeerRecv { on } => Some((false, *on)),
            _ => None,
        };
        Self::call_set(&mut g, flow, set)?;
        if let Some((local, on)) = recv {
            let generation = g.link.generation;
            let st = Self::state(&mut g, &info);
            if st.generation != generation {
                st.generation = generation;
                st.tokens.clear();
            }
            if local {
                st.local_recv = on;
            } else {
                st.peer_recv = on;
            }
            if info.ty == libc::SOCK_DGRAM {
                Self::sync_rxopt(st, info.fd, kind)?;
            }
        }
        Ok(())
    }

    fn setsockopt_passthrough(
        &self,
        fd: RawFd,
        level: c_int,
        name: c_int,
        buf: &[u8],
    ) -> io::Result<()> {
        let ours = (level == libc::IPPROTO_IPV6 && name == libc::IPV6_RECVDSTOPTS)
            || (level == libc::IPPROTO_IP && name == libc::IP_RECVOPTS);
        if !ours {
            return sys::setsockopt(fd, level, name, buf);
        }
        let key = sys::file_id(fd)?;
        let mut g = self.lock();
        let Some(st) = g.socks.get_mut(&key) else {
            drop(g);
            return sys::setsockopt(fd, level, name, buf);
        };
        let app_on = buf.iter().any(|b| *b != 0);
        let shim_needs = st.lib_rxopt.is_some_and(|k| rxopt(k) == (level, name));
        if shim_needs && !app_on {
            // Validate like the kernel would, but keep the option on: the
            // shim still needs it; the application's cmsgs stop.
            if buf.len() < 4 {
                return einval();
            }
            st.app_rxopt = false;
            return Ok(());
        }
        sys::setsockopt(fd, level, name, buf)?;
        st.app_rxopt = app_on;
        Ok(())
    }

    /// Switches the kernel receive option on or off to follow the RECV
    /// flags, remembering whether the application had it on already.
    fn sync_rxopt(st: &mut SockState, fd: RawFd, kind: IdKind) -> io::Result<()> {
        let need = st.local_recv || st.peer_recv;
        let (level, name) = rxopt(kind);
        match (need, st.lib_rxopt) {
            (true, None) => {
                if sys::get_int(fd, level, name)? != 0 {
                    st.app_rxopt = true;
                }
                sys::set_int(fd, level, name, 1)?;
                st.lib_rxopt = Some(kind);
            }
            (false, Some(k)) => {
                let (level, name) = rxopt(k);
                if !st.app_rxopt {
                    sys::set_int(fd, level, name, 0)?;
                }
                st.lib_rxopt = None;
            }
            _ => {}
        }
        Ok(())
    }

    fn state<'a>(g: &'a mut Inner, info: &SockInfo) -> &'a mut SockState {
        if g.socks.len() >= PRUNE_AT && !g.socks.contains_key(&info.key) {
            g.socks
                .retain(|k, s| sys::file_id(s.fd).is_ok_and(|id| id == *k));
        }
        let st = g.socks.entry(info.key).or_default();
        st.fd = info.fd;
        st
    }

    /// The HIP flow of a connected socket. `SHIM_DONTSHIM` plays no part:
    /// a socket addressing a HIT or LSI is only reachable through the HIP
    /// shim, so its flow is mapped either way; any other peer has no flow.
    fn require_flow(info: &SockInfo) -> io::Result<(FlowId, IdKind)> {
        let Some(peer) = info.peer else {
            return Err(err(libc::EOPNOTSUPP));
        };
        flow_of(info, peer).ok_or_else(|| err(libc::ENOENT))
    }

    /// Sockets preservetcpd can cover, hence the ones `SHIM_DONTSHIM`
    /// marks: IPv6 TCP.
    fn ptcp_markable(info: &SockInfo) -> bool {
        info.proto == libc::IPPROTO_TCP && info.domain == libc::AF_INET6
    }

    /// `SHIM_DONTSHIM` on an IPv6 TCP socket: sets (or, if it is the
    /// opt-out value, clears) [`PRESERVETCP_OPT_OUT_MARK`] in the
    /// [`PRESERVETCP_MARK_MASK`] bits of the socket mark, replacing an
    /// opt-in and keeping the other bits. Without `CAP_NET_ADMIN` the mark
    /// cannot be set: that is `EPERM` if preservetcpd runs (its `--ports`
    /// would otherwise cover the socket), and only recorded if no
    /// preservetcpd control socket answers.
    fn set_opt_out_mark(&self, fd: RawFd, on: bool) -> io::Result<()> {
        let old = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_MARK)? as u32;
        let rest = old & !PRESERVETCP_MARK_MASK;
        let mark = match (on, old & PRESERVETCP_MARK_MASK) {
            (true, _) => rest | PRESERVETCP_OPT_OUT_MARK,
            (false, PRESERVETCP_OPT_OUT_MARK) => rest,
            (false, _) => return Ok(()),
        };
        if mark == old {
            return Ok(());
        }
        match sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &mark.to_ne_bytes()) {
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    && !crate::ptcp::running(&self.ptcp_socket) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    fn context(g: &mut Inner, flow: FlowId) -> io::Result<ShimContextInfo> {
        match g.link.call(&Request::ShimGet { flow }) {
            Ok(Response::ShimContext { ctx }) => Ok(ctx),
            Ok(_) => Err(err(libc::EPROTO)),
            Err(e) => Err(err(errno_of(&e))),
        }
    }

    fn call_set(g: &mut Inner, flow: FlowId, set: ShimSetting) -> io::Result<()> {
        match g.link.call(&Request::ShimSet { flow, set }) {
            Ok(_) => Ok(()),
            Err(e) => Err(err(errno_of(&e))),
        }
    }

    /// `sendmsg` with `SOL_SHIM` control messages: `SHIM_LOC_LOCAL_SEND` /
    /// `SHIM_LOC_PEER_SEND` (datagram sockets; payload `sockaddr_in` /
    /// `sockaddr_in6`) and `SHIM_FEEDBACK` (+ draft aliases). Other control
    /// messages go to the kernel unchanged; without `SOL_SHIM` messages
    /// the call is a plain `sendmsg`.
    pub fn sendmsg(
        &self,
        fd: BorrowedFd<'_>,
        iov: &[IoSlice<'_>],
        name: Option<&[u8]>,
        control: &[u8],
        flags: c_int,
    ) -> io::Result<usize> {
        let fd = fd.as_raw_fd();
        let Ok(msgs) = cmsg::parse(control) else {
            // Malformed: let the kernel give its own answer.
            return sys::sendmsg(fd, iov, name, control, flags);
        };
        if !msgs.iter().any(|m| m.level == SOL_SHIM) {
            return sys::sendmsg(fd, iov, name, control, flags);
        }
        let mut local_send = None;
        let mut peer_send = None;
        let mut feedback = Vec::new();
        let mut rest = CmsgBuf::new();
        let mut app_tclass = false;
        for m in &msgs {
            if m.level != SOL_SHIM {
                if (m.level == libc::IPPROTO_IPV6 && m.ty == libc::IPV6_TCLASS)
                    || (m.level == libc::IPPROTO_IP && m.ty == libc::IP_TOS)
                {
                    app_tclass = true;
                }
                rest.push(m.level, m.ty, m.data);
                continue;
            }
            match m.ty {
                SHIM_LOC_LOCAL_SEND | SHIM_LOC_PEER_SEND => {
                    let a =
                        addr::parse_locator_sockaddr(m.data).ok_or_else(|| err(libc::EINVAL))?;
                    let slot = if m.ty == SHIM_LOC_LOCAL_SEND {
                        &mut local_send
                    } else {
                        &mut peer_send
                    };
                    if slot.replace(a).is_some() {
                        return einval();
                    }
                }
                SHIM_FEEDBACK => {
                    let f = shim_feedback::from_bytes(m.data)?;
                    crate::types::Feedback::try_from(f)?;
                    feedback.push((f.fb_direction, f.fb_indicator));
                }
                SHIM_FEEDBACK_POSITIVE | SHIM_FEEDBACK_NEGATIVE => {
                    let dir = if m.data.is_empty() {
                        SHIM_FB_DIRECTION_OUTBOUND
                    } else {
                        shim_feedback::from_bytes(m.data)?.fb_direction
                    };
                    if dir > SHIM_FB_DIRECTION_INBOUND {
                        return einval();
                    }
                    feedback.push((
                        dir,
                        draft_feedback_indicator(m.ty == SHIM_FEEDBACK_POSITIVE),
                    ));
                }
                _ => return einval(),
            }
        }
        let sending = local_send.is_some() || peer_send.is_some();
        let mut info = sock_info(fd)?;
        if sending {
            if info.ty != libc::SOCK_DGRAM {
                return Err(err(libc::EOPNOTSUPP));
            }
            if app_tclass {
                return einval();
            }
        }
        let peer = match name {
            Some(n) => Some(addr::parse_sockaddr(n).ok_or_else(|| err(libc::EINVAL))?),
            None => info.peer,
        };
        let Some(peer) = peer else {
            return Err(err(libc::EDESTADDRREQ));
        };
        if sending && info.local.is_none_or(|l| l.port() == 0) {
            // The kernel would bind the socket to an ephemeral port on
            // this send anyway; do it now so the flow is known.
            let any: SocketAddr = if info.domain == libc::AF_INET6 {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            sys::bind(fd, &addr::encode_sockaddr(&any))?;
            info.local = addr::parse_sockaddr(&sys::getsockname(fd)?);
        }
        let mut g = self.lock();
        let Some((flow, kind)) = flow_of(&info, peer) else {
            return Err(err(libc::ENOENT));
        };
        for (direction, indicator) in feedback {
            Self::call_set(
                &mut g,
                flow,
                ShimSetting::Feedback {
                    direction,
                    indicator,
                },
            )?;
        }
        if sending {
            let (level, ty) = match kind {
                IdKind::Hit => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
                IdKind::Lsi => (libc::IPPROTO_IP, libc::IP_TOS),
            };
            let base = u8::try_from(sys::get_int(fd, level, ty)?.max(0)).unwrap_or(0);
            let generation = g.link.generation;
            let cached = g.socks.get(&info.key).and_then(|s| {
                (s.generation == generation)
                    .then(|| s.tokens.get(&(flow, local_send, peer_send, base)).copied())
                    .flatten()
                    .filter(|(_, at)| at.elapsed() < TOKEN_RECHECK)
                    .map(|(t, _)| t)
            });
            let token = match cached {
                Some(t) => t,
                None => {
                    let req = Request::ShimSendToken {
                        flow,
                        local: local_send,
                        peer: peer_send,
                        base_tclass: base,
                    };
                    let t = match g.link.call(&req) {
                        Ok(Response::ShimToken { token })
                            if (1..=shimtag::MAX_TOKEN).contains(&token) =>
                        {
                            token
                        }
                        Ok(_) => return Err(err(libc::EPROTO)),
                        Err(e) => {
                            if let Some(st) = g.socks.get_mut(&info.key) {
                                st.tokens.remove(&(flow, local_send, peer_send, base));
                            }
                            return Err(err(errno_of(&e)));
                        }
                    };
                    let generation = g.link.generation;
                    let st = Self::state(&mut g, &info);
                    if st.generation != generation {
                        st.generation = generation;
                        st.tokens.clear();
                    }
                    st.tokens
                        .insert((flow, local_send, peer_send, base), (t, Instant::now()));
                    t
                }
            };
            rest.push_int(level, ty, c_int::from(shimtag::token_tclass(token)));
        }
        drop(g);
        let has_data = iov.iter().any(|s| !s.is_empty());
        if !sending && !has_data && rest.is_empty() {
            // Feedback only: nothing for the kernel to send (an empty
            // datagram would reach the peer).
            return Ok(0);
        }
        sys::sendmsg(fd, iov, name, rest.as_bytes(), flags)
    }

    /// `recvmsg` adding `SHIM_LOC_LOCAL_RECV` / `SHIM_LOC_PEER_RECV`
    /// control messages for sockets that enabled them. Sockets without
    /// them get a plain `recvmsg`.
    pub fn recvmsg(
        &self,
        fd: BorrowedFd<'_>,
        iov: &mut [IoSliceMut<'_>],
        name: Option<&mut [u8]>,
        control: &mut [u8],
        flags: c_int,
    ) -> io::Result<RecvMeta> {
        let fd = fd.as_raw_fd();
        let plain = |iov: &mut [IoSliceMut<'_>], name, control: &mut [u8]| {
            sys::recvmsg(fd, iov, name, control, flags).map(|r| RecvMeta {
                bytes: r.bytes,
                name_len: r.name_len,
                control_len: r.control_len,
                flags: r.flags,
            })
        };
        let key = sys::file_id(fd)?;
        let (local_recv, peer_recv, app_rxopt) = {
            let g = self.lock();
            match g.socks.get(&key) {
                Some(s) if s.local_recv || s.peer_recv => (s.local_recv, s.peer_recv, s.app_rxopt),
                _ => return plain(iov, name, control),
            }
        };
        let ty = sys::get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let mut kbuf = vec![0u8; control.len() + 2 * cmsg::space(shimtag::TAG_LEN) + 64];
        let r = sys::recvmsg(fd, iov, name, &mut kbuf, flags)?;
        let kmsgs = cmsg::parse(kbuf.get(..r.control_len).unwrap_or_default()).unwrap_or_default();
        let mut pair = None;
        let mut out = CmsgWriter::new(control);
        for m in &kmsgs {
            let tag = if m.level == libc::IPPROTO_IPV6 && m.ty == libc::IPV6_DSTOPTS {
                Some(shimtag::find_in_dstopts(m.data))
            } else if m.level == libc::IPPROTO_IP
                && (m.ty == libc::IP_RECVOPTS || m.ty == libc::IP_OPTIONS)
            {
                Some(shimtag::find_in_ipv4_options(m.data))
            } else {
                None
            };
            if let Some(t) = tag {
                if pair.is_none() {
                    pair = t;
                }
                if !app_rxopt {
                    continue;
                }
            }
            out.put(m.level, m.ty, m.data);
        }
        if ty == libc::SOCK_STREAM {
            // Stream sockets: the latest pair the daemon saw (RFC 6316 §7:
            // no exact match promised).
            let info = sock_info(fd)?;
            let mut g = self.lock();
            pair = Self::require_flow(&info)
                .ok()
                .and_then(|(flow, _)| Self::context(&mut g, flow).ok())
                .and_then(|c| c.socket.last_rx);
        }
        let zero = [0u8; addr::SOCKADDR_IN6_LEN];
        if local_recv {
            match pair {
                Some((l, _)) => out.put(SOL_SHIM, SHIM_LOC_LOCAL_RECV, &addr::locator_sockaddr(l)),
                None => out.put(SOL_SHIM, SHIM_LOC_LOCAL_RECV, &zero),
            }
        }
        if peer_recv {
            match pair {
                Some((_, p)) => out.put(SOL_SHIM, SHIM_LOC_PEER_RECV, &addr::locator_sockaddr(p)),
                None => out.put(SOL_SHIM, SHIM_LOC_PEER_RECV, &zero),
            }
        }
        let mut mflags = r.flags;
        if out.truncated {
            mflags |= libc::MSG_CTRUNC;
        }
        Ok(RecvMeta {
            bytes: r.bytes,
            name_len: r.name_len,
            control_len: out.used(),
            flags: mflags,
        })
    }

    /// Forgets a socket: the daemon's per-socket state
    /// ([`Request::ShimRelease`]) and this process's (DONTSHIM, RECV flags,
    /// send markers); switches off a receive option the library enabled.
    /// Call it before closing a socket that used per-socket options if the
    /// process lives on (otherwise the state lives until the process's
    /// control connection closes).
    pub fn release(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let info = sock_info(fd.as_raw_fd())?;
        let mut g = self.lock();
        if let Some(mut st) = g.socks.remove(&info.key) {
            st.local_recv = false;
            st.peer_recv = false;
            if let Some(k) = st.lib_rxopt {
                Self::sync_rxopt(&mut st, info.fd, k)?;
            }
        }
        let Ok((flow, _)) = Self::require_flow(&info) else {
            return Ok(());
        };
        match g.link.call(&Request::ShimRelease { flow }) {
            Ok(_) => Ok(()),
            Err(e) if errno_of(&e) == libc::ENOENT => Ok(()),
            Err(e) => Err(err(errno_of(&e))),
        }
    }
}
