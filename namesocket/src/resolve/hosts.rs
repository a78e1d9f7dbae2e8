//! Parser for hosts(5) files (`/etc/hosts`, `/etc/netns/<ns>/hosts`).
//!
//! Format: one entry per line, `ADDRESS NAME [ALIAS...]`, fields separated by
//! blanks or tabs, `#` starts a comment anywhere on a line.
//!
//! Choices (stable):
//! * Lines whose first field is not an IP address, or that carry no name, are
//!   skipped silently (like glibc). Parsing never fails.
//! * An address may carry a zone: `fe80::1%eth0` or `fe80::1%3`. The zone is
//!   kept as text ([`HostsEntry::zone`]); turning an interface name into an
//!   index is done by the resolver at lookup time.
//! * IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are stored as the plain
//!   IPv4 address, so that address selection and connect treat them as IPv4.
//! * Name matching is ASCII case-insensitive and ignores one trailing dot.
//! * Every matching line is returned, in file order, both families, without
//!   duplicates.

use std::net::IpAddr;

/// One parsed line of a hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    /// The address (IPv4-mapped IPv6 already folded to IPv4).
    pub addr: IpAddr,
    /// Zone / scope suffix after `%`, if any (interface name or number).
    pub zone: Option<String>,
    /// Canonical name followed by aliases, as written.
    pub names: Vec<String>,
}

/// An address found in a hosts file for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsMatch {
    /// The address.
    pub addr: IpAddr,
    /// Zone suffix (`eth0`, `3`), if the line had one.
    pub zone: Option<String>,
}

/// Parse an address field, with optional `%zone`. Returns `None` if it is not
/// an IP address.
pub fn parse_address_field(field: &str) -> Option<(IpAddr, Option<String>)> {
    let (addr_text, zone) = match field.split_once('%') {
        Some((a, z)) if !z.is_empty() => (a, Some(z.to_string())),
        Some(_) => return None,
        None => (field, None),
    };
    let addr: IpAddr = addr_text.parse().ok()?;
    let addr = addr.to_canonical();
    // A zone only makes sense on IPv6.
    if zone.is_some() && addr.is_ipv4() {
        return None;
    }
    Some((addr, zone))
}

/// Parse the whole text of a hosts file.
pub fn parse_hosts(text: &str) -> Vec<HostsEntry> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = match raw.split_once('#') {
            Some((before, _)) => before,
            None => raw,
        };
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        let Some((addr, zone)) = parse_address_field(first) else {
            continue;
        };
        let names: Vec<String> = fields.map(str::to_string).collect();
        if names.is_empty() {
            continue;
        }
        out.push(HostsEntry { addr, zone, names });
    }
    out
}

