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
//! are removed by the kernel with the interface. Links are tracked by
//! interface index, not name: a link deleted and re-created under the same
//! name (a new index) is attached again, a renamed one (same index) is not
//! attached twice.
//!
//! The daemon keeps the offer map (`ptcp_offers`) equal to
//! [`preservetcp::Engine::offer_for`] of every local address
//! ([`Bpf::set_offers`], after each rtnetlink snapshot) and reads the
//! per-CPU counters for the `stats` request ([`Bpf::counters`]). Only
//! offers the kernel accepted are recorded as in the map: a failed insert
//! or removal is retried with the next snapshot.
//!
//! The egress program reports each PREFIX_ACK echo it really sent in the
//! `ptcp_echoes` ring buffer ([`preservetcp::bpf::echo_event`]);
//! [`feed_echoes`] passes them to [`preservetcp::Engine::kernel_echoed`].
//!
//! The ingress program copies the incoming handshake packets into the
//! `ptcp_events` ring buffer ([`preservetcp::bpf::decode_event`]); a
//! record into an empty ring wakes the daemon's event thread, which reads
//! whole batches (at most every 5 ms), and [`feed_echoes`] passes them to
//! [`preservetcp::Engine::observe_inbound`]. Segments on an alternative
//! pair are rewritten in the kernel through `ptcp_alt`
//! ([`Bpf::track`]) and reported too (the event thread in `main.rs`
//! waits on [`Bpf::ring_fds`]), then passed to
//! [`preservetcp::Engine::inbound`] so the policy can follow the peer.
//! The daemon also fills `ptcp_ports` (`--ports`) and `ptcp_optin`
//! (control-socket opt-ins): the egress program decides which SYNs are
//! covered.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::Ipv6Addr;
use std::sync::Mutex;
use std::time::Instant;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::tc::SchedClassifierLinkId as LinkId;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use preservetcp::Engine;
use preservetcp::bpf::{
    ALT_VALUE_LEN, Counter, Event, EventKind, HS_KEY_LEN, HS_VALUE_LEN, MOVED_VALUE_LEN,
    OFFER_VALUE_LEN, alt_entries, alt_slot, decode_event, echo_event, hs_key, moved_value,
    server_echo_option,
};
use preservetcp::control::{OPT_IN_MARK, OPT_IN_MASK, OPT_OUT_MARK};
use preservetcp::pairs::FourTuple;
use preservetcp::wire::PrefixOption;

/// The compiled programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ptcp.bpf.o"));

const EGRESS: &str = "ptcp_egress";
const INGRESS: &str = "ptcp_ingress";

