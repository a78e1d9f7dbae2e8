//! Authenticated resume: forged, replayed and unknown RESUMEs are rejected and
//! leave the session unaffected; non-namesocket peers give clear errors.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::{Pair, drain_tx};
use namesocket::engine::{Config, Event, KeyPair, Session, SessionError};
use namesocket::wire::v2::{self, Handshake, RejectReason, SessionId};
use namesocket::wire::{FirstMessage, WireError, accept_first};
use rand::SeedableRng;
use rand::rngs::StdRng;

const STEP: Duration = Duration::from_millis(5);

/// Runs a real cut + reconnect and returns the RESUME the client sent.
fn capture_resume(p: &mut Pair) -> v2::Resume {
    p.cut(0, 0);
    p.client.transport_up(p.now, &mut p.rng).unwrap();
    let mut bytes = Vec::new();
    drain_tx(&mut p.client, p.now, &mut bytes);
    let Ok(Some((FirstMessage::Resume(r), _))) = accept_first(&bytes) else {
        panic!("expected RESUME");
    };
    // Put the transport back into the harness so the test can continue.
    p.c2s = bytes;
    p.s2c.clear();
    p.server_fresh = Some(Vec::new());
    p.transport_up = true;
    r
}

fn assert_session_still_works(p: &mut Pair) {
    let d = p.random_bytes(4000);
    let before = p.s_got.len();
    p.write_client(&d);
    assert!(p.settle(STEP, 100), "session stuck");
    assert_eq!(&p.s_got[before..], &d[..]);
}

#[test]
fn forged_resume_with_wrong_proof_is_rejected() {
    let mut p = Pair::default_pair(21);
    assert!(p.settle(STEP, 10));
    let genuine = capture_resume(&mut p);
    let mut forged = genuine;
    forged.proof[0] ^= 1;
    let s = p.server.as_mut().unwrap();
    assert_eq!(
        s.attach_resume(p.now, &forged, &mut p.rng),
        Err(RejectReason::BadProof)
    );
    // The forged generation did not burn the genuine one, the session still
    // resumes and carries data.
    assert!(p.settle(STEP, 50));
    assert_eq!(p.client.stats().resumes, 1);
    assert_session_still_works(&mut p);
}

#[test]
fn eavesdropper_of_new_cannot_forge_resume() {
    // The attacker saw NEW and NEW_ACK (session id, nonces, public keys) and
    // knows the 4-tuple, but not a private key: keys it can guess give
    // proofs that fail.
    let mut p = Pair::default_pair(22);
    assert!(p.settle(STEP, 10));
    let sid = p.client.session_id();
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    for guess_key in [[0u8; 32], [0xAB; 32]] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&guess_key).unwrap();
        m.update(b"namesocket v2 resume");
        m.update(&sid.0);
        m.update(&1u64.to_be_bytes());
        m.update(&[5; 16]);
        m.update(&0u64.to_be_bytes());
        let proof: [u8; 32] = m.finalize().into_bytes().into();
        let r = v2::Resume {
            session_id: sid,
            generation: 1,
            nonce: [5; 16],
            bytes_received: 0,
            proof,
        };
        let s = p.server.as_mut().unwrap();
        assert_eq!(
            s.attach_resume(p.now, &r, &mut p.rng),
            Err(RejectReason::BadProof)
        );
        assert!(s.is_established(), "session unaffected");
    }
    assert!(
        p.server_events
            .iter()
            .all(|e| !matches!(e, Event::Resumed { .. }))
    );
    assert_session_still_works(&mut p);
}

#[test]
fn replayed_resume_is_rejected_as_stale() {
    let mut p = Pair::default_pair(23);
    assert!(p.settle(STEP, 10));
    let first = capture_resume(&mut p);
    assert!(p.settle(STEP, 50));
    assert_eq!(p.server.as_ref().unwrap().stats().resumes, 1);
    // Replay of the observed, genuinely authenticated RESUME.
    let s = p.server.as_mut().unwrap();
    assert_eq!(
        s.attach_resume(p.now, &first, &mut p.rng),
        Err(RejectReason::StaleGeneration)
    );
    assert!(s.is_established());
    assert_session_still_works(&mut p);
    // A second genuine resume (higher generation) works.
    let second = capture_resume(&mut p);
    assert_eq!(second.generation, first.generation + 1);
    assert!(p.settle(STEP, 50));
    assert_eq!(p.client.stats().resumes, 2);
    // And replaying it after the fact fails too, via the harness path.
    let replay = Handshake::Resume(second).to_vec();
    p.cut(0, 0);
    p.server_fresh = Some(Vec::new());
    p.transport_up = true;
    p.c2s = replay;
    p.deliver(usize::MAX, 0);
    assert_eq!(p.rejects, vec![RejectReason::StaleGeneration]);
}

