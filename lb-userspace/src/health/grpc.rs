//! gRPC checks: the standard `grpc.health.v1.Health/Check` (tonic-health's client) over a
//! fresh HTTP/2 connection. Healthy when the call's gRPC status is in `expect` (default 0,
//! OK) and the answer is SERVING.

use tokio::net::TcpStream;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::ProbeError;
use crate::config::HealthCheck;

pub(super) async fn check(s: TcpStream, c: &HealthCheck) -> Result<(), ProbeError> {
    // The connection is the one the probe made: the connector hands it over once.
    let conn = std::sync::Mutex::new(Some(s));
    let channel = Endpoint::from_static("http://backend")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let s = conn.lock().expect("connection lock").take();
            async move {
                s.map(hyper_util::rt::TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the check's connection was used"))
            }
        }))
        .await
        .map_err(|e| ProbeError::Backend(format!("gRPC connection: {e}")))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: c.grpc_service.clone(),
        })
        .await;
    let code = match &reply {
        Ok(_) => 0,
        Err(status) => status.code() as u16,
    };
    if !c.expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
        return Err(ProbeError::Backend(match reply {
            Err(status) => format!("gRPC status {code} ({})", status.message()),
            Ok(_) => format!("gRPC status {code}"),
        }));
    }
    match reply {
        Ok(r) => match r.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(ProbeError::Backend(format!(
                "gRPC health: {}",
                other.as_str_name()
            ))),
        },
        // A status the operator accepts, without an answer: healthy as configured.
        Err(_) => Ok(()),
    }
}
