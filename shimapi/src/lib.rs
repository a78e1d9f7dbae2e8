//! # shimapi — the multihoming shim socket API (RFC 6316, `SOL_SHIM`)
//!
//! The shim is the userspace HIP daemon (`hipd`). Applications use
//! ordinary sockets addressed to HITs (IPv6, `2001:20::/28`) or LSIs (IPv4,
//! `1.0.0.0/8`); this library finds a socket's shim context from
//! `getsockname`/`getpeername` plus `SO_PROTOCOL` (a
//! [`FlowId`](hipd_backend::control::FlowId)) and talks to the daemon over
//! its control socket (`HIPD_CONTROL_SOCKET`, else
//! [`DEFAULT_SOCKET`](hipd_backend::control::DEFAULT_SOCKET)): one
//! persistent connection per process, opened at first use and reopened
//! once after an error. The daemon keeps per-socket state (sticky SEND,
//! RECV flags, send markers) for as long as that connection lives or
//! until [`Shim::release`]. A TCP socket whose peer is not a HIT or LSI
//! may be a preservetcp connection: then `preservetcpd` is asked (see
//! [`ptcp`]: `SHIM_ASSOCIATED`, `SHIM_LOCLIST_*`, `SHIM_LOC_*_PREF`); any
//! other such socket has no context and never causes a hipd request.
//!
//! ## Entry points
//! * [`getsockopt`] / [`setsockopt`]: `(fd, level, optname, buffer)`;
//!   level [`SOL_SHIM`] is handled here, every other level goes to the
//!   kernel unchanged.
//! * [`sendmsg`] / [`recvmsg`]: raw control buffers in and out; `SOL_SHIM`
//!   messages are handled, the others pass through. These four are what
//!   the `ffi` crate exports as `shim_getsockopt` … `shim_recvmsg`.
//! * [`ShimSocketExt`] (std/tokio `TcpStream`, `UdpSocket`) and
//!   [`ShimUdpExt`] / `ShimTokioUdpExt` (feature `tokio`): typed helpers.
//! * [`Shim`]: an instance bound to another control socket.
//!
//! Errors are `io::Error`s carrying the errno (`raw_os_error()`); the four
//! new RFC errno names have the values below ([`errno_name`]).
//!
//! ## Numeric values (stable; RFC 6316 assigns none)
//!
//! | name | value | kind |
//! |---|---|---|
//! | `SOL_SHIM` | `0x5348` (21320) | level; Linux levels are < 300, IP protocols ≤ 262 |
//! | `SHIM_ASSOCIATED` | 1 | option, `int`, get |
//! | `SHIM_DONTSHIM` | 2 | option, `int`, get/set |
//! | `SHIM_HOT_STANDBY` | 3 | option, `int`, get/set |
//! | `SHIM_LOC_LOCAL_PREF` | 4 | option, `shim_locator`, get/set |
//! | `SHIM_LOC_PEER_PREF` | 5 | option, `shim_locator`, get/set |
//! | `SHIM_LOC_LOCAL_RECV` | 6 | option `int` get/set; cmsg (recvmsg) |
//! | `SHIM_LOC_PEER_RECV` | 7 | option `int` get/set; cmsg (recvmsg) |
//! | `SHIM_LOC_LOCAL_SEND` | 8 | option `shim_locator` get/set; cmsg (sendmsg) |
//! | `SHIM_LOC_PEER_SEND` | 9 | option `shim_locator` get/set; cmsg (sendmsg) |
//! | `SHIM_LOCLIST_LOCAL` | 10 | option, `shim_locator[]`, get/set |
//! | `SHIM_LOCLIST_PEER` | 11 | option, `shim_locator[]`, get/set |
//! | `SHIM_APP_TIMEOUT` | 12 | option, `int` seconds, get/set |
//! | `SHIM_PATHEXPLORE` | 13 | option, `shim_pathexplore`, get/set |
//! | `SHIM_DEFERRED_CONTEXT_SETUP` = `SHIM_CONTEXT_DEFERRED_SETUP` = `SHIM_DEFERED_CONTEXT_SETUP` | 14 | option, `int`, get |
//! | `SHIM_FEEDBACK` | 15 | cmsg (sendmsg), `shim_feedback` |
//! | `SHIM_FEEDBACK_POSITIVE` (draft) | 16 | cmsg (sendmsg): feedback, indicator 3 |
//! | `SHIM_FEEDBACK_NEGATIVE` (draft) | 17 | cmsg (sendmsg): feedback, indicator 2 |
//! | `SHIM_APP_TIMEOUT_MS` (**project extension**) | `0x100` | option, `int` ms, get/set |
//! | `SHIM_PRESERVETCP` (**project extension**) | `0x101` | option, `int`, get/set: TCP socket opted in to preservetcp (set before `connect`; `SO_MARK`, needs `CAP_NET_ADMIN`) |
//! | `SHIM_MAX_LOCATORS` | 32 | RFC 6316 §13 |
//! | `SHIM_LOC_FLAG_HBA` / `SHIM_LOC_FLAG_CGA` | 0x01 / 0x02 | `lc_flags` (names ours) |
//! | `EINVALIDLOCATOR` | `0x5351` (21329) | errno |
//! | `EUNVERIFIEDLOCATOR` | `0x5352` (21330) | errno |
//! | `EUNREACHABLELOCATOR` | `0x5353` (21331) | errno |
//! | `ETOOMANYLOCATORS` | `0x5354` (21332) | errno |
//!
//! The errno values lie above the kernel's `MAX_ERRNO` (4095), so no
//! system call can ever return them. The cmsg types reuse the option
//! numbers (RFC 6316 §7). The draft names `SHIM_IF_SEND`/`SHIM_IF_RECV`
//! (deprecated in draft -01) are not provided.
//!
//! ## Structures
//! [`shim_locator`] (32 bytes), [`shim_pathexplore`] (12), [`shim_feedback`]
//! (4) are laid out as in RFC 6316 §8 with natural C alignment. Integer
//! fields are host order (`lc_port` too: the RFC's example assigns it
//! without `htons`), `lc_addr` network order; IPv4 locators are
//! IPv4-mapped in `lc_addr` with `lc_family = AF_INET`. An `AF_INET6`
//! locator holding an IPv4-mapped address, or an `AF_INET` one that does
//! not, is `EINVAL`. [`Locator`] is the safe twin.
//!
//! ## Option semantics (choices where the RFC is open)
//! Order of checks: unknown option or wrong direction → `ENOPROTOOPT`;
//! buffer length → `EINVAL`; value → `EINVAL`; unconnected socket →
//! `EOPNOTSUPP`; no context → `ENOENT`; then the daemon's answer.
//! Non-sockets fail with the kernel's `EBADF`/`ENOTSOCK`.
//! * **Lengths**: `setsockopt` needs the exact size (`int` = 4,
//!   `shim_locator` = 32, `shim_pathexplore` = 12; loclists a multiple of
//!   32); `getsockopt` needs at least the size, writes the size and returns
//!   the length used.
//! * **`SHIM_ASSOCIATED`** (get only; set → `ENOPROTOOPT`): 1 if the daemon
//!   has a context for the flow (or preservetcpd tracks the connection), 0
//!   if not (peer not a HIT/LSI and not tracked, protocol other than
//!   TCP/UDP, daemon not running), **2 for an unconnected socket** (digest
//!   §9 #1: the RFC's EOPNOTSUPP and "2 only for unconnected" conflict; 2
//!   wins), except 0 for an unconnected `DONTSHIM` socket. A connected
//!   socket always gets the daemons' answer, `DONTSHIM` or not.
//! * **`SHIM_DONTSHIM`**: kept in this process per socket; set only while
//!   unconnected (`EOPNOTSUPP` after), values 0/1. What it does depends on
//!   the peer:
//!   - an IP peer: the shims leave the socket alone. HIP maps only HIT/LSI
//!     traffic, so the daemon is never asked; on an IPv6 TCP socket the
//!     library also sets preservetcpd's opt-out mark
//!     ([`PRESERVETCP_OPT_OUT_MARK`] in the [`PRESERVETCP_MARK_MASK`] bits
//!     of `SO_MARK`, replacing an opt-in, other bits kept; setting 0 clears
//!     it), which preservetcpd honours over its `--ports` list: no offer on
//!     the SYN, no answer from a listener, never tracked or moved. Setting
//!     the mark needs `CAP_NET_ADMIN`: without it the option fails with
//!     `EPERM` while a preservetcpd answers on the control socket, and is
//!     only recorded when none does. Sockets accepted from a `DONTSHIM`
//!     listener inherit the mark and read `DONTSHIM` 1.
//!   - a HIT or LSI peer: accepted but without effect. Such a socket only
//!     exists through the HIP shim (the identifier is not routable), so the
//!     flow is still carried by HIP, its `SOL_SHIM` options work as on any
//!     other HIP socket and `SHIM_ASSOCIATED` reports the daemon's answer.
//!
//!   `SHIM_PRESERVETCP` 1 on a `DONTSHIM` socket is `EINVAL`.
//! * **`SHIM_DEFERRED_CONTEXT_SETUP`** (get only): always 0 (HIP builds the
//!   context before data flows); `EOPNOTSUPP` on unconnected sockets as the
//!   RFC's table says.
//! * **`SHIM_LOC_*_PREF`**: set sends prio/weight (`lc_ifidx`, `lc_flags`,
//!   `lc_proto`, `lc_port` ignored: the daemon picks the underlay per peer).
//!   Get returns the highest-preference locator: allowed before
//!   disallowed, usable before unreachable/deprecated, lowest `lc_prio`,
//!   highest `lc_weight`, then the locator in use; all-zero when the list
//!   is empty.
//! * **`SHIM_LOC_*_SEND`** (sticky): an all-zero `shim_locator` cancels;
//!   get returns all-zero when unset.
//! * **`SHIM_LOC_*_RECV`**: `int` 0/1 only (else `EINVAL`). On datagram
//!   sockets, turning one on also enables `IPV6_RECVDSTOPTS` (HIT flows) or
//!   `IP_RECVOPTS` (LSI flows); the library remembers whether the
//!   application had enabled them itself (through [`setsockopt`] or before)
//!   and hides the tag carrying messages unless it did.
//! * **`SHIM_LOCLIST_*`**: get returns the locators allowed by the
//!   context's restriction (all when unrestricted), so a set is read back;
//!   a buffer smaller than 32 bytes is `EINVAL`, one too small for the list
//!   `ETOOMANYLOCATORS` (RFC 6316 §6.10). Set: more than 32 entries →
//!   `ETOOMANYLOCATORS`; length not a multiple of 32 → `EINVAL`; an empty
//!   list (length 0) is passed on and means "no restriction".
//! * **`SHIM_HOT_STANDBY`**: any non-zero value is on; get 0/1.
//! * **`SHIM_APP_TIMEOUT`**: seconds, negative → `EINVAL`; get returns the
//!   value as set (0 = default).
//! * **`SHIM_APP_TIMEOUT_MS`** (extension): the RFC's seconds cannot express
//!   sub-second failure detection. Set milliseconds (0 = default,
//!   negative → `EINVAL`); get returns the Send Timeout **in effect** (ms).
//! * **`SHIM_PATHEXPLORE`**: `pe_reserved` ≠ 0 → `EINVAL`; zero fields mean
//!   "default" (all-zero = the defaults); get returns the parameters in
//!   effect.
//! * **Daemon errors → errno**: `NoContext`/`UnknownHit` → `ENOENT`,
//!   `InvalidLocator` → `EINVALIDLOCATOR`, `UnverifiedLocator` →
//!   `EUNVERIFIEDLOCATOR`, `UnreachableLocator` → `EUNREACHABLELOCATOR`,
//!   `TooManyLocators` → `ETOOMANYLOCATORS`, `InvalidArgument` → `EINVAL`,
//!   `NotSupported` → `EOPNOTSUPP`, `PermissionDenied` → `EPERM`,
//!   `Unavailable` → `EAGAIN`, `Timeout` → `ETIMEDOUT`, `Failed` → `EIO`,
//!   `Version`/`BadRequest` and unexpected answers → `EPROTO`; daemon not
//!   running → `ENOENT` (no shim, no context).
//!
//! ## Control messages
//! * **`SHIM_LOC_*_SEND`** (sendmsg, datagram sockets only; on stream
//!   sockets `EOPNOTSUPP`: use the sticky options). Payload: one
//!   `sockaddr_in`/`sockaddr_in6` (port ignored; up to 8 padding bytes
//!   allowed; unspecified address → `EINVAL`; a type twice → `EINVAL`).
//!   The library registers the pair once per (socket, flow, pair, traffic
//!   class) with the daemon (`ShimSendToken`), removes the `SOL_SHIM`
//!   message and adds an `IPV6_TCLASS` (HIT flows) / `IP_TOS` (LSI flows)
//!   message with the marker; the socket's own `IPV6_TCLASS`/`IP_TOS` is
//!   passed as the base the daemon restores. An application
//!   `IPV6_TCLASS`/`IP_TOS` message in the same call is `EINVAL` (the
//!   marker needs that byte). On an unbound socket the library binds it
//!   to an ephemeral port first (what the kernel would do on this send).
//!   For unconnected sockets `msg_name` (an EID) names the flow.
//! * **`SHIM_FEEDBACK`** (sendmsg, any connected or addressed socket):
//!   `struct shim_feedback`, direction > 1 or indicator > 3 → `EINVAL`.
//!   `SHIM_FEEDBACK_POSITIVE`/`_NEGATIVE` (draft): payload empty
//!   (outbound) or a `shim_feedback` whose direction is used. A `sendmsg`
//!   with feedback only and no data sends nothing and returns 0.
//! * `SEND`/`FEEDBACK` without a context → `ENOENT`; other `SOL_SHIM` types
//!   on sendmsg → `EINVAL`.
//! * **`SHIM_LOC_*_RECV`** (recvmsg, when enabled): data = `sockaddr_in` /
//!   `sockaddr_in6` of the locator, port 0, from the daemon's tag in the
//!   datagram's destination options / IPv4 options. Without a tag (no
//!   context, or a packet the daemon did not tag) the data is 28 zero bytes
//!   (RFC: zero-filled, not an error). Stream sockets report the latest
//!   pair the daemon saw (`ShimGet` → `last_rx`; one daemon round trip per
//!   `recvmsg`). `MSG_CTRUNC` is set when the caller's control buffer
//!   cannot hold a message (messages are dropped whole, not cut).
//!
//! ## Known limits
//! * Per-socket state in this process is keyed by the socket's inode, so
//!   a reused descriptor number starts clean; state of closed sockets is
//!   pruned lazily. After a daemon reconnection the daemon has forgotten
//!   sticky SEND/RECV state (it restarted); send markers are
//!   re-registered automatically.
//! * Calls hold one process-wide lock while they talk to the daemon.
#![deny(unsafe_code)]

