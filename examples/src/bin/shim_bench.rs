//! `shim_bench` — failover of the HIP shim (hipd, `SOL_SHIM` settings)
//! against Linux MPTCP on the same lab topology, and the cost of a
//! `SOL_SHIM` query.
//!
//! ```text
//! cargo build --release -p hipd-backend --bins
//! cargo build --release -p mh-examples --bin shim_bench
//! sudo target/release/shim_bench [--runs 5] [--variants mptcp-backup,hip-defaults] [--quick]
//! ```
//!
//! # Topology
//! Two hosts `a` (sender) and `b` (receiver) joined by **two** veth links
//! `l0` and `l1` (IPv6 underlay, netlab addressing). Every run builds a
//! fresh lab (and, for the HIP variants, fresh hipd processes whose host
//! identities are kept in a temporary directory across runs), so no run
//! inherits path state from the previous one; runs are interleaved over
//! the variants (run 1 of every variant, then run 2, …) so slow machine
//! drifts hit all variants alike.
//!
//! # Variants
//! * `mptcp-backup` — `socket(AF_INET6, SOCK_STREAM, IPPROTO_MPTCP)`;
//!   `ip mptcp limits set subflow 2 add_addr_accepted 2` on both hosts;
//!   `b` announces its `l1` address (`endpoint … signal backup`), `a` adds
//!   its `l1` address as a `subflow backup` endpoint. The connection starts
//!   on `l0`.
//! * `mptcp-active` — the same without the `backup` flags (both subflows
//!   carry data).
//! * `hip-defaults` — hipd on both hosts, `a` maps `b`'s HIT to both of
//!   `b`'s `l0`/`l1` addresses, base exchange, then a TCP connection to
//!   `b`'s HIT; no shim setting.
//! * `hip-tuned` — as `hip-defaults`, then `SHIM_APP_TIMEOUT_MS` 150
//!   (the project's millisecond Send Timeout) and `SHIM_PATHEXPLORE` with
//!   `pe_initprobeto` 100 ms (other fields 0 = daemon defaults) on the
//!   connected socket.
//! * `hip-hot-standby` — as `hip-defaults`, then `SHIM_HOT_STANDBY` 1.
//! * `hip-tuned-hot-standby` — both of the above.
//!
//! The options are set with [`shimapi::Shim::setsockopt`] (`SOL_SHIM`
//! level) on a [`Shim`] bound to the lab hipd's control socket (not
//! [`Shim::global`]: every run has its own daemon); the instance, and so
//! the per-socket state, lives for the whole run. A failed option is
//! reported in the table's notes and the run is measured anyway. Targets
//! (median caught up): ≤ 1.0 s with the default timeouts (`hip-defaults`,
//! `hip-hot-standby`), ≤ 0.3 s tuned.
//!
//! # Measurement
//! `a` writes a 16-byte record (sequence number, send time in nanoseconds
//! since a process-wide `Instant`) every 1 ms (`TCP_NODELAY`); `b` reads
//! and timestamps arrivals (both ends are threads of this process, so one
//! monotonic clock serves both: `CLOCK_MONOTONIC` is not per network
//! namespace). After 400 ms of steady state, the interface counters of
//! `b`'s two link ends are sampled over 200 ms; the link with the most
//! received packets carries the traffic (for HIP: the active locator pair,
//! for MPTCP: the active subflow). That link is then silently broken on the
//! receiving side with [`netlab::Link::drop_rx`] (nftables input-hook
//! drop on `b`; the sender's kernel sees nothing). From the fault's
//! [`netlab::FaultStamp`] `at`:
//!
//! * **gap** — the largest inter-arrival gap between records arriving
//!   from 50 ms before the fault until the end of the observation;
//! * **first byte** — from the fault to the arrival that ends that gap;
//! * **caught up** — from the fault to the arrival of the first record
//!   *sent after the fault* whose one-way delay is back to normal
//!   (≤ pre-fault 99th percentile delay + 5 ms).
//!
//! A run ends 200 ms after catching up, or at the per-run limit
//! (`--timeout-s`, default 10 s, `--quick` 5 s) without recovery; the link
//! is then restored and arrivals after the restore request are ignored. A
//! run without recovery counts as +∞ in the medians, so a median is finite
//! only when at least half of the runs recovered; the table says
//! "no recovery within N s" otherwise. Ratios are against `mptcp-backup`'s
//! median caught-up time. The receiver checks that records arrive in
//! order without loss or duplicates.
//!
//! # SOL_SHIM query cost
//! One TCP connection over `b`'s HIT, no traffic. Timed in 10 interleaved
//! blocks of `N/10` calls each (`--calls N`, default 20,000): the kernel
//! baseline `getsockopt(SOL_SOCKET, SO_TYPE)`; shimapi's
//! `getsockopt(SOL_SHIM, SHIM_LOC_PEER_PREF)` (32-byte `shim_locator`);
//! one raw [`Request::ShimGet`] on a persistent control connection; one
//! [`Request::Ping`] (the control-socket floor). The table gives the
//! median block cost per call in µs and the ratio to the baseline.
//!
//! # Findings (2026-11, 2 shared cores, idle, `--runs 5`, medians)
//!
//! | variant | gap | first byte | caught up | recovered |
//! |---|---:|---:|---:|---:|
//! | mptcp-backup | 298 ms | 298 ms | 910 ms | 5/5 |
//! | mptcp-active | — | — | no recovery within 10 s | 1/5 |
//! | hip-defaults | 523 ms | 523 ms | 523 ms (0.57 × MPTCP) | 5/5 |
//! | hip-tuned | 174 ms | 172 ms | 175 ms (0.19 ×) | 5/5 |
//! | hip-hot-standby | 513 ms | 509 ms | 510 ms (0.56 ×) | 5/5 |
//! | hip-tuned-hot-standby | 164 ms | 163 ms | 165 ms (0.18 ×) | 5/5 |
//!
//! * MPTCP with a backup subflow resumes after ~300 ms but the stream is
//!   only back to normal delay after ~0.9 s; with both subflows active
//!   only one run in five recovered within 10 s (default buffers).
//! * HIP: first byte and caught up coincide. After a failover hipd
//!   re-sends the sealed ESP packets the failed path swallowed on the new
//!   pair, so TCP does not wait for its retransmission timeout: the figure
//!   is the detection time (Send Timeout 500 ms default / 150 ms tuned)
//!   plus one probe round trip. Earlier, before that repair step, the
//!   figures were 719 ms / 297 ms (TCP's RTO backoff on top). Hot standby
//!   saves the probing only, which is short on this lab.
//! * SOL_SHIM query: kernel `SO_TYPE` 0.23 µs; shimapi
//!   `SHIM_LOC_PEER_PREF` 42–88 µs, a raw `ShimGet` 38–93 µs, a `Ping` on
//!   the same control connection 9–69 µs (two runs): one control round
//!   trip plus the daemon's exact sock_diag owner check (~7 µs). Before
//!   the sock_diag lookup the owner check scanned `/proc/net/tcp6` and a
//!   query cost 3.4 ms.
//!
//! The hipd binary is taken from the directory of this executable
//! (`--hipd` to override).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, ValueEnum};
use hipd_backend::control::{Client, FlowId, NatMode, Request, Response};
use mh_examples::hipd_lab::{self, LabHipd, call, default_hit as hit_of};
use netlab::{Family, Host, Lab, Link};
use shimapi::{
    SHIM_APP_TIMEOUT_MS, SHIM_HOT_STANDBY, SHIM_LOC_PEER_PREF, SHIM_PATHEXPLORE, SOL_SHIM, Shim,
    shim_pathexplore,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `IPPROTO_MPTCP` (Linux).
const IPPROTO_MPTCP: i32 = 262;
/// Record size: sequence number + send time.
const RECORD: usize = 16;
/// Steady state before the counters are sampled.
const WARMUP: Duration = Duration::from_millis(400);
/// Counter sampling window that finds the active link.
const SAMPLE: Duration = Duration::from_millis(200);
/// Extra delay over the pre-fault p99 that still counts as "normal".
const NORMAL_SLACK_NS: u64 = 5_000_000;
/// Gaps are searched from this long before the fault.
const GAP_LOOKBACK_NS: u64 = 50_000_000;

#[derive(Parser, Debug, Clone)]
#[command(about = "Failover: HIP shim (hipd, SOL_SHIM) vs Linux MPTCP; SOL_SHIM query cost")]
struct Args {
    /// Runs per variant; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Variants to measure (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Variant::ALL)]
    variants: Vec<Variant>,
    /// Short run: 3 runs per variant, 5 s limit per run, 2,000 calls.
    #[arg(long)]
    quick: bool,
    /// Per-run recovery limit in seconds (default 10, quick 5).
    #[arg(long)]
    timeout_s: Option<f64>,
    /// Calls per side of the SOL_SHIM query cost (default 20,000, quick 2,000).
    #[arg(long)]
    calls: Option<usize>,
    /// Skip the SOL_SHIM query cost.
    #[arg(long)]
    no_getsockopt: bool,
    /// Only the SOL_SHIM query cost.
    #[arg(long)]
    only_getsockopt: bool,
    /// Print per-run details (link split, shim context, path state).
    #[arg(long)]
    verbose: bool,
    /// The hipd binary (default: next to this executable).
    #[arg(long)]
    hipd: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// MPTCP, second path as backup.
    MptcpBackup,
    /// MPTCP, both subflows active.
    MptcpActive,
    /// HIP shim with daemon defaults.
    HipDefaults,
    /// HIP shim, send timeout 150 ms + initprobeto 100 ms.
    HipTuned,
    /// HIP shim with SHIM_HOT_STANDBY.
    HipHotStandby,
    /// HIP shim, tuned and SHIM_HOT_STANDBY.
    HipTunedHotStandby,
}

impl Variant {
    const ALL: [Variant; 6] = [
        Variant::MptcpBackup,
        Variant::MptcpActive,
        Variant::HipDefaults,
        Variant::HipTuned,
        Variant::HipHotStandby,
        Variant::HipTunedHotStandby,
    ];

    fn label(self) -> &'static str {
        match self {
            Variant::MptcpBackup => "mptcp-backup",
            Variant::MptcpActive => "mptcp-active",
            Variant::HipDefaults => "hip-defaults",
            Variant::HipTuned => "hip-tuned",
            Variant::HipHotStandby => "hip-hot-standby",
            Variant::HipTunedHotStandby => "hip-tuned-hot-standby",
        }
    }

    fn is_hip(self) -> bool {
        matches!(
            self,
            Variant::HipDefaults
                | Variant::HipTuned
                | Variant::HipHotStandby
                | Variant::HipTunedHotStandby
        )
    }

    /// Target for the median caught-up time (seconds), if the issue sets one.
    fn target_s(self) -> Option<f64> {
        match self {
            Variant::HipDefaults | Variant::HipHotStandby => Some(1.0),
            Variant::HipTuned | Variant::HipTunedHotStandby => Some(0.3),
            _ => None,
        }
    }

    /// The `SOL_SHIM` options the variant sets: (name, option, value bytes).
    fn settings(self) -> Vec<(&'static str, i32, Vec<u8>)> {
        let standby = (
            "SHIM_HOT_STANDBY=1",
            SHIM_HOT_STANDBY,
            1i32.to_ne_bytes().to_vec(),
        );
        match self {
            Variant::HipTunedHotStandby => {
                let mut v = Variant::HipTuned.settings();
                v.push(standby);
                v
            }
            Variant::HipTuned => vec![
                (
                    "SHIM_APP_TIMEOUT_MS=150",
                    SHIM_APP_TIMEOUT_MS,
                    150i32.to_ne_bytes().to_vec(),
                ),
                (
                    "SHIM_PATHEXPLORE initprobeto=100",
                    SHIM_PATHEXPLORE,
                    shim_pathexplore {
                        pe_initprobeto: 100,
                        ..shim_pathexplore::default()
                    }
                    .to_bytes()
                    .to_vec(),
                ),
            ],
            Variant::HipHotStandby => vec![standby],
            _ => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Time and records.

/// Process-wide time origin of the records.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn since_base(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

/// What the receiver saw: (seq, sent ns, arrived ns) per record.
#[derive(Debug, Default)]
struct Trace {
    arrivals: Mutex<Vec<(u64, u64, u64)>>,
    /// Fault time (ns since base; 0 = no fault yet).
    fault_ns: AtomicU64,
    /// "Normal" one-way delay bound (ns), set with the fault.
    normal_ns: AtomicU64,
    /// Set once a post-fault record arrived with a normal delay.
    caught_up: AtomicBool,
}

/// Writes one record per `period` until `stop`; a blocked write (send
/// buffer full on a dead path) is retried every 100 ms so `stop` is seen.
fn sender(mut s: TcpStream, stop: Arc<AtomicBool>, period: Duration) -> Result<u64> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_millis(100)))?;
    let start = Instant::now();
    let mut seq = 0u64;
    'records: while !stop.load(Ordering::Relaxed) {
        let due = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let mut rec = [0u8; RECORD];
        rec[..8].copy_from_slice(&seq.to_le_bytes());
        rec[8..].copy_from_slice(&since_base(Instant::now()).to_le_bytes());
        let mut off = 0;
        while off < RECORD {
            match s.write(&rec[off..]) {
                Ok(0) => bail!("sender: connection closed"),
                Ok(n) => off += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        break 'records;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if stop.load(Ordering::Relaxed) {
                        break 'records;
                    }
                    return Err(e).context("sender write");
                }
            }
        }
        seq += 1;
    }
    Ok(seq)
}

