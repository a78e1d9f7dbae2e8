//! DH groups, KEYMAT, puzzle and HIP_CIPHER.

use hip_proto::crypto::keymat::local_is_g;
use hip_proto::crypto::puzzle::ltrunc_is_zero;
use hip_proto::crypto::{
    CryptoBackend, CryptoError, DhGroup, EspSuite, HashAlg, HipCipher, Hit, Keymat, OpensslBackend,
    PuzzleOutcome, cipher, solve_puzzle, verify_puzzle,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn be() -> OpensslBackend {
    OpensslBackend::new()
}

const ALL_GROUPS: [DhGroup; 6] = [
    DhGroup::Modp1536,
    DhGroup::Modp2048,
    DhGroup::Modp3072,
    DhGroup::EcdhP256,
    DhGroup::EcdhP384,
    DhGroup::EcdhP521,
];

fn ent(seed: u8) -> Vec<u8> {
    (0..80u8).map(|i| i.wrapping_mul(91) ^ seed).collect()
}

#[test]
fn dh_agreement_per_group() {
    for g in ALL_GROUPS {
        let a = be().dh_generate(g, &ent(1)).unwrap();
        let b = be().dh_generate(g, &ent(2)).unwrap();
        assert_eq!(a.group(), g);
        assert_eq!(a.public_value().len(), g.public_value_len(), "{g:?}");
        assert_ne!(a.public_value(), b.public_value());
        let ka = a.shared_secret(b.public_value()).unwrap();
        let kb = b.shared_secret(a.public_value()).unwrap();
        assert_eq!(*ka, *kb, "{g:?}");
        assert_eq!(ka.len(), g.shared_secret_len());
        // Deterministic from entropy.
        let a2 = be().dh_generate(g, &ent(1)).unwrap();
        assert_eq!(a.public_value(), a2.public_value());
        // A third party gets a different secret.
        let c = be().dh_generate(g, &ent(3)).unwrap();
        assert_ne!(*a.shared_secret(c.public_value()).unwrap(), *ka);
    }
}

#[test]
fn dh_rejects_bad_public_values() {
    for g in ALL_GROUPS {
        let a = be().dh_generate(g, &ent(4)).unwrap();
        let n = g.public_value_len();
        assert!(a.shared_secret(&vec![0u8; n]).is_err(), "{g:?} zero");
        assert!(a.shared_secret(&vec![0xFFu8; n]).is_err(), "{g:?} all-ones");
        assert!(
            a.shared_secret(&a.public_value()[1..]).is_err(),
            "{g:?} short"
        );
        let mut one = vec![0u8; n];
        one[n - 1] = 1;
        assert!(a.shared_secret(&one).is_err(), "{g:?} one");
    }
    assert!(matches!(
        be().dh_generate(DhGroup::EcdhP256, &[0u8; 10]),
        Err(CryptoError::Entropy { .. })
    ));
}

#[test]
fn ecdh_public_value_is_x_y_without_prefix() {
    let a = be().dh_generate(DhGroup::EcdhP256, &ent(5)).unwrap();
    let mut pt = vec![4u8];
    pt.extend_from_slice(a.public_value());
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let mut ctx = openssl::bn::BigNumContext::new().unwrap();
    assert!(openssl::ec::EcPoint::from_bytes(&group, &pt, &mut ctx).is_ok());
}

fn hit(last: u8) -> Hit {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x21]);
    b[15] = last;
    Hit::from_bytes(b)
}

fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut ext = Hmac::<Sha256>::new_from_slice(salt).unwrap();
    ext.update(ikm);
    let prk = ext.finalize().into_bytes();
    let mut out = Vec::new();
    let mut t: Vec<u8> = Vec::new();
    let mut n = 1u8;
    while out.len() < len {
        let mut m = Hmac::<Sha256>::new_from_slice(&prk).unwrap();
        m.update(&t);
        m.update(info);
        m.update(&[n]);
        t = m.finalize().into_bytes().to_vec();
        out.extend_from_slice(&t);
        n += 1;
    }
    out.truncate(len);
    out
}

