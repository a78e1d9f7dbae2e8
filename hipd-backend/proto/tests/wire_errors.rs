//! Malformed input yields the right typed error; emit refuses values it
//! cannot represent; UDP classification.

use std::net::Ipv6Addr;

use hip_proto::wire::{
    ChecksumMode, HiAlgorithm, Hit, HostId, Locator, LocatorKind, Packet, PacketRepr, PacketType,
    Param, Solution, TrafficType, UdpPayload, WireError, classify_udp, param_type as pt,
    parse_params,
};

fn i1_bytes() -> Vec<u8> {
    PacketRepr::new(PacketType::I1, Hit::from_u128(1), Hit::from_u128(2))
        .with(Param::DhGroupList(vec![3.into(), 4.into()]))
        .with(Param::Seq(9))
        .to_bytes(ChecksumMode::Udp)
        .unwrap()
}

fn packet_with_area(area: &[u8]) -> Vec<u8> {
    let mut v = vec![59u8, 0, 1, 0x21];
    v.resize(40, 0);
    v.extend_from_slice(area);
    v[1] = (v.len() / 8 - 1) as u8;
    v
}

fn tlv(ty: u16, contents: &[u8]) -> Vec<u8> {
    let mut v = ty.to_be_bytes().to_vec();
    v.extend_from_slice(&(contents.len() as u16).to_be_bytes());
    v.extend_from_slice(contents);
    v.resize(v.len().div_ceil(8) * 8, 0);
    v
}

#[test]
fn too_short_buffer() {
    let b = i1_bytes();
    for n in 0..40 {
        assert_eq!(
            Packet::new_checked(&b[..n]).unwrap_err(),
            WireError::TooShort { len: n }
        );
    }
}

#[test]
fn header_length_below_minimum() {
    let mut b = i1_bytes();
    b[1] = 3;
    assert_eq!(
        Packet::new_checked(&b[..]).unwrap_err(),
        WireError::HeaderLengthTooSmall { header_len: 3 }
    );
}

#[test]
fn header_length_beyond_buffer() {
    let b = i1_bytes();
    assert_eq!(b.len(), 56);
    assert_eq!(
        Packet::new_checked(&b[..55]).unwrap_err(),
        WireError::HeaderLengthMismatch {
            declared: 56,
            available: 55
        }
    );
    let mut big = b.clone();
    big[1] = 255;
    assert_eq!(
        Packet::new_checked(&big[..]).unwrap_err(),
        WireError::HeaderLengthMismatch {
            declared: 2048,
            available: 56
        }
    );
}

#[test]
fn trailing_bytes_are_not_part_of_the_packet() {
    let mut b = i1_bytes();
    b.extend_from_slice(&[0xEE; 5]);
    let p = Packet::new_checked(&b[..]).unwrap();
    assert_eq!(p.trailing_bytes(), &[0xEE; 5]);
    assert_eq!(p.packet_bytes().len(), 56);
    assert!(PacketRepr::parse(&p).is_ok());
}

#[test]
fn wrong_version() {
    let mut b = i1_bytes();
    b[3] = 0x11;
    assert_eq!(
        Packet::new_checked(&b[..]).unwrap_err(),
        WireError::BadVersion(1)
    );
    b[3] = 0x31;
    assert_eq!(
        Packet::new_checked(&b[..]).unwrap_err(),
        WireError::BadVersion(3)
    );
}

#[test]
fn fixed_bits_are_ignored_on_receive() {
    // RFC 7401 §5.1: P and S are ignored by receivers.
    let mut b = i1_bytes();
    b[3] = 0x20; // S bit clear
    let p = Packet::new_checked(&b[..]).expect("S = 0 accepted");
    assert_eq!(p.packet_type(), PacketType::I1);
    assert_eq!(p.version(), 2);
    let mut b = i1_bytes();
    b[2] |= 0x80; // P bit set
    let p = Packet::new_checked(&b[..]).expect("P = 1 accepted");
    assert_eq!(p.packet_type(), PacketType::I1);
    b[3] = 0x20; // both
    assert!(PacketRepr::parse_bytes(&b).is_ok());
    // RES bits are ignored.
    let mut b = i1_bytes();
    b[3] = 0x2F;
    assert!(Packet::new_checked(&b[..]).is_ok());
}

