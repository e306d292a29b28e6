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

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};

use crate::{
    config::{HealthCheck, ProbeKind, VipId},
    daemon::Throttled,
    engine::Health,
};

/// A change of health, sent to the daemon.
#[derive(Debug, Clone)]
pub struct HealthChange {
    pub vip: VipId,
    pub backend: crate::config::Target,
    pub health: Health,
    pub reason: String,
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub vip: VipId,
    pub backend: crate::config::Target,
    pub check: HealthCheck,
    /// Health the controller currently has for it (the task starts from there).
    pub current: Health,
}

/// The running probe tasks.
pub struct Supervisor {
    tasks: HashMap<(VipId, crate::config::Target), (HealthCheck, JoinHandle<()>)>,
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

/// Probes this host could not make at all (see [`ProbeError::Local`]), since start.
pub static LOCAL_ERRORS: AtomicU64 = AtomicU64::new(0);

static LOCAL_ERROR_LOG: Throttled = Throttled::new(Duration::from_secs(10));

async fn probe_loop(t: Probe, verdicts: mpsc::Sender<HealthChange>) {
    let c = &t.check;
    sleep(jitter(c.jitter, &t)).await;
    let mut state = t.current;
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut next = Instant::now();
    loop {
        let result = probe(t.backend.address, c).await;
        match &result {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(ProbeError::Backend(_)) => {
                failures += 1;
                successes = 0;
            }
            // Says nothing about the backend: neither a success nor a failure.
            Err(ProbeError::Local(why)) => {
                LOCAL_ERRORS.fetch_add(1, Ordering::Relaxed);
                LOCAL_ERROR_LOG.log(|held| {
                    tracing::warn!(
                        "a health check could not be made ({why}): this host is short of resources; \
                         it does not count against the backend ({held} more since the last report)"
                    )
                });
            }
        }
        let change = match &result {
            Ok(()) if state != Health::Healthy && successes >= c.healthy_threshold => Some((
                Health::Healthy,
                format!("{successes} consecutive successful checks"),
            )),
            Err(ProbeError::Backend(why))
                if state != Health::Unhealthy && failures >= c.unhealthy_threshold =>
            {
                Some((
                    Health::Unhealthy,
                    format!("{failures} consecutive failed checks, last: {why}"),
                ))
            }
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

/// Why a probe did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The backend failed the check: refused, reset, timed out, answered badly.
    #[error("{0}")]
    Backend(String),
    /// This host could not make the probe (out of file descriptors, memory or local
    /// ports): it says nothing about the backend, so it is not counted.
    #[error("{0}")]
    Local(String),
}

/// One probe.
pub async fn probe(backend: IpAddr, c: &HealthCheck) -> Result<(), ProbeError> {
    let addr = SocketAddr::new(backend, c.port);
    let attempt = async {
        let s = TcpStream::connect(addr)
            .await
            .map_err(|e| connect_error(&e))?;
        if c.kind == ProbeKind::Http {
            http_get(s, backend, c).await?;
        }
        Ok(())
    };
    match timeout(c.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Backend(format!(
            "timeout after {:?}",
            c.timeout
        ))),
    }
}

/// A failed connect: the backend's doing, or this host's.
fn connect_error(e: &std::io::Error) -> ProbeError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL) => {
            ProbeError::Local(e.to_string())
        }
        _ => ProbeError::Backend(match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
            _ => e.to_string(),
        }),
    }
}

/// How much of a response body a check reads before it hangs up: the status is what
/// counts, and a large page must not cost more than this.
const BODY_READ: usize = 64 << 10;

/// An HTTP/1.1 GET with hyper: no keep-alive, no redirects followed (a 3xx is judged by
/// `expect` like any status), the body read up to [`BODY_READ`] and dropped.
async fn http_get(s: TcpStream, backend: IpAddr, c: &HealthCheck) -> Result<(), ProbeError> {
    use http_body_util::{BodyExt as _, Empty};
    use hyper::{Request, body::Bytes, header};

    let bad = |e: hyper::Error| ProbeError::Backend(format!("HTTP: {e}"));
    let host = match (&c.host, backend) {
        (Some(h), _) => h.clone(),
        (None, IpAddr::V4(a)) => format!("{a}:{}", c.port),
        (None, IpAddr::V6(a)) => format!("[{a}]:{}", c.port),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .map_err(bad)?;
    let req = Request::get(c.path.as_str())
        .header(header::HOST, host)
        .header(
            header::USER_AGENT,
            concat!("xlb-health-check/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "*/*")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Backend(format!("HTTP request: {e}")))?;
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(bad)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut read = 0;
        while read < BODY_READ {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => break,
            }
        }
        Ok::<u16, ProbeError>(status)
    };
    // The connection is driven beside the exchange; when it ends first (the server
    // closed after answering), the exchange still has its answer.
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    let mut driving = true;
    let status = loop {
        tokio::select! {
            biased;
            r = &mut exchange => break r?,
            r = &mut conn, if driving => {
                driving = false;
                r.map_err(bad)?;
            }
        }
    };
    if c.expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&status)) {
        Ok(())
    } else {
        Err(ProbeError::Backend(format!("HTTP status {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

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
            Err(ProbeError::Backend("HTTP status 503".to_owned()))
        );
        // A closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert_eq!(
            probe(lo, &check(ProbeKind::Tcp, closed)).await,
            Err(ProbeError::Backend("connection refused".to_owned()))
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
        assert_eq!(
            r,
            Err(ProbeError::Backend("timeout after 300ms".to_owned()))
        );
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
