//! Failure detection and path exploration per association: the daemon
//! side of [`hip_proto::reap`].
//!
//! One [`Detector`] per live association, driven by the driver thread:
//! * the data plane stamps the first payload sent since the last inbound
//!   packet and the last inbound packet (with the pair it arrived on) in a
//!   per-association [`Liveness`]; every tick (at most
//!   [`TICK`] apart) the driver feeds those stamps to the detector;
//! * detector actions become engine calls (`probe_exploring`/`probe` for
//!   probes, `set_path` for switches) and ESP keepalives (a dummy ESP
//!   packet, Next Header 59, on the association's SA);
//! * engine events feed back: probe answers and losses, the peer probing
//!   us, path changes made by preferences or readdressing;
//! * local signals: addresses that disappear (rtnetlink), ICMP errors
//!   about our packets (IP_RECVERR error queues of the underlay sockets)
//!   and negative `SHIM_FEEDBACK` start exploration at once. A Packet Too
//!   Big (or Fragmentation Needed, `EMSGSIZE`) is not a failure: the
//!   kernel has lowered the destination's path MTU and fragments the ESP
//!   packets that follow, so it is only counted (`icmp_too_big`; lab test
//!   `hipd_packet_too_big_is_a_path_mtu_not_a_failure`); nor is a Time
//!   Exceeded in fragment reassembly (`icmp_fragment_lost`). An error a
//!   send consumed (the socket's pending `sk_err` returned by `sendmsg`)
//!   flags the socket, and the sender (or the socket's receiving thread)
//!   then reads the error queue, so no entry waits for the next one.
//!
//! Parameters: the daemon defaults ([`Params::hipd_default`], changed with
//! `set reap …` in hipd.conf or `hipconf daemon set reap …`), overridden
//! per context by `SHIM_APP_TIMEOUT` / `SHIM_APP_TIMEOUT_MS` (Send
//! Timeout), `SHIM_PATHEXPLORE` (`pe_probenum` → initial probes,
//! `pe_keepaliveto` → Keepalive Timeout, `pe_keepaliveint` → Keepalive
//! Interval, `pe_initprobeto` → Initial Probe Timeout; zero fields keep
//! the default) and `SHIM_HOT_STANDBY`.
//!
//! Candidates (the pairs the detector may probe and switch to), in
//! preference order: every (local, peer) pair of one family allowed by the
//! context's `SHIM_LOCLIST_*`, peer locators not expired; ordered by the
//! application's peer preference, then its local preference, then pairs
//! whose source is the one the kernel picks for the destination (the
//! "matching" pair of a link), then verified before unverified peers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hip_proto::engine::{Event, LocatorState};
use hip_proto::reap::{Action, Detector, Pair, Params, ReapState};
use hip_proto::wire::Hit;

use super::{Core, Shared};
use crate::control::{PathExplore, ReapParam};

/// Longest time between two driver ticks while associations exist.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Packets sent this long before the last inbound one are re-sent too.
const REPAIR_MARGIN_NS: u64 = 20_000_000;
/// Least time between two explorations started by ICMP errors.
const ICMP_HOLD: Duration = Duration::from_millis(500);
/// How often the candidate pairs are recomputed without a trigger.
const CANDIDATE_REFRESH: Duration = Duration::from_secs(1);

/// Sort key of a candidate pair: peer (prio, inverted weight), local
/// (prio, inverted weight), not the kernel's source, other family,
/// unverified.
type RankKey = (u16, u16, u16, u16, u8, u8, u8);

/// Per-association traffic stamps written by the data plane (nanoseconds
/// since the daemon's epoch, 0 = none).
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// First payload sent since the last inbound packet.
    pub tx_mark: AtomicU64,
    /// Last inbound payload.
    pub rx_last: AtomicU64,
    /// Last inbound keepalive.
    pub ka_last: AtomicU64,
    /// The pair (ours, peer's) of the last inbound packet.
    pub rx_pair: Mutex<Option<Pair>>,
    /// The most recent sealed ESP packets, re-sent on the new pair after a
    /// failover ([`REPAIR_SLOTS`]).
    pub recent: Mutex<Recent>,
}

