//! `Session::handle_input_in_place`: transport bytes read straight into the
//! application's buffer deliver exactly what `handle_input` + `read` would,
//! in order, with the same flow-control and error behaviour.

mod engine_support;

use std::time::Duration;

use engine_support::Pair;
use namesocket::engine::Config;
use proptest::prelude::*;

const STEP: Duration = Duration::from_millis(5);

fn config() -> Config {
    Config {
        send_buffer_limit: 64 << 10,
        ack_every_bytes: 4 << 10,
        max_frame_payload: 3000,
        ..Config::default()
    }
}

/// An established pair whose server has written `writes` (each its own
/// write call) and transmitted them; returns the server -> client bytes.
fn server_stream(seed: u64, writes: &[usize]) -> (Pair, Vec<u8>) {
    let mut p = Pair::new(seed, config(), config());
    assert!(p.settle(STEP, 10));
    for &w in writes {
        let d = p.random_bytes(w);
        assert_eq!(p.write_server(&d), w);
    }
    p.transmit();
    let wire = std::mem::take(&mut p.s2c);
    (p, wire)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any slicing of the stream, any mix of in-place and buffered input
    /// (including in-place calls while buffered bytes are still unread,
    /// which must fall back without reordering), delivers the exact bytes.
    #[test]
    fn in_place_delivers_the_stream_in_order(
        seed in 0u64..1000,
        writes in prop::collection::vec(1usize..5000, 1..12),
        cuts in prop::collection::vec((1usize..9000, any::<bool>(), 0usize..700), 1..40),
    ) {
        let (mut p, wire) = server_stream(seed, &writes);
        let total: usize = writes.iter().sum();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let (len, in_place, partial_read) = cuts[i % cuts.len()];
            i += 1;
            let end = (pos + len).min(wire.len());
            let chunk = &wire[pos..end];
            pos = end;
            if in_place {
                let mut buf = vec![0u8; chunk.len() + 16];
                buf[..chunk.len()].copy_from_slice(chunk);
                let (n, r) = p.client.handle_input_in_place(p.now, &mut buf, chunk.len());
                prop_assert!(r.is_ok());
                got.extend_from_slice(&buf[..n]);
            } else {
                prop_assert!(p.client.handle_input(p.now, chunk).is_ok());
                // Sometimes leave bytes buffered for the next in-place call.
                let mut b = vec![0u8; partial_read];
                let n = p.client.read(&mut b);
                got.extend_from_slice(&b[..n]);
            }
        }
        let mut b = vec![0u8; 1 << 16];
        loop {
            let n = p.client.read(&mut b);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        prop_assert_eq!(got.len(), total);
        prop_assert_eq!(&got, &p.s_sent);
        let st = p.client.stats().clone();
        prop_assert_eq!(st.bytes_read, total as u64);
        prop_assert_eq!(st.bytes_received, total as u64);
        // The client acknowledges everything delivered; the server's
        // retained buffer empties.
        for _ in 0..5 {
            p.advance(Duration::from_millis(20));
            p.round();
        }
        prop_assert_eq!(p.server.as_ref().unwrap().unacked_bytes(), 0);
    }
}

#[test]
fn payload_is_moved_to_the_front_of_the_buffer() {
    let (mut p, wire) = server_stream(7, &[1000, 1, 2500]);
    let mut buf = vec![0u8; 8192];
    buf[..wire.len()].copy_from_slice(&wire);
    let (n, r) = p.client.handle_input_in_place(p.now, &mut buf, wire.len());
    assert!(r.is_ok());
    assert_eq!(n, 3501);
    assert_eq!(&buf[..n], &p.s_sent[..]);
    // Delivered bytes count as read: nothing is left in the engine.
    assert_eq!(p.client.readable_bytes(), 0);
    assert_eq!(p.client.stats().bytes_read, 3501);
}

#[test]
fn delivers_payload_before_a_malformed_frame_and_reports_the_error() {
    let (mut p, mut wire) = server_stream(8, &[600]);
    wire.extend_from_slice(&[0xee, 0, 0]); // not a frame type
    let mut buf = wire.clone();
    let (n, r) = p.client.handle_input_in_place(p.now, &mut buf, wire.len());
    assert_eq!(n, 600);
    assert_eq!(&buf[..n], &p.s_sent[..]);
    assert!(r.is_err());
    assert_eq!(p.client.stats().malformed_frames, 1);
}

#[test]
fn flow_control_violation_is_detected_in_place() {
    // The server announces a 1 KiB send buffer limit: a DATA frame of
    // 2000 bytes from it breaks flow control.
    let small = Config {
        send_buffer_limit: 1024,
        ack_every_bytes: 256,
        ..Config::default()
    };
    let mut p = Pair::new(9, config(), small);
    assert!(p.settle(STEP, 10));
    let mut frame = namesocket::wire::data_header(2000).to_vec();
    frame.extend_from_slice(&[1u8; 2000]);
    let mut buf = frame.clone();
    let (n, r) = p.client.handle_input_in_place(p.now, &mut buf, frame.len());
    assert_eq!(n, 0);
    assert!(r.is_err());
}

#[test]
fn len_beyond_the_buffer_is_clamped() {
    let (mut p, wire) = server_stream(10, &[100]);
    let mut buf = wire.clone();
    let (n, r) = p.client.handle_input_in_place(p.now, &mut buf, usize::MAX);
    assert!(r.is_ok());
    assert_eq!(&buf[..n], &p.s_sent[..]);
}
