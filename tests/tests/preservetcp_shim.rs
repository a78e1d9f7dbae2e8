//! A preservetcp connection seen through the shim API (RFC 6316
//! `SOL_SHIM`): `SHIM_ASSOCIATED`, the locator lists learned in the
//! handshake, and `SHIM_LOC_PEER_PREF` moving the connection.

mod preservetcp_support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use preservetcp_support::*;
use shimapi::{
    SHIM_ASSOCIATED, SHIM_LOC_PEER_PREF, SHIM_LOCLIST_LOCAL, SHIM_LOCLIST_PEER, SOL_SHIM, Shim,
    shim_locator,
};

/// The addresses of a `SHIM_LOCLIST_*` answer.
fn loclist(shim: &Shim, s: &TcpStream, name: i32) -> Vec<IpAddr> {
    let mut buf = vec![0u8; 8 * shim_locator::SIZE];
    let n = shim
        .getsockopt(s.as_fd(), SOL_SHIM, name, &mut buf)
        .expect("loclist");
    buf[..n]
        .chunks_exact(shim_locator::SIZE)
        .map(|c| {
            shimapi::Locator::try_from(shim_locator::from_bytes(c).expect("locator"))
                .expect("address")
                .addr
        })
        .collect()
}

fn peer_pref(shim: &Shim, s: &TcpStream) -> IpAddr {
    let mut buf = vec![0u8; shim_locator::SIZE];
    shim.getsockopt(s.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut buf)
        .expect("peer pref");
    shimapi::Locator::try_from(shim_locator::from_bytes(&buf).expect("locator"))
        .expect("address")
        .addr
}

