//! The daemon's packet engine: sans-IO, one per host.
//!
//! The daemon feeds it every packet its NFQUEUE rules catch, split by
//! direction: [`Engine::outbound`] for packets the local TCP sends (queued in
//! the OUTPUT hook, still carrying the kernel's *original* tuple) and
//! [`Engine::inbound`] for packets received (queued in PREROUTING, carrying
//! the *wire* tuple). Each call returns a [`Verdict`]. The daemon also feeds
//! `tcp_info` samples ([`Engine::tcp_info`]), the local address list with
//! link state ([`Engine::set_locals`]), routing errors and closed sockets,
//! and collects [`Action`]s: connections whose outgoing packets must be
//! queued from now on (they moved off their original pair) or no longer.
//!
//! # Handshake (thesis 5.2.3/5.2.4)
//! - Outgoing SYN: insert PREFIX_SYN with the prefixes chosen by
//!   [`crate::select::prefixes_to_offer`] from the usable local addresses
//!   (an empty PREFIX_SYN when there is nothing to offer, so the peer can
//!   still offer its own); remember the offer.
//! - Incoming SYN with PREFIX_SYN: validate the prefixes, remember the
//!   accepted ones for the echo; strip the header before the kernel sees it.
//! - Outgoing SYN+ACK of such a connection: PREFIX_SYN (our offer) and
//!   PREFIX_ACK (the echo of the accepted prefixes). A SYN without
//!   PREFIX_SYN gets a plain SYN+ACK: the server side only answers offers.
//! - Incoming SYN+ACK: validate the peer's prefixes and compute which of our
//!   prefixes it acknowledged; strip.
//! - The client's next outgoing segment (the ACK of the SYN+ACK) gets
//!   PREFIX_ACK (the accepted prefixes of the server's offer); the
//!   connection is entered into the pair table. A SYN+ACK without
//!   PREFIX_SYN means a peer without PreserveTCP: plain TCP.
//! - Incoming ACK with PREFIX_ACK at the server: the connection is entered.
//!
//! [`Engine::observe_inbound`] learns an incoming handshake packet without a
//! verdict: `preservetcpd` uses it for the copies it gets through NFLOG
//! while the packets themselves reach the kernel unstripped (it skips the
//! PREFIX options, type action `00`); there a SYN+ACK without options
//! answering our offer marks the peer as plain at once, since the ACK of
//! such a connection is not queued.
//!
//! Headers are only stripped when they carry nothing but PREFIX options and
//! padding; a header whose first PREFIX option of a kind is malformed is
//! counted ([`Stats::malformed_options`]) and removed, so the segment
//! continues as plain TCP (the kernel would skip the unknown options
//! anyway). A header the kernel would drop (see below) is counted and left
//! as it is.
//!
//! # Received options: the rules both paths apply
//! The engine (NFQUEUE path, and the learning side of the BPF path) and
//! the tc BPF programs (`bpf/ptcp.bpf.c`, which answer in the kernel)
//! interpret a received destination options header the same way, so that
//! neither end believes the other accepted something it did not:
//! - *Deliverable headers only.* A header the receiving Linux kernel drops
//!   the packet for teaches nothing: an option or the header running past
//!   its end, non-zero PadN data, more than 7 octets of padding in a row,
//!   more than 8 options other than padding, or an option other than
//!   padding whose action bits are not `00`
//!   ([`crate::wire::DestOptsHeader::deliverable`]). Counted as malformed
//!   (`malformed_options`, `bpf_malformed`); a pending handshake is not
//!   touched (the packet never reached TCP).
//! - *First option of each kind.* Only the first PREFIX_SYN and the first
//!   PREFIX_ACK count; later ones are ignored, malformed or not (thesis
//!   4.3.2). If the first PREFIX_SYN or the first PREFIX_ACK is not a
//!   well-formed prefix list, the header is malformed: nothing is learned
//!   from it and the handshake continues as plain TCP (counted).
//! - *Echo what was accepted.* The PREFIX_ACK echo (server: in the
//!   SYN+ACK; client: in the ACK) holds exactly the prefixes accepted from
//!   the peer's PREFIX_SYN by [`crate::select::validate_received`] with the
//!   default [`crate::select::Limits`] (length 16–127, usable address,
//!   scope at least the connection's, not the connection's own prefix, no
//!   duplicate, at most 8), byte for byte and in the received order; an
//!   offer with nothing acceptable gets an empty PREFIX_ACK (the peer knows
//!   we understood, and uses none of its alternatives). Since the peer
//!   intersects its offer with the echo, it never uses an address we
//!   refused. The thesis (5.2.4) echoes the PREFIX_SYN whole; with a peer
//!   that does so, this end still uses only what it accepted itself.
//! - *First offer of a handshake.* A further offering SYN on a tuple whose
//!   handshake is pending (a retransmission carries the same option; any
//!   other is not what the kernel answers) does not replace the first
//!   offer (`duplicate_offers`); likewise a retransmitted SYN+ACK. The
//!   kernel path decides "pending" by the socket: a request socket for the
//!   tuple (the kernel's SYN_RECV state).
//! - *Bound listeners get no aliases* (thesis 5.3.8): an offer to a
//!   listening socket bound to one specific address is not answered
//!   (plain SYN+ACK; `listener_bound`, `bpf_listener_bound`). The kernel
//!   path looks the listener up itself (`bpf_skc_lookup_tcp`); the engine
//!   is told by the daemon ([`Engine::listener_bound`]).
//!
//! # After the handshake
//! Outgoing packets of a connection whose current pair differs from the
//! original are rewritten to the current pair; incoming packets on any of
//! the N×M pairs are rewritten to the original tuple. A packet arriving on
//! another pair than the current one makes the connection follow the peer.
//!
//! # Limits (thesis 8.2)
//! At most [`EngineConfig::max_pending`] handshakes and
//! [`EngineConfig::max_connections`] connections are tracked; beyond that
//! new connections are plain TCP (counted). Unfinished handshakes expire
//! after [`EngineConfig::pending_timeout`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use crate::control::{ConnInfo, PairInfo, TupleInfo};
use crate::packet::{
    TcpHeader, insert_dest_opts, parse_ipv6_tcp, rewrite_addresses_v6, strip_dest_opts,
};
use crate::pairs::{AddrPair, AddressPairs, ConnId, FourTuple};
use crate::policy::{ChangePolicy, Decision, PolicyConfig, PolicyEvent, SwitchReason};
use crate::select::{
    Limits, LocalAddress, PrefixStats, acknowledged_locals, offer_option, validate_received,
};
use crate::wire::{DestOption, DestOptsHeader, IPPROTO_TCP, PrefixOption, WireError};

/// What to do with a queued packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it pass unchanged.
    Accept,
    /// Let it pass with these bytes instead.
    Replace(Vec<u8>),
}

/// Work for the daemon outside the packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The connection left its original pair: queue its outgoing packets
    /// (match the original tuple in OUTPUT).
    Redirect(FourTuple),
    /// The connection is back on its original pair or gone: stop queueing.
    Unredirect(FourTuple),
    /// The connection (original tuple) now uses this pair and it differs
    /// from the original: the kernel must still be able to send from and
    /// receive on the original tuple when the original link is gone (the
    /// daemon keeps fallback routes for it).
    Moved(FourTuple, AddrPair),
    /// A connection (original tuple) was entered; its wire tuples are
    /// [`Engine::wire_tuples`] (only with [`EngineConfig::pair_actions`]).
    Tracked(FourTuple),
    /// The connection was forgotten (only with
    /// [`EngineConfig::pair_actions`]).
    Untracked(FourTuple),
}

/// A `tcp_info` sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSample {
    /// `tcpi_retransmits`.
    pub retransmits: u32,
    /// `tcpi_unacked`.
    pub unacked: u32,
    /// `tcpi_last_ack_recv`.
    pub since_last_ack: Duration,
}

/// A local address with the state of its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    /// Address and on-link prefix length.
    pub addr: LocalAddress,
    /// Whether its link is up.
    pub up: bool,
}

/// What the kernel tells of a connection's socket for
/// [`Engine::inbound_checked`] (sock_diag `tcp_info`): byte counts since
/// the handshake, from which the engine, knowing the initial sequence
/// numbers, rebuilds the socket's sequence state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketProgress {
    /// `tcpi_bytes_acked`: `snd_una` − ISS − 1.
    pub bytes_acked: u64,
    /// `tcpi_bytes_received`: `rcv_nxt` − IRS − 1.
    pub bytes_received: u64,
    /// `tcpi_bytes_sent` (data bytes, retransmissions included): bounds
    /// `snd_nxt` from above.
    pub bytes_sent: u64,
}

/// How far (bytes of sequence space) a segment's sequence number may lie
/// from the socket's next expected byte for the segment to move its
/// connection: a peer that moved retransmits from its oldest
/// unacknowledged byte, behind our `rcv_nxt` by what our lost ACKs covered
/// (at most a receive window; `tcp_rmem`'s default maximum is 6 MiB). The
/// tc ingress program uses the same window (`FOLLOW_SEQ_WINDOW`).
pub const FOLLOW_SEQ_WINDOW: u32 = 1 << 23;

/// Initial sequence numbers of a connection, this host's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Isn {
    /// Ours (ISS).
    local: u32,
    /// The peer's (IRS).
    peer: u32,
}

/// Whether a segment with `seq`/`ack` (ACK flag set, no RST) could have
/// come from the peer of a socket in state `p`: the acknowledgment number
/// within [`snd_una`, `snd_nxt`] (RFC 5961 §5 without the allowance for
/// old ACKs: a late ACK just moves nothing; `snd_nxt` over-estimated by
/// the retransmitted bytes, plus a FIN) and the sequence number within
/// [`FOLLOW_SEQ_WINDOW`] of `rcv_nxt`. The counts are 64-bit; sequence
/// space wraps at 2^32, so only their low 32 bits matter.
fn plausible(isn: Isn, p: &SocketProgress, seq: u32, ack: u32) -> bool {
    let low = |n: u64| (n & u64::from(u32::MAX)) as u32;
    let rcv_nxt = isn.peer.wrapping_add(1).wrapping_add(low(p.bytes_received));
    let snd_una = isn.local.wrapping_add(1).wrapping_add(low(p.bytes_acked));
    let in_flight = p
        .bytes_sent
        .saturating_sub(p.bytes_acked)
        .saturating_add(1)
        .min(u64::from(u32::MAX >> 1));
    u64::from(ack.wrapping_sub(snd_una)) <= in_flight
        && seq.wrapping_sub(rcv_nxt).wrapping_add(FOLLOW_SEQ_WINDOW) <= 2 * FOLLOW_SEQ_WINDOW
}

/// Engine tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Prefix limits.
    pub limits: Limits,
    /// Address change policy.
    pub policy: PolicyConfig,
    /// Most unfinished handshakes tracked.
    pub max_pending: usize,
    /// Most connections tracked.
    pub max_connections: usize,
    /// Unfinished handshakes are forgotten after this long.
    pub pending_timeout: Duration,
    /// The kernel (preservetcpd's tc BPF programs) inserts the options into
    /// outgoing handshake packets, which then never reach
    /// [`Engine::outbound`]: the engine learns each handshake from the
    /// incoming packets alone ([`Engine::observe_inbound`]). A learned
    /// SYN's answer is taken to carry [`Engine::offer_for`] of the local
    /// address (what the kernel's offer map holds); a learned SYN+ACK is
    /// taken to answer our offer (the daemon only passes those on) and, if
    /// it carries PREFIX_SYN, enters the connection at once (the kernel
    /// echoes it in the ACK) unless [`EngineConfig::kernel_echo_events`]
    /// is set. A SYN+ACK of a connection already entered (a retransmission
    /// after a lost ACK) is ignored.
    pub kernel_options: bool,
    /// With [`EngineConfig::kernel_options`]: the client side of a
    /// connection is entered when the kernel reports that the PREFIX_ACK
    /// echo actually left ([`Engine::kernel_echoed`], from the egress
    /// program's `ptcp_echoes` ring buffer), not when the SYN+ACK with
    /// PREFIX_SYN is learned: the kernel may skip the echo (GSO, BIG TCP,
    /// MTU; a RST never carries it) and give up after three segments, and
    /// then the server never enters the connection either. Event and
    /// SYN+ACK may be learned in either order; a SYN+ACK whose echo is
    /// never reported expires with the pending handshakes
    /// ([`EngineConfig::pending_timeout`]). Off: the SYN+ACK enters the
    /// connection (the echo is assumed).
    pub kernel_echo_events: bool,
    /// Report every connection entered ([`Action::Tracked`]) and forgotten
    /// ([`Action::Untracked`]), so that the daemon can give the kernel the
    /// connection's wire tuples ([`Engine::wire_tuples`]): with the tc BPF
    /// programs, segments on an alternative pair are rewritten to the
    /// original tuple in the kernel and only reported to the engine.
    pub pair_actions: bool,
    /// Check that a segment on another pair of a connection is one its
    /// peer could have sent before it moves the connection (see
    /// [`Engine::inbound_checked`]): on for preservetcpd's NFQUEUE mode
    /// (`--no-bpf`), where nothing in front of the engine has looked at the
    /// segment; off where the tc programs have already checked it (they
    /// only report plausible segments) and in the engine's own tests.
    pub check_peer_segments: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            policy: PolicyConfig::default(),
            max_pending: 4096,
            max_connections: 65536,
            pending_timeout: Duration::from_secs(30),
            kernel_options: false,
            kernel_echo_events: false,
            pair_actions: false,
            check_peer_segments: false,
        }
    }
}

