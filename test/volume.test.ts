// The files-kind volume (format/volume): layout codec, write/read round trips
// (property-based over random sparse contents), lookups, checksums, damage
// detection, reading through a differencing layer, and write throughput.
import test from 'ava';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { MemDisk } from '../format/memdisk.js';
import {
  DATA_START, SUPERBLOCK_SIZE, VolumeReader, VolumeWriter, decodeSuperblock, encodeSuperblock, writeVolume,
  type EntryMeta, type SourceEntry, type Superblock,
} from '../format/volume/index.js';
import { FerryError } from '../format/errors.js';
import { checkChunks } from '../format/volume/reader.js';
import { ChunkHasher } from '../format/volume/writer.js';
import { pseudoRandom } from './helpers/tree.js';
import { backup } from './helpers/volume.js';
import { restoreFiles } from '../restore/files.js';
import { mkdtemp, rm, writeFile as write, readFile as read } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join as j } from 'node:path';

const MiB = 1024 * 1024;
const BIG = 2040 * 1024 ** 3;

function meta(path: string | Buffer, type: EntryMeta['type'] = 'file', extra: Partial<EntryMeta> = {}): EntryMeta {
  return {
    path: Buffer.isBuffer(path) ? path : Buffer.from(path), type, mode: type === 'dir' ? 0o755 : 0o644, uid: 1000, gid: 1000,
    atimeNs: 1_700_000_000_123_456_789n, mtimeNs: 1_700_000_001_987_654_321n, ctimeNs: 1_700_000_002_000_000_001n,
    size: 0, ino: 2n ** 63n + 5n, dev: 0xfd01n, nlink: 1, rdev: 0n, target: null, xattrs: [], implicit: false, ...extra,
  };
}

test('superblock: encode/decode round trip; damage is reported with a stable code', (t) => {
  const sb: Superblock = {
    magic: 'FERRYVOL', version: 1, sbSize: 4096, uuid: Buffer.alloc(16, 7), generation: 1, writtenNs: -5n, chunkSize: MiB,
    align: 4096, dataStart: DATA_START, allocPtr: 5 * MiB, catalogSize: 12288, catalogExtentCount: 2, flags: 0,
    catalogSha256: Buffer.alloc(32, 1), diskSize: BIG, catalogExtents: [{ diskOffset: 2 * MiB, length: 8192 }, { diskOffset: 4 * MiB, length: 4096 }],
  };
  const buf = encodeSuperblock(sb);
  t.is(buf.length, SUPERBLOCK_SIZE);
  const { sb: back, problems } = decodeSuperblock(buf);
  t.deepEqual(problems, []);
  t.deepEqual(back, sb);
  const bad = Buffer.from(buf);
  bad[70] ^= 1;
  t.is(decodeSuperblock(bad).problems[0].code, 'VOLUME_BAD_CHECKSUM');
  t.is(decodeSuperblock(Buffer.alloc(4096)).problems[0].code, 'VOLUME_BAD_MAGIC');
  // the documented order: magic, checksum, version, then field ranges (random
  // bytes used to come first as "generation is too large")
  t.is(decodeSuperblock(Buffer.alloc(4096, 0xff)).problems[0].code, 'VOLUME_BAD_MAGIC');
  const huge = Buffer.from(buf);
  huge.fill(0xff, 16, 64); // u64 fields past 2^53, checksum now wrong
  t.deepEqual(decodeSuperblock(huge).problems.map((p) => p.code).slice(0, 2), ['VOLUME_BAD_CHECKSUM', 'VOLUME_BAD_FIELD']);
});

