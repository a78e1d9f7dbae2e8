//! The HIT/LSI TUN device (`hip0`).
//!
//! Created with `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`); addresses, MTU and
//! link state are set with `ip(8)`. Each local HIT gets `HIT/28` (which
//! installs the ORCHIDv2 route 2001:20::/28 on the device; all but the
//! default HIT are added with `preferred_lft 0`, so source address selection
//! picks the default HIT) and each local
//! LSI `LSI/8` (route 1.0.0.0/8). The device is not persistent: it, its
//! addresses and its routes disappear when the daemon closes the fd (also
//! on a crash), so a restart starts cleanly.
//!
//! # Offloads
//!
//! The device is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD`
//! (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`), so the kernel hands the daemon
//! TCP segments of up to 64 KiB (one read instead of one per MTU-sized
//! packet) and leaves checksums to it. [`Tun::recv_segments`] splits such
//! a superpacket back into MTU-sized TCP segments (the IP and TCP headers
//! repeated, lengths, IPv4 identification, sequence numbers and flags
//! adjusted, checksums computed) and completes checksums the kernel left
//! partial, so everything after it sees ordinary, complete packets. If the
//! kernel refuses the offloads, the device still carries the 10-byte
//! virtio header (no GSO, no partial checksums).
//!
//! Writes go through [`Gro`]: a single packet carries a virtio header with
//! `VIRTIO_NET_HDR_F_DATA_VALID` (every packet written was authenticated by
//! ESP, so the kernel does not verify the inner transport checksum again);
//! a run of consecutive TCP segments of one flow from one receive batch is
//! written as one GSO packet (receive-side coalescing, like GRO), so the
//! kernel's TCP receives (and acknowledges) one large segment instead of
//! dozens.
//!
//! # Queues
//!
//! With more than one queue the device is created with `IFF_MULTI_QUEUE`
//! and one file descriptor per queue; the kernel spreads the flows sent
//! into the device over the queues by flow hash, and the daemon reads each
//! queue in its own thread, so several flows are sealed on several cores.
//! Writes (decrypted packets) may go to any queue. If the kernel refuses a
//! multi-queue device, one queue is used.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, bail};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// Length of the virtio-net header in front of every packet on the device.
pub const VNET_HDR_LEN: usize = 10;
const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const PROTO_TCP: u8 = 6;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    /// One file per queue (at least one).
    queues: Vec<File>,
    name: String,
    /// The kernel accepted TSO/checksum offload.
    offload: bool,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip(8)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Opens /dev/net/tun and attaches it to `name` (creating the device if
/// needed); `multi`: as one queue of a multi-queue device.
fn attach(name: &str, multi: bool) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | if multi { IFF_MULTI_QUEUE } else { 0 },
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its
    // layout (16-byte name, flags, padding to 40 bytes) and lives for the
    // duration of the call; the fd is a valid open /dev/net/tun.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
    }
    Ok(file)
}

