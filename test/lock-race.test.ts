// The writer lock under races (vault/lock.ts, the argument at its top):
// processes that judge the same dead lock at once, a breaker that stalls
// between its judgment and its delete, a refresh racing --break-lock, a
// breaker that dies holding its claim; in one process with injected
// identities and in real child processes. And WriterLock.verify().
import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EXIT, FerryError } from '../format/errors.js';
import { Backend, listAll, ObjectStat } from '../vault/backend.js';
import { DirBackend } from '../vault/dir.js';
import { acquireLock, LOCK_NAME, LockInfo, LockOptions, plainLockCodec, WriterLock } from '../vault/lock.js';
import { FaultyBackend } from './faulty-backend.js';

const made: string[] = [];
test.after.always(async () => {
  await Promise.all(made.map((d) => fs.rm(d, { recursive: true, force: true })));
});

async function tempDir(label: string): Promise<string> {
  const d = await fs.mkdtemp(join(tmpdir(), `ferry-${label}-`));
  made.push(d);
  return d;
}

const HOST = 'here';
const DEAD = 4_000_001;
const T0 = '2030-01-01T00:00:00.000Z';

/** A lock left by a process on this host that is gone. */
async function putDeadLock(b: Backend, pid = DEAD): Promise<Buffer> {
  const raw = plainLockCodec.encode(LOCK_NAME, { id: `dead${pid}`, pid, host: HOST, created: T0, refreshed: T0, command: 'seed' }) as Buffer;
  await b.put(LOCK_NAME, raw);
  return raw;
}

function storedId(raw: Buffer): string {
  return (plainLockCodec.decode(LOCK_NAME, raw) as LockInfo).id;
}

function opts(pid: number, more: LockOptions = {}): LockOptions {
  return { host: HOST, pid, refreshMs: 0, isAlive: (i) => i.pid !== DEAD, ...more };
}

/** Backend calls go through `before(op, name)` first (await it): where a test stalls a process. */
class Hooked implements Backend {
  constructor(
    readonly inner: Backend,
    readonly before: (op: string, name: string) => unknown,
  ) {}
  get location(): string {
    return this.inner.location;
  }
  describe(): string {
    return this.inner.describe();
  }
  async put(name: string, data: Buffer): Promise<void> {
    await this.before('put', name);
    return this.inner.put(name, data);
  }
  async putNew(name: string, data: Buffer): Promise<void> {
    await this.before('putNew', name);
    return this.inner.putNew(name, data);
  }
  async get(name: string): Promise<Buffer> {
    await this.before('get', name);
    return this.inner.get(name);
  }
  async delete(name: string): Promise<void> {
    await this.before('delete', name);
    return this.inner.delete(name);
  }
  async exists(name: string): Promise<boolean> {
    await this.before('exists', name);
    return this.inner.exists(name);
  }
  async stat(name: string): Promise<ObjectStat> {
    await this.before('stat', name);
    return this.inner.stat(name);
  }
  list(prefix: string): AsyncIterable<string> {
    return this.inner.list(prefix);
  }
}

/** A one-shot stall: the first matching call waits until open(); `reached` resolves when it is waiting. */
function stall(op: string, name: string) {
  let open!: () => void;
  let reached!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const hit = new Promise<void>((r) => (reached = r));
  let armed = true;
  return {
    before: (o: string, n: string) => {
      if (!armed || o !== op || n !== name) return;
      armed = false;
      reached();
      return gate;
    },
    open: () => open(),
    reached: hit,
  };
}

function isLocked(t: import('ava').ExecutionContext, r: PromiseSettledResult<unknown>, what: string): void {
  if (r.status !== 'rejected') return void t.fail(`${what} took the lock too`);
  const e = r.reason as FerryError;
  t.true(e instanceof FerryError, `${what}: ${e}`);
  t.is(e.code, 'LOCKED', `${what}: ${e.message}`);
  t.is(e.exitCode, EXIT.locked);
}

