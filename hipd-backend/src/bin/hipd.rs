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
    if args.background
        && let Err(e) = nix::unistd::daemon(true, args.log_file.is_some())
    {
        eprintln!("hipd: daemonize: {e}");
        std::process::exit(1);
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
