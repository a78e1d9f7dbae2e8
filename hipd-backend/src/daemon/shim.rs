//! The daemon side of the SOL_SHIM socket API (RFC 6316).
//!
//! # Model
//! A shim *context* is one HIP association (local HIT, peer HIT). Sockets
//! are found by their flow ([`FlowId`]: protocol, identifiers, ports) as
//! the kernel sees them above the shim. Context settings
//! (`SHIM_LOC_*_PREF`, `SHIM_LOCLIST_*`, `SHIM_HOT_STANDBY`,
//! `SHIM_APP_TIMEOUT`, `SHIM_PATHEXPLORE`, `SHIM_FEEDBACK`) are shared by
//! every socket of the context; the last writer wins (RFC 6316 §11.1
//! suggests forking the context instead; HIP has one association per HIT
//! pair, and per-socket control is available through the sticky
//! `SHIM_LOC_*_SEND` options). Socket settings (`*_SEND`, `*_RECV`, send
//! markers) live in a per-flow table read by the data plane.
//!
//! # Effect on packets
//! * **Preferences** move the context: `SHIM_LOC_PEER_PREF` makes the
//!   preferred peer locator the association's destination (verified first
//!   when it is UNVERIFIED); unless a local preference is set, the source
//!   becomes the address the kernel would use towards it, and is announced
//!   to the peer as our preferred locator (LOCATOR_SET with the P bit), so
//!   the peer's traffic follows. Application preferences beat the peer's
//!   announced ones (§11.3): when an UPDATE from the peer moves the path
//!   elsewhere, the application's choice is re-applied unless failure
//!   detection found it unreachable.
//! * **Sticky SEND** options and **per-datagram markers** choose the outer
//!   addresses of that socket's packets in the TUN thread; the SA is the
//!   association's (ESP is demultiplexed by SPI, any address pair works).
//! * **RECV**: the receive path records, per registered flow, the pair each
//!   packet arrived on, and for datagram sockets with RECV on inserts a
//!   [`shimtag`](crate::shimtag) option into that very packet.
//! * **Loclists** restrict the pairs the context may use (and order them);
//!   failure detection only explores allowed pairs.
//!
//! # Ownership
//! Every `Shim*` request is checked against the socket's owner: the uid of
//! the kernel socket with the flow's addresses and ports (a sock_diag
//! query) must equal the caller's (root may act on any
//! socket). Context-wide settings (see Model) move every socket of the
//! context, so a user other than root may set them only while all TCP and
//! UDP sockets between the context's HITs (or LSIs) are that user's (a
//! sock_diag dump); otherwise `EPERM`. Per-flow state is dropped when the
//! control connection that registered it closes or on `ShimRelease`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hip_proto::engine::{LocatorState, State};
use hip_proto::wire::Hit;

use super::{Core, DataPlane, Path, Shared, state_name};
use crate::control::{
    ErrorCode, FlowId, LocPref, LocState, PathExplore, Reply, Request, Response, SHIM_MAX_LOCATORS,
    ShimContextInfo, ShimLocInfo, ShimSetting, ShimSocketInfo,
};
use crate::shimtag;

/// The index in `Core::eps` of the engine whose associations run over UDP
/// encapsulation (`build_engines` makes the native one first).
const UDP_ENGINE: usize = 1;

/// A flow keyed by HITs (LSI flows are mapped to their HITs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct FlowKey {
    pub proto: u8,
    pub local: Hit,
    pub lport: u16,
    pub peer: Hit,
    pub pport: u16,
}

/// Per-socket state read by the data plane.
#[derive(Debug, Default)]
pub(super) struct FlowDp {
    /// Sticky send override: (src, dst) with either side resolved at set
    /// time; `None` = off.
    pub sticky: Mutex<StickySend>,
    /// Per-datagram markers: index = token.
    pub tokens: Mutex<Vec<Option<(IpAddr, IpAddr)>>>,
    /// Traffic class restored in marked datagrams.
    pub base_tclass: std::sync::atomic::AtomicU8,
    pub recv_local: AtomicBool,
    pub recv_peer: AtomicBool,
    /// The pair (local, peer) the latest packet arrived on.
    pub last_rx: Mutex<Option<(IpAddr, IpAddr)>>,
    /// Control connections holding this registration.
    pub refs: AtomicUsize,
}

/// The sticky `SHIM_LOC_*_SEND` settings of a socket.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StickySend {
    pub local: Option<IpAddr>,
    pub peer: Option<IpAddr>,
    /// Source to use with `peer` when `local` is not set.
    pub src_for_peer: Option<IpAddr>,
    /// Destination to use with `local` when `peer` is not set and the
    /// context's destination has another family.
    pub dst_for_local: Option<IpAddr>,
}

impl StickySend {
    fn active(&self) -> bool {
        self.local.is_some() || self.peer.is_some()
    }
}

/// Per-context settings.
#[derive(Debug, Default, Clone)]
pub(super) struct ShimCtx {
    pub local_prefs: HashMap<IpAddr, (u16, u16)>,
    pub peer_prefs: HashMap<IpAddr, (u16, u16)>,
    pub loclist_local: Option<Vec<LocPref>>,
    pub loclist_peer: Option<Vec<LocPref>>,
    pub hot_standby: bool,
    pub app_timeout_secs: u32,
    pub app_timeout_ms: u32,
    pub path_explore: Option<PathExplore>,
    pub switches: u64,
    /// Peer locators failure detection found unreachable.
    pub unreachable: Vec<IpAddr>,
}

type ShimResult<T> = Result<T, (ErrorCode, String)>;

fn err<T>(code: ErrorCode, m: impl Into<String>) -> ShimResult<T> {
    Err((code, m.into()))
}

/// Best locator by RFC 6316 preference: lowest prio, then highest weight;
/// only locators with an explicit preference count.
pub(super) fn best_pref(
    prefs: &HashMap<IpAddr, (u16, u16)>,
    cands: impl Iterator<Item = IpAddr>,
) -> Option<IpAddr> {
    let mut best: Option<(u16, u16, IpAddr)> = None;
    for a in cands {
        if let Some(&(p, w)) = prefs.get(&a)
            && best.is_none_or(|(bp, bw, _)| p < bp || (p == bp && w > bw))
        {
            best = Some((p, w, a));
        }
    }
    best.map(|b| b.2)
}

