//! Command line. Every `serve` flag mirrors an `OUTPOST_*` environment
//! variable, so a container can be configured by env alone.

use clap::{ArgAction, Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-relay",
    version,
    about = "Outpost sync relay: streams Postgres buckets to SQLite clients (PowerSync protocol)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP relay.
    Serve(ServeArgs),
    /// Print a development HS256 token signed with OUTPOST_JWT_SECRET.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Postgres connection string (the database with `CREATE EXTENSION outpost`).
    #[arg(long, env = "OUTPOST_DATABASE_URL")]
    pub database_url: String,

    /// Hot standbys of that database (streaming replicas), comma-separated,
    /// one server per URL: the sync path's reads (checkpoint state, changes,
    /// op pages, /schema) go to the first one in rotation; ticks, compaction,
    /// write checkpoints and /crud stay on --database-url. A stream is told
    /// of a checkpoint only once the standby it reads from has replayed it.
    #[arg(long, env = "OUTPOST_REPLICA_URL", value_delimiter = ',')]
    pub replica_url: Vec<String>,

    /// Seconds a standby may trail the primary's latest checkpoint before it
    /// is taken out of rotation (reads go to the next standby, or the primary).
    #[arg(long, env = "OUTPOST_REPLICA_MAX_LAG", default_value_t = 5.0, value_parser = parse_max_lag)]
    pub replica_max_lag: f64,

    /// Address to listen on.
    #[arg(long, env = "OUTPOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// HS256 secret for client tokens (used as raw bytes).
    #[arg(long, env = "OUTPOST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Path to a JWKS file with public keys (RS256/ES256/EdDSA); tokens select a key by `kid`.
    #[arg(long, env = "OUTPOST_JWKS")]
    pub jwks: Option<PathBuf>,

    /// Required `aud` of client tokens (comma-separated for several). Unset: `aud` is not checked.
    #[arg(long, env = "OUTPOST_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,

    /// Postgres role that `POST /crud` writes as (`SET LOCAL ROLE`). Unset: /crud is disabled.
    #[arg(long, env = "OUTPOST_WRITE_ROLE")]
    pub write_role: Option<String>,

    /// Maximum concurrent client connections; connections beyond it get 503.
    #[arg(long, env = "OUTPOST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Size of the Postgres connection pool used for queries.
    #[arg(long, env = "OUTPOST_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Drive ticks: LISTEN `outpost_changes` and call `outpost.tick()`.
    /// Turn off when a background worker or another process drives them.
    #[arg(long, env = "OUTPOST_DRIVE_TICKS", default_value_t = true, action = ArgAction::Set)]
    pub drive_ticks: bool,

    /// Run `outpost.compact_online()` whenever this many op ids were allocated since
    /// the last compaction this relay started (0: never; schedule it yourself).
    /// Only with --drive-ticks; a compaction running elsewhere makes it a no-op.
    #[arg(long, env = "OUTPOST_COMPACT_EVERY_OPS", default_value_t = 100_000)]
    pub compact_every_ops: u64,

    /// Maximum ops per `bucket_ops` query (one page of a data line).
    #[arg(long, env = "OUTPOST_MAX_OPS_PER_BATCH", default_value_t = 1000)]
    pub max_ops_per_batch: u32,

    /// Maximum request body size in bytes (all endpoints but `/sync/stream`).
    #[arg(long, env = "OUTPOST_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Maximum `/sync/stream` request body in bytes. A resuming client lists
    /// every bucket it holds with its position (about 80 bytes each), so
    /// this bounds the buckets a client can resume with: the default, 32 MiB,
    /// fits well over 100,000.
    #[arg(long, env = "OUTPOST_MAX_SYNC_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_sync_body_bytes: usize,

    /// How long a new stream waits, at most, for a checkpoint that includes
    /// every transaction committed before its request (see the README's
    /// "Freshness at connect"); beyond it the stream starts from the latest.
    /// Default 10000 with --drive-ticks. Without, the relay waits for the
    /// next announced checkpoint and an idle database announces none, so
    /// every connect waits this long: default 250 (0: no wait).
    #[arg(long, env = "OUTPOST_FRESHNESS_WAIT_MS")]
    pub freshness_wait_ms: Option<u64>,

    /// Seconds a client gets to send a request's headers, and again its body;
    /// a slower client is disconnected (headers) or answered 408 (body).
    #[arg(long, env = "OUTPOST_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub read_timeout_secs: u64,

    // Reaching the relay over real networks: browsers, TLS, compression.
    /// Origins allowed to call the client endpoints from a browser (CORS):
    /// `*` for any, or a comma-separated list like `https://app.example.com`.
    #[arg(
        long,
        env = "OUTPOST_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub cors_origins: Vec<String>,

    /// PEM certificate chain to serve HTTPS with (h1 and h2); needs --tls-key.
    /// Both files are read again on SIGHUP.
    #[arg(long, env = "OUTPOST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "OUTPOST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Compress /sync/stream with zstd or gzip when the request's
    /// Accept-Encoding allows it (flushed whenever the stream catches up).
    #[arg(long, env = "OUTPOST_COMPRESSION", default_value_t = true, action = ArgAction::Set)]
    pub compression: bool,

    /// Seconds a stream may wait for its client to take a line; a client that
    /// stopped reading is disconnected after that.
    #[arg(long, env = "OUTPOST_SEND_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout_secs: u64,
    #[command(flatten)]
    pub idp: IdpArgs,
}

