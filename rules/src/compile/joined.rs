//! Columns of a joined table in a data query (Sync Streams: `SELECT
//! todos.*, lists.name AS list_name FROM todos JOIN lists ON …` lowers to
//! a data query with `LEFT JOIN lists ON todos.list_id = lists.id`).
//!
//! The join must be on the joined table's whole primary key, so a row gets
//! at most one joined row (NULL columns when there is none). Such a row's
//! data depends on two tables, so the tick re-evaluates it when either
//! changes: [`JoinKeys::keys_sql`] turns the joined table's changed keys
//! into the keys of the rows that reference them (one index probe per
//! changed key on the referencing column), inside the tick's one snapshot,
//! so a renamed list re-PUTs its todos in the checkpoint of the rename.

use super::sqlgen::pk_json;
use crate::catalog::{Catalog, Table};
use crate::query::{self, LeftJoin};
use crate::quote_ident;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{BinaryOperator, Expr};
use std::ops::ControlFlow;

/// The tick's view of a join: when `relid` (the joined table) changes,
/// `keys_sql` yields `(relid, pk)` of the data query's rows to re-evaluate.
/// It reads the tick's `_changes` and `_trunc` CTEs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinKeys {
    pub relid: u32,
    pub keys_sql: String,
}

/// A LEFT JOIN of a data query, resolved.
pub struct Joined<'c> {
    pub table: &'c Table,
    pub alias: String,
    /// `LEFT JOIN <table> AS <alias> ON <alias>.<pk> = <root>.<col>`.
    pub sql: String,
    pub keys: JoinKeys,
}

fn column_of(e: &Expr) -> Option<(String, String)> {
    match query::unnest(e) {
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
            Some((ids[0].value.clone(), ids[1].value.clone()))
        }
        _ => None,
    }
}

pub fn resolve<'c>(
    joins: Vec<LeftJoin>,
    catalog: &'c Catalog,
    root: &Table,
    root_alias: &str,
) -> Result<Vec<Joined<'c>>, String> {
    let mut out: Vec<Joined> = Vec::new();
    for j in joins {
        let t = query::resolve_table(catalog, &j.table)?;
        let alias = j.alias.clone().unwrap_or_else(|| t.name.clone());
        if alias == root_alias || out.iter().any(|o| o.alias == alias) {
            return Err(format!(
                "the name `{alias}` is used twice in FROM; give one an alias"
            ));
        }
        let on = j.on.to_string();
        let sides = match query::unnest(&j.on) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (column_of(left), column_of(right)) {
                (Some(a), Some(b)) if b.0 == alias && (a.0 == root_alias || a.0 == root.name) => {
                    Some((a.1, b.1))
                }
                (Some(a), Some(b)) if a.0 == alias && (b.0 == root_alias || b.0 == root.name) => {
                    Some((b.1, a.1))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((root_col, join_col)) = sides else {
            return Err(format!(
                "JOIN {alias} ON {on}: compare a column of \"{}\" with the key of \"{}\"",
                root.name, t.name
            ));
        };
        if root.column(&root_col).is_none() {
            return Err(format!(
                "unknown column \"{root_col}\" in table \"{}\"",
                root.name
            ));
        }
        if t.primary_key.len() != 1 || t.primary_key[0] != join_col {
            return Err(format!(
                "columns of \"{}\" can be selected when the join is on its primary key ({}), not on \"{join_col}\": each row must have at most one joined row",
                t.name,
                if t.primary_key.is_empty() {
                    "it has none".to_string()
                } else {
                    t.primary_key.join(", ")
                }
            ));
        }
        let key_type = &t.column(&join_col).expect("pk columns exist").type_name;
        let (ja, ra) = (quote_ident(&alias), quote_ident(root_alias));
        let (jc, rc) = (quote_ident(&join_col), quote_ident(&root_col));
        let sql = format!(
            "LEFT JOIN {} AS {ja} ON {ja}.{jc} = {ra}.{rc}",
            t.qualified()
        );
        let pk_json = pk_json(root, root_alias)?;
        let keys_sql = format!(
            "SELECT {oid}::oid AS relid, x.pk FROM (SELECT DISTINCT (k.pk ->> 0)::{key_type} AS v FROM _changes k WHERE k.relid = {joid} AND k.kind = 'k') c \
             CROSS JOIN LATERAL (SELECT {pk_json} AS pk FROM {tbl} AS {ra} WHERE {ra}.{rc} = c.v OFFSET 0) x \
             UNION ALL SELECT {oid}::oid, {pk_json} FROM {tbl} AS {ra} WHERE {ra}.{rc} IS NOT NULL AND EXISTS (SELECT 1 FROM _trunc t WHERE t.relid = {joid})",
            oid = root.oid,
            joid = t.oid,
            tbl = root.qualified(),
        );
        out.push(Joined {
            table: t,
            alias,
            sql,
            keys: JoinKeys {
                relid: t.oid,
                keys_sql,
            },
        });
    }
    Ok(out)
}

/// The join whose columns an output expression reads, if any; an
/// expression reading a joined table must read nothing else.
pub fn owner(e: &Expr, joined: &[Joined]) -> Result<Option<usize>, String> {
    let mut hit: Option<usize> = None;
    let mut other = false;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        match x {
            Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
                match joined.iter().position(|j| j.alias == ids[0].value) {
                    Some(n) if hit.is_none() || hit == Some(n) => hit = Some(n),
                    _ => other = true,
                }
            }
            Expr::Identifier(_) => other = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    match hit {
        Some(n) if other => Err(format!(
            "`{e}` mixes columns of \"{}\" with others: select each table's columns apart",
            joined[n].table.name
        )),
        h => Ok(h),
    }
}
