//! `xlb trace` on the daemon's side: a trace session holds its API connection. The trace
//! is on while the connection is open and the count is not reached; it is turned off when
//! either ends, however the client went (Ctrl-C included).

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::unix::OwnedWriteHalf,
};

use super::{Daemon, api_server::write_response, slots::Throttled};
use crate::{
    api::Response,
    trace::{Filter, Names, decode, names_vip},
};

/// Records waiting for the client; beyond this the session loses records.
const BACKLOG: usize = 4096;
/// How often the names of VIPs and backends are read again during a session.
const NAMES_EVERY: Duration = Duration::from_secs(1);

static UNREADABLE: Throttled = Throttled::new(Duration::from_secs(10));

/// Turns the trace off when the session ends.
struct Off<'a>(&'a Daemon);

impl Drop for Off<'_> {
    fn drop(&mut self) {
        self.0.trace_sink.close();
        if let Err(e) = self
            .0
            .engine
            .lock()
            .expect("engine lock")
            .maps_mut()
            .set_trace(None)
        {
            tracing::error!("turning the packet trace off failed: {e}");
        }
    }
}

/// Serves one `Request::Trace` on its connection until `count` packets were shown or the
/// client hangs up (`reader` reaches its end).
pub(super) async fn session(
    daemon: &Daemon,
    filter: Filter,
    count: Option<u64>,
    reader: &mut (impl AsyncRead + Unpin),
    w: &mut OwnedWriteHalf,
) {
    if count == Some(0) {
        let _ = write_response(w, &Response::error("--count must be at least 1")).await;
        return;
    }
    if let Some(v) = filter.vip {
        let known = {
            let engine = daemon.engine.lock().expect("engine lock");
            engine.config().vips.iter().any(|c| names_vip(v, &c.id))
        };
        if !known {
            let what = if v.port() == 0 {
                v.ip().to_string()
            } else {
                v.to_string()
            };
            let r = Response::error(format!("no VIP at {what}; `xlb status` lists them"));
            let _ = write_response(w, &r).await;
            return;
        }
    }
    let Some(mut records) = daemon.trace_sink.open(BACKLOG) else {
        let r = Response::error("a trace is already running; only one at a time");
        let _ = write_response(w, &r).await;
        return;
    };
    let on = daemon
        .engine
        .lock()
        .expect("engine lock")
        .maps_mut()
        .set_trace(Some(&filter.to_map()));
    let off = Off(daemon);
    if let Err(e) = on {
        let _ = write_response(w, &Response::error(e)).await;
        return;
    }
    tracing::info!(%filter, ?count, "packet trace started");
    let started = Response::ok(vec![format!("tracing {filter}")]);
    if write_response(w, &started).await.is_err() {
        return;
    }
    let (mut names, mut named) = (daemon.trace_names(), Instant::now());
    let mut shown = 0u64;
    let mut byte = [0u8; 64];
    loop {
        tokio::select! {
            line = records.recv() => {
                let Some(line) = line else { break };
                if named.elapsed() >= NAMES_EVERY {
                    (names, named) = (daemon.trace_names(), Instant::now());
                }
                let record = match decode(&line, &names) {
                    Ok(r) => r,
                    Err(e) => {
                        UNREADABLE.log(|more| tracing::warn!("{e} ({more} more since)"));
                        continue;
                    }
                };
                let r = Response { trace: Some(record), ..Response::ok(Vec::new()) };
                if write_response(w, &r).await.is_err() {
                    break;
                }
                shown += 1;
                if count.is_some_and(|c| shown >= c) {
                    break;
                }
            }
            n = reader.read(&mut byte) => {
                if matches!(n, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    drop(off);
    tracing::info!(shown, "packet trace stopped");
    let _ = write_response(w, &Response::ok(vec![format!("traced {shown} packets")])).await;
}

impl Daemon {
    /// What trace records number, named from the running state.
    fn trace_names(&self) -> Names {
        let engine = self.engine.lock().expect("engine lock");
        let state = engine.state();
        let mut names = Names {
            maglev_size: state.limits.maglev_size,
            ..Names::default()
        };
        for (id, v) in &state.vips {
            names.vips.insert(v.index, (v.config.name.clone(), *id));
            for (target, b) in &v.backends {
                names.backends.insert(b.id, *target);
            }
        }
        names
    }
}
