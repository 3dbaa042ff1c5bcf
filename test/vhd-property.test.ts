// Property tests of the VHD engine against MemDisk, the in-memory reference
// Disk: random chains of 3 to 5 disks written at random (unaligned, block-
// crossing) ranges must read exactly as the oracle after every layer, and
// merging them down, one layer at a time, must never change what the chain
// reads. Then merges are interrupted (an injected crash in-process after N
// parent writes, the last one torn at a sector boundary; and real SIGKILLs
// of `ferry vhd merge`) and run again: the end must be the same.
//
// Seeds: one fixed seed (reproducible) plus a few random runs; fast-check
// prints the seed and the shrunk counterexample of any failure. Set
// FERRY_PROP_RUNS to run more random cases.
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, copyFile, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Disk, Extent } from '../format/disk.js';
import { FerryError } from '../format/errors.js';
import { MemDisk } from '../format/memdisk.js';
import {
  FileStorage,
  VhdDisk,
  type VhdStorage,
  coalesce,
  createDifferencing,
  createVhd,
  exportDisk,
  journalPath,
  mergeVhd,
  openChain,
  writeVhd,
} from '../format/vhd/index.js';
import { READ_AHEAD, WriteQueue } from '../format/vhd/create.js';
import { FERRY, run } from './helpers/exec.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BS = 2 * MiB;

// ---------------------------------------------------------------- helpers

async function withDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-prop-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await access(p);
    return true;
  } catch {
    return false;
  }
}

/** Deterministic bytes (xorshift32), so that a shrunk case is reproducible. */
function pattern(len: number, seed: number, kind: Fill): Buffer {
  if (kind === 'zero') return Buffer.alloc(len);
  if (kind === 'byte') return Buffer.alloc(len, (seed % 255) + 1);
  const words = new Uint32Array(Math.ceil(len / 4));
  let x = seed >>> 0 || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
  return Buffer.from(words.buffer, 0, len);
}

