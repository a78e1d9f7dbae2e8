//! Driver tests on loopback: the std and tokio drivers, the thesis API,
//! resume after a broken transport, a forged RESUME, a non-namesocket peer.
//! (Path failures between real links are tested in the lab: tests/tests/.)

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use namesocket::api::{self, NsSet};
use namesocket::engine::SessionError;
use namesocket::wire::v2::{Handshake, New, Params, RejectReason, Resume, SessionId};
use namesocket::{AsyncNameListener, AsyncNameStream, Error, NameListener, NameStream, Options};

fn fast() -> Options {
    Options::fast_failover()
}

/// A tokio runtime with two worker threads.
fn multi_thread_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `to` reads exactly `msg` (its peer sent it).
fn expect_msg(to: &NameStream, msg: &[u8]) {
    let mut buf = vec![0u8; msg.len()];
    let mut r = to;
    r.read_exact(&mut buf).unwrap();
    assert_eq!(buf, msg);
}

/// `from` sends `msg` and its peer `to` reads exactly that.
fn pass_msg(from: &NameStream, to: &NameStream, msg: &[u8]) {
    let mut w = from;
    w.write_all(msg).unwrap();
    expect_msg(to, msg);
}

/// The tokio driver's [`pass_msg`].
async fn pass_msg_async(from: &mut AsyncNameStream, to: &mut AsyncNameStream, msg: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    from.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    to.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg);
}

/// What a raw client reads after sending a forged RESUME (for session `id`,
/// with a made-up proof) to a listener on `port`.
fn forged_resume_reply(port: u16, id: SessionId, nonce: u8, proof: u8) -> Vec<u8> {
    let forged = Handshake::Resume(Resume {
        session_id: id,
        generation: 1,
        nonce: [nonce; 16],
        bytes_received: 0,
        proof: [proof; 32],
    });
    let mut bytes = Vec::new();
    forged.emit(&mut bytes);
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(&bytes).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    reply
}

/// `reply` is a REJECT(BadProof) and nothing else.
fn assert_bad_proof_reject(reply: &[u8]) {
    match Handshake::parse(reply) {
        Ok(Some((Handshake::Reject(reason), used))) => {
            assert_eq!(reason, RejectReason::BadProof);
            assert_eq!(used, reply.len(), "nothing after the REJECT");
        }
        other => panic!("expected REJECT(BadProof), got {other:?} from {reply:?}"),
    }
}

/// Deterministic pseudo-random bytes (xorshift) so both ends can check.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn echo_one_megabyte_both_ways() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port().to_string();
    let server = thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let mut buf = vec![0u8; 8192];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).unwrap();
            total += n;
        }
        s.wait_acked(Some(Duration::from_secs(10))).unwrap();
        total
    });
    let data = pattern(1 << 20, 7);
    let mut c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
    // Interleave writes and reads on one thread with a bounded in-flight window.
    let mut got = Vec::with_capacity(data.len());
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    while got.len() < data.len() {
        if sent < data.len() && sent - got.len() < 256 * 1024 {
            let end = (sent + 16384).min(data.len());
            c.write_all(&data[sent..end]).unwrap();
            sent = end;
            if sent == data.len() {
                c.shutdown(std::net::Shutdown::Write).unwrap();
            }
            continue;
        }
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "unexpected EOF after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "echo differs");
    assert_eq!(c.read(&mut buf).unwrap(), 0, "EOF after the echo");
    assert_eq!(server.join().unwrap(), data.len());
}

