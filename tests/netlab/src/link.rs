//! Links: veth pairs between two hosts, with fault injection per side.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addressing;
use crate::capture::Capture;
use crate::counters::{self, Counters};
use crate::error::{LabError, Result, io_err};
use crate::fault::{FaultAction, FaultEvent, FaultStamp, RateLimit};
use crate::host::Host;
use crate::lab::{self, LabInner};
use crate::tools::{self, Tool};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both families, IPv6 first.
    pub const ALL: [Family; 2] = [Family::V6, Family::V4];
}

#[derive(Debug, Clone)]
pub(crate) struct LinkEnd {
    pub(crate) host: Host,
    pub(crate) dev: String,
    pub(crate) v6: Ipv6Addr,
    pub(crate) v4: Ipv4Addr,
}

/// A veth link between two hosts. Cheap to clone.
///
/// Methods taking a `&Host` act on that host's side of the link and fail with
/// [`LabError::NotOnLink`] for any other host (the address getters [`Link::addr`],
/// [`Link::dev`] and [`Link::peer`] panic instead, like indexing, to keep tests short; use
/// [`Link::try_addr`] to avoid that).
#[derive(Debug, Clone)]
pub struct Link {
    lab: Arc<LabInner>,
    index: usize,
    ends: [LinkEnd; 2],
}

const NFT_TABLE: &str = "netlab";

impl Link {
    pub(crate) fn new(lab: Arc<LabInner>, index: usize, ends: [LinkEnd; 2]) -> Self {
        Self { lab, index, ends }
    }

    /// The link's index `k` (creation order): it picks the link's prefixes.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The two hosts, in the order given to [`crate::Lab::link`].
    pub fn hosts(&self) -> (&Host, &Host) {
        (&self.ends[0].host, &self.ends[1].host)
    }

    /// The link's IPv6 prefix (a /64).
    pub fn v6_prefix(&self) -> Ipv6Addr {
        addressing::link_v6_prefix(self.lab.v6_net, self.index)
    }

    /// The link's IPv4 subnet (a /28).
    pub fn v4_subnet(&self) -> Ipv4Addr {
        addressing::link_v4_subnet(self.index).unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    fn end(&self, host: &Host) -> Result<&LinkEnd> {
        self.ends
            .iter()
            .find(|e| &e.host == host)
            .ok_or_else(|| LabError::NotOnLink {
                host: host.name().to_owned(),
                link: self.index,
            })
    }

    fn end_or_panic(&self, host: &Host) -> &LinkEnd {
        match self.end(host) {
            Ok(e) => e,
            Err(e) => panic!("netlab: {e}"),
        }
    }

    /// `host`'s address on this link.
    pub fn try_addr(&self, host: &Host, family: Family) -> Result<IpAddr> {
        let e = self.end(host)?;
        Ok(match family {
            Family::V4 => IpAddr::V4(e.v4),
            Family::V6 => IpAddr::V6(e.v6),
        })
    }

    /// `host`'s address on this link. Panics if `host` is not an end of the link.
    pub fn addr(&self, host: &Host, family: Family) -> IpAddr {
        match self.try_addr(host, family) {
            Ok(a) => a,
            Err(e) => panic!("netlab: {e}"),
        }
    }

    /// `host`'s address on this link with a port. Panics if `host` is not an end.
    pub fn socket_addr(&self, host: &Host, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(host, family), port)
    }

    /// `host`'s interface name on this link. Panics if `host` is not an end.
    pub fn dev(&self, host: &Host) -> &str {
        &self.end_or_panic(host).dev
    }

    /// The other end's host. Panics if `host` is not an end.
    pub fn peer(&self, host: &Host) -> &Host {
        let _ = self.end_or_panic(host);
        if self.ends[0].host == *host {
            &self.ends[1].host
        } else {
            &self.ends[0].host
        }
    }

    /// The hosts-file name `<host>-l<k>` that resolves to `host`'s addresses on this link only.
    pub fn hosts_name(&self, host: &Host) -> String {
        format!("{}-l{}", host.name(), self.index)
    }

    fn log(&self, end: &LinkEnd, action: FaultAction, stamp: FaultStamp) {
        self.lab.state().faults.push(FaultEvent {
            link: self.index,
            host: end.host.name().to_owned(),
            dev: end.dev.clone(),
            action,
            stamp,
        });
    }

