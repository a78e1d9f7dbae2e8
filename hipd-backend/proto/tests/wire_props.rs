//! Property tests: round trips for every parameter and for whole packets,
//! and "never panics" over random bytes and mutated valid packets.

use std::net::Ipv6Addr;

use hip_proto::wire::{
    CandidateKind, Cert, ChecksumMode, DhGroupId, DiffieHellman, Encrypted, EspInfo, EspSuiteId,
    HiAlgorithm, HipCipherId, Hit, HostId, Locator, LocatorKind, NatLocator, NatMode, Notification,
    NotifyType, Packet, PacketRepr, PacketType, Param, PeerPermission, Puzzle, R1Counter,
    RegFailed, RegFailureType, RegInfo, RegLifetimeTypes, RegType, Signature, Solution,
    TrafficType, TransportAddress, UdpPayload, WireError, classify_udp, emit_params,
    param_type as pt, parse_params,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn ip6() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

fn ta() -> impl Strategy<Value = TransportAddress> {
    (any::<u16>(), any::<u8>(), ip6()).prop_map(|(port, protocol, addr)| TransportAddress {
        port,
        protocol,
        addr,
    })
}

fn sig() -> impl Strategy<Value = Signature> {
    (any::<u16>(), bytes(80)).prop_map(|(a, s)| Signature {
        algorithm: HiAlgorithm::from(a),
        signature: s,
    })
}

fn reg_types() -> impl Strategy<Value = Vec<RegType>> {
    vec(any::<u8>().prop_map(RegType::from), 0..6)
}

fn locator() -> impl Strategy<Value = Locator> {
    let kind = prop_oneof![
        ip6().prop_map(LocatorKind::Address),
        (any::<u32>(), ip6()).prop_map(|(spi, addr)| LocatorKind::EspSpi { spi, addr }),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u32>(),
            ip6()
        )
            .prop_map(
                |(port, protocol, kind, priority, spi, addr)| LocatorKind::Nat(NatLocator {
                    port,
                    protocol,
                    kind: CandidateKind::from(kind),
                    priority,
                    spi,
                    addr,
                })
            ),
        (3u8..=255, vec(any::<[u8; 4]>(), 0..4)).prop_map(|(t, words)| LocatorKind::Unknown {
            locator_type: t,
            data: words.concat(),
        }),
    ];
    (any::<u8>(), any::<bool>(), any::<u32>(), kind).prop_map(|(tt, preferred, lifetime, kind)| {
        Locator {
            traffic_type: TrafficType::from(tt),
            preferred,
            lifetime,
            kind,
        }
    })
}

