//! The N×M address pair table (thesis 4.3.3, 5.2.6).
//!
//! The kernel keeps seeing the connection's *original* 4-tuple; on the wire
//! the connection uses its *current* address pair. [`AddressPairs`] maps both
//! ways in O(1) (hash maps):
//! - inbound: any of the N×M wire 4-tuples → connection, its original tuple
//!   (to rewrite the packet to before the kernel sees it) and whether the
//!   packet used the current pair;
//! - outbound: the original tuple → the current wire tuple to rewrite to.
//!
//! Unlike the thesis's alias `inpcb`s, the original pair itself is also
//! entered in the wire map, so one lookup serves every inbound packet.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use thiserror::Error;

/// Most addresses per side: the original plus [`crate::select::DEFAULT_MAX_ACCEPTED`].
pub const DEFAULT_MAX_PER_SIDE: usize = 1 + crate::select::DEFAULT_MAX_ACCEPTED;

/// A connection's identity in the table (chosen by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A TCP 4-tuple seen from this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourTuple {
    /// Local address.
    pub local: Ipv6Addr,
    /// Local port.
    pub local_port: u16,
    /// Peer address.
    pub peer: Ipv6Addr,
    /// Peer port.
    pub peer_port: u16,
}

impl FourTuple {
    /// The same ports with another address pair.
    pub fn with_pair(&self, pair: AddrPair) -> FourTuple {
        FourTuple {
            local: pair.local,
            peer: pair.peer,
            ..*self
        }
    }

    /// The address pair of this tuple.
    pub fn pair(&self) -> AddrPair {
        AddrPair {
            local: self.local,
            peer: self.peer,
        }
    }
}

/// A (local, peer) address pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrPair {
    /// Local address.
    pub local: Ipv6Addr,
    /// Peer address.
    pub peer: Ipv6Addr,
}

/// Errors of the pair table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PairError {
    /// The connection id is already in the table.
    #[error("connection {0:?} already present")]
    DuplicateId(ConnId),
    /// The id is not in the table.
    #[error("connection {0:?} not found")]
    UnknownId(ConnId),
    /// A wire 4-tuple of the new connection already belongs to another one.
    #[error("4-tuple {0:?} already belongs to another connection")]
    Conflict(FourTuple),
    /// More addresses on one side than the table allows.
    #[error("{0} addresses on one side, more than allowed")]
    TooManyAddresses(usize),
    /// The pair is not one of the connection's N×M pairs.
    #[error("pair {0:?} is not one of the connection's pairs")]
    NotAPair(AddrPair),
}

#[derive(Debug, Clone)]
struct Entry {
    original: FourTuple,
    locals: Vec<Ipv6Addr>,
    peers: Vec<Ipv6Addr>,
    current: AddrPair,
}

/// Result of an inbound lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundMatch {
    /// The connection.
    pub id: ConnId,
    /// The tuple the kernel knows (rewrite the packet to this).
    pub original: FourTuple,
    /// The connection's current pair.
    pub current: AddrPair,
    /// Whether the packet arrived on the current pair.
    pub on_current: bool,
}

/// The N×M pair table of all connections.
#[derive(Debug, Clone)]
pub struct AddressPairs {
    conns: HashMap<ConnId, Entry>,
    by_wire: HashMap<FourTuple, ConnId>,
    by_original: HashMap<FourTuple, ConnId>,
    max_per_side: usize,
}

impl Default for AddressPairs {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PER_SIDE)
    }
}

fn dedup_with_first(first: Ipv6Addr, alts: &[Ipv6Addr]) -> Vec<Ipv6Addr> {
    let mut v = vec![first];
    for a in alts {
        if !v.contains(a) {
            v.push(*a);
        }
    }
    v
}

impl AddressPairs {
    /// An empty table allowing at most `max_per_side` addresses per side.
    pub fn new(max_per_side: usize) -> Self {
        Self {
            conns: HashMap::new(),
            by_wire: HashMap::new(),
            by_original: HashMap::new(),
            max_per_side,
        }
    }

