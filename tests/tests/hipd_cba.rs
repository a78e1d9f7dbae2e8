//! hipd lab test: credit-based authorization (RFC 8046 §5.6). A bulk
//! transfer runs while the peer moves to an address whose address
//! verification cannot complete; ESP to that UNVERIFIED locator stays
//! within the credit the peer earned by what it sent, the excess is
//! dropped and counted, and once the locator is verified the transfer
//! completes byte-exact.

mod hipd_support;

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use hipd_support::{Hipd, Transfer, engine_counter, peer_locator_state, wait_for};
use netlab::{Family, Host, Lab};

const MB: usize = 1 << 20;

/// Runs one `nft` command in `host`.
fn nft(host: &Host, cmd: &str) {
    host.exec_ok(["nft", cmd]).unwrap();
}

/// (packets, bytes) of the counter rule commented `name` in table
/// `inet hipdcba` of `host`.
fn counter(host: &Host, name: &str) -> (u64, u64) {
    let out = host
        .exec_ok(["nft", "list", "table", "inet", "hipdcba"])
        .unwrap();
    let line = out
        .lines()
        .find(|l| l.contains(&format!("comment \"{name}\"")))
        .unwrap_or_else(|| panic!("no counter {name} in\n{out}"));
    let num = |key: &str| -> u64 {
        let mut words = line.split_whitespace();
        words.find(|w| *w == key);
        words
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    (num("packets"), num("bytes"))
}

/// ESP bytes (without the 40-byte IPv6 header) of an nft counter.
fn esp_bytes((packets, bytes): (u64, u64)) -> u64 {
    bytes - 40 * packets
}

/// b moves to an address (add the new one, then remove the old one) while
/// a sends 40 MB to b's HIT; b silently drops every HIP control packet to
/// its new address, so a's address verification (UPDATE with
/// ECHO_REQUEST_SIGNED) cannot complete and the new locator stays
/// UNVERIFIED while a's path already uses it (the old one is deprecated).
/// ESP gets through: whatever a sends there is within the credit (at most
/// the ESP bytes a received from b, counted by nftables on a) and the rest
/// is dropped (`esp_cba_dropped` rises). Once the drop is lifted, the
/// verification's retransmission completes it, the limit goes away and
/// the transfer completes byte-exact.
#[test]
fn hipd_esp_to_an_unverified_locator_stays_within_the_credit() {
    let lab = Lab::new().unwrap();
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(5)).unwrap();
    // IPv6 only: an IPv4 locator would give a an ACTIVE alternative.
    for h in [&a, &b] {
        h.exec_ok(["ip", "-4", "addr", "flush", "dev", l0.dev(h)])
            .unwrap();
    }
    let ha = Hipd::start(&lab, &a, "", "");
    let hb = Hipd::start(&lab, &b, "", "");
    let hit_b = hb.hit();
    let old = l0.addr(&b, Family::V6);
    let IpAddr::V6(o) = old else { panic!("v6") };
    let mut seg = o.segments();
    seg[7] = 0x77;
    let new = Ipv6Addr::from(seg);
    ha.add_map(hit_b, old, None);

    // a counts all ESP it receives and the ESP it sends to b's new
    // address (IPv6, no extension headers: 40 bytes of header each).
    nft(&a, "add table inet hipdcba");
    nft(
        &a,
        "add chain inet hipdcba in { type filter hook input priority 0 ; }",
    );
    nft(
        &a,
        "add chain inet hipdcba out { type filter hook output priority 0 ; }",
    );
    nft(
        &a,
        "add rule inet hipdcba in meta l4proto 50 counter comment \"esp_in\"",
    );
    nft(
        &a,
        &format!(
            "add rule inet hipdcba out ip6 daddr {new} meta l4proto 50 counter comment \"esp_new\""
        ),
    );

    l0.rate_limit(&a, netlab::RateLimit::mbit(200)).unwrap();
    let t = Transfer::start(&lab, &b, &a, hit_b, 5040, 40 * MB, 40);
    t.wait_received(4 * MB as u64, Duration::from_secs(20));
    assert_eq!(engine_counter(&ha, "esp_cba_dropped"), 0);
    assert_eq!(engine_counter(&ha, "esp_cba_bytes"), 0);

    // b: HIP control to the new address is lost (ESP is not).
    nft(&b, "add table inet hipdcba");
    nft(
        &b,
        "add chain inet hipdcba in { type filter hook input priority -10 ; }",
    );
    nft(
        &b,
        &format!("add rule inet hipdcba in ip6 daddr {new} meta l4proto 139 drop"),
    );
    let dev = l0.dev(&b).to_string();
    hipd_support::readdress_v6(&b, &dev, old, new);
    wait_for(
        "a's path uses b's new, unverified locator",
        Duration::from_secs(10),
        &[&ha, &hb],
        || {
            ha.has().first().and_then(|h| h.peer_locator) == Some(IpAddr::V6(new))
                && peer_locator_state(&ha, IpAddr::V6(new)).as_deref() == Some("unverified")
        },
    );
    let switched = Instant::now();
    let keepalives_before = ha.stats().keepalives_tx;
    let received_at_switch = t.received();
    // Hold the verification off for about a second (the UPDATE
    // retransmissions give up, and b closes, after about 3 s).
    wait_for(
        "a drops ESP to the unverified locator",
        Duration::from_millis(1500),
        &[&ha, &hb],
        || engine_counter(&ha, "esp_cba_dropped") > 0,
    );
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(switched.elapsed()));
    let sent_new = esp_bytes(counter(&a, "esp_new"));
    let esp_in = esp_bytes(counter(&a, "esp_in"));
    let allowed = engine_counter(&ha, "esp_cba_bytes");
    let dropped = engine_counter(&ha, "esp_cba_dropped");
    let still = peer_locator_state(&ha, IpAddr::V6(new));
    let progress = t.received() - received_at_switch;
    // Failure detection's ESP keepalives (dummy packets) are not data.
    let keepalives = ha.stats().keepalives_tx - keepalives_before;
    eprintln!(
        "unverified for {:?}: sent {sent_new} ESP bytes to it (daemon: {allowed}), \
         received {esp_in} ESP bytes in all, dropped {dropped} packets, \
         {progress} bytes of data arrived, {keepalives} keepalives sent",
        switched.elapsed()
    );
    assert_eq!(still.as_deref(), Some("unverified"), "verified too early");
    assert!(sent_new > 0, "nothing was sent within the credit");
    // Keepalives are sent by failure detection outside the credit (at
    // most 256 bytes each).
    assert!(
        sent_new <= esp_in + 256 * keepalives,
        "{sent_new} ESP bytes to the unverified locator exceed the {esp_in} received \
         (and {keepalives} keepalives)"
    );
    assert!(
        sent_new <= allowed + 256 * keepalives,
        "{sent_new} sent, {allowed} authorized, {keepalives} keepalives"
    );
    assert!(allowed <= esp_in, "{allowed} authorized, {esp_in} received");
    assert!(dropped > 0, "nothing dropped");

    // The verification completes once its packets get through.
    nft(&b, "delete table inet hipdcba");
    wait_for(
        "a verified b's new locator",
        Duration::from_secs(10),
        &[&ha, &hb],
        || peer_locator_state(&ha, IpAddr::V6(new)).as_deref() == Some("active"),
    );
    let after_verify = engine_counter(&ha, "esp_cba_bytes");
    t.finish(Duration::from_secs(60));
    let has = ha.has();
    assert_eq!(has[0].state, "ESTABLISHED", "{has:?}");
    assert_eq!(has[0].peer_locator, Some(IpAddr::V6(new)), "{has:?}");
    // Verified: no more credit accounting for that locator.
    assert_eq!(engine_counter(&ha, "esp_cba_bytes"), after_verify);
    let sent_total = esp_bytes(counter(&a, "esp_new"));
    assert!(
        sent_total > 30 * MB as u64,
        "only {sent_total} bytes to b's new address"
    );
}
