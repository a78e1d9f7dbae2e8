//! Credit-based authorization (RFC 8046 §5.6) for ESP in the data plane.
//!
//! The engine keeps the credit of each association (bytes received from
//! the peer, aged by 7/8 every 5 s, [`Endpoint::on_data_received`]) and
//! decides whether a send to an UNVERIFIED peer locator is allowed
//! ([`Endpoint::can_send_to`], [`Endpoint::authorize_send`]). The sealing
//! threads must not take the core lock per packet, so each association's
//! outbound SA carries a [`Gate`], a mirror of what they need:
//!
//! * `limited` — whether the peer has any UNVERIFIED locator. While it is
//!   false (the normal, verified case) the whole check is this one relaxed
//!   load.
//! * `unverified` — those locators; only read when `limited` is set.
//! * `budget` — bytes the data plane may still send to them: the engine's
//!   (aged) credit as of the last refresh, minus what was sent since,
//!   spent per ESP packet (its length, the measure the credit is counted
//!   in) with a compare-and-swap that never goes below zero.
//!
//! [`sync`] (under the core lock) refreshes a gate from the engine: what
//! the sealing threads spent since the last refresh is debited from the
//! engine's credit with [`Endpoint::authorize_send`], the locator set is
//! re-read, and the budget becomes the credit that is left (found with
//! [`Endpoint::can_send_to`]: the engine's rules decide, an ACTIVE locator
//! leaves the UNVERIFIED ones nothing). The budget is adjusted by the
//! difference, not overwritten, so packets spent concurrently stay debited
//! and the sealing threads never see a spurious zero. The engine keeps the
//! credit and ages it; the data plane can spend at most what the engine
//! held at the last refresh. The daemon calls it on every event that
//! changes the peer's locators or the path (before a new path becomes
//! visible to the sealing threads, which read the path under a mutex, so a
//! path to an UNVERIFIED locator is never used with a stale `limited =
//! false`), and every [`TICK`] from the driver thread, after the bytes
//! received since the last tick were reported to the engine
//! ([`Endpoint::on_data_received`]). When the last UNVERIFIED locator
//! becomes ACTIVE the gate opens at that event.
//!
//! A packet the gate refuses is dropped (and counted): holding packets
//! until the verification completes would need a per-association queue
//! in the sealing path and would still have to be bounded; the transports
//! above retransmit what is lost, as they do for any congested path.
//!
//! Approximation: the budget is the credit as of the last refresh (at
//! most one [`TICK`] old); when a 5 s ageing step falls between two
//! refreshes, what was spent in between may exceed the aged credit by at
//! most that step (1/8 of the credit); the engine's credit is then
//! emptied. The credit only grows in the engine (reported received bytes,
//! once per tick), so a peer cannot obtain more than it sent.

use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hip_proto::engine::{Endpoint, LocatorState};
use hip_proto::wire::Hit;

/// How often the driver refreshes the gates (leases and locator sets).
pub(super) const TICK: Duration = Duration::from_millis(20);

/// What [`Gate::admit`] decided about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// The destination is not UNVERIFIED: no credit involved.
    Free,
    /// Sent to an UNVERIFIED locator; its length was debited.
    Debited,
    /// Not enough credit: drop.
    Refused,
}

/// The data plane's view of an association's credit-based authorization
/// (see the [module docs](self)).
#[derive(Debug, Default)]
pub(super) struct Gate {
    limited: AtomicBool,
    unverified: Mutex<Vec<IpAddr>>,
    budget: AtomicI64,
    /// `budget` as the last [`sync`] set it (only touched under the core
    /// lock): what the sealing threads spent since is the difference.
    synced: AtomicI64,
}

impl Gate {
    /// Whether an ESP packet of `len` bytes may go to `dst` now; debits
    /// the budget when `dst` is UNVERIFIED and it suffices.
    #[inline]
    pub(super) fn admit(&self, dst: IpAddr, len: usize) -> Admit {
        if !self.limited.load(Ordering::Relaxed) {
            return Admit::Free;
        }
        self.admit_limited(dst, len)
    }

    #[cold]
    fn admit_limited(&self, dst: IpAddr, len: usize) -> Admit {
        let unverified = self
            .unverified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&dst);
        if !unverified {
            return Admit::Free;
        }
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        let r = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= len).then(|| b - len)
            });
        if r.is_ok() {
            Admit::Debited
        } else {
            Admit::Refused
        }
    }

    /// Whether the gate checks packets now (some peer locator is
    /// UNVERIFIED).
    #[cfg(test)]
    pub(super) fn limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// Bytes the data plane may still send to UNVERIFIED locators.
    #[cfg(test)]
    pub(super) fn budget(&self) -> i64 {
        self.budget.load(Ordering::Relaxed)
    }
}

