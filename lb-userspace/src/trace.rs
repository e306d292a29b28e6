//! Packet tracing (`xlb trace`): the data plane logs each packet that matches a filter with
//! its decision through aya-log (`lb-ebpf/src/trace.rs`); this side reads those records
//! from the ring buffer, names what they number (VIP, backend, action, reason, Maglev
//! slot) and hands them to the one trace session the daemon allows at a time.
//!
//! A record is the data plane's aya-log line of `key=value` words; [`decode`] reads it.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use lb_common::{
    FAMILY_V4, FAMILY_V6, TRACE_F_CLIENT, TRACE_F_VIP, TRACE_PATH_NAT_REPLY, TRACE_PATH_VIP,
    TraceFilter,
    stats::{ACTION_NAMES, Reason},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::config::{Target, VipId};

/// Which packets a trace shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Packets to this VIP address (and port, unless 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<SocketAddr>,
    /// Packets from this client (and, for NAT, the replies to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<IpAddr>,
}

impl Filter {
    /// The data plane's form (`lb_common::TraceFilter`).
    pub fn to_map(&self) -> TraceFilter {
        let mut f = TraceFilter::default();
        if let Some(v) = self.vip {
            let (addr, family) = lb_common::addr_to_map(v.ip());
            f.vip = addr;
            f.vip_family = family;
            f.vip_port = lb_common::port_to_map(v.port());
            f.flags |= TRACE_F_VIP;
        }
        if let Some(c) = self.client {
            let (addr, family) = lb_common::addr_to_map(c);
            f.client = addr;
            f.client_family = family;
            f.flags |= TRACE_F_CLIENT;
        }
        f
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.vip, self.client) {
            (None, None) => write!(f, "every packet"),
            (vip, client) => {
                let mut parts = Vec::new();
                if let Some(v) = vip {
                    parts.push(if v.port() == 0 {
                        format!("to {}", v.ip())
                    } else {
                        format!("to {v}")
                    });
                }
                if let Some(c) = client {
                    parts.push(format!("from client {c}"));
                }
                write!(f, "packets {}", parts.join(" "))
            }
        }
    }
}

/// One traced packet, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `vip` (the flow table, the VIP, Maglev), `nat_reply` (a target's reply translated
    /// back to the client) or `other` (no VIP took it).
    pub path: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, another protocol's number, or `-` (not IP).
    pub protocol: String,
    /// The packet's source and destination as it arrived (`-` when not IP).
    pub from: String,
    pub to: String,
    /// The XDP action (`tx`, `pass`, `drop`, ...) and the reason counted for it.
    pub action: String,
    pub reason: String,
    /// The VIP it was counted for: its name and `ADDRESS:PORT/PROTOCOL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// `hit` (the flow table knew it), `new` (a Maglev choice, remembered) or `miss` (a
    /// Maglev choice not remembered: a UDP VIP without tracking, or an unknown midflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// On a miss: the Maglev slot the flow hash chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev_slot: Option<u32>,
    /// The backend or target chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// NAT: the packet as rewritten (`SOURCE -> DESTINATION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.from, self.to)?;
        if let Some(v) = &self.vip {
            write!(f, " vip {v}")?;
        }
        if let Some(flow) = &self.flow {
            write!(f, " flow {flow}")?;
        }
        if let Some(s) = self.maglev_slot {
            write!(f, " slot {s}")?;
        }
        if let Some(b) = &self.backend {
            write!(f, " backend {b}")?;
        }
        if let Some(n) = &self.nat {
            write!(f, " nat {n}")?;
        }
        write!(f, ": {} ({})", self.action, self.reason)
    }
}

/// What the records number, by number: VIPs by index, backends by id.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub vips: HashMap<u32, (String, VipId)>,
    pub backends: HashMap<u32, Target>,
    pub maglev_size: u32,
}

