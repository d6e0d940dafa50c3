//! Capture: the trigger function that queues `(table, key)` for every row a
//! writer changes in a synced table, on the writer's path.
//!
//! Why a row-level trigger in C rather than a statement-level PL/pgSQL one
//! with transition tables (measured, Postgres 18, 100k-row bulk insert, see
//! CONTRIBUTING.md): a transition table keeps a copy of every whole changed
//! row in a tuplestore that spills to a temporary file past `work_mem` (the
//! writer's, 4 MB by default), which alone cost ~45% of the insert; the
//! queue's `INSERT … SELECT` then went through the executor once per row
//! (~50% more). An AFTER ROW trigger's event queue holds only tuple ids, and
//! this function writes the queue's heap tuple directly: no executor, no SPI,
//! no user switch, no `search_path` in play.
//!
//! Security: the function runs as the writer but never evaluates anything
//! the writer controls — no SQL, no operators, no search_path lookups; it
//! builds the key with `jsonb_build_array` called by OID, exactly as the
//! compiled rules compute keys, and writes the tuple with `simple_heap_insert`,
//! which checks no privilege. So a writer needs no privilege in schema
//! `outpost`, and nothing but a real row change reaches the queue: EXECUTE on
//! this function is revoked from PUBLIC, and creating a trigger needs it.
//! The wake-up of the ticker reads and sets `outpost.notify_clock` as the
//! queue's owner (a local user switch, like SECURITY DEFINER, at most once per
//! 5 ms per connection).

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;

/// Queue kinds (see `outpost.changes`).
const KIND_KEY: u8 = b'k';
const KIND_TRUNCATE: u8 = b't';

/// Writers wake the ticker at most once per this many milliseconds.
const WAKE_EVERY_MS: i64 = 5;

/// Milliseconds between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

thread_local! {
    /// `(outpost namespace, outpost.changes)`, resolved by name once per
    /// connection and checked on every open (a dropped and recreated
    /// extension has new oids).
    static QUEUE: Cell<(pg_sys::Oid, pg_sys::Oid)> = const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
    /// When this connection last looked at the shared wake-up clock.
    static LAST_WAKE_CHECK: Cell<i64> = const { Cell::new(i64::MIN) };
    /// `jsonb_build_array` prepared for one list of argument types (the
    /// function reads its argument types from the call expression).
    static BUILDERS: RefCell<Vec<(Vec<pg_sys::Oid>, *mut pg_sys::FmgrInfo)>> = const { RefCell::new(Vec::new()) };
}

/// The trigger: AFTER INSERT/UPDATE/DELETE FOR EACH ROW, AFTER TRUNCATE FOR
/// EACH STATEMENT (installed by rules/src/tick_sql.rs).
#[pg_trigger]
fn _capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    // SAFETY: Postgres called this as a trigger; the trigger data, the
    // relation (locked by the writer's statement) and its tuples are valid
    // for the duration of the call.
    unsafe { capture(trigger.trigger_data()) };
    Ok(None)
}

unsafe fn capture(td: &pg_sys::TriggerData) {
    let rel = td.tg_relation;
    let relid = (*rel).rd_id;
    let op = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let row = td.tg_event & pg_sys::TRIGGER_EVENT_ROW != 0;
    if row && (*td.tg_trigger).tgisclone {
        // A clone on a partition would report the partition's oid; rules
        // name the partitioned table, which gets statement-level capture.
        error!("outpost: row-level capture cannot run on a partition");
    }
    let queue = open_queue();
    match (row, op) {
        (false, pg_sys::TRIGGER_EVENT_TRUNCATE) => enqueue(queue, relid, None, KIND_TRUNCATE),
        (true, pg_sys::TRIGGER_EVENT_INSERT) | (true, pg_sys::TRIGGER_EVENT_DELETE) => {
            let k = row_key(rel, td.tg_trigtuple);
            enqueue(queue, relid, Some(k), KIND_KEY);
        }
        (true, pg_sys::TRIGGER_EVENT_UPDATE) => {
            let new = row_key(rel, td.tg_newtuple);
            enqueue(queue, relid, Some(new), KIND_KEY);
            let old = row_key(rel, td.tg_trigtuple);
            if !same_varlena(old, new) {
                enqueue(queue, relid, Some(old), KIND_KEY);
            }
        }
        _ => {}
    }
    wake(queue);
    pg_sys::table_close(queue, pg_sys::NoLock as _);
}

