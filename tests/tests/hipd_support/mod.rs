//! Shared helpers of the hipd lab tests: building the binaries, starting
//! hipd in a lab host with its own configuration directory and control
//! socket, and talking to it.
#![allow(dead_code)]

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hipd_backend::control::{Client, HaInfo, HiSelector, Request, Response, StatsInfo};
use netlab::{Host, Lab, Process};

/// Paths of the hipd and hipconf binaries, built (once per test process)
/// with `cargo build -p hipd-backend --bins` (same profile) into the
/// target directory this test binary lives in.
pub fn bins() -> &'static (PathBuf, PathBuf) {
    static B: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/test-binary
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("profile dir")
            .to_path_buf();
        let target = profile_dir.parent().expect("target dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "hipd-backend", "--bins", "--quiet"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(st.success(), "building hipd failed");
        let dir = profile_dir;
        (dir.join("hipd"), dir.join("hipconf"))
    })
}

/// A hipd running in a lab host.
pub struct Hipd {
    pub proc: Option<Process>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub host: Host,
    pub log: PathBuf,
}

impl Hipd {
    /// Starts hipd in `host` with `hipd.conf` text `conf` and HIPL hosts
    /// text `hosts`; waits until the control socket answers.
    pub fn start(lab: &Lab, host: &Host, conf: &str, hosts: &str) -> Hipd {
        let dir = lab.artifacts_dir().join(format!("{}-hip", host.name()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hipd.conf"), conf).unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        let mut h = Hipd {
            proc: None,
            sock: dir.join("hipd.sock"),
            log: dir.join("hipd.log"),
            dir,
            host: host.clone(),
        };
        h.launch();
        h
    }

    /// (Re)starts the process with the same directory.
    pub fn launch(&mut self) {
        let (hipd, _) = bins();
        let p = self
            .host
            .spawn([
                hipd.to_str().unwrap(),
                "--config-dir",
                self.dir.to_str().unwrap(),
                "--control-socket",
                self.sock.to_str().unwrap(),
                "--system-hosts",
                self.host.hosts_file().to_str().unwrap(),
                "--debug",
                "medium",
                "--log-file",
                self.log.to_str().unwrap(),
            ])
            .expect("spawn hipd");
        let t0 = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&self.sock)
                && c.call(&Request::Ping).is_ok()
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "hipd did not start: {}\n{}",
                p.stderr_so_far(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(p);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn call(&self, req: Request) -> Response {
        let mut c = Client::connect(&self.sock).expect("connect control socket");
        match c.call(&req) {
            Ok(r) => r,
            Err(e) => panic!("{req:?} failed: {e}\nlog:\n{}", self.log_text()),
        }
    }

    /// Runs hipconf with `args` (after `--socket`); returns (exit code, stdout, stderr).
    pub fn hipconf(&self, args: &[&str]) -> (i32, String, String) {
        let (_, hipconf) = bins();
        let out = Command::new(hipconf)
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run hipconf");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn hit(&self) -> Ipv6Addr {
        match self.call(Request::GetHi {
            which: HiSelector::Default,
        }) {
            Response::His { his } => his[0].hit,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn lsi(&self) -> Ipv4Addr {
        match self.call(Request::GetHi {
            which: HiSelector::Default,
        }) {
            Response::His { his } => his[0].lsi,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn has(&self) -> Vec<HaInfo> {
        match self.call(Request::GetHa { hit: None }) {
            Response::Has { has } => has,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn stats(&self) -> StatsInfo {
        match self.call(Request::Stats) {
            Response::Stats { stats } => stats,
            r => panic!("unexpected {r:?}"),
        }
    }

    pub fn add_map(&self, hit: Ipv6Addr, ip: IpAddr, lsi: Option<Ipv4Addr>) {
        self.call(Request::AddMap {
            hit,
            ip,
            lsi,
            transport: None,
        });
    }
}

/// Writes `len` pseudo-random bytes (seeded) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
}

/// Whether two files have identical contents.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    loop {
        let na = read_full(&mut ra, &mut ba);
        let nb = read_full(&mut rb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// Sends a fresh random file of `len` bytes (seed `seed`) with socat from
/// `client` to `server` listening on `hit`:`port`, and asserts that it
/// arrived byte-exact.
pub fn transfer_to_hit(
    lab: &Lab,
    server: &Host,
    client: &Host,
    hit: Ipv6Addr,
    port: u16,
    len: usize,
    seed: u64,
) {
    Transfer::start(lab, server, client, hit, port, len, seed).finish(Duration::from_secs(45));
}

/// Sends `file` with socat over TCP from `client` to `server` at `dst`
/// (a HIT, LSI or IP) port `port`, the server listening on `bind`; returns
/// the received file's path.
pub fn socat_tcp(
    lab: &Lab,
    server: &Host,
    client: &Host,
    bind: IpAddr,
    dst: IpAddr,
    port: u16,
    file: &Path,
) -> PathBuf {
    let out = lab
        .artifacts_dir()
        .join(format!("recv-{}-{port}", server.name()));
    let listen = match bind {
        IpAddr::V6(a) => format!("TCP6-LISTEN:{port},bind=[{a}],reuseaddr"),
        IpAddr::V4(a) => format!("TCP4-LISTEN:{port},bind={a},reuseaddr"),
    };
    let target = match dst {
        IpAddr::V6(a) => format!("TCP6:[{a}]:{port}"),
        IpAddr::V4(a) => format!("TCP4:{a}:{port}"),
    };
    let (srv, cli) = spawn_socat(server, client, &listen, &target, file, &out);
    wait_socat(cli, srv, Duration::from_secs(45));
    out
}

/// Starts a socat server in `server` listening with the address `listen`
/// into the file `out`, and (after a moment) a socat client in `client`
/// sending `file` to `target`: (server, client).
fn spawn_socat(
    server: &Host,
    client: &Host,
    listen: &str,
    target: &str,
    file: &Path,
    out: &Path,
) -> (Process, Process) {
    let srv = server
        .spawn(["socat", "-u", listen, &format!("CREATE:{}", out.display())])
        .expect("socat server");
    std::thread::sleep(Duration::from_millis(300));
    let cli = client
        .spawn(["socat", "-u", &format!("OPEN:{}", file.display()), target])
        .expect("socat client");
    (srv, cli)
}

/// Waits for a socat client (at most `limit`), then its server, and
/// asserts that both succeeded.
fn wait_socat(cli: Process, srv: Process, limit: Duration) {
    let c = cli.wait_timeout(limit).expect("socat client finished");
    assert!(c.status.success(), "socat client: {}", c.stderr);
    let s = srv
        .wait_timeout(Duration::from_secs(10))
        .expect("socat server finished");
    assert!(s.status.success(), "socat server: {}", s.stderr);
}

/// Payload bytes per datagram of [`udp_transfer`].
const UDP_CHUNK: usize = 1200;
/// Datagrams per window of [`udp_transfer`] (the acknowledgment bitmap).
const UDP_WINDOW: usize = 256;
/// The sequence number of the end-of-transfer datagram.
const UDP_FIN: u32 = u32::MAX;

/// Byte `i` of the [`udp_transfer`] stream with `seed`.
fn udp_byte(seed: u64, i: usize) -> u8 {
    let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
    (x >> 29) as u8 ^ (x >> 7) as u8
}

/// Moves `len` bytes from a UDP socket in `client` to one bound to `bind`
/// (port `port`) in `server`, at `dst`: 1200-byte datagrams with a 32-bit
/// sequence number, in windows of 256 that the receiver acknowledges with
/// a bitmap (when complete, or after 5 ms without news); the sender
/// resends what is missing. Checks the received bytes against the sent
/// ones and returns how many datagrams were resent. (UDP itself may drop
/// datagrams; this is what a UDP application that needs all its data does,
/// and exercises hipd's UDP path in both directions.)
pub fn udp_transfer(
    server: &Host,
    client: &Host,
    bind: IpAddr,
    dst: IpAddr,
    port: u16,
    len: usize,
    seed: u64,
) -> u64 {
    use std::net::{SocketAddr, UdpSocket};
    let bind = SocketAddr::from((bind, port));
    let dst = SocketAddr::from((dst, port));
    let srv = server
        .run(move || UdpSocket::bind(bind))
        .unwrap()
        .expect("bind UDP on the HIT/LSI");
    let total = len.div_ceil(UDP_CHUNK);
    let receiver = std::thread::spawn(move || {
        srv.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut data = vec![0u8; len];
        let mut got = vec![false; total];
        let mut have = 0usize;
        let mut peer: Option<SocketAddr> = None;
        let mut window: Option<usize> = None;
        let mut buf = vec![0u8; 2048];
        let t0 = Instant::now();
        let ack = |w: usize, got: &[bool], to: SocketAddr| {
            let mut a = (w as u32).to_be_bytes().to_vec();
            let mut bits = [0u8; UDP_WINDOW / 8];
            for (i, g) in got.iter().skip(w * UDP_WINDOW).take(UDP_WINDOW).enumerate() {
                if *g {
                    bits[i / 8] |= 1 << (i % 8);
                }
            }
            a.extend_from_slice(&bits);
            let _ = srv.send_to(&a, to);
        };
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "UDP transfer stalled"
            );
            match srv.recv_from(&mut buf) {
                Ok((n, from)) if n >= 4 => {
                    peer = Some(from);
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    if seq == UDP_FIN {
                        if have == total {
                            let _ = srv.send_to(&UDP_FIN.to_be_bytes(), from);
                            return data;
                        }
                        continue;
                    }
                    let i = seq as usize;
                    let start = i * UDP_CHUNK;
                    let end = (start + UDP_CHUNK).min(len);
                    assert!(
                        i < total && n - 4 == end - start,
                        "datagram {i} of {n} bytes"
                    );
                    if !got[i] {
                        data[start..end].copy_from_slice(&buf[4..n]);
                        got[i] = true;
                        have += 1;
                    }
                    let w = i / UDP_WINDOW;
                    window = Some(w);
                    let last = ((w + 1) * UDP_WINDOW).min(total);
                    if got[w * UDP_WINDOW..last].iter().all(|g| *g) {
                        ack(w, &got, from);
                    }
                }
                Ok(_) => panic!("short datagram"),
                Err(_) => {
                    if let (Some(w), Some(p)) = (window, peer) {
                        ack(w, &got, p);
                    }
                }
            }
        }
    });
    let any: SocketAddr = match dst {
        SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
        SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
    };
    let cli = client.run(move || UdpSocket::bind(any)).unwrap().unwrap();
    cli.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut resent = 0u64;
    let mut pkt = vec![0u8; 4 + UDP_CHUNK];
    let mut abuf = [0u8; 64];
    for w in 0..total.div_ceil(UDP_WINDOW) {
        let first = w * UDP_WINDOW;
        let last = ((w + 1) * UDP_WINDOW).min(total);
        let mut missing: Vec<usize> = (first..last).collect();
        let mut rounds = 0;
        while !missing.is_empty() {
            rounds += 1;
            assert!(rounds < 200, "window {w} never completed");
            for &i in &missing {
                let start = i * UDP_CHUNK;
                let end = (start + UDP_CHUNK).min(len);
                pkt[..4].copy_from_slice(&(i as u32).to_be_bytes());
                for (k, b) in pkt[4..4 + end - start].iter_mut().enumerate() {
                    *b = udp_byte(seed, start + k);
                }
                // The first datagram may wait for the base exchange.
                cli.send_to(&pkt[..4 + end - start], dst).unwrap();
            }
            if rounds > 1 {
                resent += missing.len() as u64;
            }
            // Wait for this window's acknowledgment (older ones are stale).
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(200) {
                let Ok(n) = cli.recv(&mut abuf) else { break };
                if n < 4 + UDP_WINDOW / 8
                    || u32::from_be_bytes(abuf[..4].try_into().unwrap()) as usize != w
                {
                    continue;
                }
                let bits = &abuf[4..4 + UDP_WINDOW / 8];
                missing.retain(|&i| {
                    let k = i - first;
                    bits[k / 8] & (1 << (k % 8)) == 0
                });
                break;
            }
        }
    }
    let mut done = false;
    for _ in 0..50 {
        cli.send_to(&UDP_FIN.to_be_bytes(), dst).unwrap();
        if let Ok(n) = cli.recv(&mut abuf)
            && n == 4
            && abuf[..4] == UDP_FIN.to_be_bytes()
        {
            done = true;
            break;
        }
    }
    assert!(done, "end of the UDP transfer not acknowledged");
    let data = receiver.join().expect("receiver");
    let bad = (0..len).find(|&i| data[i] != udp_byte(seed, i));
    assert_eq!(bad, None, "UDP stream differs at that byte");
    resent
}

/// The engine counter `name` of `h` (0 when absent).
pub fn engine_counter(h: &Hipd, name: &str) -> u64 {
    h.stats()
        .engine
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |(_, v)| *v)
}

/// Polls `f` every 50 ms until it holds; panics with `what` (and the
/// daemons' `get ha` output) after `limit`.
pub fn wait_for(what: &str, limit: Duration, hipds: &[&Hipd], mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        if t0.elapsed() >= limit {
            let has: Vec<String> = hipds
                .iter()
                .map(|h| format!("{}: {:?}", h.host.name(), h.has()))
                .collect();
            panic!("timed out after {limit:?}: {what}\n{}", has.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A socat TCP transfer of a random file running in the background (see
/// [`Transfer::start`]).
pub struct Transfer {
    file: PathBuf,
    out: PathBuf,
    srv: Option<Process>,
    cli: Option<Process>,
}

impl Transfer {
    /// Starts sending a fresh random file of `len` bytes (seed `seed`)
    /// from `client` to `server`, which listens on `hit`:`port`; returns
    /// at once, the data still flowing.
    pub fn start(
        lab: &Lab,
        server: &Host,
        client: &Host,
        hit: Ipv6Addr,
        port: u16,
        len: usize,
        seed: u64,
    ) -> Transfer {
        let file = lab.artifacts_dir().join(format!("bg-send-{port}"));
        random_file(&file, len, seed);
        let out = lab
            .artifacts_dir()
            .join(format!("bg-recv-{}-{port}", server.name()));
        let (srv, cli) = spawn_socat(
            server,
            client,
            &format!("TCP6-LISTEN:{port},bind=[{hit}],reuseaddr"),
            &format!("TCP6:[{hit}]:{port}"),
            &file,
            &out,
        );
        Transfer {
            file,
            out,
            srv: Some(srv),
            cli: Some(cli),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        std::fs::metadata(&self.out).map_or(0, |m| m.len())
    }

    /// Waits until at least `bytes` arrived (panics after `limit`).
    pub fn wait_received(&self, bytes: u64, limit: Duration) {
        let t0 = Instant::now();
        while self.received() < bytes {
            assert!(
                t0.elapsed() < limit,
                "only {} of {bytes} bytes arrived in {limit:?}",
                self.received()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for both ends (the client at most `limit`) and asserts that
    /// the file arrived byte-exact.
    pub fn finish(mut self, limit: Duration) {
        wait_socat(self.cli.take().unwrap(), self.srv.take().unwrap(), limit);
        assert!(
            same_file(&self.file, &self.out),
            "data differs: {} received of {}",
            self.received(),
            std::fs::metadata(&self.file).map_or(0, |m| m.len())
        );
    }
}

/// The state ("active", "unverified", "deprecated") of `h`'s peer
/// locator `addr` as `get ha` reports it (a withdrawn locator stays listed
/// as deprecated, RFC 8046 §5.4), if any association lists it.
pub fn peer_locator_state(h: &Hipd, addr: IpAddr) -> Option<String> {
    h.has().into_iter().find_map(|ha| {
        let i = ha.peer_locators.iter().position(|a| *a == addr)?;
        ha.peer_locator_states.get(i).cloned()
    })
}

/// Moves `host` from address `old` to `new` on `dev` (both /64, no DAD):
/// the new address first, the old one 100 ms later, as a host that
/// renumbers would.
pub fn readdress_v6(
    host: &netlab::Host,
    dev: &str,
    old: impl std::fmt::Display,
    new: impl std::fmt::Display,
) {
    let (old, new) = (format!("{old}/64"), format!("{new}/64"));
    host.exec_ok(["ip", "-6", "addr", "add", &new, "dev", dev, "nodad"])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    host.exec_ok(["ip", "-6", "addr", "del", &old, "dev", dev])
        .unwrap();
}
