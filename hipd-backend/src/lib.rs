//! # hipd-backend — the userspace HIPv2 daemon
//!
//! This crate will hold the `hipd` daemon (driving the sans-IO engine in
//! [`hip-proto`](../hip_proto/index.html)), its TUN/ESP data plane, the control
//! socket protocol and client, and the `hipconf` command-line tool.
//!
//! Status: not implemented yet (tracked by the hipd issue).
