//! The thesis's API (Hansen 1999, §4.2.1 and §5.1.1) over namesocket
//! descriptors: `nsocket`, `nlisten`, `naccept`, `nselect`, `nconnect`,
//! `nsend`, `nrecv`, `nclose`, `nshutdown`.
//!
//! Descriptors ("nsd") are small positive integers private to this library
//! (they are not file descriptors). Every function returns a typed
//! [`Error`]; [`Error::errno`] gives the errno value the C ABI reports
//! with a `-1` return:
//!
//! | situation | errno |
//! |---|---|
//! | unknown or closed nsd | `EBADF` |
//! | wrong kind of namesocket (e.g. `nsend` on a listener, `nconnect` twice) | `EINVAL` / `EISCONN` |
//! | unsupported flag bits | `EOPNOTSUPP` |
//! | non-blocking and not ready | `EAGAIN` |
//! | name not found | the resolver's errno (`ENOENT`…) |
//! | no address pair connects | `ECONNREFUSED` / `ETIMEDOUT` / `EHOSTUNREACH` |
//! | peer is not a namesocket peer | `EPROTO` |
//! | peer is a thesis (version 1) namesocket server | `EPROTONOSUPPORT` |
//! | session refused (REJECT, or session parameters out of range) | `ECONNREFUSED` |
//! | resume window expired | `ETIMEDOUT` |
//! | send after shutdown or close | `EPIPE` |
//!
//! Flags: `nsocket` takes [`NS_NONBLOCK`]; `nsend` accepts `MSG_DONTWAIT`
//! and `MSG_NOSIGNAL` (signals are never raised anyway); `nrecv` accepts
//! `MSG_DONTWAIT` and `MSG_WAITALL`. Other bits give `EOPNOTSUPP`.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::driver::{self, Options};
use crate::error::{Error, Result};
use crate::listener::NameListener;
use crate::stream::NameStream;

/// `nsocket` flag: the namesocket's operations never block.
pub const NS_NONBLOCK: i32 = libc::O_NONBLOCK;

enum Slot {
    Created {
        flags: i32,
        options: Box<Options>,
    },
    Listener(Arc<NameListener>),
    Stream(Arc<NameStream>),
    /// `nconnect` or `nlisten` is running on this descriptor; the token
    /// tells that run from a later one on the same number (the descriptor
    /// may be closed and reissued meanwhile).
    Connecting(u64),
}

struct Table {
    next: i32,
    slots: HashMap<i32, Slot>,
    /// Source of [`Slot::Connecting`] tokens.
    tokens: u64,
}

fn table() -> MutexGuard<'static, Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            Mutex::new(Table {
                next: 1,
                slots: HashMap::new(),
                tokens: 0,
            })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn insert(slot: Slot) -> i32 {
    let mut t = table();
    // Lowest free positive number, like file descriptors.
    let mut nsd = 1;
    while t.slots.contains_key(&nsd) {
        nsd += 1;
    }
    t.next = t.next.max(nsd + 1);
    t.slots.insert(nsd, slot);
    nsd
}

fn stream(nsd: i32) -> Result<Arc<NameStream>> {
    match table().slots.get(&nsd) {
        Some(Slot::Stream(s)) => Ok(Arc::clone(s)),
        Some(_) => Err(Error::InvalidArgument("namesocket is not connected")),
        None => Err(Error::BadDescriptor),
    }
}

/// Creates a namesocket with default options. `flags`: 0 or [`NS_NONBLOCK`].
pub fn nsocket(flags: i32) -> Result<i32> {
    nsocket_with(flags, Options::default())
}

/// [`nsocket`] with explicit options (heartbeat, resume window, resolver…).
pub fn nsocket_with(flags: i32, options: Options) -> Result<i32> {
    if flags & !NS_NONBLOCK != 0 {
        return Err(Error::NotSupported("unknown nsocket flags"));
    }
    options.session.validate()?;
    Ok(insert(Slot::Created {
        flags,
        options: Box::new(options),
    }))
}

/// Marks a new namesocket as connecting; returns its flags, options and
/// the token of this run.
fn take_created(nsd: i32) -> Result<(i32, Options, u64)> {
    let mut t = table();
    match t.slots.get(&nsd) {
        None => Err(Error::BadDescriptor),
        Some(Slot::Created { .. }) => {
            t.tokens += 1;
            let token = t.tokens;
            match t.slots.insert(nsd, Slot::Connecting(token)) {
                Some(Slot::Created { flags, options }) => Ok((flags, *options, token)),
                _ => Err(Error::BadDescriptor),
            }
        }
        Some(Slot::Connecting(_)) => {
            Err(Error::Io(std::io::Error::from_raw_os_error(libc::EALREADY)))
        }
        Some(_) => Err(Error::Io(std::io::Error::from_raw_os_error(libc::EISCONN))),
    }
}

