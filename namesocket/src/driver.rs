//! The blocking (std) driver core shared by [`NameStream`](crate::NameStream)
//! and [`NameListener`](crate::NameListener).
//!
//! # How the IO is done
//!
//! * The application thread does the IO of its own calls inline: it locks the
//!   connection, reads what the transport has (non-blocking), feeds it to the
//!   engine, writes what the engine wants to send (vectored, non-blocking),
//!   and releases the lock before it sleeps in `poll(2)` on the transport and
//!   the connection's wake pipe. This keeps a `send`/`recv` as cheap as on a
//!   plain socket.
//! * One process-wide *keeper* thread serves the timers of every connection
//!   while the application is not inside a call (heartbeats, dead-path
//!   detection, delayed ACKs, the resume window) and carries closed
//!   connections until their CLOSE handshake is done (like the kernel's
//!   lingering close).
//! * When the engine reports `PathDead` on a client, a *reconnector* thread
//!   races the remaining address pairs (the failed pair's source and
//!   destination go to the back), attaches the new transport and lets the
//!   engine resume. Waiting application calls are woken through their wake
//!   fd.
//!
//! # Costs per byte (choices, stable)
//!
//! * **Write coalescing** ([`Options::write_coalescing`], default on): a
//!   send that comes within [`COALESCE_GAP`] (50 µs) of the previous send on
//!   the connection — the application is streaming — is only copied into
//!   the retained buffer (the copy resume needs anyway); it is written with
//!   the following ones in one `writev` once [`COALESCE_BYTES`] (64 KiB) are
//!   pending, when the application makes any other call on the connection
//!   (receive, flush, shutdown, close, `nselect`/poll), or at the latest
//!   after the coalescing delay (default [`COALESCE_DELAY`], 1 ms), when
//!   the keeper writes it. An isolated send (none in the previous 50 µs) is
//!   written at once, and so is a send that follows a receive that returned
//!   data (request/response traffic, however fast, is not streaming), so
//!   request/response and sparse traffic see no added delay; the cost is that the tail of a burst of back-to-back sends,
//!   followed by no call at all, waits up to the delay (plus the keeper's
//!   scheduling). Measured on loopback (2 shared cores): 512-byte writes went
//!   from one `writev` each (~0.5 of plain TCP) to one per 64 KiB (above
//!   plain TCP, which pays a `sendto` per write).
//! * **Receives read straight into the application's buffer** when the
//!   engine's receive buffer is empty and the buffer has at least
//!   [`DIRECT_READ_MIN`] (4 KiB): the engine moves the DATA payload to the
//!   front of it in place ([`Session::handle_input_in_place`]); otherwise
//!   bytes go through a per-thread scratch buffer and the engine's receive
//!   buffer as before (two extra copies).
//!
//! # Costs per connection (choices, stable)
//!
//! * **Dead transports are aborted** (`SO_LINGER` 0, TCP RST), not shut down
//!   with a FIN: when one direction of a path silently drops, the side that
//!   detects the silence first (600 ms by default) resets the connection;
//!   the RST is sent at once whatever the congestion window, so the peer
//!   sees the failure at its next read and reconnects. A FIN would queue
//!   behind segments the kernel keeps retransmitting and never arrive; the
//!   peer, still receiving the odd PING through its working direction,
//!   would wait for `TCP_USER_TIMEOUT` (measured: client → server failover
//!   1.42 s with FIN, 0.60 s with RST). Nothing is lost: unacknowledged data
//!   stays in the retained buffer. Graceful closes keep the FIN.
//! * **Wake fds are per thread**: a thread sleeping in a call lists its own
//!   eventfd (created once per thread) on the connection; notifiers write to
//!   the listed ones. A connection owns no wake descriptor, so connect needs
//!   none.
//! * **Connect is optimistic** (pipelined NEW, in the spirit of TCP Fast
//!   Open): [`NameStream::connect`](crate::NameStream::connect) returns once
//!   the TCP connection is up and NEW is written, without waiting for
//!   NEW_ACK — no extra round trip and no sleep in connect. The first
//!   receive, send, poll or close processes NEW_ACK; a refusal is reported
//!   by that call (`ECONNREFUSED` for a REJECT or session parameters out of
//!   range, `EPROTO` for an unknown version or a peer that is not
//!   namesocket, `EPROTONOSUPPORT` for a thesis version 1 server),
//!   and a session without NEW_ACK within
//!   `max(connect_attempt_timeout, 4 × dead_timeout)` fails with
//!   [`Error::TimedOut`]. The first *send* waits for NEW_ACK (non-blocking:
//!   `WouldBlock`, and the stream is not writable until then): a transport
//!   lost before NEW_ACK is replaced by a fresh session (new id, new nonce;
//!   a resume needs NEW_ACK's half of the key), which the server
//!   application sees as a new connection, so no data may enter a session
//!   whose id can still change. A client that only receives or closes
//!   never waits (connect + close: one client sleep, like plain TCP). The
//!   engine holds data back until NEW_ACK too
//!   ([`engine::Config::pipeline_data`] off). Security is
//!   unchanged: the resume key needs NEW_ACK's half, and a resume before
//!   NEW_ACK is impossible anyway. The async stream
//!   ([`crate::AsyncNameStream`]) still waits for NEW_ACK in `connect`.
//! * **Path plans are cached** for [`crate::addrsel::PLAN_CACHE_TTL`] (1 s)
//!   per network namespace and destination list (`NameStream::connect`);
//!   reconnects re-plan, and a failed attempt drops the namespace's plans.
//!   The namespace handle a session keeps for its reconnects is shared by
//!   the connects of one thread in one namespace (no `open` per connect;
//!   each thread keeps its last one open).
//! * **The keeper is woken only when it must act earlier than planned**;
//!   closed connections that only await CLOSE_ACK are finished in its rounds,
//!   at most [`LINGER_ROUND`] (20 ms) apart, in batches. A session that a
//!   blocking `accept` hands straight to its caller does not wake it either
//!   (the caller's first call writes NEW_ACK; the keeper does it at its
//!   next round, within [`LINGER_ROUND`], if the caller makes none).
//! * **Segments per connect + close: 7, plain TCP 6.** NEW rides alone
//!   after the handshake; listeners set `TCP_QUICKACK` off (with
//!   `TCP_NODELAY`, the default), which accepted
//!   sockets inherit, so the server does not acknowledge NEW by itself but
//!   with NEW_ACK (+ CLOSE + FIN when the application closes at once); the
//!   CLOSE_ACK answering a CLOSE is written with `MSG_MORE` and the
//!   transport's FIN joins it.
//! * **A blocking `accept` polls the listening sockets itself**; the
//!   background acceptor polls only while no application thread is in a
//!   blocking accept (it takes over 10 ms after the last one left), so a new
//!   session needs no hand-off between threads.
//! * Source-bound connection attempts set `IP_BIND_ADDRESS_NO_PORT`;
//!   accepted sockets inherit `TCP_NODELAY`/`TCP_USER_TIMEOUT` from the
//!   listener (checked once); the per-connection RNG is seeded from the
//!   thread's CSPRNG.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::addrsel::PathCandidate;
use crate::connect::{self, FailScope, PathSet, RaceConfig, SocketOptions};
use crate::engine::{self, Event, KeyPair, Session};
use crate::error::{Error, Failure};
use crate::resolve::{Resolver, ResolverConfig};

