// What both compat scripts need besides the SDK: required environment,
// PASS/FAIL reporting with a failure count, psql against the scratch database,
// and waiting for a condition with a deadline.

import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

/** `env(script)` returns a getter: the variable, its default, or exit 2 naming it. */
export const envOf = (script) => (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) {
    console.error(`${script}: ${k} is required`);
    process.exit(2);
  }
  return v;
};

export const TIMEOUT = Number(process.env.COMPAT_TIMEOUT_MS ?? 20000);

/** PASS/FAIL lines; `report.failures` counts the FAILs. */
export const report = {
  failures: 0,
  pass(name, detail = '') {
    console.log(`PASS ${name}${detail ? ` — ${detail}` : ''}`);
  },
  fail(name, detail = '') {
    report.failures++;
    console.log(`FAIL ${name}${detail ? ` — ${detail}` : ''}`);
  },
  info(msg) {
    console.log(`     ${msg}`);
  }
};

/** Runs one statement with psql on the libpq connection string `conn`; trimmed text out. */
export async function psql(conn, sql) {
  const { stdout } = await execFileP('psql', [conn, '-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: { ...process.env, PGOPTIONS: '-c client_min_messages=warning' }
  });
  return stdout.trim();
}

/** Polls `probe` (async → truthy when done) until it holds; returns ms taken, or null on timeout. */
export async function waitFor(probe, timeoutMs = TIMEOUT) {
  const start = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) return null;
    await new Promise((r) => setTimeout(r, 25));
  }
}

export const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms))]);
