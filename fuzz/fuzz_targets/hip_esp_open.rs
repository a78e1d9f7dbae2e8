//! Feed arbitrary bytes to `SecurityAssociation::open` for every ESP suite:
//! it must never panic. The first byte picks the suite and the delivered
//! family; when the input carries the SA's SPI it reaches the ICV check.
//! A second pass authenticates the arbitrary bytes as a NULL-suite ESP
//! plaintext (using the backend transform with the SA's keys), so the
//! post-ICV code (trailer, padding, inner header rebuild, checksum rewrite)
//! is fuzzed too.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Mutex;

use hip_proto::crypto::esp::open_buffer_len;
use hip_proto::crypto::{
    BeetAddrs, CryptoBackend, EspSuite, EspTransform, GcmKeySize, Hit, InnerFamily, Lsi,
    OpensslBackend, SaDirection, SaParams, SecurityAssociation,
};
use libfuzzer_sys::fuzz_target;

const SUITES: [EspSuite; 7] = [
    EspSuite::Aes128CbcSha1,
    EspSuite::NullSha256,
    EspSuite::Aes128CbcSha256,
    EspSuite::Aes256CbcSha256,
    EspSuite::AesGcm8(GcmKeySize::Aes128),
    EspSuite::AesGcm16(GcmKeySize::Aes128),
    EspSuite::AesGcm16(GcmKeySize::Aes256),
];

fn make(suite: EspSuite, deliver: InnerFamily) -> SecurityAssociation {
    let enc = vec![0x11u8; suite.enc_key_len()];
    let auth = vec![0x22u8; suite.auth_key_len()];
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x21]);
    let mut b = a;
    a[15] = 1;
    b[15] = 2;
    let lsis = (
        Lsi::new(Ipv4Addr::new(1, 0, 0, 1)).expect("lsi"),
        Lsi::new(Ipv4Addr::new(1, 0, 0, 2)).expect("lsi"),
    );
    SecurityAssociation::new(
        &OpensslBackend::new(),
        SaParams {
            spi: 0x0102_0304,
            suite,
            enc_key: &enc,
            auth_key: &auth,
            direction: SaDirection::Inbound,
            beet: BeetAddrs {
                local_hit: Hit::from_bytes(a),
                peer_hit: Hit::from_bytes(b),
                lsis: Some(lsis),
                deliver_as: deliver,
            },
            replay_window: 64,
            iv_seed: [0; 32],
        },
    )
    .expect("sa")
}

static SAS: Mutex<Vec<SecurityAssociation>> = Mutex::new(Vec::new());
static NULL_TX: Mutex<Option<Box<dyn EspTransform>>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&sel, esp)) = data.split_first() else {
        return;
    };
    let mut sas = SAS.lock().unwrap_or_else(|e| e.into_inner());
    if sas.is_empty() {
        for s in SUITES {
            sas.push(make(s, InnerFamily::V6));
            sas.push(make(s, InnerFamily::V4));
        }
    }
    let idx = usize::from(sel) % sas.len();
    let mut out = vec![0u8; open_buffer_len(esp.len())];
    let _ = sas[idx].open(esp, 64, &mut out);
    // Also with the SA's SPI patched in, so the ICV path is exercised.
    if esp.len() >= 4 {
        let mut e = esp.to_vec();
        e[..4].copy_from_slice(&0x0102_0304u32.to_be_bytes());
        let _ = sas[idx].open(&e, 64, &mut out);
    }
    // A too-small output buffer must be an error, not a panic.
    let mut small = vec![0u8; esp.len() / 2];
    let _ = sas[idx].open(esp, 64, &mut small);

    // Authenticated arbitrary plaintext on a fresh NULL-suite SA.
    let mut tx = NULL_TX.lock().unwrap_or_else(|e| e.into_inner());
    let tx = tx.get_or_insert_with(|| {
        let s = EspSuite::NullSha256;
        OpensslBackend::new()
            .esp_transform(
                s,
                &vec![0x11u8; s.enc_key_len()],
                &vec![0x22u8; s.auth_key_len()],
                &[0; 32],
            )
            .expect("transform")
    });
    let body = &esp[..esp.len() & !3];
    if body.is_empty() {
        return;
    }
    let mut pkt = vec![0u8; 8 + body.len() + 16 + 16];
    pkt[..4].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    pkt[4..8].copy_from_slice(&1u32.to_be_bytes());
    let Ok(n) = tx.seal(1, &[body], &mut pkt) else {
        return;
    };
    let family = if sel & 1 == 0 {
        InnerFamily::V6
    } else {
        InnerFamily::V4
    };
    let mut rx = make(EspSuite::NullSha256, family);
    let mut out = vec![0u8; open_buffer_len(n)];
    let _ = rx.open(&pkt[..n], 64, &mut out);
});
