//! The handshake in the kernel: loads `bpf/ptcp.bpf.c` (built by
//! `build.rs`) with aya and attaches its two programs to every Ethernet
//! link (tcx ingress and egress on kernels >= 6.6, where aya uses bpf
//! links; clsact filters through netlink on older ones).
//!
//! aya is the loader: pure Rust, a safe API (no unsafe in the daemon for
//! it) and no libbpf build dependency. The daemon detaches the programs on
//! SIGTERM/SIGINT ([`Bpf::detach_all`]); beyond that the tcx links belong
//! to the daemon's file descriptors, so they go when it exits however it
//! exits (also on SIGKILL): a restart always starts from a clean state and
//! nothing is pinned. (On kernels without tcx the clsact filters of a
//! daemon that was killed are replaced at the next start.) Links of interfaces that disappear
//! are removed by the kernel with the interface.
//!
//! The daemon keeps the offer map (`ptcp_offers`) equal to
//! [`preservetcp::Engine::offer_for`] of every local address
//! ([`Bpf::set_offers`], after each rtnetlink snapshot) and reads the
//! per-CPU counters for the `stats` request ([`Bpf::counters`]).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::tc::SchedClassifierLinkId as LinkId;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use preservetcp::bpf::{Counter, OFFER_MARK, OFFER_VALUE_LEN};

/// The compiled programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ptcp.bpf.o"));

const EGRESS: &str = "ptcp_egress";
const INGRESS: &str = "ptcp_ingress";

/// The loaded programs, their maps and the links they are attached to.
pub struct Bpf {
    ebpf: Ebpf,
    offers: BpfHashMap<MapData, [u8; 16], [u8; OFFER_VALUE_LEN]>,
    counters: PerCpuArray<MapData, u64>,
    /// Interfaces the programs are attached to, with the links.
    attached: HashMap<String, Vec<(&'static str, LinkId)>>,
    /// The offers in the map, to update only what changed.
    current: HashMap<Ipv6Addr, [u8; OFFER_VALUE_LEN]>,
}

impl std::fmt::Debug for Bpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpf")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Bpf {
    /// Loads both programs into the kernel (verifier included) and takes
    /// their maps; attaches nothing yet.
    pub fn load() -> Result<Self, String> {
        let mut ebpf = EbpfLoader::new()
            .override_global("offer_mark", &OFFER_MARK, true)
            .load(OBJECT)
            .map_err(|e| format!("loading ptcp.bpf.o: {e}"))?;
        for name in [EGRESS, INGRESS] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(format!("program {name} missing"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            p.load().map_err(|e| format!("{name}: {e}"))?;
        }
        let offers = ebpf
            .take_map("ptcp_offers")
            .ok_or("map ptcp_offers missing")?
            .try_into()
            .map_err(|e| format!("ptcp_offers: {e}"))?;
        let counters = ebpf
            .take_map("ptcp_counters")
            .ok_or("map ptcp_counters missing")?
            .try_into()
            .map_err(|e| format!("ptcp_counters: {e}"))?;
        Ok(Self {
            ebpf,
            offers,
            counters,
            attached: HashMap::new(),
            current: HashMap::new(),
        })
    }

    /// Attaches to every Ethernet link (the programs parse Ethernet framing
    /// only) not attached yet (and forgets links
    /// that are gone). Returns the names newly attached and the errors.
    pub fn sync_links(&mut self) -> (Vec<String>, Vec<String>) {
        let links = match crate::rtnl::ethernet_links() {
            Ok(l) => l,
            Err(e) => return (Vec::new(), vec![format!("listing links: {e}")]),
        };
        // (The kernel removed the links of interfaces that are gone.)
        self.attached.retain(|l, _| links.contains(l));
        let mut added = Vec::new();
        let mut errors = Vec::new();
        for l in links {
            if self.attached.contains_key(&l) {
                continue;
            }
            let mut ids = Vec::new();
            match self.attach(&l, &mut ids) {
                Ok(()) => {
                    self.attached.insert(l.clone(), ids);
                    added.push(l);
                }
                Err(e) => {
                    self.detach_links(ids);
                    errors.push(format!("{l}: {e}"));
                }
            }
        }
        (added, errors)
    }

    fn program(&mut self, name: &str) -> Result<&mut SchedClassifier, String> {
        self.ebpf
            .program_mut(name)
            .ok_or(format!("program {name} missing"))?
            .try_into()
            .map_err(|e| format!("{name}: {e}"))
    }

    fn attach(
        &mut self,
        ifname: &str,
        ids: &mut Vec<(&'static str, LinkId)>,
    ) -> Result<(), String> {
        for (name, dir) in [
            (EGRESS, TcAttachType::Egress),
            (INGRESS, TcAttachType::Ingress),
        ] {
            let p = self.program(name)?;
            let id = match p.attach(ifname, dir) {
                Ok(id) => id,
                Err(e) => {
                    // Kernels before 6.6 (no tcx) attach through a clsact
                    // qdisc; filters of an earlier daemon that did not
                    // exit cleanly are removed first.
                    let _ = aya::programs::tc::qdisc_add_clsact(ifname);
                    let _ = aya::programs::tc::qdisc_detach_program(ifname, dir, name);
                    p.attach(ifname, dir)
                        .map_err(|e2| format!("attach {name}: {e} / {e2}"))?
                }
            };
            ids.push((name, id));
        }
        Ok(())
    }

    fn detach_links(&mut self, ids: Vec<(&'static str, LinkId)>) {
        for (name, id) in ids {
            if let Ok(p) = self.program(name) {
                let _ = p.detach(id);
            }
        }
    }

    /// Detaches the programs from every link (on exit; tcx links would
    /// also go with the daemon's file descriptors, clsact filters would
    /// not).
    pub fn detach_all(&mut self) {
        let all: Vec<_> = self.attached.drain().flat_map(|(_, ids)| ids).collect();
        self.detach_links(all);
    }

    /// Interfaces the programs are attached to.
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<String> = self.attached.keys().cloned().collect();
        v.sort();
        v
    }

    /// Makes the offer map hold exactly these offers (local address →
    /// [`preservetcp::bpf::offer_value`]).
    pub fn set_offers(
        &mut self,
        offers: HashMap<Ipv6Addr, [u8; OFFER_VALUE_LEN]>,
    ) -> Result<(), String> {
        let mut first_err = None;
        for old in self.current.keys() {
            if !offers.contains_key(old)
                && let Err(e) = self.offers.remove(&old.octets())
                && first_err.is_none()
            {
                first_err = Some(format!("removing the offer of {old}: {e}"));
            }
        }
        for (a, v) in &offers {
            if self.current.get(a) == Some(v) {
                continue;
            }
            if let Err(e) = self.offers.insert(a.octets(), v, 0)
                && first_err.is_none()
            {
                first_err = Some(format!("offer of {a}: {e}"));
            }
        }
        self.current = offers;
        first_err.map_or(Ok(()), Err)
    }

    /// The counters summed over all CPUs, by name.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        Counter::ALL
            .iter()
            .map(|c| {
                let n = self
                    .counters
                    .get(&c.index(), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (c.name().to_string(), n)
            })
            .collect()
    }
}
