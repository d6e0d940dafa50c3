//! The `outpost` command line.
//!
//! Views: `sync --schema FILE` installs the app schema (PowerSync's schema JSON:
//! `{"tables":[{"name":"todos","columns":[{"name":"title","type":"text"}]}]}`).
//! Without it, `sync` asks the relay (`GET /schema`, derived from the sync rules);
//! when the relay serves none (404/501), views are inferred from the synced rows:
//! one per synced type, one column per JSON key seen (refreshed after every
//! applied checkpoint).
//!
//! `sync --once` prints `{"checkpoint": "<op id>", "tables": {"<table>": <rows>, …}}`, plus
//! `"streams": [...]` (each subscription's status) when there are any. `query` and
//! `exec` use whatever views the database has.
//!
//! `sync --stream NAME:{json}` subscribes like `Database::sync_stream(..).subscribe()`:
//! the subscription is stored and held while `sync` runs, and lingers for
//! `--stream-ttl` seconds after (default one day, PowerSync's), so the next
//! `sync` still carries it until then. A stream the server cannot resolve
//! (unknown, a missing or bad parameter) is reported on stderr as
//! `stream NAME {params}: error: …` while the others sync. While a
//! checkpoint downloads, each subscription's progress (ops of its buckets)
//! shows as a bar of its own on a terminal, and as
//! `stream NAME {params}: D/T ops downloaded` lines (at most one a second)
//! otherwise.

use clap::{Parser, Subcommand};
use outpost_client::net::connector::fetch_relay_schema;
use outpost_client::{
    Credentials, Database, Error, Http, Result, Schema, SchemaMode, StaticConnector, SyncClient,
    SyncOptions, TransportOptions,
};
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost client: sync Postgres to a local SQLite database"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync the database with a relay (and upload queued local writes).
    Sync {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        token: String,
        /// Exit after the first complete checkpoint, printing a JSON summary.
        #[arg(long)]
        once: bool,
        /// App schema (JSON). Default: the relay's `GET /schema`, else inferred from the data.
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Client parameter `KEY=VALUE` (value parsed as JSON, else taken as text).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Subscribe to a Sync Stream: `NAME` or `NAME:{"key":"value"}` (repeatable).
        #[arg(long = "stream", value_name = "NAME:{JSON}")]
        streams: Vec<String>,
        /// How long the `--stream` subscriptions' data stays after this run
        /// (seconds; 0: they leave at once; default one day).
        #[arg(long, value_name = "SECS")]
        stream_ttl: Option<u64>,
        /// Give up after this many consecutive failed attempts (default: 3 with --once, never otherwise).
        #[arg(long)]
        attempts: Option<u32>,
        /// PEM file of CA certificates to trust for an `https://` endpoint, besides
        /// the public roots (a relay with a certificate from a private CA).
        #[arg(long, value_name = "PATH")]
        ca_cert: Option<PathBuf>,
        /// Reconnect when the relay has sent nothing for this long (it sends a
        /// keepalive every 20 s; a silent connection is dead or half-open).
        #[arg(long, default_value_t = 60)]
        idle_timeout_secs: u64,
    },
    /// Run a query; prints a JSON array of row objects.
    Query {
        #[arg(long)]
        db: PathBuf,
        sql: String,
    },
    /// Run a local write through the views; it is queued for upload.
    Exec {
        #[arg(long)]
        db: PathBuf,
        sql: String,
    },
    /// Print the local sync state as JSON.
    Status {
        #[arg(long)]
        db: PathBuf,
    },
}

