//! Negative paths: tampered, replayed, reordered, truncated and oversized
//! packets; I1 floods; negotiation failures with NOTIFY.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hip_proto::crypto::{HipCipher, PrivateIdentity};
use hip_proto::engine::testing::{
    IdentityKind, LinkConfig, Pair, Side, addr, backend, test_identity,
};
use hip_proto::engine::{Config, Datagram, Endpoint, Event, FailReason, Transmit, Transport};
use hip_proto::wire::{
    ChecksumMode, DhGroupId, Hit, NotifyType, Packet, PacketRepr, PacketType, Param,
    param_type as pt,
};
use proptest::prelude::*;

fn cfg() -> Config {
    Config {
        puzzle_k: 4,
        ..Config::default()
    }
}

fn endpoint(id: Arc<dyn PrivateIdentity>, c: Config, seed: u8) -> Endpoint {
    Endpoint::new(c, vec![id], backend(), [seed; 32], Instant::now()).unwrap()
}

fn pair_with(ca: Config, cb: Config) -> Pair {
    let now = Instant::now();
    Pair::new(
        Endpoint::new(
            ca,
            vec![test_identity(IdentityKind::EcdsaP256, 0)],
            backend(),
            [1; 32],
            now,
        )
        .unwrap(),
        addr(1),
        Endpoint::new(
            cb,
            vec![test_identity(IdentityKind::EcdsaP384, 1)],
            backend(),
            [2; 32],
            now,
        )
        .unwrap(),
        addr(2),
        now,
        LinkConfig::default(),
        9,
    )
}

fn pair() -> Pair {
    pair_with(cfg(), cfg())
}

fn connect(p: &mut Pair) -> Hit {
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    b_hit
}

fn both_established(p: &Pair) -> bool {
    p.a.events
        .iter()
        .any(|e| matches!(e, Event::Established { .. }))
        && p.b
            .events
            .iter()
            .any(|e| matches!(e, Event::Established { .. }))
}

fn ptype(t: &Transmit) -> PacketType {
    Packet::new_unchecked(&t.payload[..]).packet_type()
}

fn mode(t: &Transmit) -> ChecksumMode {
    ChecksumMode::from_addrs(t.src.unwrap(), t.dst).unwrap()
}

/// Re-emits `t` after `f` edited its parsed form (checksum fixed).
fn tamper(t: &mut Transmit, f: impl FnOnce(&mut PacketRepr)) {
    let mut r = PacketRepr::parse_bytes(&t.payload).unwrap();
    f(&mut r);
    t.payload = r.to_bytes(mode(t)).unwrap();
}

/// Rebuilds `t` from its raw TLVs after `f` edited the TLV list (header
/// length and checksum fixed, nothing else re-encoded).
fn tamper_raw(t: &mut Transmit, f: impl FnOnce(&mut Vec<Vec<u8>>)) {
    let pkt = Packet::new_checked(&t.payload[..]).unwrap();
    let mut tlvs: Vec<Vec<u8>> = pkt.params().map(|p| p.unwrap().tlv.to_vec()).collect();
    f(&mut tlvs);
    let mut out = t.payload[..40].to_vec();
    for x in tlvs {
        out.extend_from_slice(&x);
    }
    out[1] = (out.len() / 8 - 1) as u8;
    let m = mode(t);
    Packet::new_unchecked(&mut out[..]).fill_checksum(m);
    t.payload = out;
}

/// Applies `f` to the first packet of type `ty` sent by `from`.
fn on_first(p: &mut Pair, from: Side, ty: PacketType, f: impl FnOnce(&mut Transmit) + 'static) {
    let mut f = Some(f);
    p.set_filter(Some(Box::new(move |side, t| {
        if side == from
            && ptype(t) == ty
            && let Some(f) = f.take()
        {
            f(t);
        }
        true
    })));
}

