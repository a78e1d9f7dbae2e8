//! The per-host engine.
//!
//! Choices the standards leave open, in addition to the [module
//! docs](super) (kept stable; these supersede the module docs' older
//! notes that R1s are not rate-limited and that Ed25519 cannot respond):
//!
//! * **R1 rate limit.** A token bucket ([`Config::r1_rate`] per second,
//!   [`Config::r1_burst`] deep, default 1000/s and 200) is charged per R1
//!   sent; I1s that find it empty are dropped and counted in
//!   [`Stats::r1_rate_limited`]. The check runs after the I1 was validated
//!   (so malformed I1s cost no token) and before the R1 is copied.
//! * **Newer R1 in I2-SENT** (RFC 7401 §6.8). An R1 whose R1_COUNTER is
//!   greater than the one our I2 echoed is verified and processed as in
//!   I1-SENT: a new puzzle solution, DH key, KEYMAT and inbound SPI, and a
//!   new I2 with fresh retransmission state ([`Stats::i2_restarted`]). An
//!   R1 with the same counter (or without one) resends the stored I2; an
//!   older one is dropped as a replay.
//! * **HIT suite fallback.** In I1-SENT, a signature-verified R1 whose
//!   HIT_SUITE_LIST excludes the suite of our HIT restarts the exchange
//!   with a fresh I1 from the first local identity whose suite the list
//!   names (in the Responder's order) and that this exchange has not used;
//!   a NOTIFY UNSUPPORTED_HIT_SUITE from the peer does the same with the
//!   first local identity of a suite not tried yet (accepted unsigned in
//!   I1-SENT, where no Responder HI is known; in I2-SENT only when its
//!   signature verifies against the R1's HI). The [`AssocId`] is kept, the
//!   association's local HIT changes ([`Stats::hit_suite_retries`]). With
//!   no such identity the association fails with
//!   [`FailReason::UnsupportedHitSuite`] as before.

pub(crate) mod update;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::Sha384;
use subtle::ConstantTimeEq;

use super::assoc::{Association, Retx, RetxLimit, Role, State, Suites};
use super::{
    AssocId, Config, Datagram, EngineError, EstablishedSas, Event, FailReason, Stats, Transmit,
    Transport,
};
use crate::crypto::{
    self, BeetAddrs, CryptoBackend, DhGroup, DhKeyPair, EspSuite, HashAlg, HipCipher, InnerFamily,
    Keymat, PrivateIdentity, PuzzleOutcome, SaDirection, SaParams, SecurityAssociation, cipher,
};
use crate::wire::{
    self, ChecksumMode, DhGroupId, EspSuiteId, HipCipherId, Hit, NotifyType, Packet, PacketRepr,
    PacketType, Param, WireError, param_type as pt,
};

/// ESP transport format type (= the ESP_TRANSFORM parameter type).
const TF_ESP: u16 = pt::ESP_TRANSFORM;
/// Receivers consider at most this many HIP_CIPHER / ESP_TRANSFORM entries.
const MAX_LIST: usize = 6;

#[derive(Debug, Clone)]
struct LocalIdentity {
    key: Arc<dyn PrivateIdentity>,
    hit: Hit,
    host_id_param: wire::HostId,
    /// RHASH of this identity's HIT suite, if supported (needed to respond).
    rhash: Option<HashAlg>,
}

#[derive(Debug)]
struct PrecomputedR1 {
    bytes: Vec<u8>,
    opaque_off: usize,
    i_off: usize,
    /// Shared with the associations it builds (their last DH key).
    dh: Arc<dyn DhKeyPair>,
    host_id_tlv: Vec<u8>,
}

#[derive(Debug)]
struct R1Generation {
    counter: u64,
    /// HMAC-SHA-384 keyed with `secret`, cloned per #I (no key setup per I1).
    puzzle_mac: Hmac<Sha384>,
    k: u8,
    echo: Vec<u8>,
    r1s: HashMap<(usize, u8), PrecomputedR1>,
}

/// Why a packet was dropped (maps to a [`Stats`] counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Malformed,
    BadHmac,
    BadSignature,
    UnsupportedCritical,
    UnexpectedState,
    Replay,
    BadHostId,
    Downgrade,
    Negotiation,
    Decrypt,
    Unsupported,
}

#[derive(Debug)]
struct Reject {
    reason: Reason,
    notify: Option<(NotifyType, Vec<u8>)>,
    fail: Option<FailReason>,
}

impl Reject {
    fn drop(reason: Reason) -> Reject {
        Reject {
            reason,
            notify: None,
            fail: None,
        }
    }
    fn notify(reason: Reason, ty: NotifyType) -> Reject {
        Reject {
            reason,
            notify: Some((ty, Vec::new())),
            fail: None,
        }
    }
    fn fail(mut self, f: FailReason) -> Reject {
        self.fail = Some(f);
        self
    }
}

impl From<crypto::CryptoError> for Reject {
    fn from(e: crypto::CryptoError) -> Reject {
        Reject::drop(Reason::Malformed).fail(FailReason::Crypto(e))
    }
}

impl From<WireError> for Reject {
    fn from(_: WireError) -> Reject {
        Reject::drop(Reason::Malformed)
    }
}

type Res<T> = Result<T, Reject>;

/// A HIP endpoint: local identities, precomputed R1s, associations.
pub struct Endpoint {
    config: Config,
    backend: Arc<dyn CryptoBackend>,
    idents: Vec<LocalIdentity>,
    rng: ChaCha20Rng,
    gen_cur: R1Generation,
    gen_prev: Option<R1Generation>,
    next_rotation: Instant,
    assocs: HashMap<AssocId, Association>,
    by_hits: HashMap<(Hit, Hit), AssocId>,
    by_spi: HashMap<u32, AssocId>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    /// The host's local locators, as last given to `set_local_locators`.
    local_locators: Option<Vec<super::LocalLocator>>,
    next_probe_id: u64,
    /// R1 rate limit bucket, in millionths of a token.
    r1_tokens: u64,
    /// When `r1_tokens` was last refilled.
    r1_refill_at: Instant,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field(
                "hits",
                &self.idents.iter().map(|i| i.hit).collect::<Vec<_>>(),
            )
            .field("associations", &self.assocs.len())
            .field("r1_counter", &self.gen_cur.counter)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn ip16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn checksum_mode(transport: Transport, src: Option<IpAddr>, dst: IpAddr) -> ChecksumMode {
    match (transport, src) {
        (Transport::Native, Some(s)) => {
            ChecksumMode::from_addrs(s, dst).unwrap_or(ChecksumMode::Udp)
        }
        _ => ChecksumMode::Udp,
    }
}

fn wire_hi_alg(a: crypto::HiAlgorithm) -> wire::HiAlgorithm {
    wire::HiAlgorithm::from_value(a.id())
}

impl Endpoint {
    /// Creates an endpoint. `identities[0]` is the default identity. `seed`
    /// seeds the engine CSPRNG; `now` starts the R1 rotation clock.
    pub fn new(
        config: Config,
        identities: Vec<Arc<dyn PrivateIdentity>>,
        backend: Arc<dyn CryptoBackend>,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Endpoint, EngineError> {
        config.validate()?;
        if identities.is_empty() {
            return Err(EngineError::Config("no local identity"));
        }
        let mut idents = Vec::with_capacity(identities.len());
        for key in identities {
            let hid = key.host_id();
            let hit = hid.hit(backend.as_ref())?;
            idents.push(LocalIdentity {
                hit,
                host_id_param: wire::HostId {
                    algorithm: wire_hi_alg(hid.algorithm()),
                    host_identity: hid.encoded().to_vec(),
                    di_type: 0,
                    domain_identifier: Vec::new(),
                },
                rhash: hid.hit_suite().rhash().ok(),
                key,
            });
        }
        let mut rng = ChaCha20Rng::from_seed(seed);
        let gen_cur = build_generation(
            &config,
            backend.as_ref(),
            &idents,
            &mut rng,
            config.r1_counter_start,
        )?;
        let r1_tokens = u64::from(config.r1_burst.max(1)) * 1_000_000;
        Ok(Endpoint {
            next_rotation: now + config.r1_rotation,
            config,
            backend,
            idents,
            rng,
            gen_cur,
            gen_prev: None,
            assocs: HashMap::new(),
            by_hits: HashMap::new(),
            by_spi: HashMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            local_locators: None,
            next_probe_id: 1,
            r1_tokens,
            r1_refill_at: now,
        })
    }

    // ------------------------------------------------------------ accessors

    /// Configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// HITs of the local identities (the first is the default).
    pub fn local_hits(&self) -> Vec<Hit> {
        self.idents.iter().map(|i| i.hit).collect()
    }
    /// Number of stored associations (in any state).
    pub fn association_count(&self) -> usize {
        self.assocs.len()
    }
    /// An association by handle.
    pub fn association(&self, id: AssocId) -> Option<&Association> {
        self.assocs.get(&id)
    }
    /// The association with a peer HIT (any local HIT).
    pub fn association_by_peer(&self, peer_hit: Hit) -> Option<&Association> {
        self.assocs.values().find(|a| a.peer_hit == Some(peer_hit))
    }
    /// The association whose inbound SPI is `spi`.
    pub fn association_by_spi(&self, spi: u32) -> Option<&Association> {
        self.by_spi.get(&spi).and_then(|id| self.assocs.get(id))
    }
    /// All associations.
    pub fn associations(&self) -> impl Iterator<Item = &Association> {
        self.assocs.values()
    }
    /// The current R1 generation counter.
    pub fn r1_counter(&self) -> u64 {
        self.gen_cur.counter
    }

    // ---------------------------------------------------------------- output

    /// Next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    /// When [`Endpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.assocs
            .values()
            .filter_map(Association::next_deadline)
            .chain(std::iter::once(self.next_rotation))
            .min()
    }

    fn push_tx(&mut self, t: Transmit) {
        self.stats.sent += 1;
        self.transmits.push_back(t);
    }

    /// Queues a copy of an already built packet (`payload`) for another
    /// pair: with a source the checksum is recomputed for it (the driver
    /// fills it in for packets without one); a pair of mixed families is
    /// skipped.
    pub(crate) fn push_copy(
        &mut self,
        src: Option<IpAddr>,
        dst: IpAddr,
        transport: Transport,
        payload: &[u8],
    ) {
        let mut t = Transmit {
            src: None,
            dst,
            transport,
            payload: payload.to_vec(),
        };
        if let Some(s) = src
            && !t.fill_checksum(s)
        {
            return;
        }
        self.push_tx(t);
    }

    fn rand_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.rng.fill_bytes(&mut v);
        v
    }

    fn new_spi(&mut self) -> u32 {
        loop {
            let s = self.rng.next_u32();
            if s >= 256 && !self.by_spi.contains_key(&s) {
                return s;
            }
        }
    }

