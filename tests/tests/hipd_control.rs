//! hipd lab tests: hipconf verbs, exit codes and permissions; static
//! mappings; opportunistic base exchange; `get ha` reflecting reality;
//! shutdown (CLOSE, TUN removal) and a clean restart.

mod hipd_support;

use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use hipd_backend::control::{Client, ErrorCode, Request, Response};
use hipd_support::{Hipd, bins, transfer_to_hit};
use netlab::{Family, Lab};

fn lab2() -> (Lab, netlab::Host, netlab::Host, netlab::Link) {
    let lab = Lab::new().expect("lab");
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    (lab, a, b, l0)
}

/// hipd in `a` and `b` (default configuration), a's mapping b's HIT to
/// b's address on `l0`: (a's daemon, b's daemon, a's HIT, b's HIT).
fn mapped_pair(
    lab: &Lab,
    a: &netlab::Host,
    b: &netlab::Host,
    l0: &netlab::Link,
) -> (Hipd, Hipd, Ipv6Addr, Ipv6Addr) {
    let ha = Hipd::start(lab, a, "", "");
    let hb = Hipd::start(lab, b, "", "");
    let (hit_a, hit_b) = (ha.hit(), hb.hit());
    ha.add_map(hit_b, l0.addr(b, Family::V6), None);
    (ha, hb, hit_a, hit_b)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hipd_hipconf_verbs_exit_codes_and_permissions() {
    let (lab, a, b, l0) = lab2();
    // Daemon not running.
    let (_, hipconf) = bins();
    let out = Command::new(hipconf)
        .args([
            "--socket",
            "/nonexistent/hipd.sock",
            "daemon",
            "get",
            "hi",
            "all",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();

    // get hi all: two identities, the ECDSA one is the default.
    let (code, out, _) = ha.hipconf(&["daemon", "get", "hi", "all"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.lines().next().unwrap().starts_with("default Ecdsa"),
        "{out}"
    );
    assert!(out.contains(&ha.hit().to_string()));
    let (code, out, _) = ha.hipconf(&["--json", "daemon", "get", "hi", "default"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "his");
    assert_eq!(v["his"].as_array().unwrap().len(), 1);

    // Usage errors and unknown HITs.
    assert_eq!(ha.hipconf(&["daemon", "fly"]).0, 2);
    assert_eq!(ha.hipconf(&["daemon", "get", "ha", "not-a-hit"]).0, 2);
    let stranger: Ipv6Addr = "2001:22::1234".parse().unwrap();
    let (code, _, err) = ha.hipconf(&["daemon", "get", "ha", &stranger.to_string()]);
    assert_eq!(code, 5, "{err}");
    assert_eq!(
        ha.hipconf(&["daemon", "del", "map", &stranger.to_string()])
            .0,
        5
    );

    // Permissions: an unprivileged user may read but not change.
    let as_nobody = |args: &[&str]| {
        let out = Command::new(hipconf)
            .arg("--socket")
            .arg(&ha.sock)
            .args(args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(as_nobody(&["daemon", "get", "hi", "all"]).0, 0);
    assert_eq!(as_nobody(&["daemon", "get", "ha", "all"]).0, 0);
    let (code, err) = as_nobody(&[
        "daemon",
        "add",
        "map",
        &hit_b.to_string(),
        &l0.addr(&b, Family::V6).to_string(),
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(as_nobody(&["daemon", "debug", "all"]).0, 4);
    assert_eq!(as_nobody(&["daemon", "rst", "all"]).0, 4);

    // Mappings that cannot be right are refused (exit 2): a HIT or LSI as
    // the locator, our own HIT, our own LSI as the peer's.
    let hit_a = ha.hit().to_string();
    let lsi_a = ha.lsi().to_string();
    let hb_s = hit_b.to_string();
    for bad in [
        vec!["daemon", "add", "map", &hb_s, &hit_a],
        vec!["daemon", "add", "map", &hb_s, "1.0.0.9"],
        vec!["daemon", "add", "map", &hit_a, "2001:db8::1"],
        vec!["daemon", "add", "map", &hb_s, "2001:db8::1", &lsi_a],
    ] {
        let (code, out, err) = ha.hipconf(&bad);
        assert_eq!(code, 2, "{bad:?}: {out}{err}");
    }
    // Static mapping via hipconf, then a BEX on request.
    let b_ip = l0.addr(&b, Family::V6);
    let (code, out, err) = ha.hipconf(&[
        "daemon",
        "add",
        "map",
        &hit_b.to_string(),
        &b_ip.to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit_b.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("HA is ESTABLISHED"), "{out}");
    let (code, out, _) = ha.hipconf(&["--json", "daemon", "get", "ha", &hit_b.to_string()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // `--json` anywhere gives the same; errors come as JSON too.
    let (code, out2, _) = ha.hipconf(&["daemon", "get", "ha", &hit_b.to_string(), "--json"]);
    assert_eq!(code, 0);
    let v2: serde_json::Value = serde_json::from_str(&out2).unwrap();
    assert_eq!(v2["has"][0]["peer_hit"], v["has"][0]["peer_hit"]);
    let (code, out2, _) = ha.hipconf(&["daemon", "get", "ha", "2001:2f::99", "--json"]);
    assert_eq!(code, 5, "{out2}");
    let e: serde_json::Value = serde_json::from_str(&out2).unwrap();
    assert_eq!(e["exit_code"], 5, "{e}");
    assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    let h = &v["has"][0];
    assert_eq!(h["state"], "ESTABLISHED");
    assert_eq!(h["peer_hit"], hit_b.to_string());
    assert_eq!(h["peer_locator"], b_ip.to_string());
    assert_eq!(h["transport"], "native");
    assert!(h["spi_in"].as_u64().unwrap() > 0);
    // The responder side agrees (R2-SENT until data or the EC timeout).
    let hb_has = hb.has();
    assert!(
        hb_has[0].state == "R2-SENT" || hb_has[0].state == "ESTABLISHED",
        "{hb_has:?}"
    );
    assert_eq!(hb_has[0].spi_out, h["spi_in"].as_u64().unwrap() as u32);

    // Run-time switches. `debug all` shows debug lines (every control
    // request is logged at debug level); `debug low` hides them again.
    let requests = |h: &Hipd| h.log_text().matches("control request").count();
    assert_eq!(ha.hipconf(&["daemon", "debug", "all"]).0, 0);
    assert_eq!(ha.hipconf(&["daemon", "get", "ha", "all"]).0, 0);
    wait_until("a debug line after `debug all`", || requests(&ha) > 0);
    assert_eq!(ha.hipconf(&["daemon", "debug", "low"]).0, 0);
    let seen = requests(&ha);
    assert_eq!(ha.hipconf(&["daemon", "get", "ha", "all"]).0, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(requests(&ha), seen, "no debug line after `debug low`");
    assert_eq!(ha.hipconf(&["daemon", "nat", "plain-udp"]).0, 0);
    assert_eq!(ha.hipconf(&["daemon", "nat", "none"]).0, 0);
    assert_eq!(ha.hipconf(&["daemon", "shotgun", "on"]).0, 0);
    // manual-update announces the (unchanged) locators to the peer.
    let updates = |h: &Hipd| {
        h.stats()
            .engine
            .iter()
            .find(|(k, _)| k == "update_received")
            .map_or(0, |(_, v)| *v)
    };
    let before = updates(&hb);
    let (code, out, _) = ha.hipconf(&["daemon", "manual-update"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("announced to 1 association"), "{out}");
    wait_until("the peer received the UPDATE", || updates(&hb) > before);
    // Puzzle changes apply to new exchanges; the live association stays.
    let (code, _, err) = ha.hipconf(&["daemon", "set", "puzzle", "12"]);
    assert_eq!(code, 0, "{err}");
    assert!(ha.has().iter().any(|h| h.state == "ESTABLISHED"));

    // rst: CLOSE on both sides.
    let (code, out, _) = ha.hipconf(&["daemon", "rst", "all"]);
    assert_eq!(code, 0, "{out}");
    wait_until("peer saw CLOSE", || {
        hb.has().iter().all(|h| h.state == "CLOSED")
    });
    wait_until("CLOSE acknowledged", || {
        ha.has()
            .iter()
            .all(|h| h.state != "ESTABLISHED" && h.state != "CLOSING")
    });
    assert_eq!(ha.hipconf(&["daemon", "set", "puzzle", "12"]).0, 0);
    // Shotgun: with a second IPv6 address a has two IPv6 locators, so with
    // shotgun on its I1s go to b from both; off, from one.
    let IpAddr::V6(a0) = l0.addr(&a, Family::V6) else {
        unreachable!()
    };
    let mut seg = a0.segments();
    seg[7] = 0xa1;
    let a0b = Ipv6Addr::from(seg);
    a.exec_ok([
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{a0b}/64"),
        "dev",
        l0.dev(&a),
        "nodad",
    ])
    .unwrap();
    wait_until("hipd saw the second address", || {
        let (_, out, _) = ha.hipconf(&["daemon", "manual-update"]);
        out.contains(&a0b.to_string())
    });
    let exchange = |shotgun: &str| {
        assert_eq!(ha.hipconf(&["daemon", "shotgun", shotgun]).0, 0);
        let before = ha.stats().hip_tx;
        let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit_b.to_string()]);
        assert_eq!(code, 0, "{out}{err}");
        std::thread::sleep(Duration::from_millis(300));
        let sent = ha.stats().hip_tx - before;
        let (code, out, _) = ha.hipconf(&["daemon", "rst", "all"]);
        assert_eq!(code, 0, "{out}");
        wait_until("CLOSE acknowledged", || {
            ha.has()
                .iter()
                .all(|h| h.state != "ESTABLISHED" && h.state != "CLOSING")
        });
        sent
    };
    let (on, off) = (exchange("on"), exchange("off"));
    assert!(on > off, "HIP packets sent with shotgun on {on}, off {off}");
    // Shotgun limits (RFC 7401, digest §14: I1 to at most 3 addresses in
    // parallel, to one on retry). With two more IPv6 addresses a has four
    // pairs toward b's locator; I1s for a HIT b does not own go
    // unanswered: the first I1 goes to three pairs, each retransmission
    // (1 s, then 2 s later) to one.
    let mut extra = Vec::new();
    for last in [0xa2, 0xa3] {
        seg[7] = last;
        let ip = Ipv6Addr::from(seg);
        a.exec_ok([
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            l0.dev(&a),
            "nodad",
        ])
        .unwrap();
        extra.push(ip.to_string());
    }
    wait_until("hipd saw the extra addresses", || {
        let (_, out, _) = ha.hipconf(&["daemon", "manual-update"]);
        extra.iter().all(|ip| out.contains(ip))
    });
    assert_eq!(ha.hipconf(&["daemon", "shotgun", "on"]).0, 0);
    let ghost: Ipv6Addr = "2001:2a::5ca7".parse().unwrap();
    ha.add_map(ghost, b_ip, None);
    let before = ha.stats().hip_tx;
    let t0 = Instant::now();
    let mut c = Client::connect(&ha.sock).expect("control socket");
    let r = c.call(&Request::Connect {
        hit: ghost,
        wait_ms: 0,
    });
    assert!(
        matches!(&r, Err(e) if e.code() == Some(ErrorCode::Timeout)),
        "{r:?}"
    );
    // Every change of the count of HIP packets sent: (time, count).
    let mut seen: Vec<(Duration, u64)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) && seen.last().is_none_or(|s| s.1 < 5) {
        let sent = ha.stats().hip_tx - before;
        if sent > 0 && seen.last().is_none_or(|s| s.1 != sent) {
            seen.push((t0.elapsed(), sent));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert_eq!(counts, [3, 4, 5], "I1 copies sent over time: {seen:?}");
    assert!(seen[1].0 >= Duration::from_secs(1), "{seen:?}");
    assert!(seen[2].0 >= Duration::from_secs(3), "{seen:?}");
    assert_eq!(ha.hipconf(&["daemon", "shotgun", "off"]).0, 0);
    // del map
    assert_eq!(
        ha.hipconf(&["daemon", "del", "map", &hit_b.to_string()]).0,
        0
    );
    assert_eq!(
        ha.hipconf(&["daemon", "del", "map", &hit_b.to_string()]).0,
        5
    );
}

/// Opportunistic BEX: the initiator knows only the IP; the peer HIT is
/// learned from the R1 and then usable by applications.
#[test]
fn hipd_opportunistic_bex_then_tcp() {
    let (lab, a, b, l0) = lab2();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let b_ip = l0.addr(&b, Family::V6);
    let (code, out, err) = ha.hipconf(&["daemon", "opp", &b_ip.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&hit_b.to_string()), "{out}");
    let has = ha.has();
    assert_eq!(has.len(), 1);
    assert_eq!(has[0].peer_hit, Some(hit_b));
    transfer_to_hit(&lab, &b, &a, hit_b, 5010, 4 << 20, 5);
}

/// `opportunistic off` in hipd.conf: the daemon neither starts an
/// opportunistic exchange (refused at once, exit code 4) nor answers one
/// (the I1 is dropped and counted; the initiator gives up).
#[test]
fn hipd_opportunistic_policy_off() {
    let (lab, a, b, l0) = lab2();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "opportunistic off\n", "");
    let a_ip = l0.addr(&a, Family::V6).to_string();
    let b_ip = l0.addr(&b, Family::V6).to_string();
    let t0 = Instant::now();
    let (code, out, err) = hb.hipconf(&["daemon", "opp", &a_ip]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(err.contains("opportunistic"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(2), "refused at once");
    assert!(ha.has().is_empty() && hb.has().is_empty());
    let (code, out, err) = ha.hipconf(&["daemon", "opp", &b_ip]);
    assert_ne!(code, 0, "{out}{err}");
    let dropped = hb
        .stats()
        .engine
        .iter()
        .find(|(k, _)| k == "unknown_association")
        .map_or(0, |(_, v)| *v);
    assert!(dropped >= 1, "b dropped the opportunistic I1s: {dropped}");
    assert!(hb.has().is_empty(), "{:?}", hb.has());
}

/// A peer resolved through the hosts files (HIT ↔ name in the HIP hosts
/// file, name ↔ IP in the system hosts file), like HIPL.
#[test]
fn hipd_hosts_file_resolution() {
    let (lab, a, b, l0) = lab2();
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    // "b-l0" resolves to b's addresses on link 0 in the lab's hosts file;
    // the HIP hosts file also gives that name an LSI.
    let ha = Hipd::start(&lab, &a, "", &format!("{hit_b} b-l0\n1.0.0.42 b-l0\n"));
    transfer_to_hit(&lab, &b, &a, hit_b, 5011, 2 << 20, 9);
    let has = ha.has();
    let loc = has[0].peer_locator.unwrap();
    assert!(
        loc == l0.addr(&b, Family::V6) || loc == l0.addr(&b, Family::V4),
        "{loc}"
    );
    assert_eq!(
        has[0].peer_lsi,
        Some("1.0.0.42".parse().unwrap()),
        "{has:?}"
    );
    // An IPv4 application reaches b at that LSI.
    let file = lab.artifacts_dir().join("hosts-lsi");
    hipd_support::random_file(&file, 2 << 20, 10);
    let got = hipd_support::socat_tcp(
        &lab,
        &b,
        &a,
        IpAddr::V4(hb.lsi()),
        "1.0.0.42".parse().unwrap(),
        5012,
        &file,
    );
    assert!(
        hipd_support::same_file(&file, &got),
        "data over the hosts-file LSI"
    );
}

/// SIGTERM closes associations (the peer sees CLOSE) and removes hip0 and
/// its routes; a restart comes up cleanly with the same identity.
#[test]
fn hipd_shutdown_closes_and_restart_is_clean() {
    let (lab, a, b, l0) = lab2();
    let (mut ha, hb, hit_a, hit_b) = mapped_pair(&lab, &a, &b, &l0);
    assert_eq!(ha.hipconf(&["daemon", "connect", &hit_b.to_string()]).0, 0);
    assert!(
        a.exec_ok(["ip", "-6", "route", "show", "dev", "hip0"])
            .unwrap()
            .contains("2001:20::/28")
    );

    let p = ha.proc.take().unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = p.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        ha.log_text().contains("associations closed closed=1"),
        "{}",
        ha.log_text()
    );
    wait_until("peer got CLOSE", || {
        hb.has().iter().all(|h| h.state == "CLOSED")
    });
    assert!(
        a.exec(["ip", "link", "show", "hip0"])
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    assert!(
        !a.exec_ok(["ip", "-6", "route", "show"])
            .unwrap()
            .contains("2001:20::/28")
    );
    assert!(!ha.sock.exists(), "control socket removed");

    // Restart: same HIT, new BEX, data flows.
    ha.launch();
    assert_eq!(ha.hit(), hit_a);
    ha.add_map(hit_b, l0.addr(&b, Family::V6), None);
    transfer_to_hit(&lab, &b, &a, hit_b, 5012, 2 << 20, 1);
    assert!(
        hb.has()
            .iter()
            .any(|h| h.state == "ESTABLISHED" || h.state == "R2-SENT")
    );
}

/// `hipd.conf` commands apply at start; a bad line stops the daemon with
/// a message naming it; garbage on the control socket gets typed errors
/// and the daemon keeps serving.
#[test]
fn hipd_conf_file_and_control_socket_garbage() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let (lab, a, b, l0) = lab2();
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let b_ip = l0.addr(&b, Family::V4);
    let conf = format!(
        "# test configuration\nadd map {hit_b} {b_ip} 1.0.0.9 udp\nshotgun on\ndebug low\nset puzzle 2\n"
    );
    let ha = Hipd::start(&lab, &a, &conf, "");
    let (code, out, err) = ha.hipconf(&["daemon", "connect", &hit_b.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let has = ha.has();
    assert_eq!(has[0].transport, "udp");
    assert_eq!(has[0].peer_lsi, Some("1.0.0.9".parse().unwrap()));
    assert_eq!(has[0].peer_locator, Some(b_ip));

    // Garbage on the control socket.
    let s = UnixStream::connect(&ha.sock).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for junk in [
        "not json\n",
        "{\"v\":1}\n",
        "{\"v\":9,\"req\":{\"op\":\"ping\"}}\n",
        "{\"v\":1,\"req\":{\"op\":\"add_map\",\"hit\":\"zz\"}}\n",
        "\n",
    ] {
        w.write_all(junk.as_bytes()).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{junk} -> {line}");
        assert!(v["error"]["code"].is_string());
    }
    // An over-long line closes that connection only.
    let big = vec![b'x'; 100_000];
    let _ = w.write_all(&big);
    let mut line = String::new();
    assert_eq!(r.read_line(&mut line).unwrap_or(0), 0, "connection closed");
    assert_eq!(ha.hipconf(&["daemon", "get", "hi", "default"]).0, 0);

    // A bad hipd.conf line stops the daemon with a clear message.
    let c = lab.add_host("c").unwrap();
    let dir = lab.artifacts_dir().join("c-hip");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hipd.conf"), "nat sideways\n").unwrap();
    let (hipd, _) = bins();
    let p = c
        .spawn([
            hipd.to_str().unwrap(),
            "--config-dir",
            dir.to_str().unwrap(),
            "--control-socket",
            dir.join("s").to_str().unwrap(),
        ])
        .unwrap();
    let out = p.wait_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("hipd.conf line 1"), "{}", out.stderr);
}

/// The HIT device is multi-queue: one queue per CPU (at most 4), each read
/// by its own sealing thread, and traffic over the HIT still flows.
#[test]
fn hipd_tun_has_one_queue_and_thread_per_cpu() {
    let (lab, a, b, l0) = lab2();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let want = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4); // hipd_backend::daemon::MAX_TUN_QUEUES (daemon feature)
    let queues = a.exec_ok(["ls", "/sys/class/net/hip0/queues"]).unwrap();
    let tx = queues
        .split_whitespace()
        .filter(|q| q.starts_with("tx-"))
        .count();
    assert_eq!(tx, want, "hip0 queues: {queues}");
    let pid = ha.proc.as_ref().expect("running").pid();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("hipd-tun"))
        .collect();
    assert_eq!(threads.len(), want, "{threads:?}");
    ha.add_map(hb.hit(), l0.addr(&b, Family::V6), None);
    transfer_to_hit(&lab, &b, &a, hb.hit(), 5020, 4 << 20, 21);
}

/// `hipd -b`: the command returns once the daemon serves (exit 0, the
/// control socket answers at once, the pid file names a live process that
/// SIGTERM stops); a daemon that cannot start makes `-b` exit 1 with its
/// error message.
#[test]
fn hipd_background_start_reports_the_outcome() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let dir = lab.artifacts_dir().join("bg-hip");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts"), "").unwrap();
    let (hipd, _) = bins();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let run = |conf: &str| {
        std::fs::write(dir.join("hipd.conf"), conf).unwrap();
        a.exec([
            hipd.to_str().unwrap(),
            "-b",
            "--config-dir",
            &path(""),
            "--control-socket",
            &path("hipd.sock"),
            "--log-file",
            &path("hipd.log"),
            "--pid-file",
            &path("hipd.pid"),
        ])
        .unwrap()
    };
    // A broken hipd.conf: the daemon stops at startup; -b says so.
    let out = run("no such command\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("hipd.conf"), "{err}");
    assert!(!dir.join("hipd.pid").exists());

    let out = run("");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // Serving already: no retry needed.
    let mut c = Client::connect(dir.join("hipd.sock")).expect("control socket");
    assert!(matches!(c.call(&Request::Ping), Ok(Response::Pong { .. })));
    let pid: i32 = std::fs::read_to_string(dir.join("hipd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Gone, or a zombie waiting for whoever inherited it to reap it.
    wait_until("the background daemon stopped", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    });
    assert!(!dir.join("hipd.pid").exists(), "pid file removed");
}

/// A crash (SIGKILL: no CLOSE, the control socket file left behind) and a
/// restart with the same configuration directory and socket path: the
/// daemon comes up (the stale socket replaced, a fresh hip0), keeps its
/// HIT, runs a new base exchange with the peer (which still holds the old
/// association and replaces it) and data flows both ways.
#[test]
fn hipd_restart_after_sigkill_recovers() {
    use std::os::unix::process::ExitStatusExt;

    let (lab, a, b, l0) = lab2();
    let (mut ha, hb, hit_a, hit_b) = mapped_pair(&lab, &a, &b, &l0);
    transfer_to_hit(&lab, &b, &a, hit_b, 5015, 2 << 20, 15);
    let old_spi_in = ha.has()[0].spi_in;
    wait_until("b established", || {
        hb.has().iter().any(|h| h.state == "ESTABLISHED")
    });

    let out = ha.proc.take().unwrap().kill().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", out.stderr);
    assert!(ha.sock.exists(), "a crash leaves the control socket file");
    assert!(
        !ha.log_text().contains("associations closed"),
        "no clean shutdown happened"
    );
    // The peer was not told: its association is still up.
    let before = hb.has();
    assert!(
        before
            .iter()
            .any(|h| h.state == "ESTABLISHED" && h.peer_hit == Some(hit_a)),
        "{before:?}"
    );

    ha.launch();
    assert_eq!(ha.hit(), hit_a, "same identity after the crash");
    assert!(ha.has().is_empty(), "no association survives the crash");
    assert!(
        a.exec_ok(["ip", "-6", "route", "show", "dev", "hip0"])
            .unwrap()
            .contains("2001:20::/28"),
        "hip0 and its route are back"
    );
    let (code, out, err) = ha.hipconf(&["daemon", "get", "hi", "default"]);
    assert_eq!(code, 0, "{out}{err}");
    ha.add_map(hit_b, l0.addr(&b, Family::V6), None);
    transfer_to_hit(&lab, &b, &a, hit_b, 5016, 4 << 20, 16);
    transfer_to_hit(&lab, &a, &b, hit_a, 5017, 4 << 20, 17);
    let has = ha.has();
    assert_eq!(has.len(), 1, "{has:?}");
    assert_eq!(has[0].state, "ESTABLISHED");
    // b replaced its stale association with the new one.
    let hb_has: Vec<_> = hb
        .has()
        .into_iter()
        .filter(|h| h.peer_hit == Some(hit_a) && h.state == "ESTABLISHED")
        .collect();
    assert_eq!(hb_has.len(), 1, "{hb_has:?}");
    assert_eq!(hb_has[0].spi_out, has[0].spi_in);
    assert_ne!(has[0].spi_in, old_spi_in, "a new SA");
}
