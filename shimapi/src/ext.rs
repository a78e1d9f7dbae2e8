//! Typed helpers: extension traits on std's (and, with feature `tokio`,
//! tokio's) TCP and UDP sockets. Every helper goes through the same
//! entry points as C callers ([`Shim::getsockopt`] …) on [`Shim::global`].

use std::ffi::c_int;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};

use crate::addr;
use crate::cmsg::{self, CmsgBuf};
use crate::consts::*;
use crate::shim::Shim;
use crate::types::{
    Feedback, Locator, LocatorPair, PathExplore, shim_feedback, shim_locator, shim_pathexplore,
};

/// Whether a socket is bound to a shim context (`SHIM_ASSOCIATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Association {
    /// No context (0).
    No,
    /// A context (1).
    Yes,
    /// Unknown: the socket is not connected (2).
    Unknown,
}

fn get_int(fd: BorrowedFd<'_>, name: c_int) -> io::Result<c_int> {
    let mut b = [0u8; 4];
    Shim::global().getsockopt(fd, SOL_SHIM, name, &mut b)?;
    Ok(c_int::from_ne_bytes(b))
}

fn set_int(fd: BorrowedFd<'_>, name: c_int, v: c_int) -> io::Result<()> {
    Shim::global().setsockopt(fd, SOL_SHIM, name, &v.to_ne_bytes())
}

fn get_loc(fd: BorrowedFd<'_>, name: c_int) -> io::Result<Option<Locator>> {
    let mut b = [0u8; shim_locator::SIZE];
    Shim::global().getsockopt(fd, SOL_SHIM, name, &mut b)?;
    let l = shim_locator::from_bytes(&b)?;
    if l.is_zero() {
        return Ok(None);
    }
    Ok(Some(Locator::try_from(l)?))
}

fn set_loc(fd: BorrowedFd<'_>, name: c_int, l: Option<&Locator>) -> io::Result<()> {
    let b = l.map(shim_locator::from).unwrap_or_default().to_bytes();
    Shim::global().setsockopt(fd, SOL_SHIM, name, &b)
}

fn get_list(fd: BorrowedFd<'_>, name: c_int) -> io::Result<Vec<Locator>> {
    let mut b = vec![0u8; SHIM_MAX_LOCATORS * shim_locator::SIZE];
    let n = Shim::global().getsockopt(fd, SOL_SHIM, name, &mut b)?;
    b.get(..n)
        .unwrap_or_default()
        .chunks_exact(shim_locator::SIZE)
        .map(|c| Ok(Locator::try_from(shim_locator::from_bytes(c)?)?))
        .collect()
}

fn set_list(fd: BorrowedFd<'_>, name: c_int, locs: &[Locator]) -> io::Result<()> {
    let b: Vec<u8> = locs
        .iter()
        .flat_map(|l| shim_locator::from(l).to_bytes())
        .collect();
    Shim::global().setsockopt(fd, SOL_SHIM, name, &b)
}