/// Opens `outpost.changes` for insertion.
unsafe fn open_queue() -> pg_sys::Relation {
    let (nsp, oid) = QUEUE.get();
    if oid != pg_sys::InvalidOid {
        let rel = pg_sys::try_relation_open(oid, pg_sys::RowExclusiveLock as _);
        if !rel.is_null() {
            if (*(*rel).rd_rel).relnamespace == nsp && name_is(&(*(*rel).rd_rel).relname, c"changes")
            {
                return checked_queue(rel);
            }
            pg_sys::relation_close(rel, pg_sys::RowExclusiveLock as _);
        }
    }
    let nsp = pg_sys::get_namespace_oid(c"outpost".as_ptr(), false);
    let oid = pg_sys::get_relname_relid(c"changes".as_ptr(), nsp);
    if oid == pg_sys::InvalidOid {
        error!("outpost: the capture queue outpost.changes is missing");
    }
    QUEUE.set((nsp, oid));
    checked_queue(pg_sys::table_open(oid, pg_sys::RowExclusiveLock as _))
}

unsafe fn checked_queue(rel: pg_sys::Relation) -> pg_sys::Relation {
    // simple_heap_insert maintains no index and fires no trigger: the queue
    // must have neither, and the columns this file writes.
    let r = &*(*rel).rd_rel;
    if r.relhasindex || r.relhastriggers || (*(*rel).rd_att).natts != 4 {
        error!("outpost: outpost.changes must be a plain table (relid, pk, kind, def) without indexes or triggers");
    }
    rel
}

fn name_is(name: &pg_sys::NameData, want: &CStr) -> bool {
    // SAFETY: NameData is NUL-terminated within its 64 bytes.
    unsafe { CStr::from_ptr(name.data.as_ptr()) == want }
}

/// Appends one queue row `(relid, pk, kind, NULL)`.
unsafe fn enqueue(queue: pg_sys::Relation, relid: pg_sys::Oid, pk: Option<pg_sys::Datum>, kind: u8) {
    let mut values = [
        pg_sys::Datum::from(relid),
        pk.unwrap_or(pg_sys::Datum::from(0)),
        pg_sys::Datum::from(kind as i8),
        pg_sys::Datum::from(0),
    ];
    let mut nulls = [false, pk.is_none(), false, true];
    let tup = pg_sys::heap_form_tuple((*queue).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::simple_heap_insert(queue, tup);
    pg_sys::heap_freetuple(tup);
}

/// The row's primary key as `jsonb_build_array(pk columns in key order)`:
/// the same value the compiled rules compute from the row, so that the tick
/// finds it in `bucket_rows`.
unsafe fn row_key(rel: pg_sys::Relation, tuple: pg_sys::HeapTuple) -> pg_sys::Datum {
    #[cfg(feature = "pg18")]
    let pk_index = pg_sys::RelationGetPrimaryKeyIndex(rel, true);
    #[cfg(not(feature = "pg18"))]
    let pk_index = pg_sys::RelationGetPrimaryKeyIndex(rel);
    if pk_index == pg_sys::InvalidOid {
        error!(
            "outpost: synced table \"{}\" has no primary key; restore it or redeploy the rules",
            CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy()
        );
    }
    let index = pg_sys::RelationIdGetRelation(pk_index);
    let form = &*(*index).rd_index;
    let n = form.indnkeyatts as usize;
    let attnums = form.indkey.values.as_slice(n).to_vec();
    pg_sys::RelationClose(index);

    let desc = (*rel).rd_att;
    let attrs = pgrx::PgTupleDesc::from_pg_unchecked(desc);
    let mut types = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    for &attnum in &attnums {
        let attr = attrs.get(attnum as usize - 1).expect("primary key columns exist");
        types.push(attr.atttypid);
        let mut isnull = false;
        let d = pg_sys::heap_getattr(tuple, attnum as _, desc, &mut isnull);
        args.push(pg_sys::NullableDatum { value: d, isnull });
    }
    build_array(&types, &args)
}

/// `jsonb_build_array(args…)` through fmgr, with a call expression that
/// tells the function its argument types.
unsafe fn build_array(types: &[pg_sys::Oid], args: &[pg_sys::NullableDatum]) -> pg_sys::Datum {
    let finfo = BUILDERS.with_borrow_mut(|b| {
        if let Some((_, f)) = b.iter().find(|(t, _)| t.as_slice() == types) {
            return *f;
        }
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for &t in types {
            let c = pg_sys::makeNullConst(t, -1, pg_sys::InvalidOid);
            list = pg_sys::lappend(list, c.cast());
        }
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(pg_sys::F_JSONB_BUILD_ARRAY_ANY),
            pg_sys::JSONBOID,
            list,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        let f = pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()).cast::<pg_sys::FmgrInfo>();
        pg_sys::fmgr_info_cxt(
            pg_sys::Oid::from(pg_sys::F_JSONB_BUILD_ARRAY_ANY),
            f,
            pg_sys::TopMemoryContext,
        );
        (*f).fn_expr = expr.cast();
        pg_sys::MemoryContextSwitchTo(old);
        b.push((types.to_vec(), f));
        f
    });
    let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
        + std::mem::size_of_val(args);
    let fcinfo = pg_sys::palloc0(size).cast::<pg_sys::FunctionCallInfoBaseData>();
    (*fcinfo).flinfo = finfo;
    (*fcinfo).nargs = args.len() as _;
    (*fcinfo).fncollation = pg_sys::InvalidOid;
    let slots = (*fcinfo).args.as_mut_slice(args.len());
    slots.copy_from_slice(args);
    let f = (*finfo).fn_addr.expect("jsonb_build_array has an address");
    let d = f(fcinfo);
    if (*fcinfo).isnull {
        error!("outpost: jsonb_build_array returned NULL");
    }
    pg_sys::pfree(fcinfo.cast());
    d
}

