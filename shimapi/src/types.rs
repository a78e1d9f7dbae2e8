//! The RFC 6316 §8 C structures (`#[repr(C)]`, exact layouts) and the safe
//! Rust types beside them.
//!
//! Byte order: every integer field is in **host** order (the RFC's own
//! examples assign `lc_port = 50500` and `lc_prio = 1` without `htons`);
//! `lc_addr` is in network order as the RFC requires. IPv4 locators are
//! stored IPv4-mapped (`::ffff:a.b.c.d`) in `lc_addr` with
//! `lc_family = AF_INET` (the real family, RFC 6316 §8.1.1).

use std::net::{IpAddr, Ipv6Addr};

pub use hipd_backend::control::PathExplore;

use crate::consts::{
    SHIM_FB_DIRECTION_INBOUND, SHIM_FB_DIRECTION_OUTBOUND, SHIM_FB_IGNORE, SHIM_FB_SATISFACTORY,
    SHIM_FB_UNABLE_TO_CONNECT, SHIM_FB_UNSATISFACTORY,
};

/// Why an application-supplied structure was rejected (all map to
/// `EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StructError {
    /// The buffer has the wrong length.
    #[error("buffer length {got} is not the structure size {want}")]
    Length {
        /// Bytes given.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// `lc_family` is neither `AF_INET` nor `AF_INET6`.
    #[error("unsupported address family {0}")]
    Family(u8),
    /// `lc_family = AF_INET` but `lc_addr` is not IPv4-mapped, or
    /// `AF_INET6` with an IPv4-mapped address.
    #[error("lc_family does not match the address in lc_addr")]
    FamilyMismatch,
    /// A reserved field is not zero.
    #[error("reserved field is not zero")]
    Reserved,
    /// `fb_direction` > 1 or `fb_indicator` > 3.
    #[error("feedback value out of range")]
    FeedbackRange,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_ne_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_ne_bytes(a)
}

/// `struct shim_locator` (RFC 6316 Fig. 4): 32 bytes, alignment 4.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shim_locator {
    /// `AF_INET` or `AF_INET6` (non-zero).
    pub lc_family: u8,
    /// 0, or `IPPROTO_UDP` when the locator is behind a NAT.
    pub lc_proto: u8,
    /// NAT (UDP encapsulation) port, host order.
    pub lc_port: u16,
    /// Priority: lower = more preferred.
    pub lc_prio: u16,
    /// Weight among equal priorities: higher wins.
    pub lc_weight: u16,
    /// Interface index (local locators; ignored on set).
    pub lc_ifidx: u32,
    /// The address, network order; IPv4 as IPv4-mapped IPv6.
    pub lc_addr: [u8; 16],
    /// `SHIM_LOC_FLAG_HBA` / `SHIM_LOC_FLAG_CGA` (ignored on set).
    pub lc_flags: u16,
}

impl shim_locator {
    /// Size in bytes (32).
    pub const SIZE: usize = std::mem::size_of::<shim_locator>();

    /// The C bytes (host order integers, tail padding zero).
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0] = self.lc_family;
        b[1] = self.lc_proto;
        b[2..4].copy_from_slice(&self.lc_port.to_ne_bytes());
        b[4..6].copy_from_slice(&self.lc_prio.to_ne_bytes());
        b[6..8].copy_from_slice(&self.lc_weight.to_ne_bytes());
        b[8..12].copy_from_slice(&self.lc_ifidx.to_ne_bytes());
        b[12..28].copy_from_slice(&self.lc_addr);
        b[28..30].copy_from_slice(&self.lc_flags.to_ne_bytes());
        b
    }

    /// Reads the C bytes; the buffer must be exactly [`Self::SIZE`] long.
    pub fn from_bytes(b: &[u8]) -> Result<shim_locator, StructError> {
        if b.len() != Self::SIZE {
            return Err(StructError::Length {
                got: b.len(),
                want: Self::SIZE,
            });
        }
        let mut addr = [0u8; 16];
        if let Some(s) = b.get(12..28) {
            addr.copy_from_slice(s);
        }
        Ok(shim_locator {
            lc_family: b.first().copied().unwrap_or(0),
            lc_proto: b.get(1).copied().unwrap_or(0),
            lc_port: u16_at(b, 2),
            lc_prio: u16_at(b, 4),
            lc_weight: u16_at(b, 6),
            lc_ifidx: u32_at(b, 8),
            lc_addr: addr,
            lc_flags: u16_at(b, 28),
        })
    }

    /// Whether every field is zero (the RFC's "cancel" value for the
    /// sticky `SHIM_LOC_*_SEND` options, and what a get returns when
    /// there is no locator).
    pub fn is_zero(&self) -> bool {
        *self == shim_locator::default()
    }
}

