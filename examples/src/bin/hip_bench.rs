//! `hip_bench` — hipd benchmarks in a two-host netlab (root).
//!
//! ```text
//! cargo build --release -p hipd-backend --bins
//! cargo build --release -p mh-examples --bin hip_bench
//! sudo target/release/hip_bench [--quick] [--bex-only] [--assocs 1000,10000] [--tun-mtu 1400]
//!     [--iperf-secs N] [--transport native|udp|both] [--only ROW,ROW] [--no-bex]
//! ```
//! Prints one table; every HIT figure is paired with the same measurement
//! over the plain IPv6 underlay on the same link, run interleaved (plain,
//! HIT, plain, HIT, …; the median of the rounds), and their ratio:
//! * iperf3 with 128 KiB writes (target ratio ≥ 0.25);
//! * Table 7.1 write sizes (512, 2048, 8192 B): TCP throughput;
//! * 1-byte TCP ping-pong round trips per second;
//! * connect+close per second over an established association, closed
//!   loop: the client connects, the server accepts and closes, the client
//!   reads the end of stream and closes abortively (SO_LINGER 0, so
//!   TIME_WAIT does not pile up). An open loop (connect and close without
//!   waiting for the server) overflows the listener's accept queue
//!   whenever the client outpaces the acceptor; the kernel then drops the
//!   SYN and that connection stalls for the 1 s SYN retransmission
//!   timeout, which made the plain figure swing by 10×;
//! * BEX latency p50/p99 (`rst` then `Connect` over the control socket,
//!   the responder's puzzle at K = 10; target p50 ≤ 3 ms);
//! * hipd resident memory per association with 1,000 and 10,000
//!   associations, created over UDP by an in-process initiator engine
//!   holding one identity per association.
//!
//! `--only` runs only the rows whose name contains one of the given words
//! (e.g. `--only ping-pong,connect`); `--no-bex` stops after the rows
//! (no BEX latency, no memory figures).
//!
//! The hipd binary is taken from the directory of this executable.
//!
//! # Findings (2026-11, 2 vCPUs, session 4)
//!
//! * **Latency rows depend on how busy the machine is.** With both vCPUs
//!   idle, a thread wake-up lands on a halted vCPU and costs tens of
//!   microseconds; with other work running it costs a few. Plain TCP
//!   ping-pong moved between ~10k and ~140k round trips/s between runs of
//!   the same build, so only ratios of the same run mean anything, and even
//!   those differ between an idle and a loaded machine (idle: ping-pong
//!   0.42–0.45, connect + close 0.25–0.32; loaded: 0.07–0.13 and
//!   0.09–0.20).
//! * **Why connect + close stays below 0.5.** Every segment over a HIT
//!   crosses two hipd threads: the sender's TUN thread (woken by the
//!   kernel's write to hip0) and the receiver's underlay thread (woken by
//!   the ESP packet), before the receiving application is woken. A closed
//!   connect + close loop has four segments on its critical path (SYN,
//!   SYN+ACK, ACK, the server's FIN), so it pays eight hipd wake-ups where
//!   plain TCP pays none (its only sleeps are the two applications', which
//!   both loops share). Only busy polling would remove them; on two vCPUs
//!   shared by two applications and two daemons a spinning thread takes
//!   the CPU from the thread it waits for, so hipd sleeps.
//! * **Why native ESP is slower than ESP in UDP.** `perf record -a` during
//!   the native iperf3 row: the sealing thread (`hipd-tun0`) used one full
//!   vCPU and the applications almost none (iperf3 6% of all samples).
//!   60% of the sealing thread's time was `sendmmsg` on the raw socket: per
//!   packet an IPv6 route lookup, a checksumming copy, the veth transmit
//!   and (inline, in the softirq of the same CPU) the receiver's IPv6
//!   input and raw-socket delivery; OpenSSL (AES-GCM and the `EVP` call
//!   overhead of OpenSSL 3) was 15%, hipd's own code 11%. Raw IP sockets
//!   have no segmentation offload, so every 1400-byte packet takes that
//!   path alone. ESP in UDP sends a run of equal-size packets as one
//!   `UDP_SEGMENT` super-packet and receives it with `UDP_GRO`, one skb per
//!   up to 64 packets through veth and both stacks, which is why it meets
//!   the iperf3 target (0.30–0.31 idle) and native does not (0.18–0.26).
//!
//! # Findings, session 6: what bounds the latency rows
//!
//! Native underlay, `--only ping-pong,connect --no-bex`, one run each:
//!
//! | setting | plain rt/s | HIT rt/s | ratio | plain conn/s | HIT conn/s | ratio |
//! |---|---:|---:|---:|---:|---:|---:|
//! | 2 vCPUs, idle (5 runs / 3 runs) | 11,000–15,400 | 1,800–2,800 | 0.16–0.22 | 4,400–11,800 | 1,400–2,900 | 0.21–0.31 |
//! | 2 vCPUs, a `SCHED_IDLE` spinner on each | 38,400 | 6,000 | 0.16 | 19,600 | 3,000 | 0.16 |
//! | all on one vCPU (`taskset -c 0`) | 145,700 | 27,600 | 0.19 | 42,500 | 9,100 | 0.21 |
//!
//! * On one vCPU nothing waits for a wake-up on another CPU, so the row is
//!   pure work: a HIT round trip costs ~36 µs against ~7 µs, i.e. ~14 µs
//!   of extra work per message, for the two extra user/kernel crossings
//!   of each side (TUN read, seal, `sendmmsg`; `recvmmsg`, open, TUN
//!   write) and two extra context switches. `strace -c` of b's hipd:
//!   exactly one `read`, `sendmmsg`, `recvmmsg` and `writev` per packet;
//!   `perf`: hipd's own code, libc and OpenSSL are ~8% of all samples, the
//!   kernel paths the rest. So the work ratio is ~0.2 whatever hipd's
//!   user space does.
//! * On two vCPUs every cross-CPU wake-up of this guest (nested
//!   virtualization, `cpuidle` haltpoll with `guest_halt_poll_ns=0`)
//!   costs ~35–50 µs: plain TCP itself is 10× slower than on one vCPU. A
//!   HIT message pays three wake-ups (hipd on the sending host, hipd on
//!   the receiving host, the application) where plain TCP pays one;
//!   keeping both vCPUs out of halt (the spinners) speeds both up but
//!   leaves the ratio.
//! * So connect + close ≥ 0.5 is out of reach for a data plane that must
//!   cross into user space twice per packet on this machine: neither the
//!   work (0.21) nor the wake-ups (3 against 1) allow it. Busy polling in
//!   hipd would trade a spinning vCPU for the wake-ups; it was not made a
//!   default.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hip_proto::crypto::{
    CryptoBackend, DhGroup, EcCurve, IdentitySpec, OpensslBackend, PrivateIdentity,
    generate_identity_with_rng,
};
use hip_proto::engine::{Config, Datagram, Endpoint, Event, Transport};
use hip_proto::wire::Hit;
use hipd_backend::control::{NatMode, Request, Response};
use mh_examples::hipd_lab::{self, LabHipd, call, default_hit as hit_of};
use netlab::{Family, Host, Lab};
use rand::RngCore;

