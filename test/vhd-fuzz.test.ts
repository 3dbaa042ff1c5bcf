// Fuzzing the VHD decoder and reader: thousands of damaged copies of real
// VHDs (made by ferry, by qemu-img/qemu-io, and by other tools in
// fixtures/vhd-samples), each opened and read. Every case must end in one
// of two ways: a FerryError (any other exception is a bug), or reads that
// return exactly the bytes asked for. No case may hang or allocate far more
// than the file holds. When the damage only touched bytes that do not shape
// the data (timestamps, creator, checksums, reserved bytes, the copy of a
// footer that is intact at the end ...), the disk must read exactly as
// before; when it touched one data byte, exactly that byte must change.
//
// Mutations are made in memory and each case is written to tmpfs. Every
// case draws from its own seeded generator: FERRY_FUZZ_SEED and
// FERRY_FUZZ_CASES reproduce or widen a run; a failure names its case.
import test from 'ava';
import { readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryError } from '../format/errors.js';
import { type Decoded, VhdDisk, createDifferencing, createVhd, decodeVhd, inspectVhd, openChain, writeVhd } from '../format/vhd/index.js';
import { FooterStruct, HeaderStruct, LocatorStruct, SECTOR, UNUSED, bitmapSize } from '../format/vhd/layout.js';
import { SAMPLES, must, run } from './helpers/exec.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = Number(process.env.FERRY_FUZZ_SEED ?? 0x5eed);
const TOTAL_CASES = Number(process.env.FERRY_FUZZ_CASES ?? 3000);
const CASE_TIMEOUT_MS = 10_000;

// ------------------------------------------------------------ randomness

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

function bytes(rng: Rng, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rng.int(256);
  return b;
}

// ------------------------------------------------------------ allocation watch

// Every Buffer the engine allocates goes through these. The samples are a few
// MiB and no read asks for more than 32 MiB, so nothing legitimate allocates
// more than ALLOC_LIMIT; anything bigger is recorded with the cases running.
const ALLOC_LIMIT = 40 * MiB;
const running = new Set<string>();
const bigAllocs: string[] = [];
let largestAlloc = 0;
for (const fn of ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const) {
  const orig = Buffer[fn] as (...a: unknown[]) => Buffer;
  (Buffer as unknown as Record<string, unknown>)[fn] = function (this: unknown, ...args: unknown[]) {
    const n = args[0] as number;
    if (typeof n === 'number') {
      if (n > largestAlloc) largestAlloc = n;
      if (n > ALLOC_LIMIT && bigAllocs.length < 20) bigAllocs.push(`${fn}(${n}) during ${[...running].join(', ')}: ${new Error().stack?.split('\n').slice(2, 5).join(' | ')}`);
    }
    return orig.apply(Buffer, args);
  };
}

// ------------------------------------------------------------ samples

type Role = 'top' | 'parent';

interface Sample {
  name: string;
  dir: string;
  /** The file that gets damaged. */
  target: string;
  role: Role;
  /** The file opened (the child when the target is a parent). */
  open: string;
  noParent?: boolean;
  pristine: Buffer;
  content: Buffer;
  decoded: Decoded;
  /** Byte ranges of the virtual disk that the child holds (role 'parent' only). */
  childHolds: Array<[number, number]>;
  /** The target layer opened clean has no problems (so damage to checksummed bytes must show). */
  cleanProblems: boolean;
}

class BufferSource {
  constructor(
    readonly name: string,
    private readonly buf: Buffer,
  ) {}
  async size(): Promise<number> {
    return this.buf.length;
  }
  async read(position: number, length: number): Promise<Buffer> {
    return this.buf.subarray(Math.min(position, this.buf.length), Math.min(position + length, this.buf.length));
  }
}

async function readChain(path: string, noParent?: boolean): Promise<{ content: Buffer; problems: number; parentProblems: number; holds: Array<[number, number]> }> {
  const d = await openChain(path, { noParent });
  try {
    const holds: Array<[number, number]> = [];
    for (let i = 0; i < d.blockCount; i++) for (const e of await d.ownExtents(i)) holds.push([e.offset, e.offset + e.length]);
    return {
      content: await d.read(0, d.size),
      problems: d.info.problems.length,
      parentProblems: d.parent ? (d.parent as VhdDisk).info.problems.length : 0,
      holds,
    };
  } finally {
    await d.close();
  }
}

function fill(len: number, seed: number): Buffer {
  const r = new Rng(seed);
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((r.float() * 2 ** 32) >>> 0, i - (i + 4 > len ? i + 4 - len : 0));
  return b;
}

async function ferryWrites(path: string, writes: Array<[number, number]>, seed: number): Promise<void> {
  const d = await openChain(path, { writable: true });
  try {
    for (const [off, len] of writes) await d.write(off, fill(len, seed++));
  } finally {
    await d.close();
  }
}

