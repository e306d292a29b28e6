//! The Prometheus endpoint: `GET /metrics`, read-only.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::Daemon;
use crate::stats;

/// Accepts scrapes for as long as the daemon runs.
pub(super) async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    loop {
        if let Ok((s, _)) = listener.accept().await {
            let daemon = daemon.clone();
            tokio::spawn(async move { connection(&daemon, s).await });
        }
    }
}

async fn connection(daemon: &Daemon, mut s: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while n < buf.len() {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[n..])).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
            Ok(Ok(r)) => n += r,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let (status, ctype, body) =
        if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
            let snap = {
                let engine = daemon.engine.lock().expect("engine lock");
                stats::snapshot(&engine, &daemon.iface, daemon.xdp_mode)
            };
            match snap {
                Ok(s) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    crate::metrics::render(&s),
                ),
                Err(e) => (
                    "500 Internal Server Error",
                    "text/plain",
                    format!("reading the counters failed: {e}\n"),
                ),
            }
        } else if head.starts_with("GET ") {
            (
                "404 Not Found",
                "text/plain",
                "only /metrics is served here\n".to_owned(),
            )
        } else {
            (
                "405 Method Not Allowed",
                "text/plain",
                "read-only: GET /metrics\n".to_owned(),
            )
        };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(reply.as_bytes()).await;
}
