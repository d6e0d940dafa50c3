//! What the compiler knows of a rewritten expression's type, for the
//! dialect ([`arg_of`]), and compiled dialect SQL kept as opaque nodes.

use crate::dialect;
use crate::query::unnest;
use crate::scope::{Scope, JSON_EACH_SQL};
use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, ObjectNamePart, Value,
};

/// Generated SQL is longer than any sensible expression compiles to (each
/// argument may appear in its function's SQL more than once).
const MAX_COMPILED: usize = 64 * 1024;

/// A compiled dialect expression as an opaque node: its SQL is kept as text
/// (not parsed back, so nesting depth costs no stack), with a cast to the
/// type it already has when later lowering needs to know it.
pub fn compiled(sql: String, kind: dialect::Kind) -> Result<Expr, String> {
    use dialect::Kind;
    if sql.len() > MAX_COMPILED {
        return Err(format!(
            "expression too large once compiled (over {MAX_COMPILED} bytes of SQL); simplify it"
        ));
    }
    let raw = Expr::Identifier(Ident::new(format!("({sql})")));
    let data_type = match kind {
        Kind::Json => DataType::JSONB,
        Kind::Bytea => DataType::Bytea,
        Kind::Bool => DataType::Boolean,
        Kind::Int => DataType::BigInt(None),
        Kind::Real => DataType::Float8,
        _ => return Ok(raw),
    };
    Ok(Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(raw),
        data_type,
        array: false,
        format: None,
    })
}

/// What is known of a compiled expression's type, for the dialect.
pub fn kind_of(e: &Expr, scope: &Scope) -> (dialect::Kind, Option<String>) {
    use dialect::Kind;
    match unnest(e) {
        Expr::CompoundIdentifier(ids) if ids.len() == 2 => {
            let ty = scope.table.and_then(|(t, alias)| {
                (ids[0].value == alias)
                    .then(|| t.column(&ids[1].value))
                    .flatten()
                    .map(|c| c.type_name.clone())
            });
            if ids[0].value == JSON_EACH_SQL {
                return (Kind::Json, None);
            }
            match ty {
                Some(t) => (Kind::of_type(&t), Some(t)),
                None => (Kind::Other, None),
            }
        }
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(_) => (Kind::Literal, None),
            Value::Number(n, _) if n.contains(['.', 'e', 'E']) => (Kind::Real, None),
            Value::Number(..) => (Kind::Int, None),
            Value::Boolean(_) => (Kind::Bool, None),
            Value::Placeholder(p) if p == "$1" || p == "$2" || p == "$3" => (Kind::Json, None),
            _ => (Kind::Other, None),
        },
        Expr::Cast { data_type, .. } => {
            let t = data_type.to_string().to_lowercase();
            let k = match t.as_str() {
                "jsonb" | "json" => Kind::Json,
                "bigint" | "int" | "integer" => Kind::Int,
                "float8" | "numeric" | "double precision" => Kind::Real,
                "bytea" => Kind::Bytea,
                "boolean" | "bool" => Kind::Bool,
                _ => Kind::Other,
            };
            (k, None)
        }
        Expr::BinaryOp {
            op: BinaryOperator::HashArrow,
            ..
        } => (Kind::Json, None),
        Expr::IsNull(_) | Expr::IsNotNull(_) | Expr::Exists { .. } | Expr::InList { .. } => {
            (Kind::Bool, None)
        }
        _ => (Kind::Other, None),
    }
}

pub fn arg_of(e: &Expr, scope: &Scope) -> dialect::Arg {
    let (kind, pg_type) = kind_of(e, scope);
    let (literal, index) = match unnest(e) {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => (Some(s.clone()), None),
            Value::Number(n, _) => (None, n.parse::<i64>().ok()),
            _ => (None, None),
        },
        _ => (None, None),
    };
    dialect::Arg {
        sql: e.to_string(),
        kind,
        literal,
        index,
        pg_type,
    }
}

/// A rewritten expression as jsonb for `outpost._elements` (array text parsed
/// safely, see [`dialect::Arg::to_jsonb`]).
pub fn elements_jsonb(e: &Expr, scope: &Scope) -> String {
    arg_of(e, scope).to_jsonb()
}

pub fn call_args(f: &sqlparser::ast::Function) -> Result<Vec<Expr>, String> {
    match &f.args {
        FunctionArguments::None => Ok(vec![]),
        FunctionArguments::List(l) if l.duplicate_treatment.is_none() && l.clauses.is_empty() => l
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                _ => Err(format!("unsupported argument `{a}` in `{f}`")),
            })
            .collect(),
        _ => Err(format!("unsupported arguments in `{f}`")),
    }
}

pub fn function_name(f: &sqlparser::ast::Function) -> Vec<String> {
    f.name
        .0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.clone()),
            _ => None,
        })
        .collect()
}
