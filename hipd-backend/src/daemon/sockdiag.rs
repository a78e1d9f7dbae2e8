//! Exact socket-owner lookup through `NETLINK_SOCK_DIAG`.
//!
//! `SOL_SHIM` requests name a flow (protocol, local/peer address and
//! port); the daemon only serves the uid that owns the connected socket of
//! that flow. Scanning `/proc/net/{tcp,udp}{,6}` walks the whole socket
//! hash (milliseconds per call); instead we send one
//! `SOCK_DIAG_BY_FAMILY` request *without* `NLM_F_DUMP`, which makes the
//! kernel do a single hash lookup for the full 4-tuple
//! (`inet_diag_find_one_icsk` for TCP, `udp_dump_one` for UDP) and answer
//! with one `inet_diag_msg` whose `idiag_uid` is the owner.
//!
//! Choices, kept stable:
//! - The cookie is `INET_DIAG_NOCOOKIE` (all `0xff`): we do not know it and
//!   the 4-tuple is exact. The interface index is 0 (sockets not bound to
//!   a device; the flow carries no scope).
//! - TCP takes `id.src` = local end and `id.dst` = remote end. UDP's
//!   `udp_dump_one` passes `id.src`/`sport` as the *packet source*, i.e.
//!   the remote end, so for UDP the packet orientation is asked first and
//!   the natural one second (either answer is only accepted if it names
//!   this flow, so the order only changes the cost).
//! - An answer is accepted only if its socket id equals the flow
//!   (local = `flow.local:local_port`, remote = `flow.peer:peer_port`,
//!   IPv4-mapped IPv6 compared as IPv4). A dual-stack IPv6 socket talking
//!   to an IPv4 peer reports v4-mapped addresses; if the AF_INET6 lookup
//!   of such a flow fails it is retried as AF_INET.
//! - One netlink socket per call (no shared state, no stale replies), with
//!   a 1 s receive timeout. Any error gives `None`; nothing panics.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use crate::control::FlowId;

/// `INET_DIAG_NOCOOKIE`: "no cookie, match on the tuple only".
const NOCOOKIE: [u8; 8] = [0xff; 8];
const ENOENT: i32 = 2;

/// One end of a flow as compared with the kernel's answer.
type End = (IpAddr, u16);

/// The uid owning the connected TCP/UDP socket of `flow`, looked up
/// exactly through sock_diag in the daemon's network namespace.
pub(super) fn socket_owner(flow: &FlowId) -> Option<u32> {
    let proto = match flow.proto {
        6 => IPPROTO_TCP,
        17 => IPPROTO_UDP,
        _ => return None,
    };
    let local = (flow.local.to_canonical(), flow.local_port);
    let remote = (flow.peer.to_canonical(), flow.peer_port);
    if local.0.is_ipv4() != remote.0.is_ipv4() {
        return None;
    }
    let mut sock = open().ok()?;
    let mut seq = 0u32;
    let mut families = vec![(family_of(flow.local, flow.peer)?, flow.local, flow.peer)];
    if let (IpAddr::V6(_), IpAddr::V4(l4), IpAddr::V4(p4)) = (flow.local, local.0, remote.0) {
        // Dual-stack socket with v4-mapped addresses: also try AF_INET.
        families.push((AF_INET, IpAddr::V4(l4), IpAddr::V4(p4)));
    }
    for (family, l, p) in families {
        let le = (l, flow.local_port);
        let pe = (p, flow.peer_port);
        // (id.src, id.dst) orientations to try, see the module docs.
        let orders: &[(End, End)] = if proto == IPPROTO_TCP {
            &[(le, pe)]
        } else {
            &[(pe, le), (le, pe)]
        };
        for &(src, dst) in orders {
            seq = seq.wrapping_add(1);
            match query(&mut sock, seq, family, proto, src, dst) {
                Ok(Some((id, uid))) if answer_is(&id, local, remote) => return Some(uid),
                // Another socket (e.g. the loopback peer) or nothing: go on.
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
    None
}

fn family_of(local: IpAddr, peer: IpAddr) -> Option<u8> {
    match (local, peer) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Some(AF_INET),
        (IpAddr::V6(_), IpAddr::V6(_)) => Some(AF_INET6),
        _ => None,
    }
}

fn open() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    socket2::SockRef::from(&sock).set_read_timeout(Some(Duration::from_secs(1)))?;
    Ok(sock)
}

/// Whether the kernel's answer names exactly this flow's socket.
fn answer_is(id: &SocketId, local: End, remote: End) -> bool {
    (id.source_address.to_canonical(), id.source_port) == local
        && (id.destination_address.to_canonical(), id.destination_port) == remote
}

/// One exact `SOCK_DIAG_BY_FAMILY` request. `Ok(None)` when the kernel has
/// no such socket (`ENOENT`); `Ok(Some((answered id, uid)))` otherwise.
fn query(
    sock: &mut Socket,
    seq: u32,
    family: u8,
    proto: u8,
    src: End,
    dst: End,
) -> io::Result<Option<(SocketId, u32)>> {
    send_request(
        sock,
        NLM_F_REQUEST,
        seq,
        InetRequest {
            family,
            protocol: proto,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: socket_id(src, dst),
        },
    )?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let bytes = buf.get(..n).unwrap_or(&[]);
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if msg.header.sequence_number != seq {
            continue; // not ours (cannot happen on a per-call socket)
        }
        return match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                Ok(Some((r.header.socket_id, r.header.uid)))
            }
            NetlinkPayload::Error(e) if e.raw_code() == -ENOENT => Ok(None),
            NetlinkPayload::Error(e) => Err(e.to_io()),
            _ => Err(io::Error::other("sock_diag: unexpected answer")),
        };
    }
}

