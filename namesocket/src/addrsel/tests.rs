//! RFC 6724 §10 examples and pairing/interleaving tests.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A local address with the usual prefix length for its family.
fn la(s: &str) -> LocalAddr {
    let a = ip(s);
    let plen = if a.is_ipv4() { 24 } else { 64 };
    LocalAddr::new(a, plen, 1)
}

fn pick(dst: &str, cands: &[LocalAddr]) -> IpAddr {
    AddrSelector::default()
        .select_source(&ip(dst), cands, None)
        .expect("a source")
        .addr
}

fn order(dsts: &[&str], locals: &[LocalAddr]) -> Vec<IpAddr> {
    let d: Vec<IpAddr> = dsts.iter().map(|s| ip(s)).collect();
    AddrSelector::default().sort_destinations(&d, locals)
}

// ---- RFC 6724 §10.1, default source address selection ---------------------

#[test]
fn rfc6724_10_1_example1_prefer_appropriate_scope() {
    let c = [la("2001:db8:3::1"), la("fe80::1")];
    assert_eq!(pick("2001:db8:1::1", &c), ip("2001:db8:3::1"));
}

#[test]
fn rfc6724_10_1_example2_prefer_appropriate_scope_multicast() {
    let c = [la("2001:db8:3::1"), la("fe80::1")];
    assert_eq!(pick("ff05::1", &c), ip("2001:db8:3::1"));
}

#[test]
fn rfc6724_10_1_example3_prefer_same_address() {
    let c = [la("2001:db8:1::1").deprecated(), la("2001:db8:2::1")];
    assert_eq!(pick("2001:db8:1::1", &c), ip("2001:db8:1::1"));
}

#[test]
fn rfc6724_10_1_example4_prefer_appropriate_scope_over_deprecation() {
    let c = [la("fe80::2").deprecated(), la("2001:db8:1::1")];
    assert_eq!(pick("fe80::1", &c), ip("fe80::2"));
}

#[test]
fn rfc6724_10_1_example5_longest_matching_prefix() {
    let c = [la("2001:db8:1::2"), la("2001:db8:3::2")];
    assert_eq!(pick("2001:db8:1::1", &c), ip("2001:db8:1::2"));
    // Input order must not matter.
    let c = [la("2001:db8:3::2"), la("2001:db8:1::2")];
    assert_eq!(pick("2001:db8:1::1", &c), ip("2001:db8:1::2"));
}

#[test]
fn rfc6724_10_1_example6_prefer_home_address() {
    let c = [la("2001:db8:1::2").care_of(), la("2001:db8:3::2").home()];
    assert_eq!(pick("2001:db8:1::1", &c), ip("2001:db8:3::2"));
}

#[test]
fn rfc6724_10_1_example7_prefer_matching_label() {
    let c = [
        la("2002:c633:6401::d5e3:7953:13eb:22e8").temporary(),
        la("2001:db8:1::2"),
    ];
    assert_eq!(
        pick("2002:c633:6401::1", &c),
        ip("2002:c633:6401::d5e3:7953:13eb:22e8")
    );
    let c = [c[1].clone(), c[0].clone()];
    assert_eq!(
        pick("2002:c633:6401::1", &c),
        ip("2002:c633:6401::d5e3:7953:13eb:22e8")
    );
}

#[test]
fn rfc6724_10_1_example8_prefer_temporary_address() {
    let c = [
        la("2001:db8:1::2"),
        la("2001:db8:1::d5e3:7953:13eb:22e8").temporary(),
    ];
    assert_eq!(
        pick("2001:db8:1::d5e3:0:0:1", &c),
        ip("2001:db8:1::d5e3:7953:13eb:22e8")
    );
    // And the configurable opposite preference.
    let sel = AddrSelector {
        prefer_temporary: false,
        ..AddrSelector::default()
    };
    assert_eq!(
        sel.select_source(&ip("2001:db8:1::d5e3:0:0:1"), &c, None)
            .unwrap()
            .addr,
        ip("2001:db8:1::2")
    );
}

// ---- RFC 6724 §10.2, default destination address selection ----------------

