//! The mapping of options and control messages to control requests, and
//! of daemon errors to errno, against a fake control server (a protocol
//! unit test), on HIT/LSI sockets over the loopback of a private network
//! namespace.

mod common;

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use common::*;
use hipd_backend::control::{
    ErrorCode, FlowId, LocPref, PathExplore, Reply, Request, Response, ShimSetting,
};
use hipd_backend::shimtag;
use shimapi::cmsg::{self, CmsgBuf};
use shimapi::*;

fn int(v: i32) -> [u8; 4] {
    v.to_ne_bytes()
}

fn get_int(s: &Shim, fd: std::os::fd::BorrowedFd<'_>, opt: i32) -> i32 {
    let mut b = [0u8; 4];
    assert_eq!(s.getsockopt(fd, SOL_SHIM, opt, &mut b).unwrap(), 4);
    i32::from_ne_bytes(b)
}

fn get_loc(s: &Shim, fd: std::os::fd::BorrowedFd<'_>, opt: i32) -> shim_locator {
    let mut b = [0u8; 32];
    assert_eq!(s.getsockopt(fd, SOL_SHIM, opt, &mut b).unwrap(), 32);
    shim_locator::from_bytes(&b).unwrap()
}

/// A daemon with one context for every flow; `fail` makes the next
/// ShimSet/ShimSendToken fail with that code.
fn daemon(fail: Arc<Mutex<Option<ErrorCode>>>) -> FakeDaemon {
    FakeDaemon::start(move |req| {
        if matches!(req, Request::ShimSet { .. } | Request::ShimSendToken { .. })
            && let Some(code) = fail.lock().unwrap().take()
        {
            return fail_reply(code);
        }
        match req {
            Request::ShimGet { .. } => Reply::ok(Response::ShimContext { ctx: context() }),
            Request::ShimSendToken { .. } => Reply::ok(Response::ShimToken { token: 5 }),
            _ => done(),
        }
    })
}

fn fail_reply(code: ErrorCode) -> Reply {
    fail(code)
}

fn tcp_hit_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("[2001:20::2]:0").unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    s.bind(&"[2001:20::1]:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&l.local_addr().unwrap().into()).unwrap();
    let (srv, _) = l.accept().unwrap();
    (s.into(), srv)
}

fn flow_of(s: &impl AsFdAddrs, proto: u8) -> FlowId {
    let (l, p) = s.addrs();
    FlowId {
        proto,
        local: l.ip(),
        local_port: l.port(),
        peer: p.ip(),
        peer_port: p.port(),
    }
}

trait AsFdAddrs {
    fn addrs(&self) -> (SocketAddr, SocketAddr);
}
impl AsFdAddrs for TcpStream {
    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.local_addr().unwrap(), self.peer_addr().unwrap())
    }
}
impl AsFdAddrs for UdpSocket {
    fn addrs(&self) -> (SocketAddr, SocketAddr) {
        (self.local_addr().unwrap(), self.peer_addr().unwrap())
    }
}

