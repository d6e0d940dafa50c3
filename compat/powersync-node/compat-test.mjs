// PowerSync's own Node SDK (@powersync/node, unmodified) against outpost-relay.
//
// Run by scripts/test-compat.sh, which prepares the database, the rules and the
// relay. Environment:
//   OUTPOST_ENDPOINT   relay base URL (http://127.0.0.1:PORT)
//   OUTPOST_TOKEN      a JWT for COMPAT_USER
//   COMPAT_USER        the JWT sub (alice)
//   COMPAT_PG          libpq connection string of the scratch database (psql is used)
//   COMPAT_DIR         a directory for the local SQLite file
//   OUTPOST_WRITE_ROLE set when the relay accepts POST /crud: then local writes are
//                      uploaded and checked in Postgres; unset: uploadData is a no-op
//   COMPAT_TRACE=1     put a logging HTTP proxy between the SDK and the relay and
//                      print every request (method, path, headers) and response
//                      status and content type
//   COMPAT_TIMEOUT_MS  per-wait timeout (default 20000)
//   COMPAT_RELAY_BIN + OUTPOST_JWT_SECRET  when both are set, the token checks
//                      run: the connector hands out tokens living COMPAT_WARN_TTL
//                      (25) and then COMPAT_SHORT_TTL (5) seconds, minted with
//                      `outpost-relay token`, and sync must go on past expiry
//
// Prints PASS/FAIL lines; exits 1 if anything failed.

import { PowerSyncDatabase, Schema, Table, column, LogLevels } from '@powersync/node';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import http from 'node:http';
import { randomUUID } from 'node:crypto';

import { envOf, TIMEOUT, report, psql, waitFor, withTimeout } from './harness.mjs';

const execFileP = promisify(execFile);
const env = envOf('compat-test');
const RELAY = env('OUTPOST_ENDPOINT');
const TOKEN = env('OUTPOST_TOKEN');
const USER = env('COMPAT_USER', 'alice');
const PG = env('COMPAT_PG');
const DIR = env('COMPAT_DIR');
const WRITES = !!process.env.OUTPOST_WRITE_ROLE;
const TRACE = process.env.COMPAT_TRACE === '1';

// ------------------------------------------------------------- reporting --
const t0 = Date.now();
const stamp = () => `${((Date.now() - t0) / 1000).toFixed(2)}s`;
const { pass, fail, info } = report;

// SDK log lines at warn and above are kept and printed; they are evidence.
const sdkProblems = [];
const logger = {
  log(r) {
    const line = `${r.message}${r.error ? `: ${r.error?.stack ?? r.error}` : ''}`;
    if (r.level >= LogLevels.warn) {
      sdkProblems.push(line);
      console.log(`     [sdk ${r.level >= LogLevels.error ? 'error' : 'warn'} ${stamp()}] ${line}`);
    } else if (process.env.COMPAT_SDK_DEBUG === '1') {
      console.log(`     [sdk ${stamp()}] ${line}`);
    }
  }
};

// ----------------------------------------------------------------- helpers --
const pg = (sql) => psql(PG, sql);
const pgJson = async (sql) => JSON.parse((await pg(`SELECT coalesce(json_agg(q), '[]') FROM (${sql}) q`)) || '[]');

const diff = (a, b) => {
  const sa = new Map(a.map((r) => [r.id, JSON.stringify(r)]));
  const sb = new Map(b.map((r) => [r.id, JSON.stringify(r)]));
  const out = [];
  for (const [id, v] of sa) if (!sb.has(id)) out.push(`only in Postgres: ${v}`);
  else if (sb.get(id) !== v) out.push(`differs: postgres ${v} vs local ${sb.get(id)}`);
  for (const [id, v] of sb) if (!sa.has(id)) out.push(`only local: ${v}`);
  return out;
};