/// Sealed ESP packets kept for repair after a failover.
pub(super) const REPAIR_SLOTS: usize = 256;

/// A ring of the last [`REPAIR_SLOTS`] sealed packets with their send times.
#[derive(Debug, Default)]
pub(super) struct Recent {
    slots: Vec<(u64, Vec<u8>)>,
    next: usize,
}

impl Recent {
    /// Records a sealed packet sent at `ns` (the slot's buffer is reused).
    pub fn push(&mut self, ns: u64, data: &[u8]) {
        if self.slots.len() < REPAIR_SLOTS {
            self.slots.push((ns, data.to_vec()));
        } else if let Some(slot) = self.slots.get_mut(self.next) {
            slot.0 = ns;
            slot.1.clear();
            slot.1.extend_from_slice(data);
        }
        self.next = (self.next + 1) % REPAIR_SLOTS;
    }

    /// The packets sent at or after `since`, oldest first; empties the ring.
    fn take_since(&mut self, since: u64) -> Vec<Vec<u8>> {
        let n = self.slots.len();
        let start = if n < REPAIR_SLOTS { 0 } else { self.next };
        let mut v = Vec::new();
        for k in 0..n {
            if let Some((t, d)) = self.slots.get_mut((start + k) % n.max(1))
                && *t >= since
            {
                v.push(std::mem::take(d));
            }
        }
        self.slots.clear();
        self.next = 0;
        v
    }
}

