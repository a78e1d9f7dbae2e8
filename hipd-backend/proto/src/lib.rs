//! # hip-proto — sans-IO HIPv2 engine
//!
//! Wire codec, host identities and crypto, the base exchange state machine,
//! UPDATE, CLOSE and ESP. The engine performs no IO and reads no clock or
//! random number generator of its own.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod engine;
pub mod reap;
pub mod wire;
