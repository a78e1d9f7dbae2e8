//! hipd lab tests: readdressing through UPDATE during a transfer, and
//! tshark validation of captured BEX, UPDATE and CLOSE packets.

mod hipd_support;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use hipd_support::{Hipd, random_file, same_file};
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
    b.exec_ok([
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{new}/64"),
        "dev",
        &dev,
        "nodad",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    b.exec_ok(["ip", "-6", "addr", "del", &format!("{old}/64"), "dev", &dev])
        .unwrap();
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
    b.exec_ok([
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{new}/64"),
        "dev",
        &dev,
        "nodad",
    ])
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    b.exec_ok(["ip", "-6", "addr", "del", &format!("{old}/64"), "dev", &dev])
        .unwrap();
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
