//! Which VIPs this host should announce to its routers, and why (pure; the daemon's
//! `announce` task installs the routes).
//!
//! Several xlb hosts with the same configuration announce the same VIPs; the routers
//! spread flows over them by ECMP, and a host that cannot serve a VIP withdraws it so the
//! others take its traffic. A VIP is announced when the balancer is attached (the daemon
//! runs the decision only then), its table is written (it is in the engine's state), at
//! least `min_serving` backends serve, the warm-up after start has passed, the host is not
//! withdrawn by the operator or stopping, and — if it fails open — its `on_fail_open` says
//! to stay. Routes are per address: an address is announced only when every VIP on it is,
//! because the router sends all its ports to the same hosts.
//!
//! With full-NAT VIPs the host's SNAT addresses are announced the same way: the targets'
//! replies go to them, and must come back to the host that holds the connection. A drain
//! withdraws the VIPs first and a SNAT address only once no NAT connection uses it (or
//! the drain timeout has passed), so replies to connections this host still holds keep
//! arriving.

use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration};

use crate::{
    config::{AnnounceSettings, Config, Forwarding, NatSource, OnFailOpen, VipId},
    engine::{Health, State},
};

/// Why a VIP is, or is not, announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Announced: enough backends serve.
    Serving,
    /// Announced although every backend fails its checks: the VIP fails open and stays.
    FailingOpen,
    /// Not yet: the warm-up after start has not passed.
    WarmingUp,
    /// Not announced: fewer backends serve than `min_serving`.
    TooFewServing { serving: u32, min: u32 },
    /// Not announced: every backend fails its checks, and the VIP withdraws then.
    FailedOpenWithdrawn,
    /// Not announced: `xlb announce withdraw` (the host is being drained).
    WithdrawnByOperator,
    /// Not announced: the daemon is stopping and withdraws on stop.
    Stopping,
    /// Not announced: another VIP on the same address is not, and routes are per address.
    SharedAddress { with: VipId },
}

impl Why {
    pub fn announced(self) -> bool {
        matches!(self, Why::Serving | Why::FailingOpen)
    }

    /// One word for metrics labels.
    pub fn word(self) -> &'static str {
        match self {
            Why::Serving => "serving",
            Why::FailingOpen => "failing_open",
            Why::WarmingUp => "warming_up",
            Why::TooFewServing { .. } => "too_few_serving",
            Why::FailedOpenWithdrawn => "failed_open_withdrawn",
            Why::WithdrawnByOperator => "withdrawn_by_operator",
            Why::Stopping => "stopping",
            Why::SharedAddress { .. } => "shared_address",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Serving => f.write_str("announced: backends serve"),
            Why::FailingOpen => {
                f.write_str("announced: failing open (every backend fails its checks)")
            }
            Why::WarmingUp => f.write_str("not announced: warming up after start"),
            Why::TooFewServing { serving, min } => write!(
                f,
                "not announced: {serving} backends serve, min_serving is {min}"
            ),
            Why::FailedOpenWithdrawn => f.write_str(
                "not announced: every backend fails its checks (on_fail_open = \"withdraw\")",
            ),
            Why::WithdrawnByOperator => f.write_str("not announced: withdrawn by the operator"),
            Why::Stopping => f.write_str("not announced: the daemon is stopping"),
            Why::SharedAddress { with } => {
                write!(f, "not announced: {with}, on the same address, is not")
            }
        }
    }
}

/// What the host is doing about announcing, besides each VIP's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// How long the daemon has run.
    pub up: Duration,
    /// `xlb announce withdraw` is in force.
    pub withdrawn: bool,
    /// The daemon is stopping and withdraws on stop.
    pub stopping: bool,
    /// How long ago the withdrawal (by the operator or the stop) began.
    pub draining_for: Option<Duration>,
}

impl Host {
    fn draining(&self) -> bool {
        self.withdrawn || self.stopping
    }
}

/// Why a SNAT address is, or is not, announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnatWhy {
    /// Announced: full-NAT VIPs open connections from it, and their replies come here.
    Serving,
    /// Announced while the host drains: NAT connections still use it.
    Draining { connections: u64 },
    /// Not announced: the host drains and no NAT connection uses it any more.
    Drained,
    /// Not announced: the host drains and the drain timeout passed with connections left.
    DrainTimedOut { connections: u64 },
    /// Not announced: no VIP of its family uses full NAT.
    Unused,
}