fn notifies(events: &[Event]) -> Vec<(NotifyType, bool, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NotifyReceived {
                msg_type,
                authenticated,
                data,
                ..
            } => Some((*msg_type, *authenticated, data.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn wrong_hmac_in_i2_gives_notify_and_counter() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::HipMac(m) = x {
                    m[0] ^= 1;
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().bad_hmac, 1);
    assert_eq!(p.b.endpoint.stats().bad_signature, 0, "MAC checked first");
    let n = notifies(&p.a.events);
    assert!(
        n.contains(&(NotifyType::HipMacFailed, true, vec![])),
        "{n:?}"
    );
}

#[test]
fn wrong_signature_in_i2_gives_notify_and_counter() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::HipSignature(s) = x {
                    s.signature[5] ^= 0x40;
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().bad_signature, 1);
    assert!(notifies(&p.a.events).contains(&(NotifyType::AuthenticationFailed, true, vec![])));
}

#[test]
fn wrong_r1_signature_and_r2_mac_are_dropped() {
    let mut p = pair();
    on_first(&mut p, Side::B, PacketType::R1, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::HipSignature2(s) = x {
                    s.signature[0] ^= 1;
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.a.endpoint.stats().bad_signature, 1);

    let mut p = pair();
    on_first(&mut p, Side::B, PacketType::R2, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::HipMac2(m) = x {
                    m[3] ^= 1;
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.a.endpoint.stats().bad_hmac, 1);
}

#[test]
fn wrong_puzzle_solution_is_dropped_silently() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::Solution(s) = x {
                    s.solution_j[0] ^= 0x80;
                    s.solution_j[1] ^= 0x01;
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    // With K = 4 a random #J passes one time in 16; our edit is of two
    // bits so it may, rarely, still solve: the counter is then zero and
    // the check below is skipped.
    let st = p.b.endpoint.stats().clone();
    assert!(st.bad_puzzle <= 1);
    assert_eq!(
        p.count_sent(Side::B, PacketType::Notify),
        0,
        "no NOTIFY to a non-solver"
    );
    assert_eq!(p.b.endpoint.association_count(), 1);
}

#[test]
fn bad_puzzle_with_high_k_is_counted() {
    let c = Config {
        puzzle_k: 12,
        ..cfg()
    };
    let mut p = pair_with(c.clone(), c);
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper(t, |r| {
            for x in &mut r.params {
                if let Param::Solution(s) = x {
                    s.solution_j = vec![0xAA; s.solution_j.len()];
                }
            }
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().bad_puzzle, 1);
    assert_eq!(p.count_sent(Side::B, PacketType::Notify), 0);
}

#[test]
fn replayed_r1_and_i2() {
    let mut p = pair();
    let seen: Rc<RefCell<Vec<(Side, Transmit)>>> = Rc::default();
    let s2 = seen.clone();
    p.set_filter(Some(Box::new(move |side, t| {
        s2.borrow_mut().push((side, t.clone()));
        true
    })));
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    p.run_for(Duration::from_millis(100));
    let grab = |ty| {
        seen.borrow()
            .iter()
            .find(|(_, t)| ptype(t) == ty)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    let r1 = grab(PacketType::R1);
    let i2 = grab(PacketType::I2);
    let dg = |t: &Transmit| Datagram {
        src: t.src.unwrap(),
        dst: t.dst,
        transport: Transport::Native,
        payload: t.payload.clone(),
    };
    let r2_before = p.count_sent(Side::B, PacketType::R2);
    p.inject(Side::A, dg(&r1));
    p.run_for(Duration::from_millis(200));
    assert_eq!(p.a.endpoint.stats().replay, 1, "R1 replay on A");
    assert_eq!(p.count_sent(Side::A, PacketType::I2), 1, "no new I2");
    p.inject(Side::B, dg(&i2));
    p.run_for(Duration::from_millis(200));
    assert_eq!(p.b.endpoint.stats().replay, 1, "I2 replay on B");
    assert_eq!(
        p.count_sent(Side::B, PacketType::R2),
        r2_before + 1,
        "R2 resent"
    );
    // The resent R2 is itself a duplicate for A.
    assert_eq!(p.a.endpoint.stats().replay, 2);
    assert_eq!(p.b.endpoint.association_count(), 1);
    assert_eq!(
        p.b.events
            .iter()
            .filter(|e| matches!(e, Event::Established { .. }))
            .count(),
        1,
        "no second association"
    );
}

#[test]
fn reordered_parameters_in_i2_give_invalid_syntax() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper_raw(t, |tlvs| {
            // Swap DIFFIE_HELLMAN and HIP_CIPHER (both after SOLUTION).
            let ty = |v: &Vec<u8>| u16::from_be_bytes([v[0], v[1]]);
            let a = tlvs
                .iter()
                .position(|v| ty(v) == pt::DIFFIE_HELLMAN)
                .unwrap();
            let b = tlvs.iter().position(|v| ty(v) == pt::HIP_CIPHER).unwrap();
            tlvs.swap(a, b);
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().malformed, 1);
    assert!(notifies(&p.a.events).contains(&(NotifyType::InvalidSyntax, true, vec![])));
}

#[test]
fn unknown_critical_parameter_in_i2_is_notified() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I2, |t| {
        tamper_raw(t, |tlvs| {
            let ty = |v: &Vec<u8>| u16::from_be_bytes([v[0], v[1]]);
            let pos = tlvs.iter().position(|v| ty(v) > 1027).unwrap();
            // Type 1027 (odd = critical, unassigned), Length 4.
            tlvs.insert(pos, vec![0x04, 0x03, 0, 4, 1, 2, 3, 4]);
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().unsupported_critical, 1);
    assert!(notifies(&p.a.events).contains(&(
        NotifyType::UnsupportedCriticalParameterType,
        true,
        1027u16.to_be_bytes().to_vec()
    )));
}

#[test]
fn bad_checksum_is_dropped_without_answer() {
    let mut p = pair();
    on_first(&mut p, Side::A, PacketType::I1, |t| t.payload[4] ^= 0xFF);
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.b.endpoint.stats().bad_checksum, 1);
    assert_eq!(
        p.count_sent(Side::A, PacketType::I1),
        2,
        "recovered by retransmission"
    );
}

#[test]
fn truncated_and_oversized_packets_never_panic() {
    let mut p = pair();
    let seen: Rc<RefCell<Vec<Transmit>>> = Rc::default();
    let s2 = seen.clone();
    p.set_filter(Some(Box::new(move |_, t| {
        s2.borrow_mut().push(t.clone());
        true
    })));
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    let now = p.now;
    p.set_filter(None);
    let pkts = seen.borrow().clone();
    let mut fresh_b = endpoint(test_identity(IdentityKind::EcdsaP384, 1), cfg(), 5);
    for t in &pkts {
        let m = mode(t);
        for len in 0..t.payload.len() {
            // Raw truncation (bad checksum / header length) ...
            let d = Datagram {
                src: t.src.unwrap(),
                dst: t.dst,
                transport: Transport::Native,
                payload: t.payload[..len].to_vec(),
            };
            for e in [&mut p.a.endpoint, &mut p.b.endpoint, &mut fresh_b] {
                e.handle(now, d.clone());
            }
            // ... and a consistent header with a cut TLV area.
            if len >= 48 && len % 8 == 0 {
                let mut v = t.payload[..len].to_vec();
                v[1] = (len / 8 - 1) as u8;
                Packet::new_unchecked(&mut v[..]).fill_checksum(m);
                let d = Datagram { payload: v, ..d };
                for e in [&mut p.a.endpoint, &mut p.b.endpoint, &mut fresh_b] {
                    e.handle(now, d.clone());
                }
            }
        }
        // Oversized TLV length in the first parameter.
        if t.payload.len() > 48 {
            let mut v = t.payload.clone();
            v[42] = 0xFF;
            v[43] = 0xF0;
            Packet::new_unchecked(&mut v[..]).fill_checksum(m);
            let before = fresh_b.stats().malformed + p.a.endpoint.stats().malformed;
            let d = Datagram {
                src: t.src.unwrap(),
                dst: t.dst,
                transport: Transport::Native,
                payload: v,
            };
            fresh_b.handle(now, d.clone());
            p.a.endpoint.handle(now, d);
            let after = fresh_b.stats().malformed + p.a.endpoint.stats().malformed;
            assert!(after > before, "{:?}", ptype(t));
        }
    }
    let s = fresh_b.stats();
    assert!(s.malformed > 0 && s.received > 0, "{s:?}");
    assert_eq!(fresh_b.association_count(), 0);
}

#[test]
fn i1_flood_creates_no_state() {
    // Without the R1 rate limit every I1 is answered, statelessly.
    i1_flood(
        Config {
            r1_rate: 0,
            ..cfg()
        },
        2000,
    );
    // With the default limit only the burst is answered at one instant.
    i1_flood(cfg(), 200);
}

fn i1_flood(config: Config, answered: u64) {
    let mut b = endpoint(test_identity(IdentityKind::EcdsaP256, 1), config, 3);
    let b_hit = b.local_hits()[0];
    let now = Instant::now();
    for i in 0..2000u32 {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x22]);
        h[4..8].copy_from_slice(&i.to_be_bytes());
        let src = IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            1,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ));
        let recv = if i % 2 == 0 { b_hit } else { Hit::ZERO };
        let i1 = PacketRepr::new(PacketType::I1, Hit::from_bytes(h), recv)
            .with(Param::DhGroupList(vec![DhGroupId::NistP256]));
        let payload = i1
            .to_bytes(ChecksumMode::from_addrs(src, addr(2)).unwrap())
            .unwrap();
        b.handle(
            now,
            Datagram {
                src,
                dst: addr(2),
                transport: Transport::Native,
                payload,
            },
        );
    }
    assert_eq!(b.association_count(), 0);
    assert_eq!(b.stats().r1_sent, answered);
    assert_eq!(b.stats().r1_rate_limited, 2000 - answered);
    let mut n = 0;
    while let Some(t) = b.poll_transmit() {
        assert_eq!(ptype(&t), PacketType::R1);
        n += 1;
    }
    assert_eq!(n, answered);
}

#[test]
fn no_common_cipher_fails_with_notify() {
    let ca = Config {
        hip_ciphers: vec![HipCipher::Aes128Cbc],
        ..cfg()
    };
    let cb = Config {
        hip_ciphers: vec![HipCipher::Aes256Cbc],
        ..cfg()
    };
    let mut p = pair_with(ca, cb);
    connect(&mut p);
    let failed = |p: &Pair| {
        p.a.events.iter().any(|e| {
            matches!(
                e,
                Event::Failed {
                    reason: FailReason::NoHipCipher,
                    ..
                }
            )
        })
    };
    assert!(p.run_until(Duration::from_secs(5), failed));
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.a.endpoint.stats().negotiation_failed, 1);
    // B has no association: the NOTIFY is reported unauthenticated.
    assert!(notifies(&p.b.events).contains(&(NotifyType::NoHipProposalChosen, false, vec![])));
    assert_eq!(p.b.endpoint.association_count(), 0);
}

