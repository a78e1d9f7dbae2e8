//! # REAP-style failure detection and path exploration for HIP (sans-IO)
//!
//! A [`Detector`] watches one association: it is told when payload goes
//! out and comes in, when the peer probes us, when our probes are
//! answered and when local addresses disappear; it answers with
//! [`Action`]s (send a keepalive, send a probe, switch to a pair, the hot
//! standby changed) and a deadline. It performs no IO, reads no clock
//! (every call takes the time) and draws its timer jitter from a 64-bit
//! seed given to [`Detector::new`] (SplitMix64), so a run is reproducible.
//!
//! The model is REAP (RFC 5534, Forced Bidirectional Detection) carried
//! over HIP:
//!
//! * **Send timer** ([`Params::send_timeout`]): started by the first
//!   outbound payload after the last inbound one ([`Detector::on_outbound`]),
//!   stopped by any inbound payload or keepalive ([`Detector::on_inbound`],
//!   [`Detector::on_keepalive`]) received at or after that payload. On
//!   expiry the current pair is considered failed.
//! * **Keepalive timer** ([`Params::keepalive_timeout`]): (re)started by
//!   inbound payload, stopped by outbound payload. While it runs and we
//!   send nothing, [`Action::Keepalive`] on the current pair every
//!   [`Params::keepalive_interval`]. A keepalive (an ESP packet with Next
//!   Header 59, see [`crate::crypto::SecurityAssociation::seal_dummy`]) only
//!   stops the peer's send timer; receiving one never starts ours, so two
//!   idle hosts do not keep each other busy.
//! * **Exploration** (state [`ReapState::Exploring`], or
//!   [`ReapState::InboundOk`] once something arrived from the peer): a HIP
//!   probe is `UPDATE(SEQ, ECHO_REQUEST_SIGNED)` answered on the reverse
//!   pair, so an answer proves **both directions** of a pair. Unlike REAP's
//!   one-pair-at-a-time order, every candidate pair (the current one first,
//!   then [`Detector::set_candidates`] order) is probed **at once**
//!   ("shotgun"); rounds are repeated every [`Params::initial_probe_timeout`]
//!   for [`Params::initial_probes`] rounds, then with the interval doubled
//!   per round up to [`Params::max_probe_timeout`], forever, until a pair
//!   answers. A pair whose probe stays unanswered until the next round (or
//!   is reported lost) is listed in [`Detector::unreachable`] until it
//!   answers. After the first answer the detector waits a grace period
//!   `min(initial_probe_timeout, max(2 × that probe's RTT, 10 ms))` for a
//!   better ranked pair, then takes the best answered one (the current pair
//!   ranks first, so a path that merely had a hiccup is kept); an answer of
//!   the best possible pair decides at once. Switching emits
//!   [`Action::Switch`] (reason [`SwitchReason::Failure`]).
//! * **Failure triggers** besides the send timer: a local address went
//!   away and the current pair used it ([`Detector::on_local_failure`]; the
//!   pairs using it are dropped from the candidates and marked
//!   unreachable), negative upper-layer feedback ([`Detector::on_feedback`],
//!   RFC 6316 SHIM_FEEDBACK), the current pair leaving the candidate set,
//!   and an **exploring** peer probe on a pair other than our current one
//!   ([`Detector::on_peer_probe`]: the peer found our common path broken —
//!   REAP's Probe(Exploring) → InboundOk; this is what makes the other side
//!   follow a failover). A peer probe on our current pair is only evidence
//!   of inbound; non-exploring peer probes (hot-standby refreshes, return
//!   probes, address verifications) never trigger anything.
//! * **Exploring marker.** HIP probes carry no REAP state, so our exploring
//!   probes are marked ([`Action::Probe::exploring`]; the engine's
//!   [`Endpoint::probe_exploring`](crate::engine::Endpoint::probe_exploring)
//!   puts a recognisable ECHO_REQUEST_SIGNED on the wire and the peer's
//!   engine reports it in
//!   [`Event::PeerProbed::exploring`](crate::engine::Event::PeerProbed)).
//! * **Anti-ping-pong hold.** An exploring peer probe is ignored for
//!   `send_timeout / 2` after our current pair was proven by an answered
//!   probe: the peer's late exploration rounds, and the probes the peer
//!   sends because *our* exploration made it explore, must not restart an
//!   exploration that has just ended. A real failure is detected by the
//!   peer at least one send timeout after the path was last proven, so the
//!   hold never hides it.
//! * **Hot standby** ([`Params::hot_standby`], RFC 6316 SHIM_HOT_STANDBY):
//!   the best other candidate is probed (non-exploring) every
//!   [`Params::standby_refresh`]; a pair sharing neither address with the
//!   current pair is preferred, pairs listed as unreachable are skipped
//!   when possible. [`Action::StandbyChanged`] reports the verified standby
//!   (or `None` when it stopped answering). On a failure trigger, if the
//!   standby answered within `standby_refresh + initial_probe_timeout`, the
//!   detector switches to it at once ([`SwitchReason::Standby`]) without
//!   exploring; the other pairs are then probed in the background (return
//!   probing below).
//! * **Return to a preferred pair.** While the current pair is not the
//!   first candidate, the more preferred candidates are probed
//!   (non-exploring) starting `initial_probe_timeout` after the switch, the
//!   interval doubling up to `max_probe_timeout`; when one answers (after
//!   the same grace for an even better one) the detector moves back
//!   ([`SwitchReason::Preferred`]).
//! * [`Detector::set_current`] (path changed by other means: preference,
//!   readdress, a forced pair) ends any exploration and gives the new pair a
//!   fresh send timeout.
//! * Positive feedback stops the send timer (the upper layer saw the peer
//!   progress); it has no effect while exploring.
//!
//! ## Timer values and jitter
//!
//! | | RFC 5534 ([`Params::reap_rfc`]) | ours ([`Params::hipd_default`]) | tuned ([`Params::tuned`]) |
//! |---|---|---|---|
//! | Send Timeout | 15 s | **500 ms** | 150 ms |
//! | Keepalive Timeout | 15 s | 500 ms | 150 ms |
//! | Keepalive Interval | 5 s (1/3–1/2) | 100 ms | 40 ms |
//! | Initial probes | 4 | 4 | 4 |
//! | Initial Probe Timeout | 0.5 s | 200 ms | 100 ms |
//! | Max Probe Timeout | 60 s | 60 s | 60 s |
//! | Standby refresh | — | 1 s | 1 s |
//!
//! Our defaults are much shorter than REAP's so that a silent failure of a
//! path carrying traffic is detected after ~0.5 s and switched within 1 s
//! (send timeout + one probe RTT + grace). The Keepalive Timeout should
//! equal the peer's send timeout and the keepalive interval must be well
//! below the smallest send timeout a peer may use (with 100 ms, a peer with
//! a 150 ms send timeout still sees a keepalive in time on a low-RTT
//! path). All durations are clamped to 1 ms ..= 1 day by
//! [`Params::sanitized`].
//!
//! Timer values are randomised by up to [`Params::jitter_pct`] percent
//! (RFC 5534 asks for it against synchronisation), in the direction that
//! never makes detection more eager: the send timeout only grows
//! (`[1, 1 + j]`), the keepalive interval only shrinks (`[1 − j, 1]`),
//! probe round intervals and standby refreshes vary in `[1 − j, 1 + j]`.
//!
//! ## Daemon wiring (one detector per association)
//!
//! | detector | engine / data plane |
//! |---|---|
//! | [`Action::Keepalive`] | [`SecurityAssociation::seal_dummy`](crate::crypto::SecurityAssociation::seal_dummy) on the outbound SA, sent on the pair |
//! | [`Action::Probe`] | [`Endpoint::probe`](crate::engine::Endpoint::probe) / [`Endpoint::probe_exploring`](crate::engine::Endpoint::probe_exploring) (remember engine id → detector id) |
//! | [`Detector::on_probe_reply`] / [`Detector::on_probe_lost`] | `Event::ProbeReply` / `Event::ProbeLost` |
//! | [`Action::Switch`] | [`Endpoint::set_path`](crate::engine::Endpoint::set_path) |
//! | [`Detector::set_current`] | `Event::PathChanged` (a no-op for the detector's own switch) |
//! | [`Detector::on_peer_probe`] | `Event::PeerProbed { src, dst, exploring }` as pair `(dst, src)` |
//! | [`Detector::on_keepalive`] / [`Detector::on_inbound`] | ESP opened with / without [`Opened::dummy`](crate::crypto::esp::Opened::dummy) |
//! | [`Detector::set_candidates`] | local × peer locators of the same family, non-deprecated, in preference order |
//! | [`Detector::on_local_failure`] | link down / address removed / ICMP unreachable |
//! | [`Detector::on_feedback`] | SHIM_FEEDBACK |
//!
//! RFC 6316 knobs: SHIM_APP_TIMEOUT → [`Params::send_timeout`] (RFC 6316
//! digest §9 #5: its text fits no REAP timer exactly; we take it as the
//! local Send Timeout); SHIM_PATHEXPLORE `pe_probenum` →
//! [`Params::initial_probes`], `pe_initprobeto` →
//! [`Params::initial_probe_timeout`], `pe_keepaliveto` →
//! [`Params::keepalive_timeout`], `pe_keepaliveint` →
//! [`Params::keepalive_interval`]; SHIM_HOT_STANDBY →
//! [`Params::hot_standby`]. HIP has no Keepalive Timeout option, so the
//! peer's send timeout is not learnt from the wire: both sides should run
//! the same parameters.
//!
//! ## Driving it
//!
//! ```
//! use std::net::{IpAddr, Ipv6Addr};
//! use std::time::{Duration, Instant};
//! use hip_proto::reap::{Action, Detector, Params, ReapState};
//!
//! let a = |n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
//! let (p1, p2) = ((a(1), a(2)), (a(3), a(4)));
//! let t0 = Instant::now();
//! let mut d = Detector::new(Params::hipd_default(), t0, Some(p1), 7);
//! d.set_candidates(t0, vec![p1, p2]);
//! d.on_outbound(t0); // payload sent, nothing comes back
//! let deadline = d.poll_timeout().unwrap();
//! d.handle_timeout(deadline);
//! assert_eq!(d.state(), ReapState::Exploring);
//! let mut probes = Vec::new();
//! while let Some(act) = d.poll_action() {
//!     if let Action::Probe { id, pair, .. } = act {
//!         probes.push((id, pair));
//!     }
//! }
//! // Only p2 answers: after the grace period the detector switches.
//! let (id, _) = probes.iter().find(|(_, p)| *p == p2).unwrap();
//! d.on_probe_reply(deadline + Duration::from_millis(20), *id);
//! d.handle_timeout(d.poll_timeout().unwrap());
//! assert_eq!(d.current(), Some(p2));
//! assert_eq!(d.state(), ReapState::Operational);
//! ```

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A locator pair: (our address, the peer's address).
pub type Pair = (IpAddr, IpAddr);

/// Probes remembered for matching replies (oldest dropped first).
const MAX_PROBES: usize = 512;
/// Lower bound of the decision grace period.
const MIN_GRACE: Duration = Duration::from_millis(10);
/// Clamp of every configured duration.
const MIN_DURATION: Duration = Duration::from_millis(1);
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Failure detection and exploration parameters (RFC 5534 §7, RFC 6316
/// SHIM_PATHEXPLORE / SHIM_APP_TIMEOUT / SHIM_HOT_STANDBY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Send Timeout: outbound payload with no inbound traffic for this long
    /// means the current pair failed (SHIM_APP_TIMEOUT).
    pub send_timeout: Duration,
    /// Keepalive Timeout: how long after inbound payload we keep sending
    /// keepalives (should equal the peer's send timeout; `pe_keepaliveto`).
    pub keepalive_timeout: Duration,
    /// Keepalive Interval (`pe_keepaliveint`).
    pub keepalive_interval: Duration,
    /// Number of probe rounds at the initial pace (`pe_probenum`); 0 is
    /// treated as 1.
    pub initial_probes: u16,
    /// Initial Probe Timeout: interval of the first rounds
    /// (`pe_initprobeto`).
    pub initial_probe_timeout: Duration,
    /// Cap of the backed-off probe interval.
    pub max_probe_timeout: Duration,
    /// Keep a second pair verified for immediate failover.
    pub hot_standby: bool,
    /// Probe interval of the hot-standby pair.
    pub standby_refresh: Duration,
    /// Timer randomisation in percent (0 = exact timers; capped at 50).
    pub jitter_pct: u8,
}

impl Params {
    /// RFC 5534 defaults: send and keepalive timeout 15 s, keepalive
    /// interval 5 s, 4 initial probes at 0.5 s, max probe timeout 60 s (hot
    /// standby off; refresh 5 s when enabled).
    pub fn reap_rfc() -> Self {
        Params {
            send_timeout: Duration::from_secs(15),
            keepalive_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            initial_probes: 4,
            initial_probe_timeout: Duration::from_millis(500),
            max_probe_timeout: Duration::from_secs(60),
            hot_standby: false,
            standby_refresh: Duration::from_secs(5),
            jitter_pct: 10,
        }
    }

    /// hipd's defaults (see the module docs): send and keepalive timeout
    /// 500 ms, keepalive interval 100 ms, 4 initial probes at 200 ms, max
    /// probe timeout 60 s, standby refresh 1 s, 10 % jitter.
    pub fn hipd_default() -> Self {
        Params {
            send_timeout: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(500),
            keepalive_interval: Duration::from_millis(100),
            initial_probes: 4,
            initial_probe_timeout: Duration::from_millis(200),
            max_probe_timeout: Duration::from_secs(60),
            hot_standby: false,
            standby_refresh: Duration::from_secs(1),
            jitter_pct: 10,
        }
    }

    /// Aggressive values for fast failover benchmarks: send and keepalive
    /// timeout 150 ms, keepalive interval 40 ms, probes every 100 ms.
    pub fn tuned() -> Self {
        Params {
            send_timeout: Duration::from_millis(150),
            keepalive_timeout: Duration::from_millis(150),
            keepalive_interval: Duration::from_millis(40),
            initial_probe_timeout: Duration::from_millis(100),
            ..Self::hipd_default()
        }
    }

    /// The parameters as the detector uses them: durations clamped to
    /// 1 ms ..= 1 day, `max_probe_timeout ≥ initial_probe_timeout`,
    /// `initial_probes ≥ 1`, `jitter_pct ≤ 50`.
    pub fn sanitized(self) -> Self {
        let c = |d: Duration| d.clamp(MIN_DURATION, MAX_DURATION);
        let initial_probe_timeout = c(self.initial_probe_timeout);
        Params {
            send_timeout: c(self.send_timeout),
            keepalive_timeout: c(self.keepalive_timeout),
            keepalive_interval: c(self.keepalive_interval),
            initial_probes: self.initial_probes.max(1),
            initial_probe_timeout,
            max_probe_timeout: c(self.max_probe_timeout).max(initial_probe_timeout),
            hot_standby: self.hot_standby,
            standby_refresh: c(self.standby_refresh),
            jitter_pct: self.jitter_pct.min(50),
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Self::hipd_default()
    }
}

/// REAP state (RFC 5534 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReapState {
    /// The current pair works (or nothing says otherwise).
    Operational,
    /// Exploring: probing pairs, nothing received from the peer since the
    /// exploration started.
    Exploring,
    /// Exploring, and traffic from the peer arrives (the peer → us
    /// direction works somewhere); still waiting for a probe answer.
    InboundOk,
}

/// Why the detector switched pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchReason {
    /// Exploration after a failure found another working pair.
    Failure,
    /// Failover to the verified hot-standby pair, without exploration.
    Standby,
    /// Back to a more preferred pair that answered again.
    Preferred,
}

