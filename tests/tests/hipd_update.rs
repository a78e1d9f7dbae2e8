//! hipd lab tests: readdressing through UPDATE during a transfer, and
//! tshark validation of captured BEX, UPDATE and CLOSE packets.

mod hipd_support;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use hipd_support::{
    Hipd, Transfer, engine_counter, peer_locator_state, random_file, same_file, transfer_to_hit,
    wait_for,
};
use netlab::{Family, Lab};

const MB: usize = 1 << 20;

fn new_addr(old: IpAddr) -> Ipv6Addr {
    let IpAddr::V6(o) = old else { panic!("v6") };
    let mut s = o.segments();
    s[7] = 0x99;
    Ipv6Addr::from(s)
}

/// b moves to a new IPv6 address on the link while a 100 MB TCP transfer
/// over HITs runs: b announces it with UPDATE(LOCATOR_SET), a verifies it
/// and switches; the transfer completes byte-exact.
#[test]
fn hipd_readdress_mid_transfer_keeps_tcp_alive() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let old = l0.addr(&b, Family::V6);
    ha.add_map(hit_b, old, None);

    let file = lab.artifacts_dir().join("mv-in");
    random_file(&file, 100 * MB, 21);
    let out = lab.artifacts_dir().join("mv-out");
    let srv = b
        .spawn([
            "socat",
            "-u",
            &format!("TCP6-LISTEN:5030,bind=[{hit_b}],reuseaddr"),
            &format!("CREATE:{}", out.display()),
        ])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Slow the sender a little so the move happens mid-transfer.
    l0.rate_limit(&a, netlab::RateLimit::mbit(400)).unwrap();
    let cli = a
        .spawn([
            "socat",
            "-u",
            &format!("OPEN:{}", file.display()),
            &format!("TCP6:[{hit_b}]:5030"),
        ])
        .unwrap();
    let t0 = Instant::now();
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) < 10 * MB as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "transfer did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dev = l0.dev(&b).to_string();
    let new = new_addr(old);
    hipd_support::readdress_v6(&b, &dev, old, new);
    let moved_at = std::fs::metadata(&out).unwrap().len();
    assert!(moved_at < 90 * MB as u64, "moved too late: {moved_at}");

    let c = cli.wait_timeout(Duration::from_secs(45)).unwrap();
    assert!(c.status.success(), "{}", c.stderr);
    let s = srv.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(s.status.success(), "{}", s.stderr);
    assert!(same_file(&file, &out), "data differs after readdress");
    let has = ha.has();
    assert_eq!(has[0].state, "ESTABLISHED");
    assert_eq!(has[0].peer_locator, Some(IpAddr::V6(new)), "{has:?}");
    assert!(ha.log_text().contains("path changed"));
    assert!(hb.has()[0].local_locator == Some(IpAddr::V6(new)));
}

