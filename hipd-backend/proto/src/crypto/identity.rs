//! Host Identity public-key encoding (the "Host Identity" field of HOST_ID,
//! RFC 7401 §5.2.9, RFC 9374 §3.4).
//!
//! | Algorithm | Host Identity field |
//! |---|---|
//! | RSA (5) | RFC 3110: `e_len` (1 byte, or `0x00 ‖ u16` when > 255) ‖ e ‖ n |
//! | ECDSA (7) | curve u16 (1 = P-256, 2 = P-384) ‖ `0x04 ‖ x ‖ y` (SEC1 uncompressed) |
//! | EdDSA (13) | curve u16 (1 = Ed25519) ‖ u16 zero ("NULL") ‖ 32-byte public key |
//!
//! Choices (kept stable): ECDSA points are *sent* uncompressed with the 0x04
//! octet (the form deployed HIPv2 code uses); the bare `x ‖ y` form is also
//! accepted on input. EdDSA keys are sent with the NULL u16 that the digest of
//! RFC 9374 shows; the form without it is accepted on input. A decoded
//! [`HostId`] keeps the received bytes verbatim, because the HIT is computed
//! over them. RSA moduli must be 1024..=16384 bits, exponents ≤ 8 bytes and
//! odd.

use super::{CryptoBackend, CryptoError, EcCurve, EdCurve, HiAlgorithm, Hit, HitSuite};

/// Parsed public key of a Host Identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PublicKey {
    /// RSA: big-endian exponent and modulus without leading zeros.
    Rsa {
        /// Public exponent.
        e: Vec<u8>,
        /// Modulus.
        n: Vec<u8>,
    },
    /// ECDSA: curve and SEC1 uncompressed point `0x04 ‖ x ‖ y`.
    Ecdsa {
        /// Curve.
        curve: EcCurve,
        /// Uncompressed point (normalised to include 0x04).
        point: Vec<u8>,
    },
    /// EdDSA: curve and raw public key (RFC 8032).
    EdDsa {
        /// Curve.
        curve: EdCurve,
        /// Raw public key.
        key: [u8; 32],
    },
}

/// A Host Identity (public key) together with its exact wire encoding.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HostId {
    key: PublicKey,
    encoded: Vec<u8>,
}