/// What the daemon must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a keepalive (ESP dummy packet, Next Header 59) on `pair`.
    Keepalive {
        /// The current pair.
        pair: Pair,
    },
    /// Probe `pair` (engine `probe` / `probe_exploring`) and report the
    /// answer with [`Detector::on_probe_reply`] (or the loss with
    /// [`Detector::on_probe_lost`]) under `id`.
    Probe {
        /// Detector-chosen probe id.
        id: u64,
        /// The pair to probe.
        pair: Pair,
        /// An exploration probe (the peer should explore too when it sees
        /// it on a pair it does not use); false for standby and return
        /// probes.
        exploring: bool,
    },
    /// Use `pair` from now on (engine `set_path`).
    Switch {
        /// The new current pair.
        pair: Pair,
        /// Why.
        reason: SwitchReason,
    },
    /// The verified hot-standby pair changed (`None`: no verified standby).
    StandbyChanged {
        /// The standby pair.
        pair: Option<Pair>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Explore,
    Standby,
    Return,
}

#[derive(Debug, Clone)]
struct ProbeRec {
    id: u64,
    pair: Pair,
    sent: Instant,
    kind: ProbeKind,
    answered: bool,
    judged: bool,
}

#[derive(Debug, Clone)]
struct Explore {
    started: Instant,
    round: u32,
    next_round: Instant,
    decide_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Return {
    round_started: Instant,
    next: Instant,
    interval: Duration,
    decide_at: Option<Instant>,
}

/// The per-association failure detector (see the module docs).
#[derive(Debug, Clone)]
pub struct Detector {
    params: Params,
    rng: u64,
    candidates: Vec<Pair>,
    /// Fate-sharing group (e.g. interface index) of local addresses.
    local_groups: Vec<(IpAddr, u32)>,
    current: Option<Pair>,
    state: ReapState,
    first_out: Option<Instant>,
    send_deadline: Option<Instant>,
    last_in: Option<Instant>,
    last_out: Option<Instant>,
    ka_until: Option<Instant>,
    ka_next: Option<Instant>,
    explore: Option<Explore>,
    ret: Option<Return>,
    standby_target: Option<Pair>,
    standby_reported: Option<Pair>,
    standby_next: Option<Instant>,
    probes: VecDeque<ProbeRec>,
    next_id: u64,
    proven: Vec<(Pair, Instant)>,
    current_proven: Option<Instant>,
    unreachable: Vec<Pair>,
    actions: VecDeque<Action>,
    switches: u64,
    explorations: u64,
}

fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

fn uses(p: &Pair, gone: &[IpAddr]) -> bool {
    gone.contains(&p.0) || gone.contains(&p.1)
}

impl Detector {
    /// A detector for an association whose pair in use is `current`
    /// (the candidates start as just that pair). `seed` drives the timer
    /// jitter.
    pub fn new(params: Params, now: Instant, current: Option<Pair>, seed: u64) -> Self {
        let mut d = Detector {
            params: params.sanitized(),
            rng: seed,
            candidates: current.into_iter().collect(),
            local_groups: Vec::new(),
            current,
            state: ReapState::Operational,
            first_out: None,
            send_deadline: None,
            last_in: None,
            last_out: None,
            ka_until: None,
            ka_next: None,
            explore: None,
            ret: None,
            standby_target: None,
            standby_reported: None,
            standby_next: None,
            probes: VecDeque::new(),
            next_id: 1,
            proven: Vec::new(),
            current_proven: None,
            unreachable: Vec::new(),
            actions: VecDeque::new(),
            switches: 0,
            explorations: 0,
        };
        d.update_standby(now);
        d
    }