async function expectLost(t: import('ava').ExecutionContext, p: Promise<unknown>, message?: RegExp): Promise<void> {
  const e = (await t.throwsAsync(p)) as FerryError;
  t.is(e?.code, 'LOCK_LOST', String(e));
  if (message) t.regex(e.message, message);
}

/** mulberry32: a seeded random for the fault injector, so a failing round can be replayed. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Random stalls on every lock object operation, as a slow or busy disk gives. */
function jittered(inner: Backend, seed: number): FaultyBackend {
  const locks = /^locks\//;
  return new FaultyBackend(inner, { random: seeded(seed) })
    .addFault({ op: 'get', kind: 'slow', match: locks, delayMs: 4, probability: 0.5 })
    .addFault({ op: 'get', kind: 'slow', match: locks, delayMs: 12, probability: 0.2 })
    .addFault({ op: 'delete', kind: 'slow', match: locks, delayMs: 6, probability: 0.5 })
    .addFault({ op: 'delete', kind: 'slow', match: locks, delayMs: 20, probability: 0.3 })
    .addFault({ op: 'putNew', kind: 'slow', match: locks, delayMs: 3, probability: 0.4 });
}

test('race: N writers that all find the same dead lock: exactly one takes it, the others get LOCKED (many rounds)', async (t) => {
  const ROUNDS = 30;
  const N = 6;
  const bad: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const dir = await tempDir('race');
    const b = new DirBackend(dir, { sync: false });
    await putDeadLock(b);
    const warnings: string[] = [];
    const tries = Array.from({ length: N }, (_, i) =>
      acquireLock(jittered(b, round * 100 + i), opts(100 + i, { onWarning: (m) => warnings.push(m) })),
    );
    const results = await Promise.allSettled(tries);
    const won = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    if (won.length !== 1) {
      bad.push(`round ${round}: ${won.length} writers took the lock (pids ${won.map((l) => l.info.pid).join(', ')})`);
      continue;
    }
    results.forEach((r, i) => r.status === 'rejected' && isLocked(t, r, `round ${round}, pid ${100 + i}`));
    t.is(storedId(await b.get(LOCK_NAME)), won[0].info.id);
    await won[0].verify();
    const breaks = warnings.filter((w) => /removed a stale lock/.test(w)).length;
    if (breaks !== 1) bad.push(`round ${round}: the dead lock was broken ${breaks} times`);
    await won[0].release();
    t.deepEqual(await listAll(b, 'locks/'), [], `round ${round}: no lock or claim left`);
    await fs.rm(dir, { recursive: true });
  }
  t.deepEqual(bad, [], `${bad.length} of ${ROUNDS} rounds`);
});

test('race: a breaker stalled between judging the dead lock and removing it does not remove the lock taken meanwhile', async (t) => {
  const dir = await tempDir('stalled');
  const plain = new DirBackend(dir);
  await putDeadLock(plain);
  // B judges the dead lock, then stalls right before it deletes it.
  const s = stall('delete', LOCK_NAME);
  const b = acquireLock(new Hooked(plain, s.before), opts(11));
  await s.reached;
  // A finds the same dead lock.
  const a = acquireLock(plain, opts(10));
  await Promise.race([a.catch(() => {}), sleep(300)]);
  s.open();
  const [ra, rb] = await Promise.allSettled([a, b]);
  const won = [ra, rb].flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  t.is(won.length, 1, `${won.length} writers hold the lock`);
  if (won.length !== 1) return;
  // B took the claim before stalling, so A waited for it; then whichever created the lock first has it.
  isLocked(t, ra.status === 'rejected' ? ra : rb, ra.status === 'rejected' ? 'A' : 'B');
  t.is(storedId(await plain.get(LOCK_NAME)), won[0].info.id);
  await won[0].release();
  t.deepEqual(await listAll(plain, 'locks/'), []);
});