#[test]
fn unknown_session_is_rejected() {
    let mut p = Pair::default_pair(24);
    assert!(p.settle(STEP, 10));
    let mut r = capture_resume(&mut p);
    r.session_id = SessionId([0x42; 16]);
    let s = p.server.as_mut().unwrap();
    assert_eq!(
        s.attach_resume(p.now, &r, &mut p.rng),
        Err(RejectReason::UnknownSession)
    );
    assert!(p.settle(STEP, 50));
    assert_session_still_works(&mut p);
}

#[test]
fn client_fails_clearly_on_reject() {
    let mut p = Pair::default_pair(25);
    assert!(p.settle(STEP, 10));
    p.cut(0, 0);
    p.client.transport_up(p.now, &mut p.rng).unwrap();
    let _ = p.client.poll_transmit(p.now).map(|t| t.len());
    let reject = namesocket::engine::encode_reject(RejectReason::Expired);
    let e = p.client.handle_input(p.now, &reject).unwrap_err();
    assert_eq!(e, SessionError::Rejected(RejectReason::Expired));
    assert!(p.client.is_finished());
    assert_eq!(
        p.client.poll_event(),
        Some(Event::Error(SessionError::Rejected(RejectReason::Expired)))
    );
}

#[test]
fn forged_resume_ack_is_not_accepted() {
    let mut p = Pair::default_pair(26);
    assert!(p.settle(STEP, 10));
    p.cut(0, 0);
    p.client.transport_up(p.now, &mut p.rng).unwrap();
    let mut sent = Vec::new();
    drain_tx(&mut p.client, p.now, &mut sent);
    let fake = Handshake::ResumeAck(v2::ResumeAck {
        generation: 1,
        nonce: [9; 16],
        bytes_received: 0,
        proof: [0; 32],
    })
    .to_vec();
    let e = p.client.handle_input(p.now, &fake).unwrap_err();
    assert_eq!(e, SessionError::BadResumeAck);
    // The client drops that transport but the session survives.
    assert!(p.client.is_disconnected());
    p.connect();
    assert!(p.settle(STEP, 50));
    assert_session_still_works(&mut p);
}

#[test]
fn http_server_is_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(27);
    let now = std::time::Instant::now();
    let keys = Arc::new(KeyPair::generate(&mut rng));
    let mut c = Session::client(Config::default(), keys).unwrap();
    c.transport_up(now, &mut rng).unwrap();
    let mut out = Vec::new();
    drain_tx(&mut c, now, &mut out);
    let e = c.handle_input(now, b"HTTP/1.1 200 OK\r\n").unwrap_err();
    assert_eq!(e, SessionError::Wire(WireError::BadMagic { found: 0x4854 }));
    assert!(c.is_finished());
    assert!(matches!(
        c.poll_event(),
        Some(Event::Error(SessionError::Wire(WireError::BadMagic { .. })))
    ));
    // Further input is ignored, not reinterpreted.
    assert_eq!(c.handle_input(now, b"\x4e\x53"), Ok(()));
}

#[test]
fn unknown_version_from_server_is_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(28);
    let now = std::time::Instant::now();
    let keys = Arc::new(KeyPair::generate(&mut rng));
    let mut c = Session::client(Config::default(), keys).unwrap();
    c.transport_up(now, &mut rng).unwrap();
    let e = c.handle_input(now, &[0x4E, 0x53, 7, 4, 0, 0]).unwrap_err();
    assert_eq!(e, SessionError::Wire(WireError::UnsupportedVersion(7)));
    // A thesis v1 server answering is also refused clearly.
    let mut c = Session::client(Config::default(), Arc::new(KeyPair::generate(&mut rng))).unwrap();
    c.transport_up(now, &mut rng).unwrap();
    let e = c
        .handle_input(now, &[0x4E, 0x53, 1, 3, 0, 0, 0, 0])
        .unwrap_err();
    assert_eq!(e, SessionError::Wire(WireError::UnsupportedVersion(1)));
}

#[test]
fn server_rejects_garbage_frames_without_corrupting_stream() {
    let mut p = Pair::default_pair(29);
    assert!(p.settle(STEP, 10));
    let d = p.random_bytes(10_000);
    p.write_client(&d);
    assert!(p.settle(STEP, 50));
    let s = p.server.as_mut().unwrap();
    let before = s.stats().bytes_received;
    let e = s.handle_input(p.now, b"GET / HTTP/1.1\r\n").unwrap_err();
    assert!(matches!(
        e,
        SessionError::Wire(WireError::UnknownFrame(b'G'))
    ));
    assert_eq!(s.stats().bytes_received, before);
    assert_eq!(s.stats().malformed_frames, 1);
    assert!(s.is_disconnected());
    // Client resumes; the stream continues exactly.
    p.cut(0, 0);
    p.connect();
    assert!(p.settle(STEP, 50));
    assert_eq!(p.s_got, d);
    assert_session_still_works(&mut p);
}
