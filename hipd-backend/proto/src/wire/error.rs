//! Typed errors of the HIP wire codec.

/// Errors produced while parsing or emitting HIP packets and parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the 40-byte fixed header.
    #[error("buffer of {len} bytes is shorter than the 40-byte HIP header")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// Header Length is below the minimum of 4 (a header with the two HITs).
    #[error("header length field {header_len} is below the minimum of 4")]
    HeaderLengthTooSmall {
        /// The Header Length field.
        header_len: u8,
    },
    /// Header Length claims more bytes than the buffer holds.
    #[error("header length announces {declared} bytes but only {available} are present")]
    HeaderLengthMismatch {
        /// Bytes announced by the Header Length field.
        declared: usize,
        /// Bytes available in the buffer.
        available: usize,
    },
    /// The Version field is not 2.
    #[error("unsupported HIP version {0}")]
    BadVersion(u8),
    /// The fixed header bits (P = 0 in byte 2, S = 1 in byte 3) are wrong.
    /// [`Packet::check`](super::Packet::check) no longer returns it: the
    /// fixed bits are ignored on receive (RFC 7401 §5.1); kept so that
    /// callers matching on it keep compiling.
    #[error(
        "fixed header bits are not set as HIP requires (byte2 {byte2:#04x}, byte3 {byte3:#04x})"
    )]
    BadFixedBits {
        /// Byte 2 of the header.
        byte2: u8,
        /// Byte 3 of the header.
        byte3: u8,
    },
    /// A parameter TLV runs past the end of the parameter area.
    #[error("parameter at offset {offset} is truncated")]
    ParamTruncated {
        /// Offset of the TLV from the start of the HIP packet.
        offset: usize,
    },
    /// Parameters are not in ascending type order (repeats must be adjacent).
    #[error("parameter type {ty} follows type {prev}: parameters must be in ascending order")]
    ParamOrder {
        /// Type of the previous parameter.
        prev: u16,
        /// Type of the offending parameter.
        ty: u16,
    },
    /// An unknown parameter with the critical bit set: processing must stop
    /// (the engine answers NOTIFY UNSUPPORTED_CRITICAL_PARAMETER_TYPE).
    #[error("unsupported critical parameter type {0}")]
    UnsupportedCriticalParam(u16),
    /// A known parameter whose contents are malformed.
    #[error("malformed parameter type {ty}: {reason}")]
    MalformedParam {
        /// Parameter type.
        ty: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// A value cannot be represented on the wire (emit side).
    #[error("cannot emit parameter type {ty}: {reason}")]
    Unrepresentable {
        /// Parameter type (0 for header fields).
        ty: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The packet would exceed the 2048-byte maximum (Header Length 255).
    #[error("packet of {len} bytes exceeds the HIP maximum of 2048")]
    PacketTooLong {
        /// Resulting length.
        len: usize,
    },
    /// The output buffer is too small.
    #[error("output buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
}

/// Result alias of the wire module.
pub type Result<T> = core::result::Result<T, WireError>;
