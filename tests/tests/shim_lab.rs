//! SOL_SHIM (RFC 6316) lab tests: two hosts joined by two links, hipd on
//! both, applications using the `shimapi` crate on sockets addressed to
//! HITs.

mod hipd_support;

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hipd_backend::control::{FlowId, LocState, Request, Response, ShimContextInfo};
use hipd_support::Hipd;
use netlab::{Family, Host, Lab, Link};
use shimapi::{
    LocatorPair, SHIM_ASSOCIATED, SHIM_LOC_LOCAL_RECV, SHIM_LOC_PEER_PREF, SHIM_LOC_PEER_RECV,
    SHIM_LOCLIST_LOCAL, SHIM_LOCLIST_PEER, SOL_SHIM, Shim, shim_locator,
};

struct Two {
    lab: Lab,
    a: Host,
    b: Host,
    l1: Link,
    l2: Link,
    ha: Hipd,
    hb: Hipd,
}

/// Two hosts, two links, hipd on both with default settings; a knows b's
/// link-1 IPv6 locator.
fn two_hosts(conf: &str) -> Two {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l1 = lab.link(&a, &b).unwrap();
    let l2 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let ha = Hipd::start(&lab, &a, conf, "");
    let hb = Hipd::start(&lab, &b, conf, "");
    ha.add_map(hb.hit(), l1.addr(&b, Family::V6), None);
    Two {
        lab,
        a,
        b,
        l1,
        l2,
        ha,
        hb,
    }
}

fn flow_of_tcp(s: &TcpStream) -> FlowId {
    let (l, p) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    FlowId {
        proto: 6,
        local: l.ip(),
        local_port: l.port(),
        peer: p.ip(),
        peer_port: p.port(),
    }
}

fn shim_ctx(h: &Hipd, flow: FlowId) -> ShimContextInfo {
    match h.call(Request::ShimGet { flow }) {
        Response::ShimContext { ctx } => ctx,
        other => panic!("unexpected {other:?}"),
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn locator_bytes(addr: IpAddr, prio: u16) -> [u8; 32] {
    let l = shimapi::Locator::new(addr).with_pref(prio, 0);
    shim_locator::from(&l).to_bytes()
}

fn get_loclist(shim: &Shim, s: &impl AsFd, opt: i32) -> Vec<IpAddr> {
    let mut buf = vec![0u8; 32 * 32];
    let n = shim
        .getsockopt(s.as_fd(), SOL_SHIM, opt, &mut buf)
        .expect("loclist get");
    buf[..n]
        .chunks_exact(32)
        .map(|c| {
            shimapi::Locator::try_from(shim_locator::from_bytes(c).unwrap())
                .unwrap()
                .addr
        })
        .collect()
}

fn real_addrs(h: &Host) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = h
        .addrs()
        .into_iter()
        .filter(|a| match a {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80 && !v6.is_loopback(),
            IpAddr::V4(v4) => !v4.is_loopback(),
        })
        .collect();
    v.sort();
    v
}

/// Per-link transmitted bytes of `h` on l1 and l2.
fn tx(t: &Two, h: &Host) -> (u64, u64) {
    (
        t.l1.counters(h).unwrap().tx_bytes,
        t.l2.counters(h).unwrap().tx_bytes,
    )
}

/// A TCP connection a → b over b's HIT, with b echoing nothing (sink) and
/// counting bytes.
fn tcp_pair(t: &Two, port: u16) -> (TcpStream, std::thread::JoinHandle<u64>) {
    let hit_b = t.hb.hit();
    let listener = {
        let _g = t.b.enter().unwrap();
        TcpListener::bind(SocketAddr::new(IpAddr::V6(hit_b), port)).unwrap()
    };
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k as u64,
            }
        }
    });
    let s = {
        let _g = t.a.enter().unwrap();
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V6(hit_b), port),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    (s, sink)
}

