//! `preservetcpd`: the privileged PreserveTCP daemon (Linux: tc BPF, or
//! NFQUEUE with `--no-bpf`).
//!
//! ```text
//! preservetcpd [--ports 5001,8000] [--queue 7] [--control PATH]
//!              [--interval-ms 50] [--stall-ms 300] [--follow-hold-ms 500]
//!              [--fallback-table 4242] [--fallback-pref 32000]
//!              [--max-opt-ins 256]
//!              [--keep-rules] [--no-fast-path] [--no-bpf] [--verbose]
//! ```
//!
//! By default the handshake options are inserted by tc BPF programs
//! (`bpf.rs`, `bpf/ptcp.bpf.c`): no handshake packet is queued, the engine
//! runs with `EngineConfig::kernel_options` and learns every handshake
//! from the copies of incoming packets in the programs' ring buffer, the
//! programs rewrite segments on alternative pairs and the segments of
//! moved connections (`ptcp_moved`, filled on the engine's `Moved`), and
//! the offer map is rewritten from the engine's offers after every
//! rtnetlink snapshot. No netfilter rule is installed and nothing is
//! queued (NFQUEUE stays bound, empty). `--no-bpf`, or a failure to load
//! the programs (logged), selects the NFQUEUE handshake and the full rule
//! set described in `rules.rs`, with NFLOG group `queue` for the incoming
//! handshake packets (`nflog.rs`); there moved connections are rewritten
//! by nftables maps (the stateless fast path, `rules::fast_setup`) once
//! their entries are in, until then, and always with `--no-fast-path`,
//! by the engine through NFQUEUE. (`--no-fast-path` has no effect in BPF
//! mode.)
//!
//! Binds NFQUEUE `queue` (outgoing) and `queue + 1` (incoming) and runs
//! these threads: packets (the [`preservetcp::Engine`] for queued
//! packets), rtnetlink events (link, IPv6
//! address and IPv6 route notifications: each batch re-reads the local
//! addresses with their link states and checks the route of every current
//! pair at once, see `rtnl.rs`), a sampler (every `interval-ms`: sock_diag
//! `tcp_info` of tracked connections — the kernel has no notification for
//! a stalled socket, so this one signal is sampled — and closed sockets),
//! the ring buffer reader (BPF mode: handshake copies, echo reports and
//! alternative-pair segments, read in batches at most every 5 ms) and the
//! control socket (JSON lines, see [`preservetcp::control`]; one thread
//! per client, see [`control_loop`]). Prints `ready` on stdout once
//! everything is in place. Removes its rules on SIGTERM/SIGINT unless
//! `--keep-rules`. `--verbose` also logs every connection as it is tracked
//! (moves are always logged).
//!
//! Fallback routing (see `rules::Fallback`): a moved connection's original
//! tuple stays routable through routes in table 4242 (`--fallback-table`)
//! and two policy rules per connection at preference 32000
//! (`--fallback-pref`; after `local`, before `main`). The daemon's routes
//! and rules carry the protocol tag 80 (`rules::FALLBACK_PROTO`); it
//! removes only those it added, on exit, and at start the tagged ones a
//! killed daemon left. Pick other numbers when the host uses these.
//!
//! Without BPF each tuple opted in over the control socket is an
//! ip6tables rule: at most `--max-opt-ins` at once (256,
//! `rules::DEFAULT_MAX_OPT_INS`; a request beyond fails), each removed once
//! its connection is gone. (With BPF they are entries of an LRU map.)
//!
//! The control socket is created with mode 0666: every user may ask for
//! `list` and `stats`; requests that change state are checked against the
//! sender's `SO_PEERCRED` uid — root only, except that the owner of a
//! connection's socket may `move` that connection (see [`authorize`]).
//!
//! Exit: the signal thread takes the run lock (`Shared::run_lock`), marks
//! the daemon as shutting down and removes everything while holding it
//! until the process ends: no thread changes the kernel after the clean-up
//! started, so nothing added by a concurrent rule change survives the exit.
//!
//! The packet thread handles queued packets one at a time with no handoff:
//! it drains what was learned (NFLOG or the ring buffers) into the engine, runs the
//! engine and gives the verdict. Nothing on that path waits for a rule
//! install or a socket lookup; rule changes happen only when a connection
//! moves. (A `SCHED_FIFO` packet thread was measured twice under load:
//! connect+close got slower, 0.19 against 0.21–0.25 of plain — the
//! client's ACK trip then preempts the connecting thread — so it runs as a
//! normal thread.)

mod bpf;
mod nflog;
mod rtnl;
mod rules;
mod sys;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use preservetcp::FourTuple;
use preservetcp::control::{DEFAULT_CONTROL_PATH, PERMISSION_DENIED, Request, Response, TupleInfo};
use preservetcp::engine::{Action, Engine, EngineConfig, LocalAddr, Verdict};
use preservetcp::pairs::AddrPair;
use preservetcp::policy::PolicyConfig;

use rules::Rules;

#[derive(Debug)]
struct Args {
    ports: Vec<u16>,
    queue: u16,
    control: PathBuf,
    interval: Duration,
    stall: Option<Duration>,
    follow_hold: Duration,
    keep_rules: bool,
    fast_path: bool,
    bpf: bool,
    verbose: bool,
    /// Routing table of the fallback routes.
    fallback_table: u32,
    /// Preference of the fallback policy rules.
    fallback_pref: u32,
    /// Most tuples opted in at once without BPF.
    max_opt_ins: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        ports: Vec::new(),
        queue: 7,
        control: PathBuf::from(DEFAULT_CONTROL_PATH),
        interval: Duration::from_millis(50),
        stall: Some(preservetcp::policy::DEFAULT_STALL_TIMEOUT),
        follow_hold: preservetcp::policy::DEFAULT_FOLLOW_HOLD,
        keep_rules: false,
        fast_path: true,
        bpf: true,
        verbose: false,
        fallback_table: rules::DEFAULT_FALLBACK_TABLE,
        fallback_pref: rules::DEFAULT_FALLBACK_PREF,
        max_opt_ins: rules::DEFAULT_MAX_OPT_INS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--ports" => {
                for p in val()?.split(',').filter(|p| !p.is_empty()) {
                    a.ports
                        .push(p.parse().map_err(|e| format!("port {p}: {e}"))?);
                }
            }
            "--queue" => a.queue = val()?.parse().map_err(|e| format!("--queue: {e}"))?,
            "--control" => a.control = PathBuf::from(val()?),
            "--interval-ms" => {
                a.interval = Duration::from_millis(
                    val()?.parse().map_err(|e| format!("--interval-ms: {e}"))?,
                );
            }
            "--stall-ms" => {
                let ms: u64 = val()?.parse().map_err(|e| format!("--stall-ms: {e}"))?;
                a.stall = (ms > 0).then(|| Duration::from_millis(ms));
            }
            "--follow-hold-ms" => {
                a.follow_hold = Duration::from_millis(
                    val()?
                        .parse()
                        .map_err(|e| format!("--follow-hold-ms: {e}"))?,
                );
            }
            "--fallback-table" => {
                a.fallback_table = rules::check_fallback_table(
                    val()?
                        .parse()
                        .map_err(|e| format!("--fallback-table: {e}"))?,
                )?;
            }
            "--fallback-pref" => {
                a.fallback_pref = rules::check_fallback_pref(
                    val()?
                        .parse()
                        .map_err(|e| format!("--fallback-pref: {e}"))?,
                )?;
            }
            "--max-opt-ins" => {
                a.max_opt_ins = val()?.parse().map_err(|e| format!("--max-opt-ins: {e}"))?;
            }
            "--keep-rules" => a.keep_rules = true,
            "--no-fast-path" => a.fast_path = false,
            "--no-bpf" => a.bpf = false,
            "--verbose" => a.verbose = true,
            "-h" | "--help" => {
                println!(
                    "preservetcpd [--ports P1,P2] [--queue N] [--control PATH] \
                     [--interval-ms MS] [--stall-ms MS (0 = off)] [--follow-hold-ms MS] \
                     [--fallback-table N (4242)] [--fallback-pref N (32000)] \
                     [--max-opt-ins N (256)] \
                     [--keep-rules] [--no-fast-path] [--no-bpf] [--verbose]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.queue == u16::MAX {
        return Err("--queue must be below 65535".into());
    }
    Ok(a)
}

