//! preservetcpd against peers without PreserveTCP, what goes on the wire
//! (tshark), and hostile option contents.

mod preservetcp_support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use preservetcp::checksum::set_tcp_checksum_v6;
use preservetcp::parse_ipv6_tcp;
use preservetcp::wire::{DestOptsHeader, PrefixOption};
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
    // The echoes hold only the accepted prefixes: 8 of the twenty, none
    // of the wrongly scoped ones; the malformed offer got no answer.
    let echoes: Vec<(u16, Option<usize>)> = pcap_ipv6_packets(&file)
        .iter()
        .filter_map(|p| {
            let v = parse_ipv6_tcp(p).ok()?;
            let f = v.tcp_header.flags;
            (f.syn && f.ack).then(|| {
                let n = v
                    .dest_opts
                    .and_then(|h| h.prefix_ack().map(|a| a.prefixes().len()));
                (v.tcp_header.dst_port, n)
            })
        })
        .collect();
    for (port, want) in [(41001u16, None), (41002, Some(8)), (41003, Some(0))] {
        assert!(
            echoes.contains(&(port, want)),
            "SYN+ACK to {port}: {echoes:?}"
        );
    }
    if db.bpf() {
        assert_eq!(db.stat("bpf_prefixes_rejected"), 12 + 2);
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

/// Thesis 5.3.8: a server whose listening socket is bound to one address
/// (the firewall case) offers and accepts no alternative addresses: its
/// SYN+ACK carries no PREFIX option (counted), while a wildcard listener's
/// does; both connections carry data. With the tc programs and with
/// `--no-bpf` (the daemon reads the listener's binding from
/// `/proc/net/tcp6`).
#[test]
fn bound_listener_gets_no_aliases() {
    bound_listener_round(&[]);
}

#[test]
fn bound_listener_gets_no_aliases_nfqueue() {
    bound_listener_round(&["--no-bpf"]);
}

fn bound_listener_round(extra: &[&str]) {
    let t = two_links();
    let (bound_port, wild_port) = (5002u16, 5001u16);
    let da = Daemon::start_with(&t.lab, &t.a, &[bound_port, wild_port], extra);
    let db = Daemon::start_with(&t.lab, &t.b, &[bound_port, wild_port], extra);
    let b0 = v6(&t.l0, &t.b);
    let bound =
        t.b.run(move || TcpListener::bind((b0, bound_port)))
            .expect("run")
            .expect("bind to the link-0 address");
    let wild =
        t.b.run(move || TcpListener::bind(("::", wild_port)))
            .expect("run")
            .expect("bind to the wildcard");
    let cap = t.l0.capture(&t.b).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    for (listener, port) in [(&bound, bound_port), (&wild, wild_port)] {
        let mut c =
            t.a.run(move || TcpStream::connect(SocketAddr::from((b0, port))))
                .expect("run")
                .expect("connect");
        let (mut s, _) = listener.accept().expect("accept");
        let data: Vec<u8> = (0..(256usize << 10)).map(|i| (i % 253) as u8).collect();
        c.write_all(&data).expect("write");
        let mut got = vec![0u8; data.len()];
        s.read_exact(&mut got).expect("read");
        assert!(got == data, "data intact on port {port}");
        s.write_all(b"back").expect("write back");
        let mut back = [0u8; 4];
        c.read_exact(&mut back).expect("read back");
        assert_eq!(&back, b"back");
    }
    std::thread::sleep(Duration::from_millis(300));
    let file = cap.stop().expect("stop capture");
    let synacks: Vec<(u16, Option<DestOptsHeader>)> = pcap_ipv6_packets(&file)
        .iter()
        .filter_map(|p| {
            let v = parse_ipv6_tcp(p).ok()?;
            let f = v.tcp_header.flags;
            (f.syn && f.ack).then(|| (v.tcp_header.src_port, v.dest_opts.clone()))
        })
        .collect();
    let of = |port: u16| {
        synacks
            .iter()
            .filter(|(p, _)| *p == port)
            .map(|(_, h)| h.clone())
            .collect::<Vec<_>>()
    };
    let bound_answers = of(bound_port);
    assert!(!bound_answers.is_empty(), "{synacks:?}");
    assert!(
        bound_answers.iter().all(Option::is_none),
        "a bound listener's SYN+ACK carries no options: {bound_answers:?}"
    );
    let wild_answers = of(wild_port);
    assert!(
        !wild_answers.is_empty()
            && wild_answers.iter().all(|h| h
                .as_ref()
                .is_some_and(|h| h.prefix_syn().is_some() && h.prefix_ack().is_some())),
        "a wildcard listener answers the offer: {wild_answers:?}"
    );
    if db.bpf() {
        assert_eq!(db.stat("bpf_listener_bound"), 1, "{}", db.log());
    } else {
        assert_eq!(db.stat("listener_bound"), 1, "{}", db.log());
    }
    assert_eq!(db.answers_sent(), 1);
    assert_eq!(da.stat("plain_peers"), 1, "the client saw a plain peer");
    assert_eq!(db.connections().len(), 1, "only the wildcard connection");
}

/// An IPv6 payload from `src` to `dst`: a destination options header
/// holding `opts` (option TLVs, padded to 8-octet units; none if `opts` is
/// empty), then a TCP header with these fields and an MSS of 1440, then
/// `data`. The TCP checksum is set.
#[allow(clippy::too_many_arguments)]
fn tcp_segment(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    opts: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&ports.0.to_be_bytes());
    seg.extend_from_slice(&ports.1.to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.extend_from_slice(&[0x60, flags, 0xff, 0xff, 0, 0, 0, 0]);
    seg.extend_from_slice(&[2, 4, 0x05, 0xa0]);
    seg.extend_from_slice(data);
    set_tcp_checksum_v6(src, dst, &mut seg);
    if opts.is_empty() {
        return seg;
    }
    let mut h = vec![6u8, 0];
    h.extend_from_slice(opts);
    match (8 - h.len() % 8) % 8 {
        0 => {}
        1 => h.push(0),
        n => {
            h.extend_from_slice(&[1, (n - 2) as u8]);
            h.extend(std::iter::repeat_n(0, n - 2));
        }
    }
    h[1] = (h.len() / 8 - 1) as u8;
    h.extend_from_slice(&seg);
    h
}

/// Sends `payload` (from [`tcp_segment`]) from `host` to `dst` through a
/// raw socket: protocol 60 when it starts with a destination options
/// header, else TCP.
fn send_raw(host: &netlab::Host, dst: Ipv6Addr, payload: Vec<u8>, dstopts: bool) {
    host.run(move || {
        let proto = if dstopts { 60 } else { 6 };
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(proto)),
        )
        .expect("raw socket");
        s.send_to(&payload, &SocketAddr::from((dst, 0)).into())
            .expect("send raw segment");
    })
    .expect("run");
}

