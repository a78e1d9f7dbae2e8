//! The crypto backend trait: everything that touches a cryptographic library.
//!
//! The engine holds an `Arc<dyn CryptoBackend>` (the trait is object safe), so
//! a second backend can be added without touching the engine.
//!
//! **Randomness.** The backend never draws randomness on the engine's behalf
//! for values that appear on the wire or in keys derived by the engine: DH
//! private keys, ECDSA/EdDSA identity keys and ESP IV generators are built
//! from entropy bytes the caller passes in. The exceptions, all documented on
//! the methods, are internal to a primitive: RSA key generation, ECDSA
//! signature nonces and the RSA-PSS salt use the library's own CSPRNG (for the
//! openssl backend: OpenSSL's DRBG seeded from the OS).

use std::fmt;

use zeroize::Zeroizing;

use super::{CryptoError, DhGroup, EspSuite, HashAlg, HipCipher, HostId};

/// A fixed-capacity digest/HMAC output (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    buf: [u8; 64],
    len: usize,
}

impl Digest {
    /// Build from bytes (at most 64).
    pub fn from_slice(b: &[u8]) -> Result<Digest, CryptoError> {
        if b.len() > 64 {
            return Err(CryptoError::BufferTooSmall { needed: b.len() });
        }
        let mut buf = [0u8; 64];
        buf[..b.len()].copy_from_slice(b);
        Ok(Digest { buf, len: b.len() })
    }
}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(")?;
        for b in self.as_ref() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// What kind of identity to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySpec {
    /// RSA with the given modulus size in bits (2048..=8192). Uses the
    /// backend library's CSPRNG (explicit entropy is ignored).
    Rsa {
        /// Modulus bits.
        bits: u32,
    },
    /// ECDSA on the given curve. Needs `field + 8` entropy bytes.
    Ecdsa(super::EcCurve),
    /// Ed25519. Needs 32 entropy bytes (the RFC 8032 seed).
    Ed25519,
}

impl IdentitySpec {
    /// Entropy bytes [`CryptoBackend::generate_identity`] needs (0 for RSA).
    pub const fn entropy_len(self) -> usize {
        match self {
            IdentitySpec::Rsa { .. } => 0,
            IdentitySpec::Ecdsa(c) => c.field_len() + 8,
            IdentitySpec::Ed25519 => 32,
        }
    }
}