/// Reads records until `stop` or end of stream; checks order.
fn receiver(mut s: TcpStream, stop: Arc<AtomicBool>, trace: Arc<Trace>) -> Result<u64> {
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut rec = [0u8; RECORD];
    let mut got = 0usize;
    let mut expect = 0u64;
    loop {
        match s.read(&mut rec[got..]) {
            Ok(0) => return Ok(expect),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(expect);
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(expect);
                }
                return Err(e).context("receiver read");
            }
        }
        if got < RECORD {
            continue;
        }
        got = 0;
        let arrived = since_base(Instant::now());
        let mut b = [0u8; 8];
        b.copy_from_slice(&rec[..8]);
        let seq = u64::from_le_bytes(b);
        b.copy_from_slice(&rec[8..]);
        let sent = u64::from_le_bytes(b);
        if seq != expect {
            bail!("record {seq} arrived, expected {expect} (loss or duplicate)");
        }
        expect += 1;
        let fault = trace.fault_ns.load(Ordering::Relaxed);
        if fault != 0
            && sent >= fault
            && arrived.saturating_sub(sent) <= trace.normal_ns.load(Ordering::Relaxed)
        {
            trace.caught_up.store(true, Ordering::Relaxed);
        }
        trace
            .arrivals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, sent, arrived));
    }
}

