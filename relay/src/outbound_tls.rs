//! Trust anchors and rustls client configs for the connections the relay
//! opens itself: to Postgres ([`crate::pg_tls`]) and to JWKS URLs
//! ([`crate::auth`]). No OpenSSL is involved at run time.
//!
//! The crypto provider (ring) is named explicitly rather than taken from
//! rustls' process default: when several providers are compiled into one
//! binary, the default-provider builders refuse to pick one.

use crate::Error;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The provider every outgoing TLS connection of the relay uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The operating system's trust store (read once per process).
pub fn system_roots() -> Result<Arc<RootCertStore>, Error> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system root certificates found{why}: install the ca-certificates \
                     package or name a CA file"
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
        .map_err(Error::Config)
}

/// The certificates of a PEM file; `what` names the setting in errors.
pub fn pem_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::Config(format!(
            "{what} {}: cannot read certificates: {e}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A store holding exactly the certificates of a PEM file.
pub fn pem_roots(path: &Path, what: &str) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    add_all(&mut store, pem_certificates(path, what)?, path, what)?;
    Ok(store)
}

/// The system roots plus the certificates of `extra` (when given). Without
/// `extra`, no system roots is an error; with it, they are optional.
pub fn system_roots_plus(extra: Option<&Path>, what: &str) -> Result<RootCertStore, Error> {
    let mut store = match (system_roots(), extra) {
        (Ok(s), _) => (*s).clone(),
        (Err(_), Some(_)) => RootCertStore::empty(),
        (Err(e), None) => return Err(e),
    };
    if let Some(path) = extra {
        add_all(&mut store, pem_certificates(path, what)?, path, what)?;
    }
    Ok(store)
}

fn add_all(
    store: &mut RootCertStore,
    certs: Vec<CertificateDer<'static>>,
    path: &Path,
    what: &str,
) -> Result<(), Error> {
    for cert in certs {
        store.add(cert).map_err(|e| {
            Error::Config(format!(
                "{what} {}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// A client config that verifies servers against `roots` (chain and name).
pub fn config_with_roots(roots: RootCertStore) -> Result<ClientConfig, Error> {
    Ok(builder()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client config whose server certificates `verifier` judges.
pub fn config_with_verifier(verifier: Arc<dyn ServerCertVerifier>) -> Result<ClientConfig, Error> {
    Ok(builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, Error> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_files_without_certificates_are_refused() {
        let dir = std::env::temp_dir().join(format!("outpost-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = pem_roots(&empty, "sslrootcert").unwrap_err().to_string();
        assert!(
            e.contains("sslrootcert") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = pem_roots(&dir.join("missing.pem"), "sslrootcert")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