/// Options for namesocket clients and servers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Session tunables (heartbeat, dead timeout, resume window, buffers).
    pub session: engine::Config,
    /// Name resolution (hosts file, DNS servers).
    pub resolver: ResolverConfig,
    /// Bound on one TCP connection attempt (initial connect and reconnects).
    pub connect_attempt_timeout: Duration,
    /// Happy-Eyeballs delay between starting connection attempts.
    pub connect_stagger: Duration,
    /// Server: time a new connection has to send NEW or RESUME.
    pub handshake_timeout: Duration,
    /// Server: most accepted connections that have not sent their first
    /// message yet (default [`MAX_PENDING_HANDSHAKES`]). When another one
    /// arrives, the oldest is dropped (counted in
    /// [`ListenerStats::pending_overflows`](crate::ListenerStats)): clients
    /// that complete their handshake promptly still get in while silent
    /// connections cannot pile up for `handshake_timeout` each.
    pub max_pending_handshakes: usize,
    /// Server: listen backlog (also bounds the queue of sessions not yet
    /// accepted).
    pub backlog: i32,
    /// `TCP_NODELAY` on transports (default on: frames are written whole).
    pub nodelay: bool,
    /// Write coalescing (default `Some(1 ms)`; `None` writes every send at
    /// once). A send that follows the previous one within
    /// [`COALESCE_GAP`] — the application is streaming — is kept in the
    /// retained buffer instead of being written at once, until
    /// [`COALESCE_BYTES`] are pending, the application makes any other
    /// call on the connection (receive, flush, close, poll), or this delay
    /// has passed (the keeper writes it then). Isolated sends are written at
    /// once. See the driver docs.
    pub write_coalescing: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session: engine::Config::default(),
            resolver: ResolverConfig::default(),
            connect_attempt_timeout: Duration::from_secs(3),
            connect_stagger: Duration::from_millis(50),
            handshake_timeout: Duration::from_secs(5),
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
            backlog: 128,
            nodelay: true,
            write_coalescing: Some(COALESCE_DELAY),
        }
    }
}

impl Options {
    /// Options with the faster failure detection profile: heartbeat 50 ms,
    /// dead timeout 150 ms (failover in well under 0.3 s on a lab link).
    pub fn fast_failover() -> Self {
        let mut o = Options::default();
        o.session.heartbeat_interval = Duration::from_millis(50);
        o.session.dead_timeout = Duration::from_millis(150);
        o.connect_attempt_timeout = Duration::from_millis(500);
        o.connect_stagger = Duration::from_millis(20);
        o
    }

    pub(crate) fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            nodelay: self.nodelay,
            // A backstop behind the heartbeat: the kernel gives up on data
            // that stays unacknowledged for twice the dead timeout.
            user_timeout: Some(
                self.session
                    .dead_timeout
                    .saturating_mul(2)
                    .max(Duration::from_millis(500)),
            ),
            keepalive: None,
        }
    }

    pub(crate) fn race(&self) -> RaceConfig {
        RaceConfig {
            per_attempt_timeout: self.connect_attempt_timeout,
            stagger: self.connect_stagger,
            socket_options: self.socket_options(),
        }
    }
}

/// Default [`Options::max_pending_handshakes`]: 512 connections (each holds
/// a descriptor and up to 4 KiB of first message; a client sends its first
/// message right after the TCP handshake, so only slow or silent peers
/// wait).
pub const MAX_PENDING_HANDSHAKES: usize = 512;

/// A send this soon after the previous send on the same connection is
/// coalesced with it (see [`Options::write_coalescing`]).
pub const COALESCE_GAP: Duration = Duration::from_micros(50);
/// Pending coalesced bytes that are written at once.
pub const COALESCE_BYTES: usize = 64 * 1024;
/// Default longest delay of a coalesced send.
pub const COALESCE_DELAY: Duration = Duration::from_millis(1);