/// The uid owning the connected socket of `flow` (in the daemon's network
/// namespace): one exact sock_diag lookup, see [`super::sockdiag`].
pub(super) fn socket_owner(flow: &FlowId) -> Option<u32> {
    super::sockdiag::socket_owner(flow)
}

fn loc_state(s: LocatorState) -> LocState {
    match s {
        LocatorState::Active => LocState::Verified,
        LocatorState::Unverified => LocState::Unverified,
        LocatorState::Deprecated => LocState::Deprecated,
    }
}

impl Shared {
    /// Maps a flow's identifiers (HITs or LSIs) to HITs.
    fn flow_key(&self, flow: &FlowId) -> ShimResult<FlowKey> {
        if flow.proto != 6 && flow.proto != 17 {
            return err(ErrorCode::InvalidArgument, "only TCP and UDP sockets");
        }
        if flow.local.is_ipv4() != flow.peer.is_ipv4() {
            return err(ErrorCode::InvalidArgument, "mixed address families");
        }
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        let (local, peer) = match (flow.local, flow.peer) {
            (IpAddr::V6(l), IpAddr::V6(p)) => {
                let (l, p) = (Hit::from(l), Hit::from(p));
                if !p.is_orchid_v2() || !dp.local_hit_lsi.contains_key(&l) {
                    return err(ErrorCode::NoContext, "not a HIT flow of this host");
                }
                (l, p)
            }
            (IpAddr::V4(l), IpAddr::V4(p)) => match (dp.local_lsi.get(&l), dp.lsi_peer.get(&p)) {
                (Some(l), Some(p)) => (*l, *p),
                _ => return err(ErrorCode::NoContext, "not an LSI flow of this host"),
            },
            _ => return err(ErrorCode::InvalidArgument, "mixed address families"),
        };
        Ok(FlowKey {
            proto: flow.proto,
            local,
            lport: flow.local_port,
            peer,
            pport: flow.peer_port,
        })
    }

    /// Engine index of the live association (local, peer).
    fn shim_assoc(core: &Core, local: Hit, peer: Hit) -> Option<usize> {
        core.eps.iter().position(|ep| {
            ep.association_by_peer(peer).is_some_and(|a| {
                a.local_hit() == local && matches!(a.state(), State::Established | State::R2Sent)
            })
        })
    }

    /// The pair the data plane uses for the association now.
    pub(super) fn ctx_path(&self, local: Hit, peer: Hit) -> Option<(IpAddr, IpAddr)> {
        let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
        dp.out.get(&(local, peer)).map(|o| {
            let p = *o.path.lock().unwrap_or_else(|p| p.into_inner());
            (p.src, p.dst)
        })
    }

    /// The context as the API reports it.
    pub(super) fn shim_ctx_info(
        &self,
        core: &Core,
        local: Hit,
        peer: Hit,
        flow: Option<&FlowDp>,
    ) -> Option<ShimContextInfo> {
        let ep = Self::shim_assoc(core, local, peer)?;
        let a = core.eps[ep].association_by_peer(peer)?;
        let view = core.eps[ep].locators(peer)?;
        let ctx = core.shim.get(&(local, peer)).cloned().unwrap_or_default();
        let path = self.ctx_path(local, peer).or(view.path);
        // lc_proto / lc_port: the association's underlay (engine 1 runs
        // over UDP, RFC 5770/9028 framing, on both ends' configured port).
        let (lc_proto, lc_port) = if ep == UDP_ENGINE {
            (17, self.opts.udp_port)
        } else {
            (0, 0)
        };
        let allowed = |list: &Option<Vec<LocPref>>, a: IpAddr| {
            list.as_ref().is_none_or(|l| l.iter().any(|x| x.addr == a))
        };
        let mut local_v: Vec<ShimLocInfo> = view
            .local
            .iter()
            .map(|l| {
                let (prio, weight) = ctx
                    .local_prefs
                    .get(&l.addr)
                    .copied()
                    .unwrap_or((u16::MAX, 0));
                ShimLocInfo {
                    addr: l.addr,
                    prio,
                    weight,
                    ifindex: l.ifindex,
                    flags: 0,
                    proto: lc_proto,
                    port: lc_port,
                    state: LocState::Local,
                    in_use: path.is_some_and(|p| p.0 == l.addr),
                    allowed: allowed(&ctx.loclist_local, l.addr),
                    preferred: l.preferred,
                }
            })
            .collect();
        let mut peer_v: Vec<ShimLocInfo> = view
            .peer
            .iter()
            .map(|l| {
                let (prio, weight) = ctx
                    .peer_prefs
                    .get(&l.addr)
                    .copied()
                    .unwrap_or((u16::MAX, 0));
                let state = if ctx.unreachable.contains(&l.addr) {
                    LocState::Unreachable
                } else {
                    loc_state(l.state)
                };
                ShimLocInfo {
                    addr: l.addr,
                    prio,
                    weight,
                    ifindex: 0,
                    flags: 0,
                    proto: lc_proto,
                    port: lc_port,
                    state,
                    in_use: path.is_some_and(|p| p.1 == l.addr),
                    allowed: allowed(&ctx.loclist_peer, l.addr),
                    preferred: l.preferred,
                }
            })
            .collect();
        // A set loclist orders the list.
        let order = |v: &mut Vec<ShimLocInfo>, list: &Option<Vec<LocPref>>| {
            if let Some(list) = list {
                v.sort_by_key(|x| {
                    list.iter()
                        .position(|l| l.addr == x.addr)
                        .unwrap_or(usize::MAX)
                });
            }
        };
        order(&mut local_v, &ctx.loclist_local);
        order(&mut peer_v, &ctx.loclist_peer);
        let (reap_state, standby, send_timeout_ms, effective_explore, keepalive_ms) =
            self.reap_report(core, local, peer, &ctx);
        let socket = flow
            .map(|f| {
                let s = *f.sticky.lock().unwrap_or_else(|p| p.into_inner());
                ShimSocketInfo {
                    local_send: s.local,
                    peer_send: s.peer,
                    local_recv: f.recv_local.load(Ordering::Relaxed),
                    peer_recv: f.recv_peer.load(Ordering::Relaxed),
                    last_rx: *f.last_rx.lock().unwrap_or_else(|p| p.into_inner()),
                }
            })
            .unwrap_or_default();
        Some(ShimContextInfo {
            local_hit: local.into(),
            peer_hit: peer.into(),
            state: state_name(a.state()).into(),
            local: local_v,
            peer: peer_v,
            path,
            standby,
            loclist_local_set: ctx.loclist_local.is_some(),
            loclist_peer_set: ctx.loclist_peer.is_some(),
            hot_standby: ctx.hot_standby,
            // A timeout set in milliseconds (SHIM_APP_TIMEOUT_MS) reads
            // back rounded up to whole seconds, never as 0 ("default").
            app_timeout_secs: if ctx.app_timeout_ms != 0 {
                ctx.app_timeout_ms.div_ceil(1000)
            } else {
                ctx.app_timeout_secs
            },
            send_timeout_ms,
            path_explore: ctx.path_explore,
            effective_explore,
            keepalive_timeout_ms: keepalive_ms.0,
            keepalive_interval_ms: keepalive_ms.1,
            reap_state,
            switches: ctx.switches,
            socket,
        })
    }