#[test]
fn tcp_hit_flow_options_map_to_requests() {
    in_netns(|| {
        let fail = Arc::new(Mutex::new(None));
        let d = daemon(fail.clone());
        let s = Shim::new(&d.path);
        let (c, _srv) = tcp_hit_pair();
        let fd = c.as_fd();
        let flow = flow_of(&c, 6);

        assert_eq!(get_int(&s, fd, SHIM_ASSOCIATED), 1);
        assert_eq!(d.requests(), vec![Request::ShimGet { flow }]);
        assert_eq!(get_int(&s, fd, SHIM_HOT_STANDBY), 1);
        assert_eq!(get_int(&s, fd, SHIM_APP_TIMEOUT), 15);
        assert_eq!(get_int(&s, fd, SHIM_APP_TIMEOUT_MS), 15000);
        assert_eq!(get_int(&s, fd, SHIM_LOC_LOCAL_RECV), 1);
        assert_eq!(get_int(&s, fd, SHIM_LOC_PEER_RECV), 0);
        let mut pe = [0u8; 12];
        s.getsockopt(fd, SOL_SHIM, SHIM_PATHEXPLORE, &mut pe)
            .unwrap();
        let pe = shim_pathexplore::from_bytes(&pe).unwrap();
        assert_eq!(
            (pe.pe_probenum, pe.pe_keepaliveto, pe.pe_initprobeto),
            (4, 15, 500)
        );

        // PEER_PREF get: prio 1 beats prio 5 (in use); the unreachable,
        // disallowed prio-0 locator loses.
        let best = Locator::try_from(get_loc(&s, fd, SHIM_LOC_PEER_PREF)).unwrap();
        assert_eq!(best.addr, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert_eq!((best.prio, best.weight), (1, 10));
        // LOCAL_PREF: all equal → the one in use, with its ifindex.
        let best = Locator::try_from(get_loc(&s, fd, SHIM_LOC_LOCAL_PREF)).unwrap();
        assert_eq!(best.addr, "2001:db8:1::1".parse::<IpAddr>().unwrap());
        assert_eq!(best.ifindex, 2);
        // Sticky SEND get: unset = zero; set = the locator with its info.
        assert!(get_loc(&s, fd, SHIM_LOC_LOCAL_SEND).is_zero());
        let ps = get_loc(&s, fd, SHIM_LOC_PEER_SEND);
        assert_eq!(i32::from(ps.lc_family), libc::AF_INET);
        assert_eq!(Locator::try_from(ps).unwrap().prio, 1);

        // LOCLIST_PEER: only the allowed ones, in order; too small a
        // buffer → ETOOMANYLOCATORS.
        let mut b = vec![0u8; 32 * 32];
        let n = s
            .getsockopt(fd, SOL_SHIM, SHIM_LOCLIST_PEER, &mut b)
            .unwrap();
        assert_eq!(n, 64);
        let got: Vec<IpAddr> = b[..n]
            .chunks(32)
            .map(|c| {
                Locator::try_from(shim_locator::from_bytes(c).unwrap())
                    .unwrap()
                    .addr
            })
            .collect();
        assert_eq!(
            got,
            vec![
                "2001:db8:2::2".parse::<IpAddr>().unwrap(),
                "198.51.100.2".parse().unwrap()
            ]
        );
        // lc_proto / lc_port come from the daemon.
        let raw: Vec<shim_locator> = b[..n]
            .chunks(32)
            .map(|c| shim_locator::from_bytes(c).unwrap())
            .collect();
        assert_eq!((raw[0].lc_proto, raw[0].lc_port), (0, 0));
        assert_eq!(
            (raw[1].lc_proto, raw[1].lc_port),
            (libc::IPPROTO_UDP as u8, 10500)
        );
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, SHIM_LOCLIST_PEER, &mut [0u8; 32])),
            ETOOMANYLOCATORS
        );
        assert_eq!(
            s.getsockopt(fd, SOL_SHIM, SHIM_LOCLIST_LOCAL, &mut [0u8; 64])
                .unwrap(),
            64
        );

        // Sets → ShimSet with the right setting.
        d.clear();
        let pref = Locator::new("198.51.100.2".parse().unwrap()).with_pref(3, 7);
        let mut raw = shim_locator::from(pref);
        raw.lc_ifidx = 99; // ignored on set
        raw.lc_flags = 1;
        s.setsockopt(fd, SOL_SHIM, SHIM_LOC_PEER_PREF, &raw.to_bytes())
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_HOT_STANDBY, &int(5))
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_APP_TIMEOUT, &int(10))
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_APP_TIMEOUT_MS, &int(300))
            .unwrap();
        let pe = shim_pathexplore {
            pe_probenum: 3,
            pe_keepaliveto: 2,
            pe_keepaliveint: 1,
            pe_initprobeto: 100,
            pe_reserved: 0,
        };
        s.setsockopt(fd, SOL_SHIM, SHIM_PATHEXPLORE, &pe.to_bytes())
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_PATHEXPLORE, &[0u8; 12])
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_LOC_LOCAL_SEND, &[0u8; 32])
            .unwrap();
        let v6 = Locator::new("2001:db8:2::2".parse().unwrap());
        s.setsockopt(
            fd,
            SOL_SHIM,
            SHIM_LOC_PEER_SEND,
            &shim_locator::from(v6).to_bytes(),
        )
        .unwrap();
        let list: Vec<u8> = [pref, v6]
            .iter()
            .flat_map(|l| shim_locator::from(l).to_bytes())
            .collect();
        s.setsockopt(fd, SOL_SHIM, SHIM_LOCLIST_PEER, &list)
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_LOCLIST_LOCAL, &[]).unwrap();
        let sets: Vec<ShimSetting> = d
            .requests()
            .into_iter()
            .map(|r| match r {
                Request::ShimSet { flow: f, set } => {
                    assert_eq!(f, flow);
                    set
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let lp = |a: &str, prio, weight| LocPref {
            addr: a.parse().unwrap(),
            prio,
            weight,
        };
        assert_eq!(
            sets,
            vec![
                ShimSetting::PeerPref {
                    loc: lp("198.51.100.2", 3, 7)
                },
                ShimSetting::HotStandby { on: true },
                ShimSetting::AppTimeout { secs: 10 },
                ShimSetting::AppTimeoutMs { ms: 300 },
                ShimSetting::PathExplore {
                    pe: Some(PathExplore {
                        probenum: 3,
                        keepaliveto: 2,
                        keepaliveint: 1,
                        initprobeto: 100
                    })
                },
                ShimSetting::PathExplore { pe: None },
                ShimSetting::LocalSend { addr: None },
                ShimSetting::PeerSend {
                    addr: Some("2001:db8:2::2".parse().unwrap())
                },
                ShimSetting::LoclistPeer {
                    locs: vec![lp("198.51.100.2", 3, 7), lp("2001:db8:2::2", 0, 0)]
                },
                ShimSetting::LoclistLocal { locs: vec![] },
            ]
        );

        // Feedback (with and without data; the draft alias).
        d.clear();
        let mut fb = CmsgBuf::new();
        fb.push(SOL_SHIM, SHIM_FEEDBACK, &[0, 2, 0xff, 0xff]);
        assert_eq!(s.sendmsg(fd, &[], None, fb.as_bytes(), 0).unwrap(), 0);
        let mut fb = CmsgBuf::new();
        fb.push(SOL_SHIM, SHIM_FEEDBACK_POSITIVE, &[]);
        assert_eq!(
            s.sendmsg(fd, &[IoSlice::new(b"abc")], None, fb.as_bytes(), 0)
                .unwrap(),
            3
        );
        assert_eq!(
            d.requests(),
            vec![
                Request::ShimSet {
                    flow,
                    set: ShimSetting::Feedback {
                        direction: 0,
                        indicator: 2
                    }
                },
                Request::ShimSet {
                    flow,
                    set: ShimSetting::Feedback {
                        direction: 0,
                        indicator: 3
                    }
                },
            ]
        );
        let mut got = [0u8; 8];
        let n = std::io::Read::read(&mut &_srv, &mut got).unwrap();
        assert_eq!(&got[..n], b"abc");
    });
}