fn tshark(args: &[&str]) -> String {
    let out = std::process::Command::new("tshark")
        .args(args)
        .output()
        .expect("tshark (apt install tshark)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Captures BEX, UPDATE (readdress) and CLOSE on native IPv6 and a BEX over
/// UDP/IPv4; tshark dissects every HIP packet without malformed or
/// error-level expert items.
#[test]
fn hipd_tshark_parses_bex_update_close() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let cap = l0.capture(&b).unwrap();
    let old = l0.addr(&b, Family::V6);
    ha.add_map(hit_b, old, None);
    assert_eq!(ha.hipconf(&["daemon", "connect", &hit_b.to_string()]).0, 0);
    // Readdress b → UPDATE exchange.
    let dev = l0.dev(&b).to_string();
    let new = new_addr(old);
    hipd_support::readdress_v6(&b, &dev, old, new);
    let t0 = Instant::now();
    while ha.has()[0].peer_locator != Some(IpAddr::V6(new)) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no readdress: {:?}",
            ha.has()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ha.hipconf(&["daemon", "rst", "all"]).0, 0);
    std::thread::sleep(Duration::from_millis(500));
    // A second exchange over UDP/IPv4.
    assert_eq!(
        ha.hipconf(&["daemon", "del", "map", &hit_b.to_string()]).0,
        0
    );
    let (code, out, err) = ha.hipconf(&[
        "daemon",
        "add",
        "map",
        &hit_b.to_string(),
        &l0.addr(&b, Family::V4).to_string(),
        "udp",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit_b.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Transport   udp"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let pcap = cap.stop().unwrap();
    let p = pcap.to_str().unwrap();

    let types = tshark(&[
        "-r",
        p,
        "-Y",
        "hip",
        "-T",
        "fields",
        "-e",
        "hip.packet_type",
        "-e",
        "udp.port",
    ]);
    let count = |t: &str| {
        types
            .lines()
            .filter(|l| l.split('\t').next() == Some(t))
            .count()
    };
    let udp_hip = types.lines().filter(|l| l.contains("10500")).count();
    eprintln!("{types}");
    for (t, name) in [
        ("1", "I1"),
        ("2", "R1"),
        ("3", "I2"),
        ("4", "R2"),
        ("16", "UPDATE"),
        ("18", "CLOSE"),
        ("19", "CLOSE_ACK"),
    ] {
        assert!(count(t) >= 1, "no {name} dissected:\n{types}");
    }
    assert!(count("1") >= 2 && count("4") >= 2, "two base exchanges");
    assert!(
        udp_hip >= 4,
        "BEX over UDP 10500 dissected as HIP:\n{types}"
    );
    let bad = tshark(&[
        "-r",
        p,
        "-Y",
        "hip && (_ws.malformed || _ws.expert.severity >= 0x800000)",
    ]);
    assert!(bad.trim().is_empty(), "malformed/expert errors:\n{bad}");
    // No HIP checksum is reported bad (status 0 = bad).
    let ck = tshark(&["-r", p, "-Y", "hip.checksum.status == 0"]);
    assert!(ck.trim().is_empty(), "bad HIP checksums:\n{ck}");
}

/// `ip addr add` (IPv6 with `nodad`) or `ip addr del` of `addr`/`len` on
/// `dev` in `host`.
fn ip_addr(host: &netlab::Host, verb: &str, addr: IpAddr, len: u8, dev: &str) {
    let fam = if addr.is_ipv6() { "-6" } else { "-4" };
    let mut args = vec![
        "ip".to_string(),
        fam.into(),
        "addr".into(),
        verb.into(),
        format!("{addr}/{len}"),
        "dev".into(),
        dev.into(),
    ];
    if addr.is_ipv6() && verb == "add" {
        args.push("nodad".into());
    }
    host.exec_ok(&args).unwrap();
}

/// The initiator moves: over the UDP underlay (`nat plain-udp`, IPv4), a
/// gets a second address on its link and loses the active one while a
/// 40 MB TCP transfer to b's HIT runs. a announces the move with
/// UPDATE(LOCATOR_SET) from the new address, b verifies and switches; the
/// transfer completes byte-exact and both sides show the new locator,
/// still over UDP.
#[test]
fn hipd_initiator_readdress_over_udp_mid_transfer() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let conf = "nat plain-udp\n";
    let ha = Hipd::start(&lab, &a, conf, "");
    let hb = Hipd::start(&lab, &b, conf, "");
    let hit_b = hb.hit();
    ha.add_map(hit_b, l0.addr(&b, Family::V4), None);
    let dev = l0.dev(&a).to_string();
    // Removing the primary IPv4 address must not take the new (secondary)
    // one with it.
    a.sysctl(&format!("net.ipv4.conf.{dev}.promote_secondaries"), "1")
        .unwrap();
    let old = l0.addr(&a, Family::V4);
    let IpAddr::V4(o) = old else { unreachable!() };
    let mut oct = o.octets();
    oct[3] += 10; // still inside the link's /28
    let new = IpAddr::V4(oct.into());

    l0.rate_limit(&a, netlab::RateLimit::mbit(200)).unwrap();
    let t = Transfer::start(&lab, &b, &a, hit_b, 5031, 40 * MB, 31);
    t.wait_received(4 * MB as u64, Duration::from_secs(20));
    let has = ha.has();
    assert_eq!(has[0].transport, "udp", "{has:?}");
    assert_eq!(has[0].local_locator, Some(old), "{has:?}");
    let updates = engine_counter(&hb, "update_received");

    ip_addr(&a, "add", new, 28, &dev);
    std::thread::sleep(Duration::from_millis(100));
    ip_addr(&a, "del", old, 28, &dev);
    let moved_at = t.received();
    assert!(moved_at < 36 * MB as u64, "moved too late: {moved_at}");
    wait_for(
        "b switched to a's new locator",
        Duration::from_secs(10),
        &[&ha, &hb],
        || hb.has()[0].peer_locator == Some(new),
    );
    t.finish(Duration::from_secs(30));

    let has = ha.has();
    assert_eq!(has.len(), 1, "{has:?}");
    assert_eq!(has[0].state, "ESTABLISHED");
    assert_eq!(has[0].transport, "udp");
    assert_eq!(has[0].local_locator, Some(new), "{has:?}");
    assert_eq!(has[0].peer_locator, Some(l0.addr(&b, Family::V4)));
    let hb_has = hb.has();
    assert_eq!(hb_has[0].transport, "udp");
    assert!(hb_has[0].peer_locators.contains(&new), "{hb_has:?}");
    // The withdrawn address is deprecated at b, the new one verified.
    assert_eq!(peer_locator_state(&hb, old).as_deref(), Some("deprecated"));
    assert_eq!(peer_locator_state(&hb, new).as_deref(), Some("active"));
    assert!(engine_counter(&hb, "update_received") > updates);
    // And new data still flows both ways over the new address.
    transfer_to_hit(&lab, &b, &a, hit_b, 5032, 4 * MB, 32);
    transfer_to_hit(&lab, &a, &b, ha.hit(), 5033, 4 * MB, 33);
}

/// Two links; the active one goes down on a's side (carrier lost on both
/// ends, as veth does) during a transfer: the associations move to the
/// other link and the transfer completes. When the link comes back up, a
/// announces its restored locators (b's UPDATE counter rises and b's view
/// of a's locators holds the l0 address again) and traffic still flows.
#[test]
fn hipd_link_down_then_up_reannounces_the_locator() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    let l1 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_a = ha.hit();
    let hit_b = hb.hit();
    let (a0, b0) = (l0.addr(&a, Family::V6), l0.addr(&b, Family::V6));
    let (a1, b1) = (l1.addr(&a, Family::V6), l1.addr(&b, Family::V6));
    ha.add_map(hit_b, b0, None);
    let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit_b.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let has = ha.has();
    assert_eq!(
        (has[0].local_locator, has[0].peer_locator),
        (Some(a0), Some(b0))
    );

    for l in [&l0, &l1] {
        l.rate_limit(&a, netlab::RateLimit::mbit(200)).unwrap();
    }
    let t = Transfer::start(&lab, &b, &a, hit_b, 5040, 40 * MB, 40);
    t.wait_received(4 * MB as u64, Duration::from_secs(20));
    l0.down_side(&a).unwrap();
    let at_down = t.received();
    wait_for(
        "both sides moved to l1",
        Duration::from_secs(10),
        &[&ha, &hb],
        || {
            let (x, y) = (ha.has(), hb.has());
            x[0].local_locator == Some(a1)
                && x[0].peer_locator == Some(b1)
                && y[0].peer_locator == Some(a1)
        },
    );
    t.finish(Duration::from_secs(30));
    assert!(
        at_down < 36 * MB as u64,
        "link went down too late: {at_down}"
    );
    // Each side was told that the other's l0 locator is gone.
    wait_for(
        "a's and b's l0 locators deprecated at the peer",
        Duration::from_secs(10),
        &[&ha, &hb],
        || {
            peer_locator_state(&hb, a0).as_deref() == Some("deprecated")
                && peer_locator_state(&ha, b0).as_deref() == Some("deprecated")
        },
    );

    let updates = engine_counter(&hb, "update_received");
    l0.up_side(&a).unwrap();
    wait_for(
        "a announced its restored l0 locator to b",
        Duration::from_secs(10),
        &[&ha, &hb],
        || {
            engine_counter(&hb, "update_received") > updates
                && hb.has()[0].peer_locators.contains(&a0)
                && peer_locator_state(&hb, a0).is_some_and(|s| s != "deprecated")
        },
    );
    // b's own l0 locator came back too, and a learned it.
    wait_for(
        "b announced its restored l0 locator to a",
        Duration::from_secs(10),
        &[&ha, &hb],
        || {
            ha.has()[0].peer_locators.contains(&b0)
                && peer_locator_state(&ha, b0).is_some_and(|s| s != "deprecated")
        },
    );
    assert_eq!(ha.has()[0].state, "ESTABLISHED");
    transfer_to_hit(&lab, &b, &a, hit_b, 5041, 8 * MB, 41);
    transfer_to_hit(&lab, &a, &b, hit_a, 5042, 8 * MB, 42);
    assert_eq!(ha.has().len(), 1, "still the one association");
}

