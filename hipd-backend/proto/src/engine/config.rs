//! Endpoint configuration.

use std::time::Duration;

use super::Transport;
use crate::crypto::{DhGroup, EspSuite, GcmKeySize, HipCipher, HitSuite};

/// The most locator pairs shotgun mode sends the first I1 to
/// ([`Config::shotgun`]): RFC 7401 (digest §14) allows an I1 to at
/// most 3 addresses in parallel, and to a single address on retry.
pub const MAX_SHOTGUN_I1: usize = 3;

/// The most locator pairs shotgun mode sends a LOCATOR_SET announcement
/// to ([`Config::shotgun`]), the pair in use included. Announcements are
/// UPDATEs of an established association, not bound by the I1 limit
/// ([`MAX_SHOTGUN_I1`]).
pub const MAX_SHOTGUN_UPDATE_PAIRS: usize = 16;

/// Default [`Config::msl`]: the Maximum Segment Lifetime of RFC 7401
/// §4.4, 2 minutes.
pub const DEFAULT_MSL: Duration = Duration::from_secs(120);

/// Default [`Config::ual`]: the Unused Association Lifetime. RFC 7401
/// leaves its value to the implementation and gives 15 minutes as an
/// example (§4.4); we use that example.
pub const DEFAULT_UAL: Duration = Duration::from_secs(15 * 60);

/// Whether the answer to a peer's rekey (or SA addition) request carries a
/// new DIFFIE_HELLMAN ([`Config::rekey_answer_dh`]). RFC 7402 §6.9 lets
/// each side decide; when only one side sends a new DH public value, the
/// other side's previous DH key is reused for the new Kij.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RekeyAnswerDh {
    /// A new DH key exactly when the request carried one (the default).
    #[default]
    Mirror,
    /// Always a new DH key.
    Always,
    /// Never a new DH key (the request's DH, if any, is combined with our
    /// previous key).
    Never,
}

