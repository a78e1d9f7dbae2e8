//! The shared layout between `preservetcpd` and its tc BPF programs
//! (`bpf/ptcp.bpf.c`): the offer map's value encoding, the covered-port
//! array, the events the programs report, the alternative-pair entries
//! and their slots, and the counters.
//!
//! The programs put the PREFIX options into the three outgoing handshake
//! packets in the kernel (see the crate docs, "Handshake in the kernel").
//! The daemon precomputes each local address's PREFIX_SYN option with
//! [`crate::select::offer_option`] (exactly what [`crate::Engine`] offers)
//! and stores it encoded by [`offer_value`] in the `ptcp_offers` hash map,
//! keyed by the address's 16 octets. The egress program copies those bytes
//! verbatim, so the option on the wire is the codec's own encoding.
//!
//! The egress program reports every PREFIX_ACK echo that actually left (in
//! the client's first segment after the SYN+ACK) in the `ptcp_echoes` ring
//! buffer, one [`ECHO_EVENT_LEN`]-byte event per echo holding the client's
//! sender tuple ([`echo_event`] decodes it); the daemon passes it to
//! [`crate::Engine::kernel_echoed`], which enters the client side of the
//! connection only then. The echo can be skipped on a segment (a GSO or BIG
//! TCP packet, one that the header would push past the MTU) and is then
//! tried on the next segments, at most three ([`Counter::EchoGivenUp`]
//! counts the connections that ran out of tries and stay plain on both
//! ends); a RST never carries it.

use std::net::Ipv6Addr;

use crate::pairs::FourTuple;
use crate::wire::{OPT_PREFIX_SYN, PrefixOption};

/// Which SYNs are covered is decided by the egress program itself: a
/// port in the `ptcp_ports` array ([`PORTS_LEN`] one-octet entries indexed
/// by the port, nonzero = covered, local or peer port), a socket mark with
/// `mark & OPT_IN_MASK == OPT_IN_MARK` ([`crate::control::OPT_IN_MARK`]),
/// or the sender's tuple in the `ptcp_optin` hash ([`hs_key`] layout) —
/// unless the mark is [`crate::control::OPT_OUT_MARK`] (under the same
/// mask), which also keeps a listener's SYN+ACK from answering an offer.
pub const PORTS_LEN: u32 = 65536;

/// Largest encoded option: type, length and 255 data octets.
pub const MAX_OPTION: usize = 257;

/// Size of a `ptcp_offers` value (`struct offer` in the C source): a
/// native-endian `u16` length, then the option bytes, zero-filled.
pub const OFFER_VALUE_LEN: usize = 2 + MAX_OPTION + 1;

/// A `ptcp_offers` value: the PREFIX_SYN option (type octet 0x0B, data
/// length, the prefixes as [`PrefixOption::emit_data`] writes them), with
/// its total length in the first two octets (native byte order, as the
/// kernel's `__u16` field reads it). An empty offer is the two-octet option
/// with no data (the engine sends that too, so the peer can still offer).
pub fn offer_value(offer: &PrefixOption) -> [u8; OFFER_VALUE_LEN] {
    let mut opt = vec![OPT_PREFIX_SYN, 0];
    offer.emit_data(&mut opt);
    // PrefixOption keeps its data at most 255 octets.
    let data_len = u8::try_from(opt.len() - 2).unwrap_or(u8::MAX);
    if let Some(l) = opt.get_mut(1) {
        *l = data_len;
    }
    opt.truncate(MAX_OPTION);
    let mut v = [0u8; OFFER_VALUE_LEN];
    let len = u16::try_from(opt.len()).unwrap_or(0);
    v[..2].copy_from_slice(&len.to_ne_bytes());
    v[2..2 + opt.len()].copy_from_slice(&opt);
    v
}

/// The option bytes stored in an offer value (inverse of [`offer_value`]);
/// `None` when the length field is out of range.
pub fn offer_option_bytes(value: &[u8; OFFER_VALUE_LEN]) -> Option<&[u8]> {
    let len = usize::from(u16::from_ne_bytes([value[0], value[1]]));
    if !(2..=MAX_OPTION).contains(&len) {
        return None;
    }
    value.get(2..2 + len)
}