/// One interface's links: program name and link id, per direction.
type Links = Vec<(&'static str, LinkId)>;

/// The loaded programs, their maps and the links they are attached to.
pub struct Bpf {
    ebpf: Ebpf,
    offers: BpfHashMap<MapData, [u8; 16], [u8; OFFER_VALUE_LEN]>,
    counters: PerCpuArray<MapData, u64>,
    echoes: RingBuf<MapData>,
    hs: BpfHashMap<MapData, [u8; HS_KEY_LEN], [u8; HS_VALUE_LEN]>,
    ports: Array<MapData, u8>,
    optin: BpfHashMap<MapData, [u8; HS_KEY_LEN], u8>,
    alt: BpfHashMap<MapData, [u8; HS_KEY_LEN], [u8; ALT_VALUE_LEN]>,
    alt_slots: Array<MapData, u32>,
    moved: BpfHashMap<MapData, [u8; HS_KEY_LEN], [u8; MOVED_VALUE_LEN]>,
    moved_count: Array<MapData, u32>,
    /// The connections in `ptcp_moved`.
    moved_set: std::collections::HashSet<FourTuple>,
    events: RingBuf<MapData>,
    /// The `ptcp_alt` keys in the map, per connection (original tuple).
    alts: HashMap<FourTuple, Vec<[u8; HS_KEY_LEN]>>,
    /// Interfaces the programs are attached to (by index), with their
    /// names as last listed and the links.
    attached: HashMap<u32, (String, Links)>,
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
            .override_global("opt_in_mark", &OPT_IN_MARK, true)
            .override_global("opt_in_mask", &OPT_IN_MASK, true)
            .override_global("opt_out_mark", &OPT_OUT_MARK, true)
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
        let offers = take_map(&mut ebpf, "ptcp_offers")?;
        let counters = take_map(&mut ebpf, "ptcp_counters")?;
        let echoes = take_map(&mut ebpf, "ptcp_echoes")?;
        let hs = take_map(&mut ebpf, "ptcp_hs")?;
        let ports = take_map(&mut ebpf, "ptcp_ports")?;
        let optin = take_map(&mut ebpf, "ptcp_optin")?;
        let alt = take_map(&mut ebpf, "ptcp_alt")?;
        let alt_slots = take_map(&mut ebpf, "ptcp_alt_slots")?;
        let moved = take_map(&mut ebpf, "ptcp_moved")?;
        let moved_count = take_map(&mut ebpf, "ptcp_moved_count")?;
        let events = take_map(&mut ebpf, "ptcp_events")?;
        Ok(Self {
            ebpf,
            offers,
            counters,
            echoes,
            hs,
            ports,
            optin,
            alt,
            alt_slots,
            moved,
            moved_count,
            moved_set: std::collections::HashSet::new(),
            events,
            alts: HashMap::new(),
            attached: HashMap::new(),
            current: HashMap::new(),
        })
    }

    /// Attaches to every Ethernet link (the programs parse Ethernet framing
    /// only) not attached yet (and forgets links that are gone). Returns
    /// the names newly attached and the errors.
    pub fn sync_links(&mut self) -> (Vec<String>, Vec<String>) {
        let names = match crate::rtnl::ethernet_links() {
            Ok(l) => l,
            Err(e) => return (Vec::new(), vec![format!("listing links: {e}")]),
        };
        let mut errors = Vec::new();
        let mut present = Vec::new();
        for n in names {
            match nix::net::if_::if_nametoindex(n.as_str()) {
                Ok(i) => present.push((i, n)),
                // (Gone since the listing.)
                Err(e) => errors.push(format!("{n}: index: {e}")),
            }
        }
        // (The kernel removed the links of interfaces that are gone.)
        let todo = links_to_attach(&mut self.attached, present);
        let mut added = Vec::new();
        for (index, l) in todo {
            let mut ids = Vec::new();
            let result = self.attach(&l, &mut ids).and_then(|()| {
                // aya resolves the name again: make sure it attached to
                // the interface listed (not one renamed meanwhile).
                match nix::net::if_::if_nametoindex(l.as_str()) {
                    Ok(i) if i == index => Ok(()),
                    _ => Err("renamed while attaching (retried later)".to_string()),
                }
            });
            match result {
                Ok(()) => {
                    self.attached.insert(index, (l.clone(), ids));
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
        let all: Vec<_> = self
            .attached
            .drain()
            .flat_map(|(_, (_, ids))| ids)
            .collect();
        self.detach_links(all);
    }

    /// Interfaces the programs are attached to.
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<String> = self.attached.values().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    /// Makes the offer map hold exactly these offers (local address →
    /// [`preservetcp::bpf::offer_value`]). What failed is retried at the
    /// next call; the first error is returned.
    pub fn set_offers(
        &mut self,
        offers: HashMap<Ipv6Addr, [u8; OFFER_VALUE_LEN]>,
    ) -> Result<(), String> {
        let map = std::cell::RefCell::new(&mut self.offers);
        sync_map(
            &mut self.current,
            offers,
            |a, v| {
                map.borrow_mut()
                    .insert(a.octets(), v, 0)
                    .map_err(|e| format!("offer of {a}: {e}"))
            },
            |a| {
                let mut m = map.borrow_mut();
                match m.remove(&a.octets()) {
                    Ok(()) => Ok(()),
                    // Not in the map: as good as removed.
                    Err(_) if matches!(m.get(&a.octets(), 0), Err(MapError::KeyNotFound)) => Ok(()),
                    Err(e) => Err(format!("removing the offer of {a}: {e}")),
                }
            },
        )
    }

    /// Covers these ports (SYNs from or to them are offered on).
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<(), String> {
        for p in ports {
            self.ports
                .set(u32::from(*p), 1, 0)
                .map_err(|e| format!("port {p}: {e}"))?;
        }
        Ok(())
    }

    /// Covers one connection (sender's tuple: local = this host).
    pub fn opt_in(&mut self, t: &FourTuple) -> Result<(), String> {
        self.optin
            .insert(hs_key(t), 1, 0)
            .map_err(|e| format!("opt-in: {e}"))
    }

    /// Gives the kernel a connection's alternative wire tuples (all of
    /// `wires` but the original), so that its segments on them are
    /// rewritten to the original tuple and reported. Entries that fail
    /// are left out (their segments then reach no socket, as if the
    /// alternative were unknown); the first error is returned.
    pub fn track(
        &mut self,
        original: &FourTuple,
        wires: &[FourTuple],
        current: Option<&FourTuple>,
        hold_until_ns: u64,
    ) -> Result<(), String> {
        let old = self.alts.remove(original).unwrap_or_default();
        let mut keys = Vec::new();
        let mut first_err = None;
        for (k, v) in alt_entries(original, wires, current, hold_until_ns) {
            match self.alt.insert(k, v, 0) {
                Ok(()) => {
                    if !old.contains(&k) {
                        self.slot_add(&k, true);
                    }
                    keys.push(k);
                }
                Err(e) => {
                    first_err.get_or_insert(format!("alternative pair: {e}"));
                }
            }
        }
        // (Entered again under the same tuple, or an insert that failed:
        // old keys that are not among the new ones go.)
        for k in old.iter().filter(|k| !keys.contains(k)) {
            self.remove_alt(k);
        }
        self.alts.insert(*original, keys);
        first_err.map_or(Ok(()), Err)
    }

    /// Removes a connection's alternative wire tuples from the kernel.
    pub fn untrack(&mut self, original: &FourTuple) {
        for k in self.alts.remove(original).unwrap_or_default() {
            self.remove_alt(&k);
        }
    }

    fn remove_alt(&mut self, k: &[u8; HS_KEY_LEN]) {
        let _ = self.alt.remove(k);
        self.slot_add(k, false);
    }

    /// Counts a `ptcp_alt` key in (or out of) its slot; the count is raised
    /// before the entry can matter and lowered after it is gone, and it
    /// only ever costs a hash lookup when it is off.
    fn slot_add(&mut self, k: &[u8; HS_KEY_LEN], up: bool) {
        let slot = alt_slot(k);
        let n = self.alt_slots.get(&slot, 0).unwrap_or(0);
        let n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        let _ = self.alt_slots.set(slot, n, 0);
    }

    /// Moves a connection (original tuple) to the pair (`local`, `peer`)
    /// on device `ifindex` in the kernel (see
    /// [`preservetcp::bpf::moved_value`]).
    pub fn set_moved(
        &mut self,
        t: &FourTuple,
        local: Ipv6Addr,
        peer: Ipv6Addr,
        ifindex: u32,
        hold_until_ns: u64,
    ) -> Result<(), String> {
        self.moved
            .insert(
                hs_key(t),
                moved_value(local, peer, ifindex, hold_until_ns),
                0,
            )
            .map_err(|e| format!("moved connection: {e}"))?;
        if self.moved_set.insert(*t) {
            self.set_moved_count();
        }
        Ok(())
    }

    /// The connection is back on its original pair or gone.
    pub fn unmove(&mut self, t: &FourTuple) {
        if self.moved_set.remove(t) {
            let _ = self.moved.remove(&hs_key(t));
            self.set_moved_count();
        }
    }

    fn set_moved_count(&mut self) {
        let n = u32::try_from(self.moved_set.len()).unwrap_or(u32::MAX);
        let _ = self.moved_count.set(0, n, 0);
    }

    /// Whether the connection's alternatives are in the kernel.
    pub fn tracks(&self, original: &FourTuple) -> bool {
        self.alts.contains_key(original)
    }

    /// Second descriptors of the two ring buffers (events, echoes), to
    /// wait on: each is readable while it holds records.
    pub fn ring_fds(&self) -> Result<[std::os::fd::OwnedFd; 2], String> {
        use std::os::fd::AsFd;
        let dup = |f: std::os::fd::BorrowedFd<'_>| {
            f.try_clone_to_owned()
                .map_err(|e| format!("ring buffer descriptor: {e}"))
        };
        Ok([dup(self.events.as_fd())?, dup(self.echoes.as_fd())?])
    }

    /// The events the ingress program reported since the last call,
    /// oldest first (undecodable records are skipped).
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Some(item) = self.events.next() {
            if let Some(e) = decode_event(&item) {
                v.push(e);
            }
        }
        v
    }

    /// The client's PREFIX_SYN the kernel answered on the server
    /// connection `t` (its `ptcp_hs` entry), if it still has it.
    pub fn server_echo(&self, t: &FourTuple) -> Option<PrefixOption> {
        server_echo_option(&self.hs.get(&hs_key(t), 0).ok()?)
    }

    /// The client tuples of the echoes the egress program reported since
    /// the last call, oldest first.
    pub fn take_echoes(&mut self) -> Vec<FourTuple> {
        let mut v = Vec::new();
        while let Some(item) = self.echoes.next() {
            if let Some(t) = echo_event(&item) {
                v.push(t);
            }
        }
        v
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

/// Feeds the engine what only the kernel knows: the incoming handshake
/// packets and alternative-pair segments it copied
/// ([`Bpf::take_events`]), the echoes it reported
/// ([`Bpf::take_echoes`] → [`Engine::kernel_echoed`]) and its records of
/// the offers it answered for PREFIX_ACKs the engine could not match
/// ([`Engine::unmatched_acks`] → [`Bpf::server_echo`] →
/// [`Engine::kernel_answered`]); nothing without BPF. Called with the
/// engine locked (lock order: engine, then the programs), after the
/// daemon drained the NFLOG copies (without BPF).
pub fn feed_echoes(bpf: Option<&Mutex<Bpf>>, eng: &mut Engine, now: Instant) {
    let Some(b) = bpf else { return };
    let mut b = b.lock().unwrap_or_else(|e| e.into_inner());
    // The learned packets first (a SYN+ACK before the report that our
    // echo to it left, as on the wire).
    for e in b.take_events() {
        match e.kind {
            EventKind::Learn => eng.observe_inbound(&e.packet, now),
            // Already rewritten and delivered by the kernel: the engine
            // only needs to see where the peer sends from.
            EventKind::Alt => {
                let _ = eng.inbound(&e.packet, now);
            }
        }
    }
    for t in &b.take_echoes() {
        eng.kernel_echoed(t, now);
    }
    for t in eng.unmatched_acks() {
        let ps = b.server_echo(&t);
        eng.kernel_answered(&t, ps.as_ref(), now);
    }
}

/// Updates `attached` (interface index → name and whatever else) to the
/// interfaces `present` now: entries of indices that are gone are dropped
/// (a link deleted and re-created under the same name has a new index),
/// the names of those still there are updated (renamed links), and the
/// indices not attached yet are returned with their names, to attach.
fn links_to_attach<T>(
    attached: &mut HashMap<u32, (String, T)>,
    present: Vec<(u32, String)>,
) -> Vec<(u32, String)> {
    let indices: std::collections::HashSet<u32> = present.iter().map(|(i, _)| *i).collect();
    attached.retain(|i, _| indices.contains(i));
    let mut todo = Vec::new();
    for (i, name) in present {
        match attached.get_mut(&i) {
            Some((n, _)) => *n = name,
            None => todo.push((i, name)),
        }
    }
    todo
}

/// Brings a kernel map to `wanted`, given `current` (what it is known to
/// hold): removes keys no longer wanted and inserts changed values,
/// recording in `current` only what succeeded, so failures are retried
/// next time. Returns the first error.
fn sync_map<K: Eq + Hash + Clone, V: PartialEq + Clone>(
    current: &mut HashMap<K, V>,
    wanted: HashMap<K, V>,
    mut insert: impl FnMut(&K, &V) -> Result<(), String>,
    mut remove: impl FnMut(&K) -> Result<(), String>,
) -> Result<(), String> {
    let mut first_err = None;
    let gone: Vec<K> = current
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        match remove(&k) {
            Ok(()) => {
                current.remove(&k);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    for (k, v) in wanted {
        if current.get(&k) == Some(&v) {
            continue;
        }
        match insert(&k, &v) {
            Ok(()) => {
                current.insert(k, v);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Takes map `name` out of the loaded object as the typed map `T`.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, String>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    ebpf.take_map(name)
        .ok_or(format!("map {name} missing"))?
        .try_into()
        .map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_tracked_by_index() {
        let mut attached: HashMap<u32, (String, ())> = HashMap::new();
        let todo = links_to_attach(&mut attached, vec![(2, "l0".into()), (3, "l1".into())]);
        assert_eq!(todo, vec![(2, "l0".to_string()), (3, "l1".to_string())]);
        for (i, n) in todo {
            attached.insert(i, (n, ()));
        }
        // l1 renamed (same index): not attached again, new name kept.
        let todo = links_to_attach(&mut attached, vec![(2, "l0".into()), (3, "wan".into())]);
        assert!(todo.is_empty(), "{todo:?}");
        assert_eq!(attached[&3].0, "wan");
        // l0 deleted and re-created under the same name: a new index.
        let todo = links_to_attach(&mut attached, vec![(7, "l0".into()), (3, "wan".into())]);
        assert_eq!(todo, vec![(7, "l0".to_string())]);
        assert!(!attached.contains_key(&2), "the old link is forgotten");
        assert_eq!(attached.len(), 1);
    }

    #[test]
    fn failed_map_updates_are_retried() {
        let mut current: HashMap<u8, u8> = HashMap::new();
        let mut map: HashMap<u8, u8> = HashMap::new();
        let mut fail_insert = true;
        let mut fail_remove = false;
        let sync = |current: &mut HashMap<u8, u8>,
                    map: &mut HashMap<u8, u8>,
                    wanted: HashMap<u8, u8>,
                    fail_insert: bool,
                    fail_remove: bool| {
            let m = std::cell::RefCell::new(map);
            sync_map(
                current,
                wanted,
                |k, v| {
                    if fail_insert && *k == 1 {
                        return Err("insert".into());
                    }
                    m.borrow_mut().insert(*k, *v);
                    Ok(())
                },
                |k| {
                    if fail_remove {
                        return Err("remove".into());
                    }
                    m.borrow_mut().remove(k);
                    Ok(())
                },
            )
        };
        let wanted = HashMap::from([(1, 10), (2, 20)]);
        let r = sync(
            &mut current,
            &mut map,
            wanted.clone(),
            fail_insert,
            fail_remove,
        );
        assert_eq!(r, Err("insert".into()));
        assert_eq!(current, HashMap::from([(2, 20)]), "only what succeeded");
        fail_insert = false;
        let r = sync(
            &mut current,
            &mut map,
            wanted.clone(),
            fail_insert,
            fail_remove,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(map, wanted, "the failed insert was retried");
        assert_eq!(current, wanted);
        // A failed removal stays recorded and is retried.
        fail_remove = true;
        let r = sync(
            &mut current,
            &mut map,
            HashMap::from([(2, 20)]),
            fail_insert,
            fail_remove,
        );
        assert_eq!(r, Err("remove".into()));
        assert_eq!(current, wanted);
        fail_remove = false;
        let r = sync(
            &mut current,
            &mut map,
            HashMap::from([(2, 20)]),
            fail_insert,
            fail_remove,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(map, HashMap::from([(2, 20)]));
        assert_eq!(current, map);
    }
}
