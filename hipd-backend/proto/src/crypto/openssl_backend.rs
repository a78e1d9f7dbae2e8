//! The default [`CryptoBackend`], built on the `openssl` crate (system OpenSSL 3).
//!
//! ESP HMAC-SHA-256 uses the `hmac`/`sha2` crates with the keyed state
//! precomputed once per SA and cloned per packet (no per-packet allocation or
//! key schedule); AES runs in reused OpenSSL `CipherCtx`s re-initialised with
//! only the IV per packet. HMAC-SHA1 (ESP suite 1 only) goes through an
//! OpenSSL `Signer` per packet. Measured on a 1400-byte packet, the cloned
//! `hmac` state was ~6× faster than a per-packet OpenSSL `Signer`
//! (`cargo bench --bench esp -- hmac1400`). Per-core thread CPU time for
//! AES-128-CBC + HMAC-SHA-256-128 on 1400-byte packets (SHA-NI/AES-NI host,
//! machine under load): seal ≈ 585 MB/s, open ≈ 740 MB/s; AES-128-GCM ≈ 1.5 GB/s.
//!
//! Randomness used *inside* this backend (not drawn by the engine): RSA key
//! generation, ECDSA signature nonces and the RSA-PSS salt use OpenSSL's DRBG,
//! which OpenSSL seeds from the operating system.

use std::fmt;

use hmac::{Hmac, Mac};
use openssl::bn::{BigNum, BigNumContext};
use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use openssl::derive::Deriver;
use openssl::dh::Dh;
use openssl::ec::{EcGroup, EcGroupRef, EcKey, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::backend::{
    CryptoBackend, DhKeyPair, Digest, EspTransform, IdentitySpec, PrivateIdentity,
};
use super::{
    CryptoError, DhGroup, EcCurve, EdCurve, EspSuite, GcmKeySize, HashAlg, HipCipher, HostId,
    PublicKey,
};

impl From<ErrorStack> for CryptoError {
    fn from(e: ErrorStack) -> Self {
        CryptoError::Backend(e.to_string())
    }
}

/// The OpenSSL-based backend. Stateless; cheap to construct and share.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpensslBackend;

impl OpensslBackend {
    /// New backend handle.
    pub const fn new() -> Self {
        OpensslBackend
    }
}

fn md(alg: HashAlg) -> Result<MessageDigest, CryptoError> {
    match alg {
        HashAlg::Sha1 => Ok(MessageDigest::sha1()),
        HashAlg::Sha256 => Ok(MessageDigest::sha256()),
        HashAlg::Sha384 => Ok(MessageDigest::sha384()),
        // KMAC128 / cSHAKE128 run through `super::keccak`, never an EVP digest.
        HashAlg::Cshake128 => Err(CryptoError::Unsupported("cSHAKE128 as an OpenSSL digest")),
    }
}

fn need_entropy(entropy: &[u8], needed: usize) -> Result<(), CryptoError> {
    if entropy.len() < needed {
        Err(CryptoError::Entropy {
            needed,
            got: entropy.len(),
        })
    } else {
        Ok(())
    }
}

fn ec_group(nid: Nid) -> Result<EcGroup, CryptoError> {
    Ok(EcGroup::from_curve_name(nid)?)
}

fn curve_nid(c: EcCurve) -> Nid {
    match c {
        EcCurve::P256 => Nid::X9_62_PRIME256V1,
        EcCurve::P384 => Nid::SECP384R1,
    }
}

/// Scalar in [1, order-1] from entropy, reduced modulo (order - 1) then + 1.
fn scalar_from_entropy(group: &EcGroupRef, entropy: &[u8]) -> Result<BigNum, CryptoError> {
    let mut ctx = BigNumContext::new()?;
    let mut order = BigNum::new()?;
    group.order(&mut order, &mut ctx)?;
    order.sub_word(1)?;
    let e = BigNum::from_slice(entropy)?;
    let mut d = BigNum::new()?;
    d.nnmod(&e, &order, &mut ctx)?;
    d.add_word(1)?;
    Ok(d)
}

fn ec_key_from_entropy(group: &EcGroupRef, entropy: &[u8]) -> Result<EcKey<Private>, CryptoError> {
    let d = scalar_from_entropy(group, entropy)?;
    let mut ctx = BigNumContext::new()?;
    let mut pt = EcPoint::new(group)?;
    pt.mul_generator2(group, &d, &mut ctx)?;
    // No EC_KEY_check_key: `pt` was just computed as d·G, and the full
    // check repeats that multiplication plus one by the group order (about
    // a third of an ECDH's cost on P-256).
    Ok(EcKey::from_private_components(group, &d, &pt)?)
}

fn ec_public_key(
    group: &EcGroupRef,
    uncompressed: &[u8],
) -> Result<EcKey<openssl::pkey::Public>, CryptoError> {
    let mut ctx = BigNumContext::new()?;
    // Decoding an uncompressed point checks that it lies on the curve (and
    // an uncompressed encoding cannot name the point at infinity).
    let pt = EcPoint::from_bytes(group, uncompressed, &mut ctx)
        .map_err(|_| CryptoError::InvalidKey("EC point not on curve"))?;
    if pt.is_infinity(group) {
        return Err(CryptoError::InvalidKey("EC point at infinity"));
    }
    let key = EcKey::from_public_key(group, &pt)?;
    // On a curve of cofactor 1 (P-256, P-384, P-521: every curve HIP
    // uses) each point on the curve other than infinity has the group's
    // prime order, so the full key check (a multiplication by the order)
    // adds nothing; it stays for any other curve.
    let mut cofactor = BigNum::new()?;
    group.cofactor(&mut cofactor, &mut ctx)?;
    if cofactor != BigNum::from_u32(1)? {
        key.check_key()
            .map_err(|_| CryptoError::InvalidKey("EC public key check failed"))?;
    }
    Ok(key)
}

// ---------------------------------------------------------------- identities

struct OsslIdentity {
    pkey: PKey<Private>,
    host_id: HostId,
}

impl fmt::Debug for OsslIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OsslIdentity")
            .field("algorithm", &self.host_id.algorithm())
            .finish_non_exhaustive()
    }
}

