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

//!
//! Every connection also gets a connect timeout and TCP keepalives unless
//! the URL sets its own (see [`CONNECT_TIMEOUT`]).
//!
//! Modules: [`params`] takes the two parameters out of the URL;
//! `verifier` is the rustls certificate check for each mode.

pub mod params;
mod verifier;

use crate::outbound_tls;
use crate::Error;
pub use params::{take_ssl_params, SslParams};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
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

/// Bounds for connections whose URL sets none. Without them a connect to
/// an unreachable host waits for the OS (minutes), and a server that
/// vanished without closing (host down, NAT entry dropped) leaves the idle
/// `LISTEN` connection waiting forever (keepalive idle is 2 h by default):
/// the relay would stop hearing of checkpoints without noticing. With
/// these, a dead peer is noticed in about a minute and the connection is
/// reopened.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 3;
/// Unacknowledged data (a query sent to a dead server) fails after this.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// tokio-postgres' keepalive idle when the URL does not set one.
const PG_DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

fn default_timeouts(config: &mut tokio_postgres::Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives() {
        if config.get_keepalives_idle() == PG_DEFAULT_KEEPALIVE_IDLE {
            config.keepalives_idle(KEEPALIVE_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(KEEPALIVE_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(KEEPALIVE_RETRIES);
        }
    }
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
        default_timeouts(&mut config);
        let roots = match &policy.roots {
            Roots::Unchecked => None,
            Roots::System => Some(outbound_tls::system_roots()?),
            Roots::File(path) => Some(Arc::new(outbound_tls::pem_roots(path, "sslrootcert")?)),
        };
        let verifier = Arc::new(verifier::PgCertVerifier {
            roots,
            check_host: policy.check_host,
            mode: policy.mode.name(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timeouts_default_unless_the_url_sets_them() {
        let c = PgConnect::parse("host=h sslmode=disable").unwrap().config;
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(c.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        let c = PgConnect::parse(
            "host=h connect_timeout=3 keepalives_idle=600 keepalives_interval=5 \
             keepalives_retries=9 tcp_user_timeout=7",
        )
        .unwrap()
        .config;
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(600));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.get_keepalives_retries(), Some(9));
        let c = PgConnect::parse("host=h keepalives=0").unwrap().config;
        assert!(!c.get_keepalives());
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