test('write, then read everything back: tree, metadata, data, hard links, checksums', async (t) => {
  const disk = new MemDisk(BIG);
  const big = pseudoRandom(5 * MiB + 3, 9);
  const odd = Buffer.from([0x2f, 0x64, 0x2f, 0xff, 0x0a]);
  const entries: SourceEntry[] = [
    meta('/', 'dir', { implicit: true }),
    meta('/d', 'dir', { xattrs: [{ name: 'user.x', value: Buffer.from([0, 255]) }] }),
    { ...meta('/d/big', 'file', { size: big.length, nlink: 2 }), content: async function* () { for (let o = 0; o < big.length; o += MiB) yield Buffer.from(big.subarray(o, o + MiB)); } },
    meta('/d/empty', 'file'),
    meta('/d/link', 'hardlink', { target: Buffer.from('/d/big'), size: big.length, nlink: 2 }),
    meta('/d/sym', 'symlink', { target: Buffer.from([0xff, 0x00 + 0x41]) }),
    meta('/d/dev', 'chardev', { rdev: 0x12c0an }),
    { ...meta(odd, 'file', { size: 3 }), content: async function* () { yield Buffer.from('odd'); } },
    meta('/e/f/g', 'fifo'), // parents missing: recorded as implicit directories
  ];
  const stats = await writeVolume(disk, entries, { meta: { kind: 'files' } });
  t.is(stats.files, 3);
  t.is(stats.bytes, big.length + 3);
  t.true(stats.allocPtr >= DATA_START + big.length);

  const r = await VolumeReader.open(disk);
  t.is(r.meta.kind, 'files');
  t.is(r.meta.hash, 'sha256');
  t.is(r.count(), entries.length + 2);
  const d = r.stat('/d/')!;
  t.deepEqual(d.xattrs, [{ name: 'user.x', value: Buffer.from([0, 255]) }]);
  t.deepEqual(r.readdir('/d')!.map((e) => e.path.toString('latin1')), ['/d/big', '/d/dev', '/d/empty', '/d/link', '/d/sym', odd.toString('latin1')].sort());
  const b = r.stat('/d/big')!;
  t.is(b.atimeNs, 1_700_000_000_123_456_789n);
  t.is(b.mtimeNs, 1_700_000_001_987_654_321n);
  t.is(b.ino, 2n ** 63n + 5n, 'unsigned 64-bit inode survives');
  t.is(b.linkGroup, b.id);
  t.is(r.stat('/d/link')!.linkGroup, b.id);
  t.is(r.stat('/d/dev')!.rdev, 0x12c0an);
  t.deepEqual(r.stat('/d/sym')!.target, Buffer.from([0xff, 0x41]));
  t.true((await r.read('/d/link', 0, big.length + 10)).equals(big), 'a hard link reads its group data');
  t.true((await r.read(b, MiB - 7, 20)).equals(big.subarray(MiB - 7, MiB + 13)));
  t.is((await r.read(odd, 0, 3)).toString(), 'odd');
  t.is((await r.read('/d/empty', 0, 10)).length, 0);
  // per-chunk SHA-256 of the data
  for (let c = 0; c < 6; c++) {
    const want = createHash('sha256').update(big.subarray(c * MiB, (c + 1) * MiB)).digest();
    t.true(b.chunks.subarray(c * 32, c * 32 + 32).equals(want), `chunk ${c}`);
  }
  t.deepEqual(await r.verify(b), []);
  // implicit parents, and iteration under a path
  t.true(r.stat('/e/f')!.implicit);
  t.deepEqual([...r.entries({ under: '/e' })].map((e) => e.path.toString()), ['/e', '/e/f', '/e/f/g']);
  t.deepEqual(r.roots().map((e) => e.path.toString()), ['/']);
  // extents start on 4 KiB boundaries
  for (const e of r.entries()) for (const x of e.extents) t.is(x.diskOffset % 4096, 0);
  // the walk over every entry (arrays by column position) reads each entry as a lookup by path does
  const walked = [...r.entries()];
  t.true(walked.length > 5);
  for (const e of walked) t.deepEqual(e, r.stat(e.path), e.path.toString());
  r.close();
});

