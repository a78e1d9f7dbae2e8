//! Option buffer validation, passthrough and non-shim sockets (no daemon).

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use common::errno;
use shimapi::cmsg::CmsgBuf;
use shimapi::*;

fn shim() -> Shim {
    Shim::new("/nonexistent/hipd.sock")
}

fn int(v: i32) -> [u8; 4] {
    v.to_ne_bytes()
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn other_levels_pass_through_to_the_kernel() {
    let u = UdpSocket::bind("[::1]:0").unwrap();
    let mut b = [0u8; 8];
    let n = getsockopt(u.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE, &mut b).unwrap();
    assert_eq!(n, 4);
    assert_eq!(
        i32::from_ne_bytes(b[..4].try_into().unwrap()),
        libc::SOCK_DGRAM
    );

    let s = socket_v6_udp();
    let fd = s.as_fd();
    for v in [1, 0, 1] {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &int(v)).unwrap();
        let mut b = [0u8; 4];
        getsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &mut b).unwrap();
        assert_eq!(i32::from_ne_bytes(b), v);
    }
    // Kernel errors come back unchanged.
    assert_eq!(
        errno(setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &[1])),
        libc::EINVAL
    );
    assert_eq!(
        errno(getsockopt(fd, libc::SOL_SOCKET, 9999, &mut [0u8; 4])),
        libc::ENOPROTOOPT
    );
}

/// An unbound IPv6 UDP socket (V6ONLY can only change before bind).
fn socket_v6_udp() -> std::os::fd::OwnedFd {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet6,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap()
}

#[test]
fn non_sockets_get_the_kernels_errors() {
    let f = std::fs::File::open("/dev/null").unwrap();
    let s = shim();
    assert_eq!(
        errno(s.getsockopt(f.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut [0; 4])),
        libc::ENOTSOCK
    );
    assert_eq!(
        errno(s.setsockopt(f.as_fd(), SOL_SHIM, SHIM_HOT_STANDBY, &int(1))),
        libc::ENOTSOCK
    );
    // SAFETY: a descriptor number far above anything open; the kernel
    // answers EBADF and nothing is closed or read through it.
    let bad = unsafe { BorrowedFd::borrow_raw(987_654) };
    assert_eq!(
        errno(s.getsockopt(bad, SOL_SHIM, SHIM_ASSOCIATED, &mut [0; 4])),
        libc::EBADF
    );
    let c = CmsgBuf::new();
    assert_eq!(
        errno(s.sendmsg(bad, &[], None, c.as_bytes(), 0)),
        libc::EBADF
    );
}

#[test]
fn plain_tcp_has_no_context() {
    let (c, _s) = tcp_pair();
    let s = shim();
    let fd = c.as_fd();
    let mut b = [0u8; 4];
    assert_eq!(
        s.getsockopt(fd, SOL_SHIM, SHIM_ASSOCIATED, &mut b).unwrap(),
        4
    );
    assert_eq!(i32::from_ne_bytes(b), 0);
    for opt in [
        SHIM_LOC_PEER_PREF,
        SHIM_LOC_LOCAL_PREF,
        SHIM_LOC_PEER_SEND,
        SHIM_LOCLIST_PEER,
    ] {
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, opt, &mut [0u8; 32])),
            libc::ENOENT
        );
    }
    for opt in [SHIM_HOT_STANDBY, SHIM_APP_TIMEOUT, SHIM_LOC_PEER_RECV] {
        assert_eq!(errno(s.getsockopt(fd, SOL_SHIM, opt, &mut b)), libc::ENOENT);
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &int(1))),
            libc::ENOENT
        );
    }
    // Read-only capability: HIP never defers context setup.
    s.getsockopt(fd, SOL_SHIM, SHIM_DEFERRED_CONTEXT_SETUP, &mut b)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(b), 0);
    // DONTSHIM cannot change once connected, but can be read.
    assert_eq!(
        errno(s.setsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &int(1))),
        libc::EOPNOTSUPP
    );
    s.getsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &mut b).unwrap();
    assert_eq!(i32::from_ne_bytes(b), 0);
    // Feedback without a context.
    let mut fb = CmsgBuf::new();
    fb.push(SOL_SHIM, SHIM_FEEDBACK, &[0, 1, 0, 0]);
    assert_eq!(
        errno(s.sendmsg(fd, &[IoSlice::new(b"x")], None, fb.as_bytes(), 0)),
        libc::ENOENT
    );
    // The typed helpers (global instance) agree.
    assert_eq!(c.shim_associated().unwrap(), Association::No);
    assert_eq!(errno(c.peer_pref()), libc::ENOENT);
    assert_eq!(errno(c.peer_locators()), libc::ENOENT);
}

