//! Underlay sockets: raw IP protocol 139 (HIP) and 50 (ESP) for IPv4 and
//! IPv6, and UDP port 10500 (RFC 5770/9028 framing) for both families.
//!
//! * IPv6 raw sockets deliver the payload without the IP header; the
//!   destination address comes from `IPV6_PKTINFO`, the hop limit from
//!   `IPV6_HOPLIMIT`. IPv4 raw sockets deliver the IP header, which is parsed
//!   (and checked) here.
//! * The source address of every packet we send is set with `IPV6_PKTINFO` /
//!   `IP_PKTINFO`; when the engine leaves it open, the kernel's route lookup
//!   chooses it ([`route_source`]).
//! * UDP: a datagram starting with four zero bytes is HIP control (the
//!   marker is stripped), anything else is ESP (the SPI is never zero).
//!
//! The kernel has no ESP here, so a raw `IPPROTO_ESP` socket receives every
//! ESP packet addressed to the host and the kernel answers none of them.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use nix::sys::socket::{
    self, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6, SockaddrStorage,
    setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

/// HIP's IP protocol number.
pub const PROTO_HIP: i32 = 139;
/// ESP's IP protocol number.
pub const PROTO_ESP: i32 = 50;
/// The HIP UDP port (RFC 9028).
pub const HIP_UDP_PORT: u16 = 10500;

/// What a socket carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HIP control, raw protocol 139.
    Hip,
    /// ESP, raw protocol 50.
    Esp,
    /// UDP 10500 (both).
    Udp,
}

/// One underlay socket.
#[derive(Debug)]
pub struct USock {
    fd: OwnedFd,
    /// What it carries.
    pub kind: Kind,
    /// Address family is IPv6.
    pub v6: bool,
    /// UDP segmentation offload (`UDP_SEGMENT`) is usable: set for UDP
    /// sockets, cleared for good when the kernel refuses a GSO send.
    gso: AtomicBool,
    /// A send failed since [`USock::take_send_error`] last asked. The error
    /// a send returns may be the socket's pending ICMP error (`sk_err`,
    /// e.g. `EMSGSIZE` after a Packet Too Big), which the receiving thread
    /// then never sees, so the sender reads the error queue.
    send_error: AtomicBool,
}

/// A received datagram.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (ours).
    pub dst: IpAddr,
    /// Source port (UDP), 0 otherwise.
    pub src_port: u16,
    /// Outer TTL / hop limit.
    pub hop_limit: u8,
    /// Offset of the payload in the buffer (IPv4 raw: after the header).
    pub offset: usize,
    /// Payload length.
    pub len: usize,
    /// Length of each datagram in the payload: UDP receive offload
    /// (`UDP_GRO`) can hand over several datagrams of one flow at once, all
    /// `stride` bytes long except a shorter last one. Equal to `len` when
    /// the payload is one datagram.
    pub stride: usize,
}

impl RecvMeta {
    /// The datagrams in `payload` (the `offset..offset + len` slice of the
    /// receive buffer).
    pub fn datagrams<'a>(&self, payload: &'a [u8]) -> std::slice::Chunks<'a, u8> {
        payload.chunks(self.stride.max(1))
    }
}

/// Most datagrams in one UDP segmentation offload send (the kernel's
/// `UDP_MAX_SEGMENTS` is 64 on older kernels, 128 on newer ones).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one UDP segmentation offload send (a UDP payload must fit
/// in one IPv4 or IPv6 packet before segmentation).
pub const GSO_MAX_BYTES: usize = 65_000;

/// Datagrams per `sendmmsg(2)` call.
pub const SEND_BATCH: usize = 64;

/// One datagram for [`USock::send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct OutMsg<'a> {
    /// Source address (`None`: the kernel chooses).
    pub src: Option<IpAddr>,
    /// Destination.
    pub dst: IpAddr,
    /// Destination port (UDP), 0 for raw sockets.
    pub port: u16,
    /// Payload.
    pub data: &'a [u8],
}

