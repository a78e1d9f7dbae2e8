//! Connection racing over (source, destination) pairs, the reconnect path
//! set, socket option helpers and dual-stack listening.
//!
//! * [`connect_pairs`] / [`connect_pairs_with`] (blocking) and
//!   [`connect_pairs_async`] / [`connect_pairs_async_with`] (Tokio) race the
//!   candidates Happy-Eyeballs style (RFC 8305 §5): attempts start in list
//!   order, a new one every `stagger` ("Connection Attempt Delay") or at once
//!   when an earlier attempt fails; several attempts are in flight together;
//!   the first established connection wins and every other attempt is
//!   closed. Each attempt binds its source address first (port 0), so the
//!   chosen pair is exactly the reported [`PathCandidate`].
//! * [`PathSet`]: the ordered candidate list the driver keeps for reconnects,
//!   with [`PathSet::mark_failed`] moving a failed pair (and optionally every
//!   pair sharing its destination or source) to the back.
//! * [`SocketOptions`]: `TCP_NODELAY`, `TCP_USER_TIMEOUT`, keepalive; applied
//!   before `connect` so that `TCP_USER_TIMEOUT` also bounds the handshake.
//! * [`listen_dual`]: the `nlisten` listener.
//!
//! # The nconnect chain
//!
//! ```no_run
//! use std::time::Duration;
//! use namesocket::addrsel::plan_paths;
//! use namesocket::connect::{FailScope, PathSet, connect_pairs};
//! use namesocket::resolve::Resolver;
//!
//! // All addresses of the name, both families (hosts file, then DNS).
//! let res = Resolver::system().resolve("peer.example", "4433")?;
//! // Every destination x suitable local source, RFC 6724 + RFC 8305 order.
//! let mut paths = PathSet::new(plan_paths(&res.addrs)?);
//! let (stream, path) =
//!     connect_pairs(&paths.to_vec(), Duration::from_secs(5), Duration::from_millis(250))?;
//! # drop(stream);
//! // ... the path dies: deprioritize it and reconnect over the other pairs.
//! paths.mark_failed(&path, FailScope::Pair);
//! let (_stream, _path) = connect_pairs(
//!     &paths.reconnect_order(Some(&path)),
//!     Duration::from_secs(5),
//!     Duration::from_millis(250),
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Choices (stable)
//!
//! * [`DEFAULT_STAGGER`] is 250 ms, the RFC 8305 §5 recommended Connection
//!   Attempt Delay; callers may pass less (RFC 8305 says not below 10 ms; the
//!   value is clamped to at least 10 ms).
//! * A failed `bind` (e.g. the source address disappeared) counts as a failed
//!   attempt of that pair, and the next pair starts immediately.
//! * [`listen_dual`] uses **two sockets**: `[::]:port` with `IPV6_V6ONLY=1`
//!   and `0.0.0.0:port`, both with `SO_REUSEADDR`. IPv4 peers therefore show
//!   up with plain IPv4 addresses (not `::ffff:a.b.c.d`), and the listener
//!   works whatever `net.ipv6.bindv6only` says. If one family is not
//!   available on the host (`EAFNOSUPPORT`, `EADDRNOTAVAIL`), the listener
//!   runs with the other family alone. With port 0, the IPv6 socket picks the
//!   port and the IPv4 socket binds the same number (retried with a fresh
//!   port if that number is taken for IPv4).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

pub use crate::addrsel::PathCandidate;

/// RFC 8305 recommended Connection Attempt Delay.
pub const DEFAULT_STAGGER: Duration = Duration::from_millis(250);
/// RFC 8305 minimum Connection Attempt Delay.
pub const MIN_STAGGER: Duration = Duration::from_millis(10);
/// Default bound on a single connection attempt.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveParams {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub idle: Duration,
    /// Interval between probes (`TCP_KEEPINTVL`).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub retries: u32,
}

/// Socket options applied to every attempt (and usable on any stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOptions {
    /// `TCP_NODELAY` (the caller decides; default off).
    pub nodelay: bool,
    /// `TCP_USER_TIMEOUT`: how long transmitted data may stay unacknowledged
    /// before the kernel kills the connection (fast dead-path detection).
    pub user_timeout: Option<Duration>,
    /// `SO_KEEPALIVE` with these parameters.
    pub keepalive: Option<KeepaliveParams>,
}

/// Apply `opts` to a socket.
pub fn apply_socket_options(sock: &Socket, opts: &SocketOptions) -> io::Result<()> {
    sock.set_tcp_nodelay(opts.nodelay)?;
    if let Some(t) = opts.user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    if let Some(k) = opts.keepalive {
        let ka = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.retries);
        sock.set_tcp_keepalive(&ka)?;
        sock.set_keepalive(true)?;
    }
    Ok(())
}

