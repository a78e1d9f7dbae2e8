//! PreserveTCP benchmark after the thesis's Table 7.1 method, in a netlab
//! lab (two hosts, two veth links, IPv6), run as root:
//!
//! ```text
//! cargo build --release -p preservetcp -p mh-examples
//! target/release/ptcp_bench            # finds target/release/preservetcpd
//! ```
//!
//! Rows: send throughput with 512/2048/8192-byte writes, 1-byte ping-pong
//! round trips per second, connect+close per second; columns: plain kernel
//! TCP (no daemon), PreserveTCP before a migration (daemons running, the
//! connection on its original pair) and after one (moved to link 1 through
//! the control socket). Then the failover time after a silent receive-side
//! drop of link 0 (median of 5): from the fault until data flows again.
//! Every figure is the median of `RUNS` interleaved runs. The load
//! average at start and end is printed: the machine is shared, compare
//! only ratios from the same run.
//!
//! Measured 2026-11-21 (session 2: rtnetlink events, follow-back, policy
//! rules before `main`, stall measured from outstanding data), release
//! build, 2 CPUs shared with other builds, load average 4.4 at start and
//! 7.0 at end (so absolute figures are noisy; ratios are plain-relative
//! within the same interleaved run):
//!
//! | test            | plain      | before     | after      | before/plain | after/plain |
//! |-----------------|------------|------------|------------|--------------|-------------|
//! | send 512 B      | 180 MB/s   | 197 MB/s   | 144 MB/s   | 1.09         | 0.80        |
//! | send 2048 B     | 325 MB/s   | 446 MB/s   | 253 MB/s   | 1.37         | 0.78        |
//! | send 8192 B     | 355 MB/s   | 362 MB/s   | 342 MB/s   | 1.02         | 0.96        |
//! | 1-byte ping-pong| 72.9k/s    | 94.2k/s    | 51.0k/s    | 1.29         | 0.70        |
//! | connect+close   | 388/s      | 3,403/s    | –          | 8.8 (noise)  | –           |
//!
//! Before-migration ratios above 1 are load noise (nothing is queued for
//! an unmoved connection after the handshake); the plain connect+close
//! figure was depressed by the concurrent load in that run. Failover after
//! a silent receive-side drop: median 0.757 s over 5 runs (1.002, 0.721,
//! 0.757, 0.949, 0.666 s).
//!
//! Idle machine (load average 1.1, 2 CPUs; `ptcp_bench`, median of 5):
//!
//! | test            | plain       | before      | after       | before/plain | after/plain |
//! |-----------------|-------------|-------------|-------------|--------------|-------------|
//! | send 512 B      | 101 MB/s    | 113 MB/s    | 92 MB/s     | 1.12         | 0.91        |
//! | send 2048 B     | 361 MB/s    | 410 MB/s    | 340 MB/s    | 1.14         | 0.94        |
//! | send 8192 B     | 1146 MB/s   | 1228 MB/s   | 1050 MB/s   | 1.07         | 0.92        |
//! | 1-byte ping-pong| 13.8k/s     | 13.2k/s     | 16.6k/s     | 0.96         | 1.20        |
//! | connect+close   | 20.6k/s     | 4.7k/s      | –           | 0.23         | –           |
//!
//! Failover after a silent drop: median 0.366 s (0.383, 0.365, 0.373,
//! 0.364, 0.366). Throughput meets its targets (≥ 0.99 before, ≥ 0.9
//! after); connect+close (0.23, target 0.70) does not: every handshake
//! takes three NFQUEUE round trips through the daemon (SYN, SYN-ACK, third
//! ACK). The ping-pong ratio moves ±0.1 between runs.
//!
//! Session 3 (incoming handshake packets learned through NFLOG instead of
//! held in NFQUEUE; only the client's SYN and ACK and the server's SYN+ACK
//! wait in userspace, 3 round trips per connection instead of 6; data
//! segments leave the mangle chains after native conntrack checks; empty
//! fast path chains before a migration; O(n) move logging). This run also
//! fixed a bench artifact: std's accept backlog of 128 overflowed under
//! load (`ListenOverflows`), the SYN was dropped and the client waited 1 s
//! for its retransmission — that had depressed the plain column (e.g. 947/s
//! plain against 9,548/s ptcp with max latency 1.02 s); the listener now
//! has a backlog of 4096 and per-connection latency percentiles are
//! printed. Release build, 2 CPUs shared with other engineers' builds
//! (load average 4.1–5.1 throughout, so the throughput and ping-pong ratios
//! move ±0.3 between runs; only ratios from the same run are compared):
//!
//! | test            | plain     | before    | after     | before/plain | after/plain |
//! |-----------------|-----------|-----------|-----------|--------------|-------------|
//! | send 512 B      | 247 MB/s  | 293 MB/s  | 272 MB/s  | 1.19         | 1.10        |
//! | send 2048 B     | 576 MB/s  | 610 MB/s  | 551 MB/s  | 1.06         | 0.96        |
//! | send 8192 B     | 878 MB/s  | 972 MB/s  | 767 MB/s  | 1.11         | 0.87        |
//! | 1-byte ping-pong| 91.3k/s   | 85.0k/s   | 58.9k/s   | 0.93         | 0.65        |
//! | connect+close   | 21.8k/s   | 10.2k/s   | –         | 0.47         | –           |
//!
//! (load 5.1 → 4.4; failover median 0.691 s). The run before it (load
//! 4.1): connect+close 27.2k/s vs 9.5k/s (0.35), ping-pong 1.90, send
//! before 0.66/0.69/1.00 and after 1.06/0.55/0.85, failover 0.381 s — the
//! same code, so those swings are the shared machine. Connect latency
//! medians per run: plain 16–46 µs, PreserveTCP 56–119 µs: the two queue
//! trips on the critical path (client SYN, server SYN+ACK; the client's
//! ACK trip is not waited for) cost about 20 µs each here, mostly the
//! wake-ups of the daemons (plain TCP runs the whole handshake in the
//! connecting thread without a context switch). connect+close stays below
//! its 0.70 target: that needs ≤ 5 µs per trip, which no NFQUEUE round trip
//! reaches; a tc (clsact) eBPF program inserting the header on egress
//! (`bpf_skb_adjust_room`) from maps the daemon fills would remove the
//! trips altogether.
//!
//! Where a trip's time goes: `perf sched latency` during the PreserveTCP
//! connect+close phase (load 4.9) shows an average scheduling delay of
//! 25 µs per daemon wake-up (4,862 switches), while the daemon's own user
//! space work is about 1 % of the samples (`perf record -a`; `strace -c`:
//! 2 recv + 2 sendto per client connection, 1 + 1 and one NFLOG read per
//! server connection). On a quieter machine the trip gets *slower*, not
//! faster: the final run below started at load 3.3 and ended at 1.7, and
//! a wake-up then has to bring a halted vCPU back (plain 1-byte ping-pong,
//! two wake-ups per round trip, drops from 50–100k/s under load to 10.6k/s,
//! about 45 µs per wake-up). Plain connect+close never sleeps (the whole
//! handshake runs in the connecting thread's softirq work); PreserveTCP
//! puts two wake-ups on the critical path:
//!
//! | test            | plain     | before    | after     | before/plain | after/plain |
//! |-----------------|-----------|-----------|-----------|--------------|-------------|
//! | send 512 B      | 129 MB/s  | 152 MB/s  | 121 MB/s  | 1.18         | 0.94        |
//! | send 2048 B     | 395 MB/s  | 476 MB/s  | 362 MB/s  | 1.21         | 0.92        |
//! | send 8192 B     | 1277 MB/s | 1234 MB/s | 1057 MB/s | 0.97         | 0.83        |
//! | 1-byte ping-pong| 10.6k/s   | 11.2k/s   | 11.5k/s   | 1.05         | 1.08        |
//! | connect+close   | 27.6k/s   | 6.5k/s    | –         | 0.24         | –           |
//!
//! (connect latency medians plain 18–47 µs, PreserveTCP 78–142 µs;
//! failover median 0.372 s.)
//!
//! Session 4: the handshake options are inserted by tc BPF programs (see
//! the preservetcp crate docs), no handshake packet waits in userspace any
//! more; `PTCPD_EXTRA=--no-bpf` selects the old NFQUEUE handshake. Each
//! line below is a separate `ptcp_bench` invocation (median of 5, release,
//! interleaved nobpf/bpf/nobpf/bpf, load average 1.0–1.4; the printed
//! `handshake:` line confirmed the path: 2,004 SYNs and 4,008 queued
//! client packets with NFQUEUE, 2,004 SYNs offered in the kernel and 0
//! queued with BPF):
//!
//! | handshake | connect+close plain | ptcp      | ratio | send 512/2048/8192 before | ping-pong before | failover |
//! |-----------|---------------------|-----------|-------|---------------------------|------------------|----------|
//! | NFQUEUE   | 33.1k/s             | 5.7k/s    | 0.171 | 1.02 / 1.01 / 0.92        | 1.09             | 0.643 s  |
//! | tc BPF    | 22.6k/s             | 18.7k/s   | 0.827 | 0.99 / 1.13 / 0.93        | 1.12             | 0.369 s  |
//! | NFQUEUE   | 24.8k/s             | 2.3k/s    | 0.092 | 1.33 / 1.24 / 0.99        | 1.26             | 0.414 s  |
//! | tc BPF    | 25.3k/s             | 23.2k/s   | 0.914 | 1.04 / 0.97 / 0.98        | 1.01             | 0.377 s  |
//!
//! (After-migration send ratios were 0.85/0.88/0.78 and 1.04/0.98/0.80
//! with NFQUEUE, 0.79/1.06/0.69 and 1.07/0.79/0.77 with BPF: the same
//! NFQUEUE/fast-path data path in both, so these spreads are the shared
//! machine.) Connect-only runs (`PTCP_BENCH_ONLY=connect`, where the
//! daemons have just started when the PreserveTCP phase begins; load
//! 1.7–2.0) gave 0.60, 0.71 and 0.60 with BPF: the remaining cost per
//! connection is the mangle rules, three NFLOG copies (the engine still
//! learns every handshake) and the daemons' own work entering and
//! forgetting each connection on the two shared CPUs, not a wake-up on the
//! critical path.
//!
//! Session 4b (send throughput after a migration, 8192-byte writes at
//! 0.69–0.80 of plain in earlier runs). Profiling knobs: `PTCP_BENCH_ONLY=after`
//! (send rows, plain and after columns), `PTCP_BENCH_SIZES=8192`,
//! `PTCP_BENCH_SECS=4`; with `PTCP_BENCH_ONLY` set every sample prints its
//! CLOCK_MONOTONIC interval, so `perf record -k CLOCK_MONOTONIC -a -g`
//! over the whole run and `perf report --time START,END` separate the
//! phases. The send rows now also print the CPU time of the sending and
//! receiving threads per MB (`CPU/MB`). What the profiles showed for the
//! after-migration phase (shares of the samples of `tcp_sendmsg` and
//! below, i.e. the sender's whole path including the veth receive done in
//! its softirq context): the netfilter hooks took 0.49 against 0.26–0.33
//! before the migration; the reroute after the fast path's `route` chain
//! (`ip6_route_me_harder`: a full lookup through the policy rules —
//! `fib6_rule_lookup` 0.05 — with a flow dissection because the fallback
//! rules match ports) 0.09, the nft map lookups and address writes
//! (`nft_payload_set_eval` 0.06) most of the rest; conntrack was the same
//! as before (0.09–0.10: the rewrite happens after conntrack on output and
//! before it on input, so the original entry serves). Not a cause: GSO
//! super-packets survive the rewrite (tcpdump on the client's link 1:
//! the same 8192-byte and 64,260-byte segments before and after), nothing
//! reaches NFQUEUE after the transition, checksum work is negligible
//! (`csum_partial` < 0.3 % of the samples). Found on the way, not
//! migration-specific: each daemon's `tcp_info` sampler (a full sock_diag
//! dump every 50 ms) walks the kernel's whole TCP hash, about 6 ms per
//! dump here: 8–10 % of all samples in *both* PreserveTCP columns.
//!
//! Change: packets that already leave on the new pair's device through
//! an on-link route skip the reroute (`out_direct` filter chain, see
//! preservetcpd's `rules.rs`); in the lab every rewritten packet takes it
//! (counters: 135,570 direct, 0 rerouted in one 5 s run). Profile after
//! the change: `ip6_route_me_harder` and `fib6_rule_lookup` 0, netfilter
//! hooks 0.47 of `tcp_sendmsg` (the extra set lookup and the route
//! chain's map miss take back part of the gain). End to end, at load 3.3–4.9
//! on the 2 shared CPUs, the difference is below the noise. Interleaved
//! `PTCP_BENCH_ONLY=send` runs (median of 5; `old` = the daemon before
//! the change, same bench binary):
//!
//! | daemon | load (uptime) | after/plain 512 / 2048 / 8192 B | before/plain 512 / 2048 / 8192 B | CPU/MB after/plain |
//! |--------|---------------|---------------------------------|----------------------------------|--------------------|
//! | old    | 4.32 → 3.99   | 0.94 / 0.85 / 0.84              | 1.02 / 1.17 / 0.87               | –                  |
//! | new    | 3.99 → 3.83   | 0.84 / 1.19 / 0.73              | 0.96 / 0.97 / 0.89               | –                  |
//! | old    | 3.83 → 4.06   | 0.84 / 1.07 / 1.07              | 0.86 / 1.10 / 1.16               | –                  |
//! | new    | 4.06 → 3.64   | 0.96 / 1.52 / 0.79              | 1.02 / 1.05 / 0.78               | –                  |
//! | old    | 3.52 → 3.91   | 0.79 / 0.98 / 1.43              | 0.90 / 0.87 / 0.95               | 1.47 / 1.15 / 0.79 |
//! | new    | 3.91 → 4.92   | 1.08 / 1.09 / 1.38              | 1.07 / 1.43 / 1.15               | 0.91 / 1.01 / 0.93 |
//! | old    | 4.92 → 4.81   | 0.89 / 1.00 / 0.92              | 0.94 / 1.01 / 1.18               | 1.18 / 1.21 / 1.26 |
//! | new    | 4.81 → 3.32   | 0.70 / 0.59 / 1.09              | 0.81 / 0.88 / 1.02               | 1.57 / 2.01 / 0.87 |
//!
//! At this load the ratios (and even the CPU time per MB, which the
//! vCPUs' contention inflates) move by ±0.3 between identical runs, so
//! these runs neither confirm nor refute the ≥ 0.9 target; the profile
//! share above is the measurement that held up. A quiet machine is needed
//! for the end-to-end figure.
//!
//! Second change: the daemons' sampler asks sock_diag for each tracked
//! socket by its tuple (up to 16 connections) instead of dumping all of
//! them. The dump's cost depends on how full the host-wide TCP hash is
//! (other namespaces' sockets included): `preservetcpd` took up to 17 %
//! of all samples in the before/after windows of the profiles with the
//! old daemon (8–10 % in most), too little to be listed with the new one. Interleaved
//! `PTCP_BENCH_ONLY=send` runs (median of 5; `new` = both changes):
//!
//! | daemon | load (uptime) | after/plain 512 / 2048 / 8192 B | before/plain 512 / 2048 / 8192 B | CPU/MB after/plain |
//! |--------|---------------|---------------------------------|----------------------------------|--------------------|
//! | old    | 3.60 → 3.26   | 0.82 / 0.99 / 1.08              | 1.01 / 0.91 / 0.98               | 1.12 / 1.07 / 1.01 |
//! | new    | 3.26 → 2.65   | 0.89 / 0.67 / 1.13              | 0.67 / 0.67 / 1.03               | 0.94 / 1.68 / 1.03 |
//! | old    | 2.65 → 2.42   | 0.72 / 0.72 / 0.95              | 0.56 / 0.68 / 0.84               | 1.09 / 1.40 / 1.09 |
//! | new    | 2.42 → 3.27   | 0.65 / 0.86 / 1.07              | 0.79 / 0.77 / 0.89               | 1.53 / 1.25 / 0.94 |
//!
//! 8192 B after a migration: 1.08 and 0.95 of plain with the old daemon,
//! 1.13 and 1.07 with the new one — in the direction of the profile, but
//! within the spread. The small-write rows swing most, in both columns
//! with daemons: their CPU time per MB sometimes doubles in the *before*
//! column (8,938 and 12,347 µs against 3,540 and 6,877 plain), the first
//! samples after the daemons start; not investigated.
//!
//! **Correction (session 4, commit f7aee17).** Until then `preservetcpd`
//! died on SIGTERM without its clean-up (the signal-waiting thread was
//! started before the signals were blocked), so every daemon this bench
//! stopped left its ip6tables chains, conntrack use and nft tables in the
//! lab namespaces, and each later *plain* run paid the same netfilter
//! hooks as the PreserveTCP runs. The ratios above and in the earlier
//! sections are therefore too favourable wherever a plain run followed a
//! daemon run. With the clean-up working (idle machine, load 0.9–1.6,
//! full runs, median of 5):
//!
//! | run | send 512 / 2048 / 8192 B before | after | CPU/MB before (512 / 2048 / 8192) | ping-pong before / after | connect+close | failover |
//! |-----|---------------------------------|-------|-----------------------------------|--------------------------|---------------|----------|
//! | 1 | 0.70 / 0.66 / 1.34 | 0.64 / 0.51 / 1.07 | 1.69 / 1.86 / 0.91 | 1.08 / 0.99 | 0.44 (40.5k/s plain) | 0.414 s |
//! | 2 | 0.71 / 0.62 / 1.04 | 0.48 / 0.54 / 0.90 | 1.85 / 1.73 / 1.00 | 1.10 / 0.99 | 0.42 (41.8k/s plain) | 0.368 s |
//!
//! `PTCP_BENCH_ONLY=send`, `--no-bpf` against the default, one after the
//! other: before/plain 0.65 / 0.63 / 1.05 (CPU/MB 1.44 / 1.57 / 1.16)
//! without BPF, 0.62 / 0.62 / 0.88 (1.82 / 1.73 / 1.21) with it. So the
//! cost of an unmoved connection is mostly netfilter — conntrack, which
//! the rules' `ct`/`connbytes`/`connmark` matches switch on for all TCP
//! of the namespace, and the mangle chains every segment walks — plus the
//! tc programs' per-segment parse and map lookup; small writes, which
//! send many small segments, pay it per segment. Meeting ≥ 0.99 before a
//! migration needs the handshake learning and the moved-connection
//! rewrite without netfilter (both are in reach of the tc programs), so
//! that an unmoved connection meets no hook at all.
//!
//! **Session 5: no netfilter in BPF mode.** An experiment first, with
//! the session-4 daemon (`PTCP_BENCH_ONLY=send`, the daemons' rules
//! deleted by hand after start, so the tc programs alone remained): CPU
//! per MB before a migration went from 1.37–1.54× plain (rules in place)
//! to 1.15× (mangle chains gone, conntrack gone, the fast path table's
//! three empty base chains still hooked) to 1.00 / 1.06 / 0.92 (nothing
//! but the tc programs). So the tc programs now also learn the handshake
//! (ring buffer instead of NFLOG), decide coverage, rewrite segments on
//! alternative pairs and rewrite and redirect moved connections; no
//! netfilter rule of ours exists in BPF mode (see the preservetcp crate
//! docs). `bpftool prog show` with `kernel.bpf_stats_enabled=1` during
//! the before phase: about 110 ns per run for each program on an
//! established segment (the stats themselves included), 190–210 ns for
//! the client's egress while a just-connected socket's echo window is
//! open. Full runs on an idle machine after moved connections, too, went
//! to the tc programs (commit 5ec4a18, load 0.8–1.7), median of 5:
//!
//! | run | send 512 / 2048 / 8192 B before | after | CPU/MB before | CPU/MB after | ping-pong before / after | connect+close | failover |
//! |-----|---------------------------------|-------|---------------|--------------|--------------------------|---------------|----------|
//! | 1 | 0.90 / 0.97 / 0.81 | 1.78 / 1.16 / 0.67 | 1.11 / 1.03 / 1.21 | 0.37 / 0.57 / 1.00 | 1.12 / 8.2 | 0.73 (44.0k/s plain) | 0.350 s |
//! | 2 | 0.80 / 0.85 / 1.04 | 1.60 / 1.04 / 0.81 | 1.20 / 1.18 / 0.98 | 0.40 / 0.63 / 0.73 | 1.01 / 8.3 | 0.70 (42.3k/s plain) | 0.358 s |
//! | 3 | 0.94 / 0.95 / 1.05 | 1.61 / 1.23 / 0.89 | 1.06 / 1.04 / 0.91 | 0.42 / 0.53 / 0.75 | 0.98 / 7.2 | 0.81 (37.9k/s plain) | 0.357 s |
//!
//! The *after* column is not comparable with plain as it stands: a
//! segment that the egress program redirects (`bpf_redirect_neigh`) is
//! no longer carried through the receiver's whole input path in the
//! sending thread's context (the plain path on veth is), so the two
//! threads' CPU time per MB drops and the two vCPUs work in parallel:
//! 1-byte ping-pong runs 7–8× faster than plain and small writes 1.6×.
//! What it costs is shown by the CPU time of the *whole machine* per MB
//! (`/proc/stat` busy time over each sample's interval, daemons and
//! softirq included; `PTCP_BENCH_ONLY=send PTCP_BENCH_RUNS=3`, medians):
//!
//! | write size | plain | before | after | before/plain | after/plain |
//! |------------|-------|--------|-------|--------------|-------------|
//! | 512 B | 5,942 µs | 6,435 µs | 4,290 µs | 1.08 | 0.72 |
//! | 2048 B | 2,034 µs | 2,160 µs | 2,249 µs | 1.06 | 1.11 |
//! | 8192 B | 1,082 µs | 1,106 µs | 1,739 µs | 1.02 | 1.61 |
//!
//! So an unmoved connection costs 2–8 % more CPU per MB than plain TCP
//! (the two tc programs on every segment), a moved one with large writes
//! 1.6× (rewrite, redirect and a second neighbour lookup per GSO packet),
//! with small writes less than plain (the redirected path batches
//! better).
//!
//! With the handshake learned in the kernel but moved connections still
//! on nftables (commit 70e12ad, one full run and `PTCP_BENCH_ONLY`
//! runs): connect+close 0.65–0.90 (`PTCP_BENCH_ONLY=connect`: 0.90,
//! 37.1k/s against 41.2k/s plain), before 0.79–1.09 / 0.85–1.01 /
//! 0.69–1.12, after 0.55–0.76 / 0.60–0.79 / 0.79–1.02 with CPU/MB after
//! 1.48–1.88 for small writes. The spread between identical runs (the
//! 8192-byte before row from 0.69 to 1.12, connect+close from 0.45 to
//! 1.08) is the 2-vCPU machine's: the CPU time per MB is the steadier
//! figure, and it puts small writes before a migration within 0–11 % of
//! plain.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netlab::{Family, Host, Lab, Link, Process};
use preservetcp::control::{Request, request};