/// A private Host Identity (signing key).
pub trait PrivateIdentity: Send + Sync + fmt::Debug {
    /// The public Host Identity.
    fn host_id(&self) -> &HostId;
    /// Sign `msg` (the whole to-be-signed byte string; the algorithm hashes it
    /// as documented in the crate docs). Returns the HIP_SIGNATURE bytes.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// PKCS#8 PEM ("PRIVATE KEY").
    fn to_pkcs8_pem(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
    /// Traditional PEM ("RSA PRIVATE KEY" / "EC PRIVATE KEY"); Ed25519 has no
    /// traditional form and returns PKCS#8.
    fn to_traditional_pem(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

/// An ephemeral DH/ECDH key pair.
pub trait DhKeyPair: Send + Sync + fmt::Debug {
    /// Group.
    fn group(&self) -> DhGroup;
    /// Public value in the DIFFIE_HELLMAN encoding (see [`DhGroup::public_value_len`]).
    fn public_value(&self) -> &[u8];
    /// Kij from the peer's public value (validated: right length, in range /
    /// on the curve). MODP secrets are left-padded to the prime length; ECDH
    /// secrets are the x coordinate.
    fn shared_secret(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>;
}

/// Per-SA ESP crypto context (keys set up once, contexts reused per packet).
///
/// Packet buffer layout used by both calls:
/// `SPI(4) ‖ Seq(4) ‖ IV(iv_len) ‖ ciphertext ‖ ICV(icv_len)`.
pub trait EspTransform: Send + fmt::Debug {
    /// Suite.
    fn suite(&self) -> EspSuite;

    /// Encrypt and authenticate in one pass. `pkt[..8]` holds SPI ‖ Seq(low 32)
    /// already. The transform writes the IV at `pkt[8..]`, the ciphertext of
    /// the concatenated `plaintext` parts (whose total length is a multiple of
    /// the suite's block length) after it, then the ICV (covering SPI..ciphertext
    /// plus the implicit high 32 sequence bits `seq_hi`, RFC 4303 ESN).
    /// `pkt` must have 16 spare bytes beyond the ICV. Returns the packet length.
    fn seal(&mut self, seq: u64, plaintext: &[&[u8]], pkt: &mut [u8])
    -> Result<usize, CryptoError>;

    /// Verify the ICV of `pkt` (a whole ESP packet) with the inferred high
    /// sequence bits, then decrypt the ciphertext into `out` (which must be at
    /// least ciphertext length + 16). Returns the plaintext length. Fails with
    /// [`CryptoError::IntegrityCheckFailed`] without writing `out` for the
    /// HMAC suites.
    fn open(&mut self, seq_hi: u32, pkt: &[u8], out: &mut [u8]) -> Result<usize, CryptoError>;
}

/// The crypto operations the HIP engine needs.
pub trait CryptoBackend: Send + Sync + fmt::Debug {
    /// Short name for logs.
    fn name(&self) -> &'static str;

    /// Hash of the concatenation of `parts` ([`HashAlg::Cshake128`]:
    /// cSHAKE128 with a 256-bit output and empty N and S).
    fn digest(&self, alg: HashAlg, parts: &[&[u8]]) -> Result<Digest, CryptoError>;

    /// HMAC of the concatenation of `parts` ([`HashAlg::Cshake128`]:
    /// KMAC128 with a 256-bit output and empty customization).
    fn hmac(&self, alg: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Digest, CryptoError>;

    /// `cSHAKE128(X = concat(parts), L = 8·out.len(), N = "", S = customization)`
    /// (NIST SP 800-185); fills `out`. HIT suite 5 ORCHIDs and RHASH.
    fn cshake128(
        &self,
        customization: &[u8],
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(), CryptoError>;

    /// `KMAC128(K = key, X = concat(parts), L = 8·out.len(), S = customization)`
    /// (NIST SP 800-185); fills `out`. HIT suite 5 HMAC and KDF PRF.
    fn kmac128(
        &self,
        key: &[u8],
        customization: &[u8],
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(), CryptoError>;

    /// Generate an identity. `entropy` must hold [`IdentitySpec::entropy_len`]
    /// bytes from a CSPRNG; RSA keys use the backend's internal CSPRNG (meant
    /// for the daemon, not for the sans-IO engine).
    fn generate_identity(
        &self,
        spec: IdentitySpec,
        entropy: &[u8],
    ) -> Result<Box<dyn PrivateIdentity>, CryptoError>;

    /// Load an identity from PEM (PKCS#8, or traditional RSA/EC). Accepts
    /// RSA ≥ 2048 bits, EC keys on P-256/P-384 and Ed25519; encrypted PEMs
    /// are refused (no passphrase prompt).
    fn identity_from_pem(&self, pem: &[u8]) -> Result<Box<dyn PrivateIdentity>, CryptoError>;

    /// Verify a HIP signature by `host_id` over `msg`.
    fn verify(&self, host_id: &HostId, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError>;

    /// Generate an ephemeral DH key from `entropy`
    /// ([`DhGroup::private_entropy_len`] bytes).
    fn dh_generate(
        &self,
        group: DhGroup,
        entropy: &[u8],
    ) -> Result<Box<dyn DhKeyPair>, CryptoError>;

    /// Raw HIP_CIPHER encryption without padding (`data.len()` must be a
    /// multiple of 16 for AES-CBC). See [`super::cipher`] for the padded form.
    fn hip_cipher_encrypt(
        &self,
        cipher: HipCipher,
        key: &[u8],
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;

    /// Raw HIP_CIPHER decryption without padding removal.
    fn hip_cipher_decrypt(
        &self,
        cipher: HipCipher,
        key: &[u8],
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError>;

    /// Create an ESP context. `iv_seed` (32 bytes of caller entropy) keys the
    /// per-SA IV generator of CBC suites.
    fn esp_transform(
        &self,
        suite: EspSuite,
        enc_key: &[u8],
        auth_key: &[u8],
        iv_seed: &[u8; 32],
    ) -> Result<Box<dyn EspTransform>, CryptoError>;
}

/// [`CryptoBackend::generate_identity`] with the entropy drawn from `rng`
/// (the caller's CSPRNG; RSA still uses the backend's internal generator).
pub fn generate_identity_with_rng<R: rand_core::CryptoRng + ?Sized>(
    backend: &dyn CryptoBackend,
    spec: IdentitySpec,
    rng: &mut R,
) -> Result<Box<dyn PrivateIdentity>, CryptoError> {
    let mut e = Zeroizing::new(vec![0u8; spec.entropy_len()]);
    rng.fill_bytes(&mut e);
    backend.generate_identity(spec, &e)
}

/// [`CryptoBackend::dh_generate`] with the entropy drawn from `rng`.
pub fn dh_generate_with_rng<R: rand_core::CryptoRng + ?Sized>(
    backend: &dyn CryptoBackend,
    group: DhGroup,
    rng: &mut R,
) -> Result<Box<dyn DhKeyPair>, CryptoError> {
    let mut e = Zeroizing::new(vec![0u8; group.private_entropy_len()]);
    rng.fill_bytes(&mut e);
    backend.dh_generate(group, &e)
}
