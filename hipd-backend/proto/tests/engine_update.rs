//! UPDATE over the in-memory pair harness: readdress (mobility) with
//! address verification, multihoming and path steering, credit-based
//! authorization, SEQ/ACK loss recovery, duplicates and replays, bad
//! HIP_MAC, rekeying with and without DH, UPDATE give-up → CLOSING, probes,
//! SA pairs added with ESP_INFO(OLD = 0) and deleted with ESP_INFO(NEW = 0).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::time::Duration;

use hip_proto::crypto::esp::open_buffer_len;
use hip_proto::crypto::{DhGroup, SecurityAssociation};
#[cfg(feature = "fuzzing")]
use hip_proto::engine::Transport;
use hip_proto::engine::testing::{
    IdentityKind, LinkConfig, Pair, Side, addr, backend, test_identity,
};
use hip_proto::engine::{
    Config, Datagram, Endpoint, EngineError, Event, LocalLocator, LocatorState, MAX_SA_PAIRS,
    RekeyAnswerDh, SaChange, State, Transmit,
};
#[cfg(feature = "fuzzing")]
use hip_proto::wire::EspInfo;
use hip_proto::wire::{ChecksumMode, Hit, PacketRepr, PacketType, Param, param_type as pt};

const A1: u16 = 1;
const B1: u16 = 2;
const B2: u16 = 0x22;

fn cfg() -> Config {
    Config {
        puzzle_k: 2,
        dh_groups: vec![DhGroup::EcdhP256],
        ..Config::default()
    }
}

/// A pair with a completed BEX (A initiated). Returns the pair and the
/// SAs (A out, A in, B out, B in).
fn established_pair(c: Config) -> (Pair, [SecurityAssociation; 4]) {
    let now = std::time::Instant::now();
    let ea = Endpoint::new(
        c.clone(),
        vec![test_identity(IdentityKind::EcdsaP256, 0)],
        backend(),
        [1; 32],
        now,
    )
    .expect("endpoint a");
    let eb = Endpoint::new(
        c,
        vec![test_identity(IdentityKind::EcdsaP256, 1)],
        backend(),
        [2; 32],
        now,
    )
    .expect("endpoint b");
    let mut p = Pair::new(ea, addr(A1), eb, addr(B1), now, LinkConfig::default(), 11);
    assert!(p.establish(addr(B1)));
    let (ao, ai) = take_sas(&mut p.a.events);
    let (bo, bi) = take_sas(&mut p.b.events);
    (p, [ao, ai, bo, bi])
}

fn take_sas(events: &mut Vec<Event>) -> (SecurityAssociation, SecurityAssociation) {
    let pos = events
        .iter()
        .rposition(|e| matches!(e, Event::Established { .. } | Event::SasRekeyed { .. }))
        .expect("SA event");
    match events.remove(pos) {
        Event::Established { sas, .. } | Event::SasRekeyed { sas, .. } => {
            let s = *sas;
            (s.outbound, s.inbound)
        }
        _ => unreachable!(),
    }
}

fn hits(p: &Pair) -> (Hit, Hit) {
    (p.a.endpoint.local_hits()[0], p.b.endpoint.local_hits()[0])
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

fn seal(tx: &mut SecurityAssociation, src: Hit, dst: Hit) -> Vec<u8> {
    let inner = inner_packet(src, dst, b"payload over the new path");
    let mut out = vec![0u8; tx.seal_buffer_len(inner.len())];
    let n = tx.seal(&inner, &mut out).expect("seal");
    out.truncate(n);
    out
}

fn opens(rx: &mut SecurityAssociation, esp: &[u8]) -> bool {
    let mut plain = vec![0u8; open_buffer_len(esp.len())];
    rx.open(esp, 64, &mut plain).is_ok()
}

fn local(n: u16, ifindex: u32, preferred: bool) -> LocalLocator {
    LocalLocator {
        addr: addr(n),
        ifindex,
        preferred,
    }
}

fn peer_state(p: &Pair, side: Side, peer: Hit, n: u16) -> Option<LocatorState> {
    let ep = match side {
        Side::A => &p.a.endpoint,
        Side::B => &p.b.endpoint,
    };
    ep.locators(peer)?
        .peer
        .iter()
        .find(|l| l.addr == addr(n))
        .map(|l| l.state)
}

fn path_changes(events: &[Event]) -> Vec<(IpAddr, IpAddr)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PathChanged { src, dst, .. } => Some((*src, *dst)),
            _ => None,
        })
        .collect()
}

fn is_update(t: &Transmit) -> bool {
    PacketRepr::parse_bytes(&t.payload).is_ok_and(|r| r.packet_type == PacketType::Update)
}

fn update_repr(t: &Transmit) -> Option<PacketRepr> {
    PacketRepr::parse_bytes(&t.payload)
        .ok()
        .filter(|r| r.packet_type == PacketType::Update)
}

/// Moves B from B1 to B2 and announces it.
fn move_b(p: &mut Pair) {
    p.b.addr = addr(B2);
    let t = p.now;
    p.b.endpoint.set_local_locators(t, vec![local(B2, 7, true)]);
}

#[test]
fn readdress_verifies_new_address_and_switches_path() {
    let (mut p, [mut a_out, mut a_in, mut b_out, mut b_in]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    move_b(&mut p);
    // B switched its own path at once.
    assert_eq!(p.b.endpoint.route(a_hit), Some((addr(B2), addr(A1))));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
            && p.b.endpoint.stats().update_received >= 1
    }));
    // A: old address deprecated, new one verified, path switched.
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B1),
        Some(LocatorState::Deprecated)
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B2))));
    assert_eq!(path_changes(&p.a.events), vec![(addr(A1), addr(B2))]);
    assert_eq!(path_changes(&p.b.events), vec![(addr(B2), addr(A1))]);
    assert!(p.a.events.iter().any(|e| matches!(e,
        Event::PeerLocatorState { addr: x, state: LocatorState::Active, .. } if *x == addr(B2))));
    assert_eq!(p.a.endpoint.stats().locators_verified, 1);
    let view = p.b.endpoint.locators(a_hit).expect("view");
    assert_eq!(view.local.len(), 1);
    assert_eq!(view.local[0].ifindex, 7);
    assert!(view.local[0].preferred);
    // The mobility exchange used UPDATE(LOCATOR_SET, SEQ, ESP_INFO) →
    // UPDATE(SEQ, ACK, ECHO_REQUEST) → UPDATE(ACK, ECHO_RESPONSE).
    assert_eq!(p.count_sent(Side::B, PacketType::Update), 2);
    assert_eq!(p.count_sent(Side::A, PacketType::Update), 1);
    // Nothing pending: quiet afterwards, no retransmissions.
    p.run_for(Duration::from_secs(20));
    assert_eq!(p.count_sent(Side::B, PacketType::Update), 2);
    assert_eq!(p.a.endpoint.stats().update_retransmit, 0);
    assert_eq!(p.b.endpoint.stats().update_retransmit, 0);
    // ESP keeps flowing (SAs are address independent): A → B2, B2 → A.
    let a_ok = p.a.endpoint.authorize_send(p.now, b_hit, addr(B2), 1400);
    assert!(a_ok, "verified locator needs no credit");
    let esp = seal(&mut a_out, a_hit, b_hit);
    assert!(opens(&mut b_in, &esp));
    let esp = seal(&mut b_out, b_hit, a_hit);
    assert!(opens(&mut a_in, &esp));
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
}

#[test]
fn lost_update_and_lost_ack_are_retransmitted() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    // Drop B's first announcement and A's first answer.
    let dropped = Rc::new(RefCell::new((0u32, 0u32)));
    let d = dropped.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if !is_update(t) {
            return true;
        }
        let mut d = d.borrow_mut();
        match side {
            Side::B if d.0 == 0 => {
                d.0 += 1;
                false
            }
            Side::A if d.1 == 0 => {
                d.1 += 1;
                false
            }
            _ => true,
        }
    })));
    move_b(&mut p);
    assert!(p.run_until(Duration::from_secs(20), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
    }));
    assert_eq!(*dropped.borrow(), (1, 1));
    assert!(p.b.endpoint.stats().update_retransmit >= 1);
    // B's retransmission arrived after A had processed nothing (first was
    // lost); A's answer was lost, so A retransmits (or re-answers the
    // duplicate SEQ with its stored reply).
    let a_stats = p.a.endpoint.stats();
    assert!(a_stats.update_retransmit + a_stats.update_duplicate >= 1);
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B2))));
    assert_eq!(p.b.endpoint.route(a_hit), Some((addr(B2), addr(A1))));
    p.run_for(Duration::from_secs(30));
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
    assert_eq!(p.a.endpoint.stats().locators_verified, 1);
}