/// What an error-queue entry ([`USock::drain_errors`]) says about a packet
/// we sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Too big for the path (ICMPv6 Packet Too Big, ICMP Fragmentation
    /// Needed: `EMSGSIZE`). The kernel has lowered the destination's path
    /// MTU to `mtu` (`ee_info`) and fragments what follows; the path works.
    TooBig {
        /// The path MTU the message reported.
        mtu: u32,
    },
    /// Time Exceeded during fragment reassembly (ICMPv6 type 3 code 1,
    /// ICMP type 11 code 1): a fragment of one of our packets was lost;
    /// the path works.
    FragmentLost,
    /// Anything else (unreachable, hop limit exceeded, ...), or an entry
    /// without an extended error: the path may be dead.
    Other,
}

/// `SO_EE_ORIGIN_ICMP` and `SO_EE_ORIGIN_ICMP6` (linux/errqueue.h).
const EE_ORIGIN_ICMP: u8 = 2;
const EE_ORIGIN_ICMP6: u8 = 3;

impl SendError {
    /// Classifies a `sock_extended_err` (`None`: the entry had none).
    pub fn of(e: Option<&libc::sock_extended_err>) -> SendError {
        let Some(e) = e else { return SendError::Other };
        let reassembly = match e.ee_origin {
            EE_ORIGIN_ICMP6 => (e.ee_type, e.ee_code) == (3, 1),
            EE_ORIGIN_ICMP => (e.ee_type, e.ee_code) == (11, 1),
            _ => false,
        };
        if e.ee_errno == libc::EMSGSIZE as u32 {
            SendError::TooBig { mtu: e.ee_info }
        } else if reassembly {
            SendError::FragmentLost
        } else {
            SendError::Other
        }
    }
}

/// Why a received datagram was rejected before any protocol processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The IPv4 header is truncated or inconsistent.
    BadIpHeader,
    /// No destination address could be determined.
    NoDestination,
}

fn to_owned(s: Socket) -> OwnedFd {
    s.into()
}

/// Queues ICMP errors about our packets on the socket's error queue
/// ([`USock::drain_errors`]); without it unconnected raw and UDP sockets
/// never hear of them.
fn enable_recverr(fd: &OwnedFd, v6: bool) {
    let r = if v6 {
        setsockopt(fd, sockopt::Ipv6RecvErr, &true)
    } else {
        setsockopt(fd, sockopt::Ipv4RecvErr, &true)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "IP_RECVERR not available; ICMP errors are ignored");
    }
}

/// Longest run of error-queue entries read at once.
const MAX_ERRORS: usize = 64;

impl USock {
    /// Opens a raw socket for `proto` in the family.
    pub fn raw(v6: bool, kind: Kind) -> anyhow::Result<USock> {
        let proto = match kind {
            Kind::Hip => PROTO_HIP,
            Kind::Esp => PROTO_ESP,
            Kind::Udp => unreachable_kind()?,
        };
        let dom = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(dom, Type::RAW, Some(Protocol::from(proto)))
            .with_context(|| format!("raw socket proto {proto} v6={v6}"))?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        let fd = to_owned(s);
        if v6 {
            setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
            setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
        }
        enable_recverr(&fd, v6);
        Ok(USock {
            fd,
            kind,
            v6,
            gso: AtomicBool::new(false),
            send_error: AtomicBool::new(false),
        })
    }

