//! The project's self-contained demonstration (the README's main command).
//!
//! Part 1 (namesocket): builds a two-host lab (network namespaces `a` and
//! `b` joined by two veth links), runs a namesocket stream from a to b
//! addressed by *name*, cuts the link the stream is using (first by taking
//! it down, then by silently dropping its packets), and prints what
//! happened: detection, reconnect over the other link, bytes re-sent,
//! interruption, and a byte-exact check.
//!
//! Part 2 (HIP, [`hip`]): hipd on both hosts, a base exchange, a TCP
//! stream over HITs, the active address removed (UPDATE) and then the link
//! in use silently failing (failure detection), byte-exact.
//!
//! Run as root: `sudo bash scripts/demo.sh` (or build `demo` and the hipd
//! binaries with `cargo build --release -p mh-examples --bin demo -p
//! hipd-backend --bins` and run `target/release/demo [ns|hip]`).

mod hip;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use namesocket::resolve::ResolverConfig;
use namesocket::{NameListener, NameStream, Options};
use netlab::{Family, Host, Lab, Link};

const PORT: &str = "7000";
const TOTAL: u64 = 400 << 20;
const CHUNK: usize = 16 * 1024;

fn main() -> Result<()> {
    let start = Instant::now();
    let log = move |msg: String| println!("[{:>8.3}s] {msg}", start.elapsed().as_secs_f64());
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    if !matches!(which.as_str(), "all" | "ns" | "hip") {
        bail!("usage: demo [all|ns|hip]");
    }
    if which != "hip" {
        namesocket_part(&log)?;
    }
    if which != "ns" {
        hip::run(&log)?;
    }
    Ok(())
}

