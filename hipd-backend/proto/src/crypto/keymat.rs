//! KEYMAT generation and the key draw order (RFC 7401 §6.5, RFC 7402 §7).
//!
//! KEYMAT = HKDF (RFC 5869) with the HIT suite's RHASH:
//! `PRK = HMAC(salt = #I ‖ #J, Kij)`, `T(n) = HMAC(PRK, T(n-1) ‖ info ‖ n)`,
//! `info = min(HIT-I, HIT-R) ‖ max(HIT-I, HIT-R)` (numeric order). RFC 7401
//! names the salt and info but omits the formula; this is the RFC 5869
//! reading. At most 255 × hash-length bytes can be drawn.
//!
//! HIT suite 5 (EdDSA/cSHAKE128, RFC 9374) has no HMAC but KMAC128; its
//! KEYMAT is the same extract-and-expand construction with KMAC128
//! (256-bit output, empty customization) in place of HMAC wherever HMAC
//! appears above (`CryptoBackend::hmac` with [`HashAlg::Cshake128`]). RFC
//! 9374 does not define a suite-5 KDF; this keeps RFC 7401's "HKDF over the
//! suite's HMAC" and is a stable choice of this crate.
//!
//! Draw order, each key at its natural size: HIP-gl encryption, HIP-gl
//! integrity, HIP-lg encryption, HIP-lg integrity ([`Keymat::draw_hip_keys`]);
//! then SA-gl ESP encryption, SA-gl ESP authentication, SA-lg ESP encryption,
//! SA-lg ESP authentication ([`Keymat::draw_esp_keys`]). HOST_g is the host
//! with the numerically greater HIT; "gl" keys protect traffic *sent by*
//! HOST_g, so HOST_g's outbound SA uses the gl keys and its inbound SA the lg
//! keys (and the reverse for HOST_l).

use std::fmt;

use zeroize::Zeroizing;

use super::{CryptoBackend, CryptoError, EspSuite, HashAlg, HipCipher, Hit};

/// True when the local host is HOST_g (its HIT is numerically greater).
pub fn local_is_g(local: &Hit, peer: &Hit) -> bool {
    local > peer
}

/// The KEYMAT drawer: lazily expanded HKDF output with a read index.
pub struct Keymat {
    alg: HashAlg,
    prk: Zeroizing<Vec<u8>>,
    info: [u8; 32],
    buf: Zeroizing<Vec<u8>>,
    last_block: Zeroizing<Vec<u8>>,
    counter: u8,
    index: usize,
}

impl fmt::Debug for Keymat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keymat")
            .field("alg", &self.alg)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Keymat {
    /// HKDF-Extract. `puzzle_i`/`puzzle_j` are #I and #J from the puzzle
    /// exchange; `kij` the DH shared secret.
    pub fn new(
        backend: &dyn CryptoBackend,
        alg: HashAlg,
        kij: &[u8],
        hit_i: &Hit,
        hit_r: &Hit,
        puzzle_i: &[u8],
        puzzle_j: &[u8],
    ) -> Result<Keymat, CryptoError> {
        let mut salt = Zeroizing::new(Vec::with_capacity(puzzle_i.len() + puzzle_j.len()));
        salt.extend_from_slice(puzzle_i);
        salt.extend_from_slice(puzzle_j);
        let prk = backend.hmac(alg, &salt, &[kij])?;
        let (lo, hi) = if hit_i <= hit_r {
            (hit_i, hit_r)
        } else {
            (hit_r, hit_i)
        };
        let mut info = [0u8; 32];
        info[..16].copy_from_slice(lo.as_bytes());
        info[16..].copy_from_slice(hi.as_bytes());
        Ok(Keymat {
            alg,
            prk: Zeroizing::new(prk.as_ref().to_vec()),
            info,
            buf: Zeroizing::new(Vec::new()),
            last_block: Zeroizing::new(Vec::new()),
            counter: 0,
            index: 0,
        })
    }

    /// Maximum KEYMAT length for this hash (255 blocks).
    pub fn max_len(&self) -> usize {
        255 * self.alg.output_len()
    }

    /// Next unused byte offset (the KEYMAT Index of ESP_INFO).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Move the read index (e.g. to the larger of both KEYMAT Indexes on a
    /// rekey without DH).
    pub fn set_index(&mut self, index: usize) -> Result<(), CryptoError> {
        if index > self.max_len() {
            return Err(CryptoError::KeymatExhausted);
        }
        self.index = index;
        Ok(())
    }

    fn expand_to(&mut self, backend: &dyn CryptoBackend, len: usize) -> Result<(), CryptoError> {
        if len > self.max_len() {
            return Err(CryptoError::KeymatExhausted);
        }
        while self.buf.len() < len {
            self.counter = self
                .counter
                .checked_add(1)
                .ok_or(CryptoError::KeymatExhausted)?;
            let t = backend.hmac(
                self.alg,
                &self.prk,
                &[&self.last_block, &self.info, &[self.counter]],
            )?;
            self.last_block = Zeroizing::new(t.as_ref().to_vec());
            self.buf.extend_from_slice(t.as_ref());
        }
        Ok(())
    }

    /// The KEYMAT bytes `[start, start + len)` without moving the index.
    pub fn bytes(
        &mut self,
        backend: &dyn CryptoBackend,
        start: usize,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let end = start.checked_add(len).ok_or(CryptoError::KeymatExhausted)?;
        self.expand_to(backend, end)?;
        Ok(Zeroizing::new(self.buf[start..end].to_vec()))
    }

    /// Draw `len` bytes at the index and advance it.
    pub fn draw(
        &mut self,
        backend: &dyn CryptoBackend,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let out = self.bytes(backend, self.index, len)?;
        self.index += len;
        Ok(out)
    }

    /// Draw the four HIP keys in RFC order.
    pub fn draw_hip_keys(
        &mut self,
        backend: &dyn CryptoBackend,
        cipher: HipCipher,
        mac: HashAlg,
    ) -> Result<HipKeys, CryptoError> {
        let e = cipher.key_len();
        let i = mac.output_len();
        Ok(HipKeys {
            gl_enc: self.draw(backend, e)?,
            gl_int: self.draw(backend, i)?,
            lg_enc: self.draw(backend, e)?,
            lg_int: self.draw(backend, i)?,
        })
    }

    /// Draw the four ESP keys in RFC order, starting at the index.
    pub fn draw_esp_keys(
        &mut self,
        backend: &dyn CryptoBackend,
        suite: EspSuite,
    ) -> Result<EspKeys, CryptoError> {
        let e = suite.enc_key_len();
        let a = suite.auth_key_len();
        Ok(EspKeys {
            gl_enc: self.draw(backend, e)?,
            gl_auth: self.draw(backend, a)?,
            lg_enc: self.draw(backend, e)?,
            lg_auth: self.draw(backend, a)?,
        })
    }
}

