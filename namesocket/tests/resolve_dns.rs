//! Resolver against a real DNS server (dnsmasq on 127.0.0.0/8) and against
//! hosts files.
//!
//! Only loopback addresses are contacted. The AAAA records use the
//! documentation prefix 2001:db8::/32 as data: nothing is ever sent to them.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use namesocket::resolve::{DnsConfig, Origin, ResolveError, Resolver, ResolverConfig};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nsresolve-it-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HOSTS: &str = "\
127.0.0.11 multi.nsr.test
127.0.0.12 multi.nsr.test
::1 multi.nsr.test
127.0.0.13 multi.nsr.test
2001:db8::11 multi.nsr.test
2001:db8::12 multi.nsr.test
127.0.0.21 v4only.nsr.test
2001:db8::31 v6only.nsr.test
127.0.0.41 shadowed.nsr.test
";

/// Start dnsmasq on `ip:port` (port 0 = pick a free one) serving [`HOSTS`]
/// authoritatively for nsr.test.
fn start_dnsmasq(tag: &str, ip: &str, port: u16) -> Option<Dnsmasq> {
    let dir = tmpdir(tag);
    let hosts = dir.join("dns-hosts");
    std::fs::write(&hosts, HOSTS).unwrap();
    let port = if port == 0 {
        let s = UdpSocket::bind((ip, 0)).unwrap();
        s.local_addr().unwrap().port()
    } else {
        if UdpSocket::bind((ip, port)).is_err() {
            return None;
        }
        port
    };
    let child = Command::new(DNSMASQ)
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file=",
            &format!("--port={port}"),
            &format!("--listen-address={ip}"),
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            &format!("--addn-hosts={}", hosts.display()),
            "--local=/nsr.test/",
            "--txt-record=txtonly.nsr.test,hello",
            "--user=root",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    let addr: SocketAddr = SocketAddr::new(ip.parse().unwrap(), port);
    let d = Dnsmasq { child, addr };
    // Ready when the port is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while UdpSocket::bind(addr).is_ok() {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(d)
}

fn resolver_for(d: &Dnsmasq, hosts: Option<&Path>, search: &[&str]) -> Resolver {
    Resolver::new(ResolverConfig {
        hosts_path: hosts.map(Path::to_path_buf),
        dns: DnsConfig::Servers {
            servers: vec![d.addr],
            search: search.iter().map(|s| s.to_string()).collect(),
            ndots: 1,
        },
        query_timeout: Some(Duration::from_secs(2)),
        attempts: Some(2),
        ..ResolverConfig::default()
    })
}

fn ips(addrs: &[SocketAddr]) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    v.sort();
    v
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn all_multi() -> Vec<IpAddr> {
    let mut v = vec![
        ip("127.0.0.11"),
        ip("127.0.0.12"),
        ip("127.0.0.13"),
        ip("::1"),
        ip("2001:db8::11"),
        ip("2001:db8::12"),
    ];
    v.sort();
    v
}

#[test]
fn dns_name_with_several_a_and_aaaa_resolves_to_all() {
    let d = start_dnsmasq("all", "127.0.0.1", 0).expect("dnsmasq");
    let r = resolver_for(&d, None, &[]);
    let res = r.resolve("multi.nsr.test", "8080").unwrap();
    assert_eq!(res.origin, Origin::Dns);
    assert_eq!(res.port, 8080);
    assert_eq!(ips(&res.addrs), all_multi());
    assert!(res.addrs.iter().all(|a| a.port() == 8080));
    // AAAA answers come first.
    assert!(res.addrs[0].is_ipv6());
}

#[test]
fn dns_partial_families_and_errors() {
    let d = start_dnsmasq("partial", "127.0.0.1", 0).expect("dnsmasq");
    let r = resolver_for(&d, None, &[]);
    let v4 = r.resolve("v4only.nsr.test", "1").unwrap();
    assert_eq!(ips(&v4.addrs), vec![ip("127.0.0.21")]);
    let v6 = r.resolve("v6only.nsr.test", "1").unwrap();
    assert_eq!(ips(&v6.addrs), vec![ip("2001:db8::31")]);
    let nx = r.resolve("nosuch.nsr.test", "1").unwrap_err();
    assert!(matches!(nx, ResolveError::NotFound(_)), "{nx:?}");
    assert_eq!(nx.errno(), libc::EAI_NONAME);
    let nodata = r.resolve("txtonly.nsr.test", "1").unwrap_err();
    assert!(matches!(nodata, ResolveError::NoAddresses(_)), "{nodata:?}");
    assert_eq!(nodata.errno(), libc::EAI_NODATA);
}

