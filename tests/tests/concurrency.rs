//! 8 writer connections doing random inserts/updates/deletes with random
//! commits and rollbacks while ticks run concurrently. A monitor checks, while
//! it runs, that no op ever appears at or below an already published
//! checkpoint; at the end every bucket's folded ops must equal the rules
//! evaluated directly over the final tables.

use outpost_tests::{fold_bucket, ops, TestDb};
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

const WRITERS: usize = 8;
const TXNS_PER_WRITER: usize = 120;

#[test]
fn concurrent_writers_and_ticks_keep_the_invariant() {
    let db = TestDb::new("concurrency");
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE lists (id int PRIMARY KEY, owner_id text NOT NULL);
         CREATE TABLE todos (id int PRIMARY KEY, list_id int NOT NULL, title text, n int NOT NULL DEFAULT 0);
         INSERT INTO lists SELECT g, 'u' || (g % 3) FROM generate_series(1, 6) g;
         INSERT INTO todos SELECT g, 1 + g % 6, 't' || g, 0 FROM generate_series(1, 200) g;",
    )
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"
bucket_definitions:
  by_list:
    parameters: SELECT id AS list_id FROM lists WHERE owner_id = request.user_id()
    data: SELECT id, title, n FROM todos WHERE list_id = bucket.list_id
  big:
    data: SELECT id, list_id FROM todos WHERE n % 2 = 0
"],
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = db.url.clone();
        writers.push(thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut rng = rand::rng();
            let mut committed = 0;
            for _ in 0..TXNS_PER_WRITER {
                let mut tx = c.transaction().unwrap();
                let mut ok = true;
                for _ in 0..rng.random_range(1..5) {
                    let id: i32 = rng.random_range(1..400);
                    let list: i32 = rng.random_range(1..7);
                    let r = match rng.random_range(0..10) {
                        0..=2 => tx.execute(
                            "INSERT INTO todos VALUES ($1, $2, 'w', 0) ON CONFLICT (id) DO UPDATE SET n = todos.n + 1",
                            &[&id, &list],
                        ),
                        3..=5 => tx.execute("UPDATE todos SET n = n + 1, title = title || 'x' WHERE id = $1", &[&id]),
                        6 => tx.execute("UPDATE todos SET list_id = $2 WHERE id = $1", &[&id, &list]),
                        7 => tx.execute("DELETE FROM todos WHERE id = $1", &[&id]),
                        8 => tx.execute(
                            "UPDATE lists SET owner_id = 'u' || $2::int WHERE id = $1",
                            &[&list, &(id % 3)],
                        ),
                        _ => tx.execute("UPDATE todos SET n = n + 1 WHERE list_id = $1", &[&list]),
                    };
                    if r.is_err() {
                        ok = false; // deadlock or serialization: the transaction is gone
                        break;
                    }
                }
                if ok && rng.random_bool(0.8) {
                    if tx.commit().is_ok() {
                        committed += 1;
                    }
                } else {
                    let _ = tx.rollback();
                }
                if rng.random_bool(0.1) {
                    thread::yield_now();
                }
            }
            let _ = w;
            committed
        }));
    }

    let mut tickers = Vec::new();
    for _ in 0..2 {
        let url = db.url.clone();
        let stop = stop.clone();
        tickers.push(thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                c.query_one("SELECT outpost.tick()", &[]).unwrap();
                n += 1;
            }
            n
        }));
    }

    // Monitor: for every checkpoint seen, the ops at or below it never change.
    let monitor = {
        let url = db.url.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut seen: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
            let mut checks = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let cp: i64 = c
                    .query_one("SELECT outpost.checkpoint()", &[])
                    .unwrap()
                    .get(0);
                let r = c
                    .query_one("SELECT count(*), coalesce(sum(checksum), 0)::bigint FROM outpost.ops WHERE op_id <= $1", &[&cp])
                    .unwrap();
                let now = (r.get::<_, i64>(0), r.get::<_, i64>(1));
                if let Some(prev) = seen.get(&cp) {
                    assert_eq!(
                        *prev, now,
                        "ops at or below published checkpoint {cp} changed"
                    );
                }
                seen.insert(cp, now);
                // Re-check a few older checkpoints too.
                for (old, prev) in seen.iter().rev().skip(1).take(3) {
                    let r = c
                        .query_one("SELECT count(*), coalesce(sum(checksum), 0)::bigint FROM outpost.ops WHERE op_id <= $1", &[old])
                        .unwrap();
                    assert_eq!(
                        *prev,
                        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
                        "checkpoint {old} changed after publication"
                    );
                    checks += 1;
                }
            }
            (seen.len(), checks)
        })
    };

    let committed: usize = writers.into_iter().map(|h| h.join().expect("writer")).sum();
    stop.store(true, Ordering::SeqCst);
    let ticks: usize = tickers.into_iter().map(|h| h.join().expect("ticker")).sum();
    let (checkpoints_seen, checks) = monitor.join().expect("monitor found a violation");
    outpost_tests::tick(&mut c);
    assert!(
        committed > WRITERS * TXNS_PER_WRITER / 2,
        "most transactions commit ({committed})"
    );
    assert!(
        ticks > 5 && checkpoints_seen > 5,
        "ticks ran concurrently ({ticks} ticks, {checkpoints_seen} checkpoints)"
    );
    assert!(checks > 0);

    // Oracle: the rules evaluated directly over the final tables.
    let mut expected: BTreeMap<String, BTreeMap<(String, String), serde_json::Value>> =
        BTreeMap::new();
    for r in c
        .query("SELECT id, list_id, title, n FROM todos", &[])
        .unwrap()
    {
        let (id, list, title, n): (i32, i32, String, i32) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        expected
            .entry(format!("by_list[{list}]"))
            .or_default()
            .insert(
                ("todos".into(), id.to_string()),
                json!({"id": id, "title": title, "n": n}),
            );
        if n % 2 == 0 {
            expected.entry("big[]".into()).or_default().insert(
                ("todos".into(), id.to_string()),
                json!({"id": id, "list_id": list}),
            );
        }
    }
    let buckets: Vec<String> = c
        .query("SELECT bucket FROM outpost.bucket_state ORDER BY 1", &[])
        .unwrap()
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for b in &buckets {
        let o = ops(&mut c, b);
        let folded = fold_bucket(&o);
        let want = expected.remove(b).unwrap_or_default();
        assert_eq!(
            folded, want,
            "bucket {b} differs from the rules over the final tables"
        );
        let (sum, count): (i64, i64) = {
            let r = c
                .query_one(
                    "SELECT checksum, op_count FROM outpost.bucket_state WHERE bucket = $1",
                    &[b],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            sum as u32,
            outpost_tests::sum_checksums(&o),
            "running checksum of {b}"
        );
        assert_eq!(count as usize, o.len());
    }
    assert!(
        expected.values().all(|m| m.is_empty()),
        "buckets missing from the op log: {:?}",
        expected.keys().collect::<Vec<_>>()
    );

    // Parameter lookups match the final lists table.
    for user in ["u0", "u1", "u2"] {
        let mut want: Vec<String> = c
            .query(
                "SELECT 'by_list[' || id || ']' FROM lists WHERE owner_id = $1",
                &[&user],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        want.push("big[]".into());
        want.sort();
        let got = outpost_tests::bucket_names(&outpost_tests::sync_checkpoint(&mut c, user, "x"));
        assert_eq!(got, want, "bucket set of {user}");
    }
}
