//! Helpers shared by the lab integration tests in `tests/tests/`.
#![forbid(unsafe_code)]

/// A deterministic byte stream (xorshift64*), reproducible at the receiver so
/// that transfers of any size are checked byte for byte without storing them.
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    buf: u64,
    left: u32,
    pos: u64,
}

impl Pattern {
    /// A stream determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            buf: 0,
            left: 0,
            pos: 0,
        }
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn next_byte(&mut self) -> u8 {
        if self.left == 0 {
            let mut x = self.state;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.state = x;
            self.buf = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            self.left = 8;
        }
        let b = self.buf as u8;
        self.buf >>= 8;
        self.left -= 1;
        b
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for b in out.iter_mut() {
            *b = self.next_byte();
        }
        self.pos += out.len() as u64;
    }

    /// Checks that `got` are the next bytes of the stream; on a mismatch
    /// returns the stream offset of the first differing byte.
    pub fn check(&mut self, got: &[u8]) -> Result<(), u64> {
        for (i, b) in got.iter().enumerate() {
            if *b != self.next_byte() {
                return Err(self.pos + i as u64);
            }
        }
        self.pos += got.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn pattern_checks_in_any_chunking() {
        let mut w = Pattern::new(42);
        let mut data = vec![0u8; 10_000];
        w.fill(&mut data[..3333]);
        w.fill(&mut data[3333..]);
        let mut r = Pattern::new(42);
        for chunk in data.chunks(777) {
            r.check(chunk).unwrap();
        }
        assert_eq!(r.position(), 10_000);
        let mut r = Pattern::new(42);
        let mut bad = data.clone();
        bad[5000] ^= 1;
        assert_eq!(r.check(&bad), Err(5000));
        assert_ne!(Pattern::new(1).check(&data[..64]), Ok(()));
    }
}