    /// Opens the UDP 10500 socket of a family (IPv6 socket is v6-only).
    pub fn udp(v6: bool, port: u16) -> anyhow::Result<USock> {
        let dom = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(dom, Type::DGRAM, Some(Protocol::UDP))?;
        if v6 {
            s.set_only_v6(true)?;
        }
        s.set_reuse_address(true)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        let addr: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, port).into()
        };
        s.bind(&addr.into())
            .with_context(|| format!("binding UDP port {port}"))?;
        let fd = to_owned(s);
        if v6 {
            setsockopt(&fd, sockopt::Ipv6RecvPacketInfo, &true)?;
            setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)?;
        } else {
            setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
        }
        enable_recverr(&fd, v6);
        // Receive offload: a burst of ESP datagrams of one flow arrives as
        // one buffer (see RecvMeta::stride). Optional: without it every
        // datagram is read on its own.
        if let Err(e) = setsockopt(&fd, sockopt::UdpGroSegment, &true) {
            tracing::info!(error = %e, "UDP_GRO not available");
        }
        Ok(USock {
            fd,
            kind: Kind::Udp,
            v6,
            gso: AtomicBool::new(true),
            send_error: AtomicBool::new(false),
        })
    }

    /// Sends `parts` (concatenated) to `dst` (port for UDP) from `src`.
    pub fn send(
        &self,
        src: Option<IpAddr>,
        dst: IpAddr,
        port: u16,
        parts: &[&[u8]],
    ) -> std::io::Result<usize> {
        self.send_seg(src, dst, port, parts, None)
    }

    /// Whether a send failed since the last call (see `send_error`).
    pub fn take_send_error(&self) -> bool {
        self.send_error.load(Ordering::Relaxed) && self.send_error.swap(false, Ordering::Relaxed)
    }

    /// Notes a failed send whose `errno` may be a pending ICMP error the
    /// send consumed; the kernel's own refusals (a segment larger than the
    /// route allows offloading, no buffer space, ...) never are.
    fn note_send_error(&self, errno: i32) {
        if !matches!(
            errno,
            libc::EINVAL
                | libc::ENOBUFS
                | libc::EAGAIN
                | libc::EIO
                | libc::EINTR
                | libc::ENOMEM
                | libc::EOPNOTSUPP
                | libc::ENOPROTOOPT
        ) {
            self.send_error.store(true, Ordering::Relaxed);
        }
    }

    /// Whether [`USock::send_segments`] can be used.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends `data`, a run of datagrams of `seg` bytes each (the last may be
    /// shorter), to one destination with one `sendmsg` and UDP segmentation
    /// offload: the kernel splits it, so the per-datagram cost of the stack
    /// is paid once per run. At most [`GSO_MAX_SEGMENTS`] datagrams and
    /// [`GSO_MAX_BYTES`] bytes. When the kernel cannot offload this run
    /// ([`offload_refused`]: e.g. `EINVAL` when a segment does not fit the
    /// route's MTU) the caller sends it with [`USock::send_batch`]; when it
    /// cannot offload at all (`EIO`, `ENOPROTOOPT`, `EOPNOTSUPP`), offload
    /// is also turned off for the socket.
    pub fn send_segments(
        &self,
        src: Option<IpAddr>,
        dst: IpAddr,
        port: u16,
        data: &[u8],
        seg: u16,
    ) -> std::io::Result<usize> {
        let r = self.send_seg(src, dst, port, &[data], Some(seg));
        if let Err(e) = &r
            && matches!(
                e.raw_os_error(),
                Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
            )
        {
            tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
            self.gso.store(false, Ordering::Relaxed);
        }
        r
    }

    fn send_seg(
        &self,
        src: Option<IpAddr>,
        dst: IpAddr,
        port: u16,
        parts: &[&[u8]],
        seg: Option<u16>,
    ) -> std::io::Result<usize> {
        let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let seg_val = seg.unwrap_or(0);
        let gso_cmsg = seg.map(|_| ControlMessage::UdpGsoSegments(&seg_val));
        let r = match dst {
            IpAddr::V6(d) => {
                let sa = SockaddrIn6::from(std::net::SocketAddrV6::new(d, port, 0, 0));
                match src {
                    Some(IpAddr::V6(s)) => {
                        let info = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: s.octets(),
                            },
                            ipi6_ifindex: 0,
                        };
                        let c = [ControlMessage::Ipv6PacketInfo(&info)];
                        socket::sendmsg(
                            self.fd.as_raw_fd(),
                            &iov,
                            &with_gso(&c, gso_cmsg),
                            MsgFlags::empty(),
                            Some(&sa),
                        )
                    }
                    _ => socket::sendmsg(
                        self.fd.as_raw_fd(),
                        &iov,
                        &with_gso(&[], gso_cmsg),
                        MsgFlags::empty(),
                        Some(&sa),
                    ),
                }
            }
            IpAddr::V4(d) => {
                let sa = SockaddrIn::from(std::net::SocketAddrV4::new(d, port));
                match src {
                    Some(IpAddr::V4(s)) => {
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(s).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        let c = [ControlMessage::Ipv4PacketInfo(&info)];
                        socket::sendmsg(
                            self.fd.as_raw_fd(),
                            &iov,
                            &with_gso(&c, gso_cmsg),
                            MsgFlags::empty(),
                            Some(&sa),
                        )
                    }
                    _ => socket::sendmsg(
                        self.fd.as_raw_fd(),
                        &iov,
                        &with_gso(&[], gso_cmsg),
                        MsgFlags::empty(),
                        Some(&sa),
                    ),
                }
            }
        };
        if let Err(e) = r {
            self.note_send_error(e as i32);
        }
        r.map_err(std::io::Error::from)
    }

    /// Sends several datagrams with `sendmmsg(2)` (one syscall per up to
    /// [`SEND_BATCH`] datagrams); `ok[i]` tells whether `msgs[i]` was
    /// accepted by the kernel. A datagram the kernel refuses is skipped
    /// (its error traced) and the rest are still sent, like separate
    /// [`USock::send`] calls.
    pub fn send_batch(&self, msgs: &[OutMsg<'_>], ok: &mut Vec<bool>) {
        ok.clear();
        ok.resize(msgs.len(), false);
        let mut at = 0;
        while at < msgs.len() {
            let chunk = msgs.get(at..).unwrap_or(&[]);
            let chunk = chunk.get(..chunk.len().min(SEND_BATCH)).unwrap_or(&[]);
            match self.sendmmsg(chunk) {
                Ok(sent) => {
                    for o in ok.iter_mut().skip(at).take(sent) {
                        *o = true;
                    }
                    at += sent.max(1);
                    if sent == 0 {
                        // Nothing accepted and no error: treat the first as lost.
                        tracing::trace!("sendmmsg accepted nothing");
                    }
                }
                Err(e) => {
                    // The first datagram of the chunk failed.
                    tracing::trace!(error = %e, "ESP send failed");
                    at += 1;
                }
            }
        }
    }

    fn sendmmsg(&self, msgs: &[OutMsg<'_>]) -> std::io::Result<usize> {
        /// Room for one `cmsghdr` with an `in6_pktinfo` (or `in_pktinfo`).
        #[repr(C, align(8))]
        #[derive(Clone, Copy)]
        struct CmsgBuf([u8; 64]);
        let n = msgs.len();
        let addrs: Vec<socket2::SockAddr> = msgs
            .iter()
            .map(|m| socket2::SockAddr::from(SocketAddr::new(m.dst, m.port)))
            .collect();
        let mut iovs: Vec<libc::iovec> = msgs
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.data.as_ptr() as *mut libc::c_void,
                iov_len: m.data.len(),
            })
            .collect();
        let mut cbufs = vec![CmsgBuf([0; 64]); n];
        // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a
        // valid (empty) value.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (i, ((h, m), a)) in hdrs.iter_mut().zip(msgs).zip(&addrs).enumerate() {
            h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len();
            h.msg_hdr.msg_iov = iovs.as_mut_ptr().wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            let Some(cb) = cbufs.get_mut(i) else { continue };
            let (level, ty, data): (i32, i32, Vec<u8>) = match (m.src, m.dst) {
                (Some(IpAddr::V6(s)), IpAddr::V6(_)) => {
                    let mut d = s.octets().to_vec();
                    d.extend_from_slice(&0u32.to_ne_bytes()); // ifindex
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, d)
                }
                (Some(IpAddr::V4(s)), IpAddr::V4(_)) => {
                    let mut d = 0i32.to_ne_bytes().to_vec(); // ifindex
                    d.extend_from_slice(&s.octets()); // ipi_spec_dst
                    d.extend_from_slice(&[0; 4]); // ipi_addr
                    (libc::IPPROTO_IP, libc::IP_PKTINFO, d)
                }
                _ => continue,
            };
            // SAFETY: CMSG_SPACE/CMSG_LEN are pure size computations.
            let (space, len) = unsafe {
                (
                    libc::CMSG_SPACE(data.len() as u32) as usize,
                    libc::CMSG_LEN(data.len() as u32) as usize,
                )
            };
            let hdr_len = len - data.len();
            if space > cb.0.len() {
                continue;
            }
            let ch = libc::cmsghdr {
                cmsg_len: len as _,
                cmsg_level: level,
                cmsg_type: ty,
            };
            // SAFETY: `cb` is 8-byte aligned and at least `space` ≥
            // size_of::<cmsghdr>() bytes long; the write is unaligned-safe.
            unsafe { std::ptr::write_unaligned(cb.0.as_mut_ptr().cast::<libc::cmsghdr>(), ch) };
            if let Some(d) = cb.0.get_mut(hdr_len..hdr_len + data.len()) {
                d.copy_from_slice(&data);
            }
            h.msg_hdr.msg_control = cb.0.as_mut_ptr().cast::<libc::c_void>();
            h.msg_hdr.msg_controllen = space as _;
        }
        // SAFETY: every mmsghdr points into `addrs`, `iovs` and `cbufs`
        // (and the iovecs into `msgs`), all alive and unmoved for the call;
        // `n` is the length of `hdrs`.
        let r =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            self.note_send_error(e.raw_os_error().unwrap_or(0));
            return Err(e);
        }
        if (r as usize) < n {
            // The kernel ends a batch at the first failed datagram and
            // reports the count only: that error may have been the
            // socket's pending ICMP error.
            self.send_error.store(true, Ordering::Relaxed);
        }
        Ok(r as usize)
    }

    /// Reads the socket's error queue (ICMP errors about packets we sent):
    /// the original destination of each failed packet and what the error
    /// says.
    pub fn drain_errors(&self) -> Vec<(IpAddr, SendError)> {
        let mut v = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..MAX_ERRORS {
            // Packet info, hop limit and the extended error (written last):
            // 128 bytes at most for IPv6; room to spare.
            let mut cmsg = nix::cmsg_space!([u8; 256]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let Ok(m) = socket::recvmsg::<SockaddrStorage>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
            ) else {
                break;
            };
            let dst = m.address.and_then(|a| {
                a.as_sockaddr_in6()
                    .map(|s| IpAddr::V6(s.ip()))
                    .or_else(|| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
            });
            if m.flags.contains(MsgFlags::MSG_CTRUNC) {
                tracing::trace!("error queue entry with truncated control messages");
            }
            let err = m.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                socket::ControlMessageOwned::Ipv6RecvErr(e, _)
                | socket::ControlMessageOwned::Ipv4RecvErr(e, _) => Some(e),
                _ => None,
            });
            if let Some(d) = dst {
                v.push((d, SendError::of(err.as_ref())));
            }
        }
        v
    }

    /// Receives up to `batch.len()` datagrams with one `recvmmsg(2)`:
    /// blocks for the first, then takes what is already queued
    /// (`MSG_WAITFORONE`). `batch.meta[i]` describes `batch.bufs[i]` for
    /// `i < n` (the returned count).
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<usize> {
        batch.meta.clear();
        // Fresh headers per call: the kernel shrinks each header's name and
        // control lengths to what it used, and nix's MultiHeaders does not
        // restore them, so reused headers would truncate the next call's
        // control messages (MSG_CTRUNC: no destination address).
        let mut headers = socket::MultiHeaders::<SockaddrStorage>::preallocate(
            batch.bufs.len(),
            Some(batch.cmsg.clone()),
        );
        let got: Vec<(usize, Ancillary)> = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = batch
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            let res = socket::recvmmsg(
                self.fd.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            )
            .map_err(std::io::Error::from)?;
            res.map(|m| (m.bytes, Ancillary::of(&m))).collect()
        };
        for ((n, anc), buf) in got.into_iter().zip(&batch.bufs) {
            let m = self.meta(buf.get(..n).unwrap_or(&[]), anc);
            batch.meta.push(m);
        }
        Ok(batch.meta.len())
    }

    /// The metadata of a received datagram (`data`: the bytes received).
    fn meta(&self, data: &[u8], anc: Ancillary) -> Result<RecvMeta, RecvError> {
        let Ancillary {
            src,
            mut dst,
            mut hop,
            stride,
        } = anc;
        let Some(src) = src else {
            return Err(RecvError::NoDestination);
        };
        let mut offset = 0;
        let mut len = data.len();
        if !self.v6 && self.kind != Kind::Udp {
            // IPv4 raw: the IP header is included.
            let Some(h) = parse_ipv4_header(data) else {
                return Err(RecvError::BadIpHeader);
            };
            offset = h.header_len;
            len = h.total_len - h.header_len;
            dst = Some(IpAddr::V4(h.dst));
            hop = h.ttl;
        }
        let Some(dst) = dst else {
            return Err(RecvError::NoDestination);
        };
        Ok(RecvMeta {
            src: src.ip(),
            dst,
            src_port: src.port(),
            hop_limit: hop,
            offset,
            len,
            stride: stride.map_or(len, |s| s.min(len.max(1))),
        })
    }
}

