//! The session parameters a peer announces in NEW / NEW_ACK are checked
//! (receive buffer cap, PING rate), the resume window is the smaller of the
//! two sides', and configurations whose timers could overflow are refused.

mod engine_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine_support::{Pair, drain_tx};
use namesocket::engine::{
    AcceptError, Config, ConfigError, ERROR_BAD_PARAMS, Event, KeyPair, MAX_TIMER,
    MIN_DEAD_TIMEOUT, Session, SessionError,
};
use namesocket::wire::v2::{New, Params, RejectReason, SessionId};
use rand::SeedableRng;
use rand::rngs::StdRng;

const STEP: Duration = Duration::from_millis(5);

/// The parameters a default client announces.
fn default_params() -> Params {
    Params {
        heartbeat_ms: 200,
        dead_timeout_ms: 600,
        resume_window_ms: 30_000,
        send_buffer_limit: 4 << 20,
    }
}

/// `accept_new` of a NEW announcing `params`, on a default server.
fn accept(params: Params) -> Result<Session, AcceptError> {
    let mut rng = StdRng::seed_from_u64(40);
    let keys = Arc::new(KeyPair::generate(&mut rng));
    let new = New {
        session_id: SessionId([3; 16]),
        client_nonce: [4; 16],
        client_public: KeyPair::generate(&mut rng).public(),
        params,
    };
    Session::accept_new(Instant::now(), Config::default(), keys, &new, &mut rng)
}

