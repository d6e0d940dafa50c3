//! The app's tables and the SQL that turns schemaless synced rows into typed views.
//!
//! Synced rows live as JSON in `ps_data__<table>` so that a schema change never needs
//! a data migration: the view is the only thing that knows about columns. Writes go
//! through `INSTEAD OF` triggers on the view, which update the data table and append
//! to the upload queue (`ps_crud`) in the same statement, so a local write and its
//! queue entry cannot be separated.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Integer,
    Real,
}

impl ColumnType {
    fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "TEXT",
            ColumnType::Integer => "INTEGER",
            ColumnType::Real => "REAL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
}

impl Column {
    pub fn new(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.to_string(),
            ty,
        }
    }
}

/// One app table. `id` is implicit (TEXT primary key) and must not be listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// Never synced and never uploaded: rows live in `ps_data_local__<name>`.
    #[serde(default)]
    pub local_only: bool,
    /// Writes are uploaded but not kept locally (logs, events).
    #[serde(default)]
    pub insert_only: bool,
}

impl Table {
    pub fn new(name: &str, columns: Vec<Column>) -> Table {
        Table {
            name: name.to_string(),
            columns,
            local_only: false,
            insert_only: false,
        }
    }

    pub fn local_only(mut self) -> Table {
        self.local_only = true;
        self
    }

    pub fn insert_only(mut self) -> Table {
        self.insert_only = true;
        self
    }

