//! Algorithm identifiers used by the crypto layer.
//!
//! The numbers are the HIPv2 registry values (RFC 7401 §5.2.x, RFC 7402 §5.1.2,
//! RFC 9374). The wire module owns the packet codec; these typed enums are the
//! crypto layer's view of the same numbers and convert from/to the raw wire
//! integers with [`TryFrom`] / `id()`.

use super::CryptoError;

/// Hash functions used as RHASH, for HMACs, HKDF and signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// SHA-1 (HIT suite 3, ESP suite 1 HMAC-SHA1-96).
    Sha1,
    /// SHA-256 (HIT suite 1).
    Sha256,
    /// SHA-384 (HIT suite 2).
    Sha384,
    /// HIT suite 5 (EdDSA/cSHAKE128, RFC 9374): RHASH = cSHAKE128 with a
    /// 256-bit output (N = S = ""), HMAC = KMAC128 with a 256-bit output
    /// (S = ""); see [`super::keccak`].
    Cshake128,
}

impl HashAlg {
    /// Digest length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Cshake128 => 32,
        }
    }
}

/// Host Identity algorithm (HOST_ID "Algorithm", HIP_SIGNATURE "SIG alg").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HiAlgorithm {
    /// RSA (5), RSASSA-PSS signatures.
    Rsa,
    /// ECDSA (7) on NIST P-256 or P-384.
    Ecdsa,
    /// EdDSA (13, RFC 9374).
    EdDsa,
}

impl HiAlgorithm {
    /// Registry value.
    pub const fn id(self) -> u16 {
        match self {
            HiAlgorithm::Rsa => 5,
            HiAlgorithm::Ecdsa => 7,
            HiAlgorithm::EdDsa => 13,
        }
    }

    /// The HIT suite an identity of this algorithm uses for its HIT, RHASH and
    /// HMAC: RSA → suite 1 (SHA-256), ECDSA → suite 2 (SHA-384), EdDSA → suite 5.
    pub const fn hit_suite(self) -> HitSuite {
        match self {
            HiAlgorithm::Rsa => HitSuite::RsaDsaSha256,
            HiAlgorithm::Ecdsa => HitSuite::EcdsaSha384,
            HiAlgorithm::EdDsa => HitSuite::EddsaCshake128,
        }
    }
}

impl TryFrom<u16> for HiAlgorithm {
    type Error = CryptoError;
    fn try_from(v: u16) -> Result<Self, CryptoError> {
        match v {
            5 => Ok(HiAlgorithm::Rsa),
            7 => Ok(HiAlgorithm::Ecdsa),
            13 => Ok(HiAlgorithm::EdDsa),
            _ => Err(CryptoError::Unsupported("HI algorithm")),
        }
    }
}

/// ECDSA curve label inside an ECDSA Host Identity (RFC 7401 §5.2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// NIST P-256 (1).
    P256,
    /// NIST P-384 (2).
    P384,
}

impl EcCurve {
    /// Registry value.
    pub const fn id(self) -> u16 {
        match self {
            EcCurve::P256 => 1,
            EcCurve::P384 => 2,
        }
    }
    /// Field element size in bytes.
    pub const fn field_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }
}

impl TryFrom<u16> for EcCurve {
    type Error = CryptoError;
    fn try_from(v: u16) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(EcCurve::P256),
            2 => Ok(EcCurve::P384),
            _ => Err(CryptoError::Unsupported("ECDSA curve")),
        }
    }
}

/// EdDSA curve label (RFC 9374). Only Ed25519 (1) is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdCurve {
    /// EdDSA25519 (1), pure Ed25519 (no prehash).
    Ed25519,
}

impl EdCurve {
    /// Registry value.
    pub const fn id(self) -> u16 {
        match self {
            EdCurve::Ed25519 => 1,
        }
    }
}

impl TryFrom<u16> for EdCurve {
    type Error = CryptoError;
    fn try_from(v: u16) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(EdCurve::Ed25519),
            _ => Err(CryptoError::Unsupported("EdDSA curve")),
        }
    }
}