/// SHIM_LOC_PEER_PREF moves a TCP connection's traffic to link 2 and back
/// (per-link interface counters), getsockopt reports the preference, and
/// the SHIM_LOCLIST gets match the hosts' real addresses.
#[test]
fn shim_peer_pref_moves_tcp_traffic_between_links() {
    let t = two_hosts("");
    let (mut s, sink) = tcp_pair(&t, 6001);
    let shim = Shim::new(&t.ha.sock);
    let flow = flow_of_tcp(&s);
    // The peer announces its other locators after the base exchange.
    let b2 = t.l2.addr(&t.b, Family::V6);
    wait_for("b's link-2 locator at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow).peer.iter().any(|l| l.addr == b2)
    });
    let mut assoc = [0u8; 4];
    shim.getsockopt(s.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut assoc)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(assoc), 1);

    // LOCLIST gets are the hosts' real addresses.
    let mut peer_list = get_loclist(&shim, &s, SHIM_LOCLIST_PEER);
    peer_list.sort();
    assert_eq!(peer_list, real_addrs(&t.b), "SHIM_LOCLIST_PEER");
    let mut local_list = get_loclist(&shim, &s, SHIM_LOCLIST_LOCAL);
    local_list.sort();
    assert_eq!(local_list, real_addrs(&t.a), "SHIM_LOCLIST_LOCAL");

    let chunk = vec![0x5au8; 1 << 20];
    let send_mb = |s: &mut TcpStream, n: usize| {
        for _ in 0..n {
            s.write_all(&chunk).unwrap();
        }
    };
    // Warm up on the current path (link 1).
    send_mb(&mut s, 2);
    std::thread::sleep(Duration::from_millis(200));

    // Prefer b's link-2 locator: the context moves (verified first).
    shim.setsockopt(
        s.as_fd(),
        SOL_SHIM,
        SHIM_LOC_PEER_PREF,
        &locator_bytes(b2, 1),
    )
    .unwrap();
    wait_for("path on link 2", Duration::from_secs(5), || {
        shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == b2)
    });
    let mut got = [0u8; 32];
    shim.getsockopt(s.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut got)
        .unwrap();
    let pref = shimapi::Locator::try_from(shim_locator::from_bytes(&got).unwrap()).unwrap();
    assert_eq!(pref.addr, b2, "getsockopt returns the preferred locator");
    let (a1, a2) = tx(&t, &t.a);
    let (b1, b2tx) = tx(&t, &t.b);
    send_mb(&mut s, 8);
    std::thread::sleep(Duration::from_millis(300));
    let (a1n, a2n) = tx(&t, &t.a);
    let (b1n, b2n) = tx(&t, &t.b);
    assert!(a2n - a2 >= 8 << 20, "a sent {} bytes on link 2", a2n - a2);
    assert!(
        a1n - a1 < 1 << 20,
        "a still sent {} bytes on link 1",
        a1n - a1
    );
    // b's acknowledgements follow (a announced its link-2 locator as
    // preferred).
    assert!(
        b2n - b2tx > b1n - b1,
        "b's ACKs: l1 {} l2 {}",
        b1n - b1,
        b2n - b2tx
    );
    let ctx = shim_ctx(&t.ha, flow);
    assert!(ctx.switches >= 1);
    assert!(
        ctx.peer
            .iter()
            .any(|l| l.addr == b2 && l.state == LocState::Verified)
    );

    // And back: a more preferred (lower prio) locator on link 1.
    let b1addr = t.l1.addr(&t.b, Family::V6);
    shim.setsockopt(
        s.as_fd(),
        SOL_SHIM,
        SHIM_LOC_PEER_PREF,
        &locator_bytes(b1addr, 0),
    )
    .unwrap();
    wait_for("path back on link 1", Duration::from_secs(5), || {
        shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == b1addr)
    });
    let (a1, a2) = tx(&t, &t.a);
    send_mb(&mut s, 8);
    std::thread::sleep(Duration::from_millis(300));
    let (a1n, a2n) = tx(&t, &t.a);
    assert!(a1n - a1 >= 8 << 20, "a sent {} bytes on link 1", a1n - a1);
    assert!(
        a2n - a2 < 1 << 20,
        "a still sent {} bytes on link 2",
        a2n - a2
    );
    drop(s);
    assert_eq!(sink.join().unwrap(), 18 << 20, "every byte arrived");
    drop(t.lab);
}

/// Connected UDP sockets over HITs: b's on `port`, a's on `port + 1`; the
/// first datagram (queued during the base exchange) has arrived.
fn udp_pair(t: &Two, port: u16) -> (UdpSocket, UdpSocket) {
    let (hit_a, hit_b) = (t.ha.hit(), t.hb.hit());
    let rs = {
        let _g = t.b.enter().unwrap();
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V6(hit_b), port)).unwrap();
        // Room for a whole blast (2000 × 1000 B) even when the reading
        // thread is starved on a loaded machine: the tests count paths,
        // not the receiver's scheduling.
        let _ =
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        s
    };
    let ss = {
        let _g = t.a.enter().unwrap();
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V6(hit_a), port + 1)).unwrap();
        s.connect(SocketAddr::new(IpAddr::V6(hit_b), port)).unwrap();
        s
    };
    rs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ss.send(b"hello").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = rs.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    rs.connect(from).unwrap();
    (rs, ss)
}