/// Size of a `ptcp_echoes` event (`struct tuple` in the C source): the
/// local address, the peer address (16 octets each), then the local and
/// the peer port in network byte order.
pub const ECHO_EVENT_LEN: usize = 36;

/// Decodes a `ptcp_echoes` event into the client's tuple (local = the
/// client's address, as [`crate::Engine`] keys the connection). `None`
/// when the event is shorter than [`ECHO_EVENT_LEN`] (longer events are
/// accepted: the ring buffer may pad records).
pub fn echo_event(bytes: &[u8]) -> Option<FourTuple> {
    let addr = |at: usize| -> Option<Ipv6Addr> {
        let o: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(o))
    };
    let port = |at: usize| -> Option<u16> {
        let o: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(u16::from_be_bytes(o))
    };
    Some(FourTuple {
        local: addr(0)?,
        peer: addr(16)?,
        local_port: port(32)?,
        peer_port: port(34)?,
    })
}

/// Size of a `ptcp_hs` key (`struct tuple`, the same layout as an echo
/// event).
pub const HS_KEY_LEN: usize = ECHO_EVENT_LEN;

/// Size of a `ptcp_hs` value (`struct hs`): state, tries, a native-endian
/// `u16` option length, a `u32` sequence number, the option bytes, padded
/// to the struct's 4-octet alignment.
pub const HS_VALUE_LEN: usize = 268;

/// `ptcp_hs` state of an entry holding a received offer the server's
/// SYN+ACK answers (`HS_SERVER_ECHO`).
const HS_SERVER_ECHO: u8 = 3;

/// The `ptcp_hs` key of a connection (local = this host's end).
pub fn hs_key(t: &FourTuple) -> [u8; HS_KEY_LEN] {
    let mut k = [0u8; HS_KEY_LEN];
    k[..16].copy_from_slice(&t.local.octets());
    k[16..32].copy_from_slice(&t.peer.octets());
    k[32..34].copy_from_slice(&t.local_port.to_be_bytes());
    k[34..36].copy_from_slice(&t.peer_port.to_be_bytes());
    k
}

/// The client's PREFIX_SYN held by a `ptcp_hs` value in state
/// `HS_SERVER_ECHO` (what the kernel echoed in its SYN+ACK); `None` for
/// other states or a value that does not hold a well-formed option.
pub fn server_echo_option(value: &[u8]) -> Option<PrefixOption> {
    if *value.first()? != HS_SERVER_ECHO {
        return None;
    }
    let len = usize::from(u16::from_ne_bytes(value.get(2..4)?.try_into().ok()?));
    let opt = value.get(8..8usize.checked_add(len)?)?;
    match opt {
        [OPT_PREFIX_SYN, l, data @ ..] if usize::from(*l) == data.len() => {
            PrefixOption::parse(data).ok()
        }
        _ => None,
    }
}

/// Size of a `ptcp_alt` value (`struct alt`): the original local and peer
/// addresses of the connection a wire tuple belongs to, a `u64` the
/// program keeps for itself (when it next reports the tuple), the
/// `hold_until_ns` (`CLOCK_MONOTONIC`, native endian: before it a segment
/// on this pair opens no follow window, see [`alt_entries`]), the
/// `current` octet (the connection uses this pair now: its segments there
/// are rewritten but neither reported nor followed) and padding.
pub const ALT_VALUE_LEN: usize = 56;

/// The `ptcp_alt` entries of a connection: every wire tuple of its N×M
/// pairs except the original one ([`hs_key`] of the receiver's view,
/// local = this host's address), each mapped to the original addresses;
/// the one equal to `current` (the connection's current pair, if it is
/// not the original) is marked so. `hold_until_ns` is the end of the
/// connection's follow hold (its last switch plus
/// [`crate::policy::PolicyConfig::follow_hold`], on `CLOCK_MONOTONIC`,
/// the clock of `bpf_ktime_get_ns`): until then the kernel does not follow
/// a segment on another pair, as the engine does not.
pub fn alt_entries(
    original: &FourTuple,
    wires: &[FourTuple],
    current: Option<&FourTuple>,
    hold_until_ns: u64,
) -> Vec<([u8; HS_KEY_LEN], [u8; ALT_VALUE_LEN])> {
    let mut v = [0u8; ALT_VALUE_LEN];
    v[..16].copy_from_slice(&original.local.octets());
    v[16..32].copy_from_slice(&original.peer.octets());
    v[40..48].copy_from_slice(&hold_until_ns.to_ne_bytes());
    wires
        .iter()
        .filter(|w| *w != original)
        .map(|w| {
            let mut v = v;
            v[48] = u8::from(Some(w) == current);
            (hs_key(w), v)
        })
        .collect()
}

