//! Name and service resolution for `nconnect(host, service)`.
//!
//! [`Resolver`] turns a host name and a service into **all** socket addresses
//! of the peer, both families, so that address selection
//! ([`crate::addrsel`]) can pair every destination with every suitable local
//! source and the driver can fall back to other pairs when a path fails.
//!
//! # Resolution order
//!
//! 1. **Literal address**: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`,
//!    `fe80::1%eth0` / `fe80::1%3` (zone resolved to an interface index).
//!    IPv4-mapped IPv6 literals are folded to IPv4.
//! 2. **Hosts file** ([`ResolverConfig::hosts_path`], default `/etc/hosts`):
//!    every matching line, both families, in file order. If the hosts file has
//!    at least one address for the name, DNS is **not** consulted (like
//!    nsswitch `hosts: files dns`). Entries whose zone names an unknown
//!    interface are dropped. A missing hosts file counts as empty.
//! 3. **DNS**: A and AAAA queries are sent in parallel with hickory-resolver.
//!    Name servers, search domains, `ndots`, timeout and attempts come from the
//!    resolv.conf file ([`DnsConfig::ResolvConf`], default `/etc/resolv.conf`)
//!    or from an explicit [`DnsConfig::Servers`] list (with ports, so tests can
//!    use a server on a high port). hickory's own hosts-file handling is
//!    disabled; the hosts file is handled in step 2 with the configured path.
//!    Results: AAAA answers first, then A answers (address selection reorders
//!    them anyway). If one family fails and the other has answers, the answers
//!    are returned.
//!
//! Network-namespace note: a thread that only called `setns(2)` does not see
//! the bind mounts `ip netns exec` sets up, so it still reads the host's
//! `/etc/hosts`. Use [`ResolverConfig::for_netns`] (hosts from
//! `/etc/netns/<ns>/hosts`, resolv.conf from `/etc/netns/<ns>/resolv.conf` if
//! it exists) in such threads.
//!
//! # Services
//!
//! A decimal port (`"443"`), the empty string (port 0), or a name looked up in
//! the services file ([`ResolverConfig::services_path`], default
//! `/etc/services`) for protocol `tcp`.
//!
//! # Blocking and async
//!
//! [`Resolver::resolve_async`] is the async API; it needs a Tokio runtime with
//! the time and IO drivers enabled. [`Resolver::resolve`] is the blocking API.
//! Literal and hosts-file answers are computed on the calling thread without
//! any runtime. DNS queries of the blocking API run on a small process-wide
//! Tokio runtime (one worker thread named `namesocket-dns`, created on first
//! use); the caller waits on a channel and never calls `block_on`, so the
//! blocking API may be called from **inside** a Tokio runtime too (it blocks
//! that worker thread for the duration of the lookup, like any blocking call:
//! prefer `resolve_async` or `spawn_blocking` there).
//!
//! A hickory resolver is built per lookup (no cross-lookup cache): nconnect
//! resolves rarely, and a resolver bound to one runtime must not outlive it.
//!
//! # Errors
//!
//! [`ResolveError`]; [`ResolveError::errno`] gives a glibc `EAI_*` code and
//! [`ResolveError::os_errno`] a plain `errno` value for C callers.

mod hosts;
mod services;

pub use hosts::{HostsEntry, HostsMatch, lookup_hosts, parse_address_field, parse_hosts};
pub use services::{ServiceEntry, lookup_service, parse_services};

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig,
    ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RecordType};