function firstDiff(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Throws with the first differing offset: keeps fast-check's report readable. */
function assertSame(actual: Buffer, expected: Buffer, what: string, base = 0): void {
  if (actual.length !== expected.length) throw new Error(`${what}: read ${actual.length} bytes, expected ${expected.length}`);
  if (!actual.equals(expected)) {
    const at = firstDiff(actual, expected);
    throw new Error(`${what}: differs at virtual byte ${base + at} (read 0x${actual[at].toString(16)}, expected 0x${expected[at].toString(16)})`);
  }
}

async function readAll(d: Disk): Promise<Buffer> {
  return d.read(0, d.size);
}

/** Sorted, merged list of [start, end) intervals. */
function normalize(iv: Array<[number, number]>): Array<[number, number]> {
  const s = iv.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of s) {
    const last = out[out.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

async function ownCoverage(d: Disk): Promise<Array<[number, number]>> {
  const iv: Array<[number, number]> = [];
  for (let i = 0; i < d.blockCount; i++) {
    const ex: Extent[] = await d.ownExtents(i);
    for (const e of ex) iv.push([e.offset, e.offset + e.length]);
  }
  return normalize(iv);
}

function fmtIv(iv: Array<[number, number]>): string {
  return iv.map(([a, b]) => `${a}..${b}`).join(' ');
}

// ---------------------------------------------------------------- the model

type Fill = 'random' | 'zero' | 'byte';
type Align = 'none' | 's512' | 'k4' | 'edge' | 'tail' | 'head';

interface WriteOp {
  at: number; // fraction of the disk, in 1/2^24
  len: number;
  align: Align;
  fill: Fill;
  seed: number;
}

interface Plan {
  size: number;
  blockSize: number;
  /** The base layer: dynamic (createVhd) mostly, sometimes fixed (Hyper-V style bases). */
  base: 'dynamic' | 'fixed';
  layers: WriteOp[][];
  reads: Array<{ at: number; len: number }>;
}

/** Sizes of 4 to 20 MiB: whole blocks, odd sectors, CHS-exact or not. */
const sizeArb = fc.oneof(
  fc.constantFrom(4 * MiB, 20 * MiB, 5 * MiB + 512, 6 * MiB + 3584, 10 * MiB - 512, 7 * MiB + 2048, 4 * MiB + 4096 + 512),
  fc.integer({ min: (4 * MiB) / 512, max: (20 * MiB) / 512 }).map((s) => s * 512),
);

const writeArb: fc.Arbitrary<WriteOp> = fc.record({
  at: fc.integer({ min: 0, max: 2 ** 24 - 1 }),
  len: fc.oneof(fc.integer({ min: 1, max: 700 }), fc.integer({ min: 1, max: 70_000 }), fc.integer({ min: 1, max: 3 * MiB })),
  align: fc.constantFrom<Align>('none', 'none', 's512', 'k4', 'edge', 'tail', 'head'),
  fill: fc.constantFrom<Fill>('random', 'random', 'zero', 'byte'),
  seed: fc.integer({ min: 1, max: 0x7fffffff }),
});

const planArb: fc.Arbitrary<Plan> = fc.record({
  size: sizeArb,
  // mostly the standard 2 MiB; the others move the block edges and give
  // bitmaps of 1 to 4 sectors
  blockSize: fc.constantFrom(BS, BS, BS, BS, 4 * KiB, 64 * KiB, 512 * KiB, 4 * MiB, 8 * MiB),
  base: fc.constantFrom<Plan['base']>('dynamic', 'dynamic', 'dynamic', 'dynamic', 'fixed'),
  layers: fc.array(fc.array(writeArb, { minLength: 1, maxLength: 7 }), { minLength: 3, maxLength: 5 }),
  reads: fc.array(fc.record({ at: fc.integer({ min: 0, max: 2 ** 24 - 1 }), len: fc.integer({ min: 1, max: 3 * MiB }) }), {
    minLength: 3,
    maxLength: 6,
  }),
});

/** Turns an abstract write into an in-range (offset, length). */
function place(w: WriteOp, size: number, bs = BS): { offset: number; length: number } {
  let off = Math.floor((w.at / 2 ** 24) * size);
  let len = w.len;
  switch (w.align) {
    case 's512':
      off -= off % 512;
      len = Math.ceil(len / 512) * 512;
      break;
    case 'k4':
      off -= off % 4096;
      len = Math.ceil(len / 4096) * 4096;
      break;
    case 'edge': {
      // straddle a block boundary by a few bytes to a few KiB
      const k = Math.max(1, Math.round(off / bs));
      off = Math.max(0, k * bs - (w.seed % 5000) - 1);
      break;
    }
    case 'tail':
      off = Math.max(0, size - len);
      break;
    case 'head':
      off = w.seed % 3 === 0 ? 0 : w.seed % 700;
      break;
  }
  off = Math.min(off, size - 1);
  len = Math.max(1, Math.min(len, size - off));
  return { offset: off, length: len };
}

function randomRanges(plan: Plan, size: number): Array<{ offset: number; length: number }> {
  return plan.reads.map((r) => {
    const offset = Math.min(size - 1, Math.floor((r.at / 2 ** 24) * size));
    return { offset, length: Math.max(1, Math.min(r.len, size - offset)) };
  });
}

/** Which bytes a layer is expected to hold after `writes` (ferry widens writes to 4 KiB groups). */
function expectedCoverage(kind: 'dynamic' | 'differencing', writes: Array<{ offset: number; length: number }>, size: number, bs: number) {
  const iv: Array<[number, number]> = [];
  for (const w of writes) {
    if (kind === 'dynamic') {
      // a dynamic block is allocated whole, every sector marked present
      for (let b = Math.floor(w.offset / bs); b * bs < w.offset + w.length; b++) iv.push([b * bs, Math.min((b + 1) * bs, size)]);
    } else {
      iv.push([Math.floor(w.offset / 4096) * 4096, Math.min(Math.ceil((w.offset + w.length) / 4096) * 4096, size)]);
    }
  }
  return normalize(iv);
}

/** Compares a chain to the oracle: whole disk and random ranges. */
async function checkChain(disk: Disk, oracle: Disk, ranges: Array<{ offset: number; length: number }>, what: string) {
  if (disk.size !== oracle.size) throw new Error(`${what}: size ${disk.size}, expected ${oracle.size}`);
  const into = (disk as Disk & { readInto?: (out: Buffer, offset: number) => Promise<void> }).readInto?.bind(disk);
  for (const r of ranges) {
    const want = await oracle.read(r.offset, r.length);
    assertSame(await disk.read(r.offset, r.length), want, `${what}, range ${r.offset}+${r.length}`, r.offset);
    if (into) {
      // readInto must write every byte: a buffer full of garbage comes back equal too
      const dirty = Buffer.alloc(r.length, 0xa5);
      await into(dirty, r.offset);
      assertSame(dirty, want, `${what}, readInto a dirty buffer, range ${r.offset}+${r.length}`, r.offset);
    }
  }
  assertSame(await readAll(disk), await readAll(oracle), `${what}, whole disk`);
}

function layerPath(dir: string, k: number): string {
  return join(dir, `layer${k}.vhd`);
}

/** The whole property: build, check after every layer, merge down, check after every merge. */
async function chainProperty(plan: Plan, dir: string, stats: { writes: number; merges: number; fixedBases?: number }): Promise<void> {
  if (plan.base === 'fixed') stats.fixedBases = (stats.fixedBases ?? 0) + 1;
  const size = plan.size;
  // a fixed disk has no blocks of its own: ferry presents 2 MiB units, and its children use them
  const bs = plan.base === 'fixed' ? BS : plan.blockSize;
  const mems: MemDisk[] = [];
  const coverage: Array<Array<[number, number]>> = [];
  const ranges = randomRanges(plan, size);

  for (let k = 0; k < plan.layers.length; k++) {
    const path = layerPath(dir, k);
    if (k === 0) await createVhd(path, { size, type: plan.base, blockSize: bs });
    else await createDifferencing(path, layerPath(dir, k - 1));
    const mem = new MemDisk(size, { blockSize: bs, parent: k === 0 ? null : mems[k - 1], name: `oracle${k}` });
    mems.push(mem);
    const placed = plan.layers[k].map((w) => ({ ...place(w, size, bs), w }));

    const top = await openChain(path, { writable: true });
    try {
      if (top.size !== size || top.blockSize !== bs) throw new Error(`layer ${k}: size ${top.size}/${top.blockSize}, created with ${size}/${bs}`);
      for (const { offset, length, w } of placed) {
        const data = pattern(length, w.seed, w.fill);
        await top.write(offset, data);
        await mem.write(offset, data);
        stats.writes++;
        // read back through the same (still open) chain: caches must agree with the file
        assertSame(await top.read(offset, length), data, `layer ${k}, read back of ${offset}+${length}`, offset);
      }
      await checkChain(top, mem, ranges, `layer ${k} (open for writing)`);
    } finally {
      await top.close();
    }

    // Reopened from the files: what was written is what is there.
    const ro = await openChain(path);
    try {
      await checkChain(ro, mem, ranges, `layer ${k} (reopened)`);
      for (let i = 0; i < ro.blockCount; i++) {
        if (ro.hasBlock(i) !== (mem.hasBlock(i) || (k === 0 && plan.base === 'fixed'))) throw new Error(`layer ${k}: hasBlock(${i}) is ${ro.hasBlock(i)}, oracle ${mem.hasBlock(i)}`);
      }
      const want =
        k === 0 && plan.base === 'fixed' ? normalize([[0, size]]) : expectedCoverage(k === 0 ? 'dynamic' : 'differencing', placed, size, bs);
      const got = await ownCoverage(ro);
      if (fmtIv(got) !== fmtIv(want)) throw new Error(`layer ${k}: ownExtents cover ${fmtIv(got)}, expected ${fmtIv(want)}`);
      coverage.push(want);
      // every lower layer still reads as its oracle (children never touch parents)
      if (k > 0) {
        const below = await openChain(layerPath(dir, k - 1));
        try {
          await checkChain(below, mems[k - 1], ranges.slice(0, 2), `layer ${k - 1} under layer ${k}`);
        } finally {
          await below.close();
        }
      }
    } finally {
      await ro.close();
    }
  }

  // Export flattens the chain: raw, fixed and dynamic all read as the oracle.
  const flat = await readAll(mems[mems.length - 1]);
  const top = await openChain(layerPath(dir, plan.layers.length - 1));
  try {
    const kind = (['raw', 'fixed', 'dynamic'] as const)[plan.layers.length % 3];
    const out = join(dir, `export.${kind}`);
    await exportDisk(top, out, kind);
    if (kind === 'raw') assertSame(await readFile(out), flat, 'raw export');
    else {
      const e = await VhdDisk.open(out);
      try {
        if (e.type !== kind) throw new Error(`export as ${kind} made a ${e.type} disk`);
        assertSame(await readAll(e), flat, `${kind} export`);
      } finally {
        await e.close();
      }
    }
    await rm(out);
  } finally {
    await top.close();
  }

  // Merge down: top into its parent, then that parent into its own, ...
  for (let j = plan.layers.length - 1; j >= 1; j--) {
    const child = layerPath(dir, j);
    const parent = layerPath(dir, j - 1);
    const r = await mergeVhd(child);
    stats.merges++;
    if (r.resumedAt !== 0) throw new Error(`merge of layer ${j} resumed at ${r.resumedAt} without a journal`);
    if (await exists(journalPath(child))) throw new Error(`merge of layer ${j} left its journal behind`);
    if (j === plan.layers.length - 1) {
      // idempotent: merging the same child again changes nothing
      await mergeVhd(child);
    }
    const p = await openChain(parent);
    try {
      assertSame(await readAll(p), flat, `after merging layer ${j} into layer ${j - 1}`);
      for (const rg of ranges) assertSame(await p.read(rg.offset, rg.length), flat.subarray(rg.offset, rg.offset + rg.length), `after merge ${j}, range`, rg.offset);
      const want =
        j - 1 === 0
          ? normalize([...coverage[0], ...coverage[j].flatMap(([a, b]) => expectedCoverage('dynamic', [{ offset: a, length: b - a }], size, bs))])
          : normalize([...coverage[j - 1], ...coverage[j]]);
      const got = await ownCoverage(p);
      if (fmtIv(got) !== fmtIv(want)) throw new Error(`after merge ${j}: layer ${j - 1} covers ${fmtIv(got)}, expected ${fmtIv(want)}`);
      coverage[j - 1] = want;
    } finally {
      await p.close();
    }
    // the merged child is still a valid disk over its (now fuller) parent
    const c = await openChain(child);
    try {
      assertSame(await readAll(c), flat, `layer ${j} after its merge`);
    } finally {
      await c.close();
    }
  }
}

// ---------------------------------------------------------------- chains

const RANDOM_RUNS = Number(process.env.FERRY_PROP_RUNS ?? 4);

for (const [label, params] of [
  ['fixed seed', { seed: 20261123, numRuns: 10 }],
  ['random seed', { numRuns: RANDOM_RUNS }],
] as const) {
  test(`chains of 3-5 disks read as the MemDisk oracle after every layer and every merge (${label})`, async (t) => {
    const stats = { writes: 0, merges: 0, runs: 0, fixedBases: 0 };
    const seed = 'seed' in params ? params.seed : Date.now() ^ (process.pid << 8);
    t.log(`fast-check seed ${seed}`);
    await fc.assert(
      fc.asyncProperty(planArb, async (plan) => {
        stats.runs++;
        await withDir((dir) => chainProperty(plan, dir, stats));
      }),
      { seed, numRuns: params.numRuns, endOnFailure: false },
    );
    t.log(`${stats.runs} runs (${stats.fixedBases} over a fixed base), ${stats.writes} writes, ${stats.merges} merges`);
    t.pass();
  });
}

test('the merged base of a chain reads the same in qemu-img', async (t) => {
  const probe = await run('qemu-img', ['--version']).catch(() => null);
  if (!probe || probe.code !== 0) {
    t.log('qemu-img not installed: skipped');
    t.pass();
    return;
  }
  const plan = fc.sample(planArb, { seed: 7, numRuns: 1 })[0];
  await withDir(async (dir) => {
    await chainProperty(plan, dir, { writes: 0, merges: 0 });
    const base = await openChain(layerPath(dir, 0));
    const raw = join(dir, 'flat.raw');
    try {
      t.is(base.type, plan.base);
      await writeFile(raw, await readAll(base));
    } finally {
      await base.close();
    }
    const r = await run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', layerPath(dir, 0), raw]);
    t.is(r.code, 0, r.stdout.toString() + r.stderr);
  });
});

// ---------------------------------------------------------------- crashes

/** A fixed 3-disk chain (base, mid, top) with data scattered over many blocks. */
async function crashChain(dir: string, seed: number): Promise<{ size: number; expected: Map<string, Buffer> }> {
  const size = 24 * MiB + 3 * 512; // 13 blocks, the last one short
  const rnd = fc.sample(fc.array(writeArb, { minLength: 40, maxLength: 40 }), { seed, numRuns: 3 });
  for (let k = 0; k < 3; k++) {
    const path = layerPath(dir, k);
    if (k === 0) await createVhd(path, { size, type: 'dynamic' });
    else await createDifferencing(path, layerPath(dir, k - 1));
    const d = await openChain(path, { writable: true });
    try {
      for (const w of rnd[k]) {
        const { offset, length } = place({ ...w, len: Math.min(w.len, 300 * KiB) }, size);
        await d.write(offset, pattern(length, w.seed, w.fill));
      }
    } finally {
      await d.close();
    }
  }
  const expected = new Map<string, Buffer>();
  for (let k = 0; k < 3; k++) {
    const d = await openChain(layerPath(dir, k));
    try {
      expected.set(layerPath(dir, k), await readAll(d));
    } finally {
      await d.close();
    }
  }
  return { size, expected };
}

class InjectedCrash extends Error {}

/**
 * Arms a crash: the `after`-th write into the file at `path` lands only a
 * sector-aligned prefix (maybe nothing) and throws. Disk sectors are written
 * whole or not at all; nothing smaller is torn.
 */
function crashAfter(path: string, after: number, tornSeed: number): { writes: () => number; restore: () => void } {
  const proto = FileStorage.prototype as unknown as { write: (position: number, data: Buffer) => Promise<void> };
  const original = proto.write;
  let n = 0;
  proto.write = async function (this: FileStorage, position: number, data: Buffer): Promise<void> {
    if (this.name !== path) return original.call(this, position, data);
    if (n++ === after) {
      const firstBoundary = Math.ceil(position / 512) * 512 - position;
      const boundaries: number[] = [0];
      for (let b = firstBoundary; b < data.length; b += 512) if (b > 0) boundaries.push(b);
      const keep = boundaries[tornSeed % boundaries.length];
      if (keep > 0) await original.call(this, position, data.subarray(0, keep));
      throw new InjectedCrash(`injected crash at write ${after} (${keep} of ${data.length} bytes landed)`);
    }
    return original.call(this, position, data);
  };
  return { writes: () => n, restore: () => (proto.write = original) };
}

/** A VhdStorage that crashes the same way, for driving coalesce() directly. */
class CrashingStorage implements VhdStorage {
  private n = 0;
  constructor(
    private readonly inner: FileStorage,
    private readonly after: number,
    private readonly tornSeed: number,
  ) {}
  get name() {
    return this.inner.name;
  }
  get writable() {
    return this.inner.writable;
  }
  size() {
    return this.inner.size();
  }
  read(position: number, length: number) {
    return this.inner.read(position, length);
  }
  async write(position: number, data: Buffer): Promise<void> {
    if (this.n++ === this.after) {
      const keep = Math.floor(((this.tornSeed % 1000) / 1000) * Math.floor(data.length / 512)) * 512;
      if (keep > 0 && position % 512 === 0) await this.inner.write(position, data.subarray(0, keep));
      throw new InjectedCrash(`injected crash in coalesce at write ${this.after}`);
    }
    return this.inner.write(position, data);
  }
  sync() {
    return this.inner.sync();
  }
  close() {
    return this.inner.close();
  }
}

async function expectChain(t: ExecutionContext, path: string, expected: Buffer, what: string): Promise<void> {
  const d = await openChain(path);
  try {
    assertSame(await readAll(d), expected, what);
  } finally {
    await d.close();
  }
  t.pass();
}

test('a merge crashed in-process at a random write (torn at a sector) and run again ends equal', async (t) => {
  const rng = fc.sample(fc.tuple(fc.integer({ min: 0, max: 1 }), fc.nat(), fc.nat(), fc.integer({ min: 1, max: 3 })), { seed: 4242, numRuns: 24 });
  let crashed = 0;
  let completedAnyway = 0;
  await withDir(async (dir) => {
    const pristine = join(dir, 'pristine');
    const { expected } = await crashChain(dir, 99);
    // keep pristine copies to restart each trial from the unmerged chain
    await rm(pristine, { recursive: true, force: true });
    await mkdirP(pristine);
    for (let k = 0; k < 3; k++) await copyFile(layerPath(dir, k), join(pristine, `layer${k}.vhd`));
    // how many parent writes a clean merge makes, to aim the crashes
    const cleanWrites = new Map<number, number>();
    for (const target of [1, 2]) {
      const probe = crashAfter(layerPath(dir, target - 1), Number.MAX_SAFE_INTEGER, 0);
      try {
        await mergeVhd(layerPath(dir, target));
      } finally {
        probe.restore();
      }
      cleanWrites.set(target, probe.writes());
      for (let k = 0; k < 3; k++) await copyFile(join(pristine, `layer${k}.vhd`), layerPath(dir, k));
    }
    t.log(`a clean merge makes ${cleanWrites.get(2)} writes into layer1 and ${cleanWrites.get(1)} into layer0`);

    for (const [which, a, b, crashes] of rng) {
      const target = which + 1; // merge layer2 into layer1, or layer1 into layer0
      const child = layerPath(dir, target);
      const parent = layerPath(dir, target - 1);
      for (let k = 0; k < 3; k++) await copyFile(join(pristine, `layer${k}.vhd`), layerPath(dir, k));
      await rm(journalPath(child), { force: true });
      for (let c = 0; c < crashes; c++) {
        const after = (a + c * 7919) % (cleanWrites.get(target)! + 2);
        const arm = crashAfter(parent, after, b + c);
        try {
          await mergeVhd(child);
          completedAnyway++;
        } catch (err) {
          if (!(err instanceof InjectedCrash)) throw err;
          crashed++;
        } finally {
          arm.restore();
        }
        // at any instant the chain through the child reads as before the merge
        await expectChain(t, child, expected.get(child)!, `chain of layer${target} after crash ${c} at write ${after}`);
        await expectChain(t, layerPath(dir, 2), expected.get(layerPath(dir, 2))!, `top chain after crash ${c}`);
        // and the parent still opens (a torn allocation is repaired or ignored)
        const p = await VhdDisk.open(parent);
        await p.close();
      }
      const r = await mergeVhd(child);
      t.false(await exists(journalPath(child)));
      await expectChain(t, parent, expected.get(child)!, `layer${target - 1} after the merge finished (resumed at ${r.resumedAt})`);
      await expectChain(t, layerPath(dir, 2), expected.get(layerPath(dir, 2))!, 'top chain after the merge');
    }
  });
  t.log(`${crashed} injected crashes, ${completedAnyway} merges finished before their crash point`);
  t.true(crashed >= rng.length);
});

test('coalesce() crashed at a random write, then mergeVhd, ends equal', async (t) => {
  const rng = fc.sample(fc.tuple(fc.nat(), fc.nat()), { seed: 777, numRuns: 12 });
  await withDir(async (dir) => {
    const { expected } = await crashChain(dir, 5);
    const pristine = join(dir, 'pristine');
    await mkdirP(pristine);
    for (let k = 0; k < 3; k++) await copyFile(layerPath(dir, k), join(pristine, `layer${k}.vhd`));
    let crashed = 0;
    for (const [a, b] of rng) {
      for (let k = 0; k < 3; k++) await copyFile(join(pristine, `layer${k}.vhd`), layerPath(dir, k));
      const child = await openChain(layerPath(dir, 2));
      const ro = child.parent as VhdDisk;
      const storage = new CrashingStorage(await FileStorage.open(layerPath(dir, 1), true), a % 160, b);
      let parent: VhdDisk | undefined;
      try {
        parent = await VhdDisk.fromStorage(storage, { writable: true, parent: ro.parent });
        await ro.closeLayer();
        child.parent = parent;
        await coalesce(child, parent, { from: b % 3 === 0 ? 0 : undefined });
      } catch (err) {
        if (!(err instanceof InjectedCrash)) throw err;
        crashed++;
      } finally {
        await child.closeLayer();
        if (parent) await parent.close().catch(() => {});
      }
      await expectChain(t, layerPath(dir, 2), expected.get(layerPath(dir, 2))!, 'top chain after a crashed coalesce');
      await mergeVhd(layerPath(dir, 2));
      await expectChain(t, layerPath(dir, 1), expected.get(layerPath(dir, 2))!, 'layer1 after mergeVhd');
    }
    t.log(`${crashed} of ${rng.length} coalesce runs crashed`);
    t.true(crashed > 0);
  });
});

async function mkdirP(p: string): Promise<void> {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(p, { recursive: true });
}

// ---------------------------------------------------------------- real kills

function hashBlocks(buf: Buffer): string[] {
  const out: string[] = [];
  for (let o = 0; o < buf.length; o += BS) out.push(createHash('sha1').update(buf.subarray(o, Math.min(o + BS, buf.length))).digest('hex'));
  return out;
}

async function chainHashes(path: string): Promise<string[]> {
  const d = await openChain(path);
  try {
    const out: string[] = [];
    for (let o = 0; o < d.size; o += BS) out.push(createHash('sha1').update(await d.read(o, Math.min(BS, d.size - o))).digest('hex'));
    return out;
  } finally {
    await d.close();
  }
}

/**
 * Starts `ferry vhd merge`, SIGKILLs it `ms` after the start, or, with
 * `afterJournal`, `ms` after its journal file appears (so that some kills
 * surely land after a journal save and the rerun resumes from it).
 */
function mergeKilledAfter(child: string, ms: number, afterJournal = false): Promise<{ killed: boolean; code: number | null }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [FERRY, 'vhd', 'merge', '--quiet', child], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    let exited = false;
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    let timer = afterJournal ? undefined : setTimeout(() => p.kill('SIGKILL'), ms);
    const poll = afterJournal
      ? setInterval(() => {
          if (exited || timer) return;
          access(journalPath(child)).then(
            () => {
              if (!exited && !timer) timer = setTimeout(() => p.kill('SIGKILL'), ms);
            },
            () => {},
          );
        }, 2)
      : undefined;
    p.on('error', reject);
    p.on('exit', (code, signal) => {
      exited = true;
      clearTimeout(timer);
      clearInterval(poll);
      if (code !== null && code !== 0) reject(new Error(`ferry vhd merge exited ${code}: ${err}`));
      else resolve({ killed: signal === 'SIGKILL', code });
    });
  });
}

