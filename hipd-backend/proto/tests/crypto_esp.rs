//! ESP BEET security associations: round trips, tampering, anti-replay, ESN,
//! inner checksums, LSIs, batches, dummy packets (keepalives).

use std::net::Ipv4Addr;

use hip_proto::crypto::esp::{DUMMY_NEXT_HEADER, Opened, ReplayWindow, open_buffer_len, peek_spi};
use hip_proto::crypto::{
    BeetAddrs, EspError, EspSuite, GcmKeySize, Hit, InnerFamily, Lsi, OpensslBackend, SaDirection,
    SaParams, SecurityAssociation,
};
use proptest::prelude::*;

const SUITES: [EspSuite; 7] = [
    EspSuite::Aes128CbcSha1,
    EspSuite::NullSha256,
    EspSuite::Aes128CbcSha256,
    EspSuite::Aes256CbcSha256,
    EspSuite::AesGcm8(GcmKeySize::Aes128),
    EspSuite::AesGcm16(GcmKeySize::Aes128),
    EspSuite::AesGcm16(GcmKeySize::Aes256),
];

fn hit(last: u8) -> Hit {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x21]);
    b[8] = 0xAA;
    b[15] = last;
    Hit::from_bytes(b)
}

fn lsi(last: u8) -> Lsi {
    Lsi::new(Ipv4Addr::new(1, 0, 0, last)).unwrap()
}

struct Pair {
    tx: SecurityAssociation,
    rx: SecurityAssociation,
}

fn keys(suite: EspSuite, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let e = (0..suite.enc_key_len()).map(|i| i as u8 ^ seed).collect();
    let a = (0..suite.auth_key_len())
        .map(|i| (i as u8).wrapping_mul(7) ^ seed)
        .collect();
    (e, a)
}

fn pair_with(suite: EspSuite, window: usize, lsis: bool, deliver: InnerFamily) -> Pair {
    let (e, a) = keys(suite, 0x5C);
    let (ha, hb) = (hit(1), hit(2));
    let mk = |dir, local, peer, l: Option<(Lsi, Lsi)>, deliver| {
        SecurityAssociation::new(
            &OpensslBackend::new(),
            SaParams {
                spi: 0xABCD_0001,
                suite,
                enc_key: &e,
                auth_key: &a,
                direction: dir,
                beet: BeetAddrs {
                    local_hit: local,
                    peer_hit: peer,
                    lsis: l,
                    deliver_as: deliver,
                },
                replay_window: window,
                iv_seed: [0x77; 32],
            },
        )
        .unwrap()
    };
    let (la, lb) = (lsi(1), lsi(2));
    Pair {
        tx: mk(
            SaDirection::Outbound,
            ha,
            hb,
            lsis.then_some((la, lb)),
            InnerFamily::V6,
        ),
        rx: mk(
            SaDirection::Inbound,
            hb,
            ha,
            lsis.then_some((lb, la)),
            deliver,
        ),
    }
}

fn pair(suite: EspSuite) -> Pair {
    pair_with(suite, 1024, false, InnerFamily::V6)
}

// ---- checksum helpers (independent of the crate)

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        s += u32::from(w);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