    fn alloc_id(&mut self) -> AssocId {
        let id = AssocId(self.next_id);
        self.next_id += 1;
        id
    }

    fn identity_by_hit(&self, hit: Hit) -> Option<usize> {
        self.idents.iter().position(|i| i.hit == hit)
    }

    fn count(&mut self, r: Reason) {
        let s = &mut self.stats;
        let c = match r {
            Reason::Malformed => &mut s.malformed,
            Reason::BadHmac => &mut s.bad_hmac,
            Reason::BadSignature => &mut s.bad_signature,
            Reason::UnsupportedCritical => &mut s.unsupported_critical,
            Reason::UnexpectedState => &mut s.unexpected_state,
            Reason::Replay => &mut s.replay,
            Reason::BadHostId => &mut s.bad_host_id,
            Reason::Downgrade => &mut s.downgrade,
            Reason::Negotiation => &mut s.negotiation_failed,
            Reason::Decrypt => &mut s.decrypt_failed,
            Reason::Unsupported => &mut s.unsupported,
        };
        *c += 1;
    }

    // ------------------------------------------------------- packet building

    /// Appends HIP_MAC (or HIP_MAC_2 when `mac2_tlv` is given) and
    /// HIP_SIGNATURE to `repr`.
    fn sign_packet(
        &self,
        ident: usize,
        repr: &mut PacketRepr,
        mac: Option<(HashAlg, &[u8])>,
        mac2_tlv: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        if let Some((alg, key)) = mac {
            if let Some(tlv) = mac2_tlv {
                let input = repr.mac2_input(tlv)?;
                let m = self.backend.hmac(alg, key, &[&input])?;
                repr.params.push(Param::HipMac2(m.as_ref().to_vec()));
            } else {
                let input = repr.mac_input(pt::HIP_MAC)?;
                let m = self.backend.hmac(alg, key, &[&input])?;
                repr.params.push(Param::HipMac(m.as_ref().to_vec()));
            }
        }
        let id = self
            .idents
            .get(ident)
            .ok_or(EngineError::Config("identity index"))?;
        let input = repr.mac_input(pt::HIP_SIGNATURE)?;
        let signature = id.key.sign(&input)?;
        repr.params.push(Param::HipSignature(wire::Signature {
            algorithm: id.host_id_param.algorithm,
            signature,
        }));
        Ok(())
    }

    /// Authenticates an arbitrary control packet as this endpoint would
    /// its own: `repr` gets HIP_MAC (UPDATE, CLOSE, CLOSE_ACK; keyed with
    /// the association's outgoing HIP integrity key) and HIP_SIGNATURE
    /// appended, and is serialised with the checksum for `src → dst`.
    /// `repr.sender_hit` / `receiver_hit` must name an association of this
    /// endpoint that has keys; `None` otherwise or when `repr` cannot be
    /// emitted. Only with the `fuzzing` feature: the `hip_update` fuzz
    /// target uses it so that arbitrary UPDATE/NOTIFY/CLOSE parameters get
    /// past the MAC and signature checks of the peer.
    #[cfg(feature = "fuzzing")]
    pub fn seal_control_for_fuzzing(
        &self,
        mut repr: PacketRepr,
        src: Option<IpAddr>,
        dst: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let a = self
            .by_hits
            .get(&(repr.sender_hit, repr.receiver_hit))
            .and_then(|id| self.assocs.get(id))?;
        let (keys, s) = (a.hip_keys.as_ref()?, a.suites?);
        let key = keys.outgoing_int(a.local_is_g()).to_vec();
        let mac = match repr.packet_type {
            PacketType::Update | PacketType::Close | PacketType::CloseAck => {
                Some((s.rhash, &key[..]))
            }
            _ => None,
        };
        self.sign_packet(a.local_identity, &mut repr, mac, None)
            .ok()?;
        Self::make_transmit(&repr, src, dst, transport)
            .ok()
            .map(|t| t.payload)
    }