struct Shared {
    engine: Mutex<Engine>,
    /// The NFLOG group incoming handshake packets are learned from
    /// (without BPF; with it the ingress program copies them); locked only
    /// while the engine is locked (lock order: engine, then this).
    learn: Option<Mutex<nflog::Nflog>>,
    verbose: bool,
    /// Fast path entries per moved connection (original tuple → pair), when
    /// the fast path is on.
    fast: Option<Mutex<std::collections::HashMap<FourTuple, rules::FastEntry>>>,
    rules: Rules,
    /// The fallback routes and policy rules of moved connections.
    fallback: rules::Fallback,
    start: Instant,
    /// Local addresses with link state and device, as of the last
    /// rtnetlink snapshot.
    locals: Mutex<Vec<(LocalAddr, String)>>,
    /// Each connection's pair as last logged.
    logged: Mutex<std::collections::HashMap<u64, AddrPair>>,
    /// The tc BPF programs that insert the handshake options (`None`:
    /// `--no-bpf` or the load failed; the handshake goes through NFQUEUE).
    bpf: Option<Mutex<bpf::Bpf>>,
    /// Connections entered but whose alternative pairs are not in the
    /// kernel yet (BPF mode, see [`ALT_DELAY`]), oldest first.
    alt_pending: Mutex<std::collections::VecDeque<(Instant, FourTuple)>>,
    /// Connections tracked at once in the current second (start, count).
    alt_budget: Mutex<(Instant, u32)>,
    /// Held by a thread from taking the engine's actions until it has run
    /// them (and by the sampler's alternative-pair work, the opt-ins and
    /// the exit's clean-up): the actions of different threads then never
    /// interleave or overtake each other (a connection's `Untracked` run
    /// before its `Moved`, say, would leave its entries in the kernel),
    /// and nothing is changed in the kernel once the clean-up started
    /// ([`RunState::shutting_down`]). Every change of rules, routes,
    /// programs or maps is made while holding it. Lock order: this, the
    /// engine, the programs.
    run_lock: Mutex<RunState>,
}

/// What [`Shared::run_lock`] guards.
#[derive(Debug, Default)]
struct RunState {
    /// Set by the signal thread before it removes what the daemon put in
    /// the kernel; it holds the lock from then until the process exits.
    /// Every function that changes the kernel takes the guard ([`Run`])
    /// and does nothing once this is set (which only matters should the
    /// lock ever be released, e.g. after a panic).
    shutting_down: bool,
}

/// The held run lock ([`Shared::run`]): proof for the functions that
/// change the kernel that no other thread does at the same time.
type Run<'a> = MutexGuard<'a, RunState>;

/// An `Instant` on `CLOCK_MONOTONIC` in nanoseconds (the clock of the
/// programs' `bpf_ktime_get_ns`; `Instant` is that clock on Linux, but it
/// does not expose its value).
fn monotonic_ns(at: Instant) -> u64 {
    let now = Instant::now();
    let Ok(mono) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return 0;
    };
    let mono_ns = u64::try_from(mono.tv_sec())
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(mono.tv_nsec()).unwrap_or(0));
    let ahead = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if at >= now {
        mono_ns.saturating_add(ahead(at - now))
    } else {
        mono_ns.saturating_sub(ahead(now - at))
    }
}

/// A connection's alternative pairs go into the kernel as it is entered,
/// for up to [`ALT_IMMEDIATE`] connections per second; beyond that (a
/// burst of short connections, e.g. a connect+close benchmark entering
/// tens of thousands per second) once it is this old, so that short
/// connections never cost the map updates (three per connection on two
/// links, and as many removals). A peer moves only after a failure was
/// detected (a stall of 300 ms by default, an RTO, or a link going down)
/// or on request; a connection entered during such a burst that its peer
/// moves away from within this delay is the rare case: its segments on
/// the new pair reach no socket until then.
const ALT_DELAY: Duration = Duration::from_millis(100);

/// Connections per second whose alternative pairs go into the kernel at
/// once (see [`ALT_DELAY`]).
const ALT_IMMEDIATE: u32 = 500;

impl Shared {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the run lock (see [`Shared::run_lock`]).
    fn run(&self) -> Run<'_> {
        self.run_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes what the daemon put in the kernel (on SIGTERM/SIGINT), with
    /// the run lock held and [`RunState::shutting_down`] set by the
    /// caller: the programs, and unless `keep_rules` the rules, the fast
    /// path table and the fallback routing (with BPF the fallback routing
    /// goes also with `keep_rules`: the programs rewrote the moved
    /// connections and are gone now, so the fallback rules would route
    /// their original tuples, unrewritten, to the new pairs' links).
    fn teardown(&self, run: &Run<'_>, keep_rules: bool) {
        debug_assert!(run.shutting_down);
        if let Some(b) = &self.bpf {
            b.lock().unwrap_or_else(|e| e.into_inner()).detach_all();
        }
        if !keep_rules {
            self.rules.remove_all();
            rules::fast_teardown();
        }
        if !keep_rules || self.bpf.is_some() {
            self.fallback.teardown();
        }
    }