/// A socket id for (`src`, `dst`) without a cookie or interface.
fn socket_id(src: End, dst: End) -> SocketId {
    SocketId {
        source_port: src.1,
        destination_port: dst.1,
        source_address: src.0,
        destination_address: dst.0,
        interface_id: 0,
        cookie: NOCOOKIE,
    }
}

/// Sends one `SOCK_DIAG_BY_FAMILY` request with netlink `flags`.
fn send_request(sock: &mut Socket, flags: u16, seq: u32, req: InetRequest) -> io::Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = flags;
    hdr.sequence_number = seq;
    let mut packet = NetlinkMessage::new(hdr, SockDiagMessage::InetRequest(req).into());
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes[..]);
    sock.send(&bytes, 0)?;
    Ok(())
}

/// The uids of every TCP and UDP socket (any state but listening, closed
/// and TIME_WAIT) whose
/// local address is one of `locals` and whose remote address is one of
/// `peers` (all of one family per call is not required: each family is
/// dumped once), through `SOCK_DIAG_BY_FAMILY` dumps.
pub(super) fn owners_between(locals: &[IpAddr], peers: &[IpAddr]) -> io::Result<Vec<u32>> {
    let mut sock = open()?;
    let mut uids = Vec::new();
    let mut seq = 0u32;
    for (family, v6) in [(AF_INET6, true), (AF_INET, false)] {
        if !locals.iter().any(|a| a.is_ipv6() == v6) {
            continue;
        }
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            seq = seq.wrapping_add(1);
            dump(&mut sock, seq, family, proto, |id, uid| {
                let l = id.source_address.to_canonical();
                let p = id.destination_address.to_canonical();
                let hit = |set: &[IpAddr], a: IpAddr| set.iter().any(|x| x.to_canonical() == a);
                if hit(locals, l) && hit(peers, p) && !uids.contains(&uid) {
                    uids.push(uid);
                }
            })?;
        }
    }
    Ok(uids)
}

