// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// preservetcp handshake options in the kernel (tc clsact / tcx programs).
//
// The PREFIX_SYN / PREFIX_ACK options live in an IPv6 Destination Options
// header between the fixed IPv6 header and TCP (see the preservetcp crate
// docs for the layout). These two programs put that header into the three
// outgoing handshake packets without a trip through userspace:
//
//   egress SYN of covered traffic (a port in ptcp_ports, a socket mark
//   matching opt_in_mark/opt_in_mask, or a tuple in ptcp_optin; never a
//   socket whose mark matches opt_out_mark/opt_in_mask):
//       DSTOPTS[PREFIX_SYN(our offer for the source address)]
//   egress SYN+ACK answering a received PREFIX_SYN (unless the listener's
//   mark, which its SYN+ACK carries, matches opt_out_mark):
//       DSTOPTS[PREFIX_SYN(our offer), PREFIX_ACK(echo)]
//   egress first non-SYN segment after a SYN+ACK that answered our offer
//   with PREFIX_SYN:
//       DSTOPTS[PREFIX_ACK(echo)]
//   (never a RST, which drops what was learned; GSO and BIG TCP packets
//   and segments the header would push past the MTU are skipped, and the
//   echo goes in a later segment, at most MAX_ECHO_TRIES of them; the
//   entry is deleted once the echo is written and the tuple reported in
//   the ptcp_echoes ring buffer, so the daemon enters the connection only
//   for echoes that left)
//
// followed by Pad1 / PadN to a multiple of 8 octets, byte for byte what the
// userspace engine (preservetcp::wire::DestOptsHeader::with_prefixes)
// produces. The offers are precomputed by the daemon (ptcp_offers, keyed by
// local address); received PREFIX_SYN options are remembered per
// connection by the ingress program (ptcp_hs): offered SYNs addressed to
// this host (PACKET_HOST) for an address with an offer, and SYN+ACKs
// acknowledging the ISN of our own offered SYN. Entries go with a RST in
// either direction, an unmarked outgoing SYN (a new plain connection on
// the tuple), a plain SYN+ACK to our offer, or an incoming plain SYN.
// Incoming handshake packets are never modified or dropped: the kernel
// skips the options itself (action 00).
//
// Received headers follow the rules of the userspace engine (see the
// preservetcp::engine module docs, "Received options"): a header the
// kernel will drop teaches nothing (scan_header); only the first
// PREFIX_SYN and the first PREFIX_ACK count, either malformed makes the
// handshake plain; the echo holds only the prefixes we accept
// (build_echo); a SYN while the tuple's request socket exists, or a
// retransmitted SYN+ACK, keeps the first offer; an offer to a listener
// bound to one address is not answered (listener_state, thesis 5.3.8).
//
// The daemon learns the handshakes from copies of the incoming ones in
// the ptcp_events ring buffer (EV_LEARN: a SYN with a destination options
// header, a SYN+ACK answering our offer with or without one, a non-SYN
// segment with one, i.e. the PREFIX_ACK). Records are committed with the
// ring buffer's adaptive wake-up (flags 0): only a record into an empty
// ring wakes the daemon, which then reads a whole batch. So no netfilter
// rule, and no conntrack, sees a connection that has not moved.
//
// Segments arriving on an alternative pair of a tracked connection (the
// peer moved): ptcp_alt (filled by the daemon from the engine's N x M
// pairs) maps the wire tuple to the original addresses; the ingress
// program rewrites the addresses back to the original tuple (TCP checksum
// fixed for the pseudo-header) and reports the segment
// (EV_ALT, at most once per ALT_REPORT_NS per tuple) so the engine's
// policy can follow the peer.
//
// An ICMPv6 Packet Too Big quoting a segment on such a pair gets its quote
// back to the original tuple (translate_too_big), so that the socket
// learns the path MTU.
//
// Only Ethernet framing (the daemon attaches to ARPHRD_ETHER links) and
// TCP (or ICMPv6) directly after the fixed IPv6 header (what the local TCP
// sends) are handled; anything else passes untouched.

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_HLEN 14
#define ETH_P_IPV6 0x86DD
#define IP6_HLEN 40
#define L3 ETH_HLEN
#define L4 (ETH_HLEN + IP6_HLEN)
#define NEXTHDR_TCP 6
#define NEXTHDR_DEST 60
#define NEXTHDR_ICMP 58
#define ICMPV6_PKT_TOOBIG 2

#define OPT_PAD1 0x00
#define OPT_PADN 0x01
#define OPT_PREFIX_SYN 0x0B
#define OPT_PREFIX_ACK 0x0C

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

// skb->pkt_type of a frame addressed to this host.
#define PACKET_HOST 0

// Option data is at most 255 bytes (one length octet): 257 with type and
// length octets.
#define MAX_OPT 257
// A destination options header is at most (255 + 1) * 8 octets.
#define MAX_HDR 2048
// What a Linux receiver accepts in a destination options header
// (ip6_parse_tlv; preservetcp::wire::DestOptsHeader::deliverable): at most
// MAX_DST_OPTS options other than padding (net.ipv6.max_dst_opts_number,
// default 8), padding runs of at most MAX_PAD_RUN octets.
#define MAX_DST_OPTS 8
#define MAX_PAD_RUN 7
// The daemon's limits for received prefixes (preservetcp::select::Limits
// defaults, DEFAULT_MAX_ACCEPTED and DEFAULT_MIN_PREFIX_LEN; a unit test
// of the crate checks that these agree).
#define MAX_ACCEPTED 8
#define MIN_PREFIX_LEN 16
// Client segments the echo may be skipped on (GSO, BIG TCP, MTU) before
// the program gives up on the echo (counted as C_ECHO_GIVEN_UP).
#define MAX_ECHO_TRIES 3

// Counters (per-CPU array indices); the daemon reads them by these numbers
// (preservetcp::bpf::Counter).
#define C_SYN_OFFERS 0
#define C_SYNACK_ANSWERS 1
#define C_ACK_ECHOES 2
#define C_SKIPPED_MTU 3
#define C_SKIPPED_ERROR 4
#define C_LEARNED 5
#define C_MALFORMED 6
#define C_ECHO_GIVEN_UP 7
#define C_EVENTS_LOST 8
#define C_LEARN_EVENTS 9
#define C_ALT_REWRITES 10
#define C_ALT_REPORTS 11
#define C_FOLLOW_REWRITES 12
#define C_ALT_OWNED 13
#define C_MOVED_REWRITES 14
#define C_ICMP_TRANSLATED 15
#define C_ALT_IMPLAUSIBLE 16
#define C_PREFIXES_REJECTED 17
#define C_LISTENER_BOUND 18
#define C_OFFERS_KEPT 19
#define C_COUNT 20

// Kinds of a ptcp_events record (preservetcp::bpf::Event).
#define EV_LEARN 1
#define EV_ALT 2
// Bytes of an incoming packet (from the IPv6 header) copied into an event:
// the fixed header, the largest destination options header and a TCP
// header with options. Longer packets are cut (the daemon only parses the
// headers).
#define EV_MAX (IP6_HLEN + MAX_HDR + 60)
// Segments on an alternative pair are reported at most this often per
// wire tuple (the policy follows a peer once its hold time has passed, so
// it needs a report now and then, not every segment).
#define ALT_REPORT_NS (20 * 1000 * 1000ull)
// The follow window (struct follow), refreshed with every report.
#define FOLLOW_NS (200 * 1000 * 1000ull)
// Slots of ptcp_alt_slots (a power of two).
#define ALT_SLOTS 65536

// States of a ptcp_hs entry.
#define HS_OFFERED 1     // we sent PREFIX_SYN on this SYN (client)
#define HS_CLIENT_ECHO 2 // the SYN+ACK answered it: echo in our first ACK
#define HS_SERVER_ECHO 3 // a SYN offered: answer in our SYN+ACK

// Scratch slots (ptcp_scratch): one per direction, so a program never
// overwrites the other's copy even if one ran nested in the other.
#define SCRATCH_INGRESS 0
#define SCRATCH_EGRESS 1

