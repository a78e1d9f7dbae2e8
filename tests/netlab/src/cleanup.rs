//! Removing leftovers of labs whose process died without cleaning up.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{Pid, geteuid};

use crate::error::{LabError, Result, io_err};
use crate::lab::{ETC_NETNS, NETNS_PREFIX, delete_netns, kill_netns_processes};
use crate::netns::NETNS_RUN_DIR;

/// What [`cleanup_stale`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Deleted network namespaces.
    pub namespaces: Vec<String>,
    /// Removed directories (`/etc/netns/<ns>` and artifacts directories).
    pub dirs: Vec<PathBuf>,
}

/// The creating pid encoded in a lab name `nl<pid>-<counter>[-<host>]`, if `name` is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let counter = parts.next()?;
    if pid.is_empty()
        || counter.is_empty()
        || !pid.bytes().all(|b| b.is_ascii_digit())
        || !counter.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // EPERM means it exists but belongs to someone else: alive.
    !matches!(kill(Pid::from_raw(p), None), Err(Errno::ESRCH))
}

fn stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes namespaces named `nl<pid>-…` whose creating process `pid` no longer exists
/// (killing whatever still runs in them), their `/etc/netns/` directories, and
/// `netlab-nl<pid>-…` artifacts directories in the temp directory.
///
/// Caveat: if a crashed run's pid has been reused by an unrelated process, its leftovers
/// are kept until that process ends (they are harmless: isolated namespaces).
pub fn cleanup_stale() -> Result<CleanupReport> {
    if !geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    let mut report = CleanupReport::default();
    let mut first_err = None;
    for name in entries(Path::new(NETNS_RUN_DIR)) {
        if !stale(&name) {
            continue;
        }
        kill_netns_processes(&name);
        match delete_netns(&name) {
            Ok(()) => report.namespaces.push(name),
            // A parallel cleanup may have won the race.
            Err(_) if !Path::new(NETNS_RUN_DIR).join(&name).exists() => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    for name in entries(Path::new(ETC_NETNS)) {
        if stale(&name) {
            let p = Path::new(ETC_NETNS).join(&name);
            remove_dir(&p, &mut report, &mut first_err);
        }
    }
    let tmp = std::env::temp_dir();
    for name in entries(&tmp) {
        if let Some(lab) = name.strip_prefix("netlab-")
            && stale(lab)
        {
            remove_dir(&tmp.join(&name), &mut report, &mut first_err);
        }
    }
    first_err.map_or(Ok(report), Err)
}

fn remove_dir(p: &Path, report: &mut CleanupReport, first_err: &mut Option<LabError>) {
    match fs::remove_dir_all(p) {
        Ok(()) => report.dirs.push(p.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            first_err.get_or_insert(io_err(format!("removing {}", p.display()))(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn parses_owner_pid() {
        assert_eq!(owner_pid("nl123-0-a"), Some(123));
        assert_eq!(owner_pid("nl123-45"), Some(123));
        assert_eq!(owner_pid("nl123-45-host-x"), Some(123));
        assert_eq!(owner_pid("nl-0-a"), None);
        assert_eq!(owner_pid("nlx1-0-a"), None);
        assert_eq!(owner_pid("nl12"), None);
        assert_eq!(owner_pid("nl12-x-a"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("nl99999999999999999999-0-a"), None);
    }
}