pub mod addr;
pub mod cmsg;
pub mod consts;
mod ext;
mod link;
pub mod ptcp;
mod shim;
mod sys;
pub mod types;

use std::ffi::c_int;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::BorrowedFd;

pub use consts::*;
#[cfg(feature = "tokio")]
pub use ext::ShimTokioUdpExt;
pub use ext::{Association, ShimSocketExt, ShimUdpExt, recv_locators, send_locators_cmsg};
pub use shim::{RecvMeta, Shim, TOKEN_RECHECK};
pub use types::*;

/// `getsockopt` on any socket through the process-wide [`Shim`]; returns
/// the number of bytes written to `optval`.
pub fn getsockopt(
    fd: BorrowedFd<'_>,
    level: c_int,
    optname: c_int,
    optval: &mut [u8],
) -> io::Result<usize> {
    Shim::global().getsockopt(fd, level, optname, optval)
}

/// `setsockopt` on any socket through the process-wide [`Shim`].
pub fn setsockopt(
    fd: BorrowedFd<'_>,
    level: c_int,
    optname: c_int,
    optval: &[u8],
) -> io::Result<()> {
    Shim::global().setsockopt(fd, level, optname, optval)
}

/// `sendmsg` with `SOL_SHIM` control messages (see the crate docs).
/// `name` is a raw `sockaddr`, `control` a raw control buffer.
pub fn sendmsg(
    fd: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    name: Option<&[u8]>,
    control: &[u8],
    flags: c_int,
) -> io::Result<usize> {
    Shim::global().sendmsg(fd, iov, name, control, flags)
}

/// `recvmsg` adding `SOL_SHIM` control messages (see the crate docs).
pub fn recvmsg(
    fd: BorrowedFd<'_>,
    iov: &mut [IoSliceMut<'_>],
    name: Option<&mut [u8]>,
    control: &mut [u8],
    flags: c_int,
) -> io::Result<RecvMeta> {
    Shim::global().recvmsg(fd, iov, name, control, flags)
}

/// Forgets a socket's shim state (see [`Shim::release`]).
pub fn release(fd: BorrowedFd<'_>) -> io::Result<()> {
    Shim::global().release(fd)
}