/// `SOL_SHIM` options on a connected TCP or UDP socket.
pub trait ShimSocketExt: AsFd {
    /// `SHIM_ASSOCIATED`.
    fn shim_associated(&self) -> io::Result<Association> {
        Ok(match get_int(self.as_fd(), SHIM_ASSOCIATED)? {
            1 => Association::Yes,
            2 => Association::Unknown,
            _ => Association::No,
        })
    }
    /// `SHIM_DONTSHIM` (set before connecting).
    fn set_dont_shim(&self, on: bool) -> io::Result<()> {
        set_int(self.as_fd(), SHIM_DONTSHIM, c_int::from(on))
    }
    /// `SHIM_DONTSHIM`.
    fn dont_shim(&self) -> io::Result<bool> {
        Ok(get_int(self.as_fd(), SHIM_DONTSHIM)? != 0)
    }
    /// `SHIM_LOC_LOCAL_PREF` set: a preference (prio/weight) for a local
    /// locator.
    fn set_local_pref(&self, loc: &Locator) -> io::Result<()> {
        set_loc(self.as_fd(), SHIM_LOC_LOCAL_PREF, Some(loc))
    }
    /// `SHIM_LOC_LOCAL_PREF` get: the highest-preference local locator.
    fn local_pref(&self) -> io::Result<Option<Locator>> {
        get_loc(self.as_fd(), SHIM_LOC_LOCAL_PREF)
    }
    /// `SHIM_LOC_PEER_PREF` set.
    fn set_peer_pref(&self, loc: &Locator) -> io::Result<()> {
        set_loc(self.as_fd(), SHIM_LOC_PEER_PREF, Some(loc))
    }
    /// `SHIM_LOC_PEER_PREF` get.
    fn peer_pref(&self) -> io::Result<Option<Locator>> {
        get_loc(self.as_fd(), SHIM_LOC_PEER_PREF)
    }
    /// Sticky `SHIM_LOC_LOCAL_SEND` (`None` cancels).
    fn set_local_send(&self, addr: Option<IpAddr>) -> io::Result<()> {
        set_loc(
            self.as_fd(),
            SHIM_LOC_LOCAL_SEND,
            addr.map(Locator::new).as_ref(),
        )
    }
    /// Sticky `SHIM_LOC_LOCAL_SEND`.
    fn local_send(&self) -> io::Result<Option<Locator>> {
        get_loc(self.as_fd(), SHIM_LOC_LOCAL_SEND)
    }
    /// Sticky `SHIM_LOC_PEER_SEND` (`None` cancels).
    fn set_peer_send(&self, addr: Option<IpAddr>) -> io::Result<()> {
        set_loc(
            self.as_fd(),
            SHIM_LOC_PEER_SEND,
            addr.map(Locator::new).as_ref(),
        )
    }
    /// Sticky `SHIM_LOC_PEER_SEND`.
    fn peer_send(&self) -> io::Result<Option<Locator>> {
        get_loc(self.as_fd(), SHIM_LOC_PEER_SEND)
    }
    /// `SHIM_LOC_LOCAL_RECV`.
    fn set_local_recv(&self, on: bool) -> io::Result<()> {
        set_int(self.as_fd(), SHIM_LOC_LOCAL_RECV, c_int::from(on))
    }
    /// `SHIM_LOC_LOCAL_RECV`.
    fn local_recv(&self) -> io::Result<bool> {
        Ok(get_int(self.as_fd(), SHIM_LOC_LOCAL_RECV)? != 0)
    }
    /// `SHIM_LOC_PEER_RECV`.
    fn set_peer_recv(&self, on: bool) -> io::Result<()> {
        set_int(self.as_fd(), SHIM_LOC_PEER_RECV, c_int::from(on))
    }
    /// `SHIM_LOC_PEER_RECV`.
    fn peer_recv(&self) -> io::Result<bool> {
        Ok(get_int(self.as_fd(), SHIM_LOC_PEER_RECV)? != 0)
    }
    /// `SHIM_LOCLIST_LOCAL` get.
    fn local_locators(&self) -> io::Result<Vec<Locator>> {
        get_list(self.as_fd(), SHIM_LOCLIST_LOCAL)
    }
    /// `SHIM_LOCLIST_LOCAL` set.
    fn set_local_locators(&self, locs: &[Locator]) -> io::Result<()> {
        set_list(self.as_fd(), SHIM_LOCLIST_LOCAL, locs)
    }
    /// `SHIM_LOCLIST_PEER` get.
    fn peer_locators(&self) -> io::Result<Vec<Locator>> {
        get_list(self.as_fd(), SHIM_LOCLIST_PEER)
    }
    /// `SHIM_LOCLIST_PEER` set.
    fn set_peer_locators(&self, locs: &[Locator]) -> io::Result<()> {
        set_list(self.as_fd(), SHIM_LOCLIST_PEER, locs)
    }
    /// `SHIM_HOT_STANDBY`.
    fn set_hot_standby(&self, on: bool) -> io::Result<()> {
        set_int(self.as_fd(), SHIM_HOT_STANDBY, c_int::from(on))
    }
    /// `SHIM_HOT_STANDBY`.
    fn hot_standby(&self) -> io::Result<bool> {
        Ok(get_int(self.as_fd(), SHIM_HOT_STANDBY)? != 0)
    }
    /// `SHIM_APP_TIMEOUT` in seconds (0 = default).
    fn set_app_timeout(&self, secs: u32) -> io::Result<()> {
        let v = c_int::try_from(secs).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        set_int(self.as_fd(), SHIM_APP_TIMEOUT, v)
    }
    /// `SHIM_APP_TIMEOUT` as set (seconds, 0 = default).
    fn app_timeout(&self) -> io::Result<u32> {
        Ok(u32::try_from(get_int(self.as_fd(), SHIM_APP_TIMEOUT)?).unwrap_or(0))
    }
    /// Extension `SHIM_APP_TIMEOUT_MS` (0 = default).
    fn set_app_timeout_ms(&self, ms: u32) -> io::Result<()> {
        let v = c_int::try_from(ms).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        set_int(self.as_fd(), SHIM_APP_TIMEOUT_MS, v)
    }
    /// Extension `SHIM_APP_TIMEOUT_MS` get: the Send Timeout in effect.
    fn app_timeout_ms(&self) -> io::Result<u32> {
        Ok(u32::try_from(get_int(self.as_fd(), SHIM_APP_TIMEOUT_MS)?).unwrap_or(0))
    }
    /// `SHIM_PATHEXPLORE` (`None` or all-zero = defaults).
    fn set_path_explore(&self, pe: Option<PathExplore>) -> io::Result<()> {
        let b = pe
            .map(shim_pathexplore::from)
            .unwrap_or_default()
            .to_bytes();
        Shim::global().setsockopt(self.as_fd(), SOL_SHIM, SHIM_PATHEXPLORE, &b)
    }
    /// `SHIM_PATHEXPLORE`: the parameters in effect.
    fn path_explore(&self) -> io::Result<PathExplore> {
        let mut b = [0u8; shim_pathexplore::SIZE];
        Shim::global().getsockopt(self.as_fd(), SOL_SHIM, SHIM_PATHEXPLORE, &mut b)?;
        Ok(PathExplore::try_from(shim_pathexplore::from_bytes(&b)?)?)
    }
    /// `SHIM_FEEDBACK`: a `sendmsg` without data carrying only the
    /// feedback control message (nothing is sent on the wire).
    fn send_feedback(&self, fb: Feedback) -> io::Result<()> {
        let mut c = CmsgBuf::new();
        c.push(SOL_SHIM, SHIM_FEEDBACK, &shim_feedback::from(fb).to_bytes());
        Shim::global()
            .sendmsg(self.as_fd(), &[], None, c.as_bytes(), 0)
            .map(|_| ())
    }
    /// Forgets the socket's shim state ([`Shim::release`]).
    fn shim_release(&self) -> io::Result<()> {
        Shim::global().release(self.as_fd())
    }
}

