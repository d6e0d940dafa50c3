//! Capture: the trigger function that queues `(table, key)` for every row a
//! writer changes in a synced table, on the writer's path.
//!
//! Statement-level AFTER triggers with transition tables call it (rules/src/
//! tick_sql.rs installs them). It reads the primary keys of the changed rows
//! from the transition tables and appends them to `outpost.changes` with one
//! multi-row heap insert. What it replaced and why (measured, Postgres 18,
//! CONTRIBUTING.md has the profiles): a PL/pgSQL function per table did the
//! same with `INSERT … SELECT`, which cost an executor round and a WAL record
//! per queued key, a SECURITY DEFINER call (user switch and a pinned
//! `search_path`, a GUC save and restore) and a query of the wake-up clock per
//! statement. A row-level trigger in C was slower still for bulk writes: the
//! after-trigger queue fetches every row again and calls the function once
//! per row; a BEFORE ROW trigger that only buffers keys (no transition
//! tables, flushed at the end of the statement) was no faster for
//! `INSERT … SELECT` and made `COPY` twice as slow (any BEFORE ROW trigger
//! turns off COPY's multi-row insert).
//!
//! Security: the function runs as the writer but evaluates nothing the writer
//! controls — no SQL, no operators, no search_path lookups; it builds each key
//! as the jsonb value `jsonb_build_array` gives (the compiled rules compute
//! keys with it): integer, text and uuid keys directly, others by calling
//! that function by OID; it writes with `heap_multi_insert`, which checks no
//! privilege. So writers need no privilege in schema `outpost`, and only real
//! row changes reach the queue: EXECUTE on this function is revoked from
//! PUBLIC, and creating a trigger needs it. The wake-up of the ticker reads
//! and sets `outpost.notify_clock` as the queue's owner (a local user switch,
//! like SECURITY DEFINER, at most once per 5 ms per connection).

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

/// Queue rows per `heap_multi_insert` call.
const BATCH: usize = 64;

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

/// The trigger: AFTER INSERT/UPDATE/DELETE/TRUNCATE FOR EACH STATEMENT, with
/// the transition tables of the first three.
#[pg_trigger]
fn _capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    // SAFETY: Postgres called this as a trigger; the trigger data, the
    // relation (locked by the writer's statement) and its transition tables
    // are valid for the duration of the call.
    unsafe { capture(trigger.trigger_data()) };
    Ok(None)
}

unsafe fn capture(td: &pg_sys::TriggerData) {
    let rel = td.tg_relation;
    // The table the trigger is on: for a partitioned table, the parent (rows
    // in the transition tables have its row type).
    let relid = (*rel).rd_id;
    let op = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    if td.tg_event & pg_sys::TRIGGER_EVENT_ROW != 0 {
        error!("outpost: capture runs as a statement-level trigger");
    }
    let queue = open_queue();
    if op == pg_sys::TRIGGER_EVENT_TRUNCATE {
        enqueue(queue, relid, None, KIND_TRUNCATE);
    } else {
        let key = pk_columns(rel);
        let mut w = Writer::new(queue);
        let (first, second) = match op {
            pg_sys::TRIGGER_EVENT_INSERT => (td.tg_newtable, std::ptr::null_mut()),
            pg_sys::TRIGGER_EVENT_DELETE => (td.tg_oldtable, std::ptr::null_mut()),
            // Old and new rows come in pairs; an unchanged key is queued once.
            _ => (td.tg_newtable, td.tg_oldtable),
        };
        let mut a = Rows::open(rel, first);
        let mut b = Rows::open(rel, second);
        loop {
            w.make_room(2);
            let ka = a.next_key(&key, w.cx);
            let kb = b.next_key(&key, w.cx);
            if ka.is_none() && kb.is_none() {
                break;
            }
            if let Some(k) = ka {
                w.push(relid, k);
            }
            if let Some(k) = kb {
                if ka.is_none_or(|n| !same_varlena(n, k)) {
                    w.push(relid, k);
                }
            }
        }
        a.close();
        b.close();
        w.finish();
    }
    wake(queue);
    pg_sys::table_close(queue, pg_sys::NoLock as _);
}

/// A scan of a transition table through a read pointer of its own (as a
/// query's scan of one does).
struct Rows {
    table: *mut pg_sys::Tuplestorestate,
    ptr: i32,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Rows {
    unsafe fn open(rel: pg_sys::Relation, table: *mut pg_sys::Tuplestorestate) -> Rows {
        if table.is_null() {
            return Rows {
                table,
                ptr: 0,
                slot: std::ptr::null_mut(),
            };
        }
        let slot =
            pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &raw const pg_sys::TTSOpsMinimalTuple);
        let ptr = pg_sys::tuplestore_alloc_read_pointer(table, 0);
        pg_sys::tuplestore_select_read_pointer(table, ptr);
        pg_sys::tuplestore_rescan(table);
        Rows { table, ptr, slot }
    }

