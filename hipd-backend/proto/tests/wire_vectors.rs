//! Known-answer tests: RFC 7401 Appendix C checksums, exact layouts, MAC and
//! signature inputs.

use std::net::{Ipv4Addr, Ipv6Addr};

use hip_proto::wire::{
    ChecksumMode, DhGroupId, DiffieHellman, EspInfo, EspSuiteId, HiAlgorithm, HipCipherId, Hit,
    HostId, Packet, PacketRepr, PacketType, Param, Puzzle, R1Counter, Signature, WireError,
    checksum, param_type as pt,
};

fn hit(s: &str) -> Hit {
    s.parse().unwrap()
}

/// The I1 of RFC 7401 Appendix C: HITs 2001:20::1 -> 2001:20::2 with
/// DH_GROUP_LIST {3, 4, 8}, Header Length 5.
fn appendix_c_i1() -> PacketRepr {
    PacketRepr::new(PacketType::I1, hit("2001:20::1"), hit("2001:20::2")).with(Param::DhGroupList(
        vec![
            DhGroupId::Modp1536,
            DhGroupId::Modp3072,
            DhGroupId::NistP384,
        ],
    ))
}

#[test]
fn appendix_c_i1_bytes() {
    let bytes = appendix_c_i1().to_bytes(ChecksumMode::Udp).unwrap();
    let mut expected = vec![0x3b, 0x05, 0x01, 0x21, 0x00, 0x00, 0x00, 0x00];
    expected.extend_from_slice(&hit("2001:20::1").to_bytes());
    expected.extend_from_slice(&hit("2001:20::2").to_bytes());
    expected.extend_from_slice(&[0x01, 0xff, 0x00, 0x03, 0x03, 0x04, 0x08, 0x00]);
    assert_eq!(bytes, expected);
}

#[test]
fn appendix_c_checksum_ipv6() {
    let mode = ChecksumMode::Ipv6 {
        src: "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
        dst: "2001:db8::2".parse::<Ipv6Addr>().unwrap(),
    };
    let bytes = appendix_c_i1().to_bytes(mode).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.checksum(), 0x1a5e);
    assert!(p.verify_checksum(mode));
    // Recomputing over the packet with the field zeroed gives the same value.
    let mut z = bytes.clone();
    z[4] = 0;
    z[5] = 0;
    assert_eq!(checksum(mode, &z), 0x1a5e);
}

#[test]
fn appendix_c_checksum_ipv4() {
    let mode = ChecksumMode::Ipv4 {
        src: Ipv4Addr::new(192, 0, 2, 1),
        dst: Ipv4Addr::new(192, 0, 2, 2),
    };
    let bytes = appendix_c_i1().to_bytes(mode).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.checksum(), 0xf1ce);
    assert!(p.verify_checksum(mode));
    // A different address breaks verification.
    let other = ChecksumMode::Ipv4 {
        src: Ipv4Addr::new(192, 0, 2, 3),
        dst: Ipv4Addr::new(192, 0, 2, 2),
    };
    assert!(!p.verify_checksum(other));
}

#[test]
fn udp_mode_checksum_is_zero() {
    let bytes = appendix_c_i1().to_bytes(ChecksumMode::Udp).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.checksum(), 0);
    assert!(p.verify_checksum(ChecksumMode::Udp));
    let v6 = appendix_c_i1()
        .to_bytes(ChecksumMode::Ipv6 {
            src: Ipv6Addr::LOCALHOST,
            dst: Ipv6Addr::LOCALHOST,
        })
        .unwrap();
    assert!(
        !Packet::new_checked(&v6[..])
            .unwrap()
            .verify_checksum(ChecksumMode::Udp)
    );
}

#[test]
fn appendix_c_parses_back() {
    let bytes = appendix_c_i1().to_bytes(ChecksumMode::Udp).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    assert_eq!(p.next_header(), 59);
    assert_eq!(p.header_len(), 5);
    assert_eq!(p.total_len(), 48);
    assert_eq!(p.version(), 2);
    assert_eq!(p.packet_type(), PacketType::I1);
    assert_eq!(p.sender_hit(), hit("2001:20::1"));
    assert_eq!(p.receiver_hit(), hit("2001:20::2"));
    let raws: Vec<_> = p.params().collect::<Result<_, _>>().unwrap();
    assert_eq!(raws.len(), 1);
    assert_eq!(raws[0].ty, 511);
    assert!(raws[0].critical);
    assert_eq!(raws[0].contents, &[3, 4, 8]);
    assert_eq!(raws[0].offset, 40);
    assert_eq!(PacketRepr::parse(&p).unwrap(), appendix_c_i1());
}

