//! The daemon: engine driver, TUN/ESP data plane, control server.
//!
//! # Threads
//! * **driver** — runs engine timers ([`Endpoint::handle_timeout`]) and
//!   sleeps on a condition variable until the next engine deadline;
//! * **tun** — reads packets from `hip0`, seals them with the outbound SA of
//!   (source HIT, destination HIT) and sends them; a miss queues the packet
//!   (≤ [`PENDING_MAX`] per peer) and starts the base exchange;
//! * one **receiver** per underlay socket (raw 139 and 50, UDP 10500; IPv4
//!   and IPv6) — HIP control goes to the engine, ESP is opened with the
//!   inbound SA of its SPI and written to `hip0`;
//! * **locators** — netlink address/link events → local locator list;
//! * **control** — one thread per control-socket connection;
//! * the main thread waits for SIGTERM/SIGINT and shuts down: every live
//!   association is closed with CLOSE (waiting up to 2 s for CLOSE_ACKs),
//!   the control socket is removed, and the TUN device (with its addresses
//!   and routes) disappears when the process exits.
//!
//! # Two engines, one per underlay
//! The engine's Initiator transport is a construction-time setting, so the
//! daemon runs two [`Endpoint`]s over the same identities: one whose
//! exchanges start on native HIP (protocol 139) and one on UDP 10500.
//! Control packets are handed to the engine of the transport they arrived
//! on (replies use the request's transport), so an association lives on
//! one transport for its lifetime; its ESP uses the same underlay
//! (protocol 50, or ESP directly in UDP 10500). Which engine initiates
//! towards a peer is the per-peer mapping's transport, else the global
//! `nat` setting.
//!
//! # Locking
//! `core` (engines, mappings, queues) is always taken before `dp` (the SA
//! tables); no thread takes `core` while holding `dp`. SAs are installed
//! under `core`, and the TUN thread re-checks for an SA under `core` before
//! queueing, so no queued packet is ever stranded.
//!
//! # Choices
//! * Local LSIs are 1.0.0.1, 1.0.0.2, … in identity order; peer LSIs come
//!   from the mapping, the `hosts` file, or are allocated from 1.0.1.1 up.
//! * LSI packets are translated to HIT packets before sealing (the wire
//!   format does not depend on the family, RFC 7401 / HIPL behaviour).
//!   Inbound packets are delivered as IPv4/LSI when they belong to a flow
//!   the host started over LSIs, or when nothing listens on the destination
//!   port over IPv6 but something does over IPv4 (`/proc/net/{tcp,udp}`),
//!   otherwise as IPv6/HIT.
//! * DH groups: ECDH P-256, P-384, MODP-3072, MODP-2048, MODP-1536 (group
//!   3, the RFC 7401 MUST group, least preferred) in this order;
//!   other algorithm lists are the engine defaults.
//! * Puzzle difficulty #K = [`DEFAULT_PUZZLE_K`] (4): RFC 7401 lets the
//!   Responder pick a low #K when not under attack; it keeps the
//!   Initiator's share of the base exchange small (#K = 10 costs about a
//!   millisecond of hashing per exchange here). Raise it at run time with
//!   `hipconf daemon set puzzle K` (or `set puzzle K` in `hipd.conf`).
//! * TUN MTU 1400: leaves room for the outer IPv6 header, UDP and the ESP
//!   overhead on a 1500-byte underlay. On a narrower path the router's
//!   Packet Too Big sets the kernel's path MTU (ESP is then fragmented, no
//!   exploration) and hipd's (module `pmtu`): the sending application is
//!   told the inner MTU that fits with a Packet Too Big into hip0, if it
//!   is at least 1280, or for LSI (IPv4) traffic with Don't Fragment set
//!   with a Fragmentation Needed, if it is at least 576 (lab tests
//!   `hipd_packet_too_big_is_a_path_mtu_not_a_failure`,
//!   `hipd_tells_the_application_the_inner_path_mtu`,
//!   `hipd_tells_an_lsi_application_the_inner_path_mtu`).
//! * `set puzzle` re-signs the precomputed R1s with the new #K at once; live
//!   associations are unaffected.
//! * ESP to an UNVERIFIED peer locator (RFC 8046 §5.6, credit-based
//!   authorization, module `cba`): allowed only within the association's
//!   credit (ESP bytes received from the peer, aged by the engine), debited
//!   per packet by the sealing threads from a mirror of the credit that the
//!   driver refreshes on locator and path events and every 20 ms; packets
//!   beyond it are dropped (not held), counted as `esp_cba_dropped` in the
//!   stats' counter list (`esp_cba_bytes`: bytes sent within the credit).
//!   With every peer locator verified the check is one relaxed load.

mod cba;
mod failover;
mod files;
mod lsi;
pub mod net;
mod pmtu;
mod shim;
mod sockdiag;
mod tun;

pub use files::{
    ConfFile, HipHosts, LoadedIdentity, load_identities, parse_conf, resolve_in_hosts,
};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hip_proto::crypto::{
    CryptoBackend, DhGroup, InnerFamily, OpensslBackend, PrivateIdentity, SecurityAssociation, esp,
};
use hip_proto::engine::{
    AssocId, Config, Datagram, Endpoint, Event, LocalLocator, LocatorState, State, Transmit,
    Transport,
};
use hip_proto::wire::Hit;
use rand::RngCore;

use crate::control::{
    DebugLevel, ErrorCode, HaInfo, HiInfo, HiSelector, MapInfo, NatMode, Reply, Request, Response,
    StatsInfo, decode_request,
};
use net::{HIP_UDP_PORT, Kind, USock};
use tun::Tun;

/// Packets queued per peer while its base exchange runs.
pub const PENDING_MAX: usize = 512;

/// TUN MTU.
pub const TUN_MTU: u32 = 1400;

/// Default puzzle difficulty #K in our R1s.
pub const DEFAULT_PUZZLE_K: u8 = 4;

/// Daemon options (command line).
#[derive(Debug, Clone)]
pub struct Options {
    /// Configuration directory (`/etc/hip`).
    pub config_dir: PathBuf,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// System hosts file (`/etc/hosts`).
    pub system_hosts: PathBuf,
    /// TUN device name.
    pub tun_name: String,
    /// UDP encapsulation port.
    pub udp_port: u16,
    /// MTU of the TUN device ([`TUN_MTU`] by default). Larger values make
    /// the kernel fragment (and reassemble) the outer ESP packets, which
    /// trades per-packet costs for fragmentation: use only on paths that
    /// pass IP fragments.
    pub tun_mtu: u32,
    /// TUN queues, one sealing thread each; 0: one per CPU, at most
    /// [`MAX_TUN_QUEUES`].
    pub tun_queues: usize,
}

/// Most TUN queues chosen automatically (`Options::tun_queues` 0).
pub const MAX_TUN_QUEUES: usize = 4;

impl Default for Options {
    fn default() -> Self {
        Options {
            config_dir: PathBuf::from("/etc/hip"),
            control_socket: PathBuf::from(crate::control::DEFAULT_SOCKET),
            system_hosts: PathBuf::from("/etc/hosts"),
            tun_name: "hip0".into(),
            udp_port: HIP_UDP_PORT,
            tun_mtu: TUN_MTU,
            tun_queues: 0,
        }
    }
}

/// Counters kept by the daemon (engine counters are read from the engines).
#[derive(Debug, Default)]
struct Counters {
    hip_rx: AtomicU64,
    hip_tx: AtomicU64,
    esp_tx: AtomicU64,
    esp_rx: AtomicU64,
    malformed: AtomicU64,
    esp_unknown_spi: AtomicU64,
    esp_bad: AtomicU64,
    queued: AtomicU64,
    queue_dropped: AtomicU64,
    no_mapping: AtomicU64,
    keepalives_tx: AtomicU64,
    keepalives_rx: AtomicU64,
    icmp_errors: AtomicU64,
    icmp_too_big: AtomicU64,
    icmp_fragment_lost: AtomicU64,
    ptb_to_tun: AtomicU64,
    repaired: AtomicU64,
    /// ESP packets to an UNVERIFIED peer locator dropped for lack of
    /// credit (module `cba`).
    esp_cba_dropped: AtomicU64,
    /// ESP bytes sent to UNVERIFIED peer locators within the credit.
    esp_cba_bytes: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Where an outbound SA's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Path {
    src: IpAddr,
    dst: IpAddr,
    /// UDP destination port (None: native protocol 50).
    udp: Option<u16>,
}

#[derive(Debug)]
struct OutSa {
    sa: Mutex<SecurityAssociation>,
    path: Mutex<Path>,
    packets: AtomicU64,
    ep: usize,
    id: AssocId,
    /// Traffic stamps for failure detection (shared with the inbound SA).
    live: Arc<failover::Liveness>,
    /// Credit-based authorization towards UNVERIFIED peer locators (one
    /// per association, shared by its outbound SAs).
    cba: Arc<cba::Gate>,
}

#[derive(Debug)]
struct InSa {
    sa: Mutex<SecurityAssociation>,
    confirmed: AtomicBool,
    packets: AtomicU64,
    /// Bytes received since the driver last reported them to the engine
    /// (credit-based authorization).
    rx_bytes: AtomicU64,
    ep: usize,
    local: Hit,
    peer: Hit,
    live: Arc<failover::Liveness>,
}

/// SA tables and LSI maps (read on every packet).
#[derive(Debug, Default)]
struct DataPlane {
    out: HashMap<(Hit, Hit), Arc<OutSa>>,
    inb: HashMap<u32, Arc<InSa>>,
    /// Peer LSI → peer HIT.
    lsi_peer: HashMap<Ipv4Addr, Hit>,
    /// Peer HIT → peer LSI.
    peer_lsi: HashMap<Hit, Ipv4Addr>,
    /// Local LSI ↔ local HIT.
    local_lsi: HashMap<Ipv4Addr, Hit>,
    local_hit_lsi: HashMap<Hit, Ipv4Addr>,
    /// Flows delivered as IPv4: (peer HIT, proto, local port, peer port).
    lsi_flows: Mutex<HashMap<(Hit, u8, u16, u16), bool>>,
    /// Listener family decisions per (proto, local port), with the time
    /// they were made (reused for [`lsi::PORT_DECISION_TTL`]).
    port_family: Mutex<HashMap<(u8, u16), (bool, Instant)>>,
    /// Sockets registered through the shim API.
    flows: HashMap<shim::FlowKey, Arc<shim::FlowDp>>,
    /// Live outbound SAs that are not their association's primary (pairs
    /// added with ESP_INFO OLD = 0), by outbound SPI.
    out_spare: HashMap<u32, Arc<OutSa>>,
}