/// Whether a failed [`USock::send_segments`] should be retried datagram by
/// datagram (the kernel refused the offload, not the datagrams).
pub fn offload_refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// `base` plus the UDP segmentation control message, if any.
fn with_gso<'a>(
    base: &[ControlMessage<'a>],
    gso: Option<ControlMessage<'a>>,
) -> Vec<ControlMessage<'a>> {
    base.iter().copied().chain(gso).collect()
}

/// What the kernel tells about a received datagram besides its bytes.
#[derive(Debug, Clone, Copy)]
struct Ancillary {
    src: Option<SocketAddr>,
    dst: Option<IpAddr>,
    hop: u8,
    stride: Option<usize>,
}

impl Ancillary {
    fn of(m: &socket::RecvMsg<'_, '_, SockaddrStorage>) -> Ancillary {
        let mut a = Ancillary {
            src: None,
            dst: None,
            hop: 64,
            stride: None,
        };
        if let Ok(it) = m.cmsgs() {
            for c in it {
                match c {
                    ControlMessageOwned::Ipv6PacketInfo(i) => {
                        a.dst = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                    }
                    ControlMessageOwned::Ipv4PacketInfo(i) => {
                        a.dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
                    }
                    ControlMessageOwned::Ipv6HopLimit(h) => {
                        a.hop = u8::try_from(h).unwrap_or(64);
                    }
                    ControlMessageOwned::UdpGroSegments(s) => {
                        a.stride = usize::try_from(s).ok().filter(|&s| s > 0);
                    }
                    _ => {}
                }
            }
        }
        a.src = m.address.and_then(|a: SockaddrStorage| {
            if let Some(s6) = a.as_sockaddr_in6() {
                Some(SocketAddr::V6(std::net::SocketAddrV6::from(*s6)))
            } else {
                a.as_sockaddr_in()
                    .map(|s4| SocketAddr::V4(std::net::SocketAddrV4::from(*s4)))
            }
        });
        a
    }
}

