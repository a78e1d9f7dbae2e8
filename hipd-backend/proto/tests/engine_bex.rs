//! Base exchange over the in-memory pair harness: algorithm matrix,
//! opportunistic, simultaneous open, loss recovery, CLOSE.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hip_proto::crypto::HitSuite;
use hip_proto::crypto::esp::open_buffer_len;
use hip_proto::crypto::{
    DhGroup, EspSuite, GcmKeySize, HashAlg, HipCipher, PrivateIdentity, SecurityAssociation,
};
use hip_proto::engine::testing::{
    IdentityKind, LinkConfig, Pair, Side, addr, backend, test_identity,
};
use hip_proto::engine::{Config, Datagram, Endpoint, Event, FailReason, Role, State, Transport};
use hip_proto::wire::{
    ChecksumMode, Hit, Notification, NotifyType, Packet, PacketRepr, PacketType, Param,
};

fn endpoint(id: Arc<dyn PrivateIdentity>, cfg: Config, seed: u8, now: Instant) -> Endpoint {
    Endpoint::new(cfg, vec![id], backend(), [seed; 32], now).expect("endpoint")
}

fn fast_config() -> Config {
    Config {
        puzzle_k: 4,
        ..Config::default()
    }
}

fn pair(a: Arc<dyn PrivateIdentity>, b: Arc<dyn PrivateIdentity>, ca: Config, cb: Config) -> Pair {
    let now = Instant::now();
    Pair::new(
        endpoint(a, ca, 1, now),
        addr(1),
        endpoint(b, cb, 2, now),
        addr(2),
        now,
        LinkConfig::default(),
        7,
    )
}

fn established(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Established { .. }))
        .count()
}

fn both_established(p: &Pair) -> bool {
    established(&p.a.events) >= 1 && established(&p.b.events) >= 1
}

/// Takes the SAs from the last Established event of a host.
fn take_sas(events: &mut Vec<Event>) -> (SecurityAssociation, SecurityAssociation, Hit, Hit) {
    let pos = events
        .iter()
        .rposition(|e| matches!(e, Event::Established { .. }))
        .expect("established event");
    match events.remove(pos) {
        Event::Established {
            sas,
            local_hit,
            peer_hit,
            ..
        } => {
            let s = *sas;
            (s.outbound, s.inbound, local_hit, peer_hit)
        }
        _ => unreachable!(),
    }
}

fn inner_packet(src: Hit, dst: Hit, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = 59;
    p[7] = 64;
    p[8..24].copy_from_slice(src.as_bytes());
    p[24..40].copy_from_slice(dst.as_bytes());
    p.extend_from_slice(payload);
    p
}

fn esp_round_trip(tx: &mut SecurityAssociation, rx: &mut SecurityAssociation, src: Hit, dst: Hit) {
    let payload: Vec<u8> = (0..100u8).collect();
    let inner = inner_packet(src, dst, &payload);
    let mut out = vec![0u8; tx.seal_buffer_len(inner.len())];
    let n = tx.seal(&inner, &mut out).expect("seal");
    let mut plain = vec![0u8; open_buffer_len(n)];
    let o = rx.open(&out[..n], 64, &mut plain).expect("open");
    assert_eq!(&plain[40..o.len], &payload[..]);
    assert_eq!(&plain[8..24], src.as_bytes());
    assert_eq!(&plain[24..40], dst.as_bytes());
}

/// Runs a BEX and checks states, SPIs and ESP in both directions.
fn check_bex(p: &mut Pair) {
    assert!(
        p.run_until(Duration::from_secs(30), both_established),
        "BEX did not complete: a={:?} b={:?}",
        p.a.endpoint.stats(),
        p.b.endpoint.stats()
    );
    let (mut a_out, mut a_in, a_hit, a_peer) = take_sas(&mut p.a.events);
    let (mut b_out, mut b_in, b_hit, b_peer) = take_sas(&mut p.b.events);
    assert_eq!((a_hit, a_peer), (b_peer, b_hit));
    assert_eq!(a_out.spi(), b_in.spi());
    assert_eq!(b_out.spi(), a_in.spi());
    assert_ne!(a_in.spi(), b_in.spi());
    esp_round_trip(&mut a_out, &mut b_in, a_hit, b_hit);
    esp_round_trip(&mut b_out, &mut a_in, b_hit, a_hit);
    let a = p.a.endpoint.association_by_peer(b_hit).expect("assoc a");
    let b = p.b.endpoint.association_by_peer(a_hit).expect("assoc b");
    assert_eq!(a.state(), State::Established);
    assert_eq!(b.state(), State::R2Sent);
    assert_eq!(a.role(), Role::Initiator);
    assert_eq!(b.role(), Role::Responder);
    assert_eq!(a.suites(), b.suites());
    assert_eq!(a.spi_inbound(), b.spi_outbound());
    assert_eq!(a.keymat_index(), b.keymat_index());
    // The Responder confirms on the first ESP packet.
    let spi = b.spi_inbound();
    let now = p.now;
    p.b.endpoint.esp_received(now, spi);
    assert_eq!(
        p.b.endpoint.association_by_peer(a_hit).map(|x| x.state()),
        Some(State::Established)
    );
}