/// Default hosts file.
pub const DEFAULT_HOSTS_PATH: &str = "/etc/hosts";
/// Default resolv.conf.
pub const DEFAULT_RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// Default services file.
pub const DEFAULT_SERVICES_PATH: &str = "/etc/services";
/// Default bound on one whole resolution (all DNS queries, retries, search
/// domains).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of name/service resolution.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name does not exist (hosts file has no entry and DNS says NXDOMAIN,
    /// or no DNS is configured).
    #[error("name not found: {0}")]
    NotFound(String),
    /// The name exists in DNS but has no A or AAAA record.
    #[error("name has no addresses: {0}")]
    NoAddresses(String),
    /// DNS did not answer in time.
    #[error("name resolution timed out: {0}")]
    Timeout(String),
    /// The service is neither a port number nor a known service name.
    #[error("unknown service: {0}")]
    BadService(String),
    /// The host string is not a valid name or address (empty, bad zone, …).
    #[error("invalid host name: {0}")]
    InvalidName(String),
    /// A DNS failure that may be temporary (SERVFAIL, REFUSED, connection
    /// errors).
    #[error("DNS failure for {name}: {detail}")]
    Dns {
        /// The queried name.
        name: String,
        /// Description from the DNS layer.
        detail: String,
    },
    /// Local IO error (reading configuration files, creating the runtime).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl ResolveError {
    /// glibc `getaddrinfo` error code for this error:
    ///
    /// | error | code |
    /// |---|---|
    /// | `NotFound`, `InvalidName` | `EAI_NONAME` (-2) |
    /// | `NoAddresses` | `EAI_NODATA` (-5) |
    /// | `Timeout`, `Dns` | `EAI_AGAIN` (-3) |
    /// | `BadService` | `EAI_SERVICE` (-8) |
    /// | `Io` | `EAI_SYSTEM` (-11), real errno in [`Self::os_errno`] |
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound(_) | Self::InvalidName(_) => libc::EAI_NONAME,
            Self::NoAddresses(_) => libc::EAI_NODATA,
            Self::Timeout(_) | Self::Dns { .. } => libc::EAI_AGAIN,
            Self::BadService(_) => libc::EAI_SERVICE,
            Self::Io(_) => libc::EAI_SYSTEM,
        }
    }

    /// Plain `errno` value for callers that can only report errno:
    /// `NotFound` → `ENOENT`, `NoAddresses` → `ENODATA`, `Timeout` →
    /// `ETIMEDOUT`, `Dns` → `EAGAIN`, `BadService`/`InvalidName` → `EINVAL`,
    /// `Io` → its OS error (or `EIO`).
    pub fn os_errno(&self) -> i32 {
        match self {
            Self::NotFound(_) => libc::ENOENT,
            Self::NoAddresses(_) => libc::ENODATA,
            Self::Timeout(_) => libc::ETIMEDOUT,
            Self::Dns { .. } => libc::EAGAIN,
            Self::BadService(_) | Self::InvalidName(_) => libc::EINVAL,
            Self::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Where DNS configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsConfig {
    /// Do not use DNS (literal and hosts file only).
    Disabled,
    /// Read name servers, search list, ndots, timeout and attempts from a
    /// resolv.conf file. A missing file or one without `nameserver` lines
    /// means "no DNS": unknown names give [`ResolveError::NotFound`].
    ResolvConf(PathBuf),
    /// Explicit name servers (UDP, with TCP fallback on truncation), tried in
    /// the given order.
    Servers {
        /// Server socket addresses (port usually 53).
        servers: Vec<SocketAddr>,
        /// Search domains appended to names with fewer than `ndots` dots.
        search: Vec<String>,
        /// resolv.conf `ndots` (1 is the usual default).
        ndots: usize,
    },
}

/// Configuration of a [`Resolver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Hosts file; `None` disables the hosts-file step.
    pub hosts_path: Option<PathBuf>,
    /// Services file for named services.
    pub services_path: PathBuf,
    /// DNS configuration.
    pub dns: DnsConfig,
    /// Per-query timeout; `None` = resolv.conf value (or hickory's 5 s).
    pub query_timeout: Option<Duration>,
    /// Query attempts; `None` = resolv.conf value (or hickory's 2).
    pub attempts: Option<usize>,
    /// Bound on the whole resolution; exceeding it gives
    /// [`ResolveError::Timeout`].
    pub total_timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            hosts_path: Some(PathBuf::from(DEFAULT_HOSTS_PATH)),
            services_path: PathBuf::from(DEFAULT_SERVICES_PATH),
            dns: DnsConfig::ResolvConf(PathBuf::from(DEFAULT_RESOLV_CONF_PATH)),
            query_timeout: None,
            attempts: None,
            total_timeout: DEFAULT_TOTAL_TIMEOUT,
        }
    }
}