fn v6_pseudo(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u32 {
    sum16(src) + sum16(dst) + seg.len() as u32 + u32::from(proto) + sum16(seg)
}

fn v4_pseudo(src: &[u8], dst: &[u8], proto: u8, seg: &[u8]) -> u32 {
    sum16(src) + sum16(dst) + seg.len() as u32 + u32::from(proto) + sum16(seg)
}

fn tcp_segment(payload_len: usize) -> Vec<u8> {
    let mut seg = vec![0u8; 20 + payload_len];
    seg[0..2].copy_from_slice(&40000u16.to_be_bytes());
    seg[2..4].copy_from_slice(&80u16.to_be_bytes());
    seg[4..8].copy_from_slice(&12345u32.to_be_bytes());
    seg[12] = 5 << 4;
    seg[13] = 0x18;
    seg[14..16].copy_from_slice(&65535u16.to_be_bytes());
    for (i, b) in seg[20..].iter_mut().enumerate() {
        *b = (i * 13) as u8;
    }
    seg
}

fn ipv6_packet(src: &Hit, dst: &Hit, proto: u8, mut seg: Vec<u8>) -> Vec<u8> {
    let off = if proto == 6 { 16 } else { 6 };
    seg[off..off + 2].copy_from_slice(&[0, 0]);
    let c = !fold(v6_pseudo(src.as_bytes(), dst.as_bytes(), proto, &seg));
    seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    p[6] = proto;
    p[7] = 64;
    p[8..24].copy_from_slice(src.as_bytes());
    p[24..40].copy_from_slice(dst.as_bytes());
    p.extend_from_slice(&seg);
    p
}

fn ipv4_packet(src: Lsi, dst: Lsi, proto: u8, mut seg: Vec<u8>, zero_udp_csum: bool) -> Vec<u8> {
    let off = if proto == 6 { 16 } else { 6 };
    seg[off..off + 2].copy_from_slice(&[0, 0]);
    if !zero_udp_csum {
        let c = !fold(v4_pseudo(
            &src.addr().octets(),
            &dst.addr().octets(),
            proto,
            &seg,
        ));
        seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.addr().octets());
    h[16..20].copy_from_slice(&dst.addr().octets());
    let c = !fold(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&seg);
    h
}

fn udp_segment(len: usize) -> Vec<u8> {
    let mut s = vec![0u8; 8 + len];
    s[0..2].copy_from_slice(&5353u16.to_be_bytes());
    s[2..4].copy_from_slice(&9999u16.to_be_bytes());
    s[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    for (i, b) in s[8..].iter_mut().enumerate() {
        *b = i as u8 ^ 0x3C;
    }
    s
}

fn seal(sa: &mut SecurityAssociation, inner: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; sa.seal_buffer_len(inner.len())];
    let n = sa.seal(inner, &mut out).expect("seal");
    out.truncate(n);
    out
}

fn open(sa: &mut SecurityAssociation, esp: &[u8]) -> Result<Vec<u8>, EspError> {
    let mut out = vec![0u8; open_buffer_len(esp.len())];
    let o = sa.open(esp, 61, &mut out)?;
    out.truncate(o.len);
    Ok(out)
}

#[test]
fn round_trip_every_suite_and_inner_checksum_valid() {
    for suite in SUITES {
        let mut p = pair(suite);
        for (proto, seg) in [
            (6u8, tcp_segment(0)),
            (6, tcp_segment(1)),
            (6, tcp_segment(1360)),
            (17, udp_segment(0)),
            (17, udp_segment(31)),
        ] {
            let inner = ipv6_packet(&hit(1), &hit(2), proto, seg.clone());
            let esp = seal(&mut p.tx, &inner);
            assert_eq!(esp.len(), p.tx.sealed_len_for_payload(seg.len()));
            assert_eq!(peek_spi(&esp), Some(0xABCD_0001));
            if suite != EspSuite::NullSha256 && seg.len() >= 16 {
                assert!(
                    !esp.windows(16).any(|w| w == &seg[seg.len() - 16..]),
                    "{suite:?}: plaintext visible"
                );
            }
            let back = open(&mut p.rx, &esp).expect("open");
            // Rebuilt header: peer HIT -> local HIT, outer hop limit.
            assert_eq!(back[0] >> 4, 6);
            assert_eq!(&back[8..24], hit(1).as_bytes());
            assert_eq!(&back[24..40], hit(2).as_bytes());
            assert_eq!(back[6], proto);
            assert_eq!(back[7], 61);
            assert_eq!(
                usize::from(u16::from_be_bytes([back[4], back[5]])),
                seg.len()
            );
            assert_eq!(&back[40..], &inner[40..], "{suite:?}");
            // Transport checksum verifies against the rebuilt header.
            assert_eq!(
                fold(v6_pseudo(&back[8..24], &back[24..40], proto, &back[40..])),
                0xFFFF,
                "{suite:?} proto {proto}"
            );
        }
    }
}

fn open_full(sa: &mut SecurityAssociation, esp: &[u8]) -> Result<Opened, EspError> {
    let mut out = vec![0u8; open_buffer_len(esp.len())];
    sa.open(esp, 61, &mut out)
}

fn dummy(sa: &mut SecurityAssociation) -> Vec<u8> {
    let mut out = vec![0u8; sa.seal_buffer_len(0)];
    let n = sa.seal_dummy(&mut out).expect("seal_dummy");
    out.truncate(n);
    out
}

#[test]
fn dummy_packets_round_trip_in_every_suite() {
    for suite in SUITES {
        let mut p = pair(suite);
        let inner = ipv6_packet(&hit(1), &hit(2), 6, tcp_segment(10));
        let a = seal(&mut p.tx, &inner);
        let d = dummy(&mut p.tx);
        let b = seal(&mut p.tx, &inner);
        assert_eq!(d.len(), p.tx.sealed_len_for_payload(0), "{suite:?}");
        assert_eq!(peek_spi(&d), Some(0xABCD_0001));
        assert_eq!(p.tx.last_seq_sent(), 3, "a dummy uses a sequence number");
        let oa = open_full(&mut p.rx, &a).expect("open a");
        assert!(!oa.dummy, "normal packets are not dummies");
        assert_eq!(oa.next_header, 6);
        assert_eq!(oa.len, inner.len());
        let od = open_full(&mut p.rx, &d).expect("open dummy");
        assert!(od.dummy, "{suite:?}");
        assert_eq!(od.len, 40, "an empty IPv6 packet with protocol 59");
        assert_eq!(od.seq, 2);
        assert_eq!(od.next_header, DUMMY_NEXT_HEADER);
        let ob = open_full(&mut p.rx, &b).expect("open b");
        assert!(!ob.dummy);
        assert_eq!(ob.seq, 3);
    }
}

#[test]
fn dummy_packets_are_authenticated_and_replay_checked() {
    let mut p = pair(EspSuite::AesGcm16(GcmKeySize::Aes128));
    let d = dummy(&mut p.tx);
    assert!(open_full(&mut p.rx, &d).expect("open").dummy);
    assert_eq!(open_full(&mut p.rx, &d), Err(EspError::Replay(1)));
    let d2 = dummy(&mut p.tx);
    let mut bad = d2.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(open_full(&mut p.rx, &bad), Err(EspError::AuthFailed));
    assert_eq!(p.rx.replay_window().top(), 1, "forgery moved nothing");
    assert!(open_full(&mut p.rx, &d2).expect("open").dummy);
    // Direction and buffer checks.
    let mut small = [0u8; 8];
    assert!(matches!(
        p.tx.seal_dummy(&mut small),
        Err(EspError::BufferTooSmall { .. })
    ));
    let mut buf = vec![0u8; 128];
    assert_eq!(p.rx.seal_dummy(&mut buf), Err(EspError::WrongDirection));
}

#[test]
fn cbc_ivs_differ_per_packet() {
    let mut p = pair(EspSuite::Aes128CbcSha256);
    let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(64));
    let a = seal(&mut p.tx, &inner);
    let b = seal(&mut p.tx, &inner);
    assert_ne!(a[8..24], b[8..24]);
    assert_ne!(a[24..40], b[24..40]);
}

