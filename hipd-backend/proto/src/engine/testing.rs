//! A deterministic in-memory network of two [`Endpoint`]s (like
//! quinn-proto's `Pair`), for engine, UPDATE and daemon tests.
//!
//! Time is simulated: [`Pair::step`] jumps to the next packet delivery or
//! endpoint deadline. The link has configurable latency, jitter (which
//! reorders packets), loss and duplication, all drawn from a seeded
//! ChaCha RNG, so a run is reproducible. A [`Filter`] sees every packet
//! before the link and may modify or drop it (targeted loss, tampering).
//! Transmits whose source the engine left open (`src: None`) get the
//! sending host's address and checksum here, as a daemon would do.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use super::{Datagram, Endpoint, Event, Transmit};
use crate::wire::{Packet, PacketType};

/// One of the two hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Host A.
    A,
    /// Host B.
    B,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Link impairments (same in both directions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way latency.
    pub latency: Duration,
    /// Extra random delay in `[0, jitter)`; reorders packets.
    pub jitter: Duration,
    /// Loss probability per packet (0..=1).
    pub loss: f64,
    /// Duplication probability per packet (0..=1).
    pub duplicate: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// A host: endpoint, address and the events it produced.
#[derive(Debug)]
pub struct Host {
    /// The engine.
    pub endpoint: Endpoint,
    /// The host's primary address (used for transmits without a source).
    pub addr: IpAddr,
    /// Further addresses of the host (multihoming); packets to them are
    /// delivered too. Remove an address (or change `addr`) to simulate a
    /// host moving: packets to an address no host has are lost.
    pub aliases: Vec<IpAddr>,
    /// Events drained from the endpoint, in order.
    pub events: Vec<Event>,
}

impl Host {
    /// Whether `addr` is one of the host's addresses.
    pub fn has_addr(&self, addr: IpAddr) -> bool {
        self.addr == addr || self.aliases.contains(&addr)
    }
}

/// One packet seen by the harness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Time it was sent.
    pub at: Instant,
    /// Sender.
    pub from: Side,
    /// HIP packet type.
    pub packet_type: PacketType,
    /// Whether it was put on the link (false: filtered or lost).
    pub sent: bool,
}

/// Called for every transmit before the link; return false to drop it.
pub type Filter = Box<dyn FnMut(Side, &mut Transmit) -> bool>;

#[derive(Debug)]
struct InFlight {
    at: Instant,
    seq: u64,
    to: Side,
    dgram: Datagram,
}