impl OsslIdentity {
    fn from_pkey(pkey: PKey<Private>) -> Result<Self, CryptoError> {
        let key = match pkey.id() {
            Id::RSA => {
                let rsa = pkey.rsa()?;
                if rsa.size() < 256 {
                    return Err(CryptoError::InvalidKey("RSA key shorter than 2048 bits"));
                }
                PublicKey::Rsa {
                    e: rsa.e().to_vec(),
                    n: rsa.n().to_vec(),
                }
            }
            Id::EC => {
                let ec = pkey.ec_key()?;
                let curve = match ec.group().curve_name() {
                    Some(Nid::X9_62_PRIME256V1) => EcCurve::P256,
                    Some(Nid::SECP384R1) => EcCurve::P384,
                    _ => return Err(CryptoError::Unsupported("EC curve (need P-256 or P-384)")),
                };
                let mut ctx = BigNumContext::new()?;
                let point = ec.public_key().to_bytes(
                    ec.group(),
                    PointConversionForm::UNCOMPRESSED,
                    &mut ctx,
                )?;
                PublicKey::Ecdsa { curve, point }
            }
            Id::ED25519 => {
                let raw = pkey.raw_public_key()?;
                let key: [u8; 32] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| CryptoError::InvalidKey("Ed25519 public key length"))?;
                PublicKey::EdDsa {
                    curve: EdCurve::Ed25519,
                    key,
                }
            }
            _ => return Err(CryptoError::Unsupported("private key type")),
        };
        Ok(OsslIdentity {
            host_id: HostId::from_public_key(key)?,
            pkey,
        })
    }
}

fn ecdsa_digest(msg: &[u8]) -> [u8; 48] {
    let mut h = openssl::sha::Sha384::new();
    h.update(msg);
    h.finish()
}

