//! ESP seal/open throughput of 1400-byte packets per suite.
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hip_proto::crypto::esp::open_buffer_len;
use hip_proto::crypto::{
    BeetAddrs, EspSuite, GcmKeySize, Hit, InnerFamily, OpensslBackend, SaDirection, SaParams,
    SecurityAssociation,
};
use std::hint::black_box;

const PKT: usize = 1400;

fn hits() -> (Hit, Hit) {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x21]);
    a[15] = 1;
    let mut b = a;
    b[15] = 2;
    (Hit::from_bytes(a), Hit::from_bytes(b))
}

fn inner_packet(src: &Hit, dst: &Hit) -> Vec<u8> {
    let mut p = vec![0u8; PKT];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((PKT - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(src.as_bytes());
    p[24..40].copy_from_slice(dst.as_bytes());
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn sa(suite: EspSuite, dir: SaDirection, local: Hit, peer: Hit) -> SecurityAssociation {
    let enc = vec![7u8; suite.enc_key_len()];
    let auth = vec![9u8; suite.auth_key_len()];
    SecurityAssociation::new(
        &OpensslBackend::new(),
        SaParams {
            spi: 0x1000,
            suite,
            enc_key: &enc,
            auth_key: &auth,
            direction: dir,
            beet: BeetAddrs {
                local_hit: local,
                peer_hit: peer,
                lsis: None,
                deliver_as: InnerFamily::V6,
            },
            replay_window: 1024,
            iv_seed: [3u8; 32],
        },
    )
    .expect("sa")
}

fn bench_esp(c: &mut Criterion) {
    let (a, b) = hits();
    let inner = inner_packet(&a, &b);
    let suites = [
        ("aes128cbc-sha256", EspSuite::Aes128CbcSha256),
        ("aes256cbc-sha256", EspSuite::Aes256CbcSha256),
        ("null-sha256", EspSuite::NullSha256),
        ("aes128gcm16", EspSuite::AesGcm16(GcmKeySize::Aes128)),
        ("aes256gcm16", EspSuite::AesGcm16(GcmKeySize::Aes256)),
    ];
    let mut g = c.benchmark_group("esp1400");
    g.throughput(Throughput::Bytes(PKT as u64));
    for (name, suite) in suites {
        let mut out_sa = sa(suite, SaDirection::Outbound, a, b);
        let mut buf = vec![0u8; out_sa.seal_buffer_len(PKT)];
        g.bench_function(format!("seal/{name}"), |bench| {
            bench.iter(|| out_sa.seal(black_box(&inner), &mut buf).expect("seal"))
        });
        // Open: every iteration needs a fresh (in-order) packet; sealing it
        // happens in the untimed setup closure.
        let mut sealer = sa(suite, SaDirection::Outbound, a, b);
        let mut opener = sa(suite, SaDirection::Inbound, b, a);
        let mut out = vec![0u8; open_buffer_len(PKT + 100)];
        g.bench_function(format!("open/{name}"), |bench| {
            bench.iter_batched(
                || {
                    let mut p = vec![0u8; sealer.seal_buffer_len(PKT)];
                    let n = sealer.seal(&inner, &mut p).expect("seal");
                    p.truncate(n);
                    p
                },
                |p| opener.open(black_box(&p), 64, &mut out).expect("open"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// HMAC-SHA-256 of a 1400-byte packet: the `hmac` crate with a precomputed
/// keyed state cloned per packet (what the openssl backend uses for ESP)
/// versus an OpenSSL `Signer` created per packet.
fn bench_hmac(c: &mut Criterion) {
    use hmac::{Hmac, Mac};
    let key = [0x0bu8; 32];
    let data = vec![0x5au8; PKT];
    let mut g = c.benchmark_group("hmac1400");
    g.throughput(Throughput::Bytes(PKT as u64));
    let keyed = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    g.bench_function("hmac-crate-cloned-state", |b| {
        b.iter(|| {
            let mut m = keyed.clone();
            m.update(black_box(&data));
            m.finalize().into_bytes()
        })
    });
    let pkey = openssl::pkey::PKey::hmac(&key).expect("pkey");
    g.bench_function("openssl-signer-per-packet", |b| {
        b.iter(|| {
            let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &pkey)
                .expect("signer");
            s.update(black_box(&data)).expect("update");
            s.sign_to_vec().expect("sign")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_esp, bench_hmac);
criterion_main!(benches);