fn percentile(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// One run's result (times from the fault).
#[derive(Debug, Clone)]
struct Sample {
    gap: Option<Duration>,
    first_byte: Option<Duration>,
    caught_up: Option<Duration>,
    /// Index of the broken link and b's received packets per link in the
    /// sampling window.
    link: usize,
    split: [u64; 2],
    p99: Duration,
    records: usize,
}

/// Analyses a trace: arrivals at or after `cutoff_ns` are ignored.
fn analyse(arrivals: &[(u64, u64, u64)], fault_ns: u64, normal_ns: u64, cutoff_ns: u64) -> Sample {
    let mut pre: Vec<u64> = arrivals
        .iter()
        .filter(|(_, s, a)| *a < fault_ns && *s < fault_ns)
        .map(|(_, s, a)| a.saturating_sub(*s))
        .collect();
    let p99 = percentile(&mut pre, 0.99);
    let seen: Vec<&(u64, u64, u64)> = arrivals.iter().filter(|r| r.2 < cutoff_ns).collect();
    let caught_up = seen
        .iter()
        .find(|(_, s, a)| *s >= fault_ns && a.saturating_sub(*s) <= normal_ns)
        .map(|r| Duration::from_nanos(r.2.saturating_sub(fault_ns)));
    // The largest gap between consecutive arrivals from shortly before the
    // fault on, bounded by what was observed.
    let from = fault_ns.saturating_sub(GAP_LOOKBACK_NS);
    let mut gap: Option<(u64, u64)> = None; // (length, end arrival)
    let mut prev: Option<u64> = None;
    for r in seen.iter().filter(|r| r.2 >= from) {
        if let Some(p) = prev {
            let g = r.2.saturating_sub(p);
            if gap.is_none_or(|(len, _)| g > len) {
                gap = Some((g, r.2));
            }
        }
        prev = Some(r.2);
    }
    // The time from the last arrival to the end of the observation: when
    // it is the largest gap and the stream never caught up, the stall was
    // still going on when the run ended (no recovery).
    let last = seen.last().map_or(from, |r| r.2.max(from));
    let tail = cutoff_ns.saturating_sub(last);
    let (gap, first_byte) = match gap {
        Some((len, _)) if caught_up.is_none() && tail >= len => (None, None),
        None => (None, None),
        Some((len, end)) => {
            // A largest gap that ended before the fault means there was no
            // stall; then the first arrival after the fault is reported.
            let first = if end > fault_ns {
                Some(end)
            } else {
                seen.iter().map(|r| r.2).find(|&a| a > fault_ns)
            };
            (
                Some(Duration::from_nanos(len)),
                first.map(|a| Duration::from_nanos(a - fault_ns)),
            )
        }
    };
    Sample {
        gap,
        first_byte,
        caught_up,
        link: 0,
        split: [0, 0],
        p99: Duration::from_nanos(p99),
        records: arrivals.len(),
    }
}

/// Runs the record stream over `tx` (a's socket) → `rx` (b's socket),
/// breaks the busiest link on b's side and measures the recovery.
fn measure(
    links: &[Link; 2],
    b: &Host,
    tx: TcpStream,
    rx: TcpStream,
    limit: Duration,
    verbose: bool,
) -> Result<Sample> {
    let stop = Arc::new(AtomicBool::new(false));
    let trace = Arc::new(Trace::default());
    let snd: JoinHandle<Result<u64>> = {
        let stop = stop.clone();
        std::thread::spawn(move || sender(tx, stop, Duration::from_millis(1)))
    };
    let rcv: JoinHandle<Result<u64>> = {
        let (stop, trace) = (stop.clone(), trace.clone());
        std::thread::spawn(move || receiver(rx, stop, trace))
    };
    let finish = |stop: &AtomicBool| stop.store(true, Ordering::Relaxed);
    std::thread::sleep(WARMUP);
    let c0 = [links[0].counters(b)?, links[1].counters(b)?];
    std::thread::sleep(SAMPLE);
    let c1 = [links[0].counters(b)?, links[1].counters(b)?];
    let split = [
        c1[0].since(&c0[0]).rx_packets,
        c1[1].since(&c0[1]).rx_packets,
    ];
    let link = usize::from(split[1] > split[0]);
    // Pre-fault delay bound.
    let mut pre: Vec<u64> = trace
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, s, a)| a.saturating_sub(*s))
        .collect();
    if pre.len() < 100 {
        finish(&stop);
        let _ = snd.join();
        let _ = rcv.join();
        bail!("only {} records before the fault", pre.len());
    }
    let normal_ns = percentile(&mut pre, 0.99) + NORMAL_SLACK_NS;
    trace.normal_ns.store(normal_ns, Ordering::Relaxed);
    let stamp = links[link].drop_rx(b)?;
    let fault_ns = since_base(stamp.at);
    trace.fault_ns.store(fault_ns, Ordering::Relaxed);
    let deadline = stamp.at + limit;
    while !trace.caught_up.load(Ordering::Relaxed)
        && Instant::now() < deadline
        && !snd.is_finished()
        && !rcv.is_finished()
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    if trace.caught_up.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let cutoff_ns = since_base(Instant::now());
    let restored = links[link].restore();
    finish(&stop);
    let sr = snd.join().map_err(|_| anyhow!("sender panicked"))?;
    let rr = rcv.join().map_err(|_| anyhow!("receiver panicked"))?;
    restored?;
    rr.context("receiver")?;
    if let Err(e) = sr
        && verbose
    {
        eprintln!("    (sender ended with: {e:#})");
    }
    let arrivals = std::mem::take(&mut *trace.arrivals.lock().unwrap_or_else(|p| p.into_inner()));
    let mut s = analyse(&arrivals, fault_ns, normal_ns, cutoff_ns);
    s.link = link;
    s.split = split;
    Ok(s)
}