#[test]
fn unconnected_sockets() {
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = shim();
    let fd = u.as_fd();
    let mut b = [0u8; 4];
    s.getsockopt(fd, SOL_SHIM, SHIM_ASSOCIATED, &mut b).unwrap();
    assert_eq!(i32::from_ne_bytes(b), 2);
    assert_eq!(
        errno(s.getsockopt(fd, SOL_SHIM, SHIM_LOC_PEER_PREF, &mut [0u8; 32])),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(s.setsockopt(fd, SOL_SHIM, SHIM_HOT_STANDBY, &int(1))),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(s.getsockopt(fd, SOL_SHIM, SHIM_DEFERRED_CONTEXT_SETUP, &mut b)),
        libc::EOPNOTSUPP
    );
    // DONTSHIM before connect: kept per socket.
    s.setsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &int(1)).unwrap();
    s.getsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &mut b).unwrap();
    assert_eq!(i32::from_ne_bytes(b), 1);
    s.getsockopt(fd, SOL_SHIM, SHIM_ASSOCIATED, &mut b).unwrap();
    assert_eq!(i32::from_ne_bytes(b), 0);
    // Another instance (another process's view) does not see it.
    shim()
        .getsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &mut b)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(b), 0);
    // A listening TCP socket is unconnected too.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    s.getsockopt(l.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut b)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(b), 2);
}

#[test]
fn unknown_and_wrong_direction_options() {
    let (c, _s) = tcp_pair();
    let s = shim();
    let fd = c.as_fd();
    for opt in [0, 99, SHIM_FEEDBACK, SHIM_FEEDBACK_POSITIVE, 0x1234] {
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, opt, &mut [0u8; 64])),
            libc::ENOPROTOOPT
        );
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &[0u8; 4])),
            libc::ENOPROTOOPT
        );
    }
    for opt in [SHIM_ASSOCIATED, SHIM_DEFERRED_CONTEXT_SETUP] {
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &int(1))),
            libc::ENOPROTOOPT
        );
    }
}

fn loc_bytes(family: u8, addr: std::net::Ipv6Addr) -> [u8; 32] {
    shim_locator {
        lc_family: family,
        lc_addr: addr.octets(),
        ..Default::default()
    }
    .to_bytes()
}

