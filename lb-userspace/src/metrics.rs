//! The Prometheus endpoint: renders a [`Snapshot`] (read from the maps at scrape time) in
//! the Prometheus text format with prometheus-client.
//!
//! Names follow Prometheus conventions (`_total` on counters, units in the name):
//! `xlb_backend_packets_total{vip="203.0.113.10:80/tcp",vip_name="web",backend="198.51.100.21"}`,
//! `xlb_backend_healthy`, `xlb_drops_total{reason="no_backend"}`, `xlb_build_info`.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use lb_common::stats::Kind;

use crate::{
    api::Snapshot,
    engine::{BackendState, Health},
};

type Labels = Vec<(String, String)>;

/// A label with its value escaped as the exposition format requires (backslash, double
/// quote and newline; prometheus-client writes values as they are), so no value a user
/// can set breaks a scrape or injects a line.
fn label(key: &str, value: &str) -> (String, String) {
    let mut v = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => v.push_str("\\\\"),
            '"' => v.push_str("\\\""),
            '\n' => v.push_str("\\n"),
            c => v.push(c),
        }
    }
    (key.to_owned(), v)
}

/// A fresh family of metrics with label sets.
fn family<M>() -> Family<Labels, M>
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug,
{
    Family::default()
}

/// The metrics text for a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::default();
    r.register(
        "xlb_build",
        "xlb version",
        Info::new(vec![(
            "version".to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        )]),
    );

    let vip_packets: Family<Labels, Counter> = family();
    let vip_bytes: Family<Labels, Counter> = family();
    let vip_flows: Family<Labels, Counter> = family();
    let vip_hits: Family<Labels, Counter> = family();
    let vip_misses: Family<Labels, Counter> = family();
    let vip_fail_open: Family<Labels, Gauge> = family();
    let vip_midflow: Family<Labels, Counter> = family();
    let vip_announced: Family<Labels, Gauge> = family();
    let vip_announce_reason: Family<Labels, Gauge> = family();
    let vip_table: Family<Labels, Gauge> = family();
    let be_packets: Family<Labels, Counter> = family();
    let be_bytes: Family<Labels, Counter> = family();
    let be_flows: Family<Labels, Counter> = family();
    let be_healthy: Family<Labels, Gauge> = family();
    let be_weight: Family<Labels, Gauge> = family();
    let be_slow_start: Family<Labels, Gauge> = family();
    let be_new_flows_ok: Family<Labels, Gauge> = family();
    let be_state: Family<Labels, Gauge> = family();
    let be_reply_packets: Family<Labels, Counter> = family();
    let be_reply_bytes: Family<Labels, Counter> = family();
    let vip_reply_packets: Family<Labels, Counter> = family();
    let vip_reply_bytes: Family<Labels, Counter> = family();
    let vip_nat_connections: Family<Labels, Gauge> = family();
    let snat_announced: Family<Labels, Gauge> = family();
    if let Some(a) = &s.announce {
        for n in &a.snat {
            let l: Labels = vec![
                label("address", &n.address.to_string()),
                label("reason", n.why.word()),
            ];
            snat_announced
                .get_or_create(&l)
                .set(i64::from(n.why.announced()));
        }
    }

    for v in &s.vips {
        let l: Labels = vec![label("vip", &v.vip.to_string()), label("vip_name", &v.name)];
        vip_packets.get_or_create(&l).inc_by(v.counters.packets);
        vip_bytes.get_or_create(&l).inc_by(v.counters.bytes);
        vip_flows.get_or_create(&l).inc_by(v.counters.new_flows);
        vip_hits.get_or_create(&l).inc_by(v.flow_hits);
        vip_misses.get_or_create(&l).inc_by(v.flow_misses);
        vip_fail_open.get_or_create(&l).set(i64::from(v.fail_open));
        vip_midflow.get_or_create(&l).inc_by(v.midflow_misses);
        if let Some(why) = v.announce {
            vip_announced
                .get_or_create(&l)
                .set(i64::from(why.announced()));
            let mut rl = l.clone();
            rl.push(label("reason", why.word()));
            vip_announce_reason.get_or_create(&rl).set(1);
        }
        if let Some(f) = &v.table_fingerprint {
            let mut fl = l.clone();
            fl.push(label("fingerprint", f));
            vip_table.get_or_create(&fl).set(1);
        }
        if v.forwarding == crate::config::Forwarding::Nat {
            vip_reply_packets
                .get_or_create(&l)
                .inc_by(v.counters.reply_packets);
            vip_reply_bytes
                .get_or_create(&l)
                .inc_by(v.counters.reply_bytes);
            vip_nat_connections
                .get_or_create(&l)
                .set(v.nat_connections as i64);
        }
        for b in &v.backends {
            let mut bl = l.clone();
            bl.push(label("backend", &b.address.to_string()));
            be_packets.get_or_create(&bl).inc_by(b.counters.packets);
            be_bytes.get_or_create(&bl).inc_by(b.counters.bytes);
            be_flows.get_or_create(&bl).inc_by(b.counters.new_flows);
            be_healthy
                .get_or_create(&bl)
                .set(i64::from(b.health == Health::Healthy));
            be_weight.get_or_create(&bl).set(i64::from(b.weight));
            be_slow_start
                .get_or_create(&bl)
                .set(i64::from(b.slow_start_percent.unwrap_or(100)));
            if v.forwarding == crate::config::Forwarding::Nat {
                be_reply_packets
                    .get_or_create(&bl)
                    .inc_by(b.counters.reply_packets);
                be_reply_bytes
                    .get_or_create(&bl)
                    .inc_by(b.counters.reply_bytes);
            }
            be_new_flows_ok
                .get_or_create(&bl)
                .set(i64::from(b.takes_new_flows));
            for &state in BackendState::ALL {
                let mut sl = bl.clone();
                sl.push(label("state", state.as_str()));
                be_state.get_or_create(&sl).set(i64::from(b.state == state));
            }
        }
    }
    r.register(
        "xlb_vip_packets",
        "Packets forwarded for the VIP",
        vip_packets,
    );
    r.register_with_unit(
        "xlb_vip",
        "Bytes (IP length, as received) forwarded for the VIP",
        Unit::Bytes,
        vip_bytes,
    );
    r.register(
        "xlb_vip_new_flows",
        "New flows of the VIP: TCP SYNs that started a flow (a retransmitted SYN is not counted again), UDP packets that created a flow entry",
        vip_flows,
    );
    r.register(
        "xlb_vip_flow_table_hits",
        "Packets whose flow was in the flow table",
        vip_hits,
    );
    r.register(
        "xlb_vip_flow_table_misses",
        "Packets that went through Maglev",
        vip_misses,
    );
    r.register(
        "xlb_vip_fail_open",
        "1 when every backend is unhealthy and all of them take traffic",
        vip_fail_open,
    );
    r.register(
        "xlb_vip_midflow_misses",
        "TCP packets without SYN that found no flow entry (evicted, or the flow began on another host)",
        vip_midflow,
    );
    r.register(
        "xlb_vip_announced",
        "1 when this host announces the VIP to its routers (with [announce])",
        vip_announced,
    );
    r.register(
        "xlb_vip_announce_reason",
        "Why the VIP is or is not announced: 1 for the reason in force",
        vip_announce_reason,
    );
    r.register(
        "xlb_snat_announced",
        "1 when this host announces the SNAT address (full-NAT replies come back to it); reason says why",
        snat_announced,
    );
    r.register(
        "xlb_vip_table",
        "1, with the fingerprint of the VIP's Maglev table: equal on hosts that pick the same backends",
        vip_table,
    );
    r.register(
        "xlb_backend_packets",
        "Packets sent to the backend",
        be_packets,
    );
    r.register_with_unit(
        "xlb_backend",
        "Bytes (IP length, before encapsulation) sent to the backend",
        Unit::Bytes,
        be_bytes,
    );
    r.register(
        "xlb_backend_new_flows",
        "New flows given to the backend: TCP SYNs that started a flow on it (a retransmitted SYN is not counted again), UDP packets that created a flow entry for it",
        be_flows,
    );
    r.register(
        "xlb_backend_healthy",
        "1 when the backend's health checks pass",
        be_healthy,
    );
    r.register(
        "xlb_backend_weight",
        "Maglev weight of the backend",
        be_weight,
    );
    r.register(
        "xlb_backend_slow_start_percent",
        "Percent of its weight the backend has in the table: below 100 during slow start",
        be_slow_start,
    );
    r.register(
        "xlb_backend_takes_new_flows",
        "1 when the backend is in its VIP's Maglev table",
        be_new_flows_ok,
    );
    r.register(
        "xlb_backend_state",
        "1 for the backend's administrative state",
        be_state,
    );
    r.register(
        "xlb_backend_reply_packets",
        "NAT: packets received from the target and sent back to clients",
        be_reply_packets,
    );
    r.register_with_unit(
        "xlb_backend_reply",
        "NAT: bytes (IP length, as received) from the target sent back to clients",
        Unit::Bytes,
        be_reply_bytes,
    );
    r.register(
        "xlb_vip_reply_packets",
        "NAT: replies from the VIP's targets sent back to clients",
        vip_reply_packets,
    );
    r.register_with_unit(
        "xlb_vip_reply",
        "NAT: bytes of replies from the VIP's targets sent back to clients",
        Unit::Bytes,
        vip_reply_bytes,
    );
    r.register(
        "xlb_vip_nat_connections",
        "NAT: connections tracked for the VIP at the sweeper's last pass",
        vip_nat_connections,
    );
    let snat_in_use: Family<Labels, Gauge> = family();
    let snat_busiest: Family<Labels, Gauge> = family();
    let snat_capacity: Family<Labels, Gauge> = family();
    for a in &s.snat {
        let l = vec![label("snat", &a.address.to_string())];
        snat_in_use.get_or_create(&l).set(a.ports_in_use as i64);
        snat_busiest.get_or_create(&l).set(a.busiest_ports as i64);
        snat_capacity
            .get_or_create(&l)
            .set(a.ports_per_target as i64);
    }
    r.register(
        "xlb_snat_ports_in_use",
        "Ports of the SNAT address in use (one per connection, per target)",
        snat_in_use,
    );
    r.register(
        "xlb_snat_busiest_target_ports",
        "Ports of the SNAT address in use towards its busiest target (compare with xlb_snat_ports_per_target)",
        snat_busiest,
    );
    r.register(
        "xlb_snat_ports_per_target",
        "Ports the SNAT address can give each target",
        snat_capacity,
    );

    let flow_entries: Gauge = Gauge::default();
    flow_entries.set(i64::from(s.flow_table.entries));
    r.register(
        "xlb_flow_table_capacity",
        "Capacity of the flow table in flows (dataplane.flow_table_entries), split evenly between CPUs",
        flow_entries,
    );
    let flow_per_cpu: Gauge = Gauge::default();
    flow_per_cpu.set(i64::from(s.flow_table.per_cpu));
    r.register(
        "xlb_flow_table_capacity_per_cpu",
        "Capacity of one CPU's share of the flow table: new flows on that CPU evict the least recently used of it",
        flow_per_cpu,
    );
    let all_failing: Gauge = Gauge::default();
    all_failing.set(i64::from(s.all_checks_failing));
    r.register(
        "xlb_all_health_checks_failing",
        "1 when every health check of every VIP fails at once: likely this host's fault (link, routes, open files), not the backends'",
        all_failing,
    );
    let local: Counter = Counter::default();
    local.inc_by(s.health_check_local_errors);
    r.register(
        "xlb_health_check_local_errors",
        "Health checks this host could not make (out of file descriptors, memory or local ports); not counted against backends",
        local,
    );

    let tx_errors: Family<Labels, Counter> = family();
    for c in &s.xdp_transmit_errors {
        tx_errors
            .get_or_create(&vec![
                label("interface", &s.interface),
                label("counter", &c.name),
            ])
            .inc_by(c.value);
    }
    r.register(
        "xlb_interface_xdp_transmit_errors",
        "XDP frames the interface's driver could not transmit (XDP_TX and redirects dropped at its ring), by driver counter",
        tx_errors,
    );

    let actions: Family<Labels, Counter> = family();
    for a in &s.actions {
        actions
            .get_or_create(&vec![label("action", &a.name)])
            .inc_by(a.value);
    }
    r.register(
        "xlb_xdp_actions",
        "Packets seen by the balancer, by XDP action",
        actions,
    );
    let drops: Family<Labels, Counter> = family();
    let passes: Family<Labels, Counter> = family();
    let forwarded: Family<Labels, Counter> = family();
    let replies: Family<Labels, Counter> = family();
    for c in &s.reasons {
        let l = vec![label("reason", c.reason.name())];
        let f = match c.kind() {
            Kind::Forward => &forwarded,
            Kind::Pass => &passes,
            Kind::Reply => &replies,
            Kind::Drop => &drops,
        };
        f.get_or_create(&l).inc_by(c.value);
    }
    r.register(
        "xlb_forwarded_packets",
        "Packets encapsulated and sent to a backend, by reason",
        forwarded,
    );
    r.register(
        "xlb_passes",
        "Packets left to the kernel, by reason",
        passes,
    );
    r.register(
        "xlb_replies",
        "Packets the balancer answered itself (ICMP), by reason",
        replies,
    );
    r.register("xlb_drops", "Packets dropped, by reason", drops);

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("vip_name", "a\"b\\c\nd").1, "a\\\"b\\\\c\\nd");
    }
}
