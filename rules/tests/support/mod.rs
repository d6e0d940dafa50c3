//! Catalog building blocks shared by the compiler's integration tests.

use outpost_rules::{Column, Table};

pub fn col(name: &str, ty: &str) -> Column {
    Column {
        name: name.into(),
        type_name: ty.into(),
    }
}

/// A visible table in schema `public` keyed by `id`.
#[allow(dead_code)]
pub fn table(oid: u32, name: &str, columns: &[(&str, &str)]) -> (bool, Table) {
    (
        true,
        Table {
            oid,
            schema: "public".into(),
            name: name.into(),
            columns: columns.iter().map(|(n, t)| col(n, t)).collect(),
            primary_key: vec!["id".into()],
        },
    )
}
