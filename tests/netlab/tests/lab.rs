//! Integration tests of the lab itself. They need root (CI runs them as root).

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netlab::{Family, FaultAction, Host, Lab, LabError, Link, RateLimit};

const READY: Duration = Duration::from_secs(5);

fn two_hosts_two_links() -> (Lab, Host, Host, Link, Link) {
    let lab = Lab::new().expect("lab (are you root?)");
    let a = lab.add_host("a").expect("host a");
    let b = lab.add_host("b").expect("host b");
    let l0 = lab.link(&a, &b).expect("link 0");
    let l1 = lab.link(&a, &b).expect("link 1");
    lab.wait_usable(READY).expect("links usable");
    (lab, a, b, l0, l1)
}

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `payload` from `from` to `server` (already listening in the peer) and checks the
/// echo of the length back.
fn tcp_roundtrip(from: &Host, server: TcpListener, dst: SocketAddr, payload: Vec<u8>) {
    let len = payload.len();
    let srv = std::thread::spawn(move || {
        let (mut s, peer) = server.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        s.write_all(&(got.len() as u64).to_be_bytes())
            .expect("server write");
        (got, peer)
    });
    let mut c = from
        .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)))
        .expect("run")
        .expect("connect");
    c.write_all(&payload).expect("client write");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut n = [0u8; 8];
    c.read_exact(&mut n).expect("client read");
    assert_eq!(u64::from_be_bytes(n) as usize, len);
    let (got, _) = srv.join().expect("server thread");
    assert_eq!(got, payload);
}

#[test]
fn two_links_carry_ping_and_tcp_in_both_families() {
    let (lab, a, b, l0, l1) = two_hosts_two_links();
    assert!(lab.prefix().starts_with("nl"));

    // Addressing: documentation ranges, shared IPv6 interface identifier across links.
    for l in [&l0, &l1] {
        for h in [&a, &b] {
            let IpAddr::V6(v6) = l.addr(h, Family::V6) else {
                panic!("not v6")
            };
            assert_eq!(v6.segments()[..2], [0x2001, 0x0db8]);
            assert_eq!(v6.segments()[4..], h.interface_id().segments()[4..]);
            let IpAddr::V4(v4) = l.addr(h, Family::V4) else {
                panic!("not v4")
            };
            assert_eq!(v4.octets()[..3], [192, 0, 2]);
            assert_eq!(v4.octets()[3] % 16, h.id());
        }
    }
    assert_ne!(l0.v6_prefix(), l1.v6_prefix());
    assert_ne!(l0.v4_subnet(), l1.v4_subnet());

    // The kernel really has them, and there is no default route.
    let shown = a.exec_ok(["ip", "-o", "addr", "show"]).unwrap();
    for addr in a.addrs() {
        assert!(
            shown.contains(&addr.to_string()),
            "{addr} missing in {shown}"
        );
    }
    assert_eq!(a.addrs().len(), 4);
    for fam in ["-4", "-6"] {
        let routes = a.exec_ok(["ip", fam, "route", "show", "default"]).unwrap();
        assert!(
            routes.trim().is_empty(),
            "unexpected default route: {routes}"
        );
    }

    for l in [&l0, &l1] {
        for fam in Family::ALL {
            // ICMP echo both ways.
            a.ping(l.addr(&b, fam), Duration::from_secs(2))
                .expect("ping a->b");
            b.ping(l.addr(&a, fam), Duration::from_secs(2))
                .expect("ping b->a");
            // TCP with data, server bound to b's address on this link only.
            let bind = l.socket_addr(&b, fam, 0);
            let server = b.run(move || TcpListener::bind(bind)).unwrap().unwrap();
            let dst = server.local_addr().unwrap();
            tcp_roundtrip(&a, server, dst, vec![7u8; 10_000]);
        }
    }
}

