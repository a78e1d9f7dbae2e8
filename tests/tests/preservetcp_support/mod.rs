//! Shared helpers of the preservetcp lab tests: building and starting
//! `preservetcpd` inside lab hosts, test files and checksums.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use netlab::{Family, Host, Lab, Link, Process};

/// Builds (once per test process) and returns the daemon binary.
pub fn daemon_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test> -> target/<profile>/preservetcpd
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let target = profile_dir.parent().expect("target root").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-q", "-p", "preservetcp", "--bin", "preservetcpd"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if release {
            c.arg("--release");
        }
        let st = c.status().expect("running cargo build");
        assert!(st.success(), "building preservetcpd failed");
        let bin = profile_dir.join("preservetcpd");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// A running daemon in a host.
pub struct Daemon {
    pub proc: Process,
    pub control: PathBuf,
}

impl Daemon {
    /// Starts preservetcpd in `host` covering `ports`, waits for "ready".
    pub fn start(lab: &Lab, host: &Host, ports: &[u16]) -> Daemon {
        Self::start_with(lab, host, ports, &[])
    }

    /// [`Daemon::start`] with extra command line arguments.
    pub fn start_with(lab: &Lab, host: &Host, ports: &[u16], extra: &[&str]) -> Daemon {
        let control = lab
            .artifacts_dir()
            .join(format!("ptcpd-{}.sock", host.name()));
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let bin = daemon_bin();
        let mut args: Vec<String> = vec![
            bin.to_str().expect("utf-8 path").to_string(),
            "--ports".into(),
            ports.join(","),
            "--control".into(),
            control.to_str().expect("utf-8 path").to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let proc = host.spawn(args).expect("spawn preservetcpd");
        let t0 = Instant::now();
        while !proc.stdout_so_far().contains("ready") {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "preservetcpd did not start: {}",
                proc.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { proc, control }
    }

    pub fn request(&self, req: &preservetcp::control::Request) -> preservetcp::control::Response {
        preservetcp::control::request(&self.control, req).expect("control request")
    }

    pub fn connections(&self) -> Vec<preservetcp::control::ConnInfo> {
        self.request(&preservetcp::control::Request::List)
            .connections
            .expect("connections")
    }

    pub fn stat(&self, name: &str) -> u64 {
        let s = self
            .request(&preservetcp::control::Request::Stats)
            .stats
            .expect("stats");
        *s.get(name).unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// Asks the daemon to move connection `id` to the pair (`local`,
    /// `peer`) and checks that it agreed.
    pub fn move_to(&self, id: u64, local: std::net::Ipv6Addr, peer: std::net::Ipv6Addr) {
        let r = self.request(&preservetcp::control::Request::Move { id, local, peer });
        assert!(r.ok, "{:?}", r.error);
    }

    pub fn log(&self) -> String {
        self.proc.stderr_so_far()
    }

    /// Whether the handshake options are inserted by the tc BPF programs
    /// (the default) rather than through NFQUEUE (`--no-bpf`).
    pub fn bpf(&self) -> bool {
        self.stat("bpf") == 1
    }

    /// Ends the daemon with SIGTERM and checks that it exits cleanly (within
    /// `timeout`, through its clean-up); returns its output.
    pub fn terminate(self, timeout: Duration) -> netlab::ProcessOutput {
        self.proc
            .signal(nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        let out = self.proc.wait_timeout(timeout).expect("daemon exits");
        assert!(
            out.status.success(),
            "exit {:?}: {}",
            out.status,
            out.stderr
        );
        assert!(out.stderr.contains("SIGTERM: exiting"), "{}", out.stderr);
        out
    }

    /// SYNs that got PREFIX_SYN, by the engine (NFQUEUE) or the kernel.
    pub fn offers_sent(&self) -> u64 {
        self.stat("syn_offers")
            + if self.bpf() {
                self.stat("bpf_syn_offers")
            } else {
                0
            }
    }

    /// SYN+ACKs that got PREFIX_SYN + PREFIX_ACK, by the engine or the
    /// kernel.
    pub fn answers_sent(&self) -> u64 {
        self.stat("synack_answers")
            + if self.bpf() {
                self.stat("bpf_synack_answers")
            } else {
                0
            }
    }
}

/// Packets ever handed to an NFQUEUE in `host` (the `id sequence` column of
/// `/proc/net/netfilter/nfnetlink_queue`, summed over the bound queues).
pub fn nfqueue_queued(host: &Host) -> u64 {
    let table = host
        .exec_ok(["cat", "/proc/net/netfilter/nfnetlink_queue"])
        .expect("nfnetlink_queue");
    table
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 9, "nfnetlink_queue line {l:?}");
            f[7].parse::<u64>().expect("id sequence")
        })
        .sum()
}

/// The IPv6 packets (Ethernet payloads of type 0x86dd) of a classic pcap
/// file with Ethernet link type, as tcpdump writes them.
pub fn pcap_ipv6_packets(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("read pcap");
    let magic: [u8; 4] = data[..4].try_into().expect("pcap header");
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a classic pcap file: {}", path.display()),
    };
    let u32_at = |o: usize| {
        let b: [u8; 4] = data[o..o + 4].try_into().expect("u32");
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "Ethernet link type");
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(off + 8) as usize;
        let frame = &data[off + 16..(off + 16 + incl).min(data.len())];
        if frame.len() > 14 && frame[12..14] == [0x86, 0xdd] {
            out.push(frame[14..].to_vec());
        }
        off += 16 + incl;
    }
    out
}

