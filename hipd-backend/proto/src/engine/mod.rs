//! # The sans-IO HIPv2 engine: base exchange, UPDATE, NOTIFY, CLOSE
//!
//! One [`Endpoint`] per host, in the style of quinn-proto: bytes, time
//! ([`std::time::Instant`] passed in) and randomness (a 32-byte seed at construction)
//! go in; packets ([`Transmit`]), [`Event`]s and the next deadline come out.
//! The engine performs no IO and reads no clock.
//!
//! ```text
//! handle(now, Datagram)  ─┐                        ┌─> poll_transmit() -> Transmit
//! connect(now, ...)       ├─> Endpoint (state) ────┼─> poll_event()    -> Event
//! close(now, peer_hit)    │                        └─> poll_timeout()  -> Instant
//! handle_timeout(now)    ─┘
//! ```
//!
//! ## Choices the standards leave open (kept stable)
//!
//! * **Randomness.** A ChaCha20 CSPRNG seeded from the 32-byte seed given to
//!   [`Endpoint::new`] draws every engine-level random value (DH private key
//!   entropy, SPIs, puzzle secrets, ECHO nonces, #J start values, ENCRYPTED
//!   IVs, ESP IV-generator seeds). Two endpoints built with the same seed,
//!   identities and inputs behave identically, except for what the crypto
//!   backend randomises internally (ECDSA nonces, RSA-PSS salts, RSA key
//!   generation), which never influences control flow.
//! * **RHASH of an association** = the hash of the **Responder's** HIT suite
//!   (RFC 7401 §5.2.4 / §6.5: the Responder's HIT suite fixes RHASH). It is
//!   used for the puzzle, HIP_MAC and the KEYMAT HKDF. For an **Ed25519
//!   identity (HIT suite 5, RFC 9374)** RHASH is cSHAKE128 and HIP_MAC and
//!   the KEYMAT PRF are KMAC128 (see the `endpoint` module docs and
//!   `crypto::keccak`); Ed25519 hosts initiate and respond.
//! * **Stateless Responder.** R1s are precomputed per (local identity,
//!   DH group) at construction and on every rotation
//!   ([`Config::r1_rotation`]), each signed with receiver HIT = 0 and
//!   PUZZLE Opaque = #I = 0, so answering an I1 is a lookup, a copy, an
//!   HMAC for #I and the receiver-HIT/checksum patch. The puzzle
//!   `#I = HMAC-RHASH(secret_gen, HIT-I ‖ HIT-R ‖ IP-I ‖ IP-R)` (RFC 7401
//!   Appendix A), `Opaque` = low 16 bits of the R1 generation counter.
//!   Solutions are accepted for the current and the previous generation,
//!   i.e. for one to two rotation periods; the PUZZLE Lifetime field
//!   announces at least one rotation period. An I2 must therefore come from
//!   the same address pair as its I1. R1_COUNTER is always sent and is
//!   required in I2; the first generation's counter is
//!   [`Config::r1_counter_start`] (set it from the wall clock so a
//!   restarted Responder's R1s are not taken for replays). R1s are rate-limited by a token bucket
//!   ([`Config::r1_rate`], [`Config::r1_burst`]; see the `endpoint` module
//!   docs).
//! * **DH group.** The Responder chooses the first group of its own list
//!   that the I1 offered; with no overlap it uses its first group. The
//!   Initiator treats a group other than the first Responder entry it
//!   offered as a downgrade: the R1 is dropped ([`Stats::downgrade`]) and
//!   the I1 retransmission continues. A group the Initiator does not
//!   support fails the association with NOTIFY NO_DH_PROPOSAL_CHOSEN.
//! * **HIP_CIPHER / ESP_TRANSFORM.** The Initiator picks the first entry
//!   of its own preference list that the R1 offers (only the first 6 R1
//!   entries are considered). NULL-ENCRYPT and the NULL ESP suite are
//!   offered only when configured. With NULL-ENCRYPT the I2 carries a
//!   plain HOST_ID, otherwise ENCRYPTED{HOST_ID}.
//! * **Puzzle solving** is done inline when the R1 arrives, with at most
//!   [`Config::puzzle_budget`] attempts from a random #J; #K above
//!   [`Config::max_puzzle_k`] or an exhausted budget fails the association
//!   ([`FailReason::PuzzleTooHard`]). K ≤ 20 is fine inline.
//! * **Retransmission.** I1: [`Config::i1_timeout`] (1 s), doubled per
//!   retry, [`Config::i1_retries`] (5) retries, then E-FAILED. The first I1
//!   goes to up to 3 peer locators (shotgun mode: up to
//!   [`MAX_SHOTGUN_I1`] = 3 locator pairs), retries only to the first.
//!   I2: 1 s, doubled, 5 retries. CLOSE: [`Config::close_timeout`] (1 s),
//!   doubled up to [`Config::close_timeout_max`] (64 s), resent until the
//!   summed timeouts exceed UAL + MSL ([`Config::ual`] 15 min +
//!   [`Config::msl`] 2 min: 21 CLOSEs, the last at 959 s, give-up at
//!   1023 s), then the association is removed. CLOSED is held for
//!   [`Config::closed_hold`] (UAL + 2·MSL = 19 min), E-FAILED for
//!   [`Config::failed_hold`] (30 s).
//! * **R2-SENT.** The Responder hands the SAs out in
//!   [`Event::Established`] as soon as it sends R2 (they are usable), but
//!   the association stays R2-SENT until the data plane reports ESP traffic
//!   on the inbound SPI ([`Endpoint::esp_received`]), an UPDATE arrives, or
//!   the EC timeout (I2 timeout × (I2 retries + 1)) expires.
//! * **Duplicate I2** (same #J and DH public value as the one that built
//!   the association) → the stored R2 is resent ([`Stats::replay`]).
//!   A different valid I2 replaces the association (peer restart): a new
//!   [`Event::Established`] follows with new SAs under the same
//!   [`AssocId`].
//! * **Simultaneous open.** The host with the greater HIT answers I1s in
//!   I1-SENT/I2-SENT with R1 and processes the peer's I2 as Responder
//!   (keeping its [`AssocId`]); the smaller one drops the peer's I1 and
//!   completes as Initiator.
//! * **NOTIFY** is sent for: I2 errors after the puzzle verified
//!   (UNSUPPORTED_CRITICAL_PARAMETER_TYPE with the type as data,
//!   INVALID_SYNTAX, INVALID_DH_CHOSEN, INVALID_HIP_CIPHER_CHOSEN,
//!   INVALID_ESP_TRANSFORM_CHOSEN, ENCRYPTION_FAILED, HIP_MAC_FAILED,
//!   AUTHENTICATION_FAILED, INVALID_HIT); R1 negotiation failures on the
//!   Initiator (NO_DH_PROPOSAL_CHOSEN, NO_HIP_PROPOSAL_CHOSEN,
//!   NO_ESP_PROPOSAL_CHOSEN, UNSUPPORTED_HIT_SUITE); and for bad packets of
//!   an association whose peer has keys (R2/CLOSE/CLOSE_ACK, and packets
//!   that do not parse). Such a NOTIFY goes only to an address that earned
//!   it (RFC 7401 §5.2.19: no NOTIFICATION to a host that has not solved a
//!   puzzle): the source of the puzzle-solving I2, an ACTIVE peer locator
//!   of the association, or (Initiator in I1-SENT) an address our I1 went
//!   to; a packet from any other source, which may be spoofed, is dropped
//!   without answer ([`Stats::notify_suppressed`]). Each association has a
//!   token bucket ([`Config::notify_burst`] = 5, one token per
//!   [`Config::notify_interval`] = 1 s; [`Stats::notify_rate_limited`]).
//!   Nothing is ever sent in answer to a packet that failed its checksum,
//!   a bad puzzle, or an I1. Every NOTIFY is signed and carries no HOST_ID. A
//!   received NOTIFY never changes state: it becomes
//!   [`Event::NotifyReceived`], `authenticated` when the signature verified
//!   with the association's peer HI; with no known HI it is reported
//!   unauthenticated; a NOTIFY whose signature fails is dropped.
//! * **ECHO.** With [`Config::r1_echo_signed`] the R1 carries an 8-byte
//!   ECHO_REQUEST_SIGNED derived from the generation secret, and the I2 must
//!   echo it. The Initiator echoes every ECHO_REQUEST_SIGNED/UNSIGNED of an
//!   R1 in the I2 (signed / unsigned). CLOSE carries a 16-byte random
//!   ECHO_REQUEST_SIGNED that CLOSE_ACK must echo.
//! * **ESP.** The Initiator's inbound SPI (SPI-RI) travels in the I2
//!   ESP_INFO, the Responder's (SPI-IR) in the R2; SPIs are random, ≥ 256
//!   and unique per endpoint. The KEYMAT Index is the byte after the four
//!   HIP keys; a peer announcing another index is refused (INVALID_SYNTAX).
//!   Each side creates its outbound and inbound
//!   [`SecurityAssociation`] and
//!   **moves** them to the data plane in [`Event::Established`]; the
//!   engine keeps only SPIs, suites and keys needed for rekeying.
//! * **Transports.** Native HIP (protocol 139) or UDP encapsulation; for UDP
//!   the [`Datagram::payload`] is the HIP packet after the 32-bit zero
//!   marker and its checksum must be zero. Replies use the transport the
//!   request came in on; new exchanges use [`Config::initiator_transport`].
//!   A transmit with `src: None` (I1 only: the engine does not know the
//!   source address) carries a zero checksum; the sender fills it in with
//!   [`Transmit::fill_checksum`] after choosing the source address.
//! * **Testing.** [`testing::Pair`] joins two endpoints over a simulated,
//!   seeded link (latency, jitter/reordering, loss, duplication, a packet
//!   filter for targeted drops and tampering); [`testing::test_identity`]
//!   caches one key per kind per process (RSA keygen is slow). The module is
//!   always compiled (it is pure and small) so integration tests, the
//!   UPDATE layer and the daemon can reuse it.
//! * **Not done here** (documented gaps): UAL idle closing (the daemon
//!   calls [`Endpoint::close`]), retrying an I1 with another local HIT when
//!   the R1 rejects our HIT suite (the association fails instead), and
//!   restarting on a higher R1 counter in I2-SENT (the I2 is resent
//!   instead).
//!
//! ## UPDATE layer: mobility, multihoming, rekeying, probing
//!
//! API: [`Endpoint::set_local_locators`], [`Endpoint::set_local_preferred`],
//! [`Endpoint::set_peer_preferred`], [`Endpoint::locators`]
//! ([`LocatorsView`]), [`Endpoint::route`], [`Endpoint::on_data_received`],
//! [`Endpoint::can_send_to`], [`Endpoint::authorize_send`],
//! [`Endpoint::rekey`], [`Endpoint::add_sa`], [`Endpoint::delete_sa`],
//! [`Endpoint::sa_pairs`], [`Endpoint::probe`], [`Endpoint::probe_exploring`],
//! [`Endpoint::set_path`], [`Endpoint::esp_received`];
//! events [`Event::PathChanged`], [`Event::PeerLocatorState`],
//! [`Event::VerificationFailed`], [`Event::SasRekeyed`],
//! [`Event::SasRetired`], [`Event::ProbeReply`], [`Event::ProbeLost`],
//! [`Event::PeerProbed`]. Failure detection (when to probe, when to
//! switch) is not in the engine: see [`crate::reap`].
//! Choices (kept stable):
//!
//! * **SEQ/ACK.** Update IDs start at 0 per association and increase by
//!   one per SEQ-bearing UPDATE; several may be outstanding (announcement,
//!   rekey, verifications, probes), each retransmitted on its own. Timer:
//!   [`Config::update_timeout`] (1 s) until an RTT sample exists, then
//!   2 × smoothed RTT (7/8 EWMA over first transmissions only, Karn), at
//!   least [`Config::update_timeout_min`]; doubled per retransmission.
//!   UPDATE_RETRY_MAX = [`Config::update_retries`] (5). When a LOCATOR_SET
//!   announcement, rekey request or rekey answer exhausts it the
//!   association goes to CLOSING (a CLOSE is sent, RFC 7401 §6.11); an
//!   address verification that exhausts it only reports
//!   [`Event::VerificationFailed`] (the address is just unreachable).
//!   Every received SEQ is answered at once; ACKs are not delayed, and an
//!   ACK lists the one SEQ it answers (received multi-ID ACKs are handled).
//!   ACKs are processed before SEQ. The receive window remembers the
//!   highest Update ID and the 64 below it ([`SEQ_WINDOW`],
//!   circular arithmetic): a seen ID is re-answered with the reply stored
//!   for it (the last 16 replies are kept; else a fresh ACK) and not
//!   reprocessed ([`Stats::update_duplicate`]); an older ID is dropped
//!   ([`Stats::replay`]). HIP_MAC (first) and HIP_SIGNATURE are both
//!   verified on every UPDATE, duplicates included; failures are dropped
//!   silently and counted ([`Stats::bad_hmac`], [`Stats::bad_signature`]).
//!   An UPDATE in R2-SENT confirms the association. Retransmissions of
//!   announcements and rekey messages follow the current path (the
//!   peer's address may have changed meanwhile); verifications and probes
//!   stay on their address.
//! * **LOCATOR_SET.** We send Type-1 locators (our inbound SPI ‖ address,
//!   IPv4 as IPv4-mapped), traffic type 0, lifetime
//!   [`Config::locator_lifetime`] (default unbounded; a finite one is
//!   re-announced at half its value), always listing all our addresses,
//!   with `UPDATE(ESP_INFO(OLD = NEW = inbound SPI), LOCATOR_SET, SEQ)`
//!   from the preferred address to the peer address in use. A newer
//!   announcement supersedes (stops retransmitting) an older one. We accept
//!   Type 0 and 1 (others, signalling-only entries and zero lifetimes are
//!   ignored); listed addresses not known yet become UNVERIFIED, known ones
//!   keep their state (DEPRECATED ones go back to UNVERIFIED), addresses
//!   no longer listed become DEPRECATED; the P bits replace our preference
//!   when any entry has P set. ESP_INFO is processed before LOCATOR_SET;
//!   any ESP_INFO with OLD = NEW ≠ 0 is gratuitous (no SA change, even if
//!   it names an SPI a rekey just replaced); OLD = 0 adds an SA pair and
//!   NEW = 0 deletes one (see "SA pairs" below).
//! * **Address verification** uses ECHO_REQUEST_SIGNED (a 16-byte random
//!   nonce) in a SEQ-bearing UPDATE sent to the address; the locator turns
//!   ACTIVE when the ACK comes back with the same ECHO_RESPONSE_SIGNED. The
//!   new *preferred* locator of a received LOCATOR_SET is verified at once,
//!   combined with the ACK (RFC 8046 mobility: `UPDATE(ESP_INFO, SEQ, ACK,
//!   ECHO_REQUEST)` to the new address); other new locators are verified on
//!   demand ([`Endpoint::set_peer_preferred`], [`Endpoint::probe`], or when
//!   the path has to use them).
//! * **Path selection** ([`Endpoint::route`]): the peer's preferred ACTIVE
//!   locator, else the one in use if still ACTIVE, else any ACTIVE one;
//!   only with no ACTIVE locator reachable, the preferred (else any)
//!   UNVERIFIED one, and that one is being verified. The source is our
//!   preferred locator of the destination's family, else any of that
//!   family. Every change of the pair emits [`Event::PathChanged`] (the
//!   exchange pair is the initial path and is not reported).
//!   [`Endpoint::set_local_locators`] keeps the address in use when no
//!   address is flagged preferred and it is still there, else picks the
//!   first address of a family the peer has (readdress).
//! * **Credit-based authorization** (RFC 8046 §5.6), per association:
//!   [`Endpoint::on_data_received`] adds the bytes; the credit ages by ×7/8
//!   for every full 5 s (computed lazily, no timer); sending to an
//!   UNVERIFIED locator is allowed only when no locator is ACTIVE and the
//!   credit is **≥** the size ([`Endpoint::authorize_send`] debits it);
//!   ACTIVE locators never touch the credit.
//! * **Rekey** ([`Endpoint::rekey`]): `UPDATE(ESP_INFO(OLD, NEW, index),
//!   SEQ, [DIFFIE_HELLMAN])` → `UPDATE(ESP_INFO, SEQ, ACK, [DH])` →
//!   `UPDATE(ACK)`. Each association keeps its last DH key pair (ours:
//!   from the base exchange, for a Responder the R1's key, or the last
//!   rekey that sent one) and the peer's last DH public value. The
//!   answering side sends a fresh DH key of the association's group as
//!   [`Config::rekey_answer_dh`] says (default: exactly when the request
//!   had one). When either side sent a new DH public value, the new Kij
//!   combines the new key on that side with the other side's last one
//!   (RFC 7402: "if only one side sent a new DH, the other side's old DH
//!   key is reused"; both new when both sent one), and the new KEYMAT uses
//!   it with the base exchange's `#I ‖ #J` salt and index 0; without DH on
//!   either side both draw the four ESP keys from the existing KEYMAT at
//!   the larger of the two indexes. The answering side hands out the new SAs
//!   ([`Event::SasRekeyed`]) when it sends its answer, the requesting side
//!   when the answer arrives; both keep the old inbound SPI mapped until
//!   ESP arrives on the new one ([`Endpoint::esp_received`] →
//!   [`Event::SasRetired`]) or another rekey supersedes it. One rekey at a
//!   time per side; crossing requests: the greater HIT keeps its own
//!   request (and only ACKs the peer's), the smaller HIT abandons its own
//!   and answers.
//! * **SA pairs** (RFC 8046 multihoming, RFC 7402 ESP_INFO semantics):
//!   [`Endpoint::add_sa`] sends `UPDATE(ESP_INFO(OLD = 0, NEW, index),
//!   SEQ, [DH])`, answered `UPDATE(ESP_INFO(OLD = 0, NEW = the peer's new
//!   inbound SPI, index), SEQ, ACK, [DH])` → `UPDATE(ACK)`; keys as for a
//!   rekey (a new DH on either side → new KEYMAT at index 0, else the
//!   four ESP keys from the existing KEYMAT at the larger index). The new
//!   pair is handed out with [`Event::SasRekeyed`] and
//!   [`SaChange::Added`] and becomes the **primary** pair (the one rekeyed, announced in LOCATOR_SETs and
//!   reported by `Association::spi_inbound`/`spi_outbound`); the previous
//!   pair stays live in both directions and is *not* retired by traffic.
//!   [`Endpoint::delete_sa`] sends `UPDATE(ESP_INFO(OLD = inbound SPI, NEW
//!   = 0), SEQ)`; the peer deletes the pair and answers
//!   `UPDATE(ESP_INFO(OLD = its inbound SPI, NEW = 0), SEQ, ACK)` →
//!   `UPDATE(ACK)`; each side reports [`Event::SasRetired`] when it deletes
//!   (the answering side on the request, the requesting side on the
//!   answer, so the pair works until then). Deleting the primary pair
//!   promotes the most recently added remaining one. [`Endpoint::sa_pairs`]
//!   lists the live pairs. Rekey, addition and deletion share the "one
//!   outstanding SA operation per side" slot and the crossing rule above
//!   (the greater HIT keeps its request and only ACKs the peer's; the
//!   smaller abandons its own and answers). Refused before the SEQ is
//!   accepted (dropped unacknowledged, SEQ not consumed): OLD = NEW = 0, an
//!   OLD that is not the outbound SPI of a live pair, a NEW SPI we already
//!   send on, and an answer naming another pair than our deletion
//!   ([`Stats::malformed`]); a request beyond [`MAX_SA_PAIRS`] pairs and the
//!   deletion of the last pair ([`Stats::unsupported`]). Pairs replaced by
//!   a rekey and not yet retired are not live (they cannot be deleted).
//!   Deletion does not deprecate the peer locators announced with the
//!   deleted SPI: the peer's next LOCATOR_SET (which lists all its
//!   locators) decides. New pairs are not bound to a locator by the
//!   engine: which pair carries which path is the data plane's choice.
//! * **Probes** ([`Endpoint::probe`]) are SEQ-bearing UPDATEs with an
//!   ECHO_REQUEST_SIGNED on a chosen pair, answered by `UPDATE(ACK,
//!   ECHO_RESPONSE_SIGNED)` sent back on the reverse pair; never
//!   retransmitted, [`Event::ProbeLost`] after [`Config::probe_timeout`],
//!   and never closing the association. An answered probe verifies an
//!   UNVERIFIED destination. Replies are matched by the echoed nonce (an
//!   ACK without it reports [`Event::ProbeLost`]) and carry the probed pair
//!   and the RTT. [`Endpoint::probe_exploring`] sends the opaque data
//!   [`EXPLORING_MARKER`] ‖ nonce (20 bytes) so that our peer can tell a
//!   REAP exploration from a standby refresh or an address check; other
//!   implementations simply echo it.
//! * **Being probed.** Every new UPDATE carrying ECHO_REQUEST_SIGNED is
//!   answered with ECHO_RESPONSE_SIGNED on the reverse pair and reported
//!   as [`Event::PeerProbed`] (`exploring` when any echo request carries
//!   the marker); retransmitted duplicates are not reported again.
//! * **Forced pair** ([`Endpoint::set_path`], the REAP detector's switch):
//!   path selection returns it before anything else while its destination
//!   is ACTIVE and its source is still ours; it changes no preference flag
//!   and no LOCATOR_SET is sent. An UNVERIFIED destination is verified
//!   first. It is dropped when a locator of it goes away or is deprecated
//!   (the normal choice resumes, with [`Event::PathChanged`]), and replaced
//!   by [`Endpoint::set_peer_preferred`], [`Endpoint::set_local_preferred`]
//!   or another `set_path`.

