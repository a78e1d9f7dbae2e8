//! Connection racing, dual-stack listening and the resolve → select →
//! connect chain, all on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use namesocket::addrsel::{PathCandidate, plan_paths};
use namesocket::connect::{
    ConnectError, FailScope, PathSet, RaceConfig, SocketOptions, connect_pairs,
    connect_pairs_async, connect_pairs_with, listen_dual,
};
use namesocket::resolve::{Resolver, ResolverConfig};
use socket2::{Domain, Protocol, Socket, Type};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cand(src: &str, dst: SocketAddr) -> PathCandidate {
    PathCandidate {
        src: Some(ip(src)),
        dst,
        ifindex: None,
    }
}

/// A port on 127.0.0.1 where nothing listens (connect is refused).
fn refused_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A listener whose accept queue is full, so new SYNs are silently dropped:
/// a loopback "blackhole". The returned sockets must stay alive.
fn blackhole() -> (Socket, Vec<Socket>, SocketAddr) {
    let l = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let _ = s.connect_timeout(&addr.into(), Duration::from_millis(300));
        fillers.push(s);
    }
    (l, fillers, addr)
}

fn echo_once(l: TcpListener) -> std::thread::JoinHandle<SocketAddr> {
    std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
        peer
    })
}

fn ping(s: &mut TcpStream) {
    s.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
}

#[test]
fn refused_first_candidate_falls_through_to_working_one() {
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let good_addr = good.local_addr().unwrap();
    let server = echo_once(good);
    let dead = refused_port();
    let cands = vec![cand("127.0.0.1", dead), cand("127.0.0.2", good_addr)];
    let cfg = RaceConfig {
        per_attempt_timeout: Duration::from_secs(5),
        stagger: Duration::from_millis(50),
        socket_options: SocketOptions {
            nodelay: true,
            ..SocketOptions::default()
        },
    };
    let mut won = connect_pairs_with(&cands, &cfg).unwrap();
    assert_eq!(won.path, cands[1]);
    assert_eq!(won.failures.len(), 1);
    assert_eq!(won.failures[0].candidate, cands[0]);
    assert_eq!(
        won.failures[0].error.kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // The source address was bound as requested.
    assert_eq!(won.stream.local_addr().unwrap().ip(), ip("127.0.0.2"));
    assert!(won.stream.nodelay().unwrap());
    ping(&mut won.stream);
    assert_eq!(server.join().unwrap().ip(), ip("127.0.0.2"));
}

#[test]
fn blackholed_first_candidate_is_raced_not_waited_for() {
    let (_l, _fillers, hole) = blackhole();
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let good_addr = good.local_addr().unwrap();
    let server = echo_once(good);
    let cands = vec![cand("127.0.0.3", hole), cand("127.0.0.4", good_addr)];
    // The per-attempt timeout is long: if the attempts ran one after the
    // other, the first would have to time out (and be reported as failed)
    // before the second could win.
    let cfg = RaceConfig {
        per_attempt_timeout: Duration::from_secs(30),
        stagger: Duration::from_millis(50),
        socket_options: SocketOptions::default(),
    };
    let mut won = connect_pairs_with(&cands, &cfg).unwrap();
    assert_eq!(won.path, cands[1]);
    assert!(
        won.failures.is_empty(),
        "the blackholed attempt must still be in flight, not failed: {:?}",
        won.failures
    );
    ping(&mut won.stream);
    assert_eq!(server.join().unwrap().ip(), ip("127.0.0.4"));
}

#[test]
fn blackholed_only_candidate_times_out() {
    let (_l, _fillers, hole) = blackhole();
    let err = connect_pairs(
        &[cand("127.0.0.5", hole)],
        Duration::from_millis(300),
        Duration::from_millis(50),
    )
    .unwrap_err();
    let f = err.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].error.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(err.errno(), libc::ETIMEDOUT);
}

#[test]
fn all_refused_reports_every_failure() {
    let a = refused_port();
    let b = refused_port();
    let err = connect_pairs(
        &[cand("127.0.0.1", a), cand("127.0.0.1", b)],
        Duration::from_secs(2),
        Duration::from_millis(50),
    )
    .unwrap_err();
    match &err {
        ConnectError::AllFailed(f) => assert_eq!(f.len(), 2),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.errno(), libc::ECONNREFUSED);
}