impl Tun {
    /// Creates (or attaches to) the device `name` with `queues` queues
    /// (at least one; see the module docs), assigns the addresses and
    /// brings it up with `mtu`.
    pub fn create(
        name: &str,
        hits: &[Ipv6Addr],
        lsis: &[Ipv4Addr],
        mtu: u32,
        queues: usize,
    ) -> anyhow::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            bail!("bad interface name {name:?}");
        }
        let mut files = Vec::new();
        let multi = queues > 1;
        match attach(name, multi) {
            Ok(f) => files.push(f),
            Err(e) if multi => {
                tracing::info!(error = %e, "multi-queue TUN refused; using one queue");
                files.push(attach(name, false)?);
            }
            Err(e) => return Err(e),
        }
        if multi && files.len() == 1 {
            for _ in 1..queues {
                match attach(name, true) {
                    Ok(f) => files.push(f),
                    Err(e) => {
                        tracing::info!(error = %e, queues = files.len(), "no more TUN queues");
                        break;
                    }
                }
            }
        }
        let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes the offload flags as the integer
        // argument itself (no pointer); each fd is an attached TUN queue.
        let offload = files
            .iter()
            .all(|f| unsafe { libc::ioctl(f.as_raw_fd(), TUNSETOFFLOAD, flags) } == 0);
        let tun = Tun {
            queues: files,
            name: name.to_string(),
            offload,
        };
        // No IPv6 autoconfiguration / router solicitations on the HIT device.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string()])?;
        for (i, h) in hits.iter().enumerate() {
            let cidr = format!("{h}/28");
            let mut args = vec!["-6", "addr", "add", cidr.as_str(), "dev", name, "nodad"];
            if i > 0 {
                // Only the default HIT is preferred, so the kernel picks it
                // as the source towards peer HITs.
                args.extend(["preferred_lft", "0"]);
            }
            ip(&args)?;
        }
        for l in lsis {
            ip(&["addr", "add", &format!("{l}/8"), "dev", name])?;
        }
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(tun)
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queues (one reading thread each).
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether TSO/checksum offload is on.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Reads one packet or GSO superpacket (blocking) into `raw` and splits
    /// it into complete packets in `segs` (cleared first). A packet that
    /// cannot be split (unknown GSO type, malformed headers) yields an
    /// error of kind `InvalidData`; the caller drops it and reads on.
    pub fn recv_segments(
        &self,
        queue: usize,
        raw: &mut [u8],
        segs: &mut Segments,
    ) -> std::io::Result<()> {
        segs.clear();
        let Some(file) = self.queues.get(queue).or(self.queues.first()) else {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        };
        let n = (&*file).read(raw)?;
        let pkt = raw.get(..n).unwrap_or(&[]);
        let (hdr, body) = match pkt.split_first_chunk::<VNET_HDR_LEN>() {
            Some((h, b)) => (VnetHdr::parse(h), b),
            None => return Err(std::io::Error::from(std::io::ErrorKind::InvalidData)),
        };
        split(&hdr, body, segs).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes `pkt` with the virtio header `hdr`; errors are only traced
    /// (the device drops what it cannot take, like a full queue).
    /// Writes one complete packet (the kernel verifies its checksums).
    pub fn write_packet(&self, pkt: &[u8]) {
        self.write_with(&VnetHdr::default(), pkt);
    }

    fn write_with(&self, hdr: &VnetHdr, pkt: &[u8]) {
        let h = hdr.encode();
        let Some(file) = self.queues.first() else {
            return;
        };
        if let Err(e) = (&*file).write_vectored(&[IoSlice::new(&h), IoSlice::new(pkt)]) {
            tracing::trace!(error = %e, "TUN write failed");
        }
    }
}

/// Receive-side coalescing: consecutive in-order TCP segments of one flow
/// (identical IP and TCP headers but for lengths, IPv4 identification,
/// sequence number and checksums; flags ACK, PSH allowed only on the last;
/// no IPv6 extension headers, no IPv4 options or fragments) are written to
/// the device as one GSO packet of up to 64 KiB with `gso_size` equal to
/// the first segment's payload; a shorter segment or PSH ends the run.
/// Everything else is written as it is. Call [`Gro::flush`] when a batch
/// of received packets is done.
#[derive(Debug, Default)]
pub struct Gro {
    buf: Vec<u8>,
    count: usize,
    v6: bool,
    ip_len: usize,
    hlen: usize,
    mss: usize,
    next_seq: u32,
    closed: bool,
}

/// Headers of a coalescable TCP segment.
#[derive(Debug, Clone, Copy)]
struct TcpSeg {
    v6: bool,
    ip_len: usize,
    hlen: usize,
    seq: u32,
    flags: u8,
    payload: usize,
}

const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Largest packet written to the device.
const GRO_MAX: usize = 65535;

fn tcp_seg(p: &[u8]) -> Option<TcpSeg> {
    let first = *p.first()?;
    let (v6, ip_len) = match first >> 4 {
        6 => {
            if *p.get(6)? != PROTO_TCP {
                return None;
            }
            let pl = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
            if pl + 40 != p.len() {
                return None;
            }
            (true, 40)
        }
        4 => {
            if first != 0x45 || *p.get(9)? != PROTO_TCP {
                return None;
            }
            let tl = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
            // No fragments: MF clear and offset zero (DF may be set).
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x3fff;
            if tl != p.len() || frag != 0 {
                return None;
            }
            (false, 20)
        }
        _ => return None,
    };
    let doff = usize::from(*p.get(ip_len + 12)? >> 4) * 4;
    if doff < 20 {
        return None;
    }
    let hlen = ip_len + doff;
    let payload = p.len().checked_sub(hlen)?;
    let flags = *p.get(ip_len + 13)?;
    if payload == 0 || (flags != TCP_ACK && flags != TCP_ACK | TCP_PSH) {
        return None;
    }
    let seq = u32::from_be_bytes(p.get(ip_len + 4..ip_len + 8)?.try_into().ok()?);
    Some(TcpSeg {
        v6,
        ip_len,
        hlen,
        seq,
        flags,
        payload,
    })
}