#[test]
fn tampering_is_detected_everywhere() {
    for suite in SUITES {
        let mut p = pair(suite);
        let inner = ipv6_packet(&hit(1), &hit(2), 6, tcp_segment(100));
        let esp = seal(&mut p.tx, &inner);
        for pos in 0..esp.len() {
            let mut bad = esp.clone();
            bad[pos] ^= 0x01;
            let r = open(&mut p.rx, &bad);
            match pos {
                0..=3 => assert!(
                    matches!(r, Err(EspError::WrongSpi { .. })),
                    "{suite:?} {pos}"
                ),
                // Sequence number bits: seq 0 is invalid, others fail the ICV.
                4..=7 => assert!(
                    matches!(r, Err(EspError::AuthFailed | EspError::OutOfWindow(0))),
                    "{suite:?} {pos}: {r:?}"
                ),
                _ => assert_eq!(r, Err(EspError::AuthFailed), "{suite:?} byte {pos}"),
            }
        }
        assert!(open(&mut p.rx, &esp[..esp.len() - 1]).is_err());
        assert!(open(&mut p.rx, &esp[..8]).is_err());
        // The untampered packet still opens afterwards (failures left no state).
        assert!(open(&mut p.rx, &esp).is_ok(), "{suite:?}");
    }
}

