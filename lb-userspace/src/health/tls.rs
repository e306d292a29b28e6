//! TLS for HTTPS checks (rustls): the server name is the check's `host` (without a port)
//! or the backend's address; the certificate is verified against the system's
//! certificate authorities, or those of `ca_file`, unless `tls_verify = false`.

use std::{
    net::IpAddr,
    sync::{Arc, OnceLock},
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ProbeError;
use crate::config::HealthCheck;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The configuration verifying against the system's certificate authorities (read once).
fn system() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no system certificate authorities found: HTTPS checks that verify certificates will fail (set ca_file, or tls_verify = false)"
                );
            }
            with_roots(roots)
        })
        .clone()
}

/// The configuration verifying against the authorities in `path`.
fn from_file(path: &std::path::Path) -> Result<Arc<ClientConfig>, ProbeError> {
    let local = |e: String| ProbeError::Local(format!("ca_file {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| local(e.to_string()))? {
        let cert = cert.map_err(|e| local(e.to_string()))?;
        roots.add(cert).map_err(|e| local(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(local("no certificate in it".to_owned()));
    }
    Ok(with_roots(roots))
}

/// Accepts any certificate (`tls_verify = false`); signatures are still checked, so the
/// exchange is TLS with whoever holds the presented key.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn unverified() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let p = provider();
            Arc::new(
                ClientConfig::builder_with_provider(p.clone())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Unverified(p)))
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// The name the certificate must carry: `host` without its port, or the address.
fn server_name(backend: IpAddr, c: &HealthCheck) -> ServerName<'static> {
    if let Some(h) = &c.host {
        let name = match h.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) && !n.contains(':') => n,
            _ => h.as_str(),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(n) = ServerName::try_from(name.to_owned()) {
            return n;
        }
    }
    ServerName::IpAddress(backend.into())
}

/// A TLS session over `s` for the check.
pub(super) async fn connect(
    s: TcpStream,
    backend: IpAddr,
    c: &HealthCheck,
) -> Result<TlsStream<TcpStream>, ProbeError> {
    let config = match (&c.ca_file, c.tls_verify) {
        (_, false) => unverified(),
        (Some(path), true) => from_file(path)?,
        (None, true) => system(),
    };
    TlsConnector::from(config)
        .connect(server_name(backend, c), s)
        .await
        .map_err(|e| ProbeError::Backend(format!("TLS: {e}")))
}
