//! The REAP-style failure detector with a simulated clock: unit behaviour
//! of each timer and trigger, and two detectors joined by a simulated
//! multi-pair link (probes answered on the reverse pair, keepalives,
//! payload), for failover, following, standby and return scenarios.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use hip_proto::reap::{Action, Detector, Pair, Params, ReapState, SwitchReason};
use proptest::prelude::*;

fn ip(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// hipd defaults without jitter (exact timers).
fn exact() -> Params {
    Params {
        jitter_pct: 0,
        ..Params::hipd_default()
    }
}

// A's addresses 1, 2; B's addresses 11, 12.
fn p1() -> Pair {
    (ip(1), ip(11))
}
fn p2() -> Pair {
    (ip(2), ip(12))
}
fn p3() -> Pair {
    (ip(1), ip(12))
}
fn p4() -> Pair {
    (ip(2), ip(11))
}

fn drain(d: &mut Detector) -> Vec<Action> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn probes(acts: &[Action]) -> Vec<(u64, Pair, bool)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Probe {
                id,
                pair,
                exploring,
            } => Some((*id, *pair, *exploring)),
            _ => None,
        })
        .collect()
}

fn probe_id(acts: &[Action], pair: Pair) -> u64 {
    probes(acts)
        .into_iter()
        .find(|p| p.1 == pair)
        .map(|p| p.0)
        .expect("probe for pair")
}

fn detector(params: Params, t0: Instant) -> Detector {
    let mut d = Detector::new(params, t0, Some(p1()), 1);
    d.set_candidates(t0, vec![p1(), p2(), p3(), p4()]);
    assert!(drain(&mut d).is_empty(), "no action on a healthy start");
    d
}

/// Runs handle_timeout at each deadline up to `until`, collecting actions.
fn run_to(d: &mut Detector, until: Instant) -> Vec<(Instant, Action)> {
    let mut out = Vec::new();
    while let Some(t) = d.poll_timeout() {
        if t > until {
            break;
        }
        d.handle_timeout(t);
        let next = d.poll_timeout();
        assert!(next.is_none_or(|n| n > t), "deadline must advance");
        out.extend(drain(d).into_iter().map(|a| (t, a)));
    }
    out
}

#[test]
fn defaults_match_the_documented_values() {
    let r = Params::reap_rfc();
    assert_eq!(r.send_timeout, Duration::from_secs(15));
    assert_eq!(r.keepalive_timeout, Duration::from_secs(15));
    assert_eq!(r.keepalive_interval, Duration::from_secs(5));
    assert_eq!(r.initial_probes, 4);
    assert_eq!(r.initial_probe_timeout, ms(500));
    assert_eq!(r.max_probe_timeout, Duration::from_secs(60));
    let h = Params::hipd_default();
    assert_eq!(h.send_timeout, ms(500));
    assert_eq!(h.keepalive_timeout, ms(500));
    assert_eq!(h.keepalive_interval, ms(100));
    assert_eq!(h.initial_probe_timeout, ms(200));
    assert_eq!(h.standby_refresh, Duration::from_secs(1));
    let t = Params::tuned();
    assert_eq!(t.send_timeout, ms(150));
    assert_eq!(t.initial_probe_timeout, ms(100));
    let z = Params {
        send_timeout: Duration::ZERO,
        initial_probes: 0,
        max_probe_timeout: Duration::ZERO,
        jitter_pct: 200,
        ..h
    }
    .sanitized();
    assert_eq!(z.send_timeout, ms(1));
    assert_eq!(z.initial_probes, 1);
    assert_eq!(z.max_probe_timeout, ms(200));
    assert_eq!(z.jitter_pct, 50);
}

#[test]
fn idle_path_never_explores() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    assert_eq!(d.poll_timeout(), None, "no traffic, no timer");
    assert!(run_to(&mut d, t0 + Duration::from_secs(3600)).is_empty());
    assert_eq!(d.state(), ReapState::Operational);
    assert_eq!(d.explorations(), 0);
}