#[test]
fn daemon_errors_map_to_errno() {
    in_netns(|| {
        let fail = Arc::new(Mutex::new(None));
        let d = daemon(fail.clone());
        let s = Shim::new(&d.path);
        let (c, _srv) = tcp_hit_pair();
        let fd = c.as_fd();
        let pref = shim_locator::from(Locator::new("192.0.2.7".parse().unwrap())).to_bytes();
        for (code, want) in [
            (ErrorCode::InvalidLocator, EINVALIDLOCATOR),
            (ErrorCode::UnverifiedLocator, EUNVERIFIEDLOCATOR),
            (ErrorCode::UnreachableLocator, EUNREACHABLELOCATOR),
            (ErrorCode::TooManyLocators, ETOOMANYLOCATORS),
            (ErrorCode::NoContext, libc::ENOENT),
            (ErrorCode::InvalidArgument, libc::EINVAL),
            (ErrorCode::NotSupported, libc::EOPNOTSUPP),
            (ErrorCode::PermissionDenied, libc::EPERM),
            (ErrorCode::Failed, libc::EIO),
        ] {
            *fail.lock().unwrap() = Some(code);
            let e = s
                .setsockopt(fd, SOL_SHIM, SHIM_LOC_PEER_SEND, &pref)
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(want), "{code:?}");
        }
        // Through the typed helper of a global-like path: same errno.
        *fail.lock().unwrap() = Some(ErrorCode::UnreachableLocator);
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, SHIM_LOC_PEER_PREF, &pref)),
            EUNREACHABLELOCATOR
        );
    });
}