test('property: random sparse files read back exactly, holes as zeros', async (t) => {
  const piecesArb = fc.array(fc.record({ gap: fc.integer({ min: 0, max: 300_000 }), len: fc.integer({ min: 1, max: 200_000 }), seed: fc.integer({ min: 1, max: 1e6 }) }), { maxLength: 6 });
  await fc.assert(
    fc.asyncProperty(fc.array(piecesArb, { minLength: 1, maxLength: 4 }), fc.integer({ min: 0, max: 100_000 }), fc.constantFrom(4096, 65536, MiB), async (files, tail, chunkSize) => {
      const disk = new MemDisk(BIG);
      const models: Buffer[] = [];
      const entries: SourceEntry[] = [meta('/', 'dir')];
      files.forEach((pieces, i) => {
        let pos = 0;
        const list = pieces.map((p) => {
          const offset = pos + p.gap;
          pos = offset + p.len;
          return { offset, data: pseudoRandom(p.len + 3, p.seed).subarray(0, p.len) };
        });
        const size = pos + tail;
        const model = Buffer.alloc(size);
        for (const p of list) p.data.copy(model, p.offset);
        models.push(model);
        entries.push({ ...meta(`/f${i}`, 'file', { size }), content: async function* () { yield* list.map((p) => ({ offset: p.offset, data: Buffer.from(p.data) })); } });
      });
      await writeVolume(disk, entries, { chunkSize });
      const r = await VolumeReader.open(disk);
      try {
        for (let i = 0; i < models.length; i++) {
          const e = r.stat(`/f${i}`)!;
          if (e.size !== models[i].length) return false;
          if (!(await r.read(e, 0, e.size)).equals(models[i])) return false;
          const mid = Math.floor(e.size / 3);
          if (!(await r.read(e, mid, 77_777)).equals(models[i].subarray(mid, mid + 77_777))) return false;
          const rebuilt = Buffer.alloc(e.size);
          for await (const p of r.readData(e)) {
            if (!p.ok) return false;
            p.data.copy(rebuilt, p.offset);
          }
          if (!rebuilt.equals(models[i])) return false;
          // unchecked pieces checked afterwards (the restore's writer thread) agree
          const raw: { offset: number; data: Buffer }[] = [];
          for await (const p of r.readData(e, { check: false })) raw.push(p);
          if (checkChunks(raw, e.size, chunkSize, e.chunks) !== null) return false;
          // chunk hashes are over the logical bytes
          for (let c = 0; c * chunkSize < e.size; c++) {
            const h = createHash('sha256').update(models[i].subarray(c * chunkSize, (c + 1) * chunkSize)).digest();
            if (!h.equals(e.chunks.subarray(c * 32, c * 32 + 32))) return false;
          }
        }
        return true;
      } finally {
        r.close();
      }
    }),
    { numRuns: 40 },
  );
  t.pass();
});

test('checkChunks: any split into pieces, with holes, finds the first damaged chunk that a per-chunk sum of the whole would', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 9 }).map((k) => k * 512),
      fc.integer({ min: 0, max: 40_000 }),
      fc.array(fc.integer({ min: 0, max: 40_000 }), { maxLength: 8 }),
      fc.array(fc.boolean(), { minLength: 9, maxLength: 9 }),
      fc.option(fc.integer({ min: 0, max: 39_999 })),
      (chunkSize, size, cuts, holes, flip) => {
        const model = pseudoRandom(size, size + chunkSize);
        const bounds = [...new Set([0, size, ...cuts.filter((c) => c < size)])].sort((a, b) => a - b);
        const pieces: { offset: number; data: Buffer }[] = [];
        for (let i = 0; i + 1 < bounds.length; i++) {
          if (holes[i]) model.fill(0, bounds[i], bounds[i + 1]); // a hole reads as zeros
          else pieces.push({ offset: bounds[i], data: Buffer.from(model.subarray(bounds[i], bounds[i + 1])) });
        }
        const sums: Buffer[] = [];
        for (let c = 0; c * chunkSize < size; c++) sums.push(createHash('sha256').update(model.subarray(c * chunkSize, (c + 1) * chunkSize)).digest());
        const chunks = Buffer.concat(sums);
        if (checkChunks(pieces, size, chunkSize, chunks) !== null) return false;
        if (flip === null || flip >= size) return true;
        const p = pieces.find((q) => q.offset <= flip && flip < q.offset + q.data.length);
        if (!p) return true;
        p.data[flip - p.offset] ^= 0x20;
        return checkChunks(pieces, size, chunkSize, chunks) === Math.floor(flip / chunkSize) * chunkSize;
      },
    ),
    { numRuns: 300 },
  );
  t.pass();
});