#[test]
fn resume_after_broken_transport_loses_nothing() {
    let l = std::sync::Arc::new(NameListener::bind_with("0", &fast()).unwrap());
    let port = l.local_port().to_string();
    let total = 8 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let l2 = std::sync::Arc::clone(&l);
    let server = thread::spawn(move || {
        let s = std::sync::Arc::new(l2.accept().unwrap());
        tx.send(std::sync::Arc::clone(&s)).unwrap();
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let data = pattern(total, 99);
    let c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
    let mut w = &c;
    let mut server_side = None;
    for (i, chunk) in data.chunks(8192).enumerate() {
        if let Err(e) = w.write_all(chunk) {
            panic!(
                "write {i} failed: {e:?}; log: {:#?}; stats {:?}",
                c.path_log(),
                c.stats()
            );
        }
        if i == 300 || i == 700 {
            let srv = server_side.get_or_insert_with(|| rx.recv().unwrap());
            let before = c.path_log().resumes;
            c.break_transport();
            // Wait for the resume so that the second break hits a new transport.
            let t0 = std::time::Instant::now();
            while c.path_log().resumes == before {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no resume: client {:#?}\nclient stats {:?}\nserver {:#?}\nlistener {:?}",
                    c.path_log(),
                    c.stats(),
                    srv.path_log(),
                    l.stats()
                );
                let _ = c.poll_writable();
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.wait_acked(Some(Duration::from_secs(20))).unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "stream differs");
    let log = c.path_log();
    assert!(log.resumes >= 2, "expected two resumes, log: {log:?}");
    assert!(l.stats().resumes >= 2, "listener saw {:?}", l.stats());
}

#[test]
fn thesis_api_roundtrip_and_nselect() {
    // nlisten on an ephemeral port, close, and the descriptor is gone.
    let srv = api::nsocket(0).unwrap();
    api::nlisten(srv, "0", 16).unwrap();
    api::nclose(srv).unwrap();
    assert!(matches!(api::nclose(srv), Err(Error::BadDescriptor)));

    let port = free_port();
    let srv = api::nsocket(0).unwrap();
    api::nlisten(srv, &port.to_string(), 16).unwrap();
    // nselect on the listener times out with nothing pending.
    let mut r: NsSet = [srv].into_iter().collect();
    assert_eq!(
        api::nselect(Some(&mut r), None, None, Some(Duration::from_millis(30))).unwrap(),
        0
    );
    assert!(r.is_empty());

    let client = thread::spawn(move || {
        let c = api::nsocket(0).unwrap();
        api::nconnect(c, "localhost", &port.to_string()).unwrap();
        assert_eq!(api::nsend(c, b"hello namesocket", 0).unwrap(), 16);
        let mut buf = [0u8; 64];
        let n = api::nrecv(c, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"HELLO");
        api::nshutdown(c, libc::SHUT_WR).unwrap();
        assert!(matches!(api::nsend(c, b"x", 0), Err(Error::Shutdown)));
        assert_eq!(api::nsend(c, b"x", 0).unwrap_err().errno(), libc::EPIPE);
        api::nclose(c).unwrap();
    });

    let mut r: NsSet = [srv].into_iter().collect();
    assert_eq!(
        api::nselect(Some(&mut r), None, None, Some(Duration::from_secs(10))).unwrap(),
        1
    );
    assert!(r.contains(srv));
    let s = api::naccept(srv).unwrap();
    let mut r: NsSet = [s].into_iter().collect();
    assert_eq!(
        api::nselect(Some(&mut r), None, None, Some(Duration::from_secs(10))).unwrap(),
        1
    );
    let mut buf = [0u8; 16];
    assert_eq!(api::nrecv(s, &mut buf, libc::MSG_WAITALL).unwrap(), 16);
    assert_eq!(&buf, b"hello namesocket");
    assert_eq!(api::nsend(s, b"HELLO", 0).unwrap(), 5);
    // The client shuts down writing: reads end with 0.
    assert_eq!(api::nrecv(s, &mut buf, 0).unwrap(), 0);
    client.join().unwrap();

    // Errors with their errno values.
    assert_eq!(
        api::nrecv(9999, &mut buf, 0).unwrap_err().errno(),
        libc::EBADF
    );
    assert_eq!(
        api::nsend(s, b"x", libc::MSG_OOB).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    assert_eq!(api::nshutdown(s, 42).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(api::naccept(s).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(
        api::nsocket(0x4000_0000).unwrap_err().errno(),
        libc::EOPNOTSUPP
    );
    let c = api::nsocket(0).unwrap();
    let e = api::nconnect(c, "no-such-host.invalid", &port.to_string()).unwrap_err();
    assert!(matches!(e, Error::Resolve(_)), "{e:?}");
    // The descriptor is still usable after a failed connect.
    api::nconnect(c, "127.0.0.1", &port.to_string()).unwrap();
    assert_eq!(
        api::nconnect(c, "127.0.0.1", &port.to_string())
            .unwrap_err()
            .errno(),
        libc::EISCONN
    );
    api::nclose(c).unwrap();
    api::nclose(s).unwrap();
    api::nclose(srv).unwrap();
}

#[test]
fn nonblocking_api_returns_eagain() {
    let port = free_port();
    let srv = api::nsocket(api::NS_NONBLOCK).unwrap();
    api::nlisten(srv, &port.to_string(), 4).unwrap();
    assert_eq!(api::naccept(srv).unwrap_err().errno(), libc::EAGAIN);
    let c = api::nsocket(api::NS_NONBLOCK).unwrap();
    api::nconnect(c, "127.0.0.1", &port.to_string()).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(
        api::nrecv(c, &mut buf, 0).unwrap_err().errno(),
        libc::EAGAIN
    );
    api::nclose(c).unwrap();
    api::nclose(srv).unwrap();
}

/// Waits until `nsd` is writable (NEW_ACK arrived), then sends with
/// `flags` until the retained send buffer is full; returns the bytes
/// accepted and the error that ended it.
fn fill_send_buffer(nsd: i32, flags: i32) -> (usize, Error) {
    let mut w: NsSet = [nsd].into_iter().collect();
    assert_eq!(
        api::nselect(None, Some(&mut w), None, Some(Duration::from_secs(10))).unwrap(),
        1
    );
    assert!(w.contains(nsd));
    let chunk = [0x5a; 8192];
    let mut accepted = 0;
    loop {
        match api::nsend(nsd, &chunk, flags) {
            Ok(n) => {
                assert!(n > 0);
                accepted += n;
            }
            Err(e) => return (accepted, e),
        }
    }
}

/// A non-blocking `nsend` (`NS_NONBLOCK`, or `MSG_DONTWAIT` on a blocking
/// namesocket) returns EAGAIN once the retained send buffer is full (the
/// peer application reads nothing, so nothing is acknowledged), and
/// `nselect`'s write set reports the namesocket only while it has room.
#[test]
fn nonblocking_nsend_returns_eagain_on_a_full_send_buffer() {
    const LIMIT: usize = 64 << 10;
    let mut o = fast();
    o.session.send_buffer_limit = LIMIT;
    let port = free_port().to_string();
    let srv = api::nsocket_with(0, o.clone()).unwrap();
    api::nlisten(srv, &port, 4).unwrap();

    let c = api::nsocket_with(api::NS_NONBLOCK, o.clone()).unwrap();
    api::nconnect(c, "127.0.0.1", &port).unwrap();
    let (accepted, e) = fill_send_buffer(c, 0);
    assert_eq!(e.errno(), libc::EAGAIN, "{e:?}");
    assert!(matches!(e, Error::WouldBlock));
    assert_eq!(accepted, LIMIT);
    // Full: not in the write set.
    let mut w: NsSet = [c].into_iter().collect();
    assert_eq!(
        api::nselect(None, Some(&mut w), None, Some(Duration::from_millis(100))).unwrap(),
        0
    );
    assert!(w.is_empty());

    // The same with MSG_DONTWAIT on a blocking namesocket.
    let b = api::nsocket_with(0, o).unwrap();
    api::nconnect(b, "127.0.0.1", &port).unwrap();
    let (accepted, e) = fill_send_buffer(b, libc::MSG_DONTWAIT);
    assert_eq!(e.errno(), libc::EAGAIN, "{e:?}");
    assert_eq!(accepted, LIMIT);

    // The server application reads what the first client sent: the ACKs
    // make room and the write set reports it.
    let s = api::naccept(srv).unwrap();
    let mut buf = vec![0u8; LIMIT];
    assert_eq!(api::nrecv(s, &mut buf, libc::MSG_WAITALL).unwrap(), LIMIT);
    assert!(buf.iter().all(|&x| x == 0x5a));
    let mut w: NsSet = [c, b].into_iter().collect();
    assert_eq!(
        api::nselect(None, Some(&mut w), None, Some(Duration::from_secs(10))).unwrap(),
        1
    );
    assert!(w.contains(c) && !w.contains(b), "{w:?}");
    assert_eq!(api::nsend(c, b"more", 0).unwrap(), 4);
    for nsd in [c, b, s, srv] {
        api::nclose(nsd).unwrap();
    }
}

/// `nselect`'s exception set reports a session that failed (here: the
/// peer is not a namesocket peer) and not a healthy one; the failure is
/// then reported by the next call.
#[test]
fn nselect_exception_set_reports_failed_sessions() {
    // A healthy session: nothing exceptional, but writable.
    let port = free_port().to_string();
    let srv = api::nsocket_with(0, fast()).unwrap();
    api::nlisten(srv, &port, 4).unwrap();
    let good = api::nsocket_with(0, fast()).unwrap();
    api::nconnect(good, "127.0.0.1", &port).unwrap();
    let mut w: NsSet = [good].into_iter().collect();
    let mut x: NsSet = [good].into_iter().collect();
    assert_eq!(
        api::nselect(
            None,
            Some(&mut w),
            Some(&mut x),
            Some(Duration::from_secs(10))
        )
        .unwrap(),
        1
    );
    assert!(w.contains(good) && x.is_empty());
    let mut x: NsSet = [good].into_iter().collect();
    assert_eq!(
        api::nselect(None, None, Some(&mut x), Some(Duration::from_millis(100))).unwrap(),
        0
    );

    // A peer that answers NEW with HTTP: the session fails.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = plain.local_addr().unwrap().port().to_string();
    let t = thread::spawn(move || {
        let (mut s, _) = plain.accept().unwrap();
        s.write_all(
            b"HTTP/1.1 400 Bad Request

",
        )
        .unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let bad = api::nsocket_with(0, fast()).unwrap();
    api::nconnect(bad, "127.0.0.1", &plain_port).unwrap();
    // Only the exception set: nselect itself must read the answer.
    let mut x: NsSet = [good, bad].into_iter().collect();
    assert_eq!(
        api::nselect(None, None, Some(&mut x), Some(Duration::from_secs(10))).unwrap(),
        1
    );
    assert!(x.contains(bad) && !x.contains(good), "{x:?}");
    let e = api::nrecv(bad, &mut [0u8; 8], 0).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
    // Reported in every set it is in.
    let mut r: NsSet = [bad].into_iter().collect();
    let mut x: NsSet = [bad].into_iter().collect();
    assert_eq!(
        api::nselect(Some(&mut r), None, Some(&mut x), Some(Duration::ZERO)).unwrap(),
        2
    );
    t.join().unwrap();
    for nsd in [bad, good, srv] {
        api::nclose(nsd).unwrap();
    }
}

/// Options announcing a send buffer beyond the default receive cap.
fn big_send_buffer() -> Options {
    let mut big = fast();
    big.session.send_buffer_limit = 32 << 20;
    big
}

/// `e` refuses a session for its parameters (ECONNREFUSED): the server's
/// REJECT(BadParams) if `by_server`, else the client's own refusal of the
/// server's.
fn assert_refused(e: &Error, by_server: bool) {
    if by_server {
        assert!(
            matches!(
                e,
                Error::Session(SessionError::Rejected(RejectReason::BadParams))
            ),
            "{e:?}"
        );
    } else {
        assert!(
            matches!(e, Error::Session(SessionError::PeerParams(_))),
            "{e:?}"
        );
    }
    assert_eq!(e.errno(), libc::ECONNREFUSED);
}

/// Session parameters out of range are refused with a clear error either
/// way: a client announcing a send buffer beyond the server's receive cap
/// gets REJECT(BadParams), a server doing so has its NEW_ACK refused by the
/// client (which tells the server with an ERROR frame).
#[test]
fn out_of_range_session_parameters_are_refused() {
    let big = big_send_buffer();

    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port().to_string();
    let c = NameStream::connect_with("127.0.0.1", &port, &big).unwrap();
    let e = c.recv(&mut [0u8; 8]).unwrap_err();
    assert_refused(&e, true);
    assert_eq!(l.stats().rejected_sessions, 1);
    assert_eq!(l.stats().sessions, 0);

    let l = NameListener::bind_with("0", &big).unwrap();
    let port = l.local_port().to_string();
    let c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
    let e = c.recv(&mut [0u8; 8]).unwrap_err();
    assert_refused(&e, false);
    // The server's session hears of it at once (not after its resume
    // window).
    let s = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5)));
    let e = s.recv(&mut [0u8; 8]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Session(SessionError::PeerError(
                namesocket::engine::ERROR_BAD_PARAMS
            ))
        ),
        "{e:?}"
    );
}

/// The tokio driver refuses out-of-range session parameters the same way.
#[test]
fn async_driver_refuses_out_of_range_session_parameters() {
    let rt = multi_thread_rt();
    rt.block_on(async {
        let big = big_send_buffer();
        let l = AsyncNameListener::bind_with("0", &fast()).await.unwrap();
        let port = l.local_port().to_string();
        let e = AsyncNameStream::connect_with("127.0.0.1", &port, &big)
            .await
            .unwrap_err();
        assert_refused(&e, true);
        assert_eq!(l.stats().rejected_sessions, 1);

        let l = AsyncNameListener::bind_with("0", &big).await.unwrap();
        let port = l.local_port().to_string();
        let e = AsyncNameStream::connect_with("127.0.0.1", &port, &fast())
            .await
            .unwrap_err();
        assert_refused(&e, false);
    });
}

/// Timers too large for the engine are refused as invalid arguments; the
/// drivers' own timeouts may be as large as `Duration::MAX` ("never")
/// without overflowing a deadline.
#[test]
fn huge_timeouts_are_refused_or_mean_never() {
    let mut o = fast();
    o.session.dead_timeout = Duration::MAX;
    o.session.heartbeat_interval = Duration::MAX;
    let e = NameStream::connect_with("127.0.0.1", "1", &o).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e:?}");
    let e = NameListener::bind_with("0", &o).unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL, "{e:?}");
    assert_eq!(api::nsocket_with(0, o).unwrap_err().errno(), libc::EINVAL);

    let mut o = fast();
    o.connect_attempt_timeout = Duration::MAX;
    o.connect_stagger = Duration::MAX;
    o.handshake_timeout = Duration::MAX;
    o.write_coalescing = Some(Duration::MAX);
    let l = NameListener::bind_with("0", &o).unwrap();
    let port = l.local_port().to_string();
    let c = NameStream::connect_with("127.0.0.1", &port, &o).unwrap();
    c.set_read_timeout(Some(Duration::MAX));
    c.set_write_timeout(Some(Duration::MAX));
    (&c).write_all(b"ping").unwrap();
    let s = l.accept_timeout(Some(Duration::MAX)).unwrap();
    expect_msg(&s, b"ping");
    pass_msg(&s, &c, b"pong");
}

/// Connections that never send their first message are capped
/// ([`Options::max_pending_handshakes`]): beyond the cap the oldest is
/// dropped and counted, and real clients still get in.
#[test]
fn silent_connections_beyond_the_cap_are_dropped_oldest_first() {
    const CAP: usize = 4;
    const SILENT: usize = 10;
    let l = NameListener::bind_with("0", &capped(CAP)).unwrap();
    let port = l.local_port();
    // The round that accepted the last one drops the excess at its end.
    let mut silent = open_silent(port, SILENT, CAP, || l.stats());
    // The oldest were dropped (reset), the newest still wait.
    for (i, s) in silent.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let r = s.read(&mut [0u8; 1]);
        if i < SILENT - CAP {
            assert!(
                matches!(&r, Ok(0))
                    || r.as_ref()
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "connection {i}: {r:?}"
            );
        } else {
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "connection {i}: {r:?}"
            );
        }
    }
    // A real client still gets in.
    let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
    (&c).write_all(b"hi").unwrap();
    let s = l.accept_timeout(Some(Duration::from_secs(10))).unwrap();
    expect_msg(&s, b"hi");
    // Its NEW is normally read right after the accept; if it came late, its
    // connection waited too and pushed out one more silent one.
    let overflows = l.stats().pending_overflows;
    assert!(
        (SILENT - CAP) as u64 <= overflows && overflows <= (SILENT - CAP + 1) as u64,
        "{overflows}"
    );
    // The newest silent connection, still waiting, speaks at last: NEW_ACK.
    let late = silent.last_mut().unwrap();
    let new = Handshake::New(New {
        session_id: SessionId([0x17; 16]),
        client_nonce: [1; 16],
        client_public: [9; 32],
        params: Params {
            heartbeat_ms: 200,
            dead_timeout_ms: 600,
            resume_window_ms: 30_000,
            send_buffer_limit: 1 << 20,
        },
    });
    late.write_all(&new.to_vec()).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    let answer = loop {
        if let Some((h, _)) = Handshake::parse(&reply).unwrap() {
            break h;
        }
        let n = late.read(&mut buf).unwrap();
        assert!(n > 0, "closed without an answer");
        reply.extend_from_slice(&buf[..n]);
    };
    assert!(matches!(answer, Handshake::NewAck(_)), "{answer:?}");
}

/// The tokio listener caps silent connections the same way.
#[test]
fn async_listener_caps_silent_connections() {
    const CAP: usize = 3;
    const SILENT: usize = 8;
    let rt = multi_thread_rt();
    let l = rt
        .block_on(AsyncNameListener::bind_with("0", &capped(CAP)))
        .unwrap();
    let port = l.local_port();
    // Counted just after the connection.
    let mut silent = open_silent(port, SILENT, CAP, || l.stats());
    for (i, s) in silent.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if i < SILENT - CAP {
            let r = s.read(&mut [0u8; 1]);
            assert!(matches!(r, Ok(0)), "connection {i}: {r:?}");
        }
    }
    // A real client still gets in.
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = AsyncNameStream::connect_with("127.0.0.1", &port.to_string(), &fast())
            .await
            .unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut s = l.accept().await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    });
    // The client's connection waited too (each one is listed before its
    // first read), pushing out one more silent connection.
    assert_eq!(l.stats().pending_overflows, (SILENT - CAP + 1) as u64);
}

