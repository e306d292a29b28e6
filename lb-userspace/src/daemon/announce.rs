//! Carrying out the announcement decision (`crate::announce`): a /32 or /128 route per
//! announced VIP address, `dev lo`, in the routing table of `[announce]`, marked with its
//! protocol number. A routing daemon imports that table (BIRD's kernel protocol with
//! `learn`, FRR's `redistribute table`) and announces its routes to the routers; removing
//! a route withdraws the VIP. Only routes with that table and protocol are ever touched.
//! The host's SNAT addresses get routes the same way while full-NAT VIPs use them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use tokio::sync::Notify;

use super::Daemon;
use crate::{
    announce::{self, Host, SnatWhy, Why},
    config::{AnnounceSettings, VipId},
    netlink::RouteSocket,
};

/// How often the decision is made again without being woken.
const RECHECK: Duration = Duration::from_secs(1);

/// The daemon's announcement state, shared with the API.
pub struct Announcer {
    pub settings: AnnounceSettings,
    started: Instant,
    /// `xlb announce withdraw` is in force.
    pub withdrawn: AtomicBool,
    /// The daemon is stopping and withdraws on stop.
    pub stopping: AtomicBool,
    /// When the withdrawal in force (by the operator or the stop) began.
    draining_since: Mutex<Option<Instant>>,
    /// The last decision per VIP, for status and metrics.
    pub decisions: Mutex<BTreeMap<VipId, Why>>,
    /// The last decision per SNAT address.
    pub snat: Mutex<BTreeMap<IpAddr, SnatWhy>>,
    /// Addresses whose route is installed now.
    pub installed: Mutex<BTreeSet<IpAddr>>,
    wake: Notify,
    /// Notified after each reconciliation.
    pub reconciled: Notify,
}

impl Announcer {
    pub fn new(settings: AnnounceSettings) -> Self {
        Self {
            settings,
            started: Instant::now(),
            withdrawn: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            draining_since: Mutex::new(None),
            decisions: Mutex::new(BTreeMap::new()),
            snat: Mutex::new(BTreeMap::new()),
            installed: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            reconciled: Notify::new(),
        }
    }

    /// Makes the decision again now (after a change, a withdraw or a restore).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn host(&self) -> Host {
        let withdrawn = self.withdrawn.load(Ordering::SeqCst);
        let stopping = self.stopping.load(Ordering::SeqCst);
        let mut since = self.draining_since.lock().expect("draining lock");
        if !(withdrawn || stopping) {
            *since = None;
        } else if since.is_none() {
            *since = Some(Instant::now());
        }
        Host {
            up: self.started.elapsed(),
            withdrawn,
            stopping,
            draining_for: since.map(|t| t.elapsed()),
        }
    }

    /// Whether a SNAT address is still announced (the stop waits for none to be).
    pub fn snat_announced(&self) -> bool {
        self.snat
            .lock()
            .expect("snat lock")
            .values()
            .any(|w| w.announced())
    }
}

/// The route of `addr` in our table with our protocol.
fn route(addr: IpAddr, settings: &AnnounceSettings, lo: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = if addr.is_ipv4() { 32 } else { 128 };
    // Tables above 255 go in RTA_TABLE; the header says "unspecified" then.
    m.header.table = RouteHeader::RT_TABLE_UNSPEC;
    m.header.protocol = RouteProtocol::from(settings.protocol);
    m.header.scope = RouteScope::Link;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Table(settings.table));
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(addr)));
    m.attributes.push(RouteAttribute::Oif(lo));
    m
}

/// The addresses of the routes in our table with our protocol.
async fn installed(
    sock: &mut RouteSocket,
    settings: &AnnounceSettings,
) -> io::Result<BTreeSet<IpAddr>> {
    let mut out = BTreeSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        for m in sock.dump(RouteNetlinkMessage::GetRoute(q)).await? {
            let RouteNetlinkMessage::NewRoute(r) = m else {
                continue;
            };
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != settings.table || u8::from(r.header.protocol) != settings.protocol {
                continue;
            }
            let full = if family == AddressFamily::Inet {
                32
            } else {
                128
            };
            if r.header.destination_prefix_length != full {
                continue;
            }
            if let Some(addr) = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            }) {
                out.insert(addr);
            }
        }
    }
    Ok(out)
}

