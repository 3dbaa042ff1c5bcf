// Review: the addon's readFiles must answer as the reader threads do, in the
// cases the walker test does not reach (run as root, mtimes in range, growth
// told by the mtime), and must not act on requests changed after the call.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { chmod, lstat, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeAddon } from '../format/native.js';
import { SmallFileReader, type SmallRead } from '../source/reader.js';
import { comparable } from './helpers/reads.js';

type Ask = { path: Buffer; length: number; dev: bigint; ino: bigint; mtimeNs?: bigint; chunk?: number };

async function both(asks: Ask[]): Promise<{ native: unknown[]; threads: unknown[] }> {
  const readAll = async (native: boolean) => {
    const reader = new SmallFileReader(2, { native });
    try {
      const all: SmallRead[] = await Promise.all(asks.map((a) => reader.read(a.path, a.length, a.dev, a.ino, a.mtimeNs, a.chunk)));
      return all.map((r) => comparable(r));
    } finally {
      await reader.close();
    }
  };
  return { native: await readAll(true), threads: await readAll(false) };
}

async function asked(p: string, length?: number): Promise<Ask> {
  const st = await lstat(p, { bigint: true });
  return { path: Buffer.from(p), length: length ?? Number(st.size), dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs, chunk: 4096 };
}

test('readFiles = reader threads: a file that grew with its mtime put back is changed (the size alone tells)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-parity-'));
  try {
    const p = join(dir, 'grew');
    await writeFile(p, Buffer.alloc(2000, 1));
    const a = await asked(p);
    const before = await lstat(p);
    await writeFile(p, Buffer.alloc(6000, 2));
    await utimes(p, before.atime, before.mtime);
    const st = await lstat(p, { bigint: true });
    a.mtimeNs = st.mtimeNs; // the same mtime as listed: only the size says it grew
    const { native, threads } = await both([a]);
    t.is((threads[0] as SmallRead).changed, true);
    t.deepEqual(native, threads);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('readFiles = reader threads: a file dated after 2262 (mtime beyond int64 ns) is not "changed"', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-parity-'));
  try {
    const p = join(dir, 'future');
    await writeFile(p, 'from the future\n');
    await utimes(p, new Date('2300-01-01T00:00:00Z'), new Date('2300-01-01T00:00:00Z'));
    const { native, threads } = await both([await asked(p)]);
    t.is((threads[0] as SmallRead).changed, false);
    t.deepEqual(native, threads);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('readFiles = reader threads: EIO of a read (/proc/self/mem at 0)', async (t) => {
  const { native, threads } = await both([await asked('/proc/self/mem', 16)]);
  t.is((threads[0] as SmallRead).code, 'EIO');
  t.deepEqual(native, threads);
});

test('readFiles = reader threads, as user nobody: EACCES, and O_NOATIME refused (EPERM) on a file of root, read without it', async (t) => {
  if (process.getuid?.() !== 0) return t.pass('needs root to become nobody');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-parity-'));
  try {
    await chmod(dir, 0o755);
    await writeFile(join(dir, 'secret'), 'no\n', { mode: 0o600 });
    await writeFile(join(dir, 'public'), 'yes\n', { mode: 0o644 });
    const script = join(dir, 'child.mjs');
    const reader = new URL('../source/reader.js', import.meta.url).href;
    await writeFile(
      script,
      `import { lstatSync } from 'node:fs';
const { SmallFileReader } = await import(${JSON.stringify(reader)});
const asks = ${JSON.stringify([join(dir, 'secret'), join(dir, 'public')])}.map((p) => { const st = lstatSync(p, { bigint: true }); return { path: Buffer.from(p), length: Number(st.size), dev: st.dev, ino: st.ino, mtimeNs: st.mtimeNs }; });
const out = {};
for (const native of [true, false]) {
  const r = new SmallFileReader(2, { native });
  out[native ? 'native' : 'threads'] = (await Promise.all(asks.map((a) => r.read(a.path, a.length, a.dev, a.ino, a.mtimeNs, 4096)))).map((x) => ({ ...x, data: x.data?.toString(), hashes: x.hashes?.toString('hex') }));
  await r.close();
}
console.log(JSON.stringify(out));`,
    );
    await chmod(script, 0o644);
    const r = spawnSync('runuser', ['-u', 'nobody', '--', process.execPath, script], { encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    const { native, threads } = JSON.parse(r.stdout);
    t.is(threads[0].code, 'EACCES');
    t.is(threads[1].data, 'yes\n');
    t.deepEqual(native, threads);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('readFiles: a request changed after the call is not followed past the buffers (validated words must be the ones used)', async (t) => {
  const readFiles = nativeAddon()?.readFiles;
  if (!readFiles) return t.fail('no addon');
  const dir = await mkdtemp(join(tmpdir(), 'ferry-parity-'));
  try {
    const p = join(dir, 'f');
    await writeFile(p, Buffer.alloc(65536, 0x41));
    const st = await lstat(p, { bigint: true });
    // keep libuv's pool busy so the job waits in its queue
    const { pbkdf2 } = await import('node:crypto');
    const busy = Array.from({ length: 32 }, () => new Promise((res) => pbkdf2('x', 'y', 100000, 32, 'sha256', res)));
    const ab = new ArrayBuffer(8192);
    const out = new Uint8Array(ab, 0, 4096);
    const guard = new Uint8Array(ab, 4096, 4096);
    const reqs = new BigInt64Array([0n, 16n, st.dev, st.ino, 0n, 0n, 0n, -1n]);
    const replies = new Float64Array(4);
    const done = new Promise<number | null>((res) => readFiles(new Uint8Array(reqs.buffer), Buffer.from(`${p}\0`), out, new Uint8Array(replies.buffer), res));
    reqs[1] = 8192n; // after the check, before the pool thread reads it
    t.is(await done, null);
    await Promise.all(busy);
    t.is(guard.filter((b) => b !== 0).length, 0, 'bytes written past `out`');
    t.is(replies[1], 16, 'the length checked is the length read');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

