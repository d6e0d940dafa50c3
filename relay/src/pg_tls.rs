//! TLS for the relay's Postgres connections: libpq's `sslmode` and
//! `sslrootcert` in the database URL, enforced with rustls.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and rejects
//! `sslrootcert`, so both are taken out of the URL before it parses the rest
//! and the certificate check is done here:
//!
//! | `sslmode` | TLS | certificate check |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers it | chain, if `sslrootcert` names a file |
//! | `require` | always | chain, if `sslrootcert` names a file (as libpq does) |
//! | `verify-ca` | always | chain to `sslrootcert` (system roots if unset) |
//! | `verify-full` | always | chain and host name (`host`, not `hostaddr`) |
//!
//! `sslrootcert=system` trusts the system roots and, as in libpq 16, implies
//! `verify-full` and refuses weaker modes. Unlike libpq, nothing is read from
//! `~/.postgresql/root.crt` or `PG*` environment variables: the URL says all.
//! `allow` is treated as `prefer` (it tries TLS first instead of last).

use crate::outbound_tls;
use crate::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "invalid database URL: sslmode {other:?} is not one of disable, allow, \
                     prefer, require, verify-ca, verify-full"
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// Certificates are not checked (encryption only).
    Unchecked,
    System,
    File(PathBuf),
}

/// What a URL's `sslmode` and `sslrootcert` ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    pub mode: SslMode,
    pub roots: Roots,
    /// Whether the certificate must name the host (`verify-full`).
    pub check_host: bool,
}

impl TlsPolicy {
    /// libpq's rules for combining the two parameters.
    pub fn new(mode: Option<&str>, rootcert: Option<&str>) -> Result<TlsPolicy, Error> {
        let system = rootcert == Some("system");
        let mode = match mode {
            Some(m) => SslMode::parse(m)?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::Config(format!(
                "invalid database URL: sslrootcert=system needs sslmode=verify-full, not {}",
                mode.name()
            )));
        }
        let file = rootcert
            .filter(|r| !system && !r.is_empty())
            .map(PathBuf::from);
        let roots = match (mode, file) {
            (SslMode::Disable, _) => Roots::Unchecked,
            (_, Some(f)) => Roots::File(f),
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => Roots::System,
            (_, None) => Roots::Unchecked,
        };
        Ok(TlsPolicy {
            mode,
            roots,
            check_host: mode == SslMode::VerifyFull,
        })
    }

    fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

/// A database URL ready for tokio-postgres (or a deadpool `Manager`): the
/// parsed config and the connector that enforces the URL's TLS policy.
pub struct PgConnect {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub policy: TlsPolicy,
}

/// The stream type of a connection made by [`PgConnect::connect`].
pub type PgStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

impl PgConnect {
    /// Parses `url` (key/value or `postgres://` form). Reads `sslrootcert`
    /// (and the system roots when needed) now, so a bad file fails at start.
    pub fn parse(url: &str) -> Result<PgConnect, Error> {
        let (rest, params) = take_ssl_params(url)?;
        let policy = TlsPolicy::new(params.sslmode.as_deref(), params.sslrootcert.as_deref())?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| Error::Config(format!("invalid database URL: {e}")))?;
        config.ssl_mode(policy.pg_mode());
        let roots = match &policy.roots {
            Roots::Unchecked => None,
            Roots::System => Some(outbound_tls::system_roots()?),
            Roots::File(path) => Some(Arc::new(outbound_tls::pem_roots(path, "sslrootcert")?)),
        };
        let verifier = Arc::new(PgCertVerifier {
            roots,
            check_host: policy.check_host,
            mode: policy.mode,
            rootcert: match &policy.roots {
                Roots::File(p) => Some(p.clone()),
                _ => None,
            },
            provider: outbound_tls::provider(),
        });
        let tls = MakeRustlsConnect::new(outbound_tls::config_with_verifier(verifier)?);
        Ok(PgConnect {
            config,
            tls,
            policy,
        })
    }

    /// Opens one connection; its `Connection` half must be polled.
    pub async fn connect(&self) -> Result<(Client, Connection<Socket, PgStream>), Error> {
        Ok(self.config.connect(self.tls.clone()).await?)
    }
}

