//! # hipd-backend — the userspace HIPv2 daemon
//!
//! * [`control`] — the versioned JSON-lines control protocol
//!   ([`control::Request`], [`control::Response`]), the HIPL verb parser
//!   ([`control::parse_verbs`]) and a blocking [`control::Client`]. Always
//!   compiled; depend on this crate with `default-features = false` (the
//!   workspace default) to get only this part.
//! * `daemon` (feature `daemon`) — the `hipd` daemon: the sans-IO engine of
//!   `hip-proto` driven over raw sockets (IP protocols 139 and 50, IPv4 and
//!   IPv6) and UDP 10500, a TUN device `hip0` carrying the local HITs
//!   (2001:20::/28) and LSIs (1.0.0.0/8), ESP in BEET mode, netlink locator
//!   tracking feeding the engine's UPDATE layer.
//! * binaries `hipd` and `hipconf` (feature `daemon`).
//!
//! ## Quick start
//! ```text
//! hipd -b                                   # generates /etc/hip identities on first start
//! hipconf daemon get hi all                 # our HITs and LSIs
//! hipconf daemon add map <peer HIT> <peer IP> [LSI] [udp|native]
//! ping6 / socat / curl to the peer HIT (or LSI): triggers the base exchange
//! hipconf daemon get ha all                 # state, HITs, LSIs, locators, SPIs, transport
//! hipconf daemon opp <peer IP>              # opportunistic base exchange, prints the peer HIT
//! ```
//!
//! ## Opportunistic mode by policy
//! As Responder the daemon answers opportunistic I1s (receiver HIT zero)
//! unless `hipd.conf` says `opportunistic off`. As Initiator an
//! opportunistic exchange is started explicitly (`hipconf daemon opp IP` or
//! [`control::Request::Opportunistic`], open to every user like sending a
//! packet to a HIT); the learned HIT is returned and is then usable by
//! applications. `opportunistic off` refuses that too (permission denied,
//! hipconf exit code 4).
//!
//! ## Known gaps
//! * Credit-based authorization (RFC 8046 §5.6) gates the ESP data the
//!   daemon seals towards an UNVERIFIED peer locator (refused packets are
//!   dropped, stats `esp_cba_dropped`); the ESP keepalives and failover
//!   re-sends of failure detection are not charged against the credit.
//!   The credit the data plane spends is refreshed every 20 ms, so across
//!   a 5 s ageing step it may overspend by at most that step (1/8).
//! * ICMPv4 inside LSI flows is translated for echo request/reply only;
//!   other ICMPv4 messages from the application are dropped (counted as
//!   `no_mapping`). Path MTU towards LSI applications is signalled with
//!   ICMPv4 Fragmentation Needed (see the daemon docs).
//! * Rendezvous, relay, HIP firewall, certificates and DNS HIP records are
//!   not implemented.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod control;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod shimtag;
