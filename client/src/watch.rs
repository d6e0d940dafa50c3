//! Live queries: re-run a query when a table it reads changes.
//!
//! An SQLite update hook records which tables each write touched; after every
//! write through the database handle the touched tables' change counters are bumped on a
//! `tokio::sync::watch` channel. A channel holds only its latest value, so a burst
//! of writes wakes a watcher once. Which tables a query reads is found by an
//! authorizer while preparing it, which sees through views to `ps_data__` tables.

use crate::error::Result;
use rusqlite::hooks::{Action, AuthAction, AuthContext, Authorization};
use rusqlite::Connection;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Change counters per table.
pub type Counters = BTreeMap<String, u64>;

/// The tables a statement reads (through views too).
pub fn tables_read(conn: &mut Connection, sql: &str) -> Result<BTreeSet<String>> {
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let sink = seen.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if let AuthAction::Read { table_name, .. } = ctx.action {
            sink.lock().unwrap().insert(table_name.to_string());
        }
        Authorization::Allow
    }))?;
    let prepared = conn.prepare(sql).map(|_| ());
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)?;
    prepared?;
    let out = std::mem::take(&mut *seen.lock().unwrap());
    Ok(out)
}

/// Runs a query for a [`Watch`] (the database handle's `query`).
pub type RunQuery = Arc<dyn Fn(&str, &[Value]) -> Result<Vec<Map<String, Value>>> + Send + Sync>;

/// A live query. The first [`Watch::next`] returns the current rows at once; each
/// later call waits until a table the query reads has changed, then re-runs it.
pub struct Watch {
    run: RunQuery,
    sql: String,
    params: Vec<Value>,
    tables: BTreeSet<String>,
    rx: tokio::sync::watch::Receiver<Counters>,
    seen: Option<Vec<u64>>,
}

impl Watch {
    pub(crate) fn new(
        rx: tokio::sync::watch::Receiver<Counters>,
        run: RunQuery,
        sql: String,
        params: Vec<Value>,
        tables: BTreeSet<String>,
    ) -> Watch {
        Watch {
            run,
            sql,
            params,
            tables,
            rx,
            seen: None,
        }
    }

    /// The tables this query depends on.
    pub fn tables(&self) -> &BTreeSet<String> {
        &self.tables
    }

    fn snapshot(&mut self) -> Vec<u64> {
        let counters = self.rx.borrow_and_update();
        self.tables
            .iter()
            .map(|t| counters.get(t).copied().unwrap_or(0))
            .collect()
    }

    pub async fn next(&mut self) -> Result<Vec<Map<String, Value>>> {
        if self.seen.is_some() {
            loop {
                let now = self.snapshot();
                if Some(&now) != self.seen.as_ref() {
                    break;
                }
                if self.rx.changed().await.is_err() {
                    // The database is gone; nothing will change any more.
                    std::future::pending::<()>().await;
                }
            }
        }
        // Read the counters before the query so a write racing with it triggers another run.
        self.seen = Some(self.snapshot());
        // Off the async runtime: the query may wait for the database.
        let (run, sql, params) = (self.run.clone(), self.sql.clone(), self.params.clone());
        match tokio::task::spawn_blocking(move || run(&sql, &params)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Rows written per table since the last [`Touched::take`], counted by the
/// write connection's update hook ([`Touched::hook`]).
///
/// Why not one map behind a mutex: the hook runs for every row written (two
/// million on a first sync of 1M rows: op log and data table), and a lock
/// plus a map lookup per row was ~3% of that sync's client CPU. The hook
/// keeps its own short list of the tables it has seen, each with a shared
/// counter, and takes the lock only for a table new to it.
#[derive(Clone, Default)]
pub(crate) struct Touched(Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>);

/// Tables the hook remembers without the lock (a first sync writes a few).
const HOOK_CACHE: usize = 16;

impl Touched {
    /// The update hook that feeds these counters.
    pub(crate) fn hook(&self) -> impl FnMut(Action, &str, &str, i64) + Send + 'static {
        let registry = self.0.clone();
        let mut cache: Vec<(String, Arc<AtomicU64>)> = Vec::new();
        move |_: Action, _: &str, table: &str, _: i64| {
            if let Some((_, n)) = cache.iter().find(|(t, _)| t == table) {
                n.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let n = registry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(table.to_string())
                .or_default()
                .clone();
            n.fetch_add(1, Ordering::Relaxed);
            if cache.len() == HOOK_CACHE {
                cache.clear();
            }
            cache.push((table.to_string(), n));
        }
    }

    /// The tables written since the last call, with their row counts.
    pub(crate) fn take(&self) -> BTreeMap<String, u64> {
        let registry = self.0.lock().unwrap_or_else(|e| e.into_inner());
        registry
            .iter()
            .filter_map(|(t, n)| {
                let n = n.swap(0, Ordering::Relaxed);
                (n > 0).then(|| (t.clone(), n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_counts_rows_per_table_between_takes() {
        let touched = Touched::default();
        let mut hook = touched.hook();
        for t in ["a", "b", "a", "a"] {
            hook(Action::SQLITE_INSERT, "main", t, 1);
        }
        // Past the hook's own list: the counts still add up.
        for i in 0..HOOK_CACHE * 2 {
            hook(Action::SQLITE_INSERT, "main", &format!("t{i}"), 1);
        }
        hook(Action::SQLITE_UPDATE, "main", "a", 1);
        let got = touched.take();
        assert_eq!(got["a"], 4);
        assert_eq!(got["b"], 1);
        assert_eq!(got.len(), 2 + HOOK_CACHE * 2);
        assert!(touched.take().is_empty(), "nothing written since");
        hook(Action::SQLITE_DELETE, "main", "b", 1);
        assert_eq!(touched.take(), BTreeMap::from([("b".to_string(), 1)]));
    }
}