#[test]
fn no_context_and_no_daemon() {
    in_netns(|| {
        let d = FakeDaemon::start(|req| match req {
            Request::ShimGet { .. } | Request::ShimSet { .. } => fail(ErrorCode::NoContext),
            _ => done(),
        });
        let s = Shim::new(&d.path);
        let (c, _srv) = tcp_hit_pair();
        let fd = c.as_fd();
        assert_eq!(get_int(&s, fd, SHIM_ASSOCIATED), 0);
        assert_eq!(
            errno(s.getsockopt(fd, SOL_SHIM, SHIM_LOC_PEER_PREF, &mut [0u8; 32])),
            libc::ENOENT
        );
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, SHIM_HOT_STANDBY, &int(1))),
            libc::ENOENT
        );
        // No daemon at all: no shim, no context.
        let s = Shim::new("/nonexistent/hipd.sock");
        assert_eq!(get_int(&s, fd, SHIM_ASSOCIATED), 0);
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, SHIM_HOT_STANDBY, &int(1))),
            libc::ENOENT
        );
    });
}

/// `SHIM_DONTSHIM` on a socket to a HIT is accepted but changes nothing:
/// the flow only exists through the HIP shim, so `SHIM_ASSOCIATED` is the
/// daemon's answer (1 here) and the other options reach the daemon.
#[test]
fn dontshim_hit_socket_is_still_carried_by_hip() {
    in_netns(|| {
        let d = daemon(Arc::new(Mutex::new(None)));
        let s = Shim::new(&d.path);
        let l = TcpListener::bind("[2001:20::2]:0").unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        s.setsockopt(sock.as_fd(), SOL_SHIM, SHIM_DONTSHIM, &int(1))
            .unwrap();
        assert!(d.requests().is_empty(), "setting DONTSHIM asks no daemon");
        sock.connect(&l.local_addr().unwrap().into()).unwrap();
        let fd = sock.as_fd();
        assert_eq!(get_int(&s, fd, SHIM_DONTSHIM), 1);
        assert_eq!(get_int(&s, fd, SHIM_ASSOCIATED), 1);
        assert_eq!(get_int(&s, fd, SHIM_HOT_STANDBY), 1);
        let reqs = d.requests();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert!(
            reqs.iter().all(|r| matches!(r, Request::ShimGet { .. })),
            "{reqs:?}"
        );
    });
}