/// Buffers for [`USock::recv_batch`], reused across calls.
pub struct RecvBatch {
    /// The control-message buffer of one datagram (a template).
    cmsg: Vec<u8>,
    /// One buffer per datagram.
    pub bufs: Vec<Vec<u8>>,
    /// Metadata of the datagrams of the last call (or why each is unusable).
    pub meta: Vec<Result<RecvMeta, RecvError>>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("bufs", &self.bufs.len())
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for `n` datagrams of up to `size` bytes each.
    pub fn new(n: usize, size: usize) -> RecvBatch {
        let cmsg = nix::cmsg_space!(
            libc::in6_pktinfo,
            libc::c_int,
            libc::in_pktinfo,
            libc::c_int
        );
        RecvBatch {
            cmsg,
            bufs: (0..n).map(|_| vec![0u8; size]).collect(),
            meta: Vec::with_capacity(n),
        }
    }
}

fn unreachable_kind() -> anyhow::Result<i32> {
    anyhow::bail!("UDP is not a raw socket kind")
}

/// A checked IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Header length in bytes.
    pub header_len: usize,
    /// Total length (≤ the buffer length).
    pub total_len: usize,
    /// TTL.
    pub ttl: u8,
    /// Protocol.
    pub proto: u8,
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
}

/// Parses an IPv4 header, checking version, IHL and total length against
/// the buffer. Never panics.
pub fn parse_ipv4_header(b: &[u8]) -> Option<Ipv4Header> {
    let first = *b.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 || b.len() < header_len {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
    // Raw sockets may report the total length in host order on some
    // kernels' paths; accept only a consistent value.
    let total_len = if total_len >= header_len && total_len <= b.len() {
        total_len
    } else {
        return None;
    };
    let src: [u8; 4] = b.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = b.get(16..20)?.try_into().ok()?;
    Some(Ipv4Header {
        header_len,
        total_len,
        ttl: *b.get(8)?,
        proto: *b.get(9)?,
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
    })
}

/// The source address the kernel would use towards `dst` (route lookup via
/// a connected UDP socket; nothing is sent).
pub fn route_source(dst: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect((dst, 9)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checks() {
        let mut h = [0u8; 28];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&28u16.to_be_bytes());
        h[8] = 63;
        h[9] = 50;
        h[12..16].copy_from_slice(&[192, 0, 2, 1]);
        h[16..20].copy_from_slice(&[192, 0, 2, 2]);
        let p = parse_ipv4_header(&h).unwrap();
        assert_eq!(p.header_len, 20);
        assert_eq!(p.total_len, 28);
        assert_eq!(p.ttl, 63);
        assert_eq!(p.dst, Ipv4Addr::new(192, 0, 2, 2));
        // Truncations and lies never panic and are rejected.
        for n in 0..20 {
            assert!(parse_ipv4_header(&h[..n]).is_none());
        }
        let mut bad = h;
        bad[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert!(parse_ipv4_header(&bad).is_none());
        let mut bad = h;
        bad[0] = 0x4f; // IHL 60 > buffer
        assert!(parse_ipv4_header(&bad).is_none());
        let mut bad = h;
        bad[0] = 0x65;
        assert!(parse_ipv4_header(&bad).is_none());
    }

    #[test]
    fn error_queue_entries_are_classified() {
        let e = |errno: i32, origin: u8, ty: u8, code: u8| libc::sock_extended_err {
            ee_errno: errno as u32,
            ee_origin: origin,
            ee_type: ty,
            ee_code: code,
            ee_pad: 0,
            ee_info: 1280,
            ee_data: 0,
        };
        // ICMPv6 Packet Too Big, ICMP Fragmentation Needed.
        let big = SendError::TooBig { mtu: 1280 };
        assert_eq!(SendError::of(Some(&e(libc::EMSGSIZE, 3, 2, 0))), big);
        assert_eq!(SendError::of(Some(&e(libc::EMSGSIZE, 2, 3, 4))), big);
        // Reassembly time-outs (ICMPv6 3/1, ICMP 11/1).
        assert_eq!(
            SendError::of(Some(&e(libc::EHOSTUNREACH, 3, 3, 1))),
            SendError::FragmentLost
        );
        assert_eq!(
            SendError::of(Some(&e(libc::EHOSTUNREACH, 2, 11, 1))),
            SendError::FragmentLost
        );
        // Hop limit exceeded in transit, unreachable, no extended error.
        assert_eq!(
            SendError::of(Some(&e(libc::EHOSTUNREACH, 3, 3, 0))),
            SendError::Other
        );
        assert_eq!(
            SendError::of(Some(&e(libc::EHOSTUNREACH, 3, 1, 3))),
            SendError::Other
        );
        assert_eq!(
            SendError::of(Some(&e(libc::ECONNREFUSED, 2, 3, 3))),
            SendError::Other
        );
        assert_eq!(
            SendError::of(Some(&e(libc::EHOSTUNREACH, 1, 3, 1))),
            SendError::Other
        );
        assert_eq!(SendError::of(None), SendError::Other);
    }
}
