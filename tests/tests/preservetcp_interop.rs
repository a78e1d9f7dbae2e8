//! preservetcpd against peers without PreserveTCP, what goes on the wire
//! (tshark), and hostile option contents.

mod preservetcp_support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use preservetcp::checksum::set_tcp_checksum_v6;
use preservetcp_support::*;

const PORT: u16 = 5001;

/// Sends `len` bytes from `a` to a listener in `b` over `dst` and checks
/// they arrive unchanged.
fn echo_transfer(t: &TwoLinks, dst: Ipv6Addr, len: usize) {
    let listener =
        t.b.run(|| TcpListener::bind(("::", PORT)))
            .expect("run")
            .expect("bind");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 1000) as u8).collect();
    let expect = data.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    });
    let mut c =
        t.a.run(move || TcpStream::connect(SocketAddr::from((dst, PORT))))
            .expect("run")
            .expect("connect");
    c.write_all(&data).expect("write");
    drop(c);
    let got = server.join().expect("server");
    assert!(got == expect, "data differs ({} of {len} bytes)", got.len());
}

#[test]
fn client_daemon_with_plain_server() {
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    echo_transfer(&t, v6(&t.l0, &t.b), 4 << 20);
    assert!(da.offers_sent() >= 1, "{}", da.log());
    assert_eq!(
        da.stat("plain_peers"),
        1,
        "the peer did not answer the offer"
    );
    assert!(
        da.connections().is_empty(),
        "no alternative pairs for a plain peer"
    );
}

#[test]
fn server_daemon_with_plain_client() {
    let t = two_links();
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    echo_transfer(&t, v6(&t.l0, &t.b), 4 << 20);
    assert_eq!(db.answers_sent(), 0, "no offer, no answer");
    assert!(db.connections().is_empty());
}

fn tshark(args: &[&str]) -> String {
    let out = Command::new("tshark")
        .args(args)
        .output()
        .expect("tshark (Debian package tshark)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn options_only_on_handshake_and_tshark_parses_them() {
    let t = two_links();
    let _da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    let cap = t.l0.capture(&t.b).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    echo_transfer(&t, v6(&t.l0, &t.b), 1 << 20);
    std::thread::sleep(Duration::from_millis(300));
    let file = cap.stop().expect("stop capture");
    let f = file.to_str().expect("path");
    assert_eq!(db.answers_sent(), 1);
    let verbose = tshark(&["-r", f, "-V"]);
    assert!(verbose.contains("Destination Options"), "options captured");
    assert!(!verbose.contains("Malformed"), "tshark: malformed packet");
    assert!(
        !verbose.contains("Expert Info (Error"),
        "tshark expert error"
    );
    // Frames with a destination options header: flags and option types.
    let rows = tshark(&[
        "-r",
        f,
        "-Y",
        "ipv6.dstopts",
        "-T",
        "fields",
        "-e",
        "tcp.flags",
        "-e",
        "ipv6.opt.type",
        "-e",
        "tcp.len",
    ]);
    let rows: Vec<Vec<&str>> = rows
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "SYN, SYN+ACK and the ACK carry options: {rows:?}"
    );
    assert_eq!(rows[0][0], "0x0002", "SYN");
    assert!(rows[0][1].contains("0x0b") && !rows[0][1].contains("0x0c"));
    assert_eq!(rows[1][0], "0x0012", "SYN+ACK");
    assert!(rows[1][1].contains("0x0b") && rows[1][1].contains("0x0c"));
    assert_eq!(rows[2][0], "0x0010", "the ACK of the SYN+ACK");
    assert!(rows[2][1].contains("0x0c") && !rows[2][1].contains("0x0b"));
    assert!(
        rows.iter().all(|r| r[2] == "0"),
        "no data segment carries options"
    );
}

