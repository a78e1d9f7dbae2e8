//! namesocket between two lab hosts joined by two veth links: ≥100 MB in each
//! direction survive the active link being taken down or silently dropped,
//! a failure of one direction only (either way, for data flowing either
//! way), a session that starts over IPv6 and resumes over IPv4, resolution
//! through the lab's hosts file and through a real DNS server (dnsmasq),
//! resume-window expiry, and a forged RESUME. (The tokio driver's lab tests
//! are in namesocket_async_lab.rs.)

mod namesocket_support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mh_tests::Pattern;
use namesocket::resolve::ResolverConfig;
use namesocket::wire::v2::{Handshake, RejectReason, Resume, SessionId};
use namesocket::{Error, ListenerStats, NameListener, NameStream, Options, PathLog};
use namesocket_support::{MB, Topo, opts_for, topo};
use netlab::{Family, FaultStamp, Link};

/// The link whose address of `b` is the destination of the stream's path.
fn active_link<'a>(t: &'a Topo, c: &NameStream) -> &'a Link {
    let (_, dst) = c.path_log().current_path.expect("connected");
    t.links
        .iter()
        .find(|l| l.addr(&t.b, Family::V6) == dst.ip() || l.addr(&t.b, Family::V4) == dst.ip())
        .expect("the path runs over one of the lab links")
}

fn send_pattern(s: &NameStream, seed: u64, total: u64, progress: &AtomicU64) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0;
    let mut w = s;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n])
            .expect("send must never fail across path failures");
        sent += n as u64;
        progress.store(sent, Ordering::Relaxed);
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

fn recv_pattern(s: &NameStream, seed: u64, total: u64) -> u64 {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let mut r = s;
    loop {
        let n = r
            .read(&mut buf)
            .expect("receive must never fail across path failures");
        if n == 0 {
            break;
        }
        if let Err(off) = p.check(&buf[..n]) {
            panic!("stream corrupted at byte {off}");
        }
        got += n as u64;
    }
    assert_eq!(got, total, "byte count");
    got
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Down,
    SilentDrop,
}