    /// The engine, after feeding it every learned (NFLOG) packet that is
    /// waiting: a SYN is learned before its SYN+ACK is handled, because its
    /// copy was queued before the kernel even processed it.
    fn engine_drained(&self) -> MutexGuard<'_, Engine> {
        let mut eng = self.engine();
        self.drain_into(&mut eng);
        eng
    }

    /// The engine, after reading learned packets until it has what the
    /// outgoing packet `pkt` needs ([`Engine::awaits_learning`]): usually
    /// one read, without the final empty read of a full drain.
    fn engine_for_outbound(&self, pkt: &[u8]) -> MutexGuard<'_, Engine> {
        let mut eng = self.engine();
        if let Some(learn) = &self.learn
            && eng.awaits_learning(pkt)
        {
            let mut learn = learn.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            loop {
                match learn.read_one(|p| eng.observe_inbound(p, now)) {
                    Ok(true) if eng.awaits_learning(pkt) => {}
                    Ok(_) => break,
                    Err(e) => {
                        self.log(&format!("nflog: {e} (learned handshakes lost)"));
                        break;
                    }
                }
            }
        }
        eng
    }

    fn drain_into(&self, eng: &mut Engine) {
        let now = Instant::now();
        if let Some(learn) = &self.learn {
            let mut learn = learn.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = learn.drain(|p| eng.observe_inbound(p, now)) {
                self.log(&format!("nflog: {e} (learned handshakes lost)"));
            }
        }
        // The kernel's copies of handshake packets and alternative-pair
        // segments, its reports of echoes that left (client side) and of
        // server handshakes to rebuild; lock order engine → bpf.
        bpf::feed_echoes(self.bpf.as_ref(), eng, now);
    }

    /// Moves connection `t` to `pair` in the kernel (BPF mode): the
    /// `ptcp_moved` entry with the device of the route to the pair, then
    /// the fallback route of the original peer through that route's next
    /// hop.
    fn move_in_kernel(&self, t: &FourTuple, pair: AddrPair) -> Result<(), String> {
        let Some(b) = &self.bpf else { return Ok(()) };
        let (dev, via) = rules::route_to(pair.local, pair.peer)
            .or_else(|| self.device_of(pair.local).map(|d| (d, None)))
            .ok_or_else(|| format!("no device for {}", pair.local))?;
        let ifindex =
            nix::net::if_::if_nametoindex(dev.as_str()).map_err(|e| format!("{dev}: {e}"))?;
        let hold = self.engine().follow_hold_until(t).map_or(0, monotonic_ns);
        b.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_moved(t, pair.local, pair.peer, ifindex, hold)?;
        self.fallback
            .routes(t, &dev, Some(via.unwrap_or(pair.peer)))
    }

    /// After a change of links, addresses or routes: every moved
    /// connection's device and fallback route again (BPF mode; a device
    /// may be gone or re-created, a route may use another one now, and
    /// connections to the same peer share its fallback route).
    fn refresh_moved(&self, run: &Run<'_>) {
        if self.bpf.is_none() || run.shutting_down {
            return;
        }
        let moved: Vec<(FourTuple, AddrPair)> = {
            let eng = self.engine();
            eng.originals()
                .into_iter()
                .filter_map(|t| eng.current_pair(&t).map(|p| (t, p)))
                .filter(|(t, p)| *p != t.pair())
                .collect()
        };
        for (t, p) in moved {
            if let Err(e) = self.move_in_kernel(&t, p) {
                self.log(&format!(
                    "moved connection to {}: {e}",
                    rules::fmt_pair(p.local, p.peer)
                ));
            }
        }
    }

    /// Gives the kernel the alternative pairs of connections entered at
    /// least [`ALT_DELAY`] ago that are still tracked (BPF mode).
    fn push_alts(&self, run: &Run<'_>, now: Instant) {
        if self.bpf.is_none() || run.shutting_down {
            return;
        }
        let due: Vec<FourTuple> = {
            let mut p = self.alt_pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut due = Vec::new();
            while let Some((at, t)) = p.front().copied() {
                if now.saturating_duration_since(at) < ALT_DELAY {
                    break;
                }
                p.pop_front();
                due.push(t);
            }
            due
        };
        for t in due {
            self.sync_alts(&t, true);
        }
    }

    /// Updates the kernel's offer map to the engine's offers for every
    /// local address, and attaches the programs to links that appeared.
    fn bpf_sync(&self, run: &Run<'_>, offers: OfferMap) {
        let Some(b) = &self.bpf else { return };
        if run.shutting_down {
            return;
        }
        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = b.set_offers(offers) {
            self.log(&format!("bpf offers: {e}"));
        }
        let (added, errors) = b.sync_links();
        if !added.is_empty() {
            self.log(&format!("bpf: attached to {}", added.join(", ")));
        }
        for e in errors {
            self.log(&format!("bpf: {e}"));
        }
    }

    fn log(&self, msg: &str) {
        eprintln!("[{:9.3}] {msg}", self.start.elapsed().as_secs_f64());
    }

    /// Logs connections that changed pairs since the last call (and, with
    /// `--verbose`, new ones). O(connections).
    fn log_moves(&self, eng: &Engine) {
        let mut last = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let mut now = std::collections::HashMap::with_capacity(last.len());
        for (id, pair, reason) in eng.current_pairs() {
            match last.get(&id) {
                None if self.verbose => self.log(&format!(
                    "conn {id} tracked on {}",
                    rules::fmt_pair(pair.local, pair.peer)
                )),
                Some(old) if *old != pair => self.log(&format!(
                    "conn {id} moved to {} ({})",
                    rules::fmt_pair(pair.local, pair.peer),
                    reason.unwrap_or_default()
                )),
                _ => {}
            }
            now.insert(id, pair);
        }
        *last = now;
    }

    /// Re-reads the local addresses (after rtnetlink notifications) and
    /// checks the route of every connection's current pair.
    fn refresh_locals(&self) {
        let snap = match rtnl::snapshot() {
            Ok(s) => s,
            Err(e) => {
                self.log(&format!("rtnetlink snapshot: {e}"));
                return;
            }
        };
        *self.locals.lock().unwrap_or_else(|e| e.into_inner()) = snap.clone();
        let now = Instant::now();
        let run = self.run();
        if run.shutting_down {
            return;
        }
        let (actions, offers) = {
            let mut eng = self.engine_drained();
            eng.set_locals(snap.into_iter().map(|l| l.0).collect(), now);
            let offers = self.bpf.as_ref().map(|_| offers_of(&eng));
            let checks: Vec<(FourTuple, AddrPair)> = eng
                .originals()
                .into_iter()
                .filter_map(|t| eng.current_pair(&t).map(|p| (t, p)))
                .collect();
            for (t, p) in checks {
                if sys::route_ok(p.local, p.peer).is_err() {
                    eng.routing_error(&t, p.peer, now);
                }
            }
            self.log_moves(&eng);
            (eng.take_actions(), offers)
        };
        if let Some(o) = offers {
            self.bpf_sync(&run, o);
        }
        log_actions(self, &actions);
        self.run_actions(&run, actions);
        self.refresh_moved(&run);
    }

    /// Writes a connection's alternative pairs into the kernel with the
    /// engine's current pair marked (BPF mode): with `force` also if they
    /// are not there yet. A connection the engine no longer tracks, or one
    /// without alternatives, is left alone.
    fn sync_alts(&self, t: &FourTuple, force: bool) {
        let Some(b) = &self.bpf else { return };
        if !force && !b.lock().unwrap_or_else(|e| e.into_inner()).tracks(t) {
            return;
        }
        let (wires, current, hold) = {
            let eng = self.engine();
            let current = eng
                .current_pair(t)
                .filter(|p| *p != t.pair())
                .map(|p| t.with_pair(p));
            (eng.wire_tuples(t), current, eng.follow_hold_until(t))
        };
        if wires.len() > 1
            && let Err(e) = b.lock().unwrap_or_else(|e| e.into_inner()).track(
                t,
                &wires,
                current.as_ref(),
                hold.map_or(0, monotonic_ns),
            )
        {
            self.log(&format!("bpf: {e}"));
        }
    }

    fn device_of(&self, addr: std::net::Ipv6Addr) -> Option<String> {
        self.locals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(l, _)| l.addr.addr == addr)
            .map(|(_, d)| d.clone())
    }

    /// Runs the engine's actions. Order matters for the fast path's direct
    /// chain (see `rules::fast_setup`): a connection's fallback policy
    /// rules go in only after the fallback route of its first move (adding
    /// a rule invalidates every cached route, adding a route to the
    /// fallback table does not invalidate one the socket cached from
    /// `main`), and the map
    /// entries after both (until then the NFQUEUE path rewrites and
    /// reroutes). Going back to the original pair, the rules go before
    /// the map entries. A rewritten packet that does not leave on the
    /// expected device is rerouted by the `route` chain, so in every
    /// transition the packets take a correct route. Nothing is run once
    /// the daemon is shutting down.
    fn run_actions(&self, run: &Run<'_>, actions: Vec<Action>) {
        if run.shutting_down {
            return;
        }
        // Connections whose fallback rules wait for their first route.
        let mut rules_pending: Vec<FourTuple> = Vec::new();
        for a in actions {
            let r = match a {
                Action::Tracked(t) => {
                    let now = Instant::now();
                    let at_once = {
                        let mut b = self.alt_budget.lock().unwrap_or_else(|e| e.into_inner());
                        if now.saturating_duration_since(b.0) >= Duration::from_secs(1) {
                            *b = (now, 0);
                        }
                        b.1 += 1;
                        b.1 <= ALT_IMMEDIATE
                    };
                    if at_once {
                        self.sync_alts(&t, true);
                    } else {
                        self.alt_pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_back((now, t));
                    }
                    Ok(())
                }
                Action::Untracked(t) => {
                    if let Some(b) = &self.bpf {
                        let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
                        if b.tracks(&t) {
                            b.untrack(&t);
                        }
                    }
                    Ok(())
                }
                Action::Redirect(t) => {
                    rules_pending.push(t);
                    if self.bpf.is_some() {
                        // (The programs rewrite: `Moved` follows.)
                        Ok(())
                    } else {
                        self.rules.redirect(&t)
                    }
                }
                Action::Unredirect(t) if self.bpf.is_some() => {
                    // Back on the original pair (or gone): the fallback
                    // rules go first (the socket's route is the original
                    // one again, and the program still rewrites what left
                    // before), then the programs stop rewriting.
                    rules_pending.retain(|p| *p != t);
                    let r = self.fallback.rules(&t, false);
                    if let Some(b) = &self.bpf {
                        b.lock().unwrap_or_else(|e| e.into_inner()).unmove(&t);
                    }
                    self.sync_alts(&t, false);
                    r
                }
                Action::Moved(t, pair) if self.bpf.is_some() => {
                    // The programs rewrite the connection's segments to the
                    // pair and hand them to its device; its alternatives
                    // are in the kernel with this one marked current (its
                    // segments are no move of the peer's). The fallback
                    // route (through the pair's next hop, so the kernel's
                    // own neighbour lookup for the original destination
                    // succeeds) and rules keep the original tuple routable
                    // when the original link is gone; nothing is routed by
                    // them unless the programs rewrite it (a packet with
                    // the original addresses on the new pair's link would
                    // be dropped by any source address filter).
                    self.sync_alts(&t, true);
                    let first = match rules_pending.iter().position(|p| *p == t) {
                        Some(i) => {
                            rules_pending.swap_remove(i);
                            true
                        }
                        None => false,
                    };
                    match self.move_in_kernel(&t, pair) {
                        Ok(()) if first => self.fallback.rules(&t, true),
                        r => r,
                    }
                }
                Action::Unredirect(t) => {
                    // The fallback rules go first: the socket's route is
                    // then the original one again, the packets still
                    // rewritten until the map entries go no longer match
                    // the `direct` set and are rerouted.
                    let r = self.fallback.rules(&t, false);
                    if let Some(f) = &self.fast {
                        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                        let before = f.len();
                        let old = f.remove(&t);
                        if let Err(e) = rules::fast_set(&t, old, None, before, f.len()) {
                            self.log(&format!("fast path: {e}"));
                        }
                    }
                    self.rules.unredirect(&t).and(r)
                }
                Action::Moved(t, pair) => {
                    // The peer answers on the new pair: its alternatives
                    // must be in the kernel, this one marked current (its
                    // segments are no move of the peer's).
                    self.sync_alts(&t, true);
                    // The device of an on-link route to the new pair: the
                    // fallback route sends the original tuple there, and
                    // the fast path may then rewrite without a reroute.
                    // The on-link route goes through the new peer as its
                    // next hop (as in BPF mode), so that the next hop stays
                    // the new peer also in a path MTU exception (RTF_CACHE)
                    // the route may get from a translated Packet Too Big.
                    let onlink = rules::onlink_dev(pair.local, pair.peer);
                    let routed = match (&onlink, self.device_of(pair.local)) {
                        (Some(d), _) => self.fallback.routes(&t, d, Some(pair.peer)),
                        (None, Some(d)) => self.fallback.routes(&t, &d, None),
                        (None, None) => Err(format!("no device for {}", pair.local)),
                    };
                    let mut r = routed.clone();
                    if let Some(i) = rules_pending.iter().position(|p| *p == t) {
                        rules_pending.swap_remove(i);
                        r = r.and(self.fallback.rules(&t, true));
                    }
                    if let Some(f) = &self.fast {
                        let direct_oif = onlink
                            .filter(|_| routed.is_ok())
                            .and_then(|d| nix::net::if_::if_nametoindex(d.as_str()).ok());
                        let new = rules::FastEntry {
                            local: pair.local,
                            peer: pair.peer,
                            direct_oif,
                        };
                        let mut f = f.lock().unwrap_or_else(|e| e.into_inner());
                        let before = f.len();
                        let old = f.insert(t, new);
                        if let Err(e) = rules::fast_set(&t, old, Some(new), before, f.len()) {
                            self.log(&format!("fast path: {e}"));
                            f.remove(&t);
                        }
                    }
                    r
                }
            };
            if let Err(e) = r {
                self.log(&format!("rule change failed: {e}"));
            }
        }
        for t in rules_pending {
            if let Err(e) = self.fallback.rules(&t, true) {
                self.log(&format!("rule change failed: {e}"));
            }
        }
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("preservetcpd: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("preservetcpd: {e}");
        std::process::exit(1);
    }
}

