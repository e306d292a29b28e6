//! The controller's decisions, tested without root: the planner and the engine over maps
//! in memory ([`MemoryMaps`]).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_common::{
    ADMIN_F_DRAINED, ADMIN_F_FAILING, ADMIN_F_REMOVING, BACKEND_ACTIVE, BACKEND_DOWN,
    BACKEND_DRAINING, BACKEND_UNUSED, CFG_F_WILDCARD_VIPS, VipKey,
};

use super::*;
use crate::{config::Config, dataplane::Limits};

const LIMITS: Limits = Limits {
    max_vips: 4,
    max_backends: 64,
    flow_table_entries: 1024,
    maglev_size: 1009,
    nat_table_entries: 1024,
};

fn vip() -> VipId {
    "203.0.113.10:80/tcp".parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn t(s: &str) -> crate::config::Target {
    s.parse().unwrap()
}

/// A configuration with one VIP on port `port` and `backends` (address, weight); health
/// checks as `check` says (`"none"`, `"tcp"`).
fn config_with(port: u16, backends: &[(&str, u32)], check: &str) -> Config {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    let text = format!(
        "[dataplane]\nsource_v4 = \"198.18.0.2\"\nmax_vips = {}\nmax_backends = {}\n\
         flow_table_entries = {}\nmaglev_table_size = {}\n\
         [[vip]]\naddress = \"203.0.113.10\"\nport = {port}\nderegistration_delay = \"10s\"\n\
         health_check = {{ protocol = \"{check}\", port = 80 }}\nbackends = [ {} ]\n",
        LIMITS.max_vips,
        LIMITS.max_backends,
        LIMITS.flow_table_entries,
        LIMITS.maglev_size,
        list.join(", ")
    );
    Config::parse(&text, "test").unwrap()
}

fn config(backends: &[(&str, u32)]) -> Config {
    config_with(80, backends, "none")
}

const THREE: [(&str, u32); 3] = [
    ("198.51.100.11", 100),
    ("198.51.100.12", 100),
    ("198.51.100.13", 100),
];

fn engine(c: &Config) -> Engine<MemoryMaps> {
    let mut e = Engine::new(MemoryMaps::new(LIMITS), c.dataplane.clone());
    e.apply(c).unwrap();
    e
}

fn id_of(e: &Engine<MemoryMaps>, a: &str) -> u32 {
    e.vips()[&vip()].backends[&t(a)].id
}

/// The live table of the VIP, as backend addresses per slot.
fn table(m: &MemoryMaps) -> Vec<Option<IpAddr>> {
    let info = m.vips[&vip().key()];
    m.tables[info.table as usize]
        .iter()
        .map(|&id| (id != 0).then(|| m.backends[id as usize].ip().unwrap()))
        .collect()
}

fn share(m: &MemoryMaps, a: &str) -> usize {
    table(m).iter().filter(|s| **s == Some(ip(a))).count()
}

/// What the maps say, independent of which ids and generations a history gave: per VIP
/// its flags, table (by address), and backends by address with state, marks and weight.
type View = (
    u32,
    BTreeMap<VipKey, (u32, Vec<Option<IpAddr>>, BTreeMap<IpAddr, (u8, u8, u32)>)>,
    BTreeMap<VipKey, u32>,
);

fn view(m: &MemoryMaps) -> View {
    let vips = m
        .vips
        .iter()
        .map(|(k, info)| {
            let t = m.tables[info.table as usize]
                .iter()
                .map(|&id| (id != 0).then(|| m.backends[id as usize].ip().unwrap()))
                .collect();
            let backends = m
                .backends
                .iter()
                .filter(|b| b.state != BACKEND_UNUSED && u32::from(b.vip) == info.index)
                .map(|b| (b.ip().unwrap(), (b.state, b.admin, b.weight)))
                .collect();
            (*k, (info.flags, t, backends))
        })
        .collect();
    (m.config.flags, vips, m.vip_addresses.clone())
}

#[test]
fn a_new_vip_is_written_backends_first_then_table_then_entry_then_address() {
    let c = config(&THREE);
    let e = Engine::new(MemoryMaps::new(LIMITS), c.dataplane.clone());
    let plan = plan::apply(e.state(), e.config(), &c, Instant::now()).unwrap();
    let pos = |f: &dyn Fn(&Step) -> bool| plan.steps.iter().position(f).unwrap();
    let last_backend = plan
        .steps
        .iter()
        .rposition(|s| matches!(s, Step::SetBackend(..)))
        .unwrap();
    let table = pos(&|s| matches!(s, Step::WriteTable(..)));
    let entry = pos(&|s| matches!(s, Step::SetVip(..)));
    let address = pos(&|s| matches!(s, Step::SetVipAddress(..)));
    assert!(
        last_backend < table && table < entry && entry < address,
        "{:?}",
        plan.steps
    );
    assert_eq!(
        plan.changes,
        vec![Change::VipAdded {
            vip: vip(),
            backends: 3
        }]
    );
}

#[test]
fn the_table_follows_the_weights_and_names_every_serving_backend() {
    let e = engine(&config(&[("198.51.100.11", 100), ("198.51.100.12", 300)]));
    let m = e.maps();
    let (a, b) = (share(m, "198.51.100.11"), share(m, "198.51.100.12"));
    assert_eq!(a + b, LIMITS.maglev_size as usize);
    assert!((a as f64 / (a + b) as f64 - 0.25).abs() < 0.01, "{a} {b}");
}

#[test]
fn an_unchanged_configuration_plans_nothing() {
    let c = config(&THREE);
    let e = engine(&c);
    let plan = plan::apply(e.state(), e.config(), &c, Instant::now()).unwrap();
    assert!(plan.steps.is_empty(), "{:?}", plan.steps);
    assert!(plan.changes.is_empty());
}

#[test]
fn draining_moves_only_the_drained_backends_slots_and_keeps_its_flows() {
    let mut e = engine(&config(&THREE));
    let before = table(e.maps());
    assert!(e.set_drained(&vip(), t("198.51.100.12"), true).unwrap());
    let after = table(e.maps());
    for (b, a) in before.iter().zip(&after) {
        if *b != Some(ip("198.51.100.12")) {
            assert_eq!(b, a, "a slot of another backend moved");
        }
    }
    assert_eq!(share(e.maps(), "198.51.100.12"), 0);
    let entry = e.maps().backends[id_of(&e, "198.51.100.12") as usize];
    assert_eq!(
        (entry.state, entry.admin),
        (BACKEND_DRAINING, ADMIN_F_DRAINED)
    );
    // Draining twice changes nothing; undraining restores the very same table.
    assert!(!e.set_drained(&vip(), t("198.51.100.12"), true).unwrap());
    e.set_drained(&vip(), t("198.51.100.12"), false).unwrap();
    assert_eq!(table(e.maps()), before);
}

#[test]
fn an_unhealthy_backend_leaves_after_the_switch_and_flows_move() {
    let c = config_with(80, &THREE, "tcp");
    let mut e = engine(&c);
    for (a, _) in THREE {
        e.set_health(&vip(), t(a), Health::Healthy, "ok").unwrap();
    }
    let id = id_of(&e, "198.51.100.13");
    let plan = plan::set_health(
        e.state(),
        e.config(),
        &vip(),
        t("198.51.100.13"),
        plan::Verdict {
            health: Health::Unhealthy,
            reason: "3 failures",
            at: std::time::SystemTime::now(),
        },
        Instant::now(),
    )
    .unwrap();
    let switch = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetVip(..)))
        .unwrap();
    let down = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetBackend(i, b) if *i == id && b.state == BACKEND_DOWN))
        .unwrap();
    assert!(switch < down, "{:?}", plan.steps);
    assert!(matches!(
        &plan.changes[0],
        Change::Health {
            to: Health::Unhealthy,
            ..
        }
    ));
}