/// The header bytes that must be equal for two segments to merge.
fn same_flow(a: &[u8], b: &[u8], v6: bool, ip_len: usize, hlen: usize) -> bool {
    let eq = |r: std::ops::Range<usize>| a.get(r.clone()).is_some() && a.get(r.clone()) == b.get(r);
    let ip = if v6 {
        eq(0..4) && eq(6..40)
    } else {
        eq(0..2) && eq(6..10) && eq(12..20)
    };
    // Ports, ACK number, data offset, window, urgent pointer, options.
    let t = ip_len;
    ip && eq(t..t + 4) && eq(t + 8..t + 13) && eq(t + 14..t + 16) && eq(t + 18..hlen)
}

impl Gro {
    /// Adds a complete packet; writes whatever it cannot merge.
    pub fn push(&mut self, tun: &Tun, pkt: &[u8]) {
        self.push_to(pkt, &mut |h, p| tun.write_with(h, p));
    }

    /// Writes the pending run, if any.
    pub fn flush(&mut self, tun: &Tun) {
        self.flush_to(&mut |h, p| tun.write_with(h, p));
    }

    fn flush_to(&mut self, w: &mut dyn FnMut(&VnetHdr, &[u8])) {
        if let Some((hdr, pkt)) = self.take() {
            w(&hdr, pkt);
        }
    }

    fn push_to(&mut self, pkt: &[u8], w: &mut dyn FnMut(&VnetHdr, &[u8])) {
        let Some(seg) = tcp_seg(pkt) else {
            self.flush_to(w);
            w(&DATA_VALID, pkt);
            return;
        };
        if self.count > 0
            && !self.closed
            && seg.v6 == self.v6
            && seg.hlen == self.hlen
            && seg.seq == self.next_seq
            && seg.payload <= self.mss
            && self.buf.len() + seg.payload <= GRO_MAX
            && same_flow(&self.buf, pkt, seg.v6, seg.ip_len, seg.hlen)
            && let Some(data) = pkt.get(seg.hlen..)
        {
            self.buf.extend_from_slice(data);
            self.count += 1;
            self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
            if seg.payload < self.mss || seg.flags & TCP_PSH != 0 {
                self.closed = true;
                if let Some(f) = self.buf.get_mut(seg.ip_len + 13) {
                    *f |= seg.flags & TCP_PSH;
                }
            }
            return;
        }
        self.flush_to(w);
        self.buf.clear();
        self.buf.extend_from_slice(pkt);
        self.count = 1;
        self.v6 = seg.v6;
        self.ip_len = seg.ip_len;
        self.hlen = seg.hlen;
        self.mss = seg.payload;
        self.next_seq = seg.seq.wrapping_add(seg.payload as u32);
        self.closed = seg.flags & TCP_PSH != 0;
    }

    /// Finishes the pending run: the packet to write and its virtio header.
    fn take(&mut self) -> Option<(VnetHdr, &[u8])> {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return None;
        }
        if count == 1 {
            return Some((DATA_VALID, &self.buf));
        }
        let total = self.buf.len();
        let ip_len = self.ip_len;
        let (ip, tcp) = self.buf.split_at_mut_checked(ip_len)?;
        if self.v6 {
            let pl = u16::try_from(total - 40).ok()?;
            ip.get_mut(4..6)?.copy_from_slice(&pl.to_be_bytes());
        } else {
            let tl = u16::try_from(total).ok()?;
            ip.get_mut(2..4)?.copy_from_slice(&tl.to_be_bytes());
            ipv4_header_checksum(ip);
        }
        // CHECKSUM_PARTIAL: the field holds the (uncomplemented) pseudo-header sum.
        let mut acc = if self.v6 {
            sum16(0, ip.get(8..40)?)
        } else {
            sum16(0, ip.get(12..20)?)
        };
        acc += u64::from(PROTO_TCP) + tcp.len() as u64;
        tcp.get_mut(16..18)?
            .copy_from_slice(&fold(acc).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: u16::try_from(self.hlen).ok()?,
            gso_size: u16::try_from(self.mss).ok()?,
            csum_start: u16::try_from(ip_len).ok()?,
            csum_offset: 16,
        };
        Some((hdr, &self.buf))
    }
}