async function makeSamples(root: string): Promise<Sample[]> {
  const out: Sample[] = [];
  const have = async (cmd: string) => (await run(cmd, ['--version']).catch(() => ({ code: 1 }))).code === 0;
  const qemu = (await have('qemu-img')) && (await have('qemu-io'));

  const add = async (name: string, target: string, role: Role, open: string, opts: { noParent?: boolean } = {}) => {
    const dir = join(root, name);
    const pristine = await readFile(join(dir, target));
    const decoded = await decodeVhd(new BufferSource(join(dir, target), pristine));
    const r = await readChain(join(dir, open), opts.noParent);
    let childHolds: Array<[number, number]> = [];
    let cleanProblems = role === 'top' ? r.problems === 0 : r.parentProblems === 0;
    if (role === 'parent') childHolds = r.holds;
    if (opts.noParent) cleanProblems = false;
    out.push({ name, dir, target, role, open, noParent: opts.noParent, pristine, content: r.content, decoded, childHolds, cleanProblems });
  };
  const mk = async (name: string) => {
    const dir = join(root, name);
    await mkdir(dir, { recursive: true });
    return dir;
  };

  // ferry: dynamic written in place (block 1 of 4 absent, last block short)
  let dir = await mk('ferry-dynamic');
  await createVhd(join(dir, 'd.vhd'), { size: 6 * MiB + 2560, type: 'dynamic' });
  await ferryWrites(join(dir, 'd.vhd'), [[MiB - 3000, 100 * KiB], [6 * MiB + 2560 - 50 * KiB, 50 * KiB]], 1);
  await add('ferry-dynamic', 'd.vhd', 'top', 'd.vhd');

  // ferry: dynamic streamed by writeVhd (what create --from and export write)
  dir = await mk('ferry-streamed');
  await writeVhd(join(dir, 's.vhd'), { size: 5 * MiB + 512, type: 'dynamic' }, async (i) => (i === 1 ? null : fill(i === 2 ? MiB + 512 : 2 * MiB, 10 + i)));
  await add('ferry-streamed', 's.vhd', 'top', 's.vhd');

  // ferry: 64 KiB blocks, many of them
  dir = await mk('ferry-small-blocks');
  await createVhd(join(dir, 'b.vhd'), { size: 3 * MiB - 1024, type: 'dynamic', blockSize: 64 * KiB });
  await ferryWrites(join(dir, 'b.vhd'), [[1000, 5000], [200 * KiB, 130 * KiB], [3 * MiB - 1024 - 600, 600], [MiB + 7, 9]], 20);
  await add('ferry-small-blocks', 'b.vhd', 'top', 'b.vhd');

  // ferry: fixed
  dir = await mk('ferry-fixed');
  await writeVhd(join(dir, 'f.vhd'), { size: 3 * MiB + 1024, type: 'fixed' }, async (i) => fill(i === 1 ? MiB + 1024 : 2 * MiB, 30 + i));
  await add('ferry-fixed', 'f.vhd', 'top', 'f.vhd');

  // ferry: differencing child over a dynamic parent; damage the child, then the parent
  for (const role of ['top', 'parent'] as const) {
    const name = role === 'top' ? 'ferry-diff-child' : 'ferry-diff-parent';
    dir = await mk(name);
    const size = 6 * MiB + 2560;
    await createVhd(join(dir, 'parent.vhd'), { size, type: 'dynamic' });
    await ferryWrites(join(dir, 'parent.vhd'), [[0, 3 * MiB], [5 * MiB, 4096]], 40);
    await createDifferencing(join(dir, 'child.vhd'), join(dir, 'parent.vhd'));
    await ferryWrites(join(dir, 'child.vhd'), [[2 * MiB + 100, 3000], [3 * MiB - 5, 20], [4 * MiB + 64 * KiB, 128 * KiB], [size - 700, 700]], 50);
    await add(name, role === 'top' ? 'child.vhd' : 'parent.vhd', role, 'child.vhd');
  }

  if (qemu) {
    const writes = (w: Array<[number, string, string]>) => w.flatMap(([p, off, len]) => ['-c', `write -P ${p} ${off} ${len}`]);
    dir = await mk('qemu-dynamic');
    await must('qemu-img', ['create', '-q', '-f', 'vpc', join(dir, 'q.vhd'), '6M']);
    await must('qemu-io', ['-f', 'vpc', ...writes([[0xab, '512', '1024'], [0x11, '2047k', '4k'], [0x22, '5M', '8k']]), join(dir, 'q.vhd')]);
    await add('qemu-dynamic', 'q.vhd', 'top', 'q.vhd');

    dir = await mk('qemu-force-size');
    await must('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'force_size=on', join(dir, 'q.vhd'), '5000192']);
    await must('qemu-io', ['-f', 'vpc', ...writes([[0x5a, '0', '64k'], [0x6b, '4999680', '512']]), join(dir, 'q.vhd')]);
    await add('qemu-force-size', 'q.vhd', 'top', 'q.vhd');

    dir = await mk('qemu-fixed');
    await must('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', join(dir, 'q.vhd'), '3M']);
    await must('qemu-io', ['-f', 'vpc', ...writes([[0x77, '4096', '3000k']]), join(dir, 'q.vhd')]);
    await add('qemu-fixed', 'q.vhd', 'top', 'q.vhd');
  }

  // made by other tools (see fixtures/vhd-samples/README.md)
  const real: Array<[string, string[], string, { noParent?: boolean }]> = [
    ['real-ext2', ['ext2.vhd'], 'ext2.vhd', {}],
    ['real-image-differential', ['image.vhd', 'image-differential.vhd'], 'image-differential.vhd', {}],
    ['real-fat-differential', ['fat-differential.vhd'], 'fat-differential.vhd', { noParent: true }],
  ];
  for (const [name, files, target, opts] of real) {
    dir = await mk(name);
    try {
      for (const f of files) await copyFile(join(SAMPLES, f), join(dir, f));
    } catch {
      continue; // samples folder absent: fuzz what we have
    }
    await add(name, target, 'top', target, opts);
  }
  return out;
}