/// Replaces the descriptor's slot with `slot` if it is still the one the
/// run with `token` marked. Otherwise (the descriptor was closed, and maybe
/// reissued, meanwhile) the slot is handed back: the caller drops it.
fn finish_connecting(nsd: i32, token: u64, slot: Slot) -> Result<(), Slot> {
    let mut t = table();
    if matches!(t.slots.get(&nsd), Some(Slot::Connecting(x)) if *x == token) {
        t.slots.insert(nsd, slot);
        Ok(())
    } else {
        Err(slot)
    }
}

/// Installs what a successful `nconnect`/`nlisten` created, or, if the
/// descriptor was closed meanwhile, closes it and reports `EBADF` (the
/// number may belong to a new namesocket by now, which is left alone).
fn install(nsd: i32, token: u64, slot: Slot) -> Result<()> {
    match finish_connecting(nsd, token, slot) {
        Ok(()) => Ok(()),
        Err(stale) => {
            // Dropped outside the table lock: closing a stream or a
            // listener takes locks of its own.
            drop(stale);
            Err(Error::BadDescriptor)
        }
    }
}

/// Puts a namesocket whose `nconnect`/`nlisten` failed back to its new
/// state, unless the descriptor was closed (and maybe reissued) meanwhile.
fn restore_created(nsd: i32, token: u64, flags: i32, options: Options) {
    let created = Slot::Created {
        flags,
        options: Box::new(options),
    };
    let _ = finish_connecting(nsd, token, created);
}

/// Turns a new namesocket into a server listening on `service` (port number
/// or /etc/services name) on the wildcard address of both families.
///
/// If the descriptor is closed while this runs, the new listener is closed
/// again and the call fails with `EBADF`.
pub fn nlisten(nsd: i32, service: &str, backlog: i32) -> Result<()> {
    let (flags, mut options, token) = take_created(nsd)?;
    if backlog > 0 {
        options.backlog = backlog;
    }
    match NameListener::bind_with(service, &options) {
        Ok(l) => {
            l.set_nonblocking(flags & NS_NONBLOCK != 0);
            install(nsd, token, Slot::Listener(Arc::new(l)))
        }
        Err(e) => {
            restore_created(nsd, token, flags, options);
            Err(e)
        }
    }
}

/// Accepts the next session on a listening namesocket; returns its nsd.
pub fn naccept(nsd: i32) -> Result<i32> {
    let l = match table().slots.get(&nsd) {
        Some(Slot::Listener(l)) => Arc::clone(l),
        Some(_) => return Err(Error::InvalidArgument("namesocket is not listening")),
        None => return Err(Error::BadDescriptor),
    };
    let s = l.accept()?;
    Ok(insert(Slot::Stream(Arc::new(s))))
}

/// Connects a new namesocket to `service` on the named `host`; blocks until
/// a TCP connection is up (every address pair is tried) and the session's
/// NEW is sent. The server's answer is processed by the next call: a refused
/// session makes the first `nrecv`/`nsend` fail (`ECONNREFUSED`; `EPROTO`
/// when the peer is not a namesocket peer).
///
/// If the descriptor is closed while this runs (another thread's `nclose`),
/// the new session is closed again and the call fails with `EBADF`; a
/// namesocket that reused the number meanwhile is left alone.
pub fn nconnect(nsd: i32, host: &str, service: &str) -> Result<()> {
    let (flags, options, token) = take_created(nsd)?;
    match NameStream::connect_with(host, service, &options) {
        Ok(s) => {
            s.set_nonblocking(flags & NS_NONBLOCK != 0);
            install(nsd, token, Slot::Stream(Arc::new(s)))
        }
        Err(e) => {
            restore_created(nsd, token, flags, options);
            Err(e)
        }
    }
}

/// Sends bytes; returns how many were accepted (all of them will reach the
/// peer, across path failures).
pub fn nsend(nsd: i32, buf: &[u8], flags: i32) -> Result<usize> {
    if flags & !(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) != 0 {
        return Err(Error::NotSupported("unsupported nsend flags"));
    }
    stream(nsd)?.send_flags(buf, flags & libc::MSG_DONTWAIT != 0)
}