#[test]
fn send_timer_fires_after_send_timeout_and_inbound_stops_it() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_outbound(t0);
    assert!(d.send_timer_running());
    assert_eq!(d.poll_timeout(), Some(t0 + ms(500)));
    // A later outbound does not restart it.
    d.on_outbound(t0 + ms(300));
    assert_eq!(d.poll_timeout(), Some(t0 + ms(500)));
    // Inbound at 400 ms stops it.
    d.on_inbound(t0 + ms(400), p1());
    assert!(!d.send_timer_running());
    // Inbound that predates the outbound does not stop the timer.
    d.on_outbound(t0 + ms(600));
    d.on_keepalive(t0 + ms(590), p1());
    assert!(d.send_timer_running());
    d.on_keepalive(t0 + ms(700), p1());
    assert!(!d.send_timer_running());
    assert_eq!(d.explorations(), 0);
    // Now silence after an outbound: exploration at exactly +500 ms.
    d.on_outbound(t0 + ms(1000));
    let acts = run_to(&mut d, t0 + ms(1499));
    assert!(
        acts.iter()
            .all(|(_, a)| matches!(a, Action::Keepalive { .. }))
    );
    assert_eq!(d.state(), ReapState::Operational);
    let acts = run_to(&mut d, t0 + ms(1500));
    assert_eq!(d.state(), ReapState::Exploring);
    let pr: Vec<Pair> = acts
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Probe {
                pair, exploring, ..
            } => {
                assert_eq!(*t, t0 + ms(1500));
                assert!(*exploring);
                Some(*pair)
            }
            _ => None,
        })
        .collect();
    assert_eq!(pr, vec![p1(), p2(), p3(), p4()], "shotgun, current first");
}

#[test]
fn keepalives_while_receiving_and_not_sending() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_inbound(t0, p1());
    assert!(d.keepalive_timer_running());
    let acts = run_to(&mut d, t0 + Duration::from_secs(2));
    let times: Vec<Duration> = acts
        .iter()
        .map(|(t, a)| {
            assert_eq!(*a, Action::Keepalive { pair: p1() });
            *t - t0
        })
        .collect();
    assert_eq!(times, vec![ms(100), ms(200), ms(300), ms(400), ms(500)]);
    assert!(!d.keepalive_timer_running());
    // Outbound payload stops the keepalive timer.
    let t1 = t0 + Duration::from_secs(3);
    d.on_inbound(t1, p1());
    d.on_outbound(t1 + ms(150));
    assert!(!d.keepalive_timer_running());
    // A received keepalive never starts ours.
    let t2 = t0 + Duration::from_secs(5);
    d.on_keepalive(t2, p1());
    assert!(!d.keepalive_timer_running());
}

#[test]
fn probe_rounds_back_off_exponentially_up_to_the_cap() {
    let t0 = Instant::now();
    let params = Params {
        max_probe_timeout: ms(1600),
        ..exact()
    };
    let mut d = detector(params, t0);
    d.on_feedback(t0, true);
    assert_eq!(d.state(), ReapState::Exploring);
    let first = drain(&mut d);
    assert_eq!(probes(&first).len(), 4);
    let acts = run_to(&mut d, t0 + Duration::from_secs(10));
    let mut rounds: Vec<Duration> = acts
        .iter()
        .filter(|(_, a)| matches!(a, Action::Probe { .. }))
        .map(|(t, _)| *t - t0)
        .collect();
    rounds.dedup();
    let expect: Vec<Duration> = [200, 400, 600, 1000, 1800, 3400, 5000, 6600, 8200, 9800]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(rounds, expect);
    // Every pair is listed as unreachable once its round went unanswered.
    assert_eq!(d.unreachable().len(), 4);
    assert_eq!(d.state(), ReapState::Exploring, "explores forever");
}

#[test]
fn switch_waits_a_grace_period_for_a_more_preferred_pair() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_feedback(t0, true);
    let acts = drain(&mut d);
    // p4 answers first (RTT 20 ms), p2 within the grace (40 ms).
    d.on_probe_reply(t0 + ms(20), probe_id(&acts, p4()));
    assert_eq!(d.poll_timeout(), Some(t0 + ms(60)));
    d.on_probe_reply(t0 + ms(30), probe_id(&acts, p2()));
    assert_eq!(d.current(), Some(p1()), "no switch before the grace ends");
    let acts = run_to(&mut d, t0 + ms(60));
    assert!(acts.iter().any(|(_, a)| *a
        == Action::Switch {
            pair: p2(),
            reason: SwitchReason::Failure
        }));
    assert_eq!(d.current(), Some(p2()));
    assert_eq!(d.state(), ReapState::Operational);
    assert_eq!(d.switches(), 1);
}

#[test]
fn current_pair_answering_ends_exploration_without_switch() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_outbound(t0);
    run_to(&mut d, t0 + ms(500));
    assert_eq!(d.state(), ReapState::Exploring);
    // Take the ids of the second round.
    let acts = run_to(&mut d, t0 + ms(700));
    let ids: Vec<(u64, Pair, bool)> = acts
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Probe {
                id,
                pair,
                exploring,
            } => Some((*id, *pair, *exploring)),
            _ => None,
        })
        .collect();
    let p4_id = ids.iter().find(|p| p.1 == p4()).expect("p4").0;
    let p1_id = ids.iter().find(|p| p.1 == p1()).expect("p1").0;
    d.on_probe_reply(t0 + ms(710), p4_id);
    assert_eq!(d.state(), ReapState::Exploring);
    d.on_probe_reply(t0 + ms(712), p1_id);
    assert_eq!(
        d.state(),
        ReapState::Operational,
        "best rank decides at once"
    );
    assert_eq!(d.current(), Some(p1()));
    assert!(
        !drain(&mut d)
            .iter()
            .any(|a| matches!(a, Action::Switch { .. }))
    );
    assert_eq!(d.switches(), 0);
}

