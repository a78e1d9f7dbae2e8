//! The lab itself: namespaces, links, hosts files and cleanup.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

use crate::addressing::{self, MAX_HOSTS, MAX_LINKS};
use crate::error::{LabError, Result, io_err};
use crate::fault::FaultEvent;
use crate::host::Host;
use crate::link::{Link, LinkEnd};
use crate::netns::netns_path;
use crate::tools::{self, Tool};

/// Every namespace a lab creates is called `nl<pid>-<counter>-<host>`.
pub const NETNS_PREFIX: &str = "nl";
/// Per-namespace files read by `ip netns exec` live in `/etc/netns/<ns>/`.
pub const ETC_NETNS: &str = "/etc/netns";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Sysctls every host gets before any link is created (so new interfaces inherit the
/// `default` values): no duplicate address detection, IPv6 addresses survive `link down`,
/// no router advertisements or solicitations, no forwarding.
pub const HOST_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.keep_addr_on_down", "1"),
    ("net.ipv6.conf.default.keep_addr_on_down", "1"),
    ("net.ipv6.conf.all.accept_ra", "0"),
    ("net.ipv6.conf.default.accept_ra", "0"),
    ("net.ipv6.conf.all.router_solicitations", "0"),
    ("net.ipv6.conf.default.router_solicitations", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv4.ip_forward", "0"),
];

pub(crate) struct HostRec {
    pub(crate) name: String,
    pub(crate) netns: String,
    pub(crate) id: u8,
    /// Interfaces whose incoming traffic is currently dropped by nftables.
    pub(crate) drops: BTreeSet<String>,
    /// Interfaces with a tbf root qdisc installed by the lab.
    pub(crate) limited: BTreeSet<String>,
}

pub(crate) struct LinkRec {
    /// `(host id, interface name in that host)` for both ends.
    pub(crate) ends: [(u8, String); 2],
}

#[derive(Default)]
pub(crate) struct LabState {
    pub(crate) hosts: Vec<HostRec>,
    pub(crate) links: Vec<LinkRec>,
    pub(crate) names: Vec<(String, Vec<IpAddr>)>,
    pub(crate) nameservers: Vec<IpAddr>,
    pub(crate) faults: Vec<FaultEvent>,
}

pub(crate) struct LabInner {
    pub(crate) prefix: String,
    pub(crate) v6_net: u16,
    pub(crate) dir: PathBuf,
    state: Mutex<LabState>,
    closed: AtomicBool,
    keep: AtomicBool,
    seq: AtomicU64,
}

impl std::fmt::Debug for LabInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.prefix)
            .field("v6_net", &self.v6_net)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LabInner {
    /// Locks the state; a panic elsewhere must not make cleanup impossible, so poisoning
    /// is ignored.
    pub(crate) fn state(&self) -> MutexGuard<'_, LabState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(LabError::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let namespaces: Vec<String> = self.state().hosts.iter().map(|h| h.netns.clone()).collect();
        let mut first_err = None;
        for ns in &namespaces {
            kill_netns_processes(ns);
            if let Err(e) = delete_netns(ns) {
                tracing::warn!("netlab: deleting namespace {ns}: {e}");
                first_err.get_or_insert(e);
            }
            let etc = Path::new(ETC_NETNS).join(ns);
            if etc.exists()
                && let Err(e) = fs::remove_dir_all(&etc)
            {
                first_err.get_or_insert(io_err(format!("removing {}", etc.display()))(e));
            }
        }
        if !self.keep.load(Ordering::Relaxed)
            && self.dir.exists()
            && let Err(e) = fs::remove_dir_all(&self.dir)
        {
            first_err.get_or_insert(io_err(format!("removing {}", self.dir.display()))(e));
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A set of hosts (network namespaces) joined by veth links. Dropping it (also while
/// unwinding from a panic) kills every process inside its hosts, deletes the namespaces
/// (which removes the veths and nftables/tc state) and removes `/etc/netns/<ns>/` and the
/// artifacts directory. See the [crate documentation](crate) for an example.
#[derive(Debug)]
pub struct Lab {
    inner: Arc<LabInner>,
}

impl Lab {
    /// Creates an empty lab. Fails with [`LabError::NotRoot`] when not root and with
    /// [`LabError::ToolMissing`] when `ip` is missing. Also removes leftovers of crashed runs
    /// ([`crate::cleanup_stale`]), ignoring errors.
    pub fn new() -> Result<Self> {
        if !geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        Tool::Ip.require()?;
        if let Err(e) = crate::cleanup_stale() {
            tracing::warn!("netlab: cleanup of stale labs failed: {e}");
        }
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NETNS_PREFIX}{pid}-{n}");
        // Any value works (labs are isolated); a varied one makes captures easier to tell apart.
        let mix = pid.wrapping_mul(0x9E37_79B9) ^ n.wrapping_mul(0x85EB_CA6B);
        let v6_net = match (mix >> 16) as u16 ^ (mix as u16) {
            0 => 1,
            v => v,
        };
        let dir = std::env::temp_dir().join(format!("netlab-{prefix}"));
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(Self {
            inner: Arc::new(LabInner {
                prefix,
                v6_net,
                dir,
                state: Mutex::new(LabState::default()),
                closed: AtomicBool::new(false),
                keep: AtomicBool::new(std::env::var_os("NETLAB_KEEP_ARTIFACTS").is_some()),
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// The lab's unique prefix `nl<pid>-<counter>`; every namespace name starts with it.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The 16-bit third group of every IPv6 prefix in this lab (`2001:db8:<net>:<link>::/64`).
    pub fn v6_net(&self) -> u16 {
        self.inner.v6_net
    }

    /// Directory for captures and process output (removed on drop unless kept).
    pub fn artifacts_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Keeps the artifacts directory (pcaps, process output) after the lab is dropped.
    /// Setting the environment variable `NETLAB_KEEP_ARTIFACTS` has the same effect.
    pub fn keep_artifacts(&self, keep: bool) {
        self.inner.keep.store(keep, Ordering::Relaxed);
    }

    /// Adds a host: a fresh network namespace `<prefix>-<name>` with loopback up, the
    /// [`HOST_SYSCTLS`] applied, and `/etc/netns/<ns>/hosts` written.
    ///
    /// `name` must be 1–12 characters of `a-z`, `0-9` or `-`, starting with a letter, and
    /// unique in the lab; it is the name the host has in every host's hosts file. Host ids
    /// ([`Host::id`]) are given in creation order starting at 1.
    pub fn add_host(&self, name: &str) -> Result<Host> {
        validate_name(name)?;
        self.inner.check_open()?;
        let mut st = self.inner.state();
        if st.hosts.iter().any(|h| h.name == name) {
            return Err(LabError::DuplicateHost(name.to_owned()));
        }
        if st.hosts.len() >= MAX_HOSTS {
            return Err(LabError::TooManyHosts { max: MAX_HOSTS });
        }
        let id = u8::try_from(st.hosts.len() + 1)
            .map_err(|_| LabError::TooManyHosts { max: MAX_HOSTS })?;
        let netns = format!("{}-{name}", self.inner.prefix);
        create_netns(&netns)?;
        st.hosts.push(HostRec {
            name: name.to_owned(),
            netns: netns.clone(),
            id,
            drops: BTreeSet::new(),
            limited: BTreeSet::new(),
        });
        let etc = Path::new(ETC_NETNS).join(&netns);
        fs::create_dir_all(&etc).map_err(io_err(format!("creating {}", etc.display())))?;
        let host = Host::new(self.inner.clone(), id, name.to_owned(), netns.clone());
        for (key, value) in HOST_SYSCTLS {
            host.sysctl(key, value)?;
        }
        tools::ip(["-n", &netns, "link", "set", "dev", "lo", "up"])?;
        write_etc_files(&self.inner, &st)?;
        Ok(host)
    }

    /// Joins two hosts with a new veth link and addresses both ends (see
    /// [`crate::addressing`]). Any number of links may join the same pair.
    ///
    /// The interface in host `a` is called `l<k>-<b's name>` (and vice versa), cut to 15
    /// characters; it is created directly inside the namespaces, so it never exists in the
    /// caller's namespace.
    pub fn link(&self, a: &Host, b: &Host) -> Result<Link> {
        self.inner.check_open()?;
        if !Arc::ptr_eq(&self.inner, a.lab())
            || !Arc::ptr_eq(&self.inner, b.lab())
            || a.id() == b.id()
        {
            return Err(LabError::BadLink(a.name().to_owned(), b.name().to_owned()));
        }
        let mut st = self.inner.state();
        let k = st.links.len();
        if k >= MAX_LINKS {
            return Err(LabError::TooManyLinks { max: MAX_LINKS });
        }
        let dev_a = iface_name(k, b.name());
        let dev_b = iface_name(k, a.name());
        tools::ip([
            "link",
            "add",
            "name",
            &dev_a,
            "netns",
            a.netns(),
            "type",
            "veth",
            "peer",
            "name",
            &dev_b,
            "netns",
            b.netns(),
        ])?;
        st.links.push(LinkRec {
            ends: [(a.id(), dev_a.clone()), (b.id(), dev_b.clone())],
        });
        let net = self.inner.v6_net;
        let mut ends = Vec::with_capacity(2);
        for (host, dev) in [(a, dev_a), (b, dev_b)] {
            let v6 = addressing::host_v6(net, k, host.id());
            let v4 = addressing::host_v4(k, host.id())
                .ok_or(LabError::TooManyLinks { max: MAX_LINKS })?;
            let script = format!(
                "address add {v6}/{} dev {dev} nodad\naddress add {v4}/{} dev {dev}\nlink set dev {dev} up\n",
                addressing::V6_PREFIX_LEN,
                addressing::V4_PREFIX_LEN
            );
            tools::ip_batch(host.netns(), &script)?;
            ends.push(LinkEnd {
                host: host.clone(),
                dev,
                v6,
                v4,
            });
        }
        write_etc_files(&self.inner, &st)?;
        for e in &ends {
            wait_oper_up(e.host.netns(), &e.dev, LINK_UP_TIMEOUT)?;
        }
        let ends: [LinkEnd; 2] = ends
            .try_into()
            .map_err(|_| LabError::BadLink(a.name().to_owned(), b.name().to_owned()))?;
        Ok(Link::new(self.inner.clone(), k, ends))
    }

    /// All hosts, in creation order.
    pub fn hosts(&self) -> Vec<Host> {
        let st = self.inner.state();
        st.hosts
            .iter()
            .map(|h| Host::new(self.inner.clone(), h.id, h.name.clone(), h.netns.clone()))
            .collect()
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<Host> {
        self.hosts().into_iter().find(|h| h.name() == name)
    }

    /// All links, in creation order (link `k` is `links()[k]`).
    pub fn links(&self) -> Vec<Link> {
        let hosts = self.hosts();
        let st = self.inner.state();
        let net = self.inner.v6_net;
        st.links
            .iter()
            .enumerate()
            .filter_map(|(k, rec)| {
                let end = |i: usize| -> Option<LinkEnd> {
                    let (id, dev) = rec.ends.get(i)?;
                    Some(LinkEnd {
                        host: hosts.iter().find(|h| h.id() == *id)?.clone(),
                        dev: dev.clone(),
                        v6: addressing::host_v6(net, k, *id),
                        v4: addressing::host_v4(k, *id)?,
                    })
                };
                Some(Link::new(self.inner.clone(), k, [end(0)?, end(1)?]))
            })
            .collect()
    }

    /// The name under which `host` resolves (in every host's hosts file) to all of its
    /// addresses. Same as [`Host::name`].
    pub fn hosts_name(&self, host: &Host) -> String {
        host.name().to_owned()
    }

    /// Adds a name resolving to `addrs` to every host's hosts file (e.g. a HIT or a
    /// service alias). Later calls with the same name add more addresses.
    pub fn add_name(&self, name: &str, addrs: &[IpAddr]) -> Result<()> {
        self.inner.check_open()?;
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(LabError::InvalidName(name.to_owned()));
        }
        let mut st = self.inner.state();
        st.names.push((name.to_owned(), addrs.to_vec()));
        write_etc_files(&self.inner, &st)
    }

    /// Writes `/etc/netns/<ns>/resolv.conf` for every host (present and future) naming
    /// these DNS servers, e.g. a dnsmasq running in one of the hosts. An empty list removes
    /// the files again (then processes see the machine's resolv.conf).
    pub fn set_nameservers(&self, servers: &[IpAddr]) -> Result<()> {
        self.inner.check_open()?;
        let mut st = self.inner.state();
        st.nameservers = servers.to_vec();
        write_etc_files(&self.inner, &st)
    }

    /// Every fault injected so far, in order, with its timestamps.
    pub fn fault_log(&self) -> Vec<FaultEvent> {
        self.inner.state().faults.clone()
    }

    /// Waits until every link carries TCP in both families and both directions
    /// (see [`Link::wait_usable`]).
    pub fn wait_usable(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for link in self.links() {
            link.wait_usable(deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Tears the lab down now and reports the first error (dropping does the same but can
    /// only log errors). Host and link handles fail with [`LabError::Closed`] afterwards.
    pub fn close(self) -> Result<()> {
        self.inner.shutdown()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.inner.shutdown() {
            tracing::warn!("netlab: cleanup of {} incomplete: {e}", self.inner.prefix);
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=12).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::InvalidName(name.to_owned()))
    }
}

/// Interface names: `l<k>-<peer>`, at most 15 characters (IFNAMSIZ - 1).
fn iface_name(k: usize, peer: &str) -> String {
    let mut s = format!("l{k}-{peer}");
    s.truncate(15);
    s
}

/// How long [`Lab::link`] waits for the kernel to report a new link operational.
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until `dev` reports operational state UP. Until the kernel's link watch has
/// processed the carrier change, the device transmits through a no-op qdisc that discards
/// packets; a neighbour solicitation or ARP request lost that way is only retried after a
/// second, so traffic sent right after creating a link would stall for ~1 s.
pub(crate) fn wait_oper_up(netns: &str, dev: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = tools::ip(["-n", netns, "-o", "link", "show", "dev", dev])?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["state", "UP"])
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("{dev} in {netns} to become operational"),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `dev` is administratively up (the `UP` flag in `<...>`).
pub(crate) fn admin_up(netns: &str, dev: &str) -> Result<bool> {
    let out = tools::ip(["-n", netns, "-o", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP")))
}

fn create_netns(name: &str) -> Result<()> {
    // The very first `ip netns add` on a machine sets up /run/netns as a shared mount;
    // parallel first calls can race on that, so retry once.
    match tools::ip(["netns", "add", name]) {
        Ok(_) => Ok(()),
        Err(_) if !netns_path(name).exists() => {
            std::thread::sleep(Duration::from_millis(50));
            tools::ip(["netns", "add", name]).map(drop)
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn delete_netns(name: &str) -> Result<()> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    tools::ip(["netns", "delete", name]).map(drop)
}

/// Pids (other than ours) of processes whose network namespace is the named one.
pub(crate) fn netns_pids(name: &str) -> Vec<Pid> {
    let Ok(target) = fs::metadata(netns_path(name)) else {
        return Vec::new();
    };
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// Waits (at most [`ENTER_TIMEOUT`]) until process `pid`, started as
/// `ip netns exec <name> …`, is inside the namespace or has ended, so that
/// a lab closed right after a spawn finds it there: `ip` opens the
/// namespace and enters it some time after the fork, and a process that
/// entered only after [`kill_netns_processes`] looked would outlive the lab
/// in a namespace nobody can see (seen under load in CI).
pub(crate) fn wait_entered(pid: u32, name: &str) {
    let Ok(target) = fs::metadata(netns_path(name)) else {
        return;
    };
    let deadline = Instant::now() + ENTER_TIMEOUT;
    while Instant::now() < deadline {
        // Gone, a zombie (no namespace links), or inside.
        match fs::metadata(format!("/proc/{pid}/ns/net")) {
            Err(_) => return,
            Ok(m) if m.dev() == target.dev() && m.ino() == target.ino() => return,
            Ok(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    tracing::warn!("netlab: process {pid} did not enter {name} within {ENTER_TIMEOUT:?}");
}

/// How long a spawn waits for its process to enter the host's namespace.
const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// SIGTERM everything in the namespace, give it a moment, then SIGKILL what is left.
pub(crate) fn kill_netns_processes(name: &str) {
    let pids = netns_pids(name);
    if pids.is_empty() {
        return;
    }
    for &p in &pids {
        let _ = kill(p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        if netns_pids(name).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in netns_pids(name) {
        match kill(p, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!("netlab: cannot kill {p} in {name}: {e}"),
        }
    }
}

/// All names resolving to `host`'s addresses, one line per address:
/// `addr <name> <name>-l<k>`.
fn render_hosts(st: &LabState, prefix: &str, v6_net: u16) -> String {
    let mut s = format!(
        "# written by netlab for lab {prefix}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    for h in &st.hosts {
        let mut v4_lines = String::new();
        for (k, l) in st.links.iter().enumerate() {
            if !l.ends.iter().any(|(id, _)| *id == h.id) {
                continue;
            }
            let v6 = addressing::host_v6(v6_net, k, h.id);
            let _ = writeln!(s, "{v6}\t{} {}-l{k}", h.name, h.name);
            if let Some(v4) = addressing::host_v4(k, h.id) {
                let _ = writeln!(v4_lines, "{v4}\t{} {}-l{k}", h.name, h.name);
            }
        }
        s.push_str(&v4_lines);
    }
    for (name, addrs) in &st.names {
        for a in addrs {
            let _ = writeln!(s, "{a}\t{name}");
        }
    }
    s
}

fn write_atomic(path: &Path, content: &str) -> Result<()> {
    let tmp = path.with_extension("netlab-tmp");
    fs::write(&tmp, content).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))
}

/// Rewrites the hosts (and resolv.conf) files of all hosts from the state.
fn write_etc_files(inner: &LabInner, st: &LabState) -> Result<()> {
    let hosts = render_hosts(st, &inner.prefix, inner.v6_net);
    let resolv = (!st.nameservers.is_empty()).then(|| {
        let mut r = format!("# written by netlab for lab {}\n", inner.prefix);
        for ns in &st.nameservers {
            let _ = writeln!(r, "nameserver {ns}");
        }
        r.push_str("options timeout:1 attempts:2\n");
        r
    });
    for h in &st.hosts {
        let dir = Path::new(ETC_NETNS).join(&h.netns);
        write_atomic(&dir.join("hosts"), &hosts)?;
        let rc = dir.join("resolv.conf");
        match &resolv {
            Some(r) => write_atomic(&rc, r)?,
            None if rc.exists() => {
                fs::remove_file(&rc).map_err(io_err(format!("removing {}", rc.display())))?
            }
            None => {}
        }
    }
    Ok(())
}
