//! hipd lab tests: base exchange and ESP data over the native and UDP
//! underlays, IPv6 and IPv4, applications on HITs and LSIs.

mod hipd_support;

use std::net::IpAddr;
use std::time::Duration;

use hipd_backend::control::{NatMode, Request};
use hipd_support::{Hipd, random_file, same_file, socat_tcp, transfer_to_hit};
use netlab::{Family, Lab};

const MB: usize = 1 << 20;

fn two_hosts() -> (Lab, netlab::Host, netlab::Host, netlab::Link, netlab::Link) {
    let lab = Lab::new().expect("lab");
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    let l1 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    (lab, a, b, l0, l1)
}

/// BEX over native IPv6 (protocol 139), then 100 MB over TCP between HITs
/// with socat, byte-exact; `get ha` shows the association on both sides.
#[test]
fn hipd_native_v6_tcp_100mb_over_hits() {
    let (lab, a, b, l0, _l1) = two_hosts();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let hit_a = ha.hit();
    let b_ip = l0.addr(&b, Family::V6);
    ha.add_map(hit_b, b_ip, None);

    let file = lab.artifacts_dir().join("in-100m");
    random_file(&file, 100 * MB, 7);
    let got = socat_tcp(
        &lab,
        &b,
        &a,
        IpAddr::V6(hit_b),
        IpAddr::V6(hit_b),
        5001,
        &file,
    );
    assert!(same_file(&file, &got), "received data differs");

    let has_a = ha.has();
    assert_eq!(has_a.len(), 1, "{has_a:?}");
    let x = &has_a[0];
    assert_eq!(x.state, "ESTABLISHED");
    assert_eq!(x.peer_hit, Some(hit_b));
    assert_eq!(x.local_hit, hit_a);
    assert_eq!(x.peer_locator, Some(b_ip));
    assert_eq!(x.transport, "native");
    assert!(x.spi_in != 0 && x.spi_out != 0);
    assert!(x.esp_out > 70_000, "ESP packets out: {}", x.esp_out);
    let has_b = hb.has();
    assert_eq!(has_b.len(), 1);
    assert_eq!(has_b[0].state, "ESTABLISHED");
    assert_eq!(has_b[0].peer_hit, Some(hit_a));
    assert_eq!(has_b[0].spi_in, x.spi_out);
    assert_eq!(has_b[0].spi_out, x.spi_in);
    let sb = hb.stats();
    assert!(sb.esp_rx > 70_000, "{sb:?}");
    assert_eq!(sb.esp_bad, 0, "{sb:?}");
}

/// UDP applications on a HIT and on LSIs move 100 MB each, byte-exact
/// (native IPv6 underlay; the application resends what UDP lost).
#[test]
fn hipd_udp_applications_100mb_over_hit_and_lsi() {
    let (lab, a, b, l0, _l1) = two_hosts();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let b_lsi: std::net::Ipv4Addr = "1.0.0.6".parse().unwrap();
    ha.add_map(hit_b, l0.addr(&b, Family::V6), Some(b_lsi));
    let esp0 = hb.stats().esp_rx;
    let resent = hipd_support::udp_transfer(
        &b,
        &a,
        IpAddr::V6(hit_b),
        IpAddr::V6(hit_b),
        5021,
        100 * MB,
        31,
    );
    eprintln!("HIT: {resent} datagrams resent");
    let resent = hipd_support::udp_transfer(
        &b,
        &a,
        IpAddr::V4(hb.lsi()),
        IpAddr::V4(b_lsi),
        5022,
        100 * MB,
        32,
    );
    eprintln!("LSI: {resent} datagrams resent");
    // 200 MB in 1200-byte datagrams: ~175,000 ESP packets into b.
    let st = hb.stats();
    assert!(st.esp_rx - esp0 >= 170_000, "{st:?}");
    assert_eq!(st.esp_bad, 0, "{st:?}");
}