    /// The table holding this table's rows.
    pub fn data_table(&self) -> String {
        if self.local_only {
            format!("ps_data_local__{}", self.name)
        } else {
            data_table(&self.name)
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_name(&self.name, "table")?;
        if self.local_only && self.insert_only {
            return Err(Error::Schema(format!(
                "table {:?} cannot be both local-only and insert-only",
                self.name
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.columns {
            check_name(&c.name, "column")?;
            if c.name.eq_ignore_ascii_case("id") {
                return Err(Error::Schema(format!(
                    "table {:?}: column `id` is implicit and must not be listed",
                    self.name
                )));
            }
            if !seen.insert(c.name.to_ascii_lowercase()) {
                return Err(Error::Schema(format!(
                    "table {:?}: duplicate column {:?}",
                    self.name, c.name
                )));
            }
        }
        Ok(())
    }

    /// `json_object('a', NEW."a", …)` for the given row alias.
    fn json_object(&self, row: &str) -> String {
        let args: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}, {row}.{}", quote_str(&c.name), quote_ident(&c.name)))
            .collect();
        format!("json_object({})", args.join(", "))
    }

    /// The columns that differ between OLD and NEW, as a JSON object (the PATCH body).
    fn json_diff(&self) -> String {
        if self.columns.is_empty() {
            return "'{}'".to_string();
        }
        let parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let q = quote_ident(&c.name);
                format!(
                    "SELECT {} AS k, NEW.{q} AS v WHERE NEW.{q} IS NOT OLD.{q}",
                    quote_str(&c.name)
                )
            })
            .collect();
        format!(
            "(SELECT coalesce(json_group_object(k, v), '{{}}') FROM ({}))",
            parts.join(" UNION ALL ")
        )
    }

    /// Statements that (re)create the data table, the view and its triggers.
    /// Idempotent: dropping and recreating views never touches data.
    pub fn create_sql(&self) -> Vec<String> {
        let name = &self.name;
        let view = quote_ident(name);
        let data = quote_ident(&self.data_table());
        let lit = quote_str(name);
        let mut out = vec![
            format!("CREATE TABLE IF NOT EXISTS {data} (id TEXT PRIMARY KEY NOT NULL, data TEXT) STRICT"),
            format!("DROP VIEW IF EXISTS {view}"),
        ];
        let mut cols = vec!["id".to_string()];
        let mut exprs = vec!["id".to_string()];
        for c in &self.columns {
            cols.push(quote_ident(&c.name));
            exprs.push(format!(
                "CAST(json_extract(data, {}) AS {})",
                quote_str(&format!("$.\"{}\"", c.name)),
                c.ty.sql()
            ));
        }
        out.push(format!(
            "CREATE VIEW {view}({}) AS SELECT {} FROM {data}",
            cols.join(", "),
            exprs.join(", ")
        ));

        let trig = |kind: &str| quote_ident(&format!("ps_view_{kind}_{name}"));
        let tx = "(SELECT current_tx FROM ps_tx WHERE id = 1)";
        // A pending local write blocks applying server checkpoints until the server
        // has seen it (section 6 of the protocol reference): mark the gate closed.
        let gate =
            "INSERT OR REPLACE INTO ps_kv(key, value) VALUES ('target_op', 9223372036854775807);";
        let mark = format!(
            "INSERT OR IGNORE INTO ps_updated_rows(row_type, row_id) VALUES ({lit}, NEW.id);"
        );
        let id_check = "SELECT RAISE(FAIL, 'id is required') WHERE NEW.id IS NULL;";
        let obj_new = self.json_object("NEW");

        if self.insert_only {
            out.push(format!(
                "CREATE TRIGGER {} INSTEAD OF INSERT ON {view} FOR EACH ROW BEGIN {id_check} \
                 INSERT INTO ps_crud(tx_id, data) VALUES ({tx}, json_object('op', 'PUT', 'type', {lit}, 'id', NEW.id, 'data', json({obj_new}))); END",
                trig("insert")
            ));
            return out;
        }

        let (ins_extra, upd_extra, del_extra) = if self.local_only {
            (String::new(), String::new(), String::new())
        } else {
            (
                format!(
                    "INSERT INTO ps_crud(tx_id, data) VALUES ({tx}, json_object('op', 'PUT', 'type', {lit}, 'id', NEW.id, 'data', json({obj_new}))); {mark} {gate}"
                ),
                format!(
                    "INSERT INTO ps_crud(tx_id, data) SELECT {tx}, json_object('op', 'PATCH', 'type', {lit}, 'id', NEW.id, 'data', json(d)) FROM (SELECT {} AS d) WHERE d != '{{}}'; {mark} {gate}",
                    self.json_diff()
                ),
                format!(
                    "INSERT INTO ps_crud(tx_id, data) VALUES ({tx}, json_object('op', 'DELETE', 'type', {lit}, 'id', OLD.id)); \
                     INSERT OR IGNORE INTO ps_updated_rows(row_type, row_id) VALUES ({lit}, OLD.id); {gate}"
                ),
            )
        };
        out.push(format!(
            "CREATE TRIGGER {} INSTEAD OF INSERT ON {view} FOR EACH ROW BEGIN {id_check} \
             INSERT OR REPLACE INTO {data}(id, data) VALUES (NEW.id, {obj_new}); {ins_extra} END",
            trig("insert")
        ));
        out.push(format!(
            "CREATE TRIGGER {} INSTEAD OF UPDATE ON {view} FOR EACH ROW BEGIN \
             SELECT RAISE(FAIL, 'id cannot be changed') WHERE NEW.id IS NOT OLD.id; \
             UPDATE {data} SET data = json_patch(coalesce(data, '{{}}'), {obj_new}) WHERE id = NEW.id; {upd_extra} END",
            trig("update")
        ));
        out.push(format!(
            "CREATE TRIGGER {} INSTEAD OF DELETE ON {view} FOR EACH ROW BEGIN \
             DELETE FROM {data} WHERE id = OLD.id; {del_extra} END",
            trig("delete")
        ));
        out
    }
}

/// The app schema: which tables get typed views.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub tables: Vec<Table>,
}

impl Schema {
    pub fn new(tables: Vec<Table>) -> Schema {
        Schema { tables }
    }

    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tables {
            t.validate()?;
            if !seen.insert(t.name.to_ascii_lowercase()) {
                return Err(Error::Schema(format!("duplicate table {:?}", t.name)));
            }
        }
        Ok(())
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Parses PowerSync's schema JSON shape (`{"tables":[{"name","columns":[{"name","type"}]}]}`).
    pub fn from_json(text: &str) -> Result<Schema> {
        let s: Schema = serde_json::from_str(text)?;
        s.validate()?;
        Ok(s)
    }
}

/// The synced-data table for an object type.
pub fn data_table(name: &str) -> String {
    format!("ps_data__{name}")
}

fn check_name(name: &str, what: &str) -> Result<()> {
    // Quoting handles everything else; a `"` in a column name would break its JSON
    // path, and `ps_` is our namespace.
    let bad_char = name.contains('\0') || (what == "column" && name.contains('"'));
    if name.is_empty() || bad_char || name.starts_with("ps_") {
        return Err(Error::Schema(format!("invalid {what} name {name:?}")));
    }
    Ok(())
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_schemas() {
        let t = |cols: Vec<Column>| Schema::new(vec![Table::new("t", cols)]).validate();
        assert!(t(vec![Column::new("id", ColumnType::Text)]).is_err());
        assert!(t(vec![
            Column::new("a", ColumnType::Text),
            Column::new("A", ColumnType::Integer)
        ])
        .is_err());
        assert!(Schema::new(vec![Table::new("ps_x", vec![])])
            .validate()
            .is_err());
        assert!(t(vec![Column::new("it's", ColumnType::Text)]).is_ok());
    }

    #[test]
    fn parses_powersync_schema_json() {
        let s = Schema::from_json(
            r#"{"tables":[{"name":"todos","columns":[{"name":"title","type":"text"},{"name":"n","type":"integer"}]}]}"#,
        )
        .unwrap();
        assert_eq!(s.tables[0].columns[1].ty, ColumnType::Integer);
        assert!(!s.tables[0].local_only);
    }
}
