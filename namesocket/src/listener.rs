//! [`NameListener`]: accepts namesocket sessions on the wildcard address of
//! both families and routes RESUMEs to parked sessions by session id.
//!
//! # Peers that do not speak version 2 (choice, stable)
//!
//! A connection whose first message is a thesis (version 1) packet, or not
//! a namesocket message at all (bad magic cookie, unknown version, a
//! malformed or oversized first message), is **reset**: the listener writes
//! nothing and closes the connection abortively (`SO_LINGER` 0, TCP RST),
//! and counts it in [`ListenerStats::version1_peers`] or
//! [`ListenerStats::bad_first_messages`]. Version 1 has no refusal message,
//! and after a version 1 NEW the client takes whatever the server sends as
//! application data, so any byte we wrote (even a version 2 REJECT) would
//! reach the thesis client's application as data; an orderly close (FIN)
//! would look like a server that accepted and then ended the stream. The
//! RST makes the client's next call fail with `ECONNRESET` instead. The
//! tokio listener ([`crate::AsyncNameListener`]) does the same. In the
//! other direction, a version 2 client that receives a version 1 packet
//! from a thesis server reports [`Error::Version1Peer`]
//! (`EPROTONOSUPPORT`).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use rand::SeedableRng;
use rand::rngs::StdRng;
use socket2::SockRef;

use crate::connect::{self, DualListener};
use crate::driver::{self, Conn, ConnState, Options, Transport};
use crate::engine::{AcceptError, Session};
use crate::error::{Error, Result};
use crate::stream::NameStream;
use crate::wire::v2::{RejectReason, SessionId};
use crate::wire::{self, FirstMessage};

/// Counters of a listener (what the acceptor saw on new connections).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// New sessions created from NEW.
    pub sessions: u64,
    /// Successful resumes of parked sessions.
    pub resumes: u64,
    /// RESUMEs rejected (unknown session, bad proof, replay, …).
    pub rejected_resumes: u64,
    /// Connections whose first bytes were not a namesocket message.
    pub bad_first_messages: u64,
    /// Thesis (version 1) peers turned away.
    pub version1_peers: u64,
    /// Connections that sent nothing in time.
    pub handshake_timeouts: u64,
    /// New sessions refused because the accept queue was full.
    pub queue_overflows: u64,
    /// NEWs refused with `REJECT(BadParams)`: the client announced session
    /// parameters out of range (see "Peer parameters" in the engine docs).
    pub rejected_sessions: u64,
    /// Connections dropped before their first message because
    /// [`Options::max_pending_handshakes`] others were waiting (the oldest
    /// waiting one is dropped).
    pub pending_overflows: u64,
}

struct ListenState {
    ready: VecDeque<Arc<Conn>>,
    sessions: HashMap<SessionId, Weak<Conn>>,
    /// `sessions` drops its dead entries when it reaches this size.
    sweep_at: usize,
    stats: ListenerStats,
}

/// Smallest `ListenState::sweep_at`.
const SESSION_SWEEP_MIN: usize = 64;

struct Shared {
    listener: DualListener,
    options: Options,
    state: Mutex<ListenState>,
    ready_cv: Condvar,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    closed: AtomicBool,
    /// Accepted sockets were seen to inherit the listener's socket options.
    inherits_options: AtomicBool,
    /// The acceptor state; whoever holds it polls the listening sockets.
    core: Mutex<AcceptCore>,
    /// Application threads blocked in `accept` (they poll themselves; the
    /// background acceptor stands back).
    accepting: AtomicUsize,
    /// The background acceptor is polling (an application thread entering
    /// `accept` wakes it through the wake pipe so that it stands back).
    bg_polling: AtomicBool,
    /// Accept calls sleeping on `ready_cv` (no wake-up system call when
    /// there are none).
    cv_waiters: AtomicUsize,
}

/// What the thread that polls for new connections works on.
struct AcceptCore {
    pending: Vec<Pending>,
    rng: StdRng,
    last_sweep: Instant,
}

/// How long the background acceptor waits after the last application
/// thread left `accept` before it polls again itself (in between, new
/// connections wait in the kernel's queue).
const ACCEPTOR_TAKEOVER: Duration = Duration::from_millis(10);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ListenState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A listening namesocket (the thesis's server namesocket).
#[derive(Debug)]
pub struct NameListener {
    shared: Arc<Shared>,
    nonblocking: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("port", &self.listener.local_port())
            .finish()
    }
}