#[test]
fn downgraded_i1_is_detected() {
    let mut p = pair();
    // An attacker strips P-384 from the I1's (unsigned) DH list.
    on_first(&mut p, Side::A, PacketType::I1, |t| {
        tamper(t, |r| {
            r.params = vec![Param::DhGroupList(vec![DhGroupId::NistP256])];
        })
    });
    connect(&mut p);
    assert!(p.run_until(Duration::from_secs(10), both_established));
    assert_eq!(p.a.endpoint.stats().downgrade, 1);
    let b_hit = p.b.endpoint.local_hits()[0];
    let s =
        p.a.endpoint
            .association_by_peer(b_hit)
            .unwrap()
            .suites()
            .unwrap();
    assert_eq!(s.dh_group, hip_proto::crypto::DhGroup::EcdhP384);
}

#[test]
fn echo_request_signed_and_unsigned_are_echoed() {
    let c = Config {
        r1_echo_signed: true,
        ..cfg()
    };
    let mut p = pair_with(c.clone(), c);
    // A middlebox appends an ECHO_REQUEST_UNSIGNED to the R1.
    on_first(&mut p, Side::B, PacketType::R1, |t| {
        tamper(t, |r| {
            r.params.push(Param::EchoRequestUnsigned(vec![9, 8, 7]))
        })
    });
    let i2s: Rc<RefCell<Vec<PacketRepr>>> = Rc::default();
    let i2c = i2s.clone();
    connect(&mut p);
    // Observe the I2 after the filter above has run once.
    assert!(p.run_until(
        Duration::from_millis(25),
        |p| p.count_sent(Side::B, PacketType::R1) > 0
    ));
    p.set_filter(Some(Box::new(move |_, t| {
        if ptype(t) == PacketType::I2 {
            i2c.borrow_mut()
                .push(PacketRepr::parse_bytes(&t.payload).unwrap());
        }
        true
    })));
    assert!(p.run_until(Duration::from_secs(10), both_established));
    let i2 = i2s.borrow()[0].clone();
    assert!(
        matches!(i2.param(pt::ECHO_RESPONSE_SIGNED), Some(Param::EchoResponseSigned(e)) if e.len() == 8)
    );
    assert_eq!(
        i2.param(pt::ECHO_RESPONSE_UNSIGNED),
        Some(&Param::EchoResponseUnsigned(vec![9, 8, 7]))
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]
    #[test]
    fn arbitrary_datagrams_never_panic(
        pkts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..6),
        tys in proptest::collection::vec(0u8..20, 6),
    ) {
        let mut b = endpoint(test_identity(IdentityKind::EcdsaP256, 1), cfg(), 3);
        let b_hit = b.local_hits()[0];
        let now = Instant::now();
        for (i, mut payload) in pkts.into_iter().enumerate() {
            // Make some of them plausible HIP headers.
            if payload.len() >= 40 && i % 2 == 0 {
                payload[0] = 59;
                payload[1] = (payload.len() / 8 - 1).min(255) as u8;
                payload[2] = tys[i] & 0x7F;
                payload[3] = 0x21;
                payload[24..40].copy_from_slice(b_hit.as_bytes());
                let l = (usize::from(payload[1]) + 1) * 8;
                Packet::new_unchecked(&mut payload[..l]).fill_checksum(ChecksumMode::Udp);
            }
            b.handle(now, Datagram {
                src: addr(1),
                dst: addr(2),
                transport: Transport::Udp { src_port: 10500, dst_port: 10500 },
                payload,
            });
        }
        prop_assert_eq!(b.association_count(), 0);
    }
}