fn recv_with(shim: &Shim, s: &UdpSocket, buf: &mut [u8]) -> (usize, LocatorPair) {
    let mut control = [0u8; 512];
    let r = shim
        .recvmsg(
            s.as_fd(),
            &mut [IoSliceMut::new(buf)],
            None,
            &mut control,
            0,
        )
        .expect("recvmsg");
    (r.bytes, shimapi::recv_locators(&control[..r.control_len]))
}

/// Sends a "warm" datagram on `ss` with per-datagram SEND cmsgs for the
/// pair (`local`, `peer`), retrying while the peer locator is being
/// verified (it is on first use: `EUNVERIFIEDLOCATOR` until then).
fn send_marked_when_verified(shim: &Shim, ss: &UdpSocket, local: IpAddr, peer: IpAddr) {
    let c = shimapi::send_locators_cmsg(&LocatorPair {
        local: Some(local),
        peer: Some(peer),
    });
    let t0 = Instant::now();
    loop {
        match shim.sendmsg(ss.as_fd(), &[IoSlice::new(b"warm")], None, c.as_bytes(), 0) {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(shimapi::EUNVERIFIEDLOCATOR) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "never verified");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("sendmsg with locators: {e}"),
        }
    }
}

/// A per-datagram SEND pair whose peer locator the peer withdraws: the
/// daemon forgets the marker at once (datagrams sent with the library's
/// cached marker still arrive, over the context's new path) and within
/// `shimapi::TOKEN_RECHECK` the library asks again and `sendmsg` fails
/// with EUNREACHABLELOCATOR (RFC 6316 §7) instead of sending into the
/// void.
#[test]
fn shim_send_to_a_withdrawn_locator_gets_the_rfc_errno() {
    let t = two_hosts("");
    let (rs, ss) = udp_pair(&t, 6500);
    let sa = Shim::new(&t.ha.sock);
    let (a1, b1) = (t.l1.addr(&t.a, Family::V6), t.l1.addr(&t.b, Family::V6));
    let b2 = t.l2.addr(&t.b, Family::V6);
    let l = ss.local_addr().unwrap();
    let flow = FlowId {
        proto: 17,
        local: l.ip(),
        local_port: l.port(),
        peer: ss.peer_addr().unwrap().ip(),
        peer_port: ss.peer_addr().unwrap().port(),
    };
    wait_for("b's link-2 locator at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow).peer.iter().any(|x| x.addr == b2)
    });
    // b2 verified first, so the move there is not held back by the
    // credit-based authorization of an unverified locator.
    let a2 = t.l2.addr(&t.a, Family::V6);
    let mut buf = [0u8; 64];
    for (l, p) in [(a2, b2), (a1, b1)] {
        send_marked_when_verified(&sa, &ss, l, p);
        let n = rs.recv(&mut buf).expect("the warm datagram");
        assert_eq!(&buf[..n], b"warm");
    }

    // b withdraws its link-1 address: its UPDATE leaves b1 out of the
    // LOCATOR_SET and a deprecates b1.
    let dev = t.l1.dev(&t.b).to_string();
    t.b.exec_ok(["ip", "-6", "addr", "del", &format!("{b1}/64"), "dev", &dev])
        .unwrap();
    wait_for("b1 deprecated at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow)
            .peer
            .iter()
            .any(|x| x.addr == b1 && x.state == LocState::Deprecated)
    });
    let c = shimapi::send_locators_cmsg(&LocatorPair {
        local: Some(a1),
        peer: Some(b1),
    });
    let t0 = Instant::now();
    let mut sent = 0u32;
    let refused = loop {
        match sa.sendmsg(
            ss.as_fd(),
            &[IoSlice::new(&sent.to_be_bytes())],
            None,
            c.as_bytes(),
            0,
        ) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "sendmsg to a withdrawn locator kept succeeding ({sent} datagrams)"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        refused.raw_os_error(),
        Some(shimapi::EUNREACHABLELOCATOR),
        "{refused}"
    );
    // What was sent with the cached marker meanwhile took the new path.
    rs.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for i in 0..sent {
        let n = rs
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {sent} lost: {e}"));
        assert_eq!(&buf[..n], &i.to_be_bytes());
    }
    drop(t.lab);
}

