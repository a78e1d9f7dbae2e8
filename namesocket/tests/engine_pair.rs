//! In-memory pair tests: lossless resume across arbitrary cuts, backpressure,
//! dead-path detection, resume window, close.

mod engine_support;

use std::time::Duration;

use engine_support::Pair;
use namesocket::engine::{Config, Event};
use proptest::prelude::*;

const STEP: Duration = Duration::from_millis(5);

fn small_buffers() -> Config {
    Config {
        send_buffer_limit: 16 << 10,
        ack_every_bytes: 2 << 10,
        max_frame_payload: 1500,
        ..Config::default()
    }
}

#[test]
fn handshake_and_echo() {
    let mut p = Pair::default_pair(1);
    assert!(p.settle(STEP, 10));
    assert!(p.client_events.contains(&Event::Connected));
    assert!(p.server_events.contains(&Event::Connected));
    assert_eq!(
        p.client.session_id(),
        p.server.as_ref().unwrap().session_id()
    );
    let d = p.random_bytes(100_000);
    assert_eq!(p.write_client(&d), d.len());
    assert!(p.settle(STEP, 50));
    assert_eq!(p.s_got, d);
    let back = p.s_got.clone();
    p.write_server(&back);
    assert!(p.settle(STEP, 50));
    assert_eq!(p.c_got, d);
}

#[test]
fn data_pipelined_after_new_before_new_ack() {
    let cfg = Config {
        pipeline_data: true,
        ..Config::default()
    };
    let mut p = Pair::new(2, cfg.clone(), cfg);
    p.write_client(b"hello");
    p.transmit();
    // NEW and the DATA frame travel together.
    assert!(p.c2s.len() > 5);
    p.deliver(usize::MAX, 0);
    p.read_all();
    assert_eq!(p.s_got, b"hello");
}

/// Default: data written before NEW_ACK is held back (a failure before
/// NEW_ACK restarts the session, which would deliver pipelined data twice)
/// and goes out once NEW_ACK has arrived.
#[test]
fn data_held_back_until_new_ack_by_default() {
    let mut p = Pair::default_pair(2);
    p.write_client(b"hello");
    p.transmit();
    let new_only = p.c2s.len();
    // Only NEW went out.
    p.write_client(b" world");
    p.transmit();
    assert_eq!(p.c2s.len(), new_only);
    p.deliver(usize::MAX, 0);
    p.read_all();
    assert!(p.s_got.is_empty());
    assert!(p.settle(STEP, 10));
    assert_eq!(p.s_got, b"hello world");
}

#[test]
fn cut_mid_stream_resumes_losslessly() {
    let mut p = Pair::new(3, small_buffers(), small_buffers());
    assert!(p.settle(STEP, 10));
    let a = p.random_bytes(12_000);
    let b = p.random_bytes(9_000);
    p.write_client(&a);
    p.write_server(&b);
    // Cut with part of each direction delivered.
    p.cut(5_000, 333);
    assert!(p.client_events.contains(&Event::PathDead));
    assert!(p.server_events.contains(&Event::PathDead));
    p.connect();
    assert!(p.settle(STEP, 200));
    assert_eq!(p.s_got, a);
    assert_eq!(p.c_got, b);
    let resumed = p
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Resumed { .. }));
    assert!(resumed);
    assert_eq!(p.client.stats().resumes, 1);
    assert!(p.client.stats().bytes_retransmitted > 0);
}

#[test]
fn backpressure_refuses_writes_until_acked() {
    let cfg = small_buffers();
    let limit = cfg.send_buffer_limit;
    let mut p = Pair::new(4, cfg.clone(), cfg);
    assert!(p.settle(STEP, 10));
    let d = p.random_bytes(limit + 1000);
    assert_eq!(p.write_client(&d), limit);
    assert_eq!(p.client.write(b"x"), Ok(0));
    assert_eq!(p.client.send_capacity(), 0);
    // Delivered but not yet read by the server application: still refused.
    p.transmit();
    p.deliver(usize::MAX, usize::MAX);
    p.transmit();
    p.deliver(usize::MAX, usize::MAX);
    assert_eq!(p.client.write(b"x"), Ok(0));
    // The server reads; its ACK frees the buffer.
    p.read_all();
    p.transmit();
    p.deliver(usize::MAX, usize::MAX);
    assert!(p.client.send_capacity() > 0);
    let rest = d[limit..].to_vec();
    p.write_client(&rest);
    assert!(p.settle(STEP, 50));
    assert_eq!(p.s_got, d);
}