#[derive(Debug, Clone)]
struct PeerMap {
    ips: Vec<IpAddr>,
    lsi: Ipv4Addr,
    transport: Option<NatMode>,
}

#[derive(Debug, Clone)]
struct IdentInfo {
    hit: Hit,
    lsi: Ipv4Addr,
    algorithm: String,
    file: PathBuf,
}

struct Core {
    eps: Vec<Endpoint>,
    idents: Vec<IdentInfo>,
    maps: BTreeMap<Hit, PeerMap>,
    next_lsi: u32,
    nat: NatMode,
    shotgun: bool,
    /// `opportunistic on|off` (hipd.conf): answer opportunistic I1s and
    /// start opportunistic exchanges.
    opportunistic: bool,
    puzzle_k: u8,
    pending: HashMap<(Hit, Hit), VecDeque<Vec<u8>>>,
    local_locators: Vec<IpAddr>,
    /// Shim contexts' settings, by (local HIT, peer HIT).
    shim: HashMap<(Hit, Hit), shim::ShimCtx>,
    /// Failure detectors, by (local HIT, peer HIT).
    failover: HashMap<(Hit, Hit), failover::Failover>,
    /// Daemon-wide failure-detection defaults.
    reap_defaults: hip_proto::reap::Params,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field(
                "associations",
                &self
                    .eps
                    .iter()
                    .map(Endpoint::association_count)
                    .sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

/// Sets the log level at run time.
pub type LevelSetter = Box<dyn Fn(DebugLevel) + Send + Sync>;

/// Everything the threads share.
pub struct Shared {
    core: Mutex<Core>,
    cv: Condvar,
    dp: RwLock<DataPlane>,
    hip6: USock,
    hip4: USock,
    esp6: USock,
    esp4: USock,
    udp6: USock,
    udp4: USock,
    tun: Tun,
    /// Path MTUs learned from Packet Too Big about our ESP packets.
    pmtu: pmtu::Cache,
    ctr: Counters,
    set_level: LevelSetter,
    opts: Options,
    shutting_down: AtomicBool,
    /// Time base of the data plane's atomic timestamps.
    epoch: Instant,
    /// When the HIP hosts file was last read for peer LSIs (ms since
    /// `epoch`; see [`Shared::load_hosts_lsis`]).
    hosts_lsis_read: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("tun", &self.tun)
            .finish_non_exhaustive()
    }
}

fn engine_config(puzzle_k: u8, opportunistic: bool, udp: Option<u16>) -> Config {
    Config {
        // ECDH P-256 first: 128-bit security like the default ESP suite
        // (AES-128-GCM) and several times cheaper than P-384 per exchange.
        dh_groups: vec![
            DhGroup::EcdhP256,
            DhGroup::EcdhP384,
            DhGroup::Modp3072,
            DhGroup::Modp2048,
            // MUST in RFC 7401 §5.2.7; last: the weakest group, only for
            // peers that offer nothing else.
            DhGroup::Modp1536,
        ],
        puzzle_k,
        // A restarted daemon's R1s must count on from where the last run's
        // did, or an Initiator still in I2-SENT takes the fresh R1 for a
        // replay: the wall clock in seconds only grows between runs (the
        // counter advances far less than once a second).
        r1_counter_start: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        accept_opportunistic: opportunistic,
        initiator_transport: match udp {
            None => Transport::Native,
            Some(p) => Transport::Udp {
                src_port: p,
                dst_port: p,
            },
        },
        ..Config::default()
    }
}

fn build_engines(
    keys: &[Arc<dyn PrivateIdentity>],
    puzzle_k: u8,
    opportunistic: bool,
    udp_port: u16,
) -> anyhow::Result<Vec<Endpoint>> {
    let backend: Arc<dyn CryptoBackend> = Arc::new(OpensslBackend::new());
    let now = Instant::now();
    let mut eps = Vec::new();
    for udp in [None, Some(udp_port)] {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let ep = Endpoint::new(
            engine_config(puzzle_k, opportunistic, udp),
            keys.to_vec(),
            backend.clone(),
            seed,
            now,
        )
        .map_err(|e| anyhow::anyhow!("engine: {e}"))?;
        eps.push(ep);
    }
    Ok(eps)
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Unassociated => "UNASSOCIATED",
        State::I1Sent => "I1-SENT",
        State::I2Sent => "I2-SENT",
        State::R2Sent => "R2-SENT",
        State::Established => "ESTABLISHED",
        State::Closing => "CLOSING",
        State::Closed => "CLOSED",
        State::Failed => "E-FAILED",
    }
}

fn lsi_from_u32(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0100_0000 | (n & 0x00ff_ffff))
}

impl Core {
    fn alloc_lsi(&mut self, dp: &DataPlane) -> Ipv4Addr {
        loop {
            let l = lsi_from_u32(self.next_lsi);
            self.next_lsi = self.next_lsi.wrapping_add(1);
            if !dp.lsi_peer.contains_key(&l) && !dp.local_lsi.contains_key(&l) {
                return l;
            }
        }
    }

    fn ep_for_peer(&self, peer: Hit) -> usize {
        match self
            .maps
            .get(&peer)
            .and_then(|m| m.transport)
            .unwrap_or(self.nat)
        {
            NatMode::None => 0,
            NatMode::PlainUdp => 1,
        }
    }
}

impl Shared {
    fn lock_core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sock(&self, kind: Kind, v6: bool) -> &USock {
        match (kind, v6) {
            (Kind::Hip, true) => &self.hip6,
            (Kind::Hip, false) => &self.hip4,
            (Kind::Esp, true) => &self.esp6,
            (Kind::Esp, false) => &self.esp4,
            (Kind::Udp, true) => &self.udp6,
            (Kind::Udp, false) => &self.udp4,
        }
    }

    fn pick_source(&self, core: &Core, dst: IpAddr) -> Option<IpAddr> {
        net::route_source(dst).or_else(|| {
            core.local_locators
                .iter()
                .copied()
                .find(|a| a.is_ipv6() == dst.is_ipv6())
        })
    }

    fn send_control(&self, core: &Core, mut t: Transmit) {
        let src = match t.src {
            Some(s) => s,
            None => match self.pick_source(core, t.dst) {
                Some(s) => s,
                None => {
                    tracing::warn!(dst = %t.dst, "no source address towards peer");
                    return;
                }
            },
        };
        if t.src.is_none() && !t.fill_checksum(src) {
            return;
        }
        let v6 = t.dst.is_ipv6();
        let r = match t.transport {
            Transport::Native => self
                .sock(Kind::Hip, v6)
                .send(Some(src), t.dst, 0, &[&t.payload]),
            Transport::Udp { dst_port, .. } => {
                self.sock(Kind::Udp, v6)
                    .send(Some(src), t.dst, dst_port, &[&[0u8; 4], &t.payload])
            }
        };
        match r {
            Ok(_) => inc(&self.ctr.hip_tx),
            Err(e) => tracing::debug!(dst = %t.dst, error = %e, "sending HIP packet failed"),
        }
    }

    /// Drains every engine's transmits and events.
    fn pump(&self, core: &mut Core) {
        loop {
            let mut did = false;
            for i in 0..core.eps.len() {
                // Events first: an Established installs the SAs before the
                // packet that completes the exchange (R2) goes out, so the
                // peer's first ESP packet, sent as soon as R2 arrives, never
                // finds the inbound SA missing (it was dropped as an unknown
                // SPI when the thread was preempted in between).
                while let Some(ev) = core.eps[i].poll_event() {
                    did = true;
                    let t0 = Instant::now();
                    let name = format!("{ev:?}").chars().take(24).collect::<String>();
                    self.on_event(core, i, ev);
                    tracing::trace!(
                        us = t0.elapsed().as_micros() as u64,
                        event = name,
                        "event handled"
                    );
                }
                while let Some(t) = core.eps[i].poll_transmit() {
                    did = true;
                    let t0 = Instant::now();
                    self.send_control(core, t);
                    tracing::trace!(us = t0.elapsed().as_micros() as u64, "control packet sent");
                }
            }
            if !did {
                break;
            }
        }
        self.cv.notify_all();
    }

