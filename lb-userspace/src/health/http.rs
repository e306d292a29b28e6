//! HTTP(S) checks: one GET with hyper's client.

use std::net::IpAddr;

use super::ProbeError;
use crate::config::HealthCheck;

/// How much of a response body a check reads before it hangs up: the status is what
/// counts, and a large page must not cost more than this.
const BODY_READ: usize = 64 << 10;

/// An HTTP/1.1 GET with hyper: no keep-alive, no redirects followed (a 3xx is judged by
/// `expect` like any status), the body read up to [`BODY_READ`] and dropped.
pub(super) async fn get<S>(s: S, backend: IpAddr, c: &HealthCheck) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
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