#[test]
fn unknown_backends_serve_only_while_none_is_healthy() {
    let mut e = engine(&config_with(80, &THREE, "tcp"));
    // No verdict yet: all of them take traffic.
    assert!(THREE.iter().all(|(a, _)| share(e.maps(), a) > 0));
    e.set_health(&vip(), t("198.51.100.11"), Health::Healthy, "ok")
        .unwrap();
    assert_eq!(
        share(e.maps(), "198.51.100.11"),
        LIMITS.maglev_size as usize
    );
    let r = &e.vips()[&vip()];
    assert!(!r.fail_open);
}

#[test]
fn when_every_backend_is_unhealthy_the_vip_fails_open() {
    let mut e = engine(&config_with(80, &THREE, "tcp"));
    for (a, _) in THREE {
        e.set_health(&vip(), t(a), Health::Unhealthy, "down")
            .unwrap();
    }
    assert!(e.vips()[&vip()].fail_open);
    assert!(THREE.iter().all(|(a, _)| share(e.maps(), a) > 0));
    for (a, _) in THREE {
        assert_eq!(
            e.maps().backends[id_of(&e, a) as usize].state,
            BACKEND_ACTIVE
        );
    }
    assert!(
        e.events().any(|ev| ev.message.starts_with("FAIL-OPEN")),
        "a fail-open event"
    );
    e.set_health(&vip(), t("198.51.100.12"), Health::Healthy, "back")
        .unwrap();
    assert!(!e.vips()[&vip()].fail_open);
    assert_eq!(
        share(e.maps(), "198.51.100.12"),
        LIMITS.maglev_size as usize
    );
    assert_eq!(
        e.maps().backends[id_of(&e, "198.51.100.11") as usize].state,
        BACKEND_DOWN
    );
}