fn namesocket_part(log: &dyn Fn(String)) -> Result<()> {
    log("building the lab: hosts a and b, two veth links".into());
    let lab = Lab::new()
        .context("the demo needs root, iproute2 and nftables (scripts/install-deps.sh)")?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let links = [lab.link(&a, &b)?, lab.link(&a, &b)?];
    lab.wait_usable(Duration::from_secs(10))?;
    for (i, l) in links.iter().enumerate() {
        log(format!(
            "  link {i}: a={} / {}   b={} / {}",
            l.addr(&a, Family::V6),
            l.addr(&a, Family::V4),
            l.addr(&b, Family::V6),
            l.addr(&b, Family::V4)
        ));
    }
    log(format!(
        "  \"b\" in a's hosts file resolves to: {}",
        a.resolve("b")?
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let server_opts = Options {
        resolver: ResolverConfig::default()
            .with_hosts_file(b.hosts_file())
            .without_dns(),
        ..Options::default()
    };
    let client_opts = Options {
        resolver: ResolverConfig::default()
            .with_hosts_file(a.hosts_file())
            .without_dns(),
        ..Options::default()
    };
    log(format!(
        "namesocket defaults: heartbeat {:?}, dead-path timeout {:?}, resume window {:?}",
        client_opts.session.heartbeat_interval,
        client_opts.session.dead_timeout,
        client_opts.session.resume_window
    ));

    // Server in b: counts and checks the byte stream (a running checksum).
    let (ready_tx, ready_rx) = mpsc::channel();
    let received = Arc::new(AtomicU64::new(0));
    let rcv = Arc::clone(&received);
    let server = b.spawn_thread(move || -> Result<(u64, u64, namesocket::ListenerStats)> {
        let l = NameListener::bind_with(PORT, &server_opts)?;
        ready_tx.send(()).ok();
        let mut s = l.accept()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut sum = Checksum::default();
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            rcv.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok((rcv.load(Ordering::Relaxed), sum.value(), l.stats()))
    })?;
    ready_rx.recv().context("server did not start")?;

    // Client in a: connects to the *name* "b" and streams TOTAL bytes.
    let (conn_tx, conn_rx) = mpsc::channel();
    let sent = Arc::new(AtomicU64::new(0));
    let snt = Arc::clone(&sent);
    let client = a.spawn_thread(move || -> Result<u64> {
        let c = Arc::new(NameStream::connect_with("b", PORT, &client_opts)?);
        conn_tx.send(Arc::clone(&c)).ok();
        let mut buf = vec![0u8; CHUNK];
        let mut sum = Checksum::default();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut w = &*c;
        let mut n = 0u64;
        while n < TOTAL {
            for x in buf.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                x.copy_from_slice(&seed.to_le_bytes()[..x.len()]);
            }
            w.write_all(&buf)?;
            sum.update(&buf);
            n += buf.len() as u64;
            snt.store(n, Ordering::Relaxed);
        }
        c.shutdown(std::net::Shutdown::Write)?;
        c.wait_acked(Some(Duration::from_secs(60)))?;
        Ok(sum.value())
    })?;
    let c = conn_rx.recv().context("client did not connect")?;
    let (src, dst) = c.path_log().current_path.context("no path")?;
    log(format!(
        "connected to \"b\" over {} -> {dst}",
        src.map_or("*".into(), |s| s.to_string())
    ));

    // Fault 1: link down. Fault 2: silent drop of the link in use then.
    let mut summaries = Vec::new();
    for (round, fault) in [("link down", 1u8), ("silent packet drop", 2u8)]
        .into_iter()
        .enumerate()
    {
        let target = TOTAL * (round as u64 + 1) / 3;
        while sent.load(Ordering::Relaxed) < target {
            if server.is_finished() || client.is_finished() {
                bail!("transfer ended early");
            }
            thread::sleep(Duration::from_millis(5));
        }
        let link = active_link(&links, &b, &c)?;
        let before = c.path_log();
        let rcv_before = received.load(Ordering::Relaxed);
        let stamp = match fault.1 {
            1 => link.down()?,
            _ => link.drop_both()?,
        };
        log(format!(
            "FAULT {}: {} on link {} ({} MB received so far)",
            round + 1,
            fault.0,
            link.index(),
            rcv_before >> 20
        ));
        // Watch the receiver until data flows again.
        let mut stalled_at = None;
        let mut last = rcv_before;
        let t0 = Instant::now();
        let resumed_at = loop {
            let r = received.load(Ordering::Relaxed);
            let lg = c.path_log();
            if lg.resumes > before.resumes && r > last {
                break Instant::now();
            }
            if r == last && stalled_at.is_none() {
                stalled_at = Some(Instant::now());
            }
            last = r;
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("no recovery within 30 s: {lg:#?}");
            }
            thread::sleep(Duration::from_millis(1));
        };
        let lg = c.path_log();
        let detected = lg.last_failure_at.unwrap_or(stamp.at);
        let (nsrc, ndst) = lg.current_path.context("no path")?;
        log(format!(
            "  detected the dead path {:.0} ms after the fault",
            detected.saturating_duration_since(stamp.at).as_secs_f64() * 1e3
        ));
        log(format!(
            "  reconnected over {} -> {ndst} (link {}) and resumed; {} bytes re-sent",
            nsrc.map_or("*".into(), |s| s.to_string()),
            active_link(&links, &b, &c)?.index(),
            lg.retransmitted_bytes - before.retransmitted_bytes
        ));
        let interruption = resumed_at.saturating_duration_since(stamp.at);
        log(format!(
            "  data flowing again {:.0} ms after the fault",
            interruption.as_secs_f64() * 1e3
        ));
        summaries.push((
            fault.0,
            detected.saturating_duration_since(stamp.at),
            interruption,
        ));
        link.restore()?;
        if fault.1 == 1 {
            link.up()?;
        }
    }

    let client_sum = client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    let (server_bytes, server_sum, stats) = server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    let lg = c.path_log();
    println!();
    println!("summary");
    println!("  bytes sent by a:         {}", TOTAL);
    println!("  bytes received by b:     {server_bytes}");
    println!(
        "  checksums:               a {client_sum:016x}  b {server_sum:016x}  -> {}",
        if client_sum == server_sum && server_bytes == TOTAL {
            "byte-exact"
        } else {
            "MISMATCH"
        }
    );
    println!("  application errors:      none (every send and receive succeeded)");
    println!("  path failures detected:  {}", lg.path_failures);
    println!(
        "  resumes:                 {} (listener saw {})",
        lg.resumes, stats.resumes
    );
    println!("  bytes re-sent:           {}", lg.retransmitted_bytes);
    for (what, det, gap) in &summaries {
        println!(
            "  {what:<20} detection {:>5.0} ms, interruption {:>5.0} ms",
            det.as_secs_f64() * 1e3,
            gap.as_secs_f64() * 1e3
        );
    }
    if client_sum != server_sum || server_bytes != TOTAL {
        bail!("the stream was not delivered byte-exact");
    }
    drop(lab);
    Ok(())
}

fn active_link<'a>(links: &'a [Link; 2], b: &Host, c: &NameStream) -> Result<&'a Link> {
    let (_, dst) = c.path_log().current_path.context("no path")?;
    links
        .iter()
        .find(|l| l.addr(b, Family::V6) == dst.ip() || l.addr(b, Family::V4) == dst.ip())
        .context("path not on a lab link")
}

/// Fletcher-style running checksum over the stream.
#[derive(Default)]
pub(crate) struct Checksum {
    a: u64,
    b: u64,
}

impl Checksum {
    pub(crate) fn update(&mut self, data: &[u8]) {
        for chunk in data.chunks(4096) {
            for &x in chunk {
                self.a = self.a.wrapping_add(u64::from(x));
                self.b = self.b.wrapping_add(self.a);
            }
            self.a %= 0xFFFF_FFFB;
            self.b %= 0xFFFF_FFFB;
        }
    }
    pub(crate) fn value(&self) -> u64 {
        (self.b << 32) | self.a
    }
}
