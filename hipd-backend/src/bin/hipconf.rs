//! `hipconf` — control a running hipd (HIPL verbs).
//!
//! ```text
//! hipconf [--socket PATH] [--json] daemon <verb…>
//!   get hi default|all          get ha all|HIT
//!   add map HIT IP [LSI] [udp|native]    del map HIT [IP]
//!   rst all|HIT                 debug none|low|medium|all
//!   nat none|plain-udp          set puzzle [all] K
//!   manual-update               shotgun on|off
//!   connect HIT                 opp IP            stats
//! ```
//! Exit status: 0 success, 1 the daemon refused or failed the request,
//! 2 usage error, 3 the daemon is not running, 4 permission denied,
//! 5 unknown HIT.

use hipd_backend::control::{Client, ClientError, ErrorCode, HaInfo, Response, parse_verbs};

const USAGE: &str = "usage: hipconf [--socket PATH] [--json] daemon <verb...>
verbs: get hi default|all | get ha all|HIT | get shim all|HIT
       add map HIT IP [LSI] [udp|native]
       del map HIT [IP] | rst all|HIT | debug none|low|medium|all
       nat none|plain-udp | set puzzle [all] K | manual-update | shotgun on|off
       set reap send-timeout|keepalive-timeout|keepalive-interval|probe-timeout MS
       set reap probes N
       connect HIT | opp IP | stats | ping";

fn print_ha(h: &HaInfo) {
    println!("HA is {}", h.state);
    println!(" Local HIT   {}", h.local_hit);
    match h.peer_hit {
        Some(p) => println!(" Peer  HIT   {p}"),
        None => println!(" Peer  HIT   (opportunistic, unknown)"),
    }
    if let Some(l) = h.local_lsi {
        println!(" Local LSI   {l}");
    }
    if let Some(l) = h.peer_lsi {
        println!(" Peer  LSI   {l}");
    }
    if let Some(l) = h.local_locator {
        println!(" Local IP    {l}");
    }
    if let Some(l) = h.peer_locator {
        println!(" Peer  IP    {l}");
    }
    if h.peer_locators.len() > 1 {
        let v: Vec<String> = h
            .peer_locators
            .iter()
            .enumerate()
            .map(|(i, a)| match h.peer_locator_states.get(i) {
                Some(st) => format!("{a} ({st})"),
                None => a.to_string(),
            })
            .collect();
        println!(" Peer locators {}", v.join(" "));
    }
    println!(" SPI in 0x{:08x} out 0x{:08x}", h.spi_in, h.spi_out);
    println!(" Transport   {}", h.transport);
    println!(" ESP packets out {} in {}", h.esp_out, h.esp_in);
}

/// With `--json`, an error is also printed on standard output as
/// `{"error": MESSAGE, "exit_code": N}` (the message stays on stderr).
fn json_error(json: bool, message: &str, code: i32) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "error": message, "exit_code": code })
        );
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut socket = hipd_backend::control::DEFAULT_SOCKET.to_string();
    // `--json` may stand anywhere (`hipconf daemon get ha all --json`).
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    loop {
        match args.first().map(String::as_str) {
            Some("--socket") if args.len() >= 2 => {
                socket = args[1].clone();
                args.drain(..2);
            }
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return;
            }
            _ => break,
        }
    }
    if args.first().map(String::as_str) != Some("daemon") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let words: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let req = match parse_verbs(&words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hipconf: {e}\n{USAGE}");
            json_error(json, &e.to_string(), 2);
            std::process::exit(2);
        }
    };
    let result = Client::connect(&socket).and_then(|mut c| c.call(&req));
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hipconf: {e}");
            let code = match &e {
                ClientError::NotRunning { .. } => 3,
                _ => match e.code() {
                    Some(ErrorCode::PermissionDenied) => 4,
                    Some(ErrorCode::UnknownHit) => 5,
                    Some(ErrorCode::BadRequest) => 2,
                    _ => 1,
                },
            };
            json_error(json, &e.to_string(), code);
            std::process::exit(code);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).unwrap_or_default()
        );
        return;
    }
    match resp {
        Response::Done { message } => println!("{message}"),
        Response::Pong {
            pid,
            version,
            protocol,
        } => println!("hipd {version} pid {pid} protocol {protocol}"),
        Response::His { his } => {
            for h in his {
                println!(
                    "{}{} HIT {} LSI {} ({})",
                    if h.default { "default " } else { "" },
                    h.algorithm,
                    h.hit,
                    h.lsi,
                    h.file.display()
                );
            }
        }
        Response::Has { has } => {
            if has.is_empty() {
                println!("no host associations");
            }
            for h in &has {
                print_ha(h);
            }
        }
        Response::Connected { ha } => print_ha(&ha),
        Response::Stats { stats } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&stats).unwrap_or_default()
            );
        }
        Response::ShimContext { ctx } => print_shim(&ctx),
        Response::ShimContexts { ctxs } => {
            if ctxs.is_empty() {
                println!("no shim contexts");
            }
            for c in &ctxs {
                print_shim(c);
            }
        }
        Response::ShimToken { token } => println!("send marker {token}"),
    }
}

fn print_shim(c: &hipd_backend::control::ShimContextInfo) {
    let pair = |p: Option<(std::net::IpAddr, std::net::IpAddr)>| {
        p.map_or("-".to_string(), |(l, r)| format!("{l} -> {r}"))
    };
    println!(
        "shim context {} <-> {} {}",
        c.local_hit, c.peer_hit, c.state
    );
    println!(
        "  path {}  failure detection {}  switches {}",
        pair(c.path),
        c.reap_state,
        c.switches
    );
    println!(
        "  send timeout {} ms  probes {} every {} ms  keepalive timeout {} ms interval {} ms  hot standby {} (standby {})",
        c.send_timeout_ms,
        c.effective_explore.probenum,
        c.effective_explore.initprobeto,
        c.keepalive_timeout_ms,
        c.keepalive_interval_ms,
        if c.hot_standby { "on" } else { "off" },
        pair(c.standby)
    );
    for (side, list) in [("local", &c.local), ("peer", &c.peer)] {
        for l in list {
            println!(
                "  {side:5} {:<40} {:?}{}{}{} prio {} weight {}{}",
                l.addr,
                l.state,
                if l.in_use { " in-use" } else { "" },
                if l.preferred { " preferred" } else { "" },
                if l.allowed { "" } else { " excluded" },
                l.prio,
                l.weight,
                if l.ifindex != 0 {
                    format!(" if {}", l.ifindex)
                } else {
                    String::new()
                }
            );
        }
    }
}