// Sockets opted in by mark: mark & opt_in_mask == opt_in_mark (set by the
// loader, preservetcp::control::OPT_IN_MARK / OPT_IN_MASK).
const volatile __u32 opt_in_mark = 0;
const volatile __u32 opt_in_mask = 0;
// Sockets opted out by mark (preservetcp::control::OPT_OUT_MARK, same
// mask): never covered, whatever the ports or opt-ins say, and a
// listener's SYN+ACK (it carries the listener's mark) answers no offer.
const volatile __u32 opt_out_mark = 0;

struct offer {
	__u16 len;        // bytes used in opt: 2 + option data length
	__u8 opt[MAX_OPT + 1]; // 0x0B, data length, data
};

// Also the layout of a ptcp_echoes event (preservetcp::bpf::EchoEvent).
struct tuple {
	__u8 local[16];
	__u8 peer[16];
	__u16 local_port; // network byte order
	__u16 peer_port;  // network byte order
};

struct hs {
	__u8 state;
	__u8 tries;            // HS_CLIENT_ECHO: segments the echo was skipped on
	__u16 len;             // bytes used in opt (received PREFIX_SYN)
	__u32 isn;             // client: our SYN's sequence number (wire order)
	// HS_*_ECHO: our echo of the received PREFIX_SYN, i.e. the option
	// (its type octet kept) with only the prefixes we accepted
	// (build_echo)
	__u8 opt[MAX_OPT + 1];
};

// The daemon replaces an offer by a map update; without preallocation an
// update links a freshly allocated element instead of rewriting the one a
// program may be copying. Programs copy the value (ptcp_offer_scratch) and
// check that its length field and the option's own length octet agree
// before using it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u8[16]);
	__type(value, struct offer);
} ptcp_offers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tuple);
	__type(value, struct hs);
} ptcp_hs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} ptcp_counters SEC(".maps");

// One event (a struct tuple, the client's sender tuple) per PREFIX_ACK
// echo that actually left: the daemon enters the client side of a
// connection on it, not on the SYN+ACK (preservetcp::bpf::EchoEvent).
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 512 * 1024);
} ptcp_echoes SEC(".maps");

// Covered ports (index: port in host order; nonzero: covered), set by the
// daemon from --ports. A SYN from or to a covered port is offered on.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} ptcp_ports SEC(".maps");

// Tuples opted in one by one (the control socket's opt-in request), in the
// sender's view.
// (LRU: opt-ins are never withdrawn; the oldest go first.)
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tuple);
	__type(value, __u8);
} ptcp_optin SEC(".maps");

// An alternative pair of a tracked connection: the original addresses of
// the wire tuple it is keyed by (receiver's view, ports unchanged).
struct alt {
	__u8 local[16];
	__u8 peer[16];
	__u64 next_report_ns; // written by the program only
	__u64 hold_until_ns;  // no follow window before (daemon: last switch + hold)
	__u8 current;         // the connection uses this pair now (daemon)
	__u8 pad[7];
};

// The follow window: a connection whose peer's segments arrive on an
// alternative pair that is not its current one sends on that pair (the
// egress program rewrites and redirects) for FOLLOW_NS after the last such
// segment, until the daemon's own rules for the move are in. The kernel
// answers the very segment that showed the move (typically with an ACK)
// at once, before the daemon could act: that answer must take the new
// pair, or the peer, still getting no ACK on it, gives it up again.
struct follow {
	__u8 local[16]; // the source to use (this host's alternative)
	__u8 peer[16];  // the destination to use
	__u64 until_ns;
	__u32 ifindex;  // where the peer's segment arrived
	__u32 pad;
};

// Keyed by the original tuple in the sender's view (as egress sees it:
// the kernel's TCP only ever uses the original tuple; every rewrite is
// ours, in these programs).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tuple);
	__type(value, struct follow);
} ptcp_follow SEC(".maps");

// When egress must look at established segments at all: until
// echo_until_ns a client echo may be pending (ptcp_hs), until
// follow_until_ns a follow window may be open (ptcp_follow). Outside both
// (a steady stream) an egress segment costs no hash lookup.
struct live {
	__u64 echo_until_ns;
	__u64 follow_until_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct live);
} ptcp_live SEC(".maps");

// A client echo is written within this long of the SYN+ACK (the kernel's
// ACK leaves at once; up to MAX_ECHO_TRIES skipped segments after it);
// outside every open window egress does not look for pending echoes (an
// entry left over is used only if another handshake opens a window
// again; until then the connection is plain on both ends, as when the
// tries run out).
#define ECHO_WINDOW_NS (500 * 1000 * 1000ull)

// Number of ptcp_alt entries per slot (alt_slot of their key), kept by the
// daemon (preservetcp::bpf::alt_slot): an incoming segment whose slot is
// empty is on no alternative pair, without a hash lookup.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ALT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} ptcp_alt_slots SEC(".maps");

// A connection the daemon moved to another pair (keyed by its original
// tuple, sender's view): egress rewrites its segments to the pair and
// hands them to the pair's device (bpf_redirect_neigh: neighbour and MAC
// addresses for the new destination); a segment arriving on the original
// tuple means the peer went back, and is reported (and followed, outside
// the hold) like one on an alternative pair.
struct moved {
	__u8 local[16];       // source on the wire
	__u8 peer[16];        // destination on the wire
	__u64 next_report_ns; // written by the program only
	__u64 hold_until_ns;  // daemon: the connection's last switch + hold
	__u32 ifindex;        // daemon: the device of the pair
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); // the engine's connection limit
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tuple);
	__type(value, struct moved);
} ptcp_moved SEC(".maps");

// Entries in ptcp_moved (daemon): while 0, no segment costs a lookup.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} ptcp_moved_count SEC(".maps");

// The slot of a wire tuple: the first 8 octets (the prefix part) of both
// addresses and the ports, read as native 32-bit words (the peer's words
// multiplied by an odd constant, so the two addresses do not cancel),
// folded to 16 bits.
// (The interface identifiers are left out: an alternative pair shares them
// with the original one.)
static __always_inline __u32 alt_slot(const struct tuple *t)
{
	__u32 l0, l1, p0, p1, ports, x;

	__builtin_memcpy(&l0, t->local, 4);
	__builtin_memcpy(&l1, t->local + 4, 4);
	__builtin_memcpy(&p0, t->peer, 4);
	__builtin_memcpy(&p1, t->peer + 4, 4);
	__builtin_memcpy(&ports, &t->local_port, 4);
	x = l0 ^ l1 ^ ((p0 ^ p1) * 0x9E3779B1u) ^ ports;
	x ^= x >> 16;
	return x & (ALT_SLOTS - 1);
}

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tuple);
	__type(value, struct alt);
} ptcp_alt SEC(".maps");

// Copies of incoming packets for the daemon (preservetcp::bpf::Event): a
// 4-octet header (kind, 0, length in host order) and `length` bytes from
// the IPv6 header on.
struct event {
	__u8 kind;
	__u8 pad;
	__u16 len;
	__u8 data[EV_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} ptcp_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} ptcp_event_scratch SEC(".maps");

// Copies of ptcp_hs values (too big for the stack; see SCRATCH_*).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct hs);
} ptcp_scratch SEC(".maps");

// Copy of a ptcp_offers value (egress only).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct offer);
} ptcp_offer_scratch SEC(".maps");

// State of build_echo's steps (echo_step), per CPU: a bpf_loop callback
// gets no map value pointer from its caller.
struct echo_state {
	__u32 off;        // next prefix in the scratch option
	__u32 w;          // where the next accepted prefix goes (w <= off)
	__u32 n;          // prefixes accepted so far
	__u32 rejected;   // prefixes left out
	__u32 bad;        // the prefix list is malformed
	__s32 peer_scope; // scope_rank of the peer's address
	__u8 peer[16];    // the peer's address for the connection
	__u8 acc[MAX_ACCEPTED][16]; // the accepted alternative addresses
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct echo_state);
} ptcp_echo_state SEC(".maps");

static __always_inline void count_n(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&ptcp_counters, &idx);
	if (c)
		*c += n;
}

static __always_inline void count(__u32 idx)
{
	count_n(idx, 1);
}

