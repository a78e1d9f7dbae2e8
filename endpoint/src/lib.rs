//! # endpoint — the native HIP API (RFC 6317, Komu 2004)
//!
//! This crate will hold `sockaddr_ed`, `endpointinfo`/`getendpointinfo`, the
//! `HIP_HI_ANY*` wildcards, application-specified host identities loaded from
//! PEM files or held on a PKCS#11 token, `getlocaled`/`getpeered`, and the
//! fallback to plain TCP/IP when the peer does not speak HIP.
//!
//! Status: not implemented yet (tracked by a later issue).
#![forbid(unsafe_code)]