// ---------------------------------------------------------------------------
// Labs.

/// A two-host, two-link lab.
struct Topo {
    lab: Lab,
    a: Host,
    b: Host,
    links: [Link; 2],
}

fn topo() -> Result<Topo> {
    let lab = Lab::new()?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let l0 = lab.link(&a, &b)?;
    let l1 = lab.link(&a, &b)?;
    lab.wait_usable(Duration::from_secs(10))?;
    Ok(Topo {
        lab,
        a,
        b,
        links: [l0, l1],
    })
}

fn mptcp_socket() -> Result<Socket> {
    Ok(Socket::new(
        Domain::IPV6,
        Type::STREAM,
        Some(Protocol::from(IPPROTO_MPTCP)),
    )?)
}

/// One MPTCP failover run.
fn mptcp_run(backup: bool, limit: Duration, verbose: bool) -> Result<Sample> {
    let t = topo()?;
    let flag = if backup { "backup" } else { "" };
    for h in [&t.a, &t.b] {
        h.exec_ok([
            "ip",
            "mptcp",
            "limits",
            "set",
            "subflow",
            "2",
            "add_addr_accepted",
            "2",
        ])?;
    }
    let l1 = &t.links[1];
    let ep = |h: &Host, kind: &str| -> Result<()> {
        let addr = l1.addr(h, Family::V6).to_string();
        let mut args = vec![
            "ip",
            "mptcp",
            "endpoint",
            "add",
            &addr,
            "dev",
            l1.dev(h),
            kind,
        ];
        if backup {
            args.push(flag);
        }
        h.exec_ok(args)?;
        Ok(())
    };
    ep(&t.b, "signal")?;
    ep(&t.a, "subflow")?;
    let dst = t.links[0].socket_addr(&t.b, Family::V6, 7000);
    // Bound to the wildcard so MP_JOINs towards b's l1 address find it.
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 7000);
    let listener: TcpListener = t.b.run(move || -> Result<TcpListener> {
        let s = mptcp_socket()?;
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(any))?;
        s.listen(16)?;
        Ok(s.into())
    })??;
    let tx: TcpStream = t.a.run(move || -> Result<TcpStream> {
        let s = mptcp_socket()?;
        s.connect_timeout(&SockAddr::from(dst), Duration::from_secs(5))?;
        Ok(s.into())
    })??;
    let (rx, _) = listener.accept()?;
    // Let the additional subflow come up before the steady state.
    std::thread::sleep(Duration::from_millis(200));
    if verbose {
        let out = t.a.exec_ok(["ss", "-tniM"]).unwrap_or_default();
        for l in out.lines().filter(|l| l.contains("ESTAB")) {
            eprintln!("    a: {}", l.trim());
        }
    }
    let s = measure(&t.links, &t.b, tx, rx, limit, verbose);
    drop(listener);
    drop(t);
    s
}