fn sample_host_id() -> HostId {
    HostId {
        algorithm: HiAlgorithm::Ecdsa,
        host_identity: [&[0u8, 1][..], &[0xAB; 64][..]].concat(),
        di_type: 1,
        domain_identifier: b"\x04host\x07example\x00".to_vec(),
    }
}

fn sample_r1() -> PacketRepr {
    PacketRepr::new(PacketType::R1, hit("2001:21::aa"), hit("2001:21::bb"))
        .with(Param::HipSignature2(Signature {
            algorithm: HiAlgorithm::Ecdsa,
            signature: vec![0x55; 64],
        }))
        .with(Param::Puzzle(Puzzle {
            k: 10,
            lifetime: 37,
            opaque: 0xBEEF,
            random_i: vec![0x11; 32],
        }))
        .with(Param::R1Counter(R1Counter {
            reserved: 0,
            counter: 7,
        }))
        .with(Param::DiffieHellman(DiffieHellman {
            group: DhGroupId::NistP256,
            public_value: vec![0x22; 64],
        }))
        .with(Param::DhGroupList(vec![
            DhGroupId::NistP256,
            DhGroupId::Modp1536,
        ]))
        .with(Param::HipCipher(vec![
            HipCipherId::Aes128Cbc,
            HipCipherId::Aes256Cbc,
        ]))
        .with(Param::HostId(sample_host_id()))
        .with(Param::HitSuiteList(vec![0x10, 0x20]))
        .with(Param::TransportFormatList(vec![pt::ESP_TRANSFORM]))
        .with(Param::EspTransform(vec![EspSuiteId::Aes128CbcHmacSha256]))
        .with(Param::EchoRequestUnsigned(vec![1, 2, 3]))
}

#[test]
fn emit_sorts_parameters_ascending() {
    let bytes = sample_r1().to_bytes(ChecksumMode::Udp).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    let types: Vec<u16> = p.params().map(|r| r.unwrap().ty).collect();
    assert_eq!(
        types,
        vec![129, 257, 511, 513, 579, 705, 715, 2049, 4095, 61633, 63661]
    );
    let mut sorted = sample_r1();
    sorted.sort_params();
    assert_eq!(PacketRepr::parse(&p).unwrap(), sorted);
}

#[test]
fn host_id_layout() {
    let tlv = Param::HostId(sample_host_id()).to_tlv_bytes().unwrap();
    // Type 705, Length = 6 + 66 + 14 = 86.
    assert_eq!(&tlv[..4], &[0x02, 0xC1, 0x00, 86]);
    // HI length 66, DI-Type 1 | DI length 14, algorithm 7.
    assert_eq!(&tlv[4..10], &[0x00, 66, 0x10, 14, 0x00, 7]);
    assert_eq!(tlv.len(), 96); // 4 + 86 rounded up to 8
    assert!(tlv[90..].iter().all(|&b| b == 0));
    assert_eq!(sample_host_id().curve_label(), Some(1));
}

#[test]
fn esp_info_layout() {
    let tlv = Param::EspInfo(EspInfo {
        keymat_index: 96,
        old_spi: 0,
        new_spi: 0x0102_0304,
    })
    .to_tlv_bytes()
    .unwrap();
    assert_eq!(tlv, vec![0, 65, 0, 12, 0, 0, 0, 96, 0, 0, 0, 0, 1, 2, 3, 4]);
}

#[test]
fn tlv_padding_formula() {
    for len in 0..100usize {
        let rfc = 11 + len - (len + 3) % 8;
        assert_eq!(hip_proto::wire::tlv_total_len(len), rfc, "len {len}");
    }
}

#[test]
fn mac_input_cuts_before_mac_and_rewrites_length() {
    let mut i2 = PacketRepr::new(PacketType::I2, hit("2001:21::1"), hit("2001:21::2"))
        .with(Param::Seq(1))
        .with(Param::HipMac(vec![0xAA; 32]))
        .with(Param::HipSignature(Signature {
            algorithm: HiAlgorithm::Rsa,
            signature: vec![0xBB; 10],
        }))
        .with(Param::EchoResponseUnsigned(vec![9; 4]));
    i2.sort_params();
    let ip = ChecksumMode::Ipv6 {
        src: Ipv6Addr::LOCALHOST,
        dst: Ipv6Addr::LOCALHOST,
    };
    let bytes = i2.to_bytes(ip).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    let mac_in = p.mac_input(pt::HIP_MAC).unwrap();
    // header 40 + SEQ 8 = 48 bytes -> Header Length 5, checksum zero.
    assert_eq!(mac_in.len(), 48);
    assert_eq!(mac_in[1], 5);
    assert_eq!(&mac_in[4..6], &[0, 0]);
    assert_eq!(&mac_in[6..48], &bytes[6..48]);
    // Signature covers the HIP_MAC too: 48 + 8 + 32 = 88.
    let sig_in = p.mac_input(pt::HIP_SIGNATURE).unwrap();
    assert_eq!(sig_in.len(), 88);
    assert_eq!(sig_in[1], 10);
    assert_eq!(&sig_in[6..88], &bytes[6..88]);
    // Sender side: the same bytes before the MAC exists.
    let before = PacketRepr {
        params: vec![Param::Seq(1)],
        ..i2.clone()
    };
    assert_eq!(before.mac_input(pt::HIP_MAC).unwrap(), mac_in);
    assert_eq!(i2.mac_input(pt::HIP_MAC).unwrap(), mac_in);
}