/// A raw IPv6 TCP socket in `host`: it gets a copy of every TCP segment
/// the host receives (from the TCP header on).
fn tcp_tap(host: &netlab::Host) -> socket2::Socket {
    host.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::IPV6,
            socket2::Type::RAW,
            Some(socket2::Protocol::TCP),
        )
        .expect("raw TCP socket");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s
    })
    .expect("run")
}

/// The next segment `tap` receives to local port `port` with exactly the
/// flags `flags` (within 5 s): (source port, sequence number,
/// acknowledgment number).
fn next_segment(tap: &socket2::Socket, port: u16, flags: u8) -> (u16, u32, u32) {
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 2048];
    while t0.elapsed() < Duration::from_secs(5) {
        let Ok(n) = (&*tap).read(&mut buf) else {
            continue;
        };
        let s = &buf[..n];
        if n >= 20 && u16::from_be_bytes([s[2], s[3]]) == port && s[13] == flags {
            let word = |o: usize| u32::from_be_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
            return (u16::from_be_bytes([s[0], s[1]]), word(4), word(8));
        }
    }
    panic!("no segment with flags {flags:#x} to port {port}");
}

/// While alive, `host` sends no TCP RST (an nftables output rule): the
/// test plays one end of a connection with raw segments, which the
/// host's own TCP, knowing no socket for them, would otherwise reset.
struct NoRst<'a>(&'a netlab::Host);

