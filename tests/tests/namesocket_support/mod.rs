//! Shared helpers of the namesocket lab tests (std and tokio drivers): two
//! lab hosts joined by two veth links, and per-host resolver options.
#![allow(dead_code)]

use std::time::Duration;

use namesocket::Options;
use namesocket::resolve::ResolverConfig;
use netlab::{Host, Lab, Link};

pub const MB: u64 = 1 << 20;

pub struct Topo {
    pub lab: Lab,
    pub a: Host,
    pub b: Host,
    pub links: [Link; 2],
}

/// Hosts `a` and `b` joined by two links, both usable.
pub fn topo() -> Topo {
    let lab = Lab::new().expect("lab (root and iproute2 needed)");
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let l0 = lab.link(&a, &b).unwrap();
    let l1 = lab.link(&a, &b).unwrap();
    lab.wait_usable(Duration::from_secs(10)).unwrap();
    Topo {
        lab,
        a,
        b,
        links: [l0, l1],
    }
}

/// Options for a host: resolve through the lab's hosts file of `h` only.
pub fn opts_for(h: &Host, base: Options) -> Options {
    let mut o = base;
    o.resolver = ResolverConfig::default()
        .with_hosts_file(h.hosts_file())
        .without_dns();
    o
}