#[test]
fn link_down_breaks_only_that_link() {
    let (lab, a, b, l0, l1) = two_hosts_two_links();
    let stamp = l0.down().expect("down");
    for fam in Family::ALL {
        assert!(l0.check_tcp(&a, fam, Duration::from_millis(300)).is_err());
        assert!(
            a.ping(l0.addr(&b, fam), Duration::from_millis(300))
                .is_err()
        );
        l1.check_tcp(&a, fam, Duration::from_secs(2))
            .expect("l1 still works");
    }
    let up = l0.up().expect("up");
    assert!(up.at >= stamp.at);
    assert!(up.requested <= up.at);
    l0.wait_usable(READY).expect("l0 usable again");
    // IPv6 addresses survive down/up (keep_addr_on_down).
    let shown = a
        .exec_ok(["ip", "-o", "-6", "addr", "show", "dev", l0.dev(&a)])
        .unwrap();
    assert!(shown.contains(&l0.addr(&a, Family::V6).to_string()));

    // One side only: carrier goes away for both ends of a veth.
    l1.down_side(&b).expect("down side");
    assert!(
        l1.check_tcp(&a, Family::V6, Duration::from_millis(300))
            .is_err()
    );
    l1.up_side(&b).expect("up side");
    l1.wait_usable(READY).expect("l1 usable again");

    let log = lab.fault_log();
    let downs = log.iter().filter(|e| e.action == FaultAction::Down).count();
    let ups = log.iter().filter(|e| e.action == FaultAction::Up).count();
    assert_eq!((downs, ups), (3, 3), "{log:?}");
}

#[test]
fn receive_drop_is_silent_and_restore_heals() {
    let (lab, a, b, l0, l1) = two_hosts_two_links();
    let broke = l0.drop_rx(&b).expect("drop_rx");
    for fam in Family::ALL {
        let err = l0
            .check_tcp(&a, fam, Duration::from_millis(700))
            .expect_err("connect over the dropped link must fail");
        match err {
            LabError::Io { source, .. } => assert_eq!(
                source.kind(),
                ErrorKind::TimedOut,
                "drop must be silent (a timeout, not a refusal or EPERM)"
            ),
            other => panic!("unexpected error {other}"),
        }
        l1.check_tcp(&a, fam, Duration::from_secs(2))
            .expect("other link works");
        // The sender's transmit path does not notice anything.
        let dst = l0.socket_addr(&b, fam, 9);
        let src = l0.socket_addr(&a, fam, 0);
        a.run(move || {
            let s = UdpSocket::bind(src).unwrap();
            s.send_to(b"into the void", dst)
                .expect("silent: send succeeds");
        })
        .unwrap();
    }
    // b -> a over l0: the SYN arrives at a, the SYN-ACK is dropped at b.
    assert!(
        l0.check_tcp(&b, Family::V6, Duration::from_millis(500))
            .is_err()
    );

    let healed = l0.restore().expect("restore");
    assert!(healed.at > broke.at);
    l0.wait_usable(READY).expect("healed");

    // Both directions at once.
    let both = l0.drop_both().expect("drop_both");
    assert!(both.requested <= both.at);
    for from in [&a, &b] {
        assert!(
            l0.check_tcp(from, Family::V4, Duration::from_millis(300))
                .is_err()
        );
    }
    l1.check_tcp(&b, Family::V4, Duration::from_secs(2))
        .expect("other link works");
    l0.restore().expect("restore both");
    l0.wait_usable(READY).expect("healed");
    let log = lab.fault_log();
    assert!(
        log.iter()
            .any(|e| e.action == FaultAction::DropRx && e.host == "b" && e.link == 0)
    );
    assert!(
        log.iter()
            .any(|e| e.action == FaultAction::RestoreRx && e.host == "b")
    );
}

#[test]
fn counters_rise_on_the_used_link() {
    let (_lab, a, b, l0, l1) = two_hosts_two_links();
    let before0 = l0.counters(&b).unwrap();
    let before1 = l1.counters(&b).unwrap();
    let bind = l1.socket_addr(&b, Family::V6, 0);
    let server = b.run(move || TcpListener::bind(bind)).unwrap().unwrap();
    let dst = server.local_addr().unwrap();
    tcp_roundtrip(&a, server, dst, vec![1u8; 200_000]);
    let d1 = l1.counters(&b).unwrap().since(&before1);
    let d0 = l0.counters(&b).unwrap().since(&before0);
    assert!(d1.rx_bytes >= 200_000, "{d1:?}");
    assert!(d1.tx_packets > 0, "{d1:?}");
    assert!(d0.rx_bytes < 20_000, "idle link carried traffic: {d0:?}");
    let a_side = l1.counters(&a).unwrap();
    assert!(a_side.tx_bytes >= 200_000);
}