/// UDP encapsulation (port 10500) over IPv4, applications on LSIs: 100 MB
/// over TCP between LSIs, byte-exact.
#[test]
fn hipd_udp_v4_tcp_100mb_over_lsis() {
    let (lab, a, b, l0, _l1) = two_hosts();
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let b_ip = l0.addr(&b, Family::V4);
    let (code, out, err) = ha.hipconf(&[
        "daemon",
        "add",
        "map",
        &hit_b.to_string(),
        &b_ip.to_string(),
        "1.0.0.5",
        "udp",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let file = lab.artifacts_dir().join("in-lsi");
    random_file(&file, 100 * MB, 11);
    let got = socat_tcp(
        &lab,
        &b,
        &a,
        IpAddr::V4(hb.lsi()),
        "1.0.0.5".parse().unwrap(),
        5002,
        &file,
    );
    assert!(same_file(&file, &got), "received data differs");
    let has = ha.has();
    assert_eq!(has.len(), 1, "{has:?}");
    assert_eq!(has[0].state, "ESTABLISHED");
    assert_eq!(has[0].transport, "udp");
    assert_eq!(has[0].peer_locator, Some(b_ip));
    assert_eq!(has[0].peer_lsi, Some("1.0.0.5".parse().unwrap()));
    assert_eq!(hb.has()[0].transport, "udp");
    assert!(hb.stats().esp_rx > 70_000);
    // ping to the peer's LSI (ICMP echo translated to ICMPv6 inside ESP).
    let out = a
        .exec(["ping", "-c", "3", "-i", "0.2", "-W", "2", "1.0.0.5"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping over the LSI failed: {text}");
    assert!(text.contains("3 received"), "{text}");
}

/// UDP encapsulation over a link whose MTU (1280) is below the outer
/// packets hip0's MTU makes: the kernel refuses UDP segmentation offload
/// for such runs (a segment larger than the route MTU) and hipd sends them
/// datagram by datagram (the kernel fragments each); the transfer is
/// complete and exact.
#[test]
fn hipd_udp_offload_falls_back_on_a_small_mtu_link() {
    let (lab, a, b, l0, _l1) = two_hosts();
    for h in [&a, &b] {
        h.exec_ok(["ip", "link", "set", "dev", l0.dev(h), "mtu", "1280"])
            .unwrap();
    }
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let b_ip = l0.addr(&b, Family::V6);
    ha.call(Request::AddMap {
        hit: hit_b,
        ip: b_ip,
        lsi: None,
        transport: Some(NatMode::PlainUdp),
    });
    transfer_to_hit(&lab, &b, &a, hit_b, 5003, 20 * MB, 12);
    let has = ha.has();
    assert_eq!(has[0].transport, "udp");
    assert_eq!(has[0].peer_locator, Some(b_ip));
    assert!(hb.stats().esp_rx > 14_000, "{:?}", hb.stats());
}

fn udp_echo_check(
    server: &netlab::Host,
    client: &netlab::Host,
    bind: IpAddr,
    dst: IpAddr,
    port: u16,
) {
    let bind: std::net::SocketAddr = (bind, port).into();
    let dst: std::net::SocketAddr = (dst, port).into();
    let srv = server
        .run(move || std::net::UdpSocket::bind(bind))
        .unwrap()
        .expect("bind UDP on HIT/LSI");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        srv.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = 0;
        while let Ok((k, from)) = srv.recv_from(&mut buf) {
            srv.send_to(&buf[..k], from).unwrap();
            n += 1;
            if n == 300 {
                break;
            }
        }
        n
    });
    let any: std::net::SocketAddr = match dst.ip() {
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
    };
    let cli = client
        .run(move || std::net::UdpSocket::bind(any))
        .unwrap()
        .unwrap();
    cli.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut ok = 0;
    for i in 0..300u32 {
        let msg: Vec<u8> = (0..1200u32)
            .map(|j| (i.wrapping_mul(31) ^ j) as u8)
            .collect();
        let mut tries = 0;
        loop {
            cli.send_to(&msg, dst).unwrap();
            let mut buf = [0u8; 2048];
            match cli.recv_from(&mut buf) {
                Ok((k, _)) if buf[..k] == msg[..] => {
                    ok += 1;
                    break;
                }
                Ok(_) => panic!("echo differs"),
                Err(_) if tries < 5 => tries += 1, // first packet waits for the BEX
                Err(e) => panic!("no echo for datagram {i}: {e}"),
            }
        }
    }
    assert_eq!(ok, 300);
    assert!(echo.join().unwrap() >= 300);
}

/// Native HIP over IPv4 and UDP encapsulation over IPv6, with UDP and TCP
/// applications on HITs and LSIs.
#[test]
fn hipd_native_v4_and_udp_v6_small_apps() {
    let (lab, a, b, l0, l1) = two_hosts();
    let conf_b = "";
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, conf_b, "");
    let hit_b = hb.hit();
    // Native over IPv4 (link 0): UDP echo over HITs.
    ha.add_map(
        hit_b,
        l0.addr(&b, Family::V4),
        Some("1.0.0.7".parse().unwrap()),
    );
    udp_echo_check(&b, &a, IpAddr::V6(hit_b), IpAddr::V6(hit_b), 6000);
    let has = ha.has();
    assert_eq!(has[0].transport, "native");
    assert_eq!(has[0].peer_locator, Some(l0.addr(&b, Family::V4)));
    // UDP echo over LSIs on the same association.
    udp_echo_check(
        &b,
        &a,
        IpAddr::V4(hb.lsi()),
        "1.0.0.7".parse().unwrap(),
        6001,
    );

    // A third host reached over UDP/IPv6.
    let c = lab.add_host("c").unwrap();
    let l2 = lab.link(&a, &c).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    let hc = Hipd::start(&lab, &c, "", "");
    let hit_c = hc.hit();
    let (code, out, err) = ha.hipconf(&[
        "daemon",
        "add",
        "map",
        &hit_c.to_string(),
        &l2.addr(&c, Family::V6).to_string(),
        "udp",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    transfer_to_hit(&lab, &c, &a, hit_c, 5003, 10 * MB, 3);
    udp_echo_check(&c, &a, IpAddr::V6(hit_c), IpAddr::V6(hit_c), 6002);
    let x: Vec<_> = ha
        .has()
        .into_iter()
        .filter(|h| h.peer_hit == Some(hit_c))
        .collect();
    assert_eq!(x[0].transport, "udp");
    assert_eq!(x[0].peer_locator, Some(l2.addr(&c, Family::V6)));
    let _ = l1;
}