#[test]
fn duplicate_update_is_reacked_but_not_reprocessed() {
    let (mut p, _) = established_pair(cfg());
    let (_, b_hit) = hits(&p);
    let captured: Rc<RefCell<Vec<Transmit>>> = Rc::default();
    let c = captured.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B && is_update(t) {
            c.borrow_mut().push(t.clone());
        }
        true
    })));
    move_b(&mut p);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
    }));
    p.run_for(Duration::from_secs(2));
    let announce = captured.borrow()[0].clone();
    let r = update_repr(&announce).expect("update");
    assert!(r.has(pt::LOCATOR_SET) && r.has(pt::SEQ) && r.has(pt::ESP_INFO));
    let events_before = p.a.events.len();
    let sent_before = p.count_sent(Side::A, PacketType::Update);
    let stats_before = p.a.endpoint.stats().clone();
    for _ in 0..2 {
        p.inject(
            Side::A,
            Datagram {
                src: announce.src.expect("src"),
                dst: announce.dst,
                transport: announce.transport,
                payload: announce.payload.clone(),
            },
        );
        p.run_for(Duration::from_millis(100));
    }
    let s = p.a.endpoint.stats();
    assert_eq!(s.update_duplicate, stats_before.update_duplicate + 2);
    assert_eq!(s.locators_verified, stats_before.locators_verified);
    // Re-ACKed each time (the stored reply), nothing reprocessed.
    assert_eq!(p.count_sent(Side::A, PacketType::Update), sent_before + 2);
    assert!(
        p.a.events[events_before..].iter().all(|e| !matches!(
            e,
            Event::PeerLocatorState { .. } | Event::PathChanged { .. }
        )),
        "duplicate produced events: {:?}",
        &p.a.events[events_before..]
    );
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B2),
        Some(LocatorState::Active)
    );
}

#[test]
fn old_seq_outside_the_window_is_dropped() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let captured: Rc<RefCell<Vec<Transmit>>> = Rc::default();
    let c = captured.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B && is_update(t) {
            c.borrow_mut().push(t.clone());
        }
        true
    })));
    // 70 probes from B advance B's Update ID past the 64-entry window.
    for _ in 0..70 {
        let t = p.now;
        p.b.endpoint
            .probe(t, a_hit, addr(B1), addr(A1))
            .expect("probe");
        p.run_for(Duration::from_millis(50));
    }
    let replies =
        p.b.events
            .iter()
            .filter(|e| matches!(e, Event::ProbeReply { .. }))
            .count();
    assert_eq!(replies, 70);
    let first = captured.borrow()[0].clone();
    let replay_before = p.a.endpoint.stats().replay;
    p.inject(
        Side::A,
        Datagram {
            src: first.src.expect("src"),
            dst: first.dst,
            transport: first.transport,
            payload: first.payload,
        },
    );
    let sent_before = p.count_sent(Side::A, PacketType::Update);
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.a.endpoint.stats().replay, replay_before + 1);
    assert_eq!(p.count_sent(Side::A, PacketType::Update), sent_before);
    let _ = b_hit;
}

fn flip_mac(t: &mut Transmit) {
    let mut r = PacketRepr::parse_bytes(&t.payload).expect("parse");
    for prm in &mut r.params {
        if let Param::HipMac(m) = prm {
            m[0] ^= 0x80;
        }
    }
    let mode = ChecksumMode::from_addrs(t.src.expect("src"), t.dst).expect("mode");
    t.payload = r.to_bytes(mode).expect("emit");
}

#[test]
fn update_with_bad_hmac_is_dropped_and_counted() {
    let (mut p, _) = established_pair(cfg());
    let (_, b_hit) = hits(&p);
    let done = Rc::new(RefCell::new(false));
    let d = done.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B && is_update(t) && !*d.borrow() {
            *d.borrow_mut() = true;
            flip_mac(t);
        }
        true
    })));
    move_b(&mut p);
    p.run_for(Duration::from_millis(200));
    assert!(*done.borrow());
    assert_eq!(p.a.endpoint.stats().bad_hmac, 1);
    assert_eq!(p.a.endpoint.stats().update_received, 0);
    assert_eq!(p.count_sent(Side::A, PacketType::Update), 0, "no ACK");
    assert_eq!(peer_state(&p, Side::A, b_hit, B2), None);
    // The retransmission (untouched) goes through.
    assert!(p.run_until(Duration::from_secs(10), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
    }));
    assert_eq!(p.a.endpoint.stats().bad_hmac, 1);
}

#[test]
fn multihoming_set_peer_preferred_switches_after_verification() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    p.b.aliases.push(addr(B2));
    let t = p.now;
    p.b.endpoint
        .set_local_locators(t, vec![local(B1, 2, true), local(B2, 3, false)]);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Unverified)
            && p.b.endpoint.stats().update_received >= 1
    }));
    p.run_for(Duration::from_secs(1));
    // Not preferred: not verified yet, path unchanged, no credit use while
    // an ACTIVE locator exists.
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B2),
        Some(LocatorState::Unverified)
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert!(path_changes(&p.a.events).is_empty());
    let t = p.now;
    p.a.endpoint.on_data_received(t, b_hit, 100_000);
    assert!(!p.a.endpoint.can_send_to(t, b_hit, addr(B2), 100));
    assert!(p.a.endpoint.can_send_to(t, b_hit, addr(B1), 100_000_000));
    // Unknown and deprecated locators are refused.
    assert!(p.a.endpoint.set_peer_preferred(t, b_hit, addr(99)).is_err());
    // Steer to B2: verification first, then the switch.
    let switched =
        p.a.endpoint
            .set_peer_preferred(t, b_hit, addr(B2))
            .expect("set_peer_preferred");
    assert!(!switched);
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.endpoint.route(b_hit) == Some((addr(A1), addr(B2)))
    }));
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B2),
        Some(LocatorState::Active)
    );
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B1),
        Some(LocatorState::Active)
    );
    assert_eq!(path_changes(&p.a.events), vec![(addr(A1), addr(B2))]);
    // Back to B1 (already ACTIVE): immediate.
    let t = p.now;
    assert!(
        p.a.endpoint
            .set_peer_preferred(t, b_hit, addr(B1))
            .expect("back")
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    // B steers its own source to B2 and announces the new P bit.
    p.b.endpoint
        .set_local_preferred(t, a_hit, addr(B2))
        .expect("set_local_preferred");
    assert_eq!(p.b.endpoint.route(a_hit), Some((addr(B2), addr(A1))));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.endpoint
            .locators(b_hit)
            .is_some_and(|v| v.peer.iter().any(|l| l.addr == addr(B2) && l.preferred))
    }));
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B2))));
    let view = p.b.endpoint.locators(a_hit).expect("view");
    assert_eq!(
        view.local
            .iter()
            .map(|l| (l.addr, l.ifindex, l.preferred))
            .collect::<Vec<_>>(),
        vec![(addr(B1), 2, false), (addr(B2), 3, true)]
    );
}

#[test]
fn credit_limits_sending_to_an_unverified_locator() {
    let (mut p, _) = established_pair(cfg());
    let (_, b_hit) = hits(&p);
    // A cannot reach B2 yet: verification stays pending.
    p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
        !(side == Side::A && t.dst == addr(B2))
    })));
    move_b(&mut p);
    assert!(p.run_until(Duration::from_secs(1), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Unverified)
    }));
    let t = p.now;
    let ep = &mut p.a.endpoint;
    assert_eq!(ep.route(b_hit), Some((addr(A1), addr(B2))));
    assert!(!ep.can_send_to(t, b_hit, addr(B2), 1), "no credit yet");
    assert!(!ep.can_send_to(t, b_hit, addr(B1), 1), "deprecated");
    ep.on_data_received(t, b_hit, 1000);
    assert!(ep.can_send_to(t, b_hit, addr(B2), 1000));
    assert!(!ep.can_send_to(t, b_hit, addr(B2), 1001));
    assert!(ep.authorize_send(t, b_hit, addr(B2), 600));
    assert!(!ep.authorize_send(t, b_hit, addr(B2), 600), "400 left");
    assert_eq!(ep.locators(b_hit).expect("view").credit, 400);
    // Ageing: × 7/8 every 5 s.
    let later = t + Duration::from_secs(5);
    assert!(ep.can_send_to(later, b_hit, addr(B2), 350));
    assert!(!ep.can_send_to(later, b_hit, addr(B2), 351));
    let much_later = t + Duration::from_secs(10);
    assert!(ep.can_send_to(much_later, b_hit, addr(B2), 306));
    assert!(!ep.can_send_to(much_later, b_hit, addr(B2), 307));
}

