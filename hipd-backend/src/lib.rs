//! # hipd-backend — the userspace HIPv2 daemon
//!
//! * [`control`] — the versioned JSON-lines control protocol
//!   ([`control::Request`], [`control::Response`]) and a blocking
//!   [`control::Client`]. Always compiled; depend on this crate with
//!   `default-features = false` to get only this part.
//! * [`daemon`] (feature `daemon`, on by default) — the `hipd` daemon:
//!   the sans-IO engine of [`hip_proto`] driven over raw sockets (IP
//!   protocols 139 and 50) and UDP 10500, a TUN device `hip0` carrying the
//!   local HITs and LSIs, ESP in BEET mode, netlink locator tracking.
//! * binaries `hipd` and `hipconf` (feature `daemon`).
//!
//! See the module docs for the choices the standards leave open.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod control;
#[cfg(feature = "daemon")]
pub mod daemon;