impl ShimSocketExt for std::net::TcpStream {}
impl ShimSocketExt for std::net::UdpSocket {}
#[cfg(feature = "tokio")]
impl ShimSocketExt for tokio::net::TcpStream {}
#[cfg(feature = "tokio")]
impl ShimSocketExt for tokio::net::UdpSocket {}

/// The control buffer of a send with per-datagram locators.
pub fn send_locators_cmsg(pair: &LocatorPair) -> CmsgBuf {
    let mut c = CmsgBuf::new();
    if let Some(l) = pair.local {
        c.push(SOL_SHIM, SHIM_LOC_LOCAL_SEND, &addr::locator_sockaddr(l));
    }
    if let Some(p) = pair.peer {
        c.push(SOL_SHIM, SHIM_LOC_PEER_SEND, &addr::locator_sockaddr(p));
    }
    c
}

/// Reads `SHIM_LOC_*_RECV` messages from a received control buffer
/// (zero-filled = `None`).
pub fn recv_locators(control: &[u8]) -> LocatorPair {
    let mut pair = LocatorPair::default();
    for m in cmsg::parse(control).unwrap_or_default() {
        if m.level != SOL_SHIM {
            continue;
        }
        let a = addr::parse_locator_sockaddr(m.data);
        match m.ty {
            SHIM_LOC_LOCAL_RECV => pair.local = a,
            SHIM_LOC_PEER_RECV => pair.peer = a,
            _ => {}
        }
    }
    pair
}