#[test]
fn buffer_lengths_and_values_are_checked_first() {
    // Unconnected: a valid buffer would give EOPNOTSUPP, so EINVAL proves
    // validation happens before the state checks.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = shim();
    let fd = u.as_fd();
    let sizes = [
        (SHIM_DONTSHIM, 4),
        (SHIM_HOT_STANDBY, 4),
        (SHIM_LOC_LOCAL_PREF, 32),
        (SHIM_LOC_PEER_PREF, 32),
        (SHIM_LOC_LOCAL_RECV, 4),
        (SHIM_LOC_PEER_RECV, 4),
        (SHIM_LOC_LOCAL_SEND, 32),
        (SHIM_LOC_PEER_SEND, 32),
        (SHIM_APP_TIMEOUT, 4),
        (SHIM_APP_TIMEOUT_MS, 4),
        (SHIM_PATHEXPLORE, 12),
    ];
    for (opt, size) in sizes {
        for len in [0, 1, size - 1, size + 1, size * 2] {
            assert_eq!(
                errno(s.setsockopt(fd, SOL_SHIM, opt, &vec![0u8; len])),
                libc::EINVAL,
                "set opt {opt} len {len}"
            );
        }
        for len in [0, 1, size - 1] {
            assert_eq!(
                errno(s.getsockopt(fd, SOL_SHIM, opt, &mut vec![0u8; len])),
                libc::EINVAL,
                "get opt {opt} len {len}"
            );
        }
    }
    for opt in [SHIM_ASSOCIATED, SHIM_DEFERRED_CONTEXT_SETUP] {
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, opt, &mut [0u8; 3])),
            libc::EINVAL
        );
    }
    // Oversized get buffers are fine: the size used is returned.
    let mut big = [0xAAu8; 16];
    assert_eq!(
        s.getsockopt(fd, SOL_SHIM, SHIM_ASSOCIATED, &mut big)
            .unwrap(),
        4
    );
    assert_eq!(big[4], 0xAA);
    // Loclists.
    for opt in [SHIM_LOCLIST_LOCAL, SHIM_LOCLIST_PEER] {
        for len in [1, 31, 33, 40, 63] {
            assert_eq!(
                errno(s.setsockopt(fd, SOL_SHIM, opt, &vec![0u8; len])),
                libc::EINVAL
            );
        }
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &vec![0u8; 33 * 32])),
            ETOOMANYLOCATORS
        );
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, opt, &mut [0u8; 31])),
            libc::EINVAL
        );
        // 32 valid entries pass validation (then: unconnected).
        let one = loc_bytes(libc::AF_INET6 as u8, "2001:db8::1".parse().unwrap());
        let list: Vec<u8> = (0..32).flat_map(|_| one).collect();
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &list)),
            libc::EOPNOTSUPP
        );
        // One bad entry in the list.
        let mut list = list;
        list[5 * 32] = 99;
        assert_eq!(errno(s.setsockopt(fd, SOL_SHIM, opt, &list)), libc::EINVAL);
    }
    // Values.
    for (opt, v) in [
        (SHIM_LOC_LOCAL_RECV, 2),
        (SHIM_LOC_PEER_RECV, -1),
        (SHIM_DONTSHIM, 7),
        (SHIM_APP_TIMEOUT, -1),
        (SHIM_APP_TIMEOUT_MS, i32::MIN),
    ] {
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &int(v))),
            libc::EINVAL,
            "opt {opt} value {v}"
        );
    }
    let pe = shim_pathexplore {
        pe_reserved: 1,
        ..Default::default()
    };
    assert_eq!(
        errno(s.setsockopt(fd, SOL_SHIM, SHIM_PATHEXPLORE, &pe.to_bytes())),
        libc::EINVAL
    );
    let v4mapped: std::net::Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
    let v6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    for opt in [SHIM_LOC_PEER_PREF, SHIM_LOC_LOCAL_PREF, SHIM_LOC_PEER_SEND] {
        for bad in [
            loc_bytes(0, v6),
            loc_bytes(99, v6),
            loc_bytes(libc::AF_INET as u8, v6),
            loc_bytes(libc::AF_INET6 as u8, v4mapped),
        ] {
            assert_eq!(errno(s.setsockopt(fd, SOL_SHIM, opt, &bad)), libc::EINVAL);
        }
        // Valid values reach the state check.
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, opt, &loc_bytes(libc::AF_INET as u8, v4mapped))),
            libc::EOPNOTSUPP
        );
    }
    // All-zero cancels a sticky SEND (valid), but is no preference.
    assert_eq!(
        errno(s.setsockopt(fd, SOL_SHIM, SHIM_LOC_LOCAL_SEND, &[0u8; 32])),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        errno(s.setsockopt(fd, SOL_SHIM, SHIM_LOC_LOCAL_PREF, &[0u8; 32])),
        libc::EINVAL
    );
}

