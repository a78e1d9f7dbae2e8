//! # namesocket — session-layer name-based sockets with lossless resume
#![forbid(unsafe_code)]
