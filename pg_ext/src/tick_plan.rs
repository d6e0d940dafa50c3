//! The small tick's statement from a plan kept for the connection's life
//! (`outpost._tick_kept(stmt, last_cp)`, called by `outpost._tick_locked`).
//!
//! A one-row tick spent about half of its backend CPU parsing and planning
//! the compiled statement (~8 kB of SQL): PL/pgSQL's `EXECUTE` never keeps a
//! plan, and a session-level `PREPARE` is not safe under SECURITY DEFINER (the
//! session's user can replace a prepared statement of that name with one
//! parsed under their own search_path). Here the plan lives in this backend's
//! memory, out of reach of any SQL object, the way PL/pgSQL keeps the plans of
//! its static SQL:
//!
//! - it is keyed by the statement's exact text, so a rules change (a new
//!   statement) never runs an old plan; only the latest text is kept;
//! - it is a Postgres cached plan (`SPI_prepare` + `SPI_keepplan`), so a
//!   change to anything it was planned against (a table's columns, its
//!   statistics, a function it calls, the search_path) makes Postgres parse
//!   and plan it again before its next run, as for any kept plan;
//! - it is generic (one plan whatever `$1`, the last checkpoint, is): `$1`
//!   only numbers the ops. It is planned with the settings of the caller's
//!   small-tick window (hash aggregates and hash joins off, 02_tick.sql),
//!   which is the only place it runs, so a replan gets the same settings.
//!
//! Big ticks keep `EXECUTE`: their plan follows their size, and planning is
//! nothing beside their run.

use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::CString;

struct Kept {
    text: String,
    plan: pg_sys::SPIPlanPtr,
}

thread_local! {
    /// The kept plan of the last small tick's statement.
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// Runs the tick statement `stmt` with `$1 = last_cp` from the kept plan;
/// returns its one row (queue entries, ops, ops on existing rows).
#[pg_extern(volatile, parallel_unsafe, strict)]
fn _tick_kept(stmt: &str, last_cp: i64) -> Vec<i64> {
    // SAFETY: plain SPI use inside a function call; the kept plan outlives
    // the SPI connection (SPI_keepplan) and is only used in this backend.
    unsafe { run(stmt, last_cp) }
}

unsafe fn run(stmt: &str, last_cp: i64) -> Vec<i64> {
    if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
        error!("outpost._tick_kept: SPI_connect failed");
    }
    let plan = plan_for(stmt);
    let mut args = [pg_sys::Datum::from(last_cp)];
    let nulls = c" ";
    let rc = pg_sys::SPI_execute_plan(plan, args.as_mut_ptr(), nulls.as_ptr(), false, 0);
    if rc != pg_sys::SPI_OK_SELECT as i32 || pg_sys::SPI_processed != 1 {
        error!("outpost._tick_kept: the tick statement returned {rc}, not one row");
    }
    let table = &*pg_sys::SPI_tuptable;
    let tuple = *table.vals;
    let mut out = Vec::with_capacity(3);
    for col in 1..=3 {
        let mut isnull = false;
        let d = pg_sys::SPI_getbinval(tuple, table.tupdesc, col, &mut isnull);
        out.push(if isnull { 0 } else { d.value() as i64 });
    }
    pg_sys::SPI_finish();
    out
}

/// The kept plan of `stmt`, prepared (and the previous one freed) when the
/// text is not the one kept.
unsafe fn plan_for(stmt: &str) -> pg_sys::SPIPlanPtr {
    let kept = KEPT.with_borrow(|k| k.as_ref().filter(|k| k.text == stmt).map(|k| k.plan));
    if let Some(plan) = kept {
        return plan;
    }
    let text =
        CString::new(stmt).unwrap_or_else(|_| error!("outpost._tick_kept: NUL in statement"));
    let mut types = [pg_sys::INT8OID];
    let plan = pg_sys::SPI_prepare_cursor(
        text.as_ptr(),
        1,
        types.as_mut_ptr(),
        pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
    );
    if plan.is_null() {
        let code = pg_sys::SPI_result;
        error!("outpost._tick_kept: SPI_prepare failed ({code})");
    }
    if pg_sys::SPI_keepplan(plan) != 0 {
        error!("outpost._tick_kept: SPI_keepplan failed");
    }
    if let Some(old) = KEPT.replace(Some(Kept {
        text: stmt.to_string(),
        plan,
    })) {
        pg_sys::SPI_freeplan(old.plan);
    }
    plan
}