fn normalize(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// All addresses for `name` (canonical name or alias), in file order, without
/// duplicates.
pub fn lookup_hosts(entries: &[HostsEntry], name: &str) -> Vec<HostsMatch> {
    let wanted = normalize(name);
    let mut out: Vec<HostsMatch> = Vec::new();
    if wanted.is_empty() {
        return out;
    }
    for e in entries {
        if e.names
            .iter()
            .any(|n| normalize(n).eq_ignore_ascii_case(wanted))
        {
            let m = HostsMatch {
                addr: e.addr,
                zone: e.zone.clone(),
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# The following lines are desirable for IPv4 capable hosts
127.0.0.1       localhost
127.0.1.1\tbox.example.org box   # trailing comment
::1     localhost ip6-localhost ip6-loopback
fe00::0 ip6-localnet
# multihomed peer, several lines and both families
192.0.2.10   peer.lab peer
2001:db8::10 peer.lab
198.51.100.7 PEER.lab. other
fe80::1%eth0 peer.lab
fe80::2%7    linky
::ffff:192.0.2.99 mapped.lab
not-an-address  bogus
10.0.0.1
300.1.1.1 invalid.lab
fe80::9% emptyzone
   # indented comment
\t
2001:db8::10 peer.lab
";

    #[test]
    fn parses_comments_aliases_and_blank_lines() {
        let e = parse_hosts(SAMPLE);
        // localhost, box, ::1, fe00, 3x peer v4/v6, fe80 eth0, fe80 7, mapped, duplicate peer line
        assert_eq!(e.len(), 11);
        assert_eq!(e[1].names, vec!["box.example.org", "box"]);
        assert_eq!(e[2].names.len(), 3);
    }

    #[test]
    fn finds_all_lines_both_families_in_order() {
        let e = parse_hosts(SAMPLE);
        let m = lookup_hosts(&e, "peer.lab");
        let addrs: Vec<String> = m
            .iter()
            .map(|m| match &m.zone {
                Some(z) => format!("{}%{}", m.addr, z),
                None => m.addr.to_string(),
            })
            .collect();
        assert_eq!(
            addrs,
            vec!["192.0.2.10", "2001:db8::10", "198.51.100.7", "fe80::1%eth0"]
        );
    }

    #[test]
    fn alias_case_and_trailing_dot() {
        let e = parse_hosts(SAMPLE);
        assert_eq!(lookup_hosts(&e, "PEER").len(), 1);
        assert_eq!(lookup_hosts(&e, "peer.lab.").len(), 4);
        assert_eq!(
            lookup_hosts(&e, "other")[0].addr.to_string(),
            "198.51.100.7"
        );
        assert_eq!(lookup_hosts(&e, "box").len(), 1);
        assert!(lookup_hosts(&e, "missing").is_empty());
        assert!(lookup_hosts(&e, "").is_empty());
        assert!(lookup_hosts(&e, ".").is_empty());
    }

    #[test]
    fn localhost_has_both_families() {
        let e = parse_hosts(SAMPLE);
        let m = lookup_hosts(&e, "localhost");
        assert_eq!(m.len(), 2);
        assert!(m[0].addr.is_ipv4());
        assert!(m[1].addr.is_ipv6());
    }

    #[test]
    fn scoped_and_mapped_addresses() {
        let e = parse_hosts(SAMPLE);
        let l = lookup_hosts(&e, "linky");
        assert_eq!(l[0].zone.as_deref(), Some("7"));
        let m = lookup_hosts(&e, "mapped.lab");
        assert_eq!(m[0].addr, "192.0.2.99".parse::<IpAddr>().unwrap());
        assert!(lookup_hosts(&e, "emptyzone").is_empty());
        assert!(lookup_hosts(&e, "invalid.lab").is_empty());
        assert!(lookup_hosts(&e, "bogus").is_empty());
    }

    #[test]
    fn address_field_rules() {
        assert!(parse_address_field("192.0.2.1%eth0").is_none());
        assert!(parse_address_field("fe80::1%").is_none());
        assert_eq!(
            parse_address_field("fe80::1%lo").unwrap().1.as_deref(),
            Some("lo")
        );
    }

    #[test]
    fn garbage_never_panics() {
        let junk = "\u{0}\u{1}%%%\n::::::\n%\n# \n\u{fffd}\u{fffd} a\n1.2.3.4 \u{00e9}t\u{00e9}\n";
        let e = parse_hosts(junk);
        assert_eq!(e.len(), 1);
        assert_eq!(lookup_hosts(&e, "\u{00e9}t\u{00e9}").len(), 1);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_and_finds_what_it_parsed(s in "\\PC*", name in "[a-z]{1,8}") {
                let e = parse_hosts(&s);
                for entry in &e {
                    prop_assert!(!entry.names.is_empty());
                }
                let _ = lookup_hosts(&e, &name);
                let line = format!("{s}\n127.0.0.9 {name}\n");
                let e = parse_hosts(&line);
                let addr: IpAddr = "127.0.0.9".parse().unwrap();
                prop_assert!(lookup_hosts(&e, &name).iter().any(|m| m.addr == addr));
            }
        }
    }
}