/// Why a record could not be read (a data plane of another version, or a cut record).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable trace record ({0}): {1}")]
pub struct DecodeError(&'static str, String);

/// Reads one of the data plane's records (see `lb-ebpf/src/trace.rs`).
pub fn decode(line: &str, names: &Names) -> Result<Record, DecodeError> {
    let words: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let bad = |what| DecodeError(what, line.to_owned());
    let num = |k: &'static str| -> Result<u64, DecodeError> {
        words
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad(k))
    };
    let family = num("fam")? as u8;
    // Addresses come as aya-log prints 16 bytes with `{:i}`: as an IPv6 address, which for
    // an IPv4 one holds its four bytes first.
    let addr = |k: &'static str| -> Result<IpAddr, DecodeError> {
        let a: std::net::Ipv6Addr = words
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(k))?;
        lb_common::addr_from_map(&a.octets(), family).ok_or_else(|| bad("fam"))
    };
    let proto = num("proto")? as u8;
    let ip = family == FAMILY_V4 || family == FAMILY_V6;
    let endpoint = |a: &'static str, p: &'static str| -> Result<String, DecodeError> {
        if !ip {
            return Ok("-".to_owned());
        }
        let (a, p) = (addr(a)?, num(p)? as u16);
        Ok(if matches!(proto, 6 | 17) {
            SocketAddr::new(a, p).to_string()
        } else {
            a.to_string()
        })
    };
    let action = num("action")? as usize;
    let reason = Reason::from_index(num("reason")? as u32).ok_or_else(|| bad("reason"))?;
    let path = num("path")? as u8;
    let mut r = Record {
        path: match path {
            TRACE_PATH_VIP => "vip",
            TRACE_PATH_NAT_REPLY => "nat_reply",
            _ => "other",
        }
        .to_owned(),
        protocol: match (ip, proto) {
            (false, _) => "-".to_owned(),
            (_, 6) => "tcp".to_owned(),
            (_, 17) => "udp".to_owned(),
            (_, 1) => "icmp".to_owned(),
            (_, 58) => "icmpv6".to_owned(),
            (_, p) => p.to_string(),
        },
        from: endpoint("src", "sport")?,
        to: endpoint("dst", "dport")?,
        action: ACTION_NAMES
            .get(action)
            .map_or_else(|| action.to_string(), |a| (*a).to_owned()),
        reason: reason.name().to_owned(),
        vip: None,
        flow: None,
        maglev_slot: None,
        backend: None,
        nat: None,
    };
    if path != TRACE_PATH_VIP && path != TRACE_PATH_NAT_REPLY {
        return Ok(r);
    }
    let vip = num("vip")? as u32;
    r.vip = Some(match names.vips.get(&vip) {
        Some((name, id)) => format!("{name} ({id})"),
        None => format!("#{vip}"),
    });
    let backend = num("backend")? as u32;
    if backend != u32::MAX {
        r.backend = Some(match names.backends.get(&backend) {
            Some(t) => t.to_string(),
            None => format!("#{backend}"),
        });
    }
    if path == TRACE_PATH_VIP && backend != u32::MAX {
        let (hit, new) = (num("hit")? != 0, num("new")? != 0);
        r.flow = Some(
            if hit {
                "hit"
            } else if new {
                "new"
            } else {
                "miss"
            }
            .to_owned(),
        );
        if !hit && names.maglev_size != 0 {
            r.maglev_slot = Some(lb_common::hash::maglev_slot(
                num("hash")? as u32,
                names.maglev_size,
            ));
        }
    }
    let (nat_src, nat_dst) = (addr("nat_src")?, addr("nat_dst")?);
    if !nat_dst.is_unspecified() {
        let (sp, dp) = (num("nat_sport")? as u16, num("nat_dport")? as u16);
        r.nat = Some(format!(
            "{} -> {}",
            SocketAddr::new(nat_src, sp),
            SocketAddr::new(nat_dst, dp)
        ));
    }
    Ok(r)
}

/// Where the ring buffer's records go: the running session's channel, or nowhere.
#[derive(Clone, Default)]
pub struct Sink {
    session: Arc<Mutex<Option<mpsc::Sender<String>>>>,
}

impl Sink {
    /// Starts a session; `None` if one runs already.
    pub fn open(&self, capacity: usize) -> Option<mpsc::Receiver<String>> {
        let mut s = self.session.lock().expect("trace sink lock");
        if s.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(capacity);
        *s = Some(tx);
        Some(rx)
    }

    /// Ends the session: later records are dropped.
    pub fn close(&self) {
        *self.session.lock().expect("trace sink lock") = None;
    }
}