#[test]
fn bex_matrix_all_algorithms() {
    let groups = [
        DhGroup::EcdhP256,
        DhGroup::EcdhP384,
        DhGroup::EcdhP521,
        DhGroup::Modp1536,
        DhGroup::Modp2048,
        DhGroup::Modp3072,
    ];
    let ciphers = [HipCipher::Null, HipCipher::Aes128Cbc, HipCipher::Aes256Cbc];
    let esps = [
        EspSuite::Aes128CbcSha1,
        EspSuite::NullSha256,
        EspSuite::Aes128CbcSha256,
        EspSuite::Aes256CbcSha256,
        EspSuite::AesGcm8(GcmKeySize::Aes128),
        EspSuite::AesGcm16(GcmKeySize::Aes128),
    ];
    let mut runs = 0;
    for kind in IdentityKind::ALL {
        // Same identity kind on both sides (Ed25519 Responders use HIT
        // suite 5: cSHAKE128 RHASH, KMAC128 HIP_MAC and KEYMAT PRF).
        let resp_kind = kind;
        for (gi, &g) in groups.iter().enumerate() {
            for &c in &ciphers {
                for (ei, &e) in esps.iter().enumerate() {
                    // Full cross product for the cheap ECDH groups; MODP
                    // groups with a rotating subset of ESP suites.
                    if gi >= 3 && (ei + gi) % 3 != 0 {
                        continue;
                    }
                    let cfg = Config {
                        dh_groups: vec![g],
                        hip_ciphers: vec![c],
                        esp_suites: vec![e],
                        puzzle_k: 2,
                        ..Config::default()
                    };
                    let mut p = pair(
                        test_identity(kind, 0),
                        test_identity(resp_kind, 1),
                        cfg.clone(),
                        cfg,
                    );
                    let b_hit = p.b.endpoint.local_hits()[0];
                    let now = p.now;
                    p.a.endpoint
                        .connect(now, Some(b_hit), vec![addr(2)], None)
                        .expect("connect");
                    check_bex(&mut p);
                    let s =
                        p.a.endpoint
                            .association_by_peer(b_hit)
                            .and_then(|a| a.suites())
                            .expect("suites");
                    assert_eq!((s.dh_group, s.hip_cipher, s.esp), (g, c, e));
                    let want_rhash = if kind == IdentityKind::Ed25519 {
                        HashAlg::Cshake128
                    } else {
                        b_hit_rhash(b_hit)
                    };
                    assert_eq!(s.rhash, want_rhash);
                    runs += 1;
                }
            }
        }
    }
    assert!(runs >= 4 * 3 * (3 * 6 + 3 * 2));
}

fn b_hit_rhash(hit: Hit) -> HashAlg {
    hip_proto::crypto::hit_suite(&hit).unwrap().rhash().unwrap()
}

#[test]
fn bex_every_initiator_responder_pair() {
    for ik in IdentityKind::ALL {
        for rk in IdentityKind::ALL {
            let mut p = pair(
                test_identity(ik, 0),
                test_identity(rk, 1),
                fast_config(),
                fast_config(),
            );
            let b_hit = p.b.endpoint.local_hits()[0];
            let now = p.now;
            p.a.endpoint
                .connect(now, Some(b_hit), vec![addr(2)], None)
                .unwrap();
            check_bex(&mut p);
            // Defaults negotiate the Responder's first DH group the
            // Initiator offered, the Initiator's first cipher / ESP suite.
            let s =
                p.a.endpoint
                    .association_by_peer(b_hit)
                    .unwrap()
                    .suites()
                    .unwrap();
            assert_eq!(s.dh_group, DhGroup::EcdhP384);
            assert_eq!(s.hip_cipher, HipCipher::Aes256Cbc);
            assert_eq!(s.esp, EspSuite::AesGcm16(GcmKeySize::Aes128));
        }
    }
}

#[test]
fn ed25519_responds_with_suite5_puzzle_and_macs() {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::Ed25519, 1),
        fast_config(),
        fast_config(),
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    assert_eq!(b_hit.as_bytes()[3], 0x25, "suite-5 HIT");
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
    assert_eq!(p.b.endpoint.stats().unsupported, 0);
    assert_eq!(p.count_sent(Side::B, PacketType::R1), 1);
    // The Responder's suite fixes RHASH: 32-byte cSHAKE128 puzzle, KMAC128 MACs.
    let s =
        p.a.endpoint
            .association_by_peer(b_hit)
            .unwrap()
            .suites()
            .unwrap();
    assert_eq!(s.rhash, HashAlg::Cshake128);
    // Opportunistic I1 to an Ed25519-only host is answered with its suite-5 HIT.
    let mut q = pair(
        test_identity(IdentityKind::Ed25519, 2),
        test_identity(IdentityKind::Ed25519, 3),
        fast_config(),
        fast_config(),
    );
    let now = q.now;
    q.a.endpoint
        .connect(now, None, vec![addr(2)], None)
        .unwrap();
    check_bex(&mut q);
    let peer = q.b.endpoint.local_hits()[0];
    assert_eq!(
        q.a.endpoint
            .association_by_peer(peer)
            .unwrap()
            .suites()
            .unwrap()
            .rhash,
        HashAlg::Cshake128
    );
}