impl ResolverConfig {
    /// System defaults (`/etc/hosts`, `/etc/resolv.conf`, `/etc/services`).
    pub fn system() -> Self {
        Self::default()
    }

    /// Configuration for a thread running inside network namespace `ns`
    /// (entered with `setns`): hosts from `/etc/netns/<ns>/hosts`, resolv.conf
    /// from `/etc/netns/<ns>/resolv.conf` when that file exists, otherwise
    /// `/etc/resolv.conf`.
    pub fn for_netns(ns: &str) -> Self {
        let dir = Path::new("/etc/netns").join(ns);
        let resolv = dir.join("resolv.conf");
        let resolv = if resolv.exists() {
            resolv
        } else {
            PathBuf::from(DEFAULT_RESOLV_CONF_PATH)
        };
        Self {
            hosts_path: Some(dir.join("hosts")),
            dns: DnsConfig::ResolvConf(resolv),
            ..Self::default()
        }
    }

    /// Use this hosts file.
    pub fn with_hosts_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.hosts_path = Some(path.into());
        self
    }

    /// Do not read any hosts file.
    pub fn without_hosts_file(mut self) -> Self {
        self.hosts_path = None;
        self
    }

    /// Use this services file.
    pub fn with_services_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.services_path = path.into();
        self
    }

    /// Read DNS settings from this resolv.conf.
    pub fn with_resolv_conf(mut self, path: impl Into<PathBuf>) -> Self {
        self.dns = DnsConfig::ResolvConf(path.into());
        self
    }

    /// Use these name servers (no search domains, ndots 1).
    pub fn with_name_servers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.dns = DnsConfig::Servers {
            servers,
            search: Vec::new(),
            ndots: 1,
        };
        self
    }

    /// Disable DNS.
    pub fn without_dns(mut self) -> Self {
        self.dns = DnsConfig::Disabled;
        self
    }

    /// Per-query timeout and attempts.
    pub fn with_query_timeout(mut self, timeout: Duration, attempts: usize) -> Self {
        self.query_timeout = Some(timeout);
        self.attempts = Some(attempts);
        self
    }

    /// Bound on the whole resolution.
    pub fn with_total_timeout(mut self, timeout: Duration) -> Self {
        self.total_timeout = timeout;
        self
    }
}

/// Where the addresses of a [`Resolution`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The host string was an address literal.
    Literal,
    /// The hosts file.
    HostsFile,
    /// DNS.
    Dns,
}

/// Result of resolving `(host, service)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The host string as given.
    pub host: String,
    /// The resolved port.
    pub port: u16,
    /// All addresses with the port set (IPv6 zones as scope ids). Never empty.
    pub addrs: Vec<SocketAddr>,
    /// Source of the addresses.
    pub origin: Origin,
}

/// Host and service resolver. Cheap to clone; holds only configuration.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    config: ResolverConfig,
}

/// An IP address plus IPv6 scope id (0 when none).
type ScopedIp = (IpAddr, u32);

fn to_socket_addr((ip, scope): ScopedIp, port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)),
    }
}

/// Turn a zone (`eth0`, `3`) into an interface index.
fn zone_to_index(zone: &str) -> Option<u32> {
    if let Ok(n) = zone.parse::<u32>() {
        return Some(n);
    }
    nix::net::if_::if_nametoindex(zone).ok()
}