/// `SHIM_DONTSHIM` on an IPv6 TCP socket sets preservetcpd's opt-out mark
/// in the mark's upper bits (replacing an opt-in, keeping the low bits);
/// 0 clears it again; `SHIM_PRESERVETCP` 1 contradicts it (`EINVAL`); a
/// UDP socket's mark is untouched.
#[test]
fn dontshim_sets_the_preservetcp_opt_out_mark() {
    in_netns(|| {
        let s = Shim::new("/nonexistent/hipd.sock");
        let mark = |fd: std::os::fd::BorrowedFd<'_>| {
            let mut b = [0u8; 4];
            s.getsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &mut b)
                .unwrap();
            u32::from_ne_bytes(b)
        };
        let sock =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        let fd = sock.as_fd();
        // Opted in, low bits 7.
        s.setsockopt(fd, libc::SOL_SOCKET, libc::SO_MARK, &int(0x5054_0007))
            .unwrap();
        s.setsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &int(1)).unwrap();
        assert_eq!(mark(fd), PRESERVETCP_OPT_OUT_MARK | 7);
        assert_eq!(get_int(&s, fd, SHIM_PRESERVETCP), 0);
        assert_eq!(
            errno(s.setsockopt(fd, SOL_SHIM, SHIM_PRESERVETCP, &int(1))),
            libc::EINVAL
        );
        s.setsockopt(fd, SOL_SHIM, SHIM_PRESERVETCP, &int(0))
            .unwrap();
        assert_eq!(mark(fd), PRESERVETCP_OPT_OUT_MARK | 7, "not an opt-in");
        s.setsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &int(0)).unwrap();
        assert_eq!(mark(fd), 7);
        assert_eq!(get_int(&s, fd, SHIM_DONTSHIM), 0);
        // Another instance sees the opt-out through the mark.
        s.setsockopt(fd, SOL_SHIM, SHIM_DONTSHIM, &int(1)).unwrap();
        assert_eq!(
            get_int(&Shim::new("/nonexistent/hipd.sock"), fd, SHIM_DONTSHIM),
            1
        );
        let u = UdpSocket::bind("[::1]:0").unwrap();
        s.setsockopt(u.as_fd(), SOL_SHIM, SHIM_DONTSHIM, &int(1))
            .unwrap();
        assert_eq!(mark(u.as_fd()), 0);
        assert_eq!(get_int(&s, u.as_fd(), SHIM_DONTSHIM), 1);
    });
}

#[test]
fn reconnects_after_the_daemon_drops_the_connection() {
    in_netns(|| {
        let d = FakeDaemon::start_with(
            |_| Reply::ok(Response::ShimContext { ctx: context() }),
            true,
        );
        let s = Shim::new(&d.path);
        let (c, _srv) = tcp_hit_pair();
        for _ in 0..3 {
            assert_eq!(get_int(&s, c.as_fd(), SHIM_ASSOCIATED), 1);
        }
        assert_eq!(d.requests().len(), 3);
        assert_eq!(*d.connections.lock().unwrap(), 3);
    });
}

fn udp_pair(local: &str, peer: &str) -> (UdpSocket, UdpSocket) {
    let b = UdpSocket::bind(peer).unwrap();
    let a = UdpSocket::bind(local).unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    (a, b)
}

fn recv_tclass(sock: &UdpSocket, v6: bool) -> (Vec<u8>, u8) {
    let mut buf = [0u8; 64];
    let mut ctl = [0u8; 128];
    let r = shimapi::recvmsg(
        sock.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        None,
        &mut ctl,
        0,
    )
    .unwrap();
    let want = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    } else {
        (libc::IPPROTO_IP, libc::IP_TOS)
    };
    let t = cmsg::parse(&ctl[..r.control_len])
        .unwrap()
        .into_iter()
        .find(|m| (m.level, m.ty) == want)
        .map(|m| m.data[0])
        .expect("traffic class cmsg");
    (buf[..r.bytes].to_vec(), t)
}

