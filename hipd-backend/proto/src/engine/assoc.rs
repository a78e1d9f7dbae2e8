//! Per-peer association state.
//!
//! The UPDATE layer (SEQ/ACK, LOCATOR_SET, address verification, rekey)
//! builds on this struct: the locator sets already carry preference and
//! verification state, the KEYMAT drawer and the HIP keys stay here after
//! the base exchange, and the SPIs are indexed by the endpoint's SPI map.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AssocId, Transport};
use crate::crypto::{self, DhGroup, DhKeyPair, EspSuite, HashAlg, HipCipher, HipKeys, Keymat};
use crate::wire::Hit;

/// RFC 7401 §4.4 association states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No state (never stored; reported for unknown peers).
    Unassociated,
    /// I1 sent, waiting for R1.
    I1Sent,
    /// I2 sent, waiting for R2.
    I2Sent,
    /// R2 sent, waiting for the first data / UPDATE or the EC timeout.
    R2Sent,
    /// Established.
    Established,
    /// CLOSE sent, waiting for CLOSE_ACK.
    Closing,
    /// CLOSE received and acknowledged.
    Closed,
    /// The exchange failed.
    Failed,
}

/// Our role in the base exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent I1/I2.
    Initiator,
    /// We sent R1/R2.
    Responder,
}

/// Verification state of a peer locator (RFC 8046 §5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocatorState {
    /// Announced but not verified.
    Unverified,
    /// Verified (the base-exchange address is ACTIVE).
    Active,
    /// Lifetime expired.
    Deprecated,
}

/// A peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLocator {
    /// Address.
    pub addr: IpAddr,
    /// Verification state.
    pub state: LocatorState,
    /// Preferred for sending (the peer's P bit, or chosen with
    /// [`Endpoint::set_peer_preferred`](super::Endpoint::set_peer_preferred)).
    pub preferred: bool,
    /// Lifetime in seconds (`u32::MAX` = unbounded).
    pub lifetime: u32,
    /// When the lifetime runs out (`None`: unbounded).
    pub expires: Option<Instant>,
    /// The SPI of a Type-1 locator (`None` for Type 0 and the BEX address).
    pub spi: Option<u32>,
}

/// A local address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLocator {
    /// Address.
    pub addr: IpAddr,
    /// Interface index of the address (0 = unknown); informational, kept
    /// so the daemon and the shim API can map paths to interfaces.
    pub ifindex: u32,
    /// Preferred for sending.
    pub preferred: bool,
}

/// The algorithms negotiated in the base exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suites {
    /// DH group.
    pub dh_group: DhGroup,
    /// HIP cipher (ENCRYPTED).
    pub hip_cipher: HipCipher,
    /// ESP transform.
    pub esp: EspSuite,
    /// RHASH (puzzle, HIP_MAC, KEYMAT) = the Responder's HIT suite hash.
    pub rhash: HashAlg,
}

/// A retransmitted packet (I1, I2, CLOSE): every retransmission goes to
/// the single pair `src` → `dst` (even when the first I1 went to several).
#[derive(Debug, Clone)]
pub(crate) struct Retx {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub payload: Vec<u8>,
    pub deadline: Instant,
    /// The running timeout (the one ending at `deadline`).
    pub timeout: Duration,
    pub limit: RetxLimit,
}

/// When a [`Retx`] gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetxLimit {
    /// After this many more retransmissions (timeout doubled each time):
    /// I1, I2.
    Retries(u32),
    /// Once the summed timeouts exceed `budget` (CLOSE: UAL + MSL); the
    /// timeout doubles up to `max_timeout`. `spent` sums the timeouts
    /// expired so far.
    Summed {
        spent: Duration,
        budget: Duration,
        max_timeout: Duration,
    },
}

impl Retx {
    /// A packet first sent at `now`, retransmitted after `timeout`.
    pub fn new(
        src: Option<IpAddr>,
        dst: IpAddr,
        payload: Vec<u8>,
        now: Instant,
        timeout: Duration,
        limit: RetxLimit,
    ) -> Retx {
        Retx {
            src,
            dst,
            payload,
            deadline: now + timeout,
            timeout,
            limit,
        }
    }