test('ferry vhd merge SIGKILLed at random instants and run again ends equal', async (t) => {
  await withDir(async (dir) => {
    // 150 blocks in the child: more than one journal save (every 64 blocks)
    const size = 300 * MiB + 7 * 512;
    const base = join(dir, 'base.vhd');
    const child = join(dir, 'child.vhd');
    await createVhd(base, { size, type: 'dynamic' });
    let d = await openChain(base, { writable: true });
    try {
      for (let b = 0; b < 150; b += 5) await d.write(b * BS + 4096, pattern(BS / 2, b + 1, 'random'));
    } finally {
      await d.close();
    }
    await createDifferencing(child, base);
    d = await openChain(child, { writable: true });
    const writes = fc.sample(fc.tuple(fc.nat(BS - 1), fc.integer({ min: 1, max: 200 * KiB }), fc.nat()), { seed: 31337, numRuns: 151 * 3 });
    try {
      for (let b = 0; b < 151; b++) {
        for (let k = 0; k < 3; k++) {
          const [inBlock, len, s] = writes[b * 3 + k];
          const off = Math.min(b * BS + inBlock, size - 1);
          await d.write(off, pattern(Math.min(len, size - off), s + 1, s % 5 === 0 ? 'zero' : 'random'));
        }
      }
    } finally {
      await d.close();
    }
    const pristineBase = join(dir, 'base.pristine');
    await copyFile(base, pristineBase);
    const expected = await chainHashes(child);
    const before = await chainHashes(base);
    t.notDeepEqual(expected, before);

    // A clean run, to aim the kills.
    const t0 = Date.now();
    const clean = await mergeKilledAfter(child, 120_000);
    const full = Date.now() - t0;
    t.false(clean.killed);
    t.deepEqual(await chainHashes(base), expected, 'clean merge');
    t.log(`a whole merge takes ${full} ms (node start included)`);

    const delays = fc.sample(fc.tuple(fc.integer({ min: 5, max: Math.max(250, full) }), fc.integer({ min: 5, max: Math.max(250, full) }), fc.boolean()), {
      seed: Number(process.env.FERRY_KILL_SEED ?? 2026),
      numRuns: 6,
    });
    // two more: killed 0-40 ms after the first journal save
    delays.push([3, 17, false], [25, 40, true]);
    let midMerge = 0;
    let resumed = 0;
    for (const trial of delays) {
      const [ms1, ms2, twice] = trial;
      await copyFile(pristineBase, base);
      await rm(journalPath(child), { force: true });
      const baseBefore = await stat(base);
      const afterJournal = delays.indexOf(trial) >= delays.length - 2;
      for (const ms of twice ? [ms1, ms2] : [ms1]) {
        const r = await mergeKilledAfter(child, ms, afterJournal && ms === ms1);
        if (!r.killed) continue;
        const st = await stat(base);
        if (st.size !== baseBefore.size || st.mtimeMs !== baseBefore.mtimeMs) midMerge++;
        // a killed merge leaves a parent that opens and a chain that reads as before
        const p = await VhdDisk.open(base);
        await p.close();
        const c = await openChain(child);
        try {
          for (const bi of [0, 5, 64, 65, 100, 150]) {
            const o = bi * BS;
            const h = createHash('sha1').update(await c.read(o, Math.min(BS, size - o))).digest('hex');
            t.is(h, expected[bi], `child chain block ${bi} after a kill at ${ms} ms`);
          }
        } finally {
          await c.close();
        }
      }
      const hadJournal = await exists(journalPath(child));
      t.log(`kill(s) at ${twice ? [ms1, ms2] : [ms1]} ms: journal ${hadJournal ? "present" : "absent"}`);
      const fin = await run(process.execPath, [FERRY, 'vhd', 'merge', '--json', child]);
      t.is(fin.code, 0, fin.stderr);
      const res = JSON.parse(fin.stdout.toString()) as { resumedAt: number };
      if (res.resumedAt > 0) resumed++;
      if (afterJournal) t.true(res.resumedAt >= 64, `killed after a journal save, the rerun resumed at ${res.resumedAt}`);
      if (hadJournal) t.true(res.resumedAt > 0, 'a journal left by a kill is used');
      t.false(await exists(journalPath(child)));
      const got = await chainHashes(base);
      const bad = got.findIndex((h, i) => h !== expected[i]);
      t.is(bad, -1, `parent block ${bad} differs after kill(s) at ${twice ? [ms1, ms2] : [ms1]} ms and a rerun`);
    }
    t.log(`${delays.length} trials: ${midMerge} kills landed after the parent was touched, ${resumed} reruns resumed from a journal`);
  });
});