#[test]
fn dh_negotiation_uses_responder_order() {
    let ca = Config {
        dh_groups: vec![DhGroup::Modp2048, DhGroup::EcdhP256, DhGroup::EcdhP384],
        ..fast_config()
    };
    let cb = Config {
        dh_groups: vec![DhGroup::EcdhP256, DhGroup::Modp2048],
        hip_ciphers: vec![HipCipher::Aes128Cbc, HipCipher::Aes256Cbc],
        esp_suites: vec![EspSuite::Aes128CbcSha256, EspSuite::Aes256CbcSha256],
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP384, 1),
        ca,
        cb,
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
    let s =
        p.a.endpoint
            .association_by_peer(b_hit)
            .unwrap()
            .suites()
            .unwrap();
    assert_eq!(s.dh_group, DhGroup::EcdhP256, "Responder's order wins");
    // The Initiator's preference picks the cipher/ESP among the offered.
    assert_eq!(s.hip_cipher, HipCipher::Aes256Cbc);
    assert_eq!(s.esp, EspSuite::Aes256CbcSha256);
}

#[test]
fn group3_only_initiator_completes_with_default_responder() {
    // DH group 3 (MODP-1536) is MUST (RFC 7401 §5.2.7): the default list
    // carries it last, so an Initiator offering only group 3 succeeds.
    assert_eq!(
        Config::default().dh_groups.last(),
        Some(&DhGroup::Modp1536),
        "group 3 is the least preferred default group"
    );
    let ca = Config {
        dh_groups: vec![DhGroup::Modp1536],
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP384, 1),
        ca,
        fast_config(),
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
    assert_eq!(p.count_sent(Side::B, PacketType::R1), 1);
    assert_eq!(p.a.endpoint.stats().downgrade, 0);
    let a_hit = p.a.endpoint.local_hits()[0];
    for s in [
        p.a.endpoint.association_by_peer(b_hit).unwrap().suites(),
        p.b.endpoint.association_by_peer(a_hit).unwrap().suites(),
    ] {
        assert_eq!(s.unwrap().dh_group, DhGroup::Modp1536);
    }
}

#[test]
fn opportunistic_bex_learns_the_hit() {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::Rsa, 0),
        fast_config(),
        fast_config(),
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    let id =
        p.a.endpoint
            .connect(now, None, vec![addr(2)], None)
            .unwrap();
    assert_eq!(p.a.endpoint.association(id).unwrap().peer_hit(), None);
    check_bex(&mut p);
    assert_eq!(
        p.a.endpoint.association(id).unwrap().peer_hit(),
        Some(b_hit)
    );
}

#[test]
fn simultaneous_open_larger_hit_responds() {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 2),
        test_identity(IdentityKind::EcdsaP384, 2),
        fast_config(),
        fast_config(),
    );
    let a_hit = p.a.endpoint.local_hits()[0];
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    let ida =
        p.a.endpoint
            .connect(now, Some(b_hit), vec![addr(2)], None)
            .unwrap();
    let idb =
        p.b.endpoint
            .connect(now, Some(a_hit), vec![addr(1)], None)
            .unwrap();
    assert!(p.run_until(Duration::from_secs(30), both_established));
    assert_eq!(established(&p.a.events), 1);
    assert_eq!(established(&p.b.events), 1);
    let (greater, smaller) = if a_hit > b_hit {
        (&p.a, &p.b)
    } else {
        (&p.b, &p.a)
    };
    let g = greater.endpoint.associations().next().unwrap();
    let s = smaller.endpoint.associations().next().unwrap();
    assert_eq!(g.role(), Role::Responder);
    assert_eq!(s.role(), Role::Initiator);
    assert_eq!(p.a.endpoint.association_count(), 1);
    assert_eq!(p.b.endpoint.association_count(), 1);
    // Both keep the handle returned by connect.
    assert!(p.a.endpoint.association(ida).is_some());
    assert!(p.b.endpoint.association(idb).is_some());
    // The smaller host never sent an R1.
    let smaller_side = if a_hit > b_hit { Side::B } else { Side::A };
    assert_eq!(p.count_sent(smaller_side, PacketType::R1), 0);
    assert_eq!(p.count_sent(smaller_side.other(), PacketType::I2), 0);
}

/// Drops the first `n` packets of type `ty` sent by `from`.
fn drop_first(p: &mut Pair, from: Side, ty: PacketType, n: usize) {
    let mut left = n;
    p.set_filter(Some(Box::new(move |side, t| {
        let pt = hip_proto::wire::Packet::new_unchecked(&t.payload[..]).packet_type();
        if side == from && pt == ty && left > 0 {
            left -= 1;
            return false;
        }
        true
    })));
}

