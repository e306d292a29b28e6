//! Health checks: one tokio task per (VIP, backend), probing on its own schedule, so a
//! backend that hangs delays nobody else. A task reports a verdict only when the health
//! changes: after `unhealthy_threshold` consecutive failures or `healthy_threshold`
//! consecutive successes, with the reason ("3 consecutive failures, last: timeout after
//! 1s").

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};

use crate::{
    config::{HealthCheck, ProbeKind, VipId},
    engine::Health,
};

/// A change of health, sent to the daemon.
#[derive(Debug, Clone)]
pub struct HealthChange {
    pub vip: VipId,
    pub backend: IpAddr,
    pub health: Health,
    pub reason: String,
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub vip: VipId,
    pub backend: IpAddr,
    pub check: HealthCheck,
    /// Health the controller currently has for it (the task starts from there).
    pub current: Health,
}

/// The running probe tasks.
pub struct Supervisor {
    tasks: HashMap<(VipId, IpAddr), (HealthCheck, JoinHandle<()>)>,
    verdicts: mpsc::Sender<HealthChange>,
}

impl Supervisor {
    pub fn new(verdicts: mpsc::Sender<HealthChange>) -> Self {
        Self {
            tasks: HashMap::new(),
            verdicts,
        }
    }

    /// Starts tasks for new targets, stops those of targets that are gone, restarts those
    /// whose settings changed. Targets with `ProbeKind::None` get no task.
    pub fn reconcile(&mut self, targets: Vec<Probe>) {
        let mut wanted = HashMap::new();
        for t in targets {
            if t.check.kind != ProbeKind::None {
                wanted.insert((t.vip, t.backend), t);
            }
        }
        self.tasks.retain(|k, (check, task)| {
            let keep = wanted.get(k).is_some_and(|t| &t.check == check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (k, t) in wanted {
            if !self.tasks.contains_key(&k) {
                let check = t.check.clone();
                let task = tokio::spawn(probe_loop(t, self.verdicts.clone()));
                self.tasks.insert(k, (check, task));
            }
        }
    }

    /// Number of probe tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// A random delay in `[0, max]` (std's randomly keyed hasher as the source: no RNG
/// dependency needed).
fn jitter(max: Duration, t: &Probe) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one((t.vip, t.backend));
    max * (r % 10_000) as u32 / 10_000
}

async fn probe_loop(t: Probe, verdicts: mpsc::Sender<HealthChange>) {
    let c = &t.check;
    sleep(jitter(c.jitter, &t)).await;
    let mut state = t.current;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut next = Instant::now();
    loop {
        let result = probe(t.backend, c).await;
        match &result {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(_) => {
                failures += 1;
                successes = 0;
            }
        }
        let change = match &result {
            Ok(()) if state != Health::Healthy && successes >= c.healthy_threshold => Some((
                Health::Healthy,
                format!("{successes} consecutive successful checks"),
            )),
            Err(why) if state != Health::Unhealthy && failures >= c.unhealthy_threshold => Some((
                Health::Unhealthy,
                format!("{failures} consecutive failed checks, last: {why}"),
            )),
            _ => None,
        };
        if let Some((health, reason)) = change {
            state = health;
            let v = HealthChange {
                vip: t.vip,
                backend: t.backend,
                health,
                reason,
            };
            if verdicts.send(v).await.is_err() {
                return;
            }
        }
        next += c.interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        sleep_until(next).await;
    }
}

/// One probe; `Err` says why it failed.
pub async fn probe(backend: IpAddr, c: &HealthCheck) -> Result<(), String> {
    let addr = SocketAddr::new(backend, c.port);
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| describe(&e))?;
        if c.kind == ProbeKind::Http {
            http_get(&mut s, backend, c).await?;
        }
        Ok(())
    };
    match timeout(c.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", c.timeout)),
    }
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => e.to_string(),
    }
}

async fn http_get(s: &mut TcpStream, backend: IpAddr, c: &HealthCheck) -> Result<(), String> {
    let host = match (&c.host, backend) {
        (Some(h), _) => h.clone(),
        (None, IpAddr::V4(a)) => format!("{a}:{}", c.port),
        (None, IpAddr::V6(a)) => format!("[{a}]:{}", c.port),
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-health-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        c.path,
        env!("CARGO_PKG_VERSION")
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| describe(&e))?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await.map_err(|e| describe(&e))?;
        if r == 0 {
            return Err("connection closed before an HTTP status".to_owned());
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if c.expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
        Ok(())
    } else {
        Err(format!("HTTP status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn check(kind: ProbeKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: "/health".to_owned(),
            host: None,
            expect: vec![(200, 299)],
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            jitter: Duration::ZERO,
        }
    }

    /// An HTTP server on loopback answering every request with `status`.
    async fn http_server(status: u16) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                        )
                        .await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn tcp_and_http_probes() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let ok = http_server(200).await;
        let bad = http_server(503).await;
        assert_eq!(probe(lo, &check(ProbeKind::Tcp, ok)).await, Ok(()));
        assert_eq!(probe(lo, &check(ProbeKind::Http, ok)).await, Ok(()));
        assert_eq!(
            probe(lo, &check(ProbeKind::Http, bad)).await,
            Err("HTTP status 503".to_owned())
        );
        // A closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            probe(lo, &check(ProbeKind::Tcp, closed)).await,
            Err("connection refused".to_owned())
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts, never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(l.accept().await.unwrap());
            }
        });
        let r = probe("127.0.0.1".parse().unwrap(), &check(ProbeKind::Http, port)).await;
        assert_eq!(r, Err("timeout after 300ms".to_owned()));
    }

    #[tokio::test]
    async fn thresholds_decide_transitions() {
        let port = http_server(200).await;
        let (tx, mut rx) = mpsc::channel(8);
        let vip: VipId = "203.0.113.10:80/tcp".parse().unwrap();
        let mut sup = Supervisor::new(tx);
        let t = Probe {
            vip,
            backend: "127.0.0.1".parse().unwrap(),
            check: check(ProbeKind::Http, port),
            current: Health::Unknown,
        };
        let started = Instant::now();
        sup.reconcile(vec![t.clone()]);
        let v = rx.recv().await.unwrap();
        assert_eq!(v.health, Health::Healthy);
        assert_eq!(v.reason, "2 consecutive successful checks");
        // Two probes, one interval apart.
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Point it at a closed port: unhealthy after two failures.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let moved = Probe {
            check: check(ProbeKind::Tcp, closed),
            current: Health::Healthy,
            ..t
        };
        sup.reconcile(vec![moved]);
        let v = rx.recv().await.unwrap();
        assert_eq!(v.health, Health::Unhealthy);
        assert_eq!(
            v.reason,
            "2 consecutive failed checks, last: connection refused"
        );
        assert_eq!(sup.len(), 1);
        sup.reconcile(vec![]);
        assert!(sup.is_empty());
    }
}