#[test]
fn rfc6724_10_2_example1_prefer_matching_scope_v6() {
    let l = [la("2001:db8:1::2"), la("fe80::1"), la("169.254.13.78")];
    assert_eq!(
        order(&["2001:db8:1::1", "198.51.100.121"], &l),
        vec![ip("2001:db8:1::1"), ip("198.51.100.121")]
    );
    assert_eq!(
        order(&["198.51.100.121", "2001:db8:1::1"], &l),
        vec![ip("2001:db8:1::1"), ip("198.51.100.121")]
    );
}

#[test]
fn rfc6724_10_2_example2_prefer_matching_scope_v4() {
    let l = [la("fe80::1"), la("198.51.100.117")];
    assert_eq!(
        order(&["2001:db8:1::1", "198.51.100.121"], &l),
        vec![ip("198.51.100.121"), ip("2001:db8:1::1")]
    );
}

#[test]
fn rfc6724_10_2_example3_prefer_higher_precedence() {
    let l = [la("2001:db8:1::2"), la("fe80::1"), la("10.1.2.4")];
    assert_eq!(
        order(&["10.1.2.3", "2001:db8:1::1"], &l),
        vec![ip("2001:db8:1::1"), ip("10.1.2.3")]
    );
}

#[test]
fn rfc6724_10_2_example4_prefer_smaller_scope() {
    let l = [la("2001:db8:1::2"), la("fe80::2")];
    assert_eq!(
        order(&["2001:db8:1::1", "fe80::1"], &l),
        vec![ip("fe80::1"), ip("2001:db8:1::1")]
    );
}

#[test]
fn rfc6724_10_2_example5_longest_matching_prefix() {
    let l = [la("2001:db8:1::2"), la("2001:db8:3f44::2"), la("fe80::2")];
    assert_eq!(
        order(&["2001:db8:3ffe::1", "2001:db8:1::1"], &l),
        vec![ip("2001:db8:1::1"), ip("2001:db8:3ffe::1")]
    );
}

#[test]
fn rfc6724_10_2_example6_prefer_matching_label() {
    let l = [la("2002:c633:6401::2"), la("fe80::2")];
    assert_eq!(
        order(&["2001:db8:1::1", "2002:c633:6401::1"], &l),
        vec![ip("2002:c633:6401::1"), ip("2001:db8:1::1")]
    );
}

#[test]
fn rfc6724_10_2_example7_prefer_higher_precedence() {
    let l = [la("2002:c633:6401::2"), la("2001:db8:1::2"), la("fe80::2")];
    assert_eq!(
        order(&["2002:c633:6401::1", "2001:db8:1::1"], &l),
        vec![ip("2001:db8:1::1"), ip("2002:c633:6401::1")]
    );
}

// ---- building blocks --------------------------------------------------------

#[test]
fn scopes() {
    assert_eq!(scope_of(&ip("fe80::1")), scope::LINK_LOCAL);
    assert_eq!(scope_of(&ip("::1")), scope::LINK_LOCAL);
    assert_eq!(scope_of(&ip("fec0::1")), scope::SITE_LOCAL);
    assert_eq!(scope_of(&ip("fd00::1")), scope::GLOBAL);
    assert_eq!(scope_of(&ip("ff02::1")), scope::LINK_LOCAL);
    assert_eq!(scope_of(&ip("ff05::1")), scope::SITE_LOCAL);
    assert_eq!(scope_of(&ip("ff0e::1")), scope::GLOBAL);
    assert_eq!(scope_of(&ip("127.0.0.1")), scope::LINK_LOCAL);
    assert_eq!(scope_of(&ip("169.254.1.1")), scope::LINK_LOCAL);
    assert_eq!(scope_of(&ip("10.0.0.1")), scope::GLOBAL);
    assert_eq!(scope_of(&ip("::ffff:169.254.1.1")), scope::LINK_LOCAL);
}

