//! The handshake in the kernel: preservetcpd's tc BPF programs insert the
//! PREFIX options, so no handshake packet enters NFQUEUE, while the wire
//! bytes are exactly those of the NFQUEUE path (`--no-bpf`, the engine's
//! codec) and a migration still works.

mod preservetcp_support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use preservetcp::packet::parse_ipv6_tcp;
use preservetcp::wire::{DestOptsHeader, IPPROTO_TCP, Prefix, PrefixOption};
use preservetcp_support::*;

const PORT: u16 = 5001;

/// TCP flags (SYN, ACK) and the raw destination options header of every
/// packet of the connection with client port `cport` that carries one.
fn option_headers(pkts: &[Vec<u8>], cport: u16) -> Vec<((bool, bool), Vec<u8>)> {
    pkts.iter()
        .filter_map(|p| {
            let v = parse_ipv6_tcp(p).ok()?;
            let th = v.tcp_header;
            if th.src_port != cport && th.dst_port != cport {
                return None;
            }
            let h = v.dest_opts.as_ref()?;
            assert_eq!(p[6], 60, "the header follows the fixed IPv6 header");
            let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
            assert_eq!(plen + 40, p.len(), "payload length covers the header");
            Some(((th.flags.syn, th.flags.ack), p[40..40 + h.len()].to_vec()))
        })
        .collect()
}

/// Connects from `a` over link 0 (kept open), exchanges a few bytes and
/// returns both ends and the client's port.
fn connect(t: &TwoLinks, listener: &TcpListener) -> (TcpStream, TcpStream, u16) {
    let (mut c, mut s) = connect_l0(t, listener, PORT);
    c.write_all(b"hello").expect("write");
    let mut b = [0u8; 5];
    s.read_exact(&mut b).expect("read");
    s.write_all(b"olleh").expect("write back");
    c.read_exact(&mut b).expect("read back");
    let port = c.local_addr().expect("local addr").port();
    (c, s, port)
}

/// BPF daemons on both hosts (covering `PORT`) and a listener on b.
fn bpf_daemons(t: &TwoLinks) -> (Daemon, Daemon, TcpListener) {
    let (da, db, listener) = daemons_and_listener(t, PORT, &[]);
    assert!(da.bpf() && db.bpf(), "{}\n{}", da.log(), db.log());
    (da, db, listener)
}

fn prefix_opt(a: Ipv6Addr) -> PrefixOption {
    PrefixOption::new(vec![Prefix::from_addr(a, 64).expect("prefix")]).expect("option")
}

/// With BPF (the default) no handshake packet is ever queued — neither
/// host's NFQUEUE saw a single packet, the engines saw none outbound or
/// inbound — yet both daemons track the connection, and the three option
/// headers on the wire are byte for byte the engine's (the codec's
/// encoding of the expected offers and echoes) and the same as with
/// `--no-bpf`. After a restart (back to BPF) a connection still migrates
/// to link 1 when link 0 dies, and the server follows.
#[test]
fn handshake_in_the_kernel_matches_the_engine_and_migrates() {
    let t = two_links();
    let (a0, a1) = (v6(&t.l0, &t.a), v6(&t.l1, &t.a));
    let (b0, b1) = (v6(&t.l0, &t.b), v6(&t.l1, &t.b));
    let listener = listen(&t.b, PORT);
    let expected = [
        (
            (true, false),
            DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(prefix_opt(a1)), None)
                .expect("SYN header")
                .to_bytes(),
        ),
        (
            (true, true),
            DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(prefix_opt(b1)), Some(prefix_opt(a1)))
                .expect("SYN+ACK header")
                .to_bytes(),
        ),
        (
            (false, true),
            DestOptsHeader::with_prefixes(IPPROTO_TCP, None, Some(prefix_opt(b1)))
                .expect("ACK header")
                .to_bytes(),
        ),
    ];

    // 1. BPF: nothing queued, options on the wire.
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    assert!(
        da.bpf() && db.bpf(),
        "BPF loaded: {}\n{}",
        da.log(),
        db.log()
    );
    assert!(da.stat("bpf_links") >= 2, "attached to both links");
    let cap = t.l0.capture(&t.b).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    let (c1, s1, port1) = connect(&t, &listener);
    std::thread::sleep(Duration::from_millis(300));
    let file = cap.stop().expect("stop capture");
    let bpf_headers = option_headers(&pcap_ipv6_packets(&file), port1);
    assert_eq!(
        (nfqueue_queued(&t.a), nfqueue_queued(&t.b)),
        (0, 0),
        "no packet entered NFQUEUE"
    );
    for d in [&da, &db] {
        assert_eq!((d.stat("packets_out"), d.stat("packets_in")), (0, 0));
        assert_eq!(d.stat("bpf_skipped_mtu") + d.stat("bpf_skipped_error"), 0);
    }
    assert_eq!(da.stat("bpf_syn_offers"), 1);
    assert_eq!(da.stat("bpf_ack_echoes"), 1);
    assert_eq!(db.stat("bpf_synack_answers"), 1);
    assert_eq!(
        (da.stat("bpf_learned"), db.stat("bpf_learned")),
        (1, 1),
        "the SYN+ACK's and the SYN's PREFIX_SYN"
    );
    let (ca, cb) = (da.connections(), db.connections());
    assert_eq!((ca.len(), cb.len()), (1, 1), "{}\n{}", da.log(), db.log());
    assert_eq!(ca[0].peers, vec![b0, b1]);
    assert_eq!(ca[0].locals, vec![a0, a1]);
    assert_eq!(cb[0].peers, vec![a0, a1]);
    assert_eq!(cb[0].locals, vec![b0, b1]);
    assert_eq!(
        bpf_headers, expected,
        "SYN, SYN+ACK, ACK carry the engine's headers, nothing else does"
    );
    drop((c1, s1));
    // b's daemon exits (SIGTERM) and its programs go with it: b answers
    // a's next offer with a plain SYN+ACK (attached programs would still
    // have answered it).
    db.proc
        .signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    db.proc
        .wait_timeout(Duration::from_secs(5))
        .expect("daemon exits");
    let (c, s, _) = connect(&t, &listener);
    drop((c, s));
    assert_eq!(da.stat("bpf_syn_offers"), 2, "offered again");
    assert_eq!(da.stat("plain_peers"), 1, "plain answer: {}", da.log());
    drop(da);

    // 2. The same handshake through NFQUEUE: identical header bytes.
    let da = Daemon::start_with(&t.lab, &t.a, &[PORT], &["--no-bpf"]);
    let db = Daemon::start_with(&t.lab, &t.b, &[PORT], &["--no-bpf"]);
    assert!(!da.bpf() && !db.bpf());
    let cap = t.l0.capture(&t.b).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    let (c2, s2, port2) = connect(&t, &listener);
    std::thread::sleep(Duration::from_millis(300));
    let file = cap.stop().expect("stop capture");
    assert_ne!(port1, port2);
    let nfq_headers = option_headers(&pcap_ipv6_packets(&file), port2);
    assert_eq!(nfq_headers, bpf_headers, "same bytes on both paths");
    assert!(
        nfqueue_queued(&t.a) >= 2,
        "the NFQUEUE path queued the SYN and ACK"
    );
    drop((c2, s2));
    drop((da, db));

    // 3. BPF again after the restart: a connection migrates.
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    assert!(da.bpf() && db.bpf());
    let (mut c, mut s, _) = connect(&t, &listener);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!((nfqueue_queued(&t.a), nfqueue_queued(&t.b)), (0, 0));
    let conns = da.connections();
    assert_eq!(conns.len(), 1, "{}", da.log());
    da.move_to(conns[0].id, a1, b1);
    t.l0.drop_both().expect("drop link 0");
    let data: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 253) as u8).collect();
    let expect = data.clone();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expect.len()];
        s.read_exact(&mut got).expect("read after the move");
        s.write_all(b"done").expect("answer after the move");
        got == expect
    });
    c.write_all(&data).expect("write after the move");
    let mut done = [0u8; 4];
    c.read_exact(&mut done).expect("answer");
    assert!(reader.join().expect("reader"), "data intact after the move");
    assert_eq!(&done, b"done");
    let sc = db.connections();
    assert_eq!(sc.len(), 1);
    assert_eq!(sc[0].current.local, b1, "server followed: {sc:?}");
    assert_eq!(sc[0].last_reason.as_deref(), Some("peer_moved"));
}