/// Receives bytes; 0 means the peer closed its sending side.
pub fn nrecv(nsd: i32, buf: &mut [u8], flags: i32) -> Result<usize> {
    if flags & !(libc::MSG_DONTWAIT | libc::MSG_WAITALL) != 0 {
        return Err(Error::NotSupported("unsupported nrecv flags"));
    }
    let s = stream(nsd)?;
    let dontwait = flags & libc::MSG_DONTWAIT != 0;
    if flags & libc::MSG_WAITALL == 0 || dontwait {
        return s.recv_flags(buf, dontwait);
    }
    let mut got = 0;
    while got < buf.len() {
        let n = s.recv_flags(&mut buf[got..], false)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Closes a namesocket. A connected one is closed gracefully in the
/// background (written data is still delivered).
pub fn nclose(nsd: i32) -> Result<()> {
    match table().slots.remove(&nsd) {
        Some(_) => Ok(()),
        None => Err(Error::BadDescriptor),
    }
}

/// Shuts down one or both directions (`libc::SHUT_RD`, `SHUT_WR`,
/// `SHUT_RDWR`).
pub fn nshutdown(nsd: i32, how: i32) -> Result<()> {
    let how = match how {
        libc::SHUT_RD => std::net::Shutdown::Read,
        libc::SHUT_WR => std::net::Shutdown::Write,
        libc::SHUT_RDWR => std::net::Shutdown::Both,
        _ => {
            return Err(Error::InvalidArgument(
                "how must be SHUT_RD, SHUT_WR or SHUT_RDWR",
            ));
        }
    };
    stream(nsd)?.shutdown(how)
}

/// A set of namesocket descriptors for [`nselect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NsSet(BTreeSet<i32>);

impl NsSet {
    /// An empty set.
    pub fn new() -> Self {
        NsSet::default()
    }
    /// Adds `nsd` (`NS_SET`).
    pub fn insert(&mut self, nsd: i32) {
        self.0.insert(nsd);
    }
    /// Removes `nsd` (`NS_CLR`).
    pub fn remove(&mut self, nsd: i32) {
        self.0.remove(&nsd);
    }
    /// Whether `nsd` is in the set (`NS_ISSET`).
    pub fn contains(&self, nsd: i32) -> bool {
        self.0.contains(&nsd)
    }
    /// Empties the set (`NS_ZERO`).
    pub fn clear(&mut self) {
        self.0.clear();
    }
    /// The descriptors in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = i32> + '_ {
        self.0.iter().copied()
    }
    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<i32> for NsSet {
    fn from_iter<T: IntoIterator<Item = i32>>(iter: T) -> Self {
        NsSet(iter.into_iter().collect())
    }
}

enum Watched {
    Stream(Arc<NameStream>),
    Listener(Arc<NameListener>),
}

/// Waits until one of the namesockets is readable (data, EOF, or a pending
/// session on a listener), writable, or has an exceptional condition (the
/// session failed), or `timeout` passes (`None`: wait forever). On return
/// the sets hold only the ready descriptors; the result is their total.
pub fn nselect(
    readfds: Option<&mut NsSet>,
    writefds: Option<&mut NsSet>,
    exceptfds: Option<&mut NsSet>,
    timeout: Option<Duration>,
) -> Result<usize> {
    let deadline = timeout.map(|t| driver::deadline_after(Instant::now(), t));
    let mut empty_r = NsSet::new();
    let mut empty_w = NsSet::new();
    let mut empty_e = NsSet::new();
    let readfds = readfds.unwrap_or(&mut empty_r);
    let writefds = writefds.unwrap_or(&mut empty_w);
    let exceptfds = exceptfds.unwrap_or(&mut empty_e);
    let all: BTreeSet<i32> = readfds
        .iter()
        .chain(writefds.iter())
        .chain(exceptfds.iter())
        .collect();
    let mut watched: Vec<(i32, Watched)> = Vec::with_capacity(all.len());
    {
        let t = table();
        for nsd in &all {
            match t.slots.get(nsd) {
                Some(Slot::Stream(s)) => watched.push((*nsd, Watched::Stream(Arc::clone(s)))),
                Some(Slot::Listener(l)) => watched.push((*nsd, Watched::Listener(Arc::clone(l)))),
                Some(_) => {}
                None => return Err(Error::BadDescriptor),
            }
        }
    }
    loop {
        let mut r = NsSet::new();
        let mut w = NsSet::new();
        let mut x = NsSet::new();
        for (nsd, item) in &watched {
            match item {
                Watched::Stream(s) => {
                    if readfds.contains(*nsd) && s.poll_readable() {
                        r.insert(*nsd);
                    }
                    if writefds.contains(*nsd) && s.poll_writable() {
                        w.insert(*nsd);
                    }
                    if exceptfds.contains(*nsd) {
                        // The checks above processed the input already.
                        let failed = if readfds.contains(*nsd) || writefds.contains(*nsd) {
                            s.has_error()
                        } else {
                            s.poll_error()
                        };
                        if failed {
                            x.insert(*nsd);
                        }
                    }
                }
                Watched::Listener(l) => {
                    if readfds.contains(*nsd) && l.poll_acceptable() {
                        r.insert(*nsd);
                    }
                }
            }
        }
        let n = r.len() + w.len() + x.len();
        let now = Instant::now();
        if n > 0 || deadline.is_some_and(|d| d <= now) {
            *readfds = r;
            *writefds = w;
            *exceptfds = x;
            return Ok(n);
        }
        wait_any(&watched, writefds, deadline);
    }
}

/// Sleeps until any watched namesocket may have changed.
fn wait_any(watched: &[(i32, Watched)], writefds: &NsSet, deadline: Option<Instant>) {
    let mut streams = Vec::new();
    let mut next = deadline;
    let mut has_listener = false;
    for (nsd, item) in watched {
        match item {
            Watched::Stream(s) => {
                let st = s.conn.lock();
                let (t, d) = s.conn.poll_handles(&st);
                // Not writable before NEW_ACK, which arrives as input: the
                // transport's POLLOUT would only spin.
                let want_write = writefds.contains(*nsd) && !st.session.new_ack_pending();
                drop(st);
                if let Some(d) = d {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
                streams.push((s, t, want_write));
            }
            Watched::Listener(_) => has_listener = true,
        }
    }
    if has_listener {
        // Listeners signal through a condition variable: re-check often.
        let d = Instant::now() + Duration::from_millis(5);
        next = Some(next.map_or(d, |n| n.min(d)));
    }
    // One wake fd per thread, listed on every watched connection.
    let mut waker = None;
    for (s, _, _) in &streams {
        waker = s.conn.begin_wait();
    }
    if waker.is_none() && !streams.is_empty() {
        // No wake fd (eventfd creation failed): re-check often.
        let d = Instant::now() + Duration::from_millis(10);
        next = Some(next.map_or(d, |n| n.min(d)));
    }
    {
        let mut fds = Vec::with_capacity(streams.len() + 1);
        if let Some(w) = &waker {
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        for (_, t, want_w) in &streams {
            if let Some(t) = t {
                let mut f = PollFlags::POLLIN;
                if *want_w {
                    f |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(t.as_fd(), f));
            }
        }
        let _ = poll(&mut fds, driver::poll_timeout(next));
    }
    for (s, _, _) in &streams {
        s.conn.end_wait(waker.as_ref());
    }
    if let Some(w) = &waker {
        let _ = w.read();
    }
}

/// The stream behind a connected nsd (for Rust callers mixing the thesis API
/// with [`NameStream`] methods, e.g. to read its [`PathLog`](crate::PathLog)).
pub fn nstream(nsd: i32) -> Result<Arc<NameStream>> {
    stream(nsd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nclose` of a descriptor while `nconnect`/`nlisten` runs on it, and
    /// `nsocket` reissuing the number, leave the new owner's slot alone:
    /// the late result is closed and the late call fails with `EBADF`.
    #[test]
    fn late_connect_does_not_overwrite_a_reissued_descriptor() {
        let nsd = nsocket(0).unwrap();
        let (_, options, token) = take_created(nsd).unwrap();
        // Another thread closes the descriptor; nsocket reissues the number
        // (lowest free) and starts a connect of its own on it.
        nclose(nsd).unwrap();
        let again = nsocket(NS_NONBLOCK).unwrap();
        assert_eq!(again, nsd);
        let (_, _, token2) = take_created(again).unwrap();
        assert_ne!(token, token2);
        // The first connect finishes (a listener stands in for what it
        // created).
        let late = NameListener::bind_with("0", &options).unwrap();
        let port = late.local_port();
        let e = install(nsd, token, Slot::Listener(Arc::new(late))).unwrap_err();
        assert_eq!(e.errno(), libc::EBADF);
        assert!(matches!(
            table().slots.get(&nsd),
            Some(Slot::Connecting(t)) if *t == token2
        ));
        // A failed late run does not restore its old slot either.
        restore_created(nsd, token, 0, Options::default());
        assert!(matches!(
            table().slots.get(&nsd),
            Some(Slot::Connecting(t)) if *t == token2
        ));
        // The late listener was closed: its port refuses connections.
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(t0.elapsed() < Duration::from_secs(5), "late listener open");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The new owner's run completes normally.
        restore_created(nsd, token2, NS_NONBLOCK, Options::default());
        assert!(matches!(
            table().slots.get(&nsd),
            Some(Slot::Created { flags, .. }) if *flags == NS_NONBLOCK
        ));
        nclose(nsd).unwrap();
    }
}
