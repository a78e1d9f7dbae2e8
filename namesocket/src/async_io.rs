//! Tokio driver: [`AsyncNameStream`] (implements `AsyncRead`/`AsyncWrite`)
//! and [`AsyncNameListener`].
//!
//! Each session runs as one task that owns the transport: it moves bytes
//! between the TCP stream and the engine, serves the timers, reconnects and
//! resumes (client) or takes over the transport of an accepted RESUME
//! (server). The application side only touches the engine's buffers under a
//! short lock and wakes the task.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

use crate::addrsel::{PathCandidate, plan_paths};
use crate::connect::{self, AsyncDualListener, PathSet};
use crate::driver::{self, Options, PathLog};
use crate::engine::{AcceptError, Event, Session, Stats, WriteError};
use crate::error::{Error, Failure, Result};
use crate::resolve::Resolver;
use crate::wire::v2::{RejectReason, SessionId};
use crate::wire::{self, FirstMessage};

struct AState {
    session: Session,
    options: Options,
    rng: StdRng,
    failure: Option<Failure>,
    log: PathLog,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    app_closed: bool,
    transport_up: bool,
    /// Server: a RESUME was accepted on a new transport that the session
    /// task has not picked up yet. The engine already speaks to the new
    /// transport (RESUME_ACK is queued for it), so the old one must be
    /// neither written (the RESUME_ACK would be lost on it) nor read (its
    /// bytes would be taken for the new transport's); the task drops it.
    /// The number identifies the transport awaited: a transport of an
    /// earlier RESUME that reaches the task after a later one was accepted
    /// is stale and dropped.
    handover: Option<u64>,
    /// Numbers the transports of accepted RESUMEs.
    resume_seq: u64,
}

struct AShared {
    st: Mutex<AState>,
    kick: Notify,
}

impl AShared {
    fn lock(&self) -> MutexGuard<'_, AState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AState {
    fn wake_app(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }
}

/// A namesocket session for tokio. See [`NameStream`](crate::NameStream) for
/// the semantics; dropping it closes the session gracefully in the
/// background.
pub struct AsyncNameStream {
    shared: Arc<AShared>,
}

impl std::fmt::Debug for AsyncNameStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncNameStream").finish_non_exhaustive()
    }
}

struct ClientInfo {
    host: String,
    service: String,
    paths: PathSet,
    last: Option<PathCandidate>,
}

enum Role {
    Client(ClientInfo),
    /// Transports of accepted RESUMEs: (number, stream, bytes after RESUME).
    Server(mpsc::Receiver<(u64, TcpStream, Vec<u8>)>),
}

impl AsyncNameStream {
    /// Connects to `service` on `host` (all addresses, RFC 6724 pairing,
    /// racing), with default options.
    pub async fn connect(host: &str, service: &str) -> Result<AsyncNameStream> {
        Self::connect_with(host, service, &Options::default()).await
    }

    /// [`AsyncNameStream::connect`] with explicit options.
    pub async fn connect_with(
        host: &str,
        service: &str,
        options: &Options,
    ) -> Result<AsyncNameStream> {
        options.session.validate()?;
        let resolver = Resolver::new(options.resolver.clone());
        let res = resolver.resolve_async(host, service).await?;
        let candidates = plan_paths(&res.addrs)?;
        let won = connect::connect_pairs_async_with(&candidates, &options.race()).await?;
        let session = Session::client(options.session.clone(), driver::current_keys())?;
        let mut st = new_state(session, options.clone());
        st.log.current_path = Some((won.path.src, won.path.dst));
        {
            let st = &mut st;
            st.session.transport_up(Instant::now(), &mut st.rng)?;
        }
        st.transport_up = true;
        let shared = Arc::new(AShared {
            st: Mutex::new(st),
            kick: Notify::new(),
        });
        let info = ClientInfo {
            host: host.to_string(),
            service: service.to_string(),
            paths: PathSet::new(candidates),
            last: Some(won.path),
        };
        tokio::spawn(session_task(
            Arc::clone(&shared),
            Some(won.stream),
            Role::Client(info),
        ));
        // Unlike the blocking driver (optimistic connect), the async connect
        // hands the session out only after NEW_ACK.
        let deadline = driver::deadline_after(
            Instant::now(),
            options
                .connect_attempt_timeout
                .max(options.session.dead_timeout.saturating_mul(4)),
        );
        loop {
            let notified = shared.kick.notified();
            {
                let st = shared.lock();
                if st.session.is_established() || matches!(st.failure, Some(Failure::Closed)) {
                    break;
                }
                if let Some(f) = &st.failure {
                    return Err(f.to_error());
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::TimedOut);
            }
            let _ = tokio::time::timeout(Duration::from_millis(5), notified).await;
        }
        Ok(AsyncNameStream { shared })
    }

