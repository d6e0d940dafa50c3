//! A first sync without Postgres or a relay, for profiling the client's apply
//! path: generates the NDJSON stream of `ROWS` todos in 10 buckets (1,000 ops
//! per data line, buckets one after the other, as the relay sends them) and
//! feeds it through the sync state machine into a fresh SQLite file, batching
//! data lines the way the driver does.
//!
//! ```sh
//! cargo run --release -p outpost-client --example first_sync -- uuid 1000000 /tmp/first.db
//! perf record -g target/release/examples/first_sync uuid 1000000 /tmp/first.db
//! ```
//!
//! Keys: `text` (`t1…tN`, todo g in bucket g % 10), `uuid` (random v4), or
//! `file:PATH` (NDJSON lines a relay sent, e.g. recorded with curl, or
//! saved by an earlier run; ROWS must match). The generated stream has the
//! relay's shape (op ids interleaved across buckets, `relid:["id"]`
//! subkeys, Postgres' JSON text) and the size of a recorded one.
//! `FIRST_SYNC_SAVE_STREAM=PATH` writes the generated lines to PATH;
//! `FIRST_SYNC_STOP_BEFORE_APPLY=1` stops before `checkpoint_complete`,
//! leaving the stored ops to time the apply's statements by hand.
//! Prints the time split into decoding, storing data lines and applying the
//! checkpoint (wall, then this thread's CPU time), and the process's peak RSS. `make bench` (section `client`)
//! measures the same end to end.

use outpost_client::driver::batch_open;
use outpost_client::net::lines::parse_line;
use outpost_client::schema::{Column, ColumnType, Schema, Table};
use outpost_client::store::{Effect, SchemaMode, Store};
use outpost_client::sync::Instruction;
use outpost_protocol::SyncLine;
use serde_json::json;
use std::time::{Duration, Instant};

const BUCKETS: u64 = 10;
const PER_LINE: u64 = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let keys = args.get(1).map_or("uuid", String::as_str).to_string();
    let rows: u64 = args.get(2).map_or(Ok(1_000_000), |s| s.parse())?;
    let path = args
        .get(3)
        .map_or("/tmp/outpost-first-sync.db", String::as_str);
    // Leaves the file with every data line stored and the checkpoint not
    // applied, to time the apply's statements by hand.
    let stop_before_apply = std::env::var_os("FIRST_SYNC_STOP_BEFORE_APPLY").is_some();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{ext}"));
    }
    let lines = match keys.strip_prefix("file:") {
        Some(file) => std::fs::read_to_string(file)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => generate(&keys, rows),
    };
    if let Some(out) = std::env::var_os("FIRST_SYNC_SAVE_STREAM") {
        // For `file:` runs (and profiles) without the generator's time.
        std::fs::write(&out, lines.join("\n") + "\n")?;
    }
    let bytes: usize = lines.iter().map(String::len).sum();
    eprintln!("{} lines, {:.0} MB", lines.len(), bytes as f64 / 1e6);

    let schema = Schema::new(vec![Table::new(
        "todos",
        vec![
            Column::new("list_id", ColumnType::Text),
            Column::new("title", ColumnType::Text),
            Column::new("done", ColumnType::Integer),
            Column::new("created_at", ColumnType::Text),
        ],
    )]);
    let mut store = Store::open(path, SchemaMode::Fixed(schema))?;
    let mut machine = store.sync_state(Default::default())?;
    machine.start();
    let (mut parse, mut save, mut apply) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    // CPU time of this (the only) thread per phase: on a shared machine the
    // wall times above vary with the load, the CPU times much less.
    let (mut parse_cpu, mut save_cpu, mut apply_cpu) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    let mut rest = lines.iter().peekable();
    while let Some(text) = rest.next() {
        let t = Instant::now();
        let c = thread_cpu();
        let Some(line) = parse_line(text)? else {
            continue;
        };
        let complete = matches!(line, SyncLine::CheckpointComplete(_));
        if complete && stop_before_apply {
            eprintln!("stopped before the apply; {path} holds the stored ops");
            return Ok(());
        }
        let mut batch: Vec<Instruction> = machine.handle_line(line)?;
        while batch_open(&batch) && rest.peek().is_some_and(|l| l.starts_with("{\"data\"")) {
            if let Some(line) = parse_line(rest.next().unwrap())? {
                batch.extend(machine.handle_line(line)?);
            }
        }
        let t2 = Instant::now();
        let c2 = thread_cpu();
        parse += t2 - t;
        parse_cpu += c2 - c;
        let effects = store.execute(&mut machine, batch)?;
        if complete {
            apply += t2.elapsed();
            apply_cpu += thread_cpu() - c2;
            assert!(effects.iter().any(|e| matches!(e, Effect::Applied { .. })));
        } else {
            save += t2.elapsed();
            save_cpu += thread_cpu() - c2;
        }
    }
    let total = start.elapsed();
    // What `outpost sync` does next (and `--once` leaves to the next change).
    let t = Instant::now();
    let c = thread_cpu();
    store.finish_bulk()?;
    let index = t.elapsed();
    let index_cpu = thread_cpu() - c;
    let n: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM todos", [], |r| r.get(0))?;
    assert_eq!(n as u64, rows);
    let hwm = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    println!(
        "{keys} {rows}: {:.0} rows/s ({:.2} s: decode {:.2} s, store ops {:.2} s, apply {:.2} s), then the op log's index {:.2} s, peak RSS {hwm}",
        rows as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
        parse.as_secs_f64(),
        save.as_secs_f64(),
        apply.as_secs_f64(),
        index.as_secs_f64()
    );
    println!(
        "  CPU: decode {:.2} s, store ops {:.2} s, apply {:.2} s, index {:.2} s",
        parse_cpu.as_secs_f64(),
        save_cpu.as_secs_f64(),
        apply_cpu.as_secs_f64(),
        index_cpu.as_secs_f64()
    );
    Ok(())
}