impl PrivateIdentity for OsslIdentity {
    fn host_id(&self) -> &HostId {
        &self.host_id
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.host_id.public_key() {
            PublicKey::Rsa { .. } => {
                let mut s = Signer::new(MessageDigest::sha256(), &self.pkey)?;
                s.set_rsa_padding(Padding::PKCS1_PSS)?;
                s.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                s.set_rsa_mgf1_md(MessageDigest::sha256())?;
                Ok(s.sign_oneshot_to_vec(msg)?)
            }
            PublicKey::Ecdsa { curve, .. } => {
                let ec = self.pkey.ec_key()?;
                let sig = EcdsaSig::sign(&ecdsa_digest(msg), &ec)?;
                let f = curve.field_len() as i32;
                let mut out = sig.r().to_vec_padded(f)?;
                out.extend_from_slice(&sig.s().to_vec_padded(f)?);
                Ok(out)
            }
            PublicKey::EdDsa { .. } => {
                let mut s = Signer::new_without_digest(&self.pkey)?;
                Ok(s.sign_oneshot_to_vec(msg)?)
            }
        }
    }

    fn to_pkcs8_pem(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(Zeroizing::new(self.pkey.private_key_to_pem_pkcs8()?))
    }

    fn to_traditional_pem(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        Ok(Zeroizing::new(match self.pkey.id() {
            Id::RSA => self.pkey.rsa()?.private_key_to_pem()?,
            Id::EC => self.pkey.ec_key()?.private_key_to_pem()?,
            _ => self.pkey.private_key_to_pem_pkcs8()?,
        }))
    }
}

// ---------------------------------------------------------------- DH

#[derive(Debug, Clone, Copy)]
enum DhKind {
    Modp,
    Ec(Nid),
}

fn dh_kind(g: DhGroup) -> DhKind {
    match g {
        DhGroup::Modp1536 | DhGroup::Modp2048 | DhGroup::Modp3072 => DhKind::Modp,
        DhGroup::EcdhP256 => DhKind::Ec(Nid::X9_62_PRIME256V1),
        DhGroup::EcdhP384 => DhKind::Ec(Nid::SECP384R1),
        DhGroup::EcdhP521 => DhKind::Ec(Nid::SECP521R1),
    }
}

fn modp_prime(g: DhGroup) -> Result<BigNum, CryptoError> {
    Ok(match g {
        DhGroup::Modp1536 => BigNum::get_rfc3526_prime_1536()?,
        DhGroup::Modp2048 => BigNum::get_rfc3526_prime_2048()?,
        DhGroup::Modp3072 => BigNum::get_rfc3526_prime_3072()?,
        _ => return Err(CryptoError::Unsupported("not a MODP group")),
    })
}

struct OsslDh {
    group: DhGroup,
    pkey: PKey<Private>,
    public: Vec<u8>,
}

impl fmt::Debug for OsslDh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OsslDh")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn left_pad(v: Vec<u8>, len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let v = Zeroizing::new(v);
    if v.len() > len {
        return Err(CryptoError::Backend(
            "shared secret longer than expected".into(),
        ));
    }
    let mut out = Zeroizing::new(vec![0u8; len]);
    out[len - v.len()..].copy_from_slice(&v);
    Ok(out)
}

impl DhKeyPair for OsslDh {
    fn group(&self) -> DhGroup {
        self.group
    }

    fn public_value(&self) -> &[u8] {
        &self.public
    }

    fn shared_secret(&self, peer_public: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if peer_public.len() != self.group.public_value_len() {
            return Err(CryptoError::InvalidKey("DH public value length"));
        }
        let secret = match dh_kind(self.group) {
            DhKind::Modp => {
                let p = modp_prime(self.group)?;
                let y = BigNum::from_slice(peer_public)?;
                // 1 < y < p - 1
                let mut pm1 = modp_prime(self.group)?;
                pm1.sub_word(1)?;
                let one = BigNum::from_u32(1)?;
                if y.ucmp(&one) != std::cmp::Ordering::Greater
                    || y.ucmp(&pm1) != std::cmp::Ordering::Less
                {
                    return Err(CryptoError::InvalidKey("DH public value out of range"));
                }
                let peer = Dh::from_pqg(p, None, BigNum::from_u32(2)?)?.set_public_key(y)?;
                let peer = PKey::from_dh(peer)?;
                let mut d = Deriver::new(&self.pkey)?;
                d.set_peer(&peer)
                    .map_err(|_| CryptoError::InvalidKey("DH public value rejected"))?;
                d.derive_to_vec()?
            }
            DhKind::Ec(nid) => {
                let group = ec_group(nid)?;
                let mut pt = Vec::with_capacity(1 + peer_public.len());
                pt.push(4);
                pt.extend_from_slice(peer_public);
                let peer = PKey::from_ec_key(ec_public_key(&group, &pt)?)?;
                let mut d = Deriver::new(&self.pkey)?;
                // ec_public_key validated the point; OpenSSL's own peer
                // validation would repeat the full key check.
                d.set_peer_ex(&peer, false)
                    .map_err(|_| CryptoError::InvalidKey("ECDH public value rejected"))?;
                d.derive_to_vec()?
            }
        };
        left_pad(secret, self.group.shared_secret_len())
    }
}

