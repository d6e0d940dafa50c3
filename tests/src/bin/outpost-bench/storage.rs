//! Disk figures: everything in schema `outpost` (op log, membership,
//! parameter rows, their indexes and TOAST) after deploying the list-todos
//! rules over N todos (`OUTPOST_BENCH_STORAGE_ROWS`, default 1,000,000; 10
//! lists of one user, i.e. 10 buckets), against the source tables `lists` and
//! `todos` (heap, indexes, TOAST). Once with text ids `t1…tN` and once with
//! UUID keys, side by side; the per-row figure is what an operator sizes a
//! disk with.

use crate::client::Keys;
use crate::Row;
use anyhow::Result;
use outpost_tests::{TestDb, LIST_TODOS_RULES};
use postgres::Client;

const GOAL: f64 = 2.0;

fn row_count() -> i64 {
    crate::env_num("OUTPOST_BENCH_STORAGE_ROWS", 1_000_000)
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
    for keys in [Keys::Text, Keys::Uuid] {
        let label = keys.label();
        let db = TestDb::new("bench_storage");
        let mut c = db.connect();
        c.batch_execute(&keys.setup_sql(n, crate::client::BUCKETS))?;
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