fn refused(detail_part: &str, r: Result<Session, AcceptError>) {
    match r {
        Err(AcceptError::Refused { reason, detail }) => {
            assert_eq!(reason, RejectReason::BadParams);
            assert!(detail.contains(detail_part), "{detail}");
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(s) => panic!("accepted: {s:?}"),
    }
}

/// A peer can no longer make us buffer up to 4 GiB of unread data, nor
/// announce a limit that makes every DATA frame a violation.
#[test]
fn new_with_send_buffer_limit_out_of_range_is_refused() {
    refused(
        "exceeds our recv_buffer_limit",
        accept(Params {
            send_buffer_limit: u32::MAX,
            ..default_params()
        }),
    );
    refused(
        "exceeds our recv_buffer_limit",
        accept(Params {
            send_buffer_limit: (16 << 20) + 1,
            ..default_params()
        }),
    );
    refused(
        "send_buffer_limit is 0",
        accept(Params {
            send_buffer_limit: 0,
            ..default_params()
        }),
    );
    // The bounds themselves are accepted.
    for limit in [1, 16 << 20] {
        let s = accept(Params {
            send_buffer_limit: limit,
            ..default_params()
        })
        .unwrap_or_else(|e| panic!("limit {limit}: {e:?}"));
        assert!(s.is_established());
    }
}

/// A tiny dead timeout would make us PING every millisecond.
#[test]
fn new_with_dead_timeout_below_the_minimum_is_refused() {
    for dead in [0, 3, 29] {
        refused(
            "dead_timeout_ms is below 30 ms",
            accept(Params {
                dead_timeout_ms: dead,
                ..default_params()
            }),
        );
    }
}

/// At the smallest accepted dead timeout we PING every 10 ms, not faster;
/// the peer's heartbeat and resume window values are accepted whatever
/// they are.
#[test]
fn ping_rate_is_bounded_by_the_minimum_dead_timeout() {
    let now = Instant::now();
    let mut rng = StdRng::seed_from_u64(41);
    let keys = Arc::new(KeyPair::generate(&mut rng));
    let new = New {
        session_id: SessionId([5; 16]),
        client_nonce: [6; 16],
        client_public: KeyPair::generate(&mut rng).public(),
        params: Params {
            heartbeat_ms: 0,
            dead_timeout_ms: 30,
            resume_window_ms: u32::MAX,
            send_buffer_limit: 4 << 20,
        },
    };
    let mut s = Session::accept_new(now, Config::default(), keys, &new, &mut rng).unwrap();
    let mut out = Vec::new();
    drain_tx(&mut s, now, &mut out);
    assert!(!out.is_empty(), "NEW_ACK");
    assert_eq!(s.poll_timeout(), Some(now + MIN_DEAD_TIMEOUT / 3));
    // A huge resume window from the peer leaves ours in force.
    assert_eq!(s.resume_window(), Config::default().resume_window);
}

/// A client announcing a send buffer beyond the server's receive cap is
/// refused with REJECT(BadParams); a server with a larger cap accepts it.
#[test]
fn client_with_oversized_send_buffer_gets_a_clear_reject() {
    let big = Config {
        send_buffer_limit: 32 << 20,
        ..Config::default()
    };
    let mut p = Pair::new(42, big.clone(), Config::default());
    p.round();
    p.round();
    assert_eq!(p.rejects, vec![RejectReason::BadParams]);
    assert!(p.server.is_none());
    assert!(p.client.is_finished());
    let e = SessionError::Rejected(RejectReason::BadParams);
    assert!(p.client_events.contains(&Event::Error(e.clone())));
    assert_eq!(namesocket::Error::Session(e).errno(), libc::ECONNREFUSED);

    let roomy = Config {
        recv_buffer_limit: 32 << 20,
        ..Config::default()
    };
    let mut p = Pair::new(43, big, roomy);
    assert!(p.settle(STEP, 10));
    assert!(p.client.is_established());
}

/// A client refuses a NEW_ACK whose parameters are out of range, and tells
/// the server with ERROR(ERROR_BAD_PARAMS), which fails the server's side
/// at once instead of parking it.
#[test]
fn client_refuses_new_ack_with_oversized_send_buffer() {
    let big = Config {
        send_buffer_limit: 32 << 20,
        ..Config::default()
    };
    let mut p = Pair::new(44, Config::default(), big);
    for _ in 0..3 {
        p.round();
    }
    let e = SessionError::PeerParams("send_buffer_limit exceeds our recv_buffer_limit");
    assert!(
        p.client_events.contains(&Event::Error(e.clone())),
        "{:?}",
        p.client_events
    );
    assert!(p.client.is_finished());
    assert_eq!(namesocket::Error::Session(e).errno(), libc::ECONNREFUSED);
    let server = p.server.as_ref().expect("server session from NEW");
    assert!(server.is_finished());
    assert!(
        p.server_events
            .contains(&Event::Error(SessionError::PeerError(ERROR_BAD_PARAMS))),
        "{:?}",
        p.server_events
    );
}

/// The client expires together with a server whose window is shorter (and
/// reports the expiry, ETIMEDOUT in the drivers, instead of reconnecting
/// into an unknown-session refusal); the same the other way round.
#[test]
fn resume_window_is_the_smaller_of_both_sides() {
    for (client_window, server_window) in [(30, 2), (2, 30)] {
        let c = Config {
            resume_window: Duration::from_secs(client_window),
            ..Config::default()
        };
        let s = Config {
            resume_window: Duration::from_secs(server_window),
            ..Config::default()
        };
        let mut p = Pair::new(45, c, s);
        assert!(p.settle(STEP, 10));
        let window = Duration::from_secs(2);
        assert_eq!(p.client.resume_window(), window);
        assert_eq!(p.server.as_ref().unwrap().resume_window(), window);
        p.cut(0, 0);
        let lost = p.now;
        assert_eq!(p.client.poll_timeout(), Some(lost + window));
        assert_eq!(
            p.server.as_ref().unwrap().poll_timeout(),
            Some(lost + window)
        );
        p.now = lost + window;
        p.timers();
        p.collect_events();
        assert!(p.client_events.contains(&Event::ResumeWindowExpired));
        assert!(p.server_events.contains(&Event::ResumeWindowExpired));
        assert!(p.client.is_finished());
    }
}

/// A reconnect whose RESUME never completes does not restart the resume
/// window: the client still gives up when the server does.
#[test]
fn failed_resume_attempt_does_not_restart_the_window() {
    let cfg = Config {
        resume_window: Duration::from_secs(2),
        ..Config::default()
    };
    let mut p = Pair::new(46, cfg.clone(), cfg);
    assert!(p.settle(STEP, 10));
    p.cut(0, 0);
    let lost = p.now;
    p.advance(Duration::from_secs(1));
    // A new transport connects, RESUME goes out, and the transport dies
    // before RESUME_ACK.
    p.client.transport_up(p.now, &mut p.rng).unwrap();
    let mut sent = Vec::new();
    drain_tx(&mut p.client, p.now, &mut sent);
    p.advance(Duration::from_millis(500));
    p.client.transport_down(p.now);
    assert!(p.client.is_disconnected());
    assert_eq!(p.client.poll_timeout(), Some(lost + Duration::from_secs(2)));
    // A completed resume starts the next window afresh.
    p.connect();
    assert!(p.settle(STEP, 20));
    assert_eq!(p.client.stats().resumes, 1);
    p.advance(Duration::from_secs(5));
    p.cut(0, 0);
    assert_eq!(
        p.client.poll_timeout(),
        Some(p.now + Duration::from_secs(2))
    );
}

/// Timers as large as `Duration::MAX` are refused (they used to overflow
/// `2 × heartbeat` in `validate` itself and `since + resume_window` later);
/// the largest accepted ones run without overflow.
#[test]
fn config_timers_have_upper_bounds() {
    let huge = Duration::MAX;
    let cases = [
        Config {
            heartbeat_interval: huge,
            dead_timeout: huge,
            ..Config::default()
        },
        Config {
            heartbeat_interval: Duration::from_secs(1),
            dead_timeout: huge,
            ..Config::default()
        },
        Config {
            resume_window: huge,
            ..Config::default()
        },
        Config {
            ack_delay: huge,
            ..Config::default()
        },
        Config {
            resume_window: MAX_TIMER + Duration::from_millis(1),
            ..Config::default()
        },
    ];
    let mut rng = StdRng::seed_from_u64(47);
    for c in cases {
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid(_))),
            "{c:?}"
        );
        let keys = Arc::new(KeyPair::generate(&mut rng));
        assert!(Session::client(c, keys).is_err());
    }
    let too_fast = Config {
        heartbeat_interval: Duration::from_millis(5),
        dead_timeout: Duration::from_millis(20),
        ..Config::default()
    };
    assert!(too_fast.validate().is_err());
    let zero_recv = Config {
        recv_buffer_limit: 0,
        ..Config::default()
    };
    assert!(zero_recv.validate().is_err());

    // The largest timers work end to end: handshake, data, a cut, expiry.
    let max = Config {
        heartbeat_interval: MAX_TIMER / 2,
        dead_timeout: MAX_TIMER,
        resume_window: MAX_TIMER,
        ack_delay: MAX_TIMER,
        ..Config::default()
    };
    max.validate().unwrap();
    let mut p = Pair::new(48, max.clone(), max);
    assert!(p.settle(STEP, 10));
    p.write_client(b"far future");
    for _ in 0..5 {
        p.round();
    }
    assert_eq!(p.s_got, b"far future");
    p.cut(0, 0);
    assert_eq!(p.client.poll_timeout(), Some(p.now + MAX_TIMER));
    p.now += MAX_TIMER;
    p.timers();
    p.collect_events();
    assert!(p.client_events.contains(&Event::ResumeWindowExpired));
}