/// Header of a single complete packet written to the device.
const DATA_VALID: VnetHdr = VnetHdr {
    flags: F_DATA_VALID,
    gso_type: GSO_NONE,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

/// The virtio-net header (native byte order, which TUN uses by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (IP + transport).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the 10 header bytes.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_ne_bytes([b[2], b[3]]),
            gso_size: u16::from_ne_bytes([b[4], b[5]]),
            csum_start: u16::from_ne_bytes([b[6], b[7]]),
            csum_offset: u16::from_ne_bytes([b[8], b[9]]),
        }
    }

    /// The 10 header bytes.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Complete packets split from one read, stored back to back.
#[derive(Debug, Default)]
pub struct Segments {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl Segments {
    /// Empties the set (keeps the allocation).
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    /// Number of packets.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(p) => *self.ends.get(p)?,
            None => 0,
        };
        Some(start..end)
    }

    /// Packet `i`.
    #[cfg(test)]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.data.get(self.range(i)?)
    }

    /// Packet `i`, writable.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let r = self.range(i)?;
        self.data.get_mut(r)
    }

    fn push(&mut self, parts: &[&[u8]]) -> usize {
        let start = self.data.len();
        for p in parts {
            self.data.extend_from_slice(p);
        }
        self.ends.push(self.data.len());
        start
    }
}

/// Why a packet read from the device could not be turned into packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// GSO type other than TCP over IPv4/IPv6.
    #[error("unsupported GSO type {0}")]
    GsoType(u8),
    /// IP or TCP header truncated or inconsistent.
    #[error("malformed headers in an offloaded packet")]
    Malformed,
    /// Partial checksum position outside the packet.
    #[error("checksum position outside the packet")]
    CsumOutOfRange,
}