#[test]
fn default_policy_table() {
    let t = PolicyTable::default();
    assert_eq!(t.lookup(&ip("::1")), (50, 0));
    assert_eq!(t.lookup(&ip("2001:db8::1")), (40, 1));
    assert_eq!(t.lookup(&ip("192.0.2.1")), (35, 4));
    assert_eq!(t.lookup(&ip("2002::1")), (30, 2));
    assert_eq!(t.lookup(&ip("2001:0:1::1")), (5, 5));
    assert_eq!(t.lookup(&ip("fd12::1")), (3, 13));
    assert_eq!(t.lookup(&ip("::192.0.2.1")), (1, 3));
    assert_eq!(t.lookup(&ip("fec0::1")), (1, 11));
    assert_eq!(t.lookup(&ip("3ffe::1")), (1, 12));
    assert_eq!(t.lookup(&ip("fe80::1")), (40, 1));
}

#[test]
fn common_prefix_len_is_capped_by_source_prefix() {
    assert_eq!(
        common_prefix_len(&ip("2001:db8:1::2"), 64, &ip("2001:db8:1::1")),
        64
    );
    assert_eq!(
        common_prefix_len(&ip("2001:db8:1::2"), 128, &ip("2001:db8:1::1")),
        126
    );
    assert_eq!(
        common_prefix_len(&ip("2001:db8:3f44::2"), 64, &ip("2001:db8:3ffe::1")),
        40
    );
    assert_eq!(common_prefix_len(&ip("10.1.2.4"), 24, &ip("10.1.2.3")), 120);
    assert_eq!(common_prefix_len(&ip("10.1.2.4"), 24, &ip("::1")), 0);
}

// ---- pairing ------------------------------------------------------------------

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn multihomed_locals() -> Vec<LocalAddr> {
    vec![
        LocalAddr::new(ip("127.0.0.1"), 8, 1),
        LocalAddr::new(ip("::1"), 128, 1),
        LocalAddr::new(ip("192.0.2.2"), 24, 2),
        LocalAddr::new(ip("2001:db8:a::2"), 64, 2),
        LocalAddr::new(ip("fe80::2"), 64, 2),
        LocalAddr::new(ip("198.51.100.2"), 24, 3),
        LocalAddr::new(ip("2001:db8:b::2"), 64, 3),
        LocalAddr::new(ip("fe80::3"), 64, 3),
    ]
}

#[test]
fn pairs_every_destination_with_every_suitable_source() {
    let dsts = [
        sa("192.0.2.10:80"),
        sa("[2001:db8:a::10]:80"),
        sa("198.51.100.10:80"),
        sa("[2001:db8:b::10]:80"),
    ];
    let got = AddrSelector::default().path_candidates(
        &dsts,
        &multihomed_locals(),
        &HashMap::new(),
        &PairingOptions::default(),
    );
    // 2 v4 dsts x 2 global v4 sources + 2 v6 dsts x 2 global v6 sources.
    assert_eq!(got.len(), 8);
    // No loopback / link-local sources for global destinations.
    for c in &got {
        let s = c.src.unwrap();
        assert!(!s.is_loopback());
        assert_eq!(s.is_ipv4(), c.dst.is_ipv4());
        assert_ne!(scope_of(&s), scope::LINK_LOCAL);
    }
    // IPv6 first (precedence 40 > 35), then families alternate.
    let fams: Vec<bool> = got.iter().map(|c| c.dst.is_ipv4()).collect();
    assert_eq!(
        fams,
        vec![false, true, false, true, false, true, false, true]
    );
    // First: IPv6 destination a::10 with its longest-prefix source a::2.
    assert_eq!(got[0].dst, sa("[2001:db8:a::10]:80"));
    assert_eq!(got[0].src, Some(ip("2001:db8:a::2")));
    assert_eq!(got[0].ifindex, Some(2));
    // Second: best IPv4 pair: 192.0.2.10 from 192.0.2.2 (longest prefix).
    assert_eq!(got[1].dst, sa("192.0.2.10:80"));
    assert_eq!(got[1].src, Some(ip("192.0.2.2")));
    // Destination-major within a family: both sources of a::10 come before
    // any pair of b::10.
    let v6: Vec<&PathCandidate> = got.iter().filter(|c| !c.is_ipv4()).collect();
    assert_eq!(v6[0].dst, v6[1].dst);
    assert_eq!(v6[1].src, Some(ip("2001:db8:b::2")));
    assert_eq!(v6[2].dst, sa("[2001:db8:b::10]:80"));
    assert_eq!(v6[2].src, Some(ip("2001:db8:b::2")));
}

