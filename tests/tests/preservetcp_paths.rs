//! preservetcpd path changes driven by the host's state: rtnetlink events
//! (link down, address removed), a peer moving back to the original pair,
//! and fallback routing on a host with a default route.

mod preservetcp_support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use preservetcp::control::{ConnInfo, Request};
use preservetcp_support::*;

/// `tcp_info` sampling once an hour: in these tests only rtnetlink events
/// (or packets) can make the daemon act.
const NO_SAMPLING: &[&str] = &["--interval-ms", "3600000"];

/// Client socket in host `a` connected to `dst`, and the server's accepted
/// socket; both with generous timeouts so a dead connection fails the test
/// instead of hanging it.
fn connect(t: &TwoLinks, listener: &TcpListener, dst: SocketAddr) -> (TcpStream, TcpStream) {
    let c: TcpStream =
        t.a.run(move || TcpStream::connect(dst))
            .expect("run")
            .expect("connect");
    let (s, _) = listener.accept().expect("accept");
    for x in [&c, &s] {
        x.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        x.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
    }
    (c, s)
}

/// Sends `len` bytes from `from` and checks that `to` receives exactly them.
fn transfer(from: &mut TcpStream, to: &TcpStream, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>();
    let expect = data.clone();
    let mut to = to.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expect.len()];
        to.read_exact(&mut got).map(|()| got == expect)
    });
    from.write_all(&data).expect("write");
    let same = reader.join().expect("reader").expect("read");
    assert!(same, "data intact");
}

fn only_conn(d: &Daemon) -> ConnInfo {
    let c = d.connections();
    assert_eq!(c.len(), 1, "one tracked connection: {c:?}");
    c.into_iter().next().expect("one")
}

/// Starts daemons with `extra` arguments, a server on link 0 of b, and a
/// client in a; moves some data on the original pair.
fn setup(
    t: &TwoLinks,
    port: u16,
    extra: &[&str],
) -> (Daemon, Daemon, TcpListener, TcpStream, TcpStream) {
    let da = Daemon::start_with(&t.lab, &t.a, &[port], extra);
    let db = Daemon::start_with(&t.lab, &t.b, &[port], extra);
    let listener =
        t.b.run(move || TcpListener::bind(("::", port)))
            .expect("run")
            .expect("bind");
    let dst = SocketAddr::from((v6(&t.l0, &t.b), port));
    let (mut c, s) = connect(t, &listener, dst);
    transfer(&mut c, &s, 256 << 10, 1);
    let ca = only_conn(&da);
    assert_eq!(
        (ca.current.local, ca.current.peer),
        (v6(&t.l0, &t.a), v6(&t.l0, &t.b)),
        "starts on link 0\nserver:\n{}\nclient:\n{}",
        db.log(),
        da.log()
    );
    assert_eq!(ca.peers.len(), 2, "learned the server's second address");
    only_conn(&db);
    (da, db, listener, c, s)
}

/// With `tcp_info` sampling off, removing the client's original address
/// must still move the connection at once: the daemon hears the
/// `RTM_DELADDR` notification. (Nothing else could: the server sends only
/// ACKs, so it never stalls, and the client's kernel can no longer route
/// from the removed address.)
#[test]
fn address_removal_is_an_event() {
    let t = two_links();
    let (da, _db, _l, mut c, s) = setup(&t, 5101, NO_SAMPLING);
    let a0 = v6(&t.l0, &t.a);
    t.a.exec_ok([
        "ip",
        "-6",
        "addr",
        "del",
        &format!("{a0}/64"),
        "dev",
        t.l0.dev(&t.a),
    ])
    .expect("address removed");
    transfer(&mut c, &s, 4 << 20, 2);
    let ca = only_conn(&da);
    assert_eq!(ca.current.local, v6(&t.l1, &t.a), "moved off a0: {ca:?}");
    assert_eq!(ca.last_reason.as_deref(), Some("source_gone"));
}

/// With `tcp_info` sampling off on both hosts, link 0 going down on the
/// client's side moves the connection to link 1 (`RTM_NEWLINK`).
#[test]
fn link_down_is_an_event() {
    let t = two_links();
    let (da, db, _l, mut c, s) = setup(&t, 5102, NO_SAMPLING);
    t.l0.down_side(&t.a).expect("down");
    transfer(&mut c, &s, 4 << 20, 3);
    let (ca, cb) = (only_conn(&da), only_conn(&db));
    assert_eq!(ca.current.local, v6(&t.l1, &t.a), "client moved: {ca:?}");
    assert_eq!(cb.current.local, v6(&t.l1, &t.b), "server moved: {cb:?}");
    assert_eq!(ca.last_reason.as_deref(), Some("source_gone"));
    // And back up: nothing breaks, the data still flows.
    t.l0.up_side(&t.a).expect("up");
    transfer(&mut c, &s, 1 << 20, 4);
}