fn rekey_test(new_dh: bool) {
    let (mut p, [mut a_out, mut a_in, mut b_out, mut b_in]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let seen: Rc<RefCell<Vec<(Side, bool, bool)>>> = Rc::default();
    let s = seen.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if let Some(r) = update_repr(t) {
            s.borrow_mut()
                .push((side, r.has(pt::DIFFIE_HELLMAN), r.has(pt::ESP_INFO)));
        }
        true
    })));
    let old_a_in = a_in.spi();
    let old_b_in = b_in.spi();
    let t = p.now;
    p.a.endpoint.rekey(t, b_hit, new_dh).expect("rekey");
    assert!(
        p.a.endpoint.rekey(t, b_hit, new_dh).is_err(),
        "one at a time"
    );
    let rekeyed = |e: &Vec<Event>| e.iter().any(|e| matches!(e, Event::SasRekeyed { .. }));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        rekeyed(&p.a.events) && rekeyed(&p.b.events)
    }));
    p.run_for(Duration::from_secs(3));
    // UPDATE(ESP_INFO, SEQ, [DH]) → UPDATE(ESP_INFO, SEQ, ACK, [DH]) → UPDATE(ACK).
    assert_eq!(
        *seen.borrow(),
        vec![
            (Side::A, new_dh, true),
            (Side::B, new_dh, true),
            (Side::A, false, false)
        ]
    );
    let (mut na_out, mut na_in) = take_sas(&mut p.a.events);
    let (mut nb_out, mut nb_in) = take_sas(&mut p.b.events);
    assert_eq!(na_out.spi(), nb_in.spi());
    assert_eq!(nb_out.spi(), na_in.spi());
    assert_ne!(na_in.spi(), old_a_in);
    assert_ne!(nb_in.spi(), old_b_in);
    // New keys work both ways; old SAs cannot open new traffic.
    let esp = seal(&mut na_out, a_hit, b_hit);
    assert!(!opens(&mut b_in, &esp));
    assert!(opens(&mut nb_in, &esp));
    let esp = seal(&mut nb_out, b_hit, a_hit);
    assert!(!opens(&mut a_in, &esp));
    assert!(opens(&mut na_in, &esp));
    // Old SAs still deliver until retired.
    let esp = seal(&mut a_out, a_hit, b_hit);
    assert!(opens(&mut b_in, &esp));
    let esp = seal(&mut b_out, b_hit, a_hit);
    assert!(opens(&mut a_in, &esp));
    assert_eq!(
        p.a.endpoint.association_by_spi(old_a_in).map(|a| a.id()),
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.id())
    );
    // Traffic on the new inbound SA retires the old pair.
    let t = p.now;
    p.a.endpoint.esp_received(t, na_in.spi());
    p.b.endpoint.esp_received(t, nb_in.spi());
    p.run_for(Duration::from_millis(10));
    let retired = |e: &Vec<Event>| {
        e.iter()
            .filter_map(|e| match e {
                Event::SasRetired {
                    inbound_spi,
                    outbound_spi,
                    ..
                } => Some((*inbound_spi, *outbound_spi)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(retired(&p.a.events), vec![(old_a_in, old_b_in)]);
    assert_eq!(retired(&p.b.events), vec![(old_b_in, old_a_in)]);
    assert!(p.a.endpoint.association_by_spi(old_a_in).is_none());
    assert!(p.b.endpoint.association_by_spi(old_b_in).is_none());
    assert_eq!(p.a.endpoint.stats().rekeys, 1);
    assert_eq!(p.b.endpoint.stats().rekeys, 1);
    let a = p.a.endpoint.association_by_peer(b_hit).expect("assoc");
    assert_eq!(a.spi_inbound(), na_in.spi());
    assert_eq!(a.spi_outbound(), na_out.spi());
    // A second rekey from the other side works too.
    let t = p.now;
    p.b.endpoint.rekey(t, a_hit, !new_dh).expect("second rekey");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        rekeyed(&p.a.events) && rekeyed(&p.b.events)
    }));
    let (mut a3_out, _) = take_sas(&mut p.a.events);
    let (_, mut b3_in) = take_sas(&mut p.b.events);
    let esp = seal(&mut a3_out, a_hit, b_hit);
    assert!(opens(&mut b3_in, &esp));
    assert_eq!(p.a.endpoint.stats().rekeys, 2);
}

#[test]
fn rekey_without_new_dh() {
    rekey_test(false);
}

#[test]
fn rekey_with_new_dh() {
    rekey_test(true);
}

/// One rekey requested by `from`: asserts which UPDATEs carried a new DH
/// (request, answer) and that the new SAs seal on one side and open on the
/// other in both directions (and old inbound SAs do not open new traffic).
fn rekey_once(p: &mut Pair, from: Side, req_dh: bool, answer_dh: bool) {
    let (a_hit, b_hit) = hits(p);
    let seen: Rc<RefCell<Vec<(Side, bool)>>> = Rc::default();
    let s = seen.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if let Some(r) = update_repr(t)
            && r.has(pt::ESP_INFO)
        {
            s.borrow_mut().push((side, r.has(pt::DIFFIE_HELLMAN)));
        }
        true
    })));
    let before = (
        p.a.endpoint.stats().rekeys,
        p.b.endpoint.stats().rekeys,
        p.a.endpoint
            .association_by_peer(b_hit)
            .expect("a")
            .spi_inbound(),
        p.b.endpoint
            .association_by_peer(a_hit)
            .expect("b")
            .spi_inbound(),
    );
    let t = p.now;
    match from {
        Side::A => p.a.endpoint.rekey(t, b_hit, req_dh),
        Side::B => p.b.endpoint.rekey(t, a_hit, req_dh),
    }
    .expect("rekey");
    let rekeyed = |e: &Vec<Event>| e.iter().any(|e| matches!(e, Event::SasRekeyed { .. }));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        rekeyed(&p.a.events) && rekeyed(&p.b.events)
    }));
    p.run_for(Duration::from_millis(100));
    p.set_filter(None);
    assert_eq!(
        *seen.borrow(),
        vec![(from, req_dh), (from.other(), answer_dh)],
        "DH in request / answer"
    );
    assert_eq!(p.a.endpoint.stats().rekeys, before.0 + 1);
    assert_eq!(p.b.endpoint.stats().rekeys, before.1 + 1);
    let (mut a_out, mut a_in) = take_sas(&mut p.a.events);
    let (mut b_out, mut b_in) = take_sas(&mut p.b.events);
    assert_eq!(a_out.spi(), b_in.spi());
    assert_eq!(b_out.spi(), a_in.spi());
    assert_ne!(a_in.spi(), before.2);
    assert_ne!(b_in.spi(), before.3);
    let esp = seal(&mut a_out, a_hit, b_hit);
    assert!(opens(&mut b_in, &esp), "A → B on the new SAs");
    let esp = seal(&mut b_out, b_hit, a_hit);
    assert!(opens(&mut a_in, &esp), "B → A on the new SAs");
    p.a.events.clear();
    p.b.events.clear();
}

#[test]
fn rekey_with_one_sided_dh_reuses_the_other_sides_last_key() {
    // (request carries DH, answer policy, answer carries DH)
    let cases = [
        (true, RekeyAnswerDh::Mirror, true),
        (true, RekeyAnswerDh::Never, false),
        (false, RekeyAnswerDh::Always, true),
        (false, RekeyAnswerDh::Mirror, false),
    ];
    for (req_dh, policy, answer_dh) in cases {
        let c = Config {
            rekey_answer_dh: policy,
            ..cfg()
        };
        let (mut p, [mut a_out, _, _, mut b_in]) = established_pair(c);
        let (a_hit, b_hit) = hits(&p);
        rekey_once(&mut p, Side::A, req_dh, answer_dh);
        // The BEX pair still works until it is retired.
        let esp = seal(&mut a_out, a_hit, b_hit);
        assert!(opens(&mut b_in, &esp));
        // Then rekeys from the other side and again from A: each one-sided
        // DH combines with the last DH value the other side sent (from the
        // BEX or a previous rekey), so both ends keep deriving equal keys.
        rekey_once(&mut p, Side::B, req_dh, answer_dh);
        rekey_once(&mut p, Side::A, !req_dh, policy_answer(policy, !req_dh));
        rekey_once(&mut p, Side::B, !req_dh, policy_answer(policy, !req_dh));
    }
}

fn policy_answer(policy: RekeyAnswerDh, req_dh: bool) -> bool {
    match policy {
        RekeyAnswerDh::Mirror => req_dh,
        RekeyAnswerDh::Always => true,
        RekeyAnswerDh::Never => false,
    }
}

#[test]
fn lost_rekey_answer_is_recovered() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let dropped = Rc::new(RefCell::new(0u32));
    let d = dropped.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B && is_update(t) && *d.borrow() == 0 {
            *d.borrow_mut() += 1;
            return false;
        }
        true
    })));
    let t = p.now;
    p.a.endpoint.rekey(t, b_hit, true).expect("rekey");
    assert!(p.run_until(Duration::from_secs(10), |p| {
        p.a.events
            .iter()
            .any(|e| matches!(e, Event::SasRekeyed { .. }))
    }));
    let (mut a_out, _) = take_sas(&mut p.a.events);
    let (_, mut b_in) = take_sas(&mut p.b.events);
    assert_eq!(a_out.spi(), b_in.spi());
    let esp = seal(&mut a_out, a_hit, b_hit);
    assert!(opens(&mut b_in, &esp));
    assert_eq!(p.b.endpoint.stats().rekeys, 1, "B rekeyed once");
    assert!(p.b.endpoint.stats().update_duplicate >= 1);
}

