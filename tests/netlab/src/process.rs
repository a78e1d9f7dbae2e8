//! Processes started inside hosts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{LabError, Result, io_err, sys_err};

/// What a finished process printed.
#[derive(Debug, Clone)]
pub struct ProcessOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossily decoded as UTF-8).
    pub stdout: String,
    /// Standard error (lossily decoded as UTF-8).
    pub stderr: String,
}

/// A process running inside a host, killed (SIGKILL) and reaped when dropped.
///
/// Processes started with [`crate::Host::spawn`] write stdout and stderr to files in the
/// lab's artifacts directory (so a chatty process can never block on a full pipe);
/// [`Process::stdout_so_far`] reads them while it runs.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    label: String,
    stdout_path: Option<PathBuf>,
    stderr_path: Option<PathBuf>,
}

impl Process {
    pub(crate) fn new(
        child: Child,
        label: String,
        stdout_path: Option<PathBuf>,
        stderr_path: Option<PathBuf>,
    ) -> Self {
        Self {
            child: Some(child),
            label,
            stdout_path,
            stderr_path,
        }
    }

    /// The process id (the program itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Where stdout goes, when the lab redirected it to a file.
    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout_path.as_deref()
    }

    /// Where stderr goes, when the lab redirected it to a file.
    pub fn stderr_path(&self) -> Option<&Path> {
        self.stderr_path.as_deref()
    }

    /// The underlying [`Child`], e.g. to take pipes of a [`crate::Host::spawn_command`] process.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Stdout written so far (empty when stdout is not redirected to a file).
    pub fn stdout_so_far(&self) -> String {
        read_lossy(self.stdout_path.as_deref())
    }

    /// Stderr written so far (empty when stderr is not redirected to a file).
    pub fn stderr_so_far(&self) -> String {
        read_lossy(self.stderr_path.as_deref())
    }

    /// Sends a signal (e.g. `SIGINT` for a clean shutdown).
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let Some(child) = &self.child else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        kill(pid, sig).map_err(sys_err(format!("kill -{sig} {}", self.label)))
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(c) => c
                .try_wait()
                .map_err(io_err(format!("waiting for {}", self.label))),
            None => Ok(None),
        }
    }

    /// Waits for the process to exit and returns its output.
    pub fn wait(mut self) -> Result<ProcessOutput> {
        self.finish(false)
    }

    /// Waits at most `timeout`; on timeout the process is killed and
    /// [`LabError::Timeout`] returned. (For a [`crate::Host::spawn_command`] process with
    /// piped output, prefer [`Process::wait`]: a full pipe can stall it.)
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<ProcessOutput> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_wait()?.is_some() {
                return self.finish(false);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{} to exit", self.label),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (SIGKILL) and returns what it printed.
    pub fn kill(mut self) -> Result<ProcessOutput> {
        self.finish(true)
    }

    fn finish(&mut self, kill_first: bool) -> Result<ProcessOutput> {
        let Some(mut child) = self.child.take() else {
            return Err(LabError::Io {
                context: format!("{} was already reaped", self.label),
                source: std::io::Error::other("no child"),
            });
        };
        if kill_first {
            // An already exited process makes kill fail with InvalidInput; wait reports it.
            let _ = child.kill();
        }
        // Reads any pipes concurrently while waiting, so a piped child cannot stall.
        let out = child
            .wait_with_output()
            .map_err(io_err(format!("waiting for {}", self.label)))?;
        let pick = |path: Option<&Path>, piped: Vec<u8>| match path {
            Some(p) => read_lossy(Some(p)),
            None => String::from_utf8_lossy(&piped).into_owned(),
        };
        Ok(ProcessOutput {
            status: out.status,
            stdout: pick(self.stdout_path.as_deref(), out.stdout),
            stderr: pick(self.stderr_path.as_deref(), out.stderr),
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_lossy(p: Option<&Path>) -> String {
    p.and_then(|p| fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
