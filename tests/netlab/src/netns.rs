//! Entering network namespaces from threads (`setns(CLONE_NEWNET)`).
//!
//! `setns` changes the namespace of the *calling thread* only, and sockets keep the
//! namespace they were created in, so a socket created inside [`crate::Host::run`] or while
//! a [`NetnsGuard`] is alive lives in that host forever, whichever thread uses it later.

use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use crate::error::{Result, io_err, sys_err};

/// Where `ip netns add` mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The bind-mounted namespace file of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub(crate) fn open_netns(name: &str) -> Result<File> {
    let p = netns_path(name);
    File::open(&p).map_err(io_err(format!("opening {}", p.display())))
}

pub(crate) fn enter_file(ns: &File, what: &str) -> Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(sys_err(format!("setns into {what}")))
}

/// While alive, the *calling thread* is inside another network namespace; dropping it
/// returns the thread to the namespace it was in before.
///
/// The guard is neither `Send` nor `Sync`: it must be dropped on the thread that made it.
/// Guards nest (drop them in reverse order).
#[derive(Debug)]
pub struct NetnsGuard {
    previous: File,
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Moves the calling thread into the named namespace (a name under `/run/netns`).
    pub fn enter(netns: &str) -> Result<Self> {
        let previous = File::open("/proc/thread-self/ns/net")
            .map_err(io_err("opening /proc/thread-self/ns/net"))?;
        let target = open_netns(netns)?;
        enter_file(&target, netns)?;
        Ok(Self {
            previous,
            _not_send: PhantomData,
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.previous, CloneFlags::CLONE_NEWNET) {
            // Staying in a foreign namespace silently would corrupt later work on this thread,
            // but a second panic while unwinding would abort the whole test binary.
            if std::thread::panicking() {
                tracing::error!("netlab: cannot return the thread to its network namespace: {e}");
            } else {
                panic!("netlab: cannot return the thread to its network namespace: {e}");
            }
        }
    }
}