type Hipd = LabHipd;

fn start_hipd(lab: &Lab, host: &Host, hipd: &Path, tun_mtu: &str) -> anyhow::Result<Hipd> {
    let dir = lab.artifacts_dir().join(format!("{}-hip", host.name()));
    let sock = dir.join("hipd.sock");
    hipd_lab::start(
        host,
        hipd,
        &dir,
        &sock,
        &["--debug", "none", "--tun-mtu", tun_mtu],
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn iperf3(a: &Host, b: &Host, dst: IpAddr, port: u16, secs: u32) -> anyhow::Result<f64> {
    let srv = b.spawn([
        "iperf3",
        "-s",
        "-1",
        "-B",
        &dst.to_string(),
        "-p",
        &port.to_string(),
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    let out = a.exec_ok([
        "iperf3",
        "-c",
        &dst.to_string(),
        "-p",
        &port.to_string(),
        "-l",
        "128K",
        "-t",
        &secs.to_string(),
        "-J",
    ])?;
    let _ = srv.wait_timeout(Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON")?;
    Ok(bps / 8.0 / 1e6)
}

/// TCP throughput (MB/s) with `size`-byte writes for `dur`.
fn tcp_writes(
    a: &Host,
    b: &Host,
    dst: IpAddr,
    port: u16,
    size: usize,
    dur: Duration,
) -> anyhow::Result<f64> {
    let l = b.run(move || TcpListener::bind((dst, port)))??;
    let rx = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        let mut t0 = None;
        loop {
            let k = s.read(&mut buf)?;
            if t0.is_none() {
                t0 = Some(Instant::now());
            }
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        Ok((n, t0.map(|t| t.elapsed()).unwrap_or_default()))
    });
    let mut c = a.run(move || TcpStream::connect((dst, port)))??;
    let chunk = vec![0x5au8; size];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for _ in 0..64 {
            c.write_all(&chunk)?;
        }
    }
    drop(c);
    let (n, el) = rx.join().map_err(|_| anyhow::anyhow!("rx panicked"))??;
    Ok(n as f64 / el.as_secs_f64() / 1e6)
}

fn ping_pong(a: &Host, b: &Host, dst: IpAddr, port: u16, dur: Duration) -> anyhow::Result<f64> {
    let l = b.run(move || TcpListener::bind((dst, port)))??;
    let srv = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        loop {
            if s.read(&mut b)? == 0 {
                return Ok(());
            }
            s.write_all(&b)?;
        }
    });
    let mut c = a.run(move || TcpStream::connect((dst, port)))??;
    c.set_nodelay(true)?;
    let mut n = 0u64;
    let mut b1 = [1u8; 1];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        c.write_all(&b1)?;
        c.read_exact(&mut b1)?;
        n += 1;
    }
    drop(c);
    let _ = srv.join();
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn connect_close(a: &Host, b: &Host, dst: IpAddr, port: u16, dur: Duration) -> anyhow::Result<f64> {
    let l = b.run(move || TcpListener::bind((dst, port)))??;
    l.set_nonblocking(false)?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let srv = std::thread::spawn(move || {
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((s, _)) = l.accept() {
                drop(s);
            }
        }
    });
    let res = a.run(move || -> std::io::Result<f64> {
        let mut n = 0u64;
        let t0 = Instant::now();
        let mut eof = [0u8; 1];
        while t0.elapsed() < dur {
            let mut s = TcpStream::connect((dst, port))?;
            // Abortive close: TIME_WAIT port exhaustion would otherwise
            // dominate the figure after a few thousand connections.
            let _ = nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
            // Wait for the server's close (end of stream).
            let _ = s.read(&mut eof);
            drop(s);
            n += 1;
        }
        Ok(n as f64 / t0.elapsed().as_secs_f64())
    })??;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Unblock the acceptor.
    let _ = a.run(move || TcpStream::connect((dst, port)));
    let _ = srv.join();
    Ok(res)
}