// ---------------------------------------------------------------- ESP

enum EspMac {
    None,
    Sha256(Box<Hmac<Sha256>>),
    Sha1(PKey<Private>),
}

struct OsslEsp {
    suite: EspSuite,
    enc: Option<CipherCtx>,
    dec: Option<CipherCtx>,
    mac: EspMac,
    ivgen: Option<CipherCtx>,
    iv_ctr: u128,
    gcm_salt: [u8; 4],
}

impl fmt::Debug for OsslEsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OsslEsp")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

fn cbc_cipher(suite: EspSuite) -> Option<&'static CipherRef> {
    match suite {
        EspSuite::Aes128CbcSha1 | EspSuite::Aes128CbcSha256 => Some(Cipher::aes_128_cbc()),
        EspSuite::Aes256CbcSha256 => Some(Cipher::aes_256_cbc()),
        EspSuite::AesGcm8(GcmKeySize::Aes128) | EspSuite::AesGcm16(GcmKeySize::Aes128) => {
            Some(Cipher::aes_128_gcm())
        }
        EspSuite::AesGcm8(GcmKeySize::Aes256) | EspSuite::AesGcm16(GcmKeySize::Aes256) => {
            Some(Cipher::aes_256_gcm())
        }
        EspSuite::NullSha256 => None,
    }
}

fn is_gcm(s: EspSuite) -> bool {
    matches!(s, EspSuite::AesGcm8(_) | EspSuite::AesGcm16(_))
}

impl OsslEsp {
    fn new(
        suite: EspSuite,
        enc_key: &[u8],
        auth_key: &[u8],
        iv_seed: &[u8; 32],
    ) -> Result<Self, CryptoError> {
        if enc_key.len() != suite.enc_key_len() || auth_key.len() != suite.auth_key_len() {
            return Err(CryptoError::InvalidKey("ESP key length"));
        }
        let gcm = is_gcm(suite);
        let mut gcm_salt = [0u8; 4];
        let aes_key = if gcm {
            let (k, s) = enc_key.split_at(enc_key.len() - 4);
            gcm_salt.copy_from_slice(s);
            k
        } else {
            enc_key
        };
        let (enc, dec) = match cbc_cipher(suite) {
            Some(c) => {
                let mut e = CipherCtx::new()?;
                e.encrypt_init(Some(c), Some(aes_key), None)?;
                e.set_padding(false);
                let mut d = CipherCtx::new()?;
                d.decrypt_init(Some(c), Some(aes_key), None)?;
                d.set_padding(false);
                (Some(e), Some(d))
            }
            None => (None, None),
        };
        let mac = match suite {
            EspSuite::Aes128CbcSha1 => EspMac::Sha1(PKey::hmac(auth_key)?),
            EspSuite::NullSha256 | EspSuite::Aes128CbcSha256 | EspSuite::Aes256CbcSha256 => {
                EspMac::Sha256(Box::new(
                    Hmac::<Sha256>::new_from_slice(auth_key)
                        .map_err(|_| CryptoError::InvalidKey("HMAC key"))?,
                ))
            }
            _ => EspMac::None,
        };
        let ivgen = if suite.iv_len() == 16 {
            let mut g = CipherCtx::new()?;
            g.encrypt_init(Some(Cipher::aes_128_ecb()), Some(&iv_seed[..16]), None)?;
            g.set_padding(false);
            Some(g)
        } else {
            None
        };
        let mut ctr = [0u8; 16];
        ctr.copy_from_slice(&iv_seed[16..]);
        Ok(OsslEsp {
            suite,
            enc,
            dec,
            mac,
            ivgen,
            iv_ctr: u128::from_be_bytes(ctr),
            gcm_salt,
        })
    }

