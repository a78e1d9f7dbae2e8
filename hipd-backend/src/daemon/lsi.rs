//! LSI ↔ HIT translation of inner packets (see the [daemon docs](super)).
//!
//! Outbound IPv4 packets LSI → LSI become IPv6 packets HIT → HIT before
//! sealing; inbound IPv6 packets become IPv4 when the flow is an LSI flow.
//! TCP and UDP checksums are adjusted for the pseudo-header change
//! (RFC 1624; an IPv4 UDP checksum of zero is computed in full, since IPv6
//! requires it). ICMP echo requests and replies are translated (ICMPv4
//! 8/0 ↔ ICMPv6 128/129, checksums recomputed), so `ping` to an LSI works;
//! other ICMPv4 messages inside an LSI flow are dropped. Fragmented IPv4 and
//! IPv4 options are not supported (dropped / options removed). The
//! listener check for a new inbound flow reads `/proc/net/{tcp,udp}{,6}`;
//! its answer per (protocol, local port) is cached for
//! [`PORT_DECISION_TTL`].

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hip_proto::wire::Hit;

use super::DataPlane;
use super::net::parse_ipv4_header;

/// How long a listener-family decision for a local port is reused (reading
/// `/proc/net/tcp*` costs milliseconds on a busy host).
pub(super) const PORT_DECISION_TTL: Duration = Duration::from_secs(2);

/// Adds `data` as big-endian 16-bit words to `acc` (an odd last byte is
/// padded), without folding.
pub(super) fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut it = data.chunks_exact(2);
    for c in &mut it {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = it.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// Folds a one's-complement sum to 16 bits.
pub(super) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// RFC 1624: checksum after replacing `old` words by `new` words.
fn replace(csum: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut acc = u32::from(!csum);
    for c in old.chunks_exact(2) {
        acc += u32::from(!u16::from_be_bytes([c[0], c[1]]));
    }
    acc = sum16(acc, new);
    !fold(acc)
}

fn csum_offset(proto: u8, len: usize) -> Option<usize> {
    match proto {
        6 if len >= 20 => Some(16),
        17 if len >= 8 => Some(6),
        _ => None,
    }
}

fn full_v6(src: &[u8], dst: &[u8], proto: u8, payload: &[u8]) -> u16 {
    let mut acc = sum16(0, src);
    acc = sum16(acc, dst);
    acc = sum16(acc, &(payload.len() as u32).to_be_bytes());
    acc = sum16(acc, &[0, 0, 0, proto]);
    acc = sum16(acc, payload);
    let c = !fold(acc);
    if c == 0 { 0xffff } else { c }
}

/// Translates an IPv4 LSI packet into `out` (IPv6 HIT packet); returns
/// (local HIT, peer HIT). Records the flow as an LSI flow.
pub(super) fn v4_to_v6(pkt: &[u8], dp: &DataPlane, out: &mut Vec<u8>) -> Option<(Hit, Hit)> {
    let h = parse_ipv4_header(pkt)?;
    let frag = u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]);
    if frag & 0x3fff != 0 {
        return None; // fragment
    }
    let local = *dp.local_lsi.get(&h.src)?;
    let peer = *dp.lsi_peer.get(&h.dst)?;
    let payload = pkt.get(h.header_len..h.total_len)?;
    if h.proto == 1 {
        return icmp4_to_6(pkt, &h, payload, dp, local, peer, out);
    }
    let plen = u16::try_from(payload.len()).ok()?;
    out.clear();
    out.extend_from_slice(&[0x60 | (pkt[1] >> 4), pkt[1] << 4, 0, 0]);
    out.extend_from_slice(&plen.to_be_bytes());
    out.push(h.proto);
    out.push(h.ttl);
    out.extend_from_slice(local.as_bytes());
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(payload);
    if let Some(off) = csum_offset(h.proto, payload.len()) {
        let p = out.get_mut(40..)?;
        let old = u16::from_be_bytes([p[off], p[off + 1]]);
        let new = if h.proto == 17 && old == 0 {
            p[off] = 0;
            p[off + 1] = 0;
            full_v6(local.as_bytes(), peer.as_bytes(), 17, p)
        } else {
            let mut a4 = [0u8; 8];
            a4[..4].copy_from_slice(&h.src.octets());
            a4[4..].copy_from_slice(&h.dst.octets());
            let mut a6 = [0u8; 32];
            a6[..16].copy_from_slice(local.as_bytes());
            a6[16..].copy_from_slice(peer.as_bytes());
            let c = replace(old, &a4, &a6);
            if h.proto == 17 && c == 0 { 0xffff } else { c }
        };
        p[off..off + 2].copy_from_slice(&new.to_be_bytes());
        if payload.len() >= 4 {
            let sport = u16::from_be_bytes([payload[0], payload[1]]);
            let dport = u16::from_be_bytes([payload[2], payload[3]]);
            let mut f = dp.lsi_flows.lock().unwrap_or_else(|p| p.into_inner());
            if f.len() > 65536 {
                f.clear();
            }
            f.insert((peer, h.proto, sport, dport), true);
        }
    }
    Some((local, peer))
}

