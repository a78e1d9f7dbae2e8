//! Sign/verify per HI algorithm, DH per group, puzzle K=10.
use criterion::{Criterion, criterion_group, criterion_main};
use hip_proto::crypto::{
    CryptoBackend, DhGroup, EcCurve, HashAlg, Hit, IdentitySpec, OpensslBackend, PuzzleOutcome,
    solve_puzzle,
};
use std::hint::black_box;

fn bench_sign(c: &mut Criterion) {
    let be = OpensslBackend::new();
    let msg = vec![0x5au8; 600];
    let specs = [
        ("rsa2048", IdentitySpec::Rsa { bits: 2048 }),
        ("ecdsa-p256", IdentitySpec::Ecdsa(EcCurve::P256)),
        ("ecdsa-p384", IdentitySpec::Ecdsa(EcCurve::P384)),
        ("ed25519", IdentitySpec::Ed25519),
    ];
    let mut g = c.benchmark_group("hi");
    for (name, spec) in specs {
        let id = be.generate_identity(spec, &[0x42u8; 64]).expect("keygen");
        let sig = id.sign(&msg).expect("sign");
        g.bench_function(format!("sign/{name}"), |b| {
            b.iter(|| id.sign(black_box(&msg)))
        });
        g.bench_function(format!("verify/{name}"), |b| {
            b.iter(|| be.verify(id.host_id(), black_box(&msg), &sig))
        });
    }
    g.finish();
}

fn bench_dh(c: &mut Criterion) {
    let be = OpensslBackend::new();
    let groups = [
        ("modp1536", DhGroup::Modp1536),
        ("modp2048", DhGroup::Modp2048),
        ("modp3072", DhGroup::Modp3072),
        ("ecdh-p256", DhGroup::EcdhP256),
        ("ecdh-p384", DhGroup::EcdhP384),
        ("ecdh-p521", DhGroup::EcdhP521),
    ];
    let mut g = c.benchmark_group("dh");
    for (name, grp) in groups {
        let peer = be.dh_generate(grp, &[0x11u8; 80]).expect("peer");
        g.bench_function(format!("keygen+derive/{name}"), |b| {
            let mut seed = [0x22u8; 80];
            b.iter(|| {
                seed[0] = seed[0].wrapping_add(1);
                let k = be.dh_generate(grp, &seed).expect("gen");
                k.shared_secret(peer.public_value()).expect("derive")
            })
        });
    }
    g.finish();
}

fn bench_puzzle(c: &mut Criterion) {
    let be = OpensslBackend::new();
    let hi = Hit::from_bytes([
        0x20, 0x01, 0x00, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ]);
    let hr = Hit::from_bytes([0x20, 0x01, 0x00, 0x21, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
    let i = [0xA5u8; 32];
    let mut start = [0u8; 32];
    c.bench_function("puzzle/solve-k10-sha256", |b| {
        b.iter(|| {
            start[0] = start[0].wrapping_add(1);
            match solve_puzzle(&be, HashAlg::Sha256, &i, &hi, &hr, 10, &start, 1 << 24) {
                Ok(PuzzleOutcome::Solved(j)) => j,
                other => panic!("puzzle not solved: {other:?}"),
            }
        })
    });
}

criterion_group!(benches, bench_sign, bench_dh, bench_puzzle);
criterion_main!(benches);