#[test]
fn update_retries_exhausted_goes_to_closing() {
    let c = Config {
        update_retries: 3,
        ..cfg()
    };
    let (mut p, _) = established_pair(c);
    let (_, b_hit) = hits(&p);
    p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
        !(side == Side::A && is_update(t))
    })));
    let t = p.now;
    p.a.endpoint.rekey(t, b_hit, false).expect("rekey");
    assert!(p.run_until(Duration::from_secs(30), |p| {
        p.a.endpoint
            .association_by_peer(b_hit)
            .is_none_or(|a| a.state() != State::Established)
    }));
    assert_eq!(
        p.count_sent(Side::A, PacketType::Update),
        4,
        "1 + 3 retries"
    );
    assert_eq!(p.a.endpoint.stats().update_retransmit, 3);
    assert_eq!(p.a.endpoint.stats().update_timeout, 1);
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Closing)
    );
    assert!(p.count_sent(Side::A, PacketType::Close) >= 1);
    // CLOSE goes through: both sides end closed.
    assert!(p.run_until(Duration::from_secs(30), |p| {
        p.a.events.iter().any(|e| matches!(e, Event::Closed { .. }))
            && p.b.events.iter().any(|e| matches!(e, Event::Closed { .. }))
    }));
}

#[test]
fn probes_report_reply_and_loss() {
    let (mut p, _) = established_pair(cfg());
    let (_, b_hit) = hits(&p);
    let t = p.now;
    let id =
        p.a.endpoint
            .probe(t, b_hit, addr(A1), addr(B1))
            .expect("probe");
    assert!(p.run_until(Duration::from_secs(2), |p| {
        p.a.events
            .iter()
            .any(|e| matches!(e, Event::ProbeReply { .. }))
    }));
    let reply =
        p.a.events
            .iter()
            .find_map(|e| match e {
                Event::ProbeReply {
                    probe,
                    src,
                    dst,
                    rtt,
                    ..
                } => Some((*probe, *src, *dst, *rtt)),
                _ => None,
            })
            .expect("reply");
    assert_eq!(reply.0, id);
    assert_eq!((reply.1, reply.2), (addr(A1), addr(B1)));
    assert_eq!(reply.3, Duration::from_millis(20), "2 × 10 ms latency");
    // Probing an unknown locator is refused.
    assert!(p.a.endpoint.probe(t, b_hit, addr(A1), addr(77)).is_err());
    // A lost probe: no retransmission, ProbeLost after the timeout, the
    // association stays up.
    p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
        !(side == Side::A && is_update(t))
    })));
    let t = p.now;
    let before = p.count_sent(Side::A, PacketType::Update);
    let id2 =
        p.a.endpoint
            .probe(t, b_hit, addr(A1), addr(B1))
            .expect("probe");
    p.run_for(Duration::from_secs(3));
    assert_eq!(p.count_sent(Side::A, PacketType::Update), before + 1);
    assert!(p.a.events.iter().any(
        |e| matches!(e, Event::ProbeLost { probe, dst, .. } if *probe == id2 && *dst == addr(B1))
    ));
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
}

#[test]
fn local_locator_api_edges() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let t = p.now;
    // Unknown peers.
    let stranger = Hit::from_u128(0x2001_0010_0000_0000_0000_0000_0000_0042);
    assert!(p.a.endpoint.route(stranger).is_none());
    assert!(p.a.endpoint.locators(stranger).is_none());
    assert!(p.a.endpoint.rekey(t, stranger, false).is_err());
    assert!(!p.a.endpoint.can_send_to(t, stranger, addr(B1), 1));
    // Local preferred must be one of our locators.
    assert!(p.a.endpoint.set_local_preferred(t, b_hit, addr(9)).is_err());
    // Re-announcing the same set sends nothing.
    let before = p.count_sent(Side::A, PacketType::Update);
    p.a.endpoint.set_local_locators(t, vec![local(A1, 0, true)]);
    p.run_for(Duration::from_millis(100));
    assert_eq!(p.count_sent(Side::A, PacketType::Update), before);
    // A second address is announced; B learns it as UNVERIFIED.
    p.a.aliases.push(addr(0x11));
    let t = p.now;
    p.a.endpoint
        .set_local_locators(t, vec![local(A1, 1, true), local(0x11, 2, false)]);
    assert!(p.run_until(Duration::from_secs(2), |p| {
        peer_state(p, Side::B, a_hit, 0x11) == Some(LocatorState::Unverified)
    }));
    assert_eq!(
        peer_state(&p, Side::B, a_hit, A1),
        Some(LocatorState::Active)
    );
}

#[test]
fn finite_locator_lifetimes_are_refreshed_and_expire() {
    // Enough retries that B keeps retransmitting (instead of closing)
    // while its refreshes are lost.
    let c = Config {
        locator_lifetime: 10,
        update_retries: 20,
        ..cfg()
    };
    let (mut p, _) = established_pair(c);
    let (a_hit, b_hit) = hits(&p);
    move_b(&mut p);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
    }));
    let lt =
        p.a.endpoint
            .locators(b_hit)
            .expect("view")
            .peer
            .iter()
            .find(|l| l.addr == addr(B2))
            .map(|l| (l.lifetime, l.expires.is_some(), l.spi));
    let b_spi =
        p.b.endpoint
            .association_by_peer(a_hit)
            .map(|a| a.spi_inbound());
    assert_eq!(lt, Some((10, true, b_spi)));
    // B re-announces every 5 s: B2 stays ACTIVE well past 10 s.
    p.run_for(Duration::from_secs(30));
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B2),
        Some(LocatorState::Active)
    );
    assert!(p.count_sent(Side::B, PacketType::Update) >= 6);
    // Refreshes stop reaching A: the locator expires → DEPRECATED.
    p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
        !(side == Side::B && is_update(t))
    })));
    assert!(
        p.run_until(Duration::from_secs(12), |p| {
            peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Deprecated)
        }),
        "{:?} {:?} {:?}",
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        p.a.endpoint.locators(b_hit),
        p.a.endpoint.stats()
    );
    assert!(p.a.events.iter().any(|e| matches!(e,
        Event::PeerLocatorState { addr: x, state: LocatorState::Deprecated, .. } if *x == addr(B2))));
    assert_eq!(p.a.endpoint.route(b_hit), None, "no usable locator left");
}

#[test]
fn mobility_and_rekey_converge_on_a_lossy_reordering_link() {
    for seed in 0..16u64 {
        let (mut p, _) = established_pair(cfg());
        let (a_hit, b_hit) = hits(&p);
        p.link = LinkConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(15),
            loss: 0.2,
            duplicate: 0.2,
        };
        // Different impairment draws per seed.
        for _ in 0..seed {
            let t = p.now;
            let _ = p.a.endpoint.probe(t, b_hit, addr(A1), addr(B1));
            p.run_for(Duration::from_millis(30));
        }
        // B moves, both add a rekey on top.
        move_b(&mut p);
        let t = p.now;
        p.a.endpoint.rekey(t, b_hit, seed % 2 == 0).expect("rekey");
        let rekeyed = |e: &Vec<Event>| e.iter().any(|e| matches!(e, Event::SasRekeyed { .. }));
        let ok = p.run_until(Duration::from_secs(60), |p| {
            p.a.endpoint.route(b_hit) == Some((addr(A1), addr(B2)))
                && peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Active)
                && rekeyed(&p.a.events)
                && rekeyed(&p.b.events)
        });
        assert!(
            ok,
            "seed {seed}: a={:?} b={:?}",
            p.a.endpoint.stats(),
            p.b.endpoint.stats()
        );
        let (mut a_out, _) = take_sas(&mut p.a.events);
        let (_, mut b_in) = take_sas(&mut p.b.events);
        assert_eq!(a_out.spi(), b_in.spi(), "seed {seed}");
        let esp = seal(&mut a_out, a_hit, b_hit);
        assert!(opens(&mut b_in, &esp), "seed {seed}");
        assert_eq!(p.a.endpoint.stats().rekeys, 1, "seed {seed}");
        assert_eq!(p.b.endpoint.stats().rekeys, 1, "seed {seed}");
        for (side, ep) in [(Side::A, &p.a.endpoint), (Side::B, &p.b.endpoint)] {
            let peer = if side == Side::A { b_hit } else { a_hit };
            assert_eq!(
                ep.association_by_peer(peer).map(|a| a.state()),
                Some(State::Established),
                "seed {seed} {side:?}"
            );
        }
    }
}

fn peer_probed(events: &[Event]) -> Vec<(IpAddr, IpAddr, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PeerProbed {
                src,
                dst,
                exploring,
                ..
            } => Some((*src, *dst, *exploring)),
            _ => None,
        })
        .collect()
}

const A2: u16 = 0x12;