/// Local address → encoded offer (`preservetcp::bpf::offer_value`).
type OfferMap =
    std::collections::HashMap<std::net::Ipv6Addr, [u8; preservetcp::bpf::OFFER_VALUE_LEN]>;

/// The engine's offer for every local address (what the kernel's offer
/// map must hold).
fn offers_of(eng: &Engine) -> OfferMap {
    eng.local_addrs()
        .map(|a| (a, preservetcp::bpf::offer_value(&eng.offer_for(a))))
        .collect()
}

fn run(args: Args) -> Result<(), String> {
    // Block the shutdown signals before any thread starts: threads inherit
    // the mask, so only the waiting thread (`sigwait`) receives them. Were
    // any thread left unblocked, SIGTERM's default action would end the
    // process before the clean-up below (rules, fallback routes, tc
    // programs, control socket) runs.
    let mut block = nix::sys::signal::SigSet::empty();
    block.add(nix::sys::signal::Signal::SIGTERM);
    block.add(nix::sys::signal::Signal::SIGINT);
    block.thread_block().map_err(|e| format!("sigmask: {e}"))?;
    let bpf = if args.bpf {
        match bpf::Bpf::load().and_then(|mut b| b.set_ports(&args.ports).map(|()| b)) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!(
                    "preservetcpd: BPF programs not loaded, the handshake goes through NFQUEUE: {e}"
                );
                None
            }
        }
    } else {
        None
    };
    let rules = Rules::new(
        args.queue,
        args.queue + 1,
        args.queue,
        args.ports.clone(),
        bpf.is_some(),
        args.max_opt_ins,
    );
    let learn = if bpf.is_none() {
        let mut learn = nflog::Nflog::open(args.queue).map_err(|e| format!("nflog: {e}"))?;
        if let Err(e) = learn.set_rcvbuf(8 << 20) {
            eprintln!("preservetcpd: nflog receive buffer: {e}");
        }
        Some(Mutex::new(learn))
    } else {
        None
    };
    let config = EngineConfig {
        policy: PolicyConfig {
            stall_timeout: args.stall,
            follow_hold: args.follow_hold,
            ..PolicyConfig::default()
        },
        kernel_options: bpf.is_some(),
        kernel_echo_events: bpf.is_some(),
        pair_actions: bpf.is_some(),
        // With the programs, only segments they found plausible reach the
        // engine; through NFQUEUE every one does.
        check_peer_segments: bpf.is_none(),
        ..EngineConfig::default()
    };
    let fast = if bpf.is_some() {
        // The programs rewrite moved connections; a table left by a
        // daemon that did not exit cleanly goes now.
        rules::fast_teardown();
        None
    } else if args.fast_path {
        match rules::fast_setup() {
            Ok(()) => Some(Mutex::new(std::collections::HashMap::new())),
            Err(e) => {
                eprintln!("preservetcpd: no fast path, moved connections stay on NFQUEUE: {e}");
                None
            }
        }
    } else {
        rules::fast_teardown();
        None
    };
    // Subscribe before the first snapshot so no change in between is lost.
    let mut monitor = rtnl::Monitor::new().map_err(|e| format!("rtnetlink: {e}"))?;
    let snap = rtnl::snapshot().map_err(|e| format!("rtnetlink dump: {e}"))?;
    let shared = Arc::new(Shared {
        engine: Mutex::new(Engine::new(config)),
        learn,
        verbose: args.verbose,
        fast,
        rules,
        fallback: rules::Fallback::new(args.fallback_table, args.fallback_pref),
        start: Instant::now(),
        locals: Mutex::new(snap.clone()),
        logged: Mutex::new(std::collections::HashMap::new()),
        bpf: bpf.map(Mutex::new),
        alt_pending: Mutex::new(std::collections::VecDeque::new()),
        alt_budget: Mutex::new((Instant::now(), 0)),
        run_lock: Mutex::new(RunState::default()),
    });
    let offers = {
        let mut eng = shared.engine();
        eng.set_locals(snap.into_iter().map(|l| l.0).collect(), Instant::now());
        offers_of(&eng)
    };
    // Offers and links before the rules mark any SYN for the programs.
    shared.bpf_sync(&shared.run(), offers);

    let mut queue = nfq::Queue::open().map_err(|e| format!("nfqueue: {e}"))?;
    for q in [args.queue, args.queue + 1] {
        queue.bind(q).map_err(|e| format!("bind queue {q}: {e}"))?;
        queue
            .set_queue_max_len(q, 8192)
            .map_err(|e| format!("queue len {q}: {e}"))?;
        // A full queue drops (TCP retransmits) instead of passing packets
        // unmodified, which would reach the kernel on a pair it does not
        // know and make it answer with a RST.
        queue
            .set_fail_open(q, false)
            .map_err(|e| format!("fail-open {q}: {e}"))?;
    }
    // Every queued packet is a message in this socket's receive buffer
    // until its verdict; a full buffer makes the kernel drop the packet
    // (fail-open is off, and nfq sets NETLINK_NO_ENOBUFS, so nothing tells
    // us). The packet thread stops reading while it changes rules for a
    // followed peer (tens of milliseconds): the peer's whole window of
    // segments waits meanwhile, far more than the default 208 KiB hold.
    let rcvbuf = nfqueue_rcvbuf(args.queue, NFQUEUE_RCVBUF)?;
    if args.verbose {
        shared.log(&format!("nfqueue receive buffer {rcvbuf} bytes"));
    }
    let mut diag = sys::Diag::new().map_err(|e| format!("sock_diag: {e}"))?;
    shared.rules.install()?;
    shared.fallback.setup();

    let _ = std::fs::remove_file(&args.control);
    let listener = UnixListener::bind(&args.control)
        .map_err(|e| format!("{}: {e}", args.control.display()))?;
    // Every user may connect (and read: `list`, `stats`); what changes
    // state is checked per request against the sender's uid (`authorize`).
    std::fs::set_permissions(&args.control, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| format!("{}: {e}", args.control.display()))?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let sh = shared.clone();
        let keep = args.keep_rules;
        let control = args.control.clone();
        std::thread::spawn(move || {
            let mut signals = nix::sys::signal::SigSet::empty();
            signals.add(nix::sys::signal::Signal::SIGTERM);
            signals.add(nix::sys::signal::Signal::SIGINT);
            if let Ok(sig) = signals.wait() {
                sh.log(&format!("{sig:?}: exiting"));
            }
            stop.store(true, Ordering::SeqCst);
            // Exclusive: the lock is held until the process ends, so no
            // thread adds a rule, route or program after the clean-up.
            let mut run = sh.run();
            run.shutting_down = true;
            sh.teardown(&run, keep);
            let _ = std::fs::remove_file(control);
            std::process::exit(0);
        });
    }

    {
        let sh = shared.clone();
        std::thread::spawn(move || control_loop(&sh, listener));
    }
    {
        let sh = shared.clone();
        let interval = args.interval;
        std::thread::spawn(move || poll_loop(&sh, &mut diag, interval));
    }
    {
        let sh = shared.clone();
        std::thread::spawn(move || event_loop(&sh, &mut monitor));
    }
    let ring_fds = match &shared.bpf {
        Some(b) => Some(b.lock().unwrap_or_else(|e| e.into_inner()).ring_fds()?),
        None => None,
    };
    if let Some(fds) = ring_fds {
        let sh = shared.clone();
        std::thread::spawn(move || ring_loop(&sh, fds));
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    shared.log(&format!(
        "queues {}/{} ports {:?} control {} handshake {}",
        args.queue,
        args.queue + 1,
        args.ports,
        args.control.display(),
        match &shared.bpf {
            Some(b) => format!(
                "in tc BPF on {}",
                b.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .attached()
                    .join(",")
            ),
            None => "through NFQUEUE".into(),
        }
    ));

    let q_out = args.queue;
    // For the checks of segments on a connection's other pairs
    // (`Engine::inbound_checked`): one lookup per such segment.
    let mut seq_diag = sys::Diag::new().map_err(|e| format!("sock_diag: {e}"))?;
    while !stop.load(Ordering::Relaxed) {
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) => {
                shared.log(&format!("nfqueue recv: {e}"));
                continue;
            }
        };
        let now = Instant::now();
        let run = shared.run();
        let (verdict, actions) = {
            // An outgoing packet only needs what its connection's incoming
            // handshake packets taught (nothing for a SYN: its offer depends
            // on the local addresses only); incoming ones get a full drain.
            let mut eng = if msg.get_queue_num() == q_out {
                if is_pure_syn(msg.get_payload()) {
                    shared.engine()
                } else {
                    shared.engine_for_outbound(msg.get_payload())
                }
            } else {
                shared.engine_drained()
            };
            let v = if msg.get_queue_num() == q_out {
                // Thesis 5.3.8: a SYN+ACK answering an offer first learns
                // how its listening socket is bound.
                if let Some(t) = eng.listener_query(msg.get_payload()) {
                    let bound = listener_binding(t.local, t.local_port);
                    eng.listener_bound(&t, bound);
                }
                eng.outbound(msg.get_payload(), now)
            } else {
                eng.inbound_checked(msg.get_payload(), now, &mut |t| {
                    seq_diag.query(t).ok().flatten().and_then(|s| s.progress)
                })
            };
            (v, eng.take_actions())
        };
        if !actions.is_empty() {
            // A packet that makes a connection follow the peer: change the
            // rules *before* handing it to the kernel, so the kernel's
            // answer to it (typically the ACK) already leaves on the new
            // pair. Done in the background, that ACK would leave on the old
            // pair — lost if that path is dead, and taken by the peer as a
            // move back. This holds up the queue for the few milliseconds
            // the rule changes take, once per switch.
            log_actions(&shared, &actions);
            shared.run_actions(&run, actions);
        }
        drop(run);
        if let Verdict::Replace(p) = verdict {
            msg.set_payload(p);
        }
        msg.set_verdict(nfq::Verdict::Accept);
        if let Err(e) = queue.verdict(msg) {
            shared.log(&format!("nfqueue verdict: {e}"));
        }
    }
    Ok(())
}

