//! Fault records: what was done to which link side, and when it took effect.

use std::time::{Duration, Instant, SystemTime};

/// When a fault (or its repair) took effect.
///
/// `at`/`system` are taken right after the configuring command returned, i.e. when the
/// kernel state had certainly changed; `requested` is taken just before it was issued. The
/// true moment lies in between (typically a few milliseconds apart). Measure recovery
/// times from `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultStamp {
    /// Monotonic time just before the change was requested.
    pub requested: Instant,
    /// Monotonic time at which the change was in effect.
    pub at: Instant,
    /// Wall-clock time matching `at` (for logs and pcaps).
    pub system: SystemTime,
}

impl FaultStamp {
    pub(crate) fn start() -> Instant {
        Instant::now()
    }

    pub(crate) fn finish(requested: Instant) -> Self {
        Self {
            requested,
            at: Instant::now(),
            system: SystemTime::now(),
        }
    }

    /// Time elapsed since the change took effect.
    pub fn elapsed(&self) -> Duration {
        self.at.elapsed()
    }
}

/// A token bucket (`tc qdisc ... tbf`) on one link side's *egress*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate in bits per second.
    pub rate_bits_per_sec: u64,
    /// Bucket size in bytes (must hold at least one MTU-sized packet).
    pub burst_bytes: u32,
    /// Longest time a packet may wait in the queue before it is dropped.
    pub latency: Duration,
}

impl RateLimit {
    /// `mbit` megabits per second with a burst of 1/100 s worth of data (at least 32 KiB)
    /// and 50 ms latency.
    pub fn mbit(mbit: u64) -> Self {
        Self::bits_per_sec(mbit.saturating_mul(1_000_000))
    }

    /// `bps` bits per second with the same defaults as [`RateLimit::mbit`].
    pub fn bits_per_sec(bps: u64) -> Self {
        let burst = (bps / 8 / 100).clamp(32 * 1024, u64::from(u32::MAX));
        Self {
            rate_bits_per_sec: bps.max(8),
            burst_bytes: u32::try_from(burst).unwrap_or(u32::MAX),
            latency: Duration::from_millis(50),
        }
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// `ip link set dev X down`.
    Down,
    /// `ip link set dev X up`.
    Up,
    /// nftables input-hook drop of everything arriving on the interface.
    DropRx,
    /// The drop was removed.
    RestoreRx,
    /// A tbf rate limit was installed on the interface's egress.
    RateLimit(RateLimit),
    /// The rate limit was removed.
    ClearRateLimit,
}

/// One entry of [`crate::Lab::fault_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultEvent {
    /// Index of the link.
    pub link: usize,
    /// Name of the host whose side of the link changed.
    pub host: String,
    /// The interface in that host.
    pub dev: String,
    /// What changed.
    pub action: FaultAction,
    /// When.
    pub stamp: FaultStamp,
}
