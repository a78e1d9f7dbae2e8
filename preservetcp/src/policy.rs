//! The address change policy (thesis 4.3.4, 5.2.5) as a sans-IO state
//! machine, one per connection.
//!
//! Inputs are [`PolicyEvent`]s with the current time; outputs are
//! [`Decision`]s "switch to pair X" and [`ChangePolicy::next_deadline`], the
//! time at which the caller should sample `tcp_info` again.
//!
//! # Rules
//! - **Change the destination, keep the source** on a retransmission timeout,
//!   a stall or a routing error (thesis 5.2.5). Destinations are tried in the
//!   order the peer listed them, starting after the current one, each once
//!   per outage (thesis 4.3.4). When all have been tried the round starts
//!   again (the kernel's own `tcp_retries2` still ends a hopeless
//!   connection); with one peer address only, the source is rotated instead.
//! - **Change the source only when it is gone** (address removed / link
//!   down). The destination is kept. When a usable local address comes back
//!   while the current source is gone, the connection moves to it.
//! - **Follow the peer**: a segment arriving on another of the connection's
//!   pairs — any of them, the original pair included — makes that pair
//!   current at once (thesis 6.3: "changing address in response to peer
//!   address change"), except within [`PolicyConfig::follow_hold`] after
//!   this connection's last switch (see "Late segments" below).
//!
//! # Signals and the 1-second failover target
//! The kernel does not know about alternative addresses, so the daemon reads
//! `tcp_info` of the socket: `tcpi_retransmits` (consecutive RTOs without
//! progress), `tcpi_unacked` and `tcpi_last_ack_recv`.
//! - RTO rule: switch when [`PolicyConfig::rto_threshold`] RTOs (default 1)
//!   concerned segments sent on the current pair. An RTO only counts
//!   against a pair if the segment that timed out went out on it: when the
//!   policy switches while data sent on the old pair is outstanding, the
//!   first RTO after the switch is the old pair's (it sends the first
//!   retransmission over the new pair) and is not counted; when nothing was
//!   outstanding (e.g. after following the peer) the next RTO counts. With
//!   Linux's minimum RTO of 200 ms, the first RTO fires ≈ 0.2 s + RTT after
//!   the loss; the *next* retransmission (≈ 3 × RTO after the loss because of
//!   exponential backoff) then already goes out on the new pair, ≈ 0.6 s on
//!   a LAN. A threshold of 2 would move that to ≈ 1.4 s, missing a ≤ 1.0 s
//!   target, hence the default of 1.
//! - Stall rule (faster, independent of backoff): switch when data is
//!   unacknowledged and no ACK arrived for [`PolicyConfig::stall_timeout`]
//!   (default 300 ms), counted from the later of the last ACK and the
//!   moment data became outstanding (taken as the previous sample's time:
//!   `tcpi_last_ack_recv` also grows while the connection is idle). After a switch it fires again only once the new pair
//!   has been tested for that long: from the first retransmission seen after
//!   the switch if data was outstanding, else from the switch itself. On a
//!   path with a large RTO (say 1 s) this moves the first retransmission onto
//!   the new pair (recovery ≈ 1 s instead of ≈ 3 s). Because the kernel only
//!   retransmits on its own timer, a daemon that wants to go faster must
//!   provoke a retransmission itself (the daemon's concern, not this state
//!   machine's).
//!
//! # Routable sources (a choice of this crate)
//! "Keep the source" assumes any source works with any destination. When
//! each link is its own subnet, a destination is only reachable with the
//! source on the link that routes to it (the peer would otherwise answer to
//! a source behind the failed link). The caller may therefore name, per
//! peer address, the local address that routes to it
//! ([`ChangePolicy::set_route_source`]). When set: a destination change
//! also moves the source to that address, destinations whose routable
//! source is gone are skipped while others remain, and when the source goes
//! away the destination moves to one the new source routes to.
//!
//! # Late segments (a choice of this crate)
//! Right after a switch, segments the peer sent before it noticed (or
//! before its own rewriting rules changed) still arrive on the pair just
//! left. The thesis's kernel follows them back; with both ends following
//! each other that can ping-pong, and a userspace daemon makes the window
//! longer (its packet rewriting rules take milliseconds to change). So a
//! segment on another pair is not followed within
//! [`PolicyConfig::follow_hold`] (default [`DEFAULT_FOLLOW_HOLD`], 500 ms)
//! after this connection's last switch; a peer that really moved keeps
//! sending on its new pair and is followed once the hold has passed. The
//! segments themselves are still delivered (every pair of the connection
//! is rewritten to the original tuple).

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::pairs::AddrPair;

