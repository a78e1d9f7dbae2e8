//! CPU cost of the base exchange per side (ECDSA P-256 identities, ECDH
//! P-256, AES-128-CBC, ESP suite 8), with #K = 10 (puzzle search
//! included) and #K = 0 (puzzle search excluded), and the Responder's
//! I1 → R1 cost from a precomputed R1 (target ≤ 5 µs).
//!
//! Run: `cargo bench -p hip-proto --bench bex`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hip_proto::crypto::{DhGroup, EspSuite, HipCipher, OpensslBackend};
use hip_proto::engine::testing::{IdentityKind, test_identity};
use hip_proto::engine::{Config, Datagram, Endpoint, Transmit};
use hip_proto::wire::{ChecksumMode, DhGroupId, Hit, PacketRepr, PacketType, Param};

fn addr(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
}

fn config(k: u8) -> Config {
    Config {
        dh_groups: vec![DhGroup::EcdhP256],
        hip_ciphers: vec![HipCipher::Aes128Cbc],
        esp_suites: vec![EspSuite::Aes128CbcSha256],
        puzzle_k: k,
        // Measure the R1 path itself: without this the token bucket would
        // refuse all but the first `r1_burst` I1s of the loop.
        r1_rate: 0,
        ..Config::default()
    }
}

struct Stage {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
}

fn new_stage(k: u8, seed: u8) -> Stage {
    let now = Instant::now();
    let be = Arc::new(OpensslBackend::new());
    let a = Endpoint::new(
        config(k),
        vec![test_identity(IdentityKind::EcdsaP256, 0)],
        be.clone(),
        [seed; 32],
        now,
    )
    .expect("a");
    let b = Endpoint::new(
        config(k),
        vec![test_identity(IdentityKind::EcdsaP256, 1)],
        be,
        [seed ^ 0xFF; 32],
        now,
    )
    .expect("b");
    Stage { a, b, now }
}

fn to_dgram(mut t: Transmit, src: IpAddr) -> Datagram {
    if t.src.is_none() {
        t.fill_checksum(src);
    }
    Datagram {
        src: t.src.unwrap_or(src),
        dst: t.dst,
        transport: t.transport,
        payload: t.payload,
    }
}

/// Runs the exchange up to (not including) the processing of packet
/// number `upto` (1 = I1 at B, 2 = R1 at A, 3 = I2 at B, 4 = R2 at A) and
/// returns the stage with that packet.
fn prepare(k: u8, seed: u8, upto: usize) -> (Stage, Datagram) {
    let mut s = new_stage(k, seed);
    let b_hit = s.b.local_hits()[0];
    s.a.connect(s.now, Some(b_hit), vec![addr(2)], None)
        .expect("connect");
    let mut d = to_dgram(s.a.poll_transmit().expect("I1"), addr(1));
    for step in 1..upto {
        let now = s.now;
        if step % 2 == 1 {
            s.b.handle(now, d);
            d = to_dgram(s.b.poll_transmit().expect("reply"), addr(2));
        } else {
            s.a.handle(now, d);
            d = to_dgram(s.a.poll_transmit().expect("reply"), addr(1));
        }
    }
    (s, d)
}

fn bench_bex(c: &mut Criterion) {
    let mut g = c.benchmark_group("bex_p256");
    g.sample_size(20);
    for k in [0u8, 10] {
        let mut seed = 0u8;
        g.bench_function(format!("initiator_r1_to_i2_k{k}"), |b| {
            b.iter_batched(
                || {
                    seed = seed.wrapping_add(1);
                    prepare(k, seed, 2)
                },
                |(mut s, d)| {
                    s.a.handle(s.now, d);
                    black_box(s.a.poll_transmit())
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("responder_i2_to_r2_k{k}"), |b| {
            b.iter_batched(
                || {
                    seed = seed.wrapping_add(1);
                    prepare(k, seed, 3)
                },
                |(mut s, d)| {
                    s.b.handle(s.now, d);
                    black_box(s.b.poll_transmit())
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("initiator_r2_k{k}"), |b| {
            b.iter_batched(
                || {
                    seed = seed.wrapping_add(1);
                    prepare(k, seed, 4)
                },
                |(mut s, d)| {
                    s.a.handle(s.now, d);
                    black_box(s.a.poll_event())
                },
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("full_bex_both_sides_k{k}"), |b| {
            b.iter_batched(
                || {
                    seed = seed.wrapping_add(1);
                    prepare(k, seed, 1)
                },
                |(mut s, d)| {
                    let now = s.now;
                    s.b.handle(now, d);
                    let r1 = to_dgram(s.b.poll_transmit().expect("R1"), addr(2));
                    s.a.handle(now, r1);
                    let i2 = to_dgram(s.a.poll_transmit().expect("I2"), addr(1));
                    s.b.handle(now, i2);
                    let r2 = to_dgram(s.b.poll_transmit().expect("R2"), addr(2));
                    s.a.handle(now, r2);
                    black_box(s.a.poll_event())
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn bench_i1(c: &mut Criterion) {
    let mut s = new_stage(10, 1);
    let b_hit = s.b.local_hits()[0];
    let now = s.now;
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x22]);
    h[15] = 9;
    let payload = PacketRepr::new(PacketType::I1, Hit::from_bytes(h), b_hit)
        .with(Param::DhGroupList(vec![DhGroupId::NistP256]))
        .to_bytes(ChecksumMode::from_addrs(addr(1), addr(2)).expect("mode"))
        .expect("I1");
    let d = Datagram {
        src: addr(1),
        dst: addr(2),
        transport: hip_proto::engine::Transport::Native,
        payload,
    };
    c.bench_function("responder_i1_to_r1", |b| {
        b.iter(|| {
            s.b.handle(now, black_box(d.clone()));
            black_box(s.b.poll_transmit().expect("an R1 for every I1"))
        })
    });
}

criterion_group!(benches, bench_bex, bench_i1);
criterion_main!(benches);
