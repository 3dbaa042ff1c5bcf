// The directory backend (conformance suite, plain and through faults, a real
// crash mid-write), vault handles on it, and the writer lock.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT, FerryError } from '../format/errors.js';
import { listAll } from '../vault/backend.js';
import { DirBackend } from '../vault/dir.js';
import { acquireLock, LOCK_NAME, LockInfo, plainLockCodec } from '../vault/lock.js';
import { initVault, openVault, VaultWriter } from '../vault/vault.js';
import { backendConformance, backendFaultConformance } from './backend-conformance.js';
import { FaultyBackend } from './faulty-backend.js';

const PASS = 'a passphrase of some length';
const CHEAP = { N: 1024, r: 8, p: 1 };

const made: string[] = [];
test.after.always(async () => {
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function tempDir(label: string): Promise<string> {
  const d = await fs.mkdtemp(join(tmpdir(), `ferry-${label}-`));
  made.push(d);
  return d;
}

const dirFactory = async () => {
  const dir = await tempDir('dir');
  return { backend: new DirBackend(dir), cleanup: () => fs.rm(dir, { recursive: true, force: true }) };
};

backendConformance('dir', dirFactory);
backendConformance('dir behind a fault injector with slow reads', async () => {
  const fx = await dirFactory();
  const f = new FaultyBackend(fx.backend).addFault({ op: 'get', kind: 'slow', delayMs: 3 }).addFault({ op: 'stat', kind: 'slow', delayMs: 1 });
  return { backend: f, cleanup: fx.cleanup };
});
backendFaultConformance('dir', dirFactory);
// The same promises hold inside a batch (new objects fsynced at commitBatch):
// every test runs with a batch open, and commits it before cleaning up.
const batchedFactory = async () => {
  const fx = await dirFactory();
  fx.backend.beginBatch();
  return { backend: fx.backend, cleanup: async () => { await fx.backend.commitBatch(); await fx.cleanup(); } };
};
backendConformance('dir, batched', batchedFactory);
backendFaultConformance('dir, batched', batchedFactory);

test('a batch: new objects show at once, replacing one stays whole, commitBatch ends it and tolerates deletions', async (t) => {
  const { backend: b, cleanup } = await dirFactory();
  try {
    await b.put('disks/d/blocks/0', Buffer.from('before the batch'));
    b.beginBatch();
    await Promise.all(Array.from({ length: 40 }, (_, i) => b.put(`disks/d/blocks/${i + 1}`, Buffer.alloc(5000, i))));
    await b.put('disks/d/blocks/0', Buffer.from('replaced in the batch'));
    t.deepEqual(await b.get('disks/d/blocks/0'), Buffer.from('replaced in the batch'));
    for (let i = 1; i <= 40; i++) t.deepEqual(await b.get(`disks/d/blocks/${i}`), Buffer.alloc(5000, i - 1));
    await b.delete('disks/d/blocks/7');
    await b.commitBatch();
    await b.commitBatch(); // none open: nothing to do
    t.false(await b.exists('disks/d/blocks/7'));
    const names = await listAll(b, 'disks/d/blocks/');
    t.is(names.length, 40);
    t.deepEqual((await fs.readdir(join(b.location, 'disks', 'd', 'blocks'))).filter((n) => n.startsWith('.')), [], 'no temporaries left');
  } finally {
    await cleanup();
  }
});

async function newVault(label: string): Promise<string> {
  const dir = join(await tempDir(label), 'vault');
  await initVault(dir, PASS, { cost: CHEAP });
  return dir;
}

/** Runs a module script in a child node process (for crashes and dead lock holders). */
function runChild(script: string): { status: number | null; signal: NodeJS.Signals | null; stderr: string } {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  return { status: r.status, signal: r.signal, stderr: r.stderr };
}

const distUrl = (rel: string) => new URL(rel, import.meta.url).href;

test('dir: a process killed mid-write leaves the old object whole and only an invisible temporary', async (t) => {
  const dir = await tempDir('crash');
  const b = new DirBackend(dir);
  const old = Buffer.alloc(2 ** 20, 'o');
  await b.put('disks/d/blocks/1', old);
  const r = runChild(`
    import { DirBackend } from ${JSON.stringify(distUrl('../vault/dir.js'))};
    const b = new DirBackend(${JSON.stringify(dir)});
    b.injectFaults({ midWrite: () => process.kill(process.pid, 'SIGKILL') });
    await b.put('disks/d/blocks/1', Buffer.alloc(2 ** 20, 'n'));
    await b.put('disks/d/blocks/2', Buffer.alloc(10, 'n'));
  `);
  t.is(r.signal, 'SIGKILL', r.stderr);
  const raw = await fs.readdir(join(dir, 'disks/d/blocks'));
  const temps = raw.filter((n) => n.startsWith('.'));
  t.is(temps.length, 1, 'the torn temporary is there');
  t.is((await fs.stat(join(dir, 'disks/d/blocks', temps[0]))).size, 2 ** 19, 'half written');
  t.true((await b.get('disks/d/blocks/1')).equals(old));
  t.deepEqual(await listAll(b), ['disks/d/blocks/1']);
  t.false(await b.exists('disks/d/blocks/2'));
  await fs.rm(dir, { recursive: true });
});

test('vault: no vault there -> NO_VAULT, exit 10, saying to run ferry init', async (t) => {
  const base = await tempDir('novault');
  await fs.writeFile(join(base, 'file'), 'x');
  for (const where of [join(base, 'missing'), base, join(base, 'file')]) {
    const err = (await t.throwsAsync(openVault(where, { passphrase: PASS }))) as FerryError;
    t.is(err.code, 'NO_VAULT');
    t.is(err.exitCode, EXIT.noVault);
    // (a file is no place for a vault: it is said so, not sent to ferry init)
    // (a folder holding other things is not sent to ferry init either, which would refuse it)
    t.regex(err.message, where.endsWith('file') ? /is a file, not a folder; give the vault's folder/ : where === base ? /holds other things but no vault\.json file; give the vault's own folder/ : /run `ferry init /);
  }
  // The passphrase is not even asked for.
  let asked = false;
  await t.throwsAsync(openVault(join(base, 'missing'), { passphrase: async () => ((asked = true), PASS) }), { code: 'NO_VAULT' } as never);
  t.false(asked);
});

test('vault: init creates a missing or empty dir and refuses a non-empty one or a second init', async (t) => {
  const base = await tempDir('init');
  const r = await initVault(join(base, 'a/b'), PASS, { cost: CHEAP });
  t.regex(r.id, /^[0-9a-f]{32}$/);
  t.deepEqual(await fs.readdir(join(base, 'a/b')), ['vault.json']);
  await fs.mkdir(join(base, 'empty'));
  await initVault(join(base, 'empty'), PASS, { cost: CHEAP });
  await fs.mkdir(join(base, 'full'));
  await fs.writeFile(join(base, 'full/notes.txt'), 'mine');
  const e1 = (await t.throwsAsync(initVault(join(base, 'full'), PASS, { cost: CHEAP }))) as FerryError;
  t.is(e1.code, 'VAULT_NOT_EMPTY');
  t.deepEqual(await fs.readdir(join(base, 'full')), ['notes.txt']);
  const before = await fs.readFile(join(base, 'a/b/vault.json'));
  const e2 = (await t.throwsAsync(initVault(join(base, 'a/b'), PASS, { cost: CHEAP }))) as FerryError;
  t.is(e2.code, 'VAULT_EXISTS');
  t.true((await fs.readFile(join(base, 'a/b/vault.json'))).equals(before));
  await t.throwsAsync(initVault(join(base, 'x'), 'too short', { cost: CHEAP }), { code: 'USAGE' } as never);
});

test('vault: sealed round trip; stored bytes are sealed; swapped, truncated or missing objects are named', async (t) => {
  const dir = await newVault('seal');
  const w = await openVault(dir, { passphrase: PASS, writable: true, poolSize: 2 });
  try {
    const a = Buffer.from('plaintext block A '.repeat(5000));
    const b = Buffer.from('plaintext block B '.repeat(5000));
    const ra = await w.putSealed('disks/d/blocks/0', a);
    t.is(ra.codec, 'zstd');
    await w.putSealed('disks/d/blocks/1', b, { verify: true, codec: 'deflate' });
    t.true((await w.getSealed('disks/d/blocks/0')).equals(a));
    t.true((await w.getSealed('disks/d/blocks/1')).equals(b));
    const onDisk = await fs.readFile(join(dir, 'disks/d/blocks/0'));
    t.is(onDisk.subarray(0, 5).toString(), 'FERRY');
    t.false(onDisk.includes('plaintext'));

    // Swap the two files behind the vault's back.
    const p0 = join(dir, 'disks/d/blocks/0');
    const p1 = join(dir, 'disks/d/blocks/1');
    const [b0, b1] = [await fs.readFile(p0), await fs.readFile(p1)];
    await fs.writeFile(p0, b1);
    await fs.writeFile(p1, b0);
    for (const n of ['disks/d/blocks/0', 'disks/d/blocks/1']) {
      const err = (await t.throwsAsync(w.getSealed(n))) as FerryError;
      t.is(err.code, 'SEAL_WRONG_NAME_OR_KEY');
      t.true(err.message.includes(n));
    }
    await fs.writeFile(p0, b0.subarray(0, b0.length - 1));
    const trunc = (await t.throwsAsync(w.getSealed('disks/d/blocks/0'))) as FerryError;
    t.regex(trunc.code, /^SEAL_/);
    t.true(trunc.message.includes('disks/d/blocks/0'));
    const miss = (await t.throwsAsync(w.getSealed('disks/d/blocks/9'))) as FerryError;
    t.is(miss.code, 'OBJECT_MISSING');
    t.true(miss.message.includes('disks/d/blocks/9'));
  } finally {
    await w.close();
  }
  t.false(await new DirBackend(dir).exists(LOCK_NAME), 'lock released on close');
});

test('vault: read-only handles read while a writer holds the lock, and cannot write', async (t) => {
  const dir = await newVault('ro');
  const w = await openVault(dir, { passphrase: PASS, writable: true, poolSize: 1 });
  await w.putSealed('items/m/i/item', Buffer.from('{"kind":"files"}'));
  const r = await openVault(dir, { passphrase: PASS, poolSize: 0 });
  try {
    t.false(r.writable);
    t.false('putSealed' in r);
    t.is((await r.getSealed('items/m/i/item')).toString(), '{"kind":"files"}');
    const err = (await t.throwsAsync(r.backend.put('x', Buffer.from('y')))) as FerryError;
    t.is(err.code, 'READ_ONLY');
    await t.throwsAsync(r.backend.delete('items/m/i/item'), { code: 'READ_ONLY' } as never);
    t.deepEqual(await listAll(r.backend, 'items/'), ['items/m/i/item']);
  } finally {
    await r.close();
    await w.close();
  }
  t.throws(() => r.masterKey, { message: /closed/ });
});

test('lock: a second writer gets LOCKED, exit 11, naming pid, host and time', async (t) => {
  const dir = await newVault('lock2');
  const first = await openVault(dir, { passphrase: PASS, writable: true, command: 'backup' });
  try {
    const err = (await t.throwsAsync(openVault(dir, { passphrase: PASS, writable: true }))) as FerryError;
    t.is(err.code, 'LOCKED');
    t.is(err.exitCode, EXIT.locked);
    t.true(err.message.includes(`pid ${process.pid}`), err.message);
    t.true(err.message.includes(hostname()));
    t.true(err.message.includes(first.lock.info.created));
    t.regex(err.message, /ferry backup/);
    t.regex(err.message, /--break-lock/);
    // Lock objects are sealed like the rest.
    const raw = await fs.readFile(join(dir, LOCK_NAME));
    t.is(raw.subarray(0, 5).toString(), 'FERRY');
  } finally {
    await first.close();
  }
  const again = await openVault(dir, { passphrase: PASS, writable: true });
  await again.close();
});

test('lock: a lock left by a dead process on this host is broken automatically, with a warning', async (t) => {
  const dir = await newVault('dead');
  const r = runChild(`
    import { openVault } from ${JSON.stringify(distUrl('../vault/vault.js'))};
    await openVault(${JSON.stringify(dir)}, { passphrase: ${JSON.stringify(PASS)}, writable: true, command: 'seed' });
    process.exit(0); // dies holding the lock
  `);
  t.is(r.status, 0, r.stderr);
  t.true(await new DirBackend(dir).exists(LOCK_NAME));
  const warnings: string[] = [];
  const w = await openVault(dir, { passphrase: PASS, writable: true, onWarning: (m) => warnings.push(m) });
  await w.close();
  t.is(warnings.length, 1);
  t.regex(warnings[0], /stale lock.*no longer running/);
  t.regex(warnings[0], /ferry seed/);
});

test('lock: an old lock from another host is reported stale and broken only with breakLock', async (t) => {
  const dir = await newVault('stale');
  const dayAgo = Date.now() - 30 * 3600 * 1000;
  // A writer on another host that stopped refreshing 30 hours ago (its process crashed).
  await openVault(dir, { passphrase: PASS, writable: true, lock: { host: 'far-away', pid: 4242, now: () => dayAgo, refreshMs: 0 } });
  const err = (await t.throwsAsync(openVault(dir, { passphrase: PASS, writable: true }))) as FerryError;
  t.is(err.code, 'LOCKED');
  t.regex(err.message, /pid 4242 on far-away/);
  t.regex(err.message, /looks stale/);
  t.regex(err.message, /--break-lock/);
  const warnings: string[] = [];
  const w = await openVault(dir, { passphrase: PASS, writable: true, breakLock: true, onWarning: (m) => warnings.push(m) });
  t.regex(warnings[0], /breaking the lock .* pid 4242 on far-away/);
  await w.close();
});

test('lock: a writer whose lock was broken stops with LOCK_LOST instead of writing on', async (t) => {
  const dir = await newVault('lost');
  const a = await openVault(dir, { passphrase: PASS, writable: true, lock: { refreshMs: 0 } });
  await a.putSealed('x/1', Buffer.from('before'));
  const b = await openVault(dir, { passphrase: PASS, writable: true, breakLock: true, onWarning: () => {} });
  const warnings: string[] = [];
  (a.lock as unknown as { opts: { onWarning: (m: string) => void } }).opts.onWarning = (m) => warnings.push(m);
  await a.lock.refresh();
  t.true(a.lock.lost);
  const err = (await t.throwsAsync(a.putSealed('x/2', Buffer.from('after')))) as FerryError;
  t.is(err.code, 'LOCK_LOST');
  t.false(await b.exists('x/2'));
  await a.close();
  t.true(await new DirBackend(dir).exists(LOCK_NAME), "a's close does not remove b's lock");
  await b.close();
  t.false(await new DirBackend(dir).exists(LOCK_NAME));
});

test('lock: acquire/refresh/release on a bare backend, with injected clock and liveness', async (t) => {
  const dir = await tempDir('lockunit');
  const b = new DirBackend(dir);
  let now = Date.parse('2030-01-01T00:00:00Z');
  const clock = () => now;
  const l1 = await acquireLock(b, { host: 'h1', pid: 10, now: clock, refreshMs: 0 });
  t.is(l1.info.created, '2030-01-01T00:00:00.000Z');
  // Same host, holder alive: LOCKED, not stale.
  const e1 = (await t.throwsAsync(acquireLock(b, { host: 'h1', pid: 11, now: clock, isAlive: () => true }))) as FerryError;
  t.is(e1.code, 'LOCKED');
  t.false(e1.data.stale as boolean);
  t.regex(e1.message, /wait for it to finish/);
  // Refreshing keeps it fresh past the stale limit.
  now += 23 * 3600 * 1000;
  await l1.refresh();
  now += 23 * 3600 * 1000;
  const e2 = (await t.throwsAsync(acquireLock(b, { host: 'h2', pid: 11, now: clock }))) as FerryError;
  t.false(e2.data.stale as boolean);
  now += 2 * 3600 * 1000;
  const e3 = (await t.throwsAsync(acquireLock(b, { host: 'h2', pid: 11, now: clock }))) as FerryError;
  t.true(e3.data.stale as boolean);
  // Holder on this host found dead: broken automatically.
  const warnings: string[] = [];
  const l2 = await acquireLock(b, { host: 'h1', pid: 12, now: clock, isAlive: (i: LockInfo) => i.pid !== 10, onWarning: (m) => warnings.push(m), refreshMs: 0 });
  t.regex(warnings[0], /pid 10 on h1/);
  await l1.release(); // not its lock any more: must not remove l2's
  t.is((plainLockCodec.decode(LOCK_NAME, await b.get(LOCK_NAME)) as LockInfo).id, l2.info.id);
  await l2.release();
  t.false(await b.exists(LOCK_NAME));
  // Garbage in the lock object: LOCKED as unreadable, breakable on request.
  await b.put(LOCK_NAME, Buffer.from('garbage'));
  const e4 = (await t.throwsAsync(acquireLock(b, { refreshMs: 0 }))) as FerryError;
  t.regex(e4.message, /unreadable lock/);
  const l3 = await acquireLock(b, { breakLock: true, refreshMs: 0 });
  await l3.release();
  await fs.rm(dir, { recursive: true });
});

test('lock: the writer refreshes its lock on a timer', async (t) => {
  const dir = await newVault('refresh');
  const w: VaultWriter = await openVault(dir, { passphrase: PASS, writable: true, lock: { refreshMs: 50 } });
  const first = w.lock.info.refreshed;
  // Polled: on a loaded machine the timer may fire late, but it must fire.
  for (let i = 0; i < 100 && w.lock.info.refreshed === first; i++) await new Promise((r) => setTimeout(r, 50));
  t.not(w.lock.info.refreshed, first);
  const stored = await new DirBackend(dir).get(LOCK_NAME);
  t.true(stored.length > 0);
  t.false(w.lock.lost);
  await w.close();
});