    fn on_event(&self, core: &mut Core, ep: usize, ev: Event) {
        self.failover_event(core, ep, &ev);
        match ev {
            Event::Established {
                id,
                role,
                local_hit,
                peer_hit,
                local_locator,
                peer_locator,
                transport,
                sas,
            } => {
                tracing::info!(%local_hit, %peer_hit, %local_locator, %peer_locator, ?role, ?transport, "association established");
                let sas = *sas;
                let udp = match transport {
                    Transport::Native => None,
                    Transport::Udp { dst_port, .. } => Some(dst_port),
                };
                let live = Arc::new(failover::Liveness::default());
                let out = Arc::new(OutSa {
                    sa: Mutex::new(sas.outbound),
                    path: Mutex::new(Path {
                        src: local_locator,
                        dst: peer_locator,
                        udp,
                    }),
                    packets: AtomicU64::new(0),
                    ep,
                    id,
                    live: live.clone(),
                    cba: Arc::new(cba::Gate::default()),
                });
                cba::sync(&out.cba, &mut core.eps[ep], Instant::now(), peer_hit);
                let spi_in = sas.inbound.spi();
                let inb = Arc::new(InSa {
                    sa: Mutex::new(sas.inbound),
                    confirmed: AtomicBool::new(false),
                    packets: AtomicU64::new(0),
                    rx_bytes: AtomicU64::new(0),
                    ep,
                    local: local_hit,
                    peer: peer_hit,
                    live,
                });
                {
                    let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
                    dp.inb
                        .retain(|_, s| !(s.local == local_hit && s.peer == peer_hit));
                    dp.inb.insert(spi_in, inb);
                    dp.out.insert((local_hit, peer_hit), out.clone());
                    if !dp.peer_lsi.contains_key(&peer_hit) {
                        let lsi = core
                            .maps
                            .get(&peer_hit)
                            .map(|m| m.lsi)
                            .unwrap_or_else(|| core.alloc_lsi(&dp));
                        dp.peer_lsi.insert(peer_hit, lsi);
                        dp.lsi_peer.insert(lsi, peer_hit);
                    }
                }
                self.failover_start(core, ep, local_hit, peer_hit, (local_locator, peer_locator));
                if let Some(q) = core.pending.remove(&(local_hit, peer_hit)) {
                    let mut buf = Vec::new();
                    for p in q {
                        self.send_esp(&out, &p, &mut buf);
                    }
                }
            }
            Event::Failed {
                peer_hit, reason, ..
            } => {
                tracing::warn!(peer = ?peer_hit, ?reason, "base exchange failed");
                if let Some(p) = peer_hit {
                    let keys: Vec<_> = core.pending.keys().filter(|k| k.1 == p).copied().collect();
                    for k in keys {
                        if let Some(q) = core.pending.remove(&k) {
                            self.ctr
                                .queue_dropped
                                .fetch_add(q.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            Event::Closed { peer_hit, id } => {
                tracing::info!(%peer_hit, "association closed");
                let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
                dp.out.retain(|_, s| !(s.ep == ep && s.id == id));
                dp.out_spare.retain(|_, s| !(s.ep == ep && s.id == id));
                dp.inb.retain(|_, s| !(s.ep == ep && s.peer == peer_hit));
            }
            Event::NotifyReceived {
                peer_hit,
                authenticated,
                msg_type,
                ..
            } => {
                tracing::info!(%peer_hit, authenticated, ?msg_type, "NOTIFY received");
            }
            Event::Confirmed { id } => {
                tracing::debug!(?id, "association confirmed");
            }
            Event::PathChanged { peer_hit, src, dst } => {
                tracing::info!(%peer_hit, %src, %dst, "path changed");
                // The gate first: a sealing thread that sees the new path
                // (under its mutex) sees the gate's state too.
                self.cba_sync_peer(core, ep, peer_hit);
                let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
                for ((_, p), out) in dp.out.iter() {
                    if *p == peer_hit && out.ep == ep {
                        let mut path = out.path.lock().unwrap_or_else(|p| p.into_inner());
                        path.src = src;
                        path.dst = dst;
                    }
                }
            }
            Event::SasRekeyed {
                id,
                peer_hit,
                sas,
                old_inbound_spi,
                kind,
                ..
            } => {
                tracing::info!(%peer_hit, old_inbound_spi, ?kind, "SAs rekeyed or added");
                let sas = *sas;
                let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
                let Some(old_in) = dp.inb.get(&old_inbound_spi).cloned() else {
                    return;
                };
                let (local, peer) = (old_in.local, old_in.peer);
                let live = old_in.live.clone();
                if let Some(out) = dp.out.get(&(local, peer)).cloned() {
                    if kind == hip_proto::engine::SaChange::Added {
                        // The old pair stays usable: keep its outbound SA.
                        let spi = out.sa.lock().unwrap_or_else(|p| p.into_inner()).spi();
                        dp.out_spare.insert(spi, out.clone());
                    }
                    let path = *out.path.lock().unwrap_or_else(|p| p.into_inner());
                    dp.out.insert(
                        (local, peer),
                        Arc::new(OutSa {
                            sa: Mutex::new(sas.outbound),
                            path: Mutex::new(path),
                            packets: AtomicU64::new(out.packets.load(Ordering::Relaxed)),
                            ep,
                            id,
                            live: live.clone(),
                            cba: out.cba.clone(),
                        }),
                    );
                }
                dp.inb.insert(
                    sas.inbound.spi(),
                    Arc::new(InSa {
                        sa: Mutex::new(sas.inbound),
                        confirmed: AtomicBool::new(false),
                        packets: AtomicU64::new(0),
                        rx_bytes: AtomicU64::new(0),
                        ep,
                        local,
                        peer,
                        live,
                    }),
                );
            }
            Event::SasRetired {
                id,
                peer_hit,
                inbound_spi,
                outbound_spi,
            } => {
                tracing::debug!(%peer_hit, inbound_spi, outbound_spi, "SAs retired");
                let primary = core.eps[ep]
                    .association(id)
                    .map(|a| (a.local_hit(), a.spi_outbound()));
                let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
                dp.inb.remove(&inbound_spi);
                dp.out_spare.remove(&outbound_spi);
                // The primary pair was deleted: send on the new primary.
                if let Some((local, spi)) = primary {
                    let cur = dp.out.get(&(local, peer_hit)).cloned();
                    if let Some(cur) = cur
                        && cur.sa.lock().unwrap_or_else(|p| p.into_inner()).spi() == outbound_spi
                        && let Some(next) = dp.out_spare.remove(&spi)
                    {
                        let path = *cur.path.lock().unwrap_or_else(|p| p.into_inner());
                        *next.path.lock().unwrap_or_else(|p| p.into_inner()) = path;
                        dp.out.insert((local, peer_hit), next);
                    }
                }
            }
            Event::PeerLocatorState {
                peer_hit,
                addr,
                state,
            } => {
                tracing::info!(%peer_hit, %addr, ?state, "peer locator state");
                self.cba_sync_peer(core, ep, peer_hit);
                if state == LocatorState::Deprecated {
                    // Withdrawn by the peer: per-datagram send markers
                    // naming it are forgotten (SHIM_LOC_PEER_SEND).
                    let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
                    shim::forget_markers_to(&dp, None, peer_hit, |a| a == addr);
                }
            }
            Event::VerificationFailed { peer_hit, addr } => {
                tracing::info!(%peer_hit, %addr, "peer locator verification failed");
                self.cba_sync_peer(core, ep, peer_hit);
            }
            Event::ProbeReply {
                peer_hit, dst, rtt, ..
            } => {
                tracing::debug!(%peer_hit, %dst, ?rtt, "probe answered");
            }
            Event::ProbeLost { peer_hit, dst, .. } => {
                tracing::debug!(%peer_hit, %dst, "probe lost");
            }
            Event::PeerProbed {
                peer_hit,
                src,
                dst,
                exploring,
            } => {
                tracing::debug!(%peer_hit, %src, %dst, exploring, "probed by the peer");
            }
        }
    }

    /// Credit-based authorization of one sealed ESP packet of `len` bytes
    /// on `path` (module [`cba`]): whether it may be sent; counts what
    /// goes to UNVERIFIED locators and what is refused.
    #[inline]
    fn cba_admit(&self, out: &OutSa, path: &Path, len: usize) -> bool {
        match out.cba.admit(path.dst, len) {
            cba::Admit::Free => true,
            cba::Admit::Debited => {
                self.ctr
                    .esp_cba_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                true
            }
            cba::Admit::Refused => {
                inc(&self.ctr.esp_cba_dropped);
                false
            }
        }
    }

    /// Refreshes the credit gates of engine `ep`'s associations with
    /// `peer` ([`cba::sync`]).
    fn cba_sync_peer(&self, core: &mut Core, ep: usize, peer: Hit) {
        let gates: Vec<Arc<cba::Gate>> = {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.out
                .iter()
                .filter(|((_, p), o)| *p == peer && o.ep == ep)
                .map(|(_, o)| o.cba.clone())
                .collect()
        };
        if let Some(e) = core.eps.get_mut(ep) {
            let now = Instant::now();
            for g in gates {
                cba::sync(&g, e, now, peer);
            }
        }
    }

    /// Refreshes every credit gate ([`cba::sync`]); returns whether any is
    /// limited (then the driver comes back within [`cba::TICK`]).
    fn cba_tick(&self, core: &mut Core, now: Instant) -> bool {
        let gates: Vec<(usize, Hit, Arc<cba::Gate>)> = {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.out
                .iter()
                .map(|((_, p), o)| (o.ep, *p, o.cba.clone()))
                .collect()
        };
        let mut limited = false;
        for (ep, peer, g) in gates {
            if let Some(e) = core.eps.get_mut(ep) {
                limited |= cba::sync(&g, e, now, peer);
            }
        }
        limited
    }

    fn send_esp(&self, out: &OutSa, inner: &[u8], buf: &mut Vec<u8>) {
        self.send_esp_via(out, inner, buf, None);
    }

    /// Seals and sends; `via` overrides the SA's path (shim API).
    fn send_esp_via(&self, out: &OutSa, inner: &[u8], buf: &mut Vec<u8>, via: Option<Path>) {
        let n = {
            let mut sa = out.sa.lock().unwrap_or_else(|p| p.into_inner());
            let need = sa.seal_buffer_len(inner.len());
            if buf.len() < need {
                buf.resize(need, 0);
            }
            match sa.seal(inner, buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "seal failed");
                    return;
                }
            }
        };
        let path = via.unwrap_or_else(|| *out.path.lock().unwrap_or_else(|p| p.into_inner()));
        if !self.cba_admit(out, &path, n) {
            return;
        }
        if self.send_sealed(&path, buf.get(..n).unwrap_or(&[])) {
            inc(&self.ctr.esp_tx);
            out.packets.fetch_add(1, Ordering::Relaxed);
            let now = self.ns(Instant::now());
            out.live.sent(now);
            out.live
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now, buf.get(..n).unwrap_or(&[]));
        }
    }

    /// Seals like [`Shared::send_esp_via`] but queues the packet in `tx`;
    /// [`Shared::flush_tx`] sends the queue with `sendmmsg` and runs the
    /// per-packet accounting (`live.sent`) for what was sent. `v4_orig` is the
    /// application's IPv4 packet when `inner` is its translation.
    fn queue_esp(
        &self,
        out: &Arc<OutSa>,
        inner: &[u8],
        v4_orig: Option<&[u8]>,
        via: Option<Path>,
        tx: &mut TxBatch,
    ) {
        let start = tx.data.len();
        {
            let mut sa = out.sa.lock().unwrap_or_else(|p| p.into_inner());
            let need = sa.seal_buffer_len(inner.len());
            tx.data.resize(start + need, 0);
            match sa.seal(inner, tx.data.get_mut(start..).unwrap_or(&mut [])) {
                Ok(n) => tx.data.truncate(start + n),
                Err(e) => {
                    tx.data.truncate(start);
                    tracing::debug!(error = %e, "seal failed");
                    return;
                }
            }
        }
        let path = via.unwrap_or_else(|| *out.path.lock().unwrap_or_else(|p| p.into_inner()));
        let esp_len = tx.data.len() - start;
        if !self.cba_admit(out, &path, esp_len) {
            tx.data.truncate(start);
            return;
        }
        self.check_pmtu(&path, inner, v4_orig, esp_len);
        tx.items.push((start..tx.data.len(), path, out.clone()));
    }

    /// When the ESP packet of `inner` (`esp_len` bytes) on `path` exceeds
    /// the path MTU learned for its destination, tells the sender with a
    /// Packet Too Big into hip0 (an ICMPv4 Fragmentation Needed for the
    /// IPv4 packet `v4_orig` that `inner` translates; see [`pmtu`]); the packet
    /// is still sent.
    fn check_pmtu(&self, path: &Path, inner: &[u8], v4_orig: Option<&[u8]>, esp_len: usize) {
        let outer = esp_len
            + if path.dst.is_ipv6() { 40 } else { 20 }
            + if path.udp.is_some() { 8 } else { 0 };
        let floor = match v4_orig {
            Some(_) => pmtu::IPV4_MIN_MTU + pmtu::XLAT_GROWTH,
            None => pmtu::IPV6_MIN_MTU,
        };
        let Some(mtu) = self
            .pmtu
            .signal(path.dst, inner.len(), outer, floor, Instant::now())
        else {
            return;
        };
        let msg = match v4_orig {
            Some(v4) => pmtu::frag_needed(v4, mtu - pmtu::XLAT_GROWTH),
            None => pmtu::packet_too_big(inner, mtu),
        };
        if let Some(msg) = msg {
            self.tun.write_packet(&msg);
            inc(&self.ctr.ptb_to_tun);
        }
    }

    /// Reads `sock`'s error queue (ICMP errors about packets we sent) and
    /// acts on each entry: a Packet Too Big is a path MTU, not a dead path
    /// (the kernel fragments what follows), a reassembly time-out a lost
    /// fragment; anything else makes the associations using that
    /// destination explore. Never called with the core lock held
    /// ([`Shared::icmp_error`] takes it).
    fn drain_send_errors(&self, sock: &net::USock) {
        for (dst, what) in sock.drain_errors() {
            match what {
                net::SendError::TooBig { mtu } => {
                    inc(&self.ctr.icmp_too_big);
                    self.pmtu.learn(dst, mtu, Instant::now());
                }
                net::SendError::FragmentLost => inc(&self.ctr.icmp_fragment_lost),
                net::SendError::Other => self.icmp_error(dst),
            }
        }
    }

    /// Sends what [`Shared::queue_esp`] queued (in order, one `sendmmsg`
    /// per run of packets for the same socket) and empties `tx`.
    fn flush_tx(&self, tx: &mut TxBatch) {
        let mut i = 0;
        while i < tx.items.len() {
            let Some((_, first, _)) = tx.items.get(i) else {
                break;
            };
            let key = (first.udp.is_some(), first.dst.is_ipv6());
            let run = tx
                .items
                .get(i..)
                .unwrap_or(&[])
                .iter()
                .take_while(|(_, p, _)| (p.udp.is_some(), p.dst.is_ipv6()) == key)
                .count();
            let items = tx.items.get(i..i + run).unwrap_or(&[]);
            let kind = if key.0 { Kind::Udp } else { Kind::Esp };
            let sock = self.sock(kind, key.1);
            if sock.gso() {
                Self::send_offloaded(sock, items, &tx.data, &mut tx.ok);
            } else {
                let msgs = out_msgs(items, &tx.data);
                sock.send_batch(&msgs, &mut tx.ok);
            }
            if sock.take_send_error() {
                // The error a send returned may have been the socket's
                // pending ICMP error (`sk_err`; the send may then have
                // been retried and gone out), which the receiving thread
                // never sees: read the error queue here too.
                self.drain_send_errors(sock);
            }
            let now = self.ns(Instant::now());
            for ((r, _, out), ok) in items.iter().zip(&tx.ok) {
                if *ok {
                    out.live
                        .recent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(now, tx.data.get(r.clone()).unwrap_or(&[]));
                    inc(&self.ctr.esp_tx);
                    out.packets.fetch_add(1, Ordering::Relaxed);
                    out.live.sent(now);
                }
            }
            i += run.max(1);
        }
        tx.data.clear();
        tx.items.clear();
    }

    /// Sends `items` (sealed ESP-in-UDP datagrams, ranges of `data` in
    /// order and back to back) with UDP segmentation offload: each run of
    /// datagrams on the same path with the same length (the last of a run
    /// may be shorter) goes out with one `sendmsg`. `ok[i]` tells whether
    /// item `i` was accepted. Falls back to `sendmmsg` when the kernel
    /// refuses offload.
    fn send_offloaded(
        sock: &net::USock,
        items: &[(std::ops::Range<usize>, Path, Arc<OutSa>)],
        data: &[u8],
        ok: &mut Vec<bool>,
    ) {
        ok.clear();
        ok.resize(items.len(), false);
        let mut i = 0;
        while i < items.len() {
            let Some((first, path, _)) = items.get(i) else {
                break;
            };
            let seg = first.len();
            let j = gso_run_end(items, i);
            let end = items.get(j - 1).map_or(first.end, |(r, _, _)| r.end);
            let bytes = data.get(first.start..end).unwrap_or(&[]);
            let multi = j - i > 1;
            let sent = match u16::try_from(seg) {
                Ok(seg16) if multi => sock.send_segments(
                    Some(path.src),
                    path.dst,
                    path.udp.unwrap_or(0),
                    bytes,
                    seg16,
                ),
                _ => sock.send(Some(path.src), path.dst, path.udp.unwrap_or(0), &[bytes]),
            };
            match sent {
                Ok(_) => {
                    for o in ok.iter_mut().take(j).skip(i) {
                        *o = true;
                    }
                }
                Err(e) if multi && net::offload_refused(&e) => {
                    // Offload refused: send this run one by one.
                    tracing::trace!(error = %e, "offloaded send failed, retrying without");
                    let msgs = out_msgs(items.get(i..j).unwrap_or(&[]), data);
                    let mut sub = Vec::new();
                    sock.send_batch(&msgs, &mut sub);
                    for (o, s) in ok.iter_mut().skip(i).zip(sub) {
                        *o = s;
                    }
                }
                Err(e) => tracing::trace!(error = %e, dst = %path.dst, "ESP send failed"),
            }
            i = j;
        }
    }

    /// Sends a sealed ESP packet on `path`.
    fn send_sealed(&self, path: &Path, data: &[u8]) -> bool {
        let v6 = path.dst.is_ipv6();
        let r = match path.udp {
            None => self
                .sock(Kind::Esp, v6)
                .send(Some(path.src), path.dst, 0, &[data]),
            Some(port) => self
                .sock(Kind::Udp, v6)
                .send(Some(path.src), path.dst, port, &[data]),
        };
        match r {
            Ok(_) => true,
            Err(e) => {
                tracing::trace!(error = %e, dst = %path.dst, "ESP send failed");
                false
            }
        }
    }

    /// Peer LSIs from the HIP hosts file (an LSI line naming one of a
    /// HIT's names, like HIPL's `/etc/hip/hosts`): each becomes the HIT's
    /// LSI unless the HIT already has one (a static mapping wins), the LSI
    /// belongs to another HIT, or it is one of ours. Read at start and,
    /// at most once a second, when a packet to an unknown LSI arrives.
    fn load_hosts_lsis(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.hosts_lsis_read.store(now.max(1), Ordering::Relaxed);
        let Ok(text) = std::fs::read_to_string(self.opts.config_dir.join("hosts")) else {
            return;
        };
        let hosts = HipHosts::parse(&text);
        let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
        for &hit in hosts.hit_names.keys() {
            let Some(lsi) = hosts.lsi_of(hit) else {
                continue;
            };
            let hit = Hit::from(hit);
            if lsi.octets()[0] != 1
                || !hit.is_orchid_v2()
                || dp.local_lsi.contains_key(&lsi)
                || dp.local_hit_lsi.contains_key(&hit)
                || dp.peer_lsi.contains_key(&hit)
                || dp.lsi_peer.contains_key(&lsi)
            {
                continue;
            }
            tracing::info!(%hit, %lsi, "peer LSI from the hosts file");
            dp.peer_lsi.insert(hit, lsi);
            dp.lsi_peer.insert(lsi, hit);
        }
    }

    /// [`Shared::load_hosts_lsis`] for a packet to `lsi`, which has no
    /// mapping, if the file was not read within the last second; returns
    /// whether `lsi` has a peer now.
    fn lsi_from_hosts(&self, lsi: Ipv4Addr) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.hosts_lsis_read.load(Ordering::Relaxed);
        if lsi.octets()[0] != 1 || now.saturating_sub(last) < 1000 {
            return false;
        }
        self.load_hosts_lsis();
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        dp.lsi_peer.contains_key(&lsi)
    }

    /// Locators of a peer HIT: static mappings, then hosts files.
    fn resolve(&self, core: &Core, peer: Hit) -> Vec<IpAddr> {
        let mut v = core
            .maps
            .get(&peer)
            .map(|m| m.ips.clone())
            .unwrap_or_default();
        let hip_hosts = std::fs::read_to_string(self.opts.config_dir.join("hosts"))
            .map(|t| HipHosts::parse(&t))
            .unwrap_or_default();
        if let Some(names) = hip_hosts.hit_names.get(&Ipv6Addr::from(peer))
            && let Ok(sys) = std::fs::read_to_string(&self.opts.system_hosts)
        {
            for a in resolve_in_hosts(&sys, names) {
                if !v.contains(&a) && !is_hip_addr(a) {
                    v.push(a);
                }
            }
        }
        v
    }

    /// Starts (or finds) the association (local, peer); returns the engine
    /// index and handle.
    fn connect(
        &self,
        core: &mut Core,
        local: Option<Hit>,
        peer: Hit,
    ) -> Result<(usize, AssocId), (ErrorCode, String)> {
        for (i, ep) in core.eps.iter().enumerate() {
            if let Some(a) = ep.association_by_peer(peer)
                && !matches!(a.state(), State::Failed | State::Closed | State::Closing)
                && local.is_none_or(|l| l == a.local_hit())
            {
                return Ok((i, a.id()));
            }
        }
        let locs = self.resolve(core, peer);
        if locs.is_empty() {
            return Err((
                ErrorCode::UnknownHit,
                format!("no locator known for HIT {peer}"),
            ));
        }
        let i = core.ep_for_peer(peer);
        let now = Instant::now();
        let r = core.eps[i].connect(now, Some(peer), locs, local);
        let r = r.map_err(|e| (ErrorCode::Failed, e.to_string()))?;
        self.pump(core);
        Ok((i, r))
    }
}

/// The datagrams of queued `items` (ranges of `data`) for
/// [`net::USock::send_batch`].
fn out_msgs<'a, T>(
    items: &[(std::ops::Range<usize>, Path, T)],
    data: &'a [u8],
) -> Vec<net::OutMsg<'a>> {
    items
        .iter()
        .map(|(r, p, _)| net::OutMsg {
            src: Some(p.src),
            dst: p.dst,
            port: p.udp.unwrap_or(0),
            data: data.get(r.clone()).unwrap_or(&[]),
        })
        .collect()
}