/// `struct shim_pathexplore` (RFC 6316 Fig. 6): 12 bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shim_pathexplore {
    /// Number of initial probes.
    pub pe_probenum: u16,
    /// Keepalive Timeout, seconds.
    pub pe_keepaliveto: u16,
    /// Keepalive Interval, seconds.
    pub pe_keepaliveint: u16,
    /// Initial Probe Timeout, milliseconds.
    pub pe_initprobeto: u16,
    /// Must be 0.
    pub pe_reserved: u32,
}

impl shim_pathexplore {
    /// Size in bytes (12).
    pub const SIZE: usize = std::mem::size_of::<shim_pathexplore>();

    /// The C bytes.
    pub fn to_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..2].copy_from_slice(&self.pe_probenum.to_ne_bytes());
        b[2..4].copy_from_slice(&self.pe_keepaliveto.to_ne_bytes());
        b[4..6].copy_from_slice(&self.pe_keepaliveint.to_ne_bytes());
        b[6..8].copy_from_slice(&self.pe_initprobeto.to_ne_bytes());
        b[8..12].copy_from_slice(&self.pe_reserved.to_ne_bytes());
        b
    }

    /// Reads the C bytes (exactly [`Self::SIZE`]).
    pub fn from_bytes(b: &[u8]) -> Result<shim_pathexplore, StructError> {
        if b.len() != Self::SIZE {
            return Err(StructError::Length {
                got: b.len(),
                want: Self::SIZE,
            });
        }
        Ok(shim_pathexplore {
            pe_probenum: u16_at(b, 0),
            pe_keepaliveto: u16_at(b, 2),
            pe_keepaliveint: u16_at(b, 4),
            pe_initprobeto: u16_at(b, 6),
            pe_reserved: u32_at(b, 8),
        })
    }
}

impl TryFrom<shim_pathexplore> for PathExplore {
    type Error = StructError;
    fn try_from(p: shim_pathexplore) -> Result<PathExplore, StructError> {
        if p.pe_reserved != 0 {
            return Err(StructError::Reserved);
        }
        Ok(PathExplore {
            probenum: p.pe_probenum,
            keepaliveto: p.pe_keepaliveto,
            keepaliveint: p.pe_keepaliveint,
            initprobeto: p.pe_initprobeto,
        })
    }
}

impl From<PathExplore> for shim_pathexplore {
    fn from(p: PathExplore) -> shim_pathexplore {
        shim_pathexplore {
            pe_probenum: p.probenum,
            pe_keepaliveto: p.keepaliveto,
            pe_keepaliveint: p.keepaliveint,
            pe_initprobeto: p.initprobeto,
            pe_reserved: 0,
        }
    }
}

/// `struct shim_feedback` (RFC 6316 Fig. 7): 4 bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct shim_feedback {
    /// 0 = outbound, 1 = inbound.
    pub fb_direction: u8,
    /// 0 = ignore, 1 = unable to connect, 2 = unsatisfactory,
    /// 3 = satisfactory.
    pub fb_indicator: u8,
    /// Ignored by the receiver.
    pub fb_reserved: u16,
}

impl shim_feedback {
    /// Size in bytes (4).
    pub const SIZE: usize = std::mem::size_of::<shim_feedback>();

    /// The C bytes.
    pub fn to_bytes(&self) -> [u8; 4] {
        let mut b = [0u8; 4];
        b[0] = self.fb_direction;
        b[1] = self.fb_indicator;
        b[2..4].copy_from_slice(&self.fb_reserved.to_ne_bytes());
        b
    }