#[test]
fn inbound_during_exploration_means_inbound_ok() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_feedback(t0, true);
    assert_eq!(d.state(), ReapState::Exploring);
    d.on_inbound(t0 + ms(5), p1());
    assert_eq!(d.state(), ReapState::InboundOk);
    assert!(
        !d.keepalive_timer_running(),
        "no keepalives while exploring"
    );
}

#[test]
fn peer_probes_exploring_elsewhere_trigger_exploration() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    // Non-exploring probes (standby refresh, verification) are ignored.
    d.on_peer_probe(t0, p2(), false);
    assert_eq!(d.state(), ReapState::Operational);
    // An exploring probe on our current pair is only evidence.
    d.on_peer_probe(t0, p1(), true);
    assert_eq!(d.state(), ReapState::Operational);
    assert!(drain(&mut d).is_empty());
    // On another pair: explore at once, in InboundOk.
    d.on_peer_probe(t0 + ms(1), p2(), true);
    assert_eq!(d.state(), ReapState::InboundOk);
    assert_eq!(probes(&drain(&mut d)).len(), 4);
}

#[test]
fn peer_probes_right_after_a_proof_are_ignored() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_feedback(t0, true);
    let acts = drain(&mut d);
    d.on_probe_reply(t0 + ms(10), probe_id(&acts, p1()));
    assert_eq!(d.state(), ReapState::Operational);
    // The peer's late exploring probes within send_timeout/2 of the proof.
    d.on_peer_probe(t0 + ms(200), p2(), true);
    assert_eq!(d.state(), ReapState::Operational);
    d.on_peer_probe(t0 + ms(300), p2(), true);
    assert_eq!(d.state(), ReapState::InboundOk);
}

#[test]
fn local_failure_drops_pairs_and_explores_at_once() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    // Address 2 goes: p2 and p4 leave; the current p1 is unaffected.
    d.on_local_failure(t0, &[ip(2)]);
    assert_eq!(d.candidates(), &[p1(), p3()]);
    assert_eq!(d.state(), ReapState::Operational);
    assert!(d.unreachable().contains(&p2()) && d.unreachable().contains(&p4()));
    // Address 1 goes: the current pair is hit.
    d.on_local_failure(t0 + ms(1), &[ip(1)]);
    assert_eq!(d.state(), ReapState::Exploring);
    assert!(d.candidates().is_empty());
    // New addresses come (the daemon recomputes the candidates).
    d.set_candidates(t0 + ms(2), vec![p2()]);
    let acts = drain(&mut d);
    let id = probe_id(&acts, p2());
    d.on_probe_reply(t0 + ms(12), id);
    assert_eq!(d.current(), Some(p2()));
    assert_eq!(d.state(), ReapState::Operational);
}

#[test]
fn feedback_negative_explores_positive_stops_send_timer() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_outbound(t0);
    d.on_feedback(t0 + ms(100), false);
    assert!(!d.send_timer_running());
    assert_eq!(d.state(), ReapState::Operational);
    d.on_feedback(t0 + ms(200), true);
    assert_eq!(d.state(), ReapState::Exploring);
    assert_eq!(d.explorations(), 1);
}

#[test]
fn current_pair_leaving_the_candidates_is_a_failure() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.set_candidates(t0, vec![p2(), p3()]);
    assert_eq!(d.state(), ReapState::Exploring);
    let acts = drain(&mut d);
    assert_eq!(
        probes(&acts).iter().map(|p| p.1).collect::<Vec<_>>(),
        vec![p2(), p3()]
    );
    // set_current (path changed by other means) ends it.
    d.set_current(t0 + ms(5), p3());
    assert_eq!(d.state(), ReapState::Operational);
    assert_eq!(d.current(), Some(p3()));
}

