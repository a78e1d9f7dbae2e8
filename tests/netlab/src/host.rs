//! Hosts: one network namespace each.

use std::ffi::OsStr;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::addressing;
use crate::error::{LabError, Result, io_err};
use crate::lab::{ETC_NETNS, LabInner};
use crate::netns::{NetnsGuard, enter_file, netns_path, open_netns};
use crate::process::Process;
use crate::tools;

/// A host of a [`crate::Lab`]: a network namespace. Cheap to clone; all clones refer to
/// the same namespace. After the lab is closed every operation fails with
/// [`LabError::Closed`].
#[derive(Clone)]
pub struct Host {
    lab: Arc<LabInner>,
    id: u8,
    name: String,
    netns: String,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("netns", &self.netns)
            .finish()
    }
}

impl PartialEq for Host {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.lab, &other.lab) && self.id == other.id
    }
}
impl Eq for Host {}

impl Host {
    pub(crate) fn new(lab: Arc<LabInner>, id: u8, name: String, netns: String) -> Self {
        Self {
            lab,
            id,
            name,
            netns,
        }
    }

    pub(crate) fn lab(&self) -> &Arc<LabInner> {
        &self.lab
    }

    /// The host's name, as given to [`crate::Lab::add_host`]; in every host's hosts file it
    /// resolves to all of this host's addresses.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's id (1-based, creation order): its IPv6 interface identifier `::<id>` and
    /// the last nibble of its IPv4 addresses on every link.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The network namespace's name (as listed by `ip netns list`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `/run/netns/<ns>`, the file to `setns` into.
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    /// Opens the namespace file (e.g. to pass to other code that calls `setns`).
    pub fn netns_file(&self) -> Result<File> {
        self.lab.check_open()?;
        open_netns(&self.netns)
    }