/// Slots of the `ptcp_alt_slots` array: how many `ptcp_alt` entries have
/// each [`alt_slot`], so that the ingress program skips the hash lookup for
/// segments whose slot is empty (nearly all segments on original pairs).
pub const ALT_SLOTS: u32 = 65536;

/// The slot of a `ptcp_alt` key ([`hs_key`] layout), as `alt_slot` in the
/// C source computes it: the first 8 octets of both addresses (their
/// prefix part: an alternative pair shares the interface identifiers with
/// the original one) and the two ports, as native-endian 32-bit words
/// (the peer's multiplied by an odd constant, so the two addresses do not
/// cancel), folded to 16 bits.
pub fn alt_slot(key: &[u8; HS_KEY_LEN]) -> u32 {
    let w = |at: usize| u32::from_ne_bytes([key[at], key[at + 1], key[at + 2], key[at + 3]]);
    let p = (w(16) ^ w(20)).wrapping_mul(0x9E37_79B1);
    let mut x = w(0) ^ w(4) ^ p ^ w(32);
    x ^= x >> 16;
    x & (ALT_SLOTS - 1)
}

/// Size of a `ptcp_moved` value (`struct moved`): the pair's local and
/// peer addresses, a `u64` the program keeps (when it next reports a
/// segment on the original tuple), the `hold_until_ns` (as in
/// [`alt_entries`]), the index of the pair's device, padding.
pub const MOVED_VALUE_LEN: usize = 56;

/// The `ptcp_moved` value of a connection moved to (`local`, `peer`),
/// whose segments leave on device `ifindex`, keyed by [`hs_key`] of its
/// original tuple: the egress program rewrites its segments to the pair
/// and redirects them there; a segment arriving on the original tuple is
/// reported (the peer went back) and, after `hold_until_ns`, followed.
pub fn moved_value(
    local: Ipv6Addr,
    peer: Ipv6Addr,
    ifindex: u32,
    hold_until_ns: u64,
) -> [u8; MOVED_VALUE_LEN] {
    let mut v = [0u8; MOVED_VALUE_LEN];
    v[..16].copy_from_slice(&local.octets());
    v[16..32].copy_from_slice(&peer.octets());
    v[40..48].copy_from_slice(&hold_until_ns.to_ne_bytes());
    v[48..52].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

/// Kind of a `ptcp_events` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// An incoming handshake packet to learn from
    /// ([`crate::Engine::observe_inbound`]).
    Learn,
    /// A segment that arrived on an alternative pair and was rewritten to
    /// the original tuple in the kernel ([`crate::Engine::inbound`] with
    /// the wire bytes; its verdict is not needed).
    Alt,
}

/// A decoded `ptcp_events` record: its kind and the packet from the IPv6
/// header on, as far as the program copied it. When the copy was cut
/// short (at most the headers are needed), the IPv6 payload length is set
/// to what was copied, so the packet parses as a whole one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What the program reports.
    pub kind: EventKind,
    /// The packet bytes.
    pub packet: Vec<u8>,
}