type Hipd = LabHipd;

fn start_hipd(host: &Host, hipd: &Path, dir: &Path, log_dir: &Path) -> Result<Hipd> {
    let sock = log_dir.join(format!("{}-hipd.sock", host.name()));
    let log = log_dir.join(format!("{}-hipd.log", host.name()));
    hipd_lab::start(
        host,
        hipd,
        dir,
        &sock,
        &[
            "--debug",
            "low",
            "--log-file",
            log.to_str().context("path")?,
        ],
    )
}

/// A HIP lab: two hosts with hipd, an association from a to b.
struct HipLab {
    t: Topo,
    da: Hipd,
    _db: Hipd,
    hit_b: Ipv6Addr,
}

fn hip_lab(hipd: &Path, id_dir: &Path) -> Result<HipLab> {
    let t = topo()?;
    let logs = t.lab.artifacts_dir().to_path_buf();
    let da = start_hipd(&t.a, hipd, &id_dir.join("a"), &logs)?;
    let db = start_hipd(&t.b, hipd, &id_dir.join("b"), &logs)?;
    let hit_b = hit_of(&db.sock)?;
    for l in &t.links {
        call(
            &da.sock,
            Request::AddMap {
                hit: hit_b,
                ip: l.addr(&t.b, Family::V6),
                lsi: None,
                transport: Some(NatMode::None),
            },
        )?;
    }
    match call(
        &da.sock,
        Request::Connect {
            hit: hit_b,
            wait_ms: 5000,
        },
    )? {
        Response::Connected { .. } => {}
        r => bail!("base exchange: {r:?}"),
    }
    Ok(HipLab {
        t,
        da,
        _db: db,
        hit_b,
    })
}