    fn flow_dp(&self, key: &FlowKey) -> Option<Arc<FlowDp>> {
        self.dp
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .flows
            .get(key)
            .cloned()
    }

    /// Registers the flow for the calling connection.
    fn register_flow(&self, key: FlowKey, conn_flows: &mut Vec<FlowKey>) -> Arc<FlowDp> {
        let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
        let f = dp.flows.entry(key).or_default().clone();
        if !conn_flows.contains(&key) {
            conn_flows.push(key);
            f.refs.fetch_add(1, Ordering::Relaxed);
        }
        f
    }

    /// Drops the registrations of a closed control connection.
    pub(super) fn release_flows(&self, conn_flows: &[FlowKey]) {
        let mut dp = self.dp.write().unwrap_or_else(|p| p.into_inner());
        for k in conn_flows {
            if let Some(f) = dp.flows.get(k)
                && f.refs.fetch_sub(1, Ordering::Relaxed) <= 1
            {
                dp.flows.remove(k);
            }
        }
    }

    /// Handles one `Shim*` request from a connection of user `uid`.
    pub(super) fn shim_dispatch(
        &self,
        req: Request,
        uid: Option<u32>,
        conn_flows: &mut Vec<FlowKey>,
    ) -> Reply {
        let r = match req {
            Request::ShimList { hit } => {
                let core = self.lock_core();
                let mut ctxs = Vec::new();
                let mut pairs: Vec<(Hit, Hit)> = Vec::new();
                for ep in &core.eps {
                    for a in ep.associations() {
                        if let Some(p) = a.peer_hit()
                            && hit.is_none_or(|h| Hit::from(h) == p)
                            && !pairs.contains(&(a.local_hit(), p))
                        {
                            pairs.push((a.local_hit(), p));
                        }
                    }
                }
                for (l, p) in pairs {
                    if let Some(c) = self.shim_ctx_info(&core, l, p, None) {
                        ctxs.push(c);
                    }
                }
                Ok(Response::ShimContexts { ctxs })
            }
            Request::ShimGet { flow } => self.check_owner(&flow, uid).and_then(|key| {
                let f = self.flow_dp(&key);
                let core = self.lock_core();
                self.shim_ctx_info(&core, key.local, key.peer, f.as_deref())
                    .map(|ctx| Response::ShimContext { ctx })
                    .ok_or((
                        ErrorCode::NoContext,
                        "no shim context for this socket".into(),
                    ))
            }),
            Request::ShimRelease { flow } => self.check_owner(&flow, uid).map(|key| {
                if let Some(i) = conn_flows.iter().position(|k| *k == key) {
                    let k = conn_flows.remove(i);
                    self.release_flows(&[k]);
                }
                Response::Done {
                    message: "released".into(),
                }
            }),
            Request::ShimSet { flow, set } => self
                .check_owner(&flow, uid)
                .and_then(|key| self.check_context_owner(key, &set, uid).map(|()| key))
                .and_then(|key| self.shim_set(key, set, conn_flows)),
            Request::ShimSendToken {
                flow,
                local,
                peer,
                base_tclass,
            } => self
                .check_owner(&flow, uid)
                .and_then(|key| self.shim_token(key, local, peer, base_tclass, conn_flows)),
            _ => err(ErrorCode::BadRequest, "not a shim request"),
        };
        match r {
            Ok(d) => Reply::ok(d),
            Err((c, m)) => Reply::err(c, m),
        }
    }

    fn check_owner(&self, flow: &FlowId, uid: Option<u32>) -> ShimResult<FlowKey> {
        let key = self.flow_key(flow)?;
        match socket_owner(flow) {
            None => err(
                ErrorCode::NoContext,
                "no connected socket with these addresses and ports",
            ),
            Some(owner) if uid == Some(0) || uid == Some(owner) => Ok(key),
            Some(_) => err(
                ErrorCode::PermissionDenied,
                "permission denied: the socket belongs to another user",
            ),
        }
    }

    /// Context-wide settings (preferences, loclists, hot standby,
    /// application timeout, path exploration, feedback) change the path of
    /// every socket of the association: a user other than root may change
    /// them only while no socket of another user talks over that context
    /// (TCP or UDP between the local HIT or LSI and the peer's; a
    /// sock_diag dump). The sticky per-socket options (`*_SEND`, `*_RECV`)
    /// stay open to the socket's owner.
    fn check_context_owner(
        &self,
        key: FlowKey,
        set: &ShimSetting,
        uid: Option<u32>,
    ) -> ShimResult<()> {
        let per_socket = matches!(
            set,
            ShimSetting::LocalSend { .. }
                | ShimSetting::PeerSend { .. }
                | ShimSetting::LocalRecv { .. }
                | ShimSetting::PeerRecv { .. }
        );
        let Some(uid) = uid else {
            return err(
                ErrorCode::PermissionDenied,
                "permission denied: unknown caller",
            );
        };
        if per_socket || uid == 0 {
            return Ok(());
        }
        let mut locals: Vec<IpAddr> = vec![IpAddr::V6(key.local.into())];
        let mut peers: Vec<IpAddr> = vec![IpAddr::V6(key.peer.into())];
        {
            let dp = self.dp.read().unwrap_or_else(|p| p.into_inner());
            locals.extend(dp.local_hit_lsi.get(&key.local).map(|l| IpAddr::V4(*l)));
            peers.extend(dp.peer_lsi.get(&key.peer).map(|l| IpAddr::V4(*l)));
        }
        match super::sockdiag::owners_between(&locals, &peers) {
            Ok(owners) if owners.iter().all(|o| *o == uid) => Ok(()),
            Ok(_) => err(
                ErrorCode::PermissionDenied,
                "permission denied: another user's sockets share this context (HIT pair); \
                 only root may change its settings",
            ),
            Err(e) => err(
                ErrorCode::Failed,
                format!("cannot list the context's sockets: {e}"),
            ),
        }
    }