// Copies the incoming packet (from its IPv6 header, at most EV_MAX bytes)
// into ptcp_events as an event of `kind`; `flags` chooses the wake-up.
static __always_inline void report(struct __sk_buff *skb, __u8 kind, __u64 flags)
{
	__u32 zero = 0;
	struct event *e = bpf_map_lookup_elem(&ptcp_event_scratch, &zero);
	__u64 len;

	if (!e)
		return;
	len = skb->len;
	if (len <= L3) {
		count(C_EVENTS_LOST);
		return;
	}
	len -= L3;
	if (len > EV_MAX)
		len = EV_MAX;
	// (Keeps the bound on the register passed as the length.)
	asm volatile("" : "+r"(len));
	if (len < 1 || len > EV_MAX)
		return;
	if (bpf_skb_load_bytes(skb, L3, e->data, len)) {
		count(C_EVENTS_LOST);
		return;
	}
	e->kind = kind;
	e->pad = 0;
	e->len = (__u16)len;
	if (bpf_ringbuf_output(&ptcp_events, e, 4 + len, flags))
		count(C_EVENTS_LOST);
	else
		count(kind == EV_ALT ? C_ALT_REPORTS : C_LEARN_EVENTS);
}

// Whether an outgoing packet's socket opted out by its mark.
static __always_inline int opted_out(struct __sk_buff *skb)
{
	return opt_in_mask && opt_out_mark &&
	       (skb->mark & opt_in_mask) == opt_out_mark;
}

// Whether an outgoing SYN (sender's tuple) is covered: its socket mark
// opted in, one of its ports is in ptcp_ports, or its tuple opted in; an
// opted-out socket never is.
static __always_inline int covered(struct __sk_buff *skb, struct tuple *t)
{
	__u32 port;
	__u8 *on;

	if (opted_out(skb))
		return 0;
	if (opt_in_mask && (skb->mark & opt_in_mask) == opt_in_mark)
		return 1;
	port = bpf_ntohs(t->local_port);
	on = bpf_map_lookup_elem(&ptcp_ports, &port);
	if (on && *on)
		return 1;
	port = bpf_ntohs(t->peer_port);
	on = bpf_map_lookup_elem(&ptcp_ports, &port);
	if (on && *on)
		return 1;
	return bpf_map_lookup_elem(&ptcp_optin, t) != 0;
}

struct headers {
	__u8 ip[IP6_HLEN];
	__u8 tcp[14]; // ports, seq, ack, data offset, flags
};

// Ethernet + IPv6; loads the fixed IPv6 header and what follows it. Reads
// the packet directly when the headers are in the linear part (always for
// what the local TCP sends and for veth), else through the helper.
static __always_inline int load_headers(struct __sk_buff *skb, struct headers *h)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u16 proto;

	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return -1;
	if (data + L3 + sizeof(*h) <= end) {
		__builtin_memcpy(&proto, data + 12, 2);
		if (proto != bpf_htons(ETH_P_IPV6))
			return -1;
		__builtin_memcpy(h, data + L3, sizeof(*h));
	} else {
		if (bpf_skb_load_bytes(skb, 12, &proto, 2) || proto != bpf_htons(ETH_P_IPV6))
			return -1;
		if (bpf_skb_load_bytes(skb, L3, h, sizeof(*h)))
			return -1;
	}
	if ((h->ip[0] >> 4) != 6)
		return -1;
	return 0;
}

// Opens room for a destination options header of hdr_len bytes (a multiple
// of 8, at most MAX_HDR) after the fixed IPv6 header and writes its first
// two octets; fixes the IPv6 next header and payload length. adjust_room
// only moves the headers: the IPv6 fields are ours to fix, and the TCP
// checksum does not change (the pseudo-header has no extension headers).
static __always_inline int open_header(struct __sk_buff *skb, struct headers *h, __u32 hdr_len)
{
	__u8 first[2];
	__u16 plen;
	__u8 nh = NEXTHDR_DEST;

	if (skb->gso_segs <= 1 && skb->gso_size == 0) {
		__u32 mtu = 0;
		if (bpf_check_mtu(skb, 0, &mtu, (__s32)hdr_len, 0)) {
			count(C_SKIPPED_MTU);
			return -1;
		}
	}
	// (GSO packets: adjust_room lowers gso_size by hdr_len, so every
	// segment still fits.)
	plen = bpf_ntohs(*(__u16 *)&h->ip[4]);
	if ((__u32)plen + hdr_len > 0xffff) {
		count(C_SKIPPED_MTU);
		return -1;
	}
	if (bpf_skb_adjust_room(skb, (__s32)hdr_len, BPF_ADJ_ROOM_NET, 0)) {
		count(C_SKIPPED_ERROR);
		return -1;
	}
	plen = bpf_htons(plen + (__u16)hdr_len);
	first[0] = h->ip[6];
	first[1] = (__u8)(hdr_len / 8 - 1);
	if (bpf_skb_store_bytes(skb, L3 + 4, &plen, 2, 0) ||
	    bpf_skb_store_bytes(skb, L3 + 6, &nh, 1, 0) ||
	    bpf_skb_store_bytes(skb, L4, first, 2, 0)) {
		count(C_SKIPPED_ERROR);
		return -1;
	}
	return 0;
}

// Writes the padding that brings a header of `used` bytes to `total` (the
// next multiple of 8): Pad1 for one byte, PadN with zero data otherwise.
static __always_inline int write_padding(struct __sk_buff *skb, __u32 at, __u64 pad)
{
	__u8 p[8] = {0};
	__u64 n;

	if (pad == 0)
		return 0;
	if (pad == 1)
		return bpf_skb_store_bytes(skb, at, p, 1, 0);
	n = pad - 2;
	// (Keeps clang from folding the bound into a form the verifier does
	// not track on the register passed as the length.)
	asm volatile("" : "+r"(n));
	if (n > 5)
		return -1;
	p[0] = OPT_PADN;
	p[1] = (__u8)n;
	return bpf_skb_store_bytes(skb, at, p, n + 2, 0);
}

static __always_inline __u64 padded(__u64 used)
{
	return (used + 7) & ~7ull;
}

// Writes one option stored as [type, len, data...] with `type` replacing
// the stored type octet.
static __always_inline int write_option(struct __sk_buff *skb, __u32 at, __u8 type,
					const __u8 *opt, __u64 len)
{
	if (len < 2 || len > MAX_OPT)
		return -1;
	if (bpf_skb_store_bytes(skb, at, &type, 1, 0))
		return -1;
	return bpf_skb_store_bytes(skb, at + 1, opt + 1, len - 1, 0);
}

// Whether a copied option is whole: its length field, within bounds, is
// the option's own length octet plus two, and the type is PREFIX_SYN (a
// value mixed from two updates fails this unless both agree).
static __always_inline int option_whole(__u64 len, const __u8 *opt)
{
	return len >= 2 && len <= MAX_OPT && opt[0] == OPT_PREFIX_SYN &&
	       (__u64)opt[1] + 2 == len;
}

static __always_inline void tuple_out(struct tuple *t, const struct headers *h)
{
	__builtin_memcpy(t->local, &h->ip[8], 16);
	__builtin_memcpy(t->peer, &h->ip[24], 16);
	__builtin_memcpy(&t->local_port, &h->tcp[0], 2);
	__builtin_memcpy(&t->peer_port, &h->tcp[2], 2);
}

static __always_inline void forget(struct tuple *t)
{
	if (bpf_map_lookup_elem(&ptcp_hs, t))
		bpf_map_delete_elem(&ptcp_hs, t);
}

// The local offer for t->local, copied; NULL (counted) if there is none
// or the copy is not whole.
static __always_inline struct offer *offer_copy(struct tuple *t)
{
	__u32 zero = 0;
	struct offer *o = bpf_map_lookup_elem(&ptcp_offers, t->local);
	struct offer *c = bpf_map_lookup_elem(&ptcp_offer_scratch, &zero);

	if (!o || !c) {
		count(C_SKIPPED_ERROR);
		return 0;
	}
	__builtin_memcpy(c, o, sizeof(*c));
	if (!option_whole(c->len, c->opt)) {
		count(C_SKIPPED_ERROR);
		return 0;
	}
	return c;
}

// The client's echo was skipped on this segment: give up after
// MAX_ECHO_TRIES segments (the connection then stays plain TCP on both
// ends: the daemon got no echo event, the server no PREFIX_ACK).
static __always_inline void echo_skipped(struct hs *e, struct tuple *t)
{
	__u8 tries = e->tries + 1;

	if (tries >= MAX_ECHO_TRIES) {
		bpf_map_delete_elem(&ptcp_hs, t);
		count(C_ECHO_GIVEN_UP);
		return;
	}
	e->tries = tries;
}