/// A TCP connection a → b over b's HIT.
fn hip_connection(h: &HipLab, port: u16) -> Result<(TcpStream, TcpStream)> {
    let hit_b = h.hit_b;
    let listener =
        h.t.b
            .run(move || TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)))??;
    let tx = h.t.a.run(move || {
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V6(hit_b), port),
            Duration::from_secs(5),
        )
    })??;
    let (rx, _) = listener.accept()?;
    Ok((tx, rx))
}

fn flow_of(s: &TcpStream) -> Result<FlowId> {
    let (l, p) = (s.local_addr()?, s.peer_addr()?);
    Ok(FlowId {
        proto: 6,
        local: l.ip(),
        local_port: l.port(),
        peer: p.ip(),
        peer_port: p.port(),
    })
}

fn describe_ctx(r: &Response) -> String {
    match r {
        Response::ShimContext { ctx } => format!(
            "path {:?} standby {:?} reap {} send_timeout {} ms explore {:?} peer locs {:?}",
            ctx.path,
            ctx.standby,
            ctx.reap_state,
            ctx.send_timeout_ms,
            ctx.effective_explore,
            ctx.peer
                .iter()
                .map(|l| format!("{}:{:?}", l.addr, l.state))
                .collect::<Vec<_>>()
        ),
        r => format!("{r:?}"),
    }
}

/// One HIP failover run; returns the sample and notes (refused settings).
fn hip_run(
    v: Variant,
    hipd: &Path,
    id_dir: &Path,
    limit: Duration,
    verbose: bool,
) -> Result<(Sample, Vec<String>)> {
    let h = hip_lab(hipd, id_dir)?;
    let (tx, rx) = hip_connection(&h, 7000)?;
    let flow = flow_of(&tx)?;
    // The shim API instance (its control connection carries the
    // per-socket state) lives for the whole run.
    let shim = Shim::new(&h.da.sock);
    let mut notes = Vec::new();
    for (name, opt, val) in v.settings() {
        if let Err(e) = shim.setsockopt(tx.as_fd(), SOL_SHIM, opt, &val) {
            notes.push(format!("setsockopt(SOL_SHIM, {name}) failed: {e}"));
        }
    }
    let mut ctl = Client::connect(&h.da.sock)?;
    if verbose {
        match ctl.call(&Request::ShimGet { flow }) {
            Ok(r) => eprintln!("    shim context before: {}", describe_ctx(&r)),
            Err(e) => eprintln!("    ShimGet: {e}"),
        }
    }
    let s = measure(&h.t.links, &h.t.b, tx, rx, limit, verbose);
    if verbose {
        match call(&h.da.sock, Request::ShimList { hit: Some(h.hit_b) }) {
            Ok(Response::ShimContexts { ctxs }) => {
                for c in ctxs {
                    eprintln!(
                        "    shim context after: path {:?} standby {:?} reap {} switches {}",
                        c.path, c.standby, c.reap_state, c.switches
                    );
                }
            }
            Ok(r) => eprintln!("    ShimList: {r:?}"),
            Err(e) => eprintln!("    ShimList: {e}"),
        }
    }
    drop(ctl);
    drop(shim);
    Ok((s?, notes))
}

// ---------------------------------------------------------------------------
// SOL_SHIM query cost.

