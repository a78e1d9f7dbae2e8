//! RFC 6724 default address selection and path-candidate pairing.
//!
//! The pure part works on explicit inputs and is unit-tested with every
//! example of RFC 6724 §10.1 and §10.2:
//!
//! * [`scope_of`], [`PolicyTable`] (default table of RFC 6724 §2.1),
//!   [`common_prefix_len`];
//! * [`AddrSelector::compare_sources`] — source rules 1–8 (§5);
//! * [`AddrSelector::sort_destinations`] — destination rules 1–10 (§6);
//! * [`AddrSelector::path_candidates`] — every destination × every suitable
//!   source, ordered by destination preference then source preference, then
//!   families interleaved as in RFC 8305 §4.
//!
//! The IO part gathers inputs from the kernel: [`local_addresses`]
//! (getifaddrs plus `/proc/thread-self/net/if_inet6` flags), [`route_interfaces`] (which
//! interface the kernel would use, for source rule 5) and [`plan_paths`]
//! (everything together; [`plan_paths_cached`] reuses a plan for one second,
//! which is what `NameStream::connect` uses).
//!
//! # Choices the standards leave open (stable)
//!
//! * IPv4 addresses are looked up in the policy table as IPv4-mapped IPv6
//!   addresses (§2.1). IPv4 scope (§3.2): 127/8 and 169.254/16 are
//!   link-local, everything else global. IPv6 loopback is link-local (§3.1).
//! * Source rule 5.5 (next-hop advertised prefix) and destination rule 7
//!   (native transport) are not implemented: there is no portable way to know
//!   them; those rules always tie.
//! * Source rule 7 prefers temporary addresses (RFC default);
//!   [`AddrSelector::prefer_temporary`] turns it around.
//! * Destination rule 9 (longest matching prefix) is applied to both IPv6 and
//!   IPv4 pairs of the same family.
//! * `CommonPrefixLen(S, D)` is capped at S's prefix length (§2.2); IPv4 is
//!   compared in the mapped form (96 + IPv4 prefix length).
//! * Pairing ("suitable source"): same family; source not tentative; scope of
//!   the source ≥ scope of the destination (a link-local source cannot reach
//!   a global destination); loopback destinations are paired only with
//!   loopback sources and loopback sources only with loopback destinations;
//!   an IPv6 link-local destination with a zone is paired only with sources
//!   on that interface, one without a zone gets the source's interface as its
//!   zone. A destination without any suitable source still yields one
//!   candidate with `src: None` (the kernel picks), ranked by destination
//!   rule 1 (last).
//! * Family interleaving: after sorting, candidates alternate between
//!   families, starting with the family of the best candidate and taking
//!   `first_family_count` (default 1, RFC 8305 §4) of it first.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// RFC 4291 / RFC 6724 scope values.
pub mod scope {
    /// Interface-local.
    pub const INTERFACE_LOCAL: u8 = 0x1;
    /// Link-local.
    pub const LINK_LOCAL: u8 = 0x2;
    /// Admin-local.
    pub const ADMIN_LOCAL: u8 = 0x4;
    /// Site-local.
    pub const SITE_LOCAL: u8 = 0x5;
    /// Organization-local.
    pub const ORG_LOCAL: u8 = 0x8;
    /// Global.
    pub const GLOBAL: u8 = 0xe;
}

/// Address as IPv6 (IPv4 as IPv4-mapped).
fn as_v6(ip: &IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => *v6,
    }
}

fn v4_scope(v4: &Ipv4Addr) -> u8 {
    if v4.is_loopback() || v4.is_link_local() {
        scope::LINK_LOCAL
    } else {
        scope::GLOBAL
    }
}