#[test]
fn lost_packets_are_recovered_by_retransmission() {
    for (from, ty) in [
        (Side::A, PacketType::I1),
        (Side::B, PacketType::R1),
        (Side::A, PacketType::I2),
        (Side::B, PacketType::R2),
    ] {
        let mut p = pair(
            test_identity(IdentityKind::EcdsaP256, 0),
            test_identity(IdentityKind::EcdsaP256, 1),
            fast_config(),
            fast_config(),
        );
        drop_first(&mut p, from, ty, 2);
        let b_hit = p.b.endpoint.local_hits()[0];
        let now = p.now;
        p.a.endpoint
            .connect(now, Some(b_hit), vec![addr(2)], None)
            .unwrap();
        check_bex(&mut p);
        assert!(p.count_sent(from, ty) >= 3, "{ty:?} was retransmitted");
        // Only one association on each side despite the duplicates.
        assert_eq!(p.b.endpoint.association_count(), 1);
        assert_eq!(established(&p.b.events), 0, "one Established per side");
    }
}

#[test]
fn lossy_reordering_duplicating_link_converges() {
    for seed in 0..6u64 {
        let now = Instant::now();
        let mut p = Pair::new(
            endpoint(
                test_identity(IdentityKind::EcdsaP256, 0),
                fast_config(),
                3,
                now,
            ),
            addr(1),
            endpoint(
                test_identity(IdentityKind::EcdsaP384, 1),
                fast_config(),
                4,
                now,
            ),
            addr(2),
            now,
            LinkConfig {
                latency: Duration::from_millis(20),
                jitter: Duration::from_millis(30),
                loss: 0.25,
                duplicate: 0.3,
            },
            seed,
        );
        let b_hit = p.b.endpoint.local_hits()[0];
        p.a.endpoint
            .connect(now, Some(b_hit), vec![addr(2)], None)
            .unwrap();
        assert!(
            p.run_until(Duration::from_secs(60), both_established),
            "seed {seed}"
        );
        assert_eq!(established(&p.a.events), 1);
        assert_eq!(p.b.endpoint.association_count(), 1);
    }
}

#[test]
fn i1_retries_exhausted_fails() {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        fast_config(),
        fast_config(),
    );
    p.set_filter(Some(Box::new(|side, _| side != Side::A)));
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    let id =
        p.a.endpoint
            .connect(now, Some(b_hit), vec![addr(2)], None)
            .unwrap();
    let failed = |p: &Pair| {
        p.a.events.iter().any(|e| {
            matches!(
                e,
                Event::Failed {
                    reason: FailReason::I1Timeout,
                    ..
                }
            )
        })
    };
    assert!(p.run_until(Duration::from_secs(120), failed));
    // 1 + 5 retries with 1, 2, 4, 8, 16, 32 s timeouts.
    assert_eq!(p.count_sent(Side::A, PacketType::I1), 6);
    assert!(p.now - now >= Duration::from_secs(63));
    assert_eq!(p.a.endpoint.association(id).unwrap().state(), State::Failed);
    // E-FAILED is eventually forgotten.
    p.run_for(Duration::from_secs(40));
    assert!(p.a.endpoint.association(id).is_none());
}

#[test]
fn close_and_close_ack() {
    let mut p = pair(
        test_identity(IdentityKind::Rsa, 0),
        test_identity(IdentityKind::EcdsaP384, 0),
        fast_config(),
        fast_config(),
    );
    let a_hit = p.a.endpoint.local_hits()[0];
    let b_hit = p.b.endpoint.local_hits()[0];
    bex_to(&mut p, b_hit);
    // Lose the first CLOSE: it is retransmitted.
    drop_first(&mut p, Side::A, PacketType::Close, 1);
    let now = p.now;
    p.a.endpoint.close(now, b_hit).unwrap();
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).unwrap().state(),
        State::Closing
    );
    assert!(p.run_until(Duration::from_secs(10), both_closed));
    // B entered CLOSED on the CLOSE, a round trip before A's CLOSE_ACK.
    let closed_at = p.now;
    p.run_for(Duration::from_millis(100));
    assert!(
        p.a.endpoint.association_by_peer(b_hit).is_none(),
        "A forgot B"
    );
    assert_eq!(
        p.b.endpoint.association_by_peer(a_hit).unwrap().state(),
        State::Closed
    );
    assert_eq!(p.count_sent(Side::A, PacketType::Close), 2);
    assert!(p.count_sent(Side::B, PacketType::CloseAck) >= 1);
    // CLOSED is held for UAL + 2·MSL (19 min with the defaults), then
    // removed.
    assert!(p.run_until(Duration::from_secs(25 * 60), |p| {
        p.b.endpoint.association_count() == 0
    }));
    let held = p.now - closed_at;
    let hold = Duration::from_secs(19 * 60);
    assert!(
        held >= hold - Duration::from_secs(1) && held <= hold + Duration::from_secs(1),
        "CLOSED held {held:?}"
    );
    // A new BEX works after closing.
    bex_to(&mut p, b_hit);
}

