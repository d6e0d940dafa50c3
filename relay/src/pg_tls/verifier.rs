//! The rustls certificate verifier behind every `sslmode`: no check,
//! chain only (`verify-ca`, or a root certificate with weaker modes), or
//! chain and host name (`verify-full`).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

/// Judges the server certificate as the URL's policy asks, and says in its
/// error which policy refused it (the relay logs the error as is).
#[derive(Debug)]
pub(super) struct PgCertVerifier {
    /// `None`: the certificate is not checked (encryption only).
    pub roots: Option<Arc<RootCertStore>>,
    pub check_host: bool,
    /// The `sslmode` this verifier enforces, for errors.
    pub mode: &'static str,
    pub rootcert: Option<PathBuf>,
    pub provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Why a Postgres server certificate was refused. rustls prints it with
/// `{:?}`, so Debug is the sentence too.
struct Refused {
    mode: &'static str,
    rootcert: Option<PathBuf>,
    cause: rustls::Error,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let trusted = match &self.rootcert {
            Some(p) => format!("the CA certificates in sslrootcert {}", p.display()),
            None => "the system root certificates".into(),
        };
        let hint = match &self.cause {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                format!("it is not signed by {trusted}")
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => "it does not name the host in the URL".into(),
            _ => format!("checked against {trusted}"),
        };
        let cause = match &self.cause {
            rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
            other => other.to_string(),
        };
        write!(
            f,
            "Postgres server certificate refused under sslmode={}: {hint} ({cause})",
            self.mode,
        )
    }
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Refused {}

impl PgCertVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if self.check_host {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(())
    }
}

impl ServerCertVerifier for PgCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|cause| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    Refused {
                        mode: self.mode,
                        rootcert: self.rootcert.clone(),
                        cause,
                    },
                ))))
            })
    }

    // The handshake signature proves the server holds the certificate's key,
    // which matters even when the certificate itself is not checked.
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