/// ICMPv4 echo request/reply → ICMPv6 echo request/reply (RFC 7915 §4.2
/// for the echo messages; other ICMP types are not translated).
fn icmp4_to_6(
    pkt: &[u8],
    h: &super::net::Ipv4Header,
    payload: &[u8],
    dp: &DataPlane,
    local: Hit,
    peer: Hit,
    out: &mut Vec<u8>,
) -> Option<(Hit, Hit)> {
    let t6 = match (payload.first()?, payload.get(1)?) {
        (8, 0) => 128,
        (0, 0) => 129,
        _ => return None,
    };
    let ident = u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]);
    let plen = u16::try_from(payload.len()).ok()?;
    out.clear();
    out.extend_from_slice(&[0x60 | (pkt[1] >> 4), pkt[1] << 4, 0, 0]);
    out.extend_from_slice(&plen.to_be_bytes());
    out.push(58);
    out.push(h.ttl);
    out.extend_from_slice(local.as_bytes());
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(payload);
    let p = out.get_mut(40..)?;
    p[0] = t6;
    p[2] = 0;
    p[3] = 0;
    let c = full_v6(local.as_bytes(), peer.as_bytes(), 58, p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = dp.lsi_flows.lock().unwrap_or_else(|p| p.into_inner());
    if f.len() > 65536 {
        f.clear();
    }
    f.insert((peer, 58, ident, ident), true);
    Some((local, peer))
}

/// Whether the port has a listening/bound socket of the family (wildcard
/// or one of `addrs_hex`), from `/proc/net/<file>`.
fn bound(file: &str, port: u16, tcp: bool, addrs_hex: &[String]) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/net/{file}")) else {
        return false;
    };
    let port_hex = format!("{port:04X}");
    text.lines().skip(1).any(|l| {
        let mut it = l.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(st)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return false;
        };
        let Some((addr, p)) = local.split_once(':') else {
            return false;
        };
        let state_ok = if tcp { st == "0A" } else { st == "07" };
        state_ok
            && p == port_hex
            && (addr.chars().all(|c| c == '0') || addrs_hex.iter().any(|a| a == addr))
    })
}

fn v4_hex(a: Ipv4Addr) -> String {
    format!("{:08X}", u32::from_le_bytes(a.octets()))
}

fn v6_hex(h: &Hit) -> String {
    h.as_bytes()
        .chunks_exact(4)
        .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// Whether an inbound IPv6 packet (peer → local) is delivered as IPv4.
pub(super) fn deliver_as_v4(pkt: &[u8], dp: &DataPlane, local: Hit, peer: Hit) -> bool {
    let (Some(&llsi), true) = (
        dp.local_hit_lsi.get(&local),
        dp.peer_lsi.contains_key(&peer),
    ) else {
        return false;
    };
    let Some(&proto) = pkt.get(6) else {
        return false;
    };
    if proto == 58 {
        // Echo replies/requests of a ping the host started over LSIs.
        let (Some(&t), Some(i)) = (pkt.get(40), pkt.get(44..46)) else {
            return false;
        };
        let ident = u16::from_be_bytes([i[0], i[1]]);
        return (t == 128 || t == 129)
            && dp
                .lsi_flows
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&(peer, 58, ident, ident));
    }
    if proto != 6 && proto != 17 {
        return false;
    }
    let Some(l4) = pkt.get(40..) else {
        return false;
    };
    let (Some(s), Some(d)) = (l4.get(0..2), l4.get(2..4)) else {
        return false;
    };
    let sport = u16::from_be_bytes([s[0], s[1]]);
    let dport = u16::from_be_bytes([d[0], d[1]]);
    let key = (peer, proto, dport, sport);
    if let Some(&v) = dp
        .lsi_flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return v;
    }
    // A new flow: only a TCP SYN or any UDP datagram decides.
    let syn = proto == 6 && l4.get(13).is_some_and(|f| f & 0x12 == 0x02);
    if proto == 6 && !syn {
        return false;
    }
    let tcp = proto == 6;
    let cached = {
        let pf = dp.port_family.lock().unwrap_or_else(|p| p.into_inner());
        pf.get(&(proto, dport))
            .filter(|(_, at)| at.elapsed() < PORT_DECISION_TTL)
            .map(|(v, _)| *v)
    };
    let v4 = match cached {
        Some(v) => v,
        None => {
            let (f4, f6) = if tcp {
                ("tcp", "tcp6")
            } else {
                ("udp", "udp6")
            };
            let v6 = bound(f6, dport, tcp, &[v6_hex(&local)]);
            let v4 = !v6 && bound(f4, dport, tcp, &[v4_hex(llsi)]);
            let mut pf = dp.port_family.lock().unwrap_or_else(|p| p.into_inner());
            if pf.len() > 4096 {
                pf.clear();
            }
            pf.insert((proto, dport), (v4, Instant::now()));
            v4
        }
    };
    let mut f = dp.lsi_flows.lock().unwrap_or_else(|p| p.into_inner());
    if f.len() > 65536 {
        f.clear();
    }
    f.insert(key, v4);
    v4
}

