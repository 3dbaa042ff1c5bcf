// Memory of the seed's source side: the walker must hold no more file data
// than its read-ahead budget (plus a small constant) while its consumer takes
// each file's content as it comes, whether or not the consumer hands the
// pieces back with release(). Measured on live ArrayBuffers after a forced
// garbage collection, in a child process run with --expose-gc (ava's workers
// cannot collect on demand).
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pseudoRandom } from './helpers/tree.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const READ_AHEAD = 2 * MiB;
/** What the walker may hold beyond its budget: a large file's reads in flight (4 x 1 MiB), the small-file buffer being filled, the piece the consumer holds. */
const SLACK = 8 * MiB;

// Walks ROOT, reads every file's content at once; every few files, collects
// garbage and notes the live ArrayBuffers above what there was before the walk.
const CHILD = `
const { walk } = await import(process.env.FILES_MODULE);
const release = process.env.RELEASE === '1';
const live = () => {
  globalThis.gc();
  return process.memoryUsage().arrayBuffers;
};
const before = live();
let peak = 0;
let bytes = 0;
let files = 0;
for await (const e of walk([process.env.ROOT], { readAhead: Number(process.env.READ_AHEAD), xattrs: false })) {
  if (!e.content) continue;
  for await (const p of e.content()) {
    bytes += p.data.length;
    if (release) p.release?.();
  }
  if (++files % 3 === 0) peak = Math.max(peak, live() - before);
}
console.log(JSON.stringify({ peak, bytes, files }));
`;

async function makeSource(root: string): Promise<number> {
  // Mostly small files (read ahead), in one directory so that they come in
  // one batch, with a few large ones (read when asked for) among them.
  let total = 0;
  await mkdir(join(root, 'd'), { recursive: true });
  for (let i = 0; i < 240; i++) {
    const data = pseudoRandom(96 * 1024 + ((i * 7919) % (64 * 1024)), i);
    await writeFile(join(root, 'd', `f${String(i).padStart(3, '0')}`), data);
    total += data.length;
    if (i % 80 === 40) {
      const big = pseudoRandom(3 * MiB + 4321, 1000 + i);
      await writeFile(join(root, 'd', `f${String(i).padStart(3, '0')}-big`), big);
      total += big.length;
    }
  }
  return total;
}

async function walkInChild(root: string, release: boolean): Promise<{ peak: number; bytes: number; files: number }> {
  const { stdout } = await run(process.execPath, ['--expose-gc', '--no-concurrent-array-buffer-sweeping', '--input-type=module', '-e', CHILD], {
    env: {
      ...process.env,
      FILES_MODULE: new URL('../source/files.js', import.meta.url).href,
      ROOT: root,
      READ_AHEAD: String(READ_AHEAD),
      RELEASE: release ? '1' : '0',
    },
    maxBuffer: 1 << 20,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

for (const release of [true, false]) {
  test(`walker: holds at most its read-ahead (+${SLACK / MiB} MiB) of file data while the consumer takes it promptly${release ? ', releasing pieces' : ''}`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-mem-'));
    try {
      const total = await makeSource(dir);
      const r = await walkInChild(dir, release);
      t.is(r.bytes, total, 'every byte was read');
      t.is(r.files, 243);
      t.log(`peak live ArrayBuffers ${(r.peak / MiB).toFixed(1)} MiB`);
      t.true(r.peak <= READ_AHEAD + SLACK, `live ArrayBuffers went up to ${(r.peak / MiB).toFixed(1)} MiB (budget ${READ_AHEAD / MiB} MiB + ${SLACK / MiB} MiB)`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
}
