//! [`NameListener`]: accepts namesocket sessions on the wildcard address of
//! both families and routes RESUMEs to parked sessions by session id.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::connect::{self, DualListener};
use crate::driver::{self, Conn, ConnState, Options, Transport};
use crate::engine::Session;
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
}

struct ListenState {
    ready: VecDeque<Arc<Conn>>,
    sessions: HashMap<SessionId, Weak<Conn>>,
    stats: ListenerStats,
}

struct Shared {
    listener: DualListener,
    options: Options,
    state: Mutex<ListenState>,
    ready_cv: Condvar,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
    closed: AtomicBool,
}

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
        let port = crate::resolve::Resolver::new(options.resolver.clone()).service_port(service)?;
        let listener = connect::listen_dual_with_backlog(port, options.backlog)?;
        for l in listener.listeners() {
            l.set_nonblocking(true)?;
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
                stats: ListenerStats::default(),
            }),
            ready_cv: Condvar::new(),
            wake_rx,
            wake_tx,
            closed: AtomicBool::new(false),
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
    pub fn accept_timeout(&self, timeout: Option<Duration>) -> Result<NameStream> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.shared.lock();
        loop {
            if let Some(c) = st.ready.pop_front() {
                return Ok(NameStream::from_conn(c));
            }
            if self.nonblocking.load(Ordering::Relaxed) {
                return Err(Error::WouldBlock);
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::TimedOut);
                    }
                    left
                }
                None => Duration::from_secs(3600),
            };
            st = self
                .shared
                .ready_cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
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
    buf: Vec<u8>,
    deadline: Instant,
}

/// Most bytes a peer may send before its first message is complete.
const MAX_FIRST_MESSAGE: usize = 4096;

fn acceptor(weak: Weak<Shared>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut rng = StdRng::from_os_rng();
    let mut last_sweep = Instant::now();
    loop {
        let Some(shared) = weak.upgrade() else { return };
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let next = pending
            .iter()
            .map(|p| p.deadline)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1));
        {
            let mut fds = Vec::with_capacity(3 + pending.len());
            fds.push(PollFd::new(shared.wake_rx.as_fd(), PollFlags::POLLIN));
            for l in shared.listener.listeners() {
                fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
            }
            for p in &pending {
                fds.push(PollFd::new(p.stream.as_fd(), PollFlags::POLLIN));
            }
            let _ = poll(&mut fds, driver::poll_timeout(Some(next)));
        }
        let mut sink = [0u8; 64];
        while let Ok(n) = (&shared.wake_rx).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        // New connections.
        for l in shared.listener.listeners() {
            loop {
                match l.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let _ =
                            connect::configure_stream(&stream, &shared.options.socket_options());
                        shared.lock().stats.connections += 1;
                        pending.push(Pending {
                            stream,
                            buf: Vec::new(),
                            deadline: Instant::now() + shared.options.handshake_timeout,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "namesocket: accept failed");
                        break;
                    }
                }
            }
        }
        // First messages.
        let now = Instant::now();
        let mut i = 0;
        while i < pending.len() {
            match read_first(&mut pending[i]) {
                FirstRead::NeedMore if pending[i].deadline > now => i += 1,
                FirstRead::NeedMore => {
                    shared.lock().stats.handshake_timeouts += 1;
                    pending.swap_remove(i);
                }
                FirstRead::Gone => {
                    pending.swap_remove(i);
                }
                FirstRead::Bad => {
                    shared.lock().stats.bad_first_messages += 1;
                    pending.swap_remove(i);
                }
                FirstRead::Message(msg, used) => {
                    let p = pending.swap_remove(i);
                    handle_first(&shared, p, msg, used, &mut rng);
                }
            }
        }
        if now.saturating_duration_since(last_sweep) > Duration::from_secs(5) {
            last_sweep = now;
            shared.lock().sessions.retain(|_, w| {
                w.upgrade().is_some_and(|c| {
                    let st = c.lock();
                    st.failure.is_none() && !st.session.is_finished()
                })
            });
        }
    }
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
                Err(e) => {
                    tracing::warn!(error = %e, "namesocket: cannot create session");
                    return;
                }
            };
            let mut cs = ConnState::new(session, shared.options.clone(), None);
            let peer = p.stream.peer_addr().ok();
            match Transport::new(p.stream) {
                Ok(t) => cs.transport = Some(t),
                Err(_) => return,
            }
            cs.log.current_path = peer.map(|pa| (None, pa));
            if !rest.is_empty() {
                let _ = cs.session.handle_input(now, &rest);
            }
            let Ok(conn) = Conn::new(cs) else { return };
            {
                let mut cs = conn.lock();
                driver::pump(&conn, &mut cs, now);
            }
            let mut st = shared.lock();
            st.sessions.insert(new.session_id, Arc::downgrade(&conn));
            if st.ready.len() >= shared.options.backlog as usize {
                st.stats.queue_overflows += 1;
                drop(st);
                let mut cs = conn.lock();
                cs.session.abort(1);
                driver::pump(&conn, &mut cs, now);
                return;
            }
            st.stats.sessions += 1;
            st.ready.push_back(conn);
            drop(st);
            shared.ready_cv.notify_one();
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
                        let _ = old.stream.shutdown(std::net::Shutdown::Both);
                    }
                    let peer: Option<SocketAddr> = p.stream.peer_addr().ok();
                    match Transport::new(p.stream) {
                        Ok(t) => cs.transport = Some(t),
                        Err(_) => return,
                    }
                    cs.log.current_path = peer.map(|pa| (None, pa));
                    cs.log
                        .note(now, format!("resumed by the client from {peer:?}"));
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
        }
    }
}
