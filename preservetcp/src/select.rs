//! Which local prefixes to offer in PREFIX_SYN, and which received prefixes to
//! accept (thesis 5.2.4, 4.3.3, 5.3.8, 8.2).
//!
//! # Offering (thesis 5.2.4)
//! A local address `c` with prefix length `n` is offered for a connection
//! whose local address is `l` when all of these hold:
//! 1. `scope(c) >= scope(l)` (so a global connection never reveals a
//!    site-local or unique-local prefix, thesis 5.3.8);
//! 2. the prefixes differ: the first `n` bits of `c` and `l` are not equal;
//! 3. the host identifiers are equal: the last `128 - n` bits of `c` and `l`
//!    are equal.
//!
//! Additionally (choices this crate makes, not in the thesis): `n` must lie in
//! `Limits::min_prefix_len..=127` (a /128 has no host identifier, so rule 3
//! would be vacuous), loopback, unspecified, multicast and IPv4-mapped
//! addresses are never offered, duplicates (the same network on two
//! interfaces) are offered once, candidates keep the order the caller gives
//! (the caller's preference, e.g. higher capacity first, thesis 4.3.4), and at
//! most `Limits::max_offered` prefixes are offered (and never more than fit in
//! 255 bytes of option data).
//!
//! # Accepting
//! Each received prefix is combined with the peer's interface identifier
//! (taken from the connection's peer address) into a candidate peer address,
//! which is accepted only if: its length lies in
//! `min_prefix_len..=127`; the address is not unspecified, loopback,
//! multicast or IPv4-mapped; its scope is at least that of the connection's
//! peer address (so link-local and site/unique-local alternatives are
//! refused for a global connection); it is not in the connection's own peer
//! prefix; it does not duplicate an earlier accepted prefix; and fewer than
//! `Limits::max_accepted` were accepted before. Every rejection is counted in
//! [`PrefixStats`].
//!
//! Scope order used here: interface-local (loopback) < link-local (fe80::/10)
//! < site-local (fec0::/10, deprecated but still ordered) < unique-local
//! (fc00::/7) < global.

use std::net::Ipv6Addr;

use crate::wire::{MAX_OPTION_DATA, Prefix, PrefixOption, mask};

/// Default upper bound on prefixes offered in one PREFIX_SYN.
pub const DEFAULT_MAX_OFFERED: usize = 8;
/// Default upper bound on prefixes accepted from one PREFIX_SYN/PREFIX_ACK.
pub const DEFAULT_MAX_ACCEPTED: usize = 8;
/// Default shortest prefix length offered or accepted.
pub const DEFAULT_MIN_PREFIX_LEN: u8 = 16;

/// Unicast address scope, ordered from narrowest to widest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Loopback (`::1`).
    InterfaceLocal,
    /// `fe80::/10`.
    LinkLocal,
    /// `fec0::/10` (deprecated by RFC 3879, still ordered).
    SiteLocal,
    /// `fc00::/7` (RFC 4193).
    UniqueLocal,
    /// Everything else that is unicast.
    Global,
}

/// The scope of a unicast address; `None` for addresses in `::/8` other than
/// loopback (unspecified, IPv4-compatible, IPv4-mapped, reserved) and for
/// multicast, which never take part.
pub fn scope_of(addr: Ipv6Addr) -> Option<Scope> {
    let v = u128::from(addr);
    let first = addr.segments()[0];
    if v == 1 {
        return Some(Scope::InterfaceLocal);
    }
    // ::/8 (unspecified, IPv4-compatible, IPv4-mapped, reserved) and ff00::/8.
    if first < 0x0100 || first & 0xff00 == 0xff00 {
        return None;
    }
    Some(if first & 0xffc0 == 0xfe80 {
        Scope::LinkLocal
    } else if first & 0xffc0 == 0xfec0 {
        Scope::SiteLocal
    } else if first & 0xfe00 == 0xfc00 {
        Scope::UniqueLocal
    } else {
        Scope::Global
    })
}

/// One address configured on a local interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalAddress {
    /// The address.
    pub addr: Ipv6Addr,
    /// Its prefix length (on-link prefix from the address configuration).
    pub prefix_len: u8,
}