    /// Reads the C bytes (exactly [`Self::SIZE`]).
    pub fn from_bytes(b: &[u8]) -> Result<shim_feedback, StructError> {
        if b.len() != Self::SIZE {
            return Err(StructError::Length {
                got: b.len(),
                want: Self::SIZE,
            });
        }
        Ok(shim_feedback {
            fb_direction: b.first().copied().unwrap_or(0),
            fb_indicator: b.get(1).copied().unwrap_or(0),
            fb_reserved: u16_at(b, 2),
        })
    }
}

/// Direction of a [`Feedback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackDirection {
    /// Outbound traffic.
    Outbound,
    /// Inbound traffic.
    Inbound,
}

/// Indicator of a [`Feedback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackIndicator {
    /// No information (the shim ignores it).
    Ignore,
    /// The application could not connect / make progress.
    UnableToConnect,
    /// Progress is unsatisfactory.
    Unsatisfactory,
    /// Progress is satisfactory (evidence that the current pair works).
    Satisfactory,
}

/// Upper-layer feedback (`SHIM_FEEDBACK` control message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// Direction.
    pub direction: FeedbackDirection,
    /// Indicator.
    pub indicator: FeedbackIndicator,
}

impl TryFrom<shim_feedback> for Feedback {
    type Error = StructError;
    fn try_from(f: shim_feedback) -> Result<Feedback, StructError> {
        let direction = match f.fb_direction {
            SHIM_FB_DIRECTION_OUTBOUND => FeedbackDirection::Outbound,
            SHIM_FB_DIRECTION_INBOUND => FeedbackDirection::Inbound,
            _ => return Err(StructError::FeedbackRange),
        };
        let indicator = match f.fb_indicator {
            SHIM_FB_IGNORE => FeedbackIndicator::Ignore,
            SHIM_FB_UNABLE_TO_CONNECT => FeedbackIndicator::UnableToConnect,
            SHIM_FB_UNSATISFACTORY => FeedbackIndicator::Unsatisfactory,
            SHIM_FB_SATISFACTORY => FeedbackIndicator::Satisfactory,
            _ => return Err(StructError::FeedbackRange),
        };
        Ok(Feedback {
            direction,
            indicator,
        })
    }
}

impl From<Feedback> for shim_feedback {
    fn from(f: Feedback) -> shim_feedback {
        shim_feedback {
            fb_direction: match f.direction {
                FeedbackDirection::Outbound => SHIM_FB_DIRECTION_OUTBOUND,
                FeedbackDirection::Inbound => SHIM_FB_DIRECTION_INBOUND,
            },
            fb_indicator: match f.indicator {
                FeedbackIndicator::Ignore => SHIM_FB_IGNORE,
                FeedbackIndicator::UnableToConnect => SHIM_FB_UNABLE_TO_CONNECT,
                FeedbackIndicator::Unsatisfactory => SHIM_FB_UNSATISFACTORY,
                FeedbackIndicator::Satisfactory => SHIM_FB_SATISFACTORY,
            },
            fb_reserved: 0,
        }
    }
}

/// A locator with its RFC 6316 attributes (the safe twin of
/// [`shim_locator`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Locator {
    /// The address.
    pub addr: IpAddr,
    /// 0, or `IPPROTO_UDP` when behind a NAT.
    pub proto: u8,
    /// NAT port (0 without NAT).
    pub port: u16,
    /// Priority: lower = more preferred.
    pub prio: u16,
    /// Weight among equal priorities: higher wins.
    pub weight: u16,
    /// Interface index (local locators).
    pub ifindex: u32,
    /// `lc_flags`.
    pub flags: u16,
}

impl Locator {
    /// A locator with the given address and every other field zero.
    pub fn new(addr: IpAddr) -> Locator {
        Locator {
            addr,
            proto: 0,
            port: 0,
            prio: 0,
            weight: 0,
            ifindex: 0,
            flags: 0,
        }
    }

    /// The same locator with a preference.
    pub fn with_pref(mut self, prio: u16, weight: u16) -> Locator {
        self.prio = prio;
        self.weight = weight;
        self
    }
}