/// HIT suite (the 4-bit ORCHID OGA ID; `id() << 4` in HIT_SUITE_LIST).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HitSuite {
    /// 1: RSA,DSA/SHA-256 (REQUIRED).
    RsaDsaSha256,
    /// 2: ECDSA/SHA-384.
    EcdsaSha384,
    /// 3: ECDSA_LOW/SHA-1 (HIT/RHASH only; no ECDSA_LOW identities here).
    EcdsaLowSha1,
    /// 5: EdDSA/cSHAKE128 (RFC 9374): RHASH cSHAKE128 (256-bit output),
    /// HMAC KMAC128, ORCHID hash cSHAKE128 (96-bit output).
    EddsaCshake128,
}

impl HitSuite {
    /// 4-bit suite / OGA ID.
    pub const fn id(self) -> u8 {
        match self {
            HitSuite::RsaDsaSha256 => 1,
            HitSuite::EcdsaSha384 => 2,
            HitSuite::EcdsaLowSha1 => 3,
            HitSuite::EddsaCshake128 => 5,
        }
    }

    /// The suite's RHASH (also its HMAC hash and the HKDF hash).
    pub fn rhash(self) -> Result<HashAlg, CryptoError> {
        match self {
            HitSuite::RsaDsaSha256 => Ok(HashAlg::Sha256),
            HitSuite::EcdsaSha384 => Ok(HashAlg::Sha384),
            HitSuite::EcdsaLowSha1 => Ok(HashAlg::Sha1),
            HitSuite::EddsaCshake128 => Ok(HashAlg::Cshake128),
        }
    }
}

impl TryFrom<u8> for HitSuite {
    type Error = CryptoError;
    fn try_from(v: u8) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(HitSuite::RsaDsaSha256),
            2 => Ok(HitSuite::EcdsaSha384),
            3 => Ok(HitSuite::EcdsaLowSha1),
            5 => Ok(HitSuite::EddsaCshake128),
            _ => Err(CryptoError::Unsupported("HIT suite")),
        }
    }
}

/// Diffie-Hellman group (DIFFIE_HELLMAN / DH_GROUP_LIST Group ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 3: 1536-bit MODP (RFC 3526 group 5).
    Modp1536,
    /// 4: 3072-bit MODP (RFC 3526 group 15).
    Modp3072,
    /// 7: NIST P-256.
    EcdhP256,
    /// 8: NIST P-384.
    EcdhP384,
    /// 9: NIST P-521.
    EcdhP521,
    /// 11: 2048-bit MODP (RFC 3526 group 14).
    Modp2048,
}

impl DhGroup {
    /// Registry value.
    pub const fn id(self) -> u8 {
        match self {
            DhGroup::Modp1536 => 3,
            DhGroup::Modp3072 => 4,
            DhGroup::EcdhP256 => 7,
            DhGroup::EcdhP384 => 8,
            DhGroup::EcdhP521 => 9,
            DhGroup::Modp2048 => 11,
        }
    }

    /// Length of the public value on the wire: the prime length for MODP
    /// groups (big-endian, left-padded), `2 * field` for ECDH (x‖y, no 0x04).
    pub const fn public_value_len(self) -> usize {
        match self {
            DhGroup::Modp1536 => 192,
            DhGroup::Modp2048 => 256,
            DhGroup::Modp3072 => 384,
            DhGroup::EcdhP256 => 64,
            DhGroup::EcdhP384 => 96,
            DhGroup::EcdhP521 => 132,
        }
    }

    /// Length of the shared secret Kij: the prime length for MODP (left-padded),
    /// the field length for ECDH (x coordinate only).
    pub const fn shared_secret_len(self) -> usize {
        match self {
            DhGroup::EcdhP256 => 32,
            DhGroup::EcdhP384 => 48,
            DhGroup::EcdhP521 => 66,
            other => other.public_value_len(),
        }
    }