    /// Validates a local locator of the context.
    fn check_local(core: &Core, ep: usize, peer: Hit, addr: IpAddr) -> ShimResult<()> {
        let view = core.eps[ep].locators(peer);
        if view.is_some_and(|v| v.local.iter().any(|l| l.addr == addr)) {
            Ok(())
        } else {
            err(
                ErrorCode::InvalidLocator,
                format!("{addr} is not a local locator of this context"),
            )
        }
    }

    /// Validates a peer locator for sending: usable
    /// ([`Self::check_peer_usable`]) and verified; an UNVERIFIED one is
    /// probed now (an answered probe verifies it) and refused until then.
    fn check_peer_send(
        core: &mut Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        addr: IpAddr,
    ) -> ShimResult<()> {
        Self::check_peer_usable(core, ep, local, peer, addr)?;
        let unverified = core.eps[ep].locators(peer).is_some_and(|v| {
            v.peer
                .iter()
                .any(|l| l.addr == addr && l.state == LocatorState::Unverified)
        });
        if !unverified {
            return Ok(());
        }
        if let Some(src) = super::net::route_source(addr) {
            let _ = core.eps[ep].probe(Instant::now(), peer, src, addr);
        }
        err(
            ErrorCode::UnverifiedLocator,
            format!("{addr} is being verified; retry later"),
        )
    }

    fn shim_set(
        &self,
        key: FlowKey,
        set: ShimSetting,
        conn_flows: &mut Vec<FlowKey>,
    ) -> ShimResult<Response> {
        let (local, peer) = (key.local, key.peer);
        let mut core = self.lock_core();
        let Some(ep) = Self::shim_assoc(&core, local, peer) else {
            return err(ErrorCode::NoContext, "no shim context for this socket");
        };
        let now = Instant::now();
        match set {
            ShimSetting::LocalPref { loc } => {
                Self::check_local(&core, ep, peer, loc.addr)?;
                self.change_prefs(&mut core, ep, local, peer, now, |c| {
                    c.local_prefs.insert(loc.addr, (loc.prio, loc.weight));
                })?;
            }
            ShimSetting::PeerPref { loc } => {
                Self::check_peer_usable(&core, ep, local, peer, loc.addr)?;
                self.change_prefs(&mut core, ep, local, peer, now, |c| {
                    c.peer_prefs.insert(loc.addr, (loc.prio, loc.weight));
                })?;
            }
            ShimSetting::LocalSend { addr } => {
                // Everything is checked before the sticky pair changes: a
                // refused set leaves the previous one in force.
                let mut dst_for_local = None;
                if let Some(a) = addr {
                    Self::check_local(&core, ep, peer, a)?;
                    // A destination of the same family when the context's
                    // is of the other one.
                    dst_for_local = core.eps[ep].locators(peer).and_then(|v| {
                        v.peer
                            .iter()
                            .find(|l| {
                                l.state == LocatorState::Active && l.addr.is_ipv4() == a.is_ipv4()
                            })
                            .map(|l| l.addr)
                    });
                }
                drop(core);
                if let Some(a) = addr
                    && dst_for_local.is_none()
                {
                    let sticky_peer = self.flow_dp(&key).is_some_and(|f| {
                        f.sticky
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .peer
                            .is_some()
                    });
                    if !sticky_peer {
                        return err(
                            ErrorCode::InvalidLocator,
                            format!("no verified peer locator of the family of {a}"),
                        );
                    }
                }
                let f = self.register_flow(key, conn_flows);
                let mut s = f.sticky.lock().unwrap_or_else(|p| p.into_inner());
                s.local = addr;
                s.dst_for_local = dst_for_local;
                drop(s);
                return self.reply_ctx(key, Some(&f));
            }
            ShimSetting::PeerSend { addr } => {
                if let Some(a) = addr {
                    Self::check_peer_send(&mut core, ep, local, peer, a)?;
                }
                let src = addr.and_then(|a| {
                    super::net::route_source(a).filter(|s| {
                        core.eps[ep]
                            .locators(peer)
                            .is_some_and(|v| v.local.iter().any(|l| l.addr == *s))
                    })
                });
                self.pump(&mut core);
                drop(core);
                let f = self.register_flow(key, conn_flows);
                let mut s = f.sticky.lock().unwrap_or_else(|p| p.into_inner());
                s.peer = addr;
                s.src_for_peer = src;
                drop(s);
                return self.reply_ctx(key, Some(&f));
            }
            ShimSetting::LocalRecv { on } | ShimSetting::PeerRecv { on } => {
                let is_local = matches!(set, ShimSetting::LocalRecv { .. });
                drop(core);
                let f = self.register_flow(key, conn_flows);
                if is_local {
                    f.recv_local.store(on, Ordering::Relaxed);
                } else {
                    f.recv_peer.store(on, Ordering::Relaxed);
                }
                return self.reply_ctx(key, Some(&f));
            }
            ShimSetting::LoclistLocal { locs } => {
                let set = Self::check_loclist(&core, ep, local, peer, locs, true)?;
                self.change_prefs(&mut core, ep, local, peer, now, set)?;
            }
            ShimSetting::LoclistPeer { locs } => {
                let set = Self::check_loclist(&core, ep, local, peer, locs, false)?;
                self.change_prefs(&mut core, ep, local, peer, now, set)?;
            }
            ShimSetting::HotStandby { on } => {
                core.shim.entry((local, peer)).or_default().hot_standby = on;
                self.reap_params_changed(&mut core, local, peer, now);
            }
            ShimSetting::AppTimeout { secs } => {
                if secs > 3600 {
                    return err(ErrorCode::InvalidArgument, "SHIM_APP_TIMEOUT above 3600 s");
                }
                let c = core.shim.entry((local, peer)).or_default();
                c.app_timeout_secs = secs;
                c.app_timeout_ms = 0;
                self.reap_params_changed(&mut core, local, peer, now);
            }
            ShimSetting::AppTimeoutMs { ms } => {
                if ms != 0 && !(20..=3_600_000).contains(&ms) {
                    return err(
                        ErrorCode::InvalidArgument,
                        "SHIM_APP_TIMEOUT_MS must be 0 or 20..=3600000",
                    );
                }
                let c = core.shim.entry((local, peer)).or_default();
                c.app_timeout_ms = ms;
                c.app_timeout_secs = 0;
                self.reap_params_changed(&mut core, local, peer, now);
            }
            ShimSetting::PathExplore { pe } => {
                if let Some(p) = pe
                    && (p.probenum > 64 || (p.initprobeto != 0 && p.initprobeto < 10))
                {
                    return err(
                        ErrorCode::InvalidArgument,
                        "pe_probenum above 64 or pe_initprobeto below 10 ms",
                    );
                }
                core.shim.entry((local, peer)).or_default().path_explore = pe;
                self.reap_params_changed(&mut core, local, peer, now);
            }
            ShimSetting::Feedback {
                direction,
                indicator,
            } => {
                if direction > 1 || indicator > 3 {
                    return err(ErrorCode::InvalidArgument, "bad shim_feedback values");
                }
                if indicator != 0 {
                    self.reap_feedback(&mut core, local, peer, indicator != 3, now);
                }
            }
        }
        self.pump(&mut core);
        let f = self.flow_dp(&key);
        self.shim_ctx_info(&core, local, peer, f.as_deref())
            .map(|ctx| Response::ShimContext { ctx })
            .ok_or((ErrorCode::NoContext, "the context went away".into()))
    }

