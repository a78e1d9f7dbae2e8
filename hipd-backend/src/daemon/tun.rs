//! The HIT/LSI TUN device (`hip0`).
//!
//! Created with `TUNSETIFF` (`IFF_TUN | IFF_NO_PI`); addresses, MTU and
//! link state are set with `ip(8)`. Each local HIT gets `HIT/28` (which
//! installs the ORCHIDv2 route 2001:20::/28 on the device; all but the
//! default HIT are added with `preferred_lft 0`, so source address selection
//! picks the default HIT) and each local
//! LSI `LSI/8` (route 1.0.0.0/8). The device is not persistent: it, its
//! addresses and its routes disappear when the daemon closes the fd (also
//! on a crash), so a restart starts cleanly.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, bail};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    file: File,
    name: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip(8)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Tun {
    /// Creates (or attaches to) the device `name`, assigns the addresses and
    /// brings it up with `mtu`.
    pub fn create(
        name: &str,
        hits: &[Ipv6Addr],
        lsis: &[Ipv4Addr],
        mtu: u32,
    ) -> anyhow::Result<Tun> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            bail!("bad interface name {name:?}");
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        for (d, s) in req.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `IfReq` has its
        // layout (16-byte name, flags, padding to 40 bytes) and lives for the
        // duration of the call; the fd is a valid open /dev/net/tun.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
        }
        let tun = Tun {
            file,
            name: name.to_string(),
        };
        // No IPv6 autoconfiguration / router solicitations on the HIT device.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0");
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string()])?;
        for (i, h) in hits.iter().enumerate() {
            let cidr = format!("{h}/28");
            let mut args = vec!["-6", "addr", "add", cidr.as_str(), "dev", name, "nodad"];
            if i > 0 {
                // Only the default HIT is preferred, so the kernel picks it
                // as the source towards peer HITs.
                args.extend(["preferred_lft", "0"]);
            }
            ip(&args)?;
        }
        for l in lsis {
            ip(&["addr", "add", &format!("{l}/8"), "dev", name])?;
        }
        ip(&["link", "set", "dev", name, "up"])?;
        Ok(tun)
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet (blocking).
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one packet.
    pub fn send(&self, pkt: &[u8]) -> std::io::Result<usize> {
        (&self.file).write(pkt)
    }
}
