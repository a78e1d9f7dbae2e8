//! The lab's typed error.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Network namespaces, veths and nftables need root (effective uid 0).
    #[error(
        "netlab needs root (effective uid 0) to create network namespaces; run the tests as root"
    )]
    NotRoot,

    /// An external tool is not on `PATH`.
    #[error("required tool `{tool}` not found on PATH; install the Debian package `{package}`")]
    ToolMissing {
        /// The command name, e.g. `nft`.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },

    /// An external command ran but failed.
    #[error("command `{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },

    /// An I/O error with a description of what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A system call (via `nix`) failed.
    #[error("{context}: {source}")]
    Sys {
        /// What the lab was doing.
        context: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },

    /// A host name is not acceptable (see [`crate::Lab::add_host`]).
    #[error("invalid host name {0:?}: use 1-12 characters a-z, 0-9 or '-', starting with a letter")]
    InvalidName(String),

    /// The host name is already used in this lab.
    #[error("host name {0:?} is already used in this lab")]
    DuplicateHost(String),

    /// The addressing plan allows at most [`crate::MAX_HOSTS`] hosts per lab.
    #[error("a lab holds at most {max} hosts")]
    TooManyHosts {
        /// The limit.
        max: usize,
    },

    /// The addressing plan allows at most [`crate::MAX_LINKS`] links per lab.
    #[error("a lab holds at most {max} links")]
    TooManyLinks {
        /// The limit.
        max: usize,
    },

    /// A link needs two different hosts of the same lab.
    #[error("cannot link {0:?} to {1:?}: a link joins two different hosts of the same lab")]
    BadLink(String, String),

    /// The host is not an end of this link.
    #[error("host {host:?} is not an end of link {link}")]
    NotOnLink {
        /// The host's name.
        host: String,
        /// The link's index.
        link: usize,
    },

    /// The lab was closed (dropped or [`crate::Lab::close`]d); its handles are dead.
    #[error("the lab has been closed")]
    Closed,

    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the lab waited.
        after: Duration,
    },

    /// tcpdump exited before it started capturing.
    #[error("tcpdump on {dev} did not start: {stderr}")]
    CaptureFailed {
        /// The interface.
        dev: String,
        /// tcpdump's stderr.
        stderr: String,
    },

    /// A path that should have been written is missing.
    #[error("missing file {0}")]
    MissingFile(PathBuf),
}

/// Short alias used throughout the crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

pub(crate) fn sys_err(context: impl Into<String>) -> impl FnOnce(nix::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Sys { context, source }
}