/// Interleaved runs (`PTCP_BENCH_RUNS` overrides).
const RUNS: usize = 5;
const PORT: u16 = 5001;

fn v6(l: &Link, h: &Host) -> Ipv6Addr {
    match l.addr(h, Family::V6) {
        std::net::IpAddr::V6(a) => a,
        std::net::IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Setup {
    lab: Lab,
    a: Host,
    b: Host,
    l0: Link,
    l1: Link,
    daemons: Vec<(Process, PathBuf)>,
}

impl Setup {
    fn start_daemons(&mut self, bin: &std::path::Path) {
        for h in [self.a.clone(), self.b.clone()] {
            let ctl = self
                .lab
                .artifacts_dir()
                .join(format!("bench-{}.sock", h.name()));
            // `PTCPD_EXTRA`: more daemon arguments (e.g. `--no-realtime`).
            let mut args: Vec<String> = vec![
                bin.to_str().unwrap_or("preservetcpd").into(),
                "--ports".into(),
                PORT.to_string(),
                "--control".into(),
                ctl.to_str().unwrap_or("").into(),
            ];
            if let Ok(extra) = std::env::var("PTCPD_EXTRA") {
                args.extend(extra.split_whitespace().map(String::from));
            }
            let p = h.spawn(args).expect("spawn preservetcpd");
            let t0 = Instant::now();
            while !p.stdout_so_far().contains("ready") {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "daemon: {}",
                    p.stderr_so_far()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            self.daemons.push((p, ctl));
        }
    }

    fn stop_daemons(&mut self) {
        for (p, _) in self.daemons.drain(..) {
            let _ = p.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
    }

    /// Which handshake path the client's daemon uses, with its counters
    /// (`tc BPF` unless `PTCPD_EXTRA=--no-bpf` or the programs failed to
    /// load).
    fn handshake_path(&self) -> String {
        let Some((_, ctl)) = self.daemons.first() else {
            return "no daemon".into();
        };
        let st = request(ctl, &Request::Stats)
            .ok()
            .and_then(|r| r.stats)
            .unwrap_or_default();
        let get = |k: &str| st.get(k).copied().unwrap_or(0);
        if get("bpf") == 1 {
            format!(
                "tc BPF (client: {} SYNs offered in the kernel, {} packets queued)",
                get("bpf_syn_offers"),
                get("packets_out")
            )
        } else {
            format!(
                "NFQUEUE (client: {} SYNs offered, {} packets queued)",
                get("syn_offers"),
                get("packets_out")
            )
        }
    }

    /// Moves the client's connection (local port `port`) to link 1.
    fn migrate(&self, port: u16) {
        let Some((_, ctl)) = self.daemons.first() else {
            return;
        };
        let list = request(ctl, &Request::List).expect("list");
        for c in list
            .connections
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.original.local_port == port)
        {
            let r = request(
                ctl,
                &Request::Move {
                    id: c.id,
                    local: v6(&self.l1, &self.a),
                    peer: v6(&self.l1, &self.b),
                },
            )
            .expect("move");
            assert!(r.ok, "move: {:?}", r.error);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connected pair (client in a, server in b) over link 0.
fn pair(s: &Setup) -> (TcpStream, TcpStream) {
    let l =
        s.b.run(|| TcpListener::bind(("::", PORT)))
            .expect("run")
            .expect("bind");
    let dst = SocketAddr::from((v6(&s.l0, &s.b), PORT));
    let c =
        s.a.run(move || TcpStream::connect(dst))
            .expect("run")
            .expect("connect");
    let (srv, _) = l.accept().expect("accept");
    c.set_nodelay(true).ok();
    srv.set_nodelay(true).ok();
    std::thread::sleep(Duration::from_millis(150));
    (c, srv)
}

/// CPU time of the calling thread in seconds (everything the kernel does
/// while the thread is current counts, also the softirq work done in its
/// context: on veth the sender's thread carries the whole receive path).
fn thread_cpu() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or(f64::NAN)
}

/// Sending `size`-byte writes for about `secs`: MB/s, and the CPU time of
/// the sending and receiving threads per MB in microseconds (less
/// sensitive to the shared machine's load than the rate).
fn throughput(mut c: TcpStream, mut srv: TcpStream, size: usize, secs: f64) -> (f64, f64) {
    let reader = std::thread::spawn(move || {
        let cpu0 = thread_cpu();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k) = srv.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        (n, thread_cpu() - cpu0)
    });
    let buf = vec![0x5au8; size];
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    let mut sent = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        if c.write_all(&buf).is_err() {
            break;
        }
        sent += size as u64;
    }
    let _ = c.shutdown(std::net::Shutdown::Write);
    let cpu = thread_cpu() - cpu0;
    let (got, rcpu) = reader.join().unwrap_or((0, f64::NAN));
    let el = t0.elapsed().as_secs_f64();
    assert_eq!(got, sent, "all data arrived");
    let mb = got as f64 / 1e6;
    (mb / el, (cpu + rcpu) * 1e6 / mb)
}

/// Round trips per second of 1-byte ping-pong.
fn pingpong(mut c: TcpStream, mut srv: TcpStream, n: usize) -> f64 {
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while srv.read_exact(&mut b).is_ok() {
            if srv.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut b = [7u8; 1];
    let t0 = Instant::now();
    for _ in 0..n {
        c.write_all(&b).expect("ping");
        c.read_exact(&mut b).expect("pong");
    }
    let el = t0.elapsed().as_secs_f64();
    drop(c);
    let _ = echo.join();
    n as f64 / el
}

/// A listener on `PORT` in `b` with a deep accept queue: the acceptor
/// thread competes for the CPUs with everything else, and with std's
/// backlog of 128 a lagging acceptor overflows the queue, the SYN is
/// dropped and the client retransmits it after 1 s — stalls that measured
/// the scheduler, not the connection setup (seen as `ListenOverflows`).
fn deep_listener(s: &Setup) -> TcpListener {
    s.b.run(|| {
        let sock = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)).into())?;
        sock.listen(4096)?;
        std::io::Result::Ok(TcpListener::from(sock))
    })
    .expect("run")
    .expect("bind")
}

/// connect+close per second.
fn connects(s: &Setup, n: usize) -> f64 {
    let l = deep_listener(s);
    let acc = std::thread::spawn(move || {
        for _ in 0..n {
            match l.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => break,
            }
        }
    });
    let dst = SocketAddr::from((v6(&s.l0, &s.b), PORT));
    let el =
        s.a.run(move || {
            let t0 = Instant::now();
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let c = TcpStream::connect(dst).expect("connect");
                drop(c);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let el = t0.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| {
                lat.get((q * n as f64) as usize)
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            eprintln!(
                "  connect+close: median {:.0} us, p99 {:.0} us, max {:.0} us",
                pct(0.5),
                pct(0.99),
                lat.last().copied().unwrap_or(f64::NAN)
            );
            el
        })
        .expect("run");
    let _ = acc.join();
    n as f64 / el
}

/// Seconds from a silent drop of link 0 at b until data flows again.
fn failover(s: &Setup) -> f64 {
    let (mut c, mut srv) = pair(s);
    let last = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let lr = last.clone();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 1024];
        while let Ok(k) = srv.read(&mut b) {
            if k == 0 {
                break;
            }
            lr.store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let writer = std::thread::spawn(move || {
        let b = [1u8; 1024];
        while !st.load(Ordering::Relaxed) {
            if c.write_all(&b).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let fault = s.l0.drop_rx(&s.b).expect("drop");
    let fault_us = fault.at.duration_since(t0).as_micros() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut result = f64::NAN;
    while Instant::now() < deadline {
        let l = last.load(Ordering::Relaxed);
        // Data arriving ≥ 50 ms after the fault came over the new path.
        if l > fault_us + 50_000 {
            result = (l - fault_us) as f64 / 1e6;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    s.l0.restore().expect("restore");
    let _ = reader.join();
    result
}

/// CLOCK_MONOTONIC in seconds (the clock of `perf record -k CLOCK_MONOTONIC`).
fn monotonic() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or(f64::NAN)
}

/// `/proc/loadavg`'s three load averages (the machine is shared: figures
/// are only comparable at similar load).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let load_start = loadavg();
    let bin = std::env::var_os("PTCPD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("preservetcpd")))
                .unwrap_or_else(|| PathBuf::from("preservetcpd"))
        });
    assert!(
        bin.exists(),
        "{} missing: build -p preservetcp first",
        bin.display()
    );
    let lab = Lab::new().expect("lab (root needed)");
    let a = lab.add_host("a").expect("a");
    let b = lab.add_host("b").expect("b");
    let l0 = lab.link(&a, &b).expect("l0");
    let l1 = lab.link(&a, &b).expect("l1");
    lab.wait_usable(Duration::from_secs(10)).expect("usable");
    // Thousands of connect+close per run leave the client's ports in
    // TIME_WAIT; without reuse, connect() has to hunt for free ports.
    a.sysctl("net.ipv4.tcp_tw_reuse", "1").expect("sysctl");
    let mut s = Setup {
        lab,
        a,
        b,
        l0,
        l1,
        daemons: Vec::new(),
    };

    // `PTCP_BENCH_ONLY=connect` (or `pingpong`, `send`) runs just that row,
    // for profiling; `PTCP_BENCH_ONLY=after` runs only the send rows in the
    // plain and after-migration columns. `PTCP_BENCH_RUNS` changes the
    // number of runs, `PTCP_BENCH_SIZES` (e.g. `8192`) the write sizes,
    // `PTCP_BENCH_SECS` the seconds per throughput sample (default 1).
    // With `PTCP_BENCH_ONLY` set, each throughput sample prints its
    // CLOCK_MONOTONIC interval, for `perf record -k CLOCK_MONOTONIC` and
    // `perf report --time START,END`.
    let only = std::env::var("PTCP_BENCH_ONLY").unwrap_or_default();
    let runs: usize = std::env::var("PTCP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let secs: f64 = std::env::var("PTCP_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let after_only = only == "after";
    let want = |row: &str| only.is_empty() || only == row || (after_only && row == "send");
    let sizes: Vec<usize> = if want("send") {
        std::env::var("PTCP_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![512, 2048, 8192])
    } else {
        Vec::new()
    };
    // [row][column] samples; columns: plain, before, after.
    let mut tp = vec![vec![Vec::new(); 3]; sizes.len()];
    let mut tcpu = vec![vec![Vec::new(); 3]; sizes.len()];
    let mut pp = vec![Vec::new(); 3];
    let mut cc = vec![Vec::new(); 2];
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        for mode in 0..3 {
            if mode == 1 {
                s.start_daemons(&bin);
            }
            for (i, size) in sizes.iter().enumerate() {
                if after_only && mode == 1 {
                    continue;
                }
                let (c, srv) = pair(&s);
                if mode == 2 {
                    s.migrate(c.local_addr().map(|a| a.port()).unwrap_or(0));
                }
                let t0 = monotonic();
                let (rate, cpu) = throughput(c, srv, *size, secs);
                tp[i][mode].push(rate);
                tcpu[i][mode].push(cpu);
                if !only.is_empty() {
                    eprintln!(
                        "  send {size} B {}: {rate:.1} MB/s, {cpu:.0} us CPU/MB, CLOCK_MONOTONIC {t0:.3},{:.3}",
                        ["plain", "before", "after"][mode],
                        monotonic()
                    );
                }
            }
            if want("pingpong") {
                let (c, srv) = pair(&s);
                if mode == 2 {
                    s.migrate(c.local_addr().map(|a| a.port()).unwrap_or(0));
                }
                pp[mode].push(pingpong(c, srv, 20_000));
            }
            if mode < 2 && want("connect") {
                cc[mode].push(connects(&s, 2000));
                if mode == 1 {
                    eprintln!("  handshake: {}", s.handshake_path());
                }
            }
        }
        s.stop_daemons();
    }
    let mut fo = Vec::new();
    if want("failover") {
        s.start_daemons(&bin);
        fo = (0..5).map(|_| failover(&s)).collect();
        s.stop_daemons();
    }

    println!("PreserveTCP vs plain TCP (netlab veth, IPv6, median of {runs})");
    println!(
        "load average at start {load_start}, at end {}; {} CPUs",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<24} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "test", "plain", "ptcp before", "ptcp after", "before", "after"
    );
    for (i, size) in sizes.iter().enumerate() {
        let m: Vec<f64> = tp[i].iter().map(|v| median(v.clone())).collect();
        println!(
            "{:<24} {:>9.1} MB/s {:>7.1} MB/s {:>7.1} MB/s {:>8.3} {:>8.3}",
            format!("send {size} B"),
            m[0],
            m[1],
            m[2],
            m[1] / m[0],
            m[2] / m[0]
        );
    }
    for (i, size) in sizes.iter().enumerate() {
        let m: Vec<f64> = tcpu[i].iter().map(|v| median(v.clone())).collect();
        println!(
            "{:<24} {:>10.0} us {:>10.0} us {:>10.0} us {:>8.3} {:>8.3}",
            format!("CPU/MB send {size} B"),
            m[0],
            m[1],
            m[2],
            m[1] / m[0],
            m[2] / m[0]
        );
    }
    let m: Vec<f64> = pp.iter().map(|v| median(v.clone())).collect();
    println!(
        "{:<24} {:>10.0} /s {:>10.0} /s {:>10.0} /s {:>8.3} {:>8.3}",
        "1-byte ping-pong",
        m[0],
        m[1],
        m[2],
        m[1] / m[0],
        m[2] / m[0]
    );
    let m: Vec<f64> = cc.iter().map(|v| median(v.clone())).collect();
    println!(
        "{:<24} {:>10.0} /s {:>10.0} /s {:>12} {:>8.3} {:>8}",
        "connect+close",
        m[0],
        m[1],
        "-",
        m[1] / m[0],
        "-"
    );
    let fo_s: Vec<String> = fo.iter().map(|x| format!("{x:.3}")).collect();
    println!(
        "failover after silent drop: median {:.3} s (runs: {})",
        median(fo.clone()),
        fo_s.join(", ")
    );
}