/// A closes toward B, every CLOSE is lost: returns (offsets of A's
/// CLOSEs from the `close` call, offset of A's give-up, i.e. its
/// [`Event::Closed`]). Checks A stays CLOSING until then and is removed.
fn unanswered_close(cfg: Config) -> (Vec<Duration>, Duration) {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        cfg,
        fast_config(),
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    bex_to(&mut p, b_hit);
    p.set_filter(Some(Box::new(|side, t| {
        let pt = hip_proto::wire::Packet::new_unchecked(&t.payload[..]).packet_type();
        !(side == Side::A && pt == PacketType::Close)
    })));
    let t0 = p.now;
    let log_start = p.log.len();
    p.a.endpoint.close(t0, b_hit).unwrap();
    let a_closed = |p: &Pair| p.a.events.iter().any(|e| matches!(e, Event::Closed { .. }));
    assert!(p.run_until(Duration::from_secs(3600), |p| {
        if !a_closed(p) {
            assert_eq!(
                p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
                Some(State::Closing),
                "at {:?}",
                p.now - t0
            );
        }
        a_closed(p)
    }));
    let gave_up = p.now - t0;
    assert!(p.a.endpoint.association_by_peer(b_hit).is_none(), "removed");
    // Nothing more is sent.
    p.run_for(Duration::from_secs(600));
    let closes: Vec<Duration> = p.log[log_start..]
        .iter()
        .filter(|l| l.from == Side::A && l.packet_type == PacketType::Close)
        .map(|l| {
            assert!(!l.sent, "dropped by the filter");
            l.at - t0
        })
        .collect();
    assert!(closes.last().is_some_and(|&l| l < gave_up), "{closes:?}");
    (closes, gave_up)
}

/// RFC 7401 §4.4 (CLOSING): CLOSE is resent until the summed timeouts
/// exceed UAL + MSL. Defaults: 1 s doubling to 64 s, UAL 15 min + MSL
/// 2 min = 1020 s: CLOSEs at 0, 1, 3, 7, 15, 31, 63, then every 64 s to
/// 959 s (21 in all); the sum reaches 1023 s > 1020 s: give-up at 1023 s.
#[test]
fn close_is_resent_until_the_summed_timeouts_exceed_ual_plus_msl() {
    let s = Duration::from_secs;
    let (closes, gave_up) = unanswered_close(fast_config());
    let mut want: Vec<Duration> = [0, 1, 3, 7, 15, 31, 63].map(s).to_vec();
    want.extend((1..=14).map(|k| s(63 + 64 * k)));
    assert_eq!(closes.len(), 21);
    assert_eq!(closes, want);
    assert_eq!(gave_up, s(1023));
    let c = Config::default();
    assert!(gave_up > c.ual + c.msl, "summed timeouts exceed UAL + MSL");
    assert!(
        gave_up - c.close_timeout_max <= c.ual + c.msl,
        "not one more"
    );
}

/// The same with configured UAL, MSL and maximum interval: 1 s doubling
/// to 4 s, UAL 10 s + MSL 5 s: sums 1, 3, 7, 11, 15 (not above 15:
/// resent), 19 (give up).
#[test]
fn close_retransmission_follows_the_configured_ual_msl_and_cap() {
    let s = Duration::from_secs;
    let cfg = Config {
        ual: s(10),
        msl: s(5),
        close_timeout_max: s(4),
        ..fast_config()
    };
    let (closes, gave_up) = unanswered_close(cfg);
    assert_eq!(closes, [0, 1, 3, 7, 11, 15].map(s));
    assert_eq!(gave_up, s(19));
    // A larger initial timeout, no cap reached: 2, 4, 8 → give-up at 14.
    let cfg = Config {
        ual: s(5),
        msl: s(1),
        close_timeout: s(2),
        ..fast_config()
    };
    let (closes, gave_up) = unanswered_close(cfg);
    assert_eq!(closes, [0, 2, 6].map(s));
    assert_eq!(gave_up, s(14));
}

#[test]
fn r1_rotation_and_counter() {
    let cfg = Config {
        r1_rotation: Duration::from_secs(10),
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        cfg.clone(),
        cfg,
    );
    assert_eq!(p.b.endpoint.r1_counter(), 1);
    let start = p.now;
    // Two rotations within 25 s (at 10 s and 20 s).
    assert!(p.run_until(Duration::from_secs(25), |p| p.b.endpoint.r1_counter() == 3));
    assert!(p.now - start >= Duration::from_secs(20));
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
}

/// A in I2-SENT with B, whose I2 is lost; B restarts with R1 counter
/// `restart_counter` and answers a late duplicate I1 of A. Returns the pair
/// after 10 s.
fn responder_restart(restart_counter: u64) -> Pair {
    let cfg = Config {
        r1_counter_start: 1_000,
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        cfg.clone(),
        cfg.clone(),
    );
    assert_eq!(p.b.endpoint.r1_counter(), 1_000);
    let (a_hit, b_hit) = (p.a.endpoint.local_hits()[0], p.b.endpoint.local_hits()[0]);
    p.set_filter(Some(Box::new(|side, t| {
        !(side == Side::A && Packet::new_unchecked(&t.payload[..]).packet_type() == PacketType::I2)
    })));
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    assert!(p.run_until(Duration::from_secs(1), |p| {
        p.a.endpoint
            .association_by_peer(b_hit)
            .is_some_and(|a| a.state() == State::I2Sent)
    }));
    // B restarts (same identity, fresh state).
    let restarted = Config {
        r1_counter_start: restart_counter,
        ..cfg
    };
    p.b.endpoint = endpoint(
        test_identity(IdentityKind::EcdsaP256, 1),
        restarted,
        9,
        p.now,
    );
    p.set_filter(None);
    p.inject(Side::B, i1_from(a_hit, b_hit, addr(1), addr(2)));
    p.run_for(Duration::from_secs(10));
    p
}