// Writes `addrs` (source, destination) into the IPv6 header of a packet
// with TCP right after it, and fixes the TCP checksum by the pseudo-header
// difference. For a CHECKSUM_COMPLETE packet (ingress) the store updates
// skb->csum by the same difference the checksum field takes back, so the
// packet sum holds; egress packets are never CHECKSUM_COMPLETE. Nonzero
// (counted) on a helper failure.
static __always_inline int rewrite_addrs(struct __sk_buff *skb, struct headers *h, __u8 *addrs)
{
	__s64 diff = bpf_csum_diff((__be32 *)&h->ip[8], 32, (__be32 *)addrs, 32, 0);

	if (diff < 0 ||
	    bpf_skb_store_bytes(skb, L3 + 8, addrs, 32, BPF_F_RECOMPUTE_CSUM) ||
	    bpf_l4_csum_replace(skb, L4 + 16, 0, (__u64)diff, BPF_F_PSEUDO_HDR)) {
		count(C_SKIPPED_ERROR);
		return -1;
	}
	return 0;
}

// Opens (or extends) the follow window of the connection with original
// tuple `key` (sender's view): its segments go to (`local`, `peer`) on
// device `ifindex` until FOLLOW_NS from `now`.
static __always_inline void open_follow(struct tuple *key, const __u8 *local, const __u8 *peer,
					__u32 ifindex, __u64 now)
{
	__u32 zero = 0;
	struct follow f = {};
	struct live *l;

	__builtin_memcpy(f.local, local, 16);
	__builtin_memcpy(f.peer, peer, 16);
	f.until_ns = now + FOLLOW_NS;
	f.ifindex = ifindex;
	bpf_map_update_elem(&ptcp_follow, key, &f, BPF_ANY);
	l = bpf_map_lookup_elem(&ptcp_live, &zero);
	if (l && l->follow_until_ns < f.until_ns)
		l->follow_until_ns = f.until_ns;
}

// Rewrites an outgoing segment to the pair `addrs` (source, destination)
// and hands it to device `ifindex`, where the kernel looks up the
// neighbour of the new destination and fills in the MAC addresses.
static __always_inline int rewrite_out(struct __sk_buff *skb, struct headers *h, __u8 *addrs,
				       __u32 ifindex, __u32 counter)
{
	if (rewrite_addrs(skb, h, addrs))
		return TC_ACT_SHOT; // half rewritten
	count(counter);
	return bpf_redirect_neigh(ifindex, 0, 0, 0);
}

// A segment of a connection the daemon moved (struct moved): on its pair.
static __always_inline int moved_out(struct __sk_buff *skb, struct headers *h, struct tuple *t)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&ptcp_moved_count, &zero);
	struct moved *m;
	__u8 addrs[32];

	if (!n || !*n)
		return TC_ACT_OK;
	m = bpf_map_lookup_elem(&ptcp_moved, t);
	if (!m)
		return TC_ACT_OK;
	__builtin_memcpy(addrs, m->local, 16);
	__builtin_memcpy(addrs + 16, m->peer, 16);
	return rewrite_out(skb, h, addrs, m->ifindex, C_MOVED_REWRITES);
}

// A segment of a connection in its follow window (see struct follow):
// rewritten to the pair the peer sends on and redirected to the link its
// segment arrived on; an expired entry is deleted. Without a window, a
// moved connection's segment takes its pair (moved_out).
static __always_inline int follow_out(struct __sk_buff *skb, struct headers *h, struct tuple *t)
{
	struct follow *f = bpf_map_lookup_elem(&ptcp_follow, t);
	__u8 addrs[32];

	if (!f)
		return moved_out(skb, h, t);
	if (bpf_ktime_get_ns() > f->until_ns) {
		bpf_map_delete_elem(&ptcp_follow, t);
		return moved_out(skb, h, t);
	}
	__builtin_memcpy(addrs, f->local, 16);
	__builtin_memcpy(addrs + 16, f->peer, 16);
	return rewrite_out(skb, h, addrs, f->ifindex, C_FOLLOW_REWRITES);
}

SEC("classifier")
int ptcp_egress(struct __sk_buff *skb)
{
	struct headers h;
	struct tuple t = {};
	__u32 slot = SCRATCH_EGRESS;
	__u8 flags;

	if (load_headers(skb, &h) || h.ip[6] != NEXTHDR_TCP)
		return TC_ACT_OK;
	flags = h.tcp[13];
	tuple_out(&t, &h);

	if (flags & TCP_RST) {
		// An aborted handshake (or connection): never echo on a RST, and
		// nothing learned for the tuple is needed any more. (A moved
		// connection's RST still takes its pair.)
		forget(&t);
		return moved_out(skb, &h, &t);
	}

	if ((flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
		struct offer *o;
		struct hs *e, *mark;
		__u32 isn;
		__u64 a, total;
		int keep;

		// A new connection on this tuple: a moved entry of an earlier
		// one (closed, its entry not yet removed by the daemon) must
		// not rewrite it.
		if (bpf_map_lookup_elem(&ptcp_moved, &t))
			bpf_map_delete_elem(&ptcp_moved, &t);
		if (!covered(skb, &t)) {
			// Not covered: a new connection on a tuple that had an
			// entry (the earlier one is gone).
			forget(&t);
			return TC_ACT_OK;
		}
		__builtin_memcpy(&isn, &h.tcp[4], 4);
		// A retransmission of the SYN (same sequence number) whose
		// SYN+ACK has already been learned keeps the pending echo.
		e = bpf_map_lookup_elem(&ptcp_hs, &t);
		keep = e && e->state == HS_CLIENT_ECHO && e->isn == isn;
		o = offer_copy(&t);
		if (!o) {
			if (!keep)
				forget(&t);
			return TC_ACT_OK;
		}
		a = o->len;
		if (a < 2 || a > MAX_OPT)
			return TC_ACT_OK;
		total = padded(2 + a);
		if (open_header(skb, &h, total)) {
			if (!keep)
				forget(&t);
			return TC_ACT_OK;
		}
		if (write_option(skb, L4 + 2, OPT_PREFIX_SYN, o->opt, a) ||
		    write_padding(skb, L4 + 2 + a, total - 2 - a)) {
			count(C_SKIPPED_ERROR);
			return TC_ACT_SHOT; // the room is open but unfilled
		}
		if (!keep) {
			mark = bpf_map_lookup_elem(&ptcp_scratch, &slot);
			if (mark) {
				mark->state = HS_OFFERED;
				mark->tries = 0;
				mark->len = 0;
				mark->isn = isn;
				bpf_map_update_elem(&ptcp_hs, &t, mark, BPF_ANY);
			}
		}
		count(C_SYN_OFFERS);
		return TC_ACT_OK;
	}

	if ((flags & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)) {
		struct hs *e = bpf_map_lookup_elem(&ptcp_hs, &t);
		struct hs *s;
		struct offer *o;
		__u64 a, b, total;

		if (!e || e->state != HS_SERVER_ECHO)
			return TC_ACT_OK;
		if (opted_out(skb)) {
			// The listener opted out: a plain answer, and the
			// offer learned for the tuple is dropped.
			forget(&t);
			return TC_ACT_OK;
		}
		s = bpf_map_lookup_elem(&ptcp_scratch, &slot);
		if (!s)
			return TC_ACT_OK;
		__builtin_memcpy(s, e, sizeof(*s));
		b = s->len;
		if (s->state != HS_SERVER_ECHO || !option_whole(b, s->opt)) {
			count(C_SKIPPED_ERROR);
			return TC_ACT_OK;
		}
		o = offer_copy(&t);
		if (!o)
			return TC_ACT_OK;
		a = o->len;
		if (a < 2 || a > MAX_OPT || b < 2 || b > MAX_OPT)
			return TC_ACT_OK;
		total = padded(2 + a + b);
		if (open_header(skb, &h, total))
			return TC_ACT_OK;
		// (The SYN+ACK may be retransmitted: the entry stays for those.)
		if (write_option(skb, L4 + 2, OPT_PREFIX_SYN, o->opt, a) ||
		    write_option(skb, L4 + 2 + a, OPT_PREFIX_ACK, s->opt, b) ||
		    write_padding(skb, L4 + 2 + a + b, total - 2 - a - b)) {
			count(C_SKIPPED_ERROR);
			return TC_ACT_SHOT;
		}
		count(C_SYNACK_ANSWERS);
		return TC_ACT_OK;
	}

	if (!(flags & TCP_SYN)) {
		__u32 zero = 0;
		struct live *l = bpf_map_lookup_elem(&ptcp_live, &zero);
		struct hs *e = 0;
		struct hs *s;
		__u64 b, total, now;

		if (!l || (!l->echo_until_ns && !l->follow_until_ns))
			return moved_out(skb, &h, &t);
		now = bpf_ktime_get_ns();
		// Windows that passed are cleared, so that a steady stream
		// does not even read the clock.
		// (Compare-and-swap: a window the ingress program opened
		// meanwhile stays.)
		b = l->echo_until_ns;
		if (b && now >= b)
			__sync_val_compare_and_swap(&l->echo_until_ns, b, 0);
		b = l->follow_until_ns;
		if (b && now >= b)
			__sync_val_compare_and_swap(&l->follow_until_ns, b, 0);
		if (now < l->echo_until_ns)
			e = bpf_map_lookup_elem(&ptcp_hs, &t);
		if (!e || e->state != HS_CLIENT_ECHO) {
			if (now < l->follow_until_ns)
				return follow_out(skb, &h, &t);
			return moved_out(skb, &h, &t);
		}
		// GSO super-packets (one header would be copied into every
		// segment) and BIG TCP packets (IPv6 payload length 0, a jumbo
		// option follows) do not carry the echo; a later segment does.
		if (skb->gso_size != 0 || (h.ip[4] == 0 && h.ip[5] == 0)) {
			echo_skipped(e, &t);
			return TC_ACT_OK;
		}
		s = bpf_map_lookup_elem(&ptcp_scratch, &slot);
		if (!s)
			return TC_ACT_OK;
		__builtin_memcpy(s, e, sizeof(*s));
		b = s->len;
		if (s->state != HS_CLIENT_ECHO || !option_whole(b, s->opt)) {
			count(C_SKIPPED_ERROR);
			bpf_map_delete_elem(&ptcp_hs, &t);
			return TC_ACT_OK;
		}
		if (b < 2 || b > MAX_OPT)
			return TC_ACT_OK;
		total = padded(2 + b);
		if (open_header(skb, &h, total)) {
			echo_skipped(e, &t);
			return TC_ACT_OK;
		}
		if (write_option(skb, L4 + 2, OPT_PREFIX_ACK, s->opt, b) ||
		    write_padding(skb, L4 + 2 + b, total - 2 - b)) {
			count(C_SKIPPED_ERROR);
			echo_skipped(e, &t);
			return TC_ACT_SHOT;
		}
		// Only now, with the echo written, is the entry done; the
		// daemon learns that this connection's echo really left.
		bpf_map_delete_elem(&ptcp_hs, &t);
		if (bpf_ringbuf_output(&ptcp_echoes, &t, sizeof(t), 0))
			count(C_EVENTS_LOST);
		count(C_ACK_ECHOES);
	}
	return TC_ACT_OK;
}

// The scope of an address as preservetcp::select::scope_of orders them:
// -1 none (unspecified, the rest of ::/8, multicast), 0 loopback, 1
// link-local, 2 site-local, 3 unique-local, 4 global.
static __always_inline int scope_rank(const __u8 *a)
{
	__u64 hi, lo;

	if (a[0] == 0) {
		__builtin_memcpy(&hi, a, 8);
		__builtin_memcpy(&lo, a + 8, 8);
		return (hi == 0 && lo == bpf_cpu_to_be64(1)) ? 0 : -1;
	}
	if (a[0] == 0xff)
		return -1;
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return 1;
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0)
		return 2;
	if ((a[0] & 0xfe) == 0xfc)
		return 3;
	return 4;
}

