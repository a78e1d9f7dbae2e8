//! Test helpers: a fake control server speaking the hipd control
//! protocol (JSON lines per `hipd_backend::control`), and a private
//! network namespace whose loopback carries HITs and LSIs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hipd_backend::control::{
    ErrorCode, LocState, PathExplore, Reply, Request, Response, ShimContextInfo, ShimLocInfo,
    ShimSocketInfo, decode_request,
};

pub type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// A fake daemon: records every request and answers with `handler`.
pub struct FakeDaemon {
    pub path: PathBuf,
    pub log: Arc<Mutex<Vec<Request>>>,
    pub connections: Arc<Mutex<usize>>,
    _dir: tempfile::TempDir,
}

impl FakeDaemon {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeDaemon {
        Self::start_with(handler, false)
    }

    /// `close_after_each`: close the connection after every reply (to
    /// exercise the client's reconnection).
    pub fn start_with(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        close_after_each: bool,
    ) -> FakeDaemon {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hipd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0usize));
        let handler: Arc<Handler> = Arc::new(handler);
        let (l2, c2) = (log.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                *c2.lock().unwrap() += 1;
                let (log, handler) = (l2.clone(), handler.clone());
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    let mut line = String::new();
                    while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        let reply = match decode_request(line.trim_end()) {
                            Ok(req) => {
                                let rep = handler(&req);
                                log.lock().unwrap().push(req);
                                rep
                            }
                            Err(e) => Reply::from(e),
                        };
                        let mut s = serde_json::to_string(&reply).unwrap();
                        s.push('\n');
                        if w.write_all(s.as_bytes()).is_err() || close_after_each {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        FakeDaemon {
            path,
            log,
            connections,
            _dir: dir,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

pub fn done() -> Reply {
    Reply::ok(Response::Done {
        message: "ok".into(),
    })
}

pub fn fail(code: ErrorCode) -> Reply {
    Reply::err(code, "test")
}

pub fn loc(addr: &str, prio: u16, weight: u16, state: LocState, in_use: bool) -> ShimLocInfo {
    ShimLocInfo {
        addr: addr.parse().unwrap(),
        prio,
        weight,
        ifindex: 0,
        flags: 0,
        proto: 0,
        port: 0,
        state,
        in_use,
        allowed: true,
        preferred: false,
    }
}

/// A context with two local and three peer locators.
pub fn context() -> ShimContextInfo {
    let mut local = vec![
        loc("2001:db8:1::1", 0, 0, LocState::Local, true),
        loc("192.0.2.1", 0, 0, LocState::Local, false),
    ];
    local[0].ifindex = 2;
    local[1].ifindex = 3;
    let mut peer = vec![
        loc("2001:db8:2::2", 5, 1, LocState::Verified, true),
        loc("198.51.100.2", 1, 10, LocState::Verified, false),
        loc("2001:db8:9::9", 0, 0, LocState::Unreachable, false),
    ];
    peer[2].allowed = false;
    // A UDP-encapsulated locator (lc_proto / lc_port, RFC 6316 §8.1).
    peer[1].proto = 17;
    peer[1].port = 10500;
    ShimContextInfo {
        local_hit: "2001:20::1".parse().unwrap(),
        peer_hit: "2001:20::2".parse().unwrap(),
        state: "ESTABLISHED".into(),
        local,
        peer,
        path: Some((
            "2001:db8:1::1".parse().unwrap(),
            "2001:db8:2::2".parse().unwrap(),
        )),
        standby: None,
        loclist_local_set: false,
        loclist_peer_set: true,
        hot_standby: true,
        app_timeout_secs: 15,
        send_timeout_ms: 15000,
        path_explore: None,
        effective_explore: PathExplore {
            probenum: 4,
            keepaliveto: 15,
            keepaliveint: 5,
            initprobeto: 500,
        },
        keepalive_timeout_ms: 15000,
        keepalive_interval_ms: 5000,
        reap_state: "operational".into(),
        switches: 0,
        socket: ShimSocketInfo {
            local_send: None,
            peer_send: Some("198.51.100.2".parse().unwrap()),
            local_recv: true,
            peer_recv: false,
            last_rx: Some((
                "2001:db8:1::1".parse::<IpAddr>().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )),
        },
    }
}

/// Runs `f` on a thread inside a fresh network namespace whose loopback
/// carries the HITs 2001:20::1, 2001:20::2 and the LSIs 1.0.0.1, 1.0.0.2.
/// Needs CAP_SYS_ADMIN (the tests run as root).
pub fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["-6", "addr", "add", "2001:20::1/128", "dev", "lo", "nodad"],
            &["-6", "addr", "add", "2001:20::2/128", "dev", "lo", "nodad"],
            &["addr", "add", "1.0.0.1/32", "dev", "lo"],
            &["addr", "add", "1.0.0.2/32", "dev", "lo"],
        ] {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        }
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .expect("an errno")
}