#[test]
fn a_removed_backend_serves_out_its_delay_then_its_id_is_freed() {
    let mut e = engine(&config(&THREE));
    let id = id_of(&e, "198.51.100.13");
    let now = Instant::now();
    let changes = e.apply(&config(&THREE[..2])).unwrap();
    assert_eq!(
        changes,
        vec![Change::BackendDeregistering {
            vip: vip(),
            backend: t("198.51.100.13"),
            delay: Duration::from_secs(10)
        }]
    );
    let entry = e.maps().backends[id as usize];
    assert_eq!(
        (entry.state, entry.admin),
        (BACKEND_DRAINING, ADMIN_F_REMOVING)
    );
    assert_eq!(share(e.maps(), "198.51.100.13"), 0);
    assert!(e.tick(now + Duration::from_secs(5)).unwrap().is_empty());
    let done = e.tick(now + Duration::from_secs(11)).unwrap();
    assert_eq!(
        done,
        vec![Change::BackendRemoved {
            vip: vip(),
            backend: t("198.51.100.13")
        }]
    );
    assert_eq!(e.maps().backends[id as usize].state, BACKEND_UNUSED);
    // The next backend gets the id with a new generation: no flow of the old owner follows.
    let generation = entry.generation;
    e.apply(&config(&[THREE[0], THREE[1], ("198.51.100.14", 100)]))
        .unwrap();
    assert_eq!(id_of(&e, "198.51.100.14"), id);
    assert_eq!(e.maps().backends[id as usize].generation, generation + 1);
}

#[test]
fn a_backend_that_never_served_is_removed_at_once() {
    let c = config_with(80, &THREE[..1], "tcp");
    let mut e = engine(&c);
    e.set_health(&vip(), t("198.51.100.11"), Health::Healthy, "ok")
        .unwrap();
    // Added while another is healthy: never in the table.
    let two = config_with(80, &THREE[..2], "tcp");
    e.apply(&two).unwrap();
    let id = id_of(&e, "198.51.100.12");
    let changes = e.apply(&c).unwrap();
    assert_eq!(
        changes,
        vec![Change::BackendRemovedAtOnce {
            vip: vip(),
            backend: t("198.51.100.12")
        }]
    );
    assert_eq!(e.maps().backends[id as usize].state, BACKEND_UNUSED);
    assert!(!e.vips()[&vip()].backends.contains_key(&t("198.51.100.12")));
}

#[test]
fn weight_hash_and_health_check_changes_are_reported() {
    let mut e = engine(&config(&THREE));
    let mut c = config(&[("198.51.100.11", 100), ("198.51.100.12", 50), THREE[2]]);
    c.vips[0].hash = crate::config::HashMode::SourceAddress;
    for b in &mut c.vips[0].backends {
        b.health.interval = Duration::from_secs(5);
    }
    let changes = e.apply(&c).unwrap();
    let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"VIP 203.0.113.10:80/tcp: hash 5-tuple -> source-address".to_owned()),
        "{text:?}"
    );
    assert!(
        text.contains(
            &"VIP 203.0.113.10:80/tcp: backend 198.51.100.12 weight 100 -> 50".to_owned()
        ),
        "{text:?}"
    );
    assert_eq!(
        changes
            .iter()
            .filter(|c| matches!(c, Change::HealthCheck { .. }))
            .count(),
        3
    );
    assert_eq!(
        e.maps().vips[&vip().key()].flags,
        lb_common::VIP_F_HASH_SOURCE
    );
}