test('damage: a bad data chunk is found and reported, a bad catalog or a foreign disk refuses to open', async (t) => {
  const disk = new MemDisk(BIG);
  const data = pseudoRandom(3 * MiB, 3);
  await writeVolume(disk, [meta('/', 'dir'), { ...meta('/f', 'file', { size: data.length }), content: async function* () { yield Buffer.from(data); } }]);
  const r = await VolumeReader.open(disk);
  const e = r.stat('/f')!;
  const x = e.extents[0];
  await disk.write(x.diskOffset + MiB + 10, Buffer.from([0xde, 0xad]));
  t.deepEqual(await r.verify(e), [1]);
  const oks: boolean[] = [];
  for await (const p of r.readData(e)) oks.push(p.ok);
  t.deepEqual(oks, [true, false, true]);
  const raw: { offset: number; data: Buffer }[] = [];
  for await (const p of r.readData(e, { check: false })) raw.push(p);
  t.is(checkChunks(raw, e.size, r.chunkSize, e.chunks), MiB);
  t.is(checkChunks(raw, e.size, r.chunkSize, e.chunks.subarray(0, 64)), 0, 'a wrong number of sums is damage at 0');
  // the file as one piece (the addon's sums in one call, when it is built): the same answers
  const one = [{ offset: 0, data: Buffer.concat(raw.map((p) => p.data)) }];
  t.is(one[0].data.length, e.size);
  t.is(checkChunks(one, e.size, r.chunkSize, e.chunks), MiB);
  t.is(checkChunks([{ offset: 0, data: data }], e.size, r.chunkSize, e.chunks), null);
  const lastBad = Buffer.from(data);
  lastBad[lastBad.length - 1] ^= 1;
  t.is(checkChunks([{ offset: 0, data: lastBad }], e.size, r.chunkSize, e.chunks), 2 * MiB);
  r.close();

  // catalog damage
  const { sb } = decodeSuperblock(await disk.read(0, SUPERBLOCK_SIZE));
  const c = sb.catalogExtents[0];
  const orig = await disk.read(c.diskOffset + 100, 1);
  await disk.write(c.diskOffset + 100, Buffer.from([orig[0] ^ 0xff]));
  const err = await t.throwsAsync(VolumeReader.open(disk));
  t.true(err instanceof FerryError);
  t.is((err as FerryError).code, 'VOLUME_BAD_CATALOG');

  // a disk without a volume
  const foreign = await t.throwsAsync(VolumeReader.open(new MemDisk(8 * MiB)));
  t.is((foreign as FerryError).code, 'VOLUME_BAD_MAGIC');
});

test('a large catalog is spooled to a temporary file and reads the same', async (t) => {
  const disk = new MemDisk(BIG);
  const entries: SourceEntry[] = [meta('/', 'dir')];
  for (let i = 0; i < 3000; i++) entries.push({ ...meta(`/file-${i}`, 'file', { size: 5 }), content: async function* () { yield Buffer.from(`n${String(i).padStart(4, '0')}`); } });
  await writeVolume(disk, entries);
  const r = await VolumeReader.open(disk, { memoryLimit: 1024 });
  t.is(r.count(), 3001);
  t.is((await r.read('/file-2999', 0, 5)).toString(), 'n2999');
  r.close();
});

test('a volume reads the same through a differencing layer; a writer refuses a read-only or tiny disk', async (t) => {
  const base = new MemDisk(BIG);
  await writeVolume(base, [meta('/', 'dir'), { ...meta('/x', 'file', { size: 3 }), content: async function* () { yield Buffer.from('abc'); } }]);
  const child = new MemDisk(0, { parent: base });
  const r = await VolumeReader.open(child);
  t.is((await r.read('/x', 0, 3)).toString(), 'abc');
  r.close();
  await t.throwsAsync(VolumeWriter.create(new MemDisk(MiB)), { code: 'USAGE' } as never);
  await t.throwsAsync(VolumeWriter.create({ ...base, writable: false, name: 'ro' } as never), { code: 'USAGE' } as never);
});

test('duplicate paths are refused; a failed content leaves nothing behind and the next file reuses the space', async (t) => {
  const disk = new MemDisk(BIG);
  const w = await VolumeWriter.create(disk);
  await w.addEntry(meta('/', 'dir'));
  await t.throwsAsync(w.addEntry(meta('/', 'dir')), { code: 'VOLUME_DUPLICATE_PATH' } as never);
  await t.throwsAsync(
    w.addFile(meta('/broken', 'file', { size: 10 * MiB }), (async function* () {
      yield Buffer.alloc(2 * MiB, 1);
      throw new Error('EIO');
    })()),
    { code: 'SOURCE_READ' } as never,
  );
  await w.addFile(meta('/ok', 'file', { size: 3 }), (async function* () { yield Buffer.from('yes'); })());
  await w.finish();
  const r = await VolumeReader.open(disk);
  t.is(r.stat('/broken'), null);
  t.is(r.stat('/ok')!.extents[0].diskOffset, DATA_START, 'the failed file\'s space was reused');
  t.is((await r.read('/ok', 0, 3)).toString(), 'yes');
  r.close();
});

