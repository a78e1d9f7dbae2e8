//! `hipd` — the userspace HIPv2 daemon. Run as root.
//!
//! ```text
//! hipd [-b] [--config-dir /etc/hip] [--control-socket /run/hipd/hipd.sock]
//!      [--system-hosts /etc/hosts] [--tun-name hip0] [--udp-port 10500] [--tun-mtu 1400]
//!      [--tun-queues N]
//!      [--debug none|low|medium|all] [--log-file PATH] [--pid-file PATH]
//! ```
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 when startup
//! fails (message on stderr).
//!
//! `-b` (background): the command starts the daemon as a child in a new
//! session (re-executing itself without `-b`) and waits until the child
//! reports that it is serving (identities loaded, hip0 up, sockets bound,
//! control socket listening, pid file written); it then exits 0, or 1 with
//! the child's error message if startup failed. The daemon logs to
//! `--log-file`, by default [`BACKGROUND_LOG`] in the background (there is
//! no terminal to write to).

use std::path::PathBuf;
use std::sync::Mutex;

use clap::Parser;
use hipd_backend::control::DebugLevel;
use hipd_backend::daemon::{Daemon, Options};
use nix::sys::signal::{SigSet, Signal};
use tracing_subscriber::{EnvFilter, Registry, fmt, layer::SubscriberExt, reload};

#[derive(Debug, Parser)]
#[command(name = "hipd", about = "Userspace HIPv2 daemon")]
struct Args {
    /// Run in the background (daemonize).
    #[arg(short = 'b', long)]
    background: bool,
    /// Configuration directory (identities, hipd.conf, hosts).
    #[arg(long, default_value = "/etc/hip")]
    config_dir: PathBuf,
    /// Control socket path.
    #[arg(long, default_value = hipd_backend::control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// System hosts file (name ↔ IP).
    #[arg(long, default_value = "/etc/hosts")]
    system_hosts: PathBuf,
    /// TUN device name.
    #[arg(long, default_value = "hip0")]
    tun_name: String,
    /// UDP encapsulation port.
    #[arg(long, default_value_t = 10500)]
    udp_port: u16,
    /// MTU of the TUN device (larger values rely on IP fragmentation of
    /// the outer packets).
    #[arg(long, default_value_t = hipd_backend::daemon::TUN_MTU)]
    tun_mtu: u32,
    /// TUN queues (one sealing thread each); 0: one per CPU, at most 4.
    #[arg(long, default_value_t = 0)]
    tun_queues: usize,
    /// Initial log level.
    #[arg(long, default_value = "low")]
    debug: String,
    /// Append logs to this file instead of stderr.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Write the daemon's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
}

/// The log file of a background daemon started without `--log-file`.
const BACKGROUND_LOG: &str = "/var/log/hipd.log";
/// Set (to "1") in the environment of the child a `-b` start runs: it
/// starts a new session and reports readiness on standard output.
const CHILD_ENV: &str = "HIPD_BACKGROUND_CHILD";
/// What the background child writes on standard output once serving.
const READY: &str = "hipd ready";

/// `-b`: runs this program again without `-b` (with `--log-file`), waits
/// for the child's readiness line and exits 0, or exits 1 with what the
/// child wrote on stderr if it ended first.
fn start_in_background(log_file: Option<&std::path::Path>) -> ! {
    use std::io::{BufRead, Read};
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("hipd: finding the executable: {e}");
            std::process::exit(1);
        }
    };
    let mut args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "-b" && a != "--background")
        .collect();
    if log_file.is_none() {
        args.push("--log-file".into());
        args.push(BACKGROUND_LOG.into());
    }
    let child = std::process::Command::new(exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hipd: starting the daemon: {e}");
            std::process::exit(1);
        }
    };
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    if line.trim_end() == READY {
        println!("hipd: running in the background, pid {}", child.id());
        std::process::exit(0);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait();
    eprint!("{err}");
    eprintln!("hipd: the daemon did not start ({status:?})");
    std::process::exit(1);
}

/// In the background child, once serving: reports readiness to the
/// parent and detaches standard output and error from it.
fn report_ready() {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{READY}");
    let _ = out.flush();
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

fn filter(l: DebugLevel) -> EnvFilter {
    EnvFilter::new(match l {
        DebugLevel::None => "error",
        DebugLevel::Low => "info",
        DebugLevel::Medium => "debug",
        DebugLevel::All => "trace",
    })
}

fn main() {
    let args = Args::parse();
    let level: DebugLevel = match args.debug.parse() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hipd: {e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("hipd: must run as root");
        std::process::exit(1);
    }
    if args.background {
        start_in_background(args.log_file.as_deref());
    }
    let child = std::env::var_os(CHILD_ENV).is_some_and(|v| v == "1");
    if child {
        // A new session: no controlling terminal, not in the starter's
        // process group (its signals are not ours).
        let _ = nix::unistd::setsid();
    }
    let (layer, handle) = reload::Layer::new(filter(level));
    let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match &args.log_file {
        Some(p) => {
            let f = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("hipd: log file {}: {e}", p.display());
                    std::process::exit(1);
                }
            };
            let f = Mutex::new(f);
            Box::new(move || {
                let g = f.lock().unwrap_or_else(|p| p.into_inner());
                match g.try_clone() {
                    Ok(f) => Box::new(f) as Box<dyn std::io::Write>,
                    // Out of descriptors: drop this log line rather than crash.
                    Err(_) => Box::new(std::io::sink()),
                }
            })
        }
        None => Box::new(|| Box::new(std::io::stderr()) as Box<dyn std::io::Write>),
    };
    let subscriber = Registry::default()
        .with(layer)
        .with(fmt::layer().with_ansi(false).with_writer(writer));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!("hipd: logging already initialised");
    }
    let set_level = Box::new(move |l: DebugLevel| {
        let _ = handle.modify(|f| *f = filter(l));
        tracing::warn!(level = ?l, "log level changed");
    });

    // Block the shutdown signals in every thread; the main thread waits for them.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGHUP);
    if let Err(e) = sigs.thread_block() {
        eprintln!("hipd: blocking signals: {e}");
        std::process::exit(1);
    }
    let opts = Options {
        config_dir: args.config_dir,
        control_socket: args.control_socket,
        system_hosts: args.system_hosts,
        tun_name: args.tun_name,
        udp_port: args.udp_port,
        tun_mtu: args.tun_mtu,
        tun_queues: args.tun_queues,
    };
    let daemon = match Daemon::start(opts, set_level) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("startup failed: {e:#}");
            eprintln!("hipd: {e:#}");
            std::process::exit(1);
        }
    };
    if let Some(p) = &args.pid_file {
        let _ = std::fs::write(p, format!("{}\n", std::process::id()));
    }
    if child {
        report_ready();
    }
    loop {
        match sigs.wait() {
            Ok(Signal::SIGHUP) => tracing::info!("SIGHUP ignored"),
            Ok(s) => {
                tracing::info!(signal = ?s, "shutting down");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "sigwait");
                break;
            }
        }
    }
    daemon.shutdown();
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("hipd stopped");
    std::process::exit(0);
}