/// Whether an IPv6 packet is a TCP SYN without ACK whose TCP header follows
/// the fixed header directly (what the kernel sends before any option is
/// inserted). Anything else, or too short, is `false`.
fn is_pure_syn(p: &[u8]) -> bool {
    p.get(6) == Some(&6) && p.get(53).is_some_and(|f| f & 0x12 == 0x02)
}

/// Receive buffer of the NFQUEUE socket (`SO_RCVBUFFORCE`; the kernel
/// doubles it for bookkeeping): a queued segment costs about 2–5 KiB of it,
/// so this holds a few thousand segments — a full 6 MiB receive window
/// (Linux's default `tcp_rmem` maximum) of a peer whose segments wait
/// while the packet thread changes rules. The queue length limit (8192)
/// is the other bound.
const NFQUEUE_RCVBUF: usize = 16 << 20;

/// Sets the receive buffer of the NFQUEUE socket bound to `queue` and
/// returns the size the kernel reports for it.
///
/// The nfq crate does not expose its socket, so it is found by its netlink
/// port id, which the kernel lists per bound queue in
/// `/proc/self/net/netfilter/nfnetlink_queue`. (Diffing the open file
/// descriptors before and after `Queue::open` does not work: the listing of
/// `/proc/self/fd` itself holds a descriptor, and the queue socket reuses
/// its number.)
fn nfqueue_rcvbuf(queue: u16, bytes: usize) -> Result<usize, String> {
    let table = std::fs::read_to_string("/proc/self/net/netfilter/nfnetlink_queue")
        .map_err(|e| format!("nfnetlink_queue: {e}"))?;
    let portid = nfqueue_portid(&table, queue)
        .ok_or_else(|| format!("queue {queue} not in nfnetlink_queue: {table}"))?;
    // Port ids are per netlink protocol: the rtnetlink sockets may have
    // the same one (the process id, given to the first socket of each
    // protocol), so the socket is found by its inode.
    let netlink = std::fs::read_to_string("/proc/self/net/netlink")
        .map_err(|e| format!("/proc/self/net/netlink: {e}"))?;
    let inode = netlink_inode(&netlink, NETLINK_NETFILTER, portid)
        .ok_or_else(|| format!("no netfilter netlink socket with port id {portid}"))?;
    let fd = open_fds()
        .into_iter()
        .find(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .is_ok_and(|l| l.to_str() == Some(&format!("socket:[{inode}]")))
        })
        .ok_or_else(|| format!("no descriptor for socket inode {inode}"))?;
    // SAFETY: `fd` is the netlink socket the kernel lists as bound to our
    // queue: the nfq socket owned by `queue` in `run`, open for the whole
    // of `run`; the borrow only lasts for these two calls.
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::setsockopt(&b, nix::sys::socket::sockopt::RcvBufForce, &bytes)
        .map_err(|e| format!("nfqueue receive buffer: {e}"))?;
    let got = nix::sys::socket::getsockopt(&b, nix::sys::socket::sockopt::RcvBuf)
        .map_err(|e| format!("nfqueue receive buffer: {e}"))?;
    if got < bytes {
        return Err(format!(
            "nfqueue receive buffer is {got} bytes, wanted {bytes}"
        ));
    }
    Ok(got)
}