#[test]
fn wrong_keys_fail() {
    let mut p = pair(EspSuite::Aes128CbcSha256);
    let (e, mut a) = keys(EspSuite::Aes128CbcSha256, 0x5C);
    a[0] ^= 1;
    let mut rx = SecurityAssociation::new(
        &OpensslBackend::new(),
        SaParams {
            spi: 0xABCD_0001,
            suite: EspSuite::Aes128CbcSha256,
            enc_key: &e,
            auth_key: &a,
            direction: SaDirection::Inbound,
            beet: *p.rx.beet(),
            replay_window: 64,
            iv_seed: [0; 32],
        },
    )
    .unwrap();
    let esp = seal(
        &mut p.tx,
        &ipv6_packet(&hit(1), &hit(2), 17, udp_segment(10)),
    );
    assert_eq!(open(&mut rx, &esp), Err(EspError::AuthFailed));
}

#[test]
fn replay_and_window() {
    let mut p = pair_with(EspSuite::Aes128CbcSha256, 64, false, InnerFamily::V6);
    assert_eq!(p.rx.replay_window().size(), 64);
    let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(20));
    let pkts: Vec<Vec<u8>> = (0..200).map(|_| seal(&mut p.tx, &inner)).collect();
    // In order.
    open(&mut p.rx, &pkts[0]).unwrap();
    assert_eq!(open(&mut p.rx, &pkts[0]), Err(EspError::Replay(1)));
    // Out of order within the window.
    open(&mut p.rx, &pkts[10]).unwrap(); // seq 11
    open(&mut p.rx, &pkts[5]).unwrap(); // seq 6
    assert_eq!(open(&mut p.rx, &pkts[5]), Err(EspError::Replay(6)));
    // Slide the window: seq 100 makes everything <= 36 too old.
    open(&mut p.rx, &pkts[99]).unwrap();
    assert_eq!(p.rx.replay_window().top(), 100);
    assert_eq!(open(&mut p.rx, &pkts[20]), Err(EspError::OutOfWindow(21)));
    assert_eq!(open(&mut p.rx, &pkts[35]), Err(EspError::OutOfWindow(36)));
    open(&mut p.rx, &pkts[36]).unwrap(); // seq 37 = top - 63: still inside
    open(&mut p.rx, &pkts[60]).unwrap();
    assert_eq!(open(&mut p.rx, &pkts[60]), Err(EspError::Replay(61)));
    // A forged packet with a far-ahead sequence number fails the ICV and
    // must not move the window.
    let mut forged = pkts[150].clone();
    let last = forged.len() - 1;
    forged[last] ^= 0xFF;
    assert_eq!(open(&mut p.rx, &forged), Err(EspError::AuthFailed));
    assert_eq!(p.rx.replay_window().top(), 100);
    open(&mut p.rx, &pkts[150]).unwrap();
    assert_eq!(p.rx.replay_window().top(), 151);
}

#[test]
fn in_order_stream_crosses_window_size_boundaries() {
    // Regression: the ESN inference must not overflow when the top sequence
    // number equals the window size minus one.
    for window in [64usize, 1024] {
        let mut p = pair_with(EspSuite::NullSha256, window, false, InnerFamily::V6);
        let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(4));
        for seq in 1..=(2 * window as u64 + 5) {
            let esp = seal(&mut p.tx, &inner);
            let mut out = vec![0u8; open_buffer_len(esp.len())];
            assert_eq!(p.rx.open(&esp, 1, &mut out).unwrap().seq, seq);
        }
    }
    let mut w = ReplayWindow::new(64);
    w.accept(63);
    assert_eq!(w.check(64), Ok(64));
    assert_eq!(w.check(1), Ok(1));
    assert_eq!(w.check(63), Err(EspError::Replay(63)));
}