    /// `/etc/netns/<ns>/hosts`: the hosts file `ip netns exec` bind-mounts over
    /// `/etc/hosts`; in-process resolvers can read it directly.
    pub fn hosts_file(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.netns).join("hosts")
    }

    /// `/etc/netns/<ns>/resolv.conf` (exists only after [`crate::Lab::set_nameservers`]).
    pub fn resolv_conf_file(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.netns).join("resolv.conf")
    }

    /// The host's IPv6 interface identifier as an address (`::<id>`).
    pub fn interface_id(&self) -> std::net::Ipv6Addr {
        std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, u16::from(self.id))
    }

    /// All addresses of the host: per link (in link order) the IPv6 then the IPv4 address.
    pub fn addrs(&self) -> Vec<IpAddr> {
        let st = self.lab.state();
        let mut out = Vec::new();
        for (k, l) in st.links.iter().enumerate() {
            if l.ends.iter().any(|(id, _)| *id == self.id) {
                out.push(IpAddr::V6(addressing::host_v6(self.lab.v6_net, k, self.id)));
                if let Some(v4) = addressing::host_v4(k, self.id) {
                    out.push(IpAddr::V4(v4));
                }
            }
        }
        out
    }

    /// Sets a sysctl inside this host, e.g. `host.sysctl("net.ipv4.tcp_retries2", "5")`.
    /// Keys use dots (`net.ipv6.conf.all.forwarding`) or slashes relative to `/proc/sys`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        let value = value.to_owned();
        self.run(move || {
            std::fs::write(&path, value.as_bytes())
                .map_err(io_err(format!("writing {}", path.display())))
        })?
    }

    /// Adds a host route (`/128` or `/32`) to `dst` through the router
    /// `via` on device `dev` (for paths through a router host, which needs
    /// `net.ipv6.conf.all.forwarding` / `net.ipv4.ip_forward`).
    pub fn route_via(&self, dst: IpAddr, via: IpAddr, dev: &str) -> Result<()> {
        let (fam, len) = if dst.is_ipv6() {
            ("-6", 128)
        } else {
            ("-4", 32)
        };
        self.exec_ok([
            "ip",
            fam,
            "route",
            "add",
            &format!("{dst}/{len}"),
            "via",
            &via.to_string(),
            "dev",
            dev,
        ])
        .map(drop)
    }

    /// Reads a sysctl inside this host (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        self.run(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(io_err(format!("reading {}", path.display())))
        })?
    }

    /// A [`Command`] that runs `program` inside this host via `ip netns exec` (so it sees
    /// this host's `/etc/hosts`, resolv.conf and `/sys`). Add arguments and run it yourself,
    /// or hand it to [`Host::spawn_command`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }

    /// Runs `args` (program first) inside the host and collects its output; a non-zero
    /// exit is *not* an error here (inspect `status`).
    pub fn exec<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.lab.check_open()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).args(args);
        let text = tools::describe(&c);
        c.stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("running `{text}`")))
    }

    /// Like [`Host::exec`] but fails with [`LabError::Command`] on a non-zero exit and
    /// returns stdout as text.
    pub fn exec_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.lab.check_open()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).args(args);
        let out = tools::run(&mut c, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `args` (program first) inside the host in the background. Stdout and stderr
    /// go to files in the lab's artifacts directory; the returned [`Process`] kills the
    /// program when dropped, and closing the lab kills whatever still runs in the host.
    /// When this returns the process is inside the host's namespace (or has already
    /// ended), so closing the lab right after finds it.
    pub fn spawn<I, S>(&self, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.lab.check_open()?;
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let prog = args
            .first()
            .and_then(|p| Path::new(p).file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let stem = format!("{}-{}-{prog}", self.name, self.lab.next_seq());
        let out_path = self.lab.dir.join(format!("{stem}.out"));
        let err_path = self.lab.dir.join(format!("{stem}.err"));
        let out =
            File::create(&out_path).map_err(io_err(format!("creating {}", out_path.display())))?;
        let err =
            File::create(&err_path).map_err(io_err(format!("creating {}", err_path.display())))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let text = tools::describe(&c);
        let child = c.spawn().map_err(io_err(format!("spawning `{text}`")))?;
        crate::lab::wait_entered(child.id(), &self.netns);
        Ok(Process::new(child, text, Some(out_path), Some(err_path)))
    }

    /// Starts a prepared command (normally from [`Host::command`]) with its own stdio
    /// settings; the returned [`Process`] kills it when dropped. Like [`Host::spawn`],
    /// a command from [`Host::command`] has entered the host when this returns.
    pub fn spawn_command(&self, mut cmd: Command) -> Result<Process> {
        self.lab.check_open()?;
        let text = tools::describe(&cmd);
        let ours = cmd.get_program() == "ip"
            && cmd
                .get_args()
                .take(3)
                .eq(["netns", "exec", self.netns.as_str()].map(OsStr::new));
        let child = cmd.spawn().map_err(io_err(format!("spawning `{text}`")))?;
        if ours {
            crate::lab::wait_entered(child.id(), &self.netns);
        }
        Ok(Process::new(child, text, None, None))
    }

    /// Runs `f` on a new thread that has entered this host's namespace and returns its
    /// value. Sockets created inside `f` belong to this host, also when used from other
    /// threads later. A panic in `f` is propagated to the caller.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.lab.check_open()?;
        let ns = open_netns(&self.netns)?;
        let what = self.netns.as_str();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("netlab-{}", self.name))
                .spawn_scoped(s, move || -> Result<T> {
                    enter_file(&ns, what)?;
                    Ok(f())
                })
                .map_err(io_err("spawning a namespace thread"))?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a background thread inside this host (e.g. a server loop) and returns
    /// its join handle once the thread is in the namespace.
    pub fn spawn_thread<F, T>(&self, f: F) -> Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.lab.check_open()?;
        let ns = open_netns(&self.netns)?;
        let what = self.netns.clone();
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let handle = std::thread::Builder::new()
            .name(format!("netlab-{}", self.name))
            .spawn(move || {
                let entered = enter_file(&ns, &what);
                let ok = entered.is_ok();
                let _ = tx.send(entered);
                if !ok {
                    // The caller received the error; never run `f` in the wrong namespace.
                    panic!("netlab: thread could not enter {what}");
                }
                f()
            })
            .map_err(io_err("spawning a namespace thread"))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(e)
            }
            Err(_) => Err(LabError::Io {
                context: "namespace thread died before entering".into(),
                source: std::io::Error::other("thread exited"),
            }),
        }
    }

    /// Moves the *calling thread* into this host until the guard is dropped.
    pub fn enter(&self) -> Result<NetnsGuard> {
        self.lab.check_open()?;
        NetnsGuard::enter(&self.netns)
    }

    /// Sends one ICMP echo request from this host to `dst` and waits up to `timeout` for
    /// the reply; returns the round-trip time. Implemented in-process with a raw socket,
    /// so no `ping` binary is needed.
    pub fn ping(&self, dst: IpAddr, timeout: Duration) -> Result<Duration> {
        self.run(move || crate::ping::ping(dst, timeout))?
    }

    /// Resolves `name` the way a program in this host does (`getent ahosts`, which honours
    /// the host's hosts file) and returns the distinct addresses in resolver order.
    pub fn resolve(&self, name: &str) -> Result<Vec<IpAddr>> {
        let out = self.exec_ok(["getent", "ahosts", name])?;
        let mut addrs = Vec::new();
        for line in out.lines() {
            if let Some(a) = line
                .split_whitespace()
                .next()
                .and_then(|w| w.parse::<IpAddr>().ok())
                && !addrs.contains(&a)
            {
                addrs.push(a);
            }
        }
        Ok(addrs)
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(LabError::InvalidName(key.to_owned()));
    }
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    Ok(Path::new("/proc/sys").join(rel))
}
