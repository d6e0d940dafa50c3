//! The part of the Postgres catalog the compiler needs. The extension builds
//! it from `pg_class`/`pg_attribute` and passes it in as JSON.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// `format_type()` of the column, e.g. `uuid`, `timestamp with time zone`.
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key column names in key order; empty when the table has none.
    #[serde(default)]
    pub primary_key: Vec<String>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            crate::quote_ident(&self.schema),
            crate::quote_ident(&self.name)
        )
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Tables by the names a query may use: `schema.table` always, and the bare
/// name when the table is visible on the search path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub tables: BTreeMap<String, Table>,
}

impl Catalog {
    pub fn from_tables(tables: impl IntoIterator<Item = (bool, Table)>) -> Catalog {
        let mut map = BTreeMap::new();
        for (visible, t) in tables {
            if visible {
                map.insert(t.name.clone(), t.clone());
            }
            map.insert(format!("{}.{}", t.schema, t.name), t);
        }
        Catalog { tables: map }
    }

    pub fn lookup(&self, name: &str) -> Option<&Table> {
        self.tables.get(name)
    }

    pub fn by_oid(&self, oid: u32) -> Option<&Table> {
        self.tables.values().find(|t| t.oid == oid)
    }
}