static __always_inline int same_addr(const __u8 *a, const __u8 *b)
{
	__u64 a0, a1, b0, b1;

	__builtin_memcpy(&a0, a, 8);
	__builtin_memcpy(&a1, a + 8, 8);
	__builtin_memcpy(&b0, b, 8);
	__builtin_memcpy(&b1, b + 8, 8);
	return a0 == b0 && a1 == b1;
}

// One prefix of the received PREFIX_SYN in the ingress scratch entry
// (bpf_loop callback, so the verifier checks it once however many
// prefixes there are): checks its framing like
// preservetcp::wire::PrefixOption::parse, and accepts it like
// preservetcp::select::validate_received with the default limits (length
// MIN_PREFIX_LEN..127; the address it forms with the peer's interface
// identifier usable, of at least the peer's scope, not the peer's own,
// not a duplicate; at most MAX_ACCEPTED). An accepted prefix's bytes move
// to the echo being built at the front of the same option (verbatim,
// padding bits included, in the received order). Returns 1 to stop.
static long echo_step(__u32 i, void *ctx)
{
	__u32 zero = 0, slot = SCRATCH_INGRESS;
	struct echo_state *st = bpf_map_lookup_elem(&ptcp_echo_state, &zero);
	struct hs *s = bpf_map_lookup_elem(&ptcp_scratch, &slot);
	__u32 off, end, w, nb, j, k, n;
	__u8 bits, addr[16];
	int sc;

	if (!st || !s)
		return 1;
	off = st->off;
	end = s->len;
	if (off >= end)
		return 1;
	if (end > MAX_OPT || off > MAX_OPT)
		goto bad;
	bits = s->opt[off];
	if (bits > 128)
		goto bad;
	nb = ((__u32)bits + 7) / 8;
	if (off + 1 + nb > end)
		goto bad;
	st->off = off + 1 + nb;
	if (bits < MIN_PREFIX_LEN || bits >= 128)
		goto reject;
	// The first `bits` bits from the prefix, the rest from the peer.
	for (j = 0; j < 16; j++) {
		__u32 idx = off + 1 + j;
		__u8 pb = 0, m;

		if (j < nb) {
			if (idx > MAX_OPT)
				goto bad;
			pb = s->opt[idx];
		}
		if (8 * j + 8 <= bits) {
			addr[j] = pb;
		} else if (8 * j >= bits) {
			addr[j] = st->peer[j];
		} else {
			m = (__u8)(0xff << (8 - (bits - 8 * j)));
			addr[j] = (pb & m) | (st->peer[j] & (__u8)~m);
		}
	}
	sc = scope_rank(addr);
	if (sc <= 0 || st->peer_scope < 0 || sc < st->peer_scope)
		goto reject;
	if (same_addr(addr, st->peer))
		goto reject; // the connection's own prefix
	n = st->n;
	for (k = 0; k < MAX_ACCEPTED; k++)
		if (k < n && same_addr(addr, st->acc[k]))
			goto reject;
	if (n >= MAX_ACCEPTED)
		goto reject;
	__builtin_memcpy(st->acc[n & (MAX_ACCEPTED - 1)], addr, 16);
	w = st->w;
	for (j = 0; j < 17; j++) {
		__u32 from = off + j, to = w + j;

		if (j > nb)
			break;
		// (Keeps clang from turning the indexes into moving pointers
		// whose bounds the verifier does not see.)
		asm volatile("" : "+r"(from), "+r"(to));
		if (from > MAX_OPT || to > MAX_OPT)
			goto bad;
		s->opt[to] = s->opt[from];
	}
	st->w = w + 1 + nb;
	st->n = n + 1;
	return 0;
reject:
	st->rejected += 1;
	return 0;
bad:
	st->bad = 1;
	return 1;
}

// Turns the PREFIX_SYN in the ingress scratch entry (s->opt, s->len)
// into our echo of it: only the prefixes we accept (echo_step), the type
// octet kept, the length octet and s->len fixed. `peer` is the peer's
// address for the connection. The prefixes left out are counted
// (C_PREFIXES_REJECTED). Nonzero if the prefix list is malformed.
static __always_inline int build_echo(struct hs *s, const __u8 *peer)
{
	__u32 zero = 0;
	struct echo_state *st = bpf_map_lookup_elem(&ptcp_echo_state, &zero);
	__u32 w;

	if (!st)
		return -1;
	st->off = 2;
	st->w = 2;
	st->n = 0;
	st->rejected = 0;
	st->bad = 0;
	__builtin_memcpy(st->peer, peer, 16);
	st->peer_scope = scope_rank(st->peer);
	// At most 255 prefixes in 255 octets, and the call that finds the end.
	bpf_loop(MAX_OPT, echo_step, 0, 0);
	if (st->bad || st->off != s->len)
		return -1;
	w = st->w;
	if (w < 2 || w > MAX_OPT)
		return -1;
	s->opt[1] = (__u8)(w - 2);
	s->len = (__u16)w;
	count_n(C_PREFIXES_REJECTED, st->rejected);
	return 0;
}

