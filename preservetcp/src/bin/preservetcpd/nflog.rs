//! Learning incoming handshake packets without holding them: an
//! nfnetlink_log (NFLOG) group.
//!
//! Incoming SYN and SYN+ACK segments with a destination options header, and
//! the ACK that carries PREFIX_ACK, only have to be *seen* by the engine —
//! the kernel skips the PREFIX options itself (option type action `00`). The
//! `PTCP_LEARN` chain (see `rules.rs`) sends a copy to NFLOG group `group`;
//! the group's queue threshold is set to 1 (the kernel's default batches up
//! to 100 copies for up to a second), so the copy is in this
//! socket's receive queue before the kernel has even processed the packet,
//! let alone queued its answer in OUTPUT. The packet loop drains this socket
//! (non-blocking) before it handles any queued packet, so a SYN is always
//! learned before its SYN+ACK is handled; the sampler and the control
//! socket drain it too, so a learned third ACK enters its connection within
//! one sampling interval even when no queued packet follows.

use std::io;

use netlink_sys::{Socket, SocketAddr};

const NETLINK_NETFILTER: isize = 12;
const NFNL_SUBSYS_ULOG: u16 = 4;
const NFULNL_MSG_PACKET: u16 = 0;
const NFULNL_MSG_CONFIG: u16 = 1;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_CFG_CMD_UNBIND: u8 = 2;
const NFULNL_COPY_PACKET: u8 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const AF_INET6: u8 = 10;

/// One bound NFLOG group.
pub struct Nflog {
    sock: Socket,
    group: u16,
    buf: Vec<u8>,
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
}

/// A config request for `group` with these attributes.
fn config_msg(group: u16, family: u8, attrs: &[(u16, Vec<u8>)], seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&group.to_be_bytes());
    for (t, d) in attrs {
        attr(&mut m, *t, d);
    }
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG).to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    u32_at(b, off).map(|v| v as i32)
}

/// Calls `f` with the packet payload of every NFULNL_MSG_PACKET message in
/// `buf` (one datagram of netlink messages). Malformed framing stops the
/// walk; it never panics.
pub fn for_each_payload(buf: &[u8], mut f: impl FnMut(&[u8])) {
    let mut off = 0usize;
    while let Some(len) = u32_at(buf, off).map(|l| l as usize) {
        let Some(ty) = u16_at(buf, off + 4) else {
            return;
        };
        if len < 16 {
            return;
        }
        let Some(msg) = off.checked_add(len).and_then(|end| buf.get(off..end)) else {
            return;
        };
        if ty == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET {
            // nlmsghdr (16) + nfgenmsg (4), then attributes.
            let mut a = 20usize;
            while let (Some(alen), Some(aty)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
                let alen = usize::from(alen);
                if alen < 4 {
                    break;
                }
                let Some(data) = a.checked_add(alen).and_then(|end| msg.get(a + 4..end)) else {
                    break;
                };
                if aty & 0x3fff == NFULA_PAYLOAD {
                    f(data);
                }
                a = align4(a + alen);
            }
        }
        off = off.saturating_add(align4(len));
    }
}

impl Nflog {
    /// Binds NFLOG group `group` for IPv6 with full packet copies.
    pub fn open(group: u16) -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let mut me = Self {
            sock,
            group,
            buf: vec![0; 1 << 17],
        };
        // A stale binding (a previous daemon that died) makes BIND fail
        // with EBUSY; unbinding first is harmless.
        let _ = me.request(&[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_UNBIND])], 1);
        me.request(&[(NFULA_CFG_CMD, vec![NFULNL_CFG_CMD_BIND])], 2)?;
        let mut mode = 0xffffu32.to_be_bytes().to_vec();
        mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
        me.request(&[(NFULA_CFG_MODE, mode)], 3)?;
        // The instance default batches 100 copies (or 1 s); a rule without
        // its own threshold (nft `log group` has none) uses it. One copy per
        // message makes it visible before the kernel answers the packet.
        me.request(&[(NFULA_CFG_QTHRESH, 1u32.to_be_bytes().to_vec())], 4)?;
        me.sock.set_non_blocking(true)?;
        Ok(me)
    }

    fn request(&mut self, attrs: &[(u16, Vec<u8>)], seq: u32) -> io::Result<()> {
        let m = config_msg(self.group, AF_INET6, attrs, seq);
        self.sock.send(&m, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let b = self.buf.get(..n).unwrap_or(&[]);
            if u16_at(b, 4) == Some(NLMSG_ERROR) && u32_at(b, 8) == Some(seq) {
                return match i32_at(b, 16) {
                    Some(0) => Ok(()),
                    Some(e) => Err(io::Error::from_raw_os_error(e.saturating_neg())),
                    None => Err(io::Error::other("short netlink error message")),
                };
            }
        }
    }

    /// Feeds every packet waiting in the socket to `f`, without blocking.
    /// Returns how many datagrams were read. An overrun (`ENOBUFS`: the
    /// kernel dropped copies) is reported as an error after draining.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut n = 0;
        let mut overrun = false;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(len) => {
                    n += 1;
                    for_each_payload(self.buf.get(..len).unwrap_or(&[]), &mut f);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => overrun = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if overrun {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOBUFS));
        }
        Ok(n)
    }

    /// Feeds the packets of one waiting datagram to `f`, without blocking;
    /// `Ok(false)` when none was waiting.
    pub fn read_one(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<bool> {
        loop {
            match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(len) => {
                    for_each_payload(self.buf.get(..len).unwrap_or(&[]), &mut f);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Raises the receive buffer (bursts of handshakes between drains).
    pub fn set_rcvbuf(&mut self, bytes: usize) -> io::Result<()> {
        nix::sys::socket::setsockopt(&self.sock, nix::sys::socket::sockopt::RcvBufForce, &bytes)
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_msg(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; 16];
        m.extend_from_slice(&[AF_INET6, 0, 0, 5]);
        attr(&mut m, 1, &[0x86, 0xdd, 3, 0]);
        attr(&mut m, NFULA_PAYLOAD, payload);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&(NFNL_SUBSYS_ULOG << 8).to_ne_bytes());
        m
    }

    #[test]
    fn payloads_of_several_messages() {
        let mut buf = packet_msg(b"first packet");
        buf.extend(packet_msg(b"second"));
        let mut got = Vec::new();
        for_each_payload(&buf, |p| got.push(p.to_vec()));
        assert_eq!(got, vec![b"first packet".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn truncated_or_garbage_input_never_panics() {
        let buf = packet_msg(b"a payload of some length");
        for cut in 0..buf.len() {
            let mut n = 0;
            for_each_payload(&buf[..cut], |_| n += 1);
            assert_eq!(n, 0, "cut at {cut}");
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let v: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for_each_payload(&v, |_| {});
        }
    }

    #[test]
    fn config_message_layout() {
        let m = config_msg(7, AF_INET6, &[(NFULA_CFG_CMD, vec![1])], 9);
        assert_eq!(m.len(), 28);
        assert_eq!(u32_at(&m, 0), Some(28));
        assert_eq!(u16_at(&m, 4), Some(0x0401));
        assert_eq!(&m[16..20], &[AF_INET6, 0, 0, 7]);
        assert_eq!(u16_at(&m, 20), Some(5));
        assert_eq!(u16_at(&m, 22), Some(NFULA_CFG_CMD));
        assert_eq!(m[24], 1);
    }
}
