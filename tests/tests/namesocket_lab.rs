//! namesocket between two lab hosts joined by two veth links: ≥100 MB in each
//! direction survive the active link being taken down or silently dropped,
//! resolution through the lab's hosts file and through a real DNS server
//! (dnsmasq), resume-window expiry, and a forged RESUME.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mh_tests::Pattern;
use namesocket::resolve::ResolverConfig;
use namesocket::wire::v2::{Handshake, RejectReason, Resume, SessionId};
use namesocket::{Error, NameListener, NameStream, Options};
use netlab::{Family, Host, Lab, Link};

const MB: u64 = 1 << 20;

struct Topo {
    lab: Lab,
    a: Host,
    b: Host,
    links: [Link; 2],
}

fn topo() -> Topo {
    let lab = Lab::new().expect("lab (root and iproute2 needed)");
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    let l1 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(10)).unwrap();
    Topo {
        lab,
        a,
        b,
        links: [l0, l1],
    }
}

/// Options for a host: resolve through the lab's hosts file of `h` only.
fn opts_for(h: &Host, base: Options) -> Options {
    let mut o = base;
    o.resolver = ResolverConfig::default()
        .with_hosts_file(h.hosts_file())
        .without_dns();
    o
}

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
