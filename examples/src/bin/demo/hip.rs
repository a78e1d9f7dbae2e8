//! The HIP half of the demonstration: two hosts running hipd, a base
//! exchange, a TCP stream over HITs, the active address removed (UPDATE
//! with LOCATOR_SET, the peer verifies the new locator and moves), then a
//! silent failure of the link then in use (REAP-style failure detection
//! and path exploration move the association), all without the
//! application noticing.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hipd_backend::control::{Request, Response, ShimContextInfo, StatsInfo};
use mh_examples::hipd_lab::{self, LabHipd, call, default_hit};
use netlab::{Family, Host, Lab};

use super::Checksum;

const TOTAL: u64 = 300 << 20;
const CHUNK: usize = 64 * 1024;
const PORT: u16 = 7100;

fn start_hipd(host: &Host, hipd: &Path, dir: &Path) -> Result<LabHipd> {
    let log = dir.join("hipd.log");
    hipd_lab::start(
        host,
        hipd,
        dir,
        &dir.join("hipd.sock"),
        &[
            "--system-hosts",
            host.hosts_file().to_str().context("path")?,
            "--debug",
            "low",
            "--log-file",
            log.to_str().context("path")?,
        ],
    )
}

fn shim(sock: &Path, peer: Ipv6Addr) -> Option<ShimContextInfo> {
    match call(sock, Request::ShimList { hit: Some(peer) }) {
        Ok(Response::ShimContexts { ctxs }) => ctxs.into_iter().next(),
        _ => None,
    }
}

fn stats(sock: &Path) -> Result<StatsInfo> {
    match call(sock, Request::Stats)? {
        Response::Stats { stats } => Ok(stats),
        r => bail!("unexpected {r:?}"),
    }
}

fn show(p: Option<(IpAddr, IpAddr)>) -> String {
    p.map_or("-".into(), |(l, r)| format!("{l} -> {r}"))
}