unsafe fn same_varlena(a: pg_sys::Datum, b: pg_sys::Datum) -> bool {
    let (a, b) = (a.cast_mut_ptr::<pg_sys::varlena>(), b.cast_mut_ptr::<pg_sys::varlena>());
    let (la, lb) = (pgrx::varsize_any(a), pgrx::varsize_any(b));
    la == lb
        && std::slice::from_raw_parts(a.cast::<u8>(), la)
            == std::slice::from_raw_parts(b.cast::<u8>(), lb)
}

/// NOTIFY serializes committing transactions (a cluster-wide lock held
/// through the commit's WAL flush), so writers wake the ticker at most once
/// per 5 ms, shared through `outpost.notify_clock`; each connection looks at
/// that clock at most once per 5 ms. A wake-up lost to a rollback costs at
/// most the ticker's fallback interval.
unsafe fn wake(queue: pg_sys::Relation) {
    let now_ms = pg_sys::GetCurrentTimestamp() / 1000 + PG_EPOCH_MS;
    if now_ms - LAST_WAKE_CHECK.get() < WAKE_EVERY_MS {
        return;
    }
    LAST_WAKE_CHECK.set(now_ms);
    let (nsp, _) = QUEUE.get();
    let clock = pg_sys::get_relname_relid(c"notify_clock".as_ptr(), nsp);
    if clock == pg_sys::InvalidOid {
        return;
    }
    // As the queue's owner (the extension's), like a SECURITY DEFINER call;
    // an error in between aborts the (sub)transaction, which restores the
    // user.
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
    pg_sys::SetUserIdAndSecContext(
        (*(*queue).rd_rel).relowner,
        sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
    );
    let last: Option<i64> = pgrx::direct_function_call(
        pg_sys::pg_sequence_last_value,
        &[Some(pg_sys::Datum::from(clock))],
    );
    if last.is_none_or(|l| now_ms - l >= WAKE_EVERY_MS) {
        let _: Option<i64> = pgrx::direct_function_call(
            pg_sys::setval_oid,
            &[Some(pg_sys::Datum::from(clock)), Some(pg_sys::Datum::from(now_ms))],
        );
        let channel = pg_sys::cstring_to_text(c"outpost_changes".as_ptr());
        let payload = pg_sys::cstring_to_text(c"".as_ptr());
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[Some(pg_sys::Datum::from(channel)), Some(pg_sys::Datum::from(payload))],
        );
    }
    pg_sys::SetUserIdAndSecContext(user, sec);
}
