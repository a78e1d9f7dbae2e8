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
/// [`NO_SAMPLING`] with the NFQUEUE/nftables path instead of the programs.
const NO_SAMPLING_NO_BPF: &[&str] = &["--interval-ms", "3600000", "--no-bpf"];

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

/// `counter packets N` of the fast path's output chains in `host`: the
/// direct chain (rewrite, no reroute) and the route chain (rewrite and
/// reroute).
fn fast_path_counters(host: &netlab::Host) -> (u64, u64) {
    let count = |chain: &str| -> u64 {
        let out = host
            .exec_ok(["nft", "list", "chain", "ip6", "ptcp", chain])
            .expect("nft list chain");
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a counter in chain {chain} of {}: {out}", host.name()))
    };
    (count("out_direct"), count("out"))
}

/// After a migration to an on-link pair, the fast path rewrites the
/// packets of the original tuple without a reroute: the fallback route
/// already sends that tuple out of link 1, so the rewrite happens in a
/// `filter` chain (the `route` chain's counter stays put) while link 0 is
/// dead. When the kernel's route for the original tuple leaves on another
/// device (the fallback route replaced by hand), the packets no longer
/// match the `direct` set and the `route` chain rewrites and reroutes
/// them: the data still flows over link 1 only. (The nftables fast path
/// is `--no-bpf`'s; with the BPF programs see
/// `moved_connection_is_rewritten_by_the_programs`.)
#[test]
fn moved_connection_is_rewritten_without_reroute() {
    let t = two_links();
    let (da, db, _l, mut c, mut s) = setup(&t, 5105, NO_SAMPLING_NO_BPF);
    let (a1, b1) = (v6(&t.l1, &t.a), v6(&t.l1, &t.b));
    move_client((&da, &db), (&mut c, &s), (a1, b1), 1 << 20, 14);
    // The fast path's rules go in after the move.
    for h in [&t.a, &t.b] {
        let t0 = Instant::now();
        while !h
            .exec_ok(["nft", "list", "chain", "ip6", "ptcp", "out_direct"])
            .is_ok_and(|o| o.contains("counter"))
        {
            assert!(t0.elapsed() < TEN_S, "no fast path in {}", h.name());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Only link 1 works from here on.
    t.l0.drop_both().expect("drop link 0");
    let before = (fast_path_counters(&t.a), fast_path_counters(&t.b));
    transfer(&mut c, &s, 4 << 20, 15);
    transfer(&mut s, &c, 4 << 20, 16);
    let after = (fast_path_counters(&t.a), fast_path_counters(&t.b));
    let delta = |x: (u64, u64), y: (u64, u64)| (y.0 - x.0, y.1 - x.1);
    let (da_d, db_d) = (delta(before.0, after.0), delta(before.1, after.1));
    // 4 MiB each way: at least 64 segments of at most 64 KiB (GSO) per
    // host, plus the ACKs.
    assert!(
        da_d.0 >= 64 && db_d.0 >= 64 && da_d.1 == 0 && db_d.1 == 0,
        "(direct, rerouted) packets client {da_d:?} server {db_d:?}\nserver:\n{}\nclient:\n{}",
        db.log(),
        da.log()
    );

    // The client's fallback route for the original peer now points at
    // link 0 (as after a route change): nothing may leave on link 0.
    fallback_route_on_link0(&t);
    let before = fast_path_counters(&t.a);
    transfer(&mut c, &s, 4 << 20, 17);
    let d = delta(before, fast_path_counters(&t.a));
    assert!(d.0 == 0 && d.1 >= 64, "(direct, rerouted) packets {d:?}");
    let ca = only_conn(&da);
    assert_eq!((ca.current.local, ca.current.peer), (a1, b1), "{ca:?}");
}

/// With the BPF programs a moved connection is rewritten and redirected
/// in the kernel: while link 0 is dead every segment of it is rewritten
/// by the egress program (`bpf_moved_rewrites`) and the data flows both
/// ways over link 1. When the kernel's route for the original tuple
/// leaves on link 0 (the fallback route replaced by hand, as after a
/// route change; the neighbour entry of the original peer is still there
/// from before), the program still hands the segments to link 1's
/// device: nothing is lost on the dead link.
#[test]
fn moved_connection_is_rewritten_by_the_programs() {
    let t = two_links();
    let (da, db, _l, mut c, mut s) = setup(&t, 5106, NO_SAMPLING);
    assert!(da.bpf() && db.bpf());
    let (a1, b1) = (v6(&t.l1, &t.a), v6(&t.l1, &t.b));
    move_client((&da, &db), (&mut c, &s), (a1, b1), 1 << 20, 20);
    t.l0.drop_both().expect("drop link 0");
    // (Past the server's follow window.)
    std::thread::sleep(Duration::from_millis(300));
    let before = (da.stat("bpf_moved_rewrites"), db.stat("bpf_moved_rewrites"));
    transfer(&mut c, &s, 4 << 20, 21);
    transfer(&mut s, &c, 4 << 20, 22);
    let after = (da.stat("bpf_moved_rewrites"), db.stat("bpf_moved_rewrites"));
    // 4 MiB each way: at least 64 segments of at most 64 KiB (GSO) per
    // host, plus the ACKs.
    assert!(
        after.0 - before.0 >= 64 && after.1 - before.1 >= 64,
        "rewritten client {before:?} -> {after:?}\nserver:\n{}\nclient:\n{}",
        db.log(),
        da.log()
    );
    fallback_route_on_link0(&t);
    transfer(&mut c, &s, 4 << 20, 23);
    transfer(&mut s, &c, 1 << 20, 24);
    let ca = only_conn(&da);
    assert_eq!((ca.current.local, ca.current.peer), (a1, b1), "{ca:?}");
    for h in [&t.a, &t.b] {
        assert_eq!(nfqueue_queued(h), 0, "nothing queued in {}", h.name());
    }
}

/// Link 1 carries at most 1280-byte packets, link 0 the usual 1500. A
/// connection moved to link 1 (link 0 silently dropping) must send
/// segments that fit it: the kernel sizes them from the route the socket
/// now takes (the daemon's fallback route on link 1's device), in both
/// directions and in both modes.
fn moved_to_a_smaller_mtu(port: u16, extra: &[&str]) {
    let t = two_links();
    t.l1.set_mtu(1280).expect("mtu");
    let (da, db, _l, mut c, mut s) = setup(&t, port, extra);
    let (a1, b1) = (v6(&t.l1, &t.a), v6(&t.l1, &t.b));
    move_then_lose_link0(&t, (&da, &db), (&mut c, &mut s), (a1, b1), 30);
}

/// Moves the client's connection to (`local`, `peer`), sends `len` bytes
/// and waits until the server follows to the same pair.
fn move_client(
    (da, db): (&Daemon, &Daemon),
    (c, s): (&mut TcpStream, &TcpStream),
    (local, peer): (Ipv6Addr, Ipv6Addr),
    len: usize,
    seed: u8,
) {
    let ca = only_conn(da);
    let ok = da.request(&Request::Move {
        id: ca.id,
        local,
        peer,
    });
    assert!(ok.ok, "{:?}", ok.error);
    transfer(c, s, len, seed);
    let cb = wait_pair(db, peer, local);
    assert_eq!((cb.current.local, cb.current.peer), (peer, local), "{cb:?}");
}

/// Points the client's fallback route for the server's link-0 address at
/// link 0 (as after a route change), in table 4242.
fn fallback_route_on_link0(t: &TwoLinks) {
    let b0 = v6(&t.l0, &t.b);
    t.a.exec_ok([
        "ip",
        "-6",
        "route",
        "replace",
        &format!("{b0}/128"),
        "dev",
        t.l0.dev(&t.a),
        "table",
        "4242",
    ])
    .expect("route replaced");
}

/// Moves the client's connection to (`local`, `peer`), waits until the
/// server follows, silently drops link 0 and sends 8 MiB each way with
/// full-size segments; the connection stays on the new pair.
fn move_then_lose_link0(
    t: &TwoLinks,
    (da, db): (&Daemon, &Daemon),
    (c, s): (&mut TcpStream, &mut TcpStream),
    (local, peer): (Ipv6Addr, Ipv6Addr),
    seed: u8,
) {
    move_client((da, db), (c, s), (local, peer), 256 << 10, seed);
    t.l0.drop_both().expect("drop link 0");
    transfer(c, s, 8 << 20, seed + 1);
    transfer(s, c, 8 << 20, seed + 2);
    let (ca, cb) = (only_conn(da), only_conn(db));
    assert_eq!((ca.current.local, ca.current.peer), (local, peer), "{ca:?}");
    assert_eq!((cb.current.local, cb.current.peer), (peer, local), "{cb:?}");
}

#[test]
fn moved_connection_fits_a_smaller_mtu_bpf() {
    moved_to_a_smaller_mtu(5107, NO_SAMPLING);
}

#[test]
fn moved_connection_fits_a_smaller_mtu_nfqueue() {
    moved_to_a_smaller_mtu(5108, NO_SAMPLING_NO_BPF);
}

/// The new pair crosses a router whose next link carries at most 1280-byte
/// packets: the router answers the client's full-size segments with an
/// ICMPv6 Packet Too Big quoting the segment as it was on the wire (the new
/// pair). The daemon side must hand it to the socket on the original tuple
/// (which alone can learn the path MTU), or the connection stalls.
fn packet_too_big_on_the_new_path(port: u16, extra: &[&str]) {
    let lab = netlab::Lab::new().expect("lab");
    let a = lab.add_host("a").expect("host a");
    let b = lab.add_host("b").expect("host b");
    let r = lab.add_host("r").expect("host r");
    let l0 = lab.link(&a, &b).expect("link 0");
    let la = lab.link(&a, &r).expect("link a-r");
    let lb = lab.link(&r, &b).expect("link r-b");
    lab.wait_usable(Duration::from_secs(10)).expect("usable");
    lb.set_mtu(1280).expect("mtu");
    r.sysctl("net.ipv6.conf.all.forwarding", "1")
        .expect("forwarding");
    let (al, bl) = (v6(&la, &a), v6(&lb, &b));
    a.route_via(bl.into(), v6(&la, &r).into(), la.dev(&a))
        .expect("route via r");
    b.route_via(al.into(), v6(&lb, &r).into(), lb.dev(&b))
        .expect("route via r");
    let t = TwoLinks {
        lab,
        a,
        b,
        l0,
        l1: la,
    };
    let (da, db, _l, mut c, mut s) = setup(&t, port, extra);
    let ca = only_conn(&da);
    assert!(ca.peers.contains(&bl), "learned {bl}: {ca:?}");
    move_then_lose_link0(&t, (&da, &db), (&mut c, &mut s), (al, bl), 40);
    let counter = if da.bpf() {
        "bpf_icmp_translated"
    } else {
        "icmp_translated"
    };
    assert!(
        da.stat(counter) >= 1,
        "the Packet Too Big reached the socket through the daemon:\n{}",
        da.log()
    );
}

#[test]
fn packet_too_big_on_the_new_path_bpf() {
    packet_too_big_on_the_new_path(5109, NO_SAMPLING);
}

#[test]
fn packet_too_big_on_the_new_path_nfqueue() {
    packet_too_big_on_the_new_path(5110, NO_SAMPLING_NO_BPF);
}
