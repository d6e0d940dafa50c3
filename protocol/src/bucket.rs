//! Bucket ids: the definition name followed by a compact JSON array of parameter
//! values, e.g. `user_lists["u1"]` or `global[]`. Clients treat them as opaque.
//! The extension builds the same text in SQL (`outpost._bucket_id`); the test below
//! pins the format both sides must agree on.

use serde_json::Value;

pub fn bucket_id(name: &str, params: &[Value]) -> String {
    let mut s = String::with_capacity(name.len() + 16);
    s.push_str(name);
    s.push('[');
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&p.to_string());
    }
    s.push(']');
    s
}

/// The definition name part of a bucket id.
pub fn definition_name(bucket: &str) -> &str {
    bucket.split_once('[').map_or(bucket, |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compact_json_array() {
        assert_eq!(bucket_id("global", &[]), "global[]");
        assert_eq!(bucket_id("by_user", &[json!("u1")]), r#"by_user["u1"]"#);
        assert_eq!(
            bucket_id("by_org", &[json!(1), json!("admin")]),
            r#"by_org[1,"admin"]"#
        );
        assert_eq!(definition_name(r#"by_org[1,"admin"]"#), "by_org");
    }
}