/// Engine counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Outbound packets seen.
    pub packets_out: u64,
    /// Inbound packets seen.
    pub packets_in: u64,
    /// Inbound handshake packets only observed ([`Engine::observe_inbound`]).
    pub learned_in: u64,
    /// Packets that are not IPv6/TCP or could not be parsed (passed).
    pub unparsed: u64,
    /// SYNs that got PREFIX_SYN.
    pub syn_offers: u64,
    /// SYN+ACKs that got PREFIX_SYN + PREFIX_ACK.
    pub synack_answers: u64,
    /// Handshakes where the peer did not answer the offer (plain TCP).
    pub plain_peers: u64,
    /// Connections entered into the pair table.
    pub connections: u64,
    /// Connections removed (socket closed).
    pub closed: u64,
    /// Headers with malformed options (removed, connection plain).
    pub malformed_options: u64,
    /// Handshakes or connections refused because a limit was reached.
    pub over_limit: u64,
    /// Connections the pair table refused (conflicts, too many addresses).
    pub table_errors: u64,
    /// Outbound packets rewritten to the current pair.
    pub rewritten_out: u64,
    /// Inbound packets rewritten to the original tuple.
    pub rewritten_in: u64,
    /// ICMPv6 Packet Too Big messages whose quote was put back to the
    /// original tuple (the quoted segment was on another pair).
    pub icmp_translated: u64,
    /// Address changes.
    pub switches: u64,
    /// Pending handshakes expired.
    pub expired: u64,
    /// Echoes the kernel reported sent ([`Engine::kernel_echoed`]).
    pub echo_events: u64,
    /// Server handshakes rebuilt from what the kernel answered
    /// ([`Engine::kernel_answered`]).
    pub rebuilt: u64,
    /// Offers not answered because the listening socket is bound to one
    /// specific address ([`Engine::listener_bound`], thesis 5.3.8).
    pub listener_bound: u64,
    /// Further offering SYNs (or SYN+ACKs) of a handshake already holding
    /// an offer: the first offer was kept.
    pub duplicate_offers: u64,
    /// Segments on another pair of a connection that could not have come
    /// from its peer ([`EngineConfig::check_peer_segments`]): rewritten and
    /// delivered (the socket's own checks apply) but moved nothing.
    pub implausible_segments: u64,
    /// Received prefixes and rejections.
    pub prefixes: PrefixStats,
}

impl Stats {
    /// The counters by name (for the control socket).
    pub fn to_map(&self) -> BTreeMap<String, u64> {
        let p = &self.prefixes;
        [
            ("packets_out", self.packets_out),
            ("packets_in", self.packets_in),
            ("learned_in", self.learned_in),
            ("unparsed", self.unparsed),
            ("syn_offers", self.syn_offers),
            ("synack_answers", self.synack_answers),
            ("plain_peers", self.plain_peers),
            ("connections", self.connections),
            ("closed", self.closed),
            ("malformed_options", self.malformed_options),
            ("over_limit", self.over_limit),
            ("table_errors", self.table_errors),
            ("rewritten_out", self.rewritten_out),
            ("rewritten_in", self.rewritten_in),
            ("icmp_translated", self.icmp_translated),
            ("switches", self.switches),
            ("expired", self.expired),
            ("echo_events", self.echo_events),
            ("handshakes_rebuilt", self.rebuilt),
            ("listener_bound", self.listener_bound),
            ("duplicate_offers", self.duplicate_offers),
            ("implausible_segments", self.implausible_segments),
            ("prefixes_received", p.received),
            ("prefixes_accepted", p.accepted),
            ("prefixes_rejected", p.rejected()),
            ("prefixes_rejected_length", p.rejected_length),
            ("prefixes_rejected_address", p.rejected_address),
            ("prefixes_rejected_scope", p.rejected_scope),
            ("prefixes_rejected_own", p.rejected_own),
            ("prefixes_rejected_duplicate", p.rejected_duplicate),
            ("prefixes_rejected_over_limit", p.rejected_over_limit),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

#[derive(Debug, Clone)]
struct Pending {
    role: Role,
    created: Instant,
    /// Our PREFIX_SYN.
    sent: Option<PrefixOption>,
    /// The peer offered (PREFIX_SYN): our PREFIX_ACK echo of it, which
    /// holds only the prefixes we accepted ([`crate::select::Validation::echo`]).
    /// Set by the first offer of the handshake; later ones do not replace it.
    peer_syn: Option<PrefixOption>,
    /// Validated peer alternatives.
    peer_alts: Vec<Ipv6Addr>,
    /// Our alternatives the peer acknowledged.
    acked_locals: Vec<Ipv6Addr>,
    /// Initial sequence numbers, from the SYN+ACK (ours or the peer's).
    isn: Option<Isn>,
    /// Client, [`EngineConfig::kernel_echo_events`]: the kernel reported
    /// the echo before the SYN+ACK was learned.
    echoed: bool,
    /// Server: the address the listening socket is bound to, as the daemon
    /// reported it ([`Engine::listener_bound`]); `None` while unknown.
    listener: Option<Ipv6Addr>,
}

#[derive(Debug, Clone)]
struct Conn {
    original: FourTuple,
    /// Initial sequence numbers (`None` where the engine saw no SYN+ACK:
    /// the kernel's handshakes).
    isn: Option<Isn>,
    policy: ChangePolicy,
    redirected: bool,
    last_reason: Option<SwitchReason>,
    installed: Instant,
}

/// The per-host engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    locals: Vec<LocalAddr>,
    pending: HashMap<FourTuple, Pending>,
    pairs: AddressPairs,
    conns: HashMap<ConnId, Conn>,
    next_id: u64,
    actions: Vec<Action>,
    stats: Stats,
    /// [`EngineConfig::kernel_options`]: PREFIX_ACKs learned without a
    /// pending server handshake (see [`Engine::unmatched_acks`]).
    unmatched: HashMap<FourTuple, (PrefixOption, Instant)>,
}

fn on_link(local: &LocalAddress, addr: Ipv6Addr) -> bool {
    let n = u32::from(local.prefix_len.min(128));
    let mask = u128::MAX.checked_shl(128 - n).unwrap_or(0);
    u128::from(local.addr) & mask == u128::from(addr) & mask
}

fn reason_name(r: SwitchReason) -> &'static str {
    match r {
        SwitchReason::RetransmissionTimeout => "retransmission_timeout",
        SwitchReason::Stall => "stall",
        SwitchReason::RoutingError => "routing_error",
        SwitchReason::SourceGone => "source_gone",
        SwitchReason::SourceBack => "source_back",
        SwitchReason::PeerMoved => "peer_moved",
        SwitchReason::Requested => "requested",
    }
}

/// Whether a header holds only PREFIX options and padding (ours to strip).
fn only_ours(h: &DestOptsHeader) -> bool {
    h.options().iter().all(|o| {
        matches!(
            o,
            DestOption::Pad1
                | DestOption::PadN(_)
                | DestOption::PrefixSyn(_)
                | DestOption::PrefixAck(_)
                | DestOption::Ignored { .. }
        )
    })
}

impl Engine {
    /// A new engine.
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            locals: Vec::new(),
            pending: HashMap::new(),
            pairs: AddressPairs::default(),
            conns: HashMap::new(),
            next_id: 1,
            actions: Vec::new(),
            stats: Stats::default(),
            unmatched: HashMap::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Takes the pending actions.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The original tuples of all tracked connections.
    pub fn originals(&self) -> Vec<FourTuple> {
        self.conns.values().map(|c| c.original).collect()
    }

    /// Every connection's id, current pair and the reason of its last
    /// switch (cheaper than [`Engine::connections`]).
    pub fn current_pairs(&self) -> impl Iterator<Item = (u64, AddrPair, Option<&'static str>)> {
        self.conns.iter().map(|(id, c)| {
            (
                id.0,
                self.pairs.current(*id).unwrap_or(c.original.pair()),
                c.last_reason.map(reason_name),
            )
        })
    }

    /// The current wire pair of the connection with this original tuple.
    pub fn current_pair(&self, original: &FourTuple) -> Option<AddrPair> {
        self.pairs.lookup_original(original).map(|(_, w)| w.pair())
    }

    /// Sets the local address list (and link states); addresses whose link
    /// went down or that disappeared are reported to every connection's
    /// policy as gone, those that came back as back.
    pub fn set_locals(&mut self, locals: Vec<LocalAddr>, now: Instant) {
        let was_up = |me: &Self, a: Ipv6Addr| me.locals.iter().any(|l| l.addr.addr == a && l.up);
        let mut events = Vec::new();
        for old in &self.locals {
            let still = locals.iter().any(|l| l.addr.addr == old.addr.addr && l.up);
            if old.up && !still {
                events.push(PolicyEvent::LocalGone(old.addr.addr));
            }
        }
        for new in &locals {
            if new.up && !was_up(self, new.addr.addr) {
                events.push(PolicyEvent::LocalBack(new.addr.addr));
            }
        }
        self.locals = locals;
        for ev in events {
            self.feed_all(ev, now);
        }
    }

    fn feed_all(&mut self, ev: PolicyEvent, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.feed(id, ev, now);
        }
    }

    fn feed(&mut self, id: ConnId, ev: PolicyEvent, now: Instant) {
        let d = match self.conns.get_mut(&id) {
            Some(c) => c.policy.handle(ev, now),
            None => return,
        };
        if let Some(d) = d {
            self.apply(id, d);
        }
    }

    fn apply(&mut self, id: ConnId, d: Decision) {
        if self.pairs.set_current(id, d.to).is_err() {
            return;
        }
        self.stats.switches += 1;
        if let Some(c) = self.conns.get_mut(&id) {
            c.last_reason = Some(d.reason);
            let moved = d.to != c.original.pair();
            if moved != c.redirected {
                c.redirected = moved;
                self.actions.push(if moved {
                    Action::Redirect(c.original)
                } else {
                    Action::Unredirect(c.original)
                });
            }
            if moved {
                self.actions.push(Action::Moved(c.original, d.to));
            }
        }
    }

    /// A `tcp_info` sample of the socket with this original tuple.
    pub fn tcp_info(&mut self, original: &FourTuple, s: TcpSample, now: Instant) {
        if let Some((id, _)) = self.pairs.lookup_original(original) {
            self.feed(
                id,
                PolicyEvent::TcpInfo {
                    retransmits: s.retransmits,
                    unacked: s.unacked,
                    since_last_ack: s.since_last_ack,
                },
                now,
            );
        }
    }

    /// Sending on the connection's current pair failed with a routing error.
    pub fn routing_error(&mut self, original: &FourTuple, peer: Ipv6Addr, now: Instant) {
        if let Some((id, _)) = self.pairs.lookup_original(original) {
            self.feed(id, PolicyEvent::RoutingError { peer }, now);
        }
    }

    /// The socket with this original tuple was missing from a socket list
    /// taken at `listed_at`: forget the connection, unless it was entered
    /// after that (its socket may not have existed yet).
    pub fn socket_gone(&mut self, original: &FourTuple, listed_at: Instant) {
        if let Some((id, _)) = self.pairs.lookup_original(original)
            && self
                .conns
                .get(&id)
                .is_some_and(|c| c.installed <= listed_at)
        {
            self.pairs.remove(id);
            if let Some(c) = self.conns.remove(&id) {
                self.stats.closed += 1;
                if c.redirected {
                    self.actions.push(Action::Unredirect(c.original));
                }
                if self.config.pair_actions {
                    self.actions.push(Action::Untracked(c.original));
                }
            }
        }
    }

    /// Until when a segment of the connection on another pair is not
    /// followed (its last switch plus
    /// [`crate::policy::PolicyConfig::follow_hold`]); `None` if it never
    /// switched or is unknown.
    pub fn follow_hold_until(&self, original: &FourTuple) -> Option<Instant> {
        let (id, _) = self.pairs.lookup_original(original)?;
        let at = self.conns.get(&id)?.policy.last_switch()?;
        at.checked_add(self.config.policy.follow_hold)
    }