test('race: a refresh stalled before its write does not overwrite the lock of a writer that broke it meanwhile', async (t) => {
  const dir = await tempDir('refresh');
  const plain = new DirBackend(dir);
  const s = stall('put', LOCK_NAME);
  const warnings: string[] = [];
  const a = await acquireLock(new Hooked(plain, s.before), opts(10, { onWarning: (m) => warnings.push(m) }));
  const refreshing = a.refresh();
  await s.reached;
  // The user says the holder is gone; it is not, it is refreshing.
  const b = acquireLock(plain, opts(11, { breakLock: true, onWarning: () => {} }));
  await Promise.race([b.catch(() => {}), sleep(300)]);
  s.open();
  await refreshing;
  const lb = await b;
  // Exactly one holder: b, whose lock is the one stored; a knows it lost.
  t.is(storedId(await plain.get(LOCK_NAME)), lb.info.id, 'the refresh overwrote the lock of the writer that broke it');
  await lb.verify();
  await a.refresh();
  t.true(a.lost);
  t.regex(warnings.join('\n'), /lost the writer lock/);
  await expectLost(t, a.verify());
  t.throws(() => a.assertHeld(), { code: 'LOCK_LOST' } as never);
  await a.release();
  t.is(storedId(await plain.get(LOCK_NAME)), lb.info.id, "a's release leaves b's lock");
  await lb.release();
  t.deepEqual(await listAll(plain, 'locks/'), []);
});

test('race: a breaker that died holding its claim: others wait while it might run, then take its claim over once it is dead', async (t) => {
  const dir = await tempDir('claimdead');
  const plain = new DirBackend(dir);
  await putDeadLock(plain);
  // X claims the dead lock and never gets further (it hangs here, then "dies").
  const s = stall('delete', LOCK_NAME);
  void acquireLock(new Hooked(plain, s.before), opts(50));
  await s.reached;
  t.true((await listAll(plain, 'locks/')).some((n) => n.startsWith('locks/claim-')));
  // While X may still run: wait for it, then LOCKED naming it; the dead lock stays.
  const waiting = (await t.throwsAsync(acquireLock(plain, opts(60, { claimWaitMs: 150 })))) as FerryError;
  t.is(waiting.code, 'LOCKED');
  t.is(waiting.exitCode, EXIT.locked);
  t.regex(waiting.message, /pid 50 on here .*breaking or releasing that lock/);
  t.is(storedId(await plain.get(LOCK_NAME)), `dead${DEAD}`);
  // X is dead: its claim is taken over, the dead lock broken, the lock taken.
  const warnings: string[] = [];
  const y = await acquireLock(plain, opts(60, { isAlive: (i) => i.pid !== DEAD && i.pid !== 50, onWarning: (m) => warnings.push(m) }));
  t.regex(warnings.join('\n'), /took over a claim .*pid 50/);
  t.regex(warnings.join('\n'), /removed a stale lock/);
  t.deepEqual(await listAll(plain, 'locks/'), [LOCK_NAME], 'claims cleaned up');
  await y.release();
});