#[test]
fn hot_standby_is_verified_and_used_without_exploration() {
    let t0 = Instant::now();
    let params = Params {
        hot_standby: true,
        ..exact()
    };
    let mut d = Detector::new(params, t0, Some(p1()), 3);
    d.set_candidates(t0, vec![p1(), p3(), p2(), p4()]);
    // The standby is the best pair disjoint from p1 (p2), probed at once.
    assert_eq!(d.poll_timeout(), Some(t0));
    let acts: Vec<Action> = run_to(&mut d, t0).into_iter().map(|a| a.1).collect();
    let pr = probes(&acts);
    assert_eq!(pr.len(), 1);
    assert_eq!(pr[0].1, p2());
    assert!(!pr[0].2, "standby probes are not exploring");
    d.on_probe_reply(t0 + ms(10), pr[0].0);
    assert_eq!(
        drain(&mut d),
        vec![Action::StandbyChanged { pair: Some(p2()) }]
    );
    assert_eq!(d.standby(), Some(p2()));
    // Refreshed every second.
    let acts = run_to(&mut d, t0 + ms(1000));
    let pr: Vec<_> = acts
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Probe { id, pair, .. } => Some((*t, *id, *pair)),
            _ => None,
        })
        .collect();
    assert_eq!(pr.len(), 1);
    assert_eq!(pr[0].0, t0 + ms(1000));
    d.on_probe_reply(t0 + ms(1010), pr[0].1);
    // Failure: immediate switch to the standby.
    d.on_outbound(t0 + ms(1100));
    let acts = run_to(&mut d, t0 + ms(1600));
    assert!(acts.iter().any(|(t, a)| *t == t0 + ms(1600)
        && *a
            == Action::Switch {
                pair: p2(),
                reason: SwitchReason::Standby
            }));
    assert_eq!(d.explorations(), 0, "failover needed no exploration");
    assert_eq!(d.current(), Some(p2()));
    assert_eq!(d.state(), ReapState::Operational);
    // A new standby (disjoint from p2: p1) is probed in the background.
    assert!(
        acts.iter().any(
            |(_, a)| matches!(a, Action::Probe { pair, exploring: false, .. } if *pair == p1())
        )
    );
}

#[test]
fn stale_standby_is_not_used() {
    let t0 = Instant::now();
    let params = Params {
        hot_standby: true,
        ..exact()
    };
    let mut d = Detector::new(params, t0, Some(p1()), 3);
    d.set_candidates(t0, vec![p1(), p2()]);
    let acts: Vec<Action> = run_to(&mut d, t0).into_iter().map(|a| a.1).collect();
    d.on_probe_reply(t0 + ms(10), probe_id(&acts, p2()));
    drain(&mut d);
    assert_eq!(d.standby(), Some(p2()));
    // The next refresh goes unanswered: at the one after, the standby is
    // withdrawn.
    let acts = run_to(&mut d, t0 + ms(2000));
    assert!(
        acts.iter()
            .any(|(_, a)| *a == Action::StandbyChanged { pair: None })
    );
    assert_eq!(d.standby(), None);
    d.on_feedback(t0 + ms(2001), true);
    assert_eq!(d.state(), ReapState::Exploring);
}

#[test]
fn moves_back_to_the_preferred_pair_when_it_answers_again() {
    let t0 = Instant::now();
    let mut d = detector(exact(), t0);
    d.on_feedback(t0, true);
    let acts = drain(&mut d);
    d.on_probe_reply(t0 + ms(10), probe_id(&acts, p3()));
    run_to(&mut d, t0 + ms(30));
    assert_eq!(d.current(), Some(p3()));
    // Return probes of p1 and p2 (more preferred), backed off.
    let acts = run_to(&mut d, t0 + ms(2000));
    let mut times: Vec<Duration> = acts
        .iter()
        .filter_map(|(t, a)| match a {
            Action::Probe {
                pair, exploring, ..
            } => {
                assert!(*pair == p1() || *pair == p2());
                assert!(!*exploring);
                Some(*t - t0)
            }
            _ => None,
        })
        .collect();
    times.dedup();
    // Switched at 30 ms (answer at 10 ms + 20 ms grace); then +200, +400,
    // +800 ms.
    assert_eq!(times, vec![ms(230), ms(630), ms(1430)]);
    // p2 answers the next round: moved back (p1 may still answer within
    // the grace; it does not).
    let acts = run_to(&mut d, t0 + ms(3030));
    let id = probes(&acts.iter().map(|a| a.1).collect::<Vec<_>>())
        .into_iter()
        .find(|p| p.1 == p2())
        .expect("p2 return probe")
        .0;
    d.on_probe_reply(t0 + ms(3040), id);
    let acts = run_to(&mut d, t0 + ms(3100));
    assert!(acts.iter().any(|(_, a)| *a
        == Action::Switch {
            pair: p2(),
            reason: SwitchReason::Preferred
        }));
    assert_eq!(d.current(), Some(p2()));
}

#[test]
fn jitter_is_deterministic_and_bounded() {
    let t0 = Instant::now();
    let schedule = |seed: u64| {
        let mut d = Detector::new(Params::hipd_default(), t0, Some(p1()), seed);
        let mut out = Vec::new();
        let mut t = t0;
        for _ in 0..20 {
            d.on_outbound(t);
            let dl = d.poll_timeout().expect("send timer");
            out.push(dl - t);
            d.on_inbound(dl - ms(1), p1());
            t = dl + ms(10);
        }
        out
    };
    let a = schedule(5);
    assert_eq!(a, schedule(5));
    assert_ne!(a, schedule(6));
    assert!(a.iter().all(|d| *d >= ms(500) && *d <= ms(550)), "{a:?}");
}

