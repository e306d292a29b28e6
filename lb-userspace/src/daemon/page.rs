//! The status page served at `/` on the metrics listener (read-only, like the metrics):
//! every VIP with its targets, their weight, health and why, state, counters and rates,
//! per-target packet-rate sparklines, drops by reason and recent events.
//!
//! Rendered here as plain HTML with inline SVG, from the same snapshot `xlb status` uses,
//! plus the rate history the daemon samples; a few lines of inline script reload it every
//! few seconds. Nothing is fetched from anywhere else, and the page works without script.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    time::SystemTime,
};

use lb_common::stats::Kind;

use crate::{
    api::Snapshot,
    config::{Target, VipId},
    engine::Health,
    stats::human,
};

/// Samples kept per target: two minutes at one sample every two seconds.
pub const SAMPLES: usize = 60;

/// Packet counters of every VIP and target at the last [`SAMPLES`] samples, for rates and
/// sparklines.
#[derive(Default)]
pub struct History {
    /// The samples, oldest first.
    samples: VecDeque<Sample>,
}

/// The packet counters at one moment.
struct Sample {
    /// Milliseconds since the Unix epoch.
    at: u64,
    targets: BTreeMap<(VipId, Target), u64>,
    vips: BTreeMap<VipId, u64>,
}

impl History {
    /// Records the counters of a snapshot.
    pub fn record(&mut self, s: &Snapshot) {
        let targets = s
            .vips
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(move |b| ((v.vip, b.address), b.counters.packets))
            })
            .collect();
        let vips = s.vips.iter().map(|v| (v.vip, v.counters.packets)).collect();
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at: s.taken_at_ms,
            targets,
            vips,
        });
    }

    /// Packets per second of a target between successive samples, oldest first.
    fn target_rates(&self, key: &(VipId, Target)) -> Vec<f64> {
        self.rates(|s| s.targets.get(key).copied())
    }

    fn vip_rate(&self, vip: &VipId) -> Option<f64> {
        self.rates(|s| s.vips.get(vip).copied()).last().copied()
    }

    fn rates(&self, value: impl Fn(&Sample) -> Option<u64>) -> Vec<f64> {
        let pts: Vec<(u64, u64)> = self
            .samples
            .iter()
            .filter_map(|s| Some((s.at, value(s)?)))
            .collect();
        pts.windows(2)
            .map(|w| {
                let secs = w[1].0.saturating_sub(w[0].0) as f64 / 1000.0;
                if secs > 0.0 {
                    w[1].1.saturating_sub(w[0].1) as f64 / secs
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// `text` with the characters HTML gives meaning to escaped.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A sparkline of `rates` (an SVG polyline scaled to its own maximum).
fn sparkline(rates: &[f64]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    if rates.is_empty() {
        return format!("<svg class=\"spark\" width=\"{W}\" height=\"{H}\"></svg>");
    }
    // One rate so far: a level line.
    let one = [rates[0], rates[0]];
    let rates = if rates.len() == 1 { &one[..] } else { rates };
    let max = rates.iter().copied().fold(0.0, f64::max).max(1.0);
    let step = W / (SAMPLES - 1) as f64;
    let start = W - step * (rates.len() - 1) as f64;
    let points: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{:.1},{:.1}",
                start + step * i as f64,
                H - 1.0 - (H - 2.0) * r / max
            )
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\"><polyline fill=\"none\" stroke=\"#2a6fdb\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.join(" ")
    )
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}\
td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.healthy{color:#137333}.unhealthy{color:#c5221f;font-weight:600}.unknown{color:#777}\
.warn{background:#fce8e6;padding:.4em .7em;border-left:4px solid #c5221f}\
.meta{color:#666}.spark{vertical-align:middle}";

/// The page for a snapshot.
pub fn render(s: &Snapshot, h: &History) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>xlb on {iface}</title>\
         <style>{STYLE}</style></head><body><h1>xlb on {iface}</h1>\
         <p class=\"meta\">XDP {mode}; {n} VIPs; refreshed every 3 s</p>",
        iface = esc(&s.interface),
        mode = s
            .xdp_mode
            .map_or("attached by an earlier run", |m| m.as_str()),
        n = s.vips.len()
    );
    if s.all_checks_failing {
        o.push_str("<p class=\"warn\" id=\"host-warning\">Every health check of every VIP fails: the likely cause is this host (its link, routes or open-file limit), not the backends.</p>");
    }
    for v in &s.vips {
        let rate = h.vip_rate(&v.vip).map_or("-".to_owned(), human);
        let _ = write!(
            o,
            "<section class=\"vip\" data-vip=\"{vip}\"><h2>{vip} <span class=\"meta\">{name} · hash {hash}</span></h2>",
            vip = esc(&v.vip.to_string()),
            name = esc(&v.name),
            hash = v.hash
        );
        if v.fail_open {
            o.push_str("<p class=\"warn\">FAIL-OPEN: every target is unhealthy; traffic goes to all of them.</p>");
        }
        let mut line = format!(
            "packets {} · bytes {} · new flows {} · {rate} packets/s",
            human(v.counters.packets as f64),
            human(v.counters.bytes as f64),
            human(v.counters.new_flows as f64)
        );
        if let Some(a) = &v.announce {
            let _ = write!(line, " · {}", esc(&a.to_string()));
        }
        if let Some(f) = &v.table_fingerprint {
            let _ = write!(line, " · table {f}");
        }
        let _ = write!(o, "<p class=\"meta\">{line}</p>");
        o.push_str("<table><tr><th>target</th><th>weight</th><th>health</th><th>why</th><th>state</th><th>new flows</th><th>packets</th><th>bytes</th><th>packets/s</th><th>last 2 min</th></tr>");
        for b in &v.backends {
            let rates = h.target_rates(&(v.vip, b.address));
            let now = rates.last().map_or("-".to_owned(), |r| human(*r));
            let health = match b.health {
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
                Health::Unknown => "unknown",
            };
            let _ = write!(
                o,
                "<tr class=\"target\" data-target=\"{addr}\" data-health=\"{health}\" data-state=\"{state}\">\
                 <td>{addr}{from}</td><td class=\"n\">{w}</td><td class=\"{health}\">{health}</td><td>{why}</td><td>{state}{takes}{ramp}</td>\
                 <td class=\"n\">{nf}</td><td class=\"n\">{p}</td><td class=\"n\">{by}</td><td class=\"n\">{now}</td><td>{spark}</td></tr>",
                addr = esc(&b.address.to_string()),
                from = match (&b.source, &b.instance) {
                    (Some(src), i) => format!(
                        "<br><small>{}{}</small>",
                        esc(src),
                        i.as_deref()
                            .map_or_else(String::new, |i| format!(": {}", esc(i)))
                    ),
                    (None, _) => String::new(),
                },
                ramp = b
                    .slow_start_percent
                    .map_or_else(String::new, |p| format!(" (slow start {p}%)")),
                w = b.weight,
                why = esc(&b.health_reason),
                state = b.state,
                takes = if b.takes_new_flows {
                    ""
                } else {
                    " (no new flows)"
                },
                nf = human(b.counters.new_flows as f64),
                p = human(b.counters.packets as f64),
                by = human(b.counters.bytes as f64),
                spark = sparkline(&rates),
            );
        }
        o.push_str("</table></section>");
    }
    let drops: Vec<String> = s
        .reasons
        .iter()
        .filter(|r| r.kind() == Kind::Drop && r.value > 0)
        .map(|r| {
            format!(
                "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                r.reason.name(),
                r.value
            )
        })
        .collect();
    o.push_str("<h2>Drops by reason</h2>");
    if drops.is_empty() {
        o.push_str("<p class=\"meta\" id=\"drops\">none</p>");
    } else {
        let _ = write!(
            o,
            "<table id=\"drops\"><tr><th>reason</th><th>packets</th></tr>{}</table>",
            drops.concat()
        );
    }
    o.push_str("<h2>Recent events</h2><table id=\"events\"><tr><th>when</th><th>what</th><th>change</th><th>by</th></tr>");
    for e in s.events.iter().rev().take(20) {
        let age = SystemTime::now()
            .duration_since(e.at)
            .unwrap_or_default()
            .as_secs();
        let who = match e.backend {
            Some(b) => format!("{} {b}", e.vip),
            None => e.vip.clone(),
        };
        let _ = write!(
            o,
            "<tr><td>{age}s ago</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&who),
            esc(&e.message),
            esc(&e.origin)
        );
    }
    o.push_str("</table><script>setInterval(function(){fetch(location.href,{cache:'no-store'}).then(function(r){return r.text()}).then(function(t){var d=new DOMParser().parseFromString(t,'text/html');document.body.innerHTML=d.body.innerHTML})},3000)</script></body></html>");
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_is_escaped() {
        assert_eq!(
            super::esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_sparkline_is_scaled_to_its_maximum() {
        let s = super::sparkline(&[0.0, 5.0, 10.0]);
        assert!(s.contains("polyline") && s.contains(",1.0"), "{s}");
    }
}