    fn next_cbc_iv(&mut self) -> Result<[u8; 16], CryptoError> {
        let g = self
            .ivgen
            .as_mut()
            .ok_or(CryptoError::Unsupported("IV generator"))?;
        let block = self.iv_ctr.to_be_bytes();
        self.iv_ctr = self.iv_ctr.wrapping_add(1);
        let mut out = [0u8; 32];
        let n = g.cipher_update(&block, Some(&mut out))?;
        if n != 16 {
            return Err(CryptoError::Backend("IV generator output".into()));
        }
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&out[..16]);
        Ok(iv)
    }

    fn icv(&self, data: &[u8], seq_hi: u32, out: &mut [u8]) -> Result<(), CryptoError> {
        let n = out.len();
        match &self.mac {
            EspMac::Sha256(h) => {
                let mut h = h.as_ref().clone();
                h.update(data);
                h.update(&seq_hi.to_be_bytes());
                let tag = h.finalize().into_bytes();
                out.copy_from_slice(&tag[..n]);
            }
            EspMac::Sha1(k) => {
                let mut s = Signer::new(MessageDigest::sha1(), k)?;
                s.update(data)?;
                s.update(&seq_hi.to_be_bytes())?;
                let tag = s.sign_to_vec()?;
                out.copy_from_slice(tag.get(..n).ok_or(CryptoError::Backend("HMAC".into()))?);
            }
            EspMac::None => return Err(CryptoError::Unsupported("no HMAC for this suite")),
        }
        Ok(())
    }

    fn gcm_nonce(&self, iv: &[u8]) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.gcm_salt);
        n[4..].copy_from_slice(iv);
        n
    }
}

fn cipher_run(
    ctx: &mut CipherCtx,
    parts: &[&[u8]],
    out: &mut [u8],
    expect: usize,
) -> Result<(), CryptoError> {
    let mut off = 0;
    for p in parts {
        if p.is_empty() {
            continue;
        }
        let dst = out.get_mut(off..).ok_or(CryptoError::BufferTooSmall {
            needed: expect + 16,
        })?;
        if dst.len() < p.len() + ctx.block_size() {
            return Err(CryptoError::BufferTooSmall {
                needed: expect + 16,
            });
        }
        off += ctx.cipher_update(p, Some(dst))?;
    }
    let mut tail = [0u8; 32];
    let n = ctx.cipher_final(&mut tail)?;
    if n != 0 || off != expect {
        return Err(CryptoError::Backend("cipher output length".into()));
    }
    Ok(())
}

impl EspTransform for OsslEsp {
    fn suite(&self) -> EspSuite {
        self.suite
    }

    fn seal(
        &mut self,
        seq: u64,
        plaintext: &[&[u8]],
        pkt: &mut [u8],
    ) -> Result<usize, CryptoError> {
        let s = self.suite;
        let iv_len = s.iv_len();
        let ct_len: usize = plaintext.iter().map(|p| p.len()).sum();
        let ct_off = 8 + iv_len;
        let icv_off = ct_off + ct_len;
        let total = icv_off + s.icv_len();
        if pkt.len() < total + 16 {
            return Err(CryptoError::BufferTooSmall { needed: total + 16 });
        }
        if !ct_len.is_multiple_of(s.block_len()) {
            return Err(CryptoError::Malformed {
                what: "ESP plaintext",
                reason: "not block aligned",
            });
        }
        let seq_hi = (seq >> 32) as u32;
        if is_gcm(s) {
            let iv = seq.to_be_bytes();
            pkt[8..16].copy_from_slice(&iv);
            let nonce = self.gcm_nonce(&iv);
            let mut aad = [0u8; 12];
            aad[..4].copy_from_slice(&pkt[..4]);
            aad[4..8].copy_from_slice(&seq_hi.to_be_bytes());
            aad[8..].copy_from_slice(&pkt[4..8]);
            let enc = self
                .enc
                .as_mut()
                .ok_or(CryptoError::Unsupported("cipher"))?;
            enc.encrypt_init(None, None, Some(&nonce))?;
            enc.cipher_update(&aad, None)?;
            cipher_run(enc, plaintext, &mut pkt[ct_off..], ct_len)?;
            enc.tag(&mut pkt[icv_off..total])?;
            return Ok(total);
        }
        match self.enc.as_mut() {
            Some(_) => {
                let iv = self.next_cbc_iv()?;
                pkt[8..24].copy_from_slice(&iv);
                let enc = self
                    .enc
                    .as_mut()
                    .ok_or(CryptoError::Unsupported("cipher"))?;
                enc.encrypt_init(None, None, Some(&iv))?;
                enc.set_padding(false);
                cipher_run(enc, plaintext, &mut pkt[ct_off..], ct_len)?;
            }
            None => {
                let mut off = ct_off;
                for p in plaintext {
                    pkt[off..off + p.len()].copy_from_slice(p);
                    off += p.len();
                }
            }
        }
        let (body, rest) = pkt.split_at_mut(icv_off);
        self.icv(body, seq_hi, &mut rest[..s.icv_len()])?;
        Ok(total)
    }