/// `NETLINK_NETFILTER`, the protocol of NFQUEUE sockets.
const NETLINK_NETFILTER: u32 = 12;

/// The inode of the netlink socket of `protocol` with `portid` in the text
/// of `/proc/net/netlink` (columns: sk, Eth = protocol, Pid = port id,
/// Groups, Rmem, Wmem, Dump, Locks, Drops, Inode).
fn netlink_inode(table: &str, protocol: u32, portid: u32) -> Option<u64> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let proto: u32 = f.get(1)?.parse().ok()?;
        let pid: u32 = f.get(2)?.parse().ok()?;
        if proto == protocol && pid == portid {
            f.get(9)?.parse().ok()
        } else {
            None
        }
    })
}

/// The peer port id of `queue` in the text of
/// `/proc/net/netfilter/nfnetlink_queue` (columns: queue number, port id,
/// queue total, copy mode, copy range, queue dropped, user dropped, id
/// sequence, 1).
fn nfqueue_portid(table: &str, queue: u16) -> Option<u32> {
    table.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let q: u16 = f.next()?.parse().ok()?;
        (q == queue).then(|| f.next()?.parse().ok())?
    })
}

fn open_fds() -> HashSet<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Reacts to rtnetlink notifications (see `rtnl.rs`).
fn event_loop(sh: &Shared, monitor: &mut rtnl::Monitor) {
    loop {
        match monitor.wait() {
            Ok(ch) if ch.any() => sh.refresh_locals(),
            Ok(_) => {}
            Err(e) => {
                sh.log(&format!("rtnetlink monitor: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                sh.refresh_locals();
            }
        }
    }
}

/// Up to this many tracked connections the sampler asks for each socket
/// by its tuple instead of dumping all (`sys::Diag::query`).
const QUERY_MAX: usize = 16;

/// How often the sampler checks whether the sockets of opted-in tuples
/// exist (without BPF, see `rules::Rules::expire_opt_ins`).
const OPT_IN_CHECK: Duration = Duration::from_secs(1);

/// Samples `tcp_info` of tracked sockets every `interval` (stalls and
/// retransmission timeouts have no kernel notification), forgets
/// connections whose socket is gone and, once per [`OPT_IN_CHECK`],
/// removes the opt-in rules of tuples whose connection is gone.
fn poll_loop(sh: &Shared, diag: &mut sys::Diag, interval: Duration) {
    let mut opt_in_checked = Instant::now();
    loop {
        std::thread::sleep(interval);
        let now = Instant::now();
        // Connections entered less than 0.5 s before the list was taken may
        // not have their (child) socket yet: the server enters a connection
        // when the ACK arrives, before the kernel creates the socket.
        let listed_at = Instant::now()
            .checked_sub(Duration::from_millis(500))
            .unwrap_or(now);
        // Few tracked connections: one exact lookup each; many (e.g. a
        // burst of short connections): one dump.
        let originals = sh.engine().originals();
        let socks = if originals.len() <= QUERY_MAX {
            originals
                .iter()
                .filter_map(|t| match diag.query(t) {
                    Ok(s) => s.map(|s| Ok((*t, s))),
                    Err(e) => Some(Err(e)),
                })
                .collect::<std::io::Result<std::collections::HashMap<_, _>>>()
        } else {
            diag.dump()
        };
        let socks = match socks {
            Ok(s) => Some(s),
            Err(e) => {
                sh.log(&format!("sock_diag: {e}"));
                None
            }
        };
        let opt_ins = if now.saturating_duration_since(opt_in_checked) >= OPT_IN_CHECK {
            opt_in_checked = now;
            opt_in_sockets(sh, diag)
        } else {
            Vec::new()
        };
        let run = sh.run();
        if run.shutting_down {
            continue;
        }
        let actions = {
            let mut eng = sh.engine_drained();
            eng.expire(now);
            if let Some(socks) = &socks {
                for t in eng.originals() {
                    match socks.get(&t) {
                        Some(s) => {
                            if let Some(sample) = s.sample {
                                eng.tcp_info(&s.tuple, sample, now);
                            }
                        }
                        None => eng.socket_gone(&t, listed_at),
                    }
                }
            }
            sh.log_moves(&eng);
            eng.take_actions()
        };
        log_actions(sh, &actions);
        sh.run_actions(&run, actions);
        sh.push_alts(&run, now);
        for (t, r) in sh.rules.expire_opt_ins(&opt_ins, now) {
            match r {
                Ok(()) if sh.verbose => sh.log(&format!("opt-in of {t:?} removed")),
                Ok(()) => {}
                Err(e) => sh.log(&format!("opt-in of {t:?}: {e}")),
            }
        }
        drop(run);
    }
}

/// Whether a socket exists for each tuple opted in by rule (none with
/// BPF); tuples whose lookup failed are left out.
fn opt_in_sockets(sh: &Shared, diag: &mut sys::Diag) -> Vec<(FourTuple, bool)> {
    let tuples = sh.rules.opt_in_tuples();
    if tuples.len() <= QUERY_MAX {
        tuples
            .into_iter()
            .filter_map(|t| match diag.query(&t) {
                Ok(s) => Some((t, s.is_some())),
                Err(e) => {
                    sh.log(&format!("sock_diag: {e}"));
                    None
                }
            })
            .collect()
    } else {
        match diag.dump() {
            Ok(all) => tuples
                .into_iter()
                .map(|t| (t, all.contains_key(&t)))
                .collect(),
            Err(e) => {
                sh.log(&format!("sock_diag: {e}"));
                Vec::new()
            }
        }
    }
}

/// Logs the actions worth a line (not the per-connection bookkeeping
/// unless `--verbose`).
fn log_actions(sh: &Shared, actions: &[Action]) {
    for a in actions {
        if sh.verbose || !matches!(a, Action::Tracked(_) | Action::Untracked(_)) {
            sh.log(&format!("{a:?}"));
        }
    }
}

/// Least time between two reads of the ring buffers by the event thread:
/// under a burst of connections the rings stay readable; this bounds the
/// thread to 200 drains per second (each a batch) while a handshake or a
/// followed peer waits at most 5 ms.
const RING_MIN_GAP: Duration = Duration::from_millis(5);

/// Waits for records in the programs' ring buffers (handshake copies,
/// echo reports, segments on alternative pairs) and feeds them to the
/// engine: connections are entered, and peers followed, within a few
/// milliseconds.
fn ring_loop(sh: &Shared, rings: [std::os::fd::OwnedFd; 2]) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let mut fds = rings
            .each_ref()
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                sh.log(&format!("events ring buffer: {e}"));
                return;
            }
        }
        let run = sh.run();
        let actions = {
            let mut eng = sh.engine_drained();
            sh.log_moves(&eng);
            eng.take_actions()
        };
        log_actions(sh, &actions);
        sh.run_actions(&run, actions);
        drop(run);
        std::thread::sleep(RING_MIN_GAP);
    }
}

/// Most control clients served at once (one thread each); a connection
/// beyond that gets a `busy` error and is closed.
const CONTROL_MAX_CLIENTS: usize = 16;

