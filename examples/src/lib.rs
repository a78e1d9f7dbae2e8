//! Demonstrations and lab benchmark programs (see `src/bin/`), and the
//! helpers they share.

pub mod hipd_lab {
    //! Running hipd inside a lab host and talking to it.

    use std::net::Ipv6Addr;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, anyhow, bail};
    use hipd_backend::control::{Client, HiSelector, Request, Response};
    use netlab::{Host, Process};

    /// A hipd process in a lab host.
    pub struct LabHipd {
        /// The process (killed when dropped).
        pub proc: Process,
        /// Its control socket.
        pub sock: PathBuf,
    }

    impl std::fmt::Debug for LabHipd {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("LabHipd")
                .field("sock", &self.sock)
                .finish_non_exhaustive()
        }
    }

    /// Starts `hipd` in `host` with configuration directory `dir`, control
    /// socket `sock` and `extra` arguments; waits (up to 30 s) until the
    /// control socket answers a ping.
    pub fn start(
        host: &Host,
        hipd: &Path,
        dir: &Path,
        sock: &Path,
        extra: &[&str],
    ) -> Result<LabHipd> {
        std::fs::create_dir_all(dir)?;
        let mut args = vec![
            hipd.to_str().context("hipd path")?,
            "--config-dir",
            dir.to_str().context("config path")?,
            "--control-socket",
            sock.to_str().context("socket path")?,
        ];
        args.extend_from_slice(extra);
        let proc = host.spawn(args)?;
        let t0 = Instant::now();
        while Client::connect(sock)
            .and_then(|mut c| c.call(&Request::Ping))
            .is_err()
        {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("hipd did not start: {}", proc.stderr_so_far());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(LabHipd {
            proc,
            sock: sock.to_path_buf(),
        })
    }

    /// One request on a new control connection.
    pub fn call(sock: &Path, r: Request) -> Result<Response> {
        Ok(Client::connect(sock)?.call(&r)?)
    }

    /// The default HIT of the daemon at `sock`.
    pub fn default_hit(sock: &Path) -> Result<Ipv6Addr> {
        match call(
            sock,
            Request::GetHi {
                which: HiSelector::Default,
            },
        )? {
            Response::His { his } => his
                .first()
                .map(|h| h.hit)
                .ok_or_else(|| anyhow!("no identity")),
            r => bail!("unexpected {r:?}"),
        }
    }
}