    /// Number of entropy bytes [`crate::crypto::CryptoBackend::dh_generate`]
    /// needs for a private key of this group. For MODP groups the private
    /// exponent has twice the group's symmetric strength (320/384/512 bits);
    /// for ECDH the scalar is drawn from `field + 8` bytes reduced modulo the
    /// order (negligible bias).
    pub const fn private_entropy_len(self) -> usize {
        match self {
            DhGroup::Modp1536 => 40,
            DhGroup::Modp2048 => 48,
            DhGroup::Modp3072 => 64,
            DhGroup::EcdhP256 => 40,
            DhGroup::EcdhP384 => 56,
            DhGroup::EcdhP521 => 74,
        }
    }
}

impl TryFrom<u8> for DhGroup {
    type Error = CryptoError;
    fn try_from(v: u8) -> Result<Self, CryptoError> {
        match v {
            3 => Ok(DhGroup::Modp1536),
            4 => Ok(DhGroup::Modp3072),
            7 => Ok(DhGroup::EcdhP256),
            8 => Ok(DhGroup::EcdhP384),
            9 => Ok(DhGroup::EcdhP521),
            11 => Ok(DhGroup::Modp2048),
            _ => Err(CryptoError::Unsupported("DH group")),
        }
    }
}

/// HIP_CIPHER identifier (protects the ENCRYPTED parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HipCipher {
    /// 1: NULL-ENCRYPT (testing only).
    Null,
    /// 2: AES-128-CBC (mandatory).
    Aes128Cbc,
    /// 4: AES-256-CBC.
    Aes256Cbc,
}

impl HipCipher {
    /// Registry value.
    pub const fn id(self) -> u16 {
        match self {
            HipCipher::Null => 1,
            HipCipher::Aes128Cbc => 2,
            HipCipher::Aes256Cbc => 4,
        }
    }
    /// Key length drawn from KEYMAT.
    pub const fn key_len(self) -> usize {
        match self {
            HipCipher::Null => 0,
            HipCipher::Aes128Cbc => 16,
            HipCipher::Aes256Cbc => 32,
        }
    }
    /// IV length in the ENCRYPTED parameter.
    pub const fn iv_len(self) -> usize {
        match self {
            HipCipher::Null => 0,
            _ => 16,
        }
    }
}

impl TryFrom<u16> for HipCipher {
    type Error = CryptoError;
    fn try_from(v: u16) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(HipCipher::Null),
            2 => Ok(HipCipher::Aes128Cbc),
            4 => Ok(HipCipher::Aes256Cbc),
            _ => Err(CryptoError::Unsupported("HIP cipher")),
        }
    }
}

/// AES key size for the AES-GCM ESP suites, whose registry entries do not fix
/// a key size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GcmKeySize {
    /// AES-128-GCM (the default chosen by [`EspSuite::try_from`]).
    Aes128,
    /// AES-256-GCM.
    Aes256,
}

/// ESP transform suite (ESP_TRANSFORM Suite ID, RFC 7402 §5.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EspSuite {
    /// 1: AES-128-CBC + HMAC-SHA1-96.
    Aes128CbcSha1,
    /// 7: NULL + HMAC-SHA-256-128.
    NullSha256,
    /// 8: AES-128-CBC + HMAC-SHA-256-128 (mandatory).
    Aes128CbcSha256,
    /// 9: AES-256-CBC + HMAC-SHA-256-128.
    Aes256CbcSha256,
    /// 12: AES-GCM with an 8-octet ICV (RFC 4106).
    AesGcm8(GcmKeySize),
    /// 13: AES-GCM with a 16-octet ICV (RFC 4106).
    AesGcm16(GcmKeySize),
}

impl EspSuite {
    /// Registry value.
    pub const fn id(self) -> u16 {
        match self {
            EspSuite::Aes128CbcSha1 => 1,
            EspSuite::NullSha256 => 7,
            EspSuite::Aes128CbcSha256 => 8,
            EspSuite::Aes256CbcSha256 => 9,
            EspSuite::AesGcm8(_) => 12,
            EspSuite::AesGcm16(_) => 13,
        }
    }