// ------------------------------------------------------------ what a byte is

/** neutral: must read the same; benign: same or a FerryError; data: that virtual byte changes; other: anything clean. */
type ByteClass = { k: 'neutral' } | { k: 'benign' } | { k: 'data'; virt: number } | { k: 'other' };

const NEUTRAL: ByteClass = { k: 'neutral' };
const BENIGN: ByteClass = { k: 'benign' };
const OTHER: ByteClass = { k: 'other' };

function inRanges(v: number, rs: Array<[number, number]>): boolean {
  return rs.some(([a, b]) => v >= a && v < b);
}

function bit(bm: Buffer, i: number): boolean {
  return (bm[i >> 3] & (0x80 >> (i & 7))) !== 0;
}

function footerByte(rel: number, s: Sample, atEnd: boolean): ByteClass {
  const fixed = s.decoded.type === 'fixed';
  if (rel < 8) return atEnd && !fixed ? NEUTRAL /* the copy at 0 takes over */ : OTHER;
  if (rel < 16) return BENIGN; // features, version: ferry warns at most
  if (rel < 24) return fixed ? BENIGN : OTHER; // data offset: unused by fixed disks
  if (rel < 48) return NEUTRAL; // timestamp, creator app/version/os, original size
  if (rel < 56) return OTHER; // current size
  if (rel < 60) return NEUTRAL; // geometry: ferry goes by the byte size
  if (rel < 64) return OTHER; // disk type
  if (rel < 68) return NEUTRAL; // checksum
  if (rel < 84) return s.role === 'top' ? NEUTRAL : OTHER; // unique id: a child checks its parent's
  return NEUTRAL; // saved state, reserved
}

function headerByte(rel: number, s: Sample): ByteClass {
  const diff = s.decoded.type === 'differencing';
  if (rel < 8) return OTHER; // cookie
  if (rel < 16) return BENIGN; // data offset (unused, all ones)
  if (rel < 24) return OTHER; // table offset
  if (rel < 28) return BENIGN; // version
  if (rel < 36) return OTHER; // max table entries, block size
  if (rel < 40) return NEUTRAL; // checksum
  if (rel < 56) return diff ? OTHER : NEUTRAL; // parent unique id
  if (rel < 64) return NEUTRAL; // parent timestamp, reserved
  if (rel < 768) return diff ? OTHER : NEUTRAL; // parent name, locators
  return NEUTRAL; // reserved
}

function classify(off: number, s: Sample): ByteClass {
  const d = s.decoded;
  const size = d.size!;
  if (d.type === 'fixed') {
    if (off < size) return { k: 'data', virt: off };
    if (off >= d.footerOffset! && off < d.footerOffset! + SECTOR) return footerByte(off - d.footerOffset!, s, true);
    return NEUTRAL;
  }
  const fo = d.footerAtEnd ? d.footerOffset! : -1;
  if (off >= fo && fo >= 0 && off < fo + SECTOR) return footerByte(off - fo, s, true);
  if (off < SECTOR) return d.footerAtEnd ? NEUTRAL : footerByte(off, s, false);
  const ho = d.headerOffset!;
  if (off >= ho && off < ho + 1024) return headerByte(off - ho, s);
  const bs = d.blockSize!;
  const needed = Math.ceil(size / bs);
  const to = Number(d.header!.tableOffset);
  if (off >= to && off < to + d.bat!.length * 4) return Math.floor((off - to) / 4) < needed ? OTHER : NEUTRAL;
  for (const l of d.locators) {
    const lo = Number(l.dataOffset);
    if (off >= lo && off < lo + l.dataLength) return OTHER;
  }
  const bmBytes = bitmapSize(bs);
  for (let i = 0; i < Math.min(needed, d.bat!.length); i++) {
    if (d.bat![i] === UNUSED) continue;
    const pos = d.bat![i] * SECTOR;
    if (off < pos || off >= pos + bmBytes + bs) continue;
    if (off < pos + bmBytes) {
      const firstSector = (off - pos) * 8;
      return i * bs + firstSector * SECTOR < size ? OTHER : NEUTRAL;
    }
    const inBlock = off - pos - bmBytes;
    const virt = i * bs + inBlock;
    if (virt >= size) return NEUTRAL;
    const bm = s.pristine.subarray(pos, pos + bmBytes);
    if (!bit(bm, Math.floor(inBlock / SECTOR))) return NEUTRAL; // not present here: reads the parent, or zeros
    if (s.role === 'parent' && inRanges(virt, s.childHolds)) return NEUTRAL; // hidden by the child
    return { k: 'data', virt };
  }
  return NEUTRAL; // bytes no structure points to
}

