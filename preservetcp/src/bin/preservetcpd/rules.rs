//! The ip6tables (nf_tables backend) rules that feed the NFQUEUEs and the
//! NFLOG group the daemon learns from.
//!
//! Only packets the daemon must *modify* wait in NFQUEUE before a
//! migration: the outgoing SYN (PREFIX_SYN), the SYN+ACK answering an offer
//! (PREFIX_SYN + PREFIX_ACK) and the client's ACK of that SYN+ACK
//! (PREFIX_ACK). Incoming handshake packets are only *learned*: a copy goes
//! to NFLOG (see `nflog.rs`) and the packet itself continues at once (the
//! kernel skips the PREFIX options, type action `00`). Packets of an
//! established connection on its original pair never leave the kernel and
//! leave our chains after a few cheap native expressions (`ct state` and
//! the conntrack packet counter come before any extension header or socket
//! match).
//!
//! Everything lives in the `mangle` table in chains of our own:
//!
//! ```text
//! OUTPUT     -> PTCP_OUT:
//!   -p tcp -j PTCP_MOVED                         (per moved connection: queue)
//!   mark OPT_OUT_MARK/OPT_IN_MASK     -> RETURN (opted out: no offer, no
//!                                        answer, no PREFIX_ACK)
//!   per-tuple opt-ins (SYN)           -> PTCP_OFFER
//!   ct state established, >= 3 packets original -> RETURN (data segments)
//!   SYN (no ACK) of covered traffic   -> PTCP_OFFER: connmark OFFER_BIT, queue OUT
//!   non-SYN, connmark CT_BIT, ct direction original, 2nd packet in the
//!     original direction              -> PTCP_ACK: connmark ACKED_BIT,
//!                                        queue OUT  (the client's ACK that
//!                                                    gets PREFIX_ACK)
//!   SYN+ACK, connmark CT_BIT          -> queue OUT  (the answer to an offer)
//! PREROUTING -> PTCP_PRE:
//!   packet mark FAST_MARK       -> RETURN        (rewritten by the fast path)
//!   -p tcp -j PTCP_MOVED_IN                      (per moved connection: its
//!                                                original tuple -> queue IN)
//!   ct state established, >= 3 packets original, connmark not CT_BIT
//!     without ACKED_BIT                 -> RETURN (data segments)
//!   SYN+ACK, connmark OFFER_BIT -> goto PTCP_LEARN (answer to our offer,
//!                                                with or without options)
//!   SYN/SYN+ACK with a dest-opts header -> goto PTCP_LEARN
//!   non-SYN with a dest-opts header     -> connmark ACKED_BIT
//!   dest-opts header, ct established    -> goto PTCP_LEARN (the PREFIX_ACK,
//!                                        also one arriving after the close)
//!   dest-opts header, local socket      -> goto PTCP_LEARN
//!   dest-opts header (other pair)       -> queue IN
//!   ct state established        -> RETURN        (original pairs)
//!   tcp matching a local socket -> RETURN        (original pairs: fast path)
//!   tcp without SYN             -> queue IN      (alternative pairs)
//! PTCP_LEARN:
//!   dest-opts header -> connmark CT_BIT (so the answer / the ACK is queued)
//!   NFLOG group (learned without holding the packet)
//! raw PREROUTING -> PTCP_RAW_PRE (before conntrack):
//!   ICMPv6 Packet Too Big to a local address quoting TCP, the quoted
//!     tuple a local socket's          -> RETURN
//!   the same, any other quoted tuple  -> queue IN (a quote of a segment on
//!                                        another pair goes back to the
//!                                        original tuple)
//! ```
//!
//! With the tc BPF programs (the default, see `bpf.rs`) none of this is
//! installed: the programs decide which SYNs are covered, insert the
//! options, copy the incoming handshake packets to the daemon, rewrite
//! segments on alternative pairs back to the original tuple, and rewrite
//! and redirect the segments of moved connections (`ptcp_moved`). No
//! netfilter hook of ours exists in the namespace, so nothing turns
//! conntrack on either; what stays outside the programs are the fallback
//! routes and rules below, which keep a moved connection's original tuple
//! routable. `--no-bpf` installs the full rule set above, hooked at start,
//! and the nftables fast path ([`fast_setup`]).
//!
//! "Covered" is `-m multiport --ports <ports>` for each configured port
//! list and `-m mark --mark OPT_IN_MARK/OPT_IN_MASK` for opted-in sockets;
//! [`Rules::opt_in`] adds a rule for one 4-tuple (at most
//! `--max-opt-ins` of them, [`DEFAULT_MAX_OPT_INS`]; each is removed again
//! once its connection is gone, see [`Rules::expire_opt_ins`]). A socket
//! marked `OPT_OUT_MARK/OPT_IN_MASK` is never covered: the rule letting its
//! packets leave `PTCP_OUT` comes before every queue rule (its SYN gets no
//! offer; a listener's SYN+ACK, which carries the listener's mark, answers
//! none). Every
//! NFQUEUE rule has `--queue-bypass`: without a daemon, traffic is plain
//! TCP.
//!
//! `ct state established` is safe before the socket match: a segment on an
//! alternative pair has a conntrack entry of its own that only ever sees
//! one direction (the answers leave rewritten on the original entry, and
//! the fast path rewrites incoming packets before conntrack), so it never
//! becomes established and still reaches the socket rule.
//!
//! The socket match ignores listeners bound to the unspecified address, so
//! a segment on an alternative pair (no socket has that tuple) is queued
//! and rewritten before the kernel would answer it with a RST, while
//! segments on a connection's original tuple go straight to the kernel —
//! except while the connection has moved away from it: then a segment on
//! the original tuple means the peer went back to the original pair, and
//! `PTCP_MOVED_IN` queues it so the engine follows. The fast path marks the
//! packets it rewrote to the original tuple ([`FAST_MARK`]) so that only
//! packets that really arrived on the original pair are queued.

use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use preservetcp::FourTuple;
use preservetcp::control::{OPT_IN_MARK, OPT_IN_MASK, OPT_OUT_MARK};

