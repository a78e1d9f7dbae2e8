//! The 64-bit stream counters past 2^32: sessions whose streams start just
//! below 2^32 (the engine's testing-only offset hook) move data across it in
//! both directions, with one resume whose retransmitted range spans 2^32
//! and one whose acknowledged counters are beyond it. A 32-bit counter
//! anywhere (frames, ACKs, RESUME/RESUME_ACK, SHUTDOWN) would corrupt the
//! stream or fail the session here.

mod engine_support;

use std::time::Duration;

use engine_support::Pair;
use namesocket::engine::{Config, Event};
use namesocket::wire::v2::{Handshake, Resume, ResumeAck};

const STEP: Duration = Duration::from_millis(1);
const TWO_32: u64 = 1 << 32;
/// Client→server stream offset of the first byte.
const BASE_C2S: u64 = TWO_32 - 150_000;
/// Server→client stream offset of the first byte (different, so that a
/// mix-up of the two counters shows).
const BASE_S2C: u64 = TWO_32 - 100_000;
const LEN: usize = 600_000;

fn config() -> Config {
    Config {
        send_buffer_limit: 128 << 10,
        ack_every_bytes: 8 << 10,
        max_frame_payload: 4096,
        ..Config::default()
    }
}

/// Writes what the send buffers take and runs rounds until `done`.
fn pump(p: &mut Pair, data_c: &[u8], data_s: &[u8], done: impl Fn(&Pair) -> bool) {
    for _ in 0..100_000 {
        if done(p) {
            return;
        }
        write_more(p, data_c, data_s, 16 << 10);
        p.round();
        p.advance(STEP);
    }
    panic!(
        "no progress: client sent {} got {}, server sent {} got {}",
        p.c_sent.len(),
        p.c_got.len(),
        p.s_sent.len(),
        p.s_got.len()
    );
}

/// Writes up to `chunk` more bytes each way (as far as the send buffers
/// take them).
fn write_more(p: &mut Pair, data_c: &[u8], data_s: &[u8], chunk: usize) {
    let c = p.c_sent.len();
    if c < data_c.len() {
        p.write_client(&data_c[c..(c + chunk).min(data_c.len())]);
    }
    let s = p.s_sent.len();
    if s < data_s.len() && p.server.is_some() {
        p.write_server(&data_s[s..(s + chunk).min(data_s.len())]);
    }
}

/// Fills the send buffers, breaks the transport after `keep` more bytes
/// each way (the rest in flight is lost), opens a new transport and returns
/// the RESUME the client sent and the RESUME_ACK the server answered; the
/// rest of the new transport's traffic stays in flight.
fn break_and_resume(
    p: &mut Pair,
    data_c: &[u8],
    data_s: &[u8],
    keep: usize,
) -> (Resume, ResumeAck) {
    write_more(p, data_c, data_s, 128 << 10);
    p.cut(keep, keep);
    // The applications read what arrived before the break.
    p.read_all();
    p.connect();
    p.transmit();
    let resume = match Handshake::parse(&p.c2s) {
        Ok(Some((Handshake::Resume(r), _))) => r,
        other => panic!("expected RESUME, got {other:?}"),
    };
    p.deliver(usize::MAX, 0);
    p.transmit();
    let ack = match Handshake::parse(&p.s2c) {
        Ok(Some((Handshake::ResumeAck(a), _))) => a,
        other => panic!(
            "expected RESUME_ACK, got {other:?} (rejects {:?})",
            p.rejects
        ),
    };
    (resume, ack)
}

#[test]
fn counters_cross_two_to_the_32_with_resumes() {
    let mut p = Pair::new_at_offsets(41, config(), config(), BASE_C2S, BASE_S2C);
    assert!(p.settle(STEP, 20), "handshake");
    let data_c = p.random_bytes(LEN);
    let data_s = p.random_bytes(LEN);

    // 1. Stop while the server has received well below 2^32, fill the
    //    client's send buffer past 2^32 and break the transport with most
    //    of it in flight: the data to send again spans 2^32.
    let below_c = (TWO_32 - BASE_C2S) as usize;
    pump(&mut p, &data_c, &data_s, |p| {
        p.s_got.len() >= below_c - 60_000
    });
    let (resume, ack) = break_and_resume(&mut p, &data_c, &data_s, 3000);
    // The counters on the wire are absolute stream offsets.
    assert_eq!(resume.bytes_received, BASE_S2C + p.c_got.len() as u64);
    assert_eq!(ack.bytes_received, BASE_C2S + p.s_got.len() as u64);
    let written_c = BASE_C2S + p.c_sent.len() as u64;
    assert!(
        ack.bytes_received < TWO_32 && written_c > TWO_32,
        "retransmission must span 2^32: from {} to {written_c}",
        ack.bytes_received
    );
    assert!(p.server_events.contains(&Event::PathDead));

    // 2. Both directions well past 2^32, then another break: the RESUME and
    //    RESUME_ACK counters are above 2^32.
    pump(&mut p, &data_c, &data_s, |p| {
        p.s_got.len() >= 400_000 && p.c_got.len() >= 400_000
    });
    let (resume, ack) = break_and_resume(&mut p, &data_c, &data_s, 5000);
    assert!(resume.bytes_received > TWO_32, "{resume:?}");
    assert!(ack.bytes_received > TWO_32, "{ack:?}");
    assert_eq!(resume.bytes_received, BASE_S2C + p.c_got.len() as u64);
    assert_eq!(ack.bytes_received, BASE_C2S + p.s_got.len() as u64);

    // 3. The rest, a SHUTDOWN each way (its count is a stream offset too).
    pump(&mut p, &data_c, &data_s, |p| {
        p.c_sent.len() == LEN && p.s_sent.len() == LEN
    });
    p.client.shutdown_write();
    p.server.as_mut().unwrap().shutdown_write();
    assert!(p.settle(STEP, 1000), "final delivery");
    assert!(p.s_got == data_c, "client→server stream corrupted");
    assert!(p.c_got == data_s, "server→client stream corrupted");
    assert!(p.client.read_eof(), "client sees the server's SHUTDOWN");
    assert!(
        p.server.as_ref().unwrap().read_eof(),
        "server sees SHUTDOWN"
    );
    let resumed = |ev: &[Event]| {
        ev.iter()
            .filter(|e| matches!(e, Event::Resumed { .. }))
            .count()
    };
    assert_eq!(resumed(&p.client_events), 2, "{:?}", p.client_events);
    assert_eq!(resumed(&p.server_events), 2, "{:?}", p.server_events);
    assert!(
        !p.client_events
            .iter()
            .chain(&p.server_events)
            .any(|e| matches!(e, Event::Error(_))),
        "no session error: {:?} / {:?}",
        p.client_events,
        p.server_events
    );
    assert_eq!(p.client.stats().malformed_frames, 0);
    assert_eq!(p.server.as_ref().unwrap().stats().malformed_frames, 0);
}

/// The offset hook refuses a session that already moved data.
#[test]
fn stream_offsets_only_on_fresh_sessions() {
    let mut p = Pair::default_pair(42);
    assert!(p.settle(STEP, 20));
    p.write_client(b"data");
    assert!(p.settle(STEP, 20));
    assert!(p.client.set_stream_offsets_for_testing(TWO_32, 0).is_err());
    let server = p.server.as_mut().unwrap();
    assert!(server.set_stream_offsets_for_testing(0, TWO_32).is_err());
}