    fn open(&mut self, seq_hi: u32, pkt: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        let s = self.suite;
        let iv_len = s.iv_len();
        let icv_len = s.icv_len();
        let ct_off = 8 + iv_len;
        let too_short = CryptoError::Malformed {
            what: "ESP packet",
            reason: "too short",
        };
        let icv_off = pkt
            .len()
            .checked_sub(icv_len)
            .filter(|&o| o >= ct_off)
            .ok_or(too_short)?;
        let ct = &pkt[ct_off..icv_off];
        if ct.is_empty() || !ct.len().is_multiple_of(s.block_len()) {
            return Err(CryptoError::Malformed {
                what: "ESP packet",
                reason: "ciphertext not block aligned",
            });
        }
        if out.len() < ct.len() + 16 {
            return Err(CryptoError::BufferTooSmall {
                needed: ct.len() + 16,
            });
        }
        let iv = &pkt[8..ct_off];
        if is_gcm(s) {
            let nonce = self.gcm_nonce(iv);
            let mut aad = [0u8; 12];
            aad[..4].copy_from_slice(&pkt[..4]);
            aad[4..8].copy_from_slice(&seq_hi.to_be_bytes());
            aad[8..].copy_from_slice(&pkt[4..8]);
            let dec = self
                .dec
                .as_mut()
                .ok_or(CryptoError::Unsupported("cipher"))?;
            dec.decrypt_init(None, None, Some(&nonce))?;
            dec.set_tag(&pkt[icv_off..])?;
            dec.cipher_update(&aad, None)?;
            if cipher_run(dec, &[ct], out, ct.len()).is_err() {
                out[..ct.len()].fill(0);
                return Err(CryptoError::IntegrityCheckFailed);
            }
            return Ok(ct.len());
        }
        let mut tag = [0u8; 32];
        self.icv(&pkt[..icv_off], seq_hi, &mut tag[..icv_len])?;
        if !bool::from(tag[..icv_len].ct_eq(&pkt[icv_off..])) {
            return Err(CryptoError::IntegrityCheckFailed);
        }
        match self.dec.as_mut() {
            Some(dec) => {
                dec.decrypt_init(None, None, Some(iv))?;
                dec.set_padding(false);
                cipher_run(dec, &[ct], out, ct.len())?;
            }
            None => out[..ct.len()].copy_from_slice(ct),
        }
        Ok(ct.len())
    }
}

// ---------------------------------------------------------------- backend

fn hip_cbc(c: HipCipher) -> Option<openssl::symm::Cipher> {
    match c {
        HipCipher::Null => None,
        HipCipher::Aes128Cbc => Some(openssl::symm::Cipher::aes_128_cbc()),
        HipCipher::Aes256Cbc => Some(openssl::symm::Cipher::aes_256_cbc()),
    }
}

