//! Op-log compaction: random histories with compaction at random points;
//! clients that stopped at random op ids resume and end with the same rows and
//! checksums as a fresh client and as the rules over the final table; and a
//! concurrency run with writers, ticks and compaction at once.

use postgres::Client;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use outpost_tests::{tick, TestDb};

/// A client's view of one bucket, following PowerSync's client algorithm
/// (add_checksum / oplog bookkeeping for PUT, REMOVE, MOVE, CLEAR).
#[derive(Clone, Debug, Default)]
struct BucketClient {
    after: i64,
    oplog: BTreeMap<(String, String, String), (i64, String, u32)>,
    add: u32,
}

impl BucketClient {
    /// Downloads and applies ops up to `upto`. `completing`: `upto` is the
    /// checkpoint being completed (not a client cut off part way), so no op
    /// may name a target beyond it.
    fn apply_to(&mut self, c: &mut Client, bucket: &str, upto: i64, completing: bool) {
        let rows = c
            .query(
                "SELECT op_id, op, object_type, object_id, subkey, data, checksum, target_op FROM outpost.bucket_ops(ARRAY[$1], ARRAY[$2::bigint], $3, 1000000)",
                &[&bucket, &self.after, &upto],
            )
            .unwrap();
        for r in rows {
            let op_id: i64 = r.get(0);
            assert!(
                op_id > self.after && op_id <= upto,
                "op {op_id} outside ({}, {upto}]",
                self.after
            );
            let op: String = r.get(1);
            let checksum = r.get::<_, i64>(6) as u32;
            let target: Option<i64> = r.get(7);
            if let (Some(t), true) = (target, completing) {
                assert!(
                    t <= upto,
                    "target_op {t} beyond the checkpoint {upto} being completed"
                );
            }
            let key = || -> (String, String, String) {
                (
                    r.get::<_, Option<String>>(2).unwrap(),
                    r.get::<_, Option<String>>(3).unwrap(),
                    r.get::<_, Option<String>>(4).unwrap(),
                )
            };
            match op.as_str() {
                "PUT" => {
                    let k = key();
                    if let Some(old) = self.oplog.remove(&k) {
                        self.add = self.add.wrapping_add(old.2);
                    }
                    self.oplog.insert(k, (op_id, r.get(5), checksum));
                }
                "REMOVE" => {
                    if let Some(old) = self.oplog.remove(&key()) {
                        self.add = self.add.wrapping_add(old.2);
                    }
                    self.add = self.add.wrapping_add(checksum);
                }
                "MOVE" => self.add = self.add.wrapping_add(checksum),
                "CLEAR" => {
                    self.oplog.clear();
                    self.add = checksum;
                }
                other => panic!("unknown op {other}"),
            }
            self.after = op_id;
        }
        self.after = self.after.max(upto);
    }

    fn apply(&mut self, c: &mut Client, bucket: &str, checkpoint: i64) {
        self.apply_to(c, bucket, checkpoint, true)
    }

    fn checksum(&self) -> u32 {
        self.oplog
            .values()
            .fold(self.add, |a, v| a.wrapping_add(v.2))
    }

    fn rows(&self) -> BTreeMap<String, serde_json::Value> {
        self.oplog
            .iter()
            .map(|((_, id, _), (_, data, _))| (id.clone(), serde_json::from_str(data).unwrap()))
            .collect()
    }
}

fn bucket_checksum(c: &mut Client, bucket: &str) -> u32 {
    c.query_opt(
        "SELECT checksum FROM outpost.bucket_state WHERE bucket = $1",
        &[&bucket],
    )
    .unwrap()
    .map(|r| r.get::<_, i64>(0) as u32)
    .unwrap_or(0)
}

fn expected(c: &mut Client, bucket: &str) -> BTreeMap<String, serde_json::Value> {
    let parity: i32 = if bucket == "even[]" { 0 } else { 1 };
    c.query("SELECT id, v FROM t WHERE id % 2 = $1", &[&parity])
        .unwrap()
        .into_iter()
        .map(|r| {
            let (id, v): (i32, i32) = (r.get(0), r.get(1));
            (id.to_string(), serde_json::json!({"id": id, "v": v}))
        })
        .collect()
}