#[test]
fn default_window_is_large() {
    let mut p = pair_with(EspSuite::NullSha256, 1000, false, InnerFamily::V6);
    assert_eq!(p.rx.replay_window().size(), 1024);
    let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(4));
    let pkts: Vec<Vec<u8>> = (0..1100).map(|_| seal(&mut p.tx, &inner)).collect();
    open(&mut p.rx, &pkts[1099]).unwrap(); // seq 1100
    open(&mut p.rx, &pkts[76]).unwrap(); // seq 77 = 1100 - 1023
    assert_eq!(open(&mut p.rx, &pkts[75]), Err(EspError::OutOfWindow(76)));
}

#[test]
fn replay_window_esn_inference() {
    let mut w = ReplayWindow::new(128);
    assert_eq!(w.check(0), Err(EspError::OutOfWindow(0)));
    w.accept(0xFFFF_FFF0);
    assert_eq!(w.check(5), Ok(0x1_0000_0005));
    assert_eq!(w.check(0xFFFF_FFF5), Ok(0xFFFF_FFF5));
    assert_eq!(w.check(0xFFFF_FFF0), Err(EspError::Replay(0xFFFF_FFF0)));
    w.accept(0x1_0000_0002);
    // Just after the wrap, late packets from the previous subspace still map
    // to high half 0.
    assert_eq!(w.check(0xFFFF_FFF8), Ok(0xFFFF_FFF8));
    assert_eq!(w.check(0xFFFF_FFF0), Err(EspError::Replay(0xFFFF_FFF0)));
    assert_eq!(w.check(3), Ok(0x1_0000_0003));
}

#[test]
fn esn_high_bits_are_authenticated_across_wrap() {
    for suite in [
        EspSuite::Aes128CbcSha256,
        EspSuite::AesGcm16(GcmKeySize::Aes128),
    ] {
        let mut p = pair(suite);
        p.tx.set_last_seq_sent(0xFFFF_FFFE);
        let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(40));
        let a = seal(&mut p.tx, &inner); // 0xFFFF_FFFF
        let b = seal(&mut p.tx, &inner); // 0x1_0000_0000 (low half 0 on the wire)
        let c = seal(&mut p.tx, &inner); // 0x1_0000_0001
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        let mut out = vec![0u8; open_buffer_len(a.len())];
        assert_eq!(p.rx.open(&a, 1, &mut out).unwrap().seq, 0xFFFF_FFFF);
        assert_eq!(p.rx.open(&b, 1, &mut out).unwrap().seq, 0x1_0000_0000);
        assert_eq!(p.rx.open(&c, 1, &mut out).unwrap().seq, 0x1_0000_0001);
        // A fresh receiver (top = 0) infers high half 0 for `c` and the ICV,
        // which covers the high half, fails.
        let mut fresh = pair(suite);
        assert_eq!(open(&mut fresh.rx, &c), Err(EspError::AuthFailed));
    }
}

#[test]
fn seq_exhaustion() {
    let mut p = pair(EspSuite::NullSha256);
    p.tx.set_last_seq_sent(u64::MAX - 2);
    let inner = ipv6_packet(&hit(1), &hit(2), 17, udp_segment(4));
    let mut out = vec![0u8; 200];
    assert!(p.tx.seal(&inner, &mut out).is_ok());
    assert_eq!(p.tx.seal(&inner, &mut out), Err(EspError::SeqExhausted));
}

