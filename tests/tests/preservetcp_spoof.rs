//! preservetcp against blind spoofing: a segment on one of a connection's
//! alternative pairs moves the connection (the peer moved) only if the
//! peer could have sent it. An attacker who knows the tuple and one of the
//! peer's other addresses, but not the sequence numbers, must not be able
//! to move the connection with a forged ACK, data segment or RST.

mod preservetcp_support;

use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use preservetcp_support::*;
use socket2::{Domain, Protocol, Socket, Type};

/// A TCP segment from `src`:`sport` to `dst`:`dport` with `flags`, the
/// given sequence and acknowledgment numbers and `payload`, checksummed.
fn segment(
    (src, sport): (Ipv6Addr, u16),
    (dst, dport): (Ipv6Addr, u16),
    (seq, ack): (u32, u32),
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload.len());
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&seq.to_be_bytes());
    s.extend_from_slice(&ack.to_be_bytes());
    s.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    let mut acc: u32 = 0;
    let len = u32::try_from(s.len()).unwrap().to_be_bytes();
    let pseudo = [&src.octets()[..], &dst.octets(), &len, &[0, 0, 0, 6]];
    for part in pseudo.into_iter().chain([&s[..]]) {
        for c in part.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let sum = !(acc as u16);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    s
}

const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const RST: u8 = 0x04;
const RST_ACK: u8 = 0x14;

/// The tc ingress program checks the segments against the socket.
#[test]
fn blind_spoofed_segments_do_not_move_a_connection() {
    blind_spoofing(5301, &[], "bpf_alt_implausible");
}

/// Through NFQUEUE (`--no-bpf`) the engine checks them against the
/// socket's state from sock_diag and the handshake's sequence numbers.
#[test]
fn blind_spoofed_segments_do_not_move_a_connection_nfqueue() {
    blind_spoofing(5302, &["--no-bpf"], "implausible_segments");
}

/// A blind attacker's segments on one of the connection's other pairs are
/// counted under `counter` and move nothing; the connection goes on.
fn blind_spoofing(port: u16, extra: &[&str], counter: &str) {
    let t = two_links();
    let bpf = extra.is_empty();
    let (da, db, listener) = daemons_and_listener(&t, port, extra);
    assert_eq!(
        (da.bpf(), db.bpf()),
        (bpf, bpf),
        "the tc programs are loaded"
    );
    let (a0, a1, b0, b1) = t.addrs();
    let (mut c, mut s) = connect_l0(&t, &listener, port);
    read_timeouts(&[&c, &s]);
    let ping = |from: &mut TcpStream, to: &mut TcpStream, n: u8| ping(from, to, n, 64 << 10);
    ping(&mut c, &mut s, 1);
    ping(&mut s, &mut c, 2);
    let conn = da.connections();
    assert_eq!(conn.len(), 1, "{conn:?}");
    assert_eq!(conn[0].peers.len(), 2, "learned b's second address");
    let cport = c.local_addr().expect("local").port();
    let before = da.stat(counter);

    // From b1 (b's address on link 1, which the attacker knows to be the
    // peer's) to a1, with the connection's ports: what a blind attacker on
    // link 1 could send. Numbers far from anything the connection used.
    let forged =
        t.b.run(move || {
            let raw = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::TCP))?;
            raw.bind(&SocketAddr::from((b1, 0)).into())?;
            let to = SocketAddr::from((a1, 0)).into();
            let mut n = 0;
            for (i, (flags, payload)) in [
                (ACK, &b""[..]),
                (PSH_ACK, &b"forged data"[..]),
                (RST, &b""[..]),
                (RST_ACK, &b""[..]),
            ]
            .into_iter()
            .enumerate()
            {
                let k = u32::try_from(i).unwrap();
                let seq = 0x1234_5678_u32.wrapping_add(k.wrapping_mul(0x4000_0000));
                let ack = 0x9abc_def0_u32.wrapping_add(k.wrapping_mul(0x4000_0000));
                let seg = segment((b1, port), (a1, cport), (seq, ack), flags, payload);
                raw.send_to(&seg, &to)?;
                n += 1;
            }
            Ok::<_, std::io::Error>(n)
        })
        .expect("run")
        .expect("raw socket");
    assert_eq!(forged, 4);
    std::thread::sleep(Duration::from_millis(500));

    let conn = da.connections();
    assert_eq!(
        (conn[0].current.local, conn[0].current.peer),
        (a0, b0),
        "the connection stayed on its original pair: {conn:?}\n{}",
        da.log()
    );
    let implausible = da.stat(counter) - before;
    assert!(
        implausible >= 4,
        "all four forged segments were judged implausible ({implausible})\n{}",
        da.log()
    );
    if bpf {
        assert_eq!(da.stat("bpf_follow_rewrites"), 0, "no follow window opened");
    }
    // The connection is unharmed (the RSTs were out of window).
    ping(&mut c, &mut s, 3);
    ping(&mut s, &mut c, 4);
    let conn = da.connections();
    assert_eq!((conn[0].current.local, conn[0].current.peer), (a0, b0));
}