/// Two endpoints joined by a simulated link.
pub struct Pair {
    /// Host A.
    pub a: Host,
    /// Host B.
    pub b: Host,
    /// Simulated time.
    pub now: Instant,
    /// Link impairments.
    pub link: LinkConfig,
    /// Every transmit, in order.
    pub log: Vec<LogEntry>,
    rng: ChaCha20Rng,
    in_flight: Vec<InFlight>,
    seq: u64,
    filter: Option<Filter>,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("a", &self.a)
            .field("b", &self.b)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

fn roll(rng: &mut ChaCha20Rng, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

impl Pair {
    /// Joins two endpoints. `seed` drives the link impairments.
    pub fn new(
        a: Endpoint,
        a_addr: IpAddr,
        b: Endpoint,
        b_addr: IpAddr,
        now: Instant,
        link: LinkConfig,
        seed: u64,
    ) -> Pair {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Pair {
            a: Host {
                endpoint: a,
                addr: a_addr,
                aliases: Vec::new(),
                events: Vec::new(),
            },
            b: Host {
                endpoint: b,
                addr: b_addr,
                aliases: Vec::new(),
                events: Vec::new(),
            },
            now,
            link,
            log: Vec::new(),
            rng: ChaCha20Rng::from_seed(s),
            in_flight: Vec::new(),
            seq: 0,
            filter: None,
        }
    }

    /// Installs (or clears) the packet filter.
    pub fn set_filter(&mut self, f: Option<Filter>) {
        self.filter = f;
    }

    /// A host by side.
    pub fn host(&mut self, side: Side) -> &mut Host {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Puts a raw datagram on the link toward `to` (bypassing the filter),
    /// delivered after the link latency.
    pub fn inject(&mut self, to: Side, dgram: Datagram) {
        let at = self.now + self.link.latency;
        self.seq += 1;
        self.in_flight.push(InFlight {
            at,
            seq: self.seq,
            to,
            dgram,
        });
    }

    fn collect(&mut self) {
        for side in [Side::A, Side::B] {
            let h = self.host(side);
            while let Some(e) = h.endpoint.poll_event() {
                h.events.push(e);
            }
        }
    }

    fn flush(&mut self) {
        for side in [Side::A, Side::B] {
            loop {
                let host = self.host(side);
                let Some(mut t) = host.endpoint.poll_transmit() else {
                    break;
                };
                let addr = host.addr;
                if t.src.is_none() {
                    t.fill_checksum(addr);
                }
                let packet_type = Packet::new_unchecked(&t.payload[..]).packet_type();
                let mut keep = match self.filter.as_mut() {
                    Some(f) => f(side, &mut t),
                    None => true,
                };
                keep = keep && !roll(&mut self.rng, self.link.loss);
                self.log.push(LogEntry {
                    at: self.now,
                    from: side,
                    packet_type,
                    sent: keep,
                });
                if !keep {
                    continue;
                }
                let to = if self.a.has_addr(t.dst) {
                    Side::A
                } else if self.b.has_addr(t.dst) {
                    Side::B
                } else {
                    continue;
                };
                let copies = if roll(&mut self.rng, self.link.duplicate) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let jitter = if self.link.jitter.is_zero() {
                        Duration::ZERO
                    } else {
                        let n = self.link.jitter.as_nanos().max(1) as u64;
                        Duration::from_nanos(self.rng.next_u64() % n)
                    };
                    self.seq += 1;
                    self.in_flight.push(InFlight {
                        at: self.now + self.link.latency + jitter,
                        seq: self.seq,
                        to,
                        dgram: Datagram {
                            src: t.src.unwrap_or(addr),
                            dst: t.dst,
                            transport: t.transport,
                            payload: t.payload.clone(),
                        },
                    });
                }
            }
        }
    }

    /// Advances to the next delivery or deadline and processes it.
    /// Returns false when nothing is pending at all.
    pub fn step(&mut self) -> bool {
        self.collect();
        self.flush();
        let next_pkt = self.in_flight.iter().map(|p| (p.at, p.seq)).min();
        let next_timer = [
            self.a.endpoint.poll_timeout(),
            self.b.endpoint.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let next = match (next_pkt.map(|p| p.0), next_timer) {
            (Some(p), Some(t)) => p.min(t),
            (p, t) => match p.or(t) {
                Some(x) => x,
                None => return false,
            },
        };
        if next > self.now {
            self.now = next;
        }
        if let Some((at, seq)) = next_pkt
            && at <= self.now
            && let Some(pos) = self.in_flight.iter().position(|p| p.seq == seq)
        {
            let p = self.in_flight.swap_remove(pos);
            let now = self.now;
            self.host(p.to).endpoint.handle(now, p.dgram);
        } else {
            let now = self.now;
            for side in [Side::A, Side::B] {
                let h = self.host(side);
                if h.endpoint.poll_timeout().is_some_and(|t| t <= now) {
                    h.endpoint.handle_timeout(now);
                }
            }
        }
        self.collect();
        self.flush();
        true
    }

    /// Steps until `cond` holds or `limit` of simulated time has passed.
    /// Returns whether `cond` held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.collect();
            if cond(self) {
                return true;
            }
            if self.now > end || !self.step() {
                return cond(self);
            }
        }
    }

    /// A connects to B's HIT at `b_addr` and the pair runs (at most 10 s
    /// of simulated time) until A's association is ESTABLISHED and B has
    /// reported [`Event::Established`]; returns whether it got there.
    pub fn establish(&mut self, b_addr: IpAddr) -> bool {
        let b_hit = self.b.endpoint.local_hits()[0];
        let t = self.now;
        if self
            .a
            .endpoint
            .connect(t, Some(b_hit), vec![b_addr], None)
            .is_err()
        {
            return false;
        }
        self.run_until(Duration::from_secs(10), |p| {
            p.a.endpoint
                .association_by_peer(b_hit)
                .is_some_and(|a| a.state() == super::State::Established)
                && p.b
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::Established { .. }))
        })
    }

    /// Steps for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    /// Number of packets of `ty` sent by `from` (including dropped ones).
    pub fn count_sent(&self, from: Side, ty: PacketType) -> usize {
        self.log
            .iter()
            .filter(|l| l.from == from && l.packet_type == ty)
            .count()
    }
}

/// Kinds of test identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    /// RSA 2048.
    Rsa,
    /// ECDSA P-256.
    EcdsaP256,
    /// ECDSA P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
}

impl IdentityKind {
    /// All kinds.
    pub const ALL: [IdentityKind; 4] = [
        IdentityKind::Rsa,
        IdentityKind::EcdsaP256,
        IdentityKind::EcdsaP384,
        IdentityKind::Ed25519,
    ];
}

/// A process-wide cached identity of `kind` (variant `n` for distinct keys
/// of the same kind, `n < 4`). RSA keys come from OpenSSL's RNG (generated
/// once per process); the others from fixed entropy.
pub fn test_identity(
    kind: IdentityKind,
    n: usize,
) -> std::sync::Arc<dyn crate::crypto::PrivateIdentity> {
    use std::sync::{Arc, Mutex, OnceLock};

    use crate::crypto::{CryptoBackend, EcCurve, IdentitySpec, OpensslBackend, PrivateIdentity};
    type Cache = Mutex<Vec<((IdentityKind, usize), Arc<dyn PrivateIdentity>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, id)) = c.iter().find(|(k, _)| *k == (kind, n)) {
        return id.clone();
    }
    let spec = match kind {
        IdentityKind::Rsa => IdentitySpec::Rsa { bits: 2048 },
        IdentityKind::EcdsaP256 => IdentitySpec::Ecdsa(EcCurve::P256),
        IdentityKind::EcdsaP384 => IdentitySpec::Ecdsa(EcCurve::P384),
        IdentityKind::Ed25519 => IdentitySpec::Ed25519,
    };
    let entropy: Vec<u8> = (0..spec.entropy_len())
        .map(|i| (i as u8).wrapping_mul(37) ^ (n as u8).wrapping_mul(101) ^ 0x5a)
        .collect();
    let id: Arc<dyn PrivateIdentity> = Arc::from(
        OpensslBackend::new()
            .generate_identity(spec, &entropy)
            .unwrap_or_else(|e| panic!("test identity {kind:?}: {e}")),
    );
    c.push(((kind, n), id.clone()));
    id
}

/// The crypto backend the engine tests use (OpenSSL).
pub fn backend() -> std::sync::Arc<dyn crate::crypto::CryptoBackend> {
    std::sync::Arc::new(crate::crypto::OpensslBackend::new())
}

/// `2001:db8::n`, a test host address.
pub fn addr(n: u16) -> IpAddr {
    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
}