impl NameListener {
    /// Listens on `service` (a port number or a name from /etc/services) on
    /// the wildcard address of both IPv6 and IPv4, with default options.
    pub fn bind(service: &str) -> Result<NameListener> {
        Self::bind_with(service, &Options::default())
    }

    /// [`NameListener::bind`] with explicit options.
    pub fn bind_with(service: &str, options: &Options) -> Result<NameListener> {
        options.session.validate()?;
        if options.backlog <= 0 {
            return Err(Error::InvalidArgument("backlog must be positive"));
        }
        if options.max_pending_handshakes == 0 {
            return Err(Error::InvalidArgument(
                "max_pending_handshakes must be positive",
            ));
        }
        let port = crate::resolve::Resolver::new(options.resolver.clone()).service_port(service)?;
        let listener = connect::listen_dual_with_backlog(port, options.backlog)?;
        for l in listener.listeners() {
            l.set_nonblocking(true)?;
            // Linux copies TCP_NODELAY and TCP_USER_TIMEOUT to accepted
            // sockets; the acceptor checks that on the first one and then
            // skips setting them per connection.
            let _ = connect::apply_socket_options(&SockRef::from(l), &options.socket_options());
            // Delayed-ACK ("pingpong") mode, inherited by accepted
            // sockets: the client's NEW is acknowledged by NEW_ACK, not by
            // a segment of its own (the kernel otherwise acknowledges the
            // first data of a connection at once). Bulk data still gets an
            // ACK every second full segment; the mode ends at the first
            // delayed-ACK timeout.
            // Only with TCP_NODELAY: with Nagle on, delayed ACKs at the
            // start would hold the peer's small segments back.
            if options.socket_options().nodelay {
                let _ = SockRef::from(l).set_tcp_quickack(false);
            }
        }
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            listener,
            options: options.clone(),
            state: Mutex::new(ListenState {
                ready: VecDeque::new(),
                sessions: HashMap::new(),
                sweep_at: SESSION_SWEEP_MIN,
                stats: ListenerStats::default(),
            }),
            ready_cv: Condvar::new(),
            wake_rx,
            wake_tx,
            closed: AtomicBool::new(false),
            inherits_options: AtomicBool::new(false),
            core: Mutex::new(AcceptCore {
                pending: Vec::new(),
                rng: StdRng::from_rng(&mut rand::rng()),
                last_sweep: Instant::now(),
            }),
            accepting: AtomicUsize::new(0),
            bg_polling: AtomicBool::new(false),
            cv_waiters: AtomicUsize::new(0),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("namesocket-acceptor".into())
            .spawn(move || acceptor(weak))?;
        Ok(NameListener {
            shared,
            nonblocking: AtomicBool::new(false),
        })
    }

    /// The port listened on.
    pub fn local_port(&self) -> u16 {
        self.shared.listener.local_port()
    }

    /// Waits for the next new session (blocks unless non-blocking).
    pub fn accept(&self) -> Result<NameStream> {
        self.accept_timeout(None)
    }

