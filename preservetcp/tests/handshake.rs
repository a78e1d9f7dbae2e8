//! End-to-end run of the pure pieces over the thesis's demonstration
//! (section 6.3): PREFIX_SYN on the SYN, PREFIX_SYN + PREFIX_ACK on the
//! SYN+ACK, PREFIX_ACK on the ACK, then pair tables on both ends, a failover
//! decided by the policy, and packets rewritten between the kernel's original
//! tuple and the wire tuple with valid checksums.

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use preservetcp::checksum::{set_tcp_checksum_v6, verify_tcp_checksum_v6};
use preservetcp::packet::{build_ipv6_tcp, rewrite_addresses_v6};
use preservetcp::select::{acknowledged_locals, offer_option, validate_received};
use preservetcp::{
    AddrPair, AddressPairs, ChangePolicy, ConnId, DestOptsHeader, FourTuple, Limits, LocalAddress,
    PolicyConfig, PolicyEvent, SwitchReason, insert_dest_opts, parse_ipv6_tcp, strip_dest_opts,
};

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn segment(flags: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9, 0x50, flags, 0x20, 0, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn packet(src: Ipv6Addr, dst: Ipv6Addr, seg: &[u8]) -> Vec<u8> {
    let mut seg = seg.to_vec();
    set_tcp_checksum_v6(src, dst, &mut seg);
    build_ipv6_tcp(src, dst, 64, &seg).unwrap()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

#[test]
fn thesis_demo_end_to_end() {
    let limits = Limits::default();
    let c1 = a("3ffe:2a00:100:3100::f00d:cafe");
    let c2 = a("3ffe:2a00:100:3200::f00d:cafe");
    let s1 = a("3ffe:2a00:100:3100::dead:beef");
    let s2 = a("3ffe:2a00:100:3200::dead:beef");
    let client_addrs = [
        LocalAddress {
            addr: c1,
            prefix_len: 64,
        },
        LocalAddress {
            addr: c2,
            prefix_len: 64,
        },
        LocalAddress {
            addr: a("fe80::f00d:cafe"),
            prefix_len: 64,
        },
    ];
    let server_addrs = [
        LocalAddress {
            addr: s1,
            prefix_len: 64,
        },
        LocalAddress {
            addr: s2,
            prefix_len: 64,
        },
    ];

    // Client SYN with PREFIX_SYN.
    let client_offer = offer_option(c1, &client_addrs, &limits);
    let syn = packet(c1, s1, &segment(SYN, 1039, 21, b""));
    let hdr = DestOptsHeader::with_prefixes(0, Some(client_offer.clone()), None).unwrap();
    let syn_wire = insert_dest_opts(&syn, &hdr).unwrap();

    // Server: strip before the kernel sees it, validate, remember the echo.
    let (syn_kernel, got) = strip_dest_opts(&syn_wire).unwrap();
    assert_eq!(syn_kernel, syn);
    let got = got.unwrap();
    let view = parse_ipv6_tcp(&syn_kernel).unwrap();
    assert!(view.tcp_header.flags.syn);
    let from_client = got.prefix_syn().unwrap().clone();
    let v = validate_received(view.src, &from_client, &limits);
    assert_eq!(v.addresses(), vec![c2]);
    assert_eq!(v.stats.rejected(), 0);

    // Server SYN+ACK carries its own PREFIX_SYN and the PREFIX_ACK echo.
    let server_offer = offer_option(s1, &server_addrs, &limits);
    let synack = packet(s1, c1, &segment(SYN | ACK, 21, 1039, b""));
    let hdr =
        DestOptsHeader::with_prefixes(0, Some(server_offer.clone()), Some(from_client)).unwrap();
    let synack_wire = insert_dest_opts(&synack, &hdr).unwrap();

    // Client: its own offer was echoed, the server offered s2.
    let (_, got) = strip_dest_opts(&synack_wire).unwrap();
    let got = got.unwrap();
    let client_locals = acknowledged_locals(c1, &client_offer, got.prefix_ack().unwrap());
    assert_eq!(client_locals, vec![c2]);
    let from_server = got.prefix_syn().unwrap().clone();
    let client_peers = validate_received(s1, &from_server, &limits).addresses();
    assert_eq!(client_peers, vec![s2]);

    // Client ACK echoes the server's PREFIX_SYN; the server learns its locals.
    let ack = packet(c1, s1, &segment(ACK, 1039, 21, b""));
    let hdr = DestOptsHeader::with_prefixes(0, None, Some(from_server)).unwrap();
    let (_, got) = strip_dest_opts(&insert_dest_opts(&ack, &hdr).unwrap()).unwrap();
    let server_locals = acknowledged_locals(s1, &server_offer, got.unwrap().prefix_ack().unwrap());
    assert_eq!(server_locals, vec![s2]);

    // Pair tables on both ends: four permutations each.
    let c_orig = FourTuple {
        local: c1,
        local_port: 1039,
        peer: s1,
        peer_port: 21,
    };
    let s_orig = FourTuple {
        local: s1,
        local_port: 21,
        peer: c1,
        peer_port: 1039,
    };
    let mut ct = AddressPairs::default();
    ct.insert(ConnId(1), c_orig, &client_locals, &client_peers)
        .unwrap();
    let mut st = AddressPairs::default();
    st.insert(ConnId(7), s_orig, &server_locals, &v.addresses())
        .unwrap();
    assert_eq!(ct.wire_tuples(), 4);
    assert_eq!(st.wire_tuples(), 4);

    // The link fails; the client's RTO makes it change destination only.
    let t0 = Instant::now();
    let mut cp = ChangePolicy::new(
        PolicyConfig::default(),
        ct.locals(ConnId(1)).unwrap(),
        ct.peers(ConnId(1)).unwrap(),
    )
    .unwrap();
    let d = cp
        .handle(
            PolicyEvent::TcpInfo {
                retransmits: 1,
                unacked: 1,
                since_last_ack: Duration::from_millis(250),
            },
            t0,
        )
        .unwrap();
    assert_eq!(d.reason, SwitchReason::RetransmissionTimeout);
    assert_eq!(
        d.to,
        AddrPair {
            local: c1,
            peer: s2
        }
    );
    ct.set_current(ConnId(1), d.to).unwrap();

    // The client kernel still sends on the original tuple; the daemon rewrites.
    let mut data = packet(c1, s1, &segment(ACK, 1039, 21, b"do your thing"));
    let (_, wire) = ct.lookup_original(&c_orig).unwrap();
    rewrite_addresses_v6(&mut data, wire.local, wire.peer).unwrap();
    let on_wire = parse_ipv6_tcp(&data).unwrap();
    assert_eq!((on_wire.src, on_wire.dst), (c1, s2));
    assert!(verify_tcp_checksum_v6(
        on_wire.src,
        on_wire.dst,
        on_wire.tcp
    ));

    // The server demultiplexes it, sees a new pair, rewrites for its kernel.
    let seen = FourTuple {
        local: on_wire.dst,
        local_port: 21,
        peer: on_wire.src,
        peer_port: 1039,
    };
    let m = st.lookup_wire(&seen).unwrap();
    assert_eq!(m.id, ConnId(7));
    assert!(!m.on_current);
    rewrite_addresses_v6(&mut data, m.original.peer, m.original.local).unwrap();
    let for_kernel = parse_ipv6_tcp(&data).unwrap();
    assert_eq!((for_kernel.src, for_kernel.dst), (c1, s1));
    assert!(verify_tcp_checksum_v6(
        for_kernel.src,
        for_kernel.dst,
        for_kernel.tcp
    ));
    assert_eq!(&for_kernel.tcp[20..], b"do your thing");

    // The server's policy follows the peer.
    let mut sp = ChangePolicy::new(
        PolicyConfig::default(),
        st.locals(ConnId(7)).unwrap(),
        st.peers(ConnId(7)).unwrap(),
    )
    .unwrap();
    let d = sp
        .handle(PolicyEvent::PeerSegment(seen.pair()), t0)
        .unwrap();
    assert_eq!(d.reason, SwitchReason::PeerMoved);
    assert_eq!(
        d.to,
        AddrPair {
            local: s2,
            peer: c1
        }
    );
    st.set_current(ConnId(7), d.to).unwrap();
    assert!(st.lookup_wire(&seen).unwrap().on_current);
}

#[test]
fn peer_without_support_ignores_option() {
    // A peer that does not know type 0x0B must skip it: the action bits say so.
    assert_eq!(
        preservetcp::wire::option_action(preservetcp::wire::OPT_PREFIX_SYN),
        0
    );
    // And a SYN+ACK without any destination options yields no prefixes.
    let synack = packet(
        a("2001:db8::2"),
        a("2001:db8::1"),
        &segment(SYN | ACK, 21, 1039, b""),
    );
    let (same, none) = strip_dest_opts(&synack).unwrap();
    assert_eq!(same, synack);
    assert!(none.is_none());
}