fn setup(label: &str) -> (TestDb, Client) {
    let db = TestDb::new(label);
    let mut c = db.connect();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); SET outpost.defrag_min_ops = 50;",
    )
    .unwrap();
    c.query_one(
        "SELECT outpost.deploy_rules($1)",
        &[&"bucket_definitions:\n  even:\n    data: SELECT id, v FROM t WHERE id % 2 = 0\n  odd:\n    data: SELECT id, v FROM t WHERE id % 2 = 1\n"],
    )
    .unwrap();
    (db, c)
}

#[test]
fn random_histories_with_compaction_converge() {
    let seed: u64 = std::env::var("OUTPOST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (OUTPOST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..4 {
        let (_db, mut c) = setup(&format!("compact{round}"));
        let mut stopped: Vec<(String, BucketClient)> = Vec::new();
        let mut compactions = 0;
        for _step in 0..40 {
            for _ in 0..rng.random_range(1..15) {
                let id: i32 = rng.random_range(1..30);
                let v: i32 = rng.random_range(0..1000);
                match rng.random_range(0..4) {
                    0 | 1 => c.execute(
                        "INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = $2",
                        &[&id, &v],
                    ),
                    2 => c.execute("UPDATE t SET v = v + 1 WHERE id % 5 = $1 % 5", &[&id]),
                    _ => c.execute("DELETE FROM t WHERE id = $1", &[&id]),
                }
                .unwrap();
            }
            let cp = tick(&mut c);
            // A client stops here, part way into a bucket's ops or at the checkpoint.
            if rng.random_bool(0.3) {
                let bucket = if rng.random_bool(0.5) {
                    "even[]"
                } else {
                    "odd[]"
                };
                let mut client = BucketClient::default();
                let stop_at = rng.random_range(0..=cp);
                client.apply_to(&mut c, bucket, stop_at, false);
                stopped.push((bucket.to_string(), client));
            }
            if rng.random_bool(0.25) {
                let removed: i64 = c.query_one("SELECT outpost.compact()", &[]).unwrap().get(0);
                compactions += 1;
                let _ = removed;
            }
        }
        let removed: i64 = c.query_one("SELECT outpost.compact()", &[]).unwrap().get(0);
        assert!(removed > 0 || compactions > 0);
        let cp = tick(&mut c);
        for bucket in ["even[]", "odd[]"] {
            let mut fresh = BucketClient::default();
            fresh.apply(&mut c, bucket, cp);
            let want = bucket_checksum(&mut c, bucket);
            assert_eq!(
                fresh.checksum(),
                want,
                "fresh client checksum of {bucket} (seed {seed})"
            );
            assert_eq!(
                fresh.rows(),
                expected(&mut c, bucket),
                "fresh client rows of {bucket} (seed {seed})"
            );
        }
        for (bucket, mut client) in stopped {
            client.apply(&mut c, &bucket, cp);
            assert_eq!(
                client.checksum(),
                bucket_checksum(&mut c, &bucket),
                "resumed client checksum of {bucket} (seed {seed})"
            );
            assert_eq!(
                client.rows(),
                expected(&mut c, &bucket),
                "resumed client rows of {bucket} (seed {seed})"
            );
        }
        let moves: i64 = c
            .query_one(
                "SELECT count(*) FROM outpost.ops WHERE op IN ('MOVE', 'CLEAR')",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(moves > 0, "compaction rewrote something (seed {seed})");
    }
}

#[test]
fn defragmentation_shrinks_a_fresh_download() {
    let (_db, mut c) = setup("defrag");
    c.batch_execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 200) g")
        .unwrap();
    tick(&mut c);
    for i in 1..=10 {
        c.execute("UPDATE t SET v = $1", &[&i]).unwrap();
        tick(&mut c);
    }
    let before: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket = 'even[]'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, 100 * 11);
    c.query_one("SELECT outpost.compact()", &[]).unwrap();
    let after: i64 = c
        .query_one(
            "SELECT count(*) FROM outpost.ops WHERE bucket = 'even[]'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(after, 101, "one CLEAR and the 100 live rows");
    let cp = tick(&mut c);
    let mut fresh = BucketClient::default();
    fresh.apply(&mut c, "even[]", cp);
    assert_eq!(fresh.rows(), expected(&mut c, "even[]"));
    assert_eq!(fresh.checksum(), bucket_checksum(&mut c, "even[]"));
    let count: serde_json::Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint('{\"sub\":\"x\"}', '{}', 'c')",
            &[],
        )
        .unwrap()
        .get(0);
    let even = count["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bucket"] == "even[]")
        .unwrap()
        .clone();
    assert_eq!(
        even["count"],
        serde_json::json!(101),
        "progress counts what is left to download"
    );
}