fn parse_max_lag(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('s').parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Keys published by an identity provider, and the issuer its tokens name.
#[derive(Debug, Clone, Args)]
pub struct IdpArgs {
    /// JWKS URLs of identity providers (comma-separated for several): fetched at
    /// start, cached, refreshed. `https://`, or `http://` for loopback hosts only.
    #[arg(long, env = "OUTPOST_JWKS_URL", value_delimiter = ',')]
    pub jwks_url: Vec<String>,

    /// PEM file of CA certificates trusted for JWKS URLs, besides the system roots.
    #[arg(long, env = "OUTPOST_JWKS_CA_CERT")]
    pub jwks_ca_cert: Option<PathBuf>,

    /// Seconds between scheduled fetches of the JWKS URLs.
    #[arg(long, env = "OUTPOST_JWKS_REFRESH_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwks_refresh_secs: u64,

    /// Minimum seconds between fetches caused by tokens with an unknown `kid`.
    #[arg(long, env = "OUTPOST_JWKS_MIN_REFETCH_SECS", default_value_t = 30)]
    pub jwks_min_refetch_secs: u64,

    /// Required `iss` of client tokens (comma-separated for several). Unset: `iss` is not checked.
    #[arg(long, env = "OUTPOST_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
}

impl Default for IdpArgs {
    fn default() -> IdpArgs {
        IdpArgs {
            jwks_url: Vec::new(),
            jwks_ca_cert: None,
            jwks_refresh_secs: 300,
            jwks_min_refetch_secs: 30,
            jwt_issuer: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub` claim).
    #[arg(long)]
    pub sub: String,

    /// Lifetime in seconds (at most 86400, which the relay enforces).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,

    /// The HS256 secret.
    #[arg(long, env = "OUTPOST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// `aud` claim to include (defaults to the first configured audience).
    #[arg(long, env = "OUTPOST_JWT_AUDIENCE", value_delimiter = ',')]
    pub aud: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "outpost-relay",
            "serve",
            "--database-url",
            "postgres://x@127.0.0.1/db",
            "--jwt-audience",
            "a,b",
            "--drive-ticks",
            "false",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.jwt_audience, vec!["a", "b"]);
        assert!(!s.drive_ticks);
        assert!(s.replica_url.is_empty());
        assert_eq!(s.replica_max_lag, 5.0);
    }

    #[test]
    fn replica_flags_parse() {
        let cli = Cli::try_parse_from([
            "outpost-relay",
            "serve",
            "--database-url",
            "host=p",
            "--replica-url",
            "host=s1 port=5451,postgres://x@s2/db",
            "--replica-max-lag",
            "0.5s",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            s.replica_url,
            vec!["host=s1 port=5451", "postgres://x@s2/db"]
        );
        assert_eq!(s.replica_max_lag, 0.5);
        assert!(Cli::try_parse_from([
            "outpost-relay",
            "serve",
            "--database-url",
            "host=p",
            "--replica-max-lag",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn idp_flags_parse_and_default() {
        let cli = Cli::try_parse_from([
            "outpost-relay",
            "serve",
            "--database-url",
            "postgres://x@127.0.0.1/db",
            "--jwks-url",
            "https://a.example/jwks.json,https://b.example/jwks.json",
            "--jwt-issuer",
            "https://a.example",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.idp.jwks_url.len(), 2);
        assert_eq!(s.idp.jwt_issuer, vec!["https://a.example"]);
        let d = IdpArgs::default();
        assert_eq!(
            (s.idp.jwks_refresh_secs, s.idp.jwks_min_refetch_secs),
            (d.jwks_refresh_secs, d.jwks_min_refetch_secs)
        );
    }
}