/// Scope of an address (RFC 6724 §3.1, §3.2).
pub fn scope_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => v4_scope(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_scope(&v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_multicast() {
                // The low nibble of the second byte.
                return (seg0 & 0x000f) as u8;
            }
            if v6.is_loopback() || (seg0 & 0xffc0) == 0xfe80 {
                scope::LINK_LOCAL
            } else if (seg0 & 0xffc0) == 0xfec0 {
                scope::SITE_LOCAL
            } else {
                scope::GLOBAL
            }
        }
    }
}

/// Number of leading bits `a` and `b` have in common (0–128).
fn leading_common_bits(a: &Ipv6Addr, b: &Ipv6Addr) -> u8 {
    let x = a.to_bits() ^ b.to_bits();
    // leading_zeros of u128 is at most 128, fits in u8.
    x.leading_zeros() as u8
}

/// `CommonPrefixLen(S, D)` of RFC 6724 §2.2: leading bits in common, at most
/// `src_prefix_len` (IPv4 prefix lengths are counted in the mapped form).
/// Returns 0 for different families.
pub fn common_prefix_len(src: &IpAddr, src_prefix_len: u8, dst: &IpAddr) -> u8 {
    if src.is_ipv4() != dst.is_ipv4() {
        return 0;
    }
    let cap = if src.is_ipv4() {
        src_prefix_len.min(32).saturating_add(96)
    } else {
        src_prefix_len.min(128)
    };
    leading_common_bits(&as_v6(src), &as_v6(dst)).min(cap)
}

/// One row of the policy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyEntry {
    /// Prefix (IPv6 form).
    pub prefix: Ipv6Addr,
    /// Prefix length.
    pub len: u8,
    /// Precedence.
    pub precedence: u8,
    /// Label.
    pub label: u8,
}

/// Policy table; `Default` is the table of RFC 6724 §2.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    entries: Vec<PolicyEntry>,
}

const fn pe(prefix: Ipv6Addr, len: u8, precedence: u8, label: u8) -> PolicyEntry {
    PolicyEntry {
        prefix,
        len,
        precedence,
        label,
    }
}

impl Default for PolicyTable {
    fn default() -> Self {
        Self {
            entries: vec![
                pe(Ipv6Addr::LOCALHOST, 128, 50, 0),
                pe(Ipv6Addr::UNSPECIFIED, 0, 40, 1),
                pe(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, 35, 4),
                pe(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, 30, 2),
                pe(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, 5, 5),
                pe(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, 3, 13),
                pe(Ipv6Addr::UNSPECIFIED, 96, 1, 3),
                pe(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, 1, 11),
                pe(Ipv6Addr::new(0x3ffe, 0, 0, 0, 0, 0, 0, 0), 16, 1, 12),
            ],
        }
    }
}

impl PolicyTable {
    /// A custom table.
    pub fn new(entries: Vec<PolicyEntry>) -> Self {
        Self { entries }
    }

    /// The rows.
    pub fn entries(&self) -> &[PolicyEntry] {
        &self.entries
    }

    /// Longest-prefix match; an address matching no row gets precedence and
    /// label 0... except that the default table has `::/0`, so it never
    /// happens with it.
    pub fn lookup(&self, ip: &IpAddr) -> (u8, u8) {
        let a = as_v6(ip);
        let mut best: Option<&PolicyEntry> = None;
        for e in &self.entries {
            let len = e.len.min(128);
            if leading_common_bits(&a, &e.prefix) >= len && best.is_none_or(|b| len > b.len) {
                best = Some(e);
            }
        }
        best.map_or((0, 0), |e| (e.precedence, e.label))
    }

    /// Precedence of `ip`.
    pub fn precedence(&self, ip: &IpAddr) -> u8 {
        self.lookup(ip).0
    }

    /// Label of `ip`.
    pub fn label(&self, ip: &IpAddr) -> u8 {
        self.lookup(ip).1
    }
}