/// The end (exclusive) of the run of `items` starting at `i` that one UDP
/// segmentation offload send can carry: same path, byte ranges back to
/// back, every datagram as long as the first except a shorter last one,
/// at most [`net::GSO_MAX_SEGMENTS`] datagrams and [`net::GSO_MAX_BYTES`]
/// bytes. Always `> i` when `i < items.len()`.
fn gso_run_end<T>(items: &[(std::ops::Range<usize>, Path, T)], i: usize) -> usize {
    let Some((first, path, _)) = items.get(i) else {
        return i;
    };
    let seg = first.len();
    let mut end = first.end;
    let mut j = i + 1;
    while let Some((r, p, _)) = items.get(j) {
        if p != path
            || r.start != end
            || r.len() > seg
            || j - i >= net::GSO_MAX_SEGMENTS
            || r.end - first.start > net::GSO_MAX_BYTES
        {
            break;
        }
        end = r.end;
        j += 1;
        if r.len() < seg {
            break;
        }
    }
    j
}

fn is_hip_addr(a: IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => Hit::from(v6).is_orchid_v2(),
        IpAddr::V4(v4) => v4.octets()[0] == 1,
    }
}

// ------------------------------------------------------------------ threads

fn driver_thread(sh: Arc<Shared>) {
    let mut core = sh.lock_core();
    // Last refresh of the credit gates, and whether one was limited then.
    let mut cba_at = Instant::now();
    let mut cba_limited = false;
    loop {
        if sh.shutting_down.load(Ordering::Relaxed)
            && core.eps.iter().all(|e| e.association_count() == 0)
        {
            // Keep running timers during shutdown until everything is closed.
        }
        let now = Instant::now();
        {
            let dp = sh.dp.read().unwrap_or_else(|p| p.into_inner());
            for s in dp.inb.values() {
                let b = s.rx_bytes.swap(0, Ordering::Relaxed);
                if b > 0
                    && let Some(ep) = core.eps.get_mut(s.ep)
                {
                    ep.on_data_received(now, s.peer, usize::try_from(b).unwrap_or(usize::MAX));
                }
            }
        }
        if now.saturating_duration_since(cba_at) >= cba::TICK {
            cba_at = now;
            cba_limited = sh.cba_tick(&mut core, now);
        }
        for i in 0..core.eps.len() {
            if core.eps[i].poll_timeout().is_some_and(|t| t <= now) {
                core.eps[i].handle_timeout(now);
            }
        }
        sh.pump(&mut core);
        sh.failover_tick(&mut core, now);
        sh.pump(&mut core);
        let mut next = core
            .eps
            .iter()
            .filter_map(Endpoint::poll_timeout)
            .chain(sh.failover_deadline(&core))
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        if !core.failover.is_empty() {
            next = next.min(now + failover::TICK);
        }
        if cba_limited {
            next = next.min(cba_at + cba::TICK);
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(1))
            .max(Duration::from_micros(200));
        core = sh
            .cv
            .wait_timeout(core, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Sealed ESP packets of one TUN read, sent together by
/// [`Shared::flush_tx`].
#[derive(Debug, Default)]
struct TxBatch {
    data: Vec<u8>,
    items: Vec<(std::ops::Range<usize>, Path, Arc<OutSa>)>,
    ok: Vec<bool>,
}

fn tun_thread(sh: Arc<Shared>, queue: usize) {
    let mut raw = vec![0u8; tun::VNET_HDR_LEN + 65536];
    let mut segs = tun::Segments::default();
    let mut sealbuf = Vec::new();
    let mut xlat = Vec::new();
    let mut tx = TxBatch::default();
    loop {
        if let Err(e) = sh.tun.recv_segments(queue, &mut raw, &mut segs) {
            if e.kind() == std::io::ErrorKind::InvalidData {
                inc(&sh.ctr.malformed);
                continue;
            }
            tracing::error!(error = %e, "TUN read failed");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        for i in 0..segs.len() {
            let Some(pkt) = segs.get_mut(i) else { break };
            tun_packet(&sh, pkt, &mut sealbuf, &mut xlat, &mut tx);
        }
        sh.flush_tx(&mut tx);
    }
}

/// One complete packet read from the TUN device.
fn tun_packet(
    sh: &Shared,
    buf: &mut [u8],
    sealbuf: &mut Vec<u8>,
    xlat: &mut Vec<u8>,
    tx: &mut TxBatch,
) {
    let n = buf.len();
    {
        let Some(&first) = buf.first() else { return };
        let inner: &mut [u8];
        // The application's packet when `inner` is its translation.
        let v4_orig: Option<&[u8]>;
        let (local, peer) = match first >> 4 {
            6 => {
                let pkt = &buf[..n];
                let (Some(s), Some(d)) = (pkt.get(8..24), pkt.get(24..40)) else {
                    return;
                };
                let (Some(s), Some(d)) = (Hit::from_slice(s), Hit::from_slice(d)) else {
                    return;
                };
                if !d.is_orchid_v2() {
                    return; // ND/MLD and other link traffic on hip0
                }
                inner = &mut buf[..n];
                v4_orig = None;
                (s, d)
            }
            4 => {
                let dst = buf
                    .get(16..20)
                    .and_then(|d| <[u8; 4]>::try_from(d).ok())
                    .map(Ipv4Addr::from);
                let unknown = dst.is_some_and(|d| {
                    let dp = sh.dp.read().unwrap_or_else(|p| p.into_inner());
                    !dp.lsi_peer.contains_key(&d)
                });
                if unknown && let Some(d) = dst {
                    sh.lsi_from_hosts(d);
                }
                let dp = sh.dp.read().unwrap_or_else(|p| p.into_inner());
                match lsi::v4_to_v6(&buf[..n], &dp, xlat) {
                    Some((s, d)) => {
                        inner = &mut xlat[..];
                        v4_orig = Some(&buf[..n]);
                        (s, d)
                    }
                    None => {
                        inc(&sh.ctr.no_mapping);
                        return;
                    }
                }
            }
            _ => return,
        };
        let (out, via) = {
            let dp = sh.dp.read().unwrap_or_else(|p| p.into_inner());
            let out = dp.out.get(&(local, peer)).cloned();
            let via = out.as_ref().and_then(|o| {
                let ctx = *o.path.lock().unwrap_or_else(|p| p.into_inner());
                shim::out_override(&dp, inner, local, peer, &ctx)
            });
            (out, via)
        };
        let inner: &[u8] = inner;
        if let Some(out) = out {
            sh.queue_esp(&out, inner, v4_orig, via, tx);
            return;
        }
        // No SA: queue and start the base exchange (under core); what was
        // sealed before goes out first.
        sh.flush_tx(tx);
        let mut core = sh.lock_core();
        let out = {
            let dp = sh.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.out.get(&(local, peer)).cloned()
        };
        if let Some(out) = out {
            drop(core);
            sh.send_esp(&out, inner, sealbuf);
            return;
        }
        let q = core.pending.entry((local, peer)).or_default();
        if q.len() >= PENDING_MAX {
            inc(&sh.ctr.queue_dropped);
        } else {
            q.push_back(inner.to_vec());
            inc(&sh.ctr.queued);
        }
        if let Err((_, msg)) = sh.connect(&mut core, Some(local), peer) {
            tracing::debug!(%peer, msg, "cannot start base exchange");
            if let Some(q) = core.pending.remove(&(local, peer)) {
                sh.ctr
                    .no_mapping
                    .fetch_add(q.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// Packets drained from a socket before the coalesced TUN writes go out.
const RX_BATCH: usize = 64;

fn rx_thread(sh: Arc<Shared>, kind: Kind, v6: bool) {
    let sock = sh.sock(kind, v6);
    // HIP control is rare; ESP and UDP take bursts (UDP datagrams may be
    // receive-offloaded bursts of up to 64 KiB each).
    let n = match kind {
        Kind::Hip => 4,
        Kind::Esp => RX_BATCH,
        Kind::Udp => RX_BATCH / 4,
    };
    let mut batch = net::RecvBatch::new(n, 65536 + 64);
    let mut out = vec![0u8; esp::open_buffer_len(65536 + 64)];
    let mut gro = tun::Gro::default();
    loop {
        // One recvmmsg: blocks for the first datagram and takes what is
        // queued; then the coalesced inner packets are written.
        let got = sock.recv_batch(&mut batch);
        // Errors consumed by sends made outside `flush_tx` (keepalives,
        // repairs and HIP control, under the core lock) are read here.
        if sock.take_send_error() {
            sh.drain_send_errors(sock);
        }
        if let Err(e) = got {
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::debug!(error = %e, "recv failed");
                sh.drain_send_errors(sock);
            }
            continue;
        }
        for (meta, buf) in batch.meta.iter().zip(&batch.bufs) {
            let meta = match meta {
                Ok(m) => *m,
                Err(_) => {
                    inc(&sh.ctr.malformed);
                    continue;
                }
            };
            let Some(payload) = buf.get(meta.offset..meta.offset + meta.len) else {
                inc(&sh.ctr.malformed);
                continue;
            };
            let pair = (meta.dst, meta.src);
            match kind {
                Kind::Hip => sh.handle_hip(meta.src, meta.dst, Transport::Native, payload),
                Kind::Esp => sh.handle_esp(payload, meta.hop_limit, pair, &mut out, &mut gro),
                // UDP receive offload may hand over several datagrams at once.
                Kind::Udp => {
                    if payload.is_empty() {
                        inc(&sh.ctr.malformed); // an empty datagram
                    }
                    for dgram in meta.datagrams(payload) {
                        match dgram.first_chunk::<4>() {
                            // RFC 3948 2.3 NAT-keepalive (one 0xFF octet):
                            // only keeps a NAT binding, nothing to do.
                            None if dgram == [0xff] => inc(&sh.ctr.keepalives_rx),
                            None => inc(&sh.ctr.malformed),
                            Some([0, 0, 0, 0]) => sh.handle_hip(
                                meta.src,
                                meta.dst,
                                Transport::Udp {
                                    src_port: meta.src_port,
                                    dst_port: sh.opts.udp_port,
                                },
                                dgram.get(4..).unwrap_or(&[]),
                            ),
                            Some(_) => {
                                sh.handle_esp(dgram, meta.hop_limit, pair, &mut out, &mut gro);
                            }
                        }
                    }
                }
            }
        }
        gro.flush(&sh.tun);
    }
}

impl Shared {
    fn handle_hip(&self, src: IpAddr, dst: IpAddr, transport: Transport, payload: &[u8]) {
        inc(&self.ctr.hip_rx);
        if payload.len() < 40 {
            inc(&self.ctr.malformed);
            return;
        }
        let ep = match transport {
            Transport::Native => 0,
            Transport::Udp { .. } => 1,
        };
        // Transport of replies: the engine swaps the ports of `transport`.
        let transport = match transport {
            Transport::Udp { src_port, .. } => Transport::Udp {
                src_port,
                dst_port: self.opts.udp_port,
            },
            t => t,
        };
        let mut core = self.lock_core();
        let now = Instant::now();
        core.eps[ep].handle(
            now,
            Datagram {
                src,
                dst,
                transport,
                payload: payload.to_vec(),
            },
        );
        let handled = now.elapsed();
        self.pump(&mut core);
        tracing::debug!(
            %src,
            packet_type = payload.get(2).copied().unwrap_or(0) & 0x7f,
            engine_us = handled.as_micros() as u64,
            total_us = now.elapsed().as_micros() as u64,
            "HIP packet handled"
        );
    }

    /// Opens an ESP packet that arrived on `pair` (our address, the
    /// peer's) and delivers it to the TUN device (through `gro`).
    fn handle_esp(
        &self,
        esp_pkt: &[u8],
        hop: u8,
        pair: (IpAddr, IpAddr),
        out: &mut [u8],
        gro: &mut tun::Gro,
    ) {
        let Some(spi) = esp::peek_spi(esp_pkt) else {
            inc(&self.ctr.malformed);
            return;
        };
        let sa = {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            dp.inb.get(&spi).cloned()
        };
        let Some(sa) = sa else {
            inc(&self.ctr.esp_unknown_spi);
            return;
        };
        let opened = {
            let mut s = sa.sa.lock().unwrap_or_else(|p| p.into_inner());
            s.open(esp_pkt, hop.max(1), out)
        };
        let o = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::trace!(error = %e, "ESP dropped");
                inc(&self.ctr.esp_bad);
                return;
            }
        };
        sa.rx_bytes
            .fetch_add(esp_pkt.len() as u64, Ordering::Relaxed);
        sa.live.received(self.ns(Instant::now()), pair, o.dummy);
        if o.dummy {
            inc(&self.ctr.keepalives_rx);
            return;
        }
        sa.packets.fetch_add(1, Ordering::Relaxed);
        inc(&self.ctr.esp_rx);
        if !sa.confirmed.swap(true, Ordering::Relaxed) {
            let mut core = self.lock_core();
            core.eps[sa.ep].esp_received(Instant::now(), spi);
            self.pump(&mut core);
        }
        let Some(pkt) = out.get(..o.len) else { return };
        debug_assert_eq!(o.family, InnerFamily::V6);
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        let mut v4 = Vec::new();
        let mut tagged = Vec::new();
        if lsi::deliver_as_v4(pkt, &dp, sa.local, sa.peer)
            && lsi::v6_to_v4(pkt, &dp, sa.local, sa.peer, &mut v4)
        {
            // Records the arrival pair; tags the IPv4 form if asked.
            let _ = shim::in_tag(&dp, pkt, sa.local, sa.peer, pair.0, pair.1, &mut tagged);
            let tag = shim::wants_tag(&dp, pkt, sa.local, sa.peer)
                && shim::tag_v4(&v4, pair.0, pair.1, &mut tagged);
            drop(dp);
            gro.push(&self.tun, if tag { &tagged } else { &v4 });
        } else {
            let t =
                shim::in_tag(&dp, pkt, sa.local, sa.peer, pair.0, pair.1, &mut tagged).is_some();
            drop(dp);
            gro.push(&self.tun, if t { &tagged } else { pkt });
        }
    }
}

fn locator_thread(sh: Arc<Shared>) {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    const RTMGRP_LINK: u32 = 1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    let sock = Socket::new(NETLINK_ROUTE).and_then(|mut s| {
        s.bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        ))?;
        Ok(s)
    });
    let sock = match sock {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "netlink socket failed; locators are polled");
            loop {
                std::thread::sleep(Duration::from_secs(2));
                sh.update_locators();
            }
        }
    };
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv(&mut &mut buf[..], 0) {
            Ok(_) => {
                // Coalesce bursts of events.
                std::thread::sleep(Duration::from_millis(20));
                sh.update_locators();
            }
            Err(e) => {
                // ENOBUFS: the kernel dropped notifications; any other
                // error may have lost some too. Re-read the addresses
                // rather than wait for the next event.
                tracing::debug!(error = %e, "netlink recv; re-reading the locators");
                std::thread::sleep(Duration::from_millis(200));
                sh.update_locators();
            }
        }
    }
}

/// Usable local addresses: interfaces up and running, not loopback, not the
/// HIT device, no link-local, HIT or LSI addresses.
pub fn current_locators(tun_name: &str) -> Vec<IpAddr> {
    current_locators_ifindex(tun_name)
        .into_iter()
        .map(|(a, _)| a)
        .collect()
}

/// [`current_locators`] with interface indexes.
pub fn current_locators_ifindex(tun_name: &str) -> Vec<(IpAddr, u32)> {
    use nix::net::if_::InterfaceFlags;
    let mut v = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return v;
    };
    for a in addrs {
        if a.interface_name == tun_name
            || a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || !a.flags.contains(InterfaceFlags::IFF_UP)
            || !a.flags.contains(InterfaceFlags::IFF_RUNNING)
        {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let ip = if let Some(s) = addr.as_sockaddr_in6() {
            let ip = s.ip();
            if (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            IpAddr::V6(ip)
        } else if let Some(s) = addr.as_sockaddr_in() {
            IpAddr::V4(s.ip())
        } else {
            continue;
        };
        if is_hip_addr(ip) || v.iter().any(|(a, _)| *a == ip) {
            continue;
        }
        let idx = nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
        v.push((ip, idx));
    }
    v
}

impl Shared {
    fn update_locators(&self) {
        let with_idx = current_locators_ifindex(&self.opts.tun_name);
        let now_locs: Vec<IpAddr> = with_idx.iter().map(|(a, _)| *a).collect();
        let mut core = self.lock_core();
        if core.local_locators == now_locs {
            return;
        }
        tracing::info!(locators = ?now_locs, "local locators changed");
        let gone: Vec<IpAddr> = core
            .local_locators
            .iter()
            .filter(|a| !now_locs.contains(a))
            .copied()
            .collect();
        core.local_locators = now_locs.clone();
        let now = Instant::now();
        let ll: Vec<LocalLocator> = with_idx
            .iter()
            .map(|&(addr, ifindex)| LocalLocator {
                addr,
                ifindex,
                preferred: false,
            })
            .collect();
        for ep in core.eps.iter_mut() {
            ep.set_local_locators(now, ll.clone());
        }
        self.failover_local_gone(&mut core, &gone);
        // Outbound paths whose source disappeared move to a source the
        // kernel would use now (same peer locator).
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        for out in dp.out.values() {
            let mut p = out.path.lock().unwrap_or_else(|p| p.into_inner());
            if !now_locs.contains(&p.src)
                && let Some(s) = net::route_source(p.dst)
            {
                p.src = s;
            }
        }
        drop(dp);
        self.pump(&mut core);
    }
}

// ------------------------------------------------------------------ control

fn peer_uid(s: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

fn control_thread(sh: Arc<Shared>, listener: UnixListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let sh = sh.clone();
        let _ = std::thread::Builder::new()
            .name("hipd-ctl".into())
            .spawn(move || serve_client(sh, conn));
    }
}

fn serve_client(sh: Arc<Shared>, conn: UnixStream) {
    let mut flows = Vec::new();
    serve_lines(&sh, conn, &mut flows);
    sh.release_flows(&flows);
}

fn serve_lines(sh: &Shared, conn: UnixStream, flows: &mut Vec<shim::FlowKey>) {
    let uid = peer_uid(&conn);
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match (&mut r)
            .take(crate::control::MAX_LINE as u64)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') {
            return; // over-long line or EOF mid-line
        }
        let req = decode_request(line.trim_end());
        match &req {
            Ok(r) => tracing::debug!(?uid, request = ?r, "control request"),
            Err(e) => tracing::debug!(?uid, error = ?e, "bad control request"),
        }
        let reply = match req {
            Err(e) => Reply::from(e),
            Ok(
                req @ (Request::ShimGet { .. }
                | Request::ShimSet { .. }
                | Request::ShimSendToken { .. }
                | Request::ShimRelease { .. }
                | Request::ShimList { .. }),
            ) => sh.shim_dispatch(req, uid, flows),
            Ok(req) => {
                if !req.is_read_only() && uid != Some(0) {
                    Reply::err(
                        ErrorCode::PermissionDenied,
                        "permission denied: this request needs root",
                    )
                } else {
                    sh.dispatch(req)
                }
            }
        };
        let mut s = serde_json::to_string(&reply).unwrap_or_default();
        s.push('\n');
        if w.write_all(s.as_bytes()).is_err() {
            return;
        }
    }
}

