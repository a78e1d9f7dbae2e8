//! Fuzz the HIP wire codec: arbitrary bytes as a HIP packet (and as a UDP
//! payload and a bare TLV sequence). Whatever parses must re-emit, and the
//! emitted bytes must parse to an equal value.
#![no_main]

use hip_proto::wire::{
    ChecksumMode, Packet, PacketRepr, UdpPayload, classify_udp, emit_params, param_type as pt,
    parse_params,
};
use libfuzzer_sys::fuzz_target;

fn check_packet(data: &[u8]) {
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    for raw in p.params() {
        if raw.is_err() {
            break;
        }
    }
    let _ = p.mac_input(pt::HIP_MAC);
    let _ = p.signature2_input();
    if let Ok(repr) = PacketRepr::parse(&p) {
        let bytes = repr
            .to_bytes(ChecksumMode::Udp)
            .expect("a parsed packet must emit");
        let again = PacketRepr::parse_bytes(&bytes).expect("an emitted packet must parse");
        assert_eq!(again, repr);
    }
}

fuzz_target!(|data: &[u8]| {
    check_packet(data);
    if let UdpPayload::Hip(inner) = classify_udp(data) {
        check_packet(inner);
    }
    if let Ok(params) = parse_params(data) {
        let bytes = emit_params(&params).expect("parsed params must emit");
        assert_eq!(parse_params(&bytes).expect("emitted params parse"), params);
    }
});