/// A SYN from `src`:`sport` to `dst`:PORT with a destination options
/// header holding `opts` (option TLVs, padded here to 8-octet units).
fn raw_syn(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, opts: &[u8]) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&PORT.to_be_bytes());
    seg.extend_from_slice(&[
        0, 0, 0x10, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    set_tcp_checksum_v6(src, dst, &mut seg);
    let mut h = vec![6u8, 0];
    h.extend_from_slice(opts);
    let pad = (8 - h.len() % 8) % 8;
    match pad {
        0 => {}
        1 => h.push(0),
        n => {
            h.push(1);
            h.push((n - 2) as u8);
            h.extend(std::iter::repeat_n(0, n - 2));
        }
    }
    h[1] = (h.len() / 8 - 1) as u8;
    h.extend_from_slice(&seg);
    h
}

fn prefix_opt(ty: u8, prefixes: &[(u8, [u8; 8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (len, bytes) in prefixes {
        data.push(*len);
        data.extend_from_slice(&bytes[..usize::from(len.div_ceil(8)).min(8)]);
    }
    let mut o = vec![ty, data.len() as u8];
    o.extend(data);
    o
}

#[test]
fn hostile_options_are_counted_and_ignored() {
    let t = two_links();
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    let _listener =
        t.b.run(|| TcpListener::bind(("::", PORT)))
            .expect("run")
            .expect("bind");
    let src = v6(&t.l0, &t.a);
    let dst = v6(&t.l0, &t.b);
    let net = t.lab.v6_net().to_be_bytes();
    let glob = |k: u8| [0x20, 0x01, 0x0d, 0xb8, net[0], net[1], 0, k];
    // 1: a prefix length of 200 bits (malformed); 2: twenty prefixes;
    // 3: link-local and unique-local prefixes for a global connection.
    let malformed = vec![0x0B, 4, 200, 1, 2, 3];
    let many: Vec<(u8, [u8; 8])> = (10..30).map(|k| (64, glob(k))).collect();
    let scoped = [
        (64, [0xfe, 0x80, 0, 0, 0, 0, 0, 0]),
        (64, [0xfd, 0x00, 0, 0, 0, 0, 0, 1]),
    ];
    let cases = [
        (41001u16, malformed),
        (41002, prefix_opt(0x0B, &many)),
        (41003, prefix_opt(0x0B, &scoped)),
    ];
    let cap = t.l0.capture(&t.a).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    t.a.run(move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(60)),
        )
        .expect("raw socket");
        for (sport, opts) in &cases {
            let p = raw_syn(src, dst, *sport, opts);
            s.send_to(&p, &SocketAddr::from((dst, 0)).into())
                .expect("send raw SYN");
        }
    })
    .expect("run");
    std::thread::sleep(Duration::from_millis(500));
    let file = cap.stop().expect("stop");
    assert_eq!(db.stat("malformed_options"), 1, "{}", db.log());
    if db.bpf() {
        // The kernel's parse refuses it too: no answer, nothing stored.
        assert_eq!(db.stat("bpf_malformed"), 1, "{}", db.log());
        assert_eq!(db.stat("bpf_learned"), 2);
    }
    assert_eq!(db.stat("prefixes_rejected_over_limit"), 12);
    assert_eq!(db.stat("prefixes_rejected_scope"), 2);
    // The kernel answered every crafted SYN: the connections proceeded.
    let answers = tshark(&[
        "-r",
        file.to_str().expect("path"),
        "-Y",
        "tcp.flags.syn == 1 && tcp.flags.ack == 1",
        "-T",
        "fields",
        "-e",
        "tcp.dstport",
    ]);
    for port in ["41001", "41002", "41003"] {
        assert!(
            answers.lines().any(|l| l.trim() == port),
            "no SYN+ACK for {port}: {answers}"
        );
    }
    // A normal connection is unaffected.
    let _da = Daemon::start(&t.lab, &t.a, &[PORT]);
    drop(_listener);
    echo_transfer(&t, dst, 1 << 20);
}

/// A socket opted in with `preservetcp::opt_in` (SO_MARK) is covered
/// without any configured port, and the control socket moves it to link 1;
/// the server follows and the data stays intact.
#[test]
fn socket_opt_in_and_control_move() {
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[]);
    let db = Daemon::start(&t.lab, &t.b, &[]);
    let listener =
        t.b.run(|| TcpListener::bind(("::", 6000)))
            .expect("run")
            .expect("bind");
    let dst = SocketAddr::from((v6(&t.l0, &t.b), 6000));
    let mut c: TcpStream =
        t.a.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            preservetcp::opt_in(&s)?;
            s.connect(&dst.into())?;
            std::io::Result::Ok(s.into())
        })
        .expect("run")
        .expect("opted-in connect");
    let (mut srv, _) = listener.accept().expect("accept");
    c.write_all(b"before").expect("write");
    let mut buf = [0u8; 6];
    srv.read_exact(&mut buf).expect("read");
    std::thread::sleep(Duration::from_millis(200));
    let conns = da.connections();
    assert_eq!(conns.len(), 1, "the marked socket is covered: {conns:?}");
    let (a1, b1) = (v6(&t.l1, &t.a), v6(&t.l1, &t.b));
    // A pair that is not the connection's is refused.
    let bad = da.request(&preservetcp::control::Request::Move {
        id: conns[0].id,
        local: a1,
        peer: "2001:db8::99".parse().expect("addr"),
    });
    assert!(!bad.ok);
    let ok = da.request(&preservetcp::control::Request::Move {
        id: conns[0].id,
        local: a1,
        peer: b1,
    });
    assert!(ok.ok, "{:?}", ok.error);
    // Link 0 silently dies: only the moved path can carry the data now.
    t.l0.drop_both().expect("drop");
    let data: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 251) as u8).collect();
    let expect = data.clone();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expect.len()];
        srv.read_exact(&mut got).expect("read after move");
        (got == expect, srv)
    });
    c.write_all(&data).expect("write after move");
    let (same, srv) = reader.join().expect("reader");
    assert!(same, "data intact after the move");
    drop(srv);
    let sc = db.connections();
    assert_eq!(sc.len(), 1);
    assert_eq!(sc[0].current.local, b1, "server followed: {sc:?}");
    assert_eq!(sc[0].last_reason.as_deref(), Some("peer_moved"));
}