/// A handshake packet that would grow past the link MTU keeps no option
/// (counted as skipped) and still goes out: with TCP Fast Open the SYN
/// carries as much data as the MTU allows (up to the 40-byte option
/// reserve), and six more addresses make the client's offer header 72
/// bytes. The connection is then plain TCP (the server got no offer); a
/// SYN without data still gets the offer.
#[test]
fn oversized_syn_keeps_no_option() {
    let t = two_links();
    // Client: Fast Open without cookies (0x1 | 0x4); server: Fast Open
    // data accepted without a cookie or socket option (0x2 | 0x200 | 0x400).
    t.a.sysctl("net.ipv4.tcp_fastopen", "5").expect("sysctl");
    t.b.sysctl("net.ipv4.tcp_fastopen", "1538").expect("sysctl");
    let net = t.lab.v6_net();
    let dev = t.l1.dev(&t.a).to_string();
    for k in 10..16u16 {
        let addr = format!("2001:db8:{net:x}:{k:x}::1/64");
        t.a.exec_ok(["ip", "-6", "addr", "add", &addr, "dev", &dev, "nodad"])
            .expect("extra address");
    }
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let _db = Daemon::start(&t.lab, &t.b, &[PORT]);
    assert!(da.bpf());
    let listener = listen(&t.b, PORT);
    let dst = SocketAddr::from((v6(&t.l0, &t.b), PORT));
    let data: Vec<u8> = (0..4000).map(|i| (i % 241) as u8).collect();
    let sent = data.clone();
    let c: TcpStream =
        t.a.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            let n = s.send_to_with_flags(&sent, &dst.into(), libc::MSG_FASTOPEN)?;
            assert!(n > 0);
            let mut c: TcpStream = s.into();
            c.write_all(&sent[n..])?;
            std::io::Result::Ok(c)
        })
        .expect("run")
        .expect("fast open connect");
    let (mut s, _) = listener.accept().expect("accept");
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).expect("read");
    assert!(got == data, "data intact");
    drop((c, s));
    assert_eq!(da.stat("bpf_skipped_mtu"), 1, "{}", da.log());
    assert_eq!(da.stat("bpf_syn_offers"), 0);
    // A SYN without data has room for the offer.
    let (c, s, _) = connect(&t, &listener);
    drop((c, s));
    assert_eq!(da.stat("bpf_syn_offers"), 1);
    assert_eq!(da.stat("bpf_skipped_mtu"), 1);
}