// Scanning a received destination options header, one option per step
// (a bpf_loop callback, so every option of the largest header can be
// looked at). It checks what a Linux receiver checks before it processes
// the packet (ip6_parse_tlv): a header that fails would be dropped by the
// kernel, so nothing may be learned from it. It also finds the first
// PREFIX_SYN and the first PREFIX_ACK (later ones are ignored, thesis
// 4.3.2). The loop state lives in a per-CPU map value, not on the stack:
// the verifier does not track map contents, so the callback's states
// converge at once instead of being explored once per iteration (which
// exceeds its budget).
struct scan {
	__u32 off;     // next option, from the start of the header
	__u32 hdr_len; // header length (at most MAX_HDR)
	__u32 syn_off; // offset of the first PREFIX_SYN, 0 if none
	__u32 syn_len; // its length with type and length octets
	__u32 ack_off; // offset of the first PREFIX_ACK, 0 if none
	__u32 ack_len;
	__u32 pad_run; // padding octets since the last other option
	__u32 tlvs;    // options other than padding
	__u32 bad;     // the kernel drops the packet
	__u32 pl_off;  // prefix_list_ok: next length octet
	__u32 pl_end;  // prefix_list_ok: end of the option data
	__u32 pl_ok;   // prefix_list_ok: the list fills the data exactly
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan);
} ptcp_scan_state SEC(".maps");

// What the scan callbacks get from their caller.
struct loop_ctx {
	struct __sk_buff *skb;
};

static long scan_option(__u32 i, void *ctx)
{
	struct loop_ctx *c = ctx;
	__u32 zero = 0, off, n;
	struct scan *sc = bpf_map_lookup_elem(&ptcp_scan_state, &zero);
	__u8 o[8] = {};

	if (!sc)
		return 1;
	off = sc->off;
	if (off >= sc->hdr_len)
		return 1;
	// (The TCP header follows the options: 8 octets are always there.)
	if (off >= MAX_HDR || bpf_skb_load_bytes(c->skb, L4 + off, o, 8))
		goto bad;
	if (o[0] == OPT_PAD1) {
		sc->pad_run += 1;
		if (sc->pad_run > MAX_PAD_RUN)
			goto bad;
		sc->off = off + 1;
		return 0;
	}
	n = o[1];
	if (off + 2 + n > sc->hdr_len)
		goto bad;
	if (o[0] == OPT_PADN) {
		sc->pad_run += 2 + n;
		if (sc->pad_run > MAX_PAD_RUN)
			goto bad;
		// n <= 5 here; the data must be zero.
		if ((n > 0 && o[2]) || (n > 1 && o[3]) || (n > 2 && o[4]) ||
		    (n > 3 && o[5]) || (n > 4 && o[6]))
			goto bad;
	} else {
		sc->tlvs += 1;
		// Other action bits than 00: the receiver discards the packet.
		if (sc->tlvs > MAX_DST_OPTS || (o[0] >> 6))
			goto bad;
		sc->pad_run = 0;
		if (o[0] == OPT_PREFIX_SYN && !sc->syn_off) {
			sc->syn_off = off;
			sc->syn_len = 2 + n;
		} else if (o[0] == OPT_PREFIX_ACK && !sc->ack_off) {
			sc->ack_off = off;
			sc->ack_len = 2 + n;
		}
	}
	sc->off = off + 2 + n;
	return 0;
bad:
	sc->bad = 1;
	return 1;
}

// Scans the header of hdr_len octets after the fixed IPv6 header; NULL
// (counted as malformed) if the receiving kernel will drop the packet,
// else the scan's result.
static __always_inline struct scan *scan_header(struct __sk_buff *skb, __u32 hdr_len)
{
	__u32 zero = 0;
	struct scan *sc = bpf_map_lookup_elem(&ptcp_scan_state, &zero);
	struct loop_ctx c = {.skb = skb};

	if (!sc)
		return 0;
	__builtin_memset(sc, 0, sizeof(*sc));
	sc->off = 2;
	sc->hdr_len = hdr_len;
	// At most 2046 options in a 2048-octet header, and the final call.
	bpf_loop(MAX_HDR, scan_option, &c, 0);
	if (sc->bad || sc->off != hdr_len) {
		count(C_MALFORMED);
		return 0;
	}
	return sc;
}

// One prefix of a prefix list in the packet (the first PREFIX_ACK's
// data): a length octet of at most 128 bits followed by ceil(len / 8)
// octets; the prefixes must fill the data exactly.
static long plist_step(__u32 i, void *ctx)
{
	struct loop_ctx *c = ctx;
	__u32 zero = 0, off;
	struct scan *sc = bpf_map_lookup_elem(&ptcp_scan_state, &zero);
	__u8 bits;

	if (!sc)
		return 1;
	off = sc->pl_off;
	if (off >= sc->pl_end) {
		sc->pl_ok = off == sc->pl_end;
		return 1;
	}
	if (off >= MAX_HDR || bpf_skb_load_bytes(c->skb, L4 + off, &bits, 1) || bits > 128)
		return 1;
	sc->pl_off = off + 1 + ((__u32)bits + 7) / 8;
	return 0;
}

// Whether the option at `off` (length `len` with type and length octets)
// holds a well-formed prefix list.
static __always_inline int prefix_list_ok(struct __sk_buff *skb, struct scan *sc, __u32 off,
					  __u32 len)
{
	struct loop_ctx c = {.skb = skb};

	sc->pl_off = off + 2;
	sc->pl_end = off + len;
	sc->pl_ok = 0;
	// At most 255 prefixes in 255 octets, and the call that finds the end.
	bpf_loop(MAX_OPT, plist_step, &c, 0);
	return sc->pl_ok;
}

// The socket (full, request or TIME_WAIT) of tuple t (local = ours), as
// the receive path would find it for a packet from the peer; the caller
// releases it.
static __always_inline struct bpf_sock *skc_of(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_sock_tuple st = {};

	__builtin_memcpy(st.ipv6.saddr, t->peer, 16);
	__builtin_memcpy(st.ipv6.daddr, t->local, 16);
	st.ipv6.sport = t->peer_port;
	st.ipv6.dport = t->local_port;
	return bpf_skc_lookup_tcp(skb, &st, sizeof(st.ipv6), BPF_F_CURRENT_NETNS, 0);
}

// What answers an offering SYN for tuple t (local = ours): LS_NONE no
// socket will send a SYN+ACK (no listener, or a connection already
// established on the tuple); LS_PENDING a request socket has the tuple,
// the handshake is pending (a retransmitted SYN: the first offer stays);
// LS_WILDCARD a listener on the wildcard address (also after TIME_WAIT);
// LS_BOUND a listener bound to one specific address, which gets no
// aliases (thesis 5.3.8: its service is meant to be reached there only).
#define LS_NONE 0
#define LS_PENDING 1
#define LS_WILDCARD 2
#define LS_BOUND 3

static __always_inline int listener_state(struct __sk_buff *skb, const struct tuple *t)
{
	struct tuple from_any;
	struct bpf_sock *sk;
	__u32 state, any;

	sk = skc_of(skb, t);
	if (!sk)
		return LS_NONE;
	state = sk->state;
	if (state == BPF_TCP_TIME_WAIT) {
		// The SYN may reopen the tuple: the listener decides. No
		// connection has the unspecified source, so the lookup finds
		// the listener.
		bpf_sk_release(sk);
		from_any = *t;
		__builtin_memset(from_any.peer, 0, 16);
		from_any.peer_port = 0;
		sk = skc_of(skb, &from_any);
		if (!sk)
			return LS_NONE;
		state = sk->state;
	}
	if (state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return state == BPF_TCP_NEW_SYN_RECV ? LS_PENDING : LS_NONE;
	}
	any = sk->src_ip6[0] | sk->src_ip6[1] | sk->src_ip6[2] | sk->src_ip6[3];
	bpf_sk_release(sk);
	return any ? LS_BOUND : LS_WILDCARD;
}