impl TryFrom<&shim_locator> for Locator {
    type Error = StructError;
    fn try_from(l: &shim_locator) -> Result<Locator, StructError> {
        let v6 = Ipv6Addr::from(l.lc_addr);
        let addr = match i32::from(l.lc_family) {
            libc::AF_INET => IpAddr::V4(v6.to_ipv4_mapped().ok_or(StructError::FamilyMismatch)?),
            libc::AF_INET6 => {
                if v6.to_ipv4_mapped().is_some() {
                    return Err(StructError::FamilyMismatch);
                }
                IpAddr::V6(v6)
            }
            _ => return Err(StructError::Family(l.lc_family)),
        };
        Ok(Locator {
            addr,
            proto: l.lc_proto,
            port: l.lc_port,
            prio: l.lc_prio,
            weight: l.lc_weight,
            ifindex: l.lc_ifidx,
            flags: l.lc_flags,
        })
    }
}

impl TryFrom<shim_locator> for Locator {
    type Error = StructError;
    fn try_from(l: shim_locator) -> Result<Locator, StructError> {
        Locator::try_from(&l)
    }
}

impl From<&Locator> for shim_locator {
    fn from(l: &Locator) -> shim_locator {
        let (family, addr) = match l.addr {
            IpAddr::V4(a) => (libc::AF_INET, a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => (libc::AF_INET6, a.octets()),
        };
        shim_locator {
            // AF_INET (2) and AF_INET6 (10) fit in a byte.
            lc_family: family as u8,
            lc_proto: l.proto,
            lc_port: l.port,
            lc_prio: l.prio,
            lc_weight: l.weight,
            lc_ifidx: l.ifindex,
            lc_addr: addr,
            lc_flags: l.flags,
        }
    }
}

impl From<Locator> for shim_locator {
    fn from(l: Locator) -> shim_locator {
        shim_locator::from(&l)
    }
}

/// Which side a locator option or control message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Our locators (source when sending).
    Local,
    /// The peer's locators (destination when sending).
    Peer,
}

/// Locators for one datagram (per-datagram `SHIM_LOC_*_SEND`) or those a
/// datagram arrived on (`SHIM_LOC_*_RECV`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocatorPair {
    /// Local locator (`None`: not requested / not known).
    pub local: Option<IpAddr>,
    /// Peer locator.
    pub peer: Option<IpAddr>,
}