#[test]
fn idle_pair_stays_alive_and_silence_is_detected() {
    let cfg = Config::default();
    let mut p = Pair::new(5, cfg.clone(), cfg.clone());
    assert!(p.settle(STEP, 10));
    // Ten seconds idle with a working transport: heartbeats keep it alive.
    for _ in 0..1000 {
        p.advance(Duration::from_millis(10));
        p.round();
    }
    assert!(!p.client_events.contains(&Event::PathDead));
    assert!(!p.server_events.contains(&Event::PathDead));
    assert!(p.client.stats().pings_sent > 0);
    assert!(p.client.is_established());
    // Now the path silently drops everything.
    let start = p.now;
    let mut dead_at = None;
    for _ in 0..200 {
        p.advance(Duration::from_millis(5));
        p.transmit();
        p.c2s.clear();
        p.s2c.clear();
        p.timers();
        p.collect_events();
        if dead_at.is_none() && p.client_events.contains(&Event::PathDead) {
            dead_at = Some(p.now - start);
        }
    }
    let dead_at = dead_at.expect("client detected the dead path");
    // The last byte arrived at most one heartbeat interval before the cut.
    assert!(
        dead_at >= cfg.dead_timeout - cfg.heartbeat_interval,
        "{dead_at:?}"
    );
    assert!(
        dead_at <= cfg.dead_timeout + Duration::from_millis(5),
        "{dead_at:?}"
    );
    assert!(p.server_events.contains(&Event::PathDead));
    assert_eq!(p.client.stats().dead_paths, 1);
}

#[test]
fn fast_settings_detect_within_150ms() {
    let cfg = Config {
        heartbeat_interval: Duration::from_millis(50),
        dead_timeout: Duration::from_millis(150),
        ..Config::default()
    };
    let mut p = Pair::new(6, cfg.clone(), cfg);
    assert!(p.settle(STEP, 10));
    for _ in 0..200 {
        p.advance(Duration::from_millis(5));
        p.round();
    }
    assert!(!p.client_events.contains(&Event::PathDead));
    let start = p.now;
    let mut dead_at = None;
    for _ in 0..100 {
        p.advance(Duration::from_millis(5));
        p.transmit();
        p.c2s.clear();
        p.s2c.clear();
        p.timers();
        p.collect_events();
        if dead_at.is_none() && p.client_events.contains(&Event::PathDead) {
            dead_at = Some(p.now - start);
        }
    }
    assert!(dead_at.expect("detected") <= Duration::from_millis(155));
}

#[test]
fn server_resume_window_expires() {
    let cfg = Config {
        resume_window: Duration::from_secs(2),
        ..Config::default()
    };
    let mut p = Pair::new(7, cfg.clone(), cfg);
    assert!(p.settle(STEP, 10));
    p.cut(0, 0);
    let server = p.server.as_mut().unwrap();
    assert!(server.is_disconnected());
    let deadline = server.poll_timeout().expect("parked deadline");
    assert_eq!(deadline, p.now + Duration::from_secs(2));
    server.handle_timeout(p.now + Duration::from_millis(1999));
    assert_eq!(server.poll_event(), None);
    server.handle_timeout(deadline);
    assert_eq!(server.poll_event(), Some(Event::ResumeWindowExpired));
    assert!(server.is_finished());
    assert_eq!(
        server.write(b"x"),
        Err(namesocket::engine::WriteError::Closed)
    );
}

