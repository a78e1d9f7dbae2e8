//! # preservetcp — keep unmodified TCP connections alive across address pairs
//!
//! The pure part of PreserveTCP (Hansen 1999, section 4.3, after a proposal by
//! P. R. Tattam): during the TCP handshake both ends exchange their
//! alternative IPv6 prefixes in a destination options header; afterwards a
//! connection may move between any of the N×M address pairs while the kernel
//! keeps seeing the original pair. This crate holds the sans-IO pieces a
//! userspace (NFQUEUE) daemon builds on:
//!
//! - [`wire`]: the destination options header codec with the PREFIX_SYN and
//!   PREFIX_ACK options;
//! - [`packet`]: inserting/stripping that header in IPv6 TCP packets, and
//!   address rewriting;
//! - [`checksum`]: TCP-over-IPv6/IPv4 and IPv4 header checksums, full and
//!   incremental (RFC 1624);
//! - [`select`]: which local prefixes to offer and which received prefixes to
//!   accept, with DoS limits and rejection statistics;
//! - [`pairs`]: the N×M address pair table with O(1) lookups both ways;
//! - [`policy`]: the address change policy as a state machine;
//! - [`engine`]: the daemon's sans-IO packet engine (handshake, pair
//!   table, policy, rewriting) that `preservetcpd` drives;
//! - [`control`]: the daemon's control protocol (JSON lines over a Unix
//!   socket), the per-socket opt-in ([`opt_in`], `SO_MARK`) and opt-out
//!   ([`opt_out`], [`OPT_OUT_MARK`], which wins over `--ports`).
//!
//! ## The daemon (`preservetcpd`, Linux)
//!
//! `preservetcpd [--ports 5001,8000] [--queue N] [--control PATH]
//! [--interval-ms 50] [--stall-ms 300] [--follow-hold-ms 500] [--no-bpf]
//! [--max-opt-ins 256] [--fallback-table 4242] [--fallback-pref 32000]
//! [--verbose]` runs as root in the host (or lab
//! namespace). Packet path (all verified in the netlab lab):
//!
//! - Handshake in the kernel (default): two tc programs
//!   (`bpf/ptcp.bpf.c`, compiled by `build.rs` with `clang -O2 -g -target
//!   bpf`, loaded with the `aya` crate and attached as tcx ingress/egress
//!   programs to every Ethernet link, also links that appear later) put
//!   the options into the three outgoing handshake packets, so no
//!   handshake packet waits in userspace: egress inserts PREFIX_SYN into
//!   SYNs of covered traffic, which it decides itself (a port from
//!   `--ports` in an array map, a socket mark matching [`OPT_IN_MARK`], or
//!   a tuple opted in through the control socket, unless the socket's mark
//!   is [`OPT_OUT_MARK`]; see [`bpf::PORTS_LEN`]),
//!   PREFIX_SYN + PREFIX_ACK into a SYN+ACK
//!   answering a received offer, and PREFIX_ACK into the first segment
//!   after a SYN+ACK that answered our offer. The offers are precomputed by
//!   the daemon with [`select::offer_option`] (exactly
//!   [`Engine::offer_for`]) into a hash map keyed by local address
//!   ([`bpf::offer_value`]) and updated with every rtnetlink snapshot;
//!   ingress keeps the first PREFIX_SYN of an incoming SYN (any port; only
//!   frames addressed to this host, SYN without RST/FIN, to an address
//!   that has an offer) or of a SYN+ACK acknowledging our own offered SYN
//!   (its sequence number is kept in the entry) in an LRU hash keyed by
//!   the connection's tuple (every option scanned as the receiving kernel
//!   checks it; the first PREFIX_SYN and PREFIX_ACK validated like
//!   [`wire::PrefixOption::parse`]; the stored echo holds only the
//!   accepted prefixes); incoming packets are never modified.
//!   Entries go when the echo has left, on a RST either way, on a plain
//!   answer to an offer, and when a new SYN reuses the tuple. The offer
//!   map is not preallocated and the programs copy every map value to
//!   per-CPU scratch and check its framing before use, so an offer update
//!   racing a SYN cannot produce a malformed option (at worst, two quick
//!   updates of equal length could mix the prefix lists of two offers).
//!   The echo never rides on a RST; a GSO, BIG TCP or too large first
//!   segment keeps the entry and the next segment carries it (at most
//!   three tries, then counted as `bpf_echo_given_up`).
//!   `bpf_skb_adjust_room(BPF_ADJ_ROOM_NET)` opens the room (it moves
//!   the MAC and IPv6 headers only: the program sets the IPv6 next header
//!   to 60 and the payload length itself; the TCP checksum stays valid,
//!   the pseudo-header has no extension headers). A packet that would
//!   exceed the link MTU keeps no option (counted as skipped; GSO packets
//!   get a smaller segment size instead). The engine runs with
//!   [`EngineConfig::kernel_options`] and learns every handshake from
//!   copies of the incoming packets that the ingress program puts into the
//!   `ptcp_events` ring buffer ([`bpf::decode_event`]: an offering SYN, a
//!   SYN+ACK answering our offer with or without options, a non-SYN
//!   segment with a destination options header), so the pair table,
//!   monitoring and migration are unchanged. A record into an empty ring
//!   wakes the daemon's event thread, which reads whole batches at most
//!   every 5 ms, so a burst of connections costs a few wake-ups, not one
//!   per connection. Two decisions follow what the kernel
//!   really did ([`EngineConfig::kernel_echo_events`]): the client enters
//!   a connection when the egress program reports (ring buffer
//!   `ptcp_echoes`) that its PREFIX_ACK
//!   echo left, not when the SYN+ACK arrives, and a server whose pending
//!   handshake is missing when PREFIX_ACK arrives (pending table full, a
//!   copy lost) rebuilds it from the client's PREFIX_SYN kept in the
//!   kernel's entry (`handshakes_rebuilt`); a lost report (ring full) is
//!   counted as `bpf_events_lost`; the programs' counters are in the
//!   `stats` output (`bpf_*`). The tcx links belong to the daemon's file
//!   descriptors: they go away when it exits, however it exits. If the
//!   programs cannot be loaded the daemon says so and falls back to the
//!   NFQUEUE handshake below, which `--no-bpf` selects explicitly. The
//!   wire bytes of both paths are identical (lab test
//!   `preservetcp_bpf`).
//!   Both paths apply the same rules to received options (see the
//!   [`engine`] docs, "Received options"); the kernel looks the listener
//!   up itself for thesis 5.3.8. With SYN cookies active no request socket
//!   exists, so a repeated offering SYN replaces the stored one there. The engine assumes the
//!   offer of the local addresses as of the moment it learns the packet:
//!   an address change in the few milliseconds between the kernel's
//!   insertion and that moment makes its record of what was offered
//!   differ from the wire (only the acknowledged-prefix bookkeeping of
//!   that one connection is affected).
//!   Only Ethernet links are handled (the programs parse Ethernet
//!   framing).
//! - No netfilter for a connection that has not moved (BPF mode): besides
//!   the handshake, the programs also handle segments on *alternative*
//!   pairs. The daemon gives the kernel each tracked connection's N×M-1
//!   alternative wire tuples (`ptcp_alt`, [`bpf::alt_entries`], filled on
//!   [`engine::Action::Tracked`], see [`EngineConfig::pair_actions`]; at
//!   once for up to 500 connections per second, beyond that 100 ms after
//!   the connection was entered, so a burst of short connections costs no
//!   map updates), and the ingress program rewrites a segment arriving on
//!   one back to the original tuple (addresses, and the TCP checksum by
//!   the pseudo-header difference), marks it, and reports it (at most
//!   every 20 ms per tuple, and not on the connection's current pair) so
//!   that the engine's policy can follow the peer. A per-slot count
//!   ([`bpf::alt_slot`]) spares segments on original pairs the hash
//!   lookup. Following a peer has one part in the kernel, the *follow
//!   window*: the kernel answers the very segment that showed the move at
//!   once (typically with an ACK), before the daemon could change
//!   anything, and that answer must take the new pair, or the peer, still
//!   without an ACK there, gives the pair up again (seen in the lab as
//!   both ends switching back and forth). So for 200 ms after such a
//!   segment (refreshed by each report) the egress program rewrites the
//!   connection's segments to that pair and redirects them to the link the
//!   peer's segment came in on (`bpf_redirect_neigh`), unless the
//!   connection is within its follow hold after its own last switch
//!   (the daemon writes that time into the entries: late segments on a pair
//!   just left open no window, exactly as the engine does not follow
//!   them). A connection the engine moved is the programs' too
//!   (`ptcp_moved`, [`bpf::moved_value`], keyed by the original tuple):
//!   egress rewrites its segments to the new pair and hands them to the
//!   pair's device with `bpf_redirect_neigh` (the kernel looks up the new
//!   destination's neighbour and fills in the MAC addresses), ingress
//!   rewrites the peer's segments back (they arrive on an alternative
//!   pair, marked current), and a segment arriving on the original tuple
//!   is reported, and followed outside the hold, as the peer going back.
//!   Only a segment the peer could have sent moves a connection (reported,
//!   window opened): the ingress program looks up the connection's socket
//!   (`bpf_sk_lookup_tcp`, `bpf_tcp_sock`) and requires the ACK flag, no
//!   RST, the acknowledgment number within `[snd_una, snd_nxt]` and the
//!   sequence number within 8 MiB of `rcv_nxt`; other segments are still
//!   rewritten and delivered (the socket's own RFC 5961 checks apply) but
//!   move nothing (`bpf_alt_implausible`). So a blind attacker who knows
//!   the tuple and one of the peer's other addresses cannot move the
//!   connection without guessing both numbers (lab test
//!   `blind_spoofed_segments_do_not_move_a_connection`). With `--no-bpf`
//!   the engine makes the same checks itself
//!   ([`engine::Engine::inbound_checked`],
//!   [`engine::EngineConfig::check_peer_segments`]): it keeps the initial
//!   sequence numbers of each handshake it handled (from the SYN+ACK) and,
//!   for a segment on another pair, asks sock_diag for the socket's byte
//!   counts (`tcpi_bytes_acked`, `tcpi_bytes_received`, `tcpi_bytes_sent`)
//!   while the segment waits in the queue, which gives `snd_una`,
//!   `rcv_nxt` and an upper bound of `snd_nxt` (counter
//!   `implausible_segments`; lab test
//!   `blind_spoofed_segments_do_not_move_a_connection_nfqueue`).
//!   So in BPF mode there is no netfilter rule of ours at all, and no
//!   NFQUEUE trip, before or after a move: what stays outside the
//!   programs are the fallback routes and rules below (the fallback route
//!   goes through the new pair's next hop, because the kernel resolves the
//!   neighbour of the *original* destination before tc egress runs). The
//!   lab test `unmoved_connections_meet_no_netfilter_hook` checks that
//!   neither namespace has a base chain (nor conntrack entries) while a
//!   connection carries data, before and after a move and back. The
//!   engine's actions are taken and run under one lock
//!   (`run_lock` in `main.rs`), so the kernel's entries follow the
//!   engine's order of events even though five threads drive it. A
//!   segment on an alternative tuple that a socket of its own has (another
//!   connection from another local address with the same ports) is left
//!   alone (`bpf_alt_owned`; a socket lookup only on such hits, lab test
//!   `a_socket_on_an_alternative_tuple_keeps_its_segments`).
//!   Path MTU: a moved connection's socket routes its original tuple
//!   through the fallback route on the new pair's device, so it sizes its
//!   segments for that link's MTU by itself (lab tests
//!   `moved_connection_fits_a_smaller_mtu_*`). An ICMPv6 Packet Too Big
//!   from a router on the new path quotes the segment as it was on the
//!   wire (the new pair), which no socket has: the ingress program (with
//!   `--no-bpf`: a `raw` PREROUTING rule, before conntrack, NFQUEUE and
//!   `Engine::inbound`) puts the quoted addresses back to the original
//!   tuple and adjusts the ICMPv6 checksum (`bpf_icmp_translated` /
//!   `icmp_translated`), and the socket learns the path MTU. Without it
//!   every full-size segment on a narrower new path is lost (lab tests
//!   `packet_too_big_on_the_new_path_*`). Quotes of a tuple a socket of its
//!   own has are left alone: in BPF mode on pairs other than the current
//!   one, a connected socket (not a listener, not TIME_WAIT); with
//!   `--no-bpf` the `socket` match decides (it also counts TIME_WAIT and
//!   listeners bound to that very address). Like segments, a Packet Too
//!   Big arriving over a non-Ethernet link is not translated in BPF mode.
//!   Known limits: a peer that moves within 100 ms of a connection entered
//!   during a burst (beyond 500 per second) finds no entry yet, its
//!   segments on the new pair reach no socket until then; the programs
//!   are attached to Ethernet links only, so a segment on an alternative
//!   pair arriving over another kind of link (a tunnel, raw-IP LTE) is
//!   not rewritten (with `--no-bpf` NFQUEUE covers every link), and a
//!   connection moved to a pair on such a link leaves unrewritten; the
//!   follow window sends on the link the peer's segment arrived on, which
//!   can differ from the device the daemon then chooses (on a shared
//!   segment with asymmetric routes); BIG TCP packets (a jumbo hop-by-hop
//!   header before TCP) are not rewritten, so BIG TCP must stay off
//!   (`gso_max_size` at most 64 KiB, the default) on links a connection
//!   may move to; the device of a moved connection is looked up when it
//!   moves and again after every rtnetlink batch (links, addresses,
//!   routes); if the daemon dies (SIGKILL), its moved connections lose
//!   their rewriting with the programs (a clean exit removes the fallback
//!   rules as well, even with `--keep-rules`).
//!   Measured with `ptcp_bench` (release, 2 CPUs, idle; see
//!   `examples/src/bin/ptcp_bench.rs`): connect+close 0.90 of plain TCP
//!   (0.42–0.44 when the handshake was learned through NFLOG under
//!   conntrack and the mangle chains; 0.09–0.17 through NFQUEUE).
//!
//! - With `--no-bpf` (or without BPF), only packets the daemon must
//!   *modify* wait in userspace. ip6tables
//!   (nf_tables backend) rules in `mangle` feed NFQUEUE `N` (OUTPUT: SYNs
//!   of covered traffic — configured ports or sockets marked with
//!   [`OPT_IN_MARK`] —, SYN+ACKs answering an offer, the client's ACK of a
//!   SYN+ACK that carried options, and every packet of a moved connection;
//!   a packet of a socket marked [`OPT_OUT_MARK`] returns before the
//!   offer, answer and ACK rules)
//!   and NFQUEUE `N+1` (PREROUTING: non-SYN TCP that matches no local
//!   socket, i.e. arrives on an alternative pair). Incoming handshake
//!   packets (SYN and SYN+ACK with a destination options header, the SYN+ACK
//!   answering our offer, the ACK carrying PREFIX_ACK) are only *learned*:
//!   a copy goes to NFLOG group `N` and the packet continues at once — the
//!   kernel skips the PREFIX options itself (type action `00`), so they
//!   reach it unstripped. The daemon drains the NFLOG socket before it
//!   handles a queued packet; the copy of a SYN is in that socket before the
//!   kernel has even answered it, so the SYN+ACK always finds what the SYN
//!   offered. A handshake therefore costs three queue round trips in all
//!   (client SYN and ACK, server SYN+ACK) instead of six.
//! - (`--no-bpf`) Segments of an established connection past its handshake leave the
//!   chains after native `ct state` / conntrack packet count / connmark
//!   checks, before any extension header or socket match, so an unmoved
//!   connection costs nothing in userspace after the handshake. Segments on
//!   a connection's original tuple go straight to the kernel (`-m socket`).
//!   While a connection has moved, segments arriving on its original tuple
//!   are queued too (the peer went back to the original pair, which must be
//!   followed like any other); the fast path marks the packets it rewrote
//!   to the original tuple so that only those that really arrived on it are
//!   queued.
//! - Rule changes caused by a received packet (following the peer) are made
//!   before that packet is handed to the kernel, so the kernel's answer
//!   leaves on the new pair. With BPF the segment is delivered at once
//!   (rewritten at tc ingress) and the follow window above makes the
//!   kernel's answer take the new pair until the daemon's `ptcp_moved`
//!   entry is in.
//! - Fast path (`--no-bpf`): once a connection has moved, nftables maps keyed by the
//!   4-tuple rewrite its addresses statelessly in the kernel (an output
//!   `route` chain at priority -160 and a prerouting chain at -310; `ip6
//!   saddr/daddr set` fixes the TCP checksum for the pseudo-header —
//!   verified byte-exact in the lab); the NFQUEUE path below covers the
//!   few packets before the map entries are in, and `--no-fast-path`.
//!   Outgoing packets that already leave on the new pair's device through
//!   an on-link route (the fallback route below) are rewritten by a
//!   `filter` chain at -161 instead, without the per-packet reroute
//!   (about half of the fast path's extra cost per sent packet in `perf`);
//!   any other packet still gets the `route` chain, so a stale route only
//!   costs the reroute (details in `preservetcpd`'s `rules.rs`). The
//!   chains hold no rule while no connection has moved (added with the
//!   first map entries, flushed with the last, in the same transaction).
//! - (`--no-bpf`) Outgoing packets of a moved connection are rewritten in OUTPUT; the
//!   kernel reroutes a queued OUTPUT packet whose addresses changed
//!   (verified: rewritten packets leave on the other link). Incoming
//!   packets are rewritten back in PREROUTING, before the input route
//!   lookup and socket demultiplexing. Checksums: nfnetlink_queue hands
//!   out packets with complete checksums (it resolves
//!   `CHECKSUM_PARTIAL`), the engine updates the TCP checksum
//!   incrementally and the kernel verifies it on input. Conntrack needs no
//!   `notrack`: the rules only use it for `connbytes`/`connmark`, nothing
//!   drops invalid states, and rewritten flows simply get their own entries.
//! - Link down: Linux removes the link's prefix route *and the local route
//!   of its addresses* (also with `keep_addr_on_down`), so the kernel's TCP
//!   could no longer send on the original tuple (the route lookup fails
//!   before the OUTPUT hook) nor receive on it. For moved connections the
//!   daemon adds fallback routes (`local <orig local>/128 dev lo` and
//!   `<orig peer>/128 dev <current device>`, the device of the on-link
//!   route to the new pair when there is one) to table 4242
//!   (`--fallback-table`), and two policy rules at preference 32000
//!   (`--fallback-pref`) — before `main`, so a default route on the
//!   host cannot take the packets (it would send the incoming ones to
//!   forwarding) — that match exactly the connection's original 5-tuple
//!   (`from L to P ipproto tcp sport l dport p`, and the reverse). Other
//!   traffic keeps the host's routes; the rules go when the connection is
//!   back on its original pair or closed. The daemon's rules and routes
//!   carry protocol tag 80: at exit it deletes exactly those it added, and
//!   at start those a killed daemon left (tag 80 in that table and at that
//!   preference), never anyone else's.
//! - Signals: link, IPv6 address and IPv6 route changes arrive as
//!   rtnetlink multicast notifications (`RTMGRP_LINK`,
//!   `RTMGRP_IPV6_IFADDR`, `RTMGRP_IPV6_ROUTE`); each batch makes the
//!   daemon re-read the local addresses with their link state (rtnetlink
//!   dumps) and check the route of each current pair (a UDP `connect` from
//!   the pair's source: `ENETUNREACH` is the routing error), so a link
//!   going down or an address being removed switches connections at once.
//!   A socket overrun (`ENOBUFS`, lost notifications) triggers the same
//!   re-read, so there is no periodic safety poll. IPv4 groups are not
//!   joined: only IPv6 connections are handled. Only `tcp_info` of every
//!   tracked socket (`tcpi_retransmits`, `tcpi_unacked`,
//!   `tcpi_last_ack_recv`, through sock_diag) is sampled every
//!   `interval-ms`: the kernel has no notification for a stalled socket.
//!   Up to 16 tracked connections each socket is asked for by its tuple
//!   (one hash lookup in the kernel); above that one dump lists all. A
//!   dump walks the whole host-wide TCP hash: about 6 ms each on the lab
//!   machine, 8–10 % of all CPU samples during `ptcp_bench`'s send phases
//!   with two daemons sampling every 50 ms.
//! - Routable pairs: when links are separate subnets, the destination's
//!   on-link source is used with it (see [`policy`], "Routable sources").
//! - A full queue drops packets (TCP retransmits them) rather than
//!   passing them unmodified, which would make the kernel answer a segment
//!   on an unknown pair with a RST. So the queue must not fill in normal
//!   operation: every queued packet is a message in the NFQUEUE socket's
//!   receive buffer until its verdict, and while the packet thread changes
//!   rules to follow a peer (tens of milliseconds) the peer's whole window
//!   of segments piles up there. The daemon therefore forces that buffer
//!   to 16 MiB (found by the socket's netlink port id, and checked) —
//!   with the default 208 KiB only about 90 segments fit, the rest of a
//!   burst was dropped, and a lost tail cost the peer an RTO and a pair
//!   switch. The queue length limit is 8192 packets.
//!
//! Server side: a host answers PREFIX_SYN on any port (the offer is the
//! client's opt-in); it offers its own prefixes only in such answers.
//!
//! ## The exchange
//!
//! ```text
//!  client                                             server
//!    SYN      [DSTOPTS: PREFIX_SYN(client prefixes)]  ->
//!          <- SYN+ACK [DSTOPTS: PREFIX_SYN(server prefixes),
//!                               PREFIX_ACK(echo of client's PREFIX_SYN)]
//!    ACK      [DSTOPTS: PREFIX_ACK(echo of server's)] ->
//! ```
//!
//! The thesis (5.2.3) adds PREFIX_SYN to every segment with SYN set and
//! PREFIX_ACK to a segment with ACK set while an echo is pending, so the
//! SYN+ACK carries both. Within one header only the *first* option of each
//! kind counts; later ones are ignored (thesis 4.3.2). The PREFIX_ACK is the
//! received PREFIX_SYN with only the type octet changed (5.2.4); it shows the
//! peer understood the option and agrees on the set. The set of addresses
//! never changes after the handshake (5.3.3).
//!
//! ## Option types (thesis Table 4.2)
//!
//! | option     | action | change | rest  | hex  |
//! |------------|--------|--------|-------|------|
//! | PREFIX_SYN | 00     | 0      | 01011 | 0x0B |
//! | PREFIX_ACK | 00     | 0      | 01100 | 0x0C |
//!
//! Action `00`: a node that does not know the option skips it, so a peer
//! without PreserveTCP simply ignores the PREFIX_SYN and the connection is
//! plain TCP. Change bit `0`: the option data does not change en route (the
//! thesis sets it to 0 explicitly; it matters for AH, which then covers the
//! option).
//!
//! ## Byte layout
//!
//! The destination options header (RFC 8200 4.6) is a whole number of
//! 8-octet units; the options follow the two header octets without any
//! alignment, and the prefixes follow each other inside the option without
//! alignment (thesis 4.3.2: compactness over alignment). Thesis Figure 4.5,
//! two 64-bit prefixes (24 bytes, Hdr Ext Len 2):
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Header  | Hdr Ext Len=2 |  Type = 0x0B  |  Opt Len = 18 |
//! +---------------+---------------+---------------+---------------+
//! |  PLen = 64    |      prefix 1, bytes 0..3                     |
//! +---------------+-----------------------------------------------+
//! |                    prefix 1, bytes 3..7                       |
//! +---------------+---------------+-------------------------------+
//! | prefix 1 [7]  |  PLen = 64    |      prefix 2, bytes 0..2     |
//! +---------------+---------------+-------------------------------+
//! |                    prefix 2, bytes 2..6                       |
//! +-------------------------------+---------------+---------------+
//! |      prefix 2, bytes 6..8     | PadN type = 1 | PadN len = 0  |
//! +-------------------------------+---------------+---------------+
//! ```
//!
//! Each prefix is a length octet with the *true* prefix length in bits
//! (0–128) followed by `ceil(len/8)` bytes. When the length is not a multiple
//! of 8, the remaining low bits of the last byte are the corresponding bits of
//! the sender's address (its interface identifier), so the receiver can form
//! the address by copying whole bytes. The option data is at most 255 bytes
//! (e.g. 28 prefixes of 64 bits). Padding after the options is Pad1 for one
//! byte and PadN otherwise.
//!
//! ## Choices the thesis leaves open (kept stable)
//! - Parsing is strict about framing: PadN data must be zero (RFC 8200),
//!   and the *first* PREFIX_SYN and the *first* PREFIX_ACK must be
//!   well-formed prefix lists (otherwise the header is malformed and the
//!   handshake plain TCP); later PREFIX options of a kind are ignored,
//!   malformed or not ([`wire::DestOption::Ignored`]). Headers a Linux
//!   receiver drops ([`wire::DestOptsHeader::deliverable`]: padding runs
//!   over 7 octets, more than 8 options, action bits other than `00`)
//!   teach nothing. Prefix lengths above 128 are errors. Unknown options
//!   are kept verbatim.
//! - The PREFIX_ACK echo holds only the prefixes this end accepted
//!   ([`select::Validation::echo`]), verbatim and in the received order
//!   (possibly none); the thesis (5.2.4) echoes the whole PREFIX_SYN. The
//!   peer intersects its offer with the echo, so it never uses an address
//!   we refused.
//! - The first offer of a handshake is kept: a further offering SYN while
//!   the handshake is pending (or a retransmitted SYN+ACK) changes nothing.
//! - Thesis 5.3.8: an offer to a listening socket bound to one specific
//!   address is not answered (no aliases for it): the BPF program looks
//!   the listener up; with `--no-bpf` the daemon reads its binding from
//!   `/proc/net/tcp6` for each SYN+ACK that would answer an offer and
//!   tells the engine ([`Engine::listener_bound`]).
//! - On receipt the padding bits of a prefix are ignored: the alternative
//!   address is the first `len` bits of the prefix plus the remaining bits of
//!   the peer's address for the connection ([`wire::Prefix::combine`]).
//!   Echoes copy the bytes verbatim, padding included.
//! - Limits: at most 8 prefixes offered and 8 accepted per connection
//!   ([`select::Limits`]), prefixes of 16 to 127 bits; scope and validity
//!   rules are in [`select`]. The pair table therefore holds at most 9×9
//!   tuples per connection.
//! - The thesis notes (8.2) that the TCP checksum does not cover the options;
//!   this crate adds no separate checksum (it would break interoperability
//!   with the thesis layout). Validation limits what a corrupted or forged
//!   option can do.
//! - Address change policy and its timing: see [`policy`].
#![forbid(unsafe_code)]

pub mod bpf;
pub mod checksum;
pub mod control;
pub mod engine;
pub mod packet;
pub mod pairs;
pub mod policy;
pub mod select;
pub mod wire;

pub use control::{OPT_IN_MARK, OPT_OUT_MARK, opt_in, opt_out};
pub use engine::{Action, Engine, EngineConfig, TcpSample, Verdict};
pub use packet::{PacketError, insert_dest_opts, parse_ipv6_tcp, strip_dest_opts};
pub use pairs::{AddrPair, AddressPairs, ConnId, FourTuple};
pub use policy::{ChangePolicy, Decision, PolicyConfig, PolicyEvent, SwitchReason};
pub use select::{Limits, LocalAddress, PrefixStats, Validation};
pub use wire::{DestOption, DestOptsHeader, Prefix, PrefixOption, WireError};