/// What happened on a connection, for logs, demos and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct PathLog {
    /// Transports declared dead (heartbeat silence or transport error).
    pub path_failures: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Bytes sent again after resumes.
    pub retransmitted_bytes: u64,
    /// When the last path failure was detected.
    pub last_failure_at: Option<Instant>,
    /// When the last resume completed.
    pub last_resume_at: Option<Instant>,
    /// The address pair in use (client side: the connected candidate).
    pub current_path: Option<(Option<std::net::IpAddr>, SocketAddr)>,
    /// Every (time, message) the driver logged about paths.
    pub history: Vec<(Instant, String)>,
}

impl PathLog {
    pub(crate) fn note(&mut self, now: Instant, msg: String) {
        tracing::info!("{msg}");
        if self.history.len() < 256 {
            self.history.push((now, msg));
        }
    }
}

pub(crate) struct Transport {
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) peer: Option<SocketAddr>,
    /// Writing was shut down after this side's CLOSE (see [`flush`]).
    pub(crate) write_shut: bool,
}

impl Transport {
    /// A transport from a stream that is already non-blocking, whose peer
    /// address the caller knows (no system call here).
    pub(crate) fn from_nonblocking(stream: TcpStream, peer: Option<SocketAddr>) -> Self {
        Transport {
            peer,
            stream: Arc::new(stream),
            write_shut: false,
        }
    }

    /// The local address (asked of the kernel when needed).
    pub(crate) fn local(&self) -> Option<SocketAddr> {
        self.stream.local_addr().ok()
    }
}

pub(crate) struct ClientCtx {
    /// The network namespace the session was created in (reconnects happen
    /// there, whichever thread runs them).
    pub(crate) netns: Option<Arc<std::fs::File>>,
    pub(crate) host: String,
    pub(crate) service: String,
    pub(crate) paths: PathSet,
    pub(crate) reconnecting: bool,
    pub(crate) last_path: Option<PathCandidate>,
}

pub(crate) struct ConnState {
    pub(crate) session: Session,
    pub(crate) transport: Option<Transport>,
    pub(crate) client: Option<ClientCtx>,
    pub(crate) options: Options,
    pub(crate) rng: StdRng,
    pub(crate) failure: Option<Failure>,
    pub(crate) log: PathLog,
    /// The application closed its handle; the keeper carries it to the end.
    pub(crate) app_closed: bool,
    /// When the transport was last read (the send path reads at least every
    /// quarter heartbeat so that a sending-only peer notices a dead path and
    /// the peer's CLOSE/FIN promptly).
    pub(crate) last_read: Instant,
    /// When the application last sent (for write coalescing).
    pub(crate) last_send: Option<Instant>,
    /// Coalesced output waits until this instant at the latest (the keeper
    /// writes it then if the application made no call before).
    pub(crate) flush_due: Option<Instant>,
    /// Client: NEW_ACK must have arrived by then, or the session fails with
    /// [`Error::TimedOut`] (optimistic connect; `None` once established).
    pub(crate) handshake_deadline: Option<Instant>,
    /// The last read of the transport found it empty (a short read or
    /// `EAGAIN`): a blocking receive then sleeps in `poll` first instead of
    /// trying a read that would most likely fail (request/response traffic:
    /// one `poll` and one read per message instead of three calls).
    pub(crate) input_drained: bool,
}

/// One namesocket connection (either end).
pub(crate) struct Conn {
    pub(crate) st: Mutex<ConnState>,
    /// The wake fds of the threads sleeping in [`Conn::wait`] (each thread
    /// has one eventfd for all its waits: no descriptor per connection).
    wakers: Mutex<Vec<Arc<EventFd>>>,
    waiters: AtomicUsize,
    /// Known to the keeper (and so to other threads). Until then only the
    /// creating thread touches the connection and needs no wake fd.
    registered: AtomicBool,
}

/// Longest sleep of a waiter without a wake fd (only when the eventfd could
/// not be created).
const NO_WAKE_FD_POLL: Duration = Duration::from_millis(10);

thread_local! {
    /// This thread's wake fd (created at its first wait that needs one).
    static WAKER: std::cell::OnceCell<Option<Arc<EventFd>>> = const { std::cell::OnceCell::new() };
}

/// The calling thread's wake fd, or `None` if it cannot be created.
pub(crate) fn thread_waker() -> Option<Arc<EventFd>> {
    WAKER.with(|w| {
        w.get_or_init(|| {
            EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                .ok()
                .map(Arc::new)
        })
        .clone()
    })
}

const READ_CHUNK: usize = 64 * 1024;
/// Most bytes one pump reads before it lets the application run.
const READ_BUDGET: usize = 1 << 20;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}

impl Conn {
    /// A connection registered with the keeper at once.
    pub(crate) fn new(state: ConnState) -> Arc<Conn> {
        let conn = Self::new_private(state);
        conn.register();
        conn
    }

    /// A connection only the calling thread knows about (a client during
    /// its handshake): its waits need no wake fd. Call [`Conn::register`]
    /// before sharing it.
    pub(crate) fn new_private(state: ConnState) -> Arc<Conn> {
        Arc::new(Conn {
            st: Mutex::new(state),
            wakers: Mutex::new(Vec::new()),
            waiters: AtomicUsize::new(0),
            registered: AtomicBool::new(false),
        })
    }