impl SnatWhy {
    pub fn announced(self) -> bool {
        matches!(self, SnatWhy::Serving | SnatWhy::Draining { .. })
    }

    /// One word for metrics labels.
    pub fn word(self) -> &'static str {
        match self {
            SnatWhy::Serving => "serving",
            SnatWhy::Draining { .. } => "draining",
            SnatWhy::Drained => "drained",
            SnatWhy::DrainTimedOut { .. } => "drain_timed_out",
            SnatWhy::Unused => "unused",
        }
    }
}

impl fmt::Display for SnatWhy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnatWhy::Serving => f.write_str("announced: full-NAT replies come back here"),
            SnatWhy::Draining { connections } => write!(
                f,
                "announced while draining: {connections} NAT connection{} still use{} it",
                if *connections == 1 { "" } else { "s" },
                if *connections == 1 { "s" } else { "" }
            ),
            SnatWhy::Drained => f.write_str("not announced: drained, no NAT connection uses it"),
            SnatWhy::DrainTimedOut { connections } => write!(
                f,
                "not announced: the drain timeout passed with {connections} NAT connection{} left",
                if *connections == 1 { "" } else { "s" }
            ),
            SnatWhy::Unused => f.write_str("not announced: no full-NAT VIP of its family"),
        }
    }
}

/// The decision for every SNAT address of the configuration. `in_use` is the NAT
/// connections per address as the sweeper last counted them, and `counted_for` how long
/// ago it counted them (`None`: never); only a count made after the withdrawal began can
/// show an address drained. `before` is the last decision: a drained address stays
/// withdrawn until the drain ends, so a late connection does not make its route flap.
pub fn decide_snat(
    config: &Config,
    settings: &AnnounceSettings,
    host: Host,
    in_use: &BTreeMap<IpAddr, u64>,
    counted_for: Option<Duration>,
    before: &BTreeMap<IpAddr, SnatWhy>,
) -> BTreeMap<IpAddr, SnatWhy> {
    let full_nat = |v4: bool| {
        config.vips.iter().any(|v| {
            v.forwarding == Forwarding::Nat
                && v.nat_source == NatSource::Snat
                && v.id.address.is_ipv4() == v4
        })
    };
    let d = &config.dataplane;
    let addrs = d
        .snat_v4
        .iter()
        .map(|a| IpAddr::V4(*a))
        .chain(d.snat_v6.iter().map(|a| IpAddr::V6(*a)));
    let draining_for = host.draining_for.unwrap_or_default();
    let fresh = counted_for.is_some_and(|c| c < draining_for);
    addrs
        .map(|a| {
            let connections = in_use.get(&a).copied().unwrap_or(0);
            let was = before.get(&a).copied();
            let why = if !full_nat(a.is_ipv4()) {
                SnatWhy::Unused
            } else if !host.draining() {
                SnatWhy::Serving
            } else if let Some(w @ (SnatWhy::Drained | SnatWhy::DrainTimedOut { .. })) = was {
                w
            } else if connections == 0 && fresh {
                SnatWhy::Drained
            } else if draining_for >= settings.drain_timeout {
                SnatWhy::DrainTimedOut { connections }
            } else {
                SnatWhy::Draining { connections }
            };
            (a, why)
        })
        .collect()
}

/// The decision for every VIP of the state.
pub fn decide(
    state: &State,
    config: &Config,
    settings: &AnnounceSettings,
    host: Host,
) -> BTreeMap<VipId, Why> {
    let mut out = BTreeMap::new();
    for (vid, v) in &state.vips {
        let vc = config.vip(vid).unwrap_or(&v.config);
        let min = vc.min_serving.unwrap_or(settings.min_serving);
        let serving = v
            .backends
            .values()
            .filter(|b| b.in_table && b.health != Health::Unhealthy)
            .count() as u32;
        let why = if host.stopping {
            Why::Stopping
        } else if host.withdrawn {
            Why::WithdrawnByOperator
        } else if host.up < settings.warm_up {
            Why::WarmingUp
        } else if v.fail_open {
            match vc.on_fail_open {
                OnFailOpen::StayAnnounced => Why::FailingOpen,
                OnFailOpen::Withdraw => Why::FailedOpenWithdrawn,
            }
        } else if serving < min {
            Why::TooFewServing { serving, min }
        } else {
            Why::Serving
        };
        out.insert(*vid, why);
    }
    // Routes are per address: one VIP that is not announced holds back the others there.
    let held: Vec<(VipId, VipId)> = out
        .iter()
        .filter(|(_, w)| w.announced())
        .filter_map(|(vid, _)| {
            out.iter()
                .find(|(o, w)| o.address == vid.address && !w.announced())
                .map(|(o, _)| (*vid, *o))
        })
        .collect();
    for (vid, with) in held {
        out.insert(vid, Why::SharedAddress { with });
    }
    out
}

