//! Clients, convergence checks and metric lookups for `faults_replica.rs`.

use outpost_client::{Credentials, Database};
use outpost_tests::client::{
    open_from_relay, reached_checkpoint, record_checkpoints, remove_db_file, spawn_sync, SyncTask,
};
use outpost_tests::relay::Relay;
use outpost_tests::replication::Node;
use postgres::Client;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const WAIT: Duration = Duration::from_secs(60);

/// The sync path's functions, as the relay calls them.
pub const READS: [&str; 4] = [
    "%outpost.sync_checkpoint(%",
    "%outpost.bucket_ops(%",
    "%outpost.changes_since(%",
    "%outpost.client_schema(%",
];

pub struct Synced {
    pub user: String,
    pub db: Database,
    pub task: SyncTask,
    /// Every checkpoint the client applied, in order.
    pub applied: Arc<Mutex<Vec<i64>>>,
    pub path: PathBuf,
}

pub fn start_client(rt: &tokio::runtime::Runtime, relay: &Relay, user: &str) -> Synced {
    let path =
        std::env::temp_dir().join(format!("outpost-replica-{}-{user}.db", std::process::id()));
    remove_db_file(&path);
    let creds = Credentials {
        endpoint: relay.url.clone(),
        token: relay.token(user, 3600),
    };
    let db = open_from_relay(rt, &path, &creds);
    let task = spawn_sync(rt, &db, creds, Duration::from_millis(300));
    let applied = record_checkpoints(rt, &db);
    Synced {
        user: user.into(),
        db,
        task,
        applied,
        path,
    }
}

pub fn last_checkpoint(db: &Database) -> i64 {
    db.status()
        .borrow()
        .last_checkpoint
        .as_deref()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// Ticks on `primary`, waits until every client applied that checkpoint,
/// and compares each client's rows with the primary's.
pub fn converge(
    rt: &tokio::runtime::Runtime,
    clients: &[Synced],
    primary: &mut Client,
    what: &str,
) {
    let cp: i64 = primary
        .query_one("SELECT outpost.tick()", &[])
        .unwrap()
        .get(0);
    for c in clients {
        let ok = reached_checkpoint(rt, &c.db, cp, WAIT);
        assert!(
            ok,
            "{what}: {} never reached checkpoint {cp}; status {:?}, task finished: {}",
            c.user,
            *c.db.status().borrow(),
            c.task.is_finished()
        );
        let n = |v: &Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .unwrap()
        };
        let mut mine: Vec<(i64, i64)> =
            c.db.query("SELECT id, v FROM items", &[])
                .unwrap()
                .iter()
                .map(|r| (n(&r["id"]), n(&r["v"])))
                .collect();
        mine.sort();
        let pg: Vec<(i64, i64)> = primary
            .query(
                "SELECT id::bigint, v::bigint FROM items WHERE owner = $1 ORDER BY id",
                &[&c.user],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(mine, pg, "{what}: {}'s rows differ from Postgres", c.user);
    }
}

/// Calls of statements matching `pattern` in this database, as
/// `pg_stat_statements` counted them on that server.
pub fn calls(c: &mut Client, pattern: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
          WHERE query ILIKE $1 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[&pattern],
    )
    .unwrap()
    .get(0)
}

/// A series of the relay's `/metrics` (`name{labels}` exactly), 0 when absent.
pub fn series(relay: &Relay, name: &str) -> f64 {
    let text = relay.request("GET", "/metrics", None, None).body;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().unwrap())
        })
        .unwrap_or(0.0)
}

pub fn in_rotation(relay: &Relay, standby: &Node) -> bool {
    series(
        relay,
        &format!(
            "outpost_relay_replica_in_rotation{{replica=\"127.0.0.1:{}\"}}",
            standby.port
        ),
    ) == 1.0
}

pub fn removed(relay: &Relay, standby: &Node, reason: &str) -> f64 {
    series(
        relay,
        &format!(
            "outpost_relay_replica_removed_total{{replica=\"127.0.0.1:{}\",reason=\"{reason}\"}}",
            standby.port
        ),
    )
}

pub fn checkpoint(c: &mut Client) -> i64 {
    c.query_one("SELECT outpost.checkpoint()", &[])
        .unwrap()
        .get(0)
}

/// Inserts `n` rows for u1 and u2 from `first` on.
pub fn write_rows(c: &mut Client, first: i32, n: i32) {
    c.execute(
        "INSERT INTO items SELECT g, 'u' || (g % 2 + 1), g % 7 FROM generate_series($1::int, $1::int + $2::int - 1) g",
        &[&first, &n],
    )
    .unwrap();
}
