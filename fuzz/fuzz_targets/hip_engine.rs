//! A responder `Endpoint` fed arbitrary packet sequences never panics.
//!
//! Input format: a sequence of records `len_hi len_lo flags bytes[len]`.
//! Flag bit 0 selects UDP (checksum must be 0) vs native transport; bit 1
//! asks the harness to fix up the header (Next Header 59, Version 2 with
//! the fixed bits, Header Length covering the record, receiver HIT = the
//! responder's HIT, valid checksum) so parsing gets past the header.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hip_proto::crypto::{DhGroup, OpensslBackend};
use hip_proto::engine::testing::{IdentityKind, test_identity};
use hip_proto::engine::{Config, Datagram, Endpoint, Transport};
use hip_proto::wire::{ChecksumMode, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let cfg = Config {
        dh_groups: vec![DhGroup::EcdhP256],
        puzzle_k: 1,
        ..Config::default()
    };
    let Ok(mut ep) = Endpoint::new(
        cfg,
        vec![test_identity(IdentityKind::EcdsaP256, 0)],
        Arc::new(OpensslBackend::new()),
        [7; 32],
        now,
    ) else {
        return;
    };
    let me = ep.local_hits()[0];
    let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
    let mut rest = data;
    let mut t = now;
    while let [hi, lo, flags, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        let mut payload = body.to_vec();
        let udp = flags & 1 == 1;
        let transport = if udp {
            Transport::Udp {
                src_port: 10500,
                dst_port: 10500,
            }
        } else {
            Transport::Native
        };
        if flags & 2 == 2 && payload.len() >= 40 {
            let l = (payload.len() / 8 * 8).min(2048);
            payload.truncate(l);
            payload[0] = 59;
            payload[1] = (l / 8 - 1) as u8;
            payload[2] &= 0x7F;
            payload[3] = 0x21;
            payload[24..40].copy_from_slice(me.as_bytes());
            let mode = if udp {
                ChecksumMode::Udp
            } else {
                ChecksumMode::from_addrs(src, dst).unwrap_or(ChecksumMode::Udp)
            };
            Packet::new_unchecked(&mut payload[..]).fill_checksum(mode);
        }
        ep.handle(
            t,
            Datagram {
                src,
                dst,
                transport,
                payload,
            },
        );
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
        if flags & 4 == 4 {
            t += Duration::from_secs(u64::from(flags >> 3));
            ep.handle_timeout(t);
        }
    }
});