#[test]
fn shutdown_and_close() {
    let mut p = Pair::default_pair(8);
    assert!(p.settle(STEP, 10));
    p.write_client(b"last words");
    p.client.shutdown_write();
    assert!(p.client.write(b"more").is_err());
    assert!(p.settle(STEP, 20));
    let s = p.server.as_mut().unwrap();
    assert!(s.read_eof());
    assert!(p.server_events.contains(&Event::PeerClosed));
    // The server can still answer after the client's half close.
    p.write_server(b"reply");
    assert!(p.settle(STEP, 20));
    assert_eq!(p.c_got, b"reply");
    p.server.as_mut().unwrap().close();
    for _ in 0..20 {
        p.round();
        p.advance(STEP);
    }
    assert!(p.server_events.contains(&Event::Closed));
    assert!(p.client_events.contains(&Event::Closed));
    assert!(p.client_events.contains(&Event::PeerClosed));
    assert!(p.client.is_closed());
    assert!(p.server.as_ref().unwrap().is_closed());
}

#[test]
fn close_is_resent_after_resume() {
    let mut p = Pair::default_pair(9);
    assert!(p.settle(STEP, 10));
    let d = p.random_bytes(3000);
    p.write_client(&d);
    p.client.close();
    // Cut before anything arrives; the close must survive the resume.
    p.cut(0, 0);
    p.connect();
    for _ in 0..40 {
        p.round();
        p.advance(STEP);
    }
    assert_eq!(p.s_got, d);
    assert!(p.client.is_closed());
    assert!(p.server.as_ref().unwrap().is_closed());
}

#[derive(Debug, Clone)]
enum Op {
    WriteClient(usize),
    WriteServer(usize),
    Deliver(usize, usize),
    Read,
    Cut(usize, usize),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..20_000).prop_map(Op::WriteClient),
        3 => (1usize..20_000).prop_map(Op::WriteServer),
        4 => (0usize..30_000, 0usize..30_000).prop_map(|(a, b)| Op::Deliver(a, b)),
        2 => Just(Op::Read),
        1 => (0usize..40_000, 0usize..40_000).prop_map(|(a, b)| Op::Cut(a, b)),
        1 => Just(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random traffic both ways, several cuts at arbitrary byte positions
    /// (dropping whatever was in flight), reconnect and resume: both streams
    /// arrive exactly as written.
    #[test]
    fn streams_survive_arbitrary_cuts(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..40)) {
        let mut p = Pair::new(seed, small_buffers(), small_buffers());
        prop_assert!(p.settle(STEP, 10));
        for o in ops {
            match o {
                Op::WriteClient(n) => { let d = p.random_bytes(n); p.write_client(&d); }
                Op::WriteServer(n) => { let d = p.random_bytes(n); p.write_server(&d); }
                Op::Deliver(a, b) => { p.transmit(); p.deliver(a, b); }
                Op::Read => p.read_all(),
                Op::Cut(a, b) => { p.cut(a, b); p.connect(); }
                Op::Tick => { p.advance(STEP); p.timers(); }
            }
        }
        prop_assert!(p.settle(STEP, 2000), "did not settle");
        prop_assert_eq!(&p.s_got, &p.c_sent);
        prop_assert_eq!(&p.c_got, &p.s_sent);
        prop_assert!(p.rejects.is_empty());
        let cuts_seen = p.client_events.iter().filter(|e| matches!(e, Event::Resumed { .. })).count();
        prop_assert_eq!(cuts_seen as u64, p.client.stats().resumes);
    }
}

/// Found by `streams_survive_arbitrary_cuts`: the client read the server's
/// bytes and its ACK was lost in the cut. After the resume the client must
/// announce what it delivered again, or the server keeps those bytes
/// unacknowledged (and its send buffer full) forever.
#[test]
fn ack_lost_in_a_cut_is_announced_again_after_resume() {
    let mut p = Pair::new(0, small_buffers(), small_buffers());
    assert!(p.settle(STEP, 10));
    let d = p.random_bytes(9956);
    p.write_client(&d);
    let d = p.random_bytes(2048);
    p.write_server(&d);
    p.transmit();
    p.deliver(0, 2054);
    p.read_all();
    p.cut(0, 0);
    p.connect();
    assert!(p.settle(STEP, 200), "did not settle");
    assert_eq!(p.server.as_ref().unwrap().unacked_bytes(), 0);
    assert_eq!(p.c_got, p.s_sent);
    assert_eq!(p.s_got, p.c_sent);
}