/// Configuration of an [`Endpoint`](super::Endpoint). Lists are in
/// preference order. See the [module docs](super) for the defaults' rationale.
#[derive(Debug, Clone)]
pub struct Config {
    /// DH groups (I1 DH_GROUP_LIST and the Responder's R1 list). One R1
    /// is precomputed per (local identity, group) and rotation. Default
    /// {8, 7, 4, 11, 3}: NIST P-384, P-256, MODP-3072, MODP-2048 and,
    /// least preferred, MODP-1536 (group 3, MUST in RFC 7401 §5.2.7), so a
    /// group-3-only Initiator can complete a base exchange.
    pub dh_groups: Vec<DhGroup>,
    /// HIP ciphers (R1 list; the Initiator's preference).
    pub hip_ciphers: Vec<HipCipher>,
    /// Initiator HIT suites this host accepts (R1 HIT_SUITE_LIST).
    pub hit_suites: Vec<HitSuite>,
    /// ESP transforms (R1 list; the Initiator's preference).
    pub esp_suites: Vec<EspSuite>,
    /// Puzzle difficulty #K put in R1s.
    pub puzzle_k: u8,
    /// R1 / puzzle secret rotation period.
    pub r1_rotation: Duration,
    /// R1 generation counter of the first R1 generation (incremented per
    /// rotation). RFC 7401 §5.2.3: the counter should survive a restart,
    /// and a peer in I2-SENT treats an R1 with a lower counter as a replay.
    /// The engine reads no clock: set it from the wall clock, e.g. seconds
    /// since the Unix epoch at start, so a restarted responder's R1s carry
    /// higher counters than before (as long as it rotated less than once
    /// per second on average). Default 1 (deterministic tests).
    pub r1_counter_start: u64,
    /// Highest #K this host will solve as Initiator.
    pub max_puzzle_k: u8,
    /// Maximum puzzle attempts per R1 (inline solving).
    pub puzzle_budget: u64,
    /// Initial I1 retransmission timeout.
    pub i1_timeout: Duration,
    /// I1 retransmissions before E-FAILED.
    pub i1_retries: u32,
    /// Initial I2 retransmission timeout.
    pub i2_timeout: Duration,
    /// I2 retransmissions before E-FAILED.
    pub i2_retries: u32,
    /// Initial CLOSE retransmission timeout, doubled per retransmission up
    /// to [`Config::close_timeout_max`]. CLOSE is resent until the summed
    /// timeouts exceed [`Config::ual`] + [`Config::msl`] (RFC 7401 §4.4,
    /// CLOSING); then the association is removed ([`Event::Closed`]).
    /// Must not be zero. Default 1 s.
    ///
    /// [`Event::Closed`]: super::Event::Closed
    pub close_timeout: Duration,
    /// Largest CLOSE retransmission timeout (the doubling stops there;
    /// values below [`Config::close_timeout`] act as that). Default 64 s:
    /// the doubling from 1 s reaches it after six retransmissions, so with
    /// the default UAL + MSL (17 min) CLOSE is sent at 0, 1, 3, 7, 15, 31,
    /// 63 s and then every 64 s up to 959 s (21 CLOSEs), and the
    /// association gives up at 1023 s, the first sum above 1020 s.
    pub close_timeout_max: Duration,
    /// UAL, the Unused Association Lifetime (RFC 7401 §4.4): together
    /// with [`Config::msl`] it bounds how long CLOSE is retransmitted
    /// ([`Config::close_timeout`]). RFC 7401 leaves it to the
    /// implementation; default 15 min, the RFC's example
    /// ([`DEFAULT_UAL`]). The engine does not close idle associations on
    /// its own; UAL only bounds CLOSING.
    pub ual: Duration,
    /// MSL, the Maximum Segment Lifetime (RFC 7401 §4.4). Default 2 min
    /// ([`DEFAULT_MSL`]).
    pub msl: Duration,
    /// How long CLOSED is held (answers retransmitted CLOSEs): UAL + 2·MSL
    /// by default (RFC 7401 §4.4.4's CLOSED timeout, 19 min with the
    /// defaults), so a peer still resending CLOSE for up to UAL + MSL gets
    /// its CLOSE_ACK.
    pub closed_hold: Duration,
    /// How long E-FAILED is held before the association is removed.
    pub failed_hold: Duration,
    /// Put an ECHO_REQUEST_SIGNED in R1s and require it echoed in I2.
    pub r1_echo_signed: bool,
    /// Answer opportunistic I1s (receiver HIT zero).
    pub accept_opportunistic: bool,
    /// Anti-replay window of inbound SAs (packets).
    pub replay_window: usize,
    /// Transport of I1s sent by [`Endpoint::connect`](super::Endpoint::connect).
    pub initiator_transport: Transport,
    /// Shotgun mode (HIPL's `hipconf daemon shotgun on`): the first I1 goes
    /// to the first [`MAX_SHOTGUN_I1`] (3) pairs of a local locator and a
    /// peer locator of the same family (peer locators in the given order,
    /// local locators in theirs for each), each from that local address;
    /// its retransmissions go to the first pair only (RFC 7401, digest §14: at
    /// most 3 addresses in parallel, a single one on retry). A LOCATOR_SET
    /// announcement is copied to every such pair (at most
    /// [`MAX_SHOTGUN_UPDATE_PAIRS`]). Off (the default): I1s go to up to
    /// three peer locators from the source the routing table picks,
    /// retransmissions to the first, and an announcement to the peer
    /// locator in use.
    pub shotgun: bool,
    /// Initial UPDATE retransmission timeout, used until an RTT sample
    /// exists (then 2 × smoothed RTT, at least
    /// [`Config::update_timeout_min`]); doubled per retransmission.
    pub update_timeout: Duration,
    /// Lower bound of the RTT-derived UPDATE timeout.
    pub update_timeout_min: Duration,
    /// UPDATE_RETRY_MAX: retransmissions of a SEQ-bearing UPDATE before
    /// giving up (LOCATOR_SET / rekey: the association goes to CLOSING;
    /// address verification: the locator stays UNVERIFIED).
    pub update_retries: u32,
    /// How long a probe ([`Endpoint::probe`](super::Endpoint::probe)) waits
    /// for its answer (probes are never retransmitted).
    pub probe_timeout: Duration,
    /// Lifetime (seconds) put on our LOCATOR_SET entries; `u32::MAX` never
    /// expires. A finite lifetime is refreshed at half its value.
    pub locator_lifetime: u32,
    /// Responder R1 rate limit: a token bucket refilled with `r1_rate`
    /// tokens per second, holding at most [`Config::r1_burst`]; each R1
    /// sent takes one token, an I1 arriving with the bucket empty is
    /// dropped ([`Stats::r1_rate_limited`](super::Stats::r1_rate_limited)).
    /// 0 disables the limit. Default 1000/s: R1s are ~15× larger than
    /// I1s, so the limit caps the reflection bandwidth a spoofed I1 flood
    /// can draw from this host (about 1 MB/s of R1s per endpoint) while
    /// staying far above the rate of real base exchanges.
    pub r1_rate: u32,
    /// Bucket size of the R1 rate limit (burst of R1s answered at once).
    /// Default 200. Values below 1 act as 1.
    pub r1_burst: u32,
    /// Per-association NOTIFY rate limit: a token bucket holding at most
    /// `notify_burst` tokens, refilled with one token per
    /// [`Config::notify_interval`]; each error NOTIFY sent takes one, a
    /// NOTIFY finding the bucket empty is not sent
    /// ([`Stats::notify_rate_limited`](super::Stats::notify_rate_limited)).
    /// Default 5 (with 1 s: a burst of 5, then 1 per second), enough for
    /// the few errors a real peer can cause per exchange, while a flood of
    /// bad packets draws at most one signed NOTIFY per second per
    /// association. 0 sends no error NOTIFY at all.
    pub notify_burst: u32,
    /// Refill period of the NOTIFY token bucket (one token per period).
    /// Default 1 s; zero refills the bucket at once (no rate limit).
    pub notify_interval: Duration,
    /// Whether our answer to a peer's rekey / SA addition request carries
    /// a new DH key. Default [`RekeyAnswerDh::Mirror`].
    pub rekey_answer_dh: RekeyAnswerDh,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dh_groups: vec![
                DhGroup::EcdhP384,
                DhGroup::EcdhP256,
                DhGroup::Modp3072,
                DhGroup::Modp2048,
                // MUST (RFC 7401 §5.2.7); last: the weakest group.
                DhGroup::Modp1536,
            ],
            hip_ciphers: vec![HipCipher::Aes256Cbc, HipCipher::Aes128Cbc],
            hit_suites: vec![
                HitSuite::RsaDsaSha256,
                HitSuite::EcdsaSha384,
                HitSuite::EddsaCshake128,
            ],
            esp_suites: vec![
                EspSuite::AesGcm16(GcmKeySize::Aes128),
                EspSuite::Aes256CbcSha256,
                EspSuite::Aes128CbcSha256,
            ],
            puzzle_k: 10,
            r1_rotation: Duration::from_secs(120),
            r1_counter_start: 1,
            max_puzzle_k: 24,
            puzzle_budget: 1 << 26,
            i1_timeout: Duration::from_secs(1),
            i1_retries: 5,
            i2_timeout: Duration::from_secs(1),
            i2_retries: 5,
            close_timeout: Duration::from_secs(1),
            close_timeout_max: Duration::from_secs(64),
            ual: DEFAULT_UAL,
            msl: DEFAULT_MSL,
            closed_hold: DEFAULT_UAL.saturating_add(DEFAULT_MSL.saturating_mul(2)),
            failed_hold: Duration::from_secs(30),
            r1_echo_signed: false,
            accept_opportunistic: true,
            replay_window: crate::crypto::esp::DEFAULT_REPLAY_WINDOW,
            initiator_transport: Transport::Native,
            shotgun: false,
            update_timeout: Duration::from_secs(1),
            update_timeout_min: Duration::from_millis(50),
            update_retries: 5,
            probe_timeout: Duration::from_secs(1),
            locator_lifetime: u32::MAX,
            r1_rate: 1000,
            r1_burst: 200,
            notify_burst: 5,
            notify_interval: Duration::from_secs(1),
            rekey_answer_dh: RekeyAnswerDh::Mirror,
        }
    }
}