/// Makes the next close of `sock` abortive (`SO_LINGER` 0: the kernel sends
/// a TCP RST and discards unsent bytes). Used on transports declared dead:
/// a FIN queues behind unacknowledged segments and never reaches a peer
/// whose acknowledgements are being lost, while an RST is sent at once
/// regardless of the congestion window, so the peer learns at its next read
/// that the path was abandoned. Nothing is lost by it: every unacknowledged
/// byte is still in the session's retained buffer.
pub fn abort_on_close<S: std::os::fd::AsFd>(sock: &S) {
    let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Apply `opts` to a connected std stream.
pub fn configure_stream(stream: &TcpStream, opts: &SocketOptions) -> io::Result<()> {
    apply_socket_options(&SockRef::from(stream), opts)
}

/// Options of a connection race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceConfig {
    /// Bound on each attempt.
    pub per_attempt_timeout: Duration,
    /// Delay between starting attempts (clamped to ≥ [`MIN_STAGGER`]).
    pub stagger: Duration,
    /// Options set on every attempt socket before `connect`.
    pub socket_options: SocketOptions,
}

impl Default for RaceConfig {
    fn default() -> Self {
        Self {
            per_attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            stagger: DEFAULT_STAGGER,
            socket_options: SocketOptions::default(),
        }
    }
}

/// Why one candidate failed.
#[derive(Debug)]
pub struct AttemptFailure {
    /// The pair.
    pub candidate: PathCandidate,
    /// The error (`TimedOut` when the per-attempt timeout expired).
    pub error: io::Error,
}

/// A won race.
#[derive(Debug)]
pub struct Connected<S> {
    /// The connected stream (blocking mode for std streams).
    pub stream: S,
    /// The pair that won.
    pub path: PathCandidate,
    /// Attempts that failed before the winner was found (attempts still in
    /// flight when the winner connected are not listed: they were only
    /// slower, not failed).
    pub failures: Vec<AttemptFailure>,
}

/// Errors of [`connect_pairs`] and friends.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The candidate list was empty.
    #[error("no path candidates to connect to")]
    NoCandidates,
    /// Every candidate failed.
    #[error("all {} connection attempts failed{}", .0.len(), last_error_text(.0))]
    AllFailed(Vec<AttemptFailure>),
}

fn last_error_text(f: &[AttemptFailure]) -> String {
    f.last()
        .map(|a| {
            format!(
                " (last: {} -> {}: {})",
                fmt_src(&a.candidate),
                a.candidate.dst,
                a.error
            )
        })
        .unwrap_or_default()
}

fn fmt_src(c: &PathCandidate) -> String {
    c.src.map_or_else(|| "*".to_string(), |s| s.to_string())
}

impl ConnectError {
    /// errno for C callers: `EDESTADDRREQ` for no candidates; otherwise the
    /// errno of the most informative failure: `ECONNREFUSED` if any attempt
    /// was refused, else the last attempt's OS error (`ETIMEDOUT` for
    /// timeouts), else `EHOSTUNREACH`.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NoCandidates => libc::EDESTADDRREQ,
            Self::AllFailed(f) => {
                if f.iter()
                    .any(|a| a.error.kind() == io::ErrorKind::ConnectionRefused)
                {
                    return libc::ECONNREFUSED;
                }
                f.last()
                    .map(|a| {
                        a.error.raw_os_error().unwrap_or(match a.error.kind() {
                            io::ErrorKind::TimedOut => libc::ETIMEDOUT,
                            _ => libc::EHOSTUNREACH,
                        })
                    })
                    .unwrap_or(libc::EHOSTUNREACH)
            }
        }
    }

    /// The failed attempts (empty for `NoCandidates`).
    pub fn failures(&self) -> &[AttemptFailure] {
        match self {
            Self::NoCandidates => &[],
            Self::AllFailed(f) => f,
        }
    }
}

/// Create, configure and bind the socket for one pair (non-blocking).
fn attempt_socket(c: &PathCandidate, opts: &SocketOptions) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(c.dst),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    apply_socket_options(&sock, opts)?;
    if let Some(b) = c.bind_addr() {
        if b.is_ipv4() != c.dst.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "source and destination families differ",
            ));
        }
        // Choose the port at connect time, like an unbound socket: bind with
        // port 0 would reserve an ephemeral port that no other connection
        // may share (and skip ports in TIME_WAIT), exhausting the range
        // under many short connections.
        if b.port() == 0 {
            let _ = nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            );
        }
        sock.bind(&b.into())?;
    }
    Ok(sock)
}