/// Per-datagram SHIM_LOC_*_SEND cmsgs alternate the pair datagram by
/// datagram; the receiver's SHIM_LOC_*_RECV cmsgs report exactly the pair
/// each datagram arrived on.
#[test]
fn shim_recv_cmsgs_follow_per_datagram_send_locators() {
    let t = two_hosts("");
    let (rs, ss) = udp_pair(&t, 6100);
    let mut buf = [0u8; 2048];
    let (sa, sb) = (Shim::new(&t.ha.sock), Shim::new(&t.hb.sock));
    let on = 1i32.to_ne_bytes();
    sb.setsockopt(rs.as_fd(), SOL_SHIM, SHIM_LOC_LOCAL_RECV, &on)
        .unwrap();
    sb.setsockopt(rs.as_fd(), SOL_SHIM, SHIM_LOC_PEER_RECV, &on)
        .unwrap();

    let pairs = [
        (t.l1.addr(&t.a, Family::V6), t.l1.addr(&t.b, Family::V6)),
        (t.l2.addr(&t.a, Family::V6), t.l2.addr(&t.b, Family::V6)),
    ];
    for (l, p) in pairs {
        send_marked_when_verified(&sa, &ss, l, p);
    }
    // Drain the warm-up datagrams.
    rs.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while rs.recv(&mut buf).is_ok() {}
    rs.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    const N: u32 = 200;
    for i in 0..N {
        let (l, p) = pairs[(i % 2) as usize];
        let c = shimapi::send_locators_cmsg(&LocatorPair {
            local: Some(l),
            peer: Some(p),
        });
        sa.sendmsg(
            ss.as_fd(),
            &[IoSlice::new(&i.to_be_bytes())],
            None,
            c.as_bytes(),
            0,
        )
        .unwrap();
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut seen = 0;
    let mut on_link = [0u32; 2];
    while seen < N {
        let (n, got) = recv_with(&sb, &rs, &mut buf);
        assert_eq!(n, 4);
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
        let (l, p) = pairs[(i % 2) as usize];
        // Receiver's view: local = b's locator, peer = a's locator.
        assert_eq!(got.local, Some(p), "datagram {i}: local locator");
        assert_eq!(got.peer, Some(l), "datagram {i}: peer locator");
        on_link[(i % 2) as usize] += 1;
        seen += 1;
    }
    assert_eq!(on_link, [N / 2, N / 2]);
    drop(t.lab);
}

/// A SHIM_DONTSHIM socket talks to the peer's real address without the
/// daemon: no ESP, SHIM_ASSOCIATED 0; the same option after connect is
/// EOPNOTSUPP.
#[test]
fn shim_dontshim_socket_bypasses_the_daemon() {
    let t = two_hosts("");
    let b1 = t.l1.addr(&t.b, Family::V6);
    let listener = {
        let _g = t.b.enter().unwrap();
        TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 6200)).unwrap()
    };
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v.len()
    });
    let shim = Shim::new(&t.ha.sock);
    let before = t.ha.stats().esp_tx;
    let sock = {
        let _g = t.a.enter().unwrap();
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap()
    };
    shim.setsockopt(
        sock.as_fd(),
        SOL_SHIM,
        shimapi::SHIM_DONTSHIM,
        &1i32.to_ne_bytes(),
    )
    .unwrap();
    sock.connect(&SocketAddr::new(b1, 6200).into()).unwrap();
    let mut s: TcpStream = sock.into();
    let mut v = [0u8; 4];
    shim.getsockopt(s.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut v)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(v), 0);
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_DONTSHIM,
            &0i32.to_ne_bytes(),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    s.write_all(&vec![1u8; 1 << 20]).unwrap();
    drop(s);
    assert_eq!(srv.join().unwrap(), 1 << 20);
    assert_eq!(t.ha.stats().esp_tx, before, "no ESP for a DONTSHIM socket");
    drop(t.lab);
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Silent drop on b's receiving side of link 1.
    DropRx,
    /// Link 1 down.
    Down,
    /// b rejects everything arriving on link 1 with ICMP host-unreachable.
    Reject,
}