/// A control client must complete each request line within this time
/// (from its connection or the previous answer) and read each answer
/// within it; otherwise it is disconnected, so an idle or slow client
/// holds its thread (and one of the [`CONTROL_MAX_CLIENTS`]) no longer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request line accepted (bytes, without the newline); a longer
/// one gets an error and the connection is closed.
const CONTROL_MAX_LINE: usize = 64 * 1024;

/// Accepts control clients and serves each on a thread of its own
/// ([`serve_client`]), at most [`CONTROL_MAX_CLIENTS`] at once.
fn control_loop(sh: &Arc<Shared>, listener: UnixListener) {
    let clients = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // E.g. out of file descriptors: do not spin.
                sh.log(&format!("control socket: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let slot = ClientSlot::take(&clients);
        let Some(slot) = slot else {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_response(
                &mut stream,
                &Response::error(format!(
                    "busy: {CONTROL_MAX_CLIENTS} control clients are connected"
                )),
            );
            continue;
        };
        let client_sh = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _slot = slot;
                serve_client(&client_sh, stream);
            });
        if let Err(e) = spawned {
            // (The closure, with the slot and the stream, is dropped.)
            sh.log(&format!("control client thread: {e}"));
        }
    }
}

/// One of the [`CONTROL_MAX_CLIENTS`] places, given back when dropped.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    /// A place, unless all are taken.
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < CONTROL_MAX_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one answer line.
fn write_response(w: &mut impl Write, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(resp).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    w.write_all(out.as_bytes())
}

/// Why no request line was read.
#[derive(Debug)]
enum LineError {
    /// The line grew past [`CONTROL_MAX_LINE`].
    TooLong,
    /// It was not complete within [`CONTROL_TIMEOUT`].
    TimedOut,
    /// The connection failed.
    Io(std::io::Error),
}

/// Reads the next line (without its newline) from `s`, with `buf` holding
/// what was read beyond earlier lines; it must be complete by `deadline`.
/// `Ok(None)` at the end of the stream (an unfinished last line is
/// dropped).
fn read_line(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, LineError> {
    loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = buf.drain(..=i).collect();
            line.pop();
            return Ok(Some(line));
        }
        if buf.len() > CONTROL_MAX_LINE {
            return Err(LineError::TooLong);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::TimedOut);
        }
        s.set_read_timeout(Some(left)).map_err(LineError::Io)?;
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineError::TimedOut);
            }
            Err(e) => return Err(LineError::Io(e)),
        }
    }
}

/// Serves one control client: its requests one line at a time, each
/// checked against the client's uid (`SO_PEERCRED`; unknown: read-only
/// requests only), until it closes the connection, breaks the line limit
/// or the timeout ([`CONTROL_TIMEOUT`]).
fn serve_client(sh: &Shared, mut stream: UnixStream) {
    let uid =
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(c) => Some(c.uid()),
            Err(e) => {
                sh.log(&format!("control client credentials: {e}"));
                None
            }
        };
    if stream.set_write_timeout(Some(CONTROL_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = Vec::new();
    loop {
        let line = match read_line(&mut stream, &mut buf, Instant::now() + CONTROL_TIMEOUT) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(LineError::Io(e)) => {
                sh.log(&format!("control client: {e}"));
                return;
            }
            Err(LineError::TooLong) => {
                let _ = write_response(
                    &mut stream,
                    &Response::error(format!(
                        "request longer than {CONTROL_MAX_LINE} bytes: closing"
                    )),
                );
                return;
            }
            Err(LineError::TimedOut) => {
                let _ = write_response(
                    &mut stream,
                    &Response::error(format!(
                        "no complete request within {} s: closing",
                        CONTROL_TIMEOUT.as_secs()
                    )),
                );
                return;
            }
        };
        let Ok(line) = std::str::from_utf8(&line) else {
            if write_response(&mut stream, &Response::error("bad request: not UTF-8")).is_err() {
                return;
            }
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(line) {
            Ok(req) => match authorize(sh, uid, &req) {
                Ok(()) => handle(sh, req),
                Err(e) => Response::error(e),
            },
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        if write_response(&mut stream, &resp).is_err() {
            return;
        }
    }
}

/// Whether the client with `uid` (`None`: unknown) may make `req`:
/// read-only requests ([`Request::is_read_only`]) everyone; the others
/// root (uid 0), and a `move` also the uid that owns the connection's
/// socket (looked up at request time, [`socket_owner`]; a connection
/// whose socket is not found is root's only). The error starts with
/// [`PERMISSION_DENIED`].
fn authorize(sh: &Shared, uid: Option<u32>, req: &Request) -> Result<(), String> {
    if req.is_read_only() || uid == Some(0) {
        return Ok(());
    }
    let Some(uid) = uid else {
        return Err(format!(
            "{PERMISSION_DENIED}: `{}` needs root, the sender's uid is unknown",
            req.name()
        ));
    };
    if let Request::Move { id, .. } = req {
        let original = sh
            .engine()
            .connections()
            .into_iter()
            .find(|c| c.id == *id)
            .map(|c| c.original);
        return match original.and_then(|t| socket_owner(&t)) {
            Some(owner) if owner == uid => Ok(()),
            Some(_) => Err(format!(
                "{PERMISSION_DENIED}: uid {uid} may not move connection {id}: \
                 it belongs to another user (root or the socket's owner only)"
            )),
            None => Err(format!(
                "{PERMISSION_DENIED}: uid {uid} may not move connection {id}: \
                 its socket's owner is not known (root only)"
            )),
        };
    }
    Err(format!(
        "{PERMISSION_DENIED}: `{}` needs root (uid {uid})",
        req.name()
    ))
}

/// The uid owning the TCP socket with tuple `t` (local = this host) in the
/// daemon's network namespace, from `/proc/self/net/tcp6`; `None` if there
/// is no such socket (or only one in TIME_WAIT, which has no owner).
fn socket_owner(t: &TupleInfo) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/self/net/tcp6").ok()?;
    tcp6_owner(&table, t)
}

/// TCP state `TIME_WAIT` in `/proc/net/tcp6`.
const PROC_TIME_WAIT: &str = "06";
/// TCP state `LISTEN` in `/proc/net/tcp6`.
const PROC_LISTEN: &str = "0A";

/// The address the listening socket that accepts connections to
/// `local`:`port` is bound to: `local` if a listener is bound to exactly
/// it, else `::` (a wildcard listener, or none found: the kernel already
/// answered, so a missing entry means the wildcard).
fn listener_binding(local: std::net::Ipv6Addr, port: u16) -> std::net::Ipv6Addr {
    let table = std::fs::read_to_string("/proc/self/net/tcp6").unwrap_or_default();
    tcp6_listener(&table, local, port)
}

/// [`listener_binding`] on the text of `/proc/net/tcp6`.
fn tcp6_listener(table: &str, local: std::net::Ipv6Addr, port: u16) -> std::net::Ipv6Addr {
    let exact = table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(3) == Some(&PROC_LISTEN)
            && f.get(1).and_then(|a| proc_tcp6_addr(a)) == Some((local, port))
    });
    if exact {
        local
    } else {
        std::net::Ipv6Addr::UNSPECIFIED
    }
}

/// The uid column of the line for `t` in the text of `/proc/net/tcp6`
/// (columns: sl, local address:port, remote address:port, state,
/// tx:rx queue, timer, retransmits, uid, …; see [`proc_tcp6_addr`]).
fn tcp6_owner(table: &str, t: &TupleInfo) -> Option<u32> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local = proc_tcp6_addr(f.get(1)?)?;
        let peer = proc_tcp6_addr(f.get(2)?)?;
        if local != (t.local, t.local_port)
            || peer != (t.peer, t.peer_port)
            || *f.get(3)? == PROC_TIME_WAIT
        {
            return None;
        }
        f.get(7)?.parse().ok()
    })
}