#[test]
fn shim_api_shows_and_moves_a_preservetcp_connection() {
    let t = two_links();
    let port = 5401;
    let (da, _db, listener) = daemons_and_listener(&t, port, &[]);
    let (a0, a1, b0, b1) = t.addrs();
    let (mut c, mut s) = connect_l0(&t, &listener, port);
    read_timeouts(&[&s]);
    let ping = |c: &mut TcpStream, s: &mut TcpStream, n: u8| ping(c, s, n, 256 << 10);
    ping(&mut c, &mut s, 1);
    // Wait until the daemon tracks it with both of b's addresses.
    let t0 = Instant::now();
    while da.connections().first().is_none_or(|c| c.peers.len() < 2) {
        assert!(t0.elapsed() < Duration::from_secs(10), "not tracked");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The control socket of a's daemon, no hipd at all.
    let shim = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&da.control);
    let mut one = [0u8; 4];
    shim.getsockopt(c.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut one)
        .expect("associated");
    assert_eq!(i32::from_ne_bytes(one), 1, "a preservetcp context");
    let v = |a: Ipv6Addr| IpAddr::V6(a);
    assert_eq!(loclist(&shim, &c, SHIM_LOCLIST_PEER), vec![v(b0), v(b1)]);
    assert_eq!(loclist(&shim, &c, SHIM_LOCLIST_LOCAL), vec![v(a0), v(a1)]);
    assert_eq!(peer_pref(&shim, &c), v(b0));

    // SHIM_LOC_PEER_PREF b1: the connection moves to (a0, b1) at once,
    // data keeps flowing, and the getter reports the new peer.
    let pref = shim_locator::from(shimapi::Locator::new(v(b1))).to_bytes();
    shim.setsockopt(c.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &pref)
        .expect("set peer pref");
    let conn = da.connections();
    assert_eq!((conn[0].current.local, conn[0].current.peer), (a0, b1));
    assert_eq!(peer_pref(&shim, &c), v(b1));
    ping(&mut c, &mut s, 2);
    // An address not exchanged in the handshake is refused.
    let bogus =
        shim_locator::from(shimapi::Locator::new("2001:db8:ffff::1".parse().unwrap())).to_bytes();
    let e = shim
        .setsockopt(c.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &bogus)
        .expect_err("not a locator of the connection");
    assert_eq!(e.raw_os_error(), Some(shimapi::EINVALIDLOCATOR));
    // A plain TCP socket (not tracked) has no context.
    let plain = TcpListener::bind("[::1]:0").unwrap();
    let p = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
    shim.getsockopt(p.as_fd(), SOL_SHIM, SHIM_ASSOCIATED, &mut one)
        .expect("associated");
    assert_eq!(i32::from_ne_bytes(one), 0);
    ping(&mut c, &mut s, 3);

    // SHIM_PRESERVETCP opts a socket in before connect: a port outside
    // the daemons' --ports is covered for that socket only.
    let other = port + 1;
    let l2 = listen(&t.b, other);
    let shim2 = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&da.control);
    let dst2 = SocketAddr::from((b0, other));
    let (opted, flag) =
        t.a.run(move || {
            let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            shim2.setsockopt(
                sock.as_fd(),
                SOL_SHIM,
                shimapi::SHIM_PRESERVETCP,
                &1i32.to_ne_bytes(),
            )?;
            let mut f = [0u8; 4];
            shim2.getsockopt(sock.as_fd(), SOL_SHIM, shimapi::SHIM_PRESERVETCP, &mut f)?;
            sock.connect(&dst2.into())?;
            Ok::<_, std::io::Error>((TcpStream::from(sock), i32::from_ne_bytes(f)))
        })
        .expect("run")
        .expect("opted-in socket");
    assert_eq!(flag, 1);
    let plain2: TcpStream =
        t.a.run(move || TcpStream::connect(dst2))
            .expect("run")
            .expect("connect");
    let (_s2, _) = l2.accept().expect("accept");
    let (_s3, _) = l2.accept().expect("accept");
    let port_of = |x: &TcpStream| x.local_addr().expect("local").port();
    let (opted_port, plain_port) = (port_of(&opted), port_of(&plain2));
    let t0 = Instant::now();
    loop {
        let conns = da.connections();
        let tracked = |p: u16| conns.iter().any(|c| c.original.local_port == p);
        if tracked(opted_port) {
            assert!(!tracked(plain_port), "only the opted-in socket: {conns:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not tracked: {conns:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The option is for unconnected sockets.
    let e = shim
        .setsockopt(
            c.as_fd(),
            SOL_SHIM,
            shimapi::SHIM_PRESERVETCP,
            &1i32.to_ne_bytes(),
        )
        .expect_err("connected");
    assert_eq!(e.raw_os_error(), Some(libc::EISCONN));
}

/// A socket set up with `SHIM_DONTSHIM` through the shim API.
fn dontshim_socket(shim: &Shim) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
    shim.setsockopt(
        sock.as_fd(),
        SOL_SHIM,
        shimapi::SHIM_DONTSHIM,
        &1i32.to_ne_bytes(),
    )?;
    Ok(sock)
}

fn get_int(shim: &Shim, s: &TcpStream, name: i32) -> i32 {
    let mut v = [0u8; 4];
    shim.getsockopt(s.as_fd(), SOL_SHIM, name, &mut v)
        .expect("getsockopt");
    i32::from_ne_bytes(v)
}

/// `SHIM_DONTSHIM` opts a socket out of preservetcp although its port is
/// in both daemons' `--ports`: a DONTSHIM client's SYN carries no
/// PREFIX_SYN, a DONTSHIM listener answers no offer, and neither
/// connection is tracked; a plain connection to the same ports right
/// after is offered on, answered and tracked (so the daemons did run).
fn dontshim_is_left_alone(extra: &[&str], port: u16) {
    let t = two_links();
    let listen_port = port + 1;
    let da = Daemon::start_with(&t.lab, &t.a, &[port, listen_port], extra);
    let db = Daemon::start_with(&t.lab, &t.b, &[port, listen_port], extra);
    assert_eq!(da.bpf(), extra.is_empty(), "mode");
    let (_, _, b0, _) = t.addrs();
    let plain_listener = listen(&t.b, port);
    let shim_a = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&da.control);
    let shim_b = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&db.control);
    // A DONTSHIM listener in b.
    let dontshim_listener: TcpListener = {
        let shim_b = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&db.control);
        t.b.run(move || {
            let s = dontshim_socket(&shim_b)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, listen_port)).into())?;
            s.listen(16)?;
            Ok::<_, std::io::Error>(TcpListener::from(s))
        })
        .expect("run")
        .expect("DONTSHIM listener")
    };
    let (offers_a, answers_b) = (da.offers_sent(), db.answers_sent());
    let (offers_b, answers_a) = (db.offers_sent(), da.answers_sent());

    // 1. A DONTSHIM client to a covered port.
    let dst = SocketAddr::from((b0, port));
    let shim_a2 = Shim::new("/nonexistent/hipd.sock").with_preservetcp(&da.control);
    let mut c1: TcpStream =
        t.a.run(move || {
            let s = dontshim_socket(&shim_a2)?;
            s.connect(&dst.into())?;
            Ok::<_, std::io::Error>(TcpStream::from(s))
        })
        .expect("run")
        .expect("DONTSHIM client");
    let (mut s1, _) = plain_listener.accept().expect("accept");
    assert_eq!(get_int(&shim_a, &c1, shimapi::SHIM_DONTSHIM), 1);
    // 2. A plain client to the DONTSHIM listener (a covered port).
    let dst2 = SocketAddr::from((b0, listen_port));
    let mut c2: TcpStream =
        t.a.run(move || TcpStream::connect(dst2))
            .expect("run")
            .expect("connect to the DONTSHIM listener");
    let (mut s2, _) = dontshim_listener.accept().expect("accept");
    // The accepted socket inherits the listener's opt-out.
    assert_eq!(get_int(&shim_b, &s2, shimapi::SHIM_DONTSHIM), 1);
    read_timeouts(&[&s1, &c1, &s2, &c2]);
    ping(&mut c1, &mut s1, 1, 64 << 10);
    ping(&mut s1, &mut c1, 2, 64 << 10);
    ping(&mut c2, &mut s2, 3, 64 << 10);
    ping(&mut s2, &mut c2, 4, 64 << 10);
    // 3. The control: a plain connection to the covered port.
    let (mut c3, mut s3) = connect_l0(&t, &plain_listener, port);
    read_timeouts(&[&s3, &c3]);
    ping(&mut c3, &mut s3, 5, 64 << 10);
    let port_of = |x: &TcpStream| x.local_addr().expect("local").port();
    let (p1, p2, p3) = (port_of(&c1), port_of(&c2), port_of(&c3));
    let t0 = Instant::now();
    loop {
        let (ca, cb) = (da.connections(), db.connections());
        let tracked = |conns: &[preservetcp::control::ConnInfo], p: u16| {
            conns
                .iter()
                .any(|c| c.original.local_port == p || c.original.peer_port == p)
        };
        if tracked(&ca, p3) && tracked(&cb, p3) {
            for p in [p1, p2] {
                assert!(!tracked(&ca, p), "a tracks DONTSHIM port {p}: {ca:?}");
                assert!(!tracked(&cb, p), "b tracks DONTSHIM port {p}: {cb:?}");
            }
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "control connection not tracked: {ca:?} {cb:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exactly one offer (the control's) left a and was answered by b; the
    // plain client's offer to the DONTSHIM listener got no answer.
    assert_eq!(da.offers_sent() - offers_a, 2, "a's offers: c2 and c3 only");
    assert_eq!(db.answers_sent() - answers_b, 1, "b answered c3 only");
    assert_eq!(db.offers_sent() - offers_b, 0);
    assert_eq!(da.answers_sent() - answers_a, 0);
    assert_eq!(get_int(&shim_a, &c1, SHIM_ASSOCIATED), 0, "DONTSHIM client");
    assert_eq!(get_int(&shim_a, &c2, SHIM_ASSOCIATED), 0, "unanswered");
    assert_eq!(get_int(&shim_a, &c3, SHIM_ASSOCIATED), 1, "control");
    ping(&mut c1, &mut s1, 6, 1024);
    ping(&mut c2, &mut s2, 7, 1024);
}

#[test]
fn dontshim_sockets_are_left_alone_bpf() {
    dontshim_is_left_alone(&[], 5410);
}

#[test]
fn dontshim_sockets_are_left_alone_nfqueue() {
    dontshim_is_left_alone(&["--no-bpf"], 5420);
}