/// Bounds that protect against oversized offers (thesis 4.3.3 and 8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most prefixes put into one PREFIX_SYN.
    pub max_offered: usize,
    /// Most prefixes accepted from one received option.
    pub max_accepted: usize,
    /// Shortest prefix length offered or accepted.
    pub min_prefix_len: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_offered: DEFAULT_MAX_OFFERED,
            max_accepted: DEFAULT_MAX_ACCEPTED,
            min_prefix_len: DEFAULT_MIN_PREFIX_LEN,
        }
    }
}

impl Limits {
    fn len_ok(&self, len: u8) -> bool {
        len >= self.min_prefix_len.max(1) && len < 128
    }
}

/// The prefixes to offer in PREFIX_SYN for a connection with local address
/// `conn_local`, chosen from `candidates` by the rules in the module docs.
pub fn prefixes_to_offer(
    conn_local: Ipv6Addr,
    candidates: &[LocalAddress],
    limits: &Limits,
) -> Vec<Prefix> {
    let Some(conn_scope) = scope_of(conn_local) else {
        return Vec::new();
    };
    if conn_scope == Scope::InterfaceLocal {
        return Vec::new();
    }
    let l = u128::from(conn_local);
    let mut out: Vec<Prefix> = Vec::new();
    let mut bytes = 0usize;
    for c in candidates {
        if out.len() >= limits.max_offered {
            break;
        }
        if !limits.len_ok(c.prefix_len) {
            continue;
        }
        let Some(s) = scope_of(c.addr) else { continue };
        if s < conn_scope || s == Scope::InterfaceLocal {
            continue;
        }
        let m = mask(c.prefix_len);
        let a = u128::from(c.addr);
        if a & m == l & m || a & !m != l & !m {
            continue;
        }
        let Ok(p) = Prefix::from_addr(c.addr, c.prefix_len) else {
            continue;
        };
        if out.iter().any(|q| q.same_network(&p)) {
            continue;
        }
        if bytes + p.encoded_len() > MAX_OPTION_DATA {
            continue;
        }
        bytes += p.encoded_len();
        out.push(p);
    }
    out
}

/// [`prefixes_to_offer`] packed into the PREFIX_SYN option data.
pub fn offer_option(
    conn_local: Ipv6Addr,
    candidates: &[LocalAddress],
    limits: &Limits,
) -> PrefixOption {
    // prefixes_to_offer keeps the total under 255 bytes.
    PrefixOption::new(prefixes_to_offer(conn_local, candidates, limits)).unwrap_or_default()
}

/// Counters of received prefixes and why they were rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Prefixes looked at.
    pub received: u64,
    /// Prefixes accepted.
    pub accepted: u64,
    /// Rejected: length outside `min_prefix_len..=127`.
    pub rejected_length: u64,
    /// Rejected: unspecified, loopback, multicast or IPv4-mapped result.
    pub rejected_address: u64,
    /// Rejected: scope narrower than the connection's.
    pub rejected_scope: u64,
    /// Rejected: the connection's own prefix.
    pub rejected_own: u64,
    /// Rejected: same network as an earlier accepted prefix.
    pub rejected_duplicate: u64,
    /// Rejected: more than `max_accepted`.
    pub rejected_over_limit: u64,
}

impl PrefixStats {
    /// Total rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected_length
            + self.rejected_address
            + self.rejected_scope
            + self.rejected_own
            + self.rejected_duplicate
            + self.rejected_over_limit
    }

    /// Adds `other`'s counters to these (for per-daemon totals).
    pub fn merge(&mut self, other: &PrefixStats) {
        self.received += other.received;
        self.accepted += other.accepted;
        self.rejected_length += other.rejected_length;
        self.rejected_address += other.rejected_address;
        self.rejected_scope += other.rejected_scope;
        self.rejected_own += other.rejected_own;
        self.rejected_duplicate += other.rejected_duplicate;
        self.rejected_over_limit += other.rejected_over_limit;
    }
}

/// A received prefix that passed validation, with the address it yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptedPrefix {
    /// The prefix as received.
    pub prefix: Prefix,
    /// Prefix + the peer's interface identifier.
    pub addr: Ipv6Addr,
}