/// A paced TCP stream a → b over HITs (about 8 MB/s for `secs`); link 1
/// fails after one second; the stream must complete byte-exact. Returns
/// the longest gap between two reads at the receiver.
fn failover_run(fault: Fault, tuned: bool, hot_standby: bool) -> Duration {
    let t = two_hosts("");
    let (hit_b, port) = (t.hb.hit(), 6300);
    let listener = {
        let _g = t.b.enter().unwrap();
        TcpListener::bind(SocketAddr::new(IpAddr::V6(hit_b), port)).unwrap()
    };
    const TOTAL: u64 = 40 << 20;
    let sink = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut pat = mh_tests::Pattern::new(77);
        let mut buf = vec![0u8; 65536];
        let mut n = 0u64;
        let mut last = Instant::now();
        let mut gap = Duration::ZERO;
        while n < TOTAL {
            let k = s.read(&mut buf).expect("receiver read");
            assert!(k > 0, "stream closed early at {n}");
            pat.check(&buf[..k])
                .unwrap_or_else(|at| panic!("corrupt byte at {at}"));
            n += k as u64;
            gap = gap.max(last.elapsed());
            last = Instant::now();
        }
        gap
    });
    let mut s = {
        let _g = t.a.enter().unwrap();
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V6(hit_b), port),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let flow = flow_of_tcp(&s);
    let b2 = t.l2.addr(&t.b, Family::V6);
    wait_for("b's link-2 locator at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow).peer.iter().any(|l| l.addr == b2)
    });
    let shim = Shim::new(&t.ha.sock);
    if tuned {
        shim.setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_APP_TIMEOUT_MS,
            &150i32.to_ne_bytes(),
        )
        .unwrap();
        let pe = shimapi::shim_pathexplore {
            pe_probenum: 4,
            pe_keepaliveto: 0,
            pe_keepaliveint: 0,
            pe_initprobeto: 100,
            pe_reserved: 0,
        };
        shim.setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_PATHEXPLORE,
            &pe.to_bytes(),
        )
        .unwrap();
        assert_eq!(shim_ctx(&t.ha, flow).send_timeout_ms, 150);
    }
    if hot_standby {
        shim.setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_HOT_STANDBY,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        wait_for("a verified standby pair", Duration::from_secs(5), || {
            shim_ctx(&t.ha, flow).standby.is_some()
        });
    }
    let mut pat = mh_tests::Pattern::new(77);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let t0 = Instant::now();
    let mut faulted = false;
    while sent < TOTAL {
        if !faulted && t0.elapsed() >= Duration::from_secs(1) {
            faulted = true;
            match fault {
                Fault::DropRx => {
                    t.l1.drop_rx(&t.b).unwrap();
                }
                Fault::Down => {
                    t.l1.down().unwrap();
                }
                Fault::Reject => {
                    let dev = t.l1.dev(&t.b).to_string();
                    for cmd in [
                        "add table inet shimreject".to_string(),
                        "add chain inet shimreject in { type filter hook input priority -10 ; }"
                            .to_string(),
                        format!(
                            "add rule inet shimreject in iifname {dev} reject with icmpx type host-unreachable"
                        ),
                    ] {
                        let mut args = vec!["nft".to_string()];
                        args.extend(cmd.split(' ').map(str::to_string));
                        t.b.exec_ok(args).unwrap();
                    }
                }
            }
        }
        pat.fill(&mut chunk);
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
        // ~8 MB/s.
        std::thread::sleep(Duration::from_millis(8));
    }
    let gap = sink.join().expect("receiver");
    if let Fault::Reject = fault {
        assert!(t.ha.stats().icmp_errors > 0, "ICMP errors seen by hipd");
    }
    let ctx = shim_ctx(&t.ha, flow);
    assert!(
        ctx.path.is_some_and(|p| p.1 != t.l1.addr(&t.b, Family::V6)),
        "a moved off link 1: {:?}",
        ctx.path
    );
    assert!(ctx.switches >= 1);
    // hipconf shows the switch too.
    let (code, out, _) = t.ha.hipconf(&["daemon", "get", "shim", "all"]);
    assert_eq!(code, 0);
    let (l, p) = ctx.path.unwrap();
    assert!(
        out.contains(&format!("path {l} -> {p}")),
        "hipconf get shim: {out}"
    );
    eprintln!(
        "failover {fault:?} tuned={tuned} standby={hot_standby}: longest receive gap {gap:?}, path {:?}",
        ctx.path
    );
    drop(t.lab);
    gap
}

#[test]
fn shim_failover_silent_drop_defaults() {
    failover_run(Fault::DropRx, false, false);
}

#[test]
fn shim_failover_silent_drop_tuned() {
    failover_run(Fault::DropRx, true, false);
}

#[test]
fn shim_failover_silent_drop_hot_standby() {
    failover_run(Fault::DropRx, true, true);
}

/// ICMP errors start exploration at once (the failure is not silent).
#[test]
fn shim_failover_icmp_unreachable() {
    failover_run(Fault::Reject, false, false);
}

#[test]
fn shim_failover_link_down_defaults() {
    failover_run(Fault::Down, false, false);
}

#[test]
fn shim_failover_link_down_hot_standby() {
    failover_run(Fault::Down, false, true);
}

