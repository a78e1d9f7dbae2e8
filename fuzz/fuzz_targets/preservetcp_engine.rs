//! Two preservetcp engines with a connection set up by a real handshake
//! (client c0/c1, server s0/s1), then a fuzzer-chosen script: packets built
//! from fuzzer fields (addresses, ports, flags, sequence numbers, raw
//! destination options bytes, payload) into either engine as incoming,
//! outgoing or observed packets, with fuzzer-chosen socket state for the
//! checks of segments on other pairs; time steps with expiry; `tcp_info`
//! samples; address changes; moves through the control path; kernel echo
//! events. Nothing may panic, and a packet the engine rewrites still parses
//! and still carries a valid TCP checksum.
#![no_main]

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use preservetcp::checksum::{set_tcp_checksum_v6, verify_tcp_checksum_v6};
use preservetcp::engine::{LocalAddr, SocketProgress};
use preservetcp::{
    AddrPair, Engine, EngineConfig, FourTuple, LocalAddress, TcpSample, Verdict, parse_ipv6_tcp,
};

const C0: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
const C1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 1);
const S0: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const S1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 2);
/// Addresses packets may carry: the hosts', a link-local, loopback, a
/// stranger.
const ADDRS: [Ipv6Addr; 7] = [
    C0,
    C1,
    S0,
    S1,
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::LOCALHOST,
    Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 9),
];
const PORTS: [u16; 3] = [40000, 5001, 1];

/// Reads fuzzer bytes in order; zeros once they run out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn addr(&mut self) -> Ipv6Addr {
        ADDRS[usize::from(self.byte()) % ADDRS.len()]
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn locals(addrs: &[Ipv6Addr]) -> Vec<LocalAddr> {
    addrs
        .iter()
        .map(|a| LocalAddr {
            addr: LocalAddress {
                addr: *a,
                prefix_len: 64,
            },
            up: true,
        })
        .collect()
}

/// An IPv6 packet from `src` to `dst` carrying `tcp` (checksummed), with a
/// destination options header of raw `opts` bytes before it if given.
fn packet(src: Ipv6Addr, dst: Ipv6Addr, opts: Option<&[u8]>, tcp: &mut [u8]) -> Vec<u8> {
    set_tcp_checksum_v6(src, dst, tcp);
    let ext: Vec<u8> = match opts {
        // Next header TCP, the length in 8-byte units after the first 8,
        // the option bytes, zero padding to a multiple of 8.
        Some(o) => {
            let total = (o.len() + 2).div_ceil(8) * 8;
            let mut h = vec![6, u8::try_from(total / 8 - 1).unwrap_or(0)];
            h.extend_from_slice(o);
            h.resize(total, 0);
            h
        }
        None => Vec::new(),
    };
    let len = u16::try_from(ext.len() + tcp.len()).unwrap_or(u16::MAX);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&len.to_be_bytes());
    p.push(if opts.is_some() { 60 } else { 6 });
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&ext);
    p.extend_from_slice(tcp);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

/// A rewritten packet still parses and its TCP checksum still holds.
fn check(verdict: &Verdict) {
    if let Verdict::Replace(p) = verdict {
        let v = parse_ipv6_tcp(p).expect("a rewritten packet parses");
        assert!(
            verify_tcp_checksum_v6(v.src, v.dst, v.tcp),
            "a rewritten packet keeps a valid TCP checksum"
        );
    }
}