// (speed is measured in bench/, not here: a loaded machine must not fail a test)
test('384 MiB of file data go into a MemDisk whole (the rate is logged)', async (t) => {
  const disk = new MemDisk(BIG);
  const src = pseudoRandom(MiB, 1);
  const files = 6;
  const per = 64;
  async function* entries(): AsyncGenerator<SourceEntry> {
    yield meta('/', 'dir');
    for (let f = 0; f < files; f++) {
      yield { ...meta(`/f${f}`, 'file', { size: per * MiB }), content: async function* () { for (let i = 0; i < per; i++) yield Buffer.from(src); } };
    }
  }
  const t0 = process.hrtime.bigint();
  const st = await writeVolume(disk, entries());
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const mbs = st.bytes / secs / 1e6;
  t.log(`${(st.bytes / MiB).toFixed(0)} MiB in ${secs.toFixed(2)} s: ${mbs.toFixed(0)} MB/s`);
  t.is(st.bytes, files * per * MiB);
  t.is(st.files, files);
});

test('progress moves while one large file is copied, not only when it ends', async (t) => {
  const disk = new MemDisk(BIG);
  const src = pseudoRandom(MiB, 2);
  async function* entries(): AsyncGenerator<SourceEntry> {
    yield meta('/', 'dir');
    yield { ...meta('/big', 'file', { size: 64 * MiB }), content: async function* () { for (let i = 0; i < 64; i++) yield Buffer.from(src); } };
  }
  const seen: number[] = [];
  await writeVolume(disk, entries(), { onProgress: (p) => seen.push(p.bytes) });
  const within = seen.filter((b) => b > 0 && b < 64 * MiB);
  t.true(within.length >= 3, `progress during the file: ${within.join(', ')}`);
  t.deepEqual(within, [...within].sort((a, b) => a - b));
  t.is(seen.at(-1), 64 * MiB);
});