    /// The next row's primary key as jsonb, allocated in `cx`.
    unsafe fn next_key(&mut self, key: &Key, cx: pg_sys::MemoryContext) -> Option<pg_sys::Datum> {
        if self.table.is_null() {
            return None;
        }
        pg_sys::tuplestore_select_read_pointer(self.table, self.ptr);
        if !pg_sys::tuplestore_gettupleslot(self.table, true, false, self.slot) {
            return None;
        }
        Some(key.of_slot(self.slot, cx))
    }

    unsafe fn close(self) {
        if !self.table.is_null() {
            pg_sys::tuplestore_select_read_pointer(self.table, 0);
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
        }
    }
}

/// Queue rows `(relid, key, 'k', NULL)`, written BATCH at a time; each
/// batch's keys and tuples live in `cx`, reset after the batch is written.
struct Writer {
    queue: pg_sys::Relation,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    cid: pg_sys::CommandId,
    cx: pg_sys::MemoryContext,
}

impl Writer {
    unsafe fn new(queue: pg_sys::Relation) -> Writer {
        Writer {
            queue,
            slots: Vec::new(),
            used: 0,
            cid: pg_sys::GetCurrentCommandId(true),
            cx: pg_sys::AllocSetContextCreateExtended(
                pg_sys::CurrentMemoryContext,
                c"outpost capture".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            ),
        }
    }

    /// Writes the batch if fewer than `n` rows fit (keys made after this
    /// stay valid until the next call).
    unsafe fn make_room(&mut self, n: usize) {
        if self.used + n > BATCH {
            self.write();
        }
    }

