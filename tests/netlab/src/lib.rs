//! # netlab — network-namespace test lab
//!
//! Builds small networks out of Linux network namespaces for integration tests, demos and
//! benchmarks: **hosts** (one namespace each) joined by any number of **veth links**, with
//! per-link IPv6 and IPv4 addressing, per-host hosts files, processes and closures run inside
//! hosts, and fault injection per link *and direction* (link down, silent receive-side drop,
//! rate limit) with timestamps, captures and interface counters.
//!
//! Needs root (checked: [`LabError::NotRoot`]) and `iproute2`; `nftables` for
//! [`Link::drop_rx`], `tcpdump` for captures ([`LabError::ToolMissing`] names the package).
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//! use netlab::{Family, Lab};
//!
//! # fn main() -> Result<(), netlab::LabError> {
//! let lab = Lab::new()?;
//! let a = lab.add_host("a")?;
//! let b = lab.add_host("b")?;
//! let l0 = lab.link(&a, &b)?; // 2001:db8:<net>:0::/64 and 192.0.2.0/28
//! let l1 = lab.link(&a, &b)?; // 2001:db8:<net>:1::/64 and 192.0.2.16/28
//! lab.wait_usable(Duration::from_secs(5))?;
//!
//! // A server socket created inside b lives in b, whichever thread uses it.
//! let server = b.run(|| TcpListener::bind(("::", 7000)))?.expect("bind");
//! let dst = l1.socket_addr(&b, Family::V6, 7000);
//! let mut c = a.run(move || TcpStream::connect(dst))?.expect("connect");
//! c.write_all(b"hi").expect("write");
//! let (mut s, _) = server.accept().expect("accept");
//! let mut buf = [0; 2];
//! s.read_exact(&mut buf).expect("read");
//!
//! // Silent failure of l1 towards b, then repair; the stamps say when each took effect.
//! let broke = l1.drop_rx(&b)?;
//! let healed = l1.restore()?;
//! assert!(healed.at >= broke.at);
//! assert!(l1.counters(&b)?.rx_packets > 0);
//!
//! // Programs run via `ip netns exec` and see the lab's hosts file: "b" resolves to all
//! // four addresses of b, "b-l0" to b's addresses on link 0 only.
//! let out = a.exec_ok(["getent", "ahosts", "b"])?;
//! assert!(out.contains(&l0.addr(&b, Family::V4).to_string()));
//! # Ok(()) }
//! ```
//!
//! ## Addressing
//! See [`addressing`]: link `k` gets `2001:db8:<net>:<k>::/64` and the `k`-th /28 of
//! 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24; host `h` (1-based creation order) is
//! `::<h>` and `.<subnet + h>` on every link, so its IPv6 interface identifier is the same
//! on all links. Only documentation ranges, no default route: nothing leaves the lab.
//! Parallel labs reuse the same addresses safely because namespaces are isolated; their
//! namespace names are unique (`nl<pid>-<counter>-<host>`).
//!
//! ## Hosts
//! Every host gets loopback up and the sysctls in [`HOST_SYSCTLS`] (no DAD — addresses are
//! also added with `nodad` —, IPv6 addresses kept across link down, no RA/RS, no
//! forwarding). `/etc/netns/<ns>/hosts` ([`Host::hosts_file`]) lists every host of the
//! lab, one line per address, so a host's name resolves to *all* its addresses and
//! `<host>-l<k>` to its addresses on link `k`; [`Lab::add_name`] adds more names and
//! [`Lab::set_nameservers`] writes a per-host resolv.conf. `ip netns exec` (used by
//! [`Host::exec`], [`Host::spawn`], [`Host::command`]) bind-mounts both files; in-process
//! code ([`Host::run`]) does not see them through `/etc` and must read
//! [`Host::hosts_file`] itself.
//!
//! ## Faults
//! Per link side: [`Link::down_side`]/[`Link::up_side`] (or both: [`Link::down`],
//! [`Link::up`]); [`Link::drop_rx`] drops everything the host receives on the link with
//! an nftables `inet` input-hook rule, which is *silent* to the sender (an output-hook drop
//! would not be: the sender's TCP would get `EPERM`); [`Link::rate_limit`] installs tbf on
//! the host's egress. Each returns a [`FaultStamp`] (`Instant` and `SystemTime` at which the
//! change was in effect) and is appended to [`Lab::fault_log`]. [`Link::restore`] undoes
//! everything on a link.
//!
//! ## Cleanup
//! Dropping the [`Lab`] (also during a panic) kills every process in its namespaces
//! (SIGTERM, then SIGKILL after 0.5 s), deletes the namespaces (the kernel removes veths,
//! nftables and qdiscs with them), removes `/etc/netns/<ns>/` and the artifacts directory
//! (kept with [`Lab::keep_artifacts`] or `NETLAB_KEEP_ARTIFACTS=1`). Threads of the test
//! process that are still inside a namespace keep it alive until they exit. After a crash,
//! [`cleanup_stale`] (also run by [`Lab::new`]) removes labs whose creating pid is gone.
//!
//! ## Choices
//! * Namespace thread switching uses `setns(CLONE_NEWNET)` on a fresh thread (via `nix`);
//!   no `unsafe` code in this crate.
//! * Counters come from `/proc/thread-self/net/dev` read inside the host, so they are the
//!   kernel's interface counters (dropped-by-nftables packets count as received).
//! * [`Host::ping`] is an in-process ICMP echo over raw sockets, so the `ping` binary is
//!   not needed.
//! * [`Lab::link`], [`Link::up`] and [`Link::up_side`] return only once the kernel reports
//!   the link operational (`state UP`). Before that the device still sends through a no-op
//!   qdisc that discards packets; the first neighbour solicitation / ARP request would be
//!   lost and only retried after 1 s, stalling the first connection by a second.
//! * Dropping uses priority -300 on the input hook, so it runs before any filter chain
//!   other components add; ARP is not affected (it is not in the `inet` family), IPv6
//!   neighbour discovery is (it is ICMPv6).
//! * Interface names, addresses and the nftables table name (`inet netlab`) are stable:
//!   tests may rely on them.

#![forbid(unsafe_code)]

pub mod addressing;
mod capture;
mod cleanup;
mod counters;
mod error;
mod fault;
mod host;
mod lab;
mod link;
mod netns;
mod ping;
mod process;
mod tools;

pub use addressing::{MAX_HOSTS, MAX_LINKS};
pub use capture::Capture;
pub use cleanup::{CleanupReport, cleanup_stale, owner_pid};
pub use counters::Counters;
pub use error::{LabError, Result};
pub use fault::{FaultAction, FaultEvent, FaultStamp, RateLimit};
pub use host::Host;
pub use lab::{ETC_NETNS, HOST_SYSCTLS, Lab, NETNS_PREFIX};
pub use link::{Family, Link};

/// The command prefix that runs a command in a host as uid and gid 65534
/// (`nobody`), for tests of what an unprivileged user may do.
pub const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid",
    "65534",
    "--regid",
    "65534",
    "--clear-groups",
];
pub use netns::{NETNS_RUN_DIR, NetnsGuard, netns_path};
pub use process::{Process, ProcessOutput};
pub use tools::{Tool, find_in_path};