#[test]
fn non_ascending_order_is_rejected() {
    let mut area = tlv(pt::SEQ, &[0, 0, 0, 1]);
    area.extend(tlv(pt::ESP_INFO, &[0; 12]));
    let b = packet_with_area(&area);
    let p = Packet::new_checked(&b[..]).unwrap();
    assert_eq!(
        PacketRepr::parse(&p).unwrap_err(),
        WireError::ParamOrder { prev: 385, ty: 65 }
    );
    // The raw iterator reports it too, after yielding the first parameter.
    let items: Vec<_> = p.params().collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert_eq!(items[1], Err(WireError::ParamOrder { prev: 385, ty: 65 }));
}

#[test]
fn repeated_types_only_when_adjacent() {
    let n = |t: u16| tlv(pt::NOTIFICATION, &[0, 0, 0, t as u8]);
    let mut ok = n(1);
    ok.extend(n(2));
    ok.extend(tlv(pt::HIP_SIGNATURE, &[0, 5, 1]));
    assert_eq!(parse_params(&ok).unwrap().len(), 3);

    let mut bad = n(1);
    bad.extend(tlv(pt::ECHO_REQUEST_SIGNED, &[1]));
    bad.extend(n(2));
    assert_eq!(
        parse_params(&bad).unwrap_err(),
        WireError::ParamOrder {
            prev: pt::ECHO_REQUEST_SIGNED,
            ty: pt::NOTIFICATION
        }
    );
}

#[test]
fn truncated_parameter() {
    // Length says 100 bytes but the area only has 16.
    let mut area = vec![0x01, 0x81, 0x00, 100];
    area.resize(16, 0);
    let b = packet_with_area(&area);
    let p = Packet::new_checked(&b[..]).unwrap();
    assert_eq!(
        PacketRepr::parse(&p).unwrap_err(),
        WireError::ParamTruncated { offset: 40 }
    );
    // An oversized length running past the Header Length but inside the
    // buffer is still truncated: the buffer beyond the packet is not used.
    let mut area = tlv(pt::SEQ, &[0, 0, 0, 1]);
    area[3] = 12;
    let mut b = packet_with_area(&area);
    b.extend_from_slice(&[0; 16]);
    assert_eq!(
        PacketRepr::parse_bytes(&b).unwrap_err(),
        WireError::ParamTruncated { offset: 40 }
    );
}