    // ------------------------------------------------------------ accessors

    /// The parameters in use (sanitized).
    pub fn params(&self) -> &Params {
        &self.params
    }
    /// REAP state.
    pub fn state(&self) -> ReapState {
        self.state
    }
    /// The pair in use.
    pub fn current(&self) -> Option<Pair> {
        self.current
    }
    /// The candidate pairs, in preference order.
    pub fn candidates(&self) -> &[Pair] {
        &self.candidates
    }
    /// The verified hot-standby pair (as last reported by
    /// [`Action::StandbyChanged`]).
    pub fn standby(&self) -> Option<Pair> {
        self.standby_reported
    }
    /// Pairs whose last probe failed (and that have not answered since).
    pub fn unreachable(&self) -> &[Pair] {
        &self.unreachable
    }
    /// Number of switches so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }
    /// Number of explorations started so far.
    pub fn explorations(&self) -> u64 {
        self.explorations
    }
    /// Whether the send timer runs.
    pub fn send_timer_running(&self) -> bool {
        self.send_deadline.is_some()
    }
    /// Whether the keepalive timer runs.
    pub fn keepalive_timer_running(&self) -> bool {
        self.ka_next.is_some()
    }

    // ---------------------------------------------------------------- input

    /// Replaces the parameters. Running timers keep their deadlines; the
    /// new values apply from their next start. Turning hot standby off
    /// reports `StandbyChanged(None)`.
    pub fn set_params(&mut self, now: Instant, params: Params) {
        self.params = params.sanitized();
        self.update_standby(now);
    }