#[test]
fn the_wildcard_flag_is_set_before_a_port_0_vip_and_cleared_after_the_last() {
    let mut e = engine(&config(&THREE));
    assert_eq!(e.maps().config.flags & CFG_F_WILDCARD_VIPS, 0);
    let mut any = config_with(0, &THREE, "none");
    any.vips.push(config(&THREE).vips.remove(0));
    any.vips[1].id.address = ip("203.0.113.11");
    let plan = plan::apply(e.state(), e.config(), &any, Instant::now()).unwrap();
    let flag = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetConfig(c) if c.flags & CFG_F_WILDCARD_VIPS != 0))
        .unwrap();
    let entry = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetVip(k, _) if k.port == 0))
        .unwrap();
    assert!(flag < entry);
    e.apply(&any).unwrap();
    let plan = plan::apply(e.state(), e.config(), &config(&THREE), Instant::now()).unwrap();
    let removed = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::RemoveVip(k) if k.port == 0))
        .unwrap();
    let cleared = plan
        .steps
        .iter()
        .rposition(|s| matches!(s, Step::SetConfig(c) if c.flags & CFG_F_WILDCARD_VIPS == 0))
        .unwrap();
    assert!(removed < cleared);
}

#[test]
fn settings_that_size_the_maps_cannot_change_and_nothing_is_planned() {
    let e = engine(&config(&THREE));
    let mut c = config(&THREE);
    c.dataplane.limits.maglev_size = 1013;
    let r = plan::apply(e.state(), e.config(), &c, Instant::now());
    assert!(matches!(
        r,
        Err(EngineError::Immutable {
            what: "dataplane.maglev_table_size",
            ..
        })
    ));
}

#[test]
fn adopting_what_was_written_changes_nothing() {
    let c = config(&THREE);
    let mut e = engine(&c);
    e.set_drained(&vip(), t("198.51.100.11"), true).unwrap();
    let maps = e.maps().clone();
    let mut again = Engine::new(maps, c.dataplane.clone());
    assert_eq!(again.adopt().unwrap(), 1);
    let r = &again.vips()[&vip()];
    assert!(r.backends[&t("198.51.100.11")].drained);
    let before = view(again.maps());
    let plan = plan::apply(again.state(), again.config(), &c, Instant::now()).unwrap();
    assert!(
        !plan.steps.iter().any(|s| matches!(s, Step::WriteTable(..))),
        "the adopted table is kept: {:?}",
        plan.steps
    );
    again.apply(&c).unwrap();
    assert_eq!(view(again.maps()), before);
}

/// A daemon killed after any number of the writes of a change, restarted (adopting the
/// maps) and given the same configuration, ends where the uninterrupted change ends.
#[test]
fn a_crash_between_any_two_writes_recovers_to_the_same_end() {
    let first = config(&THREE);
    let mut second = config(&[
        ("198.51.100.11", 100),
        ("198.51.100.12", 300),
        ("198.51.100.14", 100),
    ]);
    let mut udp = second.vips[0].clone();
    udp.id = "203.0.113.20:53/udp".parse().unwrap();
    udp.name = udp.id.to_string();
    second.vips.push(udp);
    let base = engine(&first);
    let mut whole = Engine::new(base.maps().clone(), first.dataplane.clone());
    whole.adopt().unwrap();
    let steps = plan::apply(whole.state(), whole.config(), &second, Instant::now())
        .unwrap()
        .steps
        .len();
    whole.apply(&second).unwrap();
    let want = view(whole.maps());
    assert!(steps > 5, "a change of several writes");
    for k in 0..steps {
        let mut maps = base.maps().clone();
        maps.fail_after = Some(maps.writes + k);
        let mut crashed = Engine::new(maps, first.dataplane.clone());
        crashed.adopt().unwrap();
        assert!(crashed.apply(&second).is_err(), "stopped after {k} writes");
        let mut maps = crashed.maps().clone();
        maps.fail_after = None;
        let mut restarted = Engine::new(maps, first.dataplane.clone());
        restarted.adopt().unwrap();
        restarted.apply(&second).unwrap();
        assert_eq!(
            view(restarted.maps()),
            want,
            "after a crash at write {k} of {steps}"
        );
    }
}