/// Parse an address literal: plain, bracketed, with `%zone`.
///
/// Returns `Ok(None)` when `host` is not a literal, `Err` when it looks like a
/// scoped literal whose zone is unknown.
pub fn parse_literal(host: &str) -> Result<Option<(IpAddr, u32)>, ResolveError> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let Some((ip, zone)) = parse_address_field(inner) else {
        return Ok(None);
    };
    let scope = match zone {
        None => 0,
        Some(z) => zone_to_index(&z)
            .ok_or_else(|| ResolveError::InvalidName(format!("{host}: unknown zone {z}")))?,
    };
    Ok(Some((ip, scope)))
}

fn read_optional(path: &Path) -> Result<Option<String>, ResolveError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ResolveError::Io(e)),
    }
}

fn push_unique(out: &mut Vec<ScopedIp>, item: ScopedIp) {
    if !out.contains(&item) {
        out.push(item);
    }
}

/// Outcome of one DNS query family.
enum FamilyOutcome {
    Addrs(Vec<IpAddr>),
    NxDomain,
    NoData,
    Timeout,
    Failed(String),
}

fn classify(result: Result<hickory_resolver::lookup::Lookup, NetError>) -> FamilyOutcome {
    match result {
        Ok(lookup) => {
            let addrs: Vec<IpAddr> = lookup
                .answers()
                .iter()
                .filter_map(|r| r.data.ip_addr())
                .collect();
            if addrs.is_empty() {
                FamilyOutcome::NoData
            } else {
                FamilyOutcome::Addrs(addrs)
            }
        }
        Err(e) if e.is_nx_domain() => FamilyOutcome::NxDomain,
        Err(e) if e.is_no_records_found() => FamilyOutcome::NoData,
        Err(NetError::Timeout) => FamilyOutcome::Timeout,
        Err(e) => FamilyOutcome::Failed(e.to_string()),
    }
}

/// Build the hickory configuration, or `None` when DNS is not configured.
fn hickory_settings(
    config: &ResolverConfig,
) -> Result<Option<(HickoryConfig, ResolverOpts)>, ResolveError> {
    let (hc, mut opts) = match &config.dns {
        DnsConfig::Disabled => return Ok(None),
        DnsConfig::ResolvConf(path) => {
            let Some(text) = read_optional(path)? else {
                return Ok(None);
            };
            match hickory_resolver::system_conf::parse_resolv_conf(text.as_bytes()) {
                Ok(parsed) => parsed,
                // hickory reports "no nameservers" (and unparsable search
                // domains) this way; both mean no usable DNS.
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "resolv.conf unusable");
                    return Ok(None);
                }
            }
        }
        DnsConfig::Servers {
            servers,
            search,
            ndots,
        } => {
            if servers.is_empty() {
                return Ok(None);
            }
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut names = Vec::new();
            for d in search {
                let n = Name::from_str_relaxed(d).map_err(|e| {
                    ResolveError::Io(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("bad search domain {d}: {e}"),
                    ))
                })?;
                names.push(n);
            }
            let hc = HickoryConfig::from_parts(None, names, name_servers);
            let mut opts = ResolverOpts::default();
            opts.ndots = *ndots;
            (hc, opts)
        }
    };
    opts.use_hosts_file = ResolveHosts::Never;
    opts.server_ordering_strategy = ServerOrderingStrategy::UserProvidedOrder;
    opts.cache_size = 64;
    if let Some(t) = config.query_timeout {
        opts.timeout = t;
    }
    if let Some(a) = config.attempts {
        opts.attempts = a;
    }
    Ok(Some((hc, opts)))
}