/// The TLS parameters taken out of a database URL.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SslParams {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

const TAKEN: [&str; 2] = ["sslmode", "sslrootcert"];

/// Splits `sslmode` and `sslrootcert` off `url`, leaving the rest as written.
pub fn take_ssl_params(url: &str) -> Result<(String, SslParams), Error> {
    let mut params = SslParams::default();
    let mut keep = |key: &str, value: String| match key {
        "sslmode" => params.sslmode = Some(value),
        "sslrootcert" => params.sslrootcert = Some(value),
        _ => {}
    };
    let rest = if let Some(prefix) = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| url.starts_with(p))
    {
        take_from_uri(url, prefix.len(), &mut keep)?
    } else {
        take_from_key_values(url, &mut keep)?
    };
    Ok((rest, params))
}

/// `postgres://user:pw@host/db?k=v&…`: parameters follow the first `?` after
/// the credentials (the same split tokio-postgres makes).
fn take_from_uri(
    url: &str,
    prefix: usize,
    keep: &mut impl FnMut(&str, String),
) -> Result<String, Error> {
    let after_creds = url[prefix..].find('@').map_or(prefix, |i| prefix + i + 1);
    let Some(q) = url[after_creds..].find('?').map(|i| after_creds + i) else {
        return Ok(url.to_string());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Error::Config("invalid database URL: parameter is not UTF-8".into()))
    };
    let mut rest = Vec::new();
    for pair in url[q + 1..].split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(k)?;
        if TAKEN.contains(&key.as_str()) {
            keep(&key, decode(v)?);
        } else {
            rest.push(pair);
        }
    }
    let mut out = url[..q].to_string();
    if !rest.is_empty() {
        out.push('?');
        out.push_str(&rest.join("&"));
    }
    Ok(out)
}

/// `host=… sslmode='verify-full'`: libpq's key/value syntax, values bare or
/// single-quoted, with backslash escapes.
fn take_from_key_values(s: &str, keep: &mut impl FnMut(&str, String)) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = String::new();
    let bad = |m: &str| Error::Config(format!("invalid database URL: {m}"));
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(bad(&format!("expected `=` after {key:?}")));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        let mut closed = !quoted;
        while i < b.len() {
            let c = b[i];
            if quoted && c == b'\'' {
                i += 1;
                closed = true;
                break;
            }
            if !quoted && c.is_ascii_whitespace() {
                break;
            }
            // Byte-wise is safe: the delimiters are ASCII and never occur
            // inside a multi-byte UTF-8 sequence.
            let from = if c == b'\\' && i + 1 < b.len() {
                i + 1
            } else {
                i
            };
            let len = utf8_len(b[from]);
            value.push_str(&s[from..from + len]);
            i = from + len;
        }
        if !closed {
            return Err(bad("unterminated quoted value"));
        }
        if TAKEN.contains(&key) {
            keep(key, value);
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&s[start..i]);
        }
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Judges the server certificate as the URL's policy asks, and says in its
/// error which policy refused it (the relay logs the error as is).
#[derive(Debug)]
struct PgCertVerifier {
    roots: Option<Arc<RootCertStore>>,
    check_host: bool,
    mode: SslMode,
    rootcert: Option<PathBuf>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// Why a Postgres server certificate was refused. rustls prints it with
/// `{:?}`, so Debug is the sentence too.
struct Refused {
    mode: SslMode,
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
            self.mode.name(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, p) = take_ssl_params(url).unwrap();
        (rest, p.sslmode, p.sslrootcert)
    }

