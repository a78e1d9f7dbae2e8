//! HIT derivation (ORCHIDv2, RFC 7343 / RFC 7401 §3.2 / RFC 9374) and LSI checks.
//!
//! ```text
//! HIT = 2001:20::/28 prefix ‖ OGA ID (4 bits = HIT suite) ‖ Encode_96(Hash(ContextID ‖ HI))
//! ```
//!
//! Choices (kept stable):
//! * `Encode_96` takes the **middle** 96 bits of the digest (RFC 7343 §2 and
//!   RFC 9374 §3.5): SHA-1 bytes `[4..16)`, SHA-256 `[10..22)`, SHA-384 `[18..30)`.
//! * The hash input after the Context ID is the *Host Identity field* exactly as
//!   carried in HOST_ID (for ECDSA and EdDSA this includes the 2-byte curve
//!   label; for RSA it is `e_len ‖ e ‖ n`).
//! * HIT suite 5 (EdDSA/cSHAKE128), RFC 9374 §3.5.2.1 ("Encoding ORCHIDs
//!   for HIPv2", variable output length hashes): `Hash[96](ContextID ‖ HI)`
//!   with `Hash[L]` = the L-bit output of cSHAKE128 (N = S = ""), used
//!   directly without middle extraction; Prefix and OGA ID are not hashed
//!   for HIPv2 HITs (unlike DETs, RFC 9374 §3.5.2, where the Context ID is
//!   the cSHAKE customization string and the header is hashed). RFC 9374
//!   publishes no HIPv2 HIT test vector; the known-answer test was computed
//!   independently (OpenSSL SHAKE128, identical to cSHAKE128 with empty N
//!   and S).

use std::net::Ipv4Addr;

pub use crate::wire::{Hit, Lsi};

use super::{CryptoBackend, CryptoError, HitSuite};

/// HIP ORCHID Context ID (RFC 7401 §3.2).
pub const HIP_CONTEXT_ID: [u8; 16] = [
    0xF0, 0xEF, 0xF0, 0x2F, 0xBF, 0xF4, 0x3D, 0x0F, 0xE7, 0x93, 0x0C, 0x3C, 0x6E, 0x61, 0x74, 0xEA,
];

/// The first 28 bits of an ORCHIDv2 (2001:20::/28), left-aligned in a u32.
pub const ORCHID_V2_PREFIX: u32 = Hit::ORCHID_V2_PREFIX;

/// The HIT suite of an ORCHIDv2 HIT (its OGA ID), as the crypto layer's enum.
pub fn hit_suite(hit: &Hit) -> Result<HitSuite, CryptoError> {
    let suite = hit.suite().ok_or(CryptoError::Malformed {
        what: "HIT",
        reason: "not an ORCHIDv2 (2001:20::/28)",
    })?;
    HitSuite::try_from(suite.value())
}

/// Derive the ORCHIDv2 HIT of a Host Identity field (`hi` = the bytes of
/// HOST_ID's "Host Identity" field) under `suite`.
pub fn derive_hit(
    backend: &dyn CryptoBackend,
    suite: HitSuite,
    hi: &[u8],
) -> Result<Hit, CryptoError> {
    let mut hash96 = [0u8; 12];
    match suite {
        HitSuite::EddsaCshake128 => {
            // RFC 9374 §3.5.2.1: the L = 96-bit output of the variable-length
            // hash over Context ID ‖ HOST_ID (N = S = "").
            backend.cshake128(b"", &[&HIP_CONTEXT_ID, hi], &mut hash96)?;
        }
        other => {
            let alg = other.rhash()?;
            let d = backend.digest(alg, &[&HIP_CONTEXT_ID, hi])?;
            let bytes = d.as_ref();
            // Middle 96 bits: start at (len - 12) / 2 bytes.
            let start = (bytes.len() - 12) / 2;
            hash96.copy_from_slice(&bytes[start..start + 12]);
        }
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&(ORCHID_V2_PREFIX | u32::from(suite.id())).to_be_bytes());
    out[4..].copy_from_slice(&hash96);
    Ok(Hit::from_bytes(out))
}

/// The LSI range, 1.0.0.0/8.
pub const LSI_PREFIX: Ipv4Addr = Ipv4Addr::new(1, 0, 0, 0);
/// Prefix length of the LSI range.
pub const LSI_PREFIX_LEN: u8 = 8;

/// True when `addr` is a usable LSI: inside 1.0.0.0/8 but not the network
/// (1.0.0.0) or broadcast (1.255.255.255) address. ([`Lsi::new`] accepts the
/// whole /8; the daemon's pool should use this stricter check.)
pub fn is_lsi(addr: Ipv4Addr) -> bool {
    let o = addr.octets();
    o[0] == 1 && o[1..] != [0, 0, 0] && o[1..] != [255, 255, 255]
}