mod assoc;
pub mod config;
mod endpoint;
mod stats;
pub mod testing;

use std::net::IpAddr;
use std::time::Duration;

pub use assoc::{Association, LocalLocator, LocatorState, PeerLocator, Role, State, Suites};
pub use config::{
    Config, DEFAULT_MSL, DEFAULT_UAL, MAX_SHOTGUN_I1, MAX_SHOTGUN_UPDATE_PAIRS, RekeyAnswerDh,
};
pub use endpoint::Endpoint;
pub use endpoint::update::{EXPLORING_MARKER, LocatorsView, MAX_SA_PAIRS, SEQ_WINDOW};
pub use stats::Stats;

use crate::crypto::{CryptoError, EspSuite, SecurityAssociation};
use crate::wire::{ChecksumMode, Hit, NotifyType, Packet, WireError};

/// How a HIP control packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// IP protocol 139.
    Native,
    /// UDP encapsulation (RFC 5770/9028), with the 32-bit zero marker
    /// removed/added by the caller.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
}

impl Transport {
    /// The transport of a reply (ports swapped).
    pub fn reply(self) -> Transport {
        match self {
            Transport::Native => Transport::Native,
            Transport::Udp { src_port, dst_port } => Transport::Udp {
                src_port: dst_port,
                dst_port: src_port,
            },
        }
    }
}

