//! Stateful fuzzer for the post-BEX control plane: UPDATE, NOTIFY, CLOSE and
//! CLOSE_ACK handling of an established association never panics.
//!
//! Every input first runs a base exchange between two in-memory endpoints
//! (`engine::testing::Pair`, A = Initiator, B = Responder, deterministic
//! seeds, so SPIs and HITs are stable across runs and libFuzzer's compare
//! tracing can learn them). The input is then a sequence of records
//! `kind len_hi len_lo bytes[len]`:
//!
//! * `kind & 3` — packet type: 0 UPDATE, 1 NOTIFY, 2 CLOSE, 3 CLOSE_ACK.
//! * `kind & 4` — direction: 0 = A → B, 1 = B → A.
//! * `kind & 8` — authenticate: `bytes` is parsed as a parameter area; if it
//!   parses, the sending endpoint seals it (HIP_MAC, HIP_SIGNATURE) as it
//!   would its own packets (`Endpoint::seal_control_for_fuzzing`), so the
//!   receiver's UPDATE/CLOSE logic runs on arbitrary but authenticated
//!   parameters. Otherwise (or without the bit) `bytes` goes out raw behind
//!   a valid HIP header (right HITs, length, checksum), which exercises the
//!   parser and the MAC/signature rejection paths.
//! * `kind >> 4` — after delivery the pair runs for that many × 250 ms, so
//!   answers (ACKs, echo responses, CLOSE_ACK) and retransmissions flow.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hip_proto::crypto::{DhGroup, EspSuite, HipCipher, OpensslBackend};
use hip_proto::engine::testing::{IdentityKind, LinkConfig, Pair, Side, test_identity};
use hip_proto::engine::{Config, Datagram, Endpoint, Event, Transport};
use hip_proto::wire::consts::HEADER_LEN;
use hip_proto::wire::{ChecksumMode, Packet, PacketRepr, PacketType, param_type as pt};
use libfuzzer_sys::fuzz_target;

fn addr(n: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
}

fn config() -> Config {
    Config {
        dh_groups: vec![DhGroup::EcdhP256],
        hip_ciphers: vec![HipCipher::Aes128Cbc],
        esp_suites: vec![EspSuite::Aes128CbcSha256],
        puzzle_k: 1,
        ..Config::default()
    }
}

fn established_pair() -> Option<Pair> {
    let now = Instant::now();
    let be = || Arc::new(OpensslBackend::new());
    let a = Endpoint::new(
        config(),
        vec![test_identity(IdentityKind::EcdsaP256, 0)],
        be(),
        [1; 32],
        now,
    )
    .ok()?;
    let b = Endpoint::new(
        config(),
        vec![test_identity(IdentityKind::EcdsaP256, 1)],
        be(),
        [2; 32],
        now,
    )
    .ok()?;
    let mut p = Pair::new(a, addr(1), b, addr(2), now, LinkConfig::default(), 3);
    let b_hit = p.b.endpoint.local_hits()[0];
    p.a.endpoint
        .connect(now, Some(b_hit), vec![addr(2)], None)
        .ok()?;
    let done = |p: &Pair| {
        let est = |ev: &[Event]| ev.iter().any(|e| matches!(e, Event::Established { .. }));
        est(&p.a.events) && est(&p.b.events)
    };
    p.run_until(Duration::from_secs(10), done).then_some(p)
}

/// A HIP header for `ty` between the HITs followed by `params` (cut to a
/// multiple of 8 and at most the 2008-byte parameter area).
fn raw_packet(ty: PacketType, from: [u8; 16], to: [u8; 16], params: &[u8]) -> Vec<u8> {
    let plen = (params.len() / 8 * 8).min(2008);
    let mut buf = vec![0u8; HEADER_LEN + plen];
    buf[0] = 59;
    buf[1] = ((HEADER_LEN + plen) / 8 - 1) as u8;
    buf[2] = ty.value() & 0x7F;
    buf[3] = 0x21;
    buf[8..24].copy_from_slice(&from);
    buf[24..40].copy_from_slice(&to);
    buf[HEADER_LEN..].copy_from_slice(&params[..plen]);
    buf
}

fuzz_target!(|data: &[u8]| {
    let Some(mut p) = established_pair() else {
        return;
    };
    let a_hit = p.a.endpoint.local_hits()[0];
    let b_hit = p.b.endpoint.local_hits()[0];
    let mut rest = data;
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let ty = match kind & 3 {
            0 => PacketType::Update,
            1 => PacketType::Notify,
            2 => PacketType::Close,
            _ => PacketType::CloseAck,
        };
        let (from, to, to_side) = if kind & 4 == 0 {
            (a_hit, b_hit, Side::B)
        } else {
            (b_hit, a_hit, Side::A)
        };
        let (src, dst) = if to_side == Side::B {
            (p.a.addr, p.b.addr)
        } else {
            (p.b.addr, p.a.addr)
        };
        let mut payload = raw_packet(ty, *from.as_bytes(), *to.as_bytes(), body);
        if kind & 8 == 8
            && let Ok(pkt) = Packet::new_checked(&payload[..])
            && let Ok(mut repr) = PacketRepr::parse(&pkt)
        {
            repr.params
                .retain(|x| !matches!(x.param_type(), pt::HIP_MAC | pt::HIP_SIGNATURE));
            let sender = if to_side == Side::B {
                &p.a.endpoint
            } else {
                &p.b.endpoint
            };
            if let Some(sealed) =
                sender.seal_control_for_fuzzing(repr, Some(src), dst, Transport::Native)
            {
                payload = sealed;
            }
        }
        if let Ok(mut pkt) = Packet::new_checked(&mut payload[..])
            && let Some(mode) = ChecksumMode::from_addrs(src, dst)
        {
            pkt.fill_checksum(mode);
        }
        p.inject(
            to_side,
            Datagram {
                src,
                dst,
                transport: Transport::Native,
                payload,
            },
        );
        p.run_for(Duration::from_millis(1 + 250 * u64::from(kind >> 4)));
        p.a.events.clear();
        p.b.events.clear();
    }
});