#[test]
fn known_parameter_bad_lengths() {
    let cases: &[(u16, &[u8])] = &[
        (pt::ESP_INFO, &[0; 11]),
        (pt::ESP_INFO, &[0; 13]),
        (pt::R1_COUNTER, &[0; 8]),
        (pt::PUZZLE, &[0; 3]),
        (pt::SOLUTION, &[0; 3]),
        (pt::SOLUTION, &[0; 7]),
        (pt::SEQ, &[0; 3]),
        (pt::SEQ, &[0; 8]),
        (pt::ACK, &[]),
        (pt::ACK, &[0; 6]),
        (pt::DIFFIE_HELLMAN, &[3, 0]),
        (pt::DIFFIE_HELLMAN, &[3, 0, 4, 1, 2, 3]),
        (pt::DIFFIE_HELLMAN, &[3, 0, 1, 9, 3, 0, 1, 9]),
        (pt::HIP_CIPHER, &[0, 2, 0]),
        (pt::NAT_TRAVERSAL_MODE, &[0]),
        (pt::NAT_TRAVERSAL_MODE, &[0, 0, 1]),
        (pt::TRANSACTION_PACING, &[0; 5]),
        (pt::ENCRYPTED, &[0; 3]),
        (pt::HOST_ID, &[0, 4, 0, 0, 0, 5, 1, 2, 3]),
        (pt::HOST_ID, &[0, 1, 0x10, 3, 0, 5, 1, 2]),
        (pt::HOST_ID, &[0, 1, 0, 0, 0, 5, 1, 2]),
        (pt::CERT, &[1, 1, 1]),
        (pt::NOTIFICATION, &[0, 0, 1]),
        (pt::REG_INFO, &[1]),
        (pt::REG_REQUEST, &[]),
        (pt::REG_RESPONSE, &[]),
        (pt::REG_FAILED, &[]),
        (pt::REG_FROM, &[0; 19]),
        (pt::TRANSPORT_FORMAT_LIST, &[0x0F]),
        (pt::ESP_TRANSFORM, &[0]),
        (pt::ESP_TRANSFORM, &[0, 0, 0]),
        (pt::RELAYED_ADDRESS, &[0; 21]),
        (pt::MAPPED_ADDRESS, &[0; 4]),
        (pt::PEER_PERMISSION, &[0; 47]),
        (pt::CANDIDATE_PRIORITY, &[0; 2]),
        (pt::NOMINATE, &[0; 6]),
        (pt::HIP_SIGNATURE, &[5]),
        (pt::HIP_SIGNATURE_2, &[]),
        (pt::RELAY_FROM, &[0; 16]),
        (pt::RELAY_TO, &[0; 24]),
        (pt::FROM, &[0; 15]),
        (pt::VIA_RVS, &[0; 20]),
    ];
    for &(ty, contents) in cases {
        assert!(
            matches!(
                Param::parse(ty, contents),
                Err(WireError::MalformedParam { ty: t, .. }) if t == ty
            ),
            "type {ty} contents {contents:?} gave {:?}",
            Param::parse(ty, contents)
        );
    }
}

#[test]
fn locator_set_bad_lengths() {
    // Type-0 locator with Locator Length 5.
    let mut c = vec![0, 0, 5, 1, 0, 0, 0, 10];
    c.extend_from_slice(&[0; 20]);
    assert!(matches!(
        Param::parse(pt::LOCATOR_SET, &c),
        Err(WireError::MalformedParam { ty: 193, .. })
    ));
    // Type-1 locator with Locator Length 4.
    let mut c = vec![0, 1, 4, 1, 0, 0, 0, 10];
    c.extend_from_slice(&[0; 16]);
    assert!(Param::parse(pt::LOCATOR_SET, &c).is_err());
    // Locator running past the parameter.
    let mut c = vec![0, 0, 4, 1, 0, 0, 0, 10];
    c.extend_from_slice(&[0; 12]);
    assert!(Param::parse(pt::LOCATOR_SET, &c).is_err());
    // Partial entry header.
    assert!(Param::parse(pt::LOCATOR_SET, &[0, 0, 4]).is_err());
    // Valid: one preferred type-1 locator, then an unknown type 9 of 1 word.
    let mut c = vec![1, 1, 5, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 7];
    c.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    c.extend_from_slice(&[2, 9, 1, 0, 0, 0, 0, 1, 0xDE, 0xAD, 0xBE, 0xEF]);
    assert_eq!(
        Param::parse(pt::LOCATOR_SET, &c).unwrap(),
        Param::LocatorSet(vec![
            Locator {
                traffic_type: TrafficType::Signalling,
                preferred: true,
                lifetime: u32::MAX,
                kind: LocatorKind::EspSpi {
                    spi: 7,
                    addr: Ipv6Addr::LOCALHOST
                },
            },
            Locator {
                traffic_type: TrafficType::Data,
                preferred: false,
                lifetime: 1,
                kind: LocatorKind::Unknown {
                    locator_type: 9,
                    data: vec![0xDE, 0xAD, 0xBE, 0xEF]
                },
            },
        ])
    );
}