#[test]
fn a_failed_write_leaves_the_engine_in_step_with_the_maps() {
    let c = config(&THREE);
    let mut e = engine(&c);
    e.maps_mut().fail_after = Some(e.maps().writes + 1);
    let second = config(&THREE[..2]);
    assert!(e.apply(&second).is_err());
    e.maps_mut().fail_after = None;
    // The engine re-read the maps: applying again finishes the change.
    e.apply(&second).unwrap();
    let mut fresh = engine(&c);
    fresh.apply(&second).unwrap();
    assert_eq!(view(e.maps()), view(fresh.maps()));
}

#[test]
fn fingerprints_do_not_depend_on_backend_ids() {
    let a = engine(&config(&THREE));
    // The same backends, reached through another history of ids.
    let mut b = engine(&config(&[("198.51.100.19", 100)]));
    b.apply(&config(&THREE)).unwrap();
    assert_ne!(id_of(&a, "198.51.100.11"), id_of(&b, "198.51.100.11"));
    assert_eq!(a.vips()[&vip()].fingerprint, b.vips()[&vip()].fingerprint);
}

/// A NAT VIP over two tasks of one host, SNAT addresses `snat`.
fn nat_config(snat: &str) -> Config {
    let text = format!(
        "[dataplane]\nsnat_v4 = {snat}\nmax_vips = 4\nmax_backends = 64\nflow_table_entries = 1024\nmaglev_table_size = 1009\nnat_table_entries = 1024\n\
         [[vip]]\naddress = \"203.0.113.20\"\nport = 80\nforwarding = \"nat\"\nhealth_check = {{ protocol = \"none\" }}\n\
         backends = [ {{ address = \"198.51.100.20\", port = 32768 }}, {{ address = \"198.51.100.20\", port = 32769 }} ]\n"
    );
    Config::parse(&text, "test").unwrap()
}

#[test]
fn nat_targets_of_one_address_are_two_backends_and_snat_slots_come_first() {
    let c = nat_config("\"198.18.0.10\"");
    let mut e = Engine::new(MemoryMaps::new(LIMITS), c.dataplane.clone());
    let plan = plan::apply(e.state(), e.config(), &c, Instant::now()).unwrap();
    let snat = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetSnat(0, _)))
        .expect("SNAT slot written");
    let config = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetConfig(c) if c.snat_v4 == 1))
        .expect("configuration counts it");
    let first_backend = plan
        .steps
        .iter()
        .position(|s| matches!(s, Step::SetBackend(..)))
        .unwrap();
    assert!(snat < config && config < first_backend, "{:?}", plan.steps);
    e.apply(&c).unwrap();
    let vip: VipId = "203.0.113.20:80/tcp".parse().unwrap();
    let backends = &e.vips()[&vip].backends;
    assert_eq!(backends.len(), 2);
    for (t, b) in backends {
        assert_eq!(b.entry.mode, lb_common::MODE_NAT);
        assert_eq!(lb_common::port_from_map(b.entry.port), t.port);
    }
    // Appending an address is a change; removing one that connections may name is not.
    e.apply(&nat_config("[\"198.18.0.10\", \"198.18.0.11\"]"))
        .unwrap();
    assert!(matches!(
        e.apply(&nat_config("\"198.18.0.11\"")),
        Err(EngineError::Immutable {
            what: "dataplane.snat_v4",
            ..
        })
    ));
}