    /// Changes the context's preferences with `change` and applies them;
    /// if applying fails, the settings are put back as they were (and, if
    /// the association had been changed half-way, the previous
    /// preferences applied again), so a refused `setsockopt` changes
    /// nothing.
    fn change_prefs(
        &self,
        core: &mut Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        now: Instant,
        change: impl FnOnce(&mut ShimCtx),
    ) -> ShimResult<()> {
        let before = core.shim.get(&(local, peer)).cloned();
        change(core.shim.entry((local, peer)).or_default());
        let Err(e) = self.apply_prefs(core, ep, local, peer, now) else {
            return Ok(());
        };
        match before {
            Some(c) => core.shim.insert((local, peer), c),
            None => core.shim.remove(&(local, peer)),
        };
        if e.0 == ErrorCode::Failed {
            // The engine refused a step after an earlier one may have
            // taken: go back to what the previous settings choose.
            let _ = self.apply_prefs(core, ep, local, peer, now);
        }
        Err(e)
    }

    /// A peer locator a preference may name: known, not expired
    /// (`Deprecated`, as for `SHIM_LOC_PEER_SEND`) and not found
    /// unreachable by failure detection.
    fn check_peer_usable(
        core: &Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        addr: IpAddr,
    ) -> ShimResult<()> {
        let state = core.eps[ep]
            .locators(peer)
            .and_then(|v| v.peer.iter().find(|l| l.addr == addr).map(|l| l.state));
        match state {
            None => err(
                ErrorCode::InvalidLocator,
                format!("{addr} is not a locator of the peer"),
            ),
            Some(LocatorState::Deprecated) => {
                err(ErrorCode::UnreachableLocator, format!("{addr} has expired"))
            }
            Some(_)
                if core
                    .shim
                    .get(&(local, peer))
                    .is_some_and(|c| c.unreachable.contains(&addr)) =>
            {
                err(
                    ErrorCode::UnreachableLocator,
                    format!("{addr} was found unreachable"),
                )
            }
            Some(_) => Ok(()),
        }
    }

    /// `SHIM_LOCLIST_LOCAL` / `SHIM_LOCLIST_PEER` set: every entry must be
    /// a locator of the context, and a peer list must name at least one
    /// usable locator (not expired, not found unreachable:
    /// `EUNREACHABLELOCATOR` otherwise); the entries' prio/weight become
    /// the preferences; an empty list lifts the restriction. Returns the
    /// change to make (see [`Self::change_prefs`]).
    fn check_loclist(
        core: &Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        locs: Vec<LocPref>,
        is_local: bool,
    ) -> ShimResult<impl FnOnce(&mut ShimCtx) + use<>> {
        if locs.len() > SHIM_MAX_LOCATORS {
            return err(ErrorCode::TooManyLocators, "more than SHIM_MAX_LOCATORS");
        }
        let view = core.eps[ep].locators(peer);
        for l in &locs {
            let known = view.as_ref().is_some_and(|v| {
                if is_local {
                    v.local.iter().any(|x| x.addr == l.addr)
                } else {
                    v.peer.iter().any(|x| x.addr == l.addr)
                }
            });
            if !known {
                let side = if is_local { "local" } else { "peer" };
                return err(
                    ErrorCode::InvalidLocator,
                    format!("{} is not a {side} locator of this context", l.addr),
                );
            }
        }
        if !is_local
            && !locs.is_empty()
            && !locs
                .iter()
                .any(|l| Self::check_peer_usable(core, ep, local, peer, l.addr).is_ok())
        {
            return err(
                ErrorCode::UnreachableLocator,
                "no locator of the list is usable (expired or found unreachable)",
            );
        }
        Ok(move |c: &mut ShimCtx| {
            let (prefs, list) = if is_local {
                (&mut c.local_prefs, &mut c.loclist_local)
            } else {
                (&mut c.peer_prefs, &mut c.loclist_peer)
            };
            if locs.is_empty() {
                *list = None;
            } else {
                for l in &locs {
                    prefs.insert(l.addr, (l.prio, l.weight));
                }
                *list = Some(locs);
            }
        })
    }

    fn reply_ctx(&self, key: FlowKey, f: Option<&FlowDp>) -> ShimResult<Response> {
        let core = self.lock_core();
        self.shim_ctx_info(&core, key.local, key.peer, f)
            .map(|ctx| Response::ShimContext { ctx })
            .ok_or((ErrorCode::NoContext, "the context went away".into()))
    }

