//! The local API server: one JSON request per line on the unix socket, one JSON response
//! per line back (see `crate::api`).

use std::sync::Arc;

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::Daemon;
use crate::api::{Request, Response};

/// Accepts API connections for as long as the daemon runs.
pub(super) async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move { connection(&daemon, s).await });
            }
            Err(e) => tracing::warn!("API accept failed: {e}"),
        }
    }
}

async fn connection(daemon: &Daemon, s: UnixStream) {
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r.take(16 << 20)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
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
        };
        if write_response(&mut w, &response).await.is_err() {
            return;
        }
    }
}

async fn write_response(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}
