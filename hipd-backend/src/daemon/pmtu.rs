//! Path MTU of the underlay, handed on to the applications.
//!
//! A Packet Too Big (or Fragmentation Needed) about one of our ESP packets
//! tells hipd the path MTU towards that locator (`ee_info` of the error
//! queue entry); the kernel fragments the ESP packets that follow, which
//! works but costs a reassembly at the peer and is lost wherever fragments
//! are dropped. So when an inner packet's ESP packet would exceed the
//! learned MTU, hipd also writes an ICMPv6 Packet Too Big into hip0, from
//! the peer HIT to the sender, with the largest inner size that fits: the
//! application's TCP then lowers its segment size for that HIT, and its
//! next packets need no fragmentation. The packet that triggered it is
//! still sent (fragmented), so nothing is lost. An inner MTU below the IPv6
//! minimum (1280) cannot be signalled; such paths stay fragmented, and so
//! does LSI (IPv4) traffic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::lsi::{fold, sum16};

/// How long a learned path MTU is used (the kernel's default for its own
/// path MTU cache, `net.ipv6.route.mtu_expires`).
pub(super) const PMTU_TTL: Duration = Duration::from_secs(600);
/// Least time between two Packet Too Big messages into hip0 for one
/// locator (packets already in flight would otherwise each get one).
pub(super) const SIGNAL_GAP: Duration = Duration::from_millis(100);
/// The IPv6 minimum link MTU (RFC 8200): no smaller MTU is signalled.
pub(super) const IPV6_MIN_MTU: usize = 1280;

#[derive(Debug, Clone, Copy)]
struct Entry {
    mtu: usize,
    learned: Instant,
    signalled: Option<Instant>,
}

/// Learned path MTUs per underlay destination.
#[derive(Debug, Default)]
pub(super) struct Cache {
    /// Whether any entry exists (the send path reads only this when none).
    any: AtomicBool,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

impl Cache {
    /// Records the path MTU towards `dst` (from an error queue entry).
    pub(super) fn learn(&self, dst: IpAddr, mtu: u32, now: Instant) {
        let Ok(mtu) = usize::try_from(mtu) else {
            return;
        };
        if mtu < 68 {
            return; // not an MTU (an entry without the ICMP's MTU field)
        }
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, e| now.saturating_duration_since(e.learned) < PMTU_TTL);
        let signalled = m.get(&dst).and_then(|e| e.signalled);
        m.insert(
            dst,
            Entry {
                mtu,
                learned: now,
                signalled,
            },
        );
        self.any.store(true, Ordering::Relaxed);
    }

    /// When the outer packet of `outer_len` bytes for `dst` exceeds the
    /// learned path MTU: the largest inner packet that fits (for an inner
    /// packet of `inner_len` bytes; multiple of 8, see [`inner_limit`]),
    /// once per [`SIGNAL_GAP`] per destination.
    pub(super) fn signal(
        &self,
        dst: IpAddr,
        inner_len: usize,
        outer_len: usize,
        now: Instant,
    ) -> Option<usize> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.get_mut(&dst)?;
        if now.saturating_duration_since(e.learned) >= PMTU_TTL {
            m.remove(&dst);
            if m.is_empty() {
                self.any.store(false, Ordering::Relaxed);
            }
            return None;
        }
        let limit = inner_limit(inner_len, outer_len, e.mtu)?;
        if e.signalled
            .is_some_and(|t| now.saturating_duration_since(t) < SIGNAL_GAP)
        {
            return None;
        }
        e.signalled = Some(now);
        Some(limit)
    }
}

/// The largest inner packet whose outer packet fits `pmtu`, given that an
/// inner packet of `inner_len` bytes became `outer_len` bytes: the excess
/// comes off, rounded down to a multiple of 8 (the ESP padding of the
/// smaller packet can differ by a few bytes). `None` when the packet fits
/// or the limit would be below the IPv6 minimum.
pub(super) fn inner_limit(inner_len: usize, outer_len: usize, pmtu: usize) -> Option<usize> {
    let excess = outer_len.checked_sub(pmtu).filter(|e| *e > 0)?;
    let limit = inner_len.checked_sub(excess)? / 8 * 8;
    (limit >= IPV6_MIN_MTU).then_some(limit)
}

/// An ICMPv6 Packet Too Big (RFC 4443 3.2) answering the IPv6 packet
/// `inner` (from the inner destination to the inner source) with `mtu`,
/// quoting as much of `inner` as keeps the message within 1280 bytes.
/// `None` for anything but an IPv6 packet, and for an ICMPv6 error (no
/// error about an error).
pub(super) fn packet_too_big(inner: &[u8], mtu: usize) -> Option<Vec<u8>> {
    if inner.first()? >> 4 != 6 || inner.len() < 40 {
        return None;
    }
    if *inner.get(6)? == 58 && inner.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let src = inner.get(24..40)?;
    let dst = inner.get(8..24)?;
    let quote = inner.get(..inner.len().min(IPV6_MIN_MTU - 48))?;
    let icmp_len = 8 + quote.len();
    let mut p = Vec::with_capacity(40 + icmp_len);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&u16::try_from(icmp_len).ok()?.to_be_bytes());
    p.extend_from_slice(&[58, 64]);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&[2, 0, 0, 0]);
    p.extend_from_slice(&u32::try_from(mtu).ok()?.to_be_bytes());
    p.extend_from_slice(quote);
    let sum = checksum(src, dst, p.get(40..)?);
    p.get_mut(42..44)?.copy_from_slice(&sum.to_be_bytes());
    Some(p)
}