    /// The usable pairs in preference order (the daemon applies locator
    /// lists and preferences). Duplicates are ignored. If the current pair
    /// is not among them the current pair counts as failed.
    pub fn set_candidates(&mut self, now: Instant, pairs: Vec<Pair>) {
        let mut c: Vec<Pair> = Vec::with_capacity(pairs.len());
        for p in pairs {
            if !c.contains(&p) {
                c.push(p);
            }
        }
        let added: Vec<Pair> = c
            .iter()
            .filter(|p| !self.candidates.contains(p))
            .copied()
            .collect();
        if c == self.candidates {
            return;
        }
        self.candidates = c;
        let cands = &self.candidates;
        self.unreachable.retain(|p| cands.contains(p));
        if self.exploring() {
            // New pairs are probed at once; the rounds go on.
            self.send_probes(now, &added, ProbeKind::Explore);
        } else if !self.candidates.is_empty()
            && self.current.is_none_or(|c| !self.candidates.contains(&c))
        {
            self.fail(now);
            return;
        }
        self.ret = None;
        self.update_return(now);
        self.update_standby(now);
    }

    /// Fate-sharing groups of local addresses (the daemon passes interface
    /// indexes): the hot-standby pair is taken from another group than the
    /// current pair's source when one exists, so that one link failure
    /// cannot take both down.
    pub fn set_local_groups(&mut self, now: Instant, groups: Vec<(IpAddr, u32)>) {
        if groups == self.local_groups {
            return;
        }
        self.local_groups = groups;
        self.update_standby(now);
    }