    /// Engine counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().session.stats().clone()
    }

    /// What happened to the paths of this session.
    pub fn path_log(&self) -> PathLog {
        self.shared.lock().log.clone()
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.shared.lock().session.session_id()
    }

    /// Waits until the peer acknowledged every byte written so far.
    pub async fn wait_acked(&self) -> Result<()> {
        loop {
            let notified = self.shared.kick.notified();
            {
                let st = self.shared.lock();
                if st.session.unacked_bytes() == 0 {
                    return Ok(());
                }
                if let Some(f) = &st.failure {
                    return Err(f.to_error());
                }
            }
            // The task kicks on every change it makes; poll at a bounded
            // interval as well.
            let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
        }
    }
}

fn new_state(session: Session, options: Options) -> AState {
    AState {
        session,
        options,
        rng: StdRng::from_rng(&mut rand::rng()),
        failure: None,
        log: PathLog::default(),
        read_waker: None,
        write_waker: None,
        app_closed: false,
        transport_up: false,
        handover: None,
        resume_seq: 0,
    }
}

impl AsyncRead for AsyncNameStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let n = st.session.read(buf.initialize_unfilled());
        if n > 0 {
            buf.advance(n);
            drop(st);
            self.shared.kick.notify_one();
            return Poll::Ready(Ok(()));
        }
        if st.session.read_eof() {
            return Poll::Ready(Ok(()));
        }
        if let Some(f) = &st.failure {
            return match f {
                Failure::Closed => Poll::Ready(Ok(())),
                f => Poll::Ready(Err(f.to_error().into())),
            };
        }
        st.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for AsyncNameStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        match st.session.write(data) {
            Ok(n) if n > 0 || data.is_empty() => {
                drop(st);
                self.shared.kick.notify_one();
                Poll::Ready(Ok(n))
            }
            Ok(_) => {
                if let Some(f) = &st.failure {
                    return Poll::Ready(Err(f.to_error().into()));
                }
                st.write_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            Err(WriteError::Shutdown) => Poll::Ready(Err(Error::Shutdown.into())),
            Err(WriteError::Closed) => Poll::Ready(Err(st
                .failure
                .as_ref()
                .map_or(Error::Closed, Failure::to_error)
                .into())),
        }
    }

    /// Completes once every byte written so far has been handed to the
    /// current transport (TCP's send buffer), like a `TcpStream`'s flush:
    /// the session task is woken to write it, and the flush waits while the
    /// path is down (until the session resumes and the bytes are sent
    /// again, or it fails). Use [`AsyncNameStream::wait_acked`] to wait
    /// for the peer's acknowledgement instead.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_output_done(&self.shared, cx)
    }

    /// Shuts writing down: SHUTDOWN (the session-level end of stream, after
    /// the last written byte) is queued and the call completes once it and
    /// every byte before it have been handed to the transport, so that an
    /// application may exit right after `shutdown().await` without losing
    /// what it wrote (as long as the path holds; the peer's acknowledgement
    /// is [`AsyncNameStream::wait_acked`]). The peer's reads then end.
    /// Reading continues.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().session.shutdown_write();
        poll_output_done(&self.shared, cx)
    }
}

/// `poll_flush` / `poll_shutdown`: ready once the engine's output (data and
/// a requested SHUTDOWN) is all on the transport, or the session is over.
fn poll_output_done(shared: &AShared, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    let mut st = shared.lock();
    if st.session.output_flushed() {
        return Poll::Ready(Ok(()));
    }
    if let Some(f) = &st.failure {
        return match f {
            // Closed gracefully: everything written was acknowledged (CLOSE
            // follows the last ACK) or the peer closed, which discards what
            // it did not read, as TCP would.
            Failure::Closed => Poll::Ready(Ok(())),
            f => Poll::Ready(Err(f.to_error().into())),
        };
    }
    // The task wakes the application after each of its steps (writes
    // included).
    st.write_waker = Some(cx.waker().clone());
    drop(st);
    shared.kick.notify_one();
    Poll::Pending
}

