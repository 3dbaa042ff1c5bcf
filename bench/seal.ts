// Sealing throughput: `bash bench/seal.sh` builds the corpus and runs this.
// Usage: node dist/bench/seal.js CORPUS_FILE [--block 2M] [--json]
// MB/s are of plaintext (1 MB = 10^6 bytes), best of 3 runs: wall-clock, and
// per CPU-second (process CPU time, all threads), which other load on the
// machine disturbs far less and which is the per-core figure.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { parseSize } from '../format/errors.js';
import { Sealer, SealPool } from '../format/seal/index.js';
import type { CodecName } from '../format/seal/layout.js';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--'));
if (!file) {
  console.error('usage: node dist/bench/seal.js CORPUS_FILE [--block 2M] [--json]');
  process.exit(2);
}
const blockArg = args.indexOf('--block');
const blockSize = blockArg >= 0 ? parseSize(args[blockArg + 1], '--block') : 2 * 2 ** 20;
const asJson = args.includes('--json');

const corpus = readFileSync(file);
const blocks: Buffer[] = [];
for (let o = 0; o < corpus.length; o += blockSize) blocks.push(corpus.subarray(o, Math.min(corpus.length, o + blockSize)));
const total = corpus.length;
const key = randomBytes(32);
const names = blocks.map((_, i) => `disks/bench/blocks/${i}`);

interface Row {
  codec: string;
  mode: string;
  threads: number;
  sealMBs: number;
  unsealMBs: number;
  sealMBcpu: number;
  unsealMBcpu: number;
  ratio: number;
}
const rows: Row[] = [];

interface Timing {
  wall: number;
  cpu: number;
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

function best(runs: number, fn: () => void): Timing {
  return bestOf(runs, () => {
    const [w, c] = [performance.now(), cpuMs()];
    fn();
    return { wall: performance.now() - w, cpu: cpuMs() - c };
  });
}

function bestOf(runs: number, fn: () => Timing): Timing {
  const b = { wall: Infinity, cpu: Infinity };
  for (let i = 0; i < runs; i++) {
    const r = fn();
    b.wall = Math.min(b.wall, r.wall);
    b.cpu = Math.min(b.cpu, r.cpu);
  }
  return b;
}

async function bestAsync(runs: number, fn: () => Promise<void>): Promise<Timing> {
  const b = { wall: Infinity, cpu: Infinity };
  for (let i = 0; i < runs; i++) {
    const [w, c] = [performance.now(), cpuMs()];
    await fn();
    b.wall = Math.min(b.wall, performance.now() - w);
    b.cpu = Math.min(b.cpu, cpuMs() - c);
  }
  return b;
}

const mbs = (ms: number) => total / 1e6 / (ms / 1000);

function single(codec: CodecName, level: number | undefined): void {
  const s = new Sealer(key, { codec, level });
  let sealed: Buffer[] = [];
  const sealT = best(3, () => {
    sealed = blocks.map((b, i) => s.seal(names[i], b));
  });
  const unsealT = best(3, () => {
    for (let i = 0; i < sealed.length; i++) s.unseal(names[i], sealed[i]);
  });
  const stored = sealed.reduce((n, b) => n + b.length, 0);
  rows.push(row(codec, level, 'in-thread', 1, sealT, unsealT, stored));
}

async function pooled(codec: CodecName, level: number | undefined, size: number): Promise<void> {
  const pool = new SealPool(key, { codec, level, size });
  let sealed: Buffer[] = [];
  // A producer that respects the bounded queue, as a backup pipeline does.
  const run = async (op: 'seal' | 'unseal', inputs: Buffer[]) => {
    const out: Array<Promise<Buffer>> = [];
    for (let i = 0; i < inputs.length; i++) {
      await pool.ready();
      out.push(op === 'seal' ? pool.seal(names[i], inputs[i]) : pool.unseal(names[i], inputs[i]));
    }
    return Promise.all(out);
  };
  await run('seal', blocks.slice(0, size * 2)); // start the workers
  const sealT = await bestAsync(3, async () => {
    sealed = await run('seal', blocks);
  });
  const unsealT = await bestAsync(3, async () => {
    await run('unseal', sealed);
  });
  await pool.close();
  const stored = sealed.reduce((n, b) => n + b.length, 0);
  rows.push(row(codec, level, 'pool', size, sealT, unsealT, stored));
}

function row(codec: CodecName, level: number | undefined, mode: string, threads: number, s: Timing, u: Timing, stored: number): Row {
  return {
    codec: label(codec, level),
    mode,
    threads,
    sealMBs: mbs(s.wall),
    unsealMBs: mbs(u.wall),
    sealMBcpu: mbs(s.cpu),
    unsealMBcpu: mbs(u.cpu),
    ratio: total / stored,
  };
}

function label(codec: CodecName, level: number | undefined): string {
  return codec === 'none' ? 'none (AES-GCM only)' : `${codec} ${level ?? (codec === 'zstd' ? 1 : 6)}`;
}

const threads = availableParallelism();
single('zstd', 1);
single('zstd', 3);
single('deflate', 1);
single('none', undefined);
const loadBefore = loadavg()[0];
await pooled('zstd', 1, 1);
await pooled('zstd', 1, threads);
await pooled('zstd', 3, threads);

const env = {
  corpus: file,
  bytes: total,
  blockSize,
  blocks: blocks.length,
  cpu: cpus()[0]?.model ?? 'unknown',
  threads,
  node: process.version,
  // Other work on the machine skews the pool figures most: say how busy it was.
  loadavg1m: [loadBefore, loadavg()[0]],
};
if (asJson) {
  console.log(JSON.stringify({ ...env, rows }, null, 2));
} else {
  console.log(`corpus ${file}: ${(total / 1e6).toFixed(0)} MB in ${blocks.length} blocks of ${blockSize} bytes; ${env.cpu}, ${threads} threads, node ${env.node}; load average ${env.loadavg1m.map((l) => l.toFixed(1)).join(' -> ')}`);
  console.log('| codec | mode | threads | seal MB/s (wall) | unseal MB/s (wall) | seal MB per CPU-s | unseal MB per CPU-s | ratio |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const f = (x: number) => x.toFixed(0);
    console.log(`| ${r.codec} | ${r.mode} | ${r.threads} | ${f(r.sealMBs)} | ${f(r.unsealMBs)} | ${f(r.sealMBcpu)} | ${f(r.unsealMBcpu)} | ${r.ratio.toFixed(2)} |`);
  }
}