impl Config {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), super::EngineError> {
        use super::EngineError::Config as E;
        if self.dh_groups.is_empty() {
            return Err(E("no DH group"));
        }
        if self.hip_ciphers.is_empty() {
            return Err(E("no HIP cipher"));
        }
        if self.esp_suites.is_empty() {
            return Err(E("no ESP suite"));
        }
        if self.hit_suites.is_empty() {
            return Err(E("no HIT suite"));
        }
        if self.r1_rotation.is_zero() {
            return Err(E("zero R1 rotation period"));
        }
        if self.close_timeout.is_zero() {
            return Err(E("zero CLOSE retransmission timeout"));
        }
        if self.dh_groups.len() > 255 || self.hip_ciphers.len() > 6 || self.esp_suites.len() > 6 {
            return Err(E(
                "list too long (DH ≤ 255, HIP_CIPHER and ESP_TRANSFORM ≤ 6)",
            ));
        }
        Ok(())
    }

    /// The PUZZLE Lifetime exponent covering one rotation period:
    /// the smallest L with 2^(L−32) s ≥ the period.
    pub fn puzzle_lifetime_exp(&self) -> u8 {
        let secs = self.r1_rotation.as_secs().max(1);
        let mut e = 0u8;
        while (1u64 << e) < secs && e < 63 {
            e += 1;
        }
        32 + e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_exponent_covers_rotation() {
        for (secs, exp) in [(1, 32), (2, 33), (3, 34), (120, 39), (128, 39), (129, 40)] {
            let c = Config {
                r1_rotation: Duration::from_secs(secs),
                ..Config::default()
            };
            assert_eq!(c.puzzle_lifetime_exp(), exp, "{secs}");
            assert!(2f64.powi(i32::from(exp) - 32) >= secs as f64);
        }
    }

    #[test]
    fn validation_rejects_empty_and_long_lists() {
        assert!(Config::default().validate().is_ok());
        let empty = Config {
            dh_groups: vec![],
            ..Config::default()
        };
        assert!(empty.validate().is_err());
        let long = Config {
            esp_suites: vec![EspSuite::Aes128CbcSha256; 7],
            ..Config::default()
        };
        assert!(long.validate().is_err());
        let zero = Config {
            r1_rotation: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
        let zero_close = Config {
            close_timeout: Duration::ZERO,
            ..Config::default()
        };
        assert!(zero_close.validate().is_err());
    }

    #[test]
    fn close_defaults_follow_the_digest() {
        let c = Config::default();
        assert_eq!(c.msl, Duration::from_secs(120), "MSL = 2 min");
        assert_eq!(c.ual, Duration::from_secs(900), "UAL = RFC example");
        assert_eq!(c.close_timeout, Duration::from_secs(1));
        assert_eq!(c.close_timeout_max, Duration::from_secs(64));
        assert_eq!(MAX_SHOTGUN_I1, 3);
    }
}