#[test]
fn sendmsg_control_validation() {
    let s = shim();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    let fd = a.as_fd();
    let data = [IoSlice::new(b"hello")];
    let sa = addr::locator_sockaddr("192.0.2.1".parse().unwrap());
    let mut c = CmsgBuf::new();

    // Bad payloads and types → EINVAL.
    c.push(SOL_SHIM, SHIM_LOC_PEER_SEND, &sa[..10]);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::EINVAL
    );
    let mut c = CmsgBuf::new();
    c.push(SOL_SHIM, SHIM_LOC_PEER_SEND, &sa)
        .push(SOL_SHIM, SHIM_LOC_PEER_SEND, &sa);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::EINVAL
    );
    let mut c = CmsgBuf::new();
    c.push(SOL_SHIM, SHIM_LOC_LOCAL_RECV, &sa);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::EINVAL
    );
    for fb in [[0u8, 4, 0, 0], [2, 1, 0, 0]] {
        let mut c = CmsgBuf::new();
        c.push(SOL_SHIM, SHIM_FEEDBACK, &fb);
        assert_eq!(
            errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
            libc::EINVAL
        );
    }
    let mut c = CmsgBuf::new();
    c.push(SOL_SHIM, SHIM_FEEDBACK, &[0, 1, 0]);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::EINVAL
    );
    // The application's own TOS conflicts with the marker.
    let mut c = CmsgBuf::new();
    c.push(SOL_SHIM, SHIM_LOC_PEER_SEND, &sa)
        .push_int(libc::IPPROTO_IP, libc::IP_TOS, 0x10);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::EINVAL
    );
    // A valid SEND on a socket without context.
    let mut c = CmsgBuf::new();
    c.push(SOL_SHIM, SHIM_LOC_PEER_SEND, &sa);
    assert_eq!(
        errno(s.sendmsg(fd, &data, None, c.as_bytes(), 0)),
        libc::ENOENT
    );
    // Unconnected without a destination.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        errno(s.sendmsg(u.as_fd(), &data, None, c.as_bytes(), 0)),
        libc::EDESTADDRREQ
    );
    // Stream sockets: use the sticky options.
    let (t, _t2) = tcp_pair();
    assert_eq!(
        errno(s.sendmsg(t.as_fd(), &data, None, c.as_bytes(), 0)),
        libc::EOPNOTSUPP
    );
    // Nothing was sent by any failing call.
    b.set_nonblocking(true).unwrap();
    assert!(b.recv(&mut [0u8; 16]).is_err());

    // Without SOL_SHIM messages: a plain sendmsg (with the kernel's own
    // control messages) and a plain recvmsg.
    let mut c = CmsgBuf::new();
    c.push_int(libc::IPPROTO_IP, libc::IP_TOS, 0x28);
    b.set_nonblocking(false).unwrap();
    shimapi::setsockopt(b.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, &int(1)).unwrap();
    assert_eq!(s.sendmsg(fd, &data, None, c.as_bytes(), 0).unwrap(), 5);
    let mut buf = [0u8; 16];
    let mut name = [0u8; 28];
    let mut ctl = [0u8; 64];
    let r = s
        .recvmsg(
            b.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            Some(&mut name),
            &mut ctl,
            0,
        )
        .unwrap();
    assert_eq!(&buf[..r.bytes], b"hello");
    assert_eq!(
        addr::parse_sockaddr(&name[..r.name_len]),
        Some(a.local_addr().unwrap())
    );
    let msgs = cmsg::parse(&ctl[..r.control_len]).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        (msgs[0].level, msgs[0].ty),
        (libc::IPPROTO_IP, libc::IP_TOS)
    );
    assert_eq!(msgs[0].data[0], 0x28);
}