/// A and AAAA in parallel. Must run inside a Tokio runtime.
async fn dns_lookup(config: ResolverConfig, name: String) -> Result<Vec<IpAddr>, ResolveError> {
    let Some((hc, opts)) = hickory_settings(&config)? else {
        return Err(ResolveError::NotFound(name));
    };
    let resolver =
        hickory_resolver::Resolver::builder_with_config(hc, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError::Io(io::Error::other(e.to_string())))?;
    let qname = Name::from_str_relaxed(&name)
        .map_err(|e| ResolveError::InvalidName(format!("{name}: {e}")))?;
    let both = async {
        tokio::join!(
            resolver.lookup(qname.clone(), RecordType::AAAA),
            resolver.lookup(qname.clone(), RecordType::A)
        )
    };
    let (v6, v4) = match tokio::time::timeout(config.total_timeout, both).await {
        Ok(r) => r,
        Err(_) => return Err(ResolveError::Timeout(name)),
    };
    combine(name, classify(v6), classify(v4))
}

fn combine(
    name: String,
    v6: FamilyOutcome,
    v4: FamilyOutcome,
) -> Result<Vec<IpAddr>, ResolveError> {
    use FamilyOutcome as F;
    let mut out = Vec::new();
    for o in [&v6, &v4] {
        if let F::Addrs(a) = o {
            for ip in a {
                let ip = ip.to_canonical();
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    match (v6, v4) {
        (F::Timeout, _) | (_, F::Timeout) => Err(ResolveError::Timeout(name)),
        (F::Failed(d), _) | (_, F::Failed(d)) => Err(ResolveError::Dns { name, detail: d }),
        (F::NxDomain, F::NxDomain) => Err(ResolveError::NotFound(name)),
        _ => Err(ResolveError::NoAddresses(name)),
    }
}

fn shared_runtime() -> Result<&'static tokio::runtime::Runtime, ResolveError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("namesocket-dns")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    rt.as_ref()
        .map_err(|e| ResolveError::Io(io::Error::other(format!("resolver runtime: {e}"))))
}

/// Run a future on the shared runtime and wait for it without `block_on`.
fn run_blocking<T: Send + 'static>(
    fut: impl Future<Output = Result<T, ResolveError>> + Send + 'static,
) -> Result<T, ResolveError> {
    let rt = shared_runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        // The receiver only disappears if the caller thread died.
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| ResolveError::Io(io::Error::other("resolver task ended without a result")))?
}

/// First stage: literal or hosts file, or "needs DNS".
enum Local {
    Done(Vec<ScopedIp>, Origin),
    NeedDns(String),
}

impl Resolver {
    /// Resolver with this configuration.
    pub fn new(config: ResolverConfig) -> Self {
        Self { config }
    }

    /// Resolver with the system configuration.
    pub fn system() -> Self {
        Self::default()
    }

    /// The configuration.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Resolve a service string to a TCP port (see module docs).
    pub fn service_port(&self, service: &str) -> Result<u16, ResolveError> {
        let s = service.trim();
        if s.is_empty() {
            return Ok(0);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u16>()
                .map_err(|_| ResolveError::BadService(service.to_string()));
        }
        let text = read_optional(&self.config.services_path)?
            .ok_or_else(|| ResolveError::BadService(service.to_string()))?;
        lookup_service(&parse_services(&text), s, "tcp")
            .ok_or_else(|| ResolveError::BadService(service.to_string()))
    }

    /// Addresses of `host` from the hosts file only (zones resolved).
    pub fn hosts_file_lookup(&self, host: &str) -> Result<Vec<(IpAddr, u32)>, ResolveError> {
        let Some(path) = &self.config.hosts_path else {
            return Ok(Vec::new());
        };
        let Some(text) = read_optional(path)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for m in lookup_hosts(&parse_hosts(&text), host) {
            let scope = match &m.zone {
                None => 0,
                Some(z) => match zone_to_index(z) {
                    Some(i) => i,
                    None => {
                        tracing::debug!(%host, zone = %z, "hosts entry with unknown zone skipped");
                        continue;
                    }
                },
            };
            push_unique(&mut out, (m.addr, scope));
        }
        Ok(out)
    }