    fn make_transmit(
        repr: &PacketRepr,
        src: Option<IpAddr>,
        dst: IpAddr,
        transport: Transport,
    ) -> Result<Transmit, EngineError> {
        let payload = repr.to_bytes(checksum_mode(transport, src, dst))?;
        Ok(Transmit {
            src,
            dst,
            transport,
            payload,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn send_notify(
        &mut self,
        ident: usize,
        receiver: Hit,
        src: Option<IpAddr>,
        dst: IpAddr,
        transport: Transport,
        ty: NotifyType,
        data: Vec<u8>,
    ) {
        let Some(sender) = self.idents.get(ident).map(|i| i.hit) else {
            return;
        };
        let mut repr = PacketRepr::new(PacketType::Notify, sender, receiver).with(
            Param::Notification(wire::Notification { msg_type: ty, data }),
        );
        if self.sign_packet(ident, &mut repr, None, None).is_err() {
            return;
        }
        if let Ok(t) = Self::make_transmit(&repr, src, dst, transport) {
            self.stats.notify_sent += 1;
            self.push_tx(t);
        }
    }

    /// Sends an error NOTIFY to the peer of `a` in answer to `d` (from
    /// `d.dst` to `d.src`), only when `d.src` may receive one
    /// ([`Endpoint::notify_dst_allowed`]) and the association's token
    /// bucket has a token; otherwise counts it as suppressed / rate-limited.
    fn notify_peer(
        &mut self,
        a: &mut Association,
        now: Instant,
        d: &Datagram,
        ty: NotifyType,
        data: Vec<u8>,
    ) {
        if !Self::notify_dst_allowed(a, d.src) {
            self.stats.notify_suppressed += 1;
            return;
        }
        if !self.take_notify_token(a, now) {
            self.stats.notify_rate_limited += 1;
            return;
        }
        let peer = a.peer_hit.unwrap_or(Hit::ZERO);
        self.send_notify(
            a.local_identity,
            peer,
            Some(d.dst),
            d.src,
            d.transport.reply(),
            ty,
            data,
        );
    }

    /// Whether an error NOTIFY of association `a` may go to `dst`: an ACTIVE
    /// peer locator (the base-exchange address, which for a Responder is the
    /// source of the puzzle-solving I2, or a verified one), or, for an
    /// Initiator in I1-SENT, an address its I1 went to (chosen by us). Never
    /// the arbitrary source of an unauthenticated packet.
    fn notify_dst_allowed(a: &Association, dst: IpAddr) -> bool {
        let i1_sent = a.role == Role::Initiator && a.state == State::I1Sent;
        a.peer_locators
            .iter()
            .any(|l| l.addr == dst && (l.state == super::LocatorState::Active || i1_sent))
    }

    /// Takes one token of the association's NOTIFY bucket (refilling it
    /// first): at most [`Config::notify_burst`] tokens, one more per
    /// [`Config::notify_interval`].
    fn take_notify_token(&self, a: &mut Association, now: Instant) -> bool {
        const SCALE: u128 = 1_000_000;
        let cap = u128::from(self.config.notify_burst) * SCALE;
        if cap == 0 {
            return false;
        }
        let (tokens, at) = a.notify_bucket.unwrap_or((cap as u64, now));
        let elapsed = now.saturating_duration_since(at).as_nanos();
        let period = self.config.notify_interval.as_nanos();
        let refill = elapsed
            .saturating_mul(SCALE)
            .checked_div(period)
            .unwrap_or(cap);
        let mut tokens = u128::from(tokens).saturating_add(refill).min(cap);
        let ok = tokens >= SCALE;
        if ok {
            tokens -= SCALE;
        }
        a.notify_bucket = Some((u64::try_from(tokens).unwrap_or(u64::MAX), now.max(at)));
        ok
    }

    fn verify_mac(
        &self,
        pkt: &Packet<&[u8]>,
        alg: HashAlg,
        key: &[u8],
        mac2_tlv: Option<&[u8]>,
        got: &[u8],
    ) -> bool {
        let input = match mac2_tlv {
            Some(tlv) => pkt.mac2_input(tlv),
            None => pkt.mac_input(pt::HIP_MAC),
        };
        let Ok(input) = input else { return false };
        let Ok(m) = self.backend.hmac(alg, key, &[&input]) else {
            return false;
        };
        m.as_ref().len() == got.len() && bool::from(m.as_ref().ct_eq(got))
    }

    fn verify_signature(
        &self,
        pkt: &Packet<&[u8]>,
        host_id: &crypto::HostId,
        sig: Option<&wire::Signature>,
    ) -> bool {
        let Some(sig) = sig else { return false };
        if sig.algorithm.value() != host_id.algorithm().id() {
            return false;
        }
        let Ok(input) = pkt.mac_input(pt::HIP_SIGNATURE) else {
            return false;
        };
        self.backend.verify(host_id, &input, &sig.signature).is_ok()
    }

    // ----------------------------------------------------------- life cycle

    fn fail(&mut self, a: &mut Association, now: Instant, reason: FailReason) {
        a.state = State::Failed;
        a.retx = None;
        a.state_deadline = Some(now + self.config.failed_hold);
        self.events.push_back(Event::Failed {
            id: a.id,
            peer_hit: a.peer_hit,
            reason,
        });
    }

    fn remove(&mut self, id: AssocId) -> Option<Association> {
        let a = self.assocs.remove(&id)?;
        if let Some(p) = a.peer_hit
            && self.by_hits.get(&(a.local_hit, p)) == Some(&id)
        {
            self.by_hits.remove(&(a.local_hit, p));
        }
        for spi in [
            Some(a.spi_in),
            a.upd.old_sas.map(|o| o.0),
            a.upd.rekey_spi(),
        ]
        .into_iter()
        .flatten()
        .chain(a.upd.extra_inbound_spis())
        {
            if self.by_spi.get(&spi) == Some(&id) {
                self.by_spi.remove(&spi);
            }
        }
        Some(a)
    }

    /// Changes the puzzle difficulty #K of the R1s built from now on and
    /// rotates the precomputed R1s at once, so the next I1 gets the new
    /// difficulty. Live associations are unaffected; solutions to R1s of
    /// the previous generation stay acceptable for one rotation period.
    pub fn set_puzzle_k(&mut self, now: Instant, k: u8) -> Result<(), EngineError> {
        let old = self.config.puzzle_k;
        self.config.puzzle_k = k;
        if let Err(e) = self.rotate(now) {
            self.config.puzzle_k = old;
            return Err(e);
        }
        Ok(())
    }

    fn rotate(&mut self, now: Instant) -> Result<(), EngineError> {
        let counter = self.gen_cur.counter.saturating_add(1);
        let g = build_generation(
            &self.config,
            self.backend.as_ref(),
            &self.idents,
            &mut self.rng,
            counter,
        )?;
        self.gen_prev = Some(std::mem::replace(&mut self.gen_cur, g));
        self.next_rotation = now + self.config.r1_rotation;
        Ok(())
    }

    /// Processes expired timers: retransmissions, give-ups, state timeouts
    /// and R1 rotation.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_rotation && self.rotate(now).is_err() {
            // Keep serving the old generation; try again next period.
            self.next_rotation = now + self.config.r1_rotation;
        }
        let due: Vec<AssocId> = self
            .assocs
            .values()
            .filter(|a| a.next_deadline().is_some_and(|d| d <= now))
            .map(|a| a.id)
            .collect();
        for id in due {
            let Some(mut a) = self.assocs.remove(&id) else {
                continue;
            };
            let keep = self.assoc_timeout(&mut a, now);
            if keep {
                self.assocs.insert(id, a);
            } else {
                self.assocs.insert(id, a);
                self.remove(id);
            }
        }
    }

    /// Returns false when the association must be removed.
    fn assoc_timeout(&mut self, a: &mut Association, now: Instant) -> bool {
        if let Some(r) = a.retx.as_mut()
            && r.deadline <= now
        {
            if !r.expire(now) {
                a.retx = None;
                match a.state {
                    State::I1Sent => self.fail(a, now, FailReason::I1Timeout),
                    State::I2Sent => self.fail(a, now, FailReason::I2Timeout),
                    State::Closing => {
                        if let Some(p) = a.peer_hit {
                            self.events.push_back(Event::Closed {
                                id: a.id,
                                peer_hit: p,
                            });
                        }
                        return false;
                    }
                    _ => {}
                }
            } else {
                // One pair only, also after a shotgun I1 (RFC 7401, digest §14).
                // (The checksum is recomputed for a given source: shotgun
                // I1s share one payload among their pairs.)
                self.push_copy(r.src, r.dst, a.transport, &r.payload);
            }
        }
        if let Some(d) = a.state_deadline
            && d <= now
        {
            a.state_deadline = None;
            match a.state {
                State::R2Sent => {
                    a.state = State::Established;
                    self.events.push_back(Event::Confirmed { id: a.id });
                }
                State::Closed | State::Failed => return false,
                _ => {}
            }
        }
        self.upd_timeout(a, now);
        true
    }

    /// The data plane received authentic ESP traffic on inbound `spi`:
    /// confirms an association in R2-SENT (→ ESTABLISHED); after a rekey,
    /// traffic on the new inbound SPI retires the old SAs
    /// ([`Event::SasRetired`]).
    pub fn esp_received(&mut self, _now: Instant, spi: u32) {
        let Some(id) = self.by_spi.get(&spi).copied() else {
            return;
        };
        if let Some(a) = self.assocs.get_mut(&id)
            && a.state == State::R2Sent
        {
            a.state = State::Established;
            a.state_deadline = None;
            self.events.push_back(Event::Confirmed { id });
        }
        self.upd_esp_received(id, spi);
    }

    // ------------------------------------------------------------- connect

    /// Starts a base exchange as Initiator (state I1-SENT). `peer_hit`
    /// `None` is opportunistic (the HIT is learned from R1). Returns the
    /// existing association if one with this peer is alive.
    pub fn connect(
        &mut self,
        now: Instant,
        peer_hit: Option<Hit>,
        peer_locators: Vec<IpAddr>,
        local_hit: Option<Hit>,
    ) -> Result<AssocId, EngineError> {
        let Some(&first) = peer_locators.first() else {
            return Err(EngineError::NoLocators);
        };
        let ident = match local_hit {
            Some(h) => self
                .identity_by_hit(h)
                .ok_or(EngineError::UnknownIdentity(h))?,
            None => 0,
        };
        let hit = self.idents[ident].hit;
        if let Some(p) = peer_hit
            && let Some(&id) = self.by_hits.get(&(hit, p))
        {
            match self.assocs.get(&id).map(|a| a.state) {
                Some(State::Failed | State::Closed | State::Closing) | None => {
                    self.remove(id);
                }
                Some(_) => return Ok(id),
            }
        }
        let id = self.alloc_id();
        let mut a = Association::new(id, Role::Initiator, hit, ident);
        a.peer_hit = peer_hit;
        a.transport = self.config.initiator_transport;
        a.offered_groups = self.config.dh_groups.clone();
        a.peer_locators = peer_locators
            .iter()
            .enumerate()
            .map(|(i, &addr)| super::PeerLocator {
                addr,
                state: super::LocatorState::Unverified,
                preferred: i == 0,
                lifetime: u32::MAX,
                expires: None,
                spi: None,
            })
            .collect();
        a.state = State::I1Sent;
        let payload = self.i1_payload(hit, peer_hit.unwrap_or(Hit::ZERO))?;
        let mut pairs = if self.config.shotgun {
            self.shotgun_pairs(&peer_locators)
        } else {
            Vec::new()
        };
        if pairs.is_empty() {
            pairs = peer_locators.iter().take(3).map(|&d| (None, d)).collect();
        }
        for &(src, dst) in &pairs {
            self.push_copy(src, dst, a.transport, &payload);
        }
        // Retransmissions go to the first pair only.
        let (src, dst) = pairs.first().copied().unwrap_or((None, first));
        a.retx = Some(Retx::new(
            src,
            dst,
            payload,
            now,
            self.config.i1_timeout,
            RetxLimit::Retries(self.config.i1_retries),
        ));
        if let Some(p) = peer_hit {
            self.by_hits.insert((hit, p), id);
        }
        self.assocs.insert(id, a);
        Ok(id)
    }

    /// Shotgun mode's (source, destination) pairs for the first I1: every
    /// local locator with every peer locator of its family, peer locators
    /// in the given order, the first [`MAX_SHOTGUN_I1`] of them. Empty
    /// when no local locator is known (the routing table then picks the
    /// source).
    ///
    /// [`MAX_SHOTGUN_I1`]: super::MAX_SHOTGUN_I1
    pub(crate) fn shotgun_pairs(&self, peers: &[IpAddr]) -> Vec<(Option<IpAddr>, IpAddr)> {
        let Some(locals) = self.local_locators.as_ref() else {
            return Vec::new();
        };
        let mut v = Vec::new();
        for &dst in peers {
            for l in locals {
                if l.addr.is_ipv6() == dst.is_ipv6() && !v.contains(&(Some(l.addr), dst)) {
                    v.push((Some(l.addr), dst));
                }
            }
        }
        v.truncate(super::MAX_SHOTGUN_I1);
        v
    }

    /// Turns shotgun mode ([`Config::shotgun`]) on or off for the I1s and
    /// announcements sent from now on.
    pub fn set_shotgun(&mut self, on: bool) {
        self.config.shotgun = on;
    }

    fn i1_payload(&self, local: Hit, peer: Hit) -> Result<Vec<u8>, EngineError> {
        let repr = PacketRepr::new(PacketType::I1, local, peer).with(Param::DhGroupList(
            self.config
                .dh_groups
                .iter()
                .map(|g| DhGroupId::from(*g))
                .collect(),
        ));
        Ok(repr.to_bytes(ChecksumMode::Udp)?)
    }

    /// Takes one token of the R1 rate limit (refilling it first).
    fn take_r1_token(&mut self, now: Instant) -> bool {
        const SCALE: u64 = 1_000_000;
        let rate = u64::from(self.config.r1_rate);
        if rate == 0 {
            return true;
        }
        let cap = u64::from(self.config.r1_burst.max(1)) * SCALE;
        let elapsed = now.saturating_duration_since(self.r1_refill_at);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.r1_tokens = self
            .r1_tokens
            .saturating_add(micros.saturating_mul(rate))
            .min(cap);
        if now > self.r1_refill_at {
            self.r1_refill_at = now;
        }
        if self.r1_tokens >= SCALE {
            self.r1_tokens -= SCALE;
            true
        } else {
            false
        }
    }

    /// Initiator HIT suite fallback: restarts the exchange of `a` (I1-SENT
    /// or I2-SENT) toward `peer` from local identity `ident`, with a fresh
    /// I1 and I1 retransmission budget. False (nothing changed) when that
    /// identity already has an association with `peer`.
    fn restart_i1_from(
        &mut self,
        now: Instant,
        a: &mut Association,
        ident: usize,
        peer: Hit,
    ) -> bool {
        let Some(new_hit) = self.idents.get(ident).map(|i| i.hit) else {
            return false;
        };
        if self.by_hits.contains_key(&(new_hit, peer)) {
            return false;
        }
        let Ok(payload) = self.i1_payload(new_hit, peer) else {
            return false;
        };
        let dst = a
            .preferred_peer_locator()
            .or_else(|| a.peer_locators.first().map(|l| l.addr));
        let Some(dst) = dst else {
            return false;
        };
        if let Some(old_peer) = a.peer_hit
            && self.by_hits.get(&(a.local_hit, old_peer)) == Some(&a.id)
        {
            self.by_hits.remove(&(a.local_hit, old_peer));
        }
        if a.spi_in != 0 {
            self.by_spi.remove(&a.spi_in);
            a.spi_in = 0;
        }
        a.local_identity = ident;
        a.local_hit = new_hit;
        a.tried_identities.push(ident);
        a.peer_hit = Some(peer);
        a.state = State::I1Sent;
        a.suites = None;
        a.keymat = None;
        a.hip_keys = None;
        a.r1_counter = None;
        a.puzzle_ij = None;
        self.by_hits.insert((new_hit, peer), a.id);
        self.push_tx(Transmit {
            src: None,
            dst,
            transport: a.transport,
            payload: payload.clone(),
        });
        a.retx = Some(Retx::new(
            None,
            dst,
            payload,
            now,
            self.config.i1_timeout,
            RetxLimit::Retries(self.config.i1_retries),
        ));
        self.stats.hit_suite_retries += 1;
        true
    }

    /// NOTIFY UNSUPPORTED_HIT_SUITE from the peer of an Initiator
    /// association in I1-SENT (may be unauthenticated: no HI is known yet)
    /// or I2-SENT (must verify against the R1's HI): restart from the first
    /// local identity whose HIT suite was not tried yet.
    fn hit_suite_fallback(&mut self, now: Instant, sender: Hit, authenticated: bool, d: &Datagram) {
        let id = self
            .assocs
            .values()
            .find(|a| {
                a.role == Role::Initiator
                    && (a.state == State::I1Sent || (a.state == State::I2Sent && authenticated))
                    && (a.peer_hit == Some(sender)
                        || (a.peer_hit.is_none()
                            && a.peer_locators.iter().any(|l| l.addr == d.src)))
            })
            .map(|a| a.id);
        let Some(mut a) = id.and_then(|id| self.assocs.remove(&id)) else {
            return;
        };
        let tried: Vec<_> = a
            .tried_identities
            .iter()
            .filter_map(|&n| self.idents.get(n).map(|i| i.hit.suite()))
            .collect();
        if let Some(n) = (0..self.idents.len()).find(|&n| {
            !a.tried_identities.contains(&n) && !tried.contains(&self.idents[n].hit.suite())
        }) {
            self.restart_i1_from(now, &mut a, n, sender);
        }
        self.assocs.insert(a.id, a);
    }

    /// Closes the association with `peer_hit`: sends CLOSE (state CLOSING).
    /// An association without keys yet is simply removed (with
    /// [`Event::Closed`]).
    pub fn close(&mut self, now: Instant, peer_hit: Hit) -> Result<(), EngineError> {
        let id = self
            .assocs
            .values()
            .find(|a| {
                a.peer_hit == Some(peer_hit) && !matches!(a.state, State::Closing | State::Closed)
            })
            .map(|a| a.id)
            .ok_or(EngineError::UnknownAssociation)?;
        let mut a = self
            .assocs
            .remove(&id)
            .ok_or(EngineError::UnknownAssociation)?;
        let r = self.start_close(&mut a, now);
        self.assocs.insert(id, a);
        match r {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.remove(id);
                self.events.push_back(Event::Closed { id, peer_hit });
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn start_close(&mut self, a: &mut Association, now: Instant) -> Result<bool, EngineError> {
        let (Some(peer), Some(keys), Some(s), Some(dst)) = (
            a.peer_hit,
            a.hip_keys.as_ref(),
            a.suites,
            a.preferred_peer_locator(),
        ) else {
            return Ok(false);
        };
        if a.state == State::Failed {
            return Ok(false);
        }
        let echo = self.rand_bytes(16);
        let mut repr = PacketRepr::new(PacketType::Close, a.local_hit, peer)
            .with(Param::EchoRequestSigned(echo.clone()));
        let key = keys.outgoing_int(a.local_is_g()).to_vec();
        self.sign_packet(a.local_identity, &mut repr, Some((s.rhash, &key)), None)?;
        let src = a.preferred_local_locator();
        let t = Self::make_transmit(&repr, src, dst, a.transport)?;
        // RFC 7401 §4.4 (CLOSING): resent until the summed timeouts
        // exceed UAL + MSL.
        a.retx = Some(Retx::new(
            src,
            dst,
            t.payload.clone(),
            now,
            self.config.close_timeout,
            RetxLimit::Summed {
                spent: Duration::ZERO,
                budget: self.config.ual.saturating_add(self.config.msl),
                max_timeout: self.config.close_timeout_max,
            },
        ));
        self.push_tx(t);
        a.close_echo = Some(echo);
        a.state = State::Closing;
        a.state_deadline = None;
        Ok(true)
    }

    // --------------------------------------------------------------- input

    /// Processes one received HIP control packet.
    pub fn handle(&mut self, now: Instant, d: Datagram) {
        self.stats.received += 1;
        let Ok(pkt) = Packet::new_checked(&d.payload[..]) else {
            self.stats.malformed += 1;
            return;
        };
        let mode = match d.transport {
            Transport::Udp { .. } => ChecksumMode::Udp,
            Transport::Native => match ChecksumMode::from_addrs(d.src, d.dst) {
                Some(m) => m,
                None => {
                    self.stats.malformed += 1;
                    return;
                }
            },
        };
        if !pkt.verify_checksum(mode) {
            self.stats.bad_checksum += 1;
            return;
        }
        match pkt.packet_type() {
            PacketType::I1 => self.on_i1(now, &d, &pkt),
            PacketType::R1 => self.on_r1(now, &d, &pkt),
            PacketType::I2 => self.on_i2(now, &d, &pkt),
            PacketType::R2 => self.on_r2(now, &d, &pkt),
            PacketType::Close => self.on_close(now, &d, &pkt),
            PacketType::CloseAck => self.on_close_ack(now, &d, &pkt),
            PacketType::Notify => self.on_notify(now, &d, &pkt),
            PacketType::Update => self.on_update(now, &d, &pkt),
            _ => self.stats.malformed += 1,
        }
    }

    /// Parses a packet; on failure counts, and answers with a NOTIFY when
    /// the HIT pair names an association that has keys and the packet came
    /// from one of its ACTIVE peer locators ([`Endpoint::notify_peer`]:
    /// the packet itself is unauthenticated, so an arbitrary source never
    /// gets one).
    fn parse_or_reject(
        &mut self,
        now: Instant,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
    ) -> Option<PacketRepr> {
        match PacketRepr::parse(pkt) {
            Ok(r) => Some(r),
            Err(e) => {
                let (reason, ty, data) = match e {
                    WireError::UnsupportedCriticalParam(t) => (
                        Reason::UnsupportedCritical,
                        NotifyType::UnsupportedCriticalParameterType,
                        t.to_be_bytes().to_vec(),
                    ),
                    _ => (Reason::Malformed, NotifyType::InvalidSyntax, Vec::new()),
                };
                self.count(reason);
                let key = (pkt.receiver_hit(), pkt.sender_hit());
                if pkt.packet_type() != PacketType::Notify
                    && let Some(&id) = self.by_hits.get(&key)
                    && let Some(mut a) = self.assocs.remove(&id)
                {
                    if a.hip_keys.is_some() {
                        self.notify_peer(&mut a, now, d, ty, data);
                    }
                    self.assocs.insert(id, a);
                }
                None
            }
        }
    }

    fn apply_reject(
        &mut self,
        a: Option<&mut Association>,
        now: Instant,
        d: &Datagram,
        rej: Reject,
    ) {
        self.count(rej.reason);
        if let Some(a) = a {
            if let Some((ty, data)) = rej.notify {
                self.notify_peer(a, now, d, ty, data);
            }
            if let Some(f) = rej.fail {
                self.fail(a, now, f);
            }
        }
    }

    // ------------------------------------------------------------------ I1

    fn on_i1(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let Some(repr) = self.parse_or_reject(now, d, pkt) else {
            return;
        };
        let init_hit = repr.sender_hit;
        if init_hit.is_zero() {
            self.stats.malformed += 1;
            return;
        }
        let ident = if repr.receiver_hit.is_zero() {
            if !self.config.accept_opportunistic {
                self.stats.unknown_association += 1;
                return;
            }
            // RFC 7401 §4.1.6: prefer an identity of the Initiator's HIT
            // suite, else the first identity that can respond.
            let suite = init_hit.suite();
            let pick = self
                .idents
                .iter()
                .position(|i| i.rhash.is_some() && i.hit.suite() == suite)
                .or_else(|| self.idents.iter().position(|i| i.rhash.is_some()));
            match pick {
                Some(i) => i,
                None => {
                    self.stats.unsupported += 1;
                    return;
                }
            }
        } else {
            match self.identity_by_hit(repr.receiver_hit) {
                Some(i) => i,
                None => {
                    self.stats.unknown_association += 1;
                    return;
                }
            }
        };
        let (local_hit, Some(rhash)) = (self.idents[ident].hit, self.idents[ident].rhash) else {
            self.stats.unsupported += 1;
            return;
        };
        if let Some(a) = self
            .by_hits
            .get(&(local_hit, init_hit))
            .and_then(|id| self.assocs.get(id))
            && matches!(a.state, State::I1Sent | State::I2Sent)
            && local_hit < init_hit
        {
            self.stats.unexpected_state += 1;
            return;
        }
        let Some(Param::DhGroupList(theirs)) = repr.param(pt::DH_GROUP_LIST) else {
            self.stats.malformed += 1;
            return;
        };
        let group = self
            .config
            .dh_groups
            .iter()
            .find(|g| theirs.iter().any(|t| t.value() == g.id()))
            .or(self.config.dh_groups.first())
            .copied();
        let Some(group) = group else { return };
        if !self.gen_cur.r1s.contains_key(&(ident, group.id())) {
            self.stats.unsupported += 1;
            return;
        }
        if !self.take_r1_token(now) {
            self.stats.r1_rate_limited += 1;
            return;
        }
        let generation = &self.gen_cur;
        let Some(r1) = generation.r1s.get(&(ident, group.id())) else {
            return;
        };
        let i = puzzle_i(generation, rhash, init_hit, local_hit, d.src, d.dst);
        let mut bytes = r1.bytes.clone();
        let opaque = (generation.counter as u16).to_be_bytes();
        if let Some(o) = bytes.get_mut(r1.opaque_off..r1.opaque_off + 2) {
            o.copy_from_slice(&opaque);
        }
        if let Some(dst) = bytes.get_mut(r1.i_off..r1.i_off + i.len()) {
            dst.copy_from_slice(&i);
        }
        let transport = d.transport.reply();
        {
            let mut p = Packet::new_unchecked(&mut bytes[..]);
            p.set_receiver_hit(init_hit);
            p.fill_checksum(checksum_mode(transport, Some(d.dst), d.src));
        }
        self.stats.r1_sent += 1;
        self.push_tx(Transmit {
            src: Some(d.dst),
            dst: d.src,
            transport,
            payload: bytes,
        });
    }

    // ------------------------------------------------------------------ R1

    fn on_r1(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let local_hit = pkt.receiver_hit();
        let resp_hit = pkt.sender_hit();
        let id = match self.by_hits.get(&(local_hit, resp_hit)) {
            Some(&id) => id,
            None => match self.assocs.values().find(|a| {
                a.peer_hit.is_none()
                    && a.local_hit == local_hit
                    && a.state == State::I1Sent
                    && a.peer_locators.iter().any(|l| l.addr == d.src)
            }) {
                Some(a) => a.id,
                None => {
                    self.stats.unknown_association += 1;
                    return;
                }
            },
        };
        let Some(repr) = self.parse_or_reject(now, d, pkt) else {
            return;
        };
        let Some(mut a) = self.assocs.remove(&id) else {
            return;
        };
        let r = self.r1_inner(now, &mut a, d, pkt, &repr);
        if let Err(rej) = r {
            self.apply_reject(Some(&mut a), now, d, rej);
        }
        self.assocs.insert(id, a);
    }

    fn r1_inner(
        &mut self,
        now: Instant,
        a: &mut Association,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) -> Res<()> {
        let local_hit = repr.receiver_hit;
        let resp_hit = repr.sender_hit;
        let counter = match repr.param(pt::R1_COUNTER) {
            Some(Param::R1Counter(c)) => Some(c.clone()),
            _ => None,
        };
        match a.state {
            State::I1Sent => {}
            State::I2Sent => {
                let ordering = match (counter.as_ref(), a.r1_counter) {
                    (Some(c), Some(old)) => c.counter.cmp(&old),
                    _ => std::cmp::Ordering::Equal,
                };
                match ordering {
                    std::cmp::Ordering::Less => return Err(Reject::drop(Reason::Replay)),
                    std::cmp::Ordering::Equal => {
                        // Our I2 was probably lost: resend it.
                        if let Some(r) = a.retx.clone() {
                            self.push_tx(Transmit {
                                src: r.src,
                                dst: r.dst,
                                transport: a.transport,
                                payload: r.payload,
                            });
                        }
                        self.stats.replay += 1;
                        return Ok(());
                    }
                    // RFC 7401 §6.8: an R1 of a newer generation (our I2's
                    // puzzle may have expired there) restarts I2 with it.
                    // It is verified and processed as in I1-SENT below.
                    std::cmp::Ordering::Greater => {}
                }
            }
            State::Established | State::R2Sent => return Err(Reject::drop(Reason::Replay)),
            _ => return Err(Reject::drop(Reason::UnexpectedState)),
        }
        // Responder identity and R1 signature.
        let hid = repr.host_id().ok_or(Reject::drop(Reason::Malformed))?;
        let peer_hi = crypto::HostId::decode(hid.algorithm.value(), &hid.host_identity)
            .map_err(|_| Reject::drop(Reason::Malformed))?;
        let derived = peer_hi
            .hit(self.backend.as_ref())
            .map_err(|_| Reject::drop(Reason::Unsupported))?;
        if derived != resp_hit {
            return Err(Reject::drop(Reason::BadHostId));
        }
        let Some(Param::HipSignature2(sig)) = repr.param(pt::HIP_SIGNATURE_2) else {
            return Err(Reject::drop(Reason::Malformed));
        };
        let msg = pkt.signature2_input()?;
        if sig.algorithm.value() != peer_hi.algorithm().id()
            || self.backend.verify(&peer_hi, &msg, &sig.signature).is_err()
        {
            return Err(Reject::drop(Reason::BadSignature));
        }
        // DH group and downgrade check.
        let (Some(Param::DhGroupList(resp_groups)), Some(Param::DiffieHellman(dh))) = (
            repr.param(pt::DH_GROUP_LIST),
            repr.param(pt::DIFFIE_HELLMAN),
        ) else {
            return Err(Reject::drop(Reason::Malformed));
        };
        let offered = &a.offered_groups;
        let expected = resp_groups
            .iter()
            .find(|g| offered.iter().any(|o| o.id() == g.value()));
        if let Some(e) = expected
            && *e != dh.group
        {
            return Err(Reject::drop(Reason::Downgrade));
        }
        let group = DhGroup::try_from(dh.group)
            .ok()
            .filter(|g| offered.contains(g))
            .ok_or(
                Reject::notify(Reason::Negotiation, NotifyType::NoDhProposalChosen)
                    .fail(FailReason::NoDhProposal),
            )?;
        // Our HIT suite must be acceptable to the Responder.
        let our_suite = local_hit.suite();
        let accepted = repr
            .param(pt::HIT_SUITE_LIST)
            .and_then(Param::hit_suites)
            .ok_or(Reject::drop(Reason::Malformed))?;
        if !accepted
            .iter()
            .any(|s| s.as_ref().ok() == our_suite.as_ref())
        {
            // RFC 7401 §5.2.10: restart from a local identity of a suite the
            // (signature-verified) R1 lists, in the Responder's order.
            if a.state == State::I1Sent {
                let pick = accepted
                    .iter()
                    .filter_map(|s| s.as_ref().ok())
                    .find_map(|s| {
                        self.idents.iter().enumerate().position(|(n, i)| {
                            i.hit.suite().as_ref() == Some(s) && !a.tried_identities.contains(&n)
                        })
                    });
                if let Some(n) = pick
                    && self.restart_i1_from(now, a, n, resp_hit)
                {
                    return Ok(());
                }
            }
            return Err(
                Reject::notify(Reason::Negotiation, NotifyType::UnsupportedHitSuite)
                    .fail(FailReason::UnsupportedHitSuite),
            );
        }
        let rhash = crypto::hit_suite(&resp_hit)
            .and_then(|s| s.rhash())
            .map_err(|_| {
                Reject::drop(Reason::Unsupported).fail(FailReason::UnsupportedResponderSuite)
            })?;
        // HIP cipher.
        let Some(Param::HipCipher(ciphers)) = repr.param(pt::HIP_CIPHER) else {
            return Err(Reject::drop(Reason::Malformed));
        };
        let offered_c: Vec<u16> = ciphers.iter().take(MAX_LIST).map(|c| c.value()).collect();
        let hcipher = *self
            .config
            .hip_ciphers
            .iter()
            .find(|c| offered_c.contains(&c.id()))
            .ok_or(
                Reject::notify(Reason::Negotiation, NotifyType::NoHipProposalChosen)
                    .fail(FailReason::NoHipCipher),
            )?;
        // Transport format and ESP transform.
        let no_esp = || {
            Reject::notify(Reason::Negotiation, NotifyType::NoEspProposalChosen)
                .fail(FailReason::NoEspTransform)
        };
        match repr.param(pt::TRANSPORT_FORMAT_LIST) {
            Some(Param::TransportFormatList(l)) if l.contains(&TF_ESP) => {}
            _ => return Err(no_esp()),
        }
        let Some(Param::EspTransform(esps)) = repr.param(pt::ESP_TRANSFORM) else {
            return Err(no_esp());
        };
        let offered_e: Vec<u16> = esps.iter().take(MAX_LIST).map(|e| e.value()).collect();
        let esp = *self
            .config
            .esp_suites
            .iter()
            .find(|e| offered_e.contains(&e.id()))
            .ok_or_else(no_esp)?;
        // Puzzle.
        let Some(Param::Puzzle(puzzle)) = repr.param(pt::PUZZLE) else {
            return Err(Reject::drop(Reason::Malformed));
        };
        if puzzle.random_i.len() != rhash.output_len() {
            return Err(Reject::drop(Reason::Malformed));
        }
        if puzzle.k > self.config.max_puzzle_k {
            return Err(Reject::drop(Reason::Negotiation).fail(FailReason::PuzzleTooHard));
        }
        let start = self.rand_bytes(rhash.output_len());
        let j = match crypto::solve_puzzle(
            self.backend.as_ref(),
            rhash,
            &puzzle.random_i,
            &local_hit,
            &resp_hit,
            puzzle.k,
            &start,
            self.config.puzzle_budget,
        )? {
            PuzzleOutcome::Solved(j) => j,
            PuzzleOutcome::Incomplete(_) => {
                return Err(Reject::drop(Reason::Negotiation).fail(FailReason::PuzzleTooHard));
            }
        };
        // DH, KEYMAT, HIP keys.
        let ent = self.rand_bytes(group.private_entropy_len());
        let my_dh = self.backend.dh_generate(group, &ent)?;
        let kij = my_dh
            .shared_secret(&dh.public_value)
            .map_err(|_| Reject::drop(Reason::Malformed))?;
        let mut keymat = Keymat::new(
            self.backend.as_ref(),
            rhash,
            &kij,
            &local_hit,
            &resp_hit,
            &puzzle.random_i,
            &j,
        )?;
        let hip_keys = keymat.draw_hip_keys(self.backend.as_ref(), hcipher, rhash)?;
        let index = u16::try_from(keymat.index()).map_err(|_| Reject::drop(Reason::Malformed))?;
        let local_is_g = local_hit > resp_hit;
        let spi_in = self.new_spi();
        // Build I2.
        let mut i2 = PacketRepr::new(PacketType::I2, local_hit, resp_hit)
            .with(Param::EspInfo(wire::EspInfo {
                keymat_index: index,
                old_spi: 0,
                new_spi: spi_in,
            }))
            .with(Param::Solution(wire::Solution {
                k: puzzle.k,
                opaque: puzzle.opaque,
                random_i: puzzle.random_i.clone(),
                solution_j: j.clone(),
            }))
            .with(Param::DiffieHellman(wire::DiffieHellman {
                group: dh.group,
                public_value: my_dh.public_value().to_vec(),
            }))
            .with(Param::HipCipher(vec![HipCipherId::from(hcipher)]))
            .with(Param::TransportFormatList(vec![TF_ESP]))
            .with(Param::EspTransform(vec![EspSuiteId::from(esp)]));
        if let Some(c) = counter.clone() {
            i2.params.push(Param::R1Counter(c));
        }
        let host_id = Param::HostId(self.idents[a.local_identity].host_id_param.clone());
        if hcipher == HipCipher::Null {
            i2.params.push(host_id);
        } else {
            let pt_bytes = host_id.to_tlv_bytes()?;
            let iv = self.rand_bytes(hcipher.iv_len());
            let ct = cipher::encrypt(
                self.backend.as_ref(),
                hcipher,
                hip_keys.outgoing_enc(local_is_g),
                &iv,
                &pt_bytes,
            )?;
            let mut data = iv;
            data.extend_from_slice(&ct);
            i2.params.push(Param::Encrypted(wire::Encrypted {
                reserved: 0,
                iv_and_ciphertext: data,
            }));
        }
        for p in repr.params_of(pt::ECHO_REQUEST_SIGNED) {
            if let Param::EchoRequestSigned(e) = p {
                i2.params.push(Param::EchoResponseSigned(e.clone()));
            }
        }
        let mac_key = hip_keys.outgoing_int(local_is_g).to_vec();
        self.sign_packet(a.local_identity, &mut i2, Some((rhash, &mac_key)), None)
            .map_err(|_| Reject::drop(Reason::Unsupported))?;
        for p in repr.params_of(pt::ECHO_REQUEST_UNSIGNED) {
            if let Param::EchoRequestUnsigned(e) = p {
                i2.params.push(Param::EchoResponseUnsigned(e.clone()));
            }
        }
        let transport = d.transport.reply();
        let t = Self::make_transmit(&i2, Some(d.dst), d.src, transport)
            .map_err(|_| Reject::drop(Reason::Malformed))?;
        // Commit.
        let host_id_tlv = pkt
            .find_param(pt::HOST_ID)?
            .map(|p| p.tlv.to_vec())
            .ok_or(Reject::drop(Reason::Malformed))?;
        if a.peer_hit.is_none() {
            if self.by_hits.contains_key(&(local_hit, resp_hit)) {
                return Err(Reject::drop(Reason::UnexpectedState));
            }
            a.peer_hit = Some(resp_hit);
            self.by_hits.insert((local_hit, resp_hit), a.id);
        }
        a.peer_host_id = Some(peer_hi);
        a.r1_host_id_tlv = host_id_tlv;
        a.suites = Some(Suites {
            dh_group: group,
            hip_cipher: hcipher,
            esp,
            rhash,
        });
        a.keymat = Some(keymat);
        a.hip_keys = Some(hip_keys);
        a.keymat_index = index;
        a.dh_local = Some(Arc::from(my_dh));
        a.dh_peer_public = Some(dh.public_value.clone());
        if a.state == State::I2Sent {
            // Restarted I2: the SPI announced in the previous one is void.
            self.by_spi.remove(&a.spi_in);
            self.stats.i2_restarted += 1;
        }
        a.spi_in = spi_in;
        self.by_spi.insert(spi_in, a.id);
        a.r1_counter = counter.map(|c| c.counter);
        a.puzzle_ij = Some((puzzle.random_i.clone(), j));
        a.set_exchange_locators(d.dst, d.src);
        a.transport = transport;
        a.state = State::I2Sent;
        a.retx = Some(Retx::new(
            Some(d.dst),
            d.src,
            t.payload.clone(),
            now,
            self.config.i2_timeout,
            RetxLimit::Retries(self.config.i2_retries),
        ));
        self.push_tx(t);
        Ok(())
    }

    // ------------------------------------------------------------------ I2

    fn on_i2(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let local_hit = pkt.receiver_hit();
        let init_hit = pkt.sender_hit();
        let Some(ident) = self.identity_by_hit(local_hit) else {
            self.stats.unknown_association += 1;
            return;
        };
        let Some(rhash) = self.idents[ident].rhash else {
            self.stats.unsupported += 1;
            return;
        };
        if init_hit.is_zero() {
            self.stats.malformed += 1;
            return;
        }
        // Cheap checks on the raw packet first: R1 counter and puzzle.
        let raw = |ty: u16| -> Option<Param> {
            let p = pkt.find_param(ty).ok()??;
            Param::parse(p.ty, p.contents).ok()
        };
        let (Some(Param::R1Counter(rc)), Some(Param::Solution(sol))) =
            (raw(pt::R1_COUNTER), raw(pt::SOLUTION))
        else {
            self.stats.malformed += 1;
            return;
        };
        let generation = if rc.counter == self.gen_cur.counter {
            &self.gen_cur
        } else if let Some(p) = self.gen_prev.as_ref().filter(|p| p.counter == rc.counter) {
            p
        } else {
            let oldest = self
                .gen_prev
                .as_ref()
                .map_or(self.gen_cur.counter, |p| p.counter);
            if rc.counter < oldest {
                self.stats.replay += 1;
            } else {
                self.stats.bad_puzzle += 1;
            }
            return;
        };
        let puzzle_ok = {
            let i = puzzle_i(generation, rhash, init_hit, local_hit, d.src, d.dst);
            sol.random_i.len() == i.len()
                && bool::from(sol.random_i.as_slice().ct_eq(&i))
                && sol.k == generation.k
                && sol.opaque == generation.counter as u16
                && crypto::verify_puzzle(
                    self.backend.as_ref(),
                    rhash,
                    &i,
                    &init_hit,
                    &local_hit,
                    sol.k,
                    &sol.solution_j,
                )
                .is_ok()
        };
        if !puzzle_ok {
            self.stats.bad_puzzle += 1;
            return;
        }
        // Existing association with this peer.
        let existing = self.by_hits.get(&(local_hit, init_hit)).copied();
        let dh_pub = match raw(pt::DIFFIE_HELLMAN) {
            Some(Param::DiffieHellman(dh)) => dh.public_value,
            _ => Vec::new(),
        };
        if let Some(id) = existing
            && let Some(a) = self.assocs.get(&id)
        {
            if a.state == State::I2Sent && local_hit < init_hit {
                self.stats.unexpected_state += 1;
                return;
            }
            if matches!(a.state, State::R2Sent | State::Established)
                && a.i2_fingerprint.as_ref() == Some(&(sol.solution_j.clone(), dh_pub.clone()))
            {
                if let Some(r2) = a.last_r2.clone() {
                    let transport = d.transport.reply();
                    let mut payload = r2;
                    Packet::new_unchecked(&mut payload[..]).fill_checksum(checksum_mode(
                        transport,
                        Some(d.dst),
                        d.src,
                    ));
                    self.push_tx(Transmit {
                        src: Some(d.dst),
                        dst: d.src,
                        transport,
                        payload,
                    });
                }
                self.stats.replay += 1;
                return;
            }
        }
        // The peer solved our puzzle: from here on errors may be NOTIFYed.
        // The puzzle (#I bound to the I2's addresses) makes its source the
        // one address an error NOTIFY may go to; a fresh scratch association
        // per solved puzzle: at most `notify_burst` NOTIFYs per solution.
        let mut scratch = Association::new(AssocId(0), Role::Responder, local_hit, ident);
        scratch.peer_hit = Some(init_hit);
        scratch.set_exchange_locators(d.dst, d.src);
        let repr = match PacketRepr::parse(pkt) {
            Ok(r) => r,
            Err(e) => {
                let rej = match e {
                    WireError::UnsupportedCriticalParam(t) => Reject {
                        reason: Reason::UnsupportedCritical,
                        notify: Some((
                            NotifyType::UnsupportedCriticalParameterType,
                            t.to_be_bytes().to_vec(),
                        )),
                        fail: None,
                    },
                    _ => Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax),
                };
                self.apply_reject(Some(&mut scratch), now, d, rej);
                return;
            }
        };
        match self.i2_inner(now, d, pkt, &repr, ident, rhash, rc.counter, &sol, existing) {
            Ok(()) => {}
            Err(mut rej) => {
                // No association exists yet: nothing to fail.
                rej.fail = None;
                self.apply_reject(Some(&mut scratch), now, d, rej);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn i2_inner(
        &mut self,
        now: Instant,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
        ident: usize,
        rhash: HashAlg,
        counter: u64,
        sol: &wire::Solution,
        existing: Option<AssocId>,
    ) -> Res<()> {
        let local_hit = repr.receiver_hit;
        let init_hit = repr.sender_hit;
        let syntax = || Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax);
        let Some(Param::DiffieHellman(dh)) = repr.param(pt::DIFFIE_HELLMAN) else {
            return Err(syntax());
        };
        if repr.params_of(pt::DIFFIE_HELLMAN).count() != 1 {
            return Err(syntax());
        }
        // DH against the R1 we sent (same generation, identity, group).
        let (kij, group, r1_tlv, echo, r1_dh) = {
            let generation = if counter == self.gen_cur.counter {
                &self.gen_cur
            } else {
                self.gen_prev.as_ref().ok_or(syntax())?
            };
            let r1 = generation
                .r1s
                .get(&(ident, dh.group.value()))
                .ok_or(Reject::notify(
                    Reason::Negotiation,
                    NotifyType::InvalidDhChosen,
                ))?;
            let kij = r1
                .dh
                .shared_secret(&dh.public_value)
                .map_err(|_| Reject::notify(Reason::Negotiation, NotifyType::InvalidDhChosen))?;
            (
                kij,
                r1.dh.group(),
                r1.host_id_tlv.clone(),
                generation.echo.clone(),
                Arc::clone(&r1.dh),
            )
        };
        // HIP cipher: exactly one, one we offered.
        let hcipher = match repr.param(pt::HIP_CIPHER) {
            Some(Param::HipCipher(l)) if l.len() == 1 => HipCipher::try_from(l[0])
                .ok()
                .filter(|c| self.config.hip_ciphers.contains(c)),
            _ => None,
        }
        .ok_or(Reject::notify(
            Reason::Negotiation,
            NotifyType::InvalidHipCipherChosen,
        ))?;
        let bad_esp = || Reject::notify(Reason::Negotiation, NotifyType::InvalidEspTransformChosen);
        match repr.param(pt::TRANSPORT_FORMAT_LIST) {
            Some(Param::TransportFormatList(l)) if l.contains(&TF_ESP) => {}
            _ => return Err(bad_esp()),
        }
        let esp = match repr.param(pt::ESP_TRANSFORM) {
            Some(Param::EspTransform(l)) if l.len() == 1 => EspSuite::try_from(l[0])
                .ok()
                .filter(|e| self.config.esp_suites.contains(e)),
            _ => None,
        }
        .ok_or_else(bad_esp)?;
        if self.config.r1_echo_signed {
            match repr.param(pt::ECHO_RESPONSE_SIGNED) {
                Some(Param::EchoResponseSigned(e)) if *e == echo => {}
                _ => return Err(syntax()),
            }
        }
        let Some(Param::EspInfo(esp_info)) = repr.param(pt::ESP_INFO) else {
            return Err(syntax());
        };
        // KEYMAT and HIP keys.
        let mut keymat = Keymat::new(
            self.backend.as_ref(),
            rhash,
            &kij,
            &init_hit,
            &local_hit,
            &sol.random_i,
            &sol.solution_j,
        )?;
        let hip_keys = keymat.draw_hip_keys(self.backend.as_ref(), hcipher, rhash)?;
        let local_is_g = local_hit > init_hit;
        // Initiator's HOST_ID, encrypted or not.
        let hid = match repr.param(pt::ENCRYPTED) {
            Some(Param::Encrypted(enc)) => {
                let dec = || -> Option<wire::HostId> {
                    let (iv, ct) = enc.split_iv(hcipher.iv_len())?;
                    let pt_bytes = cipher::decrypt(
                        self.backend.as_ref(),
                        hcipher,
                        hip_keys.incoming_enc(local_is_g),
                        iv,
                        ct,
                    )
                    .ok()?;
                    wire::parse_params(&pt_bytes)
                        .ok()?
                        .into_iter()
                        .find_map(|p| match p {
                            Param::HostId(h) => Some(h),
                            _ => None,
                        })
                };
                dec().ok_or(Reject::notify(
                    Reason::Decrypt,
                    NotifyType::EncryptionFailed,
                ))?
            }
            _ => repr.host_id().cloned().ok_or_else(syntax)?,
        };
        let peer_hi = crypto::HostId::decode(hid.algorithm.value(), &hid.host_identity)
            .map_err(|_| syntax())?;
        let derived = peer_hi
            .hit(self.backend.as_ref())
            .map_err(|_| Reject::notify(Reason::BadHostId, NotifyType::InvalidHit))?;
        if derived != init_hit {
            return Err(Reject::notify(Reason::BadHostId, NotifyType::InvalidHit));
        }
        if !self
            .config
            .hit_suites
            .iter()
            .any(|s| Some(wire::HitSuiteId::from_value(s.id())) == init_hit.suite())
        {
            return Err(Reject::notify(
                Reason::Negotiation,
                NotifyType::UnsupportedHitSuite,
            ));
        }
        // HIP_MAC before the signature.
        let Some(Param::HipMac(mac)) = repr.param(pt::HIP_MAC) else {
            return Err(syntax());
        };
        if !self.verify_mac(pkt, rhash, hip_keys.incoming_int(local_is_g), None, mac) {
            return Err(Reject::notify(Reason::BadHmac, NotifyType::HipMacFailed));
        }
        let sig = match repr.param(pt::HIP_SIGNATURE) {
            Some(Param::HipSignature(s)) => Some(s),
            _ => None,
        };
        if !self.verify_signature(pkt, &peer_hi, sig) {
            return Err(Reject::notify(
                Reason::BadSignature,
                NotifyType::AuthenticationFailed,
            ));
        }
        if esp_info.old_spi != 0
            || esp_info.new_spi == 0
            || usize::from(esp_info.keymat_index) != keymat.index()
        {
            return Err(syntax());
        }
        // Accepted: SAs, R2, association.
        let index = esp_info.keymat_index;
        let esp_keys = keymat.draw_esp_keys(self.backend.as_ref(), esp)?;
        let spi_in = self.new_spi();
        let beet = BeetAddrs {
            local_hit,
            peer_hit: init_hit,
            lsis: None,
            deliver_as: InnerFamily::V6,
        };
        let (oe, oa) = esp_keys.outbound(local_is_g);
        let (ie, ia) = esp_keys.inbound(local_is_g);
        let seed_o: [u8; 32] = self.rng_array();
        let seed_i: [u8; 32] = self.rng_array();
        let outbound = self.make_sa(
            esp_info.new_spi,
            esp,
            oe,
            oa,
            SaDirection::Outbound,
            beet,
            seed_o,
        )?;
        let inbound = self.make_sa(spi_in, esp, ie, ia, SaDirection::Inbound, beet, seed_i)?;
        let mut r2 = PacketRepr::new(PacketType::R2, local_hit, init_hit).with(Param::EspInfo(
            wire::EspInfo {
                keymat_index: index,
                old_spi: 0,
                new_spi: spi_in,
            },
        ));
        let mac_key = hip_keys.outgoing_int(local_is_g).to_vec();
        self.sign_packet(ident, &mut r2, Some((rhash, &mac_key)), Some(&r1_tlv))
            .map_err(|_| Reject::drop(Reason::Unsupported))?;
        let transport = d.transport.reply();
        let t = Self::make_transmit(&r2, Some(d.dst), d.src, transport)
            .map_err(|_| Reject::drop(Reason::Malformed))?;
        // Replace any previous association with this peer, keeping its id.
        let id = match existing {
            Some(id) => {
                self.remove(id);
                id
            }
            None => self.alloc_id(),
        };
        let mut a = Association::new(id, Role::Responder, local_hit, ident);
        a.peer_hit = Some(init_hit);
        a.peer_host_id = Some(peer_hi);
        a.suites = Some(Suites {
            dh_group: group,
            hip_cipher: hcipher,
            esp,
            rhash,
        });
        a.keymat = Some(keymat);
        a.hip_keys = Some(hip_keys);
        a.keymat_index = index;
        a.spi_in = spi_in;
        a.spi_out = esp_info.new_spi;
        a.r1_counter = Some(counter);
        a.puzzle_ij = Some((sol.random_i.clone(), sol.solution_j.clone()));
        a.dh_local = Some(r1_dh);
        a.dh_peer_public = Some(dh.public_value.clone());
        a.set_exchange_locators(d.dst, d.src);
        a.transport = transport;
        a.state = State::R2Sent;
        let ec = self
            .config
            .i2_timeout
            .saturating_mul(self.config.i2_retries.saturating_add(1));
        a.state_deadline = Some(now + ec);
        a.i2_fingerprint = Some((sol.solution_j.clone(), dh.public_value.clone()));
        a.last_r2 = Some(t.payload.clone());
        self.push_tx(t);
        self.by_hits.insert((local_hit, init_hit), id);
        self.by_spi.insert(spi_in, id);
        self.adopt_local_locators(now, &mut a);
        self.assocs.insert(id, a);
        self.events.push_back(Event::Established {
            id,
            role: Role::Responder,
            local_hit,
            peer_hit: init_hit,
            local_locator: d.dst,
            peer_locator: d.src,
            transport,
            sas: Box::new(EstablishedSas {
                suite: esp,
                outbound,
                inbound,
            }),
        });
        Ok(())
    }

    fn rng_array(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    #[allow(clippy::too_many_arguments)]
    fn make_sa(
        &self,
        spi: u32,
        suite: EspSuite,
        enc_key: &[u8],
        auth_key: &[u8],
        direction: SaDirection,
        beet: BeetAddrs,
        iv_seed: [u8; 32],
    ) -> Res<SecurityAssociation> {
        SecurityAssociation::new(
            self.backend.as_ref(),
            SaParams {
                spi,
                suite,
                enc_key,
                auth_key,
                direction,
                beet,
                replay_window: self.config.replay_window,
                iv_seed,
            },
        )
        .map_err(|_| Reject::drop(Reason::Unsupported))
    }

    // ------------------------------------------------------------------ R2

    fn on_r2(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
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
        let r = self.r2_inner(&mut a, d, pkt, &repr);
        if r.is_ok() && a.state == State::Established {
            self.adopt_local_locators(now, &mut a);
        }
        if let Err(rej) = r {
            // R2 failures never fail the association (it may be forged);
            // the I2 retransmission continues.
            self.count(rej.reason);
            if let Some((ty, data)) = rej.notify {
                self.notify_peer(&mut a, now, d, ty, data);
            }
        }
        self.assocs.insert(id, a);
    }

    fn r2_inner(
        &mut self,
        a: &mut Association,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) -> Res<()> {
        match a.state {
            State::I2Sent => {}
            State::Established => return Err(Reject::drop(Reason::Replay)),
            _ => return Err(Reject::drop(Reason::UnexpectedState)),
        }
        let (Some(s), Some(keys), Some(peer_hi)) =
            (a.suites, a.hip_keys.as_ref(), a.peer_host_id.as_ref())
        else {
            return Err(Reject::drop(Reason::UnexpectedState));
        };
        let local_is_g = a.local_is_g();
        let Some(Param::HipMac2(mac)) = repr.param(pt::HIP_MAC_2) else {
            return Err(Reject::drop(Reason::Malformed));
        };
        if !self.verify_mac(
            pkt,
            s.rhash,
            keys.incoming_int(local_is_g),
            Some(&a.r1_host_id_tlv),
            mac,
        ) {
            return Err(Reject::notify(Reason::BadHmac, NotifyType::HipMacFailed));
        }
        let sig = match repr.param(pt::HIP_SIGNATURE) {
            Some(Param::HipSignature(s)) => Some(s),
            _ => None,
        };
        if !self.verify_signature(pkt, peer_hi, sig) {
            return Err(Reject::notify(
                Reason::BadSignature,
                NotifyType::AuthenticationFailed,
            ));
        }
        let Some(Param::EspInfo(info)) = repr.param(pt::ESP_INFO) else {
            return Err(Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax));
        };
        if info.old_spi != 0 || info.new_spi == 0 || info.keymat_index != a.keymat_index {
            return Err(Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax));
        }
        let peer_hit = a.peer_hit.ok_or(Reject::drop(Reason::UnexpectedState))?;
        let keymat = a
            .keymat
            .as_mut()
            .ok_or(Reject::drop(Reason::UnexpectedState))?;
        keymat.set_index(usize::from(a.keymat_index))?;
        let esp_keys = keymat.draw_esp_keys(self.backend.as_ref(), s.esp)?;
        let beet = BeetAddrs {
            local_hit: a.local_hit,
            peer_hit,
            lsis: None,
            deliver_as: InnerFamily::V6,
        };
        let (oe, oa) = esp_keys.outbound(local_is_g);
        let (ie, ia) = esp_keys.inbound(local_is_g);
        let seed_o = self.rng_array();
        let seed_i = self.rng_array();
        let outbound = self.make_sa(
            info.new_spi,
            s.esp,
            oe,
            oa,
            SaDirection::Outbound,
            beet,
            seed_o,
        )?;
        let inbound = self.make_sa(a.spi_in, s.esp, ie, ia, SaDirection::Inbound, beet, seed_i)?;
        a.spi_out = info.new_spi;
        a.state = State::Established;
        a.retx = None;
        self.events.push_back(Event::Established {
            id: a.id,
            role: Role::Initiator,
            local_hit: a.local_hit,
            peer_hit,
            local_locator: d.dst,
            peer_locator: d.src,
            transport: a.transport,
            sas: Box::new(EstablishedSas {
                suite: s.esp,
                outbound,
                inbound,
            }),
        });
        Ok(())
    }

    // --------------------------------------------------------- CLOSE / ACK

    /// Checks HIP_MAC and HIP_SIGNATURE of a packet of association `a`.
    fn check_mac_sig(&self, a: &Association, pkt: &Packet<&[u8]>, repr: &PacketRepr) -> Res<()> {
        let (Some(s), Some(keys), Some(peer_hi)) =
            (a.suites, a.hip_keys.as_ref(), a.peer_host_id.as_ref())
        else {
            return Err(Reject::drop(Reason::UnexpectedState));
        };
        let Some(Param::HipMac(mac)) = repr.param(pt::HIP_MAC) else {
            return Err(Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax));
        };
        if !self.verify_mac(pkt, s.rhash, keys.incoming_int(a.local_is_g()), None, mac) {
            return Err(Reject::notify(Reason::BadHmac, NotifyType::HipMacFailed));
        }
        let sig = match repr.param(pt::HIP_SIGNATURE) {
            Some(Param::HipSignature(s)) => Some(s),
            _ => None,
        };
        if !self.verify_signature(pkt, peer_hi, sig) {
            return Err(Reject::notify(
                Reason::BadSignature,
                NotifyType::AuthenticationFailed,
            ));
        }
        Ok(())
    }

    fn on_close(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
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
        if let Err(rej) = self.close_inner(now, &mut a, d, pkt, &repr) {
            self.count(rej.reason);
            if let Some((ty, data)) = rej.notify {
                self.notify_peer(&mut a, now, d, ty, data);
            }
        }
        self.assocs.insert(id, a);
    }

    fn close_inner(
        &mut self,
        now: Instant,
        a: &mut Association,
        d: &Datagram,
        pkt: &Packet<&[u8]>,
        repr: &PacketRepr,
    ) -> Res<()> {
        if matches!(a.state, State::I1Sent | State::Failed) {
            return Err(Reject::drop(Reason::UnexpectedState));
        }
        self.check_mac_sig(a, pkt, repr)?;
        let Some(Param::EchoRequestSigned(echo)) = repr.param(pt::ECHO_REQUEST_SIGNED) else {
            return Err(Reject::notify(Reason::Malformed, NotifyType::InvalidSyntax));
        };
        let (Some(s), Some(keys), Some(peer)) = (a.suites, a.hip_keys.as_ref(), a.peer_hit) else {
            return Err(Reject::drop(Reason::UnexpectedState));
        };
        let mut ack = PacketRepr::new(PacketType::CloseAck, a.local_hit, peer)
            .with(Param::EchoResponseSigned(echo.clone()));
        let key = keys.outgoing_int(a.local_is_g()).to_vec();
        self.sign_packet(a.local_identity, &mut ack, Some((s.rhash, &key)), None)
            .map_err(|_| Reject::drop(Reason::Unsupported))?;
        let t = Self::make_transmit(&ack, Some(d.dst), d.src, d.transport.reply())
            .map_err(|_| Reject::drop(Reason::Malformed))?;
        self.push_tx(t);
        if a.state != State::Closed {
            a.state = State::Closed;
            a.retx = None;
            a.state_deadline = Some(now + self.config.closed_hold);
            self.events.push_back(Event::Closed {
                id: a.id,
                peer_hit: peer,
            });
        }
        Ok(())
    }

    fn on_close_ack(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let key = (pkt.receiver_hit(), pkt.sender_hit());
        let Some(&id) = self.by_hits.get(&key) else {
            self.stats.unknown_association += 1;
            return;
        };
        let Some(repr) = self.parse_or_reject(now, d, pkt) else {
            return;
        };
        let Some(a) = self.assocs.get(&id) else {
            return;
        };
        if !matches!(a.state, State::Closing | State::Closed) {
            self.stats.unexpected_state += 1;
            return;
        }
        if let Err(rej) = self.check_mac_sig(a, pkt, &repr) {
            self.count(rej.reason);
            return;
        }
        let echo_ok = matches!(
            (repr.param(pt::ECHO_RESPONSE_SIGNED), a.close_echo.as_ref()),
            (Some(Param::EchoResponseSigned(e)), Some(mine)) if e == mine
        );
        if !echo_ok {
            self.stats.malformed += 1;
            return;
        }
        let was_closing = a.state == State::Closing;
        if let Some(a) = self.remove(id)
            && was_closing
            && let Some(p) = a.peer_hit
        {
            self.events.push_back(Event::Closed { id, peer_hit: p });
        }
    }

    // -------------------------------------------------------------- NOTIFY

    fn on_notify(&mut self, now: Instant, d: &Datagram, pkt: &Packet<&[u8]>) {
        let Some(repr) = self.parse_or_reject(now, d, pkt) else {
            return;
        };
        let sender = repr.sender_hit;
        let known_hi = self
            .assocs
            .values()
            .find(|a| {
                a.peer_hit == Some(sender)
                    && (repr.receiver_hit.is_zero() || a.local_hit == repr.receiver_hit)
            })
            .and_then(|a| a.peer_host_id.clone());
        let sig = match repr.param(pt::HIP_SIGNATURE) {
            Some(Param::HipSignature(s)) => Some(s),
            _ => None,
        };
        let authenticated = match known_hi {
            Some(hi) => {
                if !self.verify_signature(pkt, &hi, sig) {
                    self.stats.bad_signature += 1;
                    return;
                }
                true
            }
            None => repr
                .host_id()
                .and_then(|h| crypto::HostId::decode(h.algorithm.value(), &h.host_identity).ok())
                .filter(|hi| hi.hit(self.backend.as_ref()).ok() == Some(sender))
                .is_some_and(|hi| self.verify_signature(pkt, &hi, sig)),
        };
        for p in &repr.params {
            if let Param::Notification(n) = p {
                if n.msg_type == NotifyType::UnsupportedHitSuite {
                    self.hit_suite_fallback(now, sender, authenticated, d);
                }
                self.events.push_back(Event::NotifyReceived {
                    peer_hit: sender,
                    authenticated,
                    msg_type: n.msg_type,
                    data: n.data.clone(),
                });
            }
        }
    }
}

/// `#I = HMAC-SHA-384(secret, HIT-I ‖ HIT-R ‖ IP-I ‖ IP-R)` truncated to
/// RHASH_len (RFC 7401 App. A: any keyed PRF the Responder can recompute;
/// #I is opaque to the Initiator). Pure Rust with a pre-keyed state so the
/// I1 path stays in the microsecond range.
fn puzzle_i(
    generation: &R1Generation,
    rhash: HashAlg,
    hit_i: Hit,
    hit_r: Hit,
    ip_i: IpAddr,
    ip_r: IpAddr,
) -> Vec<u8> {
    let mut m = generation.puzzle_mac.clone();
    m.update(hit_i.as_bytes());
    m.update(hit_r.as_bytes());
    m.update(&ip16(ip_i));
    m.update(&ip16(ip_r));
    let out = m.finalize().into_bytes();
    let n = rhash.output_len().min(out.len());
    out.get(..n).unwrap_or_default().to_vec()
}

/// Builds the signed R1s of one generation.
fn build_generation(
    config: &Config,
    backend: &dyn CryptoBackend,
    idents: &[LocalIdentity],
    rng: &mut ChaCha20Rng,
    counter: u64,
) -> Result<R1Generation, EngineError> {
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let echo = backend
        .hmac(HashAlg::Sha256, &secret, &[b"r1 echo"])?
        .as_ref()[..8]
        .to_vec();
    let mut r1s = HashMap::new();
    let lifetime = config.puzzle_lifetime_exp();
    for (idx, ident) in idents.iter().enumerate() {
        let Some(rhash) = ident.rhash else { continue };
        for &group in &config.dh_groups {
            let mut ent = vec![0u8; group.private_entropy_len()];
            rng.fill_bytes(&mut ent);
            let dh = backend.dh_generate(group, &ent)?;
            let mut repr = PacketRepr::new(PacketType::R1, ident.hit, Hit::ZERO)
                .with(Param::R1Counter(wire::R1Counter {
                    reserved: 0,
                    counter,
                }))
                .with(Param::Puzzle(wire::Puzzle {
                    k: config.puzzle_k,
                    lifetime,
                    opaque: 0,
                    random_i: vec![0; rhash.output_len()],
                }))
                .with(Param::DhGroupList(
                    config
                        .dh_groups
                        .iter()
                        .map(|g| DhGroupId::from(*g))
                        .collect(),
                ))
                .with(Param::DiffieHellman(wire::DiffieHellman {
                    group: DhGroupId::from(group),
                    public_value: dh.public_value().to_vec(),
                }))
                .with(Param::HipCipher(
                    config
                        .hip_ciphers
                        .iter()
                        .map(|c| HipCipherId::from(*c))
                        .collect(),
                ))
                .with(Param::HostId(ident.host_id_param.clone()))
                .with(Param::HitSuiteList(
                    config.hit_suites.iter().map(|s| s.id() << 4).collect(),
                ))
                .with(Param::TransportFormatList(vec![TF_ESP]))
                .with(Param::EspTransform(
                    config
                        .esp_suites
                        .iter()
                        .map(|e| EspSuiteId::from(*e))
                        .collect(),
                ));
            if config.r1_echo_signed {
                repr.params.push(Param::EchoRequestSigned(echo.clone()));
            }
            let msg = repr.signature2_input()?;
            let signature = ident.key.sign(&msg)?;
            repr.params.push(Param::HipSignature2(wire::Signature {
                algorithm: ident.host_id_param.algorithm,
                signature,
            }));
            let bytes = repr.to_bytes(ChecksumMode::Udp)?;
            let (opaque_off, i_off, host_id_tlv) = {
                let pkt = Packet::new_checked(&bytes[..])?;
                let pz = pkt
                    .find_param(pt::PUZZLE)?
                    .ok_or(EngineError::Config("R1 without PUZZLE"))?;
                let hid = pkt
                    .find_param(pt::HOST_ID)?
                    .ok_or(EngineError::Config("R1 without HOST_ID"))?;
                (pz.offset + 4 + 2, pz.offset + 4 + 4, hid.tlv.to_vec())
            };
            r1s.insert(
                (idx, group.id()),
                PrecomputedR1 {
                    bytes,
                    opaque_off,
                    i_off,
                    dh: Arc::from(dh),
                    host_id_tlv,
                },
            );
        }
    }
    let puzzle_mac = <Hmac<Sha384> as Mac>::new_from_slice(&secret)
        .map_err(|_| EngineError::Config("puzzle secret"))?;
    Ok(R1Generation {
        counter,
        puzzle_mac,
        k: config.puzzle_k,
        echo,
        r1s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn puzzle_i_is_stateless_and_bound_to_hits_and_addresses() {
        let id = crate::engine::testing::test_identity(
            crate::engine::testing::IdentityKind::EcdsaP256,
            0,
        );
        let cfg = Config {
            dh_groups: vec![DhGroup::EcdhP256],
            ..Config::default()
        };
        let be: Arc<dyn CryptoBackend> = Arc::new(crypto::OpensslBackend::new());
        let ep = Endpoint::new(cfg, vec![id], be, [3; 32], Instant::now()).expect("endpoint");
        let g = &ep.gen_cur;
        let ip = |n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        let (h1, h2) = (Hit::from_u128(1), Hit::from_u128(2));
        let base = puzzle_i(g, HashAlg::Sha384, h1, h2, ip(1), ip(2));
        assert_eq!(base.len(), 48);
        assert_eq!(base, puzzle_i(g, HashAlg::Sha384, h1, h2, ip(1), ip(2)));
        assert_eq!(puzzle_i(g, HashAlg::Sha256, h1, h2, ip(1), ip(2)).len(), 32);
        assert_ne!(base, puzzle_i(g, HashAlg::Sha384, h2, h1, ip(1), ip(2)));
        assert_ne!(base, puzzle_i(g, HashAlg::Sha384, h1, h2, ip(3), ip(2)));
        assert_ne!(base, puzzle_i(g, HashAlg::Sha384, h1, h2, ip(1), ip(3)));
        // One R1 per (identity, group), signed with receiver HIT = 0.
        assert_eq!(g.r1s.len(), 1);
        let r1 = g.r1s.values().next().expect("r1");
        let pkt = Packet::new_checked(&r1.bytes[..]).expect("r1 parses");
        assert!(pkt.receiver_hit().is_zero());
        assert_eq!(pkt.packet_type(), PacketType::R1);
    }

    #[test]
    fn default_config_precomputes_an_r1_per_group_including_group_3() {
        let id = crate::engine::testing::test_identity(
            crate::engine::testing::IdentityKind::EcdsaP256,
            0,
        );
        let be: Arc<dyn CryptoBackend> = Arc::new(crypto::OpensslBackend::new());
        let ep = Endpoint::new(Config::default(), vec![id], be, [4; 32], Instant::now())
            .expect("endpoint");
        let mut groups: Vec<u8> = ep.gen_cur.r1s.keys().map(|&(_, g)| g).collect();
        groups.sort_unstable();
        assert_eq!(groups, vec![3, 4, 7, 8, 11]);
        let r1 = &ep.gen_cur.r1s[&(0, 3)];
        let pkt = Packet::new_checked(&r1.bytes[..]).expect("r1 parses");
        let repr = PacketRepr::parse(&pkt).expect("r1 repr");
        match repr.param(pt::DIFFIE_HELLMAN) {
            Some(Param::DiffieHellman(dh)) => {
                assert_eq!(dh.group.value(), 3);
                assert_eq!(dh.public_value.len(), 192, "1536-bit public value");
            }
            other => panic!("no DIFFIE_HELLMAN in R1: {other:?}"),
        }
        assert_eq!(r1.dh.group(), DhGroup::Modp1536);
    }
}