test('verify(): resolves while held; LOCK_LOST once broken, while being broken, or released; a backend error is thrown as is', async (t) => {
  const dir = await tempDir('verify');
  const plain = new DirBackend(dir);
  const faulty = new FaultyBackend(plain);
  const a = await acquireLock(faulty, opts(10, { onWarning: () => {} }));
  await a.verify();
  await a.refresh();
  await a.verify();
  t.false(a.lost);

  // The backend cannot answer: the error, and the lock is not given up for it.
  faulty.addFault({ op: 'get', kind: 'fail-before', match: LOCK_NAME, times: 1 });
  const io = (await t.throwsAsync(a.verify())) as FerryError;
  t.is(io.code, 'BACKEND_IO');
  t.false(a.lost);
  await a.verify();

  // Someone is breaking it (--break-lock), stalled after claiming it: already lost.
  const s = stall('delete', LOCK_NAME);
  const b = acquireLock(new Hooked(plain, s.before), opts(11, { breakLock: true, onWarning: () => {} }));
  await s.reached;
  t.is(storedId(await plain.get(LOCK_NAME)), a.info.id, 'still stored');
  await expectLost(t, a.verify(), /taken over by another process/);
  t.true(a.lost);
  s.open();
  const lb = await b;
  await a.release();
  t.is(storedId(await plain.get(LOCK_NAME)), lb.info.id);

  // Broken outright: the next verify says so.
  const c = await acquireLock(plain, opts(12, { breakLock: true, onWarning: () => {} }));
  await expectLost(t, lb.verify());
  t.throws(() => lb.assertHeld(), { code: 'LOCK_LOST' } as never);
  await c.verify();
  await c.release();
  await expectLost(t, c.verify(), /released/);
  t.deepEqual(await listAll(plain, 'locks/'), []);
});

test('verify() and refresh() run one at a time: a refresh in flight is not taken for a breaker', async (t) => {
  const dir = await tempDir('serial');
  const plain = new DirBackend(dir);
  const s = stall('put', LOCK_NAME);
  const a: WriterLock = await acquireLock(new Hooked(plain, s.before), opts(10));
  const refreshing = a.refresh();
  await s.reached; // the refresh holds its claim on a's version now
  const verifying = a.verify();
  await sleep(50);
  s.open();
  await refreshing;
  await verifying;
  t.false(a.lost);
  await a.release();
  t.deepEqual(await listAll(plain, 'locks/'), []);
});

// Real processes: a lock left by a child that exited, then K children that
// race for it with their own pids (checked with kill(pid, 0) and the
// process start time), each holding what it took until all have answered.
const distUrl = (rel: string) => new URL(rel, import.meta.url).href;

function childScript(dir: string, seed: number): string {
  return `
    import { DirBackend } from ${JSON.stringify(distUrl('../vault/dir.js'))};
    import { acquireLock } from ${JSON.stringify(distUrl('../vault/lock.js'))};
    import { FaultyBackend } from ${JSON.stringify(distUrl('./faulty-backend.js'))};
    const locks = /^locks\\//;
    const b = new FaultyBackend(new DirBackend(${JSON.stringify(dir)}))
      .addFault({ op: 'get', kind: 'slow', match: locks, delayMs: 5, probability: 0.5 })
      .addFault({ op: 'get', kind: 'slow', match: locks, delayMs: 20, probability: 0.2 })
      .addFault({ op: 'delete', kind: 'slow', match: locks, delayMs: 15, probability: 0.5 })
      .addFault({ op: 'delete', kind: 'slow', match: locks, delayMs: 40, probability: 0.3 })
      .addFault({ op: 'putNew', kind: 'slow', match: locks, delayMs: ${seed % 4}, probability: 0.5 });
    const ended = new Promise((r) => process.stdin.on('end', r));
    const go = new Promise((r) => process.stdin.once('data', r));
    process.stdout.write('ready\\n');
    await go;
    try {
      const lock = await acquireLock(b, { refreshMs: 0, command: 'race' });
      process.stdout.write(JSON.stringify({ ok: true, id: lock.info.id, pid: process.pid }) + '\\n');
      await ended;
      await lock.verify();
      await lock.release();
      process.exit(0);
    } catch (err) {
      process.stdout.write(JSON.stringify({ ok: false, code: err.code, message: err.message }) + '\\n');
      process.exit(err.exitCode ?? 1);
    }
  `;
}

interface Child {
  lines: string[];
  next(): Promise<string>;
  exit: Promise<number | null>;
  stdin: NodeJS.WritableStream;
  stderr: () => string;
}

/** Children still running: a failed test kills them rather than leave them waiting on stdin. */
const children = new Set<ReturnType<typeof spawn>>();