// ------------------------------------------------- optional tracing proxy --
let endpoint = RELAY;
let proxy;
if (TRACE) {
  const target = new URL(RELAY);
  proxy = http.createServer((req, res) => {
    const hdrs = Object.entries(req.headers)
      .filter(([k]) => !['host', 'connection', 'content-length'].includes(k))
      .map(([k, v]) => `${k}: ${k === 'authorization' ? String(v).split(' ')[0] + ' <jwt>' : v}`)
      .join('; ');
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      console.log(`     [trace ${stamp()}] → ${req.method} ${req.url} {${hdrs}}${body.length ? ` body=${body.toString().slice(0, 400)}` : ''}`);
      const up = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
        (ur) => {
          console.log(`     [trace ${stamp()}] ← ${ur.statusCode} ${req.method} ${req.url} content-type=${ur.headers['content-type']} content-encoding=${ur.headers['content-encoding'] ?? '-'}`);
          res.writeHead(ur.statusCode, ur.headers);
          let first = true;
          ur.on('data', (c) => {
            if (first && req.url.startsWith('/sync/stream')) {
              console.log(`     [trace ${stamp()}] ← first bytes: ${c.toString().slice(0, 300).replace(/\n/g, '⏎')}`);
              first = false;
            } else if (!req.url.startsWith('/sync/stream')) {
              console.log(`     [trace ${stamp()}] ← body: ${c.toString().slice(0, 300)}`);
            }
            res.write(c);
          });
          ur.on('end', () => res.end());
        }
      );
      up.on('error', (e) => {
        res.destroy(e);
      });
      res.on('close', () => up.destroy());
      up.end(body);
    });
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${proxy.address().port}`;
  info(`tracing proxy ${endpoint} → ${RELAY}`);
}

// ------------------------------------------------------- schema, connector --
const lists = new Table({ owner_id: column.text, name: column.text });
const todos = new Table(
  {
    list_id: column.text,
    owner_id: column.text,
    description: column.text,
    completed: column.integer,
    priority: column.integer,
    created_at: column.text
  },
  { indexes: { list: ['list_id'] } }
);
const schema = new Schema({ lists, todos });

const RELAY_BIN = process.env.COMPAT_RELAY_BIN;
const SECRET = process.env.OUTPOST_JWT_SECRET;
const SHORT_TTL = Number(process.env.COMPAT_SHORT_TTL ?? 5);
const SHORT_TTL_WARN = Number(process.env.COMPAT_WARN_TTL ?? 25);
let shortTtl = 0; // phase 5: when set, mint tokens living this long on every fetchCredentials
const credentialFetches = []; // {at, exp}
async function mintToken(ttl) {
  const { stdout } = await execFileP(RELAY_BIN, ['token', '--sub', USER, '--ttl', String(ttl)], {
    env: { ...process.env, OUTPOST_JWT_SECRET: SECRET }
  });
  return stdout.trim();
}
const jwtExp = (tok) => JSON.parse(Buffer.from(tok.split('.')[1], 'base64url').toString()).exp;

const uploads = []; // {status, body, n}
const rejected = []; // entries the relay refused with a 4xx (discarded, as PowerSync's docs recommend)
class Connector {
  async fetchCredentials() {
    const token = shortTtl ? await mintToken(shortTtl) : TOKEN;
    credentialFetches.push({ at: Date.now(), exp: jwtExp(token) });
    this.token = token;
    return { endpoint, token };
  }
  async uploadData(database) {
    const tx = await database.getNextCrudTransaction();
    if (!tx) return;
    if (!WRITES) return; // relay has no POST /crud; leave the queue as is
    const batch = tx.crud.map((e) => ({ op: e.op, type: e.table, id: e.id, data: e.opData }));
    const res = await fetch(`${endpoint}/crud`, {
      method: 'POST',
      headers: { authorization: `Token ${this.token ?? TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ batch })
    });
    const body = await res.text();
    uploads.push({ status: res.status, body, n: batch.length });
    if (res.ok) {
      await tx.complete();
    } else if (res.status >= 400 && res.status < 500) {
      // A refused write cannot succeed by retrying; drop it so the queue moves on.
      rejected.push({ status: res.status, body, batch });
      await tx.complete();
    } else {
      throw new Error(`POST /crud answered ${res.status}: ${body}`);
    }
  }
}

// ------------------------------------------------------------------ queries --
const pgLists = () => pgJson(`SELECT id::text AS id, owner_id, name FROM lists WHERE owner_id = '${USER}' ORDER BY id`);
const pgTodos = () =>
  pgJson(`SELECT t.id::text AS id, t.list_id::text AS list_id, t.owner_id, t.description, t.completed::int AS completed, t.priority
            FROM todos t JOIN lists l ON l.id = t.list_id WHERE l.owner_id = '${USER}' ORDER BY t.id`);
let db;
const localLists = () => db.getAll('SELECT id, owner_id, name FROM lists ORDER BY id');
const localTodos = () =>
  db.getAll('SELECT id, list_id, owner_id, description, completed, priority FROM todos ORDER BY id');