/// Runs a parsed command, printing its JSON result to stdout.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sync {
            db,
            endpoint,
            token,
            once,
            schema,
            params,
            streams,
            stream_ttl,
            attempts,
            ca_cert,
            idle_timeout_secs,
        } => {
            let subscriptions = streams
                .iter()
                .map(|s| outpost_client::parse_stream_arg(s))
                .collect::<Result<Vec<_>>>()?;
            let creds = Credentials { endpoint, token };
            let transport = TransportOptions {
                ca_cert,
                idle_timeout: std::time::Duration::from_secs(idle_timeout_secs.max(1)),
                ..TransportOptions::default()
            };
            let http = Http::with_options(&transport)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Error::Transport(e.to_string()))?;
            let mode = match schema {
                Some(p) => SchemaMode::Fixed(Schema::from_json(
                    &std::fs::read_to_string(&p)
                        .map_err(|e| Error::Schema(format!("{}: {e}", p.display())))?,
                )?),
                None => rt.block_on(relay_schema_mode(&db, &http, &creds))?,
            };
            let database = Database::open(&db, mode)?;
            let mut parameters = Map::new();
            for p in params {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| Error::Schema(format!("--param {p:?}: expected KEY=VALUE")))?;
                let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
                parameters.insert(k.to_string(), v);
            }
            let options = SyncOptions {
                parameters,
                streams: (!subscriptions.is_empty()).then_some(outpost_client::StreamsRequest {
                    include_defaults: true,
                    subscriptions,
                }),
                stream_ttl: stream_ttl.map(std::time::Duration::from_secs),
                once,
                max_attempts: attempts.or(once.then_some(3)),
                transport,
                ..SyncOptions::default()
            };
            let connector = Arc::new(StaticConnector(creds));
            rt.block_on(async {
                let reporter = tokio::spawn(report_progress(database.clone(), once));
                let result = SyncClient::new(database.clone(), connector)
                    .run(options)
                    .await;
                reporter.abort();
                result
            })
            .map(|cp| {
                if let Some(cp) = cp {
                    let tables = database
                        .with_store(|s| s.table_counts())
                        .unwrap_or_default();
                    let mut out = json!({"checkpoint": cp, "tables": tables});
                    let streams = database.status().borrow().streams.clone();
                    for line in stream_error_lines(&streams) {
                        eprintln!("{line}");
                    }
                    if !streams.is_empty() {
                        out["streams"] = json!(streams);
                    }
                    println!("{out}");
                }
            })
        }
        Command::Query { db, sql } => {
            let database = Database::open(&db, SchemaMode::Existing)?;
            println!(
                "{}",
                Value::Array(
                    database
                        .query(&sql, &[])?
                        .into_iter()
                        .map(Value::Object)
                        .collect()
                )
            );
            Ok(())
        }
        Command::Exec { db, sql } => {
            let database = Database::open(&db, SchemaMode::Existing)?;
            let changes = database.execute_batch(&sql)?;
            let queued = database.with_store(|s| s.crud_count())?;
            println!("{}", json!({"changes": changes, "upload_queue": queued}));
            Ok(())
        }
        Command::Status { db } => {
            let database = Database::open(&db, SchemaMode::Existing)?;
            println!("{}", database.with_store(|s| s.status_json())?);
            Ok(())
        }
    }
}

/// Views without `--schema`: the relay's `GET /schema` when it serves one, else inferred
/// from the synced rows. When the relay cannot be asked (down, bad answer), the schema
/// it gave last time is kept, if any; the sync itself then reports the failure.
async fn relay_schema_mode(db: &Path, http: &Http, creds: &Credentials) -> Result<SchemaMode> {
    match fetch_relay_schema(http, creds).await {
        Ok(Some(schema)) => Ok(SchemaMode::Fixed(schema)),
        Ok(None) => Ok(SchemaMode::Inferred),
        Err(e) => {
            eprintln!(
                "warning: cannot fetch the schema from the relay ({e}); keeping the last known one"
            );
            let stored =
                Database::open(db, SchemaMode::Existing)?.with_store(|s| s.stored_schema())?;
            Ok(stored.map_or(SchemaMode::Inferred, SchemaMode::Fixed))
        }
    }
}

