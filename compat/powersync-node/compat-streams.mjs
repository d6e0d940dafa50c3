// Sync Streams with PowerSync's own Node SDK (@powersync/node, unmodified)
// against outpost-relay. Run by scripts/test-compat.sh after compat-test.mjs,
// once it has deployed stream rules:
//
//   my_lists   (auto_subscribe) SELECT * FROM lists WHERE owner_id = auth.user_id()
//   list_todos SELECT * FROM todos WHERE list_id = subscription.parameter('list_id')
//              AND list_id IN (SELECT id FROM lists WHERE owner_id = auth.user_id())
//
// Checks: db.syncStream('list_todos', {list_id}).subscribe() + waitForFirstSync()
// bring exactly that list's todos (plus the auto-subscribed lists); the
// stream's status shows up; unsubscribing and subscribing another list swaps
// the rows; moving the subscribed list to another owner in Postgres (the
// subquery's table) removes its todos from the client.
//
// Environment: as compat-test.mjs (OUTPOST_ENDPOINT, OUTPOST_TOKEN,
// COMPAT_USER, COMPAT_PG, COMPAT_DIR, COMPAT_TIMEOUT_MS, COMPAT_SDK_DEBUG).
// Prints PASS/FAIL lines; exits 1 if anything failed.

import * as ps from '@powersync/node';
const { PowerSyncDatabase, Schema, Table, column, LogLevels } = ps;
import { envOf, TIMEOUT, report, psql, waitFor, withTimeout } from './harness.mjs';

const env = envOf('compat-streams');
const ENDPOINT = env('OUTPOST_ENDPOINT');
const TOKEN = env('OUTPOST_TOKEN');
const USER = env('COMPAT_USER', 'alice');
const PG = env('COMPAT_PG');
const DIR = env('COMPAT_DIR');

const { pass, fail, info } = report;
const logger = {
  log(r) {
    const line = `${r.message}${r.error ? `: ${r.error?.stack ?? r.error}` : ''}`;
    if (r.level >= LogLevels.warn || process.env.COMPAT_SDK_DEBUG === '1') console.log(`     [sdk] ${line}`);
  }
};

const pg = (sql) => psql(PG, sql);
const pgIds = async (sql) => (await pg(sql)).split('\n').filter(Boolean).sort();

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const schema = new Schema({
  lists: new Table({ owner_id: column.text, name: column.text }),
  todos: new Table({
    list_id: column.text,
    owner_id: column.text,
    description: column.text,
    completed: column.integer,
    priority: column.integer,
    created_at: column.text
  })
});

class Connector {
  async fetchCredentials() {
    return { endpoint: ENDPOINT, token: TOKEN };
  }
  async uploadData() {}
}

async function main() {
  const db = new PowerSyncDatabase({
    schema,
    database: { dbFilename: 'streams.db', dbLocation: DIR },
    logger
  });
  await db.init();
  const localTodos = async () => (await db.getAll('SELECT id FROM todos ORDER BY id')).map((r) => r.id).sort();
  const localLists = async () => (await db.getAll('SELECT id FROM lists ORDER BY id')).map((r) => r.id).sort();
  const [first, second] = await pgIds(`SELECT id FROM lists WHERE owner_id = '${USER}' ORDER BY id`);
  const todosOf = (list) => pgIds(`SELECT id FROM todos WHERE list_id = '${list}'`);
  info(`lists of ${USER}: ${first}, ${second}`);

  // Streams need the SDK's Rust sync client (the default in later versions).
  const rust = ps.SyncClientImplementation?.RUST;
  await db.connect(new Connector(), rust ? { clientImplementation: rust } : {});
  const sub = await db.syncStream('list_todos', { list_id: first }).subscribe();
  try {
    await withTimeout(sub.waitForFirstSync(), TIMEOUT, 'list_todos waitForFirstSync');
    await withTimeout(db.waitForFirstSync(), TIMEOUT, 'waitForFirstSync');
  } catch (e) {
    fail('subscribe and first sync', `${e.message}; status=${JSON.stringify(db.currentStatus.toJSON?.() ?? db.currentStatus)}`);
    return;
  }
  const want = await todosOf(first);
  const ok = await waitFor(async () => same(await localTodos(), want));
  if (ok !== null) pass('subscribed stream brings exactly its rows', `${want.length} todos of ${first}`);
  else fail('subscribed stream brings exactly its rows', `local ${JSON.stringify(await localTodos())} vs ${JSON.stringify(want)}`);
  const myLists = await pgIds(`SELECT id FROM lists WHERE owner_id = '${USER}'`);
  if (same(await localLists(), myLists)) pass('auto_subscribe stream syncs without a subscription', `${myLists.length} lists`);
  else fail('auto_subscribe stream syncs without a subscription', `local ${JSON.stringify(await localLists())} vs ${JSON.stringify(myLists)}`);
  const streams = db.currentStatus.syncStreams ?? [];
  const names = streams.map((s) => s.subscription?.name ?? s.name).filter(Boolean);
  info(`SDK stream status: ${JSON.stringify(names)}`);
  if (names.includes('list_todos')) pass('per-stream status', `the SDK reports ${names.join(', ')}`);
  else info('the SDK reports no per-stream status for list_todos (not checked further)');

  // Unsubscribe, subscribe to the other list: the rows swap.
  sub.unsubscribe();
  const sub2 = await db.syncStream('list_todos', { list_id: second }).subscribe();
  await withTimeout(sub2.waitForFirstSync(), TIMEOUT, 'second subscription').catch((e) => fail('second subscription', e.message));
  const want2 = await todosOf(second);
  const swapped = await waitFor(async () => {
    const l = await localTodos();
    return want2.every((id) => l.includes(id));
  });
  if (swapped !== null) pass('a second subscription brings its rows', `${want2.length} todos of ${second} in ${swapped} ms`);
  else fail('a second subscription brings its rows', `local ${JSON.stringify(await localTodos())}`);
  info(`after unsubscribing ${first}: local todos ${(await localTodos()).length} (the SDK keeps an unsubscribed stream's rows until its TTL expires)`);

  // Move the subscribed list away through the subquery's table.
  await pg(`UPDATE lists SET owner_id = 'nobody' WHERE id = '${second}'`);
  const gone = await waitFor(async () => {
    const l = await localTodos();
    return want2.every((id) => !l.includes(id));
  });
  if (gone !== null) pass('a list moved to another owner leaves the client', `its ${want2.length} todos gone in ${gone} ms`);
  else fail('a list moved to another owner leaves the client', `local ${JSON.stringify(await localTodos())}`);
  await pg(`UPDATE lists SET owner_id = '${USER}' WHERE id = '${second}'`);
  sub2.unsubscribe();
  await db.disconnectAndClear?.().catch(() => {});
  await db.close();
}

try {
  await main();
} catch (e) {
  fail('unexpected error', e?.stack ?? String(e));
}
console.log(report.failures ? `\n${report.failures} check(s) FAILED` : '\nall stream checks passed');
process.exit(report.failures ? 1 : 0);