/// Options whose listener keeps at most `cap` connections that have not
/// sent their first message (and would wait a minute for it).
fn capped(cap: usize) -> Options {
    let mut o = fast();
    o.max_pending_handshakes = cap;
    o.handshake_timeout = Duration::from_secs(60);
    o
}

/// Opens `n` silent raw connections to the listener on `port`, one at a
/// time (each counted in `stats` before the next, so that they are
/// accepted in this order); waits until all but `cap` of them are dropped
/// and checks that no more were.
fn open_silent(
    port: u16,
    n: usize,
    cap: usize,
    stats: impl Fn() -> namesocket::ListenerStats,
) -> Vec<TcpStream> {
    let mut silent = Vec::new();
    for i in 0..n {
        silent.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        wait_for(|| stats().connections > i as u64);
    }
    wait_for(|| stats().pending_overflows >= (n - cap) as u64);
    assert_eq!(stats().pending_overflows, (n - cap) as u64);
    silent
}

/// Waits up to 10 s for `cond`.
fn wait_for(cond: impl Fn() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "condition not met");
        thread::sleep(Duration::from_millis(2));
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("[::]:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn non_namesocket_peer_gives_protocol_error() {
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut s, _) = plain.accept().unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        thread::sleep(Duration::from_millis(300));
        // A second connection (the nconnect below) gets the same answer.
        if let Ok((mut s2, _)) = plain.accept() {
            let _ = s2.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            thread::sleep(Duration::from_millis(300));
        }
    });
    // connect is optimistic (it does not wait for NEW_ACK): the bad peer is
    // reported by the first call that reads its answer.
    let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
    let e = c.recv(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
    assert!(matches!(e, Error::Session(_)), "{e:?}");
    // Later calls report the same error.
    let e = c.send(b"x").unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
    drop(c);
    // The thesis API reports the same errno on the first nrecv.
    let nsd = api::nsocket(0).unwrap();
    api::nconnect(nsd, "127.0.0.1", &port.to_string()).unwrap();
    let e = api::nrecv(nsd, &mut [0u8; 16], 0).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO, "{e:?}");
    api::nclose(nsd).unwrap();
    t.join().unwrap();
}

