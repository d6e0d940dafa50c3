//! Which database errors raised by a `/crud` entry are the client's doing,
//! and what the client is told about them (see `routes::crud` for statuses).

use super::types::RejectKind;

/// Classifies a database error raised by one entry. `None`: not the
/// client's doing (the batch fails with 500).
pub fn classify_crud_error(e: &tokio_postgres::Error) -> Option<(RejectKind, String)> {
    let db = e.as_db_error()?;
    classify(db.code().code(), db.message())
}

/// The rule behind [`classify_crud_error`], on a SQLSTATE and its message.
fn classify(code: &str, message: &str) -> Option<(RejectKind, String)> {
    Some(match code {
        // Our own validation (22023), bad values (class 22), unknown columns.
        c if c.starts_with("22") || c == "42703" => (RejectKind::Invalid, message.to_string()),
        "42501" => (
            RejectKind::Denied,
            "permission denied by row-level security or privileges".to_string(),
        ),
        // A write handler's RAISE EXCEPTION: its message is meant for the client.
        "P0001" => (RejectKind::Refused, message.to_string()),
        c if c.starts_with("23") => (
            RejectKind::Refused,
            format!(
                "{} (SQLSTATE {c})",
                match c {
                    "23505" => "duplicate key",
                    "23503" => "foreign key violation",
                    "23502" => "a required column is null",
                    "23514" => "check constraint violation",
                    _ => "integrity constraint violation",
                }
            ),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_kinds_and_internal_ones_to_none() {
        assert_eq!(
            classify("22023", "unknown table"),
            Some((RejectKind::Invalid, "unknown table".into()))
        );
        assert_eq!(
            classify("42703", "no such column").unwrap().0,
            RejectKind::Invalid
        );
        let (kind, msg) = classify("42501", "policy secret_policy on t").unwrap();
        assert_eq!(kind, RejectKind::Denied);
        assert!(!msg.contains("secret_policy"), "policy names stay internal");
        assert_eq!(
            classify("P0001", "title too long"),
            Some((RejectKind::Refused, "title too long".into()))
        );
        let (kind, msg) = classify("23505", "duplicate key value violates \"t_pkey\"").unwrap();
        assert_eq!(kind, RejectKind::Refused);
        assert_eq!(msg, "duplicate key (SQLSTATE 23505)");
        assert_eq!(classify("XX000", "internal"), None);
        assert_eq!(classify("42P01", "relation x does not exist"), None);
    }
}