enum Started {
    /// Connected; this many bytes of the first message were written.
    Connected(Socket, usize),
    Pending(Socket),
}

fn start_attempt(c: &PathCandidate, opts: &SocketOptions, first: &[u8]) -> io::Result<Started> {
    let sock = attempt_socket(c, opts)?;
    match sock.connect(&c.dst.into()) {
        Ok(()) => match early_write(&sock, first)? {
            Some(n) => Ok(Started::Connected(sock, n)),
            None => Ok(Started::Connected(sock, 0)),
        },
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            // Where the handshake completes within connect(2) (loopback,
            // local links), the first message can go out at once: a write
            // that succeeds proves the connection established and saves the
            // poll and SO_ERROR calls; one that finds the socket still
            // connecting (EAGAIN) changes nothing, and an error (refused)
            // fails the attempt as the poll would have.
            match early_write(&sock, first)? {
                Some(n) => Ok(Started::Connected(sock, n)),
                None => Ok(Started::Pending(sock)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Writes `first` on a socket that may still be connecting: `Some(bytes
/// written)` when established, `None` while connecting (or nothing to
/// write), an error when the attempt failed.
fn early_write(sock: &Socket, first: &[u8]) -> io::Result<Option<usize>> {
    if first.is_empty() {
        return Ok(None);
    }
    loop {
        match sock.send_with_flags(first, libc::MSG_NOSIGNAL) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn finish_socket(sock: Socket) -> TcpStream {
    sock.into()
}

struct InFlight {
    idx: usize,
    sock: Socket,
    deadline: Instant,
}

fn clamp_stagger(s: Duration) -> Duration {
    s.max(MIN_STAGGER)
}

fn poll_timeout(until: Instant, now: Instant) -> PollTimeout {
    let d = until.saturating_duration_since(now);
    // Round up to whole milliseconds so we do not spin before the deadline.
    let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
    PollTimeout::try_from(i64::try_from(ms).unwrap_or(i64::from(i32::MAX)))
        .unwrap_or(PollTimeout::MAX)
}

/// Race `candidates` (blocking). Returns the winning stream (blocking mode)
/// and the pair that won. See the module docs.
pub fn connect_pairs(
    candidates: &[PathCandidate],
    per_attempt_timeout: Duration,
    stagger: Duration,
) -> Result<(TcpStream, PathCandidate), ConnectError> {
    let cfg = RaceConfig {
        per_attempt_timeout,
        stagger,
        socket_options: SocketOptions::default(),
    };
    connect_pairs_with(candidates, &cfg).map(|c| (c.stream, c.path))
}

/// Race `candidates` (blocking) with full configuration and failure report.
/// The winning stream is in blocking mode.
pub fn connect_pairs_with(
    candidates: &[PathCandidate],
    cfg: &RaceConfig,
) -> Result<Connected<TcpStream>, ConnectError> {
    let won = connect_pairs_nonblocking(candidates, cfg)?;
    if let Err(error) = won.stream.set_nonblocking(false) {
        let mut failures = won.failures;
        failures.push(AttemptFailure {
            candidate: won.path,
            error,
        });
        return Err(ConnectError::AllFailed(failures));
    }
    Ok(won)
}

/// [`connect_pairs_with`] that leaves the winning stream non-blocking (what
/// the drivers want; saves two `fcntl`s per connection).
pub(crate) fn connect_pairs_nonblocking(
    candidates: &[PathCandidate],
    cfg: &RaceConfig,
) -> Result<Connected<TcpStream>, ConnectError> {
    connect_pairs_first(candidates, cfg, &[]).map(|(c, _)| c)
}

/// [`connect_pairs_nonblocking`] that also tries to write `first` (the
/// session's first message) on each attempt as soon as `connect(2)` returns
/// (see [`start_attempt`]). Returns how many bytes of it the winner wrote
/// (0 when the winner connected later, through `poll`).
pub(crate) fn connect_pairs_first(
    candidates: &[PathCandidate],
    cfg: &RaceConfig,
    first: &[u8],
) -> Result<(Connected<TcpStream>, usize), ConnectError> {
    if candidates.is_empty() {
        return Err(ConnectError::NoCandidates);
    }
    let stagger = clamp_stagger(cfg.stagger);
    let mut failures: Vec<AttemptFailure> = Vec::new();
    let mut inflight: Vec<InFlight> = Vec::new();
    let mut next = 0usize;
    let mut next_start = Instant::now();
    let fail = |failures: &mut Vec<AttemptFailure>, idx: usize, error: io::Error| {
        if let Some(c) = candidates.get(idx) {
            tracing::debug!(src = %fmt_src(c), dst = %c.dst, %error, "connection attempt failed");
            failures.push(AttemptFailure {
                candidate: c.clone(),
                error,
            });
        }
    };
    loop {
        let now = Instant::now();
        if let Some(c) = candidates.get(next)
            && (inflight.is_empty() || now >= next_start)
        {
            let idx = next;
            next += 1;
            match start_attempt(c, &cfg.socket_options, first) {
                Ok(Started::Connected(sock, written)) => {
                    return Ok((
                        Connected {
                            stream: finish_socket(sock),
                            path: c.clone(),
                            failures,
                        },
                        written,
                    ));
                }
                Ok(Started::Pending(sock)) => {
                    inflight.push(InFlight {
                        idx,
                        sock,
                        deadline: crate::driver::deadline_after(now, cfg.per_attempt_timeout),
                    });
                    next_start = crate::driver::deadline_after(now, stagger);
                }
                Err(e) => fail(&mut failures, idx, e),
            }
            continue;
        }
        if inflight.is_empty() {
            return Err(ConnectError::AllFailed(failures));
        }
        // Sleep until an attempt completes, one expires, or the next is due.
        let mut wake = inflight.iter().map(|f| f.deadline).min().unwrap_or(now);
        if next < candidates.len() {
            wake = wake.min(next_start);
        }
        let ready: Vec<PollFlags> = {
            let mut fds: Vec<PollFd<'_>> = inflight
                .iter()
                .map(|f| PollFd::new(f.sock.as_fd(), PollFlags::POLLOUT))
                .collect();
            match poll(&mut fds, poll_timeout(wake, now)) {
                Ok(_) => fds
                    .iter()
                    .map(|p| p.revents().unwrap_or(PollFlags::empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => vec![PollFlags::empty(); fds.len()],
                Err(e) => {
                    // poll itself failed: give up on everything in flight.
                    let err = io::Error::from(e);
                    for f in inflight.drain(..) {
                        fail(
                            &mut failures,
                            f.idx,
                            io::Error::new(err.kind(), err.to_string()),
                        );
                    }
                    continue;
                }
            }
        };
        let now = Instant::now();
        let mut still = Vec::with_capacity(inflight.len());
        let mut winner: Option<(usize, TcpStream)> = None;
        let mut failed_now = false;
        for (f, rev) in inflight.drain(..).zip(ready) {
            if winner.is_some() {
                continue; // dropped = closed
            }
            if rev.is_empty() {
                if now >= f.deadline {
                    fail(
                        &mut failures,
                        f.idx,
                        io::Error::new(io::ErrorKind::TimedOut, "connection attempt timed out"),
                    );
                    failed_now = true;
                } else {
                    still.push(f);
                }
                continue;
            }
            // Writable without error or hang-up: established (no need to
            // ask for the peer address).
            let clean = rev == PollFlags::POLLOUT;
            let outcome = match f.sock.take_error() {
                Ok(Some(e)) => Err(e),
                Err(e) => Err(e),
                Ok(None) if clean => Ok(finish_socket(f.sock)),
                Ok(None) => match f.sock.peer_addr() {
                    Ok(_) => Ok(finish_socket(f.sock)),
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Ok(stream) => winner = Some((f.idx, stream)),
                Err(e) => {
                    fail(&mut failures, f.idx, e);
                    failed_now = true;
                }
            }
        }
        if let Some((idx, stream)) = winner {
            drop(still);
            let path = candidates
                .get(idx)
                .cloned()
                .ok_or(ConnectError::NoCandidates)?;
            return Ok((
                Connected {
                    stream,
                    path,
                    failures,
                },
                0,
            ));
        }
        inflight = still;
        if failed_now {
            // RFC 8305: start the next attempt as soon as one fails.
            next_start = now;
        }
    }
}

async fn async_attempt(
    c: PathCandidate,
    opts: SocketOptions,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let sock = attempt_socket(&c, &opts)?;
    let sock = tokio::net::TcpSocket::from_std_stream(sock.into());
    match tokio::time::timeout(timeout, sock.connect(c.dst)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection attempt timed out",
        )),
    }
}

/// Race `candidates` on the current Tokio runtime.
pub async fn connect_pairs_async(
    candidates: &[PathCandidate],
    per_attempt_timeout: Duration,
    stagger: Duration,
) -> Result<(tokio::net::TcpStream, PathCandidate), ConnectError> {
    let cfg = RaceConfig {
        per_attempt_timeout,
        stagger,
        socket_options: SocketOptions::default(),
    };
    connect_pairs_async_with(candidates, &cfg)
        .await
        .map(|c| (c.stream, c.path))
}

/// Race `candidates` on the current Tokio runtime, with full configuration.
/// Attempts run as tasks of a `JoinSet`; losers are aborted (closed) when a
/// winner is found or when this future is dropped.
pub async fn connect_pairs_async_with(
    candidates: &[PathCandidate],
    cfg: &RaceConfig,
) -> Result<Connected<tokio::net::TcpStream>, ConnectError> {
    use tokio::time::Instant as TInstant;
    if candidates.is_empty() {
        return Err(ConnectError::NoCandidates);
    }
    let stagger = clamp_stagger(cfg.stagger);
    let mut set: tokio::task::JoinSet<(usize, io::Result<tokio::net::TcpStream>)> =
        tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    let mut next = 0usize;
    let mut next_start = TInstant::now();
    loop {
        let now = TInstant::now();
        if let Some(c) = candidates.get(next)
            && (set.is_empty() || now >= next_start)
        {
            let idx = next;
            next += 1;
            let (c, opts, t) = (c.clone(), cfg.socket_options, cfg.per_attempt_timeout);
            set.spawn(async move { (idx, async_attempt(c, opts, t).await) });
            next_start = TInstant::from_std(crate::driver::deadline_after(now.into_std(), stagger));
            continue;
        }
        if set.is_empty() {
            return Err(ConnectError::AllFailed(failures));
        }
        let more = next < candidates.len();
        tokio::select! {
            joined = set.join_next() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok((idx, Ok(stream))) => {
                        set.abort_all();
                        let path = candidates.get(idx).cloned().ok_or(ConnectError::NoCandidates)?;
                        return Ok(Connected { stream, path, failures });
                    }
                    Ok((idx, Err(error))) => {
                        if let Some(c) = candidates.get(idx) {
                            tracing::debug!(src = %fmt_src(c), dst = %c.dst, %error, "connection attempt failed");
                            failures.push(AttemptFailure { candidate: c.clone(), error });
                        }
                        next_start = TInstant::now();
                    }
                    Err(join_err) => {
                        // A task panicked or was cancelled: we cannot tell
                        // which candidate; record it against no pair.
                        tracing::warn!(error = %join_err, "connection attempt task ended abnormally");
                        next_start = TInstant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(next_start), if more => {}
        }
    }
}

// ---------------------------------------------------------------------------
// PathSet
// ---------------------------------------------------------------------------

/// Which pairs [`PathSet::mark_failed`] moves to the back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailScope {
    /// Only the failed pair.
    Pair,
    /// Every pair with the same destination address (the peer address is
    /// unreachable).
    Destination,
    /// Every pair with the same source address (the local address or its
    /// link is gone).
    Source,
    /// Pairs sharing the destination or the source.
    DestinationOrSource,
}

#[derive(Debug, Clone)]
struct PathEntry {
    cand: PathCandidate,
    failures: u32,
}

/// The ordered candidate list kept by a connection for reconnects.
///
/// Order = preference. [`Self::mark_failed`] moves pairs to the back
/// (keeping relative order; the explicitly failed pair goes last), so
/// iterating from the front always tries untried or longest-ago-failed pairs
/// first. Destinations compare by IP address (port ignored) for
/// [`FailScope::Destination`].
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    entries: Vec<PathEntry>,
}

impl PathSet {
    /// A set in the given order; duplicates are dropped.
    pub fn new(candidates: impl IntoIterator<Item = PathCandidate>) -> Self {
        let mut seen = HashSet::new();
        let entries = candidates
            .into_iter()
            .filter(|c| seen.insert(c.clone()))
            .map(|cand| PathEntry { cand, failures: 0 })
            .collect();
        Self { entries }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pairs in the current order (the order for the next reconnect).
    pub fn iter(&self) -> impl Iterator<Item = &PathCandidate> {
        self.entries.iter().map(|e| &e.cand)
    }

    /// The current order as a vector (pass to [`connect_pairs`]).
    pub fn to_vec(&self) -> Vec<PathCandidate> {
        self.iter().cloned().collect()
    }

    /// Pairs to try for a reconnect: every pair in order, with `current`
    /// (the pair that just broke, if any) moved to the end.
    pub fn reconnect_order(&self, current: Option<&PathCandidate>) -> Vec<PathCandidate> {
        let (mut rest, tail): (Vec<_>, Vec<_>) =
            self.iter().cloned().partition(|c| Some(c) != current);
        rest.extend(tail);
        rest
    }

    /// How many times `c` was marked failed (0 if unknown).
    pub fn failures(&self, c: &PathCandidate) -> u32 {
        self.entries
            .iter()
            .find(|e| &e.cand == c)
            .map_or(0, |e| e.failures)
    }

    /// Mark `failed` as failed: it (and, per `scope`, the pairs sharing its
    /// destination and/or source) moves to the back, failure counters of the
    /// moved pairs are incremented. Returns how many pairs moved.
    pub fn mark_failed(&mut self, failed: &PathCandidate, scope: FailScope) -> usize {
        let shares = |c: &PathCandidate| -> bool {
            let dst = c.dst.ip() == failed.dst.ip();
            let src = c.src.is_some() && c.src == failed.src;
            match scope {
                FailScope::Pair => false,
                FailScope::Destination => dst,
                FailScope::Source => src,
                FailScope::DestinationOrSource => dst || src,
            }
        };
        let mut keep = Vec::with_capacity(self.entries.len());
        let mut moved = Vec::new();
        let mut itself = None;
        for mut e in self.entries.drain(..) {
            if &e.cand == failed {
                e.failures = e.failures.saturating_add(1);
                itself = Some(e);
            } else if shares(&e.cand) {
                e.failures = e.failures.saturating_add(1);
                moved.push(e);
            } else {
                keep.push(e);
            }
        }
        let n = moved.len() + usize::from(itself.is_some());
        keep.extend(moved);
        keep.extend(itself);
        self.entries = keep;
        n
    }

    /// Record that `c` works: its failure counter is reset and it moves to
    /// the front.
    pub fn mark_succeeded(&mut self, c: &PathCandidate) {
        if let Some(pos) = self.entries.iter().position(|e| &e.cand == c) {
            let mut e = self.entries.remove(pos);
            e.failures = 0;
            self.entries.insert(0, e);
        }
    }

    /// Replace the candidates after a new resolution / address change:
    /// pairs in `fresh` keep their failure counters; pairs that never failed
    /// come first in `fresh` order, then previously failed pairs ordered by
    /// fewer failures first (ties in `fresh` order). Pairs absent from
    /// `fresh` are dropped.
    pub fn refresh(&mut self, fresh: impl IntoIterator<Item = PathCandidate>) {
        let old = std::mem::take(&mut self.entries);
        let mut seen = HashSet::new();
        let mut entries: Vec<PathEntry> = fresh
            .into_iter()
            .filter(|c| seen.insert(c.clone()))
            .map(|cand| {
                let failures = old
                    .iter()
                    .find(|e| e.cand == cand)
                    .map_or(0, |e| e.failures);
                PathEntry { cand, failures }
            })
            .collect();
        entries.sort_by_key(|e| e.failures);
        self.entries = entries;
    }
}

// ---------------------------------------------------------------------------
// Dual-stack listening
// ---------------------------------------------------------------------------

/// Listener accepting both IPv6 and IPv4 (see module docs for the design).
/// The sockets are in non-blocking mode; [`DualListener::accept`] blocks by
/// polling both.
#[derive(Debug)]
pub struct DualListener {
    v6: Option<TcpListener>,
    v4: Option<TcpListener>,
    port: u16,
}

fn family_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Listen on `[::]:port` (V6ONLY) and `0.0.0.0:port` with a 1024 backlog.
pub fn listen_dual(port: u16) -> io::Result<DualListener> {
    listen_dual_with_backlog(port, 1024)
}

/// [`listen_dual`] with an explicit backlog.
pub fn listen_dual_with_backlog(port: u16, backlog: i32) -> io::Result<DualListener> {
    const TRIES: usize = 8;
    let mut last_err = None;
    for _ in 0..TRIES {
        let v6 = match bind_listener((Ipv6Addr::UNSPECIFIED, port).into(), backlog) {
            Ok(l) => Some(l),
            Err(e) if family_unavailable(&e) => None,
            Err(e) => return Err(e),
        };
        let chosen = match &v6 {
            Some(l) => l.local_addr()?.port(),
            None => port,
        };
        match bind_listener((Ipv4Addr::UNSPECIFIED, chosen).into(), backlog) {
            Ok(v4) => {
                let port = v4.local_addr()?.port();
                return Ok(DualListener {
                    v6,
                    v4: Some(v4),
                    port,
                });
            }
            Err(e) if family_unavailable(&e) => {
                return match v6 {
                    Some(v6) => Ok(DualListener {
                        v6: Some(v6),
                        v4: None,
                        port: chosen,
                    }),
                    None => Err(e),
                };
            }
            // The kernel-chosen IPv6 port is taken for IPv4: try another.
            Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse && v6.is_some() => {
                last_err = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

impl DualListener {
    /// The port both sockets listen on.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// The IPv6 listener, if IPv6 is available.
    pub fn v6(&self) -> Option<&TcpListener> {
        self.v6.as_ref()
    }

    /// The IPv4 listener, if IPv4 is available.
    pub fn v4(&self) -> Option<&TcpListener> {
        self.v4.as_ref()
    }

    /// Both listeners (for an external event loop).
    pub fn listeners(&self) -> impl Iterator<Item = &TcpListener> {
        self.v6.iter().chain(self.v4.iter())
    }

    /// Wait (up to `timeout`, `None` = forever) for a connection on either
    /// family. The returned stream is in blocking mode. `Ok(None)` on
    /// timeout.
    pub fn accept_timeout(
        &self,
        timeout: Option<Duration>,
    ) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        let deadline = timeout.map(|t| crate::driver::deadline_after(Instant::now(), t));
        loop {
            for l in self.listeners() {
                match l.accept() {
                    Ok((s, peer)) => {
                        s.set_nonblocking(false)?;
                        return Ok(Some((s, canonical_peer(peer))));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    Err(e) => return Err(e),
                }
            }
            let now = Instant::now();
            let pt = match deadline {
                Some(d) if now >= d => return Ok(None),
                Some(d) => poll_timeout(d, now),
                None => PollTimeout::NONE,
            };
            let mut fds: Vec<PollFd<'_>> = self
                .listeners()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, pt) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Block until a connection arrives on either family.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            if let Some(r) = self.accept_timeout(None)? {
                return Ok(r);
            }
        }
    }

    /// Convert to Tokio listeners (must be called inside a runtime).
    pub fn into_tokio(self) -> io::Result<AsyncDualListener> {
        let v6 = self.v6.map(tokio::net::TcpListener::from_std).transpose()?;
        let v4 = self.v4.map(tokio::net::TcpListener::from_std).transpose()?;
        Ok(AsyncDualListener {
            v6,
            v4,
            port: self.port,
        })
    }
}

fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => peer,
        },
        SocketAddr::V4(_) => peer,
    }
}

/// Tokio flavour of [`DualListener`].
#[derive(Debug)]
pub struct AsyncDualListener {
    v6: Option<tokio::net::TcpListener>,
    v4: Option<tokio::net::TcpListener>,
    port: u16,
}

impl AsyncDualListener {
    /// Bind (see [`listen_dual`]) and register with the current runtime.
    pub fn bind(port: u16) -> io::Result<Self> {
        listen_dual(port)?.into_tokio()
    }

    /// The port.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Accept a connection on either family.
    pub async fn accept(&self) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
        let r = match (&self.v6, &self.v4) {
            (Some(a), Some(b)) => tokio::select! {
                r = a.accept() => r,
                r = b.accept() => r,
            },
            (Some(a), None) | (None, Some(a)) => a.accept().await,
            (None, None) => Err(io::Error::from(io::ErrorKind::NotConnected)),
        };
        r.map(|(s, p)| (s, canonical_peer(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first message is written as soon as connect(2) returns where the
    /// handshake completes inside it (loopback): the race reports how much,
    /// and the server reads exactly those bytes first. A refused attempt
    /// still fails.
    #[test]
    fn first_message_goes_out_with_the_connect_on_loopback() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let cand = PathCandidate {
            src: None,
            dst,
            ifindex: None,
        };
        let cfg = RaceConfig {
            per_attempt_timeout: Duration::from_secs(2),
            stagger: Duration::from_millis(20),
            socket_options: SocketOptions::default(),
        };
        let mut early = 0;
        for i in 0..20u8 {
            let first = [i; 40];
            let (won, written) =
                connect_pairs_first(std::slice::from_ref(&cand), &cfg, &first).unwrap();
            assert!(written == 0 || written == first.len(), "{written}");
            let (mut s, _) = l.accept().unwrap();
            if written > 0 {
                early += 1;
                let mut got = [0u8; 40];
                s.read_exact(&mut got).unwrap();
                assert_eq!(got, first);
            }
            drop(won);
        }
        // Scheduling may defer a handshake now and then, not every time.
        assert!(early > 0, "no early write in 20 loopback connects");
        drop(l);
        let refused = connect_pairs_first(&[cand], &cfg, b"x");
        assert!(refused.is_err());
    }

    fn c(src: &str, dst: &str) -> PathCandidate {
        PathCandidate {
            src: Some(src.parse().unwrap()),
            dst: dst.parse().unwrap(),
            ifindex: None,
        }
    }

    fn names(p: &PathSet) -> Vec<String> {
        p.iter()
            .map(|c| format!("{}>{}", c.src.unwrap(), c.dst.ip()))
            .collect()
    }

    fn sample() -> PathSet {
        PathSet::new(vec![
            c("10.0.1.1", "10.0.9.1:80"),
            c("10.0.2.1", "10.0.9.1:80"),
            c("10.0.1.1", "10.0.9.2:80"),
            c("10.0.2.1", "10.0.9.2:80"),
            c("10.0.1.1", "10.0.9.1:80"),
        ])
    }

    #[test]
    fn pathset_dedups_and_keeps_order() {
        let p = sample();
        assert_eq!(p.len(), 4);
        assert_eq!(
            names(&p),
            vec![
                "10.0.1.1>10.0.9.1",
                "10.0.2.1>10.0.9.1",
                "10.0.1.1>10.0.9.2",
                "10.0.2.1>10.0.9.2"
            ]
        );
    }

    #[test]
    fn mark_failed_pair_moves_to_back() {
        let mut p = sample();
        let first = p.to_vec()[0].clone();
        assert_eq!(p.mark_failed(&first, FailScope::Pair), 1);
        assert_eq!(names(&p)[3], "10.0.1.1>10.0.9.1");
        assert_eq!(names(&p)[0], "10.0.2.1>10.0.9.1");
        assert_eq!(p.failures(&first), 1);
        // Failing it again keeps it last and counts.
        p.mark_failed(&first, FailScope::Pair);
        assert_eq!(p.failures(&first), 2);
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn mark_failed_destination_and_source_scopes() {
        let mut p = sample();
        let first = p.to_vec()[0].clone();
        assert_eq!(p.mark_failed(&first, FailScope::Destination), 2);
        assert_eq!(
            names(&p),
            vec![
                "10.0.1.1>10.0.9.2",
                "10.0.2.1>10.0.9.2",
                "10.0.2.1>10.0.9.1",
                "10.0.1.1>10.0.9.1"
            ]
        );
        let mut p = sample();
        assert_eq!(p.mark_failed(&first, FailScope::Source), 2);
        assert_eq!(
            names(&p),
            vec![
                "10.0.2.1>10.0.9.1",
                "10.0.2.1>10.0.9.2",
                "10.0.1.1>10.0.9.2",
                "10.0.1.1>10.0.9.1"
            ]
        );
        let mut p = sample();
        assert_eq!(p.mark_failed(&first, FailScope::DestinationOrSource), 3);
        assert_eq!(names(&p)[0], "10.0.2.1>10.0.9.2");
        // Unknown pair: nothing moves.
        assert_eq!(
            p.mark_failed(&c("1.1.1.1", "2.2.2.2:1"), FailScope::Pair),
            0
        );
    }

    #[test]
    fn reconnect_order_succeeded_and_refresh() {
        let mut p = sample();
        let v = p.to_vec();
        let order = p.reconnect_order(Some(&v[1]));
        assert_eq!(order.len(), 4);
        assert_eq!(order[3], v[1]);
        assert_eq!(order[0], v[0]);
        p.mark_failed(&v[0], FailScope::Pair);
        p.mark_succeeded(&v[3]);
        assert_eq!(p.to_vec()[0], v[3]);
        assert_eq!(p.failures(&v[0]), 1);
        // Refresh: v[0] (failed once) goes after the never-failed ones, v[2]
        // disappears, a new pair appears.
        let newc = c("10.0.3.1", "10.0.9.3:80");
        p.refresh(vec![v[0].clone(), v[1].clone(), newc.clone(), v[3].clone()]);
        assert_eq!(
            p.to_vec(),
            vec![v[1].clone(), newc, v[3].clone(), v[0].clone()]
        );
        assert_eq!(p.failures(&v[0]), 1);
    }

    #[test]
    fn options_apply() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        let o = SocketOptions {
            nodelay: true,
            user_timeout: Some(Duration::from_millis(1500)),
            keepalive: Some(KeepaliveParams {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                retries: 3,
            }),
        };
        apply_socket_options(&s, &o).unwrap();
        assert!(s.tcp_nodelay().unwrap());
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(5));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(ConnectError::NoCandidates.errno(), libc::EDESTADDRREQ);
        let f = vec![
            AttemptFailure {
                candidate: c("127.0.0.1", "127.0.0.1:1"),
                error: io::Error::new(io::ErrorKind::TimedOut, "t"),
            },
            AttemptFailure {
                candidate: c("127.0.0.1", "127.0.0.1:2"),
                error: io::Error::from_raw_os_error(libc::ENETUNREACH),
            },
        ];
        assert_eq!(ConnectError::AllFailed(f).errno(), libc::ENETUNREACH);
        let f = vec![AttemptFailure {
            candidate: c("127.0.0.1", "127.0.0.1:1"),
            error: io::Error::new(io::ErrorKind::TimedOut, "t"),
        }];
        assert_eq!(ConnectError::AllFailed(f).errno(), libc::ETIMEDOUT);
    }

    #[test]
    fn empty_candidates() {
        assert!(matches!(
            connect_pairs(&[], Duration::from_secs(1), DEFAULT_STAGGER),
            Err(ConnectError::NoCandidates)
        ));
    }
}