impl Shared {
    fn ha_info(&self, core: &Core, ep: usize, id: AssocId) -> Option<HaInfo> {
        let a = core.eps.get(ep)?.association(id)?;
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        let peer = a.peer_hit();
        let out = peer.and_then(|p| dp.out.get(&(a.local_hit(), p)));
        let inb = dp.inb.get(&a.spi_inbound());
        let path = out.map(|o| *o.path.lock().unwrap_or_else(|p| p.into_inner()));
        Some(HaInfo {
            state: state_name(a.state()).into(),
            local_hit: a.local_hit().into(),
            peer_hit: peer.map(Into::into),
            local_lsi: dp.local_hit_lsi.get(&a.local_hit()).copied(),
            peer_lsi: peer.and_then(|p| dp.peer_lsi.get(&p).copied()),
            local_locator: path.map(|p| p.src).or(a.preferred_local_locator()),
            peer_locator: path.map(|p| p.dst).or(a.preferred_peer_locator()),
            peer_locators: a.peer_locators().iter().map(|l| l.addr).collect(),
            peer_locator_states: a
                .peer_locators()
                .iter()
                .map(|l| {
                    match l.state {
                        LocatorState::Active => "active",
                        LocatorState::Unverified => "unverified",
                        LocatorState::Deprecated => "deprecated",
                    }
                    .to_string()
                })
                .collect(),
            spi_in: a.spi_inbound(),
            spi_out: a.spi_outbound(),
            transport: match a.transport() {
                Transport::Native => "native".into(),
                Transport::Udp { .. } => "udp".into(),
            },
            esp_out: out.map_or(0, |o| o.packets.load(Ordering::Relaxed)),
            esp_in: inb.map_or(0, |i| i.packets.load(Ordering::Relaxed)),
        })
    }