#[test]
fn dns_search_domains_and_ndots() {
    let d = start_dnsmasq("search", "127.0.0.1", 0).expect("dnsmasq");
    let r = resolver_for(&d, None, &["nsr.test"]);
    let res = r.resolve("multi", "1").unwrap();
    assert_eq!(ips(&res.addrs), all_multi());
    // Without the search list the short name is unknown.
    let r = resolver_for(&d, None, &[]);
    assert!(r.resolve("multi", "1").is_err());
}

#[test]
fn resolv_conf_file_is_honoured() {
    // resolv.conf cannot carry a port, so the server runs on port 53 of a
    // spare loopback address.
    let candidates = ["127.0.0.77", "127.0.0.78", "127.0.0.79", "127.0.0.80"];
    let Some(d) = candidates
        .iter()
        .find_map(|a| start_dnsmasq(&format!("rc-{a}"), a, 53))
    else {
        panic!("no loopback address with a free port 53 (this test needs root)");
    };
    let dir = tmpdir("resolvconf");
    let rc = dir.join("resolv.conf");
    std::fs::write(
        &rc,
        format!(
            "# test\nnameserver {}\nsearch nsr.test\noptions ndots:1 timeout:2 attempts:2\n",
            d.addr.ip()
        ),
    )
    .unwrap();
    let r = Resolver::new(
        ResolverConfig::default()
            .without_hosts_file()
            .with_resolv_conf(&rc),
    );
    let res = r.resolve("multi", "1").unwrap();
    assert_eq!(ips(&res.addrs), all_multi());
}

#[test]
fn hosts_file_wins_over_dns_and_returns_every_line() {
    let d = start_dnsmasq("hosts", "127.0.0.1", 0).expect("dnsmasq");
    let dir = tmpdir("hostsfile");
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "# netns hosts\n127.0.0.51 shadowed.nsr.test sh\n::1 shadowed.nsr.test\n\
         fe80::1%lo shadowed.nsr.test # scoped\n127.0.0.52\tsh  shadowed.nsr.test\n",
    )
    .unwrap();
    let r = resolver_for(&d, Some(&hosts), &[]);
    let res = r.resolve("shadowed.nsr.test", "9").unwrap();
    assert_eq!(res.origin, Origin::HostsFile);
    let lo_index = nix::net::if_::if_nametoindex("lo").unwrap();
    let expect: Vec<SocketAddr> = vec![
        "127.0.0.51:9".parse().unwrap(),
        "[::1]:9".parse().unwrap(),
        SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            9,
            0,
            lo_index,
        )),
        "127.0.0.52:9".parse().unwrap(),
    ];
    assert_eq!(res.addrs, expect);
    // Alias works too; a name only in DNS still goes to DNS.
    assert_eq!(
        ips(&r.resolve("sh", "9").unwrap().addrs),
        vec![ip("127.0.0.51"), ip("127.0.0.52")]
    );
    let dns = r.resolve("v4only.nsr.test", "9").unwrap();
    assert_eq!(dns.origin, Origin::Dns);
}

#[test]
fn total_timeout_gives_timeout_error() {
    // A UDP socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = ResolverConfig::default()
        .without_hosts_file()
        .with_name_servers(vec![silent.local_addr().unwrap()])
        .with_total_timeout(Duration::from_millis(300));
    cfg.query_timeout = Some(Duration::from_secs(5));
    let e = Resolver::new(cfg).resolve("x.nsr.test", "1").unwrap_err();
    assert!(matches!(e, ResolveError::Timeout(_)), "{e:?}");
    assert_eq!(e.errno(), libc::EAI_AGAIN);
    assert_eq!(e.os_errno(), libc::ETIMEDOUT);
}

#[tokio::test(flavor = "current_thread")]
async fn async_api_and_blocking_api_inside_runtime() {
    let d = start_dnsmasq("async", "127.0.0.1", 0).expect("dnsmasq");
    let r = resolver_for(&d, None, &[]);
    let a = r.resolve_async("multi.nsr.test", "80").await.unwrap();
    assert_eq!(ips(&a.addrs), all_multi());
    // The blocking API called from inside a (current-thread) runtime must not
    // panic or deadlock.
    let b = r.resolve("multi.nsr.test", "80").unwrap();
    assert_eq!(ips(&b.addrs), all_multi());
}
