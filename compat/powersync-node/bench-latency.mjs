// PowerSync's own Node SDK (@powersync/node, unmodified) as the client of the
// bench's `latency-official` section (tests/src/bin/outpost-bench/latency_official.rs).
// The bench owns Postgres and the relay; this process owns the SDK and speaks
// one JSON object per line: commands on stdin, answers on stdout (diagnostics
// on stderr).
//
// Environment: OUTPOST_ENDPOINT (relay base URL), OUTPOST_TOKEN (JWT of the
// bench's user), BENCH_DIR (directory for the SDK's SQLite file), BENCH_ROWS
// (todos the first sync must bring), BENCH_FIRST_SYNC_MS (its timeout).
//
// Out, once connected: {"ready":…,"first_sync_ms":…,"versions":…,"client_id":…}
// In {"cmd":"expect","id":X} → out {"armed":X}: X is not local yet; the
//   bench then INSERTs X in Postgres. Out {"seen":X,"query_ms":…} when the
//   SDK's table-change event for todos is followed by a read that finds X
//   (query_ms: that read's own time, part of the figure).
// In {"cmd":"write","id":X,"list_id":L} → the SDK writes X locally; its
//   connector uploads it (POST /crud); out {"confirmed":X,"upload_ms":…,
//   "posted_ms":…,"confirmed_ms":…}, all from just before the local write:
//   uploadData called, /crud answered, the SDK's GET /write-checkpoint2.json
//   sent and answered ("wc_asked_ms", "wc_answered_ms"), and the server's copy applied — the
//   upload queue empty and the row's op from the relay in ps_oplog, seen at the
//   SDK's first todos change event after the upload (the checkpoint that
//   carries the write checkpoint rewrites the row).
// In {"cmd":"quit"} → closes the database and exits 0.

import { PowerSyncDatabase, Schema, Table, column, LogLevels } from '@powersync/node';
import { createInterface } from 'node:readline';
import { performance } from 'node:perf_hooks';

import { envOf, withTimeout } from './harness.mjs';

const env = envOf('bench-latency');
const ENDPOINT = env('OUTPOST_ENDPOINT');
const TOKEN = env('OUTPOST_TOKEN');
const DIR = env('BENCH_DIR');
const ROWS = Number(env('BENCH_ROWS'));
const FIRST_SYNC_MS = Number(env('BENCH_FIRST_SYNC_MS', '900000'));

const out = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const logger = {
  log(r) {
    if (r.level >= LogLevels.warn) console.error(`[sdk] ${r.message}${r.error ? `: ${r.error?.stack ?? r.error}` : ''}`);
  }
};

const todos = new Table({ list_id: column.text, title: column.text, done: column.integer, created_at: column.text });
const schema = new Schema({ todos });

// Per write id: when uploadData took it and when /crud answered.
const uploads = new Map();
class Connector {
  async fetchCredentials() {
    return { endpoint: ENDPOINT, token: TOKEN };
  }
  async uploadData(database) {
    const tx = await database.getNextCrudTransaction();
    if (!tx) return;
    const at = performance.now();
    const batch = tx.crud.map((e) => ({ op: e.op, type: e.table, id: e.id, data: e.opData }));
    const res = await fetch(`${ENDPOINT}/crud`, {
      method: 'POST',
      headers: { authorization: `Token ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ batch })
    });
    const body = await res.text();
    if (!res.ok) throw new Error(`POST /crud answered ${res.status}: ${body}`);
    const posted = performance.now();
    for (const e of tx.crud) uploads.set(e.id, { at, posted });
    await tx.complete();
  }
}

// When the SDK asks for its write checkpoint after an upload, and when the
// relay answers: the SDK's fetch is the global one, looked up at each call.
const wcRequests = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (resource, init) => {
  if (!String(resource?.url ?? resource).includes('/write-checkpoint2.json')) return realFetch(resource, init);
  const e = { at: performance.now() };
  wcRequests.push(e);
  const res = await realFetch(resource, init);
  e.done = performance.now();
  return res;
};

const db = new PowerSyncDatabase({ schema, database: { dbFilename: 'bench.db', dbLocation: DIR }, logger });
await db.init();
const t = performance.now();
// The SDK's default upload throttle (1 s between upload rounds) would make
// every write after the first wait for it; an app writing once in a while gets
// the leading edge, which is what 0 measures.
await db.connect(new Connector(), { crudUploadThrottleMs: 0 });
await withTimeout(db.waitForFirstSync(), FIRST_SYNC_MS, 'waitForFirstSync');
const firstSync = performance.now() - t;
const { n } = await db.get('SELECT count(*) AS n FROM todos');
if (n !== ROWS) {
  console.error(`bench-latency: first sync brought ${n} todos, expected ${ROWS}`);
  process.exit(1);
}
const versions = {
  node_sdk: (await import('@powersync/node/package.json', { with: { type: 'json' } })).default.version,
  core: (await db.get('SELECT powersync_rs_version() AS v')).v,
  node: process.version
};

// One pending probe at a time: the bench waits for each answer.
let expecting = null; // id awaited from Postgres
let writing = null; // {id, t0}
let checking = false;
let again = false;
async function check() {
  // Change events can overlap a running check; run again once it is done.
  if (checking) {
    again = true;
    return;
  }
  checking = true;
  try {
    do {
      again = false;
      if (expecting) {
        const q = performance.now();
        const row = await db.getOptional('SELECT id FROM todos WHERE id = ?', [expecting]);
        if (row) {
          out({ seen: expecting, query_ms: performance.now() - q });
          expecting = null;
        }
      }
      if (writing && uploads.has(writing.id)) {
        const r = await db.get(
          "SELECT (SELECT count(*) FROM ps_crud) AS pending, (SELECT count(*) FROM ps_oplog WHERE row_type = 'todos' AND row_id = ?) AS server",
          [writing.id]
        );
        if (r.pending === 0 && r.server > 0) {
          const now = performance.now();
          const u = uploads.get(writing.id);
          const wc = wcRequests.filter((e) => e.at >= u.posted && e.done).at(-1);
          out({
            confirmed: writing.id,
            upload_ms: u.at - writing.t0,
            posted_ms: u.posted - writing.t0,
            wc_asked_ms: wc ? wc.at - writing.t0 : null,
            wc_answered_ms: wc ? wc.done - writing.t0 : null,
            confirmed_ms: now - writing.t0
          });
          wcRequests.length = 0;
          uploads.delete(writing.id);
          writing = null;
        }
      }
    } while (again);
  } finally {
    checking = false;
  }
}
db.onChange({ onChange: () => check().catch(fatal) }, { tables: ['todos'], throttleMs: 0 });

function fatal(e) {
  console.error(`bench-latency: ${e?.stack ?? e}`);
  process.exit(1);
}

const clientId = (await db.get('SELECT powersync_client_id() AS id')).id;
out({ ready: true, first_sync_ms: firstSync, rows: n, versions, client_id: clientId });

for await (const line of createInterface({ input: process.stdin })) {
  const c = JSON.parse(line);
  if (c.cmd === 'expect') {
    if (await db.getOptional('SELECT id FROM todos WHERE id = ?', [c.id])) fatal(`${c.id} is local before its INSERT`);
    expecting = c.id;
    out({ armed: c.id });
  } else if (c.cmd === 'write') {
    writing = { id: c.id, t0: performance.now() };
    await db.execute('INSERT INTO todos(id, list_id, title, done) VALUES (?, ?, ?, 0)', [c.id, c.list_id, 'official client write']);
  } else if (c.cmd === 'quit') {
    break;
  }
}
await db.close();
process.exit(0);
