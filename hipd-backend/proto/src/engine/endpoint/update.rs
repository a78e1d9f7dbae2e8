//! UPDATE: SEQ/ACK reliability, LOCATOR_SET (mobility and multihoming),
//! address verification, credit-based authorization, rekeying and path
//! probing (RFC 7401 §6.11–6.12, RFC 7402 §6.9–6.10, RFC 8046, RFC 8047).
//!
//! See the [engine module docs](crate::engine) ("UPDATE layer") for the
//! choices the RFCs leave open.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::{Endpoint, Reason, Reject, Res};
use crate::crypto::{BeetAddrs, DhKeyPair, InnerFamily, Keymat, SaDirection};
use crate::engine::assoc::{Association, State};
use crate::engine::{
    AssocId, Datagram, EngineError, EstablishedSas, Event, LocalLocator, LocatorState, PeerLocator,
    RekeyAnswerDh, SaChange, Transmit,
};
use crate::wire::{
    self, DhGroupId, Hit, Locator, LocatorKind, Packet, PacketRepr, PacketType, Param, TrafficType,
    param_type as pt,
};

/// Received Update IDs remembered below the highest one (the SEQ replay
/// window): a SEQ inside it is re-ACKed if seen, processed if not; older
/// ones are dropped.
pub const SEQ_WINDOW: u32 = 64;
/// Most SA pairs (the primary one and those added with `ESP_INFO(OLD =
/// 0)`) an association keeps; further additions are refused
/// ([`EngineError::SaPairLimit`]; a peer's request is dropped
/// unacknowledged and counted in `Stats::unsupported`).
pub const MAX_SA_PAIRS: usize = 8;
/// Replies to received SEQs kept for retransmission on duplicates.
const STORED_REPLIES: usize = 16;
/// Credit ageing period and factor (RFC 8046 §5.6: ×7/8 every 5 s).
const CREDIT_AGEING: Duration = Duration::from_secs(5);
/// ECHO nonce length for address verification and probes.
const NONCE_LEN: usize = 16;
/// Prefix of the ECHO_REQUEST_SIGNED opaque data of an exploring probe
/// ([`Endpoint::probe_exploring`]); the random nonce follows.
pub const EXPLORING_MARKER: [u8; 4] = *b"REAP";

/// Whether ECHO_REQUEST_SIGNED opaque data marks an exploring probe.
fn is_exploring_echo(e: &[u8]) -> bool {
    e.len() == EXPLORING_MARKER.len() + NONCE_LEN && e.starts_with(&EXPLORING_MARKER)
}

/// What a SEQ-bearing UPDATE we sent is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// LOCATOR_SET announcement.
    Announce,
    /// Our rekey request.
    Rekey,
    /// A SEQ-bearing reply (rekey answer).
    Reply,
    /// Address verification of a peer locator.
    Verify { addr: IpAddr, nonce: Vec<u8> },
    /// A probe of a locator pair.
    Probe {
        id: u64,
        src: IpAddr,
        dst: IpAddr,
        nonce: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    seq: u32,
    purpose: Purpose,
    src: Option<IpAddr>,
    dst: IpAddr,
    payload: Vec<u8>,
    first_sent: Instant,
    deadline: Instant,
    timeout: Duration,
    retries_left: u32,
    retransmitted: bool,
}

/// The SA operation of an outstanding ESP_INFO request (ours or answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SaOp {
    /// `ESP_INFO(OLD = primary, NEW)`: replace the primary pair.
    Rekey,
    /// `ESP_INFO(OLD = 0, NEW)`: add a pair (RFC 8046 multihoming).
    Add,
    /// `ESP_INFO(OLD, NEW = 0)`: delete the pair (inbound, outbound).
    Delete { spi_in: u32, spi_out: u32 },
}

#[derive(Debug)]
pub(crate) struct RekeyState {
    seq: u32,
    op: SaOp,
    /// Our new inbound SPI (0 for a deletion: none is reserved).
    new_spi_in: u32,
    index: u16,
    dh: Option<Box<dyn DhKeyPair>>,
}

#[derive(Debug, Clone)]
struct StoredReply {
    seq: u32,
    src: Option<IpAddr>,
    dst: IpAddr,
    payload: Vec<u8>,
}

/// Per-association UPDATE state.
#[derive(Debug, Default)]
pub(crate) struct UpdateState {
    next_seq: u32,
    pending: Vec<Pending>,
    peer_seq_max: Option<u32>,
    /// Bit i set: Update ID `peer_seq_max - i` was received.
    peer_seq_bits: u64,
    replies: VecDeque<StoredReply>,
    srtt: Option<Duration>,
    rekey: Option<RekeyState>,
    /// (inbound, outbound) SPIs replaced by the last rekey, until retired.
    pub(crate) old_sas: Option<(u32, u32)>,
    /// Live (inbound, outbound) SA pairs besides the primary one
    /// (`Association::spi_in`/`spi_out`), oldest first: pairs that were
    /// primary before an `ESP_INFO(OLD = 0)` addition.
    pub(crate) extra_sas: Vec<(u32, u32)>,
    credit: u64,
    credit_at: Option<Instant>,
    /// The locator pair in use (src, dst).
    pub(crate) path: Option<(IpAddr, IpAddr)>,
    /// A peer locator to make preferred once verified.
    want_preferred: Option<IpAddr>,
    /// The pair forced by [`Endpoint::set_path`] (src, dst).
    forced: Option<(IpAddr, IpAddr)>,
    /// A pair to force once its destination is verified.
    want_forced: Option<(IpAddr, IpAddr)>,
    /// When our finite-lifetime LOCATOR_SET must be re-announced.
    announce_at: Option<Instant>,
}

impl UpdateState {
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .iter()
            .map(|p| p.deadline)
            .chain(self.announce_at)
            .min()
    }

    /// The inbound SPI reserved by our outstanding rekey.
    pub(crate) fn rekey_spi(&self) -> Option<u32> {
        self.rekey
            .as_ref()
            .map(|r| r.new_spi_in)
            .filter(|&s| s != 0)
    }

    /// The inbound SPIs of the live pairs besides the primary one.
    pub(crate) fn extra_inbound_spis(&self) -> impl Iterator<Item = u32> + '_ {
        self.extra_sas.iter().map(|p| p.0)
    }

    /// Classifies a received Update ID: `Some(true)` new, `Some(false)`
    /// duplicate, `None` too old.
    fn check_seq(&self, seq: u32) -> Option<bool> {
        let Some(max) = self.peer_seq_max else {
            return Some(true);
        };
        let diff = seq.wrapping_sub(max) as i32;
        if diff > 0 {
            return Some(true);
        }
        let back = diff.unsigned_abs();
        if back >= SEQ_WINDOW {
            return None;
        }
        Some(self.peer_seq_bits & (1u64 << back) == 0)
    }

    fn mark_seq(&mut self, seq: u32) {
        match self.peer_seq_max {
            None => {
                self.peer_seq_max = Some(seq);
                self.peer_seq_bits = 1;
            }
            Some(max) => {
                let diff = seq.wrapping_sub(max) as i32;
                if diff > 0 {
                    let shift = diff.unsigned_abs();
                    self.peer_seq_bits = if shift >= 64 {
                        0
                    } else {
                        self.peer_seq_bits << shift
                    } | 1;
                    self.peer_seq_max = Some(seq);
                } else {
                    let back = diff.unsigned_abs();
                    if back < 64 {
                        self.peer_seq_bits |= 1u64 << back;
                    }
                }
            }
        }
    }

    fn age_credit(&self, now: Instant) -> (u64, Option<Instant>) {
        let Some(at) = self.credit_at else {
            return (self.credit, None);
        };
        let elapsed = now.saturating_duration_since(at);
        let periods = elapsed.as_secs() / CREDIT_AGEING.as_secs();
        let mut c = self.credit;
        for _ in 0..periods.min(64) {
            c = c / 8 * 7 + (c % 8) * 7 / 8;
        }
        let step = u32::try_from(periods).unwrap_or(u32::MAX);
        let at = at
            .checked_add(CREDIT_AGEING.saturating_mul(step))
            .unwrap_or(now);
        (c, Some(at))
    }
}

/// A snapshot of an association's locators and path, for the daemon and
/// the shim API ([`Endpoint::locators`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatorsView {
    /// Association.
    pub id: AssocId,
    /// Our locators (with preference and interface).
    pub local: Vec<LocalLocator>,
    /// The peer's locators (with preference, verification state,
    /// lifetime).
    pub peer: Vec<PeerLocator>,
    /// The pair in use now (src, dst), as [`Endpoint::route`].
    pub path: Option<(IpAddr, IpAddr)>,
    /// Current credit (bytes) for sending to UNVERIFIED locators.
    pub credit: u64,
}

