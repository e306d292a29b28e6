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

mod grpc;
mod http;
mod tls;

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
        match c.kind {
            ProbeKind::Tcp | ProbeKind::None => Ok(()),
            ProbeKind::Http => http::get(s, backend, c).await,
            ProbeKind::Https => {
                let tls = tls::connect(s, backend, c).await?;
                http::get(tls, backend, c).await
            }
            ProbeKind::Grpc => grpc::check(s, c).await,
        }
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
            ..HealthCheck::default_for_port(port)
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

#[cfg(test)]
mod secure_tests {
    //! HTTPS checks against a local TLS server with a self-signed certificate, and gRPC
    //! checks against a tonic health server.

    use std::{net::IpAddr, sync::Arc, time::Duration};

    use tokio::{io::AsyncWriteExt, net::TcpListener};

    use super::*;

    fn check(kind: ProbeKind, port: u16) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            timeout: Duration::from_secs(2),
            interval: Duration::from_secs(2),
            ..HealthCheck::default_for_port(port)
        }
    }

    const LO: &str = "127.0.0.1";

    /// A TLS server on loopback with a self-signed certificate for `localhost`, answering
    /// every request with 200; returns its port and the certificate (PEM).
    async fn tls_server() -> (u16, String) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let pem = key.cert.pem();
        let cert = key.cert.der().clone();
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, pem)
    }

    #[tokio::test]
    async fn https_checks_verify_the_certificate_unless_told_not_to() {
        let (port, pem) = tls_server().await;
        let lo: IpAddr = LO.parse().unwrap();
        let mut c = check(ProbeKind::Https, port);
        c.host = Some("localhost".to_owned());
        // Verified against the system's authorities: a self-signed certificate is refused.
        let r = probe(lo, &c).await;
        assert!(
            matches!(&r, Err(ProbeError::Backend(m)) if m.starts_with("TLS:")),
            "{r:?}"
        );
        // The opt-out accepts it.
        c.tls_verify = false;
        assert_eq!(probe(lo, &c).await, Ok(()));
        // So does trusting it explicitly, for the name it carries...
        let dir = std::env::temp_dir().join(format!("xlb-ca-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pem).unwrap();
        c.tls_verify = true;
        c.ca_file = Some(ca);
        assert_eq!(probe(lo, &c).await, Ok(()));
        // ...but not for another name.
        c.host = Some("backend.example".to_owned());
        assert!(probe(lo, &c).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn grpc_checks_follow_the_serving_status() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        let l = TcpListener::bind((LO, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(Incoming(l)),
        );
        let lo: IpAddr = LO.parse().unwrap();
        let c = HealthCheck {
            expect: vec![(0, 0)],
            ..check(ProbeKind::Grpc, port)
        };
        assert_eq!(probe(lo, &c).await, Ok(()));
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        assert_eq!(
            probe(lo, &c).await,
            Err(ProbeError::Backend("gRPC health: NOT_SERVING".to_owned()))
        );
        // An unknown service is NOT_FOUND (5): not in the default expect of 0.
        let mut other = c.clone();
        other.grpc_service = "nope".to_owned();
        assert!(
            matches!(probe(lo, &other).await, Err(ProbeError::Backend(m)) if m.starts_with("gRPC status 5"))
        );
    }

    /// The accepted connections of a listener, as tonic's server takes them.
    struct Incoming(TcpListener);

    impl futures_core::Stream for Incoming {
        type Item = std::io::Result<tokio::net::TcpStream>;

        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_accept(cx).map(|r| Some(r.map(|(s, _)| s)))
        }
    }
}