    /// Hands the connection to the keeper (its timers then run while the
    /// application is outside calls).
    pub(crate) fn register(self: &Arc<Self>) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            let deadline = self.lock().session.poll_timeout();
            keeper().register(self, deadline);
        }
    }

    fn wakers(&self) -> MutexGuard<'_, Vec<Arc<EventFd>>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A panic while holding the lock leaves a consistent-enough state for
        // reporting errors; never propagate the poison.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes threads sleeping in [`Conn::wait`]. (A waiter lists its wake
    /// fd before it counts itself.) A wake fd may so receive a wake meant
    /// for a wait that just ended: the next wait of that thread returns
    /// early once, which callers handle like any spurious wake-up.
    pub(crate) fn notify(&self) {
        if self.waiters.load(Ordering::Acquire) > 0 {
            for w in self.wakers().iter() {
                let _ = w.write(1);
            }
        }
    }

    /// Lists the calling thread's wake fd on this connection.
    fn add_waiter(&self) -> Option<Arc<EventFd>> {
        let w = thread_waker();
        if let Some(w) = &w {
            self.wakers().push(Arc::clone(w));
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        w
    }

    fn remove_waiter(&self, w: Option<&Arc<EventFd>>, fired: bool) {
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        if let Some(w) = w {
            let mut g = self.wakers();
            if let Some(i) = g.iter().position(|x| Arc::ptr_eq(x, w)) {
                g.swap_remove(i);
            }
            drop(g);
            if fired {
                let _ = w.read();
            }
        }
    }

    /// Releases the lock and sleeps until the transport is ready for what is
    /// wanted, the wake pipe fires, the engine's next deadline, or
    /// `until`. Returns the lock re-acquired.
    pub(crate) fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, ConnState>,
        want_write: bool,
        until: Option<Instant>,
    ) -> MutexGuard<'a, ConnState> {
        let stream = st.transport.as_ref().map(|t| Arc::clone(&t.stream));
        let deadline = [st.session.poll_timeout(), until, st.handshake_deadline]
            .into_iter()
            .flatten()
            .min();
        let write_pending = want_write || st.session_has_output();
        let shared = self.registered.load(Ordering::Acquire);
        let wake = if shared { self.add_waiter() } else { None };
        let deadline = if wake.is_none() && shared {
            let cap = Instant::now() + NO_WAKE_FD_POLL;
            Some(deadline.map_or(cap, |d| d.min(cap)))
        } else {
            deadline
        };
        drop(st);
        let timeout = poll_timeout(deadline);
        let woke;
        {
            let mut fds = Vec::with_capacity(2);
            if let Some(s) = &stream {
                let mut flags = PollFlags::POLLIN;
                if write_pending {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(s.as_fd(), flags));
            }
            if let Some(w) = &wake {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, timeout);
            woke = wake.is_some()
                && fds
                    .last()
                    .and_then(PollFd::revents)
                    .is_some_and(|r| r.contains(PollFlags::POLLIN));
        }
        if shared {
            self.remove_waiter(wake.as_ref(), woke);
        }
        self.lock()
    }

    /// Raw descriptors to poll for readiness (used by `nselect`): the wake
    /// pipe and the current transport.
    pub(crate) fn poll_handles(&self, st: &ConnState) -> (Option<Arc<TcpStream>>, Option<Instant>) {
        (
            st.transport.as_ref().map(|t| Arc::clone(&t.stream)),
            st.session.poll_timeout(),
        )
    }

    /// For `nselect`: lists the calling thread's wake fd on this connection
    /// and returns it (`None` if it cannot be created: the caller then polls
    /// with a short timeout). Pair with [`Conn::end_wait`].
    pub(crate) fn begin_wait(&self) -> Option<Arc<EventFd>> {
        self.add_waiter()
    }

    /// Unlists the wake fd (the caller drains it once for all).
    pub(crate) fn end_wait(&self, w: Option<&Arc<EventFd>>) {
        self.remove_waiter(w, false);
    }
}

/// `now + d` for a deadline, with `d` capped at a century (a timeout in
/// [`Options`] or a stream's read/write timeout may be as large as
/// `Duration::MAX`, meaning "never", and must not overflow `Instant`).
pub(crate) fn deadline_after(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    now.checked_add(d.min(CENTURY))
        .or_else(|| now.checked_add(Duration::from_secs(24 * 60 * 60)))
        .unwrap_or(now)
}