impl<'a> NoRst<'a> {
    fn new(host: &'a netlab::Host) -> Self {
        host.exec_ok(["nft", "add", "table", "inet", "ptcptest"])
            .expect("nft table");
        host.exec_ok([
            "nft",
            "add chain inet ptcptest out { type filter hook output priority 0 ; }",
        ])
        .expect("nft chain");
        host.exec_ok(["nft", "add rule inet ptcptest out tcp flags rst drop"])
            .expect("nft rule");
        NoRst(host)
    }
}

impl Drop for NoRst<'_> {
    fn drop(&mut self) {
        let _ = self.0.exec(["nft", "delete", "table", "inet", "ptcptest"]);
    }
}

/// A connected TCP socket in `host` from `local` to `peer` whose
/// handshake the test did with raw segments: made with TCP_REPAIR, next
/// sequence number to send `snd`, next to receive `rcv`, MSS 1440, the
/// peer's (unscaled) window 65535.
fn repaired_socket(
    host: &netlab::Host,
    local: std::net::SocketAddrV6,
    peer: std::net::SocketAddrV6,
    snd: u32,
    rcv: u32,
) -> TcpStream {
    use std::os::fd::AsRawFd;
    host.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
            .expect("socket");
        let fd = s.as_raw_fd();
        let set = |name: libc::c_int, val: &[u8]| {
            // SAFETY: `val` is a live buffer of `val.len()` bytes holding
            // the option value the kernel reads for `name`; `fd` is open.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_TCP,
                    name,
                    val.as_ptr().cast(),
                    libc::socklen_t::try_from(val.len()).expect("len"),
                )
            };
            assert_eq!(
                r,
                0,
                "setsockopt {name}: {}",
                std::io::Error::last_os_error()
            );
        };
        let int = |v: i32| v.to_ne_bytes();
        set(libc::TCP_REPAIR, &int(1));
        set(libc::TCP_REPAIR_QUEUE, &int(2)); // TCP_SEND_QUEUE
        set(libc::TCP_QUEUE_SEQ, &snd.to_ne_bytes());
        set(libc::TCP_REPAIR_QUEUE, &int(1)); // TCP_RECV_QUEUE
        set(libc::TCP_QUEUE_SEQ, &rcv.to_ne_bytes());
        s.bind(&local.into()).expect("bind");
        s.connect(&peer.into()).expect("repair connect");
        // struct tcp_repair_opt { opt_code, opt_val }: TCPOPT_MSS 1440,
        // TCPOPT_WINDOW with both shifts 0 (the SYN+ACK offered no
        // scaling, so the windows are unscaled).
        let opts: Vec<u8> = [2u32, 1440, 3, 0]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        set(libc::TCP_REPAIR_OPTIONS, &opts);
        // struct tcp_repair_window: snd_wl1, snd_wnd, max_window, rcv_wnd,
        // rcv_wup.
        let w: Vec<u8> = [rcv, 65535, 65535, 65535, rcv]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        set(libc::TCP_REPAIR_WINDOW, &w);
        set(libc::TCP_REPAIR, &int(0));
        TcpStream::from(s)
    })
    .expect("run")
}