/// The largest `len` that `ep` allows sending to the UNVERIFIED `dst` of
/// `peer` now (its aged credit, when no locator is ACTIVE), at most
/// `upper`; 0 when nothing is allowed.
fn allowed(ep: &Endpoint, now: Instant, peer: Hit, dst: IpAddr, upper: u64) -> u64 {
    let ok = |len: u64| ep.can_send_to(now, peer, dst, usize::try_from(len).unwrap_or(usize::MAX));
    if upper == 0 || !ok(1) {
        return 0;
    }
    if ok(upper) {
        return upper;
    }
    // ok(lo) && !ok(hi)
    let (mut lo, mut hi) = (1u64, upper);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Refreshes `gate` (the association of `ep` with `peer`) from the engine,
/// see the [module docs](self). Returns whether the gate is limited.
pub(super) fn sync(gate: &Gate, ep: &mut Endpoint, now: Instant, peer: Hit) -> bool {
    let view = ep.locators(peer);
    let unverified: Vec<IpAddr> = view
        .as_ref()
        .map(|v| {
            v.peer
                .iter()
                .filter(|l| l.state == LocatorState::Unverified)
                .map(|l| l.addr)
                .collect()
        })
        .unwrap_or_default();
    let raw_credit = view.as_ref().map_or(0, |v| v.credit).min(i64::MAX as u64);
    // What was spent since the last sync is debited from the engine's
    // credit (all of it if ageing left less).
    let held = gate.budget.load(Ordering::Relaxed);
    let spent = gate
        .synced
        .load(Ordering::Relaxed)
        .saturating_sub(held)
        .max(0);
    let spent = u64::try_from(spent).unwrap_or(0);
    let dst = unverified.first().copied();
    if spent > 0
        && let Some(dst) = dst
    {
        let len = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        if !ep.authorize_send(now, peer, dst, len(spent)) {
            let rest = allowed(ep, now, peer, dst, raw_credit);
            if rest > 0 {
                ep.authorize_send(now, peer, dst, len(rest));
            }
        }
    }
    let target = match dst {
        None => {
            gate.limited.store(false, Ordering::Relaxed);
            gate.unverified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            0
        }
        Some(dst) => {
            *gate.unverified.lock().unwrap_or_else(|p| p.into_inner()) = unverified;
            gate.limited.store(true, Ordering::Relaxed);
            let c = ep
                .locators(peer)
                .map_or(0, |v| v.credit)
                .min(i64::MAX as u64);
            i64::try_from(allowed(ep, now, peer, dst, c)).unwrap_or(i64::MAX)
        }
    };
    // Adjusted by the difference: what the sealing threads spend meanwhile
    // stays debited (and is found by the next sync).
    gate.budget.fetch_add(target - held, Ordering::Relaxed);
    gate.synced.store(target, Ordering::Relaxed);
    dst.is_some()
}

#[cfg(test)]
mod tests {
    use hip_proto::crypto::DhGroup;
    use hip_proto::engine::testing::{
        IdentityKind, LinkConfig, Pair, Side, addr, backend, test_identity,
    };
    use hip_proto::engine::{Config, LocalLocator, Transmit};

    use super::*;

    const A1: u16 = 1;
    const B1: u16 = 2;
    const B2: u16 = 0x22;

    fn endpoint(n: usize, seed: u8, now: Instant) -> Endpoint {
        let c = Config {
            puzzle_k: 1,
            dh_groups: vec![DhGroup::EcdhP256],
            ..Config::default()
        };
        Endpoint::new(
            c,
            vec![test_identity(IdentityKind::EcdsaP256, n)],
            backend(),
            [seed; 32],
            now,
        )
        .expect("endpoint")
    }

    /// A and B associated (A1 ↔ B1); B's HIT.
    fn established() -> (Pair, Hit) {
        let now = Instant::now();
        let mut p = Pair::new(
            endpoint(0, 1, now),
            addr(A1),
            endpoint(1, 2, now),
            addr(B1),
            now,
            LinkConfig::default(),
            5,
        );
        let b_hit = p.b.endpoint.local_hits()[0];
        assert!(p.establish(addr(B1)));
        (p, b_hit)
    }

    fn state(p: &Pair, b_hit: Hit, n: u16) -> Option<LocatorState> {
        p.a.endpoint
            .locators(b_hit)?
            .peer
            .iter()
            .find(|l| l.addr == addr(n))
            .map(|l| l.state)
    }

    /// B announces `locs` (the first preferred) while everything A sends to
    /// B2 is lost, so B2 stays UNVERIFIED at A.
    fn announce_unverifiable(p: &mut Pair, b_hit: Hit, locs: &[u16]) {
        p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
            !(side == Side::A && t.dst == addr(B2))
        })));
        if !locs.contains(&B1) {
            p.b.addr = addr(B2);
        }
        let t = p.now;
        let set = locs
            .iter()
            .enumerate()
            .map(|(i, &n)| LocalLocator {
                addr: addr(n),
                ifindex: 7,
                preferred: i == 0,
            })
            .collect();
        p.b.endpoint.set_local_locators(t, set);
        assert!(p.run_until(Duration::from_secs(1), |p| {
            state(p, b_hit, B2) == Some(LocatorState::Unverified)
        }));
    }

    #[test]
    fn an_open_gate_admits_everything_without_credit() {
        let g = Gate::default();
        assert!(!g.limited());
        assert_eq!(g.admit(addr(B2), 1 << 20), Admit::Free);
        assert_eq!(g.budget(), 0);
    }

    #[test]
    fn the_gate_spends_exactly_the_engine_credit_and_opens_on_verification() {
        let (mut p, b_hit) = established();
        announce_unverifiable(&mut p, b_hit, &[B2]);
        assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B2))));
        let g = Gate::default();
        let t = p.now;
        assert!(sync(&g, &mut p.a.endpoint, t, b_hit));
        assert!(g.limited());
        assert_eq!(g.budget(), 0, "nothing received yet");
        assert_eq!(g.admit(addr(B2), 1), Admit::Refused);
        // The deprecated old locator is not the gate's business.
        assert_eq!(g.admit(addr(B1), 100), Admit::Free);

        p.a.endpoint.on_data_received(t, b_hit, 1234);
        assert!(sync(&g, &mut p.a.endpoint, t, b_hit));
        assert_eq!(g.budget(), 1234, "the whole credit");
        assert_eq!(g.admit(addr(B2), 1000), Admit::Debited);
        assert_eq!(g.admit(addr(B2), 235), Admit::Refused);
        assert_eq!(g.admit(addr(B2), 234), Admit::Debited);
        assert_eq!(g.budget(), 0);
        assert_eq!(g.admit(addr(B2), 1), Admit::Refused);
        let credit = |p: &Pair| p.a.endpoint.locators(b_hit).expect("view").credit;
        assert_eq!(credit(&p), 1234, "debited at the next sync");
        assert!(sync(&g, &mut p.a.endpoint, t, b_hit));
        assert_eq!(credit(&p), 0);
        assert_eq!(g.budget(), 0);

        // The credit ages in the engine: 1234 × 7/8 (rounded down) 5 s on.
        p.a.endpoint.on_data_received(t, b_hit, 1234);
        assert!(sync(&g, &mut p.a.endpoint, t, b_hit));
        assert_eq!(g.budget(), 1234);
        let later = t + Duration::from_secs(5);
        assert!(sync(&g, &mut p.a.endpoint, later, b_hit));
        assert_eq!(g.budget(), 1079);
        assert_eq!(g.admit(addr(B2), 79), Admit::Debited);
        assert!(sync(&g, &mut p.a.endpoint, later, b_hit));
        assert_eq!(credit(&p), 1000);
        assert_eq!(g.budget(), 1000);
        // Spending more than the aged credit (an ageing step between two
        // syncs) empties it.
        assert_eq!(g.admit(addr(B2), 950), Admit::Debited);
        let much_later = later + Duration::from_secs(5);
        assert!(sync(&g, &mut p.a.endpoint, much_later, b_hit));
        assert_eq!(credit(&p), 0);
        assert_eq!(g.budget(), 0);
        p.a.endpoint.on_data_received(much_later, b_hit, 500);
        assert!(sync(&g, &mut p.a.endpoint, much_later, b_hit));
        assert_eq!(g.budget(), 500);

        // B2 verified: the gate opens at the next sync; the credit stays
        // with the engine.
        p.set_filter(None);
        assert!(p.run_until(Duration::from_secs(30), |p| {
            state(p, b_hit, B2) == Some(LocatorState::Active)
        }));
        let now = p.now.max(much_later);
        assert!(!sync(&g, &mut p.a.endpoint, now, b_hit));
        assert!(!g.limited());
        assert_eq!(g.budget(), 0);
        assert_eq!(g.admit(addr(B2), 1 << 20), Admit::Free);
        assert_eq!(credit(&p), 500);
    }

    #[test]
    fn with_an_active_locator_unverified_ones_get_no_credit() {
        let (mut p, b_hit) = established();
        // B adds B2 (preferred) and keeps B1: B1 stays ACTIVE.
        announce_unverifiable(&mut p, b_hit, &[B2, B1]);
        assert_eq!(state(&p, b_hit, B1), Some(LocatorState::Active));
        let t = p.now;
        p.a.endpoint.on_data_received(t, b_hit, 100_000);
        let g = Gate::default();
        assert!(sync(&g, &mut p.a.endpoint, t, b_hit));
        assert_eq!(g.budget(), 0);
        assert_eq!(g.admit(addr(B2), 1), Admit::Refused);
        assert_eq!(g.admit(addr(B1), 1400), Admit::Free);
        assert_eq!(p.a.endpoint.locators(b_hit).expect("view").credit, 100_000);
    }

    #[test]
    fn without_an_association_the_gate_is_open() {
        let now = Instant::now();
        let mut ep = endpoint(0, 3, now);
        let g = Gate::default();
        let stranger = endpoint(1, 4, now).local_hits()[0];
        assert!(!sync(&g, &mut ep, now, stranger));
        assert_eq!(g.admit(addr(B2), 1400), Admit::Free);
    }
}