// ------------------------------------------------------------ mutations

interface Mutation {
  describe: string;
  apply(buf: Buffer): Buffer;
  /** File offsets whose bytes change (for classification); undefined: classify as 'other'. */
  touched?: number[];
  /** Extension of a dynamic disk's file: the copy at 0 takes over, reads the same. */
  appended?: boolean;
  /** One byte changed inside the footer, its copy or the dynamic header. */
  checksummed?: boolean;
}

interface Region {
  name: string;
  start: number;
  end: number;
}

function regions(s: Sample): Region[] {
  const d = s.decoded;
  const len = s.pristine.length;
  const out: Region[] = [{ name: 'footer', start: d.footerOffset!, end: d.footerOffset! + SECTOR }];
  if (d.type === 'fixed') return out;
  out.push({ name: 'footer copy', start: 0, end: SECTOR });
  out.push({ name: 'header', start: d.headerOffset!, end: d.headerOffset! + 1024 });
  const to = Number(d.header!.tableOffset);
  out.push({ name: 'bat', start: to, end: Math.min(len, to + Math.max(4, d.bat!.length * 4)) });
  for (const l of d.locators) out.push({ name: `locator ${l.index}`, start: Number(l.dataOffset), end: Number(l.dataOffset) + Math.max(1, l.dataLength) });
  const bm = bitmapSize(d.blockSize!);
  for (let i = 0; i < d.bat!.length; i++) {
    if (d.bat![i] !== UNUSED) out.push({ name: `bitmap ${i}`, start: d.bat![i] * SECTOR, end: d.bat![i] * SECTOR + bm });
  }
  return out;
}

interface FieldRef {
  where: string;
  offset: number;
  size: number;
}

function fields(s: Sample): FieldRef[] {
  const d = s.decoded;
  const out: FieldRef[] = [];
  for (const f of FooterStruct.fields) {
    out.push({ where: `footer.${f.name}`, offset: d.footerOffset! + f.offset, size: f.size });
    if (d.type !== 'fixed') out.push({ where: `footer copy.${f.name}`, offset: f.offset, size: f.size });
  }
  if (d.type === 'fixed') return out;
  const ho = d.headerOffset!;
  for (const f of HeaderStruct.fields) if (f.type !== 'bytes' || f.size <= 16) out.push({ where: `header.${f.name}`, offset: ho + f.offset, size: f.size });
  for (let i = 0; i < 8; i++) {
    for (const f of LocatorStruct.fields) out.push({ where: `header.locators[${i}].${f.name}`, offset: ho + 576 + i * 24 + f.offset, size: f.size });
  }
  const to = Number(d.header!.tableOffset);
  for (let i = 0; i < d.bat!.length; i++) out.push({ where: `bat[${i}]`, offset: to + i * 4, size: 4 });
  return out;
}

function boundaryValue(rng: Rng, size: number, s: Sample): bigint {
  const len = BigInt(s.pristine.length);
  const bits = BigInt(size * 8);
  const max = (1n << bits) - 1n;
  const cands: bigint[] = [0n, 1n, max, max - 1n, max >> 1n, (max >> 1n) + 1n, 0x200n, 0x1000n, len, len - 512n, len + 512n, len / 512n, len / 512n + 1n];
  if (size >= 4) cands.push(0xffffffffn, 0x7fffffffn, 0x80000000n, 0x00200000n, 0x01000000n, 0xffffff00n);
  if (size >= 8) cands.push(1n << 53n, (1n << 53n) + 512n, 1n << 63n, 0xff000000n * 512n, 0xff000000n * 512n + 512n, 1n << 40n);
  return BigInt.asUintN(size * 8, rng.pick(cands));
}

function setField(buf: Buffer, offset: number, size: number, v: bigint): number[] {
  const touched: number[] = [];
  for (let i = size - 1; i >= 0; i--) {
    if (offset + i < buf.length) {
      const b = Number(v & 0xffn);
      if (buf[offset + i] !== b) touched.push(offset + i);
      buf[offset + i] = b;
    }
    v >>= 8n;
  }
  return touched;
}

function pickInRegion(rng: Rng, s: Sample): number {
  const rs = regions(s);
  const len = s.pristine.length;
  const r = rng.chance(0.1) ? { name: 'anywhere', start: 0, end: len } : rng.pick(rs);
  return Math.min(len - 1, r.start + rng.int(Math.max(1, r.end - r.start)));
}

function isChecksummed(off: number, s: Sample): boolean {
  const d = s.decoded;
  if (off >= d.footerOffset! && off < d.footerOffset! + SECTOR) return true;
  if (d.type === 'fixed') return false;
  return off < SECTOR || (off >= d.headerOffset! && off < d.headerOffset! + 1024);
}