#[test]
fn set_path_forces_a_pair_until_replaced_or_invalid() {
    let (mut p, _) = established_pair(cfg());
    let (_, b_hit) = hits(&p);
    p.a.aliases.push(addr(A2));
    p.b.aliases.push(addr(B2));
    let t = p.now;
    p.a.endpoint
        .set_local_locators(t, vec![local(A1, 1, true), local(A2, 2, false)]);
    p.b.endpoint
        .set_local_locators(t, vec![local(B1, 2, true), local(B2, 3, false)]);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Unverified)
    }));
    p.run_for(Duration::from_secs(1));
    let t = p.now;
    // Refusals: unknown source, unknown/mixed destination.
    assert!(p.a.endpoint.set_path(t, b_hit, addr(99), addr(B1)).is_err());
    assert!(p.a.endpoint.set_path(t, b_hit, addr(A1), addr(77)).is_err());
    let v4 = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    assert!(p.a.endpoint.set_path(t, b_hit, v4, addr(B1)).is_err());
    // UNVERIFIED destination: verified first, then forced.
    let now_forced =
        p.a.endpoint
            .set_path(t, b_hit, addr(A1), addr(B2))
            .expect("set_path");
    assert!(!now_forced);
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.endpoint.route(b_hit) == Some((addr(A1), addr(B2)))
    }));
    assert_eq!(path_changes(&p.a.events), vec![(addr(A1), addr(B2))]);
    // Preference flags are untouched: B1 stays the peer's preferred one.
    let view = p.a.endpoint.locators(b_hit).expect("view");
    assert!(view.peer.iter().any(|l| l.addr == addr(B1) && l.preferred));
    assert!(!view.peer.iter().any(|l| l.addr == addr(B2) && l.preferred));
    // An ACTIVE destination with our other source: immediate.
    let t = p.now;
    assert!(
        p.a.endpoint
            .set_path(t, b_hit, addr(A2), addr(B1))
            .expect("set_path")
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A2), addr(B1))));
    assert!(
        p.a.endpoint
            .locators(b_hit)
            .expect("view")
            .local
            .iter()
            .any(|l| l.addr == addr(A1) && l.preferred),
        "our preferred locator is unchanged"
    );
    // The forced pair survives traffic and time (choose_path keeps it).
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A2), addr(B1))));
    // set_peer_preferred replaces it.
    let t = p.now;
    assert!(
        p.a.endpoint
            .set_peer_preferred(t, b_hit, addr(B1))
            .expect("pref")
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    // Forced again onto B2; B withdraws B2 → DEPRECATED → the forced pair
    // is invalid and the normal choice comes back.
    assert!(
        p.a.endpoint
            .set_path(t, b_hit, addr(A2), addr(B2))
            .expect("active now")
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A2), addr(B2))));
    let t = p.now;
    p.b.endpoint.set_local_locators(t, vec![local(B1, 2, true)]);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::A, b_hit, B2) == Some(LocatorState::Deprecated)
    }));
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert_eq!(
        path_changes(&p.a.events).last(),
        Some(&(addr(A1), addr(B1)))
    );
    let t = p.now;
    assert!(matches!(
        p.a.endpoint.set_path(t, b_hit, addr(A1), addr(B2)),
        Err(hip_proto::engine::EngineError::DeprecatedLocator(_))
    ));
}

#[test]
fn peer_probed_reports_probes_verifications_and_the_exploring_marker() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let echoes: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let seen = echoes.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::A
            && let Some(r) = update_repr(t)
        {
            for prm in r.params_of(pt::ECHO_REQUEST_SIGNED) {
                if let Param::EchoRequestSigned(e) = prm {
                    seen.borrow_mut().push(e.clone());
                }
            }
        }
        true
    })));
    let t = p.now;
    let plain =
        p.a.endpoint
            .probe(t, b_hit, addr(A1), addr(B1))
            .expect("probe");
    p.run_for(Duration::from_millis(100));
    assert_eq!(peer_probed(&p.b.events), vec![(addr(A1), addr(B1), false)]);
    let t = p.now;
    let expl =
        p.a.endpoint
            .probe_exploring(t, b_hit, addr(A1), addr(B1))
            .expect("probe");
    assert_ne!(plain, expl);
    p.run_for(Duration::from_millis(100));
    assert_eq!(
        peer_probed(&p.b.events),
        vec![(addr(A1), addr(B1), false), (addr(A1), addr(B1), true)]
    );
    // Both answered, matched by nonce, with the pair and the RTT.
    let replies: Vec<(u64, IpAddr, IpAddr, Duration)> =
        p.a.events
            .iter()
            .filter_map(|e| match e {
                Event::ProbeReply {
                    probe,
                    src,
                    dst,
                    rtt,
                    ..
                } => Some((*probe, *src, *dst, *rtt)),
                _ => None,
            })
            .collect();
    let ms20 = Duration::from_millis(20);
    assert_eq!(
        replies,
        vec![
            (plain, addr(A1), addr(B1), ms20),
            (expl, addr(A1), addr(B1), ms20)
        ]
    );
    // Wire: 16-byte nonce, then marker ‖ 16-byte nonce.
    let e = echoes.borrow().clone();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].len(), 16);
    assert_eq!(e[1].len(), 20);
    assert_eq!(e[1][..4], hip_proto::engine::EXPLORING_MARKER);
    // An address verification is reported too (not exploring): B learns
    // A2 and verifies it when told to prefer it.
    p.set_filter(None);
    p.a.aliases.push(addr(A2));
    let t = p.now;
    p.a.endpoint
        .set_local_locators(t, vec![local(A1, 1, true), local(A2, 2, false)]);
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_state(p, Side::B, a_hit, A2) == Some(LocatorState::Unverified)
    }));
    let t = p.now;
    p.b.endpoint
        .set_peer_preferred(t, a_hit, addr(A2))
        .expect("pref");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        peer_probed(&p.a.events).contains(&(addr(B1), addr(A2), false))
    }));
}

// ------------------------------------------------ ESP_INFO OLD = 0 / NEW = 0

/// A data plane as the daemon keeps it: inbound SAs by SPI, outbound SAs
/// by SPI, updated from the engine's events.
#[derive(Default)]
struct DataPlane {
    inbound: HashMap<u32, SecurityAssociation>,
    outbound: HashMap<u32, SecurityAssociation>,
}

impl DataPlane {
    fn new(out: SecurityAssociation, inb: SecurityAssociation) -> Self {
        let mut d = DataPlane::default();
        d.outbound.insert(out.spi(), out);
        d.inbound.insert(inb.spi(), inb);
        d
    }

    /// Applies and drains the SA events.
    fn apply(&mut self, events: &mut Vec<Event>) {
        for e in std::mem::take(events) {
            match e {
                Event::SasRekeyed { sas, .. } => {
                    let s = *sas;
                    self.outbound.insert(s.outbound.spi(), s.outbound);
                    self.inbound.insert(s.inbound.spi(), s.inbound);
                }
                Event::SasRetired {
                    inbound_spi,
                    outbound_spi,
                    ..
                } => {
                    self.inbound.remove(&inbound_spi);
                    self.outbound.remove(&outbound_spi);
                }
                other => events.push(other),
            }
        }
    }

    fn send(&mut self, spi: u32, src: Hit, dst: Hit) -> Option<Vec<u8>> {
        self.outbound.get_mut(&spi).map(|sa| seal(sa, src, dst))
    }

    /// Demultiplexes by SPI and opens; false for an unknown SPI or a bad
    /// packet.
    fn receive(&mut self, esp: &[u8]) -> bool {
        let Some(spi) = esp
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return false;
        };
        self.inbound.get_mut(&spi).is_some_and(|sa| opens(sa, esp))
    }
}

fn sa_events(events: &[Event]) -> Vec<(u32, u32, SaChange)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SasRekeyed {
                old_inbound_spi,
                old_outbound_spi,
                kind,
                ..
            } => Some((*old_inbound_spi, *old_outbound_spi, *kind)),
            _ => None,
        })
        .collect()
}

fn retired(events: &[Event]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SasRetired {
                inbound_spi,
                outbound_spi,
                ..
            } => Some((*inbound_spi, *outbound_spi)),
            _ => None,
        })
        .collect()
}

/// The UPDATEs on the wire: (sender, ESP_INFO (OLD, NEW), has SEQ, has
/// ACK, has DH).
type UpdLog = Rc<RefCell<Vec<(Side, Option<(u32, u32)>, bool, bool, bool)>>>;

fn log_updates(p: &mut Pair) -> UpdLog {
    let seen: UpdLog = Rc::default();
    let s = seen.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if let Some(r) = update_repr(t) {
            let esp = match r.param(pt::ESP_INFO) {
                Some(Param::EspInfo(i)) => Some((i.old_spi, i.new_spi)),
                _ => None,
            };
            s.borrow_mut().push((
                side,
                esp,
                r.has(pt::SEQ),
                r.has(pt::ACK),
                r.has(pt::DIFFIE_HELLMAN),
            ));
        }
        true
    })));
    seen
}

