//! External tools: presence checks and a command runner with typed errors.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{LabError, Result, io_err};

/// The external tools the lab may shell out to, with their Debian packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `ip` (iproute2): namespaces, veths, addresses, `ip netns exec`.
    Ip,
    /// `nft` (nftables): receive-side drops.
    Nft,
    /// `tc` (iproute2): rate limits.
    Tc,
    /// `tcpdump` (tcpdump): captures.
    Tcpdump,
}

impl Tool {
    /// The command name.
    pub fn command(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Nft => "nft",
            Tool::Tc => "tc",
            Tool::Tcpdump => "tcpdump",
        }
    }

    /// The Debian package providing the command.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Ip | Tool::Tc => "iproute2",
            Tool::Nft => "nftables",
            Tool::Tcpdump => "tcpdump",
        }
    }

    /// Checks that the tool is on `PATH` (plus the sbin directories, which a non-login root
    /// shell may lack), returning [`LabError::ToolMissing`] otherwise.
    pub fn require(self) -> Result<PathBuf> {
        find_in_path(self.command()).ok_or(LabError::ToolMissing {
            tool: self.command(),
            package: self.package(),
        })
    }
}

/// Searches `PATH` and the usual sbin directories for an executable called `name`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, optionally feeding `stdin`; fails with
/// [`LabError::Command`] on a non-zero exit.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<Output> {
    let text = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(io_err(format!("spawning `{text}`")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(io_err(format!("writing stdin of `{text}`")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for `{text}`")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: text,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// `ip <args>`.
pub(crate) fn ip<I, S>(args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new("ip").args(args), None)
}

/// `ip -n <ns> -batch -` with the given batch script.
pub(crate) fn ip_batch(netns: &str, script: &str) -> Result<Output> {
    run(
        Command::new("ip").args(["-n", netns, "-batch", "-"]),
        Some(script),
    )
}