    /// Encryption key length drawn from KEYMAT. For AES-GCM this includes the
    /// 4-byte RFC 4106 salt, drawn right after the AES key (RFC 4106 §8.1
    /// convention; RFC 7402 is silent, see the crate docs).
    pub const fn enc_key_len(self) -> usize {
        match self {
            EspSuite::NullSha256 => 0,
            EspSuite::Aes128CbcSha1 | EspSuite::Aes128CbcSha256 => 16,
            EspSuite::Aes256CbcSha256 => 32,
            EspSuite::AesGcm8(GcmKeySize::Aes128) | EspSuite::AesGcm16(GcmKeySize::Aes128) => 20,
            EspSuite::AesGcm8(GcmKeySize::Aes256) | EspSuite::AesGcm16(GcmKeySize::Aes256) => 36,
        }
    }

    /// Authentication key length drawn from KEYMAT (0 for the AEAD suites).
    pub const fn auth_key_len(self) -> usize {
        match self {
            EspSuite::Aes128CbcSha1 => 20,
            EspSuite::NullSha256 | EspSuite::Aes128CbcSha256 | EspSuite::Aes256CbcSha256 => 32,
            EspSuite::AesGcm8(_) | EspSuite::AesGcm16(_) => 0,
        }
    }

    /// Explicit IV length carried in each ESP packet.
    pub const fn iv_len(self) -> usize {
        match self {
            EspSuite::NullSha256 => 0,
            EspSuite::Aes128CbcSha1 | EspSuite::Aes128CbcSha256 | EspSuite::Aes256CbcSha256 => 16,
            EspSuite::AesGcm8(_) | EspSuite::AesGcm16(_) => 8,
        }
    }

    /// Integrity check value length.
    pub const fn icv_len(self) -> usize {
        match self {
            EspSuite::Aes128CbcSha1 => 12,
            EspSuite::AesGcm8(_) => 8,
            _ => 16,
        }
    }

    /// Alignment of payload ‖ padding ‖ pad length ‖ next header.
    pub const fn block_len(self) -> usize {
        match self {
            EspSuite::Aes128CbcSha1 | EspSuite::Aes128CbcSha256 | EspSuite::Aes256CbcSha256 => 16,
            _ => 4,
        }
    }

    /// True for suites without confidentiality (must be enabled by policy).
    pub const fn is_auth_only(self) -> bool {
        matches!(self, EspSuite::NullSha256)
    }
}

impl TryFrom<u16> for EspSuite {
    type Error = CryptoError;
    /// Maps the registry value; 12 and 13 map to AES-128-GCM.
    fn try_from(v: u16) -> Result<Self, CryptoError> {
        match v {
            1 => Ok(EspSuite::Aes128CbcSha1),
            7 => Ok(EspSuite::NullSha256),
            8 => Ok(EspSuite::Aes128CbcSha256),
            9 => Ok(EspSuite::Aes256CbcSha256),
            12 => Ok(EspSuite::AesGcm8(GcmKeySize::Aes128)),
            13 => Ok(EspSuite::AesGcm16(GcmKeySize::Aes128)),
            _ => Err(CryptoError::Unsupported("ESP suite")),
        }
    }
}

/// Conversions between the wire module's open identifier enums and the typed
/// crypto enums.
mod wire_conv {
    use super::*;
    use crate::wire;

    macro_rules! conv {
        ($crypto:ty, $wire:ty, $repr:ty) => {
            impl TryFrom<$wire> for $crypto {
                type Error = CryptoError;
                fn try_from(v: $wire) -> Result<Self, CryptoError> {
                    <$crypto>::try_from(<$repr>::from(v))
                }
            }
            impl From<$crypto> for $wire {
                fn from(v: $crypto) -> $wire {
                    <$wire>::from_value(v.id())
                }
            }
        };
    }

    conv!(DhGroup, wire::DhGroupId, u8);
    conv!(HipCipher, wire::HipCipherId, u16);
    conv!(HiAlgorithm, wire::HiAlgorithm, u16);
    conv!(HitSuite, wire::HitSuiteId, u8);
    conv!(EspSuite, wire::EspSuiteId, u16);
}