    /// [`NameListener::accept`] with a timeout.
    ///
    /// A blocking accept polls the listening sockets itself (the background
    /// acceptor stands back while an application thread is in `accept`), so
    /// a new session reaches the application without a hand-off between
    /// threads. Non-blocking accepts only take what the background acceptor
    /// queued.
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<NameStream> {
        if self.nonblocking.load(Ordering::Relaxed) {
            return match self.shared.lock().ready.pop_front() {
                Some(c) => Ok(NameStream::from_conn(c)),
                None => Err(Error::WouldBlock),
            };
        }
        let shared = &self.shared;
        let deadline = timeout.map(|t| driver::deadline_after(Instant::now(), t));
        shared.accepting.fetch_add(1, Ordering::SeqCst);
        if shared.bg_polling.load(Ordering::SeqCst) {
            let _ = (&shared.wake_tx).write(&[1]);
        }
        let result = self.accept_loop(deadline);
        shared.accepting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn accept_loop(&self, deadline: Option<Instant>) -> Result<NameStream> {
        let shared = &self.shared;
        loop {
            if let Some(c) = shared.lock().ready.pop_front() {
                return Ok(NameStream::from_conn(c));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                return Err(Error::TimedOut);
            }
            let until = deadline.map_or(now + Duration::from_secs(1), |d| {
                d.min(now + Duration::from_secs(1))
            });
            match shared.core.try_lock() {
                Ok(mut core) => {
                    accept_round(shared, &mut core, until, true);
                }
                Err(_) => {
                    // Another thread polls; it signals when it queues a
                    // session or lets go of the acceptor state.
                    let st = shared.lock();
                    if !st.ready.is_empty() {
                        continue;
                    }
                    let wait = until
                        .min(now + Duration::from_millis(5))
                        .saturating_duration_since(now);
                    shared.cv_waiters.fetch_add(1, Ordering::SeqCst);
                    drop(
                        shared
                            .ready_cv
                            .wait_timeout(st, wait)
                            .unwrap_or_else(|p| p.into_inner()),
                    );
                    shared.cv_waiters.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// True when [`NameListener::accept`] would not block.
    pub fn poll_acceptable(&self) -> bool {
        !self.shared.lock().ready.is_empty()
    }

    /// Non-blocking mode for accept.
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblocking.store(on, Ordering::Relaxed);
    }

    /// Counters.
    pub fn stats(&self) -> ListenerStats {
        self.shared.lock().stats.clone()
    }

    /// Sessions currently known (active or parked, not yet finished).
    pub fn session_count(&self) -> usize {
        let st = self.shared.lock();
        st.sessions
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

impl Drop for NameListener {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = (&self.shared.wake_tx).write(&[1]);
    }
}

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Vec<u8>,
    deadline: Instant,
    /// Accepted in this round (its first read gets one retry after a yield).
    fresh: bool,
}

/// Sets the transport options on an accepted socket unless accepted sockets
/// are known to inherit them from the listener (checked on the first one).
fn configure_accepted(shared: &Shared, stream: &TcpStream) {
    if shared.inherits_options.load(Ordering::Relaxed) {
        return;
    }
    let opts = shared.options.socket_options();
    let sock = SockRef::from(stream);
    let inherited = sock.tcp_nodelay().is_ok_and(|v| v == opts.nodelay)
        && opts.keepalive.is_none()
        && sock
            .tcp_user_timeout()
            .is_ok_and(|v| v == opts.user_timeout.filter(|t| !t.is_zero()));
    if inherited {
        shared.inherits_options.store(true, Ordering::Relaxed);
    } else {
        let _ = connect::configure_stream(stream, &opts);
    }
}

/// Most bytes a peer may send before its first message is complete.
const MAX_FIRST_MESSAGE: usize = 4096;

/// The background acceptor: polls while no application thread is in a
/// blocking `accept` (sessions are then queued for later accepts, and
/// RESUMEs attached at once).
fn acceptor(weak: Weak<Shared>) {
    let mut idle_since: Option<Instant> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        if shared.accepting.load(Ordering::SeqCst) > 0 {
            idle_since = None;
            drop(shared);
            std::thread::sleep(ACCEPTOR_TAKEOVER);
            continue;
        }
        // Let an application thread that just returned from accept come
        // back before taking over.
        let now = Instant::now();
        let since = *idle_since.get_or_insert(now);
        let idle = now.saturating_duration_since(since);
        if idle < ACCEPTOR_TAKEOVER {
            drop(shared);
            std::thread::sleep(ACCEPTOR_TAKEOVER.saturating_sub(idle));
            continue;
        }
        let Ok(mut core) = shared.core.try_lock() else {
            drop(shared);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        shared.bg_polling.store(true, Ordering::SeqCst);
        if shared.accepting.load(Ordering::SeqCst) == 0 {
            accept_round(&shared, &mut core, now + Duration::from_secs(1), false);
        }
        shared.bg_polling.store(false, Ordering::SeqCst);
        drop(core);
        // Waiting accepts retry at once.
        if shared.cv_waiters.load(Ordering::SeqCst) > 0 {
            shared.ready_cv.notify_all();
        }
    }
}

/// One poll of the listening sockets and the connections whose first
/// message is pending (until `until` at the latest), then accepts, reads
/// first messages, creates or resumes sessions. `for_app`: the round runs
/// on an application thread inside a blocking accept, which takes the new
/// sessions at once.
fn accept_round(shared: &Arc<Shared>, core: &mut AcceptCore, until: Instant, mut for_app: bool) {
    let AcceptCore {
        pending,
        rng,
        last_sweep,
    } = core;
    let next = pending
        .iter()
        .map(|p| p.deadline)
        .min()
        .unwrap_or(until)
        .min(until);
    // Which descriptors fired: the wake pipe, each listener, each
    // pending connection (only those are read).
    let nlisten = shared.listener.listeners().count();
    let fired: Vec<bool> = {
        let mut fds = Vec::with_capacity(1 + nlisten + pending.len());
        fds.push(PollFd::new(shared.wake_rx.as_fd(), PollFlags::POLLIN));
        for l in shared.listener.listeners() {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        for p in pending.iter() {
            fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, driver::poll_timeout(Some(next)));
        fds.iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect()
    };
    let fired_at = |i: usize| fired.get(i).copied().unwrap_or(false);
    if fired_at(0) {
        let mut sink = [0u8; 64];
        while let Ok(n) = (&shared.wake_rx).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
    }
    if shared.closed.load(Ordering::Acquire) {
        return;
    }
    // First messages on connections accepted earlier.
    let now = Instant::now();
    let mut ready: Vec<Pending> = Vec::new();
    let mut keep = Vec::with_capacity(pending.len());
    for (i, p) in pending.drain(..).enumerate() {
        if fired_at(1 + nlisten + i) || p.deadline <= now {
            ready.push(p);
        } else {
            keep.push(p);
        }
    }
    *pending = keep;
    // New connections: one per ready listener and wake-up (poll is
    // level-triggered, a backlog comes back at once). The first message
    // usually arrived with the handshake: read it right away.
    for (j, l) in shared.listener.listeners().enumerate() {
        if !fired_at(1 + j) {
            continue;
        }
        // accept4 with SOCK_NONBLOCK: no separate FIONBIO per connection.
        let accepted = SockRef::from(l)
            .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .and_then(|(sock, addr)| {
                let peer = addr.as_socket().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP peer")
                })?;
                Ok((TcpStream::from(sock), peer))
            });
        match accepted {
            Ok((stream, peer)) => {
                configure_accepted(shared, &stream);
                shared.lock().stats.connections += 1;
                ready.push(Pending {
                    stream,
                    peer,
                    buf: Vec::new(),
                    deadline: driver::deadline_after(now, shared.options.handshake_timeout),
                    fresh: true,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "namesocket: accept failed");
            }
        }
    }
    for mut p in ready {
        let mut first = read_first(&mut p);
        if matches!(first, FirstRead::NeedMore) && p.buf.is_empty() && p.fresh {
            // Just accepted and nothing yet: the client writes its first
            // message right after the handshake, often on this very CPU
            // (the handshake's last ACK woke this thread and may have
            // preempted it). Yield once and look again before sleeping.
            std::thread::yield_now();
            first = read_first(&mut p);
        }
        p.fresh = false;
        match first {
            FirstRead::NeedMore if p.deadline > now => pending.push(p),
            FirstRead::NeedMore => {
                shared.lock().stats.handshake_timeouts += 1;
            }
            FirstRead::Gone => {}
            FirstRead::Bad => {
                shared.lock().stats.bad_first_messages += 1;
                refuse_unsupported(&p.stream);
            }
            FirstRead::Message(msg, used) => {
                handle_first(shared, p, msg, used, rng, &mut for_app);
            }
        }
    }
    drop_excess_pending(shared, pending);
    if now.saturating_duration_since(*last_sweep) > Duration::from_secs(5) {
        *last_sweep = now;
        shared.lock().sessions.retain(|_, w| {
            w.upgrade().is_some_and(|c| {
                let st = c.lock();
                st.failure.is_none() && !st.session.is_finished()
            })
        });
    }
}

/// Drops the oldest connections still waiting for their first message
/// while more than [`Options::max_pending_handshakes`] wait.
fn drop_excess_pending(shared: &Shared, pending: &mut Vec<Pending>) {
    let cap = shared.options.max_pending_handshakes.max(1);
    if pending.len() <= cap {
        return;
    }
    // Every deadline is the accept time plus the same timeout: the
    // earliest deadlines are the oldest connections.
    pending.sort_by_key(|p| p.deadline);
    let excess = pending.len() - cap;
    for p in pending.drain(..excess) {
        connect::abort_on_close(&p.stream);
    }
    shared.lock().stats.pending_overflows += excess as u64;
}

enum FirstRead {
    NeedMore,
    Gone,
    Bad,
    Message(FirstMessage, usize),
}

fn read_first(p: &mut Pending) -> FirstRead {
    let mut chunk = [0u8; 2048];
    loop {
        match (&p.stream).read(&mut chunk) {
            Ok(0) => return FirstRead::Gone,
            Ok(n) => {
                p.buf.extend_from_slice(&chunk[..n]);
                match wire::accept_first(&p.buf) {
                    Ok(Some((msg, used))) => return FirstRead::Message(msg, used),
                    Ok(None) if p.buf.len() > MAX_FIRST_MESSAGE => return FirstRead::Bad,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "namesocket: bad first message");
                        return FirstRead::Bad;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return FirstRead::NeedMore,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return FirstRead::Gone,
        }
    }
}

/// Turns away a peer that does not speak version 2 (see the module docs):
/// nothing is written and the connection is reset when `stream` is dropped.
fn refuse_unsupported(stream: &TcpStream) {
    connect::abort_on_close(stream);
}

fn reject(stream: &TcpStream, reason: RejectReason) {
    let bytes = crate::engine::encode_reject(reason);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = (&*stream).write_all(&bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn handle_first(
    shared: &Arc<Shared>,
    p: Pending,
    msg: FirstMessage,
    used: usize,
    rng: &mut StdRng,
    for_app: &mut bool,
) {
    let now = Instant::now();
    let rest = p.buf.get(used..).unwrap_or(&[]).to_vec();
    match msg {
        FirstMessage::New(new) => {
            {
                let st = shared.lock();
                if st
                    .sessions
                    .get(&new.session_id)
                    .is_some_and(|w| w.strong_count() > 0)
                {
                    drop(st);
                    reject(&p.stream, RejectReason::DuplicateSession);
                    return;
                }
            }
            let session = match Session::accept_new(
                now,
                shared.options.session.clone(),
                driver::current_keys(),
                &new,
                rng,
            ) {
                Ok(s) => s,
                Err(AcceptError::Refused { reason, detail }) => {
                    tracing::debug!(detail, "namesocket: NEW refused");
                    shared.lock().stats.rejected_sessions += 1;
                    reject(&p.stream, reason);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "namesocket: cannot create session");
                    return;
                }
            };
            let mut cs = ConnState::new(session, shared.options.clone(), None);
            let peer = p.peer;
            cs.transport = Some(Transport::from_nonblocking(p.stream, Some(peer)));
            cs.log.current_path = Some((None, peer));
            if !rest.is_empty() {
                let _ = cs.session.handle_input(now, &rest);
            }
            // NEW_ACK is written by the application's first call on the
            // stream (a receive, a send, or the close: an accept followed by
            // a close then costs the client one wake-up, not two), or by
            // the keeper after the coalescing delay if the application
            // makes none. Without write coalescing it goes out at once.
            let defer = shared.options.write_coalescing;
            if let Some(delay) = defer {
                cs.flush_due = Some(driver::deadline_after(now, delay));
            }
            let conn = Conn::new(cs);
            if defer.is_none() {
                // The first message was just read to its end: only write.
                let mut cs = conn.lock();
                driver::pump_with(&conn, &mut cs, now, false);
            }
            let mut st = shared.lock();
            // A dead entry keeps its connection's allocation (a `Weak`
            // holds the memory of the `Arc`), so entries of closed sessions
            // are dropped as the map doubles (amortised O(1) per session)
            // and not only by the periodic sweep: under a stream of short
            // connections the heap otherwise grew by every connection of
            // the last five seconds, and each new one faulted in fresh
            // pages (`sysmalloc` and page faults were ~4% of the server's
            // CPU in a connect + close loop).
            if st.sessions.len() >= st.sweep_at {
                st.sessions.retain(|_, w| w.strong_count() > 0);
                st.sweep_at = (st.sessions.len() * 2).max(SESSION_SWEEP_MIN);
            }
            st.sessions.insert(new.session_id, Arc::downgrade(&conn));
            if st.ready.len() >= shared.options.backlog as usize {
                st.stats.queue_overflows += 1;
                drop(st);
                let mut cs = conn.lock();
                cs.session.abort(1);
                driver::pump(&conn, &mut cs, now);
                return;
            }
            // The one session an application thread inside accept takes
            // at once (it is first in an empty queue): its first call
            // follows and writes NEW_ACK, so the keeper (the fallback for
            // an application that makes no call) need not be woken for it
            // before its next round, [`driver::LINGER_ROUND`] away at most.
            // Waking it for every accepted session cost a thread wake-up
            // per connection. Other sessions of the round wait in the
            // queue: the keeper writes their NEW_ACK after the delay.
            let taken_at_once = *for_app && st.ready.is_empty();
            st.stats.sessions += 1;
            st.ready.push_back(conn);
            drop(st);
            if let Some(delay) = defer {
                *for_app &= !taken_at_once;
                let by = if taken_at_once {
                    driver::LINGER_ROUND
                } else {
                    delay
                };
                driver::keeper().wake_before(driver::deadline_after(now, by));
            }
            if shared.cv_waiters.load(Ordering::SeqCst) > 0 {
                shared.ready_cv.notify_one();
            }
        }
        FirstMessage::Resume(resume) => {
            let target = shared
                .lock()
                .sessions
                .get(&resume.session_id)
                .and_then(Weak::upgrade);
            let Some(conn) = target else {
                shared.lock().stats.rejected_resumes += 1;
                reject(&p.stream, RejectReason::UnknownSession);
                return;
            };
            let mut cs = conn.lock();
            match cs.session.attach_resume(now, &resume, rng) {
                Ok(()) => {
                    if let Some(old) = cs.transport.take() {
                        connect::abort_on_close(&*old.stream);
                        let _ = old.stream.shutdown(std::net::Shutdown::Both);
                    }
                    let peer = p.peer;
                    cs.transport = Some(Transport::from_nonblocking(p.stream, Some(peer)));
                    cs.log.current_path = Some((None, peer));
                    cs.log
                        .note(now, format!("resumed by the client from {:?}", Some(peer)));
                    if !rest.is_empty() {
                        let _ = cs.session.handle_input(now, &rest);
                    }
                    driver::pump(&conn, &mut cs, now);
                    drop(cs);
                    conn.notify();
                    shared.lock().stats.resumes += 1;
                }
                Err(reason) => {
                    drop(cs);
                    shared.lock().stats.rejected_resumes += 1;
                    reject(&p.stream, reason);
                }
            }
        }
        FirstMessage::V1(_) => {
            shared.lock().stats.version1_peers += 1;
            refuse_unsupported(&p.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Entries of finished sessions leave the session map as it grows, so
    /// a stream of short connections does not keep their memory (a `Weak`
    /// holds the allocation) until the periodic sweep: the map stays within
    /// twice the sessions alive at once (closed ones linger in the keeper
    /// until its next round) instead of holding every session of the last
    /// five seconds.
    #[test]
    fn session_map_drops_closed_sessions_as_it_grows() {
        const N: usize = 1000;
        let l = Arc::new(NameListener::bind("0").unwrap());
        let port = l.local_port().to_string();
        let server = {
            let l = Arc::clone(&l);
            std::thread::spawn(move || {
                for _ in 0..N {
                    drop(l.accept().unwrap());
                }
            })
        };
        let (mut most, mut most_alive) = (0, 0);
        for _ in 0..N {
            let c = NameStream::connect("::1", &port).unwrap();
            let mut b = [0u8; 4];
            assert_eq!((&c).read(&mut b).unwrap(), 0);
            most = most.max(l.shared.lock().sessions.len());
            most_alive = most_alive.max(l.session_count());
        }
        server.join().unwrap();
        assert!(
            most <= (2 * most_alive + 4).max(SESSION_SWEEP_MIN + 1),
            "map grew to {most} entries with at most {most_alive} sessions alive"
        );
        assert!(most < N, "map kept all {most} sessions");
    }
}