#[test]
fn forged_resume_is_rejected_and_session_unaffected() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port();
    let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
    (&c).write_all(b"before").unwrap();
    let s = l.accept().unwrap();
    expect_msg(&s, b"before");

    // An attacker who knows the session id (it travels in clear) but not the
    // secret sends RESUME with a made-up proof.
    let reply = forged_resume_reply(port, SessionId(c.session_id().0), 7, 0x55);
    assert_bad_proof_reject(&reply);
    assert_eq!(l.stats().rejected_resumes, 1);
    assert_eq!(l.stats().resumes, 0);

    // The real session still works in both directions.
    pass_msg(&c, &s, b"after");
    pass_msg(&s, &c, b"reply");
}

#[test]
fn tokio_stream_roundtrip() {
    let rt = multi_thread_rt();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = AsyncNameListener::bind_with("0", &fast()).await.unwrap();
        let port = l.local_port().to_string();
        let data = pattern(2 << 20, 3);
        let expected = data.clone();
        let server = tokio::spawn(async move {
            let mut s = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"done").await.unwrap();
            s.wait_acked().await.unwrap();
            got
        });
        let mut c = AsyncNameStream::connect_with("127.0.0.1", &port, &fast())
            .await
            .unwrap();
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"done");
        assert!(server.await.unwrap() == expected);
    });
}

