//! Counters: reading them from the maps into a [`Snapshot`], and printing them
//! (`xlb status`, `xlb stats` with rates).

use std::{
    fmt::Write as _,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::stats::{ACTION_NAMES, ACTIONS, Kind, Reason};

use crate::{
    api::{BackendStatus, Counters, NamedCount, ReasonCount, Snapshot, SnatStatus, VipStatus},
    config::XdpMode,
    dataplane::DataplaneError,
    engine::{Engine, ago},
};

/// What the NAT sweeper last counted (`daemon::sweeper`): connections per VIP, use of
/// each SNAT address.
#[derive(Clone, Debug, Default)]
pub struct NatUse {
    pub connections: std::collections::BTreeMap<crate::config::VipId, u64>,
    pub snat: Vec<SnatStatus>,
    /// When the NAT connections counted here were read.
    pub at: Option<std::time::Instant>,
}

/// Sum of the reasons of one kind.
pub fn total(s: &Snapshot, kind: Kind) -> u64 {
    s.reasons
        .iter()
        .filter(|r| r.kind() == kind)
        .map(|r| r.value)
        .sum()
}

/// Reads every counter and the controller's state.
pub fn snapshot(
    engine: &Engine,
    interface: &str,
    xdp_mode: Option<XdpMode>,
    nat: &NatUse,
) -> Result<Snapshot, DataplaneError> {
    let lb = engine.maps();
    let now = Instant::now();
    let mut vips = Vec::new();
    for (id, v) in engine.vips() {
        let s = lb.vip_stats(v.index)?;
        let mut backends = Vec::new();
        for (addr, b) in &v.backends {
            let c = lb.backend_stats(b.id)?;
            backends.push(BackendStatus {
                address: *addr,
                id: b.id,
                weight: b.config.weight,
                health: b.health,
                health_reason: b.health_reason.clone(),
                health_since_secs: ago(b.health_since).as_secs(),
                state: b.state(),
                takes_new_flows: b.in_table,
                deregistration_left_secs: b
                    .removing
                    .map(|d| d.saturating_duration_since(now).as_secs()),
                source: b.config.source.clone(),
                instance: b.config.instance.clone(),
                slow_start_percent: b.ramp_percent(),
                counters: Counters {
                    packets: c.packets,
                    bytes: c.bytes,
                    new_flows: c.new_flows,
                    reply_packets: c.reply_packets,
                    reply_bytes: c.reply_bytes,
                },
            });
        }
        vips.push(VipStatus {
            name: v.config.name.clone(),
            vip: *id,
            hash: v.config.hash,
            forwarding: v.config.forwarding,
            nat_source: v.config.is_nat().then_some(v.config.nat_source),
            nat_connections: nat.connections.get(id).copied().unwrap_or(0),
            fail_open: v.fail_open,
            counters: Counters {
                packets: s.packets,
                bytes: s.bytes,
                new_flows: s.new_flows,
                reply_packets: s.reply_packets,
                reply_bytes: s.reply_bytes,
            },
            flow_hits: s.flow_hits,
            flow_misses: s.flow_misses,
            midflow_misses: s.midflow_misses,
            backends,
            table_fingerprint: v.fingerprint.map(|f| format!("{f:016x}")),
            announce: None,
        });
    }
    let global = lb.global_stats()?;
    let actions = (0..ACTIONS as usize)
        .map(|i| NamedCount {
            name: ACTION_NAMES[i].to_owned(),
            value: global[i],
        })
        .collect();
    let reasons = Reason::ALL
        .iter()
        .map(|&reason| ReasonCount {
            reason,
            value: global[(ACTIONS + reason.index()) as usize],
        })
        .collect();
    Ok(Snapshot {
        taken_at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        interface: interface.to_owned(),
        xdp_mode,
        vips,
        actions,
        reasons,
        events: engine.events().cloned().collect(),
        flow_table: flow_table(engine.config().dataplane.limits.flow_table_entries),
        announce: None,
        xdp_transmit_errors: crate::nic::xdp_transmit_errors(interface)
            .into_iter()
            .map(|(name, value)| NamedCount { name, value })
            .collect(),
        all_checks_failing: engine.state().all_checks_failing,
        health_check_local_errors: crate::health::LOCAL_ERRORS
            .load(std::sync::atomic::Ordering::Relaxed),
        snat: nat.snat.clone(),
    })
}

/// Human-readable count: 1234567 -> "1.23M".
pub fn human(n: f64) -> String {
    let (v, unit) = match n {
        n if n >= 1e12 => (n / 1e12, "T"),
        n if n >= 1e9 => (n / 1e9, "G"),
        n if n >= 1e6 => (n / 1e6, "M"),
        n if n >= 1e4 => (n / 1e3, "k"),
        n => return format!("{n:.0}"),
    };
    format!("{v:.2}{unit}")
}

/// The `xlb stats` table. With `previous` (an earlier snapshot), adds rates.
pub fn stats_table(now: &Snapshot, previous: Option<&Snapshot>) -> String {
    let secs = previous
        .map(|p| (now.taken_at_ms.saturating_sub(p.taken_at_ms)) as f64 / 1000.0)
        .filter(|s| *s > 0.0);
    let rate = |cur: u64, old: Option<u64>| match (secs, old) {
        (Some(s), Some(o)) => human(cur.saturating_sub(o) as f64 / s),
        _ => "-".to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<40} {:<13} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "VIP", "BACKEND", "STATE", "WEIGHT", "PACKETS", "BYTES", "FLOWS", "PKT/S", "BIT/S"
    );
    for v in &now.vips {
        let pv = previous.and_then(|p| p.vips.iter().find(|x| x.vip == v.vip));
        let name = if v.name == v.vip.to_string() {
            v.name.clone()
        } else {
            format!("{} ({})", v.vip, v.name)
        };
        let _ = writeln!(
            out,
            "{:<28} {:<40} {:<13} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}",
            name,
            if v.fail_open {
                "(all backends, FAIL-OPEN)"
            } else {
                "(all backends)"
            },
            "",
            "",
            human(v.counters.packets as f64),
            human(v.counters.bytes as f64),
            human(v.counters.new_flows as f64),
            rate(v.counters.packets, pv.map(|p| p.counters.packets)),
            rate(v.counters.bytes * 8, pv.map(|p| p.counters.bytes * 8)),
        );
        for b in &v.backends {
            let pb = pv.and_then(|p| p.backends.iter().find(|x| x.address == b.address));
            let state = format!("{}/{}", b.state, b.health);
            let _ = writeln!(
                out,
                "{:<28} {:<40} {:<13} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}",
                "",
                b.address.to_string(),
                state,
                b.weight,
                human(b.counters.packets as f64),
                human(b.counters.bytes as f64),
                human(b.counters.new_flows as f64),
                rate(b.counters.packets, pb.map(|p| p.counters.packets)),
                rate(b.counters.bytes * 8, pb.map(|p| p.counters.bytes * 8)),
            );
            if v.nat_source.is_some() {
                let c = &b.counters;
                let _ = writeln!(
                    out,
                    "{:<28} {:<40} {:<13} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}",
                    "",
                    "  <- replies from it",
                    "",
                    "",
                    human(c.reply_packets as f64),
                    human(c.reply_bytes as f64),
                    "",
                    rate(c.reply_packets, pb.map(|p| p.counters.reply_packets)),
                    rate(c.reply_bytes * 8, pb.map(|p| p.counters.reply_bytes * 8)),
                );
            }
        }
    }
    let drops: Vec<String> = now
        .reasons
        .iter()
        .filter(|r| r.kind() == Kind::Drop && r.value > 0)
        .map(|r| format!("{}={}", r.reason.name(), r.value))
        .collect();
    let replies = total(now, Kind::Reply);
    let tx_errors: u64 = now.xdp_transmit_errors.iter().map(|c| c.value).sum();
    let _ = writeln!(
        out,
        "\nforwarded {}  passed to the kernel {}  {}dropped {}{}{}",
        total(now, Kind::Forward),
        total(now, Kind::Pass),
        if replies > 0 {
            format!("answered by xlb {replies}  ")
        } else {
            String::new()
        },
        total(now, Kind::Drop),
        if drops.is_empty() {
            String::new()
        } else {
            format!(" ({})", drops.join(", "))
        },
        if tx_errors > 0 {
            format!(
                "\nlost by the {} driver after the balancer (XDP transmit errors): {tx_errors}",
                now.interface
            )
        } else {
            String::new()
        },
    );
    out
}