    fn shim_token(
        &self,
        key: FlowKey,
        local: Option<IpAddr>,
        peer: Option<IpAddr>,
        base_tclass: u8,
        conn_flows: &mut Vec<FlowKey>,
    ) -> ShimResult<Response> {
        if key.proto != 17 {
            return err(
                ErrorCode::NotSupported,
                "per-datagram locators need a datagram socket",
            );
        }
        let (l, p) = (key.local, key.peer);
        let mut core = self.lock_core();
        let Some(ep) = Self::shim_assoc(&core, l, p) else {
            return err(ErrorCode::NoContext, "no shim context for this socket");
        };
        if let Some(a) = local {
            Self::check_local(&core, ep, p, a)?;
        }
        if let Some(a) = peer {
            Self::check_peer_send(&mut core, ep, l, p, a)?;
        }
        let cur = self.ctx_path(l, p);
        let view = core.eps[ep].locators(p);
        let dst = match (peer, local) {
            (Some(d), _) => d,
            (None, Some(s)) => match cur {
                Some((_, d)) if d.is_ipv4() == s.is_ipv4() => d,
                _ => view
                    .as_ref()
                    .and_then(|v| {
                        v.peer
                            .iter()
                            .find(|x| {
                                x.state == LocatorState::Active && x.addr.is_ipv4() == s.is_ipv4()
                            })
                            .map(|x| x.addr)
                    })
                    .ok_or((
                        ErrorCode::InvalidLocator,
                        format!("no verified peer locator of the family of {s}"),
                    ))?,
            },
            (None, None) => return err(ErrorCode::InvalidArgument, "no locator given"),
        };
        let src = match local {
            Some(s) => s,
            None => super::net::route_source(dst)
                .filter(|s| {
                    view.as_ref()
                        .is_some_and(|v| v.local.iter().any(|l| l.addr == *s))
                })
                .or(cur.map(|c| c.0).filter(|s| s.is_ipv4() == dst.is_ipv4()))
                .ok_or((
                    ErrorCode::InvalidLocator,
                    format!("no local locator reaches {dst}"),
                ))?,
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return err(
                ErrorCode::InvalidLocator,
                "source and destination locators of different families",
            );
        }
        self.pump(&mut core);
        drop(core);
        let f = self.register_flow(key, conn_flows);
        f.base_tclass.store(base_tclass, Ordering::Relaxed);
        let mut t = f.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_empty() {
            t.resize(usize::from(shimtag::MAX_TOKEN) + 1, None);
        }
        let want = Some((src, dst));
        // Tokens whose marker equals the socket's own class are skipped.
        let base_token = shimtag::tclass_token(base_tclass);
        let token = match t.iter().position(|x| *x == want) {
            Some(i) => i,
            None => (1..t.len())
                .find(|&i| t[i].is_none() && i != usize::from(base_token))
                .ok_or((
                    ErrorCode::TooManyLocators,
                    "all 63 send markers are in use".to_string(),
                ))?,
        };
        t[token] = want;
        Ok(Response::ShimToken {
            token: u8::try_from(token).unwrap_or(0),
        })
    }

    /// Re-applies the application's preferences (and loclists) to the
    /// association: moves the path to the best allowed pair.
    pub(super) fn apply_prefs(
        &self,
        core: &mut Core,
        ep: usize,
        local: Hit,
        peer: Hit,
        now: Instant,
    ) -> ShimResult<()> {
        let Some(view) = core.eps[ep].locators(peer) else {
            return err(ErrorCode::NoContext, "association gone");
        };
        let ctx = core.shim.get(&(local, peer)).cloned().unwrap_or_default();
        let allowed_peer = |a: IpAddr| {
            ctx.loclist_peer
                .as_ref()
                .is_none_or(|l| l.iter().any(|x| x.addr == a))
        };
        let allowed_local = |a: IpAddr| {
            ctx.loclist_local
                .as_ref()
                .is_none_or(|l| l.iter().any(|x| x.addr == a))
        };
        let usable_peer: Vec<IpAddr> = view
            .peer
            .iter()
            .filter(|l| l.state != LocatorState::Deprecated)
            .filter(|l| !ctx.unreachable.contains(&l.addr))
            .map(|l| l.addr)
            .filter(|a| allowed_peer(*a))
            .collect();
        let cur = self.ctx_path(local, peer).or(view.path);
        // Destination: the best by preference; else keep the current one if
        // allowed; else the first allowed in loclist order.
        let dst = best_pref(&ctx.peer_prefs, usable_peer.iter().copied())
            .or(cur.map(|c| c.1).filter(|d| usable_peer.contains(d)))
            .or_else(|| {
                ctx.loclist_peer
                    .as_ref()
                    .and_then(|l| l.iter().map(|x| x.addr).find(|a| usable_peer.contains(a)))
            })
            .or_else(|| usable_peer.first().copied());
        let Some(dst) = dst else {
            return err(
                ErrorCode::UnreachableLocator,
                "no usable peer locator left in the context",
            );
        };
        let locals: Vec<IpAddr> = view
            .local
            .iter()
            .map(|l| l.addr)
            .filter(|a| allowed_local(*a) && a.is_ipv4() == dst.is_ipv4())
            .collect();
        let src = best_pref(&ctx.local_prefs, locals.iter().copied())
            .or_else(|| super::net::route_source(dst).filter(|s| locals.contains(s)))
            .or(cur.map(|c| c.0).filter(|s| locals.contains(s)))
            .or_else(|| locals.first().copied());
        let Some(src) = src else {
            return err(
                ErrorCode::InvalidLocator,
                format!("no allowed local locator of the family of {dst}"),
            );
        };
        if cur == Some((src, dst)) {
            return Ok(());
        }
        let peer_pref_now = view.peer.iter().any(|l| l.addr == dst && l.preferred);
        if !peer_pref_now || cur.map(|c| c.1) != Some(dst) {
            core.eps[ep]
                .set_peer_preferred(now, peer, dst)
                .map_err(|e| (ErrorCode::Failed, e.to_string()))?;
        }
        let local_pref_now = view.local.iter().any(|l| l.addr == src && l.preferred);
        if !local_pref_now {
            core.eps[ep]
                .set_local_preferred(now, peer, src)
                .map_err(|e| (ErrorCode::Failed, e.to_string()))?;
        }
        core.shim.entry((local, peer)).or_default().switches += 1;
        tracing::info!(%peer, %src, %dst, "shim: preferences applied");
        Ok(())
    }
}