    /// The pair in use changed by other means (preference, readdress, a
    /// forced pair). Ends an exploration; a running send timer restarts.
    pub fn set_current(&mut self, now: Instant, pair: Pair) {
        if self.current == Some(pair) {
            return;
        }
        self.current = Some(pair);
        self.current_proven = None;
        self.explore = None;
        self.state = ReapState::Operational;
        if self.send_deadline.is_some() {
            self.first_out = Some(now);
            let d = self.send_timeout();
            self.send_deadline = Some(after(now, d));
        }
        self.ret = None;
        self.update_return(now);
        self.update_standby(now);
    }

    /// Payload was sent at `at` (the first payload since the last inbound,
    /// at the daemon's tick granularity). Starts the send timer unless it
    /// runs; stops the keepalive timer.
    pub fn on_outbound(&mut self, at: Instant) {
        self.last_out = Some(self.last_out.map_or(at, |o| o.max(at)));
        if self
            .ka_until
            .is_some_and(|_| self.last_in.is_none_or(|i| at >= i))
        {
            self.ka_until = None;
            self.ka_next = None;
        }
        if self.state != ReapState::Operational || self.send_deadline.is_some() {
            return;
        }
        if self.last_in.is_some_and(|i| at < i) {
            return;
        }
        self.first_out = Some(at);
        let d = self.send_timeout();
        self.send_deadline = Some(after(at, d));
    }

    /// Payload arrived at `at` on `pair` (ours, the peer's): stops the send
    /// timer and (re)starts the keepalive timer.
    pub fn on_inbound(&mut self, at: Instant, pair: Pair) {
        self.inbound(at, pair);
        if self.state != ReapState::Operational || self.last_out.is_some_and(|o| o > at) {
            return;
        }
        let until = after(at, self.params.keepalive_timeout);
        self.ka_until = Some(self.ka_until.map_or(until, |u| u.max(until)));
        if self.ka_next.is_none() {
            let iv = self.keepalive_interval();
            self.ka_next = Some(after(at, iv));
        }
    }

    /// A keepalive arrived at `at` on `pair`: stops the send timer only.
    pub fn on_keepalive(&mut self, at: Instant, pair: Pair) {
        self.inbound(at, pair);
    }

    fn inbound(&mut self, at: Instant, _pair: Pair) {
        self.last_in = Some(self.last_in.map_or(at, |i| i.max(at)));
        if self.first_out.is_some_and(|o| at >= o) {
            self.first_out = None;
            self.send_deadline = None;
        }
        if self.state == ReapState::Exploring {
            self.state = ReapState::InboundOk;
        }
    }

    /// The peer probed us on `pair` (our address, the peer's address);
    /// `exploring` when the probe carries the exploring marker. An
    /// exploring probe on a pair other than the current one starts an
    /// exploration (see the module docs for the hold after a proof); on the
    /// current pair it is only evidence of inbound. Non-exploring probes are
    /// ignored.
    pub fn on_peer_probe(&mut self, now: Instant, pair: Pair, exploring: bool) {
        if !exploring {
            return;
        }
        if self.exploring() {
            self.state = ReapState::InboundOk;
            return;
        }
        if self.current == Some(pair) {
            return;
        }
        let hold = self.params.send_timeout / 2;
        if self
            .current_proven
            .is_some_and(|t| now.saturating_duration_since(t) < hold)
        {
            return;
        }
        self.fail(now);
        if self.exploring() {
            self.state = ReapState::InboundOk;
        }
    }