#[test]
fn hosts_file_resolves_all_addresses() {
    let (lab, a, b, l0, _l1) = two_hosts_two_links();
    let path = b.hosts_file();
    assert_eq!(path, Path::new("/etc/netns").join(b.netns()).join("hosts"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("localhost"));

    let want: BTreeSet<IpAddr> = b.addrs().into_iter().collect();
    assert_eq!(want.len(), 4);
    let got: BTreeSet<IpAddr> = a
        .resolve(&lab.hosts_name(&b))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(got, want);
    // getent output itself, as a program in the host sees it.
    let raw = a.exec_ok(["getent", "ahosts", "b"]).unwrap();
    for addr in &want {
        assert!(raw.contains(&addr.to_string()), "{addr} not in {raw}");
    }
    // Per-link alias.
    let per_link: BTreeSet<IpAddr> = a.resolve(&l0.hosts_name(&b)).unwrap().into_iter().collect();
    let want0: BTreeSet<IpAddr> = Family::ALL.iter().map(|f| l0.addr(&b, *f)).collect();
    assert_eq!(per_link, want0);

    // Extra names and a resolv.conf.
    let extra: IpAddr = "2001:db8:ffff::99".parse().unwrap();
    lab.add_name("svc", &[extra]).unwrap();
    assert_eq!(b.resolve("svc").unwrap(), vec![extra]);
    let ns_addr = l0.addr(&a, Family::V4);
    lab.set_nameservers(&[ns_addr]).unwrap();
    let rc = b.exec_ok(["cat", "/etc/resolv.conf"]).unwrap();
    assert!(rc.contains(&format!("nameserver {ns_addr}")), "{rc}");
    lab.set_nameservers(&[]).unwrap();
    assert!(!b.resolv_conf_file().exists());
}

#[test]
fn processes_and_closures_run_inside_the_host() {
    let (_lab, a, b, l0, _l1) = two_hosts_two_links();
    // exec: only this host's interfaces are visible.
    let links = a.exec_ok(["ip", "-o", "link", "show"]).unwrap();
    assert!(links.contains(l0.dev(&a)));
    assert!(!links.contains(l0.dev(&b)));
    assert_eq!(
        a.exec_ok(["ip", "netns", "identify"]).unwrap().trim(),
        a.netns()
    );
    let failed = a.exec(["false"]).unwrap();
    assert!(!failed.status.success());
    assert!(matches!(
        a.exec_ok(["false"]),
        Err(LabError::Command { .. })
    ));

    // spawn: background process with collected output.
    let p = b.spawn(["sh", "-c", "echo out; echo err >&2"]).unwrap();
    let out = p.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(out.status.success());
    assert_eq!((out.stdout.trim(), out.stderr.trim()), ("out", "err"));
    let sleeper = b.spawn(["sleep", "100"]).unwrap();
    let pid = sleeper.pid();
    drop(sleeper);
    assert!(
        !Path::new(&format!("/proc/{pid}/ns")).exists(),
        "killed on drop"
    );

    // run: a socket bound to a's address only works inside a.
    let mine = l0.socket_addr(&a, Family::V6, 0);
    assert!(TcpListener::bind(mine).is_err());
    assert!(a.run(move || TcpListener::bind(mine)).unwrap().is_ok());
    // enter: guard for the calling thread.
    {
        let _g = a.enter().unwrap();
        assert!(TcpListener::bind(mine).is_ok());
    }
    assert!(
        TcpListener::bind(mine).is_err(),
        "guard restored the namespace"
    );

    // spawn_thread: a server loop inside b.
    let bind = l0.socket_addr(&b, Family::V4, 0);
    let listener = b.run(move || TcpListener::bind(bind)).unwrap().unwrap();
    let dst = listener.local_addr().unwrap();
    let server = b
        .spawn_thread(move || {
            let (mut s, peer) = listener.accept().unwrap();
            s.write_all(b"hello").unwrap();
            peer
        })
        .unwrap();
    let mut c = a.run(move || TcpStream::connect(dst)).unwrap().unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(server.join().unwrap().ip(), l0.addr(&a, Family::V4));

    // sysctls.
    assert_eq!(a.sysctl_get("net.ipv6.conf.all.accept_dad").unwrap(), "0");
    a.sysctl("net.ipv4.tcp_retries2", "5").unwrap();
    assert_eq!(a.sysctl_get("net.ipv4.tcp_retries2").unwrap(), "5");
    assert_eq!(b.sysctl_get("net.ipv4.tcp_retries2").unwrap(), "15");
}

#[test]
fn drop_removes_namespaces_processes_and_files() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l = lab.link(&a, &b).unwrap();
    l.drop_rx(&b).unwrap();
    let mut sleeper = a.spawn(["sleep", "100"]).unwrap();
    let names = [a.netns().to_owned(), b.netns().to_owned()];
    let dir = lab.artifacts_dir().to_owned();
    assert!(dir.exists());
    assert!(netns_list().contains(&names[0]));
    drop(lab);
    let list = netns_list();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind");
        assert!(!Path::new("/etc/netns").join(n).exists());
    }
    assert!(!dir.exists());
    // The lab killed the process; the guard can still reap it.
    let status = sleeper.try_wait().unwrap();
    let status = match status {
        Some(s) => s,
        None => {
            std::thread::sleep(Duration::from_millis(200));
            sleeper.try_wait().unwrap().expect("killed by the lab")
        }
    };
    assert!(!status.success());
    assert!(matches!(a.exec(["true"]), Err(LabError::Closed)));
    assert!(matches!(l.down(), Err(LabError::Closed)));
}