/// Default RTO threshold.
pub const DEFAULT_RTO_THRESHOLD: u32 = 1;
/// Default stall timeout.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_millis(300);
/// Default time after a switch during which segments on other pairs are
/// not followed.
pub const DEFAULT_FOLLOW_HOLD: Duration = Duration::from_millis(500);

/// Tunables of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyConfig {
    /// RTOs since the last switch that trigger a destination change (≥ 1).
    pub rto_threshold: u32,
    /// Unacked data without any ACK for this long triggers a destination
    /// change; `None` disables the stall rule.
    pub stall_timeout: Option<Duration>,
    /// After a switch, segments arriving on other pairs are not followed
    /// for this long (late segments; see the module docs).
    pub follow_hold: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            rto_threshold: DEFAULT_RTO_THRESHOLD,
            stall_timeout: Some(DEFAULT_STALL_TIMEOUT),
            follow_hold: DEFAULT_FOLLOW_HOLD,
        }
    }
}

/// An input to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyEvent {
    /// A `tcp_info` sample of the connection's socket.
    TcpInfo {
        /// `tcpi_retransmits`: consecutive RTOs without progress (0 after progress).
        retransmits: u32,
        /// `tcpi_unacked`: segments sent and not yet acknowledged.
        unacked: u32,
        /// `tcpi_last_ack_recv`: time since the last ACK was received.
        since_last_ack: Duration,
    },
    /// Sending to `peer` failed with no route / unreachable (ENETUNREACH,
    /// EHOSTUNREACH, or an ICMPv6 destination unreachable).
    RoutingError {
        /// The destination that failed.
        peer: Ipv6Addr,
    },
    /// A local address was removed or its link went down.
    LocalGone(Ipv6Addr),
    /// A local address became usable (again).
    LocalBack(Ipv6Addr),
    /// A segment of this connection arrived on `pair` (local = its
    /// destination, peer = its source).
    PeerSegment(AddrPair),
}

/// Why the policy switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The RTO count reached the threshold.
    RetransmissionTimeout,
    /// Unacked data without ACKs for the stall timeout.
    Stall,
    /// Routing error for the current destination.
    RoutingError,
    /// The current source address went away.
    SourceGone,
    /// A usable source came back while the current one was gone.
    SourceBack,
    /// The peer's segments arrived on another pair.
    PeerMoved,
    /// An explicit move ([`ChangePolicy::force`]).
    Requested,
}

/// Output: use `to` as the connection's pair from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The new current pair.
    pub to: AddrPair,
    /// Why.
    pub reason: SwitchReason,
}

/// Per-connection address change state machine.
#[derive(Debug, Clone)]
pub struct ChangePolicy {
    config: PolicyConfig,
    locals: Vec<(Ipv6Addr, bool)>,
    peers: Vec<Ipv6Addr>,
    cur_local: usize,
    cur_peer: usize,
    /// Peers used during the current outage.
    tried: Vec<bool>,
    /// The last switch of the current outage, if any.
    mark: Option<SwitchMark>,
    /// `tcpi_retransmits` of the last sample.
    last_retx: u32,
    /// `tcpi_unacked` of the last sample.
    last_unacked: u32,
    /// When the last ACK was received, while data is outstanding.
    stalled_since: Option<Instant>,
    /// Since when data has been outstanding (the sample before the one that
    /// first showed `unacked > 0`; for the very first sample, the last
    /// ACK), `None` while nothing is.
    outstanding_since: Option<Instant>,
    /// Time of the last `tcp_info` sample.
    last_sample: Option<Instant>,
    switches: u64,
    /// When the last switch happened (for [`PolicyConfig::follow_hold`]).
    last_switch: Option<Instant>,
    /// Per peer index: the index of the local address that routes to it.
    route_source: Vec<Option<usize>>,
}

/// What was true when the policy last switched, to tell which RTOs concern
/// the new pair.
#[derive(Debug, Clone, Copy)]
struct SwitchMark {
    at: Instant,
    /// `tcpi_retransmits` at the switch.
    retx: u32,
    /// Whether data sent on the previous pair was outstanding.
    had_unacked: bool,
    /// When a retransmission after the switch was first seen.
    retx_seen: Option<Instant>,
}

impl SwitchMark {
    /// Since when the new pair is being tested: from the switch if nothing
    /// was outstanding (the next transmission uses the new pair), else from
    /// the first retransmission after the switch.
    fn tested_since(&self) -> Option<Instant> {
        if self.had_unacked {
            self.retx_seen
        } else {
            Some(self.at)
        }
    }

    /// RTO count at which the new pair has failed `threshold` times.
    fn rto_required(&self, threshold: u32) -> u32 {
        self.retx
            .saturating_add(u32::from(self.had_unacked))
            .saturating_add(threshold)
    }
}