/// A received HIP control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Source IP address.
    pub src: IpAddr,
    /// Destination IP address (one of ours).
    pub dst: IpAddr,
    /// Transport.
    pub transport: Transport,
    /// The HIP packet.
    pub payload: Vec<u8>,
}

/// A HIP control packet to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Source address to use, when the engine knows it. With `None` the
    /// checksum is zero: call [`Transmit::fill_checksum`] after choosing.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport.
    pub transport: Transport,
    /// The HIP packet.
    pub payload: Vec<u8>,
}

impl Transmit {
    /// Sets `src` and recomputes the HIP checksum for it (zero for UDP).
    /// Returns false (and changes nothing) for mixed address families.
    pub fn fill_checksum(&mut self, src: IpAddr) -> bool {
        let mode = match self.transport {
            Transport::Udp { .. } => ChecksumMode::Udp,
            Transport::Native => match ChecksumMode::from_addrs(src, self.dst) {
                Some(m) => m,
                None => return false,
            },
        };
        Packet::new_unchecked(&mut self.payload[..]).fill_checksum(mode);
        self.src = Some(src);
        true
    }
}

/// Handle of an association inside one [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssocId(pub u64);

/// Why an association failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// I1 retransmissions exhausted.
    I1Timeout,
    /// I2 retransmissions exhausted.
    I2Timeout,
    /// The Responder's DH group is not one we support.
    NoDhProposal,
    /// No common HIP cipher.
    NoHipCipher,
    /// No common ESP transform (or no ESP transport format).
    NoEspTransform,
    /// The Responder does not accept our HIT suite.
    UnsupportedHitSuite,
    /// The Responder's HIT suite has no RHASH this implementation supports.
    UnsupportedResponderSuite,
    /// The puzzle #K is above the limit or the budget ran out.
    PuzzleTooHard,
    /// A crypto operation failed locally.
    Crypto(CryptoError),
}

