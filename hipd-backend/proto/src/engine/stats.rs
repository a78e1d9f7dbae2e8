//! Drop and activity counters.

/// Counters of an [`Endpoint`](super::Endpoint). Every dropped packet
/// increments exactly one of the reason counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets handed to `handle`.
    pub received: u64,
    /// Transmits produced.
    pub sent: u64,
    /// R1s sent in answer to I1s.
    pub r1_sent: u64,
    /// NOTIFYs sent.
    pub notify_sent: u64,
    /// Error NOTIFYs not sent because the packet that caused them came
    /// from an address that is not an ACTIVE locator of the association
    /// (a possibly spoofed source; see the `endpoint` module docs).
    pub notify_suppressed: u64,
    /// Error NOTIFYs not sent because the association's NOTIFY token
    /// bucket ([`Config::notify_burst`](super::Config::notify_burst)) was
    /// empty.
    pub notify_rate_limited: u64,
    /// Dropped: wrong checksum.
    pub bad_checksum: u64,
    /// Dropped: HIP_MAC / HIP_MAC_2 did not verify.
    pub bad_hmac: u64,
    /// Dropped: HIP_SIGNATURE(_2) did not verify.
    pub bad_signature: u64,
    /// Dropped: puzzle solution wrong, unknown or expired R1 generation.
    pub bad_puzzle: u64,
    /// Dropped: unknown critical parameter.
    pub unsupported_critical: u64,
    /// Dropped: malformed packet or parameter, missing mandatory parameter.
    pub malformed: u64,
    /// Dropped: packet not expected in the association's state.
    pub unexpected_state: u64,
    /// Duplicate / replayed R1 or I2 (answered by a retransmission or dropped).
    pub replay: u64,
    /// Dropped: HOST_ID does not match the sender's HIT.
    pub bad_host_id: u64,
    /// Dropped: R1 DH group shows a downgrade.
    pub downgrade: u64,
    /// Dropped: no association / local HIT for the packet.
    pub unknown_association: u64,
    /// Dropped: negotiation failed (answered with a NOTIFY).
    pub negotiation_failed: u64,
    /// Dropped: ENCRYPTED could not be decrypted.
    pub decrypt_failed: u64,
    /// Dropped: an algorithm or identity the engine cannot use.
    pub unsupported: u64,
    /// Dropped: packet types this layer does not handle.
    pub unhandled: u64,
    /// UPDATEs accepted (MAC and signature verified).
    pub update_received: u64,
    /// UPDATEs sent (first transmissions, ACK-only included).
    pub update_sent: u64,
    /// UPDATE retransmissions.
    pub update_retransmit: u64,
    /// Duplicate UPDATEs (SEQ already seen): re-ACKed, not reprocessed.
    pub update_duplicate: u64,
    /// SEQ-bearing UPDATEs that exhausted their retransmissions.
    pub update_timeout: u64,
    /// Peer locators verified (echo returned).
    pub locators_verified: u64,
    /// Rekeys completed (new SA pairs handed out).
    pub rekeys: u64,
    /// I1s not answered because the R1 rate limit
    /// ([`Config::r1_rate`](super::Config::r1_rate)) was exhausted.
    pub r1_rate_limited: u64,
    /// Initiator: I2s rebuilt from an R1 with a higher R1_COUNTER received
    /// in I2-SENT (RFC 7401 §6.8).
    pub i2_restarted: u64,
    /// Initiator: base exchanges restarted from another local identity
    /// because the Responder refused our HIT suite (HIT_SUITE_LIST or
    /// NOTIFY UNSUPPORTED_HIT_SUITE).
    pub hit_suite_retries: u64,
}