impl ChangePolicy {
    /// A policy for a connection with local addresses `locals` and peer
    /// addresses `peers`, each list starting with the original address
    /// (as returned by [`crate::pairs::AddressPairs::locals`]/`peers`).
    /// Returns `None` if either list is empty.
    pub fn new(config: PolicyConfig, locals: &[Ipv6Addr], peers: &[Ipv6Addr]) -> Option<Self> {
        if locals.is_empty() || peers.is_empty() {
            return None;
        }
        let mut tried = vec![false; peers.len()];
        if let Some(t) = tried.first_mut() {
            *t = true;
        }
        Some(Self {
            config: PolicyConfig {
                rto_threshold: config.rto_threshold.max(1),
                ..config
            },
            locals: locals.iter().map(|a| (*a, true)).collect(),
            peers: peers.to_vec(),
            cur_local: 0,
            cur_peer: 0,
            tried,
            mark: None,
            last_retx: 0,
            last_unacked: 0,
            stalled_since: None,
            outstanding_since: None,
            last_sample: None,
            switches: 0,
            last_switch: None,
            route_source: vec![None; peers.len()],
        })
    }

    /// Declares that `local` is the source that routes to `peer` (see the
    /// module docs). Returns `false` if either is not one of the
    /// connection's addresses.
    pub fn set_route_source(&mut self, peer: Ipv6Addr, local: Ipv6Addr) -> bool {
        let Some(li) = self.locals.iter().position(|l| l.0 == local) else {
            return false;
        };
        let Some(pi) = self.peers.iter().position(|p| *p == peer) else {
            return false;
        };
        if let Some(r) = self.route_source.get_mut(pi) {
            *r = Some(li);
        }
        true
    }

    /// Makes `pair` current (an explicit move requested by an
    /// administrator or application); `None` if it is not one of the
    /// connection's pairs.
    pub fn force(&mut self, pair: AddrPair, now: Instant) -> Option<Decision> {
        let li = self.locals.iter().position(|l| l.0 == pair.local)?;
        let pi = self.peers.iter().position(|p| *p == pair.peer)?;
        self.cur_local = li;
        self.cur_peer = pi;
        self.reset_tried();
        self.decide(SwitchReason::Requested, now)
    }

    /// Whether the routable source of peer `i` (if declared) is usable.
    fn peer_reachable(&self, i: usize) -> bool {
        match self.route_source.get(i).copied().flatten() {
            Some(li) => self.local_usable(li),
            None => true,
        }
    }

    /// When the policy last switched pairs (the follow hold runs from
    /// there).
    pub fn last_switch(&self) -> Option<Instant> {
        self.last_switch
    }