#[test]
fn emit_rejects_unrepresentable_values() {
    let known_as_unknown = Param::Unknown {
        ty: pt::SEQ,
        contents: vec![0; 4],
    };
    assert!(matches!(
        known_as_unknown.to_tlv_bytes(),
        Err(WireError::Unrepresentable { ty: 385, .. })
    ));
    let sol = Param::Solution(Solution {
        k: 1,
        opaque: 0,
        random_i: vec![1; 4],
        solution_j: vec![2; 5],
    });
    assert!(sol.to_tlv_bytes().is_err());
    let hid = Param::HostId(HostId {
        algorithm: HiAlgorithm::Rsa,
        host_identity: vec![],
        di_type: 16,
        domain_identifier: vec![],
    });
    assert!(hid.to_tlv_bytes().is_err());
    let loc = Param::LocatorSet(vec![Locator {
        traffic_type: TrafficType::Both,
        preferred: false,
        lifetime: 1,
        kind: LocatorKind::Unknown {
            locator_type: 1,
            data: vec![0; 4],
        },
    }]);
    assert!(loc.to_tlv_bytes().is_err());
    assert!(Param::Ack(vec![]).to_tlv_bytes().is_err());
    let mut small = [0u8; 7];
    assert_eq!(
        Param::Seq(1).emit(&mut small),
        Err(WireError::BufferTooSmall {
            needed: 8,
            available: 7
        })
    );
}

#[test]
fn emit_rejects_oversized_packets() {
    let repr = PacketRepr::new(PacketType::R1, Hit::ZERO, Hit::ZERO)
        .with(Param::EchoRequestUnsigned(vec![0; 2005]));
    assert_eq!(repr.buffer_len(), 40 + 2016);
    assert_eq!(
        repr.to_bytes(ChecksumMode::Udp).unwrap_err(),
        WireError::PacketTooLong { len: 2056 }
    );
    // Exactly 2048 bytes is fine and gets Header Length 255.
    let repr = PacketRepr::new(PacketType::R1, Hit::ZERO, Hit::ZERO)
        .with(Param::EchoRequestUnsigned(vec![0; 2004]));
    let b = repr.to_bytes(ChecksumMode::Udp).unwrap();
    assert_eq!(b.len(), 2048);
    assert_eq!(b[1], 255);
    let mut buf = [0u8; 100];
    assert!(matches!(
        repr.emit(&mut buf),
        Err(WireError::BufferTooSmall { needed: 2048, .. })
    ));
    let bad_type = PacketRepr::new(PacketType::Unknown(200), Hit::ZERO, Hit::ZERO);
    assert!(bad_type.to_bytes(ChecksumMode::Udp).is_err());
}

#[test]
fn unknown_critical_in_packet() {
    let mut area = tlv(pt::SEQ, &[0, 0, 0, 1]);
    area.extend(tlv(40001, &[1, 2, 3]));
    let b = packet_with_area(&area);
    assert_eq!(
        PacketRepr::parse_bytes(&b).unwrap_err(),
        WireError::UnsupportedCriticalParam(40001)
    );
    // The raw view still lets the engine see it.
    let p = Packet::new_checked(&b[..]).unwrap();
    let raw = p.find_param(40001).unwrap().unwrap();
    assert!(raw.critical);
    assert_eq!(raw.contents, &[1, 2, 3]);
}

#[test]
fn anonymous_bit_and_unknown_controls() {
    let mut b = i1_bytes();
    b[6] = 0x80; // undefined control bit: ignored
    b[7] = 0x01; // A bit
    let r = PacketRepr::parse_bytes(&b).unwrap();
    assert!(r.anonymous);
    let out = r.to_bytes(ChecksumMode::Udp).unwrap();
    assert_eq!(&out[6..8], &[0, 1]);
}

