//! The shared layout between `preservetcpd` and its tc BPF programs
//! (`bpf/ptcp.bpf.c`): the offer map's value encoding, the packet mark
//! that selects covered SYNs, and the counters.
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

/// Packet mark bit the daemon's ip6tables rules set on a covered SYN
/// (configured ports, opted-in sockets, per-tuple opt-ins) for the egress
/// program, which inserts PREFIX_SYN and clears the bit again. Chosen
/// outside [`crate::OPT_IN_MARK`] (its bits stay as they are, so the
/// opt-in match is unaffected) and the daemon's other marks. The first
/// rule of `PTCP_OUT` clears the bit on every SYN, so a socket whose own
/// `SO_MARK` has it set is not covered by that alone (its SYN leaves
/// without the bit unless the covered-traffic rules set it again).
pub const OFFER_MARK: u32 = 0x2000_0000;

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
    /// Incoming headers whose options overran the header, or whose
    /// PREFIX_SYN data was not a well-formed prefix list.
    Malformed,
    /// Client echoes given up after being skipped on three segments (GSO,
    /// BIG TCP or MTU): the connection stays plain TCP.
    EchoGivenUp,
    /// Echo events the ring buffer had no room for (the daemon then does
    /// not enter a connection the server has entered).
    EventsLost,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 9] = [
        Counter::SynOffers,
        Counter::SynackAnswers,
        Counter::AckEchoes,
        Counter::SkippedMtu,
        Counter::SkippedError,
        Counter::Learned,
        Counter::Malformed,
        Counter::EchoGivenUp,
        Counter::EventsLost,
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
}
