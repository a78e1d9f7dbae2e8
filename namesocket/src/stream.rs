//! [`NameStream`]: a connected namesocket with blocking (or non-blocking)
//! std IO, implementing [`Read`] and [`Write`].

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::addrsel::{netns_identity, plan_paths_cached_in};
use crate::connect::{self, PathSet};
use crate::driver::{self, ClientCtx, Conn, ConnState, Options, PathLog, Transport};
use crate::engine::{Session, Stats, WriteError};
use crate::error::{Error, Result};
use crate::resolve::Resolver;
use crate::wire::v2::SessionId;

/// A namesocket session: a reliable byte stream to a *named* peer that
/// survives the failure of the address pair it runs on.
///
/// Dropping a `NameStream` closes it gracefully in the background (data
/// already written is still delivered, like a TCP close).
#[derive(Debug)]
pub struct NameStream {
    pub(crate) conn: Arc<Conn>,
    nonblocking: AtomicBool,
    read_timeout: std::sync::Mutex<Option<Duration>>,
    write_timeout: std::sync::Mutex<Option<Duration>>,
    read_shut: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl NameStream {
    /// Connects to `service` on `host` with default [`Options`]: resolves
    /// every address of the name (hosts file, DNS), pairs each with a source
    /// address (RFC 6724), races the pairs and starts a session.
    ///
    /// Returns once a TCP connection is up and NEW is written, without
    /// waiting for the server's NEW_ACK (see "Connect is optimistic" in the
    /// driver docs): the first send waits for it instead (receives, polls
    /// and close do not); a server that refuses the session is reported by
    /// the first receive, send or poll, and one that never answers by
    /// [`Error::TimedOut`] from those calls.
    pub fn connect(host: &str, service: &str) -> Result<NameStream> {
        Self::connect_with(host, service, &Options::default())
    }

    /// [`NameStream::connect`] with explicit options.
    pub fn connect_with(host: &str, service: &str, options: &Options) -> Result<NameStream> {
        options.session.validate()?;
        let resolver = Resolver::new(options.resolver.clone());
        let resolution = resolver.resolve(host, service)?;
        let ns_id = netns_identity();
        let candidates = plan_paths_cached_in(ns_id, &resolution.addrs)?;
        // The session and its NEW are ready before the race, so that where
        // the handshake completes within connect(2) NEW goes out at once
        // (the server, woken by the handshake, then usually finds it
        // already there instead of sleeping again).
        let start = Instant::now();
        let session = Session::client(options.session.clone(), driver::current_keys())?;
        let mut st = ConnState::new(session, options.clone(), None);
        {
            let st = &mut st;
            st.session.transport_up(start, &mut st.rng)?;
        }
        let mut first = Vec::new();
        if let Some(tx) = st.session.poll_transmit(start) {
            tx.copy_to(&mut first);
        }
        let (won, written) =
            match connect::connect_pairs_first(&candidates, &options.race(), &first) {
                Ok(won) => won,
                Err(e) => {
                    crate::addrsel::forget_cached_plans();
                    return Err(e.into());
                }
            };
        if !won.failures.is_empty() {
            crate::addrsel::forget_cached_plans();
        }
        let now = Instant::now();
        if written > 0 {
            st.session.advance(written);
        } else {
            // Connected through poll (possibly much later): start a fresh
            // session now so that its timers count from the connection.
            st.session = Session::client(options.session.clone(), driver::current_keys())?;
            let st = &mut st;
            st.session.transport_up(now, &mut st.rng)?;
        }
        st.client = Some(ClientCtx {
            netns: driver::current_netns_for(ns_id),
            host: host.to_string(),
            service: service.to_string(),
            paths: PathSet::new(candidates),
            reconnecting: false,
            last_path: Some(won.path.clone()),
        });
        st.log.current_path = Some((won.path.src, won.path.dst));
        st.transport = Some(Transport::from_nonblocking(won.stream, Some(won.path.dst)));
        // Nothing can have arrived yet: the first receive polls first.
        st.input_drained = true;
        st.handshake_deadline = Some(driver::deadline_after(
            now,
            options
                .connect_attempt_timeout
                .max(options.session.dead_timeout.saturating_mul(4)),
        ));
        let conn = Conn::new_private(st);
        {
            let mut st = conn.lock();
            // Nothing can have arrived before NEW is sent: skip the read.
            driver::pump_with(&conn, &mut st, now, false);
            if let Some(e) = st.terminal_error() {
                return Err(e);
            }
        }
        conn.register();
        Ok(NameStream::from_conn(conn))
    }

    pub(crate) fn from_conn(conn: Arc<Conn>) -> NameStream {
        NameStream {
            conn,
            nonblocking: AtomicBool::new(false),
            read_timeout: std::sync::Mutex::new(None),
            write_timeout: std::sync::Mutex::new(None),
            read_shut: AtomicBool::new(false),
        }
    }

    /// Sends bytes; blocks while the retained send buffer is full (unless
    /// non-blocking). Returns how many bytes were accepted. Every accepted
    /// byte is delivered to the peer, across path failures, or the session
    /// reports an error.
    pub fn send(&self, buf: &[u8]) -> Result<usize> {
        self.send_flags(buf, false)
    }

    /// [`NameStream::send`] that never blocks when `dontwait` is set.
    pub fn send_flags(&self, buf: &[u8], dontwait: bool) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let nonblock = dontwait || self.nonblocking.load(Ordering::Relaxed);
        let deadline =
            lock_opt(&self.write_timeout).map(|t| driver::deadline_after(Instant::now(), t));
        let mut st = self.conn.lock();
        loop {
            let now = Instant::now();
            if st.session.new_ack_pending() {
                // The first send waits for NEW_ACK (optimistic connect): a
                // transport lost before it is replaced by a fresh session,
                // which the server application sees as a new connection;
                // data must not be accepted into a session id that may
                // still change under the application.
                if let Some(e) = st.terminal_error() {
                    return Err(e);
                }
                driver::pump(&self.conn, &mut st, now);
                if !st.session.new_ack_pending() || st.failure.is_some() {
                    continue;
                }
                if nonblock {
                    return Err(Error::WouldBlock);
                }
                if deadline.is_some_and(|d| d <= now) {
                    return Err(Error::TimedOut);
                }
                st = self.conn.wait(st, false, deadline);
                continue;
            }
            match st.session.write(buf) {
                Ok(n) if n > 0 => {
                    let (coalesced, new_due) = st.coalesce_send(now);
                    if coalesced {
                        drop(st);
                        if let Some(due) = new_due {
                            driver::keeper().wake_before(due);
                        }
                        return Ok(n);
                    }
                    // Read only when ACKs are needed to make room, or while
                    // the handshake is incomplete (NEW_ACK must be processed
                    // promptly: before it, a failed path cannot be resumed).
                    let read = !st.session.is_established()
                        || st.session.send_capacity() < st.options.session.send_buffer_limit / 2
                        || now.saturating_duration_since(st.last_read)
                            >= st.options.session.heartbeat_interval / 4;
                    driver::pump_with(&self.conn, &mut st, now, read);
                    return Ok(n);
                }
                Ok(_) => {}
                Err(WriteError::Shutdown) => return Err(Error::Shutdown),
                Err(WriteError::Closed) => {
                    return Err(st.terminal_error().unwrap_or(Error::Closed));
                }
            }
            if let Some(e) = st.terminal_error() {
                return Err(e);
            }
            // The buffer is full: reading ACKs may free space.
            driver::pump(&self.conn, &mut st, now);
            if st.session.send_capacity() > 0 {
                continue;
            }
            if nonblock {
                return Err(Error::WouldBlock);
            }
            if deadline.is_some_and(|d| d <= now) {
                return Err(Error::TimedOut);
            }
            st = self.conn.wait(st, true, deadline);
        }
    }