impl Drop for AsyncNameStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.app_closed = true;
        st.session.close();
        drop(st);
        self.shared.kick.notify_one();
    }
}

const CHUNK: usize = 64 * 1024;
const READ_BUDGET: usize = 1 << 20;

/// What one synchronous service step found.
struct Step {
    deadline: Option<Instant>,
    want_write: bool,
    finished: bool,
    path_dead: bool,
}

/// Timers, output and events, without awaiting.
fn service(shared: &AShared, stream: &mut Option<TcpStream>) -> Step {
    let mut st = shared.lock();
    let now = Instant::now();
    if st.handover.is_some()
        && let Some(old) = stream.take()
    {
        // Replaced by a resumed transport: reset the old one.
        crate::connect::abort_on_close(&old);
    }
    if st.session.poll_timeout().is_some_and(|t| t <= now) {
        st.session.handle_timeout(now);
    }
    let mut want_write = flush_async(&mut st, stream, now);
    let mut path_dead = false;
    // Events may queue output (a resume acknowledgement), and a failed
    // write raises PathDead: alternate until no event is left, so that no
    // PathDead outlives this step (handled later, it would drop the
    // transport a reconnect has attached meanwhile).
    for _ in 0..4 {
        if !handle_events(&mut st, stream, now, &mut path_dead) {
            break;
        }
        want_write |= flush_async(&mut st, stream, now);
    }
    let finished = st.failure.is_some() || st.session.is_finished();
    if finished {
        *stream = None;
    }
    st.wake_app();
    Step {
        deadline: st.session.poll_timeout(),
        want_write,
        finished,
        path_dead,
    }
}

/// Handles the engine's events; true when there were any.
fn handle_events(
    st: &mut AState,
    stream: &mut Option<TcpStream>,
    now: Instant,
    path_dead: &mut bool,
) -> bool {
    let mut any = false;
    while let Some(ev) = st.session.poll_event() {
        any = true;
        match ev {
            Event::PathDead => {
                st.log.path_failures += 1;
                st.log.last_failure_at = Some(now);
                if st.log.history.len() < 256 {
                    st.log.history.push((now, "path dead".into()));
                }
                if let Some(s) = stream.as_ref() {
                    crate::connect::abort_on_close(s);
                }
                *stream = None;
                st.transport_up = false;
                *path_dead = true;
            }
            Event::Resumed {
                retransmitted_bytes,
            } => {
                st.log.resumes += 1;
                st.log.retransmitted_bytes += retransmitted_bytes;
                st.log.last_resume_at = Some(now);
            }
            Event::Closed => {
                if st.failure.is_none() {
                    st.failure = Some(Failure::Closed);
                }
            }
            Event::ResumeWindowExpired => st.failure = Some(Failure::ResumeWindowExpired),
            Event::Error(e) => st.failure = Some(Failure::Session(e)),
            Event::Connected | Event::PeerClosed => {}
        }
    }
    any
}