// A SYN+ACK answers our SYN: its acknowledgment number is our ISN + 1.
static __always_inline int answers(__u32 isn, const __u8 *ack)
{
	__u32 a;

	__builtin_memcpy(&a, ack, 4);
	return bpf_ntohl(a) == bpf_ntohl(isn) + 1;
}

// Whether a socket of its own has tuple `t` (another connection that
// happens to use the same ports from another address): then what arrives
// on it is that socket's; listeners and TIME_WAIT do not count. (Not asked
// for a connection's current pair: there its own rewritten segments use
// the tuple on the wire as well.) Counted.
static __always_inline int owned(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_sock *sk;
	__u32 state;

	sk = skc_of(skb, t);
	if (!sk)
		return 0;
	state = sk->state;
	bpf_sk_release(sk);
	if (state == BPF_TCP_LISTEN || state == BPF_TCP_TIME_WAIT)
		return 0;
	count(C_ALT_OWNED);
	return 1;
}

// How far (bytes of sequence space) a segment's sequence number may lie
// from the socket's next expected byte for the segment to move the
// connection: a peer that moved retransmits from its oldest unacknowledged
// byte, which is behind our rcv_nxt by what our lost ACKs covered (at
// most a receive window; tcp_rmem's default maximum is 6 MiB).
#define FOLLOW_SEQ_WINDOW (1u << 23)

// Whether a segment arriving on another pair of the connection with
// original tuple (`local`, `peer`, ports of `t`) is one its peer could have
// sent, so that it may move the connection (report, follow window): not a
// RST, the ACK flag set, the acknowledgment number within [snd_una,
// snd_nxt] (RFC 5961 §5 acceptance, without the allowance for old ACKs:
// a late ACK just moves nothing) and the sequence number within
// FOLLOW_SEQ_WINDOW of rcv_nxt. A blind attacker who knows the tuple and
// one of the peer's other addresses must guess both 32-bit numbers into
// those windows. Segments that fail are still rewritten to the original
// tuple (the socket's own checks apply to them), only not followed.
// Counted (C_ALT_IMPLAUSIBLE).
static __always_inline int plausible(struct __sk_buff *skb, const struct headers *h,
				     const __u8 *local, const __u8 *peer,
				     const struct tuple *t)
{
	struct bpf_sock_tuple st = {};
	struct bpf_tcp_sock *tp;
	struct bpf_sock *sk;
	__u32 seq, ack, rcv_nxt, snd_una, snd_nxt;
	__u8 flags = h->tcp[13];

	if ((flags & TCP_RST) || !(flags & TCP_ACK))
		goto no;
	__builtin_memcpy(st.ipv6.saddr, peer, 16);
	__builtin_memcpy(st.ipv6.daddr, local, 16);
	st.ipv6.sport = t->peer_port;
	st.ipv6.dport = t->local_port;
	sk = bpf_sk_lookup_tcp(skb, &st, sizeof(st.ipv6), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		goto no;
	tp = bpf_tcp_sock(sk);
	if (!tp) {
		bpf_sk_release(sk);
		goto no;
	}
	rcv_nxt = tp->rcv_nxt;
	snd_una = tp->snd_una;
	snd_nxt = tp->snd_nxt;
	bpf_sk_release(sk);
	__builtin_memcpy(&seq, &h->tcp[4], 4);
	__builtin_memcpy(&ack, &h->tcp[8], 4);
	seq = bpf_ntohl(seq);
	ack = bpf_ntohl(ack);
	if (ack - snd_una > snd_nxt - snd_una)
		goto no;
	if (seq - rcv_nxt + FOLLOW_SEQ_WINDOW > 2 * FOLLOW_SEQ_WINDOW)
		goto no;
	return 1;
no:
	count(C_ALT_IMPLAUSIBLE);
	return 0;
}

// A segment on an alternative pair of a tracked connection (TCP right
// after the fixed header): reported now and then, then rewritten to the
// connection's original addresses. The TCP checksum covers the addresses
// through the pseudo-header: it is fixed by their difference (for
// CHECKSUM_COMPLETE packets the store updates skb->csum by the same
// difference the checksum field takes back, so the packet sum holds).
static __always_inline int follow_alt(struct __sk_buff *skb, struct headers *h, struct tuple *t)
{
	__u32 slot = alt_slot(t);
	__u32 *n = bpf_map_lookup_elem(&ptcp_alt_slots, &slot);
	struct alt *a;
	__u8 addrs[32];
	__u64 now;

	if (!n || !*n)
		return 0;
	a = bpf_map_lookup_elem(&ptcp_alt, t);
	if (!a)
		return 0;
	if (!a->current && owned(skb, t))
		return 0;
	now = bpf_ktime_get_ns();
	if (!a->current && now >= a->next_report_ns &&
	    plausible(skb, h, a->local, a->peer, t)) {
		struct tuple key = {};

		a->next_report_ns = now + ALT_REPORT_NS;
		report(skb, EV_ALT, 0);
		// Within the follow hold after the connection's last switch
		// this is a late segment on a pair just left: the engine does
		// not follow it, neither does the window.
		if (now < a->hold_until_ns)
			goto rewrite;
		// Answer on this pair until the daemon's entry takes over.
		__builtin_memcpy(key.local, a->local, 16);
		__builtin_memcpy(key.peer, a->peer, 16);
		key.local_port = t->local_port;
		key.peer_port = t->peer_port;
		open_follow(&key, t->local, t->peer, skb->ifindex, now);
	}
rewrite:
	// Source: the original peer; destination: the original local address.
	__builtin_memcpy(addrs, a->peer, 16);
	__builtin_memcpy(addrs + 16, a->local, 16);
	if (rewrite_addrs(skb, h, addrs))
		return 0;
	count(C_ALT_REWRITES);
	return 1;
}

// A segment on the original tuple of a connection the daemon moved: the
// peer went back to the original pair. Reported (and followed outside the
// hold) like a segment on an alternative pair, if plausible; it needs no
// rewrite.
static __always_inline void moved_in(struct __sk_buff *skb, const struct headers *h,
				     struct tuple *t)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&ptcp_moved_count, &zero);
	struct moved *m;
	__u64 now;

	if (!n || !*n)
		return;
	m = bpf_map_lookup_elem(&ptcp_moved, t);
	if (!m)
		return;
	now = bpf_ktime_get_ns();
	if (now < m->next_report_ns || !plausible(skb, h, t->local, t->peer, t))
		return;
	m->next_report_ns = now + ALT_REPORT_NS;
	report(skb, EV_ALT, 0);
	if (now >= m->hold_until_ns)
		open_follow(t, t->local, t->peer, skb->ifindex, now);
}

// An ICMPv6 Packet Too Big quoting one of our segments on a pair of a
// connection other than its original one (a router on the new path could
// not forward it). The kernel finds the socket by the quoted addresses, so
// they are put back to the original tuple (the quoted source is the local
// address); then the socket learns the path MTU of the route it now takes
// and sends smaller segments, instead of losing every full-size segment
// on the new path. Only the quoted addresses change: the ICMPv6 checksum
// takes their difference (it covers the quote, not through a pseudo-header,
// so a CHECKSUM_COMPLETE sum is unchanged: data and checksum field move by
// opposite amounts).
static __always_inline int translate_too_big(struct __sk_buff *skb, struct headers *h)
{
	// The quote: the IPv6 header after the 8-octet ICMPv6 header, then
	// the TCP ports.
	const __u32 q = L4 + 8;
	__u8 quote[IP6_HLEN + 4];
	__u8 addrs[32];
	struct tuple t = {};
	struct alt *a;
	__s64 diff;

	if (h->tcp[0] != ICMPV6_PKT_TOOBIG || h->tcp[1] != 0)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, q, quote, sizeof(quote)))
		return TC_ACT_OK;
	if ((quote[0] >> 4) != 6 || quote[6] != NEXTHDR_TCP)
		return TC_ACT_OK;
	__builtin_memcpy(t.local, &quote[8], 16);
	__builtin_memcpy(t.peer, &quote[24], 16);
	__builtin_memcpy(&t.local_port, &quote[IP6_HLEN], 2);
	__builtin_memcpy(&t.peer_port, &quote[IP6_HLEN + 2], 2);
	a = bpf_map_lookup_elem(&ptcp_alt, &t);
	if (!a || (!a->current && owned(skb, &t)))
		return TC_ACT_OK;
	__builtin_memcpy(addrs, a->local, 16);
	__builtin_memcpy(addrs + 16, a->peer, 16);
	diff = bpf_csum_diff((__be32 *)&quote[8], 32, (__be32 *)addrs, 32, 0);
	if (diff < 0 || bpf_skb_store_bytes(skb, q + 8, addrs, 32, 0)) {
		count(C_SKIPPED_ERROR);
		return TC_ACT_OK;
	}
	if (bpf_l4_csum_replace(skb, L4 + 2, 0, (__u64)diff, 0)) {
		count(C_SKIPPED_ERROR);
		return TC_ACT_SHOT; // half rewritten
	}
	count(C_ICMP_TRANSLATED);
	return TC_ACT_OK;
}