    /// The current pair.
    pub fn current(&self) -> AddrPair {
        AddrPair {
            local: self
                .locals
                .get(self.cur_local)
                .map_or(Ipv6Addr::UNSPECIFIED, |l| l.0),
            peer: self
                .peers
                .get(self.cur_peer)
                .copied()
                .unwrap_or(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// Number of switches decided so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The earliest time the stall rule could fire, so the caller samples
    /// `tcp_info` then (`None` when nothing is outstanding, the rule is off,
    /// or the new pair still awaits the kernel's next retransmission; the
    /// caller keeps sampling at its regular interval in any case).
    pub fn next_deadline(&self) -> Option<Instant> {
        let stall = self.config.stall_timeout?;
        let at = self.stalled_since?.checked_add(stall)?;
        match self.mark {
            None => Some(at),
            Some(m) => Some(at.max(m.tested_since()?.checked_add(stall)?)),
        }
    }

    /// Feeds one event; returns a decision when the pair changes.
    pub fn handle(&mut self, event: PolicyEvent, now: Instant) -> Option<Decision> {
        match event {
            PolicyEvent::TcpInfo {
                retransmits,
                unacked,
                since_last_ack,
            } => self.on_tcp_info(retransmits, unacked, since_last_ack, now),
            PolicyEvent::RoutingError { peer } => {
                if peer == self.current().peer {
                    self.switch_destination(SwitchReason::RoutingError, now)
                } else {
                    None
                }
            }
            PolicyEvent::LocalGone(addr) => self.on_local_gone(addr, now),
            PolicyEvent::LocalBack(addr) => self.on_local_back(addr, now),
            PolicyEvent::PeerSegment(pair) => self.on_peer_segment(pair, now),
        }
    }

    fn on_tcp_info(
        &mut self,
        retransmits: u32,
        unacked: u32,
        since_last_ack: Duration,
        now: Instant,
    ) -> Option<Decision> {
        let stall = self.config.stall_timeout;
        // `tcpi_last_ack_recv` keeps growing while the connection is idle:
        // a stall is measured from the later of the last ACK and the moment
        // data became outstanding (at the latest: the previous sample), or
        // the first write after an idle period would look like a stall.
        if unacked == 0 {
            self.outstanding_since = None;
        } else if self.outstanding_since.is_none() {
            // Without an earlier sample, trust the kernel's figure.
            self.outstanding_since = Some(
                self.last_sample
                    .unwrap_or_else(|| now.checked_sub(since_last_ack).unwrap_or(now)),
            );
        }
        self.last_sample = Some(now);
        let since_last_ack = match self.outstanding_since {
            Some(o) => since_last_ack.min(now.saturating_duration_since(o)),
            None => since_last_ack,
        };
        // The kernel resets its counter when an ACK advances: the path works.
        let progressed = retransmits < self.last_retx;
        let healthy =
            retransmits == 0 && (unacked == 0 || stall.is_none_or(|s| since_last_ack < s));
        if progressed || healthy {
            self.end_outage();
        }
        self.last_retx = retransmits;
        self.last_unacked = unacked;
        self.stalled_since = if unacked > 0 {
            now.checked_sub(since_last_ack)
        } else {
            None
        };
        if let Some(m) = self.mark.as_mut()
            && retransmits > m.retx
            && m.retx_seen.is_none()
        {
            m.retx_seen = Some(now);
        }
        let threshold = self.config.rto_threshold;
        let required = self.mark.map_or(threshold, |m| m.rto_required(threshold));
        if retransmits >= required {
            return self.switch_destination(SwitchReason::RetransmissionTimeout, now);
        }
        if let Some(s) = stall
            && unacked > 0
            && since_last_ack >= s
            && self.mark.is_none_or(|m| {
                m.tested_since()
                    .is_some_and(|t| now.saturating_duration_since(t) >= s)
            })
        {
            return self.switch_destination(SwitchReason::Stall, now);
        }
        None
    }

    /// The current pair works: forget the outage.
    fn end_outage(&mut self) {
        self.mark = None;
        self.reset_tried();
    }

    fn reset_tried(&mut self) {
        self.tried.iter_mut().for_each(|t| *t = false);
        if let Some(t) = self.tried.get_mut(self.cur_peer) {
            *t = true;
        }
    }

    fn local_usable(&self, i: usize) -> bool {
        self.locals.get(i).is_some_and(|l| l.1)
    }

    fn next_usable_local(&self) -> Option<usize> {
        let n = self.locals.len();
        (1..=n)
            .map(|k| (self.cur_local + k) % n)
            .find(|&i| i != self.cur_local && self.local_usable(i))
    }

    fn decide(&mut self, reason: SwitchReason, now: Instant) -> Option<Decision> {
        self.switches += 1;
        self.last_switch = Some(now);
        self.mark = Some(SwitchMark {
            at: now,
            retx: self.last_retx,
            had_unacked: self.last_unacked > 0,
            retx_seen: None,
        });
        Some(Decision {
            to: self.current(),
            reason,
        })
    }

    fn switch_destination(&mut self, reason: SwitchReason, now: Instant) -> Option<Decision> {
        let n = self.peers.len();
        if n > 1 {
            let untried = |me: &Self, reachable: bool| {
                (1..n).map(|k| (me.cur_peer + k) % n).find(|&i| {
                    !me.tried.get(i).copied().unwrap_or(true)
                        && (!reachable || me.peer_reachable(i))
                })
            };
            let any_other_reachable = (1..n).any(|k| self.peer_reachable((self.cur_peer + k) % n));
            let mut next = untried(self, true);
            if next.is_none() && any_other_reachable {
                // Every reachable destination was tried in this outage: new round.
                self.reset_tried();
                next = untried(self, true);
            }
            if next.is_none() {
                if self.peer_reachable(self.cur_peer) {
                    // The current destination is the only reachable one: stay.
                    return None;
                }
                // Nothing is known to be reachable: plain rotation.
                next = untried(self, false).or(Some((self.cur_peer + 1) % n));
            }
            let next = next?;
            self.cur_peer = next;
            if let Some(t) = self.tried.get_mut(next) {
                *t = true;
            }
            match self.route_source.get(next).copied().flatten() {
                Some(li) if self.local_usable(li) => self.cur_local = li,
                _ => {
                    if !self.local_usable(self.cur_local)
                        && let Some(l) = self.next_usable_local()
                    {
                        self.cur_local = l;
                    }
                }
            }
            return self.decide(reason, now);
        }
        // A single peer address: the source is the only thing left to vary.
        let l = self.next_usable_local()?;
        self.cur_local = l;
        self.decide(reason, now)
    }

    fn on_local_gone(&mut self, addr: Ipv6Addr, now: Instant) -> Option<Decision> {
        let i = self.locals.iter().position(|l| l.0 == addr)?;
        if let Some(l) = self.locals.get_mut(i) {
            l.1 = false;
        }
        if i != self.cur_local {
            return None;
        }
        let l = self.next_usable_local()?;
        self.cur_local = l;
        // The destination stays unless the new source cannot reach it.
        let routed = |pi: usize| self.route_source.get(pi).copied().flatten();
        if let Some(r) = routed(self.cur_peer)
            && r != l
            && let Some(pi) = (0..self.peers.len()).find(|&pi| routed(pi) == Some(l))
        {
            self.cur_peer = pi;
            self.reset_tried();
        }
        self.decide(SwitchReason::SourceGone, now)
    }

    fn on_local_back(&mut self, addr: Ipv6Addr, now: Instant) -> Option<Decision> {
        let i = self.locals.iter().position(|l| l.0 == addr)?;
        if let Some(l) = self.locals.get_mut(i) {
            l.1 = true;
        }
        if i == self.cur_local || self.local_usable(self.cur_local) {
            return None;
        }
        self.cur_local = i;
        self.decide(SwitchReason::SourceBack, now)
    }

    fn on_peer_segment(&mut self, pair: AddrPair, now: Instant) -> Option<Decision> {
        if pair == self.current() {
            return None;
        }
        if let Some(at) = self.last_switch
            && now.saturating_duration_since(at) < self.config.follow_hold
        {
            return None;
        }
        let li = self.locals.iter().position(|l| l.0 == pair.local)?;
        let pi = self.peers.iter().position(|p| *p == pair.peer)?;
        if !self.local_usable(li) {
            return None;
        }
        self.cur_local = li;
        self.cur_peer = pi;
        self.reset_tried();
        self.decide(SwitchReason::PeerMoved, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    const MS: Duration = Duration::from_millis(1);

    fn info(retransmits: u32, unacked: u32, since_ms: u64) -> PolicyEvent {
        PolicyEvent::TcpInfo {
            retransmits,
            unacked,
            since_last_ack: MS * since_ms as u32,
        }
    }

    /// Client and server of the thesis's section 6.3.
    fn client() -> ChangePolicy {
        ChangePolicy::new(
            PolicyConfig {
                stall_timeout: None,
                ..PolicyConfig::default()
            },
            &[
                a("3ffe:2a00:100:3100::f00d:cafe"),
                a("3ffe:2a00:100:3200::f00d:cafe"),
            ],
            &[
                a("3ffe:2a00:100:3100::dead:beef"),
                a("3ffe:2a00:100:3200::dead:beef"),
            ],
        )
        .unwrap()
    }

    #[test]
    fn thesis_demo_sequence() {
        let t0 = Instant::now();
        let mut c = client();
        let mut s = ChangePolicy::new(
            PolicyConfig {
                stall_timeout: None,
                ..PolicyConfig::default()
            },
            &[
                a("3ffe:2a00:100:3100::dead:beef"),
                a("3ffe:2a00:100:3200::dead:beef"),
            ],
            &[
                a("3ffe:2a00:100:3100::f00d:cafe"),
                a("3ffe:2a00:100:3200::f00d:cafe"),
            ],
        )
        .unwrap();
        // Healthy traffic: nothing happens.
        assert_eq!(c.handle(info(0, 1, 10), t0), None);
        // Cable pulled; the client's RTO fires: destination changes, source kept.
        let d = c.handle(info(1, 1, 400), t0 + 400 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::RetransmissionTimeout);
        assert_eq!(
            d.to,
            AddrPair {
                local: a("3ffe:2a00:100:3100::f00d:cafe"),
                peer: a("3ffe:2a00:100:3200::dead:beef")
            }
        );
        // The server sees the client's segment on another pair and follows.
        let seen = AddrPair {
            local: a("3ffe:2a00:100:3200::dead:beef"),
            peer: a("3ffe:2a00:100:3100::f00d:cafe"),
        };
        let d = s
            .handle(PolicyEvent::PeerSegment(seen), t0 + 500 * MS)
            .unwrap();
        assert_eq!((d.to, d.reason), (seen, SwitchReason::PeerMoved));
        // Its replies still go to the dead client address: RTO, change destination.
        let d = s.handle(info(1, 1, 400), t0 + 900 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::RetransmissionTimeout);
        let server_final = AddrPair {
            local: a("3ffe:2a00:100:3200::dead:beef"),
            peer: a("3ffe:2a00:100:3200::f00d:cafe"),
        };
        assert_eq!(d.to, server_final);
        // The client sees the server on the other pair and follows.
        let client_final = AddrPair {
            local: a("3ffe:2a00:100:3200::f00d:cafe"),
            peer: a("3ffe:2a00:100:3200::dead:beef"),
        };
        let d = c
            .handle(PolicyEvent::PeerSegment(client_final), t0 + 1000 * MS)
            .unwrap();
        assert_eq!((d.to, d.reason), (client_final, SwitchReason::PeerMoved));
        // Four address changes in all, as in the thesis.
        assert_eq!(c.switches() + s.switches(), 4);
        // Segments on the current pair change nothing.
        assert_eq!(c.handle(PolicyEvent::PeerSegment(client_final), t0), None);
    }

    #[test]
    fn rto_threshold_counts_since_last_switch() {
        let t0 = Instant::now();
        let mut p = ChangePolicy::new(
            PolicyConfig {
                rto_threshold: 2,
                stall_timeout: None,
                ..PolicyConfig::default()
            },
            &[a("2001:db8::1")],
            &[a("2001:db8:1::2"), a("2001:db8:2::2"), a("2001:db8:3::2")],
        )
        .unwrap();
        assert_eq!(p.handle(info(1, 1, 300), t0), None);
        let d = p.handle(info(2, 1, 900), t0).unwrap();
        assert_eq!(d.to.peer, a("2001:db8:2::2"));
        assert_eq!(d.to.local, a("2001:db8::1"));
        // RTO 3 concerns the retransmission sent on the old pair; RTOs 4 and
        // 5 are the new pair's two failures.
        assert_eq!(p.handle(info(3, 1, 2000), t0), None);
        assert_eq!(p.handle(info(4, 1, 4000), t0), None);
        let d = p.handle(info(5, 1, 8000), t0).unwrap();
        assert_eq!(d.to.peer, a("2001:db8:3::2"));
        // All tried: a new round starts at the next (the original).
        assert_eq!(p.handle(info(7, 1, 9000), t0), None);
        let d = p.handle(info(8, 1, 9000), t0).unwrap();
        assert_eq!(d.to.peer, a("2001:db8:1::2"));
        // Progress (the kernel's counter drops) ends the outage.
        assert_eq!(p.handle(info(0, 0, 0), t0), None);
        assert_eq!(p.handle(info(1, 1, 300), t0), None);
        let d = p.handle(info(2, 1, 900), t0).unwrap();
        assert_eq!(d.to.peer, a("2001:db8:2::2"));
    }

    #[test]
    fn first_rto_after_switch_with_outstanding_data_is_not_counted() {
        let t0 = Instant::now();
        let mut c = client();
        let d = c.handle(info(1, 1, 400), t0).unwrap();
        assert_eq!(d.to.peer, a("3ffe:2a00:100:3200::dead:beef"));
        // RTO 2: the retransmission sent at RTO 1 on the old pair timed out;
        // the one sent now is the first over the new pair.
        assert_eq!(c.handle(info(2, 1, 1200), t0), None);
        // RTO 3: the new pair failed too; back to the original destination.
        let d = c.handle(info(3, 1, 2800), t0).unwrap();
        assert_eq!(d.to.peer, a("3ffe:2a00:100:3100::dead:beef"));
        assert_eq!(d.to.local, a("3ffe:2a00:100:3100::f00d:cafe"));
    }

    #[test]
    fn stall_rule_and_deadline() {
        let t0 = Instant::now();
        let mut p = ChangePolicy::new(
            PolicyConfig::default(),
            &[a("2001:db8::1")],
            &[a("2001:db8:1::2"), a("2001:db8:2::2")],
        )
        .unwrap();
        // Data outstanding, last ACK 100 ms ago: deadline at ack + 300 ms.
        assert_eq!(p.handle(info(0, 3, 100), t0 + 100 * MS), None);
        assert_eq!(p.next_deadline(), Some(t0 + 300 * MS));
        // At the deadline, still no ACK: switch before any RTO.
        let d = p.handle(info(0, 3, 300), t0 + 300 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::Stall);
        assert_eq!(d.to.peer, a("2001:db8:2::2"));
        // The new pair is untested until the kernel retransmits.
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.handle(info(0, 3, 400), t0 + 400 * MS), None);
        // RTO 1 sends the first retransmission over the new pair: not counted,
        // and the stall clock for the new pair starts now.
        assert_eq!(p.handle(info(1, 3, 500), t0 + 500 * MS), None);
        assert_eq!(p.next_deadline(), Some(t0 + 800 * MS));
        assert_eq!(p.handle(info(1, 3, 700), t0 + 700 * MS), None);
        let d = p.handle(info(1, 3, 800), t0 + 800 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::Stall);
        assert_eq!(d.to.peer, a("2001:db8:1::2"), "new round");
        // After this stall switch, RTO 2 is again the old pair's; RTO 3 counts.
        assert_eq!(p.handle(info(2, 3, 900), t0 + 900 * MS), None);
        let d = p.handle(info(3, 3, 1000), t0 + 1000 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::RetransmissionTimeout);
        assert_eq!(d.to.peer, a("2001:db8:2::2"));
        // An ACK ends the outage: no more deadline, no more switches.
        assert_eq!(p.handle(info(0, 0, 5), t0 + 1100 * MS), None);
        assert_eq!(p.next_deadline(), None);
        assert_eq!(p.switches(), 3);
    }

    #[test]
    fn routing_error_changes_destination_only_for_current() {
        let t0 = Instant::now();
        let mut c = client();
        assert_eq!(
            c.handle(
                PolicyEvent::RoutingError {
                    peer: a("3ffe:2a00:100:3200::dead:beef")
                },
                t0
            ),
            None,
            "error for a destination not in use"
        );
        let d = c
            .handle(
                PolicyEvent::RoutingError {
                    peer: a("3ffe:2a00:100:3100::dead:beef"),
                },
                t0,
            )
            .unwrap();
        assert_eq!(d.reason, SwitchReason::RoutingError);
        assert_eq!(d.to.peer, a("3ffe:2a00:100:3200::dead:beef"));
        assert_eq!(d.to.local, a("3ffe:2a00:100:3100::f00d:cafe"));
    }

    #[test]
    fn source_changes_only_when_gone() {
        let t0 = Instant::now();
        let mut c = client();
        // Removing a non-current local changes nothing.
        assert_eq!(
            c.handle(
                PolicyEvent::LocalGone(a("3ffe:2a00:100:3200::f00d:cafe")),
                t0
            ),
            None
        );
        assert_eq!(
            c.handle(
                PolicyEvent::LocalBack(a("3ffe:2a00:100:3200::f00d:cafe")),
                t0
            ),
            None
        );
        let d = c
            .handle(
                PolicyEvent::LocalGone(a("3ffe:2a00:100:3100::f00d:cafe")),
                t0,
            )
            .unwrap();
        assert_eq!(d.reason, SwitchReason::SourceGone);
        assert_eq!(
            d.to,
            AddrPair {
                local: a("3ffe:2a00:100:3200::f00d:cafe"),
                peer: a("3ffe:2a00:100:3100::dead:beef"),
            },
            "destination kept"
        );
        // The peer cannot pull us back onto a gone source.
        assert_eq!(
            c.handle(
                PolicyEvent::PeerSegment(AddrPair {
                    local: a("3ffe:2a00:100:3100::f00d:cafe"),
                    peer: a("3ffe:2a00:100:3100::dead:beef"),
                }),
                t0
            ),
            None
        );
        // Both gone: nothing to switch to; the first coming back is used.
        assert_eq!(
            c.handle(
                PolicyEvent::LocalGone(a("3ffe:2a00:100:3200::f00d:cafe")),
                t0
            ),
            None
        );
        let d = c
            .handle(
                PolicyEvent::LocalBack(a("3ffe:2a00:100:3100::f00d:cafe")),
                t0,
            )
            .unwrap();
        assert_eq!(d.reason, SwitchReason::SourceBack);
        assert_eq!(d.to.local, a("3ffe:2a00:100:3100::f00d:cafe"));
        // Unknown addresses and pairs are ignored.
        assert_eq!(c.handle(PolicyEvent::LocalGone(a("2001:db8::9")), t0), None);
        assert_eq!(
            c.handle(
                PolicyEvent::PeerSegment(AddrPair {
                    local: a("3ffe:2a00:100:3100::f00d:cafe"),
                    peer: a("2001:db8::9"),
                }),
                t0
            ),
            None
        );
    }

    #[test]
    fn single_peer_rotates_source() {
        let t0 = Instant::now();
        let mut p = ChangePolicy::new(
            PolicyConfig::default(),
            &[a("2001:db8:1::1"), a("2001:db8:2::1")],
            &[a("2001:db8:9::2")],
        )
        .unwrap();
        let d = p.handle(info(1, 1, 400), t0).unwrap();
        assert_eq!(d.to.local, a("2001:db8:2::1"));
        assert_eq!(d.to.peer, a("2001:db8:9::2"));
        // Nothing at all to vary: no decision.
        let mut q = ChangePolicy::new(
            PolicyConfig::default(),
            &[a("2001:db8:1::1")],
            &[a("2001:db8:9::2")],
        )
        .unwrap();
        assert_eq!(q.handle(info(1, 1, 400), t0), None);
        assert!(ChangePolicy::new(PolicyConfig::default(), &[], &[a("2001:db8:9::2")]).is_none());
    }

    #[test]
    fn route_sources_keep_pairs_routable() {
        let t0 = Instant::now();
        let (c1, c2) = (a("2001:db8:1::1"), a("2001:db8:2::1"));
        let (s1, s2) = (a("2001:db8:1::2"), a("2001:db8:2::2"));
        let mut p = ChangePolicy::new(PolicyConfig::default(), &[c1, c2], &[s1, s2]).unwrap();
        assert!(p.set_route_source(s1, c1));
        assert!(p.set_route_source(s2, c2));
        assert!(!p.set_route_source(a("2001:db8:3::2"), c1));
        // A destination change takes the source that routes to it.
        let d = p.handle(info(1, 3, 250), t0).unwrap();
        assert_eq!(
            d.to,
            AddrPair {
                local: c2,
                peer: s2
            }
        );
        // Back on link 1 by request, then link 1's source goes away: the
        // destination follows the new source.
        let d = p
            .force(
                AddrPair {
                    local: c1,
                    peer: s1,
                },
                t0,
            )
            .unwrap();
        assert_eq!(d.reason, SwitchReason::Requested);
        let d = p.handle(PolicyEvent::LocalGone(c1), t0).unwrap();
        assert_eq!(
            d.to,
            AddrPair {
                local: c2,
                peer: s2
            }
        );
        assert_eq!(d.reason, SwitchReason::SourceGone);
        // Timeouts now: s1 is only reachable through the gone c1, so stay.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(p.handle(info(3, 3, 2000), later), None);
        assert_eq!(
            p.current(),
            AddrPair {
                local: c2,
                peer: s2
            }
        );
    }

    /// The peer is followed back to the original pair, but not by late
    /// segments within the hold after a switch.
    #[test]
    fn follows_back_to_the_original_pair_after_the_hold() {
        let t0 = Instant::now();
        let mut c = client();
        let orig = c.current();
        let other = AddrPair {
            local: a("3ffe:2a00:100:3200::f00d:cafe"),
            peer: a("3ffe:2a00:100:3200::dead:beef"),
        };
        // Before any switch there is no hold.
        let d = c.handle(PolicyEvent::PeerSegment(other), t0).unwrap();
        assert_eq!((d.to, d.reason), (other, SwitchReason::PeerMoved));
        // Progress on the new pair ends the outage but not the hold.
        assert_eq!(c.handle(info(0, 0, 10), t0 + 50 * MS), None);
        // A late segment on the original pair right after: not followed.
        assert_eq!(
            c.handle(PolicyEvent::PeerSegment(orig), t0 + 100 * MS),
            None
        );
        assert_eq!(c.current(), other);
        // The peer really went back: followed once the hold has passed.
        let d = c
            .handle(PolicyEvent::PeerSegment(orig), t0 + DEFAULT_FOLLOW_HOLD)
            .unwrap();
        assert_eq!((d.to, d.reason), (orig, SwitchReason::PeerMoved));
        // A forced move starts a hold too.
        let d = c.force(other, t0 + 2000 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::Requested);
        assert_eq!(
            c.handle(PolicyEvent::PeerSegment(orig), t0 + 2100 * MS),
            None
        );
        // A zero hold follows every segment.
        let mut z = ChangePolicy::new(
            PolicyConfig {
                follow_hold: Duration::ZERO,
                ..PolicyConfig::default()
            },
            &[orig.local, other.local],
            &[orig.peer, other.peer],
        )
        .unwrap();
        assert!(z.handle(PolicyEvent::PeerSegment(other), t0).is_some());
        assert!(z.handle(PolicyEvent::PeerSegment(orig), t0).is_some());
    }

    /// The first write after an idle period is not a stall, however long
    /// ago the last ACK arrived; data outstanding without ACKs is.
    #[test]
    fn idle_then_write_is_not_a_stall() {
        let t0 = Instant::now();
        let mut p = ChangePolicy::new(
            PolicyConfig::default(),
            &[a("2001:db8::1")],
            &[a("2001:db8:1::2"), a("2001:db8:2::2")],
        )
        .unwrap();
        // Idle for 2 s (no ACK for 2 s, nothing outstanding).
        assert_eq!(p.handle(info(0, 0, 2000), t0), None);
        // A write: unacked, the last ACK is 2.05 s old, but the data has
        // been outstanding for at most 50 ms.
        assert_eq!(p.handle(info(0, 3, 2050), t0 + 50 * MS), None);
        assert_eq!(p.handle(info(0, 3, 2100), t0 + 100 * MS), None);
        // Still no ACK 300 ms after the data went out: a stall.
        let d = p.handle(info(0, 3, 2350), t0 + 350 * MS).unwrap();
        assert_eq!(d.reason, SwitchReason::Stall);
    }
}