    /// Receives bytes; blocks until some are available (unless non-blocking).
    /// `Ok(0)` means the peer shut down or closed its sending side.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_flags(buf, false)
    }

    /// [`NameStream::recv`] that never blocks when `dontwait` is set.
    pub fn recv_flags(&self, buf: &mut [u8], dontwait: bool) -> Result<usize> {
        if self.read_shut.load(Ordering::Relaxed) {
            return Ok(0);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let nonblock = dontwait || self.nonblocking.load(Ordering::Relaxed);
        let deadline =
            lock_opt(&self.read_timeout).map(|t| driver::deadline_after(Instant::now(), t));
        let mut st = self.conn.lock();
        // The first pass reads the transport only if the last read did not
        // find it empty (else it sleeps in poll first: see
        // `ConnState::input_drained`); passes after a wait always read.
        let mut may_read = nonblock || !st.input_drained;
        loop {
            let n = st.session.read(buf);
            if n > 0 {
                // Request/response, not streaming: the next send is not
                // coalesced with the previous one (it would only wait for
                // this thread's next call, and cost keeper rounds).
                st.last_send = None;
                // Reading may owe the peer an ACK (flow control).
                let now = Instant::now();
                driver::pump_with(&self.conn, &mut st, now, false);
                return Ok(n);
            }
            if let Some(e) = st.terminal_error() {
                return match e {
                    Error::Closed => Ok(0),
                    e => Err(e),
                };
            }
            if st.session.read_eof() {
                return Ok(0);
            }
            let now = Instant::now();
            if !may_read {
                // Timers and pending output only.
                driver::pump_with(&self.conn, &mut st, now, false);
            } else if buf.len() >= driver::DIRECT_READ_MIN {
                // Nothing buffered: read the transport straight into `buf`.
                let (n, _) = driver::pump_into(&self.conn, &mut st, now, buf);
                if n > 0 {
                    st.last_send = None;
                    return Ok(n);
                }
            } else {
                driver::pump(&self.conn, &mut st, now);
            }
            if st.session.readable_bytes() > 0 || st.session.read_eof() || st.failure.is_some() {
                continue;
            }
            if nonblock {
                return Err(Error::WouldBlock);
            }
            if deadline.is_some_and(|d| d <= now) {
                if !may_read {
                    // Read once before giving up.
                    may_read = true;
                    continue;
                }
                return Err(Error::TimedOut);
            }
            st = self.conn.wait(st, false, deadline);
            may_read = true;
        }
    }

    /// Shuts down reading, writing or both. Shutting down writing sends the
    /// peer an end-of-stream after the last byte written; shutting down
    /// reading makes later receives return 0.
    pub fn shutdown(&self, how: std::net::Shutdown) -> Result<()> {
        let mut st = self.conn.lock();
        if matches!(how, std::net::Shutdown::Read | std::net::Shutdown::Both) {
            self.read_shut.store(true, Ordering::Relaxed);
        }
        if matches!(how, std::net::Shutdown::Write | std::net::Shutdown::Both) {
            st.session.shutdown_write();
            driver::pump(&self.conn, &mut st, Instant::now());
        }
        Ok(())
    }

    /// Blocks until the peer has acknowledged every byte written so far
    /// (or `timeout` passes). Useful before reporting a transfer complete.
    pub fn wait_acked(&self, timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| driver::deadline_after(Instant::now(), t));
        let mut st = self.conn.lock();
        loop {
            let now = Instant::now();
            driver::pump(&self.conn, &mut st, now);
            if st.session.unacked_bytes() == 0 {
                return Ok(());
            }
            if let Some(e) = st.terminal_error() {
                return Err(e);
            }
            if deadline.is_some_and(|d| d <= now) {
                return Err(Error::TimedOut);
            }
            st = self.conn.wait(st, false, deadline);
        }
    }

    /// Closes the session gracefully and returns at once; the data written
    /// so far is still delivered in the background (across path failures),
    /// then the CLOSE handshake ends the session.
    pub fn close(self) -> Result<()> {
        // Drop does the work.
        Ok(())
    }

    /// Sets non-blocking mode (send/recv return [`Error::WouldBlock`]).
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblocking.store(on, Ordering::Relaxed);
    }

    /// Timeout for blocking receives (`None` = wait forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        *self.read_timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Timeout for blocking sends (`None` = wait forever).
    pub fn set_write_timeout(&self, t: Option<Duration>) {
        *self.write_timeout.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Engine counters (bytes written/acked/retransmitted, resumes, …).
    pub fn stats(&self) -> Stats {
        self.conn.lock().session.stats().clone()
    }

    /// What happened to the paths of this session.
    pub fn path_log(&self) -> PathLog {
        self.conn.lock().log.clone()
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.conn.lock().session.session_id()
    }

    /// The local address of the current transport, if one is up.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.conn.lock().transport.as_ref().and_then(|t| t.local())
    }

    /// The peer address of the current transport, if one is up.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.conn.lock().transport.as_ref().and_then(|t| t.peer)
    }

    /// True when data can be received without blocking (or EOF/error is
    /// pending). Runs the engine first.
    pub fn poll_readable(&self) -> bool {
        let mut st = self.conn.lock();
        driver::pump(&self.conn, &mut st, Instant::now());
        st.session.readable_bytes() > 0 || st.session.read_eof() || st.failure.is_some()
    }

    /// True when a send would accept at least one byte (or fail at once).
    /// False until NEW_ACK has arrived.
    pub fn poll_writable(&self) -> bool {
        let mut st = self.conn.lock();
        driver::pump(&self.conn, &mut st, Instant::now());
        (st.session.send_capacity() > 0 && !st.session.new_ack_pending()) || st.failure.is_some()
    }

    /// Breaks the current transport (both directions) as a failed path
    /// would, so that the client reconnects and resumes. For tests and
    /// demonstrations on a single host.
    #[doc(hidden)]
    pub fn break_transport(&self) {
        let st = self.conn.lock();
        if let Some(t) = &st.transport {
            let _ = t.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// A one-line description of the connection's internal state, for
    /// diagnosing tests.
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let st = self.conn.lock();
        let now = Instant::now();
        format!(
            "established={} transport_up={} disconnected={} finished={} has_transport={} \
             reconnecting={:?} unacked={} readable={} capacity={} eof={} next_timer_in={:?} \
             failure={:?} stats={:?}",
            st.session.is_established(),
            st.session.is_transport_up(),
            st.session.is_disconnected(),
            st.session.is_finished(),
            st.transport.is_some(),
            st.client.as_ref().map(|c| c.reconnecting),
            st.session.unacked_bytes(),
            st.session.readable_bytes(),
            st.session.send_capacity(),
            st.session.read_eof(),
            st.session
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now)),
            st.failure,
            st.session.stats(),
        )
    }

    /// True when the session has failed.
    pub fn has_error(&self) -> bool {
        let st = self.conn.lock();
        st.failure
            .as_ref()
            .is_some_and(|f| !matches!(f, crate::error::Failure::Closed))
    }

    /// [`NameStream::has_error`] after processing what the transport has
    /// (for `nselect`'s exception set: input that fails the session, such as
    /// a REJECT, must be read to be noticed).
    pub(crate) fn poll_error(&self) -> bool {
        let mut st = self.conn.lock();
        driver::pump(&self.conn, &mut st, Instant::now());
        st.failure
            .as_ref()
            .is_some_and(|f| !matches!(f, crate::error::Failure::Closed))
    }
}