/// Translates an inbound IPv6 HIT packet into an IPv4 LSI packet.
pub(super) fn v6_to_v4(
    pkt: &[u8],
    dp: &DataPlane,
    local: Hit,
    peer: Hit,
    out: &mut Vec<u8>,
) -> bool {
    let (Some(&llsi), Some(&plsi)) = (dp.local_hit_lsi.get(&local), dp.peer_lsi.get(&peer)) else {
        return false;
    };
    let (Some(&proto6), Some(&hop), Some(payload)) = (pkt.get(6), pkt.get(7), pkt.get(40..)) else {
        return false;
    };
    let proto = if proto6 == 58 { 1 } else { proto6 };
    let Ok(tot) = u16::try_from(payload.len() + 20) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&tot.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, hop, proto, 0, 0]);
    out.extend_from_slice(&plsi.octets());
    out.extend_from_slice(&llsi.octets());
    let hc = !fold(sum16(0, &out[..20]));
    out[10..12].copy_from_slice(&hc.to_be_bytes());
    out.extend_from_slice(payload);
    if proto6 == 58 {
        let p = &mut out[20..];
        match p.first() {
            Some(128) => p[0] = 8,
            Some(129) => p[0] = 0,
            _ => return false,
        }
        if p.len() < 8 {
            return false;
        }
        p[2] = 0;
        p[3] = 0;
        let c = !fold(sum16(0, p));
        p[2..4].copy_from_slice(&c.to_be_bytes());
        return true;
    }
    if let Some(off) = csum_offset(proto, payload.len()) {
        let p = &mut out[20..];
        let old = u16::from_be_bytes([p[off], p[off + 1]]);
        let mut a6 = [0u8; 32];
        a6[..16].copy_from_slice(peer.as_bytes());
        a6[16..].copy_from_slice(local.as_bytes());
        let mut a4 = [0u8; 8];
        a4[..4].copy_from_slice(&plsi.octets());
        a4[4..].copy_from_slice(&llsi.octets());
        let mut c = replace(old, &a6, &a4);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        p[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let ulen = 8 + payload.len();
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&((20 + ulen) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&1234u16.to_be_bytes());
        p.extend_from_slice(&5678u16.to_be_bytes());
        p.extend_from_slice(&(ulen as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        // Full IPv4 UDP checksum.
        let mut acc = sum16(0, &src.octets());
        acc = sum16(acc, &dst.octets());
        acc = sum16(acc, &[0, 17]);
        acc = sum16(acc, &(ulen as u16).to_be_bytes());
        acc = sum16(acc, &p[20..]);
        let c = !fold(acc);
        p[26..28].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn dp() -> (DataPlane, Hit, Hit, Ipv4Addr, Ipv4Addr) {
        let local: Hit = "2001:2a::1".parse().unwrap();
        let peer: Hit = "2001:2a::2".parse().unwrap();
        let ll = Ipv4Addr::new(1, 0, 0, 1);
        let pl = Ipv4Addr::new(1, 0, 1, 1);
        let mut d = DataPlane::default();
        d.local_lsi.insert(ll, local);
        d.local_hit_lsi.insert(local, ll);
        d.lsi_peer.insert(pl, peer);
        d.peer_lsi.insert(peer, pl);
        (d, local, peer, ll, pl)
    }

    #[test]
    fn v4_v6_round_trip_keeps_checksums_valid() {
        let (d, local, peer, ll, pl) = dp();
        let p4 = udp4(ll, pl, b"hello lsi world");
        let mut p6 = Vec::new();
        assert_eq!(v4_to_v6(&p4, &d, &mut p6), Some((local, peer)));
        assert_eq!(p6[0] >> 4, 6);
        assert_eq!(&p6[8..24], local.as_bytes());
        // The IPv6 checksum verifies (sums to 0xffff over pseudo-header + data).
        let mut acc = sum16(0, local.as_bytes());
        acc = sum16(acc, peer.as_bytes());
        acc = sum16(acc, &((p6.len() - 40) as u32).to_be_bytes());
        acc = sum16(acc, &[0, 0, 0, 17]);
        acc = sum16(acc, &p6[40..]);
        assert_eq!(fold(acc), 0xffff);
        // Reverse direction (pretend the packet came from the peer).
        let mut back6 = p6.clone();
        back6[8..24].copy_from_slice(peer.as_bytes());
        back6[24..40].copy_from_slice(local.as_bytes());
        // Reply direction: ports swapped (the checksum sum is unchanged).
        let (sp, dp_) = ([back6[40], back6[41]], [back6[42], back6[43]]);
        back6[40..42].copy_from_slice(&dp_);
        back6[42..44].copy_from_slice(&sp);
        let mut back4 = Vec::new();
        assert!(v6_to_v4(&back6, &d, local, peer, &mut back4));
        assert_eq!(&back4[12..16], &pl.octets());
        assert_eq!(&back4[16..20], &ll.octets());
        assert_eq!(fold(sum16(0, &back4[..20])), 0xffff, "IPv4 header checksum");
        let mut acc = sum16(0, &pl.octets());
        acc = sum16(acc, &ll.octets());
        acc = sum16(acc, &[0, 17]);
        acc = sum16(acc, &((back4.len() - 20) as u16).to_be_bytes());
        acc = sum16(acc, &back4[20..]);
        assert_eq!(fold(acc), 0xffff, "UDP checksum over LSIs");
        // The reply belongs to the LSI flow; an unrelated flow does not.
        assert!(deliver_as_v4(&back6, &d, local, peer));
        let mut other = back6.clone();
        other[42..44].copy_from_slice(&4321u16.to_be_bytes());
        assert!(!deliver_as_v4(&other, &d, local, peer));
    }

    #[test]
    fn ping_over_lsis_is_translated_both_ways() {
        let (d, local, peer, ll, pl) = dp();
        // ICMPv4 echo request, id 0x1234, seq 1, 8 bytes of data.
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
        let c = !fold(sum16(0, &icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut p4 = vec![0x45, 0];
        p4.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
        p4.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
        p4.extend_from_slice(&ll.octets());
        p4.extend_from_slice(&pl.octets());
        p4.extend_from_slice(&icmp);
        let mut p6 = Vec::new();
        assert_eq!(v4_to_v6(&p4, &d, &mut p6), Some((local, peer)));
        assert_eq!((p6[6], p6[40]), (58, 128));
        let mut acc = sum16(0, local.as_bytes());
        acc = sum16(acc, peer.as_bytes());
        acc = sum16(acc, &((p6.len() - 40) as u32).to_be_bytes());
        acc = sum16(acc, &[0, 0, 0, 58]);
        acc = sum16(acc, &p6[40..]);
        assert_eq!(fold(acc), 0xffff, "ICMPv6 checksum");
        // The peer's echo reply comes back as ICMPv4 type 0.
        let mut reply = p6.clone();
        reply[8..24].copy_from_slice(peer.as_bytes());
        reply[24..40].copy_from_slice(local.as_bytes());
        reply[40] = 129;
        assert!(deliver_as_v4(&reply, &d, local, peer));
        let mut back = Vec::new();
        assert!(v6_to_v4(&reply, &d, local, peer, &mut back));
        assert_eq!((back[9], back[20]), (1, 0));
        assert_eq!(fold(sum16(0, &back[20..])), 0xffff, "ICMPv4 checksum");
        assert_eq!(&back[24..], &icmp[4..]);
        // An unrelated echo (other identifier) stays IPv6.
        let mut other = reply.clone();
        other[44] = 0x99;
        assert!(!deliver_as_v4(&other, &d, local, peer));
    }

    #[test]
    fn garbage_is_rejected() {
        let (d, ..) = dp();
        let mut out = Vec::new();
        for n in 0..30 {
            let junk = vec![0x45u8; n];
            assert!(v4_to_v6(&junk, &d, &mut out).is_none());
        }
        let (d, local, peer, ..) = dp();
        assert!(!v6_to_v4(&[0x60; 10], &d, local, peer, &mut out));
        assert!(!deliver_as_v4(&[0x60; 10], &d, local, peer));
    }
}