    /// Our probe `id` was answered at `now`: the pair works both ways.
    pub fn on_probe_reply(&mut self, now: Instant, id: u64) {
        let Some(rec) = self.probes.iter_mut().find(|p| p.id == id) else {
            return;
        };
        if rec.answered {
            return;
        }
        rec.answered = true;
        let pair = rec.pair;
        let rtt = now.saturating_duration_since(rec.sent);
        match self.proven.iter_mut().find(|(p, _)| *p == pair) {
            Some(e) => e.1 = e.1.max(now),
            None => self.proven.push((pair, now)),
        }
        self.unreachable.retain(|p| *p != pair);
        if self.current == Some(pair) {
            self.current_proven = Some(now);
        }
        if !self.candidates.contains(&pair) {
            return;
        }
        let grace = self.grace(rtt);
        if self.exploring() {
            if self.rank(pair) == self.best_rank() {
                self.decide_explore(now);
            } else if let Some(e) = self.explore.as_mut()
                && e.decide_at.is_none()
            {
                e.decide_at = Some(after(now, grace));
            }
            return;
        }
        if self.standby_target == Some(pair) && self.standby_reported != Some(pair) {
            self.standby_reported = Some(pair);
            self.actions
                .push_back(Action::StandbyChanged { pair: Some(pair) });
        }
        let better = self.index(pair) < self.current.and_then(|c| self.index(c));
        if self.ret.is_some() && better {
            if self.index(pair) == Some(0) {
                self.decide_return(now);
            } else if let Some(r) = self.ret.as_mut()
                && r.decide_at.is_none()
            {
                r.decide_at = Some(after(now, grace));
            }
        }
    }

    /// Our probe `id` was reported lost (engine `ProbeLost`): its pair is
    /// unreachable until it answers.
    pub fn on_probe_lost(&mut self, now: Instant, id: u64) {
        let Some(rec) = self.probes.iter_mut().find(|p| p.id == id) else {
            return;
        };
        if rec.answered || rec.judged {
            return;
        }
        rec.judged = true;
        let (pair, kind) = (rec.pair, rec.kind);
        self.mark_failed(now, pair, kind);
    }

    /// Local addresses disappeared (link down, address removed, ICMP
    /// unreachable for a local source): pairs using them leave the
    /// candidates and are marked unreachable; if the current pair used one,
    /// failover starts at once.
    pub fn on_local_failure(&mut self, now: Instant, gone: &[IpAddr]) {
        let removed: Vec<Pair> = self
            .candidates
            .iter()
            .filter(|p| uses(p, gone))
            .copied()
            .collect();
        self.candidates.retain(|p| !uses(p, gone));
        for p in removed {
            if !self.unreachable.contains(&p) {
                self.unreachable.push(p);
            }
        }
        if self.current.is_none_or(|c| uses(&c, gone)) {
            if let Some(e) = self.explore.as_mut() {
                e.next_round = e.next_round.min(now);
            } else {
                self.fail(now);
                return;
            }
        }
        self.ret = None;
        self.update_return(now);
        self.update_standby(now);
    }

    /// Upper-layer feedback (RFC 6316 SHIM_FEEDBACK): negative starts
    /// failover at once; positive stops the send timer.
    pub fn on_feedback(&mut self, now: Instant, negative: bool) {
        if self.state != ReapState::Operational {
            return;
        }
        if negative {
            self.fail(now);
        } else {
            self.first_out = None;
            self.send_deadline = None;
        }
    }

    // --------------------------------------------------------------- output