/// [`FeedbackIndicator`] implied by the draft-era
/// `SHIM_FEEDBACK_POSITIVE`/`_NEGATIVE` control messages.
pub(crate) fn draft_feedback_indicator(positive: bool) -> u8 {
    if positive {
        SHIM_FB_SATISFACTORY
    } else {
        SHIM_FB_UNSATISFACTORY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn c_layouts_match_rfc_6316() {
        assert_eq!(size_of::<shim_locator>(), 32);
        assert_eq!(align_of::<shim_locator>(), 4);
        assert_eq!(offset_of!(shim_locator, lc_family), 0);
        assert_eq!(offset_of!(shim_locator, lc_proto), 1);
        assert_eq!(offset_of!(shim_locator, lc_port), 2);
        assert_eq!(offset_of!(shim_locator, lc_prio), 4);
        assert_eq!(offset_of!(shim_locator, lc_weight), 6);
        assert_eq!(offset_of!(shim_locator, lc_ifidx), 8);
        assert_eq!(offset_of!(shim_locator, lc_addr), 12);
        assert_eq!(offset_of!(shim_locator, lc_flags), 28);
        assert_eq!(size_of::<shim_pathexplore>(), 12);
        assert_eq!(offset_of!(shim_pathexplore, pe_probenum), 0);
        assert_eq!(offset_of!(shim_pathexplore, pe_keepaliveto), 2);
        assert_eq!(offset_of!(shim_pathexplore, pe_keepaliveint), 4);
        assert_eq!(offset_of!(shim_pathexplore, pe_initprobeto), 6);
        assert_eq!(offset_of!(shim_pathexplore, pe_reserved), 8);
        assert_eq!(size_of::<shim_feedback>(), 4);
        assert_eq!(offset_of!(shim_feedback, fb_direction), 0);
        assert_eq!(offset_of!(shim_feedback, fb_indicator), 1);
        assert_eq!(offset_of!(shim_feedback, fb_reserved), 2);
    }

    #[test]
    fn locator_bytes_sit_at_the_c_offsets() {
        let l = shim_locator {
            lc_family: libc::AF_INET as u8,
            lc_proto: 17,
            lc_port: 50500,
            lc_prio: 1,
            lc_weight: 10,
            lc_ifidx: 7,
            lc_addr: "192.0.2.9"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
                .octets(),
            lc_flags: 0x01,
        };
        let b = l.to_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(b[1], 17);
        assert_eq!(&b[2..4], &50500u16.to_ne_bytes());
        assert_eq!(&b[4..6], &1u16.to_ne_bytes());
        assert_eq!(&b[6..8], &10u16.to_ne_bytes());
        assert_eq!(&b[8..12], &7u32.to_ne_bytes());
        assert_eq!(&b[12..24], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[24..28], &[192, 0, 2, 9]);
        assert_eq!(&b[28..30], &1u16.to_ne_bytes());
        assert_eq!(&b[30..32], &[0, 0]);
        assert_eq!(shim_locator::from_bytes(&b), Ok(l));
        assert_eq!(
            shim_locator::from_bytes(&b[..31]),
            Err(StructError::Length { got: 31, want: 32 })
        );
        let p = shim_pathexplore {
            pe_probenum: 4,
            pe_keepaliveto: 10,
            pe_keepaliveint: 3,
            pe_initprobeto: 500,
            pe_reserved: 0,
        };
        assert_eq!(shim_pathexplore::from_bytes(&p.to_bytes()), Ok(p));
        assert_eq!(&p.to_bytes()[6..8], &500u16.to_ne_bytes());
        let f = shim_feedback {
            fb_direction: 1,
            fb_indicator: 3,
            fb_reserved: 0,
        };
        assert_eq!(shim_feedback::from_bytes(&f.to_bytes()), Ok(f));
        assert!(shim_feedback::from_bytes(&[0; 5]).is_err());
    }

    #[test]
    fn locator_conversions_both_ways() {
        let v4 = Locator::new("192.0.2.1".parse().unwrap()).with_pref(1, 10);
        let c = shim_locator::from(&v4);
        assert_eq!(i32::from(c.lc_family), libc::AF_INET);
        assert_eq!(
            Ipv6Addr::from(c.lc_addr),
            "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(Locator::try_from(&c), Ok(v4));
        let v6 = Locator {
            addr: "2001:db8::1".parse().unwrap(),
            proto: 17,
            port: 10500,
            prio: 0,
            weight: 65535,
            ifindex: 3,
            flags: 2,
        };
        let c = shim_locator::from(v6);
        assert_eq!(i32::from(c.lc_family), libc::AF_INET6);
        assert_eq!(Locator::try_from(c), Ok(v6));
        // Family/address mismatches and unknown families are rejected.
        let mut bad = shim_locator::from(&v4);
        bad.lc_family = libc::AF_INET6 as u8;
        assert_eq!(Locator::try_from(&bad), Err(StructError::FamilyMismatch));
        let mut bad = shim_locator::from(&v6);
        bad.lc_family = libc::AF_INET as u8;
        assert_eq!(Locator::try_from(&bad), Err(StructError::FamilyMismatch));
        bad.lc_family = 0;
        assert_eq!(Locator::try_from(&bad), Err(StructError::Family(0)));
        assert!(shim_locator::default().is_zero());
        assert!(!c.is_zero());
    }

    #[test]
    fn pathexplore_and_feedback_validation() {
        let mut p = shim_pathexplore::from(PathExplore {
            probenum: 4,
            keepaliveto: 10,
            keepaliveint: 3,
            initprobeto: 500,
        });
        assert_eq!(PathExplore::try_from(p).unwrap().initprobeto, 500);
        p.pe_reserved = 1;
        assert_eq!(PathExplore::try_from(p), Err(StructError::Reserved));
        for d in 0..=255u8 {
            for i in 0..=255u8 {
                let f = shim_feedback {
                    fb_direction: d,
                    fb_indicator: i,
                    fb_reserved: 0xffff,
                };
                let r = Feedback::try_from(f);
                assert_eq!(r.is_ok(), d <= 1 && i <= 3, "{d} {i}");
                if let Ok(fb) = r {
                    let back = shim_feedback::from(fb);
                    assert_eq!((back.fb_direction, back.fb_indicator), (d, i));
                }
            }
        }
    }
}