fn lock_opt(m: &std::sync::Mutex<Option<Duration>>) -> Option<Duration> {
    *m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for NameStream {
    fn drop(&mut self) {
        let (finished, busy) = {
            let mut st = self.conn.lock();
            st.app_closed = true;
            st.session.close();
            // Send what closing queued; reading the peer's answers is the
            // keeper's job (a read here would nearly always find nothing).
            driver::pump_with(&self.conn, &mut st, Instant::now(), false);
            (
                st.failure.is_some() || st.session.is_finished(),
                st.session.unacked_bytes() > 0 || st.session_has_output(),
            )
        };
        if !finished {
            // Normally registered at connect; a stream dropped while its
            // handshake failed midway is not.
            self.conn.register();
            driver::keeper().linger(Arc::clone(&self.conn), busy);
        }
    }
}

impl Read for NameStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Read for &NameStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf).map_err(io::Error::from)
    }
}

impl Write for NameStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

impl Write for &NameStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map_err(io::Error::from)
    }
    /// Pushes pending frames to the transport (does not wait for the peer's
    /// acknowledgement; see [`NameStream::wait_acked`]).
    fn flush(&mut self) -> io::Result<()> {
        let mut st = self.conn.lock();
        let due = st.flush_due;
        // A failed write raises PathDead, which must be handled (reconnect)
        // before the application's next call may sleep.
        let changed = driver::flush_and_handle(&self.conn, &mut st, Instant::now());
        if st.unsent_bytes() > 0 {
            // Still pending (the socket is full): the keeper's deadline
            // stands.
            st.flush_due = due;
        }
        drop(st);
        if changed {
            self.conn.notify();
        }
        Ok(())
    }
}
