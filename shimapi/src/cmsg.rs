//! Control-message (ancillary data) buffers as bytes, with the Linux
//! `CMSG_*` layout, without `unsafe`.
//!
//! A buffer is a sequence of `struct cmsghdr { size_t cmsg_len; int
//! cmsg_level; int cmsg_type; }` each followed by data and padded to
//! `CMSG_ALIGN` (the size of `size_t`).

use std::ffi::c_int;

const _: () = assert!(std::mem::offset_of!(libc::cmsghdr, cmsg_len) == 0);
const _: () = assert!(std::mem::offset_of!(libc::cmsghdr, cmsg_level) == ALIGN);
const _: () =
    assert!(std::mem::offset_of!(libc::cmsghdr, cmsg_type) == ALIGN + std::mem::size_of::<c_int>());

/// `CMSG_ALIGN` unit on Linux.
const ALIGN: usize = std::mem::size_of::<usize>();
/// `CMSG_ALIGN(sizeof(struct cmsghdr))`.
pub const HDR_LEN: usize = align(std::mem::size_of::<libc::cmsghdr>());

/// `CMSG_ALIGN(n)`.
pub const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// `CMSG_SPACE(n)`.
pub const fn space(n: usize) -> usize {
    HDR_LEN + align(n)
}

/// `CMSG_LEN(n)`.
pub const fn len(n: usize) -> usize {
    HDR_LEN + n
}

/// One control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmsg<'a> {
    /// `cmsg_level`.
    pub level: c_int,
    /// `cmsg_type`.
    pub ty: c_int,
    /// The data (`cmsg_len - CMSG_LEN(0)` bytes).
    pub data: &'a [u8],
}

/// A malformed control buffer (`EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed control message at offset {offset}")]
pub struct CmsgError {
    /// Where.
    pub offset: usize,
}

/// Parses a control buffer. Trailing bytes too short for a header are
/// ignored (as `CMSG_NXTHDR` does); a header whose `cmsg_len` is smaller
/// than a header or runs past the buffer is an error.
pub fn parse(buf: &[u8]) -> Result<Vec<Cmsg<'_>>, CmsgError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while buf.len().saturating_sub(off) >= HDR_LEN {
        let err = CmsgError { offset: off };
        let l = usize::from_ne_bytes(
            buf.get(off..off + ALIGN)
                .and_then(|s| s.try_into().ok())
                .ok_or(err)?,
        );
        let lv = c_int::from_ne_bytes(
            buf.get(off + ALIGN..off + ALIGN + 4)
                .and_then(|s| s.try_into().ok())
                .ok_or(err)?,
        );
        let ty = c_int::from_ne_bytes(
            buf.get(off + ALIGN + 4..off + ALIGN + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or(err)?,
        );
        if l < HDR_LEN {
            return Err(err);
        }
        let end = off.checked_add(l).ok_or(err)?;
        let data = buf.get(off + HDR_LEN..end).ok_or(err)?;
        out.push(Cmsg {
            level: lv,
            ty,
            data,
        });
        off = match end.checked_add(ALIGN - 1) {
            Some(x) => x & !(ALIGN - 1),
            None => break,
        };
    }
    Ok(out)
}

/// Builds a control buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmsgBuf {
    buf: Vec<u8>,
}

impl CmsgBuf {
    /// An empty buffer.
    pub fn new() -> CmsgBuf {
        CmsgBuf::default()
    }

    /// Appends one message (padded to `CMSG_SPACE`).
    pub fn push(&mut self, level: c_int, ty: c_int, data: &[u8]) -> &mut CmsgBuf {
        self.buf.extend_from_slice(&len(data.len()).to_ne_bytes());
        self.buf.extend_from_slice(&level.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.resize(self.buf.len().next_multiple_of(ALIGN), 0);
        self.buf.extend_from_slice(data);
        self.buf.resize(self.buf.len().next_multiple_of(ALIGN), 0);
        self
    }

    /// Appends an `int` message.
    pub fn push_int(&mut self, level: c_int, ty: c_int, v: c_int) -> &mut CmsgBuf {
        self.push(level, ty, &v.to_ne_bytes())
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Writes messages into a caller's control buffer of fixed size the way
/// the kernel's `put_cmsg` does: a message is written when its
/// `CMSG_LEN` fits; the buffer then advances by `CMSG_SPACE` (or to its
/// end). A message that does not fit is dropped and `truncated` is set
/// (the caller reports `MSG_CTRUNC`); later messages are dropped too.
#[derive(Debug)]
pub struct CmsgWriter<'a> {
    out: &'a mut [u8],
    used: usize,
    /// A message did not fit.
    pub truncated: bool,
}

impl<'a> CmsgWriter<'a> {
    /// Writes into `out`.
    pub fn new(out: &'a mut [u8]) -> CmsgWriter<'a> {
        CmsgWriter {
            out,
            used: 0,
            truncated: false,
        }
    }

    /// Writes one message.
    pub fn put(&mut self, level: c_int, ty: c_int, data: &[u8]) {
        if self.truncated {
            return;
        }
        let need = len(data.len());
        let room = self.out.len() - self.used;
        if need > room {
            self.truncated = true;
            return;
        }
        let o = self.used;
        let mut h = Vec::with_capacity(HDR_LEN);
        h.extend_from_slice(&need.to_ne_bytes());
        h.extend_from_slice(&level.to_ne_bytes());
        h.extend_from_slice(&ty.to_ne_bytes());
        h.resize(HDR_LEN, 0);
        self.out[o..o + HDR_LEN].copy_from_slice(&h);
        self.out[o + HDR_LEN..o + need].copy_from_slice(data);
        let adv = space(data.len()).min(room);
        for b in &mut self.out[o + need..o + adv] {
            *b = 0;
        }
        self.used += adv;
    }

    /// Bytes written (the `msg_controllen` to report).
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_round_trip() {
        let mut b = CmsgBuf::new();
        b.push_int(41, 67, 7)
            .push(0x5348, 9, &[1, 2, 3])
            .push(0, 6, &[]);
        let v = parse(b.as_bytes()).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0],
            Cmsg {
                level: 41,
                ty: 67,
                data: &7i32.to_ne_bytes()
            }
        );
        assert_eq!(v[1].data, &[1, 2, 3]);
        assert_eq!(v[2].data, &[] as &[u8]);
        // Every truncation either parses a prefix or fails; never panics.
        for cut in 0..b.as_bytes().len() {
            let _ = parse(&b.as_bytes()[..cut]);
        }
        // A length smaller than the header is an error.
        let mut bad = b.as_bytes().to_vec();
        bad[..ALIGN].copy_from_slice(&3usize.to_ne_bytes());
        assert!(parse(&bad).is_err());
        bad[..ALIGN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn writer_truncates_like_the_kernel() {
        let mut out = [0u8; 64];
        let mut w = CmsgWriter::new(&mut out);
        w.put(41, 1, &[9; 28]);
        assert!(!w.truncated);
        assert_eq!(w.used(), space(28));
        w.put(41, 2, &[9; 28]);
        assert!(w.truncated);
        let used = w.used();
        let v = parse(&out[..used]).unwrap();
        assert_eq!(v.len(), 1);
        // Exactly CMSG_LEN fits (no room for padding).
        let mut out = vec![0u8; len(4)];
        let mut w = CmsgWriter::new(&mut out);
        w.put(1, 2, &[1, 2, 3, 4]);
        assert!(!w.truncated);
        assert_eq!(w.used(), len(4));
    }
}