#[test]
fn connect_refused_and_unknown_service() {
    let port = free_port();
    let e = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap_err();
    assert_eq!(e.errno(), libc::ECONNREFUSED, "{e:?}");
    let e = NameStream::connect_with("127.0.0.1", "no-such-service-xyz", &fast()).unwrap_err();
    assert!(matches!(e, Error::Resolve(_)), "{e:?}");
}

#[test]
fn rapid_breaks_including_during_resume() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port().to_string();
    let total = 4 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = thread::spawn(move || {
        let s = std::sync::Arc::new(l.accept().unwrap());
        tx.send((std::sync::Arc::clone(&s), l)).unwrap();
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 65536];
        loop {
            let n = s.recv(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let data = pattern(total, 5);
    let c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
    let mut w = &c;
    for (i, chunk) in data.chunks(4096).enumerate() {
        if let Err(e) = w.write_all(chunk) {
            panic!(
                "write {i} failed: {e:?}; history: {:#?}",
                c.path_log().history
            );
        }
        if i % 50 == 49 {
            // Breaks land at random points: established, reconnecting, or
            // waiting for RESUME_ACK.
            c.break_transport();
        }
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    if let Err(e) = c.wait_acked(Some(Duration::from_secs(20))) {
        let (s, l) = rx.recv().unwrap();
        panic!(
            "not acked: {e:?}\nclient: {}\nserver: {}\nlistener: {:?}\nclient history: {:#?}\nserver history: {:#?}",
            c.debug_state(),
            s.debug_state(),
            l.stats(),
            c.path_log().history,
            s.path_log().history
        );
    }
    let got = server.join().unwrap();
    assert!(
        got == data,
        "stream differs ({} vs {} bytes)",
        got.len(),
        data.len()
    );
    // Breaks that land while a reconnect is under way find no transport,
    // so fewer resumes than breaks happen; at least one must have happened.
    assert!(c.path_log().resumes >= 1, "{:?}", c.path_log());
}

/// A server that accepts, writes a greeting and closes at once: NEW_ACK,
/// data and CLOSE may reach the client in one read. connect succeeds and the
/// client reads the greeting, then end-of-stream (repeated to catch both
/// orderings).
#[test]
fn server_that_closes_immediately() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port().to_string();
    let server = thread::spawn(move || {
        for _ in 0..50 {
            let s = l.accept().unwrap();
            (&s).write_all(b"bye").unwrap();
            drop(s);
        }
    });
    for i in 0..50 {
        let c = NameStream::connect_with("127.0.0.1", &port, &fast())
            .unwrap_or_else(|e| panic!("connect {i}: {e:?}"));
        let mut got = Vec::new();
        (&c).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye", "connection {i}");
    }
    server.join().unwrap();
}

/// Small sends in quick succession are coalesced in the retained buffer;
/// the last of them still reaches the peer while the sender makes no further
/// call (the keeper writes it at the coalescing deadline), not at the next
/// heartbeat (10 s here, beyond the reader's 3 s timeout).
#[test]
fn coalesced_sends_reach_the_peer_without_further_calls() {
    let mut o = Options::default();
    o.session.heartbeat_interval = Duration::from_secs(10);
    o.session.dead_timeout = Duration::from_secs(30);
    o.write_coalescing = Some(Duration::from_millis(20));
    let l = NameListener::bind_with("0", &o).unwrap();
    let port = l.local_port().to_string();
    let data = pattern(200 * 100, 11);
    let want = data.len();
    let server = thread::spawn(move || {
        let s = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        while got.len() < want {
            let n = (&s).read(&mut buf).expect("data stuck in the sender");
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let c = NameStream::connect_with("127.0.0.1", &port, &o).unwrap();
    for rounds in 0..3 {
        let part = &data[rounds * want / 3..(rounds + 1) * want / 3];
        for chunk in part.chunks(100) {
            assert_eq!(c.send(chunk).unwrap(), chunk.len());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let got = server.join().unwrap();
    assert!(got == data, "stream differs");
    drop(c);
}

/// Optimistic connect: a server that accepts TCP connections and reads NEW
/// but never answers. connect returns at once; the first receive fails with
/// `TimedOut` once the handshake deadline (max(connect attempt timeout,
/// 4 × dead timeout) = 0.6 s with `fast()`) passes, not after the 30 s
/// resume window of an established session.
#[test]
fn silent_server_fails_the_first_call_with_timeout() {
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    plain.set_nonblocking(true).unwrap();
    let t = thread::spawn(move || {
        // Keep every connection open (and silent) until the test ends.
        let mut held = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((s, _)) = plain.accept() {
                held.push(s);
            }
            thread::sleep(Duration::from_millis(5));
        }
        held.len()
    });
    let start = std::time::Instant::now();
    let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "connect waited"
    );
    let e = c.recv(&mut [0u8; 16]).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::TimedOut), "{e:?}");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The session stays failed.
    assert!(matches!(c.send(b"x").unwrap_err(), Error::TimedOut));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(t.join().unwrap() >= 1);
}

/// Optimistic connect: data written and the stream closed right after
/// connect (the first send waits for NEW_ACK) reach the server exactly,
/// followed by end-of-stream.
#[test]
fn data_and_close_right_after_connect_are_delivered() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port().to_string();
    let server = thread::spawn(move || {
        for i in 0..30u64 {
            let s = l.accept().unwrap();
            let mut got = Vec::new();
            (&s).read_to_end(&mut got).unwrap();
            assert_eq!(got, pattern(10_000 + i as usize, i), "connection {i}");
        }
    });
    for i in 0..30u64 {
        let c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
        (&c).write_all(&pattern(10_000 + i as usize, i)).unwrap();
        drop(c);
    }
    server.join().unwrap();
}

/// TIME_WAIT entries (state 06) in /proc/net/tcp{,6} whose remote port is
/// `port` (held by connecting sockets) and whose local port is `port`.
fn time_waits(port: u16) -> (usize, usize) {
    let mut remote = 0;
    let mut local = 0;
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(l), Some(r), Some(st)) = (cols.get(1), cols.get(2), cols.get(3)) else {
                continue;
            };
            if *st != "06" {
                continue;
            }
            let p = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
            };
            if p(r) == Some(port) {
                remote += 1;
            }
            if p(l) == Some(port) {
                local += 1;
            }
        }
    }
    (remote, local)
}