// ---------------------------------------------------------------- the streaming writer

test('writeVhd asks for every block once, in order, a few at a time, and a failing block leaves nothing behind', async (t) => {
  await withDir(async (dir) => {
    for (const type of ['dynamic', 'fixed'] as const) {
      const size = 20 * MiB + 512;
      const calls: number[] = [];
      let inFlight = 0;
      let maxInFlight = 0;
      const blockAt = async (i: number) => {
        calls.push(i);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise((r) => setTimeout(r, 1 + (i % 3)));
        inFlight--;
        const len = Math.min(BS, size - i * BS);
        return i % 3 === 1 ? Buffer.alloc(len) : i % 3 === 2 ? null : pattern(len, i + 1, 'random');
      };
      const path = join(dir, `ok-${type}.vhd`);
      await writeVhd(path, { size, type }, blockAt);
      t.deepEqual(calls, [...Array(11).keys()], `${type}: every block once, in order`);
      t.true(maxInFlight > 1 && maxInFlight <= READ_AHEAD + 1, `${type}: ${maxInFlight} source reads at once`);
      const d = await VhdDisk.open(path);
      try {
        for (let i = 0; i < 11; i++) {
          const len = Math.min(BS, size - i * BS);
          const want = i % 3 === 0 ? pattern(len, i + 1, 'random') : Buffer.alloc(len);
          assertSame(await d.read(i * BS, len), want, `${type} block ${i}`);
        }
      } finally {
        await d.close();
      }
      if (type === 'fixed') {
        // zero blocks are holes: about 4 of 11 blocks hold data
        const st = await stat(path);
        t.true(st.blocks * 512 < 9 * BS, `fixed file of ${st.size} bytes occupies ${st.blocks * 512}`);
      }
      // a source that fails at block 5 (while blocks 6.. may be queued): the
      // error surfaces, no temporary file stays, nothing is left unhandled
      const bad = join(dir, `bad-${type}.vhd`);
      const err = await t.throwsAsync(
        writeVhd(bad, { size, type }, async (i) => {
          if (i === 5) throw new Error('source failed at block 5');
          return blockAt(i);
        }),
      );
      t.is(err?.message, 'source failed at block 5');
      await new Promise((r) => setTimeout(r, 30));
      t.deepEqual((await readdir(dir)).filter((f) => f.startsWith(`bad-${type}`)), []);
    }
  });
});