#[test]
fn r1_counter_starts_from_the_configured_value_and_survives_a_restart() {
    // Seeded from the wall clock (a later start → a higher counter), the
    // restarted Responder's R1 restarts the Initiator's I2 (RFC 7401 §6.8).
    let p = responder_restart(2_000);
    assert_eq!(p.a.endpoint.stats().i2_restarted, 1);
    assert_eq!(p.a.endpoint.stats().replay, 0);
    assert!(both_established(&p), "BEX completes with the restarted B");
    // A counter that restarted lower (the old fixed start at 1) is taken
    // for a replay: A keeps retransmitting an I2 the new B cannot use.
    let p = responder_restart(1);
    assert_eq!(p.a.endpoint.stats().i2_restarted, 0);
    assert!(p.a.endpoint.stats().replay >= 1);
    assert_eq!(established(&p.a.events), 0);
}

#[test]
fn udp_transport_bex() {
    let cfg = Config {
        initiator_transport: hip_proto::engine::Transport::Udp {
            src_port: 10500,
            dst_port: 10500,
        },
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        cfg.clone(),
        cfg,
    );
    p.set_filter(Some(Box::new(|_, t| {
        // Under UDP the HIP checksum is zero.
        assert_eq!(&t.payload[4..6], &[0, 0]);
        matches!(t.transport, hip_proto::engine::Transport::Udp { .. })
    })));
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
}

// ------------------------------------------------------------------
// RFC 7401 details: R1 rate limit, R1_COUNTER restart, HIT suite fallback.

fn i1_from(src_hit: Hit, dst_hit: Hit, src: IpAddr, dst: IpAddr) -> Datagram {
    let repr = PacketRepr::new(PacketType::I1, src_hit, dst_hit).with(Param::DhGroupList(vec![
        hip_proto::wire::DhGroupId::from(DhGroup::EcdhP384),
    ]));
    Datagram {
        src,
        dst,
        transport: Transport::Native,
        payload: repr
            .to_bytes(ChecksumMode::from_addrs(src, dst).unwrap())
            .unwrap(),
    }
}

fn fake_hit(n: u16) -> Hit {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x21]);
    b[14..].copy_from_slice(&n.to_be_bytes());
    Hit::from_bytes(b)
}

fn r1s_sent(ep: &mut Endpoint) -> usize {
    let mut n = 0;
    while let Some(t) = ep.poll_transmit() {
        if Packet::new_checked(&t.payload[..]).map(|p| p.packet_type()) == Ok(PacketType::R1) {
            n += 1;
        }
    }
    n
}

#[test]
fn i1_with_odd_fixed_bits_is_answered_with_a_correct_r1() {
    // RFC 7401 §5.1: the fixed bits P and S are ignored on receive.
    let now = Instant::now();
    let mut b = endpoint(
        test_identity(IdentityKind::EcdsaP256, 1),
        fast_config(),
        2,
        now,
    );
    let b_hit = b.local_hits()[0];
    let mut d = i1_from(fake_hit(1), b_hit, addr(1), addr(2));
    d.payload[2] |= 0x80; // P = 1
    d.payload[3] &= !0x01; // S = 0
    Packet::new_unchecked(&mut d.payload[..])
        .fill_checksum(ChecksumMode::from_addrs(addr(1), addr(2)).unwrap());
    b.handle(now, d);
    let r1 = b.poll_transmit().expect("R1 sent");
    let pkt = Packet::new_checked(&r1.payload[..]).unwrap();
    assert_eq!(pkt.packet_type(), PacketType::R1);
    assert_eq!(r1.payload[2] & 0x80, 0, "we send P = 0");
    assert_eq!(r1.payload[3], 0x21, "we send version 2, S = 1");
    assert_eq!(b.stats().malformed, 0);
}