/// The side that closes the session first also closes TCP first (FIN right
/// after its CLOSE), so it holds the TIME_WAITs, as with plain sockets. A
/// server that accepts and closes must not leave TIME_WAITs on the
/// connecting side: they would make later connects to the same port search
/// the ephemeral range past them.
#[test]
fn closing_side_holds_the_time_wait() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port();
    let n = 200;
    let server = thread::spawn(move || {
        for _ in 0..n {
            drop(l.accept().unwrap());
        }
        // Keep the listener until the last CLOSE_ACKs are read.
        thread::sleep(Duration::from_millis(200));
    });
    for _ in 0..n {
        let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
        assert_eq!(c.recv(&mut [0u8; 8]).unwrap(), 0);
    }
    server.join().unwrap();
    let (client_side, server_side) = time_waits(port);
    assert!(
        client_side < n / 10,
        "{client_side} TIME_WAITs on the connecting side, {server_side} on the server side"
    );
    assert!(server_side >= n / 2, "{server_side} on the server side");
}

/// What a raw client reads after sending `first` to a listener on `port`:
/// the bytes before the end, and how the connection ended.
fn raw_exchange(port: u16, first: &[u8]) -> (Vec<u8>, std::io::Result<usize>) {
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.write_all(first).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => return (got, Ok(0)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// A raw client that sends `first` to a listener on `port` gets no bytes,
/// and its connection is reset (an RST, not an orderly end of stream).
fn assert_reset(port: u16, first: &[u8], who: &str) {
    let (got, end) = raw_exchange(port, first);
    assert!(got.is_empty(), "no bytes for {who}: {got:?}");
    let e = end.expect_err("the connection is reset");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{who}: {e:?}"
    );
}

fn v1_new() -> Vec<u8> {
    let mut b = Vec::new();
    namesocket::wire::v1::Packet::New.emit(&mut b);
    b
}

/// A thesis (version 1) client and a client that is not namesocket at all
/// are reset by the listener (no bytes, which a v1 client would take for
/// application data; an RST, not an orderly end of stream) and counted.
#[test]
fn version1_and_foreign_clients_are_reset_by_the_listener() {
    let l = NameListener::bind_with("0", &fast()).unwrap();
    let port = l.local_port();
    assert_reset(port, &v1_new(), "the v1 client");
    wait_for(|| l.stats().version1_peers == 1);

    assert_reset(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "a foreign client",
    );
    wait_for(|| l.stats().bad_first_messages == 1);
    assert_eq!(l.stats().sessions, 0);

    // The listener still serves version 2 clients.
    let c = NameStream::connect_with("127.0.0.1", &port.to_string(), &fast()).unwrap();
    (&c).write_all(b"v2").unwrap();
    let s = l.accept().unwrap();
    expect_msg(&s, b"v2");
}

/// The tokio listener turns them away the same way.
#[test]
fn async_listener_resets_version1_and_foreign_clients() {
    let rt = multi_thread_rt();
    let l = rt
        .block_on(AsyncNameListener::bind_with("0", &fast()))
        .unwrap();
    let port = l.local_port();
    assert_reset(port, &v1_new(), "the v1 client");
    wait_for(|| l.stats().version1_peers == 1);

    assert_reset(port, b"SSH-2.0-OpenSSH_9.2\r\n", "a foreign client");
    wait_for(|| l.stats().bad_first_messages == 1);
    assert_eq!(l.stats().sessions, 0);
}

/// A plain TCP server that plays a thesis (version 1) server: it reads the
/// client's first bytes and answers with a version 1 packet, on every
/// connection until `stop` is set. Returns its port and the number of
/// connections it served.
fn fake_v1_server(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, thread::JoinHandle<usize>) {
    use std::sync::atomic::Ordering;
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    plain.set_nonblocking(true).unwrap();
    let port = plain.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let mut served = 0;
        while !stop.load(Ordering::Acquire) {
            let Ok((mut s, _)) = plain.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            thread::spawn(move || {
                s.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let mut answer = Vec::new();
                namesocket::wire::v1::Packet::ResumeAck(namesocket::wire::v1::ResumeAck {
                    data_rcvd: 0,
                })
                .emit(&mut answer);
                let _ = s.write_all(&answer);
                thread::sleep(Duration::from_millis(300));
            });
        }
        served
    });
    (port, t)
}