    fn set_state(&self, ends: &[&LinkEnd], up: bool) -> Result<FaultStamp> {
        self.lab.check_open()?;
        let word = if up { "up" } else { "down" };
        let t0 = FaultStamp::start();
        for e in ends {
            tools::ip(["-n", e.host.netns(), "link", "set", "dev", &e.dev, word])?;
        }
        if up {
            // Report the time the link works again, not just when it was switched on.
            let mut both = true;
            for e in &self.ends {
                both &= lab::admin_up(e.host.netns(), &e.dev)?;
            }
            if both {
                for e in &self.ends {
                    lab::wait_oper_up(e.host.netns(), &e.dev, Duration::from_secs(3))?;
                }
            }
        }
        let stamp = FaultStamp::finish(t0);
        let action = if up {
            FaultAction::Up
        } else {
            FaultAction::Down
        };
        for e in ends {
            self.log(e, action, stamp);
        }
        Ok(stamp)
    }

    /// Sets the MTU of both ends (e.g. 1280, the IPv6 minimum, for a
    /// narrower link behind a router).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        self.lab.check_open()?;
        for e in &self.ends {
            let m = mtu.to_string();
            tools::ip([
                "-n",
                e.host.netns(),
                "link",
                "set",
                "dev",
                &e.dev,
                "mtu",
                &m,
            ])?;
        }
        Ok(())
    }

    /// Sets both ends administratively down (both hosts see carrier loss).
    pub fn down(&self) -> Result<FaultStamp> {
        self.set_state(&[&self.ends[0], &self.ends[1]], false)
    }

    /// Sets both ends up again (addresses are kept across down/up); returns once the
    /// kernel reports the link operational.
    pub fn up(&self) -> Result<FaultStamp> {
        self.set_state(&[&self.ends[0], &self.ends[1]], true)
    }

    /// Sets only `host`'s end down (the veth peer loses carrier too, as veth does).
    pub fn down_side(&self, host: &Host) -> Result<FaultStamp> {
        let e = self.end(host)?;
        self.set_state(&[e], false)
    }

    /// Sets only `host`'s end up (and, if the other end is up too, waits until the link is
    /// operational).
    pub fn up_side(&self, host: &Host) -> Result<FaultStamp> {
        let e = self.end(host)?;
        self.set_state(&[e], true)
    }

    /// Silently drops everything `host` receives on this link (nftables `inet` table,
    /// input hook, `iifname <dev> drop`, IPv4 and IPv6). The sender notices nothing: its
    /// packets leave normally and are discarded on arrival, exactly like a dead path.
    /// Idempotent.
    pub fn drop_rx(&self, host: &Host) -> Result<FaultStamp> {
        let e = self.end(host)?;
        self.change_drops(e, true)
    }

    /// [`Link::drop_rx`] on both ends: the link silently loses everything in both
    /// directions while both interfaces stay up. Returns when both drops are in effect.
    pub fn drop_both(&self) -> Result<FaultStamp> {
        let (a, b) = (self.ends[0].host.clone(), self.ends[1].host.clone());
        let first = self.drop_rx(&a)?;
        let second = self.drop_rx(&b)?;
        Ok(FaultStamp {
            requested: first.requested,
            ..second
        })
    }

    /// Removes the receive-side drop of `host` on this link. Idempotent.
    pub fn restore_rx(&self, host: &Host) -> Result<FaultStamp> {
        let e = self.end(host)?;
        self.change_drops(e, false)
    }

    fn change_drops(&self, e: &LinkEnd, drop: bool) -> Result<FaultStamp> {
        self.lab.check_open()?;
        Tool::Nft.require()?;
        let script = {
            let mut st = self.lab.state();
            let rec = st
                .hosts
                .iter_mut()
                .find(|h| h.id == e.host.id())
                .ok_or(LabError::Closed)?;
            if drop {
                rec.drops.insert(e.dev.clone());
            } else {
                rec.drops.remove(&e.dev);
            }
            nft_script(rec.drops.iter().map(String::as_str))
        };
        let t0 = FaultStamp::start();
        e.host
            .run(|| tools::run(Command::new("nft").args(["-f", "-"]), Some(&script)))??;
        let stamp = FaultStamp::finish(t0);
        let action = if drop {
            FaultAction::DropRx
        } else {
            FaultAction::RestoreRx
        };
        self.log(e, action, stamp);
        Ok(stamp)
    }

    /// Installs a token-bucket rate limit on `host`'s egress on this link (replacing any
    /// previous one).
    pub fn rate_limit(&self, host: &Host, limit: RateLimit) -> Result<FaultStamp> {
        self.lab.check_open()?;
        Tool::Tc.require()?;
        let e = self.end(host)?;
        let t0 = FaultStamp::start();
        tools::run(
            Command::new("tc")
                .args(["-n", e.host.netns(), "qdisc", "replace", "dev", &e.dev])
                .args([
                    "root".to_owned(),
                    "tbf".to_owned(),
                    "rate".to_owned(),
                    format!("{}bit", limit.rate_bits_per_sec),
                    "burst".to_owned(),
                    limit.burst_bytes.to_string(),
                    "latency".to_owned(),
                    format!("{}us", limit.latency.as_micros()),
                ]),
            None,
        )?;
        let stamp = FaultStamp::finish(t0);
        self.set_limited(e, true);
        self.log(e, FaultAction::RateLimit(limit), stamp);
        Ok(stamp)
    }

    /// Removes the rate limit on `host`'s egress (no-op when there is none).
    pub fn clear_rate_limit(&self, host: &Host) -> Result<FaultStamp> {
        self.lab.check_open()?;
        let e = self.end(host)?;
        let t0 = FaultStamp::start();
        if self.is_limited(e) {
            Tool::Tc.require()?;
            tools::run(
                Command::new("tc").args([
                    "-n",
                    e.host.netns(),
                    "qdisc",
                    "del",
                    "dev",
                    &e.dev,
                    "root",
                ]),
                None,
            )?;
            self.set_limited(e, false);
        }
        let stamp = FaultStamp::finish(t0);
        self.log(e, FaultAction::ClearRateLimit, stamp);
        Ok(stamp)
    }

    fn is_limited(&self, e: &LinkEnd) -> bool {
        self.lab
            .state()
            .hosts
            .iter()
            .any(|h| h.id == e.host.id() && h.limited.contains(&e.dev))
    }

    fn set_limited(&self, e: &LinkEnd, on: bool) {
        let mut st = self.lab.state();
        if let Some(h) = st.hosts.iter_mut().find(|h| h.id == e.host.id()) {
            if on {
                h.limited.insert(e.dev.clone());
            } else {
                h.limited.remove(&e.dev);
            }
        }
    }

    /// Undoes every fault on this link: drops removed, rate limits removed, both ends up.
    /// Returns the time at which the last of these took effect.
    pub fn restore(&self) -> Result<FaultStamp> {
        let mut last = None;
        for i in 0..2 {
            let host = self.ends[i].host.clone();
            let dropped = {
                let st = self.lab.state();
                st.hosts
                    .iter()
                    .any(|h| h.id == host.id() && h.drops.contains(&self.ends[i].dev))
            };
            if dropped {
                last = Some(self.restore_rx(&host)?);
            }
            if self.is_limited(&self.ends[i]) {
                last = Some(self.clear_rate_limit(&host)?);
            }
        }
        let up = self.up()?;
        Ok(last.map_or(up, |l: FaultStamp| FaultStamp {
            requested: l.requested.min(up.requested),
            ..up
        }))
    }

    /// The interface counters of `host`'s side of the link.
    pub fn counters(&self, host: &Host) -> Result<Counters> {
        let e = self.end(host)?;
        let dev = e.dev.clone();
        e.host.run(move || counters::read_current(&dev))?
    }

    /// Starts a packet capture (`tcpdump -U`) on `host`'s side, writing to a pcap file in
    /// the lab's artifacts directory; returns once tcpdump is capturing.
    pub fn capture(&self, host: &Host) -> Result<Capture> {
        let e = self.end(host)?;
        let file = format!("{}-{}-{}.pcap", e.host.name(), e.dev, self.lab.next_seq());
        self.capture_to(host, self.lab.dir.join(file))
    }

    /// Like [`Link::capture`] but writes to `path`.
    pub fn capture_to(&self, host: &Host, path: impl Into<PathBuf>) -> Result<Capture> {
        self.lab.check_open()?;
        Tool::Tcpdump.require()?;
        let e = self.end(host)?;
        crate::capture::start(&e.host, &e.dev, path.into())
    }

    /// One TCP connection attempt from `from` to the other end's address on this link
    /// (a listener is opened there on an ephemeral port for the purpose).
    pub fn check_tcp(&self, from: &Host, family: Family, timeout: Duration) -> Result<()> {
        let to = self.peer(from).clone();
        let _ = self.end(from)?;
        let dst = self.addr(&to, family);
        let listener = to.run(move || {
            TcpListener::bind(SocketAddr::new(dst, 0)).map_err(io_err(format!("bind {dst}")))
        })??;
        let sa = listener.local_addr().map_err(io_err("listener address"))?;
        let timeout = timeout.max(Duration::from_millis(1));
        from.run(move || {
            TcpStream::connect_timeout(&sa, timeout).map_err(io_err(format!("connect to {sa}")))
        })??;
        Ok(())
    }

    /// Whether IPv6 is operational on `host`'s end: the kernel has configured the
    /// interface's link-local address (it does so only once the link watch has seen the
    /// carrier come up, which the kernel rate-limits to once a second, so a fresh or
    /// re-enabled link can take up to ~1 s before IPv6 packets flow).
    pub fn ipv6_ready(&self, host: &Host) -> Result<bool> {
        let e = self.end(host)?;
        let dev = e.dev.clone();
        e.host.run(move || {
            std::fs::read_to_string("/proc/thread-self/net/if_inet6")
                .map(|t| if_inet6_ready(&t, &dev))
                .map_err(io_err("reading /proc/thread-self/net/if_inet6"))
        })?
    }

    /// Polls [`Link::ipv6_ready`] on both ends until true or `timeout`.
    pub fn wait_ipv6_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for e in &self.ends {
            while !self.ipv6_ready(&e.host)? {
                if Instant::now() >= deadline {
                    return Err(LabError::Timeout {
                        what: format!("IPv6 ready on {} in {}", e.dev, e.host.name()),
                        after: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Waits until the link carries TCP in both families and both directions, retrying
    /// until `timeout` (useful right after creation or after [`Link::up`]/[`Link::restore`]).
    /// Waits for [`Link::ipv6_ready`] first (unless a receive drop is active, which would
    /// fail the TCP checks anyway).
    pub fn wait_usable(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Not fatal here: the TCP checks below report the real problem.
        let _ = self.wait_ipv6_ready(timeout);
        for family in Family::ALL {
            for from in [&self.ends[0].host, &self.ends[1].host] {
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.check_tcp(from, family, left.min(Duration::from_millis(500))) {
                        Ok(()) => break,
                        Err(e @ (LabError::Closed | LabError::NotOnLink { .. })) => return Err(e),
                        Err(e) if left.is_zero() => {
                            return Err(LabError::Timeout {
                                what: format!(
                                    "link {} usable ({family:?} from {}): last error {e}",
                                    self.index,
                                    from.name()
                                ),
                                after: timeout,
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `/proc/net/if_inet6` lists a non-tentative link-local address on `dev`.
/// Line format: address, ifindex, prefix length, scope, flags, name (hex fields).
fn if_inet6_ready(text: &str, dev: &str) -> bool {
    const SCOPE_LINK: u32 = 0x20;
    const IFA_F_TENTATIVE: u32 = 0x40;
    text.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let hex = |i: usize| f.get(i).and_then(|s| u32::from_str_radix(s, 16).ok());
        f.get(5) == Some(&dev)
            && hex(3) == Some(SCOPE_LINK)
            && hex(4).is_some_and(|fl| fl & IFA_F_TENTATIVE == 0)
    })
}

/// The complete nftables state of one host: an `inet` table whose input chain drops what
/// arrives on the listed interfaces. Applied atomically with `nft -f`.
fn nft_script<'a>(devs: impl Iterator<Item = &'a str>) -> String {
    let mut s = format!(
        "table inet {NFT_TABLE} {{\n\tchain input {{\n\t\ttype filter hook input priority -300; policy accept;\n\t}}\n}}\nflush chain inet {NFT_TABLE} input\n"
    );
    for d in devs {
        let _ = writeln!(s, "add rule inet {NFT_TABLE} input iifname \"{d}\" drop");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn if_inet6_readiness() {
        let t = "20010db8000100000000000000000001 02 40 00 80 l0-b
fe800000000000000c4f0afffebac844 03 40 20 80 l1-b
fe800000000000000c4f0afffebac845 02 40 20 c0 l0-x
";
        assert!(!super::if_inet6_ready(t, "l0-b"), "global only");
        assert!(super::if_inet6_ready(t, "l1-b"));
        assert!(!super::if_inet6_ready(t, "l0-x"), "tentative");
        assert!(!super::if_inet6_ready("garbage\n\n", "l0-b"));
    }

    #[test]
    fn nft_script_lists_each_dropped_device() {
        let s = super::nft_script(["l0-b", "l1-b"].into_iter());
        assert!(s.contains("hook input"));
        assert!(s.contains("flush chain inet netlab input"));
        assert!(s.contains("iifname \"l0-b\" drop"));
        assert!(s.contains("iifname \"l1-b\" drop"));
        assert!(!s.contains("output"));
        let empty = super::nft_script(std::iter::empty());
        assert!(!empty.contains("drop"));
    }
}