test('WriteQueue keeps at most its limit in flight and reports the first failure, never an unhandled one', async (t) => {
  const q = new WriteQueue(3);
  let inFlight = 0;
  let most = 0;
  const write = (ms: number, fail?: string) =>
    (async () => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, ms));
      inFlight--;
      if (fail) throw new Error(fail);
    })();
  for (let i = 0; i < 10; i++) await q.add(write(1 + (i % 4)));
  await q.drain();
  t.true(most <= 3, `${most} writes in flight`);
  // a failure surfaces from add() or drain(), the first one wins
  let caught: unknown;
  try {
    await q.add(write(5, 'first'));
    await q.add(write(1, 'second'));
    await q.drain();
  } catch (err) {
    caught = err;
  }
  t.is((caught as Error)?.message, 'second'); // it failed first
  await q.settle();
  await new Promise((r) => setTimeout(r, 20));
  t.is(inFlight, 0);
});

// FerryError is what every failure above must be when it is not an injected crash.
test('mergeVhd of a disk that is not differencing is a FerryError', async (t) => {
  await withDir(async (dir) => {
    const p = join(dir, 'd.vhd');
    await createVhd(p, { size: 4 * MiB, type: 'dynamic' });
    const err = await t.throwsAsync(mergeVhd(p));
    t.true(err instanceof FerryError, String(err));
  });
});