    /// Registers a connection with its original tuple and the alternative
    /// local and peer addresses (duplicates and the original addresses are
    /// ignored in the lists). All N×M tuples (N = 1 + local alternatives,
    /// M = 1 + peer alternatives) become known; the current pair starts as
    /// the original. Nothing changes if an error is returned.
    pub fn insert(
        &mut self,
        id: ConnId,
        original: FourTuple,
        local_alts: &[Ipv6Addr],
        peer_alts: &[Ipv6Addr],
    ) -> Result<(), PairError> {
        if self.conns.contains_key(&id) {
            return Err(PairError::DuplicateId(id));
        }
        let locals = dedup_with_first(original.local, local_alts);
        let peers = dedup_with_first(original.peer, peer_alts);
        for side in [&locals, &peers] {
            if side.len() > self.max_per_side {
                return Err(PairError::TooManyAddresses(side.len()));
            }
        }
        if self.by_original.contains_key(&original) {
            return Err(PairError::Conflict(original));
        }
        let tuples: Vec<FourTuple> = locals
            .iter()
            .flat_map(|l| {
                peers.iter().map(move |p| FourTuple {
                    local: *l,
                    peer: *p,
                    ..original
                })
            })
            .collect();
        if let Some(t) = tuples.iter().find(|t| self.by_wire.contains_key(t)) {
            return Err(PairError::Conflict(*t));
        }
        for t in tuples {
            self.by_wire.insert(t, id);
        }
        self.by_original.insert(original, id);
        self.conns.insert(
            id,
            Entry {
                original,
                locals,
                peers,
                current: original.pair(),
            },
        );
        Ok(())
    }

    /// Removes a connection and all its tuples; returns its original tuple.
    pub fn remove(&mut self, id: ConnId) -> Option<FourTuple> {
        let e = self.conns.remove(&id)?;
        for l in &e.locals {
            for p in &e.peers {
                self.by_wire.remove(&e.original.with_pair(AddrPair {
                    local: *l,
                    peer: *p,
                }));
            }
        }
        self.by_original.remove(&e.original);
        Some(e.original)
    }

    /// Inbound lookup by the tuple seen on the wire (local = the packet's
    /// destination, peer = its source).
    pub fn lookup_wire(&self, wire: &FourTuple) -> Option<InboundMatch> {
        let id = *self.by_wire.get(wire)?;
        let e = self.conns.get(&id)?;
        Some(InboundMatch {
            id,
            original: e.original,
            current: e.current,
            on_current: wire.pair() == e.current,
        })
    }

    /// Outbound lookup by the tuple the kernel uses: the connection and the
    /// tuple to put on the wire.
    pub fn lookup_original(&self, original: &FourTuple) -> Option<(ConnId, FourTuple)> {
        let id = *self.by_original.get(original)?;
        let e = self.conns.get(&id)?;
        Some((id, e.original.with_pair(e.current)))
    }

    /// Makes `pair` the connection's current pair.
    pub fn set_current(&mut self, id: ConnId, pair: AddrPair) -> Result<(), PairError> {
        let e = self.conns.get_mut(&id).ok_or(PairError::UnknownId(id))?;
        if !e.locals.contains(&pair.local) || !e.peers.contains(&pair.peer) {
            return Err(PairError::NotAPair(pair));
        }
        e.current = pair;
        Ok(())
    }

    /// The connection's current pair.
    pub fn current(&self, id: ConnId) -> Option<AddrPair> {
        self.conns.get(&id).map(|e| e.current)
    }

    /// The connection's local addresses (original first).
    pub fn locals(&self, id: ConnId) -> Option<&[Ipv6Addr]> {
        self.conns.get(&id).map(|e| e.locals.as_slice())
    }