    /// The running timeout expired at `now`: returns true to retransmit
    /// (the next timeout is armed), false to give up.
    pub fn expire(&mut self, now: Instant) -> bool {
        let next = match &mut self.limit {
            RetxLimit::Retries(0) => return false,
            RetxLimit::Retries(n) => {
                *n -= 1;
                self.timeout.saturating_mul(2)
            }
            RetxLimit::Summed {
                spent,
                budget,
                max_timeout,
            } => {
                *spent = spent.saturating_add(self.timeout);
                if *spent > *budget {
                    return false;
                }
                // Never below the current timeout (a cap under the
                // initial timeout acts as the initial timeout).
                self.timeout
                    .saturating_mul(2)
                    .min(*max_timeout)
                    .max(self.timeout)
            }
        };
        self.timeout = next;
        self.deadline = now + next;
        true
    }
}

/// One association (one per HIT pair).
#[derive(Debug)]
pub struct Association {
    pub(crate) id: AssocId,
    pub(crate) state: State,
    pub(crate) role: Role,
    pub(crate) local_hit: Hit,
    pub(crate) local_identity: usize,
    pub(crate) peer_hit: Option<Hit>,
    pub(crate) peer_host_id: Option<crypto::HostId>,
    /// Responder's HOST_ID TLV exactly as in R1 (for HIP_MAC_2).
    pub(crate) r1_host_id_tlv: Vec<u8>,
    pub(crate) local_locators: Vec<LocalLocator>,
    pub(crate) peer_locators: Vec<PeerLocator>,
    pub(crate) transport: Transport,
    pub(crate) suites: Option<Suites>,
    pub(crate) keymat: Option<Keymat>,
    pub(crate) hip_keys: Option<HipKeys>,
    pub(crate) keymat_index: u16,
    pub(crate) spi_in: u32,
    pub(crate) spi_out: u32,
    pub(crate) r1_counter: Option<u64>,
    pub(crate) retx: Option<Retx>,
    /// Deadline of the current state (EC timeout, CLOSED/E-FAILED hold).
    pub(crate) state_deadline: Option<Instant>,
    pub(crate) close_echo: Option<Vec<u8>>,
    /// Responder: (#J, DH public) of the I2 that built the association.
    pub(crate) i2_fingerprint: Option<(Vec<u8>, Vec<u8>)>,
    /// Responder: the R2 sent, for duplicate I2s.
    pub(crate) last_r2: Option<Vec<u8>>,
    /// Initiator: the DH groups offered in our I1.
    pub(crate) offered_groups: Vec<DhGroup>,
    /// Initiator: local identities this exchange already used (HIT suite
    /// fallback never returns to one of them).
    pub(crate) tried_identities: Vec<usize>,
    /// #I and #J of the base exchange (the KEYMAT salt, reused on rekey).
    pub(crate) puzzle_ij: Option<(Vec<u8>, Vec<u8>)>,
    /// Our last DH key pair (base exchange, or the last rekey that sent a
    /// new one), reused when only the peer sends a new DH (RFC 7402).
    pub(crate) dh_local: Option<Arc<dyn DhKeyPair>>,
    /// The peer's last DH public value, reused when only we send a new DH.
    pub(crate) dh_peer_public: Option<Vec<u8>>,
    /// UPDATE / mobility / rekey state.
    pub(crate) upd: super::endpoint::update::UpdateState,
    /// NOTIFY token bucket: (tokens in millionths, last refill); `None`
    /// while full and unused.
    pub(crate) notify_bucket: Option<(u64, Instant)>,
}