#[test]
fn keymat_matches_rfc5869_and_both_sides_agree() {
    let (hit_i, hit_r) = (hit(0x90), hit(0x10)); // Initiator has the greater HIT
    let kij = [0x33u8; 48];
    let i = [0x01u8; 32];
    let j = [0x02u8; 32];
    let mut salt = i.to_vec();
    salt.extend_from_slice(&j);
    let mut info = hit_r.as_bytes().to_vec(); // smaller first
    info.extend_from_slice(hit_i.as_bytes());
    let expected = hkdf_sha256(&salt, &kij, &info, 192);

    let mut side_i = Keymat::new(&be(), HashAlg::Sha256, &kij, &hit_i, &hit_r, &i, &j).unwrap();
    // The Responder passes the same (Initiator, Responder) HITs.
    let mut side_r = Keymat::new(&be(), HashAlg::Sha256, &kij, &hit_i, &hit_r, &i, &j).unwrap();
    let hk_i = side_i
        .draw_hip_keys(&be(), HipCipher::Aes128Cbc, HashAlg::Sha256)
        .unwrap();
    let hk_r = side_r
        .draw_hip_keys(&be(), HipCipher::Aes128Cbc, HashAlg::Sha256)
        .unwrap();
    assert_eq!(side_i.index(), 96, "suite 1 + AES-128 HIP keys = 96 bytes");
    assert_eq!(*hk_i.gl_enc, expected[0..16]);
    assert_eq!(*hk_i.gl_int, expected[16..48]);
    assert_eq!(*hk_i.lg_enc, expected[48..64]);
    assert_eq!(*hk_i.lg_int, expected[64..96]);

    let ek_i = side_i
        .draw_esp_keys(&be(), EspSuite::Aes128CbcSha256)
        .unwrap();
    let ek_r = side_r
        .draw_esp_keys(&be(), EspSuite::Aes128CbcSha256)
        .unwrap();
    assert_eq!(*ek_i.gl_enc, expected[96..112]);
    assert_eq!(*ek_i.gl_auth, expected[112..144]);
    assert_eq!(*ek_i.lg_enc, expected[144..160]);
    assert_eq!(*ek_i.lg_auth, expected[160..192]);

    // Role mapping: I is HOST_g here.
    let i_is_g = local_is_g(&hit_i, &hit_r);
    let r_is_g = local_is_g(&hit_r, &hit_i);
    assert!(i_is_g && !r_is_g);
    assert_eq!(hk_i.outgoing_int(i_is_g), hk_r.incoming_int(r_is_g));
    assert_eq!(hk_i.outgoing_enc(i_is_g), hk_r.incoming_enc(r_is_g));
    assert_ne!(hk_i.outgoing_int(i_is_g), hk_i.incoming_int(i_is_g));
    assert_eq!(ek_i.outbound(i_is_g), ek_r.inbound(r_is_g));
    assert_eq!(ek_r.outbound(r_is_g), ek_i.inbound(i_is_g));
    assert_eq!(ek_i.outbound(i_is_g).0, &expected[96..112]);

    // Rekey continues from an index.
    let mut k = Keymat::new(&be(), HashAlg::Sha256, &kij, &hit_i, &hit_r, &i, &j).unwrap();
    k.set_index(96).unwrap();
    assert_eq!(*k.draw(&be(), 16).unwrap(), expected[96..112]);
    // The info order does not depend on argument order.
    let mut swapped = Keymat::new(&be(), HashAlg::Sha256, &kij, &hit_r, &hit_i, &i, &j).unwrap();
    assert_eq!(*swapped.draw(&be(), 32).unwrap(), expected[..32]);
}

#[test]
fn keymat_limit() {
    let mut k = Keymat::new(
        &be(),
        HashAlg::Sha256,
        &[1; 32],
        &hit(1),
        &hit(2),
        &[0; 32],
        &[0; 32],
    )
    .unwrap();
    assert_eq!(k.max_len(), 255 * 32);
    assert!(k.draw(&be(), 255 * 32).is_ok());
    assert_eq!(k.draw(&be(), 1), Err(CryptoError::KeymatExhausted));
}

#[test]
fn puzzle_solve_verify_and_reject() {
    let (hi, hr) = (hit(1), hit(2));
    let i = [0x5Au8; 32];
    let start = [0u8; 32];
    let PuzzleOutcome::Solved(j) =
        solve_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 10, &start, 1 << 22).unwrap()
    else {
        panic!("K=10 not solved within budget")
    };
    verify_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 10, &j).unwrap();
    // Independent check of the definition: SHA-256(I | HIT-I | HIT-R | J), low 10 bits zero.
    let mut data = i.to_vec();
    data.extend_from_slice(hi.as_bytes());
    data.extend_from_slice(hr.as_bytes());
    data.extend_from_slice(&j);
    let d = openssl::sha::sha256(&data);
    assert_eq!(d[31], 0);
    assert_eq!(d[30] & 0x03, 0);

    let mut wrong = j.clone();
    wrong[31] ^= 1;
    // A neighbouring J solves K=10 with probability 2^-10; check it really fails.
    let mut wd = i.to_vec();
    wd.extend_from_slice(hi.as_bytes());
    wd.extend_from_slice(hr.as_bytes());
    wd.extend_from_slice(&wrong);
    let wd = openssl::sha::sha256(&wd);
    if !ltrunc_is_zero(&wd, 10) {
        assert_eq!(
            verify_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 10, &wrong),
            Err(CryptoError::PuzzleFailed)
        );
    }
    // HIT order matters (Initiator first).
    let swapped = verify_puzzle(&be(), HashAlg::Sha256, &i, &hr, &hi, 10, &j);
    let mut sd = i.to_vec();
    sd.extend_from_slice(hr.as_bytes());
    sd.extend_from_slice(hi.as_bytes());
    sd.extend_from_slice(&j);
    assert_eq!(
        swapped.is_ok(),
        ltrunc_is_zero(&openssl::sha::sha256(&sd), 10)
    );
    // Wrong lengths and impossible K are errors.
    assert!(verify_puzzle(&be(), HashAlg::Sha256, &i[..16], &hi, &hr, 1, &j).is_err());
    assert!(verify_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 255, &j).is_err());
    // K = 0 always verifies.
    verify_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 0, &wrong).unwrap();
}

