//! Targets found by themselves: containers on Docker hosts that carry `xlb.*` labels, in
//! the style Traefik made familiar.
//!
//! | label | meaning |
//! |---|---|
//! | `xlb.vip` | the VIP (`203.0.113.10:80/tcp`); it must exist in the configuration |
//! | `xlb.port` | the container port the VIP sends to (default: its only exposed port) |
//! | `xlb.weight` | the target's weight (default 100) |
//! | `xlb.health.path`, `xlb.health.port` | override the VIP's health check for it |
//!
//! The target's address is the host's address and the published host port when the port
//! is published (bridge mode, dynamic host ports), else the container's own address on its
//! network and the container port (a routable container network). A container with a
//! Docker HEALTHCHECK becomes a target only once Docker says it is healthy.
//!
//! [`target_of`] decides, from what Docker reports about one container (pure);
//! `docker::watch` asks Docker and follows its events.

pub mod docker;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};

use crate::config::{MAX_WEIGHT, Protocol, VipId};

/// The label that names the VIP.
pub const LABEL_VIP: &str = "xlb.vip";

/// A container that should be a target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub vip: VipId,
    /// Where the balancer sends its traffic.
    pub target: SocketAddr,
    pub weight: Option<u32>,
    pub health_path: Option<String>,
    pub health_port: Option<u16>,
    /// `name (id12)`, for status and the log.
    pub container: String,
}

/// Why a labelled container is not a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not running, or its Docker health check does not say healthy (yet).
    NotReady(String),
    /// A label is wrong (logged: the operator must fix it).
    Bad(String),
}

/// Reads one label, parsed.
fn label<T: std::str::FromStr>(
    labels: &std::collections::HashMap<String, String>,
    key: &str,
) -> Result<Option<T>, Skip> {
    match labels.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Skip::Bad(format!("label {key}={v:?} is not valid"))),
    }
}

/// The target a container should be, if any. `host_address` is where the host's
/// published ports are reached; `vips` are the VIPs of the configuration (a label naming
/// another is refused, never creates one); `network` names the container network whose
/// address to use for an unpublished port (default: the first with an address).
pub fn target_of(
    c: &ContainerInspectResponse,
    host_address: IpAddr,
    vips: &BTreeSet<VipId>,
    network: Option<&str>,
) -> Result<Found, Skip> {
    let id = c.id.clone().unwrap_or_default();
    let name = c
        .name
        .clone()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_owned();
    let container = format!("{name} ({})", &id[..id.len().min(12)]);
    let config = c.config.clone().unwrap_or_default();
    let labels = config.labels.clone().unwrap_or_default();
    let vip: VipId =
        label(&labels, LABEL_VIP)?.ok_or_else(|| Skip::Bad("no xlb.vip label".to_owned()))?;
    if !vips.contains(&vip) {
        return Err(Skip::Bad(format!(
            "label xlb.vip={vip} names no VIP of the configuration (discovery never creates one)"
        )));
    }
    let state = c.state.clone().unwrap_or_default();
    if state.running != Some(true) {
        return Err(Skip::NotReady("not running".to_owned()));
    }
    if let Some(h) = state.health.and_then(|h| h.status)
        && !matches!(
            h,
            HealthStatusEnum::HEALTHY | HealthStatusEnum::NONE | HealthStatusEnum::EMPTY
        )
    {
        return Err(Skip::NotReady(format!("Docker health check: {h}")));
    }
    let proto = match vip.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    // The container port: the label's, else the only one exposed for the protocol.
    let exposed: Vec<u16> = config
        .exposed_ports
        .clone()
        .unwrap_or_default()
        .keys()
        .filter_map(|k| {
            let (port, p) = k.split_once('/').unwrap_or((k, "tcp"));
            (p == proto).then(|| port.parse().ok()).flatten()
        })
        .collect();
    let port: u16 = match label(&labels, "xlb.port")? {
        Some(p) => p,
        None => match exposed.as_slice() {
            [one] => *one,
            [] => {
                return Err(Skip::Bad(format!(
                    "no xlb.port label and no exposed {proto} port"
                )));
            }
            many => {
                return Err(Skip::Bad(format!(
                    "no xlb.port label and {} exposed {proto} ports ({many:?}): say which",
                    many.len()
                )));
            }
        },
    };
    let weight: Option<u32> = label(&labels, "xlb.weight")?;
    if weight.is_some_and(|w| w > MAX_WEIGHT) {
        return Err(Skip::Bad(format!("label xlb.weight is above {MAX_WEIGHT}")));
    }
    let health_path: Option<String> = labels.get("xlb.health.path").cloned();
    if health_path
        .as_deref()
        .is_some_and(|p| !p.starts_with('/') || p.contains(char::is_whitespace))
    {
        return Err(Skip::Bad(
            "label xlb.health.path must start with / and have no spaces".to_owned(),
        ));
    }
    let health_port: Option<u16> = label(&labels, "xlb.health.port")?;
    let settings = c.network_settings.clone().unwrap_or_default();
    // Published on the host: reached at the host's address.
    let published = settings
        .ports
        .as_ref()
        .and_then(|m| m.get(&format!("{port}/{proto}")))
        .and_then(|b| b.as_ref())
        .and_then(|bindings| {
            bindings.iter().find_map(|b| {
                let ip = b.host_ip.as_deref().unwrap_or("");
                let any = ip.is_empty() || ip == "0.0.0.0" || ip == "::";
                let right = any || ip.parse::<IpAddr>().ok() == Some(host_address);
                right
                    .then(|| b.host_port.as_deref()?.parse::<u16>().ok())
                    .flatten()
            })
        });
    let target =
        match published {
            Some(host_port) => SocketAddr::new(host_address, host_port),
            None => {
                let networks = settings.networks.unwrap_or_default();
                let mut names: Vec<&String> = networks.keys().collect();
                names.sort();
                let own = names
                .into_iter()
                .filter(|n| network.is_none_or(|want| *n == want))
                .filter_map(|n| {
                    let e = &networks[n];
                    let v4 = e.ip_address.as_deref().filter(|a| !a.is_empty());
                    let v6 = e.global_ipv6_address.as_deref().filter(|a| !a.is_empty());
                    // The family of the VIP's targets first.
                    let pick = if vip.address.is_ipv6() { v6.or(v4) } else { v4.or(v6) };
                    pick?.parse::<IpAddr>().ok()
                })
                .next()
                .ok_or_else(|| {
                    Skip::Bad(format!(
                        "port {port}/{proto} is not published and the container has no address{}",
                        network.map(|n| format!(" on network {n:?}")).unwrap_or_default()
                    ))
                })?;
                SocketAddr::new(own, port)
            }
        };
    Ok(Found {
        vip,
        target,
        weight,
        health_path,
        health_port,
        container,
    })
}

#[cfg(test)]
mod tests;
