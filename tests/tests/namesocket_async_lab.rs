//! The tokio driver between two lab hosts joined by two veth links: an
//! [`AsyncNameStream`] client in host a and an [`AsyncNameListener`] server
//! in host b stream 20 MB each way at once, byte-exact (pattern check and a
//! running checksum at both ends), while the active link is taken down or
//! silently dropped mid-transfer; the session resumes over the other link
//! with no application error. (The async driver has its own reconnect loop
//! and its own listener with RESUME handling, so the std driver's lab tests
//! in namesocket_lab.rs do not cover it.)

mod namesocket_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mh_tests::Pattern;
use namesocket::{AsyncNameListener, AsyncNameStream, ListenerStats, Options, PathLog};
use namesocket_support::{MB, Topo, opts_for, topo};
use netlab::{Family, FaultStamp, Link};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

/// The index of the link whose address of b is `dst`.
fn link_of(t: &Topo, dst: &SocketAddr) -> usize {
    t.links
        .iter()
        .position(|l| l.addr(&t.b, Family::V6) == dst.ip() || l.addr(&t.b, Family::V4) == dst.ip())
        .expect("the path runs over one of the lab links")
}

/// A running checksum (FNV-1a, 64 bits) of a stream.
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Writes `total` pattern bytes, pausing once `gate_at` are written until
/// `gate` opens (the test breaks the path meanwhile, so the failure hits
/// mid-transfer with data in flight), then shuts writing down. Returns the
/// checksum of what was written.
async fn send_stream(
    w: &mut WriteHalf<AsyncNameStream>,
    seed: u64,
    total: u64,
    progress: &AtomicU64,
    gate_at: u64,
    gate: &AtomicBool,
) -> Checksum {
    let mut p = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    while sent < total {
        if sent >= gate_at {
            let t0 = Instant::now();
            while !gate.load(Ordering::Acquire) {
                assert!(t0.elapsed() < Duration::from_secs(30), "gate never opened");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let limit = if sent < gate_at { gate_at } else { total };
        let n = (limit - sent).min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        w.write_all(&buf[..n])
            .await
            .expect("write must never fail across path failures");
        sent += n as u64;
        progress.store(sent, Ordering::Release);
    }
    w.shutdown()
        .await
        .expect("shutdown must never fail across path failures");
    sum
}

/// Reads to the end of stream, checking every byte against the pattern;
/// returns the byte count and the checksum.
async fn recv_stream(r: &mut ReadHalf<AsyncNameStream>, seed: u64) -> (u64, Checksum) {
    let mut p = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .expect("read must never fail across path failures");
        if n == 0 {
            return (got, sum);
        }
        if let Err(off) = p.check(&buf[..n]) {
            panic!("stream corrupted at byte {off}");
        }
        sum.update(&buf[..n]);
        got += n as u64;
    }
}

/// One end's result: bytes received and their checksum, checksum of what it
/// sent, its path log.
struct End {
    got: u64,
    got_sum: Checksum,
    sent_sum: Checksum,
    log: PathLog,
}

/// Sends (gated) and receives at once on `s`, waits until the peer
/// acknowledged everything, then keeps the session (and so its runtime)
/// running until the other end is done too (`mine` / `theirs`): the other
/// end may still wait for this end's last acknowledgement.
async fn run_end(
    s: AsyncNameStream,
    send_seed: u64,
    recv_seed: u64,
    total: u64,
    progress: &AtomicU64,
    gate: &AtomicBool,
    (mine, theirs): (&AtomicBool, &AtomicBool),
) -> End {
    let (mut r, mut w) = tokio::io::split(s);
    let ((got, got_sum), sent_sum) = tokio::join!(
        recv_stream(&mut r, recv_seed),
        send_stream(&mut w, send_seed, total, progress, total / 5, gate)
    );
    let s = r.unsplit(w);
    tokio::time::timeout(Duration::from_secs(60), s.wait_acked())
        .await
        .expect("acknowledged in time")
        .expect("acknowledged");
    mine.store(true, Ordering::Release);
    let t0 = Instant::now();
    while !theirs.load(Ordering::Acquire) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the other end never finished"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    End {
        got,
        got_sum,
        sent_sum,
        log: s.path_log(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// 20 MB each way between the tokio client in a and the tokio server in b;
/// `fault` breaks the active link once a fifth went each way.
fn async_bidirectional(
    t: &Topo,
    port: u16,
    base: Options,
    fault: impl FnOnce(&Topo, &Link) -> FaultStamp,
) {
    let total = 20 * MB;
    let gate = Arc::new(AtomicBool::new(false));
    let c_done = Arc::new(AtomicBool::new(false));
    let s_done = Arc::new(AtomicBool::new(false));
    let c_progress = Arc::new(AtomicU64::new(0));
    let s_progress = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel();
    let server_opts = opts_for(&t.b, base.clone());
    let (g, sp) = (Arc::clone(&gate), Arc::clone(&s_progress));
    let (sd, cd) = (Arc::clone(&s_done), Arc::clone(&c_done));
    let server =
        t.b.spawn_thread(move || -> (End, ListenerStats) {
            runtime().block_on(async move {
                let l = AsyncNameListener::bind_with(&port.to_string(), &server_opts)
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let s = l.accept().await.unwrap();
                let end = run_end(s, 2, 1, total, &sp, &g, (&sd, &cd)).await;
                (end, l.stats())
            })
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let client_opts = opts_for(&t.a, base);
    let (path_tx, path_rx) = mpsc::channel();
    let (g, cp) = (Arc::clone(&gate), Arc::clone(&c_progress));
    let (cd, sd) = (Arc::clone(&c_done), Arc::clone(&s_done));
    let client =
        t.a.spawn_thread(move || -> End {
            runtime().block_on(async move {
                let c = AsyncNameStream::connect_with("b", &port.to_string(), &client_opts)
                    .await
                    .expect("connect by name");
                path_tx.send(c.path_log().current_path).unwrap();
                run_end(c, 1, 2, total, &cp, &g, (&cd, &sd)).await
            })
        })
        .unwrap();
    let (_, before) = path_rx.recv().unwrap().expect("the client knows its path");
    let t0 = Instant::now();
    while c_progress.load(Ordering::Acquire) < total / 5
        || s_progress.load(Ordering::Acquire) < total / 5
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "transfer stalled before the fault"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let link = &t.links[link_of(t, &before)];
    let stamp = fault(t, link);
    gate.store(true, Ordering::Release);
    let c = client.join().expect("client side failed");
    let (s, stats) = server.join().expect("server side failed");
    assert_eq!(c.got, total, "server → client byte count");
    assert_eq!(s.got, total, "client → server byte count");
    assert_eq!(c.got_sum.0, s.sent_sum.0, "server → client checksum");
    assert_eq!(s.got_sum.0, c.sent_sum.0, "client → server checksum");
    let log = &c.log;
    assert!(log.path_failures >= 1, "failure detected: {log:#?}");
    assert!(log.resumes >= 1, "the session resumed: {log:#?}");
    assert!(stats.resumes >= 1, "listener: {stats:?}");
    assert!(s.log.resumes >= 1, "server: {:#?}", s.log);
    let (_, after) = log.current_path.expect("connected");
    assert_ne!(
        link_of(t, &before),
        link_of(t, &after),
        "moved to the other link"
    );
    let detected = log.last_failure_at.expect("failure detected");
    eprintln!(
        "detected {:?} after the fault, resumed {:?} later, {} bytes re-sent",
        detected.saturating_duration_since(stamp.at),
        log.last_resume_at
            .map(|r| r.saturating_duration_since(detected)),
        log.retransmitted_bytes
    );
}

#[test]
fn async_twenty_megabytes_each_way_survive_link_down() {
    let t = topo();
    async_bidirectional(&t, 7201, Options::default(), |_, l| l.down().unwrap());
}

/// The server's side of the active link silently drops everything it
/// receives (the client → server direction dies; the server's traffic still
/// reaches the client).
#[test]
fn async_twenty_megabytes_each_way_survive_silent_drop() {
    let t = topo();
    async_bidirectional(&t, 7202, Options::default(), |t, l| {
        l.drop_rx(&t.b).unwrap()
    });
}
