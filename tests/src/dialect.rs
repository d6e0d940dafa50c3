//! What the dialect test files share: deploying a rules file, the buckets a
//! request gets, and a bucket's rows as a client ends up with them.

use crate::{bucket_names, fold_bucket, ops};
use postgres::Client;
use serde_json::Value;

/// `outpost.deploy_rules`, panicking with the error and the rules.
pub fn deploy(c: &mut Client, rules: &str) {
    c.query_one("SELECT outpost.deploy_rules($1)", &[&rules])
        .unwrap_or_else(|e| panic!("deploy failed: {e:?}\n{rules}"));
}

/// The sorted bucket ids a request (JWT claims, client parameters) gets,
/// without Sync Streams.
pub fn request_buckets(c: &mut Client, claims: &Value, params: &Value) -> Vec<String> {
    let cp: Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint($1, $2, 'dev')",
            &[claims, params],
        )
        .unwrap()
        .get(0);
    bucket_names(&cp)
}

/// [`request_buckets`], checked to agree with the Sync Streams entry point
/// (`streams: {}`) for rules without streams.
pub fn request_buckets_both_ways(c: &mut Client, claims: Value, params: Value) -> Vec<String> {
    let plain = request_buckets(c, &claims, &params);
    let streams: Value = c
        .query_one(
            "SELECT outpost.sync_checkpoint($1, $2, 'dev', '{}'::jsonb)",
            &[&claims, &params],
        )
        .unwrap()
        .get(0);
    assert_eq!(plain, bucket_names(&streams), "{claims} {params}");
    plain
}

/// A bucket's rows after replaying its ops, in key order.
pub fn bucket_rows(c: &mut Client, bucket: &str) -> Vec<Value> {
    fold_bucket(&ops(c, bucket)).into_values().collect()
}
