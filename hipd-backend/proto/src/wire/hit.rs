//! Host Identity Tags and Local Scope Identifiers.

use core::fmt;
use core::str::FromStr;
use std::net::{AddrParseError, Ipv4Addr, Ipv6Addr};

use super::consts::HitSuiteId;

/// A 128-bit Host Identity Tag (an ORCHID, RFC 7343).
///
/// Ordering and comparison treat the HIT as an unsigned 128-bit big-endian
/// integer, as RFC 7401 requires for the HIT tie-break and for the KEYMAT
/// key order. `Display` and `FromStr` use IPv6 text notation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hit([u8; 16]);

impl Hit {
    /// The all-zero HIT (opportunistic mode receiver HIT).
    pub const ZERO: Hit = Hit([0; 16]);

    /// ORCHIDv2 prefix 2001:20::/28, as the first 28 bits.
    pub const ORCHID_V2_PREFIX: u32 = 0x2001_0020;
    /// ORCHIDv1 prefix 2001:10::/28 (RFC 4843, retired).
    pub const ORCHID_V1_PREFIX: u32 = 0x2001_0010;

    /// Wraps 16 bytes in network order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Hit(bytes)
    }

    /// Builds a HIT from a slice; `None` unless it is exactly 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(Hit)
    }

    /// The 16 bytes in network order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 16 bytes in network order, by value.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The HIT as a big-endian 128-bit integer.
    pub const fn to_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }

    /// Builds a HIT from a 128-bit integer (big-endian).
    pub const fn from_u128(v: u128) -> Self {
        Hit(v.to_be_bytes())
    }

    /// Whether every bit is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    fn prefix28(&self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) & 0xFFFF_FFF0
    }

    /// Whether the HIT lies in the ORCHIDv2 prefix 2001:20::/28.
    pub fn is_orchid_v2(&self) -> bool {
        self.prefix28() == Self::ORCHID_V2_PREFIX
    }

    /// Whether the HIT lies in the retired ORCHIDv1 prefix 2001:10::/28.
    pub fn is_orchid_v1(&self) -> bool {
        self.prefix28() == Self::ORCHID_V1_PREFIX
    }

    /// The 4-bit OGA id (HIT suite) of an ORCHIDv2, or `None` when the HIT
    /// is not in 2001:20::/28.
    pub fn suite(&self) -> Option<HitSuiteId> {
        self.is_orchid_v2()
            .then(|| HitSuiteId::from_value(self.0[3] & 0x0F))
    }
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Ipv6Addr::from(self.0), f)
    }
}

impl fmt::Debug for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hit({self})")
    }
}

impl FromStr for Hit {
    type Err = AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Ipv6Addr>().map(Hit::from)
    }
}

impl From<Ipv6Addr> for Hit {
    fn from(a: Ipv6Addr) -> Self {
        Hit(a.octets())
    }
}

impl From<Hit> for Ipv6Addr {
    fn from(h: Hit) -> Self {
        Ipv6Addr::from(h.0)
    }
}

impl From<[u8; 16]> for Hit {
    fn from(b: [u8; 16]) -> Self {
        Hit(b)
    }
}

impl From<Hit> for [u8; 16] {
    fn from(h: Hit) -> Self {
        h.0
    }
}

impl AsRef<[u8]> for Hit {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A Local Scope Identifier: an IPv4 address in 1.0.0.0/8 standing for a HIT
/// in IPv4 APIs (the HIPL convention).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Lsi(Ipv4Addr);

impl Lsi {
    /// Accepts only addresses in 1.0.0.0/8.
    pub fn new(addr: Ipv4Addr) -> Option<Self> {
        (addr.octets()[0] == 1).then_some(Lsi(addr))
    }

    /// The address.
    pub const fn addr(self) -> Ipv4Addr {
        self.0
    }
}

impl fmt::Display for Lsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<Lsi> for Ipv4Addr {
    fn from(l: Lsi) -> Self {
        l.0
    }
}

impl TryFrom<Ipv4Addr> for Lsi {
    type Error = Ipv4Addr;
    fn try_from(a: Ipv4Addr) -> Result<Self, Ipv4Addr> {
        Lsi::new(a).ok_or(a)
    }
}