fn malformed(reason: &'static str) -> CryptoError {
    CryptoError::Malformed {
        what: "Host Identity",
        reason,
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

impl HostId {
    /// Build from a parsed public key, producing the canonical encoding.
    pub fn from_public_key(key: PublicKey) -> Result<HostId, CryptoError> {
        let mut out = Vec::new();
        match &key {
            PublicKey::Rsa { e, n } => {
                let e = strip_zeros(e);
                let n = strip_zeros(n);
                check_rsa(e, n)?;
                if e.len() > 255 {
                    out.push(0);
                    out.extend_from_slice(&(e.len() as u16).to_be_bytes());
                } else {
                    out.push(e.len() as u8);
                }
                out.extend_from_slice(e);
                out.extend_from_slice(n);
            }
            PublicKey::Ecdsa { curve, point } => {
                let f = curve.field_len();
                out.extend_from_slice(&curve.id().to_be_bytes());
                if point.len() == 1 + 2 * f && point.first() == Some(&4) {
                    out.extend_from_slice(point);
                } else if point.len() == 2 * f {
                    out.push(4);
                    out.extend_from_slice(point);
                } else {
                    return Err(malformed("ECDSA point length"));
                }
            }
            PublicKey::EdDsa { curve, key } => {
                out.extend_from_slice(&curve.id().to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(key);
            }
        }
        HostId::decode(key.algorithm().id(), &out)
    }

    /// Parse a Host Identity field for the HOST_ID algorithm `algorithm`.
    /// Never panics; rejects trailing or missing bytes.
    pub fn decode(algorithm: u16, hi: &[u8]) -> Result<HostId, CryptoError> {
        let alg = HiAlgorithm::try_from(algorithm)?;
        let key = match alg {
            HiAlgorithm::Rsa => {
                let (&first, rest) = hi.split_first().ok_or(malformed("empty RSA key"))?;
                let (e_len, rest) = if first == 0 {
                    let (l, r) = rest
                        .split_first_chunk::<2>()
                        .ok_or(malformed("RSA exponent length"))?;
                    (usize::from(u16::from_be_bytes(*l)), r)
                } else {
                    (usize::from(first), rest)
                };
                if e_len == 0 || e_len > rest.len() {
                    return Err(malformed("RSA exponent length"));
                }
                let (e, n) = rest.split_at(e_len);
                if e.first() == Some(&0) || n.first() == Some(&0) {
                    return Err(malformed("RSA leading zero"));
                }
                check_rsa(e, n)?;
                PublicKey::Rsa {
                    e: e.to_vec(),
                    n: n.to_vec(),
                }
            }
            HiAlgorithm::Ecdsa => {
                let (c, rest) = hi
                    .split_first_chunk::<2>()
                    .ok_or(malformed("ECDSA curve"))?;
                let curve = EcCurve::try_from(u16::from_be_bytes(*c))?;
                let f = curve.field_len();
                let point = if rest.len() == 1 + 2 * f && rest.first() == Some(&4) {
                    rest.to_vec()
                } else if rest.len() == 2 * f {
                    let mut p = Vec::with_capacity(1 + 2 * f);
                    p.push(4);
                    p.extend_from_slice(rest);
                    p
                } else {
                    return Err(malformed("ECDSA point length"));
                };
                PublicKey::Ecdsa { curve, point }
            }
            HiAlgorithm::EdDsa => {
                let (c, rest) = hi
                    .split_first_chunk::<2>()
                    .ok_or(malformed("EdDSA curve"))?;
                let curve = EdCurve::try_from(u16::from_be_bytes(*c))?;
                let key_bytes = match rest.len() {
                    34 if rest.starts_with(&[0, 0]) => &rest[2..],
                    32 => rest,
                    _ => return Err(malformed("EdDSA key length")),
                };
                let mut key = [0u8; 32];
                key.copy_from_slice(key_bytes);
                PublicKey::EdDsa { curve, key }
            }
        };
        Ok(HostId {
            key,
            encoded: hi.to_vec(),
        })
    }

    /// Algorithm (HOST_ID Algorithm / SIG alg field).
    pub fn algorithm(&self) -> HiAlgorithm {
        self.key.algorithm()
    }

    /// Parsed public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// The Host Identity field bytes (as received, or canonical when built
    /// locally).
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The HIT suite used for this identity's HIT.
    pub fn hit_suite(&self) -> HitSuite {
        self.algorithm().hit_suite()
    }

    /// The ORCHIDv2 HIT of this identity under its own suite.
    pub fn hit(&self, backend: &dyn CryptoBackend) -> Result<Hit, CryptoError> {
        super::derive_hit(backend, self.hit_suite(), &self.encoded)
    }
}

impl PublicKey {
    /// The HI algorithm of this key.
    pub fn algorithm(&self) -> HiAlgorithm {
        match self {
            PublicKey::Rsa { .. } => HiAlgorithm::Rsa,
            PublicKey::Ecdsa { .. } => HiAlgorithm::Ecdsa,
            PublicKey::EdDsa { .. } => HiAlgorithm::EdDsa,
        }
    }
}

fn check_rsa(e: &[u8], n: &[u8]) -> Result<(), CryptoError> {
    if e.is_empty() || e.len() > 8 || e.last().is_none_or(|b| b & 1 == 0) {
        return Err(malformed("RSA exponent"));
    }
    if n.len() < 128 || n.len() > 2048 {
        return Err(malformed("RSA modulus size"));
    }
    Ok(())
}