/// A local (candidate source) address with the attributes the rules use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    /// The address.
    pub addr: IpAddr,
    /// On-link prefix length (64 is the usual IPv6 value).
    pub prefix_len: u8,
    /// Interface index (0 if unknown).
    pub ifindex: u32,
    /// Interface name (may be empty).
    pub ifname: String,
    /// Preferred lifetime expired (rule 3).
    pub deprecated: bool,
    /// Temporary (privacy) address (rule 7).
    pub temporary: bool,
    /// Mobile IPv6 home address (rule 4).
    pub home: bool,
    /// Mobile IPv6 care-of address (rule 4).
    pub care_of: bool,
    /// Duplicate address detection not finished (never used as a source).
    pub tentative: bool,
}

impl LocalAddr {
    /// A plain address with no special attributes.
    pub fn new(addr: IpAddr, prefix_len: u8, ifindex: u32) -> Self {
        Self {
            addr: addr.to_canonical(),
            prefix_len,
            ifindex,
            ifname: String::new(),
            deprecated: false,
            temporary: false,
            home: false,
            care_of: false,
            tentative: false,
        }
    }

    /// Mark deprecated.
    pub fn deprecated(mut self) -> Self {
        self.deprecated = true;
        self
    }

    /// Mark temporary.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Mark as home address.
    pub fn home(mut self) -> Self {
        self.home = true;
        self
    }

    /// Mark as care-of address.
    pub fn care_of(mut self) -> Self {
        self.care_of = true;
        self
    }
}

/// One (source, destination) path to try.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathCandidate {
    /// Local address to bind (`None`: let the kernel choose).
    pub src: Option<IpAddr>,
    /// Destination (IPv6 zone in the scope id where needed).
    pub dst: SocketAddr,
    /// Interface of the source address, if known.
    pub ifindex: Option<u32>,
}

impl PathCandidate {
    /// Address to `bind(2)` before connecting (port 0), with the scope id set
    /// for IPv6 link-local sources. `None` when `src` is `None`.
    pub fn bind_addr(&self) -> Option<SocketAddr> {
        let src = self.src?;
        Some(match src {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), 0),
            IpAddr::V6(v6) => {
                let scope = if scope_of(&src) <= scope::LINK_LOCAL && !v6.is_loopback() {
                    self.ifindex.unwrap_or(0)
                } else {
                    0
                };
                SocketAddr::V6(SocketAddrV6::new(v6, 0, 0, scope))
            }
        })
    }

    /// `true` for IPv4 destinations.
    pub fn is_ipv4(&self) -> bool {
        self.dst.is_ipv4()
    }
}

/// Options of [`AddrSelector::path_candidates`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingOptions {
    /// RFC 8305 "First Address Family Count" (default 1; 0 disables
    /// interleaving).
    pub first_family_count: usize,
    /// Emit a `src: None` candidate for destinations with no suitable source
    /// (default true).
    pub include_unbound: bool,
}

impl Default for PairingOptions {
    fn default() -> Self {
        Self {
            first_family_count: 1,
            include_unbound: true,
        }
    }
}

/// RFC 6724 selection context: policy table and rule-7 preference.
#[derive(Debug, Clone)]
pub struct AddrSelector {
    /// Policy table.
    pub policy: PolicyTable,
    /// Source rule 7: prefer temporary addresses (RFC default `true`).
    pub prefer_temporary: bool,
}

impl Default for AddrSelector {
    fn default() -> Self {
        Self {
            policy: PolicyTable::default(),
            prefer_temporary: true,
        }
    }
}