    /// The connection's peer addresses (original first, then in the peer's order).
    pub fn peers(&self, id: ConnId) -> Option<&[Ipv6Addr]> {
        self.conns.get(&id).map(|e| e.peers.as_slice())
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Number of wire tuples known (the sum of N×M over connections).
    pub fn wire_tuples(&self) -> usize {
        self.by_wire.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn thesis_client() -> (AddressPairs, FourTuple) {
        let orig = FourTuple {
            local: a("3ffe:2a00:100:3100::f00d:cafe"),
            local_port: 1039,
            peer: a("3ffe:2a00:100:3100::dead:beef"),
            peer_port: 21,
        };
        let mut t = AddressPairs::default();
        t.insert(
            ConnId(1),
            orig,
            &[a("3ffe:2a00:100:3200::f00d:cafe")],
            &[a("3ffe:2a00:100:3200::dead:beef")],
        )
        .unwrap();
        (t, orig)
    }

    #[test]
    fn thesis_demo_four_permutations() {
        let (mut t, orig) = thesis_client();
        assert_eq!(t.wire_tuples(), 4);
        let alt_peer = a("3ffe:2a00:100:3200::dead:beef");
        let alt_local = a("3ffe:2a00:100:3200::f00d:cafe");
        for (l, p) in [
            (orig.local, orig.peer),
            (orig.local, alt_peer),
            (alt_local, orig.peer),
            (alt_local, alt_peer),
        ] {
            let m = t
                .lookup_wire(&orig.with_pair(AddrPair { local: l, peer: p }))
                .unwrap();
            assert_eq!(m.id, ConnId(1));
            assert_eq!(m.original, orig);
            assert_eq!(m.on_current, l == orig.local && p == orig.peer);
        }
        // Other ports do not match.
        let other = FourTuple {
            peer_port: 22,
            ..orig
        };
        assert!(t.lookup_wire(&other).is_none());
        // Outbound before and after a switch.
        assert_eq!(t.lookup_original(&orig), Some((ConnId(1), orig)));
        let new = AddrPair {
            local: orig.local,
            peer: alt_peer,
        };
        t.set_current(ConnId(1), new).unwrap();
        assert_eq!(
            t.lookup_original(&orig),
            Some((ConnId(1), orig.with_pair(new)))
        );
        assert!(t.lookup_wire(&orig.with_pair(new)).unwrap().on_current);
        assert!(!t.lookup_wire(&orig).unwrap().on_current);
        // The original wire tuple is not the original lookup key for others.
        assert_eq!(
            t.set_current(
                ConnId(1),
                AddrPair {
                    local: a("2001:db8::1"),
                    peer: alt_peer
                }
            ),
            Err(PairError::NotAPair(AddrPair {
                local: a("2001:db8::1"),
                peer: alt_peer
            }))
        );
        assert_eq!(t.remove(ConnId(1)), Some(orig));
        assert_eq!(t.wire_tuples(), 0);
        assert!(t.is_empty());
        assert!(t.lookup_original(&orig).is_none());
    }

    #[test]
    fn conflicts_are_atomic() {
        let (mut t, orig) = thesis_client();
        // Second connection whose alternatives collide with the first's tuples.
        let orig2 = FourTuple {
            local: a("3ffe:2a00:100:3300::f00d:cafe"),
            ..orig
        };
        let err = t
            .insert(ConnId(2), orig2, &[a("3ffe:2a00:100:3200::f00d:cafe")], &[])
            .unwrap_err();
        assert!(matches!(err, PairError::Conflict(_)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.wire_tuples(), 4);
        assert!(t.lookup_original(&orig2).is_none());
        // Without the colliding alternative it goes in.
        t.insert(ConnId(2), orig2, &[], &[a("2001:db8::5")])
            .unwrap();
        assert_eq!(t.wire_tuples(), 6);
        assert_eq!(
            t.insert(ConnId(2), orig2, &[], &[]),
            Err(PairError::DuplicateId(ConnId(2)))
        );
        assert_eq!(
            t.set_current(ConnId(9), orig.pair()),
            Err(PairError::UnknownId(ConnId(9)))
        );
    }

    #[test]
    fn limits_and_dedup() {
        let orig = FourTuple {
            local: a("2001:db8::1"),
            local_port: 1,
            peer: a("2001:db8::2"),
            peer_port: 2,
        };
        let many: Vec<Ipv6Addr> = (1..=9u16)
            .map(|i| Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 2))
            .collect();
        let mut t = AddressPairs::default();
        assert_eq!(
            t.insert(ConnId(1), orig, &[], &many),
            Err(PairError::TooManyAddresses(10))
        );
        // Duplicates and the original itself are dropped from the lists.
        t.insert(
            ConnId(1),
            orig,
            &[orig.local],
            &[many[0], many[0], orig.peer],
        )
        .unwrap();
        assert_eq!(t.peers(ConnId(1)).unwrap(), &[orig.peer, many[0]]);
        assert_eq!(t.locals(ConnId(1)).unwrap(), &[orig.local]);
        assert_eq!(t.wire_tuples(), 2);
    }
}