/// Sends 256 KiB from `from` to `to` and a short answer back, checking
/// both arrive intact.
fn carries_data(from: &mut TcpStream, to: &mut TcpStream, what: &str) {
    let data: Vec<u8> = (0..(256usize << 10))
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    let expect = data.clone();
    let mut writer = from.try_clone().expect("clone");
    let w = std::thread::spawn(move || writer.write_all(&data));
    let mut got = vec![0u8; expect.len()];
    to.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    to.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    w.join().expect("writer").expect("write");
    assert!(got == expect, "{what}: data differs");
    to.write_all(b"answer").expect("answer");
    let mut back = [0u8; 6];
    from.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    from.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("{what}: read answer: {e}"));
    assert_eq!(&back, b"answer", "{what}");
}

/// The PREFIX_ACK of the first segment from `src_port` with ACK and
/// without SYN in a capture (the client's echo), if it has one.
fn echo_in_ack(file: &std::path::Path, src_port: u16) -> Option<PrefixOption> {
    pcap_ipv6_packets(file).iter().find_map(|p| {
        let v = parse_ipv6_tcp(p).ok()?;
        let f = v.tcp_header.flags;
        (v.tcp_header.src_port == src_port && f.ack && !f.syn)
            .then(|| v.dest_opts.and_then(|h| h.prefix_ack().cloned()))
    })?
}

/// A client with the daemon meets hostile SYN+ACKs (the test plays the
/// server with raw segments): a malformed first PREFIX_SYN, too many
/// prefixes, prefixes of the wrong scope, a truncated option, non-zero
/// PadN, duplicate and trailing PREFIX options. Each is counted, the echo
/// in the client's ACK holds only what it accepted, headers the kernel
/// drops teach nothing (a clean SYN+ACK then completes the handshake), and
/// every connection carries data both ways afterwards.
#[test]
fn hostile_synack_towards_a_client_bpf() {
    hostile_synack_towards_a_client(&[]);
}

/// [`hostile_synack_towards_a_client_bpf`] with the handshake through
/// NFQUEUE (`--no-bpf`): the engine alone decides, with the same results.
#[test]
fn hostile_synack_towards_a_client_nfqueue() {
    hostile_synack_towards_a_client(&["--no-bpf"]);
}