fn replaced(v: Verdict, original: Vec<u8>) -> Vec<u8> {
    match v {
        Verdict::Replace(p) => p,
        Verdict::Accept => original,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let cfg = input.byte();
    let config = EngineConfig {
        check_peer_segments: cfg & 1 != 0,
        kernel_options: cfg & 2 != 0,
        kernel_echo_events: cfg & 4 != 0,
        pair_actions: cfg & 8 != 0,
        max_pending: 8,
        max_connections: 8,
        ..EngineConfig::default()
    };
    let mut now = Instant::now();
    let mut c = Engine::new(config);
    let mut s = Engine::new(config);
    c.set_locals(locals(&[C0, C1]), now);
    s.set_locals(locals(&[S0, S1]), now);

    // The handshake, as the kernels would send it.
    let (iss, irs) = (1000, 5000);
    let syn = packet(C0, S0, None, &mut tcp(40000, 5001, 0x02, iss, 0, b""));
    let syn = replaced(c.outbound(&syn, now), syn);
    let _ = s.inbound(&syn, now);
    let sa = packet(S0, C0, None, &mut tcp(5001, 40000, 0x12, irs, iss + 1, b""));
    let sa = replaced(s.outbound(&sa, now), sa);
    let _ = c.inbound(&sa, now);
    let ack = packet(
        C0,
        S0,
        None,
        &mut tcp(40000, 5001, 0x10, iss + 1, irs + 1, b""),
    );
    let ack = replaced(c.outbound(&ack, now), ack);
    let _ = s.inbound(&ack, now);
    let _ = (c.take_actions(), s.take_actions());
    if !config.kernel_options {
        // The engines inserted and learned the options themselves.
        assert_eq!(
            (c.connections().len(), s.connections().len()),
            (1, 1),
            "the handshake set up the connection"
        );
    }

    while !input.is_empty() {
        let op = input.byte();
        let server = op & 0x80 != 0;
        let eng = if server { &mut s } else { &mut c };
        match op % 8 {
            // A packet: incoming (checked), outgoing, or only observed.
            0..=2 => {
                let (src, dst) = (input.addr(), input.addr());
                let sport = PORTS[usize::from(input.byte()) % PORTS.len()];
                let dport = PORTS[usize::from(input.byte()) % PORTS.len()];
                let flags = input.byte();
                let (seq, ack) = (input.u32(), input.u32());
                let opts_len = usize::from(input.byte());
                let opts = (opts_len & 0x80 != 0).then(|| input.bytes(opts_len & 0x3f).to_vec());
                let payload_len = usize::from(input.byte() % 32);
                let payload = input.bytes(payload_len).to_vec();
                let progress = SocketProgress {
                    bytes_acked: u64::from(input.u32()),
                    bytes_received: u64::from(input.u32()),
                    bytes_sent: u64::from(input.u32()),
                };
                let known = input.byte() & 1 != 0;
                let mut seg = tcp(sport, dport, flags, seq, ack, &payload);
                let p = packet(src, dst, opts.as_deref(), &mut seg);
                match op % 8 {
                    0 => check(&eng.inbound_checked(&p, now, &mut |_| known.then_some(progress))),
                    1 => check(&eng.outbound(&p, now)),
                    _ => eng.observe_inbound(&p, now),
                }
            }
            // Arbitrary bytes as a packet.
            3 => {
                let n = usize::from(input.byte());
                let raw = input.bytes(n).to_vec();
                let _ = eng.inbound(&raw, now);
                let _ = eng.outbound(&raw, now);
                eng.observe_inbound(&raw, now);
            }
            4 => {
                now += Duration::from_millis(u64::from(input.byte()) * 20);
                eng.expire(now);
            }
            5 => {
                let sample = TcpSample {
                    retransmits: u32::from(input.byte() % 8),
                    unacked: u32::from(input.byte()),
                    since_last_ack: Duration::from_millis(u64::from(input.byte()) * 10),
                };
                for t in eng.originals() {
                    eng.tcp_info(&t, sample, now);
                }
            }
            6 => {
                let mask = input.byte();
                let mine = if server { [S0, S1] } else { [C0, C1] };
                let mut l = locals(&mine);
                for (i, a) in l.iter_mut().enumerate() {
                    a.up = mask & (1 << i) != 0;
                }
                if mask & 4 != 0 {
                    l.pop();
                }
                eng.set_locals(l, now);
            }
            _ => {
                let pair = AddrPair {
                    local: input.addr(),
                    peer: input.addr(),
                };
                let which = input.byte();
                match which % 3 {
                    0 => {
                        for info in eng.connections() {
                            let _ = eng.move_to(info.id, pair, now);
                        }
                    }
                    1 => {
                        let t = FourTuple {
                            local: pair.local,
                            local_port: 40000,
                            peer: pair.peer,
                            peer_port: 5001,
                        };
                        eng.kernel_echoed(&t, now);
                    }
                    _ => {
                        for t in eng.originals() {
                            eng.socket_gone(&t, now);
                        }
                    }
                }
            }
        }
        let _ = eng.take_actions();
        let _ = eng.connections();
    }
});