function makeMutation(rng: Rng, s: Sample): Mutation {
  const len = s.pristine.length;
  const roll = rng.int(100);
  if (roll < 30) {
    // one random byte in a structure
    const off = pickInRegion(rng, s);
    let v = rng.int(256);
    if (v === s.pristine[off]) v = (v + 1) & 0xff;
    return {
      describe: `byte ${off} := 0x${v.toString(16)}`,
      touched: [off],
      checksummed: isChecksummed(off, s),
      apply: (b) => ((b[off] = v), b),
    };
  }
  if (roll < 45) {
    const off = pickInRegion(rng, s);
    const m = 1 << rng.int(8);
    return { describe: `bit flip ${off} ^ 0x${m.toString(16)}`, touched: [off], checksummed: isChecksummed(off, s), apply: (b) => ((b[off] ^= m), b) };
  }
  if (roll < 68) {
    // a whole field set to a boundary value
    const f = rng.pick(fields(s));
    const v = boundaryValue(rng, Math.min(f.size, 8), s);
    let touched: number[] = [];
    return {
      describe: `${f.where} (${f.offset}, ${f.size} bytes) := 0x${v.toString(16)}`,
      get touched() {
        return touched;
      },
      apply: (b) => {
        touched = setField(b, f.offset, Math.min(f.size, 8), v);
        return b;
      },
    };
  }
  if (roll < 76) {
    // several bytes at once
    const n = rng.range(2, 9);
    const offs = Array.from({ length: n }, () => pickInRegion(rng, s));
    const vals = offs.map(() => rng.int(256));
    let touched: number[] = [];
    return {
      describe: `bytes ${offs.map((o, i) => `${o}:=0x${vals[i].toString(16)}`).join(' ')}`,
      get touched() {
        return touched;
      },
      apply: (b) => {
        touched = [];
        offs.forEach((o, i) => {
          if (b[o] !== vals[i]) touched.push(o);
          b[o] = vals[i];
        });
        return b;
      },
    };
  }
  if (roll < 86) {
    // truncation: near structure edges or anywhere
    const r = rng.pick(regions(s));
    const cut = rng.chance(0.5) ? Math.max(0, Math.min(len - 1, rng.pick([r.start, r.end, r.start + 1, r.end - 1, r.start + 4, len - 1, len - 511, len - 512, len - 513]))) : rng.int(len);
    return { describe: `truncate to ${cut}`, apply: (b) => b.subarray(0, cut) };
  }
  if (roll < 90) {
    const n = rng.pick([1, 7, 511, 512, 1024, 4096, 3 * 512 + 3]);
    const junk = rng.chance(0.5) ? Buffer.alloc(n) : bytes(rng, n);
    return { describe: `append ${n} ${junk.some((x) => x) ? 'random' : 'zero'} bytes`, appended: true, apply: (b) => Buffer.concat([b, junk]) };
  }
  if (roll < 95) {
    // a whole sector of a structure zeroed or set to 0xFF
    const r = rng.pick(regions(s));
    const v = rng.pick([0, 0xff]);
    const end = Math.min(len, r.start + SECTOR);
    let touched: number[] = [];
    return {
      describe: `${r.name} sector at ${r.start} filled with 0x${v.toString(16)}`,
      get touched() {
        return touched;
      },
      apply: (b) => {
        touched = [];
        for (let o = r.start; o < end; o++) {
          if (b[o] !== v) touched.push(o);
          b[o] = v;
        }
        return b;
      },
    };
  }
  // a byte of block data, or of a fixed disk's data
  const d = s.decoded;
  let off: number;
  if (d.type === 'fixed') off = rng.int(d.size!);
  else {
    const used = [...d.bat!].map((e, i) => [e, i]).filter(([e]) => e !== UNUSED);
    if (used.length === 0) off = rng.int(len);
    else {
      const [e] = rng.pick(used);
      off = Math.min(len - 1, e * SECTOR + bitmapSize(d.blockSize!) + rng.int(d.blockSize!));
    }
  }
  const v = (s.pristine[off] + 1 + rng.int(255)) & 0xff;
  return { describe: `data byte ${off} := 0x${v.toString(16)}`, touched: [off], apply: (b) => ((b[off] = v), b) };
}

/** What the read must look like after `m`. */
function expectation(m: Mutation, s: Sample): { k: 'neutral' | 'benign' | 'other' } | { k: 'data'; changes: Array<[number, number]> } {
  if (m.appended) return s.decoded.type === 'fixed' ? { k: 'other' } : { k: 'neutral' };
  if (!m.touched) return { k: 'other' };
  if (m.touched.length === 0) return { k: 'neutral' }; // wrote what was there
  const d = s.decoded;
  const cls = m.touched.map((o) => ({ o, c: classify(o, s) }));
  if (cls.some(({ c }) => c.k === 'other')) return { k: 'other' };
  // the copy at 0 only stays irrelevant while the footer at the end is found
  if (d.type !== 'fixed' && d.footerAtEnd) {
    const endCookie = m.touched.some((o) => o >= d.footerOffset! && o < d.footerOffset! + 8);
    const copy = m.touched.some((o) => o < SECTOR);
    if (endCookie && (copy || m.touched.some((o) => o >= d.footerOffset! + 8 && o < d.footerOffset! + SECTOR))) return { k: 'other' };
  }
  if (cls.some(({ c }) => c.k === 'benign')) return cls.some(({ c }) => c.k === 'data') ? { k: 'other' } : { k: 'benign' };
  const changes = cls.filter(({ c }) => c.k === 'data').map(({ o, c }) => [(c as { virt: number }).virt, o] as [number, number]);
  return changes.length ? { k: 'data', changes } : { k: 'neutral' };
}

