//! HIP_CIPHER protection of the ENCRYPTED parameter (RFC 7401 §5.2.18).
//!
//! ENCRYPTED contents = Reserved(4) ‖ IV ‖ ciphertext. The plaintext (one or
//! more whole, padded TLVs) is padded for the block cipher: this crate uses
//! PKCS#7 padding to 16 bytes (the PKCS#5 scheme the RFC cites, generalised to
//! the AES block), always adding 1..=16 bytes each holding the pad length. On
//! decryption the padding is checked strictly. NULL-ENCRYPT adds no padding
//! and no IV. The IV comes from the caller (random per message).

use super::{CryptoBackend, CryptoError, HipCipher};

/// Pad and encrypt `plaintext`; returns the ciphertext (without the IV).
pub fn encrypt(
    backend: &dyn CryptoBackend,
    cipher: HipCipher,
    key: &[u8],
    iv: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if cipher == HipCipher::Null {
        return backend.hip_cipher_encrypt(cipher, key, iv, plaintext);
    }
    let pad = 16 - plaintext.len() % 16;
    let mut buf = Vec::with_capacity(plaintext.len() + pad);
    buf.extend_from_slice(plaintext);
    buf.resize(plaintext.len() + pad, pad as u8);
    backend.hip_cipher_encrypt(cipher, key, iv, &buf)
}

/// Decrypt `ciphertext` and remove the padding.
pub fn decrypt(
    backend: &dyn CryptoBackend,
    cipher: HipCipher,
    key: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if cipher == HipCipher::Null {
        return backend.hip_cipher_decrypt(cipher, key, iv, ciphertext);
    }
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(CryptoError::DecryptionFailed);
    }
    let mut pt = backend.hip_cipher_decrypt(cipher, key, iv, ciphertext)?;
    let pad = usize::from(*pt.last().ok_or(CryptoError::DecryptionFailed)?);
    if pad == 0 || pad > 16 || pad > pt.len() {
        return Err(CryptoError::DecryptionFailed);
    }
    let body = pt.len() - pad;
    if pt[body..].iter().any(|&b| usize::from(b) != pad) {
        return Err(CryptoError::DecryptionFailed);
    }
    pt.truncate(body);
    Ok(pt)
}