function startChild(script: string): Child {
  const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<(l: string) => void> = [];
  let buf = '';
  let err = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let i; (i = buf.indexOf('\n')) >= 0; ) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(line);
      else lines.push(line);
    }
  });
  p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  // 'close', not 'exit': a child that writes its answer and exits at once
  // may exit before its last output is read here
  const exit = new Promise<number | null>((r) => p.on('close', (code) => r(code)));
  children.add(p);
  p.on('close', () => children.delete(p));
  return {
    lines,
    next: () =>
      lines.length
        ? Promise.resolve(lines.shift()!)
        : Promise.race([
            new Promise<string>((r) => waiters.push(r)),
            exit.then((c) => {
              throw new Error(`child exited (${c}) before answering: ${err}`);
            }),
          ]),
    exit,
    stdin: p.stdin,
    stderr: () => err,
  };
}

test('race: child processes racing for a lock left by a process that exited: exactly one takes it, the others exit 11', async (t) => {
  t.teardown(() => {
    for (const c of children) c.kill('SIGKILL');
  });
  const ROUNDS = 6;
  const K = 6;
  const bad: string[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const dir = await tempDir('procs');
    const plain = new DirBackend(dir);
    // A holder that dies holding the lock.
    const dead = startChild(`
      import { DirBackend } from ${JSON.stringify(distUrl('../vault/dir.js'))};
      import { acquireLock } from ${JSON.stringify(distUrl('../vault/lock.js'))};
      await acquireLock(new DirBackend(${JSON.stringify(dir)}), { refreshMs: 0, command: 'seed' });
      process.exit(0);
    `);
    t.is(await dead.exit, 0, dead.stderr());
    t.true(await plain.exists(LOCK_NAME));
    const kids = Array.from({ length: K }, (_, i) => startChild(childScript(dir, round * K + i)));
    for (const k of kids) t.is(await k.next(), 'ready');
    for (const k of kids) k.stdin.write('go\n');
    const answers = await Promise.all(kids.map(async (k) => JSON.parse(await k.next()) as { ok: boolean; id?: string; code?: string; message?: string }));
    for (const k of kids) k.stdin.end();
    const codes = await Promise.all(kids.map((k) => k.exit));
    const won = answers.filter((a) => a.ok);
    if (won.length !== 1) {
      bad.push(`round ${round}: ${won.length} processes held the lock at once`);
      continue;
    }
    for (const [i, a] of answers.entries()) {
      if (a.ok) t.is(codes[i], 0, `the holder verified and released: ${kids[i].stderr()}`);
      else {
        t.is(a.code, 'LOCKED', a.message);
        t.is(codes[i], EXIT.locked);
      }
    }
    t.deepEqual(await listAll(plain, 'locks/'), [], `round ${round}: no lock or claim left`);
    await fs.rm(dir, { recursive: true });
  }
  t.deepEqual(bad, [], `${bad.length} of ${ROUNDS} rounds`);
});

test('a release that cannot write (a full vault) warns and resolves: the work it ends is done, and the next writer breaks the stale lock', async (t) => {
  const dir = await tempDir('release-full');
  const plain = new DirBackend(dir);
  const faulty = new FaultyBackend(plain);
  const warnings: string[] = [];
  const a = await acquireLock(faulty, opts(20, { onWarning: (m) => warnings.push(m) }));
  faulty.addFault({ op: 'putNew', kind: 'fail-before', match: /claim/ });
  faulty.addFault({ op: 'delete', kind: 'fail-before' });
  await t.notThrowsAsync(a.release());
  t.is(warnings.length, 1);
  t.regex(warnings[0], /could not release the writer lock on .*injected fault.*; the next command finds it stale and removes it/);
  const b = await acquireLock(plain, opts(21, { onWarning: () => {}, isAlive: (i) => i.pid !== 20 }));
  await b.release();
});