// ------------------------------------------------------------- two hosts

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

#[derive(Debug, Clone, Copy)]
enum Msg {
    Payload(Pair),
    Keepalive(Pair),
    PeerProbe {
        pair: Pair,
        exploring: bool,
        id: u64,
    },
    Reply(u64),
}

/// Two detectors; A's pair (a, b) is B's pair (b, a). A directed link
/// a → b works unless listed in `down`.
struct Sim {
    now: Instant,
    a: Detector,
    b: Detector,
    down: HashSet<(IpAddr, IpAddr)>,
    delay: Duration,
    queue: Vec<(Instant, Side, Msg)>,
    /// Payload interval per side (None: silent).
    rate_a: Option<Duration>,
    rate_b: Option<Duration>,
    next_a: Instant,
    next_b: Instant,
    log: Vec<(Instant, Side, Action)>,
    delivered: [u64; 2],
}

fn flip(p: Pair) -> Pair {
    (p.1, p.0)
}

impl Sim {
    fn new(params: Params) -> Sim {
        let t0 = Instant::now();
        let mut a = Detector::new(params, t0, Some(p1()), 11);
        a.set_candidates(t0, vec![p1(), p2(), p3(), p4()]);
        let mut b = Detector::new(params, t0, Some(flip(p1())), 22);
        b.set_candidates(t0, vec![flip(p1()), flip(p2()), flip(p3()), flip(p4())]);
        let mut s = Sim {
            now: t0,
            a,
            b,
            down: HashSet::new(),
            delay: ms(5),
            queue: Vec::new(),
            rate_a: None,
            rate_b: None,
            next_a: t0,
            next_b: t0,
            log: Vec::new(),
            delivered: [0, 0],
        };
        s.drain_actions();
        s
    }