    unsafe fn push(&mut self, relid: pg_sys::Oid, key: pg_sys::Datum) {
        // Slots are made as needed: a single-row statement needs one.
        if self.used == self.slots.len() {
            self.slots.push(pg_sys::MakeSingleTupleTableSlot(
                (*self.queue).rd_att,
                &raw const pg_sys::TTSOpsHeapTuple,
            ));
        }
        let mut values = [
            pg_sys::Datum::from(relid),
            key,
            pg_sys::Datum::from(KIND_KEY as i8),
            pg_sys::Datum::from(0),
        ];
        let mut nulls = [false, false, false, true];
        let old = pg_sys::MemoryContextSwitchTo(self.cx);
        let tup = pg_sys::heap_form_tuple(
            (*self.queue).rd_att,
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        pg_sys::ExecStoreHeapTuple(tup, self.slots[self.used], false);
        pg_sys::MemoryContextSwitchTo(old);
        self.used += 1;
    }

    unsafe fn write(&mut self) {
        if self.used > 0 {
            let old = pg_sys::MemoryContextSwitchTo(self.cx);
            pg_sys::heap_multi_insert(
                self.queue,
                self.slots.as_mut_ptr(),
                self.used as _,
                self.cid,
                0,
                std::ptr::null_mut(),
            );
            pg_sys::MemoryContextSwitchTo(old);
            for slot in &self.slots[..self.used] {
                pg_sys::ExecClearTuple(*slot);
            }
            self.used = 0;
        }
        pg_sys::MemoryContextReset(self.cx);
    }

    unsafe fn finish(mut self) {
        self.write();
        for slot in self.slots.drain(..) {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::MemoryContextDelete(self.cx);
    }
}

/// Opens `outpost.changes` for insertion.
unsafe fn open_queue() -> pg_sys::Relation {
    let (nsp, oid) = QUEUE.get();
    if oid != pg_sys::InvalidOid {
        let rel = pg_sys::try_relation_open(oid, pg_sys::RowExclusiveLock as _);
        if !rel.is_null() {
            if (*(*rel).rd_rel).relnamespace == nsp
                && name_is(&(*(*rel).rd_rel).relname, c"changes")
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
unsafe fn enqueue(
    queue: pg_sys::Relation,
    relid: pg_sys::Oid,
    pk: Option<pg_sys::Datum>,
    kind: u8,
) {
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

/// A primary key's columns (in key order, at most 32) and their types.
#[derive(Clone, Copy)]
struct Key {
    n: usize,
    /// Every column's type is a `direct_type`.
    direct: bool,
    cols: [i16; 32],
    types: [pg_sys::Oid; 32],
}

impl Key {
    /// The key of the row in `slot` as jsonb, allocated in `cx`.
    unsafe fn of_slot(
        &self,
        slot: *mut pg_sys::TupleTableSlot,
        cx: pg_sys::MemoryContext,
    ) -> pg_sys::Datum {
        let mut args = [pg_sys::NullableDatum::default(); 32];
        for (a, &col) in args.iter_mut().zip(&self.cols[..self.n]) {
            let mut isnull = false;
            a.value = pg_sys::slot_getattr(slot, col as _, &mut isnull);
            a.isnull = isnull;
        }
        let old = pg_sys::MemoryContextSwitchTo(cx);
        let k = if self.direct {
            direct_array(&self.types[..self.n], &args[..self.n])
        } else {
            build_array(&self.types[..self.n], &args[..self.n])
        };
        pg_sys::MemoryContextSwitchTo(old);
        k
    }
}

/// Key column types whose jsonb the capture builds itself: the same value
/// `jsonb_build_array` makes (integers become numbers, text and uuid strings)
/// without its round trip through each value's text form.
fn direct_type(t: pg_sys::Oid) -> bool {
    [
        pg_sys::INT2OID,
        pg_sys::INT4OID,
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::VARCHAROID,
        pg_sys::UUIDOID,
    ]
    .contains(&t)
}

/// `jsonb_build_array(args…)` for keys of `direct_type`s (none NULL: they
/// are primary key columns).
unsafe fn direct_array(types: &[pg_sys::Oid], args: &[pg_sys::NullableDatum]) -> pg_sys::Datum {
    let mut elems = [pg_sys::JsonbValue {
        type_: pg_sys::jbvType::jbvNull,
        val: std::mem::zeroed(),
    }; 32];
    for ((e, &t), a) in elems.iter_mut().zip(types).zip(args) {
        if a.isnull {
            e.type_ = pg_sys::jbvType::jbvNull;
            continue;
        }
        let d = a.value;
        match t {
            pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                let v = match t {
                    pg_sys::INT2OID => d.value() as i16 as i64,
                    pg_sys::INT4OID => d.value() as i32 as i64,
                    _ => d.value() as i64,
                };
                e.type_ = pg_sys::jbvType::jbvNumeric;
                e.val.numeric = pg_sys::int64_to_numeric(v);
            }
            pg_sys::UUIDOID => {
                let s: *mut std::ffi::c_char =
                    pgrx::direct_function_call_as_datum(pg_sys::uuid_out, &[Some(d)])
                        .expect("uuid_out returns a string")
                        .cast_mut_ptr();
                e.type_ = pg_sys::jbvType::jbvString;
                e.val.string.val = s;
                e.val.string.len = 36;
            }
            _ => {
                let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                e.type_ = pg_sys::jbvType::jbvString;
                e.val.string.val = pgrx::vardata_any(v).cast_mut().cast();
                e.val.string.len = pgrx::varsize_any_exhdr(v) as _;
            }
        }
    }
    let mut array = pg_sys::JsonbValue {
        type_: pg_sys::jbvType::jbvArray,
        val: std::mem::zeroed(),
    };
    array.val.array.nElems = args.len() as _;
    array.val.array.elems = elems.as_mut_ptr();
    array.val.array.rawScalar = false;
    pg_sys::Datum::from(pg_sys::JsonbValueToJsonb(&mut array))
}

/// The primary key's columns (in key order) and their types.
unsafe fn pk_columns(rel: pg_sys::Relation) -> Key {
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
    let n = (form.indnkeyatts as usize).min(32);
    let mut key = Key {
        n,
        direct: false,
        cols: [0; 32],
        types: [pg_sys::InvalidOid; 32],
    };
    key.cols[..n].copy_from_slice(form.indkey.values.as_slice(n));
    pg_sys::RelationClose(index);
    let attrs = pgrx::PgTupleDesc::from_pg_unchecked((*rel).rd_att);
    for i in 0..n {
        key.types[i] = attrs
            .get(key.cols[i] as usize - 1)
            .expect("primary key columns exist")
            .atttypid;
    }
    key.direct = key.types[..n].iter().all(|&t| direct_type(t));
    key
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
    let size =
        std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>() + std::mem::size_of_val(args);
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
    let (a, b) = (
        a.cast_mut_ptr::<pg_sys::varlena>(),
        b.cast_mut_ptr::<pg_sys::varlena>(),
    );
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
fn now_ms() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() / 1000 + PG_EPOCH_MS }
}

fn wake_due() -> bool {
    // Saturating: the clock starts at i64::MIN, and a wrapped difference
    // (release builds do not check overflow) would never be due.
    now_ms().saturating_sub(LAST_WAKE_CHECK.get()) >= WAKE_EVERY_MS
}

unsafe fn wake(queue: pg_sys::Relation) {
    if !wake_due() {
        return;
    }
    let now_ms = now_ms();
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
            &[
                Some(pg_sys::Datum::from(clock)),
                Some(pg_sys::Datum::from(now_ms)),
            ],
        );
        let channel = pg_sys::cstring_to_text(c"outpost_changes".as_ptr());
        let payload = pg_sys::cstring_to_text(c"".as_ptr());
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &[
                Some(pg_sys::Datum::from(channel)),
                Some(pg_sys::Datum::from(payload)),
            ],
        );
    }
    pg_sys::SetUserIdAndSecContext(user, sec);
}
