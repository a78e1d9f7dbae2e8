//! # namesocket — session-layer name-based sockets with lossless resume
//!
//! The namesocket API and protocol of Hansen (1999), made production-grade:
//! name-based connect over every address pair of a host, transparent
//! reconnect and resume with no data lost, authenticated resume, and fast
//! dead-path detection.
#![forbid(unsafe_code)]

pub mod addrsel;
pub mod connect;
pub mod engine;
pub mod resolve;
pub mod wire;
