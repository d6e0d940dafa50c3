//! `make bench`: measures Outpost against its goals, each comparison side by
//! side in one run, and writes a Markdown table to `bench-results/bench.md`.
//!
//! Sections (one module each): `extension` (capture overhead, tick and
//! snapshot throughput), `compaction` (op-log shrinkage, fresh download;
//! `compaction_latency`: ticks while compaction runs), `client`, `latency`
//! (INSERT → Outpost's client live query at 100k and 1M rows in the
//! bucket), `latency-official` (the same, and local writes → confirmed,
//! with PowerSync's own Node SDK as the client), `relay`,
//! `relay-connect`, `replica` (hot standbys), `rules`, `streams` (Sync
//! Streams: rows moved through a subquery's table, a joined column renamed,
//! fan-out to parameterized subscriptions), `storage` (schema `outpost`'s
//! size against the source tables). `OUTPOST_BENCH=extension,relay` runs a subset.

mod client;
mod compaction;
mod extension;
mod latency;
mod latency_official;
mod relay;
mod relay_connect;
mod relay_proc;
mod replica;
mod rules;
mod storage;
mod streams;

use anyhow::Result;
use std::fmt::Write as _;

/// One line of the results table.
pub struct Row {
    pub name: String,
    pub value: String,
    pub goal: String,
    pub ratio: String,
}

type Section = fn(&mut Vec<Row>) -> Result<()>;

/// A numeric setting from the environment (`OUTPOST_BENCH_…`), `default`
/// when unset or not a number.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let sections: &[(&str, Section)] = &[
        ("extension", extension::run),
        ("compaction", compaction::run),
        ("compaction_latency", compaction::run_latency),
        ("client", client::run),
        ("latency", latency::run),
        ("latency-official", latency_official::run),
        ("relay", relay::run),
        ("relay-connect", relay_connect::run),
        ("replica", replica::run),
        ("rules", rules::run),
        ("storage", storage::run),
        ("streams", streams::run),
    ];
    let only = std::env::var("OUTPOST_BENCH").ok();
    let mut rows: Vec<Row> = Vec::new();
    for (name, run) in sections {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s == *name))
        {
            continue;
        }
        eprintln!("bench: section {name}");
        run(&mut rows)?;
    }

    let mut md = String::new();
    writeln!(md, "| benchmark | measured | goal | ratio |")?;
    writeln!(md, "|---|---|---|---|")?;
    for r in &rows {
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            r.name, r.value, r.goal, r.ratio
        )?;
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pg = postgres::Client::connect(&outpost_tests::server_url(), postgres::NoTls)
        .and_then(|mut c| c.query_one("SHOW server_version", &[]))
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|_| "?".into());
    writeln!(
        md,
        "\nMachine: {cores} cores, {machine}; Postgres {pg} on 127.0.0.1."
    )?;
    std::fs::create_dir_all("bench-results")?;
    std::fs::write("bench-results/bench.md", &md)?;
    println!("{md}");
    Ok(())
}
