//! Reading what the (pinned) maps hold into a [`State`], so a restarted daemon changes only
//! what its configuration changes. Everything needed lives in the maps: `VIPS`, and the
//! controller's fields of `BACKENDS` (VIP index, weight, drain and removal marks).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Instant, SystemTime},
};

use lb_common::{
    ADMIN_F_DRAINED, ADMIN_F_FAILING, ADMIN_F_REMOVING, BACKEND_DOWN, BACKEND_DRAINING,
    BACKEND_UNUSED, Backend, SNAT_SLOTS, VIP_F_NAT, VIP_F_NAT_CLIENT, addr_from_map, port_from_map,
};

use super::{
    execute::{Maps, Step},
    state::{BackendRecord, Health, State, VipRecord, fingerprint},
};
use crate::config::{
    BackendConfig, DEFAULT_DEREGISTRATION_DELAY, DEFAULT_IDLE_TCP, DEFAULT_IDLE_UDP, Forwarding,
    HashMode, HealthCheck, NatSource, Protocol, Target, VipConfig, VipId,
};

/// The state the maps hold, and the writes that repair what a crash between two writes
/// can leave: backends whose VIP is gone (freed), and `VIP_ADDRS` counts (recounted).
pub fn adopt<M: Maps>(maps: &M) -> Result<(State, Vec<Step>), M::Error> {
    let limits = maps.limits();
    let mut state = State::empty(limits);
    // The interface MAC in CONFIG is the neighbour task's, not the planner's.
    state.map_config = lb_common::DataplaneConfig {
        mac: [0; 6],
        ..maps.config()?
    };
    for slot in 0..SNAT_SLOTS {
        let a = maps.snat(slot)?;
        if a != [0; 16] {
            let family = if slot < lb_common::SNAT_SLOTS_PER_FAMILY {
                lb_common::FAMILY_V4
            } else {
                lb_common::FAMILY_V6
            };
            state.snat[slot as usize] = addr_from_map(&a, family);
        }
    }
    let mut by_vip: BTreeMap<u32, Vec<(u32, Backend)>> = BTreeMap::new();
    for id in 1..limits.max_backends {
        let b = maps.backend(id)?;
        state.generations[id as usize] = b.generation;
        if b.state != BACKEND_UNUSED {
            by_vip.entry(u32::from(b.vip)).or_default().push((id, b));
        }
    }
    let now = Instant::now();
    let mut fixes = Vec::new();
    for (key, info) in maps.vips()? {
        let Some(vid) = VipId::from_key(&key) else {
            continue;
        };
        let health = HealthCheck::default_for_port(if vid.port == 0 { 80 } else { vid.port });
        let nat = info.flags & VIP_F_NAT != 0;
        let mut config = VipConfig {
            name: vid.to_string(),
            id: vid,
            hash: HashMode::from_vip_flags(info.flags),
            forwarding: if nat {
                Forwarding::Nat
            } else {
                Forwarding::Dsr
            },
            nat_source: if info.flags & VIP_F_NAT_CLIENT != 0 {
                NatSource::Client
            } else {
                NatSource::Snat
            },
            idle_timeout: match (nat, vid.protocol) {
                (false, _) => std::time::Duration::ZERO,
                (true, Protocol::Tcp) => DEFAULT_IDLE_TCP,
                (true, Protocol::Udp) => DEFAULT_IDLE_UDP,
            },
            deregistration_delay: DEFAULT_DEREGISTRATION_DELAY,
            health: health.clone(),
            backends: Vec::new(),
            min_serving: None,
            on_fail_open: crate::config::OnFailOpen::StayAnnounced,
            on_unhealthy: crate::config::OnUnhealthy::Move,
            slow_start: std::time::Duration::ZERO,
        };
        let table = maps.read_table(info.table)?;
        let named: BTreeSet<u32> = table.iter().copied().collect();
        let mut backends = BTreeMap::new();
        for (id, b) in by_vip.remove(&info.index).unwrap_or_default() {
            let Some(address) = b.ip() else { continue };
            let port = port_from_map(b.port);
            let addr = Target::new(address, port);
            let bc = BackendConfig {
                source: None,
                instance: None,
                address,
                port,
                weight: b.weight,
                health: if port != 0 {
                    HealthCheck::default_for_port(port)
                } else {
                    health.clone()
                },
            };
            let removing = b.admin & ADMIN_F_REMOVING != 0;
            if !removing {
                config.backends.push(bc.clone());
            }
            let in_table = named.contains(&id);
            backends.insert(
                addr,
                BackendRecord {
                    config: bc,
                    id,
                    generation: b.generation,
                    // Failing, or (pins of a version without that flag) draining without
                    // being drained or removed: unhealthy, keeping its flows
                    // (`on_unhealthy = "keep"`).
                    health: if b.state == BACKEND_DOWN
                        || b.admin & ADMIN_F_FAILING != 0
                        || (b.state == BACKEND_DRAINING
                            && b.admin & (ADMIN_F_DRAINED | ADMIN_F_REMOVING) == 0)
                    {
                        Health::Unhealthy
                    } else {
                        Health::Healthy
                    },
                    health_reason: "state before the daemon restarted".to_owned(),
                    health_since: SystemTime::now(),
                    drained: b.admin & ADMIN_F_DRAINED != 0,
                    removing: removing.then(|| now + config.deregistration_delay),
                    in_table,
                    ever_served: true,
                    ramp: None,
                    initial: true,
                    entry: b,
                },
            );
        }
        let addresses: BTreeMap<u32, Target> = backends
            .values()
            .map(|b| (b.id, b.config.target()))
            .collect();
        let fail_open = backends
            .values()
            .any(|b| b.in_table && b.health == Health::Unhealthy);
        state.vips.insert(
            vid,
            VipRecord {
                config,
                index: info.index,
                table: info.table,
                fingerprint: Some(fingerprint(&table, |id| addresses.get(&id).copied())),
                flags_written: info.flags,
                backends,
                fail_open,
                adopted: true,
            },
        );
    }
    // Backends whose VIP is gone (a crash between two writes): free them.
    for (id, b) in by_vip.into_values().flatten() {
        fixes.push(Step::SetBackend(
            id,
            Backend {
                state: BACKEND_UNUSED,
                admin: 0,
                ..b
            },
        ));
    }
    // VIP_ADDRS (and the address filter that follows it) after a crash between a VIP's
    // entry and its address count: recounted from the VIPs, stale addresses dropped.
    let counted: BTreeMap<IpAddr, u32> = maps
        .vip_addresses()?
        .iter()
        .map(|(k, n)| (k.ip(), *n))
        .collect();
    let addresses: BTreeSet<IpAddr> = state
        .vips
        .keys()
        .map(|v| v.address)
        .chain(counted.keys().copied())
        .collect();
    for addr in addresses {
        let n = state.vips_on(addr);
        if counted.get(&addr).copied().unwrap_or(0) != n {
            fixes.push(Step::SetVipAddress(addr, n));
        }
    }
    Ok((state, fixes))
}