fn hostile_synack_towards_a_client(extra: &[&str]) {
    let t = two_links();
    let ports: Vec<u16> = (0..6).map(|i| PORT + 100 + i).collect();
    let da = Daemon::start_with(&t.lab, &t.a, &ports, extra);
    assert_eq!(da.bpf(), extra.is_empty(), "{}", da.log());
    let (a0, b0, b1) = (v6(&t.l0, &t.a), v6(&t.l0, &t.b), v6(&t.l1, &t.b));
    let net = t.lab.v6_net().to_be_bytes();
    let glob = |k: u8| [0x20, 0x01, 0x0d, 0xb8, net[0], net[1], 0, k];
    let l1: [u8; 8] = b1.octets()[..8].try_into().expect("prefix");
    let good = prefix_opt(0x0B, &[(64, l1)]);
    let many: Vec<(u8, [u8; 8])> = (10..30).map(|k| (64, glob(k))).collect();
    let scoped = [
        (64, [0xfe, 0x80, 0, 0, 0, 0, 0, 0]),
        (64, [0xfd, 0x00, 0, 0, 0, 0, 0, 1]),
        (64, l1),
    ];
    struct Case {
        name: &'static str,
        opts: Vec<u8>,
        /// The kernel drops the SYN+ACK (a clean one follows).
        dropped: bool,
        /// Prefixes the client's echo holds (`None`: no echo).
        echoed: Option<usize>,
    }
    let cases = [
        Case {
            name: "malformed first PREFIX_SYN",
            opts: vec![0x0B, 4, 200, 1, 2, 3],
            dropped: false,
            echoed: None,
        },
        Case {
            name: "twenty prefixes",
            opts: prefix_opt(0x0B, &many),
            dropped: false,
            echoed: Some(8),
        },
        Case {
            name: "wrong scope",
            opts: prefix_opt(0x0B, &scoped),
            dropped: false,
            echoed: Some(1),
        },
        Case {
            name: "truncated option",
            opts: [&good[..], &[0x3e, 30, 1, 2]].concat(),
            dropped: true,
            echoed: None,
        },
        Case {
            name: "non-zero PadN",
            opts: [&good[..], &[1, 2, 0, 9]].concat(),
            dropped: true,
            echoed: None,
        },
        Case {
            name: "duplicate and trailing PREFIX options",
            opts: [
                &good[..],
                &prefix_opt(0x0B, &many[..2]),
                &[0x0B, 2, 64, 1, 0x0C, 0, 0x0C, 1, 200],
            ]
            .concat(),
            dropped: false,
            echoed: Some(1),
        },
    ];
    let _no_rst = NoRst::new(&t.b);
    let tap = tcp_tap(&t.b);
    let mut malformed = 0;
    for (i, case) in cases.iter().enumerate() {
        let before = |n: &str| da.stat(n);
        let (m0, bm0, over0, scope0) = (
            before("malformed_options"),
            if da.bpf() { before("bpf_malformed") } else { 0 },
            before("prefixes_rejected_over_limit"),
            before("prefixes_rejected_scope"),
        );
        let cap = t.l0.capture(&t.b).expect("capture");
        std::thread::sleep(Duration::from_millis(200));
        let port = PORT + 100 + i as u16;
        let client =
            t.a.spawn_thread(move || TcpStream::connect(SocketAddr::from((b0, port))))
                .expect("client thread");
        let (cport, isn, _) = next_segment(&tap, port, 0x02);
        let iss = 0x1000_0000u32.wrapping_mul(i as u32 + 1);
        let synack =
            |opts: &[u8]| tcp_segment(b0, a0, (port, cport), iss, isn + 1, 0x12, opts, &[]);
        send_raw(&t.b, a0, synack(&case.opts), true);
        if case.dropped {
            std::thread::sleep(Duration::from_millis(300));
            send_raw(&t.b, a0, synack(&[]), false);
        }
        let mut c = client
            .join()
            .expect("client")
            .unwrap_or_else(|e| panic!("{}: connect: {e}", case.name));
        let _ = next_segment(&tap, port, 0x10);
        let mut s = repaired_socket(
            &t.b,
            std::net::SocketAddrV6::new(b0, port, 0, 0),
            std::net::SocketAddrV6::new(a0, cport, 0, 0),
            iss + 1,
            isn + 1,
        );
        carries_data(&mut c, &mut s, case.name);
        std::thread::sleep(Duration::from_millis(200));
        let file = cap.stop().expect("stop");
        let echo = echo_in_ack(&file, cport);
        assert_eq!(
            echo.as_ref().map(|e| e.prefixes().len()),
            case.echoed,
            "{}: the client's echo {echo:?}",
            case.name
        );
        if case.dropped || case.echoed.is_none() {
            malformed += 1;
        }
        assert_eq!(
            da.stat("malformed_options") - m0,
            u64::from(case.dropped || case.echoed.is_none()),
            "{}: {}",
            case.name,
            da.log()
        );
        if da.bpf() {
            assert_eq!(
                da.stat("bpf_malformed") - bm0,
                u64::from(case.dropped || case.echoed.is_none()),
                "{}",
                case.name
            );
        }
        match case.name {
            "twenty prefixes" => {
                assert_eq!(da.stat("prefixes_rejected_over_limit") - over0, 12)
            }
            "wrong scope" => assert_eq!(da.stat("prefixes_rejected_scope") - scope0, 2),
            _ => {}
        }
        // Tracked exactly when the client echoed.
        std::thread::sleep(Duration::from_millis(200));
        let tracked = da
            .connections()
            .iter()
            .any(|c| c.original.local_port == cport);
        assert_eq!(tracked, case.echoed.is_some(), "{}", case.name);
    }
    assert_eq!(da.stat("malformed_options"), malformed);
    if da.bpf() {
        assert_eq!(da.stat("bpf_prefixes_rejected"), 12 + 2);
    }
}