/// Result of validating a received prefix option.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Accepted prefixes in the order received (the peer's preference order).
    pub accepted: Vec<AcceptedPrefix>,
    /// Counters.
    pub stats: PrefixStats,
}

impl Validation {
    /// The accepted alternative addresses.
    pub fn addresses(&self) -> Vec<Ipv6Addr> {
        self.accepted.iter().map(|a| a.addr).collect()
    }

    /// The PREFIX_ACK echo of the validated option: the accepted prefixes
    /// only, byte for byte as received (padding bits included) and in the
    /// received order; empty when nothing was accepted. The peer then
    /// believes exactly what we accepted ([`acknowledged_locals`] on its
    /// side intersects its offer with this echo).
    pub fn echo(&self) -> PrefixOption {
        // A subset of a received option always fits in 255 octets.
        PrefixOption::new(self.accepted.iter().map(|a| a.prefix).collect()).unwrap_or_default()
    }
}

/// Validates the prefixes of a PREFIX_SYN received from the peer whose
/// address for the connection is `conn_peer` (rules in the module docs).
pub fn validate_received(conn_peer: Ipv6Addr, opt: &PrefixOption, limits: &Limits) -> Validation {
    let mut v = Validation::default();
    let peer_scope = scope_of(conn_peer);
    for p in opt.prefixes() {
        v.stats.received += 1;
        if !limits.len_ok(p.len_bits()) {
            v.stats.rejected_length += 1;
            continue;
        }
        let addr = p.combine(conn_peer);
        let Some(s) = scope_of(addr).filter(|s| *s != Scope::InterfaceLocal) else {
            v.stats.rejected_address += 1;
            continue;
        };
        if peer_scope.is_none_or(|ps| s < ps) {
            v.stats.rejected_scope += 1;
            continue;
        }
        if p.contains(conn_peer) {
            v.stats.rejected_own += 1;
            continue;
        }
        if v.accepted
            .iter()
            .any(|a| a.prefix.same_network(p) || a.addr == addr)
        {
            v.stats.rejected_duplicate += 1;
            continue;
        }
        if v.accepted.len() >= limits.max_accepted {
            v.stats.rejected_over_limit += 1;
            continue;
        }
        v.stats.accepted += 1;
        v.accepted.push(AcceptedPrefix { prefix: *p, addr });
    }
    v
}