/// The flow table's capacity over this host's possible CPUs (the kernel splits a per-CPU
/// LRU's preallocated entries evenly between them).
fn flow_table(entries: u32) -> crate::api::FlowTableStatus {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    crate::api::FlowTableStatus {
        entries,
        cpus,
        // The kernel rounds a per-CPU LRU's size up to a multiple of the CPUs.
        per_cpu: entries.div_ceil(cpus),
    }
}

/// The `xlb status` report: VIPs, backends with health and reasons, recent events.
pub fn status_text(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "interface {} (XDP {}), {} VIPs",
        s.interface,
        s.xdp_mode
            .map_or("as attached by an earlier run", |m| m.as_str()),
        s.vips.len()
    );
    let f = &s.flow_table;
    if f.entries > 0 {
        let _ = writeln!(
            out,
            "flow table: {} entries, {} per CPU ({} CPUs; new flows on one CPU evict within its share)",
            f.entries, f.per_cpu, f.cpus
        );
    }
    if s.all_checks_failing {
        let _ = writeln!(
            out,
            "WARNING: every health check of every VIP fails: the likely cause is this host (its link, routes or open-file limit), not the backends"
        );
    }
    if s.health_check_local_errors > 0 {
        let _ = writeln!(
            out,
            "note: {} health checks could not be made for want of local resources (not counted against backends)",
            s.health_check_local_errors
        );
    }
    if let Some(a) = &s.announce {
        let list: Vec<String> = a.installed.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "announcing through routing table {} (protocol {}){}: {}",
            a.table,
            a.protocol,
            if a.withdrawn {
                ", WITHDRAWN by the operator"
            } else {
                ""
            },
            if list.is_empty() {
                "nothing".to_owned()
            } else {
                list.join(", ")
            }
        );
        for n in &a.snat {
            let _ = writeln!(out, "SNAT address {} {}", n.address, n.why);
        }
    }
    for a in &s.snat {
        let _ = writeln!(
            out,
            "SNAT {}: {} ports in use; busiest target {} with {} of {} ports ({:.1}%)",
            a.address,
            a.ports_in_use,
            a.busiest_target
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            a.busiest_ports,
            a.ports_per_target,
            a.busiest_ports as f64 * 100.0 / a.ports_per_target.max(1) as f64
        );
    }
    for v in &s.vips {
        let nat = match v.nat_source {
            Some(src) => format!(
                "  forwarding=nat ({src})  replies={} connections={}",
                v.counters.reply_packets, v.nat_connections
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "\nVIP {}  name={}  hash={}{nat}  packets={} flows={}{}",
            v.vip,
            v.name,
            v.hash,
            v.counters.packets,
            v.counters.new_flows,
            if v.fail_open {
                "  FAIL-OPEN: every backend is unhealthy; sending to all"
            } else {
                ""
            }
        );
        if let Some(f) = &v.table_fingerprint {
            let _ = writeln!(out, "  table fingerprint {f}");
        }
        if let Some(a) = &v.announce {
            let _ = writeln!(out, "  {a}");
        }
        if v.backends.is_empty() {
            let _ = writeln!(out, "  (no backends: packets to this VIP are dropped)");
        }
        for b in &v.backends {
            let mut extra = match b.deregistration_left_secs {
                Some(s) => format!(", removed: {s}s of deregistration delay left"),
                None => String::new(),
            };
            if let Some(p) = b.slow_start_percent {
                let _ = write!(extra, ", slow start: {p}% of its weight");
            }
            if let Some(src) = &b.source {
                let _ = write!(
                    extra,
                    ", from {src}{}",
                    b.instance
                        .as_deref()
                        .map_or_else(String::new, |i| format!(": {i}"))
                );
            }
            let _ = writeln!(
                out,
                "  {:<40} weight {:<7} {:<13} {:<9} new flows: {:<3} packets={} flows={}  ({} for {}s: {}{extra})",
                b.address.to_string(),
                b.weight,
                b.state,
                b.health,
                if b.takes_new_flows { "yes" } else { "no" },
                b.counters.packets,
                b.counters.new_flows,
                b.health,
                b.health_since_secs,
                b.health_reason,
            );
        }
    }
    let recent: Vec<_> = s.events.iter().rev().take(10).collect();
    if !recent.is_empty() {
        let _ = writeln!(out, "\nrecent events (newest first):");
        for e in recent {
            let age = SystemTime::now()
                .duration_since(e.at)
                .unwrap_or_default()
                .as_secs();
            let who = match e.backend {
                Some(b) => format!("{} {b}", e.vip),
                None => e.vip.clone(),
            };
            let by = if e.origin.is_empty() {
                String::new()
            } else {
                format!("  [{}]", e.origin)
            };
            let _ = writeln!(out, "  {age:>5}s ago  {who}: {}{by}", e.message);
        }
    }
    out
}