/// One `SOCK_DIAG_BY_FAMILY` dump of `family`/`proto` (all states but
/// LISTEN, CLOSE and TIME_WAIT); calls `each` with every answer's socket id
/// and uid.
fn dump(
    sock: &mut Socket,
    seq: u32,
    family: u8,
    proto: u8,
    mut each: impl FnMut(&SocketId, u32),
) -> io::Result<()> {
    let any = if family == AF_INET6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    send_request(
        sock,
        NLM_F_REQUEST | netlink_packet_core::NLM_F_DUMP,
        seq,
        InetRequest {
            family,
            protocol: proto,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all()
                - StateFlags::LISTEN
                - StateFlags::TIME_WAIT
                - StateFlags::CLOSE,
            socket_id: socket_id((any, 0), (any, 0)),
        },
    )?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while let Some(rest) = buf.get(off..n).filter(|r| r.len() >= 16) {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(one) = rest.get(..len).filter(|_| len >= 16) else {
                return Err(io::Error::other("sock_diag: truncated message"));
            };
            off += (len + 3) & !3;
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(one)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if msg.header.sequence_number != seq {
                continue;
            }
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    each(&r.header.socket_id, r.header.uid);
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::time::Instant;

    fn flow(proto: u8, local: SocketAddr, peer: SocketAddr) -> FlowId {
        FlowId {
            proto,
            local: local.ip(),
            local_port: local.port(),
            peer: peer.ip(),
            peer_port: peer.port(),
        }
    }

    fn my_uid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// Reference: the former `/proc/net` scan (for the timing comparison
    /// and as an oracle for the uid).
    fn proc_owner(f: &FlowId) -> Option<u32> {
        fn hex(a: IpAddr) -> String {
            match a {
                IpAddr::V4(v4) => format!("{:08X}", u32::from_le_bytes(v4.octets())),
                IpAddr::V6(v6) => v6
                    .octets()
                    .chunks_exact(4)
                    .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            }
        }
        let file = match (f.proto, f.local.is_ipv6()) {
            (6, true) => "tcp6",
            (6, false) => "tcp",
            (17, true) => "udp6",
            _ => "udp",
        };
        let text = std::fs::read_to_string(format!("/proc/net/{file}")).ok()?;
        let local = format!("{}:{:04X}", hex(f.local), f.local_port);
        let remote = format!("{}:{:04X}", hex(f.peer), f.peer_port);
        text.lines().skip(1).find_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.len() > 7 && c[1] == local && c[2] == remote)
                .then(|| c[7].parse().ok())
                .flatten()
        })
    }

    fn tcp_pair(addr: &str) -> (TcpStream, TcpStream, TcpListener) {
        let l = TcpListener::bind(addr).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s, l)
    }

    #[test]
    fn owners_between_lists_the_uids_of_matching_sockets_only() {
        let (c, _s, _l) = tcp_pair("[::1]:0");
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(peer.local_addr().unwrap()).unwrap();
        let lo6: IpAddr = Ipv6Addr::LOCALHOST.into();
        let lo4: IpAddr = Ipv4Addr::LOCALHOST.into();
        let me = my_uid();
        assert_eq!(owners_between(&[lo6], &[lo6]).unwrap(), vec![me]);
        assert_eq!(owners_between(&[lo4], &[lo4]).unwrap(), vec![me]);
        let other: IpAddr = "2001:db8::77".parse().unwrap();
        assert!(owners_between(&[other], &[lo6]).unwrap().is_empty());
        assert!(owners_between(&[lo6], &[other]).unwrap().is_empty());
        drop(c);
    }

    #[test]
    fn sockdiag_tcp_pairs_are_found_both_ends_and_families() {
        for addr in ["[::1]:0", "127.0.0.1:0"] {
            let (c, s, _l) = tcp_pair(addr);
            let fc = flow(6, c.local_addr().unwrap(), c.peer_addr().unwrap());
            let fs = flow(6, s.local_addr().unwrap(), s.peer_addr().unwrap());
            assert_eq!(socket_owner(&fc), Some(my_uid()), "{addr} client");
            assert_eq!(socket_owner(&fs), Some(my_uid()), "{addr} server");
            assert_eq!(socket_owner(&fc), proc_owner(&fc));
            // Wrong port on either end: no socket.
            let mut bad = fc;
            bad.peer_port = bad.peer_port.wrapping_add(1);
            assert_eq!(socket_owner(&bad), None, "{addr} wrong peer port");
            let mut bad = fc;
            bad.local_port = bad.local_port.wrapping_add(1);
            assert_eq!(socket_owner(&bad), None, "{addr} wrong local port");
            // Wrong protocol.
            let mut udp = fc;
            udp.proto = 17;
            assert_eq!(socket_owner(&udp), None, "{addr} as UDP");
        }
    }

    #[test]
    fn sockdiag_connected_udp_found_but_not_its_loopback_peer_orientation() {
        for addr in ["[::1]:0", "127.0.0.1:0"] {
            let a = UdpSocket::bind(addr).unwrap();
            let b = UdpSocket::bind(addr).unwrap();
            a.connect(b.local_addr().unwrap()).unwrap();
            let fa = flow(17, a.local_addr().unwrap(), a.peer_addr().unwrap());
            assert_eq!(socket_owner(&fa), Some(my_uid()), "{addr} connected");
            assert_eq!(socket_owner(&fa), proc_owner(&fa));
            // Kernel fact relied on: udp_dump_one looks up with id.src as
            // the packet source (our remote end). The natural orientation
            // does not find `a`; on loopback it finds `b` (bound at a's
            // remote end, unconnected), which the id check must reject.
            let (la, lb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let fam = family_of(la.ip(), lb.ip()).unwrap();
            let mut sock = open().unwrap();
            let natural = query(
                &mut sock,
                1,
                fam,
                IPPROTO_UDP,
                (la.ip(), la.port()),
                (lb.ip(), lb.port()),
            );
            match natural {
                Ok(None) => {}
                Ok(Some((id, _))) => {
                    assert!(
                        !answer_is(&id, (la.ip(), la.port()), (lb.ip(), lb.port())),
                        "{addr} natural orientation answered with a: {id:?}"
                    );
                    assert_eq!((id.source_address, id.source_port), (lb.ip(), lb.port()));
                }
                Err(e) => panic!("{addr} natural: {e}"),
            }
            let swapped = query(
                &mut sock,
                2,
                fam,
                IPPROTO_UDP,
                (lb.ip(), lb.port()),
                (la.ip(), la.port()),
            );
            let (id, uid) = swapped.unwrap().unwrap();
            assert!(answer_is(&id, (la.ip(), la.port()), (lb.ip(), lb.port())));
            assert_eq!(uid, my_uid());
            // TCP is the other way round: checked by the TCP test (one
            // orientation only).
            // `b` is bound but not connected: the reverse flow names no
            // connected socket (an answer for `b` has remote 0:0).
            let fb = flow(17, b.local_addr().unwrap(), a.local_addr().unwrap());
            assert_eq!(socket_owner(&fb), None, "{addr} unconnected reverse");
            // Both connected: each end found as itself.
            b.connect(a.local_addr().unwrap()).unwrap();
            assert_eq!(socket_owner(&fa), Some(my_uid()));
            assert_eq!(socket_owner(&fb), Some(my_uid()));
            let mut bad = fa;
            bad.peer_port = bad.peer_port.wrapping_add(1);
            if bad.peer_port == b.local_addr().unwrap().port() {
                bad.peer_port = bad.peer_port.wrapping_add(1);
            }
            assert_eq!(socket_owner(&bad), None, "{addr} wrong port");
            let mut tcp = fa;
            tcp.proto = 6;
            assert_eq!(socket_owner(&tcp), None, "{addr} as TCP");
        }
    }

    #[test]
    fn sockdiag_v4_mapped_dual_stack_udp() {
        let a = UdpSocket::bind("[::]:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mapped = SocketAddr::from((
            Ipv4Addr::LOCALHOST.to_ipv6_mapped(),
            b.local_addr().unwrap().port(),
        ));
        a.connect(mapped).unwrap();
        let fa = flow(17, a.local_addr().unwrap(), a.peer_addr().unwrap());
        assert!(fa.local.is_ipv6() && fa.peer.is_ipv6());
        assert_eq!(socket_owner(&fa), Some(my_uid()));
    }

    #[test]
    fn sockdiag_other_protocols_and_mixed_families_are_none() {
        let f = FlowId {
            proto: 132,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: 1,
            peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
            peer_port: 2,
        };
        assert_eq!(socket_owner(&f), None);
        let f = FlowId {
            proto: 6,
            peer: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..f
        };
        assert_eq!(socket_owner(&f), None);
    }

    /// Not an assertion: prints the per-call cost of both lookups.
    #[test]
    fn sockdiag_timing_vs_proc_scan() {
        let (c, _s, _l) = tcp_pair("[::1]:0");
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        u.connect("127.0.0.1:9").unwrap();
        let cases = [
            (
                "tcp6",
                flow(6, c.local_addr().unwrap(), c.peer_addr().unwrap()),
            ),
            (
                "udp4",
                flow(17, u.local_addr().unwrap(), u.peer_addr().unwrap()),
            ),
        ];
        for (name, f) in cases {
            const N: u32 = 200;
            let t = Instant::now();
            for _ in 0..N {
                assert_eq!(socket_owner(&f), Some(my_uid()));
            }
            let diag = t.elapsed() / N;
            let t = Instant::now();
            for _ in 0..N {
                assert_eq!(proc_owner(&f), Some(my_uid()));
            }
            let scan = t.elapsed() / N;
            eprintln!("socket_owner {name}: sock_diag {diag:?}/call, /proc scan {scan:?}/call");
        }
    }
}
