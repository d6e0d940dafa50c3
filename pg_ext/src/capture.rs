//! Capture: the trigger function that queues `(table, key)` for every row a
//! writer changes in a synced table, on the writer's path.
//!
//! Statement-level AFTER triggers with transition tables call it (rules/src/
//! tick_sql.rs installs them). It reads the primary keys of the changed rows
//! from the transition tables and appends them to `outpost.changes` with
//! multi-row heap inserts, many keys per queue row (kind `b`, a jsonb array
//! of keys that the tick unnests; see `Writer`). What it replaced and why (measured, Postgres 18,
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
//! keys with it): integer, text and uuid keys directly (batched), others by
//! calling that function by OID (a queue row per key); it writes with `heap_multi_insert`, which checks no
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
const KIND_BATCH: u8 = b'b';
const KIND_TRUNCATE: u8 = b't';

/// Writers wake the ticker at most once per this many milliseconds.
const WAKE_EVERY_MS: i64 = 5;

/// Milliseconds between the Unix epoch and Postgres' (2000-01-01).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// Queue rows per `heap_multi_insert` call.
const ROWS_PER_INSERT: usize = 64;

/// A batch row's jsonb is closed at about this many bytes: the tuple stays
/// under the 2 kB at which the heap would try to compress it or move it to
/// the TOAST table (a key longer than that gets a row of its own, as before).
const BATCH_BYTES: usize = 1800;

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
        let mut w = Writer::new(queue, relid, key.n);
        let (first, second) = match op {
            pg_sys::TRIGGER_EVENT_INSERT => (td.tg_newtable, std::ptr::null_mut()),
            pg_sys::TRIGGER_EVENT_DELETE => (td.tg_oldtable, std::ptr::null_mut()),
            // Old and new rows come in pairs; an unchanged key is queued once.
            _ => (td.tg_newtable, td.tg_oldtable),
        };
        let mut a = Rows::open(rel, first);
        let mut b = Rows::open(rel, second);
        loop {
            w.make_room();
            let (ha, hb) = (a.next(), b.next());
            if !ha && !hb {
                break;
            }
            let (va, vb) = (key.values(a.slot, ha), key.values(b.slot, hb));
            let unchanged = ha && hb && key.same(&va, &vb);
            if ha {
                w.push(&key, &va);
            }
            if hb && !unchanged {
                w.push(&key, &vb);
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

    /// Moves to the next row (in `slot`); false at the end.
    unsafe fn next(&mut self) -> bool {
        if self.table.is_null() {
            return false;
        }
        pg_sys::tuplestore_select_read_pointer(self.table, self.ptr);
        pg_sys::tuplestore_gettupleslot(self.table, true, false, self.slot)
    }

    unsafe fn close(self) {
        if !self.table.is_null() {
            pg_sys::tuplestore_select_read_pointer(self.table, 0);
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
        }
    }
}

/// A row's key column values, in key order.
type Values = [pg_sys::NullableDatum; 32];

/// Queue rows, written ROWS_PER_INSERT at a time. Keys whose jsonb the
/// capture builds itself (`Key::direct`) are gathered into batch rows
/// `(relid, [key, key, …], 'b', NULL)` of up to BATCH_BYTES, the tick unnests
/// them (a batch of one is written as a key row); other keys get a row
/// `(relid, key, 'k', NULL)` each. One tuple header, line pointer and WAL
/// share per batch instead of per key, and one jsonb to build.
/// The rows' tuples (and the numerics of batched keys) live in `cx`, reset
/// after each multi-row insert.
struct Writer {
    queue: pg_sys::Relation,
    relid: pg_sys::Oid,
    slots: Vec<*mut pg_sys::TupleTableSlot>,
    used: usize,
    cid: pg_sys::CommandId,
    cx: pg_sys::MemoryContext,
    /// The open batch: its keys' elements (`ncols` per key; a string's
    /// `val` holds its offset in `text` until the batch is closed), the
    /// string bytes (copied: the transition table's tuple may be gone by
    /// then) and its estimated jsonb size.
    ncols: usize,
    elems: Vec<pg_sys::JsonbValue>,
    text: Vec<u8>,
    bytes: usize,
    keys: Vec<pg_sys::JsonbValue>,
}

impl Writer {
    unsafe fn new(queue: pg_sys::Relation, relid: pg_sys::Oid, ncols: usize) -> Writer {
        Writer {
            queue,
            relid,
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
            ncols,
            elems: Vec::new(),
            text: Vec::new(),
            bytes: 0,
            keys: Vec::new(),
        }
    }

    /// Writes the rows so far if the next two keys might not fit (a key
    /// closes at most one batch row, and the open batch needs one more).
    unsafe fn make_room(&mut self) {
        if self.used + 3 > ROWS_PER_INSERT {
            self.close_batch();
            self.write();
        }
    }

    /// Queues one key (values of `key`'s columns).
    unsafe fn push(&mut self, key: &Key, values: &Values) {
        if !key.direct {
            let old = pg_sys::MemoryContextSwitchTo(self.cx);
            let k = build_array(&key.types[..key.n], &values[..key.n]);
            pg_sys::MemoryContextSwitchTo(old);
            self.add_row(k, KIND_KEY);
            return;
        }
        // The key's elements and jsonb size first; its strings still point
        // into the row (valid until the next row is read) and are copied
        // into `text` once it is known which batch the key goes to.
        let mut elems = [pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvNull,
            val: std::mem::zeroed(),
        }; 32];
        let mut strings: [Option<Str>; 32] = [None; 32];
        let mut size = 8;
        for (((&t, a), e), st) in key.types[..key.n]
            .iter()
            .zip(&values[..key.n])
            .zip(&mut elems)
            .zip(&mut strings)
        {
            size += 4;
            if a.isnull {
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
                    let old = pg_sys::MemoryContextSwitchTo(self.cx);
                    e.val.numeric = pg_sys::int64_to_numeric(v);
                    pg_sys::MemoryContextSwitchTo(old);
                    e.type_ = pg_sys::jbvType::jbvNumeric;
                    size += 3 + pgrx::varsize_any(e.val.numeric.cast());
                }
                pg_sys::UUIDOID => {
                    *st = Some(Str::Uuid(d.cast_mut_ptr::<[u8; 16]>()));
                    size += 36;
                }
                _ => {
                    let old = pg_sys::MemoryContextSwitchTo(self.cx);
                    let v = pg_sys::pg_detoast_datum_packed(d.cast_mut_ptr());
                    pg_sys::MemoryContextSwitchTo(old);
                    let len = pgrx::varsize_any_exhdr(v);
                    *st = Some(Str::Text(pgrx::vardata_any(v).cast::<u8>(), len));
                    size += len;
                }
            }
        }
        if self.bytes > 0 && self.bytes + size > BATCH_BYTES {
            self.close_batch();
        }
        for (mut e, st) in elems.into_iter().zip(strings).take(key.n) {
            if let Some(st) = st {
                // An offset into `text` until the batch is closed (`text`
                // may move as it grows).
                let start = self.text.len();
                match st {
                    Str::Uuid(u) => uuid_text(&*u, &mut self.text),
                    Str::Text(p, len) => self
                        .text
                        .extend_from_slice(std::slice::from_raw_parts(p, len)),
                }
                e.type_ = pg_sys::jbvType::jbvString;
                e.val.string.val = start as *mut std::ffi::c_char;
                e.val.string.len = (self.text.len() - start) as _;
            }
            self.elems.push(e);
        }
        self.bytes += size;
    }

    /// Turns the open batch into a queue row.
    unsafe fn close_batch(&mut self) {
        let n = self.ncols;
        if self.elems.is_empty() || n == 0 {
            return;
        }
        let base = self.text.as_mut_ptr().cast::<std::ffi::c_char>();
        for e in &mut self.elems {
            if e.type_ == pg_sys::jbvType::jbvString {
                e.val.string.val = base.add(e.val.string.val as usize);
            }
        }
        self.keys.clear();
        for k in self.elems.chunks_exact_mut(n) {
            let mut a = pg_sys::JsonbValue {
                type_: pg_sys::jbvType::jbvArray,
                val: std::mem::zeroed(),
            };
            a.val.array.nElems = n as _;
            a.val.array.elems = k.as_mut_ptr();
            a.val.array.rawScalar = false;
            self.keys.push(a);
        }
        let old = pg_sys::MemoryContextSwitchTo(self.cx);
        let (jsonb, kind) = if self.keys.len() == 1 {
            (pg_sys::JsonbValueToJsonb(&mut self.keys[0]), KIND_KEY)
        } else {
            let mut all = pg_sys::JsonbValue {
                type_: pg_sys::jbvType::jbvArray,
                val: std::mem::zeroed(),
            };
            all.val.array.nElems = self.keys.len() as _;
            all.val.array.elems = self.keys.as_mut_ptr();
            all.val.array.rawScalar = false;
            (pg_sys::JsonbValueToJsonb(&mut all), KIND_BATCH)
        };
        pg_sys::MemoryContextSwitchTo(old);
        self.elems.clear();
        self.text.clear();
        self.bytes = 0;
        self.add_row(pg_sys::Datum::from(jsonb), kind);
    }

    unsafe fn add_row(&mut self, pk: pg_sys::Datum, kind: u8) {
        // Slots are made as needed: a single-row statement needs one.
        if self.used == self.slots.len() {
            self.slots.push(pg_sys::MakeSingleTupleTableSlot(
                (*self.queue).rd_att,
                &raw const pg_sys::TTSOpsHeapTuple,
            ));
        }
        let mut values = [
            pg_sys::Datum::from(self.relid),
            pk,
            pg_sys::Datum::from(kind as i8),
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

    /// Inserts the rows so far; the open batch must be empty (its numerics
    /// live in `cx`).
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
        self.close_batch();
        self.write();
        for slot in self.slots.drain(..) {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::MemoryContextDelete(self.cx);
    }
}

/// A key column's string before it is copied into a batch: a uuid (written
/// as text then) or a text value's bytes.
#[derive(Clone, Copy)]
enum Str {
    Uuid(*const [u8; 16]),
    Text(*const u8, usize),
}

/// A uuid's text form (as `uuid_out` writes it), appended to `out`.
fn uuid_text(u: &[u8; 16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push(b'-');
        }
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
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
    /// The highest attribute number among the columns.
    max_col: i16,
    cols: [i16; 32],
    types: [pg_sys::Oid; 32],
}

impl Key {
    /// The key column values of the row in `slot` (`has` false: none).
    unsafe fn values(&self, slot: *mut pg_sys::TupleTableSlot, has: bool) -> Values {
        let mut out = [pg_sys::NullableDatum::default(); 32];
        if !has {
            return out;
        }
        // Deformed once up to the last key column; then read in place.
        if (*slot).tts_nvalid < self.max_col {
            pg_sys::slot_getsomeattrs_int(slot, self.max_col as _);
        }
        for (a, &col) in out.iter_mut().zip(&self.cols[..self.n]) {
            let i = col as usize - 1;
            a.value = *(*slot).tts_values.add(i);
            a.isnull = *(*slot).tts_isnull.add(i);
        }
        out
    }

    /// Whether two rows have the same key, for keys of `direct` types
    /// (false for others: a key queued twice costs only queue space, the
    /// tick reads each key once).
    unsafe fn same(&self, a: &Values, b: &Values) -> bool {
        if !self.direct {
            return false;
        }
        for ((&t, x), y) in self.types[..self.n].iter().zip(a).zip(b) {
            if x.isnull || y.isnull {
                return false;
            }
            let equal = match t {
                pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => {
                    x.value.value() == y.value.value()
                }
                pg_sys::UUIDOID => {
                    *x.value.cast_mut_ptr::<[u8; 16]>() == *y.value.cast_mut_ptr::<[u8; 16]>()
                }
                _ => {
                    // Compressed values are expanded (rare for keys: the
                    // copies live until the statement ends).
                    let plain = |d: pg_sys::Datum| {
                        let v = d.cast_mut_ptr::<pg_sys::varlena>();
                        if plain_varlena(v) {
                            v
                        } else {
                            pg_sys::pg_detoast_datum_packed(v)
                        }
                    };
                    let (p, q) = (plain(x.value), plain(y.value));
                    let (lp, lq) = (pgrx::varsize_any_exhdr(p), pgrx::varsize_any_exhdr(q));
                    lp == lq
                        && std::slice::from_raw_parts(pgrx::vardata_any(p).cast::<u8>(), lp)
                            == std::slice::from_raw_parts(pgrx::vardata_any(q).cast::<u8>(), lq)
                }
            };
            if !equal {
                return false;
            }
        }
        true
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
        max_col: 0,
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
    key.max_col = key.cols[..n].iter().copied().max().unwrap_or(0);
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

/// A varlena neither compressed nor out of line (its bytes are the value).
unsafe fn plain_varlena(p: *const pg_sys::varlena) -> bool {
    pgrx::varatt_is_4b_u(p) || pgrx::varatt_is_1b(p) && !pgrx::varatt_is_1b_e(p)
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