/// Writes what the engine has; true when the socket is full.
fn flush_async(st: &mut AState, stream: &mut Option<TcpStream>, now: Instant) -> bool {
    let Some(s) = stream.as_ref() else {
        return false;
    };
    loop {
        let Some(tx) = st.session.poll_transmit(now) else {
            return false;
        };
        match s.try_write_vectored(&tx.io_slices()) {
            Ok(0) => break,
            Ok(n) => st.session.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    st.session.transport_down(now);
    st.transport_up = false;
    *stream = None;
    false
}

/// Reads what the socket has into the engine; false when the transport ended.
fn read_available(shared: &AShared, s: &TcpStream, buf: &mut [u8]) -> bool {
    let mut st = shared.lock();
    if st.handover.is_some() {
        // `s` was replaced by a resumed transport: leave it unread (the
        // next service step drops it).
        return true;
    }
    let mut total = 0usize;
    loop {
        match s.try_read(buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                let now = Instant::now();
                if st.session.handle_input(now, &buf[..n]).is_err() {
                    // What the engine queued for the peer on failing (an
                    // ERROR frame refusing its parameters) goes out first,
                    // as far as the socket takes it.
                    while let Some(tx) = st.session.poll_transmit(now) {
                        match s.try_write_vectored(&tx.io_slices()) {
                            Ok(n) if n > 0 => st.session.advance(n),
                            _ => break,
                        }
                    }
                    break;
                }
                if total >= READ_BUDGET {
                    st.wake_app();
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.wake_app();
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    st.session.transport_down(Instant::now());
    st.transport_up = false;
    st.wake_app();
    false
}

async fn reconnect(shared: &AShared, info: &mut ClientInfo, round: u32) -> Option<TcpStream> {
    let (race, resolver) = {
        let st = shared.lock();
        (
            st.options.race(),
            Resolver::new(st.options.resolver.clone()),
        )
    };
    if round > 0
        && round.is_multiple_of(3)
        && let Ok(res) = resolver.resolve_async(&info.host, &info.service).await
        && let Ok(fresh) = plan_paths(&res.addrs)
    {
        info.paths.refresh(fresh);
    }
    let candidates = info.paths.reconnect_order(info.last.as_ref());
    let won = match connect::connect_pairs_async_with(&candidates, &race).await {
        Ok(w) => w,
        Err(e) => {
            let mut st = shared.lock();
            let now = Instant::now();
            if st.log.history.len() < 256 {
                st.log
                    .history
                    .push((now, format!("reconnect round failed: {e}")));
            }
            return None;
        }
    };
    let mut st = shared.lock();
    if st.failure.is_some() || st.session.is_finished() {
        return None;
    }
    let now = Instant::now();
    let st = &mut *st;
    if let Err(e) = st.session.transport_up(now, &mut st.rng) {
        st.failure = Some(Failure::Session(e));
        return None;
    }
    st.transport_up = true;
    st.log.current_path = Some((won.path.src, won.path.dst));
    info.paths.mark_succeeded(&won.path);
    info.last = Some(won.path);
    Some(won.stream)
}

async fn session_task(shared: Arc<AShared>, mut stream: Option<TcpStream>, mut role: Role) {
    let mut buf = vec![0u8; CHUNK];
    let mut backoff = Duration::from_millis(20);
    let mut round = 0u32;
    loop {
        let step = service(&shared, &mut stream);
        shared.kick.notify_waiters();
        if step.finished {
            return;
        }
        if let Role::Client(info) = &mut role {
            if step.path_dead
                && let Some(last) = info.last.clone()
            {
                driver::demote_failed_path(&mut info.paths, &last);
            }
            if stream.is_none() {
                match reconnect(&shared, info, round).await {
                    Some(s) => {
                        stream = Some(s);
                        backoff = Duration::from_millis(20);
                        round = 0;
                    }
                    None => {
                        round += 1;
                        // Sleep, but keep serving timers (resume window).
                        let deadline = shared.lock().session.poll_timeout();
                        let wake = deadline.map_or(backoff, |d| {
                            d.saturating_duration_since(Instant::now()).min(backoff)
                        });
                        tokio::time::sleep(wake).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
                continue;
            }
        }
        let sleep_until = step.deadline.map(tokio::time::Instant::from_std);
        let want_write = step.want_write;
        tokio::select! {
            r = async {
                match &stream {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                if r.is_ok()
                    && let Some(s) = &stream
                    && !read_available(&shared, s, &mut buf)
                {
                    stream = None;
                }
            }
            _ = async {
                match &stream {
                    Some(s) if want_write => { let _ = s.writable().await; }
                    _ => std::future::pending::<()>().await,
                }
            } => {}
            _ = async {
                match sleep_until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = shared.kick.notified() => {}
            new = async {
                match &mut role {
                    Role::Server(rx) => rx.recv().await,
                    Role::Client(_) => std::future::pending().await,
                }
            } => {
                if let Some((seq, s, rest)) = new {
                    let mut st = shared.lock();
                    if st.handover != Some(seq) {
                        // A later RESUME replaced this transport already.
                        crate::connect::abort_on_close(&s);
                    } else {
                    if let Some(old) = stream.take() {
                        crate::connect::abort_on_close(&old);
                    }
                    stream = Some(s);
                    st.handover = None;
                    st.transport_up = true;
                    if !rest.is_empty() {
                        let _ = st.session.handle_input(Instant::now(), &rest);
                    }
                    }
                }
            }
        }
    }
}

type ResumeTx = mpsc::Sender<(u64, TcpStream, Vec<u8>)>;
type SessionMap = Arc<Mutex<HashMap<SessionId, (Weak<AShared>, ResumeTx)>>>;

/// Handshake tasks whose connection has not sent its first message yet, by
/// id, oldest first (bounded by [`Options::max_pending_handshakes`]).
type WaitingQueue = Arc<Mutex<VecDeque<(u64, tokio::task::AbortHandle)>>>;

/// A handshake task's entry in the [`WaitingQueue`].
struct Waiting {
    queue: WaitingQueue,
    id: u64,
}

impl Waiting {
    /// The first message arrived (or the connection gave up): unlist.
    fn done(self) {
        let mut q = lock(&self.queue);
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

/// A listening namesocket for tokio.
pub struct AsyncNameListener {
    ready: tokio::sync::Mutex<mpsc::Receiver<AsyncNameStream>>,
    port: u16,
    stats: Arc<Mutex<crate::listener::ListenerStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AsyncNameListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncNameListener")
            .field("port", &self.port)
            .finish()
    }
}

impl AsyncNameListener {
    /// Listens on `service` on both families' wildcard addresses.
    pub async fn bind(service: &str) -> Result<AsyncNameListener> {
        Self::bind_with(service, &Options::default()).await
    }

    /// [`AsyncNameListener::bind`] with explicit options.
    pub async fn bind_with(service: &str, options: &Options) -> Result<AsyncNameListener> {
        options.session.validate()?;
        if options.backlog <= 0 {
            return Err(Error::InvalidArgument("backlog must be positive"));
        }
        if options.max_pending_handshakes == 0 {
            return Err(Error::InvalidArgument(
                "max_pending_handshakes must be positive",
            ));
        }
        let port = Resolver::new(options.resolver.clone()).service_port(service)?;
        let listener = AsyncDualListener::bind(port)?;
        let port = listener.local_port();
        let (ready_tx, ready_rx) = mpsc::channel(options.backlog as usize);
        let stats = Arc::new(Mutex::new(crate::listener::ListenerStats::default()));
        let sessions: SessionMap = Arc::new(Mutex::new(HashMap::new()));
        let opts = options.clone();
        let st2 = Arc::clone(&stats);
        let waiting: WaitingQueue = Arc::new(Mutex::new(VecDeque::new()));
        let task = tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                if let Ok(std_s) = s.into_std() {
                    let _ = connect::configure_stream(&std_s, &opts.socket_options());
                    let Ok(s) = TcpStream::from_std(std_s) else {
                        continue;
                    };
                    lock(&st2).connections += 1;
                    next_id += 1;
                    let slot = Waiting {
                        queue: Arc::clone(&waiting),
                        id: next_id,
                    };
                    // Listed under the lock, so that the task (which
                    // unlists itself under it) cannot finish first.
                    let mut q = lock(&waiting);
                    let h = tokio::spawn(handshake(
                        s,
                        opts.clone(),
                        Arc::clone(&sessions),
                        ready_tx.clone(),
                        Arc::clone(&st2),
                        slot,
                    ));
                    q.push_back((next_id, h.abort_handle()));
                    // The oldest connections still silent make room.
                    let cap = opts.max_pending_handshakes.max(1);
                    let mut dropped = 0;
                    while q.len() > cap {
                        if let Some((_, oldest)) = q.pop_front() {
                            oldest.abort();
                            dropped += 1;
                        }
                    }
                    drop(q);
                    if dropped > 0 {
                        lock(&st2).pending_overflows += dropped;
                    }
                }
            }
        });
        Ok(AsyncNameListener {
            ready: tokio::sync::Mutex::new(ready_rx),
            port,
            stats,
            task,
        })
    }

    /// The port listened on.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// The next new session.
    pub async fn accept(&self) -> Result<AsyncNameStream> {
        self.ready.lock().await.recv().await.ok_or(Error::Closed)
    }

    /// Counters.
    pub fn stats(&self) -> crate::listener::ListenerStats {
        lock(&self.stats).clone()
    }
}

impl Drop for AsyncNameListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn handshake(
    s: TcpStream,
    options: Options,
    sessions: SessionMap,
    ready: mpsc::Sender<AsyncNameStream>,
    stats: Arc<Mutex<crate::listener::ListenerStats>>,
    waiting: Waiting,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = s;
    let mut buf = Vec::new();
    let first = tokio::time::timeout(options.handshake_timeout, async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            match wire::accept_first(&buf) {
                Ok(Some(m)) => return Some(Ok(m)),
                Ok(None) if buf.len() > 4096 => return Some(Err(())),
                Ok(None) => {}
                Err(_) => return Some(Err(())),
            }
        }
    })
    .await;
    waiting.done();
    let (msg, used) = match first {
        Err(_) => {
            lock(&stats).handshake_timeouts += 1;
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(()))) => {
            // Not a namesocket peer (or a malformed first message): reset
            // the connection, see `listener::refuse_unsupported`.
            lock(&stats).bad_first_messages += 1;
            connect::abort_on_close(&s);
            return;
        }
        Ok(Some(Ok(m))) => m,
    };
    let rest = buf.get(used..).unwrap_or(&[]).to_vec();
    let now = Instant::now();
    let mut rng = StdRng::from_rng(&mut rand::rng());
    match msg {
        FirstMessage::New(new) => {
            if lock(&sessions)
                .get(&new.session_id)
                .is_some_and(|(w, _)| w.strong_count() > 0)
            {
                let _ = s
                    .write_all(&crate::engine::encode_reject(
                        RejectReason::DuplicateSession,
                    ))
                    .await;
                return;
            }
            let mut session = match Session::accept_new(
                now,
                options.session.clone(),
                driver::current_keys(),
                &new,
                &mut rng,
            ) {
                Ok(s) => s,
                Err(AcceptError::Refused { reason, .. }) => {
                    lock(&stats).rejected_sessions += 1;
                    let _ = s.write_all(&crate::engine::encode_reject(reason)).await;
                    return;
                }
                Err(AcceptError::Config(_)) => return,
            };
            if !rest.is_empty() {
                let _ = session.handle_input(now, &rest);
            }
            let mut st = new_state(session, options);
            st.transport_up = true;
            st.log.current_path = s.peer_addr().ok().map(|p| (None, p));
            let shared = Arc::new(AShared {
                st: Mutex::new(st),
                kick: Notify::new(),
            });
            let (tx, rx) = mpsc::channel(2);
            {
                let mut m = lock(&sessions);
                m.retain(|_, (w, _)| w.strong_count() > 0);
                m.insert(new.session_id, (Arc::downgrade(&shared), tx));
            }
            tokio::spawn(session_task(Arc::clone(&shared), Some(s), Role::Server(rx)));
            lock(&stats).sessions += 1;
            if ready.try_send(AsyncNameStream { shared }).is_err() {
                lock(&stats).queue_overflows += 1;
            }
        }
        FirstMessage::Resume(resume) => {
            let target = lock(&sessions)
                .get(&resume.session_id)
                .and_then(|(w, tx)| w.upgrade().map(|a| (a, tx.clone())));
            let Some((shared, tx)) = target else {
                lock(&stats).rejected_resumes += 1;
                let _ = s
                    .write_all(&crate::engine::encode_reject(RejectReason::UnknownSession))
                    .await;
                return;
            };
            let result = {
                let mut st = shared.lock();
                let st = &mut *st;
                st.session
                    .attach_resume(now, &resume, &mut st.rng)
                    .map(|()| {
                        st.resume_seq += 1;
                        st.handover = Some(st.resume_seq);
                        st.resume_seq
                    })
            };
            match result {
                Ok(seq) => {
                    lock(&stats).resumes += 1;
                    let _ = tx.send((seq, s, rest)).await;
                    shared.kick.notify_one();
                }
                Err(reason) => {
                    lock(&stats).rejected_resumes += 1;
                    let _ = s.write_all(&crate::engine::encode_reject(reason)).await;
                }
            }
        }
        FirstMessage::V1(_) => {
            // Version 1 has no refusal message: reset the connection (see
            // `listener::refuse_unsupported`).
            lock(&stats).version1_peers += 1;
            connect::abort_on_close(&s);
        }
    }
}
