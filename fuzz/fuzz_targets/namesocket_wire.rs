//! Arbitrary bytes into every namesocket decoder and into a server session's
//! handle_input (split at a fuzzer-chosen point). Nothing may panic.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use namesocket::engine::{Config, KeyPair, Session};
use namesocket::wire::v2::{self, Handshake, Params, SessionId};
use namesocket::wire::{Frame, FrameDecoder, accept_first, v1};
use rand::SeedableRng;
use rand::rngs::StdRng;

fuzz_target!(|data: &[u8]| {
    let _ = v1::Packet::parse(data);
    let _ = Handshake::parse(data);
    let _ = accept_first(data);
    let _ = Frame::parse(data);
    let mut dec = FrameDecoder::new();
    let mut rest = data;
    while let Ok((n, _)) = dec.next(rest) {
        if n == 0 || n > rest.len() {
            break;
        }
        rest = &rest[n..];
    }

    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(1);
    let keys = Arc::new(KeyPair::from_secret_bytes([7; 32]));
    let new = v2::New {
        session_id: SessionId([1; 16]),
        client_nonce: [2; 16],
        client_public: KeyPair::from_secret_bytes([9; 32]).public(),
        params: Params {
            heartbeat_ms: 200,
            dead_timeout_ms: 600,
            resume_window_ms: 30_000,
            send_buffer_limit: 1 << 16,
        },
    };
    let Ok(mut s) = Session::accept_new(now, Config::default(), keys, &new, &mut rng) else {
        return;
    };
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let _ = s.handle_input(now, a);
    let _ = s.handle_input(now + Duration::from_millis(1), b);
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
    s.handle_timeout(now + Duration::from_secs(1));
    while let Some(t) = s.poll_transmit(now) {
        let n = t.len();
        s.advance(n);
    }
    while s.poll_event().is_some() {}
    // And as a RESUME on a fresh transport.
    if let Ok(Some((namesocket::wire::FirstMessage::Resume(r), _))) = accept_first(data) {
        let _ = s.attach_resume(now, &r, &mut rng);
    }
});