fn from_wire_addr(a: Ipv6Addr) -> IpAddr {
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

fn to_wire_addr(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Our source address toward `dst`: the preferred local locator of the
/// same family, else any of that family.
fn choose_src(a: &Association, dst: IpAddr) -> Option<IpAddr> {
    a.local_locators
        .iter()
        .find(|l| l.preferred && same_family(l.addr, dst))
        .or_else(|| a.local_locators.iter().find(|l| same_family(l.addr, dst)))
        .map(|l| l.addr)
}

/// The live SA pairs (inbound, outbound): the primary one, then the
/// others newest first.
fn live_pairs(a: &Association) -> impl Iterator<Item = (u32, u32)> + '_ {
    std::iter::once((a.spi_in, a.spi_out)).chain(a.upd.extra_sas.iter().rev().copied())
}

/// Whether a forced pair is still usable: the destination an ACTIVE peer
/// locator, the source one of our locators of the same family.
fn forced_valid(a: &Association, (src, dst): (IpAddr, IpAddr)) -> bool {
    same_family(src, dst)
        && a.local_locators.iter().any(|l| l.addr == src)
        && a.peer_locators
            .iter()
            .any(|l| l.addr == dst && l.state == LocatorState::Active)
}

/// The pair to use: a valid forced pair ([`Endpoint::set_path`]); else the
/// preferred ACTIVE peer locator (else the current one if still ACTIVE,
/// else any ACTIVE one); only when no ACTIVE locator is reachable, the
/// preferred UNVERIFIED one (credit-limited).
fn choose_path(a: &Association) -> Option<(IpAddr, IpAddr)> {
    if let Some(f) = a.upd.forced
        && forced_valid(a, f)
    {
        return Some(f);
    }
    let cur = a.upd.path.map(|p| p.1);
    let act = |l: &&PeerLocator| l.state == LocatorState::Active;
    let unv = |l: &&PeerLocator| l.state == LocatorState::Unverified;
    let peers = &a.peer_locators;
    let candidates = peers
        .iter()
        .filter(act)
        .filter(|l| l.preferred)
        .chain(peers.iter().filter(act).filter(|l| Some(l.addr) == cur))
        .chain(peers.iter().filter(act))
        .chain(peers.iter().filter(unv).filter(|l| l.preferred))
        .chain(peers.iter().filter(unv));
    for l in candidates {
        if let Some(src) = choose_src(a, l.addr) {
            return Some((src, l.addr));
        }
    }
    None
}

impl Endpoint {
    // ------------------------------------------------------------ public API

    fn live_assoc_id(&self, peer_hit: Hit) -> Option<AssocId> {
        let mut best: Option<(u8, AssocId)> = None;
        for a in self.assocs.values() {
            if a.peer_hit != Some(peer_hit) {
                continue;
            }
            let rank = match a.state {
                State::Established => 0,
                State::R2Sent => 1,
                State::Closing | State::Closed | State::Failed => 3,
                _ => 2,
            };
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, a.id));
            }
        }
        best.map(|b| b.1)
    }

    /// Runs `f` on the live association with `peer_hit`, taken out of the
    /// map (so `f` can use `&mut self`).
    fn with_assoc<T>(
        &mut self,
        peer_hit: Hit,
        f: impl FnOnce(&mut Self, &mut Association) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let id = self
            .live_assoc_id(peer_hit)
            .ok_or(EngineError::UnknownAssociation)?;
        let mut a = self
            .assocs
            .remove(&id)
            .ok_or(EngineError::UnknownAssociation)?;
        let r = f(self, &mut a);
        self.assocs.insert(id, a);
        r
    }

    fn require_established(a: &Association) -> Result<(), EngineError> {
        if matches!(a.state, State::Established | State::R2Sent) && a.hip_keys.is_some() {
            Ok(())
        } else {
            Err(EngineError::NotEstablished)
        }
    }

    /// The locator pair (our source, the peer's address) to use for the
    /// peer now, for ESP and HIP control traffic. The destination may be
    /// UNVERIFIED (only when no ACTIVE locator is usable): check
    /// [`Endpoint::can_send_to`] / [`Endpoint::authorize_send`] first.
    pub fn route(&self, peer_hit: Hit) -> Option<(IpAddr, IpAddr)> {
        let a = self.assocs.get(&self.live_assoc_id(peer_hit)?)?;
        choose_path(a)
    }

    /// The association's local and peer locator sets and the path in use.
    pub fn locators(&self, peer_hit: Hit) -> Option<LocatorsView> {
        let a = self.assocs.get(&self.live_assoc_id(peer_hit)?)?;
        Some(LocatorsView {
            id: a.id,
            local: a.local_locators.clone(),
            peer: a.peer_locators.clone(),
            path: choose_path(a),
            credit: a.upd.credit,
        })
    }

    /// The host's addresses changed: sets the local locators of every
    /// ESTABLISHED (or R2-SENT) association and announces them with
    /// `UPDATE(ESP_INFO(OLD = NEW), LOCATOR_SET, SEQ)`. Each LOCATOR_SET
    /// lists all addresses (Type 1: our inbound SPI and the address).
    ///
    /// Per association the preferred address is the one flagged
    /// `preferred` in `locators`; without a flag, the address in use if it
    /// is still present, else the first one whose family reaches the peer
    /// (readdress). The UPDATE goes from the new preferred address to the
    /// peer's address in use. Associations whose set did not change send
    /// nothing. The set is remembered and given to associations
    /// established later (announced when it holds more than the exchange
    /// address). An empty set sends nothing (there is no source address).
    pub fn set_local_locators(&mut self, now: Instant, locators: Vec<LocalLocator>) {
        self.local_locators = Some(locators.clone());
        self.for_each_established(|ep, a| ep.apply_local_locators(now, a, &locators));
    }

    /// Runs `f` on every ESTABLISHED (or R2-SENT) association, each taken
    /// out of the table while `f` has it (so `f` may use the endpoint).
    fn for_each_established(&mut self, mut f: impl FnMut(&mut Self, &mut Association)) {
        let ids: Vec<AssocId> = self
            .assocs
            .values()
            .filter(|a| Self::require_established(a).is_ok())
            .map(|a| a.id)
            .collect();
        for id in ids {
            let Some(mut a) = self.assocs.remove(&id) else {
                continue;
            };
            f(self, &mut a);
            self.assocs.insert(id, a);
        }
    }

    /// Announces the current local locators to every ESTABLISHED (or
    /// R2-SENT) association whether or not they changed (HIPL's `hipconf
    /// daemon manual-update`): `UPDATE(ESP_INFO, LOCATOR_SET, SEQ)`, which
    /// replaces an announcement still waiting for its ACK. Returns how many
    /// UPDATEs were sent. Associations without a local locator set (none
    /// was ever given) announce the address of their exchange.
    pub fn announce_to_all(&mut self, now: Instant) -> usize {
        let mut sent = 0;
        self.for_each_established(|ep, a| {
            if a.local_locators.is_empty()
                && let Some((src, _)) = a.upd.path
            {
                a.local_locators = vec![LocalLocator {
                    addr: src,
                    ifindex: 0,
                    preferred: true,
                }];
            }
            if ep.announce_locators(now, a).is_ok() {
                sent += 1;
            }
        });
        sent
    }

    fn apply_local_locators(&mut self, now: Instant, a: &mut Association, given: &[LocalLocator]) {
        let mut locs: Vec<LocalLocator> = Vec::with_capacity(given.len());
        for l in given {
            if !locs.iter().any(|x| x.addr == l.addr) {
                locs.push(l.clone());
            }
        }
        let cur_src = a.upd.path.map(|p| p.0);
        let peer_dst = a.upd.path.map(|p| p.1).or(a.preferred_peer_locator());
        let pick = locs
            .iter()
            .position(|l| l.preferred)
            .or_else(|| locs.iter().position(|l| Some(l.addr) == cur_src))
            .or_else(|| {
                locs.iter()
                    .position(|l| peer_dst.is_some_and(|d| same_family(l.addr, d)))
            })
            .or(if locs.is_empty() { None } else { Some(0) });
        for (i, l) in locs.iter_mut().enumerate() {
            l.preferred = Some(i) == pick;
        }
        if locs == a.local_locators {
            return;
        }
        a.local_locators = locs;
        self.refresh_path(now, a);
        if !a.local_locators.is_empty() {
            let _ = self.announce_locators(now, a);
        }
    }

    /// Makes the peer locator `addr` the preferred destination. An
    /// UNVERIFIED locator is verified first (ECHO_REQUEST_SIGNED sent to
    /// it); the switch ([`Event::PathChanged`]) happens when the echo
    /// returns. Returns whether the switch happened at once.
    pub fn set_peer_preferred(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        addr: IpAddr,
    ) -> Result<bool, EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            Self::require_established(a)?;
            let state = a
                .peer_locators
                .iter()
                .find(|l| l.addr == addr)
                .map(|l| l.state)
                .ok_or(EngineError::UnknownLocator(addr))?;
            if state != LocatorState::Deprecated {
                a.upd.forced = None;
                a.upd.want_forced = None;
            }
            match state {
                LocatorState::Deprecated => Err(EngineError::DeprecatedLocator(addr)),
                LocatorState::Active => {
                    for l in &mut a.peer_locators {
                        l.preferred = l.addr == addr;
                    }
                    a.upd.want_preferred = None;
                    ep.refresh_path(now, a);
                    Ok(true)
                }
                LocatorState::Unverified => {
                    a.upd.want_preferred = Some(addr);
                    if !ep.verifying(a, addr) {
                        ep.start_verify(now, a, addr)?;
                    }
                    Ok(false)
                }
            }
        })
    }

    /// Makes our local locator `addr` the preferred source for this peer
    /// and announces it (LOCATOR_SET with the P bit moved), so the peer
    /// answers to it too.
    pub fn set_local_preferred(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        addr: IpAddr,
    ) -> Result<(), EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            Self::require_established(a)?;
            if !a.local_locators.iter().any(|l| l.addr == addr) {
                return Err(EngineError::UnknownLocator(addr));
            }
            if a.upd.forced.take().is_some() | a.upd.want_forced.take().is_some() {
                ep.refresh_path(now, a);
            }
            if a.local_locators
                .iter()
                .any(|l| l.addr == addr && l.preferred)
            {
                return Ok(());
            }
            for l in &mut a.local_locators {
                l.preferred = l.addr == addr;
            }
            ep.refresh_path(now, a);
            ep.announce_locators(now, a)
        })
    }

    /// Forces the pair (`src`, `dst`) for this peer, without changing
    /// preference flags (the REAP detector's switch). `dst` must be a
    /// non-deprecated peer locator and `src` one of our locators of the same
    /// family. An ACTIVE `dst` is used at once ([`Event::PathChanged`] if the
    /// pair changed; returns true); an UNVERIFIED one is verified first
    /// (ECHO_REQUEST_SIGNED, as [`Endpoint::set_peer_preferred`]) and the
    /// pair is forced when the echo returns (returns false; a failed
    /// verification forgets it). The forced pair stays in use until one of
    /// its locators is gone or deprecated, or [`Endpoint::set_peer_preferred`],
    /// [`Endpoint::set_local_preferred`] or another `set_path` replaces it.
    pub fn set_path(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<bool, EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            Self::require_established(a)?;
            if !a.local_locators.iter().any(|l| l.addr == src) || !same_family(src, dst) {
                return Err(EngineError::UnknownLocator(src));
            }
            let state = a
                .peer_locators
                .iter()
                .find(|l| l.addr == dst)
                .map(|l| l.state)
                .ok_or(EngineError::UnknownLocator(dst))?;
            match state {
                LocatorState::Deprecated => Err(EngineError::DeprecatedLocator(dst)),
                LocatorState::Active => {
                    a.upd.forced = Some((src, dst));
                    a.upd.want_forced = None;
                    ep.refresh_path(now, a);
                    Ok(true)
                }
                LocatorState::Unverified => {
                    a.upd.want_forced = Some((src, dst));
                    if !ep.verifying(a, dst) {
                        ep.start_verify(now, a, dst)?;
                    }
                    Ok(false)
                }
            }
        })
    }

    /// Starts a rekey: `UPDATE(ESP_INFO(OLD, NEW SPI, KEYMAT Index), SEQ,
    /// [DIFFIE_HELLMAN])`. With `new_dh` a fresh DH key of the
    /// association's group is sent (the peer must answer with its own; the
    /// new KEYMAT starts at index 0). [`Event::SasRekeyed`] follows when the
    /// peer's answer arrives.
    pub fn rekey(&mut self, now: Instant, peer_hit: Hit, new_dh: bool) -> Result<(), EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            ep.start_sa_op(now, a, SaOp::Rekey, new_dh)
        })
    }

    /// Adds an SA pair (RFC 8046 multihoming / load balancing):
    /// `UPDATE(ESP_INFO(OLD = 0, NEW SPI, KEYMAT Index), SEQ,
    /// [DIFFIE_HELLMAN])`; the peer answers `UPDATE(ESP_INFO(OLD = 0, its
    /// new SPI), SEQ, ACK, [DH])`. Keys as for [`Endpoint::rekey`]. When the
    /// answer arrives, [`Event::SasRekeyed`] with [`SaChange::Added`] hands
    /// out the new pair, which becomes the primary one; the previous pair
    /// stays valid until [`Endpoint::delete_sa`] (or the peer) deletes it.
    pub fn add_sa(&mut self, now: Instant, peer_hit: Hit, new_dh: bool) -> Result<(), EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            if a.upd.extra_sas.len() + 1 >= MAX_SA_PAIRS {
                return Err(EngineError::SaPairLimit);
            }
            ep.start_sa_op(now, a, SaOp::Add, new_dh)
        })
    }

    /// Deletes the live SA pair whose inbound SPI is `inbound_spi`:
    /// `UPDATE(ESP_INFO(OLD = inbound_spi, NEW = 0), SEQ)`; the peer deletes
    /// its side and answers `UPDATE(ESP_INFO(OLD = its inbound SPI, NEW =
    /// 0), SEQ, ACK)`, upon which [`Event::SasRetired`] names the pair. The
    /// pair keeps working until then. Deleting the primary pair makes the
    /// most recently added remaining pair primary. The last pair cannot be
    /// deleted ([`EngineError::LastSaPair`]); pairs replaced by a rekey are
    /// not live (they retire by themselves).
    pub fn delete_sa(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        inbound_spi: u32,
    ) -> Result<(), EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            Self::require_established(a)?;
            let spi_out = live_pairs(a)
                .find(|p| p.0 == inbound_spi)
                .map(|p| p.1)
                .ok_or(EngineError::UnknownSpi(inbound_spi))?;
            if a.upd.extra_sas.is_empty() {
                return Err(EngineError::LastSaPair);
            }
            ep.start_sa_op(
                now,
                a,
                SaOp::Delete {
                    spi_in: inbound_spi,
                    spi_out,
                },
                false,
            )
        })
    }

    /// The live SA pairs (inbound SPI, outbound SPI) of the association
    /// with `peer_hit`, the primary one first, then the others newest
    /// first. Pairs replaced by a rekey and not yet retired are not listed.
    pub fn sa_pairs(&self, peer_hit: Hit) -> Vec<(u32, u32)> {
        self.live_assoc_id(peer_hit)
            .and_then(|id| self.assocs.get(&id))
            .map(|a| live_pairs(a).collect())
            .unwrap_or_default()
    }

    /// Sends our ESP_INFO request for `op` and records it as the
    /// association's one outstanding SA operation.
    fn start_sa_op(
        &mut self,
        now: Instant,
        a: &mut Association,
        op: SaOp,
        new_dh: bool,
    ) -> Result<(), EngineError> {
        Self::require_established(a)?;
        if a.upd.rekey.is_some() {
            return Err(EngineError::RekeyInProgress);
        }
        let s = a.suites.ok_or(EngineError::NotEstablished)?;
        let new_spi_in = match op {
            SaOp::Delete { .. } => 0,
            SaOp::Rekey | SaOp::Add => self.new_spi(),
        };
        let mut params = Vec::new();
        let (dh, index) = if new_dh {
            let ent = self.rand_bytes(s.dh_group.private_entropy_len());
            let dh = self.backend.dh_generate(s.dh_group, &ent)?;
            params.push(Param::DiffieHellman(wire::DiffieHellman {
                group: DhGroupId::from(s.dh_group),
                public_value: dh.public_value().to_vec(),
            }));
            (Some(dh), 0)
        } else {
            let idx = a.keymat.as_ref().map_or(0, Keymat::index);
            (
                None,
                u16::try_from(idx).map_err(|_| EngineError::Config("KEYMAT index"))?,
            )
        };
        let (old_spi, new_spi) = match op {
            SaOp::Rekey => (a.spi_in, new_spi_in),
            SaOp::Add => (0, new_spi_in),
            SaOp::Delete { spi_in, .. } => (spi_in, 0),
        };
        params.push(Param::EspInfo(wire::EspInfo {
            keymat_index: index,
            old_spi,
            new_spi,
        }));
        let (src, dst) = choose_path(a).ok_or(EngineError::NoLocators)?;
        let seq = self.send_update(
            now,
            a,
            params,
            Vec::new(),
            Some(Purpose::Rekey),
            Some(src),
            dst,
        )?;
        if new_spi_in != 0 {
            self.by_spi.insert(new_spi_in, a.id);
        }
        a.upd.rekey = Some(RekeyState {
            seq: seq.0.unwrap_or(0),
            op,
            new_spi_in,
            index,
            dh,
        });
        Ok(())
    }

    /// Sends a probe on the pair (`src`, `dst`): `UPDATE(SEQ,
    /// ECHO_REQUEST_SIGNED)`; the peer answers `UPDATE(ACK,
    /// ECHO_RESPONSE_SIGNED)` to `src` from `dst`. Yields
    /// [`Event::ProbeReply`] or, after [`Config::probe_timeout`](crate::engine::Config::probe_timeout),
    /// [`Event::ProbeLost`]. Probes are not retransmitted and never close
    /// the association. An answered probe to an UNVERIFIED locator
    /// verifies it. `dst` must be a non-deprecated peer locator; `src` is
    /// any local address. Returns the probe id.
    pub fn probe(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<u64, EngineError> {
        self.probe_inner(now, peer_hit, src, dst, false)
    }

    /// Like [`Endpoint::probe`], for a REAP exploration
    /// ([`crate::reap`]): the ECHO_REQUEST_SIGNED opaque data is
    /// [`EXPLORING_MARKER`] followed by the 16-byte random nonce, and the
    /// peer's engine reports it as [`Event::PeerProbed`] with
    /// `exploring: true` (other implementations just echo it).
    pub fn probe_exploring(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<u64, EngineError> {
        self.probe_inner(now, peer_hit, src, dst, true)
    }

    fn probe_inner(
        &mut self,
        now: Instant,
        peer_hit: Hit,
        src: IpAddr,
        dst: IpAddr,
        exploring: bool,
    ) -> Result<u64, EngineError> {
        self.with_assoc(peer_hit, |ep, a| {
            Self::require_established(a)?;
            match a.peer_locators.iter().find(|l| l.addr == dst) {
                None => return Err(EngineError::UnknownLocator(dst)),
                Some(l) if l.state == LocatorState::Deprecated => {
                    return Err(EngineError::DeprecatedLocator(dst));
                }
                Some(_) => {}
            }
            let id = ep.next_probe_id;
            ep.next_probe_id += 1;
            let mut nonce = if exploring {
                EXPLORING_MARKER.to_vec()
            } else {
                Vec::new()
            };
            nonce.extend(ep.rand_bytes(NONCE_LEN));
            let purpose = Purpose::Probe {
                id,
                src,
                dst,
                nonce: nonce.clone(),
            };
            ep.send_update(
                now,
                a,
                vec![Param::EchoRequestSigned(nonce)],
                Vec::new(),
                Some(purpose),
                Some(src),
                dst,
            )?;
            Ok(id)
        })
    }

    /// The data plane received `bytes` from the peer (any locator): adds
    /// them to the credit for sending to UNVERIFIED locators.
    pub fn on_data_received(&mut self, now: Instant, peer_hit: Hit, bytes: usize) {
        let Some(id) = self.live_assoc_id(peer_hit) else {
            return;
        };
        if let Some(a) = self.assocs.get_mut(&id) {
            let (c, at) = a.upd.age_credit(now);
            a.upd.credit = c.saturating_add(bytes as u64);
            a.upd.credit_at = Some(at.unwrap_or(now));
        }
    }

    /// Whether `len` bytes may be sent to the peer locator `dst` now:
    /// always for ACTIVE locators; for UNVERIFIED ones only when no ACTIVE
    /// locator exists and the (aged) credit is at least `len`. Read-only;
    /// [`Endpoint::authorize_send`] also debits the credit.
    pub fn can_send_to(&self, now: Instant, peer_hit: Hit, dst: IpAddr, len: usize) -> bool {
        let Some(a) = self
            .live_assoc_id(peer_hit)
            .and_then(|id| self.assocs.get(&id))
        else {
            return false;
        };
        match a
            .peer_locators
            .iter()
            .find(|l| l.addr == dst)
            .map(|l| l.state)
        {
            Some(LocatorState::Active) => true,
            Some(LocatorState::Unverified) => {
                !a.peer_locators
                    .iter()
                    .any(|l| l.state == LocatorState::Active)
                    && a.upd.age_credit(now).0 >= len as u64
            }
            _ => false,
        }
    }

    /// Like [`Endpoint::can_send_to`], and debits `len` from the credit when
    /// the destination is UNVERIFIED and the send is allowed.
    pub fn authorize_send(&mut self, now: Instant, peer_hit: Hit, dst: IpAddr, len: usize) -> bool {
        if !self.can_send_to(now, peer_hit, dst, len) {
            return false;
        }
        let Some(id) = self.live_assoc_id(peer_hit) else {
            return false;
        };
        if let Some(a) = self.assocs.get_mut(&id)
            && a.peer_locators
                .iter()
                .any(|l| l.addr == dst && l.state == LocatorState::Unverified)
        {
            let (c, at) = a.upd.age_credit(now);
            a.upd.credit = c.saturating_sub(len as u64);
            a.upd.credit_at = Some(at.unwrap_or(now));
        }
        true
    }

    // --------------------------------------------------------------- sending

    fn rto(&self, a: &Association) -> Duration {
        match a.upd.srtt {
            Some(s) => s.saturating_mul(2).max(self.config.update_timeout_min),
            None => self.config.update_timeout,
        }
    }

    /// Builds, signs and sends an UPDATE. With a purpose it carries the next
    /// SEQ and is retransmitted until ACKed. Returns (the SEQ, the payload).
    #[allow(clippy::too_many_arguments)]
    fn send_update(
        &mut self,
        now: Instant,
        a: &mut Association,
        mut params: Vec<Param>,
        acks: Vec<u32>,
        purpose: Option<Purpose>,
        src: Option<IpAddr>,
        dst: IpAddr,
    ) -> Result<(Option<u32>, Vec<u8>), EngineError> {
        let (Some(peer), Some(keys), Some(s)) = (a.peer_hit, a.hip_keys.as_ref(), a.suites) else {
            return Err(EngineError::NotEstablished);
        };
        let seq = purpose.as_ref().map(|_| a.upd.next_seq);
        if let Some(q) = seq {
            params.push(Param::Seq(q));
        }
        if !acks.is_empty() {
            params.push(Param::Ack(acks));
        }
        let mut repr = PacketRepr::new(PacketType::Update, a.local_hit, peer);
        repr.params = params;
        repr.sort_params();
        let key = keys.outgoing_int(a.local_is_g()).to_vec();
        self.sign_packet(a.local_identity, &mut repr, Some((s.rhash, &key)), None)?;
        let t = Self::make_transmit(&repr, src, dst, a.transport)?;
        let payload = t.payload.clone();
        self.push_tx(t);
        self.stats.update_sent += 1;
        if let (Some(q), Some(purpose)) = (seq, purpose) {
            a.upd.next_seq = q.wrapping_add(1);
            let (timeout, retries) = match purpose {
                Purpose::Probe { .. } => (self.config.probe_timeout, 0),
                _ => (self.rto(a), self.config.update_retries),
            };
            a.upd.pending.push(Pending {
                seq: q,
                purpose,
                src,
                dst,
                payload: payload.clone(),
                first_sent: now,
                deadline: now + timeout,
                timeout,
                retries_left: retries,
                retransmitted: false,
            });
        }
        Ok((seq, payload))
    }

    fn locator_set(&self, a: &Association) -> Param {
        let lifetime = self.config.locator_lifetime;
        Param::LocatorSet(
            a.local_locators
                .iter()
                .map(|l| Locator {
                    traffic_type: TrafficType::Both,
                    preferred: l.preferred,
                    lifetime,
                    kind: LocatorKind::EspSpi {
                        spi: a.spi_in,
                        addr: to_wire_addr(l.addr),
                    },
                })
                .collect(),
        )
    }

    /// Sends `UPDATE(ESP_INFO(OLD = NEW), LOCATOR_SET, SEQ)` from our
    /// preferred address; an older unacknowledged announcement is
    /// superseded (no longer retransmitted).
    fn announce_locators(&mut self, now: Instant, a: &mut Association) -> Result<(), EngineError> {
        let index = u16::try_from(a.keymat.as_ref().map_or(0, Keymat::index))
            .map_err(|_| EngineError::Config("KEYMAT index"))?;
        let params = vec![
            Param::EspInfo(wire::EspInfo {
                keymat_index: index,
                old_spi: a.spi_in,
                new_spi: a.spi_in,
            }),
            self.locator_set(a),
        ];
        let src = a.preferred_local_locator();
        let dst = src
            .and_then(|s| {
                choose_path(a)
                    .filter(|p| p.0 == s)
                    .map(|p| p.1)
                    .or_else(|| {
                        a.peer_locators
                            .iter()
                            .find(|l| l.state != LocatorState::Deprecated && same_family(l.addr, s))
                            .map(|l| l.addr)
                    })
            })
            .or(a.upd.path.map(|p| p.1))
            .ok_or(EngineError::NoLocators)?;
        a.upd.pending.retain(|p| p.purpose != Purpose::Announce);
        let (_, payload) = self.send_update(
            now,
            a,
            params,
            Vec::new(),
            Some(Purpose::Announce),
            src,
            dst,
        )?;
        if self.config.shotgun {
            // Copies to every other pair of our and the peer's locators
            // (the peer acknowledges the duplicates of the SEQ again).
            let peers: Vec<IpAddr> = a
                .peer_locators
                .iter()
                .filter(|l| l.state != LocatorState::Deprecated)
                .map(|l| l.addr)
                .collect();
            let locals: Vec<IpAddr> = a.local_locators.iter().map(|l| l.addr).collect();
            let mut copies = 0;
            'pairs: for &d in &peers {
                for &l in &locals {
                    if copies + 1 >= crate::engine::MAX_SHOTGUN_UPDATE_PAIRS {
                        break 'pairs;
                    }
                    if same_family(l, d) && (Some(l), d) != (src, dst) {
                        self.push_copy(Some(l), d, a.transport, &payload);
                        copies += 1;
                    }
                }
            }
        }
        a.upd.announce_at = (self.config.locator_lifetime != u32::MAX)
            .then(|| now + Duration::from_secs(u64::from(self.config.locator_lifetime / 2).max(1)));
        Ok(())
    }

    fn verifying(&self, a: &Association, addr: IpAddr) -> bool {
        a.upd
            .pending
            .iter()
            .any(|p| matches!(&p.purpose, Purpose::Verify { addr: x, .. } if *x == addr))
    }

    /// Sends `UPDATE(SEQ, ECHO_REQUEST_SIGNED)` to the peer locator `addr`.
    fn start_verify(
        &mut self,
        now: Instant,
        a: &mut Association,
        addr: IpAddr,
    ) -> Result<(), EngineError> {
        let nonce = self.rand_bytes(NONCE_LEN);
        let src = choose_src(a, addr);
        let purpose = Purpose::Verify {
            addr,
            nonce: nonce.clone(),
        };
        self.send_update(
            now,
            a,
            vec![Param::EchoRequestSigned(nonce)],
            Vec::new(),
            Some(purpose),
            src,
            addr,
        )?;
        Ok(())
    }

    /// Recomputes the path; emits [`Event::PathChanged`] when it changed
    /// and starts verifying an UNVERIFIED destination in use.
    fn refresh_path(&mut self, now: Instant, a: &mut Association) {
        if a.upd.forced.is_some_and(|f| !forced_valid(a, f)) {
            a.upd.forced = None;
        }
        let new = choose_path(a);
        if new != a.upd.path {
            if let (Some((src, dst)), Some(peer_hit)) = (new, a.peer_hit) {
                self.events
                    .push_back(Event::PathChanged { peer_hit, src, dst });
            }
            a.upd.path = new;
        }
        if let Some((_, dst)) = new
            && a.peer_locators
                .iter()
                .any(|l| l.addr == dst && l.state == LocatorState::Unverified)
            && !self.verifying(a, dst)
        {
            let _ = self.start_verify(now, a, dst);
        }
    }

    fn set_peer_state(&mut self, a: &mut Association, addr: IpAddr, state: LocatorState) {
        let Some(l) = a.peer_locators.iter_mut().find(|l| l.addr == addr) else {
            return;
        };
        if l.state == state {
            return;
        }
        l.state = state;
        if state == LocatorState::Deprecated {
            l.preferred = false;
            l.expires = None;
        }
        if let Some(peer_hit) = a.peer_hit {
            self.events.push_back(Event::PeerLocatorState {
                peer_hit,
                addr,
                state,
            });
        }
    }

    // ------------------------------------------------------------- receiving

    pub(super) fn on_update(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let key = (pkt.receiver_hit(), pkt.sender_hit());
        let Some(&id) = self.by_hits.get(&key) else {
            self.stats.unknown_association += 1;
            return;
        };
        let Some(repr) = self.parse_or_reject(now, d, pkt) else {
            return;
        };
        let Some(mut a) = self.assocs.remove(&id) else {
            return;
        };
        if let Err(rej) = self.update_inner(now, &mut a, d, pkt, &repr) {
            self.count(rej.reason);
        }
        self.assocs.insert(id, a);
    }

    fn update_inner(
        &mut self,
        now: Instant,
        a: &mut Association,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) -> Res<()> {
        if !matches!(a.state, State::Established | State::R2Sent) {
            return Err(Reject::drop(Reason::UnexpectedState));
        }
        // HIP_MAC (MUST) then HIP_SIGNATURE; failures are dropped silently.
        self.check_mac_sig(a, pkt, repr)
            .map_err(|r| Reject::drop(r.reason))?;
        let seq = match repr.param(pt::SEQ) {
            Some(Param::Seq(s)) => Some(*s),
            _ => None,
        };
        let acks: Vec<u32> = repr
            .params_of(pt::ACK)
            .filter_map(|p| match p {
                Param::Ack(v) => Some(v.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
        if seq.is_none() && acks.is_empty() {
            return Err(Reject::drop(Reason::Malformed));
        }
        self.stats.update_received += 1;
        if a.state == State::R2Sent {
            a.state = State::Established;
            a.state_deadline = None;
            self.events.push_back(Event::Confirmed { id: a.id });
        }
        // ACK before SEQ.
        let echoes: Vec<&Vec<u8>> = repr
            .params_of(pt::ECHO_RESPONSE_SIGNED)
            .filter_map(|p| match p {
                Param::EchoResponseSigned(e) => Some(e),
                _ => None,
            })
            .collect();
        for &ack in &acks {
            self.on_ack(now, a, ack, &echoes);
        }
        let Some(seq) = seq else {
            self.refresh_path(now, a);
            return Ok(());
        };
        match a.upd.check_seq(seq) {
            None => return Err(Reject::drop(Reason::Replay)),
            Some(false) => {
                self.stats.update_duplicate += 1;
                self.resend_reply(now, a, seq, d);
                return Ok(());
            }
            Some(true) => {}
        }
        let esp = match repr.param(pt::ESP_INFO) {
            Some(Param::EspInfo(i)) => Some(i.clone()),
            _ => None,
        };
        // Classify ESP_INFO before accepting the SEQ.
        let answers_ours = a.upd.rekey.as_ref().is_some_and(|r| acks.contains(&r.seq));
        let op = match &esp {
            None => None,
            Some(i) => Self::classify_esp_info(a, i, answers_ours)?,
        };
        a.upd.mark_seq(seq);
        let mut reply: Vec<Param> = Vec::new();
        let mut reply_purpose: Option<Purpose> = None;
        let mut reply_dst = d.src;
        let mut reply_src = Some(d.dst);
        if let (Some(op), Some(info)) = (op, &esp) {
            let dh = match repr.param(pt::DIFFIE_HELLMAN) {
                Some(Param::DiffieHellman(dh)) => Some(dh.clone()),
                _ => None,
            };
            if answers_ours {
                self.finish_rekey(a, op, info, dh.as_ref())?;
            } else if a.upd.rekey.is_some() && a.local_is_g() {
                // Crossing SA operations: the greater HIT keeps its own; the
                // peer abandons its request when ours arrives.
            } else {
                if let Some(r) = a.upd.rekey.take() {
                    a.upd.pending.retain(|p| p.seq != r.seq);
                    if r.new_spi_in != 0 {
                        self.by_spi.remove(&r.new_spi_in);
                    }
                }
                let params = self.answer_rekey(a, op, info, dh.as_ref())?;
                reply.extend(params);
                reply_purpose = Some(Purpose::Reply);
            }
        }
        // LOCATOR_SET after ESP_INFO.
        let mut verify_now: Option<IpAddr> = None;
        if let Some(Param::LocatorSet(ls)) = repr.param(pt::LOCATOR_SET) {
            verify_now = self.apply_peer_locator_set(now, a, ls);
        }
        let mut probed: Option<bool> = None;
        for p in repr.params_of(pt::ECHO_REQUEST_SIGNED) {
            if let Param::EchoRequestSigned(e) = p {
                reply.push(Param::EchoResponseSigned(e.clone()));
                probed = Some(probed.unwrap_or(false) | is_exploring_echo(e));
            }
        }
        if let (Some(exploring), Some(peer_hit)) = (probed, a.peer_hit) {
            self.events.push_back(Event::PeerProbed {
                peer_hit,
                src: d.src,
                dst: d.dst,
                exploring,
            });
        }
        if let Some(addr) = verify_now {
            if reply_purpose.is_none() && !self.verifying(a, addr) {
                // RFC 8046 mobility: UPDATE(ESP_INFO, SEQ, ACK, ECHO_REQUEST)
                // to the new address.
                let nonce = self.rand_bytes(NONCE_LEN);
                let index = u16::try_from(a.keymat.as_ref().map_or(0, Keymat::index))
                    .map_err(|_| Reject::drop(Reason::Malformed))?;
                reply.push(Param::EspInfo(wire::EspInfo {
                    keymat_index: index,
                    old_spi: a.spi_in,
                    new_spi: a.spi_in,
                }));
                reply.push(Param::EchoRequestSigned(nonce.clone()));
                reply_purpose = Some(Purpose::Verify { addr, nonce });
                reply_src = choose_src(a, addr);
                reply_dst = addr;
            } else if !self.verifying(a, addr) {
                let _ = self.start_verify(now, a, addr);
            }
        }
        let (_, payload) = self
            .send_update(
                now,
                a,
                reply,
                vec![seq],
                reply_purpose,
                reply_src,
                reply_dst,
            )
            .map_err(|_| Reject::drop(Reason::Unsupported))?;
        a.upd.replies.push_back(StoredReply {
            seq,
            src: reply_src,
            dst: reply_dst,
            payload,
        });
        while a.upd.replies.len() > STORED_REPLIES {
            a.upd.replies.pop_front();
        }
        self.refresh_path(now, a);
        Ok(())
    }

    /// Classifies a received ESP_INFO (RFC 8046 §5.3, RFC 7402 §6.9–6.10)
    /// before its SEQ is accepted: `None` for a gratuitous one (OLD = NEW ≠
    /// 0; any SPI, so a retransmission built before a rekey finished is not
    /// refused), else the SA operation it requests or answers. Refused
    /// (dropped unacknowledged, counted): OLD = NEW = 0, and an OLD that is
    /// not the outbound SPI of a live pair (`malformed`); a new pair beyond
    /// [`MAX_SA_PAIRS`] and the deletion of the last pair (`unsupported`).
    fn classify_esp_info(
        a: &Association,
        i: &wire::EspInfo,
        answers_ours: bool,
    ) -> Res<Option<SaOp>> {
        let malformed = || Reject::drop(Reason::Malformed);
        if i.old_spi == i.new_spi {
            return if i.new_spi == 0 {
                Err(malformed())
            } else {
                Ok(None)
            };
        }
        if i.old_spi == 0 {
            // A new pair; its NEW SPI must not be one we already send on.
            if live_pairs(a).any(|p| p.1 == i.new_spi)
                || a.upd.old_sas.is_some_and(|p| p.1 == i.new_spi)
            {
                return Err(malformed());
            }
            if !answers_ours && a.upd.extra_sas.len() + 1 >= MAX_SA_PAIRS {
                return Err(Reject::drop(Reason::Unsupported));
            }
            return Ok(Some(SaOp::Add));
        }
        if i.new_spi == 0 {
            if answers_ours {
                // The peer's side of the pair we asked to delete.
                return match a.upd.rekey.as_ref().map(|r| r.op) {
                    Some(SaOp::Delete { spi_in, spi_out }) if spi_out == i.old_spi => {
                        Ok(Some(SaOp::Delete { spi_in, spi_out }))
                    }
                    _ => Err(malformed()),
                };
            }
            let spi_in = live_pairs(a)
                .find(|p| p.1 == i.old_spi)
                .map(|p| p.0)
                .ok_or_else(malformed)?;
            if a.upd.extra_sas.is_empty() {
                return Err(Reject::drop(Reason::Unsupported));
            }
            return Ok(Some(SaOp::Delete {
                spi_in,
                spi_out: i.old_spi,
            }));
        }
        if i.old_spi == a.spi_out {
            return Ok(Some(SaOp::Rekey));
        }
        Err(malformed())
    }

    /// A duplicate SEQ: resend the reply we gave it (or a fresh ACK).
    fn resend_reply(&mut self, now: Instant, a: &mut Association, seq: u32, d: &Datagram) {
        if let Some(r) = a.upd.replies.iter().rev().find(|r| r.seq == seq).cloned() {
            self.push_tx(Transmit {
                src: r.src,
                dst: r.dst,
                transport: a.transport,
                payload: r.payload,
            });
            return;
        }
        let _ = self.send_update(now, a, Vec::new(), vec![seq], None, Some(d.dst), d.src);
    }

    fn on_ack(&mut self, now: Instant, a: &mut Association, ack: u32, echoes: &[&Vec<u8>]) {
        let Some(pos) = a.upd.pending.iter().position(|p| p.seq == ack) else {
            return;
        };
        let p = a.upd.pending.remove(pos);
        if !p.retransmitted {
            let sample = now.saturating_duration_since(p.first_sent);
            a.upd.srtt = Some(match a.upd.srtt {
                None => sample,
                Some(s) => (s.saturating_mul(7) + sample) / 8,
            });
        }
        let echoed = |n: &Vec<u8>| echoes.contains(&n);
        match p.purpose {
            Purpose::Verify { addr, nonce } => {
                if echoed(&nonce) {
                    self.verified(now, a, addr);
                } else {
                    self.verification_failed(a, addr);
                }
            }
            Purpose::Probe {
                id,
                src,
                dst,
                nonce,
            } => {
                let Some(peer_hit) = a.peer_hit else { return };
                if echoed(&nonce) {
                    self.events.push_back(Event::ProbeReply {
                        peer_hit,
                        probe: id,
                        src,
                        dst,
                        rtt: now.saturating_duration_since(p.first_sent),
                    });
                    self.verified(now, a, dst);
                } else {
                    self.events.push_back(Event::ProbeLost {
                        peer_hit,
                        probe: id,
                        src,
                        dst,
                    });
                }
            }
            Purpose::Announce | Purpose::Rekey | Purpose::Reply => {}
        }
    }

    fn verified(&mut self, now: Instant, a: &mut Association, addr: IpAddr) {
        let unverified = a
            .peer_locators
            .iter()
            .any(|l| l.addr == addr && l.state == LocatorState::Unverified);
        if unverified {
            self.stats.locators_verified += 1;
            self.set_peer_state(a, addr, LocatorState::Active);
        }
        if a.upd.want_preferred == Some(addr) {
            a.upd.want_preferred = None;
            for l in &mut a.peer_locators {
                l.preferred = l.addr == addr;
            }
        }
        if let Some(f) = a.upd.want_forced
            && f.1 == addr
        {
            a.upd.want_forced = None;
            a.upd.forced = Some(f);
        }
        self.refresh_path(now, a);
    }

    fn verification_failed(&mut self, a: &mut Association, addr: IpAddr) {
        if a.upd.want_preferred == Some(addr) {
            a.upd.want_preferred = None;
        }
        if a.upd.want_forced.is_some_and(|f| f.1 == addr) {
            a.upd.want_forced = None;
        }
        if let Some(peer_hit) = a.peer_hit {
            self.events
                .push_back(Event::VerificationFailed { peer_hit, addr });
        }
    }

    /// Applies a received LOCATOR_SET (it lists all active locators).
    /// Returns the new preferred locator if it needs verification.
    fn apply_peer_locator_set(
        &mut self,
        now: Instant,
        a: &mut Association,
        ls: &[Locator],
    ) -> Option<IpAddr> {
        let mut listed: Vec<(IpAddr, bool, u32, Option<u32>)> = Vec::new();
        for l in ls {
            if l.traffic_type == TrafficType::Signalling || l.lifetime == 0 {
                continue;
            }
            let (addr, spi) = match &l.kind {
                LocatorKind::Address(x) => (from_wire_addr(*x), None),
                LocatorKind::EspSpi { spi, addr } => (from_wire_addr(*addr), Some(*spi)),
                _ => continue,
            };
            if addr.is_multicast() || addr.is_unspecified() || listed.iter().any(|x| x.0 == addr) {
                continue;
            }
            listed.push((addr, l.preferred, l.lifetime, spi));
        }
        let any_pref = listed.iter().any(|x| x.1);
        // Withdrawn locators become DEPRECATED.
        let withdrawn: Vec<IpAddr> = a
            .peer_locators
            .iter()
            .filter(|l| !listed.iter().any(|x| x.0 == l.addr))
            .map(|l| l.addr)
            .collect();
        for addr in withdrawn {
            self.set_peer_state(a, addr, LocatorState::Deprecated);
        }
        let mut new_pref = None;
        for (addr, pref, lifetime, spi) in listed {
            let expires =
                (lifetime != u32::MAX).then(|| now + Duration::from_secs(u64::from(lifetime)));
            match a.peer_locators.iter().position(|l| l.addr == addr) {
                Some(i) => {
                    if a.peer_locators[i].state == LocatorState::Deprecated {
                        self.set_peer_state(a, addr, LocatorState::Unverified);
                    }
                    let l = &mut a.peer_locators[i];
                    l.lifetime = lifetime;
                    l.expires = expires;
                    l.spi = spi;
                    if any_pref {
                        l.preferred = pref;
                    }
                }
                None => {
                    a.peer_locators.push(PeerLocator {
                        addr,
                        state: LocatorState::Deprecated,
                        preferred: any_pref && pref,
                        lifetime,
                        expires,
                        spi,
                    });
                    self.set_peer_state(a, addr, LocatorState::Unverified);
                }
            }
            if pref
                && a.peer_locators
                    .iter()
                    .any(|l| l.addr == addr && l.state == LocatorState::Unverified)
                && new_pref.is_none()
            {
                new_pref = Some(addr);
            }
        }
        // The exchange address may have been listed with P = 0 while no
        // other locator has P: keep a preferred one if any was marked.
        new_pref
    }

    // ----------------------------------------------------------------- rekey

    /// Builds the new SA pair from `keymat` at `index`.
    fn rekey_sas(
        &mut self,
        a: &Association,
        keymat: &mut Keymat,
        index: u16,
        spi_in: u32,
        spi_out: u32,
    ) -> Res<EstablishedSas> {
        let (Some(s), Some(peer_hit)) = (a.suites, a.peer_hit) else {
            return Err(Reject::drop(Reason::UnexpectedState));
        };
        keymat.set_index(usize::from(index))?;
        let keys = keymat.draw_esp_keys(self.backend.as_ref(), s.esp)?;
        let beet = BeetAddrs {
            local_hit: a.local_hit,
            peer_hit,
            lsis: None,
            deliver_as: InnerFamily::V6,
        };
        let g = a.local_is_g();
        let (oe, oa) = keys.outbound(g);
        let (ie, ia) = keys.inbound(g);
        let seed_o = self.rng_array();
        let seed_i = self.rng_array();
        let outbound = self.make_sa(spi_out, s.esp, oe, oa, SaDirection::Outbound, beet, seed_o)?;
        let inbound = self.make_sa(spi_in, s.esp, ie, ia, SaDirection::Inbound, beet, seed_i)?;
        Ok(EstablishedSas {
            suite: s.esp,
            outbound,
            inbound,
        })
    }

    /// A fresh KEYMAT from a new Kij (same #I ‖ #J salt as the BEX).
    fn new_keymat(&self, a: &Association, kij: &[u8]) -> Res<Keymat> {
        let (Some(s), Some(peer), Some((i, j))) = (a.suites, a.peer_hit, a.puzzle_ij.as_ref())
        else {
            return Err(Reject::drop(Reason::UnexpectedState));
        };
        Ok(Keymat::new(
            self.backend.as_ref(),
            s.rhash,
            kij,
            &a.local_hit,
            &peer,
            i,
            j,
        )?)
    }

    /// Installs a new SA pair and emits [`Event::SasRekeyed`]: a rekey
    /// replaces the primary pair (kept mapped until retired), an addition
    /// keeps it as a live extra pair.
    fn install_rekey(
        &mut self,
        a: &mut Association,
        sas: EstablishedSas,
        new_in: u32,
        new_out: u32,
        kind: SaChange,
    ) {
        let Some(peer_hit) = a.peer_hit else { return };
        let (old_in, old_out) = (a.spi_in, a.spi_out);
        match kind {
            SaChange::Rekey => {
                if let Some((old_in, old_out)) = a.upd.old_sas.take() {
                    self.by_spi.remove(&old_in);
                    self.events.push_back(Event::SasRetired {
                        id: a.id,
                        peer_hit,
                        inbound_spi: old_in,
                        outbound_spi: old_out,
                    });
                }
                a.upd.old_sas = Some((old_in, old_out));
            }
            SaChange::Added => a.upd.extra_sas.push((old_in, old_out)),
        }
        a.spi_in = new_in;
        a.spi_out = new_out;
        self.by_spi.insert(new_in, a.id);
        self.stats.rekeys += 1;
        self.events.push_back(Event::SasRekeyed {
            id: a.id,
            peer_hit,
            sas: Box::new(sas),
            old_inbound_spi: old_in,
            old_outbound_spi: old_out,
            kind,
        });
    }

    /// Deletes the live pair (`spi_in`, `spi_out`) and emits
    /// [`Event::SasRetired`]; deleting the primary pair promotes the most
    /// recently added remaining one. Returns false if it is not live or is
    /// the last pair.
    fn retire_pair(&mut self, a: &mut Association, spi_in: u32, spi_out: u32) -> bool {
        let Some(peer_hit) = a.peer_hit else {
            return false;
        };
        if a.upd.extra_sas.is_empty() {
            return false;
        }
        if (a.spi_in, a.spi_out) == (spi_in, spi_out) {
            let Some((pi, po)) = a.upd.extra_sas.pop() else {
                return false;
            };
            a.spi_in = pi;
            a.spi_out = po;
        } else {
            let before = a.upd.extra_sas.len();
            a.upd.extra_sas.retain(|&p| p != (spi_in, spi_out));
            if a.upd.extra_sas.len() == before {
                return false;
            }
        }
        if self.by_spi.get(&spi_in) == Some(&a.id) {
            self.by_spi.remove(&spi_in);
        }
        self.events.push_back(Event::SasRetired {
            id: a.id,
            peer_hit,
            inbound_spi: spi_in,
            outbound_spi: spi_out,
        });
        true
    }

    /// The peer's ESP_INFO request for `op` (we have none outstanding, or
    /// abandoned ours): for a rekey or an addition choose our new SPI (and
    /// DH), build and install the pair, and return `ESP_INFO(OLD = replaced
    /// inbound SPI or 0, NEW, index)`, `[DIFFIE_HELLMAN]`; for a deletion
    /// delete the pair and return `ESP_INFO(OLD = its inbound SPI, NEW =
    /// 0)`.
    fn answer_rekey(
        &mut self,
        a: &mut Association,
        op: SaOp,
        info: &wire::EspInfo,
        dh: Option<&wire::DiffieHellman>,
    ) -> Res<Vec<Param>> {
        let s = a.suites.ok_or(Reject::drop(Reason::UnexpectedState))?;
        if let SaOp::Delete { spi_in, spi_out } = op {
            let index = u16::try_from(a.keymat.as_ref().map_or(0, Keymat::index))
                .map_err(|_| Reject::drop(Reason::Malformed))?;
            if !self.retire_pair(a, spi_in, spi_out) {
                return Err(Reject::drop(Reason::UnexpectedState));
            }
            return Ok(vec![Param::EspInfo(wire::EspInfo {
                keymat_index: index,
                old_spi: spi_in,
                new_spi: 0,
            })]);
        }
        if let Some(dh) = dh
            && (dh.group != DhGroupId::from(s.dh_group) || info.keymat_index != 0)
        {
            return Err(Reject::drop(Reason::Malformed));
        }
        let send_dh = match self.config.rekey_answer_dh {
            RekeyAnswerDh::Mirror => dh.is_some(),
            RekeyAnswerDh::Always => true,
            RekeyAnswerDh::Never => false,
        };
        let mut params = Vec::new();
        let new_spi_in = self.new_spi();
        let mine = if send_dh {
            let ent = self.rand_bytes(s.dh_group.private_entropy_len());
            let mine: Arc<dyn DhKeyPair> = Arc::from(self.backend.dh_generate(s.dh_group, &ent)?);
            params.push(Param::DiffieHellman(wire::DiffieHellman {
                group: DhGroupId::from(s.dh_group),
                public_value: mine.public_value().to_vec(),
            }));
            Some(mine)
        } else {
            None
        };
        let theirs = dh.map(|d| d.public_value.clone());
        let (mut keymat, index) = match self.rekey_kij(a, mine.as_ref(), theirs.as_deref())? {
            Some(kij) => (self.new_keymat(a, &kij)?, 0u16),
            None => {
                let km = a
                    .keymat
                    .take()
                    .ok_or(Reject::drop(Reason::UnexpectedState))?;
                let ours = u16::try_from(km.index()).unwrap_or(u16::MAX);
                let idx = ours.max(info.keymat_index);
                (km, idx)
            }
        };
        let r = self.rekey_sas(a, &mut keymat, index, new_spi_in, info.new_spi);
        a.keymat = Some(keymat);
        let sas = r?;
        Self::keep_rekey_dh(a, mine, theirs);
        let (old_spi, kind) = match op {
            SaOp::Add => (0, SaChange::Added),
            _ => (a.spi_in, SaChange::Rekey),
        };
        params.push(Param::EspInfo(wire::EspInfo {
            keymat_index: index,
            old_spi,
            new_spi: new_spi_in,
        }));
        self.install_rekey(a, sas, new_spi_in, info.new_spi, kind);
        Ok(params)
    }

    /// The answer to our ESP_INFO request (`op` as classified from it).
    fn finish_rekey(
        &mut self,
        a: &mut Association,
        op: SaOp,
        info: &wire::EspInfo,
        dh: Option<&wire::DiffieHellman>,
    ) -> Res<()> {
        let r = a
            .upd
            .rekey
            .take()
            .ok_or(Reject::drop(Reason::UnexpectedState))?;
        let kind = match (r.op, op) {
            (SaOp::Rekey, SaOp::Rekey) => SaChange::Rekey,
            (SaOp::Add, SaOp::Add) => SaChange::Added,
            (SaOp::Delete { spi_in, spi_out }, SaOp::Delete { .. }) => {
                // The peer deleted its side: so do we.
                return if self.retire_pair(a, spi_in, spi_out) {
                    Ok(())
                } else {
                    Err(Reject::drop(Reason::UnexpectedState))
                };
            }
            _ => {
                // An answer of another kind: give up this request.
                if r.new_spi_in != 0 {
                    self.by_spi.remove(&r.new_spi_in);
                }
                return Err(Reject::drop(Reason::Malformed));
            }
        };
        let group_ok = a
            .suites
            .is_some_and(|s| dh.is_none_or(|d| d.group == DhGroupId::from(s.dh_group)));
        let mine: Option<Arc<dyn DhKeyPair>> = r.dh.map(Arc::from);
        let theirs = dh.map(|d| d.public_value.clone());
        let kij = if group_ok {
            self.rekey_kij(a, mine.as_ref(), theirs.as_deref())
        } else {
            Err(Reject::drop(Reason::Malformed))
        };
        let kij = match kij {
            Ok(k) => k,
            Err(e) => {
                // Give up this rekey.
                self.by_spi.remove(&r.new_spi_in);
                return Err(e);
            }
        };
        let (mut keymat, index) = match kij {
            Some(kij) => (self.new_keymat(a, &kij)?, 0u16),
            None => {
                let km = a
                    .keymat
                    .take()
                    .ok_or(Reject::drop(Reason::UnexpectedState))?;
                (km, r.index.max(info.keymat_index))
            }
        };
        let res = self.rekey_sas(a, &mut keymat, index, r.new_spi_in, info.new_spi);
        a.keymat = Some(keymat);
        let sas = match res {
            Ok(s) => s,
            Err(e) => {
                self.by_spi.remove(&r.new_spi_in);
                return Err(e);
            }
        };
        Self::keep_rekey_dh(a, mine, theirs);
        self.install_rekey(a, sas, r.new_spi_in, info.new_spi, kind);
        Ok(())
    }

    /// The Kij of a rekey (RFC 7402 §6.9–6.10, digest §17): `None` when
    /// neither side sent a new DH public value (the ESP keys then come from
    /// the existing KEYMAT); otherwise our new key (`mine`) or, when only
    /// the peer sent one, our last DH key, combined with the peer's new
    /// public value (`theirs`) or, when only we sent one, its last one.
    fn rekey_kij(
        &self,
        a: &Association,
        mine: Option<&Arc<dyn DhKeyPair>>,
        theirs: Option<&[u8]>,
    ) -> Res<Option<Zeroizing<Vec<u8>>>> {
        if mine.is_none() && theirs.is_none() {
            return Ok(None);
        }
        let key = mine
            .or(a.dh_local.as_ref())
            .ok_or(Reject::drop(Reason::UnexpectedState))?;
        let public = theirs
            .or(a.dh_peer_public.as_deref())
            .ok_or(Reject::drop(Reason::UnexpectedState))?;
        key.shared_secret(public)
            .map(Some)
            .map_err(|_| Reject::drop(Reason::Malformed))
    }

    /// After a rekey: the DH values sent in it become the association's
    /// last ones (a side that sent none keeps its previous one).
    fn keep_rekey_dh(
        a: &mut Association,
        mine: Option<Arc<dyn DhKeyPair>>,
        theirs: Option<Vec<u8>>,
    ) {
        if let Some(m) = mine {
            a.dh_local = Some(m);
        }
        if let Some(t) = theirs {
            a.dh_peer_public = Some(t);
        }
    }

    /// ESP arrived on inbound `spi` of association `id`: retires the old
    /// SAs of a rekey once the new inbound SA carries traffic.
    pub(super) fn upd_esp_received(&mut self, id: AssocId, spi: u32) {
        let Some(a) = self.assocs.get_mut(&id) else {
            return;
        };
        if spi != a.spi_in {
            return;
        }
        let (Some((old_in, old_out)), Some(peer_hit)) = (a.upd.old_sas, a.peer_hit) else {
            return;
        };
        a.upd.old_sas = None;
        if self.by_spi.get(&old_in) == Some(&id) {
            self.by_spi.remove(&old_in);
        }
        self.events.push_back(Event::SasRetired {
            id,
            peer_hit,
            inbound_spi: old_in,
            outbound_spi: old_out,
        });
    }

    // ---------------------------------------------------------------- timers

    pub(super) fn upd_timeout(&mut self, a: &mut Association, now: Instant) {
        if !matches!(a.state, State::Established | State::R2Sent) {
            a.upd.pending.clear();
            a.upd.announce_at = None;
            return;
        }
        // Retransmissions and give-ups.
        let mut i = 0;
        let mut close = false;
        while i < a.upd.pending.len() {
            if a.upd.pending[i].deadline > now {
                i += 1;
                continue;
            }
            let path = choose_path(a);
            let transport = a.transport;
            let p = &mut a.upd.pending[i];
            if p.retries_left > 0 {
                // Announcements and rekey messages follow the path in use
                // (the peer's preferred address may have changed since).
                if matches!(
                    p.purpose,
                    Purpose::Announce | Purpose::Rekey | Purpose::Reply
                ) && let Some((src, dst)) = path
                    && (Some(src), dst) != (p.src, p.dst)
                {
                    p.src = Some(src);
                    p.dst = dst;
                    Packet::new_unchecked(&mut p.payload[..]).fill_checksum(super::checksum_mode(
                        transport,
                        Some(src),
                        dst,
                    ));
                }
                p.retries_left -= 1;
                p.timeout = p.timeout.saturating_mul(2);
                p.deadline = now + p.timeout;
                p.retransmitted = true;
                let t = Transmit {
                    src: p.src,
                    dst: p.dst,
                    transport: a.transport,
                    payload: p.payload.clone(),
                };
                self.stats.update_retransmit += 1;
                self.push_tx(t);
                i += 1;
                continue;
            }
            let p = a.upd.pending.remove(i);
            let Some(peer_hit) = a.peer_hit else { continue };
            match p.purpose {
                Purpose::Probe { id, src, dst, .. } => {
                    self.events.push_back(Event::ProbeLost {
                        peer_hit,
                        probe: id,
                        src,
                        dst,
                    });
                }
                Purpose::Verify { addr, .. } => {
                    self.stats.update_timeout += 1;
                    self.verification_failed(a, addr);
                }
                Purpose::Announce | Purpose::Rekey | Purpose::Reply => {
                    self.stats.update_timeout += 1;
                    close = true;
                }
            }
        }
        if close {
            // RFC 7401 §6.11: UPDATE_RETRY_MAX exceeded → CLOSING.
            if let Some(r) = a.upd.rekey.take() {
                self.by_spi.remove(&r.new_spi_in);
            }
            a.upd.pending.clear();
            a.upd.announce_at = None;
            if !matches!(self.start_close(a, now), Ok(true)) {
                a.state = State::Closing;
                a.state_deadline = Some(now);
            }
            return;
        }
        // Peer locator lifetimes.
        let expired: Vec<IpAddr> = a
            .peer_locators
            .iter()
            .filter(|l| l.expires.is_some_and(|e| e <= now))
            .map(|l| l.addr)
            .collect();
        if !expired.is_empty() {
            for addr in expired {
                self.set_peer_state(a, addr, LocatorState::Deprecated);
            }
            self.refresh_path(now, a);
        }
        // Refresh our finite-lifetime locators.
        if a.upd.announce_at.is_some_and(|t| t <= now) {
            a.upd.announce_at = None;
            let _ = self.announce_locators(now, a);
        }
    }

    /// Adopts the host's locator set (from [`Endpoint::set_local_locators`])
    /// in a newly established association.
    pub(super) fn adopt_local_locators(&mut self, now: Instant, a: &mut Association) {
        let Some(locs) = self.local_locators.clone() else {
            return;
        };
        if let Some(ex) = a.local_locators.first().map(|l| l.addr)
            && let Some(l) = locs.iter().find(|l| l.addr == ex)
            && let Some(mine) = a.local_locators.first_mut()
        {
            mine.ifindex = l.ifindex;
        }
        if locs.len() > 1 || !locs.iter().any(|l| Some(l.addr) == a.upd.path.map(|p| p.0)) {
            // Keep the exchange address preferred unless told otherwise.
            let cur = a.upd.path.map(|p| p.0);
            let mut v = locs;
            if !v.iter().any(|l| l.preferred) {
                for l in &mut v {
                    l.preferred = Some(l.addr) == cur;
                }
            }
            self.apply_local_locators(now, a, &v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_new_duplicate_old_and_wraparound() {
        let mut u = UpdateState::default();
        assert_eq!(u.check_seq(5), Some(true), "first SEQ is new");
        u.mark_seq(5);
        assert_eq!(u.check_seq(5), Some(false));
        assert_eq!(u.check_seq(4), Some(true), "reordered, unseen");
        u.mark_seq(4);
        assert_eq!(u.check_seq(4), Some(false));
        u.mark_seq(100);
        assert_eq!(u.check_seq(100), Some(false));
        assert_eq!(u.check_seq(40), Some(true), "inside the window");
        assert_eq!(u.check_seq(36), None, "64 below the top");
        assert_eq!(u.check_seq(5), None);
        // Circular comparison across 2^32.
        let mut w = UpdateState::default();
        w.mark_seq(u32::MAX - 1);
        assert_eq!(w.check_seq(u32::MAX), Some(true));
        assert_eq!(w.check_seq(3), Some(true));
        w.mark_seq(3);
        assert_eq!(w.check_seq(u32::MAX - 1), Some(false), "still in window");
        assert_eq!(w.check_seq(u32::MAX), Some(true));
        assert_eq!(w.check_seq(3u32.wrapping_sub(64)), None);
        // A jump of more than 64 clears the history.
        w.mark_seq(1000);
        assert_eq!(w.check_seq(999), Some(true));
        assert_eq!(w.check_seq(3), None);
    }

    #[test]
    fn credit_ages_by_seven_eighths_per_period() {
        let t = Instant::now();
        let u = UpdateState {
            credit: 8000,
            credit_at: Some(t),
            ..UpdateState::default()
        };
        assert_eq!(u.age_credit(t).0, 8000);
        assert_eq!(u.age_credit(t + Duration::from_millis(4999)).0, 8000);
        assert_eq!(u.age_credit(t + Duration::from_secs(5)).0, 7000);
        assert_eq!(u.age_credit(t + Duration::from_secs(12)).0, 6125);
        assert_eq!(
            u.age_credit(t + Duration::from_secs(12)).1,
            Some(t + Duration::from_secs(10))
        );
        assert_eq!(u.age_credit(t + Duration::from_secs(100_000)).0, 0);
    }

    #[test]
    fn esp_info_classification() {
        let info = |old_spi, new_spi| wire::EspInfo {
            keymat_index: 0,
            old_spi,
            new_spi,
        };
        let class = |a: &Association, o, n, ours| {
            Endpoint::classify_esp_info(a, &info(o, n), ours).map_err(|r| r.reason)
        };
        let mut a = Association::new(
            AssocId(1),
            crate::engine::Role::Initiator,
            Hit::from_u128(1),
            0,
        );
        (a.spi_in, a.spi_out) = (0x100, 0x200);
        // Gratuitous (any SPI), rekey, addition.
        assert_eq!(class(&a, 0x200, 0x200, false), Ok(None));
        assert_eq!(class(&a, 0x999, 0x999, false), Ok(None));
        assert_eq!(class(&a, 0x200, 0x300, false), Ok(Some(SaOp::Rekey)));
        assert_eq!(class(&a, 0, 0x300, false), Ok(Some(SaOp::Add)));
        // Both zero, unknown OLD, OLD naming our inbound SPI, NEW already
        // sent on: malformed.
        for (o, n) in [(0, 0), (0x999, 0), (0x999, 0x300), (0x100, 0), (0, 0x200)] {
            assert_eq!(
                class(&a, o, n, false),
                Err(Reason::Malformed),
                "{o:#x} {n:#x}"
            );
        }
        // The last pair cannot be deleted.
        assert_eq!(class(&a, 0x200, 0, false), Err(Reason::Unsupported));
        a.upd.extra_sas.push((0x101, 0x201));
        assert_eq!(
            class(&a, 0x201, 0, false),
            Ok(Some(SaOp::Delete {
                spi_in: 0x101,
                spi_out: 0x201
            }))
        );
        assert_eq!(
            class(&a, 0x200, 0, false),
            Ok(Some(SaOp::Delete {
                spi_in: 0x100,
                spi_out: 0x200
            }))
        );
        assert_eq!(class(&a, 0, 0x201, false), Err(Reason::Malformed));
        // A rekey-replaced pair is not live.
        a.upd.old_sas = Some((0x102, 0x202));
        assert_eq!(class(&a, 0x202, 0, false), Err(Reason::Malformed));
        assert_eq!(class(&a, 0, 0x202, false), Err(Reason::Malformed));
        // An answer to our deletion must name its pair.
        a.upd.rekey = Some(RekeyState {
            seq: 3,
            op: SaOp::Delete {
                spi_in: 0x101,
                spi_out: 0x201,
            },
            new_spi_in: 0,
            index: 0,
            dh: None,
        });
        assert_eq!(
            class(&a, 0x201, 0, true),
            Ok(Some(SaOp::Delete {
                spi_in: 0x101,
                spi_out: 0x201
            }))
        );
        assert_eq!(class(&a, 0x200, 0, true), Err(Reason::Malformed));
        // The pair limit refuses requests, not answers to ours.
        a.upd.extra_sas = (0..MAX_SA_PAIRS as u32 - 1)
            .map(|i| (0x1000 + i, 0x2000 + i))
            .collect();
        assert_eq!(class(&a, 0, 0x300, false), Err(Reason::Unsupported));
        assert_eq!(class(&a, 0, 0x300, true), Ok(Some(SaOp::Add)));
    }

    #[test]
    fn wire_address_mapping() {
        let v4 = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(from_wire_addr(to_wire_addr(v4)), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(from_wire_addr(to_wire_addr(v6)), v6);
        assert!(!same_family(v4, v6));
    }
}