/// ICMPv6 checksum of `msg` (its checksum field zero) from `src` to `dst`
/// (at most 1280 bytes: the 32-bit sum cannot overflow).
fn checksum(src: &[u8], dst: &[u8], msg: &[u8]) -> u16 {
    let len = u32::try_from(msg.len()).unwrap_or(0).to_be_bytes();
    let acc = [src, dst, &len, &[0, 0, 0, 58], msg]
        .iter()
        .fold(0, |acc, b| sum16(acc, b));
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn inner(len: usize, next: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&u16::try_from(len - 40).unwrap().to_be_bytes());
        p[6] = next;
        p[7] = 64;
        p[8..24].copy_from_slice(&"2001:2a::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:2a::2".parse::<Ipv6Addr>().unwrap().octets());
        for (i, b) in p.iter_mut().enumerate().skip(40) {
            *b = i as u8;
        }
        p
    }

    #[test]
    fn packet_too_big_goes_back_to_the_sender_with_a_valid_checksum() {
        let i = inner(1400, 6);
        let p = packet_too_big(&i, 1360).unwrap();
        assert_eq!(p.len(), 1280, "within the IPv6 minimum MTU");
        assert_eq!(&p[8..24], &i[24..40], "from the inner destination");
        assert_eq!(&p[24..40], &i[8..24], "to the inner source");
        assert_eq!((p[6], p[40], p[41]), (58, 2, 0));
        assert_eq!(u32::from_be_bytes(p[44..48].try_into().unwrap()), 1360);
        assert_eq!(&p[48..], &i[..1232]);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        // The checksum over the message with its own field sums to zero.
        let mut m = p[40..].to_vec();
        let got = u16::from_be_bytes([m[2], m[3]]);
        m[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(checksum(&p[8..24], &p[24..40], &m), got);
        // A short packet is quoted whole.
        let short = inner(300, 17);
        assert_eq!(packet_too_big(&short, 1300).unwrap().len(), 48 + 300);
    }

    #[test]
    fn no_packet_too_big_about_errors_or_non_ipv6() {
        let mut err = inner(1400, 58);
        err[40] = 1; // destination unreachable
        assert!(packet_too_big(&err, 1300).is_none());
        let mut echo = inner(1400, 58);
        echo[40] = 128; // echo request: answered
        assert!(packet_too_big(&echo, 1300).is_some());
        let mut v4 = inner(1400, 6);
        v4[0] = 0x45;
        assert!(packet_too_big(&v4, 1300).is_none());
        for n in 0..41 {
            let _ = packet_too_big(&inner(1400, 6)[..n], 1300);
        }
        assert!(packet_too_big(&inner(1400, 6)[..39], 1300).is_none());
    }

    #[test]
    fn inner_limit_takes_the_excess_off() {
        // A 1400-byte inner packet became 1438 bytes; the path takes 1400.
        assert_eq!(inner_limit(1400, 1438, 1400), Some(1360));
        assert_eq!(inner_limit(1400, 1438, 1438), None, "fits");
        assert_eq!(inner_limit(1400, 1438, 1500), None, "fits");
        assert_eq!(inner_limit(1400, 1438, 1280), None, "below 1280");
        assert_eq!(inner_limit(10, 1438, 1280), None);
    }

    #[test]
    fn signals_once_per_gap_and_forgets_after_the_ttl() {
        let c = Cache::default();
        let t0 = Instant::now();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(c.signal(d, 1400, 1438, t0), None, "nothing learned");
        c.learn(d, 1400, t0);
        assert_eq!(c.signal(d, 1400, 1438, t0), Some(1360));
        assert_eq!(c.signal(d, 1400, 1438, t0 + SIGNAL_GAP / 2), None);
        assert_eq!(c.signal(d, 1400, 1438, t0 + SIGNAL_GAP), Some(1360));
        assert_eq!(c.signal(d, 1300, 1338, t0 + 2 * SIGNAL_GAP), None, "fits");
        let other: IpAddr = "2001:db8::3".parse().unwrap();
        assert_eq!(c.signal(other, 1400, 1438, t0), None);
        assert_eq!(c.signal(d, 1400, 1438, t0 + PMTU_TTL), None, "expired");
        assert!(!c.any.load(Ordering::Relaxed));
        c.learn(d, 0, t0);
        assert!(!c.any.load(Ordering::Relaxed), "no MTU in the entry");
    }
}