#[test]
fn mac2_input_appends_host_id_as_sent() {
    let r1 = sample_r1().to_bytes(ChecksumMode::Udp).unwrap();
    let r1p = Packet::new_checked(&r1[..]).unwrap();
    let host_id_tlv = r1p.find_param(pt::HOST_ID).unwrap().unwrap().tlv.to_vec();
    assert_eq!(host_id_tlv.len(), 96);
    let r2 = PacketRepr::new(PacketType::R2, hit("2001:21::aa"), hit("2001:21::bb"))
        .with(Param::EspInfo(EspInfo {
            keymat_index: 96,
            old_spi: 0,
            new_spi: 5,
        }))
        .with(Param::HipMac2(vec![0; 32]))
        .with(Param::HipSignature(Signature {
            algorithm: HiAlgorithm::Ecdsa,
            signature: vec![1; 64],
        }));
    let bytes = r2.to_bytes(ChecksumMode::Udp).unwrap();
    let input = Packet::new_checked(&bytes[..])
        .unwrap()
        .mac2_input(&host_id_tlv)
        .unwrap();
    assert_eq!(input.len(), 40 + 16 + 96);
    assert_eq!(input[1], ((40 + 16 + 96) / 8 - 1) as u8);
    assert_eq!(&input[40..56], &bytes[40..56]);
    assert_eq!(&input[56..], &host_id_tlv[..]);
    assert_eq!(r2.mac2_input(&host_id_tlv).unwrap(), input);
    assert!(matches!(
        r2.mac2_input(&host_id_tlv[..95]),
        Err(WireError::MalformedParam { ty: 705, .. })
    ));
}

#[test]
fn signature2_input_zeroes_receiver_hit_and_puzzle() {
    let bytes = sample_r1().to_bytes(ChecksumMode::Udp).unwrap();
    let p = Packet::new_checked(&bytes[..]).unwrap();
    let input = p.signature2_input().unwrap();
    let sig2 = p.find_param(pt::HIP_SIGNATURE_2).unwrap().unwrap();
    assert_eq!(input.len(), sig2.offset);
    assert_eq!(usize::from(input[1]), input.len() / 8 - 1);
    assert_eq!(&input[24..40], &[0; 16]);
    assert_eq!(&input[8..24], &bytes[8..24]);
    let puzzle = p.find_param(pt::PUZZLE).unwrap().unwrap();
    let o = puzzle.offset;
    // #K and Lifetime kept, Opaque and #I zero.
    assert_eq!(&input[o + 4..o + 6], &[10, 37]);
    assert!(input[o + 6..o + 8 + 32].iter().all(|&b| b == 0));
    // Everything else between the header and the signature is unchanged.
    assert_eq!(&input[o + 8 + 32..], &bytes[o + 8 + 32..sig2.offset]);
    assert_eq!(sample_r1().signature2_input().unwrap(), input);
    // The R1's own puzzle bytes are untouched.
    assert_eq!(&bytes[o + 6..o + 8], &[0xBE, 0xEF]);
}

#[test]
fn hit_display_and_conversions() {
    let h = hit("2001:21::1");
    assert_eq!(h.to_string(), "2001:21::1");
    assert_eq!(Ipv6Addr::from(h), "2001:21::1".parse::<Ipv6Addr>().unwrap());
    assert!(h.is_orchid_v2());
    assert_eq!(h.suite(), Some(hip_proto::wire::HitSuiteId::RsaDsaSha256));
    assert!(hit("2001:10::1").is_orchid_v1());
    assert_eq!(hit("2001:10::1").suite(), None);
    assert!(hit("2001:21::1") < hit("2001:21::2"));
    assert!(hit("2001:21::ff") < hit("2001:22::1"));
    assert_eq!(Hit::from_u128(h.to_u128()), h);
    assert!(Hit::ZERO.is_zero());
    assert!(hip_proto::wire::Lsi::new(Ipv4Addr::new(1, 0, 0, 5)).is_some());
    assert!(hip_proto::wire::Lsi::new(Ipv4Addr::new(10, 0, 0, 5)).is_none());
}