/// Ones' complement sum of `b` (not folded, not complemented) added to `acc`.
fn sum16(mut acc: u64, b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut it = rest.chunks(2);
    for c in &mut it {
        let hi = c.first().copied().unwrap_or(0);
        let lo = c.get(1).copied().unwrap_or(0);
        acc += u64::from(u16::from_be_bytes([hi, lo]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Internet checksum of the IPv4/IPv6 pseudo header for `proto` and
/// `len`, plus `seg` (whose checksum field must be zero).
fn l4_checksum(ip: &[u8], v6: bool, proto: u8, seg: &[u8]) -> Option<u16> {
    let mut acc = 0u64;
    if v6 {
        acc = sum16(acc, ip.get(8..40)?);
    } else {
        acc = sum16(acc, ip.get(12..20)?);
    }
    acc += u64::from(proto);
    acc += seg.len() as u64;
    acc = sum16(acc, seg);
    Some(!fold(acc))
}

fn ipv4_header_checksum(h: &mut [u8]) {
    if let Some(c) = h.get_mut(10..12) {
        c.copy_from_slice(&[0, 0]);
    }
    let c = !fold(sum16(0, h));
    if let Some(f) = h.get_mut(10..12) {
        f.copy_from_slice(&c.to_be_bytes());
    }
}

/// Splits what the device delivered (`hdr`, `pkt`) into complete packets
/// appended to `segs`. Never panics on any input.
pub fn split(hdr: &VnetHdr, pkt: &[u8], segs: &mut Segments) -> Result<(), SplitError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let start = segs.push(&[pkt]);
        if hdr.flags & F_NEEDS_CSUM != 0 {
            // The checksum field holds the pseudo-header sum; summing from
            // csum_start to the end completes it.
            let cs = usize::from(hdr.csum_start);
            let at = cs + usize::from(hdr.csum_offset);
            let i = segs.len() - 1;
            let p = segs.get_mut(i).ok_or(SplitError::Malformed)?;
            if at + 2 > p.len() || cs > p.len() {
                segs.ends.pop();
                segs.data.truncate(start);
                return Err(SplitError::CsumOutOfRange);
            }
            let c = !fold(sum16(0, p.get(cs..).unwrap_or(&[])));
            // A UDP checksum of zero means "none"; send 0xffff instead.
            let c = if c == 0 { 0xffff } else { c };
            if let Some(f) = p.get_mut(at..at + 2) {
                f.copy_from_slice(&c.to_be_bytes());
            }
        }
        return Ok(());
    }
    let v6 = match gso {
        GSO_TCPV4 => false,
        GSO_TCPV6 => true,
        other => return Err(SplitError::GsoType(other)),
    };
    let first = *pkt.first().ok_or(SplitError::Malformed)?;
    let ip_len = if v6 {
        if first >> 4 != 6 || pkt.get(6) != Some(&PROTO_TCP) {
            return Err(SplitError::Malformed);
        }
        40
    } else {
        if first >> 4 != 4 || pkt.get(9) != Some(&PROTO_TCP) {
            return Err(SplitError::Malformed);
        }
        usize::from(first & 0x0f) * 4
    };
    if ip_len < 20 {
        return Err(SplitError::Malformed);
    }
    let doff = usize::from(pkt.get(ip_len + 12).ok_or(SplitError::Malformed)? >> 4) * 4;
    if doff < 20 {
        return Err(SplitError::Malformed);
    }
    let hlen = ip_len + doff;
    let headers = pkt.get(..hlen).ok_or(SplitError::Malformed)?;
    let payload = pkt.get(hlen..).ok_or(SplitError::Malformed)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SplitError::Malformed);
    }
    let seq0 = u32::from_be_bytes(
        pkt.get(ip_len + 4..ip_len + 8)
            .and_then(|s| s.try_into().ok())
            .ok_or(SplitError::Malformed)?,
    );
    let id0 = u16::from_be_bytes([
        pkt.get(4).copied().unwrap_or(0),
        pkt.get(5).copied().unwrap_or(0),
    ]);
    let flags0 = *pkt.get(ip_len + 13).ok_or(SplitError::Malformed)?;
    let count = payload.len().div_ceil(mss).max(1);
    let empty: [&[u8]; 1] = [&[]];
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if payload.is_empty() {
        Box::new(empty.into_iter())
    } else {
        Box::new(payload.chunks(mss))
    };
    for (i, chunk) in chunks.enumerate() {
        let start = segs.push(&[headers, chunk]);
        let Some(p) = segs.data.get_mut(start..) else {
            return Err(SplitError::Malformed);
        };
        let total = p.len();
        let (ip, tcp) = p.split_at_mut(ip_len);
        if v6 {
            let pl = u16::try_from(total - 40).map_err(|_| SplitError::Malformed)?;
            ip[4..6].copy_from_slice(&pl.to_be_bytes());
        } else {
            let tl = u16::try_from(total).map_err(|_| SplitError::Malformed)?;
            ip[2..4].copy_from_slice(&tl.to_be_bytes());
            let id = id0.wrapping_add(i as u16);
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ipv4_header_checksum(ip);
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        let mut fl = flags0;
        if i + 1 < count {
            fl &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            fl &= !0x80; // CWR only on the first
        }
        tcp[13] = fl;
        tcp[16..18].copy_from_slice(&[0, 0]);
        let c = l4_checksum(ip, v6, PROTO_TCP, tcp).ok_or(SplitError::Malformed)?;
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO_UDP: u8 = 17;

    /// Verifies the transport checksum of a complete packet.
    fn l4_ok(p: &[u8]) -> bool {
        let (v6, ip_len, proto) = if p[0] >> 4 == 6 {
            (true, 40, p[6])
        } else {
            (false, usize::from(p[0] & 0xf) * 4, p[9])
        };
        let seg = &p[ip_len..];
        let mut acc = sum16(0, if v6 { &p[8..40] } else { &p[12..20] });
        acc += u64::from(proto) + seg.len() as u64;
        fold(sum16(acc, seg)) == 0xffff
    }

    fn tcp_packet(v6: bool, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = Vec::new();
        if v6 {
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&0u16.to_be_bytes()); // kernel leaves GSO lengths open
            p.extend_from_slice(&[PROTO_TCP, 64]);
            p.extend_from_slice(&[
                0x20, 0x01, 0x00, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ]);
            p.extend_from_slice(&[
                0x20, 0x01, 0x00, 0x22, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13,
            ]);
        } else {
            p.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, PROTO_TCP, 0, 0]);
            p.extend_from_slice(&[1, 0, 0, 1, 1, 0, 0, 2]);
        }
        // TCP: ports, seq 0xfffffff0 (wraps), ack, doff 8 (12 bytes options).
        p.extend_from_slice(&[0x1f, 0x90, 0xc3, 0x50]);
        p.extend_from_slice(&0xffff_fff0u32.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&[0x80, flags, 0x10, 0x00, 0xaa, 0xbb, 0, 0]);
        p.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    fn gso(v6: bool, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: if v6 { 72 } else { 52 },
            gso_size: mss,
            csum_start: if v6 { 40 } else { 20 },
            csum_offset: 16,
        }
    }

    #[test]
    fn splits_tcp_superpackets() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for v6 in [true, false] {
            let ip_len = if v6 { 40 } else { 20 };
            // PSH|FIN|CWR|ACK on the superpacket.
            let pkt = tcp_packet(v6, &payload, 0x80 | 0x10 | 0x08 | 0x01);
            let mut segs = Segments::default();
            split(&gso(v6, 1388), &pkt, &mut segs).unwrap();
            assert_eq!(segs.len(), 4);
            let mut joined = Vec::new();
            for i in 0..segs.len() {
                let s = segs.get(i).unwrap();
                let data = &s[ip_len + 32..];
                assert_eq!(data.len(), if i < 3 { 1388 } else { 5000 - 3 * 1388 });
                joined.extend_from_slice(data);
                assert!(l4_ok(s), "segment {i} v6={v6} checksum");
                let tcp = &s[ip_len..];
                let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
                assert_eq!(seq, 0xffff_fff0u32.wrapping_add(i as u32 * 1388));
                let fl = tcp[13];
                assert_eq!(fl & 0x10, 0x10);
                assert_eq!(fl & 0x09 != 0, i == 3, "FIN/PSH only last");
                assert_eq!(fl & 0x80 != 0, i == 0, "CWR only first");
                if v6 {
                    let pl = u16::from_be_bytes([s[4], s[5]]);
                    assert_eq!(usize::from(pl), s.len() - 40);
                } else {
                    assert_eq!(usize::from(u16::from_be_bytes([s[2], s[3]])), s.len());
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
                    assert_eq!(fold(sum16(0, &s[..20])), 0xffff, "IPv4 header checksum");
                }
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn completes_partial_checksums() {
        // A UDP/IPv6 datagram whose checksum field holds the pseudo-header sum.
        let mut p = vec![0x60, 0, 0, 0, 0, 13, PROTO_UDP, 64];
        p.extend_from_slice(&[
            0x20, 0x01, 0x00, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ]);
        p.extend_from_slice(&[
            0x20, 0x01, 0x00, 0x22, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13,
        ]);
        p.extend_from_slice(&[
            0x30, 0x39, 0x00, 0x35, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ]);
        let mut acc = sum16(0, &p[8..40]);
        acc += u64::from(PROTO_UDP) + 13;
        let partial = fold(acc);
        p[46..48].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 40,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut segs = Segments::default();
        split(&hdr, &p, &mut segs).unwrap();
        assert_eq!(segs.len(), 1);
        assert!(l4_ok(segs.get(0).unwrap()));
        // Without NEEDS_CSUM the packet is passed on untouched.
        split(&VnetHdr::default(), &p, &mut segs).unwrap();
        assert_eq!(segs.get(1).unwrap(), &p[..]);
        // A checksum position beyond the packet is an error and adds nothing.
        let bad = VnetHdr {
            csum_offset: 100,
            ..hdr
        };
        assert_eq!(split(&bad, &p, &mut segs), Err(SplitError::CsumOutOfRange));
        assert_eq!(segs.len(), 2);
    }

    #[test]
    fn vnet_header_roundtrip() {
        let h = gso(true, 1388);
        assert_eq!(VnetHdr::parse(&h.encode()), h);
    }

    #[test]
    fn hostile_input_never_panics() {
        let pkt = tcp_packet(true, &[9u8; 3000], 0x10);
        let mut segs = Segments::default();
        for n in 0..pkt.len() {
            for mss in [0u16, 1, 7, 1388, 65535] {
                let _ = split(&gso(true, mss), &pkt[..n], &mut segs);
                let _ = split(&gso(false, mss), &pkt[..n], &mut segs);
            }
        }
        // Pseudo-random headers and bytes.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(f) = b.first_mut() {
                *f = if next() % 2 == 0 { 0x60 } else { 0x45 };
            }
            let h: [u8; VNET_HDR_LEN] = std::array::from_fn(|_| next() as u8);
            let mut hdr = VnetHdr::parse(&h);
            hdr.gso_type = [GSO_NONE, GSO_TCPV4, GSO_TCPV6, 3, 5][(next() % 5) as usize];
            segs.clear();
            let _ = split(&hdr, &b, &mut segs);
        }
        assert_eq!(
            split(
                &VnetHdr {
                    gso_type: 3,
                    ..VnetHdr::default()
                },
                &pkt,
                &mut segs
            ),
            Err(SplitError::GsoType(3))
        );
    }

    fn seg_at(seq_off: u32, len: usize, flags: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..len).map(|i| (i as u32 + seq_off) as u8).collect();
        let mut p = tcp_packet(true, &payload, flags);
        let pl = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&pl.to_be_bytes());
        let seq = 0xffff_fff0u32.wrapping_add(seq_off);
        p[44..48].copy_from_slice(&seq.to_be_bytes());
        p
    }

    #[test]
    fn gro_merges_runs_and_splits_back() {
        let mut gro = Gro::default();
        let mut written: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
        let mut w = |h: &VnetHdr, p: &[u8]| written.push((*h, p.to_vec()));
        let a = seg_at(0, 1000, TCP_ACK);
        let b = seg_at(1000, 1000, TCP_ACK);
        let c = seg_at(2000, 400, TCP_ACK | TCP_PSH);
        let d = seg_at(2400, 1000, TCP_ACK); // after PSH: a new run
        let e = seg_at(5000, 1000, TCP_ACK); // gap: a new run
        for p in [&a, &b, &c, &d, &e] {
            gro.push_to(p, &mut w);
        }
        gro.flush_to(&mut w);
        assert_eq!(written.len(), 3);
        let (h, p) = &written[0];
        assert_eq!(h.gso_type, GSO_TCPV6);
        assert_eq!(h.flags, F_NEEDS_CSUM);
        assert_eq!(usize::from(h.gso_size), 1000);
        assert_eq!((h.hdr_len, h.csum_start, h.csum_offset), (72, 40, 16));
        assert_eq!(p.len(), 72 + 2400);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
        assert_eq!(p[53] & TCP_PSH, TCP_PSH);
        // What the kernel would do with it: segment again.
        let mut segs = Segments::default();
        split(h, p, &mut segs).unwrap();
        assert_eq!(segs.len(), 3);
        for (i, orig) in [&a, &b, &c].into_iter().enumerate() {
            let s = segs.get(i).unwrap();
            assert_eq!(&s[72..], &orig[72..]);
            assert_eq!(&s[44..48], &orig[44..48], "sequence number");
            assert!(l4_ok(s));
        }
        // Single packets go out unchanged, marked as checked.
        for (i, orig) in [(1, &d), (2, &e)] {
            assert_eq!(written[i].0, DATA_VALID);
            assert_eq!(&written[i].1, orig);
        }
    }

    #[test]
    fn gro_passes_other_packets_in_order() {
        let mut gro = Gro::default();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut w = |_: &VnetHdr, p: &[u8]| written.push(p.to_vec());
        let a = seg_at(0, 1000, TCP_ACK);
        let b = seg_at(1000, 1000, TCP_ACK);
        let syn = seg_at(2000, 0, 0x02);
        let mut other_flow = seg_at(2000, 1000, TCP_ACK);
        other_flow[41] ^= 1; // different source port
        let bigger = seg_at(3000, 1200, TCP_ACK); // larger than the run's size
        for p in [&a, &syn, &b, &other_flow, &bigger] {
            gro.push_to(p, &mut w);
        }
        // Garbage never panics and is passed through.
        gro.push_to(&[0x60, 1, 2], &mut w);
        gro.push_to(&[], &mut w);
        gro.flush_to(&mut w);
        let garbage: [&[u8]; 2] = [&[0x60, 1, 2], &[]];
        let mut want = vec![a, syn, b, other_flow, bigger];
        want.extend(garbage.iter().map(|g| g.to_vec()));
        assert_eq!(written, want);
    }
}