/// An `ADDRESS:PORT` of `/proc/net/tcp6`: the address as four 32-bit
/// words, each printed in hex as the kernel holds it in memory (host byte
/// order), the port in hex.
fn proc_tcp6_addr(s: &str) -> Option<(std::net::Ipv6Addr, u16)> {
    let (a, p) = s.split_once(':')?;
    if a.len() != 32 {
        return None;
    }
    let mut octets = [0u8; 16];
    for (i, word) in octets.chunks_exact_mut(4).enumerate() {
        let w = u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok()?;
        word.copy_from_slice(&w.to_ne_bytes());
    }
    Some((octets.into(), u16::from_str_radix(p, 16).ok()?))
}

/// The engine after a drain, for a read-only request: the actions the
/// drain produced (connections entered, peers followed) are run before
/// returning, like everywhere else the engine is drained.
fn drained_then<T>(sh: &Shared, f: impl FnOnce(&Engine) -> T) -> T {
    let run = sh.run();
    let (v, actions) = {
        let mut eng = sh.engine_drained();
        (f(&eng), eng.take_actions())
    };
    log_actions(sh, &actions);
    sh.run_actions(&run, actions);
    v
}

/// Answers an authorized request ([`authorize`]).
fn handle(sh: &Shared, req: Request) -> Response {
    match req {
        Request::List => Response {
            connections: Some(drained_then(sh, Engine::connections)),
            ..Response::ok()
        },
        Request::Stats => {
            let mut stats = drained_then(sh, |e| e.stats().to_map());
            stats.insert("bpf".into(), u64::from(sh.bpf.is_some()));
            if let Some(b) = &sh.bpf {
                let b = b.lock().unwrap_or_else(|e| e.into_inner());
                stats.extend(b.counters());
                stats.insert("bpf_links".into(), b.attached().len() as u64);
            }
            Response {
                stats: Some(stats),
                ..Response::ok()
            }
        }
        Request::Move { id, local, peer } => {
            let run = sh.run();
            if run.shutting_down {
                return Response::error("shutting down");
            }
            let actions = {
                let mut eng = sh.engine_drained();
                if let Err(e) = eng.move_to(id, AddrPair { local, peer }, Instant::now()) {
                    return Response::error(e);
                }
                eng.take_actions()
            };
            sh.run_actions(&run, actions);
            Response::ok()
        }
        Request::OptIn(t) => {
            let t = FourTuple {
                local: t.local,
                local_port: t.local_port,
                peer: t.peer,
                peer_port: t.peer_port,
            };
            let run = sh.run();
            if run.shutting_down {
                return Response::error("shutting down");
            }
            let r = match &sh.bpf {
                Some(b) => b.lock().unwrap_or_else(|e| e.into_inner()).opt_in(&t),
                None => sh
                    .rules
                    .opt_in(&t, Instant::now())
                    .map_err(|e| e.to_string()),
            };
            drop(run);
            match r {
                Ok(()) => Response::ok(),
                Err(e) => Response::error(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_pure_syn, nfqueue_portid, tcp6_listener};

    #[test]
    fn nfqueue_portid_from_proc() {
        let t = "    7 3520951     0 2 65535     0     0        0  1\n    8 3520951    12 2 65535     3    91      410  1\n";
        assert_eq!(nfqueue_portid(t, 7), Some(3_520_951));
        assert_eq!(nfqueue_portid(t, 8), Some(3_520_951));
        assert_eq!(nfqueue_portid(t, 9), None);
        assert_eq!(nfqueue_portid("", 7), None);
        assert_eq!(nfqueue_portid("    7\n", 7), None, "no port id column");
        assert_eq!(
            nfqueue_portid("x y\n    7 4000000000 0\n", 7),
            Some(4_000_000_000)
        );
    }

    fn pkt(next: u8, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x60;
        p[6] = next;
        p[53] = flags;
        p
    }

    #[test]
    fn netlink_inode_by_protocol_and_port_id() {
        let t = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n\
                 ffff8f0a41b9c800 0   4985       00000551 0        0        0     2        0        71234\n\
                 ffff8f0a41b9d000 12  4985       00000000 0        0        0     2        0        71240\n\
                 ffff8f0a41b9e000 12  -4001      00000000 0        0        0     2        0        71241\n";
        assert_eq!(
            super::netlink_inode(t, 12, 4985),
            Some(71240),
            "not the rtnetlink one"
        );
        assert_eq!(super::netlink_inode(t, 0, 4985), Some(71234));
        assert_eq!(super::netlink_inode(t, 12, 7), None);
        assert_eq!(super::netlink_inode("", 12, 4985), None);
        assert_eq!(
            super::netlink_inode("h\nx 12 4985\n", 12, 4985),
            None,
            "short line"
        );
    }

    /// Lines of a real `/proc/net/tcp6` (x86-64): a listener on
    /// [2001:db8::1]:5001 and both ends of a connection to it (uids
    /// changed to tell them apart), plus one in TIME_WAIT.
    #[cfg(target_endian = "little")]
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: B80D0120000000000000000001000000:1389 00000000000000000000000000000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 45456047 2 000000007c42c4e9 100 0 0 10 0
   1: B80D0120000000000000000001000000:CE4C B80D0120000000000000000001000000:1389 01 00000000:00000000 00:00000000 00000000  1000        0 45456049 2 000000005daeec9f 20 0 0 10 -1
   2: B80D0120000000000000000001000000:1389 B80D0120000000000000000001000000:CE4C 01 00000000:00000000 00:00000000 00000000    65534        0 0 1 0000000008a52563 20 0 0 10 -1
   3: B80D0120000000000000000001000000:1389 B80D0120000000000000000001000000:CE4D 06 00000000:00000000 03:00000E2A 00000000     0        0 0 3 0000000000000000
";

    #[test]
    #[cfg(target_endian = "little")]
    fn listener_binding_from_proc_tcp6() {
        // A listener on [2001:db8::1]:5001 (bound) and one on [::]:5002.
        let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: B80D0120000000000000000001000000:1389 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000000000000000000000000000:138A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        let a: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(tcp6_listener(table, a, 5001), a, "bound listener");
        assert_eq!(
            tcp6_listener(table, a, 5002),
            std::net::Ipv6Addr::UNSPECIFIED,
            "wildcard listener"
        );
        assert_eq!(
            tcp6_listener(table, "2001:db8::2".parse().unwrap(), 5001),
            std::net::Ipv6Addr::UNSPECIFIED,
            "another address"
        );
    }

    #[test]
    fn socket_owner_from_proc_tcp6() {
        let a: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let t = |local_port, peer_port| preservetcp::control::TupleInfo {
            local: a,
            local_port,
            peer: a,
            peer_port,
        };
        assert_eq!(super::tcp6_owner(TCP6, &t(0xce4c, 5001)), Some(1000));
        assert_eq!(super::tcp6_owner(TCP6, &t(5001, 0xce4c)), Some(65534));
        assert_eq!(super::tcp6_owner(TCP6, &t(5001, 0xce4d)), None, "TIME_WAIT");
        assert_eq!(super::tcp6_owner(TCP6, &t(5001, 1)), None, "no such socket");
        assert_eq!(super::tcp6_owner("", &t(0xce4c, 5001)), None);
        assert_eq!(
            super::proc_tcp6_addr("B80D0120000000000000000001000000:1389"),
            Some((a, 5001))
        );
        assert_eq!(
            super::proc_tcp6_addr("00000000000000000000000001000000:0016"),
            Some((std::net::Ipv6Addr::LOCALHOST, 22))
        );
        for bad in [
            "",
            "B80D0120:1389",
            "B80D0120000000000000000001000000",
            "B80D012000000000000000000100000G:1389",
            "B80D0120000000000000000001000000:10000",
            "B80D012000000000000000000100000é:1389",
        ] {
            assert_eq!(super::proc_tcp6_addr(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pure_syn_detection() {
        assert!(is_pure_syn(&pkt(6, 0x02)));
        assert!(!is_pure_syn(&pkt(6, 0x12)), "SYN+ACK");
        assert!(!is_pure_syn(&pkt(6, 0x10)), "ACK");
        assert!(!is_pure_syn(&pkt(60, 0x02)), "behind a dest-opts header");
        assert!(!is_pure_syn(&pkt(6, 0x02)[..53]), "short");
        assert!(!is_pure_syn(&[]));
    }
}