#[test]
fn per_datagram_send_marks_the_traffic_class() {
    in_netns(|| {
        let d = daemon(Arc::new(Mutex::new(None)));
        let s = Shim::new(&d.path);
        // LSI flow: IP_TOS marker, base TOS from the socket.
        let (a, b) = udp_pair("1.0.0.1:0", "1.0.0.2:0");
        shimapi::setsockopt(b.as_fd(), libc::IPPROTO_IP, libc::IP_RECVTOS, &int(1)).unwrap();
        shimapi::setsockopt(a.as_fd(), libc::IPPROTO_IP, libc::IP_TOS, &int(0x20)).unwrap();
        let pair = LocatorPair {
            local: None,
            peer: Some("192.0.2.2".parse().unwrap()),
        };
        let c = send_locators_cmsg(&pair);
        for _ in 0..2 {
            let n = s
                .sendmsg(a.as_fd(), &[IoSlice::new(b"dgram")], None, c.as_bytes(), 0)
                .unwrap();
            assert_eq!(n, 5);
            let (data, tos) = recv_tclass(&b, false);
            assert_eq!(data, b"dgram");
            assert_eq!(tos, shimtag::token_tclass(5));
        }
        // One registration for both datagrams (cached per socket/pair).
        assert_eq!(
            d.requests(),
            vec![Request::ShimSendToken {
                flow: flow_of(&a, 17),
                local: None,
                peer: Some("192.0.2.2".parse().unwrap()),
                base_tclass: 0x20,
            }]
        );

        // HIT flow on an unconnected socket: msg_name names the flow;
        // IPV6_TCLASS marker.
        d.clear();
        let rx = UdpSocket::bind("[2001:20::2]:0").unwrap();
        shimapi::setsockopt(
            rx.as_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVTCLASS,
            &int(1),
        )
        .unwrap();
        let tx = UdpSocket::bind("[2001:20::1]:0").unwrap();
        let pair = LocatorPair {
            local: Some("2001:db8:1::1".parse().unwrap()),
            peer: Some("2001:db8:2::2".parse().unwrap()),
        };
        let to = rx.local_addr().unwrap();
        let c = send_locators_cmsg(&pair);
        let name = addr::encode_sockaddr(&to);
        s.sendmsg(
            tx.as_fd(),
            &[IoSlice::new(b"six")],
            Some(&name),
            c.as_bytes(),
            0,
        )
        .unwrap();
        let (data, tc) = recv_tclass(&rx, true);
        assert_eq!(data, b"six");
        assert_eq!(tc, shimtag::token_tclass(5));
        let l = tx.local_addr().unwrap();
        assert_eq!(
            d.requests(),
            vec![Request::ShimSendToken {
                flow: FlowId {
                    proto: 17,
                    local: l.ip(),
                    local_port: l.port(),
                    peer: to.ip(),
                    peer_port: to.port(),
                },
                local: pair.local,
                peer: pair.peer,
                base_tclass: 0,
            }]
        );
        // A daemon refusal comes back as errno and nothing is sent.
        let fail = Arc::new(Mutex::new(Some(ErrorCode::UnverifiedLocator)));
        let d2 = daemon(fail);
        let s2 = Shim::new(&d2.path);
        assert_eq!(
            errno(s2.sendmsg(
                tx.as_fd(),
                &[IoSlice::new(b"no")],
                Some(&name),
                c.as_bytes(),
                0
            )),
            EUNVERIFIEDLOCATOR
        );
    });
}

/// A send marker is used without asking the daemon again for
/// `TOKEN_RECHECK`; after that the daemon checks the locators again, and
/// its refusal (a locator gone unreachable meanwhile) reaches the
/// application and drops the cached marker.
#[test]
fn send_markers_are_checked_again_after_the_recheck_interval() {
    in_netns(|| {
        let fail = Arc::new(Mutex::new(None));
        let d = daemon(fail.clone());
        let s = Shim::new(&d.path);
        let (a, b) = udp_pair("1.0.0.1:0", "1.0.0.2:0");
        let c = send_locators_cmsg(&LocatorPair {
            local: None,
            peer: Some("192.0.2.2".parse().unwrap()),
        });
        let send = || s.sendmsg(a.as_fd(), &[IoSlice::new(b"d")], None, c.as_bytes(), 0);
        let tokens = |d: &FakeDaemon| {
            d.requests()
                .iter()
                .filter(|r| matches!(r, Request::ShimSendToken { .. }))
                .count()
        };
        send().unwrap();
        send().unwrap();
        assert_eq!(tokens(&d), 1, "cached within the interval");
        std::thread::sleep(TOKEN_RECHECK + std::time::Duration::from_millis(10));
        send().unwrap();
        assert_eq!(tokens(&d), 2, "asked again after the interval");
        std::thread::sleep(TOKEN_RECHECK + std::time::Duration::from_millis(10));
        *fail.lock().unwrap() = Some(ErrorCode::UnreachableLocator);
        assert_eq!(errno(send()), EUNREACHABLELOCATOR);
        assert_eq!(tokens(&d), 3);
        // The refused marker is not used again: the next send asks.
        send().unwrap();
        assert_eq!(tokens(&d), 4);
        let mut buf = [0u8; 8];
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for _ in 0..4 {
            assert_eq!(b.recv(&mut buf).unwrap(), 1);
        }
    });
}