/// Adds a pair from A; returns the data planes and the new pair's SPIs
/// (A in, B in).
fn add_pair(p: &mut Pair, dp_a: &mut DataPlane, dp_b: &mut DataPlane, new_dh: bool) -> (u32, u32) {
    let (a_hit, b_hit) = hits(p);
    let before_a = p.a.endpoint.sa_pairs(b_hit);
    let before_b = p.b.endpoint.sa_pairs(a_hit);
    let t = p.now;
    p.a.endpoint.add_sa(t, b_hit, new_dh).expect("add_sa");
    let added = |e: &Vec<Event>| {
        e.iter().any(|e| {
            matches!(
                e,
                Event::SasRekeyed {
                    kind: SaChange::Added,
                    ..
                }
            )
        })
    };
    assert!(p.run_until(Duration::from_secs(5), |p| {
        added(&p.a.events) && added(&p.b.events)
    }));
    p.run_for(Duration::from_millis(100));
    // The old primary pair is named, and stays live.
    assert_eq!(
        sa_events(&p.a.events),
        vec![(before_a[0].0, before_a[0].1, SaChange::Added)]
    );
    assert_eq!(
        sa_events(&p.b.events),
        vec![(before_b[0].0, before_b[0].1, SaChange::Added)]
    );
    dp_a.apply(&mut p.a.events);
    dp_b.apply(&mut p.b.events);
    let pa = p.a.endpoint.sa_pairs(b_hit);
    let pb = p.b.endpoint.sa_pairs(a_hit);
    assert_eq!(pa.len(), before_a.len() + 1);
    assert_eq!(pa[1..], before_a[..], "old pairs kept, newest first");
    assert_eq!(pb[1..], before_b[..]);
    // Crosswise SPIs.
    assert_eq!(pa[0].0, pb[0].1);
    assert_eq!(pa[0].1, pb[0].0);
    (pa[0].0, pb[0].0)
}

fn add_sa_test(new_dh: bool) {
    let (mut p, [ao, ai, bo, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let (bex_a_in, bex_b_in) = (ai.spi(), bi.spi());
    let mut dp_a = DataPlane::new(ao, ai);
    let mut dp_b = DataPlane::new(bo, bi);
    let seen = log_updates(&mut p);
    let (a_in, b_in) = add_pair(&mut p, &mut dp_a, &mut dp_b, new_dh);
    assert!(![bex_a_in, bex_b_in].contains(&a_in));
    assert!(![bex_a_in, bex_b_in].contains(&b_in));
    // UPDATE(ESP_INFO(0, a_in), SEQ, [DH]) → UPDATE(ESP_INFO(0, b_in),
    // SEQ, ACK, [DH]) → UPDATE(ACK).
    assert_eq!(
        *seen.borrow(),
        vec![
            (Side::A, Some((0, a_in)), true, false, new_dh),
            (Side::B, Some((0, b_in)), true, true, new_dh),
            (Side::A, None, false, true, false),
        ]
    );
    // ESP round trips through the new pair, both ways.
    let esp = dp_a.send(b_in, a_hit, b_hit).expect("A's new outbound");
    assert!(dp_b.receive(&esp));
    let esp = dp_b.send(a_in, b_hit, a_hit).expect("B's new outbound");
    assert!(dp_a.receive(&esp));
    // New keys differ from the old pair's: B's old inbound SA cannot open
    // traffic sealed for the new one even under its SPI.
    let mut esp = dp_a.send(b_in, a_hit, b_hit).expect("seal");
    esp[..4].copy_from_slice(&bex_b_in.to_be_bytes());
    assert!(!dp_b.receive(&esp));
    // The base-exchange pair keeps working both ways.
    let esp = dp_a.send(bex_b_in, a_hit, b_hit).expect("old outbound");
    assert!(dp_b.receive(&esp));
    let esp = dp_b.send(bex_a_in, b_hit, a_hit).expect("old outbound");
    assert!(dp_a.receive(&esp));
    // Traffic on the new inbound SA retires nothing: both pairs are live.
    let t = p.now;
    p.a.endpoint.esp_received(t, a_in);
    p.b.endpoint.esp_received(t, b_in);
    p.run_for(Duration::from_secs(3));
    assert!(retired(&p.a.events).is_empty());
    assert!(retired(&p.b.events).is_empty());
    for spi in [bex_a_in, a_in] {
        assert!(p.a.endpoint.association_by_spi(spi).is_some());
    }
    for spi in [bex_b_in, b_in] {
        assert!(p.b.endpoint.association_by_spi(spi).is_some());
    }
    // The new pair is primary: a rekey replaces it, not the BEX pair.
    let a = p.a.endpoint.association_by_peer(b_hit).expect("assoc");
    assert_eq!((a.spi_inbound(), a.spi_outbound()), (a_in, b_in));
    assert_eq!(p.a.endpoint.stats().rekeys, 1);
    assert_eq!(p.b.endpoint.stats().rekeys, 1);
    let t = p.now;
    p.b.endpoint.rekey(t, a_hit, false).expect("rekey");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !sa_events(&p.a.events).is_empty() && !sa_events(&p.b.events).is_empty()
    }));
    assert_eq!(sa_events(&p.a.events), vec![(a_in, b_in, SaChange::Rekey)]);
    assert_eq!(p.a.endpoint.sa_pairs(b_hit).len(), 2);
    assert_eq!(p.a.endpoint.sa_pairs(b_hit)[1], (bex_a_in, bex_b_in));
}

#[test]
fn esp_info_old_zero_adds_a_usable_pair_without_dh() {
    add_sa_test(false);
}

#[test]
fn esp_info_old_zero_adds_a_usable_pair_with_dh() {
    add_sa_test(true);
}

#[test]
fn esp_info_new_zero_deletes_a_pair_and_its_packets_are_rejected() {
    let (mut p, [ao, ai, bo, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let (bex_a_in, bex_b_in) = (ai.spi(), bi.spi());
    let mut dp_a = DataPlane::new(ao, ai);
    let mut dp_b = DataPlane::new(bo, bi);
    // With one pair, nothing can be deleted.
    let t = p.now;
    assert_eq!(
        p.a.endpoint.delete_sa(t, b_hit, bex_a_in),
        Err(EngineError::LastSaPair)
    );
    let (a2, b2) = add_pair(&mut p, &mut dp_a, &mut dp_b, false);
    let (a3, b3) = add_pair(&mut p, &mut dp_a, &mut dp_b, false);
    assert_eq!(
        p.a.endpoint.sa_pairs(b_hit),
        vec![(a3, b3), (a2, b2), (bex_a_in, bex_b_in)]
    );
    assert_eq!(
        p.a.endpoint.delete_sa(t, b_hit, 12345),
        Err(EngineError::UnknownSpi(12345))
    );
    let seen = log_updates(&mut p);
    // A deletes the middle pair.
    let t = p.now;
    p.a.endpoint.delete_sa(t, b_hit, a2).expect("delete");
    assert_eq!(
        p.a.endpoint.add_sa(t, b_hit, false),
        Err(EngineError::RekeyInProgress),
        "one SA operation at a time"
    );
    // Until the answer, the pair still works.
    let esp = dp_b.send(a2, b_hit, a_hit).expect("seal");
    assert!(dp_a.receive(&esp));
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !retired(&p.a.events).is_empty() && !retired(&p.b.events).is_empty()
    }));
    p.run_for(Duration::from_millis(100));
    assert_eq!(retired(&p.a.events), vec![(a2, b2)]);
    assert_eq!(retired(&p.b.events), vec![(b2, a2)]);
    // UPDATE(ESP_INFO(a2, 0), SEQ) → UPDATE(ESP_INFO(b2, 0), SEQ, ACK) →
    // UPDATE(ACK).
    assert_eq!(
        *seen.borrow(),
        vec![
            (Side::A, Some((a2, 0)), true, false, false),
            (Side::B, Some((b2, 0)), true, true, false),
            (Side::A, None, false, true, false),
        ]
    );
    // Sealed before the deletion, delivered after: rejected on both sides.
    let late_to_b = dp_a.send(b2, a_hit, b_hit).expect("seal");
    let late_to_a = dp_b.send(a2, b_hit, a_hit).expect("seal");
    dp_a.apply(&mut p.a.events);
    dp_b.apply(&mut p.b.events);
    assert!(!dp_b.receive(&late_to_b));
    assert!(!dp_a.receive(&late_to_a));
    assert!(dp_a.send(b2, a_hit, b_hit).is_none(), "outbound removed");
    assert!(p.a.endpoint.association_by_spi(a2).is_none());
    assert!(p.b.endpoint.association_by_spi(b2).is_none());
    assert_eq!(
        p.a.endpoint.sa_pairs(b_hit),
        vec![(a3, b3), (bex_a_in, bex_b_in)]
    );
    assert_eq!(
        p.b.endpoint.sa_pairs(a_hit),
        vec![(b3, a3), (bex_b_in, bex_a_in)]
    );
    // The others still carry traffic.
    for (out, inn) in [(b3, a3), (bex_b_in, bex_a_in)] {
        let esp = dp_a.send(out, a_hit, b_hit).expect("seal");
        assert!(dp_b.receive(&esp));
        let esp = dp_b.send(inn, b_hit, a_hit).expect("seal");
        assert!(dp_a.receive(&esp));
    }
    // B deletes the primary pair: the newest remaining one is promoted.
    let t = p.now;
    p.b.endpoint
        .delete_sa(t, a_hit, b3)
        .expect("delete primary");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !retired(&p.a.events).is_empty() && !retired(&p.b.events).is_empty()
    }));
    p.run_for(Duration::from_millis(100));
    assert_eq!(retired(&p.a.events), vec![(a3, b3)]);
    assert_eq!(retired(&p.b.events), vec![(b3, a3)]);
    dp_a.apply(&mut p.a.events);
    dp_b.apply(&mut p.b.events);
    let a = p.a.endpoint.association_by_peer(b_hit).expect("assoc");
    assert_eq!((a.spi_inbound(), a.spi_outbound()), (bex_a_in, bex_b_in));
    let b = p.b.endpoint.association_by_peer(a_hit).expect("assoc");
    assert_eq!((b.spi_inbound(), b.spi_outbound()), (bex_b_in, bex_a_in));
    let esp = dp_b.send(a3, b_hit, a_hit);
    assert!(esp.is_none());
    let esp = dp_b.send(bex_a_in, b_hit, a_hit).expect("seal");
    assert!(dp_a.receive(&esp));
    // And the last one cannot go.
    let t = p.now;
    assert_eq!(
        p.b.endpoint.delete_sa(t, a_hit, bex_b_in),
        Err(EngineError::LastSaPair)
    );
    // Everything still established, nothing timed out.
    assert_eq!(p.a.endpoint.stats().update_timeout, 0);
    assert_eq!(p.b.endpoint.stats().update_timeout, 0);
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
}