#[test]
fn udp_classification() {
    let hip = i1_bytes();
    let mut framed = vec![0, 0, 0, 0];
    framed.extend_from_slice(&hip);
    assert_eq!(classify_udp(&framed), UdpPayload::Hip(&hip[..]));
    // Zero marker without a full HIP header.
    assert_eq!(classify_udp(&[0, 0, 0, 0, 1, 2]), UdpPayload::Invalid);
    // ESP: non-zero SPI and a sequence number.
    let esp = [0, 0, 1, 0, 0, 0, 0, 1, 0xAA];
    assert_eq!(classify_udp(&esp), UdpPayload::Esp(&esp[..]));
    assert_eq!(classify_udp(&[0, 0, 1, 0, 0]), UdpPayload::Invalid);
    assert_eq!(classify_udp(&[0xFF]), UdpPayload::Keepalive);
    assert_eq!(classify_udp(&[]), UdpPayload::Invalid);
    assert_eq!(classify_udp(&[1, 2, 3]), UdpPayload::Invalid);
    // STUN Binding Indication with an 8-byte attribute.
    let mut stun = vec![0x00, 0x11, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    stun.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 1, 2, 3, 4]);
    assert_eq!(classify_udp(&stun), UdpPayload::Stun(&stun[..]));
    // Wrong STUN length: treated as ESP (non-zero first word).
    stun.push(0);
    assert!(matches!(classify_udp(&stun), UdpPayload::Esp(_)));
    let mut out = [0u8; 100];
    let n = hip_proto::wire::udp::encapsulate_hip(&hip, &mut out).unwrap();
    assert_eq!(&out[..n], &framed[..]);
    assert!(hip_proto::wire::udp::encapsulate_hip(&hip, &mut out[..10]).is_none());
}

#[test]
fn nat_keepalive_notify() {
    let ka = PacketRepr::new(PacketType::Notify, Hit::from_u128(1), Hit::from_u128(2)).with(
        Param::Notification(hip_proto::wire::Notification {
            msg_type: hip_proto::wire::NotifyType::NatKeepalive,
            data: vec![],
        }),
    );
    assert!(ka.is_nat_keepalive());
    let bytes = ka.to_bytes(ChecksumMode::Udp).unwrap();
    assert!(PacketRepr::parse_bytes(&bytes).unwrap().is_nat_keepalive());
    let other = PacketRepr::new(PacketType::Update, Hit::ZERO, Hit::ZERO).with(Param::Seq(0));
    assert!(!other.is_nat_keepalive());
}

#[test]
fn hit_suite_list_low_nibble() {
    let p = Param::HitSuiteList(vec![0x10, 0x21, 0x50]);
    let s = p.hit_suites().unwrap();
    assert_eq!(s[0], Ok(hip_proto::wire::HitSuiteId::RsaDsaSha256));
    assert_eq!(s[1], Err(0x21));
    assert_eq!(s[2], Ok(hip_proto::wire::HitSuiteId::EdDsaCshake128));
    assert!(Param::Seq(1).hit_suites().is_none());
}

#[test]
fn lifetimes() {
    use hip_proto::wire::{reg_lifetime_encode, reg_lifetime_secs};
    assert_eq!(reg_lifetime_secs(0), None);
    assert_eq!(reg_lifetime_secs(64), Some(1.0));
    assert_eq!(reg_lifetime_secs(72), Some(2.0));
    // 10 s must be representable (RFC 8003): the encoding covers >= 10 s.
    let l = reg_lifetime_encode(10.0);
    assert!(reg_lifetime_secs(l).unwrap() >= 10.0);
    assert!(reg_lifetime_secs(l - 1).unwrap() < 10.0);
    let pz = hip_proto::wire::Puzzle {
        k: 1,
        lifetime: 37,
        opaque: 0,
        random_i: vec![],
    };
    assert_eq!(pz.lifetime_secs(), 32.0);
}