pub(crate) fn poll_timeout(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_nanos().div_ceil(1_000_000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

impl ConnState {
    pub(crate) fn new(session: Session, options: Options, client: Option<ClientCtx>) -> Self {
        ConnState {
            session,
            transport: None,
            client,
            options,
            // Seeded from the thread's CSPRNG (itself seeded from the OS):
            // no getrandom system call per connection.
            rng: StdRng::from_rng(&mut rand::rng()),
            failure: None,
            log: PathLog::default(),
            app_closed: false,
            last_read: Instant::now(),
            last_send: None,
            flush_due: None,
            handshake_deadline: None,
            input_drained: false,
        }
    }

    pub(crate) fn session_has_output(&self) -> bool {
        // Conservative: the engine may owe bytes whenever data is unsent;
        // `poll_transmit` needs &mut, so ask cheaply through the counters.
        let s = self.session.stats();
        self.session.data_allowed()
            && s.bytes_written > s.bytes_sent.saturating_sub(s.bytes_retransmitted)
    }

    /// The terminal error, if the session is over.
    pub(crate) fn terminal_error(&self) -> Option<Error> {
        self.failure.as_ref().map(Failure::to_error)
    }

    /// Drops the transport gracefully (FIN after the queued bytes). When
    /// another thread holds the stream (sleeping in `poll` on it), it is shut
    /// down first so that the sleeper wakes; otherwise closing it is enough.
    fn drop_transport(&mut self) {
        if let Some(t) = self.transport.take()
            && Arc::strong_count(&t.stream) > 1
        {
            let _ = t.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The transport failed (EOF, read/write error, bad input): tells the
    /// engine and drops the transport abortively.
    fn transport_lost(&mut self, now: Instant) {
        self.session.transport_down(now);
        self.abort_transport();
    }

    /// Drops a failed transport abortively: the peer gets a TCP RST as soon
    /// as the last handle is closed (see [`crate::connect::abort_on_close`]).
    /// A session that closed gracefully keeps the graceful TCP close (its
    /// CLOSE_ACK may still be in the socket buffer).
    fn abort_transport(&mut self) {
        if let Some(t) = self.transport.take() {
            if !self.session.is_closed() {
                crate::connect::abort_on_close(&*t.stream);
            }
            if Arc::strong_count(&t.stream) > 1 {
                let _ = t.stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

/// Runs the engine as far as it can go without blocking: reads available
/// input, fires due timers, writes pending output, handles events. Returns
/// true when something changed that a waiting thread may care about.
pub(crate) fn pump(conn: &Arc<Conn>, st: &mut ConnState, now: Instant) -> bool {
    pump_with(conn, st, now, true)
}

/// [`pump`] that skips the speculative read when `read` is false (the send
/// path reads ACKs only when the send buffer runs low or a timer is due, so a
/// send costs one write system call, like on a plain socket).
pub(crate) fn pump_with(conn: &Arc<Conn>, st: &mut ConnState, now: Instant, read: bool) -> bool {
    let due = st.session.poll_timeout().is_some_and(|t| t <= now);
    let mut changed = if read || due {
        read_input(st, now)
    } else {
        false
    };
    changed |= check_handshake_deadline(st, now);
    if st.session.poll_timeout().is_some_and(|t| t <= now) {
        st.session.handle_timeout(now);
        changed = true;
    }
    changed |= flush_and_handle(conn, st, now);
    changed
}

/// Writes pending output and handles the engine's events until neither
/// produces more: events may queue output (a resume acknowledgement), and
/// a write may fail the transport (the peer's RST when one direction of
/// the path died), which queues `PathDead`. That event must be handled
/// here: the transport is gone, so nothing would wake a thread that then
/// sleeps, and the session's next timer is the end of the resume window
/// (a client so stopped sending for 30 s instead of reconnecting at once).
/// Returns true when an event was handled.
pub(crate) fn flush_and_handle(conn: &Arc<Conn>, st: &mut ConnState, now: Instant) -> bool {
    let mut changed = false;
    flush(st, now);
    st.flush_due = None;
    // Each round either ends the transport (PathDead: nothing is written
    // afterwards) or writes what an event queued; a few rounds suffice.
    for _ in 0..4 {
        if !handle_events(conn, st, now) {
            break;
        }
        changed = true;
        flush(st, now);
    }
    changed
}

/// Optimistic connect: fails a client session whose NEW_ACK has not arrived
/// by its handshake deadline (the engine alone would keep replacing silent
/// transports with fresh NEWs until the resume window ends).
fn check_handshake_deadline(st: &mut ConnState, now: Instant) -> bool {
    let Some(d) = st.handshake_deadline else {
        return false;
    };
    if st.session.is_established() {
        st.handshake_deadline = None;
        return false;
    }
    if now < d || st.failure.is_some() || st.session.is_finished() {
        return false;
    }
    st.handshake_deadline = None;
    st.failure = Some(Failure::HandshakeTimedOut);
    st.log
        .note(now, "no NEW_ACK by the connect deadline".into());
    st.session.abort(0);
    st.abort_transport();
    true
}

impl ConnState {
    /// Bytes written by the application that were never sent.
    pub(crate) fn unsent_bytes(&self) -> u64 {
        let s = self.session.stats();
        s.bytes_written
            .saturating_sub(s.bytes_sent.saturating_sub(s.bytes_retransmitted))
    }

    /// Write coalescing: true when the send just accepted may stay in the
    /// retained buffer for now (the application is streaming small writes
    /// over an established, healthy transport and no timer is due). Sets
    /// the deadline by which it must be written; the caller then wakes the
    /// keeper with [`Keeper::wake_before`] when this returns a new one.
    pub(crate) fn coalesce_send(&mut self, now: Instant) -> (bool, Option<Instant>) {
        let prev = self.last_send.replace(now);
        let Some(delay) = self.options.write_coalescing else {
            return (false, None);
        };
        let streaming = prev.is_some_and(|p| now.saturating_duration_since(p) < COALESCE_GAP);
        if !streaming
            || self.transport.is_none()
            || !self.session.is_established()
            || self.session.poll_timeout().is_some_and(|t| t <= now)
            || self.unsent_bytes() >= COALESCE_BYTES as u64
        {
            return (false, None);
        }
        match self.flush_due {
            Some(_) => (true, None),
            None => {
                let due = deadline_after(now, delay);
                self.flush_due = Some(due);
                (true, Some(due))
            }
        }
    }
}

fn read_input(st: &mut ConnState, now: Instant) -> bool {
    st.last_read = now;
    let Some(t) = st.transport.as_ref() else {
        return false;
    };
    let stream = Arc::clone(&t.stream);
    let mut total = 0usize;
    let mut changed = false;
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        loop {
            match (&*stream).read(&mut buf[..]) {
                Ok(0) => {
                    st.transport_lost(now);
                    changed = true;
                    return;
                }
                Ok(n) => {
                    changed = true;
                    total += n;
                    if let Err(e) = st.session.handle_input(now, &buf[..n]) {
                        tracing::debug!(error = %e, "namesocket: bad input on transport");
                        // The engine raised PathDead or failed the session;
                        // either way this transport is done, once what the
                        // engine queued for the peer on failing (an ERROR
                        // frame refusing its parameters) is written.
                        flush(st, now);
                        st.transport_lost(now);
                        return;
                    }
                    // A short read drained the socket: skip the EAGAIN call.
                    if n < buf.len() {
                        st.input_drained = true;
                        return;
                    }
                    st.input_drained = false;
                    if total >= READ_BUDGET {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.input_drained = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "namesocket: transport read error");
                    st.transport_lost(now);
                    changed = true;
                    return;
                }
            }
        }
    });
    changed
}

/// Smallest application buffer that [`pump_into`] reads into directly
/// (smaller ones go through the engine's receive buffer: reading a few bytes
/// per system call would cost more than the copy saves).
pub(crate) const DIRECT_READ_MIN: usize = 4096;

/// [`pump`] for a receive with an empty engine receive buffer: one read of
/// the transport goes straight into the application's `buf`, the engine
/// moves the DATA payload to its front (no copy through the engine's
/// buffer), then timers, output and events are handled as in [`pump`].
/// Returns the payload bytes delivered into `buf` and whether something
/// changed that a waiting thread may care about.
pub(crate) fn pump_into(
    conn: &Arc<Conn>,
    st: &mut ConnState,
    now: Instant,
    buf: &mut [u8],
) -> (usize, bool) {
    let mut delivered = 0;
    let mut changed = false;
    st.last_read = now;
    if let Some(t) = st.transport.as_ref() {
        let stream = Arc::clone(&t.stream);
        loop {
            match (&*stream).read(buf) {
                Ok(0) => {
                    st.transport_lost(now);
                    changed = true;
                }
                Ok(n) => {
                    changed = true;
                    st.input_drained = n < buf.len();
                    let (d, r) = st.session.handle_input_in_place(now, buf, n);
                    delivered = d;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "namesocket: bad input on transport");
                        flush(st, now);
                        st.transport_lost(now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => st.input_drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "namesocket: transport read error");
                    st.transport_lost(now);
                    changed = true;
                }
            }
            break;
        }
    }
    changed |= pump_with(conn, st, now, false);
    (delivered, changed)
}

pub(crate) fn flush(st: &mut ConnState, now: Instant) {
    loop {
        let Some(t) = st.transport.as_mut() else {
            return;
        };
        if t.write_shut {
            return;
        }
        let stream = Arc::clone(&t.stream);
        // Bytes that end with this side's CLOSE are written with MSG_MORE:
        // the kernel holds them until the FIN below joins them, so the peer
        // sees CLOSE and FIN in one segment and cannot answer and close
        // (sending the first FIN) before this side's FIN is out. The same
        // for the CLOSE_ACK answering the peer's CLOSE: the session is over
        // and the transport is closed right after (`Event::Closed`), so
        // CLOSE_ACK and FIN share a segment too.
        let closing = st.session.poll_transmit(now).is_some()
            && (st.session.close_sent() || st.session.is_closed());
        let Some(tx) = st.session.poll_transmit(now) else {
            if st.session.close_sent() || st.session.is_closed() {
                // This side's CLOSE is fully written: send the TCP FIN now,
                // like a plain socket closed first, so that this side (not
                // the peer, which answers CLOSE_ACK and closes at once)
                // holds the TIME_WAIT. A client holding TIME_WAITs for one
                // server port makes every later connect(2) search the port
                // range past them (`__inet6_check_established` was 37% of
                // the CPU of a connect + close loop). Reading goes on until
                // CLOSE_ACK; nothing else is written on this transport.
                // The side that answered CLOSE (session closed) shuts down
                // too: its CLOSE_ACK went out with MSG_MORE, and the FIN
                // releases it whichever call flushed it.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                t.write_shut = true;
            }
            return;
        };
        let slices = tx.io_slices();
        let written = if closing {
            socket2::SockRef::from(&*stream)
                .send_vectored_with_flags(&slices, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        } else {
            (&*stream).write_vectored(&slices)
        };
        match written {
            Ok(0) => {
                st.transport_lost(now);
                return;
            }
            Ok(n) => st.session.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::debug!(error = %e, "namesocket: transport write error");
                st.transport_lost(now);
                return;
            }
        }
    }
}

fn handle_events(conn: &Arc<Conn>, st: &mut ConnState, now: Instant) -> bool {
    let mut changed = false;
    while let Some(ev) = st.session.poll_event() {
        changed = true;
        match ev {
            Event::Connected => st.handshake_deadline = None,
            Event::PathDead => {
                st.log.path_failures += 1;
                st.log.last_failure_at = Some(now);
                let path = st.transport.as_ref().and_then(|t| t.peer);
                st.log
                    .note(now, format!("path dead (peer {path:?}); transport dropped"));
                st.abort_transport();
                if st.client.is_some() {
                    start_reconnect(conn, st);
                }
            }
            Event::Resumed {
                retransmitted_bytes,
            } => {
                st.log.resumes += 1;
                st.log.retransmitted_bytes += retransmitted_bytes;
                st.log.last_resume_at = Some(now);
                let took = st
                    .log
                    .last_failure_at
                    .map(|f| now.saturating_duration_since(f));
                st.log.note(
                    now,
                    format!(
                        "resumed; {retransmitted_bytes} bytes re-sent; {took:?} after the failure was detected"
                    ),
                );
            }
            Event::PeerClosed => {}
            Event::Closed => {
                if st.failure.is_none() {
                    st.failure = Some(Failure::Closed);
                }
                flush(st, now);
                st.drop_transport();
            }
            Event::ResumeWindowExpired => {
                st.failure = Some(Failure::ResumeWindowExpired);
                st.log.note(now, "resume window expired".into());
                st.abort_transport();
            }
            Event::Error(e) => {
                st.log.note(now, format!("session failed: {e}"));
                st.failure = Some(Failure::Session(e));
                st.abort_transport();
            }
        }
    }
    changed
}

/// Moves the failed pair, every pair sharing its source or destination
/// address, and every pair on the same interface (the other family on a dead
/// link) to the back of the reconnect order.
pub(crate) fn demote_failed_path(paths: &mut PathSet, failed: &PathCandidate) {
    if failed.ifindex.is_some() {
        let same_link: Vec<PathCandidate> = paths
            .iter()
            .filter(|c| c.ifindex == failed.ifindex && *c != failed)
            .cloned()
            .collect();
        for c in &same_link {
            paths.mark_failed(c, FailScope::Pair);
        }
    }
    paths.mark_failed(failed, FailScope::DestinationOrSource);
}

fn start_reconnect(conn: &Arc<Conn>, st: &mut ConnState) {
    let Some(client) = st.client.as_mut() else {
        return;
    };
    if let Some(failed) = client.last_path.clone() {
        demote_failed_path(&mut client.paths, &failed);
    }
    if client.reconnecting {
        return;
    }
    client.reconnecting = true;
    let weak = Arc::downgrade(conn);
    let spawned = std::thread::Builder::new()
        .name("namesocket-reconnect".into())
        .spawn(move || reconnect_loop(weak));
    if spawned.is_err()
        && let Some(c) = st.client.as_mut()
    {
        c.reconnecting = false;
    }
}

/// The calling thread's network namespace, to be re-entered by helper threads.
pub(crate) fn current_netns() -> Option<Arc<std::fs::File>> {
    std::fs::File::open("/proc/thread-self/ns/net")
        .ok()
        .map(Arc::new)
}

/// A namespace handle with its (device, inode) identity.
type NetnsHandle = ((u64, u64), Arc<std::fs::File>);

thread_local! {
    /// The last namespace handle [`current_netns_for`] opened on this thread
    /// (one descriptor per thread).
    static NETNS: std::cell::RefCell<Option<NetnsHandle>> =
        const { std::cell::RefCell::new(None) };
}

/// [`current_netns`] for a connect that has just read the thread's
/// namespace identity (`/proc/thread-self/ns/net`'s device and inode): the
/// handle opened for the same namespace last time on this thread is reused
/// (no `open`/`close` per connection). A new handle is checked with `fstat`
/// to be the namespace identified.
pub(crate) fn current_netns_for(id: Option<(u64, u64)>) -> Option<Arc<std::fs::File>> {
    let Some(id) = id else {
        return current_netns();
    };
    NETNS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((cid, f)) = c.as_ref()
            && *cid == id
        {
            return Some(Arc::clone(f));
        }
        let f = current_netns()?;
        let st = nix::sys::stat::fstat(&*f).ok()?;
        if (st.st_dev, st.st_ino) == id {
            *c = Some((id, Arc::clone(&f)));
        }
        Some(f)
    })
}

fn reconnect_loop(weak: Weak<Conn>) {
    if let Some(conn) = weak.upgrade() {
        let ns = conn.lock().client.as_ref().and_then(|c| c.netns.clone());
        if let Some(ns) = ns
            && let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        {
            tracing::warn!(error = %e, "namesocket: cannot enter the session's network namespace");
        }
    }
    let mut backoff = Duration::from_millis(20);
    let mut rounds = 0u32;
    loop {
        let Some(conn) = weak.upgrade() else { return };
        let (candidates, race, resolver, host, service) = {
            let st = conn.lock();
            if st.failure.is_some() || st.transport.is_some() || st.session.is_finished() {
                drop(st);
                let mut st = conn.lock();
                if let Some(c) = st.client.as_mut() {
                    c.reconnecting = false;
                }
                return;
            }
            let Some(c) = st.client.as_ref() else { return };
            (
                c.paths.reconnect_order(c.last_path.as_ref()),
                st.options.race(),
                Resolver::new(st.options.resolver.clone()),
                c.host.clone(),
                c.service.clone(),
            )
        };
        drop(conn);
        let result = connect::connect_pairs_nonblocking(&candidates, &race);
        let Some(conn) = weak.upgrade() else { return };
        let mut st = conn.lock();
        let now = Instant::now();
        match result {
            Ok(won) => {
                if st.failure.is_some() || st.session.is_finished() {
                    if let Some(c) = st.client.as_mut() {
                        c.reconnecting = false;
                    }
                    return;
                }
                let path = won.path.clone();
                let t = Transport::from_nonblocking(won.stream, Some(path.dst));
                {
                    let s = &mut *st;
                    s.transport = Some(t);
                    s.log.current_path = Some((path.src, path.dst));
                    s.log.note(
                        now,
                        format!("reconnected over {:?} -> {}; resuming", path.src, path.dst),
                    );
                    if let Some(c) = s.client.as_mut() {
                        c.paths.mark_succeeded(&path);
                        c.last_path = Some(path);
                        c.reconnecting = false;
                    }
                    if let Err(e) = s.session.transport_up(now, &mut s.rng) {
                        s.failure = Some(Failure::Session(e));
                        s.drop_transport();
                    }
                    pump(&conn, s, now);
                }
                drop(st);
                conn.notify();
                return;
            }
            Err(e) => {
                st.log.note(now, format!("reconnect round failed: {e}"));
                crate::addrsel::forget_cached_plans();
                rounds += 1;
                if rounds.is_multiple_of(3) {
                    // Addresses may have changed: resolve the name again.
                    drop(st);
                    if let Ok(res) = resolver.resolve(&host, &service)
                        && let Ok(fresh) = crate::addrsel::plan_paths(&res.addrs)
                    {
                        let mut st = conn.lock();
                        if let Some(c) = st.client.as_mut() {
                            c.paths.refresh(fresh);
                        }
                    }
                    st = conn.lock();
                }
                // Let the keeper's timers run (resume window expiry).
                pump(&conn, &mut st, now);
                drop(st);
                conn.notify();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The keeper thread
// ---------------------------------------------------------------------------

/// The process-wide thread that runs connection timers while applications
/// are not inside a call, and finishes closed connections.
///
/// It is woken through its wake pipe only when it must act earlier than it
/// planned: a new connection whose first timer is due before the keeper's
/// next round, or a closed connection that still has data to deliver.
/// Closed connections that only wait for the peer's CLOSE_ACK are finished
/// in the keeper's rounds, at most [`LINGER_ROUND`] apart while there are
/// any (batching them instead of one wake-up per connection).
pub(crate) struct Keeper {
    conns: Mutex<Vec<Weak<Conn>>>,
    lingering: Mutex<Vec<Arc<Conn>>>,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    /// A wake byte is in the pipe (later wakes need not write another).
    wake_pending: AtomicBool,
    /// When the keeper will next run on its own (ns since `base`; 0 while
    /// it is running).
    next_round: AtomicU64,
    base: Instant,
}

/// Longest time a closed connection waits for the keeper to finish its
/// CLOSE handshake once the peer answered.
pub(crate) const LINGER_ROUND: Duration = Duration::from_millis(20);

pub(crate) fn keeper() -> &'static Keeper {
    static KEEPER: OnceLock<&'static Keeper> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (wake_rx, wake_tx) =
            UnixStream::pair().expect("namesocket: cannot create keeper wake pipe");
        let _ = wake_rx.set_nonblocking(true);
        let _ = wake_tx.set_nonblocking(true);
        let k: &'static Keeper = Box::leak(Box::new(Keeper {
            conns: Mutex::new(Vec::new()),
            lingering: Mutex::new(Vec::new()),
            wake_rx,
            wake_tx,
            wake_pending: AtomicBool::new(false),
            next_round: AtomicU64::new(0),
            base: Instant::now(),
        }));
        std::thread::Builder::new()
            .name("namesocket-keeper".into())
            .spawn(move || k.run())
            .expect("namesocket: cannot start keeper thread");
        k
    })
}

impl Keeper {
    fn register(&self, c: &Arc<Conn>, deadline: Option<Instant>) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= 64 && g.len().is_power_of_two() {
            g.retain(|w| w.strong_count() > 0);
        }
        g.push(Arc::downgrade(c));
        drop(g);
        if let Some(d) = deadline {
            self.wake_before(d);
        }
    }

    /// Keeps `c` alive until its session is finished (closed or failed).
    /// `busy`: it still has data to deliver (the keeper must watch its
    /// transport); otherwise it only waits for CLOSE_ACK.
    pub(crate) fn linger(&self, c: Arc<Conn>, busy: bool) {
        self.lingering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(c);
        if busy {
            self.wake();
        } else {
            self.wake_before(Instant::now() + LINGER_ROUND);
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Wakes the keeper unless its next round comes by `t` anyway.
    pub(crate) fn wake_before(&self, t: Instant) {
        let next = self.next_round.load(Ordering::Acquire);
        if next != 0 && next <= self.nanos(t) {
            return;
        }
        self.wake();
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    fn run(&self) {
        loop {
            let now = Instant::now();
            let mut next = now + Duration::from_millis(500);
            let list: Vec<Arc<Conn>> = {
                let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                g.retain(|w| w.strong_count() > 0);
                g.iter().filter_map(Weak::upgrade).collect()
            };
            let mut watch: Vec<Arc<TcpStream>> = Vec::new();
            for c in &list {
                match c.st.try_lock() {
                    Ok(mut st) => {
                        let due = st.session.poll_timeout().is_some_and(|t| t <= now)
                            || st.flush_due.is_some_and(|t| t <= now)
                            || st.handshake_deadline.is_some_and(|t| t <= now);
                        if (due || st.app_closed) && pump(c, &mut st, now) {
                            c.notify();
                        }
                        if let Some(t) = st.session.poll_timeout() {
                            next = next.min(t);
                        }
                        if let Some(t) = st.flush_due {
                            next = next.min(t);
                        }
                        if let Some(t) = st.handshake_deadline {
                            next = next.min(t);
                        }
                        if st.app_closed
                            && let Some(t) = &st.transport
                        {
                            if st.session.unacked_bytes() > 0 || st.session_has_output() {
                                watch.push(Arc::clone(&t.stream));
                            } else {
                                next = next.min(now + LINGER_ROUND);
                            }
                        }
                    }
                    Err(_) => next = next.min(now + Duration::from_millis(2)),
                }
            }
            self.lingering
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|c| {
                    let st = c.lock();
                    st.failure.is_none() && !st.session.is_finished()
                });
            drop(list);
            self.next_round
                .store(self.nanos(next).max(1), Ordering::Release);
            {
                let mut fds = Vec::with_capacity(1 + watch.len());
                fds.push(PollFd::new(self.wake_rx.as_fd(), PollFlags::POLLIN));
                for s in &watch {
                    fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                }
                let _ = poll(&mut fds, poll_timeout(Some(next)));
            }
            self.next_round.store(0, Ordering::Release);
            self.wake_pending.store(false, Ordering::Release);
            let mut buf = [0u8; 256];
            while let Ok(n) = (&self.wake_rx).read(&mut buf) {
                if n < buf.len() {
                    break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Ephemeral X25519 key pairs, shared by sessions and rotated
// ---------------------------------------------------------------------------

/// How long one ephemeral key pair is used for new sessions.
pub const KEY_ROTATION: Duration = Duration::from_secs(60);

/// The current process-wide key pair (rotated every [`KEY_ROTATION`]).
pub(crate) fn current_keys() -> Arc<KeyPair> {
    static KEYS: Mutex<Option<(Instant, Arc<KeyPair>)>> = Mutex::new(None);
    let mut g = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match &*g {
        Some((at, k)) if now.saturating_duration_since(*at) < KEY_ROTATION => Arc::clone(k),
        _ => {
            let mut rng = StdRng::from_os_rng();
            let k = Arc::new(KeyPair::generate(&mut rng));
            *g = Some((now, Arc::clone(&k)));
            k
        }
    }
}