#[test]
fn seal_rejects_wrong_inner_packets() {
    let mut p = pair(EspSuite::Aes128CbcSha256);
    let mut out = vec![0u8; 4096];
    let wrong_src = ipv6_packet(&hit(9), &hit(2), 6, tcp_segment(4));
    assert_eq!(
        p.tx.seal(&wrong_src, &mut out),
        Err(EspError::AddressMismatch)
    );
    let wrong_dst = ipv6_packet(&hit(1), &hit(9), 6, tcp_segment(4));
    assert_eq!(
        p.tx.seal(&wrong_dst, &mut out),
        Err(EspError::AddressMismatch)
    );
    let v4 = ipv4_packet(lsi(1), lsi(2), 6, tcp_segment(4), false);
    assert_eq!(p.tx.seal(&v4, &mut out), Err(EspError::NoLsi));
    let good = ipv6_packet(&hit(1), &hit(2), 6, tcp_segment(4));
    assert!(matches!(
        p.tx.seal(&good[..50], &mut out),
        Err(EspError::BadInner(_))
    ));
    assert!(matches!(
        p.tx.seal(&[], &mut out),
        Err(EspError::BadInner(_))
    ));
    assert!(matches!(
        p.tx.seal(&good, &mut out[..20]),
        Err(EspError::BufferTooSmall { .. })
    ));
    assert_eq!(p.rx.seal(&good, &mut out), Err(EspError::WrongDirection));
    let esp = seal(&mut p.tx, &good);
    assert_eq!(p.tx.open(&esp, 1, &mut out), Err(EspError::WrongDirection));
    let mut small = vec![0u8; 10];
    assert!(matches!(
        p.rx.open(&esp, 1, &mut small),
        Err(EspError::BufferTooSmall { .. })
    ));
}

#[test]
fn lsi_packets_are_carried_with_hit_checksums() {
    for (proto, seg, zero) in [
        (6u8, tcp_segment(333), false),
        (17, udp_segment(77), false),
        (17, udp_segment(77), true),
    ] {
        for deliver in [InnerFamily::V6, InnerFamily::V4] {
            let mut p = pair_with(EspSuite::Aes128CbcSha256, 1024, true, deliver);
            let inner = ipv4_packet(lsi(1), lsi(2), proto, seg.clone(), zero);
            let esp = seal(&mut p.tx, &inner);
            let back = open(&mut p.rx, &esp).unwrap();
            match deliver {
                InnerFamily::V6 => {
                    assert_eq!(&back[8..24], hit(1).as_bytes());
                    assert_eq!(&back[24..40], hit(2).as_bytes());
                    assert_eq!(
                        fold(v6_pseudo(&back[8..24], &back[24..40], proto, &back[40..])),
                        0xFFFF,
                        "v6 proto {proto} zero {zero}"
                    );
                }
                InnerFamily::V4 => {
                    assert_eq!(back.len(), 20 + seg.len());
                    assert_eq!(back[0], 0x45);
                    assert_eq!(fold(sum16(&back[..20])), 0xFFFF, "IPv4 header checksum");
                    assert_eq!(&back[12..16], &[1, 0, 0, 1]);
                    assert_eq!(&back[16..20], &[1, 0, 0, 2]);
                    assert_eq!(back[9], proto);
                    assert_eq!(back[8], 61);
                    assert_eq!(
                        fold(v4_pseudo(&back[12..16], &back[16..20], proto, &back[20..])),
                        0xFFFF,
                        "v4 proto {proto} zero {zero}"
                    );
                    // Payload other than the checksum is unchanged.
                    let off = if proto == 6 { 16 } else { 6 };
                    assert_eq!(&back[20..20 + off], &inner[20..20 + off]);
                    assert_eq!(&back[22 + off..], &inner[22 + off..]);
                }
            }
        }
    }
    // An IPv6 HIT packet can be delivered as IPv4 with a valid LSI checksum.
    let mut p = pair_with(
        EspSuite::AesGcm16(GcmKeySize::Aes128),
        1024,
        true,
        InnerFamily::V4,
    );
    let esp = seal(
        &mut p.tx,
        &ipv6_packet(&hit(1), &hit(2), 6, tcp_segment(50)),
    );
    let back = open(&mut p.rx, &esp).unwrap();
    assert_eq!(
        fold(v4_pseudo(&back[12..16], &back[16..20], 6, &back[20..])),
        0xFFFF
    );
    // Wrong LSIs are rejected on seal.
    let mut p = pair_with(EspSuite::Aes128CbcSha256, 1024, true, InnerFamily::V6);
    let mut out = vec![0u8; 2048];
    let bad = ipv4_packet(lsi(7), lsi(2), 6, tcp_segment(4), false);
    assert_eq!(p.tx.seal(&bad, &mut out), Err(EspError::AddressMismatch));
}