fn hip_crypt(
    c: HipCipher,
    mode: openssl::symm::Mode,
    key: &[u8],
    iv: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if key.len() != c.key_len() || iv.len() != c.iv_len() {
        return Err(CryptoError::InvalidKey("HIP cipher key/IV length"));
    }
    let Some(cipher) = hip_cbc(c) else {
        return Ok(data.to_vec());
    };
    if !data.len().is_multiple_of(16) {
        return Err(CryptoError::Malformed {
            what: "ENCRYPTED",
            reason: "not block aligned",
        });
    }
    let mut cr = openssl::symm::Crypter::new(cipher, mode, key, Some(iv))?;
    cr.pad(false);
    let mut out = vec![0u8; data.len() + 16];
    let mut n = cr.update(data, &mut out)?;
    n += cr.finalize(&mut out[n..])?;
    out.truncate(n);
    Ok(out)
}

impl CryptoBackend for OpensslBackend {
    fn name(&self) -> &'static str {
        "openssl"
    }

    fn digest(&self, alg: HashAlg, parts: &[&[u8]]) -> Result<Digest, CryptoError> {
        match alg {
            HashAlg::Sha1 => {
                let mut h = openssl::sha::Sha1::new();
                parts.iter().for_each(|p| h.update(p));
                Digest::from_slice(&h.finish())
            }
            HashAlg::Sha256 => {
                let mut h = openssl::sha::Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                Digest::from_slice(&h.finish())
            }
            HashAlg::Sha384 => {
                let mut h = openssl::sha::Sha384::new();
                parts.iter().for_each(|p| h.update(p));
                Digest::from_slice(&h.finish())
            }
            HashAlg::Cshake128 => {
                let mut out = [0u8; HashAlg::Cshake128.output_len()];
                super::keccak::cshake128(b"", parts, &mut out);
                Digest::from_slice(&out)
            }
        }
    }

    fn hmac(&self, alg: HashAlg, key: &[u8], parts: &[&[u8]]) -> Result<Digest, CryptoError> {
        if alg == HashAlg::Cshake128 {
            let mut out = [0u8; HashAlg::Cshake128.output_len()];
            super::keccak::kmac128(key, b"", parts, &mut out);
            return Digest::from_slice(&out);
        }
        let k = PKey::hmac(key)?;
        let mut s = Signer::new(md(alg)?, &k)?;
        for p in parts {
            s.update(p)?;
        }
        Digest::from_slice(&s.sign_to_vec()?)
    }

    fn cshake128(
        &self,
        customization: &[u8],
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        super::keccak::cshake128(customization, parts, out);
        Ok(())
    }

    fn kmac128(
        &self,
        key: &[u8],
        customization: &[u8],
        parts: &[&[u8]],
        out: &mut [u8],
    ) -> Result<(), CryptoError> {
        super::keccak::kmac128(key, customization, parts, out);
        Ok(())
    }

    fn generate_identity(
        &self,
        spec: IdentitySpec,
        entropy: &[u8],
    ) -> Result<Box<dyn PrivateIdentity>, CryptoError> {
        need_entropy(entropy, spec.entropy_len())?;
        let pkey = match spec {
            IdentitySpec::Rsa { bits } => {
                if !(2048..=8192).contains(&bits) {
                    return Err(CryptoError::Unsupported("RSA size (2048..=8192)"));
                }
                PKey::from_rsa(Rsa::generate(bits)?)?
            }
            IdentitySpec::Ecdsa(c) => {
                let g = ec_group(curve_nid(c))?;
                PKey::from_ec_key(ec_key_from_entropy(&g, &entropy[..spec.entropy_len()])?)?
            }
            IdentitySpec::Ed25519 => PKey::private_key_from_raw_bytes(&entropy[..32], Id::ED25519)?,
        };
        Ok(Box::new(OsslIdentity::from_pkey(pkey)?))
    }

    fn identity_from_pem(&self, pem: &[u8]) -> Result<Box<dyn PrivateIdentity>, CryptoError> {
        // An empty-password callback makes encrypted PEMs fail instead of
        // prompting on a terminal.
        let pkey = PKey::private_key_from_pem_callback(pem, |_buf| Ok(0)).map_err(|_| {
            CryptoError::Malformed {
                what: "PEM private key",
                reason: "unparsable or encrypted",
            }
        })?;
        Ok(Box::new(OsslIdentity::from_pkey(pkey)?))
    }

    fn verify(&self, host_id: &HostId, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let ok = match host_id.public_key() {
            PublicKey::Rsa { e, n } => {
                let rsa =
                    Rsa::from_public_components(BigNum::from_slice(n)?, BigNum::from_slice(e)?)?;
                if signature.len() != rsa.size() as usize {
                    return Err(CryptoError::BadSignature);
                }
                let pk = PKey::from_rsa(rsa)?;
                let mut v = Verifier::new(MessageDigest::sha256(), &pk)?;
                v.set_rsa_padding(Padding::PKCS1_PSS)?;
                // -2 = RSA_PSS_SALTLEN_AUTO: recover the salt length.
                v.set_rsa_pss_saltlen(RsaPssSaltlen::custom(-2))?;
                v.set_rsa_mgf1_md(MessageDigest::sha256())?;
                v.verify_oneshot(signature, msg).unwrap_or(false)
            }
            PublicKey::Ecdsa { curve, point } => {
                let f = curve.field_len();
                if signature.len() != 2 * f {
                    return Err(CryptoError::BadSignature);
                }
                let g = ec_group(curve_nid(*curve))?;
                let key = ec_public_key(&g, point)?;
                let (r, s) = signature.split_at(f);
                let sig = EcdsaSig::from_private_components(
                    BigNum::from_slice(r)?,
                    BigNum::from_slice(s)?,
                )?;
                sig.verify(&ecdsa_digest(msg), &key).unwrap_or(false)
            }
            PublicKey::EdDsa { key, .. } => {
                if signature.len() != 64 {
                    return Err(CryptoError::BadSignature);
                }
                let pk = PKey::public_key_from_raw_bytes(key, Id::ED25519)
                    .map_err(|_| CryptoError::InvalidKey("Ed25519 public key"))?;
                let mut v = Verifier::new_without_digest(&pk)?;
                v.verify_oneshot(signature, msg).unwrap_or(false)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    fn dh_generate(
        &self,
        group: DhGroup,
        entropy: &[u8],
    ) -> Result<Box<dyn DhKeyPair>, CryptoError> {
        let need = group.private_entropy_len();
        need_entropy(entropy, need)?;
        let entropy = &entropy[..need];
        let (pkey, public) = match dh_kind(group) {
            DhKind::Modp => {
                let mut x = BigNum::from_slice(entropy)?;
                // Keep x >= 2 (x has far fewer bits than p, so x < p - 1).
                x.add_word(2)?;
                let dh = Dh::from_pqg(modp_prime(group)?, None, BigNum::from_u32(2)?)?
                    .set_private_key(x)?;
                let public = dh
                    .public_key()
                    .to_vec_padded(group.public_value_len() as i32)?;
                (PKey::from_dh(dh)?, public)
            }
            DhKind::Ec(nid) => {
                let g = ec_group(nid)?;
                let key = ec_key_from_entropy(&g, entropy)?;
                let mut ctx = BigNumContext::new()?;
                let pt =
                    key.public_key()
                        .to_bytes(&g, PointConversionForm::UNCOMPRESSED, &mut ctx)?;
                let public = pt.get(1..).unwrap_or_default().to_vec();
                (PKey::from_ec_key(key)?, public)
            }
        };
        if public.len() != group.public_value_len() {
            return Err(CryptoError::Backend("DH public value length".into()));
        }
        Ok(Box::new(OsslDh {
            group,
            pkey,
            public,
        }))
    }

    fn hip_cipher_encrypt(
        &self,
        cipher: HipCipher,
        key: &[u8],
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        hip_crypt(cipher, openssl::symm::Mode::Encrypt, key, iv, data)
    }

    fn hip_cipher_decrypt(
        &self,
        cipher: HipCipher,
        key: &[u8],
        iv: &[u8],
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        hip_crypt(cipher, openssl::symm::Mode::Decrypt, key, iv, data)
    }

    fn esp_transform(
        &self,
        suite: EspSuite,
        enc_key: &[u8],
        auth_key: &[u8],
        iv_seed: &[u8; 32],
    ) -> Result<Box<dyn EspTransform>, CryptoError> {
        Ok(Box::new(OsslEsp::new(suite, enc_key, auth_key, iv_seed)?))
    }
}
