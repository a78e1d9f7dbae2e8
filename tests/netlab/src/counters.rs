//! Interface counters, read from `/proc/thread-self/net/dev` inside the host.

use crate::error::{LabError, Result, io_err};

/// Packet and byte counters of one interface (as the kernel counts them: packets dropped by
/// the lab's nftables rule were still *received* by the interface).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets dropped by the device on receive.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Packets dropped by the device on transmit.
    pub tx_dropped: u64,
}

impl Counters {
    /// The increase from `earlier` to `self` (saturating, per field).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_errors: self.rx_errors.saturating_sub(earlier.rx_errors),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_errors: self.tx_errors.saturating_sub(earlier.tx_errors),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
        }
    }
}

/// Reads the counters of `dev` in the calling thread's network namespace.
pub(crate) fn read_current(dev: &str) -> Result<Counters> {
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(io_err("reading /proc/thread-self/net/dev"))?;
    parse_net_dev(&text, dev).ok_or_else(|| LabError::Io {
        context: format!("interface {dev} not in /proc/net/dev"),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Parses the `/proc/net/dev` format for one interface.
pub(crate) fn parse_net_dev(text: &str, dev: &str) -> Option<Counters> {
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != dev {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|w| w.parse().ok())
            .collect::<Option<_>>()?;
        let g = |i: usize| v.get(i).copied();
        return Some(Counters {
            rx_bytes: g(0)?,
            rx_packets: g(1)?,
            rx_errors: g(2)?,
            rx_dropped: g(3)?,
            tx_bytes: g(8)?,
            tx_packets: g(9)?,
            tx_errors: g(10)?,
            tx_dropped: g(11)?,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
l0-b:  5000      40    1    3    0     0          0         0     7000      50    2    4    0     0       0          0
";
        let c = parse_net_dev(text, "l0-b").unwrap();
        assert_eq!(
            c,
            Counters {
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 1,
                rx_dropped: 3,
                tx_bytes: 7000,
                tx_packets: 50,
                tx_errors: 2,
                tx_dropped: 4
            }
        );
        assert_eq!(parse_net_dev(text, "l0"), None);
        assert_eq!(parse_net_dev("x: 1 2", "x"), None);
        let d = c.since(&Counters {
            rx_packets: 50,
            tx_packets: 10,
            ..Counters::default()
        });
        assert_eq!((d.rx_packets, d.tx_packets), (0, 40));
    }
}