#[test]
fn batch_seal_and_open() {
    let mut p = pair(EspSuite::Aes128CbcSha256);
    let inners: Vec<Vec<u8>> = (0..8)
        .map(|i| ipv6_packet(&hit(1), &hit(2), 17, udp_segment(100 + i * 37)))
        .collect();
    let refs: Vec<&[u8]> = inners.iter().map(|v| v.as_slice()).collect();
    let mut bufs: Vec<Vec<u8>> = inners
        .iter()
        .map(|v| vec![0u8; p.tx.seal_buffer_len(v.len())])
        .collect();
    let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let mut res: Vec<Result<usize, EspError>> = vec![Ok(0); 8];
    assert_eq!(p.tx.seal_batch(&refs, &mut outs, &mut res), 8);
    let mut esps: Vec<Vec<u8>> = bufs
        .iter()
        .zip(&res)
        .map(|(b, r)| b[..*r.as_ref().unwrap()].to_vec())
        .collect();
    esps.push(esps[3].clone()); // a duplicate
    let erefs: Vec<&[u8]> = esps.iter().map(|v| v.as_slice()).collect();
    let mut obufs: Vec<Vec<u8>> = esps
        .iter()
        .map(|e| vec![0u8; open_buffer_len(e.len())])
        .collect();
    let mut oouts: Vec<&mut [u8]> = obufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let mut ores = vec![Err(EspError::TooShort); 9];
    assert_eq!(p.rx.open_batch(&erefs, 9, &mut oouts, &mut ores), 9);
    for i in 0..8 {
        let o = ores[i].as_ref().unwrap();
        assert_eq!(o.seq, i as u64 + 1);
        assert_eq!(&obufs[i][40..o.len], &inners[i][40..]);
    }
    assert_eq!(ores[8], Err(EspError::Replay(4)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn open_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                         suite_ix in 0usize..SUITES.len()) {
        let mut p = pair(SUITES[suite_ix]);
        let mut esp = bytes.clone();
        if esp.len() >= 4 {
            esp[..4].copy_from_slice(&0xABCD_0001u32.to_be_bytes());
        }
        let mut out = vec![0u8; open_buffer_len(esp.len())];
        prop_assert!(p.rx.open(&esp, 1, &mut out).is_err());
    }

    #[test]
    fn mutated_packets_never_open(pos in any::<prop::sample::Index>(), flip in 1u8..=255,
                                  suite_ix in 0usize..SUITES.len()) {
        let mut p = pair(SUITES[suite_ix]);
        let esp = seal(&mut p.tx, &ipv6_packet(&hit(1), &hit(2), 17, udp_segment(50)));
        let mut bad = esp.clone();
        let i = pos.index(bad.len());
        bad[i] ^= flip;
        prop_assert!(open(&mut p.rx, &bad).is_err());
        prop_assert!(open(&mut p.rx, &esp).is_ok());
    }
}

proptest! {
    /// The anti-replay window against a set-based model (no 2^32 wrap).
    #[test]
    fn replay_window_matches_model(window in prop_oneof![Just(64usize), Just(128), Just(1024)],
                                   seqs in proptest::collection::vec(1u64..3000, 1..400)) {
        let mut w = ReplayWindow::new(window);
        let size = w.size();
        let mut seen = std::collections::HashSet::new();
        let mut top = 0u64;
        for s in seqs {
            let r = w.check(s as u32);
            if s > top {
                prop_assert_eq!(r, Ok(s));
            } else if top - s >= size {
                // Left of the window: ESN reads it as the next subspace
                // (its ICV would then fail), never as the old number.
                prop_assert_eq!(r, Ok(s | (1 << 32)));
                continue;
            } else if seen.contains(&s) {
                prop_assert_eq!(r, Err(EspError::Replay(s)));
                continue;
            } else {
                prop_assert_eq!(r, Ok(s));
            }
            w.accept(s);
            seen.insert(s);
            top = top.max(s);
            prop_assert_eq!(w.top(), top);
        }
    }
}