const OUT: &str = "PTCP_OUT";
const PRE: &str = "PTCP_PRE";
/// The `raw` PREROUTING chain for ICMPv6 Packet Too Big (see
/// [`Rules::install`]).
const RAW_PRE: &str = "PTCP_RAW_PRE";
/// An ICMPv6 Packet Too Big to this host quoting a TCP segment (the quoted
/// IPv6 header starts at octet 48, its next header is octet 54).
const TOO_BIG: [&str; 12] = [
    "-p",
    "ipv6-icmp",
    "--icmpv6-type",
    "packet-too-big",
    "-m",
    "addrtype",
    "--dst-type",
    "LOCAL",
    "-m",
    "u32",
    "--u32",
    "51&0xFF=6",
];
const MOVED: &str = "PTCP_MOVED";
const MOVED_IN: &str = "PTCP_MOVED_IN";
const OFFER: &str = "PTCP_OFFER";
const ACKQ: &str = "PTCP_ACK";
const LEARN: &str = "PTCP_LEARN";
/// Packet mark bit the fast path sets on incoming packets it rewrote.
pub const FAST_MARK: u32 = 0x0200_0000;
/// Connmark bit set for connections whose SYN (server) or SYN+ACK (client)
/// carried a dest-opts header.
const CT_BIT: &str = "0x1000000/0x1000000";
/// Connmark bit set for connections whose SYN this host offered on.
const OFFER_BIT: &str = "0x4000000/0x4000000";
/// The bits alone, for `CONNMARK --or-mark`.
const CT_OR: &str = "0x1000000";
const OFFER_OR: &str = "0x4000000";
/// Connmark bit set once the PREFIX_ACK of a connection passed: sent by
/// this host (client) or seen arriving (server). Until then the data
/// shortcut in PREROUTING skips only connections without [`CT_BIT`], so a
/// PREFIX_ACK overtaken by data (the client's ACK waits in NFQUEUE while
/// its first data segment does not) is still learned.
const ACKED_OR: &str = "0x8000000";
/// Shortcut condition: not an option-carrying connection, or one whose
/// PREFIX_ACK passed (`mark & (CT|ACKED) != CT`).
const SHORTCUT_MARK: &str = "0x1000000/0x9000000";

/// Default of `--max-opt-ins`: at most this many 4-tuples are opted in
/// through the control socket at once without BPF. Each is an ip6tables
/// rule every outgoing SYN passes (and `ip6tables` re-reads the whole
/// chain on each change), so the chain must not grow without bound; a
/// request beyond the limit fails ([`OptInError::Limit`]). (With BPF the
/// opt-ins are entries of the programs' `ptcp_optin` map, an LRU hash of
/// 4096 entries.)
pub const DEFAULT_MAX_OPT_INS: usize = 256;

/// An opted-in 4-tuple whose socket has not appeared this long after the
/// request is dropped (the request is meant for a connection about to be
/// made); one whose socket was seen goes as soon as the socket is gone.
pub const OPT_IN_GRACE: Duration = Duration::from_secs(30);

/// Why an opt-in was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptInError {
    /// [`Rules::opt_in`] already covers this many tuples (the limit).
    Limit(usize),
    /// The rule could not be added (the `ip6tables` error).
    Rule(String),
}

impl std::fmt::Display for OptInError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptInError::Limit(n) => write!(
                f,
                "opt-in limit reached: {n} tuples are opted in already (--max-opt-ins)"
            ),
            OptInError::Rule(e) => write!(f, "opt-in rule: {e}"),
        }
    }
}

impl std::error::Error for OptInError {}

/// One tuple opted in by [`Rules::opt_in`].
#[derive(Debug, Clone, Copy)]
struct OptIn {
    /// When it was requested (last).
    since: Instant,
    /// Whether its socket has been seen (connected).
    seen: bool,
}

/// The daemon's ip6tables rules (see the module documentation).
#[derive(Debug)]
pub struct Rules {
    q_out: u16,
    q_in: u16,
    nflog_group: u16,
    ports: Vec<u16>,
    /// The tc BPF programs do all of it (see `bpf.rs`): no rule is
    /// installed.
    bpf: bool,
    /// Most tuples [`Rules::opt_in`] covers at once.
    max_opt_ins: usize,
    /// The tuples with an opt-in rule in `PTCP_OUT`.
    opt_ins: Mutex<HashMap<FourTuple, OptIn>>,
}