/// This thread's time on a CPU (user + system), from the scheduler's stats.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// The stream a relay sends a fresh client: checkpoint, data lines, complete.
/// Shaped like the relay's real one: buckets one after the other, op ids
/// interleaved across buckets (todo g is op g, in bucket g % 10, as a
/// deploy's snapshot numbers them), subkeys `<relid>:["<id>"]`, and row data
/// in Postgres' JSON text form (`{"id" : "t10", …}`).
fn generate(keys: &str, rows: u64) -> Vec<String> {
    let lists: Vec<String> = (0..BUCKETS)
        .map(|b| match keys {
            "text" => format!("l{b}"),
            _ => uuid::Uuid::new_v4().to_string(),
        })
        .collect();
    let mut lines = vec![];
    let mut sums = vec![0u32; BUCKETS as usize];
    let mut counts = vec![0u64; BUCKETS as usize];
    let mut data_lines = vec![];
    for (b, list) in lists.iter().enumerate() {
        let bucket = format!("user_lists[\"{list}\"]");
        let mut ops = vec![];
        let mut g = if b == 0 { BUCKETS } else { b as u64 };
        while g <= rows {
            let id = match keys {
                "text" => format!("t{g}"),
                _ => uuid::Uuid::new_v4().to_string(),
            };
            let checksum = (g as u32).wrapping_mul(2_654_435_761);
            sums[b] = sums[b].wrapping_add(checksum);
            counts[b] += 1;
            let data = format!(
                "{{\"id\" : \"{id}\", \"list_id\" : \"{list}\", \"title\" : \"todo number {g}\", \"done\" : 0, \"created_at\" : \"2024-01-02 03:04:05Z\"}}"
            );
            ops.push(
                json!({"op_id": g.to_string(), "op": "PUT", "object_type": "todos",
                            "object_id": id, "subkey": format!("19063:[\"{id}\"]"), "checksum": checksum,
                            "data": data}),
            );
            g += BUCKETS;
            if ops.len() as u64 == PER_LINE || g > rows {
                data_lines.push(
                    json!({"data": {"bucket": bucket, "has_more": g <= rows,
                                    "data": std::mem::take(&mut ops)}})
                    .to_string(),
                );
            }
        }
    }
    let buckets: Vec<_> = lists
        .iter()
        .zip(sums.iter().zip(&counts))
        .map(|(l, (s, c))| json!({"bucket": format!("user_lists[\"{l}\"]"), "checksum": *s as i32, "count": c}))
        .collect();
    lines.push(
        json!({"checkpoint": {"last_op_id": rows.to_string(), "buckets": buckets}}).to_string(),
    );
    lines.extend(data_lines);
    lines.push(json!({"checkpoint_complete": {"last_op_id": rows.to_string()}}).to_string());
    lines
}