#[test]
fn r1_rate_limit_token_bucket() {
    let now = Instant::now();
    let cfg = Config {
        r1_rate: 10,
        r1_burst: 3,
        ..fast_config()
    };
    let mut b = endpoint(test_identity(IdentityKind::EcdsaP256, 1), cfg, 2, now);
    let me = b.local_hits()[0];
    // A burst of 8 I1s from distinct Initiators: only the bucket (3) is answered.
    for n in 0..8 {
        b.handle(now, i1_from(fake_hit(n), me, addr(100 + n), addr(2)));
    }
    assert_eq!(r1s_sent(&mut b), 3);
    assert_eq!(b.stats().r1_rate_limited, 5);
    assert_eq!(b.stats().r1_sent, 3);
    // 10/s: 250 ms later two more tokens exist, not three.
    let later = now + Duration::from_millis(250);
    for n in 8..11 {
        b.handle(later, i1_from(fake_hit(n), me, addr(100 + n), addr(2)));
    }
    assert_eq!(r1s_sent(&mut b), 2);
    assert_eq!(b.stats().r1_rate_limited, 6);
    // The bucket never holds more than the burst, however long it idles.
    let much_later = later + Duration::from_secs(3600);
    for n in 11..16 {
        b.handle(much_later, i1_from(fake_hit(n), me, addr(100 + n), addr(2)));
    }
    assert_eq!(r1s_sent(&mut b), 3);
    // Rate 0 disables the limit; the default allows bursts of 200.
    for (r1_rate, expect) in [(0, 300), (1000, 200)] {
        let cfg = Config {
            r1_rate,
            ..fast_config()
        };
        let mut u = endpoint(test_identity(IdentityKind::EcdsaP256, 1), cfg, 2, now);
        for n in 0..300 {
            u.handle(now, i1_from(fake_hit(n), me, addr(100), addr(2)));
        }
        assert_eq!(r1s_sent(&mut u), expect, "rate {r1_rate}");
    }
    assert_eq!(Config::default().r1_rate, 1000);
}

#[test]
fn i2_sent_restarts_with_newer_r1_counter() {
    let resp_cfg = Config {
        r1_rotation: Duration::from_secs(10),
        ..fast_config()
    };
    let init_cfg = Config {
        i2_timeout: Duration::from_secs(100),
        ..fast_config()
    };
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        init_cfg,
        resp_cfg,
    );
    let drop_i2 = Rc::new(Cell::new(true));
    let counters = Rc::new(RefCell::new(Vec::new()));
    {
        let (drop_i2, counters) = (drop_i2.clone(), counters.clone());
        p.set_filter(Some(Box::new(move |from, t| {
            let Ok(pkt) = Packet::new_checked(&t.payload[..]) else {
                return true;
            };
            if from != Side::A || pkt.packet_type() != PacketType::I2 {
                return true;
            }
            let repr = PacketRepr::parse(&pkt).unwrap();
            if let Some(Param::R1Counter(c)) = repr.param(hip_proto::wire::param_type::R1_COUNTER) {
                counters.borrow_mut().push(c.counter);
            }
            !drop_i2.get()
        })));
    }
    let a_hit = p.a.endpoint.local_hits()[0];
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    assert!(p.run_until(
        Duration::from_secs(2),
        |p| p.count_sent(Side::A, PacketType::I2) == 1
    ));
    // The Responder moves to R1 generation 2; then a fresh R1 reaches the
    // Initiator (here: answer to an I1 injected in its name).
    assert!(p.run_until(Duration::from_secs(15), |p| p.b.endpoint.r1_counter() == 2));
    drop_i2.set(false);
    p.inject(Side::B, i1_from(a_hit, b_hit, addr(1), addr(2)));
    check_bex(&mut p);
    assert_eq!(p.a.endpoint.stats().i2_restarted, 1);
    assert_eq!(
        *counters.borrow(),
        vec![1, 2],
        "second I2 echoes the newer R1"
    );
}

fn two_identity_endpoint(cfg: Config, seed: u8, now: Instant) -> Endpoint {
    Endpoint::new(
        cfg,
        vec![
            test_identity(IdentityKind::Ed25519, 0),
            test_identity(IdentityKind::EcdsaP256, 0),
        ],
        backend(),
        [seed; 32],
        now,
    )
    .expect("endpoint")
}

#[test]
fn hit_suite_list_excluding_ours_restarts_from_an_accepted_identity() {
    let now = Instant::now();
    let resp_cfg = Config {
        hit_suites: vec![HitSuite::RsaDsaSha256, HitSuite::EcdsaSha384],
        ..fast_config()
    };
    let mut p = Pair::new(
        two_identity_endpoint(fast_config(), 1, now),
        addr(1),
        endpoint(test_identity(IdentityKind::EcdsaP384, 1), resp_cfg, 2, now),
        addr(2),
        now,
        LinkConfig::default(),
        7,
    );
    let [ed_hit, p256_hit] = p.a.endpoint.local_hits()[..] else {
        panic!("two identities")
    };
    let b_hit = p.b.endpoint.local_hits()[0];
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
    let a = p.a.endpoint.association_by_peer(b_hit).unwrap();
    assert_eq!(a.local_hit(), p256_hit);
    assert_ne!(a.local_hit(), ed_hit);
    assert_eq!(p.a.endpoint.stats().hit_suite_retries, 1);
    assert_eq!(p.count_sent(Side::A, PacketType::I1), 2);
    // The Responder never saw a suite-5 I2.
    assert_eq!(p.b.endpoint.stats().negotiation_failed, 0);
}

