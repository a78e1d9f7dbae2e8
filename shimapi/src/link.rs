//! The process's connection to the daemon's control socket: opened
//! lazily, reopened once after an error.

use std::ffi::c_int;
use std::path::PathBuf;

use hipd_backend::control::{Client, ClientError, ErrorCode, Request, Response};

use crate::consts::{EINVALIDLOCATOR, ETOOMANYLOCATORS, EUNREACHABLELOCATOR, EUNVERIFIEDLOCATOR};

/// One persistent control connection.
#[derive(Debug)]
pub(crate) struct Link {
    path: PathBuf,
    client: Option<Client>,
    /// Incremented on every (re)connection; per-socket state the daemon
    /// kept for an older connection is gone.
    pub(crate) generation: u64,
}

impl Link {
    pub(crate) fn new(path: PathBuf) -> Link {
        Link {
            path,
            client: None,
            generation: 0,
        }
    }

    /// Sends a request; on an IO or framing error the connection is
    /// reopened and the request sent once more.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let mut retried = false;
        loop {
            let client = match self.client.as_mut() {
                Some(c) => c,
                None => {
                    let c = Client::connect(&self.path)?;
                    self.generation += 1;
                    self.client.insert(c)
                }
            };
            match client.call(req) {
                Err(e @ (ClientError::Io(_) | ClientError::Protocol(_))) => {
                    self.client = None;
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                other => return other,
            }
        }
    }
}

/// The errno for a daemon/client error (the mapping documented in the
/// crate docs).
pub(crate) fn errno_of(e: &ClientError) -> c_int {
    match e {
        // No shim running: no socket has a context.
        ClientError::NotRunning { .. } => libc::ENOENT,
        ClientError::Io(_) => libc::EIO,
        ClientError::Protocol(_) => libc::EPROTO,
        ClientError::Daemon(b) => errno_of_code(b.code),
    }
}

/// The errno for a daemon error code.
pub(crate) fn errno_of_code(c: ErrorCode) -> c_int {
    match c {
        ErrorCode::NoContext | ErrorCode::UnknownHit => libc::ENOENT,
        ErrorCode::InvalidLocator => EINVALIDLOCATOR,
        ErrorCode::UnverifiedLocator => EUNVERIFIEDLOCATOR,
        ErrorCode::UnreachableLocator => EUNREACHABLELOCATOR,
        ErrorCode::TooManyLocators => ETOOMANYLOCATORS,
        ErrorCode::InvalidArgument => libc::EINVAL,
        ErrorCode::NotSupported => libc::EOPNOTSUPP,
        ErrorCode::PermissionDenied => libc::EPERM,
        ErrorCode::Unavailable => libc::EAGAIN,
        ErrorCode::Timeout => libc::ETIMEDOUT,
        ErrorCode::Failed => libc::EIO,
        ErrorCode::Version | ErrorCode::BadRequest => libc::EPROTO,
    }
}
