//! HIPv2 host identities and cryptography.
//!
//! Everything that calls a crypto library sits behind [`CryptoBackend`]
//! (object safe; the engine holds `Arc<dyn CryptoBackend>`). The default
//! backend is [`OpensslBackend`]. The pure parts (HIT layout, KEYMAT draw
//! order, puzzle search, ENCRYPTED padding, ESP framing, anti-replay, BEET
//! header rebuilding) are backend independent.
//!
//! # Choices the standards leave open (kept stable)
//!
//! * **RSA signatures**: RSASSA-PSS (RFC 7401 §5.2.9 makes PSS mandatory) with
//!   SHA-256 (the hash of HIT suite 1), MGF1-SHA-256, salt length = 32 (the
//!   digest length). Verification accepts any salt length (the salt length is
//!   recovered from the signature), for interoperability.
//! * **ECDSA signatures**: hash = SHA-384 (the hash of HIT suite 2,
//!   ECDSA/SHA-384) for both P-256 and P-384; signature bytes = fixed-size
//!   `r ‖ s`, each left-padded to the field length (64 bytes for P-256, 96 for
//!   P-384), not DER. Nonces come from OpenSSL's CSPRNG.
//! * **EdDSA**: pure Ed25519 over the message (RFC 8032), 64-byte signatures.
//! * **Host Identity encodings**: see [`identity`].
//! * **HIT**: middle-96-bit extraction, input = Host Identity field; see [`hit`].
//! * **DH**: ECDH public values are `x ‖ y` without the 0x04 octet (RFC 5903);
//!   Kij is the x coordinate. MODP public values and Kij are left-padded to
//!   the prime length. Private keys come from caller entropy.
//! * **KEYMAT**: HKDF (RFC 5869) with the suite's RHASH, salt = `#I ‖ #J`,
//!   info = the two HITs, numerically smaller first; see [`keymat`].
//! * **ENCRYPTED**: PKCS#7-style padding to the AES block, always 1..=16 bytes;
//!   see [`cipher`].
//! * **ESP**: 64-bit sequence numbers (ESN) always; the high 32 bits are
//!   inferred per RFC 4303 Appendix A and enter the ICV implicitly. CBC IVs come
//!   from a per-SA AES-128-ECB generator over a counter, keyed from caller
//!   entropy at SA creation; GCM IVs are the 64-bit sequence number. GCM salt =
//!   4 bytes drawn from KEYMAT right after the AES key; see [`esp`].
//!
//! * **HIT suite 5** (EdDSA/cSHAKE128, RFC 9374): RHASH = cSHAKE128 with a
//!   256-bit output, HMAC = KMAC128 with a 256-bit output (both with empty
//!   customization), KEYMAT = HKDF with KMAC128 as its PRF, ORCHID hash =
//!   the 96-bit cSHAKE128 output over Context ID ‖ HI; see [`keccak`].
//!
//! # Not implemented
//! DSA and ECDSA_LOW identities; EdDSA448.

pub mod backend;
pub mod cipher;
pub mod esp;
pub mod hit;
pub mod identity;
pub mod ids;
pub mod keccak;
pub mod keymat;
pub mod openssl_backend;
pub mod puzzle;

pub use backend::{
    CryptoBackend, DhKeyPair, Digest, EspTransform, IdentitySpec, PrivateIdentity,
    dh_generate_with_rng, generate_identity_with_rng,
};
pub use esp::{
    BeetAddrs, EspError, InnerFamily, Opened, ReplayWindow, SaDirection, SaParams,
    SecurityAssociation,
};
pub use hit::{HIP_CONTEXT_ID, Hit, Lsi, derive_hit, hit_suite, is_lsi};
pub use identity::{HostId, PublicKey};
pub use ids::{
    DhGroup, EcCurve, EdCurve, EspSuite, GcmKeySize, HashAlg, HiAlgorithm, HipCipher, HitSuite,
};
pub use keymat::{EspKeys, HipKeys, Keymat};
pub use openssl_backend::OpensslBackend;
pub use puzzle::{PuzzleOutcome, solve_puzzle, verify_puzzle};

/// Errors of the crypto layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Algorithm, group, curve or suite not supported.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Structurally invalid input.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Invalid key material (wrong length, not on curve, out of range).
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// An HMAC / AEAD tag did not verify.
    #[error("integrity check failed")]
    IntegrityCheckFailed,
    /// Decryption or padding check failed.
    #[error("decryption failed")]
    DecryptionFailed,
    /// A puzzle solution is wrong.
    #[error("puzzle solution invalid")]
    PuzzleFailed,
    /// Not enough entropy bytes were supplied.
    #[error("need {needed} entropy bytes, got {got}")]
    Entropy {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// KEYMAT cannot produce more bytes (255 × hash length limit).
    #[error("KEYMAT exhausted")]
    KeymatExhausted,
    /// An output buffer is too small.
    #[error("buffer too small, need {needed} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The backend library reported an error.
    #[error("backend error: {0}")]
    Backend(String),
}