test('restore progress moves while one large file is read, not only when it ends', async (t) => {
  const dir = await mkdtemp(j(tmpdir(), 'ferry-progress-'));
  try {
    const big = Buffer.concat(Array.from({ length: 48 }, (_, i) => pseudoRandom(MiB, i + 10)));
    await write(j(dir, 'big'), big);
    const reader = await backup(j(dir, 'big'));
    const seen: number[] = [];
    await restoreFiles(reader, { to: j(dir, 'out'), onProgress: (p) => seen.push(p.bytes) });
    const within = seen.filter((b) => b > 0 && b < big.length);
    t.true(within.length >= 2, `progress during the file: ${seen.join(', ')}`);
    t.true((await read(j(dir, 'out', dir, 'big'))).equals(big));
    await reader.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('ChunkHasher: the sums a source took are kept when of its chunk size; else it hashes the bytes', async (t) => {
  const data = pseudoRandom(5000, 3);
  const real = Buffer.concat([createHash('sha256').update(data.subarray(0, 4096)).digest(), createHash('sha256').update(data.subarray(4096)).digest()]);
  const given = Buffer.alloc(64, 7); // not the real sums: proves which ones come out
  const taken = new ChunkHasher(4096);
  taken.take({ chunk: 4096, size: 5000, hashes: given });
  taken.feed(0, data);
  t.is(await taken.end(5000), given);
  const other = new ChunkHasher(4096);
  other.take({ chunk: 8192, size: 5000, hashes: given });
  other.feed(0, data);
  t.true((await other.end(5000)).equals(real), 'another chunk size: hashed here');
  const late = new ChunkHasher(4096);
  late.feed(0, data.subarray(0, 100));
  late.take({ chunk: 4096, size: 5000, hashes: given });
  late.feed(100, data.subarray(100));
  t.true((await late.end(5000)).equals(real), 'after bytes were fed: hashed here');
  const wrong = new ChunkHasher(4096);
  wrong.take({ chunk: 4096, size: 4000, hashes: given });
  await t.throwsAsync(wrong.end(5000), { message: /hashed 4000 bytes of a file that ends at 5000/ });
});

test('the finished catalog has its index on (parent, name), made at the end, and folders list through it', async (t) => {
  const disk = new MemDisk(BIG);
  const entries: SourceEntry[] = [meta('/', 'dir', { implicit: true }), meta('/d', 'dir'), ...Array.from({ length: 50 }, (_, i) => meta(`/d/f${49 - i}`, 'fifo'))];
  await writeVolume(disk, entries, { meta: { kind: 'files' } });
  const reader = await VolumeReader.open(disk);
  try {
    const db = (reader as unknown as { db: { prepare(sql: string): { all(...a: unknown[]): unknown[] } } }).db;
    t.deepEqual(db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'entries_parent'").all(), [{ name: 'entries_parent' }]);
    const plan = JSON.stringify(db.prepare('EXPLAIN QUERY PLAN SELECT id FROM entries WHERE parent = ? ORDER BY name').all(2));
    t.regex(plan, /USING (COVERING )?INDEX entries_parent/);
    t.deepEqual(reader.readdir('/d')!.map((e) => e.path.toString()), Array.from({ length: 50 }, (_, i) => `/d/f${i}`).sort());
  } finally {
    reader.close();
  }
});

test('times that 64-bit nanoseconds cannot hold (after 2262, before 1677) are kept to the nanosecond', async (t) => {
  const disk = new MemDisk(BIG);
  const NS = 1_000_000_000n;
  const times = [
    (13_569_465_600n) * NS + 123_456_789n, // 2400-01-01 and a bit
    2n ** 63n, // the first nanosecond past the range
    -(2n ** 63n) - 1n,
    -9_000_000_000n * NS - 1n,
    2n ** 63n - 1n, // the last that fits
  ];
  const entries: SourceEntry[] = [meta('/', 'dir', { implicit: true }), ...times.map((ns, i) => meta(`/f${i}`, 'fifo', { atimeNs: ns, mtimeNs: ns + 1n, ctimeNs: -ns }))];
  await writeVolume(disk, entries, { meta: { kind: 'files' } });
  const reader = await VolumeReader.open(disk);
  try {
    times.forEach((ns, i) => {
      const e = reader.stat(`/f${i}`)!;
      t.deepEqual([e.atimeNs, e.mtimeNs, e.ctimeNs], [ns, ns + 1n, -ns], `/f${i}`);
    });
  } finally {
    reader.close();
  }
});

test('ChunkHasher: pieces fed with a done callback (hashed where they lie, on the pool) give the sums of the whole, each done called once', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 4 }).map((k) => k * 4096),
      fc.array(fc.tuple(fc.integer({ min: 0, max: 20_000 }), fc.integer({ min: 1, max: 40_000 }), fc.boolean()), { minLength: 1, maxLength: 6 }),
      fc.integer({ min: 0, max: 9_000 }),
      async (chunkSize, specs, tailHole) => {
        // pieces with holes between them, some fed with done (in place), some without
        let at = 0;
        const model: Buffer[] = [];
        const hasher = new ChunkHasher(chunkSize);
        const calls: number[] = [];
        specs.forEach(([gap, len, inPlace], i) => {
          const data = pseudoRandom(len, i + len);
          model.push(Buffer.alloc(gap), data);
          at += gap;
          calls.push(0);
          if (inPlace) hasher.feed(at, data, () => calls[i]++);
          else {
            hasher.feed(at, data);
            calls[i] = 1;
          }
          at += len;
        });
        const size = at + tailHole;
        model.push(Buffer.alloc(tailHole));
        const whole = Buffer.concat(model);
        const sums = await hasher.end(size);
        const want: Buffer[] = [];
        for (let c = 0; c * chunkSize < size; c++) want.push(createHash('sha256').update(whole.subarray(c * chunkSize, (c + 1) * chunkSize)).digest());
        return sums.equals(Buffer.concat(want)) && calls.every((n) => n === 1);
      },
    ),
    { numRuns: 150 },
  );
  t.pass();
});

test('a full disk stops the volume, and every piece handed to it is released, those of writes never made too', async (t) => {
  const disk = new MemDisk(24 * MiB);
  let given = 0;
  let released = 0;
  async function* content(n: number) {
    for (let i = 0; i < n; i++) {
      given++;
      let done = false;
      yield {
        offset: i * MiB,
        data: pseudoRandom(MiB, i + 1),
        release: () => {
          if (done) throw new Error('released twice');
          done = true;
          released++;
        },
      };
    }
  }
  await t.throwsAsync(writeVolume(disk, [meta('/', 'dir'), { ...meta('/big', 'file', { size: 60 * MiB }), content: () => content(60) }]));
  await new Promise((r) => setTimeout(r, 100)); // (writes in flight settle)
  t.true(given > 1);
  t.is(released, given);
});
