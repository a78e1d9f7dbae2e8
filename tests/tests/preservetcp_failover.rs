//! preservetcpd keeps unmodified programs' TCP connections alive across a
//! failing link: ≥100 MiB transfers (socat upload, curl download from
//! `python3 -m http.server`) compared by sha256 while link 0 goes down or
//! is silently dropped on the receiving side, on the client's or on the
//! server's host. Both hosts run preservetcpd; the connection starts on
//! link 0 and must end up on link 1.

mod preservetcp_support;

use std::time::Duration;

use netlab::{RateLimit, Tool};
use preservetcp_support::*;

const MB: usize = 100;

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Link 0 down on this side (0 = client a, 1 = server b).
    Down(usize),
    /// Link 0 silently drops what this side receives.
    DropRx(usize),
}

#[derive(Debug, Clone, Copy)]
enum App {
    /// socat: client uploads to the server.
    SocatUpload,
    /// curl downloads from python3 -m http.server.
    CurlDownload,
}

fn run(app: App, fault: Fault, extra: &[&str]) {
    Tool::Tcpdump.require().ok();
    let t = two_links();
    let lab = &t.lab;
    // Bound the rate so the fault hits the middle of the transfer.
    for l in [&t.l0, &t.l1] {
        for h in [&t.a, &t.b] {
            l.rate_limit(h, RateLimit::mbit(400)).expect("rate limit");
        }
    }
    let port = 5001;
    let da = Daemon::start_with(lab, &t.a, &[port], extra);
    let db = Daemon::start_with(lab, &t.b, &[port], extra);
    let bpf = !extra.contains(&"--no-bpf");
    assert_eq!((da.bpf(), db.bpf()), (bpf, bpf), "handshake path");
    let dir = lab.artifacts_dir().to_path_buf();
    let src = dir.join("send.bin");
    make_file(&src, MB, 0x5eed ^ port as u64);
    let dst = dir.join("recv.bin");
    let server_addr = v6(&t.l0, &t.b);

    let (server, client, received) = match app {
        App::SocatUpload => {
            let server =
                t.b.spawn([
                    "socat".to_string(),
                    "-u".into(),
                    format!("TCP6-LISTEN:{port},reuseaddr"),
                    format!("CREATE:{}", dst.display()),
                ])
                .expect("socat server");
            std::thread::sleep(Duration::from_millis(200));
            let client =
                t.a.spawn([
                    "socat".to_string(),
                    "-u".into(),
                    format!("OPEN:{}", src.display()),
                    format!("TCP6:[{server_addr}]:{port}"),
                ])
                .expect("socat client");
            (server, client, dst.clone())
        }
        App::CurlDownload => {
            let server =
                t.b.spawn([
                    "python3".to_string(),
                    "-m".into(),
                    "http.server".into(),
                    "--bind".into(),
                    "::".into(),
                    "--directory".into(),
                    dir.display().to_string(),
                    port.to_string(),
                ])
                .expect("http server");
            let t0 = std::time::Instant::now();
            let index = format!("http://[{server_addr}]:{port}/");
            while !t
                .a
                .exec(["curl", "-s", "-o", "/dev/null", "--max-time", "2", &index])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                assert!(t0.elapsed() < Duration::from_secs(10), "http server not up");
                std::thread::sleep(Duration::from_millis(100));
            }
            // The probes' connections are tracked too until the daemons
            // see their sockets gone (at least 0.5 s after entering them):
            // wait for that, so only the download's connection is listed.
            let t0 = std::time::Instant::now();
            while !(da.connections().is_empty() && db.connections().is_empty()) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "probe connections not forgotten: {:?}",
                    da.connections()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            let client =
                t.a.spawn([
                    "curl".to_string(),
                    "-sS".into(),
                    "--fail".into(),
                    "-o".into(),
                    dst.display().to_string(),
                    format!("http://[{server_addr}]:{port}/send.bin"),
                ])
                .expect("curl");
            (server, client, dst.clone())
        }
    };
    // Let a quarter of the data through on link 0, then break it.
    wait_size(&received, ((MB as u64) << 20) / 4, Duration::from_secs(20));
    let conns = da.connections();
    assert_eq!(conns.len(), 1, "client tracks the connection: {conns:?}");
    assert_eq!(conns[0].current.peer, server_addr, "starts on link 0");
    assert_eq!(
        conns[0].peers.len(),
        2,
        "learned the server's second prefix"
    );
    assert_eq!(db.connections().len(), 1, "server tracks the connection");
    let side = |i: usize| if i == 0 { &t.a } else { &t.b };
    let stamp = match fault {
        Fault::Down(i) => t.l0.down_side(side(i)).expect("down"),
        Fault::DropRx(i) => t.l0.drop_rx(side(i)).expect("drop"),
    };
    finish(client, "client", Duration::from_secs(50));
    let elapsed = stamp.elapsed();
    match app {
        App::SocatUpload => {
            finish(server, "server", Duration::from_secs(10));
        }
        App::CurlDownload => drop(server),
    }
    assert_eq!(sha256(&src), sha256(&received), "byte-exact transfer");
    let after = da.connections();
    let moved = after
        .first()
        .map(|c| c.current.peer == v6(&t.l1, &t.b))
        .unwrap_or(false)
        || da.log().contains("moved to");
    assert!(moved, "client moved to link 1: {after:?}\n{}", da.log());
    assert!(
        da.stat("switches") > 0 && db.stat("switches") > 0,
        "both ends changed pairs"
    );
    eprintln!(
        "{app:?} {fault:?}: done {:.1}s after the fault\nclient log:\n{}\nserver log:\n{}",
        elapsed.as_secs_f64(),
        da.log(),
        db.log()
    );
}

#[test]
fn upload_survives_client_link_down() {
    run(App::SocatUpload, Fault::Down(0), &[]);
}

#[test]
fn upload_survives_silent_drop_at_server() {
    run(App::SocatUpload, Fault::DropRx(1), &[]);
}

#[test]
fn download_survives_silent_drop_at_client() {
    run(App::CurlDownload, Fault::DropRx(0), &[]);
}

#[test]
fn download_survives_server_link_down() {
    run(App::CurlDownload, Fault::Down(1), &[]);
}

/// The core migration with the handshake through NFQUEUE (`--no-bpf`).
#[test]
fn upload_survives_client_link_down_without_bpf() {
    run(App::SocatUpload, Fault::Down(0), &["--no-bpf"]);
}