/// The SAs and parameters of an established association, handed to the
/// data plane.
#[derive(Debug)]
pub struct EstablishedSas {
    /// ESP suite.
    pub suite: EspSuite,
    /// SA for packets we send (SPI chosen by the peer).
    pub outbound: SecurityAssociation,
    /// SA for packets we receive (SPI chosen by us).
    pub inbound: SecurityAssociation,
}

/// What an [`Event::SasRekeyed`] does to the SA pairs of an association.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaChange {
    /// Rekey (`ESP_INFO(OLD, NEW)`): the new pair replaces the old one,
    /// which is retired with [`Event::SasRetired`] once traffic arrives on
    /// the new inbound SA.
    Rekey,
    /// A new pair was added (`ESP_INFO(OLD = 0, NEW)`, RFC 8046
    /// multihoming): it becomes the association's primary pair (the one
    /// the engine rekeys and announces), while the previous pair
    /// (`old_inbound_spi`, `old_outbound_spi`) **stays valid** in both
    /// directions until an [`Event::SasRetired`] names it.
    Added,
}

/// Something the application or data plane must know.
#[derive(Debug)]
pub enum Event {
    /// The base exchange completed (Initiator: R2 verified, state
    /// ESTABLISHED; Responder: R2 sent, state R2-SENT).
    Established {
        /// Association.
        id: AssocId,
        /// Our role.
        role: Role,
        /// Our HIT.
        local_hit: Hit,
        /// Peer HIT.
        peer_hit: Hit,
        /// Our address used for the exchange.
        local_locator: IpAddr,
        /// Peer address used for the exchange.
        peer_locator: IpAddr,
        /// Transport of the control exchange.
        transport: Transport,
        /// The ESP SA pair.
        sas: Box<EstablishedSas>,
    },
    /// The association failed (state E-FAILED).
    Failed {
        /// Association.
        id: AssocId,
        /// Peer HIT if known.
        peer_hit: Option<Hit>,
        /// Why.
        reason: FailReason,
    },
    /// The association was closed (CLOSE received → CLOSED; or our CLOSE
    /// was acknowledged / timed out). Tear down the SAs.
    Closed {
        /// Association.
        id: AssocId,
        /// Peer HIT.
        peer_hit: Hit,
    },
    /// A NOTIFY arrived (informational; no state change).
    NotifyReceived {
        /// Sender's HIT.
        peer_hit: Hit,
        /// Whether the signature verified with a known peer HI.
        authenticated: bool,
        /// Notify message type.
        msg_type: NotifyType,
        /// Notification data.
        data: Vec<u8>,
    },
    /// The Responder's association moved from R2-SENT to ESTABLISHED.
    Confirmed {
        /// Association.
        id: AssocId,
    },
    /// A rekey (UPDATE with ESP_INFO, optionally DIFFIE_HELLMAN) completed
    /// on this side: install `sas.inbound` at once and send on
    /// `sas.outbound` from now on. Keep the old inbound SA (and accept on
    /// it) until [`Event::SasRetired`]; call [`Endpoint::esp_received`]
    /// with the new inbound SPI when authentic ESP arrives on it.
    SasRekeyed {
        /// Association.
        id: AssocId,
        /// Peer HIT.
        peer_hit: Hit,
        /// The new SA pair.
        sas: Box<EstablishedSas>,
        /// The inbound SPI being replaced.
        old_inbound_spi: u32,
        /// The outbound SPI being replaced.
        old_outbound_spi: u32,
        /// A rekey (the old pair is retired later, [`Event::SasRetired`])
        /// or an additional pair (RFC 8046 `ESP_INFO(OLD = 0)`: the old
        /// pair stays valid until deleted with `ESP_INFO(NEW = 0)`).
        kind: SaChange,
    },
    /// SAs can be deleted: the old pair of a rekey (traffic arrived on the
    /// new inbound SA, or another rekey superseded it), or a pair deleted
    /// with `ESP_INFO(NEW = 0)` (RFC 8046; [`Endpoint::delete_sa`] or the
    /// peer's request). Remove the inbound SA; stop sending on the
    /// outbound one.
    SasRetired {
        /// Association.
        id: AssocId,
        /// Peer HIT.
        peer_hit: Hit,
        /// Old inbound SPI.
        inbound_spi: u32,
        /// Old outbound SPI.
        outbound_spi: u32,
    },
    /// The locator pair used for this peer changed (see [`Endpoint::route`]).
    PathChanged {
        /// Peer HIT.
        peer_hit: Hit,
        /// Our source address.
        src: IpAddr,
        /// The peer address.
        dst: IpAddr,
    },
    /// A peer locator changed verification state (new UNVERIFIED locator,
    /// verified → ACTIVE, lifetime expired or withdrawn → DEPRECATED).
    PeerLocatorState {
        /// Peer HIT.
        peer_hit: Hit,
        /// The locator.
        addr: IpAddr,
        /// Its new state.
        state: LocatorState,
    },
    /// Address verification of a peer locator failed (no echo after the
    /// UPDATE retransmissions); the locator stays UNVERIFIED.
    VerificationFailed {
        /// Peer HIT.
        peer_hit: Hit,
        /// The locator.
        addr: IpAddr,
    },
    /// A probe sent with [`Endpoint::probe`] was answered.
    ProbeReply {
        /// Peer HIT.
        peer_hit: Hit,
        /// Probe id returned by [`Endpoint::probe`].
        probe: u64,
        /// Our source address of the probe.
        src: IpAddr,
        /// The peer address probed.
        dst: IpAddr,
        /// Round-trip time.
        rtt: Duration,
    },
    /// The peer probed us: we answered an UPDATE carrying
    /// ECHO_REQUEST_SIGNED (a probe, [`Endpoint::probe`] /
    /// [`Endpoint::probe_exploring`], or an address verification, possibly
    /// combined with a LOCATOR_SET or a rekey) with ECHO_RESPONSE_SIGNED on
    /// the reverse pair. Reported once per new Update ID (not for
    /// retransmissions answered from the stored reply). Feed it to
    /// [`crate::reap::Detector::on_peer_probe`] as the pair (`dst`, `src`).
    PeerProbed {
        /// Peer HIT.
        peer_hit: Hit,
        /// The peer's address (source of the probe).
        src: IpAddr,
        /// Our address it was sent to.
        dst: IpAddr,
        /// The probe carries the exploring marker
        /// ([`EXPLORING_MARKER`]): the peer is exploring (REAP
        /// Probe(Exploring)).
        exploring: bool,
    },
    /// A probe got no answer within [`Config::probe_timeout`].
    ProbeLost {
        /// Peer HIT.
        peer_hit: Hit,
        /// Probe id returned by [`Endpoint::probe`].
        probe: u64,
        /// Our source address of the probe.
        src: IpAddr,
        /// The peer address probed.
        dst: IpAddr,
    },
}

