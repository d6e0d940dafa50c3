//! Disk figures: everything in schema `outpost` (op log, membership,
//! parameter rows, their indexes and TOAST) after deploying the list-todos
//! rules over N todos (`OUTPOST_BENCH_STORAGE_ROWS`, default 1,000,000; 10
//! lists of one user, i.e. 10 buckets), against the source tables `lists` and
//! `todos` (heap, indexes, TOAST). Once with text ids `t1…tN` and once with
//! UUID keys, side by side; the per-row figure is what an operator sizes a
//! disk with.

use crate::Row;
use anyhow::Result;
use outpost_tests::{TestDb, LIST_TODOS_RULES};
use postgres::Client;

const BUCKETS: i64 = 10;
const GOAL: f64 = 2.0;

fn row_count() -> i64 {
    crate::env_num("OUTPOST_BENCH_STORAGE_ROWS", 1_000_000)
}

fn setup_sql(uuid: bool, rows: i64) -> String {
    let (ty, lists, todos) = if uuid {
        (
            "uuid",
            "SELECT gen_random_uuid(), 'bench', 'list ' || g FROM generate_series(0, 9) g".to_string(),
            format!(
                "SELECT gen_random_uuid(), l.id, 'todo number ' || g FROM generate_series(1, {rows}) g
                 JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM lists) l ON l.n = g % {BUCKETS}"
            ),
        )
    } else {
        (
            "text",
            "SELECT 'l' || g, 'bench', 'list ' || g FROM generate_series(0, 9) g".to_string(),
            format!(
                "SELECT 't' || g, 'l' || (g % {BUCKETS}), 'todo number ' || g FROM generate_series(1, {rows}) g"
            ),
        )
    };
    format!(
        "CREATE TABLE lists (id {ty} PRIMARY KEY, owner_id text NOT NULL, name text NOT NULL);
         CREATE TABLE todos (id {ty} PRIMARY KEY, list_id {ty} NOT NULL, title text NOT NULL,
            done boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT '2024-01-02 03:04:05Z');
         INSERT INTO lists {lists};
         INSERT INTO todos(id, list_id, title) {todos};"
    )
}

/// Bytes of the source tables and of schema `outpost`.
struct Sizes {
    source: i64,
    outpost: i64,
    /// `outpost`'s tables (each with its indexes and TOAST), largest first.
    rels: Vec<(String, i64)>,
}

fn sizes(c: &mut Client) -> Result<Sizes> {
    let source: i64 = c
        .query_one(
            "SELECT (pg_total_relation_size('lists') + pg_total_relation_size('todos'))::bigint",
            &[],
        )?
        .get(0);
    let rels: Vec<(String, i64)> = c
        .query(
            "SELECT c.relname::text, pg_total_relation_size(c.oid)::bigint AS b
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'outpost' AND c.relkind IN ('r', 'm', 'p')
              ORDER BY b DESC",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let outpost = rels.iter().map(|(_, b)| b).sum();
    Ok(Sizes {
        source,
        outpost,
        rels,
    })
}

pub fn run(rows: &mut Vec<Row>) -> Result<()> {
    let n = row_count();
    let mb = |b: i64| b as f64 / 1e6;
    for uuid in [false, true] {
        let label = if uuid { "UUID keys" } else { "text ids" };
        let db = TestDb::new("bench_storage");
        let mut c = db.connect();
        c.batch_execute(&setup_sql(uuid, n))?;
        eprintln!("bench storage: deploying rules over {n} rows ({label})");
        c.query_one("SELECT outpost.deploy_rules($1)", &[&LIST_TODOS_RULES])?;
        let Sizes {
            source,
            outpost,
            rels,
        } = sizes(&mut c)?;
        let factor = outpost as f64 / source as f64;
        let top: Vec<String> = rels
            .iter()
            .take(3)
            .map(|(name, b)| format!("{name} {:.0} MB", mb(*b)))
            .collect();
        rows.push(Row {
            name: format!(
                "storage: schema outpost after deploying rules over {n} rows, 10 buckets, {label}, vs the source tables"
            ),
            value: format!(
                "{:.0} MB vs {:.0} MB ({:.0} vs {:.0} bytes per row; {})",
                mb(outpost),
                mb(source),
                outpost as f64 / n as f64,
                source as f64 / n as f64,
                top.join(", ")
            ),
            goal: format!("≤ {GOAL:.1}x"),
            ratio: format!(
                "{factor:.2}x {}",
                if factor <= GOAL { "met" } else { "missed" }
            ),
        });
    }
    Ok(())
}