/// Polls `d` until its one connection is on (`local`, `peer`), up to 10 s.
fn wait_pair(d: &Daemon, local: Ipv6Addr, peer: Ipv6Addr) -> ConnInfo {
    let t0 = Instant::now();
    loop {
        let c = only_conn(d);
        if (c.current.local, c.current.peer) == (local, peer) || t0.elapsed() > TEN_S {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const TEN_S: Duration = Duration::from_secs(10);

/// "Follow the peer" for every pair, the original one included: the
/// server moves away from the original pair (link 0 silently dead while it
/// sends), the client follows; link 0 recovers and the client goes back to
/// the original pair; the server must follow it back — checked by then
/// killing link 1, after which only the original pair carries data.
#[test]
fn server_follows_peer_back_to_the_original_pair() {
    let t = two_links();
    let (da, db, _l, mut c, mut s) = setup(&t, 5103, &[]);
    let (a0, a1, b0, b1) = (
        v6(&t.l0, &t.a),
        v6(&t.l1, &t.a),
        v6(&t.l0, &t.b),
        v6(&t.l1, &t.b),
    );
    t.l0.drop_both().expect("drop");
    transfer(&mut s, &c, 4 << 20, 5);
    let cb = only_conn(&db);
    assert_eq!((cb.current.local, cb.current.peer), (b1, a1), "{cb:?}");
    assert_ne!(
        cb.last_reason.as_deref(),
        Some("peer_moved"),
        "server moved"
    );
    let ca = wait_pair(&da, a1, b1);
    assert_eq!((ca.current.local, ca.current.peer), (a1, b1), "{ca:?}");
    assert_eq!(ca.last_reason.as_deref(), Some("peer_moved"));

    // Link 0 recovers; the client goes back to the original pair (after
    // the server's follow hold, so its very first segment is followed)
    // and keeps sending.
    t.l0.restore().expect("restore");
    std::thread::sleep(Duration::from_millis(700));
    let ok = da.request(&Request::Move {
        id: ca.id,
        local: a0,
        peer: b0,
    });
    assert!(ok.ok, "{:?}", ok.error);
    let t0 = Instant::now();
    let mut seed = 6;
    let cb = loop {
        transfer(&mut c, &s, 256 << 10, seed);
        seed += 1;
        let cb = only_conn(&db);
        if (cb.current.local, cb.current.peer) == (b0, a0) || t0.elapsed() > TEN_S {
            break cb;
        }
    };
    assert_eq!(
        (cb.current.local, cb.current.peer),
        (b0, a0),
        "server followed back: {cb:?}\nserver:\n{}\nclient:\n{}",
        db.log(),
        da.log()
    );
    assert_eq!(cb.last_reason.as_deref(), Some("peer_moved"));
    // The client stays there (late segments on link 1 are not followed).
    std::thread::sleep(Duration::from_millis(700));
    let ca = only_conn(&da);
    // While the server changes its rules to follow, the client's segments
    // on the original tuple wait in the server's NFQUEUE (up to a whole
    // window): none may be dropped, or the client's TCP needs an RTO to
    // recover and its daemon rightly switches pairs again.
    let drops = (nfqueue_drops(&t.a), nfqueue_drops(&t.b));
    assert_eq!(
        (ca.current.local, ca.current.peer, drops),
        (a0, b0, (0, 0)),
        "{ca:?} (pair, NFQUEUE drops client/server)\nserver:\n{}\nclient:\n{}",
        db.log(),
        da.log()
    );

    // Only link 0 works now: both directions must still flow.
    t.l1.drop_both().expect("drop link 1");
    transfer(&mut c, &s, 2 << 20, 7);
    transfer(&mut s, &c, 2 << 20, 8);
    eprintln!("server:\n{}\nclient:\n{}", db.log(), da.log());
}

/// Fallback routing on hosts that have a default route (here via link 1):
/// after link 0 goes down on the client, its kernel must still receive the
/// packets rewritten back to the original (now route-less) addresses —
/// with the fallback table consulted only after `main`, the default route
/// would send them to forwarding instead. Both directions must flow.
#[test]
fn fallback_routing_with_a_default_route() {
    let t = two_links();
    let (a1, b1) = (v6(&t.l1, &t.a), v6(&t.l1, &t.b));
    for (h, via, dev) in [(&t.a, b1, t.l1.dev(&t.a)), (&t.b, a1, t.l1.dev(&t.b))] {
        h.exec_ok([
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &via.to_string(),
            "dev",
            dev,
        ])
        .expect("default route");
    }
    let (da, db, _l, mut c, mut s) = setup(&t, 5104, &[]);
    t.l0.down_side(&t.a).expect("down");
    transfer(&mut c, &s, 4 << 20, 9);
    transfer(&mut s, &c, 4 << 20, 10);
    let (ca, cb) = (only_conn(&da), only_conn(&db));
    assert_eq!((ca.current.local, ca.current.peer), (a1, b1), "{ca:?}");
    assert_eq!((cb.current.local, cb.current.peer), (b1, a1), "{cb:?}");
    // Back to the original pair once link 0 is up again: the fallback
    // rules are gone with the move, so the kernel's own routes apply.
    t.l0.up_side(&t.a).expect("up");
    std::thread::sleep(Duration::from_millis(600));
    let ok = da.request(&Request::Move {
        id: ca.id,
        local: v6(&t.l0, &t.a),
        peer: v6(&t.l0, &t.b),
    });
    assert!(ok.ok, "{:?}", ok.error);
    transfer(&mut c, &s, 1 << 20, 11);
    let cb = wait_pair(&db, v6(&t.l0, &t.b), v6(&t.l0, &t.a));
    assert_eq!(cb.current.local, v6(&t.l0, &t.b), "{cb:?}");
    t.l1.drop_both().expect("drop link 1");
    transfer(&mut c, &s, 1 << 20, 12);
    transfer(&mut s, &c, 1 << 20, 13);
}