fn prefer(a: bool, b: bool) -> Ordering {
    // `Less` means "a is preferred".
    match (a, b) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// Rule 4 of both algorithms: home-and-care-of beats the rest, home-only
/// beats care-of-only.
fn home_rule(a: &LocalAddr, b: &LocalAddr) -> Ordering {
    let both_a = a.home && a.care_of;
    let both_b = b.home && b.care_of;
    let o = prefer(both_a, both_b);
    if o != Ordering::Equal {
        return o;
    }
    let home_only_a = a.home && !a.care_of;
    let home_only_b = b.home && !b.care_of;
    let coa_only_a = a.care_of && !a.home;
    let coa_only_b = b.care_of && !b.home;
    if home_only_a && coa_only_b {
        Ordering::Less
    } else if home_only_b && coa_only_a {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn same_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn dst_zone(dst: &SocketAddr) -> u32 {
    match dst {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    }
}

fn canonical_dst(dst: &SocketAddr) -> SocketAddr {
    match dst {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => *dst,
        },
        SocketAddr::V4(_) => *dst,
    }
}

fn is_loopback(ip: &IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl AddrSelector {
    /// Compare two candidate sources for destination `dst` (RFC 6724 §5,
    /// rules 1–8). `Less` means `a` is preferred. `outgoing_ifindex` is the
    /// interface the route to `dst` uses, if known (rule 5).
    pub fn compare_sources(
        &self,
        dst: &IpAddr,
        a: &LocalAddr,
        b: &LocalAddr,
        outgoing_ifindex: Option<u32>,
    ) -> Ordering {
        let d = dst.to_canonical();
        // Rule 1: prefer same address.
        let o = prefer(a.addr == d, b.addr == d);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 2: prefer appropriate scope.
        let (sa, sb, sd) = (scope_of(&a.addr), scope_of(&b.addr), scope_of(&d));
        if sa < sb {
            return if sa < sd {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        if sb < sa {
            return if sb < sd {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        // Rule 3: avoid deprecated addresses.
        let o = prefer(!a.deprecated, !b.deprecated);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 4: prefer home addresses.
        let o = home_rule(a, b);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 5: prefer outgoing interface.
        if let Some(ifx) = outgoing_ifindex {
            let o = prefer(a.ifindex == ifx, b.ifindex == ifx);
            if o != Ordering::Equal {
                return o;
            }
        }
        // Rule 5.5: not implemented (no next-hop information).
        // Rule 6: prefer matching label.
        let ld = self.policy.label(&d);
        let o = prefer(
            self.policy.label(&a.addr) == ld,
            self.policy.label(&b.addr) == ld,
        );
        if o != Ordering::Equal {
            return o;
        }
        // Rule 7: prefer temporary addresses (or public ones if configured).
        let o = if self.prefer_temporary {
            prefer(a.temporary, b.temporary)
        } else {
            prefer(!a.temporary, !b.temporary)
        };
        if o != Ordering::Equal {
            return o;
        }
        // Rule 8: longest matching prefix.
        let ca = common_prefix_len(&a.addr, a.prefix_len, &d);
        let cb = common_prefix_len(&b.addr, b.prefix_len, &d);
        cb.cmp(&ca)
    }

    /// Best source for `dst` among `candidates` (same family only, tentative
    /// addresses excluded). This is `Source(D)` of RFC 6724 §6.
    pub fn select_source<'a>(
        &self,
        dst: &IpAddr,
        candidates: &'a [LocalAddr],
        outgoing_ifindex: Option<u32>,
    ) -> Option<&'a LocalAddr> {
        let d = dst.to_canonical();
        candidates
            .iter()
            .filter(|c| !c.tentative && same_family(&c.addr, &d))
            .min_by(|a, b| self.compare_sources(&d, a, b, outgoing_ifindex))
    }

    /// Compare two destinations given their chosen sources (RFC 6724 §6,
    /// rules 1–9; rule 10 is the stable sort). `Less` means `da` first.
    pub fn compare_destinations(
        &self,
        da: &IpAddr,
        src_a: Option<&LocalAddr>,
        db: &IpAddr,
        src_b: Option<&LocalAddr>,
    ) -> Ordering {
        let (da, db) = (da.to_canonical(), db.to_canonical());
        // Rule 1: avoid unusable destinations.
        let (sa, sb) = match (src_a, src_b) {
            (Some(a), Some(b)) => (a, b),
            (Some(_), None) => return Ordering::Less,
            (None, Some(_)) => return Ordering::Greater,
            (None, None) => return Ordering::Equal,
        };
        // Rule 2: prefer matching scope.
        let (scope_da, scope_db) = (scope_of(&da), scope_of(&db));
        let o = prefer(
            scope_da == scope_of(&sa.addr),
            scope_db == scope_of(&sb.addr),
        );
        if o != Ordering::Equal {
            return o;
        }
        // Rule 3: avoid deprecated addresses.
        let o = prefer(!sa.deprecated, !sb.deprecated);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 4: prefer home addresses.
        let o = home_rule(sa, sb);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 5: prefer matching label.
        let o = prefer(
            self.policy.label(&sa.addr) == self.policy.label(&da),
            self.policy.label(&sb.addr) == self.policy.label(&db),
        );
        if o != Ordering::Equal {
            return o;
        }
        // Rule 6: prefer higher precedence.
        let o = self
            .policy
            .precedence(&db)
            .cmp(&self.policy.precedence(&da));
        if o != Ordering::Equal {
            return o;
        }
        // Rule 7: prefer native transport — not known, tie.
        // Rule 8: prefer smaller scope.
        let o = scope_da.cmp(&scope_db);
        if o != Ordering::Equal {
            return o;
        }
        // Rule 9: longest matching prefix (same family only).
        if same_family(&da, &db) {
            let ca = common_prefix_len(&sa.addr, sa.prefix_len, &da);
            let cb = common_prefix_len(&sb.addr, sb.prefix_len, &db);
            let o = cb.cmp(&ca);
            if o != Ordering::Equal {
                return o;
            }
        }
        // Rule 10: leave the order unchanged.
        Ordering::Equal
    }

    /// Sort destination addresses (RFC 6724 §6) given the local addresses.
    /// Stable: equal destinations keep their input order (rule 10).
    pub fn sort_destinations(&self, dsts: &[IpAddr], locals: &[LocalAddr]) -> Vec<IpAddr> {
        let mut with_src: Vec<(IpAddr, Option<&LocalAddr>)> = dsts
            .iter()
            .map(|d| (d.to_canonical(), self.select_source(d, locals, None)))
            .collect();
        with_src.sort_by(|(da, sa), (db, sb)| self.compare_destinations(da, *sa, db, *sb));
        with_src.into_iter().map(|(d, _)| d).collect()
    }

    /// Is `src` a suitable source for `dst` (see module docs, "Pairing")?
    pub fn source_suits(&self, src: &LocalAddr, dst: &SocketAddr) -> bool {
        let d = dst.ip().to_canonical();
        if src.tentative || !same_family(&src.addr, &d) {
            return false;
        }
        if is_loopback(&d) != is_loopback(&src.addr) {
            return false;
        }
        if scope_of(&src.addr) < scope_of(&d) {
            return false;
        }
        if let IpAddr::V6(v6) = d
            && crate::resolve::is_v6_link_local(&v6)
        {
            let zone = dst_zone(dst);
            if zone != 0 && src.ifindex != zone {
                return false;
            }
        }
        true
    }

    /// All (source, destination) pairs, best first: destinations in RFC 6724
    /// order, for each its suitable sources in RFC 6724 source order, then
    /// families interleaved (RFC 8305). `routes` maps a destination IP to the
    /// interface the kernel routes it through (source rule 5); it may be
    /// empty. Duplicate destinations are dropped.
    pub fn path_candidates(
        &self,
        dsts: &[SocketAddr],
        locals: &[LocalAddr],
        routes: &HashMap<IpAddr, u32>,
        opts: &PairingOptions,
    ) -> Vec<PathCandidate> {
        let mut uniq: Vec<SocketAddr> = Vec::new();
        for d in dsts {
            let d = canonical_dst(d);
            if !uniq.contains(&d) {
                uniq.push(d);
            }
        }
        // Per destination: suitable sources, sorted.
        let mut rows: Vec<(SocketAddr, Vec<&LocalAddr>)> = uniq
            .into_iter()
            .map(|d| {
                let dip = d.ip();
                let out_if = routes.get(&dip).copied();
                let mut srcs: Vec<&LocalAddr> =
                    locals.iter().filter(|s| self.source_suits(s, &d)).collect();
                srcs.sort_by(|a, b| self.compare_sources(&dip, a, b, out_if));
                let mut seen = std::collections::HashSet::new();
                srcs.retain(|s| seen.insert((s.addr, s.ifindex)));
                (d, srcs)
            })
            .collect();
        rows.sort_by(|(da, sa), (db, sb)| {
            self.compare_destinations(&da.ip(), sa.first().copied(), &db.ip(), sb.first().copied())
        });
        let mut flat = Vec::new();
        for (d, srcs) in rows {
            if srcs.is_empty() {
                if opts.include_unbound {
                    flat.push(PathCandidate {
                        src: None,
                        dst: d,
                        ifindex: None,
                    });
                }
                continue;
            }
            for s in srcs {
                let mut dst = d;
                if let SocketAddr::V6(v6) = &mut dst
                    && crate::resolve::is_v6_link_local(v6.ip())
                    && v6.scope_id() == 0
                {
                    v6.set_scope_id(s.ifindex);
                }
                flat.push(PathCandidate {
                    src: Some(s.addr),
                    dst,
                    ifindex: (s.ifindex != 0).then_some(s.ifindex),
                });
            }
        }
        interleave_families(flat, opts.first_family_count)
    }
}

/// RFC 8305 §4 interleaving: starting with the family of the first
/// candidate, take `first_family_count` of it, then alternate one of each
/// family; relative order within a family is kept. `first_family_count == 0`
/// returns the input unchanged.
pub fn interleave_families(
    list: Vec<PathCandidate>,
    first_family_count: usize,
) -> Vec<PathCandidate> {
    let Some(first) = list.first() else {
        return list;
    };
    if first_family_count == 0 {
        return list;
    }
    let first_is_v4 = first.is_ipv4();
    let (primary, secondary): (Vec<_>, Vec<_>) =
        list.into_iter().partition(|c| c.is_ipv4() == first_is_v4);
    let mut out = Vec::with_capacity(primary.len() + secondary.len());
    let mut p = primary.into_iter().peekable();
    let mut s = secondary.into_iter().peekable();
    for _ in 0..first_family_count {
        match p.next() {
            Some(c) => out.push(c),
            None => break,
        }
    }
    loop {
        let mut progressed = false;
        if let Some(c) = s.next() {
            out.push(c);
            progressed = true;
        }
        if let Some(c) = p.next() {
            out.push(c);
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// IO: gathering inputs from the kernel
// ---------------------------------------------------------------------------

/// `IFA_F_*` flags as printed in `/proc/net/if_inet6`.
const IFA_F_TEMPORARY: u32 = 0x01;
const IFA_F_OPTIMISTIC: u32 = 0x04;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_HOMEADDRESS: u32 = 0x10;
const IFA_F_DEPRECATED: u32 = 0x20;
const IFA_F_TENTATIVE: u32 = 0x40;

/// One line of `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfInet6 {
    /// Address.
    pub addr: Ipv6Addr,
    /// Interface index.
    pub ifindex: u32,
    /// Prefix length.
    pub prefix_len: u8,
    /// Kernel scope value (informational).
    pub scope: u32,
    /// `IFA_F_*` flags.
    pub flags: u32,
    /// Interface name.
    pub ifname: String,
}

/// Parse `/proc/net/if_inet6` text; malformed lines are skipped.
pub fn parse_if_inet6(text: &str) -> Vec<IfInet6> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let [hex, idx, plen, scope, flags, name] = f.as_slice() else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let (Ok(ifindex), Ok(prefix_len), Ok(scope), Ok(flags)) = (
            u32::from_str_radix(idx, 16),
            u8::from_str_radix(plen, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        out.push(IfInet6 {
            addr: Ipv6Addr::from_bits(bits),
            ifindex,
            prefix_len: prefix_len.min(128),
            scope,
            flags,
            ifname: (*name).to_string(),
        });
    }
    out
}

impl From<&IfInet6> for LocalAddr {
    fn from(e: &IfInet6) -> Self {
        let mut l = LocalAddr::new(IpAddr::V6(e.addr), e.prefix_len, e.ifindex);
        l.ifname = e.ifname.clone();
        l.temporary = e.flags & IFA_F_TEMPORARY != 0;
        l.deprecated = e.flags & IFA_F_DEPRECATED != 0;
        l.home = e.flags & IFA_F_HOMEADDRESS != 0;
        l.tentative = e.flags & IFA_F_DADFAILED != 0
            || (e.flags & IFA_F_TENTATIVE != 0 && e.flags & IFA_F_OPTIMISTIC == 0);
        l
    }
}

fn mask_len(bytes: &[u8]) -> u8 {
    // At most 16 bytes of 8 ones each: 128 fits in u8.
    bytes.iter().map(|b| b.count_ones()).sum::<u32>().min(128) as u8
}

/// Local addresses of interfaces that are up: IPv4 from `getifaddrs`, IPv6
/// from `/proc/net/if_inet6` (with temporary/deprecated/tentative flags;
/// tentative and DAD-failed addresses are dropped), falling back to
/// `getifaddrs` for IPv6 when `/proc` is unavailable.
pub fn local_addresses() -> io::Result<Vec<LocalAddr>> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<LocalAddr> = Vec::new();
    let mut up: HashMap<String, u32> = HashMap::new();
    let mut v6_from_ifaddrs: Vec<LocalAddr> = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let index = match up.get(&ifa.interface_name) {
            Some(i) => *i,
            None => {
                let i = nix::net::if_::if_nametoindex(ifa.interface_name.as_str()).unwrap_or(0);
                up.insert(ifa.interface_name.clone(), i);
                i
            }
        };
        let Some(addr) = ifa.address.as_ref() else {
            continue;
        };
        if let Some(sin) = addr.as_sockaddr_in() {
            let plen = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map_or(32, |m| mask_len(&m.ip().octets()));
            let mut l = LocalAddr::new(IpAddr::V4(sin.ip()), plen, index);
            l.ifname = ifa.interface_name.clone();
            out.push(l);
        } else if let Some(sin6) = addr.as_sockaddr_in6() {
            let plen = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map_or(128, |m| mask_len(&m.ip().octets()));
            let mut l = LocalAddr::new(IpAddr::V6(sin6.ip()), plen, index);
            l.ifname = ifa.interface_name.clone();
            v6_from_ifaddrs.push(l);
        }
    }
    // `/proc/net` shows the namespace of the process's main thread; a thread
    // that entered another network namespace (setns) must read its own view
    // through `/proc/thread-self/net`. Entries are cross-checked against
    // getifaddrs, which always answers for the calling thread's namespace.
    let text = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .or_else(|_| std::fs::read_to_string("/proc/net/if_inet6"));
    match text {
        Ok(text) => {
            for e in parse_if_inet6(&text) {
                if !up.contains_key(&e.ifname) {
                    continue;
                }
                let l = LocalAddr::from(&e);
                if !v6_from_ifaddrs.iter().any(|v| v.addr == l.addr) {
                    continue;
                }
                if !l.tentative {
                    out.push(l);
                }
            }
        }
        Err(_) => out.extend(v6_from_ifaddrs),
    }
    Ok(out)
}

/// For each destination, the interface index of the local address the
/// kernel would use to reach it (found by connecting an unbound UDP socket,
/// which sends nothing). Destinations without a route are left out.
pub fn route_interfaces(dsts: &[SocketAddr], locals: &[LocalAddr]) -> HashMap<IpAddr, u32> {
    let mut out = HashMap::new();
    for d in dsts {
        let d = canonical_dst(d);
        let bind: SocketAddr = if d.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let Ok(sock) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        // Port 0 destinations cannot be connected; the route does not depend
        // on the port.
        let mut probe = d;
        if probe.port() == 0 {
            probe.set_port(9);
        }
        if sock.connect(probe).is_err() {
            continue;
        }
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        let lip = local.ip().to_canonical();
        if let Some(l) = locals.iter().find(|l| l.addr == lip) {
            out.insert(d.ip(), l.ifindex);
        }
    }
    out
}

/// Everything together: local addresses, kernel routes, RFC 6724 ordering,
/// RFC 8305 interleaving, with default options.
pub fn plan_paths(dsts: &[SocketAddr]) -> io::Result<Vec<PathCandidate>> {
    let locals = local_addresses()?;
    let routes = route_interfaces(dsts, &locals);
    Ok(AddrSelector::default().path_candidates(dsts, &locals, &routes, &PairingOptions::default()))
}

/// How long [`plan_paths_cached`] reuses a plan for the same destinations in
/// the same network namespace.
pub const PLAN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Identity (device, inode) of the calling thread's network namespace, or
/// `None` when `/proc` is unavailable.
pub(crate) fn netns_identity() -> Option<(u64, u64)> {
    nix::sys::stat::stat("/proc/thread-self/ns/net")
        .ok()
        .map(|s| (s.st_dev, s.st_ino))
}

struct CachedPlan {
    netns: (u64, u64),
    dsts: Vec<SocketAddr>,
    at: std::time::Instant,
    paths: Vec<PathCandidate>,
}

static PLAN_CACHE: std::sync::Mutex<Vec<CachedPlan>> = std::sync::Mutex::new(Vec::new());

/// Most plans kept.
const PLAN_CACHE_SIZE: usize = 16;

/// [`plan_paths`] that reuses the plan made for the same destinations in the
/// same network namespace during the last [`PLAN_CACHE_TTL`] (a connect then
/// costs one `stat` instead of a netlink dump, a `/proc` read and a route
/// probe per destination). Without a namespace identity (no `/proc`) it
/// plans afresh. Reconnects do not use the cache; the driver drops the
/// namespace's plans when a connection attempt fails
/// ([`forget_cached_plans`]).
pub fn plan_paths_cached(dsts: &[SocketAddr]) -> io::Result<Vec<PathCandidate>> {
    plan_paths_cached_in(netns_identity(), dsts)
}

/// [`plan_paths_cached`] for a caller that already has the thread's
/// [`netns_identity`].
pub(crate) fn plan_paths_cached_in(
    ns: Option<(u64, u64)>,
    dsts: &[SocketAddr],
) -> io::Result<Vec<PathCandidate>> {
    let Some(ns) = ns else {
        return plan_paths(dsts);
    };
    let now = std::time::Instant::now();
    {
        let cache = PLAN_CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.iter().find(|c| {
            c.netns == ns && c.dsts == dsts && now.saturating_duration_since(c.at) < PLAN_CACHE_TTL
        }) {
            return Ok(c.paths.clone());
        }
    }
    let paths = plan_paths(dsts)?;
    let mut cache = PLAN_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|c| {
        now.saturating_duration_since(c.at) < PLAN_CACHE_TTL && !(c.netns == ns && c.dsts == dsts)
    });
    if cache.len() >= PLAN_CACHE_SIZE {
        cache.remove(0);
    }
    cache.push(CachedPlan {
        netns: ns,
        dsts: dsts.to_vec(),
        at: now,
        paths: paths.clone(),
    });
    Ok(paths)
}

/// Drops every cached plan of the calling thread's network namespace (after
/// a failed connection attempt: addresses or routes may have changed).
pub fn forget_cached_plans() {
    let ns = netns_identity();
    PLAN_CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|c| Some(c.netns) != ns);
}

#[cfg(test)]
mod tests;
