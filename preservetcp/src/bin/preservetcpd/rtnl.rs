//! Link, address and route changes from rtnetlink multicast, and the local
//! address list read through rtnetlink dumps.
//!
//! The daemon subscribes to `RTMGRP_LINK`, `RTMGRP_IPV6_IFADDR` and
//! `RTMGRP_IPV6_ROUTE`. Every notification batch (or a socket overrun,
//! `ENOBUFS`, which means notifications were lost) triggers a full
//! re-read of links and IPv6 addresses ([`snapshot`]) and a route check of
//! every connection's current pair, so the state never depends on having
//! decoded each event exactly. The IPv4 groups are not subscribed: the
//! packet engine only handles IPv6 connections, so IPv4 address or route
//! changes cannot affect any tracked connection.
//!
//! There is no periodic safety re-read: lost notifications are reported by
//! the kernel as an overrun, which triggers the same re-read.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, State};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr as NlAddr};
use preservetcp::LocalAddress;
use preservetcp::engine::LocalAddr;

/// `RTMGRP_LINK` (linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 0x1;
/// `RTMGRP_IPV6_IFADDR`.
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// `RTMGRP_IPV6_ROUTE`.
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
/// The groups the monitor joins.
pub const GROUPS: u32 = RTMGRP_LINK | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;

/// rtnetlink message types that mean "something changed".
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

/// What a batch of notifications said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Link, address or route notifications received.
    pub events: usize,
    /// The kernel dropped notifications (socket overrun): re-read all.
    pub overrun: bool,
}

impl Changes {
    /// Whether the state must be re-read.
    pub fn any(&self) -> bool {
        self.events > 0 || self.overrun
    }
}

/// A socket joined to the multicast groups in [`GROUPS`].
pub struct Monitor {
    sock: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    /// Opens and subscribes (before the first [`snapshot`], so no change
    /// between the two is missed).
    pub fn new() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&NlAddr::new(0, GROUPS))?;
        // Bursts (a link going down removes several addresses and routes
        // at once) must not overrun the socket; an overrun is still handled.
        let _ = sock.set_rx_buf_sz(1 << 20);
        Ok(Self {
            sock,
            buf: vec![0; 1 << 16],
        })
    }

    /// Blocks until notifications arrive, then takes every one already
    /// queued, and reports what they were.
    pub fn wait(&mut self) -> io::Result<Changes> {
        let mut ch = Changes::default();
        let mut flags = 0;
        loop {
            match self.sock.recv(&mut &mut self.buf[..], flags) {
                Ok(n) => {
                    ch.events += count_changes(self.buf.get(..n).unwrap_or(&[]));
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => ch.overrun = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ch),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            flags = nix::libc::MSG_DONTWAIT;
        }
    }
}

/// Number of link/address/route notifications in one datagram (walks the
/// netlink headers with checked lengths).
fn count_changes(mut bytes: &[u8]) -> usize {
    let mut n = 0;
    while let (Some(len), Some(ty)) = (bytes.get(0..4), bytes.get(4..6)) {
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let ty = u16::from_ne_bytes([ty[0], ty[1]]);
        if matches!(
            ty,
            RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_NEWROUTE | RTM_DELROUTE
        ) {
            n += 1;
        }
        // NLMSG_ALIGN(len); a length below the header size ends the walk.
        let step = len.checked_add(3).map(|l| l & !3).unwrap_or(0);
        if len < 16 {
            break;
        }
        bytes = bytes.get(step..).unwrap_or(&[]);
    }
    n
}

fn dump(sock: &mut Socket, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(hdr, msg.into());
    packet.finalize();
    let mut req = vec![0; packet.buffer_len()];
    packet.serialize(&mut req[..]);
    sock.send(&req, 0)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let bytes = buf.get(off..n).unwrap_or(&[]);
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                .map_err(|e| io::Error::other(e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("rtnetlink: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                return Ok(out);
            }
            off += len;
        }
    }
}

/// Whether a link counts as up: administratively up and operationally up
/// (`IF_OPER_UP`, or `IF_OPER_UNKNOWN` for drivers that report no state,
/// then the carrier flag decides).
fn link_up(l: &LinkMessage) -> bool {
    if !l.header.flags.contains(LinkFlags::Up) {
        return false;
    }
    let oper = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::OperState(s) => Some(*s),
        _ => None,
    });
    match oper {
        Some(State::Up) => true,
        Some(State::Unknown) | None => l.header.flags.contains(LinkFlags::LowerUp),
        Some(_) => false,
    }
}

/// Local IPv6 addresses with their link state and device name, from an
/// `RTM_GETLINK` and an `RTM_GETADDR` dump. Addresses still in duplicate
/// address detection or that failed it are left out (not usable as
/// sources).
pub fn snapshot() -> io::Result<Vec<(LocalAddr, String)>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    let mut links: HashMap<u32, (String, bool)> = HashMap::new();
    for m in dump(
        &mut sock,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(l) = m {
            let name = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            links.insert(l.header.index, (name, link_up(&l)));
        }
    }
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet6;
    let mut v = Vec::new();
    for m in dump(&mut sock, RouteNetlinkMessage::GetAddress(req))? {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if a.header.family != AddressFamily::Inet6 {
            continue;
        }
        let mut addr = None;
        let mut unusable = false;
        for at in &a.attributes {
            match at {
                AddressAttribute::Address(IpAddr::V6(x)) => addr = Some(*x),
                AddressAttribute::Flags(f) => {
                    unusable = f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed);
                }
                _ => {}
            }
        }
        let Some(addr) = addr else { continue };
        if unusable {
            continue;
        }
        let (dev, up) = links
            .get(&a.header.index)
            .cloned()
            .unwrap_or_else(|| (String::new(), false));
        v.push((
            LocalAddr {
                addr: LocalAddress {
                    addr,
                    prefix_len: a.header.prefix_len,
                },
                up,
            },
            dev,
        ));
    }
    Ok(v)
}

/// Names of the Ethernet links (`ARPHRD_ETHER`; loopback and layer-3
/// devices have other types), read through rtnetlink so that it is this
/// network namespace's view whatever `/sys` shows.
pub fn ethernet_links() -> io::Result<Vec<String>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&NlAddr::new(0, 0))?;
    let mut v = Vec::new();
    for m in dump(
        &mut sock,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(l) = m
            && l.header.link_layer_type == netlink_packet_route::link::LinkLayerType::Ether
            && let Some(name) = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
        {
            v.push(name);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, payload: usize) -> Vec<u8> {
        let len = 16 + payload;
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend(std::iter::repeat_n(0u8, payload));
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn counts_only_change_notifications() {
        let mut b = nlmsg(RTM_NEWLINK, 5);
        b.extend(nlmsg(RTM_DELADDR, 8));
        b.extend(nlmsg(3, 0)); // NLMSG_DONE
        b.extend(nlmsg(RTM_NEWROUTE, 1));
        assert_eq!(count_changes(&b), 3);
    }

    #[test]
    fn hostile_lengths_end_the_walk() {
        assert_eq!(count_changes(&[]), 0);
        assert_eq!(count_changes(&[1, 2, 3]), 0);
        let mut b = nlmsg(RTM_NEWADDR, 0);
        b[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(count_changes(&b), 1);
        b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(count_changes(&b), 1);
        let mut two = nlmsg(RTM_NEWADDR, 0);
        two.extend(nlmsg(RTM_DELLINK, 0));
        two.truncate(20);
        assert_eq!(count_changes(&two), 1);
    }
}
