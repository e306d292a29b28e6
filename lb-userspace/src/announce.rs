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

use std::{collections::BTreeMap, fmt, net::IpAddr, time::Duration};

use crate::{
    config::{AnnounceSettings, Config, OnFailOpen, VipId},
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
}