/// Runs the HIP demonstration; `log` prints a timestamped line.
pub fn run(log: &dyn Fn(String)) -> Result<()> {
    let hipd = std::env::current_exe()?.with_file_name("hipd");
    if !hipd.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p hipd-backend --bins`",
            hipd.display()
        );
    }
    log("HIP: building a new lab (hosts a and b, two links) and starting hipd on both".into());
    let lab = Lab::new()?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let links = [lab.link(&a, &b)?, lab.link(&a, &b)?];
    lab.wait_usable(Duration::from_secs(10))?;
    let dir = lab.artifacts_dir().to_path_buf();
    let ha = start_hipd(&a, &hipd, &dir.join("a-hip"))?;
    let hb = start_hipd(&b, &hipd, &dir.join("b-hip"))?;
    let hit_b = default_hit(&hb.sock)?;
    let b0 = links[0].addr(&b, Family::V6);
    call(
        &ha.sock,
        Request::AddMap {
            hit: hit_b,
            ip: b0,
            lsi: None,
            transport: None,
        },
    )?;
    log(format!(
        "  b's HIT {hit_b}; a knows one locator of it: {b0}"
    ));

    // Receiver in b: checksum, bytes, longest gap between reads.
    let listener = {
        let _g = b.enter()?;
        TcpListener::bind(SocketAddr::new(IpAddr::V6(hit_b), PORT))?
    };
    let received = Arc::new(AtomicU64::new(0));
    let rcv = received.clone();
    let server = thread::spawn(move || -> Result<(u64, Duration)> {
        let (mut s, _) = listener.accept()?;
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; CHUNK];
        let mut last = Instant::now();
        let mut gap = Duration::ZERO;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok((sum.value(), gap));
            }
            sum.update(&buf[..n]);
            rcv.fetch_add(n as u64, Ordering::Relaxed);
            gap = gap.max(last.elapsed());
            last = Instant::now();
        }
    });
    let t_bex = Instant::now();
    let mut s = {
        let _g = a.enter()?;
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V6(hit_b), PORT),
            Duration::from_secs(10),
        )?
    };
    log(format!(
        "  base exchange + TCP connect to the HIT: {:.1} ms",
        t_bex.elapsed().as_secs_f64() * 1e3
    ));
    let ctx = shim(&ha.sock, hit_b).context("no shim context")?;
    log(format!(
        "  association {}: path {}",
        ctx.state,
        show(ctx.path)
    ));

    // Sender in a (paced to ~40 MB/s so the faults land mid-stream).
    let sent = Arc::new(AtomicU64::new(0));
    let snt = sent.clone();
    let client = thread::spawn(move || -> Result<u64> {
        let mut sum = Checksum::default();
        let mut chunk = vec![0u8; CHUNK];
        let mut n = 0u64;
        let t0 = Instant::now();
        while n < TOTAL {
            for (i, x) in chunk.iter_mut().enumerate() {
                *x = (n as usize + i).wrapping_mul(31) as u8;
            }
            s.write_all(&chunk)?;
            sum.update(&chunk);
            n += CHUNK as u64;
            snt.store(n, Ordering::Relaxed);
            let due = Duration::from_secs_f64(n as f64 / (40u64 << 20) as f64);
            if let Some(w) = due.checked_sub(t0.elapsed()) {
                thread::sleep(w);
            }
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(sum.value())
    });
    let wait_sent = |frac: u64| {
        while sent.load(Ordering::Relaxed) < TOTAL / 100 * frac {
            thread::sleep(Duration::from_millis(20));
        }
    };
    let wait_path = |old: Option<(IpAddr, IpAddr)>, t0: Instant| -> Option<(IpAddr, IpAddr)> {
        while t0.elapsed() < Duration::from_secs(15) {
            let p = shim(&ha.sock, hit_b).and_then(|c| c.path);
            if p.is_some() && p != old {
                return p;
            }
            thread::sleep(Duration::from_millis(5));
        }
        None
    };

    // 1. The active address of b disappears: b announces its other
    // locators (UPDATE with LOCATOR_SET), a verifies one and moves.
    wait_sent(25);
    let old = shim(&ha.sock, hit_b).and_then(|c| c.path);
    let dev = links[0].dev(&b).to_string();
    let t1 = Instant::now();
    b.exec_ok(["ip", "-6", "addr", "del", &format!("{b0}/64"), "dev", &dev])?;
    log(format!(
        "fault 1: b's address {b0} removed ({} MB sent)",
        sent.load(Ordering::Relaxed) >> 20
    ));
    match wait_path(old, t1) {
        Some(p) => log(format!(
            "  UPDATE: a now sends on {} ({:.0} ms after the removal)",
            show(Some(p)),
            t1.elapsed().as_secs_f64() * 1e3
        )),
        None => log("  the path did not change within 15 s".into()),
    }

    // 2. Silent failure of the link now in use: packets to b on it are
    // dropped without any error signal.
    wait_sent(60);
    let cur = shim(&ha.sock, hit_b).and_then(|c| c.path);
    let link = cur
        .and_then(|(_, d)| {
            links
                .iter()
                .find(|l| l.addr(&b, Family::V6) == d || l.addr(&b, Family::V4) == d)
        })
        .context("path not on a lab link")?;
    let t2 = Instant::now();
    link.drop_rx(&b)?;
    log(format!(
        "fault 2: link {} now silently drops everything b receives ({} MB sent)",
        link.index(),
        sent.load(Ordering::Relaxed) >> 20
    ));
    match wait_path(cur, t2) {
        Some(p) => log(format!(
            "  failure detection: no answer for the send timeout, probes, switch to {} ({:.0} ms after the fault)",
            show(Some(p)),
            t2.elapsed().as_secs_f64() * 1e3
        )),
        None => log("  the path did not change within 15 s".into()),
    }
    let client_sum = client
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    let (server_sum, gap) = server
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    let got = received.load(Ordering::Relaxed);
    let sa = stats(&ha.sock)?;
    let ctx = shim(&ha.sock, hit_b).context("no shim context")?;
    log("HIP summary:".into());
    log(format!(
        "  {} MB over the HIT, byte-exact: {} (checksums {client_sum:016x} / {server_sum:016x})",
        got >> 20,
        client_sum == server_sum && got == TOTAL
    ));
    log(format!(
        "  longest pause seen by the receiver: {:.0} ms; path switches: {}; keepalives sent {} / received {}",
        gap.as_secs_f64() * 1e3,
        ctx.switches,
        sa.keepalives_tx,
        sa.keepalives_rx
    ));
    log(format!(
        "  ESP packets sent {} / received {}; HIP control packets sent {} / received {}",
        sa.esp_tx, sa.esp_rx, sa.hip_tx, sa.hip_rx
    ));
    if client_sum != server_sum || got != TOTAL {
        bail!("the HIP stream was not delivered byte-exact");
    }
    drop(lab);
    Ok(())
}