/// A version 2 client talking to a thesis server reports `Version1Peer`
/// (`EPROTONOSUPPORT`), in the std driver, the thesis API and tokio.
#[test]
fn version1_server_gives_eprotonosupport() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, t) = fake_v1_server(std::sync::Arc::clone(&stop));
    let port = port.to_string();
    let c = NameStream::connect_with("127.0.0.1", &port, &fast()).unwrap();
    let e = c.recv(&mut [0u8; 16]).unwrap_err();
    assert!(matches!(e, Error::Version1Peer), "{e:?}");
    assert_eq!(e.errno(), libc::EPROTONOSUPPORT);
    let e = c.send(b"x").unwrap_err();
    assert!(matches!(e, Error::Version1Peer), "later calls too: {e:?}");
    drop(c);

    let nsd = api::nsocket(0).unwrap();
    api::nconnect(nsd, "127.0.0.1", &port).unwrap();
    let e = api::nrecv(nsd, &mut [0u8; 16], 0).unwrap_err();
    assert_eq!(e.errno(), libc::EPROTONOSUPPORT, "{e:?}");
    api::nclose(nsd).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(AsyncNameStream::connect_with("127.0.0.1", &port, &fast()))
        .unwrap_err();
    assert!(matches!(e, Error::Version1Peer), "{e:?}");
    assert_eq!(e.errno(), libc::EPROTONOSUPPORT);
    stop.store(true, std::sync::atomic::Ordering::Release);
    // One connection each: a version 1 answer ends the session, no retry.
    assert_eq!(t.join().unwrap(), 3);
}