/// One strategy per parameter variant (every typed variant plus Unknown).
fn param() -> BoxedStrategy<Param> {
    let unknown_ty = any::<u16>()
        .prop_map(|t| t & !1)
        .prop_filter("typed", |t| !pt::is_known(*t));
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u32>())
            .prop_map(|(k, o, n)| Param::EspInfo(EspInfo {
                keymat_index: k,
                old_spi: o,
                new_spi: n
            }))
            .boxed(),
        (any::<u32>(), any::<u64>())
            .prop_map(|(reserved, counter)| Param::R1Counter(R1Counter { reserved, counter }))
            .boxed(),
        vec(locator(), 0..4).prop_map(Param::LocatorSet).boxed(),
        (any::<u8>(), any::<u8>(), any::<u16>(), bytes(48))
            .prop_map(|(k, lifetime, opaque, random_i)| Param::Puzzle(Puzzle {
                k,
                lifetime,
                opaque,
                random_i
            }))
            .boxed(),
        (any::<u8>(), any::<u16>(), vec(any::<(u8, u8)>(), 0..48))
            .prop_map(|(k, opaque, ij)| Param::Solution(Solution {
                k,
                opaque,
                random_i: ij.iter().map(|p| p.0).collect(),
                solution_j: ij.iter().map(|p| p.1).collect(),
            }))
            .boxed(),
        any::<u32>().prop_map(Param::Seq).boxed(),
        vec(any::<u32>(), 1..6).prop_map(Param::Ack).boxed(),
        vec(any::<u8>().prop_map(DhGroupId::from), 0..8)
            .prop_map(Param::DhGroupList)
            .boxed(),
        (any::<u8>(), bytes(200))
            .prop_map(|(g, pv)| Param::DiffieHellman(DiffieHellman {
                group: DhGroupId::from(g),
                public_value: pv
            }))
            .boxed(),
        vec(any::<u16>().prop_map(HipCipherId::from), 0..8)
            .prop_map(Param::HipCipher)
            .boxed(),
        vec(any::<u16>().prop_map(NatMode::from), 0..8)
            .prop_map(Param::NatTraversalMode)
            .boxed(),
        any::<u32>().prop_map(Param::TransactionPacing).boxed(),
        (any::<u32>(), bytes(120))
            .prop_map(|(reserved, d)| Param::Encrypted(Encrypted {
                reserved,
                iv_and_ciphertext: d
            }))
            .boxed(),
        (any::<u16>(), bytes(150), 0u8..16, bytes(40))
            .prop_map(|(a, hi, dt, di)| Param::HostId(HostId {
                algorithm: HiAlgorithm::from(a),
                host_identity: hi,
                di_type: dt,
                domain_identifier: di,
            }))
            .boxed(),
        bytes(8).prop_map(Param::HitSuiteList).boxed(),
        (any::<[u8; 4]>(), bytes(60))
            .prop_map(|(h, data)| Param::Cert(Cert {
                group: h[0],
                count: h[1],
                id: h[2],
                cert_type: h[3],
                data
            }))
            .boxed(),
        (any::<u16>(), bytes(40))
            .prop_map(|(t, data)| Param::Notification(Notification {
                msg_type: NotifyType::from(t),
                data
            }))
            .boxed(),
        bytes(40).prop_map(Param::EchoRequestSigned).boxed(),
        (any::<u8>(), any::<u8>(), reg_types())
            .prop_map(|(a, b, types)| Param::RegInfo(RegInfo {
                min_lifetime: a,
                max_lifetime: b,
                types
            }))
            .boxed(),
        (any::<u8>(), reg_types())
            .prop_map(|(lifetime, types)| Param::RegRequest(RegLifetimeTypes { lifetime, types }))
            .boxed(),
        (any::<u8>(), reg_types())
            .prop_map(|(lifetime, types)| Param::RegResponse(RegLifetimeTypes { lifetime, types }))
            .boxed(),
        (any::<u8>(), reg_types())
            .prop_map(|(f, types)| Param::RegFailed(RegFailed {
                failure: RegFailureType::from(f),
                types
            }))
            .boxed(),
        ta().prop_map(Param::RegFrom).boxed(),
        bytes(40).prop_map(Param::EchoResponseSigned).boxed(),
        vec(any::<u16>(), 0..6)
            .prop_map(Param::TransportFormatList)
            .boxed(),
        vec(any::<u16>().prop_map(EspSuiteId::from), 0..8)
            .prop_map(Param::EspTransform)
            .boxed(),
        ta().prop_map(Param::RelayedAddress).boxed(),
        ta().prop_map(Param::MappedAddress).boxed(),
        (
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            ip6(),
            ip6(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(rport, pport, protocol, raddr, paddr, ospi, ispi)| {
                Param::PeerPermission(PeerPermission {
                    rport,
                    pport,
                    protocol,
                    raddr,
                    paddr,
                    ospi,
                    ispi,
                })
            })
            .boxed(),
        any::<u32>().prop_map(Param::CandidatePriority).boxed(),
        any::<u32>().prop_map(Param::Nominate).boxed(),
        bytes(64).prop_map(Param::HipMac).boxed(),
        bytes(64).prop_map(Param::HipMac2).boxed(),
        sig().prop_map(Param::HipSignature2).boxed(),
        sig().prop_map(Param::HipSignature).boxed(),
        bytes(40).prop_map(Param::EchoResponseUnsigned).boxed(),
        bytes(40).prop_map(Param::EchoRequestUnsigned).boxed(),
        ta().prop_map(Param::RelayFrom).boxed(),
        ta().prop_map(Param::RelayTo).boxed(),
        ip6().prop_map(Param::From).boxed(),
        bytes(48).prop_map(Param::RvsHmac).boxed(),
        vec(ip6(), 0..4).prop_map(Param::ViaRvs).boxed(),
        bytes(48).prop_map(Param::RelayHmac).boxed(),
        (unknown_ty, bytes(60))
            .prop_map(|(ty, contents)| Param::Unknown { ty, contents })
            .boxed(),
    ]
    .boxed()
}