/// How often, without a terminal, the download progress of each stream is logged.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Progress bars on a terminal (one overall, one per Sync Streams
/// subscription while it downloads); otherwise one log line per applied
/// checkpoint and, while one downloads, each stream's progress at most once
/// a second.
async fn report_progress(db: Database, once: bool) {
    let mut rx = db.status();
    let tty = std::io::stderr().is_terminal();
    let style = || {
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ops")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    };
    let multi = tty.then(indicatif::MultiProgress::new);
    let bar = multi.as_ref().map(|m| {
        let b = m.add(indicatif::ProgressBar::new(0));
        b.set_style(style());
        b
    });
    let mut stream_bars: std::collections::BTreeMap<String, indicatif::ProgressBar> =
        Default::default();
    let mut logged_at: Option<std::time::Instant> = None;
    let mut last_cp = rx.borrow().last_checkpoint.clone();
    let mut last_rejected = None;
    let mut stream_errors: Vec<String> = vec![];
    while rx.changed().await.is_ok() {
        let s = rx.borrow_and_update().clone();
        if let (Some(b), Some(p)) = (&bar, s.progress) {
            b.set_length(p.total.max(p.downloaded));
            b.set_position(p.downloaded);
            b.set_message(if s.downloading {
                "downloading"
            } else {
                "synced"
            });
        }
        let per_stream = stream_progress(&s.streams);
        if let Some(m) = &multi {
            for (label, p) in &per_stream {
                let b = stream_bars.entry(label.clone()).or_insert_with(|| {
                    let b = m.add(indicatif::ProgressBar::new(0));
                    b.set_style(style());
                    b.set_message(label.clone());
                    b
                });
                b.set_length(p.total.max(p.downloaded));
                b.set_position(p.downloaded);
            }
            // Done downloading: a stream's bar goes until the next download.
            stream_bars.retain(|label, b| {
                let keep = per_stream.iter().any(|(l, _)| l == label);
                if !keep {
                    b.finish_and_clear();
                }
                keep
            });
        } else if !per_stream.is_empty()
            && logged_at.is_none_or(|t| t.elapsed() >= PROGRESS_LOG_EVERY)
        {
            logged_at = Some(std::time::Instant::now());
            for line in stream_progress_lines(&per_stream) {
                eprintln!("{line}");
            }
        }
        if s.last_checkpoint != last_cp {
            last_cp = s.last_checkpoint.clone();
            if !once {
                let msg = format!("synced checkpoint {}", last_cp.as_deref().unwrap_or("?"));
                match &bar {
                    Some(b) => b.println(msg),
                    None => eprintln!("{msg}"),
                }
            }
        }
        if s.last_rejected.is_some() && s.last_rejected != last_rejected {
            last_rejected = s.last_rejected.clone();
            let msg = format!(
                "warning: the server refused a local write (kept in ps_crud_rejected; the server's rows are restored): {}",
                last_rejected.as_deref().unwrap_or_default()
            );
            match &bar {
                Some(b) => b.println(msg),
                None => eprintln!("{msg}"),
            }
        }
        // With --once they are printed with the summary.
        let errors = if once {
            vec![]
        } else {
            stream_error_lines(&s.streams)
        };
        for line in errors.iter().filter(|l| !stream_errors.contains(l)) {
            match &bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
        }
        stream_errors = errors;
        if let Some(e) = &s.last_error {
            if !tty {
                eprintln!("error: {e}");
            }
        }
    }
}

/// Each subscription that is downloading, labelled `NAME {params}`, with its progress.
pub fn stream_progress(
    streams: &[outpost_client::StreamStatus],
) -> Vec<(String, outpost_client::sync::Progress)> {
    streams
        .iter()
        .filter_map(|s| {
            let params = s
                .parameters
                .as_ref()
                .map_or(String::new(), |p| format!(" {p}"));
            s.progress.map(|p| (format!("{}{params}", s.name), p))
        })
        .collect()
}

/// `stream list_todos {"list_id":"a"}: 120/10000 ops downloaded`.
pub fn stream_progress_lines(
    per_stream: &[(String, outpost_client::sync::Progress)],
) -> Vec<String> {
    per_stream
        .iter()
        .map(|(label, p)| {
            format!(
                "stream {label}: {}/{} ops downloaded",
                p.downloaded, p.total
            )
        })
        .collect()
}

/// One line per error the server reported for a subscription:
/// `stream list_todos {"list_id":"a"}: error: unknown stream "list_todos"`.
pub fn stream_error_lines(streams: &[outpost_client::StreamStatus]) -> Vec<String> {
    streams
        .iter()
        .flat_map(|s| {
            let params = s
                .parameters
                .as_ref()
                .map_or(String::new(), |p| format!(" {p}"));
            s.errors
                .iter()
                .map(move |e| format!("stream {}{params}: error: {e}", s.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{stream_error_lines, stream_progress, stream_progress_lines};
    use outpost_client::sync::Progress;
    use outpost_client::StreamStatus;
    use serde_json::json;

    #[test]
    fn stream_progress_names_the_subscription() {
        let streams = vec![
            StreamStatus {
                name: "list_todos".into(),
                parameters: Some(json!({"list_id": "a"})),
                progress: Some(Progress {
                    downloaded: 120,
                    total: 10_000,
                }),
                ..StreamStatus::default()
            },
            StreamStatus {
                name: "synced_already".into(),
                ..StreamStatus::default()
            },
            StreamStatus {
                name: "my_lists".into(),
                progress: Some(Progress {
                    downloaded: 0,
                    total: 2,
                }),
                ..StreamStatus::default()
            },
        ];
        assert_eq!(
            stream_progress_lines(&stream_progress(&streams)),
            [
                r#"stream list_todos {"list_id":"a"}: 120/10000 ops downloaded"#,
                "stream my_lists: 0/2 ops downloaded",
            ]
        );
    }

    #[test]
    fn stream_errors_name_the_subscription() {
        let streams = vec![
            StreamStatus {
                name: "nope".into(),
                errors: vec!["unknown stream \"nope\"".into()],
                ..StreamStatus::default()
            },
            StreamStatus {
                name: "list_todos".into(),
                parameters: Some(json!({"list_id": "a"})),
                ..StreamStatus::default()
            },
            StreamStatus {
                name: "list_todos".into(),
                parameters: Some(json!({})),
                errors: vec!["missing subscription parameter \"list_id\"".into()],
                ..StreamStatus::default()
            },
        ];
        assert_eq!(
            stream_error_lines(&streams),
            [
                "stream nope: error: unknown stream \"nope\"",
                "stream list_todos {}: error: missing subscription parameter \"list_id\"",
            ]
        );
    }
}