#[test]
fn hit_suite_list_without_an_acceptable_identity_fails() {
    let now = Instant::now();
    let resp_cfg = Config {
        hit_suites: vec![HitSuite::RsaDsaSha256],
        ..fast_config()
    };
    let mut p = Pair::new(
        two_identity_endpoint(fast_config(), 1, now),
        addr(1),
        endpoint(test_identity(IdentityKind::EcdsaP384, 1), resp_cfg, 2, now),
        addr(2),
        now,
        LinkConfig::default(),
        7,
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    assert!(
        p.run_until(Duration::from_secs(5), |p| p.a.events.iter().any(
            |e| matches!(
                e,
                Event::Failed {
                    reason: FailReason::UnsupportedHitSuite,
                    ..
                }
            )
        ))
    );
    assert_eq!(p.a.endpoint.stats().hit_suite_retries, 0);
}

#[test]
fn notify_unsupported_hit_suite_restarts_from_another_suite() {
    let now = Instant::now();
    let mut p = Pair::new(
        two_identity_endpoint(fast_config(), 1, now),
        addr(1),
        endpoint(
            test_identity(IdentityKind::EcdsaP384, 1),
            fast_config(),
            2,
            now,
        ),
        addr(2),
        now,
        LinkConfig::default(),
        7,
    );
    let [ed_hit, p256_hit] = p.a.endpoint.local_hits()[..] else {
        panic!("two identities")
    };
    let b_hit = p.b.endpoint.local_hits()[0];
    // The Responder's first R1 is lost; instead a NOTIFY UNSUPPORTED_HIT_SUITE
    // (as another implementation may send for an I1) arrives.
    let drop_r1 = Rc::new(Cell::new(true));
    {
        let drop_r1 = drop_r1.clone();
        p.set_filter(Some(Box::new(move |from, t| {
            let r1 =
                Packet::new_checked(&t.payload[..]).map(|p| p.packet_type()) == Ok(PacketType::R1);
            !(from == Side::B && r1 && drop_r1.get())
        })));
    }
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    assert!(p.run_until(
        Duration::from_millis(500),
        |p| p.count_sent(Side::B, PacketType::R1) == 1
    ));
    drop_r1.set(false);
    let notify = PacketRepr::new(PacketType::Notify, b_hit, ed_hit).with(Param::Notification(
        Notification {
            msg_type: NotifyType::UnsupportedHitSuite,
            data: Vec::new(),
        },
    ));
    p.inject(
        Side::A,
        Datagram {
            src: addr(2),
            dst: addr(1),
            transport: Transport::Native,
            payload: notify
                .to_bytes(ChecksumMode::from_addrs(addr(2), addr(1)).unwrap())
                .unwrap(),
        },
    );
    check_bex(&mut p);
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).unwrap().local_hit(),
        p256_hit
    );
    assert_eq!(p.a.endpoint.stats().hit_suite_retries, 1);
}

/// `set_puzzle_k` takes effect for the next exchange at once (new R1
/// generation) and leaves live associations alone.
#[test]
fn puzzle_difficulty_changes_at_run_time() {
    let cfg = fast_config();
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        cfg.clone(),
        cfg,
    );
    let b_hit = p.b.endpoint.local_hits()[0];
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(&mut p);
    let before = p.b.endpoint.r1_counter();
    let now = p.now;
    p.b.endpoint.set_puzzle_k(now, 9).unwrap();
    assert_eq!(p.b.endpoint.config().puzzle_k, 9);
    assert_eq!(p.b.endpoint.r1_counter(), before + 1, "R1s rebuilt at once");
    assert_eq!(p.b.endpoint.association_count(), 1);
    assert!(
        p.b.endpoint
            .associations()
            .all(|a| a.state() == hip_proto::engine::State::Established)
    );
}

/// RFC 7401 §4.4.4: an I1 received in CLOSED is answered with an R1, so
/// a host that closed an association can start a new base exchange with
/// the same peer at once (the peer holds CLOSED for minutes).
#[test]
fn new_bex_while_the_peer_holds_closed() {
    let mut p = pair(
        test_identity(IdentityKind::EcdsaP256, 0),
        test_identity(IdentityKind::EcdsaP256, 1),
        fast_config(),
        fast_config(),
    );
    let a_hit = p.a.endpoint.local_hits()[0];
    let b_hit = p.b.endpoint.local_hits()[0];
    bex_to(&mut p, b_hit);
    let now = p.now;
    p.a.endpoint.close(now, b_hit).unwrap();
    assert!(p.run_until(Duration::from_secs(10), both_closed));
    assert_eq!(
        p.b.endpoint.association_by_peer(a_hit).unwrap().state(),
        State::Closed
    );
    p.a.events.clear();
    p.b.events.clear();
    bex_to(&mut p, b_hit);
}

/// A connects to B (at address 2) and the exchange completes.
fn bex_to(p: &mut Pair, b_hit: Hit) {
    let now = p.now;
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .unwrap();
    check_bex(p);
}

/// Both ends reported the association closed.
fn both_closed(p: &Pair) -> bool {
    p.a.events.iter().any(|e| matches!(e, Event::Closed { .. }))
        && p.b.events.iter().any(|e| matches!(e, Event::Closed { .. }))
}