impl Liveness {
    /// Payload sent at `ns`.
    pub fn sent(&self, ns: u64) {
        let _ = self
            .tx_mark
            .compare_exchange(0, ns, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Payload (or a keepalive) received at `ns` on `pair`.
    pub fn received(&self, ns: u64, pair: Pair, keepalive: bool) {
        if keepalive {
            self.ka_last.store(ns, Ordering::Relaxed);
        } else {
            self.rx_last.store(ns, Ordering::Relaxed);
        }
        self.tx_mark.store(0, Ordering::Relaxed);
        let mut p = self.rx_pair.lock().unwrap_or_else(|p| p.into_inner());
        if *p != Some(pair) {
            *p = Some(pair);
        }
    }
}

/// The detector of one association and its bookkeeping.
#[derive(Debug)]
pub(super) struct Failover {
    det: Detector,
    ep: usize,
    /// Engine probe id → detector probe id.
    probes: HashMap<u64, u64>,
    seen_tx: u64,
    seen_rx: u64,
    seen_ka: u64,
    cands_at: Option<Instant>,
    standby: Option<Pair>,
    /// Last exploration started by an ICMP error (rate limit).
    last_icmp: Option<Instant>,
    /// The base exchange ran over IPv4.
    base_v4: bool,
}

impl Shared {
    pub(super) fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// The parameters in effect for a context.
    pub(super) fn reap_params(&self, core: &Core, local: Hit, peer: Hit) -> Params {
        let mut p = core.reap_defaults;
        if let Some(c) = core.shim.get(&(local, peer)) {
            if c.app_timeout_ms != 0 {
                p.send_timeout = Duration::from_millis(u64::from(c.app_timeout_ms));
            } else if c.app_timeout_secs != 0 {
                p.send_timeout = Duration::from_secs(u64::from(c.app_timeout_secs));
            }
            if let Some(pe) = c.path_explore {
                if pe.probenum != 0 {
                    p.initial_probes = pe.probenum;
                }
                if pe.keepaliveto != 0 {
                    p.keepalive_timeout = Duration::from_secs(u64::from(pe.keepaliveto));
                }
                if pe.keepaliveint != 0 {
                    p.keepalive_interval = Duration::from_secs(u64::from(pe.keepaliveint));
                }
                if pe.initprobeto != 0 {
                    p.initial_probe_timeout = Duration::from_millis(u64::from(pe.initprobeto));
                }
            }
            p.hot_standby = c.hot_standby;
        }
        p.sanitized()
    }

    /// Applies a `set reap` default.
    pub(super) fn set_reap_default(&self, core: &mut Core, param: ReapParam, value: u32) {
        let ms = Duration::from_millis(u64::from(value));
        let d = &mut core.reap_defaults;
        match param {
            ReapParam::SendTimeout => d.send_timeout = ms,
            ReapParam::KeepaliveTimeout => d.keepalive_timeout = ms,
            ReapParam::KeepaliveInterval => d.keepalive_interval = ms,
            ReapParam::ProbeTimeout => d.initial_probe_timeout = ms,
            ReapParam::Probes => d.initial_probes = u16::try_from(value).unwrap_or(u16::MAX),
        }
        *d = d.sanitized();
        let keys: Vec<(Hit, Hit)> = core.failover.keys().copied().collect();
        let now = Instant::now();
        for (l, p) in keys {
            self.reap_params_changed(core, l, p, now);
        }
    }

    /// Local addresses with their interface (the fate-sharing groups of
    /// the hot standby choice).
    fn local_groups(core: &Core, ep: usize, peer: Hit) -> Vec<(IpAddr, u32)> {
        core.eps
            .get(ep)
            .and_then(|e| e.locators(peer))
            .map(|v| v.local.iter().map(|l| (l.addr, l.ifindex)).collect())
            .unwrap_or_default()
    }

    /// The candidate pairs of a context, in preference order.
    fn candidates(&self, core: &Core, ep: usize, local: Hit, peer: Hit) -> Vec<Pair> {
        let Some(view) = core.eps.get(ep).and_then(|e| e.locators(peer)) else {
            return Vec::new();
        };
        let ctx = core.shim.get(&(local, peer)).cloned().unwrap_or_default();
        let allowed = |list: &Option<Vec<crate::control::LocPref>>, a: IpAddr| {
            list.as_ref().is_none_or(|l| l.iter().any(|x| x.addr == a))
        };
        // Prefer the family the base exchange used (stable, so a failover
        // to the other family does not make it the preferred one).
        let cur_v4 = core
            .failover
            .get(&(local, peer))
            .map(|f| f.base_v4)
            .or_else(|| self.ctx_path(local, peer).map(|p| p.1.is_ipv4()));
        let mut v: Vec<(RankKey, Pair)> = Vec::new();
        for p in &view.peer {
            if p.state == LocatorState::Deprecated || !allowed(&ctx.loclist_peer, p.addr) {
                continue;
            }
            let kernel_src = super::net::route_source(p.addr);
            let (pp, pw) = ctx
                .peer_prefs
                .get(&p.addr)
                .copied()
                .unwrap_or((u16::MAX, 0));
            for l in &view.local {
                if l.addr.is_ipv4() != p.addr.is_ipv4() || !allowed(&ctx.loclist_local, l.addr) {
                    continue;
                }
                let (lp, lw) = ctx
                    .local_prefs
                    .get(&l.addr)
                    .copied()
                    .unwrap_or((u16::MAX, 0));
                let matching = u8::from(kernel_src != Some(l.addr));
                let unverified = u8::from(p.state != LocatorState::Active);
                let other_family = u8::from(cur_v4.is_some_and(|v4| v4 != p.addr.is_ipv4()));
                v.push((
                    (
                        pp,
                        u16::MAX - pw,
                        lp,
                        u16::MAX - lw,
                        matching,
                        other_family,
                        unverified,
                    ),
                    (l.addr, p.addr),
                ));
            }
        }
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|x| x.1).collect()
    }

    /// Starts failure detection for a new association.
    pub(super) fn failover_start(
        &self,
        core: &mut Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        pair: Pair,
    ) {
        let now = Instant::now();
        let params = self.reap_params(core, local, peer);
        let seed =
            u64::from_le_bytes(local.as_bytes()[8..16].try_into().unwrap_or([7; 8])) ^ self.ns(now);
        let mut det = Detector::new(params, now, Some(pair), seed);
        det.set_local_groups(now, Self::local_groups(core, ep, peer));
        det.set_candidates(now, self.candidates(core, ep, local, peer));
        core.failover.insert(
            (local, peer),
            Failover {
                det,
                ep,
                probes: HashMap::new(),
                seen_tx: 0,
                seen_rx: 0,
                seen_ka: 0,
                cands_at: Some(now),
                standby: None,
                last_icmp: None,
                base_v4: pair.1.is_ipv4(),
            },
        );
    }

    /// Parameters of a context changed (SOL_SHIM or `set reap`).
    pub(super) fn reap_params_changed(&self, core: &mut Core, local: Hit, peer: Hit, now: Instant) {
        let params = self.reap_params(core, local, peer);
        if let Some(f) = core.failover.get_mut(&(local, peer)) {
            f.det.set_params(now, params);
            f.cands_at = None;
        }
        self.failover_drain(core, local, peer, now);
    }

    /// `SHIM_FEEDBACK`.
    pub(super) fn reap_feedback(
        &self,
        core: &mut Core,
        local: Hit,
        peer: Hit,
        negative: bool,
        now: Instant,
    ) {
        if let Some(f) = core.failover.get_mut(&(local, peer)) {
            f.det.on_feedback(now, negative);
        }
        self.failover_drain(core, local, peer, now);
    }

    /// What the shim API reports: state, standby pair, Send Timeout (ms),
    /// effective SHIM_PATHEXPLORE values (whose keepalive fields are whole
    /// seconds, RFC 6316 5.11) and the keepalive timeout and interval in
    /// milliseconds.
    pub(super) fn reap_report(
        &self,
        core: &Core,
        local: Hit,
        peer: Hit,
        _ctx: &super::shim::ShimCtx,
    ) -> (String, Option<Pair>, u32, PathExplore, (u32, u32)) {
        let p = self.reap_params(core, local, peer);
        let pe = PathExplore {
            probenum: p.initial_probes,
            keepaliveto: whole_secs_up(p.keepalive_timeout),
            keepaliveint: whole_secs_up(p.keepalive_interval),
            initprobeto: u16::try_from(p.initial_probe_timeout.as_millis()).unwrap_or(u16::MAX),
        };
        let ms = u32::try_from(p.send_timeout.as_millis()).unwrap_or(u32::MAX);
        let as_ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let keepalive = (as_ms(p.keepalive_timeout), as_ms(p.keepalive_interval));
        match core.failover.get(&(local, peer)) {
            Some(f) => (
                match f.det.state() {
                    ReapState::Operational => "operational",
                    ReapState::Exploring => "exploring",
                    ReapState::InboundOk => "inbound_ok",
                }
                .into(),
                f.standby,
                ms,
                pe,
                keepalive,
            ),
            None => ("none".into(), None, ms, pe, keepalive),
        }
    }

    /// One driver tick: feeds traffic stamps, runs timers, executes actions.
    pub(super) fn failover_tick(&self, core: &mut Core, now: Instant) {
        let keys: Vec<(Hit, Hit)> = core.failover.keys().copied().collect();
        for (local, peer) in keys {
            let live = {
                let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
                dp.out.get(&(local, peer)).map(|o| o.live.clone())
            };
            let Some(live) = live else { continue };
            let refresh = core
                .failover
                .get(&(local, peer))
                .is_some_and(|f| f.cands_at.is_none_or(|t| now - t >= CANDIDATE_REFRESH));
            let cands = if refresh {
                let ep = core.failover.get(&(local, peer)).map_or(0, |f| f.ep);
                Some((
                    Self::local_groups(core, ep, peer),
                    self.candidates(core, ep, local, peer),
                ))
            } else {
                None
            };
            let rx_pair = *live.rx_pair.lock().unwrap_or_else(|p| p.into_inner());
            let Some(f) = core.failover.get_mut(&(local, peer)) else {
                continue;
            };
            if let Some((g, c)) = cands {
                f.det.set_local_groups(now, g);
                f.det.set_candidates(now, c);
                f.cands_at = Some(now);
            }
            let rx = live.rx_last.load(Ordering::Relaxed);
            let ka = live.ka_last.load(Ordering::Relaxed);
            let tx = live.tx_mark.load(Ordering::Relaxed);
            if let Some(pair) = rx_pair {
                if ka > f.seen_ka {
                    f.seen_ka = ka;
                    f.det.on_keepalive(self.at(ka), pair);
                }
                if rx > f.seen_rx {
                    f.seen_rx = rx;
                    f.det.on_inbound(self.at(rx), pair);
                }
            }
            if tx != 0 && tx != f.seen_tx {
                f.seen_tx = tx;
                f.det.on_outbound(self.at(tx));
            }
            if f.det.poll_timeout().is_some_and(|t| t <= now) {
                f.det.handle_timeout(now);
            }
            self.failover_drain(core, local, peer, now);
        }
    }

    /// The earliest detector deadline.
    pub(super) fn failover_deadline(&self, core: &Core) -> Option<Instant> {
        core.failover
            .values()
            .filter_map(|f| f.det.poll_timeout())
            .min()
    }

    /// Executes the detector's pending actions.
    fn failover_drain(&self, core: &mut Core, local: Hit, peer: Hit, now: Instant) {
        loop {
            let Some(f) = core.failover.get_mut(&(local, peer)) else {
                return;
            };
            let Some(act) = f.det.poll_action() else {
                return;
            };
            let ep = f.ep;
            match act {
                Action::Keepalive { pair } => self.send_keepalive(local, peer, pair),
                Action::Probe {
                    id,
                    pair,
                    exploring,
                } => {
                    let r = if exploring {
                        core.eps[ep].probe_exploring(now, peer, pair.0, pair.1)
                    } else {
                        core.eps[ep].probe(now, peer, pair.0, pair.1)
                    };
                    match r {
                        Ok(eid) => {
                            if let Some(f) = core.failover.get_mut(&(local, peer)) {
                                if f.probes.len() > 4096 {
                                    f.probes.clear();
                                }
                                f.probes.insert(eid, id);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(%peer, ?pair, error = %e, "probe not sent");
                            if let Some(f) = core.failover.get_mut(&(local, peer)) {
                                f.det.on_probe_lost(now, id);
                            }
                        }
                    }
                }
                Action::Switch { pair, reason } => {
                    tracing::info!(%peer, src = %pair.0, dst = %pair.1, ?reason, "failover: switching pair");
                    match core.eps[ep].set_path(now, peer, pair.0, pair.1) {
                        Ok(_) => {
                            if reason != hip_proto::reap::SwitchReason::Preferred {
                                self.repair(local, peer, pair);
                            }
                            let unreachable: Vec<IpAddr> = core
                                .failover
                                .get(&(local, peer))
                                .map(|f| {
                                    let mut u: Vec<IpAddr> = f
                                        .det
                                        .unreachable()
                                        .iter()
                                        .map(|p| p.1)
                                        .filter(|a| {
                                            f.det.candidates().iter().all(|c| {
                                                c.1 != *a || f.det.unreachable().contains(c)
                                            })
                                        })
                                        .collect();
                                    u.dedup();
                                    u
                                })
                                .unwrap_or_default();
                            {
                                let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
                                super::shim::forget_markers_to(&dp, Some(local), peer, |a| {
                                    unreachable.contains(&a)
                                });
                            }
                            let c = core.shim.entry((local, peer)).or_default();
                            c.switches += 1;
                            c.unreachable = unreachable;
                        }
                        Err(e) => tracing::warn!(%peer, error = %e, "failover: set_path failed"),
                    }
                }
                Action::StandbyChanged { pair } => {
                    tracing::debug!(%peer, ?pair, "failover: standby pair");
                    if let Some(f) = core.failover.get_mut(&(local, peer)) {
                        f.standby = pair;
                    }
                }
            }
        }
    }

    /// Engine events the detectors care about (called before the daemon's
    /// own handling of the event).
    pub(super) fn failover_event(&self, core: &mut Core, ep: usize, ev: &Event) {
        let now = Instant::now();
        let find = |core: &Core, peer: Hit| {
            core.failover
                .iter()
                .find(|(k, f)| k.1 == peer && f.ep == ep)
                .map(|(k, _)| *k)
        };
        match ev {
            Event::ProbeReply {
                peer_hit, probe, ..
            } => {
                if let Some(k) = find(core, *peer_hit)
                    && let Some(f) = core.failover.get_mut(&k)
                    && let Some(id) = f.probes.remove(probe)
                {
                    f.det.on_probe_reply(now, id);
                    if f.det.unreachable().is_empty()
                        && let Some(c) = core.shim.get_mut(&k)
                    {
                        c.unreachable.clear();
                    }
                    self.failover_drain(core, k.0, k.1, now);
                }
            }
            Event::ProbeLost {
                peer_hit, probe, ..
            } => {
                if let Some(k) = find(core, *peer_hit)
                    && let Some(f) = core.failover.get_mut(&k)
                    && let Some(id) = f.probes.remove(probe)
                {
                    f.det.on_probe_lost(now, id);
                    self.failover_drain(core, k.0, k.1, now);
                }
            }
            Event::PeerProbed {
                peer_hit,
                src,
                dst,
                exploring,
            } => {
                if let Some(k) = find(core, *peer_hit)
                    && let Some(f) = core.failover.get_mut(&k)
                {
                    f.det.on_peer_probe(now, (*dst, *src), *exploring);
                    self.failover_drain(core, k.0, k.1, now);
                }
            }
            Event::PathChanged { peer_hit, src, dst } => {
                if let Some(k) = find(core, *peer_hit)
                    && let Some(f) = core.failover.get_mut(&k)
                {
                    f.cands_at = None;
                    let exploring = f.det.state() != ReapState::Operational;
                    if !exploring && f.det.current() != Some((*src, *dst)) {
                        f.det.set_current(now, (*src, *dst));
                    }
                }
            }
            Event::PeerLocatorState { peer_hit, .. } => {
                if let Some(k) = find(core, *peer_hit)
                    && let Some(f) = core.failover.get_mut(&k)
                {
                    f.cands_at = None;
                }
            }
            Event::Closed { peer_hit, .. } => {
                if let Some(k) = find(core, *peer_hit) {
                    core.failover.remove(&k);
                }
            }
            _ => {}
        }
    }

    /// An ICMP error (unreachable, prohibited, …) came back for a packet we
    /// sent to `dst`: associations whose current pair uses `dst` explore at
    /// once. ICMP is unauthenticated, so it only starts probing (the
    /// current pair stays if its probe is answered, RFC 5534 §5), at most
    /// once per [`ICMP_HOLD`] per association.
    pub(super) fn icmp_error(&self, dst: IpAddr) {
        super::inc(&self.ctr.icmp_errors);
        let mut core = self.lock_core();
        let now = Instant::now();
        let keys: Vec<(Hit, Hit)> = core
            .failover
            .iter()
            .filter(|(_, f)| f.det.current().is_some_and(|c| c.1 == dst))
            .filter(|(_, f)| f.last_icmp.is_none_or(|t| now - t >= ICMP_HOLD))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(f) = core.failover.get_mut(&k) {
                tracing::info!(peer = %k.1, %dst, "ICMP error: exploring");
                f.last_icmp = Some(now);
                f.det.on_feedback(now, true);
            }
            self.failover_drain(&mut core, k.0, k.1, now);
        }
        self.pump(&mut core);
    }

    /// Local addresses disappeared.
    /// The host's addresses changed (after the engines were told): the
    /// candidate pairs are rebuilt at once, so an exploration started by a
    /// disappeared address already sees the addresses that appeared.
    pub(super) fn failover_local_gone(&self, core: &mut Core, gone: &[IpAddr]) {
        let now = Instant::now();
        let keys: Vec<(Hit, Hit)> = core.failover.keys().copied().collect();
        for (l, p) in keys {
            let ep = core.failover.get(&(l, p)).map_or(0, |f| f.ep);
            let groups = Self::local_groups(core, ep, p);
            let cands = self.candidates(core, ep, l, p);
            if let Some(f) = core.failover.get_mut(&(l, p)) {
                f.det.set_local_groups(now, groups);
                f.det.set_candidates(now, cands);
                f.cands_at = Some(now);
                if !gone.is_empty() {
                    f.det.on_local_failure(now, gone);
                }
            }
            self.failover_drain(core, l, p, now);
        }
    }

    /// After a failover: re-sends on `pair` the sealed ESP packets sent
    /// since shortly before the last inbound packet — the ones the failed
    /// path most likely swallowed. The receiver has not seen their sequence
    /// numbers, so its anti-replay window accepts them (duplicates of
    /// packets that did arrive are dropped by it), and the transport above
    /// gets its data without waiting for its own retransmission timeout.
    fn repair(&self, local: Hit, peer: Hit, pair: Pair) {
        let out = {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.out.get(&(local, peer)).cloned()
        };
        let Some(out) = out else { return };
        let rx = out.live.rx_last.load(Ordering::Relaxed);
        let since = rx.saturating_sub(REPAIR_MARGIN_NS);
        let pkts = out
            .live
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_since(since);
        let udp = out.path.lock().unwrap_or_else(|p| p.into_inner()).udp;
        let path = super::Path {
            src: pair.0,
            dst: pair.1,
            udp,
        };
        let mut n = 0u64;
        for p in &pkts {
            // Credit-based authorization applies to re-sent packets too
            // (the new pair's peer locator may still be UNVERIFIED).
            if self.cba_admit(&out, &path, p.len()) && self.send_sealed(&path, p) {
                n += 1;
            }
        }
        self.ctr.repaired.fetch_add(n, Ordering::Relaxed);
        tracing::info!(%peer, packets = n, "failover: re-sent recent packets on the new pair");
    }

    /// Sends an ESP keepalive (dummy packet) on `pair`.
    fn send_keepalive(&self, local: Hit, peer: Hit, pair: Pair) {
        let out = {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.out.get(&(local, peer)).cloned()
        };
        let Some(out) = out else { return };
        let mut buf = vec![0u8; 256];
        let n = {
            let mut sa = out.sa.lock().unwrap_or_else(|p| p.into_inner());
            match sa.seal_dummy(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "keepalive seal failed");
                    return;
                }
            }
        };
        let udp = out.path.lock().unwrap_or_else(|p| p.into_inner()).udp;
        let path = super::Path {
            src: pair.0,
            dst: pair.1,
            udp,
        };
        let pkt = buf.get(..n).unwrap_or(&[]);
        if self.cba_admit(&out, &path, pkt.len()) && self.send_sealed(&path, pkt) {
            super::inc(&self.ctr.keepalives_tx);
        }
    }
}

