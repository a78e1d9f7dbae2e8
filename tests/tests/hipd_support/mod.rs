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
    let file = lab.artifacts_dir().join(format!("send-{port}"));
    random_file(&file, len, seed);
    let got = socat_tcp(
        lab,
        server,
        client,
        IpAddr::V6(hit),
        IpAddr::V6(hit),
        port,
        &file,
    );
    assert!(same_file(&file, &got), "data over {hit}:{port} differs");
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
    let srv = server
        .spawn(["socat", "-u", &listen, &format!("CREATE:{}", out.display())])
        .expect("socat server");
    std::thread::sleep(Duration::from_millis(300));
    let target = match dst {
        IpAddr::V6(a) => format!("TCP6:[{a}]:{port}"),
        IpAddr::V4(a) => format!("TCP4:{a}:{port}"),
    };
    let cli = client
        .spawn(["socat", "-u", &format!("OPEN:{}", file.display()), &target])
        .expect("socat client");
    let c = cli
        .wait_timeout(Duration::from_secs(45))
        .expect("client finished");
    assert!(c.status.success(), "socat client: {}", c.stderr);
    let s = srv
        .wait_timeout(Duration::from_secs(10))
        .expect("server finished");
    assert!(s.status.success(), "socat server: {}", s.stderr);
    out
}