/// Packets the kernel of `host` dropped instead of handing them to a
/// daemon's NFQUEUE (`queue_dropped` — queue full — plus `user_dropped` —
/// the daemon's socket buffer full — over all queues bound in the host,
/// from `/proc/net/netfilter/nfnetlink_queue`). With fail-open off every
/// one of them is a lost segment.
pub fn nfqueue_drops(host: &Host) -> u64 {
    let table = host
        .exec_ok(["cat", "/proc/net/netfilter/nfnetlink_queue"])
        .expect("nfnetlink_queue");
    table
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 9, "nfnetlink_queue line {l:?}");
            f[5].parse::<u64>().expect("queue_dropped") + f[6].parse::<u64>().expect("user_dropped")
        })
        .sum()
}

/// Two hosts, two links.
pub struct TwoLinks {
    pub lab: Lab,
    pub a: Host,
    pub b: Host,
    pub l0: Link,
    pub l1: Link,
}

impl TwoLinks {
    /// The IPv6 addresses (a on link 0, a on link 1, b on link 0, b on
    /// link 1).
    pub fn addrs(
        &self,
    ) -> (
        std::net::Ipv6Addr,
        std::net::Ipv6Addr,
        std::net::Ipv6Addr,
        std::net::Ipv6Addr,
    ) {
        (
            v6(&self.l0, &self.a),
            v6(&self.l1, &self.a),
            v6(&self.l0, &self.b),
            v6(&self.l1, &self.b),
        )
    }
}

pub fn two_links() -> TwoLinks {
    let lab = Lab::new().expect("lab");
    let a = lab.add_host("a").expect("host a");
    let b = lab.add_host("b").expect("host b");
    let l0 = lab.link(&a, &b).expect("link 0");
    let l1 = lab.link(&a, &b).expect("link 1");
    lab.wait_usable(Duration::from_secs(10)).expect("usable");
    TwoLinks { lab, a, b, l0, l1 }
}

/// A TCP listener on `port` (any IPv6 address) in `host`.
pub fn listen(host: &Host, port: u16) -> TcpListener {
    host.run(move || TcpListener::bind(("::", port)))
        .expect("run")
        .expect("bind")
}

/// Daemons on both hosts (covering `port`, started with `extra` command
/// line arguments) and a listener on `port` in b.
pub fn daemons_and_listener(
    t: &TwoLinks,
    port: u16,
    extra: &[&str],
) -> (Daemon, Daemon, TcpListener) {
    let da = Daemon::start_with(&t.lab, &t.a, &[port], extra);
    let db = Daemon::start_with(&t.lab, &t.b, &[port], extra);
    (da, db, listen(&t.b, port))
}

/// Connects from a to b's address on link 0 at `port` and accepts the
/// connection on `listener`: (client end, server end).
pub fn connect_l0(t: &TwoLinks, listener: &TcpListener, port: u16) -> (TcpStream, TcpStream) {
    let dst = SocketAddr::from((v6(&t.l0, &t.b), port));
    let c =
        t.a.run(move || TcpStream::connect(dst))
            .expect("run")
            .expect("connect");
    let (s, _) = listener.accept().expect("accept");
    (c, s)
}

/// Sets a read timeout of 20 s on each of `streams`.
pub fn read_timeouts(streams: &[&TcpStream]) {
    for x in streams {
        x.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
    }
}

/// Sends `len` bytes of value `n` from `from` and checks that `to` reads
/// exactly them.
pub fn ping(from: &mut TcpStream, to: &mut TcpStream, n: u8, len: usize) {
    let data = vec![n; len];
    from.write_all(&data).expect("write");
    let mut got = vec![0u8; data.len()];
    to.read_exact(&mut got).expect("read");
    assert_eq!(got, data, "data intact");
}

/// Writes `mb` MiB of pseudo-random bytes (xorshift, seeded) to `path`.
pub fn make_file(path: &Path, mb: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        f.write_all(&buf).expect("write");
    }
    f.flush().expect("flush");
}

/// sha256 of a file (with `sha256sum`).
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn v6(link: &Link, host: &Host) -> std::net::Ipv6Addr {
    match link.addr(host, Family::V6) {
        std::net::IpAddr::V6(a) => a,
        std::net::IpAddr::V4(_) => unreachable!("asked for V6"),
    }
}

/// Waits until `path` holds at least `bytes` bytes.
pub fn wait_size(path: &Path, bytes: u64, timeout: Duration) {
    let t0 = Instant::now();
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < bytes {
        assert!(
            t0.elapsed() < timeout,
            "{} did not reach {bytes} bytes",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a process to end within `timeout`, panicking with its output otherwise.
pub fn finish(p: Process, what: &str, timeout: Duration) -> netlab::ProcessOutput {
    let out = p
        .wait_timeout(timeout)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {} {}",
        out.stdout,
        out.stderr
    );
    out
}