#[test]
fn compaction_runs_alongside_writers_and_ticks() {
    let (db, mut c) = setup("compact_concurrent");
    c.batch_execute("INSERT INTO t SELECT g, 0 FROM generate_series(1, 100) g")
        .unwrap();
    tick(&mut c);
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..4 {
        let url = db.url.clone();
        handles.push(std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut rng = StdRng::seed_from_u64(w);
            for _ in 0..300 {
                let id: i32 = rng.random_range(1..120);
                let v: i32 = rng.random_range(0..1000);
                let _ = c.execute(
                    "INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = $2",
                    &[&id, &v],
                );
                if rng.random_bool(0.1) {
                    let _ = c.execute("DELETE FROM t WHERE id = $1", &[&id]);
                }
            }
        }));
    }
    let background = |sql: &'static str| {
        let url = db.url.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            // Small online steps: each resumes its scan where the last one
            // stopped, and scans before it takes the tick lock.
            c.batch_execute("SET outpost.defrag_min_ops = 50; SET outpost.defrag_batch = 3")
                .unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                c.query_one(sql, &[]).unwrap();
                n += 1;
            }
            n
        })
    };
    let ticker = background("SELECT outpost.tick()");
    let compactor = background("SELECT outpost.compact()");
    let online = background("CALL outpost.compact_online()");
    // A reader: in every snapshot, each bucket's ops up to the checkpoint sum to its checksum.
    let reader = {
        let url = db.url.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut checks = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut tx = c
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .start()
                    .unwrap();
                let rows = tx
                    .query(
                        "SELECT s.bucket, s.checksum, (SELECT coalesce(sum(o.checksum), 0) % 4294967296 FROM outpost.ops o WHERE o.bucket = s.bucket AND o.op_id <= outpost.checkpoint())::bigint FROM outpost.bucket_state s",
                        &[],
                    )
                    .unwrap();
                for r in rows {
                    assert_eq!(
                        r.get::<_, i64>(1),
                        r.get::<_, i64>(2),
                        "bucket {} totals broken mid-compaction",
                        r.get::<_, String>(0)
                    );
                    checks += 1;
                }
                tx.commit().unwrap();
            }
            checks
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let (ticks, compactions, checks) = (
        ticker.join().unwrap(),
        compactor.join().unwrap() + online.join().unwrap(),
        reader.join().unwrap(),
    );
    assert!(
        ticks > 3 && compactions > 3 && checks > 3,
        "ran concurrently: {ticks} ticks, {compactions} compactions, {checks} checks"
    );
    c.query_one("SELECT outpost.compact()", &[]).unwrap();
    let cp = tick(&mut c);
    for bucket in ["even[]", "odd[]"] {
        let mut fresh = BucketClient::default();
        fresh.apply(&mut c, bucket, cp);
        assert_eq!(fresh.rows(), expected(&mut c, bucket));
        assert_eq!(fresh.checksum(), bucket_checksum(&mut c, bucket));
    }
}
