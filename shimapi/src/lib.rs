//! # shimapi — the multihoming shim socket API (RFC 6316)
//!
//! This crate will hold the `SOL_SHIM` socket options (`SHIM_LOC_PEER_PREF`,
//! `SHIM_LOCLIST_PEER`, `SHIM_PATHEXPLORE`, …), the `shim_locator`,
//! `shim_pathexplore` and `shim_feedback` C layouts, the locator ancillary data
//! for `sendmsg`/`recvmsg`, and typed Rust helpers. The shim itself is the
//! userspace HIP daemon (`hipd-backend`); this crate talks to it over the
//! daemon's control socket.
//!
//! Status: not implemented yet (tracked by the SOL_SHIM issue).
#![forbid(unsafe_code)]