SEC("classifier")
int ptcp_ingress(struct __sk_buff *skb)
{
	struct headers h;
	struct tuple t = {};
	struct hs *s, *e;
	__u8 first[2], flags, tcp[14];
	struct scan *sc;
	__u32 hdr_len, slot = SCRATCH_INGRESS, found, flen, isn = 0;
	int ls, offered = 0;

	// Only frames for this host: offered SYNs for other hosts (promiscuous
	// mode, flooded frames) must not take ptcp_hs entries.
	if (skb->pkt_type != PACKET_HOST)
		return TC_ACT_OK;
	if (load_headers(skb, &h))
		return TC_ACT_OK;
	if (h.ip[6] == NEXTHDR_ICMP)
		return translate_too_big(skb, &h);
	__builtin_memcpy(t.local, &h.ip[24], 16);
	__builtin_memcpy(t.peer, &h.ip[8], 16);
	if (h.ip[6] == NEXTHDR_TCP) {
		flags = h.tcp[13];
		__builtin_memcpy(&t.local_port, &h.tcp[2], 2);
		__builtin_memcpy(&t.peer_port, &h.tcp[0], 2);
		if (flags & TCP_RST)
			forget(&t);
		if (!(flags & TCP_SYN)) {
			// Data, ACKs, FINs and RSTs: on an alternative pair they
			// go back to the original tuple; on the original tuple of
			// a moved connection they show the peer went back.
			if (!follow_alt(skb, &h, &t))
				moved_in(skb, &h, &t);
			return TC_ACT_OK;
		}
		if (flags & TCP_RST)
			return TC_ACT_OK;
		// A SYN without options: a plain connection (maybe on a
		// reused tuple): forget any earlier offer on the tuple.
		if ((flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
			forget(&t);
			return TC_ACT_OK;
		}
		// A SYN+ACK without options answering our offer: a plain peer,
		// nothing to echo (the daemon learns that too).
		e = bpf_map_lookup_elem(&ptcp_hs, &t);
		if (e && e->state == HS_OFFERED && answers(e->isn, &h.tcp[8])) {
			bpf_map_delete_elem(&ptcp_hs, &t);
			report(skb, EV_LEARN, 0);
		}
		return TC_ACT_OK;
	}
	if (h.ip[6] != NEXTHDR_DEST)
		return TC_ACT_OK;
	first[0] = h.tcp[0];
	first[1] = h.tcp[1];
	if (first[0] != NEXTHDR_TCP)
		return TC_ACT_OK;
	hdr_len = ((__u32)first[1] + 1) * 8;
	if (bpf_skb_load_bytes(skb, L4 + hdr_len, tcp, sizeof(tcp)))
		return TC_ACT_OK;
	flags = tcp[13];
	__builtin_memcpy(&t.local_port, &tcp[2], 2);
	__builtin_memcpy(&t.peer_port, &tcp[0], 2);
	if (flags & TCP_RST) {
		forget(&t);
		return TC_ACT_OK;
	}
	if (!(flags & TCP_SYN)) {
		// The PREFIX_ACK answering our SYN+ACK: the daemon learns it,
		// once per handshake (the entry's tries octet, unused by a
		// server entry, records it), so a peer putting the header on
		// every segment costs no copies. A header the kernel drops
		// does not count.
		e = bpf_map_lookup_elem(&ptcp_hs, &t);
		if (e && e->state == HS_SERVER_ECHO && !e->tries) {
			if (!scan_header(skb, hdr_len))
				return TC_ACT_OK;
			e->tries = 1;
			report(skb, EV_LEARN, 0);
		}
		return TC_ACT_OK;
	}
	if (flags & TCP_FIN)
		return TC_ACT_OK;
	if (flags & TCP_ACK) {
		// A SYN+ACK: only an answer to our own offer (this SYN's) is
		// echoed (and learned by the daemon); the first one's option
		// stays (a retransmitted SYN+ACK carries the same).
		e = bpf_map_lookup_elem(&ptcp_hs, &t);
		if (!e || (e->state != HS_OFFERED && e->state != HS_CLIENT_ECHO) ||
		    !answers(e->isn, &tcp[8]))
			return TC_ACT_OK;
		offered = e->state == HS_OFFERED;
		isn = e->isn;
		report(skb, EV_LEARN, 0);
		if (!offered) {
			count(C_OFFERS_KEPT);
			return TC_ACT_OK;
		}
	} else {
		// An offering SYN: who answers it? A listener bound to one
		// address gets no aliases (not learned either); while the
		// handshake is pending the first offer stays.
		ls = listener_state(skb, &t);
		if (ls == LS_BOUND) {
			count(C_LISTENER_BOUND);
			forget(&t);
			return TC_ACT_OK;
		}
		// Every other offering SYN is learned by the daemon (it
		// validates); only one to an address we have an offer for,
		// starting a handshake, can take an entry.
		report(skb, EV_LEARN, 0);
		if (ls == LS_PENDING) {
			e = bpf_map_lookup_elem(&ptcp_hs, &t);
			if (e && e->state == HS_SERVER_ECHO)
				count(C_OFFERS_KEPT);
			return TC_ACT_OK;
		}
		if (ls != LS_WILDCARD || !bpf_map_lookup_elem(&ptcp_offers, t.local))
			return TC_ACT_OK;
	}
	// The whole header as the receiving kernel checks it: if it drops the
	// packet, nothing is learned and an entry stays as it was.
	sc = scan_header(skb, hdr_len);
	if (!sc)
		return TC_ACT_OK;
	// Only the first PREFIX_SYN and the first PREFIX_ACK count; either
	// malformed makes the header malformed: a plain handshake.
	found = sc->syn_off;
	flen = sc->syn_len;
	if (sc->ack_off && !prefix_list_ok(skb, sc, sc->ack_off, sc->ack_len))
		goto malformed;
	if (!found || flen < 2 || flen > MAX_OPT || found >= MAX_HDR) {
		// (A SYN+ACK without PREFIX_SYN: a plain answer.)
		forget(&t);
		return TC_ACT_OK;
	}
	s = bpf_map_lookup_elem(&ptcp_scratch, &slot);
	if (!s)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, L4 + found, s->opt, flen))
		return TC_ACT_OK;
	s->len = (__u16)flen;
	// The echo: the accepted prefixes only.
	if (build_echo(s, t.peer))
		goto malformed;
	s->tries = 0;
	s->isn = isn;
	// A SYN offering: answered on any port (the offer is the client's
	// opt-in).
	s->state = (flags & TCP_ACK) ? HS_CLIENT_ECHO : HS_SERVER_ECHO;
	bpf_map_update_elem(&ptcp_hs, &t, s, BPF_ANY);
	if (flags & TCP_ACK) {
		__u32 zero = 0;
		struct live *l = bpf_map_lookup_elem(&ptcp_live, &zero);
		__u64 until = bpf_ktime_get_ns() + ECHO_WINDOW_NS;

		if (l && l->echo_until_ns < until)
			l->echo_until_ns = until;
	}
	count(C_LEARNED);
	return TC_ACT_OK;
malformed:
	count(C_MALFORMED);
	// The packet reaches TCP: the handshake is plain (a new one for a
	// SYN, the answer to our offer for a SYN+ACK).
	forget(&t);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
