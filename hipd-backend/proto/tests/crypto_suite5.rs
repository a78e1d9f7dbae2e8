//! HIT suite 5 (EdDSA/cSHAKE128, RFC 9374): cSHAKE128 / KMAC128 known
//! answers (NIST SP 800-185 samples), the ORCHID construction, RHASH, HMAC,
//! KEYMAT and the puzzle under suite 5.

use hip_proto::crypto::{
    CryptoBackend, EcCurve, HIP_CONTEXT_ID, HashAlg, HiAlgorithm, HitSuite, IdentitySpec, Keymat,
    OpensslBackend, PuzzleOutcome, derive_hit, hit_suite, solve_puzzle, verify_puzzle,
};
use hip_proto::wire::Hit;

fn be() -> OpensslBackend {
    OpensslBackend::new()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// NIST SP 800-185 KMAC sample key 0x40..0x5F.
fn nist_key() -> Vec<u8> {
    (0x40..=0x5Fu8).collect()
}

#[test]
fn cshake128_nist_samples() {
    // cSHAKE_samples.pdf, samples #1 and #2 (N = "", S = "Email Signature", L = 256).
    let mut out = [0u8; 32];
    be().cshake128(b"Email Signature", &[&[0, 1, 2, 3]], &mut out)
        .unwrap();
    assert_eq!(
        out.to_vec(),
        hex("c1c36925b6409a04f1b504fcbca9d82b4017277cb5ed2b2065fc1d3814d5aaf5")
    );
    let data: Vec<u8> = (0..200u8).collect();
    // Split input parts must hash like their concatenation.
    be().cshake128(b"Email Signature", &[&data[..7], &data[7..]], &mut out)
        .unwrap();
    assert_eq!(
        out.to_vec(),
        hex("c5221d50e4f822d96a2e8881a961420f294b7b24fe3d2094baed2c6524cc166b")
    );
}

#[test]
fn cshake128_with_empty_strings_is_shake128() {
    // SP 800-185 §3.3: cSHAKE128(X, L, "", "") = SHAKE128(X, L).
    // SHAKE128("abc", 256) per FIPS 202 (checked with `openssl dgst -shake128`).
    let mut out = [0u8; 32];
    be().cshake128(b"", &[b"abc"], &mut out).unwrap();
    assert_eq!(
        out.to_vec(),
        hex("5881092dd818bf5cf8a3ddb793fbcba74097d5c526a6d35f97b83351940f2cc8")
    );
    // RHASH of suite 5 is exactly this 256-bit output.
    let d = be().digest(HashAlg::Cshake128, &[b"a", b"bc"]).unwrap();
    assert_eq!(d.as_ref(), &out);
}

#[test]
fn cshake128_agrees_with_an_independent_implementation() {
    use sha3::digest::{ExtendableOutput, Update, XofReader};
    for len in [0usize, 1, 135, 136, 167, 168, 169, 500] {
        let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        for custom in [&b""[..], b"x", &HIP_CONTEXT_ID] {
            let mut a = [0u8; 45];
            be().cshake128(custom, &[&data], &mut a).unwrap();
            let core = sha3::CShake128Core::new_with_function_name(b"", custom);
            let mut x = sha3::CShake128::from_core(core);
            x.update(&data);
            let mut b = [0u8; 45];
            x.finalize_xof().read(&mut b);
            assert_eq!(a, b, "len {len} custom {custom:?}");
        }
    }
}

#[test]
fn kmac128_nist_samples() {
    // KMAC_samples.pdf, samples #1..#3 (L = 256); confirmed with `openssl mac KMAC-128`.
    let k = nist_key();
    let mut out = [0u8; 32];
    be().kmac128(&k, b"", &[&[0, 1, 2, 3]], &mut out).unwrap();
    assert_eq!(
        out.to_vec(),
        hex("e5780b0d3ea6f7d3a429c5706aa43a00fadbd7d49628839e3187243f456ee14e")
    );
    be().kmac128(&k, b"My Tagged Application", &[&[0, 1, 2, 3]], &mut out)
        .unwrap();
    assert_eq!(
        out.to_vec(),
        hex("3b1fba963cd8b0b59e8c1a6d71888b7143651af8ba0a7070c0979e2811324aa5")
    );
    let data: Vec<u8> = (0..200u8).collect();
    be().kmac128(
        &k,
        b"My Tagged Application",
        &[&data[..100], &data[100..]],
        &mut out,
    )
    .unwrap();
    assert_eq!(
        out.to_vec(),
        hex("1f5b4e6cca02209e0dcb5ca635b89a15e271ecc760071dfd805faa38f9729230")
    );
    // The suite-5 HMAC is KMAC128 with S = "" and a 256-bit tag.
    let mac = be()
        .hmac(HashAlg::Cshake128, &k, &[&[0, 1], &[2, 3]])
        .unwrap();
    assert_eq!(
        mac.as_ref(),
        hex("e5780b0d3ea6f7d3a429c5706aa43a00fadbd7d49628839e3187243f456ee14e")
    );
    // KMAC output length is bound into the result (not a truncation).
    let mut short = [0u8; 16];
    be().kmac128(&k, b"", &[&[0, 1, 2, 3]], &mut short).unwrap();
    assert_ne!(short[..], out[..16]);
}

#[test]
fn suite5_parameters() {
    assert_eq!(HitSuite::EddsaCshake128.id(), 5);
    assert_eq!(HitSuite::EddsaCshake128.rhash(), Ok(HashAlg::Cshake128));
    assert_eq!(HashAlg::Cshake128.output_len(), 32);
    assert_eq!(HiAlgorithm::EdDsa.hit_suite(), HitSuite::EddsaCshake128);
    // Every suite this crate lists now has a usable RHASH.
    for s in [
        HitSuite::RsaDsaSha256,
        HitSuite::EcdsaSha384,
        HitSuite::EcdsaLowSha1,
        HitSuite::EddsaCshake128,
    ] {
        assert!(s.rhash().is_ok(), "{s:?}");
    }
}

#[test]
fn suite5_orchid_known_answer() {
    // RFC 9374 §3.5.2.1 (HIPv2, variable output length hash):
    // HIT = 2001:20::/28 | 5 | cSHAKE128(ContextID | HI, 96, "", "").
    // HI = 01 02 .. 28; expected value computed independently with
    // `openssl dgst -shake128 -xoflen 12` over ContextID | HI.
    let hi: Vec<u8> = (1..=40).collect();
    let hit = derive_hit(&be(), HitSuite::EddsaCshake128, &hi).unwrap();
    let b = hit.as_bytes();
    assert_eq!(&b[..4], &[0x20, 0x01, 0x00, 0x25]);
    assert_eq!(b[4..].to_vec(), hex("ab6b5871e605ca5582af00a4"));
    assert_eq!(hit_suite(&hit).unwrap(), HitSuite::EddsaCshake128);
    // Not the DET-style construction (Context ID as customization string).
    let mut det_style = [0u8; 12];
    be().cshake128(&HIP_CONTEXT_ID, &[&hi], &mut det_style)
        .unwrap();
    assert_ne!(&b[4..], &det_style);
}

#[test]
fn ed25519_identity_hit_follows_the_orchid_construction() {
    let seed = [0x42u8; 32];
    let id = be()
        .generate_identity(IdentitySpec::Ed25519, &seed)
        .unwrap();
    let hit = id.host_id().hit(&be()).unwrap();
    let mut h = [0u8; 12];
    be().cshake128(b"", &[&HIP_CONTEXT_ID, id.host_id().encoded()], &mut h)
        .unwrap();
    assert_eq!(&hit.as_bytes()[..4], &[0x20, 0x01, 0x00, 0x25]);
    assert_eq!(&hit.as_bytes()[4..], &h);
    // An ECDSA identity keeps suite 2.
    let ec = be()
        .generate_identity(IdentitySpec::Ecdsa(EcCurve::P256), &[7u8; 40])
        .unwrap();
    assert_eq!(
        hit_suite(&ec.host_id().hit(&be()).unwrap()).unwrap(),
        HitSuite::EcdsaSha384
    );
}

fn hit(last: u8) -> Hit {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x25]);
    b[15] = last;
    Hit::from_bytes(b)
}