/// Per-call cost in µs (median of interleaved blocks): plain
/// `getsockopt(SOL_SOCKET, SO_TYPE)`, shimapi
/// `getsockopt(SOL_SHIM, SHIM_LOC_PEER_PREF)`, one raw `ShimGet` request.
fn getsockopt_cost(hipd: &Path, id_dir: &Path, calls: usize) -> Result<[f64; 4]> {
    let h = hip_lab(hipd, id_dir)?;
    let (tx, _rx) = hip_connection(&h, 7100)?;
    let flow = flow_of(&tx)?;
    let shim = Shim::new(&h.da.sock);
    let mut ctl = Client::connect(&h.da.sock)?;
    // Warm-up, and a clear error if the daemon does not answer.
    let mut loc = [0u8; 32];
    shim.getsockopt(tx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut loc)
        .context("getsockopt(SOL_SHIM, SHIM_LOC_PEER_PREF)")?;
    ctl.call(&Request::ShimGet { flow })
        .context("ShimGet refused by hipd")?;
    let blocks = 10usize;
    let per = (calls / blocks).max(1);
    let mut v: [Vec<f64>; 4] = Default::default();
    let us = |t0: Instant| t0.elapsed().as_secs_f64() * 1e6 / per as f64;
    for _ in 0..blocks {
        let t0 = Instant::now();
        for _ in 0..per {
            let ty = nix::sys::socket::getsockopt(&tx, nix::sys::socket::sockopt::SockType)?;
            std::hint::black_box(ty);
        }
        v[0].push(us(t0));
        let t0 = Instant::now();
        for _ in 0..per {
            let n = shim.getsockopt(tx.as_fd(), SOL_SHIM, SHIM_LOC_PEER_PREF, &mut loc)?;
            std::hint::black_box((n, &loc));
        }
        v[1].push(us(t0));
        let t0 = Instant::now();
        for _ in 0..per {
            let r = ctl.call(&Request::ShimGet { flow })?;
            std::hint::black_box(r);
        }
        v[2].push(us(t0));
        let t0 = Instant::now();
        for _ in 0..per {
            let r = ctl.call(&Request::Ping)?;
            std::hint::black_box(r);
        }
        v[3].push(us(t0));
    }
    Ok([median(&v[0]), median(&v[1]), median(&v[2]), median(&v[3])])
}

// ---------------------------------------------------------------------------
// Report.

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median in seconds with missing values as +∞.
fn med_s(v: &[Option<Duration>]) -> f64 {
    let f: Vec<f64> = v
        .iter()
        .map(|d| d.map_or(f64::INFINITY, |d| d.as_secs_f64()))
        .collect();
    median(&f)
}

fn fmt_s(x: f64, limit: Duration) -> String {
    if x.is_nan() {
        "-".into()
    } else if x.is_infinite() {
        format!("no recovery within {:.0} s", limit.as_secs_f64())
    } else {
        format!("{:.0} ms", x * 1e3)
    }
}

#[derive(Debug, Default)]
struct Row {
    samples: Vec<Sample>,
    errors: Vec<String>,
    notes: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runs = if args.quick {
        args.runs.min(3)
    } else {
        args.runs
    };
    let limit =
        Duration::from_secs_f64(
            args.timeout_s
                .unwrap_or(if args.quick { 5.0 } else { 10.0 }),
        );
    let calls = args
        .calls
        .unwrap_or(if args.quick { 2_000 } else { 20_000 });
    let hipd = match &args.hipd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("hipd"),
    };
    let need_hip = !args.no_getsockopt || args.variants.iter().any(|v| v.is_hip());
    if need_hip && !hipd.exists() {
        bail!(
            "{} missing: cargo build --release -p hipd-backend --bins (same target dir), or --hipd PATH",
            hipd.display()
        );
    }
    let _ = base();
    // Host identities survive the per-run labs (key generation is slow).
    let id_dir = std::env::temp_dir().join(format!("shim_bench-{}", std::process::id()));
    std::fs::create_dir_all(&id_dir)?;
    let res = run(&args, runs, limit, calls, &hipd, &id_dir);
    let _ = std::fs::remove_dir_all(&id_dir);
    res
}

