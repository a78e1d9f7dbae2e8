//! Error NOTIFYs go only to addresses that earned them (RFC 7401 §5.2.19:
//! no NOTIFICATION to a host that has not solved a puzzle): an ACTIVE peer
//! locator of the association, never the (possibly spoofed) source of an
//! unauthenticated packet; and a per-association token bucket limits them.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hip_proto::crypto::DhGroup;
use hip_proto::engine::testing::{
    IdentityKind, LinkConfig, Pair, Side, addr, backend, test_identity,
};
use hip_proto::engine::{Config, Datagram, Endpoint, State, Transmit, Transport};
use hip_proto::wire::{
    ChecksumMode, EspInfo, HiAlgorithm, Hit, NotifyType, Packet, PacketRepr, PacketType, Param,
    Signature,
};

/// The peer's real address and an address an attacker claims.
const A_ADDR: u16 = 1;
const B_ADDR: u16 = 2;
const SPOOFED: u16 = 0x66;

fn cfg() -> Config {
    Config {
        puzzle_k: 2,
        dh_groups: vec![DhGroup::EcdhP256],
        ..Config::default()
    }
}

fn pair() -> Pair {
    let now = Instant::now();
    let ea = Endpoint::new(
        cfg(),
        vec![test_identity(IdentityKind::EcdsaP256, 0)],
        backend(),
        [1; 32],
        now,
    )
    .expect("endpoint a");
    let eb = Endpoint::new(
        cfg(),
        vec![test_identity(IdentityKind::EcdsaP256, 1)],
        backend(),
        [2; 32],
        now,
    )
    .expect("endpoint b");
    Pair::new(
        ea,
        addr(A_ADDR),
        eb,
        addr(B_ADDR),
        now,
        LinkConfig::default(),
        5,
    )
}

fn hits(p: &Pair) -> (Hit, Hit) {
    (p.a.endpoint.local_hits()[0], p.b.endpoint.local_hits()[0])
}

/// A pair whose BEX completed (A initiated; A is ESTABLISHED).
fn established() -> Pair {
    let mut p = pair();
    assert!(p.establish(addr(B_ADDR)));
    p
}

fn datagram(src: IpAddr, dst: IpAddr, payload: Vec<u8>) -> Datagram {
    Datagram {
        src,
        dst,
        transport: Transport::Native,
        payload,
    }
}

fn emit(repr: &PacketRepr, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    repr.to_bytes(ChecksumMode::from_addrs(src, dst).expect("mode"))
        .expect("emit")
}

fn bogus_signature() -> Param {
    Param::HipSignature(Signature {
        algorithm: HiAlgorithm::from_value(7),
        signature: vec![0x5A; 64],
    })
}

/// A CLOSE claiming to come from B, with a MAC and signature the attacker
/// could not compute.
fn forged_close(from: Hit, to: Hit, src: IpAddr, dst: IpAddr) -> Datagram {
    let repr = PacketRepr::new(PacketType::Close, from, to)
        .with(Param::EchoRequestSigned(vec![7; 16]))
        .with(Param::HipMac(vec![0xA5; 32]))
        .with(bogus_signature());
    datagram(src, dst, emit(&repr, src, dst))
}

/// Handles `d` at A at time `now` and returns everything A sent.
fn feed_a(p: &mut Pair, now: Instant, d: Datagram) -> Vec<Transmit> {
    p.a.endpoint.handle(now, d);
    std::iter::from_fn(|| p.a.endpoint.poll_transmit()).collect()
}

/// The NOTIFY types among `ts`, with their destinations.
fn notifies(ts: &[Transmit]) -> Vec<(IpAddr, NotifyType)> {
    ts.iter()
        .filter_map(|t| {
            let r = PacketRepr::parse_bytes(&t.payload).ok()?;
            if r.packet_type != PacketType::Notify {
                return None;
            }
            r.params.iter().find_map(|x| match x {
                Param::Notification(n) => Some((t.dst, n.msg_type)),
                _ => None,
            })
        })
        .collect()
}

#[test]
fn forged_close_from_a_spoofed_source_gets_no_notify() {
    let mut p = established();
    let (a_hit, b_hit) = hits(&p);
    let t = p.now;
    let before = p.a.endpoint.stats().clone();
    let out = feed_a(
        &mut p,
        t,
        forged_close(b_hit, a_hit, addr(SPOOFED), addr(A_ADDR)),
    );
    assert!(
        out.is_empty(),
        "nothing goes to the spoofed source: {out:?}"
    );
    let st = p.a.endpoint.stats();
    assert_eq!(st.bad_hmac, before.bad_hmac + 1);
    assert_eq!(st.notify_suppressed, before.notify_suppressed + 1);
    assert_eq!(st.notify_sent, before.notify_sent);
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::Established),
        "a forged CLOSE changes nothing"
    );
    // The same forgery from the peer's ACTIVE locator is reported to the
    // peer (it solved the puzzle; the NOTIFY reaches the real peer only).
    let out = feed_a(
        &mut p,
        t,
        forged_close(b_hit, a_hit, addr(B_ADDR), addr(A_ADDR)),
    );
    assert_eq!(
        notifies(&out),
        vec![(addr(B_ADDR), NotifyType::HipMacFailed)]
    );
    assert_eq!(p.a.endpoint.stats().notify_sent, before.notify_sent + 1);
}

