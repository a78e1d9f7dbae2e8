//! # namesocket — session-layer name-based sockets with lossless resume
//!
//! The namesocket API and protocol of Hansen (1999), made production-grade:
//! name-based connect over every address pair of a host, transparent
//! reconnect and resume with no data lost, authenticated resume, and fast
//! dead-path detection.
#![forbid(unsafe_code)]

pub mod addrsel;
pub mod api;
mod async_io;
pub mod connect;
mod driver;
pub mod engine;
mod error;
mod listener;
pub mod resolve;
mod stream;
pub mod wire;

pub use async_io::{AsyncNameListener, AsyncNameStream};
pub use driver::{
    COALESCE_BYTES, COALESCE_DELAY, COALESCE_GAP, KEY_ROTATION, MAX_PENDING_HANDSHAKES, Options,
    PathLog,
};
pub use error::{Error, Result};
pub use listener::{ListenerStats, NameListener};
pub use stream::NameStream;
