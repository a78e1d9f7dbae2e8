//! Owned, typed representation of a whole HIP packet.

use super::checksum::ChecksumMode;
use super::consts::{CONTROL_ANONYMOUS, HEADER_LEN, IPPROTO_NONE, PacketType, param_type as pt};
use super::error::{Result, WireError};
use super::hit::Hit;
use super::packet::{Packet, check_packet_len};
use super::param::Param;

/// A parsed HIP packet: header fields and typed parameters.
///
/// `params` keep wire order after [`PacketRepr::parse`]. On emit they are
/// written in ascending type order (a stable sort, so repeated types keep
/// their relative order) whatever order they are stored in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PacketRepr {
    /// Packet Type.
    pub packet_type: PacketType,
    /// The A control bit (anonymous sender HI). Other control bits are
    /// ignored on receive and sent as zero.
    pub anonymous: bool,
    /// Sender's HIT.
    pub sender_hit: Hit,
    /// Receiver's HIT (zero for an opportunistic I1).
    pub receiver_hit: Hit,
    /// Parameters.
    pub params: Vec<Param>,
}

impl PacketRepr {
    /// An empty packet of the given type between two HITs.
    pub fn new(packet_type: PacketType, sender_hit: Hit, receiver_hit: Hit) -> Self {
        PacketRepr {
            packet_type,
            anonymous: false,
            sender_hit,
            receiver_hit,
            params: Vec::new(),
        }
    }

    /// Adds a parameter (builder style).
    pub fn with(mut self, p: Param) -> Self {
        self.params.push(p);
        self
    }

    /// Parses a checked packet. Fails on structural errors, ordering
    /// violations, malformed known parameters and unknown critical
    /// parameters ([`WireError::UnsupportedCriticalParam`]). The checksum is
    /// not verified here (see [`Packet::verify_checksum`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Self> {
        packet.check()?;
        let params = packet
            .params()
            .map(|raw| raw.and_then(|r| Param::parse(r.ty, r.contents)))
            .collect::<Result<Vec<_>>>()?;
        Ok(PacketRepr {
            packet_type: packet.packet_type(),
            anonymous: packet.anonymous(),
            sender_hit: packet.sender_hit(),
            receiver_hit: packet.receiver_hit(),
            params,
        })
    }

    /// Checks the buffer and parses it (shorthand).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// Length of the emitted packet in bytes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.params.iter().map(Param::buffer_len).sum::<usize>()
    }

    /// The first parameter of type `ty`.
    pub fn param(&self, ty: u16) -> Option<&Param> {
        self.params.iter().find(|p| p.param_type() == ty)
    }

    /// All parameters of type `ty`.
    pub fn params_of(&self, ty: u16) -> impl Iterator<Item = &Param> + '_ {
        self.params.iter().filter(move |p| p.param_type() == ty)
    }

    /// Sorts the stored parameters into emit order (stable).
    pub fn sort_params(&mut self) {
        self.params.sort_by_key(Param::param_type);
    }

    /// Emits the packet with a zero checksum into the start of `buf` and
    /// returns its length. Next Header is `IPPROTO_NONE` (59).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        check_packet_len(len)?;
        if buf.len() < len {
            return Err(WireError::BufferTooSmall {
                needed: len,
                available: buf.len(),
            });
        }
        let pv = self.packet_type.value();
        if pv > 0x7F || PacketType::from(pv) != self.packet_type {
            return Err(WireError::Unrepresentable {
                ty: 0,
                reason: "packet type does not fit in 7 bits",
            });
        }
        let mut order: Vec<&Param> = self.params.iter().collect();
        order.sort_by_key(|p| p.param_type());
        let (head, rest) = buf.split_at_mut(HEADER_LEN);
        let mut off = 0;
        for p in order {
            let dst = rest.get_mut(off..).unwrap_or_default();
            off += p.emit(dst)?;
        }
        head.fill(0);
        let mut pkt = Packet::new_unchecked(head);
        pkt.set_next_header(IPPROTO_NONE);
        pkt.set_header_len((len / 8 - 1) as u8);
        pkt.set_packet_type(self.packet_type);
        pkt.set_version(super::consts::HIP_VERSION);
        pkt.set_controls(if self.anonymous { CONTROL_ANONYMOUS } else { 0 });
        pkt.set_sender_hit(self.sender_hit);
        pkt.set_receiver_hit(self.receiver_hit);
        Ok(len)
    }

    /// Emits and fills the checksum for `mode`.
    pub fn emit_with_checksum(&self, buf: &mut [u8], mode: ChecksumMode) -> Result<usize> {
        let len = self.emit(buf)?;
        let mut p = Packet::new_unchecked(buf.get_mut(..len).unwrap_or_default());
        p.fill_checksum(mode);
        Ok(len)
    }

    /// Emits into a new vector with the checksum for `mode`.
    pub fn to_bytes(&self, mode: ChecksumMode) -> Result<Vec<u8>> {
        let mut v = vec![0; self.buffer_len()];
        self.emit_with_checksum(&mut v, mode)?;
        Ok(v)
    }

    /// See [`Packet::mac_input`]; computed on the emitted form.
    pub fn mac_input(&self, upto_type: u16) -> Result<Vec<u8>> {
        Packet::new_checked(self.to_bytes(ChecksumMode::Udp)?.as_slice())?.mac_input(upto_type)
    }

    /// See [`Packet::mac2_input`]; computed on the emitted form.
    pub fn mac2_input(&self, host_id_tlv: &[u8]) -> Result<Vec<u8>> {
        Packet::new_checked(self.to_bytes(ChecksumMode::Udp)?.as_slice())?.mac2_input(host_id_tlv)
    }

    /// See [`Packet::signature2_input`]; computed on the emitted form.
    pub fn signature2_input(&self) -> Result<Vec<u8>> {
        Packet::new_checked(self.to_bytes(ChecksumMode::Udp)?.as_slice())?.signature2_input()
    }

    /// Whether this is a NOTIFY NAT keepalive (RFC 9028: a NOTIFY with one
    /// NOTIFICATION of type NAT_KEEPALIVE and no data).
    pub fn is_nat_keepalive(&self) -> bool {
        self.packet_type == PacketType::Notify
            && self.params.iter().any(|p| {
                matches!(p, Param::Notification(n)
                    if n.msg_type == super::consts::NotifyType::NatKeepalive && n.data.is_empty())
            })
    }

    /// Whether parameter `ty` is present.
    pub fn has(&self, ty: u16) -> bool {
        self.param(ty).is_some()
    }

    /// The first HOST_ID, if any.
    pub fn host_id(&self) -> Option<&super::param::HostId> {
        match self.param(pt::HOST_ID) {
            Some(Param::HostId(h)) => Some(h),
            _ => None,
        }
    }
}