// ------------------------------------------------------------ running a case

interface Stats {
  cases: number;
  errors: Map<string, number>;
  reads: number;
  neutralChecked: number;
  dataChecked: number;
  benignSame: number;
  detected: number;
  writes: number;
  writesReadBack: number;
  slowest: number;
  slowestCase?: string;
}

function timeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`HANG: ${what} did not finish in ${ms} ms`)), ms);
    }),
  ]);
}

async function runCase(s: Sample, m: Mutation, rng: Rng, stats: Stats, writeCase: boolean): Promise<string | undefined> {
  const mutated = m.apply(Buffer.from(s.pristine));
  const exp = expectation(m, s);
  await writeFile(join(s.dir, s.target), mutated);
  const started = Date.now();
  let disk: VhdDisk | undefined;
  try {
    // `ferry vhd check` must describe any damage without throwing
    const insp = await inspectVhd(join(s.dir, s.open));
    if (m.checksummed && s.cleanProblems && insp.problems.length === 0) return 'inspectVhd reported no problem for a changed checksummed byte';
    disk = await openChain(join(s.dir, s.open), { noParent: s.noParent, writable: writeCase });
    const size = disk.size;
    const ranges: Array<[number, number]> = [];
    if (size > 0) {
      ranges.push([0, Math.min(size, 64 * KiB)]);
      ranges.push([Math.max(0, size - 4097), Math.min(size, 4097)]);
      for (let i = 0; i < 3; i++) {
        const o = rng.int(size);
        ranges.push([o, Math.min(size - o, 1 + rng.int(MiB))]);
      }
      if (size <= 32 * MiB) ranges.push([0, size]);
    }
    const reads: Array<[number, Buffer]> = [];
    for (const [o, n] of ranges) {
      const b = await disk.read(o, n);
      if (!Buffer.isBuffer(b) || b.length !== n) return `read ${o}+${n} returned ${b?.length} bytes`;
      reads.push([o, b]);
    }
    for (let i = 0; i < Math.min(disk.blockCount, 70); i++) {
      disk.hasBlock(i);
      for (const e of await disk.ownExtents(i)) {
        if (e.offset < i * disk.blockSize || e.length <= 0 || e.offset + e.length > Math.min(size, (i + 1) * disk.blockSize)) {
          return `ownExtents(${i}) gave ${e.offset}+${e.length}, outside block ${i}`;
        }
      }
    }
    stats.reads++;
    if (writeCase && size > 0) {
      // Whatever ferry accepts for writing, it must read back what it wrote,
      // also after closing and opening again.
      const o = rng.int(size);
      const data = bytes(rng, Math.min(size - o, 1 + rng.int(64 * KiB)));
      const whole = reads.find(([ro, b]) => ro === 0 && b.length === size);
      const before = whole ? Buffer.from(whole[1]) : undefined;
      const problemsBefore = disk.info.problems.map((p) => p.code).join(',');
      await disk.write(o, data);
      if (!(await disk.read(o, data.length)).equals(data)) return `wrote ${o}+${data.length}; the open disk reads something else`;
      await disk.close();
      disk = undefined;
      stats.writes++;
      let again: VhdDisk;
      try {
        again = await openChain(join(s.dir, s.open), { noParent: s.noParent });
      } catch (err) {
        return `accepted for writing (problems: ${problemsBefore || 'none'}), wrote ${o}+${data.length}, and then it no longer opens: ${(err as Error).message}`;
      }
      try {
        if (!(await again.read(o, data.length)).equals(data)) return `wrote ${o}+${data.length}; reopened, the disk reads something else`;
        if (before) {
          // and nothing else changed
          data.copy(before, o);
          const after = await again.read(0, size);
          if (!after.equals(before)) {
            let at = 0;
            while (after[at] === before[at]) at++;
            return `accepted for writing (problems: ${problemsBefore || 'none'}), wrote ${o}+${data.length}: virtual byte ${at} changed too`;
          }
        }
      } finally {
        await again.close();
      }
      stats.writesReadBack++;
      return undefined;
    }
    const layer = s.role === 'top' ? disk : (disk.parent as VhdDisk | null);
    if (m.checksummed && s.cleanProblems && layer && layer.info.problems.length === 0) {
      return `a changed byte in a checksummed structure went unreported (no problem on ${layer.name})`;
    }
    if (m.checksummed) stats.detected++;
    if (exp.k === 'neutral' || exp.k === 'benign' || exp.k === 'data') {
      const want = Buffer.from(s.content);
      if (exp.k === 'data') for (const [virt, fileOff] of exp.changes) want[virt] = mutated[fileOff];
      if (size !== want.length) return `virtual size ${size}, expected ${want.length} (${exp.k} mutation)`;
      for (const [o, b] of reads) {
        if (!b.equals(want.subarray(o, o + b.length))) {
          let at = 0;
          while (b[at] === want[o + at]) at++;
          return `read ${o}+${b.length} differs at virtual byte ${o + at} (0x${b[at].toString(16)}, expected 0x${want[o + at].toString(16)}) after a ${exp.k} mutation`;
        }
      }
      if (exp.k === 'neutral') stats.neutralChecked++;
      else if (exp.k === 'data') stats.dataChecked++;
      else stats.benignSame++;
    }
  } catch (err) {
    if (err instanceof FerryError && err.code !== 'USAGE') {
      if (exp.k === 'neutral' || exp.k === 'data') return `${err.code} after a ${exp.k} mutation: ${err.message}`;
      stats.errors.set(err.code, (stats.errors.get(err.code) ?? 0) + 1);
      return undefined;
    }
    return `threw ${err instanceof FerryError ? 'a usage error' : (err as Error)?.constructor?.name}: ${(err as Error)?.stack?.split('\n').slice(0, 4).join(' | ') ?? String(err)}`;
  } finally {
    if (disk) await disk.close().catch(() => {});
    const took = Date.now() - started;
    if (took > stats.slowest) {
      stats.slowest = took;
      stats.slowestCase = m.describe + (writeCase ? ' (writing)' : '');
    }
  }
  return undefined;
}