impl Association {
    pub(crate) fn new(id: AssocId, role: Role, local_hit: Hit, local_identity: usize) -> Self {
        Association {
            id,
            state: State::Unassociated,
            role,
            local_hit,
            local_identity,
            peer_hit: None,
            peer_host_id: None,
            r1_host_id_tlv: Vec::new(),
            local_locators: Vec::new(),
            peer_locators: Vec::new(),
            transport: Transport::Native,
            suites: None,
            keymat: None,
            hip_keys: None,
            keymat_index: 0,
            spi_in: 0,
            spi_out: 0,
            r1_counter: None,
            retx: None,
            state_deadline: None,
            close_echo: None,
            i2_fingerprint: None,
            last_r2: None,
            offered_groups: Vec::new(),
            tried_identities: vec![local_identity],
            puzzle_ij: None,
            dh_local: None,
            dh_peer_public: None,
            upd: super::endpoint::update::UpdateState::default(),
            notify_bucket: None,
        }
    }

    /// Handle.
    pub fn id(&self) -> AssocId {
        self.id
    }
    /// State.
    pub fn state(&self) -> State {
        self.state
    }
    /// Our role in the base exchange.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Our HIT.
    pub fn local_hit(&self) -> Hit {
        self.local_hit
    }
    /// The peer's HIT (`None` while an opportunistic I1 is outstanding).
    pub fn peer_hit(&self) -> Option<Hit> {
        self.peer_hit
    }
    /// The peer's Host Identity once learned.
    pub fn peer_host_id(&self) -> Option<&crypto::HostId> {
        self.peer_host_id.as_ref()
    }
    /// Negotiated algorithms (after R1 / I2).
    pub fn suites(&self) -> Option<Suites> {
        self.suites
    }
    /// Our inbound SPI (0 before it is chosen).
    pub fn spi_inbound(&self) -> u32 {
        self.spi_in
    }
    /// The peer's inbound SPI = our outbound SPI (0 before it is known).
    pub fn spi_outbound(&self) -> u32 {
        self.spi_out
    }
    /// KEYMAT index where the ESP keys of the base exchange start.
    pub fn keymat_index(&self) -> u16 {
        self.keymat_index
    }
    /// Local locators.
    pub fn local_locators(&self) -> &[LocalLocator] {
        &self.local_locators
    }
    /// Peer locators.
    pub fn peer_locators(&self) -> &[PeerLocator] {
        &self.peer_locators
    }
    /// Control transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }
    /// The preferred peer locator (the first ACTIVE preferred one, else the
    /// first one).
    pub fn preferred_peer_locator(&self) -> Option<IpAddr> {
        self.peer_locators
            .iter()
            .find(|l| l.preferred && l.state == LocatorState::Active)
            .or(self.peer_locators.first())
            .map(|l| l.addr)
    }
    /// The preferred local locator.
    pub fn preferred_local_locator(&self) -> Option<IpAddr> {
        self.local_locators
            .iter()
            .find(|l| l.preferred)
            .or(self.local_locators.first())
            .map(|l| l.addr)
    }
    /// Whether we are HOST_g (greater HIT) toward the peer.
    pub fn local_is_g(&self) -> bool {
        self.peer_hit.is_some_and(|p| self.local_hit > p)
    }