#[test]
fn suite5_keymat_is_hkdf_with_kmac128() {
    let (hit_i, hit_r) = (hit(0x10), hit(0x90));
    let kij = [0x33u8; 32];
    let (i, j) = ([1u8; 32], [2u8; 32]);
    // Extract: PRK = KMAC128(K = #I | #J, Kij); expand: T(n) = KMAC128(PRK, T(n-1) | info | n).
    let mut salt = i.to_vec();
    salt.extend_from_slice(&j);
    let mut prk = [0u8; 32];
    be().kmac128(&salt, b"", &[&kij], &mut prk).unwrap();
    let mut info = hit_i.as_bytes().to_vec(); // smaller HIT first
    info.extend_from_slice(hit_r.as_bytes());
    let mut expected = Vec::new();
    let mut t: Vec<u8> = Vec::new();
    for n in 1..=3u8 {
        let mut block = [0u8; 32];
        be().kmac128(&prk, b"", &[&t, &info, &[n]], &mut block)
            .unwrap();
        t = block.to_vec();
        expected.extend_from_slice(&block);
    }
    let mut k = Keymat::new(&be(), HashAlg::Cshake128, &kij, &hit_r, &hit_i, &i, &j).unwrap();
    assert_eq!(k.max_len(), 255 * 32);
    assert_eq!(*k.draw(&be(), 96).unwrap(), expected[..]);
    // Differs from the suite-1 KEYMAT of the same inputs.
    let mut k1 = Keymat::new(&be(), HashAlg::Sha256, &kij, &hit_r, &hit_i, &i, &j).unwrap();
    assert_ne!(*k1.draw(&be(), 96).unwrap(), expected[..]);
}

#[test]
fn suite5_puzzle_uses_cshake128() {
    let (hi, hr) = (hit(1), hit(2));
    let i = [0x5Au8; 32];
    let PuzzleOutcome::Solved(j) = solve_puzzle(
        &be(),
        HashAlg::Cshake128,
        &i,
        &hi,
        &hr,
        8,
        &[0u8; 32],
        1 << 20,
    )
    .unwrap() else {
        panic!("K=8 not solved within budget")
    };
    verify_puzzle(&be(), HashAlg::Cshake128, &i, &hi, &hr, 8, &j).unwrap();
    // Independent check: the low 8 bits of cSHAKE128(I | HIT-I | HIT-R | J, 256) are 0.
    let mut d = [0u8; 32];
    be().cshake128(b"", &[&i, hi.as_bytes(), hr.as_bytes(), &j], &mut d)
        .unwrap();
    assert_eq!(d[31], 0);
    // A SHA-256-sized #I is the right length, but the wrong hash rejects it
    // with overwhelming probability for K = 8 (checked for this J).
    let sha = openssl::sha::sha256(&[&i[..], hi.as_bytes(), hr.as_bytes(), &j].concat());
    if sha[31] != 0 {
        assert!(verify_puzzle(&be(), HashAlg::Sha256, &i, &hi, &hr, 8, &j).is_err());
    }
}