/// aya-log hands each record to a `log::Log`: this one forwards its text to the session.
/// A session that reads too slowly loses records (the channel is bounded), as does the
/// data plane when its ring buffer is full.
impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Some(tx) = self.session.lock().expect("trace sink lock").as_ref() {
            let _ = tx.try_send(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Reads the data plane's trace records for as long as the daemon runs.
pub async fn run(logger: aya_log::EbpfLogger<Sink>) {
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open and the same
    // until the AsyncFd (which owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!("packet tracing is unavailable: cannot poll its ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// Whether the VIP `id` is one a filter's VIP (an address, and a port unless 0) names.
pub fn names_vip(filter: SocketAddr, id: &VipId) -> bool {
    id.address == filter.ip() && (filter.port() == 0 || filter.port() == id.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let mut n = Names {
            maglev_size: 65_537,
            ..Names::default()
        };
        n.vips.insert(
            0,
            ("web".to_owned(), "203.0.113.10:80/tcp".parse().unwrap()),
        );
        n.backends
            .insert(3, "198.51.100.11".parse::<Target>().unwrap());
        n
    }

    /// An address as the data plane's record prints it.
    fn hex(a: IpAddr) -> String {
        std::net::Ipv6Addr::from(lb_common::addr_to_map(a).0).to_string()
    }

    #[test]
    fn a_new_flow_is_named_with_its_vip_slot_and_backend() {
        let zero = hex("0.0.0.0".parse().unwrap());
        let line = format!(
            "path=1 fam=4 proto=6 src={} sport=40000 dst={} dport=80 action=3 reason=0 vip=0 \
             backend=3 hit=0 new=1 hash=123456789 nat_src={zero} nat_sport=0 nat_dst={zero} \
             nat_dport=0",
            hex("192.0.2.50".parse().unwrap()),
            hex("203.0.113.10".parse().unwrap()),
        );
        let r = decode(&line, &names()).unwrap();
        assert_eq!(r.path, "vip");
        assert_eq!(r.from, "192.0.2.50:40000");
        assert_eq!(r.to, "203.0.113.10:80");
        assert_eq!(r.vip.as_deref(), Some("web (203.0.113.10:80/tcp)"));
        assert_eq!(r.flow.as_deref(), Some("new"));
        assert_eq!(
            r.maglev_slot,
            Some(lb_common::hash::maglev_slot(123_456_789, 65_537))
        );
        assert_eq!(r.backend.as_deref(), Some("198.51.100.11"));
        assert_eq!((r.action.as_str(), r.reason.as_str()), ("tx", "forwarded"));
        assert_eq!(r.nat, None);
        assert_eq!(
            r.to_string(),
            format!(
                "tcp 192.0.2.50:40000 -> 203.0.113.10:80 vip web (203.0.113.10:80/tcp) flow new \
                 slot {} backend 198.51.100.11: tx (forwarded)",
                r.maglev_slot.unwrap()
            )
        );
    }

    #[test]
    fn a_passed_packet_has_no_vip_and_a_cut_record_is_an_error() {
        let line = format!(
            "path=0 fam=6 proto=17 src={} sport=5353 dst={} dport=5353 action=2 reason=3 vip=0 \
             backend=0 hit=0 new=0 hash=0",
            hex("2001:db8::1".parse().unwrap()),
            hex("2001:db8::2".parse().unwrap()),
        );
        let r = decode(&line, &names()).unwrap();
        assert_eq!(
            r.to_string(),
            "udp [2001:db8::1]:5353 -> [2001:db8::2]:5353: pass (not_vip)"
        );
        assert!(decode("path=1 fam=4 proto=6", &names()).is_err());
    }

    #[test]
    fn the_filter_is_written_in_map_order() {
        let f = Filter {
            vip: Some("203.0.113.10:80".parse().unwrap()),
            client: Some("192.0.2.50".parse().unwrap()),
        };
        let m = f.to_map();
        assert_eq!(m.flags, TRACE_F_VIP | TRACE_F_CLIENT);
        assert_eq!(&m.vip[..4], &[203, 0, 113, 10]);
        assert_eq!(m.vip_port, lb_common::port_to_map(80));
        assert_eq!(&m.client[..4], &[192, 0, 2, 50]);
        assert_eq!(
            f.to_string(),
            "packets to 203.0.113.10:80 from client 192.0.2.50"
        );
        assert_eq!(Filter::default().to_map().flags, 0);
    }
}