#[test]
fn panic_inside_a_host_closure_still_cleans_up() {
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    let result = std::panic::catch_unwind(move || {
        let lab = Lab::new().unwrap();
        let a = lab.add_host("a").unwrap();
        let b = lab.add_host("b").unwrap();
        lab.link(&a, &b).unwrap();
        seen.lock()
            .unwrap()
            .extend([a.netns().to_owned(), b.netns().to_owned()]);
        a.run(|| panic!("boom inside the namespace")).unwrap();
    });
    let payload = result.expect_err("the panic propagates out of Host::run");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"boom inside the namespace")
    );
    let names = names.lock().unwrap();
    assert_eq!(names.len(), 2);
    let list = netns_list();
    for n in names.iter() {
        assert!(!list.contains(n.as_str()), "{n} left behind after panic");
    }
}

#[test]
fn parallel_labs_do_not_collide() {
    let workers: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let lab = Lab::new().unwrap();
                let a = lab.add_host("a").unwrap();
                let b = lab.add_host("b").unwrap();
                let l = lab.link(&a, &b).unwrap();
                l.wait_usable(READY).unwrap();
                l.drop_rx(&b).unwrap();
                assert!(
                    l.check_tcp(&a, Family::V4, Duration::from_millis(300))
                        .is_err()
                );
                l.restore().unwrap();
                l.wait_usable(READY).unwrap();
                (
                    lab.prefix().to_owned(),
                    a.netns().to_owned(),
                    l.addr(&b, Family::V4),
                )
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let prefixes: BTreeSet<_> = results.iter().map(|r| r.0.clone()).collect();
    assert_eq!(prefixes.len(), 3, "lab prefixes must be unique");
    // Same addresses in every lab (isolated namespaces), yet all worked at once.
    assert!(results.windows(2).all(|w| w[0].2 == w[1].2));
    let list = netns_list();
    for r in &results {
        assert!(!list.contains(r.1.as_str()));
    }
}

#[test]
fn capture_records_the_link_traffic() {
    let (lab, a, b, l0, _l1) = two_hosts_two_links();
    let cap = l0.capture(&b).unwrap();
    for _ in 0..3 {
        a.ping(l0.addr(&b, Family::V6), Duration::from_secs(2))
            .unwrap();
    }
    let path = cap.stop().unwrap();
    assert!(path.starts_with(lab.artifacts_dir()));
    // Read it back with tcpdump: 3 requests and 3 replies, at least.
    let out = std::process::Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&path)
        .arg("icmp6 and (ip6[40] == 128 or ip6[40] == 129)")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() >= 6, "capture: {text}");
    assert!(text.contains(&l0.addr(&a, Family::V6).to_string()));
}

