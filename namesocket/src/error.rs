//! API-level errors of the namesocket drivers and their errno mapping.

use std::io;

use crate::connect::ConnectError;
use crate::engine::{ConfigError, SessionError};
use crate::resolve::ResolveError;
use crate::wire::v2::RejectReason;
use crate::wire::{VERSION_1, WireError};

/// Errors returned by [`NameStream`](crate::NameStream),
/// [`NameListener`](crate::NameListener), their tokio twins and the thesis
/// functions in [`api`](crate::api).
///
/// Every variant maps to one errno value ([`Error::errno`]); the C ABI returns
/// `-1` and sets `errno` to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name or service could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No address pair of the peer could be connected.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The session failed (bad peer, rejected, authentication failure, …).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The peer speaks the thesis's version 1 protocol, which cannot resume
    /// without loss; version 2 is required. A client reports it when the
    /// server answers NEW with a version 1 packet (a session failing with
    /// [`WireError::UnsupportedVersion`]`(1)` is reported as this error, not
    /// as [`Error::Session`]). A thesis client gets no error value from our
    /// listener: its connection is reset (see the listener docs).
    #[error("peer speaks namesocket version 1, which is not supported (no lossless resume)")]
    Version1Peer,
    /// No transport could be re-established within the resume window.
    #[error("the path failed and the session could not be resumed within the resume window")]
    ResumeWindowExpired,
    /// The session is closed (locally or by the peer's CLOSE).
    #[error("the session is closed")]
    Closed,
    /// Writing after `shutdown(Write)` / `nshutdown(SHUT_WR)`.
    #[error("the session is shut down for writing")]
    Shutdown,
    /// A non-blocking operation could not proceed.
    #[error("operation would block")]
    WouldBlock,
    /// A configured timeout expired.
    #[error("operation timed out")]
    TimedOut,
    /// An argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The operation does not apply to this kind of namesocket.
    #[error("operation not supported on this namesocket: {0}")]
    NotSupported(&'static str),
    /// The namesocket descriptor is not open.
    #[error("bad namesocket descriptor")]
    BadDescriptor,
    /// Invalid session configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An operating-system error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Result type of the namesocket API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno value this error maps to (stable; documented in the crate
    /// docs' error table).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Resolve(e) => e.os_errno(),
            Error::Connect(e) => e.errno(),
            Error::Session(e) => session_errno(e),
            Error::Version1Peer => libc::EPROTONOSUPPORT,
            Error::ResumeWindowExpired => libc::ETIMEDOUT,
            Error::Closed => libc::EPIPE,
            Error::Shutdown => libc::EPIPE,
            Error::WouldBlock => libc::EAGAIN,
            Error::TimedOut => libc::ETIMEDOUT,
            Error::InvalidArgument(_) => libc::EINVAL,
            Error::NotSupported(_) => libc::EOPNOTSUPP,
            Error::BadDescriptor => libc::EBADF,
            Error::Config(_) => libc::EINVAL,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn session_errno(e: &SessionError) -> i32 {
    match e {
        SessionError::Wire(_) => libc::EPROTO,
        SessionError::Violation(_) => libc::EPROTO,
        SessionError::Rejected(RejectReason::UnknownSession) => libc::ECONNRESET,
        SessionError::Rejected(RejectReason::Expired) => libc::ETIMEDOUT,
        SessionError::Rejected(_) => libc::ECONNREFUSED,
        SessionError::BadResumeAck => libc::EACCES,
        SessionError::PeerError(_) => libc::ECONNRESET,
        SessionError::PeerParams(_) => libc::ECONNREFUSED,
        SessionError::InvalidState(_) => libc::EINVAL,
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            Error::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            Error::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e),
            other => {
                let errno = other.errno();
                io::Error::new(io::Error::from_raw_os_error(errno).kind(), other)
            }
        }
    }
}

/// A terminal session failure, kept so that every later call reports it.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Session(SessionError),
    ResumeWindowExpired,
    Closed,
    /// A client's NEW_ACK did not arrive by its handshake deadline.
    HandshakeTimedOut,
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Session(SessionError::Wire(WireError::UnsupportedVersion(VERSION_1))) => {
                Error::Version1Peer
            }
            Failure::Session(e) => Error::Session(e.clone()),
            Failure::ResumeWindowExpired => Error::ResumeWindowExpired,
            Failure::Closed => Error::Closed,
            Failure::HandshakeTimedOut => Error::TimedOut,
        }
    }
}
