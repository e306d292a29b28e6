//! The NAT sweeper: every couple of seconds, reads every NAT connection, removes those that
//! are over (idle past their VIP's timeout; closed by FIN both ways or RST for more than
//! `CLOSED_TIMEOUT`; a SYN never answered for `UNANSWERED_TIMEOUT`; their target gone; a
//! reverse entry no forward entry names any more) and counts what is left: connections per
//! VIP, ports in use per SNAT address, with a warning above 80% of an address's ports
//! towards one target. Deciding ([`sweep`]) is pure; the removals go through the engine's
//! executor.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use lb_common::{
    BACKEND_UNUSED, Backend, CT_F_FIN, CT_F_REPLIED, CT_F_RST, FLOW_F_NAT, PROTO_TCP,
    addr_from_map, nat::NAT_CLOCK_SHIFT, port_from_map,
};

use super::Daemon;
use crate::{
    api::SnatStatus,
    config::{Target, VipId},
    dataplane::NatEntry,
    engine::{Step, execute::execute},
    stats::NatUse,
};

/// How often the sweeper runs.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// How long a connection closed by FIN in both directions or by an RST keeps its entries
/// (for the last ACKs and retransmissions), instead of its idle timeout.
pub const CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connection whose target never answered keeps its entries.
pub const UNANSWERED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a reverse entry without its forward entry is kept: the data plane makes the
/// reverse entry first, so a new one may be alone for a moment.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// Share of an address's ports towards one target above which a warning is logged.
pub const WARN_SHARE: f64 = 0.8;

/// A duration in units of the tracking clock, rounded up.
pub fn clock_units(d: Duration) -> u32 {
    let unit = 1u128 << NAT_CLOCK_SHIFT;
    d.as_nanos().div_ceil(unit) as u32
}

/// The tracking clock now (`CLOCK_MONOTONIC_COARSE`, as `bpf_ktime_get_coarse_ns`).
pub fn clock_now() -> u32 {
    // SAFETY: clock_gettime fills the timespec we pass.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
        ts
    };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    lb_common::nat::nat_clock(ns)
}

/// What the sweeper knows of one VIP.
#[derive(Clone, Copy, Debug)]
pub struct VipTimeouts {
    pub vip: VipId,
    pub idle: Duration,
}

/// The sweep's decisions: the removals, and what is left.
#[derive(Debug, Default)]
pub struct Sweep {
    pub steps: Vec<Step>,
    pub usage: NatUse,
}

/// Decides a sweep at tracking time `now` over `entries`, with each backend id's entry
/// (`backend`), the VIPs by index, the SNAT addresses and the ports per target.
pub fn sweep(
    now: u32,
    entries: &[NatEntry],
    backend: impl Fn(u32) -> Option<Backend>,
    vips: &HashMap<u32, VipTimeouts>,
    snat: &[IpAddr],
    ports_per_target: u64,
) -> Sweep {
    let mut out = Sweep::default();
    let mut per_snat: BTreeMap<IpAddr, (u64, HashMap<Target, u64>)> =
        snat.iter().map(|a| (*a, (0, HashMap::new()))).collect();
    for e in entries {
        let r = &e.reverse;
        let age = |t: u32| now.wrapping_sub(t);
        let forward = e.forward.filter(|f| {
            f.state & FLOW_F_NAT != 0
                && f.backend == r.backend
                && f.generation == r.generation
                && f.nat_port == e.reply.dport
        });
        let Some(f) = forward else {
            if age(r.last_seen) > clock_units(ORPHAN_GRACE) {
                out.steps.push(Step::RemoveNat {
                    reply: e.reply,
                    conn: None,
                });
            }
            continue;
        };
        let target_gone = backend(r.backend)
            .is_none_or(|b| b.state == BACKEND_UNUSED || b.generation != r.generation);
        let last = if age(f.last_seen) < age(r.last_seen) {
            f.last_seen
        } else {
            r.last_seen
        };
        let closed = (f.state | r.state) & CT_F_RST != 0
            || (f.state & CT_F_FIN != 0 && r.state & CT_F_FIN != 0);
        let limit = match vips.get(&r.vip_index) {
            _ if closed => CLOSED_TIMEOUT,
            _ if e.reply.proto == PROTO_TCP && r.state & CT_F_REPLIED == 0 => UNANSWERED_TIMEOUT,
            Some(v) => v.idle,
            None => Duration::ZERO,
        };
        if target_gone || age(last) > clock_units(limit) {
            out.steps.push(Step::RemoveNat {
                reply: e.reply,
                conn: Some(e.conn),
            });
            continue;
        }
        if let Some(v) = vips.get(&r.vip_index) {
            *out.usage.connections.entry(v.vip).or_default() += 1;
        }
        if let Some(dst) = addr_from_map(&e.reply.dst, e.reply.family)
            && let Some((n, targets)) = per_snat.get_mut(&dst)
            && let Some(t) = addr_from_map(&e.reply.src, e.reply.family)
        {
            *n += 1;
            *targets
                .entry(Target::new(t, port_from_map(e.reply.sport)))
                .or_default() += 1;
        }
    }
    out.usage.snat = per_snat
        .into_iter()
        .map(|(address, (n, targets))| {
            let busiest = targets.into_iter().max_by_key(|(t, n)| (*n, *t));
            SnatStatus {
                address,
                ports_in_use: n,
                ports_per_target,
                busiest_target: busiest.map(|b| b.0),
                busiest_ports: busiest.map_or(0, |b| b.1),
            }
        })
        .collect();
    out
}

