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
//! minimum (1280) cannot be signalled; such paths stay fragmented.
//!
//! LSI (IPv4) traffic is translated to IPv6 before sealing, so its limit
//! is the translated packet's less 20 bytes (the IPv6 header is 20 bytes
//! longer), signalled with an ICMPv4 Fragmentation Needed (RFC 792, RFC
//! 1191: type 3, code 4, the next-hop MTU in the second half of the unused
//! word) from the peer LSI to the local LSI, quoting the IPv4 packet (at
//! most 576 bytes in all, RFC 1812 4.3.2.3). Only packets with Don't
//! Fragment set are answered (as a router would); the smallest IPv4 limit
//! signalled is 576 bytes.

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
/// The smallest IPv4 MTU signalled to LSI traffic (the datagram size every
/// IPv4 host accepts, RFC 791; Linux's `min_pmtu` is 552).
pub(super) const IPV4_MIN_MTU: usize = 576;
/// How much longer an LSI packet is once translated to IPv6 (40-byte
/// against 20-byte header; options and fragments are not translated).
pub(super) const XLAT_GROWTH: usize = 20;

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
    /// packet of `inner_len` bytes; multiple of 8, at least `floor`, see
    /// [`inner_limit`]), once per [`SIGNAL_GAP`] per destination.
    pub(super) fn signal(
        &self,
        dst: IpAddr,
        inner_len: usize,
        outer_len: usize,
        floor: usize,
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
        let limit = inner_limit(inner_len, outer_len, e.mtu, floor)?;
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
/// or the limit would be below `floor` (what the inner protocol can be
/// told: [`IPV6_MIN_MTU`], or [`IPV4_MIN_MTU`] + [`XLAT_GROWTH`] for
/// translated LSI packets).
pub(super) fn inner_limit(
    inner_len: usize,
    outer_len: usize,
    pmtu: usize,
    floor: usize,
) -> Option<usize> {
    let excess = outer_len.checked_sub(pmtu).filter(|e| *e > 0)?;
    let limit = inner_len.checked_sub(excess)? / 8 * 8;
    (limit >= floor).then_some(limit)
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

/// An ICMPv4 Fragmentation Needed (RFC 792, next-hop MTU per RFC 1191)
/// answering the IPv4 packet `v4` (from its destination to its source)
/// with `mtu`, quoting as much of `v4` as keeps the message within 576
/// bytes. `None` unless `v4` is an unfragmented IPv4 packet with Don't
/// Fragment set that is not itself an ICMP error (RFC 1122 3.2.2).
pub(super) fn frag_needed(v4: &[u8], mtu: usize) -> Option<Vec<u8>> {
    let ihl = usize::from(v4.first()? & 0x0f) * 4;
    if v4.first()? >> 4 != 4 || ihl < 20 || v4.len() < ihl + 8 {
        return None;
    }
    let frag = u16::from_be_bytes([*v4.get(6)?, *v4.get(7)?]);
    if frag & 0x4000 == 0 || frag & 0x3fff != 0 {
        return None; // may be fragmented, or is a fragment
    }
    if *v4.get(9)? == 1 && !matches!(v4.get(ihl)?, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) {
        return None; // an ICMP error (or unknown type): no error about it
    }
    let mtu = u16::try_from(mtu).ok()?;
    let quote = v4.get(..v4.len().min(IPV4_MIN_MTU - 28))?;
    let total = u16::try_from(28 + quote.len()).ok()?;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
    p.extend_from_slice(v4.get(16..20)?); // from the packet's destination
    p.extend_from_slice(v4.get(12..16)?); // to its source
    p.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
    p.extend_from_slice(&mtu.to_be_bytes());
    p.extend_from_slice(quote);
    let hsum = !fold(sum16(0, p.get(..20)?));
    p.get_mut(10..12)?.copy_from_slice(&hsum.to_be_bytes());
    let isum = !fold(sum16(0, p.get(20..)?));
    p.get_mut(22..24)?.copy_from_slice(&isum.to_be_bytes());
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
        let v6 = IPV6_MIN_MTU;
        assert_eq!(inner_limit(1400, 1438, 1400, v6), Some(1360));
        assert_eq!(inner_limit(1400, 1438, 1438, v6), None, "fits");
        assert_eq!(inner_limit(1400, 1438, 1500, v6), None, "fits");
        assert_eq!(inner_limit(1400, 1438, 1280, v6), None, "below 1280");
        assert_eq!(inner_limit(10, 1438, 1280, v6), None);
        // Translated LSI packets may go down to 576 + 20.
        let v4 = IPV4_MIN_MTU + XLAT_GROWTH;
        assert_eq!(inner_limit(1420, 1458, 1280, v4), Some(1240));
        assert_eq!(inner_limit(1420, 1458, 640, v4), Some(600));
        assert_eq!(inner_limit(1420, 1458, 600, v4), None, "below 596");
    }

    fn v4_packet(len: usize, df: bool, proto: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[1, 0, 0, 1]);
        p[16..20].copy_from_slice(&[1, 0, 0, 5]);
        for (i, b) in p.iter_mut().enumerate().skip(20) {
            *b = (i * 7) as u8;
        }
        p
    }

    #[test]
    fn fragmentation_needed_goes_back_to_the_lsi_sender() {
        let v4 = v4_packet(1400, true, 6);
        let p = frag_needed(&v4, 1320).unwrap();
        assert_eq!(p.len(), 576, "within 576 bytes");
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!((p[0], p[9]), (0x45, 1));
        assert_eq!(&p[12..16], &[1, 0, 0, 5], "from the packet's destination");
        assert_eq!(&p[16..20], &[1, 0, 0, 1], "to its source");
        assert_eq!((p[20], p[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([p[26], p[27]]), 1320, "next-hop MTU");
        assert_eq!(&p[28..], &v4[..548]);
        // Both checksums verify: the sum over the covered bytes is 0xffff.
        assert_eq!(fold(sum16(0, &p[..20])), 0xffff);
        assert_eq!(fold(sum16(0, &p[20..])), 0xffff);
        // An odd-length short packet is quoted whole, checksum still right.
        let short = v4_packet(301, true, 17);
        let p = frag_needed(&short, 600).unwrap();
        assert_eq!(p.len(), 28 + 301);
        assert_eq!(fold(sum16(0, &p[20..])), 0xffff);
    }

    #[test]
    fn no_fragmentation_needed_without_df_or_about_errors() {
        assert!(frag_needed(&v4_packet(1400, false, 6), 1320).is_none());
        let mut frag = v4_packet(1400, true, 6);
        frag[7] = 1; // offset 8: a fragment
        assert!(frag_needed(&frag, 1320).is_none());
        let mut err = v4_packet(1400, true, 1);
        err[20] = 3; // destination unreachable
        assert!(frag_needed(&err, 1320).is_none());
        let mut echo = v4_packet(1400, true, 1);
        echo[20] = 8;
        assert!(frag_needed(&echo, 1320).is_some());
        let mut v6 = v4_packet(1400, true, 6);
        v6[0] = 0x60;
        assert!(frag_needed(&v6, 1320).is_none());
        assert!(frag_needed(&v4_packet(1400, true, 6), 70_000).is_none());
        for n in 0..60 {
            let _ = frag_needed(&v4_packet(1400, true, 6)[..n], 1320);
        }
        assert!(frag_needed(&v4_packet(1400, true, 6)[..27], 1320).is_none());
    }

    #[test]
    fn signals_once_per_gap_and_forgets_after_the_ttl() {
        let c = Cache::default();
        let t0 = Instant::now();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        let f = IPV6_MIN_MTU;
        assert_eq!(c.signal(d, 1400, 1438, f, t0), None, "nothing learned");
        c.learn(d, 1400, t0);
        assert_eq!(c.signal(d, 1400, 1438, f, t0), Some(1360));
        assert_eq!(c.signal(d, 1400, 1438, f, t0 + SIGNAL_GAP / 2), None);
        assert_eq!(c.signal(d, 1400, 1438, f, t0 + SIGNAL_GAP), Some(1360));
        let later = t0 + 2 * SIGNAL_GAP;
        assert_eq!(c.signal(d, 1300, 1338, f, later), None, "fits");
        let other: IpAddr = "2001:db8::3".parse().unwrap();
        assert_eq!(c.signal(other, 1400, 1438, f, t0), None);
        assert_eq!(c.signal(d, 1400, 1438, f, t0 + PMTU_TTL), None, "expired");
        assert!(!c.any.load(Ordering::Relaxed));
        c.learn(d, 0, t0);
        assert!(!c.any.load(Ordering::Relaxed), "no MTU in the entry");
    }
}