// ------------------------------------------------------------- data plane

/// L4 protocol and ports of an IPv6 packet without extension headers.
fn l4_ports(pkt: &[u8]) -> Option<(u8, u16, u16)> {
    let proto = *pkt.get(6)?;
    if proto != 6 && proto != 17 {
        return None;
    }
    let p = pkt.get(40..44)?;
    Some((
        proto,
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// Outbound: the socket's locator override for this packet, if any. May
/// rewrite the traffic class of a marked datagram.
/// Forgets the per-datagram send markers of the flows between `local`
/// (`None`: any local HIT) and `peer` whose pair names a peer locator for which `gone` holds (found
/// unreachable by failure detection, withdrawn by the peer): their
/// datagrams take the context's path again instead of a dead or withdrawn
/// locator, and the library, which re-asks for a marker after
/// `shimapi::TOKEN_RECHECK`, gets the RFC 6316 error for the pair then.
/// Returns how many markers were forgotten.
pub(super) fn forget_markers_to(
    dp: &DataPlane,
    local: Option<Hit>,
    peer: Hit,
    gone: impl Fn(IpAddr) -> bool,
) -> usize {
    let mut n = 0;
    for (k, f) in &dp.flows {
        if local.is_some_and(|l| k.local != l) || k.peer != peer {
            continue;
        }
        let mut tokens = f.tokens.lock().unwrap_or_else(|p| p.into_inner());
        for t in tokens.iter_mut() {
            if t.is_some_and(|(_, dst)| gone(dst)) {
                *t = None;
                n += 1;
            }
        }
    }
    n
}

pub(super) fn out_override(
    dp: &DataPlane,
    inner: &mut [u8],
    local: Hit,
    peer: Hit,
    ctx: &Path,
) -> Option<Path> {
    if dp.flows.is_empty() {
        return None;
    }
    let (proto, sport, dport) = l4_ports(inner)?;
    let f = dp.flows.get(&FlowKey {
        proto,
        local,
        lport: sport,
        peer,
        pport: dport,
    })?;
    if proto == 17 {
        let tclass = ((inner[0] & 0x0f) << 4) | (inner[1] >> 4);
        let token = usize::from(shimtag::tclass_token(tclass));
        if token != 0 {
            let pair = f
                .tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(token)
                .copied()
                .flatten();
            if let Some((src, dst)) = pair {
                let base = f.base_tclass.load(Ordering::Relaxed);
                inner[0] = 0x60 | (base >> 4);
                inner[1] = (inner[1] & 0x0f) | (base << 4);
                return Some(Path {
                    src,
                    dst,
                    udp: ctx.udp,
                });
            }
        }
    }
    let s = *f.sticky.lock().unwrap_or_else(|p| p.into_inner());
    if !s.active() {
        return None;
    }
    let (src, dst) = match (s.local, s.peer) {
        (Some(l), Some(p)) => (l, p),
        (None, Some(p)) => (
            s.src_for_peer
                .or(Some(ctx.src).filter(|c| c.is_ipv4() == p.is_ipv4()))?,
            p,
        ),
        (Some(l), None) => (
            l,
            Some(ctx.dst)
                .filter(|d| d.is_ipv4() == l.is_ipv4())
                .or(s.dst_for_local)?,
        ),
        (None, None) => return None,
    };
    Some(Path {
        src,
        dst,
        udp: ctx.udp,
    })
}

/// Inbound: records the arrival pair for a registered flow and, for a
/// datagram socket with RECV on, returns the packet with a receive tag
/// (built in `buf`). `pkt` is the inner IPv6 packet (peer → local).
pub(super) fn in_tag<'a>(
    dp: &DataPlane,
    pkt: &[u8],
    local: Hit,
    peer: Hit,
    outer_local: IpAddr,
    outer_peer: IpAddr,
    buf: &'a mut Vec<u8>,
) -> Option<&'a [u8]> {
    if dp.flows.is_empty() {
        return None;
    }
    let (proto, sport, dport) = l4_ports(pkt)?;
    let f = dp.flows.get(&FlowKey {
        proto,
        local,
        lport: dport,
        peer,
        pport: sport,
    })?;
    *f.last_rx.lock().unwrap_or_else(|p| p.into_inner()) = Some((outer_local, outer_peer));
    if proto != 17 || !(f.recv_local.load(Ordering::Relaxed) || f.recv_peer.load(Ordering::Relaxed))
    {
        return None;
    }
    let plen = u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]);
    let new_len = plen.checked_add(shimtag::TAG_LEN as u16)?;
    buf.clear();
    buf.extend_from_slice(pkt.get(..40)?);
    buf[4..6].copy_from_slice(&new_len.to_be_bytes());
    buf[6] = 60; // Destination Options
    buf.extend_from_slice(&shimtag::dstopts_header(proto, outer_local, outer_peer));
    buf.extend_from_slice(pkt.get(40..)?);
    Some(buf.as_slice())
}