/// The local alternative addresses the peer acknowledged: the prefixes that
/// are both in the PREFIX_SYN we `sent` and in the PREFIX_ACK echo `ack`
/// (compared byte for byte), combined with `conn_local`'s interface
/// identifier. A tampered or partial echo can therefore only shrink the set.
pub fn acknowledged_locals(
    conn_local: Ipv6Addr,
    sent: &PrefixOption,
    ack: &PrefixOption,
) -> Vec<Ipv6Addr> {
    let mut out: Vec<Ipv6Addr> = Vec::new();
    for p in sent.prefixes() {
        if ack.prefixes().contains(p) {
            let addr = p.combine(conn_local);
            if !out.contains(&addr) && addr != conn_local {
                out.push(addr);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    fn la(s: &str, n: u8) -> LocalAddress {
        LocalAddress {
            addr: a(s),
            prefix_len: n,
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(scope_of(a("::")), None);
        assert_eq!(scope_of(a("ff02::1")), None);
        assert_eq!(scope_of(a("::ffff:10.0.0.1")), None);
        assert_eq!(scope_of(a("::10.0.0.1")), None);
        assert_eq!(scope_of(a("::1")), Some(Scope::InterfaceLocal));
        assert_eq!(scope_of(a("fe80::1")), Some(Scope::LinkLocal));
        assert_eq!(scope_of(a("febf::1")), Some(Scope::LinkLocal));
        assert_eq!(scope_of(a("fec0::1")), Some(Scope::SiteLocal));
        assert_eq!(scope_of(a("fd00::1")), Some(Scope::UniqueLocal));
        assert_eq!(scope_of(a("fc00::1")), Some(Scope::UniqueLocal));
        assert_eq!(scope_of(a("2001:db8::1")), Some(Scope::Global));
        assert!(Scope::LinkLocal < Scope::UniqueLocal && Scope::UniqueLocal < Scope::Global);
    }

    #[test]
    fn thesis_demo_offer() {
        // Client of section 6.3: two networks, same host identifier.
        let conn = a("3ffe:2a00:100:3100::f00d:cafe");
        let cands = [
            la("3ffe:2a00:100:3100::f00d:cafe", 64),
            la("3ffe:2a00:100:3200::f00d:cafe", 64),
            la("fe80::f00d:cafe", 64),
        ];
        let p = prefixes_to_offer(conn, &cands, &Limits::default());
        assert_eq!(p.len(), 1);
        assert_eq!(
            p[0].to_network(),
            (a("3ffe:2a00:100:3200::"), 64),
            "only the other global prefix"
        );
    }

    #[test]
    fn offer_rules_scope_iid_prefix() {
        let conn = a("2001:db8:1::1:2:3:4");
        let cands = [
            la("2001:db8:2::1:2:3:4", 64),  // offered
            la("2001:db8:3::9:9:9:9", 64),  // other host identifier
            la("2001:db8:1::5", 64),        // same prefix
            la("fd00:1::1:2:3:4", 64),      // narrower scope than global
            la("fe80::1:2:3:4", 64),        // link-local
            la("2001:db8:4::1:2:3:4", 128), // /128 has no host identifier
            la("2001:db8:5::1:2:3:4", 8),   // too short
            la("2001:db8:2::1:2:3:4", 64),  // duplicate network
            la("2001:db9::1:2:3:4", 48),    // offered, /48
        ];
        let p = prefixes_to_offer(conn, &cands, &Limits::default());
        let nets: Vec<_> = p.iter().map(Prefix::to_network).collect();
        assert_eq!(nets, vec![(a("2001:db8:2::"), 64), (a("2001:db9::"), 48)]);
        // A unique-local connection may offer global and unique-local prefixes.
        let conn = a("fd00:1::1:2:3:4");
        let cands = [
            la("fd00:2::1:2:3:4", 64),
            la("2001:db8:2::1:2:3:4", 64),
            la("fe80::1:2:3:4", 64),
        ];
        assert_eq!(prefixes_to_offer(conn, &cands, &Limits::default()).len(), 2);
        // Loopback connections offer nothing.
        assert!(prefixes_to_offer(a("::1"), &cands, &Limits::default()).is_empty());
    }

    #[test]
    fn offer_limit() {
        let conn = a("2001:db8::1");
        let cands: Vec<_> = (1..=40u16)
            .map(|i| LocalAddress {
                addr: Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 1),
                prefix_len: 64,
            })
            .collect();
        assert_eq!(prefixes_to_offer(conn, &cands, &Limits::default()).len(), 8);
        let big = Limits {
            max_offered: 100,
            ..Limits::default()
        };
        // 255 bytes / 9 bytes per /64 = 28.
        let o = offer_option(conn, &cands, &big);
        assert_eq!(o.prefixes().len(), 28);
        assert!(o.data_len() <= 255);
    }

    #[test]
    fn validate_counts_rejections() {
        let peer = a("2001:db8:1::dead:beef");
        let mk = |s: &str, n| Prefix::from_addr(a(s), n).unwrap();
        let opt = PrefixOption::new(vec![
            mk("2001:db8:2::", 64),  // ok
            mk("2001:db8:1::", 64),  // own
            mk("fe80::", 64),        // link-local for a global connection
            mk("fd00::", 64),        // ULA for a global connection
            mk("ff02::", 64),        // multicast
            mk("::", 64),            // -> ::dead:beef, in reserved ::/8
            mk("2001:db8:2::", 64),  // duplicate
            mk("2001:db8::", 0),     // bad length
            mk("2001:db8:3::", 128), // bad length
            mk("2001:db8:3::", 64),  // ok
        ])
        .unwrap();
        let v = validate_received(peer, &opt, &Limits::default());
        assert_eq!(
            v.addresses(),
            vec![a("2001:db8:2::dead:beef"), a("2001:db8:3::dead:beef")]
        );
        let s = v.stats;
        assert_eq!(s.received, 10);
        assert_eq!(s.accepted, 2);
        assert_eq!(s.rejected_own, 1);
        assert_eq!(s.rejected_scope, 2);
        assert_eq!(s.rejected_address, 2);
        assert_eq!(s.rejected_duplicate, 1);
        assert_eq!(s.rejected_length, 2);
        assert_eq!(s.rejected() + s.accepted, s.received);
    }

    /// The echo holds the accepted prefixes only, verbatim (padding bits
    /// from the sender's identifier included), in the received order.
    #[test]
    fn echo_is_the_accepted_subset_verbatim() {
        let peer = a("2001:db8:1::dead:beef");
        let mk = |s: &str, n| Prefix::from_addr(a(s), n).unwrap();
        let odd = mk("2001:db8:3fff::", 47); // padding bit set
        let opt = PrefixOption::new(vec![
            mk("fe80::", 64),
            mk("2001:db8:2::", 64),
            mk("2001:db8:1::", 64),
            odd,
            mk("2001:db8:2::", 64),
        ])
        .unwrap();
        let v = validate_received(peer, &opt, &Limits::default());
        let echo = v.echo();
        assert_eq!(echo.prefixes(), &[mk("2001:db8:2::", 64), odd]);
        assert_eq!(echo.prefixes()[1].wire_bytes(), odd.wire_bytes());
        // Re-validating the echo accepts all of it: the same addresses.
        let again = validate_received(peer, &echo, &Limits::default());
        assert_eq!(again.addresses(), v.addresses());
        assert_eq!(again.stats.rejected(), 0);
        // Nothing acceptable: an empty echo.
        let none = PrefixOption::new(vec![mk("fd00::", 64)]).unwrap();
        let v = validate_received(peer, &none, &Limits::default());
        assert!(v.echo().prefixes().is_empty());
    }

    /// The tc BPF program validates received prefixes itself (the echo it
    /// builds in the kernel): its limits are these defaults.
    #[test]
    fn bpf_program_uses_the_default_limits() {
        let src = include_str!("../bpf/ptcp.bpf.c");
        let l = Limits::default();
        assert!(src.contains(&format!("#define MAX_ACCEPTED {}\n", l.max_accepted)));
        assert!(src.contains(&format!("#define MIN_PREFIX_LEN {}\n", l.min_prefix_len)));
    }

    #[test]
    fn validate_limit_and_merge() {
        let peer = a("2001:db8::1");
        let prefixes: Vec<_> = (1..=20u16)
            .map(|i| Prefix::from_addr(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0), 64).unwrap())
            .collect();
        let v = validate_received(
            peer,
            &PrefixOption::new(prefixes).unwrap(),
            &Limits::default(),
        );
        assert_eq!(v.accepted.len(), 8);
        assert_eq!(v.stats.rejected_over_limit, 12);
        let mut total = PrefixStats::default();
        total.merge(&v.stats);
        total.merge(&v.stats);
        assert_eq!(total.rejected(), 24);
        assert_eq!(total.received, 40);
    }

    #[test]
    fn ula_connection_accepts_global() {
        let peer = a("fd00:1::9");
        let opt = PrefixOption::new(vec![
            Prefix::from_addr(a("2001:db8::"), 64).unwrap(),
            Prefix::from_addr(a("fe80::"), 64).unwrap(),
        ])
        .unwrap();
        let v = validate_received(peer, &opt, &Limits::default());
        assert_eq!(v.addresses(), vec![a("2001:db8::9")]);
        assert_eq!(v.stats.rejected_scope, 1);
    }

    #[test]
    fn acknowledged_is_intersection() {
        let local = a("2001:db8:1::c");
        let p2 = Prefix::from_addr(a("2001:db8:2::c"), 64).unwrap();
        let p3 = Prefix::from_addr(a("2001:db8:3::c"), 64).unwrap();
        let p9 = Prefix::from_addr(a("2001:db8:9::c"), 64).unwrap();
        let sent = PrefixOption::new(vec![p2, p3]).unwrap();
        let ack = PrefixOption::new(vec![p3, p9]).unwrap();
        assert_eq!(
            acknowledged_locals(local, &sent, &ack),
            vec![a("2001:db8:3::c")]
        );
        assert_eq!(
            acknowledged_locals(local, &sent, &sent),
            vec![a("2001:db8:2::c"), a("2001:db8:3::c")]
        );
    }
}
