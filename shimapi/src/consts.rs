//! Numeric values of the RFC 6316 names (see the table in the crate docs).
//!
//! RFC 6316 assigns no numbers (§12). The values below are this project's
//! choice and are **stable**: they are part of the C ABI exported by the
//! `ffi` crate and must never change.

use std::ffi::c_int;

/// The socket option level of the shim (RFC 6316 §5). `0x5348` (`"SH"`):
/// far above every Linux `SOL_*` level (≤ 300) and every IP protocol
/// number (≤ 255, plus 262 for MPTCP), so the kernel never sees it.
pub const SOL_SHIM: c_int = 0x5348;

/// `int`, get only: 1 = the socket has a shim context, 0 = not, 2 =
/// unknown (unconnected socket).
pub const SHIM_ASSOCIATED: c_int = 1;
/// `int` 0/1, get and set (set only before `connect`).
pub const SHIM_DONTSHIM: c_int = 2;
/// `int`, get and set: keep a verified standby locator pair.
pub const SHIM_HOT_STANDBY: c_int = 3;
/// `struct shim_locator`: set a preference / get the highest-preference
/// local locator.
pub const SHIM_LOC_LOCAL_PREF: c_int = 4;
/// `struct shim_locator`: set a preference / get the highest-preference
/// peer locator.
pub const SHIM_LOC_PEER_PREF: c_int = 5;
/// `int` 0/1 option; also the `recvmsg` cmsg type carrying the local
/// locator of a received packet.
pub const SHIM_LOC_LOCAL_RECV: c_int = 6;
/// `int` 0/1 option; also the `recvmsg` cmsg type carrying the peer
/// locator of a received packet.
pub const SHIM_LOC_PEER_RECV: c_int = 7;
/// `struct shim_locator` sticky option; also the `sendmsg` cmsg type
/// (payload `sockaddr_in`/`sockaddr_in6`) for one datagram.
pub const SHIM_LOC_LOCAL_SEND: c_int = 8;
/// `struct shim_locator` sticky option; also the `sendmsg` cmsg type
/// (payload `sockaddr_in`/`sockaddr_in6`) for one datagram.
pub const SHIM_LOC_PEER_SEND: c_int = 9;
/// Array of `struct shim_locator`: Ls(local).
pub const SHIM_LOCLIST_LOCAL: c_int = 10;
/// Array of `struct shim_locator`: Ls(peer).
pub const SHIM_LOCLIST_PEER: c_int = 11;
/// `int`, seconds: REAP Send Timeout (0 = default).
pub const SHIM_APP_TIMEOUT: c_int = 12;
/// `struct shim_pathexplore`.
pub const SHIM_PATHEXPLORE: c_int = 13;
/// `int`, get only: deferred context setup supported (HIP: 0).
pub const SHIM_DEFERRED_CONTEXT_SETUP: c_int = 14;
/// Alias (RFC 6316 Table 1 / §6.15 spelling).
pub const SHIM_CONTEXT_DEFERRED_SETUP: c_int = SHIM_DEFERRED_CONTEXT_SETUP;
/// Alias (draft -00 slide spelling).
pub const SHIM_DEFERED_CONTEXT_SETUP: c_int = SHIM_DEFERRED_CONTEXT_SETUP;
/// `sendmsg` cmsg type, payload `struct shim_feedback`.
pub const SHIM_FEEDBACK: c_int = 15;
/// Draft-era `sendmsg` cmsg type: positive feedback (= `SHIM_FEEDBACK`
/// with indicator 3, satisfactory). Payload empty (outbound) or a
/// `struct shim_feedback` whose `fb_direction` is used and whose
/// `fb_indicator` is ignored.
pub const SHIM_FEEDBACK_POSITIVE: c_int = 16;
/// Draft-era `sendmsg` cmsg type: negative feedback (= `SHIM_FEEDBACK`
/// with indicator 2, unsatisfactory). Payload as for
/// [`SHIM_FEEDBACK_POSITIVE`].
pub const SHIM_FEEDBACK_NEGATIVE: c_int = 17;
/// **Project extension** (not in RFC 6316): `int`, milliseconds. The
/// REAP Send Timeout with sub-second resolution; set = the requested
/// value (0 = default), get = the Send Timeout in effect.
pub const SHIM_APP_TIMEOUT_MS: c_int = 0x100;

