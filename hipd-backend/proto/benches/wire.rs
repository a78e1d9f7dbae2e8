//! Parse and emit of R1- and I2-sized HIP packets.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hip_proto::wire::{
    ChecksumMode, DhGroupId, DiffieHellman, Encrypted, EspInfo, EspSuiteId, HiAlgorithm,
    HipCipherId, Hit, HostId, Packet, PacketRepr, PacketType, Param, Puzzle, R1Counter, Signature,
    Solution, param_type as pt,
};

fn hits() -> (Hit, Hit) {
    (
        "2001:21::1".parse().expect("literal HIT"),
        "2001:21::2".parse().expect("literal HIT"),
    )
}

/// An R1 with an RSA-3072 HI, MODP-3072 DH value and an RSA signature.
fn r1() -> PacketRepr {
    let (r, i) = hits();
    PacketRepr::new(PacketType::R1, r, i)
        .with(Param::R1Counter(R1Counter {
            reserved: 0,
            counter: 42,
        }))
        .with(Param::Puzzle(Puzzle {
            k: 10,
            lifetime: 37,
            opaque: 7,
            random_i: vec![0x11; 32],
        }))
        .with(Param::DhGroupList(vec![
            DhGroupId::Modp3072,
            DhGroupId::Modp1536,
        ]))
        .with(Param::DiffieHellman(DiffieHellman {
            group: DhGroupId::Modp3072,
            public_value: vec![0x22; 384],
        }))
        .with(Param::HipCipher(vec![
            HipCipherId::Aes128Cbc,
            HipCipherId::Aes256Cbc,
        ]))
        .with(Param::HostId(HostId {
            algorithm: HiAlgorithm::Rsa,
            host_identity: vec![0x33; 388],
            di_type: 0,
            domain_identifier: vec![],
        }))
        .with(Param::HitSuiteList(vec![0x10, 0x20]))
        .with(Param::TransportFormatList(vec![pt::ESP_TRANSFORM]))
        .with(Param::EspTransform(vec![
            EspSuiteId::Aes128CbcHmacSha256,
            EspSuiteId::Aes256CbcHmacSha256,
        ]))
        .with(Param::HipSignature2(Signature {
            algorithm: HiAlgorithm::Rsa,
            signature: vec![0x44; 384],
        }))
}

/// An I2 with an encrypted RSA-3072 HOST_ID, HIP_MAC and signature.
fn i2() -> PacketRepr {
    let (r, i) = hits();
    PacketRepr::new(PacketType::I2, i, r)
        .with(Param::EspInfo(EspInfo {
            keymat_index: 96,
            old_spi: 0,
            new_spi: 0x1234,
        }))
        .with(Param::R1Counter(R1Counter {
            reserved: 0,
            counter: 42,
        }))
        .with(Param::Solution(Solution {
            k: 10,
            opaque: 7,
            random_i: vec![0x11; 32],
            solution_j: vec![0x55; 32],
        }))
        .with(Param::DiffieHellman(DiffieHellman {
            group: DhGroupId::Modp3072,
            public_value: vec![0x66; 384],
        }))
        .with(Param::HipCipher(vec![HipCipherId::Aes128Cbc]))
        .with(Param::Encrypted(Encrypted {
            reserved: 0,
            iv_and_ciphertext: vec![0x77; 16 + 400],
        }))
        .with(Param::TransportFormatList(vec![pt::ESP_TRANSFORM]))
        .with(Param::EspTransform(vec![EspSuiteId::Aes128CbcHmacSha256]))
        .with(Param::HipMac(vec![0x88; 32]))
        .with(Param::HipSignature(Signature {
            algorithm: HiAlgorithm::Rsa,
            signature: vec![0x99; 384],
        }))
}

fn bench(c: &mut Criterion) {
    for (name, repr) in [("r1", r1()), ("i2", i2())] {
        let bytes = repr
            .to_bytes(ChecksumMode::Udp)
            .expect("benchmark packet emits");
        let mut g = c.benchmark_group(format!("wire_{name}"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function("parse", |b| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&bytes[..])).expect("valid");
                PacketRepr::parse(&p).expect("valid")
            })
        });
        let mut out = vec![0u8; bytes.len()];
        g.bench_function("emit", |b| {
            b.iter(|| black_box(&repr).emit(black_box(&mut out)).expect("fits"))
        });
        g.bench_function("raw_iterate", |b| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&bytes[..])).expect("valid");
                p.params().filter(|r| r.is_ok()).count()
            })
        });
        g.bench_function("mac_input", |b| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&bytes[..])).expect("valid");
                p.mac_input(pt::HIP_SIGNATURE).expect("valid")
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