#[test]
fn route_hint_applies_source_rule_5() {
    let dsts = [sa("[2001:db8:c::10]:80")];
    let locals = multihomed_locals();
    let sel = AddrSelector::default();
    let none = sel.path_candidates(&dsts, &locals, &HashMap::new(), &PairingOptions::default());
    let mut routes = HashMap::new();
    routes.insert(ip("2001:db8:c::10"), 3u32);
    let hinted = sel.path_candidates(&dsts, &locals, &routes, &PairingOptions::default());
    assert_eq!(none.len(), 2);
    assert_eq!(hinted.len(), 2);
    assert_eq!(hinted[0].src, Some(ip("2001:db8:b::2")));
    routes.insert(ip("2001:db8:c::10"), 2u32);
    let hinted = sel.path_candidates(&dsts, &locals, &routes, &PairingOptions::default());
    assert_eq!(hinted[0].src, Some(ip("2001:db8:a::2")));
}

#[test]
fn loopback_and_link_local_pairing() {
    let sel = AddrSelector::default();
    let locals = multihomed_locals();
    let lo = sel.path_candidates(
        &[sa("127.0.0.1:7"), sa("[::1]:7")],
        &locals,
        &HashMap::new(),
        &PairingOptions::default(),
    );
    assert_eq!(
        lo,
        vec![
            PathCandidate {
                src: Some(ip("::1")),
                dst: sa("[::1]:7"),
                ifindex: Some(1)
            },
            PathCandidate {
                src: Some(ip("127.0.0.1")),
                dst: sa("127.0.0.1:7"),
                ifindex: Some(1)
            },
        ]
    );
    // Unzoned link-local destination: one candidate per link-local source,
    // each with the source's interface as zone.
    let ll = sel.path_candidates(
        &[sa("[fe80::10]:7")],
        &locals,
        &HashMap::new(),
        &PairingOptions::default(),
    );
    let zones: Vec<u32> = ll
        .iter()
        .filter(|c| scope_of(&c.src.unwrap()) == scope::LINK_LOCAL)
        .map(|c| match c.dst {
            SocketAddr::V6(v6) => v6.scope_id(),
            SocketAddr::V4(_) => 0,
        })
        .collect();
    assert_eq!(zones.len(), 2);
    assert!(zones.contains(&2) && zones.contains(&3));
    // Link-local sources first (rule 2: smallest sufficient scope), and the
    // global sources may also reach a link-local destination.
    assert_eq!(scope_of(&ll[0].src.unwrap()), scope::LINK_LOCAL);
    assert_eq!(ll.len(), 4);
    // Zoned: only the source on that interface.
    let mut zoned = SocketAddrV6::new("fe80::10".parse().unwrap(), 7, 0, 3);
    let z = sel.path_candidates(
        &[SocketAddr::V6(zoned)],
        &locals,
        &HashMap::new(),
        &PairingOptions::default(),
    );
    assert!(z.iter().all(|c| c.ifindex == Some(3)));
    assert_eq!(z[0].src, Some(ip("fe80::3")));
    assert_eq!(
        z[0].bind_addr(),
        Some(SocketAddr::V6(SocketAddrV6::new(
            "fe80::3".parse().unwrap(),
            0,
            0,
            3
        )))
    );
    zoned.set_scope_id(99);
    let none = sel.path_candidates(
        &[SocketAddr::V6(zoned)],
        &locals,
        &HashMap::new(),
        &PairingOptions::default(),
    );
    assert_eq!(none.len(), 1);
    assert_eq!(none[0].src, None);
}

