//! cSHAKE128 and KMAC128 (NIST SP 800-185) for HIT suite 5, EdDSA/cSHAKE128
//! (RFC 9374), on the `tiny-keccak` crate.
//!
//! These are the pure-Rust primitives behind
//! [`CryptoBackend::cshake128`](super::CryptoBackend::cshake128) and
//! [`CryptoBackend::kmac128`](super::CryptoBackend::kmac128) of the
//! OpenSSL backend (the `openssl` crate exposes neither). A second backend
//! may reuse them or bring its own.
//!
//! How HIT suite 5 uses them (choices kept stable, see also [`super::ids`]):
//!
//! * **ORCHID** (RFC 9374 §3.5.2.1, "Encoding ORCHIDs for HIPv2", variable
//!   output length hashes): `Hash[96](Context ID ‖ HOST_ID)` where `Hash[L]`
//!   is the L-bit output of cSHAKE128 with empty function name N and empty
//!   customization S. Prefix and OGA ID are not hashed for HIPv2 HITs.
//! * **RHASH** (puzzle, `HashAlg::Cshake128`):
//!   `cSHAKE128(X, L = 256, N = "", S = "")`; RHASH_len = 256 bits, so #I
//!   and #J are 32 bytes.
//! * **HMAC** (HIP_MAC, HIP_MAC_2, RVS-style MACs):
//!   `KMAC128(K, X, L = 256, S = "")`, 32-byte tags.
//! * **KDF**: RFC 7401 fixes HKDF over the suite's HMAC; with suite 5 the
//!   HKDF PRF is KMAC128 (256-bit output). RFC 9374 says nothing more
//!   specific; see [`super::keymat`].

use tiny_keccak::{CShake, Hasher, Kmac};

/// `cSHAKE128(X = concat(parts), L = 8·out.len(), N = "", S = customization)`.
pub fn cshake128(customization: &[u8], parts: &[&[u8]], out: &mut [u8]) {
    let mut h = CShake::v128(b"", customization);
    for p in parts {
        h.update(p);
    }
    h.finalize(out);
}

/// `KMAC128(K = key, X = concat(parts), L = 8·out.len(), S = customization)`.
pub fn kmac128(key: &[u8], customization: &[u8], parts: &[&[u8]], out: &mut [u8]) {
    let mut m = Kmac::v128(key, customization);
    for p in parts {
        m.update(p);
    }
    m.finalize(out);
}
