//! TLS for `https://` endpoints: rustls with the Mozilla roots (webpki-roots,
//! compiled in, so no OpenSSL or system files are needed at run time), plus any
//! private CA the app trusts.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// The client config: public roots, plus the PEM certificates in `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let bad = |e: &dyn std::fmt::Display| {
            Error::Transport(format!("--ca-cert {}: {e}", path.display()))
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad(&"no PEM certificate in the file"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Transport(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A readable cause for a failed request: a certificate problem says so (and
/// what to do), instead of hyper's generic "client error (Connect)".
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cause = err.source();
    while let Some(c) = cause {
        match as_tls(c) {
            Some(rustls::Error::InvalidCertificate(why)) => {
                return format!(
                    "TLS: the relay's certificate is not trusted ({why:?}); trust the CA that \
                     signed it with --ca-cert (library: TransportOptions::ca_cert)"
                )
            }
            Some(e) => return format!("TLS: {e}"),
            None => parts.push(c.to_string()),
        }
        cause = c.source();
    }
    parts.dedup();
    parts.join(": ")
}

fn as_tls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    // hyper-rustls wraps tokio-rustls' io::Error in another io::Error; an
    // io::Error's `source` skips the error it wraps, so unwrap by hand.
    let mut io = e.downcast_ref::<std::io::Error>()?;
    loop {
        let inner = io.get_ref()?;
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        io = inner.downcast_ref::<std::io::Error>()?;
    }
}