/// Room for the control data of a receive with locators.
const RECV_CONTROL: usize = 2 * cmsg::space(addr::SOCKADDR_IN6_LEN) + 128;

fn send_with(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    pair: &LocatorPair,
    to: Option<SocketAddr>,
) -> io::Result<usize> {
    let c = send_locators_cmsg(pair);
    let name = to.map(|a| addr::encode_sockaddr(&a));
    Shim::global().sendmsg(fd, &[IoSlice::new(buf)], name.as_deref(), c.as_bytes(), 0)
}

fn recv_with(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: c_int,
) -> io::Result<(usize, Option<SocketAddr>, LocatorPair)> {
    let mut name = [0u8; addr::SOCKADDR_IN6_LEN + 4];
    let mut control = [0u8; RECV_CONTROL];
    let r = Shim::global().recvmsg(
        fd,
        &mut [IoSliceMut::new(buf)],
        Some(&mut name),
        &mut control,
        flags,
    )?;
    let from = addr::parse_sockaddr(name.get(..r.name_len).unwrap_or_default());
    let pair = recv_locators(control.get(..r.control_len).unwrap_or_default());
    Ok((r.bytes, from, pair))
}

/// Per-datagram locators on a (blocking) UDP socket.
pub trait ShimUdpExt: AsFd {
    /// Sends one datagram with `SHIM_LOC_LOCAL_SEND` / `SHIM_LOC_PEER_SEND`
    /// for this datagram only (`to`: destination for unconnected sockets,
    /// an EID).
    fn send_with_locators(
        &self,
        buf: &[u8],
        pair: &LocatorPair,
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        send_with(self.as_fd(), buf, pair, to)
    }
    /// Receives one datagram with the locators it arrived on (needs
    /// `SHIM_LOC_*_RECV` on; `None` where unknown).
    fn recv_with_locators(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(usize, Option<SocketAddr>, LocatorPair)> {
        recv_with(self.as_fd(), buf, 0)
    }
}

impl ShimUdpExt for std::net::UdpSocket {}

/// Per-datagram locators on a tokio UDP socket.
#[cfg(feature = "tokio")]
pub trait ShimTokioUdpExt {
    /// Async [`ShimUdpExt::send_with_locators`].
    fn send_with_locators<'a>(
        &'a self,
        buf: &'a [u8],
        pair: &'a LocatorPair,
        to: Option<SocketAddr>,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a;
    /// Async [`ShimUdpExt::recv_with_locators`].
    fn recv_with_locators<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<(usize, Option<SocketAddr>, LocatorPair)>>
    + Send
    + 'a;
}

#[cfg(feature = "tokio")]
impl ShimTokioUdpExt for tokio::net::UdpSocket {
    async fn send_with_locators<'a>(
        &'a self,
        buf: &'a [u8],
        pair: &'a LocatorPair,
        to: Option<SocketAddr>,
    ) -> io::Result<usize> {
        self.async_io(tokio::io::Interest::WRITABLE, || {
            send_with(self.as_fd(), buf, pair, to)
        })
        .await
    }

    async fn recv_with_locators<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> io::Result<(usize, Option<SocketAddr>, LocatorPair)> {
        self.async_io(tokio::io::Interest::READABLE, || {
            recv_with(self.as_fd(), buf, libc::MSG_DONTWAIT)
        })
        .await
    }
}