#[test]
fn unbindable_source_is_a_failed_attempt() {
    let good = TcpListener::bind("127.0.0.1:0").unwrap();
    let good_addr = good.local_addr().unwrap();
    let server = echo_once(good);
    // 192.0.2.1 is not a local address: bind fails with EADDRNOTAVAIL.
    let cands = vec![cand("192.0.2.1", good_addr), cand("127.0.0.6", good_addr)];
    let (mut s, path) =
        connect_pairs(&cands, Duration::from_secs(5), Duration::from_millis(50)).unwrap();
    assert_eq!(path, cands[1]);
    ping(&mut s);
    server.join().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_race_picks_working_candidate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_l, _fillers, hole) = blackhole();
    let dead = refused_port();
    let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_addr = good.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, peer) = good.accept().await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        peer
    });
    let cands = vec![
        cand("127.0.0.7", hole),
        cand("127.0.0.8", dead),
        cand("127.0.0.9", good_addr),
    ];
    let (mut s, path) =
        connect_pairs_async(&cands, Duration::from_secs(30), Duration::from_millis(50))
            .await
            .unwrap();
    assert_eq!(path, cands[2]);
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    assert_eq!(server.await.unwrap().ip(), ip("127.0.0.9"));
}

#[test]
fn dual_listener_accepts_both_families() {
    let l = listen_dual(0).unwrap();
    let port = l.local_port();
    assert_ne!(port, 0);
    assert!(l.v4().is_some());
    let v6_available = l.v6().is_some();
    let _c4 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_s4, p4) = l.accept().unwrap();
    assert_eq!(p4.ip(), ip("127.0.0.1"));
    if v6_available {
        let _c6 = TcpStream::connect(("::1", port)).unwrap();
        let (_s6, p6) = l.accept().unwrap();
        assert_eq!(p6.ip(), ip("::1"));
        // V6ONLY: the IPv6 socket must not own the IPv4 side.
        let v6sock = socket2::SockRef::from(l.v6().unwrap());
        assert!(v6sock.only_v6().unwrap());
    }
    // Nothing pending: accept with timeout returns None.
    assert!(
        l.accept_timeout(Some(Duration::from_millis(50)))
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn async_dual_listener() {
    let l = namesocket::connect::AsyncDualListener::bind(0).unwrap();
    let port = l.local_port();
    let c = tokio::spawn(async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap()
    });
    let (_s, peer) = l.accept().await.unwrap();
    assert_eq!(peer.ip(), ip("127.0.0.1"));
    c.await.unwrap();
}

/// The whole nconnect chain: hosts file → all addresses → RFC 6724 pairs →
/// race → connected, then a reconnect after marking the pair failed uses the
/// other family.
#[test]
fn resolve_plan_connect_and_reconnect_over_other_pair() {
    let l = listen_dual(0).unwrap();
    let port = l.local_port();
    let dir = std::env::temp_dir().join(format!("nsresolve-chain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 svc.lab\n::1 svc.lab\n").unwrap();
    let r = Resolver::new(
        ResolverConfig::default()
            .with_hosts_file(&hosts)
            .without_dns(),
    );
    let res = r.resolve("svc.lab", &port.to_string()).unwrap();
    assert_eq!(res.addrs.len(), 2);
    let plan = plan_paths(&res.addrs).unwrap();
    let v6 = l.v6().is_some();
    // One pair per destination (without IPv6 the ::1 pair is unbound).
    assert_eq!(plan.len(), 2);
    if v6 {
        // ::1 has precedence 50 > 35: IPv6 first.
        assert_eq!(plan[0].dst.ip(), ip("::1"));
        assert_eq!(plan[0].src, Some(ip("::1")));
        assert_eq!(plan[1].src, Some(ip("127.0.0.1")));
    }
    let mut set = PathSet::new(plan);
    let first = set.to_vec();
    let (_s1, p1) =
        connect_pairs(&first, Duration::from_secs(5), Duration::from_millis(50)).unwrap();
    let (_a1, peer1) = l.accept().unwrap();
    assert_eq!(p1, first[0]);
    assert_eq!(peer1.ip(), p1.src.unwrap());
    // Path failure: move it to the back and reconnect.
    set.mark_failed(&p1, FailScope::Destination);
    let second = set.reconnect_order(None);
    assert_eq!(second.last(), Some(&p1));
    let (_s2, p2) =
        connect_pairs(&second, Duration::from_secs(5), Duration::from_millis(50)).unwrap();
    let (_a2, peer2) = l.accept().unwrap();
    if v6 {
        assert_ne!(p2, p1);
        assert_ne!(p2.dst.is_ipv4(), p1.dst.is_ipv4());
    }
    assert_eq!(peer2.ip(), p2.src.unwrap());
}