/// The HIP (control-plane) keys.
pub struct HipKeys {
    /// HIP-gl encryption key (ENCRYPTED sent by HOST_g).
    pub gl_enc: Zeroizing<Vec<u8>>,
    /// HIP-gl integrity key (HIP_MAC of packets sent by HOST_g).
    pub gl_int: Zeroizing<Vec<u8>>,
    /// HIP-lg encryption key.
    pub lg_enc: Zeroizing<Vec<u8>>,
    /// HIP-lg integrity key.
    pub lg_int: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for HipKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HipKeys(..)")
    }
}

impl HipKeys {
    /// Key for ENCRYPTED parameters this host sends.
    pub fn outgoing_enc(&self, local_is_g: bool) -> &[u8] {
        if local_is_g {
            &self.gl_enc
        } else {
            &self.lg_enc
        }
    }
    /// Key for HIP_MACs this host sends.
    pub fn outgoing_int(&self, local_is_g: bool) -> &[u8] {
        if local_is_g {
            &self.gl_int
        } else {
            &self.lg_int
        }
    }
    /// Key for ENCRYPTED parameters the peer sends.
    pub fn incoming_enc(&self, local_is_g: bool) -> &[u8] {
        self.outgoing_enc(!local_is_g)
    }
    /// Key for HIP_MACs the peer sends.
    pub fn incoming_int(&self, local_is_g: bool) -> &[u8] {
        self.outgoing_int(!local_is_g)
    }
}

/// The ESP keys of one SA pair.
pub struct EspKeys {
    /// SA-gl encryption key (traffic sent by HOST_g).
    pub gl_enc: Zeroizing<Vec<u8>>,
    /// SA-gl authentication key.
    pub gl_auth: Zeroizing<Vec<u8>>,
    /// SA-lg encryption key.
    pub lg_enc: Zeroizing<Vec<u8>>,
    /// SA-lg authentication key.
    pub lg_auth: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for EspKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EspKeys(..)")
    }
}

impl EspKeys {
    /// (encryption, authentication) keys of this host's outbound SA.
    pub fn outbound(&self, local_is_g: bool) -> (&[u8], &[u8]) {
        if local_is_g {
            (&self.gl_enc, &self.gl_auth)
        } else {
            (&self.lg_enc, &self.lg_auth)
        }
    }
    /// (encryption, authentication) keys of this host's inbound SA.
    pub fn inbound(&self, local_is_g: bool) -> (&[u8], &[u8]) {
        self.outbound(!local_is_g)
    }
}