    pub(crate) fn set_exchange_locators(&mut self, local: IpAddr, peer: IpAddr) {
        self.local_locators = vec![LocalLocator {
            addr: local,
            ifindex: 0,
            preferred: true,
        }];
        let mut others: Vec<PeerLocator> = self
            .peer_locators
            .iter()
            .filter(|l| l.addr != peer)
            .cloned()
            .map(|mut l| {
                l.preferred = false;
                l
            })
            .collect();
        let mut v = vec![PeerLocator {
            addr: peer,
            state: LocatorState::Active,
            preferred: true,
            lifetime: u32::MAX,
            expires: None,
            spi: None,
        }];
        v.append(&mut others);
        self.peer_locators = v;
        self.upd.path = Some((local, peer));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.retx.as_ref().map(|r| r.deadline),
            self.state_deadline,
            self.upd.next_deadline(),
            self.peer_locators
                .iter()
                .filter(|l| l.state != LocatorState::Deprecated)
                .filter_map(|l| l.expires)
                .min()
                .filter(|_| matches!(self.state, State::Established | State::R2Sent)),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn a(n: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
    }

    #[test]
    fn exchange_locator_becomes_active_and_preferred() {
        let mut s = Association::new(AssocId(1), Role::Initiator, Hit::from_u128(5), 0);
        s.peer_locators = [a(3), a(4)]
            .iter()
            .map(|&addr| PeerLocator {
                addr,
                state: LocatorState::Unverified,
                preferred: addr == a(3),
                lifetime: u32::MAX,
                expires: None,
                spi: None,
            })
            .collect();
        s.set_exchange_locators(a(1), a(4));
        assert_eq!(s.preferred_peer_locator(), Some(a(4)));
        assert_eq!(s.peer_locators()[0].state, LocatorState::Active);
        assert_eq!(s.peer_locators()[1].addr, a(3));
        assert!(!s.peer_locators()[1].preferred);
        assert_eq!(s.peer_locators()[1].state, LocatorState::Unverified);
        assert_eq!(s.preferred_local_locator(), Some(a(1)));
    }

    #[test]
    fn g_role_and_deadlines() {
        let mut s = Association::new(AssocId(1), Role::Responder, Hit::from_u128(9), 0);
        assert!(!s.local_is_g(), "unknown peer");
        s.peer_hit = Some(Hit::from_u128(3));
        assert!(s.local_is_g());
        let t = Instant::now();
        assert_eq!(s.next_deadline(), None);
        s.state_deadline = Some(t + Duration::from_secs(5));
        s.retx = Some(Retx::new(
            None,
            a(1),
            vec![],
            t,
            Duration::from_secs(2),
            RetxLimit::Retries(1),
        ));
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(2)));
    }

    /// Expires `r` on time until it gives up: (offsets of the
    /// retransmissions, offset of the give-up).
    fn run_out(mut r: Retx, t: Instant) -> (Vec<Duration>, Duration) {
        let mut sent = Vec::new();
        loop {
            let now = r.deadline;
            if !r.expire(now) {
                return (sent, now - t);
            }
            sent.push(now - t);
        }
    }

    #[test]
    fn retries_limit_doubles_the_timeout() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let r = Retx::new(None, a(1), vec![], t, s(1), RetxLimit::Retries(5));
        let (sent, gave_up) = run_out(r, t);
        assert_eq!(sent, [1, 3, 7, 15, 31].map(s));
        assert_eq!(gave_up, s(63));
    }

    #[test]
    fn summed_limit_caps_the_timeout_and_stops_past_the_budget() {
        let t = Instant::now();
        let s = Duration::from_secs;
        let summed = |budget, max| RetxLimit::Summed {
            spent: Duration::ZERO,
            budget: s(budget),
            max_timeout: s(max),
        };
        // Timeouts 1, 2, 4, 4, 4, 4: sums 1, 3, 7, 11, 15 (= the budget,
        // not above it: resent), 19 (above: give up).
        let r = Retx::new(None, a(1), vec![], t, s(1), summed(15, 4));
        let (sent, gave_up) = run_out(r, t);
        assert_eq!(sent, [1, 3, 7, 11, 15].map(s));
        assert_eq!(gave_up, s(19));
        // A cap below the initial timeout keeps the initial timeout.
        let r = Retx::new(None, a(1), vec![], t, s(2), summed(7, 1));
        let (sent, gave_up) = run_out(r, t);
        assert_eq!(sent, [2, 4, 6].map(s));
        assert_eq!(gave_up, s(8));
        // The defaults: UAL + MSL = 1020 s, 1 s doubling to 64 s.
        let r = Retx::new(None, a(1), vec![], t, s(1), summed(1020, 64));
        let (sent, gave_up) = run_out(r, t);
        let mut want: Vec<Duration> = [1, 3, 7, 15, 31, 63].map(s).to_vec();
        want.extend((1..=14).map(|k| s(63 + 64 * k)));
        assert_eq!(sent, want);
        assert_eq!(gave_up, s(1023));
    }
}