/// Locator errors from the real daemon: unknown peer and local locators,
/// too many locators.
#[test]
fn shim_bad_locators_get_the_rfc_errno() {
    let t = two_hosts("");
    let (s, _sink) = tcp_pair(&t, 6400);
    let shim = Shim::new(&t.ha.sock);
    let stranger: IpAddr = "2001:db8:ffff::9".parse().unwrap();
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            SHIM_LOC_PEER_PREF,
            &locator_bytes(stranger, 1),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_LOC_LOCAL_PREF,
            &locator_bytes(stranger, 1),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_LOC_PEER_SEND,
            &locator_bytes(stranger, 0),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    let many: Vec<u8> = (0..33u16)
        .flat_map(|i| {
            locator_bytes(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, i + 1)),
                1,
            )
        })
        .collect();
    let e = shim
        .setsockopt(s.as_fd(), SOL_SHIM, SHIM_LOCLIST_PEER, &many)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::ETOOMANYLOCATORS));
    // A socket of another flow on the same host but not to a HIT: ENOENT.
    let plain = {
        let _g = t.a.enter().unwrap();
        let l = TcpListener::bind("[::1]:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        (l, c)
    };
    let mut v = [0u8; 32];
    let e = shim
        .getsockopt(plain.1.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut v)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    drop(t.lab);
}

/// The same with a connected UDP socket: SHIM_LOC_PEER_PREF moves the
/// datagrams to link 2 and back.
#[test]
fn shim_peer_pref_moves_udp_traffic_between_links() {
    let t = two_hosts("");
    let (hit_a, hit_b) = (t.ha.hit(), t.hb.hit());
    let (rs, ss) = udp_pair(&t, 6500);
    let flow = FlowId {
        proto: 17,
        local: IpAddr::V6(hit_a),
        local_port: 6501,
        peer: IpAddr::V6(hit_b),
        peer_port: 6500,
    };
    let b2 = t.l2.addr(&t.b, Family::V6);
    wait_for("b's link-2 locator at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow).peer.iter().any(|l| l.addr == b2)
    });
    let shim = Shim::new(&t.ha.sock);
    let rs = std::sync::Arc::new(rs);
    let blast = |n: usize| {
        let r = rs.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut got = 0;
            r.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            while got < n && r.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        let payload = [7u8; 1000];
        for i in 0..n {
            ss.send(&payload).unwrap();
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        reader.join().unwrap()
    };
    for (addr, prio, link) in [(b2, 1u16, 2), (t.l1.addr(&t.b, Family::V6), 0, 1)] {
        shim.setsockopt(
            ss.as_fd(),
            SOL_SHIM,
            SHIM_LOC_PEER_PREF,
            &locator_bytes(addr, prio),
        )
        .unwrap();
        wait_for("the preferred path", Duration::from_secs(5), || {
            shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == addr)
        });
        let (a1, a2) = tx(&t, &t.a);
        let got = blast(2000);
        let (a1n, a2n) = tx(&t, &t.a);
        let (on, off) = if link == 2 {
            (a2n - a2, a1n - a1)
        } else {
            (a1n - a1, a2n - a2)
        };
        assert!(got > 1800, "only {got} of 2000 datagrams arrived");
        assert!(
            on >= got as u64 * 1000,
            "link {link} carried only {on} bytes"
        );
        assert!(off < 100_000, "the other link still carried {off} bytes");
    }
    // SHIM_LOCLIST_PEER set restricts the context to b's link-2 locator: the
    // path moves there and the get returns exactly that list.
    shim.setsockopt(
        ss.as_fd(),
        SOL_SHIM,
        SHIM_LOCLIST_PEER,
        &locator_bytes(b2, 0),
    )
    .unwrap();
    wait_for("path restricted to link 2", Duration::from_secs(5), || {
        shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == b2)
    });
    assert_eq!(get_loclist(&shim, &ss, SHIM_LOCLIST_PEER), vec![b2]);
    let (a1, a2) = tx(&t, &t.a);
    assert!(blast(500) > 450);
    let (a1n, a2n) = tx(&t, &t.a);
    assert!(
        a2n - a2 >= 450_000 && a1n - a1 < 50_000,
        "loclist: l1 {} l2 {}",
        a1n - a1,
        a2n - a2
    );
    // A sticky SHIM_LOC_PEER_SEND beats the context (RFC 6316 §11.2): this
    // socket's datagrams go to b's link-1 locator although the context uses
    // link 2.
    let b1 = t.l1.addr(&t.b, Family::V6);
    shim.setsockopt(
        ss.as_fd(),
        SOL_SHIM,
        shimapi::SHIM_LOC_PEER_SEND,
        &locator_bytes(b1, 0),
    )
    .unwrap();
    let mut got = [0u8; 32];
    shim.getsockopt(ss.as_fd(), SOL_SHIM, shimapi::SHIM_LOC_PEER_SEND, &mut got)
        .unwrap();
    let sticky = shimapi::Locator::try_from(shim_locator::from_bytes(&got).unwrap()).unwrap();
    assert_eq!(sticky.addr, b1);
    let (a1, a2) = tx(&t, &t.a);
    assert!(blast(500) > 450);
    let (a1n, a2n) = tx(&t, &t.a);
    assert!(
        a1n - a1 >= 450_000 && a2n - a2 < 50_000,
        "sticky: l1 {} l2 {}",
        a1n - a1,
        a2n - a2
    );
    assert!(
        shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == b2),
        "context unchanged"
    );
    // Cancelled with an all-zero locator.
    shim.setsockopt(
        ss.as_fd(),
        SOL_SHIM,
        shimapi::SHIM_LOC_PEER_SEND,
        &[0u8; 32],
    )
    .unwrap();
    let (a1, a2) = tx(&t, &t.a);
    assert!(blast(500) > 450);
    let (a1n, a2n) = tx(&t, &t.a);
    assert!(
        a2n - a2 >= 450_000 && a1n - a1 < 50_000,
        "cancelled: l1 {} l2 {}",
        a1n - a1,
        a2n - a2
    );
    // An empty list lifts the restriction.
    shim.setsockopt(ss.as_fd(), SOL_SHIM, SHIM_LOCLIST_PEER, &[])
        .unwrap();
    assert!(get_loclist(&shim, &ss, SHIM_LOCLIST_PEER).len() > 1);
    drop(t.lab);
}