/// Runs the sweeper for as long as the daemon runs.
pub(super) async fn run(daemon: Arc<Daemon>) {
    let mut tick = tokio::time::interval(INTERVAL);
    let mut warned: BTreeMap<IpAddr, bool> = BTreeMap::new();
    loop {
        tick.tick().await;
        let read_at = std::time::Instant::now();
        let result = {
            let mut engine = daemon.engine.lock().expect("engine lock");
            let config = engine.config().clone();
            let vips: HashMap<u32, VipTimeouts> = engine
                .vips()
                .iter()
                .map(|(id, v)| {
                    (
                        v.index,
                        VipTimeouts {
                            vip: *id,
                            idle: v.config.idle_timeout,
                        },
                    )
                })
                .collect();
            let d = &config.dataplane;
            let snat: Vec<IpAddr> = d
                .snat_v4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(d.snat_v6.iter().map(|a| IpAddr::V6(*a)))
                .collect();
            let ports = u64::from(d.snat_ports.1 - d.snat_ports.0) + 1;
            let lb = engine.maps();
            lb.nat_entries()
                .map(|entries| {
                    sweep(
                        clock_now(),
                        &entries,
                        |id| lb.backend(id).ok(),
                        &vips,
                        &snat,
                        ports,
                    )
                })
                .map(|s| {
                    let removed = s.steps.len();
                    let r = execute(engine.maps_mut(), &s.steps);
                    (s.usage, removed, r)
                })
        };
        match result {
            Ok((usage, removed, r)) => {
                if let Err(e) = r {
                    tracing::error!("removing ended NAT connections failed: {e}");
                }
                if removed > 0 {
                    tracing::debug!(removed, "NAT connections ended");
                }
                for s in &usage.snat {
                    let share = s.busiest_ports as f64 / s.ports_per_target.max(1) as f64;
                    let high = share > WARN_SHARE;
                    if high && !warned.get(&s.address).copied().unwrap_or(false) {
                        tracing::warn!(
                            snat = %s.address,
                            target = %s.busiest_target.map(|t| t.to_string()).unwrap_or_default(),
                            in_use = s.busiest_ports,
                            of = s.ports_per_target,
                            "SNAT address above 80% of its ports towards one target: add SNAT addresses (dataplane.snat_v4 / snat_v6) or widen dataplane.snat_ports"
                        );
                    }
                    warned.insert(s.address, high);
                }
                *daemon.nat_use.lock().expect("nat lock") = crate::stats::NatUse {
                    at: Some(read_at),
                    ..usage
                };
            }
            Err(e) => tracing::error!("reading the NAT connections failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{BACKEND_ACTIVE, FlowKey, FlowValue, NatReverse, addr_to_map, port_to_map};

    fn entry(fwd_state: u8, rev_state: u8, fwd_seen: u32, rev_seen: u32) -> NatEntry {
        let mut reply = FlowKey {
            sport: port_to_map(32768),
            dport: port_to_map(40000),
            proto: PROTO_TCP,
            family: 4,
            ..FlowKey::default()
        };
        reply.src = addr_to_map("198.51.100.20".parse().unwrap()).0;
        reply.dst = addr_to_map("198.18.0.2".parse().unwrap()).0;
        NatEntry {
            reply,
            reverse: NatReverse {
                backend: 3,
                generation: 1,
                vip_index: 0,
                last_seen: rev_seen,
                state: rev_state,
                ..NatReverse::default()
            },
            conn: FlowKey::default(),
            forward: Some(FlowValue {
                backend: 3,
                generation: 1,
                nat_port: port_to_map(40000),
                nat_slot: 0,
                state: FLOW_F_NAT | fwd_state,
                last_seen: fwd_seen,
                syn_seq: 0,
                hash: 0,
            }),
        }
    }

    fn run(entries: &[NatEntry], now: u32) -> Sweep {
        let vips = HashMap::from([(
            0,
            VipTimeouts {
                vip: "203.0.113.10:80/tcp".parse().unwrap(),
                idle: Duration::from_secs(350),
            },
        )]);
        let backend = |_| {
            Some(Backend {
                state: BACKEND_ACTIVE,
                generation: 1,
                ..Backend::default()
            })
        };
        sweep(
            now,
            entries,
            backend,
            &vips,
            &["198.18.0.2".parse().unwrap()],
            64512,
        )
    }

    #[test]
    fn idle_closed_and_unanswered_connections_end() {
        let t = 1000;
        // Busy: kept and counted.
        let s = run(&[entry(0, CT_F_REPLIED, t, t)], t + 5);
        assert!(s.steps.is_empty());
        assert_eq!(s.usage.snat[0].ports_in_use, 1);
        assert_eq!(s.usage.snat[0].busiest_ports, 1);
        // Idle past 350 s (327 clock units): removed; the other direction's time counts.
        assert_eq!(run(&[entry(0, CT_F_REPLIED, t, t)], t + 330).steps.len(), 1);
        assert!(
            run(&[entry(0, CT_F_REPLIED, t, t + 300)], t + 330)
                .steps
                .is_empty()
        );
        // Closed both ways, or reset: 10 s.
        let fin = entry(CT_F_FIN, CT_F_FIN | CT_F_REPLIED, t, t);
        assert!(run(&[fin], t + 5).steps.is_empty());
        assert_eq!(run(&[fin], t + 11).steps.len(), 1);
        assert_eq!(
            run(&[entry(CT_F_RST, CT_F_REPLIED, t, t)], t + 11)
                .steps
                .len(),
            1
        );
        // One FIN only: a half-closed connection keeps its idle timeout.
        assert!(
            run(&[entry(CT_F_FIN, CT_F_REPLIED, t, t)], t + 11)
                .steps
                .is_empty()
        );
        // Never answered: 60 s.
        assert_eq!(run(&[entry(0, 0, t, t)], t + 60).steps.len(), 1);
    }

    #[test]
    fn orphans_go_after_a_grace_and_gone_targets_at_once() {
        let t = 1000;
        let mut e = entry(0, CT_F_REPLIED, t, t);
        e.forward = None;
        assert!(run(&[e], t + 2).steps.is_empty());
        assert_eq!(
            run(&[e], t + 6).steps,
            vec![Step::RemoveNat {
                reply: e.reply,
                conn: None
            }]
        );
        let e = entry(0, CT_F_REPLIED, t, t);
        let vips = HashMap::new();
        let s = sweep(t + 1, &[e], |_| None, &vips, &[], 1);
        assert_eq!(s.steps.len(), 1);
    }

    #[test]
    fn clock_units_round_up() {
        assert_eq!(clock_units(Duration::from_secs(10)), 10);
        assert_eq!(clock_units(Duration::from_secs(350)), 326);
        assert_eq!(clock_units(Duration::ZERO), 0);
    }
}