#[test]
fn lost_delete_answer_is_recovered_from_the_stored_reply() {
    let (mut p, [ao, ai, bo, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let mut dp_a = DataPlane::new(ao, ai);
    let mut dp_b = DataPlane::new(bo, bi);
    let (a2, b2) = add_pair(&mut p, &mut dp_a, &mut dp_b, false);
    let dropped = Rc::new(RefCell::new(0u32));
    let d = dropped.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B && is_update(t) && *d.borrow() == 0 {
            *d.borrow_mut() += 1;
            return false;
        }
        true
    })));
    let t = p.now;
    p.a.endpoint.delete_sa(t, b_hit, a2).expect("delete");
    assert!(p.run_until(Duration::from_secs(10), |p| {
        !retired(&p.a.events).is_empty()
    }));
    p.run_for(Duration::from_secs(1));
    assert_eq!(*dropped.borrow(), 1);
    assert_eq!(retired(&p.a.events), vec![(a2, b2)]);
    assert_eq!(retired(&p.b.events), vec![(b2, a2)], "B deleted once");
    assert!(p.b.endpoint.stats().update_duplicate >= 1);
    assert_eq!(p.b.endpoint.sa_pairs(a_hit).len(), 1);
}

// Crafted UPDATEs need `Endpoint::seal_control_for_fuzzing` (feature
// `fuzzing`): `cargo test -p hip-proto --features fuzzing`. The ESP_INFO
// classification itself is unit-tested in `engine::endpoint::update`.

/// An UPDATE from A to B with `params`, authenticated with A's keys.
#[cfg(feature = "fuzzing")]
fn crafted_update(p: &Pair, params: Vec<Param>) -> Datagram {
    let (a_hit, b_hit) = hits(p);
    let mut repr = PacketRepr::new(PacketType::Update, a_hit, b_hit);
    repr.params = params;
    repr.sort_params();
    let payload =
        p.a.endpoint
            .seal_control_for_fuzzing(repr, Some(addr(A1)), addr(B1), Transport::Native)
            .expect("seal");
    Datagram {
        src: addr(A1),
        dst: addr(B1),
        transport: Transport::Native,
        payload,
    }
}

#[cfg(feature = "fuzzing")]
fn esp_info(old_spi: u32, new_spi: u32) -> Param {
    Param::EspInfo(EspInfo {
        keymat_index: 0,
        old_spi,
        new_spi,
    })
}

/// Hands `d` to B directly; returns the UPDATEs B sent in answer.
#[cfg(feature = "fuzzing")]
fn deliver_to_b(p: &mut Pair, d: Datagram) -> usize {
    let t = p.now;
    p.b.endpoint.handle(t, d);
    let mut n = 0;
    while let Some(t) = p.b.endpoint.poll_transmit() {
        n += usize::from(is_update(&t));
    }
    n
}

#[cfg(feature = "fuzzing")]
#[test]
fn malformed_esp_info_combinations_are_dropped_and_counted() {
    let (mut p, [_, ai, _, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let (a_in, b_in) = (ai.spi(), bi.spi());
    let s0 = p.b.endpoint.stats().clone();
    // Malformed: both zero; unknown OLD with NEW = 0 and with NEW ≠ 0; a
    // new pair whose NEW SPI B already sends on; B's own inbound SPI as
    // OLD (OLD names the receiver's outbound SPI).
    let cases = [
        esp_info(0, 0),
        esp_info(0xdead_beef, 0),
        esp_info(0xdead_beef, 0x1234_5678),
        esp_info(0, a_in),
        esp_info(b_in, 0),
    ];
    let n = cases.len() as u64;
    for c in cases {
        let d = crafted_update(&p, vec![c, Param::Seq(0)]);
        assert_eq!(deliver_to_b(&mut p, d), 0, "not acknowledged");
    }
    let s = p.b.endpoint.stats().clone();
    assert_eq!(s.malformed, s0.malformed + n);
    // Unsupported: deleting the only pair.
    let d = crafted_update(&p, vec![esp_info(a_in, 0), Param::Seq(0)]);
    assert_eq!(deliver_to_b(&mut p, d), 0);
    assert_eq!(p.b.endpoint.stats().unsupported, s0.unsupported + 1);
    // Nothing changed, no event, and the dropped UPDATEs did not consume
    // Update ID 0: A's real request with SEQ 0 goes through.
    p.run_for(Duration::from_millis(50));
    assert!(sa_events(&p.b.events).is_empty());
    assert!(retired(&p.b.events).is_empty());
    assert_eq!(p.b.endpoint.sa_pairs(a_hit), vec![(b_in, a_in)]);
    assert_eq!(p.b.endpoint.stats().update_duplicate, 0);
    let t = p.now;
    p.a.endpoint.add_sa(t, b_hit, false).expect("add");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        !sa_events(&p.a.events).is_empty()
    }));
    assert_eq!(p.b.endpoint.sa_pairs(a_hit).len(), 2);
}

#[test]
fn sa_pair_limit_is_enforced_on_both_sides() {
    let (mut p, [ao, ai, bo, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let mut dp_a = DataPlane::new(ao, ai);
    let mut dp_b = DataPlane::new(bo, bi);
    for _ in 1..MAX_SA_PAIRS {
        add_pair(&mut p, &mut dp_a, &mut dp_b, false);
    }
    assert_eq!(p.a.endpoint.sa_pairs(b_hit).len(), MAX_SA_PAIRS);
    let t = p.now;
    assert_eq!(
        p.a.endpoint.add_sa(t, b_hit, false),
        Err(EngineError::SaPairLimit)
    );
    // A peer asking for one more is refused, unacknowledged.
    #[cfg(feature = "fuzzing")]
    {
        let unsupported = p.b.endpoint.stats().unsupported;
        let d = crafted_update(&p, vec![esp_info(0, 0x4242_4242), Param::Seq(1000)]);
        assert_eq!(deliver_to_b(&mut p, d), 0);
        assert_eq!(p.b.endpoint.stats().unsupported, unsupported + 1);
    }
    assert_eq!(p.b.endpoint.sa_pairs(a_hit).len(), MAX_SA_PAIRS);
    // Every pair works.
    for (a_in, b_in) in p.a.endpoint.sa_pairs(b_hit) {
        let esp = dp_a.send(b_in, a_hit, b_hit).expect("seal");
        assert!(dp_b.receive(&esp));
        let esp = dp_b.send(a_in, b_hit, a_hit).expect("seal");
        assert!(dp_a.receive(&esp));
    }
}

#[test]
fn crossing_add_and_delete_resolve_by_hit_order() {
    let (mut p, [ao, ai, bo, bi]) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let mut dp_a = DataPlane::new(ao, ai);
    let mut dp_b = DataPlane::new(bo, bi);
    let (a2, _) = add_pair(&mut p, &mut dp_a, &mut dp_b, false);
    // Both start an SA operation at once: A deletes, B adds.
    let t = p.now;
    p.a.endpoint.delete_sa(t, b_hit, a2).expect("delete");
    p.b.endpoint.add_sa(t, a_hit, false).expect("add");
    p.run_for(Duration::from_secs(5));
    let (r_a, r_b) = (retired(&p.a.events), retired(&p.b.events));
    let (s_a, s_b) = (sa_events(&p.a.events), sa_events(&p.b.events));
    if a_hit > b_hit {
        // A keeps its deletion; B abandons its addition.
        assert_eq!(r_a.len(), 1);
        assert_eq!(r_b.len(), 1);
        assert!(s_a.is_empty() && s_b.is_empty());
        assert_eq!(p.a.endpoint.sa_pairs(b_hit).len(), 1);
    } else {
        assert!(r_a.is_empty() && r_b.is_empty());
        assert_eq!(s_a.len(), 1);
        assert_eq!(s_b.len(), 1);
        assert_eq!(p.a.endpoint.sa_pairs(b_hit).len(), 3);
    }
    // Either way both sides agree and nothing is stuck: a new operation
    // from the loser works.
    let pa = p.a.endpoint.sa_pairs(b_hit);
    let pb: Vec<(u32, u32)> =
        p.b.endpoint
            .sa_pairs(a_hit)
            .into_iter()
            .map(|(i, o)| (o, i))
            .collect();
    assert_eq!(pa, pb);
    let t = p.now;
    if a_hit > b_hit {
        p.b.endpoint.add_sa(t, a_hit, false).expect("retry add");
    } else {
        p.a.endpoint.delete_sa(t, b_hit, a2).expect("retry delete");
    }
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.endpoint.sa_pairs(b_hit).len() == 2 && p.b.endpoint.sa_pairs(a_hit).len() == 2
    }));
    assert_eq!(p.a.endpoint.stats().update_timeout, 0);
    assert_eq!(p.b.endpoint.stats().update_timeout, 0);
}