/// Puzzle difficulty of the BEX latency row.
const BEX_PUZZLE_K: u8 = 10;

fn bex_latency(sock: &Path, peer: Ipv6Addr, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut v = Vec::new();
    for _ in 0..n {
        let _ = call(sock, Request::Rst { hit: Some(peer) });
        let t0 = Instant::now();
        loop {
            let r = call(sock, Request::GetHa { hit: Some(peer) });
            let closed = match r {
                Ok(Response::Has { has }) => has.iter().all(|h| h.state == "CLOSED"),
                _ => true,
            };
            if closed || t0.elapsed() > Duration::from_secs(3) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = Instant::now();
        match call(
            sock,
            Request::Connect {
                hit: peer,
                wait_ms: 5000,
            },
        )? {
            Response::Connected { .. } => v.push(t.elapsed().as_secs_f64() * 1e3),
            r => bail!("connect: {r:?}"),
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Ok((p(0.5), p(0.99)))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|x| x.parse().ok())
        })
        .unwrap_or(0)
}

/// Creates `n` associations with the hipd at `dst` over UDP 10500 from an
/// in-process initiator engine with `n` identities (run inside host a).
fn make_assocs(
    keys: Vec<Arc<dyn PrivateIdentity>>,
    dst: IpAddr,
    src: IpAddr,
    peer: Hit,
) -> anyhow::Result<usize> {
    let backend: Arc<dyn CryptoBackend> = Arc::new(OpensslBackend::new());
    let cfg = Config {
        dh_groups: vec![DhGroup::EcdhP256],
        initiator_transport: Transport::Udp {
            src_port: 10500,
            dst_port: 10500,
        },
        i1_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let hits: Vec<Hit> = keys
        .iter()
        .map(|k| k.host_id().hit(backend.as_ref()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut ep = Endpoint::new(cfg, keys, backend, seed, Instant::now())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sock = UdpSocket::bind(SocketAddr::new(src, 10500))?;
    sock.set_read_timeout(Some(Duration::from_millis(2)))?;
    let to = SocketAddr::new(dst, 10500);
    let mut next = 0;
    let mut done = 0;
    let mut failed = 0;
    let mut inflight = 0;
    let mut buf = vec![0u8; 4096];
    let t0 = Instant::now();
    while done + failed < hits.len() && t0.elapsed() < Duration::from_secs(300) {
        while inflight < 32 && next < hits.len() {
            ep.connect(Instant::now(), Some(peer), vec![dst], Some(hits[next]))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            next += 1;
            inflight += 1;
        }
        while let Some(mut t) = ep.poll_transmit() {
            if t.src.is_none() {
                t.fill_checksum(src);
            }
            let mut p = vec![0u8; 4];
            p.extend_from_slice(&t.payload);
            let _ = sock.send_to(&p, to);
        }
        while let Some(ev) = ep.poll_event() {
            match ev {
                Event::Established { .. } => {
                    done += 1;
                    inflight -= 1;
                }
                Event::Failed { .. } => {
                    failed += 1;
                    inflight -= 1;
                }
                _ => {}
            }
        }
        match sock.recv_from(&mut buf) {
            Ok((k, from)) if k > 4 && buf[..4] == [0, 0, 0, 0] => ep.handle(
                Instant::now(),
                Datagram {
                    src: from.ip(),
                    dst: src,
                    transport: Transport::Udp {
                        src_port: from.port(),
                        dst_port: 10500,
                    },
                    payload: buf[4..k].to_vec(),
                },
            ),
            _ => {}
        }
        let now = Instant::now();
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
    }
    Ok(done)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let assoc_counts: Vec<usize> = args
        .iter()
        .position(|a| a == "--assocs")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10000]);
    let exe = std::env::current_exe()?;
    let hipd = exe.with_file_name("hipd");
    if !hipd.exists() {
        bail!(
            "{} missing: cargo build -p hipd-backend --bins (same profile)",
            hipd.display()
        );
    }
    let lab = Lab::new()?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let l0 = lab.link(&a, &b)?;
    lab.wait_usable(Duration::from_secs(5))?;
    for h in [&a, &b] {
        h.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        h.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }
    let tun_mtu = args
        .iter()
        .position(|a| a == "--tun-mtu")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| hipd_backend::daemon::TUN_MTU.to_string());
    let transports: Vec<NatMode> = match args
        .iter()
        .position(|a| a == "--transport")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
    {
        Some("native") => vec![NatMode::None],
        Some("udp") => vec![NatMode::PlainUdp],
        _ => vec![NatMode::None, NatMode::PlainUdp],
    };
    let da = start_hipd(&lab, &a, &hipd, &tun_mtu)?;
    let db = start_hipd(&lab, &b, &hipd, &tun_mtu)?;
    let hit_b = hit_of(&db.sock)?;
    let b_ip = l0.addr(&b, Family::V6);
    // Maps b's HIT to its address over `t` and (re)establishes the
    // association with that transport.
    let use_transport = |t: NatMode| -> anyhow::Result<()> {
        call(
            &da.sock,
            Request::AddMap {
                hit: hit_b,
                ip: b_ip,
                lsi: None,
                transport: Some(t),
            },
        )?;
        let _ = call(&da.sock, Request::Rst { hit: Some(hit_b) });
        std::thread::sleep(Duration::from_millis(100));
        call(
            &da.sock,
            Request::Connect {
                hit: hit_b,
                wait_ms: 5000,
            },
        )?;
        Ok(())
    };
    let rounds = if quick { 1 } else { 3 };
    let dur = Duration::from_secs(if quick { 1 } else { 2 });
    let hit = IpAddr::V6(hit_b);
    let mut port = 7000u16;
    let mut next_port = || {
        port += 1;
        port
    };
    println!(
        "hipd benchmark (two namespaces, one veth link, IPv6 underlay, hip0 MTU {tun_mtu}; \
         [native]: ESP as IP protocol 50, [udp]: ESP in UDP 10500)"
    );
    println!(
        "{:<42} {:>12} {:>12} {:>8}",
        "measurement", "plain", "HIT", "ratio"
    );
    // `--only a,b`: run only the rows whose name contains one of these.
    let only: Vec<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut row = |name: &str,
                   unit: &str,
                   f: &mut dyn FnMut(IpAddr, u16) -> anyhow::Result<f64>|
     -> anyhow::Result<()> {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            return Ok(());
        }
        let (mut p, mut h) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            p.push(f(b_ip, next_port())?);
            h.push(f(hit, next_port())?);
        }
        let (p, h) = (median(p), median(h));
        println!(
            "{:<42} {:>12} {:>12} {:>8.3}",
            format!("{name} ({unit})"),
            format!("{p:.1}"),
            format!("{h:.1}"),
            h / p
        );
        Ok(())
    };
    let bex_only = args.iter().any(|a| a == "--bex-only");
    let iperf_secs: u32 = args
        .iter()
        .position(|a| a == "--iperf-secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 2 } else { 4 });
    for &t in &transports {
        use_transport(t)?;
        if bex_only {
            break;
        }
        let tag = if t == NatMode::None { "native" } else { "udp" };
        row(
            &format!("[{tag}] iperf3 128 KiB writes"),
            "MB/s",
            &mut |d, p| iperf3(&a, &b, d, p, iperf_secs),
        )?;
        for size in [512usize, 2048, 8192] {
            row(
                &format!("[{tag}] TCP {size} B writes"),
                "MB/s",
                &mut |d, p| tcp_writes(&a, &b, d, p, size, dur),
            )?;
        }
        row(&format!("[{tag}] 1-byte ping-pong"), "rt/s", &mut |d, p| {
            ping_pong(&a, &b, d, p, dur)
        })?;
        row(&format!("[{tag}] connect+close"), "1/s", &mut |d, p| {
            connect_close(&a, &b, d, p, Duration::from_secs(1))
        })?;
    }
    if args.iter().any(|a| a == "--no-bex") {
        return Ok(());
    }
    // The issue's setting for the latency target: puzzle K = 10 (hipd's
    // default is lower, see the hipd crate docs), ECDSA P-256 + ECDH P-256.
    call(&db.sock, Request::SetPuzzle { k: BEX_PUZZLE_K })?;
    let (p50, p99) = bex_latency(&da.sock, hit_b, if quick { 20 } else { 200 })?;
    println!(
        "{:<42} {:>12} {:>12}",
        format!("BEX latency p50/p99 (ms, K={BEX_PUZZLE_K})"),
        format!("{p50:.2}"),
        format!("{p99:.2}")
    );

    // Memory per association on b.
    let backend = OpensslBackend::new();
    let max = assoc_counts.iter().copied().max().unwrap_or(0);
    let mut rng = rand::rng();
    let mut keys: Vec<Arc<dyn PrivateIdentity>> = Vec::with_capacity(max);
    for _ in 0..max {
        let k = generate_identity_with_rng(&backend, IdentitySpec::Ecdsa(EcCurve::P256), &mut rng)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        keys.push(Arc::from(k));
    }
    let pid = db.proc.pid();
    // a's hipd owns UDP 10500 on a; the in-process initiator takes over.
    drop(da);
    std::thread::sleep(Duration::from_millis(300));
    let base = rss_kib(pid);
    let a_v4 = l0.addr(&a, Family::V4);
    let b_v4 = l0.addr(&b, Family::V4);
    let mut made = 0usize;
    for &n in &assoc_counts {
        let batch: Vec<_> = keys[made..n.max(made)].to_vec();
        let peer = Hit::from(hit_b);
        let got = a.run(move || make_assocs(batch, b_v4, a_v4, peer))??;
        made += got;
        std::thread::sleep(Duration::from_millis(300));
        let rss = rss_kib(pid);
        let per = (rss.saturating_sub(base)) as f64 * 1024.0 / made.max(1) as f64;
        println!(
            "{:<42} {:>12} {:>12}",
            format!("memory/assoc @{made} (bytes)"),
            format!("{per:.0}"),
            format!("rss {rss} KiB")
        );
    }
    drop(db);
    Ok(())
}
