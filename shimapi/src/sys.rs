//! The only module with `unsafe`: thin wrappers around the socket system
//! calls this crate needs. Every wrapper takes Rust slices, so lengths
//! always describe memory that really exists.
#![allow(unsafe_code)]

use std::ffi::c_int;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::RawFd;

fn cvt(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_len(r: isize) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn socklen(n: usize) -> io::Result<libc::socklen_t> {
    libc::socklen_t::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `getsockopt(2)` into `buf`; returns the length the kernel wrote.
pub(crate) fn getsockopt(
    fd: RawFd,
    level: c_int,
    name: c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = socklen(buf.len())?;
    // SAFETY: `buf` is valid for writes of `len` bytes (its own length)
    // and `len` is a live local the kernel updates.
    let r = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    cvt(r)?;
    Ok((len as usize).min(buf.len()))
}

/// `setsockopt(2)` from `buf`.
pub(crate) fn setsockopt(fd: RawFd, level: c_int, name: c_int, buf: &[u8]) -> io::Result<()> {
    let len = socklen(buf.len())?;
    // SAFETY: `buf` is valid for reads of `len` bytes; the kernel only
    // reads it.
    let r = unsafe { libc::setsockopt(fd, level, name, buf.as_ptr().cast(), len) };
    cvt(r).map(|_| ())
}

/// Reads an `int` option.
pub(crate) fn get_int(fd: RawFd, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut b = [0u8; 4];
    getsockopt(fd, level, name, &mut b)?;
    Ok(c_int::from_ne_bytes(b))
}

/// Writes an `int` option.
pub(crate) fn set_int(fd: RawFd, level: c_int, name: c_int, v: c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &v.to_ne_bytes())
}

/// Size of the buffer used for socket addresses.
pub(crate) const ADDR_BUF: usize = std::mem::size_of::<libc::sockaddr_storage>();

/// `getsockname(2)`: the raw address bytes.
pub(crate) fn getsockname(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut st = [0u8; ADDR_BUF];
    let mut len = socklen(st.len())?;
    // SAFETY: `st` is writable for `len` bytes; the kernel writes at most
    // `len` bytes and stores the full length in `len`.
    let r = unsafe { libc::getsockname(fd, st.as_mut_ptr().cast(), &mut len) };
    cvt(r)?;
    Ok(st[..(len as usize).min(ADDR_BUF)].to_vec())
}

/// `getpeername(2)`: the raw address bytes, `None` when not connected.
pub(crate) fn getpeername(fd: RawFd) -> io::Result<Option<Vec<u8>>> {
    let mut st = [0u8; ADDR_BUF];
    let mut len = socklen(st.len())?;
    // SAFETY: as for `getsockname`.
    let r = unsafe { libc::getpeername(fd, st.as_mut_ptr().cast(), &mut len) };
    match cvt(r) {
        Ok(_) => Ok(Some(st[..(len as usize).min(ADDR_BUF)].to_vec())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `bind(2)` to the raw address bytes.
pub(crate) fn bind(fd: RawFd, addr: &[u8]) -> io::Result<()> {
    let len = socklen(addr.len())?;
    // SAFETY: `addr` is readable for `len` bytes; the kernel copies it.
    let r = unsafe { libc::bind(fd, addr.as_ptr().cast(), len) };
    cvt(r).map(|_| ())
}

/// Device and inode of an open file (identifies a socket while it lives).
pub(crate) fn file_id(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` points to a properly sized, writable `stat`.
    let r = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    cvt(r)?;
    // SAFETY: fstat succeeded, so it initialised the structure (and it was
    // zeroed before anyway).
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// `sendmsg(2)`.
pub(crate) fn sendmsg(
    fd: RawFd,
    iov: &[IoSlice<'_>],
    name: Option<&[u8]>,
    control: &[u8],
    flags: c_int,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid `msghdr` (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(n) = name {
        msg.msg_name = n.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = socklen(n.len())?;
    }
    // `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix.
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
    }
    // SAFETY: every pointer in `msg` refers to a live slice of the stated
    // length; sendmsg only reads them.
    let r = unsafe { libc::sendmsg(fd, &msg, flags) };
    cvt_len(r)
}

/// What `recvmsg(2)` returned besides the data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecv {
    pub bytes: usize,
    pub name_len: usize,
    pub control_len: usize,
    pub flags: c_int,
}

/// `recvmsg(2)`.
pub(crate) fn recvmsg(
    fd: RawFd,
    iov: &mut [IoSliceMut<'_>],
    name: Option<&mut [u8]>,
    control: &mut [u8],
    flags: c_int,
) -> io::Result<RawRecv> {
    // SAFETY: all-zero is a valid `msghdr`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    let name_cap = name.as_ref().map_or(0, |n| n.len());
    if let Some(n) = name {
        msg.msg_name = n.as_mut_ptr().cast();
        msg.msg_namelen = socklen(n.len())?;
    }
    // `IoSliceMut` is guaranteed ABI-compatible with `struct iovec`.
    msg.msg_iov = iov.as_mut_ptr().cast();
    msg.msg_iovlen = iov.len() as _;
    if !control.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
    }
    // SAFETY: every pointer in `msg` refers to a live, writable slice of
    // the stated length; the kernel writes within those lengths.
    let r = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    let bytes = cvt_len(r)?;
    Ok(RawRecv {
        bytes,
        name_len: (msg.msg_namelen as usize).min(name_cap),
        control_len: (msg.msg_controllen as usize).min(control.len()),
        flags: msg.msg_flags,
    })
}

#[cfg(test)]
mod tests {
    use crate::cmsg;

    #[test]
    fn cmsg_arithmetic_matches_libc_macros() {
        for n in [0u32, 1, 4, 16, 28, 40, 41] {
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic on the length.
            let (s, l) = unsafe { (libc::CMSG_SPACE(n), libc::CMSG_LEN(n)) };
            assert_eq!(cmsg::space(n as usize), s as usize);
            assert_eq!(cmsg::len(n as usize), l as usize);
        }
    }
}