#[test]
fn rate_limit_installs_and_removes_tbf() {
    let (lab, a, _b, l0, _l1) = two_hosts_two_links();
    let dev = l0.dev(&a).to_owned();
    let show = |a: &Host| a.exec_ok(["tc", "qdisc", "show", "dev", &dev]).unwrap();
    l0.rate_limit(&a, RateLimit::mbit(10)).unwrap();
    assert!(show(&a).contains("tbf"), "{}", show(&a));
    l0.clear_rate_limit(&a).unwrap();
    assert!(!show(&a).contains("tbf"));
    l0.rate_limit(&a, RateLimit::mbit(5)).unwrap();
    l0.restore().unwrap();
    assert!(!show(&a).contains("tbf"));
    l0.wait_usable(READY).unwrap();
    let log = lab.fault_log();
    assert!(log.iter().any(
        |e| matches!(e.action, FaultAction::RateLimit(r) if r.rate_bits_per_sec == 10_000_000)
    ));
}

#[test]
fn misuse_is_reported_with_typed_errors() {
    let lab = Lab::new().unwrap();
    assert!(matches!(
        lab.add_host("Bad Name"),
        Err(LabError::InvalidName(_))
    ));
    assert!(matches!(
        lab.add_host("waytoolonghostname"),
        Err(LabError::InvalidName(_))
    ));
    let a = lab.add_host("a").unwrap();
    assert!(matches!(lab.add_host("a"), Err(LabError::DuplicateHost(_))));
    assert!(matches!(lab.link(&a, &a), Err(LabError::BadLink(..))));
    let b = lab.add_host("b").unwrap();
    let c = lab.add_host("c").unwrap();
    let l = lab.link(&a, &b).unwrap();
    assert!(matches!(l.drop_rx(&c), Err(LabError::NotOnLink { .. })));
    assert!(l.try_addr(&c, Family::V6).is_err());
    let other = Lab::new().unwrap();
    let x = other.add_host("x").unwrap();
    assert!(matches!(lab.link(&a, &x), Err(LabError::BadLink(..))));
    assert!(netlab::find_in_path("definitely-not-a-netlab-tool").is_none());
    assert!(netlab::Tool::Nft.require().is_ok());
    lab.close().unwrap();
}

#[test]
fn cleanup_stale_removes_leftovers_of_dead_processes() {
    // A pid that does not exist (pid_max is at most 2^22).
    let dead = (4_194_000..4_194_300)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    // Unique per test process, so parallel runs of this test do not collide.
    let name = format!("nl{dead}-{}-ghost", std::process::id());
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::create_dir_all(Path::new("/etc/netns").join(&name)).unwrap();
    let alive = Lab::new().unwrap(); // also runs cleanup_stale, so the ghost may go here
    let h = alive.add_host("h").unwrap();
    let report = netlab::cleanup_stale().unwrap();
    assert!(!netns_list().contains(&name));
    assert!(!Path::new("/etc/netns").join(&name).exists());
    assert!(!report.namespaces.contains(&h.netns().to_owned()));
    assert!(netns_list().contains(h.netns()), "live labs are left alone");
}

#[test]
fn not_root_gets_typed_error() {
    const CHILD: &str = "NETLAB_NOT_ROOT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        // Running as `nobody` (see below).
        assert!(matches!(Lab::new(), Err(LabError::NotRoot)));
        assert!(matches!(netlab::cleanup_stale(), Err(LabError::NotRoot)));
        return;
    }
    // Re-run this very test as an unprivileged user from a world-readable copy of the binary.
    let exe = std::env::current_exe().unwrap();
    let copy = std::env::temp_dir().join(format!("netlab-notroot-{}", std::process::id()));
    std::fs::copy(&exe, &copy).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(["--exact", "not_root_gets_typed_error", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("setpriv (util-linux)");
    let _ = std::fs::remove_file(&copy);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Lab>();
    check::<Host>();
    check::<Link>();
    check::<netlab::Capture>();
    check::<netlab::Process>();
}