/// `hipconf daemon manual-update`: announcing the unchanged locator set to
/// every association sends one UPDATE with LOCATOR_SET each time, the
/// peer acknowledges it, and nothing else changes.
#[test]
fn announce_to_all_sends_an_update_even_when_nothing_changed() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let announced = Rc::new(RefCell::new(0u32));
    let n = announced.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B
            && update_repr(t)
                .is_some_and(|r| r.params.iter().any(|x| matches!(x, Param::LocatorSet(_))))
        {
            *n.borrow_mut() += 1;
        }
        true
    })));
    for round in 1..=2 {
        let t = p.now;
        assert_eq!(p.b.endpoint.announce_to_all(t), 1, "round {round}");
        p.run_for(Duration::from_secs(5));
        assert_eq!(*announced.borrow(), round, "one UPDATE per call");
    }
    assert_eq!(p.b.endpoint.stats().update_retransmit, 0, "acknowledged");
    assert_eq!(
        peer_state(&p, Side::A, b_hit, B1),
        Some(LocatorState::Active)
    );
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert_eq!(p.b.endpoint.route(a_hit), Some((addr(B1), addr(A1))));
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
}

/// Drains `e`'s transmits: (source, destination) of each I1; those with
/// a source carry the checksum for their pair.
fn i1_pairs(e: &mut Endpoint) -> Vec<(Option<IpAddr>, IpAddr)> {
    let mut v = Vec::new();
    while let Some(t) = e.poll_transmit() {
        let r = PacketRepr::parse_bytes(&t.payload).expect("parses");
        assert_eq!(r.packet_type, PacketType::I1);
        if let Some(src) = t.src {
            let mode = ChecksumMode::from_addrs(src, t.dst).expect("one family");
            let pkt = hip_proto::wire::Packet::new_checked(&t.payload[..]).expect("packet");
            assert!(pkt.verify_checksum(mode), "checksum for {src} → {}", t.dst);
        }
        v.push((t.src, t.dst));
    }
    v
}

/// Shotgun off: the first I1 goes to up to three peer locators from the
/// routing table's source, retransmissions to the first. On: the first
/// I1 goes to the first three pairs of a local and a peer locator of the
/// same family (peer locators in order, each from our locators in order),
/// each from its local address; every retransmission to the first pair
/// only (RFC 7401, digest §14: at most 3 addresses in parallel, one on retry).
#[test]
fn shotgun_sends_the_first_i1_to_three_pairs_and_retries_to_one() {
    let now = std::time::Instant::now();
    let v4: IpAddr = "192.0.2.1".parse().unwrap();
    let endpoint = || {
        let mut e = Endpoint::new(
            cfg(),
            vec![test_identity(IdentityKind::EcdsaP256, 0)],
            backend(),
            [1; 32],
            now,
        )
        .expect("endpoint");
        e.set_local_locators(
            now,
            vec![
                local(A1, 1, true),
                local(3, 2, false),
                LocalLocator {
                    addr: v4,
                    ifindex: 3,
                    preferred: false,
                },
            ],
        );
        e
    };
    let peer = Hit::from(Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 1));
    let peers = vec![addr(B1), addr(B2), addr(0x23), addr(0x24)];
    // Every I1 sent in the first 70 s, in 100 ms steps: (offset, pairs).
    let run = |e: &mut Endpoint| {
        let mut seen = Vec::new();
        for step in 0..=700u64 {
            let at = Duration::from_millis(100 * step);
            e.handle_timeout(now + at);
            let got = i1_pairs(e);
            if !got.is_empty() {
                seen.push((at, got));
            }
        }
        seen
    };
    let s = Duration::from_secs;

    let mut e = endpoint();
    e.connect(now, Some(peer), peers.clone(), None)
        .expect("connect");
    let first = vec![(None, addr(B1)), (None, addr(B2)), (None, addr(0x23))];
    assert_eq!(i1_pairs(&mut e), first, "shotgun off: three peer locators");
    let retx: Vec<_> = [1, 3, 7, 15, 31]
        .into_iter()
        .map(|t| (s(t), vec![(None, addr(B1))]))
        .collect();
    assert_eq!(run(&mut e), retx, "shotgun off: retransmissions");

    let mut e = endpoint();
    e.set_shotgun(true);
    e.connect(now, Some(peer), peers, None).expect("connect");
    // 8 IPv6 pairs (no IPv4 source for IPv6 peers): the first three.
    assert_eq!(hip_proto::engine::MAX_SHOTGUN_I1, 3);
    let first = vec![
        (Some(addr(A1)), addr(B1)),
        (Some(addr(3)), addr(B1)),
        (Some(addr(A1)), addr(B2)),
    ];
    assert_eq!(i1_pairs(&mut e), first, "shotgun on: first I1");
    // Each retransmission goes to the first pair only.
    let retx: Vec<_> = [1, 3, 7, 15, 31]
        .into_iter()
        .map(|t| (s(t), vec![(Some(addr(A1)), addr(B1))]))
        .collect();
    assert_eq!(run(&mut e), retx, "shotgun on: retransmissions");

    // Fewer pairs than three: all of them, retransmissions to the first.
    let mut e = endpoint();
    e.set_shotgun(true);
    e.connect(now, Some(peer), vec![addr(B1)], None)
        .expect("connect");
    assert_eq!(
        i1_pairs(&mut e),
        vec![(Some(addr(A1)), addr(B1)), (Some(addr(3)), addr(B1))]
    );
    e.handle_timeout(now + s(1));
    assert_eq!(i1_pairs(&mut e), vec![(Some(addr(A1)), addr(B1))]);
}

/// Shotgun on: a LOCATOR_SET announcement also goes to every other pair
/// of our and the peer's locators; the peer acknowledges the copies and
/// the association is unaffected.
#[test]
fn shotgun_copies_announcements_to_every_pair() {
    let (mut p, _) = established_pair(cfg());
    let (a_hit, b_hit) = hits(&p);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    p.set_filter(Some(Box::new(move |side, t: &mut Transmit| {
        if side == Side::B
            && update_repr(t)
                .is_some_and(|r| r.params.iter().any(|x| matches!(x, Param::LocatorSet(_))))
        {
            if let Some(src) = t.src {
                let mode = ChecksumMode::from_addrs(src, t.dst).expect("one family");
                let pkt = hip_proto::wire::Packet::new_checked(&t.payload[..]).expect("packet");
                assert!(pkt.verify_checksum(mode), "checksum for {src} → {}", t.dst);
            }
            s.borrow_mut().push((t.src, t.dst));
        }
        true
    })));
    p.b.endpoint.set_shotgun(true);
    let t = p.now;
    p.b.endpoint
        .set_local_locators(t, vec![local(B1, 1, true), local(B2, 2, false)]);
    p.run_for(Duration::from_secs(5));
    let seen = seen.borrow().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains(&(Some(addr(B2)), addr(A1))), "{seen:?}");
    assert_eq!(p.b.endpoint.stats().update_retransmit, 0, "acknowledged");
    assert_eq!(p.a.endpoint.route(b_hit), Some((addr(A1), addr(B1))));
    assert_eq!(p.b.endpoint.route(a_hit), Some((addr(B1), addr(A1))));
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established)
    );
}