#[test]
fn puzzle_budget_resumes_to_same_solution() {
    let (hi, hr) = (hit(3), hit(4));
    let i = [0x11u8; 48];
    let start = [0u8; 48];
    let PuzzleOutcome::Solved(full) =
        solve_puzzle(&be(), HashAlg::Sha384, &i, &hi, &hr, 8, &start, 1 << 20).unwrap()
    else {
        panic!("unsolved")
    };
    let mut j = start.to_vec();
    let mut rounds = 0;
    let sol = loop {
        rounds += 1;
        match solve_puzzle(&be(), HashAlg::Sha384, &i, &hi, &hr, 8, &j, 16).unwrap() {
            PuzzleOutcome::Solved(s) => break s,
            PuzzleOutcome::Incomplete(next) => j = next,
        }
    };
    assert_eq!(sol, full);
    let tries = u64::from_be_bytes(full[40..48].try_into().unwrap());
    assert_eq!(rounds, tries / 16 + 1);
}

#[test]
fn ltrunc_bits() {
    assert!(ltrunc_is_zero(&[0xFF, 0x00], 8));
    assert!(!ltrunc_is_zero(&[0xFF, 0x01], 1));
    assert!(ltrunc_is_zero(&[0xFF, 0xF0], 4));
    assert!(!ltrunc_is_zero(&[0xFF, 0xF0], 5));
    assert!(ltrunc_is_zero(&[0xF8, 0x00], 11));
    assert!(!ltrunc_is_zero(&[0xF8, 0x00], 12));
    assert!(!ltrunc_is_zero(&[0x00], 9));
}

#[test]
fn aes128_cbc_nist_vector() {
    // NIST SP 800-38A F.2.1, first block.
    let key = [
        0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f,
        0x3c,
    ];
    let iv: Vec<u8> = (0u8..16).collect();
    let pt = [
        0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17,
        0x2a,
    ];
    let ct = be()
        .hip_cipher_encrypt(HipCipher::Aes128Cbc, &key, &iv, &pt)
        .unwrap();
    assert_eq!(
        ct,
        [
            0x76, 0x49, 0xab, 0xac, 0x81, 0x19, 0xb2, 0x46, 0xce, 0xe9, 0x8e, 0x9b, 0x12, 0xe9,
            0x19, 0x7d
        ]
    );
}

#[test]
fn encrypted_parameter_round_trip_and_padding() {
    for c in [HipCipher::Null, HipCipher::Aes128Cbc, HipCipher::Aes256Cbc] {
        let key = vec![0x42u8; c.key_len()];
        let iv = vec![0x24u8; c.iv_len()];
        for len in [0usize, 1, 15, 16, 17, 100] {
            let pt: Vec<u8> = (0..len as u8).collect();
            let ct = cipher::encrypt(&be(), c, &key, &iv, &pt).unwrap();
            if c == HipCipher::Null {
                assert_eq!(ct, pt);
            } else {
                assert_eq!(ct.len(), (len / 16 + 1) * 16, "always 1..=16 pad bytes");
                if len > 0 {
                    assert_ne!(&ct[..len], &pt[..]);
                }
            }
            assert_eq!(cipher::decrypt(&be(), c, &key, &iv, &ct).unwrap(), pt);
        }
        if c != HipCipher::Null {
            let ct = cipher::encrypt(&be(), c, &key, &iv, b"tlv").unwrap();
            // Wrong key: padding check fails (with overwhelming probability).
            let bad_key = vec![0x43u8; c.key_len()];
            assert_eq!(
                cipher::decrypt(&be(), c, &bad_key, &iv, &ct),
                Err(CryptoError::DecryptionFailed)
            );
            assert!(cipher::decrypt(&be(), c, &key, &iv, &ct[..15]).is_err());
            assert!(cipher::decrypt(&be(), c, &key, &iv, &[]).is_err());
            assert!(cipher::encrypt(&be(), c, &key[1..], &iv, b"x").is_err());
        }
    }
}