    fn local_stage(&self, host: &str) -> Result<Local, ResolveError> {
        let host = host.trim();
        if host.is_empty() {
            return Err(ResolveError::InvalidName(String::new()));
        }
        if let Some(lit) = parse_literal(host)? {
            return Ok(Local::Done(vec![lit], Origin::Literal));
        }
        if host.contains(|c: char| c.is_whitespace() || c == '%' || c == '/') {
            return Err(ResolveError::InvalidName(host.to_string()));
        }
        let from_hosts = self.hosts_file_lookup(host)?;
        if !from_hosts.is_empty() {
            return Ok(Local::Done(from_hosts, Origin::HostsFile));
        }
        Ok(Local::NeedDns(host.to_string()))
    }

    fn finish(host: &str, port: u16, ips: Vec<ScopedIp>, origin: Origin) -> Resolution {
        Resolution {
            host: host.to_string(),
            port,
            addrs: ips.into_iter().map(|i| to_socket_addr(i, port)).collect(),
            origin,
        }
    }

    /// Resolve `(host, service)` asynchronously (needs a Tokio runtime with
    /// time and IO enabled when DNS is used).
    pub async fn resolve_async(
        &self,
        host: &str,
        service: &str,
    ) -> Result<Resolution, ResolveError> {
        let port = self.service_port(service)?;
        match self.local_stage(host)? {
            Local::Done(ips, origin) => Ok(Self::finish(host, port, ips, origin)),
            Local::NeedDns(name) => {
                let ips = dns_lookup(self.config.clone(), name).await?;
                let ips = ips.into_iter().map(|ip| (ip, 0)).collect();
                Ok(Self::finish(host, port, ips, Origin::Dns))
            }
        }
    }

    /// Resolve `(host, service)`, blocking the calling thread. Safe to call
    /// from inside a Tokio runtime (see module docs).
    pub fn resolve(&self, host: &str, service: &str) -> Result<Resolution, ResolveError> {
        let port = self.service_port(service)?;
        match self.local_stage(host)? {
            Local::Done(ips, origin) => Ok(Self::finish(host, port, ips, origin)),
            Local::NeedDns(name) => {
                let ips = run_blocking(dns_lookup(self.config.clone(), name))?;
                let ips = ips.into_iter().map(|ip| (ip, 0)).collect();
                Ok(Self::finish(host, port, ips, Origin::Dns))
            }
        }
    }
}