/// A link that appears while the daemons run gets the programs too (the
/// daemon follows links through rtnetlink), and a connection over it
/// carries the options: the offer now also holds the new link's prefix.
#[test]
fn links_that_appear_later_get_the_programs() {
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    assert_eq!((da.stat("bpf_links"), db.stat("bpf_links")), (2, 2));
    let l2 = t.lab.link(&t.a, &t.b).expect("link 2");
    t.lab.wait_usable(Duration::from_secs(10)).expect("usable");
    let t0 = std::time::Instant::now();
    while da.stat("bpf_links") < 3 || db.stat("bpf_links") < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "new link not attached: {}\n{}",
            da.log(),
            db.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let listener = listen(&t.b, PORT);
    let dst = SocketAddr::from((v6(&l2, &t.b), PORT));
    let mut c =
        t.a.run(move || TcpStream::connect(dst))
            .expect("run")
            .expect("connect over the new link");
    let (mut s, _) = listener.accept().expect("accept");
    c.write_all(b"new").expect("write");
    let mut b = [0u8; 3];
    s.read_exact(&mut b).expect("read");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(da.stat("bpf_syn_offers"), 1);
    assert_eq!(db.stat("bpf_synack_answers"), 1);
    assert_eq!(da.stat("bpf_ack_echoes"), 1);
    let conns = da.connections();
    assert_eq!(conns.len(), 1, "{}", da.log());
    assert_eq!(
        conns[0].peers.len(),
        3,
        "all three of b's prefixes: {conns:?}"
    );
    assert_eq!(conns[0].original.peer, v6(&l2, &t.b));
    assert_eq!(nfqueue_queued(&t.a) + nfqueue_queued(&t.b), 0);
}

