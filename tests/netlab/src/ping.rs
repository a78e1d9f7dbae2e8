//! ICMP echo in-process (raw sockets; the lab runs as root), so tests need no `ping` binary.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::{LabError, Result, io_err};

static SEQ: AtomicU16 = AtomicU16::new(1);

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let hi = u32::from(chunk.first().copied().unwrap_or(0));
        let lo = u32::from(chunk.get(1).copied().unwrap_or(0));
        sum = sum.wrapping_add((hi << 8) | lo);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an echo request (ICMPv4 type 8 or ICMPv6 type 128).
fn echo_request(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"netlab-echo-0123");
    if !v6 {
        // The kernel fills in the ICMPv6 checksum (it needs the pseudo-header), not ICMPv4's.
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether `pkt` (ICMPv4 with IP header, or bare ICMPv6) is our echo reply.
fn is_reply(v6: bool, pkt: &[u8], ident: u16, seq: u16) -> bool {
    let icmp = if v6 {
        pkt
    } else {
        let ihl = usize::from(pkt.first().map_or(0, |b| b & 0x0f)) * 4;
        match pkt.get(ihl..) {
            Some(rest) if ihl >= 20 => rest,
            _ => return false,
        }
    };
    let want_type = if v6 { 129 } else { 0 };
    match (icmp.first(), icmp.get(4..6), icmp.get(6..8)) {
        (Some(&t), Some(id), Some(sq)) => {
            t == want_type && id == ident.to_be_bytes() && sq == seq.to_be_bytes()
        }
        _ => false,
    }
}

/// One echo request/reply exchange from the calling thread's namespace.
pub(crate) fn ping(dst: IpAddr, timeout: Duration) -> Result<Duration> {
    let v6 = dst.is_ipv6();
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let ctx = |what: &str| format!("ping {dst}: {what}");
    let sock = Socket::new(domain, Type::RAW, Some(proto)).map_err(io_err(ctx("raw socket")))?;
    // Connected raw sockets only receive packets from `dst`.
    sock.connect(&SockAddr::from(SocketAddr::new(dst, 0)))
        .map_err(io_err(ctx("connect")))?;
    let ident = (std::process::id() as u16) ^ 0x6e6c;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    sock.send(&echo_request(v6, ident, seq))
        .map_err(io_err(ctx("send")))?;
    let deadline = start + timeout;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LabError::Timeout {
                what: format!("echo reply from {dst}"),
                after: timeout,
            });
        }
        sock.set_read_timeout(Some(left))
            .map_err(io_err(ctx("set timeout")))?;
        match (&sock).read(&mut buf) {
            Ok(n) => {
                if is_reply(v6, buf.get(..n).unwrap_or(&[]), ident, seq) {
                    return Ok(start.elapsed());
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(ctx("receive"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_request_checksum_verifies() {
        let p = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
        assert_eq!(p[0], 8);
    }

    #[test]
    fn reply_matching_checks_type_ident_and_seq() {
        let mut v6 = echo_request(true, 9, 3);
        assert!(!is_reply(true, &v6, 9, 3));
        v6[0] = 129;
        assert!(is_reply(true, &v6, 9, 3));
        assert!(!is_reply(true, &v6, 9, 4));
        let mut v4 = vec![0x45u8];
        v4.extend_from_slice(&[0; 19]);
        let mut icmp = echo_request(false, 9, 3);
        icmp[0] = 0;
        v4.extend_from_slice(&icmp);
        assert!(is_reply(false, &v4, 9, 3));
        assert!(!is_reply(false, &v4[..22], 9, 3));
        assert!(!is_reply(false, &[0x41], 9, 3));
        assert!(!is_reply(false, &[], 9, 3));
    }
}