/// Adds the receive tag as IPv4 options to a translated LSI packet
/// (`pkt` has a 20-byte header).
pub(super) fn tag_v4(
    pkt: &[u8],
    outer_local: IpAddr,
    outer_peer: IpAddr,
    out: &mut Vec<u8>,
) -> bool {
    let (Some(h), Some(rest)) = (pkt.get(..20), pkt.get(20..)) else {
        return false;
    };
    let Ok(total) = u16::try_from(pkt.len() + shimtag::TAG_LEN) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(h);
    out[0] = 0x40 | 15;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[10] = 0;
    out[11] = 0;
    out.extend_from_slice(&shimtag::ipv4_options(outer_local, outer_peer));
    let mut acc = 0u32;
    for c in out[..60].chunks_exact(2) {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let c = !(acc as u16);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(rest);
    true
}

/// Whether a flow of an inbound LSI packet asked for a receive tag.
pub(super) fn wants_tag(dp: &DataPlane, pkt6: &[u8], local: Hit, peer: Hit) -> bool {
    let Some((proto, sport, dport)) = l4_ports(pkt6) else {
        return false;
    };
    proto == 17
        && dp
            .flows
            .get(&FlowKey {
                proto,
                local,
                lport: dport,
                peer,
                pport: sport,
            })
            .is_some_and(|f| {
                f.recv_local.load(Ordering::Relaxed) || f.recv_peer.load(Ordering::Relaxed)
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp6(local: Hit, peer: Hit, sport: u16, dport: u16, tclass: u8) -> Vec<u8> {
        let mut p = vec![0x60 | (tclass >> 4), tclass << 4, 0, 0, 0, 12, 17, 64];
        p.extend_from_slice(local.as_bytes());
        p.extend_from_slice(peer.as_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 12, 0xab, 0xcd, 1, 2, 3, 4]);
        p
    }

    #[test]
    fn prefs_pick_lowest_prio_then_highest_weight() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "198.51.100.1".parse().unwrap();
        let c: IpAddr = "203.0.113.1".parse().unwrap();
        let mut p = HashMap::new();
        p.insert(a, (5, 100));
        p.insert(b, (1, 1));
        p.insert(c, (1, 7));
        assert_eq!(best_pref(&p, [a, b, c].into_iter()), Some(c));
        assert_eq!(best_pref(&p, [a].into_iter()), Some(a));
        assert_eq!(best_pref(&HashMap::new(), [a].into_iter()), None);
    }

    #[test]
    fn markers_and_sticky_overrides_choose_the_pair() {
        let local: Hit = "2001:2a::1".parse().unwrap();
        let peer: Hit = "2001:2a::2".parse().unwrap();
        let mut dp = DataPlane::default();
        let f = Arc::new(FlowDp::default());
        let l2: IpAddr = "2001:db8:2::1".parse().unwrap();
        let p2: IpAddr = "2001:db8:2::2".parse().unwrap();
        f.tokens.lock().unwrap().resize(64, None);
        f.tokens.lock().unwrap()[5] = Some((l2, p2));
        f.base_tclass.store(0x20, Ordering::Relaxed);
        dp.flows.insert(
            FlowKey {
                proto: 17,
                local,
                lport: 4000,
                peer,
                pport: 5000,
            },
            f.clone(),
        );
        let ctx = Path {
            src: "2001:db8:1::1".parse().unwrap(),
            dst: "2001:db8:1::2".parse().unwrap(),
            udp: None,
        };
        let mut pkt = udp6(local, peer, 4000, 5000, shimtag::token_tclass(5));
        let o = out_override(&dp, &mut pkt, local, peer, &ctx).unwrap();
        assert_eq!((o.src, o.dst), (l2, p2));
        // The marker was replaced by the socket's own class.
        assert_eq!(((pkt[0] & 0x0f) << 4) | (pkt[1] >> 4), 0x20);
        // Unmarked datagram: no override until a sticky one is set.
        let mut pkt = udp6(local, peer, 4000, 5000, 0);
        assert!(out_override(&dp, &mut pkt, local, peer, &ctx).is_none());
        f.sticky.lock().unwrap().peer = Some(p2);
        f.sticky.lock().unwrap().src_for_peer = Some(l2);
        let o = out_override(&dp, &mut pkt, local, peer, &ctx).unwrap();
        assert_eq!((o.src, o.dst), (l2, p2));
        // Another flow is not affected.
        let mut other = udp6(local, peer, 4001, 5000, 0);
        assert!(out_override(&dp, &mut other, local, peer, &ctx).is_none());
        // The marker's peer locator goes (withdrawn, unreachable): the
        // marker is forgotten, its datagrams take the context's path; an
        // unrelated locator or another peer forgets nothing.
        f.sticky.lock().unwrap().peer = None;
        f.sticky.lock().unwrap().src_for_peer = None;
        let other_peer: Hit = "2001:2a::3".parse().unwrap();
        assert_eq!(forget_markers_to(&dp, None, other_peer, |a| a == p2), 0);
        assert_eq!(forget_markers_to(&dp, Some(local), peer, |a| a == l2), 0);
        assert_eq!(forget_markers_to(&dp, None, peer, |a| a == p2), 1);
        let mut pkt = udp6(local, peer, 4000, 5000, shimtag::token_tclass(5));
        assert!(out_override(&dp, &mut pkt, local, peer, &ctx).is_none());
    }

    #[test]
    fn receive_tags_carry_the_arrival_pair() {
        let local: Hit = "2001:2a::1".parse().unwrap();
        let peer: Hit = "2001:2a::2".parse().unwrap();
        let mut dp = DataPlane::default();
        let f = Arc::new(FlowDp::default());
        dp.flows.insert(
            FlowKey {
                proto: 17,
                local,
                lport: 4000,
                peer,
                pport: 5000,
            },
            f.clone(),
        );
        let ol: IpAddr = "192.0.2.1".parse().unwrap();
        let op: IpAddr = "192.0.2.2".parse().unwrap();
        // Inbound: peer → local.
        let pkt = udp6(peer, local, 5000, 4000, 0);
        let mut buf = Vec::new();
        assert!(in_tag(&dp, &pkt, local, peer, ol, op, &mut buf).is_none());
        assert_eq!(*f.last_rx.lock().unwrap(), Some((ol, op)));
        f.recv_peer.store(true, Ordering::Relaxed);
        let t = in_tag(&dp, &pkt, local, peer, ol, op, &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(t.len(), pkt.len() + shimtag::TAG_LEN);
        assert_eq!(t[6], 60);
        assert_eq!(
            u16::from_be_bytes([t[4], t[5]]) as usize,
            12 + shimtag::TAG_LEN
        );
        assert_eq!(shimtag::find_in_dstopts(&t[40..80]), Some((ol, op)));
        assert_eq!(t[40], 17);
        assert_eq!(&t[80..], &pkt[40..]);
        // IPv4 form.
        let mut v4 = vec![
            0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1,
        ];
        v4.extend_from_slice(&[0u8; 8]);
        let mut out = Vec::new();
        assert!(tag_v4(&v4, ol, op, &mut out));
        assert_eq!(out[0], 0x4f);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]) as usize, out.len());
        assert_eq!(shimtag::find_in_ipv4_options(&out[20..60]), Some((ol, op)));
        let mut acc = 0u32;
        for c in out[..60].chunks_exact(2) {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        assert_eq!(acc, 0xffff, "IPv4 header checksum");
    }
}