fn hit() -> impl Strategy<Value = Hit> {
    any::<[u8; 16]>().prop_map(Hit::from_bytes)
}

fn packet() -> impl Strategy<Value = PacketRepr> {
    (0u8..128, any::<bool>(), hit(), hit(), vec(param(), 0..8))
        .prop_map(|(t, anonymous, s, r, params)| PacketRepr {
            packet_type: PacketType::from(t),
            anonymous,
            sender_hit: s,
            receiver_hit: r,
            params,
        })
        .prop_filter("fits in 2048 bytes", |p| p.buffer_len() <= 2048)
}

/// Parses, and if that works, checks that re-emitting gives bytes that
/// parse to the same value. Exercises every read-only accessor too.
fn exercise(data: &[u8]) {
    let _ = classify_udp(data);
    let p = Packet::new_unchecked(data);
    let _ = (
        p.packet_type(),
        p.sender_hit(),
        p.receiver_hit(),
        p.checksum(),
    );
    let _ = p.params().count();
    let Ok(p) = Packet::new_checked(data) else {
        return;
    };
    let _ = p.verify_checksum(ChecksumMode::Udp);
    let _ = p.mac_input(pt::HIP_MAC);
    let _ = p.mac_input(pt::HIP_SIGNATURE);
    let _ = p.signature2_input();
    let _ = p.mac2_input(&[0; 16]);
    if let Ok(repr) = PacketRepr::parse(&p) {
        let bytes = repr
            .to_bytes(ChecksumMode::Udp)
            .expect("parsed repr must emit");
        let again = PacketRepr::parse_bytes(&bytes).expect("emitted packet must parse");
        assert_eq!(again, repr);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_param_round_trips(p in param()) {
        let tlv = p.to_tlv_bytes().unwrap();
        prop_assert_eq!(tlv.len(), p.buffer_len());
        prop_assert_eq!(tlv.len() % 8, 0);
        let ty = u16::from_be_bytes([tlv[0], tlv[1]]);
        let len = usize::from(u16::from_be_bytes([tlv[2], tlv[3]]));
        prop_assert_eq!(ty, p.param_type());
        prop_assert_eq!(len, p.contents_len());
        prop_assert!(tlv[4 + len..].iter().all(|&b| b == 0));
        prop_assert_eq!(Param::parse(ty, &tlv[4..4 + len]).unwrap(), p.clone());
        prop_assert_eq!(parse_params(&tlv).unwrap(), vec![p]);
    }

    #[test]
    fn param_sequences_round_trip(ps in vec(param(), 0..6)) {
        let mut sorted = ps.clone();
        sorted.sort_by_key(Param::param_type);
        let bytes = emit_params(&ps).unwrap();
        prop_assert_eq!(parse_params(&bytes).unwrap(), sorted);
    }

    #[test]
    fn packets_round_trip(repr in packet()) {
        let bytes = repr.to_bytes(ChecksumMode::Udp).unwrap();
        prop_assert_eq!(bytes.len(), repr.buffer_len());
        let mut sorted = repr.clone();
        sorted.sort_params();
        let parsed = PacketRepr::parse_bytes(&bytes).unwrap();
        prop_assert_eq!(&parsed, &sorted);
        // Parameter types on the wire are non-decreasing.
        let p = Packet::new_checked(&bytes[..]).unwrap();
        let types: Vec<u16> = p.params().map(|r| r.unwrap().ty).collect();
        prop_assert!(types.windows(2).all(|w| w[0] <= w[1]));
        // Under UDP framing the classifier finds the same packet.
        let framed = hip_proto::wire::udp::encapsulate_hip_vec(&bytes);
        prop_assert_eq!(classify_udp(&framed), UdpPayload::Hip(&bytes[..]));
    }

    #[test]
    fn checksum_round_trip(repr in packet(), src in ip6(), dst in ip6()) {
        let mode = ChecksumMode::Ipv6 { src, dst };
        let bytes = repr.to_bytes(mode).unwrap();
        let p = Packet::new_checked(&bytes[..]).unwrap();
        prop_assert!(p.verify_checksum(mode));
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        prop_assert!(!Packet::new_checked(&bad[..]).unwrap().verify_checksum(mode));
    }

    #[test]
    fn random_bytes_never_panic(data in bytes(2200)) {
        exercise(&data);
    }

    #[test]
    fn random_bytes_with_valid_header_never_panic(
        t in 0u8..128,
        body in bytes(400),
        extra in 0usize..16,
    ) {
        let len = (40 + body.len()) / 8 * 8;
        let mut data = vec![0u8; 40];
        data[0] = 59;
        data[1] = (len / 8 - 1) as u8;
        data[2] = t;
        data[3] = 0x21;
        data.extend_from_slice(&body);
        data.truncate(len + extra.min(body.len()));
        exercise(&data);
    }

    #[test]
    fn random_tlvs_of_known_types_never_panic(
        tlvs in vec((prop::sample::select(pt::KNOWN), bytes(64)), 0..8),
    ) {
        let mut area = Vec::new();
        let mut sorted = tlvs.clone();
        sorted.sort_by_key(|t| t.0);
        for (ty, c) in &sorted {
            area.extend_from_slice(&ty.to_be_bytes());
            area.extend_from_slice(&(c.len() as u16).to_be_bytes());
            area.extend_from_slice(c);
            area.resize(area.len().div_ceil(8) * 8, 0);
        }
        let _ = parse_params(&area);
        let mut data = vec![59u8, 0, 16, 0x21];
        data.resize(40, 0);
        data.extend_from_slice(&area);
        if data.len() <= 2048 {
            data[1] = (data.len() / 8 - 1) as u8;
            exercise(&data);
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        repr in packet(),
        muts in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut bytes = repr.to_bytes(ChecksumMode::Udp).unwrap();
        for (i, v) in muts {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if do_cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        exercise(&bytes);
    }
}

#[test]
fn unknown_critical_parameter_is_a_distinct_error() {
    // Type 1023 (critical, not defined) between two known ones.
    let mut area = Param::Seq(1).to_tlv_bytes().unwrap();
    area.extend_from_slice(&[0x03, 0xFF, 0x00, 0x02, 0xAA, 0xBB, 0, 0]);
    assert_eq!(
        parse_params(&area),
        Err(WireError::UnsupportedCriticalParam(1023))
    );
    // Non-critical 1022 is kept verbatim.
    let mut area = Param::Seq(1).to_tlv_bytes().unwrap();
    area.extend_from_slice(&[0x03, 0xFE, 0x00, 0x02, 0xAA, 0xBB, 0, 0]);
    assert_eq!(
        parse_params(&area).unwrap(),
        vec![
            Param::Seq(1),
            Param::Unknown {
                ty: 1022,
                contents: vec![0xAA, 0xBB]
            }
        ]
    );
}