/// Errors of the engine's API calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    /// No local identity with this HIT.
    #[error("no local identity with HIT {0}")]
    UnknownIdentity(Hit),
    /// No association with this peer / id.
    #[error("no such association")]
    UnknownAssociation,
    /// `connect` without any peer locator.
    #[error("no peer locator given")]
    NoLocators,
    /// Crypto failure.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Codec failure while building a packet.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The association is not ESTABLISHED (or R2-SENT) yet.
    #[error("association not established")]
    NotEstablished,
    /// The address is not a locator of the association.
    #[error("unknown locator {0}")]
    UnknownLocator(IpAddr),
    /// The locator is DEPRECATED and cannot be used.
    #[error("locator {0} is deprecated")]
    DeprecatedLocator(IpAddr),
    /// A rekey (or SA addition / deletion) of this association is already
    /// in progress.
    #[error("rekey already in progress")]
    RekeyInProgress,
    /// No live SA pair of the association has this inbound SPI.
    #[error("no SA pair with inbound SPI {0:#x}")]
    UnknownSpi(u32),
    /// The association's last SA pair cannot be deleted.
    #[error("cannot delete the last SA pair")]
    LastSaPair,
    /// The association already has [`MAX_SA_PAIRS`] SA pairs.
    #[error("SA pair limit reached")]
    SaPairLimit,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn reply_swaps_ports() {
        let t = Transport::Udp {
            src_port: 1,
            dst_port: 2,
        };
        assert_eq!(
            t.reply(),
            Transport::Udp {
                src_port: 2,
                dst_port: 1
            }
        );
        assert_eq!(Transport::Native.reply(), Transport::Native);
    }

    #[test]
    fn fill_checksum_makes_a_verifiable_packet() {
        let src = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let repr =
            crate::wire::PacketRepr::new(crate::wire::PacketType::I1, Hit::from_u128(1), Hit::ZERO);
        let mut t = Transmit {
            src: None,
            dst,
            transport: Transport::Native,
            payload: repr.to_bytes(ChecksumMode::Udp).expect("emit"),
        };
        assert!(t.fill_checksum(src));
        let mode = ChecksumMode::from_addrs(src, dst).expect("mode");
        assert!(
            Packet::new_checked(&t.payload[..])
                .expect("pkt")
                .verify_checksum(mode)
        );
        let v4 = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        assert!(!t.fill_checksum(v4), "mixed families");
    }
}