    /// Every tuple a connection (original tuple) may use on the wire, in
    /// the receiver's view (local = this host's address): its N×M pairs,
    /// the original one included. Empty for an unknown connection.
    pub fn wire_tuples(&self, original: &FourTuple) -> Vec<FourTuple> {
        let Some((id, _)) = self.pairs.lookup_original(original) else {
            return Vec::new();
        };
        let locals = self.pairs.locals(id).unwrap_or_default();
        let peers = self.pairs.peers(id).unwrap_or_default();
        locals
            .iter()
            .flat_map(|l| {
                peers.iter().map(move |p| {
                    original.with_pair(AddrPair {
                        local: *l,
                        peer: *p,
                    })
                })
            })
            .collect()
    }

    /// Moves connection `id` to `pair` (control socket).
    pub fn move_to(&mut self, id: u64, pair: AddrPair, now: Instant) -> Result<(), String> {
        let id = ConnId(id);
        let c = self.conns.get_mut(&id).ok_or("no such connection")?;
        let d = c
            .policy
            .force(pair, now)
            .ok_or("not one of the connection's pairs")?;
        self.apply(id, d);
        Ok(())
    }

    /// Forgets handshakes older than the pending timeout.
    pub fn expire(&mut self, now: Instant) {
        let t = self.config.pending_timeout;
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.created) < t);
        self.stats.expired += (before - self.pending.len()) as u64;
        let before = self.unmatched.len();
        self.unmatched
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < t);
        self.stats.expired += (before - self.unmatched.len()) as u64;
    }

    /// The connections for the control socket.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let mut v: Vec<ConnInfo> = self
            .conns
            .iter()
            .map(|(id, c)| {
                let cur = self.pairs.current(*id).unwrap_or(c.original.pair());
                ConnInfo {
                    id: id.0,
                    original: TupleInfo {
                        local: c.original.local,
                        local_port: c.original.local_port,
                        peer: c.original.peer,
                        peer_port: c.original.peer_port,
                    },
                    current: PairInfo {
                        local: cur.local,
                        peer: cur.peer,
                    },
                    locals: self
                        .pairs
                        .locals(*id)
                        .map(<[_]>::to_vec)
                        .unwrap_or_default(),
                    peers: self.pairs.peers(*id).map(<[_]>::to_vec).unwrap_or_default(),
                    switches: c.policy.switches(),
                    last_reason: c.last_reason.map(|r| reason_name(r).to_string()),
                }
            })
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Every local address (up or not), as last set by
    /// [`Engine::set_locals`].
    pub fn local_addrs(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.locals.iter().map(|l| l.addr.addr)
    }

    /// The PREFIX_SYN option this engine offers on a connection from
    /// `conn_local`, given the current local addresses.
    pub fn offer_for(&self, conn_local: Ipv6Addr) -> PrefixOption {
        self.offer(conn_local)
    }

    fn offer(&self, conn_local: Ipv6Addr) -> PrefixOption {
        let cands: Vec<LocalAddress> = self
            .locals
            .iter()
            .filter(|l| l.up)
            .map(|l| l.addr)
            .collect();
        offer_option(conn_local, &cands, &self.config.limits)
    }

    fn install(
        &mut self,
        original: FourTuple,
        local_alts: &[Ipv6Addr],
        peer_alts: &[Ipv6Addr],
        isn: Option<Isn>,
        now: Instant,
    ) {
        if self.conns.len() >= self.config.max_connections {
            self.stats.over_limit += 1;
            return;
        }
        let id = ConnId(self.next_id);
        self.next_id += 1;
        if self
            .pairs
            .insert(id, original, local_alts, peer_alts)
            .is_err()
        {
            self.stats.table_errors += 1;
            return;
        }
        let locals = self.pairs.locals(id).map(<[_]>::to_vec).unwrap_or_default();
        let peers = self.pairs.peers(id).map(<[_]>::to_vec).unwrap_or_default();
        let Some(mut policy) = ChangePolicy::new(self.config.policy, &locals, &peers) else {
            self.pairs.remove(id);
            self.stats.table_errors += 1;
            return;
        };
        for p in &peers {
            let routed = locals.iter().find(|l| {
                self.locals
                    .iter()
                    .any(|la| la.addr.addr == **l && on_link(&la.addr, *p))
            });
            if let Some(l) = routed {
                policy.set_route_source(*p, *l);
            }
        }
        self.stats.connections += 1;
        if self.config.pair_actions {
            self.actions.push(Action::Tracked(original));
        }
        self.conns.insert(
            id,
            Conn {
                original,
                policy,
                redirected: false,
                last_reason: None,
                installed: now,
                isn,
            },
        );
    }

    fn add_pending(&mut self, key: FourTuple, p: Pending) -> bool {
        if !self.pending.contains_key(&key) && self.pending.len() >= self.config.max_pending {
            self.stats.over_limit += 1;
            return false;
        }
        self.pending.insert(key, p);
        true
    }

    /// A packet the local TCP sends (OUTPUT hook, original tuple).
    pub fn outbound(&mut self, pkt: &[u8], now: Instant) -> Verdict {
        self.stats.packets_out += 1;
        let Ok((t, tcp, has_opts)) =
            parse_ipv6_tcp(pkt).map(|v| (v.sender_tuple(), v.tcp_header, v.dest_opts.is_some()))
        else {
            self.stats.unparsed += 1;
            return Verdict::Accept;
        };
        let f = tcp.flags;
        if f.syn && !f.ack {
            if has_opts || self.pairs.lookup_original(&t).is_some() {
                return Verdict::Accept;
            }
            let offer = match self.pending.get(&t) {
                Some(p) if p.role == Role::Client => p.sent.clone().unwrap_or_default(),
                _ => {
                    if self.conns.len() >= self.config.max_connections {
                        self.stats.over_limit += 1;
                        return Verdict::Accept;
                    }
                    let offer = self.offer(t.local);
                    let p = Pending {
                        role: Role::Client,
                        created: now,
                        sent: Some(offer.clone()),
                        peer_syn: None,
                        peer_alts: Vec::new(),
                        acked_locals: Vec::new(),
                        echoed: false,
                        isn: None,
                        listener: None,
                    };
                    if !self.add_pending(t, p) {
                        return Verdict::Accept;
                    }
                    offer
                }
            };
            return match DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(offer), None)
                .ok()
                .and_then(|h| insert_dest_opts(pkt, &h).ok())
            {
                Some(out) => {
                    self.stats.syn_offers += 1;
                    Verdict::Replace(out)
                }
                None => Verdict::Accept,
            };
        }
        if f.syn && f.ack {
            if has_opts {
                return Verdict::Accept;
            }
            let offer = self.offer(t.local);
            let Some(p) = self.pending.get_mut(&t).filter(|p| p.role == Role::Server) else {
                return Verdict::Accept;
            };
            let Some(echo) = p.peer_syn.clone() else {
                return Verdict::Accept;
            };
            p.isn.get_or_insert(Isn {
                local: tcp.seq,
                peer: tcp.ack.wrapping_sub(1),
            });
            if p.listener.is_some_and(|l| !l.is_unspecified()) {
                // Thesis 5.3.8: a server bound to one address gets no
                // aliases; the SYN+ACK leaves plain, the client sees a
                // peer without PreserveTCP.
                self.pending.remove(&t);
                self.stats.listener_bound += 1;
                return Verdict::Accept;
            }
            let offer = p.sent.get_or_insert(offer).clone();
            return match DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(offer), Some(echo))
                .ok()
                .and_then(|h| insert_dest_opts(pkt, &h).ok())
            {
                Some(out) => {
                    self.stats.synack_answers += 1;
                    Verdict::Replace(out)
                }
                None => Verdict::Accept,
            };
        }
        if self.pending.get(&t).is_some_and(|p| p.role == Role::Client)
            && let Some(p) = self.pending.remove(&t)
        {
            let Some(echo) = p.peer_syn else {
                self.stats.plain_peers += 1;
                return Verdict::Accept;
            };
            self.install(t, &p.acked_locals, &p.peer_alts, p.isn, now);
            if has_opts {
                return Verdict::Accept;
            }
            return match DestOptsHeader::with_prefixes(IPPROTO_TCP, None, Some(echo))
                .ok()
                .and_then(|h| insert_dest_opts(pkt, &h).ok())
            {
                Some(out) => Verdict::Replace(out),
                None => Verdict::Accept,
            };
        }
        if let Some((_, wire)) = self.pairs.lookup_original(&t)
            && wire != t
        {
            let mut out = pkt.to_vec();
            if rewrite_addresses_v6(&mut out, wire.local, wire.peer).is_ok() {
                self.stats.rewritten_out += 1;
                return Verdict::Replace(out);
            }
        }
        Verdict::Accept
    }

    /// Thesis 5.3.8 (aliases only for connections whose local address
    /// allows it): the listening socket that answers the server connection
    /// `t` (local = our address) is bound to `bound` — the unspecified
    /// address for a wildcard listener. A listener bound to one specific
    /// address (the firewall case: the service is meant to be reached at
    /// that address only) gets no alternative addresses: the engine's
    /// SYN+ACK for `t` then carries no options and the connection stays
    /// plain on both ends ([`Stats::listener_bound`]). The daemon passes
    /// this before [`Engine::outbound`] of the SYN+ACK, for the tuples
    /// [`Engine::listener_query`] names; without it the offer is answered
    /// (the tc BPF programs look the listener up themselves). Ignored when
    /// no server handshake with an offer is pending for `t`.
    pub fn listener_bound(&mut self, t: &FourTuple, bound: Ipv6Addr) {
        if let Some(p) = self
            .pending
            .get_mut(t)
            .filter(|p| p.role == Role::Server && p.peer_syn.is_some())
        {
            p.listener = Some(bound);
        }
    }

    /// The tuple (local = our address) of the outgoing packet `pkt` if it
    /// is a SYN+ACK that would answer an offer and the listener's binding
    /// is not known yet: the daemon looks up the listening socket of that
    /// tuple (the one the kernel chose: bound to the tuple's local address
    /// if there is one, else the wildcard one, on the local port) and calls
    /// [`Engine::listener_bound`] before [`Engine::outbound`].
    pub fn listener_query(&self, pkt: &[u8]) -> Option<FourTuple> {
        let v = parse_ipv6_tcp(pkt).ok()?;
        let f = v.tcp_header.flags;
        if !(f.syn && f.ack) || v.dest_opts.is_some() {
            return None;
        }
        let t = v.sender_tuple();
        self.pending
            .get(&t)
            .filter(|p| p.role == Role::Server && p.peer_syn.is_some() && p.listener.is_none())
            .map(|_| t)
    }

    /// Whether the outgoing packet `pkt` needs an incoming handshake packet
    /// the engine has not observed yet: a SYN+ACK for which no offer was
    /// learned, or the client's ACK before the SYN+ACK was learned. The
    /// daemon reads learned packets until this is `false` (or none are
    /// left), instead of always reading until its socket is empty.
    pub fn awaits_learning(&self, pkt: &[u8]) -> bool {
        let Ok(v) = parse_ipv6_tcp(pkt) else {
            return false;
        };
        let t = v.sender_tuple();
        let f = v.tcp_header.flags;
        match self.pending.get(&t) {
            _ if f.syn && !f.ack => false,
            Some(p) if f.syn => !(p.role == Role::Server && p.peer_syn.is_some()),
            None if f.syn => true,
            Some(p) => p.role == Role::Client && p.peer_syn.is_none(),
            None => false,
        }
    }

    /// A received handshake packet the daemon only *observed* (a copy,
    /// e.g. through NFLOG, while the original went on to the kernel
    /// unchanged): learns its PREFIX_SYN/PREFIX_ACK exactly like
    /// [`Engine::inbound`] but produces no verdict. The kernel then sees
    /// the destination options header and skips the PREFIX options (type
    /// action `00`). Only for packets on a connection's original tuple
    /// (handshakes); packets that must be rewritten go through
    /// [`Engine::inbound`]. A malformed header is counted like there.
    pub fn observe_inbound(&mut self, pkt: &[u8], now: Instant) {
        self.stats.learned_in += 1;
        match parse_ipv6_tcp(pkt) {
            Ok(v) => {
                let wire = v.receiver_tuple();
                let f = v.tcp_header.flags;
                match v.dest_opts {
                    // The receiving kernel drops this packet (see
                    // `DestOptsHeader::deliverable`): nothing to learn.
                    Some(h) if !h.deliverable() => self.stats.malformed_options += 1,
                    Some(h) if h.prefix_syn().is_some() || h.prefix_ack().is_some() => {
                        self.handshake_options(&wire, &v.tcp_header, &h, now);
                    }
                    // A SYN+ACK without options answering our offer: a peer
                    // without PreserveTCP (the daemon does not queue the
                    // ACK of such a connection, so it is decided here).
                    _ if f.syn
                        && f.ack
                        && self.pairs.lookup_original(&wire).is_none()
                        && (self.config.kernel_options
                            || self
                                .pending
                                .get(&wire)
                                .is_some_and(|p| p.role == Role::Client)) =>
                    {
                        self.pending.remove(&wire);
                        self.stats.plain_peers += 1;
                    }
                    _ => {}
                }
            }
            Err(crate::packet::PacketError::Wire(_)) => self.stats.malformed_options += 1,
            Err(_) => self.stats.unparsed += 1,
        }
    }

    /// The kernel (preservetcpd's egress program) reports that the
    /// PREFIX_ACK echo of the client connection `t` (local = our address,
    /// the sender tuple of the segment that carried it) left. With
    /// [`EngineConfig::kernel_echo_events`] this enters the connection if
    /// its SYN+ACK with PREFIX_SYN was learned, or remembers the echo until
    /// it is (a pending handshake, subject to [`EngineConfig::max_pending`]
    /// and [`EngineConfig::pending_timeout`]). Ignored for a connection
    /// already entered (the echo may be reported twice when two segments
    /// raced for it), for a tuple with a server-side handshake pending, and
    /// without [`EngineConfig::kernel_options`].
    pub fn kernel_echoed(&mut self, t: &FourTuple, now: Instant) {
        self.stats.echo_events += 1;
        if !self.config.kernel_options || self.pairs.lookup_original(t).is_some() {
            return;
        }
        match self.pending.get_mut(t) {
            Some(p) if p.role == Role::Client => {
                if p.peer_syn.is_some() {
                    if let Some(p) = self.pending.remove(t) {
                        self.install(*t, &p.acked_locals, &p.peer_alts, p.isn, now);
                    }
                } else {
                    p.echoed = true;
                }
            }
            Some(_) => {}
            None => {
                if self.conns.len() >= self.config.max_connections {
                    self.stats.over_limit += 1;
                    return;
                }
                let p = Pending {
                    role: Role::Client,
                    created: now,
                    sent: Some(self.offer(t.local)),
                    peer_syn: None,
                    peer_alts: Vec::new(),
                    acked_locals: Vec::new(),
                    echoed: true,
                    isn: None,
                    listener: None,
                };
                self.add_pending(*t, p);
            }
        }
    }

    /// [`EngineConfig::kernel_options`]: the tuples (local = ours) of
    /// PREFIX_ACKs learned while no server handshake was pending for them
    /// (at most [`EngineConfig::max_pending`], forgotten after
    /// [`EngineConfig::pending_timeout`]). The kernel may still have
    /// answered the offer (its own record of the client's PREFIX_SYN
    /// outlives the engine's): the daemon looks each up and passes the
    /// result to [`Engine::kernel_answered`].
    pub fn unmatched_acks(&self) -> Vec<FourTuple> {
        self.unmatched.keys().copied().collect()
    }

    /// What the kernel answered on the connection `t` of an
    /// [`Engine::unmatched_acks`] entry: the client's PREFIX_SYN it echoed
    /// in its SYN+ACK (`None`: it has no record; the entry is dropped).
    /// The server handshake is rebuilt as if it had been pending — our
    /// offer is [`Engine::offer_for`] (what the kernel's offer map holds),
    /// the peer's alternatives are validated from `peer_syn` — and the
    /// connection entered with the PREFIX_ACK learned earlier.
    pub fn kernel_answered(
        &mut self,
        t: &FourTuple,
        peer_syn: Option<&PrefixOption>,
        now: Instant,
    ) {
        let Some((pa, _)) = self.unmatched.remove(t) else {
            return;
        };
        let Some(ps) = peer_syn else { return };
        if self.pairs.lookup_original(t).is_some() {
            return;
        }
        let val = validate_received(t.peer, ps, &self.config.limits);
        self.stats.prefixes.merge(&val.stats);
        let sent = self.offer(t.local);
        let acked = acknowledged_locals(t.local, &sent, &pa);
        self.stats.rebuilt += 1;
        self.install(*t, &acked, &val.addresses(), None, now);
    }

    /// A received packet (PREROUTING, wire tuple). With
    /// [`EngineConfig::check_peer_segments`] no segment moves a connection
    /// through this call (there is no socket to check it against): use
    /// [`Engine::inbound_checked`].
    pub fn inbound(&mut self, pkt: &[u8], now: Instant) -> Verdict {
        self.inbound_checked(pkt, now, &mut |_| None)
    }

    /// [`Engine::inbound`] for [`EngineConfig::check_peer_segments`]: a
    /// segment on another pair of a tracked connection than its current
    /// one (the peer moved, or went back) moves the connection only if the
    /// peer could have sent it: the ACK flag set, no RST, and, against the
    /// socket's state *before* the segment (`progress` of the original
    /// tuple, asked only for such segments; `None`: no socket, no answer),
    /// the acknowledgment number within [`snd_una`, `snd_nxt`] and the
    /// sequence number within [`FOLLOW_SEQ_WINDOW`] of `rcv_nxt`, the
    /// checks the tc ingress program makes. So a blind attacker who knows
    /// the tuple and one of the peer's other addresses must guess both
    /// 32-bit numbers. Other segments are still rewritten and delivered
    /// (the socket's own RFC 5961 checks apply) but move nothing
    /// ([`Stats::implausible_segments`]). A connection whose handshake the
    /// engine did not see (no initial sequence numbers) is never moved by
    /// its peer's segments.
    pub fn inbound_checked(
        &mut self,
        pkt: &[u8],
        now: Instant,
        progress: &mut dyn FnMut(&FourTuple) -> Option<SocketProgress>,
    ) -> Verdict {
        self.stats.packets_in += 1;
        if let Some(quoted) = crate::packet::too_big_quote(pkt) {
            return self.inbound_too_big(pkt, &quoted);
        }
        match parse_ipv6_tcp(pkt) {
            Ok(_) => self.inbound_parsed(pkt, now, progress),
            // A framing error or non-zero PadN data: the kernel drops the
            // packet itself; stripping the header would deliver it.
            Err(crate::packet::PacketError::Wire(
                WireError::PrefixTooLong(_) | WireError::PrefixOverrun { .. },
            )) => {
                self.stats.malformed_options += 1;
                match crate::packet::strip_dest_opts_framing(pkt) {
                    Some(stripped) => match self.inbound_parsed(&stripped, now, progress) {
                        Verdict::Accept => Verdict::Replace(stripped),
                        r => r,
                    },
                    None => Verdict::Accept,
                }
            }
            Err(crate::packet::PacketError::Wire(_)) => {
                self.stats.malformed_options += 1;
                Verdict::Accept
            }
            Err(_) => {
                self.stats.unparsed += 1;
                Verdict::Accept
            }
        }
    }

    /// An ICMPv6 Packet Too Big quoting `quoted` (this host's view). A
    /// router on a connection's new pair could not forward one of its
    /// segments; the kernel finds the socket by the quoted addresses, so
    /// they go back to the original tuple, and the socket learns the path
    /// MTU of the route it takes now (the fallback route of the new pair).
    /// Quotes of original tuples and of untracked segments pass unchanged.
    fn inbound_too_big(&mut self, pkt: &[u8], quoted: &FourTuple) -> Verdict {
        let Some(original) = self.pairs.lookup_wire(quoted).map(|m| m.original) else {
            return Verdict::Accept;
        };
        if *quoted == original {
            return Verdict::Accept;
        }
        let mut buf = pkt.to_vec();
        match crate::packet::rewrite_too_big_quote(&mut buf, original.local, original.peer) {
            Ok(()) => {
                self.stats.icmp_translated += 1;
                Verdict::Replace(buf)
            }
            Err(_) => Verdict::Accept,
        }
    }

    fn inbound_parsed(
        &mut self,
        pkt: &[u8],
        now: Instant,
        progress: &mut dyn FnMut(&FourTuple) -> Option<SocketProgress>,
    ) -> Verdict {
        let Ok((wire, tcp, opts)) =
            parse_ipv6_tcp(pkt).map(|v| (v.receiver_tuple(), v.tcp_header, v.dest_opts))
        else {
            self.stats.unparsed += 1;
            return Verdict::Accept;
        };
        let mut out: Option<Vec<u8>> = None;
        if opts.as_ref().is_some_and(|h| !h.deliverable()) {
            // The kernel drops this packet itself: nothing to learn, and
            // nothing to strip (stripping would make it deliverable).
            self.stats.malformed_options += 1;
        } else if let Some(h) = opts
            && (h.prefix_syn().is_some() || h.prefix_ack().is_some())
        {
            self.handshake_options(&wire, &tcp, &h, now);
            if only_ours(&h) {
                out = strip_dest_opts(pkt).ok().map(|(p, _)| p);
            }
        }
        if let Some(m) = self.pairs.lookup_wire(&wire) {
            if !m.on_current && self.peer_could_send(m.id, &m.original, &tcp, progress) {
                self.feed(m.id, PolicyEvent::PeerSegment(wire.pair()), now);
            }
            if wire != m.original {
                let mut buf = out.unwrap_or_else(|| pkt.to_vec());
                if rewrite_addresses_v6(&mut buf, m.original.peer, m.original.local).is_ok() {
                    self.stats.rewritten_in += 1;
                }
                return Verdict::Replace(buf);
            }
        }
        match out {
            Some(p) => Verdict::Replace(p),
            None => Verdict::Accept,
        }
    }

    /// Whether the segment `tcp` on another pair of connection `id` may
    /// move it (see [`Engine::inbound_checked`]).
    fn peer_could_send(
        &mut self,
        id: ConnId,
        original: &FourTuple,
        tcp: &TcpHeader,
        progress: &mut dyn FnMut(&FourTuple) -> Option<SocketProgress>,
    ) -> bool {
        if !self.config.check_peer_segments {
            return true;
        }
        let ok = tcp.flags.ack
            && !tcp.flags.rst
            && self
                .conns
                .get(&id)
                .and_then(|c| c.isn)
                .zip(progress(original))
                .is_some_and(|(isn, p)| plausible(isn, &p, tcp.seq, tcp.ack));
        if !ok {
            self.stats.implausible_segments += 1;
        }
        ok
    }

    fn handshake_options(
        &mut self,
        wire: &FourTuple,
        tcp: &TcpHeader,
        h: &DestOptsHeader,
        now: Instant,
    ) {
        let (syn, ack) = (tcp.flags.syn, tcp.flags.ack);
        let limits = self.config.limits;
        if syn && !ack {
            let Some(ps) = h.prefix_syn() else { return };
            if self.pairs.lookup_original(wire).is_some() {
                return;
            }
            // The first offer of a handshake is kept: a retransmitted SYN
            // carries the same option, and anything else on the tuple
            // while the handshake lasts is not what the kernel answers.
            if self
                .pending
                .get(wire)
                .is_some_and(|p| p.role == Role::Server && p.peer_syn.is_some())
            {
                self.stats.duplicate_offers += 1;
                return;
            }
            let val = validate_received(wire.peer, ps, &limits);
            self.stats.prefixes.merge(&val.stats);
            let sent = self.pending.get(wire).and_then(|p| p.sent.clone());
            let sent = match sent {
                None if self.config.kernel_options => Some(self.offer(wire.local)),
                s => s,
            };
            let p = Pending {
                role: Role::Server,
                created: now,
                sent,
                peer_syn: Some(val.echo()),
                peer_alts: val.addresses(),
                acked_locals: Vec::new(),
                echoed: false,
                isn: None,
                listener: None,
            };
            self.add_pending(*wire, p);
        } else if syn && ack {
            // A retransmitted SYN+ACK (our ACK was lost) of a connection
            // already entered: nothing new to learn.
            if self.pairs.lookup_original(wire).is_some() {
                return;
            }
            if self.config.kernel_options
                && !self
                    .pending
                    .get(wire)
                    .is_some_and(|p| p.role == Role::Client)
            {
                let p = Pending {
                    role: Role::Client,
                    created: now,
                    sent: Some(self.offer(wire.local)),
                    peer_syn: None,
                    peer_alts: Vec::new(),
                    acked_locals: Vec::new(),
                    echoed: false,
                    isn: None,
                    listener: None,
                };
                if !self.add_pending(*wire, p) {
                    return;
                }
            }
            let Some(p) = self
                .pending
                .get_mut(wire)
                .filter(|p| p.role == Role::Client)
            else {
                return;
            };
            p.isn.get_or_insert(Isn {
                local: tcp.ack.wrapping_sub(1),
                peer: tcp.seq,
            });
            if p.peer_syn.is_some() {
                // A retransmitted SYN+ACK: the first one's options stay.
                self.stats.duplicate_offers += 1;
            } else {
                if let Some(ps) = h.prefix_syn() {
                    let val = validate_received(wire.peer, ps, &limits);
                    self.stats.prefixes.merge(&val.stats);
                    p.peer_alts = val.addresses();
                    p.peer_syn = Some(val.echo());
                }
                if let (Some(pa), Some(sent)) = (h.prefix_ack(), p.sent.as_ref()) {
                    p.acked_locals = acknowledged_locals(wire.local, sent, pa);
                }
            }
            // With echo events, a PREFIX_SYN waits for the kernel's report
            // that the echo left (unless it came first).
            let waits = self.config.kernel_echo_events && p.peer_syn.is_some() && !p.echoed;
            if self.config.kernel_options
                && !waits
                && let Some(p) = self.pending.remove(wire)
            {
                // The kernel echoes the PREFIX_SYN in our ACK: the
                // connection is set up as the ACK leaves.
                if p.peer_syn.is_some() {
                    self.install(*wire, &p.acked_locals, &p.peer_alts, p.isn, now);
                } else {
                    self.stats.plain_peers += 1;
                }
            }
        } else if ack {
            let Some(p) = self.pending.get(wire).filter(|p| p.role == Role::Server) else {
                // The kernel answered an offer the engine did not keep
                // (max_pending reached, the SYN's copy lost): the daemon
                // can rebuild it from the kernel's record.
                if self.config.kernel_options
                    && let Some(pa) = h.prefix_ack()
                    && !self.pending.contains_key(wire)
                    && self.pairs.lookup_original(wire).is_none()
                    && (self.unmatched.contains_key(wire)
                        || self.unmatched.len() < self.config.max_pending)
                {
                    self.unmatched.insert(*wire, (pa.clone(), now));
                }
                return;
            };
            let (Some(pa), Some(sent)) = (h.prefix_ack(), p.sent.as_ref()) else {
                return;
            };
            let acked = acknowledged_locals(wire.local, sent, pa);
            let (peers, isn) = (p.peer_alts.clone(), p.isn);
            self.pending.remove(wire);
            self.install(*wire, &acked, &peers, isn, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{set_tcp_checksum_v6, verify_tcp_checksum_v6};
    use crate::packet::build_ipv6_tcp;
    use crate::wire::Prefix;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const RST: u8 = 0x04;

    fn pkt(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        pkt_seq(src, dst, (sport, dport), flags, (1, 2))
    }

    /// [`pkt`] with the given sequence and acknowledgment numbers.
    fn pkt_seq(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        (sport, dport): (u16, u16),
        flags: u8,
        (seq, ack): (u32, u32),
    ) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&seq.to_be_bytes());
        t.extend_from_slice(&ack.to_be_bytes());
        t.extend_from_slice(&[0x50, flags, 0x20, 0, 0, 0, 0, 0]);
        t.extend_from_slice(b"data");
        set_tcp_checksum_v6(src, dst, &mut t);
        build_ipv6_tcp(src, dst, 64, &t).unwrap()
    }

    fn replaced(v: Verdict) -> Vec<u8> {
        match v {
            Verdict::Replace(p) => p,
            Verdict::Accept => panic!("expected a rewritten packet"),
        }
    }

    fn locals(addrs: &[Ipv6Addr]) -> Vec<LocalAddr> {
        addrs
            .iter()
            .map(|x| LocalAddr {
                addr: LocalAddress {
                    addr: *x,
                    prefix_len: 64,
                },
                up: true,
            })
            .collect()
    }

    struct World {
        c: Engine,
        s: Engine,
        c0: Ipv6Addr,
        c1: Ipv6Addr,
        s0: Ipv6Addr,
        s1: Ipv6Addr,
        t0: Instant,
    }

    /// Client and server engines with two links each (client addresses
    /// c0, c1; server s0, s1), no connection yet.
    fn two_engines() -> World {
        two_engines_with(EngineConfig::default())
    }

    fn two_engines_with(config: EngineConfig) -> World {
        let (c0, c1) = (a("2001:db8:1:0::1"), a("2001:db8:1:1::1"));
        let (s0, s1) = (a("2001:db8:1:0::2"), a("2001:db8:1:1::2"));
        let t0 = Instant::now();
        let mut c = Engine::new(config);
        let mut s = Engine::new(config);
        c.set_locals(locals(&[c0, c1]), t0);
        s.set_locals(locals(&[s0, s1]), t0);
        World {
            c,
            s,
            c0,
            c1,
            s0,
            s1,
            t0,
        }
    }

    /// [`two_engines`] with the handshake run through both engines (the
    /// kernel's packets in, wire packets across).
    fn handshake() -> World {
        handshake_with(EngineConfig::default())
    }

    fn handshake_with(config: EngineConfig) -> World {
        let World {
            mut c,
            mut s,
            c0,
            c1,
            s0,
            s1,
            t0,
        } = two_engines_with(config);
        let syn = replaced(c.outbound(&pkt(c0, s0, 40000, 5001, SYN), t0));
        assert!(parse_ipv6_tcp(&syn).unwrap().dest_opts.is_some());
        let syn_k = replaced(s.inbound(&syn, t0));
        assert_eq!(
            syn_k,
            pkt(c0, s0, 40000, 5001, SYN),
            "stripped for the kernel"
        );
        let sa = replaced(s.outbound(&pkt(s0, c0, 5001, 40000, SYN | ACK), t0));
        let h = parse_ipv6_tcp(&sa).unwrap().dest_opts.unwrap();
        assert!(h.prefix_syn().is_some() && h.prefix_ack().is_some());
        let sa_k = replaced(c.inbound(&sa, t0));
        assert_eq!(sa_k, pkt(s0, c0, 5001, 40000, SYN | ACK));
        let ack = replaced(c.outbound(&pkt(c0, s0, 40000, 5001, ACK), t0));
        let ack_k = replaced(s.inbound(&ack, t0));
        assert_eq!(ack_k, pkt(c0, s0, 40000, 5001, ACK));
        World {
            c,
            s,
            c0,
            c1,
            s0,
            s1,
            t0,
        }
    }

    /// The same handshake with the incoming packets only observed (the
    /// daemon's NFLOG path): both sides learn, and the outgoing packets
    /// still carry the options.
    #[test]
    fn observed_handshake_learns_both_sides() {
        let World {
            mut c,
            mut s,
            c0,
            c1,
            s0,
            s1,
            t0,
        } = two_engines();
        let k_syn = pkt(c0, s0, 40000, 5001, SYN);
        assert!(!c.awaits_learning(&k_syn), "a SYN needs nothing learned");
        let syn = replaced(c.outbound(&k_syn, t0));
        let k_sa = pkt(s0, c0, 5001, 40000, SYN | ACK);
        assert!(s.awaits_learning(&k_sa), "the SYN+ACK needs the offer");
        s.observe_inbound(&syn, t0);
        assert!(!s.awaits_learning(&k_sa));
        let sa = replaced(s.outbound(&k_sa, t0));
        let h = parse_ipv6_tcp(&sa).unwrap().dest_opts.unwrap();
        assert!(h.prefix_syn().is_some() && h.prefix_ack().is_some());
        let k_ack = pkt(c0, s0, 40000, 5001, ACK);
        assert!(c.awaits_learning(&k_ack), "the ACK needs the SYN+ACK");
        c.observe_inbound(&sa, t0);
        assert!(!c.awaits_learning(&k_ack));
        let ack = replaced(c.outbound(&k_ack, t0));
        assert!(!c.awaits_learning(&k_ack), "entered: nothing pending");
        let h = parse_ipv6_tcp(&ack).unwrap().dest_opts.unwrap();
        assert!(h.prefix_ack().is_some() && h.prefix_syn().is_none());
        assert!(s.connections().is_empty(), "entered on the PREFIX_ACK");
        s.observe_inbound(&ack, t0);
        let (cc, sc) = (c.connections(), s.connections());
        assert_eq!((cc.len(), sc.len()), (1, 1));
        assert_eq!(cc[0].peers, vec![s0, s1]);
        assert_eq!(sc[0].peers, vec![c0, c1]);
        assert_eq!(s.stats().learned_in, 2);
        // A malformed header is counted, nothing is learned from it.
        let mut bad = pkt(c0, s0, 40001, 5001, SYN);
        let hdr = [6u8, 0, 0x0B, 4, 200, 1, 2, 3];
        bad.splice(40..40, hdr);
        bad[6] = 60;
        let plen = u16::from_be_bytes([bad[4], bad[5]]) + 8;
        bad[4..6].copy_from_slice(&plen.to_be_bytes());
        s.observe_inbound(&bad, t0);
        assert_eq!(s.stats().malformed_options, 1);
        assert!(
            s.outbound(&pkt(s0, c0, 5001, 40001, SYN | ACK), t0) == Verdict::Accept,
            "no answer to a malformed offer"
        );
        // A plain SYN+ACK to our offer: a peer without PreserveTCP.
        let _ = replaced(c.outbound(&pkt(c0, s0, 40002, 5001, SYN), t0));
        c.observe_inbound(&pkt(s0, c0, 5001, 40002, SYN | ACK), t0);
        assert_eq!(c.stats().plain_peers, 1);
        assert_eq!(
            c.outbound(&pkt(c0, s0, 40002, 5001, ACK), t0),
            Verdict::Accept
        );
        assert_eq!(c.connections().len(), 1);
    }

    /// With [`EngineConfig::pair_actions`] every entered connection is
    /// reported with its wire tuples and every forgotten one too; an
    /// alternative pair's segment given to [`Engine::inbound`] (what the
    /// kernel reports after rewriting it) makes the policy follow.
    #[test]
    fn pair_actions_report_entered_and_forgotten_connections() {
        let World {
            mut c,
            mut s,
            c0,
            c1,
            s0,
            s1,
            t0,
        } = two_engines();
        let kernel = EngineConfig {
            kernel_options: true,
            pair_actions: true,
            policy: PolicyConfig {
                follow_hold: Duration::ZERO,
                ..PolicyConfig::default()
            },
            ..EngineConfig::default()
        };
        c.config = kernel;
        s.config = kernel;
        let with = |p: Vec<u8>, syn: Option<PrefixOption>, ack: Option<PrefixOption>| {
            let h = DestOptsHeader::with_prefixes(IPPROTO_TCP, syn, ack).unwrap();
            insert_dest_opts(&p, &h).unwrap()
        };
        let c_offer = c.offer_for(c0);
        s.observe_inbound(
            &with(pkt(c0, s0, 40000, 5001, SYN), Some(c_offer.clone()), None),
            t0,
        );
        assert!(s.take_actions().is_empty(), "nothing entered yet");
        let s_offer = s.offer_for(s0);
        s.observe_inbound(
            &with(pkt(c0, s0, 40000, 5001, ACK), None, Some(s_offer)),
            t0,
        );
        let orig = FourTuple {
            local: s0,
            local_port: 5001,
            peer: c0,
            peer_port: 40000,
        };
        assert_eq!(s.take_actions(), vec![Action::Tracked(orig)]);
        let mut wires = s.wire_tuples(&orig);
        wires.sort_by_key(|t| (t.local, t.peer));
        let mut expect: Vec<FourTuple> = [(s0, c0), (s0, c1), (s1, c0), (s1, c1)]
            .iter()
            .map(|(l, p)| FourTuple {
                local: *l,
                peer: *p,
                ..orig
            })
            .collect();
        expect.sort_by_key(|t| (t.local, t.peer));
        assert_eq!(wires, expect);
        assert!(
            s.wire_tuples(&FourTuple {
                local_port: 1,
                ..orig
            })
            .is_empty()
        );
        assert_eq!(s.follow_hold_until(&orig), None, "never switched");
        // The client's segment on (c1 -> s1), reported by the kernel: the
        // server follows.
        let _ = s.inbound(&pkt(c1, s1, 40000, 5001, ACK), t0 + Duration::from_secs(1));
        let a = s.take_actions();
        assert!(a.contains(&Action::Redirect(orig)), "{a:?}");
        assert!(a.contains(&Action::Moved(
            orig,
            AddrPair {
                local: s1,
                peer: c1
            }
        )));
        assert_eq!(
            s.follow_hold_until(&orig),
            Some(t0 + Duration::from_secs(1)),
            "switched at t0 + 1 s, no hold configured"
        );
        // Its socket is gone: forgotten and reported.
        s.socket_gone(&orig, t0 + Duration::from_secs(2));
        assert_eq!(
            s.take_actions(),
            vec![Action::Unredirect(orig), Action::Untracked(orig)]
        );
        assert!(s.wire_tuples(&orig).is_empty());
        // Without the flag, no such actions (the default).
        c.config.pair_actions = false;
        c.observe_inbound(
            &with(
                pkt(s0, c0, 5001, 40009, SYN | ACK),
                Some(s.offer_for(s0)),
                None,
            ),
            t0,
        );
        assert_eq!(c.connections().len(), 1);
        assert!(c.take_actions().is_empty());
    }

    /// With [`EngineConfig::kernel_options`] the outgoing handshake
    /// packets never reach the engine: the kernel inserts exactly what
    /// [`Engine::offer_for`] and the echo give (built here with the same
    /// codec), and both sides learn from the incoming packets alone.
    #[test]
    fn kernel_options_learn_from_incoming_packets_only() {
        let World {
            mut c,
            mut s,
            c0,
            c1,
            s0,
            s1,
            t0,
        } = two_engines();
        let kernel = EngineConfig {
            kernel_options: true,
            ..EngineConfig::default()
        };
        c.config = kernel;
        s.config = kernel;
        let with = |p: Vec<u8>, syn: Option<PrefixOption>, ack: Option<PrefixOption>| {
            let h = DestOptsHeader::with_prefixes(IPPROTO_TCP, syn, ack).unwrap();
            insert_dest_opts(&p, &h).unwrap()
        };
        // What the egress program sends, from the offer map.
        let c_offer = c.offer_for(c0);
        let syn = with(pkt(c0, s0, 40000, 5001, SYN), Some(c_offer.clone()), None);
        s.observe_inbound(&syn, t0);
        let s_offer = s.offer_for(s0);
        let sa = with(
            pkt(s0, c0, 5001, 40000, SYN | ACK),
            Some(s_offer.clone()),
            Some(c_offer.clone()),
        );
        assert!(c.connections().is_empty());
        c.observe_inbound(&sa, t0);
        let cc = c.connections();
        assert_eq!(cc.len(), 1, "the client enters on the SYN+ACK");
        assert_eq!(cc[0].peers, vec![s0, s1]);
        assert_eq!(cc[0].locals, vec![c0, c1], "our offer was acknowledged");
        assert!(
            s.connections().is_empty(),
            "the server waits for PREFIX_ACK"
        );
        let ack = with(pkt(c0, s0, 40000, 5001, ACK), None, Some(s_offer));
        s.observe_inbound(&ack, t0);
        let sc = s.connections();
        assert_eq!(sc.len(), 1);
        assert_eq!(sc[0].peers, vec![c0, c1]);
        assert_eq!(sc[0].locals, vec![s0, s1], "our offer was acknowledged");
        assert_eq!(
            (c.stats().packets_out, s.stats().packets_out),
            (0, 0),
            "nothing went through outbound()"
        );
        // A plain SYN+ACK (the daemon passes only answers to our offers).
        c.observe_inbound(&pkt(s0, c0, 5001, 40002, SYN | ACK), t0);
        assert_eq!(c.stats().plain_peers, 1);
        // A SYN+ACK with PREFIX_SYN but no PREFIX_ACK still enters (the
        // peer offered; it did not acknowledge ours).
        let sa = with(
            pkt(s0, c0, 5001, 40003, SYN | ACK),
            Some(s.offer_for(s0)),
            None,
        );
        c.observe_inbound(&sa, t0);
        let cc = c.connections();
        assert_eq!(cc.len(), 2);
        let n = cc.iter().find(|x| x.original.local_port == 40003).unwrap();
        assert_eq!(n.locals, vec![c0], "none of ours acknowledged");
        assert!(c.pending.is_empty(), "nothing left pending");
    }

    /// Client and server engines in kernel mode (with or without echo
    /// events), the packets the kernel's programs send, and the client's
    /// tuple for a port.
    fn kernel_world(echo_events: bool) -> (World, EngineConfig) {
        let mut w = two_engines();
        let kernel = EngineConfig {
            kernel_options: true,
            kernel_echo_events: echo_events,
            ..EngineConfig::default()
        };
        w.c.config = kernel;
        w.s.config = kernel;
        (w, kernel)
    }

    fn with_opts(p: Vec<u8>, syn: Option<PrefixOption>, ack: Option<PrefixOption>) -> Vec<u8> {
        let h = DestOptsHeader::with_prefixes(IPPROTO_TCP, syn, ack).unwrap();
        insert_dest_opts(&p, &h).unwrap()
    }

    /// The server's answer to the client's offer on client port `port`.
    fn synack(w: &World, port: u16) -> Vec<u8> {
        with_opts(
            pkt(w.s0, w.c0, 5001, port, SYN | ACK),
            Some(w.s.offer_for(w.s0)),
            Some(w.c.offer_for(w.c0)),
        )
    }

    fn client_tuple(w: &World, port: u16) -> FourTuple {
        FourTuple {
            local: w.c0,
            local_port: port,
            peer: w.s0,
            peer_port: 5001,
        }
    }

    /// A SYN+ACK retransmitted because our ACK was lost is learned again
    /// after the connection was entered: it must not be entered twice
    /// (the pair table would refuse it as a conflict).
    #[test]
    fn retransmitted_synack_is_ignored_once_entered() {
        let (mut w, _) = kernel_world(false);
        let sa = synack(&w, 40000);
        let t0 = w.t0;
        w.c.observe_inbound(&sa, t0);
        assert_eq!(w.c.connections().len(), 1);
        w.c.observe_inbound(&sa, t0);
        w.c.observe_inbound(&pkt(w.s0, w.c0, 5001, 40000, SYN | ACK), t0);
        assert_eq!(w.c.connections().len(), 1);
        assert_eq!(w.c.stats().table_errors, 0, "no second install");
        assert_eq!(w.c.stats().connections, 1);
        assert_eq!(w.c.stats().plain_peers, 0, "not taken for a plain peer");
        assert!(w.c.pending.is_empty());
    }

    /// With [`EngineConfig::kernel_echo_events`] the client enters a
    /// connection only when the kernel reports its echo, whichever of the
    /// SYN+ACK and the report is learned first; a SYN+ACK whose echo never
    /// left expires, and a duplicate report changes nothing.
    #[test]
    fn kernel_echo_events_decide_the_client_side() {
        let (mut w, kernel) = kernel_world(true);
        let t0 = w.t0;
        // SYN+ACK first: pending until the echo is reported.
        let sa = synack(&w, 40000);
        w.c.observe_inbound(&sa, t0);
        assert!(w.c.connections().is_empty(), "no echo reported yet");
        w.c.kernel_echoed(&client_tuple(&w, 40000), t0);
        let cc = w.c.connections();
        assert_eq!(cc.len(), 1);
        assert_eq!(cc[0].peers, vec![w.s0, w.s1]);
        assert_eq!(cc[0].locals, vec![w.c0, w.c1], "our offer acknowledged");
        // The same echo reported twice (two segments raced for it).
        w.c.kernel_echoed(&client_tuple(&w, 40000), t0);
        assert_eq!(w.c.connections().len(), 1);
        assert_eq!(w.c.stats().table_errors, 0);
        // The report first, then the SYN+ACK.
        w.c.kernel_echoed(&client_tuple(&w, 40001), t0);
        assert_eq!(w.c.connections().len(), 1);
        let sa = synack(&w, 40001);
        w.c.observe_inbound(&sa, t0);
        let cc = w.c.connections();
        assert_eq!(cc.len(), 2);
        let n = cc.iter().find(|x| x.original.local_port == 40001).unwrap();
        assert_eq!(n.peers, vec![w.s0, w.s1]);
        assert_eq!(n.locals, vec![w.c0, w.c1]);
        // A SYN+ACK whose echo the kernel gave up on: never entered.
        let sa = synack(&w, 40002);
        w.c.observe_inbound(&sa, t0);
        w.c.expire(t0 + kernel.pending_timeout);
        assert_eq!(w.c.stats().expired, 1);
        assert_eq!(w.c.connections().len(), 2);
        // A report for a plain answer (cannot happen, the kernel echoes
        // only a PREFIX_SYN) does not make the connection ours.
        w.c.kernel_echoed(&client_tuple(&w, 40003), t0);
        w.c.observe_inbound(&pkt(w.s0, w.c0, 5001, 40003, SYN | ACK), t0);
        assert_eq!(w.c.stats().plain_peers, 1);
        assert_eq!(w.c.connections().len(), 2);
        assert!(w.c.pending.is_empty());
        assert_eq!(w.c.stats().echo_events, 4);
        // The server side is unchanged: it enters on the PREFIX_ACK.
        let syn = with_opts(
            pkt(w.c0, w.s0, 40000, 5001, SYN),
            Some(w.c.offer_for(w.c0)),
            None,
        );
        w.s.observe_inbound(&syn, t0);
        let ack = with_opts(
            pkt(w.c0, w.s0, 40000, 5001, ACK),
            None,
            Some(w.s.offer_for(w.s0)),
        );
        w.s.observe_inbound(&ack, t0);
        assert_eq!(w.s.connections().len(), 1);
    }

    /// Reports are ignored without kernel options, and a report does not
    /// replace a server-side handshake on the same tuple.
    #[test]
    fn kernel_echo_reports_need_kernel_options() {
        let mut w = two_engines();
        let t0 = w.t0;
        w.c.kernel_echoed(&client_tuple(&w, 40000), t0);
        assert!(w.c.pending.is_empty());
        let (mut w, _) = kernel_world(true);
        let syn = with_opts(
            pkt(w.s0, w.c0, 5001, 40000, SYN),
            Some(w.s.offer_for(w.s0)),
            None,
        );
        w.c.observe_inbound(&syn, t0);
        w.c.kernel_echoed(&client_tuple(&w, 40000), t0);
        let p = w.c.pending.get(&client_tuple(&w, 40000)).unwrap();
        assert_eq!(p.role, Role::Server);
        assert!(!p.echoed);
    }

    /// The server engine lost its pending handshake (max_pending full)
    /// while the kernel answered the offer: the PREFIX_ACK is kept as
    /// unmatched, and the kernel's record of the client's PREFIX_SYN
    /// rebuilds it; without a record nothing is entered.
    #[test]
    fn server_handshake_is_rebuilt_from_the_kernel() {
        let (mut w, kernel) = kernel_world(false);
        let t0 = w.t0;
        w.s.config.max_pending = 0;
        let c_offer = w.c.offer_for(w.c0);
        let syn = with_opts(
            pkt(w.c0, w.s0, 40000, 5001, SYN),
            Some(c_offer.clone()),
            None,
        );
        w.s.observe_inbound(&syn, t0);
        assert_eq!(w.s.stats().over_limit, 1, "not kept");
        let ack = with_opts(
            pkt(w.c0, w.s0, 40000, 5001, ACK),
            None,
            Some(w.s.offer_for(w.s0)),
        );
        w.s.observe_inbound(&ack, t0);
        assert!(w.s.connections().is_empty());
        let server = FourTuple {
            local: w.s0,
            local_port: 5001,
            peer: w.c0,
            peer_port: 40000,
        };
        w.s.config.max_pending = kernel.max_pending;
        w.s.observe_inbound(&ack, t0);
        assert_eq!(w.s.unmatched_acks(), vec![server]);
        w.s.kernel_answered(&server, Some(&c_offer), t0);
        let sc = w.s.connections();
        assert_eq!(sc.len(), 1);
        assert_eq!(sc[0].peers, vec![w.c0, w.c1]);
        assert_eq!(sc[0].locals, vec![w.s0, w.s1], "our offer acknowledged");
        assert_eq!(w.s.stats().rebuilt, 1);
        assert!(w.s.unmatched_acks().is_empty());
        // Entered: a later PREFIX_ACK is not unmatched.
        w.s.observe_inbound(&ack, t0);
        assert!(w.s.unmatched_acks().is_empty());
        // No kernel record: dropped. Unmatched entries also expire.
        let ack2 = with_opts(
            pkt(w.c0, w.s0, 40001, 5001, ACK),
            None,
            Some(w.s.offer_for(w.s0)),
        );
        w.s.observe_inbound(&ack2, t0);
        let t2 = w.s.unmatched_acks()[0];
        w.s.kernel_answered(&t2, None, t0);
        assert!(w.s.unmatched_acks().is_empty());
        assert_eq!(w.s.connections().len(), 1);
        w.s.observe_inbound(&ack2, t0);
        w.s.expire(t0 + kernel.pending_timeout);
        assert!(w.s.unmatched_acks().is_empty());
        // Without kernel options nothing is kept.
        let mut plain = two_engines();
        plain.s.observe_inbound(&ack2, t0);
        assert!(plain.s.unmatched_acks().is_empty());
    }

    #[test]
    fn handshake_learns_both_sides() {
        let w = handshake();
        let cc = w.c.connections();
        let sc = w.s.connections();
        assert_eq!(cc.len(), 1);
        assert_eq!(sc.len(), 1);
        assert_eq!(cc[0].locals, vec![w.c0, w.c1]);
        assert_eq!(cc[0].peers, vec![w.s0, w.s1]);
        assert_eq!(sc[0].locals, vec![w.s0, w.s1]);
        assert_eq!(sc[0].peers, vec![w.c0, w.c1]);
        assert_eq!(w.c.stats().syn_offers, 1);
        assert_eq!(w.s.stats().synack_answers, 1);
        // A socket list taken before the connection was entered says nothing.
        let orig = FourTuple {
            local: w.c0,
            local_port: 40000,
            peer: w.s0,
            peer_port: 5001,
        };
        let mut c = w.c;
        c.socket_gone(&orig, w.t0 - Duration::from_millis(1));
        assert_eq!(c.connections().len(), 1);
        c.socket_gone(&orig, w.t0);
        assert!(c.connections().is_empty());
        assert_eq!(c.stats().closed, 1);
    }

    #[test]
    fn link_down_moves_and_rewrites_both_ways() {
        let mut w = handshake();
        let t1 = w.t0 + Duration::from_secs(1);
        // Client link 0 goes down: source and (routable) destination move.
        let mut l = locals(&[w.c0, w.c1]);
        l[0].up = false;
        w.c.set_locals(l, t1);
        let orig = FourTuple {
            local: w.c0,
            local_port: 40000,
            peer: w.s0,
            peer_port: 5001,
        };
        assert_eq!(
            w.c.take_actions(),
            vec![
                Action::Redirect(orig),
                Action::Moved(
                    orig,
                    AddrPair {
                        local: w.c1,
                        peer: w.s1
                    }
                )
            ]
        );
        let out = replaced(w.c.outbound(&pkt(w.c0, w.s0, 40000, 5001, ACK), t1));
        let v = parse_ipv6_tcp(&out).unwrap();
        assert_eq!((v.src, v.dst), (w.c1, w.s1));
        assert!(verify_tcp_checksum_v6(v.src, v.dst, v.tcp));
        // The server sees it on another pair: rewritten back, and follows.
        let k = replaced(w.s.inbound(&out, t1));
        assert_eq!(k, pkt(w.c0, w.s0, 40000, 5001, ACK));
        assert_eq!(w.s.connections()[0].current.peer, w.c1);
        assert_eq!(
            w.s.connections()[0].last_reason.as_deref(),
            Some("peer_moved")
        );
        assert_eq!(w.s.take_actions().len(), 2);
        // Server's answer leaves on the new pair and arrives as the original.
        let back = replaced(w.s.outbound(&pkt(w.s0, w.c0, 5001, 40000, ACK), t1));
        let kb = replaced(w.c.inbound(&back, t1));
        assert_eq!(kb, pkt(w.s0, w.c0, 5001, 40000, ACK));
    }

    #[test]
    fn peer_going_back_to_the_original_pair_is_followed() {
        let mut w = handshake();
        let orig = FourTuple {
            local: w.s0,
            local_port: 5001,
            peer: w.c0,
            peer_port: 40000,
        };
        // The client moved: the server follows to the other pair.
        let t1 = w.t0 + Duration::from_secs(1);
        let moved = pkt(w.c1, w.s1, 40000, 5001, ACK);
        let _ = w.s.inbound(&moved, t1);
        assert_eq!(w.s.current_pair(&orig).unwrap().local, w.s1);
        let _ = w.s.take_actions();
        // A late segment on the original pair within the hold: delivered
        // unchanged, not followed.
        let back = pkt(w.c0, w.s0, 40000, 5001, ACK);
        assert_eq!(w.s.inbound(&back, t1), Verdict::Accept);
        assert_eq!(w.s.current_pair(&orig).unwrap().local, w.s1);
        // The client really went back: followed, rules for the moved
        // connection dropped.
        let t2 = t1 + crate::policy::DEFAULT_FOLLOW_HOLD;
        assert_eq!(w.s.inbound(&back, t2), Verdict::Accept);
        assert_eq!(w.s.current_pair(&orig), Some(orig.pair()));
        assert_eq!(w.s.take_actions(), vec![Action::Unredirect(orig)]);
        assert_eq!(
            w.s.connections()[0].last_reason.as_deref(),
            Some("peer_moved")
        );
    }

    /// preservetcpd's NFQUEUE mode: a segment on another pair moves the
    /// connection only with numbers its peer could have sent, checked
    /// against the socket's state; everything else is still rewritten and
    /// delivered, and counted.
    #[test]
    fn checked_peer_segments_need_plausible_numbers() {
        let mut w = handshake_with(EngineConfig {
            check_peer_segments: true,
            ..EngineConfig::default()
        });
        let orig = FourTuple {
            local: w.s0,
            local_port: 5001,
            peer: w.c0,
            peer_port: 40000,
        };
        // The handshake's packets all carry seq 1, ack 2: the server's
        // ISS and IRS are both 1. The socket has received 1,000 bytes and
        // sent 800, 500 of them acknowledged: rcv_nxt 1,002, snd_una 502,
        // snd_nxt at most 803 (with a FIN).
        let state = SocketProgress {
            bytes_acked: 500,
            bytes_received: 1000,
            bytes_sent: 800,
        };
        let mut asked = Vec::new();
        let mut oracle = |t: &FourTuple| {
            asked.push(*t);
            Some(state)
        };
        let t1 = w.t0 + Duration::from_secs(1);
        let on_alt = |flags, nums| pkt_seq(w.c1, w.s1, (40000, 5001), flags, nums);
        let kernel = |flags, nums| pkt_seq(w.c0, w.s0, (40000, 5001), flags, nums);
        let window = FOLLOW_SEQ_WINDOW;
        for (flags, (seq, ack)) in [
            (ACK, (1002, 501)),                             // ack before snd_una
            (ACK, (1002, 804)),                             // ack beyond snd_nxt
            (ACK, (1002 + window + 1, 700)),                // seq far ahead
            (ACK, (1002u32.wrapping_sub(window + 1), 700)), // seq far behind
            (RST | ACK, (1002, 700)),                       // a reset never moves
            (0x08, (1002, 700)),                            // no ACK flag
        ] {
            let seg = on_alt(flags, (seq, ack));
            assert_eq!(
                replaced(w.s.inbound_checked(&seg, t1, &mut oracle)),
                kernel(flags, (seq, ack)),
                "rewritten and delivered all the same"
            );
            assert_eq!(w.s.current_pair(&orig), Some(orig.pair()), "{seq} {ack}");
        }
        // No answer about the socket, or no way to ask: nothing moves.
        let good = on_alt(ACK, (1002u32.wrapping_sub(4096), 700));
        let _ = w.s.inbound_checked(&good, t1, &mut |_| None);
        let _ = w.s.inbound(&good, t1);
        assert_eq!(w.s.current_pair(&orig), Some(orig.pair()));
        assert_eq!(w.s.stats().implausible_segments, 8);
        // Numbers at both edges of the windows: followed.
        let edge = on_alt(ACK, (1002u32.wrapping_sub(window), 803));
        let _ = w.s.inbound_checked(&edge, t1, &mut oracle);
        assert_eq!(w.s.current_pair(&orig).unwrap().local, w.s1);
        assert_eq!(w.s.stats().implausible_segments, 8);
        // The socket was asked about by its original tuple, only for
        // segments off the current pair (two of the six were settled by
        // their flags first).
        assert!(asked.iter().all(|t| *t == orig));
        assert_eq!(asked.len(), 5);
        let now_current = on_alt(ACK, (5, 5));
        let _ =
            w.s.inbound_checked(&now_current, t1, &mut |_| panic!("not asked"));
    }

    /// The sequence arithmetic wraps at 2^32, and byte counts beyond 2^32
    /// count by their low bits.
    #[test]
    fn plausibility_wraps_around_the_sequence_space() {
        let isn = Isn {
            local: u32::MAX - 10,
            peer: u32::MAX - 100,
        };
        let p = SocketProgress {
            bytes_acked: (5 << 32) + 20,
            bytes_received: (7 << 32) + 200,
            bytes_sent: (5 << 32) + 60,
        };
        // snd_una = ISS + 1 + 20 = 10 (wrapped), snd_nxt ≤ 51;
        // rcv_nxt = IRS + 1 + 200 = 100 (wrapped).
        assert!(plausible(isn, &p, 100, 10));
        assert!(plausible(isn, &p, 100, 51));
        assert!(!plausible(isn, &p, 100, 52));
        assert!(!plausible(isn, &p, 100, 9));
        assert!(plausible(
            isn,
            &p,
            100u32.wrapping_sub(FOLLOW_SEQ_WINDOW),
            20
        ));
        assert!(!plausible(
            isn,
            &p,
            100u32.wrapping_sub(FOLLOW_SEQ_WINDOW + 1),
            20
        ));
        assert!(plausible(isn, &p, 100 + FOLLOW_SEQ_WINDOW, 20));
        assert!(!plausible(isn, &p, 101 + FOLLOW_SEQ_WINDOW, 20));
    }

    #[test]
    fn stall_switches_destination_with_routable_source() {
        let mut w = handshake();
        let orig = FourTuple {
            local: w.c0,
            local_port: 40000,
            peer: w.s0,
            peer_port: 5001,
        };
        let t1 = w.t0 + Duration::from_millis(400);
        w.c.tcp_info(
            &orig,
            TcpSample {
                retransmits: 0,
                unacked: 10,
                since_last_ack: Duration::from_millis(350),
            },
            t1,
        );
        let cur = w.c.current_pair(&orig).unwrap();
        assert_eq!(
            cur,
            AddrPair {
                local: w.c1,
                peer: w.s1
            }
        );
        assert_eq!(w.c.connections()[0].last_reason.as_deref(), Some("stall"));
    }

    #[test]
    fn plain_peer_and_bad_options() {
        let (c0, s0) = (a("2001:db8:1:0::1"), a("2001:db8:1:0::2"));
        let t0 = Instant::now();
        let mut c = Engine::new(EngineConfig::default());
        c.set_locals(locals(&[c0, a("2001:db8:1:1::1")]), t0);
        let _ = c.outbound(&pkt(c0, s0, 1, 2, SYN), t0);
        // Plain SYN+ACK and ACK: no connection, counted as a plain peer.
        assert_eq!(
            c.inbound(&pkt(s0, c0, 2, 1, SYN | ACK), t0),
            Verdict::Accept
        );
        assert_eq!(c.outbound(&pkt(c0, s0, 1, 2, ACK), t0), Verdict::Accept);
        assert!(c.connections().is_empty());
        assert_eq!(c.stats().plain_peers, 1);

        // A SYN whose PREFIX_SYN claims a 200-bit prefix: counted, stripped.
        let mut s = Engine::new(EngineConfig::default());
        let syn = pkt(c0, s0, 3, 4, SYN);
        let mut bad = syn[..40].to_vec();
        bad[6] = 60;
        bad.extend_from_slice(&[6, 0, 0x0B, 2, 200, 0, 1, 0]);
        bad.extend_from_slice(&syn[40..]);
        bad[4..6].copy_from_slice(&((syn.len() - 40 + 8) as u16).to_be_bytes());
        assert_eq!(replaced(s.inbound(&bad, t0)), syn);
        assert_eq!(s.stats().malformed_options, 1);
        // Its SYN+ACK stays plain.
        assert_eq!(
            s.outbound(&pkt(s0, c0, 4, 3, SYN | ACK), t0),
            Verdict::Accept
        );
    }

    /// A Packet Too Big from a router on the client's new pair quoting a
    /// segment there: the quote goes back to the original tuple (the
    /// socket's), with a valid checksum. A quote of the original tuple, or
    /// of a connection nobody tracks, passes unchanged.
    #[test]
    fn packet_too_big_on_a_new_pair_reaches_the_socket() {
        let World {
            mut c,
            c0,
            c1,
            s0,
            s1,
            t0,
            ..
        } = handshake();
        let id = c.connections()[0].id;
        c.move_to(
            id,
            AddrPair {
                local: c1,
                peer: s1,
            },
            t0,
        )
        .unwrap();
        c.take_actions();
        let router = a("2001:db8:9::1");
        let too_big = |quoted: &[u8]| crate::packet::tests::too_big(router, c1, quoted);
        let on_new_pair = pkt(c1, s1, 40000, 5001, ACK);
        let got = replaced(c.inbound(&too_big(&on_new_pair), t0));
        let q = crate::packet::too_big_quote(&got).unwrap();
        assert_eq!(
            (q.local, q.peer, q.local_port, q.peer_port),
            (c0, s0, 40000, 5001)
        );
        assert!(crate::packet::tests::icmp_ok(&got));
        assert_eq!(c.stats().icmp_translated, 1);
        for quoted in [pkt(c0, s0, 40000, 5001, ACK), pkt(c1, s1, 40001, 5001, ACK)] {
            assert!(matches!(c.inbound(&too_big(&quoted), t0), Verdict::Accept));
        }
        assert_eq!(c.stats().icmp_translated, 1);
    }

    /// `pkt` with a destination options header made of `opts` (option
    /// TLVs, padded here to 8-octet units) before TCP.
    fn with_raw_opts(p: &[u8], opts: &[u8]) -> Vec<u8> {
        let mut h = vec![6u8, 0];
        h.extend_from_slice(opts);
        match (8 - h.len() % 8) % 8 {
            0 => {}
            1 => h.push(0),
            n => {
                h.extend_from_slice(&[1, (n - 2) as u8]);
                h.resize(h.len() + n - 2, 0);
            }
        }
        h[1] = (h.len() / 8 - 1) as u8;
        let mut out = p[..40].to_vec();
        out[6] = 60;
        out.extend_from_slice(&h);
        out.extend_from_slice(&p[40..]);
        let plen = (out.len() - 40) as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
        out
    }

    /// The option TLV of a PREFIX option of type `ty` with these prefixes.
    fn prefix_tlv(ty: u8, prefixes: &[Prefix]) -> Vec<u8> {
        let mut data = Vec::new();
        PrefixOption::new(prefixes.to_vec())
            .unwrap()
            .emit_data(&mut data);
        let mut o = vec![ty, data.len() as u8];
        o.extend(data);
        o
    }

    fn pfx(s: &str, n: u8) -> Prefix {
        Prefix::from_addr(a(s), n).unwrap()
    }

    /// A hostile offer (link-local and unique-local prefixes for a global
    /// connection, the connection's own prefix, a duplicate, twenty
    /// globals): the SYN+ACK echoes only the accepted prefixes, verbatim,
    /// and the server's pair table holds exactly those; the client in turn
    /// echoes only what it accepted of a hostile SYN+ACK.
    #[test]
    fn echo_holds_only_the_accepted_prefixes() {
        let World {
            mut c,
            mut s,
            c0,
            s0,
            t0,
            ..
        } = two_engines();
        let mut offer = vec![
            pfx("fe80::", 64),
            pfx("fd00:1::", 64),
            pfx("2001:db8:1:0::", 64),
            pfx("2001:db8:7::", 64),
            pfx("2001:db8:7::", 64),
        ];
        offer.extend((0x10..0x24u16).map(|k| {
            Prefix::from_addr(Ipv6Addr::new(0x2001, 0xdb8, 0x2, k, 0, 0, 0, 0), 64).unwrap()
        }));
        let want = validate_received(
            c0,
            &PrefixOption::new(offer.clone()).unwrap(),
            &Limits::default(),
        );
        assert_eq!(want.accepted.len(), 8);
        let syn = with_raw_opts(&pkt(c0, s0, 40000, 5001, SYN), &prefix_tlv(0x0B, &offer));
        s.observe_inbound(&syn, t0);
        let sa = replaced(s.outbound(&pkt(s0, c0, 5001, 40000, SYN | ACK), t0));
        let h = parse_ipv6_tcp(&sa).unwrap().dest_opts.unwrap();
        assert_eq!(h.prefix_ack(), Some(&want.echo()));
        assert_eq!(s.stats().prefixes.rejected_over_limit, 13);
        assert_eq!(s.stats().prefixes.rejected_scope, 2);
        assert_eq!(s.stats().prefixes.rejected_own, 1);
        assert_eq!(s.stats().prefixes.rejected_duplicate, 1);
        // The client (its own offer, nothing hostile) accepts the echo and
        // the server's offer; the server enters the accepted addresses.
        let ack = with_opts(pkt(c0, s0, 40000, 5001, ACK), None, Some(want.echo()));
        s.observe_inbound(&ack, t0);
        let sc = s.connections();
        assert_eq!(sc.len(), 1);
        let mut peers = vec![c0];
        peers.extend(want.addresses());
        assert_eq!(sc[0].peers, peers);

        // Client side: a SYN+ACK with a hostile PREFIX_SYN.
        let _ = replaced(c.outbound(&pkt(c0, s0, 40001, 5001, SYN), t0));
        let server_offer = [pfx("fd00:9::", 64), pfx("2001:db8:1:1::", 64)];
        let sa = with_raw_opts(
            &pkt(s0, c0, 5001, 40001, SYN | ACK),
            &prefix_tlv(0x0B, &server_offer),
        );
        c.observe_inbound(&sa, t0);
        let ack = replaced(c.outbound(&pkt(c0, s0, 40001, 5001, ACK), t0));
        let h = parse_ipv6_tcp(&ack).unwrap().dest_opts.unwrap();
        assert_eq!(
            h.prefix_ack().map(PrefixOption::prefixes),
            Some(&[pfx("2001:db8:1:1::", 64)][..])
        );
        // Nothing acceptable at all: an empty echo, still an answer.
        let syn = with_raw_opts(
            &pkt(c0, s0, 40002, 5001, SYN),
            &prefix_tlv(0x0B, &[pfx("fe80::", 64)]),
        );
        s.observe_inbound(&syn, t0);
        let sa = replaced(s.outbound(&pkt(s0, c0, 5001, 40002, SYN | ACK), t0));
        let h = parse_ipv6_tcp(&sa).unwrap().dest_opts.unwrap();
        assert_eq!(h.prefix_ack(), Some(&PrefixOption::default()));
    }

    /// A second offering SYN on a tuple whose handshake is pending does not
    /// replace the first offer (the echo and the peer's alternatives stay
    /// those of the first), in both the NFQUEUE and the kernel mode; the
    /// same for a second SYN+ACK at the client.
    #[test]
    fn first_offer_of_a_handshake_is_kept() {
        for kernel in [false, true] {
            let (mut w, _) = kernel_world(false);
            if !kernel {
                w.s.config = EngineConfig::default();
            }
            let (c0, s0, t0) = (w.c0, w.s0, w.t0);
            let first = [pfx("2001:db8:5::", 64)];
            let second = [pfx("2001:db8:6::", 64), pfx("2001:db8:7::", 64)];
            for offer in [&first[..], &second[..]] {
                let syn = with_raw_opts(&pkt(c0, s0, 40000, 5001, SYN), &prefix_tlv(0x0B, offer));
                w.s.observe_inbound(&syn, t0);
            }
            assert_eq!(w.s.stats().duplicate_offers, 1);
            assert_eq!(
                w.s.stats().prefixes.received,
                1,
                "the second is not validated"
            );
            let first_opt = PrefixOption::new(first.to_vec()).unwrap();
            if !kernel {
                let sa = replaced(w.s.outbound(&pkt(s0, c0, 5001, 40000, SYN | ACK), t0));
                let h = parse_ipv6_tcp(&sa).unwrap().dest_opts.unwrap();
                assert_eq!(h.prefix_ack(), Some(&first_opt));
            }
            let ack = with_opts(pkt(c0, s0, 40000, 5001, ACK), None, Some(w.s.offer_for(s0)));
            w.s.observe_inbound(&ack, t0);
            let sc = w.s.connections();
            assert_eq!(sc.len(), 1, "kernel mode {kernel}");
            assert_eq!(sc[0].peers, vec![c0, a("2001:db8:5::1")]);
        }
        // Client: a second SYN+ACK with other prefixes changes nothing.
        let World {
            mut c, c0, s0, t0, ..
        } = two_engines();
        let _ = replaced(c.outbound(&pkt(c0, s0, 40000, 5001, SYN), t0));
        for offer in [pfx("2001:db8:5::", 64), pfx("2001:db8:6::", 64)] {
            let sa = with_raw_opts(
                &pkt(s0, c0, 5001, 40000, SYN | ACK),
                &prefix_tlv(0x0B, &[offer]),
            );
            c.observe_inbound(&sa, t0);
        }
        assert_eq!(c.stats().duplicate_offers, 1);
        let ack = replaced(c.outbound(&pkt(c0, s0, 40000, 5001, ACK), t0));
        let h = parse_ipv6_tcp(&ack).unwrap().dest_opts.unwrap();
        assert_eq!(
            h.prefix_ack().map(PrefixOption::prefixes),
            Some(&[pfx("2001:db8:5::", 64)][..])
        );
        assert_eq!(c.connections()[0].peers, vec![s0, a("2001:db8:5::2")]);
    }

    /// Options after the first PREFIX option of a kind are ignored, even
    /// malformed; a header the kernel would drop teaches nothing and leaves
    /// a pending handshake as it was.
    #[test]
    fn later_options_ignored_and_undeliverable_headers_teach_nothing() {
        let World {
            mut s, c0, s0, t0, ..
        } = two_engines();
        let good = prefix_tlv(0x0B, &[pfx("2001:db8:5::", 64)]);
        let answered = |s: &mut Engine, port: u16| {
            matches!(
                s.outbound(&pkt(s0, c0, 5001, port, SYN | ACK), t0),
                Verdict::Replace(_)
            )
        };
        // A trailing malformed PREFIX_SYN and PREFIX_ACK: answered.
        let mut opts = good.clone();
        opts.extend_from_slice(&[0x0B, 2, 200, 1, 0x0C, 0, 0x0C, 1, 64]);
        s.observe_inbound(&with_raw_opts(&pkt(c0, s0, 40000, 5001, SYN), &opts), t0);
        assert!(answered(&mut s, 40000));
        assert_eq!(s.stats().malformed_options, 0);
        // A malformed first PREFIX_ACK before the PREFIX_SYN: malformed.
        let mut opts = vec![0x0C, 1, 64];
        opts.extend_from_slice(&good);
        s.observe_inbound(&with_raw_opts(&pkt(c0, s0, 40001, 5001, SYN), &opts), t0);
        assert!(!answered(&mut s, 40001));
        assert_eq!(s.stats().malformed_options, 1);
        // Non-zero PadN, eight octets of padding, an option with action
        // bits 01, nine options: the kernel drops these, nothing learned.
        let cases: [Vec<u8>; 4] = [
            [&good[..], &[1, 2, 0, 7]].concat(),
            [&good[..], &[0, 0, 0, 1, 4, 0, 0, 0, 0]].concat(),
            [&good[..], &[0x7e, 0]].concat(),
            [&good[..], &[0x3e, 0].repeat(8)].concat(),
        ];
        for (i, opts) in cases.iter().enumerate() {
            let port = 40010 + i as u16;
            s.observe_inbound(&with_raw_opts(&pkt(c0, s0, port, 5001, SYN), opts), t0);
            assert!(!answered(&mut s, port), "case {i}");
        }
        assert_eq!(s.stats().malformed_options, 5);
        // An undeliverable copy of an offer does not disturb the pending
        // handshake of the genuine one.
        s.observe_inbound(&with_raw_opts(&pkt(c0, s0, 40020, 5001, SYN), &good), t0);
        s.observe_inbound(
            &with_raw_opts(&pkt(c0, s0, 40020, 5001, SYN), &cases[2]),
            t0,
        );
        assert!(answered(&mut s, 40020));
        // Same through `inbound` (NFQUEUE): counted, passed unchanged.
        let bad = with_raw_opts(&pkt(c0, s0, 40030, 5001, SYN), &cases[0]);
        assert_eq!(s.inbound(&bad, t0), Verdict::Accept);
        assert!(!answered(&mut s, 40030));
    }

    /// Thesis 5.3.8: an offer to a listener bound to one address is not
    /// answered once the daemon says so; a wildcard listener's is.
    #[test]
    fn listener_bound_to_one_address_gets_no_aliases() {
        let World {
            mut s, c0, s0, t0, ..
        } = two_engines();
        let good = prefix_tlv(0x0B, &[pfx("2001:db8:5::", 64)]);
        for (port, bound) in [(40000u16, s0), (40001, Ipv6Addr::UNSPECIFIED)] {
            s.observe_inbound(&with_raw_opts(&pkt(c0, s0, port, 5001, SYN), &good), t0);
            let k_sa = pkt(s0, c0, 5001, port, SYN | ACK);
            let t = FourTuple {
                local: s0,
                local_port: 5001,
                peer: c0,
                peer_port: port,
            };
            assert_eq!(s.listener_query(&k_sa), Some(t));
            s.listener_bound(&t, bound);
            assert_eq!(s.listener_query(&k_sa), None, "known now");
            let v = s.outbound(&k_sa, t0);
            if bound.is_unspecified() {
                assert!(matches!(v, Verdict::Replace(_)));
            } else {
                assert_eq!(v, Verdict::Accept, "plain SYN+ACK");
                assert_eq!(s.listener_query(&k_sa), None, "handshake dropped");
            }
        }
        assert_eq!(s.stats().listener_bound, 1);
        assert_eq!(s.stats().synack_answers, 1);
        // Not a SYN+ACK, or nothing pending: no query.
        assert_eq!(s.listener_query(&pkt(s0, c0, 5001, 40009, SYN | ACK)), None);
        assert_eq!(s.listener_query(&pkt(s0, c0, 5001, 40000, ACK)), None);
    }
}