/// The fuzzing helper authenticates arbitrary control packets so that the
/// peer's UPDATE handling accepts them (what the `hip_update` fuzz target
/// relies on); a tampered copy is still rejected by the HIP_MAC check.
#[cfg(feature = "fuzzing")]
#[test]
fn fuzzing_seal_reaches_update_handling() {
    let mut p = pair_with(cfg(), cfg());
    let b_hit = p.b.endpoint.local_hits()[0];
    let a_hit = p.a.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    assert!(p.run_until(Duration::from_secs(10), |p| {
        p.b.events
            .iter()
            .any(|e| matches!(e, Event::Established { .. }))
    }));
    let repr = PacketRepr::new(PacketType::Update, a_hit, b_hit).with(Param::Seq(7));
    let sealed =
        p.a.endpoint
            .seal_control_for_fuzzing(repr, Some(addr(1)), addr(2), Transport::Native)
            .expect("association keys");
    let before = p.b.endpoint.stats().update_received;
    let acks = p.count_sent(Side::B, PacketType::Update);
    let mut tampered = sealed.clone();
    let n = tampered.len();
    tampered[n - 100] ^= 1; // inside HIP_MAC / HIP_SIGNATURE
    let mut pkt = Packet::new_checked(&mut tampered[..]).unwrap();
    pkt.fill_checksum(ChecksumMode::from_addrs(addr(1), addr(2)).unwrap());
    for payload in [tampered, sealed] {
        p.inject(
            Side::B,
            Datagram {
                src: addr(1),
                dst: addr(2),
                transport: Transport::Native,
                payload,
            },
        );
    }
    p.run_for(Duration::from_millis(200));
    let s = p.b.endpoint.stats();
    assert_eq!(s.update_received, before + 1);
    assert!(s.bad_hmac + s.bad_signature >= 1);
    assert!(
        p.count_sent(Side::B, PacketType::Update) > acks,
        "B ACKs SEQ 7"
    );
}