/// UPDATE goes to every peer: a (behind router r) has associations with
/// b and c and one active address towards both. It gets a second address
/// and loses the first during transfers to both: b and c each learn the
/// new locator from a's UPDATE and switch to it, and both transfers
/// complete byte-exact.
#[test]
fn hipd_readdress_updates_every_peer() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let c = lab.add_host("c").unwrap();
    let r = lab.add_host("r").unwrap();
    let lar = lab.link(&a, &r).unwrap();
    let lrb = lab.link(&r, &b).unwrap();
    let lrc = lab.link(&r, &c).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    r.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let route = |h: &netlab::Host, to: &netlab::Link, via: &netlab::Link| {
        h.exec_ok([
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/64", to.v6_prefix()),
            "via",
            &via.addr(&r, Family::V6).to_string(),
            "dev",
            via.dev(h),
        ])
        .unwrap();
    };
    route(&a, &lrb, &lar);
    route(&a, &lrc, &lar);
    route(&b, &lar, &lrb);
    route(&c, &lar, &lrc);

    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hc = Hipd::start(&lab, &c, "", "");
    let (hit_b, hit_c) = (hb.hit(), hc.hit());
    ha.add_map(hit_b, lrb.addr(&b, Family::V6), None);
    ha.add_map(hit_c, lrc.addr(&c, Family::V6), None);
    for hit in [hit_b, hit_c] {
        let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit.to_string()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let old = lar.addr(&a, Family::V6);
    let has = ha.has();
    assert_eq!(has.len(), 2, "{has:?}");
    assert!(has.iter().all(|h| h.local_locator == Some(old)), "{has:?}");
    assert_eq!(hb.has()[0].peer_locator, Some(old));
    assert_eq!(hc.has()[0].peer_locator, Some(old));

    lar.rate_limit(&a, netlab::RateLimit::mbit(150)).unwrap();
    let tb = Transfer::start(&lab, &b, &a, hit_b, 5050, 32 * MB, 50);
    let tc = Transfer::start(&lab, &c, &a, hit_c, 5051, 32 * MB, 51);
    tb.wait_received(2 * MB as u64, Duration::from_secs(20));
    tc.wait_received(2 * MB as u64, Duration::from_secs(20));
    let (ub, uc) = (
        engine_counter(&hb, "update_received"),
        engine_counter(&hc, "update_received"),
    );
    let dev = lar.dev(&a).to_string();
    let new = IpAddr::V6(new_addr(old));
    ip_addr(&a, "add", new, 64, &dev);
    std::thread::sleep(Duration::from_millis(100));
    ip_addr(&a, "del", old, 64, &dev);
    let moved = (tb.received(), tc.received());
    assert!(
        moved.0 < 30 * MB as u64 && moved.1 < 30 * MB as u64,
        "moved too late: {moved:?}"
    );
    for (h, name) in [(&hb, "b"), (&hc, "c")] {
        wait_for(
            &format!("{name} switched to a's new locator"),
            Duration::from_secs(10),
            &[&ha, h],
            || {
                let x = h.has();
                x[0].peer_locator == Some(new)
                    && x[0].peer_locators.contains(&new)
                    && peer_locator_state(h, old).as_deref() == Some("deprecated")
            },
        );
    }
    tb.finish(Duration::from_secs(30));
    tc.finish(Duration::from_secs(30));
    assert!(engine_counter(&hb, "update_received") > ub);
    assert!(engine_counter(&hc, "update_received") > uc);
    let has = ha.has();
    assert!(
        has.iter()
            .all(|h| h.state == "ESTABLISHED" && h.local_locator == Some(new)),
        "{has:?}"
    );
    transfer_to_hit(&lab, &a, &b, ha.hit(), 5052, 2 * MB, 52);
    transfer_to_hit(&lab, &a, &c, ha.hit(), 5053, 2 * MB, 53);
}