#[test]
fn unusable_destinations_last_and_optional() {
    // Only IPv4 sources: IPv6 destinations have no source.
    let locals = vec![LocalAddr::new(ip("192.0.2.2"), 24, 2)];
    let dsts = [sa("[2001:db8::1]:80"), sa("192.0.2.9:80")];
    let sel = AddrSelector::default();
    let with = sel.path_candidates(&dsts, &locals, &HashMap::new(), &PairingOptions::default());
    assert_eq!(with.len(), 2);
    assert_eq!(with[0].dst, sa("192.0.2.9:80"));
    assert_eq!(with[1].src, None);
    assert_eq!(with[1].bind_addr(), None);
    let without = sel.path_candidates(
        &dsts,
        &locals,
        &HashMap::new(),
        &PairingOptions {
            include_unbound: false,
            ..PairingOptions::default()
        },
    );
    assert_eq!(without.len(), 1);
}

#[test]
fn tentative_sources_unused_and_duplicates_dropped() {
    let mut t = LocalAddr::new(ip("2001:db8:a::3"), 64, 2);
    t.tentative = true;
    let locals = vec![t, LocalAddr::new(ip("2001:db8:a::2"), 64, 2)];
    let dsts = [
        sa("[2001:db8:a::10]:80"),
        sa("[2001:db8:a::10]:80"),
        sa("[::ffff:192.0.2.1]:80"),
    ];
    let got = AddrSelector::default().path_candidates(
        &dsts,
        &locals,
        &HashMap::new(),
        &PairingOptions::default(),
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].src, Some(ip("2001:db8:a::2")));
    // The mapped destination became plain IPv4 (and has no v4 source).
    assert_eq!(got[1].dst, sa("192.0.2.1:80"));
}

fn cand(dst: &str) -> PathCandidate {
    PathCandidate {
        src: None,
        dst: sa(dst),
        ifindex: None,
    }
}

#[test]
fn interleaving_rfc8305() {
    let list = vec![
        cand("[2001:db8::1]:1"),
        cand("[2001:db8::2]:1"),
        cand("[2001:db8::3]:1"),
        cand("192.0.2.1:1"),
        cand("192.0.2.2:1"),
    ];
    let one = interleave_families(list.clone(), 1);
    let s: Vec<String> = one.iter().map(|c| c.dst.to_string()).collect();
    assert_eq!(
        s,
        vec![
            "[2001:db8::1]:1",
            "192.0.2.1:1",
            "[2001:db8::2]:1",
            "192.0.2.2:1",
            "[2001:db8::3]:1"
        ]
    );
    let two = interleave_families(list.clone(), 2);
    let s: Vec<String> = two.iter().map(|c| c.dst.to_string()).collect();
    assert_eq!(
        s,
        vec![
            "[2001:db8::1]:1",
            "[2001:db8::2]:1",
            "192.0.2.1:1",
            "[2001:db8::3]:1",
            "192.0.2.2:1"
        ]
    );
    assert_eq!(interleave_families(list.clone(), 0), list);
    assert!(interleave_families(Vec::new(), 1).is_empty());
}

#[test]
fn if_inet6_parsing_and_flags() {
    let text = "\
fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
20010db8000000000000000000000005 04 40 00 01     eth0
20010db8000000000000000000000006 04 40 00 40     eth0
20010db8000000000000000000000007 04 40 00 44     eth0
20010db8000000000000000000000008 04 40 00 20     eth0
zz010db8000000000000000000000008 04 40 00 20     eth0
20010db8 04 40 00 20     eth0
short line
";
    let e = parse_if_inet6(text);
    assert_eq!(e.len(), 7);
    assert_eq!(e[0].addr, "fd00::2".parse::<Ipv6Addr>().unwrap());
    assert_eq!(e[0].ifindex, 4);
    assert_eq!(e[0].prefix_len, 64);
    assert_eq!(e[2].prefix_len, 128);
    let l: Vec<LocalAddr> = e.iter().map(LocalAddr::from).collect();
    assert!(l[3].temporary);
    assert!(l[4].tentative);
    assert!(!l[5].tentative, "optimistic addresses are usable");
    assert!(l[6].deprecated);
    assert_eq!(l[1].ifname, "eth0");
}