async function compareAll(label) {
  const [pl, pt, ll, lt] = await Promise.all([pgLists(), pgTodos(), localLists(), localTodos()]);
  const d = [...diff(pl, ll), ...diff(pt, lt)];
  if (d.length === 0) pass(label, `lists ${ll.length}/${pl.length}, todos ${lt.length}/${pt.length} (local/Postgres), all columns equal`);
  else fail(label, `lists ${ll.length} local vs ${pl.length} Postgres, todos ${lt.length} vs ${pt.length}; ${d.slice(0, 5).join('; ')}`);
  return d.length === 0;
}

const localRow = async (table, id) => (await db.getAll(`SELECT * FROM ${table} WHERE id = ?`, [id]))[0];
const pgRow = async (table, id) => (await pgJson(`SELECT * FROM ${table} WHERE id = '${id}'`))[0];

// --------------------------------------------------------------------- run --
async function main() {
  db = new PowerSyncDatabase({
    schema,
    database: { dbFilename: 'compat.db', dbLocation: DIR },
    logger
  });
  await db.init();
  const coreVersion = (await db.get('SELECT powersync_rs_version() AS v')).v;
  info(`@powersync/node ${(await import('@powersync/node/package.json', { with: { type: 'json' } })).default.version}, core ${coreVersion}, endpoint ${endpoint}, user ${USER}, writes ${WRITES ? 'on' : 'off'}`);

  // 1. first full sync
  const connector = new Connector();
  let t = Date.now();
  await db.connect(connector);
  try {
    await withTimeout(db.waitForFirstSync(), TIMEOUT, 'waitForFirstSync');
    const s = db.currentStatus;
    pass('first sync', `hasSynced=${s.hasSynced} connected=${s.connected} in ${Date.now() - t} ms`);
  } catch (e) {
    const s = db.currentStatus;
    fail('first sync', `${e.message}; status=${JSON.stringify(s.toJSON?.() ?? s)}`);
    return;
  }
  const buckets = await db.getAll('SELECT name, last_op, count_at_last FROM ps_buckets ORDER BY name');
  info(`local buckets: ${buckets.map((b) => `${b.name}@${b.last_op}`).join(', ')}`);
  const bobRows = await db.getAll("SELECT id FROM lists WHERE owner_id <> ? UNION ALL SELECT id FROM todos WHERE owner_id <> ? AND list_id NOT IN (SELECT id FROM lists)", [USER, USER]);
  if (bobRows.length === 0) pass('only own rows', `no rows of other users locally`);
  else fail('only own rows', `${bobRows.length} rows not belonging to ${USER}`);
  await compareAll('initial data matches Postgres');

  // 2. a change in Postgres arrives while connected (insert, update, delete)
  const list1 = (await pgLists())[0].id;
  const newId = randomUUID();
  t = Date.now();
  await pg(`INSERT INTO todos(id, list_id, owner_id, description, completed, priority) VALUES ('${newId}', '${list1}', '${USER}', 'from postgres', true, 7)`);
  let ms = await waitFor(async () => (await localRow('todos', newId))?.description === 'from postgres');
  if (ms !== null) pass('Postgres INSERT reaches the SDK', `${Date.now() - t} ms after the insert committed`);
  else fail('Postgres INSERT reaches the SDK', `row ${newId} not local after ${TIMEOUT} ms; status=${JSON.stringify(db.currentStatus.toJSON?.())}`);

  t = Date.now();
  await pg(`UPDATE todos SET description = 'updated in postgres', completed = false WHERE id = '${newId}'`);
  ms = await waitFor(async () => {
    const r = await localRow('todos', newId);
    return r?.description === 'updated in postgres' && r?.completed === 0;
  });
  if (ms !== null) pass('Postgres UPDATE reaches the SDK', `${Date.now() - t} ms`);
  else fail('Postgres UPDATE reaches the SDK', `local row: ${JSON.stringify(await localRow('todos', newId))}`);

  t = Date.now();
  await pg(`DELETE FROM todos WHERE id = '${newId}'`);
  ms = await waitFor(async () => !(await localRow('todos', newId)));
  if (ms !== null) pass('Postgres DELETE reaches the SDK', `${Date.now() - t} ms`);
  else fail('Postgres DELETE reaches the SDK', `row ${newId} still local`);

  // A new list → a new bucket (parameter query result changes) with its todo.
  const newList = randomUUID();
  const newListTodo = randomUUID();
  t = Date.now();
  await pg(`BEGIN; INSERT INTO lists(id, owner_id, name) VALUES ('${newList}', '${USER}', 'new list');
            INSERT INTO todos(id, list_id, owner_id, description) VALUES ('${newListTodo}', '${newList}', '${USER}', 'in new list'); COMMIT;`);
  ms = await waitFor(async () => (await localRow('lists', newList)) && (await localRow('todos', newListTodo)));
  if (ms !== null) pass('new bucket (new list) reaches the SDK', `${Date.now() - t} ms`);
  else fail('new bucket (new list) reaches the SDK', `list local: ${!!(await localRow('lists', newList))}, todo local: ${!!(await localRow('todos', newListTodo))}`);

  // 3. local writes through uploadData → POST /crud → Postgres → back
  if (WRITES) {
    const wId = randomUUID();
    t = Date.now();
    await db.execute('INSERT INTO todos(id, list_id, owner_id, description, completed, priority) VALUES (?, ?, ?, ?, ?, ?)', [wId, list1, USER, 'written by the SDK', 0, 3]);
    ms = await waitFor(async () => (await pgRow('todos', wId))?.description === 'written by the SDK');
    if (ms !== null) pass('SDK INSERT lands in Postgres', `${Date.now() - t} ms (uploads so far: ${uploads.map((u) => u.status).join(',')})`);
    else fail('SDK INSERT lands in Postgres', `not in Postgres after ${TIMEOUT} ms; uploads: ${JSON.stringify(uploads)}`);

    t = Date.now();
    await db.execute('UPDATE todos SET completed = 1, description = ? WHERE id = ?', ['patched by the SDK', wId]);
    ms = await waitFor(async () => {
      const r = await pgRow('todos', wId);
      return r?.completed === true && r?.description === 'patched by the SDK';
    });
    if (ms !== null) pass('SDK UPDATE (PATCH) lands in Postgres', `${Date.now() - t} ms`);
    else fail('SDK UPDATE (PATCH) lands in Postgres', `Postgres row: ${JSON.stringify(await pgRow('todos', wId))}; uploads: ${JSON.stringify(uploads.slice(-2))}`);

    // The write checkpoint: with the upload done, the SDK must apply checkpoints again
    // (it holds them back until the server's checkpoint carries its write checkpoint).
    ms = await waitFor(async () => (await db.getUploadQueueStats()).count === 0);
    if (ms === null) fail('upload queue drains', `count=${(await db.getUploadQueueStats()).count}`);
    t = Date.now();
    await pg(`UPDATE todos SET description = 'server edit after upload' WHERE id = '${wId}'`);
    ms = await waitFor(async () => (await localRow('todos', wId))?.description === 'server edit after upload');
    if (ms !== null) pass('server change after an upload is applied (write checkpoint honoured)', `${Date.now() - t} ms`);
    else fail('server change after an upload is applied (write checkpoint honoured)', `local row: ${JSON.stringify(await localRow('todos', wId))}; status=${JSON.stringify(db.currentStatus.toJSON?.())}`);

    t = Date.now();
    await db.execute('DELETE FROM todos WHERE id = ?', [wId]);
    ms = await waitFor(async () => !(await pgRow('todos', wId)));
    if (ms !== null) pass('SDK DELETE lands in Postgres', `${Date.now() - t} ms`);
    else fail('SDK DELETE lands in Postgres', `row ${wId} still in Postgres`);

    // A write RLS refuses: the relay answers 403, the connector discards it, and the
    // next checkpoint reverts the optimistic local row (server-authoritative).
    const badId = randomUUID();
    const otherList = (await pgJson(`SELECT id::text AS id FROM lists WHERE owner_id <> '${USER}' LIMIT 1`))[0]?.id;
    const before = rejected.length;
    await db.execute('INSERT INTO todos(id, list_id, owner_id, description) VALUES (?, ?, ?, ?)', [badId, otherList, 'bob', 'forged']);
    ms = await waitFor(async () => rejected.length > before);
    const rej = rejected[rejected.length - 1];
    if (ms !== null && rej.status === 403 && !(await pgRow('todos', badId))) pass('forbidden write refused', `POST /crud → ${rej.status} ${rej.body.slice(0, 160)}`);
    else fail('forbidden write refused', `rejected=${JSON.stringify(rej)}; in Postgres: ${!!(await pgRow('todos', badId))}`);
    ms = await waitFor(async () => !(await localRow('todos', badId)));
    if (ms !== null) pass('refused local row is reverted by the next checkpoint', `${ms} ms after the rejection`);
    else fail('refused local row is reverted by the next checkpoint', `row ${badId} still local`);
  } else {
    info('writes off (OUTPOST_WRITE_ROLE unset): skipping upload checks');
  }

  await compareAll('data matches Postgres after live changes');

  // 4. reconnect: incremental sync resumes from the stored positions (buckets[].after)
  await db.disconnect();
  const offId = randomUUID();
  await pg(`INSERT INTO todos(id, list_id, owner_id, description) VALUES ('${offId}', '${list1}', '${USER}', 'while disconnected')`);
  t = Date.now();
  await db.connect(connector);
  ms = await waitFor(async () => !!(await localRow('todos', offId)));
  if (ms !== null) pass('reconnect resumes incrementally', `row written while offline arrived ${Date.now() - t} ms after connect`);
  else fail('reconnect resumes incrementally', `row ${offId} not local; status=${JSON.stringify(db.currentStatus.toJSON?.())}`);
  await compareAll('data matches Postgres after reconnect');

  // 5. token lifetime. The relay, like PowerSync's service, sends
  // {"token_expires_in":20} 20 s before expiry (if the stream opened earlier than
  // that) and {"token_expires_in":0} at expiry, then ends the stream.
  //  a) a 25 s token: the warning makes the SDK prefetch credentials and reopen the
  //     stream at once (no visible disconnect);
  //  b) a 5 s token: no warning (under 20 s left at open); at expiry the SDK
  //     fetches credentials and reconnects after its retry delay (5 s default).
  if (RELAY_BIN && SECRET) {
    const disconnects = [];
    const unlisten = db.registerListener({
      statusChanged: (st) => {
        if (!st.connected && !st.connecting) disconnects.push(Date.now());
      }
    });
    for (const [label, ttl] of [
      ['token refresh before expiry (warning at 20 s)', SHORT_TTL_WARN],
      ['token expiry (token_expires_in 0, stream ends)', SHORT_TTL]
    ]) {
      await db.disconnect();
      shortTtl = ttl;
      const fetchesBefore = credentialFetches.length;
      await db.connect(connector);
      await withTimeout(db.waitForStatus((st) => st.connected), TIMEOUT, 'connected with a short-lived token');
      const base = credentialFetches[fetchesBefore];
      const disconnectsBefore = disconnects.length;
      info(`${label}: connected with a token expiring in ${base.exp - Math.floor(Date.now() / 1000)} s; waiting past its expiry`);
      let ms = await waitFor(
        async () => Date.now() / 1000 > base.exp + 1 && credentialFetches.length > fetchesBefore + 1 && db.currentStatus.connected,
        (ttl + 20) * 1000
      );
      const fetched = credentialFetches.slice(fetchesBefore).map((f) => `+${((f.at - base.at) / 1000).toFixed(1)}s`);
      const gaps = disconnects.slice(disconnectsBefore).map((d) => `+${((d - base.at) / 1000).toFixed(1)}s`);
      if (ms === null) {
        fail(label, `fetchCredentials at ${fetched.join(', ')}; connected=${db.currentStatus.connected}`);
        continue;
      }
      const expId = randomUUID();
      const t = Date.now();
      await pg(`INSERT INTO todos(id, list_id, owner_id, description) VALUES ('${expId}', '${list1}', '${USER}', 'after token expiry')`);
      ms = await waitFor(async () => !!(await localRow('todos', expId)));
      const detail = `token TTL ${ttl} s; fetchCredentials at ${fetched.join(', ')}; SyncStatus disconnected at ${gaps.length ? gaps.join(', ') : 'never'}`;
      if (ms !== null) pass(label, `${detail}; a row written after the first token expired arrived in ${Date.now() - t} ms`);
      else fail(label, `${detail}; row written after expiry not local; status=${JSON.stringify(db.currentStatus.toJSON?.())}`);
    }
    shortTtl = 0;
    unlisten();
  }

  const s = db.currentStatus;
  const errs = [s.dataFlowStatus?.downloadError, s.dataFlowStatus?.uploadError].filter(Boolean);
  if (errs.length === 0) pass('no download/upload errors in SyncStatus', `lastSyncedAt=${s.lastSyncedAt?.toISOString?.()}`);
  else fail('no download/upload errors in SyncStatus', errs.map((e) => e.message ?? String(e)).join('; '));
  if (sdkProblems.length) info(`SDK logged ${sdkProblems.length} warning/error line(s) (above)`);
}

try {
  await main();
} catch (e) {
  fail('unexpected error', e?.stack ?? String(e));
} finally {
  try {
    await db?.close();
  } catch {}
  proxy?.close();
  console.log(report.failures === 0 ? `compat: all checks passed (${stamp()})` : `compat: ${report.failures} check(s) FAILED (${stamp()})`);
  process.exit(report.failures === 0 ? 0 : 1);
}
