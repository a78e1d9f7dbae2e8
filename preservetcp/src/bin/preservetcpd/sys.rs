//! Kernel state the daemon reads: TCP sockets with `tcp_info` (sock_diag)
//! and route checks (local addresses come from `rtnl.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};
use preservetcp::FourTuple;
use preservetcp::engine::{SocketProgress, TcpSample};

/// One TCP socket from the dump.
#[derive(Debug, Clone, Copy)]
pub struct SockState {
    pub tuple: FourTuple,
    pub sample: Option<TcpSample>,
    /// Byte counts since the handshake (for the checks of
    /// `Engine::inbound_checked`).
    pub progress: Option<SocketProgress>,
}

pub struct Diag {
    sock: Socket,
    buf: Vec<u8>,
}

impl Diag {
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        Ok(Self {
            sock,
            buf: vec![0; 1 << 16],
        })
    }

    /// Sends one IPv6 TCP `inet_diag` request asking for `tcp_info`.
    fn send_request(&self, flags: u16, states: StateFlags, socket_id: SocketId) -> io::Result<()> {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = flags;
        let mut packet = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family: AF_INET6,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states,
                socket_id,
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req[..]);
        self.sock.send(&req, 0)?;
        Ok(())
    }

    /// The socket with exactly this tuple, unless it is gone (or in
    /// TIME_WAIT): one request answered by one lookup in the kernel's
    /// hash, where a dump walks all of it — every bucket of the
    /// host-wide established hash, all namespaces' sockets included (about
    /// 6 ms per dump on the lab machine, 8–10 % of all CPU samples with
    /// two daemons sampling every 50 ms).
    pub fn query(&mut self, t: &FourTuple) -> io::Result<Option<SockState>> {
        let mut socket_id = SocketId::new_v6();
        socket_id.source_address = IpAddr::V6(t.local);
        socket_id.destination_address = IpAddr::V6(t.peer);
        socket_id.source_port = t.local_port;
        socket_id.destination_port = t.peer_port;
        // INET_DIAG_NOCOOKIE: any socket with this tuple.
        socket_id.cookie = [0xff; 8];
        self.send_request(NLM_F_REQUEST, StateFlags::all(), socket_id)?;
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        let bytes = self.buf.get(..n).unwrap_or(&[]);
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                // The kernel's lookup falls back to listeners: only the
                // connection itself counts.
                Ok(sock_state(&r).filter(|s| {
                    s.tuple == *t && r.header.state != TCP_TIME_WAIT && r.header.state != TCP_LISTEN
                }))
            }
            NetlinkPayload::Error(e) if e.raw_code() == -libc_enoent() => Ok(None),
            NetlinkPayload::Error(e) => Err(io::Error::other(format!("sock_diag: {e:?}"))),
            _ => Ok(None),
        }
    }

    /// All IPv6 TCP sockets except listeners and TIME_WAIT, keyed by tuple.
    pub fn dump(&mut self) -> io::Result<HashMap<FourTuple, SockState>> {
        let states = StateFlags::all() - StateFlags::LISTEN - StateFlags::TIME_WAIT;
        self.send_request(NLM_F_REQUEST | NLM_F_DUMP, states, SocketId::new_v6())?;
        let mut out = HashMap::new();
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let bytes = self.buf.get(off..n).unwrap_or(&[]);
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(bytes)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        if let Some(st) = sock_state(&r) {
                            out.insert(st.tuple, st);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return Err(io::Error::other(format!("sock_diag: {e:?}")));
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

const TCP_TIME_WAIT: u8 = 6;
const TCP_LISTEN: u8 = 10;

fn libc_enoent() -> i32 {
    nix::errno::Errno::ENOENT as i32
}

/// The tuple and `tcp_info` sample of one sock_diag answer (IPv6 only).
fn sock_state(r: &netlink_packet_sock_diag::inet::InetResponse) -> Option<SockState> {
    let id = &r.header.socket_id;
    let (IpAddr::V6(l), IpAddr::V6(p)) = (id.source_address, id.destination_address) else {
        return None;
    };
    let tuple = FourTuple {
        local: l,
        local_port: id.source_port,
        peer: p,
        peer_port: id.destination_port,
    };
    let info = r.nlas.iter().find_map(|n| match n {
        Nla::TcpInfo(i) => Some(i),
        _ => None,
    });
    Some(SockState {
        tuple,
        sample: info.map(|i| TcpSample {
            retransmits: u32::from(i.retransmits),
            unacked: i.unacked,
            since_last_ack: Duration::from_millis(u64::from(i.last_ack_recv)),
        }),
        progress: info.map(|i| SocketProgress {
            bytes_acked: i.bytes_acked,
            bytes_received: i.bytes_received,
            bytes_sent: i.bytes_sent,
        }),
    })
}

/// Whether `peer` is routable from `local`: a UDP socket bound to `local`
/// and connected to `peer` makes the kernel do the route lookup. `Err` for
/// no route / unreachable / the source gone.
pub fn route_ok(local: Ipv6Addr, peer: Ipv6Addr) -> io::Result<()> {
    let s = UdpSocket::bind(SocketAddr::from((local, 0)))?;
    s.connect(SocketAddr::from((peer, 9)))
}