/// Convenience: `true` if `ip` is an IPv6 link-local unicast address.
pub(crate) fn is_v6_link_local(ip: &Ipv6Addr) -> bool {
    (ip.segments()[0] & 0xffc0) == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(tag: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "nsresolve-unit-{}-{}-{tag}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn literal_forms() {
        let r = Resolver::new(ResolverConfig::default().without_hosts_file().without_dns());
        let a = r.resolve("192.0.2.1", "80").unwrap();
        assert_eq!(a.origin, Origin::Literal);
        assert_eq!(a.addrs, vec!["192.0.2.1:80".parse().unwrap()]);
        let b = r.resolve("[2001:db8::1]", "443").unwrap();
        assert_eq!(b.addrs, vec!["[2001:db8::1]:443".parse().unwrap()]);
        let c = r.resolve("fe80::1%1", "1").unwrap();
        match c.addrs[0] {
            SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 1),
            SocketAddr::V4(_) => panic!("expected v6"),
        }
        let lo = r.resolve("fe80::1%lo", "1").unwrap();
        match lo.addrs[0] {
            SocketAddr::V6(v6) => assert_ne!(v6.scope_id(), 0),
            SocketAddr::V4(_) => panic!("expected v6"),
        }
        let m = r.resolve("::ffff:192.0.2.5", "7").unwrap();
        assert_eq!(m.addrs, vec!["192.0.2.5:7".parse().unwrap()]);
        assert!(matches!(
            r.resolve("fe80::1%nosuchif0", "1"),
            Err(ResolveError::InvalidName(_))
        ));
        assert!(matches!(
            r.resolve("", "1"),
            Err(ResolveError::InvalidName(_))
        ));
    }

    #[test]
    fn no_dns_gives_not_found() {
        let r = Resolver::new(ResolverConfig::default().without_hosts_file().without_dns());
        let e = r.resolve("nothing.invalid", "1").unwrap_err();
        assert!(matches!(e, ResolveError::NotFound(_)));
        assert_eq!(e.errno(), libc::EAI_NONAME);
        let missing = ResolverConfig::default()
            .without_hosts_file()
            .with_resolv_conf("/nonexistent/resolv.conf");
        let e = Resolver::new(missing)
            .resolve("x.invalid", "1")
            .unwrap_err();
        assert!(matches!(e, ResolveError::NotFound(_)));
        let empty = tmpfile("resolv-empty", "# nothing here\nsearch lab\n");
        let cfg = ResolverConfig::default()
            .without_hosts_file()
            .with_resolv_conf(&empty);
        let e = Resolver::new(cfg).resolve("x.invalid", "1").unwrap_err();
        assert!(matches!(e, ResolveError::NotFound(_)));
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn services_numeric_named_and_bad() {
        let f = tmpfile("services", "ssh 22/tcp\nhttp 80/tcp www\nsyslog 514/udp\n");
        let r = Resolver::new(ResolverConfig::default().with_services_file(&f));
        assert_eq!(r.service_port("8080").unwrap(), 8080);
        assert_eq!(r.service_port("").unwrap(), 0);
        assert_eq!(r.service_port("www").unwrap(), 80);
        assert_eq!(r.service_port("ssh").unwrap(), 22);
        let e = r.service_port("syslog").unwrap_err();
        assert!(matches!(e, ResolveError::BadService(_)));
        assert_eq!(e.errno(), libc::EAI_SERVICE);
        assert!(matches!(
            r.service_port("70000"),
            Err(ResolveError::BadService(_))
        ));
        assert!(matches!(
            r.service_port("-1"),
            Err(ResolveError::BadService(_))
        ));
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn hosts_stage_returns_all_and_skips_dns() {
        let f = tmpfile(
            "hosts",
            "127.0.0.2 multi.lab\n::1 multi.lab m\n127.0.0.3 multi.lab\nfe80::7%nosuchif9 multi.lab\n",
        );
        // DNS points at a closed port: must not be consulted.
        let cfg = ResolverConfig::default()
            .with_hosts_file(&f)
            .with_name_servers(vec!["127.0.0.1:9".parse().unwrap()]);
        let r = Resolver::new(cfg);
        let res = r.resolve("MULTI.lab", "99").unwrap();
        assert_eq!(res.origin, Origin::HostsFile);
        let expect: Vec<SocketAddr> = vec![
            "127.0.0.2:99".parse().unwrap(),
            "[::1]:99".parse().unwrap(),
            "127.0.0.3:99".parse().unwrap(),
        ];
        assert_eq!(res.addrs, expect);
        let _ = std::fs::remove_file(f);
    }

    #[test]
    fn combine_rules() {
        use FamilyOutcome as F;
        let n = || "n".to_string();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            combine(n(), F::Timeout, F::Addrs(vec![v4])).unwrap(),
            vec![v4]
        );
        assert!(matches!(
            combine(n(), F::NxDomain, F::NxDomain),
            Err(ResolveError::NotFound(_))
        ));
        assert!(matches!(
            combine(n(), F::NoData, F::NxDomain),
            Err(ResolveError::NoAddresses(_))
        ));
        assert!(matches!(
            combine(n(), F::NoData, F::Timeout),
            Err(ResolveError::Timeout(_))
        ));
        let e = combine(n(), F::Failed("servfail".into()), F::NoData).unwrap_err();
        assert_eq!(e.errno(), libc::EAI_AGAIN);
        assert_eq!(e.os_errno(), libc::EAGAIN);
    }

    #[test]
    fn link_local_helper() {
        assert!(is_v6_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_v6_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_v6_link_local(&"fec0::1".parse().unwrap()));
    }
}
