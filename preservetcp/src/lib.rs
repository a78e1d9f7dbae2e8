//! # preservetcp — keep unmodified TCP connections alive across address pairs
//!
//! Implements the PREFIX_SYN / PREFIX_ACK IPv6 destination options of Hansen
//! (1999) and the userspace NFQUEUE realization on Linux.
#![forbid(unsafe_code)]

pub mod wire;