/// Decodes a `ptcp_events` record (`struct event`: kind octet, a pad
/// octet, a native-endian `u16` length, then that many packet bytes;
/// records may be padded). `None` for an unknown kind, a length beyond the
/// record, or a packet shorter than a fixed IPv6 header.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    let kind = match *bytes.first()? {
        1 => EventKind::Learn,
        2 => EventKind::Alt,
        _ => return None,
    };
    let len = usize::from(u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?));
    let mut packet = bytes.get(4..4usize.checked_add(len)?)?.to_vec();
    let payload = packet.len().checked_sub(40)?;
    let stated = usize::from(u16::from_be_bytes(packet.get(4..6)?.try_into().ok()?));
    // (0: a BIG TCP packet, whose length is in a jumbo option.)
    if stated > payload || stated == 0 {
        let p = u16::try_from(payload).ok()?;
        packet.get_mut(4..6)?.copy_from_slice(&p.to_be_bytes());
    }
    Some(Event { kind, packet })
}

/// The programs' counters (per-CPU array indices, `C_*` in the C source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// SYNs that got PREFIX_SYN.
    SynOffers,
    /// SYN+ACKs that got PREFIX_SYN + PREFIX_ACK.
    SynackAnswers,
    /// Client ACKs that got PREFIX_ACK.
    AckEchoes,
    /// Options left out because the packet would have exceeded the MTU.
    SkippedMtu,
    /// Options left out for another reason (no offer for the address,
    /// helper failure).
    SkippedError,
    /// Incoming PREFIX_SYN options remembered for the echo.
    Learned,
    /// Incoming headers the receiving kernel drops (an option overrunning
    /// the header, non-zero PadN data, a padding run over 7 octets, more
    /// than 8 other options, an option with action bits other than `00`),
    /// or whose first PREFIX_SYN or first PREFIX_ACK data was not a
    /// well-formed prefix list: nothing learned from them.
    Malformed,
    /// Client echoes given up after being skipped on three segments (GSO,
    /// BIG TCP or MTU): the connection stays plain TCP.
    EchoGivenUp,
    /// Events (echoes, learned packets, alternative-pair reports) the ring
    /// buffers had no room for (the daemon then may not enter a connection
    /// the peer has entered).
    EventsLost,
    /// Incoming handshake packets copied for the daemon to learn.
    LearnEvents,
    /// Segments on an alternative pair rewritten to the original tuple.
    AltRewrites,
    /// Of those, the ones reported to the daemon (not on the connection's
    /// current pair; at most one per tuple every 20 ms).
    AltReports,
    /// Outgoing segments sent on the pair the peer moved to before the
    /// daemon's rules for the move were in (the follow window).
    FollowRewrites,
    /// Segments on an alternative pair (and Packet Too Big messages
    /// quoting one) left alone because a socket of its own has that tuple
    /// (another connection on the same ports).
    AltOwned,
    /// Outgoing segments of moved connections rewritten to their pair.
    MovedRewrites,
    /// ICMPv6 Packet Too Big messages quoting a segment on one of a
    /// connection's non-original pairs, whose quote was put back to the
    /// original tuple so that the socket learns the path MTU.
    IcmpTranslated,
    /// Segments on an alternative pair (or on the original tuple of a
    /// moved connection) that did not move the connection because the
    /// peer could not have sent them: a RST, no ACK flag, or sequence or
    /// acknowledgment number outside the socket's windows (a blind
    /// spoofing attempt or a very late segment). Still delivered.
    AltImplausible,
    /// Prefixes of received PREFIX_SYN options left out of our echo
    /// (not accepted: length, address, scope, own prefix, duplicate, or
    /// beyond the limit of 8).
    PrefixesRejected,
    /// Offers not answered because the listening socket is bound to one
    /// specific address (thesis 5.3.8).
    ListenerBound,
    /// Further offers (a SYN while the handshake is pending, a
    /// retransmitted SYN+ACK) that left the first offer in place.
    OffersKept,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 20] = [
        Counter::SynOffers,
        Counter::SynackAnswers,
        Counter::AckEchoes,
        Counter::SkippedMtu,
        Counter::SkippedError,
        Counter::Learned,
        Counter::Malformed,
        Counter::EchoGivenUp,
        Counter::EventsLost,
        Counter::LearnEvents,
        Counter::AltRewrites,
        Counter::AltReports,
        Counter::FollowRewrites,
        Counter::AltOwned,
        Counter::MovedRewrites,
        Counter::IcmpTranslated,
        Counter::AltImplausible,
        Counter::PrefixesRejected,
        Counter::ListenerBound,
        Counter::OffersKept,
    ];

    /// Index in the `ptcp_counters` array.
    pub fn index(self) -> u32 {
        match self {
            Counter::SynOffers => 0,
            Counter::SynackAnswers => 1,
            Counter::AckEchoes => 2,
            Counter::SkippedMtu => 3,
            Counter::SkippedError => 4,
            Counter::Learned => 5,
            Counter::Malformed => 6,
            Counter::EchoGivenUp => 7,
            Counter::EventsLost => 8,
            Counter::LearnEvents => 9,
            Counter::AltRewrites => 10,
            Counter::AltReports => 11,
            Counter::FollowRewrites => 12,
            Counter::AltOwned => 13,
            Counter::MovedRewrites => 14,
            Counter::IcmpTranslated => 15,
            Counter::AltImplausible => 16,
            Counter::PrefixesRejected => 17,
            Counter::ListenerBound => 18,
            Counter::OffersKept => 19,
        }
    }

    /// Name in the daemon's `stats` output.
    pub fn name(self) -> &'static str {
        match self {
            Counter::SynOffers => "bpf_syn_offers",
            Counter::SynackAnswers => "bpf_synack_answers",
            Counter::AckEchoes => "bpf_ack_echoes",
            Counter::SkippedMtu => "bpf_skipped_mtu",
            Counter::SkippedError => "bpf_skipped_error",
            Counter::Learned => "bpf_learned",
            Counter::Malformed => "bpf_malformed",
            Counter::EchoGivenUp => "bpf_echo_given_up",
            Counter::EventsLost => "bpf_events_lost",
            Counter::LearnEvents => "bpf_learn_events",
            Counter::AltRewrites => "bpf_alt_rewrites",
            Counter::AltReports => "bpf_alt_reports",
            Counter::FollowRewrites => "bpf_follow_rewrites",
            Counter::AltOwned => "bpf_alt_owned",
            Counter::MovedRewrites => "bpf_moved_rewrites",
            Counter::IcmpTranslated => "bpf_icmp_translated",
            Counter::AltImplausible => "bpf_alt_implausible",
            Counter::PrefixesRejected => "bpf_prefixes_rejected",
            Counter::ListenerBound => "bpf_listener_bound",
            Counter::OffersKept => "bpf_offers_kept",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DestOptsHeader, IPPROTO_TCP, Prefix};
    use std::net::Ipv6Addr;

    fn offer(prefixes: &[(&str, u8)]) -> PrefixOption {
        PrefixOption::new(
            prefixes
                .iter()
                .map(|(a, l)| Prefix::from_addr(a.parse::<Ipv6Addr>().unwrap(), *l).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn offer_value_holds_the_codecs_option_bytes() {
        let o = offer(&[("2001:db8:1:1::1", 64), ("2001:db8:2::7", 52)]);
        let v = offer_value(&o);
        // The option as the codec emits it inside a header.
        let h = DestOptsHeader::with_prefixes(IPPROTO_TCP, Some(o.clone()), None)
            .unwrap()
            .to_bytes();
        let opt_len = 2 + o.data_len();
        assert_eq!(offer_option_bytes(&v), Some(&h[2..2 + opt_len]));
        assert_eq!(u16::from_ne_bytes([v[0], v[1]]) as usize, opt_len);
        assert_eq!(v[2], 0x0B);
        assert_eq!(usize::from(v[3]), o.data_len());
        assert!(v[2 + opt_len..].iter().all(|&b| b == 0), "zero filled");
    }

    #[test]
    fn empty_offer_is_a_bare_option() {
        let v = offer_value(&PrefixOption::default());
        assert_eq!(offer_option_bytes(&v), Some(&[0x0B, 0][..]));
        assert_eq!(u16::from_ne_bytes([v[0], v[1]]), 2);
    }

    #[test]
    fn largest_offer_fits() {
        // 28 prefixes of 64 bits: 252 data octets.
        let prefixes: Vec<Prefix> = (0..28u16)
            .map(|i| {
                let a = Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1);
                Prefix::from_addr(a, 64).unwrap()
            })
            .collect();
        let o = PrefixOption::new(prefixes).unwrap();
        assert_eq!(o.data_len(), 252);
        let v = offer_value(&o);
        let bytes = offer_option_bytes(&v).unwrap();
        assert_eq!(bytes.len(), 254);
        assert_eq!(PrefixOption::parse(&bytes[2..]).unwrap(), o);
    }

    #[test]
    fn bad_length_fields_are_rejected() {
        let mut v = [0u8; OFFER_VALUE_LEN];
        assert_eq!(offer_option_bytes(&v), None, "length 0");
        v[..2].copy_from_slice(&1u16.to_ne_bytes());
        assert_eq!(offer_option_bytes(&v), None, "length 1");
        v[..2].copy_from_slice(&258u16.to_ne_bytes());
        assert_eq!(offer_option_bytes(&v), None, "too long");
    }

    #[test]
    fn counters_have_distinct_indices_and_names() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            assert!(c.name().starts_with("bpf_"));
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }

    #[test]
    fn c_source_agrees() {
        let src = include_str!("../bpf/ptcp.bpf.c");
        for c in Counter::ALL {
            let def = format!(
                "#define C_{} {}",
                c.name().trim_start_matches("bpf_").to_uppercase(),
                c.index()
            );
            assert!(src.contains(&def), "{def} missing in ptcp.bpf.c");
        }
        assert!(src.contains(&format!("#define C_COUNT {}", Counter::ALL.len())));
        assert!(src.contains(&format!("#define MAX_OPT {MAX_OPTION}")));
        assert!(src.contains("__u8 opt[MAX_OPT + 1];"));
        assert!(
            src.contains("#define MAX_ECHO_TRIES 3"),
            "the documented tries"
        );
        assert!(src.contains("#define HS_SERVER_ECHO 3"));
        let hs = "struct hs {\n\t__u8 state;\n\t__u8 tries;";
        assert!(src.contains(hs), "struct hs layout");
        assert!(src.contains(
            "\t__u16 len;             // bytes used in opt (received PREFIX_SYN)\n\t__u32 isn;"
        ));
    }

    #[test]
    fn server_echo_entries_decode() {
        let o = offer(&[("2001:db8:1:1::1", 64)]);
        let t = FourTuple {
            local: "2001:db8::1".parse().unwrap(),
            local_port: 5001,
            peer: "2001:db8::2".parse().unwrap(),
            peer_port: 40000,
        };
        assert_eq!(echo_event(&hs_key(&t)), Some(t), "same layout as events");
        let ov = offer_value(&o);
        let opt = offer_option_bytes(&ov).unwrap();
        let mut v = [0u8; HS_VALUE_LEN];
        v[0] = HS_SERVER_ECHO;
        v[2..4].copy_from_slice(&(opt.len() as u16).to_ne_bytes());
        v[8..8 + opt.len()].copy_from_slice(opt);
        assert_eq!(server_echo_option(&v), Some(o));
        let mut other = v;
        other[0] = 2;
        assert_eq!(server_echo_option(&other), None, "client entry");
        let mut bad = v;
        bad[2..4].copy_from_slice(&((opt.len() + 1) as u16).to_ne_bytes());
        assert_eq!(server_echo_option(&bad), None, "length octet disagrees");
        bad[2..4].copy_from_slice(&600u16.to_ne_bytes());
        assert_eq!(server_echo_option(&bad), None, "past the value");
        assert_eq!(server_echo_option(&v[..10]), None, "short");
        assert_eq!(server_echo_option(&[]), None);
    }

    #[test]
    fn echo_events_decode_the_c_tuple_layout() {
        // struct tuple: local[16], peer[16], local_port, peer_port (both
        // in network byte order).
        let local: Ipv6Addr = "2001:db8:1::a".parse().unwrap();
        let peer: Ipv6Addr = "2001:db8:2::b".parse().unwrap();
        let mut ev = Vec::new();
        ev.extend_from_slice(&local.octets());
        ev.extend_from_slice(&peer.octets());
        ev.extend_from_slice(&40000u16.to_be_bytes());
        ev.extend_from_slice(&5001u16.to_be_bytes());
        assert_eq!(ev.len(), ECHO_EVENT_LEN);
        let t = echo_event(&ev).unwrap();
        assert_eq!(
            t,
            FourTuple {
                local,
                local_port: 40000,
                peer,
                peer_port: 5001
            }
        );
        // Ring buffer records are padded to 8 octets.
        ev.extend_from_slice(&[0; 4]);
        assert_eq!(echo_event(&ev), Some(t));
        for n in 0..ECHO_EVENT_LEN {
            assert_eq!(echo_event(&ev[..n]), None, "{n} octets");
        }
    }

    fn ipv6_tcp(payload_len: u16, extra: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + 20 + extra];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        p[6] = 6;
        p[52] = 5 << 4; // TCP data offset: 20 octets
        p
    }

    fn record(kind: u8, pkt: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 0];
        r.extend_from_slice(&u16::try_from(pkt.len()).unwrap().to_ne_bytes());
        r.extend_from_slice(pkt);
        r
    }

    #[test]
    fn events_decode_and_cut_copies_parse_whole() {
        // A whole packet: unchanged.
        let p = ipv6_tcp(20, 0);
        let e = decode_event(&record(1, &p)).unwrap();
        assert_eq!(
            e,
            Event {
                kind: EventKind::Learn,
                packet: p.clone()
            }
        );
        // Padded record: the length field decides.
        let mut r = record(2, &p);
        r.extend_from_slice(&[0xee; 4]);
        let e = decode_event(&r).unwrap();
        assert_eq!(e.kind, EventKind::Alt);
        assert_eq!(e.packet, p);
        // A copy cut after the headers (1400 bytes of data stated): the
        // payload length becomes what was copied.
        let p = ipv6_tcp(1420, 0);
        let e = decode_event(&record(1, &p)).unwrap();
        assert_eq!(u16::from_be_bytes([e.packet[4], e.packet[5]]), 20);
        assert!(crate::packet::parse_ipv6_tcp(&e.packet).is_ok());
        // Unknown kind, short records, lengths beyond the record, packets
        // shorter than the fixed header: rejected, never a panic.
        assert_eq!(decode_event(&record(3, &ipv6_tcp(20, 0))), None);
        let r = record(1, &ipv6_tcp(20, 0));
        for n in 0..r.len() {
            assert_eq!(decode_event(&r[..n]), None, "{n} octets");
        }
        assert_eq!(decode_event(&record(1, &[0x60; 39])), None);
        // A BIG TCP packet states 0: the copied length goes in.
        let e = decode_event(&record(2, &ipv6_tcp(0, 100))).unwrap();
        assert_eq!(u16::from_be_bytes([e.packet[4], e.packet[5]]), 120);
        assert!(crate::packet::parse_ipv6_tcp(&e.packet).is_ok());
    }

    #[test]
    fn alt_entries_cover_every_pair_but_the_original() {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let original = FourTuple {
            local: a("2001:db8:0::a"),
            local_port: 40000,
            peer: a("2001:db8:0::b"),
            peer_port: 5001,
        };
        let wires: Vec<FourTuple> = [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
            .iter()
            .map(|(l, p)| FourTuple {
                local: a(&format!("2001:db8:{l}::a")),
                peer: a(&format!("2001:db8:{p}::b")),
                ..original
            })
            .collect();
        let v = alt_entries(&original, &wires, None, 0);
        assert_eq!(v.len(), 3);
        for (k, val) in &v {
            assert_ne!(*k, hs_key(&original));
            assert_eq!(&val[..16], &original.local.octets());
            assert_eq!(&val[16..32], &original.peer.octets());
            assert_eq!(&val[32..], &[0u8; 24]);
        }
        assert_eq!(v[2].0, hs_key(&wires[3]));
        // The current pair is marked, the others are not; every entry
        // has the hold.
        let v = alt_entries(&original, &wires, Some(&wires[2]), 0x0102_0304_0506_0708);
        let flags: Vec<u8> = v.iter().map(|(_, val)| val[48]).collect();
        assert_eq!(flags, vec![0, 1, 0]);
        for (_, val) in &v {
            assert_eq!(&val[40..48], &0x0102_0304_0506_0708u64.to_ne_bytes());
        }
    }

    #[test]
    fn c_source_agrees_on_events_and_alternatives() {
        let src = include_str!("../bpf/ptcp.bpf.c");
        assert!(src.contains("#define EV_LEARN 1"));
        assert!(src.contains("#define EV_ALT 2"));
        assert!(src.contains("struct event {\n\t__u8 kind;\n\t__u8 pad;\n\t__u16 len;"));
        assert!(src.contains(
            "struct alt {\n\t__u8 local[16];\n\t__u8 peer[16];\n\t__u64 next_report_ns; // written by the program only\n\t__u64 hold_until_ns;  // no follow window before (daemon: last switch + hold)\n\t__u8 current;         // the connection uses this pair now (daemon)\n\t__u8 pad[7];\n};"
        ));
        assert!(src.contains("__uint(max_entries, 65536);\n\t__type(key, __u32);\n\t__type(value, __u8);\n} ptcp_ports"));
        assert_eq!(PORTS_LEN, 65536);
        assert!(src.contains(
            "struct moved {\n\t__u8 local[16];       // source on the wire\n\t__u8 peer[16];        // destination on the wire\n\t__u64 next_report_ns; // written by the program only\n\t__u64 hold_until_ns;  // daemon: the connection's last switch + hold\n\t__u32 ifindex;        // daemon: the device of the pair\n\t__u32 pad;\n};"
        ));
    }

    #[test]
    fn moved_values_hold_the_pair_hold_and_device() {
        let l: Ipv6Addr = "2001:db8:1::a".parse().unwrap();
        let p: Ipv6Addr = "2001:db8:1::b".parse().unwrap();
        let v = moved_value(l, p, 7, 0x1122_3344_5566_7788);
        assert_eq!(v.len(), MOVED_VALUE_LEN);
        assert_eq!(&v[..16], &l.octets());
        assert_eq!(&v[16..32], &p.octets());
        assert_eq!(&v[32..40], &[0u8; 8], "the program's report time");
        assert_eq!(&v[40..48], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&v[48..52], &7u32.to_ne_bytes());
        assert_eq!(&v[52..], &[0u8; 4]);
    }

    #[test]
    fn alt_slots_ignore_interface_identifiers_and_use_ports() {
        let t = |l: &str, p: &str, lp: u16| {
            hs_key(&FourTuple {
                local: l.parse().unwrap(),
                local_port: lp,
                peer: p.parse().unwrap(),
                peer_port: 5001,
            })
        };
        let a = alt_slot(&t("2001:db8:0::a", "2001:db8:0::b", 40000));
        assert!(a < ALT_SLOTS);
        assert_eq!(a, alt_slot(&t("2001:db8:0::99", "2001:db8:0::77", 40000)));
        assert_ne!(a, alt_slot(&t("2001:db8:1::a", "2001:db8:0::b", 40000)));
        assert_ne!(a, alt_slot(&t("2001:db8:0::a", "2001:db8:1::b", 40000)));
        assert_ne!(a, alt_slot(&t("2001:db8:0::a", "2001:db8:0::b", 40001)));
        // Swapping the two addresses' prefixes changes the slot too.
        assert_ne!(
            alt_slot(&t("2001:db8:1::a", "2001:db8:2::b", 40000)),
            alt_slot(&t("2001:db8:2::a", "2001:db8:1::b", 40000))
        );
        // A known value (little-endian words, as on x86-64 and aarch64),
        // worked out by hand from the C source's steps.
        if cfg!(target_endian = "little") {
            let k = t("2001:db8:1::a", "2001:db8:2::b", 40000);
            let w = |b: [u8; 4]| u32::from_le_bytes(b);
            let l = w([0x20, 0x01, 0x0d, 0xb8]) ^ w([0x00, 0x01, 0x00, 0x00]);
            let p = w([0x20, 0x01, 0x0d, 0xb8]) ^ w([0x00, 0x02, 0x00, 0x00]);
            let ports = w([0x9c, 0x40, 0x13, 0x89]);
            let mut x = l ^ p.wrapping_mul(0x9E37_79B1) ^ ports;
            x ^= x >> 16;
            assert_eq!(alt_slot(&k), x & 0xffff);
        }
    }
}