/// The addresses to announce: those whose every VIP is announced.
pub fn addresses(decisions: &BTreeMap<VipId, Why>) -> BTreeMap<IpAddr, bool> {
    let mut out: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for (vid, why) in decisions {
        let e = out.entry(vid.address).or_insert(true);
        *e &= why.announced();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, MemoryMaps};

    fn config(extra: &str) -> Config {
        Config::parse(
            &format!(
                "[dataplane]\nsource_v4 = \"198.18.0.2\"\nmax_vips = 4\nmax_backends = 64\nflow_table_entries = 1024\nmaglev_table_size = 1009\n\
                 [announce]\nwarm_up = \"5s\"\nmin_serving = 2\n\
                 [[vip]]\naddress = \"203.0.113.10\"\nport = 80\nhealth_check = {{ protocol = \"tcp\" }}\n{extra}\n\
                 backends = [ {{ address = \"198.51.100.11\" }}, {{ address = \"198.51.100.12\" }} ]\n\
                 [[vip]]\naddress = \"203.0.113.10\"\nport = 53\nprotocol = \"udp\"\nhealth_check = {{ protocol = \"none\" }}\n\
                 backends = [ {{ address = \"198.51.100.11\" }}, {{ address = \"198.51.100.12\" }} ]\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn engine(c: &Config) -> Engine<MemoryMaps> {
        let mut e = Engine::new(MemoryMaps::new(c.dataplane.limits), c.dataplane.clone());
        e.apply(c).unwrap();
        e
    }

    const UP: Host = Host {
        up: Duration::from_secs(10),
        withdrawn: false,
        stopping: false,
        draining_for: None,
    };

    fn web() -> VipId {
        "203.0.113.10:80/tcp".parse().unwrap()
    }

    fn dns() -> VipId {
        "203.0.113.10:53/udp".parse().unwrap()
    }

    fn addr() -> IpAddr {
        "203.0.113.10".parse().unwrap()
    }

    #[test]
    fn a_vip_is_announced_once_warm_and_served_by_enough_backends() {
        let c = config("");
        let mut e = engine(&c);
        let s = c.announce.clone().unwrap();
        let early = Host {
            up: Duration::from_secs(1),
            ..UP
        };
        assert_eq!(decide(e.state(), &c, &s, early)[&web()], Why::WarmingUp);
        // No verdict yet: both serve.
        assert_eq!(decide(e.state(), &c, &s, UP)[&web()], Why::Serving);
        e.set_health(
            &web(),
            "198.51.100.11".parse().unwrap(),
            Health::Healthy,
            "ok",
        )
        .unwrap();
        let d = decide(e.state(), &c, &s, UP);
        assert_eq!(d[&web()], Why::TooFewServing { serving: 1, min: 2 });
        // The other VIP on the address is held back with it: routes are per address.
        assert_eq!(d[&dns()], Why::SharedAddress { with: web() });
        assert!(!addresses(&d)[&addr()]);
        e.set_health(
            &web(),
            "198.51.100.12".parse().unwrap(),
            Health::Healthy,
            "ok",
        )
        .unwrap();
        let d = decide(e.state(), &c, &s, UP);
        assert!(d.values().all(|w| *w == Why::Serving), "{d:?}");
        assert!(addresses(&d)[&addr()]);
    }

    #[test]
    fn failing_open_stays_announced_unless_the_vip_withdraws() {
        for (extra, want) in [
            ("", Why::FailingOpen),
            ("on_fail_open = \"withdraw\"", Why::FailedOpenWithdrawn),
        ] {
            let c = config(extra);
            let mut e = engine(&c);
            for b in ["198.51.100.11", "198.51.100.12"] {
                e.set_health(&web(), b.parse().unwrap(), Health::Unhealthy, "down")
                    .unwrap();
            }
            let d = decide(e.state(), &c, c.announce.as_ref().unwrap(), UP);
            assert_eq!(d[&web()], want, "{extra}");
        }
    }

    #[test]
    fn the_operator_and_a_stop_withdraw_everything() {
        let c = config("min_serving = 1");
        let e = engine(&c);
        let s = c.announce.clone().unwrap();
        let withdrawn = Host {
            withdrawn: true,
            ..UP
        };
        assert!(
            decide(e.state(), &c, &s, withdrawn)
                .values()
                .all(|w| *w == Why::WithdrawnByOperator)
        );
        let stopping = Host {
            stopping: true,
            ..UP
        };
        assert!(
            decide(e.state(), &c, &s, stopping)
                .values()
                .all(|w| *w == Why::Stopping)
        );
    }

    fn nat_config() -> Config {
        Config::parse(
            "[dataplane]\nsource_v4 = \"198.18.0.2\"\nsnat_v4 = [\"198.18.0.10\", \"198.18.0.11\"]\n\
             snat_v6 = \"2001:db8:18::10\"\nmax_vips = 4\nmax_backends = 64\nflow_table_entries = 1024\nmaglev_table_size = 1009\n\
             [announce]\ndrain_timeout = \"30s\"\n\
             [[vip]]\naddress = \"203.0.113.10\"\nport = 80\nforwarding = \"nat\"\nhealth_check = { protocol = \"none\" }\n\
             backends = [ { address = \"198.51.100.20\", port = 32768 } ]\n\
             [[vip]]\naddress = \"2001:db8:113::10\"\nport = 80\nforwarding = \"nat\"\nnat_source = \"client\"\n\
             health_check = { protocol = \"none\" }\nbackends = [ { address = \"2001:db8:51::20\", port = 32768 } ]\n",
            "test",
        )
        .unwrap()
    }

    #[test]
    fn snat_addresses_are_withdrawn_after_the_vips_once_their_connections_end() {
        let c = nat_config();
        let s = c.announce.clone().unwrap();
        let none = BTreeMap::new();
        let a: IpAddr = "198.18.0.10".parse().unwrap();
        let b: IpAddr = "198.18.0.11".parse().unwrap();
        let v6: IpAddr = "2001:db8:18::10".parse().unwrap();
        let in_use = BTreeMap::from([(a, 2), (b, 0)]);
        let d = decide_snat(&c, &s, UP, &in_use, Some(Duration::ZERO), &none);
        assert_eq!(d[&a], SnatWhy::Serving);
        assert_eq!(d[&b], SnatWhy::Serving);
        // The only v6 NAT VIP preserves the client's address: nothing comes back to it.
        assert_eq!(d[&v6], SnatWhy::Unused);
        let drain = |secs| Host {
            withdrawn: true,
            draining_for: Some(Duration::from_secs(secs)),
            ..UP
        };
        // A count made before the withdrawal proves nothing: both stay.
        let d = decide_snat(
            &c,
            &s,
            drain(1),
            &in_use,
            Some(Duration::from_secs(2)),
            &none,
        );
        assert_eq!(d[&a], SnatWhy::Draining { connections: 2 });
        assert_eq!(d[&b], SnatWhy::Draining { connections: 0 });
        let d = decide_snat(&c, &s, drain(5), &in_use, Some(Duration::from_secs(1)), &d);
        assert_eq!(d[&a], SnatWhy::Draining { connections: 2 });
        assert_eq!(d[&b], SnatWhy::Drained);
        // Drained stays drained: a late connection does not bring the route back.
        let late = BTreeMap::from([(a, 2), (b, 1)]);
        let d = decide_snat(&c, &s, drain(6), &late, Some(Duration::ZERO), &d);
        assert_eq!(d[&b], SnatWhy::Drained);
        let d = decide_snat(&c, &s, drain(30), &in_use, Some(Duration::ZERO), &d);
        assert_eq!(d[&a], SnatWhy::DrainTimedOut { connections: 2 });
        assert!(!d[&a].announced() && !d[&b].announced());
        // A stop drains the same way; a restore announces again.
        let stop = Host {
            stopping: true,
            draining_for: Some(Duration::from_secs(5)),
            ..UP
        };
        assert!(decide_snat(&c, &s, stop, &in_use, Some(Duration::ZERO), &none)[&a].announced());
        assert!(decide_snat(&c, &s, UP, &BTreeMap::new(), None, &d)[&b].announced());
    }
}
