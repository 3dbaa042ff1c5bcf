// Sealing throughput: `bash bench/seal.sh` builds the corpus and runs this.
// Usage: node dist/bench/seal.js CORPUS_FILE [--block 2M] [--json]
// MB/s are of plaintext (1 MB = 10^6 bytes), wall-clock, best of 3 runs.
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
  ratio: number;
}
const rows: Row[] = [];

function best(runs: number, fn: () => number): number {
  let b = Infinity;
  for (let i = 0; i < runs; i++) b = Math.min(b, fn());
  return b;
}

async function bestAsync(runs: number, fn: () => Promise<number>): Promise<number> {
  let b = Infinity;
  for (let i = 0; i < runs; i++) b = Math.min(b, await fn());
  return b;
}

const mbs = (ms: number) => total / 1e6 / (ms / 1000);

function single(codec: CodecName, level: number | undefined): void {
  const s = new Sealer(key, { codec, level });
  let sealed: Buffer[] = [];
  const sealMs = best(3, () => {
    const t0 = performance.now();
    sealed = blocks.map((b, i) => s.seal(names[i], b));
    return performance.now() - t0;
  });
  const unsealMs = best(3, () => {
    const t0 = performance.now();
    for (let i = 0; i < sealed.length; i++) s.unseal(names[i], sealed[i]);
    return performance.now() - t0;
  });
  const stored = sealed.reduce((n, b) => n + b.length, 0);
  rows.push({ codec: label(codec, level), mode: 'in-thread', threads: 1, sealMBs: mbs(sealMs), unsealMBs: mbs(unsealMs), ratio: total / stored });
}

async function pooled(codec: CodecName, level: number | undefined, size: number): Promise<void> {
  const pool = new SealPool(key, { codec, level, size });
  let sealed: Buffer[] = [];
  // A producer that respects the bounded queue, as a backup pipeline does.
  const run = async (op: 'seal' | 'unseal', inputs: Buffer[]) => {
    const out: Array<Promise<Buffer>> = [];
    const t0 = performance.now();
    for (let i = 0; i < inputs.length; i++) {
      await pool.ready();
      out.push(op === 'seal' ? pool.seal(names[i], inputs[i]) : pool.unseal(names[i], inputs[i]));
    }
    const res = await Promise.all(out);
    return { ms: performance.now() - t0, res };
  };
  await run('seal', blocks.slice(0, size * 2)); // start the workers
  const sealMs = await bestAsync(3, async () => {
    const r = await run('seal', blocks);
    sealed = r.res;
    return r.ms;
  });
  const unsealMs = await bestAsync(3, async () => (await run('unseal', sealed)).ms);
  await pool.close();
  const stored = sealed.reduce((n, b) => n + b.length, 0);
  rows.push({ codec: label(codec, level), mode: 'pool', threads: size, sealMBs: mbs(sealMs), unsealMBs: mbs(unsealMs), ratio: total / stored });
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
  console.log('| codec | mode | threads | seal MB/s | unseal MB/s | seal MB/s per thread | ratio |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.codec} | ${r.mode} | ${r.threads} | ${r.sealMBs.toFixed(0)} | ${r.unsealMBs.toFixed(0)} | ${(r.sealMBs / r.threads).toFixed(0)} | ${r.ratio.toFixed(2)} |`);
  }
}