// ------------------------------------------------------------ the test

test('damaged VHDs open and read cleanly or fail with a FerryError', async (t) => {
  const base = await mkdtemp(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'ferry-fuzz-'));
  try {
    const samples = await makeSamples(base);
    t.true(samples.length >= 6, `only ${samples.length} samples`);
    // The samples themselves read as qemu reads them (where qemu can).
    for (const s of samples.filter((x) => x.name.startsWith('qemu-'))) {
      const raw = join(base, `${s.name}.raw`);
      await must('qemu-img', ['convert', '-f', 'vpc', '-O', 'raw', join(s.dir, s.target), raw]);
      const q = await readFile(raw);
      t.true(q.equals(s.content), `${s.name}: ferry reads it as qemu does`);
      await rm(raw);
    }
    const fdsBefore = readdirSync('/proc/self/fd').length;
    const perSample = Math.ceil(TOTAL_CASES / samples.length);
    const failures: string[] = [];
    const summary = new Map<string, string>();
    let total = 0;
    let totalErrors = 0;
    let totalReads = 0;
    const started = Date.now();

    const fuzzSample = async (si: number, s: Sample) => {
      const stats: Stats = { cases: 0, errors: new Map(), reads: 0, neutralChecked: 0, dataChecked: 0, benignSame: 0, detected: 0, slowest: 0, writes: 0, writesReadBack: 0 };
      for (let i = 0; i < perSample; i++) {
        const caseSeed = (SEED * 1000003 + si * 100003 + i) >>> 0;
        const rng = new Rng(caseSeed);
        const m = makeMutation(rng, s);
        stats.cases++;
        const label = `${s.name} case ${i}`;
        running.add(label);
        let why: string | undefined;
        try {
          const writeCase = s.role === 'top' && rng.chance(0.25);
          why = await timeout(runCase(s, m, rng, stats, writeCase), CASE_TIMEOUT_MS, `${label}${writeCase ? ' (writing)' : ''}`);
        } catch (err) {
          why = String((err as Error).message);
        } finally {
          running.delete(label);
        }
        if (why) failures.push(`${label} (seed ${caseSeed}): ${m.describe}: ${why}`);
      }
      await writeFile(join(s.dir, s.target), s.pristine);
      const errs = [...stats.errors.values()].reduce((a, b) => a + b, 0);
      total += stats.cases;
      totalErrors += errs;
      totalReads += stats.reads;
      summary.set(
        s.name,
        `${s.name.padEnd(24)} ${String(stats.cases).padStart(5)} cases: ${String(errs).padStart(4)} clean errors, ${String(stats.reads).padStart(4)} read ` +
          `(${stats.neutralChecked} neutral and ${stats.dataChecked} one-byte-data cases verified equal, ${stats.benignSame} benign equal; ` +
          `${stats.detected} checksummed changes reported; ${stats.writesReadBack}/${stats.writes} writes read back); slowest ${stats.slowest} ms (${stats.slowestCase}); ` +
          [...stats.errors.entries()].sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(', '),
      );
    };
    // Samples live in separate folders: fuzz a few at once (I/O overlaps).
    const queue = [...samples.entries()];
    await Promise.all(
      Array.from({ length: 3 }, async () => {
        for (let next = queue.shift(); next; next = queue.shift()) await fuzzSample(next[0], next[1]);
      }),
    );

    const fdsAfter = readdirSync('/proc/self/fd').length;
    t.log(`${total} cases in ${((Date.now() - started) / 1000).toFixed(1)} s: ${totalErrors} clean FerryErrors, ${totalReads} successful reads, ${failures.length} failures; largest allocation ${largestAlloc} bytes`);
    for (const s of samples) t.log(summary.get(s.name)!);
    for (const f of failures.slice(0, 40)) t.log(`FAIL ${f}`);
    t.true(total >= Math.min(3000, TOTAL_CASES));
    t.true(fdsAfter <= fdsBefore + 2, `file descriptors leaked: ${fdsBefore} before, ${fdsAfter} after`);
    t.deepEqual(bigAllocs, [], 'absurd allocations');
    t.deepEqual(failures.slice(0, 40), [], `${failures.length} failing cases`);
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});