/// Sends a datagram carrying the daemon's receive tag, the way hipd
/// delivers it through the TUN device.
fn send_tagged(tx: &UdpSocket, v6: bool, l: IpAddr, p: IpAddr, data: &[u8]) {
    if v6 {
        let mut c = CmsgBuf::new();
        c.push(
            libc::IPPROTO_IPV6,
            libc::IPV6_DSTOPTS,
            &shimtag::dstopts_header(0, l, p),
        );
        shimapi::sendmsg(tx.as_fd(), &[IoSlice::new(data)], None, c.as_bytes(), 0).unwrap();
    } else {
        shimapi::setsockopt(
            tx.as_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            &shimtag::ipv4_options(l, p),
        )
        .unwrap();
        tx.send(data).unwrap();
        shimapi::setsockopt(tx.as_fd(), libc::IPPROTO_IP, libc::IP_OPTIONS, &[]).unwrap();
    }
}

type Msgs = Vec<(i32, i32, Vec<u8>)>;

fn recv_full(s: &Shim, rx: &UdpSocket, ctl_len: usize) -> (Vec<u8>, Msgs, i32) {
    let mut buf = [0u8; 64];
    let mut ctl = vec![0u8; ctl_len];
    let r = s
        .recvmsg(
            rx.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            None,
            &mut ctl,
            0,
        )
        .unwrap();
    let msgs = cmsg::parse(&ctl[..r.control_len])
        .unwrap()
        .into_iter()
        .map(|m| (m.level, m.ty, m.data.to_vec()))
        .collect();
    (buf[..r.bytes].to_vec(), msgs, r.flags)
}