#[test]
fn forged_r2_from_a_spoofed_source_gets_no_notify() {
    let mut p = pair();
    let (a_hit, b_hit) = hits(&p);
    // B's real R2 never arrives: A stays in I2-SENT.
    p.set_filter(Some(Box::new(|side, t: &mut Transmit| {
        !(side == Side::B && Packet::new_unchecked(&t.payload[..]).packet_type() == PacketType::R2)
    })));
    let t = p.now;
    p.a.endpoint
        .connect(t, Some(b_hit), vec![addr(B_ADDR)], None)
        .expect("connect");
    assert!(p.run_until(Duration::from_secs(5), |p| {
        p.a.endpoint
            .association_by_peer(b_hit)
            .is_some_and(|a| a.state() == State::I2Sent)
    }));
    let forged_r2 = |src: IpAddr| {
        let repr = PacketRepr::new(PacketType::R2, b_hit, a_hit)
            .with(Param::EspInfo(EspInfo {
                keymat_index: 0,
                old_spi: 0,
                new_spi: 0x1234,
            }))
            .with(Param::HipMac2(vec![0xA5; 32]))
            .with(bogus_signature());
        datagram(src, addr(A_ADDR), emit(&repr, src, addr(A_ADDR)))
    };
    let t = p.now;
    let before = p.a.endpoint.stats().clone();
    let out = feed_a(&mut p, t, forged_r2(addr(SPOOFED)));
    assert!(notifies(&out).is_empty(), "no NOTIFY to the spoofed source");
    assert!(out.iter().all(|x| x.dst != addr(SPOOFED)));
    let st = p.a.endpoint.stats();
    assert_eq!(st.bad_hmac, before.bad_hmac + 1);
    assert_eq!(st.notify_suppressed, before.notify_suppressed + 1);
    assert_eq!(st.notify_sent, before.notify_sent);
    // From the Responder's address (the R1 source, ACTIVE): reported.
    let out = feed_a(&mut p, t, forged_r2(addr(B_ADDR)));
    assert_eq!(
        notifies(&out),
        vec![(addr(B_ADDR), NotifyType::HipMacFailed)]
    );
    assert_eq!(
        p.a.endpoint.association_by_peer(b_hit).map(|a| a.state()),
        Some(State::I2Sent)
    );
}

#[test]
fn malformed_packet_from_a_spoofed_source_gets_no_notify() {
    let mut p = established();
    let (a_hit, b_hit) = hits(&p);
    // UPDATE(SEQ) followed by an unknown critical parameter (type 1027):
    // parsing fails before any MAC check.
    let malformed = |src: IpAddr| {
        let repr = PacketRepr::new(PacketType::Update, b_hit, a_hit).with(Param::Seq(9));
        let mut bytes = repr.to_bytes(ChecksumMode::Udp).expect("emit");
        bytes.extend_from_slice(&[0x04, 0x03, 0, 4, 1, 2, 3, 4]);
        bytes[1] = u8::try_from(bytes.len() / 8 - 1).expect("length");
        Packet::new_unchecked(&mut bytes[..])
            .fill_checksum(ChecksumMode::from_addrs(src, addr(A_ADDR)).expect("mode"));
        datagram(src, addr(A_ADDR), bytes)
    };
    let t = p.now;
    let before = p.a.endpoint.stats().clone();
    let out = feed_a(&mut p, t, malformed(addr(SPOOFED)));
    assert!(
        out.is_empty(),
        "nothing goes to the spoofed source: {out:?}"
    );
    let st = p.a.endpoint.stats();
    assert_eq!(st.unsupported_critical, before.unsupported_critical + 1);
    assert_eq!(st.notify_suppressed, before.notify_suppressed + 1);
    assert_eq!(st.notify_sent, before.notify_sent);
    let out = feed_a(&mut p, t, malformed(addr(B_ADDR)));
    assert_eq!(
        notifies(&out),
        vec![(addr(B_ADDR), NotifyType::UnsupportedCriticalParameterType)]
    );
}

#[test]
fn notify_rate_limit_is_a_token_bucket_per_association() {
    let mut p = established();
    let (a_hit, b_hit) = hits(&p);
    let c = Config::default();
    assert_eq!((c.notify_burst, c.notify_interval.as_secs()), (5, 1));
    let t0 = p.now;
    let before = p.a.endpoint.stats().clone();
    let flood = |p: &mut Pair, at: Instant, n: usize| -> usize {
        (0..n)
            .map(|_| {
                let d = forged_close(b_hit, a_hit, addr(B_ADDR), addr(A_ADDR));
                notifies(&feed_a(p, at, d)).len()
            })
            .sum()
    };
    // A burst of 5, then nothing within the same instant.
    assert_eq!(flood(&mut p, t0, 20), 5);
    let st = p.a.endpoint.stats();
    assert_eq!(st.notify_sent, before.notify_sent + 5);
    assert_eq!(st.notify_rate_limited, before.notify_rate_limited + 15);
    assert_eq!(st.bad_hmac, before.bad_hmac + 20, "every packet is counted");
    // One token per second.
    assert_eq!(flood(&mut p, t0 + Duration::from_millis(500), 5), 0);
    assert_eq!(flood(&mut p, t0 + Duration::from_millis(1000), 5), 1);
    assert_eq!(flood(&mut p, t0 + Duration::from_millis(3000), 5), 2);
    // The bucket holds at most 5 tokens however long it rests.
    assert_eq!(flood(&mut p, t0 + Duration::from_secs(60), 10), 5);
    assert_eq!(
        p.a.endpoint.stats().notify_sent,
        before.notify_sent + 5 + 1 + 2 + 5
    );
}