    /// The next action to perform.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next deadline ([`Detector::handle_timeout`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send = if self.state == ReapState::Operational {
            self.send_deadline
        } else {
            None
        };
        let ex = self
            .explore
            .as_ref()
            .map(|e| e.decide_at.map_or(e.next_round, |d| d.min(e.next_round)));
        let ret = self
            .ret
            .as_ref()
            .map(|r| r.decide_at.map_or(r.next, |d| d.min(r.next)));
        [send, self.ka_next, ex, ret, self.standby_next]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Send timer.
        if self.state == ReapState::Operational && self.send_deadline.is_some_and(|d| d <= now) {
            self.send_deadline = None;
            self.first_out = None;
            self.fail(now);
        }
        // Exploration.
        if self
            .explore
            .as_ref()
            .is_some_and(|e| e.decide_at.is_some_and(|d| d <= now))
        {
            self.decide_explore(now);
        }
        if self.explore.as_ref().is_some_and(|e| e.next_round <= now) {
            self.explore_round(now);
        }
        // Return probing.
        if self
            .ret
            .as_ref()
            .is_some_and(|r| r.decide_at.is_some_and(|d| d <= now))
        {
            self.decide_return(now);
        }
        if self.ret.as_ref().is_some_and(|r| r.next <= now) {
            self.return_round(now);
        }
        // Hot standby refresh.
        if self.standby_next.is_some_and(|t| t <= now) {
            self.standby_round(now);
        }
        // Keepalive timer (last: it goes on the pair chosen above).
        if let Some(n) = self.ka_next
            && n <= now
        {
            match (self.state, self.ka_until, self.current) {
                (ReapState::Operational, Some(until), Some(c)) if n <= until => {
                    self.actions.push_back(Action::Keepalive { pair: c });
                    let next = after(now, self.keepalive_interval());
                    self.ka_next = (next <= until).then_some(next);
                    if self.ka_next.is_none() {
                        self.ka_until = None;
                    }
                }
                _ => {
                    self.ka_next = None;
                    self.ka_until = None;
                }
            }
        }
    }

    // ------------------------------------------------------------ internals

    fn exploring(&self) -> bool {
        self.explore.is_some()
    }

    fn rand(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `d` scaled by a random factor in `[1000 + lo, 1000 + hi]` permille.
    fn jitter(&mut self, d: Duration, lo: i64, hi: i64) -> Duration {
        let span = (hi - lo + 1).max(1) as u64;
        let f = 1000 + lo + (self.rand() % span) as i64;
        let ns = d.as_nanos().saturating_mul(f.max(1) as u128) / 1000;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(MIN_DURATION)
    }

    fn j(&self) -> i64 {
        i64::from(self.params.jitter_pct) * 10
    }

    fn send_timeout(&mut self) -> Duration {
        let j = self.j();
        self.jitter(self.params.send_timeout, 0, j)
    }

    fn keepalive_interval(&mut self) -> Duration {
        let j = self.j();
        self.jitter(self.params.keepalive_interval, -j, 0)
    }

    fn around(&mut self, d: Duration) -> Duration {
        let j = self.j();
        self.jitter(d, -j, j)
    }

    fn grace(&self, rtt: Duration) -> Duration {
        self.params
            .initial_probe_timeout
            .min(rtt.saturating_mul(2).max(MIN_GRACE))
    }

    fn index(&self, p: Pair) -> Option<usize> {
        self.candidates.iter().position(|c| *c == p)
    }

    /// Exploration rank: the current pair (if a candidate) first, then the
    /// candidate order.
    fn rank(&self, p: Pair) -> usize {
        if self.current == Some(p) && self.index(p).is_some() {
            return 0;
        }
        self.index(p).map_or(usize::MAX, |i| i + 1)
    }

    fn best_rank(&self) -> usize {
        match self.current {
            Some(c) if self.index(c).is_some() => 0,
            _ => 1,
        }
    }

    fn proven_since(&self, p: Pair, t: Instant) -> bool {
        self.proven.iter().any(|(q, at)| *q == p && *at >= t)
    }

    fn probe_interval(&self, round: u32) -> Duration {
        let n = u32::from(self.params.initial_probes);
        let t = self.params.initial_probe_timeout;
        if round + 1 < n {
            return t;
        }
        let exp = (round + 2 - n).min(32);
        t.saturating_mul(1u32 << exp.min(31))
            .min(self.params.max_probe_timeout)
    }

    fn send_probes(&mut self, now: Instant, pairs: &[Pair], kind: ProbeKind) {
        for &pair in pairs {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            self.probes.push_back(ProbeRec {
                id,
                pair,
                sent: now,
                kind,
                answered: false,
                judged: false,
            });
            while self.probes.len() > MAX_PROBES {
                self.probes.pop_front();
            }
            self.actions.push_back(Action::Probe {
                id,
                pair,
                exploring: kind == ProbeKind::Explore,
            });
        }
    }

    /// Unanswered probes of `kind` sent before `now` failed.
    fn judge(&mut self, now: Instant, kind: ProbeKind) {
        let mut failed = Vec::new();
        for p in self.probes.iter_mut() {
            if p.kind == kind && !p.answered && !p.judged && p.sent < now {
                p.judged = true;
                failed.push(p.pair);
            }
        }
        for pair in failed {
            self.mark_failed(now, pair, kind);
        }
    }

    fn mark_failed(&mut self, now: Instant, pair: Pair, kind: ProbeKind) {
        if !self.unreachable.contains(&pair) {
            self.unreachable.push(pair);
        }
        if kind == ProbeKind::Standby && self.standby_target == Some(pair) {
            if self.standby_reported.is_some() {
                self.standby_reported = None;
                self.actions
                    .push_back(Action::StandbyChanged { pair: None });
            }
            // Pick another standby if one is not known unreachable.
            self.standby_target = None;
            self.update_standby(now);
        }
    }

    /// The current pair failed: switch to a fresh hot standby, else explore.
    fn fail(&mut self, now: Instant) {
        if self.exploring() {
            return;
        }
        self.first_out = None;
        self.send_deadline = None;
        self.ka_next = None;
        self.ka_until = None;
        if let Some(s) = self.standby_reported
            && self.params.hot_standby
            && self.current != Some(s)
            && self.index(s).is_some()
        {
            let fresh = self.params.standby_refresh + self.params.initial_probe_timeout;
            let ok = self
                .proven
                .iter()
                .any(|(p, t)| *p == s && now.saturating_duration_since(*t) <= fresh);
            if ok {
                self.switch(now, s, SwitchReason::Standby);
                return;
            }
        }
        self.explorations += 1;
        self.state = ReapState::Exploring;
        self.ret = None;
        self.explore = Some(Explore {
            started: now,
            round: 0,
            next_round: now,
            decide_at: None,
        });
        self.update_standby(now);
        self.explore_round(now);
    }

    fn explore_round(&mut self, now: Instant) {
        self.judge(now, ProbeKind::Explore);
        let Some(round) = self.explore.as_ref().map(|e| e.round) else {
            return;
        };
        let mut pairs: Vec<Pair> = Vec::with_capacity(self.candidates.len());
        if let Some(c) = self.current
            && self.candidates.contains(&c)
        {
            pairs.push(c);
        }
        pairs.extend(self.candidates.iter().filter(|p| Some(**p) != self.current));
        self.send_probes(now, &pairs, ProbeKind::Explore);
        let iv = self.probe_interval(round);
        let iv = self.around(iv);
        if let Some(e) = self.explore.as_mut() {
            e.round = e.round.saturating_add(1);
            e.next_round = after(now, iv);
        }
    }

    fn decide_explore(&mut self, now: Instant) {
        let Some(started) = self.explore.as_ref().map(|e| e.started) else {
            return;
        };
        let best = self
            .candidates
            .iter()
            .copied()
            .filter(|p| self.proven_since(*p, started))
            .min_by_key(|p| self.rank(*p));
        let Some(best) = best else {
            if let Some(e) = self.explore.as_mut() {
                e.decide_at = None;
            }
            return;
        };
        self.explore = None;
        self.state = ReapState::Operational;
        self.first_out = None;
        self.send_deadline = None;
        if self.current == Some(best) {
            self.current_proven = Some(now);
            self.ret = None;
            self.update_return(now);
            self.update_standby(now);
        } else {
            self.switch(now, best, SwitchReason::Failure);
        }
    }

    fn switch(&mut self, now: Instant, pair: Pair, reason: SwitchReason) {
        self.explore = None;
        self.state = ReapState::Operational;
        self.current = Some(pair);
        self.current_proven = Some(now);
        self.switches += 1;
        self.actions.push_back(Action::Switch { pair, reason });
        if self.standby_reported == Some(pair) {
            self.standby_reported = None;
            self.actions
                .push_back(Action::StandbyChanged { pair: None });
        }
        self.standby_target = None;
        self.ret = None;
        self.update_return(now);
        self.update_standby(now);
    }

    fn update_return(&mut self, now: Instant) {
        let need = self.state == ReapState::Operational
            && self
                .current
                .and_then(|c| self.index(c))
                .is_some_and(|i| i > 0);
        if !need {
            self.ret = None;
            return;
        }
        if self.ret.is_none() {
            let t = self.params.initial_probe_timeout;
            let first = self.around(t);
            self.ret = Some(Return {
                round_started: now,
                next: after(now, first),
                interval: t,
                decide_at: None,
            });
        }
    }

    fn return_round(&mut self, now: Instant) {
        self.judge(now, ProbeKind::Return);
        let Some(ci) = self.current.and_then(|c| self.index(c)) else {
            self.ret = None;
            return;
        };
        let better: Vec<Pair> = self.candidates[..ci].to_vec();
        self.send_probes(now, &better, ProbeKind::Return);
        let Some(interval) = self.ret.as_ref().map(|r| r.interval) else {
            return;
        };
        let next_iv = interval
            .saturating_mul(2)
            .min(self.params.max_probe_timeout);
        let wait = self.around(next_iv);
        if let Some(r) = self.ret.as_mut() {
            r.round_started = now;
            r.interval = next_iv;
            r.next = after(now, wait);
        }
    }

    fn decide_return(&mut self, now: Instant) {
        let Some(r) = self.ret.as_ref() else { return };
        let since = r.round_started;
        let ci = self.current.and_then(|c| self.index(c));
        let best = self
            .candidates
            .iter()
            .enumerate()
            .filter(|(i, p)| Some(*i) < ci && self.proven_since(**p, since))
            .map(|(_, p)| *p)
            .next();
        match best {
            Some(p) => self.switch(now, p, SwitchReason::Preferred),
            None => {
                if let Some(r) = self.ret.as_mut() {
                    r.decide_at = None;
                }
            }
        }
    }

    fn choose_standby(&self) -> Option<Pair> {
        let c = self.current?;
        let others = || self.candidates.iter().copied().filter(move |p| *p != c);
        let usable = |p: &Pair| !self.unreachable.contains(p);
        let group = |a: IpAddr| {
            self.local_groups
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, g)| *g)
        };
        let disjoint = |p: &Pair| p.0 != c.0 && p.1 != c.1;
        let other_link =
            |p: &Pair| group(p.0).is_none() || group(c.0).is_none() || group(p.0) != group(c.0);
        others()
            .find(|p| usable(p) && disjoint(p) && other_link(p))
            .or_else(|| others().find(|p| usable(p) && disjoint(p)))
            .or_else(|| others().find(usable))
            .or_else(|| others().next())
    }

    fn update_standby(&mut self, now: Instant) {
        let target = if self.params.hot_standby && !self.exploring() {
            self.choose_standby()
        } else {
            None
        };
        if target == self.standby_target && (target.is_some() == self.standby_next.is_some()) {
            return;
        }
        self.standby_target = target;
        if self.standby_reported.is_some() && self.standby_reported != target {
            self.standby_reported = None;
            self.actions
                .push_back(Action::StandbyChanged { pair: None });
        }
        self.standby_next = target.map(|_| now);
    }

    fn standby_round(&mut self, now: Instant) {
        self.judge(now, ProbeKind::Standby);
        let Some(t) = self.standby_target else {
            self.standby_next = None;
            return;
        };
        self.send_probes(now, &[t], ProbeKind::Standby);
        let iv = self.around(self.params.standby_refresh);
        self.standby_next = Some(after(now, iv));
    }
}