/// Installs and removes routes until `want` is what the table holds.
async fn reconcile(
    sock: &mut RouteSocket,
    settings: &AnnounceSettings,
    want: &BTreeSet<IpAddr>,
    lo: u32,
) -> io::Result<BTreeSet<IpAddr>> {
    let have = installed(sock, settings).await?;
    for addr in want.difference(&have) {
        sock.request(
            RouteNetlinkMessage::NewRoute(route(*addr, settings, lo)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await?;
        tracing::info!(%addr, table = settings.table, "announcing: route installed");
    }
    for addr in have.difference(want) {
        sock.request(RouteNetlinkMessage::DelRoute(route(*addr, settings, lo)), 0)
            .await?;
        tracing::info!(%addr, table = settings.table, "withdrawing: route removed");
    }
    Ok(want.clone())
}

/// Decides and reconciles every second, and whenever woken, until the daemon ends.
pub(super) async fn run(daemon: Arc<Daemon>, a: Arc<Announcer>) {
    let mut sock = match RouteSocket::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("announcing VIPs is off: cannot open a netlink socket: {e}");
            return;
        }
    };
    let lo = super::host::ifindex("lo").unwrap_or(1);
    let mut last: BTreeMap<VipId, Why> = BTreeMap::new();
    let mut last_snat: BTreeMap<IpAddr, SnatWhy> = BTreeMap::new();
    loop {
        let (in_use, counted_for) = {
            let n = daemon.nat_use.lock().expect("nat lock");
            let in_use: BTreeMap<IpAddr, u64> =
                n.snat.iter().map(|s| (s.address, s.ports_in_use)).collect();
            (in_use, n.at.map(|t| t.elapsed()))
        };
        let host = a.host();
        let (decisions, snat) = {
            let engine = daemon.engine.lock().expect("engine lock");
            (
                announce::decide(engine.state(), engine.config(), &a.settings, host),
                announce::decide_snat(
                    engine.config(),
                    &a.settings,
                    host,
                    &in_use,
                    counted_for,
                    &last_snat,
                ),
            )
        };
        for (vid, why) in &decisions {
            if last.get(vid) != Some(why) {
                tracing::info!(vip = %vid, "{why}");
            }
        }
        for (addr, why) in &snat {
            // A draining count changes every sweep: log the change of kind only.
            if last_snat.get(addr).map(|w| w.word()) != Some(why.word()) {
                tracing::info!(snat = %addr, "{why}");
            }
        }
        let want: BTreeSet<IpAddr> = announce::addresses(&decisions)
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(addr, _)| addr)
            .chain(
                snat.iter()
                    .filter(|(_, w)| w.announced())
                    .map(|(addr, _)| *addr),
            )
            .collect();
        match reconcile(&mut sock, &a.settings, &want, lo).await {
            Ok(now) => *a.installed.lock().expect("installed lock") = now,
            Err(e) => tracing::warn!("updating the announced routes failed: {e}; retrying"),
        }
        *a.decisions.lock().expect("decisions lock") = decisions.clone();
        *a.snat.lock().expect("snat lock") = snat.clone();
        last = decisions;
        last_snat = snat;
        a.reconciled.notify_waiters();
        tokio::select! {
            () = tokio::time::sleep(RECHECK) => {}
            () = a.wake.notified() => {}
        }
    }
}

/// Removes every route of ours (teardown).
pub(super) async fn remove_all(settings: &AnnounceSettings) -> io::Result<()> {
    let mut sock = RouteSocket::new()?;
    let lo = super::host::ifindex("lo").unwrap_or(1);
    reconcile(&mut sock, settings, &BTreeSet::new(), lo).await?;
    Ok(())
}