#[test]
fn local_addresses_from_kernel_include_loopback() {
    let l = local_addresses().unwrap();
    assert!(
        l.iter()
            .any(|a| a.addr == ip("127.0.0.1") && a.ifindex != 0)
    );
    let lo = l.iter().find(|a| a.addr == ip("127.0.0.1")).unwrap();
    assert_eq!(lo.prefix_len, 8);
    let r = route_interfaces(&[sa("127.0.0.1:80")], &l);
    assert_eq!(r.get(&ip("127.0.0.1")), Some(&lo.ifindex));
    let plan = plan_paths(&[sa("127.0.0.1:80")]).unwrap();
    assert_eq!(plan[0].src, Some(ip("127.0.0.1")));
}

// ---- properties -----------------------------------------------------------------

mod props {
    use super::*;
    use proptest::prelude::*;

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|b| IpAddr::V4(Ipv4Addr::from_bits(b))),
            any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
            // Concentrate on interesting prefixes too.
            (0usize..6, any::<u64>()).prop_map(|(i, low)| {
                let hi: u64 = [
                    0xfe80_0000_0000_0000,
                    0x2001_0db8_0001_0000,
                    0x2002_c633_6401_0000,
                    0xfd00_0000_0000_0000,
                    0x0000_0000_0000_0000,
                    0x2001_0db8_0002_0000,
                ][i];
                IpAddr::V6(Ipv6Addr::from_bits(
                    (u128::from(hi) << 64) | u128::from(low),
                ))
            }),
        ]
    }

    fn any_local() -> impl Strategy<Value = LocalAddr> {
        (any_ip(), 0u8..=128, 0u32..4, any::<[bool; 5]>()).prop_map(|(a, p, i, f)| {
            let mut l = LocalAddr::new(a, p, i);
            l.deprecated = f[0];
            l.temporary = f[1];
            l.home = f[2];
            l.care_of = f[3];
            l.tentative = f[4];
            l
        })
    }

    proptest! {
        #[test]
        fn parse_if_inet6_never_panics(s in "\\PC*") {
            let _ = parse_if_inet6(&s);
        }

        #[test]
        fn source_comparison_is_antisymmetric(d in any_ip(), a in any_local(), b in any_local(), o in proptest::option::of(0u32..4)) {
            let sel = AddrSelector::default();
            let ab = sel.compare_sources(&d, &a, &b, o);
            let ba = sel.compare_sources(&d, &b, &a, o);
            prop_assert_eq!(ab, ba.reverse());
        }

        #[test]
        fn pairing_covers_every_destination_once_per_source(
            dsts in proptest::collection::vec((any_ip(), 1u16..3), 0..6),
            locals in proptest::collection::vec(any_local(), 0..6),
        ) {
            let sel = AddrSelector::default();
            let dsts: Vec<SocketAddr> = dsts.into_iter().map(|(i, p)| SocketAddr::new(i, p)).collect();
            let got = sel.path_candidates(&dsts, &locals, &HashMap::new(), &PairingOptions::default());
            // Every (canonical) destination appears; pairs are unique and
            // same-family; each pair's source is suitable.
            for d in &dsts {
                let c = canonical_dst(d);
                prop_assert!(got.iter().any(|p| p.dst.ip() == c.ip() && p.dst.port() == c.port()));
            }
            let mut seen = std::collections::HashSet::new();
            for p in &got {
                prop_assert!(seen.insert(p.clone()));
                if let Some(s) = p.src {
                    prop_assert_eq!(s.is_ipv4(), p.dst.is_ipv4());
                    prop_assert!(locals.iter().any(|l| l.addr == s && sel.source_suits(l, &p.dst)));
                }
            }
            // Interleaving alternates while both families remain.
            let fam: Vec<bool> = got.iter().map(|c| c.is_ipv4()).collect();
            let n4 = fam.iter().filter(|f| **f).count();
            let n6 = fam.len() - n4;
            let alternating = 2 * n4.min(n6);
            for w in fam.iter().take(alternating).collect::<Vec<_>>().windows(2) {
                prop_assert_ne!(w[0], w[1]);
            }
        }
    }
}
