//! Fuzz the preservetcp destination options codec and the IPv6 packet helpers:
//! parsing must never panic, and whatever parses must re-emit to the same
//! bytes and re-parse to the same value. The ICMPv6 Packet Too Big quote
//! rewrite changes exactly the quoted addresses and the checksum, and a
//! fresh engine takes any bytes as an incoming and as an outgoing packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use preservetcp::packet::{
    PacketError, insert_dest_opts, parse_ipv6_tcp, rewrite_too_big_quote, strip_dest_opts,
    too_big_quote,
};
use preservetcp::select::{Limits, validate_received};
use preservetcp::wire::{DestOptsHeader, PrefixOption};

fuzz_target!(|data: &[u8]| {
    if let Ok((hdr, used)) = DestOptsHeader::parse(data) {
        let bytes = hdr.to_bytes();
        assert_eq!(bytes.as_slice(), &data[..used]);
        let (again, used2) = DestOptsHeader::parse(&bytes).expect("re-parse");
        assert_eq!(again, hdr);
        assert_eq!(used2, used);
        if let Some(syn) = hdr.prefix_syn() {
            let v = validate_received(std::net::Ipv6Addr::LOCALHOST, syn, &Limits::default());
            assert_eq!(v.stats.accepted + v.stats.rejected(), v.stats.received);
        }
    }
    if let Ok(opt) = PrefixOption::parse(data) {
        let mut out = Vec::new();
        opt.emit_data(&mut out);
        assert_eq!(out.as_slice(), data);
    }
    if let Ok(view) = parse_ipv6_tcp(data) {
        let tcp = view.tcp.to_vec();
        let (stripped, removed) = strip_dest_opts(data).expect("strip after parse");
        match parse_ipv6_tcp(&stripped) {
            Ok(v) => assert_eq!(v.tcp, &tcp[..]),
            // An earlier destination options header, never parsed before, is
            // now the one before TCP and is malformed.
            Err(PacketError::Wire(_)) => assert!(removed.is_some()),
            Err(e) => panic!("stripped packet does not parse: {e}"),
        }
        if let Some(h) = removed
            && let Ok(back) = insert_dest_opts(&stripped, &h)
        {
            assert_eq!(
                parse_ipv6_tcp(&back).expect("reinserted parses").tcp,
                &tcp[..]
            );
        }
    }
    if let Some(q) = too_big_quote(data) {
        let (src, dst) = (
            std::net::Ipv6Addr::LOCALHOST,
            std::net::Ipv6Addr::UNSPECIFIED,
        );
        let mut b = data.to_vec();
        rewrite_too_big_quote(&mut b, src, dst).expect("rewrite after parse");
        let again = too_big_quote(&b).expect("re-parse");
        assert_eq!((again.local, again.peer), (src, dst));
        assert_eq!(
            (again.local_port, again.peer_port),
            (q.local_port, q.peer_port)
        );
        // Only the ICMPv6 checksum (42..44) and the quoted addresses
        // (48 + 8 .. 48 + 40) changed.
        for (i, (x, y)) in data.iter().zip(&b).enumerate() {
            if !(42..44).contains(&i) && !(56..88).contains(&i) {
                assert_eq!(x, y, "byte {i}");
            }
        }
    } else {
        let mut b = data.to_vec();
        assert!(
            rewrite_too_big_quote(
                &mut b,
                std::net::Ipv6Addr::LOCALHOST,
                std::net::Ipv6Addr::LOCALHOST
            )
            .is_err()
        );
        assert_eq!(b.as_slice(), data);
    }
    let mut eng = preservetcp::Engine::new(preservetcp::EngineConfig::default());
    let now = std::time::Instant::now();
    let _ = eng.inbound(data, now);
    let _ = eng.outbound(data, now);
});