    fn all_has(&self, core: &Core, filter: Option<Hit>) -> Vec<HaInfo> {
        let mut v = Vec::new();
        for (i, ep) in core.eps.iter().enumerate() {
            let mut ids: Vec<AssocId> = ep
                .associations()
                .filter(|a| filter.is_none() || a.peer_hit() == filter)
                .map(|a| a.id())
                .collect();
            ids.sort();
            for id in ids {
                if let Some(h) = self.ha_info(core, i, id) {
                    v.push(h);
                }
            }
        }
        v
    }

    /// Waits (on the core condition variable) until association `id` of
    /// engine `ep` is usable, failed or gone.
    fn wait_assoc(
        &self,
        mut core: MutexGuard<'_, Core>,
        ep: usize,
        id: AssocId,
        wait: Duration,
    ) -> Reply {
        let deadline = Instant::now() + wait;
        loop {
            let st = core.eps[ep].association(id).map(|a| a.state());
            match st {
                Some(State::Established | State::R2Sent) => {
                    return match self.ha_info(&core, ep, id) {
                        Some(ha) => Reply::ok(Response::Connected { ha }),
                        None => Reply::err(ErrorCode::Failed, "association vanished"),
                    };
                }
                Some(State::Failed) | None => {
                    return Reply::err(ErrorCode::Failed, "base exchange failed");
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Reply::err(ErrorCode::Timeout, "base exchange did not complete in time");
            }
            core = self
                .cv
                .wait_timeout(core, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn dispatch(&self, req: Request) -> Reply {
        let done = |m: String| Reply::ok(Response::Done { message: m });
        match req {
            Request::Ping => Reply::ok(Response::Pong {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: crate::control::PROTOCOL_VERSION,
            }),
            Request::GetHi { which } => {
                let core = self.lock_core();
                let his = core
                    .idents
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| which == HiSelector::All || *i == 0)
                    .map(|(i, id)| HiInfo {
                        hit: id.hit.into(),
                        lsi: id.lsi,
                        algorithm: id.algorithm.clone(),
                        default: i == 0,
                        file: id.file.clone(),
                    })
                    .collect();
                Reply::ok(Response::His { his })
            }
            Request::AddMap {
                hit,
                ip,
                lsi,
                transport,
            } => {
                let hit = Hit::from(hit);
                if !hit.is_orchid_v2() {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!("{hit} is not an ORCHIDv2 HIT"),
                    );
                }
                if is_hip_addr(ip) || ip.is_unspecified() || ip.is_multicast() {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!(
                            "{ip} is not a locator (a HIT, LSI, unspecified or multicast address)"
                        ),
                    );
                }
                let mut core = self.lock_core();
                let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
                if dp.local_hit_lsi.contains_key(&hit) {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!("{hit} is one of this host's HITs"),
                    );
                }
                if let Some(l) = lsi
                    && dp.local_lsi.contains_key(&l)
                {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!("{l} is one of this host's LSIs"),
                    );
                }
                let lsi = match lsi
                    .or_else(|| core.maps.get(&hit).map(|m| m.lsi))
                    .or_else(|| dp.peer_lsi.get(&hit).copied())
                {
                    Some(l) => l,
                    None => core.alloc_lsi(&dp),
                };
                if lsi.octets()[0] != 1 {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!("{lsi} is not an LSI (1.0.0.0/8)"),
                    );
                }
                if let Some(other) = dp.lsi_peer.get(&lsi)
                    && *other != hit
                {
                    return Reply::err(
                        ErrorCode::BadRequest,
                        format!("LSI {lsi} already belongs to {other}"),
                    );
                }
                if let Some(old) = dp.peer_lsi.insert(hit, lsi) {
                    dp.lsi_peer.remove(&old);
                }
                dp.lsi_peer.insert(lsi, hit);
                drop(dp);
                let m = core.maps.entry(hit).or_insert(PeerMap {
                    ips: Vec::new(),
                    lsi,
                    transport: None,
                });
                m.lsi = lsi;
                if !m.ips.contains(&ip) {
                    m.ips.push(ip);
                }
                if transport.is_some() {
                    m.transport = transport;
                }
                done(format!("mapped {hit} -> {ip} (LSI {lsi})"))
            }
            Request::DelMap { hit, ip } => {
                let hit = Hit::from(hit);
                let mut core = self.lock_core();
                let Some(m) = core.maps.get_mut(&hit) else {
                    return Reply::err(ErrorCode::UnknownHit, format!("no mapping for HIT {hit}"));
                };
                match ip {
                    Some(ip) => {
                        if !m.ips.contains(&ip) {
                            return Reply::err(
                                ErrorCode::UnknownHit,
                                format!("{hit} is not mapped to {ip}"),
                            );
                        }
                        m.ips.retain(|a| *a != ip);
                        if m.ips.is_empty() {
                            core.maps.remove(&hit);
                        }
                    }
                    None => {
                        core.maps.remove(&hit);
                    }
                }
                done(format!("removed mapping of {hit}"))
            }
            Request::GetHa { hit } => {
                let core = self.lock_core();
                let has = self.all_has(&core, hit.map(Hit::from));
                if hit.is_some() && has.is_empty() {
                    return Reply::err(ErrorCode::UnknownHit, "no association with that HIT");
                }
                Reply::ok(Response::Has { has })
            }
            Request::Rst { hit } => {
                let mut core = self.lock_core();
                let now = Instant::now();
                let mut n = 0;
                let mut peers = Vec::new();
                for (i, ep) in core.eps.iter().enumerate() {
                    for a in ep.associations() {
                        if let Some(p) = a.peer_hit()
                            && hit.is_none_or(|h| Hit::from(h) == p)
                            && !matches!(a.state(), State::Closing | State::Closed)
                        {
                            peers.push((i, p));
                        }
                    }
                }
                if hit.is_some() && peers.is_empty() {
                    return Reply::err(ErrorCode::UnknownHit, "no association with that HIT");
                }
                for (i, p) in peers {
                    if core.eps[i].close(now, p).is_ok() {
                        n += 1;
                    }
                }
                self.pump(&mut core);
                done(format!("closing {n} association(s)"))
            }
            Request::Debug { level } => {
                (self.set_level)(level);
                done(format!("debug level set to {level:?}"))
            }
            Request::Nat { mode } => {
                self.lock_core().nat = mode;
                done(format!("nat mode {mode:?} for new exchanges"))
            }
            Request::SetPuzzle { k } => {
                let mut core = self.lock_core();
                let now = Instant::now();
                for ep in core.eps.iter_mut() {
                    if let Err(e) = ep.set_puzzle_k(now, k) {
                        return Reply::err(ErrorCode::Failed, e.to_string());
                    }
                }
                core.puzzle_k = k;
                self.cv.notify_all();
                done(format!("puzzle difficulty {k} for new base exchanges"))
            }
            Request::ManualUpdate => {
                self.update_locators();
                let mut core = self.lock_core();
                let now = Instant::now();
                let sent: usize = core.eps.iter_mut().map(|e| e.announce_to_all(now)).sum();
                self.pump(&mut core);
                done(format!(
                    "local locators {:?} announced to {sent} association(s)",
                    core.local_locators
                ))
            }
            Request::Shotgun { on } => {
                let mut core = self.lock_core();
                core.shotgun = on;
                for ep in core.eps.iter_mut() {
                    ep.set_shotgun(on);
                }
                done(format!("shotgun {}", if on { "on" } else { "off" }))
            }
            Request::Connect { hit, wait_ms } => {
                let mut core = self.lock_core();
                match self.connect(&mut core, None, Hit::from(hit)) {
                    Err((c, m)) => Reply::err(c, m),
                    Ok((ep, id)) => self.wait_assoc(core, ep, id, Duration::from_millis(wait_ms)),
                }
            }
            Request::Opportunistic { ip, wait_ms } => {
                let mut core = self.lock_core();
                if !core.opportunistic {
                    return Reply::err(
                        ErrorCode::PermissionDenied,
                        "opportunistic mode is off by policy (hipd.conf: opportunistic off)",
                    );
                }
                if let Some((ep, id)) = core.eps.iter().enumerate().find_map(|(i, e)| {
                    e.associations()
                        .find(|a| {
                            a.peer_locators().iter().any(|l| l.addr == ip)
                                && matches!(a.state(), State::Established | State::R2Sent)
                        })
                        .map(|a| (i, a.id()))
                }) {
                    return self.wait_assoc(core, ep, id, Duration::ZERO);
                }
                let i = if core.nat == NatMode::PlainUdp { 1 } else { 0 };
                let r = core.eps[i].connect(Instant::now(), None, vec![ip], None);
                match r {
                    Err(e) => Reply::err(ErrorCode::Failed, e.to_string()),
                    Ok(id) => {
                        self.pump(&mut core);
                        let wait = if wait_ms == 0 { 5000 } else { wait_ms };
                        self.wait_assoc(core, i, id, Duration::from_millis(wait))
                    }
                }
            }
            Request::SetReap { param, value } => {
                let mut core = self.lock_core();
                self.set_reap_default(&mut core, param, value);
                self.pump(&mut core);
                done(format!("reap {param:?} = {value}"))
            }
            Request::Stats => {
                let core = self.lock_core();
                Reply::ok(Response::Stats {
                    stats: self.stats(&core),
                })
            }
            // From hipd.conf (as root, no connection to own sockets).
            r @ (Request::ShimGet { .. }
            | Request::ShimSet { .. }
            | Request::ShimSendToken { .. }
            | Request::ShimRelease { .. }
            | Request::ShimList { .. }) => self.shim_dispatch(r, Some(0), &mut Vec::new()),
        }
    }

    fn stats(&self, core: &Core) -> StatsInfo {
        let c = &self.ctr;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut engine: BTreeMap<String, u64> = BTreeMap::new();
        let mut dropped = 0;
        for ep in &core.eps {
            let s = ep.stats();
            let fields = [
                ("received", s.received),
                ("sent", s.sent),
                ("notify_sent", s.notify_sent),
                ("bad_checksum", s.bad_checksum),
                ("bad_hmac", s.bad_hmac),
                ("bad_signature", s.bad_signature),
                ("bad_puzzle", s.bad_puzzle),
                ("unsupported_critical", s.unsupported_critical),
                ("malformed", s.malformed),
                ("unexpected_state", s.unexpected_state),
                ("replay", s.replay),
                ("bad_host_id", s.bad_host_id),
                ("downgrade", s.downgrade),
                ("unknown_association", s.unknown_association),
                ("negotiation_failed", s.negotiation_failed),
                ("decrypt_failed", s.decrypt_failed),
                ("unsupported", s.unsupported),
                ("unhandled", s.unhandled),
                ("r1_rate_limited", s.r1_rate_limited),
                ("update_sent", s.update_sent),
                ("update_received", s.update_received),
                ("notify_suppressed", s.notify_suppressed),
                ("notify_rate_limited", s.notify_rate_limited),
            ];
            for (k, v) in fields {
                *engine.entry(k.to_string()).or_default() += v;
                if !matches!(
                    k,
                    "received"
                        | "sent"
                        | "notify_sent"
                        | "r1_rate_limited"
                        | "update_sent"
                        | "update_received"
                        | "notify_suppressed"
                        | "notify_rate_limited"
                ) {
                    dropped += v;
                }
            }
        }
        StatsInfo {
            hip_rx: l(&c.hip_rx),
            hip_tx: l(&c.hip_tx),
            esp_tx: l(&c.esp_tx),
            esp_rx: l(&c.esp_rx),
            malformed: l(&c.malformed),
            esp_unknown_spi: l(&c.esp_unknown_spi),
            esp_bad: l(&c.esp_bad),
            engine_dropped: dropped,
            queued: l(&c.queued),
            queue_dropped: l(&c.queue_dropped),
            no_mapping: l(&c.no_mapping),
            keepalives_tx: l(&c.keepalives_tx),
            keepalives_rx: l(&c.keepalives_rx),
            icmp_errors: l(&c.icmp_errors),
            icmp_too_big: l(&c.icmp_too_big),
            icmp_fragment_lost: l(&c.icmp_fragment_lost),
            ptb_to_tun: l(&c.ptb_to_tun),
            repaired: l(&c.repaired),
            failover_switches: core.shim.values().map(|c| c.switches).sum(),
            associations: core.eps.iter().map(|e| e.association_count() as u64).sum(),
            engine: {
                // Daemon counters without a field of their own (yet).
                engine.insert("esp_cba_dropped".into(), l(&c.esp_cba_dropped));
                engine.insert("esp_cba_bytes".into(), l(&c.esp_cba_bytes));
                engine.into_iter().collect()
            },
        }
    }

    fn maps(&self) -> Vec<MapInfo> {
        let core = self.lock_core();
        core.maps
            .iter()
            .map(|(h, m)| MapInfo {
                hit: (*h).into(),
                ips: m.ips.clone(),
                lsi: m.lsi,
            })
            .collect()
    }

    /// Closes every live association and waits up to `wait` for them to go.
    fn close_all(&self, wait: Duration) {
        let mut core = self.lock_core();
        let now = Instant::now();
        let mut peers = HashSet::new();
        for (i, ep) in core.eps.iter().enumerate() {
            for a in ep.associations() {
                if let Some(p) = a.peer_hit()
                    && matches!(a.state(), State::Established | State::R2Sent)
                {
                    peers.insert((i, p));
                }
            }
        }
        for (i, p) in &peers {
            let _ = core.eps[*i].close(now, *p);
        }
        self.pump(&mut core);
        let deadline = Instant::now() + wait;
        loop {
            let busy = core
                .eps
                .iter()
                .any(|e| e.associations().any(|a| a.state() == State::Closing));
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            core = self
                .cv
                .wait_timeout(core, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        tracing::info!(closed = peers.len(), "associations closed");
    }
}

/// A running daemon (all threads started).
#[derive(Debug)]
pub struct Daemon {
    shared: Arc<Shared>,
}

impl Daemon {
    /// Loads the configuration, creates the TUN device and sockets and
    /// starts every thread.
    pub fn start(opts: Options, set_level: LevelSetter) -> anyhow::Result<Daemon> {
        let conf_text =
            std::fs::read_to_string(opts.config_dir.join("hipd.conf")).unwrap_or_default();
        let conf = parse_conf(&conf_text)?;
        let ids = load_identities(
            &opts.config_dir,
            conf.default_hi.as_deref().unwrap_or("ecdsa"),
        )?;
        let backend = OpensslBackend::new();
        let keys: Vec<Arc<dyn PrivateIdentity>> = ids.iter().map(|i| i.key.clone()).collect();
        let mut idents = Vec::new();
        let mut dp = DataPlane::default();
        for (n, li) in ids.iter().enumerate() {
            let hid = li.key.host_id();
            let hit = hid.hit(&backend).map_err(|e| anyhow::anyhow!("HIT: {e}"))?;
            let lsi = lsi_from_u32(n as u32 + 1);
            dp.local_lsi.insert(lsi, hit);
            dp.local_hit_lsi.insert(hit, lsi);
            idents.push(IdentInfo {
                hit,
                lsi,
                algorithm: format!("{:?}", hid.algorithm()),
                file: li.file.clone(),
            });
            tracing::info!(%hit, %lsi, file = %li.file.display(), default = n == 0, "host identity");
        }
        let opportunistic = conf.opportunistic.unwrap_or(true);
        let eps = build_engines(&keys, DEFAULT_PUZZLE_K, opportunistic, opts.udp_port)?;
        let hits: Vec<Ipv6Addr> = idents.iter().map(|i| i.hit.into()).collect();
        let lsis: Vec<Ipv4Addr> = idents.iter().map(|i| i.lsi).collect();
        let queues = match opts.tun_queues {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_TUN_QUEUES),
            n => n,
        };
        let tun = Tun::create(&opts.tun_name, &hits, &lsis, opts.tun_mtu, queues)?;
        tracing::info!(
            tun = tun.name(),
            offload = tun.offload(),
            queues = tun.queues(),
            "TUN device"
        );
        let core = Core {
            eps,
            idents,
            maps: BTreeMap::new(),
            next_lsi: 0x0101,
            nat: NatMode::None,
            shotgun: false,
            opportunistic,
            puzzle_k: DEFAULT_PUZZLE_K,
            pending: HashMap::new(),
            local_locators: Vec::new(),
            shim: HashMap::new(),
            failover: HashMap::new(),
            reap_defaults: hip_proto::reap::Params::hipd_default(),
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            cv: Condvar::new(),
            dp: RwLock::new(dp),
            hip6: USock::raw(true, Kind::Hip)?,
            hip4: USock::raw(false, Kind::Hip)?,
            esp6: USock::raw(true, Kind::Esp)?,
            esp4: USock::raw(false, Kind::Esp)?,
            udp6: USock::udp(true, opts.udp_port)?,
            udp4: USock::udp(false, opts.udp_port)?,
            tun,
            pmtu: pmtu::Cache::default(),
            ctr: Counters::default(),
            set_level,
            opts: opts.clone(),
            shutting_down: AtomicBool::new(false),
            epoch: Instant::now(),
            hosts_lsis_read: AtomicU64::new(0),
        });
        shared.update_locators();
        for cmd in conf.commands {
            let r = shared.dispatch(cmd.clone());
            if !r.ok {
                anyhow::bail!("hipd.conf: {cmd:?}: {:?}", r.error);
            }
        }
        shared.load_hosts_lsis();
        // Control socket: remove a stale socket nobody listens on.
        let path = &opts.control_socket;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!("another hipd is listening on {}", path.display());
            }
            std::fs::remove_file(path).ok();
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).ok();
        }
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| -> anyhow::Result<()> {
            std::thread::Builder::new().name(name.into()).spawn(f)?;
            Ok(())
        };
        let s = shared.clone();
        spawn("hipd-driver", Box::new(move || driver_thread(s)))?;
        for q in 0..shared.tun.queues() {
            let s = shared.clone();
            spawn(&format!("hipd-tun{q}"), Box::new(move || tun_thread(s, q)))?;
        }
        for (kind, v6) in [
            (Kind::Hip, true),
            (Kind::Hip, false),
            (Kind::Esp, true),
            (Kind::Esp, false),
            (Kind::Udp, true),
            (Kind::Udp, false),
        ] {
            let s = shared.clone();
            spawn("hipd-rx", Box::new(move || rx_thread(s, kind, v6)))?;
        }
        let s = shared.clone();
        spawn("hipd-locators", Box::new(move || locator_thread(s)))?;
        let s = shared.clone();
        spawn(
            "hipd-control",
            Box::new(move || control_thread(s, listener)),
        )?;
        tracing::info!(tun = shared.tun.name(), socket = %opts.control_socket.display(), "hipd running");
        Ok(Daemon { shared })
    }

    /// Graceful shutdown: CLOSE every association (up to 2 s), remove the
    /// control socket. The TUN device goes away with the process.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        self.shared.close_all(Duration::from_secs(2));
        std::fs::remove_file(&self.shared.opts.control_socket).ok();
    }

    /// Static mappings (for diagnostics).
    pub fn maps(&self) -> Vec<MapInfo> {
        self.shared.maps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(dst: u8) -> Path {
        Path {
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, dst)),
            udp: Some(10500),
        }
    }

    /// Items of the given lengths, back to back, on the paths given.
    fn items(spec: &[(usize, u8)]) -> Vec<(std::ops::Range<usize>, Path, ())> {
        let mut at = 0;
        spec.iter()
            .map(|&(len, dst)| {
                let r = at..at + len;
                at += len;
                (r, p(dst), ())
            })
            .collect()
    }

    fn runs(v: &[(std::ops::Range<usize>, Path, ())]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            let j = gso_run_end(v, i);
            assert!(j > i);
            out.push(j - i);
            i = j;
        }
        out
    }

    #[test]
    fn gso_runs_split_on_path_size_and_limits() {
        // Equal sizes on one path: one run; a shorter datagram ends it.
        assert_eq!(runs(&items(&[(100, 2); 5])), vec![5]);
        assert_eq!(
            runs(&items(&[(100, 2), (100, 2), (60, 2), (100, 2)])),
            vec![3, 1]
        );
        // A longer datagram cannot join a run.
        assert_eq!(runs(&items(&[(100, 2), (120, 2)])), vec![1, 1]);
        // A path change splits.
        assert_eq!(runs(&items(&[(100, 2), (100, 3), (100, 3)])), vec![1, 2]);
        // The segment count limit.
        assert_eq!(
            runs(&items(&[(10, 2); net::GSO_MAX_SEGMENTS + 3])),
            vec![net::GSO_MAX_SEGMENTS, 3]
        );
        // The byte limit: 1400-byte datagrams, 46 fit in 65 000 bytes.
        let v = items(&[(1400, 2); 50]);
        let r = runs(&v);
        assert_eq!(r, vec![46, 4]);
        // Ranges that are not back to back split.
        let mut v = items(&[(100, 2); 3]);
        v[2].0 = 250..350;
        assert_eq!(runs(&v), vec![2, 1]);
        // Empty input and out-of-range start.
        assert_eq!(gso_run_end::<()>(&[], 0), 0);
    }
}
