//! The HTTP listener for Prometheus: `GET /metrics`, read-only (other methods get 405).
//!
//! Served by hyper with axum's router. Bounded like the API: at most [`MAX_CONNECTIONS`]
//! connections (the oldest idle one makes room for a new one, see `slots`), no keep-alive,
//! [`HEADER_TIMEOUT`] to send a request head and [`CONNECTION_TIMEOUT`] for the whole
//! exchange.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use super::{
    Daemon,
    slots::{Backoff, Slots, Throttled},
};
use crate::stats;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may last in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

static ACCEPT_FAILED: Throttled = Throttled::new(Duration::from_secs(10));

/// Accepts scrapes for as long as the daemon runs.
pub(super) async fn serve(daemon: Arc<Daemon>, listener: TcpListener) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(daemon);
    let slots = Slots::new("metrics", MAX_CONNECTIONS);
    let mut backoff = Backoff::new();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                ACCEPT_FAILED.log(|held| {
                    tracing::warn!("metrics accept failed: {e} ({held} more since the last report)")
                });
                backoff.failed().await;
                continue;
            }
        };
        let Some(held) = slots.admit() else {
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let slot = held.slot.clone();
            let service = hyper::service::service_fn(move |req| {
                // A request head arrived: this connection is busy until it closes.
                slot.set_busy(true);
                router.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                () = held.slot.closed() => {}
            }
        });
    }
}

async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let snap = {
        let engine = daemon.engine.lock().expect("engine lock");
        stats::snapshot(
            &engine,
            &daemon.iface,
            daemon.xdp_mode,
            &daemon.nat_use.lock().expect("nat lock"),
        )
    };
    match snap {
        Ok(s) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::render(&s),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the counters failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "only /metrics is served here\n").into_response()
}
