//! TLS for connections to PostgreSQL, with libpq's `sslmode` semantics, over rustls.
//!
//! | `sslmode` | encryption | certificate checked | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | - | - |
//! | `prefer` (default) | if the server offers it | no | no |
//! | `require` | yes | only if `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! Certificates are checked against `sslrootcert` (a PEM file), or the Mozilla roots when it is
//! not given. `sslcert` and `sslkey` give a client certificate.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without checks.
    #[default]
    Prefer,
    /// TLS, certificate checked only when a root certificate is given.
    Require,
    /// TLS, certificate checked, host name not checked.
    VerifyCa,
    /// TLS, certificate and host name checked.
    VerifyFull,
}

impl std::str::FromStr for SslMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "allow" | "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(Error::Config(format!(
                "unknown sslmode {other:?} (expected disable, prefer, require, verify-ca or verify-full)"
            ))),
        }
    }
}

/// TLS settings of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The mode.
    pub mode: SslMode,
    /// `sslrootcert`: trusted root certificates (PEM).
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: the client certificate (PEM).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's key (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsOptions {
    /// The mode in effect: `require` with a root certificate checks the certificate, as libpq.
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.root_cert.is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    /// The rustls configuration for these options.
    pub(crate) fn client_config(&self) -> Result<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|error| Error::Tls(error.to_string()))?;
        let builder = match self.effective_mode() {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider))),
            SslMode::VerifyCa => {
                let roots = Arc::new(self.roots()?);
                let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|error| Error::Tls(error.to_string()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(IgnoreHostName(inner)))
            }
            SslMode::VerifyFull => builder.with_root_certificates(self.roots()?),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|error| {
                        Error::Tls(format!("read sslcert {}: {error}", cert.display()))
                    })?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                    Error::Tls(format!("read sslkey {}: {error}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| Error::Tls(format!("client certificate: {error}")))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(Error::Config(
                "sslcert and sslkey must be given together".into(),
            )),
        }
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certificates = CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|error| {
                        Error::Tls(format!("read sslrootcert {}: {error}", path.display()))
                    })?;
                let (added, _) = roots.add_parsable_certificates(certificates);
                if added == 0 {
                    return Err(Error::Tls(format!(
                        "sslrootcert {} holds no usable certificate",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(roots)
    }

    /// The `pgwire-replication` TLS settings for the replication connection.
    pub(crate) fn replication_tls(&self) -> pgwire_replication::TlsConfig {
        let mut tls = match self.effective_mode() {
            SslMode::Disable => pgwire_replication::TlsConfig::disabled(),
            SslMode::Prefer => pgwire_replication::TlsConfig {
                mode: pgwire_replication::SslMode::Prefer,
                ..pgwire_replication::TlsConfig::default()
            },
            SslMode::Require => pgwire_replication::TlsConfig::require(),
            SslMode::VerifyCa => pgwire_replication::TlsConfig::verify_ca(self.root_cert.clone()),
            SslMode::VerifyFull => {
                pgwire_replication::TlsConfig::verify_full(self.root_cert.clone())
            }
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.with_client_cert(cert, key);
        }
        tls
    }
}

/// Encrypts without checking the certificate (`prefer`, `require`).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// Checks the certificate chain but not the host name (`verify-ca`).
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_like_libpq() {
        assert_eq!(
            "verify-full".parse::<SslMode>().unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!("allow".parse::<SslMode>().unwrap(), SslMode::Prefer);
        assert!("bogus".parse::<SslMode>().is_err());
        let with_root = TlsOptions {
            mode: SslMode::Require,
            root_cert: Some("/ca.pem".into()),
            ..TlsOptions::default()
        };
        assert_eq!(with_root.effective_mode(), SslMode::VerifyCa);
    }

    #[test]
    fn builds_configs_and_reports_bad_files() {
        for mode in [SslMode::Prefer, SslMode::Require, SslMode::VerifyFull] {
            TlsOptions {
                mode,
                ..TlsOptions::default()
            }
            .client_config()
            .unwrap();
        }
        let missing = TlsOptions {
            mode: SslMode::VerifyCa,
            root_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let error = missing.client_config().unwrap_err().to_string();
        assert!(
            error.contains("read sslrootcert /nonexistent/ca.pem"),
            "{error}"
        );
        let half = TlsOptions {
            client_cert: Some("/c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(half.client_config().is_err());
    }
}