/// Waits until `cond` holds (10 s at most), with the daemons' logs in the
/// failure message.
fn wait_for(what: &str, logs: &[&Daemon], mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        let all: Vec<String> = logs.iter().map(|d| d.log()).collect();
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: {}",
            all.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The client's kernel answers a SYN+ACK for a socket that is gone with a
/// RST: that RST is the first segment after a SYN+ACK that answered our
/// offer, yet it must not carry the PREFIX_ACK echo (the echo belongs to
/// the ACK of a handshake that completes).
#[test]
fn rst_never_carries_the_echo() {
    let t = two_links();
    let (da, db, _listener) = bpf_daemons(&t);
    // a's kernel never sees the SYN+ACK (its ingress program runs before
    // netfilter and learns it).
    let drop_rule = [
        "INPUT",
        "-p",
        "tcp",
        "--sport",
        "5001",
        "--tcp-flags",
        "SYN,ACK",
        "SYN,ACK",
        "-j",
        "DROP",
    ];
    let rule = |op: &str| {
        let mut args = vec!["ip6tables", "-w", op];
        args.extend(drop_rule);
        t.a.exec_ok(args).expect("ip6tables");
    };
    rule("-I");
    let cap = t.l0.capture(&t.b).expect("capture");
    std::thread::sleep(Duration::from_millis(300));
    let dst = SocketAddr::from((v6(&t.l0, &t.b), PORT));
    let port =
        t.a.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            let _ = s.connect(&dst.into());
            std::thread::sleep(Duration::from_millis(300));
            let port = s.local_addr()?.as_socket().map(|a| a.port()).unwrap_or(0);
            // Closing a connecting socket sends nothing.
            drop(s);
            std::io::Result::Ok(port)
        })
        .expect("run")
        .expect("connect");
    assert_ne!(port, 0);
    assert_eq!(da.stat("bpf_learned"), 1, "the SYN+ACK was learned");
    // The server retransmits its SYN+ACK (after 1 s); now a's kernel gets
    // it and answers with a RST.
    let out_rsts = || {
        t.a.exec_ok(["nstat", "-asz", "TcpOutRsts"])
            .expect("nstat")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let rsts_before = out_rsts();
    rule("-D");
    wait_for("no RST", &[&da, &db], || out_rsts() > rsts_before);
    std::thread::sleep(Duration::from_millis(300));
    let file = cap.stop().expect("stop capture");
    let pkts = pcap_ipv6_packets(&file);
    let rsts: Vec<_> = pkts
        .iter()
        .filter_map(|p| parse_ipv6_tcp(p).ok())
        .filter(|v| v.tcp_header.src_port == port && v.tcp_header.flags.rst)
        .collect();
    assert!(
        !rsts.is_empty(),
        "the RST is on the wire: {:?}",
        pkts.iter()
            .filter_map(|p| parse_ipv6_tcp(p).ok())
            .map(|v| (
                v.tcp_header.src_port,
                v.tcp_header.dst_port,
                v.tcp_header.flags
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        rsts.iter().all(|v| v.dest_opts.is_none()),
        "no option on the RST"
    );
    assert_eq!(da.stat("bpf_ack_echoes"), 0, "no echo: {}", da.log());
    assert!(db.connections().is_empty(), "no PREFIX_ACK reached b");
}

/// Links are followed by interface index: a link deleted and re-created
/// under the same name (at once, before the daemon looks) gets the
/// programs again, and a renamed link is not attached a second time.
#[test]
fn links_are_followed_by_index() {
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    assert!(da.bpf());
    let attached_lines = |d: &Daemon, name: &str| {
        d.log()
            .lines()
            .filter(|l| l.contains("bpf: attached to") && l.split([' ', ',']).any(|w| w == name))
            .count()
    };
    let batch = |cmds: &str| {
        t.a.exec_ok(["sh", "-c", &format!("printf '{cmds}' | ip -batch -")])
            .expect("ip -batch");
    };
    batch("link add ptx0 type veth peer name ptx1\\nlink set ptx0 up\\nlink set ptx1 up\\n");
    wait_for("veth pair attached", &[&da], || {
        attached_lines(&da, "ptx0") == 1 && attached_lines(&da, "ptx1") == 1
    });
    let before = da.stat("bpf_links");
    // Deleted and re-created in one go: new interfaces under old names.
    batch(
        "link del ptx0\\nlink add ptx0 type veth peer name ptx1\\nlink set ptx0 up\\nlink set ptx1 up\\n",
    );
    wait_for("re-created pair attached again", &[&da], || {
        attached_lines(&da, "ptx0") == 2 && attached_lines(&da, "ptx1") == 2
    });
    assert_eq!(da.stat("bpf_links"), before, "the old interfaces forgotten");
    // Renamed: the same interface, attached once.
    batch("link set ptx1 down\\nlink set ptx1 name ptx9\\nlink set ptx9 up\\n");
    // Another link afterwards: once it is attached, the rename was seen.
    batch("link add ptx2 type veth peer name ptx3\\nlink set ptx2 up\\nlink set ptx3 up\\n");
    wait_for("second pair attached", &[&da], || {
        attached_lines(&da, "ptx2") == 1
    });
    assert!(
        !da.log().contains("ptx9"),
        "renamed link attached again: {}",
        da.log()
    );
    assert_eq!(da.stat("bpf_links"), before + 2);
}

/// The egress program decides coverage itself: a socket with some other
/// mark (here the bit an earlier version used to flag offers) on a port
/// the daemon does not cover gets no offer, one marked with
/// `OPT_IN_MARK` on that port does, and so does a covered port. SIGTERM
/// ends the daemon through its clean-up (exit 0).
#[test]
fn only_the_opt_in_mark_or_a_covered_port_makes_an_offer() {
    const OTHER: u16 = 5002;
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let db = Daemon::start(&t.lab, &t.b, &[PORT]);
    assert!(da.bpf() && db.bpf());
    let other = listen(&t.b, OTHER);
    let dst = SocketAddr::from((v6(&t.l0, &t.b), OTHER));
    let marked = move |mark: u32| {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_mark(mark)?;
        s.connect(&dst.into())?;
        std::io::Result::Ok(TcpStream::from(s))
    };
    let c: TcpStream =
        t.a.run(move || marked(0x2000_0000))
            .expect("run")
            .expect("marked connect");
    let (s, _) = other.accept().expect("accept");
    drop((c, s));
    assert_eq!(da.stat("bpf_syn_offers"), 0, "{}", da.log());
    assert_eq!(db.stat("bpf_synack_answers"), 0, "{}", db.log());
    let c: TcpStream =
        t.a.run(move || marked(preservetcp::control::OPT_IN_MARK | 0x17))
            .expect("run")
            .expect("opted-in connect");
    let (s, _) = other.accept().expect("accept");
    drop((c, s));
    assert_eq!(da.stat("bpf_syn_offers"), 1, "{}", da.log());
    assert_eq!(db.stat("bpf_synack_answers"), 1, "{}", db.log());
    let listener = listen(&t.b, PORT);
    let (c, s, _) = connect(&t, &listener);
    drop((c, s));
    assert_eq!(da.stat("bpf_syn_offers"), 2, "{}", da.log());
    db.terminate(Duration::from_secs(5));
}

/// The base chains (hooks) of every nftables table in `host` (iptables-nft
/// rules are nftables tables too), one line each.
fn hooks(host: &netlab::Host) -> Vec<String> {
    host.exec_ok(["nft", "list", "ruleset"])
        .expect("nft list ruleset")
        .lines()
        .filter(|l| l.contains(" hook "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Entries in the namespace's conntrack table (0 also when conntrack was
/// never turned on in it).
fn conntrack_entries(host: &netlab::Host) -> u64 {
    host.exec_ok([
        "sh",
        "-c",
        "cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo 0",
    ])
    .expect("conntrack count")
    .trim()
    .parse()
    .expect("a number")
}

/// Sets read timeouts on both ends, passes a first MiB c→s and waits until
/// both daemons track the connection.
fn pass_until_tracked(
    da: &Daemon,
    db: &Daemon,
    (c, s): (&mut TcpStream, &mut TcpStream),
    what: &str,
) {
    read_timeouts(&[c, s]);
    pass(c, s, 1);
    wait_until(what, || {
        da.connections().len() == 1 && db.connections().len() == 1
    });
}

/// Passes data c→s (seeds counting up from `seed`) until b's daemon `db`
/// has the connection on its local address `b`.
fn pass_until_followed(
    db: &Daemon,
    (c, s): (&mut TcpStream, &mut TcpStream),
    mut seed: u8,
    b: Ipv6Addr,
    what: &str,
) {
    wait_until(what, || {
        pass(c, s, seed);
        seed = seed.wrapping_add(1);
        db.connections()[0].current.local == b
    });
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends 1 MiB from `from` to `to` (read concurrently) and checks it.
fn pass(from: &mut TcpStream, to: &mut TcpStream, seed: u8) {
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8 ^ seed).collect();
    let expect = data.clone();
    let mut to = to.try_clone().expect("clone");
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expect.len()];
        to.read_exact(&mut got).expect("read");
        got == expect
    });
    from.write_all(&data).expect("write");
    assert!(reader.join().expect("reader"), "data intact");
}

/// No netfilter hook of ours, before or after a move: with the BPF
/// programs both daemons learn the handshake from the ring buffer copies,
/// and a moved connection's segments are rewritten and redirected by the
/// programs too, so neither namespace has a single base chain (and no
/// conntrack) while data flows on the original pair, on the pair it was
/// moved to, and back on the original one.
#[test]
fn unmoved_connections_meet_no_netfilter_hook() {
    let t = two_links();
    let (da, db, listener) = bpf_daemons(&t);
    let (mut c, mut s, _) = connect(&t, &listener);
    for x in [&c, &s] {
        x.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        x.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    pass(&mut c, &mut s, 1);
    for (h, d) in [(&t.a, &da), (&t.b, &db)] {
        assert_eq!(hooks(h), Vec::<String>::new(), "{}: {}", h.name(), d.log());
        assert_eq!(conntrack_entries(h), 0, "{}", h.name());
        assert!(d.stat("bpf_learn_events") >= 1, "{}", d.log());
        assert_eq!(d.connections().len(), 1, "tracked: {}", d.log());
        assert_eq!(d.stat("bpf_alt_rewrites"), 0, "nothing moved yet");
    }

    // A move: the programs rewrite on both hosts (the server follows),
    // data flows both ways, and still no hook exists.
    let (a0, a1) = (v6(&t.l0, &t.a), v6(&t.l1, &t.a));
    let (b0, b1) = (v6(&t.l0, &t.b), v6(&t.l1, &t.b));
    let id = da.connections()[0].id;
    da.move_to(id, a1, b1);
    pass(&mut c, &mut s, 2);
    pass(&mut s, &mut c, 3);
    wait_until("server followed", || {
        db.connections()[0].current.local == b1
    });
    for (h, d) in [(&t.a, &da), (&t.b, &db)] {
        assert_eq!(hooks(h), Vec::<String>::new(), "{}: {}", h.name(), d.log());
        assert_eq!(conntrack_entries(h), 0, "{}", h.name());
        assert!(d.stat("bpf_alt_rewrites") > 0, "{}", d.log());
        // (The server's first answers go out in its follow window.)
        assert!(
            d.stat("bpf_moved_rewrites") + d.stat("bpf_follow_rewrites") > 0,
            "{}",
            d.log()
        );
        assert_eq!(nfqueue_queued(h), 0, "nothing queued: {}", h.name());
    }
    assert!(db.stat("bpf_alt_reports") >= 1, "the server saw the move");

    // Back to the original pair (after the server's follow hold, see
    // preservetcp::policy): the server follows back (it sees the client's
    // segments on the original tuple), no rewriting is left.
    std::thread::sleep(Duration::from_millis(700));
    da.move_to(id, a0, b0);
    pass_until_followed(&db, (&mut c, &mut s), 4, b0, "server followed back");
    pass(&mut s, &mut c, 99);
    // (Past the server's follow window.)
    std::thread::sleep(Duration::from_millis(300));
    let moved = (da.stat("bpf_moved_rewrites"), db.stat("bpf_moved_rewrites"));
    pass(&mut c, &mut s, 100);
    pass(&mut s, &mut c, 101);
    assert_eq!(
        (da.stat("bpf_moved_rewrites"), db.stat("bpf_moved_rewrites")),
        moved,
        "nothing rewritten on the original pair"
    );
    for (h, d) in [(&t.a, &da), (&t.b, &db)] {
        assert_eq!(hooks(h), Vec::<String>::new(), "{}: {}", h.name(), d.log());
    }
}

/// A socket of its own on a tracked connection's alternative tuple keeps
/// its segments: connection 1 goes from a's link 0 address with port p,
/// connection 2 from a's link 1 address with the same port p to the same
/// server address and port — on both hosts conn 2's tuple is one of conn
/// 1's alternative pairs. Conn 2 still establishes and carries its own
/// data (the programs see its socket and leave its segments alone,
/// counted as `bpf_alt_owned`), and conn 1 is unaffected.
#[test]
fn a_socket_on_an_alternative_tuple_keeps_its_segments() {
    let t = two_links();
    let (da, db, listener) = bpf_daemons(&t);
    let (mut c1, mut s1, port) = connect(&t, &listener);
    // Both daemons have the connection's alternatives in the kernel.
    wait_until("tracked", || {
        da.connections().len() == 1 && db.connections().len() == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let a1 = v6(&t.l1, &t.a);
    let dst = SocketAddr::from((v6(&t.l0, &t.b), PORT));
    let mut c2: TcpStream =
        t.a.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from((a1, port)).into())?;
            s.connect(&dst.into())?;
            std::io::Result::Ok(TcpStream::from(s))
        })
        .expect("run")
        .expect("second connection from the alternative address");
    let (mut s2, from) = listener.accept().expect("accept the second");
    assert_eq!(from, SocketAddr::from((a1, port)));
    for x in [&c1, &s1, &c2, &s2] {
        x.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        x.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    pass(&mut c2, &mut s2, 7);
    pass(&mut s2, &mut c2, 8);
    pass(&mut c1, &mut s1, 9);
    pass(&mut s1, &mut c1, 10);
    assert!(
        da.stat("bpf_alt_owned") >= 1 && db.stat("bpf_alt_owned") >= 1,
        "{}\n{}",
        da.log(),
        db.log()
    );
    assert_eq!(
        da.stat("bpf_alt_rewrites") + db.stat("bpf_alt_rewrites"),
        0,
        "nothing of conn 2 was taken for conn 1"
    );
}

/// The policy rules at the fallback preference (32000) in `host`.
fn fallback_rules(host: &netlab::Host) -> Vec<String> {
    host.exec_ok(["ip", "-6", "rule", "list", "pref", "32000"])
        .expect("ip rule list")
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The routes in the fallback table (4242) of `host`.
fn fallback_routes(host: &netlab::Host) -> Vec<String> {
    host.exec_ok(["ip", "-6", "route", "show", "table", "all"])
        .expect("ip route show")
        .lines()
        .filter(|l| l.contains(" table 4242"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `bpf(2)` `BPF_PROG_QUERY` attributes (`union bpf_attr`, the `query`
/// member, up to `revision`).
#[repr(C)]
#[derive(Debug, Default)]
struct ProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    count: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The programs attached with tcx to `dev` in `host`, (ingress, egress)
/// (`BPF_PROG_QUERY`; bpftool of the lab machine does not list tcx).
fn tcx_programs(host: &netlab::Host, dev: &str) -> (u32, u32) {
    /// `BPF_PROG_QUERY`, `BPF_TCX_INGRESS`, `BPF_TCX_EGRESS` (linux/bpf.h).
    const PROG_QUERY: libc::c_long = 16;
    const TCX: [u32; 2] = [46, 47];
    let dev = dev.to_string();
    host.run(move || {
        let ifindex = nix::net::if_::if_nametoindex(dev.as_str()).expect("ifindex");
        TCX.map(|attach_type| {
            let mut q = ProgQuery {
                target_ifindex: ifindex,
                attach_type,
                ..ProgQuery::default()
            };
            let size = u32::try_from(std::mem::size_of::<ProgQuery>()).expect("size");
            // SAFETY: `q` is a valid, zero-padded `bpf_attr` prefix for
            // BPF_PROG_QUERY of `size` bytes; with no id buffer the kernel
            // only writes the count, flags and revision into it.
            let r = unsafe {
                libc::syscall(libc::SYS_bpf, PROG_QUERY, std::ptr::from_mut(&mut q), size)
            };
            assert_eq!(r, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
            q.count
        })
    })
    .map(|[i, e]| (i, e))
    .expect("run")
}

/// What `preservetcpd` may leave in `host`'s kernel, by kind, for an
/// assertion message: the nftables ruleset lines naming its ip6tables
/// chains or its fast path table, its ip6tables chains as listed by
/// ip6tables, and the tc filters and tcx programs on `devs`.
fn daemon_leftovers(host: &netlab::Host, devs: &[&str]) -> Vec<String> {
    let mut left: Vec<String> = host
        .exec_ok(["nft", "list", "ruleset"])
        .expect("nft list ruleset")
        .lines()
        .filter(|l| l.contains("PTCP_") || l.contains("table ip6 ptcp"))
        .map(|l| format!("nft: {}", l.trim()))
        .collect();
    for table in ["mangle", "raw"] {
        left.extend(
            host.exec_ok(["ip6tables", "-w", "-t", table, "-S"])
                .expect("ip6tables -S")
                .lines()
                .filter(|l| l.contains("PTCP_"))
                .map(|l| format!("ip6tables -t {table}: {l}")),
        );
    }
    for dev in devs {
        for dir in ["ingress", "egress"] {
            let out = host
                .exec(["tc", "filter", "show", "dev", dev, dir])
                .expect("tc filter show");
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.trim().is_empty() {
                left.push(format!("tc {dev} {dir}: {}", text.trim()));
            }
        }
        let (i, e) = tcx_programs(host, dev);
        if i + e > 0 {
            left.push(format!("tcx {dev}: {i} ingress, {e} egress"));
        }
    }
    left
}

/// SIGTERM ends a daemon through its clean-up, and the clean-up is the
/// last change the daemon makes: with a moved connection on both hosts
/// and `move` requests racing the exit on the client, afterwards no
/// policy rule of the daemon at preference 32000, no route of it in table
/// 4242, no ip6tables chain, nft table, tc filter or tcx program of it is
/// left — while a rule at 32000 and a route in 4242 that someone else
/// added before the daemons started are still there.
fn exit_removes_what_the_daemon_added(port: u16, extra: &[&str]) {
    let t = two_links();
    let (a0, a1) = (v6(&t.l0, &t.a), v6(&t.l1, &t.a));
    let (b0, b1) = (v6(&t.l0, &t.b), v6(&t.l1, &t.b));
    for h in [&t.a, &t.b] {
        h.exec_ok([
            "ip",
            "-6",
            "rule",
            "add",
            "pref",
            "32000",
            "from",
            "2001:db8:ffff::1/128",
            "table",
            "4242",
        ])
        .expect("foreign rule");
        h.exec_ok([
            "ip",
            "-6",
            "route",
            "add",
            "unreachable",
            "2001:db8:ffff::/64",
            "table",
            "4242",
        ])
        .expect("foreign route");
    }
    let foreign = |h: &netlab::Host| (fallback_rules(h), fallback_routes(h));
    let before = [foreign(&t.a), foreign(&t.b)];
    assert_eq!(before[0].0.len(), 1, "{:?}", before[0]);
    let bpf = extra.is_empty();
    let (da, db, listener) = daemons_and_listener(&t, port, extra);
    assert_eq!((da.bpf(), db.bpf()), (bpf, bpf), "{}", da.log());
    let (mut c, mut s) = connect_l0(&t, &listener, port);
    for x in [&c, &s] {
        x.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
    pass_until_tracked(&da, &db, (&mut c, &mut s), "both track the connection");
    let id = da.connections()[0].id;
    da.move_to(id, a1, b1);
    pass_until_followed(&db, (&mut c, &mut s), 2, b1, "server followed");
    // Both daemons have their fallback routing in: two rules of the moved
    // connection next to the foreign one, routes tagged with their
    // protocol (80); their programs or rules are in place.
    let devs = [t.l0.dev(&t.a), t.l1.dev(&t.a)];
    let devs_b = [t.l0.dev(&t.b), t.l1.dev(&t.b)];
    for (h, d, devs) in [(&t.a, &da, &devs), (&t.b, &db, &devs_b)] {
        assert_eq!(fallback_rules(h).len(), 3, "{}: {}", h.name(), d.log());
        assert!(
            fallback_routes(h).iter().any(|r| r.contains("proto 80")),
            "{}: {:?}",
            h.name(),
            fallback_routes(h)
        );
        assert!(
            !daemon_leftovers(h, devs).is_empty(),
            "the check sees the daemon's state"
        );
    }
    if bpf {
        assert_eq!(tcx_programs(&t.a, devs[0]), (1, 1));
    }

    // Moves back and forth race the exit on the client.
    let control = da.control.clone();
    let mover = std::thread::spawn(move || {
        let pairs = [(a0, b0), (a1, b1)];
        let mut answered = 0u32;
        for i in 0.. {
            let (local, peer) = pairs[i % 2];
            let req = preservetcp::control::Request::Move { id, local, peer };
            match preservetcp::control::request(&control, &req) {
                Ok(_) => answered += 1,
                // The daemon is gone (or going): its socket with it.
                Err(_) => break,
            }
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(300));
    for d in [da, db] {
        let control = d.control.clone();
        d.terminate(Duration::from_secs(10));
        assert!(!control.exists(), "control socket removed");
    }
    assert!(mover.join().expect("mover") > 0, "moves were answered");
    for ((h, devs), before) in [(&t.a, &devs), (&t.b, &devs_b)].into_iter().zip(before) {
        assert_eq!(
            foreign(h),
            before,
            "{}: only the foreign rule and route are left",
            h.name()
        );
        assert_eq!(
            daemon_leftovers(h, devs),
            Vec::<String>::new(),
            "{}",
            h.name()
        );
        assert_eq!(hooks(h), Vec::<String>::new(), "{}: no hook", h.name());
    }
}

#[test]
fn exit_removes_what_the_daemon_added_bpf() {
    exit_removes_what_the_daemon_added(5011, &[]);
}

#[test]
fn exit_removes_what_the_daemon_added_nfqueue() {
    exit_removes_what_the_daemon_added(5012, &["--no-bpf"]);
}

use netlab::AS_NOBODY;

/// Sends one request line to the control socket at `control` as uid and
/// gid 65534 (`setpriv` + `socat`) and returns the answer.
fn control_as_nobody(control: &std::path::Path, line: &str) -> preservetcp::control::Response {
    use std::process::{Command, Stdio};
    let mut child = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .args(["socat", "-t", "5", "-"])
        .arg(format!("UNIX-CONNECT:{}", control.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv socat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{line}\n").as_bytes())
        .expect("request");
    let out = child.wait_with_output().expect("socat");
    assert!(
        out.status.success(),
        "socat: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("answer {text:?}: {e}"))
}

/// The control socket is open to every user (mode 0666) for reading, and
/// changes are checked against the sender's uid: uid 65534 may list and
/// read the counters, may not move root's connection, a connection the
/// daemon does not know or opt a tuple in (`permission denied`), but may
/// move the connection of its own socket.
#[test]
fn control_requests_are_checked_against_the_senders_uid() {
    use std::os::unix::fs::PermissionsExt;
    const P: u16 = 5013;
    let t = two_links();
    let (a1, b0, b1) = (v6(&t.l1, &t.a), v6(&t.l0, &t.b), v6(&t.l1, &t.b));
    // (Only the socket's own mode is under test: the way to it is open.)
    std::fs::set_permissions(
        t.lab.artifacts_dir(),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let da = Daemon::start(&t.lab, &t.a, &[P]);
    let _db = Daemon::start(&t.lab, &t.b, &[P]);
    let mode = std::fs::metadata(&da.control)
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "{mode:o}");
    let listener = listen(&t.b, P);
    let (root_conn, _root_srv) = connect_l0(&t, &listener, P);
    let root_port = root_conn.local_addr().expect("addr").port();
    // A connection of uid 65534's own.
    let _nobody_conn =
        t.a.spawn(AS_NOBODY.into_iter().chain([
            "socat",
            "-u",
            &format!("TCP6:[{b0}]:{P}"),
            "/dev/null",
        ]))
        .expect("socat as nobody");
    let (_nobody_srv, from) = listener.accept().expect("accept nobody's");
    wait_until("both connections tracked", || da.connections().len() == 2);
    let conns = da.connections();
    let id_of = |port: u16| {
        conns
            .iter()
            .find(|c| c.original.local_port == port)
            .unwrap_or_else(|| panic!("no connection from port {port}: {conns:?}"))
            .id
    };
    let (root_id, nobody_id) = (id_of(root_port), id_of(from.port()));

    let r = control_as_nobody(&da.control, r#"{"cmd":"list"}"#);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.connections.map(|c| c.len()), Some(2));
    let r = control_as_nobody(&da.control, r#"{"cmd":"stats"}"#);
    assert!(r.ok && r.stats.is_some(), "{:?}", r.error);
    let denied = |line: String, why: &str| {
        let r = control_as_nobody(&da.control, &line);
        assert!(!r.ok, "{line} was allowed");
        let e = r.error.unwrap_or_default();
        assert!(
            e.starts_with(preservetcp::control::PERMISSION_DENIED) && e.contains(why),
            "{line}: {e}"
        );
    };
    let mv = |id: u64| format!(r#"{{"cmd":"move","id":{id},"local":"{a1}","peer":"{b1}"}}"#);
    denied(mv(root_id), "another user");
    denied(mv(999_999), "not known");
    denied(
        format!(r#"{{"cmd":"opt_in","local":"{a1}","local_port":1,"peer":"{b1}","peer_port":2}}"#),
        "needs root",
    );
    let r = control_as_nobody(&da.control, "not json");
    assert!(
        !r.ok && r.error.unwrap_or_default().starts_with("bad request"),
        "bad input"
    );
    let by_id = |id: u64| {
        da.connections()
            .into_iter()
            .find(|c| c.id == id)
            .expect("still tracked")
    };
    assert_ne!(by_id(root_id).current.local, a1, "root's did not move");
    let r = control_as_nobody(&da.control, &mv(nobody_id));
    assert!(r.ok, "the owner moves its connection: {:?}", r.error);
    assert_eq!(
        (
            by_id(nobody_id).current.local,
            by_id(nobody_id).current.peer
        ),
        (a1, b1)
    );
}

/// Control clients are served each on a thread of its own: an idle client
/// does not hold up another one's request; at most 16 are connected at
/// once (the 17th is told `busy` and closed, the places come back when
/// clients leave), and an idle client is disconnected after 10 s.
#[test]
fn control_clients_are_served_concurrently_and_bounded() {
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;
    let t = two_links();
    let da = Daemon::start(&t.lab, &t.a, &[PORT]);
    let mut idle: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&da.control).expect("connect"))
        .collect();
    let line_of = |s: &UnixStream, timeout: Duration| {
        s.set_read_timeout(Some(timeout)).expect("timeout");
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .expect("answer");
        line
    };
    let extra = UnixStream::connect(&da.control).expect("connect the 17th");
    let busy = line_of(&extra, Duration::from_secs(5));
    assert!(busy.contains("busy"), "{busy:?}");
    drop(extra);
    // One idle client stays: another client's request is answered.
    idle.truncate(1);
    let control = da.control.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        loop {
            let r = preservetcp::control::request(&control, &preservetcp::control::Request::List)
                .expect("request");
            // (The places of the closed clients come back as their
            // threads see the end of the stream.)
            if r.ok || t0.elapsed() > Duration::from_secs(3) {
                let _ = tx.send(r);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("answered while a client idles");
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.connections, Some(Vec::new()));
    // The idle client is told and disconnected after the timeout.
    let t0 = std::time::Instant::now();
    let bye = line_of(&idle[0], Duration::from_secs(20));
    assert!(bye.contains("no complete request"), "{bye:?}");
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert_eq!(line_of(&idle[0], Duration::from_secs(5)), "", "closed");
}

/// The `opt_in` control request without BPF: the tuple's SYN is offered
/// on (one ip6tables rule, even when asked twice) although its port is
/// not configured, a connection on another tuple is not covered, requests
/// beyond `--max-opt-ins` fail, and the rule goes once the connection is
/// closed.
#[test]
fn opt_in_request_covers_a_tuple_without_bpf() {
    const P: u16 = 5014;
    let t = two_links();
    let (a0, b0) = (v6(&t.l0, &t.a), v6(&t.l0, &t.b));
    let da = Daemon::start_with(&t.lab, &t.a, &[], &["--no-bpf", "--max-opt-ins", "2"]);
    let db = Daemon::start_with(&t.lab, &t.b, &[], &["--no-bpf"]);
    assert!(!da.bpf() && !db.bpf());
    let listener = listen(&t.b, P);
    let bound = || {
        t.a.run(move || {
            let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from((a0, 0)).into())?;
            std::io::Result::Ok(s)
        })
        .expect("run")
        .expect("bound socket")
    };
    let sock = bound();
    let port = sock
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let opt_in = |local_port: u16| {
        da.request(&preservetcp::control::Request::OptIn(
            preservetcp::control::TupleInfo {
                local: a0,
                local_port,
                peer: b0,
                peer_port: P,
            },
        ))
    };
    let r = opt_in(port);
    assert!(r.ok, "{:?}", r.error);
    let r = opt_in(port);
    assert!(r.ok, "asked again: {:?}", r.error);
    let rules_for = |p: u16| {
        t.a.exec_ok(["ip6tables", "-w", "-t", "mangle", "-S", "PTCP_OUT"])
            .expect("ip6tables -S")
            .lines()
            .filter(|l| l.contains(&format!("--sport {p} ")) && l.contains("PTCP_OFFER"))
            .count()
    };
    assert_eq!(rules_for(port), 1, "one rule for the tuple");

    sock.connect(&SocketAddr::from((b0, P)).into())
        .expect("connect");
    let mut c = TcpStream::from(sock);
    let (mut s, _) = listener.accept().expect("accept");
    pass_until_tracked(&da, &db, (&mut c, &mut s), "tracked on both hosts");
    assert_eq!(da.connections()[0].original.local_port, port);
    assert_eq!(da.stat("syn_offers"), 1, "{}", da.log());
    assert_eq!(db.stat("synack_answers"), 1, "{}", db.log());

    // Another tuple (not opted in) gets no offer.
    let other = bound();
    other
        .connect(&SocketAddr::from((b0, P)).into())
        .expect("connect");
    let (other_srv, _) = listener.accept().expect("accept");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(da.stat("syn_offers"), 1, "not covered");
    assert_eq!(da.connections().len(), 1);
    drop((other, other_srv));

    // The limit (2): one more, then a refusal naming it.
    let r = opt_in(1);
    assert!(r.ok, "{:?}", r.error);
    let r = opt_in(2);
    assert!(!r.ok);
    let e = r.error.unwrap_or_default();
    assert!(e.contains("opt-in limit reached: 2"), "{e}");
    assert_eq!(rules_for(2), 0);

    // Closed (after the daemon saw its socket): the rule goes; the tuple
    // that never connected keeps its rule (for its grace period).
    std::thread::sleep(Duration::from_millis(1500));
    drop((c, s));
    wait_until("the closed tuple's rule removed", || rules_for(port) == 0);
    assert_eq!(rules_for(1), 1);
    let r = opt_in(3);
    assert!(r.ok, "room again: {:?}", r.error);
}