/// `flush` and `shutdown` on the tokio stream complete only once the bytes
/// (and SHUTDOWN) are on the transport: with a current-thread runtime that
/// is not driven after they return, the peer still gets everything. (They
/// used to return at once, before the session task had written anything.)
#[test]
fn async_flush_and_shutdown_put_the_bytes_on_the_transport() {
    let l = NameListener::bind("0").unwrap();
    let port = l.local_port().to_string();
    let first = pattern(100_000, 11);
    let rest = pattern(1 << 20, 12);
    let (first2, rest2) = (first.clone(), rest.clone());
    let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let s = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = vec![0u8; first2.len()];
        (&s).read_exact(&mut buf).unwrap();
        assert!(buf == first2, "flushed bytes");
        step_tx.send(()).unwrap();
        let mut got = Vec::new();
        (&s).read_to_end(&mut got).unwrap();
        assert!(
            got == rest2,
            "bytes before shutdown: {} of {}",
            got.len(),
            rest2.len()
        );
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut c = AsyncNameStream::connect("127.0.0.1", &port).await.unwrap();
        c.write_all(&first).await.unwrap();
        c.flush().await.unwrap();
        c
    });
    // The runtime is idle now: only what flush put on the transport moves.
    step_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("flushed bytes arrive");
    rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        c.write_all(&rest).await.unwrap();
        c.shutdown().await.unwrap();
        // Writing after shutdown is refused.
        let e = c.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e:?}");
    });
    server.join().unwrap();
    drop(c);
}

/// The tokio listener refuses a RESUME with a made-up proof with
/// REJECT(BadProof), and the real session goes on unaffected.
#[test]
fn async_listener_rejects_a_forged_resume() {
    let rt = multi_thread_rt();
    rt.block_on(async {
        let l = AsyncNameListener::bind_with("0", &fast()).await.unwrap();
        let port = l.local_port();
        let mut c = AsyncNameStream::connect_with("127.0.0.1", &port.to_string(), &fast())
            .await
            .unwrap();
        let mut s = l.accept().await.unwrap();
        pass_msg_async(&mut c, &mut s, b"before").await;

        let id = SessionId(c.session_id().0);
        let reply = tokio::task::spawn_blocking(move || forged_resume_reply(port, id, 9, 0x33))
            .await
            .unwrap();
        assert_bad_proof_reject(&reply);
        assert_eq!(l.stats().rejected_resumes, 1);
        assert_eq!(l.stats().resumes, 0);

        pass_msg_async(&mut c, &mut s, b"after").await;
        pass_msg_async(&mut s, &mut c, b"reply").await;
        assert_eq!(c.path_log().resumes, 0, "the client never resumed");
    });
}