fn run(
    args: &Args,
    runs: usize,
    limit: Duration,
    calls: usize,
    hipd: &Path,
    id_dir: &Path,
) -> Result<()> {
    let mut variants: Vec<Variant> = Vec::new();
    for v in &args.variants {
        if !variants.contains(v) {
            variants.push(*v);
        }
    }
    let mut rows: Vec<(Variant, Row)> = variants.iter().map(|v| (*v, Row::default())).collect();
    if !args.only_getsockopt {
        for run in 0..runs {
            for (v, row) in rows.iter_mut() {
                let r = if v.is_hip() {
                    hip_run(*v, hipd, id_dir, limit, args.verbose)
                } else {
                    mptcp_run(*v == Variant::MptcpBackup, limit, args.verbose).map(|s| (s, vec![]))
                };
                match r {
                    Ok((s, notes)) => {
                        let f = |d: Option<Duration>| {
                            d.map_or("-".to_string(), |d| {
                                format!("{:.0} ms", d.as_secs_f64() * 1e3)
                            })
                        };
                        eprintln!(
                            "{:<21} run {}: gap {}, first byte {}, caught up {} (broke l{}, b rx split {}/{} pkts, pre-fault p99 {:.2} ms, {} records){}",
                            v.label(),
                            run + 1,
                            f(s.gap),
                            f(s.first_byte),
                            s.caught_up.map_or(
                                format!("no recovery within {:.0} s", limit.as_secs_f64()),
                                |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)
                            ),
                            s.link,
                            s.split[0],
                            s.split[1],
                            s.p99.as_secs_f64() * 1e3,
                            s.records,
                            if notes.is_empty() {
                                String::new()
                            } else {
                                format!(" [{}]", notes.join("; "))
                            }
                        );
                        for n in notes {
                            if !row.notes.contains(&n) {
                                row.notes.push(n);
                            }
                        }
                        row.samples.push(s);
                    }
                    Err(e) => {
                        eprintln!("{:<21} run {}: FAILED: {e:#}", v.label(), run + 1);
                        row.errors.push(format!("{e:#}"));
                    }
                }
            }
        }
        print_table(&rows, runs, limit);
    }
    if !args.no_getsockopt {
        println!();
        match getsockopt_cost(hipd, id_dir, calls) {
            Ok([plain, shim, raw, ping]) => {
                println!(
                    "SOL_SHIM query cost ({calls} calls each, median of 10 interleaved blocks)"
                );
                println!("{:<58} {:>9} {:>9}", "call", "µs/call", "ratio");
                for (name, x) in [
                    ("getsockopt(SOL_SOCKET, SO_TYPE) (kernel baseline)", plain),
                    ("shimapi getsockopt(SOL_SHIM, SHIM_LOC_PEER_PREF)", shim),
                    ("one ShimGet control request (persistent connection)", raw),
                    ("one Ping control request (control-socket floor)", ping),
                ] {
                    println!("{name:<58} {x:>9.2} {:>9.0}", x / plain);
                }
            }
            Err(e) => println!("SOL_SHIM query cost: not measured: {e:#}"),
        }
    }
    Ok(())
}

fn print_table(rows: &[(Variant, Row)], runs: usize, limit: Duration) {
    let caught_med = |r: &Row| {
        let mut v: Vec<Option<Duration>> = r.samples.iter().map(|s| s.caught_up).collect();
        v.extend(r.errors.iter().map(|_| None));
        med_s(&v)
    };
    let reference = rows
        .iter()
        .find(|(v, _)| *v == Variant::MptcpBackup)
        .map(|(_, r)| caught_med(r));
    println!();
    println!(
        "Failover: silent receive-side drop of the active link (2 veth links, IPv6 underlay), 1 kHz 16-byte records a -> b over TCP; median of {runs} runs, times from the fault; a run without recovery counts as +inf"
    );
    println!(
        "{:<21} {:>26} {:>26} {:>26} {:>5} {:>9} {:>9} {:>8}",
        "variant", "gap", "first byte", "caught up", "runs", "recovered", "vs mptcp", "target"
    );
    let mut notes = Vec::new();
    for (v, r) in rows {
        let with_err = |f: &dyn Fn(&Sample) -> Option<Duration>| {
            let mut x: Vec<Option<Duration>> = r.samples.iter().map(f).collect();
            x.extend(r.errors.iter().map(|_| None));
            med_s(&x)
        };
        let gap = with_err(&|s| s.gap);
        let first = with_err(&|s| s.first_byte);
        let caught = caught_med(r);
        let recovered = r.samples.iter().filter(|s| s.caught_up.is_some()).count();
        let ratio = match reference {
            Some(m) if m.is_finite() && caught.is_finite() && *v != Variant::MptcpBackup => {
                format!("{:.2}", caught / m)
            }
            Some(m) if m.is_finite() && *v != Variant::MptcpBackup => "inf".into(),
            _ => "-".into(),
        };
        let target = match v.target_s() {
            Some(t) if caught <= t => format!("<={t} ok"),
            Some(t) => format!("<={t} NO"),
            None => "-".into(),
        };
        println!(
            "{:<21} {:>26} {:>26} {:>26} {:>5} {:>9} {:>9} {:>8}",
            v.label(),
            fmt_s(gap, limit),
            fmt_s(first, limit),
            fmt_s(caught, limit),
            r.samples.len() + r.errors.len(),
            recovered,
            ratio,
            target
        );
        for n in &r.notes {
            notes.push(format!("{}: {n}", v.label()));
        }
        for e in &r.errors {
            notes.push(format!("{}: run failed: {e}", v.label()));
        }
    }
    let mut dedup: Vec<String> = Vec::new();
    for n in notes {
        if !dedup.contains(&n) {
            dedup.push(n);
        }
    }
    for n in dedup {
        println!("  note: {n}");
    }
}
