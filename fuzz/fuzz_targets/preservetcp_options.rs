//! Fuzz the preservetcp destination options codec and the IPv6 packet helpers:
//! parsing must never panic, and whatever parses must re-emit to the same
//! bytes and re-parse to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use preservetcp::packet::{PacketError, insert_dest_opts, parse_ipv6_tcp, strip_dest_opts};
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
});