/// A duration in whole seconds for the `shim_pathexplore` keepalive
/// fields, rounded up: a sub-second value (e.g. 500 ms) reads as 1, never
/// as 0, which would mean "default" (RFC 6316 §5.11).
fn whole_secs_up(d: Duration) -> u16 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() != 0);
    u16::try_from(s).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_ring_keeps_the_newest_packets_in_order() {
        let mut r = Recent::default();
        for i in 0..(REPAIR_SLOTS as u64 + 10) {
            r.push(i, &i.to_be_bytes());
        }
        let got = r.take_since(0);
        assert_eq!(got.len(), REPAIR_SLOTS);
        assert_eq!(got[0], 10u64.to_be_bytes());
        assert_eq!(
            got[REPAIR_SLOTS - 1],
            (REPAIR_SLOTS as u64 + 9).to_be_bytes()
        );
        // Emptied, and `since` filters by send time.
        assert!(r.take_since(0).is_empty());
        for i in 0..5u64 {
            r.push(i * 10, &[i as u8]);
        }
        assert_eq!(r.take_since(25), vec![vec![3u8], vec![4u8]]);
    }

    #[test]
    fn pathexplore_keepalive_seconds_round_up() {
        let ms = Duration::from_millis;
        assert_eq!(whole_secs_up(ms(0)), 0);
        assert_eq!(whole_secs_up(ms(100)), 1);
        assert_eq!(whole_secs_up(ms(500)), 1);
        assert_eq!(whole_secs_up(ms(1000)), 1);
        assert_eq!(whole_secs_up(ms(1001)), 2);
        assert_eq!(whole_secs_up(ms(3000)), 3);
        assert_eq!(whole_secs_up(Duration::from_secs(1 << 20)), u16::MAX);
    }
}