fn ip6t(args: &[String]) -> Result<(), String> {
    let out = Command::new("ip6tables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("ip6tables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip6tables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Matches packets of `t` in the incoming direction, on the original tuple.
fn tuple_match_in(t: &FourTuple) -> Vec<String> {
    tuple_match(&FourTuple {
        local: t.peer,
        local_port: t.peer_port,
        peer: t.local,
        peer_port: t.local_port,
    })
}

fn tuple_match(t: &FourTuple) -> Vec<String> {
    vec![
        "-p".into(),
        "tcp".into(),
        "-s".into(),
        t.local.to_string(),
        "-d".into(),
        t.peer.to_string(),
        "--sport".into(),
        t.local_port.to_string(),
        "--dport".into(),
        t.peer_port.to_string(),
    ]
}

impl Rules {
    /// The rules for NFQUEUEs `q_out`/`q_in`, NFLOG group `nflog_group`
    /// and the covered `ports` (none installed with `bpf`), with at most
    /// `max_opt_ins` opted-in tuples.
    pub fn new(
        q_out: u16,
        q_in: u16,
        nflog_group: u16,
        ports: Vec<u16>,
        bpf: bool,
        max_opt_ins: usize,
    ) -> Self {
        Self {
            q_out,
            q_in,
            nflog_group,
            ports,
            bpf,
            max_opt_ins,
            opt_ins: Mutex::new(HashMap::new()),
        }
    }

    fn opt_ins(&self) -> MutexGuard<'_, HashMap<FourTuple, OptIn>> {
        self.opt_ins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self, q: u16) -> Vec<String> {
        s(&["-j", "NFQUEUE", "--queue-num"])
            .into_iter()
            .chain([q.to_string(), "--queue-bypass".into()])
            .collect()
    }

    fn covered(&self) -> Vec<Vec<String>> {
        let mut v = vec![vec![
            "-m".into(),
            "mark".into(),
            "--mark".into(),
            format!("{OPT_IN_MARK:#x}/{OPT_IN_MASK:#x}"),
        ]];
        // multiport takes at most 15 ports per rule.
        for chunk in self.ports.chunks(15) {
            let list: Vec<String> = chunk.iter().map(u16::to_string).collect();
            v.push(vec![
                "-m".into(),
                "multiport".into(),
                "--ports".into(),
                list.join(","),
            ]);
        }
        v
    }

    fn append(&self, chain: &str, m: Vec<String>, q: u16) -> Result<(), String> {
        let mut a = vec!["-t".into(), "mangle".into(), "-A".into(), chain.into()];
        a.extend(m);
        a.extend(self.queue(q));
        ip6t(&a)
    }

    /// Removes our chains (ignoring errors: they may not exist), the
    /// opt-in rules with them.
    pub fn remove_all(&self) {
        self.opt_ins().clear();
        self.unhook();
        for c in [OUT, PRE, MOVED, MOVED_IN, OFFER, ACKQ, LEARN] {
            let _ = ip6t(&s(&["-t", "mangle", "-F", c]));
        }
        for c in [OUT, PRE, MOVED, MOVED_IN, OFFER, ACKQ, LEARN] {
            let _ = ip6t(&s(&["-t", "mangle", "-X", c]));
        }
        let _ = ip6t(&s(&["-t", "raw", "-F", RAW_PRE]));
        let _ = ip6t(&s(&["-t", "raw", "-X", RAW_PRE]));
    }

    /// Jumps from OUTPUT and PREROUTING to our chains (at the top).
    pub fn hook(&self) -> Result<(), String> {
        ip6t(&s(&["-t", "mangle", "-I", "OUTPUT", "1", "-j", OUT]))?;
        ip6t(&s(&["-t", "mangle", "-I", "PREROUTING", "1", "-j", PRE]))?;
        ip6t(&s(&["-t", "raw", "-I", "PREROUTING", "1", "-j", RAW_PRE]))
    }

    /// Removes the jumps, and the `mangle` base chains if that left them
    /// empty: an empty base chain still registers its hook, which every
    /// packet in the namespace then passes through (the output one is a
    /// `route` chain, which also saves and compares each packet's
    /// addresses). A base chain someone else's rules are in stays.
    pub fn unhook(&self) {
        for (hook, chain) in [("OUTPUT", OUT), ("PREROUTING", PRE)] {
            while ip6t(&s(&["-t", "mangle", "-D", hook, "-j", chain])).is_ok() {}
            let _ = ip6t(&s(&["-t", "mangle", "-X", hook]));
        }
        while ip6t(&s(&["-t", "raw", "-D", "PREROUTING", "-j", RAW_PRE])).is_ok() {}
        let _ = ip6t(&s(&["-t", "raw", "-X", "PREROUTING"]));
    }

    /// Installs the static rules (with BPF: none), hooked.
    pub fn install(&self) -> Result<(), String> {
        self.remove_all();
        let mangle = |rule: &[&str]| {
            let mut a = s(&["-t", "mangle"]);
            a.extend(s(rule));
            ip6t(&a)
        };
        let fast = format!("{FAST_MARK:#x}/{FAST_MARK:#x}");
        if self.bpf {
            return Ok(());
        }
        for c in [OUT, PRE, MOVED, MOVED_IN, OFFER, ACKQ, LEARN] {
            ip6t(&s(&["-t", "mangle", "-N", c]))?;
        }
        // Offers: remember the offer in the connmark, then queue.
        mangle(&["-A", OFFER, "-j", "CONNMARK", "--or-mark", OFFER_OR])?;
        self.append(OFFER, Vec::new(), self.q_out)?;
        // The client's ACK that gets PREFIX_ACK: remember it passed, queue.
        mangle(&["-A", ACKQ, "-j", "CONNMARK", "--or-mark", ACKED_OR])?;
        self.append(ACKQ, Vec::new(), self.q_out)?;
        // Learning: remember that the peer's handshake carried options (its
        // answer / the ACK must be queued), copy to NFLOG, continue.
        mangle(&[
            "-A",
            LEARN,
            "-m",
            "ipv6header",
            "--header",
            "dst",
            "--soft",
            "-j",
            "CONNMARK",
            "--or-mark",
            CT_OR,
        ])?;
        let group = self.nflog_group.to_string();
        mangle(&["-A", LEARN, "-j", "NFLOG", "--nflog-group", &group])?;

        mangle(&["-A", OUT, "-p", "tcp", "-j", MOVED])?;
        // Opted-out sockets (SHIM_DONTSHIM): rule 2, before every queue
        // rule and the per-tuple opt-ins inserted after it, so neither
        // their SYN nor a listener's SYN+ACK nor the ACK is queued.
        let out_mark = format!("{OPT_OUT_MARK:#x}/{OPT_IN_MASK:#x}");
        mangle(&[
            "-A", OUT, "-p", "tcp", "-m", "mark", "--mark", &out_mark, "-j", "RETURN",
        ])?;
        mangle(&established_after_handshake(OUT, false))?;
        for cov in self.covered() {
            let mut a = s(&[
                "-t",
                "mangle",
                "-A",
                OUT,
                "-p",
                "tcp",
                "--tcp-flags",
                "SYN,ACK",
                "SYN",
            ]);
            a.extend(cov);
            a.extend(s(&["-j", OFFER]));
            ip6t(&a)?;
        }
        mangle(&[
            "-A",
            OUT,
            "-p",
            "tcp",
            "!",
            "--tcp-flags",
            "SYN",
            "SYN",
            "-m",
            "connmark",
            "--mark",
            CT_BIT,
            "-m",
            "conntrack",
            "--ctdir",
            "ORIGINAL",
            "-m",
            "connbytes",
            "--connbytes",
            "2:2",
            "--connbytes-dir",
            "original",
            "--connbytes-mode",
            "packets",
            "-j",
            ACKQ,
        ])?;
        let m = s(&[
            "-p",
            "tcp",
            "--tcp-flags",
            "SYN,ACK",
            "SYN,ACK",
            "-m",
            "connmark",
            "--mark",
            CT_BIT,
        ]);
        self.append(OUT, m, self.q_out)?;

        mangle(&["-A", PRE, "-m", "mark", "--mark", &fast, "-j", "RETURN"])?;
        mangle(&["-A", PRE, "-p", "tcp", "-j", MOVED_IN])?;
        mangle(&established_after_handshake(PRE, true))?;
        mangle(&[
            "-A",
            PRE,
            "-p",
            "tcp",
            "--tcp-flags",
            "SYN,ACK",
            "SYN,ACK",
            "-m",
            "connmark",
            "--mark",
            OFFER_BIT,
            "-g",
            LEARN,
        ])?;
        let dst = ["-m", "ipv6header", "--header", "dst", "--soft"];
        let mut r = vec!["-A", PRE, "-p", "tcp", "--tcp-flags", "SYN", "SYN"];
        r.extend(dst);
        r.extend(["-g", LEARN]);
        mangle(&r)?;
        let mut r = vec!["-A", PRE, "-p", "tcp", "!", "--tcp-flags", "SYN", "SYN"];
        r.extend(dst);
        r.extend(["-j", "CONNMARK", "--or-mark", ACKED_OR]);
        mangle(&r)?;
        // The PREFIX_ACK on the original tuple: its conntrack entry is
        // established (also when it arrives late, after the connection
        // closed: then no socket matches, but it must not be queued).
        let mut r = vec!["-A", PRE, "-p", "tcp"];
        r.extend(dst);
        r.extend(["-m", "conntrack", "--ctstate", "ESTABLISHED", "-g", LEARN]);
        mangle(&r)?;
        let mut r = vec!["-A", PRE, "-p", "tcp"];
        r.extend(dst);
        r.extend(["-m", "socket", "-g", LEARN]);
        mangle(&r)?;
        let mut m = s(&["-p", "tcp"]);
        m.extend(s(&dst));
        self.append(PRE, m, self.q_in)?;
        mangle(&[
            "-A",
            PRE,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED",
            "-j",
            "RETURN",
        ])?;
        mangle(&["-A", PRE, "-p", "tcp", "-m", "socket", "-j", "RETURN"])?;
        self.append(PRE, s(&["-p", "tcp", "!", "--syn"]), self.q_in)?;

        // Packet Too Big quoting a segment on another pair: the engine puts
        // the quote back to the original tuple, so that the socket learns
        // the path MTU. In `raw` (before conntrack), so that conntrack sees
        // the translated quote and finds the connection (RELATED), and a
        // firewall dropping INVALID keeps it. A quote some socket has (the
        // socket match looks up the quoted tuple of an ICMPv6 error) is
        // that socket's and stays in the kernel.
        ip6t(&s(&["-t", "raw", "-N", RAW_PRE]))?;
        let mut r = s(&["-t", "raw", "-A", RAW_PRE]);
        r.extend(s(&TOO_BIG));
        r.extend(s(&["-m", "socket", "-j", "RETURN"]));
        ip6t(&r)?;
        let mut r = s(&["-t", "raw", "-A", RAW_PRE]);
        r.extend(s(&TOO_BIG));
        r.extend(self.queue(self.q_in));
        ip6t(&r)?;

        self.hook()
    }

    /// Queue every outgoing packet of the connection with this original
    /// tuple, and the incoming packets that arrive on the original tuple
    /// (the peer going back to the original pair).
    pub fn redirect(&self, t: &FourTuple) -> Result<(), String> {
        let mut a = s(&["-t", "mangle", "-A", MOVED]);
        a.extend(tuple_match(t));
        a.extend(self.queue(self.q_out));
        ip6t(&a)?;
        let mut a = s(&["-t", "mangle", "-A", MOVED_IN]);
        a.extend(tuple_match_in(t));
        a.extend(self.queue(self.q_in));
        ip6t(&a)
    }

    /// Undo [`Rules::redirect`] (both rules; reports the first failure).
    pub fn unredirect(&self, t: &FourTuple) -> Result<(), String> {
        let mut a = s(&["-t", "mangle", "-D", MOVED]);
        a.extend(tuple_match(t));
        a.extend(self.queue(self.q_out));
        let out = ip6t(&a);
        let mut a = s(&["-t", "mangle", "-D", MOVED_IN]);
        a.extend(tuple_match_in(t));
        a.extend(self.queue(self.q_in));
        out.and(ip6t(&a))
    }

    /// The opt-in rule of `t` (after the operation and its arguments).
    fn opt_in_rule(t: &FourTuple) -> Vec<String> {
        let mut a = tuple_match(t);
        a.extend(s(&["--tcp-flags", "SYN,ACK", "SYN", "-j", OFFER]));
        a
    }

    /// Covers one 4-tuple: its SYN is offered on (the ACK after an answer
    /// is queued by the generic connmark rule). A tuple covered already
    /// stays covered (its grace starts again); beyond the limit
    /// ([`DEFAULT_MAX_OPT_INS`]) nothing is added.
    pub fn opt_in(&self, t: &FourTuple, now: Instant) -> Result<(), OptInError> {
        let mut opt_ins = self.opt_ins();
        if let Some(o) = opt_ins.get_mut(t) {
            o.since = now;
            return Ok(());
        }
        if opt_ins.len() >= self.max_opt_ins {
            return Err(OptInError::Limit(self.max_opt_ins));
        }
        // After the MOVED jump and the opt-out rule.
        let mut a = s(&["-t", "mangle", "-I", OUT, "3"]);
        a.extend(Self::opt_in_rule(t));
        ip6t(&a).map_err(OptInError::Rule)?;
        opt_ins.insert(
            *t,
            OptIn {
                since: now,
                seen: false,
            },
        );
        Ok(())
    }

    /// The tuples [`Rules::opt_in`] covers now.
    pub fn opt_in_tuples(&self) -> Vec<FourTuple> {
        self.opt_ins().keys().copied().collect()
    }

    /// Removes the opt-in rules whose connection is gone: `checked` tells
    /// for some opted-in tuples whether a socket with that tuple exists
    /// now. A tuple whose socket was seen before and is gone now, and one
    /// whose socket never appeared within [`OPT_IN_GRACE`], loses its rule;
    /// tuples not in `checked` are left alone. Returns each tuple removed
    /// with the outcome of deleting its rule (the tuple is forgotten
    /// either way: a rule that cannot be deleted is no longer ours to
    /// count).
    pub fn expire_opt_ins(
        &self,
        checked: &[(FourTuple, bool)],
        now: Instant,
    ) -> Vec<(FourTuple, Result<(), String>)> {
        let mut opt_ins = self.opt_ins();
        let mut removed = Vec::new();
        for (t, present) in checked {
            let Some(o) = opt_ins.get_mut(t) else {
                continue;
            };
            if *present {
                o.seen = true;
                continue;
            }
            if o.seen || now.saturating_duration_since(o.since) >= OPT_IN_GRACE {
                opt_ins.remove(t);
                let mut a = s(&["-t", "mangle", "-D", OUT]);
                a.extend(Self::opt_in_rule(t));
                removed.push((*t, ip6t(&a)));
            }
        }
        removed
    }
}

/// The shortcut for established connections past their handshake: `ct
/// state established` and at least 3 packets in the original direction
/// (SYN, ACK, one more), native nftables expressions, so data segments
/// skip the extension header and socket matches. The handshake packets
/// that matter come earlier: the client's ACK is the 2nd packet in the
/// original direction, the SYN+ACK the 1st in reply. With `acked`
/// (PREROUTING), connections whose PREFIX_ACK has not passed yet are not
/// short-cut ([`SHORTCUT_MARK`]).
fn established_after_handshake(chain: &str, acked: bool) -> Vec<&str> {
    let mut v = vec![
        "-A",
        chain,
        "-m",
        "conntrack",
        "--ctstate",
        "ESTABLISHED",
        "-m",
        "connbytes",
        "--connbytes",
        "3:",
        "--connbytes-dir",
        "original",
        "--connbytes-mode",
        "packets",
    ];
    if acked {
        v.extend(["-m", "connmark", "!", "--mark", SHORTCUT_MARK]);
    }
    v.extend(["-j", "RETURN"]);
    v
}

/// Default routing table of the fallback routes (`--fallback-table`).
pub const DEFAULT_FALLBACK_TABLE: u32 = 4242;
/// Default preference of the per-connection policy rules that select the
/// fallback table (`--fallback-pref`): after `local` (0), before `main`
/// (32766), so they also apply on a host with a default route.
pub const DEFAULT_FALLBACK_PREF: u32 = 32000;
/// The routing protocol number (`proto` of routes, `protocol` of policy
/// rules) the daemon tags its fallback routes and rules with: at start it
/// removes what a daemon that did not exit cleanly left with this tag
/// (and only that), see [`Fallback::setup`]. Unassigned in iproute2's
/// `rt_protos`.
pub const FALLBACK_PROTO: u8 = 80;

/// Checks a `--fallback-table` value: a table of its own, not `unspec`
/// (0) nor one of the reserved `default`, `main` and `local` (253–255).
pub fn check_fallback_table(table: u32) -> Result<u32, String> {
    if table == 0 || (253..=255).contains(&table) {
        Err(format!(
            "--fallback-table {table}: not 0 and not a reserved table (253-255)"
        ))
    } else {
        Ok(table)
    }
}

/// Checks a `--fallback-pref` value: after the `local` rule (0) and
/// before the `main` one (32766).
pub fn check_fallback_pref(pref: u32) -> Result<u32, String> {
    if (1..32766).contains(&pref) {
        Ok(pref)
    } else {
        Err(format!("--fallback-pref {pref}: must be within 1..=32765"))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fallback routing that keeps a moved connection's *original* tuple
/// usable by the kernel after the original link is gone. When a link goes
/// down Linux removes its prefix route and the local route of its
/// addresses (also with `keep_addr_on_down`); the kernel's TCP would then
/// fail the route lookup for the original destination before the OUTPUT
/// hook (so nothing could rewrite the packet), and incoming packets
/// rewritten to the original local address would not be delivered — on a
/// host with a default route they would even be routed to forwarding. So
/// for a moved connection the daemon adds, in its fallback table (4242,
/// `--fallback-table`), `local <orig local>/128 dev lo` and `<orig
/// peer>/128 dev <device>` ([`Fallback::routes`]; the device of the
/// on-link route to the new pair, [`onlink_dev`], else the device of the
/// current local address), and two policy rules at its preference (32000,
/// `--fallback-pref`), before `main`, that send exactly this connection's
/// original 5-tuple there, one per direction ([`Fallback::rules`]: `from L
/// to P ipproto tcp sport l dport p` and the reverse; added after the
/// first fallback route, see `run_actions`). Without BPF outgoing packets
/// are rewritten in OUTPUT; with an on-link new pair the fallback route
/// already sends them out of the right device and the fast path skips the
/// reroute ([`fast_setup`]), otherwise they are rerouted by their new
/// addresses and the device of the fallback route only has to exist. With
/// BPF the tc egress program rewrites them *after* the kernel's own
/// neighbour lookup for the original destination, so the fallback route
/// goes through the new pair's next hop (`via`, the new peer itself on a
/// link), and the program hands the packet to the pair's device whichever
/// device the route chose.
///
/// The rules only match the original tuple, so other traffic to the same
/// addresses keeps the host's routes; they are removed when the connection
/// returns to its original pair or closes. The table's routes stay until
/// the daemon exits; one route per original peer serves every moved
/// connection to it (the last move wins; with BPF the daemon writes every
/// moved connection's route and device again after each rtnetlink batch).
///
/// The daemon removes only what it added: it remembers each rule and
/// route, and [`Fallback::teardown`] deletes exactly those (other rules at
/// the same preference and other routes in the same table stay). Its
/// routes and rules also carry the protocol tag [`FALLBACK_PROTO`], by
/// which [`Fallback::setup`] finds what a daemon killed before its
/// clean-up left behind.
#[derive(Debug)]
pub struct Fallback {
    /// The routing table (as `ip` wants it).
    table: String,
    /// The preference of the policy rules.
    pref: String,
    /// [`FALLBACK_PROTO`] as a string.
    proto: String,
    /// Connections (original tuple) whose two policy rules this daemon
    /// added.
    rules: Mutex<HashSet<FourTuple>>,
    /// Routes this daemon put in the table: whether it is a `local` route,
    /// and its destination (a /128).
    routes: Mutex<HashSet<(bool, Ipv6Addr)>>,
}

impl Fallback {
    /// Fallback routing in `table` with rules at preference `pref`
    /// (nothing is changed yet).
    pub fn new(table: u32, pref: u32) -> Self {
        Self {
            table: table.to_string(),
            pref: pref.to_string(),
            proto: FALLBACK_PROTO.to_string(),
            rules: Mutex::new(HashSet::new()),
            routes: Mutex::new(HashSet::new()),
        }
    }

    /// Removes the rules (at this preference) and routes (in this table)
    /// tagged [`FALLBACK_PROTO`]: what a daemon that was killed left
    /// behind. Untagged ones, someone else's, stay.
    pub fn setup(&self) {
        let _ = ip(&[
            "-6",
            "rule",
            "flush",
            "pref",
            &self.pref,
            "protocol",
            &self.proto,
        ]);
        let _ = ip(&[
            "-6",
            "route",
            "flush",
            "table",
            &self.table,
            "proto",
            &self.proto,
        ]);
    }

    /// Removes every rule and route this daemon added (errors ignored:
    /// some may be gone already).
    pub fn teardown(&self) {
        let rules: Vec<FourTuple> = lock(&self.rules).drain().collect();
        for t in rules {
            let _ = self.change_rules(&t, false);
        }
        let routes: Vec<(bool, Ipv6Addr)> = lock(&self.routes).drain().collect();
        for (local, dst) in routes {
            let dst = format!("{dst}/128");
            let mut a = vec!["-6", "route", "del"];
            if local {
                a.push("local");
            }
            a.extend([dst.as_str(), "table", &self.table]);
            let _ = ip(&a);
        }
    }

    /// Adds the fallback routes for a connection moved to `current_dev`;
    /// with `via`, the original peer is routed through that next hop (the
    /// tc programs rewrite after the kernel's neighbour lookup, which must
    /// succeed for the original destination: through the new pair's next
    /// hop it does).
    pub fn routes(
        &self,
        t: &FourTuple,
        current_dev: &str,
        via: Option<Ipv6Addr>,
    ) -> Result<(), String> {
        let l = format!("{}/128", t.local);
        let p = format!("{}/128", t.peer);
        let via = via.map(|v| v.to_string());
        // Remembered before the change: a route that went in is removed at
        // exit even if the command reported an error.
        lock(&self.routes).insert((true, t.local));
        ip(&[
            "-6",
            "route",
            "replace",
            "local",
            &l,
            "dev",
            "lo",
            "table",
            &self.table,
            "proto",
            &self.proto,
        ])?;
        lock(&self.routes).insert((false, t.peer));
        let mut a = vec!["-6", "route", "replace", &p];
        if let Some(v) = &via {
            a.extend(["via", v.as_str()]);
        }
        a.extend([
            "dev",
            current_dev,
            "table",
            &self.table,
            "proto",
            &self.proto,
        ]);
        ip(&a)
    }

    /// Adds (`add`) or removes a connection's fallback rules.
    pub fn rules(&self, t: &FourTuple, add: bool) -> Result<(), String> {
        let mut rules = lock(&self.rules);
        if add {
            rules.insert(*t);
        } else {
            rules.remove(t);
        }
        drop(rules);
        self.change_rules(t, add)
    }

    /// Adds or deletes both rules of `t` (reports the first failure).
    fn change_rules(&self, t: &FourTuple, add: bool) -> Result<(), String> {
        let mut result = Ok(());
        for sel in fallback_selectors(t) {
            let mut a: Vec<&str> = vec!["-6", "rule", if add { "add" } else { "del" }];
            a.extend(["pref", &self.pref]);
            a.extend(sel.iter().map(String::as_str));
            a.extend(["table", &self.table, "protocol", &self.proto]);
            let r = ip(&a);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// Locks `m`, also after a panic of another holder (the sets stay usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The selectors of a connection's two fallback rules.
fn fallback_selectors(t: &FourTuple) -> [[String; 10]; 2] {
    let sel = |from: Ipv6Addr, to: Ipv6Addr, sport: u16, dport: u16| {
        [
            "from".to_string(),
            format!("{from}/128"),
            "to".into(),
            format!("{to}/128"),
            "ipproto".into(),
            "tcp".into(),
            "sport".into(),
            sport.to_string(),
            "dport".into(),
            dport.to_string(),
        ]
    };
    [
        sel(t.local, t.peer, t.local_port, t.peer_port),
        sel(t.peer, t.local, t.peer_port, t.local_port),
    ]
}

/// The device and the gateway (if any) of the route from `local` to
/// `peer` (`ip -6 route get PEER from LOCAL`); `None` for a non-unicast
/// route or an error.
pub fn route_to(local: Ipv6Addr, peer: Ipv6Addr) -> Option<(String, Option<Ipv6Addr>)> {
    let out = Command::new("ip")
        .args(["-6", "-o", "route", "get"])
        .arg(peer.to_string())
        .arg("from")
        .arg(local.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_route(&String::from_utf8_lossy(&out.stdout))
}

/// Device and gateway of `ip -o route get` output for a unicast route.
fn parse_route(line: &str) -> Option<(String, Option<Ipv6Addr>)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.first()?.parse::<Ipv6Addr>().ok()?;
    let after = |k: &str| {
        let i = words.iter().position(|w| *w == k)?;
        words.get(i + 1).copied()
    };
    let dev = after("dev")?.to_string();
    let via = match after("via") {
        Some(v) => Some(v.parse().ok()?),
        None => None,
    };
    Some((dev, via))
}

/// The device of an on-link route from `local` to `peer` (see
/// [`route_to`]); `None` for a route through a gateway, a non-unicast
/// route or an error. Only for such a device may the fast path rewrite
/// without a reroute (see [`fast_setup`]).
pub fn onlink_dev(local: Ipv6Addr, peer: Ipv6Addr) -> Option<String> {
    route_to(local, peer).and_then(onlink)
}

/// The device of a route without gateway.
fn onlink((dev, via): (String, Option<Ipv6Addr>)) -> Option<String> {
    via.is_none().then_some(dev)
}

/// nftables table of the stateless fast path.
const FAST_TABLE: &str = "ptcp";

fn nft_script(script: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The stateless fast path for moved connections: two nftables chains
/// rewrite addresses through maps keyed by the full 4-tuple, so a moved
/// connection's packets no longer go through userspace. Outgoing: a `route`
/// chain on the output hook (priority -160, before iptables' mangle, which
/// then no longer matches the original tuple) looks up the new destination
/// by the original tuple, then the new source by (original source, new
/// destination, ports); a route chain reroutes packets whose addresses
/// changed. Incoming: a prerouting chain at priority -310 (before
/// conntrack and netlab's drops) maps the wire tuple back in the same two
/// steps and sets [`FAST_MARK`] on the packets it rewrote. `ip6 saddr/daddr set` updates the TCP checksum for the
/// pseudo-header (nft marks address fields with the L4 pseudo-header
/// checksum flag; verified in the lab, transfers are byte-exact). Packets
/// on other pairs still reach NFQUEUE (no socket matches them), so
/// following the peer keeps working.
///
/// Outgoing without a reroute: the reroute after a `route` chain is a full
/// route lookup per packet, through the policy rules and with a flow
/// dissection (the fallback rules match ports), which made up about half
/// of the fast path's extra cost per sent packet in `perf` profiles of
/// `ptcp_bench` (8192-byte writes after a migration). It is not needed when
/// the packet already leaves on the right device: the fallback rules send
/// a moved connection's original tuple to the fallback table, whose route
/// for the original peer leaves on the device of the new pair with the new peer as
/// its next hop when the new pair is on-link, and the neighbour is looked
/// up by that next hop (`ip6_finish_output2`). So a `filter` chain at -161
/// (`out_direct`) rewrites the packets whose (original source, next hop,
/// ports, output device) is in the set `direct`: the next hop equal to the
/// new peer means the packet already took the fallback route (nft allows
/// five key parts, so the next hop stands in for the destination, which
/// the maps then check in full), the device is the one of the on-link
/// route to the new pair ([`onlink_dev`]). Every other packet of a moved
/// connection — before the socket's cached route has caught up, when the
/// new peer is behind a gateway, after a route change — is rewritten and
/// rerouted by the `route` chain as before, so the order of the route,
/// rule and map changes decides only which chain does the work, never
/// where a packet goes. Both rules count their packets (lab test
/// `moved_connection_is_rewritten_without_reroute`). A path MTU exception
/// (`RTF_CACHE`) the fallback route gets from a translated Packet Too Big
/// keeps its next hop, the new peer. (The fallback route once had no next
/// hop, the original peer stood in: an exception's next hop is then its
/// own destination, the original peer, which after the rewrite has no
/// neighbour on the new link.)
///
/// The three chains stay *empty* while no connection has moved (the rules
/// are added with the first map entries and flushed with the last, in the
/// same atomic nft transaction, see [`fast_set`]), so before a migration
/// no packet pays for the map lookups. Without BPF the chains themselves
/// stay: deleting a base chain unregisters its hook, and the kernel then
/// drops every packet waiting in NFQUEUE in the namespace (tried: the
/// daemon's next verdicts failed with `ENOENT`, the lost segments made the
/// peer's TCP retransmit and the connection switch pairs). With BPF the
/// programs rewrite moved connections and this table is not created (an
/// empty base chain would still cost every packet of the namespace a
/// hook call).
pub fn fast_setup() -> Result<(), String> {
    fast_teardown();
    let key = "ipv6_addr . ipv6_addr . inet_service . inet_service : ipv6_addr";
    nft_script(&format!(
        "table ip6 {FAST_TABLE} {{
  map out_dst {{ type {key}; }}
  map out_src {{ type {key}; }}
  map in_src {{ type {key}; }}
  map in_dst {{ type {key}; }}
  set direct {{ type {DIRECT_KEY}; }}
  chain {DIRECT_CHAIN} {{ type filter hook output priority -161; }}
  chain out {{ type route hook output priority -160; }}
  chain pre {{ type filter hook prerouting priority -310; }}
}}
"
    ))
}

/// The key of the `direct` set: original source, next hop (the new peer:
/// the fallback route of an on-link new pair goes through it), ports,
/// output device. (nft takes at most five parts in a set key, so the next
/// hop stands in for the destination, which the maps check in full.)
const DIRECT_KEY: &str = "ipv6_addr . ipv6_addr . inet_service . inet_service . iface_index";
/// The packet fields matched against the `direct` set.
const DIRECT_MATCH: &str = "ip6 saddr . rt ip6 nexthop . tcp sport . tcp dport . meta oif";
/// The output chain that rewrites without a reroute (see [`fast_setup`]).
const DIRECT_CHAIN: &str = "out_direct";

/// The fast path's rules (see [`fast_setup`]).
fn fast_rules() -> String {
    let lookup = "ip6 saddr . ip6 daddr . tcp sport . tcp dport map";
    format!(
        "add rule ip6 {FAST_TABLE} {DIRECT_CHAIN} meta l4proto tcp {DIRECT_MATCH} @direct ip6 daddr set {lookup} @out_dst ip6 saddr set {lookup} @out_src counter
add rule ip6 {FAST_TABLE} out meta l4proto tcp ip6 daddr set {lookup} @out_dst ip6 saddr set {lookup} @out_src counter
add rule ip6 {FAST_TABLE} pre meta l4proto tcp ip6 saddr set {lookup} @in_src ip6 daddr set {lookup} @in_dst meta mark set meta mark or {FAST_MARK:#x}
"
    )
}

/// Removes the fast path table.
pub fn fast_teardown() {
    let _ = nft_script(&format!("delete table ip6 {FAST_TABLE}\n"));
}

/// A moved connection's fast path entry: its current pair and, when
/// packets on the original tuple can leave without a reroute, the index of
/// the device they must leave on (see [`fast_setup`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastEntry {
    pub local: Ipv6Addr,
    pub peer: Ipv6Addr,
    pub direct_oif: Option<u32>,
}

fn fast_elements(t: &FourTuple, e: &FastEntry) -> Vec<(&'static str, String)> {
    let (lp, pp) = (t.local_port, t.peer_port);
    let (cur, cur_peer) = (e.local, e.peer);
    let mut v = vec![
        (
            "out_dst",
            format!("{} . {} . {lp} . {pp} : {cur_peer}", t.local, t.peer),
        ),
        (
            "out_src",
            format!("{} . {cur_peer} . {lp} . {pp} : {cur}", t.local),
        ),
        (
            "in_src",
            format!("{cur_peer} . {cur} . {pp} . {lp} : {}", t.peer),
        ),
        (
            "in_dst",
            format!("{} . {cur} . {pp} . {lp} : {}", t.peer, t.local),
        ),
    ];
    if let Some(oif) = e.direct_oif {
        v.push((
            "direct",
            format!("{} . {cur_peer} . {lp} . {pp} . {oif}", t.local),
        ));
    }
    v
}

/// Replaces a connection's fast path entries: removes those for `old` (if
/// any) and adds those for the pair (`local`, `peer`) (if any), atomically.
/// `moved_before`/`moved_after`: how many connections have entries before
/// and after this change; the chains' rules are added when that goes from
/// 0 to 1 and flushed when it goes back to 0, in the same transaction.
pub fn fast_set(
    t: &FourTuple,
    old: Option<FastEntry>,
    new: Option<FastEntry>,
    moved_before: usize,
    moved_after: usize,
) -> Result<(), String> {
    let mut script = String::new();
    if moved_after == 0 && moved_before > 0 {
        script.push_str(&format!(
            "flush chain ip6 {FAST_TABLE} {DIRECT_CHAIN}\nflush chain ip6 {FAST_TABLE} out\nflush chain ip6 {FAST_TABLE} pre\n"
        ));
    }
    if let Some(old) = old {
        for (map, e) in fast_elements(t, &old) {
            let key = e.split(" : ").next().unwrap_or_default();
            script.push_str(&format!(
                "delete element ip6 {FAST_TABLE} {map} {{ {key} }}\n"
            ));
        }
    }
    if let Some(new) = new {
        for (map, e) in fast_elements(t, &new) {
            script.push_str(&format!("add element ip6 {FAST_TABLE} {map} {{ {e} }}\n"));
        }
    }
    if moved_before == 0 && moved_after > 0 {
        script.push_str(&fast_rules());
    }
    if script.is_empty() {
        return Ok(());
    }
    nft_script(&script)
}

/// Helper for log lines.
pub fn fmt_pair(l: Ipv6Addr, p: Ipv6Addr) -> String {
    format!("[{l}]->[{p}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onlink_device_only_for_routes_without_gateway() {
        let parse_onlink_dev = |l: &str| parse_route(l).and_then(onlink);
        assert_eq!(
            parse_onlink_dev(
                "2001:db8:1::2 from 2001:db8:1::1 dev l1-b proto kernel src 2001:db8:1::1 metric 256 pref medium\n"
            ),
            Some("l1-b".to_string())
        );
        assert_eq!(
            parse_onlink_dev(
                "2001:db8:9::2 from 2001:db8:1::1 via fe80::1 dev eth0 proto ra src 2001:db8:1::1 metric 100 pref medium"
            ),
            None
        );
        assert_eq!(
            parse_onlink_dev(
                "local 2001:db8:1::1 from :: dev lo table local proto kernel src 2001:db8:1::1 metric 0 pref medium"
            ),
            None
        );
        assert_eq!(
            parse_onlink_dev(
                "unreachable 2001:db8:9::2 from :: dev lo proto kernel metric 4294967295 error -101 pref medium"
            ),
            None
        );
        assert_eq!(
            parse_onlink_dev("2001:db8:1::2 from 2001:db8:1::1 dev"),
            None
        );
        assert_eq!(parse_onlink_dev(""), None);
    }

    #[test]
    fn routes_give_device_and_gateway() {
        assert_eq!(
            parse_route(
                "2001:db8:1::2 from 2001:db8:1::1 dev l1-b proto kernel src 2001:db8:1::1 metric 256 pref medium\n"
            ),
            Some(("l1-b".to_string(), None))
        );
        assert_eq!(
            parse_route(
                "2001:db8:9::2 from 2001:db8:1::1 via fe80::1 dev eth0 proto ra src 2001:db8:1::1 metric 100 pref medium"
            ),
            Some(("eth0".to_string(), Some("fe80::1".parse().unwrap())))
        );
        assert_eq!(
            parse_route(
                "unreachable 2001:db8:9::2 from :: dev lo proto kernel metric 4294967295 error -101 pref medium"
            ),
            None
        );
        assert_eq!(parse_route("2001:db8:1::2 via nonsense dev x"), None);
        assert_eq!(parse_route("2001:db8:1::2 from 2001:db8:1::1 dev"), None);
        assert_eq!(parse_route(""), None);
    }

    #[test]
    fn fallback_numbers_are_checked() {
        assert_eq!(check_fallback_table(DEFAULT_FALLBACK_TABLE), Ok(4242));
        assert_eq!(check_fallback_table(1), Ok(1));
        for bad in [0, 253, 254, 255] {
            assert!(check_fallback_table(bad).is_err(), "{bad}");
        }
        assert_eq!(check_fallback_pref(DEFAULT_FALLBACK_PREF), Ok(32000));
        assert_eq!(check_fallback_pref(1), Ok(1));
        assert_eq!(check_fallback_pref(32765), Ok(32765));
        for bad in [0, 32766, 32767, u32::MAX] {
            assert!(check_fallback_pref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn opt_in_limit_and_errors_read_well() {
        let r = Rules::new(7, 8, 7, vec![], false, 0);
        let t = FourTuple {
            local: "2001:db8::1".parse().unwrap(),
            local_port: 40000,
            peer: "2001:db8::2".parse().unwrap(),
            peer_port: 5001,
        };
        // At the limit nothing is run: refused before any ip6tables call.
        assert_eq!(r.opt_in(&t, Instant::now()), Err(OptInError::Limit(0)));
        assert!(r.opt_in_tuples().is_empty());
        assert!(
            OptInError::Limit(256)
                .to_string()
                .contains("opt-in limit reached: 256")
        );
        // Tuples not opted in are ignored by the expiry.
        assert!(r.expire_opt_ins(&[(t, false)], Instant::now()).is_empty());
    }

    #[test]
    fn direct_set_element_only_with_a_device() {
        let t = FourTuple {
            local: "2001:db8::1".parse().unwrap(),
            local_port: 40000,
            peer: "2001:db8::2".parse().unwrap(),
            peer_port: 5001,
        };
        let mut e = FastEntry {
            local: "2001:db8:1::1".parse().unwrap(),
            peer: "2001:db8:1::2".parse().unwrap(),
            direct_oif: None,
        };
        let maps: Vec<&str> = fast_elements(&t, &e).iter().map(|(m, _)| *m).collect();
        assert_eq!(maps, ["out_dst", "out_src", "in_src", "in_dst"]);
        e.direct_oif = Some(3);
        let v = fast_elements(&t, &e);
        assert_eq!(
            v.last(),
            Some(&(
                "direct",
                "2001:db8::1 . 2001:db8:1::2 . 40000 . 5001 . 3".to_string()
            ))
        );
    }
}
