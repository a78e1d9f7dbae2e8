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
/// **Project extension**: `int`. Set to 1 on a TCP socket *before*
/// `connect` to opt it in to preservetcp (the connection offers and learns
/// alternative addresses in its handshake and may move); 0 opts out. It
/// sets the socket mark (`SO_MARK`) bits that `preservetcpd` matches
/// ([`PRESERVETCP_MARK`] under [`PRESERVETCP_MARK_MASK`], other bits kept),
/// so it needs `CAP_NET_ADMIN` (`EPERM` otherwise); unprivileged programs
/// are covered by the daemon's port policy. Get: whether the mark is set.
pub const SHIM_PRESERVETCP: c_int = 0x101;
/// The `SO_MARK` value that opts a socket in to preservetcp
/// (`preservetcp::control::OPT_IN_MARK`).
pub const PRESERVETCP_MARK: u32 = 0x5054_0000;
/// The mark bits `preservetcpd` compares (`preservetcp::control::OPT_IN_MASK`).
pub const PRESERVETCP_MARK_MASK: u32 = 0xffff_0000;
/// The `SO_MARK` value (under [`PRESERVETCP_MARK_MASK`]) that opts a
/// socket *out* of preservetcp (`preservetcp::control::OPT_OUT_MARK`):
/// `preservetcpd` leaves its handshake plain even on a port of its
/// `--ports` list, in BPF and `--no-bpf` mode, and a listener carrying it
/// answers no offer. `SHIM_DONTSHIM` sets it on IPv6 TCP sockets.
pub const PRESERVETCP_OPT_OUT_MARK: u32 = 0x5055_0000;

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
pub const ALL_OPTIONS: [c_int; 16] = [
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
    SHIM_PRESERVETCP,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every level Linux (libc) defines: SOL_* and the IPPROTO_* numbers
    /// that double as levels.
    const LINUX_LEVELS: &[c_int] = &[
        libc::SOL_SOCKET,
        libc::SOL_IP,
        libc::SOL_TCP,
        libc::SOL_UDP,
        libc::SOL_IPV6,
        libc::SOL_ICMPV6,
        libc::SOL_RAW,
        libc::SOL_DECNET,
        libc::SOL_X25,
        libc::SOL_PACKET,
        libc::SOL_ATM,
        libc::SOL_AAL,
        libc::SOL_IRDA,
        libc::SOL_NETBEUI,
        libc::SOL_LLC,
        libc::SOL_DCCP,
        libc::SOL_NETLINK,
        libc::SOL_TIPC,
        libc::SOL_RXRPC,
        libc::SOL_PPPOL2TP,
        libc::SOL_BLUETOOTH,
        libc::SOL_PNPIPE,
        libc::SOL_RDS,
        libc::SOL_IUCV,
        libc::SOL_CAIF,
        libc::SOL_ALG,
        libc::SOL_NFC,
        libc::SOL_TLS,
        libc::SOL_XDP,
        libc::IPPROTO_MPTCP,
        libc::IPPROTO_SCTP,
        libc::IPPROTO_UDPLITE,
        libc::IPPROTO_RAW,
    ];

    /// Every errno libc knows on Linux.
    const LINUX_ERRNOS: &[c_int] = &[
        libc::EPERM,
        libc::ENOENT,
        libc::EINVAL,
        libc::EOPNOTSUPP,
        libc::ENOPROTOOPT,
        libc::EPROTO,
        libc::ETIMEDOUT,
        libc::EHWPOISON,
        libc::ERFKILL,
        libc::EKEYREJECTED,
        libc::ENOTRECOVERABLE,
        libc::EOWNERDEAD,
        libc::ECANCELED,
        libc::EDQUOT,
    ];

    const _: () = assert!(SOL_SHIM > 4096);

    #[test]
    fn sol_shim_is_no_linux_level() {
        for l in LINUX_LEVELS {
            assert_ne!(SOL_SHIM, *l);
        }
        // Linux levels are small numbers (the newest, SOL_VSOCK, is 287)
        // and IP protocol numbers fit a byte (plus MPTCP's 262).
        assert!(LINUX_LEVELS.iter().all(|l| *l < 1024));
    }

    #[test]
    fn errnos_are_outside_the_kernel_range_and_distinct() {
        // The kernel's MAX_ERRNO: a system call never returns more.
        const MAX_ERRNO: c_int = 4095;
        let max_libc = *LINUX_ERRNOS.iter().max().unwrap();
        assert_eq!(max_libc, libc::EHWPOISON);
        for e in ALL_ERRNOS {
            assert!(e > MAX_ERRNO, "{e}");
            assert!(!LINUX_ERRNOS.contains(&e));
            assert!(errno_name(e).is_some());
        }
        assert_eq!(ALL_ERRNOS.iter().collect::<HashSet<_>>().len(), 4);
        assert_eq!(errno_name(libc::EINVAL), None);
        // std shows them as unknown OS errors, not as another error.
        let msg = std::io::Error::from_raw_os_error(EINVALIDLOCATOR).to_string();
        assert!(msg.contains(&EINVALIDLOCATOR.to_string()), "{msg}");
    }

    #[test]
    fn option_and_cmsg_numbers_are_unique() {
        assert_eq!(
            ALL_OPTIONS.iter().collect::<HashSet<_>>().len(),
            ALL_OPTIONS.len()
        );
        assert_eq!(
            ALL_CMSG_TYPES.iter().collect::<HashSet<_>>().len(),
            ALL_CMSG_TYPES.len()
        );
        assert!(ALL_OPTIONS.iter().all(|o| *o > 0));
        // The RFC's cmsg types reuse the option names.
        for t in [
            SHIM_LOC_LOCAL_RECV,
            SHIM_LOC_PEER_RECV,
            SHIM_LOC_LOCAL_SEND,
            SHIM_LOC_PEER_SEND,
        ] {
            assert!(ALL_OPTIONS.contains(&t));
        }
        // The feedback types are not options.
        for t in [
            SHIM_FEEDBACK,
            SHIM_FEEDBACK_POSITIVE,
            SHIM_FEEDBACK_NEGATIVE,
        ] {
            assert!(!ALL_OPTIONS.contains(&t));
        }
        assert_eq!(SHIM_CONTEXT_DEFERRED_SETUP, SHIM_DEFERRED_CONTEXT_SETUP);
        assert_eq!(SHIM_DEFERED_CONTEXT_SETUP, SHIM_DEFERRED_CONTEXT_SETUP);
        assert_eq!(SHIM_MAX_LOCATORS, hipd_backend::control::SHIM_MAX_LOCATORS);
    }
}