/// Incoming handshake packets are only learned (NFLOG), never held in
/// NFQUEUE: both daemons track the connections, nothing went through the
/// incoming queue, and data sent right after `connect` (which can overtake
/// the client's ACK while that waits for its PREFIX_ACK) does not keep the
/// server from learning the PREFIX_ACK.
#[test]
fn handshake_is_learned_without_holding_incoming_packets() {
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    let listener =
        t.b.run(|| TcpListener::bind(("::", PORT)))
            .expect("run")
            .expect("bind");
    let dst = SocketAddr::from((v6(&t.l0, &t.b), PORT));
    let mut keep = Vec::new();
    for i in 0..5u8 {
        let mut c =
            t.a.run(move || TcpStream::connect(dst))
                .expect("run")
                .expect("connect");
        c.write_all(&[i; 100]).expect("write at once");
        let (mut s, _) = listener.accept().expect("accept");
        let mut b = [0u8; 100];
        s.read_exact(&mut b).expect("read");
        assert_eq!(b, [i; 100]);
        keep.push((c, s));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(da.connections().len(), 5, "client tracks all");
    assert_eq!(db.connections().len(), 5, "server tracks all");
    for d in [&da, &db] {
        assert_eq!(d.stat("packets_in"), 0, "nothing queued inbound");
    }
    // Client: the 5 SYN+ACKs; server: 5 SYNs and 5 ACKs with PREFIX_ACK.
    assert_eq!(da.stat("learned_in"), 5, "{}", da.log());
    assert_eq!(db.stat("learned_in"), 10, "{}", db.log());
    assert_eq!(db.answers_sent(), 5);
    if da.bpf() && db.bpf() {
        // The kernel inserted every option: nothing was queued outbound.
        assert_eq!(da.stat("packets_out"), 0);
        assert_eq!(db.stat("packets_out"), 0);
        assert_eq!(da.stat("bpf_ack_echoes"), 5);
    } else {
        // Client: 5 SYNs and 5 ACKs queued; server: 5 SYN+ACKs. Data never.
        assert_eq!(da.stat("packets_out"), 10);
        assert_eq!(db.stat("packets_out"), 5);
    }
}