    #[test]
    fn key_value_urls_lose_only_the_tls_parameters() {
        let (rest, mode, root) = split(
            "host=db.example.com  sslmode = verify-full port=5432 \
             sslrootcert='/etc/ca dir/ca.pem' password='a b\\' c' dbname=app",
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(
            rest,
            "host=db.example.com port=5432 password='a b\\' c' dbname=app"
        );
        // What is left parses as before.
        tokio_postgres::Config::from_str("host=h password='a\\' b' dbname=x").unwrap();
        let (rest, mode, _) = split(r"host=h sslmode=re\quire");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("host=h", Some("require"))
        );
        assert!(take_ssl_params("host=h sslrootcert='open").is_err());
        assert!(take_ssl_params("host=h sslmode").is_err());
    }

    #[test]
    fn uri_urls_lose_only_the_tls_parameters() {
        let (rest, mode, root) = split(
            "postgres://u:p%3Fw@db.example.com:5432/app?application_name=relay&sslmode=verify-ca&sslrootcert=%2Fca%20x.pem",
        );
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/ca x.pem"));
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example.com:5432/app?application_name=relay"
        );
        let (rest, mode, _) = split("postgresql://h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("postgresql://h/db", Some("require"))
        );
        let (rest, mode, _) = split("postgres://h/db");
        assert_eq!((rest.as_str(), mode), ("postgres://h/db", None));
        // A `?` in the password is not where the parameters start.
        let (rest, mode, _) = split("postgres://u:a?b@h/db?sslmode=disable");
        assert_eq!(
            (rest.as_str(), mode.as_deref()),
            ("postgres://u:a?b@h/db", Some("disable"))
        );
    }

    fn policy(mode: Option<&str>, root: Option<&str>) -> TlsPolicy {
        TlsPolicy::new(mode, root).unwrap()
    }

    #[test]
    fn libpq_rules_for_mode_and_roots() {
        let file = Roots::File("/ca.pem".into());
        let p = policy(None, None);
        assert_eq!((p.mode, &p.roots), (SslMode::Prefer, &Roots::Unchecked));
        assert_eq!(policy(Some("require"), None).roots, Roots::Unchecked);
        // libpq: a root certificate makes `require` (and `prefer`) check the chain.
        let p = policy(Some("require"), Some("/ca.pem"));
        assert_eq!((&p.roots, p.check_host), (&file, false));
        assert_eq!(policy(Some("prefer"), Some("/ca.pem")).roots, file);
        let p = policy(Some("verify-ca"), None);
        assert_eq!((&p.roots, p.check_host), (&Roots::System, false));
        let p = policy(Some("verify-full"), Some("/ca.pem"));
        assert_eq!((&p.roots, p.check_host), (&file, true));
        assert_eq!(p.pg_mode(), PgSslMode::Require);
        let p = policy(None, Some("system"));
        assert_eq!((p.mode, &p.roots), (SslMode::VerifyFull, &Roots::System));
        assert_eq!(
            policy(Some("disable"), Some("/ca.pem")).roots,
            Roots::Unchecked
        );
        assert_eq!(policy(Some("allow"), None).pg_mode(), PgSslMode::Prefer);
        assert_eq!(policy(Some("disable"), None).pg_mode(), PgSslMode::Disable);
    }

    #[test]
    fn bad_modes_are_config_errors() {
        let e = TlsPolicy::new(Some("verify_full"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("verify_full") && e.contains("verify-full"),
            "{e}"
        );
        let e = TlsPolicy::new(Some("require"), Some("system"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslrootcert=system"), "{e}");
    }

    #[test]
    fn parse_keeps_other_settings_and_sets_the_pg_mode() {
        let c = PgConnect::parse(
            "host=h user=u dbname=d application_name=a sslmode=verify-ca sslrootcert=system",
        );
        // verify-ca with sslrootcert=system is refused like libpq does.
        assert!(c.is_err());
        let c =
            PgConnect::parse("postgres://u@h:6543/d?application_name=a&sslmode=require").unwrap();
        assert_eq!(c.config.get_user(), Some("u"));
        assert_eq!(c.config.get_ports(), &[6543]);
        assert_eq!(c.config.get_application_name(), Some("a"));
        assert_eq!(c.config.get_ssl_mode(), PgSslMode::Require);
        let e = PgConnect::parse("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
    }
}