#[test]
fn recv_tags_become_shim_cmsgs() {
    for v6 in [true, false] {
        in_netns(move || {
            let d = daemon(Arc::new(Mutex::new(None)));
            let s = Shim::new(&d.path);
            let (tx, rx) = if v6 {
                udp_pair("[2001:20::1]:0", "[2001:20::2]:0")
            } else {
                udp_pair("1.0.0.1:0", "1.0.0.2:0")
            };
            let (level, opt) = if v6 {
                (libc::IPPROTO_IPV6, libc::IPV6_RECVDSTOPTS)
            } else {
                (libc::IPPROTO_IP, libc::IP_RECVOPTS)
            };
            let kernel_opt = |rx: &UdpSocket| {
                let mut b = [0u8; 4];
                shimapi::getsockopt(rx.as_fd(), level, opt, &mut b).unwrap();
                i32::from_ne_bytes(b)
            };
            assert_eq!(kernel_opt(&rx), 0);
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_LOCAL_RECV, &int(1))
                .unwrap();
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &int(1))
                .unwrap();
            assert_eq!(kernel_opt(&rx), 1);
            let flow = flow_of(&rx, 17);
            assert_eq!(
                d.requests(),
                vec![
                    Request::ShimSet {
                        flow,
                        set: ShimSetting::LocalRecv { on: true }
                    },
                    Request::ShimSet {
                        flow,
                        set: ShimSetting::PeerRecv { on: true }
                    },
                ]
            );
            let l: IpAddr = "2001:db8:1::1".parse().unwrap();
            let p: IpAddr = "198.51.100.2".parse().unwrap();
            send_tagged(&tx, v6, l, p, b"tagged");
            let (data, msgs, flags) = recv_full(&s, &rx, 256);
            assert_eq!(data, b"tagged");
            assert_eq!(flags & libc::MSG_CTRUNC, 0);
            // The tag-carrying message is hidden; the locators appear.
            assert_eq!(
                msgs,
                vec![
                    (SOL_SHIM, SHIM_LOC_LOCAL_RECV, addr::locator_sockaddr(l)),
                    (SOL_SHIM, SHIM_LOC_PEER_RECV, addr::locator_sockaddr(p)),
                ]
            );
            let mut c = CmsgBuf::new();
            for (lv, t, d) in &msgs {
                c.push(*lv, *t, d);
            }
            assert_eq!(
                recv_locators(c.as_bytes()),
                LocatorPair {
                    local: Some(l),
                    peer: Some(p)
                }
            );

            // No tag: zero-filled locator information, not an error.
            tx.send(b"plain").unwrap();
            let (data, msgs, _) = recv_full(&s, &rx, 256);
            assert_eq!(data, b"plain");
            assert_eq!(msgs.len(), 2);
            assert!(
                msgs.iter()
                    .all(|(lv, _, d)| *lv == SOL_SHIM && d.iter().all(|b| *b == 0))
            );

            // Control buffer too small for both: MSG_CTRUNC.
            send_tagged(&tx, v6, l, p, b"small");
            let (data, msgs, flags) = recv_full(&s, &rx, cmsg::space(28));
            assert_eq!(data, b"small");
            assert_eq!(msgs.len(), 1);
            assert_ne!(flags & libc::MSG_CTRUNC, 0);

            // The application enabling the option itself keeps its cmsgs.
            s.setsockopt(rx.as_fd(), level, opt, &int(1)).unwrap();
            send_tagged(&tx, v6, l, p, b"both");
            let (_, msgs, _) = recv_full(&s, &rx, 512);
            assert_eq!(msgs.len(), 3);
            assert_eq!(msgs[0].0, level);

            // RECV off again: the option stays on (the app wants it) …
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_LOCAL_RECV, &int(0))
                .unwrap();
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &int(0))
                .unwrap();
            assert_eq!(kernel_opt(&rx), 1);
            // … and without the app's wish the library switches it off.
            s.setsockopt(rx.as_fd(), level, opt, &int(0)).unwrap();
            assert_eq!(kernel_opt(&rx), 0);
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &int(1))
                .unwrap();
            assert_eq!(kernel_opt(&rx), 1);
            s.setsockopt(rx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &int(0))
                .unwrap();
            assert_eq!(kernel_opt(&rx), 0);
        });
    }
}

#[test]
fn stream_recv_reports_the_latest_pair() {
    in_netns(|| {
        let d = daemon(Arc::new(Mutex::new(None)));
        let s = Shim::new(&d.path);
        let (c, srv) = tcp_hit_pair();
        s.setsockopt(c.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &int(1))
            .unwrap();
        std::io::Write::write_all(&mut &srv, b"stream").unwrap();
        let mut buf = [0u8; 16];
        let mut ctl = [0u8; 128];
        let r = s
            .recvmsg(
                c.as_fd(),
                &mut [IoSliceMut::new(&mut buf)],
                None,
                &mut ctl,
                0,
            )
            .unwrap();
        assert_eq!(&buf[..r.bytes], b"stream");
        let pair = recv_locators(&ctl[..r.control_len]);
        // context(): last_rx = (2001:db8:1::1, 198.51.100.2); only PEER on.
        assert_eq!(
            pair,
            LocatorPair {
                local: None,
                peer: Some("198.51.100.2".parse().unwrap())
            }
        );
        // Release forgets the state: plain recvmsg afterwards.
        s.release(c.as_fd()).unwrap();
        assert!(matches!(
            d.requests().last(),
            Some(Request::ShimRelease { .. })
        ));
        std::io::Write::write_all(&mut &srv, b"x").unwrap();
        let r = s
            .recvmsg(
                c.as_fd(),
                &mut [IoSliceMut::new(&mut buf)],
                None,
                &mut ctl,
                0,
            )
            .unwrap();
        assert_eq!(r.control_len, 0);
    });
}