/// The most locators in a `SHIM_LOCLIST_*` set (RFC 6316 §13).
pub const SHIM_MAX_LOCATORS: usize = 32;

/// `lc_flags`: the locator belongs to an HBA set (name chosen here; the
/// RFC only gives the value).
pub const SHIM_LOC_FLAG_HBA: u16 = 0x01;
/// `lc_flags`: the locator is a CGA (name chosen here).
pub const SHIM_LOC_FLAG_CGA: u16 = 0x02;

/// `fb_direction`: outbound.
pub const SHIM_FB_DIRECTION_OUTBOUND: u8 = 0;
/// `fb_direction`: inbound.
pub const SHIM_FB_DIRECTION_INBOUND: u8 = 1;
/// `fb_indicator`: ignore (default).
pub const SHIM_FB_IGNORE: u8 = 0;
/// `fb_indicator`: unable to connect.
pub const SHIM_FB_UNABLE_TO_CONNECT: u8 = 1;
/// `fb_indicator`: unsatisfactory.
pub const SHIM_FB_UNSATISFACTORY: u8 = 2;
/// `fb_indicator`: satisfactory.
pub const SHIM_FB_SATISFACTORY: u8 = 3;

/// errno: the locator is not valid for the context. Values above the
/// kernel's `MAX_ERRNO` (4095) can never come from a system call.
pub const EINVALIDLOCATOR: c_int = 0x5351;
/// errno: the peer locator is not verified yet.
pub const EUNVERIFIEDLOCATOR: c_int = 0x5352;
/// errno: the peer locator is unreachable.
pub const EUNREACHABLELOCATOR: c_int = 0x5353;
/// errno: more than [`SHIM_MAX_LOCATORS`] locators, or a `getsockopt`
/// buffer too small for the list.
pub const ETOOMANYLOCATORS: c_int = 0x5354;

/// Every option name accepted by `getsockopt`/`setsockopt` at
/// [`SOL_SHIM`] (the aliases are the same values).
pub const ALL_OPTIONS: [c_int; 15] = [
    SHIM_ASSOCIATED,
    SHIM_DONTSHIM,
    SHIM_HOT_STANDBY,
    SHIM_LOC_LOCAL_PREF,
    SHIM_LOC_PEER_PREF,
    SHIM_LOC_LOCAL_RECV,
    SHIM_LOC_PEER_RECV,
    SHIM_LOC_LOCAL_SEND,
    SHIM_LOC_PEER_SEND,
    SHIM_LOCLIST_LOCAL,
    SHIM_LOCLIST_PEER,
    SHIM_APP_TIMEOUT,
    SHIM_PATHEXPLORE,
    SHIM_DEFERRED_CONTEXT_SETUP,
    SHIM_APP_TIMEOUT_MS,
];

/// Every control message type at [`SOL_SHIM`].
pub const ALL_CMSG_TYPES: [c_int; 7] = [
    SHIM_LOC_LOCAL_RECV,
    SHIM_LOC_PEER_RECV,
    SHIM_LOC_LOCAL_SEND,
    SHIM_LOC_PEER_SEND,
    SHIM_FEEDBACK,
    SHIM_FEEDBACK_POSITIVE,
    SHIM_FEEDBACK_NEGATIVE,
];

/// The new errno values.
pub const ALL_ERRNOS: [c_int; 4] = [
    EINVALIDLOCATOR,
    EUNVERIFIEDLOCATOR,
    EUNREACHABLELOCATOR,
    ETOOMANYLOCATORS,
];

/// The RFC name of a shim errno value (for messages).
pub fn errno_name(e: c_int) -> Option<&'static str> {
    match e {
        EINVALIDLOCATOR => Some("EINVALIDLOCATOR"),
        EUNVERIFIEDLOCATOR => Some("EUNVERIFIEDLOCATOR"),
        EUNREACHABLELOCATOR => Some("EUNREACHABLELOCATOR"),
        ETOOMANYLOCATORS => Some("ETOOMANYLOCATORS"),
        _ => None,
    }
}