// ------------------------------------------------------------ regressions
//
// Two engine bugs this fuzz found, fixed in 5cffff6; kept as plain tests.

async function withShm<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'ferry-fuzz-'));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// format/vhd/vhd.ts, VhdDisk.fromStorage used to refuse only 'fatal'
// problems for a writable open, so a disk whose BAT put two blocks at the
// same place (VHD_BAT_OVERLAP, severity 'error') was written to, and a write
// into one block silently changed the other (a BAT entry pointing at the
// dynamic header let the next write destroy the header and BAT).
test('a disk whose BAT overlaps is refused for writing, not silently corrupted', async (t) => {
  await withShm(async (dir) => {
    const path = join(dir, 'd.vhd');
    await createVhd(path, { size: 6 * MiB, type: 'dynamic' });
    await ferryWrites(path, [[0, 2 * MiB]], 1); // block 0 allocated
    const buf = await readFile(path);
    const d = await decodeVhd(new BufferSource(path, buf));
    const to = Number(d.header!.tableOffset);
    buf.writeUInt32BE(d.bat![0], to + 4); // block 1 := block 0's place
    await writeFile(path, buf);
    const before = await readChain(path);
    const refused = async (what: string) => {
      const disk = await openChain(path, { writable: true }).catch((e) => e as Error);
      if (disk instanceof VhdDisk) {
        // what used to happen: the write lands in another block
        try {
          await disk.write(2 * MiB + 4096, Buffer.alloc(4096, 0xee)); // into block 1
        } finally {
          await disk.close();
        }
        const after = await readChain(path);
        t.true(after.content.subarray(0, 2 * MiB).equals(before.content.subarray(0, 2 * MiB)), `${what}: a write into block 1 changed block 0`);
        t.fail(`${what}: opened for writing`);
        return;
      }
      t.true(disk instanceof FerryError, `${what}: ${String(disk)}`);
      t.is((disk as FerryError).code, 'VHD_BAT_OVERLAP', what);
    };
    await refused('block 1 at block 0');
    // block 1 at the dynamic header (sector 1)
    buf.writeUInt32BE(1, to + 4);
    await writeFile(path, buf);
    await refused('block 1 at the header');
    // reading stays possible
    const ro = await readChain(path);
    t.true(ro.content.subarray(0, 2 * MiB).equals(before.content.subarray(0, 2 * MiB)));
  });
});

// format/vhd/chain.ts, openParent used to open every candidate that exists
// and end the search on any error: a damaged locator naming a folder (the
// relative locator ".\p.vhd" cut to ".\" by one NUL), a non-VHD file or the
// child itself made openChain fail with VHD_NOT_A_FILE, VHD_NO_FOOTER or
// VHD_PARENT_CYCLE although the other locators and the parent name led to
// the right parent.
test('a damaged locator does not hide the parent that the other locators find', async (t) => {
  await withShm(async (dir) => {
    await createVhd(join(dir, 'p.vhd'), { size: 4 * MiB, type: 'dynamic' });
    await createDifferencing(join(dir, 'c.vhd'), join(dir, 'p.vhd'));
    const pristine = await readFile(join(dir, 'c.vhd'));
    const d = await decodeVhd(new BufferSource('c.vhd', pristine));
    const w2ru = d.locators.find((l) => l.platformCode === 'W2ru')!;
    t.is(w2ru.path, '.\\p.vhd');
    const failures: string[] = [];
    // every UTF-16 unit of the relative locator set to NUL, to '.', to '\'
    for (let unit = 0; unit < w2ru.dataLength / 2; unit++) {
      for (const ch of [0, 0x2e, 0x5c]) {
        const buf = Buffer.from(pristine);
        buf.writeUInt16LE(ch, Number(w2ru.dataOffset) + unit * 2);
        await writeFile(join(dir, 'c.vhd'), buf);
        try {
          const c = await openChain(join(dir, 'c.vhd'));
          await c.close();
        } catch (err) {
          failures.push(`unit ${unit} := 0x${ch.toString(16)}: ${(err as FerryError).code}`);
        }
      }
    }
    // the relative locator naming the child itself, or a file that is no VHD
    await writeFile(join(dir, 'x.vhd'), Buffer.alloc(8192, 0x41));
    for (const name of ['c', 'x']) {
      const buf = Buffer.from(pristine);
      buf.write(`.\\${name}.vhd`, Number(w2ru.dataOffset), 'utf16le');
      await writeFile(join(dir, 'c.vhd'), buf);
      try {
        const c = await openChain(join(dir, 'c.vhd'));
        t.is(c.parent?.name, join(dir, 'p.vhd'));
        await c.close();
      } catch (err) {
        failures.push(`W2ru = .\\${name}.vhd: ${(err as FerryError).code}`);
      }
    }
    t.deepEqual(failures, []);
  });
});