/// A newly healthy target takes a growing share of new flows over the slow start: about a
/// tenth of its weight at once, half at the middle, all of it at the end, in at most ten
/// table rebuilds.
#[test]
fn slow_start_ramps_a_newly_healthy_target_up_in_steps() {
    let mut two = config_with(80, &THREE[..2], "tcp");
    two.vips[0].slow_start = Duration::from_secs(10);
    let mut e = engine(&two);
    for (a, _) in &THREE[..2] {
        e.set_health(&vip(), t(a), Health::Healthy, "ok").unwrap();
    }
    // The VIP's first targets get their first verdicts together: no slow start.
    assert!(e.vips()[&vip()].backends.values().all(|b| b.ramp.is_none()));
    // A third is registered later.
    let mut c = config_with(80, &THREE, "tcp");
    c.vips[0].slow_start = Duration::from_secs(10);
    e.apply(&c).unwrap();
    let t0 = Instant::now();
    let m = f64::from(LIMITS.maglev_size);
    let share = |e: &Engine<MemoryMaps>| share(e.maps(), THREE[2].0) as f64 / m;
    // The third turns healthy: a tenth of an equal weight is 1/21 of the table.
    let plan = plan::set_health(
        e.state(),
        e.config(),
        &vip(),
        t(THREE[2].0),
        plan::Verdict {
            health: Health::Healthy,
            reason: "ok",
            at: std::time::SystemTime::now(),
        },
        t0,
    )
    .unwrap();
    let mut steps = plan.steps.clone();
    execute::execute(e.maps_mut(), &steps).unwrap();
    let mut state = plan.state;
    assert_eq!(
        state.vips[&vip()].backends[&t(THREE[2].0)].ramp_percent(),
        Some(10)
    );
    let s0 = share_in(&e, &state);
    assert!((s0 - 0.1 / 2.1).abs() < 0.01, "at the start: {s0}");
    let mut rebuilds = 0;
    let mut middle = None;
    for tenth in 1..=12u32 {
        let now = t0 + Duration::from_secs(1) * tenth;
        let p = plan::expire(&state, e.config(), now);
        rebuilds += p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::WriteTable(..)))
            .count();
        steps = p.steps;
        execute::execute(e.maps_mut(), &steps).unwrap();
        state = p.state;
        if tenth == 5 {
            middle = Some(share_in(&e, &state));
        }
    }
    let middle = middle.unwrap();
    assert!((middle - 0.5 / 2.5).abs() < 0.01, "at the middle: {middle}");
    let end = share_in(&e, &state);
    assert!((end - 1.0 / 3.0).abs() < 0.01, "at the end: {end}");
    assert!(state.vips[&vip()].backends[&t(THREE[2].0)].ramp.is_none());
    assert!(rebuilds <= 10, "{rebuilds} rebuilds");
    let _ = share;
}

/// The share of the third backend in the live table of the maps written for `state`.
fn share_in(e: &Engine<MemoryMaps>, state: &State) -> f64 {
    let table = state.vips[&vip()].table;
    let id = state.vips[&vip()].backends[&t(THREE[2].0)].id;
    let m = &e.maps().tables[table as usize];
    m.iter().filter(|&&x| x == id).count() as f64 / m.len() as f64
}

#[test]
fn on_unhealthy_keep_leaves_flows_with_a_failing_target_and_survives_a_restart() {
    let text = |keep: &str| {
        let mut c = config_with(80, &THREE, "tcp");
        c.vips[0].on_unhealthy = keep.parse().unwrap();
        c
    };
    let c = text("keep");
    let mut e = engine(&c);
    for (a, _) in THREE {
        e.set_health(&vip(), t(a), Health::Healthy, "ok").unwrap();
    }
    e.set_health(&vip(), t("198.51.100.13"), Health::Unhealthy, "503")
        .unwrap();
    let id = id_of(&e, "198.51.100.13");
    let entry = e.maps().backends[id as usize];
    // Draining in the data plane: its flows stay, it takes no new ones; marked failing,
    // so a retransmitted SYN does not stay on it.
    assert_eq!(
        (entry.state, entry.admin),
        (BACKEND_DRAINING, ADMIN_F_FAILING)
    );
    assert_eq!(share(e.maps(), "198.51.100.13"), 0);
    let b = &e.vips()[&vip()].backends[&t("198.51.100.13")];
    assert_eq!(b.state(), crate::engine::BackendState::Failing);
    // A restart reads it back as unhealthy, not as healthy and serving.
    let mut again = Engine::new(e.maps().clone(), c.dataplane.clone());
    again.adopt().unwrap();
    let b = &again.vips()[&vip()].backends[&t("198.51.100.13")];
    assert_eq!((b.health, b.drained), (Health::Unhealthy, false));
    again.apply(&c).unwrap();
    assert_eq!(share(again.maps(), "198.51.100.13"), 0);
    // Switching back to the default moves its flows away.
    again.apply(&text("move")).unwrap();
    let entry = again.maps().backends[id as usize];
    assert_eq!((entry.state, entry.admin), (BACKEND_DOWN, ADMIN_F_FAILING));
    let b = &again.vips()[&vip()].backends[&t("198.51.100.13")];
    assert_eq!(b.state(), crate::engine::BackendState::Down);
}
