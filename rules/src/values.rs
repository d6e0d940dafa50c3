//! Row values as a SQLite client stores them.

use serde_json::Value;

/// A row object → the JSON text a SQLite client stores: booleans become 1/0,
/// nested objects and arrays become JSON text (SQLite has no such types);
/// numbers, strings and nulls stay. Timestamps and uuids arrive as strings
/// already (Postgres renders them as ISO-8601 / canonical text in jsonb).
pub fn sqlite_json(row: Value) -> String {
    let Value::Object(map) = row else {
        return row.to_string();
    };
    let converted: serde_json::Map<String, Value> = map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Bool(b) => Value::from(b as i64),
                Value::Object(_) | Value::Array(_) => Value::String(v.to_string()),
                other => other,
            };
            (k, v)
        })
        .collect();
    Value::Object(converted).to_string()
}

#[cfg(test)]
mod tests {
    use super::sqlite_json;
    use serde_json::json;

    #[test]
    fn sqlite_values() {
        assert_eq!(
            sqlite_json(
                json!({"a": true, "b": false, "c": {"x": [1]}, "d": [1, 2], "e": 1.5, "f": null, "g": "s"})
            ),
            r#"{"a":1,"b":0,"c":"{\"x\":[1]}","d":"[1,2]","e":1.5,"f":null,"g":"s"}"#
        );
    }
}
