//! The local API server: one JSON request per line on the unix socket, one JSON response
//! per line back (see `crate::api`).
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections (see `slots`), a request line of at
//! most [`MAX_LINE`] bytes (a configuration sent by `xlb apply` is the largest), and
//! [`IDLE`] to send each line; so the memory clients can hold is bounded too (16 x 4 MiB).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    Daemon,
    slots::{Backoff, Held, Slots, Throttled},
};
use crate::api::{Request, Response};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest request line.
pub const MAX_LINE: usize = 4 << 20;
/// Time a client has to send a whole request line, from the end of the previous one.
pub const IDLE: Duration = Duration::from_secs(30);

static ACCEPT_FAILED: Throttled = Throttled::new(Duration::from_secs(10));

/// Accepts API connections for as long as the daemon runs.
pub(super) async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let slots = Slots::new("API", MAX_CONNECTIONS);
    let mut backoff = Backoff::new();
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                let Some(held) = slots.admit() else {
                    continue;
                };
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = connection(&daemon, s, &held) => {}
                        () = held.slot.closed() => {}
                    }
                });
            }
            Err(e) => {
                ACCEPT_FAILED.log(|held| {
                    tracing::warn!("API accept failed: {e} ({held} more since the last report)")
                });
                backoff.failed().await;
            }
        }
    }
}

async fn connection(daemon: &Daemon, s: UnixStream, held: &Held) {
    let (r, mut w) = s.into_split();
    let mut reader = BufReader::new(r);
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        held.slot.set_busy(true);
        if line.len() > MAX_LINE {
            let r = Response::error(format!(
                "request longer than {} MiB; nothing was changed",
                MAX_LINE >> 20
            ));
            let _ = write_response(&mut w, &r).await;
            return;
        }
        let response = match std::str::from_utf8(&line) {
            Err(e) => Response::error(format!("malformed request: not UTF-8 ({e})")),
            Ok(text) => match serde_json::from_str::<Request>(text.trim_end()) {
                Ok(Request::Trace { filter, count }) => {
                    super::trace::session(daemon, filter, count, &mut reader, &mut w).await;
                    return;
                }
                Ok(req) => {
                    let teardown = matches!(req, Request::Teardown);
                    let r = daemon.handle(req);
                    if teardown && r.ok {
                        let _ = write_response(&mut w, &r).await;
                        daemon.shutdown.notify_one();
                        return;
                    }
                    r
                }
                Err(e) => Response::error(format!("malformed request: {e}")),
            },
        };
        if write_response(&mut w, &response).await.is_err() {
            return;
        }
        held.slot.set_busy(false);
    }
}

pub(super) async fn write_response(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    tokio::time::timeout(IDLE, w.write_all(&line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