/// Streams `total` bytes A→B and B→A at once; breaks the active link once
/// `fault_at` bytes went A→B.
fn bidirectional_transfer(t: &Topo, fault: Fault, base: Options, client_opts: Options, total: u64) {
    let port = 7101;
    let fault_at = total / 5;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server_opts = opts_for(&t.b, base);
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind_with(&port.to_string(), &server_opts).unwrap();
            ready_tx.send(()).unwrap();
            let s = Arc::new(l.accept().unwrap());
            let s2 = Arc::clone(&s);
            let reader = thread::spawn(move || recv_pattern(&s2, 1, total));
            let sent = AtomicU64::new(0);
            send_pattern(&s, 2, total, &sent);
            s.wait_acked(Some(Duration::from_secs(60))).unwrap();
            let got = reader.join().unwrap();
            (got, l.stats(), s.path_log())
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let (stream_tx, stream_rx) = mpsc::channel();
    let p2 = Arc::clone(&progress);
    let client =
        t.a.spawn_thread(move || {
            let c =
                Arc::new(NameStream::connect_with("b", &port.to_string(), &client_opts).unwrap());
            stream_tx.send(Arc::clone(&c)).unwrap();
            let c2 = Arc::clone(&c);
            let reader = thread::spawn(move || recv_pattern(&c2, 2, total));
            send_pattern(&c, 1, total, &p2);
            c.wait_acked(Some(Duration::from_secs(60))).unwrap();
            reader.join().unwrap()
        })
        .unwrap();
    let c = stream_rx.recv().unwrap();
    let t0 = Instant::now();
    while progress.load(Ordering::Relaxed) < fault_at {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "transfer stalled before the fault"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let link = active_link(t, &c);
    let stamp = match fault {
        Fault::Down => link.down().unwrap(),
        Fault::SilentDrop => link.drop_both().unwrap(),
    };
    let got_ab = client.join().expect("client side failed");
    let (got_ba, stats, server_log) = server.join().expect("server side failed");
    assert_eq!(got_ab, total);
    assert_eq!(got_ba, total);
    let log = c.path_log();
    assert!(log.resumes >= 1, "the session must have resumed: {log:#?}");
    assert!(stats.resumes >= 1, "listener: {stats:?}");
    let detected = log.last_failure_at.expect("failure detected");
    let resumed = log.last_resume_at.expect("resumed");
    eprintln!(
        "{fault:?}: detection {:?} after the fault, resume {:?} after detection, {} bytes re-sent; server log: {:?}",
        detected.saturating_duration_since(stamp.at),
        resumed.saturating_duration_since(detected),
        log.retransmitted_bytes,
        server_log
            .history
            .iter()
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    );
    // The new path is the other link.
    let now_on = active_link(t, &c);
    assert_ne!(now_on.dev(&t.a), link.dev(&t.a), "moved to the other link");
}

#[test]
fn hundred_megabytes_each_way_survive_link_down() {
    let t = topo();
    let o = opts_for(&t.a, Options::default());
    bidirectional_transfer(&t, Fault::Down, Options::default(), o, 100 * MB);
}

#[test]
fn hundred_megabytes_each_way_survive_silent_drop() {
    let t = topo();
    let o = opts_for(&t.a, Options::default());
    bidirectional_transfer(&t, Fault::SilentDrop, Options::default(), o, 100 * MB);
}

#[test]
fn silent_drop_with_fast_failover_settings() {
    let t = topo();
    let o = opts_for(&t.a, Options::fast_failover());
    bidirectional_transfer(&t, Fault::SilentDrop, Options::fast_failover(), o, 30 * MB);
}

/// The peer's name is known only to a real DNS server (dnsmasq running in
/// host b, answering on b's addresses on both links); the session survives
/// the failure of the link it started on.
#[test]
fn name_from_dns_server_and_link_failure() {
    let t = topo();
    let [l0, l1] = &t.links;
    let b_addrs: Vec<IpAddr> = [l0, l1]
        .iter()
        .flat_map(|l| [l.addr(&t.b, Family::V6), l.addr(&t.b, Family::V4)])
        .collect();
    let hosts = t.lab.artifacts_dir().join("dns-hosts");
    let lines: String = b_addrs
        .iter()
        .map(|a| format!("{a} server.lab.test\n"))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let listen: Vec<String> = [l0, l1]
        .iter()
        .map(|l| l.addr(&t.b, Family::V4).to_string())
        .collect();
    let _dns =
        t.b.spawn([
            "dnsmasq".to_string(),
            "--no-daemon".into(),
            "--conf-file=/dev/null".into(),
            "--pid-file=".into(),
            "--port=53".into(),
            format!("--listen-address={}", listen.join(",")),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            format!("--addn-hosts={}", hosts.display()),
            "--user=root".into(),
        ])
        .expect("dnsmasq");
    let servers: Vec<SocketAddr> = [l0, l1]
        .iter()
        .map(|l| SocketAddr::new(l.addr(&t.b, Family::V4), 53))
        .collect();
    let mut client_opts = Options::fast_failover();
    client_opts.resolver = ResolverConfig::default()
        .without_hosts_file()
        .with_name_servers(servers)
        .with_query_timeout(Duration::from_millis(500), 3);
    // Wait for dnsmasq to answer.
    let probe_opts = client_opts.clone();
    let ok =
        t.a.run(move || {
            let r = namesocket::resolve::Resolver::new(probe_opts.resolver.clone());
            let t0 = Instant::now();
            loop {
                match r.resolve("server.lab.test", "7101") {
                    Ok(res) => return res.addrs.len(),
                    Err(_) if t0.elapsed() < Duration::from_secs(10) => {
                        thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => panic!("DNS never answered: {e}"),
                }
            }
        })
        .unwrap();
    assert_eq!(ok, 4, "all four addresses of b come from DNS");
    // The lab hosts file has no "server.lab.test"; only DNS can resolve it.
    let server_opts = opts_for(&t.b, Options::fast_failover());
    let (ready_tx, ready_rx) = mpsc::channel();
    let total = 20 * MB;
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind_with("7101", &server_opts).unwrap();
            ready_tx.send(()).unwrap();
            let s = l.accept().unwrap();
            recv_pattern(&s, 9, total)
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let (tx, rx) = mpsc::channel();
    let progress = Arc::new(AtomicU64::new(0));
    let p2 = Arc::clone(&progress);
    let client =
        t.a.spawn_thread(move || {
            let c = Arc::new(
                NameStream::connect_with("server.lab.test", "7101", &client_opts).unwrap(),
            );
            tx.send(Arc::clone(&c)).unwrap();
            send_pattern(&c, 9, total, &p2);
            c.wait_acked(Some(Duration::from_secs(60))).unwrap();
        })
        .unwrap();
    let c = rx.recv().unwrap();
    while progress.load(Ordering::Relaxed) < total / 4 {
        thread::sleep(Duration::from_millis(2));
    }
    active_link(&t, &c).drop_both().unwrap();
    client.join().expect("client");
    assert_eq!(server.join().expect("server"), total);
    assert!(c.path_log().resumes >= 1);
}

/// With every link down the client cannot come back: after the resume window
/// both ends report a clear error (ETIMEDOUT, ResumeWindowExpired).
#[test]
fn resume_window_expiry_gives_clear_error() {
    let t = topo();
    let mut base = Options::fast_failover();
    base.session.resume_window = Duration::from_secs(2);
    let server_opts = opts_for(&t.b, base.clone());
    let client_opts = opts_for(&t.a, base);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind_with("7102", &server_opts).unwrap();
            ready_tx.send(()).unwrap();
            let s = l.accept().unwrap();
            let mut buf = [0u8; 5];
            (&s).read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            let t0 = Instant::now();
            let e = s.recv(&mut [0u8; 16]).unwrap_err();
            (e, t0.elapsed())
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let client =
        t.a.spawn_thread(move || {
            let c = NameStream::connect_with("b", "7102", &client_opts).unwrap();
            (&c).write_all(b"hello").unwrap();
            c.wait_acked(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .unwrap()
        .join()
        .unwrap();
    for l in &t.links {
        l.down().unwrap();
    }
    let (e, _) = server.join().unwrap();
    assert!(matches!(e, Error::ResumeWindowExpired), "server got {e:?}");
    assert_eq!(e.errno(), libc::ETIMEDOUT);
    let t0 = Instant::now();
    let e = match client.recv(&mut [0u8; 16]) {
        Err(e) => e,
        Ok(n) => panic!("unexpected {n} bytes"),
    };
    assert!(matches!(e, Error::ResumeWindowExpired), "client got {e:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// Someone on host a who knows the session id (it travels in clear) but not
/// the resume secret cannot take the session over.
#[test]
fn forged_resume_from_another_host_is_rejected() {
    let t = topo();
    let server_opts = opts_for(&t.b, Options::fast_failover());
    let client_opts = opts_for(&t.a, Options::fast_failover());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind_with("7103", &server_opts).unwrap();
            ready_tx.send(()).unwrap();
            let s = l.accept().unwrap();
            let mut buf = [0u8; 3];
            (&s).read_exact(&mut buf).unwrap();
            done_rx.recv().unwrap();
            (&s).read_exact(&mut buf).unwrap();
            (&s).write_all(&buf).unwrap();
            s.wait_acked(Some(Duration::from_secs(5))).unwrap();
            (buf, l.stats())
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let c =
        t.a.spawn_thread(move || NameStream::connect_with("b", "7103", &client_opts).unwrap())
            .unwrap()
            .join()
            .unwrap();
    (&c).write_all(b"one").unwrap();
    let forged = Handshake::Resume(Resume {
        session_id: SessionId(c.session_id().0),
        generation: 1,
        nonce: [1; 16],
        bytes_received: 0,
        proof: [0xAA; 32],
    });
    let mut bytes = Vec::new();
    forged.emit(&mut bytes);
    let dst = t.links[1].socket_addr(&t.b, Family::V6, 7103);
    let reply =
        t.a.run(move || {
            let mut raw = TcpStream::connect(dst).unwrap();
            raw.write_all(&bytes).unwrap();
            raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut reply = Vec::new();
            let _ = raw.read_to_end(&mut reply);
            reply
        })
        .unwrap();
    match Handshake::parse(&reply) {
        Ok(Some((Handshake::Reject(reason), used))) => {
            assert_eq!(reason, RejectReason::BadProof, "the forged RESUME's reason");
            assert_eq!(used, reply.len(), "nothing after the REJECT");
        }
        other => panic!("expected REJECT(BadProof), got {other:?} from {reply:?}"),
    }
    done_tx.send(()).unwrap();
    (&c).write_all(b"two").unwrap();
    let mut echo = [0u8; 3];
    (&c).read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"two");
    let (buf, stats) = server.join().unwrap();
    assert_eq!(&buf, b"two");
    assert_eq!(stats.rejected_resumes, 1);
    assert_eq!(stats.resumes, 0);
}

/// The wire cost of a session that is opened and closed at once: seven TCP
/// segments (plain TCP needs six): SYN, SYN+ACK, ACK, NEW, the server's
/// NEW_ACK + CLOSE with its FIN (no separate ACK of NEW: listeners are in
/// delayed-ACK mode), the client's CLOSE_ACK with its FIN, and the last ACK.
#[test]
fn open_and_close_takes_seven_segments() {
    let t = topo();
    let dst = t.links[0].addr(&t.b, Family::V6);
    let cap = t.links[0].capture(&t.b).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind("7104").unwrap();
            ready_tx.send(()).unwrap();
            let s = l.accept().unwrap();
            drop(s);
            // Keep the listener (and the keeper) up while the client ends.
            thread::sleep(Duration::from_millis(300));
        })
        .unwrap();
    ready_rx.recv().unwrap();
    t.a.spawn_thread(move || {
        let c = NameStream::connect(&dst.to_string(), "7104").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(c.recv(&mut buf).unwrap(), 0, "end of stream expected");
    })
    .unwrap()
    .join()
    .unwrap();
    server.join().unwrap();
    thread::sleep(Duration::from_millis(100));
    let pcap = cap.stop().unwrap();
    let out = std::process::Command::new("tcpdump")
        .args(["-r", pcap.to_str().unwrap(), "-nn", "-S", "tcp port 7104"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let flags: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.split("Flags [")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .unwrap_or("?")
        })
        .collect();
    let data = |l: &str| !l.ends_with("length 0");
    assert_eq!(lines.len(), 7, "segments:\n{text}");
    assert_eq!(&flags[..3], &["S", "S.", "."], "handshake:\n{text}");
    assert!(data(lines[3]) && flags[3] == "P.", "NEW alone:\n{text}");
    assert!(
        data(lines[4]) && flags[4].contains('F'),
        "NEW_ACK+CLOSE+FIN:\n{text}"
    );
    assert!(
        data(lines[5]) && flags[5].contains('F'),
        "CLOSE_ACK+FIN:\n{text}"
    );
    assert!(!data(lines[6]) && flags[6] == ".", "last ACK:\n{text}");
}

/// [`send_pattern`] that stops once `gate_at` bytes are written until
/// `gate` is set (the test breaks the path meanwhile, so the failure
/// always hits mid-transfer, with data in flight), then writes the rest.
fn send_pattern_gated(
    s: &NameStream,
    seed: u64,
    total: u64,
    progress: &AtomicU64,
    gate_at: u64,
    gate: &AtomicBool,
) {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0;
    let mut w = s;
    while sent < total {
        if sent >= gate_at {
            let t0 = Instant::now();
            while !gate.load(Ordering::Acquire) {
                assert!(t0.elapsed() < Duration::from_secs(30), "gate never opened");
                thread::sleep(Duration::from_millis(1));
            }
        }
        let limit = if sent < gate_at { gate_at } else { total };
        let n = (limit - sent).min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        if let Err(e) = w.write_all(&buf[..n]) {
            panic!(
                "send must never fail across path failures: {e:?} at byte {sent}; path log: {:#?}",
                s.path_log()
            );
        }
        sent += n as u64;
        progress.store(sent, Ordering::Release);
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Which ways a gated transfer moves data.
#[derive(Clone, Copy, Debug)]
struct Flow {
    c2s: bool,
    s2c: bool,
}

const CLIENT_TO_SERVER: Flow = Flow {
    c2s: true,
    s2c: false,
};
const SERVER_TO_CLIENT: Flow = Flow {
    c2s: false,
    s2c: true,
};

/// What a gated transfer observed.
struct Outcome {
    /// The client's path log at the end.
    log: PathLog,
    /// The listener's counters.
    stats: ListenerStats,
    /// When the fault was in effect.
    stamp: FaultStamp,
    /// The client's path (source, destination) before and after the fault.
    before: (Option<IpAddr>, SocketAddr),
    after: (Option<IpAddr>, SocketAddr),
}

/// One end of a gated transfer (the client sends pattern 1, the server
/// pattern 2): receives the peer's stream (`total` bytes if `flow` moves
/// data that way, else none) while sending its own, gated, or only shutting
/// its write side; then waits until all it sent is acknowledged.
fn gated_end(
    s: &Arc<NameStream>,
    client: bool,
    flow: Flow,
    total: u64,
    progress: &AtomicU64,
    gate_at: u64,
    gate: &AtomicBool,
) {
    let (own_seed, peer_seed, sends, receives, who) = if client {
        (1, 2, flow.c2s, flow.s2c, "client")
    } else {
        (2, 1, flow.s2c, flow.c2s, "server")
    };
    let s2 = Arc::clone(s);
    let reader =
        thread::spawn(move || recv_pattern(&s2, peer_seed, if receives { total } else { 0 }));
    if sends {
        send_pattern_gated(s, own_seed, total, progress, gate_at, gate);
    } else {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    s.wait_acked(Some(Duration::from_secs(60))).unwrap();
    reader.join().unwrap_or_else(|_| panic!("{who} receiver"));
}

/// Streams `total` bytes over the session the way(s) `flow` says (client
/// in a, server in b, connecting by name); once `total / 5` bytes are
/// written each way, `fault` breaks the path (it gets the active link) and
/// the senders go on. Checks that every stream arrives byte-exact and that
/// no call failed.
fn gated_transfer(
    t: &Topo,
    port: u16,
    flow: Flow,
    base: Options,
    total: u64,
    fault: impl FnOnce(&Topo, &Link) -> FaultStamp,
) -> Outcome {
    let gate_at = total / 5;
    let gate = Arc::new(AtomicBool::new(false));
    let c_progress = Arc::new(AtomicU64::new(0));
    let s_progress = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let server_opts = opts_for(&t.b, base.clone());
    let (g, sp) = (Arc::clone(&gate), Arc::clone(&s_progress));
    let server =
        t.b.spawn_thread(move || {
            let l = NameListener::bind_with(&port.to_string(), &server_opts).unwrap();
            ready_tx.send(()).unwrap();
            let s = Arc::new(l.accept().unwrap());
            gated_end(&s, false, flow, total, &sp, gate_at, &g);
            l.stats()
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let (stream_tx, stream_rx) = mpsc::channel();
    let client_opts = opts_for(&t.a, base);
    let (g, cp) = (Arc::clone(&gate), Arc::clone(&c_progress));
    let client =
        t.a.spawn_thread(move || {
            let c =
                Arc::new(NameStream::connect_with("b", &port.to_string(), &client_opts).unwrap());
            stream_tx.send(Arc::clone(&c)).unwrap();
            gated_end(&c, true, flow, total, &cp, gate_at, &g);
        })
        .unwrap();
    let c = stream_rx.recv().unwrap();
    let t0 = Instant::now();
    while (flow.c2s && c_progress.load(Ordering::Acquire) < gate_at)
        || (flow.s2c && s_progress.load(Ordering::Acquire) < gate_at)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "transfer stalled before the fault"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let before = c.path_log().current_path.expect("connected");
    let stamp = fault(t, active_link(t, &c));
    gate.store(true, Ordering::Release);
    client.join().expect("client side failed");
    let stats = server.join().expect("server side failed");
    let log = c.path_log();
    let after = log.current_path.expect("connected");
    Outcome {
        log,
        stats,
        stamp,
        before,
        after,
    }
}

/// The client noticed the failure, resumed, and now runs over another
/// address pair. (Not necessarily over the other link only: with one
/// direction of a link dead, a pair with its source on the other link and
/// its destination on this one sends over this link's working direction
/// and receives over the other link, and works.)
fn assert_failed_over(o: &Outcome, what: &str) {
    let log = &o.log;
    assert!(log.path_failures >= 1, "{what}: no path failure: {log:#?}");
    assert!(log.resumes >= 1, "{what}: no resume: {log:#?}");
    assert!(o.stats.resumes >= 1, "{what}: listener: {:?}", o.stats);
    assert_ne!(o.before, o.after, "{what}: moved to another address pair");
    let detected = log.last_failure_at.expect("failure detected");
    eprintln!(
        "{what}: detected {:?} after the fault, resumed {:?} later, {} bytes re-sent",
        detected.saturating_duration_since(o.stamp.at),
        log.last_resume_at
            .map(|r| r.saturating_duration_since(detected)),
        log.retransmitted_bytes
    );
}

/// Which host's side of the active link silently drops what it receives.
#[derive(Clone, Copy)]
enum DropAt {
    Client,
    Server,
}

/// Streams 20 MB the way `flow` says; once under way, the `drop_at` side of
/// the active link drops everything it receives (one direction of the link
/// dies). Checks that the session fails over.
fn one_way_failure(port: u16, flow: Flow, drop_at: DropAt, what: &str) {
    let t = topo();
    let o = gated_transfer(
        &t,
        port,
        flow,
        Options::default(),
        20 * MB,
        |t, l| match drop_at {
            DropAt::Client => l.drop_rx(&t.a).unwrap(),
            DropAt::Server => l.drop_rx(&t.b).unwrap(),
        },
    );
    assert_failed_over(&o, what);
}

/// Client → server data; the server's side of the active link silently
/// drops everything it receives: the data direction is dead while the
/// server's PINGs still reach the client. The server notices the silence
/// and resets the transport (its RST travels the working direction), so the
/// client reconnects over the other link.
#[test]
fn one_way_failure_of_the_data_direction_client_to_server() {
    one_way_failure(
        7105,
        CLIENT_TO_SERVER,
        DropAt::Server,
        "c→s data, drop at server",
    );
}

/// Client → server data; the client's side drops: the data reaches the
/// server but no acknowledgement (TCP's or the session's) comes back.
#[test]
fn one_way_failure_of_the_ack_direction_client_to_server() {
    one_way_failure(
        7106,
        CLIENT_TO_SERVER,
        DropAt::Client,
        "c→s data, drop at client",
    );
}

/// Server → client data; the client's side drops it (the client notices
/// the silence first and resets the transport).
#[test]
fn one_way_failure_of_the_data_direction_server_to_client() {
    one_way_failure(
        7107,
        SERVER_TO_CLIENT,
        DropAt::Client,
        "s→c data, drop at client",
    );
}

/// Server → client data; the server's side drops the acknowledgements.
#[test]
fn one_way_failure_of_the_ack_direction_server_to_client() {
    one_way_failure(
        7108,
        SERVER_TO_CLIENT,
        DropAt::Server,
        "s→c data, drop at server",
    );
}

/// Removes every global IPv6 address of both hosts on every link (IPv4
/// stays): IPv6 paths die silently.
fn remove_ipv6(t: &Topo) -> FaultStamp {
    let t0 = Instant::now();
    for l in &t.links {
        for h in [&t.a, &t.b] {
            h.exec_ok([
                "ip",
                "-6",
                "addr",
                "flush",
                "dev",
                l.dev(h),
                "scope",
                "global",
            ])
            .unwrap();
        }
    }
    // Address removal is not a netlab fault: stamp it here.
    FaultStamp {
        requested: t0,
        at: Instant::now(),
        system: std::time::SystemTime::now(),
    }
}

/// "b" resolves to both families (the lab's hosts file lists its IPv6 and
/// IPv4 addresses); the session starts over IPv6 (RFC 6724 prefers it) and,
/// once every IPv6 address is gone, resumes over IPv4, byte-exact both ways.
#[test]
fn session_started_over_ipv6_resumes_over_ipv4() {
    let t = topo();
    let both = Flow {
        c2s: true,
        s2c: true,
    };
    let o = gated_transfer(&t, 7109, both, Options::fast_failover(), 20 * MB, |t, _| {
        remove_ipv6(t)
    });
    assert!(o.before.1.is_ipv6(), "started over IPv6: {:?}", o.before);
    assert!(o.after.1.is_ipv4(), "resumed over IPv4: {:?}", o.after);
    assert!(o.log.path_failures >= 1, "{:#?}", o.log);
    assert!(o.log.resumes >= 1, "{:#?}", o.log);
    assert!(o.stats.resumes >= 1, "{:?}", o.stats);
}
