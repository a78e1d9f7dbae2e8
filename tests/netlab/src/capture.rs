//! Packet captures with tcpdump.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::counters;
use crate::error::{LabError, Result};
use crate::host::Host;
use crate::process::Process;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `tcpdump -U` on one link side. Stopped (SIGINT, so the file is complete) by
/// [`Capture::stop`] or on drop; the pcap file stays where it is (in the artifacts directory
/// it is removed with the lab unless [`crate::Lab::keep_artifacts`] is set).
#[derive(Debug)]
pub struct Capture {
    process: Option<Process>,
    path: PathBuf,
    dev: String,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
    host: Host,
    /// rx+tx packets of the interface when the capture was running.
    start_packets: Option<u64>,
}

const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

fn packets_now(host: &Host, dev: &str) -> Option<u64> {
    let dev = dev.to_owned();
    let c = host.run(move || counters::read_current(&dev)).ok()?.ok()?;
    Some(c.rx_packets.saturating_add(c.tx_packets))
}

/// Number of complete packet records in a classic pcap file (`None` if it is not one).
pub(crate) fn pcap_records(data: &[u8]) -> Option<u64> {
    let magic: [u8; 4] = data.get(..4)?.try_into().ok()?;
    let big = match magic {
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        _ => return None,
    };
    let mut off: usize = 24;
    let mut n = 0u64;
    loop {
        let Some(hdr) = data.get(off..off.checked_add(16)?) else {
            return Some(n);
        };
        let len: [u8; 4] = hdr.get(8..12)?.try_into().ok()?;
        let incl = if big {
            u32::from_be_bytes(len)
        } else {
            u32::from_le_bytes(len)
        };
        let end = off
            .checked_add(16)?
            .checked_add(usize::try_from(incl).ok()?)?;
        if end > data.len() {
            return Some(n);
        }
        n += 1;
        off = end;
    }
}

pub(crate) fn start(host: &Host, dev: &str, path: PathBuf) -> Result<Capture> {
    let mut cmd = host.command("tcpdump");
    // -Z root: tcpdump would otherwise switch to user `tcpdump` and fail to write the file.
    cmd.args([
        "-i",
        dev,
        "-n",
        "-U",
        "--immediate-mode",
        "-Z",
        "root",
        "-w",
    ])
    .arg(&path)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut process = host.spawn_command(cmd)?;
    let stderr_pipe = process.child_mut().and_then(|c| c.stderr.take());
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<()>();
    let reader = stderr_pipe.map(|pipe| {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                let mut s = stderr.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        })
    });
    let mut cap = Capture {
        process: Some(process),
        path,
        dev: dev.to_owned(),
        stderr,
        reader,
        host: host.clone(),
        start_packets: None,
    };
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(()) => {
            cap.start_packets = packets_now(host, dev);
            Ok(cap)
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // stderr closed without the banner: tcpdump died.
            if let Some(p) = cap.process.take() {
                let _ = p.kill();
            }
            cap.join_reader();
            Err(LabError::CaptureFailed {
                dev: cap.dev.clone(),
                stderr: cap.stderr_text(),
            })
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(LabError::Timeout {
            what: format!("tcpdump on {dev} to start"),
            after: START_TIMEOUT,
        }),
    }
}

impl Capture {
    /// The pcap file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What tcpdump printed on stderr so far (banner and, after stopping, its statistics).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops tcpdump cleanly and returns the pcap path.
    pub fn stop(mut self) -> Result<PathBuf> {
        self.shutdown()?;
        Ok(self.path.clone())
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(p) = self.process.take() else {
            return Ok(());
        };
        self.drain();
        p.signal(Signal::SIGINT)?;
        let r = p.wait_timeout(STOP_TIMEOUT);
        self.join_reader();
        r.map(drop)
    }

    /// tcpdump exits on SIGINT without reading what is still queued in its socket, so
    /// first wait (at most [`DRAIN_TIMEOUT`]) until the file holds as many packets as the
    /// interface counted since the capture started.
    fn drain(&self) {
        let Some(start) = self.start_packets else {
            return;
        };
        let t0 = Instant::now();
        while t0.elapsed() < DRAIN_TIMEOUT {
            let Some(now) = packets_now(&self.host, &self.dev) else {
                return;
            };
            let want = now.saturating_sub(start);
            let have = std::fs::read(&self.path)
                .ok()
                .and_then(|d| pcap_records(&d))
                .unwrap_or(0);
            if have >= want {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("netlab: stopping capture on {}: {e}", self.dev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pcap_records;

    #[test]
    fn counts_complete_records_only() {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1];
        f.resize(24, 0);
        assert_eq!(pcap_records(&f), Some(0));
        let mut rec = vec![0u8; 16];
        rec[8..12].copy_from_slice(&3u32.to_le_bytes());
        rec.extend_from_slice(&[1, 2, 3]);
        f.extend_from_slice(&rec);
        f.extend_from_slice(&rec);
        assert_eq!(pcap_records(&f), Some(2));
        f.extend_from_slice(&rec[..18]);
        assert_eq!(pcap_records(&f), Some(2));
        assert_eq!(pcap_records(b"nope"), None);
        assert_eq!(pcap_records(&[]), None);
        let mut huge = f[..24].to_vec();
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(pcap_records(&huge), Some(0));
    }
}