    fn det(&mut self, side: Side) -> &mut Detector {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn other(side: Side) -> Side {
        match side {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn works(&self, p: Pair) -> bool {
        !self.down.contains(&p)
    }

    /// Sends a message from `side` on its pair `p`.
    fn send(&mut self, side: Side, p: Pair, m: Msg) {
        if self.works(p) {
            self.queue
                .push((self.now + self.delay, Self::other(side), m));
        }
    }

    fn drain_actions(&mut self) {
        for side in [Side::A, Side::B] {
            while let Some(act) = self.det(side).poll_action() {
                self.log.push((self.now, side, act));
                match act {
                    Action::Keepalive { pair } => self.send(side, pair, Msg::Keepalive(flip(pair))),
                    Action::Probe {
                        id,
                        pair,
                        exploring,
                    } => self.send(
                        side,
                        pair,
                        Msg::PeerProbe {
                            pair: flip(pair),
                            exploring,
                            id,
                        },
                    ),
                    Action::Switch { .. } | Action::StandbyChanged { .. } => {}
                }
            }
        }
    }

    fn step(&mut self) {
        let mut next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(self.queue.iter().map(|q| q.0))
            .min();
        if self.rate_a.is_some() {
            next = Some(next.map_or(self.next_a, |n| n.min(self.next_a)));
        }
        if self.rate_b.is_some() {
            next = Some(next.map_or(self.next_b, |n| n.min(self.next_b)));
        }
        let t = next.expect("something to do");
        self.now = t;
        // Deliveries.
        let mut due: Vec<(Instant, Side, Msg)> = Vec::new();
        self.queue.retain(|q| {
            if q.0 <= t {
                due.push(*q);
                false
            } else {
                true
            }
        });
        for (_, side, m) in due {
            match m {
                Msg::Payload(p) => {
                    self.delivered[side as usize] += 1;
                    self.det(side).on_inbound(t, p);
                }
                Msg::Keepalive(p) => self.det(side).on_keepalive(t, p),
                Msg::PeerProbe {
                    pair,
                    exploring,
                    id,
                } => {
                    self.det(side).on_peer_probe(t, pair, exploring);
                    // The engine answers on the reverse pair.
                    self.send(side, pair, Msg::Reply(id));
                }
                Msg::Reply(id) => self.det(side).on_probe_reply(t, id),
            }
        }
        // Application traffic on the current pair.
        for side in [Side::A, Side::B] {
            let (rate, next) = match side {
                Side::A => (self.rate_a, self.next_a),
                Side::B => (self.rate_b, self.next_b),
            };
            if let Some(r) = rate
                && next <= t
            {
                if let Some(p) = self.det(side).current() {
                    self.det(side).on_outbound(t);
                    self.send(side, p, Msg::Payload(flip(p)));
                }
                match side {
                    Side::A => self.next_a = t + r,
                    Side::B => self.next_b = t + r,
                }
            }
        }
        self.a.handle_timeout(t);
        self.b.handle_timeout(t);
        self.drain_actions();
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn fail_both_ways(&mut self, p: Pair) {
        self.down.insert(p);
        self.down.insert(flip(p));
    }

    fn count(&self, side: Side, f: impl Fn(&Action) -> bool) -> usize {
        self.log
            .iter()
            .filter(|(_, s, a)| *s == side && f(a))
            .count()
    }
}

#[test]
fn healthy_one_way_bulk_never_explores() {
    let mut s = Sim::new(Params::hipd_default());
    s.rate_a = Some(ms(10));
    s.run_for(Duration::from_secs(20));
    assert_eq!(s.a.explorations(), 0);
    assert_eq!(s.b.explorations(), 0);
    assert!(s.delivered[Side::B as usize] > 1900);
    let ka = s.count(Side::B, |a| matches!(a, Action::Keepalive { .. }));
    assert!(
        ka > 150,
        "B keeps A's send timer quiet with keepalives: {ka}"
    );
    assert_eq!(
        s.count(Side::A, |a| matches!(a, Action::Keepalive { .. })),
        0
    );
}

#[test]
fn healthy_slow_traffic_both_ways_never_explores() {
    let mut s = Sim::new(Params::hipd_default());
    s.rate_a = Some(ms(1300));
    s.rate_b = Some(ms(700));
    s.delay = ms(40);
    s.run_for(Duration::from_secs(30));
    assert_eq!(s.a.explorations() + s.b.explorations(), 0);
}

#[test]
fn healthy_idle_pair_stays_silent() {
    let mut s = Sim::new(Params::hipd_default());
    // Nothing to do at all: no timers.
    assert_eq!(s.a.poll_timeout(), None);
    assert_eq!(s.b.poll_timeout(), None);
    s.rate_a = Some(Duration::from_secs(3600));
    s.run_for(Duration::from_secs(7200));
    assert_eq!(s.a.explorations() + s.b.explorations(), 0);
    assert!(s.log.len() < 20, "only a few keepalives: {}", s.log.len());
}

fn converge_check(s: &mut Sim, fail_at: Instant, want: Pair) {
    assert_eq!(s.a.current(), Some(want), "A switched");
    assert_eq!(s.b.current(), Some(flip(want)), "B followed");
    let a_switch = s
        .log
        .iter()
        .find(|(t, side, a)| *side == Side::A && *t > fail_at && matches!(a, Action::Switch { .. }))
        .map(|x| x.0)
        .expect("A switch");
    assert!(
        a_switch - fail_at < Duration::from_secs(1),
        "switched within 1 s: {:?}",
        a_switch - fail_at
    );
    // Steady afterwards: no more explorations.
    let (ea, eb) = (s.a.explorations(), s.b.explorations());
    let before = s.delivered[Side::B as usize];
    s.run_for(Duration::from_secs(10));
    assert_eq!((s.a.explorations(), s.b.explorations()), (ea, eb));
    assert!(
        s.delivered[Side::B as usize] - before > 900,
        "traffic flows"
    );
    assert!(ea <= 2 && eb <= 2, "no exploration ping-pong: {ea} {eb}");
}

#[test]
fn silent_failure_both_ways_fails_over_and_peer_follows() {
    let mut s = Sim::new(Params::hipd_default());
    s.rate_a = Some(ms(10));
    s.run_for(Duration::from_secs(2));
    let fail_at = s.now;
    s.fail_both_ways(p1());
    s.run_for(Duration::from_secs(2));
    converge_check(&mut s, fail_at, p2());
}

#[test]
fn one_direction_failure_makes_both_sides_move() {
    let mut s = Sim::new(Params::hipd_default());
    s.rate_a = Some(ms(10));
    s.rate_b = Some(ms(25));
    s.run_for(Duration::from_secs(2));
    let fail_at = s.now;
    // Only A → B on p1 breaks; B → A still works.
    s.down.insert(p1());
    s.run_for(Duration::from_secs(2));
    converge_check(&mut s, fail_at, p2());
}

#[test]
fn peer_side_failure_detected_by_receiver_only() {
    // B sends bulk, A only receives (and sends keepalives). A → B breaks:
    // B's send timer notices, B explores, A follows B's exploring probes.
    let mut s = Sim::new(Params::hipd_default());
    s.rate_b = Some(ms(10));
    s.run_for(Duration::from_secs(2));
    let fail_at = s.now;
    s.down.insert(p1());
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.b.current(), Some(flip(p2())));
    assert_eq!(s.a.current(), Some(p2()));
    assert!(s.a.switches() >= 1 && s.b.switches() >= 1);
    let _ = fail_at;
}

#[test]
fn hot_standby_failover_and_return() {
    let params = Params {
        hot_standby: true,
        ..Params::hipd_default()
    };
    let mut s = Sim::new(params);
    s.rate_a = Some(ms(10));
    s.rate_b = Some(ms(10));
    s.run_for(Duration::from_secs(3));
    assert_eq!(s.a.standby(), Some(p2()));
    let fail_at = s.now;
    s.fail_both_ways(p1());
    s.run_for(Duration::from_secs(2));
    assert_eq!(s.a.current(), Some(p2()));
    assert!(s.log.iter().any(|(t, side, a)| *side == Side::A
        && *t > fail_at
        && *a
            == Action::Switch {
                pair: p2(),
                reason: SwitchReason::Standby
            }));
    // p1 heals: A moves back.
    s.down.clear();
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.a.current(), Some(p1()));
    assert!(s.log.iter().any(|(_, side, a)| *side == Side::A
        && *a
            == Action::Switch {
                pair: p1(),
                reason: SwitchReason::Preferred
            }));
}

#[test]
fn tuned_params_detect_faster() {
    let mut s = Sim::new(Params::tuned());
    s.rate_a = Some(ms(5));
    s.run_for(Duration::from_secs(2));
    let fail_at = s.now;
    s.fail_both_ways(p1());
    s.run_for(Duration::from_secs(1));
    let sw = s
        .log
        .iter()
        .find(|(t, side, a)| *side == Side::A && *t > fail_at && matches!(a, Action::Switch { .. }))
        .map(|x| x.0 - fail_at)
        .expect("switch");
    assert!(sw < ms(300), "{sw:?}");
    assert_eq!(s.b.current(), Some(flip(p2())));
}

// ------------------------------------------------------------- properties

#[derive(Debug, Clone)]
enum Ev {
    Out(u16),
    In(u16, usize),
    Ka(u16, usize),
    PeerProbe(u16, usize, bool),
    Reply(u16, usize),
    Lost(u16, usize),
    LocalFail(u16, usize),
    Feedback(u16, bool),
    Candidates(u16, Vec<usize>),
    Current(u16, usize),
    Tick(u16),
    Params(bool, u8),
}

fn all_pairs() -> Vec<Pair> {
    vec![p1(), p2(), p3(), p4(), (ip(3), ip(13))]
}

fn ev() -> impl Strategy<Value = Ev> {
    let dt = 0u16..2000;
    prop_oneof![
        dt.clone().prop_map(Ev::Out),
        (dt.clone(), 0usize..5).prop_map(|(t, p)| Ev::In(t, p)),
        (dt.clone(), 0usize..5).prop_map(|(t, p)| Ev::Ka(t, p)),
        (dt.clone(), 0usize..5, any::<bool>()).prop_map(|(t, p, e)| Ev::PeerProbe(t, p, e)),
        (dt.clone(), 0usize..64).prop_map(|(t, i)| Ev::Reply(t, i)),
        (dt.clone(), 0usize..64).prop_map(|(t, i)| Ev::Lost(t, i)),
        (dt.clone(), 0usize..6).prop_map(|(t, a)| Ev::LocalFail(t, a)),
        (dt.clone(), any::<bool>()).prop_map(|(t, n)| Ev::Feedback(t, n)),
        (dt.clone(), proptest::collection::vec(0usize..5, 0..6))
            .prop_map(|(t, v)| Ev::Candidates(t, v)),
        (dt.clone(), 0usize..5).prop_map(|(t, p)| Ev::Current(t, p)),
        (0u16..5000).prop_map(Ev::Tick),
        (any::<bool>(), 0u8..100).prop_map(|(h, j)| Ev::Params(h, j)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn arbitrary_events_are_sane_and_exploration_ends_operational(
        evs in proptest::collection::vec(ev(), 0..80),
        working in 0usize..5,
        seed in any::<u64>(),
    ) {
        let pairs = all_pairs();
        let addrs = [ip(1), ip(2), ip(3), ip(11), ip(12), ip(13)];
        let t0 = Instant::now();
        let mut now = t0;
        let mut d = Detector::new(Params::hipd_default(), t0, Some(p1()), seed);
        let mut ids: Vec<u64> = Vec::new();
        let check = |d: &mut Detector, ids: &mut Vec<u64>| {
            while let Some(a) = d.poll_action() {
                match a {
                    Action::Probe { id, pair, .. } => {
                        assert!(d.candidates().contains(&pair), "probe of a non-candidate");
                        ids.push(id);
                    }
                    Action::Keepalive { pair } => assert_eq!(Some(pair), d.current()),
                    Action::Switch { pair, .. } => assert_eq!(Some(pair), d.current()),
                    Action::StandbyChanged { .. } => {}
                }
            }
        };
        for e in evs {
            match e {
                Ev::Out(dt) => { now += ms(dt.into()); d.on_outbound(now) }
                Ev::In(dt, p) => { now += ms(dt.into()); d.on_inbound(now, pairs[p]) }
                Ev::Ka(dt, p) => { now += ms(dt.into()); d.on_keepalive(now, pairs[p]) }
                Ev::PeerProbe(dt, p, x) => { now += ms(dt.into()); d.on_peer_probe(now, pairs[p], x) }
                Ev::Reply(dt, i) => {
                    now += ms(dt.into());
                    if let Some(id) = ids.get(i) { d.on_probe_reply(now, *id) } else { d.on_probe_reply(now, i as u64) }
                }
                Ev::Lost(dt, i) => {
                    now += ms(dt.into());
                    if let Some(id) = ids.get(i) { d.on_probe_lost(now, *id) }
                }
                Ev::LocalFail(dt, a) => { now += ms(dt.into()); d.on_local_failure(now, &[addrs[a]]) }
                Ev::Feedback(dt, n) => { now += ms(dt.into()); d.on_feedback(now, n) }
                Ev::Candidates(dt, v) => {
                    now += ms(dt.into());
                    d.set_candidates(now, v.into_iter().map(|i| pairs[i]).collect())
                }
                Ev::Current(dt, p) => { now += ms(dt.into()); d.set_current(now, pairs[p]) }
                Ev::Tick(dt) => {
                    let end = now + ms(dt.into());
                    while let Some(t) = d.poll_timeout() {
                        if t > end { break; }
                        let t = t.max(now);
                        d.handle_timeout(t);
                        prop_assert!(d.poll_timeout().is_none_or(|n| n > t));
                        check(&mut d, &mut ids);
                    }
                    now = end;
                }
                Ev::Params(h, j) => {
                    d.set_params(now, Params { hot_standby: h, jitter_pct: j, ..Params::hipd_default() })
                }
            }
            check(&mut d, &mut ids);
            if let Some(t) = d.poll_timeout() {
                // A deadline in the past is due now; never absurdly far.
                prop_assert!(t <= now + Duration::from_secs(3600));
            }
        }
        // A working pair becomes available: force failover and answer only
        // probes of that pair.
        let w = pairs[working];
        let mut cands = d.candidates().to_vec();
        if !cands.contains(&w) { cands.push(w); }
        d.set_candidates(now, cands);
        d.on_feedback(now, true);
        let mut pending: Vec<(Instant, u64)> = Vec::new();
        let end = now + Duration::from_secs(600);
        loop {
            while let Some(a) = d.poll_action() {
                if let Action::Probe { id, pair, .. } = a && pair == w {
                    pending.push((now + ms(30), id));
                }
            }
            if d.state() == ReapState::Operational { break; }
            let next = pending.iter().map(|p| p.0).chain(d.poll_timeout()).min();
            let Some(t) = next else { break };
            prop_assert!(t <= end, "exploration did not end");
            now = t.max(now);
            let due: Vec<u64> = pending.iter().filter(|p| p.0 <= now).map(|p| p.1).collect();
            pending.retain(|p| p.0 > now);
            for id in due { d.on_probe_reply(now, id); }
            d.handle_timeout(now);
        }
        prop_assert_eq!(d.state(), ReapState::Operational);
        let cur = d.current().expect("current");
        prop_assert!(cur == w || d.candidates().contains(&cur));
    }
}

/// With fate-sharing groups (interfaces), the standby is taken from
/// another link even when a disjoint pair exists on the current link
/// (e.g. the IPv4 pair of the same link).
#[test]
fn standby_comes_from_another_link() {
    let t0 = Instant::now();
    let params = Params {
        hot_standby: true,
        ..exact()
    };
    // ip(1), ip(3) on interface 7 (link 1); ip(2) on interface 8 (link 2).
    let same_link = (ip(3), ip(13));
    let mut d = Detector::new(params, t0, Some(p1()), 3);
    d.set_local_groups(t0, vec![(ip(1), 7), (ip(3), 7), (ip(2), 8)]);
    d.set_candidates(t0, vec![p1(), same_link, p2()]);
    let acts: Vec<Action> = run_to(&mut d, t0).into_iter().map(|a| a.1).collect();
    let pr = probes(&acts);
    assert_eq!(pr.len(), 1);
    assert_eq!(pr[0].1, p2(), "standby on the other link");
    // Without groups the first disjoint pair would be chosen.
    let mut d = Detector::new(params, t0, Some(p1()), 3);
    d.set_candidates(t0, vec![p1(), same_link, p2()]);
    let acts: Vec<Action> = run_to(&mut d, t0).into_iter().map(|a| a.1).collect();
    assert_eq!(probes(&acts)[0].1, same_link);
}