/// Sends one control request to `h`'s hipd as uid/gid 65534 (nobody) and
/// returns the reply.
fn request_as_nobody(host: &Host, h: &Hipd, req: Request) -> hipd_backend::control::Reply {
    let env = hipd_backend::control::Envelope {
        v: hipd_backend::control::PROTOCOL_VERSION,
        req,
    };
    let line = serde_json::to_string(&env).unwrap();
    let out = host
        .exec([
            "sh",
            "-c",
            "printf '%s\\n' \"$0\" | setpriv --reuid 65534 --regid 65534 --clear-groups \
             socat -t 5 - UNIX-CONNECT:\"$1\"",
            &line,
            h.sock.to_str().unwrap(),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or_default()).unwrap_or_else(|e| {
        panic!(
            "reply {text:?}: {e}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Context-wide settings move every socket of the HIT pair: a user may set
/// them on their own socket only while no other user's socket shares the
/// context (root's here); once root's connection is gone, the same request
/// succeeds. (The user's own sticky options stay open to them.)
#[test]
fn context_settings_need_every_socket_of_the_context() {
    let t = two_hosts("");
    std::fs::set_permissions(
        &t.ha.sock,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let (hit_a, hit_b) = (t.ha.hit(), t.hb.hit());
    let port = 6210;
    let listener =
        t.b.run(move || TcpListener::bind(("::", port)))
            .unwrap()
            .unwrap();
    // Root's connection over the context.
    let root_c =
        t.a.run(move || TcpStream::connect((hit_b, port)))
            .unwrap()
            .unwrap();
    let (root_s, _) = listener.accept().unwrap();
    // nobody's connection, idle for up to 60 s.
    let nobody =
        t.a.spawn(netlab::AS_NOBODY.into_iter().chain([
            "socat",
            "-u",
            "EXEC:sleep 60",
            &format!("TCP6:[{hit_b}]:{port}"),
        ]))
        .unwrap();
    let (nobody_s, nobody_peer) = listener.accept().unwrap();
    let flow = FlowId {
        proto: 6,
        local: IpAddr::V6(hit_a),
        local_port: nobody_peer.port(),
        peer: IpAddr::V6(hit_b),
        peer_port: port,
    };
    let pref = hipd_backend::control::ShimSetting::PeerPref {
        loc: hipd_backend::control::LocPref {
            addr: t.l1.addr(&t.b, Family::V6),
            prio: 1,
            weight: 0,
        },
    };
    let set = || Request::ShimSet {
        flow,
        set: pref.clone(),
    };
    let r = request_as_nobody(&t.a, &t.ha, set());
    let e = r.error.expect("refused");
    assert_eq!(
        e.code,
        hipd_backend::control::ErrorCode::PermissionDenied,
        "{e:?}"
    );
    assert!(e.message.contains("another user"), "{e:?}");
    // A sticky option of nobody's own socket is theirs to set.
    let sticky = Request::ShimSet {
        flow,
        set: hipd_backend::control::ShimSetting::PeerSend {
            addr: Some(t.l1.addr(&t.b, Family::V6)),
        },
    };
    let r = request_as_nobody(&t.a, &t.ha, sticky);
    assert!(r.ok, "{:?}", r.error);

    // Root's connection closes (TIME_WAIT does not count).
    drop(root_c);
    drop(root_s);
    let t0 = Instant::now();
    loop {
        let r = request_as_nobody(&t.a, &t.ha, set());
        if r.ok {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", r.error);
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(nobody_s);
    drop(nobody);
}

/// A refused context setting changes nothing (F2): a `SHIM_LOCLIST_LOCAL`
/// naming only an IPv4 locator of a while the context's destination is
/// IPv6 cannot be applied (`EINVALIDLOCATOR`); afterwards the list reads
/// as before (unrestricted), the path is the same and a preference still
/// applies. A timeout set in milliseconds reads back through
/// `SHIM_APP_TIMEOUT` rounded up to whole seconds (F5).
#[test]
fn shim_refused_settings_leave_the_previous_ones() {
    let t = two_hosts("");
    let (mut s, sink) = tcp_pair(&t, 6500);
    let shim = Shim::new(&t.ha.sock);
    let flow = flow_of_tcp(&s);
    let b2 = t.l2.addr(&t.b, Family::V6);
    wait_for("b's link-2 locator at a", Duration::from_secs(10), || {
        shim_ctx(&t.ha, flow).peer.iter().any(|l| l.addr == b2)
    });
    let before = shim_ctx(&t.ha, flow);
    let path = before.path.expect("a path");
    assert!(path.1.is_ipv6());
    let mut locals_before = get_loclist(&shim, &s, SHIM_LOCLIST_LOCAL);
    locals_before.sort();
    let a_v4 = *locals_before
        .iter()
        .find(|a| a.is_ipv4())
        .expect("an IPv4 locator of a");
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            SHIM_LOCLIST_LOCAL,
            &locator_bytes(a_v4, 1),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    let mut locals_after = get_loclist(&shim, &s, SHIM_LOCLIST_LOCAL);
    locals_after.sort();
    assert_eq!(
        locals_after, locals_before,
        "the refused list is not in force"
    );
    let after = shim_ctx(&t.ha, flow);
    assert!(!after.loclist_local_set, "no local list recorded");
    assert_eq!(after.path, Some(path), "the path did not move");
    assert_eq!(after.switches, before.switches);
    s.write_all(&[1u8; 1 << 16]).unwrap();
    // The context still follows preferences (nothing half-applied).
    shim.setsockopt(
        s.as_fd(),
        SOL_SHIM,
        SHIM_LOC_PEER_PREF,
        &locator_bytes(b2, 1),
    )
    .unwrap();
    wait_for("path on link 2", Duration::from_secs(5), || {
        shim_ctx(&t.ha, flow).path.is_some_and(|p| p.1 == b2)
    });
    // A refused peer preference keeps the accepted one.
    let stranger: IpAddr = "2001:db8:ffff::9".parse().unwrap();
    let e = shim
        .setsockopt(
            s.as_fd(),
            SOL_SHIM,
            SHIM_LOC_PEER_PREF,
            &locator_bytes(stranger, 0),
        )
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    let mut got = [0u8; 32];
    shim.getsockopt(s.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut got)
        .unwrap();
    let pref = shimapi::Locator::try_from(shim_locator::from_bytes(&got).unwrap()).unwrap();
    assert_eq!(pref.addr, b2);

    // SHIM_APP_TIMEOUT_MS 1500 reads as SHIM_APP_TIMEOUT 2, not 0.
    shim.setsockopt(
        s.as_fd(),
        SOL_SHIM,
        shimapi::SHIM_APP_TIMEOUT_MS,
        &1500i32.to_ne_bytes(),
    )
    .unwrap();
    let mut v = [0u8; 4];
    shim.getsockopt(s.as_fd(), SOL_SHIM, shimapi::SHIM_APP_TIMEOUT, &mut v)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(v), 2);
    shim.getsockopt(s.as_fd(), SOL_SHIM, shimapi::SHIM_APP_TIMEOUT_MS, &mut v)
        .unwrap();
    assert_eq!(i32::from_ne_bytes(v), 1500);
    s.write_all(&[2u8; 1 << 16]).unwrap();
    drop(s);
    assert_eq!(sink.join().unwrap(), 2 << 16, "every byte arrived");
    drop(t.lab);
}
